/*
 * test_future.c — futures: reference counting, the one transition, done
 * callbacks (never inline, in order, the runner's reference),
 * run_until_complete, "Future exception was never retrieved", futures that
 * outlive their loop, and the wrong-thread refusal.
 */
#include "helpers.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>

#include <stdatomic.h>
#include <unistd.h>

/* ---------------------------------------------------------------- */
/* Shared fixtures                                                   */

/* What done callbacks saw. */
struct seen {
    urio_loop_t *loop;
    urio_future_t *f;
    int order[32];
    int n;
    bool was_done[32];
    int result[32];
    void *value[32];
};

struct tag {
    struct seen *seen;
    int tag;
};

static void record_done(urio_future_t *f, void *arg)
{
    struct tag *t = arg;
    struct seen *s = t->seen;
    assert_true(s->n < 32);
    s->order[s->n] = t->tag;
    s->was_done[s->n] = urio_future_done(f);
    s->value[s->n] = NULL;
    s->result[s->n] = urio_future_result(f, &s->value[s->n]);
    s->n++;
}

/* Runs the loop for a few turns: enough for scheduled runners (and the
 * runners their callbacks schedule) to run. */
static int turns_left;
static void turns_cb(void *arg)
{
    urio_loop_t *loop = arg;
    if (--turns_left <= 0)
        urio_loop_stop(loop);
    else
        urio_call_soon(loop, turns_cb, loop);
}

static void run_turns(urio_loop_t *loop, int turns)
{
    turns_left = turns;
    assert_int_not_equal(urio_call_soon(loop, turns_cb, loop).id, 0);
    assert_int_equal(urio_loop_run_forever(loop), 0);
}

/* An exception handler that keeps copies of every report's context. */
struct reports {
    int n;
    char message[4][128];
    int error[4];
    char error_message[4][256];
    bool has_error_message[4];
    urio_future_t *future[4];
    bool future_done[4];
    char *traceback[4];       /* malloc'd copy, or NULL */
};

static void keep_report(urio_loop_t *loop, const urio_error_context_t *ctx, void *ud)
{
    (void)loop;
    struct reports *r = ud;
    assert_true(r->n < 4);
    int i = r->n++;
    snprintf(r->message[i], sizeof r->message[i], "%s", ctx->message ? ctx->message : "");
    r->error[i] = ctx->error;
    r->has_error_message[i] = ctx->error_message != NULL;
    snprintf(r->error_message[i], sizeof r->error_message[i], "%s",
             ctx->error_message ? ctx->error_message : "");
    r->future[i] = ctx->future;
    r->future_done[i] = ctx->future != NULL && urio_future_done(ctx->future);
    r->traceback[i] = ctx->source_traceback ? strdup(ctx->source_traceback) : NULL;
}

static void reports_free(struct reports *r)
{
    for (int i = 0; i < r->n; i++)
        free(r->traceback[i]);
}

/* ---------------------------------------------------------------- */
/* Reference counting                                                */

static void test_future_new_ref_unref(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    uint64_t before = test_live_blocks();

    urio_future_t *f = test_future_new(loop);
    assert_non_null(f);
    assert_ptr_equal(urio_future_loop(f), loop);
    assert_false(urio_future_done(f));
    assert_false(urio_future_cancelled(f));
    assert_true(test_live_blocks() > before);

    /* Two more references: the future lives until the third unref. */
    assert_ptr_equal(urio_future_ref(f), f);
    assert_ptr_equal(urio_future_ref(f), f);
    urio_future_unref(f);
    urio_future_unref(f);
    assert_true(test_live_blocks() > before);
    assert_int_equal(urio_future_set_result(f, &before), 0);   /* still usable */
    void *v = NULL;
    assert_int_equal(urio_future_result(f, &v), 0);
    assert_ptr_equal(v, &before);
    urio_future_unref(f);
    assert_int_equal(test_live_blocks(), before);

    /* NULL is harmless. */
    assert_null(urio_future_ref(NULL));
    urio_future_unref(NULL);
    assert_false(urio_future_done(NULL));
    assert_false(urio_future_cancelled(NULL));
    assert_int_equal(urio_future_result(NULL, NULL), -EINVAL);
    assert_null(urio_future_error_message(NULL));
    assert_null(urio_future_loop(NULL));
    urio_future_t *none;
    assert_int_equal(urio_future_new(&none, NULL), -EINVAL);
    assert_null(none);
    assert_int_equal(urio_future_new(NULL, loop), -EINVAL);
    test_loop_close(loop);
}

/* ---------------------------------------------------------------- */
/* The transition                                                    */

static void test_future_set_result_then_result(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = test_future_new(loop);
    int payload = 42;
    assert_int_equal(urio_future_result(f, NULL), URIO_ENOTDONE);
    assert_int_equal(urio_future_set_result(f, &payload), 0);
    assert_true(urio_future_done(f));
    assert_false(urio_future_cancelled(f));
    void *v = NULL;
    assert_int_equal(urio_future_result(f, &v), 0);
    assert_ptr_equal(v, &payload);
    assert_int_equal(urio_future_result(f, NULL), 0);   /* value may be NULL */
    assert_null(urio_future_error_message(f));
    urio_future_unref(f);

    /* A NULL result is a result too. */
    f = test_future_new(loop);
    assert_int_equal(urio_future_set_result(f, NULL), 0);
    v = &payload;
    assert_int_equal(urio_future_result(f, &v), 0);
    assert_null(v);
    urio_future_unref(f);
    assert_int_equal(urio_future_set_result(NULL, NULL), -EINVAL);
    test_loop_close(loop);
}

static void test_future_set_error_with_message(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, -EIO, "disk %d failed: %s", 3, "bad sector"), 0);
    assert_true(urio_future_done(f));
    assert_false(urio_future_cancelled(f));
    assert_string_equal(urio_future_error_message(f), "disk 3 failed: bad sector");
    void *v = &v;
    assert_int_equal(urio_future_result(f, &v), -EIO);
    assert_ptr_equal(v, &v);                /* untouched on error */
    urio_future_unref(f);

    /* urio's own codes are errors too; a NULL format means no message. */
    f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, URIO_EBROKENWORKER, NULL), 0);
    assert_null(urio_future_error_message(f));
    assert_int_equal(urio_future_result(f, NULL), URIO_EBROKENWORKER);
    urio_future_unref(f);
    test_loop_close(loop);
}

static void test_future_second_transition_refused(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    int a = 1, b = 2;

    urio_future_t *f = test_future_new(loop);
    assert_int_equal(urio_future_set_result(f, &a), 0);
    assert_int_equal(urio_future_set_result(f, &b), -EINVAL);
    assert_int_equal(urio_future_set_error(f, -EIO, "late %d", 1), -EINVAL);
    assert_false(urio_future_cancel(f));
    assert_false(urio_future_cancelled(f));
    void *v = NULL;
    assert_int_equal(urio_future_result(f, &v), 0);
    assert_ptr_equal(v, &a);
    assert_null(urio_future_error_message(f));
    urio_future_unref(f);

    f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, -EPIPE, "first"), 0);
    assert_int_equal(urio_future_set_result(f, &b), -EINVAL);
    assert_int_equal(urio_future_set_error(f, -EIO, "second"), -EINVAL);
    assert_false(urio_future_cancel(f));
    assert_int_equal(urio_future_result(f, &v), -EPIPE);
    assert_string_equal(urio_future_error_message(f), "first");
    urio_future_unref(f);

    f = test_future_new(loop);
    assert_true(urio_future_cancel(f));
    assert_int_equal(urio_future_set_result(f, &b), -EINVAL);
    assert_int_equal(urio_future_set_error(f, -EIO, "after cancel"), -EINVAL);
    assert_int_equal(urio_future_result(f, NULL), -ECANCELED);
    assert_null(urio_future_error_message(f));
    urio_future_unref(f);
    test_loop_close(loop);
}

static void test_future_set_error_rejects_non_negative(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, 0, "zero"), -EINVAL);
    assert_int_equal(urio_future_set_error(NULL, -EIO, NULL), -EINVAL);
    assert_false(urio_future_done(f));
    assert_int_equal(urio_future_result(f, NULL), URIO_ENOTDONE);
    assert_null(urio_future_error_message(f));
    /* Still pending: a proper transition works. */
    assert_int_equal(urio_future_set_result(f, NULL), 0);
    urio_future_unref(f);
    /* A positive code is taken as its negative, and the mistake is said (issue 14). */
    test_log_capture();
    f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, EIO, "positive"), 0);
    assert_int_equal(urio_future_result(f, NULL), -EIO);
    assert_log_contains("WARNING urio_future_set_error(): error codes are negative errno "
                        "values (-EIO, not EIO): took 5 as -5 (EIO)");
    urio_future_unref(f);
    test_loop_close(loop);
}

static void test_future_cancel(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = test_future_new(loop);
    assert_true(urio_future_cancel(f));
    assert_false(urio_future_cancel(f));
    assert_true(urio_future_done(f));
    assert_true(urio_future_cancelled(f));
    void *v = &v;
    assert_int_equal(urio_future_result(f, &v), -ECANCELED);
    assert_ptr_equal(v, &v);
    urio_future_unref(f);
    assert_false(urio_future_cancel(NULL));

    /* set_error with -ECANCELED is a cancellation. */
    f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, -ECANCELED, "shutting down"), 0);
    assert_true(urio_future_cancelled(f));
    assert_false(urio_future_cancel(f));
    assert_int_equal(urio_future_result(f, NULL), -ECANCELED);
    urio_future_unref(f);
    test_loop_close(loop);
}

static void test_future_result_pending_is_enotdone(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = test_future_new(loop);
    void *v = &v;
    assert_int_equal(urio_future_result(f, &v), URIO_ENOTDONE);
    assert_ptr_equal(v, &v);
    assert_null(urio_future_error_message(f));
    assert_false(urio_future_done(f));
    urio_future_unref(f);    /* a pending future goes quietly */
    test_loop_close(loop);
}

/* ---------------------------------------------------------------- */
/* Done callbacks                                                    */

static void test_future_callbacks_never_inline(void **state)
{
    (void)state;
    struct seen s = { .loop = test_loop_new() };
    struct tag t0 = { &s, 0 }, t1 = { &s, 1 };
    int payload = 7;
    urio_future_t *f = test_future_new(s.loop);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &t0), 0);
    assert_int_equal(urio_future_set_result(f, &payload), 0);
    assert_int_equal(s.n, 0);                   /* not by set_result itself */
    /* Added after completion: scheduled, not called either. */
    assert_int_equal(urio_future_add_done_callback(f, record_done, &t1), 0);
    assert_int_equal(s.n, 0);
    run_turns(s.loop, 3);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.order[0], 0);
    assert_int_equal(s.order[1], 1);
    for (int i = 0; i < 2; i++) {
        assert_true(s.was_done[i]);
        assert_int_equal(s.result[i], 0);
        assert_ptr_equal(s.value[i], &payload);
    }
    /* Each ran once. */
    run_turns(s.loop, 3);
    assert_int_equal(s.n, 2);
    urio_future_unref(f);
    test_loop_close(s.loop);
}

static void test_future_callbacks_run_in_order_added(void **state)
{
    (void)state;
    struct seen s = { .loop = test_loop_new() };
    struct tag t[9];
    urio_future_t *f = test_future_new(s.loop);
    for (int i = 0; i < 9; i++) {   /* past the inline two, and past a regrowth */
        t[i] = (struct tag){ &s, i };
        assert_int_equal(urio_future_add_done_callback(f, record_done, &t[i]), 0);
    }
    assert_int_equal(urio_future_set_error(f, -ETIMEDOUT, "slow"), 0);
    assert_int_equal(s.n, 0);
    run_turns(s.loop, 3);
    assert_int_equal(s.n, 9);
    for (int i = 0; i < 9; i++) {
        assert_int_equal(s.order[i], i);
        assert_true(s.was_done[i]);
        assert_int_equal(s.result[i], -ETIMEDOUT);
    }
    urio_future_unref(f);
    test_loop_close(s.loop);
}

static void test_future_callback_added_after_completion_runs(void **state)
{
    (void)state;
    struct seen s = { .loop = test_loop_new() };
    struct tag t0 = { &s, 10 }, t1 = { &s, 11 };
    urio_future_t *f = test_future_new(s.loop);
    assert_true(urio_future_cancel(f));
    run_turns(s.loop, 2);                       /* nothing registered: nothing runs */
    assert_int_equal(s.n, 0);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &t0), 0);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &t1), 0);
    assert_int_equal(s.n, 0);
    run_turns(s.loop, 2);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.order[0], 10);
    assert_int_equal(s.order[1], 11);
    assert_int_equal(s.result[0], -ECANCELED);
    urio_future_unref(f);
    test_loop_close(s.loop);
}

static struct tag nested_inner;
static void adds_from_inside(urio_future_t *f, void *arg)
{
    record_done(f, arg);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &nested_inner), 0);
    assert_int_equal(((struct tag *)arg)->seen->n, 1);   /* not inline either */
}

static void test_future_callback_added_from_callback_runs(void **state)
{
    (void)state;
    struct seen s = { .loop = test_loop_new() };
    struct tag outer = { &s, 1 }, after = { &s, 2 };
    nested_inner = (struct tag){ &s, 3 };
    urio_future_t *f = test_future_new(s.loop);
    assert_int_equal(urio_future_add_done_callback(f, adds_from_inside, &outer), 0);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &after), 0);
    assert_int_equal(urio_future_set_result(f, NULL), 0);
    run_turns(s.loop, 4);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.order[0], 1);
    assert_int_equal(s.order[1], 2);
    assert_int_equal(s.order[2], 3);
    assert_true(s.was_done[2]);
    urio_future_unref(f);
    test_loop_close(s.loop);
}

static void other_done(urio_future_t *f, void *arg)
{
    record_done(f, arg);
}

static void test_future_remove_done_callback(void **state)
{
    (void)state;
    struct seen s = { .loop = test_loop_new() };
    struct tag a = { &s, 1 }, b = { &s, 2 }, c = { &s, 3 };
    urio_future_t *f = test_future_new(s.loop);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &a), 0);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &b), 0);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &a), 0);
    assert_int_equal(urio_future_add_done_callback(f, other_done, &a), 0);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &c), 0);
    /* Only the exact (fn, arg) pairs go, every one of them. */
    assert_int_equal(urio_future_remove_done_callback(f, record_done, &a), 2);
    assert_int_equal(urio_future_remove_done_callback(f, record_done, &a), 0);
    assert_int_equal(urio_future_remove_done_callback(f, other_done, &b), 0);
    assert_int_equal(urio_future_remove_done_callback(NULL, record_done, &a), 0);
    assert_int_equal(urio_future_set_result(f, NULL), 0);
    run_turns(s.loop, 2);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.order[0], 2);
    assert_int_equal(s.order[1], 1);    /* other_done with &a */
    assert_int_equal(s.order[2], 3);
    urio_future_unref(f);

    /* Removing everything: nothing runs, and the future still completes. */
    s.n = 0;
    f = test_future_new(s.loop);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &a), 0);
    assert_int_equal(urio_future_remove_done_callback(f, record_done, &a), 1);
    assert_true(urio_future_cancel(f));
    run_turns(s.loop, 2);
    assert_int_equal(s.n, 0);
    urio_future_unref(f);

    assert_int_equal(urio_future_add_done_callback(NULL, record_done, &a), -EINVAL);
    f = test_future_new(s.loop);
    assert_int_equal(urio_future_add_done_callback(f, NULL, &a), -EINVAL);
    urio_future_unref(f);
    test_loop_close(s.loop);
}

static void test_future_runner_holds_reference(void **state)
{
    (void)state;
    struct seen s = { .loop = test_loop_new() };
    struct tag t0 = { &s, 0 }, t1 = { &s, 1 };
    uint64_t before = test_live_blocks();
    int payload = 5;
    urio_future_t *f = test_future_new(s.loop);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &t0), 0);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &t1), 0);
    assert_int_equal(urio_future_set_result(f, &payload), 0);
    urio_future_unref(f);                       /* the user's only reference */
    assert_true(test_live_blocks() > before);   /* the runner's keeps it */
    run_turns(s.loop, 2);
    assert_int_equal(s.n, 2);
    for (int i = 0; i < 2; i++) {
        assert_true(s.was_done[i]);
        assert_int_equal(s.result[i], 0);
        assert_ptr_equal(s.value[i], &payload);
    }
    assert_int_equal(test_live_blocks(), before);   /* freed after the runner */

    /* An error nobody else reads: the callback reading it counts as retrieval. */
    struct reports r = { 0 };
    urio_loop_set_exception_handler(s.loop, keep_report, &r);
    s.n = 0;
    f = test_future_new(s.loop);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &t0), 0);
    assert_int_equal(urio_future_set_error(f, -EIO, "x"), 0);
    urio_future_unref(f);
    run_turns(s.loop, 2);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.result[0], -EIO);
    assert_int_equal(r.n, 0);
    assert_int_equal(test_live_blocks(), before);
    test_loop_close(s.loop);
}

/* ---------------------------------------------------------------- */
/* run_until_complete                                                 */

struct completer {
    urio_future_t *f;
    int how;        /* 0 result, 1 error, 2 cancel */
    void *value;
};

static void complete_cb(void *arg)
{
    struct completer *c = arg;
    if (c->how == 0)
        assert_int_equal(urio_future_set_result(c->f, c->value), 0);
    else if (c->how == 1)
        assert_int_equal(urio_future_set_error(c->f, -ECONNRESET, "peer went away"), 0);
    else
        assert_true(urio_future_cancel(c->f));
}

static void test_future_run_until_complete_outcomes(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    struct reports r = { 0 };
    urio_loop_set_exception_handler(loop, keep_report, &r);
    int payload = 9;
    const int expect[3] = { 0, -ECONNRESET, -ECANCELED };
    for (int how = 0; how < 3; how++) {
        urio_future_t *f = test_future_new(loop);
        struct completer c = { f, how, &payload };
        /* Completed a few turns in, by a timer. */
        assert_int_not_equal(urio_call_later(loop, 2 * MS, complete_cb, &c).id, 0);
        assert_int_equal(urio_loop_run_until_complete(loop, f), expect[how]);
        assert_true(urio_future_done(f));
        void *v = NULL;
        assert_int_equal(urio_future_result(f, &v), expect[how]);
        if (how == 0)
            assert_ptr_equal(v, &payload);
        urio_future_unref(f);
    }
    /* Already done: the outcome, at once. */
    urio_future_t *f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, -EIO, NULL), 0);
    assert_int_equal(urio_loop_run_until_complete(loop, f), -EIO);
    urio_future_unref(f);
    /* run_until_complete read every error: nothing was reported. */
    assert_int_equal(r.n, 0);
    assert_int_equal(urio_loop_run_until_complete(NULL, NULL), -EINVAL);
    assert_int_equal(urio_loop_run_until_complete(loop, NULL), -EINVAL);
    test_loop_close(loop);
}

static void test_future_run_until_complete_stopped(void **state)
{
    (void)state;
    struct seen s = { .loop = test_loop_new() };
    urio_future_t *f = test_future_new(s.loop);
    assert_int_not_equal(urio_call_soon(s.loop, test_stop_cb, s.loop).id, 0);
    assert_int_equal(urio_loop_run_until_complete(s.loop, f), URIO_ESTOPPED);
    assert_false(urio_future_done(f));
    /* The run's own registration is gone: completing f later does not stop
     * an unrelated run early. */
    struct completer c = { f, 0, NULL };
    assert_int_not_equal(urio_call_soon(s.loop, complete_cb, &c).id, 0);
    run_turns(s.loop, 5);
    assert_int_equal(turns_left, 0);            /* the run went its full length */
    assert_true(urio_future_done(f));
    assert_int_equal(urio_loop_run_until_complete(s.loop, f), 0);
    urio_future_unref(f);

    /* Stopped by a timer while f stays pending, then completed by a later run. */
    f = test_future_new(s.loop);
    assert_int_not_equal(urio_call_later(s.loop, 1 * MS, test_stop_cb, s.loop).id, 0);
    assert_int_equal(urio_loop_run_until_complete(s.loop, f), URIO_ESTOPPED);
    c = (struct completer){ f, 2, NULL };
    assert_int_not_equal(urio_call_soon(s.loop, complete_cb, &c).id, 0);
    assert_int_equal(urio_loop_run_until_complete(s.loop, f), -ECANCELED);
    urio_future_unref(f);
    test_loop_close(s.loop);
}

static void test_future_run_until_complete_other_loop(void **state)
{
    (void)state;
    urio_loop_t *a = test_loop_new();
    urio_loop_t *b = test_loop_new();
    urio_future_t *f = test_future_new(b);
    assert_int_equal(urio_loop_run_until_complete(a, f), -EINVAL);
    assert_false(urio_future_done(f));
    /* Nothing was registered on f by the refused call. */
    assert_int_equal(urio_future_set_result(f, NULL), 0);
    assert_int_equal(urio_loop_run_until_complete(b, f), 0);
    urio_future_unref(f);
    test_loop_close(a);
    test_loop_close(b);
}

/* ---------------------------------------------------------------- */
/* "Future exception was never retrieved"                            */

static void test_future_unretrieved_error_reported(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    struct reports r = { 0 };
    urio_loop_set_exception_handler(loop, keep_report, &r);
    urio_future_t *f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, -EIO, "read of %s failed", "/dev/sda"), 0);
    urio_future_ref(f);
    urio_future_unref(f);
    assert_int_equal(r.n, 0);                   /* not before the last reference */
    urio_future_unref(f);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.message[0], "Future exception was never retrieved");
    assert_int_equal(r.error[0], -EIO);
    assert_true(r.has_error_message[0]);
    assert_string_equal(r.error_message[0], "read of /dev/sda failed");
    assert_non_null(r.future[0]);
    assert_true(r.future_done[0]);
    /* Debug mode is off (debugoptimized, no URIO_DEBUG): no creation stack. */
    if (!urio_loop_get_debug(loop))
        assert_null(r.traceback[0]);
    reports_free(&r);

    /* Without a message: error_message is NULL. */
    r = (struct reports){ 0 };
    f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, -ENOENT, NULL), 0);
    urio_future_unref(f);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.error[0], -ENOENT);
    assert_false(r.has_error_message[0]);
    reports_free(&r);
    test_loop_close(loop);
}

static void test_future_retrieved_error_not_reported(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    struct reports r = { 0 };
    urio_loop_set_exception_handler(loop, keep_report, &r);

    urio_future_t *f = test_future_new(loop);       /* read by result */
    assert_int_equal(urio_future_set_error(f, -EIO, "a"), 0);
    assert_int_equal(urio_future_result(f, NULL), -EIO);
    urio_future_unref(f);

    f = test_future_new(loop);                      /* read by error_message */
    assert_int_equal(urio_future_set_error(f, -EIO, "b"), 0);
    assert_string_equal(urio_future_error_message(f), "b");
    urio_future_unref(f);

    f = test_future_new(loop);                      /* cancelled */
    assert_true(urio_future_cancel(f));
    urio_future_unref(f);

    f = test_future_new(loop);                      /* cancelled through set_error */
    assert_int_equal(urio_future_set_error(f, -ECANCELED, "c"), 0);
    urio_future_unref(f);

    f = test_future_new(loop);                      /* a result */
    assert_int_equal(urio_future_set_result(f, NULL), 0);
    urio_future_unref(f);

    f = test_future_new(loop);                      /* never completed */
    urio_future_unref(f);

    assert_int_equal(r.n, 0);
    test_loop_close(loop);
}

static void test_future_default_handler_logs_report(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    test_log_capture();
    urio_future_t *f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, -EIO, "write to %s failed", "disk0"), 0);
    urio_future_unref(f);
    assert_int_equal(test_log_.count, 1);       /* one message, delivered once */
    assert_int_equal(test_log_count("ERROR Future exception was never retrieved\n"), 1);
    assert_log_contains("\nfuture: <Future finished error=EIO>\n");
    assert_log_contains("\nerror: EIO (Input/output error): write to disk0 failed\n");
    /*
     * Where the error was set, as a Python traceback: file (absolute when the
     * compiler's path resolves from here), line, function, and the source
     * line when the file can be read.
     */
    assert_log_contains("\nTraceback (most recent call last):\n  File \"");
    assert_log_contains("tests/test_future.c\", line ");
    assert_log_contains(", in test_future_default_handler_logs_report");
    if (access(__FILE__, R_OK) == 0)
        assert_log_contains("\n    assert_int_equal(urio_future_set_error(f, -EIO, \"write to "
                            "%s failed\", \"disk0\"), 0);");
    test_log_release();
    test_loop_close(loop);
}

static void __attribute__((noinline)) test_future_debug_traceback(void **state)
{
    (void)state;
    if (!URIO_DEBUG_CHECKS)
        skip();     /* creation stacks are compiled out */
    urio_loop_opts_t opts = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&opts);
    assert_true(urio_loop_get_debug(loop));
    struct reports r = { 0 };
    urio_loop_set_exception_handler(loop, keep_report, &r);
    urio_future_t *f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, -EPIPE, "broken"), 0);
    urio_future_unref(f);
    assert_int_equal(r.n, 1);
    assert_non_null(r.traceback[0]);
    const char *tb = r.traceback[0];
    const char *head = "Future created at (most recent call last):";
    if (strncmp(tb, head, strlen(head)) != 0)
        fail_msg("traceback starts wrong:\n%s", tb);
    if (strstr(tb, "in test_future_debug_traceback") == NULL)
        fail_msg("traceback does not name the creating function:\n%s", tb);
    if (strstr(tb, "test_future.c") == NULL)
        fail_msg("traceback does not name the creating file:\n%s", tb);
    /* The most recent call is last: the caller (main) comes before the
     * creating function.  (Under ASan, backtrace()'s interceptor adds a
     * frame, so urio_future_new itself may follow: not checked here.) */
    const char *creator = strstr(tb, "in test_future_debug_traceback");
    const char *caller = strstr(tb, "in main\n");
    if (caller != NULL && caller > creator)
        fail_msg("frames are not most recent call last:\n%s", tb);
    reports_free(&r);

    /* The default handler prints it after the report. */
    test_log_capture();
    urio_loop_set_exception_handler(loop, NULL, NULL);
    f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, -EPIPE, "broken"), 0);
    urio_future_unref(f);
    assert_int_equal(test_log_.count, 1);
    assert_log_contains("ERROR Future exception was never retrieved\n");
    assert_log_contains("\nFuture created at (most recent call last):\n  File \"");
    assert_log_contains("in test_future_debug_traceback");
    test_log_release();
    test_loop_close(loop);
}

/* ---------------------------------------------------------------- */
/* Futures that outlive their loop                                   */

static void test_future_outlives_loop_close(void **state)
{
    (void)state;
    uint64_t before = test_live_blocks();
    urio_loop_t *loop = test_loop_new();
    int payload = 3;
    urio_future_t *done = test_future_new(loop);
    urio_future_t *failed = test_future_new(loop);
    urio_future_t *pending = test_future_new(loop);
    assert_int_equal(urio_future_set_result(done, &payload), 0);
    assert_int_equal(urio_future_set_error(failed, -EBADF, "closed fd %d", 4), 0);
    struct reports r = { 0 };
    urio_loop_set_exception_handler(loop, keep_report, &r);
    test_loop_close(loop);
    assert_int_equal(urio_loop_close(loop), 0);     /* closed, memory held: still fine */

    void *v = NULL;
    assert_true(urio_future_done(done));
    assert_int_equal(urio_future_result(done, &v), 0);
    assert_ptr_equal(v, &payload);
    assert_ptr_equal(urio_future_loop(done), loop);
    assert_false(urio_future_done(pending));
    assert_int_equal(urio_future_result(pending, NULL), URIO_ENOTDONE);
    /* The closed loop makes no new futures and takes no callbacks. */
    urio_future_t *none;
    assert_int_equal(urio_future_new(&none, loop), -ESHUTDOWN);
    assert_int_equal(urio_future_add_done_callback(done, record_done, NULL), -ESHUTDOWN);
    /* A pending one can still complete (no callbacks to run). */
    assert_true(urio_future_cancel(pending));
    assert_true(urio_future_cancelled(pending));
    urio_future_unref(done);
    urio_future_unref(pending);
    /* The unread error is reported at the last unref, after the close. */
    urio_future_unref(failed);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.error[0], -EBADF);
    assert_string_equal(r.error_message[0], "closed fd 4");
    reports_free(&r);
    assert_int_equal(test_live_blocks(), before);
}

/* A runner scheduled but not yet run when the loop closes holds a reference
 * on the future: the close drops the runner, and the reference with it. */
static void test_future_close_with_scheduled_callbacks_frees_all(void **state)
{
    (void)state;
    uint64_t before = test_live_blocks();
    struct seen s = { .loop = test_loop_new() };
    struct tag t0 = { &s, 0 };
    urio_future_t *f = test_future_new(s.loop);
    assert_int_equal(urio_future_add_done_callback(f, record_done, &t0), 0);
    assert_int_equal(urio_future_set_result(f, NULL), 0);   /* the runner is scheduled */
    test_loop_close(s.loop);
    assert_int_equal(s.n, 0);                                /* dropped, never run */
    assert_true(urio_future_done(f));
    urio_future_unref(f);
    assert_int_equal(test_live_blocks(), before);
}

/* ---------------------------------------------------------------- */
/* The wrong thread                                                  */

struct foreign {
    urio_loop_t *loop;
    urio_future_t *f;
    atomic_int loop_running;
    /* Results of the foreign calls. */
    urio_future_t *new_f;
    int new_errno;
    int set_result, set_error, add_cb, remove_cb;
    bool cancel;
    int result;
};

static void mark_running(void *arg)
{
    struct foreign *x = arg;
    atomic_store(&x->loop_running, 1);
}

static void *loop_thread(void *arg)
{
    struct foreign *x = arg;
    assert_int_not_equal(urio_call_soon(x->loop, mark_running, x).id, 0);
    /* Nothing else to do: the loop sleeps in io_uring until the main thread
     * sends the stop through urio_call_soon_threadsafe. */
    intptr_t ret = urio_loop_run_forever(x->loop);
    return (void *)ret;
}

static void test_future_wrong_thread_refused(void **state)
{
    (void)state;
    test_needs_threads();
    struct seen s = { 0 };
    struct tag t0 = { &s, 0 };
    struct foreign x = { .loop = test_loop_new() };
    s.loop = x.loop;
    x.f = test_future_new(x.loop);
    assert_int_equal(urio_future_add_done_callback(x.f, record_done, &t0), 0);
    test_log_capture();

    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, loop_thread, &x), 0);
    while (!atomic_load(&x.loop_running))
        usleep(100);

    /* The loop runs on th: every loop-thread call from here is refused. */
    x.new_errno = -urio_future_new(&x.new_f, x.loop);
    x.set_result = urio_future_set_result(x.f, &x);
    x.set_error = urio_future_set_error(x.f, -EIO, "from %s", "elsewhere");
    x.add_cb = urio_future_add_done_callback(x.f, record_done, &t0);
    x.remove_cb = urio_future_remove_done_callback(x.f, record_done, &t0);
    x.result = urio_future_result(x.f, NULL);

    assert_int_equal(urio_call_soon_threadsafe(x.loop, test_stop_cb, x.loop), 0);
    void *ret = NULL;
    assert_int_equal(pthread_join(th, &ret), 0);
    assert_int_equal((intptr_t)ret, 0);

    assert_null(x.new_f);
    assert_int_equal(x.new_errno, EPERM);
    assert_int_equal(x.set_result, -EPERM);
    assert_int_equal(x.set_error, -EPERM);
    assert_int_equal(x.add_cb, -EPERM);
    assert_int_equal(x.remove_cb, 0);
    assert_int_equal(x.result, URIO_ENOTDONE);
    assert_int_equal(s.n, 0);

    const char *what = "Non-thread-safe operation invoked on an event loop other than the "
                       "current one";
    assert_true(test_log_count(what) >= 4);
    assert_log_contains("ERROR urio_future_new(): Non-thread-safe operation");
    assert_log_contains("ERROR urio_future_set_result(): Non-thread-safe operation");
    assert_log_contains("ERROR urio_future_set_error(): Non-thread-safe operation");
    assert_log_contains("ERROR urio_future_add_done_callback(): Non-thread-safe operation");
    test_log_release();

    /* Nothing changed: still pending, the one registration intact. */
    assert_false(urio_future_done(x.f));
    assert_null(urio_future_error_message(x.f));
    assert_int_equal(urio_future_remove_done_callback(x.f, record_done, &t0), 1);
    /* The loop is stopped: this thread may use it now (and close it: the
     * ring belongs to th, which has finished). */
    assert_int_equal(urio_future_set_result(x.f, NULL), 0);
    urio_future_unref(x.f);
    assert_int_equal(s.n, 0);
    test_loop_close(x.loop);
}

/* An exception handler may keep the future it is told about. */
static urio_future_t *kept;
static int kept_reports;
static void keeping_handler(urio_loop_t *loop, const urio_error_context_t *ctx, void *ud)
{
    (void)loop;
    (void)ud;
    kept_reports++;
    kept = urio_future_ref(ctx->future);
}

static void test_future_handler_may_keep_future(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_loop_set_exception_handler(loop, keeping_handler, NULL);
    kept = NULL;
    kept_reports = 0;
    urio_future_t *f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, -EIO, "kept"), 0);
    urio_future_unref(f);
    assert_int_equal(kept_reports, 1);
    assert_ptr_equal(kept, f);
    /* Still alive and readable; the last unref now reports nothing again. */
    assert_true(urio_future_done(kept));
    assert_string_equal(urio_future_error_message(kept), "kept");
    urio_future_unref(kept);
    assert_int_equal(kept_reports, 1);
    test_loop_close(loop);
}

/* Cancelling from another thread reaches the loop through its inbox. */
static void test_future_cancel_from_other_thread(void **state)
{
    (void)state;
    test_needs_threads();
    struct seen s = { 0 };
    struct tag t0 = { &s, 0 };
    struct foreign x = { .loop = test_loop_new() };
    s.loop = x.loop;
    x.f = test_future_new(x.loop);
    assert_int_equal(urio_future_add_done_callback(x.f, record_done, &t0), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, loop_thread, &x), 0);
    while (!atomic_load(&x.loop_running))
        usleep(100);
    assert_true(urio_future_cancel(x.f));
    /* The loop cancels it on its own thread, then runs the done callback there. */
    void *res = &res;
    assert_int_equal(urio_future_wait(x.f, 5000 * (int64_t)MS, &res), -ECANCELED);
    assert_true(urio_future_cancelled(x.f));
    assert_false(urio_future_cancel(x.f));      /* already done */
    assert_int_equal(urio_call_soon_threadsafe(x.loop, test_stop_cb, x.loop), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(s.n, 1);
    urio_future_unref(x.f);
    test_loop_close(x.loop);
}

/*
 * issue 14 point 7: a plain future still pending when its loop closes can
 * never complete; a thread blocked in urio_future_wait(f, -1) must not hang.
 */
static void *waits_forever(void *arg)
{
    return (void *)(intptr_t)urio_future_wait(arg, -1, NULL);
}

static void test_future_wait_ends_when_loop_closes(void **state)
{
    (void)state;
    test_needs_threads();
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = test_future_new(loop);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, waits_forever, f), 0);
    usleep(20000);                  /* the waiter is (most likely) asleep by now */
    test_loop_close(loop);
    void *ret;
    pthread_join(th, &ret);
    assert_int_equal((intptr_t)ret, -ESHUTDOWN);
    /* A wait that starts after the close ends at once. */
    assert_int_equal(urio_future_wait(f, -1, NULL), -ESHUTDOWN);
    assert_int_equal(urio_future_result(f, NULL), URIO_ENOTDONE);
    /* Bad timeouts. */
    assert_int_equal(urio_future_wait(f, -2, NULL), -EINVAL);
    assert_int_equal(urio_future_wait(f, INT64_MIN, NULL), -EINVAL);
    urio_future_unref(f);
}

/*
 * futex_waitv refused (a seccomp profile that answers EPERM for system
 * calls it does not know): a cross-thread wait sleeps in slices instead,
 * it does not spin.  In a child: a seccomp filter is for good.
 */
static void *waitv_refused_waiter(void *arg)
{
    urio_future_t *f = arg;
    struct timespec c0, c1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    int r = urio_future_wait(f, 300 * (int64_t)MS, NULL);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    int64_t cpu = (int64_t)(c1.tv_sec - c0.tv_sec) * 1000000000 + (c1.tv_nsec - c0.tv_nsec);
    if (r != -ETIMEDOUT)
        return (void *)1;
    return (void *)(intptr_t)(cpu > 100 * (int64_t)MS ? 2 : 0);   /* a spin uses all 300 ms */
}

static int waitv_refused_child(void *arg)
{
    (void)arg;
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 449 /* futex_waitv */, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = sizeof filter / sizeof filter[0], .filter = filter };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        return 77;
    urio_loop_t *loop;
    urio_future_t *f;
    if (urio_loop_new(&loop, NULL) != 0 || urio_future_new(&f, loop) != 0)
        return 3;
    pthread_t th;
    void *ret;
    pthread_create(&th, NULL, waitv_refused_waiter, f);
    pthread_join(th, &ret);
    urio_future_unref(f);
    urio_loop_close(loop);
    return (int)(intptr_t)ret;
}

static void test_future_wait_futex_waitv_refused(void **state)
{
    (void)state;
    test_needs_threads();
    char out[4096];
    int status = test_child(waitv_refused_child, NULL, out, sizeof out);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
        skip();                     /* no seccomp here */
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("wait status %#x (exit 1: the wait did not time out; 2: it spun)\n%s",
                 (unsigned)status, out);
}

/* ---------------------------------------------------------------- */
/* Cancelling with a message from another thread                      */

struct cancel_from {
    urio_future_t *f;
    long fail_after;            /* an allocation to fail in the call, or -1 */
    bool ret;
};

static void *cancels_with_message(void *arg)
{
    struct cancel_from *c = arg;
    urio__alloc_fail_after(c->fail_after, false);
    c->ret = urio_future_cancel_msg(c->f, "stopped by %s", "a thread");
    urio__alloc_fail_after(-1, false);
    return NULL;
}

static void cancel_msg_from_thread(struct cancel_from *c)
{
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, cancels_with_message, c), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
}

static void test_future_cancel_msg_from_other_thread(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    /* Posted to the loop, which cancels it with the message. */
    struct cancel_from c = { .f = test_future_new(loop), .fail_after = -1 };
    cancel_msg_from_thread(&c);
    assert_true(c.ret);
    assert_false(urio_future_done(c.f));        /* not yet: the loop does it */
    assert_int_equal(urio_loop_run_until_complete(loop, c.f), -ECANCELED);
    assert_string_equal(urio_future_error_message(c.f), "stopped by a thread");
    /* Done already: nothing to cancel. */
    cancel_msg_from_thread(&c);
    assert_false(c.ret);
    urio_future_unref(c.f);
    /* Completed on the loop before the posted cancel arrives: the result stands. */
    c.f = test_future_new(loop);
    cancel_msg_from_thread(&c);
    assert_true(c.ret);
    assert_int_equal(urio_future_set_result(c.f, (void *)9), 0);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    void *v = NULL;
    assert_int_equal(urio_future_result(c.f, &v), 0);
    assert_ptr_equal(v, (void *)9);
    urio_future_unref(c.f);
    /* No memory to post it (the message's copy, then the request's): not cancelled. */
    c.f = test_future_new(loop);
    c.fail_after = 1;
    cancel_msg_from_thread(&c);
    assert_false(c.ret);
    c.fail_after = 0;               /* the message's copy: cancelled without it */
    cancel_msg_from_thread(&c);
    assert_true(c.ret);
    assert_int_equal(urio_loop_run_until_complete(loop, c.f), -ECANCELED);
    assert_null(urio_future_error_message(c.f));
    urio_future_unref(c.f);
    test_loop_close(loop);
}

/* The function form of urio_future_set_error (no site), for callers that cannot use the macro. */
static void test_future_set_error_function_form(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = test_future_new(loop);
    assert_int_equal((urio_future_set_error)(f, -ENOSPC, "disk %d full", 2), 0);
    assert_int_equal(urio_future_result(f, NULL), -ENOSPC);
    assert_string_equal(urio_future_error_message(f), "disk 2 full");
    urio_future_unref(f);
    test_loop_close(loop);
}

/* A pending future let go with its callbacks (more than fit inline): they never run,
 * and nothing is left (the runner's reserved room is given back). */
static int never_called;
static void must_not_run(urio_future_t *f, void *arg)
{
    (void)f;
    (void)arg;
    never_called++;
}

static void test_future_dropped_with_callbacks(void **state)
{
    (void)state;
    never_called = 0;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = test_future_new(loop);
    for (intptr_t i = 0; i < 5; i++)
        assert_int_equal(urio_future_add_done_callback(f, must_not_run, (void *)i), 0);
    urio_future_unref(f);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_int_equal(never_called, 0);
    test_loop_close(loop);
}

/* Done callbacks that can no longer run when the loop closes: dropped, said in debug mode. */
static int forever(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return urio_sleep(3600 * 1000 * MS);
}

static void test_future_callbacks_dropped_at_close_said(void **state)
{
    (void)state;
    never_called = 0;
    int level = urio_log_get_level();
    urio_log_set_level(URIO_LOG_DEBUG);
    test_log_capture();
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&on);
    /* A task the close cancels: its callback would be scheduled while closing... */
    urio_future_t *t = urio_spawn(loop, forever, NULL);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    /* ...and a future done with its runner still queued when the loop closes. */
    urio_future_t *done = test_future_new(loop);
    assert_int_equal(urio_future_add_done_callback(done, must_not_run, NULL), 0);
    assert_int_equal(urio_future_set_result(done, NULL), 0);
    urio_future_t *fresh = test_future_new(loop);
    assert_int_equal(urio_future_set_result(fresh, NULL), 0);
    assert_int_equal(urio_future_add_done_callback(t, must_not_run, NULL), 0);
    urio_future_unref(t);
    test_loop_close(loop);
    urio_log_set_level(level);
    assert_int_equal(never_called, 0);
    assert_log_contains("DEBUG future: 1 done callbacks dropped: the loop closed");
    assert_log_contains("DEBUG future: 1 done callbacks dropped: the loop is closing");
    /* After the close: a done future takes no callback, a pending loop runs nothing. */
    assert_int_equal(urio_future_add_done_callback(fresh, must_not_run, NULL), -ESHUTDOWN);
    urio_future_t *pending = NULL;
    assert_int_equal(urio_future_new(&pending, loop), -ESHUTDOWN);
    assert_int_equal(urio_loop_run_until_complete(loop, done), 0);     /* done: its result */
    urio_future_unref(done);
    urio_future_unref(fresh);
}

/*
 * Kernels without futex_waitv (before 5.16) wait on the future alone, in
 * slices: a waiter still wakes when the loop completes it, and still times
 * out.  In a child whose seccomp filter answers futex_waitv with ENOSYS.
 */
static void complete_later(void *arg)
{
    urio_future_set_result(arg, (void *)11);
}

static void *runs_loop_until(void *arg)
{
    urio_future_t *f = arg;
    urio_loop_run_until_complete(urio_future_loop(f), f);
    return NULL;
}

static int no_waitv_child(void *arg)
{
    (void)arg;
    if (test_block_syscall(449 /* futex_waitv */, ENOSYS) != 0)
        return 77;
    urio_loop_t *loop;
    if (urio_loop_new(&loop, NULL) != 0)
        return 77;
    urio_future_t *f;
    urio_future_new(&f, loop);
    urio_call_later(loop, 80 * MS, complete_later, f);
    pthread_t th;
    pthread_create(&th, NULL, runs_loop_until, f);
    void *v = NULL;
    int timed = urio_future_wait(f, 20 * (int64_t)MS, &v);     /* before the timer */
    int ret = urio_future_wait(f, -1, &v);
    pthread_join(th, NULL);
    urio_future_unref(f);
    urio_loop_close(loop);
    fprintf(stderr, "timed %d, then %d with %p\n", timed, ret, v);
    return timed == -ETIMEDOUT && ret == 0 && v == (void *)11 ? 0 : 1;
}

static void test_future_wait_without_futex_waitv(void **state)
{
    (void)state;
    test_needs_threads();
    char out[4096];
    int status = test_child(no_waitv_child, NULL, out, sizeof out);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77)
        skip();
    if (WEXITSTATUS(status) != 0)
        fail_msg("the child wrote:\n%s", out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_future_wait_futex_waitv_refused),
        URIO_TEST(test_future_wait_ends_when_loop_closes),
        URIO_TEST(test_future_new_ref_unref),
        URIO_TEST(test_future_set_result_then_result),
        URIO_TEST(test_future_set_error_with_message),
        URIO_TEST(test_future_second_transition_refused),
        URIO_TEST(test_future_set_error_rejects_non_negative),
        URIO_TEST(test_future_cancel),
        URIO_TEST(test_future_result_pending_is_enotdone),
        URIO_TEST(test_future_callbacks_never_inline),
        URIO_TEST(test_future_callbacks_run_in_order_added),
        URIO_TEST(test_future_callback_added_after_completion_runs),
        URIO_TEST(test_future_callback_added_from_callback_runs),
        URIO_TEST(test_future_remove_done_callback),
        URIO_TEST(test_future_runner_holds_reference),
        URIO_TEST(test_future_run_until_complete_outcomes),
        URIO_TEST(test_future_run_until_complete_stopped),
        URIO_TEST(test_future_run_until_complete_other_loop),
        URIO_TEST(test_future_unretrieved_error_reported),
        URIO_TEST(test_future_retrieved_error_not_reported),
        URIO_TEST(test_future_default_handler_logs_report),
        URIO_TEST(test_future_debug_traceback),
        URIO_TEST(test_future_outlives_loop_close),
        URIO_TEST(test_future_close_with_scheduled_callbacks_frees_all),
        URIO_TEST(test_future_wrong_thread_refused),
        URIO_TEST(test_future_cancel_from_other_thread),
        URIO_TEST(test_future_handler_may_keep_future),
        URIO_TEST(test_future_cancel_msg_from_other_thread),
        URIO_TEST(test_future_set_error_function_form),
        URIO_TEST(test_future_dropped_with_callbacks),
        URIO_TEST(test_future_callbacks_dropped_at_close_said),
        URIO_TEST(test_future_wait_without_futex_waitv),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
