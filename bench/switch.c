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
/* urio__ctx_switch                                                      */

typedef struct ctx_pp {
    urio__ctx_t main_ctx, co;
} ctx_pp_t;

static void ctx_co(void *arg)
{
    ctx_pp_t *pp = arg;
    for (;;)
        urio__ctx_switch(&pp->co, &pp->main_ctx);
}

static double measure_ctx(uint64_t n)
{
    ctx_pp_t pp;
    void *stack = bench_switch_stack_new();
    urio__ctx_make(&pp.co, stack, STACK_SIZE, ctx_co, &pp);
    urio__ctx_switch(&pp.main_ctx, &pp.co);   /* first entry, outside the clock */

    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < n / 2; i++)
        urio__ctx_switch(&pp.main_ctx, &pp.co);
    uint64_t t1 = bench_now_ns();

    bench_switch_stack_free(stack);
    return (double)(t1 - t0) / (double)(n / 2 * 2);
}

/* ------------------------------------------------------------------ */
/* The floor                                                             */

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

static double measure_floor(uint64_t n)
{
    floor_pp_t pp;
    void *stack = bench_switch_stack_new();
    pp.co_sp = bench_floor_make((char *)stack + STACK_SIZE, floor_co, &pp);
    bench_floor_switch(&pp.main_sp, &pp.co_sp);

    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < n / 2; i++)
        bench_floor_switch(&pp.main_sp, &pp.co_sp);
    uint64_t t1 = bench_now_ns();

    bench_switch_stack_free(stack);
    return (double)(t1 - t0) / (double)(n / 2 * 2);
}
#endif

void bench_urio_switch(const bench_config_t *cfg, double *out)
{
    out[BENCH_SWITCH_CTX] = measure_ctx(cfg->switch_n);
#if HAVE_FLOOR
    out[BENCH_SWITCH_FLOOR] = measure_floor(cfg->switch_n);
#else
    out[BENCH_SWITCH_FLOOR] = NAN;
#endif
}
