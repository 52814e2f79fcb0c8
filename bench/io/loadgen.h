/*
 * io/loadgen.h — the load generator of the echo benchmarks: one epoll
 * client, the same code for every server measured.
 *
 * It opens `conns` TCP connections (TCP_NODELAY) to a server that echoes,
 * and runs on the calling thread, single-threaded, in one of two modes:
 *
 * - closed loop (rate == 0): every connection has one message of
 *   `msg_size` bytes in flight; each echo that comes back completely sends
 *   the next.  The number of round trips per second is the most this
 *   client and that server achieve together.
 *
 * - open loop (rate > 0): messages leave on a fixed schedule, `rate` per
 *   second over all connections in turn, whether or not earlier ones have
 *   come back (they queue behind each other on their connection, as
 *   requests of independent users would).  Each round trip is measured
 *   from the message's *scheduled* send time, not from when the client got
 *   round to sending it: a stall of the server (or of the client) is
 *   charged to every message it delayed, the coordinated-omission
 *   correction.
 *
 * Both modes run a warm-up, then a measured window; `window` is called at
 * its start and its end (the echo benchmark samples the server's CPU clock
 * there).  Every byte echoed is checked against what was sent; a lost,
 * corrupted or late-beyond-reason echo kills the run (bench_die) rather
 * than give a number.
 */
#ifndef URIO_BENCH_LOADGEN_H
#define URIO_BENCH_LOADGEN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct loadgen_opts {
    struct sockaddr_storage addr;   /* the server */
    socklen_t addrlen;
    unsigned conns;                 /* default 50 */
    unsigned msg_size;              /* default 64, at most LOADGEN_MAX_MSG */
    uint64_t warmup_ns;
    uint64_t measure_ns;
    double rate;                    /* messages/s over all connections; 0: closed loop */
    void (*window)(void *ctx, bool start);   /* NULL: none */
    void *ctx;
} loadgen_opts_t;

enum { LOADGEN_MAX_MSG = 4096 };

typedef struct loadgen_result {
    uint64_t msgs;                  /* round trips completed within the window */
    uint64_t window_ns;             /* the window's length as measured */
    double msgs_per_s;
    uint64_t client_cpu_ns;         /* the client's thread CPU time in the window */
    /* Open loop only: round trips of the messages scheduled within the
     * window, from their scheduled send time, in µs. */
    uint64_t samples;
    double p50_us, p99_us, p999_us;
    double send_lag_p99_us;         /* how late the client sent, against its schedule */
} loadgen_result_t;

/* Runs one warm-up and window against the server; dies on any error. */
void loadgen_run(const loadgen_opts_t *opts, loadgen_result_t *res);

#endif
