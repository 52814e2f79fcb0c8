/*
 * peers/uv_util.h — creating and tearing down a private libuv loop for a
 * benchmark, dying with the reason when libuv refuses.
 */
#ifndef URIO_BENCH_UV_UTIL_H
#define URIO_BENCH_UV_UTIL_H

#include "../bench.h"

#include <uv.h>

/* Creates a private loop: the benchmarks never share libuv's default one. */
static inline void bench_uv_loop_setup(uv_loop_t *loop)
{
    int err = uv_loop_init(loop);
    if (err)
        bench_die("uv_loop_init: %s", uv_strerror(err));
}

static inline void bench_uv_close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Closes every handle, lets the loop run their close callbacks, frees it. */
static inline void bench_uv_loop_teardown(uv_loop_t *loop)
{
    uv_walk(loop, bench_uv_close_walk_cb, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    int err = uv_loop_close(loop);
    if (err)
        bench_die("uv_loop_close: %s", uv_strerror(err));
}

#endif
