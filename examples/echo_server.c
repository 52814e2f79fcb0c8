/*
 * echo_server.c — a TCP (or Unix) echo server: one task per connection,
 * every byte sent back; one loop per core, each with its own listening
 * socket on the same port (SO_REUSEPORT), so the kernel spreads connections
 * over the cores.
 *
 *   echo_server [--host H] [--port P] [--loops N] [--unix PATH]
 *
 * --loops 0 (the default) runs one loop per core, --loops 1 one loop;
 * --port 0 picks a free port.  Once every loop listens it prints one line,
 * "listening on <host>:<port>" (or "listening on unix:<path>"), and serves
 * until SIGINT or SIGTERM; then each loop stops accepting, gives its
 * connections a second to finish, and the program exits 0 with everything
 * closed.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <urio.h>

#define SEC 1000000000ull

static const char *host = "127.0.0.1";
static int port = 8888;
static const char *unix_path;

/* One loop on its own thread, and what the main thread needs to stop it. */
struct shard {
    pthread_t thread;
    int index;
    urio_loop_t *loop;           /* referenced (urio_loop_ref) while the main thread may use it */
    urio_future_t *stop;         /* completed by the main thread, through the loop's inbox */
    int status;                  /* 0 while starting, 1 listening, -errno failed */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static int echo(urio_stream_t *s, void *arg)
{
    (void)arg;
    char buf[16384];
    for (;;) {
        int n = urio_stream_read(s, buf, sizeof buf, 0);
        if (n == 0 || n == -ECONNRESET)
            return 0;               /* the client went away: a normal end */
        if (n < 0)
            return n;
        int err = urio_stream_write(s, buf, (size_t)n);
        if (err == 0)
            err = urio_stream_drain(s, 0);
        if (err == -EPIPE || err == -ECONNRESET)
            return 0;
        if (err < 0)
            return err;
    }
}

static void set_status(struct shard *sh, int status)
{
    pthread_mutex_lock(&mu);
    sh->status = status;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static int serve(void *arg, void **result)
{
    (void)result;
    struct shard *sh = arg;
    urio_server_opts_t opts = { .reuseport = true };
    urio_server_t *srv;
    int err = unix_path ? urio_server_new_unix(&srv, unix_path, echo, NULL, &opts)
                        : urio_server_new(&srv, host, port, echo, NULL, &opts);
    if (err < 0) {
        const char *msg = urio_io_error_message();
        fprintf(stderr, "echo_server: %s\n", msg ? msg : urio_strerror(err));
        set_status(sh, err);
        return err;
    }
    if (urio_future_new(&sh->stop, urio_loop_current()) < 0) {
        urio_server_free(srv);
        set_status(sh, -ENOMEM);
        return -ENOMEM;
    }
    sh->loop = urio_loop_ref(urio_loop_current());
    if (sh->index == 0 && !unix_path)
        port = urio_server_port(srv);   /* the others listen on the port this one got */
    set_status(sh, 1);

    urio_await(sh->stop, NULL);         /* until SIGINT or SIGTERM */
    urio_server_close(srv);
    urio_server_wait_closed(srv, urio_deadline_in(1 * SEC));
    urio_server_free(srv);
    urio_future_unref(sh->stop);
    return 0;
}

static void *shard_main(void *arg)
{
    struct shard *sh = arg;
    int err = urio_run(URIO_CORO(serve, sh), NULL, NULL);
    if (err < 0 && sh->status == 0)
        set_status(sh, err);            /* urio_run failed before serve ran */
    return NULL;
}

/* On the shard's loop, from the main thread's signal: let serve finish. */
static void stop_shard(void *arg)
{
    struct shard *sh = arg;
    urio_future_set_result(sh->stop, NULL);
}

static int start(struct shard *sh)
{
    if (pthread_create(&sh->thread, NULL, shard_main, sh) != 0)
        return -EAGAIN;
    pthread_mutex_lock(&mu);
    while (sh->status == 0)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return sh->status < 0 ? sh->status : 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: echo_server [--host H] [--port P] [--loops N] [--unix PATH]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    long nloops = 0;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        char *end;
        const char *v = argv[++i];
        if (strcmp(argv[i - 1], "--host") == 0) {
            host = v;
        } else if (strcmp(argv[i - 1], "--port") == 0) {
            port = (int)strtol(v, &end, 10);
            if (*end || port < 0 || port > 65535)
                usage();
        } else if (strcmp(argv[i - 1], "--loops") == 0) {
            nloops = strtol(v, &end, 10);
            if (*end || nloops < 0 || nloops > 1024)
                usage();
        } else if (strcmp(argv[i - 1], "--unix") == 0) {
            unix_path = v;
        } else {
            usage();
        }
    }
    if (nloops == 0)
        nloops = sysconf(_SC_NPROCESSORS_ONLN) > 0 ? sysconf(_SC_NPROCESSORS_ONLN) : 1;
    if (unix_path)
        nloops = 1;                     /* SO_REUSEPORT is for TCP */

    /* Signals reach only the main thread, which waits for them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct shard *shards = calloc((size_t)nloops, sizeof *shards);
    if (shards == NULL)
        return 1;
    int started = 0, err = 0;
    for (; started < nloops && err == 0; started++) {
        shards[started].index = started;
        err = start(&shards[started]);  /* the first one first: it may pick the port */
    }
    if (err == 0) {
        if (unix_path)
            printf("listening on unix:%s\n", unix_path);
        else
            printf("listening on %s:%d\n", host, port);
        fflush(stdout);
        int sig;
        sigwait(&sigs, &sig);
    }
    for (int i = 0; i < started; i++) {
        if (shards[i].loop) {
            urio_call_soon_threadsafe(shards[i].loop, stop_shard, &shards[i]);
            urio_loop_unref(shards[i].loop);
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(shards[i].thread, NULL);
    free(shards);
    return err < 0 ? 1 : 0;
}
