/*
 * peers/uv_echo_server.c — a libuv echo server written the way an expert
 * writes one: a peer of the echo benchmark (bench/io/echo.c); command line
 * in echo_cli.h.
 *
 * Each connection owns its read buffer (alloc_cb hands it out: no
 * allocation per read).  What arrives is written back with uv_try_write
 * first — the common case, a write(2) straight from the read callback with
 * no request at all.  Only when the socket cannot take everything does the
 * rest go through uv_write from the same buffer, with reading stopped until
 * its callback (the buffer stays the request's, and a peer that does not
 * read is not fed more: backpressure).  Nagle off, SIGPIPE ignored.
 */
#include "echo_cli.h"

#include <uv.h>

enum { CONN_BUF = 16384 };

typedef struct conn {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_write_t write_req;
    char buf[CONN_BUF];
} conn_t;

static const echo_cli_t *cli;
static uv_loop_t *loop;

static void conn_free(uv_handle_t *h)
{
    free(h->data);
}

static void conn_close(conn_t *c)
{
    if (!uv_is_closing(&c->h.handle))
        uv_close(&c->h.handle, conn_free);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    conn_t *c = h->data;
    *buf = uv_buf_init(c->buf, sizeof c->buf);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void write_cb(uv_write_t *req, int status)
{
    conn_t *c = req->data;
    if (status < 0) {
        conn_close(c);
        return;
    }
    int err = uv_read_start(&c->h.stream, alloc_cb, read_cb);
    if (err)
        conn_close(c);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    if (nread == 0)   /* EAGAIN */
        return;
    if (nread < 0) {  /* UV_EOF or an error */
        conn_close(c);
        return;
    }
    uv_buf_t out = uv_buf_init(buf->base, (unsigned)nread);
    int n = uv_try_write(s, &out, 1);
    if (n == nread)
        return;
    if (n < 0 && n != UV_EAGAIN) {
        conn_close(c);
        return;
    }
    size_t done = n > 0 ? (size_t)n : 0;
    out = uv_buf_init(buf->base + done, (unsigned)((size_t)nread - done));
    uv_read_stop(s);
    c->write_req.data = c;
    if (uv_write(&c->write_req, s, &out, 1, write_cb) != 0)
        conn_close(c);
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0) {
        fprintf(stderr, "%s: accept: %s\n", cli->prog, uv_strerror(status));
        return;
    }
    conn_t *c = malloc(sizeof *c);
    if (!c)
        echo_cli_die(cli, "out of memory");
    int err = cli->unix_path ? uv_pipe_init(loop, &c->h.pipe, 0) : uv_tcp_init(loop, &c->h.tcp);
    if (err)
        echo_cli_die(cli, "uv init: %s", uv_strerror(err));
    c->h.handle.data = c;
    if (uv_accept(server, &c->h.stream) != 0) {
        conn_close(c);
        return;
    }
    if (!cli->unix_path)
        uv_tcp_nodelay(&c->h.tcp, 1);
    if (uv_read_start(&c->h.stream, alloc_cb, read_cb) != 0)
        conn_close(c);
}

/* Connections carry their conn_t in data and are freed on close; the
 * listener and the signal handles are not heap-allocated. */
static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, h->data ? conn_free : NULL);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    (void)signum;
    uv_walk(sig->loop, close_walk_cb, NULL);
}

int main(int argc, char **argv)
{
    static echo_cli_t opts;
    echo_cli_parse(&opts, argc, argv);
    cli = &opts;
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();

    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } listener;
    int err;
    if (cli->unix_path) {
        unlink(cli->unix_path);
        err = uv_pipe_init(loop, &listener.pipe, 0);
        if (!err)
            err = uv_pipe_bind(&listener.pipe, cli->unix_path);
    } else {
        struct sockaddr_storage ss;
        socklen_t len;
        echo_cli_resolve(cli, &ss, &len);
        err = uv_tcp_init(loop, &listener.tcp);
        if (!err)
            err = uv_tcp_bind(&listener.tcp, (struct sockaddr *)&ss, 0);
    }
    if (err)
        echo_cli_die(cli, "bind: %s", uv_strerror(err));
    listener.handle.data = NULL;
    err = uv_listen(&listener.stream, ECHO_CLI_BACKLOG, on_connection);
    if (err)
        echo_cli_die(cli, "listen: %s", uv_strerror(err));

    uv_signal_t sigint, sigterm;
    uv_signal_init(loop, &sigint);
    uv_signal_init(loop, &sigterm);
    sigint.data = sigterm.data = NULL;
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_start(&sigterm, on_signal, SIGTERM);

    uv_os_fd_t fd;
    err = uv_fileno(&listener.handle, &fd);
    if (err)
        echo_cli_die(cli, "uv_fileno: %s", uv_strerror(err));
    echo_cli_announce(cli, fd);

    uv_run(loop, UV_RUN_DEFAULT);   /* until on_signal has closed every handle */
    err = uv_loop_close(loop);
    if (err)
        echo_cli_die(cli, "uv_loop_close: %s", uv_strerror(err));
    if (cli->unix_path)
        unlink(cli->unix_path);
    return 0;
}
