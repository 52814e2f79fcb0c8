/*
 * examples/debug/slow_callback.c — debug mode's slow-callback report.  A
 * callback (or a task's step) that keeps the loop longer than the
 * slow-callback duration (100 ms by default; 50 ms here) is logged, named
 * by the function and where it was scheduled, or by the task and where its
 * step ran.  Debug mode is switched on here by urio_run's options; URIO_DEBUG=1,
 * a debug build or urio_loop_set_debug do the same.
 */
#include <stdio.h>
#include <time.h>
#include <urio.h>

static void busy(uint64_t ns)
{
    struct timespec ts = { 0, (long)ns };
    nanosleep(&ts, NULL);       /* stands for a computation that should run in an executor */
}

static void blocking_callback(void *arg)
{
    (void)arg;
    busy(URIO_MS(80));
}

static int crunch(void *arg, void **result)
{
    (void)arg;
    urio_sleep(URIO_MS(1));
    busy(URIO_MS(80));          /* this step blocks the loop */
    urio_sleep(URIO_MS(1));
    *result = "crunched";
    return 0;
}

static int main_task(void *arg, void **result)
{
    (void)arg;
    (void)result;
    urio_loop_t *loop = urio_loop_current();
    urio_loop_set_slow_callback_duration(loop, URIO_MS(50));
    urio_call_soon(loop, blocking_callback, NULL);
    urio_future_t *t = urio_spawn(loop, crunch, NULL);
    void *what = NULL;
    int err = urio_await(t, &what);
    urio_future_unref(t);
    printf("%s\n", (const char *)what);
    return err;
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);   /* in order with the log's lines on stderr */
    urio_run_opts_t opts = { .debug = 1 };
    return urio_run(URIO_CORO(main_task, NULL), &opts, NULL) < 0;
}
