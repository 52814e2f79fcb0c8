/*
 * peers/uv_dispatch.c — libuv's side of the dispatch benchmarks.
 *
 * libuv has no call_soon; what a libuv user writes for "run this on the
 * next loop pass" is an idle handle (uv_idle_t): while one is active the
 * loop polls without blocking and calls it once per pass.  That is the
 * closest match to a call_soon callback, so both rows use idle handles.
 */
#include "../bench.h"
#include "uv_util.h"

#include <stdlib.h>

/* ------------------------------------------------------------------ */
/* dispatch.chain: one idle handle, one callback per loop pass.          */

typedef struct uv_chain {
    uv_idle_t idle;
    uint64_t left;
} uv_chain_t;

static void uv_chain_cb(uv_idle_t *h)
{
    uv_chain_t *c = (uv_chain_t *)h->data;
    /* With no active handle left, uv_run(UV_RUN_DEFAULT) returns. */
    if (--c->left == 0)
        uv_idle_stop(h);
}

void bench_uv_dispatch_chain(const bench_config_t *cfg, double *out)
{
    uv_loop_t loop;
    uv_chain_t c = { .left = cfg->chain_n };

    bench_uv_loop_setup(&loop);
    uv_idle_init(&loop, &c.idle);
    c.idle.data = &c;

    uint64_t t0 = bench_now_ns();
    uv_idle_start(&c.idle, uv_chain_cb);
    uv_run(&loop, UV_RUN_DEFAULT);
    uint64_t t1 = bench_now_ns();

    if (c.left != 0)
        bench_die("libuv chain stopped with %llu callbacks left", (unsigned long long)c.left);
    out[0] = (double)(t1 - t0) / (double)cfg->chain_n;
    bench_uv_loop_teardown(&loop);
}

/* ------------------------------------------------------------------ */
/* dispatch.fanout: rounds of `round` idle handles, each stopping itself;
 * the last of a round starts the next round.                            */

typedef struct uv_fanout {
    uv_idle_t *idles;      /* fanout_round handles, reused by every round */
    uint64_t round;        /* handles per round */
    uint64_t left;         /* callbacks still to run, this round included */
    uint64_t round_left;   /* callbacks of this round still to run */
} uv_fanout_t;

static void uv_fanout_cb(uv_idle_t *h);

static void uv_fanout_start_round(uv_fanout_t *f)
{
    uint64_t n = f->left < f->round ? f->left : f->round;
    f->round_left = n;
    for (uint64_t i = 0; i < n; i++)
        uv_idle_start(&f->idles[i], uv_fanout_cb);
}

static void uv_fanout_cb(uv_idle_t *h)
{
    uv_fanout_t *f = (uv_fanout_t *)h->data;
    uv_idle_stop(h);
    f->left--;
    if (--f->round_left == 0 && f->left > 0)
        uv_fanout_start_round(f);
}

void bench_uv_dispatch_fanout(const bench_config_t *cfg, double *out)
{
    uv_loop_t loop;
    uv_fanout_t f = {
        .idles = bench_alloc_prefaulted(cfg->fanout_round * sizeof(uv_idle_t)),
        .round = cfg->fanout_round,
        .left = cfg->fanout_n,
    };

    bench_uv_loop_setup(&loop);
    for (uint64_t i = 0; i < f.round; i++) {
        uv_idle_init(&loop, &f.idles[i]);
        f.idles[i].data = &f;
    }

    uint64_t t0 = bench_now_ns();
    uv_fanout_start_round(&f);
    uv_run(&loop, UV_RUN_DEFAULT);
    uint64_t t1 = bench_now_ns();

    if (f.left != 0)
        bench_die("libuv fanout stopped with %llu callbacks left", (unsigned long long)f.left);
    out[0] = (double)(t1 - t0) / (double)cfg->fanout_n;
    bench_uv_loop_teardown(&loop);
    free(f.idles);
}
