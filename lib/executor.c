/*
 * executor.c — the calls every executor answers, whatever its kind, and
 * what happens to an executor once its owner freed it.
 */
#include "executor.h"

/*
 * A freed executor's table: the owner let go (urio_executor_free), so any
 * call through its pointer is a mistake, reported as such.  Jobs still
 * holding it keep its memory until they are done; then debug mode keeps a
 * few more, poisoned, so even a late use is reported rather than silent.
 */
static int freed_shutdown(urio_executor_t *ex, bool wait, bool cancel_futures)
{
    (void)ex;
    (void)wait;
    (void)cancel_futures;
    urio__log(URIO_LOG_ERROR, "urio_executor_shutdown(): this executor was freed "
              "(urio_executor_free): a use after free");
    return -EINVAL;
}

static void freed_free(urio_executor_t *ex)
{
    (void)ex;
    urio__log(URIO_LOG_ERROR, "urio_executor_free(): this executor was freed already");
}

static const urio__executor_ops_t freed_ops = {
    .kind = "freed executor",
    .shutdown = freed_shutdown,
    .free = freed_free,
};

/* ------------------------------------------------------------------ */
/* Debug mode: executors never shut down, reported at exit              */

/*
 * The generation changes when a child of fork() finds the list held by
 * another thread of the parent, half-linked: the child starts an empty list,
 * and leaves the executors of the old one unlinked (and unreported).
 */
static pthread_mutex_t g_live_mu = PTHREAD_MUTEX_INITIALIZER;
static urio_executor_t *g_live;      /* guarded by g_live_mu */
static unsigned g_live_gen;          /* guarded by g_live_mu */

static void live_after_fork(bool held)
{
    if (!held)
        return;
    g_live = NULL;
    g_live_gen++;
}

__attribute__((constructor)) static void live_fork_lock(void)
{
    urio__fork_lock_add("live executors", &g_live_mu, live_after_fork);
}

__attribute__((noinline)) void urio__executor_track(urio_executor_t *ex)
{
    if (!urio__debug_default())
        return;
#if URIO_DEBUG_CHECKS
    ex->created = urio__malloc(sizeof *ex->created);
    if (ex->created)
        urio__backtrace_capture(ex->created, 2, true);     /* from the public constructor's caller */
#endif
    pthread_mutex_lock(&g_live_mu);
    ex->live = true;
    ex->live_gen = g_live_gen;
    ex->live_prev = NULL;
    ex->live_next = g_live;
    if (g_live)
        g_live->live_prev = ex;
    g_live = ex;
    pthread_mutex_unlock(&g_live_mu);
    URIO_NO_TAILCALL();
}

void urio__executor_shut(urio_executor_t *ex)
{
    pthread_mutex_lock(&g_live_mu);
    if (ex->live && ex->live_gen == g_live_gen) {
        if (ex->live_prev)
            ex->live_prev->live_next = ex->live_next;
        else
            g_live = ex->live_next;
        if (ex->live_next)
            ex->live_next->live_prev = ex->live_prev;
    }
    ex->live = false;
    /* Taken under the lock: shutdowns may race (any thread, any number of times). */
    urio__backtrace_t *created = ex->created;
    ex->created = NULL;
    pthread_mutex_unlock(&g_live_mu);
    urio__free(created);
}

/* asyncio's ResourceWarning, for executors: at exit, in debug mode. */
__attribute__((destructor)) static void warn_unclosed_executors(void)
{
    pthread_mutex_lock(&g_live_mu);
    for (urio_executor_t *ex = g_live; ex != NULL; ex = ex->live_next) {
        char *tb = ex->created ? urio__backtrace_format(ex->created,
                                                        "Executor created at (most recent "
                                                        "call last):")
                               : NULL;
        urio__log(URIO_LOG_WARNING, "unclosed executor <%s %p>: never shut down "
                  "(urio_executor_shutdown or urio_executor_free)%s%s", ex->ops->kind,
                  (void *)ex, tb ? "\n" : "", tb ? tb : "");
        urio__free(tb);
    }
    pthread_mutex_unlock(&g_live_mu);
}

URIO_EXPORT int urio_executor_shutdown(urio_executor_t *ex, bool wait, bool cancel_futures)
{
    if (ex == NULL)
        return -EINVAL;
    int ret = ex->ops->shutdown(ex, wait, cancel_futures);
    if (ret == 0 && ex->ops != &freed_ops)
        urio__executor_shut(ex);
    return ret;
}

URIO_EXPORT void urio_executor_free(urio_executor_t *ex)
{
    if (ex == NULL)
        return;
    const urio__executor_ops_t *ops = ex->ops;
    if (ops != &freed_ops) {
        urio__executor_shut(ex);
        ex->ops = &freed_ops;   /* first: the kind's free may let the memory go */
    }
    ops->free(ex);
}

bool urio__executor_freed(const urio_executor_t *ex, const char *fn)
{
    if (URIO_LIKELY(ex->ops != &freed_ops))
        return false;
    urio__log(URIO_LOG_ERROR, "%s(): this executor was freed (urio_executor_free): a use "
              "after free", fn);
    return true;
}

void urio__executor_release(urio_executor_t *ex)
{
    if (ex->ops == &freed_ops && urio__debug_default())
        urio__quarantine(ex);   /* a late use of the program's handle meets the freed table */
    else
        urio__free(ex);
}
