/*
 * threadpool.c — urio's side of the thread-pool benchmarks: trivial jobs
 * run with urio_run_in_executor, their outcome read in a done callback on
 * the loop.
 *
 * threadpool.rtt keeps one job in flight: submit, complete, submit the
 * next.  It measures the two hand-overs (loop to worker, worker to loop) a
 * job costs when the pool and the loop are idle.
 * threadpool.throughput keeps cfg->pool_inflight jobs in flight, each
 * completion submitting the next: what the pool's queue and the batching
 * of completions sustain.
 *
 * Fairness:
 *  - the pool has cfg->pool_workers workers, as libuv's has (common.c);
 *    it is made for the run and freed after it, outside the clock;
 *  - both sides first run cfg->pool_warmup jobs at once, so that every
 *    worker has been started before the clock starts: libuv's pool is
 *    process-wide and would otherwise be warm from its second run on;
 *  - the job does nothing on either side: it returns its argument here,
 *    which the done callback checks, so the outcome really went through.
 */
#include "bench.h"
#include "loop_util.h"

#include <errno.h>
#include <string.h>

#include <urio.h>

typedef struct pool_run {
    urio_loop_t *loop;
    urio_executor_t *ex;
    uint64_t warmup;       /* jobs of the warm-up, all at once */
    uint64_t warm_done;
    uint64_t depth;        /* jobs kept in flight once measuring */
    uint64_t n;            /* measured jobs */
    uint64_t submitted;    /* measured jobs submitted */
    uint64_t completed;    /* measured jobs completed */
    uint64_t t0, t1;
} pool_run_t;

static void *pool_job(void *arg)
{
    return arg;
}

static void pool_submit(pool_run_t *run, urio_future_done_fn done)
{
    urio_future_t *f = urio_run_in_executor(run->loop, run->ex, pool_job, run);
    if (f == NULL)
        bench_die("urio_run_in_executor: %s", strerror(errno));
    int err = urio_future_add_done_callback(f, done, run);
    if (err < 0)
        bench_die("urio_future_add_done_callback: %s", urio_strerror(err));
}

/* Reads the outcome, checks it, and drops the reference the submission
 * gave us (the loop held its own for the callback). */
static void pool_check(pool_run_t *run, urio_future_t *f)
{
    void *value = NULL;
    int err = urio_future_result(f, &value);
    if (err != 0)
        bench_die("a thread-pool job failed: %s", urio_strerror(err));
    if (value != run)
        bench_die("a thread-pool job returned %p, not its argument %p", value, (void *)run);
    urio_future_unref(f);
}

static void pool_measured_done(urio_future_t *f, void *arg)
{
    pool_run_t *run = arg;
    pool_check(run, f);
    if (++run->completed == run->n) {
        run->t1 = bench_now_ns();
        urio_loop_stop(run->loop);
    } else if (run->submitted < run->n) {
        run->submitted++;
        pool_submit(run, pool_measured_done);
    }
}

static void pool_warm_done(urio_future_t *f, void *arg)
{
    pool_run_t *run = arg;
    pool_check(run, f);
    if (++run->warm_done < run->warmup)
        return;
    /* Every warm-up job is back: the pool is idle, its workers started. */
    run->t0 = bench_now_ns();
    uint64_t first = run->depth < run->n ? run->depth : run->n;
    for (uint64_t i = 0; i < first; i++) {
        run->submitted++;
        pool_submit(run, pool_measured_done);
    }
}

static void pool_start(void *arg)
{
    pool_run_t *run = arg;
    for (uint64_t i = 0; i < run->warmup; i++)
        pool_submit(run, pool_warm_done);
}

/* Returns the wall ns per measured job. */
static double urio_pool(const bench_config_t *cfg, uint64_t depth, uint64_t n)
{
    pool_run_t run = {
        .loop = bench_urio_loop_new(),
        .warmup = cfg->pool_warmup,
        .depth = depth,
        .n = n,
    };
    int err = urio_thread_pool_new(&run.ex, cfg->pool_workers);
    if (err < 0)
        bench_die("urio_thread_pool_new: %s", urio_strerror(err));

    if (urio_call_soon(run.loop, pool_start, &run).id == 0)
        bench_die("urio_call_soon: %s", strerror(errno));
    bench_urio_run(run.loop);   /* the last measured completion stops it */

    if (run.completed != n)
        bench_die("urio completed %llu of %llu jobs", (unsigned long long)run.completed,
                  (unsigned long long)n);
    urio_executor_free(run.ex);
    bench_urio_loop_close(run.loop);
    return (double)(run.t1 - run.t0) / (double)n;
}

void bench_urio_pool_rtt(const bench_config_t *cfg, double *out)
{
    out[0] = urio_pool(cfg, 1, cfg->pool_rtt_n) / 1000.0;   /* µs */
}

void bench_urio_pool_throughput(const bench_config_t *cfg, double *out)
{
    out[0] = urio_pool(cfg, cfg->pool_inflight, cfg->pool_n);
}
