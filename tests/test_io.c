/*
 * test_io.c — I/O operations on the ring (urio/io.h): files, sockets, poll,
 * in both forms (task and future); deadlines; cancellation that keeps every
 * buffer alive until the kernel's final CQE and never loses a result; bad
 * input; closing a loop with I/O in flight, from its thread and another.
 */
#include "test_io_helpers.h"

#include <limits.h>
#include <stddef.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <sys/uio.h>

static char tmpdir[256];

static int setup_dir(void **state)
{
    snprintf(tmpdir, sizeof tmpdir, "test_io.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    return test_setup_leaks(state);
}

static int teardown_dir(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    assert_int_equal(system(cmd), 0);
    return test_teardown_leaks(state);
}

#define IO_TEST(fn) cmocka_unit_test_setup_teardown(fn, setup_dir, teardown_dir)

/* ------------------------------------------------------------------ */
/* Files                                                                */

static int files_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    int dfd = open(tmpdir, O_DIRECTORY | O_CLOEXEC);
    assert_true(dfd >= 0);
    assert_int_equal(urio_mkdirat(dfd, "sub", 0755, 0), 0);
    assert_int_equal(urio_mkdirat(dfd, "sub", 0755, 0), -EEXIST);
    int fd = urio_openat(dfd, "sub/a.txt", O_CREAT | O_RDWR | O_TRUNC, 0644, 0);
    assert_true(fd >= 0);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    assert_int_equal(urio_write(fd, "hello, ", 7, 0, 0), 7);
    assert_int_equal(urio_write(fd, "world", 5, 7, 0), 5);
    char buf[32] = { 0 };
    assert_int_equal(urio_read(fd, buf, sizeof buf, 0, 0), 12);
    assert_string_equal(buf, "hello, world");
    /* At the end of the file: 0. */
    assert_int_equal(urio_read(fd, buf, sizeof buf, 12, 0), 0);
    /* readv/writev: two pieces each. */
    struct iovec w[2] = { { "ab", 2 }, { "cde", 3 } };
    assert_int_equal(urio_writev(fd, w, 2, 12, 0), 5);
    char p1[3] = { 0 }, p2[8] = { 0 };
    struct iovec r[2] = { { p1, 2 }, { p2, 7 } };
    assert_int_equal(urio_readv(fd, r, 2, 10, 0), 7);
    assert_memory_equal(p1, "ld", 2);
    assert_memory_equal(p2, "abcde", 5);
    assert_int_equal(urio_fsync(fd, 0), 0);
    assert_int_equal(urio_fdatasync(fd, 0), 0);
    assert_int_equal(urio_fallocate(fd, 0, 0, 8192, 0), 0);
    struct statx stx;
    assert_int_equal(urio_statx(dfd, "sub/a.txt", 0, STATX_SIZE, &stx, 0), 0);
    assert_int_equal(stx.stx_size, 8192);
    assert_int_equal(urio_renameat(dfd, "sub/a.txt", dfd, "sub/b.txt", 0, 0), 0);
    assert_int_equal(urio_statx(dfd, "sub/a.txt", 0, STATX_SIZE, &stx, 0), -ENOENT);
    assert_int_equal(urio_close(fd, 0), 0);
    assert_int_equal(urio_unlinkat(dfd, "sub/b.txt", 0, 0), 0);
    assert_int_equal(urio_unlinkat(dfd, "sub", AT_REMOVEDIR, 0), 0);
    assert_int_equal(urio_openat(dfd, "nope", O_RDONLY, 0, 0), -ENOENT);
    close(dfd);
    return 0;
}

static void test_io_files(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(files_task, NULL), 0);
    assert_fds(fds);
}

/* Offset -1: the file's own position, advanced by each read and write. */
static int position_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    char path[300];
    snprintf(path, sizeof path, "%s/pos", tmpdir);
    int fd = urio_openat(AT_FDCWD, path, O_CREAT | O_RDWR, 0600, 0);
    assert_true(fd >= 0);
    assert_int_equal(urio_write(fd, "abc", 3, -1, 0), 3);
    assert_int_equal(urio_write(fd, "def", 3, -1, 0), 3);
    assert_int_equal(lseek(fd, 0, SEEK_CUR), 6);
    assert_int_equal(lseek(fd, 2, SEEK_SET), 2);
    char b[8] = { 0 };
    assert_int_equal(urio_read(fd, b, 2, -1, 0), 2);
    assert_string_equal(b, "cd");
    assert_int_equal(urio_read(fd, b, 8, -1, 0), 2);
    assert_int_equal(urio_close(fd, 0), 0);
    return 0;
}

static void test_io_file_position(void **state)
{
    (void)state;
    assert_int_equal(test_run_task(position_task, NULL), 0);
}

/* O_DIRECT with an aligned buffer: what was written is what is read. */
static int odirect_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    char path[300];
    snprintf(path, sizeof path, "%s/direct", tmpdir);
    int fd = urio_openat(AT_FDCWD, path, O_CREAT | O_RDWR | O_DIRECT, 0600, 0);
    if (fd == -EINVAL)
        return 1;       /* this file system has no O_DIRECT */
    assert_true(fd >= 0);
    void *w, *r;
    assert_int_equal(posix_memalign(&w, 4096, 8192), 0);
    assert_int_equal(posix_memalign(&r, 4096, 8192), 0);
    for (int i = 0; i < 8192; i++)
        ((unsigned char *)w)[i] = (unsigned char)(i * 7);
    assert_int_equal(urio_write(fd, w, 8192, 0, 0), 8192);
    memset(r, 0, 8192);
    assert_int_equal(urio_read(fd, r, 4096, 4096, 0), 4096);
    assert_memory_equal(r, (char *)w + 4096, 4096);
    /* Misaligned: the kernel says so. */
    assert_int_equal(urio_read(fd, (char *)r + 1, 4096, 0, 0), -EINVAL);
    free(w);
    free(r);
    assert_int_equal(urio_close(fd, 0), 0);
    return 0;
}

static void test_io_file_odirect(void **state)
{
    (void)state;
    int ret = test_run_task(odirect_task, NULL);
    if (ret == 1)
        skip();
    assert_int_equal(ret, 0);
}

/* ------------------------------------------------------------------ */
/* Sockets                                                              */

static int sockets_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    int sv[2];
    test_socketpair(sv);
    assert_int_equal(urio_send(sv[0], "ping", 4, 0, 0), 4);
    char buf[16] = { 0 };
    assert_int_equal(urio_recv(sv[1], buf, sizeof buf, 0, 0), 4);
    assert_string_equal(buf, "ping");
    /* Readiness: nothing to read, something to write. */
    assert_int_equal(urio_poll(sv[1], POLLOUT, 0) & POLLOUT, POLLOUT);
    assert_int_equal(urio_send(sv[0], "x", 1, 0, 0), 1);
    assert_int_equal(urio_poll(sv[1], POLLIN, 0) & POLLIN, POLLIN);
    assert_int_equal(urio_recv(sv[1], buf, 1, 0, 0), 1);
    /* sendmsg/recvmsg with two iovecs each. */
    struct iovec wi[2] = { { "ab", 2 }, { "cd", 2 } };
    struct msghdr wm = { .msg_iov = wi, .msg_iovlen = 2 };
    assert_int_equal(urio_sendmsg(sv[0], &wm, 0, 0), 4);
    char r1[2] = { 0 }, r2[4] = { 0 };
    struct iovec ri[2] = { { r1, 1 }, { r2, 3 } };
    struct msghdr rm = { .msg_iov = ri, .msg_iovlen = 2 };
    assert_int_equal(urio_recvmsg(sv[1], &rm, MSG_WAITALL, 0), 4);
    assert_string_equal(r1, "a");
    assert_string_equal(r2, "bcd");
    /* Half-close: the peer reads EOF, and can still send back. */
    assert_int_equal(urio_shutdown(sv[0], SHUT_WR, 0), 0);
    assert_int_equal(urio_recv(sv[1], buf, sizeof buf, 0, 0), 0);
    assert_int_equal(urio_send(sv[1], "back", 4, 0, 0), 4);
    assert_int_equal(urio_recv(sv[0], buf, sizeof buf, 0, 0), 4);
    assert_int_equal(urio_close(sv[0], 0), 0);
    assert_int_equal(urio_close(sv[1], 0), 0);

    /* socket, bind, listen, accept, connect: through the ring. */
    int l = urio_socket(AF_INET, SOCK_STREAM, 0, 0);
    assert_true(l >= 0);
    assert_true(fcntl(l, F_GETFD) & FD_CLOEXEC);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    urio__io_args_t ba = { .code = URIO__IO_BIND, .fd = l, .ptr = &a, .num = sizeof a };
    assert_int_equal(urio__io_run(&ba), 0);
    urio__io_args_t la = { .code = URIO__IO_LISTEN, .fd = l, .num = 8 };
    assert_int_equal(urio__io_run(&la), 0);
    socklen_t alen = sizeof a;
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &alen), 0);
    int c = urio_socket(AF_INET, SOCK_STREAM, 0, 0);
    assert_int_equal(urio_connect(c, (struct sockaddr *)&a, sizeof a, 0), 0);
    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    int s = urio_accept(l, (struct sockaddr *)&peer, &plen, 0, 0);
    assert_true(s >= 0);
    assert_true(fcntl(s, F_GETFD) & FD_CLOEXEC);
    assert_int_equal(plen, sizeof peer);
    assert_int_equal(peer.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    assert_int_equal(urio_send(c, "tcp", 3, 0, 0), 3);
    assert_int_equal(urio_recv(s, buf, 3, MSG_WAITALL, 0), 3);
    assert_memory_equal(buf, "tcp", 3);
    urio_close(s, 0);
    urio_close(c, 0);
    urio_close(l, 0);
    return 0;
}

static void test_io_sockets(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(sockets_task, NULL), 0);
    assert_fds(fds);
}

/* The same without the ring's socket, bind and listen (kernels before 5.19 / 6.11). */
static void test_io_sockets_fallback(void **state)
{
    (void)state;
    int fds = test_count_fds();
    urio__io_force_fallback = 1;
    assert_int_equal(test_run_task(sockets_task, NULL), 0);
    urio__io_force_fallback = 0;
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* The future form, from callbacks                                      */

struct cb_state {
    urio_loop_t *loop;
    int sv[2];
    char buf[16];
    urio_future_t *f;
    int result;
    int step;
};

static void cb_read_done(urio_future_t *f, void *arg)
{
    struct cb_state *st = arg;
    st->result = urio_io_result(f);
    urio_loop_stop(st->loop);
}

static void cb_start(void *arg)
{
    struct cb_state *st = arg;
    st->f = urio_recv_submit(st->loop, st->sv[1], st->buf, sizeof st->buf, 0, 0);
    assert_non_null(st->f);
    assert_false(urio_future_done(st->f));
    assert_int_equal(urio_io_result(st->f), URIO_ENOTDONE);
    assert_int_equal(urio_future_add_done_callback(st->f, cb_read_done, st), 0);
    assert_int_equal(write(st->sv[0], "future", 6), 6);
}

static void test_io_future_form(void **state)
{
    (void)state;
    int fds = test_count_fds();
    struct cb_state st = { 0 };
    st.loop = test_loop_new();
    test_socketpair(st.sv);
    urio_call_soon(st.loop, cb_start, &st);
    assert_int_equal(urio_loop_run_forever(st.loop), 0);
    assert_int_equal(st.result, 6);
    assert_memory_equal(st.buf, "future", 6);
    urio_future_unref(st.f);
    /* A failing op: its future fails with the CQE's error. */
    urio_future_t *f = urio_read_submit(st.loop, 999, st.buf, 4, 0, 0);
    assert_non_null(f);
    assert_int_equal(urio_loop_run_until_complete(st.loop, f), -EBADF);
    assert_int_equal(urio_io_result(f), -EBADF);
    urio_future_unref(f);
    /* Bad input fails at once: NULL, errno set, nothing started. */
    errno = 0;
    assert_null(urio_recv_submit(st.loop, -1, st.buf, 4, 0, 0));
    assert_int_equal(errno, EBADF);
    assert_null(urio_recv_submit(NULL, st.sv[0], st.buf, 4, 0, 0));
    assert_int_equal(errno, EINVAL);
    close(st.sv[0]);
    close(st.sv[1]);
    test_loop_close(st.loop);
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* Deadlines                                                            */

static int deadline_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    int sv[2];
    test_socketpair(sv);
    char buf[8];
    uint64_t t0 = urio__now();
    assert_int_equal(urio_recv(sv[1], buf, sizeof buf, 0, urio_deadline_in(30 * MS)), -ETIMEDOUT);
    uint64_t took = urio__now() - t0;
    assert_true(took >= 30 * MS);
    assert_true(took < 5000 * MS);
    /* A deadline already past still lets an op that can finish at once finish. */
    assert_int_equal(write(sv[0], "now", 3), 3);
    assert_int_equal(urio_recv(sv[1], buf, sizeof buf, 0, urio__now() - 1), 3);
    /* A deadline that does not pass changes nothing. */
    assert_int_equal(write(sv[0], "ok", 2), 2);
    assert_int_equal(urio_recv(sv[1], buf, sizeof buf, 0, urio_deadline_in(5000 * MS)), 2);
    /* The future form: -ETIMEDOUT as the future's error. */
    urio_future_t *f = urio_poll_submit(urio_loop_current(), sv[1], POLLIN,
                                        urio_deadline_in(10 * MS));
    assert_non_null(f);
    assert_int_equal(urio_await(f, NULL), -ETIMEDOUT);
    urio_future_unref(f);
    close(sv[0]);
    close(sv[1]);
    return 0;
}

static void test_io_deadline(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(deadline_task, NULL), 0);
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* Cancellation                                                         */

struct cancel_state {
    urio_loop_t *loop;
    int sv[2];
    char *heap;                  /* the buffer the kernel holds: ASan watches it */
    size_t filled;
    int ret, ret2;
    bool resumed;
};

static int recv_blocked(void *arg, void **res)
{
    (void)res;
    struct cancel_state *st = arg;
    st->ret = urio_recv(st->sv[1], st->heap, 4096, 0, 0);
    st->resumed = true;
    st->ret2 = urio_sleep(1);      /* the cancel is sticky */
    free(st->heap);                /* only now: the kernel let go at the final CQE */
    st->heap = NULL;
    return st->ret;
}

/* Cancelling a task blocked in recv: it stays parked until the kernel's CQE, then -ECANCELED. */
static void test_io_cancel_mid_recv(void **state)
{
    (void)state;
    int fds = test_count_fds();
    struct cancel_state st = { 0 };
    st.loop = test_loop_new();
    test_tcp_pair(st.sv);
    st.heap = malloc(4096);
    urio_future_t *t = urio_spawn(st.loop, recv_blocked, &st);
    /* Let it block in the kernel. */
    urio_call_later(st.loop, 20 * MS, test_stop_cb, st.loop);
    urio_loop_run_forever(st.loop);
    urio__io_t *io = test_io_of(st.loop);
    assert_int_equal(io->inflight, 1);
    assert_true(urio_future_cancel(t));
    /* Asked, not done: the op is still the kernel's, the task still parked. */
    assert_false(urio_future_done(t));
    assert_false(st.resumed);
    assert_int_equal(io->inflight, 1);
    assert_int_equal(urio_loop_run_until_complete(st.loop, t), -ECANCELED);
    assert_true(urio_future_cancelled(t));
    assert_int_equal(st.ret, -ECANCELED);
    assert_int_equal(st.ret2, -ECANCELED);
    assert_int_equal(io->inflight, 0);
    /* Nothing was consumed: what the peer sends now is all there. */
    char b[4];
    assert_int_equal(write(st.sv[0], "late", 4), 4);
    assert_int_equal(recv(st.sv[1], b, 4, MSG_WAITALL), 4);
    assert_memory_equal(b, "late", 4);
    urio_future_unref(t);
    close(st.sv[0]);
    close(st.sv[1]);
    test_loop_close(st.loop);
    assert_fds(fds);
}

static int send_blocked(void *arg, void **res)
{
    (void)res;
    struct cancel_state *st = arg;
    st->ret = urio_send(st->sv[0], st->heap, 65536, 0, 0);
    st->resumed = true;
    free(st->heap);
    st->heap = NULL;
    return st->ret < 0 ? st->ret : 0;
}

/* Cancelling a send the peer's full buffer holds back: -ECANCELED, and not a byte of it sent. */
static void test_io_cancel_mid_send(void **state)
{
    (void)state;
    int fds = test_count_fds();
    struct cancel_state st = { 0 };
    st.loop = test_loop_new();
    test_tcp_pair(st.sv);
    st.filled = test_fill_socket(st.sv[0]);
    st.heap = malloc(65536);
    memset(st.heap, 'z', 65536);
    urio_future_t *t = urio_spawn(st.loop, send_blocked, &st);
    urio_call_later(st.loop, 20 * MS, test_stop_cb, st.loop);
    urio_loop_run_forever(st.loop);
    assert_false(st.resumed);
    assert_int_equal(test_io_of(st.loop)->inflight, 1);
    urio_future_cancel(t);
    assert_false(st.resumed);
    assert_int_equal(urio_loop_run_until_complete(st.loop, t), -ECANCELED);
    assert_int_equal(st.ret, -ECANCELED);
    /* The peer gets exactly what filled the buffers, then nothing. */
    char *sink = malloc(st.filled + 1);
    test_read_all(st.sv[1], sink, st.filled);
    assert_int_equal(recv(st.sv[1], sink, 1, MSG_DONTWAIT), -1);
    assert_int_equal(errno, EAGAIN);
    free(sink);
    urio_future_unref(t);
    close(st.sv[0]);
    close(st.sv[1]);
    test_loop_close(st.loop);
    assert_fds(fds);
}

/*
 * The race: the op completes in the same kernel entry as its cancel (data
 * was already there).  The task gets the bytes (not lost), and the cancel
 * at its next wait.
 */
static int recv_racing(void *arg, void **res)
{
    (void)res;
    struct cancel_state *st = arg;
    char buf[16] = { 0 };
    st->ret = urio_recv(st->sv[1], buf, sizeof buf, 0, 0);
    assert_memory_equal(buf, "raced", 5);
    st->ret2 = urio_sleep(1);
    return 0;
}

static void cancel_now(void *arg)
{
    urio_future_cancel(arg);
}

static int accept_racing(void *arg, void **res)
{
    (void)res;
    struct cancel_state *st = arg;
    st->ret = urio_accept(st->sv[0], NULL, NULL, 0, 0);
    if (st->ret >= 0)
        close(st->ret);     /* the task got it: it is the task's to close */
    st->ret2 = urio_sleep(1);
    return 0;
}

static void test_io_cancel_loses_race(void **state)
{
    (void)state;
    int fds = test_count_fds();
    struct cancel_state st = { 0 };
    st.loop = test_loop_new();
    test_socketpair(st.sv);
    assert_int_equal(write(st.sv[0], "raced", 5), 5);
    urio_future_t *t = urio_spawn(st.loop, recv_racing, &st);
    /* Its first step submits the recv; this callback, queued after it, cancels in the same turn. */
    urio_call_soon(st.loop, cancel_now, t);
    urio_loop_run_until_complete(st.loop, t);
    assert_int_equal(st.ret, 5);
    assert_int_equal(st.ret2, -ECANCELED);
    urio_future_unref(t);
    close(st.sv[0]);
    close(st.sv[1]);

    /* accept: the connection is the task's, never leaked. */
    st.sv[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    assert_int_equal(bind(st.sv[0], (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(st.sv[0], 4), 0);
    getsockname(st.sv[0], (struct sockaddr *)&a, &len);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(c, (struct sockaddr *)&a, sizeof a), 0);
    t = urio_spawn(st.loop, accept_racing, &st);
    urio_call_soon(st.loop, cancel_now, t);
    urio_loop_run_until_complete(st.loop, t);
    assert_true(st.ret >= 0);
    assert_int_equal(st.ret2, -ECANCELED);
    urio_future_unref(t);

    /* The future form: urio closes the fd nobody wants any more; the future ends cancelled. */
    int c2 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(c2, (struct sockaddr *)&a, sizeof a), 0);
    int before = test_count_fds();
    urio_future_t *f = urio_accept_submit(st.loop, st.sv[0], NULL, NULL, 0, 0);
    assert_non_null(f);
    assert_true(urio_future_cancel(f));
    assert_false(urio_future_done(f));  /* pending until the kernel answers */
    assert_int_equal(urio_loop_run_until_complete(st.loop, f), -ECANCELED);
    assert_true(urio_future_cancelled(f));
    assert_int_equal(test_count_fds(), before);
    urio_future_unref(f);
    /* ...and a recv future keeps the bytes that came: its result, not a cancel. */
    int sv2[2];
    test_socketpair(sv2);
    assert_int_equal(write(sv2[0], "kept", 4), 4);
    char buf[8];
    f = urio_recv_submit(st.loop, sv2[1], buf, sizeof buf, 0, 0);
    urio_future_cancel(f);
    assert_int_equal(urio_loop_run_until_complete(st.loop, f), 0);
    assert_int_equal(urio_io_result(f), 4);
    urio_future_unref(f);
    close(sv2[0]);
    close(sv2[1]);
    close(c);
    close(c2);
    close(st.sv[0]);
    test_loop_close(st.loop);
    assert_fds(fds);
}

/* A cancelled recv future that the kernel stops: -ECANCELED, after the CQE, not before. */
static void test_io_cancel_future_waits_for_cqe(void **state)
{
    (void)state;
    urio_loop_t *loop = test_loop_new();
    int sv[2];
    test_socketpair(sv);
    char *buf = malloc(64);
    urio_future_t *f = urio_recv_submit(loop, sv[1], buf, 64, 0, 0);
    urio_call_later(loop, 10 * MS, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    assert_true(urio_future_cancel(f));
    assert_false(urio_future_done(f));
    assert_int_equal(test_io_of(loop)->inflight, 1);
    assert_int_equal(urio_loop_run_until_complete(loop, f), -ECANCELED);
    assert_int_equal(test_io_of(loop)->inflight, 0);
    free(buf);      /* the kernel is done with it */
    urio_future_unref(f);
    close(sv[0]);
    close(sv[1]);
    test_loop_close(loop);
}

/* ------------------------------------------------------------------ */
/* Bad input                                                            */

static int bad_input_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    char buf[8];
    int sv[2];
    test_socketpair(sv);
    assert_int_equal(urio_recv(-1, buf, 8, 0, 0), -EBADF);
    assert_int_equal(urio_read(-5, buf, 8, 0, 0), -EBADF);
    assert_int_equal(urio_recv(sv[0], NULL, 8, 0, 0), -EINVAL);
    assert_int_equal(urio_send(sv[0], NULL, 1, 0, 0), -EINVAL);
    /* A "negative" length, and one over INT_MAX. */
    assert_int_equal(urio_read(sv[0], buf, (size_t)-1, 0, 0), -EINVAL);
    assert_int_equal(urio_write(sv[0], buf, (size_t)INT_MAX + 1, 0, 0), -EINVAL);
    assert_int_equal(urio_read(sv[0], buf, 8, -2, 0), -EINVAL);
    assert_int_equal(urio_readv(sv[0], NULL, 1, 0, 0), -EINVAL);
    struct iovec iov = { buf, 8 };
    assert_int_equal(urio_readv(sv[0], &iov, -1, 0, 0), -EINVAL);
    assert_int_equal(urio_writev(sv[0], &iov, 0, 0, 0), -EINVAL);
    assert_int_equal(urio_openat(AT_FDCWD, NULL, O_RDONLY, 0, 0), -EINVAL);
    assert_int_equal(urio_openat(-7, "x", O_RDONLY, 0, 0), -EBADF);
    assert_int_equal(urio_statx(AT_FDCWD, ".", 0, STATX_SIZE, NULL, 0), -EINVAL);
    assert_int_equal(urio_connect(sv[0], NULL, 16, 0), -EINVAL);
    struct sockaddr_in a = { .sin_family = AF_INET };
    assert_int_equal(urio_connect(sv[0], (struct sockaddr *)&a, 0, 0), -EINVAL);
    assert_int_equal(urio_connect(sv[0], (struct sockaddr *)&a, 4096, 0), -EINVAL);
    socklen_t l = 0;
    assert_int_equal(urio_accept(sv[0], (struct sockaddr *)&a, NULL, 0, 0), -EINVAL);
    (void)l;
    assert_int_equal(urio_shutdown(sv[0], 7, 0), -EINVAL);
    assert_int_equal(urio_shutdown(sv[0], -1, 0), -EINVAL);
    assert_int_equal(urio_poll(sv[0], 0, 0), -EINVAL);
    assert_int_equal(urio_fallocate(sv[0], 0, -1, 10, 0), -EINVAL);
    assert_int_equal(urio_recvmsg(sv[0], NULL, 0, 0), -EINVAL);
    /* An fd number nobody opened: the kernel's -EBADF, through the ring. */
    assert_int_equal(urio_recv(999, buf, 8, 0, 0), -EBADF);
    assert_int_equal(urio_close(999, 0), -EBADF);
    /* A length of 0 is not an error. */
    assert_int_equal(urio_send(sv[0], NULL, 0, 0, 0), 0);
    close(sv[0]);
    close(sv[1]);
    return 0;
}

static void test_io_bad_input(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(bad_input_task, NULL), 0);
    /* The task form outside a task. */
    char b[4];
    assert_int_equal(urio_recv(0, b, 4, 0, 0), -EPERM);
    assert_int_equal(urio_openat(AT_FDCWD, "x", 0, 0, 0), -EPERM);
    assert_fds(fds);
}

/* Addresses as reports and peernames show them, every family. */
static void test_io_addr_format(void **state)
{
    (void)state;
    char buf[128];
    struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(80) };
    inet_pton(AF_INET, "10.1.2.3", &in.sin_addr);
    assert_string_equal(urio__addr_format((struct sockaddr *)&in, sizeof in, buf, sizeof buf),
                        "10.1.2.3:80");
    struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(443) };
    inet_pton(AF_INET6, "2001:db8::1", &in6.sin6_addr);
    assert_string_equal(urio__addr_format((struct sockaddr *)&in6, sizeof in6, buf, sizeof buf),
                        "[2001:db8::1]:443");
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    socklen_t base = (socklen_t)offsetof(struct sockaddr_un, sun_path);
    assert_string_equal(urio__addr_format((struct sockaddr *)&un, base, buf, sizeof buf),
                        "unix:(unnamed)");
    memcpy(un.sun_path, "\0srv", 4);                    /* abstract: no NUL at its end */
    assert_string_equal(urio__addr_format((struct sockaddr *)&un, base + 4, buf, sizeof buf),
                        "unix:@srv");
    strcpy(un.sun_path, "/run/x.sock");
    assert_string_equal(urio__addr_format((struct sockaddr *)&un, sizeof un, buf, sizeof buf),
                        "unix:/run/x.sock");
    struct sockaddr other = { .sa_family = AF_PACKET };
    assert_string_equal(urio__addr_format(&other, sizeof other, buf, sizeof buf), "<family 17>");
    assert_string_equal(urio__addr_format(NULL, 0, buf, sizeof buf), "?");
    in.sin_family = AF_INET;                            /* too short for its family */
    assert_string_equal(urio__addr_format((struct sockaddr *)&in, 4, buf, sizeof buf),
                        "<family 2>");
}

/*
 * Every operation, in both forms, through the ring on an fd nobody opened
 * (999: the kernel's -EBADF): the task form returns it, the _submit form's
 * future ends with it (both forms share their checks and their op, and a
 * form nothing calls would be a wrapper nothing proves).
 */
#define NOFD 999

static int expect_both(int task_form, urio_future_t *f, int want, const char *what)
{
    if (task_form != want)
        fail_msg("%s (task form): %d, not %d", what, task_form, want);
    if (f == NULL)
        fail_msg("%s (_submit form): NULL, errno %d", what, errno);
    assert_int_equal(urio_await(f, NULL), want);
    assert_int_equal(urio_io_result(f), want);
    urio_future_unref(f);
    return 0;
}

static int every_op_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_loop_t *l = urio_loop_current();
    char buf[8];
    struct iovec iov = { buf, sizeof buf };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t salen = sizeof sa;
    struct statx stx;
    const int E = -EBADF;
    expect_both(urio_openat(NOFD, "x", O_RDONLY, 0, 0),
                urio_openat_submit(l, NOFD, "x", O_RDONLY, 0, 0), E, "openat");
    expect_both(urio_read(NOFD, buf, 8, 0, 0), urio_read_submit(l, NOFD, buf, 8, 0, 0), E, "read");
    expect_both(urio_write(NOFD, buf, 8, 0, 0), urio_write_submit(l, NOFD, buf, 8, 0, 0), E,
                "write");
    expect_both(urio_readv(NOFD, &iov, 1, 0, 0), urio_readv_submit(l, NOFD, &iov, 1, 0, 0), E,
                "readv");
    expect_both(urio_writev(NOFD, &iov, 1, 0, 0), urio_writev_submit(l, NOFD, &iov, 1, 0, 0), E,
                "writev");
    expect_both(urio_fsync(NOFD, 0), urio_fsync_submit(l, NOFD, 0), E, "fsync");
    expect_both(urio_fdatasync(NOFD, 0), urio_fdatasync_submit(l, NOFD, 0), E, "fdatasync");
    expect_both(urio_fallocate(NOFD, 0, 0, 4096, 0), urio_fallocate_submit(l, NOFD, 0, 0, 4096, 0),
                E, "fallocate");
    expect_both(urio_statx(NOFD, "x", 0, STATX_SIZE, &stx, 0),
                urio_statx_submit(l, NOFD, "x", 0, STATX_SIZE, &stx, 0), E, "statx");
    expect_both(urio_unlinkat(NOFD, "x", 0, 0), urio_unlinkat_submit(l, NOFD, "x", 0, 0), E,
                "unlinkat");
    expect_both(urio_renameat(NOFD, "x", NOFD, "y", 0, 0),
                urio_renameat_submit(l, NOFD, "x", NOFD, "y", 0, 0), E, "renameat");
    expect_both(urio_mkdirat(NOFD, "x", 0700, 0), urio_mkdirat_submit(l, NOFD, "x", 0700, 0), E,
                "mkdirat");
    expect_both(urio_close(NOFD, 0), urio_close_submit(l, NOFD, 0), E, "close");
    expect_both(urio_connect(NOFD, (struct sockaddr *)&sa, sizeof sa, 0),
                urio_connect_submit(l, NOFD, (struct sockaddr *)&sa, sizeof sa, 0), E, "connect");
    expect_both(urio_accept(NOFD, (struct sockaddr *)&sa, &salen, 0, 0),
                urio_accept_submit(l, NOFD, (struct sockaddr *)&sa, &salen, 0, 0), E, "accept");
    expect_both(urio_send(NOFD, buf, 8, 0, 0), urio_send_submit(l, NOFD, buf, 8, 0, 0), E, "send");
    expect_both(urio_recv(NOFD, buf, 8, 0, 0), urio_recv_submit(l, NOFD, buf, 8, 0, 0), E, "recv");
    expect_both(urio_sendmsg(NOFD, &msg, 0, 0), urio_sendmsg_submit(l, NOFD, &msg, 0, 0), E,
                "sendmsg");
    expect_both(urio_recvmsg(NOFD, &msg, 0, 0), urio_recvmsg_submit(l, NOFD, &msg, 0, 0), E,
                "recvmsg");
    expect_both(urio_shutdown(NOFD, SHUT_WR, 0), urio_shutdown_submit(l, NOFD, SHUT_WR, 0), E,
                "shutdown");
    expect_both(urio_poll(NOFD, POLLIN, 0), urio_poll_submit(l, NOFD, POLLIN, 0), E, "poll");
    /* socket: no fd to get wrong; a family the kernel does not know. */
    expect_both(urio_socket(-1, SOCK_STREAM, 0, 0), urio_socket_submit(l, -1, SOCK_STREAM, 0, 0),
                -EAFNOSUPPORT, "socket");
    return 0;
}

static void test_io_every_op_both_forms(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_true(fcntl(NOFD, F_GETFD) < 0);      /* nobody opened it */
    assert_int_equal(test_run_task(every_op_task, NULL), 0);
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* Closing the loop with I/O in flight                                  */

/* On its own thread: every op is cancelled and its CQE waited for; the future ends cancelled. */
static void test_io_loop_close_drains(void **state)
{
    (void)state;
    int fds = test_count_fds();
    urio_loop_t *loop = test_loop_new();
    int sv[2];
    test_socketpair(sv);
    char *buf = malloc(64);
    urio_future_t *f = urio_recv_submit(loop, sv[1], buf, 64, 0, 0);
    urio_call_later(loop, 5 * MS, test_stop_cb, loop);
    urio_loop_run_forever(loop);
    test_loop_close(loop);
    assert_true(urio_future_cancelled(f));
    free(buf);
    urio_future_unref(f);
    close(sv[0]);
    close(sv[1]);
    assert_fds(fds);
}

struct foreign {
    urio_loop_t *loop;
    int sv[2];
    char *buf;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int phase;                   /* 1: the loop stopped; 2: the main thread tried; 3: closed */
    int close_ret;
};

static int foreign_reader(void *arg, void **res)
{
    (void)res;
    struct foreign *fo = arg;
    return urio_recv(fo->sv[1], fo->buf, 64, 0, 0);
}

static void set_phase(struct foreign *fo, int p)
{
    pthread_mutex_lock(&fo->mu);
    fo->phase = p;
    pthread_cond_broadcast(&fo->cv);
    pthread_mutex_unlock(&fo->mu);
}

static void wait_phase(struct foreign *fo, int p)
{
    pthread_mutex_lock(&fo->mu);
    while (fo->phase < p)
        pthread_cond_wait(&fo->cv, &fo->mu);
    pthread_mutex_unlock(&fo->mu);
}

static void *foreign_thread(void *arg)
{
    struct foreign *fo = arg;
    urio_future_t *t = urio_spawn(fo->loop, foreign_reader, fo);
    urio_call_later(fo->loop, 10 * MS, test_stop_cb, fo->loop);
    urio_loop_run_forever(fo->loop);
    urio_future_unref(t);
    set_phase(fo, 1);
    wait_phase(fo, 2);
    /* The thread that ran it can close it: the drain waits for the kernel. */
    fo->close_ret = urio_loop_close(fo->loop);
    set_phase(fo, 3);
    return NULL;
}

/*
 * Another thread cannot drain the ring (only its issuer may enter it), and
 * tearing it down would free buffers the kernel may still write: the close
 * is refused with -EBUSY and an ERROR that says where to close it.
 */
static void test_io_loop_close_from_other_thread(void **state)
{
    (void)state;
    int fds = test_count_fds();
    struct foreign fo = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
    fo.loop = test_loop_new();
    test_socketpair(fo.sv);
    fo.buf = malloc(64);
    memset(fo.buf, '.', 64);
    test_log_capture();
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, foreign_thread, &fo), 0);
    wait_phase(&fo, 1);
    assert_int_equal(urio_loop_close(fo.loop), -EBUSY);
    assert_log_contains("I/O operations are in flight and this thread is not the loop's");
    /* The read is still the kernel's: data sent now lands in its buffer, which is alive. */
    assert_int_equal(write(fo.sv[0], "xy", 2), 2);
    set_phase(&fo, 2);
    wait_phase(&fo, 3);
    pthread_join(th, NULL);
    assert_int_equal(fo.close_ret, 0);
    assert_log_contains("Task was destroyed but it is pending!");
    free(fo.buf);
    close(fo.sv[0]);
    close(fo.sv[1]);
    assert_fds(fds);
}

/* Without I/O in flight another thread may close it, as before. */
static int one_read(void *arg, void **res)
{
    (void)res;
    int *sv = arg;
    char b[4];
    return urio_recv(sv[1], b, sizeof b, 0, 0) == 4 ? 0 : -EIO;
}

struct idle_run {
    urio_loop_t *loop;
    int *sv;
    int ret;
};

static void *run_one_read(void *arg)
{
    struct idle_run *ir = arg;
    urio_future_t *t = urio_spawn(ir->loop, one_read, ir->sv);
    ir->ret = urio_loop_run_until_complete(ir->loop, t);
    urio_future_unref(t);
    return NULL;
}

static void test_io_loop_close_from_other_thread_idle(void **state)
{
    (void)state;
    int fds = test_count_fds();
    urio_loop_t *loop = test_loop_new();
    int sv[2];
    test_socketpair(sv);
    assert_int_equal(write(sv[0], "done", 4), 4);
    struct idle_run ir = { loop, sv, -1 };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_one_read, &ir), 0);
    pthread_join(th, NULL);
    assert_int_equal(ir.ret, 0);
    test_loop_close(loop);
    close(sv[0]);
    close(sv[1]);
    assert_fds(fds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        IO_TEST(test_io_files),
        IO_TEST(test_io_file_position),
        IO_TEST(test_io_file_odirect),
        IO_TEST(test_io_sockets),
        IO_TEST(test_io_sockets_fallback),
        IO_TEST(test_io_future_form),
        IO_TEST(test_io_deadline),
        IO_TEST(test_io_cancel_mid_recv),
        IO_TEST(test_io_cancel_mid_send),
        IO_TEST(test_io_cancel_loses_race),
        IO_TEST(test_io_cancel_future_waits_for_cqe),
        IO_TEST(test_io_bad_input),
        IO_TEST(test_io_every_op_both_forms),
        IO_TEST(test_io_addr_format),
        IO_TEST(test_io_loop_close_drains),
        IO_TEST(test_io_loop_close_from_other_thread),
        IO_TEST(test_io_loop_close_from_other_thread_idle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
