/*
 * test_task.c — tasks: results and errors through await, ordering, sleep,
 * cancellation at await points, shielding, wait_for, never-awaited
 * coroutines, pending tasks at close, urio_run, run_coroutine_threadsafe,
 * each task's own FP environment.
 */
#include "helpers.h"

#include <fenv.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static int order[64], norder;

static int child(void *arg, void **res)
{
    intptr_t n = (intptr_t)arg;
    for (int i = 0; i < 3; i++) {
        order[norder++] = (int)(n * 10 + i);
        assert_int_equal(urio_sleep(1 * MS), 0);
    }
    *res = (void *)(n * 100);
    return 0;
}

static int failing(void *arg, void **res)
{
    (void)res;
    urio_sleep(1000);
    return urio_task_fail(-EIO, "disk %s gone", (const char *)arg);
}

/* Runs coro as urio_run's main and returns its outcome. */
static int run_main(urio_coro_fn fn, void *arg, void **res)
{
    return urio_run(urio_coro_create(fn, arg, URIO_SITE(fn)), NULL, res);
}

static int spawn_and_await(void *arg, void **res)
{
    (void)arg;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t *a = urio_spawn(loop, child, (void *)1);
    urio_future_t *b = urio_spawn(loop, child, (void *)2);
    assert_true(urio_future_is_task(a));
    assert_string_equal(urio_task_name(a), "child");
    void *ra = NULL, *rb = NULL;
    assert_int_equal(urio_await(a, &ra), 0);
    assert_int_equal(urio_await(b, &rb), 0);
    assert_int_equal((intptr_t)ra, 100);
    assert_int_equal((intptr_t)rb, 200);
    urio_future_unref(a);
    urio_future_unref(b);
    urio_future_t *c = urio_spawn(loop, failing, "sda");
    assert_int_equal(urio_await(c, NULL), -EIO);
    assert_string_equal(urio_future_error_message(c), "disk sda gone");
    urio_future_unref(c);
    *res = (void *)42;
    return 0;
}

static void test_task_results_errors_and_order(void **state)
{
    (void)state;
    norder = 0;
    void *r = NULL;
    assert_int_equal(run_main(spawn_and_await, NULL, &r), 0);
    assert_int_equal((intptr_t)r, 42);
    /* The two children interleave at each sleep: 10 20 11 21 12 22. */
    static const int want[] = { 10, 20, 11, 21, 12, 22 };
    assert_int_equal(norder, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(order[i], want[i]);
}

static int sleeper(void *arg, void **res)
{
    (void)res;
    int *got = arg;
    *got = urio_sleep(10000 * MS);
    /* Sticky: every await after the cancel also fails. */
    got[1] = urio_sleep(1 * MS);
    got[2] = urio_yield();
    return got[0];
}

static int cancel_sleeper(void *arg, void **res)
{
    (void)res;
    int *got = arg;
    urio_future_t *t = urio_spawn(urio_loop_current(), sleeper, got);
    assert_int_equal(urio_sleep(2 * MS), 0);
    assert_true(urio_future_cancel(t));
    assert_true(urio_future_cancel(t));         /* idempotent */
    assert_int_equal(urio_await(t, NULL), -ECANCELED);
    assert_true(urio_future_cancelled(t));
    urio_future_unref(t);
    return 0;
}

static void test_task_cancel_in_sleep(void **state)
{
    (void)state;
    int got[3] = { 1, 1, 1 };
    uint64_t t0 = urio__now();
    assert_int_equal(run_main(cancel_sleeper, got, NULL), 0);
    assert_true(urio__now() - t0 < 5000 * MS);
    assert_int_equal(got[0], -ECANCELED);
    assert_int_equal(got[1], -ECANCELED);
    assert_int_equal(got[2], -ECANCELED);
}

static int shielded(void *arg, void **res)
{
    (void)res;
    int *got = arg;
    urio_shield_begin();
    got[0] = urio_sleep(5 * MS);        /* a cancel now does not interrupt this */
    urio_shield_end();
    got[1] = urio_sleep(1 * MS);        /* but the next await gets it */
    return got[1];
}

static int cancel_shielded(void *arg, void **res)
{
    (void)res;
    urio_future_t *t = urio_spawn(urio_loop_current(), shielded, arg);
    urio_sleep(1 * MS);
    urio_future_cancel(t);
    assert_int_equal(urio_await(t, NULL), -ECANCELED);
    urio_future_unref(t);
    return 0;
}

static void test_task_shield(void **state)
{
    (void)state;
    int got[2] = { 1, 1 };
    assert_int_equal(run_main(cancel_shielded, got, NULL), 0);
    assert_int_equal(got[0], 0);
    assert_int_equal(got[1], -ECANCELED);
}

static int waits_future(void *arg, void **res)
{
    (void)res;
    urio_future_t *f = arg;
    return urio_wait_for(f, 5 * MS, NULL);
}

static int wait_for_main(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t *f = test_future_new(loop);
    assert_int_equal(urio_await_coro(URIO_CORO(waits_future, f), NULL), -ETIMEDOUT);
    assert_true(urio_future_cancelled(f));      /* wait_for cancelled it */
    urio_future_unref(f);
    return 0;
}

static void test_task_wait_for_times_out(void **state)
{
    (void)state;
    assert_int_equal(run_main(wait_for_main, NULL, NULL), 0);
}

static void test_task_await_outside_task_refused(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = test_future_new(loop);
    test_log_capture();
    assert_int_equal(urio_await(f, NULL), -EPERM);
    assert_int_equal(urio_sleep(1), -EPERM);
    assert_log_contains("urio_await(): called outside a task");
    urio_future_unref(f);
    test_loop_close(loop);
}

static int never_run(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return 0;
}

/* A coroutine closed with urio_coro_close is not reported. */
static void test_task_closed_coro_quiet(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    test_log_capture();
    urio_coro_t *closed = URIO_CORO(never_run, NULL);
    urio_coro_close(closed);                    /* closed: quiet */
    test_loop_close(loop);
    assert_int_equal(test_log_count("was never awaited"), 0);
}

static urio_coro_t *made_in_loop;
static void make_coro_cb(void *arg)
{
    (void)arg;
    made_in_loop = URIO_CORO(never_run, NULL);
}

static void test_task_never_awaited_in_loop(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    test_log_capture();
    urio_call_soon(loop, make_coro_cb, NULL);
    urio_loop_stop(loop);
    urio_loop_run_forever(loop);
    test_loop_close(loop);
    assert_log_contains("RuntimeWarning: coroutine 'never_run' was never awaited");
    assert_log_contains("test_task.c:");
}

static int sleeps_forever(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return urio_sleep(3600ull * 1000 * MS);     /* -ECANCELED when cancelled: it ends cancelled */
}

/* A task still pending when its loop closes is reported. */
static void test_task_destroyed_pending(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    test_log_capture();
    urio_future_t *t = urio_spawn(loop, sleeps_forever, NULL);
    urio_call_later(loop, 2 * MS, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    test_loop_close(loop);
    assert_log_contains("Task was destroyed but it is pending!");
    assert_log_contains("<Task pending 'sleeps_forever' created at");
    assert_true(urio_future_cancelled(t));
    urio_future_unref(t);
}

/* urio_run cancels what main left behind. */
static int leaves_sleeper(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *t = urio_spawn(urio_loop_current(), sleeps_forever, NULL);
    urio_future_unref(t);
    return 0;
}

static void test_task_run_cancels_leftovers(void **state)
{
    (void)state;
    test_log_capture();
    uint64_t t0 = urio__now();
    assert_int_equal(run_main(leaves_sleeper, NULL, NULL), 0);
    assert_true(urio__now() - t0 < 5000 * MS);
    assert_int_equal(test_log_count("destroyed but it is pending"), 0);
}

/* urio_run waits for a leftover task that shields its work from the cancel. */
static int shielded_work(void *arg, void **res)
{
    (void)res;
    urio_shield_begin();
    int ret = urio_sleep(20 * MS);
    urio_shield_end();
    *(int *)arg = ret == 0 ? 1 : -1;
    return 0;
}

static int leaves_shielded(void *arg, void **res)
{
    (void)res;
    urio_future_t *t = urio_spawn(urio_loop_current(), shielded_work, arg);
    urio_future_unref(t);
    return 0;
}

static void test_task_run_waits_for_shielded_leftover(void **state)
{
    (void)state;
    int done = 0;
    test_log_capture();
    uint64_t t0 = urio__now();
    assert_int_equal(run_main(leaves_shielded, &done, NULL), 0);
    assert_int_equal(done, 1);
    assert_true(urio__now() - t0 >= 19 * MS);
    assert_int_equal(test_log_count("destroyed but it is pending"), 0);
}

/* A task whose error nobody reads is reported, as a task. */
static void test_task_exception_never_retrieved(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    test_log_capture();
    urio_future_t *t = urio_spawn(loop, failing, "sdb");
    urio_future_unref(t);
    urio_call_later(loop, 20 * MS, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    test_loop_close(loop);
    assert_log_contains("Task exception was never retrieved");
    assert_log_contains("<Task finished 'failing' created at");
    assert_log_contains("error: EIO (Input/output error): disk sdb gone");
}

/* urio_run_coroutine_threadsafe from another thread, waited on there. */
static int answer(void *arg, void **res)
{
    urio_sleep(1 * MS);
    *res = arg;
    return 0;
}

struct ts {
    urio_loop_t *loop;
    int ret;
    void *res;
    int cancel_ret;
};

static void *submitter(void *arg)
{
    struct ts *s = arg;
    urio_future_t *f = urio_run_coroutine_threadsafe(s->loop, URIO_CORO(answer, (void *)7));
    s->ret = urio_future_wait(f, 5000 * (int64_t)MS, &s->res);
    urio_future_unref(f);
    /* And cancelled from here: the task in the loop is cancelled. */
    urio_future_t *g = urio_run_coroutine_threadsafe(s->loop, URIO_CORO(sleeps_forever, NULL));
    usleep(5000);
    urio_future_cancel(g);
    s->cancel_ret = urio_future_wait(g, 5000 * (int64_t)MS, NULL);
    urio_future_unref(g);
    urio_call_soon_threadsafe(s->loop, test_stop_cb, s->loop);
    return NULL;
}

static void test_task_run_coroutine_threadsafe(void **state)
{
    (void)state;
    test_needs_threads();
    struct ts s = { .loop = test_loop_new() };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, submitter, &s), 0);
    urio_loop_run_forever(s.loop);
    pthread_join(t, NULL);
    assert_int_equal(s.ret, 0);
    assert_int_equal((intptr_t)s.res, 7);
    assert_int_equal(s.cancel_ret, -ECANCELED);
    test_loop_close(s.loop);
}

/* Many tasks alive at once. */
static int tiny(void *arg, void **res)
{
    (void)res;
    urio_sleep(1 * MS);
    (*(int *)arg)++;
    return 0;
}

/* TSan counts fibers as threads (8,128 at most): fewer tasks there. */
#if defined(__SANITIZE_THREAD__)
#define MANY_TASKS 4000
#else
#define MANY_TASKS 100000
#endif

static int many_main(void *arg, void **res)
{
    (void)res;
    enum { N = MANY_TASKS };
    urio_loop_t *loop = urio_loop_current();
    urio_future_t **t = malloc(N * sizeof *t);
    for (int i = 0; i < N; i++) {
        t[i] = urio_spawn(loop, tiny, arg);
        assert_non_null(t[i]);
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(urio_await(t[i], NULL), 0);
        urio_future_unref(t[i]);
    }
    free(t);
    return 0;
}

static void test_task_100000_alive(void **state)
{
    (void)state;
    test_needs_full_speed();
    int count = 0;
    assert_int_equal(run_main(many_main, &count, NULL), 0);
    assert_int_equal(count, MANY_TASKS);
}

/* gather: all results; or the first failure, with the others cancelled. */
static int value_after(void *arg, void **res)
{
    intptr_t ms = (intptr_t)arg;
    int ret = urio_sleep((uint64_t)ms * MS);
    if (ret < 0)
        return ret;
    if (ms == 2)
        return urio_task_fail(-EIO, "child %d failed", 2);
    *res = arg;
    return 0;
}

static int gather_main(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t *fs[3] = { urio_spawn(loop, value_after, (void *)3),
                             urio_spawn(loop, value_after, (void *)1),
                             urio_spawn(loop, value_after, (void *)4) };
    void *r[3];
    assert_int_equal(urio_gather(fs, 3, r, NULL), 0);
    assert_int_equal((intptr_t)r[0], 3);
    assert_int_equal((intptr_t)r[1], 1);
    assert_int_equal((intptr_t)r[2], 4);
    for (int i = 0; i < 3; i++)
        urio_future_unref(fs[i]);
    /* One fails: the slow sibling is cancelled, gather returns the failure. */
    urio_future_t *gs[2] = { urio_spawn(loop, value_after, (void *)2),
                             urio_spawn(loop, value_after, (void *)10000) };
    size_t failed = 99;
    uint64_t t0 = urio__now();
    assert_int_equal(urio_gather(gs, 2, NULL, &failed), -EIO);
    assert_int_equal(failed, 0);
    assert_true(urio__now() - t0 < 5000 * MS);
    assert_true(urio_future_cancelled(gs[1]));
    assert_string_equal(urio_future_error_message(gs[0]), "child 2 failed");
    for (int i = 0; i < 2; i++)
        urio_future_unref(gs[i]);
    return 0;
}

static void test_task_gather(void **state)
{
    (void)state;
    assert_int_equal(run_main(gather_main, NULL, NULL), 0);
}

/* Task group: the first failure cancels the siblings and is named in the error. */
static int group_main(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_task_group_t *g;
    assert_int_equal(urio_task_group_new(&g), 0);
    urio_future_t *slow = urio_task_group_spawn(g, URIO_CORO(value_after, (void *)10000));
    int line = __LINE__ + 1;
    urio_future_t *bad = urio_task_group_spawn(g, URIO_CORO(value_after, (void *)2));
    assert_non_null(slow);
    assert_non_null(bad);
    uint64_t t0 = urio__now();
    assert_int_equal(urio_task_group_wait(g), -EIO);
    assert_true(urio__now() - t0 < 5000 * MS);
    assert_true(urio_future_cancelled(slow));
    char want[256];
    snprintf(want, sizeof want, "child 'value_after' (created at %s:%d) failed: EIO "
             "(Input/output error): child 2 failed", __FILE__, line);
    assert_string_equal(urio_task_group_error_message(g), want);
    urio_task_group_free(g);
    /* A group whose children all succeed. */
    assert_int_equal(urio_task_group_new(&g), 0);
    for (int i = 0; i < 10; i++)
        urio_task_group_spawn(g, URIO_CORO(value_after, (void *)1));
    assert_int_equal(urio_task_group_wait(g), 0);
    assert_null(urio_task_group_error_message(g));
    urio_task_group_free(g);
    /* Freed without waiting: children are cancelled, not left running. */
    assert_int_equal(urio_task_group_new(&g), 0);
    urio_future_t *orphan = urio_task_group_spawn(g, URIO_CORO(value_after, (void *)10000));
    urio_future_ref(orphan);
    urio_task_group_free(g);
    assert_true(urio_future_cancelled(orphan));
    urio_future_unref(orphan);
    return 0;
}

static void test_task_group(void **state)
{
    (void)state;
    assert_int_equal(run_main(group_main, NULL, NULL), 0);
}

/* Cancelling a task blocked in gather / in a group's wait cancels the children too. */
static int gathers_forever(void *arg, void **res)
{
    (void)res;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t **kids = arg;
    kids[0] = urio_spawn(loop, sleeps_forever, NULL);
    kids[1] = urio_spawn(loop, sleeps_forever, NULL);
    return urio_gather(kids, 2, NULL, NULL);
}

static int cancel_gatherer(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *kids[2] = { NULL, NULL };
    urio_future_t *t = urio_spawn(urio_loop_current(), gathers_forever, kids);
    urio_sleep(2 * MS);
    urio_future_cancel(t);
    assert_int_equal(urio_await(t, NULL), -ECANCELED);
    assert_true(urio_future_cancelled(kids[0]));
    assert_true(urio_future_cancelled(kids[1]));
    urio_future_unref(kids[0]);
    urio_future_unref(kids[1]);
    urio_future_unref(t);
    return 0;
}

static void test_task_cancel_in_gather(void **state)
{
    (void)state;
    assert_int_equal(run_main(cancel_gatherer, NULL, NULL), 0);
}

/* A task that overflows its stack hits the guard page: in debug mode the process
 * says which task before it dies.  In a child process. */
static int __attribute__((noinline)) recurse(volatile char *prev, int depth)
{
    volatile char frame[1024];
    frame[0] = (char)depth;
    frame[1023] = prev ? prev[0] : 0;
    return depth > 1000000 ? frame[0] : recurse(frame, depth + 1) + frame[1023];
}

static int overflows(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return recurse(NULL, 0);
}

static int overflow_child(void *arg)
{
    (void)arg;
    signal(SIGSEGV, SIG_DFL);   /* a plain program: not cmocka's crash handler */
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop;
    if (urio_loop_new(&loop, &on) < 0)
        return 77;
    urio_task_opts_t small = { .stack_size = 64 * 1024 };
    urio_future_t *t = urio_task_create_opts(loop, URIO_CORO(overflows, NULL), &small);
    urio_loop_run_until_complete(loop, t);
    return 0;                   /* not reached: the guard page stops it */
}

static void test_task_stack_overflow_reported(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    skip();     /* the sanitizer reports it itself */
#endif
    char buf[4096];
    int status = test_child(overflow_child, NULL, buf, sizeof buf);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
        skip();
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGSEGV);
    if (strstr(buf, "task 'overflows' (created at ") == NULL ||
        strstr(buf, "overflowed its stack of 64 KiB") == NULL)
        fail_msg("no overflow report in: %s", buf);
}

/* Cancelled while awaiting a plain future, or another task: what it waited on is cancelled. */
static int awaits_it(void *arg, void **res)
{
    (void)res;
    return urio_await(arg, NULL);
}

static int cancel_awaiters(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t *f = test_future_new(loop);
    urio_future_t *a = urio_spawn(loop, awaits_it, f);
    urio_future_t *inner = urio_spawn(loop, sleeps_forever, NULL);
    urio_future_t *b = urio_spawn(loop, awaits_it, inner);
    urio_sleep(2 * MS);
    urio_future_cancel(a);
    urio_future_cancel(b);
    assert_int_equal(urio_await(a, NULL), -ECANCELED);
    assert_int_equal(urio_await(b, NULL), -ECANCELED);
    assert_true(urio_future_cancelled(f));
    assert_true(urio_future_cancelled(inner));
    urio_future_unref(f);
    urio_future_unref(a);
    urio_future_unref(inner);
    urio_future_unref(b);
    return 0;
}

static void test_task_cancel_at_future_and_task_awaits(void **state)
{
    (void)state;
    assert_int_equal(run_main(cancel_awaiters, NULL, NULL), 0);
}

/* Debug mode (from urio_run's options): never-awaited reports carry the creation stack. */
static int leaves_coro(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_coro_t *c = URIO_CORO(never_run, NULL);
    (void)c;
    return 0;
}

static void test_task_never_awaited_debug_stack(void **state)
{
    (void)state;
    if (!URIO_DEBUG_CHECKS)
        skip();
    test_log_capture();
    urio_run_opts_t on = { .debug = 1 };
    assert_int_equal(urio_run(URIO_CORO(leaves_coro, NULL), &on, NULL), 0);
    assert_log_contains("RuntimeWarning: coroutine 'never_run' was never awaited");
    assert_log_contains("Coroutine created at (most recent call last)");
    assert_log_contains("in leaves_coro");
}

/* Cancelled in a task group's wait: the children are cancelled and awaited. */
static int waits_group(void *arg, void **res)
{
    (void)res;
    urio_future_t **kid = arg;
    urio_task_group_t *g;
    assert_int_equal(urio_task_group_new(&g), 0);
    *kid = urio_task_group_spawn(g, URIO_CORO(sleeps_forever, NULL));
    urio_future_ref(*kid);
    int ret = urio_task_group_wait(g);
    urio_task_group_free(g);
    return ret;
}

static int cancel_group_waiter(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *kid = NULL;
    urio_future_t *t = urio_spawn(urio_loop_current(), waits_group, &kid);
    urio_sleep(2 * MS);
    urio_future_cancel(t);
    assert_int_equal(urio_await(t, NULL), -ECANCELED);
    assert_true(urio_future_cancelled(kid));
    urio_future_unref(kid);
    urio_future_unref(t);
    return 0;
}

static void test_task_cancel_in_group_wait(void **state)
{
    (void)state;
    assert_int_equal(run_main(cancel_group_waiter, NULL, NULL), 0);
}

/* A coroutine made outside any loop and left alone is reported at exit. */
static int leaves_coro_at_exit(void *arg)
{
    (void)arg;
    urio_coro_t *c = URIO_CORO(never_run, NULL);
    (void)c;
    return 0;
}

static void test_task_never_awaited_at_exit(void **state)
{
    (void)state;
    char buf[2048];
    int status = test_child(leaves_coro_at_exit, NULL, buf, sizeof buf);
    assert_true(WIFEXITED(status));
    if (strstr(buf, "RuntimeWarning: coroutine 'never_run' was never awaited") == NULL)
        fail_msg("no warning at exit in: %s", buf);
}

/* Robustness found by review: each of these used to hang, leak or crash. */
static int gathers_self(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *self = urio_task_current();
    return urio_gather(&self, 1, NULL, NULL);
}

static int spawns_in_cleanup(void *arg, void **res)
{
    (void)arg;
    (void)res;
    int ret = urio_sleep(3600ull * 1000 * MS);      /* cancelled by urio_run's drain */
    urio_future_t *late = urio_spawn(urio_loop_current(), sleeps_forever, NULL);
    urio_future_unref(late);                        /* must be cancelled too */
    return ret;
}

static int leaves_spawner(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *t = urio_spawn(urio_loop_current(), spawns_in_cleanup, NULL);
    urio_future_unref(t);
    return 0;
}

static urio_task_group_t *loose_group;
static int makes_loose_group(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_task_group_new(&loose_group);
    urio_task_group_spawn(loose_group, URIO_CORO(tiny, arg));
    urio_task_group_spawn(loose_group, URIO_CORO(sleeps_forever, NULL));
    return 0;
}

static void free_loose_group_cb(void *arg)
{
    (void)arg;
    urio_task_group_free(loose_group);      /* outside a task: cancels, does not wait */
}

static void test_task_review_regressions(void **state)
{
    (void)state;
    /* gather with the gathering task itself: refused. */
    assert_int_equal(run_main(gathers_self, NULL, NULL), -EDEADLK);
    /* urio_run: a task spawned while the leftovers are being cancelled is cancelled too. */
    uint64_t t0 = urio__now();
    assert_int_equal(run_main(leaves_spawner, NULL, NULL), 0);
    assert_true(urio__now() - t0 < 5000 * MS);
    /* A group freed outside a task: no use after free when the children end later. */
    urio_loop_t *loop = test_loop_new();
    test_log_capture();
    int count = 0;
    urio_future_t *m = urio_spawn(loop, makes_loose_group, &count);
    assert_int_equal(urio_loop_run_until_complete(loop, m), 0);
    urio_call_soon(loop, free_loose_group_cb, NULL);
    urio_call_later(loop, 20 * MS, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_log_contains("urio_task_group_free(): called outside a task");
    urio_future_unref(m);
    test_loop_close(loop);
}

/* A run_coroutine_threadsafe task pending when its loop closes: the other thread's future is cancelled. */
static void *waits_proxy(void *arg)
{
    urio_future_t *f = arg;
    return (void *)(intptr_t)urio_future_wait(f, 5000 * (int64_t)MS, NULL);
}

static void test_task_threadsafe_future_settled_at_close(void **state)
{
    (void)state;
    test_needs_threads();
    urio_loop_t *loop = test_loop_new();
    test_log_capture();
    urio_future_t *f = urio_run_coroutine_threadsafe(loop, URIO_CORO(sleeps_forever, NULL));
    assert_non_null(f);
    urio_call_later(loop, 5 * MS, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, waits_proxy, f), 0);
    usleep(5000);
    test_loop_close(loop);
    void *ret;
    pthread_join(t, &ret);
    assert_int_equal((intptr_t)ret, -ECANCELED);
    urio_future_unref(f);
}

/*
 * issue 14 point 1: a run_coroutine_threadsafe future whose task ends in the
 * loop's last turn (the coroutine stops the loop and returns; the loop's
 * owner then closes it) must complete: 300 rounds x 4 waiting threads, no
 * waiter stuck, nothing leaked.
 */
static int stops_its_loop(void *arg, void **res)
{
    urio_loop_stop(urio_loop_current());
    *res = arg;
    return 0;
}

struct last_turn {
    urio_loop_t *loop;
    atomic_int go;
    int outcome[4];
};

static void *submits_and_waits(void *arg)
{
    struct last_turn *x = ((struct last_turn **)arg)[0];
    intptr_t k = (intptr_t)((void **)arg)[1];
    while (!atomic_load(&x->go))
        ;
    urio_future_t *f = urio_run_coroutine_threadsafe(x->loop,
                                                     URIO_CORO(stops_its_loop, (void *)k));
    if (f == NULL) {
        x->outcome[k] = -errno;     /* the loop closed first: refused, fine */
        return NULL;
    }
    void *r = NULL;
    x->outcome[k] = urio_future_wait(f, 10000 * (int64_t)MS, &r);
    if (x->outcome[k] == 0 && (intptr_t)r != k)
        x->outcome[k] = -1000;
    urio_future_unref(f);
    return NULL;
}

static void *runs_loop(void *arg)
{
    struct last_turn *x = arg;
    urio_loop_run_forever(x->loop);
    urio_loop_close(x->loop);       /* the owner closes right after the last turn */
    return NULL;
}

static void test_task_threadsafe_future_completes_in_last_turn(void **state)
{
    (void)state;
    test_needs_threads();
    test_log_capture();     /* coroutines refused at close are not a test failure */
    for (int round = 0; round < 300; round++) {
        struct last_turn x = { .loop = test_loop_new() };
        urio_loop_ref(x.loop);          /* the waiters' calls may come after the close */
        void *args[4][2];
        pthread_t w[4], owner;
        for (intptr_t k = 0; k < 4; k++) {
            args[k][0] = &x;
            args[k][1] = (void *)k;
            assert_int_equal(pthread_create(&w[k], NULL, submits_and_waits, args[k]), 0);
        }
        assert_int_equal(pthread_create(&owner, NULL, runs_loop, &x), 0);
        atomic_store(&x.go, 1);
        for (int k = 0; k < 4; k++)
            pthread_join(w[k], NULL);
        pthread_join(owner, NULL);
        for (int k = 0; k < 4; k++) {
            if (x.outcome[k] == -ETIMEDOUT || x.outcome[k] == -1000)
                fail_msg("round %d: waiter %d got %d", round, k, x.outcome[k]);
        }
        urio_loop_unref(x.loop);
    }
}

/*
 * issue 11 point 2: the asyncio page's never-retrieved example as C
 * programmers write it: the task's reference dropped on the floor.  The loop
 * reports it at close, with where the error was set (issue 11 point 3).
 */
static int bug(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return urio_task_fail(-EIO, "not consumed");
}

static int spawns_and_forgets(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_spawn(NULL, bug, NULL);    /* NULL: the running loop; the result dropped */
    return 0;
}

static int page_example_child(void *arg)
{
    (void)arg;
    int ret = urio_run(URIO_CORO(spawns_and_forgets, NULL), NULL, NULL);
    _exit(ret == 0 ? 0 : 1);    /* the example leaks the dropped reference: no leak check */
}

static void test_task_dropped_failed_task_reported_at_close(void **state)
{
    (void)state;
    char out[8192];
    int status = test_child(page_example_child, NULL, out, sizeof out);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    static const char *const want[] = {
        "ERROR urio: Task exception was never retrieved\nfuture: <Task finished 'bug' "
        "created at ",
        "test_task.c:",
        "\nerror: EIO (Input/output error): not consumed\nTraceback (most recent call last):\n"
        "  File \"",
        "test_task.c\", line ",
        ", in bug",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (strstr(out, want[i]) == NULL)
            fail_msg("the report lacks \"%s\"; the child wrote:\n%s", want[i], out);
    if (strstr(strstr(out, "never retrieved") + 1, "never retrieved") != NULL)
        fail_msg("reported twice:\n%s", out);
}

/*
 * The same from another working directory: __FILE__ is relative to where
 * the compiler ran, yet the traceback names the file by its absolute path
 * and shows its source line (found through the compile directories).
 */
static int page_example_elsewhere(void *arg)
{
    if (chdir("/") != 0)
        _exit(2);
    return page_example_child(arg);
}

static void test_task_traceback_from_another_directory(void **state)
{
    (void)state;
    char out[8192];
    int status = test_child(page_example_elsewhere, NULL, out, sizeof out);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    const char *tb = strstr(out, "Traceback (most recent call last):\n  File \"/");
    if (tb == NULL || strstr(tb, "tests/test_task.c\", line ") == NULL ||
        strstr(tb, "\n    return urio_task_fail(-EIO, \"not consumed\");") == NULL)
        fail_msg("no absolute path and source line in:\n%s", out);
}

/* A slow task step is reported as the task. */
static int slow_step(void *arg, void **res)
{
    (void)arg;
    (void)res;
    usleep(30000);                  /* the first step */
    urio_sleep(1 * MS);
    usleep(30000);                  /* a step resumed by the sleep's timer */
    return 0;
}

static void test_task_slow_step_reported(void **state)
{
    (void)state;
    if (!URIO_DEBUG_CHECKS)
        skip();
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&on);
    urio_loop_set_slow_callback_duration(loop, 10 * MS);
    test_log_capture();
    int line = __LINE__ + 1;
    urio_future_t *t = urio_spawn(loop, slow_step, NULL);
    assert_int_equal(urio_loop_run_until_complete(loop, t), 0);
    char want[256];
    snprintf(want, sizeof want, "WARNING Executing <Task 'slow_step' created at %s:%d, step from ",
             __FILE__, line);
    assert_int_equal(test_log_count(want), 2);      /* both steps are the task's */
    assert_int_equal(test_log_count("Executing <Handle"), 0);
    /* Where each step ran: from its start to the sleep, then from the sleep to its end. */
    assert_log_contains("step from its start to slow_step() at test_task.c:");
    assert_log_contains("step from slow_step() at test_task.c:");
    assert_log_contains(" to its end> took 0.0");
    urio_future_unref(t);
    test_loop_close(loop);
}

/*
 * A fire-and-forget task whose last step is slow: nobody holds it once the
 * step ends, and the report written after the step still names it (the
 * loop holds the task until its report is written; the sanitize suite
 * caught the read of freed memory this once was).
 */
static int slow_last_step(void *arg, void **res)
{
    (void)arg;
    (void)res;
    usleep(30000);
    return 0;
}

static void spawn_and_forget(void *arg)
{
    urio_loop_t *loop = arg;
    urio_future_unref(urio_task_create_opts(loop, URIO_CORO(slow_last_step, NULL),
                                            &(urio_task_opts_t){ .name = "forgotten" }));
}

static void test_task_slow_last_step_of_forgotten_task(void **state)
{
    (void)state;
    if (!URIO_DEBUG_CHECKS)
        skip();
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&on);
    urio_loop_set_slow_callback_duration(loop, 10 * MS);
    test_log_capture();
    urio_call_soon(loop, spawn_and_forget, loop);
    urio_call_later(loop, 100 * MS, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_log_contains("WARNING Executing <Task 'forgotten' created at ");
    assert_log_contains(" to its end> took 0.0");
    test_loop_close(loop);          /* the leak check: the hold was let go */
}

/* ---------------------------------------------------------------- */
/* Refused: urio_run and run_coroutine_threadsafe given nothing or misplaced */

static bool ran_flag;

static int sets_flag(void *arg, void **res)
{
    (void)arg;
    (void)res;
    ran_flag = true;
    return 0;
}

static int runs_nested(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return urio_run(URIO_CORO(sets_flag, NULL), NULL, NULL);
}

static void test_task_run_refused(void **state)
{
    (void)state;
    test_log_capture();
    ran_flag = false;
    assert_int_equal(urio_run(NULL, NULL, NULL), -EINVAL);
    /* From inside a running loop (asyncio: "cannot be called from a running event loop"). */
    assert_int_equal(run_main(runs_nested, NULL, NULL), -EBUSY);
    assert_log_contains("ERROR urio_run(): cannot be called from a running event loop");
    /* No loop, no coroutine: refused, the coroutine freed. */
    errno = 0;
    assert_null(urio_run_coroutine_threadsafe(NULL, URIO_CORO(sets_flag, NULL)));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    urio_loop_t *loop = test_loop_new();
    assert_null(urio_run_coroutine_threadsafe(loop, NULL));
    assert_int_equal(errno, EINVAL);
    test_loop_close(loop);
    assert_false(ran_flag);
    assert_int_equal(test_log_count("never awaited"), 0);    /* refused coroutines are closed */
}

/* A run_coroutine_threadsafe future cancelled before the loop started its task: the
 * coroutine never runs, and the future is cancelled at once. */
static void test_task_threadsafe_cancelled_before_start(void **state)
{
    (void)state;
    test_log_capture();
    ran_flag = false;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *p = urio_run_coroutine_threadsafe(loop, URIO_CORO(sets_flag, NULL));
    assert_non_null(p);
    assert_true(urio_future_cancel_msg(p, "changed my mind"));
    assert_true(urio_future_cancelled(p));
    assert_string_equal(urio_future_error_message(p), "changed my mind");
    urio_call_later(loop, 2 * MS, test_stop_cb, loop);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    assert_false(ran_flag);
    assert_int_equal(urio_future_result(p, NULL), -ECANCELED);
    urio_future_unref(p);
    test_loop_close(loop);
    assert_int_equal(test_log_count("never awaited"), 0);
}

/* The function form of urio_task_fail (for callers that cannot use the macro):
 * the same outcome, without a site; outside a task it just returns err. */
static int fails_by_function(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return (urio_task_fail)(-EPIPE, "peer %d gone", 3);
}

static void test_task_fail_function_form(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *t = urio_spawn(loop, fails_by_function, NULL);
    assert_int_equal(urio_loop_run_until_complete(loop, t), -EPIPE);
    assert_int_equal(urio_future_result(t, NULL), -EPIPE);
    assert_string_equal(urio_future_error_message(t), "peer 3 gone");
    urio_future_unref(t);
    test_loop_close(loop);
    assert_int_equal((urio_task_fail)(-EIO, "outside %s", "a task"), -EIO);
    assert_int_equal(urio_task_fail(-EIO, NULL), -EIO);
}

/* urio_sleep(0) is a yield: the other ready task runs in between. */
static int zero_sleeper(void *arg, void **res)
{
    (void)res;
    for (int i = 0; i < 3; i++) {
        order[norder++] = (int)(intptr_t)arg * 10 + i;
        assert_int_equal(urio_sleep(0), 0);
    }
    return 0;
}

static void test_task_sleep_zero_yields(void **state)
{
    (void)state;
    norder = 0;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *a = urio_spawn(loop, zero_sleeper, (void *)1);
    urio_future_t *b = urio_spawn(loop, zero_sleeper, (void *)2);
    assert_int_equal(urio_loop_run_until_complete(loop, b), 0);
    assert_int_equal(urio_loop_run_until_complete(loop, a), 0);
    static const int want[] = { 10, 20, 11, 21, 12, 22 };
    assert_int_equal(norder, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(order[i], want[i]);
    urio_future_unref(a);
    urio_future_unref(b);
    test_loop_close(loop);
}

/* ---------------------------------------------------------------- */
/* The FP environment is each task's own                              */

/* The FP control state a task sees: the C rounding mode and, on x86-64,
 * the raw MXCSR and x87 control word (the switch saves both, and reloads
 * each only when the resumed context's differs from the running one's). */
typedef struct fp_env {
    int round;
    unsigned mxcsr;
    unsigned short x87cw;
} fp_env_t;

static void fp_env_read(fp_env_t *e)
{
    memset(e, 0, sizeof *e);
    e->round = fegetround();
#if defined(__x86_64__)
    __asm__ volatile("stmxcsr %0" : "=m"(e->mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(e->x87cw));
#endif
}

static void fp_env_assert_equal(const fp_env_t *a, const fp_env_t *b)
{
    assert_int_equal(a->round, b->round);
    assert_int_equal(a->mxcsr, b->mxcsr);
    assert_int_equal(a->x87cw, b->x87cw);
}

enum { FP_KEEP, FP_BOTH, FP_X87_ONLY, FP_MXCSR_ONLY };

/* Changes the FP environment as `kind` says, then checks at every step
 * that it still has exactly that environment. */
static int fp_env_task(void *arg, void **res)
{
    (void)res;
    int kind = (int)(intptr_t)arg;
    switch (kind) {
    case FP_BOTH:
        assert_int_equal(fesetround(FE_UPWARD), 0);     /* MXCSR and x87 alike */
        break;
#if defined(__x86_64__)
    case FP_X87_ONLY: {
        unsigned short cw;
        __asm__ volatile("fnstcw %0" : "=m"(cw));
        cw = (unsigned short)((cw & ~0xc00u) | 0x400u);  /* x87 RC: down */
        __asm__ volatile("fldcw %0" : : "m"(cw));
        break;
    }
    case FP_MXCSR_ONLY: {
        unsigned mx;
        __asm__ volatile("stmxcsr %0" : "=m"(mx));
        mx |= 0x6000u;                                   /* SSE RC: toward zero */
        __asm__ volatile("ldmxcsr %0" : : "m"(mx));
        break;
    }
#endif
    default:
        break;
    }
    fp_env_t mine, now;
    fp_env_read(&mine);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(urio_yield(), 0);
        fp_env_read(&now);
        fp_env_assert_equal(&now, &mine);
    }
    return 0;
}

static void test_task_fp_env_per_task(void **state)
{
    (void)state;
    fp_env_t loop_env, env;
    fp_env_read(&loop_env);
    urio_loop_t *loop = test_loop_new();
    /* Interleaved by the yields: every switch leaves a task for the loop's
     * context or back, across every pair of differing environments. */
    const int kinds[] = { FP_BOTH, FP_KEEP, FP_X87_ONLY, FP_MXCSR_ONLY, FP_BOTH };
    enum { N = sizeof kinds / sizeof kinds[0] };
    urio_future_t *t[N];
    for (int i = 0; i < N; i++)
        t[i] = urio_spawn(loop, fp_env_task, (void *)(intptr_t)kinds[i]);
    for (int i = 0; i < N; i++) {
        assert_int_equal(urio_loop_run_until_complete(loop, t[i]), 0);
        fp_env_read(&env);
        fp_env_assert_equal(&env, &loop_env);           /* the loop's own, between steps */
        urio_future_unref(t[i]);
    }
    test_loop_close(loop);
}

/* ---------------------------------------------------------------- */
/* Stacks: sizes that cannot be had                                   */

static void test_task_stack_size_refused(void **state)
{
    (void)state;
    test_log_capture();
    urio_loop_t *loop = test_loop_new();
    /* Beyond any real need (rounding it, adding the guard page, would wrap): EINVAL. */
    const size_t sizes[] = { SIZE_MAX, SIZE_MAX - 4096, (size_t)1 << 41 };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        urio_task_opts_t opts = { .stack_size = sizes[i] };
        errno = 0;
        assert_null(urio_task_create_opts(loop, URIO_CORO(sets_flag, NULL), &opts));
        assert_int_equal(errno, EINVAL);
    }
    /* An odd size is rounded up to pages, and works. */
    urio_task_opts_t odd = { .stack_size = 100 * 1024 + 1 };
    urio_future_t *t = urio_task_create_opts(loop, URIO_CORO(sets_flag, NULL), &odd);
    assert_non_null(t);
    assert_int_equal(urio_loop_run_until_complete(loop, t), 0);
    urio_future_unref(t);
    test_loop_close(loop);
    assert_int_equal(test_log_count("never awaited"), 0);
}

#include <sys/resource.h>

/* A stack the address space cannot hold (RLIMIT_AS): ENOMEM, and the loop goes on. */
static int stack_beyond_rlimit_child(void *arg)
{
    (void)arg;
    urio_loop_t *loop;
    if (urio_loop_new(&loop, NULL) < 0)
        return 77;
    struct rlimit rl = { 1ul << 32, 1ul << 32 };        /* 4 GiB of address space */
    if (setrlimit(RLIMIT_AS, &rl) != 0)
        return 3;
    urio_task_opts_t huge = { .stack_size = (size_t)8 << 30 };     /* 8 GiB */
    errno = 0;
    urio_future_t *t = urio_task_create_opts(loop, URIO_CORO(sets_flag, NULL), &huge);
    if (t != NULL || errno != ENOMEM)
        return 4;
    t = urio_spawn(loop, sets_flag, NULL);
    if (t == NULL || urio_loop_run_until_complete(loop, t) != 0 || !ran_flag)
        return 5;
    urio_future_unref(t);
    return urio_loop_close(loop) == 0 && test_live_blocks() == 0 ? 0 : 6;
}

static void test_task_stack_beyond_address_space(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    skip();     /* the sanitizers' shadow memory needs more address space than any limit */
#endif
    char buf[4096];
    ran_flag = false;
    int status = test_child(stack_beyond_rlimit_child, NULL, buf, sizeof buf);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77)
        skip();
    if (WEXITSTATUS(status) != 0)
        fail_msg("child status %d; it wrote:\n%s", WEXITSTATUS(status), buf);
}

/* ---------------------------------------------------------------- */
/* Debug mode's SIGSEGV handler: only an overflow is reported as one  */

static int faults(void *arg, void **res)
{
    (void)arg;
    (void)res;
    /* A page that forbids access: a bad pointer, nowhere near the task's guard page. */
    volatile int *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return page == MAP_FAILED ? 3 : *page;
}

static int raises(void *arg, void **res)
{
    (void)arg;
    (void)res;
    raise(SIGSEGV);
    return 0;
}

static int segv_child(void *arg)
{
    signal(SIGSEGV, SIG_DFL);   /* a plain program: not cmocka's crash handler */
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop;
    if (urio_loop_new(&loop, &on) < 0)
        return 77;
    urio_future_t *t = arg ? urio_spawn(loop, raises, NULL) : urio_spawn(loop, faults, NULL);
    urio_loop_run_until_complete(loop, t);
    return 0;                   /* not reached */
}

static void test_task_other_segv_not_called_overflow(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    skip();     /* the sanitizer handles SIGSEGV itself */
#endif
    for (uintptr_t i = 0; i < 2; i++) {
        char buf[4096];
        int status = test_child(segv_child, (void *)i, buf, sizeof buf);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
            skip();
        /* Dies as it would without urio, by SIGSEGV... */
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGSEGV);
        /* ...and is not called an overflow: the fault is not in a guard page. */
        if (strstr(buf, "overflowed its stack") != NULL)
            fail_msg("a %s reported as a stack overflow: %s", i ? "sent SIGSEGV" : "NULL access",
                     buf);
    }
}

/*
 * Debug mode gives each thread that runs tasks an alternate signal stack (an
 * overflowed stack has no room for the handler): a thread that has one keeps
 * its own; one made for a thread is unmapped when the thread ends.
 */
struct altstack_probe {
    bool own;                   /* the thread sets up its own first */
    void *own_sp;
    stack_t seen;               /* the thread's alternate stack after its task ran */
};

static void *runs_debug_task(void *arg)
{
    struct altstack_probe *p = arg;
    if (p->own) {
        p->own_sp = malloc(64 * 1024);
        stack_t ss = { .ss_sp = p->own_sp, .ss_size = 64 * 1024 };
        assert_int_equal(sigaltstack(&ss, NULL), 0);
    }
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&on);
    urio_future_t *t = urio_spawn(loop, sets_flag, NULL);
    assert_int_equal(urio_loop_run_until_complete(loop, t), 0);
    urio_future_unref(t);
    test_loop_close(loop);
    assert_int_equal(sigaltstack(NULL, &p->seen), 0);
    if (p->own) {
        stack_t off = { .ss_flags = SS_DISABLE };
        sigaltstack(&off, NULL);
        free(p->own_sp);
    }
    return NULL;
}

/* True if /proc/self/maps lists a mapping holding addr. */
static bool mapped(const void *addr)
{
    FILE *f = fopen("/proc/self/maps", "re");
    assert_non_null(f);
    unsigned long lo, hi, a = (unsigned long)(uintptr_t)addr;
    bool found = false;
    char line[512];
    while (!found && fgets(line, sizeof line, f) != NULL)
        found = sscanf(line, "%lx-%lx", &lo, &hi) == 2 && a >= lo && a < hi;
    fclose(f);
    return found;
}

static void test_task_debug_alternate_signal_stack(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    skip();     /* no handler of urio's under the sanitizers */
#endif
    if (!URIO_DEBUG_CHECKS)
        skip();
    struct altstack_probe made = { .own = false }, own = { .own = true };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, runs_debug_task, &made), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    /* One was made for the thread, and unmapped when the thread ended. */
    assert_false(made.seen.ss_flags & SS_DISABLE);
    assert_int_equal(made.seen.ss_size, 64 * 1024);
    assert_false(mapped(made.seen.ss_sp));  /* nothing mapped there any more */
    /* A thread with its own keeps it. */
    assert_int_equal(pthread_create(&th, NULL, runs_debug_task, &own), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_ptr_equal(own.seen.ss_sp, own.own_sp);
}

/* ---------------------------------------------------------------- */
/* Misplaced task creation and runs                                    */

struct from_thread {
    urio_loop_t *loop;
    urio_future_t *task;
    int err, run;
};

static void *creates_task_elsewhere(void *arg)
{
    struct from_thread *x = arg;
    errno = 0;
    x->task = urio_task_create(x->loop, URIO_CORO(sets_flag, NULL));
    x->err = errno;
    return NULL;
}

static void create_from_thread(void *arg)
{
    struct from_thread *x = arg;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, creates_task_elsewhere, x), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    urio_loop_stop(x->loop);
}

static void *runs_loop_elsewhere(void *arg)
{
    struct from_thread *x = arg;
    x->run = urio_loop_run_forever(x->loop);
    return NULL;
}

static void test_task_create_and_run_refused_elsewhere(void **state)
{
    (void)state;
    test_log_capture();
    ran_flag = false;
    /* No loop given and none running. */
    errno = 0;
    assert_null(urio_task_create(NULL, URIO_CORO(sets_flag, NULL)));
    assert_int_equal(errno, EINVAL);
    /* Another thread, while the loop runs. */
    struct from_thread x = { .loop = test_loop_new() };
    urio_call_soon(x.loop, create_from_thread, &x);
    assert_int_equal(urio_loop_run_forever(x.loop), 0);
    assert_null(x.task);
    assert_int_equal(x.err, EPERM);
    assert_log_contains("ERROR urio_task_create(): Non-thread-safe operation");
    /* A loop with a task suspended here cannot be run from another thread. */
    urio_future_t *t = urio_spawn(x.loop, sleeps_forever, NULL);
    urio_call_soon(x.loop, test_stop_cb, x.loop);
    assert_int_equal(urio_loop_run_forever(x.loop), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, runs_loop_elsewhere, &x), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(x.run, -EPERM);
    assert_log_contains("ERROR urio_loop_run_forever(): this loop has tasks suspended on "
                        "another thread; run it on that thread");
    urio_future_cancel(t);
    assert_int_equal(urio_loop_run_until_complete(x.loop, t), -ECANCELED);
    urio_future_unref(t);
    test_loop_close(x.loop);
    assert_false(ran_flag);
    assert_int_equal(test_log_count("never awaited"), 0);
}

/* A task made from a coroutine without a site (a binding's): described by name alone. */
static int fails_quietly(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return -EIO;
}

static void test_task_without_site(void **state)
{
    (void)state;
    test_log_capture();
    urio_loop_t *loop = test_loop_new();
    urio_task_opts_t named = { .name = "anon" };
    urio_future_t *t = urio_task_create_opts(loop, urio_coro_create(fails_quietly, NULL, NULL),
                                             &named);
    assert_non_null(t);
    urio_call_soon(loop, test_stop_cb, loop);       /* after the task's step */
    urio_loop_run_forever(loop);
    assert_true(urio_future_done(t));
    urio_future_unref(t);           /* its error never read: reported, by name */
    t = urio_task_create(loop, urio_coro_create(fails_quietly, NULL, NULL));
    assert_string_equal(urio_task_name(t), "?");
    urio_loop_run_until_complete(loop, t);
    assert_int_equal(urio_future_set_result(t, NULL), -EINVAL);     /* a task: refused */
    urio_future_unref(t);
    test_loop_close(loop);
    assert_log_contains("Task exception was never retrieved\nfuture: <Task finished 'anon'>");
    assert_log_contains("<Task finished '?'> gets its outcome from urio");
}

/* wait_for's waiter cancelled: what it waited for is cancelled too (asyncio.wait_for). */
static int waits_long_for(void *arg, void **res)
{
    (void)res;
    return urio_wait_for(arg, 3600 * 1000 * MS, NULL);
}

static void test_task_wait_for_cancelled_cancels_inner(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *inner = test_future_new(loop);
    urio_future_t *t = urio_spawn(loop, waits_long_for, inner);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_true(urio_future_cancel(t));
    assert_int_equal(urio_loop_run_until_complete(loop, t), -ECANCELED);
    assert_true(urio_future_cancelled(inner));
    urio_future_unref(t);
    urio_future_unref(inner);
    test_loop_close(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_task_results_errors_and_order),
        URIO_TEST(test_task_slow_last_step_of_forgotten_task),
        URIO_TEST(test_task_cancel_in_sleep),
        URIO_TEST(test_task_shield),
        URIO_TEST(test_task_wait_for_times_out),
        URIO_TEST(test_task_await_outside_task_refused),
        URIO_TEST(test_task_closed_coro_quiet),
        URIO_TEST(test_task_never_awaited_in_loop),
        URIO_TEST(test_task_destroyed_pending),
        URIO_TEST(test_task_run_cancels_leftovers),
        URIO_TEST(test_task_exception_never_retrieved),
        URIO_TEST(test_task_run_waits_for_shielded_leftover),
        URIO_TEST(test_task_run_coroutine_threadsafe),
        URIO_TEST(test_task_100000_alive),
        URIO_TEST(test_task_slow_step_reported),
        URIO_TEST(test_task_review_regressions),
        URIO_TEST(test_task_threadsafe_future_settled_at_close),
        URIO_TEST(test_task_threadsafe_future_completes_in_last_turn),
        URIO_TEST(test_task_dropped_failed_task_reported_at_close),
        URIO_TEST(test_task_traceback_from_another_directory),
        cmocka_unit_test(test_task_stack_overflow_reported),
        URIO_TEST(test_task_gather),
        URIO_TEST(test_task_group),
        URIO_TEST(test_task_cancel_in_gather),
        URIO_TEST(test_task_cancel_in_group_wait),
        cmocka_unit_test(test_task_never_awaited_at_exit),
        URIO_TEST(test_task_cancel_at_future_and_task_awaits),
        URIO_TEST(test_task_never_awaited_debug_stack),
        URIO_TEST(test_task_run_refused),
        URIO_TEST(test_task_threadsafe_cancelled_before_start),
        URIO_TEST(test_task_fail_function_form),
        URIO_TEST(test_task_sleep_zero_yields),
        URIO_TEST(test_task_fp_env_per_task),
        URIO_TEST(test_task_stack_size_refused),
        cmocka_unit_test(test_task_stack_beyond_address_space),
        cmocka_unit_test(test_task_other_segv_not_called_overflow),
        URIO_TEST(test_task_debug_alternate_signal_stack),
        URIO_TEST(test_task_create_and_run_refused_elsewhere),
        URIO_TEST(test_task_without_site),
        URIO_TEST(test_task_wait_for_cancelled_cancels_inner),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
