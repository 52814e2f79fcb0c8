/*
 * examples/debug/virtual_clock.c — testing code that waits for minutes, in
 * microseconds: under a loop's virtual clock, when nothing but a timer can
 * wake the loop, its time jumps to that timer (Trio's autojump clock,
 * tokio's paused time).  Here: a client that retries with exponential
 * backoff (1 s, 2 s, 4 s... capped at 60 s) and gives up after 10 minutes.
 */
#include <errno.h>
#include <stdio.h>
#include <time.h>
#include <urio.h>

static double real_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The service never answers: a future nobody completes. */
static int call_service(urio_loop_t *loop, uint64_t timeout)
{
    urio_future_t *reply;
    if (urio_future_new(&reply, loop) < 0)
        return -ENOMEM;
    int err = urio_wait_for(reply, timeout, NULL);
    urio_future_unref(reply);
    return err;
}

static int client(void *arg, void **res)
{
    (void)arg;
    (void)res;
    urio_loop_t *loop = urio_loop_current();
    uint64_t start = urio_loop_time(loop), backoff = URIO_SEC(1);
    int attempts = 0;
    while (urio_loop_time(loop) - start < URIO_SEC(600)) {
        attempts++;
        if (call_service(loop, URIO_SEC(5)) == 0)
            return 0;
        urio_sleep(backoff);
        backoff = backoff * 2 > URIO_SEC(60) ? URIO_SEC(60) : backoff * 2;
    }
    printf("gave up after %d attempts and %.0f s of loop time\n", attempts,
           (urio_loop_time(loop) - start) / 1e9);
    return -ETIMEDOUT;
}

int main(void)
{
    double t0 = real_seconds();
    urio_run_opts_t opts = { .virtual_clock = true };
    int err = urio_run(URIO_CORO(client, NULL), &opts, NULL);
    printf("client: %s; real time: %.3f s\n", urio_strerror(err), real_seconds() - t0);
    return err == -ETIMEDOUT ? 0 : 1;
}
