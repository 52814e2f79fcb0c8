/*
 * lib/arch/ucontext.c — the context switch on architectures without an
 * assembly one: getcontext/makecontext/swapcontext behind the interface of
 * lib/arch/switch.h.  Slower (swapcontext saves and restores the signal
 * mask: a syscall per switch) but needs nothing per architecture.
 *
 * Built instead of lib/arch/<cpu>/switch.S by lib/meson.build, and for the
 * switch tests on every architecture with -DURIO__CTX_FORCE_UCONTEXT.
 */
#include "switch.h"

#include <stdint.h>
#include <stdlib.h>

/*
 * makecontext passes only int arguments portably: the context's address
 * goes through as two 32-bit halves, and fn and arg are read back from it.
 */
static void entry(unsigned hi, unsigned lo)
{
    urio__ctx_t *ctx = (urio__ctx_t *)(uintptr_t)(((uint64_t)hi << 32) | lo);
    ctx->fn(ctx->arg);
    /* fn must not return (uc_link is NULL, which would end the thread). */
    abort();
}

void urio__ctx_make(urio__ctx_t *ctx, void *base, size_t size, void (*fn)(void *), void *arg)
{
    /* getcontext fails only where the C library does not implement it at all
     * (it returns ENOSYS); nothing can run then. */
    if (getcontext(&ctx->uc) != 0)
        abort();
    uintptr_t lo = ((uintptr_t)base + 15) & ~(uintptr_t)15;
    uintptr_t hi = ((uintptr_t)base + size) & ~(uintptr_t)15;
    ctx->uc.uc_stack.ss_sp = (void *)lo;
    ctx->uc.uc_stack.ss_size = hi - lo;
    ctx->uc.uc_link = NULL;
    ctx->fn = fn;
    ctx->arg = arg;
    ctx->sp = &ctx->uc;
    uint64_t self = (uint64_t)(uintptr_t)ctx;
    makecontext(&ctx->uc, (void (*)(void))entry, 2, (unsigned)(self >> 32),
                (unsigned)(self & 0xffffffffu));
}

void urio__ctx_switch(urio__ctx_t *from, urio__ctx_t *to)
{
    from->sp = &from->uc;
    if (swapcontext(&from->uc, &to->uc) != 0)
        abort();
}
