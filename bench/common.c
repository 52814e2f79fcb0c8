/*
 * common.c — what both sides of the benchmarks share: sizes, fatal errors,
 * prefaulted memory, the timer deadlines, percentiles, threads, eventfds
 * and the wake-up ping-pong client.
 */
#include "bench.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/*
 * The worker threads of both thread pools.  libuv sizes its one process-wide
 * pool from UV_THREADPOOL_SIZE when it first queues work; urio's default
 * pool has min(32, cores + 4) workers.  Comparing the libraries, not their
 * defaults, wants the same count on both sides: urio's default, given to
 * libuv through its own knob, unless the user set UV_THREADPOOL_SIZE, which
 * then sizes both.
 */
static unsigned pool_workers(void)
{
    const char *env = getenv("UV_THREADPOOL_SIZE");
    if (env && *env) {
        char *end;
        unsigned long v = strtoul(env, &end, 10);
        if (*end != '\0' || v < 1 || v > 1024)
            bench_die("UV_THREADPOOL_SIZE wants a count from 1 to 1024, not '%s'", env);
        return (unsigned)v;
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = cores < 1 ? 5u : cores > 28 ? 32u : (unsigned)cores + 4u;
    char buf[16];
    snprintf(buf, sizeof buf, "%u", n);
    if (setenv("UV_THREADPOOL_SIZE", buf, 1) != 0)
        bench_die("setenv: %s", strerror(errno));
    return n;
}

void bench_config_init(bench_config_t *cfg, bool quick)
{
    /* --quick keeps the default run under about a minute on two cores
     * while still giving each run enough work to dwarf the clock reads. */
    *cfg = (bench_config_t){
        .quick = quick,
        .chain_n = quick ? 2000000u : 10000000u,
        .fanout_n = quick ? 2000000u : 10000000u,
        .fanout_round = 1000u,
        .allocs_warmup = 100000u,
        .allocs_n = 1000000u,
        .timer_n = quick ? 200000u : 1000000u,
        .timer_span_ns = quick ? 200000000u : 1000000000u,
        .timer_lead_ns = quick ? 100000000u : 300000000u,
        .seed = 0x75726f69u,   /* "urio" */
        /* The sparse row is the same in both modes: 200,000 deadlines over a
         * second, one per 5 µs, where a loop's fixed cost per wake-up shows. */
        .sparse_n = 200000u,
        .sparse_span_ns = 1000000000u,
        .sparse_lead_ns = 200000000u,
        .idle_ticks = quick ? 500u : 2000u,
        .xthread_n = quick ? 1000000u : 5000000u,
        .wakeup_n = quick ? 20000u : 100000u,
        .wakeup_warmup = 1000u,
        /* Long enough for any loop to finish its turn and block again
         * (a few µs), short enough to keep the CPUs out of deep sleep. */
        .wakeup_gap_ns = 20000u,
        .pool_rtt_n = quick ? 20000u : 100000u,
        .pool_n = quick ? 200000u : 1000000u,
        .pool_inflight = 1000u,
        .pool_warmup = 1000u,
        .pool_workers = pool_workers(),
        .switch_n = quick ? 2000000u : 10000000u,
    };
}

void bench_die(const char *fmt, ...)
{
    va_list ap;
    fputs("urio-bench: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

void *bench_alloc_prefaulted(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        bench_die("out of memory allocating %zu bytes", size);
    /* Not calloc: a large calloc maps zero pages lazily, and the first
     * write would fault inside the measured loop. */
    memset(p, 0, size);
    return p;
}

void bench_timer_offsets_n(uint64_t n, uint64_t span_ns, uint64_t lead_ns, uint64_t seed,
                           uint64_t *offsets)
{
    uint64_t state = seed;
    for (uint64_t i = 0; i < n; i++)
        offsets[i] = lead_ns + bench_splitmix64(&state) % span_ns;
}

void bench_timer_offsets(const bench_config_t *cfg, uint64_t *offsets)
{
    bench_timer_offsets_n(cfg->timer_n, cfg->timer_span_ns, cfg->timer_lead_ns, cfg->seed,
                          offsets);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int64_t bench_percentile(const int64_t *sorted, size_t n, double p)
{
    size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

void bench_percentiles_us(int64_t *ns, size_t n, double *p50, double *p99)
{
    if (n == 0)
        bench_die("no samples");
    qsort(ns, n, sizeof ns[0], cmp_i64);
    *p50 = (double)bench_percentile(ns, n, 50.0) / 1000.0;
    *p99 = (double)bench_percentile(ns, n, 99.0) / 1000.0;
}

void bench_lateness_percentiles(int64_t *late, size_t n, double *out)
{
    if (n == 0)
        bench_die("no timer fired");
    bench_percentiles_us(late, n, &out[BENCH_TIMERS_LATE_P50], &out[BENCH_TIMERS_LATE_P99]);
}

/* ------------------------------------------------------------------ */
/* Threads and eventfds                                                 */

pthread_t bench_thread_start(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    int err = pthread_create(&t, NULL, fn, arg);
    if (err)
        bench_die("pthread_create: %s", strerror(err));
    return t;
}

void bench_thread_join(pthread_t thread)
{
    int err = pthread_join(thread, NULL);
    if (err)
        bench_die("pthread_join: %s", strerror(err));
}

int bench_efd_new(void)
{
    int fd = eventfd(0, EFD_CLOEXEC);   /* blocking: the waiter sleeps in read(2) */
    if (fd < 0)
        bench_die("eventfd: %s", strerror(errno));
    return fd;
}

void bench_efd_signal(int fd, uint64_t value)
{
    while (write(fd, &value, sizeof value) < 0)
        if (errno != EINTR)
            bench_die("eventfd write: %s", strerror(errno));
}

uint64_t bench_efd_wait(int fd)
{
    uint64_t value;
    while (read(fd, &value, sizeof value) < 0)
        if (errno != EINTR)
            bench_die("eventfd read: %s", strerror(errno));
    return value;
}

/* ------------------------------------------------------------------ */
/* The wake-up ping-pong client                                         */

static void spin_ns(uint64_t ns)
{
    uint64_t end = bench_now_ns() + ns;
    while (bench_now_ns() < end)
        ;
}

static void *pingpong_client(void *arg)
{
    bench_pingpong_t *pp = arg;
    uint64_t total = pp->warmup + pp->n;
    for (uint64_t i = 0; i < total; i++) {
        spin_ns(pp->gap_ns);
        uint64_t t0 = bench_now_ns();
        pp->post(pp->ctx);
        bench_efd_wait(pp->efd);
        uint64_t t1 = bench_now_ns();
        if (i >= pp->warmup)
            pp->rtt[i - pp->warmup] = (int64_t)(t1 - t0);
    }
    pp->finish(pp->ctx);
    return NULL;
}

void bench_pingpong_start(bench_pingpong_t *pp, const bench_config_t *cfg,
                          void (*post)(void *ctx), void (*finish)(void *ctx), void *ctx)
{
    *pp = (bench_pingpong_t){
        .post = post,
        .finish = finish,
        .ctx = ctx,
        .warmup = cfg->wakeup_warmup,
        .n = cfg->wakeup_n,
        .gap_ns = cfg->wakeup_gap_ns,
        .efd = bench_efd_new(),
        .rtt = bench_alloc_prefaulted(cfg->wakeup_n * sizeof(int64_t)),
    };
    pp->thread = bench_thread_start(pingpong_client, pp);
}

void bench_pingpong_reply(bench_pingpong_t *pp)
{
    bench_efd_signal(pp->efd, 1);
}

void bench_pingpong_join(bench_pingpong_t *pp, double *p50, double *p99)
{
    bench_thread_join(pp->thread);
    bench_percentiles_us(pp->rtt, pp->n, p50, p99);
    free(pp->rtt);
    close(pp->efd);
    pp->rtt = NULL;
    pp->efd = -1;
}
