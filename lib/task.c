/*
 * task.c — coroutines and tasks: functions running on their own stacks.
 *
 * A task is a future (future.c's "Task" kind) whose extension is a
 * struct urio__task: the coroutine, its stack and its suspended context.
 * The loop runs a task by switching to its context from a callback (a
 * "step"); the task runs until it awaits something not done, which adds a
 * done callback that will switch back into it, and switches to the loop.
 * Tasks never switch to each other directly: every step starts from the
 * loop's stack, so a task's suspension is always one switch deep.
 *
 * Cancellation is a request: urio_future_cancel(task) sets a flag and
 * cancels the future the task is blocked on; the await returns -ECANCELED
 * and so does every later one (unless shielded); the task ends cancelled if
 * it returns -ECANCELED.
 *
 * Sanitizers follow the switches: ASan's fiber annotations, TSan's fibers,
 * and valgrind's stack registration are compiled in when that tool is in use.
 */
#include "internal.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define URIO_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define URIO_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define URIO_TSAN_FIBERS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define URIO_TSAN_FIBERS 1
#endif
#endif

#ifdef URIO_ASAN
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old,
                                     size_t *size_old);
#endif
#ifdef URIO_TSAN_FIBERS
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
#endif
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define URIO_VALGRIND 1
#endif
#endif

/* ------------------------------------------------------------------ */
/* Stacks: mmap'd with a guard page below, pooled per loop              */

typedef struct task_stack {
    struct task_stack *next;     /* in the pool */
    void *map;                   /* the mapping: guard page, then the stack */
    size_t map_size;
    void *base;                  /* the usable stack's lowest address */
    size_t size;
    unsigned valgrind_id;
} task_stack_t;

struct urio__stack_pool {
    task_stack_t *free;
    uint32_t nfree;
};

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

static task_stack_t *stack_get(urio_loop_t *loop, size_t size)
{
    size_t ps = page_size();
    size = (size + ps - 1) & ~(ps - 1);
    struct urio__stack_pool *pool = loop->stacks;
    if (pool == NULL) {
        pool = loop->stacks = urio__calloc(1, sizeof *pool);
        if (pool == NULL)
            return NULL;
    }
    /* Reuse one of the right size (the pool holds mostly default-sized stacks). */
    for (task_stack_t **p = &pool->free; *p != NULL; p = &(*p)->next) {
        if ((*p)->size == size) {
            task_stack_t *st = *p;
            *p = st->next;
            pool->nfree--;
            return st;
        }
    }
    task_stack_t *st = urio__calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    st->map_size = size + ps;
    st->map = mmap(NULL, st->map_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (st->map == MAP_FAILED) {
        urio__free(st);
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
        return NULL;
    }
    st->base = (char *)st->map + ps;
    st->size = size;
#ifdef URIO_VALGRIND
    st->valgrind_id = VALGRIND_STACK_REGISTER(st->base, (char *)st->base + size);
#endif
    return st;
}

static void stack_free(task_stack_t *st)
{
#ifdef URIO_VALGRIND
    VALGRIND_STACK_DEREGISTER(st->valgrind_id);
#endif
    munmap(st->map, st->map_size);
    urio__free(st);
}

static void stack_put(urio_loop_t *loop, task_stack_t *st)
{
    struct urio__stack_pool *pool = loop->stacks;
    if (pool->nfree >= POOL_MAX) {
        stack_free(st);
        return;
    }
    st->next = pool->free;
    pool->free = st;
    pool->nfree++;
}

static void stack_pool_free(urio_loop_t *loop)
{
    struct urio__stack_pool *pool = loop->stacks;
    if (pool == NULL)
        return;
    while (pool->free) {
        task_stack_t *st = pool->free;
        pool->free = st->next;
        stack_free(st);
    }
    urio__free(pool);
    loop->stacks = NULL;
}

/* ------------------------------------------------------------------ */
/* Coroutine objects and the never-awaited check                        */

struct urio_coro {
    urio_coro_fn fn;
    void *arg;
    const urio_site_t *site;
    urio_loop_t *loop;           /* the loop it was made in (its list), or NULL (the global list) */
    struct urio_coro *next, *prev;
    bool listed;                 /* on its list: a never-awaited candidate */
    urio__stack_t *stack;        /* debug mode: where it was made */
};

/* Coroutines made outside any loop: checked at exit.  Guarded by g_coros_mu. */
static pthread_mutex_t g_coros_mu = PTHREAD_MUTEX_INITIALIZER;
static struct urio_coro *g_coros;

static struct urio_coro **list_of(urio_coro_t *c)
{
    return c->loop ? &c->loop->coros : &g_coros;
}

static void coro_link(urio_coro_t *c)
{
    if (c->loop == NULL)
        pthread_mutex_lock(&g_coros_mu);
    struct urio_coro **head = list_of(c);
    c->prev = NULL;
    c->next = *head;
    if (*head)
        (*head)->prev = c;
    *head = c;
    c->listed = true;
    if (c->loop == NULL)
        pthread_mutex_unlock(&g_coros_mu);
}

static void coro_unlink(urio_coro_t *c)
{
    if (!c->listed)
        return;             /* handed over already */
    c->listed = false;
    if (c->loop == NULL)
        pthread_mutex_lock(&g_coros_mu);
    if (c->prev)
        c->prev->next = c->next;
    else
        *list_of(c) = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    if (c->loop == NULL)
        pthread_mutex_unlock(&g_coros_mu);
}

static bool debug_for_new_coro(urio_loop_t *loop)
{
    if (loop != NULL)
        return loop->debug;
    const char *v = getenv("URIO_DEBUG");
    return (v != NULL && *v != '\0' && strcmp(v, "0") != 0) || URIO_DEBUG_BUILD;
}

URIO_EXPORT urio_coro_t *urio_coro_new(urio_coro_fn fn, void *arg, const urio_site_t *site)
{
    if (fn == NULL) {
        errno = EINVAL;
        return NULL;
    }
    urio_coro_t *c = urio__calloc(1, sizeof *c);
    if (c == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    c->fn = fn;
    c->arg = arg;
    c->site = site;
    c->loop = urio_loop_current();
#if URIO_DEBUG_CHECKS
    if (debug_for_new_coro(c->loop)) {
        c->stack = urio__malloc(sizeof *c->stack);
        if (c->stack)
            urio__stack_capture(c->stack, 1);
    }
#else
    (void)debug_for_new_coro;
#endif
    coro_link(c);
    return c;
}

static void coro_free(urio_coro_t *c)
{
    urio__free(c->stack);
    urio__free(c);
}

/* The coroutine is started (or handed over): no longer a candidate for the warning. */
static void coro_claim(urio_coro_t *c)
{
    coro_unlink(c);
}

URIO_EXPORT void urio_coro_close(urio_coro_t *c)
{
    if (c == NULL)
        return;
    coro_unlink(c);
    coro_free(c);
}

static const char *coro_name(const urio_coro_t *c)
{
    return c->site && c->site->name ? c->site->name : "?";
}

/* "file.c:42: RuntimeWarning: coroutine 'fn' was never awaited" (+ the stack). */
static void report_never_awaited(urio_coro_t *c)
{
    char *tb = c->stack ? urio__stack_format(c->stack, "Coroutine created at (most recent call last)")
                        : NULL;
    urio__log(URIO_LOG_WARNING, "%s:%d: RuntimeWarning: coroutine '%s' was never awaited%s%s",
              c->site ? c->site->file : "?", c->site ? c->site->line : 0, coro_name(c),
              tb ? "\n" : "", tb ? tb : "");
    urio__free(tb);
}

__attribute__((destructor)) static void check_coros_at_exit(void)
{
    pthread_mutex_lock(&g_coros_mu);
    urio_coro_t *c = g_coros;
    g_coros = NULL;
    pthread_mutex_unlock(&g_coros_mu);
    while (c) {
        urio_coro_t *next = c->next;
        report_never_awaited(c);
        coro_free(c);
        c = next;
    }
}

/* ------------------------------------------------------------------ */
/* Tasks                                                                */

enum { T_NEW, T_RUNNING, T_SUSPENDED, T_DONE };

typedef struct urio__task {
    urio_future_t *self;         /* the task's future (this is its extension) */
    urio_loop_t *loop;
    urio_coro_t *coro;           /* owned until the task ends */
    const urio_site_t *site;     /* the coroutine's: names the task */
    const char *name;
    char *name_owned;
    urio__ctx_t ctx;             /* the task, while suspended */
    task_stack_t *stack;
    urio_future_t *awaiting;     /* the future it is blocked on, with a reference */
    urio_handle_t sleep_timer;   /* in urio_sleep: the timer that resumes it */
    urio_future_t *proxy;        /* run_coroutine_threadsafe's future mirroring it, or NULL */
    struct urio__task *next, *prev;   /* the loop's live tasks */
    uint8_t state;
    bool cancel_requested;
    uint32_t shield;             /* urio_shield_begin depth */
    int ret;                     /* what the function returned */
    void *result;
    char *errmsg;                /* urio_task_fail's message */
    /* Sanitizer bookkeeping, per switch. */
    void *asan_fake;
    const void *loop_stack_bottom;
    size_t loop_stack_size;
    void *tsan_fiber;
} urio__task_t;

static urio__task_t *task_of(urio_future_t *f)
{
    return urio__future_ext(f);
}

/* ------------------------------------------------------------------ */
/* Stack overflow, in debug mode: say which task before the process dies */

#if !defined(URIO_ASAN) && !defined(URIO_TSAN_FIBERS)
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
    urio_loop_t *loop = urio_loop_current();
    urio__task_t *t = loop ? loop->current_task : NULL;
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
    signal(sig, SIG_DFL);
    if (si->si_code <= 0)
        raise(sig);             /* sent, not a fault: deliver it again, by default */
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

/*
 * Debug mode, at each task's creation: make sure the handler is ours (a
 * library or a test harness may have installed its own since; it becomes
 * the one we hand over to).  One sigaction read per task, in debug mode only.
 */
static void overflow_handler_on(void)
{
    /*
     * Only where nobody else handles SIGSEGV: a crash reporter or a test
     * harness keeps its handler (and ours never chains to itself).  Checked
     * and installed under one lock, at each task's creation in debug mode.
     */
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
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
    pthread_mutex_unlock(&mu);
}

/* Debug mode, at a task's step: an alternate signal stack for this thread (an
 * overflowed stack has no room left to run a handler on). */
static void overflow_reporting_on(void)
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
static void overflow_reporting_on(void)
{
}
static void overflow_handler_on(void)
{
}
#endif

static bool task_cancel(urio_future_t *f);
static void task_describe(const urio_future_t *f, char *buf, size_t n);
static void task_finalize(urio_future_t *f);

static const urio__future_ops_t task_ops = {
    .kind = "Task",
    .cancel = task_cancel,
    .describe = task_describe,
    .finalize = task_finalize,
};

URIO_EXPORT bool urio_future_is_task(const urio_future_t *f)
{
    return f != NULL && urio__future_ops(f) == &task_ops;
}

URIO_EXPORT const char *urio_task_name(const urio_future_t *f)
{
    return urio_future_is_task(f) ? task_of((urio_future_t *)f)->name : NULL;
}

static void task_describe(const urio_future_t *f, char *buf, size_t n)
{
    const urio__task_t *t = task_of((urio_future_t *)f);
    const char *state = urio__future_state_name(f);
    if (t->site)
        snprintf(buf, n, "<Task %s '%s' created at %s:%d>", state, t->name, t->site->file,
                 t->site->line);
    else
        snprintf(buf, n, "<Task %s '%s'>", state, t->name);
}

static void task_finalize(urio_future_t *f)
{
    urio__task_t *t = task_of(f);
    urio__free(t->name_owned);
    urio__free(t->errmsg);
}

URIO_EXPORT urio_future_t *urio_task_current(void)
{
    urio_loop_t *loop = urio_loop_current();
    return loop && loop->current_task ? loop->current_task->self : NULL;
}

static urio__task_t *current_task(void)
{
    urio_loop_t *loop = urio_loop_current();
    return loop ? loop->current_task : NULL;
}

/* Switches from the loop's stack into t, until t suspends or ends. */
static void task_finish(urio__task_t *t);

static void switch_in(urio__task_t *t)
{
    urio_loop_t *loop = t->loop;
    loop->current_task = t;
    loop->stepped_task = t;         /* whichever callback resumed it: the step is the task's */
    loop->task_thread = urio__thread_token();
    t->state = T_RUNNING;
#ifdef URIO_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, t->stack->base, t->stack->size);
#endif
#ifdef URIO_TSAN_FIBERS
    if (loop->san_fiber == NULL)
        loop->san_fiber = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(t->tsan_fiber, 0);
#endif
    urio__ctx_switch(&loop->task_return, &t->ctx);
#ifdef URIO_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
    loop->current_task = NULL;
    if (t->state == T_DONE)
        task_finish(t);
}

/* From the task's stack back to the loop's; returns when the loop resumes it. */
static void switch_out(urio__task_t *t, bool for_good)
{
#ifdef URIO_ASAN
    __sanitizer_start_switch_fiber(for_good ? NULL : &t->asan_fake, t->loop_stack_bottom,
                                   t->loop_stack_size);
#endif
#ifdef URIO_TSAN_FIBERS
    __tsan_switch_to_fiber(t->loop->san_fiber, 0);
#endif
    urio__ctx_switch(&t->ctx, &t->loop->task_return);
#ifdef URIO_ASAN
    __sanitizer_finish_switch_fiber(t->asan_fake, &t->loop_stack_bottom, &t->loop_stack_size);
#else
    (void)for_good;
#endif
}

/* The task's first frame, on its own stack. */
static void task_entry(void *arg)
{
    urio__task_t *t = arg;
#ifdef URIO_ASAN
    __sanitizer_finish_switch_fiber(NULL, &t->loop_stack_bottom, &t->loop_stack_size);
#endif
    if (t->cancel_requested) {
        t->ret = -ECANCELED;        /* cancelled before its first step: the body never runs */
    } else {
        urio_coro_t *c = t->coro;
        t->ret = c->fn(c->arg, &t->result);
    }
    t->state = T_DONE;
    switch_out(t, true);
    abort();                        /* a finished task is never resumed */
}

/* A step: the loop resumes t (its first step, after a yield, or after an await). */
static void task_step(void *arg)
{
    urio__task_t *t = arg;
    if (t->loop->debug)
        overflow_reporting_on();
    if (t->state != T_DONE)
        switch_in(t);
    urio_future_unref(t->self);     /* the step's reference */
}

static int schedule_step(urio__task_t *t)
{
    static const urio_site_t step_site = { "<task step>", __FILE__, __LINE__ };
    urio_future_ref(t->self);
    if (urio__call_soon(t->loop, task_step, t, &step_site).id == 0) {
        urio_future_unref(t->self);
        return -errno;
    }
    return 0;
}

static void task_list_remove(urio__task_t *t)
{
    urio_loop_t *loop = t->loop;
    if (t->prev)
        t->prev->next = t->next;
    else
        loop->tasks = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->next = t->prev = NULL;
    loop->ntasks--;
    if (loop->ntasks == 0 && loop->tasks_drained != NULL && !urio_future_done(loop->tasks_drained))
        urio_future_set_result(loop->tasks_drained, NULL);
}

/* The task's function returned: free its stack, complete its future. */
static void task_finish(urio__task_t *t)
{
    urio_loop_t *loop = t->loop;
#ifdef URIO_TSAN_FIBERS
    __tsan_destroy_fiber(t->tsan_fiber);
    t->tsan_fiber = NULL;
#endif
    stack_put(loop, t->stack);
    t->stack = NULL;
    coro_free(t->coro);
    t->coro = NULL;
    task_list_remove(t);
    urio_future_t *f = t->self;
    if (t->ret == 0)
        urio_future_set_result(f, t->result);
    else if (t->ret == -ECANCELED && t->cancel_requested)
        urio__future_cancel_now(f);
    else if (t->errmsg)
        urio_future_set_error(f, t->ret < 0 ? t->ret : -EINVAL, "%s", t->errmsg);
    else
        urio_future_set_error(f, t->ret < 0 ? t->ret : -EINVAL, NULL);
    urio_future_unref(f);           /* the loop's reference, held while it ran */
}

URIO_EXPORT urio_future_t *urio_task_create_opts(urio_loop_t *loop, urio_coro_t *coro,
                                                 const urio_task_opts_t *opts)
{
    if (coro == NULL) {
        errno = EINVAL;
        return NULL;
    }
    int err = 0;
    if (loop == NULL)
        err = EINVAL;
    else if (!urio__loop_check_thread(loop, "urio_task_create"))
        err = EPERM;
    else if (loop->closing)
        err = ESHUTDOWN;
    if (err) {
        urio_coro_close(coro);      /* it owns coro, also on failure */
        errno = err;
        return NULL;
    }
    urio_future_t *f = urio__future_new_ext(loop, sizeof(urio__task_t), &task_ops);
    if (f == NULL) {
        urio_coro_close(coro);
        errno = ENOMEM;
        return NULL;
    }
    urio__task_t *t = task_of(f);
    t->self = f;
    t->loop = loop;
    t->site = coro->site;
    t->name = coro_name(coro);
    if (opts && opts->name) {
        t->name_owned = urio__strdup(opts->name);
        if (t->name_owned)
            t->name = t->name_owned;
    }
    size_t size = opts && opts->stack_size ? opts->stack_size : URIO_DEFAULT_STACK_SIZE;
    t->stack = stack_get(loop, size);
    if (t->stack == NULL) {
        urio_coro_close(coro);
        urio_future_unref(f);
        errno = ENOMEM;
        return NULL;
    }
    urio__ctx_make(&t->ctx, t->stack->base, t->stack->size, task_entry, t);
#ifdef URIO_TSAN_FIBERS
    t->tsan_fiber = __tsan_create_fiber(0);
#endif
#if URIO_DEBUG_CHECKS
    if (loop->debug) {
        /* The task reports where it was created: its coroutine's stack, or here. */
        urio__stack_t *st = urio__malloc(sizeof *st);
        if (st) {
            if (coro->stack)
                *st = *coro->stack;
            else
                urio__stack_capture(st, 1);
            urio__future_capture_stack(f, st);
        }
    }
#endif
    if (loop->debug)
        overflow_handler_on();
    urio_future_ref(f);             /* the loop's, until the task ends */
    if (schedule_step(t) < 0) {
        int e = errno;
        stack_put(loop, t->stack);
        t->stack = NULL;
        urio_coro_close(coro);
#ifdef URIO_TSAN_FIBERS
        __tsan_destroy_fiber(t->tsan_fiber);
#endif
        urio_future_unref(f);
        urio_future_unref(f);
        errno = e;
        return NULL;
    }
    coro_claim(coro);
    t->coro = coro;
    if (loop->tasks_drained != NULL)
        t->cancel_requested = true;     /* urio_run is cancelling everything: this too */
    t->next = loop->tasks;
    if (loop->tasks)
        loop->tasks->prev = t;
    loop->tasks = t;
    loop->ntasks++;
    return f;
}

#undef urio_task_create
URIO_EXPORT urio_future_t *urio_task_create(urio_loop_t *loop, urio_coro_t *coro)
{
    return urio_task_create_opts(loop, coro, NULL);
}

/* ------------------------------------------------------------------ */
/* Awaiting                                                             */

static bool cancel_pending(const urio__task_t *t)
{
    return t->cancel_requested && t->shield == 0;
}

/* f is done: resume the task blocked on it. */
static void await_done(urio_future_t *f, void *arg)
{
    urio__task_t *t = arg;
    if (t->awaiting != f || t->state != T_SUSPENDED)
        return;
    switch_in(t);
}

static bool task_cancel(urio_future_t *f)
{
    urio__task_t *t = task_of(f);
    if (t->state == T_DONE)
        return false;
    if (t->cancel_requested)
        return true;                /* idempotent */
    t->cancel_requested = true;
    if (t->state != T_SUSPENDED || t->shield != 0)
        return true;                /* delivered at its next await */
    if (t->awaiting != NULL) {
        /* Blocked in an await: cancel what it waits on; its completion resumes the task. */
        urio_future_cancel(t->awaiting);
    } else if (t->sleep_timer.id != 0) {
        /* Asleep: stop the timer and wake it now. */
        urio_handle_cancel(t->loop, t->sleep_timer);
        t->sleep_timer.id = 0;
        schedule_step(t);
    }
    return true;
}

URIO_EXPORT int urio_await(urio_future_t *f, void **result)
{
    urio__task_t *t = current_task();
    if (t == NULL) {
        urio__log(URIO_LOG_ERROR, "urio_await(): called outside a task");
        return -EPERM;
    }
    if (f == NULL || urio_future_loop(f) != t->loop)
        return -EINVAL;
    if (f == t->self)
        return -EDEADLK;
    if (cancel_pending(t))
        return -ECANCELED;
    if (!urio_future_done(f)) {
        int ret = urio_future_add_done_callback(f, await_done, t);
        if (ret < 0)
            return ret;
        t->awaiting = urio_future_ref(f);
        t->state = T_SUSPENDED;
        switch_out(t, false);
        t->awaiting = NULL;
        urio_future_unref(f);
    }
    /* A cancel that came while it waited wins, as asyncio's does at the next step. */
    if (cancel_pending(t))
        return -ECANCELED;
    return urio_future_result(f, result);
}

URIO_EXPORT int urio_await_coro(urio_coro_t *coro, void **result)
{
    urio__task_t *t = current_task();
    if (coro == NULL)
        return -EINVAL;
    if (t == NULL) {
        urio_coro_close(coro);
        urio__log(URIO_LOG_ERROR, "urio_await_coro(): called outside a task");
        return -EPERM;
    }
    coro_claim(coro);
    void *res = NULL;
    int ret = cancel_pending(t) ? -ECANCELED : coro->fn(coro->arg, &res);
    coro_free(coro);
    if (ret == 0 && result)
        *result = res;
    return ret;
}

URIO_EXPORT int urio_task_fail(int err, const char *fmt, ...)
{
    urio__task_t *t = current_task();
    if (t == NULL || fmt == NULL)
        return err;
    va_list ap;
    va_start(ap, fmt);
    char *msg = urio__vasprintf(fmt, ap);
    va_end(ap);
    urio__free(t->errmsg);
    t->errmsg = msg;                /* NULL on ENOMEM: the error without its text */
    return err;
}

/* The sleep's timer: resume the task.  No future, so nothing to leak if the loop closes. */
static void sleep_wake(void *arg)
{
    urio__task_t *t = arg;
    if (t->sleep_timer.id != 0 && t->state == T_SUSPENDED) {
        t->sleep_timer.id = 0;
        switch_in(t);
    }
}

URIO_EXPORT int urio_sleep(uint64_t ns)
{
    urio__task_t *t = current_task();
    if (t == NULL)
        return -EPERM;
    if (ns == 0)
        return urio_yield();
    if (cancel_pending(t))
        return -ECANCELED;
    static const urio_site_t site = { "<urio_sleep>", __FILE__, __LINE__ };
    urio_handle_t h = urio_call_later_site(t->loop, ns, sleep_wake, t, &site);
    if (h.id == 0)
        return -errno;
    t->sleep_timer = h;
    t->state = T_SUSPENDED;
    switch_out(t, false);
    /* Resumed by the timer, or early by a cancel (which cancelled the timer). */
    t->sleep_timer.id = 0;
    return cancel_pending(t) ? -ECANCELED : 0;
}

URIO_EXPORT int urio_yield(void)
{
    urio__task_t *t = current_task();
    if (t == NULL)
        return -EPERM;
    int ret = schedule_step(t);
    if (ret < 0)
        return ret;
    t->state = T_SUSPENDED;
    switch_out(t, false);
    return cancel_pending(t) ? -ECANCELED : 0;
}

struct wait_for {
    urio_future_t *f;
    bool timed_out;
};

static void wait_for_expired(void *arg)
{
    struct wait_for *w = arg;
    if (!urio_future_done(w->f)) {
        w->timed_out = true;
        urio_future_cancel(w->f);
    }
}

URIO_EXPORT int urio_wait_for(urio_future_t *f, uint64_t timeout_ns, void **result)
{
    urio__task_t *t = current_task();
    if (t == NULL)
        return -EPERM;
    if (f == NULL)
        return -EINVAL;
    struct wait_for w = { f, false };
    static const urio_site_t site = { "<urio_wait_for timeout>", __FILE__, __LINE__ };
    urio_handle_t h = urio_call_later_site(t->loop, timeout_ns, wait_for_expired, &w, &site);
    if (h.id == 0)
        return -errno;
    int ret = urio_await(f, result);
    urio_handle_cancel(t->loop, h);
    if (w.timed_out && urio_future_cancelled(f))
        return -ETIMEDOUT;      /* (a shielded f may finish anyway: then its outcome stands) */
    if (ret == -ECANCELED && cancel_pending(t))
        urio_future_cancel(f);      /* the waiter was cancelled: so is what it waited for */
    return ret;
}

URIO_EXPORT int urio_shield_begin(void)
{
    urio__task_t *t = current_task();
    if (t == NULL)
        return -EPERM;
    t->shield++;
    return 0;
}

URIO_EXPORT int urio_shield_end(void)
{
    urio__task_t *t = current_task();
    if (t == NULL || t->shield == 0)
        return -EPERM;
    t->shield--;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Gathering, and task groups                                           */

/*
 * Waits, shielded, until every future of fs is done: used after a failure
 * or a cancel, so no child outlives the call that owns it.
 */
static void await_all_done(urio_future_t *const *fs, size_t n)
{
    urio_shield_begin();
    for (size_t i = 0; i < n; i++)
        if (fs[i] != NULL && !urio_future_done(fs[i]))
            urio_await(fs[i], NULL);
    urio_shield_end();
}

typedef struct gather {
    urio_future_t *any;          /* completed when a child fails, or all are done */
    size_t left;
    int err;
    size_t failed;
    urio_future_t *const *fs;
    size_t n;
} gather_t;

static void gather_child_done(urio_future_t *f, void *arg)
{
    gather_t *g = arg;
    g->left--;
    int ret = urio_future_result(f, NULL);
    if (ret != 0 && g->err == 0) {
        g->err = ret;
        for (size_t i = 0; i < g->n; i++)
            if (g->fs[i] == f)
                g->failed = i;
    }
    if ((ret != 0 || g->left == 0) && !urio_future_done(g->any))
        urio_future_set_result(g->any, NULL);
}

URIO_EXPORT int urio_gather(urio_future_t *const *fs, size_t n, void **results, size_t *failed)
{
    urio__task_t *t = current_task();
    if (t == NULL)
        return -EPERM;
    if (n > 0 && fs == NULL)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (fs[i] == NULL || urio_future_loop(fs[i]) != t->loop)
            return -EINVAL;
        if (fs[i] == t->self)
            return -EDEADLK;
    }
    gather_t g = { .any = urio_future_new(t->loop), .left = n, .fs = fs, .n = n };
    if (g.any == NULL)
        return -errno;
    size_t registered = 0;
    int ret = 0;
    for (; registered < n; registered++) {
        ret = urio_future_add_done_callback(fs[registered], gather_child_done, &g);
        if (ret < 0)
            break;
    }
    if (ret == 0 && n > 0)
        ret = urio_await(g.any, NULL);
    /* A failure, a cancel, or an error registering: cancel the rest, let them finish. */
    if (ret != 0 || g.err != 0) {
        for (size_t i = 0; i < n; i++)
            urio_future_cancel(fs[i]);
    }
    for (size_t i = registered; i < n; i++)
        g.left--;               /* never registered: not counted */
    await_all_done(fs, n);
    /* A child that ended just now may have its callback (which uses g) still queued. */
    while (g.left > 0)
        urio_yield();
    urio_future_unref(g.any);
    if (ret == -ECANCELED && cancel_pending(t))
        return -ECANCELED;
    if (ret < 0 && g.err == 0)
        return ret;
    if (g.err != 0) {
        if (failed)
            *failed = g.failed;
        return g.err;
    }
    for (size_t i = 0; results && i < n; i++)
        urio_future_result(fs[i], &results[i]);
    return 0;
}

struct urio_task_group {
    uint32_t refs;               /* the owner's + one per child whose callback has not run */
    bool waiting;
    bool freed;                  /* the owner called urio_task_group_free */
    urio_loop_t *loop;
    urio_future_t **children;
    size_t n, cap;
    size_t running;
    urio_future_t *changed;      /* completed when a child ends while someone waits */
    int err;
    char *errmsg;
};

URIO_EXPORT int urio_task_group_new(urio_task_group_t **out)
{
    urio__task_t *t = current_task();
    if (out == NULL)
        return -EINVAL;
    if (t == NULL)
        return -EPERM;
    urio_task_group_t *g = urio__calloc(1, sizeof *g);
    if (g == NULL)
        return -ENOMEM;
    g->refs = 1;
    g->loop = t->loop;
    *out = g;
    return 0;
}

static void group_unref(urio_task_group_t *g)
{
    if (--g->refs > 0)
        return;
    for (size_t i = 0; i < g->n; i++)
        urio_future_unref(g->children[i]);
    urio__free(g->children);
    urio__free(g->errmsg);
    urio__free(g);
}

static void group_child_done(urio_future_t *f, void *arg)
{
    urio_task_group_t *g = arg;
    g->running--;
    if (g->refs == 1 && g->freed) {
        group_unref(g);     /* the owner let go: this was the last child */
        return;
    }
    int ret = urio_future_result(f, NULL);
    if (ret != 0 && ret != -ECANCELED && g->err == 0) {
        /* The first failure: say which child and why, then cancel the siblings. */
        urio__task_t *c = task_of(f);
        const char *msg = urio_future_error_message(f);
        g->err = ret;
        g->errmsg = urio__asprintf("child '%s' (created at %s:%d) failed: %s (%s)%s%s", c->name,
                                   c->site ? c->site->file : "?", c->site ? c->site->line : 0,
                                   urio_strerror_name(ret), urio_strerror(ret), msg ? ": " : "",
                                   msg ? msg : "");
        for (size_t i = 0; i < g->n; i++)
            if (g->children[i] != f)
                urio_future_cancel(g->children[i]);
    }
    if (g->changed && !urio_future_done(g->changed))
        urio_future_set_result(g->changed, NULL);
    group_unref(g);         /* this child's callback has run */
}

URIO_EXPORT urio_future_t *urio_task_group_spawn(urio_task_group_t *g, urio_coro_t *coro)
{
    if (g == NULL || coro == NULL) {
        urio_coro_close(coro);
        errno = EINVAL;
        return NULL;
    }
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 8;
        urio_future_t **c = urio__realloc(g->children, cap * sizeof *c);
        if (c == NULL) {
            urio_coro_close(coro);
            errno = ENOMEM;
            return NULL;
        }
        g->children = c;
        g->cap = cap;
    }
    urio_future_t *child = urio_task_create(g->loop, coro);
    if (child == NULL)
        return NULL;
    if (urio_future_add_done_callback(child, group_child_done, g) < 0) {
        urio_future_cancel(child);
        urio_future_unref(child);
        errno = ENOMEM;
        return NULL;
    }
    if (g->err != 0)
        urio_future_cancel(child);  /* the group is failing already */
    g->children[g->n++] = child;
    g->running++;
    g->refs++;              /* held by the child's done callback */
    return child;
}

URIO_EXPORT int urio_task_group_wait(urio_task_group_t *g)
{
    urio__task_t *t = current_task();
    if (g == NULL)
        return -EINVAL;
    if (t == NULL)
        return -EPERM;
    if (g->waiting)
        return -EBUSY;      /* one waiter at a time */
    g->waiting = true;
    int ret = 0;
    while (g->running > 0) {
        g->changed = urio_future_new(g->loop);
        if (g->changed == NULL)
            return -errno;
        ret = urio_await(g->changed, NULL);
        urio_future_unref(g->changed);
        g->changed = NULL;
        if (ret == -ECANCELED) {
            /* The waiter is cancelled: so are the children, and it waits for them. */
            for (size_t i = 0; i < g->n; i++)
                urio_future_cancel(g->children[i]);
            await_all_done(g->children, g->n);
            while (g->running > 0)
                urio_yield();       /* the last callbacks, still queued, use g */
            g->waiting = false;
            return -ECANCELED;
        }
    }
    g->waiting = false;
    return g->err;
}

URIO_EXPORT const char *urio_task_group_error_message(const urio_task_group_t *g)
{
    return g ? g->errmsg : NULL;
}

URIO_EXPORT void urio_task_group_free(urio_task_group_t *g)
{
    if (g == NULL)
        return;
    if (g->running > 0) {
        /* Children cannot outlive their group: cancel them, and in a task wait for them. */
        for (size_t i = 0; i < g->n; i++)
            urio_future_cancel(g->children[i]);
        if (current_task() != NULL) {
            await_all_done(g->children, g->n);
            while (g->running > 0)
                urio_yield();
        } else {
            urio__log(URIO_LOG_ERROR, "urio_task_group_free(): called outside a task with "
                      "%zu children running: they are cancelled, not awaited", g->running);
        }
    }
    /* Callbacks still queued hold the group: the last one frees it. */
    g->freed = true;
    group_unref(g);
}

bool urio__task_step_dropped(urio_callback_fn fn, void *arg)
{
    if (fn != task_step)
        return false;
    urio_future_unref(((urio__task_t *)arg)->self);    /* the step's reference */
    return true;
}

void urio__task_describe_short(const struct urio__task *t, char *buf, size_t n)
{
    if (t->site)
        snprintf(buf, n, "<Task '%s' created at %s:%d>", t->name, t->site->file, t->site->line);
    else
        snprintf(buf, n, "<Task '%s'>", t->name);
}

/* ------------------------------------------------------------------ */
/* Closing                                                              */

/* The future run_coroutine_threadsafe returns: it mirrors the task's outcome. */
typedef struct proxy {
    urio_future_t *task;            /* loop thread: the task, once made */
    urio_coro_t *coro;              /* until the loop starts it */
} proxy_t;

static void proxy_task_done(urio_future_t *task, void *arg);

void urio__tasks_close(urio_loop_t *loop)
{
    /* Coroutines made in this loop and never started. */
    while (loop->coros) {
        urio_coro_t *c = loop->coros;
        coro_unlink(c);
        report_never_awaited(c);
        coro_free(c);
    }
    /* Tasks still pending: their stacks hold frames that will never run again. */
    while (loop->tasks) {
        urio__task_t *t = loop->tasks;
        urio_error_context_t ctx = {
            .message = "Task was destroyed but it is pending!",
            .future = t->self,
        };
        urio_loop_call_exception_handler(loop, &ctx);
        task_list_remove(t);
        if (t->proxy != NULL) {
            /* The other thread's future: cancelled now (its done callback won't run). */
            urio_future_t *task = t->self;
            if (urio_future_remove_done_callback(task, proxy_task_done, t->proxy) > 0) {
                urio_future_t *proxy = t->proxy;
                ((proxy_t *)urio__future_ext(proxy))->task = NULL;
                t->proxy = NULL;
                urio__future_cancel_now(proxy);
                urio_future_unref(task);        /* the proxy's reference on the task */
                urio_future_unref(proxy);       /* the done callback's reference */
            }
        }
        if (t->awaiting) {
            urio_future_remove_done_callback(t->awaiting, await_done, t);
            urio_future_unref(t->awaiting);
            t->awaiting = NULL;
        }
#ifdef URIO_TSAN_FIBERS
        __tsan_destroy_fiber(t->tsan_fiber);
#endif
        stack_free(t->stack);
        t->stack = NULL;
        coro_free(t->coro);
        t->coro = NULL;
        t->state = T_DONE;
        urio__future_cancel_now(t->self);   /* waiters on other threads are released */
        urio_future_unref(t->self);         /* the loop's reference */
    }
    stack_pool_free(loop);
}

/* ------------------------------------------------------------------ */
/* urio_run and run_coroutine_threadsafe                                */

URIO_EXPORT int urio_run(urio_coro_t *main, const urio_run_opts_t *opts, void **result)
{
    if (main == NULL)
        return -EINVAL;
    if (urio_loop_current() != NULL) {
        urio_coro_close(main);
        urio__log(URIO_LOG_ERROR, "urio_run(): cannot be called from a running event loop");
        return -EBUSY;
    }
    urio_loop_opts_t lo = { .debug = opts ? opts->debug : 0 };
    urio_loop_t *loop;
    int ret = urio_loop_new(&loop, &lo);
    if (ret < 0) {
        urio_coro_close(main);
        return ret;
    }
    urio_future_t *f = urio_task_create(loop, main);
    if (f == NULL) {
        ret = -errno;
        urio_loop_close(loop);
        return ret;
    }
    ret = urio_loop_run_until_complete(loop, f);
    if (ret == 0 && result)
        urio_future_result(f, result);
    urio_future_unref(f);
    /*
     * Cancel what is left and wait for it, as asyncio.run does: tasks get
     * -ECANCELED at every await, so they end unless a shield holds them (then
     * this waits for the shielded work, sleeping in the kernel meanwhile).
     */
    if (loop->tasks != NULL) {
        urio_future_t *drained = urio_future_new(loop);
        if (drained != NULL) {
            loop->tasks_drained = drained;
            for (urio__task_t *t = loop->tasks; t != NULL; t = t->next)
                urio_future_cancel(t->self);
            urio_loop_run_until_complete(loop, drained);
            loop->tasks_drained = NULL;
            urio_future_unref(drained);
        }
    }
    urio_loop_close(loop);          /* shuts the default pool down, reports what leaked */
    return ret;
}

static bool proxy_cancel(urio_future_t *f)
{
    proxy_t *p = urio__future_ext(f);
    if (p->task != NULL)
        return urio_future_cancel(p->task);     /* the task's end completes the proxy */
    urio__future_cancel_now(f);     /* not started yet: it never will */
    return true;
}

static void proxy_describe(const urio_future_t *f, char *buf, size_t n)
{
    snprintf(buf, n, "<Future %s (run_coroutine_threadsafe)>", urio__future_state_name(f));
}

static const urio__future_ops_t proxy_ops = {
    .kind = "Future",
    .cancel = proxy_cancel,
    .describe = proxy_describe,
};

static void proxy_task_done(urio_future_t *task, void *arg)
{
    urio_future_t *proxy = arg;
    proxy_t *p = urio__future_ext(proxy);
    if (!urio_future_done(proxy)) {
        void *value = NULL;
        int ret = urio_future_result(task, &value);
        if (ret == 0)
            urio_future_set_result(proxy, value);
        else if (ret == -ECANCELED)
            urio__future_cancel_now(proxy);
        else if (urio_future_error_message(task))
            urio_future_set_error(proxy, ret, "%s", urio_future_error_message(task));
        else
            urio_future_set_error(proxy, ret, NULL);
    }
    p->task = NULL;
    task_of(task)->proxy = NULL;
    urio_future_unref(task);
    urio_future_unref(proxy);
}

static void proxy_start(void *arg)
{
    urio_future_t *proxy = arg;
    proxy_t *p = urio__future_ext(proxy);
    urio_coro_t *coro = p->coro;
    p->coro = NULL;
    if (urio_future_done(proxy)) {
        urio_coro_close(coro);      /* cancelled before it started: the caller decided */
        urio_future_unref(proxy);
        return;
    }
    urio_future_t *task = urio_task_create(urio_future_loop(proxy), coro);
    if (task == NULL) {
        urio_future_set_error(proxy, -errno, "urio_run_coroutine_threadsafe: %s",
                              urio_strerror(-errno));
        urio_future_unref(proxy);
        return;
    }
    p->task = task;
    task_of(task)->proxy = proxy;
    if (urio_future_add_done_callback(task, proxy_task_done, proxy) < 0) {
        urio_future_cancel(task);
        p->task = NULL;
        urio_future_set_error(proxy, -ENOMEM, NULL);
        urio_future_unref(task);
        urio_future_unref(proxy);
    }
}

URIO_EXPORT urio_future_t *urio_run_coroutine_threadsafe(urio_coro_t *coro, urio_loop_t *loop)
{
    if (coro == NULL || loop == NULL) {
        urio_coro_close(coro);
        errno = EINVAL;
        return NULL;
    }
    urio_future_t *proxy = urio__future_new_foreign(loop, sizeof(proxy_t), &proxy_ops);
    if (proxy == NULL) {
        urio_coro_close(coro);
        errno = ENOMEM;
        return NULL;
    }
    /*
     * Handed over now, on the calling thread (which made it, or owns it): the
     * list it sits on belongs to this thread's loop, not to `loop`'s thread.
     */
    coro_claim(coro);
    proxy_t *p = urio__future_ext(proxy);
    p->coro = coro;
    urio_future_ref(proxy);         /* proxy_start's */
    int ret = urio_call_soon_threadsafe(loop, proxy_start, proxy);
    if (ret < 0) {
        p->coro = NULL;
        urio_coro_close(coro);
        urio_future_unref(proxy);
        urio_future_unref(proxy);
        errno = -ret;
        return NULL;
    }
    return proxy;
}
