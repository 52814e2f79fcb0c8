/*
 * loop_util.h — creating, running and closing a urio loop for a benchmark,
 * dying with the reason when urio refuses (a benchmark that cannot run has
 * nothing to report).
 */
#ifndef URIO_BENCH_LOOP_UTIL_H
#define URIO_BENCH_LOOP_UTIL_H

#include "bench.h"

#include <urio.h>

static inline urio_loop_t *bench_urio_loop_new(void)
{
    /* Debug mode off whatever URIO_DEBUG says: the benchmark measures the
     * loop a service runs in production. */
    urio_loop_opts_t opts = { .debug = -1 };
    urio_loop_t *loop = NULL;
    int err = urio_loop_new(&loop, &opts);
    if (err < 0)
        bench_die("urio_loop_new: %s", urio_strerror(err));
    return loop;
}

static inline void bench_urio_run(urio_loop_t *loop)
{
    int err = urio_loop_run_forever(loop);
    if (err < 0)
        bench_die("urio_loop_run_forever: %s", urio_strerror(err));
}

static inline void bench_urio_loop_close(urio_loop_t *loop)
{
    int err = urio_loop_close(loop);
    if (err < 0)
        bench_die("urio_loop_close: %s", urio_strerror(err));
}

#endif
