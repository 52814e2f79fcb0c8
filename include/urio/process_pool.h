/*
 * urio/process_pool.h — the process pool: crash-isolated workers for
 * CPU-bound and unsafe work.
 *
 * A job names a function registered at build time (URIO_PROCESS_FN) and
 * carries bytes in; the worker, a separate process, gives bytes out or an
 * error.  A worker that crashes, hangs past the job timeout or exits fails
 * only the job it held (URIO_EBROKENWORKER or -ETIMEDOUT, with a message
 * naming its pid and what it died of) and is replaced.  The pool is an
 * executor: urio_executor_shutdown and urio_executor_free apply to it.
 * docs/process_pool.md has the model, the failure semantics and the wire.
 */
#ifndef URIO_PROCESS_POOL_H
#define URIO_PROCESS_POOL_H

#include "base.h"
#include "executor.h"

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* In the worker: functions, registered by name                        */

/* The job a worker function runs: where its output and error go. */
typedef struct urio_process_call urio_process_call_t;

/*
 * A function run in a worker: reads len bytes at in, gives its output with
 * urio_process_output, and returns 0 or a negative errno (with
 * urio_process_fail for a message).
 */
typedef int (*urio_process_fn)(urio_process_call_t *call, const void *in, size_t len);

/* A registration; URIO_PROCESS_FN makes one (static storage, never freed). */
typedef struct urio_process_fn_def {
    const char *name;                 /* what jobs name: up to 255 bytes */
    urio_process_fn fn;
    struct urio_process_fn_def *next; /* the registry's list */
} urio_process_fn_def_t;

/*
 * Registers fn under name, at build time: at file scope,
 *     URIO_PROCESS_FN("sha256", sha256_job);
 * A constructor registers it before main; a second constructor, which runs
 * after every registration of the program, turns a process started as a
 * pool worker into that worker (it never returns to main).  The name must
 * be unique; the wire carries it, never a code address.
 */
#define URIO_PROCESS_FN(name_, fn_)                                                   \
    static urio_process_fn_def_t urio__pfdef_##fn_ = { (name_), (fn_), 0 };           \
    __attribute__((constructor(101))) static void urio__pfreg_##fn_(void)             \
    {                                                                                 \
        urio_process_fn_register(&urio__pfdef_##fn_);                                 \
    }                                                                                 \
    __attribute__((constructor(65535))) static void urio__pfenter_##fn_(void)         \
    {                                                                                 \
        urio_process_worker_enter();                                                  \
    }                                                                                 \
    typedef int urio__pf_semicolon_##fn_

/*
 * Adds def to the registry (URIO_PROCESS_FN's constructor calls it).
 * Returns: 0; -EINVAL for a NULL or empty name, a name over 255 bytes, or
 *          NULL fn; -EEXIST if the name is taken (logged: the later one is
 *          ignored).
 * Thread: before main (constructors), or any thread before pools start.
 */
URIO_EXPORT int urio_process_fn_register(urio_process_fn_def_t *def);

/*
 * In a process the pool started as a worker, runs the worker and never
 * returns; anywhere else returns at once.  URIO_PROCESS_FN's late
 * constructor calls it, so a worker never reaches main.
 * Thread: the main thread, before main.
 */
URIO_EXPORT void urio_process_worker_enter(void);

/*
 * Inside a worker function: a buffer of len bytes for the job's output
 * (the whole output: a second call replaces the first).  From 64 KiB up it
 * is shared memory the parent maps without copying.
 * Returns: the buffer, or NULL (errno ENOMEM, or EMSGSIZE past the pool's
 *          payload limit): the function should then fail.
 * Ownership: the worker's; sent when the function returns 0.
 * Thread: the worker function's.
 */
URIO_EXPORT void *urio_process_output(urio_process_call_t *call, size_t len);

/*
 * Inside a worker function: fails the job with err (negative) and a
 * formatted message, for `return urio_process_fail(call, -EINVAL, "bad %s", x);`.
 * Returns: err (-EINVAL if err is not negative).
 * Thread: the worker function's.
 */
URIO_EXPORT int urio_process_fail(urio_process_call_t *call, int err, const char *fmt, ...)
    URIO_PRINTF(3, 4);

/* ------------------------------------------------------------------ */
/* In the parent: the pool                                             */

/* How workers are started. */
enum {
    URIO_PROCESS_START_EXEC = 0,        /* re-execute /proc/self/exe (the default) */
    URIO_PROCESS_START_FORK_SERVER = 1, /* ask the fork server (urio_process_fork_server_start) */
};

/* The pool's options: zero-initialise (zero means "the default"). */
typedef struct urio_process_pool_opts {
    unsigned workers;             /* worker processes; 0: the online cores */
    unsigned max_jobs_per_worker; /* a worker is replaced after this many jobs; 0: never */
    uint64_t job_timeout_ns;      /* a job running longer is killed (-ETIMEDOUT); 0: none */
    size_t max_payload;           /* bytes in or out per job; 0: 64 MiB */
    size_t worker_memory;         /* RLIMIT_AS of each worker in bytes; 0: inherited */
    int start;                    /* URIO_PROCESS_START_*; 0: exec */
} urio_process_pool_opts_t;

/*
 * A process pool.  Workers start at its first job, all of them, and the
 * pool serves that job's loop from then on (its channels are ops in that
 * loop's ring).  opts may be NULL.
 * Returns: 0; -EINVAL (NULL ex, more than 1024 workers, unknown start);
 *          -ENOENT (no function is registered: nothing could run);
 *          -ENOMEM.
 * Thread: any thread.
 */
URIO_EXPORT int urio_process_pool_new(urio_executor_t **ex, const urio_process_pool_opts_t *opts);

/* A job's output: the result of its future, alive as long as the future. */
typedef struct urio_bytes {
    const void *data;             /* read-only: may be shared memory */
    size_t len;
} urio_bytes_t;

/*
 * Runs the function registered as `fn` on a copy of len bytes at in, in a
 * worker of ex.  The future (a new reference) completes with a
 * urio_bytes_t * (the output; freed with the future), the function's error
 * and message, URIO_EBROKENWORKER (the worker died holding the job: the
 * message names its pid and the signal or exit status), -ETIMEDOUT (past
 * the job timeout: the worker was killed), -ENOENT (no such function in
 * the worker), -EMSGSIZE (output over the payload limit), or -ECANCELED.
 * Cancelling it while the job waits means it never runs; once a worker has
 * it, the job runs and its output is dropped.
 * Returns: the future; NULL with errno EINVAL (NULL argument, not a process
 *          pool, a name over 255 bytes), EMSGSIZE (len over the payload
 *          limit), EXDEV (the pool serves another loop), EPERM (wrong
 *          thread), ESHUTDOWN (pool shut down, loop closing), ENOMEM.
 * Thread: the loop's thread.
 */
URIO_EXPORT urio_future_t *urio_process_pool_submit(urio_loop_t *loop, urio_executor_t *ex,
                                                    const char *fn, const void *in,
                                                    size_t len);

/* What a pool has done, for tests and monitoring. */
typedef struct urio_process_pool_stats {
    unsigned workers;             /* started and not yet known to be gone */
    unsigned ready;               /* of them, past their start-up, taking jobs */
    uint64_t spawned;             /* workers started since the pool began */
    uint64_t died;                /* workers that died holding a job, or before ready */
    uint64_t recycled;            /* workers retired after max_jobs_per_worker */
    uint64_t jobs_done;           /* jobs whose outcome came back from a worker */
    uint64_t jobs_failed;         /* jobs failed by a dead or timed-out worker */
    uint64_t startup_ns;          /* first job to every first worker ready */
} urio_process_pool_stats_t;

/*
 * Fills *st; with pids non-NULL, also up to n pids of live workers.
 * Returns: the number of live workers (pids written: min of that and n);
 *          -EINVAL for NULL or an executor of another kind.
 * Thread: the loop's thread (or any, while the pool is idle).
 */
URIO_EXPORT int urio_process_pool_stats(urio_executor_t *ex, urio_process_pool_stats_t *st,
                                        pid_t *pids, size_t n);

/*
 * Starts the fork server: a process forked now, which must be while the
 * program has one thread, and which forks workers for pools made with
 * URIO_PROCESS_START_FORK_SERVER (their parent is this process all the
 * same).  Call it at the top of main.
 * Returns: 0 (also if already started); -EBUSY if the process already has
 *          more than one thread; -ENOENT (no function registered); or the
 *          errno of socketpair or fork.
 * Thread: the main thread, while it is the only one.
 */
URIO_EXPORT int urio_process_fork_server_start(void);

/*
 * Stops the fork server (workers it made live on) and reaps it.
 * Thread: any thread, once no pool is starting workers through it.
 */
URIO_EXPORT void urio_process_fork_server_stop(void);

#ifdef __cplusplus
}
#endif
#endif
