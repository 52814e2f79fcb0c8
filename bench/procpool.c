/*
 * procpool.c — the process pool's benchmarks, against Python's
 * ProcessPoolExecutor driven from asyncio (bench/peers/procpool.py, run
 * with Debian's /usr/bin/python3).
 *
 * procpool.rtt keeps one trivial job in flight: its round trip through a
 * worker process; procpool.rtt_floor, in the same run, is a bare blocking
 * ping-pong between two processes over a socketpair: what any round trip
 * between processes costs on this machine at that moment.  procpool.throughput keeps 100 in flight.  procpool.mib
 * sends 1 MiB in and gets 1 MiB back per job (4 in flight), reported per
 * MiB of input.  procpool.startup is the pool's start-up (first job to every
 * worker ready) by re-exec and by the fork server: urio's own two ways, no
 * peer.
 *
 * Fairness:
 *  - both sides have as many workers as the machine has cores (Python's
 *    default), started and warmed up (2 jobs per worker) before the clock;
 *  - the jobs do the same on both sides: return the input (echo); each
 *    outcome is checked (length, first and last byte), not just counted;
 *  - Python is timed inside its own script, around the same loop, with
 *    time.perf_counter(): its interpreter's start-up is not charged.
 */
#include "bench.h"
#include "loop_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <urio.h>

static int bench_echo(urio_process_call_t *call, const void *in, size_t len)
{
    void *out = urio_process_output(call, len);
    if (out == NULL)
        return -ENOMEM;
    memcpy(out, in, len);
    return 0;
}
URIO_PROCESS_FN("bench.echo", bench_echo);

/* The sizes, quick or full. */
static uint64_t rtt_n(const bench_config_t *cfg) { return cfg->quick ? 2000u : 10000u; }
static uint64_t tput_n(const bench_config_t *cfg) { return cfg->quick ? 20000u : 100000u; }
static uint64_t mib_n(const bench_config_t *cfg) { return cfg->quick ? 200u : 1000u; }
enum { TPUT_DEPTH = 100, MIB_DEPTH = 4, MIB = 1 << 20 };

static unsigned workers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1u : (unsigned)n;
}

static bool fork_server;

void bench_procpool_init(void)
{
    /* At the top of main, while the harness has one thread. */
    fork_server = urio_process_fork_server_start() == 0;
}

/* ------------------------------------------------------------------ */
/* urio                                                                 */

typedef struct pp_run {
    urio_loop_t *loop;
    urio_executor_t *ex;
    const char *in;
    size_t len;
    uint64_t depth, n, submitted, completed, warm_left;
    uint64_t t0, t1;
} pp_run_t;

static void pp_done(urio_future_t *f, void *arg);

static void pp_submit(pp_run_t *r)
{
    urio_future_t *f = urio_process_pool_submit(r->loop, r->ex, "bench.echo", r->in, r->len);
    if (f == NULL)
        bench_die("urio_process_pool_submit: %s", strerror(errno));
    int err = urio_future_add_done_callback(f, pp_done, r);
    if (err < 0)
        bench_die("urio_future_add_done_callback: %s", urio_strerror(err));
}

static void pp_check(pp_run_t *r, urio_future_t *f)
{
    void *v = NULL;
    int err = urio_future_result(f, &v);
    if (err != 0)
        bench_die("a process-pool job failed: %s: %s", urio_strerror(err),
                  urio_future_error_message(f));
    const urio_bytes_t *b = v;
    const char *d = b->data;
    if (b->len != r->len || (r->len && (d[0] != r->in[0] || d[r->len - 1] != r->in[r->len - 1])))
        bench_die("a process-pool job returned %zu bytes, not its input's %zu", b->len, r->len);
    urio_future_unref(f);
}

static void pp_done(urio_future_t *f, void *arg)
{
    pp_run_t *r = arg;
    pp_check(r, f);
    if (r->warm_left > 0) {
        if (--r->warm_left > 0)
            return;
        /* Warm: every worker started and ran jobs.  The clock starts. */
        r->t0 = bench_now_ns();
        for (; r->submitted < r->depth && r->submitted < r->n; r->submitted++)
            pp_submit(r);
        return;
    }
    if (++r->completed == r->n) {
        r->t1 = bench_now_ns();
        urio_loop_stop(r->loop);
    } else if (r->submitted < r->n) {
        r->submitted++;
        pp_submit(r);
    }
}

static void pp_start(void *arg)
{
    pp_run_t *r = arg;
    for (uint64_t i = 0, k = r->warm_left; i < k; i++)
        pp_submit(r);
}

/* Returns the wall ns per measured job. */
static double urio_pp(size_t len, uint64_t depth, uint64_t n)
{
    char *in = bench_alloc_prefaulted(len ? len : 1);
    for (size_t i = 0; i < len; i++)
        in[i] = (char)(i * 13 + 1);
    pp_run_t r = {
        .loop = bench_urio_loop_new(),
        .in = in,
        .len = len,
        .depth = depth,
        .n = n,
        .warm_left = 2 * workers(),
    };
    urio_process_pool_opts_t o = { .workers = workers() };
    int err = urio_process_pool_new(&r.ex, &o);
    if (err < 0)
        bench_die("urio_process_pool_new: %s", urio_strerror(err));
    if (urio_call_soon(r.loop, pp_start, &r).id == 0)
        bench_die("urio_call_soon: %s", strerror(errno));
    bench_urio_run(r.loop);
    if (r.completed != n)
        bench_die("urio completed %llu of %llu jobs", (unsigned long long)r.completed,
                  (unsigned long long)n);
    urio_executor_free(r.ex);
    bench_urio_loop_close(r.loop);
    free(in);
    return (double)(r.t1 - r.t0) / (double)n;
}

/*
 * The floor of a round trip between two processes on this machine, now: a
 * blocking 8-byte ping-pong over a socketpair, no loop, no frames.  The
 * child runs only read, write and _exit (async-signal-safe: the harness
 * may have threads by now).  µs per round trip.
 */
static double socketpair_floor(uint64_t n)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        bench_die("socketpair: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork: %s", strerror(errno));
    char b[8] = { 0 };
    if (pid == 0) {
        close(sv[0]);
        while (read(sv[1], b, sizeof b) == (ssize_t)sizeof b)
            if (write(sv[1], b, sizeof b) != (ssize_t)sizeof b)
                break;
        _exit(0);
    }
    close(sv[1]);
    for (int i = 0; i < 100; i++)       /* warm-up */
        if (write(sv[0], b, sizeof b) != (ssize_t)sizeof b || read(sv[0], b, sizeof b) != (ssize_t)sizeof b)
            bench_die("the floor's ping-pong failed");
    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < n; i++)
        if (write(sv[0], b, sizeof b) != (ssize_t)sizeof b || read(sv[0], b, sizeof b) != (ssize_t)sizeof b)
            bench_die("the floor's ping-pong failed");
    uint64_t t1 = bench_now_ns();
    close(sv[0]);
    int status;
    waitpid(pid, &status, 0);
    return (double)(t1 - t0) / (double)n / 1000.0;
}

void bench_urio_procpool_rtt(const bench_config_t *cfg, double *out)
{
    out[0] = urio_pp(8, 1, rtt_n(cfg)) / 1000.0;    /* µs */
    out[1] = socketpair_floor(rtt_n(cfg) / 2);
}

void bench_urio_procpool_tput(const bench_config_t *cfg, double *out)
{
    out[0] = urio_pp(8, TPUT_DEPTH, tput_n(cfg));   /* ns */
}

void bench_urio_procpool_mib(const bench_config_t *cfg, double *out)
{
    out[0] = urio_pp(MIB, MIB_DEPTH, mib_n(cfg)) / 1000.0;   /* µs per MiB */
}

static void stop_loop(void *arg)
{
    urio_loop_stop(arg);
}

/* Start-up: the first job's submission to every worker ready, in ms. */
static double startup_ms(int start)
{
    urio_loop_t *loop = bench_urio_loop_new();
    urio_executor_t *ex;
    urio_process_pool_opts_t o = { .workers = workers(), .start = start };
    int err = urio_process_pool_new(&ex, &o);
    if (err < 0)
        bench_die("urio_process_pool_new: %s", urio_strerror(err));
    urio_future_t *f = urio_process_pool_submit(loop, ex, "bench.echo", "x", 1);
    if (f == NULL)
        bench_die("urio_process_pool_submit: %s", strerror(errno));
    urio_process_pool_stats_t st = { 0 };
    while (st.startup_ns == 0) {
        urio_call_later(loop, 100000, stop_loop, loop);
        bench_urio_run(loop);
        urio_process_pool_stats(ex, &st, NULL, 0);
    }
    urio_loop_run_until_complete(loop, f);
    urio_future_unref(f);
    urio_executor_free(ex);
    bench_urio_loop_close(loop);
    return (double)st.startup_ns / 1e6;
}

void bench_urio_procpool_startup(const bench_config_t *cfg, double *out)
{
    (void)cfg;
    out[0] = startup_ms(URIO_PROCESS_START_EXEC);
    out[1] = fork_server ? startup_ms(URIO_PROCESS_START_FORK_SERVER) : NAN;
}

/* ------------------------------------------------------------------ */
/* Python                                                               */

#ifndef URIO_BENCH_PEERS_DIR
#define URIO_BENCH_PEERS_DIR "bench/peers"
#endif
#define PYTHON "/usr/bin/python3"

/* Runs the peer script in `mode` and returns the number it prints (NAN without Python). */
static double python_pp(const char *mode, uint64_t n, uint64_t depth, size_t len)
{
    if (access(PYTHON, X_OK) != 0)
        return NAN;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s %s/procpool.py %s %llu %llu %zu %u", PYTHON,
             URIO_BENCH_PEERS_DIR, mode, (unsigned long long)n, (unsigned long long)depth,
             len, workers());
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        bench_die("popen %s: %s", cmd, strerror(errno));
    double v = NAN;
    if (fscanf(p, "%lf", &v) != 1)
        v = NAN;
    int status = pclose(p);
    if (status != 0 || !isfinite(v))
        bench_die("the Python peer failed (%s): status %d", cmd, status);
    return v;
}

void bench_py_procpool_rtt(const bench_config_t *cfg, double *out)
{
    out[0] = python_pp("run", rtt_n(cfg), 1, 8) / 1000.0;
}

void bench_py_procpool_tput(const bench_config_t *cfg, double *out)
{
    /* Python's throughput is ~100x lower: a tenth of the jobs keeps its run short. */
    out[0] = python_pp("run", tput_n(cfg) / 10, TPUT_DEPTH, 8);
}

void bench_py_procpool_mib(const bench_config_t *cfg, double *out)
{
    out[0] = python_pp("run", mib_n(cfg) / 2, MIB_DEPTH, MIB) / 1000.0;
}
