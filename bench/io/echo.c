/*
 * io/echo.c — the echo benchmarks: urio's examples/echo_server against a
 * libuv server, a level-triggered epoll server and a raw liburing server
 * (bench/peers/<kind>_echo_server.c), all loaded by the same client
 * (loadgen.c).
 *
 * Every side is a server process started the same way (proc.c: same
 * command line, `--host 127.0.0.1 --port 0 --loops 1`, same environment,
 * pinned to the same CPU), warmed up by the same client for the same time
 * over fresh connections, then measured over a window:
 *
 * - closed loop (echo.msgs*, echo.cpu*): 50 connections of 64-byte
 *   ping-pong.  ns per message is the window over the round trips in it
 *   (the inverse of messages/s).  On two cores the client saturates first,
 *   so what tells servers apart is their CPU time per message: the
 *   server's process CPU clock (clock_getcpuclockid: every thread of it,
 *   io_uring's io-wq and SQPOLL threads included, to the nanosecond) read
 *   at the window's two edges, over the round trips in the window.
 *
 * - open loop (echo.lat_*): the same connections at a fixed rate, half of
 *   libuv's closed-loop maximum measured earlier in this run (measured
 *   here if it was not), round trips from the scheduled send time.
 *
 * The client runs on the harness's thread.  Neither it nor the server is
 * pinned unless URIO_BENCH_PIN=1 (the first CPU and the last: see
 * bench_pin_cpus for why not by default).
 */
#include "../bench.h"
#include "io_paths.h"
#include "loadgen.h"
#include "proc.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ECHO_CONNS = 50, ECHO_MSG = 64, MAX_RATES = 1000 };

/* Seconds a server may take to print its "listening on" line. */
static const uint64_t LISTEN_NS = 10000000000u;

typedef struct echo_sizes {
    uint64_t warmup_ns, measure_ns, lat_measure_ns;
} echo_sizes_t;

static echo_sizes_t echo_sizes(const bench_config_t *cfg)
{
    if (cfg->quick)
        return (echo_sizes_t){ .warmup_ns = 300000000u, .measure_ns = 1000000000u,
                               .lat_measure_ns = 1500000000u };
    return (echo_sizes_t){ .warmup_ns = 1000000000u, .measure_ns = 5000000000u,
                           .lat_measure_ns = 5000000000u };
}

/* urio's server: the meson-built examples/echo_server, or a stand-in
 * named by URIO_BENCH_ECHO_SERVER (to try the harness out, or to measure
 * another build). */
static const char *urio_server(void)
{
    const char *env = getenv("URIO_BENCH_ECHO_SERVER");
    return env && *env ? env : BENCH_URIO_ECHO_SERVER;
}

const char *bench_echo_urio_missing(void)
{
    static char why[512];
    if (bench_proc_exists(urio_server()))
        return NULL;
    snprintf(why, sizeof why, "urio side not built: no %s (examples/echo_server.c)",
             urio_server());
    return why;
}

/* ------------------------------------------------------------------ */
/* One run against one server                                           */

typedef struct echo_run {
    bench_proc_t server;
    uint64_t cpu_start, cpu_end;
} echo_run_t;

static void window_edge(void *ctx, bool start)
{
    echo_run_t *r = ctx;
    uint64_t cpu = bench_proc_cpu_ns(&r->server);
    if (start)
        r->cpu_start = cpu;
    else
        r->cpu_end = cpu;
}

/* "listening on <host>:<port>" into an address to connect to. */
static void parse_listening(const char *name, const char *line, loadgen_opts_t *o)
{
    static const char prefix[] = "listening on ";
    const char *colon = strrchr(line, ':');
    if (strncmp(line, prefix, sizeof prefix - 1) != 0 || !colon)
        bench_die("%s: expected 'listening on <host>:<port>', got '%s'", name, line);
    char host[256];
    size_t hlen = (size_t)(colon - line) - (sizeof prefix - 1);
    if (hlen >= sizeof host)
        bench_die("%s: host too long in '%s'", name, line);
    memcpy(host, line + sizeof prefix - 1, hlen);
    host[hlen] = '\0';
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {   /* [::1]:port */
        memmove(host, host + 1, hlen - 2);
        host[hlen - 2] = '\0';
    }
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };
    struct addrinfo *res;
    int err = getaddrinfo(host, colon + 1, &hints, &res);
    if (err)
        bench_die("%s: '%s': %s", name, line, gai_strerror(err));
    memcpy(&o->addr, res->ai_addr, res->ai_addrlen);
    o->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
}

/* Starts the server, loads it (closed loop if rate == 0), stops it. */
static void echo_run(const bench_config_t *cfg, const char *name, const char *path, double rate,
                     loadgen_result_t *res, uint64_t *server_cpu_ns)
{
    echo_sizes_t sz = echo_sizes(cfg);
    int client_cpu, server_cpu;
    bench_pin_cpus(&client_cpu, &server_cpu);
    bench_affinity_t saved;
    bench_pin_self(client_cpu, &saved);

    echo_run_t run;
    char *argv[] = { (char *)path, "--host", "127.0.0.1", "--port", "0", "--loops", "1", NULL };
    bench_proc_start(&run.server, name, argv, server_cpu);
    char line[512];
    bench_proc_read_line(&run.server, line, sizeof line, LISTEN_NS);

    loadgen_opts_t o = {
        .conns = ECHO_CONNS,
        .msg_size = ECHO_MSG,
        .warmup_ns = sz.warmup_ns,
        .measure_ns = rate > 0.0 ? sz.lat_measure_ns : sz.measure_ns,
        .rate = rate,
        .window = window_edge,
        .ctx = &run,
    };
    parse_listening(name, line, &o);
    loadgen_run(&o, res);
    bench_proc_stop(&run.server);
    bench_unpin_self(&saved);
    if (res->msgs == 0)
        bench_die("%s: no round trip in the window", name);
    *server_cpu_ns = run.cpu_end - run.cpu_start;
}

/* ------------------------------------------------------------------ */
/* Closed loop: ns and server CPU ns per message                        */

/* libuv's messages/s in this process's closed-loop runs: the latency
 * rows load both sides at half their median. */
static double uv_rates[MAX_RATES];
static size_t n_uv_rates;

static double echo_closed(const bench_config_t *cfg, const char *name, const char *path,
                          double *out)
{
    loadgen_result_t res;
    uint64_t cpu;
    echo_run(cfg, name, path, 0.0, &res, &cpu);
    out[BENCH_ECHO_MSGS] = (double)res.window_ns / (double)res.msgs;
    out[BENCH_ECHO_CPU] = (double)cpu / (double)res.msgs;
    fprintf(stderr, " %.0f msg/s, cpu ns/msg: server %.0f, client %.0f", res.msgs_per_s,
            out[BENCH_ECHO_CPU], (double)res.client_cpu_ns / (double)res.msgs);
    return res.msgs_per_s;
}

void bench_urio_echo(const bench_config_t *cfg, double *out)
{
    echo_closed(cfg, "echo_server", urio_server(), out);
}

void bench_uv_echo(const bench_config_t *cfg, double *out)
{
    double rate = echo_closed(cfg, "uv-echo-server", BENCH_UV_ECHO_SERVER, out);
    if (n_uv_rates < MAX_RATES)
        uv_rates[n_uv_rates++] = rate;
}

void bench_epoll_echo(const bench_config_t *cfg, double *out)
{
    echo_closed(cfg, "epoll-echo-server", BENCH_EPOLL_ECHO_SERVER, out);
}

void bench_uring_echo(const bench_config_t *cfg, double *out)
{
    echo_closed(cfg, "uring-echo-server", BENCH_URING_ECHO_SERVER, out);
}

/* ------------------------------------------------------------------ */
/* Open loop: round-trip percentiles at a fixed rate                     */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Half of libuv's median closed-loop rate, fixed at the first call so
 * that every latency run of both sides gets the same schedule. */
static double latency_rate(const bench_config_t *cfg)
{
    static double rate;
    if (rate > 0.0)
        return rate;
    if (n_uv_rates == 0) {
        double out[BENCH_ECHO_N_METRICS];
        fprintf(stderr, " (libuv's maximum first:");
        bench_uv_echo(cfg, out);
        fprintf(stderr, ")");
    }
    double sorted[MAX_RATES];
    memcpy(sorted, uv_rates, n_uv_rates * sizeof sorted[0]);
    qsort(sorted, n_uv_rates, sizeof sorted[0], cmp_double);
    double median = n_uv_rates % 2 ? sorted[n_uv_rates / 2]
                                   : (sorted[n_uv_rates / 2 - 1] + sorted[n_uv_rates / 2]) / 2;
    rate = median / 2.0;
    return rate;
}

static void echo_open(const bench_config_t *cfg, const char *name, const char *path, double *out)
{
    double rate = latency_rate(cfg);
    loadgen_result_t res;
    uint64_t cpu;
    echo_run(cfg, name, path, rate, &res, &cpu);
    out[BENCH_ECHO_LAT_P50] = res.p50_us;
    out[BENCH_ECHO_LAT_P99] = res.p99_us;
    out[BENCH_ECHO_LAT_P999] = res.p999_us;
    fprintf(stderr, " %.0f msg/s scheduled, %.0f done, client send lag p99 %.1f us", rate,
            res.msgs_per_s, res.send_lag_p99_us);
    /* Late sends are charged to the server's round trips: say when they
     * are most of them. */
    if (res.send_lag_p99_us > res.p99_us / 2)
        fprintf(stderr, " (the client's lag is most of p99: the machine is too busy)");
}

void bench_urio_echo_latency(const bench_config_t *cfg, double *out)
{
    echo_open(cfg, "echo_server", urio_server(), out);
}

void bench_uv_echo_latency(const bench_config_t *cfg, double *out)
{
    echo_open(cfg, "uv-echo-server", BENCH_UV_ECHO_SERVER, out);
}
