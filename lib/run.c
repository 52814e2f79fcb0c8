/*
 * run.c — submitting a coroutine from another thread
 * (urio_run_coroutine_threadsafe).  urio_run is lib/runner.c's.
 */
#include "task.h"

#include <stdio.h>

/* The future run_coroutine_threadsafe returns: it mirrors the task's outcome. */
typedef struct proxy {
    urio_future_t *task;            /* loop thread: the task, once made */
    urio_coro_t *coro;              /* until the loop starts it */
} proxy_t;

/*
 * The task ended (or the loop destroys it pending at close): the proxy gets
 * the task's outcome now, synchronously, so no queued callback can be lost
 * to a close that comes before it runs.
 */
void urio__proxy_task_ended(urio__task_t *t)
{
    urio_future_t *proxy = t->proxy;
    if (proxy == NULL)
        return;
    t->proxy = NULL;
    ((proxy_t *)urio__future_ext(proxy))->task = NULL;
    urio_future_t *task = t->self;
    if (!urio_future_done(proxy)) {
        void *value = NULL;
        int ret = urio_future_result(task, &value);
        const char *msg = ret < 0 ? urio_future_error_message(task) : NULL;
        urio__future_settle(proxy, ret, value, msg ? urio__strdup(msg) : NULL);
    }
    urio_future_unref(task);        /* the proxy's reference on the task */
    urio_future_unref(proxy);       /* the task's reference on the proxy */
}

/* ------------------------------------------------------------------ */
/* run_coroutine_threadsafe                                             */

static bool proxy_cancel(urio_future_t *f, char *msg)
{
    proxy_t *p = urio__future_ext(f);
    if (p->task != NULL) {
        urio__future_cancel_take(p->task, msg);    /* the task's end completes the proxy */
        return true;
    }
    urio__future_cancel_now(f, msg);    /* not started yet: it never will */
    return true;
}

static void proxy_describe(const urio_future_t *f, char *buf, size_t n)
{
    snprintf(buf, n, "<Future %s (run_coroutine_threadsafe)>", urio__future_state_name(f));
}

static const urio__future_ops_t proxy_ops = {
    .kind = "Future",
    .sealed = true,
    .cancel = proxy_cancel,
    .describe = proxy_describe,
};

static void proxy_start(void *arg)
{
    urio_future_t *proxy = arg;
    proxy_t *p = urio__future_ext(proxy);
    urio_coro_t *coro = p->coro;
    p->coro = NULL;
    if (urio_future_done(proxy)) {
        urio__coro_discard(coro);   /* cancelled before it started: the caller decided */
        urio_future_unref(proxy);
        return;
    }
    coro->state = URIO__CORO_NEW;   /* handed to the proxy, now to its task */
    urio_future_t *task = urio_task_create(urio_future_loop(proxy), coro);
    if (task == NULL) {
        int err = -errno;
        urio__future_settle(proxy, err, NULL,
                            urio__asprintf("urio_run_coroutine_threadsafe: %s", urio_strerror(err)));
        urio_future_unref(proxy);
        return;
    }
    /* The task holds proxy_start's reference on the proxy, the proxy ours on the task. */
    p->task = task;
    urio__task_of(task)->proxy = proxy;
}

URIO_EXPORT urio_future_t *urio_run_coroutine_threadsafe(urio_loop_t *loop, urio_coro_t *coro)
{
    if (coro == NULL || !urio__coro_check(coro, "urio_run_coroutine_threadsafe")) {
        errno = EINVAL;
        return NULL;
    }
    if (loop == NULL) {
        urio__coro_discard(coro);
        errno = EINVAL;
        return NULL;
    }
    urio_future_t *proxy = urio__future_new_kind(loop, sizeof(proxy_t), &proxy_ops);
    if (proxy == NULL) {
        urio__coro_discard(coro);
        errno = ENOMEM;
        return NULL;
    }
    /*
     * Handed over now, on the calling thread (which made it, or owns it): the
     * list it sits on belongs to this thread's loop, not to `loop`'s thread.
     */
    urio__coro_claim(coro);
    proxy_t *p = urio__future_ext(proxy);
    p->coro = coro;
    urio_future_ref(proxy);         /* proxy_start's */
    int ret = urio_call_soon_threadsafe(loop, proxy_start, proxy);
    if (ret < 0) {
        p->coro = NULL;
        urio__coro_discard(coro);
        urio_future_unref(proxy);
        urio_future_unref(proxy);
        errno = -ret;
        return NULL;
    }
    return proxy;
}
