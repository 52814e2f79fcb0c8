/*
 * test_loop.c — the loop's life cycle, its turn, callbacks and handles.
 */
#include "helpers.h"

#include <unistd.h>

struct rec {
    urio_loop_t *loop;
    int order[64];
    int n;
};

struct tagged {
    struct rec *rec;
    int tag;
};

static void record_cb(void *arg)
{
    struct tagged *t = arg;
    t->rec->order[t->rec->n++] = t->tag;
}

static void test_loop_new_close(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    assert_false(urio_loop_get_debug(loop) && getenv("URIO_DEBUG") == NULL && !URIO_DEBUG_BUILD);
    assert_int_equal(urio_loop_get_slow_callback_duration(loop), 100 * MS);
    test_loop_close(loop);
}

static void test_loop_new_rejects_bad_input(void **state)
{
    (void)state;
    assert_int_equal(urio_loop_new(NULL, NULL), -EINVAL);
    urio_loop_t *loop = (urio_loop_t *)&loop;
    urio_loop_opts_t opts = { .ring_entries = 40000 };
    assert_int_equal(urio_loop_new(&loop, &opts), -EINVAL);
    assert_null(loop);
    assert_int_equal(urio_loop_close(NULL), -EINVAL);
    assert_int_equal(urio_loop_run_forever(NULL), -EINVAL);
    assert_int_equal(urio_call_soon(NULL, record_cb, NULL).id, 0);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(urio_call_soon_threadsafe(NULL, record_cb, NULL), -EINVAL);
}

/* The loop's settings and accessors: NULL answered harmlessly, another thread (while the
 * loop runs) refused and nothing changed, a closed loop refused. */
static void nothing_cb(void *arg)
{
    (void)arg;
}

struct elsewhere {
    urio_loop_t *loop;
    int stats, watchdog;
    int64_t next;
};

static void *calls_accessors(void *arg)
{
    struct elsewhere *e = arg;
    urio_loop_stats_t st;
    e->stats = urio_loop_stats(e->loop, &st);
    e->next = urio_loop_next_timeout(e->loop);
    e->watchdog = urio_loop_set_stall_watchdog(e->loop, 10 * MS);
    urio_loop_set_debug(e->loop, true);
    urio_loop_set_slow_callback_duration(e->loop, 1);
    urio_loop_set_timer_slack(e->loop, 5 * MS);
    urio_loop_set_exception_handler(e->loop, NULL, NULL);
    return NULL;
}

static void accessors_from_thread(void *arg)
{
    struct elsewhere *e = arg;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, calls_accessors, e), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    urio_loop_stop(e->loop);
}

static void test_loop_settings_refused_elsewhere(void **state)
{
    (void)state;
    test_log_capture();
    /* NULL: nothing to do, nothing to crash. */
    urio_loop_stop(NULL);
    urio_loop_set_debug(NULL, true);
    urio_loop_set_slow_callback_duration(NULL, 1);
    urio_loop_set_timer_slack(NULL, 1);
    assert_int_equal(urio_loop_set_stall_watchdog(NULL, MS), -EINVAL);
    assert_false(urio_loop_get_debug(NULL));
    assert_int_equal(urio_loop_get_slow_callback_duration(NULL), 0);
    assert_int_equal(urio_loop_get_timer_slack(NULL), 0);
    assert_int_equal(urio_loop_next_timeout(NULL), 0);
    assert_int_equal(urio_loop_stats(NULL, NULL), -EINVAL);
    assert_false(urio_loop_alive(NULL));
    urio_loop_default_exception_handler(NULL, NULL);

    urio_loop_t *loop = test_loop_new();
    uint64_t slow = urio_loop_get_slow_callback_duration(loop);
    uint64_t slack = urio_loop_get_timer_slack(loop);
    /* A timer already due: no wait. */
    urio_call_at(loop, urio_loop_time(loop) - 1, nothing_cb, NULL);
    assert_int_equal(urio_loop_next_timeout(loop), 0);
    struct elsewhere e = { .loop = loop };
    urio_call_soon(loop, accessors_from_thread, &e);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    assert_int_equal(e.stats, -EPERM);
    assert_int_equal(e.next, 0);
    assert_int_equal(e.watchdog, -EPERM);
    assert_false(urio_loop_get_debug(loop));
    assert_int_equal(urio_loop_get_slow_callback_duration(loop), slow);
    assert_int_equal(urio_loop_get_timer_slack(loop), slack);
    assert_log_contains("ERROR urio_loop_stats(): Non-thread-safe operation");
    assert_log_contains("ERROR urio_loop_set_debug(): Non-thread-safe operation");
    assert_log_contains("ERROR urio_loop_set_exception_handler(): Non-thread-safe operation");
    /* The timer slack is capped at a second. */
    urio_loop_set_timer_slack(loop, 5000 * MS);
    assert_int_equal(urio_loop_get_timer_slack(loop), 1000 * MS);
    urio_loop_ref(loop);
    test_loop_close(loop);
    /* Closed (its memory held by the reference): no watchdog on it. */
    assert_int_equal(urio_loop_set_stall_watchdog(loop, MS), -ESHUTDOWN);
    assert_log_contains("ERROR urio_loop_set_stall_watchdog(): Event loop is closed");
    urio_loop_unref(loop);
}

static void test_loop_call_soon_fifo(void **state)
{
    (void)state;
    struct rec rec = { .loop = test_loop_new() };
    struct tagged t[50];
    for (int i = 0; i < 50; i++) {
        t[i] = (struct tagged){ &rec, i };
        assert_int_not_equal(urio_call_soon(rec.loop, record_cb, &t[i]).id, 0);
    }
    urio_call_soon(rec.loop, test_stop_cb, rec.loop);
    assert_int_equal(urio_loop_run_forever(rec.loop), 0);
    assert_int_equal(rec.n, 50);
    for (int i = 0; i < 50; i++)
        assert_int_equal(rec.order[i], i);
    test_loop_close(rec.loop);
}

/* A callback's own call_soon runs in the next turn, after what was already ready. */
static struct tagged later_t;
static void schedules_later_cb(void *arg)
{
    struct tagged *t = arg;
    record_cb(t);
    urio_call_soon(t->rec->loop, record_cb, &later_t);
}

static void test_loop_runs_only_what_was_ready(void **state)
{
    (void)state;
    struct rec rec = { .loop = test_loop_new() };
    struct tagged a = { &rec, 1 }, c = { &rec, 3 };
    later_t = (struct tagged){ &rec, 2 };
    urio_call_soon(rec.loop, schedules_later_cb, &a);
    urio_call_soon(rec.loop, record_cb, &c);
    urio_loop_stop(rec.loop);       /* stop before running: one turn, then stop */
    assert_int_equal(urio_loop_run_forever(rec.loop), 0);
    assert_int_equal(rec.n, 2);     /* a and c ran; a's follow-up waits */
    assert_int_equal(rec.order[0], 1);
    assert_int_equal(rec.order[1], 3);
    urio_loop_stop(rec.loop);
    assert_int_equal(urio_loop_run_forever(rec.loop), 0);
    assert_int_equal(rec.n, 3);
    assert_int_equal(rec.order[2], 2);
    test_loop_close(rec.loop);
}

static void test_loop_handle_cancel(void **state)
{
    (void)state;
    struct rec rec = { .loop = test_loop_new() };
    struct tagged a = { &rec, 1 }, b = { &rec, 2 }, c = { &rec, 3 };
    urio_handle_t ha = urio_call_soon(rec.loop, record_cb, &a);
    urio_handle_t hb = urio_call_soon(rec.loop, record_cb, &b);
    assert_true(urio_handle_cancel(rec.loop, hb));
    assert_false(urio_handle_cancel(rec.loop, hb));       /* already cancelled */
    assert_false(urio_handle_cancel(rec.loop, (urio_handle_t){ 0 }));
    assert_false(urio_handle_cancel(rec.loop, (urio_handle_t){ 0xdead00000001ull, hb.loop }));
    /* b's spent handle must not cancel c, scheduled after it. */
    urio_handle_t hc = urio_call_soon(rec.loop, record_cb, &c);
    assert_int_not_equal(hc.id, hb.id);
    assert_false(urio_handle_cancel(rec.loop, hb));
    urio_loop_stop(rec.loop);
    urio_loop_run_forever(rec.loop);
    assert_int_equal(rec.n, 2);
    assert_int_equal(rec.order[0], 1);
    assert_int_equal(rec.order[1], 3);
    assert_false(urio_handle_cancel(rec.loop, ha));       /* it ran */
    assert_false(urio_handle_cancel(rec.loop, hc));
    test_loop_close(rec.loop);
}

/* Cancelling, from a callback, one that is ready in the same turn. */
static urio_handle_t victim;
static void cancel_victim_cb(void *arg)
{
    struct tagged *t = arg;
    record_cb(t);
    assert_true(urio_handle_cancel(t->rec->loop, victim));
}

static void test_loop_cancel_from_callback(void **state)
{
    (void)state;
    struct rec rec = { .loop = test_loop_new() };
    struct tagged a = { &rec, 1 }, b = { &rec, 2 };
    urio_call_soon(rec.loop, cancel_victim_cb, &a);
    victim = urio_call_soon(rec.loop, record_cb, &b);
    urio_loop_stop(rec.loop);
    urio_loop_run_forever(rec.loop);
    assert_int_equal(rec.n, 1);
    test_loop_close(rec.loop);
}

static int nested_ret;
static urio_loop_t *seen_current;
static int close_ret;
static void nested_run_cb(void *arg)
{
    urio_loop_t *loop = arg;
    seen_current = urio_loop_current();
    nested_ret = urio_loop_run_forever(loop);
    close_ret = urio_loop_close(loop);
    urio_loop_stop(loop);
}

static void test_loop_reentry_refused(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    test_log_capture();
    assert_null(urio_loop_current());
    urio_call_soon(loop, nested_run_cb, loop);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    assert_int_equal(nested_ret, -EBUSY);
    assert_int_equal(close_ret, -EBUSY);
    assert_ptr_equal(seen_current, loop);
    assert_null(urio_loop_current());
    assert_log_contains("This event loop is already running");
    test_loop_close(loop);
}

/* Another loop on the same thread cannot run inside a running one. */
static void run_other_cb(void *arg)
{
    urio_loop_t **loops = arg;
    nested_ret = urio_loop_run_forever(loops[1]);
    urio_loop_stop(loops[0]);
}

static void test_loop_two_loops_one_thread(void **state)
{
    (void)state;
    urio_loop_t *loops[2] = { test_loop_new(), test_loop_new() };
    test_log_capture();
    urio_call_soon(loops[0], run_other_cb, loops);
    urio_loop_run_forever(loops[0]);
    assert_int_equal(nested_ret, -EBUSY);
    assert_log_contains("Cannot run the event loop while another loop is running");
    /* Sequentially, both run on this thread. */
    urio_call_soon(loops[1], test_stop_cb, loops[1]);
    assert_int_equal(urio_loop_run_forever(loops[1]), 0);
    test_loop_close(loops[0]);
    test_loop_close(loops[1]);
}

static void test_loop_time_is_monotonic(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    uint64_t a = urio_loop_time(loop);
    usleep(1000);
    uint64_t b = urio_loop_time(loop);
    assert_true(b >= a + 1 * MS);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t mono = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    assert_true(mono >= b && mono - b < 1000 * MS);
    test_loop_close(loop);
}

static int never_ran;
static void never_cb(void *arg)
{
    (void)arg;
    never_ran++;
}

/* Close drops pending callbacks and timers, and frees them. */
static void test_loop_close_drops_pending(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    never_ran = 0;
    for (int i = 0; i < 1000; i++) {
        urio_call_soon(loop, never_cb, NULL);
        urio_call_later(loop, 3600 * 1000 * MS, never_cb, NULL);
    }
    test_loop_close(loop);
    assert_int_equal(never_ran, 0);
}

/* A loop made on one thread runs on another, and the creator closes it after. */
static void *run_thread(void *arg)
{
    urio_loop_t *loop = arg;
    urio_call_soon(loop, test_stop_cb, loop);
    return (void *)(intptr_t)urio_loop_run_forever(loop);
}

static void test_loop_runs_on_another_thread(void **state)
{
    (void)state;
    test_needs_threads();
    urio_loop_t *loop = test_loop_new();
    pthread_t t;
    void *ret;
    assert_int_equal(pthread_create(&t, NULL, run_thread, loop), 0);
    pthread_join(t, &ret);
    assert_int_equal((intptr_t)ret, 0);
    /* The ring is now bound to that thread: running here is refused... */
    test_log_capture();
    if (loop->ring.single_issuer) {
        assert_int_equal(urio_loop_run_forever(loop), -EPERM);
        assert_log_contains("belongs to the thread that first ran it");
    }
    /* ...but closing here works, and frees everything. */
    test_loop_close(loop);
}

/* Ready work does not keep the loop out of the kernel for ever. */
static uint64_t chain_left;
static void chain_cb(void *arg)
{
    urio_loop_t *loop = arg;
    if (--chain_left == 0)
        urio_loop_stop(loop);
    else
        urio_call_soon(loop, chain_cb, loop);
}

static void test_loop_ready_work_still_enters_kernel(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    chain_left = 100000;
    uint64_t enters0 = loop->ring.enters;
    urio_call_soon(loop, chain_cb, loop);
    urio_loop_run_forever(loop);
    uint64_t enters = loop->ring.enters - enters0;
    /* Not once per callback (that is what makes other loops slow)... */
    assert_true(enters < 100000 / 10);
    /* ...but at least once per URIO__ENTER_EVERY_CALLBACKS callbacks. */
    assert_true(enters >= 100000 / URIO__ENTER_EVERY_CALLBACKS);
    test_loop_close(loop);
}

/* A thread-safe call reaches a loop that is busy with a callback chain. */
static void *poke_thread(void *arg)
{
    urio_loop_t *loop = arg;
    usleep(20000);
    urio_call_soon_threadsafe(loop, test_stop_cb, loop);
    return NULL;
}

static void endless_cb(void *arg)
{
    urio_call_soon(arg, endless_cb, arg);
}

static void test_loop_busy_loop_sees_inbox(void **state)
{
    (void)state;
    test_needs_threads();
    urio_loop_t *loop = test_loop_new();
    pthread_t t;
    urio_call_soon(loop, endless_cb, loop);
    assert_int_equal(pthread_create(&t, NULL, poke_thread, loop), 0);
    uint64_t t0 = urio__now();
    assert_int_equal(urio_loop_run_forever(loop), 0);
    assert_true(urio__now() - t0 < 5000 * MS);
    pthread_join(t, NULL);
    test_loop_close(loop);
}

/* Steady-state dispatch allocates nothing. */
static void test_loop_dispatch_allocates_nothing(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    chain_left = 10000;
    urio_call_soon(loop, chain_cb, loop);
    urio_loop_run_forever(loop);            /* warm-up */
    urio_mem_stats_t a, b;
    urio_mem_stats(&a);
    chain_left = 100000;
    urio_call_soon(loop, chain_cb, loop);
    urio_loop_run_forever(loop);
    urio_mem_stats(&b);
    assert_int_equal(b.allocs - a.allocs, 0);
    test_loop_close(loop);
}

static void noop_cb(void *arg)
{
    (void)arg;
}

/* libuv's uv_loop_alive and uv_backend_timeout, for programs that embed a loop. */
static void test_loop_alive_and_next_timeout(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    assert_false(urio_loop_alive(loop));            /* the wake-up read does not count */
    assert_int_equal(urio_loop_next_timeout(loop), -1);
    urio_handle_t t = urio_call_later(loop, 500 * MS, noop_cb, NULL);
    assert_true(urio_loop_alive(loop));
    int64_t next = urio_loop_next_timeout(loop);
    assert_true(next > 400 * (int64_t)MS && next <= 500 * (int64_t)MS);
    urio_handle_t h = urio_call_soon(loop, noop_cb, NULL);
    assert_int_equal(urio_loop_next_timeout(loop), 0);
    assert_true(urio_handle_cancel(loop, h));
    assert_true(urio_handle_cancel(loop, t));
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_false(urio_loop_alive(loop));
    assert_int_equal(urio_loop_next_timeout(loop), -1);
    assert_false(urio_loop_alive(NULL));
    test_loop_close(loop);
}

/*
 * issue 14 point 3: urio_loop_run_forever returning on one thread while
 * another closes the loop the moment it may.  run must touch nothing of the
 * loop after it lets go of it (the tsan and sanitize suites run this).
 */
static void *run_then_return(void *arg)
{
    urio_loop_t *loop = arg;
    urio_loop_run_forever(loop);
    return NULL;
}

static atomic_int running_now;

static void mark_and_stop(void *arg)
{
    atomic_store(&running_now, 1);
    urio_loop_stop(arg);
}

static void test_loop_close_races_run_returning(void **state)
{
    (void)state;
    test_needs_threads();
    for (int round = 0; round < 200; round++) {
        urio_loop_t *loop = test_loop_new();
        urio_call_soon(loop, mark_and_stop, loop);
        atomic_store(&running_now, 0);
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, run_then_return, loop), 0);
        while (!atomic_load(&running_now))
            ;
        int ret;
        while ((ret = urio_loop_close(loop)) == -EBUSY)
            ;
        assert_int_equal(ret, 0);
        pthread_join(th, NULL);
    }
}

/*
 * issue 14 point 6: fork.  A child forked from a callback does not inherit
 * "the running loop", can make and run loops of its own, is refused (with
 * URIO_EFORKED) on the parent's loops, and may close them without harm to
 * the parent, which goes on using them.
 */
static void child_cb(void *arg)
{
    *(int *)arg = 42;
}

static void *child_job(void *arg)
{
    return arg;
}

static int child_after_fork(void *arg)
{
    urio_loop_t *inherited = arg;
    if (urio_loop_current() != NULL)
        return 10;
    urio_loop_t *own;
    if (urio_loop_new(&own, NULL) != 0)
        return 11;
    int x = 0;
    urio_call_soon(own, child_cb, &x);
    urio_call_soon(own, test_stop_cb, own);
    if (urio_loop_run_forever(own) != 0 || x != 42)
        return 12;
    if (urio_loop_close(own) != 0)
        return 13;
    if (urio_loop_run_forever(inherited) != URIO_EFORKED)
        return 14;
    if (urio_call_soon_threadsafe(inherited, child_cb, &x) != URIO_EFORKED)
        return 15;
    /* The parent's pools and ring are not the child's: refused, not hung or crashed. */
    errno = 0;
    if (urio_run_in_executor(inherited, NULL, child_job, NULL) != NULL ||
        errno != -URIO_EFORKED)
        return 17;
    int p[2];
    char b[1];
    if (pipe(p) != 0)
        return 18;
    errno = 0;
    if (urio_read_submit(inherited, p[0], b, 1, -1, 0) != NULL || errno != -URIO_EFORKED)
        return 19;
    if (urio_loop_close(inherited) != 0)
        return 16;
    return 0;
}

struct forker {
    urio_loop_t *loop;
    urio_loop_t *never_run;
    int status, status2;
    char out[4096];
};

static void fork_from_callback(void *arg)
{
    struct forker *f = arg;
    /* The parent's default pool exists (a job of its own is out) when the child is made. */
    urio_future_unref(urio_run_in_executor(f->loop, NULL, child_job, NULL));
    f->status = test_child(child_after_fork, f->loop, f->out, sizeof f->out);
    f->status2 = test_child(child_after_fork, f->never_run, f->out, sizeof f->out);
    urio_loop_stop(f->loop);
}

static void test_loop_fork_child_gets_clean_slate(void **state)
{
    (void)state;
    test_needs_fork_with_rings();
    struct forker f = { .loop = test_loop_new(), .never_run = test_loop_new() };
    urio_call_soon(f.loop, fork_from_callback, &f);
    urio_loop_run_forever(f.loop);
    assert_true(WIFEXITED(f.status));
    if (WEXITSTATUS(f.status) != 0)
        fail_msg("child failed at step %d; it wrote:\n%s", WEXITSTATUS(f.status), f.out);
    assert_true(WIFEXITED(f.status2));
    assert_int_equal(WEXITSTATUS(f.status2), 0);
    assert_non_null(strstr(f.out, "belongs to the parent process"));
    /* The parent's loops are intact: both run, and close. */
    int x = 0;
    urio_call_soon(f.loop, child_cb, &x);
    urio_call_soon(f.loop, test_stop_cb, f.loop);
    assert_int_equal(urio_loop_run_forever(f.loop), 0);
    assert_int_equal(x, 42);
    x = 0;
    urio_call_soon(f.never_run, child_cb, &x);
    urio_call_soon(f.never_run, test_stop_cb, f.never_run);
    assert_int_equal(urio_loop_run_forever(f.never_run), 0);
    assert_int_equal(x, 42);
    test_loop_close(f.loop);
    test_loop_close(f.never_run);
}

/*
 * The same from inside a task (issue 14 point 6): the child runs on a copy
 * of the task's stack, yet no task is current there and no loop runs; the
 * parent's loop refuses it; it makes a loop of its own and runs a task on
 * it.  The parent's task, and another of its tasks waiting across the fork,
 * go on and finish.
 */
static int child_task(void *arg, void **result)
{
    (void)arg;
    if (urio_task_current() == NULL || urio_sleep(1 * MS) != 0)
        return -EIO;
    *result = (void *)(uintptr_t)42;
    return 0;
}

static int child_in_task_steps(void *arg)
{
    urio_loop_t *inherited = arg;
    if (urio_loop_current() != NULL)
        return 10;
    if (urio_task_current() != NULL)
        return 11;
    /* The awaiting calls see no task: refused, not a switch into the parent's. */
    if (urio_sleep(1 * MS) != -EPERM || urio_yield() != -EPERM)
        return 12;
    if (urio_loop_run_forever(inherited) != URIO_EFORKED)
        return 13;
    int x = 0;
    if (urio_call_soon_threadsafe(inherited, child_cb, &x) != URIO_EFORKED)
        return 14;
    errno = 0;
    if (urio_run_in_executor(inherited, NULL, child_job, NULL) != NULL ||
        errno != -URIO_EFORKED)
        return 15;
    /* A task there would never run (nor be freed: closing runs none of its hooks). */
    errno = 0;
    if (urio_spawn(inherited, child_task, NULL) != NULL || errno != -URIO_EFORKED)
        return 21;
    if (urio_loop_close(inherited) != 0)
        return 16;
    /* A loop of its own, with a task (urio_run), and one made by hand with urio_spawn. */
    void *r = NULL;
    if (urio_run(URIO_CORO(child_task, NULL), NULL, &r) != 0 || r != (void *)(uintptr_t)42)
        return 17;
    urio_loop_t *own;
    if (urio_loop_new(&own, NULL) != 0)
        return 18;
    urio_future_t *t = urio_spawn(own, child_task, NULL);
    r = NULL;
    if (t == NULL || urio_loop_run_until_complete(own, t) != 0 ||
        urio_future_result(t, &r) != 0 || r != (void *)(uintptr_t)42)
        return 19;
    urio_future_unref(t);
    if (urio_loop_close(own) != 0)
        return 20;
    return 0;
}

/*
 * Ends with _exit: the child runs on (a copy of) the parent task's stack,
 * where LeakSanitizer, scanning only the stack the thread is switched to,
 * would take what the main stack's frames hold (cmocka's) for leaks.
 */
static int child_in_task(void *arg)
{
    int ret = child_in_task_steps(arg);
    fflush(NULL);
    _exit(ret);
}

struct task_forker {
    int status;
    char out[4096];
    bool other_done;
};

static int sleeps_across_fork(void *arg, void **result)
{
    (void)result;
    int ret = urio_sleep(5 * MS);
    ((struct task_forker *)arg)->other_done = true;
    return ret;
}

static int forks_in_task(void *arg, void **result)
{
    struct task_forker *f = arg;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t *other = urio_spawn(loop, sleeps_across_fork, f);
    if (other == NULL)
        return -errno;
    urio_yield();                               /* it starts, and sleeps */
    f->status = test_child(child_in_task, loop, f->out, sizeof f->out);
    /* Back in the parent's task, on its loop. */
    if (urio_task_current() == NULL || urio_loop_current() != loop)
        return -EINVAL;
    int ret = urio_await(other, NULL);
    urio_future_unref(other);
    if (ret == 0)
        ret = urio_sleep(1 * MS);
    *result = (void *)(uintptr_t)7;
    return ret;
}

static void check_task_forker(const struct task_forker *f)
{
    if (!WIFEXITED(f->status))
        fail_msg("child killed by signal %d; it wrote:\n%s", WTERMSIG(f->status), f->out);
    if (WEXITSTATUS(f->status) != 0)
        fail_msg("child failed at step %d; it wrote:\n%s", WEXITSTATUS(f->status), f->out);
    assert_non_null(strstr(f->out, "belongs to the parent process"));
    assert_true(f->other_done);
}

static void test_loop_fork_from_task_run(void **state)
{
    (void)state;
    test_needs_fork_with_rings();
    struct task_forker f = { 0 };
    void *r = NULL;
    int ret = urio_run(URIO_CORO(forks_in_task, &f), NULL, &r);
    if (ret == URIO_ENOURING)
        skip();
    assert_int_equal(ret, 0);
    assert_ptr_equal(r, (void *)(uintptr_t)7);
    check_task_forker(&f);
}

static void test_loop_fork_from_task_spawned(void **state)
{
    (void)state;
    test_needs_fork_with_rings();
    urio_loop_t *loop = test_loop_new();
    struct task_forker f = { 0 };
    urio_future_t *t = urio_spawn(loop, forks_in_task, &f);
    assert_non_null(t);
    assert_int_equal(urio_loop_run_until_complete(loop, t), 0);
    void *r = NULL;
    assert_int_equal(urio_future_result(t, &r), 0);
    assert_ptr_equal(r, (void *)(uintptr_t)7);
    check_task_forker(&f);
    /* The parent's loop is intact: it runs a callback, and closes. */
    int x = 0;
    urio_call_soon(loop, child_cb, &x);
    urio_call_soon(loop, test_stop_cb, loop);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    assert_int_equal(x, 42);
    urio_future_unref(t);
    test_loop_close(loop);
}

/*
 * A loop's stall watchdog is a thread of the process that made the loop.
 * In a child of fork(), the parent's watchdog is not there: setting it on an
 * inherited loop is refused with URIO_EFORKED (its lock and condition may
 * have been held at the fork: nothing of it is touched), and a loop of the
 * child's own starts a watchdog thread of its own.
 */
#ifndef URIO_TSAN
static int threads_here(void)
{
    int n = 0;
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    if (f)
        fclose(f);
    return n;
}
#endif

static int child_inherited_watchdog(void *arg)
{
    urio_loop_t *inherited = arg;
    if (urio_loop_set_stall_watchdog(inherited, 10 * MS) != URIO_EFORKED)
        return 2;
    if (urio_loop_close(inherited) != 0)
        return 3;
#ifndef URIO_TSAN   /* a child of a multi-threaded fork may start no thread: TSan refuses */
    urio_loop_t *own;
    if (urio_loop_new(&own, NULL) != 0)
        return 4;
    int before = threads_here();
    if (urio_loop_set_stall_watchdog(own, 10 * MS) != 0 || threads_here() != before + 1)
        return 5;
    if (urio_loop_close(own) != 0 || threads_here() != before)
        return 6;
#endif
    return 0;
}

static void test_loop_fork_child_has_no_watchdog_of_parent(void **state)
{
    (void)state;
    test_needs_fork_with_rings();
    urio_loop_t *loop = test_loop_new();
    assert_int_equal(urio_loop_set_stall_watchdog(loop, 10 * MS), 0);
    char out[4096];
    int status = test_child(child_inherited_watchdog, loop, out, sizeof out);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the child failed: status 0x%x; it wrote:\n%s", status, out);
    assert_non_null(strstr(out, "ERROR urio: the stall watchdog of an event loop created before "
                                "fork() belongs to the parent process"));
    /* The parent's watchdog is untouched: it goes on with the parent's threshold. */
    assert_int_equal(urio_loop_set_stall_watchdog(loop, 0), 0);
    test_loop_close(loop);
}

/*
 * issue 14 point 8: loops issue the same ids; a handle of loop B given to
 * loop A is refused (an ERROR), and A's own callback and timer still run.
 */
static int other_loop_ran;
static void count_other(void *arg)
{
    (void)arg;
    other_loop_ran++;
}

static void test_loop_other_loops_handle_refused(void **state)
{
    (void)state;
    urio_loop_t *a = test_loop_new(), *b = test_loop_new();
    other_loop_ran = 0;
    urio_handle_t ha = urio_call_soon(a, count_other, NULL);
    urio_handle_t hb = urio_call_soon(b, count_other, NULL);
    urio_handle_t ta = urio_call_later(a, 1 * MS, count_other, NULL);
    urio_handle_t tb = urio_call_later(b, 1 * MS, count_other, NULL);
    assert_int_equal(ha.id, hb.id);     /* the same ids: only the loop tells them apart */
    assert_int_equal(ta.id, tb.id);
    assert_int_not_equal(ha.loop, hb.loop);
    test_log_capture();
    assert_false(urio_handle_cancel(a, hb));
    assert_false(urio_handle_cancel(a, tb));
    assert_int_equal(test_log_count("ERROR urio_handle_cancel(): the handle belongs to another "
                                    "event loop"), 2);
    urio_call_later(a, 5 * MS, test_stop_cb, a);
    urio_loop_run_forever(a);
    assert_int_equal(other_loop_ran, 2);    /* a's callback and timer both ran */
    /* Each loop's own handles still work. */
    assert_true(urio_handle_cancel(b, hb));
    assert_true(urio_handle_cancel(b, tb));
    test_loop_close(a);
    test_loop_close(b);
}

/*
 * Subsystems (lib/loop.h): the hooks through which the layers above the core
 * plug into a loop.  A probe subsystem notes each hook call, in order, in
 * one log shared with the test's callbacks.
 */
struct probe_log {
    char ev[512];
    size_t len;
};

static struct probe_log plog;

static void note(const char *name, const char *what)
{
    plog.len += (size_t)snprintf(plog.ev + plog.len, sizeof plog.ev - plog.len, "%s%s%s ",
                                 name, *what ? "." : "", what);
}

static void plog_clear(void)
{
    plog.len = 0;
    plog.ev[0] = '\0';
}

struct probe {
    const char *name;
    urio_loop_t *loop;
    int index;
    int refuse_run, refuse_close;   /* what may_run and may_close answer */
    int may_runs, may_closes;
    bool is_alive;
    bool schedule_in_sleep;         /* before_sleep schedules a callback */
    int register_in_shutdown;       /* urio__loop_register from the shutdown hook, if not 0 */
};

static int probe_may_run(urio_loop_t *loop, void *state)
{
    (void)loop;
    struct probe *p = state;
    p->may_runs++;
    return p->refuse_run;
}

static int probe_may_close(urio_loop_t *loop, void *state)
{
    (void)loop;
    struct probe *p = state;
    p->may_closes++;
    return p->refuse_close;
}

static bool probe_alive(const urio_loop_t *loop, void *state)
{
    (void)loop;
    return ((struct probe *)state)->is_alive;
}

static void probe_stats(const urio_loop_t *loop, void *state, urio_loop_stats_t *st)
{
    (void)loop;
    (void)state;
    st->jobs += 7;
}

static void probe_step_end(urio_loop_t *loop, void *state)
{
    (void)loop;
    note(((struct probe *)state)->name, "step_end");
}

static void woken_cb(void *arg)
{
    struct probe *p = arg;
    note("woken", "");
    urio_loop_stop(p->loop);
}

static void probe_before_sleep(urio_loop_t *loop, void *state)
{
    struct probe *p = state;
    note(p->name, "before_sleep");
    if (p->schedule_in_sleep)
        urio_call_soon(loop, woken_cb, p);
}

static urio__subsystem_t probe_ss[URIO__MAX_SUBSYSTEMS + 1];

static void probe_shutdown(urio_loop_t *loop, void *state)
{
    struct probe *p = state;
    note(p->name, "shutdown");
    if (p->register_in_shutdown)
        p->register_in_shutdown = urio__loop_register(loop, &probe_ss[URIO__MAX_SUBSYSTEMS], p);
}

static void probe_close(urio_loop_t *loop, void *state)
{
    (void)loop;
    note(((struct probe *)state)->name, "close");
}

static void probe_release(urio_loop_t *loop, void *state)
{
    (void)loop;
    note(((struct probe *)state)->name, "release");
}

/* Distinct tables (a subsystem registers once per loop), the same hooks. */
static const urio__subsystem_t *probe_table(unsigned i)
{
    static const char *const names[] = { "A", "B", "C", "D", "E", "F", "G", "H", "I" };
    _Static_assert(sizeof names / sizeof names[0] == URIO__MAX_SUBSYSTEMS + 1, "names");
    probe_ss[i] = (urio__subsystem_t){
        .name = names[i], .may_run = probe_may_run, .alive = probe_alive,
        .stats = probe_stats, .step_end = probe_step_end,
        .before_sleep = probe_before_sleep, .may_close = probe_may_close,
        .shutdown = probe_shutdown, .close = probe_close, .release = probe_release,
    };
    return &probe_ss[i];
}

static void probe_register(struct probe *p, urio_loop_t *loop, unsigned i)
{
    const urio__subsystem_t *ss = probe_table(i);
    p->name = ss->name;
    p->loop = loop;
    uint32_t before = loop->nsubs;
    p->index = urio__loop_register(loop, ss, p);
    assert_int_equal(p->index, (int)before);     /* its index: the flags' bit */
    assert_ptr_equal(urio__loop_state(loop, ss), p);
}

static void noted_cb(void *arg)
{
    note((const char *)arg, "");
}

static void flags_step_end_cb(void *arg)
{
    struct probe *p = arg;
    note("flag", "");
    urio__loop_want_step_end(p->loop, p->index);
}

static void next_step_cb(void *arg)
{
    struct probe *p = arg;
    note("next", "");
    urio_loop_stop(p->loop);
}

static void then_next_step_cb(void *arg)
{
    struct probe *p = arg;
    note("second", "");
    urio_call_soon(p->loop, next_step_cb, p);
}

/* step_end runs once, after all of the step's callbacks, and only when flagged. */
static void test_loop_subsystem_step_end_when_flagged(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    struct probe p = { 0 };
    probe_register(&p, loop, 0);
    plog_clear();
    urio_call_soon(loop, noted_cb, "one");
    urio_call_soon(loop, noted_cb, "two");
    urio_call_soon(loop, test_stop_cb, loop);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    assert_string_equal(plog.ev, "one two ");          /* not flagged: no hook */
    plog_clear();
    urio_call_soon(loop, flags_step_end_cb, &p);
    urio_call_soon(loop, then_next_step_cb, &p);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    /* The flag is cleared when the hook runs: the next step ends without it. */
    assert_string_equal(plog.ev, "flag second A.step_end next ");
    plog_clear();
    test_loop_close(loop);
    assert_string_equal(plog.ev, "A.shutdown A.close A.release ");
}

static void flags_sleep_cb(void *arg)
{
    struct probe *p = arg;
    note("flag", "");
    urio__loop_want_before_sleep(p->loop, p->index);
    urio_call_soon(p->loop, noted_cb, "ready");
}

static void late_cb(void *arg)
{
    struct probe *p = arg;
    note("late", "");
    urio_loop_stop(p->loop);
}

/*
 * before_sleep runs when the loop is about to block (not while work is
 * ready), once per flag; work it schedules keeps the loop from blocking.
 */
static void test_loop_subsystem_before_sleep_when_flagged(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    struct probe p = { .schedule_in_sleep = true };
    probe_register(&p, loop, 0);
    plog_clear();
    urio_call_soon(loop, flags_sleep_cb, &p);
    /* Had the loop blocked after the hook, this would run in woken's step. */
    urio_handle_t late = urio_call_later(loop, 10 * SEC, late_cb, &p);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    assert_string_equal(plog.ev, "flag ready A.before_sleep woken ");
    assert_true(urio_handle_cancel(loop, late));
    /* Not flagged: the loop sleeps (for the timer) without calling it. */
    plog_clear();
    urio_call_later(loop, 2 * MS, late_cb, &p);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    assert_string_equal(plog.ev, "late ");
    test_loop_close(loop);
}

/*
 * may_run refuses a run (its error is the run's; nothing runs); may_close
 * refuses a close (its error is close's; no close-time hook runs and the
 * loop stays usable).  alive and stats answer for the subsystem.
 */
static void test_loop_subsystem_may_run_may_close(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    struct probe p = { .refuse_run = -EPERM };
    probe_register(&p, loop, 0);
    plog_clear();
    urio_call_soon(loop, noted_cb, "ran");
    urio_call_soon(loop, test_stop_cb, loop);
    assert_int_equal(urio_loop_run_forever(loop), -EPERM);
    assert_int_equal(p.may_runs, 1);
    assert_string_equal(plog.ev, "");
    assert_null(urio_loop_current());
    p.refuse_run = 0;
    assert_int_equal(urio_loop_run_forever(loop), 0);
    assert_int_equal(p.may_runs, 2);
    assert_string_equal(plog.ev, "ran ");

    assert_false(urio_loop_alive(loop));
    p.is_alive = true;
    assert_true(urio_loop_alive(loop));
    p.is_alive = false;
    urio_loop_stats_t st;
    assert_int_equal(urio_loop_stats(loop, &st), 0);
    assert_int_equal(st.jobs, 7);

    plog_clear();
    p.refuse_close = -EBUSY;
    assert_int_equal(urio_loop_close(loop), -EBUSY);
    assert_int_equal(p.may_closes, 1);
    assert_string_equal(plog.ev, "");
    urio_call_soon(loop, noted_cb, "again");
    urio_call_soon(loop, test_stop_cb, loop);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    assert_string_equal(plog.ev, "again ");
    plog_clear();
    p.refuse_close = 0;
    test_loop_close(loop);
    assert_int_equal(p.may_closes, 2);
    assert_string_equal(plog.ev, "A.shutdown A.close A.release ");
}

static void note_pending_task(urio_loop_t *loop, const urio_error_context_t *ctx, void *ud)
{
    (void)loop;
    (void)ud;
    if (strstr(ctx->message, "destroyed but it is pending") != NULL)
        note("tasks", "release");
}

static int awaits_forever(void *arg, void **result)
{
    return urio_await(arg, result);
}

/*
 * Close-time hooks run in reverse order of registration, each kind over all
 * subsystems before the next kind: also around a subsystem of urio's own
 * (tasks, registered between the two probes; its release reports the task
 * still pending).  Registering during close is refused with -ESHUTDOWN.
 */
static void test_loop_subsystem_close_order(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_loop_set_exception_handler(loop, note_pending_task, NULL);
    struct probe a = { 0 }, b = { .register_in_shutdown = 1 };
    probe_register(&a, loop, 0);
    urio_future_t *never = test_future_new(loop);
    urio_future_t *task = urio_spawn(loop, awaits_forever, never);
    assert_non_null(task);
    urio_call_soon(loop, test_stop_cb, loop);
    assert_int_equal(urio_loop_run_forever(loop), 0);       /* the task waits on `never` */
    probe_register(&b, loop, 1);
    plog_clear();
    test_loop_close(loop);
    assert_string_equal(plog.ev, "B.shutdown A.shutdown B.close A.close "
                                 "B.release tasks.release A.release ");
    assert_int_equal(b.register_in_shutdown, -ESHUTDOWN);
    assert_true(urio_future_cancelled(task));
    urio_future_unref(task);
    urio_future_unref(never);
}

/*
 * At most URIO__MAX_SUBSYSTEMS: the next registration is refused with
 * -ENOSPC, and a layer that needs one (tasks) fails cleanly; all that
 * registered are closed, last first.
 */
static void test_loop_subsystem_limit(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    unsigned base = loop->nsubs;
    struct probe p[URIO__MAX_SUBSYSTEMS + 1] = { 0 };
    for (unsigned i = base; i < URIO__MAX_SUBSYSTEMS; i++)
        probe_register(&p[i], loop, i);
    assert_int_equal(urio__loop_register(loop, probe_table(URIO__MAX_SUBSYSTEMS),
                                         &p[URIO__MAX_SUBSYSTEMS]), -ENOSPC);
    assert_int_equal(loop->nsubs, URIO__MAX_SUBSYSTEMS);
    errno = 0;
    assert_null(urio_spawn(loop, awaits_forever, NULL));
    assert_int_equal(errno, ENOMEM);
    /* Every flag bit reaches its own subsystem. */
    plog_clear();
    for (unsigned i = base; i < URIO__MAX_SUBSYSTEMS; i++)
        urio__loop_want_step_end(loop, p[i].index);
    urio_call_soon(loop, test_stop_cb, loop);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    char want[512] = "";
    size_t n = 0;
    for (unsigned i = base; i < URIO__MAX_SUBSYSTEMS; i++)
        n += (size_t)snprintf(want + n, sizeof want - n, "%s.step_end ", p[i].name);
    assert_string_equal(plog.ev, want);
    plog_clear();
    test_loop_close(loop);
    n = 0;
    const char *kinds[] = { "shutdown", "close", "release" };
    for (unsigned k = 0; k < 3; k++)
        for (unsigned i = URIO__MAX_SUBSYSTEMS; i-- > base;)
            n += (size_t)snprintf(want + n, sizeof want - n, "%s.%s ", p[i].name, kinds[k]);
    assert_string_equal(plog.ev, want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_loop_other_loops_handle_refused),
        URIO_TEST(test_loop_new_close),
        URIO_TEST(test_loop_new_rejects_bad_input),
        URIO_TEST(test_loop_settings_refused_elsewhere),
        URIO_TEST(test_loop_call_soon_fifo),
        URIO_TEST(test_loop_runs_only_what_was_ready),
        URIO_TEST(test_loop_handle_cancel),
        URIO_TEST(test_loop_cancel_from_callback),
        URIO_TEST(test_loop_reentry_refused),
        URIO_TEST(test_loop_two_loops_one_thread),
        URIO_TEST(test_loop_time_is_monotonic),
        URIO_TEST(test_loop_close_drops_pending),
        URIO_TEST(test_loop_runs_on_another_thread),
        URIO_TEST(test_loop_ready_work_still_enters_kernel),
        URIO_TEST(test_loop_busy_loop_sees_inbox),
        URIO_TEST(test_loop_dispatch_allocates_nothing),
        URIO_TEST(test_loop_alive_and_next_timeout),
        URIO_TEST(test_loop_close_races_run_returning),
        URIO_TEST(test_loop_fork_child_gets_clean_slate),
        URIO_TEST(test_loop_fork_child_has_no_watchdog_of_parent),
        URIO_TEST(test_loop_fork_from_task_run),
        URIO_TEST(test_loop_fork_from_task_spawned),
        URIO_TEST(test_loop_subsystem_step_end_when_flagged),
        URIO_TEST(test_loop_subsystem_before_sleep_when_flagged),
        URIO_TEST(test_loop_subsystem_may_run_may_close),
        URIO_TEST(test_loop_subsystem_close_order),
        URIO_TEST(test_loop_subsystem_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
