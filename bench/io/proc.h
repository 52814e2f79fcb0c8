/*
 * io/proc.h — the programs the I/O benchmarks start: echo servers (urio's
 * and the peers, bench/peers/<kind>_echo_server.c) and file readers (urio's,
 * libuv's, fio).  Every one is started by the same code, so each side of a
 * row gets the same conditions: the same environment, the same CPU
 * affinity (or none), stdout on a pipe the harness reads, stderr shared
 * with the harness (a server's complaint shows up in the run's output).
 *
 * A child dies with the harness (PR_SET_PDEATHSIG): a hung run that the
 * watchdog ends leaves no server behind.
 */
#ifndef URIO_BENCH_PROC_H
#define URIO_BENCH_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <time.h>

typedef struct bench_proc {
    const char *name;          /* for messages: "uv-echo-server" */
    pid_t pid;
    int out;                   /* read end of the child's stdout */
    clockid_t cpu_clock;       /* the child's process CPU clock (all its threads) */
} bench_proc_t;

/* Whether path names a program this user may run. */
bool bench_proc_exists(const char *path);

/* Starts argv[0] with argv (NULL-terminated), on CPU `cpu` if cpu >= 0.
 * Dies if it cannot. */
void bench_proc_start(bench_proc_t *p, const char *name, char *const argv[], int cpu);

/* Reads the child's next line of stdout (without the newline) into line.
 * Dies if the child exits first, or after timeout_ns. */
void bench_proc_read_line(bench_proc_t *p, char *line, size_t size, uint64_t timeout_ns);

/* CPU time the child has used so far, every thread of it, in ns. */
uint64_t bench_proc_cpu_ns(const bench_proc_t *p);

/* SIGTERM, then waits (SIGKILL after a few seconds, reported).  A server
 * that exits with a status other than 0 is reported on stderr; its numbers
 * stand, since the measurement was over. */
void bench_proc_stop(bench_proc_t *p);

/* Runs a program to its end: its stdout into out (NUL-terminated, cut at
 * size - 1), its resource use into ru if not NULL.  Dies if it fails to
 * start, outlives timeout_ns (it is killed) or exits with a status other
 * than 0. */
void bench_proc_run(const char *name, char *const argv[], char *out, size_t size,
                    uint64_t timeout_ns, struct rusage *ru);

/* The CPUs the echo benchmarks pin the client (the harness's thread) and
 * the server to when URIO_BENCH_PIN=1: the first and the last CPU this
 * process may use.  Otherwise (the default), or with fewer than two CPUs,
 * -1 and -1: no pinning.
 *
 * Not pinning is the default because the machines are shared: measured
 * on two loaded cores, a pinned server cannot leave a CPU that another
 * program keeps busy, and its round trips went from p50 37 µs, p99 0.2 ms
 * unpinned to p50 0.2 ms, p99 4.4 ms pinned (CPU per message: 4.7 µs
 * unpinned, 5.1-5.6 µs pinned).  On a quiet machine pinning removes the
 * scheduler's choices from the comparison; either way every side of a row
 * gets the same. */
void bench_pin_cpus(int *client, int *server);

/* Pins the calling thread to cpu (>= 0) and returns its previous affinity
 * to restore with bench_unpin_self. */
typedef struct bench_affinity {
    bool saved;
    unsigned char mask[128];   /* a cpu_set_t, kept opaque here */
} bench_affinity_t;
void bench_pin_self(int cpu, bench_affinity_t *saved);
void bench_unpin_self(const bench_affinity_t *saved);

#endif
