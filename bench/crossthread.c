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
 *
 * The floor, measured by urio's side in the same run: the same producers,
 * rounds and callback over a bare Vyukov MPSC queue (lib/mpsc.h) drained
 * by a thread that spins instead of sleeping.  Each producer cycles through
 * a ring of 256 preallocated nodes (6 KiB, so they stay in cache, as a
 * pool's recycled nodes do); the consumer counts the nodes it has run per
 * producer, and a producer reuses a node only once that count says it ran
 * (reading the count only when its last reading says the ring is full).
 * No node pool, no close protocol, no wake-up, no ready queue: what a
 * queue of calls between threads costs at least here.
 */
#include "bench.h"
#include "loop_util.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include <urio.h>

#include "mpsc.h"

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
    out[BENCH_XT_CALLS] = (double)(run.t1 - t0) / (double)run.total;

    pthread_barrier_destroy(&run.go);
    bench_urio_loop_close(run.loop);
}

/* ------------------------------------------------------------------ */
/* The floor: a bare MPSC queue, a spinning consumer                     */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/*
 * A side with nothing to do spins a little, then yields: on a machine with
 * fewer free CPUs than threads, the side that would make progress may need
 * this one's CPU (urio's loop sleeps then; a floor that only spun would
 * measure the scheduler, not the queue).
 */
static inline void floor_wait(uint32_t spins)
{
    if (spins < 256)
        cpu_relax();
    else
        sched_yield();
}

typedef struct floor_node {
    urio__mpsc_node_t link;    /* first */
    void (*fn)(void *arg);
    void *arg;
} floor_node_t;

typedef struct floor_run floor_run_t;

enum { FLOOR_RING = 256 };

typedef struct floor_producer {
    floor_run_t *run;
    floor_node_t *nodes;       /* FLOOR_RING of them, reused in turn */
    uint64_t n;
    _Alignas(64) _Atomic uint64_t ran;   /* written by the consumer only: nodes run */
    pthread_t thread;
} floor_producer_t;

struct floor_run {
    urio__mpsc_t q;
    uint64_t total, ran, stop_at, t1;
    bool stop;                 /* consumer only */
    pthread_barrier_t go;
    floor_producer_t prod[XT_MAX_PRODUCERS];
};

/* The callback, as xt_call: count, and the last call of the round stops. */
static void floor_call(void *arg)
{
    floor_producer_t *p = arg;
    floor_run_t *run = p->run;
    atomic_store_explicit(&p->ran, atomic_load_explicit(&p->ran, memory_order_relaxed) + 1,
                          memory_order_release);
    if (++run->ran == run->stop_at) {
        run->t1 = bench_now_ns();
        run->stop = true;
    }
}

static void *floor_producer_main(void *arg)
{
    floor_producer_t *p = arg;
    uint64_t sent = 0, ran = 0;     /* ran: the consumer's count, as last read */
    for (int round = 0; round < 2; round++) {
        pthread_barrier_wait(&p->run->go);
        for (uint64_t i = 0; i < p->n; i++, sent++) {
            for (uint32_t spins = 0; sent - ran >= FLOOR_RING; spins++) {
                ran = atomic_load_explicit(&p->ran, memory_order_acquire);
                if (sent - ran >= FLOOR_RING)
                    floor_wait(spins);
            }
            floor_node_t *n = &p->nodes[sent % FLOOR_RING];
            n->fn = floor_call;
            n->arg = p;
            urio__mpsc_push(&p->run->q, &n->link);
        }
    }
    return NULL;
}

static void floor_consume(floor_run_t *run)
{
    run->stop = false;
    uint32_t spins = 0;
    while (!run->stop) {
        bool busy;
        urio__mpsc_node_t *link = urio__mpsc_pop(&run->q, &busy);
        if (link == NULL) {
            floor_wait(spins++);
            continue;
        }
        spins = 0;
        floor_node_t *n = (floor_node_t *)(void *)link;
        n->fn(n->arg);
    }
}

static double floor_crossthread(uint64_t total, unsigned producers)
{
    /* Aligned: the producers' counts sit on lines of their own. */
    size_t size = (sizeof(floor_run_t) + 63) / 64 * 64;
    floor_run_t *run = aligned_alloc(64, size);
    if (run == NULL)
        bench_die("out of memory");
    memset(run, 0, size);
    run->total = total;
    urio__mpsc_init(&run->q);
    int err = pthread_barrier_init(&run->go, NULL, producers + 1);
    if (err)
        bench_die("pthread_barrier_init: %s", strerror(err));
    for (unsigned i = 0; i < producers; i++) {
        floor_producer_t *p = &run->prod[i];
        p->run = run;
        p->n = total / producers;
        p->nodes = bench_alloc_prefaulted(FLOOR_RING * sizeof *p->nodes);
        p->thread = bench_thread_start(floor_producer_main, p);
    }
    run->stop_at = total;              /* the warm-up round */
    pthread_barrier_wait(&run->go);
    floor_consume(run);
    run->stop_at = 2 * total;          /* the measured one */
    pthread_barrier_wait(&run->go);
    uint64_t t0 = bench_now_ns();
    floor_consume(run);
    for (unsigned i = 0; i < producers; i++) {
        bench_thread_join(run->prod[i].thread);
        if (atomic_load(&run->prod[i].ran) != 2 * run->prod[i].n)
            bench_die("the floor ran %llu of the %llu calls of producer %u",
                      (unsigned long long)atomic_load(&run->prod[i].ran),
                      (unsigned long long)(2 * run->prod[i].n), i);
        free(run->prod[i].nodes);
    }
    double ns = (double)(run->t1 - t0) / (double)total;
    pthread_barrier_destroy(&run->go);
    free(run);
    return ns;
}

void bench_urio_crossthread_1p(const bench_config_t *cfg, double *out)
{
    urio_crossthread(cfg, 1, out);
    out[BENCH_XT_FLOOR] = floor_crossthread(cfg->xthread_n, 1);
}

void bench_urio_crossthread_2p(const bench_config_t *cfg, double *out)
{
    urio_crossthread(cfg, 2, out);
    out[BENCH_XT_FLOOR] = floor_crossthread(cfg->xthread_n / 2 * 2, 2);
}
