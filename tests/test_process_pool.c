/*
 * test_process_pool.c — the process pool: results small and large (shared
 * memory), errors, unknown names, workers dying every way at every moment
 * (take, run, send: CPython's test_deadlock matrix), timeouts, running out
 * of memory, replacement within a second, 10,000 jobs under random kills,
 * shutdown (wait, no wait, cancel_futures, from another thread), the loop
 * closing while busy, limits, recycling, a malformed frame, the fork
 * server, tasks, workers dying with the program (SIGKILLed); children of
 * fork() (not the parent's fork server; each of urio's process-wide locks
 * held by another thread at the fork, and the child does all docs/loop.md
 * says it may).  After every test: no urio block, no child process (live
 * or zombie) and no fd left.
 */
#include "helpers.h"
#include "process.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(URIO_ASAN) || defined(URIO_TSAN) || defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

/* ------------------------------------------------------------------ */
/* The functions workers run                                            */

static int fn_echo(urio_process_call_t *call, const void *in, size_t len)
{
    void *out = urio_process_output(call, len);
    if (out == NULL)
        return urio_process_fail(call, -errno, "no output buffer");
    memcpy(out, in, len);
    return 0;
}
URIO_PROCESS_FN("echo", fn_echo);

static int fn_fail(urio_process_call_t *call, const void *in, size_t len)
{
    (void)in;
    return urio_process_fail(call, -EIO, "bad input of %zu bytes", len);
}
URIO_PROCESS_FN("fail", fn_fail);

/* Dies now: in[0] is how (URIO__PT_*). */
static int fn_die(urio_process_call_t *call, const void *in, size_t len)
{
    (void)call;
    (void)len;
    urio__process_test_die_now(((const uint8_t *)in)[0]);
    return 0;
}
URIO_PROCESS_FN("die", fn_die);

/* Arms a death: in[0] the moment (take: the next job; send: this job's result), in[1] how. */
static int fn_arm(urio_process_call_t *call, const void *in, size_t len)
{
    (void)len;
    const uint8_t *b = in;
    urio__process_test_die(b[0], b[1]);
    char *out = urio_process_output(call, 1000);
    if (out == NULL)
        return -ENOMEM;
    memset(out, 'a', 1000);
    return 0;
}
URIO_PROCESS_FN("arm", fn_arm);

static int fn_sleep(urio_process_call_t *call, const void *in, size_t len)
{
    (void)call;
    uint32_t ms = 0;
    memcpy(&ms, in, len < sizeof ms ? len : sizeof ms);
    usleep(ms * 1000u);
    return 0;
}
URIO_PROCESS_FN("sleep", fn_sleep);

/* Says "napping <pid>" on stderr, then sleeps a minute, not reading its channel. */
static int fn_nap(urio_process_call_t *call, const void *in, size_t len)
{
    (void)call;
    (void)in;
    (void)len;
    char line[32];
    int n = snprintf(line, sizeof line, "napping %d\n", (int)getpid());
    if (write(STDERR_FILENO, line, (size_t)n) != n)
        return -EIO;
    for (int i = 0; i < 600; i++)
        usleep(100 * 1000);
    return 0;
}
URIO_PROCESS_FN("nap", fn_nap);

/* Its pid, and the fds it has open from 3 up (there should be only 3: its channel). */
static int fn_self(urio_process_call_t *call, const void *in, size_t len)
{
    (void)in;
    (void)len;
    int32_t *out = urio_process_output(call, 64 * sizeof(int32_t));
    if (out == NULL)
        return -ENOMEM;
    int n = 0;
    out[n++] = (int32_t)getpid();
    out[n++] = (int32_t)getppid();
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int self = dirfd(d);
    while ((e = readdir(d)) != NULL && n < 64)
        if (e->d_name[0] != '.' && atoi(e->d_name) >= 3 && atoi(e->d_name) != self)
            out[n++] = atoi(e->d_name);
    closedir(d);
    for (int i = n; i < 64; i++)
        out[i] = -1;
    return 0;
}
URIO_PROCESS_FN("self", fn_self);

/* Leaks 4 MiB (touched) per job; answers how much this worker leaked so far. */
static int fn_leak(urio_process_call_t *call, const void *in, size_t len)
{
    (void)in;
    (void)len;
    static uint64_t leaked;
    char *p = malloc(4u << 20);
    if (p == NULL)
        return -ENOMEM;
    memset(p, 1, 4u << 20);
    leaked += 4u << 20;
    uint64_t *out = urio_process_output(call, sizeof leaked);
    if (out == NULL)
        return -ENOMEM;
    *out = leaked;
    return 0;
}
URIO_PROCESS_FN("leak", fn_leak);

/* Runs out of address space the way careless code does: no NULL check. */
static int fn_oom(urio_process_call_t *call, const void *in, size_t len)
{
    (void)call;
    (void)in;
    (void)len;
    size_t n = 1u << 30;
    char *volatile p = malloc(n);
    memset(p, 1, n);
    return p[n / 2];
}
URIO_PROCESS_FN("oom", fn_oom);

/* Writes garbage into its own channel before its result: a malformed frame. */
static int fn_garble(urio_process_call_t *call, const void *in, size_t len)
{
    (void)call;
    (void)in;
    (void)len;
    char junk[64];
    memset(junk, 0x5a, sizeof junk);
    ssize_t r = write(URIO__PROCESS_CHANNEL_FD, junk, sizeof junk);
    (void)r;
    return 0;
}
URIO_PROCESS_FN("garble", fn_garble);

/* Asks for more output than the pool's payload limit. */
static int fn_big(urio_process_call_t *call, const void *in, size_t len)
{
    uint32_t n = 0;
    memcpy(&n, in, len < sizeof n ? len : sizeof n);
    char *out = urio_process_output(call, n);
    if (out == NULL)
        return urio_process_fail(call, -errno, "output of %u bytes refused", n);
    for (uint32_t i = 0; i < n; i++)
        out[i] = (char)(i * 7);
    return 0;
}
URIO_PROCESS_FN("big", fn_big);

/*
 * Sends a frame of its own making into its channel, in place of its job's
 * result (a buggy or hostile worker), then waits to be killed.  in: a
 * struct forged; the job must be its worker's first (sequence number 1).
 */
enum { FD_NONE, FD_UNSEALED, FD_SMALL };
struct forged {
    uint8_t type, flags;
    uint32_t seq;
    uint64_t payload_len;
    int fd_kind;
};

static int fn_forge(urio_process_call_t *call, const void *in, size_t len)
{
    (void)call;
    struct forged fg;
    memcpy(&fg, in, len < sizeof fg ? len : sizeof fg);
    urio__pf_header_t h;
    urio__pf_header_init(&h, fg.type, fg.flags, fg.seq, 0, 0, fg.payload_len);
    struct iovec iov = { &h, sizeof h };
    _Alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (fg.fd_kind != FD_NONE) {
        void *map;
        int fd = urio__pf_shm_create(fg.fd_kind == FD_SMALL ? 4096 : fg.payload_len, &map);
        if (fd < 0)
            return fd;
        munmap(map, fg.fd_kind == FD_SMALL ? 4096 : fg.payload_len);
        if (fg.fd_kind == FD_SMALL)
            urio__pf_shm_seal(fd);
        memset(ctl, 0, sizeof ctl);
        mh.msg_control = ctl;
        mh.msg_controllen = sizeof ctl;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    if (sendmsg(URIO__PROCESS_CHANNEL_FD, &mh, MSG_NOSIGNAL) != (ssize_t)sizeof h)
        return -EIO;
    sleep(30);                  /* the parent kills this worker long before */
    return 0;
}
URIO_PROCESS_FN("forge", fn_forge);

/* The calls a function makes, at their edges; in[0] is which (see test_process_pool_call_edges). */
static int fn_edge(urio_process_call_t *call, const void *in, size_t len)
{
    (void)len;
    char *out;
    switch (((const uint8_t *)in)[0]) {
    case 0:
        errno = 0;
        if (urio_process_output(NULL, 1) != NULL || errno != EINVAL)
            return urio_process_fail(call, -EPROTO, "output(NULL) was not refused");
        if (urio_process_fail(NULL, -EIO, "nobody") != -EIO)
            return urio_process_fail(call, -EPROTO, "fail(NULL) changed the error");
        if (urio_process_fail(call, EIO, NULL) != -EINVAL)
            return urio_process_fail(call, -EPROTO, "a positive error was taken");
        /* A large output (a memfd of its own), then a small one: the first is let go. */
        if (urio_process_output(call, 200000) == NULL)
            return urio_process_fail(call, -errno, "large output");
        out = urio_process_output(call, 7);
        if (out == NULL)
            return urio_process_fail(call, -errno, "small output");
        memcpy(out, "edge-ok", 7);
        return 0;
    case 1:                     /* a positive return is success */
        out = urio_process_output(call, 3);
        if (out == NULL)
            return -ENOMEM;
        memcpy(out, "pos", 3);
        return 7;
    case 2:                     /* fails with another error than its message's */
        urio_process_fail(call, -EIO, "an I/O message");
        return -EPIPE;
    case 3:                     /* no memory for the output */
        urio__alloc_fail_after(0, false);
        out = urio_process_output(call, 10);
        urio__alloc_fail_after(-1, false);
        return out ? 0 : urio_process_fail(call, -errno, "no output buffer");
    case 4: {                   /* a large output's memfd cannot be sized (RLIMIT_FSIZE) */
        struct rlimit rl, small;
        getrlimit(RLIMIT_FSIZE, &rl);
        small = (struct rlimit){ 4096, rl.rlim_max };
        signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &small);
        out = urio_process_output(call, 200000);
        int err = errno;
        setrlimit(RLIMIT_FSIZE, &rl);
        return out ? 0 : urio_process_fail(call, -err, "memfd not sized");
    }
    default: {                  /* no fd for a large output's memfd */
        struct rlimit rl, low;
        getrlimit(RLIMIT_NOFILE, &rl);
        low = (struct rlimit){ 3, rl.rlim_max };
        setrlimit(RLIMIT_NOFILE, &low);
        out = urio_process_output(call, 200000);
        int err = errno;
        setrlimit(RLIMIT_NOFILE, &rl);
        return out ? 0 : urio_process_fail(call, -err, "no memfd");
    }
    }
}
URIO_PROCESS_FN("edge", fn_edge);

/*
 * A worker image that fails before it is ready (a missing library, a crash in
 * a static initialiser): with URIO_TEST_WORKER_EXIT=N in the environment a
 * worker of this program exits with status N before urio's constructor runs.
 */
__attribute__((constructor(101))) static void worker_fails_early(void)
{
    const char *v = getenv("URIO_TEST_WORKER_EXIT");
    if (v != NULL && getenv(URIO__PROCESS_ENV) != NULL)
        _exit(atoi(v));
}

/* ------------------------------------------------------------------ */
/* Children, zombies and fds                                            */

/* Children of this process, live or zombie, from /proc/self/task/ * /children. */
static int child_count(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[300];
        snprintf(path, sizeof path, "/proc/self/task/%s/children", e->d_name);
        FILE *f = fopen(path, "re");
        if (f == NULL)
            continue;
        int pid;
        while (fscanf(f, "%d", &pid) == 1)
            n++;
        fclose(f);
    }
    if (d)
        closedir(d);
    return n;
}

static bool has_zombie(void)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    return waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid != 0;
}

static int fd_count(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;       /* the directory's own */
}

static int base_children, base_fds;

static int setup(void **state)
{
    base_children = child_count();
    base_fds = fd_count();
    return test_setup_leaks(state);
}

/* Nothing left: no child, no zombie, no fd (children may take a moment to be listed gone). */
static int teardown(void **state)
{
    int children = child_count();
    for (int i = 0; i < 200 && children != base_children; i++) {
        usleep(5000);
        children = child_count();
    }
    int ret = test_teardown_leaks(state);
    if (children != base_children) {
        fprintf(stderr, "left: %d child processes (%d before)\n", children, base_children);
        ret = -1;
    }
    if (has_zombie()) {
        fprintf(stderr, "left: a zombie child\n");
        ret = -1;
    }
    if (fd_count() != base_fds) {
        fprintf(stderr, "left: %d fds (%d before)\n", fd_count(), base_fds);
        ret = -1;
    }
    return ret;
}

#define PP_TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

/* ------------------------------------------------------------------ */
/* Running jobs                                                         */

static urio_executor_t *pool_new(const urio_process_pool_opts_t *o)
{
    urio_executor_t *ex = NULL;
    assert_int_equal(urio_process_pool_new(&ex, o), 0);
    assert_non_null(ex);
    return ex;
}

static urio_future_t *submit(urio_loop_t *loop, urio_executor_t *ex, const char *fn,
                             const void *in, size_t len)
{
    urio_future_t *f = urio_process_pool_submit(loop, ex, fn, in, len);
    if (f == NULL)
        fail_msg("submit %s: %s", fn, strerror(errno));
    return f;
}

static void timeout_cb(void *arg)
{
    *(bool *)arg = true;
    urio_loop_stop(urio_loop_current());
}

/* Runs the loop until every future is done; fails the test after `secs`. */
static void run_all(urio_loop_t *loop, urio_future_t **f, size_t n, int secs)
{
    /* Else every run is refused at once (-EBUSY), and the timer below never fires. */
    if (urio_loop_current() != NULL)
        fail_msg("a loop still counts as running on this thread: an earlier test failed "
                 "inside one of its callbacks");
    bool timed_out = false;
    urio_handle_t h = urio_call_later(loop, (uint64_t)secs * 1000 * MS, timeout_cb, &timed_out);
    for (size_t i = 0; i < n; i++) {
        while (!urio_future_done(f[i]) && !timed_out)
            urio_loop_run_until_complete(loop, f[i]);
    }
    urio_handle_cancel(loop, h);
    if (timed_out)
        fail_msg("jobs still pending after %d s", secs);
}

static void expect_echo(urio_future_t *f, const void *data, size_t len)
{
    void *v = NULL;
    int err = urio_future_result(f, &v);
    if (err != 0)
        fail_msg("echo failed: %s: %s", urio_strerror(err), urio_future_error_message(f));
    const urio_bytes_t *b = v;
    assert_int_equal(b->len, len);
    if (len)
        assert_memory_equal(b->data, data, len);
}

/* ------------------------------------------------------------------ */
/* Results                                                              */

static void test_process_pool_echo_small_and_large(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 2 });
    static const size_t sizes[] = { 0, 1, 100, URIO__PF_SHM_MIN - 1, URIO__PF_SHM_MIN,
                                    1u << 20, 3u << 20 };
    enum { N = sizeof sizes / sizeof sizes[0] };
    char *in[N];
    urio_future_t *f[N];
    for (size_t i = 0; i < N; i++) {
        in[i] = malloc(sizes[i] + 1);
        for (size_t k = 0; k < sizes[i]; k++)
            in[i][k] = (char)(k * 31 + i);
        f[i] = submit(loop, ex, "echo", in[i], sizes[i]);
    }
    run_all(loop, f, N, 30);
    for (size_t i = 0; i < N; i++) {
        expect_echo(f[i], in[i], sizes[i]);
        urio_future_unref(f[i]);
        free(in[i]);
    }
    /* Outputs from 64 KiB up that the offered buffer cannot hold: the worker's own memfd. */
    uint32_t sizes_out[2] = { 200000, 2u << 20 };
    urio_future_t *g[3] = { submit(loop, ex, "big", &sizes_out[0], 4),
                            submit(loop, ex, "big", &sizes_out[1], 4), NULL };
    char *small_in = calloc(1, 70000);
    memcpy(small_in, &sizes_out[1], 4);
    g[2] = submit(loop, ex, "big", small_in, 70000);     /* offered 70000 bytes, gives 2 MiB */
    run_all(loop, g, 3, 30);
    for (int i = 0; i < 3; i++) {
        void *v = NULL;
        assert_int_equal(urio_future_result(g[i], &v), 0);
        const urio_bytes_t *b = v;
        assert_int_equal(b->len, sizes_out[i ? 1 : 0]);
        const char *d = b->data;
        for (uint32_t k = 0; k < b->len; k += 4093)
            assert_int_equal(d[k], (char)(k * 7));
        urio_future_unref(g[i]);
    }
    free(small_in);
    urio_process_pool_stats_t st;
    assert_int_equal(urio_process_pool_stats(ex, &st, NULL, 0), 2);
    assert_int_equal(st.jobs_done, N + 3);
    assert_int_equal(st.died, 0);
    urio_executor_free(ex);
    test_loop_close(loop);
}

static void test_process_pool_error_with_message(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    urio_future_t *f[2] = { submit(loop, ex, "fail", "abc", 3),
                            submit(loop, ex, "no such function", NULL, 0) };
    run_all(loop, f, 2, 30);
    assert_int_equal(urio_future_result(f[0], NULL), -EIO);
    assert_string_equal(urio_future_error_message(f[0]), "bad input of 3 bytes");
    assert_int_equal(urio_future_result(f[1], NULL), -ENOENT);
    assert_string_equal(urio_future_error_message(f[1]), "no function named 'no such function' "
                        "is registered in this program (URIO_PROCESS_FN)");
    urio_future_unref(f[0]);
    urio_future_unref(f[1]);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* The worker is another process, keeps only its channel, and knows its parent. */
static void test_process_pool_worker_isolation(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    /* An fd of ours without close-on-exec must not reach the worker. */
    int leaky = open("/dev/null", O_RDONLY);
    assert_true(leaky >= 0);
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    urio_future_t *f = submit(loop, ex, "self", NULL, 0);
    run_all(loop, &f, 1, 30);
    void *v = NULL;
    assert_int_equal(urio_future_result(f, &v), 0);
    const int32_t *out = ((const urio_bytes_t *)v)->data;
    assert_int_not_equal(out[0], getpid());
    assert_int_equal(out[1], getpid());
    assert_int_equal(out[2], URIO__PROCESS_CHANNEL_FD);
    assert_int_equal(out[3], -1);       /* nothing else */
    pid_t pids[1];
    urio_process_pool_stats_t st;
    assert_int_equal(urio_process_pool_stats(ex, &st, pids, 1), 1);
    assert_int_equal(pids[0], out[0]);
    urio_future_unref(f);
    urio_executor_free(ex);
    close(leaky);
    test_loop_close(loop);
}

/* ------------------------------------------------------------------ */
/* Deaths: every way, at every moment                                   */

static const char *death_text(int how)
{
    switch (how) {
    case URIO__PT_SEGV: return "killed by signal SIGSEGV";
    case URIO__PT_KILL: return "killed by signal SIGKILL";
    case URIO__PT_ABORT: return "killed by signal SIGABRT";
    case URIO__PT_EXIT3: return "exited with status 3";
    default: return "ran past its timeout";
    }
}

static void expect_death(urio_future_t *f, int how, pid_t pid)
{
    int err = urio_future_result(f, NULL);
    const char *msg = urio_future_error_message(f);
    int want = how == URIO__PT_HANG ? -ETIMEDOUT : URIO_EBROKENWORKER;
    if (err != want || msg == NULL || strstr(msg, death_text(how)) == NULL)
        fail_msg("want %s with \"%s\"; got %s: %s", urio_strerror_name(want), death_text(how),
                 urio_strerror_name(err), msg ? msg : "(no message)");
    char pidtext[32];
    snprintf(pidtext, sizeof pidtext, "pid %d", (int)pid);
    if (strstr(msg, pidtext) == NULL)
        fail_msg("the message does not name the worker's %s: %s", pidtext, msg);
}

static pid_t the_worker(urio_loop_t *loop, urio_executor_t *ex)
{
    /* Wait for the one worker to be ready (a previous one may be being replaced). */
    urio_process_pool_stats_t st;
    pid_t pid = 0;
    for (int i = 0; i < 3000; i++) {
        if (urio_process_pool_stats(ex, &st, &pid, 1) == 1 && st.ready == 1)
            return pid;
        urio_call_later(loop, MS, test_stop_cb, loop);
        urio_loop_run_forever(loop);
    }
    fail_msg("the worker never got ready");
    return 0;
}

/*
 * CPython's test_deadlock matrix: a worker dies (SIGSEGV, SIGKILL, abort,
 * _exit(3)) or hangs past the timeout, as it takes a job, while it runs it,
 * and while it sends the result.  Only the job it held fails, naming the
 * pid and the cause; the jobs queued behind it all complete.
 */
static void test_process_pool_death_matrix(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){
        .workers = 1, .job_timeout_ns = 300 * MS });
    static const int hows[] = { URIO__PT_SEGV, URIO__PT_KILL, URIO__PT_ABORT, URIO__PT_EXIT3,
                                URIO__PT_HANG };
    static const char *const moments[] = { "take", "run", "send" };
    urio_future_t *warm = submit(loop, ex, "echo", "w", 1);
    run_all(loop, &warm, 1, 30);
    urio_future_unref(warm);
    uint64_t died0 = 0;
    for (size_t h = 0; h < sizeof hows / sizeof hows[0]; h++) {
        for (int m = 0; m < 3; m++) {
            int how = hows[h];
            pid_t pid = the_worker(loop, ex);      /* the previous one's replacement */
            urio_future_t *f[6];
            int n = 0, victim;
            if (m == 0) {           /* take: the job after the arming one */
                uint8_t arm[2] = { URIO__PT_TAKE, (uint8_t)how };
                f[n++] = submit(loop, ex, "arm", arm, 2);
                victim = n;
                f[n++] = submit(loop, ex, "echo", "victim", 6);
            } else if (m == 1) {    /* run */
                uint8_t b = (uint8_t)how;
                victim = n;
                f[n++] = submit(loop, ex, "die", &b, 1);
            } else {                /* send: the arming job's own result */
                uint8_t arm[2] = { URIO__PT_SEND, (uint8_t)how };
                victim = n;
                f[n++] = submit(loop, ex, "arm", arm, 2);
            }
            for (int k = 0; k < 3; k++)
                f[n++] = submit(loop, ex, "echo", "after", 5);
            run_all(loop, f, (size_t)n, 30);
            for (int k = 0; k < n; k++) {
                if (k == victim) {
                    expect_death(f[k], how, pid);
                } else if (m == 0 && k == 0) {
                    assert_int_equal(urio_future_result(f[k], NULL), 0);
                } else {
                    void *v = NULL;
                    int err = urio_future_result(f[k], &v);
                    if (err != 0)
                        fail_msg("%s at %s: a bystander failed: %s", death_text(how),
                                 moments[m], urio_future_error_message(f[k]));
                }
                urio_future_unref(f[k]);
            }
            urio_process_pool_stats_t st;
            urio_process_pool_stats(ex, &st, NULL, 0);
            assert_int_equal(st.died, died0 + 1);
            died0 = st.died;
        }
    }
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* Running out of address space (RLIMIT_AS) kills the worker, not the parent. */
static void test_process_pool_out_of_memory(void **state)
{
    (void)state;
    if (SANITIZED) {
        skip();     /* sanitizers reserve terabytes of shadow address space */
    }
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){
        .workers = 1, .worker_memory = 256u << 20 });
    urio_future_t *f[2] = { submit(loop, ex, "oom", NULL, 0), submit(loop, ex, "echo", "x", 1) };
    run_all(loop, f, 2, 30);
    assert_int_equal(urio_future_result(f[0], NULL), URIO_EBROKENWORKER);
    assert_non_null(strstr(urio_future_error_message(f[0]), "SIGSEGV"));
    expect_echo(f[1], "x", 1);
    urio_future_unref(f[0]);
    urio_future_unref(f[1]);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* A worker killed from outside is replaced: the pool is whole again within a second. */
static void test_process_pool_replaced_within_a_second(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 2 });
    urio_future_t *f = submit(loop, ex, "echo", "x", 1);
    run_all(loop, &f, 1, 30);
    urio_future_unref(f);
    pid_t pids[2];
    urio_process_pool_stats_t st;
    for (int i = 0; i < 3000; i++) {
        if (urio_process_pool_stats(ex, &st, pids, 2) == 2 && st.ready == 2)
            break;
        urio_call_later(loop, MS, test_stop_cb, loop);
        urio_loop_run_forever(loop);
    }
    assert_int_equal(st.ready, 2);
    uint64_t t0 = urio__now();
    kill(pids[0], SIGKILL);
    pid_t now[2] = { 0, 0 };
    for (;;) {
        urio_call_later(loop, MS, test_stop_cb, loop);
        urio_loop_run_forever(loop);
        if (urio_process_pool_stats(ex, &st, now, 2) == 2 && st.ready == 2 &&
            now[0] != pids[0] && now[1] != pids[0])
            break;
        if (urio__now() - t0 > 1000 * MS)
            fail_msg("the pool is not whole 1 s after a worker died");
    }
    assert_int_equal(st.spawned, 3);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* ------------------------------------------------------------------ */
/* 10,000 jobs with random worker kills: every future resolves once     */

enum { MANY = 10000 };

typedef struct many {
    urio_loop_t *loop;
    urio_executor_t *ex;
    uint8_t done[MANY];
    int ndone, nfailed, kills, forced;
    int force_at;       /* ndone at which a kill is forced (see many_done) */
    uint64_t seed;
    bool finished;
} many_t;

static many_t *many;

/* SIGKILLs a random live worker, if one is ready.  Returns: true if it sent the signal. */
static bool kill_one(many_t *m)
{
    pid_t pids[8];
    urio_process_pool_stats_t st;
    int n = urio_process_pool_stats(m->ex, &st, pids, 8);
    if (n > 0 && st.ready > 0) {
        m->seed = m->seed * 6364136223846793005ull + 1442695040888963407ull;
        pid_t victim = pids[(m->seed >> 33) % (uint64_t)n];
        if (getenv("PP_DEBUG"))
            fprintf(stderr, "kill %d (ready %u of %d)\n", (int)victim, st.ready, n);
        assert_int_equal(kill(victim, SIGKILL), 0);
        m->kills++;
        return true;
    }
    return false;
}

/*
 * arg: the job's index.  Each future's callback must run exactly once.
 * Besides the timer's kills (which a fast machine may finish the jobs
 * before), a kill is forced at the first result and at every quarter of
 * the jobs (retried at each result until a worker is ready): four at least.
 */
static void many_done(urio_future_t *f, void *arg)
{
    many_t *m = many;
    uint32_t i = (uint32_t)(uintptr_t)arg;
    assert_true(i < MANY);
    m->done[i]++;
    void *v = NULL;
    int err = urio_future_result(f, &v);
    if (err == 0) {
        const urio_bytes_t *b = v;
        uint32_t got;
        assert_int_equal(b->len, sizeof got);
        memcpy(&got, b->data, sizeof got);
        assert_int_equal(got, i);
    } else {
        if (err != URIO_EBROKENWORKER || strstr(urio_future_error_message(f), "SIGKILL") == NULL)
            fail_msg("job %u: %s: %s", i, urio_strerror_name(err), urio_future_error_message(f));
        m->nfailed++;
        if (getenv("PP_DEBUG"))
            fprintf(stderr, "failed: %s\n", urio_future_error_message(f));
    }
    if (++m->ndone == MANY) {
        m->finished = true;
        urio_loop_stop(m->loop);
    } else if (m->ndone >= m->force_at && kill_one(m)) {
        m->forced++;
        m->force_at += MANY / 4;
    }
}

static void many_kill(void *arg)
{
    many_t *m = arg;
    if (m->finished)
        return;
    kill_one(m);
    urio_call_later(m->loop, 3 * MS, many_kill, m);
}

static void test_process_pool_random_kills(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    many_t *m = calloc(1, sizeof *m);
    many = m;
    m->loop = loop;
    m->seed = 42;
    m->force_at = 1;
    m->ex = pool_new(&(urio_process_pool_opts_t){ .workers = 3 });
    urio_future_t **fs = calloc(MANY, sizeof *fs);
    for (uint32_t i = 0; i < MANY; i++) {
        fs[i] = submit(loop, m->ex, "echo", &i, sizeof i);
        assert_int_equal(urio_future_add_done_callback(fs[i], many_done, (void *)(uintptr_t)i), 0);
    }
    urio_call_later(loop, 3 * MS, many_kill, m);
    bool timed_out = false;
    urio_handle_t h = urio_call_later(loop, 60000 * MS, timeout_cb, &timed_out);
    urio_loop_run_forever(loop);
    urio_handle_cancel(loop, h);
    assert_false(timed_out);
    assert_int_equal(m->ndone, MANY);
    /* Workers were really killed, and replaced. */
    assert_int_equal(m->forced, 4);
    assert_true(m->kills >= m->forced);
    urio_process_pool_stats_t st;
    assert_true(urio_process_pool_stats(m->ex, &st, NULL, 0) >= 0);
    assert_true(st.spawned > 3);
    /* Each kill fails at most the one job its worker held. */
    assert_true(m->nfailed <= m->kills);
    for (int i = 0; i < MANY; i++)
        assert_int_equal(m->done[i], 1);
    for (uint32_t i = 0; i < MANY; i++)
        urio_future_unref(fs[i]);
    print_message("10000 jobs, %d kills (%d forced), %d jobs failed, %llu workers started\n",
                  m->kills, m->forced, m->nfailed, (unsigned long long)st.spawned);
    urio_executor_free(m->ex);
    test_loop_close(loop);
    free(fs);
    free(m);
}

/* ------------------------------------------------------------------ */
/* Shutdown and close                                                   */

typedef struct sd {
    urio_executor_t *ex;
    bool wait, cancel;
    atomic_int ret;
    uint64_t took;
} sd_t;

static void shutdown_cb(void *arg)
{
    sd_t *s = arg;
    uint64_t t0 = urio__now();
    s->ret = urio_executor_shutdown(s->ex, s->wait, s->cancel);
    s->took = urio__now() - t0;
}

static urio_future_t **submit_sleeps(urio_loop_t *loop, urio_executor_t *ex, int n, uint32_t ms)
{
    urio_future_t **f = calloc((size_t)n, sizeof *f);
    for (int i = 0; i < n; i++)
        f[i] = submit(loop, ex, "sleep", &ms, sizeof ms);
    return f;
}

/* wait=true from a callback: every job, running or queued, has finished when it returns. */
static void test_process_pool_shutdown_wait(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    enum { N = 20 };        /* more than one worker's pipeline: some wait in the pool */
    urio_future_t **f = submit_sleeps(loop, ex, N, 5);
    sd_t s = { ex, true, false, -1, 0 };
    urio_call_soon(loop, shutdown_cb, &s);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_int_equal(s.ret, 0);
    for (int i = 0; i < N; i++) {
        assert_true(urio_future_done(f[i]));
        assert_int_equal(urio_future_result(f[i], NULL), 0);
        urio_future_unref(f[i]);
    }
    urio_process_pool_stats_t st;
    assert_int_equal(urio_process_pool_stats(ex, &st, NULL, 0), 0);
    assert_null(urio_process_pool_submit(loop, ex, "echo", "x", 1));
    assert_int_equal(errno, ESHUTDOWN);
    urio_executor_free(ex);
    free(f);
    test_loop_close(loop);
}

/* cancel_futures: jobs no worker holds yet are cancelled; the ones held run. */
static void test_process_pool_shutdown_cancel_futures(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    enum { N = 24 };
    urio_future_t **f = submit_sleeps(loop, ex, N, 2);
    urio_loop_run_until_complete(loop, f[0]);   /* the worker holds a pipeline now */
    sd_t s = { ex, true, true, -1, 0 };
    urio_call_soon(loop, shutdown_cb, &s);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    int ok = 0, cancelled = 0;
    for (int i = 0; i < N; i++) {
        assert_true(urio_future_done(f[i]));
        int err = urio_future_result(f[i], NULL);
        if (err == 0) {
            assert_int_equal(cancelled, 0);     /* cancelled ones are the last submitted */
            ok++;
        } else {
            assert_int_equal(err, -ECANCELED);
            cancelled++;
        }
        urio_future_unref(f[i]);
    }
    assert_true(ok >= 1);
    assert_true(cancelled >= 1);
    urio_executor_free(ex);
    free(f);
    test_loop_close(loop);
}

/* wait=false returns at once; the jobs go on as the loop runs. */
static void test_process_pool_shutdown_no_wait(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 2 });
    enum { N = 6 };
    urio_future_t **f = submit_sleeps(loop, ex, N, 100);
    sd_t s = { ex, false, false, -1, 0 };
    urio_call_soon(loop, shutdown_cb, &s);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_int_equal(s.ret, 0);
    assert_true(s.took < 50 * MS);
    assert_false(urio_future_done(f[N - 1]));
    run_all(loop, f, N, 30);
    for (int i = 0; i < N; i++) {
        assert_int_equal(urio_future_result(f[i], NULL), 0);
        urio_future_unref(f[i]);
    }
    urio_executor_free(ex);
    free(f);
    test_loop_close(loop);
}

/* Another thread shuts the pool down while the loop runs, and waits. */
static void *shutdown_thread(void *arg)
{
    sd_t *s = arg;
    shutdown_cb(s);
    return NULL;
}

static void test_process_pool_shutdown_from_thread(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 2 });
    enum { N = 4 };
    urio_future_t **f = submit_sleeps(loop, ex, N, 20);
    sd_t s = { ex, true, false, -1, 0 };
    pthread_t t;
    pthread_create(&t, NULL, shutdown_thread, &s);
    run_all(loop, f, N, 30);
    /* The pool stops once its workers exit: run the loop until the thread is back. */
    while (atomic_load(&s.ret) != 0) {
        urio_call_later(loop, MS, test_stop_cb, loop);
        urio_loop_run_forever(loop);
    }
    pthread_join(t, NULL);
    for (int i = 0; i < N; i++) {
        assert_int_equal(urio_future_result(f[i], NULL), 0);
        urio_future_unref(f[i]);
    }
    urio_executor_free(ex);
    free(f);
    test_loop_close(loop);
}

/* The loop closes while jobs run and wait: all cancelled, workers killed and reaped, fast. */
static void test_process_pool_loop_close_while_busy(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 2 });
    enum { N = 40 };
    urio_future_t **f = submit_sleeps(loop, ex, N, 10000);
    urio_call_later(loop, 100 * MS, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    uint64_t t0 = urio__now();
    test_loop_close(loop);
    assert_true(urio__now() - t0 < 2000 * MS);
    for (int i = 0; i < N; i++) {
        assert_true(urio_future_cancelled(f[i]));
        urio_future_unref(f[i]);
    }
    urio_executor_free(ex);
    free(f);
}

/* ------------------------------------------------------------------ */
/* Limits, recycling, protocol                                          */

static void test_process_pool_payload_limit(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1,
                                                                 .max_payload = 1000 });
    char buf[1001] = { 0 };
    assert_null(urio_process_pool_submit(loop, ex, "echo", buf, sizeof buf));
    assert_int_equal(errno, EMSGSIZE);
    uint32_t n = 1001, ok = 1000;
    urio_future_t *f[2] = { submit(loop, ex, "big", &n, sizeof n),
                            submit(loop, ex, "big", &ok, sizeof ok) };
    run_all(loop, f, 2, 30);
    assert_int_equal(urio_future_result(f[0], NULL), -EMSGSIZE);
    assert_string_equal(urio_future_error_message(f[0]), "output of 1001 bytes refused");
    void *v = NULL;
    assert_int_equal(urio_future_result(f[1], &v), 0);
    assert_int_equal(((const urio_bytes_t *)v)->len, 1000);
    urio_future_unref(f[0]);
    urio_future_unref(f[1]);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* A leaking function: recycling after 5 jobs bounds what a worker holds. */
static void test_process_pool_recycling_bounds_leak(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 2,
                                                                 .max_jobs_per_worker = 5 });
    enum { N = 30 };
    urio_future_t *f[N];
    for (int i = 0; i < N; i++)
        f[i] = submit(loop, ex, "leak", NULL, 0);
    run_all(loop, f, N, 60);
    uint64_t most = 0;
    for (int i = 0; i < N; i++) {
        void *v = NULL;
        assert_int_equal(urio_future_result(f[i], &v), 0);
        uint64_t leaked;
        memcpy(&leaked, ((const urio_bytes_t *)v)->data, sizeof leaked);
        most = leaked > most ? leaked : most;
        urio_future_unref(f[i]);
    }
    assert_true(most <= 5 * (4u << 20));
    urio_process_pool_stats_t st;
    urio_process_pool_stats(ex, &st, NULL, 0);
    assert_true(st.recycled >= N / 5 - 2);
    assert_int_equal(st.died, 0);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* A worker that writes garbage into its channel is killed; the parent carries on. */
static void test_process_pool_malformed_frame(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    test_log_capture();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    urio_future_t *f[2] = { submit(loop, ex, "garble", NULL, 0), submit(loop, ex, "echo", "y", 1) };
    run_all(loop, f, 2, 30);
    assert_int_equal(urio_future_result(f[0], NULL), URIO_EBROKENWORKER);
    assert_non_null(strstr(urio_future_error_message(f[0]), "bad magic"));
    expect_echo(f[1], "y", 1);
    urio_future_unref(f[0]);
    urio_future_unref(f[1]);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/*
 * The decoder trusts nothing: each field out of its range or place is
 * refused with its reason; a frame cut short is "need more" (0).
 */
static void test_process_pool_decoder_refuses_each_field(void **state)
{
    (void)state;
    const unsigned any = (1u << URIO__PF_CONFIG) | (1u << URIO__PF_READY) |
                         (1u << URIO__PF_JOB) | (1u << URIO__PF_RESULT);
    struct {
        uint8_t type, flags;
        uint32_t seq;
        int32_t err;
        uint16_t text_len;
        uint64_t payload_len;
        void (*tweak)(urio__pf_header_t *h);
        unsigned accept;
        const char *why;
    } cases[] = {
        { URIO__PF_CONFIG, 0, 1, 0, 0, 16, NULL, 1u << URIO__PF_JOB, "unexpected frame type" },
        { URIO__PF_JOB, 0x80, 1, 0, 4, 0, NULL, any, "unknown flags" },
        { URIO__PF_RESULT, URIO__PF_OUTBUF, 1, 0, 0, 0, NULL, any, "flags out of place" },
        { URIO__PF_RESULT, URIO__PF_INOFFER, 1, 0, 0, 0, NULL, any, "flags out of place" },
        { URIO__PF_CONFIG, 0, 1, 0, 0, 16, NULL, any, NULL },   /* valid */
        { URIO__PF_JOB, 0, 1, 0, 4, 8, NULL, any, NULL },       /* valid */
        { URIO__PF_JOB, URIO__PF_SHM, 1, 0, 4, 100, NULL, any,
          "payload in the wrong place for its size" },
        { URIO__PF_JOB, 0, 1, 0, 4, 200, NULL, any, "payload over the limit" },
        { URIO__PF_CONFIG, 0, 2, 0, 0, 16, NULL, any, "bad CONFIG frame" },
        { URIO__PF_CONFIG, 0, 1, 0, 0, 8, NULL, any, "bad CONFIG frame" },
        { URIO__PF_READY, 0, 1, -5, 0, 8, NULL, any, "bad READY frame" },
        { URIO__PF_JOB, 0, 1, -5, 4, 0, NULL, any, "a job with an error" },
        { URIO__PF_JOB, 0, 1, 0, 0, 0, NULL, any, "function name length out of range" },
        { URIO__PF_JOB, 0, 1, 0, 300, 0, NULL, any, "function name length out of range" },
        { URIO__PF_RESULT, 0, 1, -5000, 0, 0, NULL, any, "result error out of range" },
        { URIO__PF_RESULT, 0, 1, 5, 0, 0, NULL, any, "result error out of range" },
        { URIO__PF_RESULT, 0, 1, URIO_EBROKENWORKER, 0, 0, NULL, any, NULL },  /* urio's own */
        { URIO__PF_RESULT, 0, 1, 0, 3, 0, NULL, any, "a message without an error" },
        { URIO__PF_RESULT, 0, 1, -5, 0, 4, NULL, any, "an error with a payload" },
        { URIO__PF_RESULT, 0, 1, -5, 2000, 0, NULL, any, "message length out of range" },
    };
    char buf[4096];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        urio__pf_header_t h;
        urio__pf_header_init(&h, cases[i].type, cases[i].flags, cases[i].seq, cases[i].err,
                             cases[i].text_len, cases[i].payload_len);
        memset(buf, 'x', sizeof buf);
        memcpy(buf, &h, sizeof h);
        urio__pf_frame_t f;
        const char *why = NULL;
        ssize_t n = urio__pf_decode(buf, sizeof buf, cases[i].accept, 100, &f, &why);
        if (cases[i].why == NULL) {
            if (n != (ssize_t)h.len)
                fail_msg("case %zu: a valid frame decoded to %zd (%s)", i, n, why ? why : "");
        } else if (n != -EPROTO || why == NULL || strcmp(why, cases[i].why) != 0) {
            fail_msg("case %zu: %zd (%s), expected -EPROTO (%s)", i, n, why ? why : "-",
                     cases[i].why);
        }
    }
    /* Fields that the constructor never gets wrong: set by hand. */
    urio__pf_header_t h;
    urio__pf_frame_t f;
    const char *why = NULL;
    urio__pf_header_init(&h, URIO__PF_JOB, 0, 1, 0, 4, 0);
    h.reserved = 1;
    memcpy(buf, &h, sizeof h);
    assert_int_equal(urio__pf_decode(buf, sizeof buf, any, 100, &f, &why), -EPROTO);
    assert_string_equal(why, "reserved field not zero");
    urio__pf_header_init(&h, URIO__PF_JOB, 0, 1, 0, 4, 0);
    h.len = 8;
    memcpy(buf, &h, sizeof h);
    assert_int_equal(urio__pf_decode(buf, sizeof buf, any, 100, &f, &why), -EPROTO);
    assert_string_equal(why, "frame length out of range");
    urio__pf_header_init(&h, URIO__PF_JOB, 0, 1, 0, 4, 0);
    h.len += 1;
    memcpy(buf, &h, sizeof h);
    assert_int_equal(urio__pf_decode(buf, sizeof buf, any, 100, &f, &why), -EPROTO);
    assert_string_equal(why, "frame length disagrees with its fields");
    /* READY's pid: 0, or beyond any pid. */
    urio__pf_header_init(&h, URIO__PF_READY, 0, 1, 0, 0, sizeof(urio__pf_ready_t));
    memcpy(buf, &h, sizeof h);
    urio__pf_ready_t r = { .pid = 0 };
    memcpy(buf + sizeof h, &r, sizeof r);
    assert_int_equal(urio__pf_decode(buf, sizeof buf, any, 100, &f, &why), -EPROTO);
    assert_string_equal(why, "bad pid in READY");
    r.pid = 0x80000000u;
    memcpy(buf + sizeof h, &r, sizeof r);
    assert_int_equal(urio__pf_decode(buf, sizeof buf, any, 100, &f, &why), -EPROTO);
    r.pid = 42;
    memcpy(buf + sizeof h, &r, sizeof r);
    assert_int_equal(urio__pf_decode(buf, sizeof buf, any, 100, &f, &why), (ssize_t)h.len);
    /* Cut short: a header's worth, or the frame's: need more. */
    assert_int_equal(urio__pf_decode(buf, sizeof h - 1, any, 100, &f, &why), 0);
    assert_int_equal(urio__pf_decode(buf, h.len - 1, any, 100, &f, &why), 0);
}

/*
 * A worker whose result breaks the protocol is killed and its job fails with
 * URIO_EBROKENWORKER saying why; in particular a memfd the parent would map
 * must be sealed and as large as the frame says (or reading it could fault).
 */
static void test_process_pool_forged_results_refused(void **state)
{
    (void)state;
    test_log_capture();
    const struct {
        struct forged fg;
        const char *why;
    } cases[] = {
        { { URIO__PF_RESULT, URIO__PF_SHM, 1, URIO__PF_SHM_MIN, FD_UNSEALED },
          "payload memfd not sealed against shrinking" },
        { { URIO__PF_RESULT, URIO__PF_SHM, 1, URIO__PF_SHM_MIN, FD_SMALL },
          "payload memfd smaller than its frame says" },
        { { URIO__PF_RESULT, URIO__PF_SHM, 1, URIO__PF_SHM_MIN, FD_NONE },
          "a shared-memory result without its memfd" },
        { { URIO__PF_RESULT, URIO__PF_SHM | URIO__PF_INOFFER, 1, URIO__PF_SHM_MIN, FD_NONE },
          "a result in a buffer it was not offered" },
        { { URIO__PF_RESULT, 0, 7, 0, FD_NONE }, "a result for no job it held" },
        { { URIO__PF_READY, 0, 1, sizeof(urio__pf_ready_t), FD_NONE }, "unexpected frame type" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        urio_loop_t *loop = test_loop_new();
        urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
        urio_future_t *f[2] = { submit(loop, ex, "forge", &cases[i].fg, sizeof cases[i].fg) };
        run_all(loop, f, 1, 30);
        f[1] = submit(loop, ex, "echo", "z", 1);
        run_all(loop, &f[1], 1, 30);
        if (urio_future_result(f[0], NULL) != URIO_EBROKENWORKER ||
            strstr(urio_future_error_message(f[0]), cases[i].why) == NULL)
            fail_msg("case %zu: %s: %s (expected EBROKENWORKER: %s)", i,
                     urio_strerror_name(urio_future_result(f[0], NULL)),
                     urio_future_error_message(f[0]), cases[i].why);
        expect_echo(f[1], "z", 1);      /* a new worker took the next job */
        urio_future_unref(f[0]);
        urio_future_unref(f[1]);
        urio_executor_free(ex);
        test_loop_close(loop);
    }
}

/*
 * The worker's side: it trusts its parent no more than the parent trusts it.
 * A worker runs in a child on a socketpair whose other end holds frames
 * written in advance; it must exit with the protocol status (70) naming
 * what was wrong, or 0 when the parent closes the channel, or 71 when its
 * parent is not the one it was started for.
 */
struct worker_script {
    int fd;                     /* the worker's end */
    pid_t parent;               /* 0: the real parent */
};

static int worker_child(void *arg)
{
    struct worker_script *ws = arg;
    if (ws->fd != URIO__PROCESS_CHANNEL_FD) {
        dup2(ws->fd, URIO__PROCESS_CHANNEL_FD);
        close(ws->fd);
    }
    urio__process_worker_run(URIO__PROCESS_CHANNEL_FD, ws->parent ? ws->parent : getppid());
}

/* Appends a frame (header, text, payload) to the parent's end; fd: sent with it, or -1. */
static void script_frame(int sock, uint8_t type, uint8_t flags, uint32_t seq, const char *text,
                         const void *payload, uint64_t payload_len, int fd)
{
    urio__pf_header_t h;
    size_t tlen = text ? strlen(text) : 0;
    urio__pf_header_init(&h, type, flags, seq, 0, (uint16_t)tlen, payload_len);
    struct iovec iov[3] = { { &h, sizeof h }, { (void *)text, tlen },
                            { (void *)payload, (flags & URIO__PF_SHM) ? 0 : payload_len } };
    _Alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 3 };
    if (fd >= 0) {
        memset(ctl, 0, sizeof ctl);
        mh.msg_control = ctl;
        mh.msg_controllen = sizeof ctl;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    assert_true(sendmsg(sock, &mh, MSG_NOSIGNAL) > 0);
}

static void script_config(int sock, uint64_t max_payload)
{
    urio__pf_config_t cfg = { .max_payload = max_payload };
    script_frame(sock, URIO__PF_CONFIG, 0, URIO__PF_VERSION, NULL, &cfg, sizeof cfg, -1);
}

enum { WS_OK, WS_BAD_MAGIC, WS_BAD_LIMIT, WS_OUT_OF_ORDER, WS_SHM_NO_FD, WS_SHM_UNSEALED,
       WS_OFFER_UNSEALED, WS_ORPHAN, WS_SCRIPTS };

/* Runs the worker on script `which`; returns its wait status, its stderr in out. */
static int run_worker_script(int which, char *out, size_t n)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct worker_script ws = { .fd = sv[1] };
    void *map;
    int memfd = -1;
    switch (which) {
    case WS_OK:              /* a job, then the channel closed: exit 0 */
        script_config(sv[0], 1 << 20);
        script_frame(sv[0], URIO__PF_JOB, 0, 1, "echo", "hi", 2, -1);
        break;
    case WS_BAD_MAGIC: {
        char junk[64];
        memset(junk, 0x5a, sizeof junk);
        assert_int_equal(write(sv[0], junk, sizeof junk), (ssize_t)sizeof junk);
        break;
    }
    case WS_BAD_LIMIT:
        script_config(sv[0], 0);
        break;
    case WS_OUT_OF_ORDER:
        script_config(sv[0], 1 << 20);
        script_frame(sv[0], URIO__PF_JOB, 0, 5, "echo", "hi", 2, -1);
        break;
    case WS_SHM_NO_FD:
        script_config(sv[0], 1 << 20);
        script_frame(sv[0], URIO__PF_JOB, URIO__PF_SHM, 1, "echo", NULL, URIO__PF_SHM_MIN, -1);
        break;
    case WS_SHM_UNSEALED:
    case WS_OFFER_UNSEALED:
        script_config(sv[0], 1 << 20);
        memfd = urio__pf_shm_create(URIO__PF_SHM_MIN, &map);
        assert_true(memfd >= 0);
        munmap(map, URIO__PF_SHM_MIN);
        if (which == WS_SHM_UNSEALED)
            script_frame(sv[0], URIO__PF_JOB, URIO__PF_SHM, 1, "echo", NULL, URIO__PF_SHM_MIN,
                         memfd);
        else
            script_frame(sv[0], URIO__PF_JOB, URIO__PF_OUTBUF, 1, "echo", "hi", 2, memfd);
        break;
    case WS_ORPHAN:
        ws.parent = 1;      /* started for init: its parent is not that one */
        break;
    }
    if (memfd >= 0)
        close(memfd);
    if (which == WS_OK || which == WS_ORPHAN)
        shutdown(sv[0], SHUT_WR);       /* then the parent closes the channel */
    int status = test_child(worker_child, &ws, out, n);
    close(sv[0]);
    close(sv[1]);
    return status;
}

static void test_process_pool_worker_refuses_bad_parent(void **state)
{
    (void)state;
    static const struct {
        int status;
        const char *said;
    } want[WS_SCRIPTS] = {
        [WS_OK] = { 0, NULL },
        [WS_BAD_MAGIC] = { 70, "malformed frame from the parent: bad magic" },
        [WS_BAD_LIMIT] = { 70, "bad payload limit 0 in CONFIG" },
        [WS_OUT_OF_ORDER] = { 70, "job number 5 out of order (expected 1)" },
        [WS_SHM_NO_FD] = { 70, "a shared-memory frame came without its memfd" },
        [WS_SHM_UNSEALED] = { 70, "job 1: a shared buffer unsealed or smaller than its frame says" },
        [WS_OFFER_UNSEALED] = { 70, "job 1: a shared buffer unsealed or smaller than its frame says" },
        [WS_ORPHAN] = { 71, NULL },
    };
    for (int i = 0; i < WS_SCRIPTS; i++) {
        char out[4096];
        int status = run_worker_script(i, out, sizeof out);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != want[i].status)
            fail_msg("script %d: status %#x (expected exit %d); it wrote:\n%s", i, status,
                     want[i].status, out);
        if (want[i].said != NULL && strstr(out, want[i].said) == NULL)
            fail_msg("script %d: no \"%s\"; it wrote:\n%s", i, want[i].said, out);
    }
}

/* A function's calls at their edges, seen from the parent. */
static void test_process_pool_call_edges(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    urio_future_t *f[6];
    for (uint8_t i = 0; i < 6; i++)
        f[i] = submit(loop, ex, "edge", &i, 1);
    run_all(loop, f, 6, 30);
    expect_echo(f[0], "edge-ok", 7);
    expect_echo(f[1], "pos", 3);
    /* The message was for -EIO: with -EPIPE it is not passed on. */
    assert_int_equal(urio_future_result(f[2], NULL), -EPIPE);
    assert_null(urio_future_error_message(f[2]));
    assert_int_equal(urio_future_result(f[3], NULL), -ENOMEM);
    assert_string_equal(urio_future_error_message(f[3]), "no output buffer");
    assert_int_equal(urio_future_result(f[4], NULL), -EFBIG);
    assert_string_equal(urio_future_error_message(f[4]), "memfd not sized");
    assert_int_equal(urio_future_result(f[5], NULL), -EMFILE);
    assert_string_equal(urio_future_error_message(f[5]), "no memfd");
    for (int i = 0; i < 6; i++)
        urio_future_unref(f[i]);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* The registry: bad registrations refused, the same one twice harmless, a name twice refused. */
static int fn_other(urio_process_call_t *call, const void *in, size_t len)
{
    (void)call;
    (void)in;
    (void)len;
    return 0;
}

static void test_process_pool_registry(void **state)
{
    (void)state;
    test_log_capture();
    static char long_name[300];
    memset(long_name, 'n', sizeof long_name - 1);
    static urio_process_fn_def_t no_name = { .fn = fn_other }, no_fn = { .name = "x" },
                                 empty = { .name = "", .fn = fn_other },
                                 too_long = { .name = long_name, .fn = fn_other },
                                 again = { .name = "echo", .fn = fn_other },
                                 fresh = { .name = "registry-fresh", .fn = fn_other };
    assert_int_equal(urio_process_fn_register(NULL), -EINVAL);
    assert_int_equal(urio_process_fn_register(&no_name), -EINVAL);
    assert_int_equal(urio_process_fn_register(&no_fn), -EINVAL);
    assert_int_equal(urio_process_fn_register(&empty), -EINVAL);
    assert_int_equal(urio_process_fn_register(&too_long), -EINVAL);
    assert_int_equal(urio_process_fn_register(&again), -EEXIST);
    assert_log_contains("ERROR URIO_PROCESS_FN(\"echo\"): the name is registered twice; the "
                        "second registration is ignored");
    assert_int_equal(urio_process_fn_register(&fresh), 0);
    assert_int_equal(urio_process_fn_register(&fresh), 0);     /* the same one: harmless */
    assert_ptr_equal(urio__process_fn_find("registry-fresh", 14), &fresh);
    assert_ptr_equal(urio__process_fn_find("echo", 4)->fn, fn_echo);   /* the first kept */
}

/* Shared memory buffers (inputs, and outputs offered) come back for reuse, data
 * never mixed; the pool keeps at most 16 of them. */
static int payload_memfds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[300], target[300];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t k = readlink(path, target, sizeof target - 1);
        if (k > 0) {
            target[k] = '\0';
            n += strstr(target, "memfd:urio-payload") != NULL;
        }
    }
    closedir(d);
    return n;
}

static void test_process_pool_shared_buffers_reused_and_bounded(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    enum { BIG = 1 << 20, N = 40 };
    char *in = malloc(BIG + N * 4096);
    /* One after another, the same size: the same buffers, each job its own data. */
    for (int round = 0; round < 4; round++) {
        memset(in, 'a' + round, BIG);
        urio_future_t *f = submit(loop, ex, "echo", in, BIG);
        run_all(loop, &f, 1, 30);
        expect_echo(f, in, BIG);
        urio_future_unref(f);
    }
    /* Many sizes at once: more buffers than the cache keeps. */
    urio_future_t *f[N];
    for (int i = 0; i < N; i++) {
        memset(in, 'A' + i % 26, URIO__PF_SHM_MIN + (size_t)i * 4096);
        f[i] = submit(loop, ex, "echo", in, URIO__PF_SHM_MIN + (size_t)i * 4096);
    }
    run_all(loop, f, N, 60);
    for (int i = 0; i < N; i++) {
        memset(in, 'A' + i % 26, URIO__PF_SHM_MIN + (size_t)i * 4096);
        expect_echo(f[i], in, URIO__PF_SHM_MIN + (size_t)i * 4096);
        urio_future_unref(f[i]);
    }
    int kept = payload_memfds();
    if (kept > 16)
        fail_msg("%d shared buffers kept after the jobs (the cache holds 16)", kept);
    urio_executor_free(ex);
    free(in);
    test_loop_close(loop);
    assert_int_equal(payload_memfds(), 0);     /* the pool's last reference let them go */
}

/*
 * Workers that cannot be started (no fd for their channel), or that die
 * before they are ready: after three failures in a row the queued jobs fail
 * with URIO_EBROKENWORKER saying why, instead of waiting forever; the next
 * submit tries again, and works once workers can start.
 */
static int cannot_start_child(void *arg)
{
    (void)arg;
    urio_loop_t *loop;
    if (urio_loop_new(&loop, NULL) < 0)
        return 77;
    urio_executor_t *ex = NULL;
    if (urio_process_pool_new(&ex, &(urio_process_pool_opts_t){ .workers = 1 }) != 0)
        return 2;
    /* No fd left: a limit just above those open, and the holes below it taken. */
    int top = 0;
    for (int fd = 0; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            top = fd;
    struct rlimit rl, tight;
    getrlimit(RLIMIT_NOFILE, &rl);
    tight = (struct rlimit){ (rlim_t)top + 1, rl.rlim_max };
    setrlimit(RLIMIT_NOFILE, &tight);
    int fillers[1024], nfillers = 0;
    while (nfillers < 1024 && (fillers[nfillers] = dup(0)) >= 0)
        nfillers++;
    urio_future_t *f = urio_process_pool_submit(loop, ex, "echo", "a", 1);
    if (f == NULL)
        return 3;
    urio_loop_run_until_complete(loop, f);
    int err = urio_future_result(f, NULL);
    const char *msg = urio_future_error_message(f);
    fprintf(stderr, "first: %s: %s\n", urio_strerror_name(err), msg ? msg : "-");
    urio_future_unref(f);
    while (nfillers > 0)
        close(fillers[--nfillers]);
    setrlimit(RLIMIT_NOFILE, &rl);
    f = urio_process_pool_submit(loop, ex, "echo", "b", 1);
    urio_loop_run_until_complete(loop, f);
    fprintf(stderr, "then: %s\n", urio_strerror_name(urio_future_result(f, NULL)));
    urio_future_unref(f);
    urio_executor_free(ex);
    return urio_loop_close(loop) == 0 ? 0 : 4;
}

static void test_process_pool_workers_cannot_start(void **state)
{
    (void)state;
    char out[8192];
    int status = test_child(cannot_start_child, NULL, out, sizeof out);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
        skip();
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) != 0 ||
        strstr(out, "first: URIO_EBROKENWORKER: no worker could be started: ") == NULL ||
        strstr(out, "WARNING urio: process pool: starting a worker failed: ") == NULL ||
        strstr(out, "then: 0\n") == NULL)
        fail_msg("status %d; the child wrote:\n%s", WEXITSTATUS(status), out);
}

static void test_process_pool_workers_die_before_ready(void **state)
{
    (void)state;
    test_log_capture();
    urio_loop_t *loop = test_loop_new();
    setenv("URIO_TEST_WORKER_EXIT", "3", 1);
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    urio_future_t *f = submit(loop, ex, "echo", "a", 1);
    run_all(loop, &f, 1, 30);
    unsetenv("URIO_TEST_WORKER_EXIT");
    assert_int_equal(urio_future_result(f, NULL), URIO_EBROKENWORKER);
    if (strstr(urio_future_error_message(f), "workers die before they are ready (the last, pid ") ==
            NULL ||
        strstr(urio_future_error_message(f), "exited with status 3") == NULL)
        fail_msg("the job's error: %s", urio_future_error_message(f));
    assert_log_contains("before it was ready");
    urio_future_unref(f);
    /* Workers can start again: the next job tries, and works. */
    f = submit(loop, ex, "echo", "b", 1);
    run_all(loop, &f, 1, 30);
    expect_echo(f, "b", 1);
    urio_future_unref(f);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* By default one worker per CPU; a task awaiting a job shows it in the task dump. */
static int awaits_job(void *arg, void **res)
{
    (void)res;
    return urio_await(arg, NULL);
}

static void test_process_pool_default_size_and_dump(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = NULL;
    assert_int_equal(urio_process_pool_new(&ex, NULL), 0);
    uint32_t ms = 20;
    urio_future_t *job = submit(loop, ex, "sleep", &ms, sizeof ms);
    urio_future_t *t = urio_spawn(loop, awaits_job, job);
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    assert_int_equal(urio_loop_dump_tasks(loop, out), 1);
    fclose(out);
    if (strstr(text, "    awaiting <Future pending process job 'sleep'>") == NULL)
        fail_msg("the dump lacks the job:\n%s", text);
    free(text);
    assert_int_equal(urio_loop_run_until_complete(loop, t), 0);
    urio_process_pool_stats_t st;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(urio_process_pool_stats(ex, &st, NULL, 0), cores > 1024 ? 1024 : cores);
    assert_int_equal(st.spawned, cores > 1024 ? 1024 : (unsigned)cores);
    urio_future_unref(job);
    urio_future_unref(t);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* Every allocation of a submit failed in turn: NULL with ENOMEM, or a job that runs. */
static void test_process_pool_submit_oom(void **state)
{
    (void)state;
    enum { BIG = 100000 };      /* a shared-memory input, and an output buffer offered */
    char *in = malloc(BIG);
    memset(in, 'q', BIG);
    int failed_runs = 0;
    bool clean = false;
    test_log_capture();     /* a failure may also hit a worker's start: retried, said at WARNING */
    for (long n = 0; !clean && n < 100; n++) {
        urio_loop_t *loop = test_loop_new();        /* the first submit on a loop sets up its state */
        urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
        urio_mem_stats_t a;
        urio_mem_stats(&a);
        urio__alloc_fail_after(n, false);
        errno = 0;
        urio_future_t *f = urio_process_pool_submit(loop, ex, "echo", in, BIG);
        int err = errno;
        urio__alloc_fail_after(-1, false);
        urio_mem_stats_t b;
        urio_mem_stats(&b);
        if (f == NULL) {
            assert_true(b.failures > a.failures);
            assert_int_equal(err, ENOMEM);
            failed_runs++;
        } else {
            clean = b.failures == a.failures;
            run_all(loop, &f, 1, 30);
            expect_echo(f, in, BIG);
            urio_future_unref(f);
        }
        urio_executor_free(ex);
        test_loop_close(loop);
    }
    free(in);
    assert_true(clean);
    assert_true(failed_runs >= 3);      /* the job, its input buffer, the loop's pool state */
}

/* shutdown(cancel_futures) from another thread: queued jobs cancelled on the loop, running ones finish. */
static void test_process_pool_shutdown_cancel_from_thread(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    enum { N = 40 };        /* beyond the worker's pipeline: some wait in the pool */
    urio_future_t **f = submit_sleeps(loop, ex, N, 5);
    run_all(loop, f, 1, 30);            /* the worker is ready and holds the next ones */
    sd_t s = { ex, false, true, -1, 0 };
    pthread_t t;
    pthread_create(&t, NULL, shutdown_thread, &s);
    pthread_join(t, NULL);
    assert_int_equal(s.ret, 0);
    run_all(loop, f, N, 30);
    int done = 0, cancelled = 0;
    for (int i = 0; i < N; i++) {
        int err = urio_future_result(f[i], NULL);
        assert_true(err == 0 || err == -ECANCELED);
        done += err == 0;
        cancelled += err == -ECANCELED;
        urio_future_unref(f[i]);
    }
    assert_true(done >= 1);             /* what the worker held finished */
    assert_true(cancelled >= 1);        /* what waited in the pool was cancelled */
    urio_executor_free(ex);
    free(f);
    test_loop_close(loop);
}

/* The fork server: started twice is once; refused while the process has threads. */
static void *idle_thread(void *arg)
{
    sem_wait(arg);
    return NULL;
}

static int fork_server_threads_child(void *arg)
{
    (void)arg;
    urio_process_fork_server_stop();    /* the parent's: not this process's to use */
    sem_t sem;
    sem_init(&sem, 0, 0);
    pthread_t th;
    pthread_create(&th, NULL, idle_thread, &sem);
    int busy = urio_process_fork_server_start();
    sem_post(&sem);
    pthread_join(th, NULL);
    int ok = urio_process_fork_server_start();
    int again = urio_process_fork_server_start();
    urio_process_fork_server_stop();
    return busy == -EBUSY && ok == 0 && again == 0 ? 0 : 1;
}

static void test_process_pool_fork_server_refused_with_threads(void **state)
{
    (void)state;
#ifdef URIO_TSAN
    skip();     /* TSan's own thread makes every process multi-threaded */
#endif
    char out[4096];
    int status = test_child(fork_server_threads_child, NULL, out, sizeof out);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) != 0 ||
        strstr(out, "urio_process_fork_server_start(): the process already runs 2 threads; "
                    "forking it is not safe: call it at the top of main") == NULL)
        fail_msg("status %d; the child wrote:\n%s", WEXITSTATUS(status), out);
}

/*
 * Kernels before 5.9 (no close_range) and 5.1 (no pidfd_send_signal): a
 * worker still starts with only its channel open (closing what /proc/self/fd
 * lists), and a job past its timeout is still killed (by kill()).  In a
 * child whose seccomp filter answers both with ENOSYS; its workers inherit it.
 */
static int old_kernel_child(void *arg)
{
    (void)arg;
    if (test_block_syscall(__NR_close_range, ENOSYS) != 0 ||
        test_block_syscall(__NR_pidfd_send_signal, ENOSYS) != 0)
        return 77;
    urio_loop_t *loop;
    if (urio_loop_new(&loop, NULL) != 0)
        return 77;
    urio_executor_t *ex = NULL;
    if (urio_process_pool_new(&ex, &(urio_process_pool_opts_t){
            .workers = 1, .job_timeout_ns = 300 * MS }) != 0)
        return 2;
    uint32_t ms = 30000;
    urio_future_t *f[2] = { urio_process_pool_submit(loop, ex, "self", NULL, 0),
                            urio_process_pool_submit(loop, ex, "sleep", &ms, sizeof ms) };
    urio_loop_run_until_complete(loop, f[0]);
    urio_loop_run_until_complete(loop, f[1]);
    void *v = NULL;
    int err = urio_future_result(f[0], &v);
    const int32_t *out = err == 0 ? ((const urio_bytes_t *)v)->data : NULL;
    fprintf(stderr, "self: %s, fds from 3: %d %d; sleep: %s\n", urio_strerror_name(err),
            out ? out[2] : -2, out ? out[3] : -2, urio_strerror_name(urio_future_result(f[1], NULL)));
    urio_future_unref(f[0]);
    urio_future_unref(f[1]);
    urio_executor_free(ex);
    return urio_loop_close(loop) == 0 ? 0 : 3;
}

static void test_process_pool_old_kernel_fallbacks(void **state)
{
    (void)state;
    char out[4096];
    int status = test_child(old_kernel_child, NULL, out, sizeof out);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77)
        skip();
    if (WEXITSTATUS(status) != 0 || strstr(out, "self: 0, fds from 3: 3 -1; sleep: ETIMEDOUT\n") == NULL)
        fail_msg("status %d; the child wrote:\n%s", WEXITSTATUS(status), out);
}

/* Jobs whose inputs and outputs fill the channel many times over: sent and read in
 * parts, each job intact. */
static void test_process_pool_batches_beyond_the_channel(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    enum { N = 48, LEN = URIO__PF_SHM_MIN - 1 };      /* inline, the largest */
    char *in = malloc((size_t)N * LEN);
    urio_future_t *f[N];
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < LEN; k++)
            in[(size_t)i * LEN + (size_t)k] = (char)(i * 13 + k);
        f[i] = submit(loop, ex, "echo", in + (size_t)i * LEN, LEN);
    }
    run_all(loop, f, N, 60);
    for (int i = 0; i < N; i++) {
        expect_echo(f[i], in + (size_t)i * LEN, LEN);
        urio_future_unref(f[i]);
    }
    free(in);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* A queued job cancelled never runs; a held one runs, its output dropped. */
static void test_process_pool_cancel(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    urio_future_t *warm = submit(loop, ex, "echo", "w", 1);
    run_all(loop, &warm, 1, 30);
    urio_future_unref(warm);
    enum { N = 20 };
    urio_future_t **f = submit_sleeps(loop, ex, N, 2);
    /* Hand the first jobs to the worker (its pipeline), the rest stay queued. */
    urio_call_soon(loop, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_true(urio_future_cancel(f[0]));
    assert_true(urio_future_cancel(f[N - 1]));
    run_all(loop, f, N, 30);
    for (int i = 0; i < N; i++) {
        int err = urio_future_result(f[i], NULL);
        assert_int_equal(err, (i == 0 || i == N - 1) ? -ECANCELED : 0);
        urio_future_unref(f[i]);
    }
    urio_process_pool_stats_t st;
    urio_process_pool_stats(ex, &st, NULL, 0);
    assert_int_equal(st.jobs_done, N);      /* the warm-up and the first ran; the last never did */
    urio_executor_free(ex);
    free(f);
    test_loop_close(loop);
}

static void test_process_pool_bad_input(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_loop_t *other = test_loop_new();
    assert_int_equal(urio_process_pool_new(NULL, NULL), -EINVAL);
    urio_executor_t *ex = NULL;
    assert_int_equal(urio_process_pool_new(&ex, &(urio_process_pool_opts_t){ .workers = 5000 }),
                     -EINVAL);
    assert_int_equal(urio_process_pool_new(&ex, &(urio_process_pool_opts_t){ .start = 9 }),
                     -EINVAL);
    ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    assert_null(urio_process_pool_submit(NULL, ex, "echo", NULL, 0));
    assert_int_equal(errno, EINVAL);
    assert_null(urio_process_pool_submit(loop, ex, NULL, NULL, 0));
    assert_int_equal(errno, EINVAL);
    assert_null(urio_process_pool_submit(loop, ex, "echo", NULL, 3));
    assert_int_equal(errno, EINVAL);
    char name[300];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    assert_null(urio_process_pool_submit(loop, ex, name, NULL, 0));
    assert_int_equal(errno, EINVAL);
    urio_executor_t *tp = NULL;
    assert_int_equal(urio_thread_pool_new(&tp, 1), 0);
    test_log_capture();
    assert_null(urio_process_pool_submit(loop, tp, "echo", NULL, 0));
    assert_int_equal(errno, EINVAL);
    assert_log_contains("a thread pool is not a process pool");
    urio_process_pool_stats_t st;
    assert_int_equal(urio_process_pool_stats(tp, &st, NULL, 0), -EINVAL);
    urio_executor_free(tp);
    urio_future_t *f = submit(loop, ex, "echo", "z", 1);
    assert_null(urio_process_pool_submit(other, ex, "echo", "z", 1));
    assert_int_equal(errno, EXDEV);
    run_all(loop, &f, 1, 30);
    expect_echo(f, "z", 1);
    urio_future_unref(f);
    urio_executor_free(ex);
    test_loop_close(other);
    test_loop_close(loop);
}

/* ------------------------------------------------------------------ */
/* Tasks, the fork server                                               */

static int task_main(void *arg, void **result)
{
    urio_executor_t *ex = arg;
    urio_future_t *f = urio_process_pool_submit(urio_loop_current(), ex, "echo", "task", 4);
    if (f == NULL)
        return -errno;
    void *v = NULL;
    int err = urio_await(f, &v);
    if (err == 0) {
        const urio_bytes_t *b = v;
        err = b->len == 4 && memcmp(b->data, "task", 4) == 0 ? 0 : -EBADMSG;
    }
    urio_future_unref(f);
    *result = NULL;
    return err;
}

static void test_process_pool_awaited_in_task(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1 });
    urio_future_t *t = urio_spawn(loop, task_main, ex);
    assert_non_null(t);
    assert_int_equal(urio_loop_run_until_complete(loop, t), 0);
    urio_future_unref(t);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/* Without pidfds (kernels before 5.3): exits are seen through the channel's end. */
static void test_process_pool_without_pidfd(void **state)
{
    (void)state;
    urio__process_no_pidfd = true;
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){ .workers = 1,
                                                                 .job_timeout_ns = 300 * MS });
    uint8_t abrt = URIO__PT_ABORT, hang = URIO__PT_HANG;
    urio_future_t *f[4] = { submit(loop, ex, "die", &abrt, 1), submit(loop, ex, "echo", "np", 2),
                            submit(loop, ex, "die", &hang, 1), submit(loop, ex, "echo", "np", 2) };
    run_all(loop, f, 4, 30);
    assert_int_equal(urio_future_result(f[0], NULL), URIO_EBROKENWORKER);
    assert_non_null(strstr(urio_future_error_message(f[0]), "SIGABRT"));
    expect_echo(f[1], "np", 2);
    assert_int_equal(urio_future_result(f[2], NULL), -ETIMEDOUT);
    expect_echo(f[3], "np", 2);
    for (int i = 0; i < 4; i++)
        urio_future_unref(f[i]);
    urio_executor_free(ex);
    test_loop_close(loop);
    urio__process_no_pidfd = false;
}

static bool fork_server_up;

static void test_process_pool_fork_server(void **state)
{
    (void)state;
    if (!fork_server_up)
        skip();
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){
        .workers = 2, .start = URIO_PROCESS_START_FORK_SERVER });
    uint8_t segv = URIO__PT_SEGV;
    urio_future_t *f[4] = { submit(loop, ex, "self", NULL, 0), submit(loop, ex, "die", &segv, 1),
                            submit(loop, ex, "echo", "fs", 2),
                            submit(loop, ex, "echo", "fs", 2) };
    run_all(loop, f, 4, 30);
    void *v = NULL;
    assert_int_equal(urio_future_result(f[0], &v), 0);
    const int32_t *out = ((const urio_bytes_t *)v)->data;
    assert_int_equal(out[1], getpid());     /* a child of ours, not of the server */
    assert_int_equal(out[2], URIO__PROCESS_CHANNEL_FD);
    assert_int_equal(out[3], -1);
    assert_int_equal(urio_future_result(f[1], NULL), URIO_EBROKENWORKER);
    assert_non_null(strstr(urio_future_error_message(f[1]), "SIGSEGV"));
    expect_echo(f[2], "fs", 2);
    expect_echo(f[3], "fs", 2);
    for (int i = 0; i < 4; i++)
        urio_future_unref(f[i]);
    urio_executor_free(ex);
    test_loop_close(loop);
}

/*
 * Workers die with the program (PR_SET_PDEATHSIG): a child of the test makes
 * a pool, has each worker take a job that sleeps a minute without reading
 * its channel (so only the signal can end it early), and is SIGKILLed.
 * The test is a child subreaper meanwhile: the orphaned workers become its
 * children, and it reaps them, each killed by SIGKILL within 5 s.  The pipe
 * that is their stderr (and the child's, and its fork server's) reaches EOF
 * once every one of them is gone.
 */
enum { PD_WORKERS = 2 };

static void pd_stop(void *arg)
{
    urio_loop_stop(arg);
}

static int pdeath_child(int start)
{
    if (start == URIO_PROCESS_START_FORK_SERVER) {
        urio_process_fork_server_stop();    /* the parent's: not ours */
        if (urio_process_fork_server_start() != 0)
            return 2;
    }
    urio_loop_t *loop;
    if (urio_loop_new(&loop, NULL) != 0)
        return 3;
    urio_executor_t *ex = NULL;
    if (urio_process_pool_new(&ex, &(urio_process_pool_opts_t){ .workers = PD_WORKERS,
                                                                 .start = start }) != 0)
        return 4;
    urio_future_t *f = urio_process_pool_submit(loop, ex, "echo", "x", 1);
    if (f == NULL || urio_loop_run_until_complete(loop, f) != 0 ||
        urio_future_result(f, NULL) != 0)
        return 5;
    /* Every worker ready, so that the naps go one to each (round-robin). */
    urio_process_pool_stats_t st;
    for (int i = 0; i < 3000; i++) {
        urio_process_pool_stats(ex, &st, NULL, 0);
        if (st.ready == PD_WORKERS)
            break;
        urio_call_later(loop, 10 * MS, pd_stop, loop);
        urio_loop_run_forever(loop);
    }
    if (st.ready != PD_WORKERS)
        return 6;
    for (int i = 0; i < PD_WORKERS; i++)
        if (urio_process_pool_submit(loop, ex, "nap", NULL, 0) == NULL)
            return 7;
    urio_loop_run_forever(loop);    /* until killed */
    return 8;
}

struct pdeath {
    int pipe_rd;
    char text[8192];
    size_t len;
    bool eof;
    pid_t napping[PD_WORKERS];
    int nnapping;
    bool reaped[PD_WORKERS];
    int sigkilled;
};

/* Reads what is there (waiting up to ms), and notes the workers that said they nap. */
static void pd_read(struct pdeath *d, int ms)
{
    struct pollfd pfd = { d->pipe_rd, POLLIN, 0 };
    if (d->eof || poll(&pfd, 1, ms) <= 0)
        return;
    char buf[1024];
    ssize_t r = read(d->pipe_rd, buf, sizeof buf);
    if (r <= 0) {
        d->eof = true;
        return;
    }
    size_t n = (size_t)r < sizeof d->text - 1 - d->len ? (size_t)r : sizeof d->text - 1 - d->len;
    memcpy(d->text + d->len, buf, n);
    d->len += n;
    d->text[d->len] = '\0';
    d->nnapping = 0;
    for (const char *p = d->text; (p = strstr(p, "napping ")) != NULL; p++) {
        pid_t pid = atoi(p + 8);
        bool seen = false;
        for (int i = 0; i < d->nnapping; i++)
            seen |= d->napping[i] == pid;
        if (!seen && d->nnapping < PD_WORKERS)
            d->napping[d->nnapping++] = pid;
    }
}

/* Reaps every zombie child (the test's own children are alive), noting the workers. */
static void pd_reap(struct pdeath *d)
{
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG) != 0 || si.si_pid == 0)
            return;
        for (int i = 0; i < d->nnapping; i++) {
            if (si.si_pid == d->napping[i]) {
                d->reaped[i] = true;
                d->sigkilled += si.si_code == CLD_KILLED && si.si_status == SIGKILL;
            }
        }
    }
}

static bool pd_all_reaped(const struct pdeath *d)
{
    for (int i = 0; i < d->nnapping; i++)
        if (!d->reaped[i])
            return false;
    return true;
}

static void pdeath_run(int start)
{
    int was = 0;
    assert_int_equal(prctl(PR_GET_CHILD_SUBREAPER, &was), 0);
    assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    int children = child_count();
    fflush(NULL);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        test_child_started();
        alarm(TEST_CHILD_SECONDS);
        dup2(p[1], STDERR_FILENO);      /* and its workers' */
        urio_log_set_handler(NULL, NULL);
        _exit(pdeath_child(start));
    }
    close(p[1]);
    struct pdeath *d = calloc(1, sizeof *d);
    d->pipe_rd = p[0];
    uint64_t until = urio__now() + 60 * SEC;
    while (d->nnapping < PD_WORKERS && !d->eof && urio__now() < until)
        pd_read(d, 100);
    kill(child, SIGKILL);
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    uint64_t killed = urio__now();
    /*
     * Every worker gone within 5 s (they sleep for 60 s otherwise), and the
     * child's fork server: reaped too (it closes the pipe before it is a
     * zombie of ours).
     */
    while (urio__now() - killed < 5 * SEC) {
        pd_read(d, 10);
        pd_reap(d);
        if (pd_all_reaped(d) && d->eof && child_count() <= children)
            break;
    }
    uint64_t took = urio__now() - killed;
    int sigkilled = d->sigkilled;
    bool died = d->nnapping == PD_WORKERS && pd_all_reaped(d) && sigkilled == PD_WORKERS;
    bool eof = d->eof;      /* nothing of the child's holds the pipe: its fork server is gone too */
    int left = child_count() - children;
    /* Whatever is left (a failure): SIGKILL it and reap it, so that no process outlives the test. */
    for (int i = 0; i < d->nnapping; i++)
        if (!d->reaped[i])
            kill(d->napping[i], SIGKILL);
    while (!(d->eof && pd_all_reaped(d) && child_count() <= children) &&
           urio__now() - killed < 20 * SEC) {
        pd_read(d, 10);
        pd_reap(d);
    }
    prctl(PR_SET_CHILD_SUBREAPER, was);
    close(p[0]);
    print_message("%d workers napping, killed with their parent in %.1f ms\n", d->nnapping,
                  (double)took / 1e6);
    if (!died || !eof || left > 0) {
        fprintf(stderr, "%d of %d workers napping, %d killed by SIGKILL in %.3f s (pipe %s, "
                "%d more children); the child (status 0x%x) and its workers wrote:\n%s\n",
                d->nnapping, PD_WORKERS, sigkilled, (double)took / 1e9,
                eof ? "closed" : "still open", left, status, d->text);
        free(d);
        fail_msg("the workers did not die with their parent");
    }
    free(d);
}

static void test_process_pool_workers_die_with_parent(void **state)
{
    (void)state;
    pdeath_run(URIO_PROCESS_START_EXEC);
}

static void test_process_pool_fork_server_workers_die_with_parent(void **state)
{
    (void)state;
#ifdef URIO_TSAN
    skip();     /* TSan's own thread: the child cannot start a fork server */
#endif
    pdeath_run(URIO_PROCESS_START_FORK_SERVER);
}

/* ------------------------------------------------------------------ */
/* fork()                                                               */

#ifdef URIO_TSAN
#define TSAN 1      /* a child of a multi-threaded fork may start no thread: TSan refuses */
#else
#define TSAN 0
#endif

static int co_value(void *arg, void **result)
{
    *result = arg;
    return 0;
}

static int co_sleeper(void *arg, void **result)
{
    (void)arg;
    (void)result;
    return urio_sleep(10 * SEC);
}

static void make_never_awaited(void *arg)
{
    (void)arg;
    urio_coro_t *c = URIO_CORO(co_value, NULL);     /* reported when the loop closes */
    (void)c;
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static volatile int spun;

static void __attribute__((noinline)) stuck_in_child(void *arg)
{
    uint64_t end = thread_cpu_ns() + (uint64_t)(uintptr_t)arg;
    while (thread_cpu_ns() < end)
        ;
    spun++;     /* not a tail call: the report shows this frame */
}

static void *blocking_job(void *arg)
{
    return arg;
}

/* Runs the loop until f is done (a job of a pool may need several runs). */
static int child_wait(urio_loop_t *loop, urio_future_t *f)
{
    for (int i = 0; i < 1000 && !urio_future_done(f); i++)
        urio_loop_run_until_complete(loop, f);
    return urio_future_done(f) ? 0 : -ETIMEDOUT;
}

/*
 * What a child of fork() may do (docs/loop.md, "fork"), each step touching
 * one or more of urio's process-wide locks: log; make coroutines outside any
 * loop and run them in tasks; make a loop (debug mode: with its watchdog);
 * report (the task dump, a never-awaited coroutine with where it was made, a
 * stall); run jobs in a thread pool and a process pool; stop a fork server;
 * free it all.  Its exit status is the step that failed.
 */
static int everything_child(void *arg)
{
    /* A loop of the parent's, open at the fork: the child may close it. */
    urio_loop_t *inherited = arg;
    if (inherited != NULL && urio_loop_close(inherited) != 0)
        return 20;
    uint64_t live = test_live_blocks();
    urio_log(URIO_LOG_WARNING, "child: logging works");
    setenv("URIO_DEBUG", "1", 1);   /* executors and coroutines made outside a loop: tracked */
    urio_coro_t *c = URIO_CORO(co_value, (void *)7);
    urio_coro_t *unused = URIO_CORO(co_value, NULL);
    if (c == NULL || unused == NULL)
        return 2;
    urio_coro_close(unused);
    urio_loop_t *loop;
    if (urio_loop_new(&loop, &(urio_loop_opts_t){ .debug = TSAN ? -1 : 1 }) != 0)
        return 3;
    urio_future_t *t = urio_task_create(loop, c);
    void *v = NULL;
    if (t == NULL || urio_loop_run_until_complete(loop, t) != 0 ||
        urio_future_result(t, &v) != 0 || v != (void *)7)
        return 4;
    urio_future_unref(t);

    /* Reports: a task dump, a never-awaited coroutine (at close), a stall. */
    urio_future_t *sleeper = urio_spawn(loop, co_sleeper, NULL);
    if (sleeper == NULL)
        return 5;
    urio_call_soon(loop, make_never_awaited, NULL);
    urio_call_later(loop, 10 * MS, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    if (urio_loop_dump_tasks(loop, stderr) != 1)
        return 6;
    urio_future_cancel(sleeper);
    urio_loop_run_until_complete(loop, sleeper);
    urio_future_unref(sleeper);
    if (!TSAN) {
        if (urio_loop_set_stall_watchdog(loop, 50 * MS) != 0)
            return 7;
        urio_call_soon(loop, stuck_in_child, (void *)(uintptr_t)(300 * MS));
        urio_call_soon(loop, test_stop_cb, loop);
        urio_loop_run_forever(loop);
    }

    /* Executors: a thread pool (its workers are threads), a process pool. */
    if (!TSAN) {
        urio_executor_t *tp;
        if (urio_thread_pool_new(&tp, 1) != 0)
            return 8;
        urio_future_t *f = urio_run_in_executor(loop, tp, blocking_job, (void *)5);
        if (f == NULL || urio_loop_run_until_complete(loop, f) != 0 ||
            urio_future_result(f, &v) != 0 || v != (void *)5)
            return 9;
        urio_future_unref(f);
        urio_executor_free(tp);
    }
    urio_executor_t *pp;
    if (urio_process_pool_new(&pp, &(urio_process_pool_opts_t){ .workers = 1 }) != 0)
        return 10;
    urio_future_t *f = urio_process_pool_submit(loop, pp, "echo", "child", 5);
    if (f == NULL || child_wait(loop, f) != 0 || urio_future_result(f, &v) != 0)
        return 11;
    const urio_bytes_t *b = v;
    if (b->len != 5 || memcmp(b->data, "child", 5) != 0)
        return 12;
    urio_future_unref(f);
    urio_executor_free(pp);
    urio_process_fork_server_stop();    /* none of its own: the parent's is not stopped */
    if (urio_loop_close(loop) != 0)
        return 13;
    if (test_live_blocks() != live)
        return 14;
    return 0;
}

static void expect_child_wrote(const char *lock, const char *out, const char *what)
{
    if (strstr(out, what) != NULL)
        return;
    fprintf(stderr, "the child wrote:\n%s\n", out);
    fail_msg("the child (%s lock held) did not write \"%s\"", lock, what);
}

/*
 * The lock called name is held by another thread at the fork: the child
 * must not deadlock on it (today's code did, at its first use), and all
 * that lock guarded must work in the child.
 */
static void fork_with_lock_held(const char *name)
{
    pthread_mutex_t *mu = test_fork_lock(name);
    if (mu == NULL)
        skip();     /* not in this build (the overflow handler: not under sanitizers) */
    urio_loop_t *inherited = test_loop_new();      /* (made before the lock is held) */
    struct test_holder h;
    test_hold(&h, mu);
    static char out[64 * 1024];
    int status = test_child(everything_child, inherited, out, sizeof out);
    test_release(&h);
    test_loop_close(inherited);
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "the child wrote:\n%s\n", out);
        fail_msg("forked while a thread held the %s lock: the child died of signal %d%s", name,
                 WTERMSIG(status), WTERMSIG(status) == SIGALRM ? " (deadlocked)" : "");
    }
    if (WEXITSTATUS(status) != 0) {
        fprintf(stderr, "the child wrote:\n%s\n", out);
        fail_msg("forked while a thread held the %s lock: the child failed at step %d", name,
                 WEXITSTATUS(status));
    }
    static const char *const always[] = {
        "WARNING urio: child: logging works",
        "<Task 'co_sleeper' suspended in co_sleeper() ",
        "RuntimeWarning: coroutine 'co_value' was never awaited",
    };
    static const char *const threads[] = {  /* debug mode's stacks, the watchdog's report */
        "Coroutine created at (most recent call last)\n  File \"/",
        "loop stalled for ",
        ", in stuck_in_child",
    };
    for (size_t i = 0; i < sizeof always / sizeof always[0]; i++)
        expect_child_wrote(name, out, always[i]);
    /* (Creation stacks need debug mode's machinery: not with -Ddebug_checks=false.) */
    for (size_t i = URIO_DEBUG_CHECKS ? 0 : 1; !TSAN && i < sizeof threads / sizeof threads[0];
         i++)
        expect_child_wrote(name, out, threads[i]);
}

/* Every process-wide lock of urio's (lib/fork.c's registry), one test each. */
static const char *const fork_locks[] = {
    "log handler", "quarantine", "symbolizer", "coroutines", "overflow handler",
    "dump signal setup", "live executors", "fork server", "stall watchdog", "open loops",
    "unwinder",
};

#define FORK_LOCK_TEST(fn, i)                                                       \
    static void fn(void **state)                                                    \
    {                                                                               \
        (void)state;                                                                \
        fork_with_lock_held(fork_locks[i]);                                         \
    }
FORK_LOCK_TEST(test_process_pool_fork_while_log_lock_held, 0)
FORK_LOCK_TEST(test_process_pool_fork_while_quarantine_lock_held, 1)
FORK_LOCK_TEST(test_process_pool_fork_while_symbolizer_lock_held, 2)
FORK_LOCK_TEST(test_process_pool_fork_while_coroutines_lock_held, 3)
FORK_LOCK_TEST(test_process_pool_fork_while_overflow_lock_held, 4)
FORK_LOCK_TEST(test_process_pool_fork_while_dump_lock_held, 5)
FORK_LOCK_TEST(test_process_pool_fork_while_executors_lock_held, 6)
FORK_LOCK_TEST(test_process_pool_fork_while_fork_server_lock_held, 7)
FORK_LOCK_TEST(test_process_pool_fork_while_watchdog_lock_held, 8)
FORK_LOCK_TEST(test_process_pool_fork_while_open_loops_lock_held, 9)
FORK_LOCK_TEST(test_process_pool_fork_while_unwinder_lock_held, 10)

/* The tests above cover every lock the registry has (a new one needs its test). */
static void test_process_pool_fork_locks_all_tested(void **state)
{
    (void)state;
    const char *name;
    unsigned n = 0;
    for (unsigned i = 0; urio__test_fork_lock(i, &name) != NULL; i++, n++) {
        size_t k = 0;
        while (k < sizeof fork_locks / sizeof fork_locks[0] && strcmp(fork_locks[k], name) != 0)
            k++;
        if (k == sizeof fork_locks / sizeof fork_locks[0])
            fail_msg("lock \"%s\" (lib/fork.c's registry) has no fork test here", name);
    }
    /* Only the overflow handler's is missing from sanitized builds. */
    assert_int_equal(n, sizeof fork_locks / sizeof fork_locks[0] - (SANITIZED ? 1 : 0));
    /* The log's, the first of them, was free after the tests: */
    pthread_mutex_t *mu = test_fork_lock("log handler");
    assert_int_equal(pthread_mutex_trylock(mu), 0);
    pthread_mutex_unlock(mu);
}

/*
 * A child of fork() never uses its parent's fork server (whose clones would
 * be the parent's children): a pool that wants one fails with an ERROR that
 * says so, until the child starts its own.  Whether or not another thread
 * held the server's lock at the fork.
 */
static int fork_server_child(void *arg)
{
    (void)arg;
    urio_loop_t *loop;
    if (urio_loop_new(&loop, NULL) != 0)
        return 2;
    urio_process_pool_opts_t o = { .workers = 1, .start = URIO_PROCESS_START_FORK_SERVER };
    urio_executor_t *ex;
    if (urio_process_pool_new(&ex, &o) != 0)
        return 3;
    urio_future_t *f = urio_process_pool_submit(loop, ex, "self", NULL, 0);
    if (f == NULL || child_wait(loop, f) != 0)
        return 4;
    if (urio_future_result(f, NULL) != URIO_EBROKENWORKER)
        return 5;       /* a worker started: the parent's server made it */
    urio_future_unref(f);
    urio_executor_free(ex);
    /* Its own server: this process has one thread. */
    if (urio_process_fork_server_start() != 0)
        return 6;
    if (urio_process_pool_new(&ex, &o) != 0)
        return 7;
    f = urio_process_pool_submit(loop, ex, "self", NULL, 0);
    void *v = NULL;
    if (f == NULL || child_wait(loop, f) != 0 || urio_future_result(f, &v) != 0)
        return 8;
    const int32_t *out = ((const urio_bytes_t *)v)->data;
    if (out[1] != getpid())
        return 9;       /* the worker is this process's child */
    urio_future_unref(f);
    urio_executor_free(ex);
    if (urio_loop_close(loop) != 0)
        return 10;
    urio_process_fork_server_stop();
    return 0;
}

static void test_process_pool_fork_server_not_inherited(void **state)
{
    (void)state;
    if (!fork_server_up)
        skip();
    for (int held = 0; held < 2; held++) {
        struct test_holder h;
        if (held)
            test_hold(&h, test_fork_lock("fork server"));
        char out[16384];
        int status = test_child(fork_server_child, NULL, out, sizeof out);
        if (held)
            test_release(&h);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "the child wrote:\n%s\n", out);
            fail_msg("the child (lock %s) failed: status 0x%x", held ? "held" : "free", status);
        }
        if (strstr(out, "ERROR urio: process pool: the fork server belongs to the parent "
                        "process (this process is a child of fork())") == NULL) {
            fprintf(stderr, "the child wrote:\n%s\n", out);
            fail_msg("no ERROR about the parent's fork server");
        }
    }
    /* The parent's server still serves the parent. */
    urio_loop_t *loop = test_loop_new();
    urio_executor_t *ex = pool_new(&(urio_process_pool_opts_t){
        .workers = 1, .start = URIO_PROCESS_START_FORK_SERVER });
    urio_future_t *f = submit(loop, ex, "echo", "fs", 2);
    run_all(loop, &f, 1, 30);
    expect_echo(f, "fs", 2);
    urio_future_unref(f);
    urio_executor_free(ex);
    test_loop_close(loop);
}

int main(void)
{
#if !defined(URIO_TSAN)
    /* While this process has one thread: the fork server's precondition. */
    fork_server_up = urio_process_fork_server_start() == 0;
#endif
    /* Under ASan a worker's SIGSEGV is its own report and exit 1: let the signal kill it. */
    const char *asan = getenv("ASAN_OPTIONS");
    char opts[512];
    snprintf(opts, sizeof opts, "%s%shandle_segv=0:handle_abort=0", asan ? asan : "",
             asan && *asan ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
    const char *tsan = getenv("TSAN_OPTIONS");
    snprintf(opts, sizeof opts, "%s%shandle_segv=0:handle_abort=0", tsan ? tsan : "",
             tsan && *tsan ? ":" : "");
    setenv("TSAN_OPTIONS", opts, 1);
    const struct CMUnitTest tests[] = {
        PP_TEST(test_process_pool_echo_small_and_large),
        PP_TEST(test_process_pool_error_with_message),
        PP_TEST(test_process_pool_worker_isolation),
        PP_TEST(test_process_pool_death_matrix),
        PP_TEST(test_process_pool_out_of_memory),
        PP_TEST(test_process_pool_replaced_within_a_second),
        PP_TEST(test_process_pool_random_kills),
        PP_TEST(test_process_pool_shutdown_wait),
        PP_TEST(test_process_pool_shutdown_cancel_futures),
        PP_TEST(test_process_pool_shutdown_no_wait),
        PP_TEST(test_process_pool_shutdown_from_thread),
        PP_TEST(test_process_pool_loop_close_while_busy),
        PP_TEST(test_process_pool_payload_limit),
        PP_TEST(test_process_pool_recycling_bounds_leak),
        PP_TEST(test_process_pool_malformed_frame),
        PP_TEST(test_process_pool_decoder_refuses_each_field),
        PP_TEST(test_process_pool_forged_results_refused),
        PP_TEST(test_process_pool_worker_refuses_bad_parent),
        PP_TEST(test_process_pool_call_edges),
        PP_TEST(test_process_pool_registry),
        PP_TEST(test_process_pool_shared_buffers_reused_and_bounded),
        PP_TEST(test_process_pool_workers_cannot_start),
        PP_TEST(test_process_pool_workers_die_before_ready),
        PP_TEST(test_process_pool_default_size_and_dump),
        PP_TEST(test_process_pool_submit_oom),
        PP_TEST(test_process_pool_shutdown_cancel_from_thread),
        PP_TEST(test_process_pool_fork_server_refused_with_threads),
        PP_TEST(test_process_pool_old_kernel_fallbacks),
        PP_TEST(test_process_pool_batches_beyond_the_channel),
        PP_TEST(test_process_pool_cancel),
        PP_TEST(test_process_pool_bad_input),
        PP_TEST(test_process_pool_awaited_in_task),
        PP_TEST(test_process_pool_without_pidfd),
        PP_TEST(test_process_pool_fork_server),
        PP_TEST(test_process_pool_workers_die_with_parent),
        PP_TEST(test_process_pool_fork_server_workers_die_with_parent),
        PP_TEST(test_process_pool_fork_server_not_inherited),
        PP_TEST(test_process_pool_fork_while_log_lock_held),
        PP_TEST(test_process_pool_fork_while_quarantine_lock_held),
        PP_TEST(test_process_pool_fork_while_symbolizer_lock_held),
        PP_TEST(test_process_pool_fork_while_coroutines_lock_held),
        PP_TEST(test_process_pool_fork_while_overflow_lock_held),
        PP_TEST(test_process_pool_fork_while_dump_lock_held),
        PP_TEST(test_process_pool_fork_while_executors_lock_held),
        PP_TEST(test_process_pool_fork_while_fork_server_lock_held),
        PP_TEST(test_process_pool_fork_while_watchdog_lock_held),
        PP_TEST(test_process_pool_fork_while_open_loops_lock_held),
        PP_TEST(test_process_pool_fork_while_unwinder_lock_held),
        PP_TEST(test_process_pool_fork_locks_all_tested),
    };
    /* Symbolising (the task dump) opens libdw's session, kept for the process: open it
     * now, before the tests count this process's fds. */
    char where[160];
    urio__describe_pc((uintptr_t)main, where, sizeof where);
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    urio_process_fork_server_stop();
    return ret;
}
