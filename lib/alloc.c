/*
 * alloc.c — every allocation urio makes for itself goes through here.
 *
 * One hook: it picks the allocator (jemalloc's non-standard API, mallocx
 * and dallocx, where the build has it, so urio gets jemalloc even where
 * the process allocator is glibc's; with URIO_MALLOC=libc, the process's
 * malloc and free — glibc's, unless the program puts another allocator
 * first, Debian's libjemalloc also exporting malloc — so valgrind and other
 * leak checkers see urio's blocks), counts blocks for
 * urio_mem_stats(), and lets tests fail allocations on purpose to prove
 * every ENOMEM path.
 */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if URIO_HAVE_JEMALLOC && !defined(URIO_FORCE_LIBC_MALLOC)
#include <jemalloc/jemalloc.h>
#endif

#if URIO_HAVE_JEMALLOC && !defined(URIO_FORCE_LIBC_MALLOC)
/*
 * URIO_MALLOC=libc: read once, before any allocation (a constructor), so
 * every block is freed by the allocator that made it.
 */
static bool g_libc;

__attribute__((constructor)) static void pick_allocator(void)
{
    const char *v = getenv("URIO_MALLOC");
    if (v == NULL || *v == '\0' || strcmp(v, "jemalloc") == 0)
        return;
    if (strcmp(v, "libc") == 0)
        g_libc = true;
    else
        urio__log(URIO_LOG_WARNING, "URIO_MALLOC=%s is not understood (use libc or jemalloc): "
                  "urio allocates with jemalloc", v);
}
#define USE_JEMALLOC (!g_libc)
#else
#define USE_JEMALLOC 0
#endif

static struct {
    atomic_uint_fast64_t allocs, frees, failures;
    atomic_long countdown;       /* < 0: no injection */
    atomic_bool persistent;
} g_alloc = { .countdown = -1 };

void urio__alloc_fail_after(long countdown, bool persistent)
{
    atomic_store(&g_alloc.persistent, persistent);
    atomic_store(&g_alloc.countdown, countdown);
}

/* True if this allocation must fail (test injection). */
static bool inject_failure(void)
{
    long c = atomic_load_explicit(&g_alloc.countdown, memory_order_relaxed);
    if (URIO_LIKELY(c < 0))
        return false;
    if (c > 0) {
        atomic_fetch_sub(&g_alloc.countdown, 1);
        return false;
    }
    if (!atomic_load(&g_alloc.persistent))
        atomic_store(&g_alloc.countdown, -1);
    return true;
}

static void *counted(void *p)
{
    if (URIO_LIKELY(p != NULL))
        atomic_fetch_add_explicit(&g_alloc.allocs, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&g_alloc.failures, 1, memory_order_relaxed);
    return p;
}

void *urio__malloc(size_t n)
{
    if (URIO_UNLIKELY(inject_failure()))
        return counted(NULL);
#if URIO_HAVE_JEMALLOC && !defined(URIO_FORCE_LIBC_MALLOC)
    if (USE_JEMALLOC)
        return counted(mallocx(n ? n : 1, 0));
#endif
    return counted(malloc(n ? n : 1));
}

void *urio__calloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return counted(NULL);
    if (URIO_UNLIKELY(inject_failure()))
        return counted(NULL);
#if URIO_HAVE_JEMALLOC && !defined(URIO_FORCE_LIBC_MALLOC)
    if (USE_JEMALLOC) {
        size_t total = n * size;
        return counted(mallocx(total ? total : 1, MALLOCX_ZERO));
    }
#endif
    return counted(calloc(n ? n : 1, size ? size : 1));
}

void *urio__realloc(void *p, size_t n)
{
    if (p == NULL)
        return urio__malloc(n);
    if (URIO_UNLIKELY(inject_failure())) {
        atomic_fetch_add_explicit(&g_alloc.failures, 1, memory_order_relaxed);
        return NULL;
    }
#if URIO_HAVE_JEMALLOC && !defined(URIO_FORCE_LIBC_MALLOC)
    void *q = USE_JEMALLOC ? rallocx(p, n ? n : 1, 0) : realloc(p, n ? n : 1);
#else
    void *q = realloc(p, n ? n : 1);
#endif
    if (q == NULL)
        atomic_fetch_add_explicit(&g_alloc.failures, 1, memory_order_relaxed);
    return q;
}

void urio__free(void *p)
{
    if (p == NULL)
        return;
    atomic_fetch_add_explicit(&g_alloc.frees, 1, memory_order_relaxed);
    urio__free_forgotten(p);
}

void urio__forget(void *p)
{
    (void)p;
    atomic_fetch_add_explicit(&g_alloc.frees, 1, memory_order_relaxed);
}

void urio__free_forgotten(void *p)
{
    if (p == NULL)
        return;
#if URIO_HAVE_JEMALLOC && !defined(URIO_FORCE_LIBC_MALLOC)
    if (USE_JEMALLOC) {
        dallocx(p, 0);
        return;
    }
#endif
    free(p);
}

void *urio__pages_alloc(size_t n)
{
    if (URIO_UNLIKELY(inject_failure())) {
        atomic_fetch_add_explicit(&g_alloc.failures, 1, memory_order_relaxed);
        return NULL;
    }
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        atomic_fetch_add_explicit(&g_alloc.failures, 1, memory_order_relaxed);
        return NULL;
    }
    return p;
}

void *urio__huge_alloc(size_t n)
{
    if (URIO_UNLIKELY(inject_failure()))
        return counted(NULL);
    void *p;
#if URIO_HAVE_JEMALLOC && !defined(URIO_FORCE_LIBC_MALLOC)
    if (USE_JEMALLOC)
        p = mallocx(n, MALLOCX_ALIGN(URIO__HUGE_PAGE));
    else
#endif
        p = aligned_alloc(URIO__HUGE_PAGE, n);
    /* A hint (THP may be off, or "never"): the memory is good without it. */
    if (p != NULL)
        (void)madvise(p, n, MADV_HUGEPAGE);
    return counted(p);
}

char *urio__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = urio__malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

char *urio__vasprintf(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return NULL;
    char *s = urio__malloc((size_t)n + 1);
    if (s)
        vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

char *urio__asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = urio__vasprintf(fmt, ap);
    va_end(ap);
    return s;
}

URIO_EXPORT void urio_mem_stats(urio_mem_stats_t *st)
{
    if (st == NULL)
        return;
    st->allocs = atomic_load(&g_alloc.allocs);
    st->frees = atomic_load(&g_alloc.frees);
    st->failures = atomic_load(&g_alloc.failures);
    st->live = st->allocs - st->frees;
}

/*
 * Debug mode's quarantine of freed loops and executors: blocks kept (and
 * forgotten by the counters) so a use after free meets poisoned memory that
 * says what it was, not memory reused for something else.  Bounded: the
 * oldest goes for good; all go at exit.
 */
#define QUARANTINE 32
static pthread_mutex_t g_quarantine_mu = PTHREAD_MUTEX_INITIALIZER;
static void *g_quarantine[QUARANTINE];      /* guarded by g_quarantine_mu */
static unsigned g_quarantine_next;

/* Held at a fork: the child starts an empty quarantine, the blocks in it leaked. */
static void quarantine_after_fork(bool held)
{
    if (!held)
        return;
    memset(g_quarantine, 0, sizeof g_quarantine);
    g_quarantine_next = 0;
}

__attribute__((constructor)) static void quarantine_fork_lock(void)
{
    urio__fork_lock_add("quarantine", &g_quarantine_mu, quarantine_after_fork);
}

void urio__quarantine(void *p)
{
    urio__forget(p);
    pthread_mutex_lock(&g_quarantine_mu);
    void *old = g_quarantine[g_quarantine_next];
    g_quarantine[g_quarantine_next] = p;
    g_quarantine_next = (g_quarantine_next + 1) % QUARANTINE;
    pthread_mutex_unlock(&g_quarantine_mu);
    urio__free_forgotten(old);
}

__attribute__((destructor)) static void quarantine_free(void)
{
    pthread_mutex_lock(&g_quarantine_mu);
    for (unsigned i = 0; i < QUARANTINE; i++) {
        urio__free_forgotten(g_quarantine[i]);
        g_quarantine[i] = NULL;
    }
    pthread_mutex_unlock(&g_quarantine_mu);
}
