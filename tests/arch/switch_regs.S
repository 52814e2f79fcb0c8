/*
 * tests/arch/switch_regs.S — assembly probes for the context-switch tests
 * (tests/arch/switch_cases.h).  C cannot pin values in callee-saved
 * registers across a call, so these do it by hand.
 *
 * uint64_t sw_switch_keep(urio__ctx_t *from, urio__ctx_t *to, uint64_t seed)
 *   Loads seed + k into every callee-saved register k (x86-64: rbx, rbp,
 *   r12-r15 as k = 1..6; AArch64: x19-x29 as k = 1..11 and d8-d15 as
 *   k = 12..19), calls urio__ctx_switch(from, to), and once resumed returns
 *   the mask of registers that lost their value: bit k-1 for register k.
 *
 * void sw_entry_probe(void *arg)
 *   A context's fn: stores its own entry stack pointer at *(uintptr_t *)arg,
 *   then tail-calls sw_probe_body(arg) with the stack as it found it.
 */

#if defined(__x86_64__)

    .text
    .globl  sw_switch_keep
    .type   sw_switch_keep, @function
    .p2align 4
sw_switch_keep:
    .cfi_startproc
    pushq   %rbp
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset rbp, 0
    pushq   %rbx
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset rbx, 0
    pushq   %r12
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset r12, 0
    pushq   %r13
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset r13, 0
    pushq   %r14
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset r14, 0
    pushq   %r15
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset r15, 0
    subq    $8, %rsp                    /* the seed; aligns rsp for the call */
    .cfi_adjust_cfa_offset 8
    movq    %rdx, (%rsp)
    leaq    1(%rdx), %rbx
    leaq    2(%rdx), %rbp
    leaq    3(%rdx), %r12
    leaq    4(%rdx), %r13
    leaq    5(%rdx), %r14
    leaq    6(%rdx), %r15
    call    urio__ctx_switch
    movq    (%rsp), %rdx
    xorl    %eax, %eax
#define CHECK(reg, k)                   \
    leaq    k(%rdx), %rcx;              \
    cmpq    %rcx, reg;                  \
    je      1f;                         \
    orq     $(1 << (k - 1)), %rax;      \
1:
    CHECK(%rbx, 1)
    CHECK(%rbp, 2)
    CHECK(%r12, 3)
    CHECK(%r13, 4)
    CHECK(%r14, 5)
    CHECK(%r15, 6)
#undef CHECK
    addq    $8, %rsp
    .cfi_adjust_cfa_offset -8
    popq    %r15
    .cfi_adjust_cfa_offset -8
    popq    %r14
    .cfi_adjust_cfa_offset -8
    popq    %r13
    .cfi_adjust_cfa_offset -8
    popq    %r12
    .cfi_adjust_cfa_offset -8
    popq    %rbx
    .cfi_adjust_cfa_offset -8
    popq    %rbp
    .cfi_adjust_cfa_offset -8
    ret
    .cfi_endproc
    .size   sw_switch_keep, .-sw_switch_keep

    .globl  sw_entry_probe
    .type   sw_entry_probe, @function
    .p2align 4
sw_entry_probe:
    .cfi_startproc
    movq    %rsp, (%rdi)
    jmp     sw_probe_body
    .cfi_endproc
    .size   sw_entry_probe, .-sw_entry_probe

#elif defined(__aarch64__)

    .text
    .globl  sw_switch_keep
    .type   sw_switch_keep, %function
    .p2align 4
sw_switch_keep:
    .cfi_startproc
    hint    #34
    stp     x29, x30, [sp, #-176]!
    .cfi_def_cfa_offset 176
    .cfi_offset x29, -176
    .cfi_offset x30, -168
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    stp     d8, d9, [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
    str     x2, [sp, #160]
    add     x19, x2, #1
    add     x20, x2, #2
    add     x21, x2, #3
    add     x22, x2, #4
    add     x23, x2, #5
    add     x24, x2, #6
    add     x25, x2, #7
    add     x26, x2, #8
    add     x27, x2, #9
    add     x28, x2, #10
    add     x29, x2, #11
#define LOADD(dreg, k)                  \
    add     x9, x2, (k);                 \
    fmov    dreg, x9
    LOADD(d8, 12)
    LOADD(d9, 13)
    LOADD(d10, 14)
    LOADD(d11, 15)
    LOADD(d12, 16)
    LOADD(d13, 17)
    LOADD(d14, 18)
    LOADD(d15, 19)
#undef LOADD
    bl      urio__ctx_switch
    ldr     x2, [sp, #160]
    mov     x0, #0
#define CHECKX(xreg, k)                 \
    add     x9, x2, (k);                 \
    cmp     xreg, x9;                   \
    cset    x10, ne;                    \
    orr     x0, x0, x10, lsl (k - 1)
#define CHECKD(dreg, k)                 \
    fmov    x11, dreg;                  \
    CHECKX(x11, k)
    CHECKX(x19, 1)
    CHECKX(x20, 2)
    CHECKX(x21, 3)
    CHECKX(x22, 4)
    CHECKX(x23, 5)
    CHECKX(x24, 6)
    CHECKX(x25, 7)
    CHECKX(x26, 8)
    CHECKX(x27, 9)
    CHECKX(x28, 10)
    CHECKX(x29, 11)
    CHECKD(d8, 12)
    CHECKD(d9, 13)
    CHECKD(d10, 14)
    CHECKD(d11, 15)
    CHECKD(d12, 16)
    CHECKD(d13, 17)
    CHECKD(d14, 18)
    CHECKD(d15, 19)
#undef CHECKD
#undef CHECKX
    ldp     x19, x20, [sp, #16]
    ldp     x21, x22, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x25, x26, [sp, #64]
    ldp     x27, x28, [sp, #80]
    ldp     d8, d9, [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    ldp     x29, x30, [sp], #176
    ret
    .cfi_endproc
    .size   sw_switch_keep, .-sw_switch_keep

    .globl  sw_entry_probe
    .type   sw_entry_probe, %function
    .p2align 4
sw_entry_probe:
    .cfi_startproc
    hint    #34
    mov     x9, sp
    str     x9, [x0]
    b       sw_probe_body
    .cfi_endproc
    .size   sw_entry_probe, .-sw_entry_probe

#endif

    .section .note.GNU-stack, "", %progbits
