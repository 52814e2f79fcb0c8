/*
 * test_unavailable.c — io_uring refused by the kernel: urio_loop_new fails
 * with URIO_ENOURING and an ERROR line that says why and what to do; other
 * failures of io_uring_setup are reported as themselves; a ring whose
 * enabling is refused cannot run, and says so.
 *
 * Each case forks a child that installs a seccomp filter making
 * io_uring_setup (or io_uring_register) fail, as container runtimes'
 * default profiles do, then tries to make or run a loop.  The child reports
 * through its exit status.
 */
#include "helpers.h"

#include <stddef.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Installs a filter that fails io_uring_setup with errno `err`. */
static int block_io_uring_setup(int err)
{
    return test_block_syscall(__NR_io_uring_setup, err);
}

enum { CHILD_OK = 0, CHILD_NO_SECCOMP = 3, CHILD_WRONG_CODE = 4, CHILD_NO_LOG = 5,
       CHILD_LOOP_MADE = 6 };

/* In the child: block, try, check the code and the log line. */
static int child_try(int err, const char *expect1, const char *expect2)
{
    if (block_io_uring_setup(err) != 0)
        return CHILD_NO_SECCOMP;
    test_log_capture();
    urio_loop_t *loop = NULL;
    int ret = urio_loop_new(&loop, NULL);
    if (ret == 0) {
        urio_loop_close(loop);
        return CHILD_LOOP_MADE;
    }
    if (ret != URIO_ENOURING || loop != NULL)
        return CHILD_WRONG_CODE;
    if (test_log_count("ERROR io_uring is unavailable") != 1 || test_log_count(expect1) != 1 ||
        test_log_count(expect2) != 1) {
        fprintf(stderr, "log was:\n%s", test_log_text());
        return CHILD_NO_LOG;
    }
    /* Nothing leaked on the failure path. */
    return test_live_blocks() == 0 ? CHILD_OK : CHILD_WRONG_CODE;
}

static void run_child(int err, const char *expect1, const char *expect2)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        test_child_started();
        exit(child_try(err, expect1, expect2));
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == CHILD_NO_SECCOMP)
        skip();
    assert_int_equal(WEXITSTATUS(status), CHILD_OK);
}

static int setup_fails_child(void *arg)
{
    if (block_io_uring_setup(*(const int *)arg) != 0)
        return CHILD_NO_SECCOMP;
    urio_loop_t *loop = NULL;
    int ret = urio_loop_new(&loop, NULL);
    if (ret == 0)
        return CHILD_LOOP_MADE;
    return ret == -*(const int *)arg && loop == NULL && test_live_blocks() == 0 ? CHILD_OK
                                                                                : CHILD_WRONG_CODE;
}

static void test_unavailable_seccomp_enosys(void **state)
{
    (void)state;
    run_child(ENOSYS, "ENOSYS", "seccomp filter blocks it");
}

static void test_unavailable_seccomp_eperm(void **state)
{
    (void)state;
    /* Docker's default profile answers EPERM. */
    run_child(EPERM, "EPERM", "allow the system calls io_uring_setup");
}

/* Other failures of io_uring_setup are not "unavailable": the error itself, said. */
static void test_unavailable_setup_fails_otherwise(void **state)
{
    (void)state;
    const struct { int err; const char *said; } cases[] = {
        /* EINVAL for every set of flags tried, down to none. */
        { EINVAL, "ERROR urio: io_uring_setup(256 entries) failed: EINVAL (Invalid argument)" },
        { ENOMEM, "ERROR urio: io_uring_setup(256 entries) failed: ENOMEM (Cannot allocate memory)" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[4096];
        int status = test_child(setup_fails_child, (void *)&cases[i].err, out, sizeof out);
        assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) == CHILD_NO_SECCOMP)
            skip();
        if (WEXITSTATUS(status) != CHILD_OK || strstr(out, cases[i].said) == NULL)
            fail_msg("%s: status %d; the child wrote:\n%s", strerror(cases[i].err),
                     WEXITSTATUS(status), out);
    }
}

/* A ring made disabled (to bind it to its thread) whose enabling is refused: the
 * loop cannot run, and says why. */
static int enable_refused_child(void *arg)
{
    (void)arg;
    urio_loop_t *loop = NULL;
    if (urio_loop_new(&loop, NULL) != 0)
        return CHILD_LOOP_MADE;
    if (test_block_syscall(__NR_io_uring_register, EPERM) != 0)
        return CHILD_NO_SECCOMP;
    urio_call_soon(loop, test_stop_cb, loop);
    int ret = urio_loop_run_forever(loop);
    fprintf(stderr, "run: %d\n", ret);
    return ret == -EPERM ? CHILD_OK : CHILD_WRONG_CODE;
}

static void test_unavailable_enabling_the_ring_refused(void **state)
{
    (void)state;
    urio__ring_t probe;
    if (urio__ring_init(&probe, 8) != 0)
        skip();
    bool disabled = !probe.enabled;
    urio__ring_exit(&probe);
    if (!disabled)
        skip();     /* this kernel has no IORING_SETUP_R_DISABLED: nothing to enable */
    char out[4096];
    int status = test_child(enable_refused_child, NULL, out, sizeof out);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == CHILD_NO_SECCOMP)
        skip();
    if (WEXITSTATUS(status) != CHILD_OK ||
        strstr(out, "ERROR urio: io_uring: enabling the ring failed: Operation not permitted") ==
            NULL)
        fail_msg("status %d; the child wrote:\n%s", WEXITSTATUS(status), out);
}

static void test_unavailable_strerror(void **state)
{
    (void)state;
    assert_string_equal(urio_strerror_name(URIO_ENOURING), "URIO_ENOURING");
    assert_non_null(strstr(urio_strerror(URIO_ENOURING), "io_uring is unavailable"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unavailable_seccomp_enosys),
        cmocka_unit_test(test_unavailable_seccomp_eperm),
        cmocka_unit_test(test_unavailable_setup_fails_otherwise),
        cmocka_unit_test(test_unavailable_enabling_the_ring_refused),
        cmocka_unit_test(test_unavailable_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
