/*
 * peers/uv_threadpool.c — libuv's side of the thread-pool benchmarks.
 *
 * What a libuv user writes: uv_queue_work with a work callback (run on
 * libuv's pool) and an after-work callback (run on the loop).  The
 * requests are preallocated, one per job in flight, and each is reused by
 * resubmitting it from its own after-work callback, so no malloc is
 * measured.  The pool has cfg->pool_workers threads (UV_THREADPOOL_SIZE,
 * set by bench_config_init), as urio's has; the same warm-up runs first.
 */
#include "../bench.h"
#include "uv_util.h"

#include <stdlib.h>

typedef struct uv_pool_run {
    uv_loop_t loop;
    uv_work_t *reqs;       /* max(warmup, depth) */
    uint64_t warmup;
    uint64_t warm_done;
    uint64_t depth;
    uint64_t n;
    uint64_t submitted;
    uint64_t completed;
    uint64_t t0, t1;
} uv_pool_run_t;

static void uv_pool_job(uv_work_t *req)
{
    (void)req;
}

static void uv_pool_submit(uv_pool_run_t *run, uv_work_t *req, uv_after_work_cb after)
{
    req->data = run;
    int err = uv_queue_work(&run->loop, req, uv_pool_job, after);
    if (err)
        bench_die("uv_queue_work: %s", uv_strerror(err));
}

static void uv_pool_measured_done(uv_work_t *req, int status)
{
    uv_pool_run_t *run = (uv_pool_run_t *)req->data;
    if (status != 0)
        bench_die("a libuv job failed: %s", uv_strerror(status));
    /* No uv_stop: once the last request is done uv_run has nothing left. */
    if (++run->completed == run->n) {
        run->t1 = bench_now_ns();
    } else if (run->submitted < run->n) {
        run->submitted++;
        uv_pool_submit(run, req, uv_pool_measured_done);
    }
}

static void uv_pool_warm_done(uv_work_t *req, int status)
{
    uv_pool_run_t *run = (uv_pool_run_t *)req->data;
    if (status != 0)
        bench_die("a libuv job failed: %s", uv_strerror(status));
    if (++run->warm_done < run->warmup)
        return;
    /* Every warm-up request is back (this one is in its after-work
     * callback, where reusing it is allowed): all of them are free. */
    run->t0 = bench_now_ns();
    uint64_t first = run->depth < run->n ? run->depth : run->n;
    for (uint64_t i = 0; i < first; i++) {
        run->submitted++;
        uv_pool_submit(run, &run->reqs[i], uv_pool_measured_done);
    }
}

static double uv_pool(const bench_config_t *cfg, uint64_t depth, uint64_t n)
{
    uint64_t nreqs = cfg->pool_warmup > depth ? cfg->pool_warmup : depth;
    uv_pool_run_t run = {
        .reqs = bench_alloc_prefaulted(nreqs * sizeof(uv_work_t)),
        .warmup = cfg->pool_warmup,
        .depth = depth,
        .n = n,
    };
    bench_uv_loop_setup(&run.loop);

    for (uint64_t i = 0; i < run.warmup; i++)
        uv_pool_submit(&run, &run.reqs[i], uv_pool_warm_done);
    uv_run(&run.loop, UV_RUN_DEFAULT);   /* until no request is left */

    if (run.completed != n)
        bench_die("libuv completed %llu of %llu jobs", (unsigned long long)run.completed,
                  (unsigned long long)n);
    bench_uv_loop_teardown(&run.loop);
    free(run.reqs);
    return (double)(run.t1 - run.t0) / (double)n;
}

void bench_uv_pool_rtt(const bench_config_t *cfg, double *out)
{
    out[0] = uv_pool(cfg, 1, cfg->pool_rtt_n) / 1000.0;   /* µs */
}

void bench_uv_pool_throughput(const bench_config_t *cfg, double *out)
{
    out[0] = uv_pool(cfg, cfg->pool_inflight, cfg->pool_n);
}
