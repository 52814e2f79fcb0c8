/*
 * test_alloc.c — the allocation hook: urio_mem_stats' counters, and every
 * ENOMEM path proved by failure injection (urio__alloc_fail_after): the
 * failing call reports -ENOMEM (or NULL / handle 0 with errno ENOMEM),
 * nothing crashes, nothing leaks, and what did succeed still works.
 */
#include "helpers.h"

#include <unistd.h>

static urio_mem_stats_t stats(void)
{
    urio_mem_stats_t st;
    urio_mem_stats(&st);
    return st;
}

static uint64_t failures(void)
{
    return stats().failures;
}

/* ---------------------------------------------------------------- */
/* The counters                                                      */

static void test_alloc_stats_consistent(void **state)
{
    (void)state;
    urio_mem_stats_t a = stats();
    assert_int_equal(a.live, a.allocs - a.frees);

    void *p = urio__malloc(100);
    assert_non_null(p);
    urio_mem_stats_t b = stats();
    assert_int_equal(b.allocs, a.allocs + 1);
    assert_int_equal(b.frees, a.frees);
    assert_int_equal(b.live, a.live + 1);
    assert_int_equal(b.failures, a.failures);

    /* realloc of NULL is an allocation; growing a block is not a new one. */
    void *q = urio__realloc(NULL, 10);
    assert_non_null(q);
    q = urio__realloc(q, 100000);
    assert_non_null(q);
    char *s = urio__strdup("hello");
    assert_string_equal(s, "hello");
    char *t = urio__asprintf("%d-%s", 7, "x");
    assert_string_equal(t, "7-x");
    void *z = urio__calloc(4, 8);
    assert_non_null(z);
    assert_memory_equal(z, (char[32]){ 0 }, 32);
    b = stats();
    assert_int_equal(b.allocs, a.allocs + 5);
    assert_int_equal(b.live, a.live + 5);

    /* Failures: counted, never as allocations. */
    urio__alloc_fail_after(0, false);
    assert_null(urio__malloc(8));
    assert_non_null(p = (urio__free(p), urio__malloc(8)));  /* once: the next one works */
    urio__alloc_fail_after(0, false);
    assert_null(urio__realloc(q, 200000));                  /* q untouched, still ours */
    urio__alloc_fail_after(0, false);
    assert_null(urio__calloc(1, 1));
    assert_null(urio__calloc(SIZE_MAX / 2, 4));             /* overflow: a failure too */
    urio__alloc_fail_after(0, false);
    assert_null(urio__strdup("x"));
    urio__alloc_fail_after(0, false);
    assert_null(urio__asprintf("%s", "x"));
    urio_mem_stats_t c = stats();
    assert_int_equal(c.failures, a.failures + 6);
    assert_int_equal(c.allocs, b.allocs + 1);               /* the second malloc(8) */
    assert_int_equal(c.frees, b.frees + 1);                 /* the first p */
    assert_int_equal(c.live, c.allocs - c.frees);

    /* Persistent: two more succeed, then every one fails until reset. */
    urio__alloc_fail_after(2, true);
    void *x1 = urio__malloc(1), *x2 = urio__malloc(1);
    assert_non_null(x1);
    assert_non_null(x2);
    for (int i = 0; i < 5; i++)
        assert_null(urio__malloc(1));
    urio__alloc_fail_after(-1, false);
    void *x3 = urio__malloc(1);
    assert_non_null(x3);
    urio_mem_stats_t d = stats();
    assert_int_equal(d.failures, c.failures + 5);
    assert_int_equal(d.allocs, c.allocs + 3);

    urio__free(NULL);                                       /* not counted */
    urio__free(x1);
    urio__free(x2);
    urio__free(x3);
    urio__free(p);
    urio__free(q);
    urio__free(s);
    urio__free(t);
    urio__free(z);
    urio_mem_stats_t e = stats();
    assert_int_equal(e.live, a.live);
    assert_int_equal(e.allocs - a.allocs, e.frees - a.frees);
    assert_int_equal(e.frees, d.frees + 8);
    urio_mem_stats(NULL);                                   /* harmless */
}

static void test_alloc_stats_loop_life_cycle(void **state)
{
    (void)state;
    urio_mem_stats_t a = stats();
    urio_loop_t *loop = test_loop_new();
    urio_mem_stats_t b = stats();
    assert_true(b.allocs > a.allocs);
    assert_true(b.live > a.live);
    urio_future_t *f = test_future_new(loop);
    assert_int_equal(stats().live, b.live + 1);
    urio_future_unref(f);
    assert_int_equal(stats().live, b.live);
    test_loop_close(loop);
    urio_mem_stats_t c = stats();
    assert_int_equal(c.live, a.live);
    assert_int_equal(c.allocs - a.allocs, c.frees - a.frees);
    assert_int_equal(c.failures, a.failures);
}

/* ---------------------------------------------------------------- */
/* urio_loop_new                                                     */

static void loop_new_oom(bool persistent)
{
    int failed_runs = 0;
    bool succeeded = false;
    for (long n = 0; n < 1000 && !succeeded; n++) {
        urio_mem_stats_t a = stats();
        urio_loop_t *loop = (urio_loop_t *)&loop;
        urio__alloc_fail_after(n, persistent);
        int ret = urio_loop_new(&loop, NULL);
        urio__alloc_fail_after(-1, false);
        urio_mem_stats_t b = stats();
        if (ret == URIO_ENOURING)
            skip();
        bool injected = b.failures > a.failures;
        if (injected) {
            if (ret != -ENOMEM)
                fail_msg("allocation %ld failed: urio_loop_new returned %d (%s)", n, ret,
                         urio_strerror(ret));
            assert_null(loop);
            if (b.live != a.live)
                fail_msg("allocation %ld failed: %lld blocks left behind", n,
                         (long long)(b.live - a.live));
            failed_runs++;
        } else {
            /* n is past every allocation urio_loop_new makes. */
            assert_int_equal(ret, 0);
            assert_non_null(loop);
            /* The loop works. */
            assert_int_not_equal(urio_call_soon(loop, test_stop_cb, loop).id, 0);
            assert_int_equal(urio_loop_run_forever(loop), 0);
            test_loop_close(loop);
            assert_int_equal(stats().live, a.live);
            succeeded = true;
        }
    }
    assert_true(succeeded);
    assert_true(failed_runs >= 3);     /* the loop, its slots, its ready FIFO at least */
}

static void test_alloc_loop_new_oom_once(void **state)
{
    (void)state;
    test_log_capture();                 /* whatever it says about the failure */
    loop_new_oom(false);
}

static void test_alloc_loop_new_oom_persistent(void **state)
{
    (void)state;
    test_log_capture();
    loop_new_oom(true);
}

/* ---------------------------------------------------------------- */
/* Futures                                                           */

static int done_calls[16];
static void count_done(urio_future_t *f, void *arg)
{
    (void)f;
    done_calls[(intptr_t)arg]++;
}

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

static void test_alloc_future_new_oom(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_mem_stats_t a = stats();
    urio__alloc_fail_after(0, false);
    urio_future_t *none = (urio_future_t *)1;
    assert_int_equal(urio_future_new(&none, loop), -ENOMEM);
    assert_null(none);
    urio_mem_stats_t b = stats();
    assert_int_equal(b.failures, a.failures + 1);
    assert_int_equal(b.live, a.live);
    /* The failure was once: the next one works. */
    urio_future_t *f = test_future_new(loop);
    assert_non_null(f);
    urio_future_unref(f);
    assert_int_equal(stats().live, a.live);
    test_loop_close(loop);
}

struct reports {
    int n;
    int error;
    bool traceback;
    bool error_message;
};

static void keep_report(urio_loop_t *loop, const urio_error_context_t *ctx, void *ud)
{
    (void)loop;
    struct reports *r = ud;
    r->n++;
    r->error = ctx->error;
    r->traceback = ctx->source_traceback != NULL;
    r->error_message = ctx->error_message != NULL;
}

/* Debug mode: no memory for the creation stack, or for formatting it, makes
 * a poorer report, not a failure. */
static void test_alloc_future_debug_stack_oom(void **state)
{
    (void)state;
    if (!URIO_DEBUG_CHECKS)
        skip();     /* creation stacks are compiled out */
    urio_loop_opts_t opts = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&opts);
    struct reports r = { 0 };
    urio_loop_set_exception_handler(loop, keep_report, &r);

    /* The stack's allocation (the second) fails: the future is made anyway. */
    uint64_t fails = failures();
    urio__alloc_fail_after(1, false);
    urio_future_t *f = test_future_new(loop);
    assert_non_null(f);
    assert_int_equal(failures(), fails + 1);
    assert_int_equal(urio_future_set_error(f, -EIO, NULL), 0);
    urio_future_unref(f);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.error, -EIO);
    assert_false(r.traceback);

    /* The stack is there, but formatting it fails at the report. */
    r = (struct reports){ 0 };
    f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, -EIO, NULL), 0);
    fails = failures();
    urio__alloc_fail_after(0, false);
    urio_future_unref(f);
    urio__alloc_fail_after(-1, false);
    assert_int_equal(failures(), fails + 1);
    assert_int_equal(r.n, 1);
    assert_false(r.traceback);

    /* And with memory, the report has it. */
    r = (struct reports){ 0 };
    f = test_future_new(loop);
    assert_int_equal(urio_future_set_error(f, -EIO, NULL), 0);
    urio_future_unref(f);
    assert_int_equal(r.n, 1);
    assert_true(r.traceback);
    test_loop_close(loop);
}

static void test_alloc_future_set_error_message_oom(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    struct reports r = { 0 };
    urio_loop_set_exception_handler(loop, keep_report, &r);
    memset(done_calls, 0, sizeof done_calls);
    urio_future_t *f = test_future_new(loop);
    assert_int_equal(urio_future_add_done_callback(f, count_done, (void *)0), 0);
    urio_mem_stats_t a = stats();
    urio__alloc_fail_after(0, false);
    assert_int_equal(urio_future_set_error(f, -EIO, "message %d", 1), -ENOMEM);
    assert_int_equal(stats().failures, a.failures + 1);
    assert_int_equal(stats().live, a.live);
    /* Completed all the same, without the message. */
    assert_true(urio_future_done(f));
    assert_false(urio_future_cancelled(f));
    assert_null(urio_future_error_message(f));
    assert_int_equal(urio_future_result(f, NULL), -EIO);
    assert_int_equal(urio_future_set_error(f, -EIO, "again"), -EINVAL);
    run_turns(loop, 2);
    assert_int_equal(done_calls[0], 1);
    urio_future_unref(f);
    assert_int_equal(r.n, 0);           /* the error was read */

    /* Unread: reported, with no message. */
    f = test_future_new(loop);
    urio__alloc_fail_after(0, false);
    assert_int_equal(urio_future_set_error(f, -EPIPE, "lost %s", "text"), -ENOMEM);
    urio_future_unref(f);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.error, -EPIPE);
    assert_false(r.error_message);
    test_loop_close(loop);
}

static void test_alloc_future_add_done_callback_oom(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    memset(done_calls, 0, sizeof done_calls);
    urio_future_t *f = test_future_new(loop);
    uint64_t fails = failures();
    /* The two inline registrations need no memory. */
    urio__alloc_fail_after(0, true);
    assert_int_equal(urio_future_add_done_callback(f, count_done, (void *)0), 0);
    assert_int_equal(urio_future_add_done_callback(f, count_done, (void *)1), 0);
    assert_int_equal(failures(), fails);
    assert_int_equal(urio_future_add_done_callback(f, count_done, (void *)2), -ENOMEM);
    assert_int_equal(urio_future_add_done_callback(f, count_done, (void *)3), -ENOMEM);
    assert_int_equal(failures(), fails + 2);
    urio__alloc_fail_after(-1, false);
    assert_int_equal(urio_future_add_done_callback(f, count_done, (void *)4), 0);
    assert_int_equal(urio_future_add_done_callback(f, count_done, (void *)5), 0);
    /* Full again (capacity 4): the next growth fails. */
    urio__alloc_fail_after(0, false);
    assert_int_equal(urio_future_add_done_callback(f, count_done, (void *)6), -ENOMEM);
    assert_int_equal(urio_future_add_done_callback(f, count_done, (void *)7), 0);
    assert_int_equal(urio_future_set_result(f, NULL), 0);
    run_turns(loop, 2);
    const int expect[8] = { 1, 1, 0, 0, 1, 1, 0, 1 };
    for (int i = 0; i < 8; i++)
        if (done_calls[i] != expect[i])
            fail_msg("callback %d ran %d times, expected %d", i, done_calls[i], expect[i]);
    urio_future_unref(f);
    test_loop_close(loop);
}

/*
 * Completing a future schedules its runner on the ready FIFO; when that
 * needs memory it cannot get, no callback may be lost silently:
 * add_done_callback either fails (-ENOMEM, fn never runs) or fn runs.
 */
static int filler_calls;
static void filler_cb(void *arg)
{
    (void)arg;
    filler_calls++;
}

/*
 * Turns allocation failure on for good, then schedules fillers until one is
 * refused: from there, scheduling anything needs memory it cannot get.
 * Returns: how many fillers were accepted.
 */
static int fill_until_full(urio_loop_t *loop)
{
    urio__alloc_fail_after(0, true);
    int n = 0;
    for (;;) {
        errno = 0;
        if (urio_call_soon(loop, filler_cb, NULL).id == 0) {
            assert_int_equal(errno, ENOMEM);
            return n;
        }
        n++;
        assert_true(n < 10000000);
    }
}

static void test_alloc_future_runner_oom_add_done_callback(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    memset(done_calls, 0, sizeof done_calls);
    filler_calls = 0;
    urio_future_t *f = test_future_new(loop);
    assert_int_equal(urio_future_set_result(f, NULL), 0);
    int filled = fill_until_full(loop);
    uint64_t fails = failures();
    int ret = urio_future_add_done_callback(f, count_done, (void *)0);
    urio__alloc_fail_after(-1, false);
    assert_true(failures() > fails);        /* scheduling the runner did need memory */
    run_turns(loop, 3);
    assert_int_equal(filler_calls, filled);
    urio_future_unref(f);
    test_loop_close(loop);
    assert_true(ret == 0 || ret == -ENOMEM);
    if (ret == -ENOMEM)
        assert_int_equal(done_calls[0], 0);
    else if (done_calls[0] != 1)
        fail_msg("urio_future_add_done_callback returned 0 but its callback ran %d times "
                 "(the runner could not be scheduled: ENOMEM)", done_calls[0]);
}

static void test_alloc_future_runner_oom_set_result(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    memset(done_calls, 0, sizeof done_calls);
    filler_calls = 0;
    urio_future_t *f = test_future_new(loop);
    assert_int_equal(urio_future_add_done_callback(f, count_done, (void *)0), 0);
    int filled = fill_until_full(loop);
    uint64_t fails = failures();
    int ret = urio_future_set_result(f, NULL);
    urio__alloc_fail_after(-1, false);
    /* The runner's room was reserved with the callback: completing allocates nothing. */
    assert_int_equal(failures(), fails);
    /* set_result documents no -ENOMEM: f is done, and its callback is owed. */
    assert_int_equal(ret, 0);
    assert_true(urio_future_done(f));
    run_turns(loop, 3);
    assert_int_equal(filler_calls, filled);
    urio_future_unref(f);
    test_loop_close(loop);
    if (done_calls[0] != 1)
        fail_msg("the done callback registered before set_result ran %d times "
                 "(its runner could not be scheduled: ENOMEM)", done_calls[0]);
}

/* ---------------------------------------------------------------- */
/* Callbacks and timers                                              */

enum { CALLS = 300 };
static int ran[CALLS];
static void ran_cb(void *arg)
{
    ran[(intptr_t)arg]++;
}

enum { SOON, LATER, AT, THREADSAFE };

/* Schedules CALLS callbacks of `kind` while allocation `countdown` (once or
 * for good) fails; checks each call fails exactly when an injected failure
 * happened inside it, then runs the loop and checks exactly the accepted
 * ones ran, once each. */
static void schedule_under_oom(int kind, long countdown, bool persistent)
{
    urio_loop_t *loop = test_loop_new();
    memset(ran, 0, sizeof ran);
    bool ok[CALLS];
    int accepted = 0;
    urio__alloc_fail_after(countdown, persistent);
    for (int i = 0; i < CALLS; i++) {
        uint64_t fails = failures();
        void *arg = (void *)(intptr_t)i;
        errno = 0;
        int ret = 0;
        switch (kind) {
        case SOON:
            ret = urio_call_soon(loop, ran_cb, arg).id != 0 ? 0 : -errno;
            break;
        case LATER:
            ret = urio_call_later(loop, (uint64_t)(i % 7) * US, ran_cb, arg).id != 0 ? 0 : -errno;
            break;
        case AT:
            ret = urio_call_at(loop, urio_loop_time(loop) + (uint64_t)(i % 5) * US, ran_cb,
                               arg).id != 0 ? 0 : -errno;
            break;
        default:
            ret = urio_call_soon_threadsafe(loop, ran_cb, arg);
            break;
        }
        bool injected = failures() > fails;
        if (injected && ret != -ENOMEM)
            fail_msg("kind %d call %d (countdown %ld%s): an allocation failed but the call "
                     "returned %d", kind, i, countdown, persistent ? ", persistent" : "", ret);
        if (!injected && ret != 0)
            fail_msg("kind %d call %d (countdown %ld%s): failed with %d without an injected "
                     "failure", kind, i, countdown, persistent ? ", persistent" : "", ret);
        ok[i] = ret == 0;
        accepted += ok[i];
    }
    urio__alloc_fail_after(-1, false);
    /* call_soon's FIFO must grow; the inbox's node pool is process-wide and
     * may have room already (test_alloc_threadsafe_pool_growth_oom empties it). */
    if (countdown == 0 && kind == SOON)
        assert_true(accepted < CALLS);      /* growth was needed, so something failed */
    if (countdown == 0 && (kind == AT || kind == LATER))
        assert_false(ok[0]);                /* the heap's first allocation */
    assert_int_not_equal(urio_call_later(loop, 3 * MS, test_stop_cb, loop).id, 0);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    for (int i = 0; i < CALLS; i++)
        if (ran[i] != (ok[i] ? 1 : 0))
            fail_msg("kind %d call %d (countdown %ld%s, %s): ran %d times", kind, i, countdown,
                     persistent ? ", persistent" : "", ok[i] ? "accepted" : "refused", ran[i]);
    test_loop_close(loop);
}

static const long countdowns[] = { 0, 1, 2, 3, 5, 64 };

static void test_alloc_call_soon_growth_oom(void **state)
{
    (void)state;
    test_log_capture();
    for (size_t i = 0; i < sizeof countdowns / sizeof countdowns[0]; i++) {
        schedule_under_oom(SOON, countdowns[i], false);
        schedule_under_oom(SOON, countdowns[i], true);
    }
}

static void test_alloc_call_later_growth_oom(void **state)
{
    (void)state;
    test_log_capture();
    for (size_t i = 0; i < sizeof countdowns / sizeof countdowns[0]; i++) {
        schedule_under_oom(LATER, countdowns[i], false);
        schedule_under_oom(LATER, countdowns[i], true);
        schedule_under_oom(AT, countdowns[i], false);
        schedule_under_oom(AT, countdowns[i], true);
    }
}

static void test_alloc_call_soon_threadsafe_growth_oom(void **state)
{
    (void)state;
    test_log_capture();
    for (size_t i = 0; i < sizeof countdowns / sizeof countdowns[0]; i++) {
        schedule_under_oom(THREADSAFE, countdowns[i], false);
        schedule_under_oom(THREADSAFE, countdowns[i], true);
    }
}

/*
 * The node pool is process-wide: another thread posts until the pool must
 * grow, with every growth failing; the call that needed it gets -ENOMEM
 * (nothing else does), and once memory is back the next call succeeds.
 * Exactly the accepted calls run.
 */
enum { POOL_CALLS = 1 << 20 };
struct ts_arg {
    urio_loop_t *loop;
    int accepted, refused, other, ret_after;
};

static int pool_ran;
static void pool_ran_cb(void *arg)
{
    (void)arg;
    pool_ran++;
}

static void *ts_thread(void *p)
{
    struct ts_arg *a = p;
    urio__alloc_fail_after(0, true);
    for (int i = 0; i < POOL_CALLS && a->refused == 0; i++) {
        int ret = urio_call_soon_threadsafe(a->loop, pool_ran_cb, NULL);
        if (ret == 0)
            a->accepted++;
        else if (ret == -ENOMEM)
            a->refused++;
        else
            a->other++;
    }
    urio__alloc_fail_after(-1, false);
    a->ret_after = urio_call_soon_threadsafe(a->loop, pool_ran_cb, NULL);
    return NULL;
}

static void test_alloc_threadsafe_pool_growth_oom(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    pool_ran = 0;
    struct ts_arg a = { .loop = loop };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, ts_thread, &a), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(a.refused, 1);         /* the pool ran dry within 2^20 calls */
    assert_int_equal(a.other, 0);
    assert_int_equal(a.ret_after, 0);
    urio_loop_stop(loop);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    assert_int_equal(pool_ran, a.accepted + 1);
    test_loop_close(loop);
}

/* Work already accepted survives an allocation failure inside the loop's
 * turn: due timers that cannot move to a full ready FIFO wait for a later
 * turn; inbox calls that cannot get a slot stay in the inbox. */
static int counted;
static int count_target;
static urio_loop_t *count_loop;
static void count_and_stop(void *arg)
{
    ran[(intptr_t)arg]++;
    if (++counted == count_target)
        urio_loop_stop(count_loop);
}

static void test_alloc_turn_oom_loses_nothing(void **state)
{
    (void)state;
    for (int kind = 0; kind < 2; kind++) {
        urio_loop_t *loop = test_loop_new();
        memset(ran, 0, sizeof ran);
        counted = 0;
        count_target = 200;
        count_loop = loop;
        /* A safety stop, so a lost callback fails the test instead of hanging. */
        assert_int_not_equal(urio_call_later(loop, 2000 * MS, test_stop_cb, loop).id, 0);
        for (int i = 0; i < count_target; i++) {
            if (kind == 0)
                assert_int_not_equal(urio_call_later(loop, 0, count_and_stop,
                                                     (void *)(intptr_t)i).id, 0);
            else
                assert_int_equal(urio_call_soon_threadsafe(loop, count_and_stop,
                                                           (void *)(intptr_t)i), 0);
        }
        uint64_t fails = failures();
        urio__alloc_fail_after(0, true);        /* nothing more can grow */
        assert_int_equal(urio_loop_run_forever(loop), 0);
        urio__alloc_fail_after(-1, false);
        assert_true(failures() > fails);        /* the turn did hit the failure */
        assert_int_equal(counted, count_target);
        for (int i = 0; i < count_target; i++)
            assert_int_equal(ran[i], 1);
        test_loop_close(loop);
    }
}

/*
 * urio_gather_new failing part-way with a child already done: that child's
 * callback, queued already, must not act for the abandoned gathering future
 * (no cancel of the other children, no "never retrieved" report).
 */
static void noop_done(urio_future_t *f, void *arg)
{
    (void)f;
    (void)arg;
}

static void test_alloc_gather_new_fails_with_a_done_child(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    test_log_capture();
    bool failed_once = false;
    for (int n = 0; n < 40; n++) {
        urio_future_t *fs[3];
        for (int i = 0; i < 3; i++)
            fs[i] = test_future_new(loop);
        urio_future_set_error(fs[0], -EIO, "done before the gather");
        /* Callbacks there already: the gather's is a third one, which allocates. */
        for (int i = 1; i < 3; i++) {
            urio_future_add_done_callback(fs[i], noop_done, NULL);
            urio_future_add_done_callback(fs[i], noop_done, NULL);
        }
        urio_future_t *g = NULL;
        urio__alloc_fail_after(n, false);
        int ret = urio_gather_new(&g, loop, fs, 3, NULL);
        urio__alloc_fail_after(-1, false);
        urio_call_soon(loop, test_stop_cb, loop);
        urio_loop_run_forever(loop);        /* queued callbacks run */
        if (ret == 0) {
            urio_loop_run_until_complete(loop, g);
            assert_int_equal(urio_future_result(g, NULL), -EIO);   /* fs[0]'s failure */
            urio_future_unref(g);
        } else {
            assert_int_equal(ret, -ENOMEM);
            failed_once = true;
            assert_false(urio_future_done(fs[1]));
            assert_false(urio_future_done(fs[2]));
        }
        assert_int_equal(urio_future_result(fs[0], NULL), -EIO);
        for (int i = 0; i < 3; i++)
            urio_future_unref(fs[i]);
        urio_call_soon(loop, test_stop_cb, loop);
        urio_loop_run_forever(loop);
        if (ret == 0)
            break;
    }
    assert_true(failed_once);
    assert_int_equal(test_log_count("never retrieved"), 0);
    test_loop_close(loop);
}

/* ---------------------------------------------------------------- */
/* The task layer: gather, shield, tasks, urio_run, the waiting calls */

/*
 * Each case steps the failing allocation through one call: allocation n
 * (from the call on) fails once, for n = 0, 1, ... until a run sees no
 * failure.  The call must fail cleanly (-ENOMEM, or NULL with errno ENOMEM)
 * or work; what it was given stays usable; nothing is left allocated.
 */

/* A coroutine: no function, no memory (for it, or, made in a running loop
 * that has no task yet, for the loop's task state): refused, nothing kept. */
static int returns_seven(void *arg, void **res);

static long coro_fail_at;
static int coro_err;

static void makes_coroutine(void *arg)
{
    urio__alloc_fail_after(coro_fail_at, false);
    errno = 0;
    urio_coro_t *c = URIO_CORO(returns_seven, NULL);
    coro_err = errno;
    urio__alloc_fail_after(-1, false);
    if (c != NULL) {
        coro_err = 0;
        urio_coro_close(c);
    }
    urio_loop_stop(arg);
}

static void test_alloc_coro_create_oom(void **state)
{
    (void)state;
    errno = 0;
    assert_null(urio_coro_create(NULL, NULL, NULL));
    assert_int_equal(errno, EINVAL);
    int failed_runs = 0;
    for (coro_fail_at = 0; coro_fail_at < 10; coro_fail_at++) {
        uint64_t live = test_live_blocks();
        urio_loop_t *loop = test_loop_new();
        urio_call_soon(loop, makes_coroutine, loop);
        urio_loop_run_forever(loop);
        test_loop_close(loop);
        assert_int_equal(test_live_blocks(), live);
        if (coro_err == 0)
            break;
        assert_int_equal(coro_err, ENOMEM);
        failed_runs++;
    }
    assert_int_equal(failed_runs, 2);       /* the coroutine, the loop's task state */
}

/* A gathering future's memory, or its registration on a child, cannot be had. */
static void test_alloc_gather_new_oom(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    int failed_runs = 0;
    bool clean = false;
    for (long n = 0; !clean && n < 100; n++) {
        memset(done_calls, 0, sizeof done_calls);
        urio_future_t *a = test_future_new(loop), *b = test_future_new(loop);
        /* b's inline callbacks are taken: registering on b needs memory. */
        assert_int_equal(urio_future_add_done_callback(b, count_done, (void *)0), 0);
        assert_int_equal(urio_future_add_done_callback(b, count_done, (void *)1), 0);
        urio_future_t *fs[] = { a, b };
        urio_mem_stats_t before = stats();
        urio_future_t *g = (urio_future_t *)fs;
        urio__alloc_fail_after(n, false);
        int ret = urio_gather_new(&g, loop, fs, 2, NULL);
        urio__alloc_fail_after(-1, false);
        if (stats().failures > before.failures) {
            if (ret != -ENOMEM)
                fail_msg("allocation %ld failed: urio_gather_new returned %d", n, ret);
            assert_null(g);
            if (stats().live != before.live)
                fail_msg("allocation %ld failed: %lld blocks left behind", n,
                         (long long)(stats().live - before.live));
            failed_runs++;
        } else {
            assert_int_equal(ret, 0);
            clean = true;
        }
        /* The children still complete, and their own callbacks run. */
        assert_int_equal(urio_future_set_result(a, (void *)1), 0);
        assert_int_equal(urio_future_set_result(b, (void *)2), 0);
        run_turns(loop, 3);
        assert_int_equal(done_calls[0], 1);
        assert_int_equal(done_calls[1], 1);
        if (g != NULL) {
            assert_true(urio_future_done(g));
            assert_int_equal(urio_future_result(g, NULL), 0);
            urio_future_unref(g);
        }
        urio_future_unref(a);
        urio_future_unref(b);
    }
    assert_true(clean);
    assert_true(failed_runs >= 3);      /* the future, its array, the registration on b */
    test_loop_close(loop);
}

/* A shield's outer future, or its registration on the inner one, cannot be had. */
static void test_alloc_shield_new_oom(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    int failed_runs = 0;
    bool clean = false;
    for (long n = 0; !clean && n < 100; n++) {
        urio_future_t *inner = test_future_new(loop);
        assert_int_equal(urio_future_add_done_callback(inner, count_done, (void *)0), 0);
        assert_int_equal(urio_future_add_done_callback(inner, count_done, (void *)1), 0);
        urio_mem_stats_t before = stats();
        urio_future_t *outer = inner;
        urio__alloc_fail_after(n, false);
        int ret = urio_shield_new(&outer, inner);
        urio__alloc_fail_after(-1, false);
        if (stats().failures > before.failures) {
            if (ret != -ENOMEM)
                fail_msg("allocation %ld failed: urio_shield_new returned %d", n, ret);
            assert_null(outer);
            assert_int_equal(stats().live, before.live);
            failed_runs++;
        } else {
            assert_int_equal(ret, 0);
            clean = true;
        }
        assert_int_equal(urio_future_set_result(inner, (void *)5), 0);
        run_turns(loop, 3);
        if (outer != NULL) {
            void *v = NULL;
            assert_int_equal(urio_future_result(outer, &v), 0);
            assert_ptr_equal(v, (void *)5);
            urio_future_unref(outer);
        }
        urio_future_unref(inner);
    }
    assert_true(clean);
    assert_true(failed_runs >= 2);      /* the outer future, the registration */
    test_loop_close(loop);
}

static int returns_seven(void *arg, void **res)
{
    (void)arg;
    *res = (void *)7;
    return 0;
}

/*
 * urio_task_create on a fresh loop (its first task makes the loop's task
 * state): each failure is ENOMEM with the coroutine freed quietly; a name
 * that cannot be copied leaves the task its coroutine's name.
 */
static void test_alloc_task_create_oom(void **state)
{
    (void)state;
    test_log_capture();
    int failed_runs = 0, unnamed = 0;
    bool clean = false;
    for (long n = 0; !clean && n < 100; n++) {
        uint64_t live = test_live_blocks();
        urio_loop_t *loop = test_loop_new();
        urio_coro_t *coro = URIO_CORO(returns_seven, NULL);
        assert_non_null(coro);
        urio_task_opts_t opts = { .name = "seven" };
        uint64_t fails = failures();
        urio__alloc_fail_after(n, false);
        errno = 0;
        urio_future_t *t = urio_task_create_opts(loop, coro, &opts);
        int err = errno;
        urio__alloc_fail_after(-1, false);
        bool injected = failures() > fails;
        if (t == NULL) {
            assert_true(injected);
            assert_int_equal(err, ENOMEM);
            failed_runs++;
        } else {
            if (injected) {
                /* What failed was the name's copy: the task runs under its coroutine's name. */
                assert_string_equal(urio_task_name(t), "returns_seven");
                unnamed++;
            } else {
                assert_string_equal(urio_task_name(t), "seven");
                clean = true;
            }
            void *r = NULL;
            assert_int_equal(urio_loop_run_until_complete(loop, t), 0);
            assert_int_equal(urio_future_result(t, &r), 0);
            assert_ptr_equal(r, (void *)7);
            urio_future_unref(t);
        }
        test_loop_close(loop);
        if (test_live_blocks() != live)
            fail_msg("allocation %ld failed: %lld blocks left behind", n,
                     (long long)(test_live_blocks() - live));
    }
    assert_true(clean);
    assert_true(failed_runs >= 3);      /* the loop's task state, the task, its stack */
    assert_int_equal(unnamed, 1);
    assert_int_equal(test_log_count("never awaited"), 0);   /* discarded, not forgotten */
}

/* urio_run: its loop, its main task, the run itself. */
static void test_alloc_run_oom(void **state)
{
    (void)state;
    test_log_capture();
    int failed_runs = 0;
    bool clean = false;
    for (long n = 0; !clean && n < 200; n++) {
        uint64_t live = test_live_blocks();
        urio_coro_t *coro = URIO_CORO(returns_seven, NULL);
        assert_non_null(coro);
        uint64_t fails = failures();
        void *r = NULL;
        urio__alloc_fail_after(n, false);
        int ret = urio_run(coro, NULL, &r);
        urio__alloc_fail_after(-1, false);
        if (failures() > fails) {
            if (ret != -ENOMEM && ret != 0)
                fail_msg("allocation %ld failed: urio_run returned %d (%s)", n, ret,
                         urio_strerror(ret));
            if (ret == 0)
                assert_ptr_equal(r, (void *)7);
            failed_runs++;
        } else {
            assert_int_equal(ret, 0);
            assert_ptr_equal(r, (void *)7);
            clean = true;
        }
        if (test_live_blocks() != live)
            fail_msg("allocation %ld failed: %lld blocks left behind", n,
                     (long long)(test_live_blocks() - live));
    }
    assert_true(clean);
    assert_true(failed_runs >= 3);      /* the loop, the task, its stack at least */
    assert_int_equal(test_log_count("never awaited"), 0);
}

/*
 * Inside a running task: `op` arms the failure (urio__alloc_fail_after(oom_n,
 * false)) just before the call it tests, disarms it, cleans up, and returns
 * the call's outcome: 0, or -ENOMEM.
 */
static long oom_n;

static void oom_in_task(urio_coro_fn op, const char *what, int min_failed_runs)
{
    test_log_capture();
    int failed_runs = 0;
    bool clean = false;
    for (oom_n = 0; !clean && oom_n < 300; oom_n++) {
        uint64_t live = test_live_blocks(), fails = failures();
        int ret = urio_run(urio_coro_create(op, NULL, URIO_SITE(op)), NULL, NULL);
        urio__alloc_fail_after(-1, false);
        bool injected = failures() > fails;
        if (injected && ret != 0 && ret != -ENOMEM)
            fail_msg("%s, allocation %ld failed: %d (%s)", what, oom_n, ret, urio_strerror(ret));
        if (!injected && ret != 0)
            fail_msg("%s failed without an injected failure: %d (%s)", what, ret,
                     urio_strerror(ret));
        failed_runs += ret == -ENOMEM;
        clean = !injected;
        if (test_live_blocks() != live)
            fail_msg("%s, allocation %ld failed: %lld blocks left behind", what, oom_n,
                     (long long)(test_live_blocks() - live));
    }
    assert_true(clean);
    if (failed_runs < min_failed_runs)
        fail_msg("%s: only %d runs failed with ENOMEM", what, failed_runs);
    assert_int_equal(test_log_count("never awaited"), 0);
    assert_int_equal(test_log_count("never retrieved"), 0);
}

#define ARM() urio__alloc_fail_after(oom_n, false)
#define DISARM() urio__alloc_fail_after(-1, false)

static int nap(void *arg, void **res)
{
    int err = urio_sleep((uint64_t)(uintptr_t)arg * US);
    if (err < 0)
        return err;
    *res = arg;
    return 0;
}

/* Two napping children, made before the failure is armed. */
static void spawn_two(urio_future_t *fs[2])
{
    fs[0] = urio_spawn(NULL, nap, (void *)100);
    fs[1] = urio_spawn(NULL, nap, (void *)200);
    assert_non_null(fs[0]);
    assert_non_null(fs[1]);
}

/* Waits for both (their errors read) and lets them go. */
static void finish_two(urio_future_t *fs[2])
{
    for (int i = 0; i < 2; i++) {
        urio_shield_begin();
        urio_await(fs[i], NULL);
        urio_shield_end();
        urio_future_unref(fs[i]);
    }
}

static int op_gather(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *fs[2];
    spawn_two(fs);
    void *r[2] = { NULL, NULL };
    ARM();
    int ret = urio_gather(fs, 2, r, NULL);
    DISARM();
    if (ret == 0) {
        assert_ptr_equal(r[0], (void *)100);
        assert_ptr_equal(r[1], (void *)200);
    }
    finish_two(fs);
    return ret;
}

static int op_wait(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *fs[2];
    spawn_two(fs);
    bool done[2] = { false, false };
    ARM();
    int ret = urio_wait(fs, 2, URIO_ALL_COMPLETED, -1, done);
    int timed = ret < 0 ? ret : urio_wait(fs, 2, URIO_FIRST_COMPLETED, 10 * (int64_t)MS, NULL);
    DISARM();
    finish_two(fs);
    if (ret >= 0) {
        assert_int_equal(ret, 2);
        assert_true(done[0] && done[1]);
    }
    if (timed < 0)
        return timed;
    return ret < 0 ? ret : 0;
}

static int op_as_completed(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *fs[2];
    spawn_two(fs);
    urio_as_completed_t *it = NULL;
    ARM();
    int ret = urio_as_completed_new(&it, fs, 2, -1);
    urio_future_t *got[2] = { NULL, NULL };
    int ngot = 0;
    while (ret == 0) {
        urio_future_t *next = NULL;
        int r = urio_as_completed_next(it, &next);
        if (r < 0)
            ret = r;
        else if (r == 0)
            break;
        else
            got[ngot++] = next;
    }
    DISARM();
    urio_as_completed_free(it);
    if (ret == 0) {
        assert_int_equal(ngot, 2);
        /* In completion order: by their sleeps (100 us, then 200 us) unless one failed at once. */
        if (urio_future_result(fs[0], NULL) == 0 && urio_future_result(fs[1], NULL) == 0) {
            assert_ptr_equal(got[0], fs[0]);
            assert_ptr_equal(got[1], fs[1]);
        } else {
            assert_true(got[0] != got[1]);
        }
    }
    finish_two(fs);
    return ret;
}

static int op_task_group(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_coro_t *c[2] = { URIO_CORO(nap, (void *)100), URIO_CORO(nap, (void *)200) };
    assert_non_null(c[0]);
    assert_non_null(c[1]);
    urio_task_group_t *g = NULL;
    ARM();
    int ret = urio_task_group_new(&g);
    if (ret < 0) {
        DISARM();
        urio_coro_close(c[0]);
        urio_coro_close(c[1]);
        return ret;
    }
    for (int i = 0; i < 2; i++) {
        errno = 0;
        urio_future_t *child = urio_task_group_spawn(g, c[i]);     /* takes c[i], also on failure */
        if (child == NULL) {
            assert_int_equal(errno, ENOMEM);
            ret = -ENOMEM;
        }
    }
    int waited = urio_task_group_wait(g);
    DISARM();
    if (waited == -ENOMEM && urio_task_group_error_message(g) == NULL) {
        /* The wait itself failed, before it waited (no child did): it can be tried again. */
        assert_int_equal(urio_task_group_wait(g), 0);
    } else if (waited < 0) {
        /* A child failed (its sleep's timer): the group says which. */
        assert_int_equal(waited, -ENOMEM);
        assert_non_null(strstr(urio_task_group_error_message(g), "child 'nap'"));
    }
    urio_task_group_free(g);
    return ret < 0 ? ret : waited;
}

static int op_sleep_and_wait_for(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *f = NULL;
    assert_int_equal(urio_future_new(&f, urio_loop_current()), 0);
    ARM();
    int ret = urio_sleep(100 * US);
    int timed = ret < 0 ? ret : urio_wait_for(f, 100 * US, NULL);
    DISARM();
    urio_future_unref(f);
    if (ret < 0)
        return ret;
    assert_true(urio_future_cancelled(f) || timed == -ENOMEM);
    return timed == -ETIMEDOUT ? 0 : timed;
}

static int op_run_coroutine_threadsafe(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_coro_t *c = URIO_CORO(nap, (void *)100);
    assert_non_null(c);
    ARM();
    errno = 0;
    urio_future_t *p = urio_run_coroutine_threadsafe(urio_loop_current(), c);
    if (p == NULL) {
        DISARM();
        assert_int_equal(errno, ENOMEM);
        return -ENOMEM;
    }
    void *r = NULL;
    int ret = urio_await(p, &r);
    DISARM();
    if (ret == 0) {
        assert_ptr_equal(r, (void *)100);
    } else {
        /* The task could not be made on the loop (the proxy says so), or it failed (its sleep). */
        assert_int_equal(ret, -ENOMEM);
        const char *msg = urio_future_error_message(p);
        if (msg != NULL)
            assert_string_equal(msg, "urio_run_coroutine_threadsafe: Cannot allocate memory");
    }
    urio_future_unref(p);
    return ret;
}

static void test_alloc_gather_in_task_oom(void **state)
{
    (void)state;
    oom_in_task(op_gather, "urio_gather", 2);
}

static void test_alloc_wait_in_task_oom(void **state)
{
    (void)state;
    oom_in_task(op_wait, "urio_wait", 3);
}

static void test_alloc_as_completed_oom(void **state)
{
    (void)state;
    oom_in_task(op_as_completed, "urio_as_completed", 4);
}

static void test_alloc_task_group_oom(void **state)
{
    (void)state;
    oom_in_task(op_task_group, "a task group", 4);
}

static void test_alloc_sleep_and_wait_for_oom(void **state)
{
    (void)state;
    oom_in_task(op_sleep_and_wait_for, "urio_sleep and urio_wait_for", 2);
}

static void test_alloc_run_coroutine_threadsafe_oom(void **state)
{
    (void)state;
    oom_in_task(op_run_coroutine_threadsafe, "urio_run_coroutine_threadsafe", 3);
}

/* ---------------------------------------------------------------- */
/* URIO_MALLOC: which allocator urio's blocks come from               */

/*
 * Read once, before main (a constructor): so each value is tried in a fresh
 * run of this program (URIO_TEST_ALLOC_PROBE set), which uses a loop, grows
 * and shrinks blocks, has a huge realloc refused and counted, and checks
 * every block it made was freed.  That the blocks then come from malloc,
 * where valgrind sees them, is what the `valgrind` suite's leak-detector
 * check shows (tests/valgrind_leak.c).
 */
static int alloc_probe(void)
{
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = test_future_new(loop);
    urio_future_set_result(f, NULL);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    urio_future_unref(f);
    void *p = urio__calloc(1000, 1000);
    urio_mem_stats_t a;
    urio_mem_stats(&a);
    void *huge = urio__realloc(p, SIZE_MAX / 2);       /* refused: p stays */
    urio_mem_stats_t b;
    urio_mem_stats(&b);
    p = urio__realloc(p, 8u << 20);
    urio__free(p);
    test_loop_close(loop);
    fprintf(stderr, "huge realloc: %s, counted %s; blocks left: %llu\n",
            huge ? "given" : "refused", b.failures == a.failures + 1 ? "yes" : "no",
            (unsigned long long)test_live_blocks());
    return 0;
}

static int exec_probe(void *value)
{
    if (value)
        setenv("URIO_MALLOC", value, 1);
    else
        unsetenv("URIO_MALLOC");
    setenv("URIO_TEST_ALLOC_PROBE", "1", 1);
    execl("/proc/self/exe", "test_alloc", (char *)NULL);
    return 127;
}

static void test_alloc_urio_malloc_env(void **state)
{
    (void)state;
    test_needs_exec_self();
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    skip();     /* the sanitizer builds always use the C library's malloc */
#endif
    const char *values[] = { "libc", NULL, "jemalloc", "tcmalloc" };
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char out[4096];
        int status = test_child(exec_probe, (void *)values[i], out, sizeof out);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
            strstr(out, "huge realloc: refused, counted yes; blocks left: 0\n") == NULL)
            fail_msg("URIO_MALLOC=%s: status %#x; the program wrote:\n%s",
                     values[i] ? values[i] : "(unset)", status, out);
        if (URIO_HAVE_JEMALLOC && (i == 3) !=
            (strstr(out, "WARNING urio: URIO_MALLOC=tcmalloc is not understood (use libc or "
                         "jemalloc): urio allocates with jemalloc") != NULL))
            fail_msg("URIO_MALLOC=%s: a warning only for the value not understood:\n%s",
                     values[i] ? values[i] : "(unset)", out);
    }
}

int main(void)
{
    if (getenv("URIO_TEST_ALLOC_PROBE"))
        return alloc_probe();
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_alloc_gather_new_fails_with_a_done_child),
        URIO_TEST(test_alloc_stats_consistent),
        URIO_TEST(test_alloc_stats_loop_life_cycle),
        URIO_TEST(test_alloc_urio_malloc_env),
        URIO_TEST(test_alloc_loop_new_oom_once),
        URIO_TEST(test_alloc_loop_new_oom_persistent),
        URIO_TEST(test_alloc_future_new_oom),
        URIO_TEST(test_alloc_future_debug_stack_oom),
        URIO_TEST(test_alloc_future_set_error_message_oom),
        URIO_TEST(test_alloc_future_add_done_callback_oom),
        URIO_TEST(test_alloc_future_runner_oom_add_done_callback),
        URIO_TEST(test_alloc_future_runner_oom_set_result),
        URIO_TEST(test_alloc_call_soon_growth_oom),
        URIO_TEST(test_alloc_call_later_growth_oom),
        URIO_TEST(test_alloc_call_soon_threadsafe_growth_oom),
        URIO_TEST(test_alloc_threadsafe_pool_growth_oom),
        URIO_TEST(test_alloc_turn_oom_loses_nothing),
        URIO_TEST(test_alloc_coro_create_oom),
        URIO_TEST(test_alloc_gather_new_oom),
        URIO_TEST(test_alloc_shield_new_oom),
        URIO_TEST(test_alloc_task_create_oom),
        URIO_TEST(test_alloc_run_oom),
        URIO_TEST(test_alloc_gather_in_task_oom),
        URIO_TEST(test_alloc_wait_in_task_oom),
        URIO_TEST(test_alloc_as_completed_oom),
        URIO_TEST(test_alloc_task_group_oom),
        URIO_TEST(test_alloc_sleep_and_wait_for_oom),
        URIO_TEST(test_alloc_run_coroutine_threadsafe_oom),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
