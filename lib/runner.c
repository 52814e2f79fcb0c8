/*
 * runner.c — running a program: urio_run, asyncio.run's counterpart.  It
 * sits above the task and executor layers: it makes the loop, runs the main
 * task, cancels what is left, shuts the default executor down and closes.
 */
#include "task.h"

#include "urio/executor.h"

/* How long urio_run waits for the default executor's threads (asyncio's 300 s). */
#define RUN_JOIN_TIMEOUT ((int64_t)URIO_SEC(300))

URIO_EXPORT int urio_run(urio_coro_t *main, const urio_run_opts_t *opts, void **result)
{
    if (main == NULL || !urio__coro_check(main, "urio_run"))
        return -EINVAL;
    if (urio_loop_current() != NULL) {
        urio__coro_discard(main);
        urio__log(URIO_LOG_ERROR, "urio_run(): cannot be called from a running event loop");
        return -EBUSY;
    }
    urio_loop_opts_t lo = { .debug = opts ? opts->debug : 0,
                            .virtual_clock = opts ? opts->virtual_clock : false };
    urio_loop_t *loop;
    int ret = urio_loop_new(&loop, &lo);
    if (ret < 0) {
        urio__coro_discard(main);
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
    urio__tasks_t *ts = urio__tasks_find(loop);
    urio_future_t *drained;
    if (ts != NULL && ts->list != NULL && urio_future_new(&drained, loop) == 0) {
        ts->drained = drained;
        for (urio__task_t *t = ts->list; t != NULL; t = t->next)
            urio_future_cancel(t->self);
        urio_loop_run_until_complete(loop, drained);
        ts->drained = NULL;
        urio_future_unref(drained);
    }
    /*
     * Then the default executor, with the loop still running (as asyncio.run
     * does): a job may call back into it (run_coroutine_threadsafe) on its
     * way out.
     */
    urio_future_t *sd = urio_loop_shutdown_default_executor(loop, RUN_JOIN_TIMEOUT);
    if (sd != NULL) {
        urio_loop_run_until_complete(loop, sd);     /* a WARNING if it timed out */
        urio_future_unref(sd);
    }
    urio_loop_close(loop);          /* reports what leaked */
    return ret;
}
