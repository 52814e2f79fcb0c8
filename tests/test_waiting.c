/*
 * test_waiting.c — waiting on several futures and cancelling with intent,
 * each case written from the asyncio test it mirrors: urio_wait
 * (asyncio.wait), as_completed, gather with return_exceptions and as a
 * cancellable future (test_cancel_gather_1), shield of one future, cancel
 * messages, cancelling/uncancel, all_tasks, and the two regressions of
 * issue 12 (a pending cancel cancels what is then awaited: bpo-34872; the
 * creation stack of a task destroyed pending: test_log_destroyed_pending_task).
 */
#include "helpers.h"

/* Runs fn as urio_run's main task; returns its outcome. */
static int run_main(urio_coro_fn fn, void *arg)
{
    return urio_run(urio_coro_create(fn, arg, URIO_SITE(fn)), NULL, NULL);
}

static int sleeper(void *arg, void **res)
{
    int err = urio_sleep((uint64_t)(uintptr_t)arg * MS);
    if (err < 0)
        return err;
    *res = arg;
    return 0;
}

static int failer(void *arg, void **res)
{
    (void)res;
    urio_sleep((uint64_t)(uintptr_t)arg * MS);
    return urio_task_fail(-EIO, "failed after %u ms", (unsigned)(uintptr_t)arg);
}

#define SLEEPER(ms) urio_spawn(urio_loop_current(), sleeper, (void *)(uintptr_t)(ms))
#define FAILER(ms)  urio_spawn(urio_loop_current(), failer, (void *)(uintptr_t)(ms))

static void unref_all(urio_future_t **fs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        urio_future_unref(fs[i]);
}

/* ---------------------------------------------------------------- */
/* issue 12 point 2: test_tasks.py test_cancel_awaited_task          */

static int awaits_after_own_cancel(void *arg, void **res)
{
    (void)res;
    urio_future_t **child = arg;
    *child = SLEEPER(60 * 1000);
    urio_future_cancel(urio_task_current());        /* a cancel pending... */
    int ret = urio_await(*child, NULL);              /* ...cancels what it then awaits */
    assert_int_equal(ret, -ECANCELED);
    /* The child is cancelled: it ends at its next step, long before its 60 s sleep. */
    urio_shield_begin();
    assert_int_equal(urio_await(*child, NULL), -ECANCELED);
    urio_shield_end();
    assert_true(urio_future_cancelled(*child));
    return -ECANCELED;
}

static void test_waiting_pending_cancel_cancels_awaited(void **state)
{
    (void)state;
    urio_future_t *child = NULL;
    test_log_capture();
    uint64_t t0 = urio__now();
    assert_int_equal(run_main(awaits_after_own_cancel, &child), -ECANCELED);
    assert_true(urio__now() - t0 < 5000 * MS);
    assert_int_equal(test_log_count("Task was destroyed but it is pending"), 0);
    urio_future_unref(child);
}

/* ---------------------------------------------------------------- */
/* issue 12 point 3: test_log_destroyed_pending_task                 */

struct report {
    int n;
    char traceback[4096];
    char message[128];
};

static void keep_report(urio_loop_t *loop, const urio_error_context_t *ctx, void *ud)
{
    (void)loop;
    struct report *r = ud;
    r->n++;
    snprintf(r->message, sizeof r->message, "%s", ctx->message ? ctx->message : "");
    snprintf(r->traceback, sizeof r->traceback, "%s",
             ctx->source_traceback ? ctx->source_traceback : "");
}

static int forever(void *arg, void **res)
{
    (void)res;
    return urio_await(arg, NULL);       /* never completed: pending at close */
}

static void __attribute__((noinline)) spawn_forever(urio_loop_t *loop, urio_future_t *never)
{
    urio_future_t *t = urio_spawn(loop, forever, never);
    assert_non_null(t);
    urio_future_unref(t);
}

static void test_waiting_destroyed_pending_has_creation_stack(void **state)
{
    (void)state;
    urio_loop_opts_t opts = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&opts);
    struct report r = { 0 };
    urio_loop_set_exception_handler(loop, keep_report, &r);
    urio_future_t *never = test_future_new(loop);
    spawn_forever(loop, never);
    urio_call_later(loop, 5 * MS, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    test_loop_close(loop);
    urio_future_unref(never);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.message, "Task was destroyed but it is pending!");
    if (!URIO_DEBUG_CHECKS)
        return;     /* creation stacks compiled out */
    if (strstr(r.traceback, "Task created at (most recent call last):") == NULL ||
        strstr(r.traceback, "spawn_forever") == NULL)
        fail_msg("no creation stack naming spawn_forever:\n%s", r.traceback);
}

/* ---------------------------------------------------------------- */
/* urio_wait                                                          */

static int wait_first_completed(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *fs[3] = { SLEEPER(200), SLEEPER(5), SLEEPER(300) };
    bool done[3];
    assert_int_equal(urio_wait(fs, 3, URIO_FIRST_COMPLETED, -1, done), 1);
    assert_false(done[0]);
    assert_true(done[1]);
    assert_false(done[2]);
    assert_false(urio_future_cancelled(fs[0]));     /* wait cancels nothing */
    /* ALL_COMPLETED then waits for the rest. */
    assert_int_equal(urio_wait(fs, 3, URIO_ALL_COMPLETED, -1, done), 3);
    for (int i = 0; i < 3; i++)
        assert_true(done[i] && urio_future_result(fs[i], NULL) == 0);
    unref_all(fs, 3);
    return 0;
}

static void test_waiting_wait_first_and_all_completed(void **state)
{
    (void)state;
    assert_int_equal(run_main(wait_first_completed, NULL), 0);
}

static int wait_first_exception(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *fs[3] = { SLEEPER(300), FAILER(5), SLEEPER(2) };
    bool done[3];
    /* The sleeper of 2 ms finishing first does not end a FIRST_EXCEPTION wait. */
    assert_int_equal(urio_wait(fs, 3, URIO_FIRST_EXCEPTION, -1, done), 2);
    assert_false(done[0]);
    assert_int_equal(urio_future_result(fs[1], NULL), -EIO);
    assert_true(done[2]);
    urio_future_cancel(fs[0]);
    assert_int_equal(urio_wait(fs, 3, URIO_ALL_COMPLETED, -1, NULL), 3);
    /* With no failure at all, FIRST_EXCEPTION is ALL_COMPLETED. */
    urio_future_t *gs[2] = { SLEEPER(1), SLEEPER(3) };
    assert_int_equal(urio_wait(gs, 2, URIO_FIRST_EXCEPTION, -1, NULL), 2);
    unref_all(fs, 3);
    unref_all(gs, 2);
    return 0;
}

static void test_waiting_wait_first_exception(void **state)
{
    (void)state;
    assert_int_equal(run_main(wait_first_exception, NULL), 0);
}

static int wait_timeouts(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *fs[2] = { SLEEPER(300), SLEEPER(400) };
    bool done[2] = { true, true };
    uint64_t t0 = urio__now();
    assert_int_equal(urio_wait(fs, 2, URIO_ALL_COMPLETED, 10 * (int64_t)MS, done), 0);
    assert_true(urio__now() - t0 >= 10 * MS);
    assert_false(done[0] || done[1]);
    assert_false(urio_future_done(fs[0]));          /* a time-out cancels nothing */
    assert_int_equal(urio_wait(fs, 2, URIO_ALL_COMPLETED, 0, NULL), 0);    /* just look */
    /* Bad input. */
    assert_int_equal(urio_wait(fs, 0, URIO_ALL_COMPLETED, -1, NULL), -EINVAL);
    assert_int_equal(urio_wait(NULL, 2, URIO_ALL_COMPLETED, -1, NULL), -EINVAL);
    assert_int_equal(urio_wait(fs, 2, 42, -1, NULL), -EINVAL);
    assert_int_equal(urio_wait(fs, 2, URIO_ALL_COMPLETED, -5, NULL), -EINVAL);
    urio_future_t *self[1] = { urio_task_current() };
    assert_int_equal(urio_wait(self, 1, URIO_ALL_COMPLETED, -1, NULL), -EDEADLK);
    for (int i = 0; i < 2; i++)
        urio_future_cancel(fs[i]);
    assert_int_equal(urio_wait(fs, 2, URIO_ALL_COMPLETED, -1, NULL), 2);
    unref_all(fs, 2);
    return 0;
}

static void test_waiting_wait_timeout_and_bad_input(void **state)
{
    (void)state;
    assert_int_equal(run_main(wait_timeouts, NULL), 0);
    assert_int_equal(urio_wait(NULL, 0, URIO_ALL_COMPLETED, -1, NULL), -EPERM);
}

static int waits_then_cancelled(void *arg, void **res)
{
    (void)res;
    urio_future_t *f = arg;
    return urio_wait(&f, 1, URIO_ALL_COMPLETED, -1, NULL);
}

static int wait_cancelled(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *slow = SLEEPER(100);
    urio_future_t *w = urio_spawn(urio_loop_current(), waits_then_cancelled, slow);
    urio_sleep(2 * MS);
    urio_future_cancel(w);
    assert_int_equal(urio_await(w, NULL), -ECANCELED);
    assert_false(urio_future_done(slow));           /* the waiter's cancel is its own */
    assert_int_equal(urio_await(slow, NULL), 0);
    urio_future_unref(w);
    urio_future_unref(slow);
    return 0;
}

static void test_waiting_wait_cancelled_leaves_futures(void **state)
{
    (void)state;
    assert_int_equal(run_main(wait_cancelled, NULL), 0);
}

/* ---------------------------------------------------------------- */
/* as_completed                                                       */

static int as_completed_order(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *fs[4] = { SLEEPER(30), SLEEPER(1), FAILER(15), SLEEPER(45) };
    urio_as_completed_t *it;
    assert_int_equal(urio_as_completed_new(&it, fs, 4, -1), 0);
    urio_future_t *order[4], *f;
    int k = 0, ret;
    while ((ret = urio_as_completed_next(it, &f)) == 1) {
        assert_true(urio_future_done(f));
        order[k++] = f;
    }
    assert_int_equal(ret, 0);
    assert_int_equal(k, 4);
    assert_ptr_equal(order[0], fs[1]);
    assert_ptr_equal(order[1], fs[2]);
    assert_ptr_equal(order[2], fs[0]);
    assert_ptr_equal(order[3], fs[3]);
    assert_int_equal(urio_future_result(order[1], NULL), -EIO);
    assert_int_equal(urio_as_completed_next(it, &f), 0);
    urio_as_completed_free(it);

    /* A timeout for the whole series. */
    urio_future_t *gs[2] = { SLEEPER(1), SLEEPER(500) };
    assert_int_equal(urio_as_completed_new(&it, gs, 2, 50 * (int64_t)MS), 0);
    assert_int_equal(urio_as_completed_next(it, &f), 1);
    assert_ptr_equal(f, gs[0]);
    assert_int_equal(urio_as_completed_next(it, &f), -ETIMEDOUT);
    assert_null(f);
    urio_as_completed_free(it);     /* before gs[1] is done: its callback is taken back */
    urio_future_cancel(gs[1]);
    assert_int_equal(urio_await(gs[1], NULL), -ECANCELED);
    unref_all(fs, 4);
    unref_all(gs, 2);
    return 0;
}

static void test_waiting_as_completed(void **state)
{
    (void)state;
    assert_int_equal(run_main(as_completed_order, NULL), 0);
    urio_as_completed_t *it = (urio_as_completed_t *)1;
    assert_int_equal(urio_as_completed_new(&it, NULL, 0, -1), -EINVAL);
    assert_null(it);
}

/* ---------------------------------------------------------------- */
/* gather                                                             */

static int gather_return_exceptions(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *fs[3] = { SLEEPER(5), FAILER(1), SLEEPER(10) };
    void *results[3];
    int errors[3];
    urio_gather_opts_t opts = { .return_exceptions = true, .errors = errors };
    assert_int_equal(urio_gather_opts(fs, 3, results, &opts), 0);
    assert_int_equal(errors[0], 0);
    assert_int_equal(errors[1], -EIO);
    assert_int_equal(errors[2], 0);
    assert_int_equal((uintptr_t)results[0], 5);
    assert_null(results[1]);
    assert_int_equal((uintptr_t)results[2], 10);
    assert_false(urio_future_cancelled(fs[2]));     /* nothing was cancelled */
    unref_all(fs, 3);
    /* Without it: the failure cancels the rest, and says which it was. */
    urio_future_t *gs[3] = { SLEEPER(300), FAILER(1), SLEEPER(400) };
    size_t failed = 99;
    urio_gather_opts_t fast = { .errors = errors, .failed = &failed };
    assert_int_equal(urio_gather_opts(gs, 3, results, &fast), -EIO);
    assert_int_equal(failed, 1);
    assert_int_equal(errors[0], -ECANCELED);
    assert_int_equal(errors[2], -ECANCELED);
    unref_all(gs, 3);
    return 0;
}

static void test_waiting_gather_return_exceptions(void **state)
{
    (void)state;
    assert_int_equal(run_main(gather_return_exceptions, NULL), 0);
}

/* asyncio's test_cancel_gather_1: gather as a future, cancelled from outside any task. */
struct gather_outside {
    urio_loop_t *loop;
    urio_future_t *children[2];
    urio_future_t *g;
    int done_calls;
};

static void gather_done(urio_future_t *f, void *arg)
{
    struct gather_outside *x = arg;
    assert_true(urio_future_cancelled(f));
    x->done_calls++;
    urio_loop_stop(x->loop);
}

static void cancel_gathering(void *arg)
{
    struct gather_outside *x = arg;
    assert_true(urio_future_cancel_msg(x->g, "no longer %s", "needed"));
    assert_false(urio_future_done(x->g));   /* ends once its children have */
}

static void test_waiting_gather_future_cancelled_outside_task(void **state)
{
    (void)state;
    struct gather_outside x = { .loop = test_loop_new() };
    x.children[0] = test_future_new(x.loop);
    x.children[1] = urio_spawn(x.loop, sleeper, (void *)(uintptr_t)(60 * 1000));
    assert_int_equal(urio_gather_new(&x.g, x.loop, x.children, 2, NULL), 0);
    assert_int_equal(urio_future_add_done_callback(x.g, gather_done, &x), 0);
    urio_call_soon(x.loop, cancel_gathering, &x);
    uint64_t t0 = urio__now();
    urio_loop_run_forever(x.loop);
    assert_true(urio__now() - t0 < 5000 * MS);
    assert_int_equal(x.done_calls, 1);
    assert_true(urio_future_cancelled(x.children[0]));
    assert_true(urio_future_cancelled(x.children[1]));
    assert_string_equal(urio_future_error_message(x.g), "no longer needed");
    assert_string_equal(urio_future_error_message(x.children[0]), "no longer needed");
    urio_future_unref(x.g);
    unref_all(x.children, 2);
    /* Empty: done at once. */
    urio_future_t *g;
    assert_int_equal(urio_gather_new(&g, x.loop, NULL, 0, NULL), 0);
    assert_true(urio_future_done(g));
    urio_future_unref(g);
    assert_int_equal(urio_gather_new(NULL, x.loop, NULL, 0, NULL), -EINVAL);
    test_loop_close(x.loop);
}

/* ---------------------------------------------------------------- */
/* shield                                                             */

static int awaits_shield(void *arg, void **res)
{
    (void)res;
    urio_future_t *outer;
    assert_int_equal(urio_shield_new(&outer, arg), 0);
    int ret = urio_await(outer, NULL);
    urio_future_unref(outer);
    return ret;
}

static int shield_scenario(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *inner = SLEEPER(20);
    urio_future_t *waiter = urio_spawn(urio_loop_current(), awaits_shield, inner);
    urio_sleep(2 * MS);
    urio_future_cancel(waiter);
    assert_int_equal(urio_await(waiter, NULL), -ECANCELED);
    assert_false(urio_future_done(inner));          /* shielded: still running */
    void *r;
    assert_int_equal(urio_await(inner, &r), 0);
    assert_int_equal((uintptr_t)r, 20);
    /* The outer mirrors the inner when nobody cancels it. */
    urio_future_t *inner2 = FAILER(1), *outer;
    assert_int_equal(urio_shield_new(&outer, inner2), 0);
    assert_int_equal(urio_await(outer, NULL), -EIO);
    assert_string_equal(urio_future_error_message(outer), "failed after 1 ms");
    urio_future_unref(outer);
    urio_future_unref(inner2);
    urio_future_unref(waiter);
    urio_future_unref(inner);
    return 0;
}

static void test_waiting_shield_one_future(void **state)
{
    (void)state;
    assert_int_equal(run_main(shield_scenario, NULL), 0);
}

/* ---------------------------------------------------------------- */
/* Cancel messages; cancelling/uncancel; all_tasks                     */

static int reads_its_cancel(void *arg, void **res)
{
    (void)res;
    char *seen = arg;
    int ret = urio_sleep(60 * 1000 * MS);
    assert_int_equal(ret, -ECANCELED);
    snprintf(seen, 64, "%s", urio_task_cancel_message(urio_task_current()));
    return ret;
}

static int cancel_messages(void *arg, void **res)
{
    (void)arg;
    (void)res;
    char seen[64] = "";
    urio_future_t *t = urio_spawn(urio_loop_current(), reads_its_cancel, seen);
    urio_yield();
    assert_true(urio_future_cancel_msg(t, "deadline %d", 7));
    assert_int_equal(urio_await(t, NULL), -ECANCELED);
    assert_string_equal(seen, "deadline 7");
    assert_true(urio_future_cancelled(t));
    assert_string_equal(urio_future_error_message(t), "deadline 7");
    urio_future_unref(t);
    /* A plain future keeps its cancel's message. */
    urio_future_t *f = test_future_new(urio_loop_current());
    assert_true(urio_future_cancel_msg(f, "%s", "stop"));
    assert_string_equal(urio_future_error_message(f), "stop");
    assert_false(urio_future_cancel_msg(f, "again"));
    urio_future_unref(f);
    return 0;
}

static void test_waiting_cancel_messages(void **state)
{
    (void)state;
    assert_int_equal(run_main(cancel_messages, NULL), 0);
}

static int uncancels_itself(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *me = urio_task_current();
    assert_int_equal(urio_task_cancelling(me), 0);
    urio_future_cancel(me);
    urio_future_cancel(me);
    assert_int_equal(urio_task_cancelling(me), 2);
    assert_int_equal(urio_sleep(1 * MS), -ECANCELED);
    assert_int_equal(urio_task_uncancel(me), 1);
    assert_int_equal(urio_sleep(1 * MS), -ECANCELED);      /* one request is still there */
    assert_int_equal(urio_task_uncancel(me), 0);
    assert_int_equal(urio_sleep(1 * MS), 0);                /* withdrawn: awaits run again */
    assert_int_equal(urio_task_uncancel(me), 0);            /* never below zero */
    return 0;
}

static void test_waiting_cancelling_and_uncancel(void **state)
{
    (void)state;
    assert_int_equal(run_main(uncancels_itself, NULL), 0);
}

static int lists_tasks(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t *a = SLEEPER(5), *b = SLEEPER(200);
    urio_future_t *all[8];
    size_t n = urio_all_tasks(loop, all, 8);
    assert_int_equal(n, 3);                     /* main, a, b */
    bool seen_a = false, seen_b = false, seen_me = false;
    for (size_t i = 0; i < n; i++) {
        seen_a |= all[i] == a;
        seen_b |= all[i] == b;
        seen_me |= all[i] == urio_task_current();
        urio_future_unref(all[i]);
    }
    assert_true(seen_a && seen_b && seen_me);
    assert_int_equal(urio_all_tasks(loop, all, 1), 3);     /* room for one: the count */
    urio_future_unref(all[0]);
    assert_int_equal(urio_await(a, NULL), 0);
    assert_int_equal(urio_all_tasks(loop, NULL, 0), 2);    /* a finished */
    assert_int_equal(urio_await(b, NULL), 0);
    urio_future_unref(a);
    urio_future_unref(b);
    return 0;
}

static void test_waiting_all_tasks(void **state)
{
    (void)state;
    assert_int_equal(run_main(lists_tasks, NULL), 0);
}

/* ---------------------------------------------------------------- */
/* Bad input to the waiting calls: refused, nothing made, nothing run   */

static int never_runs(void *arg, void **res)
{
    (void)arg;
    (void)res;
    fail_msg("a coroutine given to a refused call ran");
    return 0;
}

static int fails_now(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return urio_task_fail(-EIO, "early");
}

static int waits_group(void *arg, void **res)
{
    (void)res;
    return urio_task_group_wait(arg);
}

static int bad_calls(void *arg, void **res)
{
    (void)res;
    urio_future_t *theirs = arg;            /* a future of another loop */
    urio_future_t *mine = SLEEPER(1);
    urio_future_t *self = urio_task_current();
    urio_future_t *with_null[] = { mine, NULL }, *mixed[] = { mine, theirs };
    /* gather, wait, as_completed: a NULL array, a NULL entry, another loop's future. */
    assert_int_equal(urio_gather(NULL, 2, NULL, NULL), -EINVAL);
    assert_int_equal(urio_gather(with_null, 2, NULL, NULL), -EINVAL);
    assert_int_equal(urio_gather(mixed, 2, NULL, NULL), -EINVAL);
    assert_int_equal(urio_gather(&self, 1, NULL, NULL), -EDEADLK);
    assert_int_equal(urio_wait(mixed, 2, URIO_ALL_COMPLETED, -1, NULL), -EINVAL);
    urio_as_completed_t *it = (urio_as_completed_t *)mine;
    assert_int_equal(urio_as_completed_new(NULL, &mine, 1, -1), -EINVAL);
    assert_int_equal(urio_as_completed_new(&it, mixed, 2, -1), -EINVAL);
    assert_null(it);
    assert_int_equal(urio_as_completed_new(&it, &mine, 1, -2), -EINVAL);
    urio_future_t *next = NULL;
    assert_int_equal(urio_as_completed_next(NULL, &next), -EINVAL);
    /* as_completed with a deadline that passes before anything completes. */
    urio_future_t *slow = SLEEPER(60 * 1000);
    assert_int_equal(urio_as_completed_new(&it, &slow, 1, 0), 0);
    assert_int_equal(urio_as_completed_next(it, NULL), -EINVAL);
    assert_int_equal(urio_as_completed_next(it, &next), -ETIMEDOUT);
    assert_null(next);
    urio_as_completed_free(it);
    urio_as_completed_free(NULL);
    urio_future_cancel(slow);
    assert_int_equal(urio_await(slow, NULL), -ECANCELED);
    urio_future_unref(slow);
    /* await: another loop's future, the task itself. */
    assert_int_equal(urio_await(theirs, NULL), -EINVAL);
    assert_int_equal(urio_await(self, NULL), -EDEADLK);
    assert_int_equal(urio_wait_for(NULL, MS, NULL), -EINVAL);

    /* Task groups: no group, no coroutine (the one given is freed, never run). */
    errno = 0;
    assert_null(urio_task_group_spawn(NULL, URIO_CORO(never_runs, NULL)));
    assert_int_equal(errno, EINVAL);
    urio_task_group_t *g = NULL;
    assert_int_equal(urio_task_group_new(NULL), -EINVAL);
    assert_int_equal(urio_task_group_new(&g), 0);
    errno = 0;
    assert_null(urio_task_group_spawn(g, NULL));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(urio_task_group_wait(NULL), -EINVAL);
    assert_null(urio_task_group_error_message(NULL));
    urio_task_group_free(NULL);
    /* One waiter at a time: a second is refused while the first waits. */
    urio_future_t *child = urio_task_group_spawn(g, URIO_CORO(sleeper, (void *)(uintptr_t)5));
    assert_non_null(child);
    urio_future_t *other_waiter = urio_spawn(NULL, waits_group, g);
    urio_yield();                           /* it waits now */
    assert_int_equal(urio_task_group_wait(g), -EBUSY);
    assert_int_equal(urio_await(other_waiter, NULL), 0);
    urio_future_unref(other_waiter);
    /* A failing group cancels what is spawned into it afterwards, at once. */
    urio_future_t *failing = urio_task_group_spawn(g, URIO_CORO(fails_now, NULL));
    assert_int_equal(urio_task_group_wait(g), -EIO);
    urio_future_t *late = urio_task_group_spawn(g, URIO_CORO(sleeper, (void *)(uintptr_t)60000));
    assert_non_null(late);
    assert_int_equal(urio_task_group_wait(g), -EIO);
    assert_true(urio_future_cancelled(late));
    assert_non_null(strstr(urio_task_group_error_message(g), "child 'fails_now' (created at "));
    assert_int_equal(urio_future_result(child, NULL), 0);
    assert_int_equal(urio_future_result(failing, NULL), -EIO);
    urio_task_group_free(g);        /* and with it the children (the group's references) */
    assert_int_equal(urio_await(mine, NULL), 0);
    urio_future_unref(mine);
    return 0;
}

struct wrong_thread {
    urio_loop_t *loop;
    urio_future_t *f;
    int gather, shield, as_completed;
    size_t all_tasks;
};

static void *calls_from_other_thread(void *arg)
{
    struct wrong_thread *w = arg;
    urio_future_t *out = NULL;
    urio_as_completed_t *it = NULL;
    w->gather = urio_gather_new(&out, w->loop, &w->f, 1, NULL);
    w->shield = urio_shield_new(&out, w->f);
    w->as_completed = urio_as_completed_new(&it, &w->f, 1, -1);
    urio_future_t *tasks[4];
    w->all_tasks = urio_all_tasks(w->loop, tasks, 4);
    return NULL;
}

/* On the loop thread while it runs: another thread's calls are refused. */
static void call_from_other_thread(void *arg)
{
    struct wrong_thread *w = arg;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, calls_from_other_thread, w), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    urio_loop_stop(w->loop);
}

static void test_waiting_bad_input_refused(void **state)
{
    (void)state;
    test_log_capture();
    urio_loop_t *other = test_loop_new();
    urio_future_t *theirs = test_future_new(other);
    assert_int_equal(run_main(bad_calls, theirs), 0);

    /* Outside any task, and with NULLs. */
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = test_future_new(loop), *out = f;
    urio_future_t *mixed[] = { f, theirs }, *with_null[] = { f, NULL };
    assert_int_equal(urio_gather_new(&out, NULL, &f, 1, NULL), -EINVAL);
    assert_null(out);
    assert_int_equal(urio_gather_new(&out, loop, NULL, 1, NULL), -EINVAL);
    assert_int_equal(urio_gather_new(&out, loop, with_null, 2, NULL), -EINVAL);
    assert_int_equal(urio_gather_new(&out, loop, mixed, 2, NULL), -EINVAL);
    assert_int_equal(urio_shield_new(NULL, f), -EINVAL);
    out = f;
    assert_int_equal(urio_shield_new(&out, NULL), -EINVAL);
    assert_null(out);
    urio_task_group_t *g = (urio_task_group_t *)f;
    assert_int_equal(urio_task_group_new(&g), -EPERM);
    assert_int_equal(urio_await_coro(URIO_CORO(never_runs, NULL), NULL), -EPERM);
    assert_log_contains("ERROR urio_await_coro(): called outside a task");
    urio_as_completed_t *it;
    assert_int_equal(urio_as_completed_new(&it, &f, 1, -1), 0);
    urio_future_t *next;
    assert_int_equal(urio_as_completed_next(it, &next), -EPERM);
    urio_as_completed_free(it);
    assert_int_equal(urio_yield(), -EPERM);
    assert_int_equal(urio_wait_for(f, MS, NULL), -EPERM);
    assert_int_equal(urio_shield_begin(), -EPERM);
    assert_int_equal(urio_shield_end(), -EPERM);
    assert_int_equal(urio_gather(&f, 1, NULL, NULL), -EPERM);
    /* A plain future is no task: the task calls answer nothing. */
    assert_null(urio_task_name(f));
    assert_int_equal(urio_task_cancelling(f), 0);
    assert_int_equal(urio_task_uncancel(f), 0);
    assert_null(urio_task_cancel_message(f));
    urio_future_t *tasks[2];
    assert_int_equal(urio_all_tasks(NULL, tasks, 2), 0);
    assert_int_equal(urio_all_tasks(loop, tasks, 2), 0);   /* never had a task */

    /* From another thread while the loop runs. */
    struct wrong_thread w = { .loop = loop, .f = f };
    urio_call_soon(loop, call_from_other_thread, &w);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    assert_int_equal(w.gather, -EPERM);
    assert_int_equal(w.shield, -EPERM);
    assert_int_equal(w.as_completed, -EPERM);
    assert_int_equal(w.all_tasks, 0);

    /* A closed loop's futures: no new gathering or shield on them. */
    test_loop_close(other);
    assert_int_equal(urio_gather_new(&out, other, &theirs, 1, NULL), -ESHUTDOWN);
    assert_int_equal(urio_shield_new(&out, theirs), -ESHUTDOWN);
    assert_log_contains("ERROR urio_gather_new(): Event loop is closed");
    assert_log_contains("ERROR urio_shield_new(): Event loop is closed");
    urio_future_unref(theirs);
    urio_future_unref(f);
    test_loop_close(loop);
    assert_int_equal(test_log_count("never awaited"), 0);
}

/* gather with a cancel already pending: it returns -ECANCELED, and only once every
 * child has ended (cancelled), so none outlives the call. */
static int gathers_with_cancel_pending(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *fs[2] = { SLEEPER(60 * 1000), SLEEPER(60 * 1000) };
    urio_future_cancel(urio_task_current());
    int ret = urio_gather(fs, 2, NULL, NULL);
    assert_int_equal(ret, -ECANCELED);
    assert_true(urio_future_cancelled(fs[0]));
    assert_true(urio_future_cancelled(fs[1]));
    unref_all(fs, 2);
    return 0;
}

static void test_waiting_gather_with_cancel_pending(void **state)
{
    (void)state;
    uint64_t t0 = urio__now();
    assert_int_equal(run_main(gathers_with_cancel_pending, NULL), 0);
    assert_true(urio__now() - t0 < 5000 * MS);
}

/* A task group's wait outside any task: refused (EPERM). */
struct group_wait {
    urio_task_group_t *g;
    int ret;
};

static void waits_outside_task(void *arg)
{
    struct group_wait *w = arg;
    w->ret = urio_task_group_wait(w->g);
}

static int group_waited_from_callback(void *arg, void **res)
{
    (void)arg;
    (void)res;
    struct group_wait w = { .ret = 1 };
    assert_int_equal(urio_task_group_new(&w.g), 0);
    urio_call_soon(urio_loop_current(), waits_outside_task, &w);
    urio_yield();                   /* the callback runs meanwhile */
    assert_int_equal(w.ret, -EPERM);
    urio_task_group_free(w.g);
    return 0;
}

static void test_waiting_group_wait_outside_task(void **state)
{
    (void)state;
    assert_int_equal(run_main(group_waited_from_callback, NULL), 0);
}

/* Cancelling a gathering future again while it cancels its children: true, and once. */
static void test_waiting_gather_cancelled_twice(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *children[2] = { test_future_new(loop), test_future_new(loop) };
    urio_future_t *g;
    assert_int_equal(urio_gather_new(&g, loop, children, 2, NULL), 0);
    assert_true(urio_future_cancel_msg(g, "first"));
    assert_true(urio_future_cancel_msg(g, "second"));
    assert_true(urio_future_cancelled(children[0]));
    assert_string_equal(urio_future_error_message(children[1]), "first");
    assert_false(urio_future_done(g));              /* it ends when they have */
    assert_int_equal(urio_loop_run_until_complete(loop, g), -ECANCELED);
    assert_true(urio_future_cancelled(g));
    assert_string_equal(urio_future_error_message(g), "first");
    urio_future_unref(g);
    unref_all(children, 2);
    test_loop_close(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_waiting_pending_cancel_cancels_awaited),
        URIO_TEST(test_waiting_destroyed_pending_has_creation_stack),
        URIO_TEST(test_waiting_wait_first_and_all_completed),
        URIO_TEST(test_waiting_wait_first_exception),
        URIO_TEST(test_waiting_wait_timeout_and_bad_input),
        URIO_TEST(test_waiting_wait_cancelled_leaves_futures),
        URIO_TEST(test_waiting_as_completed),
        URIO_TEST(test_waiting_gather_return_exceptions),
        URIO_TEST(test_waiting_gather_future_cancelled_outside_task),
        URIO_TEST(test_waiting_shield_one_future),
        URIO_TEST(test_waiting_cancel_messages),
        URIO_TEST(test_waiting_cancelling_and_uncancel),
        URIO_TEST(test_waiting_all_tasks),
        URIO_TEST(test_waiting_bad_input_refused),
        URIO_TEST(test_waiting_gather_cancelled_twice),
        URIO_TEST(test_waiting_gather_with_cancel_pending),
        URIO_TEST(test_waiting_group_wait_outside_task),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
