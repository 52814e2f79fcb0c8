/*
 * peers/uv_crossthread.c — libuv's side of the cross-thread call
 * benchmarks.
 *
 * libuv has no call_soon_threadsafe.  What a libuv user writes is a queue
 * of {fn, arg} records guarded by a mutex, and a uv_async_t: a producer
 * appends under the lock and calls uv_async_send; the async callback, on
 * the loop, swaps the queue for an empty one under the lock and runs the
 * calls outside it.  The queue is a growable array, two of them swapped
 * back and forth, so its memory is reused like urio's inbox and stays in
 * cache.  Both arrays start with room for every call of the run, so the
 * growth path (kept, as a user would) never runs: no malloc is measured.
 *
 * The callback is urio's, word for word: count, and the last call stops
 * the loop and reads the clock.  The same unmeasured warm-up round runs
 * first (see crossthread.c).
 */
#include "../bench.h"
#include "uv_util.h"

#include <stdlib.h>
#include <string.h>

enum { UV_XT_MAX_PRODUCERS = 2 };

typedef struct uv_xt_rec {
    void (*fn)(void *arg);
    void *arg;
} uv_xt_rec_t;

typedef struct uv_xt_queue {
    uv_xt_rec_t *recs;
    size_t n, cap;
} uv_xt_queue_t;

typedef struct uv_xt_run uv_xt_run_t;

typedef struct uv_xt_producer {
    uv_xt_run_t *run;
    uint64_t n;
    uint64_t ran;          /* loop thread only */
    pthread_t thread;
} uv_xt_producer_t;

struct uv_xt_run {
    uv_loop_t loop;
    uv_async_t async;
    pthread_mutex_t mu;
    uv_xt_queue_t pending; /* guarded by mu: what producers append to */
    uv_xt_queue_t spare;   /* the loop's: the batch being run */
    uint64_t total;        /* per round */
    uint64_t ran;          /* loop thread only, both rounds */
    uint64_t stop_at;      /* ran at the end of the current round */
    uint64_t t1;
    pthread_barrier_t go;
    uv_xt_producer_t prod[UV_XT_MAX_PRODUCERS];
};

/* Called with mu held. */
static void uv_xt_queue_push(uv_xt_queue_t *q, void (*fn)(void *), void *arg)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        uv_xt_rec_t *recs = realloc(q->recs, cap * sizeof *recs);
        if (!recs)
            bench_die("out of memory growing the call queue");
        q->recs = recs;
        q->cap = cap;
    }
    q->recs[q->n++] = (uv_xt_rec_t){ fn, arg };
}

static void uv_xt_call_soon_threadsafe(uv_xt_run_t *run, void (*fn)(void *), void *arg)
{
    pthread_mutex_lock(&run->mu);
    uv_xt_queue_push(&run->pending, fn, arg);
    pthread_mutex_unlock(&run->mu);
    int err = uv_async_send(&run->async);
    if (err)
        bench_die("uv_async_send: %s", uv_strerror(err));
}

static void uv_xt_async_cb(uv_async_t *h)
{
    uv_xt_run_t *run = (uv_xt_run_t *)h->data;
    pthread_mutex_lock(&run->mu);
    uv_xt_queue_t batch = run->pending;
    run->pending = run->spare;
    pthread_mutex_unlock(&run->mu);

    for (size_t i = 0; i < batch.n; i++)
        batch.recs[i].fn(batch.recs[i].arg);
    batch.n = 0;
    run->spare = batch;
}

static void uv_xt_call(void *arg)
{
    uv_xt_producer_t *p = arg;
    uv_xt_run_t *run = p->run;
    p->ran++;
    if (++run->ran == run->stop_at) {
        run->t1 = bench_now_ns();
        /* Not uv_close: a producer may still be inside uv_async_send for
         * its last call.  The handle is closed after the producers join. */
        uv_stop(&run->loop);
    }
}

static void *uv_xt_producer_main(void *arg)
{
    uv_xt_producer_t *p = arg;
    for (int round = 0; round < 2; round++) {   /* the warm-up, then the measured one */
        pthread_barrier_wait(&p->run->go);
        for (uint64_t i = 0; i < p->n; i++)
            uv_xt_call_soon_threadsafe(p->run, uv_xt_call, p);
    }
    return NULL;
}

static void uv_xt_queue_init(uv_xt_queue_t *q, size_t cap)
{
    q->recs = bench_alloc_prefaulted(cap * sizeof *q->recs);
    q->n = 0;
    q->cap = cap;
}

static void uv_crossthread(const bench_config_t *cfg, unsigned producers, double *out)
{
    uv_xt_run_t *run = bench_alloc_prefaulted(sizeof *run);
    run->total = cfg->xthread_n / producers * producers;
    uv_xt_queue_init(&run->pending, run->total);
    uv_xt_queue_init(&run->spare, run->total);
    int err = pthread_mutex_init(&run->mu, NULL);
    if (err)
        bench_die("pthread_mutex_init: %s", strerror(err));
    err = pthread_barrier_init(&run->go, NULL, producers + 1);
    if (err)
        bench_die("pthread_barrier_init: %s", strerror(err));

    bench_uv_loop_setup(&run->loop);
    err = uv_async_init(&run->loop, &run->async, uv_xt_async_cb);
    if (err)
        bench_die("uv_async_init: %s", uv_strerror(err));
    run->async.data = run;

    for (unsigned i = 0; i < producers; i++) {
        run->prod[i] = (uv_xt_producer_t){ .run = run, .n = run->total / producers };
        run->prod[i].thread = bench_thread_start(uv_xt_producer_main, &run->prod[i]);
    }

    run->stop_at = run->total;   /* the warm-up round */
    pthread_barrier_wait(&run->go);
    uv_run(&run->loop, UV_RUN_DEFAULT);

    run->stop_at = 2 * run->total;   /* the measured round */
    pthread_barrier_wait(&run->go);
    uint64_t t0 = bench_now_ns();
    uv_run(&run->loop, UV_RUN_DEFAULT);   /* the last call stops it */

    for (unsigned i = 0; i < producers; i++)
        bench_thread_join(run->prod[i].thread);
    for (unsigned i = 0; i < producers; i++)
        if (run->prod[i].ran != 2 * run->prod[i].n)
            bench_die("libuv ran %llu of the %llu calls of producer %u",
                      (unsigned long long)run->prod[i].ran,
                      (unsigned long long)(2 * run->prod[i].n), i);
    out[0] = (double)(run->t1 - t0) / (double)run->total;

    bench_uv_loop_teardown(&run->loop);
    pthread_barrier_destroy(&run->go);
    pthread_mutex_destroy(&run->mu);
    free(run->pending.recs);
    free(run->spare.recs);
    free(run);
}

void bench_uv_crossthread_1p(const bench_config_t *cfg, double *out)
{
    uv_crossthread(cfg, 1, out);
}

void bench_uv_crossthread_2p(const bench_config_t *cfg, double *out)
{
    uv_crossthread(cfg, 2, out);
}
