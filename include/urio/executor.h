/*
 * urio/executor.h — blocking work off the loop: the thread pool.
 *
 * A job is a plain function run on a worker thread; its outcome comes back
 * to the loop as a future's completion, through the loop's inbox, in
 * batches.  One executor may serve several loops.
 */
#ifndef URIO_EXECUTOR_H
#define URIO_EXECUTOR_H

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct urio_executor urio_executor_t;

/*
 * A blocking job: runs on a worker thread and returns its result (an opaque
 * pointer).  To fail, it returns urio_executor_fail(err, fmt, ...).
 */
typedef void *(*urio_blocking_fn)(void *arg);
typedef void (*urio_free_fn)(void *p);

/*
 * Runs fn(arg) on ex (NULL: the loop's default thread pool, made on first
 * use with min(32, cores + 4) workers and shut down when the loop closes).
 * The future (a new reference) completes on the loop with fn's result, its
 * error, or -ECANCELED.  Cancelling it before the job starts means the job
 * never runs; after it starts, the job finishes and its result is discarded
 * (with urio_run_in_executor_opts, free_result frees it, on whichever thread
 * lets the job go: a worker, or the loop).  Jobs submitted
 * by callbacks go to the pool together, when the callbacks of the loop's
 * current step have run (one lock for the batch); outside a run, at once.
 * Returns: the future; NULL with errno EINVAL (NULL loop or fn), EPERM
 *          (wrong thread), ESHUTDOWN (executor shut down, loop closed), ENOMEM.
 *          When it fails, fn never runs.
 * Thread: the loop's thread.
 */
URIO_EXPORT urio_future_t *urio_run_in_executor(urio_loop_t *loop, urio_executor_t *ex,
                                                urio_blocking_fn fn, void *arg);

/* What urio_run_in_executor_opts adds: zero-initialise it (zero means "none"). */
typedef struct urio_job_opts {
    urio_free_fn free_result;    /* frees a result nobody received (a cancelled job's) */
} urio_job_opts_t;
URIO_EXPORT urio_future_t *urio_run_in_executor_opts(urio_loop_t *loop, urio_executor_t *ex,
                                                     urio_blocking_fn fn, void *arg,
                                                     const urio_job_opts_t *opts);

/*
 * Inside a job: fails it with err (negative) and a formatted message.
 * Returns: NULL, for `return urio_executor_fail(-EIO, "disk %s", name);`.
 * Thread: a worker thread, inside a job.
 */
URIO_EXPORT void *urio_executor_fail(int err, const char *fmt, ...) URIO_PRINTF(2, 3);
/* The function behind the macro: also records where the job failed, for reports. */
URIO_EXPORT void *urio_executor_fail_site(const urio_site_t *site, int err, const char *fmt, ...)
    URIO_PRINTF(3, 4);
#define urio_executor_fail(...) urio_executor_fail_site(URIO_HERE(), __VA_ARGS__)

/*
 * A thread pool of max_workers threads (0: min(32, cores + 4)), started on
 * demand as jobs come.  About one worker per core is woken for queued jobs;
 * the others join when those take none for a millisecond (docs/threads.md).
 * Returns: 0; -EINVAL (NULL ex, or more than 1024 workers); -ENOMEM.
 * Thread: any thread.
 */
URIO_EXPORT int urio_thread_pool_new(urio_executor_t **ex, unsigned max_workers);

/*
 * Python's Executor.shutdown: no new jobs (submitting fails with
 * ESHUTDOWN); with cancel_futures, jobs not yet started are cancelled (their
 * futures complete with -ECANCELED); jobs running finish.  With wait, returns
 * when every worker has exited.
 * Jobs the calling thread's loop accepted in this turn are handed over
 * first; a job another loop accepted but had not handed over yet fails with
 * -ESHUTDOWN.
 * Returns: 0; -EINVAL for NULL; -EDEADLK if wait is asked from a worker.
 * Thread: any thread.  Calling it again is harmless.
 */
URIO_EXPORT int urio_executor_shutdown(urio_executor_t *ex, bool wait, bool cancel_futures);

/*
 * Shuts ex down (waiting, without cancelling, unless it already was) and
 * lets go of it; its memory goes when the last job a loop holds is settled.
 * A loop that closes cancels its jobs still in a pool.
 * Thread: any thread but ex's workers.
 */
URIO_EXPORT void urio_executor_free(urio_executor_t *ex);

/*
 * Makes ex the loop's default executor (asyncio's set_default_executor): the
 * one urio_run_in_executor(loop, NULL, ...) uses.  ex must be a thread pool;
 * it stays the caller's (free it after the loop has closed, or after setting
 * another): the loop does not shut it down, it only cancels its own jobs in
 * it at close.  A pool the loop made itself is shut down (its jobs finish)
 * and its workers joined at close.  NULL: back to a pool the loop makes.
 * Returns: 0; -EINVAL (not a thread pool); -EPERM; -ESHUTDOWN; -ENOMEM.
 * Thread: the loop's thread.
 */
URIO_EXPORT int urio_loop_set_default_executor(urio_loop_t *loop, urio_executor_t *ex);

/*
 * asyncio's shutdown_default_executor(timeout): no new jobs for the default
 * executor; the future completes (result NULL) once its workers have all
 * exited — joined on a thread of its own, so the loop keeps running.  After
 * timeout_ns (-1: none) it completes with -ETIMEDOUT instead and logs
 * WARNING "The executor did not finishing joining its threads within N
 * seconds." (asyncio's words).  Await it in a task, or wait for it with
 * urio_loop_run_until_complete.
 * Returns: the future (a new reference; done at once without a default
 *          executor); NULL with errno EINVAL, EPERM, ESHUTDOWN, ENOMEM, or
 *          pthread_create's error.
 * Thread: the loop's thread.
 */
URIO_EXPORT urio_future_t *urio_loop_shutdown_default_executor(urio_loop_t *loop,
                                                               int64_t timeout_ns);

#ifdef __cplusplus
}
#endif
#endif
