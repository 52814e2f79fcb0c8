/*
 * examples/debug/stall.c — the stall watchdog: a callback that computes
 * instead of returning keeps the loop from everything else.  The watchdog
 * says so while it is still stuck, with where the loop thread is; the same
 * stall is reported again at twice the time, then four times.
 */
#include <stdio.h>
#include <time.h>
#include <urio.h>

static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static volatile uint64_t sink;

static void __attribute__((noinline)) crunch_numbers(uint64_t ns)
{
    uint64_t end = cpu_ns() + ns, x = 88172645463325252u;
    while (cpu_ns() < end)
        for (int i = 0; i < 1000000; i++) {     /* xorshift: work that never returns to the loop */
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
    sink = x;
}

static void handle_request(void *arg)
{
    (void)arg;
    crunch_numbers(URIO_MS(450));
    printf("request handled\n");
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    urio_loop_t *loop;
    if (urio_loop_new(&loop, NULL) < 0)
        return 1;
    urio_loop_set_stall_watchdog(loop, URIO_MS(100));   /* debug mode's default: 1 s */
    urio_call_soon(loop, handle_request, NULL);
    urio_loop_stop(loop);
    urio_loop_run_forever(loop);
    return urio_loop_close(loop) < 0;
}
