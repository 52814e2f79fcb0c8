/*
 * echo_client.c — connects to an echo server, sends each argument as a
 * line, and prints each line that comes back.  Then it half-closes (the
 * server sees EOF) and checks that the server closes too.
 *
 *   echo_client [--host H] [--port P | --unix PATH] [--timeout SECONDS] LINE...
 *
 * Prints (for `echo_client --port 8888 hello world`):
 *   hello
 *   world
 *   2 lines echoed
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <urio.h>

#define SEC 1000000000ull

struct args {
    const char *host;
    int port;
    const char *unix_path;
    uint64_t timeout;
    char **lines;
    int nlines;
};

static int fail(int err, const char *what)
{
    const char *msg = urio_io_error_message();
    fprintf(stderr, "echo_client: %s: %s\n", what, msg ? msg : urio_strerror(err));
    return err;
}

static int client(void *arg, void **result)
{
    (void)result;
    struct args *a = arg;
    uint64_t deadline = urio_deadline_in(a->timeout);
    urio_stream_t *s;
    int err = a->unix_path ? urio_open_unix_connection(&s, a->unix_path, deadline)
                           : urio_open_connection(&s, a->host, a->port, deadline);
    if (err < 0)
        return fail(err, "connect");
    /* Everything out at once; the replies come back in order. */
    for (int i = 0; i < a->nlines && err == 0; i++) {
        err = urio_stream_write(s, a->lines[i], strlen(a->lines[i]));
        if (err == 0)
            err = urio_stream_write(s, "\n", 1);
    }
    char line[4096];
    for (int i = 0; i < a->nlines && err >= 0; i++) {
        err = urio_stream_read_until(s, "\n", 1, line, sizeof line, deadline);
        if (err > 0)
            printf("%.*s", err, line);
    }
    if (err >= 0) {
        /* Half-close: the server reads EOF and closes its side. */
        urio_stream_write_eof(s);
        err = urio_stream_read(s, line, sizeof line, deadline);
        if (err > 0)
            err = -EPROTO;          /* more than was sent came back */
    }
    urio_stream_close(s);
    if (err < 0)
        return fail(err, "echo");
    printf("%d lines echoed\n", a->nlines);
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: echo_client [--host H] [--port P | --unix PATH] [--timeout S] "
                    "LINE...\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct args a = { .host = "127.0.0.1", .port = 8888, .timeout = 10 * SEC };
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--host") == 0)
            a.host = argv[i + 1];
        else if (strcmp(argv[i], "--port") == 0)
            a.port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--unix") == 0)
            a.unix_path = argv[i + 1];
        else if (strcmp(argv[i], "--timeout") == 0)
            a.timeout = (uint64_t)(atof(argv[i + 1]) * 1e9);
        else
            usage();
    }
    a.lines = argv + i;
    a.nlines = argc - i;
    return urio_run(URIO_CORO(client, &a), NULL, NULL) < 0;
}
