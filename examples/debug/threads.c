/*
 * examples/debug/threads.c — concurrency and multithreading: a loop runs
 * in one thread; other threads reach it with urio_call_soon_threadsafe
 * (asyncio's loop.call_soon_threadsafe) and urio_run_coroutine_threadsafe,
 * whose future the calling thread can wait on.  A loop-only call from
 * another thread is refused, and the log says which call it was.
 */
#include <pthread.h>
#include <stdio.h>
#include <urio.h>

static void hello(void *arg)
{
    printf("callback from another thread: %s\n", (const char *)arg);
}

static int coro_func(void *arg, void **result)
{
    int err = urio_sleep(URIO_MS(10));      /* asyncio.sleep(1, 42), shorter */
    *result = arg;
    return err;
}

static void *other_thread(void *arg)
{
    urio_loop_t *loop = arg;
    urio_call_soon_threadsafe(loop, hello, "hi");
    /* Later in another OS thread: */
    urio_future_t *f = urio_run_coroutine_threadsafe(loop, URIO_CORO(coro_func, (void *)42));
    void *result = NULL;
    int err = urio_future_wait(f, -1, &result);     /* future.result() */
    printf("result from the loop: %ld (%s)\n", (long)(intptr_t)result, urio_strerror(err));
    urio_future_unref(f);
    /* A loop-only call from here is refused: */
    urio_handle_t h = urio_call_soon(loop, hello, "never");
    printf("urio_call_soon from another thread: handle %llu\n", (unsigned long long)h.id);
    urio_loop_stop(loop);                           /* stopping works from any thread */
    return NULL;
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);   /* in order with the log's lines on stderr */
    urio_loop_t *loop;
    if (urio_loop_new(&loop, NULL) < 0)
        return 1;
    pthread_t t;
    pthread_create(&t, NULL, other_thread, loop);
    urio_loop_run_forever(loop);
    pthread_join(t, NULL);
    return urio_loop_close(loop) < 0;
}
