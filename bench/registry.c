/*
 * registry.c — every benchmark urio-bench knows, in table order.
 *
 * Targets come from the project's goals; they are reported, never
 * enforced (the exit status does not depend on them).
 */
#include "bench.h"

/* Designated initializers: a field added to the structs needs no edit here. */
#define METRIC(name_, unit_, decimals_, target_)                                  \
    { .name = (name_), .unit = (unit_), .decimals = (decimals_), .target = target_ }
/* A reference measured by urio's side only (no peer value): a floor. */
#define URIO_ONLY_METRIC(name_, unit_, decimals_)                                 \
    { .name = (name_), .unit = (unit_), .decimals = (decimals_), .urio_only = true }

#define NO_TARGET { .kind = BENCH_TARGET_NONE }
#define URIO_MAX(v) { .kind = BENCH_TARGET_URIO_MAX, .value = (v) }
#define RATIO_MIN(v) { .kind = BENCH_TARGET_RATIO_MIN, .value = (v) }
#define REF_MAX(v, metric) { .kind = BENCH_TARGET_REF_MAX, .value = (v), .ref = (metric) }
#define PEER_MAX(v) { .kind = BENCH_TARGET_PEER_MAX, .value = (v) }
/* A metric with a second goal (against a floor, say). */
#define METRIC2(name_, unit_, decimals_, target_, target2_)                       \
    { .name = (name_), .unit = (unit_), .decimals = (decimals_), .target = target_, \
      .target2 = target2_ }

const bench_def_t bench_registry[] = {
    {
        .name = "dispatch.chain",
        .group = "dispatch",
        .urio = bench_urio_dispatch_chain,
        .peer = bench_uv_dispatch_chain,
        .n_metrics = 1,
        .metrics = {
            METRIC("dispatch.chain", "ns/callback", 2, URIO_MAX(15.0)),
        },
    },
    {
        .name = "dispatch.fanout",
        .group = "dispatch",
        .urio = bench_urio_dispatch_fanout,
        .peer = bench_uv_dispatch_fanout,
        .n_metrics = 1,
        .metrics = {
            METRIC("dispatch.fanout", "ns/callback", 2, NO_TARGET),
        },
    },
    {
        .name = "dispatch.allocs",
        .group = "dispatch",
        .urio = bench_urio_dispatch_allocs,
        .peer = NULL,   /* libuv never allocates for an idle handle: nothing to compare */
        .n_metrics = 1,
        .metrics = {
            METRIC("dispatch.allocs", "allocs/callback", 4, URIO_MAX(0.0)),
        },
    },
    /* Issue 10's goals: at most 60 ns per schedule and 250 ns of CPU per
     * fired timer, warm and cold, with 200,000 sparse timers as with dense. */
    {
        .name = "timers",
        .group = "timers",
        .urio = bench_urio_timers,
        .peer = bench_uv_timers,
        .n_metrics = BENCH_TIMERS_N_METRICS,
        .metrics = {
            [BENCH_TIMERS_SCHEDULE] = METRIC("timers.schedule", "ns/timer", 1, URIO_MAX(60.0)),
            [BENCH_TIMERS_FIRE_CPU] = METRIC("timers.fire_cpu", "cpu ns/timer", 1,
                                             URIO_MAX(250.0)),
            [BENCH_TIMERS_LATE_P50] = METRIC("timers.late_p50", "us late", 1, NO_TARGET),
            [BENCH_TIMERS_LATE_P99] = METRIC("timers.late_p99", "us late", 1, NO_TARGET),
        },
    },
    /* The same deadlines on a fresh loop, with no warm-up on either side. */
    {
        .name = "timers.cold",
        .group = "timers",
        .urio = bench_urio_timers_cold,
        .peer = bench_uv_timers_cold,
        .n_metrics = BENCH_TIMERS_N_METRICS,
        .metrics = {
            [BENCH_TIMERS_SCHEDULE] = METRIC("timers.cold_schedule", "ns/timer", 1,
                                             URIO_MAX(60.0)),
            [BENCH_TIMERS_FIRE_CPU] = METRIC("timers.cold_fire_cpu", "cpu ns/timer", 1,
                                             URIO_MAX(250.0)),
            [BENCH_TIMERS_LATE_P50] = METRIC("timers.cold_late_p50", "us late", 1, NO_TARGET),
            [BENCH_TIMERS_LATE_P99] = METRIC("timers.cold_late_p99", "us late", 1, NO_TARGET),
        },
    },
    /* 200,000 timers over a second on a fresh loop: one per 5 µs. */
    {
        .name = "timers.sparse",
        .group = "timers",
        .urio = bench_urio_timers_sparse,
        .peer = bench_uv_timers_sparse,
        .n_metrics = BENCH_TIMERS_N_METRICS,
        .metrics = {
            [BENCH_TIMERS_SCHEDULE] = METRIC("timers.sparse_schedule", "ns/timer", 1,
                                             URIO_MAX(60.0)),
            [BENCH_TIMERS_FIRE_CPU] = METRIC("timers.sparse_fire_cpu", "cpu ns/timer", 1,
                                             URIO_MAX(250.0)),
            [BENCH_TIMERS_LATE_P50] = METRIC("timers.sparse_late_p50", "us late", 1, NO_TARGET),
            [BENCH_TIMERS_LATE_P99] = METRIC("timers.sparse_late_p99", "us late", 1, NO_TARGET),
        },
    },
    /* An otherwise idle loop holding a periodic 1 ms timer. */
    {
        .name = "timers.idle",
        .group = "timers",
        .urio = bench_urio_timers_idle,
        .peer = bench_uv_timers_idle,
        .n_metrics = 1,
        .metrics = {
            METRIC("timers.idle_cpu", "us cpu/s", 1, NO_TARGET),
        },
    },
    /* Rates are reported as their inverse (ns per call, per job) so that,
     * as in every row, lower is better and libuv/urio > 1 means urio is
     * faster: "urio >= 2.5x libuv's calls/s" is "libuv/urio >= 2.5". */
    {
        .name = "crossthread.1p",
        .group = "crossthread",
        .urio = bench_urio_crossthread_1p,
        .peer = bench_uv_crossthread_1p,
        .n_metrics = BENCH_XT_N_METRICS,
        .metrics = {
            [BENCH_XT_CALLS] = METRIC2("crossthread.calls_1p", "ns/call", 2, RATIO_MIN(2.5),
                                       REF_MAX(3.0, BENCH_XT_FLOOR)),
            /* A bare MPSC queue, in urio's column: see crossthread.c. */
            [BENCH_XT_FLOOR] = URIO_ONLY_METRIC("crossthread.floor_1p", "ns/call", 2),
        },
    },
    {
        .name = "crossthread.2p",
        .group = "crossthread",
        .urio = bench_urio_crossthread_2p,
        .peer = bench_uv_crossthread_2p,
        .n_metrics = BENCH_XT_N_METRICS,
        .metrics = {
            [BENCH_XT_CALLS] = METRIC2("crossthread.calls_2p", "ns/call", 2, RATIO_MIN(2.0),
                                       REF_MAX(3.0, BENCH_XT_FLOOR)),
            [BENCH_XT_FLOOR] = URIO_ONLY_METRIC("crossthread.floor_2p", "ns/call", 2),
        },
    },
    {
        .name = "wakeup",
        .group = "wakeup",
        .urio = bench_urio_wakeup,
        .peer = bench_uv_wakeup,
        .n_metrics = BENCH_WAKEUP_N_METRICS,
        .metrics = {
            [BENCH_WAKEUP_RTT_P50] = METRIC("wakeup.rtt_p50", "us/round trip", 2,
                                            REF_MAX(1.1, BENCH_WAKEUP_FLOOR_P50)),
            [BENCH_WAKEUP_RTT_P99] = METRIC("wakeup.rtt_p99", "us/round trip", 2, NO_TARGET),
            /* The raw eventfd ping-pong, in urio's column: see wakeup.c. */
            [BENCH_WAKEUP_FLOOR_P50] = URIO_ONLY_METRIC("wakeup.floor_p50", "us/round trip", 2),
            [BENCH_WAKEUP_FLOOR_P99] = URIO_ONLY_METRIC("wakeup.floor_p99", "us/round trip", 2),
        },
    },
    {
        .name = "threadpool.rtt",
        .group = "threadpool",
        .urio = bench_urio_pool_rtt,
        .peer = bench_uv_pool_rtt,
        .n_metrics = 1,
        .metrics = {
            METRIC("threadpool.rtt", "us/job", 2, RATIO_MIN(1.0)),
        },
    },
    {
        .name = "threadpool.tput",
        .group = "threadpool",
        .urio = bench_urio_pool_throughput,
        .peer = bench_uv_pool_throughput,
        .n_metrics = 1,
        .metrics = {
            METRIC("threadpool.throughput", "ns/job", 1, RATIO_MIN(2.0)),
        },
    },
    /* The peer here is glibc's swapcontext, not libuv (which has no
     * coroutines): what a C program without its own switch would use. */
    {
        .name = "switch",
        .group = "switch",
        .urio = bench_urio_switch,
        .peer = bench_ucontext_switch,
        .peer_name = "swapcontext",
        .n_metrics = BENCH_SWITCH_N_METRICS,
        .metrics = {
            [BENCH_SWITCH_CTX] = METRIC("switch.ctx", "ns/switch", 2,
                                        REF_MAX(1.2, BENCH_SWITCH_FLOOR)),
            /* Callee-saved general registers only, in urio's column: see switch.c. */
            [BENCH_SWITCH_FLOOR] = URIO_ONLY_METRIC("switch.floor", "ns/switch", 2),
        },
    },
    /* No peer: libuv has no coroutines. */
    {
        .name = "tasks",
        .group = "tasks",
        .urio = bench_urio_tasks,
        .n_metrics = 2,
        .metrics = {
            { .name = "tasks.spawn_join", .unit = "ns/task", .decimals = 1, .urio_only = true,
              .target = URIO_MAX(250.0) },
            { .name = "tasks.idle_rss", .unit = "KiB/task", .decimals = 2, .urio_only = true,
              .target = URIO_MAX(8.0) },
        },
    },
    /* I/O (io/): servers and file readers are programs of their own, each
     * started the same way.  Every echo server is measured by the same
     * client, so each peer gets its own benchmark, urio measured again
     * beside it: each ratio compares two servers at the same moment. */
    {
        .name = "echo.libuv",
        .group = "echo",
        .urio = bench_urio_echo,
        .peer = bench_uv_echo,
        .urio_missing = bench_echo_urio_missing,
        .n_metrics = BENCH_ECHO_N_METRICS,
        .metrics = {
            [BENCH_ECHO_MSGS] = METRIC("echo.msgs", "ns/msg", 0, NO_TARGET),
            [BENCH_ECHO_CPU] = METRIC("echo.cpu", "cpu ns/msg", 0, PEER_MAX(0.9)),
        },
    },
    {
        .name = "echo.epoll",
        .group = "echo",
        .urio = bench_urio_echo,
        .peer = bench_epoll_echo,
        .peer_name = "epoll",
        .urio_missing = bench_echo_urio_missing,
        .n_metrics = BENCH_ECHO_N_METRICS,
        .metrics = {
            [BENCH_ECHO_MSGS] = METRIC("echo.msgs.epoll", "ns/msg", 0, NO_TARGET),
            [BENCH_ECHO_CPU] = METRIC("echo.cpu.epoll", "cpu ns/msg", 0, NO_TARGET),
        },
    },
    {
        .name = "echo.floor",
        .group = "echo",
        .urio = bench_urio_echo,
        .peer = bench_uring_echo,
        .peer_name = "raw-uring",
        .urio_missing = bench_echo_urio_missing,
        .n_metrics = BENCH_ECHO_N_METRICS,
        .metrics = {
            [BENCH_ECHO_MSGS] = METRIC("echo.msgs.floor", "ns/msg", 0, NO_TARGET),
            [BENCH_ECHO_CPU] = METRIC("echo.cpu.floor", "cpu ns/msg", 0, PEER_MAX(1.15)),
        },
    },
    /* At half of libuv's closed-loop maximum (echo.libuv's runs). */
    {
        .name = "echo.latency",
        .group = "echo",
        .urio = bench_urio_echo_latency,
        .peer = bench_uv_echo_latency,
        .urio_missing = bench_echo_urio_missing,
        .n_metrics = BENCH_ECHO_LAT_N_METRICS,
        .metrics = {
            [BENCH_ECHO_LAT_P50] = METRIC("echo.lat_p50", "us/round trip", 1, NO_TARGET),
            [BENCH_ECHO_LAT_P99] = METRIC("echo.lat_p99", "us/round trip", 1, PEER_MAX(1.0)),
            [BENCH_ECHO_LAT_P999] = METRIC("echo.lat_p999", "us/round trip", 1, NO_TARGET),
        },
    },
    /* ns per read: libuv/urio >= 3 is "3x libuv's IOPS". */
    {
        .name = "files.libuv",
        .group = "files",
        .urio = bench_urio_files,
        .peer = bench_uv_files,
        .urio_missing = bench_files_urio_missing,
        .n_metrics = BENCH_FILES_N_METRICS,
        .metrics = {
            [BENCH_FILES_PC_QD1] = METRIC("files.pc_qd1", "ns/read", 0, NO_TARGET),
            [BENCH_FILES_PC_QD64] = METRIC("files.pc_qd64", "ns/read", 0, RATIO_MIN(3.0)),
            [BENCH_FILES_DIO_QD1] = METRIC("files.dio_qd1", "ns/read", 0, NO_TARGET),
            [BENCH_FILES_DIO_QD64] = METRIC("files.dio_qd64", "ns/read", 0, RATIO_MIN(3.0)),
        },
    },
    /* fio/urio in ns per read is urio's IOPS over fio's. */
    {
        .name = "files.fio",
        .group = "files",
        .urio = bench_urio_files,
        .peer = bench_fio_files,
        .peer_name = "fio",
        .urio_missing = bench_files_urio_missing,
        .peer_missing = bench_files_fio_missing,
        .n_metrics = BENCH_FILES_N_METRICS,
        .metrics = {
            [BENCH_FILES_PC_QD1] = METRIC("files.pc_qd1.fio", "ns/read", 0, RATIO_MIN(0.85)),
            [BENCH_FILES_PC_QD64] = METRIC("files.pc_qd64.fio", "ns/read", 0, RATIO_MIN(0.85)),
            [BENCH_FILES_DIO_QD1] = METRIC("files.dio_qd1.fio", "ns/read", 0, RATIO_MIN(0.85)),
            [BENCH_FILES_DIO_QD64] = METRIC("files.dio_qd64.fio", "ns/read", 0,
                                            RATIO_MIN(0.85)),
        },
    },
    /* The process pool, against Python's ProcessPoolExecutor from asyncio.
     * Goals: round trip <= 0.15x Python's, throughput >= 20x, 1 MiB
     * payloads >= 1 GB/s (1 MiB in 1048.6 us). */
    {
        .name = "procpool.rtt",
        .group = "procpool",
        .urio = bench_urio_procpool_rtt,
        .peer = bench_py_procpool_rtt,
        .peer_name = "Python",
        .n_metrics = 2,
        .metrics = {
            METRIC("procpool.rtt", "us/job", 2, RATIO_MIN(1.0 / 0.15)),
            /* A bare socketpair ping-pong between two processes, in urio's column. */
            URIO_ONLY_METRIC("procpool.rtt_floor", "us/round trip", 2),
        },
    },
    {
        .name = "procpool.tput",
        .group = "procpool",
        .urio = bench_urio_procpool_tput,
        .peer = bench_py_procpool_tput,
        .peer_name = "Python",
        .n_metrics = 1,
        .metrics = {
            METRIC("procpool.throughput", "ns/job", 1, RATIO_MIN(20.0)),
        },
    },
    {
        .name = "procpool.mib",
        .group = "procpool",
        .urio = bench_urio_procpool_mib,
        .peer = bench_py_procpool_mib,
        .peer_name = "Python",
        .n_metrics = 1,
        .metrics = {
            METRIC("procpool.mib", "us/MiB", 1, URIO_MAX(1048.6)),
        },
    },
    /* urio's two ways of starting workers: no peer. */
    {
        .name = "procpool.startup",
        .group = "procpool",
        .urio = bench_urio_procpool_startup,
        .n_metrics = 2,
        .metrics = {
            URIO_ONLY_METRIC("procpool.startup_exec", "ms/pool", 2),
            URIO_ONLY_METRIC("procpool.startup_fsrv", "ms/pool", 2),
        },
    },
    /* What debug mode costs (debug.c): urio's column is debug mode on, the
     * peer's off; then the default build against one without debug mode's
     * machinery.  Goals: on <= 3x off (asyncio's costs about 18x); compiled
     * in and off within noise of compiled out. */
    {
        .name = "debug.dispatch",
        .group = "debug",
        .urio = bench_urio_debug_dispatch,
        .peer = bench_off_debug_dispatch,
        .peer_name = "debug off",
        .n_metrics = 1,
        .metrics = {
            METRIC("debug.dispatch", "ns/callback", 2, PEER_MAX(3.0)),
        },
    },
    {
        .name = "debug.timers",
        .group = "debug",
        .urio = bench_urio_debug_timers,
        .peer = bench_off_debug_timers,
        .peer_name = "debug off",
        .n_metrics = 1,
        .metrics = {
            METRIC("debug.timers", "cpu ns/timer", 1, PEER_MAX(3.0)),
        },
    },
    {
        .name = "debug.watchdog",
        .group = "debug",
        .urio = bench_urio_debug_watchdog,
        .peer = bench_off_debug_watchdog,
        .peer_name = "no watchdog",
        .n_metrics = 1,
        .metrics = {
            METRIC("debug.watchdog", "cpu ns/timer", 1, PEER_MAX(1.10)),
        },
    },
    {
        .name = "debug.compiled",
        .group = "debug",
        .urio = bench_urio_debug_compiled,
        .peer = bench_nochecks_debug_compiled,
        .peer_name = "compiled out",
        .n_metrics = 1,
        .metrics = {
            METRIC("debug.compiled_in", "ns/callback", 2, PEER_MAX(1.10)),
        },
    },
};

const size_t bench_registry_len = sizeof bench_registry / sizeof bench_registry[0];
