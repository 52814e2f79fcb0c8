/*
 * peers/uv_timers.c — libuv's side of the timer benchmark.
 *
 * What a libuv user writes: one uv_timer_t per timer, uv_timer_init and
 * uv_timer_start with a relative timeout in milliseconds (libuv's unit),
 * then uv_run until every timer has fired.  The deadlines are the same
 * ones urio gets (same seed), rounded up to whole milliseconds.  The warm,
 * cold and sparse runs and the idle loop mirror timers.c's.
 */
#include "../bench.h"
#include "uv_util.h"

#include <stdlib.h>

typedef struct uv_tmr {
    uv_timer_t timer;      /* first: the callback casts the handle back */
    uint64_t deadline;     /* ns on uv_hrtime()'s clock */
} uv_tmr_t;

typedef struct uv_timers_run {
    uv_tmr_t *tmrs;
    int64_t *late;         /* ns past the deadline, in firing order */
    uint64_t fired;
} uv_timers_run_t;

static void uv_tmr_cb(uv_timer_t *h)
{
    uv_tmr_t *t = (uv_tmr_t *)h;
    uv_timers_run_t *run = (uv_timers_run_t *)h->data;
    run->late[run->fired++] = (int64_t)(uv_hrtime() - t->deadline);
}

/*
 * Schedules every timer; returns the wall ns the loop took.
 *
 * libuv measures a timeout from its cached loop time (uv_now, whole ms), so
 * the deadline libuv was actually asked for is (uv_now + timeout) ms.  The
 * lateness is taken from that deadline: libuv is not charged for the
 * millisecond rounding its API imposes, only for firing late after it.
 */
static uint64_t uv_timers_schedule(uv_loop_t *loop, uv_timers_run_t *run,
                                   const uint64_t *offsets, uint64_t n)
{
    uv_update_time(loop);
    uint64_t now_ms = uv_now(loop);

    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < n; i++) {
        uv_tmr_t *t = &run->tmrs[i];
        uint64_t timeout_ms = (offsets[i] + 999999u) / 1000000u;
        t->deadline = (now_ms + timeout_ms) * 1000000u;
        uv_timer_init(loop, &t->timer);
        t->timer.data = run;
        uv_timer_start(&t->timer, uv_tmr_cb, timeout_ms, 0);
    }
    return bench_now_ns() - t0;
}

/*
 * One run of n timers at offsets[].  Warm: the handles are allocated and
 * touched before the clock starts (a long-running service reuses them).
 * Cold: a fresh loop and handle memory the process has never touched, so
 * libuv's side pays the page faults of its timers' memory as urio's pays
 * those of its tables.
 */
static void uv_timers_run(uint64_t n, const uint64_t *offsets, bool warm, double *out)
{
    uv_timers_run_t run = {
        .tmrs = warm ? bench_alloc_prefaulted(n * sizeof(uv_tmr_t)) : malloc(n * sizeof(uv_tmr_t)),
        .late = bench_alloc_prefaulted(n * sizeof(int64_t)),
    };
    if (run.tmrs == NULL)
        bench_die("out of memory");

    uv_loop_t loop;
    bench_uv_loop_setup(&loop);

    uint64_t sched_ns = uv_timers_schedule(&loop, &run, offsets, n);
    uint64_t cpu0 = bench_thread_cpu_ns();
    uv_run(&loop, UV_RUN_DEFAULT);   /* returns once no timer is active */
    uint64_t cpu1 = bench_thread_cpu_ns();

    if (run.fired != n)
        bench_die("libuv fired %llu of %llu timers",
                  (unsigned long long)run.fired, (unsigned long long)n);
    out[BENCH_TIMERS_SCHEDULE] = (double)sched_ns / (double)n;
    out[BENCH_TIMERS_FIRE_CPU] = (double)(cpu1 - cpu0) / (double)n;
    bench_lateness_percentiles(run.late, n, out);

    bench_uv_loop_teardown(&loop);
    free(run.late);
    free(run.tmrs);
}

void bench_uv_timers(const bench_config_t *cfg, double *out)
{
    uint64_t *offsets = bench_alloc_prefaulted(cfg->timer_n * sizeof *offsets);
    bench_timer_offsets(cfg, offsets);
    uv_timers_run(cfg->timer_n, offsets, true, out);
    free(offsets);
}

void bench_uv_timers_cold(const bench_config_t *cfg, double *out)
{
    uint64_t *offsets = bench_alloc_prefaulted(cfg->timer_n * sizeof *offsets);
    bench_timer_offsets(cfg, offsets);
    uv_timers_run(cfg->timer_n, offsets, false, out);
    free(offsets);
}

void bench_uv_timers_sparse(const bench_config_t *cfg, double *out)
{
    uint64_t *offsets = bench_alloc_prefaulted(cfg->sparse_n * sizeof *offsets);
    bench_timer_offsets_n(cfg->sparse_n, cfg->sparse_span_ns, cfg->sparse_lead_ns, cfg->seed,
                          offsets);
    uv_timers_run(cfg->sparse_n, offsets, false, out);
    free(offsets);
}

/* The idle loop with a periodic 1 ms timer: uv_timer_start's repeat. */
typedef struct uv_idle_run {
    uv_timer_t timer;
    uint64_t left;
} uv_idle_run_t;

static void uv_idle_tick(uv_timer_t *h)
{
    uv_idle_run_t *run = (uv_idle_run_t *)h;
    if (--run->left == 0)
        uv_timer_stop(h);
}

void bench_uv_timers_idle(const bench_config_t *cfg, double *out)
{
    uv_loop_t loop;
    bench_uv_loop_setup(&loop);
    uv_idle_run_t run = { .left = cfg->idle_ticks };
    uv_timer_init(&loop, &run.timer);
    uv_timer_start(&run.timer, uv_idle_tick, 1, 1);
    uint64_t t0 = bench_now_ns(), cpu0 = bench_thread_cpu_ns();
    uv_run(&loop, UV_RUN_DEFAULT);   /* returns once the timer stopped */
    uint64_t cpu1 = bench_thread_cpu_ns(), t1 = bench_now_ns();
    out[0] = (double)(cpu1 - cpu0) / 1000.0 / ((double)(t1 - t0) / 1e9);
    bench_uv_loop_teardown(&loop);
}
