/*
 * peers/epoll_echo_server.c — a level-triggered epoll echo server, one
 * thread: the readiness loop every C server starts from.  A peer of the
 * echo benchmark (bench/io/echo.c); command line in echo_cli.h.
 *
 * Each connection has its own buffer.  Readable: one read(2) into it (the
 * buffer is larger than anything a ping-pong has in flight, and under level
 * triggering a read to EAGAIN would cost one more syscall per message),
 * then send(2) straight back.  A short send keeps the rest, switches the
 * connection's interest from EPOLLIN to EPOLLOUT (no reading while the peer
 * is not reading: backpressure) and back once the rest is out.
 */
#include "echo_cli.h"

#include <sys/epoll.h>

enum { CONN_BUF = 16384, MAX_EVENTS = 256 };

typedef struct conn {
    int fd;
    size_t out_off, out_len;   /* unsent bytes of buf: [out_off, out_len) */
    char buf[CONN_BUF];
} conn_t;

static const echo_cli_t *cli;
static int epfd;

static void set_interest(conn_t *c, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = c };
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0)
        echo_cli_die(cli, "epoll_ctl: %s", strerror(errno));
}

static void conn_close(conn_t *c)
{
    close(c->fd);   /* also removes it from the epoll set */
    free(c);
}

/* Sends what is left of the buffer; false if the connection is gone. */
static bool flush_out(conn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->buf + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return true;
            return false;
        }
        c->out_off += (size_t)n;
    }
    c->out_off = c->out_len = 0;
    return true;
}

static void on_readable(conn_t *c)
{
    ssize_t n = read(c->fd, c->buf, sizeof c->buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {   /* EOF or reset */
        conn_close(c);
        return;
    }
    c->out_off = 0;
    c->out_len = (size_t)n;
    if (!flush_out(c)) {
        conn_close(c);
        return;
    }
    if (c->out_len)
        set_interest(c, EPOLLOUT);
}

static void on_writable(conn_t *c)
{
    if (!flush_out(c)) {
        conn_close(c);
        return;
    }
    if (c->out_len == 0)
        set_interest(c, EPOLLIN);
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN)
                return;
            fprintf(stderr, "%s: accept: %s\n", cli->prog, strerror(errno));
            return;
        }
        echo_cli_nodelay(fd);
        conn_t *c = malloc(sizeof *c);
        if (!c)
            echo_cli_die(cli, "out of memory");
        c->fd = fd;
        c->out_off = c->out_len = 0;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
            echo_cli_die(cli, "epoll_ctl: %s", strerror(errno));
    }
}

int main(int argc, char **argv)
{
    static echo_cli_t opts;
    echo_cli_parse(&opts, argc, argv);
    cli = &opts;

    int sfd = echo_cli_signalfd(cli);
    int lfd = echo_cli_listen(cli, SOCK_NONBLOCK);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        echo_cli_die(cli, "epoll_create1: %s", strerror(errno));
    /* The listener and the signalfd are told apart by their data.ptr:
     * connections are heap pointers, these two are the addresses of
     * their fds. */
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &lfd };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev) != 0)
        echo_cli_die(cli, "epoll_ctl: %s", strerror(errno));
    ev.data.ptr = &sfd;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev) != 0)
        echo_cli_die(cli, "epoll_ctl: %s", strerror(errno));
    echo_cli_announce(cli, lfd);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            echo_cli_die(cli, "epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            void *p = events[i].data.ptr;
            if (p == &sfd)
                goto out;
            if (p == &lfd) {
                on_accept(lfd);
                continue;
            }
            conn_t *c = p;
            if (events[i].events & EPOLLOUT)
                on_writable(c);
            else
                on_readable(c);   /* EPOLLIN, EPOLLHUP, EPOLLERR: the read tells which */
        }
    }
out:
    /* Connections still open are closed by exit. */
    close(lfd);
    if (cli->unix_path)
        unlink(cli->unix_path);
    return 0;
}
