/*
 * tests/arch/switch_cases.h — the cases of the context-switch tests, shared
 * by tests/test_switch.c (cmocka, native) and tests/arch/switch_selftest.c
 * (a plain program, also cross-built for AArch64 and run under qemu).
 *
 * The includer defines sw_assert_true(cond) and sw_assert_eq(a, b) (integers),
 * each failing the test when false.  Checks run on the main stack only:
 * contexts record what they saw and the main context judges it, so a
 * failure never unwinds (or longjmps) out of a coroutine stack.
 *
 * Every context here is left suspended at the end of its case, its stack
 * then unmapped: nothing ever resumes it again, which is the contract of a
 * context whose fn "switches away for good".
 */
#ifndef URIO_TEST_SWITCH_CASES_H
#define URIO_TEST_SWITCH_CASES_H

#include "switch.h"

#include <fenv.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <unwind.h>

/* tests/arch/switch_regs.S */
uint64_t sw_switch_keep(urio__ctx_t *from, urio__ctx_t *to, uint64_t seed);
void sw_entry_probe(void *arg);
void sw_probe_body(void *arg);

/* ------------------------------------------------------------------ */
/* Stacks: mmap'd, with a PROT_NONE guard page below, as tasks get them. */

typedef struct sw_stack {
    void *map;
    size_t map_len;
    void *base;          /* the usable stack: [base, base + size) */
    size_t size;
} sw_stack_t;

static inline sw_stack_t sw_stack_new(size_t size)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size = (size + page - 1) / page * page;
    sw_stack_t s = { .map_len = size + page, .size = size };
    s.map = mmap(NULL, s.map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s.map == MAP_FAILED || mprotect(s.map, page, PROT_NONE) != 0) {
        perror("sw_stack_new");
        abort();
    }
    s.base = (char *)s.map + page;
    return s;
}

static inline void sw_stack_free(sw_stack_t *s)
{
    munmap(s->map, s->map_len);
}

/* ------------------------------------------------------------------ */
/* Ping-pong: contexts take turns with main, and pass the baton among
 * themselves without main, each keeping its locals on its own stack.    */

enum { SW_PING_N = 4, SW_PING_ROUNDS = 100 };

typedef struct sw_ping {
    urio__ctx_t main_ctx;
    urio__ctx_t ctx[SW_PING_N];
    int trace[SW_PING_N * SW_PING_ROUNDS * 2];
    int n;
    int bad_arg;
} sw_ping_t;

typedef struct sw_ping_arg {
    sw_ping_t *p;
    int id;
} sw_ping_arg_t;

static void sw_ping_fn(void *arg)
{
    sw_ping_arg_t *a = arg;
    sw_ping_t *p = a->p;
    int id = a->id;
    if (id < 0 || id >= SW_PING_N)
        p->bad_arg++;
    /* Phase 1: back to main after each step.  A local volatile counter
     * must survive every suspension. */
    for (volatile int step = 0; step < SW_PING_ROUNDS; step++) {
        p->trace[p->n++] = id * 1000 + step;
        urio__ctx_switch(&p->ctx[id], &p->main_ctx);
    }
    /* Phase 2: each context hands over to the next; the last to main. */
    for (int step = 0;; step++) {
        p->trace[p->n++] = id * 1000 + step;
        urio__ctx_switch(&p->ctx[id], id + 1 < SW_PING_N ? &p->ctx[id + 1] : &p->main_ctx);
    }
}

static inline void sw_case_ping_pong(void)
{
    sw_ping_t *p = calloc(1, sizeof *p);
    sw_ping_arg_t args[SW_PING_N];
    sw_stack_t stacks[SW_PING_N];
    sw_assert_true(p != NULL);
    for (int i = 0; i < SW_PING_N; i++) {
        stacks[i] = sw_stack_new(64 * 1024);
        args[i] = (sw_ping_arg_t){ p, i };
        urio__ctx_make(&p->ctx[i], stacks[i].base, stacks[i].size, sw_ping_fn, &args[i]);
    }
    for (int step = 0; step < SW_PING_ROUNDS; step++) {
        for (int i = 0; i < SW_PING_N; i++) {
            urio__ctx_switch(&p->main_ctx, &p->ctx[i]);
            sw_assert_eq(p->n, step * SW_PING_N + i + 1);
            sw_assert_eq(p->trace[p->n - 1], i * 1000 + step);
        }
    }
    p->n = 0;
    for (int step = 0; step < SW_PING_ROUNDS / SW_PING_N; step++) {
        urio__ctx_switch(&p->main_ctx, &p->ctx[0]);
        sw_assert_eq(p->n, (step + 1) * SW_PING_N);
        for (int i = 0; i < SW_PING_N; i++)
            sw_assert_eq(p->trace[step * SW_PING_N + i], i * 1000 + step);
    }
    sw_assert_eq(p->bad_arg, 0);
    for (int i = 0; i < SW_PING_N; i++)
        sw_stack_free(&stacks[i]);
    free(p);
}

/* ------------------------------------------------------------------ */
/* Callee-saved registers: both sides pin distinct values in every one of
 * them (sw_switch_keep), so a register the switch forgot comes back
 * holding the other side's value.                                        */

#define SW_SEED_MAIN 0x5a5a5a5a00000000ull
#define SW_SEED_CTX  0xc3c3c3c300000000ull

typedef struct sw_keep {
    urio__ctx_t main_ctx, ctx;
    uint64_t ctx_mask;
    int ctx_done;
} sw_keep_t;

static void sw_keep_fn(void *arg)
{
    sw_keep_t *k = arg;
    k->ctx_mask = sw_switch_keep(&k->ctx, &k->main_ctx, SW_SEED_CTX);
    k->ctx_done = 1;
    urio__ctx_switch(&k->ctx, &k->main_ctx);
}

static inline void sw_case_callee_saved(void)
{
    sw_keep_t k = { .ctx_mask = ~0ull };
    sw_stack_t st = sw_stack_new(64 * 1024);
    urio__ctx_make(&k.ctx, st.base, st.size, sw_keep_fn, &k);
    /* main -> ctx (which pins its values and switches back) -> main. */
    uint64_t main_mask = sw_switch_keep(&k.main_ctx, &k.ctx, SW_SEED_MAIN);
    sw_assert_eq(main_mask, 0);
    sw_assert_eq(k.ctx_done, 0);
    /* main -> ctx, whose sw_switch_keep now returns its own verdict. */
    urio__ctx_switch(&k.main_ctx, &k.ctx);
    sw_assert_eq(k.ctx_done, 1);
    sw_assert_eq(k.ctx_mask, 0);
    sw_stack_free(&st);
}

/* ------------------------------------------------------------------ */
/* FP control state: a context starts with its creator's; afterwards each
 * context keeps its own rounding mode (x86-64: MXCSR and the x87 control
 * word; AArch64: FPCR), observed both through fenv and in arithmetic.    */

#if defined(__x86_64__)
static inline unsigned sw_mxcsr(void)
{
    unsigned v;
    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v;
}
static inline unsigned sw_x87cw(void)
{
    unsigned short v;
    __asm__ volatile("fnstcw %0" : "=m"(v));
    return v;
}
static inline void sw_set_x87cw(unsigned cw)
{
    unsigned short v = (unsigned short)cw;
    __asm__ volatile("fldcw %0" : : "m"(v));
}
#endif

typedef struct sw_fp_seen {
    int round;                /* fegetround() */
    double third;             /* 1.0 / 3.0 */
    unsigned mxcsr, x87cw;    /* x86-64 only */
} sw_fp_seen_t;

typedef struct sw_fp {
    urio__ctx_t main_ctx, ctx;
    sw_fp_seen_t at_start, after;
} sw_fp_t;

static volatile double sw_one = 1.0, sw_three = 3.0;

/* Out of line, reading volatiles: without FENV_ACCESS (which GCC ignores)
 * a compiler may otherwise move the division across fesetround(). */
__attribute__((noinline)) static double sw_third(void)
{
    return sw_one / sw_three;
}

static inline void sw_fp_look(sw_fp_seen_t *s)
{
    s->round = fegetround();
    s->third = sw_third();
#if defined(__x86_64__)
    s->mxcsr = sw_mxcsr();
    s->x87cw = sw_x87cw();
#endif
}

static void sw_fp_fn(void *arg)
{
    sw_fp_t *f = arg;
    sw_fp_look(&f->at_start);
    fesetround(FE_DOWNWARD);
#if defined(__x86_64__)
    sw_set_x87cw((sw_x87cw() & ~0x300u) | 0x200u);   /* precision: 53 bits */
#endif
    urio__ctx_switch(&f->ctx, &f->main_ctx);
    sw_fp_look(&f->after);
    urio__ctx_switch(&f->ctx, &f->main_ctx);
}

static inline void sw_case_fp_control(void)
{
    sw_fp_t f;
    memset(&f, 0, sizeof f);
    sw_stack_t st = sw_stack_new(64 * 1024);
    int saved = fegetround();
    sw_fp_seen_t nearest, up;

    fesetround(FE_TONEAREST);
    sw_fp_look(&nearest);
    fesetround(FE_UPWARD);
    sw_fp_look(&up);
    sw_assert_true(up.third > nearest.third);       /* the mode really changes results */
    urio__ctx_make(&f.ctx, st.base, st.size, sw_fp_fn, &f);
    fesetround(FE_TONEAREST);

    /* The context starts with its creator's state at make time: upward. */
    urio__ctx_switch(&f.main_ctx, &f.ctx);
    sw_assert_eq(f.at_start.round, FE_UPWARD);
    sw_assert_true(f.at_start.third == up.third);
#if defined(__x86_64__)
    sw_assert_eq(f.at_start.mxcsr, up.mxcsr);
    sw_assert_eq(f.at_start.x87cw, up.x87cw);
#endif

    /* It set downward (and the x87 precision); main is still nearest. */
    sw_fp_seen_t back;
    sw_fp_look(&back);
    sw_assert_eq(back.round, FE_TONEAREST);
    sw_assert_true(back.third == nearest.third);
#if defined(__x86_64__)
    sw_assert_eq(back.mxcsr, nearest.mxcsr);
    sw_assert_eq(back.x87cw, nearest.x87cw);
#endif

    /* And the context still has its own when resumed. */
    urio__ctx_switch(&f.main_ctx, &f.ctx);
    sw_assert_eq(f.after.round, FE_DOWNWARD);
    sw_assert_true(f.after.third < up.third);
#if defined(__x86_64__)
    sw_assert_eq(f.after.mxcsr & 0x6000u, 0x2000u);   /* RC = round down */
    sw_assert_eq(f.after.x87cw & 0xf00u, 0x600u);     /* RC down, PC 53 bits */
#endif
    sw_fp_look(&back);
    sw_assert_eq(back.round, FE_TONEAREST);

    fesetround(saved);
    sw_stack_free(&st);
}

/* ------------------------------------------------------------------ */
/* Entry: fn gets arg, with the stack aligned as after a call, inside
 * [base, base + size) even when neither end is aligned, and nothing above
 * the top is written.  The body formats a double (SSE/NEON code that
 * faults on a misaligned stack) and walks its own stack with the
 * unwinder, which must stop cleanly at the trampoline.                   */

typedef struct sw_probe {
    uintptr_t entry_sp;       /* first: written by sw_entry_probe */
    urio__ctx_t main_ctx, ctx;
    char text[64];
    int frames;
    int unwind_end;           /* _URC_END_OF_STACK */
} sw_probe_t;

static _Unwind_Reason_Code sw_count_frame(struct _Unwind_Context *uc, void *arg)
{
    (void)uc;
    int *frames = arg;
    return ++*frames > 64 ? _URC_NORMAL_STOP : _URC_NO_REASON;
}

void sw_probe_body(void *arg)
{
    sw_probe_t *p = arg;
    volatile double x = 2.5;
    snprintf(p->text, sizeof p->text, "%.3f|%s", x * 2.0, "ok");
    p->unwind_end = _Unwind_Backtrace(sw_count_frame, &p->frames) == _URC_END_OF_STACK;
    urio__ctx_switch(&p->ctx, &p->main_ctx);
}

static inline void sw_case_entry_alignment(void)
{
    for (size_t skew = 0; skew < 16; skew += 3) {
        sw_probe_t p;
        memset(&p, 0, sizeof p);
        sw_stack_t st = sw_stack_new(64 * 1024);
        /* A stack misaligned at both ends, with a canary above its top. */
        char *base = (char *)st.base + skew;
        size_t size = st.size - 256 - skew * 2;
        memset(base + size, 0xa5, 256);

        urio__ctx_make(&p.ctx, base, size, sw_entry_probe, &p);
        urio__ctx_switch(&p.main_ctx, &p.ctx);

#if defined(__x86_64__)
        sw_assert_eq(p.entry_sp % 16, 8);       /* as after a call */
#else
        sw_assert_eq(p.entry_sp % 16, 0);
#endif
        sw_assert_true(p.entry_sp > (uintptr_t)base);
        sw_assert_true(p.entry_sp <= (uintptr_t)(base + size));
        sw_assert_true(strcmp(p.text, "5.000|ok") == 0);
        sw_assert_true(p.unwind_end);
        sw_assert_true(p.frames >= 2 && p.frames <= 8);
        for (size_t i = 0; i < 256; i++)
            sw_assert_eq((unsigned char)base[size + i], 0xa5);
        sw_stack_free(&st);
    }
}

/* ------------------------------------------------------------------ */
/* Many: 1,000 contexts resumed round-robin 1,000 times.                 */

enum { SW_MANY_N = 1000, SW_MANY_ROUNDS = 1000 };

typedef struct sw_many {
    urio__ctx_t main_ctx;
    urio__ctx_t *ctx;         /* SW_MANY_N */
    uint64_t *seen;           /* SW_MANY_N: what each context last wrote */
} sw_many_t;

typedef struct sw_many_arg {
    sw_many_t *m;
    unsigned id;
} sw_many_arg_t;

static void sw_many_fn(void *arg)
{
    sw_many_arg_t *a = arg;
    sw_many_t *m = a->m;
    unsigned id = a->id;
    /* A value that depends on the whole history of this stack. */
    uint64_t acc = id;
    for (uint64_t round = 0;; round++) {
        acc = acc * 6364136223846793005ull + 1442695040888963407ull;
        m->seen[id] = acc ^ round;
        urio__ctx_switch(&m->ctx[id], &m->main_ctx);
    }
}

static inline void sw_case_many(void)
{
    sw_many_t m;
    m.ctx = calloc(SW_MANY_N, sizeof *m.ctx);
    m.seen = calloc(SW_MANY_N, sizeof *m.seen);
    sw_many_arg_t *args = calloc(SW_MANY_N, sizeof *args);
    uint64_t *expect = calloc(SW_MANY_N, sizeof *expect);
    sw_stack_t *stacks = calloc(SW_MANY_N, sizeof *stacks);
    sw_assert_true(m.ctx && m.seen && args && expect && stacks);
    for (unsigned i = 0; i < SW_MANY_N; i++) {
        stacks[i] = sw_stack_new(16 * 1024);
        args[i] = (sw_many_arg_t){ &m, i };
        expect[i] = i;
        urio__ctx_make(&m.ctx[i], stacks[i].base, stacks[i].size, sw_many_fn, &args[i]);
    }
    unsigned wrong = 0;
    for (uint64_t round = 0; round < SW_MANY_ROUNDS; round++) {
        for (unsigned i = 0; i < SW_MANY_N; i++) {
            urio__ctx_switch(&m.main_ctx, &m.ctx[i]);
            expect[i] = expect[i] * 6364136223846793005ull + 1442695040888963407ull;
            wrong += m.seen[i] != (expect[i] ^ round);
        }
    }
    sw_assert_eq(wrong, 0);
    for (unsigned i = 0; i < SW_MANY_N; i++)
        sw_stack_free(&stacks[i]);
    free(stacks);
    free(expect);
    free(args);
    free(m.seen);
    free(m.ctx);
}

/* ------------------------------------------------------------------ */
/* A fn that returns aborts the process (in a child: SIGABRT).           */

typedef struct sw_ret {
    urio__ctx_t main_ctx, ctx;
} sw_ret_t;

static void sw_returning_fn(void *arg)
{
    (void)arg;
}

static inline void sw_case_return_aborts(void)
{
    fflush(NULL);
    pid_t pid = fork();
    sw_assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit no_core = { 0, 0 };
        setrlimit(RLIMIT_CORE, &no_core);
        sw_ret_t r;
        sw_stack_t st = sw_stack_new(64 * 1024);
        urio__ctx_make(&r.ctx, st.base, st.size, sw_returning_fn, NULL);
        urio__ctx_switch(&r.main_ctx, &r.ctx);
        _exit(0);                       /* unreachable: came back by magic */
    }
    int status = 0;
    sw_assert_eq(waitpid(pid, &status, 0), pid);
    sw_assert_true(WIFSIGNALED(status));
    sw_assert_eq(WTERMSIG(status), SIGABRT);
}

#endif
