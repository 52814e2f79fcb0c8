/*
 * examples/debug/tasks_dump.c — what every task is doing: the task dump
 * (Go's goroutine dump).  urio_loop_dump_tasks writes it on demand; with
 * URIO_DUMP_SIGNAL=SIGUSR1 in the environment, `kill -USR1 <pid>` makes
 * every loop write it to stderr.
 */
#include <stdio.h>
#include <urio.h>

static int worker(void *arg, void **result)
{
    int err = urio_sleep(URIO_SEC(60));         /* waits for work */
    *result = arg;
    return err;
}

static int supervisor(void *arg, void **result)
{
    urio_future_t *w = arg;
    void *r = NULL;
    int err = urio_await(w, &r);                /* waits for the worker */
    *result = r;                                /* after the await: no tail call, the dump names line 21 */
    return err;
}

static int main_task(void *arg, void **result)
{
    (void)arg;
    (void)result;
    urio_future_t *w = urio_spawn(NULL, worker, "w1");
    urio_future_t *s = urio_spawn(NULL, supervisor, w);
    urio_yield();                               /* let them start */
    urio_loop_dump_tasks(urio_loop_current(), stdout);
    urio_future_cancel(s);
    urio_future_cancel(w);
    urio_await(s, NULL);
    urio_future_unref(s);
    urio_future_unref(w);
    return 0;
}

int main(void)
{
    return urio_run(URIO_CORO(main_task, NULL), NULL, NULL) < 0;
}
