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

URIO_EXPORT int urio_executor_shutdown(urio_executor_t *ex, bool wait, bool cancel_futures)
{
    if (ex == NULL)
        return -EINVAL;
    return ex->ops->shutdown(ex, wait, cancel_futures);
}

URIO_EXPORT void urio_executor_free(urio_executor_t *ex)
{
    if (ex == NULL)
        return;
    const urio__executor_ops_t *ops = ex->ops;
    if (ops != &freed_ops)
        ex->ops = &freed_ops;   /* first: the kind's free may let the memory go */
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

#define QUARANTINE 16
static pthread_mutex_t g_quarantine_mu = PTHREAD_MUTEX_INITIALIZER;
static void *g_quarantine[QUARANTINE];      /* guarded by g_quarantine_mu */
static unsigned g_quarantine_next;

void urio__executor_release(urio_executor_t *ex)
{
    if (ex->ops != &freed_ops || !urio__debug_default()) {
        urio__free(ex);
        return;
    }
    urio__forget(ex);
    pthread_mutex_lock(&g_quarantine_mu);
    void *old = g_quarantine[g_quarantine_next];
    g_quarantine[g_quarantine_next] = ex;
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
