/*
 * lib/arch/aarch64/switch.S — urio__ctx_switch and urio__ctx_make for
 * AAPCS64 (see lib/arch/switch.h).
 *
 * A suspended context's frame, at its saved sp (16-byte aligned, 176 bytes):
 *
 *   sp+0    x19, x20        sp+96   d8, d9
 *   sp+16   x21, x22        sp+112  d10, d11
 *   sp+32   x23, x24        sp+128  d12, d13
 *   sp+48   x25, x26        sp+144  d14, d15
 *   sp+64   x27, x28        sp+160  FPCR, unused
 *   sp+80   x29, x30 (where the switch returns to)
 *
 * (urio__ctx_resume_regs in lib/arch/switch.h reads this frame: keep both in step.)
 *
 * Only the low 64 bits of v8-v15 are callee-saved (d8-d15).  FPCR is
 * written only when it differs from the running context's: the write is
 * slow (self-synchronising on many cores) and tasks of one loop almost
 * always share one FP environment.
 */

/* BTI landing pads for callers that reach us through a veneer or a PLT
 * (a "hint" is a no-op on cores without BTI). */
#define BTI_C hint #34

    .text

/* void urio__ctx_switch(urio__ctx_t *from, urio__ctx_t *to) */
    .globl  urio__ctx_switch
    .hidden urio__ctx_switch
    .type   urio__ctx_switch, %function
    .p2align 6                          /* like the C code: -falign-functions=64 */
urio__ctx_switch:
    .cfi_startproc
    BTI_C
    sub     sp, sp, #176
    .cfi_def_cfa_offset 176
    stp     x19, x20, [sp, #0]
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    .cfi_offset x19, -176
    .cfi_offset x20, -168
    .cfi_offset x21, -160
    .cfi_offset x22, -152
    .cfi_offset x23, -144
    .cfi_offset x24, -136
    .cfi_offset x25, -128
    .cfi_offset x26, -120
    .cfi_offset x27, -112
    .cfi_offset x28, -104
    .cfi_offset x29, -96
    .cfi_offset x30, -88
    stp     d8, d9, [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
    mrs     x9, fpcr
    str     x9, [sp, #160]

    mov     x10, sp
    str     x10, [x0]
    ldr     x10, [x1]
    mov     sp, x10
    /* From here on the frame is to's, laid out like from's: the CFI above
     * still describes it. */

    ldr     x10, [sp, #160]
    cmp     x9, x10
    b.ne    .Lload_fpcr
.Lfpcr_done:
    ldp     x19, x20, [sp, #0]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    ldp     d8, d9, [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    add     sp, sp, #176
    ret

.Lload_fpcr:
    msr     fpcr, x10
    b       .Lfpcr_done
    .cfi_endproc
    .size   urio__ctx_switch, .-urio__ctx_switch

/*
 * The first code a made context runs, "returned to" by urio__ctx_switch with
 * sp at the aligned top of the stack, fn in x19 and arg in x20.  Unwinders
 * stop here: x30 is undefined (no caller), and x29 is 0 for frame-pointer
 * walkers.  fn's lr points back into this function, never to garbage.  No
 * BTI pad is needed: ret is not a checked branch.
 */
    .type   urio__ctx_trampoline, %function
    .p2align 4
urio__ctx_trampoline:
    .cfi_startproc
    .cfi_undefined x30
    mov     x0, x20
    blr     x19
    /* fn must not return. */
    bl      abort
    brk     #0x1
    .cfi_endproc
    .size   urio__ctx_trampoline, .-urio__ctx_trampoline

/* void urio__ctx_make(urio__ctx_t *ctx, void *base, size_t size,
 *                     void (*fn)(void *), void *arg)
 * Builds a suspended frame at the top of the stack whose "return" enters
 * the trampoline, with the caller's current FPCR. */
    .globl  urio__ctx_make
    .hidden urio__ctx_make
    .type   urio__ctx_make, %function
    .p2align 4
urio__ctx_make:
    .cfi_startproc
    BTI_C
    add     x9, x1, x2
    and     x9, x9, #~15
    sub     x9, x9, #176
    stp     x3, x4, [x9, #0]            /* x19: fn, x20: arg */
    stp     xzr, xzr, [x9, #16]
    stp     xzr, xzr, [x9, #32]
    stp     xzr, xzr, [x9, #48]
    stp     xzr, xzr, [x9, #64]
    adr     x10, urio__ctx_trampoline
    stp     xzr, x10, [x9, #80]         /* x29: 0 ends frame-pointer chains */
    stp     xzr, xzr, [x9, #96]
    stp     xzr, xzr, [x9, #112]
    stp     xzr, xzr, [x9, #128]
    stp     xzr, xzr, [x9, #144]
    mrs     x10, fpcr
    stp     x10, xzr, [x9, #160]
    str     x9, [x0]
    ret
    .cfi_endproc
    .size   urio__ctx_make, .-urio__ctx_make

    .section .note.GNU-stack, "", %progbits

/* Tell the linker this object is BTI-clean, so that building with
 * -mbranch-protection=bti keeps the property on the output. */
#if defined(__ARM_FEATURE_BTI_DEFAULT) && __ARM_FEATURE_BTI_DEFAULT
    .pushsection .note.gnu.property, "a"
    .p2align 3
    .word   4                           /* name size: "GNU\0" */
    .word   16                          /* descriptor size */
    .word   5                           /* NT_GNU_PROPERTY_TYPE_0 */
    .asciz  "GNU"
    .word   0xc0000000                  /* GNU_PROPERTY_AARCH64_FEATURE_1_AND */
    .word   4
    .word   1                           /* GNU_PROPERTY_AARCH64_FEATURE_1_BTI */
    .word   0
    .popsection
#endif
