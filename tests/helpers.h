/*
 * tests/helpers.h — what every urio test needs: a loop that skips the test
 * when io_uring is unavailable, a log capture, and the leak check that
 * closes every test ("nothing left alive").
 */
#ifndef URIO_TEST_HELPERS_H
#define URIO_TEST_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <cmocka.h>

#include "loop.h"   /* lib/: the loop's and the core's internals (tests only) */

#define MS 1000000ull
#define SEC (1000 * MS)
#define US 1000ull

/* ---------------------------------------------------------------- */
/* Log capture: every message, with its level, in one growing buffer. */

struct test_log {
    pthread_mutex_t mu;
    char *text;          /* "LEVEL message\n" per message */
    size_t len, cap;
    int count;
};

static struct test_log test_log_ = { .mu = PTHREAD_MUTEX_INITIALIZER };

static inline void test_log_handler(int level, const char *msg, void *ud)
{
    (void)ud;
    pthread_mutex_lock(&test_log_.mu);
    size_t need = strlen(msg) + 32;
    if (test_log_.len + need >= test_log_.cap) {
        size_t cap = (test_log_.cap + need) * 2;
        char *t = realloc(test_log_.text, cap);
        if (t == NULL) {
            pthread_mutex_unlock(&test_log_.mu);
            return;
        }
        test_log_.text = t;
        test_log_.cap = cap;
    }
    test_log_.len += (size_t)snprintf(test_log_.text + test_log_.len,
                                      test_log_.cap - test_log_.len, "%s %s\n",
                                      urio_log_level_name(level), msg);
    test_log_.count++;
    pthread_mutex_unlock(&test_log_.mu);
}

/* Starts capturing (and clears what was captured). */
static inline void test_log_capture(void)
{
    pthread_mutex_lock(&test_log_.mu);
    test_log_.len = 0;
    test_log_.count = 0;
    if (test_log_.text)
        test_log_.text[0] = '\0';
    pthread_mutex_unlock(&test_log_.mu);
    urio_log_set_handler(test_log_handler, NULL);
}

static inline void test_log_release(void)
{
    urio_log_set_handler(NULL, NULL);
}

/* How many times `needle` occurs in the captured text. */
static inline int test_log_count(const char *needle)
{
    int n = 0;
    pthread_mutex_lock(&test_log_.mu);
    for (const char *p = test_log_.text; p && (p = strstr(p, needle)) != NULL; p++)
        n++;
    pthread_mutex_unlock(&test_log_.mu);
    return n;
}

static inline const char *test_log_text(void)
{
    return test_log_.text ? test_log_.text : "";
}

#define assert_log_contains(needle)                                                     \
    do {                                                                                \
        if (test_log_count(needle) == 0)                                                \
            fail_msg("log lacks \"%s\"; it holds:\n%s", (needle), test_log_text());     \
    } while (0)

/* ---------------------------------------------------------------- */
/* Loops and leaks                                                   */

/* A new loop; the whole test program is skipped (exit 77) without io_uring. */
static inline urio_loop_t *test_loop_new_opts(const urio_loop_opts_t *opts)
{
    urio_loop_t *loop = NULL;
    int err = urio_loop_new(&loop, opts);
    if (err == URIO_ENOURING) {
        fprintf(stderr, "io_uring unavailable here: skipping\n");
        exit(77);
    }
    assert_int_equal(err, 0);
    assert_non_null(loop);
    return loop;
}

static inline urio_loop_t *test_loop_new(void)
{
    return test_loop_new_opts(NULL);
}

/* Blocks urio allocated and did not free: checked at the end of every test. */
static inline uint64_t test_live_blocks(void)
{
    urio_mem_stats_t st;
    urio_mem_stats(&st);
    return st.live;
}

/* cmocka setup/teardown that check each test frees all it allocated. */
static inline int test_setup_leaks(void **state)
{
    uint64_t *live = malloc(sizeof *live);
    *live = test_live_blocks();
    *state = live;
    return 0;
}

static inline int test_teardown_leaks(void **state)
{
    uint64_t *live = *state;
    uint64_t now = test_live_blocks();
    urio__alloc_fail_after(-1, false);
    test_log_release();
    if (now != *live) {
        fprintf(stderr, "leak: %llu urio blocks alive after the test (%llu before)\n",
                (unsigned long long)now, (unsigned long long)*live);
        free(live);
        return -1;
    }
    free(live);
    return 0;
}

/*
 * Under valgrind (the `valgrind` suite: tests/meson.build).  True where
 * valgrind's client request says so (its header is installed with it) or
 * URIO_TEST_VALGRIND is set (the suite sets it too).
 */
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define TEST_RUNNING_ON_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#endif
#endif
#ifndef TEST_RUNNING_ON_VALGRIND
#define TEST_RUNNING_ON_VALGRIND() false
#endif

static inline bool test_under_valgrind(void)
{
    const char *v = getenv("URIO_TEST_VALGRIND");
    return TEST_RUNNING_ON_VALGRIND() || (v != NULL && *v != '\0' && strcmp(v, "0") != 0);
}

/*
 * What valgrind cannot run; such a case starts with one of these, and is
 * skipped there:
 * - test_needs_threads(): a second thread must run while a loop waits in
 *   io_uring_enter.  valgrind runs one thread at a time and does not hand
 *   over while a thread sits in that call: the case would hang.
 * - test_needs_exec_self(): it runs /proc/self/exe again (a pool's
 *   workers, a fresh process to read the environment): under valgrind that
 *   is valgrind itself.
 * - test_needs_fork_with_rings(): it forks while loops are open, and the
 *   child makes a ring of its own; valgrind's address-space manager fails
 *   an assertion mapping it (the parent's rings are MADV_DONTFORK holes).
 * - test_needs_full_speed(): a scale test (100,000 tasks) that takes
 *   minutes there, over code the other cases run too.
 */
#define test_needs_threads()                                                            \
    do {                                                                                \
        if (test_under_valgrind())                                                      \
            skip();                                                                     \
    } while (0)

#define test_needs_exec_self()                                                          \
    do {                                                                                \
        if (test_under_valgrind())                                                      \
            skip();                                                                     \
    } while (0)

#define test_needs_fork_with_rings()                                                    \
    do {                                                                                \
        if (test_under_valgrind())                                                      \
            skip();                                                                     \
    } while (0)

#define test_needs_full_speed()                                                         \
    do {                                                                                \
        if (test_under_valgrind())                                                      \
            skip();                                                                     \
    } while (0)

/*
 * In a forked child that runs a scenario and ends (test_child): under
 * valgrind, no leak check at its end.  Such a child leaves on purpose what
 * its scenario made (an unclosed loop, a crash); its other errors are still
 * reported, and the program itself is leak-checked as always.
 */
static inline void test_child_started(void)
{
#ifdef VALGRIND_CLO_CHANGE
    if (TEST_RUNNING_ON_VALGRIND())
        VALGRIND_CLO_CHANGE("--leak-check=no");
#endif
}

/* A test case with the leak check around it. */
#define URIO_TEST(fn) cmocka_unit_test_setup_teardown(fn, test_setup_leaks, test_teardown_leaks)

/* A new future of loop that must succeed (the test's own, one reference). */
static inline urio_future_t *test_future_new(urio_loop_t *loop)
{
    urio_future_t *f = NULL;
    assert_int_equal(urio_future_new(&f, loop), 0);
    assert_non_null(f);
    return f;
}

/* Closes the loop and asserts it closed. */
static inline void test_loop_close(urio_loop_t *loop)
{
    assert_int_equal(urio_loop_close(loop), 0);
}

/* Stops the loop from a callback (arg: the loop). */
static inline void test_stop_cb(void *arg)
{
    urio_loop_stop((urio_loop_t *)arg);
}

/*
 * Runs child(arg) in a forked process with its stderr captured into buf
 * (NUL-terminated, at most n - 1 bytes); the child's return value is its
 * exit status.  A child still running after a minute (deadlocked: a lock
 * held at the fork) dies of SIGALRM.  Returns the wait status (WIFEXITED,
 * WIFSIGNALED...).
 */
#include <semaphore.h>
#include <sys/wait.h>
#include <unistd.h>

#define TEST_CHILD_SECONDS 60

static inline int test_child(int (*child)(void *), void *arg, char *buf, size_t n)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);       /* the child's exit() must not write what the parent buffered */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        test_child_started();
        alarm(TEST_CHILD_SECONDS);
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO);
        urio_log_set_handler(NULL, NULL);   /* the default handler: to stderr */
        exit(child(arg));
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t r;
    while (len < n - 1 && (r = read(fds[0], buf + len, n - 1 - len)) > 0)
        len += (size_t)r;
    buf[len] = '\0';
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

/*
 * Installs a seccomp filter that fails system call `nr` with errno `err` in
 * this process (for good: call it in a child, test_child).  As container
 * runtimes' default profiles do, or as an older kernel without the call
 * answers (ENOSYS).  Returns: 0, or -1 where seccomp is unavailable.
 */
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#if defined(__x86_64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

static inline int test_block_syscall(unsigned nr, int err)
{
#ifdef TEST_AUDIT_ARCH
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TEST_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = sizeof filter / sizeof filter[0], .filter = filter };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
#else
    (void)nr;
    (void)err;
    return -1;
#endif
}

/*
 * A thread that holds a lock until released: another thread of the parent
 * in the middle of an update, at the moment of a fork.
 */
struct test_holder {
    pthread_mutex_t *mu;
    pthread_t th;
    sem_t held, release;
};

static inline void *test_holder_main(void *arg)
{
    struct test_holder *h = arg;
    pthread_mutex_lock(h->mu);
    sem_post(&h->held);
    while (sem_wait(&h->release) != 0)
        ;
    pthread_mutex_unlock(h->mu);
    return NULL;
}

/* Returns once a new thread holds mu. */
static inline void test_hold(struct test_holder *h, pthread_mutex_t *mu)
{
    h->mu = mu;
    sem_init(&h->held, 0, 0);
    sem_init(&h->release, 0, 0);
    assert_int_equal(pthread_create(&h->th, NULL, test_holder_main, h), 0);
    while (sem_wait(&h->held) != 0)
        ;
}

/* The thread lets go of the lock and ends. */
static inline void test_release(struct test_holder *h)
{
    sem_post(&h->release);
    pthread_join(h->th, NULL);
    sem_destroy(&h->held);
    sem_destroy(&h->release);
}

/* urio's process-wide lock called name (lib/fork.c), or NULL if this build has none. */
static inline pthread_mutex_t *test_fork_lock(const char *name)
{
    const char *n;
    pthread_mutex_t *mu;
    for (unsigned i = 0; (mu = urio__test_fork_lock(i, &n)) != NULL; i++)
        if (strcmp(n, name) == 0)
            return mu;
    return NULL;
}

#endif
