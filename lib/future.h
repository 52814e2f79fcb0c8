/*
 * lib/future.h — what future.c offers the layers built on futures: future
 * *kinds* (a task, an executor's job, a cross-thread proxy are futures with
 * an ops table and their own state after the future's), and hooks.
 */
#ifndef URIO_FUTURE_INTERNAL_H
#define URIO_FUTURE_INTERNAL_H

#include "loop.h"

typedef struct urio__future_ops {
    const char *kind;                               /* "Task": in reports */
    bool sealed;            /* urio sets its outcome: urio_future_set_result/error refuse */
    /* Replaces the plain cancel (loop thread); takes msg (urio__malloc'd or NULL). */
    bool (*cancel)(urio_future_t *f, char *msg);
    void (*describe)(const urio_future_t *f, char *buf, size_t n);
    void (*finalize)(urio_future_t *f);             /* at the last unref, before the free */
    /*
     * At the last unref (any thread), once finalize ran and f let go of what
     * it held: f is pending again, with no callbacks, as urio__future_new_kind
     * made it (its loop reference kept; its kind's state as the last user
     * left it).  Returns: true if the kind keeps it for a future of its own
     * (urio__future_reuse), false to free it.  A kept future is poisoned
     * under ASan until reused; urio__future_free_kept frees it.
     */
    bool (*recycle)(urio_future_t *f);
} urio__future_ops_t;

/*
 * A future of a kind, with `ext` bytes of the kind's own state (zeroed).
 * Any thread: it touches only its own memory and the loop's atomic refcount
 * (run_coroutine_threadsafe makes its proxy on the caller's thread).
 * Returns: the future (one reference), or NULL on ENOMEM.
 */
urio_future_t *urio__future_new_kind(urio_loop_t *loop, size_t ext, const urio__future_ops_t *ops);
void *urio__future_ext(urio_future_t *f);
/* A future its kind kept (ops->recycle), alive again with `refs` references. */
urio_future_t *urio__future_reuse(urio_future_t *f, unsigned refs);
/*
 * Sets the reference count of a future no other thread has seen yet (a kind
 * that holds references of its own from the start): no atomic operation.
 */
void urio__future_init_refs(urio_future_t *f, unsigned refs);
/* Frees a future its kind kept, and its reference on its loop. */
void urio__future_free_kept(urio_future_t *f);
const urio__future_ops_t *urio__future_ops(const urio_future_t *f);

/*
 * Debug mode: gives f a creation stack (captured from the public call's
 * caller; `skip` frames above it).  Compiled in with debug checks only.
 */
void urio__future_capture_stack(urio_future_t *f, int skip);
/* Debug mode: the stack where f's error is set (`skip` frames above the caller). */
void urio__future_capture_error_stack(urio_future_t *f, int skip);
/*
 * Where f's error was set (a site; a stack, urio__malloc'd or NULL, taken):
 * for a kind that sets its error on the future's behalf (a task's
 * urio_task_fail, a job's urio_executor_fail).
 */
void urio__future_set_origin(urio_future_t *f, const urio_site_t *site, urio__backtrace_t *bt);
/* "Traceback (most recent call last):" and where f's error was set, or NULL (urio__malloc'd). */
char *urio__future_error_traceback(const urio_future_t *f);
/* "Task created at (most recent call last):" and f's creation stack, or NULL (urio__malloc'd). */
char *urio__future_source_traceback(const urio_future_t *f);
/* A reference on f, unless its last one went already (it is being freed).  Any thread. */
bool urio__future_tryref(urio_future_t *f);
/* Reports f's error as never retrieved now, if it was not (and marks it retrieved). */
bool urio__future_report_unretrieved(urio_future_t *f);
/* Gives f a copy of an existing creation stack (a task takes its coroutine's). */
void urio__future_copy_stack(urio_future_t *f, const urio__backtrace_t *bt);
const urio__backtrace_t *urio__future_stack(const urio_future_t *f);

/*
 * Cancels f now, bypassing its kind's cancel (a task ending cancelled), with
 * msg (urio__malloc'd or NULL; taken) as its message.
 */
void urio__future_cancel_now(urio_future_t *f, char *msg);
/*
 * urio's own completion of a future (of a sealed kind too): a result (err 0)
 * or error err (< 0; -ECANCELED cancels) with msg (urio__malloc'd or NULL,
 * taken).  Loop thread.  Returns: 0, or -EINVAL if f was done.
 */
int urio__future_settle(urio_future_t *f, int err, void *value, char *msg);
/*
 * urio__future_settle, then drops one reference of the caller's: the
 * done-callback runner settling schedules takes it over (one atomic
 * operation fewer than a reference of its own and an unref).  Loop thread.
 */
int urio__future_settle_unref(urio_future_t *f, int err, void *value, char *msg);

/* urio_future_cancel_msg with an urio__malloc'd message (or NULL), taken.  Any thread. */
bool urio__future_cancel_take(urio_future_t *f, char *msg);
const char *urio__future_state_name(const urio_future_t *f);
/* "<Future pending>", "<Future finished error=EIO>" ... into buf. */
const char *urio__future_describe(const urio_future_t *f, char *buf, size_t n);

/*
 * A hook told synchronously, on the loop thread, when a future is cancelled
 * (an executor's job that must not start; a task's pending op).
 */
typedef void (*urio__cancel_hook_fn)(void *arg);
void urio__future_set_cancel_hook(urio_future_t *f, urio__cancel_hook_fn fn, void *arg);

/* combine.c: the index of a gathering future's first failure (in completion order). */
size_t urio__gathering_failed(urio_future_t *f);

#endif
