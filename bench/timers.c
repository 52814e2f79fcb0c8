/*
 * timers.c — urio's side of the timer benchmark.
 *
 * One run schedules cfg->timer_n timers with urio_call_at at the seeded
 * deadlines (bench_timer_offsets), then lets them all fire.  It reports the
 * scheduling cost, the CPU spent while they fire, and how late they fire.
 * The scheduling loop runs inside a callback, as a service schedules its
 * timers: from the loop's own thread while it runs.
 *
 * Three runs of it: warm (the loop has held as many timers before), cold
 * (a fresh loop: the tables' growth and page faults are measured too) and
 * sparse (cold, 200,000 timers over a second: the fixed cost per wake-up
 * shows).  The peer runs each the same way (peers/uv_timers.c).  A fourth
 * experiment measures the CPU an otherwise idle loop spends on a periodic
 * 1 ms timer.
 */
#include "bench.h"
#include "loop_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <urio.h>

/*
 * The state of the run in progress.  The timer callbacks find it here, not
 * through their argument: the argument carries the timer's deadline itself
 * (as an offset from the run's base), so a firing timer touches no memory
 * but this struct and the next slot of late[].  libuv's callback reads its
 * deadline from the handle libuv has just touched; a record of our own per
 * timer would add a cache miss per timer to urio's side only.
 */
typedef struct timers_run {
    urio_loop_t *loop;
    const uint64_t *offsets;
    int64_t *late;         /* ns past the deadline, in firing order */
    uint64_t n;
    uint64_t fired;
    uint64_t base;         /* deadlines are base + offset, on urio_loop_time()'s clock */
    uint64_t sched_ns;     /* wall time of the scheduling loop */
    uint64_t cpu0;         /* thread CPU time when scheduling ended */
} timers_run_t;

static timers_run_t *current_run;   /* the harness runs one benchmark at a time */

static void timer_fired(void *arg)
{
    timers_run_t *run = current_run;
    uint64_t deadline = run->base + (uint64_t)(uintptr_t)arg;
    run->late[run->fired++] = (int64_t)(bench_now_ns() - deadline);
    if (run->fired == run->n)
        urio_loop_stop(run->loop);
}

/*
 * Warm-up: schedule as many timers as the run will, then cancel them.  A
 * service's loop has held that many timers before; so urio's tables and
 * wheel buckets have grown, as libuv's timer handles are allocated and
 * touched by the harness before its side is measured.
 */
static void timers_warm(void *arg)
{
    timers_run_t *run = arg;
    uint64_t base = urio_loop_time(run->loop);
    urio_handle_t *h = malloc(run->n * sizeof *h);
    if (h == NULL)
        bench_die("out of memory");
    for (uint64_t i = 0; i < run->n; i++)
        h[i] = urio_call_at(run->loop, base + run->offsets[i], timer_fired, NULL);
    for (uint64_t i = 0; i < run->n; i++)
        urio_handle_cancel(run->loop, h[i]);
    free(h);
}

static void timers_schedule(void *arg)
{
    timers_run_t *run = arg;
    run->base = urio_loop_time(run->loop);

    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < run->n; i++) {
        uint64_t off = run->offsets[i];
        if (urio_call_at(run->loop, run->base + off, timer_fired, (void *)(uintptr_t)off).id == 0)
            bench_die("urio_call_at (timer %llu): %s", (unsigned long long)i, strerror(errno));
    }
    run->sched_ns = bench_now_ns() - t0;
    run->cpu0 = bench_thread_cpu_ns();
}

/*
 * One run of n timers at offsets[]: warm (the loop has held as many timers
 * before: see timers_warm) or cold (a fresh loop, nothing grown yet: every
 * allocation and page fault of the timer tables is in the measurement).
 */
static void urio_timers_run(uint64_t n, const uint64_t *offsets, bool warm, double *out)
{
    timers_run_t run = {
        .loop = bench_urio_loop_new(),
        .offsets = offsets,
        .late = bench_alloc_prefaulted(n * sizeof(int64_t)),
        .n = n,
    };
    current_run = &run;

    if ((warm && urio_call_soon(run.loop, timers_warm, &run).id == 0) ||
        urio_call_soon(run.loop, timers_schedule, &run).id == 0)
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
    current_run = NULL;
    free(run.late);
}

void bench_urio_timers(const bench_config_t *cfg, double *out)
{
    uint64_t *offsets = bench_alloc_prefaulted(cfg->timer_n * sizeof *offsets);
    bench_timer_offsets(cfg, offsets);
    urio_timers_run(cfg->timer_n, offsets, true, out);
    free(offsets);
}

void bench_urio_timers_cold(const bench_config_t *cfg, double *out)
{
    uint64_t *offsets = bench_alloc_prefaulted(cfg->timer_n * sizeof *offsets);
    bench_timer_offsets(cfg, offsets);
    urio_timers_run(cfg->timer_n, offsets, false, out);
    free(offsets);
}

void bench_urio_timers_sparse(const bench_config_t *cfg, double *out)
{
    uint64_t *offsets = bench_alloc_prefaulted(cfg->sparse_n * sizeof *offsets);
    bench_timer_offsets_n(cfg->sparse_n, cfg->sparse_span_ns, cfg->sparse_lead_ns, cfg->seed,
                          offsets);
    urio_timers_run(cfg->sparse_n, offsets, false, out);
    free(offsets);
}

/* ------------------------------------------------------------------ */
/* An idle loop with a periodic timer                                    */

/*
 * The loop holds one timer, due 1 ms after the previous one fired
 * (urio_call_later from its own callback, as libuv's repeat re-arms from the
 * loop's time), and nothing else: the CPU it burns per second of wall time
 * is what keeping a periodic tick costs a service that is otherwise idle.
 */
typedef struct idle_run {
    urio_loop_t *loop;
    uint64_t ticks, left;
} idle_run_t;

static void idle_tick(void *arg)
{
    idle_run_t *run = arg;
    if (--run->left == 0) {
        urio_loop_stop(run->loop);
        return;
    }
    if (urio_call_later(run->loop, 1000000u, idle_tick, run).id == 0)
        bench_die("urio_call_later: %s", strerror(errno));
}

void bench_urio_timers_idle(const bench_config_t *cfg, double *out)
{
    idle_run_t run = { .loop = bench_urio_loop_new(), .ticks = cfg->idle_ticks,
                       .left = cfg->idle_ticks };
    if (urio_call_later(run.loop, 1000000u, idle_tick, &run).id == 0)
        bench_die("urio_call_later: %s", strerror(errno));
    uint64_t t0 = bench_now_ns(), cpu0 = bench_thread_cpu_ns();
    bench_urio_run(run.loop);
    uint64_t cpu1 = bench_thread_cpu_ns(), t1 = bench_now_ns();
    out[0] = (double)(cpu1 - cpu0) / 1000.0 / ((double)(t1 - t0) / 1e9);
    bench_urio_loop_close(run.loop);
}
