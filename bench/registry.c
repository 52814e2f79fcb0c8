/*
 * registry.c — every benchmark urio-bench knows, in table order.
 *
 * Targets come from the project's goals; they are reported, never
 * enforced (the exit status does not depend on them).
 */
#include "bench.h"

#define NO_TARGET { BENCH_TARGET_NONE, 0.0 }

const bench_def_t bench_registry[] = {
    {
        .name = "dispatch.chain",
        .group = "dispatch",
        .urio = bench_urio_dispatch_chain,
        .peer = bench_uv_dispatch_chain,
        .n_metrics = 1,
        .metrics = {
            { "dispatch.chain", "ns/callback", 2, { BENCH_TARGET_URIO_MAX, 15.0 } },
        },
    },
    {
        .name = "dispatch.fanout",
        .group = "dispatch",
        .urio = bench_urio_dispatch_fanout,
        .peer = bench_uv_dispatch_fanout,
        .n_metrics = 1,
        .metrics = {
            { "dispatch.fanout", "ns/callback", 2, NO_TARGET },
        },
    },
    {
        .name = "dispatch.allocs",
        .group = "dispatch",
        .urio = bench_urio_dispatch_allocs,
        .peer = NULL,   /* libuv never allocates for an idle handle: nothing to compare */
        .n_metrics = 1,
        .metrics = {
            { "dispatch.allocs", "allocs/callback", 4, { BENCH_TARGET_URIO_MAX, 0.0 } },
        },
    },
    {
        .name = "timers",
        .group = "timers",
        .urio = bench_urio_timers,
        .peer = bench_uv_timers,
        .n_metrics = BENCH_TIMERS_N_METRICS,
        .metrics = {
            [BENCH_TIMERS_SCHEDULE] = { "timers.schedule", "ns/timer", 1,
                                        { BENCH_TARGET_RATIO_MIN, 8.0 } },
            [BENCH_TIMERS_FIRE_CPU] = { "timers.fire_cpu", "cpu ns/timer", 1,
                                        { BENCH_TARGET_RATIO_MIN, 8.0 } },
            [BENCH_TIMERS_LATE_P50] = { "timers.late_p50", "us late", 1, NO_TARGET },
            [BENCH_TIMERS_LATE_P99] = { "timers.late_p99", "us late", 1, NO_TARGET },
        },
    },
};

const size_t bench_registry_len = sizeof bench_registry / sizeof bench_registry[0];
