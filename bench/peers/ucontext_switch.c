/*
 * ucontext_switch.c — the peer of the switch benchmark: the same ping-pong
 * as bench/switch.c through glibc's swapcontext, what a C program without
 * its own switch would use.  It also saves the signal mask (a syscall per
 * switch) and the whole FP environment.
 */
#include "../bench.h"

#include <math.h>
#include <ucontext.h>

typedef struct uc_pp {
    ucontext_t main_uc, co_uc;
} uc_pp_t;

/* makecontext passes ints: the pointer goes through as two halves. */
static void uc_co(unsigned hi, unsigned lo)
{
    uc_pp_t *pp = (uc_pp_t *)(uintptr_t)(((uint64_t)hi << 32) | lo);
    for (;;)
        if (swapcontext(&pp->co_uc, &pp->main_uc) != 0)
            bench_die("swapcontext failed");
}

void bench_ucontext_switch(const bench_config_t *cfg, double *out)
{
    uint64_t n = cfg->switch_n;
    uc_pp_t pp;
    void *stack = bench_switch_stack_new();
    if (getcontext(&pp.co_uc) != 0)
        bench_die("getcontext failed");
    pp.co_uc.uc_stack.ss_sp = stack;
    pp.co_uc.uc_stack.ss_size = bench_switch_stack_size();
    pp.co_uc.uc_link = NULL;
    uint64_t self = (uint64_t)(uintptr_t)&pp;
    makecontext(&pp.co_uc, (void (*)(void))uc_co, 2, (unsigned)(self >> 32),
                (unsigned)(self & 0xffffffffu));
    if (swapcontext(&pp.main_uc, &pp.co_uc) != 0)
        bench_die("swapcontext failed");

    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < n / 2; i++)
        swapcontext(&pp.main_uc, &pp.co_uc);
    uint64_t t1 = bench_now_ns();

    bench_switch_stack_free(stack);
    out[BENCH_SWITCH_CTX] = (double)(t1 - t0) / (double)(n / 2 * 2);
    out[BENCH_SWITCH_FLOOR] = NAN;
}
