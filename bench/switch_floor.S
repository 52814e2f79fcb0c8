/*
 * switch_floor.S — the floor of the switch benchmark: the least a context
 * switch can do, saving and restoring only the callee-saved general
 * registers (no FP state, no CFI, no checks).  Not usable as a real switch:
 * code that keeps values in d8-d15 across it (AArch64) or changes the
 * rounding mode breaks.  See bench/switch.c.
 *
 * void bench_floor_switch(void **from_sp, void **to_sp)
 * void *bench_floor_make(void *top, void (*fn)(void *), void *arg)
 *   top 16-byte aligned; returns the sp to switch to.  fn must not return.
 */

#if defined(__x86_64__)

    .text
    .globl  bench_floor_switch
    .type   bench_floor_switch, @function
    .p2align 6
bench_floor_switch:
    pushq   %rbp
    pushq   %rbx
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    movq    %rsp, (%rdi)
    movq    (%rsi), %rsp
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbx
    popq    %rbp
    ret
    .size   bench_floor_switch, .-bench_floor_switch

    .type   floor_trampoline, @function
    .p2align 4
floor_trampoline:
    movq    %r13, %rdi
    callq   *%r12
    ud2
    .size   floor_trampoline, .-floor_trampoline

    .globl  bench_floor_make
    .type   bench_floor_make, @function
    .p2align 4
bench_floor_make:
    leaq    -72(%rdi), %rax             /* 6 registers + return address, rsp aligned after ret */
    movq    $0, 0(%rax)                 /* r15 */
    movq    $0, 8(%rax)                 /* r14 */
    movq    %rdx, 16(%rax)              /* r13: arg */
    movq    %rsi, 24(%rax)              /* r12: fn */
    movq    $0, 32(%rax)                /* rbx */
    movq    $0, 40(%rax)                /* rbp */
    leaq    floor_trampoline(%rip), %rcx
    movq    %rcx, 48(%rax)
    ret
    .size   bench_floor_make, .-bench_floor_make

#elif defined(__aarch64__)

    .text
    .globl  bench_floor_switch
    .type   bench_floor_switch, %function
    .p2align 6
bench_floor_switch:
    hint    #34
    sub     sp, sp, #96
    stp     x19, x20, [sp, #0]
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    mov     x9, sp
    str     x9, [x0]
    ldr     x9, [x1]
    mov     sp, x9
    ldp     x19, x20, [sp, #0]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    add     sp, sp, #96
    ret
    .size   bench_floor_switch, .-bench_floor_switch

    .type   floor_trampoline, %function
    .p2align 4
floor_trampoline:
    mov     x0, x20
    blr     x19
    brk     #0x1
    .size   floor_trampoline, .-floor_trampoline

    .globl  bench_floor_make
    .type   bench_floor_make, %function
    .p2align 4
bench_floor_make:
    hint    #34
    sub     x9, x0, #96
    stp     x1, x2, [x9, #0]            /* x19: fn, x20: arg */
    stp     xzr, xzr, [x9, #16]
    stp     xzr, xzr, [x9, #32]
    stp     xzr, xzr, [x9, #48]
    stp     xzr, xzr, [x9, #64]
    adr     x10, floor_trampoline
    stp     xzr, x10, [x9, #80]
    mov     x0, x9
    ret
    .size   bench_floor_make, .-bench_floor_make

#endif

    .section .note.GNU-stack, "", %progbits
