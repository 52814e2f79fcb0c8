/*
 * test_switch.c — the context switch under tasks (lib/arch/switch.h):
 * ping-pong, callee-saved registers, per-context FP control state, entry
 * alignment and unwinding, 1,000 contexts, and the abort when fn returns.
 *
 * The cases live in tests/arch/switch_cases.h, shared with the standalone
 * tests/arch/switch_selftest.c that also runs cross-built under qemu.  The
 * same executable is built against the assembly switch (test "switch") and
 * against the ucontext fallback (test "switch-ucontext").
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#define sw_assert_true(cond) assert_true(cond)
#define sw_assert_eq(a, b) assert_int_equal((a), (b))
#include "arch/switch_cases.h"

static void test_switch_ping_pong(void **state)
{
    (void)state;
    sw_case_ping_pong();
}

static void test_switch_callee_saved_registers(void **state)
{
    (void)state;
    sw_case_callee_saved();
}

static void test_switch_fp_control_per_context(void **state)
{
    (void)state;
    sw_case_fp_control();
}

static void test_switch_entry_alignment(void **state)
{
    (void)state;
    sw_case_entry_alignment();
}

static void test_switch_many_round_robin(void **state)
{
    (void)state;
    sw_case_many();
}

static void test_switch_return_from_fn_aborts(void **state)
{
    (void)state;
    sw_case_return_aborts();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_switch_ping_pong),
        cmocka_unit_test(test_switch_callee_saved_registers),
        cmocka_unit_test(test_switch_fp_control_per_context),
        cmocka_unit_test(test_switch_entry_alignment),
        cmocka_unit_test(test_switch_many_round_robin),
        cmocka_unit_test(test_switch_return_from_fn_aborts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
