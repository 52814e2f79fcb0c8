/*
 * tests/test_io_helpers.h — what the I/O tests share: counting open fds
 * (every test ends with none left over), running a coroutine as a task of a
 * test's own loop, connected socket pairs, filling a socket's buffers.
 */
#ifndef URIO_TEST_IO_HELPERS_H
#define URIO_TEST_IO_HELPERS_H

#include "helpers.h"
#include "io.h"     /* lib/: the I/O layer's internals (tests only) */

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Open fds of this process. */
static inline int test_count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;   /* opendir's own */
}

/* Asserts fds are back to `before`, naming what is left open. */
#define assert_fds(before)                                                          \
    do {                                                                            \
        int now_ = test_count_fds();                                                \
        if (now_ != (before))                                                       \
            fail_msg("%d fds open, %d before the test", now_, (before));            \
    } while (0)

/* Runs fn(arg) as a task of a new loop to its end; returns its outcome. */
static inline int test_run_task_opts(urio_coro_fn fn, void *arg, const urio_loop_opts_t *opts)
{
    urio_loop_t *loop = test_loop_new_opts(opts);
    urio_future_t *t = urio_task_create(loop, urio_coro_create(fn, arg, URIO_SITE(fn)));
    assert_non_null(t);
    int ret = urio_loop_run_until_complete(loop, t);
    urio_future_unref(t);
    test_loop_close(loop);
    return ret;
}

static inline int test_run_task(urio_coro_fn fn, void *arg)
{
    return test_run_task_opts(fn, arg, NULL);
}

/* A connected pair of stream sockets (AF_UNIX), close-on-exec. */
static inline void test_socketpair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

/* A connected pair of TCP sockets over loopback: sv[0] the client, sv[1] the server side. */
static inline void test_tcp_pair(int sv[2])
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(l >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(l, 1), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &len), 0);
    sv[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(sv[0], (struct sockaddr *)&a, sizeof a), 0);
    sv[1] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    assert_true(sv[1] >= 0);
    close(l);
}

/* Fills fd's send buffer (and the peer's receive buffer) until a send would block. */
static inline size_t test_fill_socket(int fd)
{
    static char junk[65536];
    size_t total = 0;
    for (;;) {
        ssize_t n = send(fd, junk, sizeof junk, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n <= 0)
            break;
        total += (size_t)n;
    }
    return total;
}

/* Reads exactly n bytes from a blocking fd (the test's own side of a socket). */
static inline void test_read_all(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        assert_true(r > 0);
        got += (size_t)r;
    }
}

/* The loop's io state (the tests look at what is in flight). */
static inline urio__io_t *test_io_of(urio_loop_t *loop)
{
    urio__io_t *io = urio__io_get(loop);
    assert_non_null(io);
    return io;
}

#endif
