/*
 * crossthread.c — urio's side of the cross-thread call benchmarks: P
 * producer threads post calls with urio_call_soon_threadsafe to a loop
 * that runs them.
 *
 * Each call's argument is its producer's record (nothing is allocated per
 * call, on either side); each call counts itself, and the one that brings
 * the count to the total stops the loop and reads the clock.  The clock
 * starts when the producers are released together from a barrier.  The
 * metric is wall ns per call: lower is better, as in every row.
 *
 * Warm-up: the producers first post a whole unmeasured round of calls to
 * the same loop, and the measured round starts once the loop has run them
 * all.  A producer may run far ahead of the loop, so whatever the loop
 * keeps for queued calls (urio's inbox nodes and ready queue) grows to a
 * run's high-water mark; a service's long-lived loop has grown it before,
 * as the peer's queue arrays are allocated and touched before its clock
 * starts.  The peer runs the same two rounds.
 */
#include "bench.h"
#include "loop_util.h"

#include <string.h>

#include <urio.h>

enum { XT_MAX_PRODUCERS = 2 };

typedef struct xt_run xt_run_t;

typedef struct xt_producer {
    xt_run_t *run;
    uint64_t n;            /* calls this producer posts per round */
    uint64_t ran;          /* of them, run by the loop (loop thread only, both rounds) */
    pthread_t thread;
} xt_producer_t;

struct xt_run {
    urio_loop_t *loop;
    uint64_t total;        /* calls of every producer, per round */
    uint64_t ran;          /* loop thread only, both rounds */
    uint64_t stop_at;      /* ran at the end of the current round */
    uint64_t t1;
    pthread_barrier_t go;  /* the producers and the timing thread, per round */
    xt_producer_t prod[XT_MAX_PRODUCERS];
};

static void xt_call(void *arg)
{
    xt_producer_t *p = arg;
    xt_run_t *run = p->run;
    p->ran++;
    if (++run->ran == run->stop_at) {
        run->t1 = bench_now_ns();
        urio_loop_stop(run->loop);
    }
}

static void *xt_producer_main(void *arg)
{
    xt_producer_t *p = arg;
    urio_loop_t *loop = p->run->loop;
    for (int round = 0; round < 2; round++) {   /* the warm-up, then the measured one */
        pthread_barrier_wait(&p->run->go);
        for (uint64_t i = 0; i < p->n; i++) {
            int err = urio_call_soon_threadsafe(loop, xt_call, p);
            if (err < 0)
                bench_die("urio_call_soon_threadsafe (call %llu): %s", (unsigned long long)i,
                          urio_strerror(err));
        }
    }
    /* The reference the main thread took for us (see below). */
    urio_loop_unref(loop);
    return NULL;
}

static void urio_crossthread(const bench_config_t *cfg, unsigned producers, double *out)
{
    xt_run_t run = {
        .loop = bench_urio_loop_new(),
        .total = cfg->xthread_n / producers * producers,
    };
    int err = pthread_barrier_init(&run.go, NULL, producers + 1);
    if (err)
        bench_die("pthread_barrier_init: %s", strerror(err));

    for (unsigned i = 0; i < producers; i++) {
        run.prod[i] = (xt_producer_t){ .run = &run, .n = run.total / producers };
        /* A producer holds a loop reference while it may post, as a thread
         * outliving the loop must; here the loop closes after the join. */
        urio_loop_ref(run.loop);
        run.prod[i].thread = bench_thread_start(xt_producer_main, &run.prod[i]);
    }

    /* The warm-up round: the loop stops once it has run every call. */
    run.stop_at = run.total;
    pthread_barrier_wait(&run.go);
    bench_urio_run(run.loop);

    /* The measured round.  Calls posted before the loop runs wait in its
     * inbox, as libuv's wait in the peer's queue: both clocks start at the
     * same point. */
    run.stop_at = 2 * run.total;
    pthread_barrier_wait(&run.go);
    uint64_t t0 = bench_now_ns();
    bench_urio_run(run.loop);   /* the last call stops it */

    for (unsigned i = 0; i < producers; i++)
        bench_thread_join(run.prod[i].thread);
    for (unsigned i = 0; i < producers; i++)
        if (run.prod[i].ran != 2 * run.prod[i].n)
            bench_die("urio ran %llu of the %llu calls of producer %u",
                      (unsigned long long)run.prod[i].ran,
                      (unsigned long long)(2 * run.prod[i].n), i);
    out[0] = (double)(run.t1 - t0) / (double)run.total;

    pthread_barrier_destroy(&run.go);
    bench_urio_loop_close(run.loop);
}

void bench_urio_crossthread_1p(const bench_config_t *cfg, double *out)
{
    urio_crossthread(cfg, 1, out);
}

void bench_urio_crossthread_2p(const bench_config_t *cfg, double *out)
{
    urio_crossthread(cfg, 2, out);
}
