/*
 * test_executor.c — the thread pool: results, errors, cancellation before
 * and after a job starts, shutdown with and without wait and
 * cancel_futures, one pool serving several loops, no thread left after close.
 */
#include "helpers.h"

#include <dirent.h>
#include <unistd.h>

static void *nothing(void *arg)
{
    return arg;
}

/*
 * Threads of this process, from /proc/self/task.  A thread is made and
 * joined first, so a sanitizer's helper thread, started at the first
 * pthread_create, is already counted.
 */
static int thread_count(void)
{
    static bool warmed;
    if (!warmed) {
        pthread_t t;
        pthread_create(&t, NULL, nothing, NULL);
        pthread_join(t, NULL);
        warmed = true;
    }
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

/*
 * The thread count once exited threads are gone: a joined thread can stay
 * listed in /proc for a moment after pthread_join returns (the kernel
 * releases it just after waking the joiner).
 */
static int settled_thread_count(int want)
{
    int n = thread_count();
    for (int i = 0; i < 1000 && n != want; i++) {
        usleep(1000);
        n = thread_count();
    }
    return n;
}

static void *square(void *arg)
{
    intptr_t v = (intptr_t)arg;
    return (void *)(v * v);
}

static void *failing(void *arg)
{
    return urio_executor_fail(-EIO, "disk %s gone", (const char *)arg);
}

/* A job that blocks until released: to hold workers busy. */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open, gate_started;

static void *gated(void *arg)
{
    pthread_mutex_lock(&gate_mu);
    gate_started++;
    pthread_cond_broadcast(&gate_cv);
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
    return arg;
}

static void gate_reset(void)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = 0;
    gate_started = 0;
    pthread_mutex_unlock(&gate_mu);
}

static void gate_wait_started(int n)
{
    pthread_mutex_lock(&gate_mu);
    while (gate_started < n)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
}

static void gate_release(void)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = 1;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

static atomic_int ran_count;
static void *counting(void *arg)
{
    atomic_fetch_add(&ran_count, 1);
    return arg;
}

static int freed_results;
static void free_result(void *p)
{
    (void)p;
    freed_results++;
}

/* Runs the loop until f is done (or 10 s). */
static void run_until(urio_loop_t *loop, urio_future_t *f)
{
    int ret = urio_loop_run_until_complete(loop, f);
    (void)ret;
    assert_true(urio_future_done(f));
}

static void test_executor_default_pool_results(void **state)
{
    (void)state;
    int threads0 = thread_count();
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f[100];
    for (intptr_t i = 0; i < 100; i++) {
        f[i] = urio_run_in_executor(loop, NULL, square, (void *)i);
        assert_non_null(f[i]);
    }
    for (int i = 0; i < 100; i++) {
        run_until(loop, f[i]);
        void *v = NULL;
        assert_int_equal(urio_future_result(f[i], &v), 0);
        assert_int_equal((intptr_t)v, (intptr_t)i * i);
        urio_future_unref(f[i]);
    }
    assert_true(thread_count() > threads0);         /* the pool's workers */
    test_loop_close(loop);
    assert_int_equal(settled_thread_count(threads0), threads0);     /* none left after close */
}

static void test_executor_error_with_message(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = urio_run_in_executor(loop, NULL, failing, "sda");
    assert_non_null(f);
    assert_int_equal(urio_loop_run_until_complete(loop, f), -EIO);
    assert_string_equal(urio_future_error_message(f), "disk sda gone");
    urio_future_unref(f);
    test_loop_close(loop);
}

/* Cancelled before it starts: the job never runs. */
static void test_executor_cancel_before_start_never_runs(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 1), 0);
    gate_reset();
    atomic_store(&ran_count, 0);
    urio_future_t *busy = urio_run_in_executor(loop, ex, gated, NULL);
    gate_wait_started(1);                       /* the only worker is busy */
    urio_future_t *f = urio_run_in_executor(loop, ex, counting, NULL);
    assert_true(urio_future_cancel(f));
    gate_release();
    run_until(loop, busy);
    assert_int_equal(urio_loop_run_until_complete(loop, f), -ECANCELED);
    urio_executor_shutdown(ex, true, false);    /* every queued job has been taken */
    assert_int_equal(atomic_load(&ran_count), 0);
    urio_future_unref(busy);
    urio_future_unref(f);
    /* Let the cancelled job's trip back through the inbox finish. */
    urio_loop_stop(loop);
    urio_loop_run_forever(loop);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* Cancelled after it started: it finishes, and its result is freed. */
static void test_executor_cancel_after_start_discards_result(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    gate_reset();
    freed_results = 0;
    static int payload;
    urio_future_t *f = urio_run_in_executor_opts(loop, NULL, gated, &payload, &(urio_job_opts_t){ .free_result = free_result });
    gate_wait_started(1);
    assert_true(urio_future_cancel(f));
    assert_true(urio_future_cancelled(f));
    gate_release();
    /* The job's completion comes back and is discarded. */
    for (int i = 0; i < 200 && freed_results == 0; i++) {
        urio_call_later(loop, 5 * MS, test_stop_cb, loop);
        urio_loop_run_forever(loop);
    }
    assert_int_equal(freed_results, 1);
    urio_future_unref(f);
    test_loop_close(loop);
}

/* shutdown(cancel_futures): queued jobs are cancelled; the running one finishes. */
static void test_executor_shutdown_cancel_futures(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 1), 0);
    gate_reset();
    atomic_store(&ran_count, 0);
    urio_future_t *busy = urio_run_in_executor(loop, ex, gated, (void *)7);
    gate_wait_started(1);
    urio_future_t *q[10];
    for (int i = 0; i < 10; i++)
        q[i] = urio_run_in_executor(loop, ex, counting, NULL);
    assert_int_equal(urio_executor_shutdown(ex, false, true), 0);
    /* Submitting after shutdown fails clearly. */
    assert_null(urio_run_in_executor(loop, ex, counting, NULL));
    assert_int_equal(errno, ESHUTDOWN);
    gate_release();
    void *v = NULL;
    assert_int_equal(urio_loop_run_until_complete(loop, busy), 0);
    assert_int_equal(urio_future_result(busy, &v), 0);
    assert_int_equal((intptr_t)v, 7);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(urio_loop_run_until_complete(loop, q[i]), -ECANCELED);
        urio_future_unref(q[i]);
    }
    assert_int_equal(atomic_load(&ran_count), 0);
    urio_future_unref(busy);
    assert_int_equal(urio_executor_shutdown(ex, true, false), 0);   /* again: harmless */
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* shutdown(wait) without cancel_futures: queued jobs still run. */
static void test_executor_shutdown_wait_runs_queued(void **state)
{
    (void)state;
    int threads0 = thread_count();
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 2), 0);
    atomic_store(&ran_count, 0);
    urio_future_t *q[50];
    for (int i = 0; i < 50; i++)
        q[i] = urio_run_in_executor(loop, ex, counting, NULL);
    assert_int_equal(urio_executor_shutdown(ex, true, false), 0);
    assert_int_equal(atomic_load(&ran_count), 50);
    assert_int_equal(settled_thread_count(threads0), threads0);    /* every worker exited */
    for (int i = 0; i < 50; i++) {
        assert_int_equal(urio_loop_run_until_complete(loop, q[i]), 0);
        urio_future_unref(q[i]);
    }
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* One pool serves several loops, each on its own thread. */
struct loop_user {
    urio_executor_t *ex;
    int ok;
};

static void *loop_user_main(void *arg)
{
    struct loop_user *u = arg;
    urio_loop_t *loop = test_loop_new();
    u->ok = 1;
    for (intptr_t i = 0; i < 200; i++) {
        urio_future_t *f = urio_run_in_executor(loop, u->ex, square, (void *)i);
        void *v = NULL;
        if (f == NULL || urio_loop_run_until_complete(loop, f) != 0 ||
            urio_future_result(f, &v) != 0 || (intptr_t)v != i * i)
            u->ok = 0;
        urio_future_unref(f);
    }
    urio_loop_close(loop);
    return NULL;
}

static void test_executor_shared_by_loops(void **state)
{
    (void)state;
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 3), 0);
    struct loop_user u[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        u[i] = (struct loop_user){ ex, 0 };
        assert_int_equal(pthread_create(&t[i], NULL, loop_user_main, &u[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(u[i].ok, 1);
    }
    urio_executor_free(ex);
}

/* From another thread, a loop-side executor future can be waited on. */
static void *waiter_main(void *arg)
{
    urio_future_t *f = arg;
    void *v = NULL;
    intptr_t ret = urio_future_wait(f, 5000 * (int64_t)MS, &v);
    return (void *)(ret == 0 ? (intptr_t)v : -1);
}

static void test_executor_future_wait_from_thread(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_future_t *f = urio_run_in_executor(loop, NULL, square, (void *)12);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, waiter_main, f), 0);
    run_until(loop, f);
    void *got;
    pthread_join(t, &got);
    assert_int_equal((intptr_t)got, 144);
    /*
     * From the loop's own thread, waiting is refused, also between runs: the
     * ring is bound to this thread, so only it could complete g.
     */
    urio_future_t *g = test_future_new(loop);
    test_log_capture();
    assert_int_equal(urio_future_wait(g, 0, NULL), -EDEADLK);
    assert_log_contains("urio_future_wait(): called from the thread that owns the future's loop");
    urio_future_unref(g);
    urio_future_unref(f);
    test_loop_close(loop);
}

static urio_future_t *self_wait_f;
static int self_wait_ret;
static void self_wait_cb(void *arg)
{
    self_wait_ret = urio_future_wait(self_wait_f, 1000, NULL);
    urio_loop_stop(arg);
}

static void test_executor_wait_on_loop_thread_refused(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    self_wait_f = test_future_new(loop);
    test_log_capture();
    urio_call_soon(loop, self_wait_cb, loop);
    urio_loop_run_forever(loop);
    assert_int_equal(self_wait_ret, -EDEADLK);
    assert_log_contains("urio_future_wait(): called from the thread running the future's loop");
    urio_future_unref(self_wait_f);
    test_loop_close(loop);
}

/* Closing the loop with jobs queued and running: no thread left, nothing leaked. */
static void test_executor_close_with_jobs_in_flight(void **state)
{
    (void)state;
    int threads0 = thread_count();
    urio_loop_t *loop = test_loop_new();
    gate_reset();
    atomic_store(&ran_count, 0);
    urio_future_t *busy = urio_run_in_executor(loop, NULL, gated, NULL);
    gate_wait_started(1);
    urio_future_t *q[20];
    for (int i = 0; i < 20; i++)
        q[i] = urio_run_in_executor(loop, NULL, counting, NULL);
    urio_future_unref(busy);
    for (int i = 0; i < 20; i++)
        urio_future_unref(q[i]);
    gate_release();
    test_loop_close(loop);
    assert_int_equal(settled_thread_count(threads0), threads0);
}

/*
 * A loop closing with jobs in a pool of the program's own: their futures are
 * cancelled at close (a waiter on another thread is released), jobs not
 * started never run, and the pool outlives the loop.
 */
static void test_executor_loop_close_settles_jobs_in_own_pool(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 1), 0);
    gate_reset();
    atomic_store(&ran_count, 0);
    urio_future_t *busy = urio_run_in_executor(loop, ex, gated, NULL);
    gate_wait_started(1);
    urio_future_t *q = urio_run_in_executor(loop, ex, counting, NULL);
    test_loop_close(loop);
    assert_true(urio_future_cancelled(busy));
    assert_true(urio_future_cancelled(q));
    assert_int_equal(urio_future_wait(q, 0, NULL), -ECANCELED);
    gate_release();
    urio_executor_shutdown(ex, true, false);
    assert_int_equal(atomic_load(&ran_count), 0);     /* the queued job was skipped */
    /* Cancelling after close is harmless. */
    assert_false(urio_future_cancel(q));
    urio_future_unref(busy);
    urio_future_unref(q);
    urio_executor_free(ex);
}

/* A job a callback submitted is handed over even if the pool shuts down in the same turn. */
static urio_executor_t *turn_ex;
static urio_future_t *turn_f;
static void submit_then_shutdown_cb(void *arg)
{
    turn_f = urio_run_in_executor(arg, turn_ex, square, (void *)3);
    urio_executor_shutdown(turn_ex, true, false);
}

static void test_executor_shutdown_in_same_turn_runs_job(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    assert_int_equal(urio_thread_pool_new(&turn_ex, 2), 0);
    urio_call_soon(loop, submit_then_shutdown_cb, loop);
    urio_loop_stop(loop);
    urio_loop_run_forever(loop);
    assert_non_null(turn_f);
    void *v = NULL;
    assert_int_equal(urio_loop_run_until_complete(loop, turn_f), 0);
    assert_int_equal(urio_future_result(turn_f, &v), 0);
    assert_int_equal((intptr_t)v, 9);
    urio_future_unref(turn_f);
    urio_executor_free(turn_ex);
    test_loop_close(loop);
}

static void test_executor_bad_input(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    assert_null(urio_run_in_executor(NULL, NULL, square, NULL));
    assert_int_equal(errno, EINVAL);
    assert_null(urio_run_in_executor(loop, NULL, NULL, NULL));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(urio_thread_pool_new(NULL, 1), -EINVAL);
    urio_executor_t *ex = NULL;
    assert_int_equal(urio_thread_pool_new(&ex, 5000), -EINVAL);
    assert_int_equal(urio_executor_shutdown(NULL, true, true), -EINVAL);
    test_log_capture();
    assert_null(urio_executor_fail(-EIO, "outside"));
    assert_log_contains("urio_executor_fail(): called outside an executor job");
    test_loop_close(loop);
}

/* ---------------------------------------------------------------- */
/* The default executor: set, shut down with a timeout               */

static void test_executor_set_default(void **state)
{
    (void)state;
    int threads0 = thread_count();
    urio_loop_t *loop = test_loop_new();
    /* The loop's own pool first, then the program's. */
    urio_future_t *f = urio_run_in_executor(loop, NULL, square, (void *)4);
    run_until(loop, f);
    urio_future_unref(f);
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 2), 0);
    assert_int_equal(urio_loop_set_default_executor(loop, ex), 0);
    atomic_store(&ran_count, 0);
    f = urio_run_in_executor(loop, NULL, counting, (void *)7);
    void *r = NULL;
    assert_int_equal(urio_loop_run_until_complete(loop, f), 0);
    assert_int_equal(urio_future_result(f, &r), 0);
    assert_int_equal((intptr_t)r, 7);
    assert_int_equal(atomic_load(&ran_count), 1);
    urio_future_unref(f);
    test_loop_close(loop);
    /* The program's pool survives the loop and still works for another. */
    loop = test_loop_new();
    f = urio_run_in_executor(loop, ex, square, (void *)5);
    run_until(loop, f);
    assert_int_equal(urio_future_result(f, &r), 0);
    assert_int_equal((intptr_t)r, 25);
    urio_future_unref(f);
    test_loop_close(loop);
    urio_executor_free(ex);
    assert_int_equal(settled_thread_count(threads0), threads0);
    /* Bad input. */
    loop = test_loop_new();
    assert_int_equal(urio_loop_set_default_executor(NULL, NULL), -EINVAL);
    assert_int_equal(urio_loop_set_default_executor(loop, NULL), 0);
    test_loop_close(loop);
}

static void test_executor_shutdown_default_executor(void **state)
{
    (void)state;
    int threads0 = thread_count();
    urio_loop_t *loop = test_loop_new();
    /* Nothing to shut down: done at once. */
    urio_future_t *sd = urio_loop_shutdown_default_executor(loop, -1);
    assert_non_null(sd);
    assert_true(urio_future_done(sd));
    urio_future_unref(sd);
    /* A job still running: the shutdown waits for it, without blocking the loop. */
    gate_reset();
    urio_future_t *busy = urio_run_in_executor(loop, NULL, gated, (void *)1);
    gate_wait_started(1);
    test_log_capture();
    sd = urio_loop_shutdown_default_executor(loop, 20 * (int64_t)MS);
    assert_int_equal(urio_loop_run_until_complete(loop, sd), -ETIMEDOUT);
    assert_log_contains("WARNING The executor did not finishing joining its threads within "
                        "0.02 seconds.");
    /* No new jobs once shut down. */
    errno = 0;
    assert_null(urio_run_in_executor(loop, NULL, square, (void *)2));
    assert_int_equal(errno, ESHUTDOWN);
    urio_future_unref(sd);
    /* Released, the job finishes and a new shutdown completes. */
    gate_release();
    run_until(loop, busy);
    assert_int_equal(urio_future_result(busy, NULL), 0);
    sd = urio_loop_shutdown_default_executor(loop, 10000 * (int64_t)MS);
    assert_int_equal(urio_loop_run_until_complete(loop, sd), 0);
    urio_future_unref(sd);
    urio_future_unref(busy);
    test_loop_close(loop);
    assert_int_equal(settled_thread_count(threads0), threads0);
}

/*
 * issue 14 point 2: a job whose completion is already in the inbox when the
 * loop closes ends with its result (not -ECANCELED), which is then the
 * future's: nothing is lost, nothing freed twice.
 */
static void test_executor_completion_in_inbox_at_close_delivered(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    freed_results = 0;
    static int payload;
    urio_job_opts_t opts = { .free_result = free_result };
    urio_future_t *f = urio_run_in_executor_opts(loop, NULL, nothing, &payload, &opts);
    /* The job runs and pushes its completion; the loop never runs a turn again. */
    assert_true(urio_loop_alive(loop));     /* a job is out */
    usleep(50000);
    test_loop_close(loop);
    void *r = NULL;
    assert_int_equal(urio_future_result(f, &r), 0);
    assert_ptr_equal(r, &payload);
    assert_int_equal(freed_results, 0);     /* delivered, so not the destructor's */
    urio_future_unref(f);
    assert_int_equal(freed_results, 0);
}

/*
 * A worker takes a share of a long queue under one lock; a job it took but
 * did not start is still "not started": shutdown(cancel_futures) cancels
 * it, as Python does, and it never runs.
 */
static atomic_int g2_open, g2_started;
static void *gated2(void *arg)
{
    atomic_store(&g2_started, 1);
    while (!atomic_load(&g2_open))
        usleep(100);
    return arg;
}

static void test_executor_shutdown_cancels_jobs_taken_not_started(void **state)
{
    (void)state;
    enum { REST = 30 };
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 1), 0);
    gate_reset();
    atomic_store(&ran_count, 0);
    atomic_store(&g2_open, 0);
    atomic_store(&g2_started, 0);
    urio_future_t *g = urio_run_in_executor(loop, ex, gated, NULL);
    gate_wait_started(1);
    /* Queued behind it: the worker will take them as a share, the first one first. */
    urio_future_t *first = urio_run_in_executor(loop, ex, gated2, (void *)7);
    urio_future_t *rest[REST];
    for (int i = 0; i < REST; i++)
        rest[i] = urio_run_in_executor(loop, ex, counting, NULL);
    gate_release();
    while (!atomic_load(&g2_started))
        usleep(100);
    assert_int_equal(urio_executor_shutdown(ex, false, true), 0);
    atomic_store(&g2_open, 1);
    void *v = NULL;
    assert_int_equal(urio_loop_run_until_complete(loop, g), 0);
    assert_int_equal(urio_loop_run_until_complete(loop, first), 0);
    assert_int_equal(urio_future_result(first, &v), 0);
    assert_ptr_equal(v, (void *)7);
    for (int i = 0; i < REST; i++) {
        assert_int_equal(urio_loop_run_until_complete(loop, rest[i]), -ECANCELED);
        urio_future_unref(rest[i]);
    }
    assert_int_equal(atomic_load(&ran_count), 0);
    urio_future_unref(g);
    urio_future_unref(first);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/*
 * A job that calls back into its loop and waits (asyncio's
 * run_coroutine_threadsafe(...).result() from run_in_executor) while the
 * program ends.  urio_run shuts the default executor down with the loop
 * still running, so the call is served; a direct close serves the inbox
 * while it waits for the workers, so the call is refused, not deadlocked.
 */
static urio_loop_t *callback_loop;
static atomic_int callback_ret;
static atomic_int callback_go, callback_started;

static int forty_two(void *arg, void **res)
{
    (void)arg;
    *res = (void *)42;
    return 0;
}

static void *calls_back(void *arg)
{
    (void)arg;
    atomic_store(&callback_started, 1);
    while (!atomic_load(&callback_go))
        usleep(1000);
    usleep(20000);                  /* the program is ending by now */
    urio_future_t *p = urio_run_coroutine_threadsafe(callback_loop, URIO_CORO(forty_two, NULL));
    if (p == NULL) {
        atomic_store(&callback_ret, -errno);
        return NULL;
    }
    void *v = NULL;
    int r = urio_future_wait(p, 10000 * (int64_t)MS, &v);
    atomic_store(&callback_ret, r < 0 ? r : (int)(intptr_t)v);
    urio_future_unref(p);
    return NULL;
}

static int main_returns_at_once(void *arg, void **res)
{
    (void)arg;
    (void)res;
    callback_loop = urio_loop_current();
    atomic_store(&callback_go, 1);
    urio_future_unref(urio_run_in_executor(callback_loop, NULL, calls_back, NULL));
    return 0;
}

static void test_executor_job_calls_back_while_program_ends(void **state)
{
    (void)state;
    atomic_store(&callback_ret, 0);
    atomic_store(&callback_go, 0);
    assert_int_equal(urio_run(URIO_CORO(main_returns_at_once, NULL), NULL, NULL), 0);
    assert_int_equal(atomic_load(&callback_ret), 42);

    /* A close without urio_run. */
    atomic_store(&callback_ret, 0);
    atomic_store(&callback_go, 0);
    atomic_store(&callback_started, 0);
    urio_loop_t *loop = test_loop_new();
    callback_loop = loop;
    urio_future_t *f = urio_run_in_executor(loop, NULL, calls_back, NULL);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);    /* hands the job over */
    while (!atomic_load(&callback_started))
        usleep(1000);
    atomic_store(&callback_go, 1);
    test_log_capture();
    test_loop_close(loop);
    assert_int_equal(atomic_load(&callback_ret), -ESHUTDOWN);
    urio_future_unref(f);
}

/* Shut down from two threads at once, in debug mode (the executor is tracked): once. */
static urio_executor_t *racing_pool;
static pthread_barrier_t racing_bar;

static void *shut_racing(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&racing_bar);
    urio_executor_shutdown(racing_pool, false, false);
    return NULL;
}

static void test_executor_shutdown_races_shutdown(void **state)
{
    (void)state;
    setenv("URIO_DEBUG", "1", 1);
    for (int round = 0; round < 500; round++) {
        assert_int_equal(urio_thread_pool_new(&racing_pool, 1), 0);
        pthread_barrier_init(&racing_bar, NULL, 2);
        pthread_t a, b;
        pthread_create(&a, NULL, shut_racing, NULL);
        pthread_create(&b, NULL, shut_racing, NULL);
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        pthread_barrier_destroy(&racing_bar);
        urio_executor_free(racing_pool);
    }
    setenv("URIO_DEBUG", "0", 1);
}

/* A job another thread's shutdown refused before it was handed over fails with -ESHUTDOWN. */
static urio_executor_t *refusing_pool;
static urio_future_t *refused_job;

static void *shut_refusing_pool(void *arg)
{
    (void)arg;
    urio_executor_shutdown(refusing_pool, false, false);
    return NULL;
}

static void submit_then_other_thread_shuts(void *arg)
{
    urio_loop_t *loop = arg;
    refused_job = urio_run_in_executor(loop, refusing_pool, square, (void *)3);
    assert_non_null(refused_job);
    pthread_t th;               /* before this step ends: not handed over yet */
    pthread_create(&th, NULL, shut_refusing_pool, NULL);
    pthread_join(th, NULL);
}

static void test_executor_refused_at_hand_over_fails_eshutdown(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    assert_int_equal(urio_thread_pool_new(&refusing_pool, 2), 0);
    urio_call_soon(loop, submit_then_other_thread_shuts, loop);
    urio_call_later(loop, 20 * MS, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_int_equal(urio_future_result(refused_job, NULL), -ESHUTDOWN);
    assert_false(urio_future_cancelled(refused_job));
    urio_future_unref(refused_job);
    test_loop_close(loop);
    urio_executor_free(refusing_pool);
}

/*
 * A job of the program's own pool, cancelled while it runs, its loop closed
 * before it ends: its result is still freed (once), by whichever side lets
 * the job go last.
 */
static atomic_int discarded_freed, slow_alloc_started;
static void count_free(void *p)
{
    free(p);
    atomic_fetch_add(&discarded_freed, 1);
}

static void *slow_alloc(void *arg)
{
    (void)arg;
    atomic_store(&slow_alloc_started, 1);
    usleep(50000);
    return malloc(64);
}

static void test_executor_discarded_result_freed_after_close(void **state)
{
    (void)state;
    atomic_store(&discarded_freed, 0);
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 1), 0);
    urio_job_opts_t o = { .free_result = count_free };
    atomic_store(&slow_alloc_started, 0);
    urio_future_t *f = urio_run_in_executor_opts(loop, ex, slow_alloc, NULL, &o);
    assert_non_null(f);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);        /* hands the job over */
    while (!atomic_load(&slow_alloc_started))
        usleep(1000);
    assert_true(urio_future_cancel(f));  /* while it runs: its result is nobody's */
    urio_future_unref(f);
    test_loop_close(loop);
    urio_executor_free(ex);              /* waits for the worker: the job has ended */
    assert_int_equal(atomic_load(&discarded_freed), 1);
}

/* ---------------------------------------------------------------- */
/* Job futures kept for reuse (a loop's cache of dead jobs)          */

static int done_calls;
static void count_done(urio_future_t *f, void *arg)
{
    (void)f;
    (void)arg;
    done_calls++;
}

static void unref_now(void *arg)
{
    urio_future_unref(arg);
}

/* Drops f's last reference on the loop's thread while it runs: f is kept for reuse. */
static void unref_on_loop(urio_loop_t *loop, urio_future_t *f)
{
    urio_call_soon(loop, unref_now, f);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
}

/*
 * A job's future let go on the loop's thread is the next job's: it starts
 * pending, with nothing of the first one's outcome, message or callbacks.
 */
static void test_executor_reused_future_starts_fresh(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 1), 0);
    freed_results = 0;
    done_calls = 0;
    urio_job_opts_t o = { .free_result = free_result };
    urio_future_t *f1 = urio_run_in_executor_opts(loop, ex, failing, "sda", &o);
    assert_non_null(f1);
    for (int i = 0; i < 3; i++)     /* more than fit inline: a list of its own */
        assert_int_equal(urio_future_add_done_callback(f1, count_done, NULL), 0);
    assert_int_equal(urio_loop_run_until_complete(loop, f1), -EIO);
    assert_string_equal(urio_future_error_message(f1), "disk sda gone");
    assert_int_equal(done_calls, 3);
    uintptr_t old = (uintptr_t)f1;
    unref_on_loop(loop, f1);

    urio_future_t *f2 = urio_run_in_executor_opts(loop, ex, square, (void *)7, &o);
    assert_non_null(f2);
    assert_true((uintptr_t)f2 == old);      /* the same memory: the cache served it */
    assert_false(urio_future_done(f2));
    assert_int_equal(urio_future_result(f2, NULL), URIO_ENOTDONE);
    assert_null(urio_future_error_message(f2));
    done_calls = 0;
    assert_int_equal(urio_future_add_done_callback(f2, count_done, NULL), 0);
    void *v = NULL;
    assert_int_equal(urio_loop_run_until_complete(loop, f2), 0);
    assert_int_equal(urio_future_result(f2, &v), 0);
    assert_int_equal((intptr_t)v, 49);
    assert_null(urio_future_error_message(f2));
    assert_false(urio_future_cancelled(f2));
    assert_int_equal(done_calls, 1);        /* the first job's three are not called again */
    unref_on_loop(loop, f2);

    /* Reused again, cancelled before it starts: it never runs, nothing is freed. */
    gate_reset();
    atomic_store(&ran_count, 0);
    urio_future_t *busy = urio_run_in_executor(loop, ex, gated, NULL);
    gate_wait_started(1);
    urio_future_t *f3 = urio_run_in_executor_opts(loop, ex, counting, (void *)3, &o);
    assert_true(urio_future_cancel(f3));
    gate_release();
    run_until(loop, busy);
    assert_int_equal(urio_loop_run_until_complete(loop, f3), -ECANCELED);
    urio_executor_shutdown(ex, true, false);
    assert_int_equal(atomic_load(&ran_count), 0);
    assert_int_equal(freed_results, 0);     /* 49 went to its future: the program's */
    urio_future_unref(busy);
    urio_future_unref(f3);
    urio_loop_stop(loop);
    urio_loop_run_forever(loop);            /* f3's trip back ends */
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* A future still referenced is never reused: the new job gets other memory. */
static void test_executor_referenced_future_not_reused(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 1), 0);
    urio_future_t *f1 = urio_run_in_executor(loop, ex, square, (void *)5);
    assert_int_equal(urio_loop_run_until_complete(loop, f1), 0);
    urio_future_t *f2 = urio_run_in_executor(loop, ex, square, (void *)6);
    assert_ptr_not_equal(f1, f2);
    assert_int_equal(urio_loop_run_until_complete(loop, f2), 0);
    void *v = NULL;
    assert_int_equal(urio_future_result(f1, &v), 0);
    assert_int_equal((intptr_t)v, 25);      /* f1 kept its own outcome */
    assert_int_equal(urio_future_result(f2, &v), 0);
    assert_int_equal((intptr_t)v, 36);
    urio_future_unref(f1);
    urio_future_unref(f2);
    urio_executor_free(ex);
    test_loop_close(loop);
}

static int batch_left;
static void unref_count_down(urio_future_t *f, void *arg)
{
    urio_future_unref(f);
    if (--batch_left == 0)
        urio_loop_stop(arg);
}

/* n jobs at once, each future let go in its done callback; runs until all are back. */
static void run_batch(urio_loop_t *loop, urio_executor_t *ex, int n)
{
    batch_left = n;
    for (intptr_t i = 0; i < n; i++) {
        urio_future_t *f = urio_run_in_executor(loop, ex, square, (void *)i);
        assert_non_null(f);
        assert_int_equal(urio_future_add_done_callback(f, unref_count_down, loop), 0);
    }
    urio_loop_run_forever(loop);
    assert_int_equal(batch_left, 0);
}

/*
 * Jobs reuse the memory of dead ones: a second batch allocates nothing.
 * The kept memory is no job (the loop is not alive for it), and it is freed
 * at close.
 */
static void test_executor_job_memory_reused_and_freed_at_close(void **state)
{
    (void)state;
    uint64_t live0 = test_live_blocks();
    urio_loop_opts_t opts = { .debug = -1 };    /* debug mode's stacks are allocations */
    urio_loop_t *loop = test_loop_new_opts(&opts);
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 2), 0);
    run_batch(loop, ex, 200);
    urio_mem_stats_t st0, st1;
    urio_mem_stats(&st0);
    run_batch(loop, ex, 200);
    urio_mem_stats(&st1);
    assert_int_equal(st1.allocs, st0.allocs);
    assert_false(urio_loop_alive(loop));
    urio_loop_stats_t ls;
    assert_int_equal(urio_loop_stats(loop, &ls), 0);
    assert_int_equal(ls.jobs, 0);
    urio_executor_free(ex);
    test_loop_close(loop);
    assert_int_equal(test_live_blocks(), live0);
}

static void *unref_thread(void *arg)
{
    urio_future_unref(arg);
    return NULL;
}

/* A job's future whose last reference goes on another thread is freed there. */
static void test_executor_future_unref_elsewhere_freed(void **state)
{
    (void)state;
    urio_loop_opts_t opts = { .debug = -1 };
    urio_loop_t *loop = test_loop_new_opts(&opts);
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, 1), 0);
    urio_future_t *f = urio_run_in_executor(loop, ex, square, (void *)2);
    assert_int_equal(urio_loop_run_until_complete(loop, f), 0);
    uint64_t live = test_live_blocks();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, unref_thread, f), 0);
    pthread_join(t, NULL);
    assert_int_equal(test_live_blocks(), live - 1);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/*
 * Blocking jobs get every worker, however many cores there are: the pool
 * wakes at most one worker per core for its queue, and an idle worker
 * joins when the awake ones take nothing (they are stuck).  Each job waits
 * until all of them run at once, so on a machine with fewer cores than
 * workers this ends only through that join.  The second round runs on
 * workers already started and idle, which no new thread helps.
 */
static pthread_barrier_t all_bar;

static void *all_at_once(void *arg)
{
    pthread_barrier_wait(&all_bar);
    return arg;
}

static void test_executor_blocking_jobs_get_every_worker(void **state)
{
    (void)state;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = (cores < 1 ? 1u : (unsigned)cores) + 3u;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex;
    assert_int_equal(urio_thread_pool_new(&ex, n), 0);
    urio_future_t *f[64];
    assert_true(n <= 64);
    pthread_barrier_init(&all_bar, NULL, n);
    for (int round = 0; round < 2; round++) {
        for (unsigned i = 0; i < n; i++) {
            f[i] = urio_run_in_executor(loop, ex, all_at_once, (void *)(intptr_t)i);
            assert_non_null(f[i]);
        }
        for (unsigned i = 0; i < n; i++) {
            void *v = NULL;
            assert_int_equal(urio_loop_run_until_complete(loop, f[i]), 0);
            assert_int_equal(urio_future_result(f[i], &v), 0);
            assert_int_equal((intptr_t)v, (intptr_t)i);
            urio_future_unref(f[i]);
        }
    }
    pthread_barrier_destroy(&all_bar);
    assert_int_equal(urio_executor_shutdown(ex, true, false), 0);
    urio_executor_free(ex);
    test_loop_close(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_executor_default_pool_results),
        URIO_TEST(test_executor_error_with_message),
        URIO_TEST(test_executor_cancel_before_start_never_runs),
        URIO_TEST(test_executor_cancel_after_start_discards_result),
        URIO_TEST(test_executor_shutdown_cancel_futures),
        URIO_TEST(test_executor_shutdown_wait_runs_queued),
        URIO_TEST(test_executor_shared_by_loops),
        URIO_TEST(test_executor_future_wait_from_thread),
        URIO_TEST(test_executor_wait_on_loop_thread_refused),
        URIO_TEST(test_executor_close_with_jobs_in_flight),
        URIO_TEST(test_executor_loop_close_settles_jobs_in_own_pool),
        URIO_TEST(test_executor_shutdown_in_same_turn_runs_job),
        URIO_TEST(test_executor_bad_input),
        URIO_TEST(test_executor_set_default),
        URIO_TEST(test_executor_refused_at_hand_over_fails_eshutdown),
        URIO_TEST(test_executor_discarded_result_freed_after_close),
        URIO_TEST(test_executor_shutdown_races_shutdown),
        URIO_TEST(test_executor_job_calls_back_while_program_ends),
        URIO_TEST(test_executor_shutdown_default_executor),
        URIO_TEST(test_executor_completion_in_inbox_at_close_delivered),
        URIO_TEST(test_executor_shutdown_cancels_jobs_taken_not_started),
        URIO_TEST(test_executor_reused_future_starts_fresh),
        URIO_TEST(test_executor_referenced_future_not_reused),
        URIO_TEST(test_executor_job_memory_reused_and_freed_at_close),
        URIO_TEST(test_executor_future_unref_elsewhere_freed),
        URIO_TEST(test_executor_blocking_jobs_get_every_worker),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
