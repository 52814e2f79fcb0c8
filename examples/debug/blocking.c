/*
 * examples/debug/blocking.c — running blocking code: a CPU-bound or
 * blocking function must not run on the loop's thread (every task and I/O
 * would wait for it).  urio_run_in_executor runs it on the default thread
 * pool and gives a future; the task awaits it while the loop goes on.
 */
#include <stdio.h>
#include <urio.h>

static void *fib(void *arg)
{
    long n = (long)(intptr_t)arg, a = 0, b = 1;
    while (n-- > 0) {
        long c = a + b;
        a = b;
        b = c;
    }
    return (void *)(intptr_t)a;
}

static void tick(void *arg)
{
    printf("the loop is free while the job runs: %s\n", (const char *)arg);
}

static int main_task(void *arg, void **result)
{
    (void)arg;
    (void)result;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t *job = urio_run_in_executor(loop, NULL, fib, (void *)(intptr_t)50);
    urio_call_soon(loop, tick, "yes");
    void *value;
    int err = urio_await(job, &value);
    printf("fib(50) = %ld\n", (long)(intptr_t)value);
    urio_future_unref(job);
    return err;
}

int main(void)
{
    return urio_run(URIO_CORO(main_task, NULL), NULL, NULL) < 0;
}
