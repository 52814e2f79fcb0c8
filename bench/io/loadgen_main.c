/*
 * io/loadgen_main.c — urio-loadgen: the echo benchmarks' client on its
 * own, against any running echo server, for trying a server out by hand:
 *
 *   urio-loadgen [--host H] [--port P] [--conns N] [--size B]
 *                [--warmup S] [--seconds S] [--rate MSGS_PER_S] [--pid PID]
 *
 * Closed loop unless --rate is given.  With --pid, also the CPU time of
 * that process (the server) per message over the window.
 */
#include "../bench.h"
#include "loadgen.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct cpu_window {
    clockid_t clock;
    uint64_t start, end;
} cpu_window_t;

static void window_edge(void *ctx, bool start)
{
    cpu_window_t *w = ctx;
    struct timespec ts;
    if (clock_gettime(w->clock, &ts) != 0)
        bench_die("the server's CPU clock: %s", strerror(errno));
    *(start ? &w->start : &w->end) = bench_ts_ns(&ts);
}

static void usage(void)
{
    fprintf(stderr, "usage: urio-loadgen [--host H] [--port P] [--conns N] [--size B] "
                    "[--warmup S] [--seconds S] [--rate MSGS_PER_S] [--pid PID]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "8888";
    double warmup = 1.0, seconds = 5.0;
    long pid = 0;
    loadgen_opts_t o = { .conns = 50, .msg_size = 64 };
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        const char *opt = argv[i], *v = argv[++i];
        if (strcmp(opt, "--host") == 0)
            host = v;
        else if (strcmp(opt, "--port") == 0)
            port = v;
        else if (strcmp(opt, "--conns") == 0)
            o.conns = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(opt, "--size") == 0)
            o.msg_size = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(opt, "--warmup") == 0)
            warmup = strtod(v, NULL);
        else if (strcmp(opt, "--seconds") == 0)
            seconds = strtod(v, NULL);
        else if (strcmp(opt, "--rate") == 0)
            o.rate = strtod(v, NULL);
        else if (strcmp(opt, "--pid") == 0)
            pid = strtol(v, NULL, 10);
        else
            usage();
    }
    if (!(warmup >= 0.0) || !(seconds > 0.0))
        usage();
    o.warmup_ns = (uint64_t)(warmup * 1e9);
    o.measure_ns = (uint64_t)(seconds * 1e9);

    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
    struct addrinfo *res;
    int err = getaddrinfo(host, port, &hints, &res);
    if (err)
        bench_die("%s:%s: %s", host, port, gai_strerror(err));
    memcpy(&o.addr, res->ai_addr, res->ai_addrlen);
    o.addrlen = res->ai_addrlen;
    freeaddrinfo(res);

    cpu_window_t w = { 0 };
    if (pid > 0) {
        err = clock_getcpuclockid((pid_t)pid, &w.clock);
        if (err)
            bench_die("clock_getcpuclockid(%ld): %s", pid, strerror(err));
        o.window = window_edge;
        o.ctx = &w;
    }
    loadgen_result_t r;
    loadgen_run(&o, &r);
    printf("msgs %llu in %.3f s: %.0f msg/s", (unsigned long long)r.msgs,
           (double)r.window_ns / 1e9, r.msgs_per_s);
    printf(", client cpu %.0f ns/msg", (double)r.client_cpu_ns / (double)r.msgs);
    if (pid > 0)
        printf(", server cpu %.0f ns/msg", (double)(w.end - w.start) / (double)r.msgs);
    if (o.rate > 0.0)
        printf(", round trip p50 %.1f p99 %.1f p99.9 %.1f us (%llu samples), send lag p99 %.1f us",
               r.p50_us, r.p99_us, r.p999_us, (unsigned long long)r.samples, r.send_lag_p99_us);
    printf("\n");
    return 0;
}
