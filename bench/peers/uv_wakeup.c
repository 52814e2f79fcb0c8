/*
 * peers/uv_wakeup.c — libuv's side of the wake-up benchmark.
 *
 * The same client as urio's (bench_pingpong_*) posts with uv_async_send,
 * the tool libuv gives for waking a loop from another thread; the async
 * callback wakes the client through the client's eventfd, as urio's call
 * does.  The client waits for each answer before the next send, so no two
 * sends ever coalesce.
 */
#include "../bench.h"
#include "uv_util.h"

#include <stdatomic.h>

typedef struct uv_wake_run {
    uv_loop_t loop;
    uv_async_t async;
    atomic_bool done;      /* set by the client before its last send */
    bench_pingpong_t pp;
} uv_wake_run_t;

static void uv_wake_async_cb(uv_async_t *h)
{
    uv_wake_run_t *w = (uv_wake_run_t *)h->data;
    if (atomic_load(&w->done)) {
        uv_close((uv_handle_t *)h, NULL);   /* no active handle left: uv_run returns */
        return;
    }
    bench_pingpong_reply(&w->pp);
}

static void uv_wake_send(uv_wake_run_t *w)
{
    int err = uv_async_send(&w->async);
    if (err)
        bench_die("uv_async_send: %s", uv_strerror(err));
}

static void uv_wake_post(void *ctx)
{
    uv_wake_send(ctx);
}

static void uv_wake_finish(void *ctx)
{
    uv_wake_run_t *w = ctx;
    atomic_store(&w->done, true);
    uv_wake_send(w);
}

void bench_uv_wakeup(const bench_config_t *cfg, double *out)
{
    uv_wake_run_t w;
    atomic_init(&w.done, false);
    bench_uv_loop_setup(&w.loop);
    int err = uv_async_init(&w.loop, &w.async, uv_wake_async_cb);
    if (err)
        bench_die("uv_async_init: %s", uv_strerror(err));
    w.async.data = &w;

    bench_pingpong_start(&w.pp, cfg, uv_wake_post, uv_wake_finish, &w);
    uv_run(&w.loop, UV_RUN_DEFAULT);   /* until the async handle closes */
    bench_pingpong_join(&w.pp, &out[BENCH_WAKEUP_RTT_P50], &out[BENCH_WAKEUP_RTT_P99]);
    bench_uv_loop_teardown(&w.loop);
}
