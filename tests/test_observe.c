/*
 * test_observe.c — looking into a running program: the stall watchdog (a
 * stuck callback reported while it is stuck, with its stack; nothing when
 * nothing is stuck), the task dump, and the loop's statistics.
 */
#include "helpers.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Spins (a stall that no signal shortens) for ns of this thread's CPU time. */
static void __attribute__((noinline)) spin_for(uint64_t ns)
{
    uint64_t end = thread_cpu_ns() + ns;
    while (thread_cpu_ns() < end)
        ;
}

static volatile int spun;

static void __attribute__((noinline)) stuck_callback(void *arg)
{
    spin_for((uint64_t)(uintptr_t)arg);
    spun++;     /* not a tail call: the report shows this frame */
}

static void test_observe_stall_reported_while_stuck(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    assert_int_equal(urio_loop_set_stall_watchdog(loop, 50 * MS), 0);
    test_log_capture();
    urio_call_soon(loop, stuck_callback, (void *)(uintptr_t)(300 * MS));
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    /* Reported at about 50, 100 and 200 ms of CPU: while it was stuck, with where. */
    int n = test_log_count("WARNING loop stalled for ");
    if (n < 2 || n > 4)
        fail_msg("%d stall reports; the log holds:\n%s", n, test_log_text());
    assert_log_contains(", in stuck_callback");
    assert_log_contains(", in spin_for");
    assert_log_contains("test_observe.c\", line ");
    test_loop_close(loop);
}

static void quick_cb(void *arg)
{
    int *left = arg;
    if (--*left == 0)
        urio_loop_stop(urio_loop_current());
    else
        urio_call_later(urio_loop_current(), MS, quick_cb, left);
}

static void test_observe_no_stall_no_report(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    assert_int_equal(urio_loop_set_stall_watchdog(loop, 20 * MS), 0);
    test_log_capture();
    /* 150 ms of short callbacks and sleeps in the kernel: never stuck (nor when the
     * machine is busy and the loop thread waits for a CPU: CPU time is counted). */
    int left = 100;
    urio_call_soon(loop, quick_cb, &left);
    urio_loop_run_forever(loop);
    /* Idle between runs, and closing: not stalls either. */
    usleep(50000);
    assert_int_equal(test_log_count("stalled"), 0);
    assert_int_equal(urio_loop_set_stall_watchdog(loop, 0), 0);     /* off */
    urio_call_soon(loop, stuck_callback, (void *)(uintptr_t)(60 * MS));
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_int_equal(test_log_count("stalled"), 0);
    test_loop_close(loop);
}

/* ---------------------------------------------------------------- */
/* The task dump                                                      */

static int napper(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return urio_sleep(60 * 1000 * MS);      /* a tail call: the dump says so */
}

static int waits_on(void *arg, void **res)
{
    int ret = urio_await(arg, NULL);
    *res = NULL;
    return ret;
}

static int dumps(void *arg, void **res)
{
    (void)res;
    char **text = arg;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t *a = urio_spawn(loop, napper, NULL);
    urio_future_t *b = urio_spawn(loop, waits_on, a);
    urio_yield();
    urio_yield();
    size_t len = 0;
    FILE *out = open_memstream(text, &len);
    assert_int_equal(urio_loop_dump_tasks(loop, out), 3);
    fclose(out);
    urio_future_cancel(a);
    urio_await(b, NULL);
    urio_future_unref(a);
    urio_future_unref(b);
    assert_int_equal(urio_loop_dump_tasks(NULL, stderr), -EINVAL);
    return 0;
}

static void test_observe_task_dump(void **state)
{
    (void)state;
    char *text = NULL;
    assert_int_equal(urio_run(URIO_CORO(dumps, &text), NULL, NULL), 0);
    static const char *const want[] = {
        "urio: 3 tasks on loop ",
        "<Task 'dumps' running, created at ",
        "<Task 'napper' suspended in napper() ",    /* at its line, or "(its return statement)" */
        "<Task 'waits_on' suspended in waits_on() at test_observe.c:",
        "    awaiting <Task pending 'napper' created at ",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (strstr(text, want[i]) == NULL)
            fail_msg("the dump lacks \"%s\":\n%s", want[i], text);
    free(text);
}

/* URIO_DUMP_SIGNAL: kill -USR1 makes every loop dump its tasks to stderr. */
static int signalled(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *a = urio_spawn(NULL, napper, NULL);
    urio_yield();
    kill(getpid(), SIGUSR1);
    for (int i = 0; i < 200; i++)
        urio_sleep(MS);             /* the dump comes through the loop's inbox */
    urio_future_cancel(a);
    urio_await(a, NULL);
    urio_future_unref(a);
    return 0;
}

static int dump_signal_child(void *arg)
{
    (void)arg;
    setenv("URIO_DUMP_SIGNAL", "SIGUSR1", 1);
    return urio_run(URIO_CORO(signalled, NULL), NULL, NULL) != 0;
}

static void test_observe_dump_on_signal(void **state)
{
    (void)state;
#ifdef URIO_TSAN
    skip();     /* the child starts a thread after a multi-threaded fork: TSan refuses */
#endif
    char out[8192];
    int status = test_child(dump_signal_child, NULL, out, sizeof out);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (strstr(out, "<Task 'napper' suspended in napper() ") == NULL)
        fail_msg("no dump on SIGUSR1; the child wrote:\n%s", out);
}

/* ---------------------------------------------------------------- */
/* Statistics                                                         */

static void after_sleep(void *arg)
{
    (void)arg;
    urio_loop_stop(urio_loop_current());
}

static void test_observe_stats(void **state)
{
    (void)state;
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&on);
    urio_loop_stats_t st;
    assert_int_equal(urio_loop_stats(loop, &st), 0);
    assert_int_equal(st.turns, 0);
    for (int i = 0; i < 10; i++)
        urio_call_soon(loop, stuck_callback, (void *)(uintptr_t)(100 * US));
    urio_call_later(loop, 20 * MS, after_sleep, NULL);
    urio_loop_run_forever(loop);
    assert_int_equal(urio_loop_stats(loop, &st), 0);
    assert_true(st.turns >= 2);
    assert_int_equal(st.callbacks, 11);
    assert_int_equal(st.timers_fired, 1);
    assert_true(st.enters >= 1);
    assert_true(st.idle_ns >= 10 * MS);             /* it slept for the timer */
    assert_true(st.busy_ns >= 1 * MS);              /* ten callbacks of 0.1 ms */
    uint64_t lag = 0, cbs = 0;
    for (int k = 0; k < URIO_STATS_BUCKETS; k++) {
        lag += st.lag_hist[k];
        cbs += st.callback_hist[k];
    }
    assert_int_equal(lag, 1);                       /* one wake-up for a timer */
    if (URIO_DEBUG_CHECKS) {
        assert_int_equal(cbs, 11);                  /* debug mode times each callback */
        uint64_t b100us = st.callback_hist[16];     /* 2^16 ns = 65.5 us .. 131 us */
        assert_true(b100us >= 5);
    }
    assert_int_equal(st.tasks, 0);
    assert_int_equal(urio_loop_stats(loop, NULL), -EINVAL);
    test_loop_close(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_observe_stall_reported_while_stuck),
        URIO_TEST(test_observe_no_stall_no_report),
        URIO_TEST(test_observe_task_dump),
        URIO_TEST(test_observe_dump_on_signal),
        URIO_TEST(test_observe_stats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
