/*
 * timers.c — urio's side of the timer benchmark.
 *
 * One run schedules cfg->timer_n timers with urio_call_at at the seeded
 * deadlines (bench_timer_offsets), then lets them all fire.  It reports the
 * scheduling cost, the CPU spent while they fire, and how late they fire.
 * The scheduling loop runs inside a callback, as a service schedules its
 * timers: from the loop's own thread while it runs.
 */
#include "bench.h"
#include "loop_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <urio.h>

typedef struct timers_run timers_run_t;

typedef struct tmr {
    timers_run_t *run;
    uint64_t deadline;     /* ns on urio_loop_time()'s clock (CLOCK_MONOTONIC) */
} tmr_t;

struct timers_run {
    urio_loop_t *loop;
    const uint64_t *offsets;
    tmr_t *tmrs;
    int64_t *late;         /* ns past the deadline, in firing order */
    uint64_t n;
    uint64_t fired;
    uint64_t sched_ns;     /* wall time of the scheduling loop */
    uint64_t cpu0;         /* thread CPU time when scheduling ended */
};

static void timer_fired(void *arg)
{
    tmr_t *t = arg;
    timers_run_t *run = t->run;
    run->late[run->fired++] = (int64_t)(bench_now_ns() - t->deadline);
    if (run->fired == run->n)
        urio_loop_stop(run->loop);
}

static void timers_schedule(void *arg)
{
    timers_run_t *run = arg;
    uint64_t base = urio_loop_time(run->loop);

    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < run->n; i++) {
        tmr_t *t = &run->tmrs[i];
        t->run = run;
        t->deadline = base + run->offsets[i];
        if (urio_call_at(run->loop, t->deadline, timer_fired, t).id == 0)
            bench_die("urio_call_at (timer %llu): %s", (unsigned long long)i, strerror(errno));
    }
    run->sched_ns = bench_now_ns() - t0;
    run->cpu0 = bench_thread_cpu_ns();
}

void bench_urio_timers(const bench_config_t *cfg, double *out)
{
    uint64_t n = cfg->timer_n;
    uint64_t *offsets = bench_alloc_prefaulted(n * sizeof *offsets);
    timers_run_t run = {
        .loop = bench_urio_loop_new(),
        .offsets = offsets,
        .tmrs = bench_alloc_prefaulted(n * sizeof(tmr_t)),
        .late = bench_alloc_prefaulted(n * sizeof(int64_t)),
        .n = n,
    };
    bench_timer_offsets(cfg, offsets);

    if (urio_call_soon(run.loop, timers_schedule, &run).id == 0)
        bench_die("urio_call_soon: %s", strerror(errno));
    bench_urio_run(run.loop);   /* the last timer stops it */
    uint64_t cpu1 = bench_thread_cpu_ns();

    if (run.fired != n)
        bench_die("urio fired %llu of %llu timers",
                  (unsigned long long)run.fired, (unsigned long long)n);
    out[BENCH_TIMERS_SCHEDULE] = (double)run.sched_ns / (double)n;
    out[BENCH_TIMERS_FIRE_CPU] = (double)(cpu1 - run.cpu0) / (double)n;
    bench_lateness_percentiles(run.late, n, out);

    bench_urio_loop_close(run.loop);
    free(run.late);
    free(run.tmrs);
    free(offsets);
}
