/*
 * io/loadgen.c — the epoll client of the echo benchmarks (see loadgen.h).
 *
 * One thread, level-triggered epoll, non-blocking sockets.  Each connection
 * sends an endless stream made of its own 64-byte pattern repeated, so the
 * bytes at any stream offset are known: what comes back is compared with
 * what went out, at the offset it must have, without keeping copies.  A
 * FIFO per connection holds the send time (scheduled, in the open loop) of
 * every message in flight; the echo that completes message k pops it.
 *
 * The open loop keeps its schedule by sleeping in epoll_pwait2 (a
 * nanosecond timeout) with a timer slack of 1 ns for the duration (the
 * default 50 µs slack would make sends late by up to that much), and polls
 * only when the next send is closer than a wake-up costs (SPIN_NS).
 * Polling all the time was tried: on a shared machine the scheduler then
 * treats the client as a CPU hog, and its sends go out milliseconds late
 * whenever another program wants its CPU; a client that sleeps is woken
 * promptly.  A send that still goes out late is not excused: the round trip
 * counts from the schedule, and the client's own lateness is reported
 * beside it (send_lag_p99_us).
 */
#include "loadgen.h"

#include "../bench.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <unistd.h>

enum {
    FIFO_CAP = 8192,           /* messages in flight per connection, a power of two */
    RX_BUF = 16384,
    TX_REPEAT = 16,            /* patterns in a connection's send buffer */
    MAX_EVENTS = 256,
};

/* A lost echo must not hang the harness: after the last send, the echoes
 * still missing have this long to come back. */
static const uint64_t DRAIN_NS = 2000000000u;

/* Open loop: poll rather than sleep when the next send is this close. */
static const uint64_t SPIN_NS = 5000u;

typedef struct lg_conn {
    int fd;
    bool want_out;             /* EPOLLOUT is in the interest set */
    uint64_t tx_queued;        /* bytes the stream should have sent so far */
    uint64_t tx_sent;          /* bytes written */
    uint64_t rx_got;           /* bytes echoed back */
    uint64_t fifo_head;        /* index of the oldest message in flight */
    uint64_t fifo_tail;        /* index of the next message */
    uint64_t *fifo;            /* [FIFO_CAP] send times, ns */
    unsigned char *tx;         /* the pattern repeated TX_REPEAT times */
} lg_conn_t;

typedef struct lg {
    const loadgen_opts_t *o;
    int epfd;
    lg_conn_t *conns;
    unsigned msg;
    uint64_t ws, we;           /* the window */
    bool in_window;
    uint64_t cpu_ws, cpu_we;   /* the client's thread CPU clock at the window's edges */
    uint64_t msgs;             /* echoes completed in the window */
    uint64_t inflight;         /* messages sent (or queued) and not yet back */
    int64_t *lat;              /* open loop: samples, ns */
    uint64_t n_lat, cap_lat;
    int64_t *lag;              /* open loop: send lateness, ns (one per sample) */
} lg_t;

static void set_out_interest(lg_t *g, lg_conn_t *c, bool out)
{
    if (c->want_out == out)
        return;
    struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c };
    if (epoll_ctl(g->epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0)
        bench_die("loadgen: epoll_ctl: %s", strerror(errno));
    c->want_out = out;
}

/* Writes what the stream owes; registers for EPOLLOUT if the socket is full. */
static void flush_tx(lg_t *g, lg_conn_t *c)
{
    size_t period = g->msg, len = (size_t)g->msg * TX_REPEAT;
    while (c->tx_sent < c->tx_queued) {
        size_t start = (size_t)(c->tx_sent % period);
        uint64_t owed = c->tx_queued - c->tx_sent;
        size_t n = len - start < owed ? len - start : (size_t)owed;
        ssize_t w = send(c->fd, c->tx + start, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            bench_die("loadgen: send: %s (the server closed a connection?)", strerror(errno));
        }
        c->tx_sent += (uint64_t)w;
    }
    set_out_interest(g, c, c->tx_sent < c->tx_queued);
}

static void send_msg(lg_t *g, lg_conn_t *c, uint64_t t)
{
    if (c->fifo_tail - c->fifo_head == FIFO_CAP)
        bench_die("loadgen: more than %d messages waiting on one connection: the server "
                  "fell behind the schedule by seconds", FIFO_CAP);
    c->fifo[c->fifo_tail++ % FIFO_CAP] = t;
    c->tx_queued += g->msg;
    g->inflight++;
    flush_tx(g, c);
}

/* The echo of one whole message came back at `now`. */
static void complete_msg(lg_t *g, lg_conn_t *c, uint64_t now, bool closed_loop, bool sending)
{
    uint64_t t = c->fifo[c->fifo_head++ % FIFO_CAP];
    g->inflight--;
    if (g->in_window && now < g->we)
        g->msgs++;
    if (closed_loop) {
        if (sending)
            send_msg(g, c, now);
    } else if (t >= g->ws && t < g->we) {
        if (g->n_lat == g->cap_lat)
            bench_die("loadgen: more samples than the schedule allows");
        g->lat[g->n_lat++] = (int64_t)(now - t);
    }
}

static void on_readable(lg_t *g, lg_conn_t *c, bool closed_loop, bool sending)
{
    unsigned char buf[RX_BUF];
    ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        bench_die("loadgen: recv: %s", strerror(errno));
    }
    if (n == 0)
        bench_die("loadgen: the server closed a connection");
    uint64_t now = bench_now_ns();
    if (c->rx_got + (uint64_t)n > c->tx_sent)
        bench_die("loadgen: the server sent bytes nobody sent it");
    /* Compare with the pattern at the stream offsets these bytes have. */
    size_t period = g->msg, len = (size_t)g->msg * TX_REPEAT;
    for (size_t off = 0; off < (size_t)n;) {
        size_t start = (size_t)((c->rx_got + off) % period);
        size_t k = (size_t)n - off < len - start ? (size_t)n - off : len - start;
        if (memcmp(buf + off, c->tx + start, k) != 0)
            bench_die("loadgen: the server echoed wrong bytes");
        off += k;
    }
    uint64_t before = c->rx_got / period;
    c->rx_got += (uint64_t)n;
    for (uint64_t m = c->rx_got / period - before; m; m--)
        complete_msg(g, c, now, closed_loop, sending);
}

static void connect_all(lg_t *g)
{
    const loadgen_opts_t *o = g->o;
    for (unsigned i = 0; i < o->conns; i++) {
        lg_conn_t *c = &g->conns[i];
        c->fd = socket(o->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            bench_die("loadgen: socket: %s", strerror(errno));
        if (connect(c->fd, (const struct sockaddr *)&o->addr, o->addrlen) != 0)
            bench_die("loadgen: connect: %s", strerror(errno));
        int one = 1;
        if (o->addr.ss_family != AF_UNIX)
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0)
            bench_die("loadgen: epoll_ctl: %s", strerror(errno));
        c->fifo = bench_alloc_prefaulted(FIFO_CAP * sizeof *c->fifo);
        c->tx = bench_alloc_prefaulted((size_t)g->msg * TX_REPEAT);
        for (size_t b = 0; b < (size_t)g->msg * TX_REPEAT; b++)
            c->tx[b] = (unsigned char)(i * 31u + (b % g->msg) * 7u + 1u);
    }
}

static void window_edge(lg_t *g, bool start)
{
    if (g->o->window)
        g->o->window(g->o->ctx, start);
    *(start ? &g->cpu_ws : &g->cpu_we) = bench_thread_cpu_ns();
}

void loadgen_run(const loadgen_opts_t *o, loadgen_result_t *res)
{
    if (o->conns == 0 || o->msg_size == 0 || o->msg_size > LOADGEN_MAX_MSG)
        bench_die("loadgen: bad options");
    bool closed_loop = o->rate <= 0.0;
    lg_t g = { .o = o, .msg = o->msg_size };
    g.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g.epfd < 0)
        bench_die("loadgen: epoll_create1: %s", strerror(errno));
    g.conns = bench_alloc_prefaulted(o->conns * sizeof *g.conns);
    connect_all(&g);
    if (!closed_loop) {
        g.cap_lat = (uint64_t)(o->rate * (double)o->measure_ns / 1e9) + 16;
        g.lat = bench_alloc_prefaulted(g.cap_lat * sizeof *g.lat);
        g.lag = bench_alloc_prefaulted(g.cap_lat * sizeof *g.lag);
    }
    int old_slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);

    double interval = closed_loop ? 0.0 : 1e9 / o->rate;
    uint64_t n_lag = 0;
    uint64_t t0 = bench_now_ns();
    g.ws = t0 + o->warmup_ns;
    g.we = g.ws + o->measure_ns;
    uint64_t k = 0;            /* open loop: the next message of the schedule */
    uint64_t next_due = t0;
    bool sending = true, window_done = false;
    uint64_t drain_end = 0;

    if (closed_loop)
        for (unsigned i = 0; i < o->conns; i++)
            send_msg(&g, &g.conns[i], t0);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        uint64_t now = bench_now_ns();
        if (!g.in_window && !window_done && now >= g.ws) {
            window_edge(&g, true);
            g.in_window = true;
            g.ws = bench_now_ns();   /* the hook's own time is not the server's */
            g.we = g.ws + o->measure_ns;
            now = g.ws;
        }
        if (g.in_window && now >= g.we) {
            window_edge(&g, false);
            g.in_window = false;
            window_done = true;
        }
        if (sending && !closed_loop) {
            while (next_due <= now && next_due < g.we) {
                if (next_due >= g.ws)
                    g.lag[n_lag++] = (int64_t)(now - next_due);
                send_msg(&g, &g.conns[k % o->conns], next_due);
                k++;
                next_due = t0 + (uint64_t)((double)k * interval);
            }
            if (next_due >= g.we && window_done)
                sending = false;
        } else if (sending && window_done) {
            sending = false;
        }
        if (!sending) {
            if (g.inflight == 0)
                break;
            if (!drain_end)
                drain_end = now + DRAIN_NS;
            else if (now >= drain_end)
                bench_die("loadgen: %llu echoes never came back", (unsigned long long)g.inflight);
        }

        /* Sleep until the next send, the next edge of the window, or the
         * drain's end, whichever is first. */
        uint64_t wake = window_done ? (drain_end ? drain_end : now) : g.in_window ? g.we : g.ws;
        if (sending && !closed_loop && next_due < wake)
            wake = next_due;
        uint64_t wait = wake > now ? wake - now : 0;
        if (sending && !closed_loop && next_due < now + SPIN_NS)
            wait = 0;
        struct timespec ts = { .tv_sec = (time_t)(wait / 1000000000u),
                               .tv_nsec = (long)(wait % 1000000000u) };
        int n = epoll_pwait2(g.epfd, events, MAX_EVENTS, &ts, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            bench_die("loadgen: epoll_pwait2: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            lg_conn_t *c = events[i].data.ptr;
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(&g, c, closed_loop, sending);
            if (events[i].events & EPOLLOUT)
                flush_tx(&g, c);
        }
    }
    prctl(PR_SET_TIMERSLACK, old_slack > 0 ? old_slack : 50000, 0, 0, 0);

    *res = (loadgen_result_t){
        .msgs = g.msgs,
        .window_ns = g.we - g.ws,
        .msgs_per_s = (double)g.msgs * 1e9 / (double)(g.we - g.ws),
        .client_cpu_ns = g.cpu_we - g.cpu_ws,
        .samples = g.n_lat,
    };
    if (!closed_loop) {
        if (g.n_lat == 0)
            bench_die("loadgen: no round trip in the window");
        bench_percentiles_us(g.lat, g.n_lat, &res->p50_us, &res->p99_us);
        res->p999_us = (double)bench_percentile(g.lat, g.n_lat, 99.9) / 1000.0;
        double lag50;
        bench_percentiles_us(g.lag, n_lag, &lag50, &res->send_lag_p99_us);
        free(g.lat);
        free(g.lag);
    }
    for (unsigned i = 0; i < o->conns; i++) {
        close(g.conns[i].fd);
        free(g.conns[i].fifo);
        free(g.conns[i].tx);
    }
    free(g.conns);
    close(g.epfd);
}
