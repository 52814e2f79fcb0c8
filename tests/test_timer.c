/*
 * test_timer.c — timers: deadline order, FIFO among equals, never early,
 * cancellation (also from a callback), the heap's compaction, no allocation
 * in steady state.
 */
#include "helpers.h"

struct fired {
    urio_loop_t *loop;
    int order[20000];
    int n;
    int early;            /* callbacks that ran before their deadline */
    int stop_at;
};

struct tmr {
    struct fired *f;
    int tag;
    uint64_t when;
};

static void timer_cb(void *arg)
{
    struct tmr *t = arg;
    if (urio_loop_time(t->f->loop) < t->when)
        t->f->early++;
    t->f->order[t->f->n++] = t->tag;
    if (t->f->n == t->f->stop_at)
        urio_loop_stop(t->f->loop);
}

static void test_timer_deadline_order(void **state)
{
    (void)state;
    struct fired f = { .loop = test_loop_new(), .stop_at = 8 };
    static const int delays_ms[8] = { 40, 10, 30, 5, 20, 1, 35, 15 };
    struct tmr t[8];
    uint64_t now = urio_loop_time(f.loop);
    for (int i = 0; i < 8; i++) {
        t[i] = (struct tmr){ &f, delays_ms[i], now + (uint64_t)delays_ms[i] * MS };
        assert_int_not_equal(urio_call_at(f.loop, t[i].when, timer_cb, &t[i]).id, 0);
    }
    assert_int_equal(urio_loop_run_forever(f.loop), 0);
    static const int sorted[8] = { 1, 5, 10, 15, 20, 30, 35, 40 };
    for (int i = 0; i < 8; i++)
        assert_int_equal(f.order[i], sorted[i]);
    assert_int_equal(f.early, 0);
    test_loop_close(f.loop);
}

static void test_timer_equal_deadlines_fifo(void **state)
{
    (void)state;
    enum { N = 1000 };
    static struct fired f;
    f = (struct fired){ .loop = test_loop_new(), .stop_at = N };
    static struct tmr t[N];
    uint64_t when = urio_loop_time(f.loop) + 5 * MS;
    for (int i = 0; i < N; i++) {
        t[i] = (struct tmr){ &f, i, when };
        urio_call_at(f.loop, when, timer_cb, &t[i]);
    }
    urio_loop_run_forever(f.loop);
    for (int i = 0; i < N; i++)
        assert_int_equal(f.order[i], i);
    assert_int_equal(f.early, 0);
    test_loop_close(f.loop);
}

/* Random deadlines: always in (deadline, sequence) order, never early. */
static void test_timer_random_never_early(void **state)
{
    (void)state;
    enum { N = 20000 };
    static struct fired f;
    f = (struct fired){ .loop = test_loop_new(), .stop_at = N };
    static struct tmr t[N];
    uint64_t now = urio_loop_time(f.loop), x = 88172645463325252ull;
    for (int i = 0; i < N; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        t[i] = (struct tmr){ &f, i, now + x % (50 * MS) };
        urio_call_at(f.loop, t[i].when, timer_cb, &t[i]);
    }
    urio_loop_run_forever(f.loop);
    assert_int_equal(f.n, N);
    assert_int_equal(f.early, 0);
    for (int i = 1; i < N; i++) {
        struct tmr *a = &t[f.order[i - 1]], *b = &t[f.order[i]];
        assert_true(a->when < b->when || (a->when == b->when && a->tag < b->tag));
    }
    test_loop_close(f.loop);
}

static void test_timer_past_deadline_runs_next_turn(void **state)
{
    (void)state;
    struct fired f = { .loop = test_loop_new(), .stop_at = 2 };
    struct tmr a = { &f, 1, 0 }, b = { &f, 2, 0 };
    urio_call_at(f.loop, 0, timer_cb, &a);             /* long past */
    urio_call_later(f.loop, 0, timer_cb, &b);
    urio_loop_stop(f.loop);
    urio_loop_run_forever(f.loop);
    assert_int_equal(f.n, 2);
    assert_int_equal(f.order[0], 1);
    assert_int_equal(f.order[1], 2);
    test_loop_close(f.loop);
}

static urio_handle_t doomed;
static void cancels_doomed_cb(void *arg)
{
    struct tmr *t = arg;
    timer_cb(t);
    assert_true(urio_handle_cancel(t->f->loop, doomed));
}

/* Two timers due in the same turn: the first cancels the second, which never runs. */
static void test_timer_cancel_from_callback(void **state)
{
    (void)state;
    struct fired f = { .loop = test_loop_new(), .stop_at = 100 };
    uint64_t when = urio_loop_time(f.loop) + 2 * MS;
    struct tmr a = { &f, 1, when }, b = { &f, 2, when }, c = { &f, 3, when + 10 * MS };
    urio_call_at(f.loop, when, cancels_doomed_cb, &a);
    doomed = urio_call_at(f.loop, when, timer_cb, &b);
    urio_call_at(f.loop, c.when, timer_cb, &c);
    urio_call_later(f.loop, 30 * MS, test_stop_cb, f.loop);
    urio_loop_run_forever(f.loop);
    assert_int_equal(f.n, 2);
    assert_int_equal(f.order[0], 1);
    assert_int_equal(f.order[1], 3);
    assert_false(urio_handle_cancel(f.loop, doomed));
    test_loop_close(f.loop);
}

/* Mass cancellation compacts the heap; the survivors still fire in order. */
static void test_timer_cancel_compacts_heap(void **state)
{
    (void)state;
    enum { N = 10000 };
    static struct fired f;
    f = (struct fired){ .loop = test_loop_new(), .stop_at = N / 10 };
    static struct tmr t[N];
    static urio_handle_t h[N];
    uint64_t now = urio_loop_time(f.loop);
    for (int i = 0; i < N; i++) {
        t[i] = (struct tmr){ &f, i, now + 5 * MS + (uint64_t)(N - i) * 1000 };
        h[i] = urio_call_at(f.loop, t[i].when, timer_cb, &t[i]);
    }
    assert_int_equal(f.loop->timers.count, N);
    for (int i = 0; i < N; i++)
        if (i % 10)
            assert_true(urio_handle_cancel(f.loop, h[i]));
    assert_true(f.loop->timers.count < N / 2);    /* compacted, not 10,000 stale entries */
    urio_loop_run_forever(f.loop);
    assert_int_equal(f.n, N / 10);
    for (int i = 0; i < N / 10; i++)
        assert_int_equal(f.order[i], N - 10 - 10 * i);
    test_loop_close(f.loop);
}

/* A cancelled timer's slot is reused: its stale handle cancels nothing. */
static void test_timer_stale_handle_after_slot_reuse(void **state)
{
    (void)state;
    struct fired f = { .loop = test_loop_new(), .stop_at = 1 };
    struct tmr a = { &f, 1, 0 }, b = { &f, 2, 0 };
    urio_handle_t ha = urio_call_later(f.loop, 1 * MS, timer_cb, &a);
    assert_true(urio_handle_cancel(f.loop, ha));
    urio_handle_t hb = urio_call_later(f.loop, 1 * MS, timer_cb, &b);
    assert_int_equal(ha.id & 0xffffffu, hb.id & 0xffffffu);        /* the same slot */
    assert_int_not_equal(ha.id, hb.id);
    assert_false(urio_handle_cancel(f.loop, ha));
    urio_loop_run_forever(f.loop);
    assert_int_equal(f.n, 1);
    assert_int_equal(f.order[0], 2);
    assert_false(urio_handle_cancel(f.loop, hb));       /* it ran */
    test_loop_close(f.loop);
}

/*
 * A timer beyond the wheel (in the far heap) comes due while a callback
 * overruns and the wheel is empty; that callback then schedules a near
 * timer.  The far timer must fire first, at once, not be stranded in the heap
 * behind a wheel that has moved past it.  (Takes ~4.5 s: the wheel spans 4.3.)
 */
static void overrun_cb(void *arg)
{
    struct tmr *t = arg;
    timer_cb(t);
    usleep(4500 * 1000);            /* past the far timer's deadline */
    static struct tmr near;
    near = (struct tmr){ t->f, 3, urio_loop_time(t->f->loop) + 30 * MS };
    urio_call_later(t->f->loop, 30 * MS, timer_cb, &near);
}

static void test_timer_far_heap_overdue_not_stranded(void **state)
{
    (void)state;
    struct fired f = { .loop = test_loop_new(), .stop_at = 3 };
    uint64_t now = urio_loop_time(f.loop);
    struct tmr far = { &f, 2, now + 4400 * MS };    /* beyond the wheel: in the heap */
    struct tmr a = { &f, 1, now + 1 * MS };
    urio_call_at(f.loop, far.when, timer_cb, &far);
    assert_int_equal(f.loop->timers.nheap, 1);
    urio_call_at(f.loop, a.when, overrun_cb, &a);
    uint64_t t0 = urio__now();
    urio_loop_run_forever(f.loop);
    assert_int_equal(f.n, 3);
    assert_int_equal(f.order[0], 1);
    assert_int_equal(f.order[1], 2);        /* the overdue far timer, before the near one */
    assert_int_equal(f.order[2], 3);
    assert_int_equal(f.early, 0);
    assert_true(urio__now() - t0 < 4500 * MS + 2000 * MS);
    test_loop_close(f.loop);
}

/*
 * Random schedules and cancels across the wheel, the far heap and overdue
 * deadlines, with a reference record: every live timer fires exactly once,
 * never early and not long after its deadline; cancelled ones never fire.
 * (About 5 s: deadlines reach past the wheel's 4.3 s.)
 */
enum { RND_N = 3000 };
struct rnd_timer {
    uint64_t when;
    urio_handle_t h;
    int fired;
    bool cancelled;
    uint64_t fired_at;
};
static struct rnd_timer rnd[RND_N];
static int rnd_live, rnd_done, rnd_scheduled;
static uint64_t rnd_x = 0x9E3779B97F4A7C15ull;
static uint64_t rnd_next(void)
{
    rnd_x ^= rnd_x << 13;
    rnd_x ^= rnd_x >> 7;
    rnd_x ^= rnd_x << 17;
    return rnd_x;
}

static void rnd_fire(void *arg)
{
    struct rnd_timer *t = arg;
    t->fired++;
    t->fired_at = urio__now();
    if (++rnd_done == rnd_live && rnd_scheduled == RND_N)
        urio_loop_stop(urio_loop_current());
}

/* A burst of random work from inside the loop: schedules and cancels. */
static void rnd_burst(void *arg)
{
    urio_loop_t *loop = arg;
    int next = rnd_scheduled;
    uint64_t now = urio_loop_time(loop);
    for (int k = 0; k < 300 && next < RND_N; k++, next = ++rnd_scheduled) {
        struct rnd_timer *t = &rnd[next];
        uint64_t r = rnd_next() % 100;
        /* Mostly near (the wheel), some far (the heap), some already due. */
        uint64_t delay = r < 70 ? rnd_next() % (200 * MS)
                       : r < 90 ? 4300 * MS + rnd_next() % (700 * MS)
                       : 0;
        t->when = r < 90 ? now + delay : now - rnd_next() % MS;
        t->h = urio_call_at(loop, t->when, rnd_fire, t);
        assert_int_not_equal(t->h.id, 0);
        rnd_live++;
        /* Cancel an earlier one now and then (fired or not: both are fine). */
        if (next > 0 && rnd_next() % 4 == 0) {
            struct rnd_timer *v = &rnd[rnd_next() % (uint64_t)next];
            if (!v->cancelled && urio_handle_cancel(loop, v->h)) {
                assert_int_equal(v->fired, 0);
                v->cancelled = true;
                rnd_live--;
            }
        }
    }
    if (next < RND_N)
        urio_call_later(loop, rnd_next() % (50 * MS), rnd_burst, loop);
}

static void test_timer_randomized_against_record(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_call_soon(loop, rnd_burst, loop);
    urio_loop_run_forever(loop);
    for (int i = 0; i < RND_N; i++) {
        struct rnd_timer *t = &rnd[i];
        if (t->cancelled) {
            assert_int_equal(t->fired, 0);
            continue;
        }
        assert_int_equal(t->fired, 1);
        assert_true(t->fired_at >= t->when);                 /* never early */
        assert_true(t->fired_at - t->when < 500 * MS);        /* generous: never stranded */
    }
    test_loop_close(loop);
}

static void test_timer_slack(void **state)
{
    (void)state;
    struct fired f = { .loop = test_loop_new(), .stop_at = 1 };
    assert_int_equal(urio_loop_get_timer_slack(f.loop), 50 * US);
    urio_loop_set_timer_slack(f.loop, 5000 * MS);
    assert_int_equal(urio_loop_get_timer_slack(f.loop), 1000 * MS);    /* clamped */
    /* With 20 ms of slack, a timer due in 5 ms shares the sleep that ends 20 ms later. */
    urio_loop_set_timer_slack(f.loop, 20 * MS);
    uint64_t t0 = urio_loop_time(f.loop);
    struct tmr a = { &f, 1, t0 + 5 * MS };
    urio_call_at(f.loop, a.when, timer_cb, &a);
    urio_loop_run_forever(f.loop);
    assert_int_equal(f.early, 0);
    assert_true(urio_loop_time(f.loop) - t0 >= 24 * MS);
    /* Without slack it wakes at the deadline (generous bound: a loaded machine). */
    urio_loop_set_timer_slack(f.loop, 0);
    t0 = urio_loop_time(f.loop);
    struct tmr b = { &f, 2, t0 + 5 * MS };
    f.stop_at = 2;
    urio_call_at(f.loop, b.when, timer_cb, &b);
    urio_loop_run_forever(f.loop);
    assert_int_equal(f.early, 0);
    assert_int_equal(f.n, 2);
    test_loop_close(f.loop);
}

/* A timer far in the future neither overflows nor blocks close. */
static void test_timer_huge_delay(void **state)
{
    (void)state;
    struct fired f = { .loop = test_loop_new(), .stop_at = 1 };
    struct tmr a = { &f, 1, 0 };
    assert_int_not_equal(urio_call_later(f.loop, UINT64_MAX, timer_cb, &a).id, 0);
    assert_int_not_equal(urio_call_at(f.loop, UINT64_MAX, timer_cb, &a).id, 0);
    urio_call_later(f.loop, 1 * MS, test_stop_cb, f.loop);
    urio_loop_run_forever(f.loop);
    assert_int_equal(f.n, 0);
    test_loop_close(f.loop);
}

/* Timers and soon-callbacks interleave: neither starves the other. */
static int soon_count;
static void soon_forever_cb(void *arg)
{
    soon_count++;
    urio_call_soon(arg, soon_forever_cb, arg);
}

static void test_timer_fires_under_ready_load(void **state)
{
    (void)state;
    struct fired f = { .loop = test_loop_new(), .stop_at = 1 };
    struct tmr a = { &f, 1, urio_loop_time(f.loop) + 10 * MS };
    soon_count = 0;
    urio_call_soon(f.loop, soon_forever_cb, f.loop);
    urio_call_at(f.loop, a.when, timer_cb, &a);
    uint64_t t0 = urio__now();
    urio_loop_run_forever(f.loop);
    assert_int_equal(f.n, 1);
    assert_true(soon_count > 0);
    assert_true(urio__now() - t0 < 2000 * MS);
    test_loop_close(f.loop);
}

static uint64_t rearm_left;
static void rearm_cb(void *arg)
{
    urio_loop_t *loop = arg;
    if (--rearm_left == 0)
        urio_loop_stop(loop);
    else
        urio_call_later(loop, 0, rearm_cb, loop);
}

static void test_timer_steady_state_allocates_nothing(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    rearm_left = 2000;
    urio_call_later(loop, 0, rearm_cb, loop);
    urio_loop_run_forever(loop);
    urio_mem_stats_t a, b;
    urio_mem_stats(&a);
    rearm_left = 20000;
    urio_call_later(loop, 0, rearm_cb, loop);
    urio_loop_run_forever(loop);
    urio_mem_stats(&b);
    assert_int_equal(b.allocs - a.allocs, 0);
    test_loop_close(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_timer_deadline_order),
        URIO_TEST(test_timer_equal_deadlines_fifo),
        URIO_TEST(test_timer_random_never_early),
        URIO_TEST(test_timer_past_deadline_runs_next_turn),
        URIO_TEST(test_timer_cancel_from_callback),
        URIO_TEST(test_timer_cancel_compacts_heap),
        URIO_TEST(test_timer_stale_handle_after_slot_reuse),
        URIO_TEST(test_timer_huge_delay),
        URIO_TEST(test_timer_slack),
        URIO_TEST(test_timer_randomized_against_record),
        URIO_TEST(test_timer_far_heap_overdue_not_stranded),
        URIO_TEST(test_timer_fires_under_ready_load),
        URIO_TEST(test_timer_steady_state_allocates_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
