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

#include <pthread.h>
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
    uint64_t sparse_n;         /* timers.sparse_*: timers, on a fresh loop */
    uint64_t sparse_span_ns;   /* timers.sparse_*: deadlines uniform in [lead, lead + span) */
    uint64_t sparse_lead_ns;
    uint64_t idle_ticks;       /* timers.idle_cpu: 1 ms ticks of a periodic timer */

    uint64_t xthread_n;        /* crossthread.*: calls per run, split among the producers */

    uint64_t wakeup_n;         /* wakeup.*: measured round trips */
    uint64_t wakeup_warmup;    /* wakeup.*: round trips before them, not measured */
    uint64_t wakeup_gap_ns;    /* wakeup.*: pause before each trip, so the loop is asleep */

    uint64_t pool_rtt_n;       /* threadpool.rtt: jobs, one at a time */
    uint64_t pool_n;           /* threadpool.throughput: jobs in total */
    uint64_t pool_inflight;    /* threadpool.throughput: jobs kept in flight */
    uint64_t pool_warmup;      /* threadpool.*: jobs run at once before measuring */
    unsigned pool_workers;     /* threadpool.*: worker threads, the same on both sides */

    uint64_t switch_n;         /* switch.*: context switches per ping-pong (two per round trip) */
} bench_config_t;

/* Also sets UV_THREADPOOL_SIZE to pool_workers when the environment does
 * not (see common.c): call it before anything queues libuv work. */
void bench_config_init(bench_config_t *cfg, bool quick);

/* ------------------------------------------------------------------ */
/* The registry                                                          */

enum { BENCH_MAX_METRICS = 4 };

/* One run of one side: fill out[i] for every metric of the benchmark. */
typedef void (*bench_fn)(const bench_config_t *cfg, double *out);

/* Every metric is a cost (time per operation): lower is better, and the
 * ratio peer/urio above 1 means urio is faster.  A rate is reported as its
 * inverse (ns per call, not calls per second) to keep that one meaning. */
typedef enum bench_target_kind {
    BENCH_TARGET_NONE,
    BENCH_TARGET_URIO_MAX,     /* median of urio's values <= value */
    BENCH_TARGET_RATIO_MIN,    /* median of peer/urio per run >= value */
    BENCH_TARGET_REF_MAX,      /* median of urio/(urio's metric `ref` of the same
                                * benchmark) per run <= value: "within 1.1x of the
                                * floor" */
    BENCH_TARGET_PEER_MAX,     /* median of urio/peer per run <= value: "urio
                                * <= 0.9x libuv", "within 1.15x of the raw
                                * liburing floor" when the floor is the peer */
} bench_target_kind_t;

typedef struct bench_target {
    bench_target_kind_t kind;
    double value;
    int ref;                   /* BENCH_TARGET_REF_MAX: index of the other metric */
} bench_target_t;

typedef struct bench_metric {
    const char *name;          /* the row: "timers.late_p99" */
    const char *unit;          /* "ns/callback" */
    int decimals;              /* digits after the point in the table */
    bench_target_t target;
    bench_target_t target2;    /* a second goal (vs a floor, say); zero: none */
    bool urio_only;            /* a reference the urio side measures (a floor): no peer value */
} bench_metric_t;

typedef struct bench_def {
    const char *name;          /* of the experiment, for progress lines: "timers" */
    const char *group;         /* the subcommand selecting it: "dispatch" */
    bench_fn urio;
    bench_fn peer;             /* NULL: no peer measures the same thing */
    const char *peer_name;     /* who the peer is; NULL: libuv */
    /* Why a side cannot run on this build or machine (its program was not
     * built or is not installed), or NULL when it can: that side is then
     * skipped and the table says why instead of showing a number.  A NULL
     * function: the side always runs. */
    const char *(*urio_missing)(void);
    const char *(*peer_missing)(void);
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
void bench_urio_crossthread_1p(const bench_config_t *cfg, double *out);
void bench_uv_crossthread_1p(const bench_config_t *cfg, double *out);
void bench_urio_crossthread_2p(const bench_config_t *cfg, double *out);
void bench_uv_crossthread_2p(const bench_config_t *cfg, double *out);
void bench_urio_wakeup(const bench_config_t *cfg, double *out);
void bench_uv_wakeup(const bench_config_t *cfg, double *out);
void bench_urio_pool_rtt(const bench_config_t *cfg, double *out);
void bench_uv_pool_rtt(const bench_config_t *cfg, double *out);
void bench_urio_pool_throughput(const bench_config_t *cfg, double *out);
void bench_uv_pool_throughput(const bench_config_t *cfg, double *out);
void bench_urio_switch(const bench_config_t *cfg, double *out);
void bench_urio_tasks(const bench_config_t *cfg, double *out);
void bench_ucontext_switch(const bench_config_t *cfg, double *out);
/* Timers beyond the warm run (timers.c, peers/uv_timers.c): a fresh loop
 * (cold), sparse deadlines on a fresh loop, and the CPU of an idle loop
 * with a periodic 1 ms timer. */
void bench_urio_timers_cold(const bench_config_t *cfg, double *out);
void bench_uv_timers_cold(const bench_config_t *cfg, double *out);
void bench_urio_timers_sparse(const bench_config_t *cfg, double *out);
void bench_uv_timers_sparse(const bench_config_t *cfg, double *out);
void bench_urio_timers_idle(const bench_config_t *cfg, double *out);
void bench_uv_timers_idle(const bench_config_t *cfg, double *out);

/* The process pool (procpool.c); the peer is Python's ProcessPoolExecutor
 * (peers/procpool.py).  bench_procpool_init starts urio's fork server: call
 * it first thing in main, while the harness has one thread. */
void bench_procpool_init(void);
void bench_urio_procpool_rtt(const bench_config_t *cfg, double *out);
void bench_py_procpool_rtt(const bench_config_t *cfg, double *out);
void bench_urio_procpool_tput(const bench_config_t *cfg, double *out);
void bench_py_procpool_tput(const bench_config_t *cfg, double *out);
void bench_urio_procpool_mib(const bench_config_t *cfg, double *out);
void bench_py_procpool_mib(const bench_config_t *cfg, double *out);
void bench_urio_procpool_startup(const bench_config_t *cfg, double *out);

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

/* The metrics of the cross-thread experiments, in out[] order.  The floor
 * is a bare Vyukov MPSC queue of preallocated nodes drained by a spinning
 * thread, running the same callback: measured by urio's side in the same
 * run (crossthread.c). */
enum {
    BENCH_XT_CALLS,            /* ns per call */
    BENCH_XT_FLOOR,
    BENCH_XT_N_METRICS
};

/* The metrics of the wake-up experiment, in out[] order.  The floor is a
 * raw eventfd ping-pong between two threads, measured by urio's side in
 * the same run: the least any loop's wake-up round trip can cost. */
enum {
    BENCH_WAKEUP_RTT_P50,      /* µs per round trip */
    BENCH_WAKEUP_RTT_P99,
    BENCH_WAKEUP_FLOOR_P50,
    BENCH_WAKEUP_FLOOR_P99,
    BENCH_WAKEUP_N_METRICS
};

/* The metrics of the switch experiment, in out[] order.  The floor is a
 * switch saving only the callee-saved general registers (switch_floor.S),
 * measured by urio's side in the same run. */
enum {
    BENCH_SWITCH_CTX,          /* ns per switch */
    BENCH_SWITCH_FLOOR,
    BENCH_SWITCH_N_METRICS
};

/* The I/O experiments (io/echo.c, io/files.c).  Every side is a program
 * of its own (urio's, peers/<kind>_echo_server.c, peers/uv_fileread.c,
 * fio), started the same way. */
void bench_urio_echo(const bench_config_t *cfg, double *out);
void bench_uv_echo(const bench_config_t *cfg, double *out);
void bench_epoll_echo(const bench_config_t *cfg, double *out);
void bench_uring_echo(const bench_config_t *cfg, double *out);
void bench_urio_echo_latency(const bench_config_t *cfg, double *out);
void bench_uv_echo_latency(const bench_config_t *cfg, double *out);
void bench_urio_files(const bench_config_t *cfg, double *out);
void bench_uv_files(const bench_config_t *cfg, double *out);
void bench_fio_files(const bench_config_t *cfg, double *out);
const char *bench_echo_urio_missing(void);
const char *bench_files_urio_missing(void);
const char *bench_files_fio_missing(void);

/* The metrics of the closed-loop echo experiment, in out[] order. */
enum {
    BENCH_ECHO_MSGS,           /* ns per message: the inverse of messages/s */
    BENCH_ECHO_CPU,            /* server CPU ns per message */
    BENCH_ECHO_N_METRICS
};

/* The metrics of the open-loop echo experiment, in out[] order. */
enum {
    BENCH_ECHO_LAT_P50,        /* µs per round trip, from the scheduled send */
    BENCH_ECHO_LAT_P99,
    BENCH_ECHO_LAT_P999,
    BENCH_ECHO_LAT_N_METRICS
};

/* The metrics of the file experiment, in out[] order: ns per 4 KiB read
 * (the inverse of IOPS), page cache and O_DIRECT, queue depth 1 and 64. */
enum {
    BENCH_FILES_PC_QD1,
    BENCH_FILES_PC_QD64,
    BENCH_FILES_DIO_QD1,
    BENCH_FILES_DIO_QD64,
    BENCH_FILES_N_METRICS
};

/* The coroutine stacks of the switch experiment (switch.c): mmap'd, dying
 * on failure. */
void *bench_switch_stack_new(void);
void bench_switch_stack_free(void *stack);
size_t bench_switch_stack_size(void);

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
/* The same for n deadlines in [lead, lead + span) (the sparse rows). */
void bench_timer_offsets_n(uint64_t n, uint64_t span_ns, uint64_t lead_ns, uint64_t seed,
                           uint64_t *offsets);

/* The lateness percentiles in µs of n samples in ns; sorts late[] in place.
 * Fills out[BENCH_TIMERS_LATE_P50] and out[BENCH_TIMERS_LATE_P99]. */
void bench_lateness_percentiles(int64_t *late, size_t n, double *out);

/* Sorts ns[0..n-1] and gives its 50th and 99th percentiles in µs. */
void bench_percentiles_us(int64_t *ns, size_t n, double *p50, double *p99);

/* The nearest-rank p-th percentile (0 < p <= 100) of sorted[0..n-1], n > 0. */
int64_t bench_percentile(const int64_t *sorted, size_t n, double p);

/* Blocking eventfd helpers, dying on failure.  bench_efd_wait blocks in
 * read(2) and returns the counter it read. */
int bench_efd_new(void);
void bench_efd_signal(int fd, uint64_t value);
uint64_t bench_efd_wait(int fd);

/*
 * The client of a wake-up ping-pong, shared by every side of the wakeup
 * experiment so that all of them are measured by the very same code.
 *
 * A thread of its own runs warmup + n round trips: pause gap_ns (spinning,
 * so the client's CPU stays awake while the server's goes idle), read the
 * clock, post(ctx) (which must make the server call bench_pingpong_reply),
 * block in read(2) on the client's own eventfd, read the clock.  Then it
 * calls finish(ctx), which must make the server stop, and exits.
 */
typedef struct bench_pingpong {
    void (*post)(void *ctx);
    void (*finish)(void *ctx);
    void *ctx;
    uint64_t warmup, n, gap_ns;
    int efd;                   /* the client's: written by bench_pingpong_reply */
    int64_t *rtt;              /* n samples, ns */
    pthread_t thread;
} bench_pingpong_t;

/* Fills the sizes from cfg, makes the eventfd and the samples, starts the
 * client thread. */
void bench_pingpong_start(bench_pingpong_t *pp, const bench_config_t *cfg,
                          void (*post)(void *ctx), void (*finish)(void *ctx), void *ctx);
/* The server's reply: wakes the client.  Thread: the server's. */
void bench_pingpong_reply(bench_pingpong_t *pp);
/* Joins the client, gives the percentiles in µs, frees everything. */
void bench_pingpong_join(bench_pingpong_t *pp, double *p50, double *p99);

/* --compare (compare.c): one row of this run, and the printer that sets
 * it against the same rows of an earlier --json file. */
typedef struct bench_compare_row {
    const char *name, *unit;
    int decimals;
    double urio, peer, ratio;  /* medians; NAN where absent */
} bench_compare_row_t;
void bench_compare_print(const char *path, const bench_compare_row_t *rows, size_t n);

/* The first three fields of /proc/loadavg ("?" where unreadable). */
void bench_loadavg(char *buf, size_t size);

/* pthread_create and pthread_join, dying on failure. */
pthread_t bench_thread_start(void *(*fn)(void *), void *arg);
void bench_thread_join(pthread_t thread);

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

/* CPU time of the whole process (every thread), in ns. */
static inline uint64_t bench_process_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* splitmix64: tiny, fast, and good enough to spread deadlines. */
static inline uint64_t bench_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* debug.c: what debug mode costs. */
void bench_urio_debug_dispatch(const bench_config_t *cfg, double *out);
void bench_off_debug_dispatch(const bench_config_t *cfg, double *out);
void bench_urio_debug_timers(const bench_config_t *cfg, double *out);
void bench_off_debug_timers(const bench_config_t *cfg, double *out);
void bench_urio_debug_compiled(const bench_config_t *cfg, double *out);
void bench_urio_debug_watchdog(const bench_config_t *cfg, double *out);
void bench_off_debug_watchdog(const bench_config_t *cfg, double *out);
void bench_nochecks_debug_compiled(const bench_config_t *cfg, double *out);

#endif
