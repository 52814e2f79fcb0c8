/*
 * debug.c — what debug mode costs: the dispatch chain and a timer workload
 * with debug mode on (urio's column) against the same with it off (the
 * peer's column) in one build; and the chain in the default build (debug
 * mode's machinery compiled in, debug mode off) against a build that never
 * had it (-Ddebug_checks=false), each a program of its own (bench/
 * debug_probe.c, built twice) started the same way.
 * Goals: debug mode on costs <= 3x (asyncio's costs about 18x); the
 * machinery compiled in costs nothing measurable while debug mode is off.
 */
#include "bench.h"
#include "debug_paths.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <urio.h>

typedef struct chain {
    urio_loop_t *loop;
    uint64_t left;
} chain_t;

static void chain_step(void *arg)
{
    chain_t *c = arg;
    if (--c->left == 0)
        urio_loop_stop(c->loop);
    else if (urio_call_soon(c->loop, chain_step, c).id == 0)
        bench_die("urio_call_soon: %s", strerror(errno));
}

static double chain_ns(int debug, uint64_t n)
{
    urio_loop_opts_t opts = { .debug = debug };
    chain_t c = { .left = n };
    if (urio_loop_new(&c.loop, &opts) < 0)
        bench_die("urio_loop_new failed");
    /* Warm up: the FIFO grown, the code in the caches. */
    c.left = 1000;
    urio_call_soon(c.loop, chain_step, &c);
    urio_loop_run_forever(c.loop);
    c.left = n;
    uint64_t t0 = bench_now_ns();
    urio_call_soon(c.loop, chain_step, &c);
    urio_loop_run_forever(c.loop);
    uint64_t t1 = bench_now_ns();
    urio_loop_close(c.loop);
    return (double)(t1 - t0) / (double)n;
}

void bench_urio_debug_dispatch(const bench_config_t *cfg, double *out)
{
    out[0] = chain_ns(1, cfg->chain_n);
}

void bench_off_debug_dispatch(const bench_config_t *cfg, double *out)
{
    out[0] = chain_ns(-1, cfg->chain_n);
}

/* Timers: n timers over the next 2 ms, each rescheduling itself 20 times. */
typedef struct timers {
    urio_loop_t *loop;
    uint64_t left;
} timers_t;

static void timer_cb(void *arg)
{
    timers_t *t = arg;
    if (--t->left == 0)
        urio_loop_stop(t->loop);
    else if ((t->left & 31) != 0 &&
             urio_call_later(t->loop, (t->left * 7919u) % 2000000u, timer_cb, t).id == 0)
        bench_die("urio_call_later: %s", strerror(errno));
}

/*
 * The timer workload's CPU per timer: debug mode as asked, the stall
 * watchdog at stall_ns (0: none), counted on the loop's thread or, with
 * whole, on every thread of the process (the watchdog's included).
 */
static double timers_cpu_ns(int debug, uint64_t stall_ns, bool whole, uint64_t n)
{
    urio_loop_opts_t opts = { .debug = debug };
    timers_t t = { .left = n };
    if (urio_loop_new(&t.loop, &opts) < 0)
        bench_die("urio_loop_new failed");
    urio_loop_set_timer_slack(t.loop, 0);
    if (stall_ns && urio_loop_set_stall_watchdog(t.loop, stall_ns) < 0)
        bench_die("urio_loop_set_stall_watchdog failed");
    uint64_t c0 = whole ? bench_process_cpu_ns() : bench_thread_cpu_ns();
    for (uint64_t i = 0; i < n / 32; i++)
        urio_call_later(t.loop, (i * 104729u) % 2000000u, timer_cb, &t);
    urio_loop_run_forever(t.loop);
    uint64_t c1 = whole ? bench_process_cpu_ns() : bench_thread_cpu_ns();
    urio_loop_close(t.loop);
    return (double)(c1 - c0) / (double)n;
}

void bench_urio_debug_timers(const bench_config_t *cfg, double *out)
{
    out[0] = timers_cpu_ns(1, 0, false, cfg->quick ? 64000 : 320000);
}

void bench_off_debug_timers(const bench_config_t *cfg, double *out)
{
    out[0] = timers_cpu_ns(-1, 0, false, cfg->quick ? 64000 : 320000);
}

/*
 * The stall watchdog's cost while nothing stalls: the timer workload, debug
 * mode off, with the watchdog at 10 ms (its thread looks every 2.5 ms,
 * forty times more often than debug mode's default of a second would)
 * against none, in CPU time of the whole process (the watchdog's thread
 * included).  Goal: within noise.
 */
void bench_urio_debug_watchdog(const bench_config_t *cfg, double *out)
{
    out[0] = timers_cpu_ns(-1, 10 * 1000000u, true, cfg->quick ? 64000 : 320000);
}

void bench_off_debug_watchdog(const bench_config_t *cfg, double *out)
{
    out[0] = timers_cpu_ns(-1, 0, true, cfg->quick ? 64000 : 320000);
}

/* The probe programs: "PROBE N" prints ns per chained callback. */
static void run_probe(const char *path, uint64_t n, double *out)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' %llu", path, (unsigned long long)n);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        bench_die("cannot start %s: %s", path, strerror(errno));
    double ns = -1;
    if (fscanf(p, "%lf", &ns) != 1)
        ns = -1;
    int status = pclose(p);
    if (ns <= 0 || status != 0)
        bench_die("%s gave no figure (status %d)", path, status);
    out[0] = ns;
}

void bench_urio_debug_compiled(const bench_config_t *cfg, double *out)
{
    run_probe(BENCH_DEBUG_PROBE, cfg->chain_n, out);
}

void bench_nochecks_debug_compiled(const bench_config_t *cfg, double *out)
{
    run_probe(BENCH_DEBUG_PROBE_NOCHECKS, cfg->chain_n, out);
}
