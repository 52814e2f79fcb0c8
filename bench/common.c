/*
 * common.c — what both sides of the benchmarks share: sizes, fatal errors,
 * prefaulted memory, the timer deadlines and the lateness percentiles.
 */
#include "bench.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void bench_timer_offsets(const bench_config_t *cfg, uint64_t *offsets)
{
    uint64_t state = cfg->seed;
    for (uint64_t i = 0; i < cfg->timer_n; i++)
        offsets[i] = cfg->timer_lead_ns + bench_splitmix64(&state) % cfg->timer_span_ns;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array. */
static int64_t percentile(const int64_t *sorted, size_t n, double p)
{
    size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

void bench_lateness_percentiles(int64_t *late, size_t n, double *out)
{
    if (n == 0)
        bench_die("no timer fired");
    qsort(late, n, sizeof late[0], cmp_i64);
    out[BENCH_TIMERS_LATE_P50] = (double)percentile(late, n, 50.0) / 1000.0;
    out[BENCH_TIMERS_LATE_P99] = (double)percentile(late, n, 99.0) / 1000.0;
}
