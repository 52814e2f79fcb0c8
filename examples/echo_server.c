/*
 * echo_server.c — a TCP (or Unix) echo server: one task per connection,
 * every byte sent back; one loop per core, each on its own thread with its
 * own listening socket on the same port (SO_REUSEPORT), so the kernel
 * spreads connections over the cores.
 *
 *   echo_server [--host H] [--port P] [--loops N] [--unix PATH] [--stats 1]
 *
 * --loops 0 (the default) runs one loop per core, --loops 1 one loop (on the
 * main thread); --port 0 picks a free port; --stats 1 prints at exit, on
 * stderr, how many connections each loop served ("loop I: N connections").
 * Once every loop listens it prints one line, "listening on <host>:<port>"
 * (or "listening on unix:<path>"), and serves until SIGINT or SIGTERM,
 * which the first loop reads from a signalfd through its ring; then each
 * loop stops accepting, gives its connections a second to finish, and the
 * program exits 0 with everything closed.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <urio.h>

#define SEC 1000000000ull

static const char *host = "127.0.0.1";
static int port = 8888;
static const char *unix_path;
static bool stats;

/* A loop, and what the first loop needs to start and stop it. */
struct shard {
    pthread_t thread;
    urio_loop_t *loop;           /* its loop, referenced while the first loop may use it */
    urio_future_t *stop;         /* completed (through its loop's inbox) to stop it */
    int status;                  /* what it reported: 1 listening, -errno failed */
    unsigned long connections;   /* served: its loop's thread only (read after the join) */
};

static struct shard *shards;
static long nshards;
static urio_loop_t *first_loop;
static urio_future_t *all_ready; /* the first loop's: every other shard reported */
static long reported;

static int echo(urio_stream_t *s, void *arg)
{
    ((struct shard *)arg)->connections++;
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

static int listen_here(urio_server_t **srv, struct shard *sh)
{
    urio_server_opts_t opts = { .reuseport = true };
    int err = unix_path ? urio_server_new_unix(srv, unix_path, echo, sh, &opts)
                        : urio_server_new(srv, host, port, echo, sh, &opts);
    if (err < 0) {
        const char *msg = urio_io_error_message();
        fprintf(stderr, "echo_server: %s\n", msg ? msg : urio_strerror(err));
    }
    return err;
}

static void stop_serving(urio_server_t *srv)
{
    urio_server_close(srv);
    urio_server_wait_closed(srv, urio_deadline_in(1 * SEC));
    urio_server_free(srv);
}

/* ------------------------------------------------------------------ */
/* The other shards, each on its own thread                            */

/* On the first loop: a shard says how its start went. */
static void shard_reported(void *arg)
{
    (void)arg;
    if (++reported == nshards - 1)
        urio_future_set_result(all_ready, NULL);
}

static void report(struct shard *sh, int status)
{
    sh->status = status;
    urio_call_soon_threadsafe(first_loop, shard_reported, sh);
}

/* On a shard's loop, from the first loop: finish serving. */
static void stop_shard(void *arg)
{
    urio_future_set_result(((struct shard *)arg)->stop, NULL);
}

static int serve_shard(void *arg, void **result)
{
    (void)result;
    struct shard *sh = arg;
    urio_server_t *srv;
    int err = urio_future_new(&sh->stop, urio_loop_current());
    if (err == 0 && (err = listen_here(&srv, sh)) < 0)
        urio_future_unref(sh->stop);
    if (err < 0) {
        report(sh, err);
        return err;
    }
    sh->loop = urio_loop_ref(urio_loop_current());
    report(sh, 1);
    urio_await(sh->stop, NULL);
    stop_serving(srv);
    urio_future_unref(sh->stop);
    return 0;
}

static void *shard_thread(void *arg)
{
    struct shard *sh = arg;
    int err = urio_run(URIO_CORO(serve_shard, sh), NULL, NULL);
    if (err < 0 && sh->status == 0)
        report(sh, err);                /* urio_run failed before serve_shard ran */
    return NULL;
}

/* ------------------------------------------------------------------ */
/* The first shard, on the main thread                                  */

static int serve_first(void *arg, void **result)
{
    (void)result;
    int sigfd = *(int *)arg;
    first_loop = urio_loop_current();
    urio_server_t *srv;
    int err = listen_here(&srv, &shards[0]);
    if (err < 0)
        return err;
    if (!unix_path)
        port = urio_server_port(srv);   /* the others listen on the port this one got */

    /* The other shards, once this one holds the port. */
    long started = 1;
    if (nshards > 1 && (err = urio_future_new(&all_ready, first_loop)) == 0) {
        for (; started < nshards; started++)
            if (pthread_create(&shards[started].thread, NULL, shard_thread,
                               &shards[started]) != 0)
                break;
        nshards = started;              /* (wait only for the threads that exist) */
        if (started > 1)
            urio_await(all_ready, NULL);
        urio_future_unref(all_ready);
    }
    for (long i = 1; i < started; i++)
        if (shards[i].status < 0)
            err = shards[i].status;

    if (err == 0) {
        if (unix_path)
            printf("listening on unix:%s\n", unix_path);
        else
            printf("listening on %s:%d\n", host, port);
        fflush(stdout);
        /* SIGINT or SIGTERM, read through the ring. */
        struct signalfd_siginfo si;
        err = urio_read(sigfd, &si, sizeof si, -1, 0);
        err = err == (int)sizeof si ? 0 : err;
    }
    for (long i = 1; i < started; i++) {
        if (shards[i].loop) {
            urio_call_soon_threadsafe(shards[i].loop, stop_shard, &shards[i]);
            urio_loop_unref(shards[i].loop);
        }
    }
    stop_serving(srv);
    for (long i = 1; i < started; i++)
        pthread_join(shards[i].thread, NULL);   /* (they stop on their own loops) */
    return err;
}

static void usage(void)
{
    fprintf(stderr, "usage: echo_server [--host H] [--port P] [--loops N] [--unix PATH] "
            "[--stats 1]\n");
    exit(2);
}

int main(int argc, char **argv)
{
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
            nshards = strtol(v, &end, 10);
            if (*end || nshards < 0 || nshards > 1024)
                usage();
        } else if (strcmp(argv[i - 1], "--unix") == 0) {
            unix_path = v;
        } else if (strcmp(argv[i - 1], "--stats") == 0) {
            stats = strcmp(v, "0") != 0;
        } else {
            usage();
        }
    }
    if (nshards == 0)
        nshards = sysconf(_SC_NPROCESSORS_ONLN) > 0 ? sysconf(_SC_NPROCESSORS_ONLN) : 1;
    if (unix_path)
        nshards = 1;                    /* SO_REUSEPORT is for TCP */

    /* SIGINT and SIGTERM are blocked in every thread and read from a signalfd. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sigfd = signalfd(-1, &sigs, SFD_CLOEXEC);
    shards = calloc((size_t)nshards, sizeof *shards);
    if (sigfd < 0 || shards == NULL) {
        perror("echo_server");
        return 1;
    }
    int err = urio_run(URIO_CORO(serve_first, &sigfd), NULL, NULL);
    for (long i = 0; stats && i < nshards; i++)
        fprintf(stderr, "loop %ld: %lu connections\n", i, shards[i].connections);
    close(sigfd);
    free(shards);
    return err < 0 ? 1 : 0;
}
