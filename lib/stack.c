/*
 * stack.c — task stacks: mmap'd with a guard page below, pooled per loop;
 * and, in debug mode, the report of which task overflowed its stack.
 */
#include "task.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Stacks: mmap'd with a guard page below, pooled per loop              */

#define POOL_MAX 256             /* stacks kept for reuse per loop */
#ifndef MADV_GUARD_INSTALL
#define URIO__MADV_GUARD_INSTALL 102     /* Linux 6.13; Debian 12's headers predate it */
#else
#define URIO__MADV_GUARD_INSTALL MADV_GUARD_INSTALL
#endif

static size_t page_size(void)
{
    static size_t ps;
    if (ps == 0)
        ps = (size_t)sysconf(_SC_PAGESIZE);
    return ps;
}

/* The largest stack a task may ask for: far beyond any real need, far below overflow. */
#define STACK_MAX ((size_t)1 << 40)

urio__task_stack_t *urio__stack_get(urio__stack_pool_t *pool, size_t size, int *err)
{
    size_t ps = page_size();
    if (size > STACK_MAX) {
        *err = -EINVAL;     /* rounding it up, adding the guard page, would wrap */
        return NULL;
    }
    size = (size + ps - 1) & ~(ps - 1);
    /* Reuse one of the right size (the pool holds mostly default-sized stacks). */
    for (urio__task_stack_t **p = &pool->free; *p != NULL; p = &(*p)->next) {
        if ((*p)->size == size) {
            urio__task_stack_t *st = *p;
            *p = st->next;
            pool->nfree--;
            return st;
        }
    }
    urio__task_stack_t *st = urio__calloc(1, sizeof *st);
    if (st == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    st->map_size = size + ps;
    st->map = mmap(NULL, st->map_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (st->map == MAP_FAILED) {
        urio__free(st);
        *err = -ENOMEM;
        return NULL;
    }
    /*
     * The guard page: an overflow faults here instead of corrupting memory.
     * MADV_GUARD_INSTALL (6.13) makes it without splitting the mapping, so
     * neighbouring stacks merge into few VMAs and 100,000 tasks stay far
     * below vm.max_map_count (65,530 by default); mprotect splits it in two.
     */
    if (madvise(st->map, ps, URIO__MADV_GUARD_INSTALL) != 0 &&
        mprotect(st->map, ps, PROT_NONE) != 0) {
        munmap(st->map, st->map_size);
        urio__free(st);
        *err = -ENOMEM;
        return NULL;
    }
    st->base = (char *)st->map + ps;
    st->size = size;
#ifdef URIO_VALGRIND
    st->valgrind_id = VALGRIND_STACK_REGISTER(st->base, (char *)st->base + size);
#endif
    return st;
}

void urio__stack_free(urio__task_stack_t *st)
{
#ifdef URIO_VALGRIND
    VALGRIND_STACK_DEREGISTER(st->valgrind_id);
#endif
#ifdef URIO_ASAN
    /*
     * A task destroyed while suspended leaves its frames' redzones poisoned,
     * and ASan keeps the shadow of unmapped memory: a later mapping at the
     * same address (a new stack) would inherit it and fault at its first frame.
     */
    __asan_unpoison_memory_region(st->base, st->size);
#endif
    munmap(st->map, st->map_size);
    urio__free(st);
}

void urio__stack_put(urio__stack_pool_t *pool, urio__task_stack_t *st)
{
    if (pool->nfree >= POOL_MAX) {
        urio__stack_free(st);
        return;
    }
    st->next = pool->free;
    pool->free = st;
    pool->nfree++;
}

void urio__stack_pool_free(urio__stack_pool_t *pool)
{
    while (pool->free) {
        urio__task_stack_t *st = pool->free;
        pool->free = st->next;
        urio__stack_free(st);
    }
    pool->nfree = 0;
}

/* ------------------------------------------------------------------ */
/* Stack overflow, in debug mode: say which task before the process dies */

#if !defined(URIO_ASAN) && !defined(URIO_TSAN)
/*
 * Checking and installing the handler happen under one lock.  A child of
 * fork() needs only the lock back (fork.c): the disposition is the
 * kernel's, and g_prev_segv is written before the handler that reads it is
 * installed, so a child forked half-way finds the default and installs anew.
 */
static pthread_mutex_t g_handler_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction g_prev_segv;
static pthread_once_t g_segv_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_altstack_key;
static _Thread_local bool tls_altstack;

/* Async-signal-safe formatting: strings and unsigned numbers only. */
static size_t put_str(char *buf, size_t at, size_t cap, const char *s)
{
    while (s && *s && at + 1 < cap)
        buf[at++] = *s++;
    return at;
}

static size_t put_num(char *buf, size_t at, size_t cap, unsigned long v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && n < (int)sizeof tmp);
    while (n > 0 && at + 1 < cap)
        buf[at++] = tmp[--n];
    return at;
}

static void segv_handler(int sig, siginfo_t *si, void *uctx)
{
    urio__task_t *t = urio__tls_task;
    uintptr_t addr = (uintptr_t)si->si_addr;
    if (t != NULL && t->stack != NULL && addr >= (uintptr_t)t->stack->map &&
        addr < (uintptr_t)t->stack->base) {
        char buf[512];
        size_t n = 0;
        n = put_str(buf, n, sizeof buf, "urio: CRITICAL: task '");
        n = put_str(buf, n, sizeof buf, t->name);
        n = put_str(buf, n, sizeof buf, "' (created at ");
        n = put_str(buf, n, sizeof buf, t->site ? t->site->file : "?");
        n = put_str(buf, n, sizeof buf, ":");
        n = put_num(buf, n, sizeof buf, t->site ? (unsigned long)t->site->line : 0);
        n = put_str(buf, n, sizeof buf, ") overflowed its stack of ");
        n = put_num(buf, n, sizeof buf, (unsigned long)(t->stack->size / 1024));
        n = put_str(buf, n, sizeof buf, " KiB: give it a larger urio_task_opts_t.stack_size "
                                        "(or -Dtask_stack_size)\n");
        ssize_t w = write(STDERR_FILENO, buf, n);
        (void)w;
    }
    /* Then what would have happened anyway: the previous handler, or death by SIGSEGV. */
    if (g_prev_segv.sa_flags & SA_SIGINFO) {
        if (g_prev_segv.sa_sigaction) {
            g_prev_segv.sa_sigaction(sig, si, uctx);
            return;
        }
    } else if (g_prev_segv.sa_handler != SIG_DFL && g_prev_segv.sa_handler != SIG_IGN) {
        g_prev_segv.sa_handler(sig);
        return;
    }
    URIO_COVERAGE_FLUSH();      /* the process dies next (coverage builds only) */
    /* GCOVR_EXCL_START: what runs after the flush is never counted */
    signal(sig, SIG_DFL);
    if (si->si_code <= 0)
        raise(sig);             /* sent, not a fault: deliver it again, by default */
    /* GCOVR_EXCL_STOP */
    /* A fault: the faulting access runs again, and kills. */
}

static void altstack_free(void *p)
{
    stack_t off = { .ss_flags = SS_DISABLE };
    sigaltstack(&off, NULL);
    munmap(p, 64 * 1024);
}

static void segv_key(void)
{
    pthread_key_create(&g_altstack_key, altstack_free);
}

__attribute__((constructor)) static void handler_fork_lock(void)
{
    urio__fork_lock_add("overflow handler", &g_handler_mu, NULL);
}

/*
 * Debug mode, at each task's creation: make sure the handler is ours (a
 * library or a test harness may have installed its own since; it becomes
 * the one we hand over to).  One sigaction read per task, in debug mode only.
 */
void urio__overflow_handler_on(void)
{
    /*
     * Only where nobody else handles SIGSEGV: a crash reporter or a test
     * harness keeps its handler (and ours never chains to itself).  Checked
     * and installed under one lock, at each task's creation in debug mode.
     */
    pthread_mutex_lock(&g_handler_mu);
    struct sigaction cur;
    if (sigaction(SIGSEGV, NULL, &cur) == 0 && !(cur.sa_flags & SA_SIGINFO) &&
        cur.sa_handler == SIG_DFL) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = segv_handler;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        g_prev_segv = cur;
        sigaction(SIGSEGV, &sa, NULL);
    }
    pthread_mutex_unlock(&g_handler_mu);
}

/* Debug mode, at a task's step: an alternate signal stack for this thread (an
 * overflowed stack has no room left to run a handler on). */
void urio__overflow_reporting_on(void)
{
    pthread_once(&g_segv_once, segv_key);
    if (tls_altstack)
        return;
    tls_altstack = true;
    stack_t old;
    if (sigaltstack(NULL, &old) == 0 && !(old.ss_flags & SS_DISABLE))
        return;                 /* the thread has one already: keep it */
    void *mem = mmap(NULL, 64 * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return;
    stack_t ss = { .ss_sp = mem, .ss_size = 64 * 1024 };
    if (sigaltstack(&ss, NULL) != 0) {
        munmap(mem, 64 * 1024);
        return;
    }
    pthread_setspecific(g_altstack_key, mem);
}
#else
/* Under ASan or TSan, the sanitizer reports stack overflows itself. */
void urio__overflow_reporting_on(void)
{
}
void urio__overflow_handler_on(void)
{
}
#endif

