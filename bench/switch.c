/*
 * switch.c — urio's side of the switch benchmark: the cost of one context
 * switch (lib/arch/switch.h), as a ping-pong between the main context and
 * one coroutine, and in the same run the floor: the same ping-pong through
 * a minimal hand-written switch that saves only the callee-saved general
 * registers (switch_floor.S).  The peer, glibc's swapcontext, is in
 * peers/ucontext_switch.c.
 */
#include "bench.h"

#include <math.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "arch/switch.h"

/* switch_floor.S */
void bench_floor_switch(void **from_sp, void **to_sp);
void *bench_floor_make(void *top, void (*fn)(void *), void *arg);

#if defined(__x86_64__) || defined(__aarch64__)
#define HAVE_FLOOR 1
#else
#define HAVE_FLOOR 0
#endif

enum { STACK_SIZE = 64 * 1024 };

void *bench_switch_stack_new(void)
{
    void *p = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED)
        bench_die("mmap of a %d-byte stack failed", STACK_SIZE);
    return p;
}

void bench_switch_stack_free(void *stack)
{
    munmap(stack, STACK_SIZE);
}

size_t bench_switch_stack_size(void)
{
    return STACK_SIZE;
}

/* ------------------------------------------------------------------ */
/* The ping-pongs                                                        */

/* The two sides alternate in CHUNKS slices of the run, and each reports
 * its median slice: a switch costs a few ns, so a preemption or a
 * neighbour's burst inside one slice would otherwise move the whole
 * number, and alternating gives urio and the floor the same moments of
 * the machine. */
enum { CHUNKS = 21 };

typedef struct ctx_pp {
    urio__ctx_t main_ctx, co;
} ctx_pp_t;

static void ctx_co(void *arg)
{
    ctx_pp_t *pp = arg;
    for (;;)
        urio__ctx_switch(&pp->co, &pp->main_ctx);
}

/* ns per switch over `trips` round trips (two switches each). */
static double ctx_slice(ctx_pp_t *pp, uint64_t trips)
{
    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < trips; i++)
        urio__ctx_switch(&pp->main_ctx, &pp->co);
    uint64_t t1 = bench_now_ns();
    return (double)(t1 - t0) / (double)(trips * 2);
}

#if HAVE_FLOOR
typedef struct floor_pp {
    void *main_sp, *co_sp;
} floor_pp_t;

static void floor_co(void *arg)
{
    floor_pp_t *pp = arg;
    for (;;)
        bench_floor_switch(&pp->co_sp, &pp->main_sp);
}

static double floor_slice(floor_pp_t *pp, uint64_t trips)
{
    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < trips; i++)
        bench_floor_switch(&pp->main_sp, &pp->co_sp);
    uint64_t t1 = bench_now_ns();
    return (double)(t1 - t0) / (double)(trips * 2);
}
#endif

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof v[0], cmp_double);
    return v[n / 2];
}

void bench_urio_switch(const bench_config_t *cfg, double *out)
{
    uint64_t trips = cfg->switch_n / 2 / CHUNKS;
    if (trips == 0)
        trips = 1;
    double ctx_ns[CHUNKS], floor_ns[CHUNKS];

    ctx_pp_t cpp;
    void *ctx_stack = bench_switch_stack_new();
    urio__ctx_make(&cpp.co, ctx_stack, STACK_SIZE, ctx_co, &cpp);
    urio__ctx_switch(&cpp.main_ctx, &cpp.co);   /* first entry, off the clock */
#if HAVE_FLOOR
    floor_pp_t fpp;
    void *floor_stack = bench_switch_stack_new();
    fpp.co_sp = bench_floor_make((char *)floor_stack + STACK_SIZE, floor_co, &fpp);
    bench_floor_switch(&fpp.main_sp, &fpp.co_sp);
#endif

    for (size_t i = 0; i < CHUNKS; i++) {
        ctx_ns[i] = ctx_slice(&cpp, trips);
#if HAVE_FLOOR
        floor_ns[i] = floor_slice(&fpp, trips);
#else
        floor_ns[i] = NAN;
#endif
    }
    out[BENCH_SWITCH_CTX] = median(ctx_ns, CHUNKS);
    out[BENCH_SWITCH_FLOOR] = HAVE_FLOOR ? median(floor_ns, CHUNKS) : NAN;

    bench_switch_stack_free(ctx_stack);
#if HAVE_FLOOR
    bench_switch_stack_free(floor_stack);
#endif
}
