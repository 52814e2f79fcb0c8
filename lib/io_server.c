/*
 * io_server.c — servers: listening sockets (TCP on IPv4, IPv6 or both; Unix),
 * a multishot accept on each, and one task per connection running the
 * caller's handler on the connection's stream.  Graceful close: stop
 * accepting, let the handlers finish, cancel the rest at a deadline.
 *
 * Running out of fds (EMFILE, ENFILE) while accepting is a state, not an
 * error: the server logs one WARNING (at most one a minute), stops
 * accepting for a while (10 ms, doubling up to 1 s), and starts again at
 * once when one of its own connections ends and frees an fd.  It never
 * spins and never gives up; the connections waiting in the backlog are
 * accepted when fds come back.
 *
 * A server is reference counted (loop thread): its owner's, one per accept
 * op in flight, one per connection, one per task waiting in wait_closed.
 */
#include "io.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_BACKLOG 4096
#define BACKOFF_MIN_NS  (10u * 1000 * 1000)
#define BACKOFF_MAX_NS  (1000u * 1000 * 1000)
#define MAX_LISTENERS   16
/* Out of fds: one WARNING, then silence for this long (the state is the same). */
#define FD_WARN_EVERY_NS (60ull * 1000 * 1000 * 1000)

typedef struct listener {
    struct urio_server *srv;
    int fd;
    urio__op_t op;               /* the accept; then the listening socket's close */
    bool armed;                  /* an accept is in flight */
    bool multishot;
    bool closing;                /* its close op is in flight */
    struct sockaddr_storage addr;
    socklen_t addrlen;
} listener_t;

struct urio_server {
    urio__io_t *io;
    urio_loop_t *loop;
    urio_conn_fn fn;
    void *arg;
    urio_server_opts_t opts;
    const urio_site_t *site;
    urio__backtrace_t *stack;
    listener_t ls[MAX_LISTENERS];
    unsigned nls;
    int port;
    char *unix_path;             /* unlinked when the server closes */
    bool closed;                 /* no more accepting */
    uint32_t refs;
    urio_stream_t *conns;        /* connections whose handler runs (stream->cnext) */
    unsigned nconns;
    urio__io_waiter_t ww;        /* the task in wait_closed */
    bool backing_off;            /* out of fds: accepting paused */
    uint64_t fd_warned_at;       /* when the last out-of-fds WARNING was logged, or 0 */
    uint64_t backoff_ns;
    urio_handle_t backoff_timer;
    struct urio_server *next, *prev;    /* io->servers */
};

static void listener_arm(listener_t *l);

/* ------------------------------------------------------------------ */
/* Life                                                                 */

static void server_free(urio_server_t *srv)
{
    urio__io_t *io = srv->io;
    if (srv->prev)
        srv->prev->next = srv->next;
    else
        io->servers = srv->next;
    if (srv->next)
        srv->next->prev = srv->prev;
    for (unsigned i = 0; i < srv->nls; i++)
        if (srv->ls[i].fd >= 0)
            close(srv->ls[i].fd);
    if (srv->unix_path)
        unlink(srv->unix_path);
    if (srv->backoff_timer.id)
        urio_handle_cancel(srv->loop, srv->backoff_timer);
    urio__free(srv->unix_path);
    urio__free(srv->stack);
    urio__free(srv);
}

static void server_unref(urio_server_t *srv)
{
    URIO_ASSERT(srv->refs > 0);
    if (--srv->refs == 0)
        server_free(srv);
}

static void describe(const urio_server_t *srv, char *buf, size_t n)
{
    char addr[100] = "?";
    if (srv->nls > 0)
        urio__addr_format((const struct sockaddr *)&srv->ls[0].addr, srv->ls[0].addrlen, addr,
                          sizeof addr);
    else if (srv->unix_path)
        snprintf(addr, sizeof addr, "unix:%s", srv->unix_path);
    if (srv->site && srv->site->file)
        snprintf(buf, n, "<urio_server %s handler '%s' created at %s:%d>", addr,
                 srv->site->name ? srv->site->name : "?", srv->site->file, srv->site->line);
    else
        snprintf(buf, n, "<urio_server %s>", addr);
}

static void warn_unclosed(const urio_server_t *srv)
{
    char desc[300];
    describe(srv, desc, sizeof desc);
    char *tb = srv->stack ? urio__backtrace_format(srv->stack, "Object allocated at (most "
                                                   "recent call last):") : NULL;
    urio__log(URIO_LOG_WARNING, "unclosed %s%s%s", desc, tb ? "\n" : "", tb ? tb : "");
    urio__free(tb);
}

/* ------------------------------------------------------------------ */
/* Accepting                                                            */

static void backoff_end(void *arg)
{
    urio_server_t *srv = arg;
    srv->backoff_timer.id = 0;
    srv->backing_off = false;
    for (unsigned i = 0; i < srv->nls; i++)
        listener_arm(&srv->ls[i]);
}

static void backoff_start(urio_server_t *srv)
{
    static const urio_site_t site = { "<server accept back-off>", __FILE__, __LINE__ };
    if (srv->backing_off || srv->closed || srv->loop->closing)
        return;
    srv->backoff_ns = srv->backoff_ns == 0 ? BACKOFF_MIN_NS
                      : srv->backoff_ns >= BACKOFF_MAX_NS / 2 ? BACKOFF_MAX_NS
                      : srv->backoff_ns * 2;
    srv->backoff_timer = urio_call_later_site(srv->loop, srv->backoff_ns, backoff_end, srv, &site);
    srv->backing_off = srv->backoff_timer.id != 0;
}

static int conn_main(void *arg, void **result);
static void conn_done(urio_future_t *f, void *arg);

/* A new connection: its stream, and a task running the handler on it. */
static void conn_start(urio_server_t *srv, int fd, bool tcp)
{
    if (tcp) {
        /* As asyncio does: a reply is not held back waiting for more to send. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    urio_stream_t *s = urio__stream_wrap(srv->io, fd, srv->site);
    if (s == NULL) {
        urio__log(URIO_LOG_ERROR, "server: a connection was dropped: out of memory");
        return;
    }
    s->server = srv;
    s->refs++;                      /* the connection's, until conn_ended */
    srv->refs++;
    s->cnext = srv->conns;
    if (srv->conns)
        srv->conns->cprev = s;
    srv->conns = s;
    srv->nconns++;
    urio_task_opts_t to = { .stack_size = srv->opts.stack_size };
    urio_coro_t *coro = urio_coro_create(conn_main, s, srv->site);
    urio_future_t *task = coro ? urio_task_create_opts(srv->loop, coro, &to) : NULL;
    if (task == NULL) {
        urio__log(URIO_LOG_ERROR, "server: a connection was dropped: its task could not be "
                  "made: %s", urio_strerror(-errno));
        urio_stream_abort(s);
        urio__server_conn_ended(srv, s);
        return;
    }
    s->task = task;
    if (urio_future_add_done_callback(task, conn_done, s) < 0) {
        /* Cancelled before its first step, the handler never runs: end it here. */
        urio_future_cancel(task);
        urio_stream_abort(s);
        urio__server_conn_ended(srv, s);
    }
}

static int conn_main(void *arg, void **result)
{
    (void)result;
    urio_stream_t *s = arg;
    return s->server->fn(s, s->server->arg);
}

static void conn_done(urio_future_t *f, void *arg)
{
    (void)f;
    urio_stream_t *s = arg;
    urio__server_conn_ended(s->server, s);
}

void urio__server_conn_ended(urio_server_t *srv, urio_stream_t *s)
{
    if (s->cprev)
        s->cprev->cnext = s->cnext;
    else
        srv->conns = s->cnext;
    if (s->cnext)
        s->cnext->cprev = s->cprev;
    s->cnext = s->cprev = NULL;
    srv->nconns--;
    urio_future_t *task = s->task;
    s->task = NULL;
    urio_stream_close(s);           /* if the handler did not */
    urio__stream_unref(s);          /* the connection's */
    urio_future_unref(task);        /* an error nobody read is reported now, as asyncio does */
    if (srv->backing_off && !srv->closed) {
        /* An fd came free: accept again now rather than at the timer. */
        urio_handle_cancel(srv->loop, srv->backoff_timer);
        backoff_end(srv);
    }
    if (srv->nconns == 0)
        urio__io_waiter_wake(srv->loop, &srv->ww, 0);
    server_unref(srv);
}

static bool transient_accept_error(int err)
{
    switch (err) {
    case -ECONNABORTED: case -EPROTO: case -EINTR: case -EAGAIN: case -EPERM:
    case -ENETDOWN: case -ENOPROTOOPT: case -EHOSTDOWN: case -ENONET:
    case -EHOSTUNREACH: case -EOPNOTSUPP: case -ENETUNREACH: case -ETIMEDOUT:
        return true;
    default:
        return false;
    }
}

static void on_listener_closed(urio__op_t *op, int res, uint32_t flags)
{
    (void)res;
    (void)flags;
    listener_t *l = urio__container_of(op, listener_t, op);
    urio_server_t *srv = l->srv;
    urio__io_op_done(srv->io);
    l->fd = -1;
    l->closing = false;
    server_unref(srv);
}

/* Closes l's socket through the ring once no accept is in flight on it. */
static void listener_close(listener_t *l)
{
    urio_server_t *srv = l->srv;
    if (l->armed || l->closing || l->fd < 0 || srv->loop->closing)
        return;
    l->op.complete = on_listener_closed;
    if (urio__op_close(&srv->loop->ring, &l->op, l->fd) < 0) {
        close(l->fd);
        l->fd = -1;
        return;
    }
    l->closing = true;
    srv->refs++;
    urio__io_op_started(srv->io);
}

static void on_accept(urio__op_t *op, int res, uint32_t flags)
{
    listener_t *l = urio__container_of(op, listener_t, op);
    urio_server_t *srv = l->srv;
    bool final = !(flags & IORING_CQE_F_MORE);
    if (final) {
        l->armed = false;
        urio__io_op_done(srv->io);
    }
    if (res >= 0) {
        if (srv->closed || srv->loop->closing) {
            close(res);
        } else {
            conn_start(srv, res, l->addr.ss_family != AF_UNIX);
            srv->backoff_ns = 0;
        }
    } else if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM) {
        uint64_t now = urio__now();
        if (srv->fd_warned_at == 0 || now - srv->fd_warned_at >= FD_WARN_EVERY_NS) {
            char desc[300];
            describe(srv, desc, sizeof desc);
            urio__log(URIO_LOG_WARNING, "%s: accept failed: %s (%s): pausing accepting, and "
                      "resuming when file descriptors free up; connections wait in the backlog",
                      desc, urio_strerror_name(res), urio_strerror(res));
            srv->fd_warned_at = now;
        }
        backoff_start(srv);
    } else if (res == -EINVAL && l->multishot) {
        srv->io->no_accept_multishot = true;    /* before 5.19: one accept per SQE */
    } else if (res != -ECANCELED && !transient_accept_error(res)) {
        char desc[300];
        describe(srv, desc, sizeof desc);
        urio__log(URIO_LOG_ERROR, "%s: accept failed: %s (%s); retrying", desc,
                  urio_strerror_name(res), urio_strerror(res));
        backoff_start(srv);
    }
    if (final) {
        if (srv->closed)
            listener_close(l);
        else
            listener_arm(l);
        server_unref(srv);          /* the op's */
    }
}

static void listener_arm(listener_t *l)
{
    urio_server_t *srv = l->srv;
    if (srv->closed || l->armed || l->closing || l->fd < 0 || srv->backing_off ||
        srv->loop->closing)
        return;
    bool multi = !srv->io->no_accept_multishot && !urio__io_force_fallback;
    l->op.complete = on_accept;
    int err = urio__op_accept(&srv->loop->ring, &l->op, l->fd, NULL, NULL, SOCK_CLOEXEC, multi);
    if (err < 0) {
        urio__log(URIO_LOG_ERROR, "server: accept could not be submitted: %s; retrying",
                  urio_strerror(err));
        backoff_start(srv);
        return;
    }
    l->armed = true;
    l->multishot = multi;
    srv->refs++;
    urio__io_op_started(srv->io);
}

/* ------------------------------------------------------------------ */
/* Listening                                                            */

static int run_op(uint8_t code, int fd, const void *addr, unsigned num)
{
    urio__io_args_t a = { .code = code, .fd = fd, .ptr = (void *)addr, .num = num };
    return urio__io_run(&a);
}

/* A listening socket on sa.  Returns: its fd, or a negative errno (message set). */
static int listen_on(const struct sockaddr *sa, socklen_t len, int backlog, bool reuseport,
                     int v6only)
{
    char addr[100];
    urio__addr_format(sa, len, addr, sizeof addr);
    int fd = urio_socket(sa->sa_family, SOCK_STREAM, 0, 0);
    if (fd < 0)
        return urio__io_fail(fd, "could not make a socket for %s: %s", addr, urio_strerror(fd));
    int one = 1;
    int err = 0;
    if (sa->sa_family != AF_UNIX &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        err = -errno;
    if (err == 0 && reuseport &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        err = -errno;
    if (err == 0 && sa->sa_family == AF_INET6 && v6only >= 0 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) < 0)
        err = -errno;
    if (err < 0) {
        close(fd);
        return urio__io_fail(err, "could not set up the socket for %s: %s", addr,
                             urio_strerror(err));
    }
    err = run_op(URIO__IO_BIND, fd, sa, len);
    if (err == 0)
        err = run_op(URIO__IO_LISTEN, fd, NULL, (unsigned)backlog);
    if (err < 0) {
        urio_shield_begin();
        urio_close(fd, 0);
        urio_shield_end();
        if (err == -EADDRINUSE)
            return urio__io_fail(err, "could not listen on %s: address already in use", addr);
        return urio__io_fail(err, "could not listen on %s: %s", addr, urio_strerror(err));
    }
    return fd;
}

static urio_server_t *server_alloc(urio_conn_fn fn, void *arg, const urio_server_opts_t *opts,
                                   const urio_site_t *site, urio__io_t *io)
{
    urio_server_t *srv = urio__calloc(1, sizeof *srv);
    if (srv == NULL)
        return NULL;
    srv->io = io;
    srv->loop = io->loop;
    srv->fn = fn;
    srv->arg = arg;
    if (opts)
        srv->opts = *opts;
    if (srv->opts.backlog <= 0)
        srv->opts.backlog = DEFAULT_BACKLOG;
    srv->site = site;
    srv->refs = 1;
#if URIO_DEBUG_CHECKS
    if (io->loop->debug) {
        srv->stack = urio__malloc(sizeof *srv->stack);
        if (srv->stack)
            urio__backtrace_capture(srv->stack, 2, true);
    }
#endif
    return srv;
}

static int add_listener(urio_server_t *srv, int fd)
{
    listener_t *l = &srv->ls[srv->nls++];
    l->srv = srv;
    l->fd = fd;
    l->addrlen = sizeof l->addr;
    if (getsockname(fd, (struct sockaddr *)&l->addr, &l->addrlen) < 0)
        l->addrlen = 0;
    if (srv->nls == 1 && l->addr.ss_family != AF_UNIX)
        srv->port = ntohs(((struct sockaddr_in *)&l->addr)->sin_port);
    return 0;
}

/* The server is listening: list it and start accepting. */
static void server_start(urio_server_t *srv)
{
    urio__io_t *io = srv->io;
    srv->next = io->servers;
    if (io->servers)
        io->servers->prev = srv;
    io->servers = srv;
    for (unsigned i = 0; i < srv->nls; i++)
        listener_arm(&srv->ls[i]);
}

static void server_discard(urio_server_t *srv)
{
    for (unsigned i = 0; i < srv->nls; i++)
        close(srv->ls[i].fd);
    urio__free(srv->unix_path);
    urio__free(srv->stack);
    urio__free(srv);
}

/* Checks what every server constructor takes; gives the io state. */
static int server_check(urio_server_t **out, urio_conn_fn fn, urio__io_t **io, const char *name)
{
    urio__task_t *t = urio__io_task(name);
    if (t == NULL)
        return -EPERM;
    urio__io_clear_message();
    if (out == NULL || fn == NULL)
        return urio__io_fail(-EINVAL, "%s(): NULL %s", name, out == NULL ? "out" : "handler");
    *out = NULL;
    *io = urio__io_get(t->loop);
    return *io ? 0 : -ENOMEM;
}

URIO_EXPORT int urio_server_new_site(urio_server_t **out, const char *host, int port,
                                     urio_conn_fn fn, void *arg, const urio_server_opts_t *opts,
                                     const urio_site_t *site)
{
    urio__io_t *io = NULL;
    int err = server_check(out, fn, &io, "urio_server_new");
    if (err < 0)
        return err;
    if (port < 0 || port > 65535)
        return urio__io_fail(-EINVAL, "urio_server_new(): port %d is out of range (0..65535)",
                             port);
    urio_server_t *srv = server_alloc(fn, arg, opts, site, io);
    if (srv == NULL)
        return -ENOMEM;
    int backlog = srv->opts.backlog;
    bool wildcard = host == NULL || host[0] == '\0' || strcmp(host, "::") == 0;
    if (wildcard) {
        /* One socket for IPv6 and IPv4 (dual-stack), or IPv4 alone without IPv6. */
        struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
                                    .sin6_addr = IN6ADDR_ANY_INIT };
        int fd = listen_on((struct sockaddr *)&in6, sizeof in6, backlog, srv->opts.reuseport,
                           srv->opts.v6only ? 1 : 0);
        if (fd == -EAFNOSUPPORT && !srv->opts.v6only) {
            struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
            fd = listen_on((struct sockaddr *)&in, sizeof in, backlog, srv->opts.reuseport, -1);
        }
        if (fd < 0) {
            server_discard(srv);
            return fd;
        }
        add_listener(srv, fd);
    } else {
        struct addrinfo *ai = NULL;
        err = urio__resolve(host, port, true, 0, &ai);
        if (err < 0) {
            server_discard(srv);
            return err;
        }
        for (struct addrinfo *a = ai; a != NULL && srv->nls < MAX_LISTENERS; a = a->ai_next) {
            /* Port 0 with several addresses: all on the port the first one got. */
            if (srv->nls > 0 && port == 0) {
                if (a->ai_family == AF_INET)
                    ((struct sockaddr_in *)a->ai_addr)->sin_port = htons((uint16_t)srv->port);
                else if (a->ai_family == AF_INET6)
                    ((struct sockaddr_in6 *)a->ai_addr)->sin6_port = htons((uint16_t)srv->port);
            }
            int fd = listen_on(a->ai_addr, a->ai_addrlen, backlog, srv->opts.reuseport, 1);
            if (fd < 0) {
                freeaddrinfo(ai);
                server_discard(srv);
                return fd;
            }
            add_listener(srv, fd);
        }
        freeaddrinfo(ai);
        if (srv->nls == 0) {
            server_discard(srv);
            return urio__io_fail(URIO_ENOHOST, "no address to listen on for '%s'", host);
        }
    }
    server_start(srv);
    *out = srv;
    return 0;
}

URIO_EXPORT int urio_server_new_unix_site(urio_server_t **out, const char *path, urio_conn_fn fn,
                                          void *arg, const urio_server_opts_t *opts,
                                          const urio_site_t *site)
{
    urio__io_t *io = NULL;
    int err = server_check(out, fn, &io, "urio_server_new_unix");
    if (err < 0)
        return err;
    if (path == NULL || path[0] == '\0')
        return urio__io_fail(-EINVAL, "urio_server_new_unix(): no path");
    struct sockaddr_un un;
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    size_t plen = strlen(path);
    if (plen >= sizeof un.sun_path)
        return urio__io_fail(-ENAMETOOLONG, "unix socket path too long (%zu bytes, at most "
                             "%zu): %s", plen, sizeof un.sun_path - 1, path);
    memcpy(un.sun_path, path, plen);
    /* A socket file left by a server that died is replaced, as asyncio does. */
    struct stat st;
    if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    urio_server_t *srv = server_alloc(fn, arg, opts, site, io);
    if (srv == NULL)
        return -ENOMEM;
    srv->unix_path = urio__strdup(path);
    if (srv->unix_path == NULL) {
        server_discard(srv);
        return -ENOMEM;
    }
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen + 1);
    int fd = listen_on((struct sockaddr *)&un, len, srv->opts.backlog, false, -1);
    if (fd < 0) {
        urio__free(srv->unix_path);
        srv->unix_path = NULL;      /* not ours to unlink */
        server_discard(srv);
        return fd;
    }
    add_listener(srv, fd);
    server_start(srv);
    *out = srv;
    return 0;
}

URIO_EXPORT int urio_server_port(const urio_server_t *srv)
{
    return srv ? srv->port : 0;
}

URIO_EXPORT unsigned urio_server_connections(const urio_server_t *srv)
{
    return srv ? srv->nconns : 0;
}

/* ------------------------------------------------------------------ */
/* Closing                                                              */

URIO_EXPORT void urio_server_close(urio_server_t *srv)
{
    if (srv == NULL || srv->closed || !urio__loop_check_thread(srv->loop, "urio_server_close"))
        return;
    srv->closed = true;
    if (srv->backoff_timer.id) {
        urio_handle_cancel(srv->loop, srv->backoff_timer);
        srv->backoff_timer.id = 0;
    }
    srv->backing_off = false;
    for (unsigned i = 0; i < srv->nls; i++) {
        listener_t *l = &srv->ls[i];
        if (l->armed)
            urio__op_cancel(&srv->loop->ring, &l->op);   /* its final CQE closes the socket */
        else
            listener_close(l);
    }
    if (srv->unix_path) {
        unlink(srv->unix_path);
        urio__free(srv->unix_path);
        srv->unix_path = NULL;
    }
}

static void wait_cancel(void *arg)
{
    urio_server_t *srv = arg;
    urio__io_waiter_wake(srv->loop, &srv->ww, -ECANCELED);
}

static void wait_timeout(void *arg)
{
    urio_server_t *srv = arg;
    srv->ww.timer.id = 0;
    urio__io_waiter_wake(srv->loop, &srv->ww, -ETIMEDOUT);
}

/* Parks t until the connections are gone (or the deadline, or a cancel). */
static int wait_conns(urio_server_t *srv, urio__task_t *t, uint64_t deadline)
{
    static const urio_site_t site = { "<server wait_closed deadline>", __FILE__, __LINE__ };
    int err = urio__io_waiter_arm(srv->loop, &srv->ww, t, deadline, wait_timeout, srv, &site);
    if (err < 0)
        return err;
    return urio__io_waiter_park(&srv->ww, wait_cancel, srv);
}

static void cancel_conns(urio_server_t *srv)
{
    for (urio_stream_t *s = srv->conns; s != NULL; s = s->cnext)
        if (s->task)
            urio_future_cancel(s->task);
}

URIO_EXPORT int urio_server_wait_closed(urio_server_t *srv, uint64_t deadline)
{
    urio__task_t *t = urio__io_task("urio_server_wait_closed");
    if (t == NULL)
        return -EPERM;
    if (srv == NULL || !srv->closed || srv->loop != t->loop)
        return -EINVAL;
    if (srv->ww.task)
        return -EBUSY;
    if (urio__task_cancel_pending(t))
        return -ECANCELED;
    if (srv->nconns == 0)
        return 0;
    srv->refs++;
    int err = wait_conns(srv, t, deadline);
    if (err == -ETIMEDOUT) {
        /* The grace period is over: cancel the handlers, and wait for them to end. */
        cancel_conns(srv);
        int e2 = srv->nconns ? wait_conns(srv, t, 0) : 0;
        if (e2 == -ECANCELED || e2 == -ENOMEM)
            err = e2;
    }
    server_unref(srv);
    return err;
}

URIO_EXPORT void urio_server_free(urio_server_t *srv)
{
    if (srv == NULL || !urio__loop_check_thread(srv->loop, "urio_server_free"))
        return;
    if (!srv->closed && srv->loop->debug)
        warn_unclosed(srv);
    urio_server_close(srv);
    cancel_conns(srv);              /* they end on their own; each holds the server */
    server_unref(srv);              /* the owner's */
}

/* ------------------------------------------------------------------ */
/* When the loop closes                                                 */

void urio__servers_close(urio__io_t *io)
{
    for (urio_server_t *srv = io->servers; srv != NULL; srv = srv->next) {
        if (!srv->closed && srv->refs > 0 && io->loop->debug)
            warn_unclosed(srv);
        srv->closed = true;
    }
}

void urio__servers_release(urio__io_t *io)
{
    while (io->servers) {
        urio_server_t *srv = io->servers;
        /* Handlers will never end now: let go of their tasks (the tasks' own release
         * reports them as destroyed while pending). */
        for (urio_stream_t *s = srv->conns; s != NULL; s = s->cnext) {
            urio_future_unref(s->task);
            s->task = NULL;
            s->server = NULL;
        }
        srv->conns = NULL;
        server_free(srv);
    }
}
