/*
 * dispatch.c — urio's side of the dispatch benchmarks: the cost of running
 * a callback scheduled with urio_call_soon, and what it allocates.
 */
#include "bench.h"
#include "loop_util.h"

#include <errno.h>
#include <string.h>

#include <urio.h>

/* Schedules fn(arg) soon or dies: a refused schedule would leave the loop
 * running forever with nothing to stop it. */
#define SOON(loop, fn, arg)                                                       \
    do {                                                                          \
        if (urio_call_soon((loop), (fn), (arg)).id == 0)                          \
            bench_die("urio_call_soon(%s): %s", #fn, strerror(errno));            \
    } while (0)

/* ------------------------------------------------------------------ */
/* dispatch.chain: each callback schedules the next, so exactly one is
 * ever ready and each runs in its own loop turn (like libuv's idle).   */

typedef struct chain {
    urio_loop_t *loop;
    uint64_t left;
} chain_t;

static void chain_step(void *arg)
{
    chain_t *c = arg;
    if (--c->left == 0)
        urio_loop_stop(c->loop);
    else
        SOON(c->loop, chain_step, c);
}

void bench_urio_dispatch_chain(const bench_config_t *cfg, double *out)
{
    chain_t c = { .loop = bench_urio_loop_new(), .left = cfg->chain_n };

    uint64_t t0 = bench_now_ns();
    SOON(c.loop, chain_step, &c);
    bench_urio_run(c.loop);
    uint64_t t1 = bench_now_ns();

    if (c.left != 0)
        bench_die("urio chain stopped with %llu callbacks left", (unsigned long long)c.left);
    out[0] = (double)(t1 - t0) / (double)cfg->chain_n;
    bench_urio_loop_close(c.loop);
}

/* ------------------------------------------------------------------ */
/* dispatch.fanout: rounds of `round` callbacks ready at once; the last of
 * a round schedules the next round.  Measures the queue at a depth where
 * per-turn overhead is amortised.                                        */

typedef struct fanout {
    urio_loop_t *loop;
    uint64_t round;        /* callbacks per round */
    uint64_t left;         /* callbacks still to run, this round included */
    uint64_t round_left;   /* callbacks of this round still to run */
} fanout_t;

static void fanout_step(void *arg);

static void fanout_start_round(fanout_t *f)
{
    uint64_t n = f->left < f->round ? f->left : f->round;
    f->round_left = n;
    for (uint64_t i = 0; i < n; i++)
        SOON(f->loop, fanout_step, f);
}

static void fanout_step(void *arg)
{
    fanout_t *f = arg;
    f->left--;
    if (--f->round_left > 0)
        return;
    if (f->left > 0)
        fanout_start_round(f);
    else
        urio_loop_stop(f->loop);
}

void bench_urio_dispatch_fanout(const bench_config_t *cfg, double *out)
{
    fanout_t f = {
        .loop = bench_urio_loop_new(),
        .round = cfg->fanout_round,
        .left = cfg->fanout_n,
    };

    uint64_t t0 = bench_now_ns();
    fanout_start_round(&f);
    bench_urio_run(f.loop);
    uint64_t t1 = bench_now_ns();

    if (f.left != 0)
        bench_die("urio fanout stopped with %llu callbacks left", (unsigned long long)f.left);
    out[0] = (double)(t1 - t0) / (double)cfg->fanout_n;
    bench_urio_loop_close(f.loop);
}

/* ------------------------------------------------------------------ */
/* dispatch.allocs: urio's own allocations per callback in steady state.
 * A warm-up chain lets the loop grow whatever pools it keeps; its last
 * callback reads urio_mem_stats() and starts the measured chain, whose
 * last callback reads them again, so loop start and stop stay outside.  */

typedef struct allocs {
    urio_loop_t *loop;
    uint64_t warmup_left;
    uint64_t left;
    urio_mem_stats_t before, after;
} allocs_t;

static void allocs_measured_step(void *arg)
{
    allocs_t *a = arg;
    if (--a->left > 0) {
        SOON(a->loop, allocs_measured_step, a);
        return;
    }
    urio_mem_stats(&a->after);
    urio_loop_stop(a->loop);
}

static void allocs_warmup_step(void *arg)
{
    allocs_t *a = arg;
    if (--a->warmup_left > 0) {
        SOON(a->loop, allocs_warmup_step, a);
        return;
    }
    urio_mem_stats(&a->before);
    SOON(a->loop, allocs_measured_step, a);
}

void bench_urio_dispatch_allocs(const bench_config_t *cfg, double *out)
{
    allocs_t a = {
        .loop = bench_urio_loop_new(),
        .warmup_left = cfg->allocs_warmup,
        .left = cfg->allocs_n,
    };

    SOON(a.loop, allocs_warmup_step, &a);
    bench_urio_run(a.loop);

    if (a.left != 0)
        bench_die("urio allocs chain stopped with %llu callbacks left",
                  (unsigned long long)a.left);
    out[0] = (double)(a.after.allocs - a.before.allocs) / (double)cfg->allocs_n;
    bench_urio_loop_close(a.loop);
}
