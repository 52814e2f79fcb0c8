/*
 * test_misuse.c — the mistakes asyncio raises for, caught in C: a
 * coroutine awaited twice or closed after it was handed over, a task's
 * outcome set from outside, tasks awaiting each other, a loop or an
 * executor used after it was closed or freed, a NULL log format, positive
 * error codes, a future completed twice, a task resumed while running.
 * Each gives a clear error (and an ERROR or WARNING line naming the call),
 * never a crash or a silent corruption.  The sanitize suite runs these too:
 * a use of freed memory would fail it.
 */
#include "helpers.h"
#include "task.h"     /* lib/: the task state machine (one test plays it wrong) */

#include <unistd.h>

static int run_main(urio_coro_fn fn, void *arg, int debug)
{
    urio_run_opts_t opts = { .debug = debug };
    return urio_run(urio_coro_create(fn, arg, URIO_SITE(fn)), &opts, NULL);
}

static int quick(void *arg, void **res)
{
    *res = arg;
    return 0;
}

/* ---------------------------------------------------------------- */
/* Coroutines                                                         */

static int hands_coro_twice(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_loop_t *loop = urio_loop_current();
    urio_coro_t *c = URIO_CORO(quick, (void *)7);
    urio_future_t *a = urio_task_create(loop, c);
    assert_non_null(a);
    errno = 0;
    assert_null(urio_task_create(loop, c));         /* the same coroutine again */
    assert_int_equal(errno, EINVAL);
    assert_log_contains("ERROR urio_task_create(): cannot reuse already awaited coroutine "
                        "'quick' (created at ");
    urio_coro_close(c);                             /* not the program's any more */
    assert_log_contains("ERROR urio_coro_close(): cannot reuse already awaited coroutine");
    void *r;
    assert_int_equal(urio_await(a, &r), 0);         /* the first task is unharmed */
    assert_int_equal((intptr_t)r, 7);
    urio_future_unref(a);
    /* Once its task ran, debug mode still knows it (kept poisoned a while). */
    assert_int_equal(urio_await_coro(c, NULL), -EINVAL);
    assert_true(test_log_count("cannot reuse already awaited coroutine 'quick'") >= 3);
    /* urio_await_coro takes it for good too. */
    urio_coro_t *d = URIO_CORO(quick, (void *)8);
    assert_int_equal(urio_await_coro(d, &r), 0);
    assert_null(urio_run_coroutine_threadsafe(loop, d));
    return 0;
}

static void test_misuse_coroutine_reused(void **state)
{
    (void)state;
    test_log_capture();
    assert_int_equal(run_main(hands_coro_twice, NULL, 1), 0);
}

/* ---------------------------------------------------------------- */
/* A task's outcome is its function's                                 */

static void *slow_job(void *arg)
{
    usleep(20000);
    return arg;
}

static int sets_task_outcome(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *t = urio_spawn(urio_loop_current(), quick, (void *)3);
    assert_int_equal(urio_future_set_result(t, (void *)99), -EINVAL);
    assert_int_equal(urio_future_set_error(t, -EIO, "from outside"), -EINVAL);
    assert_log_contains("ERROR urio_future_set_result(): <Task pending 'quick'");
    assert_log_contains("gets its outcome from urio");
    void *r;
    assert_int_equal(urio_await(t, &r), 0);
    assert_int_equal((intptr_t)r, 3);               /* its function's result stands */
    assert_int_equal(urio_future_set_result(t, NULL), -EINVAL);
    urio_future_unref(t);
    /* Executor jobs too: their outcome is their function's. */
    urio_future_t *j = urio_run_in_executor(urio_loop_current(), NULL, slow_job, (void *)5);
    assert_int_equal(urio_future_set_result(j, (void *)6), -EINVAL);
    assert_int_equal(urio_await(j, &r), 0);
    assert_int_equal((intptr_t)r, 5);
    urio_future_unref(j);
    return 0;
}

static void test_misuse_task_outcome_set_from_outside(void **state)
{
    (void)state;
    test_needs_threads();
    test_log_capture();
    assert_int_equal(run_main(sets_task_outcome, NULL, 0), 0);
}

/* ---------------------------------------------------------------- */
/* An await cycle                                                     */

struct cycle {
    urio_future_t *a, *b;
    int ret_a, ret_b;
    bool cancel_a;          /* b cancels a once its await failed */
    int b_slept;
};

static int task_b(void *arg, void **res)
{
    (void)res;
    struct cycle *c = arg;
    urio_sleep(1 * MS);     /* let a await b first */
    c->ret_b = urio_await(c->a, NULL);
    if (c->cancel_a) {
        /* a's wake-up step has not run yet: the cancel is a's alone, not passed on to b. */
        urio_future_cancel(c->a);
        c->b_slept = urio_sleep(1 * MS);
    }
    return 0;
}

static int task_a(void *arg, void **res)
{
    (void)res;
    struct cycle *c = arg;
    c->ret_a = urio_await(c->b, NULL);
    return 0;
}

static int makes_cycle(void *arg, void **res)
{
    (void)arg;
    (void)res;
    struct cycle c = { 0 };
    urio_loop_t *loop = urio_loop_current();
    c.b = urio_spawn(loop, task_b, &c);
    c.a = urio_spawn(loop, task_a, &c);
    uint64_t t0 = urio__now();
    urio_future_t *both[2] = { c.a, c.b };
    assert_int_equal(urio_gather(both, 2, NULL, NULL), 0);
    assert_true(urio__now() - t0 < 5000 * MS);      /* not a hang */
    assert_int_equal(c.ret_a, -EDEADLK);
    assert_int_equal(c.ret_b, -EDEADLK);
    assert_log_contains("ERROR urio_await(): task 'task_b' would await task 'task_a', which "
                        "awaits it");
    urio_future_unref(c.a);
    urio_future_unref(c.b);
    return 0;
}

static void test_misuse_await_cycle(void **state)
{
    (void)state;
    test_log_capture();
    assert_int_equal(run_main(makes_cycle, NULL, 0), 0);
}

static int cycle_then_cancel(void *arg, void **res)
{
    (void)arg;
    (void)res;
    struct cycle c = { .cancel_a = true, .b_slept = 1 };
    urio_loop_t *loop = urio_loop_current();
    c.b = urio_spawn(loop, task_b, &c);
    c.a = urio_spawn(loop, task_a, &c);
    urio_future_t *both[2] = { c.a, c.b };
    urio_gather(both, 2, NULL, NULL);
    assert_int_equal(c.ret_b, -EDEADLK);
    assert_int_equal(c.b_slept, 0);             /* b was not cancelled */
    assert_int_equal(urio_future_result(c.b, NULL), 0);
    urio_future_unref(c.a);
    urio_future_unref(c.b);
    return 0;
}

static void test_misuse_await_cycle_then_cancel(void **state)
{
    (void)state;
    test_log_capture();
    assert_int_equal(run_main(cycle_then_cancel, NULL, 0), 0);
}

/* ---------------------------------------------------------------- */
/* Loops and executors after close and free                           */

static void noop_cb(void *arg)
{
    (void)arg;
}

static void test_misuse_loop_used_after_close(void **state)
{
    (void)state;
    urio_loop_opts_t debug = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&debug);
    test_loop_close(loop);
    test_log_capture();
    /* In debug mode the loop's memory is kept: each call says what is wrong. */
    errno = 0;
    assert_int_equal(urio_call_soon(loop, noop_cb, NULL).id, 0);
    assert_int_equal(errno, ESHUTDOWN);
    assert_int_equal(urio_call_later(loop, MS, noop_cb, NULL).id, 0);
    urio_future_t *f;
    assert_int_equal(urio_future_new(&f, loop), -ESHUTDOWN);
    assert_int_equal(urio_loop_run_forever(loop), -ESHUTDOWN);
    assert_int_equal(urio_call_soon_threadsafe(loop, noop_cb, NULL), -ESHUTDOWN);
    assert_int_equal(urio_loop_close(loop), 0);     /* closing twice is harmless */
    assert_log_contains("ERROR urio_call_soon(): Event loop is closed");
    assert_log_contains("ERROR urio_call_later(): Event loop is closed");
    assert_log_contains("ERROR urio_future_new(): Event loop is closed");
    assert_log_contains("ERROR urio_loop_run_forever(): Event loop is closed");
}

static void test_misuse_executor_used_after_free(void **state)
{
    (void)state;
    test_needs_threads();
    setenv("URIO_DEBUG", "1", 1);   /* executors have no loop: debug mode comes from here */
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 1), 0);
    urio_executor_free(ex);
    test_log_capture();
    assert_int_equal(urio_executor_shutdown(ex, true, false), -EINVAL);
    urio_executor_free(ex);
    urio_loop_t *loop = test_loop_new();
    errno = 0;
    assert_null(urio_run_in_executor(loop, ex, slow_job, NULL));
    assert_int_equal(errno, EINVAL);
    test_loop_close(loop);
    setenv("URIO_DEBUG", "0", 1);
    assert_log_contains("ERROR urio_executor_shutdown(): this executor was freed");
    assert_log_contains("ERROR urio_executor_free(): this executor was freed already");
    assert_log_contains("ERROR urio_run_in_executor(): this executor was freed");
}

/* ---------------------------------------------------------------- */
/* Small mistakes                                                     */

static void *fails_positive(void *arg)
{
    (void)arg;
    return urio_executor_fail(EIO, "disk %d", 3);
}

static int positive_codes(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return urio_task_fail(EPIPE, "peer %s left", "x");
}

static void test_misuse_positive_error_codes(void **state)
{
    (void)state;
    test_needs_threads();
    test_log_capture();
    assert_int_equal(run_main(positive_codes, NULL, 0), -EPIPE);
    assert_log_contains("WARNING urio_task_fail(): error codes are negative errno values "
                        "(-EIO, not EIO): took 32 as -32 (EPIPE)");
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = urio_run_in_executor(loop, NULL, fails_positive, NULL);
    assert_int_equal(urio_loop_run_until_complete(loop, f), -EIO);
    assert_string_equal(urio_future_error_message(f), "disk 3");
    assert_log_contains("WARNING urio_executor_fail(): error codes are negative");
    urio_future_unref(f);
    test_loop_close(loop);
}

static void test_misuse_log_null_format(void **state)
{
    (void)state;
    test_log_capture();
    urio_log(URIO_LOG_WARNING, NULL);
    assert_log_contains("ERROR urio_log(): called with a NULL format (level 30)");
}

/* A future completed twice: the second outcome is refused, and said (issue 13). */
static void test_misuse_future_completed_twice(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = test_future_new(loop);
    test_log_capture();
    assert_int_equal(urio_future_set_result(f, (void *)1), 0);
    assert_int_equal(urio_future_set_result(f, (void *)2), -EINVAL);
    assert_int_equal(urio_future_set_error(f, -EIO, "late"), -EINVAL);
    void *r;
    assert_int_equal(urio_future_result(f, &r), 0);
    assert_ptr_equal(r, (void *)1);                 /* the first outcome stands */
    if (URIO_DEBUG_CHECKS) {
        assert_log_contains("ERROR urio_future_set_result(): <Future finished result=0x1> is "
                            "done already: its outcome is kept, this one refused");
        assert_log_contains("ERROR urio_future_set_error(): <Future finished result=0x1> is "
                            "done already");
    }
    urio_future_unref(f);
    test_loop_close(loop);
}

/* Debug mode's resource warning: an executor never shut down is reported at exit. */
static int __attribute__((noinline)) leaves_executor(void *arg)
{
    (void)arg;
    setenv("URIO_DEBUG", "1", 1);
    urio_executor_t *ex, *ok;
    if (urio_thread_pool_new(&ex, 1) != 0 || urio_thread_pool_new(&ok, 1) != 0)
        return 1;
    urio_executor_free(ok);                         /* this one is closed: not reported */
    return 0;                                       /* ex: never shut down */
}

static void test_misuse_unclosed_executor_reported(void **state)
{
    (void)state;
    char out[4096];
    int status = test_child(leaves_executor, NULL, out, sizeof out);
    assert_int_equal(WEXITSTATUS(status), 0);
    if (strstr(out, "WARNING urio: unclosed executor <thread pool ") == NULL)
        fail_msg("no warning; the child wrote:\n%s", out);
    assert_null(strstr(strstr(out, "unclosed executor") + 1, "unclosed executor"));
    if (URIO_DEBUG_CHECKS && strstr(out, "in leaves_executor") == NULL)
        fail_msg("no creation stack; the child wrote:\n%s", out);
}

/*
 * The task state machine's own check (task.c, switch_in): a step for a task
 * marked running is refused with an ERROR naming the task, instead of a
 * switch onto a stack in use.  No public call can get there (each path that
 * resumes a task checks its state first), so the test plays the broken state
 * machine with the internal parking calls: the task parks, and is marked
 * running when its wake-up step is queued.  The step must not enter it; put
 * right, the task resumes once and ends.  Compiled in with debug mode's
 * machinery (-Ddebug_checks, on by default).
 */
struct wrong_resume {
    urio__task_t *task;
    int resumed;
};

static int parks_once(void *arg, void **res)
{
    (void)res;
    struct wrong_resume *w = arg;
    urio__task_t *t = urio__task_running();
    w->task = t;
    if (urio__task_reserve_wake(t) != 0)
        return -ENOMEM;
    urio__task_park(t, NULL, NULL);
    w->resumed++;
    return 0;
}

static void wakes_as_if_running(void *arg)
{
    struct wrong_resume *w = arg;
    w->task->state = URIO__TASK_RUNNING;    /* the mistake: it is suspended */
    urio__task_unpark(w->task);
}

static void test_misuse_task_resumed_while_running(void **state)
{
    (void)state;
    if (!URIO_DEBUG_CHECKS)
        skip();     /* the check is compiled out: the step would switch in */
    urio_loop_t *loop = test_loop_new();
    struct wrong_resume w = { 0 };
    urio_future_t *t = urio_spawn(loop, parks_once, &w);
    assert_non_null(t);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);                    /* it ran, and parked */
    assert_non_null(w.task);
    assert_int_equal(w.resumed, 0);
    test_log_capture();
    urio_call_soon(loop, wakes_as_if_running, &w);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);                    /* the wake-up queued, and ran */
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_int_equal(w.resumed, 0);                 /* refused: not switched into */
    assert_false(urio_future_done(t));
    assert_log_contains("ERROR task 'parks_once' (created at ");
    assert_log_contains(" resumed while running: refused (a step or done callback ran twice)");
    assert_int_equal(test_log_count("resumed while"), 1);
    /* Put right (suspended, parked, room for its wake-up), it resumes once and ends. */
    w.task->state = URIO__TASK_SUSPENDED;
    assert_int_equal(urio__task_reserve_wake(w.task), 0);
    w.task->parked = true;
    urio__task_unpark(w.task);
    assert_int_equal(urio_loop_run_until_complete(loop, t), 0);
    assert_int_equal(w.resumed, 1);
    assert_int_equal(urio_future_result(t, NULL), 0);
    urio_future_unref(t);
    test_loop_close(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_misuse_coroutine_reused),
        URIO_TEST(test_misuse_task_outcome_set_from_outside),
        URIO_TEST(test_misuse_await_cycle),
        URIO_TEST(test_misuse_await_cycle_then_cancel),
        URIO_TEST(test_misuse_loop_used_after_close),
        URIO_TEST(test_misuse_executor_used_after_free),
        URIO_TEST(test_misuse_positive_error_codes),
        URIO_TEST(test_misuse_log_null_format),
        URIO_TEST(test_misuse_future_completed_twice),
        URIO_TEST(test_misuse_unclosed_executor_reported),
        URIO_TEST(test_misuse_task_resumed_while_running),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
