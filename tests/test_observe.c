/*
 * test_observe.c — looking into a running program: the stall watchdog (a
 * stuck callback reported while it is stuck, with its stack; nothing when
 * nothing is stuck), the task dump, and the loop's statistics.
 */
#include "helpers.h"

#include <dirent.h>
#include <semaphore.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Spins (a stall that no signal shortens) for ns of this thread's CPU time. */
static void __attribute__((noinline)) spin_for(uint64_t ns)
{
    uint64_t end = thread_cpu_ns() + ns;
    while (thread_cpu_ns() < end)
        ;
}

static volatile int spun;

static void __attribute__((noinline)) stuck_callback(void *arg)
{
    spin_for((uint64_t)(uintptr_t)arg);
    spun++;     /* not a tail call: the report shows this frame */
}

static void test_observe_stall_reported_while_stuck(void **state)
{
    (void)state;
    test_needs_threads();       /* the watchdog's thread, while the loop's is busy */
    urio_loop_t *loop = test_loop_new();
    assert_int_equal(urio_loop_set_stall_watchdog(loop, 50 * MS), 0);
    test_log_capture();
    urio_call_soon(loop, stuck_callback, (void *)(uintptr_t)(300 * MS));
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    /* Reported at about 50, 100 and 200 ms of CPU: while it was stuck, with where. */
    int n = test_log_count("WARNING loop stalled for ");
    if (n < 2 || n > 4)
        fail_msg("%d stall reports; the log holds:\n%s", n, test_log_text());
    assert_log_contains(", in stuck_callback");
    assert_log_contains(", in spin_for");
    assert_log_contains("test_observe.c\", line ");
    test_loop_close(loop);
}

/* The stall signal (SIGRTMAX - 7) is the program's own: the stall is still
 * reported, without a stack, saying why; a stray stall signal is harmless. */
static void programs_own(int sig)
{
    (void)sig;
}

static int stall_with_signal_taken(void *arg)
{
    (void)arg;
    signal(SIGRTMAX - 7, programs_own);
    urio_loop_t *loop;
    if (urio_loop_new(&loop, NULL) != 0)
        return 77;
    urio_loop_set_stall_watchdog(loop, 30 * MS);
    urio_call_soon(loop, stuck_callback, (void *)(uintptr_t)(150 * MS));
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    return urio_loop_close(loop) == 0 ? 0 : 1;
}

/* A loop thread that blocks the stall signal: reported, saying it may block it. */
static void blocks_stall_signal(void *arg)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMAX - 7);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    stuck_callback(arg);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);   /* (the pending one is ignored: not asked) */
}

static int stall_with_signal_blocked(void *arg)
{
    (void)arg;
    urio_loop_t *loop;
    if (urio_loop_new(&loop, NULL) != 0)
        return 77;
    urio_loop_set_stall_watchdog(loop, 30 * MS);
    urio_call_soon(loop, blocks_stall_signal, (void *)(uintptr_t)(400 * MS));
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    return urio_loop_close(loop) == 0 ? 0 : 1;
}

static int stray_stall_signal(void *arg)
{
    (void)arg;
    urio_loop_t *loop;
    if (urio_loop_new(&loop, NULL) != 0)
        return 77;
    urio_loop_set_stall_watchdog(loop, 20 * MS);
    urio_call_soon(loop, stuck_callback, (void *)(uintptr_t)(60 * MS));    /* installs the handler */
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    raise(SIGRTMAX - 7);            /* nobody asked: ignored */
    return urio_loop_close(loop) == 0 ? 0 : 1;
}

static void test_observe_stall_signal_not_ours(void **state)
{
    (void)state;
    test_needs_threads();
    char out[8192];
    int status = test_child(stall_with_signal_taken, NULL, out, sizeof out);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77)
        skip();
    char want[200];
    snprintf(want, sizeof want, "ms of CPU time (its stack could not be taken: the program "
             "handles the stall signal itself; signal %d)", SIGRTMAX - 7);
    if (WEXITSTATUS(status) != 0 || strstr(out, want) == NULL)
        fail_msg("status %d; the child wrote:\n%s", WEXITSTATUS(status), out);
    status = test_child(stray_stall_signal, NULL, out, sizeof out);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("a stray stall signal: status %#x; the child wrote:\n%s", status, out);
    status = test_child(stall_with_signal_blocked, NULL, out, sizeof out);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
        strstr(out, "the loop thread did not take the stall signal within 100 ms: does it "
                    "block it?") == NULL)
        fail_msg("a blocked stall signal: status %#x; the child wrote:\n%s", status, out);
}

static int thread_count(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Turning the watchdog off before it was ever on starts nothing; no memory for it:
 * ENOMEM, and no thread left behind. */
static void test_observe_watchdog_off_and_oom(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    int threads = thread_count();
    assert_int_equal(urio_loop_set_stall_watchdog(loop, 0), 0);
    assert_int_equal(thread_count(), threads);
    int failed_runs = 0;
    for (long n = 0; n < 10; n++) {
        urio_mem_stats_t a, b;
        urio_mem_stats(&a);
        urio__alloc_fail_after(n, false);
        int ret = urio_loop_set_stall_watchdog(loop, 50 * MS);
        urio__alloc_fail_after(-1, false);
        urio_mem_stats(&b);
        if (b.failures == a.failures) {
            assert_int_equal(ret, 0);
            break;
        }
        assert_int_equal(ret, -ENOMEM);
        assert_int_equal(thread_count(), threads);      /* its thread, if started, is gone */
        assert_int_equal(b.live, a.live);
        failed_runs++;
    }
    assert_int_equal(failed_runs, 1);   /* the watchdog itself */
    assert_int_equal(thread_count(), threads + 1);
    test_loop_close(loop);
    assert_int_equal(thread_count(), threads);
}

static void quick_cb(void *arg)
{
    int *left = arg;
    if (--*left == 0)
        urio_loop_stop(urio_loop_current());
    else
        urio_call_later(urio_loop_current(), MS, quick_cb, left);
}

static void test_observe_no_stall_no_report(void **state)
{
    (void)state;
    test_needs_threads();       /* the watchdog's thread, while the loop's is busy */
    urio_loop_t *loop = test_loop_new();
    assert_int_equal(urio_loop_set_stall_watchdog(loop, 20 * MS), 0);
    test_log_capture();
    /* 150 ms of short callbacks and sleeps in the kernel: never stuck (nor when the
     * machine is busy and the loop thread waits for a CPU: CPU time is counted). */
    int left = 100;
    urio_call_soon(loop, quick_cb, &left);
    urio_loop_run_forever(loop);
    /* Idle between runs, and closing: not stalls either. */
    usleep(50000);
    assert_int_equal(test_log_count("stalled"), 0);
    assert_int_equal(urio_loop_set_stall_watchdog(loop, 0), 0);     /* off */
    urio_call_soon(loop, stuck_callback, (void *)(uintptr_t)(60 * MS));
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_int_equal(test_log_count("stalled"), 0);
    test_loop_close(loop);
}

/* ---------------------------------------------------------------- */
/* The task dump                                                      */

static int napper(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return urio_sleep(60 * 1000 * MS);      /* a tail call: the dump says so */
}

static int waits_on(void *arg, void **res)
{
    int ret = urio_await(arg, NULL);
    *res = NULL;
    return ret;
}

static int dumps(void *arg, void **res)
{
    (void)res;
    char **text = arg;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t *a = urio_spawn(loop, napper, NULL);
    urio_future_t *b = urio_spawn(loop, waits_on, a);
    urio_yield();
    urio_yield();
    size_t len = 0;
    FILE *out = open_memstream(text, &len);
    assert_int_equal(urio_loop_dump_tasks(loop, out), 3);
    fclose(out);
    urio_future_cancel(a);
    urio_await(b, NULL);
    urio_future_unref(a);
    urio_future_unref(b);
    assert_int_equal(urio_loop_dump_tasks(NULL, stderr), -EINVAL);
    return 0;
}

static void test_observe_task_dump(void **state)
{
    (void)state;
    char *text = NULL;
    assert_int_equal(urio_run(URIO_CORO(dumps, &text), NULL, NULL), 0);
    static const char *const want[] = {
        "urio: 3 tasks on loop ",
        "<Task 'dumps' running, created at ",
        "<Task 'napper' suspended in napper() ",    /* at its line, or "(its return statement)" */
        "<Task 'waits_on' suspended in waits_on() at test_observe.c:",
        "    awaiting <Task pending 'napper' created at ",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (strstr(text, want[i]) == NULL)
            fail_msg("the dump lacks \"%s\":\n%s", want[i], text);
    free(text);
}

/* Debug mode: a suspended task's whole stack, walked from its saved registers. */
static __attribute__((noinline)) int deep_inner(void)
{
    int err = urio_sleep(URIO_SEC(60));
    __asm__ volatile("" ::: "memory");      /* no tail call: the frame stays */
    return err;
}

static __attribute__((noinline)) int deep_middle(void)
{
    int err = deep_inner();
    __asm__ volatile("" ::: "memory");
    return err + 1;
}

static int deep_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    int err = deep_middle();
    __asm__ volatile("" ::: "memory");
    return err < 0 ? err : 0;
}

static int dumps_stacks(void *arg, void **res)
{
    (void)res;
    char **text = arg;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t *a = urio_spawn(loop, deep_task, NULL);
    urio_yield();
    for (int round = 0; round < 2; round++) {   /* the unwinder's session is kept: twice */
        size_t len = 0;
        free(*text);
        FILE *out = open_memstream(text, &len);
        assert_int_equal(urio_loop_dump_tasks(loop, out), 2);
        fclose(out);
    }
    urio_future_cancel(a);
    urio_await(a, NULL);
    urio_future_unref(a);
    return 0;
}

static void test_observe_task_dump_stacks(void **state)
{
    (void)state;
    char *text = NULL;
    urio_run_opts_t opts = { .debug = 1 };
    assert_int_equal(urio_run(URIO_CORO(dumps_stacks, &text), &opts, NULL), 0);
    if (!URIO_DEBUG_CHECKS) {
        assert_null(strstr(text, "suspended at"));      /* the machinery is compiled out */
        free(text);
        return;
    }
#if !defined(__x86_64__) && !defined(__aarch64__)
    free(text);
    skip();                                             /* the ucontext fallback: no walk */
#endif
    /* In order, most recent call last: the task's function, then the two it called. */
    const char *at = strstr(text, "<Task 'deep_task' suspended in deep_inner() at test_observe.c:");
    if (at == NULL)
        fail_msg("no line for deep_task:\n%s", text);
    static const char *const want[] = {
        "    suspended at (most recent call last):",
        ", in deep_task\n",
        ", in deep_middle\n",
        ", in deep_inner\n",
        "urio_sleep(URIO_SEC(60));",
        "    created at (most recent call last):",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *next = strstr(at, want[i]);
        if (next == NULL)
            fail_msg("the dump lacks \"%s\" after the previous line:\n%s", want[i], text);
        at = next + strlen(want[i]);
    }
    free(text);
}

/* URIO_DUMP_SIGNAL: kill -USR1 makes every loop dump its tasks to stderr. */
static int signalled(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_future_t *a = urio_spawn(NULL, napper, NULL);
    urio_yield();
    kill(getpid(), SIGUSR1);
    for (int i = 0; i < 200; i++)
        urio_sleep(MS);             /* the dump comes through the loop's inbox */
    urio_future_cancel(a);
    urio_await(a, NULL);
    urio_future_unref(a);
    return 0;
}

static int dump_signal_child(void *arg)
{
    (void)arg;
    setenv("URIO_DUMP_SIGNAL", "SIGUSR1", 1);
    return urio_run(URIO_CORO(signalled, NULL), NULL, NULL) != 0;
}

static void test_observe_dump_on_signal(void **state)
{
    (void)state;
    test_needs_threads();       /* the dump's thread, while the loop waits */
#ifdef URIO_TSAN
    skip();     /* the child starts a thread after a multi-threaded fork: TSan refuses */
#endif
    char out[8192];
    int status = test_child(dump_signal_child, NULL, out, sizeof out);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (strstr(out, "<Task 'napper' suspended in napper() ") == NULL)
        fail_msg("no dump on SIGUSR1; the child wrote:\n%s", out);
}

/* What each task awaits is described: a gathering future, a coroutine run from
 * another thread's side, a task whose cancel is held off by a shield, one not
 * started yet; in debug mode each with its creation stack. */
static int gathers(void *arg, void **res)
{
    (void)res;
    return urio_gather(arg, 2, NULL, NULL);
}

static int shielded_nap(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_shield_begin();
    int ret = urio_sleep(20 * MS);          /* not cut short: the cancel waits for the shield */
    urio_shield_end();
    return ret;
}

static int dumped, counted;

static int dumps_in_detail(void *arg, void **res)
{
    (void)res;
    char **text = arg;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t *naps[2] = { urio_spawn(loop, napper, NULL), urio_spawn(loop, napper, NULL) };
    urio_future_t *gatherer = urio_spawn(loop, gathers, naps);
    urio_future_t *proxy = urio_run_coroutine_threadsafe(loop, URIO_CORO(napper, NULL));
    urio_future_t *proxy_waiter = urio_spawn(loop, waits_on, proxy);
    urio_future_t *shielded = urio_spawn(loop, shielded_nap, NULL);
    urio_yield();
    urio_yield();
    assert_true(urio_future_cancel(shielded));
    urio_future_t *fresh = urio_spawn(loop, napper, NULL);
    urio_loop_stats_t st;
    assert_int_equal(urio_loop_stats(loop, &st), 0);
    size_t len = 0;
    FILE *out = open_memstream(text, &len);
    dumped = urio_loop_dump_tasks(loop, out);
    fclose(out);
    counted = st.tasks;
    urio_future_t *all[] = { naps[0], naps[1], gatherer, proxy, proxy_waiter, shielded, fresh };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        urio_future_cancel(all[i]);
        urio_shield_begin();
        urio_await(all[i], NULL);
        urio_shield_end();
        urio_future_unref(all[i]);
    }
    return 0;
}

static void test_observe_task_dump_describes_awaits(void **state)
{
    (void)state;
    char *text = NULL;
    urio_run_opts_t debug = { .debug = 1 };
    assert_int_equal(urio_run(URIO_CORO(dumps_in_detail, &text), &debug, NULL), 0);
    /* This one, two naps, their gatherer, the proxy's task and its waiter, two more. */
    assert_int_equal(dumped, 8);
    assert_int_equal(counted, 8);       /* urio_loop_stats counts them too */
    const char *want[] = {
        "urio: 8 tasks on loop ",
        "<Task 'gathers' suspended in gathers() ",     /* at its line, or its return statement */
        "    awaiting <Future pending (gathering 2, 2 left)>",
        "    awaiting <Future pending (run_coroutine_threadsafe)>",
        "<Task 'shielded_nap' suspended in shielded_nap() at test_observe.c:",
        ", cancelling (1)>",
        "<Task 'napper' not started, created at ",
        URIO_DEBUG_CHECKS ? "    created at (most recent call last):" : "urio: ",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (strstr(text, want[i]) == NULL)
            fail_msg("the dump lacks \"%s\":\n%s", want[i], text);
    free(text);
}

/* URIO_DUMP_SIGNAL's other spellings, and the values it refuses (each read once per
 * process: in a child each). */
static int dump_signal_named(void *arg)
{
    setenv("URIO_DUMP_SIGNAL", arg, 1);
    return urio_run(URIO_CORO(signalled, NULL), NULL, NULL) != 0;
}

static volatile sig_atomic_t usr1_seen;

static void on_usr1(int sig)
{
    (void)sig;
    usr1_seen = 1;
}

static int one_step(void *arg, void **res)
{
    (void)arg;
    (void)res;
    return urio_yield();
}

/* A value that is refused: said at WARNING at the first task; the signal stays the program's. */
static int dump_signal_refused(void *arg)
{
    signal(SIGUSR1, on_usr1);
    setenv("URIO_DUMP_SIGNAL", arg, 1);
    if (urio_run(URIO_CORO(one_step, NULL), NULL, NULL) != 0)
        return 1;
    kill(getpid(), SIGUSR1);
    return usr1_seen ? 0 : 2;
}

static void test_observe_dump_signal_spellings(void **state)
{
    (void)state;
    test_needs_threads();       /* the dump's thread, while the loop waits */
#ifdef URIO_TSAN
    skip();     /* the child starts a thread after a multi-threaded fork: TSan refuses */
#endif
    char out[8192];
    char number[16];
    snprintf(number, sizeof number, "%d", SIGUSR1);
    const char *spellings[] = { "USR1", number };
    for (size_t i = 0; i < 2; i++) {
        int status = test_child(dump_signal_named, (void *)spellings[i], out, sizeof out);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        if (strstr(out, "<Task 'napper' suspended in napper() ") == NULL)
            fail_msg("URIO_DUMP_SIGNAL=%s: no dump on SIGUSR1; the child wrote:\n%s",
                     spellings[i], out);
    }
    const struct { const char *value, *said; } refused[] = {
        { "SIGNOPE", "WARNING urio: URIO_DUMP_SIGNAL=SIGNOPE is not understood (use SIGUSR1, " },
        { "0", "WARNING urio: URIO_DUMP_SIGNAL=0 is not understood" },
        { "10x", "WARNING urio: URIO_DUMP_SIGNAL=10x is not understood" },
        { "SIGUSR1", "WARNING urio: URIO_DUMP_SIGNAL=SIGUSR1: the program handles that signal "
                     "already; no task dump on it" },
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        int status = test_child(dump_signal_refused, (void *)refused[i].value, out, sizeof out);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail_msg("URIO_DUMP_SIGNAL=%s: the program's own SIGUSR1 handler did not run "
                     "(status %#x); the child wrote:\n%s", refused[i].value, status, out);
        if (strstr(out, refused[i].said) == NULL)
            fail_msg("URIO_DUMP_SIGNAL=%s: no \"%s\"; the child wrote:\n%s", refused[i].value,
                     refused[i].said, out);
    }
}

/* A child forked after the dump was set up has its own: SIGUSR1 dumps the child's tasks. */
static int forks_then_dumps(void *arg)
{
    (void)arg;
    setenv("URIO_DUMP_SIGNAL", "SIGUSR1", 1);
    if (urio_run(URIO_CORO(one_step, NULL), NULL, NULL) != 0)      /* set up in this process */
        return 1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        test_child_started();
        exit(urio_run(URIO_CORO(signalled, NULL), NULL, NULL) != 0);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
        return 2;
    return WEXITSTATUS(status);
}

static void test_observe_dump_signal_after_fork(void **state)
{
    (void)state;
    test_needs_threads();       /* the dump's thread, while the loop waits */
#ifdef URIO_TSAN
    skip();     /* the child starts a thread after a multi-threaded fork: TSan refuses */
#endif
    char out[8192];
    int status = test_child(forks_then_dumps, NULL, out, sizeof out);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) != 0 || strstr(out, "<Task 'napper' suspended in napper() ") == NULL)
        fail_msg("no dump in the forked child (status %d); it wrote:\n%s", WEXITSTATUS(status),
                 out);
}

/* ---------------------------------------------------------------- */
/* Statistics                                                         */

static void after_sleep(void *arg)
{
    (void)arg;
    urio_loop_stop(urio_loop_current());
}

/* Each callback reads the histogram: it holds every earlier callback once. */
typedef struct hist_probe {
    urio_loop_t *loop;
    int n, seen[8];
} hist_probe_t;

static uint64_t hist_sum(urio_loop_t *loop)
{
    urio_loop_stats_t st;
    assert_int_equal(urio_loop_stats(loop, &st), 0);
    uint64_t sum = 0;
    for (int k = 0; k < URIO_STATS_BUCKETS; k++)
        sum += st.callback_hist[k];
    return sum;
}

static void hist_reader(void *arg)
{
    hist_probe_t *p = arg;
    p->seen[p->n++] = (int)hist_sum(p->loop);
    assert_int_equal(hist_sum(p->loop), p->seen[p->n - 1]);    /* a read adds nothing */
    if (p->n == 3 || p->n == 6)
        urio_call_soon(p->loop, hist_reader, p);   /* the next turn: across steps too */
    if (p->n == 7)
        urio_loop_stop(p->loop);
}

static void test_observe_stats_callback_hist_exact(void **state)
{
    (void)state;
    urio_loop_opts_t on = { .debug = 1 };
    hist_probe_t p = { .loop = test_loop_new_opts(&on) };
    for (int i = 0; i < 5; i++)
        urio_call_soon(p.loop, hist_reader, &p);    /* one step of five, then two more */
    urio_loop_run_forever(p.loop);
    assert_int_equal(p.n, 7);
    if (URIO_DEBUG_CHECKS) {
        for (int i = 0; i < 7; i++)
            assert_int_equal(p.seen[i], i);
        assert_int_equal(hist_sum(p.loop), 7);
        urio_loop_set_debug(p.loop, false);     /* off: what was counted stays */
        assert_int_equal(hist_sum(p.loop), 7);
    }
    test_loop_close(p.loop);
}

static void test_observe_stats(void **state)
{
    (void)state;
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&on);
    urio_loop_stats_t st;
    assert_int_equal(urio_loop_stats(loop, &st), 0);
    assert_int_equal(st.turns, 0);
    for (int i = 0; i < 10; i++)
        urio_call_soon(loop, stuck_callback, (void *)(uintptr_t)(100 * US));
    urio_call_later(loop, 20 * MS, after_sleep, NULL);
    urio_loop_run_forever(loop);
    assert_int_equal(urio_loop_stats(loop, &st), 0);
    assert_true(st.turns >= 2);
    assert_int_equal(st.callbacks, 11);
    assert_int_equal(st.timers_fired, 1);
    assert_true(st.enters >= 1);
    assert_true(st.idle_ns >= 10 * MS);             /* it slept for the timer */
    assert_true(st.busy_ns >= 1 * MS);              /* ten callbacks of 0.1 ms */
    uint64_t lag = 0, cbs = 0;
    for (int k = 0; k < URIO_STATS_BUCKETS; k++) {
        lag += st.lag_hist[k];
        cbs += st.callback_hist[k];
    }
    assert_int_equal(lag, 1);                       /* one wake-up for a timer */
    if (URIO_DEBUG_CHECKS) {
        assert_int_equal(cbs, 11);                  /* debug mode times each callback */
        /* Each spun at least 0.1 ms: bucket 16 (2^16 ns = 65.5 us) or above,
         * however long the machine kept it off the CPU meanwhile. */
        uint64_t from65us = 0;
        for (int k = 16; k < URIO_STATS_BUCKETS; k++)
            from65us += st.callback_hist[k];
        assert_true(from65us >= 10);                 /* (valgrind: the 11th too) */
    }
    assert_int_equal(st.tasks, 0);
    assert_int_equal(urio_loop_stats(loop, NULL), -EINVAL);
    test_loop_close(loop);
}

/*
 * The counters of work in progress: tasks not finished, ops in the ring.
 * A task of urio_run reads them with three more tasks waiting on a future
 * and a read waiting on an empty pipe, then again once all of it is done.
 */
struct progress {
    urio_loop_stats_t start, busy, end;
    urio_future_t *gate;
    int p[2];
};

static int waits_on_gate(void *arg, void **result)
{
    return urio_await(((struct progress *)arg)->gate, result);
}

static int counts_work(void *arg, void **result)
{
    (void)result;
    struct progress *pr = arg;
    urio_loop_t *loop = urio_loop_current();
    urio_loop_stats(loop, &pr->start);
    pr->gate = test_future_new(loop);
    urio_future_t *waiters[3];
    for (int i = 0; i < 3; i++)
        waiters[i] = urio_spawn(loop, waits_on_gate, pr);
    char b[4];
    urio_future_t *rd = urio_read_submit(loop, pr->p[0], b, sizeof b, -1, 0);
    if (rd == NULL)
        return -errno;
    urio_yield();       /* the waiters start, and block */
    urio_loop_stats(loop, &pr->busy);
    urio_future_set_result(pr->gate, NULL);
    if (write(pr->p[1], "x", 1) != 1)
        return -EIO;
    urio_await(rd, NULL);
    int n = urio_io_result(rd);
    for (int i = 0; i < 3; i++) {
        urio_await(waiters[i], NULL);
        urio_future_unref(waiters[i]);
    }
    urio_future_unref(rd);
    urio_future_unref(pr->gate);
    urio_loop_stats(loop, &pr->end);
    return n == 1 ? 0 : -EIO;
}

static void test_observe_stats_tasks_and_ops(void **state)
{
    (void)state;
    struct progress pr = { 0 };
    assert_int_equal(pipe(pr.p), 0);
    int ret = urio_run(URIO_CORO(counts_work, &pr), NULL, NULL);
    if (ret == URIO_ENOURING)
        skip();
    assert_int_equal(ret, 0);
    close(pr.p[0]);
    close(pr.p[1]);
    assert_int_equal(pr.start.tasks, 1);            /* the main task */
    assert_int_equal(pr.busy.tasks, 4);             /* and the three waiting */
    assert_int_equal(pr.end.tasks, 1);
    assert_int_equal(pr.busy.ops_in_flight, pr.start.ops_in_flight + 1);   /* the read */
    assert_int_equal(pr.end.ops_in_flight, pr.start.ops_in_flight);
    assert_int_equal(pr.busy.jobs, 0);
}

/* Executor jobs out: one blocked in a pool thread counts until it returns. */
struct jobs_seen {
    sem_t release;
    urio_loop_stats_t busy, end;
};

static void *blocked_job(void *arg)
{
    struct jobs_seen *js = arg;
    while (sem_wait(&js->release) != 0)
        ;
    return arg;
}

static int counts_jobs(void *arg, void **result)
{
    struct jobs_seen *js = arg;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t *a = urio_run_in_executor(loop, NULL, blocked_job, js);
    urio_future_t *b = urio_run_in_executor(loop, NULL, blocked_job, js);
    if (a == NULL || b == NULL)
        return -errno;
    urio_loop_stats(loop, &js->busy);
    sem_post(&js->release);
    sem_post(&js->release);
    int ret = urio_await(a, result);
    if (ret == 0)
        ret = urio_await(b, result);
    urio_future_unref(a);
    urio_future_unref(b);
    urio_loop_stats(loop, &js->end);
    return ret;
}

static void test_observe_stats_jobs(void **state)
{
    (void)state;
    test_needs_threads();       /* the pool's threads, while the loop waits */
    struct jobs_seen js;
    sem_init(&js.release, 0, 0);
    int ret = urio_run(URIO_CORO(counts_jobs, &js), NULL, NULL);
    sem_destroy(&js.release);
    if (ret == URIO_ENOURING)
        skip();
    assert_int_equal(ret, 0);
    assert_int_equal(js.busy.jobs, 2);
    assert_int_equal(js.end.jobs, 0);
}

/*
 * Slow callbacks: counted (and reported) in debug mode only, each callback
 * that took the slow-callback duration or more.  The slow one spins 100 ms
 * of CPU time against a 50 ms duration; the quick one would have to be held
 * off the CPU for 50 ms to count.
 */
static void noop_cb(void *arg)
{
    (void)arg;
}

static void test_observe_stats_slow_callbacks(void **state)
{
    (void)state;
    urio_loop_opts_t on = { .debug = 1 };
    urio_loop_t *loop = test_loop_new_opts(&on);
    urio_loop_set_slow_callback_duration(loop, 50 * MS);
    test_log_capture();
    urio_call_soon(loop, noop_cb, NULL);
    urio_call_soon(loop, stuck_callback, (void *)(uintptr_t)(100 * MS));
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    urio_loop_stats_t st;
    assert_int_equal(urio_loop_stats(loop, &st), 0);
    if (URIO_DEBUG_CHECKS) {
        assert_int_equal(st.slow_callbacks, 1);
        assert_int_equal(test_log_count("WARNING Executing <Handle stuck_callback"), 1);
    } else {
        assert_int_equal(st.slow_callbacks, 0);    /* the machinery is compiled out */
    }
    /* Out of debug mode, nothing is timed: the count stays. */
    urio_loop_set_debug(loop, false);
    urio_call_soon(loop, stuck_callback, (void *)(uintptr_t)(100 * MS));
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_int_equal(urio_loop_stats(loop, &st), 0);
    assert_int_equal(st.slow_callbacks, URIO_DEBUG_CHECKS ? 1 : 0);
    test_loop_close(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_observe_stall_reported_while_stuck),
        URIO_TEST(test_observe_no_stall_no_report),
        URIO_TEST(test_observe_stall_signal_not_ours),
        URIO_TEST(test_observe_watchdog_off_and_oom),
        URIO_TEST(test_observe_task_dump),
        URIO_TEST(test_observe_task_dump_stacks),
        URIO_TEST(test_observe_dump_on_signal),
        URIO_TEST(test_observe_task_dump_describes_awaits),
        URIO_TEST(test_observe_dump_signal_spellings),
        URIO_TEST(test_observe_dump_signal_after_fork),
        URIO_TEST(test_observe_stats),
        URIO_TEST(test_observe_stats_callback_hist_exact),
        URIO_TEST(test_observe_stats_tasks_and_ops),
        URIO_TEST(test_observe_stats_jobs),
        URIO_TEST(test_observe_stats_slow_callbacks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
