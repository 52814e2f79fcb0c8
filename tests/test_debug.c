/*
 * test_debug.c — debug mode: its switches, the slow-callback warning, the
 * wrong-thread refusal, the io_uring wait log, error names.
 */
#include "helpers.h"

#include <sys/wait.h>
#include <unistd.h>

static void test_debug_switches(void **state)
{
    (void)state;
    urio_loop_opts_t on = { .debug = 1 }, off = { .debug = -1 }, dflt = { 0 };

    unsetenv("URIO_DEBUG");
    urio_loop_t *loop = test_loop_new_opts(&dflt);
    assert_int_equal(urio_loop_get_debug(loop), URIO_DEBUG_BUILD);
    test_loop_close(loop);

    setenv("URIO_DEBUG", "1", 1);
    loop = test_loop_new_opts(&dflt);
    assert_true(urio_loop_get_debug(loop));
    test_loop_close(loop);
    loop = test_loop_new_opts(&off);          /* -1 forces it off */
    assert_false(urio_loop_get_debug(loop));
    urio_loop_set_debug(loop, true);          /* and set_debug at any time */
    assert_true(urio_loop_get_debug(loop));
    test_loop_close(loop);

    /* 0 turns it off, also in a debug build (issue 11: it did not). */
    setenv("URIO_DEBUG", "0", 1);
    loop = test_loop_new_opts(NULL);
    assert_false(urio_loop_get_debug(loop));
    test_loop_close(loop);
    /* Booleans are parsed strictly: the usual words either way ... */
    static const char *const yes[] = { "1", "true", "TRUE", "yes", "on" };
    static const char *const no[] = { "0", "false", "no", "off", "Off" };
    for (size_t i = 0; i < 5; i++) {
        setenv("URIO_DEBUG", yes[i], 1);
        loop = test_loop_new_opts(NULL);
        assert_true(urio_loop_get_debug(loop));
        test_loop_close(loop);
        setenv("URIO_DEBUG", no[i], 1);
        loop = test_loop_new_opts(NULL);
        assert_false(urio_loop_get_debug(loop));
        test_loop_close(loop);
    }
    /* ... and anything else ignored, with a WARNING that says so. */
    test_log_capture();
    setenv("URIO_DEBUG", "maybe", 1);
    loop = test_loop_new_opts(NULL);
    assert_int_equal(urio_loop_get_debug(loop), URIO_DEBUG_BUILD);
    test_loop_close(loop);
    assert_log_contains("WARNING URIO_DEBUG=maybe is not understood (use 1 to turn debug mode "
                        "on, 0 to turn it off): ignored");
    test_log_release();
    setenv("URIO_DEBUG", "", 1);
    loop = test_loop_new_opts(&on);
    assert_true(urio_loop_get_debug(loop));
    urio_loop_set_debug(loop, false);
    assert_false(urio_loop_get_debug(loop));
    test_loop_close(loop);
    setenv("URIO_DEBUG", "0", 1);   /* as the suite runs: tests choose debug mode */
}

static void slow_cb(void *arg)
{
    (void)arg;
    usleep(30000);
}

static void fast_cb(void *arg)
{
    (void)arg;
}

static urio_loop_t *debug_loop(void)
{
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&on);
    urio_loop_set_slow_callback_duration(loop, 10 * MS);
    assert_int_equal(urio_loop_get_slow_callback_duration(loop), 10 * MS);
    return loop;
}

static void test_debug_slow_callback_warning(void **state)
{
    (void)state;
    if (!URIO_DEBUG_CHECKS)
        skip();
    urio_loop_t *loop = debug_loop();
    test_log_capture();
    int line = __LINE__ + 1;
    urio_call_soon(loop, slow_cb, NULL);
    urio_call_soon(loop, fast_cb, NULL);
    urio_loop_stop(loop);
    urio_loop_run_forever(loop);
    char expect[256];
    snprintf(expect, sizeof expect, "WARNING Executing <Handle slow_cb() at %s:%d> took 0.0",
             __FILE__, line);
    assert_log_contains(expect);
    assert_log_contains(" seconds");
    assert_int_equal(test_log_count("Executing <Handle"), 1);   /* not fast_cb */
    test_loop_close(loop);
}

/* Scheduled through the function (no site): the callback is named by its symbol. */
static void test_debug_slow_callback_symbolised(void **state)
{
    (void)state;
    if (!URIO_DEBUG_CHECKS)
        skip();
    urio_loop_t *loop = debug_loop();
    test_log_capture();
    urio_handle_t (*call_soon)(urio_loop_t *, urio_callback_fn, void *) = urio_call_soon;
    call_soon(loop, slow_cb, NULL);
    urio_loop_stop(loop);
    urio_loop_run_forever(loop);
    assert_log_contains("Executing <Handle slow_cb()");
    test_loop_close(loop);
}

static void test_debug_slow_callback_quiet_without_debug(void **state)
{
    (void)state;
    urio_loop_opts_t off = { .debug = -1 };
    urio_loop_t *loop = test_loop_new_opts(&off);
    urio_loop_set_slow_callback_duration(loop, 10 * MS);
    test_log_capture();
    urio_call_soon(loop, slow_cb, NULL);
    urio_loop_stop(loop);
    urio_loop_run_forever(loop);
    assert_int_equal(test_log_count("Executing"), 0);
    test_loop_close(loop);
}

/* The loop runs in a thread; the test thread makes loop-only calls. */
struct wrong_thread {
    urio_loop_t *loop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool running;
};

static void mark_running_cb(void *arg)
{
    struct wrong_thread *w = arg;
    pthread_mutex_lock(&w->mu);
    w->running = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void *loop_thread(void *arg)
{
    struct wrong_thread *w = arg;
    urio_call_soon(w->loop, mark_running_cb, w);
    urio_loop_run_forever(w->loop);
    return NULL;
}

static void test_debug_wrong_thread_refused(void **state)
{
    (void)state;
    test_needs_threads();
    struct wrong_thread w = { .loop = test_loop_new(), .mu = PTHREAD_MUTEX_INITIALIZER,
                              .cv = PTHREAD_COND_INITIALIZER };
    test_log_capture();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, loop_thread, &w), 0);
    pthread_mutex_lock(&w.mu);
    while (!w.running)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);

    errno = 0;
    assert_int_equal(urio_call_soon(w.loop, fast_cb, NULL).id, 0);
    assert_int_equal(errno, EPERM);
    assert_int_equal(urio_call_later(w.loop, MS, fast_cb, NULL).id, 0);
    assert_int_equal(errno, EPERM);
    assert_int_equal(urio_call_at(w.loop, 0, fast_cb, NULL).id, 0);
    assert_int_equal(errno, EPERM);
    assert_false(urio_handle_cancel(w.loop, (urio_handle_t){ 1ull << 32 | 1, 1 }));
    urio_future_t *none;
    assert_int_equal(urio_future_new(&none, w.loop), -EPERM);

    const char *text = "Non-thread-safe operation invoked on an event loop other than the "
                       "current one";
    assert_int_equal(test_log_count(text), 5);
    assert_log_contains("ERROR urio_call_soon(): Non-thread-safe operation");
    assert_log_contains("ERROR urio_call_later(): Non-thread-safe operation");
    assert_log_contains("ERROR urio_call_at(): Non-thread-safe operation");
    assert_log_contains("ERROR urio_handle_cancel(): Non-thread-safe operation");
    assert_log_contains("ERROR urio_future_new(): Non-thread-safe operation");

    /* urio_loop_stop is thread-safe (issue 11): it stops the loop from here. */
    urio_loop_stop(w.loop);
    pthread_join(t, NULL);
    assert_int_equal(test_log_count(text), 5);
    test_loop_close(w.loop);
}

static void *late_poke(void *arg)
{
    usleep(20000);
    urio_call_soon_threadsafe(arg, test_stop_cb, arg);
    return NULL;
}

/* "poll took X ms: N events" at DEBUG for a wait under a second. */
static void test_debug_poll_timing_logged(void **state)
{
    (void)state;
    test_needs_threads();
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&on);
    int level = urio_log_get_level();
    urio_log_set_level(URIO_LOG_DEBUG);
    test_log_capture();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, late_poke, loop), 0);
    urio_loop_run_forever(loop);
    pthread_join(t, NULL);
    urio_log_set_level(level);
    assert_log_contains("DEBUG poll took ");
    assert_log_contains(" ms: 1 events");
    test_loop_close(loop);
}

/* A wait bounded by a timer that ends early on a wake-up says its bound too. */
static void test_debug_timed_poll_logged(void **state)
{
    (void)state;
    test_needs_threads();
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&on);
    urio_handle_t far = urio_call_later(loop, 5000 * MS, test_stop_cb, loop);
    int level = urio_log_get_level();
    urio_log_set_level(URIO_LOG_DEBUG);
    test_log_capture();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, late_poke, loop), 0);
    urio_loop_run_forever(loop);
    pthread_join(t, NULL);
    urio_log_set_level(level);
    /* About 5000 ms, less what has passed, plus the timer's slack (delay / 1024). */
    const char *p = strstr(test_log_text(), "DEBUG poll ");
    assert_non_null(p);
    double bound = strtod(p + strlen("DEBUG poll "), NULL);
    if (bound < 4000 || bound > 5100)
        fail_msg("the poll's bound: %.3f ms\n%s", bound, test_log_text());
    assert_log_contains(" ms took ");
    assert_log_contains(" ms: 1 events");
    assert_true(urio_handle_cancel(loop, far));
    test_loop_close(loop);
}

/* Naming a code address for a report: "fn() at file:line" where there is debug
 * information, "fn()" where there is only a symbol (cmocka's library, which
 * Debian ships without it), the address where there is nothing (after looking
 * again for a library loaded since). */
static void test_debug_describe_pc_fallbacks(void **state)
{
    (void)state;
    char buf[256];
    urio__describe_pc((uintptr_t)test_debug_describe_pc_fallbacks + 4, buf, sizeof buf);
    assert_non_null(strstr(buf, "test_debug_describe_pc_fallbacks() at test_debug.c:"));
    urio__describe_pc((uintptr_t)_cmocka_run_group_tests + 4, buf, sizeof buf);
    if (strncmp(buf, "_cmocka_run_group_tests()", 25) != 0)
        fail_msg("cmocka's _cmocka_run_group_tests named \"%s\"", buf);
    urio__describe_pc(0x10, buf, sizeof buf);
    assert_string_equal(buf, "0x10()");
}

static void test_debug_no_poll_log_without_debug(void **state)
{
    (void)state;
    test_needs_threads();
    urio_loop_opts_t off = { .debug = -1 };
    urio_loop_t *loop = test_loop_new_opts(&off);
    int level = urio_log_get_level();
    urio_log_set_level(URIO_LOG_DEBUG);
    test_log_capture();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, late_poke, loop), 0);
    urio_loop_run_forever(loop);
    pthread_join(t, NULL);
    urio_log_set_level(level);
    assert_int_equal(test_log_count("poll"), 0);
    test_loop_close(loop);
}

/* A debug-mode loop never closed is reported when the process exits.
 * noinline: the creation stack must show this frame in optimised builds. */
__attribute__((noinline)) static int leaks_loops(void *arg)
{
    (void)arg;
    urio_loop_opts_t on = { .debug = 1 }, off = { .debug = -1 };
    urio_loop_t *a, *b, *c;
    if (urio_loop_new(&a, &on) < 0 || urio_loop_new(&b, &off) < 0 || urio_loop_new(&c, &on) < 0)
        return 77;
    urio_loop_close(c);
    return 0;       /* a is leaked in debug mode, b without: one warning at exit */
}

static void test_debug_unclosed_loop_warned_at_exit(void **state)
{
    (void)state;
    char buf[4096];
    int status = test_child(leaks_loops, NULL, buf, sizeof buf);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
        skip();
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    const char *w = strstr(buf, "WARNING urio: unclosed event loop <urio_loop 0x");
    if (w == NULL)
        fail_msg("no warning in: %s", buf);
    assert_null(strstr(w + 40, "unclosed event loop"));  /* only the debug loop */
    /* Named with where it was made, as asyncio's ResourceWarning names the object. */
    if (URIO_DEBUG_CHECKS) {
        const char *at = strstr(w, "running=false>\nLoop created at (most recent call last):\n");
        if (at == NULL || strstr(at, ", in leaks_loops\n") == NULL)
            fail_msg("the warning lacks the creation stack: %s", w);
    }
}

static void test_debug_strerror_names_every_code(void **state)
{
    (void)state;
    static const int codes[] = { URIO_ENOTDONE, URIO_ENOURING, URIO_ESTOPPED,
                                 URIO_EBROKENWORKER };
    static const char *names[] = { "URIO_ENOTDONE", "URIO_ENOURING", "URIO_ESTOPPED",
                                   "URIO_EBROKENWORKER" };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        assert_true(codes[i] < -10000);
        assert_string_equal(urio_strerror_name(codes[i]), names[i]);
        assert_string_not_equal(urio_strerror(codes[i]), "");
        assert_null(strstr(urio_strerror(codes[i]), "Unknown"));
    }
    assert_string_equal(urio_strerror_name(-ECANCELED), "ECANCELED");
    assert_string_equal(urio_strerror(-ECANCELED), "Operation canceled");
    assert_string_equal(urio_strerror_name(-EPERM), "EPERM");
    assert_string_equal(urio_strerror(0), "Success");
    assert_string_equal(urio_strerror(-99999), "Unknown error -99999");
    assert_string_equal(urio_strerror_name(-99999), "E?");
    for (int e = 1; e < 134; e++)
        assert_non_null(urio_strerror(-e));
}

/* URIO_LOG_LEVEL is parsed strictly too: read in a child, where it is read first. */
static int log_level_child(void *arg)
{
    setenv("URIO_LOG_LEVEL", arg, 1);
    urio__log_level_reread();       /* as in a process that starts with it */
    urio_log(URIO_LOG_INFO, "at info");
    return urio_log_get_level();
}

static void test_debug_log_level_parsed_strictly(void **state)
{
    (void)state;
    char out[2048];
    int status = test_child(log_level_child, "verbose", out, sizeof out);
    assert_int_equal(WEXITSTATUS(status), URIO_LOG_INFO);
    if (strstr(out, "WARNING urio: URIO_LOG_LEVEL=verbose is not understood (use debug, info, "
                    "warning, error, critical or a number): the level is INFO") == NULL)
        fail_msg("no warning; the child wrote:\n%s", out);
    assert_non_null(strstr(out, "INFO urio: at info"));
    status = test_child(log_level_child, "warning", out, sizeof out);
    assert_int_equal(WEXITSTATUS(status), URIO_LOG_WARNING);
    assert_null(strstr(out, "not understood"));
}

/*
 * Debug mode on in a build that opted out of its machinery: a WARNING says
 * what is missing (in a child: the message goes to its stderr).
 */
static int opt_out_child(void *arg)
{
    (void)arg;
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop;
    if (urio_loop_new(&loop, &on) != 0)
        return 1;
    return urio_loop_close(loop) != 0;
}

static void test_debug_opt_out_said(void **state)
{
    (void)state;
    char out[2048];
    int status = test_child(opt_out_child, NULL, out, sizeof out);
    assert_int_equal(WEXITSTATUS(status), 0);
    bool said = strstr(out, "WARNING urio: debug mode is on, but urio was built with "
                            "-Ddebug_checks=false") != NULL;
    assert_true(said == !URIO_DEBUG_CHECKS);    /* said exactly where it is true */
}

/*
 * Only callbacks' own time is charged to them: not the time between two
 * runs, nor before debug mode was turned on.
 */
static void test_debug_time_between_runs_is_nobodys(void **state)
{
    (void)state;
    if (!URIO_DEBUG_CHECKS)
        skip();
    urio_loop_t *loop = debug_loop();
    test_log_capture();
    urio_call_soon(loop, fast_cb, NULL);
    urio_loop_stop(loop);
    urio_loop_run_forever(loop);
    usleep(30000);                  /* the program does something else between runs */
    urio_call_soon(loop, fast_cb, NULL);
    urio_loop_stop(loop);
    urio_loop_run_forever(loop);
    /* Debug mode off, a run, time passes, on again. */
    urio_loop_set_debug(loop, false);
    urio_call_soon(loop, fast_cb, NULL);
    urio_loop_stop(loop);
    urio_loop_run_forever(loop);
    usleep(30000);
    urio_loop_set_debug(loop, true);
    urio_call_soon(loop, fast_cb, NULL);
    urio_loop_stop(loop);
    urio_loop_run_forever(loop);
    assert_int_equal(test_log_count("Executing"), 0);
    urio_loop_stats_t st;
    assert_int_equal(urio_loop_stats(loop, &st), 0);
    assert_int_equal(st.slow_callbacks, 0);
    test_loop_close(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_debug_switches),
        URIO_TEST(test_debug_log_level_parsed_strictly),
        URIO_TEST(test_debug_opt_out_said),
        URIO_TEST(test_debug_slow_callback_warning),
        URIO_TEST(test_debug_slow_callback_symbolised),
        URIO_TEST(test_debug_slow_callback_quiet_without_debug),
        URIO_TEST(test_debug_time_between_runs_is_nobodys),
        URIO_TEST(test_debug_wrong_thread_refused),
        URIO_TEST(test_debug_poll_timing_logged),
        URIO_TEST(test_debug_timed_poll_logged),
        URIO_TEST(test_debug_describe_pc_fallbacks),
        URIO_TEST(test_debug_no_poll_log_without_debug),
        URIO_TEST(test_debug_strerror_names_every_code),
        cmocka_unit_test(test_debug_unclosed_loop_warned_at_exit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
