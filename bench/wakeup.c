/*
 * wakeup.c — urio's side of the wake-up benchmark, and the floor.
 *
 * A client thread posts one call to an idle loop with
 * urio_call_soon_threadsafe; the call, on the loop, wakes the client
 * through an eventfd the client blocks on.  The client (shared by every
 * side: bench_pingpong_*) pauses before each trip so that the loop has
 * gone back to sleep: the row measures waking a sleeping loop, the latency
 * a request handed over by another thread sees, not the inbox's
 * throughput.  The return hop, an eventfd write and a blocked read(2), is
 * the same on every side.
 *
 * The floor is the same client with no loop at all: the server is a thread
 * blocked in read(2) on an eventfd of its own, answering each ping with the
 * client's eventfd.  Two eventfd hops between two threads: what any loop's
 * round trip costs at least.  It is measured here, in the same run as
 * urio's, so the target "urio within 1.1x of the floor" compares numbers
 * taken at the same moment of the machine.
 */
#include "bench.h"
#include "loop_util.h"

#include <unistd.h>

#include <urio.h>

/* ------------------------------------------------------------------ */
/* urio                                                                  */

typedef struct wake_run {
    urio_loop_t *loop;
    bench_pingpong_t pp;
} wake_run_t;

static void wake_reply(void *arg)
{
    bench_pingpong_reply(arg);
}

static void wake_stop(void *arg)
{
    urio_loop_stop(arg);
}

/* Client thread. */
static void wake_post(void *ctx)
{
    wake_run_t *w = ctx;
    int err = urio_call_soon_threadsafe(w->loop, wake_reply, &w->pp);
    if (err < 0)
        bench_die("urio_call_soon_threadsafe: %s", urio_strerror(err));
}

/* Client thread, after the last trip. */
static void wake_finish(void *ctx)
{
    wake_run_t *w = ctx;
    int err = urio_call_soon_threadsafe(w->loop, wake_stop, w->loop);
    if (err < 0)
        bench_die("urio_call_soon_threadsafe: %s", urio_strerror(err));
    urio_loop_unref(w->loop);   /* taken for this thread by urio_wakeup_rtt */
}

static void urio_wakeup_rtt(const bench_config_t *cfg, double *p50, double *p99)
{
    wake_run_t w = { .loop = bench_urio_loop_new() };
    urio_loop_ref(w.loop);
    bench_pingpong_start(&w.pp, cfg, wake_post, wake_finish, &w);
    bench_urio_run(w.loop);   /* wake_finish stops it */
    bench_pingpong_join(&w.pp, p50, p99);
    bench_urio_loop_close(w.loop);
}

/* ------------------------------------------------------------------ */
/* The floor: a raw eventfd ping-pong                                    */

enum { FLOOR_PING = 1, FLOOR_QUIT = 2 };

typedef struct floor_run {
    int efd;               /* the server's */
    bench_pingpong_t pp;
} floor_run_t;

static void floor_post(void *ctx)
{
    bench_efd_signal(((floor_run_t *)ctx)->efd, FLOOR_PING);
}

static void floor_finish(void *ctx)
{
    bench_efd_signal(((floor_run_t *)ctx)->efd, FLOOR_QUIT);
}

static void eventfd_floor(const bench_config_t *cfg, double *p50, double *p99)
{
    floor_run_t f = { .efd = bench_efd_new() };
    bench_pingpong_start(&f.pp, cfg, floor_post, floor_finish, &f);
    /* The client writes once per trip and waits for the answer, so each
     * read returns exactly one write: a ping, or the final quit. */
    while (bench_efd_wait(f.efd) == FLOOR_PING)
        bench_pingpong_reply(&f.pp);
    bench_pingpong_join(&f.pp, p50, p99);
    close(f.efd);
}

/* ------------------------------------------------------------------ */

void bench_urio_wakeup(const bench_config_t *cfg, double *out)
{
    /* The floor and urio take turns going first from one run to the next,
     * as the harness alternates the sides. */
    static unsigned calls;
    bool floor_first = calls++ % 2 == 0;
    if (floor_first)
        eventfd_floor(cfg, &out[BENCH_WAKEUP_FLOOR_P50], &out[BENCH_WAKEUP_FLOOR_P99]);
    urio_wakeup_rtt(cfg, &out[BENCH_WAKEUP_RTT_P50], &out[BENCH_WAKEUP_RTT_P99]);
    if (!floor_first)
        eventfd_floor(cfg, &out[BENCH_WAKEUP_FLOOR_P50], &out[BENCH_WAKEUP_FLOOR_P99]);
}
