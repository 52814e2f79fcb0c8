/*
 * switch_selftest.c — the context-switch cases (switch_cases.h) as a plain
 * program: no cmocka, no liburing, so it cross-builds statically for
 * AArch64 and runs under qemu-aarch64 (tests/meson.build, "switch-aarch64").
 * Exit status 0 when every case passes, 1 at the first failed check.
 */
#include <stdio.h>
#include <stdlib.h>

#define sw_assert_true(cond)                                                            \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                              \
        }                                                                         \
    } while (0)
#define sw_assert_eq(a, b)                                                         \
    do {                                                                          \
        long long a_ = (long long)(a), b_ = (long long)(b);                       \
        if (a_ != b_) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s == %s (%lld != %lld)\n",     \
                    __FILE__, __LINE__, #a, #b, a_, b_);                          \
            exit(1);                                                              \
        }                                                                         \
    } while (0)
#include "switch_cases.h"

static void run(const char *name, void (*fn)(void))
{
    fn();
    printf("ok - %s\n", name);
    fflush(stdout);
}

int main(void)
{
    run("ping_pong", sw_case_ping_pong);
    run("callee_saved_registers", sw_case_callee_saved);
    run("fp_control_per_context", sw_case_fp_control);
    run("entry_alignment", sw_case_entry_alignment);
    run("many_round_robin", sw_case_many);
    run("return_from_fn_aborts", sw_case_return_aborts);
    return 0;
}
