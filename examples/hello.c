/*
 * hello.c — schedule callbacks and timers on a loop, then stop it.
 *
 * Prints, in this order (tests/meson.build checks it):
 *   the cancelled timer never runs      (before the loop runs)
 *   hello from a callback
 *   tick 1 ... tick 3                   (10 ms apart)
 *   bye after 50 ms
 */
#include <stdio.h>
#include <urio.h>

#define MS 1000000ull

struct ticker {
    urio_loop_t *loop;
    int ticks;
};

static void hello(void *arg)
{
    (void)arg;
    printf("hello from a callback\n");
}

static void tick(void *arg)
{
    struct ticker *t = arg;
    printf("tick %d\n", ++t->ticks);
    if (t->ticks < 3)
        urio_call_later(t->loop, 10 * MS, tick, t);
}

static void never(void *arg)
{
    (void)arg;
    printf("this timer was cancelled and must not run\n");
}

static void bye(void *arg)
{
    urio_loop_t *loop = arg;
    printf("bye after 50 ms\n");
    urio_loop_stop(loop);
}

int main(void)
{
    urio_loop_t *loop;
    int err = urio_loop_new(&loop, NULL);
    if (err < 0) {
        fprintf(stderr, "urio_loop_new: %s\n", urio_strerror(err));
        return 1;
    }
    struct ticker t = { loop, 0 };
    urio_call_soon(loop, hello, NULL);
    urio_call_later(loop, 10 * MS, tick, &t);
    urio_handle_t h = urio_call_later(loop, 20 * MS, never, NULL);
    urio_call_later(loop, 50 * MS, bye, loop);
    urio_handle_cancel(loop, h);
    printf("the cancelled timer never runs\n");
    urio_loop_run_forever(loop);
    urio_loop_close(loop);
    return 0;
}
