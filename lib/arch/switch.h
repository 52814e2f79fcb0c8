/*
 * lib/arch/switch.h — the context switch under urio's tasks.
 *
 * A context is a suspended thread of execution: its callee-saved registers
 * (and the FP control state the ABI makes callee-saved) sit on its own
 * stack, and the context keeps only the stack pointer.  Switching saves the
 * running context into `from` and resumes `to`; nothing else is saved, since
 * the switch is an ordinary call to the compiler and every caller-saved
 * register is already dead across it.
 *
 *   x86-64 (System V)  rbx, rbp, r12-r15, MXCSR, x87 control word:
 *                      lib/arch/x86_64/switch.S
 *   AArch64 (AAPCS64)  x19-x29, x30, sp, d8-d15, FPCR:
 *                      lib/arch/aarch64/switch.S
 *   anything else      getcontext/makecontext/swapcontext:
 *                      lib/arch/ucontext.c (slower: a syscall per switch
 *                      for the signal mask)
 *
 * A context running on a stack must be suspended before anything frees that
 * stack.  The switch is not async-signal-safe and never crosses threads: a
 * context resumes on the thread that suspended it (the FP state and the
 * thread pointer would otherwise mix).
 */
#ifndef URIO_ARCH_SWITCH_H
#define URIO_ARCH_SWITCH_H

#include <stddef.h>
#include <stdint.h>

#if (defined(__x86_64__) && !defined(__ILP32__)) || defined(__aarch64__)
#define URIO__CTX_ASM 1
#else
#define URIO__CTX_ASM 0
#endif

#if URIO__CTX_ASM && !defined(URIO__CTX_FORCE_UCONTEXT)

/* A suspended context: its saved stack pointer.  Plain data: it may be
 * copied or moved while suspended.  A context that has never been saved
 * into or made needs no initialisation (it is only written to). */
typedef struct urio__ctx {
    void *sp;
} urio__ctx_t;

#else

#include <ucontext.h>

/* The fallback keeps the whole ucontext_t in place: on some ABIs (glibc on
 * x86-64) it points into itself, so a saved or made context must not be
 * copied or moved.  sp is the ucontext_t once the context holds one. */
typedef struct urio__ctx {
    void *sp;
    void (*fn)(void *);
    void *arg;
    ucontext_t uc;
} urio__ctx_t;

#endif

/*
 * Saves the callee-saved registers (and the FP control state the ABI
 * requires: x86-64 MXCSR and the x87 control word; AArch64 d8-d15 and FPCR)
 * on the current stack, stores the stack pointer in from->sp, switches to
 * to->sp, restores and returns there.  from and to may not be the same
 * context; to must have been saved by a switch or made by urio__ctx_make.
 */
void urio__ctx_switch(urio__ctx_t *from, urio__ctx_t *to);

/*
 * Prepares ctx so that the first switch to it calls fn(arg) on the stack
 * [base, base + size), 16-byte aligned as the ABI wants (the top is rounded
 * down; nothing above base + size is written).  The context starts with the
 * FP control state (rounding mode, exception masks) of the thread calling
 * urio__ctx_make.  fn must never return: it ends by switching away for
 * good.  If it returns anyway, the process aborts (abort(3)).
 */
void urio__ctx_make(urio__ctx_t *ctx, void *base, size_t size, void (*fn)(void *), void *arg);

/*
 * The registers a suspended context resumes with, for an unwinder that
 * walks its stack (the task dump): *pc, where the switch returns to, and
 * up to max callee-saved registers and the stack pointer by DWARF number,
 * read from the frame at ctx->sp whose layout the switch's .S file draws.
 * Returns: how many registers were filled; 0 where urio does not know the
 * frame (the ucontext fallback).
 */
static inline int urio__ctx_resume_regs(const urio__ctx_t *ctx, uintptr_t *pc, unsigned *regno,
                                        uint64_t *value, int max)
{
#if URIO__CTX_ASM && !defined(URIO__CTX_FORCE_UCONTEXT) && defined(__x86_64__)
    /* sp+8 r15, +16 r14, +24 r13, +32 r12, +40 rbx, +48 rbp, +56 return address. */
    static const unsigned dwarf[6] = { 15, 14, 13, 12, 3, 6 };
    const uint64_t *f = ctx->sp;
    if (max < 7)
        return 0;
    for (int i = 0; i < 6; i++) {
        regno[i] = dwarf[i];
        value[i] = f[1 + i];
    }
    regno[6] = 7;                                /* rsp once the switch has returned */
    value[6] = (uint64_t)(uintptr_t)(f + 8);
    *pc = (uintptr_t)f[7];
    return 7;
#elif URIO__CTX_ASM && !defined(URIO__CTX_FORCE_UCONTEXT) && defined(__aarch64__)
    /* sp+0 .. sp+88: x19-x30, in order; 176 bytes in all. */
    const uint64_t *f = ctx->sp;
    if (max < 12)
        return 0;
    for (int i = 0; i < 11; i++) {               /* x19-x29 */
        regno[i] = 19u + (unsigned)i;
        value[i] = f[i];
    }
    regno[11] = 31;                              /* sp once the switch has returned */
    value[11] = (uint64_t)(uintptr_t)ctx->sp + 176;
    *pc = (uintptr_t)f[11];                      /* x30 */
    return 12;
#else
    (void)ctx;
    (void)pc;
    (void)regno;
    (void)value;
    (void)max;
    return 0;
#endif
}

#endif
