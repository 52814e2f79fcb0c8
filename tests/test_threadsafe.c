/*
 * test_threadsafe.c — urio_call_soon_threadsafe: every accepted call runs
 * exactly once, in order per producer; a sleeping loop wakes; after close
 * begins, calls are refused, and calls accepted before still run.
 */
#include "helpers.h"

#include <unistd.h>

enum { PRODUCERS = 4, PER_PRODUCER = 100000 };

struct stress {
    urio_loop_t *loop;
    uint64_t next[PRODUCERS];     /* loop thread: the sequence expected next */
    uint64_t ran, out_of_order;
    atomic_int producers_done;
};

struct producer {
    struct stress *s;
    int id;
};

static struct stress *g_stress;

/* arg packs (producer, sequence) so no allocation is needed per call. */
static void tagged_cb(void *arg)
{
    uintptr_t v = (uintptr_t)arg;
    int p = (int)(v >> 40);
    uint64_t seq = v & ((1ull << 40) - 1);
    struct stress *s = g_stress;
    if (seq != s->next[p])
        s->out_of_order++;
    s->next[p] = seq + 1;
    if (++s->ran == (uint64_t)PRODUCERS * PER_PRODUCER)
        urio_loop_stop(s->loop);
}

static void *producer_main(void *arg)
{
    struct producer *p = arg;
    for (uint64_t i = 0; i < PER_PRODUCER; i++) {
        uintptr_t v = ((uintptr_t)p->id << 40) | i;
        while (urio_call_soon_threadsafe(p->s->loop, tagged_cb, (void *)v) == -ENOMEM)
            usleep(100);
    }
    return NULL;
}

static void test_threadsafe_producers_exactly_once_in_order(void **state)
{
    (void)state;
    static struct stress s;
    s = (struct stress){ .loop = test_loop_new() };
    g_stress = &s;
    pthread_t t[PRODUCERS];
    struct producer p[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) {
        p[i] = (struct producer){ &s, i };
        assert_int_equal(pthread_create(&t[i], NULL, producer_main, &p[i]), 0);
    }
    assert_int_equal(urio_loop_run_forever(s.loop), 0);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(s.ran, (uint64_t)PRODUCERS * PER_PRODUCER);
    assert_int_equal(s.out_of_order, 0);
    for (int i = 0; i < PRODUCERS; i++)
        assert_int_equal(s.next[i], PER_PRODUCER);
    test_loop_close(s.loop);
}

static void *wake_later(void *arg)
{
    usleep(30000);
    assert_int_equal(urio_call_soon_threadsafe(arg, test_stop_cb, arg), 0);
    return NULL;
}

/* A loop asleep in the kernel with no timers wakes for a cross-thread call. */
static void test_threadsafe_wakes_sleeping_loop(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    pthread_t t;
    uint64_t t0 = urio__now();
    assert_int_equal(pthread_create(&t, NULL, wake_later, loop), 0);
    assert_int_equal(urio_loop_run_forever(loop), 0);
    uint64_t took = urio__now() - t0;
    pthread_join(t, NULL);
    assert_true(took >= 25 * MS);
    assert_true(took < 5000 * MS);
    test_loop_close(loop);
}

static int ran_at_close;
static void count_cb(void *arg)
{
    (void)arg;
    ran_at_close++;
}

/* Calls accepted before close run during close; after it they are refused. */
static void test_threadsafe_close_runs_accepted_refuses_late(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    ran_at_close = 0;
    for (int i = 0; i < 100; i++)
        assert_int_equal(urio_call_soon_threadsafe(loop, count_cb, NULL), 0);
    /* Keep the loop's memory alive past close with a future, to call it after. */
    urio_future_t *f = urio_future_new(loop);
    test_loop_close(loop);
    assert_int_equal(ran_at_close, 100);
    assert_int_equal(urio_call_soon_threadsafe(loop, count_cb, NULL), -ESHUTDOWN);
    assert_int_equal(urio_call_soon(loop, count_cb, NULL).id, 0);
    assert_int_equal(errno, ESHUTDOWN);
    assert_int_equal(urio_loop_run_forever(loop), -ESHUTDOWN);
    assert_int_equal(urio_loop_close(loop), 0);     /* closing twice is harmless */
    urio_future_unref(f);
    assert_int_equal(ran_at_close, 100);
}

static void test_threadsafe_bad_input(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    assert_int_equal(urio_call_soon_threadsafe(loop, NULL, NULL), -EINVAL);
    assert_int_equal(urio_call_soon_threadsafe(NULL, count_cb, NULL), -EINVAL);
    test_loop_close(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_threadsafe_producers_exactly_once_in_order),
        URIO_TEST(test_threadsafe_wakes_sleeping_loop),
        URIO_TEST(test_threadsafe_close_runs_accepted_refuses_late),
        URIO_TEST(test_threadsafe_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
