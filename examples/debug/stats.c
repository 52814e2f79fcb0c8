/*
 * examples/debug/stats.c — a loop's statistics: counters, busy and idle
 * time, and histograms (log2 buckets of nanoseconds) of how late the loop
 * woke for its timers and, in debug mode, how long callbacks took.  Cheap
 * enough to leave on in production.
 */
#include <stdio.h>
#include <urio.h>

static void tick(void *arg)
{
    int *left = arg;
    if (--*left > 0)
        urio_call_later(urio_loop_current(), URIO_MS(2), tick, left);
    else
        urio_loop_stop(urio_loop_current());
}

/* The bucket's lower bound, readably. */
static const char *bucket(int k, char *buf, size_t n)
{
    uint64_t ns = k == 0 ? 0 : 1ull << k;
    if (ns >= 1000000)
        snprintf(buf, n, "%4llu ms", (unsigned long long)(ns / 1000000));
    else if (ns >= 1000)
        snprintf(buf, n, "%4llu us", (unsigned long long)(ns / 1000));
    else
        snprintf(buf, n, "%4llu ns", (unsigned long long)ns);
    return buf;
}

int main(void)
{
    urio_loop_t *loop;
    urio_loop_opts_t opts = { .debug = 1 };
    if (urio_loop_new(&loop, &opts) < 0)
        return 1;
    int left = 50;
    urio_call_soon(loop, tick, &left);
    urio_loop_run_forever(loop);
    urio_loop_stats_t st;
    urio_loop_stats(loop, &st);
    printf("turns %llu, callbacks %llu, timers fired %llu, system calls %llu\n",
           (unsigned long long)st.turns, (unsigned long long)st.callbacks,
           (unsigned long long)st.timers_fired, (unsigned long long)st.enters);
    printf("busy %.1f ms, idle %.1f ms\n", st.busy_ns / 1e6, st.idle_ns / 1e6);
    char b[32];
    printf("wake-up lateness:\n");
    for (int k = 0; k < URIO_STATS_BUCKETS; k++)
        if (st.lag_hist[k])
            printf("  >= %s: %llu\n", bucket(k, b, sizeof b), (unsigned long long)st.lag_hist[k]);
    printf("callback durations:\n");
    for (int k = 0; k < URIO_STATS_BUCKETS; k++)
        if (st.callback_hist[k])
            printf("  >= %s: %llu\n", bucket(k, b, sizeof b),
                   (unsigned long long)st.callback_hist[k]);
    return urio_loop_close(loop) < 0;
}
