/*
 * bench.h — the benchmark registry of urio-bench, and the helpers every
 * benchmark shares (clocks, a fixed-seed PRNG, fatal errors).
 *
 * A benchmark is one experiment run R times on each side: a urio function
 * and, where a fair comparison exists, a peer function (libuv, written the
 * way a libuv user would write it).  One run of an experiment may yield
 * several metrics at once: the timer experiment schedules a million timers
 * once and then reports the scheduling cost, the firing cost and the
 * lateness percentiles of that same run.  Each metric is a row of the
 * table.  Most benchmarks have exactly one metric.
 *
 * Adding a row: write `void urio_side(const bench_config_t *, double *out)`
 * (and a peer) filling out[0..n_metrics-1], declare them below, and add a
 * bench_def_t to the table in registry.c.  The group name doubles as the
 * subcommand that selects it ("urio-bench dispatch").
 */
#ifndef URIO_BENCH_H
#define URIO_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#if defined(__GNUC__)
#define BENCH_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define BENCH_NORETURN __attribute__((noreturn))
#else
#define BENCH_PRINTF(fmt, args)
#define BENCH_NORETURN
#endif

/* ------------------------------------------------------------------ */
/* Sizes of the experiments: one set for a full run, one for --quick.  */

typedef struct bench_config {
    bool quick;

    uint64_t chain_n;          /* dispatch.chain: callbacks in the chain */
    uint64_t fanout_n;         /* dispatch.fanout: callbacks in total */
    uint64_t fanout_round;     /* dispatch.fanout: callbacks per round */
    uint64_t allocs_warmup;    /* dispatch.allocs: chain run before measuring */
    uint64_t allocs_n;         /* dispatch.allocs: measured chain */

    uint64_t timer_n;          /* timers.*: how many timers */
    uint64_t timer_span_ns;    /* deadlines uniform in [lead, lead + span) */
    uint64_t timer_lead_ns;    /* see bench_timer_offsets() */
    uint64_t seed;             /* of the PRNG giving both sides the same deadlines */
} bench_config_t;

void bench_config_init(bench_config_t *cfg, bool quick);

/* ------------------------------------------------------------------ */
/* The registry                                                          */

enum { BENCH_MAX_METRICS = 4 };

/* One run of one side: fill out[i] for every metric of the benchmark. */
typedef void (*bench_fn)(const bench_config_t *cfg, double *out);

typedef enum bench_target_kind {
    BENCH_TARGET_NONE,
    BENCH_TARGET_URIO_MAX,     /* median of urio's values <= value */
    BENCH_TARGET_RATIO_MIN,    /* median of peer/urio per run >= value */
} bench_target_kind_t;

typedef struct bench_target {
    bench_target_kind_t kind;
    double value;
} bench_target_t;

typedef struct bench_metric {
    const char *name;          /* the row: "timers.late_p99" */
    const char *unit;          /* "ns/callback" */
    int decimals;              /* digits after the point in the table */
    bench_target_t target;
} bench_metric_t;

typedef struct bench_def {
    const char *name;          /* of the experiment, for progress lines: "timers" */
    const char *group;         /* the subcommand selecting it: "dispatch" */
    bench_fn urio;
    bench_fn peer;             /* NULL: no peer measures the same thing */
    size_t n_metrics;
    bench_metric_t metrics[BENCH_MAX_METRICS];
} bench_def_t;

extern const bench_def_t bench_registry[];
extern const size_t bench_registry_len;

/* The experiments (dispatch.c, timers.c and their peers in peers/). */
void bench_urio_dispatch_chain(const bench_config_t *cfg, double *out);
void bench_uv_dispatch_chain(const bench_config_t *cfg, double *out);
void bench_urio_dispatch_fanout(const bench_config_t *cfg, double *out);
void bench_uv_dispatch_fanout(const bench_config_t *cfg, double *out);
void bench_urio_dispatch_allocs(const bench_config_t *cfg, double *out);
void bench_urio_timers(const bench_config_t *cfg, double *out);
void bench_uv_timers(const bench_config_t *cfg, double *out);

/* The metrics of the timer experiment, in out[] order. */
enum {
    BENCH_TIMERS_SCHEDULE,     /* ns per timer, wall time of the scheduling loop */
    BENCH_TIMERS_FIRE_CPU,     /* thread CPU ns per timer over the firing phase.
                                * At the default density (one deadline per µs) a
                                * loop that wakes for every deadline is busy the
                                * whole window, and this reads about span/n; less
                                * means it slept, more that it fell behind. */
    BENCH_TIMERS_LATE_P50,     /* µs past the deadline */
    BENCH_TIMERS_LATE_P99,
    BENCH_TIMERS_N_METRICS
};

/* ------------------------------------------------------------------ */
/* Shared helpers (common.c)                                            */

/* Prints "urio-bench: <message>" on stderr and exits with status 1.  A
 * benchmark that cannot run as designed (a refused schedule, a failed
 * allocation) has no meaningful number to report. */
BENCH_NORETURN void bench_die(const char *fmt, ...) BENCH_PRINTF(1, 2);

/* malloc that dies on failure, and touches every page: the benchmarks
 * allocate their own bookkeeping before the clock starts, and page faults
 * on it must not be charged to the code under test. */
void *bench_alloc_prefaulted(size_t size);

/* Offsets from a common base, in ns, of cfg->timer_n timer deadlines:
 * uniform in [lead, lead + span) from cfg->seed, identical on both sides.
 * The lead keeps every deadline after the end of the scheduling loop, so
 * the firing phase measures firing, not the backlog left by a slow
 * scheduler (which the schedule row already reports). */
void bench_timer_offsets(const bench_config_t *cfg, uint64_t *offsets);

/* The lateness percentiles in µs of n samples in ns; sorts late[] in place.
 * Fills out[BENCH_TIMERS_LATE_P50] and out[BENCH_TIMERS_LATE_P99]. */
void bench_lateness_percentiles(int64_t *late, size_t n, double *out);

/* ------------------------------------------------------------------ */
/* Clocks and the PRNG: inline, since some sit on measured paths.      */

static inline uint64_t bench_ts_ns(const struct timespec *ts)
{
    return (uint64_t)ts->tv_sec * 1000000000u + (uint64_t)ts->tv_nsec;
}

/* CLOCK_MONOTONIC: the clock of urio_loop_time() and uv_hrtime(). */
static inline uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return bench_ts_ns(&ts);
}

/* CPU time of the calling thread: a loop that sleeps while it waits for
 * its next timer costs nothing here, one that spins does. */
static inline uint64_t bench_thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return bench_ts_ns(&ts);
}

/* splitmix64: tiny, fast, and good enough to spread deadlines. */
static inline uint64_t bench_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

#endif
