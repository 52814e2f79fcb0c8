/*
 * test_io_stream.c — streams, servers and connections (urio/stream.h): echo
 * round trips over TCP (IPv4, IPv6, dual-stack, a name) and Unix sockets,
 * 1 MiB both ways, half-close, peer reset, connect refused / timed out /
 * unknown host, read_until's limits, backpressure both ways, cancellation
 * and deadlines of reads, graceful server close, EMFILE on accept, 10,000
 * connections on one loop, the fallbacks, unclosed-stream reports, bad input.
 */
#include "test_io_helpers.h"

#include <arpa/inet.h>
#include <limits.h>
#include <signal.h>
#include <sys/un.h>
#include <sys/wait.h>


/* The echo handler: every byte back, until EOF. */
static int echo(urio_stream_t *s, void *arg)
{
    (void)arg;
    char buf[16384];
    for (;;) {
        int n = urio_stream_read(s, buf, sizeof buf, 0);
        if (n <= 0)
            return n;
        int err = urio_stream_write(s, buf, (size_t)n);
        if (err == 0)
            err = urio_stream_drain(s, 0);
        if (err < 0)
            return err;
    }
}

/* Closes srv and waits for its connections. */
static void server_done(urio_server_t *srv)
{
    urio_server_close(srv);
    assert_int_equal(urio_server_wait_closed(srv, urio_deadline_in(5 * SEC)), 0);
    urio_server_free(srv);
}

/* n line round trips to host:port. */
static void roundtrips(const char *host, int port, int n)
{
    urio_stream_t *c = NULL;
    int err = urio_open_connection(&c, host, port, urio_deadline_in(5 * SEC));
    if (err < 0)
        fail_msg("connect %s:%d: %s (%s)", host, port, urio_strerror(err),
                 urio_io_error_message() ? urio_io_error_message() : "");
    char line[64], back[64];
    for (int i = 0; i < n; i++) {
        int len = snprintf(line, sizeof line, "line %d\n", i);
        assert_int_equal(urio_stream_write(c, line, (size_t)len), 0);
        assert_int_equal(urio_stream_read_until(c, "\n", 1, back, sizeof back, 0), len);
        assert_memory_equal(back, line, (size_t)len);
    }
    urio_stream_close(c);
}

/* ------------------------------------------------------------------ */
/* Round trips                                                          */

static int echo_v4_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_server_t *srv;
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", 0, echo, NULL, NULL), 0);
    int port = urio_server_port(srv);
    assert_true(port > 0);
    roundtrips("127.0.0.1", port, 1000);
    server_done(srv);
    return 0;
}

static void test_io_stream_echo_roundtrips(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(echo_v4_task, NULL), 0);
    assert_fds(fds);
}

/* The wildcard listens dual-stack: IPv4 and IPv6 clients, and a name resolved off the loop. */
static int dual_stack_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_server_t *srv;
    assert_int_equal(urio_server_new(&srv, NULL, 0, echo, NULL, NULL), 0);
    int port = urio_server_port(srv);
    roundtrips("127.0.0.1", port, 3);
    roundtrips("::1", port, 3);
    roundtrips("localhost", port, 3);
    server_done(srv);
    /* IPv6 only, on ::1. */
    assert_int_equal(urio_server_new(&srv, "::1", 0, echo, NULL, NULL), 0);
    roundtrips("::1", urio_server_port(srv), 3);
    urio_stream_t *c;
    assert_int_equal(urio_open_connection(&c, "127.0.0.1", urio_server_port(srv), 0),
                     -ECONNREFUSED);
    server_done(srv);
    /* A name: listens on each of its addresses. */
    assert_int_equal(urio_server_new(&srv, "localhost", 0, echo, NULL, NULL), 0);
    roundtrips("localhost", urio_server_port(srv), 3);
    server_done(srv);
    return 0;
}

static void test_io_stream_dual_stack_and_names(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(dual_stack_task, NULL), 0);
    assert_fds(fds);
}

static int unix_task(void *arg, void **res)
{
    (void)res;
    const char *path = arg;
    urio_server_t *srv;
    assert_int_equal(urio_server_new_unix(&srv, path, echo, NULL, NULL), 0);
    assert_int_equal(urio_server_port(srv), 0);
    urio_stream_t *c;
    assert_int_equal(urio_open_unix_connection(&c, path, 0), 0);
    char peer[128];
    assert_string_equal(urio_stream_peername(c, peer, sizeof peer), "unix:test_io_stream.sock");
    assert_int_equal(urio_stream_write(c, "unix\n", 5), 0);
    char back[8];
    assert_int_equal(urio_stream_read_until(c, "\n", 1, back, sizeof back, 0), 5);
    assert_memory_equal(back, "unix\n", 5);
    urio_stream_close(c);
    server_done(srv);
    /* The socket file goes with the server. */
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(urio_open_unix_connection(&c, path, 0), -ENOENT);
    return 0;
}

static void test_io_stream_unix(void **state)
{
    (void)state;
    int fds = test_count_fds();
    const char *path = "test_io_stream.sock";
    unlink(path);
    assert_int_equal(test_run_task(unix_task, (void *)path), 0);
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* Large transfers, half-close, reset                                   */

#define BIG (1024 * 1024)

static int big_client(void *arg, void **res)
{
    (void)res;
    int port = (int)(intptr_t)arg;
    urio_stream_t *c;
    assert_int_equal(urio_open_connection(&c, "127.0.0.1", port, 0), 0);
    unsigned char *out = malloc(BIG), *in = malloc(BIG);
    for (int i = 0; i < BIG; i++)
        out[i] = (unsigned char)(i * 31 + (i >> 11));
    /* All of it buffered at once, then read back while it goes. */
    assert_int_equal(urio_stream_write(c, out, BIG), 0);
    assert_int_equal(urio_stream_write_buffered(c) > 0, true);
    assert_int_equal(urio_stream_read_exactly(c, in, BIG, urio_deadline_in(30 * SEC)), BIG);
    assert_memory_equal(in, out, BIG);
    assert_int_equal(urio_stream_drain(c, 0), 0);
    assert_int_equal(urio_stream_write_buffered(c), 0);
    free(out);
    free(in);
    urio_stream_close(c);
    return 0;
}

static int big_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_server_t *srv;
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", 0, echo, NULL, NULL), 0);
    urio_future_t *t = urio_spawn(urio_loop_current(), big_client,
                                  (void *)(intptr_t)urio_server_port(srv));
    assert_int_equal(urio_await(t, NULL), 0);
    urio_future_unref(t);
    server_done(srv);
    return 0;
}

static void test_io_stream_1mib_both_ways(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(big_task, NULL), 0);
    urio__io_force_fallback = 1;    /* the same through one-shot receives and accepts */
    assert_int_equal(test_run_task(big_task, NULL), 0);
    urio__io_force_fallback = 0;
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* Write buffers: a big write's memory is not kept; an abort's late send  */

static int wbuf_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    urio_stream_t *a, *b;
    assert_int_equal(urio_stream_new(&a, urio_loop_current(), sv[0]), 0);
    assert_int_equal(urio_stream_new(&b, urio_loop_current(), sv[1]), 0);
    unsigned char *out = malloc(BIG), *in = malloc(BIG);
    memset(out, 0x5a, BIG);
    /* A small reply: its buffer is kept for the next ones. */
    assert_int_equal(urio_stream_write(a, out, 100), 0);
    assert_int_equal(urio_stream_read_exactly(b, in, 100, urio_deadline_in(5 * SEC)), 100);
    assert_int_equal(urio_stream_drain(a, urio_deadline_in(5 * SEC)), 0);
    assert_true(a->out.cap > 0 && a->out.cap <= 64 * 1024);
    /* A megabyte: sent, then its buffers go (they would stay for the connection's life). */
    assert_int_equal(urio_stream_write(a, out, BIG), 0);
    assert_int_equal(urio_stream_write(a, out, 1000), 0);      /* while a send is out: pend */
    assert_int_equal(urio_stream_read_exactly(b, in, BIG, urio_deadline_in(30 * SEC)), BIG);
    assert_int_equal(urio_stream_read_exactly(b, in, 1000, urio_deadline_in(5 * SEC)), 1000);
    assert_int_equal(urio_stream_drain(a, urio_deadline_in(5 * SEC)), 0);
    assert_true(a->out.cap <= 64 * 1024);
    assert_true(a->pend.cap <= 64 * 1024);
    assert_int_equal(urio_stream_write_buffered(a), 0);

    /*
     * An abort while a send is stuck (b reads nothing): the send's late
     * CQE may still count bytes; the dropped buffers must not count them
     * (the buffered count wrapped to a huge size_t).
     */
    assert_int_equal(urio_stream_write(a, out, BIG), 0);
    urio_sleep(10 * MS);                        /* the send is in the kernel, partly done */
    a->refs++;                                  /* keep it readable past the abort */
    urio_stream_abort(a);
    for (int i = 0; i < 100 && a->wop.state != URIO__OP_IDLE; i++)
        urio_sleep(MS);
    assert_int_equal(a->wop.state, URIO__OP_IDLE);
    assert_int_equal(urio_stream_write_buffered(a), 0);
    urio__stream_unref(a);
    urio_stream_close(b);
    free(out);
    free(in);
    return 0;
}

static void test_io_stream_write_buffers(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(wbuf_task, NULL), 0);
    assert_fds(fds);
}

/* Reads to EOF, then answers with how many bytes came. */
static int count_then_answer(urio_stream_t *s, void *arg)
{
    (void)arg;
    char buf[256];
    int total = 0, n;
    while ((n = urio_stream_read(s, buf, sizeof buf, 0)) > 0)
        total += n;
    assert_int_equal(n, 0);
    assert_true(urio_stream_at_eof(s));
    int len = snprintf(buf, sizeof buf, "got %d", total);
    urio_stream_write(s, buf, (size_t)len);
    return 0;       /* the server closes it: flushed first */
}

static int half_close_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_server_t *srv;
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", 0, count_then_answer, NULL, NULL), 0);
    urio_stream_t *c;
    assert_int_equal(urio_open_connection(&c, "127.0.0.1", urio_server_port(srv), 0), 0);
    assert_int_equal(urio_stream_write(c, "0123456789", 10), 0);
    assert_int_equal(urio_stream_write_eof(c), 0);
    assert_int_equal(urio_stream_write(c, "x", 1), -EPIPE);
    char buf[32] = { 0 };
    assert_int_equal(urio_stream_read_exactly(c, buf, 6, urio_deadline_in(5 * SEC)), 6);
    assert_string_equal(buf, "got 10");
    assert_int_equal(urio_stream_read(c, buf, sizeof buf, urio_deadline_in(5 * SEC)), 0);
    urio_stream_close(c);
    server_done(srv);
    return 0;
}

static void test_io_stream_half_close(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(half_close_task, NULL), 0);
    assert_fds(fds);
}

static int resetter(urio_stream_t *s, void *arg)
{
    (void)arg;
    char b[4];
    assert_int_equal(urio_stream_read_exactly(s, b, 4, 0), 4);
    urio_stream_abort(s);
    return 0;
}

static int reset_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_server_t *srv;
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", 0, resetter, NULL, NULL), 0);
    urio_stream_t *c;
    assert_int_equal(urio_open_connection(&c, "127.0.0.1", urio_server_port(srv), 0), 0);
    assert_int_equal(urio_stream_write(c, "boom", 4), 0);
    char b[8];
    assert_int_equal(urio_stream_read(c, b, sizeof b, urio_deadline_in(5 * SEC)), -ECONNRESET);
    /* Sticky: every read says so; writes fail too once a send saw it. */
    assert_int_equal(urio_stream_read(c, b, sizeof b, 0), -ECONNRESET);
    int w = 0;
    for (int i = 0; i < 100 && w == 0; i++) {
        w = urio_stream_write(c, "x", 1);
        if (w == 0)
            w = urio_stream_drain(c, 0);
        urio_sleep(MS);
    }
    assert_true(w == -EPIPE || w == -ECONNRESET);
    urio_stream_close(c);
    server_done(srv);
    return 0;
}

static void test_io_stream_peer_reset(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(reset_task, NULL), 0);
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* Connecting: refused, timed out, unknown host                         */

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    bind(s, (struct sockaddr *)&a, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &len);
    close(s);
    return ntohs(a.sin_port);
}

static int refused_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    int port = free_port();
    urio_stream_t *c = (urio_stream_t *)1;
    assert_int_equal(urio_open_connection(&c, "127.0.0.1", port, urio_deadline_in(5 * SEC)),
                     -ECONNREFUSED);
    assert_null(c);
    char want[128];
    snprintf(want, sizeof want, "connection to 127.0.0.1:%d (127.0.0.1:%d) refused", port, port);
    assert_string_equal(urio_io_error_message(), want);
    /* Through a name: the message names it. */
    assert_int_equal(urio_open_connection(&c, "localhost", port, 0), -ECONNREFUSED);
    assert_non_null(strstr(urio_io_error_message(), "localhost"));
    return 0;
}

static void test_io_stream_connect_refused(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(refused_task, NULL), 0);
    assert_fds(fds);
}

/*
 * A listener whose accept queue is full drops new SYNs: a connect to it
 * hangs until its deadline.
 */
static int timeout_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(l, 0), 0);
    getsockname(l, (struct sockaddr *)&a, &len);
    int port = ntohs(a.sin_port);
    urio_stream_t *held[8] = { 0 };
    int err = 0, n = 0;
    uint64_t took = 0;
    for (; n < 8; n++) {
        uint64_t t0 = urio__now();
        err = urio_open_connection(&held[n], "127.0.0.1", port, urio_deadline_in(200 * MS));
        took = urio__now() - t0;
        if (err < 0)
            break;
    }
    assert_int_equal(err, -ETIMEDOUT);
    assert_true(took >= 200 * MS && took < 5 * SEC);
    assert_non_null(strstr(urio_io_error_message(), "timed out"));
    assert_non_null(strstr(urio_io_error_message(), "127.0.0.1"));
    for (int i = 0; i < n; i++)
        urio_stream_close(held[i]);
    close(l);
    return 0;
}

static void test_io_stream_connect_timeout(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(timeout_task, NULL), 0);
    /* The closes go out through the ring before the loop closed. */
    assert_fds(fds);
}

static int unknown_host_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_stream_t *c;
    int err = urio_open_connection(&c, "no-such-host.invalid", 80, urio_deadline_in(10 * SEC));
    if (err == -EAGAIN)
        return 1;       /* no resolver here at all: not this test's business */
    assert_int_equal(err, URIO_ENOHOST);
    assert_non_null(strstr(urio_io_error_message(), "no such host: 'no-such-host.invalid'"));
    assert_string_equal(urio_strerror_name(err), "URIO_ENOHOST");
    return 0;
}

/* A connect cancelled while its name is looked up: nothing leaks, whenever the lookup ends. */
static int resolving(void *arg, void **res)
{
    (void)res;
    urio_stream_t *c = NULL;
    int err = urio_open_connection(&c, "localhost", (int)(intptr_t)arg, 0);
    if (err == 0)
        urio_stream_close(c);
    return err;
}

static int cancel_lookup_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_server_t *srv;
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", 0, echo, NULL, NULL), 0);
    void *port = (void *)(intptr_t)urio_server_port(srv);
    /* Cancelled at once (the lookup's job queued), and a little later (running or done). */
    for (int delay = 0; delay < 3; delay++) {
        urio_future_t *t = urio_spawn(urio_loop_current(), resolving, port);
        if (delay)
            urio_sleep((uint64_t)delay * 100 * US);
        else
            urio_yield();
        urio_future_cancel(t);
        int err = urio_await(t, NULL);
        assert_true(err == -ECANCELED || err == 0);
        urio_future_unref(t);
    }
    server_done(srv);
    return 0;
}

static void test_io_stream_cancel_during_lookup(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(cancel_lookup_task, NULL), 0);
    assert_fds(fds);
}

static void test_io_stream_unknown_host(void **state)
{
    (void)state;
    int ret = test_run_task(unknown_host_task, NULL);
    if (ret == 1)
        skip();
    assert_int_equal(ret, 0);
}

/* ------------------------------------------------------------------ */
/* read_until, read_exactly: limits and EOF keep the data               */

static int limits_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    int sv[2];
    test_socketpair(sv);
    urio_stream_t *s;
    assert_int_equal(urio_stream_new(&s, urio_loop_current(), sv[1]), 0);
    assert_int_equal(urio_stream_set_limit(s, 16), 0);
    char buf[64] = { 0 };
    /* Past the limit without a separator: URIO_ELIMIT, and the data stays. */
    assert_int_equal(write(sv[0], "0123456789abcdefghij", 20), 20);
    assert_int_equal(urio_stream_read_until(s, "\n", 1, buf, sizeof buf, urio_deadline_in(5 * SEC)),
                     URIO_ELIMIT);
    assert_non_null(strstr(urio_io_error_message(), "no separator within 16 bytes"));
    assert_int_equal(urio_stream_read_exactly(s, buf, 20, 0), 20);
    assert_memory_equal(buf, "0123456789abcdefghij", 20);
    /* A separator found, but past the caller's buffer: URIO_ELIMIT, data kept. */
    assert_int_equal(write(sv[0], "abcdefgh\n", 9), 9);
    assert_int_equal(urio_stream_read_until(s, "\n", 1, buf, 4, urio_deadline_in(5 * SEC)),
                     URIO_ELIMIT);
    assert_int_equal(urio_stream_read_until(s, "\n", 1, buf, sizeof buf, 0), 9);
    /* A multi-byte separator split across arrivals. */
    assert_int_equal(write(sv[0], "req\r", 4), 4);
    urio_sleep(2 * MS);
    assert_int_equal(write(sv[0], "\nnext", 5), 5);
    assert_int_equal(urio_stream_read_until(s, "\r\n", 2, buf, sizeof buf, 0), 5);
    assert_memory_equal(buf, "req\r\n", 5);
    /* EOF before the separator or the count: URIO_EINCOMPLETE, data kept. */
    shutdown(sv[0], SHUT_WR);
    assert_int_equal(urio_stream_read_until(s, "\n", 1, buf, sizeof buf, 0), URIO_EINCOMPLETE);
    assert_int_equal(urio_stream_read_exactly(s, buf, 10, 0), URIO_EINCOMPLETE);
    assert_non_null(strstr(urio_io_error_message(), "EOF after 4 of 10 bytes"));
    memset(buf, 0, sizeof buf);
    assert_int_equal(urio_stream_read(s, buf, sizeof buf, 0), 4);
    assert_string_equal(buf, "next");
    assert_int_equal(urio_stream_read(s, buf, sizeof buf, 0), 0);
    urio_stream_close(s);
    close(sv[0]);
    return 0;
}

static void test_io_stream_read_limits(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(limits_task, NULL), 0);
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* Backpressure                                                         */

/*
 * A peer that stops reading: write + drain holds the write buffer under
 * the high-water mark plus one write; drain blocks (here: times out) while
 * the peer does not read, and finishes once it does.
 */
static int backpressure_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    int sv[2];
    test_tcp_pair(sv);
    urio_stream_t *s;
    assert_int_equal(urio_stream_new(&s, urio_loop_current(), sv[0]), 0);
    assert_int_equal(urio_stream_set_write_buffer_limits(s, 32 * 1024, 8 * 1024), 0);
    static char chunk[8192];
    size_t most = 0;
    int timeouts = 0;
    for (int i = 0; i < 2000 && timeouts < 3; i++) {
        assert_int_equal(urio_stream_write(s, chunk, sizeof chunk), 0);
        size_t b = urio_stream_write_buffered(s);
        most = b > most ? b : most;
        /* A writer that respects the peer: no more writes while drain says wait. */
        int err;
        while ((err = urio_stream_drain(s, urio_deadline_in(20 * MS))) == -ETIMEDOUT &&
               ++timeouts < 3)
            ;
        assert_true(err == 0 || err == -ETIMEDOUT);
    }
    assert_int_equal(timeouts, 3);                       /* the peer's pace held us */
    assert_true(most <= 32 * 1024 + sizeof chunk);       /* flat, not 2000 chunks */
    /* The buffers' memory too: far from the 16 MB that 2000 chunks would take. */
    assert_true(s->out.cap + s->pend.cap <= 256 * 1024);
    /* The peer reads: the rest drains. */
    int fl = fcntl(sv[1], F_GETFL);
    fcntl(sv[1], F_SETFL, fl | O_NONBLOCK);
    for (int i = 0; i < 5000 && urio_stream_write_buffered(s) > 0; i++) {
        char sink[65536];
        while (read(sv[1], sink, sizeof sink) > 0)
            ;
        urio_sleep(MS);
    }
    assert_int_equal(urio_stream_write_buffered(s), 0);
    assert_int_equal(urio_stream_drain(s, 0), 0);
    urio_stream_close(s);
    close(sv[1]);
    return 0;
}

static void test_io_stream_backpressure(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(backpressure_task, NULL), 0);
    assert_fds(fds);
}

/* A reader that does not read: the stream stops receiving at twice its limit. */
static int read_pause_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    int sv[2];
    test_tcp_pair(sv);
    urio_stream_t *s;
    assert_int_equal(urio_stream_new(&s, urio_loop_current(), sv[1]), 0);
    assert_int_equal(urio_stream_set_limit(s, 8192), 0);
    size_t sent = test_fill_socket(sv[0]);
    for (int i = 0; i < 10; i++) {
        urio_sleep(2 * MS);
        sent += test_fill_socket(sv[0]);
    }
    size_t held = urio_stream_buffered(s);
    for (int i = 0; i < 10; i++) {
        urio_sleep(2 * MS);
        sent += test_fill_socket(sv[0]);
    }
    /*
     * Receiving stopped past 2 x limit: what the kernel had already received
     * in that entry (a multishot receive's burst: at most the loop's provided
     * buffers) came on top, then nothing more while the sender's side stays
     * full: flat, not growing with what it sends.
     */
    assert_true(held >= 2 * 8192);
    assert_int_equal(urio_stream_buffered(s), held);
    assert_true(held <= 2 * 8192 + URIO__BUF_COUNT * URIO__BUF_SIZE);
    assert_true(sent > held);
    /* Reading it all gets every byte, in order. */
    char *all = malloc(sent);
    assert_int_equal(urio_stream_read_exactly(s, all, sent, urio_deadline_in(10 * SEC)),
                     (int)sent);
    free(all);
    urio_stream_close(s);
    close(sv[0]);
    return 0;
}

static void test_io_stream_read_pauses(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(read_pause_task, NULL), 0);
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* Cancellation and deadlines of reads                                  */

struct reader_state {
    urio_stream_t *s;
    int ret;
};

static int blocked_reader(void *arg, void **res)
{
    (void)res;
    struct reader_state *rs = arg;
    char b[16];
    rs->ret = urio_stream_read(rs->s, b, sizeof b, 0);
    return rs->ret;
}

static int cancel_read_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    int sv[2];
    test_socketpair(sv);
    urio_stream_t *s;
    assert_int_equal(urio_stream_new(&s, urio_loop_current(), sv[1]), 0);
    struct reader_state rs = { s, 1 };
    urio_future_t *t = urio_spawn(urio_loop_current(), blocked_reader, &rs);
    urio_sleep(5 * MS);
    /* A second reader is refused while one waits. */
    char b[16] = { 0 };
    assert_int_equal(urio_stream_read(s, b, sizeof b, 0), -EBUSY);
    urio_future_cancel(t);
    assert_int_equal(urio_await(t, NULL), -ECANCELED);
    assert_int_equal(rs.ret, -ECANCELED);
    urio_future_unref(t);
    /* The stream goes on: what comes later is read whole. */
    assert_int_equal(write(sv[0], "after", 5), 5);
    assert_int_equal(urio_stream_read(s, b, sizeof b, urio_deadline_in(5 * SEC)), 5);
    assert_string_equal(b, "after");
    /* A deadline: -ETIMEDOUT, and data that comes later is kept. */
    uint64_t t0 = urio__now();
    assert_int_equal(urio_stream_read(s, b, sizeof b, urio_deadline_in(20 * MS)), -ETIMEDOUT);
    assert_true(urio__now() - t0 >= 20 * MS);
    assert_int_equal(write(sv[0], "kept", 4), 4);
    memset(b, 0, sizeof b);
    assert_int_equal(urio_stream_read(s, b, sizeof b, urio_deadline_in(5 * SEC)), 4);
    assert_string_equal(b, "kept");
    /* Closing the stream under a waiting reader wakes it with -EBADF. */
    rs.ret = 1;
    t = urio_spawn(urio_loop_current(), blocked_reader, &rs);
    urio_sleep(2 * MS);
    urio_stream_close(s);
    urio_await(t, NULL);
    assert_int_equal(rs.ret, -EBADF);
    urio_future_unref(t);
    close(sv[0]);
    return 0;
}

static void test_io_stream_cancel_and_deadline(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(cancel_read_task, NULL), 0);
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* Graceful server close                                                */

static int handler_ended;

/* Answers one line, or waits for one forever. */
static int slow_handler(urio_stream_t *s, void *arg)
{
    (void)arg;
    char buf[64];
    int n = urio_stream_read_until(s, "\n", 1, buf, sizeof buf, 0);
    if (n > 0)
        urio_stream_write(s, buf, (size_t)n);
    handler_ended++;
    return n < 0 ? n : 0;
}

static void count_errors(urio_loop_t *loop, const urio_error_context_t *ctx, void *ud)
{
    (void)loop;
    (void)ctx;
    ++*(int *)ud;
}

static int graceful_task(void *arg, void **res)
{
    (void)res;
    int *reports = arg;
    urio_loop_set_exception_handler(urio_loop_current(), count_errors, reports);
    urio_server_t *srv;
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", 0, slow_handler, NULL, NULL), 0);
    int port = urio_server_port(srv);
    urio_stream_t *c[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(urio_open_connection(&c[i], "127.0.0.1", port, 0), 0);
    for (int i = 0; i < 50 && urio_server_connections(srv) < 3; i++)
        urio_sleep(MS);
    assert_int_equal(urio_server_connections(srv), 3);
    urio_server_close(srv);
    urio_sleep(5 * MS);     /* the listening socket closes through the ring, in the next turns */
    /* No more accepting... */
    urio_stream_t *late;
    assert_int_equal(urio_open_connection(&late, "127.0.0.1", port, urio_deadline_in(SEC)),
                     -ECONNREFUSED);
    /* ...one connection finishes within the grace period, two are cancelled after it. */
    assert_int_equal(urio_stream_write(c[0], "bye\n", 4), 0);
    handler_ended = 0;
    assert_int_equal(urio_server_wait_closed(srv, urio_deadline_in(50 * MS)), -ETIMEDOUT);
    assert_int_equal(urio_server_connections(srv), 0);
    assert_int_equal(handler_ended, 3);
    char buf[8];
    assert_int_equal(urio_stream_read_until(c[0], "\n", 1, buf, sizeof buf, 0), 4);
    for (int i = 1; i < 3; i++)
        assert_int_equal(urio_stream_read(c[i], buf, sizeof buf, urio_deadline_in(SEC)), 0);
    for (int i = 0; i < 3; i++)
        urio_stream_close(c[i]);
    urio_server_free(srv);
    return 0;
}

static void test_io_server_graceful_close(void **state)
{
    (void)state;
    int fds = test_count_fds();
    int reports = 0;
    assert_int_equal(test_run_task(graceful_task, &reports), 0);
    assert_int_equal(reports, 0);   /* cancelled handlers end cancelled: nothing to report */
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* EMFILE on accept                                                     */

#define EMFILE_CLIENTS 12

static int emfile_handler(urio_stream_t *s, void *arg)
{
    (void)arg;
    char b[1];
    if (urio_stream_read_exactly(s, b, 1, 0) == 1)
        urio_stream_write(s, b, 1);
    urio_sleep(5 * MS);     /* hold the fd a little */
    return 0;
}

static int emfile_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_server_t *srv;
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", 0, emfile_handler, NULL, NULL), 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                             .sin_port = htons((uint16_t)urio_server_port(srv)) };
    /* Client sockets first: they exist before the limit comes down. */
    int cs[EMFILE_CLIENTS];
    for (int i = 0; i < EMFILE_CLIENTS; i++)
        cs[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct rlimit old;
    getrlimit(RLIMIT_NOFILE, &old);
    /* Room for 3 accepted connections at a time. */
    struct rlimit low = { (rlim_t)test_count_fds() + 3, old.rlim_max };
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    test_log_capture();
    for (int i = 0; i < EMFILE_CLIENTS; i++) {
        assert_int_equal(urio_connect(cs[i], (struct sockaddr *)&a, sizeof a, 0), 0);
        assert_int_equal(urio_send(cs[i], "e", 1, 0, 0), 1);
    }
    uint64_t enters0 = urio_loop_current()->ring.enters;
    /* Every client is served in the end, as fds free up. */
    for (int i = 0; i < EMFILE_CLIENTS; i++) {
        char b = 0;
        assert_int_equal(urio_recv(cs[i], &b, 1, 0, urio_deadline_in(10 * SEC)), 1);
        assert_int_equal(b, 'e');
    }
    uint64_t enters = urio_loop_current()->ring.enters - enters0;
    setrlimit(RLIMIT_NOFILE, &old);
    assert_int_equal(test_log_count("accept failed: EMFILE"), 1);    /* one WARNING */
    assert_true(enters < 2000);                                      /* no spinning */
    for (int i = 0; i < EMFILE_CLIENTS; i++)
        close(cs[i]);
    server_done(srv);
    return 0;
}

static void test_io_server_emfile(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(emfile_task, NULL), 0);
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* 10,000 connections on one loop                                       */

static int n_conns(void)
{
    const char *e = getenv("URIO_TEST_CONNS");
    int n = e ? atoi(e) : 10000;
#if defined(__SANITIZE_THREAD__)
    /* TSan counts each task's fiber as a thread, and stops at 8,128. */
    if (n > 4000) {
        print_message("ThreadSanitizer holds at most 8,128 fibers: 4,000 connections\n");
        n = 4000;
    }
#endif
    return n;
}

static int hold_handler(urio_stream_t *s, void *arg)
{
    (void)arg;
    char b[8];
    /* Echo one message, then wait for the client's EOF. */
    int n = urio_stream_read(s, b, sizeof b, 0);
    if (n > 0)
        urio_stream_write(s, b, (size_t)n);
    while ((n = urio_stream_read(s, b, sizeof b, 0)) > 0)
        ;
    return n;
}

/* The client side, in a child process (the fd limit fits one side per process). */
static int child_clients(int port, int n, int ready_fd)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                             .sin_port = htons((uint16_t)port) };
    int *fds = malloc((size_t)n * sizeof *fds);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&a, sizeof a) < 0)
            return 2;
        if (send(fds[i], "hi", 2, MSG_NOSIGNAL) != 2)
            return 3;
    }
    for (int i = 0; i < n; i++) {
        char b[2];
        if (recv(fds[i], b, 2, MSG_WAITALL) == 2)
            ok++;
    }
    /* All n connected and answered at once: tell the parent, wait for its go, close all. */
    char c = ok == n ? 'y' : 'n';
    if (write(ready_fd, &c, 1) != 1 || read(ready_fd, &c, 1) != 1)
        return 4;
    for (int i = 0; i < n; i++)
        close(fds[i]);
    free(fds);
    return ok == n ? 0 : 5;
}

struct many {
    int n;
    int sv[2];
    pid_t pid;
};

static int many_task(void *arg, void **res)
{
    (void)res;
    struct many *m = arg;
    urio_server_opts_t o = { .backlog = 4096, .stack_size = 32 * 1024 };
    urio_server_t *srv;
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", 0, hold_handler, NULL, &o), 0);
    m->pid = fork();
    assert_true(m->pid >= 0);
    if (m->pid == 0) {
        close(m->sv[0]);
        _exit(child_clients(urio_server_port(srv), m->n, m->sv[1]));
    }
    close(m->sv[1]);        /* the child's end: a child that dies gives EOF */
    m->sv[1] = -1;
    char c = 0;
    assert_int_equal(urio_recv(m->sv[0], &c, 1, 0, urio_deadline_in(120 * SEC)), 1);
    assert_int_equal(c, 'y');
    /* The child holds n answered connections: the server has them all at once. */
    assert_int_equal(urio_server_connections(srv), (unsigned)m->n);
    assert_int_equal(urio_send(m->sv[0], "g", 1, 0, 0), 1);
    for (int i = 0; i < 60000 && urio_server_connections(srv) > 0; i++)
        urio_sleep(MS);
    assert_int_equal(urio_server_connections(srv), 0);
    server_done(srv);
    return 0;
}

static void test_io_server_10000_connections(void **state)
{
    (void)state;
    struct many m = { .n = n_conns() };
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t need = (rlim_t)m.n + 64;
    if (rl.rlim_cur < need) {
        rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need) {
        print_message("RLIMIT_NOFILE is %llu, under the %llu this test needs, and cannot be "
                      "raised: skipped\n", (unsigned long long)rl.rlim_cur,
                      (unsigned long long)need);
        skip();
    }
    int fds = test_count_fds();
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, m.sv), 0);
    assert_int_equal(test_run_task(many_task, &m), 0);
    int status;
    assert_int_equal(waitpid(m.pid, &status, 0), m.pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    close(m.sv[0]);
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* Debug mode: unclosed streams and servers                             */

static int leaky_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_server_t *srv;
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", 0, echo, NULL, NULL), 0);
    urio_stream_t *c;
    assert_int_equal(urio_open_connection(&c, "127.0.0.1", urio_server_port(srv), 0), 0);
    return 0;       /* neither closed */
}

/* A server freed without being closed: reported at the free. */
static int free_unclosed_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_server_t *srv;
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", 0, echo, NULL, NULL), 0);
    urio_server_free(srv);
    assert_log_contains("unclosed <urio_server 127.0.0.1:");
    return 0;
}

static void test_io_stream_unclosed_reported(void **state)
{
    (void)state;
    test_log_capture();
    urio_loop_opts_t o = { .debug = 1 };
    assert_int_equal(test_run_task_opts(free_unclosed_task, NULL, &o), 0);
    /*
     * Counted after a first report: debug mode's symbolizer keeps the
     * program's and its libraries' ELF files open, once per process.
     */
    int fds = test_count_fds();
    test_log_capture();
    assert_int_equal(test_run_task_opts(leaky_task, NULL, &o), 0);
    assert_log_contains("unclosed <urio_stream fd=");
    assert_log_contains("peer=127.0.0.1:");
    assert_log_contains("created at ../tests/test_io_stream.c:");
    assert_log_contains("unclosed <urio_server 127.0.0.1:");
    assert_log_contains("handler 'echo'");
    /* Everything is closed and freed all the same. */
    assert_fds(fds);
    /* Not in production mode. */
    test_log_capture();
    o.debug = -1;
    assert_int_equal(test_run_task_opts(leaky_task, NULL, &o), 0);
    assert_int_equal(test_log_count("unclosed"), 0);
    assert_fds(fds);
}

/* ------------------------------------------------------------------ */
/* Bad input                                                            */

static int bad_stream_input_task(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_stream_t *c;
    urio_server_t *srv;
    char b[4];
    assert_int_equal(urio_open_connection(NULL, "127.0.0.1", 80, 0), -EINVAL);
    assert_int_equal(urio_open_connection(&c, NULL, 80, 0), -EINVAL);
    assert_int_equal(urio_open_connection(&c, "", 80, 0), -EINVAL);
    assert_int_equal(urio_open_connection(&c, "127.0.0.1", 0, 0), -EINVAL);
    assert_int_equal(urio_open_connection(&c, "127.0.0.1", -1, 0), -EINVAL);
    assert_int_equal(urio_open_connection(&c, "127.0.0.1", 70000, 0), -EINVAL);
    assert_non_null(strstr(urio_io_error_message(), "port 70000 is out of range"));
    int err = urio_open_connection(&c, "999.1.1.1", 80, urio_deadline_in(10 * SEC));
    assert_true(err == URIO_ENOHOST || err == -EAGAIN);
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", 70000, echo, NULL, NULL), -EINVAL);
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", 0, NULL, NULL, NULL), -EINVAL);
    assert_int_equal(urio_server_new(NULL, "127.0.0.1", 0, echo, NULL, NULL), -EINVAL);
    char longpath[200];
    memset(longpath, 'p', sizeof longpath - 1);
    longpath[sizeof longpath - 1] = '\0';
    assert_int_equal(urio_server_new_unix(&srv, longpath, echo, NULL, NULL), -ENAMETOOLONG);
    assert_int_equal(urio_open_unix_connection(&c, longpath, 0), -ENAMETOOLONG);
    /* An address in use: the message names it. */
    urio_server_t *a;
    assert_int_equal(urio_server_new(&a, "127.0.0.1", 0, echo, NULL, NULL), 0);
    assert_int_equal(urio_server_new(&srv, "127.0.0.1", urio_server_port(a), echo, NULL, NULL),
                     -EADDRINUSE);
    assert_non_null(strstr(urio_io_error_message(), "address already in use"));
    server_done(a);
    /* NULL streams. */
    assert_int_equal(urio_stream_read(NULL, b, 4, 0), -EINVAL);
    assert_int_equal(urio_stream_read_exactly(NULL, b, 4, 0), -EINVAL);
    assert_int_equal(urio_stream_read_until(NULL, "\n", 1, b, 4, 0), -EINVAL);
    assert_int_equal(urio_stream_write(NULL, b, 4), -EINVAL);
    assert_int_equal(urio_stream_drain(NULL, 0), -EINVAL);
    assert_int_equal(urio_stream_write_eof(NULL), -EINVAL);
    assert_int_equal(urio_stream_set_limit(NULL, 10), -EINVAL);
    urio_stream_close(NULL);
    urio_stream_abort(NULL);
    assert_int_equal(urio_server_wait_closed(NULL, 0), -EINVAL);
    urio_server_close(NULL);
    urio_server_free(NULL);
    assert_int_equal(urio_stream_new(&c, urio_loop_current(), -1), -EBADF);
    /* A real stream with bad arguments. */
    int sv[2];
    test_socketpair(sv);
    assert_int_equal(urio_stream_new(&c, urio_loop_current(), sv[1]), 0);
    assert_int_equal(urio_stream_read(c, NULL, 4, 0), -EINVAL);
    assert_int_equal(urio_stream_read(c, b, (size_t)-1, 0), -EINVAL);
    assert_int_equal(urio_stream_write(c, NULL, 4), -EINVAL);
    assert_int_equal(urio_stream_read_until(c, NULL, 1, b, 4, 0), -EINVAL);
    assert_int_equal(urio_stream_read_until(c, "\n", 0, b, 4, 0), -EINVAL);
    assert_int_equal(urio_stream_read_until(c, "\n", 1, b, 0, 0), -EINVAL);
    assert_int_equal(urio_stream_set_limit(c, 0), -EINVAL);
    assert_int_equal(urio_stream_set_write_buffer_limits(c, 10, 20), -EINVAL);
    assert_int_equal(urio_stream_read(c, b, 0, 0), 0);
    urio_stream_close(c);
    close(sv[0]);
    return 0;
}

static void test_io_stream_bad_input(void **state)
{
    (void)state;
    int fds = test_count_fds();
    assert_int_equal(test_run_task(bad_stream_input_task, NULL), 0);
    /* Waiting calls outside a task. */
    urio_stream_t *c;
    urio_server_t *srv;
    char b[4];
    assert_int_equal(urio_open_connection(&c, "127.0.0.1", 80, 0), -EPERM);
    assert_int_equal(urio_server_new(&srv, NULL, 0, echo, NULL, NULL), -EPERM);
    assert_int_equal(urio_stream_read((urio_stream_t *)b, b, 4, 0), -EPERM);
    assert_fds(fds);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_io_stream_echo_roundtrips),
        URIO_TEST(test_io_stream_dual_stack_and_names),
        URIO_TEST(test_io_stream_unix),
        URIO_TEST(test_io_stream_1mib_both_ways),
        URIO_TEST(test_io_stream_write_buffers),
        URIO_TEST(test_io_stream_half_close),
        URIO_TEST(test_io_stream_peer_reset),
        URIO_TEST(test_io_stream_connect_refused),
        URIO_TEST(test_io_stream_connect_timeout),
        URIO_TEST(test_io_stream_unknown_host),
        URIO_TEST(test_io_stream_cancel_during_lookup),
        URIO_TEST(test_io_stream_read_limits),
        URIO_TEST(test_io_stream_backpressure),
        URIO_TEST(test_io_stream_read_pauses),
        URIO_TEST(test_io_stream_cancel_and_deadline),
        URIO_TEST(test_io_server_graceful_close),
        URIO_TEST(test_io_server_emfile),
        URIO_TEST(test_io_server_10000_connections),
        URIO_TEST(test_io_stream_unclosed_reported),
        URIO_TEST(test_io_stream_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
