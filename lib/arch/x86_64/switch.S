/*
 * lib/arch/x86_64/switch.S — urio__ctx_switch and urio__ctx_make for the
 * System V x86-64 ABI (see lib/arch/switch.h).
 *
 * A suspended context's frame, at its saved sp (16-byte aligned):
 *
 *   sp+0   MXCSR (4 bytes), x87 control word (2 bytes), 2 bytes unused
 *   sp+8   r15
 *   sp+16  r14
 *   sp+24  r13
 *   sp+32  r12
 *   sp+40  rbx
 *   sp+48  rbp
 *   sp+56  return address
 *
 * (urio__ctx_resume_regs in lib/arch/switch.h reads this frame: keep both in step.)
 *
 * MXCSR and the x87 control word are reloaded only when they differ from
 * the running context's: both loads are slow (fldcw serialises the x87 unit
 * on several cores), and tasks of one loop almost always share one FP
 * environment.  Skipping is exact: the current registers hold the values
 * just saved for `from`.  Reading them is not free either: stmxcsr alone
 * costs about 2 ns per switch on Zen 3 (5 ns alone in a loop), most of what
 * this switch costs over one that saves only general registers (bench:
 * switch.floor); fnstcw costs as much again.
 *
 * The switch ends in pop and an indirect jmp, not ret.  A ret is predicted
 * from the return stack buffer, whose top is always the switching-out
 * context's call site, never the resumed one's: every ret that crosses
 * stacks mispredicts (about 4 ns a switch on Zen 3).  The indirect jmp is
 * predicted from branch history instead, and in a loop the resumed call
 * site is nearly always the one history suggests (the loop's resume, a
 * task's await).  The return stack buffer is off by one entry afterwards,
 * as it was off by a whole stack with ret: the resumed context's next
 * returns mispredict either way.  The jmp's targets carry no endbr64, so
 * this code cannot run with IBT enforced; it does not support the CET
 * shadow stack either (the object carries no property note claiming it).
 */

    .text

/* void urio__ctx_switch(urio__ctx_t *from, urio__ctx_t *to) */
    .globl  urio__ctx_switch
    .hidden urio__ctx_switch
    .type   urio__ctx_switch, @function
    .p2align 6                          /* like the C code: -falign-functions=64 */
urio__ctx_switch:
    .cfi_startproc
    /* The FP control words first, straight into their slot of the frame
     * about to be pushed (in the red zone until then): issued early, the
     * slow stmxcsr overlaps the pushes. */
    fnstcw  -52(%rsp)
    stmxcsr -56(%rsp)
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
    subq    $8, %rsp
    .cfi_adjust_cfa_offset 8
    movl    (%rsp), %eax                /* from's MXCSR and control word */
    movzwl  4(%rsp), %ecx

    movq    %rsp, (%rdi)
    movq    (%rsi), %rsp
    /* From here on the frame is to's, laid out like from's: the CFI above
     * still describes it. */

    cmpl    (%rsp), %eax
    jne     .Lload_mxcsr
.Lmxcsr_done:
    cmpw    4(%rsp), %cx
    jne     .Lload_x87cw
.Lx87cw_done:
    .cfi_remember_state
    addq    $8, %rsp
    .cfi_adjust_cfa_offset -8
    popq    %r15
    .cfi_adjust_cfa_offset -8
    .cfi_restore r15
    popq    %r14
    .cfi_adjust_cfa_offset -8
    .cfi_restore r14
    popq    %r13
    .cfi_adjust_cfa_offset -8
    .cfi_restore r13
    popq    %r12
    .cfi_adjust_cfa_offset -8
    .cfi_restore r12
    popq    %rbx
    .cfi_adjust_cfa_offset -8
    .cfi_restore rbx
    popq    %rbp
    .cfi_adjust_cfa_offset -8
    .cfi_restore rbp
    /* Not ret: see the header comment. */
    popq    %rdx
    .cfi_adjust_cfa_offset -8
    .cfi_register rip, rdx
    jmp     *%rdx

    /* Out of line: the common case falls through both compares. */
    .cfi_restore_state
.Lload_mxcsr:
    ldmxcsr (%rsp)
    jmp     .Lmxcsr_done
.Lload_x87cw:
    fldcw   4(%rsp)
    jmp     .Lx87cw_done
    .cfi_endproc
    .size   urio__ctx_switch, .-urio__ctx_switch

/*
 * The first code a made context runs, "returned to" by urio__ctx_switch with
 * rsp 16-byte aligned, fn in r12 and arg in r13.  The call leaves fn's entry
 * rsp at 8 mod 16, as after any call.  Unwinders stop here: there is no
 * caller (rip undefined), and rbp is 0 for frame-pointer walkers.
 */
    .type   urio__ctx_trampoline, @function
    .p2align 4
urio__ctx_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq    %r13, %rdi
    callq   *%r12
    /* fn must not return; the stack is still aligned for this call. */
    callq   abort@PLT
    ud2
    .cfi_endproc
    .size   urio__ctx_trampoline, .-urio__ctx_trampoline

/* void urio__ctx_make(urio__ctx_t *ctx, void *base, size_t size,
 *                     void (*fn)(void *), void *arg)
 * Builds a suspended frame at the top of the stack whose "return" enters
 * the trampoline, with the caller's current MXCSR and x87 control word. */
    .globl  urio__ctx_make
    .hidden urio__ctx_make
    .type   urio__ctx_make, @function
    .p2align 4
urio__ctx_make:
    .cfi_startproc
    leaq    (%rsi,%rdx), %rax
    andq    $-16, %rax
    subq    $64, %rax                   /* the frame; rsp after its ret is the top */
    stmxcsr (%rax)
    fnstcw  4(%rax)
    movw    $0, 6(%rax)
    movq    $0, 8(%rax)                 /* r15 */
    movq    $0, 16(%rax)                /* r14 */
    movq    %r8, 24(%rax)               /* r13: arg */
    movq    %rcx, 32(%rax)              /* r12: fn */
    movq    $0, 40(%rax)                /* rbx */
    movq    $0, 48(%rax)                /* rbp: ends frame-pointer chains */
    leaq    urio__ctx_trampoline(%rip), %rdx
    movq    %rdx, 56(%rax)
    movq    %rax, (%rdi)
    ret
    .cfi_endproc
    .size   urio__ctx_make, .-urio__ctx_make

    .section .note.GNU-stack, "", %progbits
