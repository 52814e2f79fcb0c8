/*
 * urio/future.h — futures: one outcome, set once, observed by callbacks.
 *
 * A future belongs to a loop.  It is reference counted; the loop holds its
 * own reference while it needs one (scheduled done callbacks).  The state
 * goes pending -> result | error | cancelled, once.  Done callbacks are
 * scheduled on the loop's ready queue in the order they were added, never
 * called inline.
 */
#ifndef URIO_FUTURE_H
#define URIO_FUTURE_H

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A new pending future of loop, with one reference (the caller's), in *f.
 * Returns: 0; -EINVAL (NULL f or loop), -ESHUTDOWN (closed loop), -EPERM
 *          (wrong thread), -ENOMEM.  *f is NULL on failure.
 * Ownership: the caller owns the reference (urio_future_unref).
 * Thread: the loop's thread.
 */
URIO_EXPORT int urio_future_new(urio_future_t **f, urio_loop_t *loop);

/* Adds a reference and returns f (NULL stays NULL).  Thread: any thread. */
URIO_EXPORT urio_future_t *urio_future_ref(urio_future_t *f);

/*
 * Drops a reference.  At the last one, a future that failed and whose error
 * nobody read is reported through its loop's exception handler as
 * "Future exception was never retrieved", then freed.
 * Thread: any thread (the report runs on the thread dropping the last one).
 */
URIO_EXPORT void urio_future_unref(urio_future_t *f);

/*
 * Completes f with a result (an opaque pointer, owned by whoever the program
 * says) or with an error: a negative errno or URIO_E* code and a formatted
 * message (fmt may be NULL).
 * Returns: 0; -EINVAL if f is NULL, already done, or err is not negative;
 *          -ENOMEM if the message could not be stored (f is then completed
 *          with the error and no message).
 * Thread: the loop's thread.
 */
URIO_EXPORT int urio_future_set_result(urio_future_t *f, void *value);
URIO_EXPORT int urio_future_set_error(urio_future_t *f, int err, const char *fmt, ...)
    URIO_PRINTF(3, 4);
/*
 * The function behind the macro: site is where the error was set (the
 * macro gives the caller's), shown in reports as the error's traceback;
 * debug mode also keeps the stack there.
 */
URIO_EXPORT int urio_future_set_error_site(urio_future_t *f, const urio_site_t *site, int err,
                                           const char *fmt, ...) URIO_PRINTF(4, 5);
#define urio_future_set_error(f, ...) urio_future_set_error_site((f), URIO_HERE(), __VA_ARGS__)

/*
 * Cancels f: it completes with -ECANCELED (a task is asked to stop: see
 * urio/task.h).  From a thread other than the loop's, the cancel goes through
 * the loop's inbox and happens in its next turn.
 * Returns: true if it was pending, false if already done.
 * Thread: any thread.
 */
URIO_EXPORT bool urio_future_cancel(urio_future_t *f);

/*
 * urio_future_cancel with a message (asyncio's cancel(msg)): a plain future's
 * urio_future_error_message() gives it once cancelled; a task's awaiting code
 * reads it with urio_task_cancel_message(), and the task's future carries it
 * when the task ends cancelled.  fmt may be NULL.
 * Returns: as urio_future_cancel.  Thread: any thread.
 */
URIO_EXPORT bool urio_future_cancel_msg(urio_future_t *f, const char *fmt, ...) URIO_PRINTF(2, 3);

URIO_EXPORT bool urio_future_done(const urio_future_t *f);
URIO_EXPORT bool urio_future_cancelled(const urio_future_t *f);

/*
 * f's outcome: 0 with *value set to the result (value may be NULL), f's
 * error, -ECANCELED, or URIO_ENOTDONE while pending.  Reading an error marks
 * it as retrieved.
 */
URIO_EXPORT int urio_future_result(urio_future_t *f, void **value);

/* The message given with f's error, or NULL.  Marks the error as retrieved. */
URIO_EXPORT const char *urio_future_error_message(const urio_future_t *f);

/* The loop f belongs to. */
URIO_EXPORT urio_loop_t *urio_future_loop(const urio_future_t *f);

typedef void (*urio_future_done_fn)(urio_future_t *f, void *arg);

/*
 * Calls fn(f, arg) from the loop once f is done (scheduled, never inline:
 * if f is already done, it is scheduled now).  The loop holds a reference on
 * f until the callback has run.
 * Returns: 0; -EINVAL (NULL f or fn); -ENOMEM; -ESHUTDOWN (closed loop).
 *          When it fails, fn never runs.
 * Thread: the loop's thread.
 */
URIO_EXPORT int urio_future_add_done_callback(urio_future_t *f, urio_future_done_fn fn, void *arg);

/*
 * Removes every pending registration of (fn, arg) that has not been
 * scheduled yet.  Returns: how many were removed.
 */
URIO_EXPORT int urio_future_remove_done_callback(urio_future_t *f, urio_future_done_fn fn, void *arg);

/*
 * Blocks the calling thread until f is done or timeout_ns passes (-1: no
 * timeout), then gives f's outcome as urio_future_result() does.  If f's
 * loop closes with f still pending (nobody can complete it any more), the
 * wait ends with -ESHUTDOWN (tasks and executor jobs are settled by the
 * close, so their waiters get their outcome).
 * Returns: 0, f's error, -ECANCELED; -ETIMEDOUT; -ESHUTDOWN; -EDEADLK from
 *          the thread running f's loop, or the thread its ring is bound to
 *          (only that thread could make it progress: it would wait for
 *          itself, whatever the timeout); -EINVAL for NULL or a negative
 *          timeout other than -1.
 * Thread: any other thread.  The caller holds a reference on f for the
 * duration.
 */
URIO_EXPORT int urio_future_wait(urio_future_t *f, int64_t timeout_ns, void **result);

/* ------------------------------------------------------------------ */
/* Futures made of futures                                              */

typedef struct urio_gather_opts {
    /*
     * false (default): the first failure (in completion order; a child's
     * cancel counts) cancels the other children, and the gathering fails
     * with it once they are all done.  true: asyncio's return_exceptions:
     * nothing is cancelled, the gathering succeeds when all are done, and
     * each child's outcome is its own (urio_future_result, or errors below).
     */
    bool return_exceptions;
    int *errors;        /* urio_gather_opts only: NULL or n entries, each child's outcome */
    size_t *failed;     /* urio_gather_opts only: NULL, or the first failure's index */
} urio_gather_opts_t;   /* zero-initialise it */

/*
 * asyncio.gather as a future: *out completes once every one of fs is done
 * (NULL result, read the children's), or with the first failure as above.
 * Cancelling it cancels the children; it ends cancelled once they are done.
 * It holds a reference on each child.  Usable from callbacks and tasks.
 * Returns: 0; -EINVAL (NULL, or a future of another loop); -EPERM (wrong
 *          thread); -ESHUTDOWN; -ENOMEM.  *out is NULL on failure.
 * Ownership: the caller owns *out.  Thread: the loop's thread.
 */
URIO_EXPORT int urio_gather_new(urio_future_t **out, urio_loop_t *loop,
                                urio_future_t *const *fs, size_t n,
                                const urio_gather_opts_t *opts);

/*
 * asyncio.shield(inner): *out mirrors inner's outcome, but cancelling *out
 * (or a task awaiting it) leaves inner running.  An error of inner's that
 * arrives after *out was cancelled counts as retrieved.
 * Returns: 0; -EINVAL; -EPERM (wrong thread); -ESHUTDOWN; -ENOMEM.
 * Ownership: the caller owns *out.  Thread: the loop's thread.
 */
URIO_EXPORT int urio_shield_new(urio_future_t **out, urio_future_t *inner);

#ifdef __cplusplus
}
#endif
#endif
