/*
 * debug_probe.c — a dispatch chain, debug mode off, as a program of its own:
 * built against the default library (debug mode's machinery compiled in)
 * and against one built with it compiled out (bench/meson.build), so the
 * harness can compare the two builds in one run.  "debug_probe N" prints
 * the nanoseconds per chained callback.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <urio.h>

typedef struct chain {
    urio_loop_t *loop;
    unsigned long left;
} chain_t;

static void step(void *arg)
{
    chain_t *c = arg;
    if (--c->left == 0)
        urio_loop_stop(c->loop);
    else
        urio_call_soon(c->loop, step, c);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000;
    urio_loop_opts_t opts = { .debug = -1 };
    chain_t c = { .left = 1000 };
    if (n == 0 || urio_loop_new(&c.loop, &opts) < 0)
        return 1;
    urio_call_soon(c.loop, step, &c);       /* warm up */
    urio_loop_run_forever(c.loop);
    c.left = n;
    double t0 = now_ns();
    urio_call_soon(c.loop, step, &c);
    urio_loop_run_forever(c.loop);
    double t1 = now_ns();
    printf("%.3f\n", (t1 - t0) / (double)n);
    return urio_loop_close(c.loop) != 0;
}
