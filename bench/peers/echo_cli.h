/*
 * peers/echo_cli.h — the command line every echo server of the benchmark
 * speaks, urio's examples/echo_server included, so that the harness starts
 * each of them the same way:
 *
 *   SERVER [--host H] [--port P] [--loops N] [--unix PATH]
 *
 * Once listening, a server prints exactly one line, "listening on
 * <host>:<port>" (the port the kernel chose when P is 0; "listening on
 * unix:<path>" with --unix), flushes stdout, echoes every byte it receives
 * until SIGINT or SIGTERM, and exits 0.  The peers are single-threaded: one
 * loop, so --loops accepts only 1.
 *
 * Header-only statics: each peer is its own small executable.
 */
#ifndef URIO_BENCH_ECHO_CLI_H
#define URIO_BENCH_ECHO_CLI_H

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { ECHO_CLI_BACKLOG = 1024 };

typedef struct echo_cli {
    const char *prog;
    const char *host;          /* default 127.0.0.1 */
    const char *port;          /* default 8888; "0": ephemeral */
    const char *unix_path;     /* NULL: TCP */
} echo_cli_t;

__attribute__((noreturn, format(printf, 2, 3)))
static inline void echo_cli_die(const echo_cli_t *cli, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", cli->prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static inline void echo_cli_usage(const echo_cli_t *cli)
{
    fprintf(stderr, "usage: %s [--host H] [--port P] [--loops 1] [--unix PATH]\n", cli->prog);
    exit(2);
}

static inline void echo_cli_parse(echo_cli_t *cli, int argc, char **argv)
{
    const char *slash = strrchr(argv[0], '/');
    *cli = (echo_cli_t){ .prog = slash ? slash + 1 : argv[0], .host = "127.0.0.1",
                         .port = "8888" };
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc)
            echo_cli_usage(cli);
        const char *v = argv[++i];
        if (strcmp(opt, "--host") == 0) {
            cli->host = v;
        } else if (strcmp(opt, "--port") == 0) {
            cli->port = v;
        } else if (strcmp(opt, "--unix") == 0) {
            cli->unix_path = v;
        } else if (strcmp(opt, "--loops") == 0) {
            if (strcmp(v, "1") != 0)
                echo_cli_die(cli, "one loop only (--loops 1), not '%s'", v);
        } else {
            echo_cli_usage(cli);
        }
    }
}

/* The address to listen on, for servers that bind through their own API
 * (libuv).  Numeric ports only; the host may be a name. */
static inline void echo_cli_resolve(const echo_cli_t *cli, struct sockaddr_storage *ss,
                                    socklen_t *len)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *res;
    int err = getaddrinfo(cli->host, cli->port, &hints, &res);
    if (err)
        echo_cli_die(cli, "%s:%s: %s", cli->host, cli->port, gai_strerror(err));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
}

/* A listening socket (TCP or Unix, per the command line) with the given
 * extra socket(2) flags (SOCK_NONBLOCK). */
static inline int echo_cli_listen(const echo_cli_t *cli, int flags)
{
    int fd;
    if (cli->unix_path) {
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        if (strlen(cli->unix_path) >= sizeof sun.sun_path)
            echo_cli_die(cli, "unix path too long: %s", cli->unix_path);
        strcpy(sun.sun_path, cli->unix_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
        if (fd < 0)
            echo_cli_die(cli, "socket: %s", strerror(errno));
        unlink(cli->unix_path);
        if (bind(fd, (struct sockaddr *)&sun, sizeof sun) != 0)
            echo_cli_die(cli, "bind %s: %s", cli->unix_path, strerror(errno));
    } else {
        struct sockaddr_storage ss;
        socklen_t len;
        echo_cli_resolve(cli, &ss, &len);
        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
        if (fd < 0)
            echo_cli_die(cli, "socket: %s", strerror(errno));
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&ss, len) != 0)
            echo_cli_die(cli, "bind %s:%s: %s", cli->host, cli->port, strerror(errno));
    }
    if (listen(fd, ECHO_CLI_BACKLOG) != 0)
        echo_cli_die(cli, "listen: %s", strerror(errno));
    return fd;
}

/* Prints the one line the harness waits for, with the bound port. */
static inline void echo_cli_announce(const echo_cli_t *cli, int listen_fd)
{
    if (cli->unix_path) {
        printf("listening on unix:%s\n", cli->unix_path);
    } else {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        if (getsockname(listen_fd, (struct sockaddr *)&ss, &len) != 0)
            echo_cli_die(cli, "getsockname: %s", strerror(errno));
        char host[NI_MAXHOST], port[NI_MAXSERV];
        int err = getnameinfo((struct sockaddr *)&ss, len, host, sizeof host, port, sizeof port,
                              NI_NUMERICHOST | NI_NUMERICSERV);
        if (err)
            echo_cli_die(cli, "getnameinfo: %s", gai_strerror(err));
        printf("listening on %s:%s\n", host, port);
    }
    fflush(stdout);
}

/* Every peer turns Nagle off on its connections, as a latency-minded
 * server does (asyncio does it by default): small echoes go out at once. */
static inline void echo_cli_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);   /* ENOTSUP on Unix sockets */
}

/* SIGINT and SIGTERM as a readable fd (for the servers whose loop waits
 * on fds), blocked as signals; SIGPIPE ignored (a peer that vanished is an
 * error code, not a death). */
static inline int echo_cli_signalfd(const echo_cli_t *cli)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        echo_cli_die(cli, "sigprocmask: %s", strerror(errno));
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        echo_cli_die(cli, "signalfd: %s", strerror(errno));
    signal(SIGPIPE, SIG_IGN);
    return fd;
}

#endif
