/*
 * threadpool_probe.c — threadpool.throughput's urio side as a program of its
 * own, for profilers: "urio-threadpool-probe [--spin] N [WORKERS]" runs
 * 1,000 warm-up jobs, then N jobs with 1,000 in flight on a pool of WORKERS
 * (default 6), each completion submitting the next, and prints the
 * nanoseconds per job.
 *
 * --spin keeps the loop out of the kernel: a callback re-queues itself, with
 * a sched_yield, every turn.  valgrind cannot run a thread blocked in
 * io_uring_enter while others must run (docs/developing.md), so callgrind
 * needs it; bench/threadpool_callgrind.sh uses it to count the loop
 * thread's instructions per job.
 */
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <urio.h>

typedef struct probe {
    urio_loop_t *loop;
    urio_executor_t *ex;
    unsigned long warmup, warm_done, depth, n, submitted, completed;
    double t0, t1;
    bool spin, done;
} probe_t;

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void *job(void *arg)
{
    return arg;
}

static void submit(probe_t *p, urio_future_done_fn done)
{
    urio_future_t *f = urio_run_in_executor(p->loop, p->ex, job, p);
    if (f == NULL || urio_future_add_done_callback(f, done, p) < 0) {
        fprintf(stderr, "urio-threadpool-probe: a submission failed\n");
        exit(1);
    }
}

static void check(probe_t *p, urio_future_t *f)
{
    void *value = NULL;
    if (urio_future_result(f, &value) != 0 || value != p) {
        fprintf(stderr, "urio-threadpool-probe: a job's outcome is wrong\n");
        exit(1);
    }
    urio_future_unref(f);
}

static void measured_done(urio_future_t *f, void *arg)
{
    probe_t *p = arg;
    check(p, f);
    if (++p->completed == p->n) {
        p->t1 = now_ns();
        p->done = true;
        urio_loop_stop(p->loop);
    } else if (p->submitted < p->n) {
        p->submitted++;
        submit(p, measured_done);
    }
}

static void warm_done(urio_future_t *f, void *arg)
{
    probe_t *p = arg;
    check(p, f);
    if (++p->warm_done < p->warmup)
        return;
    p->t0 = now_ns();
    for (unsigned long i = 0; i < p->depth && i < p->n; i++) {
        p->submitted++;
        submit(p, measured_done);
    }
}

static void start(void *arg)
{
    probe_t *p = arg;
    for (unsigned long i = 0; i < p->warmup; i++)
        submit(p, warm_done);
}

static void spin(void *arg)
{
    probe_t *p = arg;
    sched_yield();      /* under valgrind: the workers get their turn */
    if (!p->done)
        urio_call_soon(p->loop, spin, p);
}

int main(int argc, char **argv)
{
    probe_t p = { .warmup = 1000, .depth = 1000, .n = 1000000 };
    int a = 1;
    if (a < argc && strcmp(argv[a], "--spin") == 0) {
        p.spin = true;
        a++;
    }
    if (a < argc)
        p.n = strtoul(argv[a++], NULL, 10);
    unsigned long workers = a < argc ? strtoul(argv[a++], NULL, 10) : 6;
    urio_loop_opts_t opts = { .debug = -1 };
    if (p.n == 0 || workers == 0 || urio_loop_new(&p.loop, &opts) < 0 ||
        urio_thread_pool_new(&p.ex, (unsigned)workers) < 0)
        return 1;
    urio_call_soon(p.loop, start, &p);
    if (p.spin)
        urio_call_soon(p.loop, spin, &p);
    if (urio_loop_run_forever(p.loop) < 0 || p.completed != p.n)
        return 1;
    urio_executor_free(p.ex);
    printf("%.1f\n", (p.t1 - p.t0) / (double)p.n);
    return urio_loop_close(p.loop) != 0;
}
