/*
 * tasks.c — what a task costs: spawning, running and joining one, and the
 * memory a sleeping task keeps resident.  No peer: libuv has no coroutines
 * (the switch itself is compared with swapcontext in switch.c).
 */
#include "bench.h"
#include "loop_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <urio.h>

typedef struct tasks_run {
    uint64_t n_join;       /* spawn + run + join, one after the other */
    uint64_t n_idle;       /* tasks kept sleeping at once */
    double join_ns;
    double idle_kib;
} tasks_run_t;

static int trivial(void *arg, void **result)
{
    *result = arg;
    return 0;
}

static int sleeper(void *arg, void **result)
{
    (void)arg;
    (void)result;
    return urio_sleep(3600ull * 1000000000u);   /* until cancelled */
}

static long resident_pages(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return resident;
}

static int tasks_main(void *arg, void **result)
{
    (void)result;
    tasks_run_t *run = arg;
    urio_loop_t *loop = urio_loop_current();

    /* Warm the stack pool and the allocator, as a service's loop is. */
    for (int i = 0; i < 1000; i++) {
        urio_future_t *t = urio_spawn(loop, trivial, NULL);
        urio_await(t, NULL);
        urio_future_unref(t);
    }
    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < run->n_join; i++) {
        urio_future_t *t = urio_spawn(loop, trivial, run);
        void *r = NULL;
        if (t == NULL || urio_await(t, &r) != 0 || r != run)
            bench_die("a spawned task failed");
        urio_future_unref(t);
    }
    run->join_ns = (double)(bench_now_ns() - t0) / (double)run->n_join;

    /* n_idle tasks asleep at once: what each keeps resident. */
    urio_future_t **ts = malloc(run->n_idle * sizeof *ts);
    if (ts == NULL)
        bench_die("out of memory");
    long before = resident_pages();
    for (uint64_t i = 0; i < run->n_idle; i++)
        if ((ts[i] = urio_spawn(loop, sleeper, NULL)) == NULL)
            bench_die("urio_spawn: %s", strerror(errno));
    urio_yield();                   /* every task runs its first step and sleeps */
    long after = resident_pages();
    run->idle_kib = (double)(after - before) * (double)sysconf(_SC_PAGESIZE) / 1024.0 /
                    (double)run->n_idle;
    for (uint64_t i = 0; i < run->n_idle; i++)
        urio_future_cancel(ts[i]);
    for (uint64_t i = 0; i < run->n_idle; i++) {
        urio_await(ts[i], NULL);
        urio_future_unref(ts[i]);
    }
    free(ts);
    return 0;
}

void bench_urio_tasks(const bench_config_t *cfg, double *out)
{
    tasks_run_t run = { .n_join = cfg->quick ? 200000 : 1000000, .n_idle = 100000 };
    urio_run_opts_t opts = { .debug = -1 };
    int err = urio_run(URIO_CORO(tasks_main, &run), &opts, NULL);
    if (err < 0)
        bench_die("urio_run: %s", urio_strerror(err));
    out[0] = run.join_ns;
    out[1] = run.idle_kib;
}
