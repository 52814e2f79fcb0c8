/*
 * urio/task.h — coroutines and tasks.
 *
 * A task is a coroutine running on its own stack (stackful): its function
 * calls urio's awaiting functions (urio_await, urio_sleep, ...) as plain
 * calls, and they suspend only that task.  A task is a future: await it,
 * cancel it, add done callbacks, unref it.
 */
#ifndef URIO_TASK_H
#define URIO_TASK_H

#include "base.h"
#include "future.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A coroutine function: 0 or a negative error; its result in *result. */
typedef int (*urio_coro_fn)(void *arg, void **result);
typedef struct urio_coro urio_coro_t;

/*
 * A coroutine object: fn(arg) not started yet, with where it was made.  It
 * must be given to urio_task_create, urio_await_coro, urio_run,
 * urio_run_coroutine_threadsafe, or closed with urio_coro_close; one left
 * alone is reported when its loop closes (or, made outside any loop, at
 * exit): "coroutine 'fn' was never awaited".
 * Returns: NULL with errno ENOMEM or EINVAL (NULL fn).
 * Thread: any thread.
 */
URIO_EXPORT urio_coro_t *urio_coro_create(urio_coro_fn fn, void *arg, const urio_site_t *site);
#define URIO_CORO(fn, arg) urio_coro_create((fn), (arg), URIO_SITE(fn))

/* Frees a coroutine the program chose not to run, quietly (Python's coro.close()). */
URIO_EXPORT void urio_coro_close(urio_coro_t *coro);

typedef struct urio_task_opts {
    size_t stack_size;       /* 0: the default (meson option task_stack_size) */
    const char *name;        /* NULL: the coroutine's function name */
} urio_task_opts_t;          /* may grow: zero-initialise it */

/*
 * Makes a task of coro on loop (NULL: the loop running on this thread, as
 * asyncio.create_task) and schedules its first step.  It owns coro, also on
 * failure — except a coroutine already handed over, which it refuses and
 * leaves alone ("cannot reuse already awaited coroutine").
 * Returns: a new reference on the task; NULL with errno EINVAL (no loop, a
 *          coroutine already taken), EPERM (wrong thread), ESHUTDOWN
 *          (closing loop), -URIO_EFORKED (a loop inherited by fork()),
 *          ENOMEM (memory, or a stack).
 * A task whose error nobody reads is reported ("Task exception was never
 * retrieved") when its last reference goes, or when its loop closes if the
 * reference was dropped on the floor.
 * Thread: the loop's thread.
 */
URIO_EXPORT urio_future_t *urio_task_create(urio_loop_t *loop, urio_coro_t *coro);
URIO_EXPORT urio_future_t *urio_task_create_opts(urio_loop_t *loop, urio_coro_t *coro,
                                                 const urio_task_opts_t *opts);
#define urio_spawn(loop, fn, arg) urio_task_create((loop), URIO_CORO(fn, arg))

/*
 * In a task: suspends it until f is done, then gives f's outcome as
 * urio_future_result does (0 and *result, f's error, or -ECANCELED).
 * A cancelled task gets -ECANCELED from the await it is blocked in (the
 * future it waited on is cancelled), and from every await after, unless
 * shielded (urio_shield_begin).
 * Returns: as above; -EPERM outside a task; -EINVAL for NULL, or a future of
 *          another loop; -EDEADLK for the task awaiting itself.
 */
URIO_EXPORT int urio_await(urio_future_t *f, void **result);

/* In a task: runs coro to its end on this task's stack ("await coro()"). */
URIO_EXPORT int urio_await_coro(urio_coro_t *coro, void **result);

/*
 * In a task: sets its error message and records where (this call's file,
 * line and function; in debug mode the whole stack): reports show it as the
 * error's traceback.  Returns err (for `return urio_task_fail(-EIO, ...)`);
 * a positive err is taken as its negative, with a WARNING.
 */
URIO_EXPORT int urio_task_fail(int err, const char *fmt, ...) URIO_PRINTF(2, 3);
URIO_EXPORT int urio_task_fail_site(const urio_site_t *site, int err, const char *fmt, ...)
    URIO_PRINTF(3, 4);
#define urio_task_fail(...) urio_task_fail_site(URIO_HERE(), __VA_ARGS__)

/* In a task: sleeps ns.  Returns: 0, -ECANCELED, -EPERM outside a task. */
URIO_EXPORT int urio_sleep(uint64_t ns);

/* In a task: lets every other ready callback and task run once (asyncio.sleep(0)). */
URIO_EXPORT int urio_yield(void);

/*
 * In a task: awaits f for at most timeout_ns; on time-out cancels f and
 * returns -ETIMEDOUT.
 */
URIO_EXPORT int urio_wait_for(urio_future_t *f, uint64_t timeout_ns, void **result);

/*
 * The task running on this thread, or NULL: from anywhere on the loop's
 * thread (a callback sees NULL; code called from a task sees the task).
 * A borrowed pointer.
 */
URIO_EXPORT urio_future_t *urio_task_current(void);

/*
 * Every task of loop not finished yet (asyncio.all_tasks): up to cap of them
 * in tasks[], each a new reference (unref each).
 * Returns: how many there are (more than cap: call again with room).
 * Thread: the loop's thread.
 */
URIO_EXPORT size_t urio_all_tasks(urio_loop_t *loop, urio_future_t **tasks, size_t cap);

/*
 * Writes every live task of loop to out (Go's goroutine dump): its name,
 * state (not started, running, suspended), where it is suspended (the
 * awaiting call's function, file and line), what it awaits, where it was
 * created, and in debug mode its creation stack and, for a suspended task,
 * its whole stack from the task's function down to the await (walked from
 * the registers it will resume with; x86-64 and AArch64, with libdw).
 * Returns: how many tasks; -EINVAL; -EPERM (wrong thread).
 * Thread: the loop's thread.
 */
URIO_EXPORT int urio_loop_dump_tasks(urio_loop_t *loop, FILE *out);

/*
 * Asks every open loop to dump its tasks to stderr at its next turn.  The
 * same happens on a signal when the program sets URIO_DUMP_SIGNAL (SIGUSR1,
 * SIGUSR2, SIGQUIT, SIGPWR, SIGWINCH or a number) before its first task: kill
 * -USR1 <pid> then shows what every task is doing.
 * Thread: any thread.
 */
URIO_EXPORT void urio_dump_all_tasks(void);

/*
 * Cancel requests a task has had and not withdrawn (asyncio's cancelling()):
 * each urio_future_cancel counts one.  urio_task_uncancel withdraws one and
 * returns how many are left; at 0 the task is no longer being cancelled (its
 * later awaits run normally).  Structured-concurrency code uses the pair to
 * tell its own cancel from one that came from outside.
 * Thread: the loop's thread (0 and an ERROR line from another).
 */
URIO_EXPORT unsigned urio_task_cancelling(const urio_future_t *task);
URIO_EXPORT unsigned urio_task_uncancel(urio_future_t *task);
/*
 * The message of the latest cancel request (urio_future_cancel_msg), or
 * NULL; valid until the task's next cancel or uncancel.  Thread: the loop's
 * thread (NULL and an ERROR line from another).
 */
URIO_EXPORT const char *urio_task_cancel_message(const urio_future_t *task);
/* A task's name ("fn" unless set); NULL for a plain future. */
URIO_EXPORT const char *urio_task_name(const urio_future_t *task);
/* True if f is a task. */
URIO_EXPORT bool urio_future_is_task(const urio_future_t *f);

/*
 * Protects a critical section of the current task from cancellation
 * (asyncio's shield, as a scope): between begin and end, awaits are not
 * interrupted by a cancel; a cancel that came meanwhile is delivered at the
 * first await after urio_shield_end.  Scopes nest.
 * Returns: 0, -EPERM outside a task.
 */
URIO_EXPORT int urio_shield_begin(void);
URIO_EXPORT int urio_shield_end(void);

/*
 * In a task: awaits every future of fs.  All succeed: 0, with results[i]
 * (results may be NULL).  One fails: the others are cancelled, gather waits
 * for them to finish, and returns that first failure's error (in completion
 * order), its index in *failed (may be NULL).  If the gathering task is
 * cancelled, so are the futures, and gather returns -ECANCELED once all are
 * done.  The futures stay the caller's (gather takes no reference).
 */
URIO_EXPORT int urio_gather(urio_future_t *const *fs, size_t n, void **results, size_t *failed);

/*
 * urio_gather with options (urio_gather_opts_t, urio/future.h): with
 * return_exceptions it waits for every future, cancels none, returns 0 and
 * gives each outcome in opts->errors[i] (results[i] NULL for failures).
 * Built on urio_gather_new: no future outlives the call.
 */
URIO_EXPORT int urio_gather_opts(urio_future_t *const *fs, size_t n, void **results,
                                 const urio_gather_opts_t *opts);

/* When urio_wait returns (asyncio.wait's return_when). */
enum {
    URIO_FIRST_COMPLETED = 1,    /* any future is done */
    URIO_FIRST_EXCEPTION = 2,    /* any future fails (not a cancel), or all are done */
    URIO_ALL_COMPLETED   = 3,    /* all are done */
};

/*
 * In a task: asyncio.wait.  Suspends until fs satisfy `when` or timeout_ns
 * passes (-1: no timeout; 0: just look).  Cancels nothing, also on time-out.
 * done[i] (done may be NULL) tells which are done.
 * Returns: how many of fs are done (a time-out is not an error: compare with
 *          n); -EINVAL (no futures, NULL, another loop's future, a bad
 *          `when` or timeout); -EDEADLK (the task itself is in fs);
 *          -ECANCELED (the waiting task was cancelled); -EPERM outside a task.
 */
URIO_EXPORT int urio_wait(urio_future_t *const *fs, size_t n, int when, int64_t timeout_ns,
                          bool *done);

/*
 * asyncio.as_completed: futures in the order they complete.
 *   urio_as_completed_t *it;
 *   urio_as_completed_new(&it, fs, n, timeout_ns);      (-1: no timeout)
 *   urio_future_t *f;
 *   while ((ret = urio_as_completed_next(it, &f)) == 1) { ... f is done ... }
 *   urio_as_completed_free(it);
 * new: 0; -EINVAL; -EPERM (wrong thread); -ENOMEM.  It holds a reference on
 *   each future until freed.  The timeout runs from new, for the whole series.
 * next (in a task): 1 with *next (one of fs, borrowed); 0 when every future
 *   was given; -ETIMEDOUT; -ECANCELED; -EPERM outside a task of that loop.
 */
typedef struct urio_as_completed urio_as_completed_t;
URIO_EXPORT int urio_as_completed_new(urio_as_completed_t **out, urio_future_t *const *fs,
                                      size_t n, int64_t timeout_ns);
URIO_EXPORT int urio_as_completed_next(urio_as_completed_t *it, urio_future_t **next);
URIO_EXPORT void urio_as_completed_free(urio_as_completed_t *it);

/*
 * Task groups: structured concurrency (asyncio's TaskGroup, Trio's nursery).
 * Children are spawned into the group; urio_task_group_wait returns when all
 * have finished; the first child that fails cancels its siblings, and the
 * group's error names it: "child 'fn' (created at file.c:42) failed: EIO
 * (Input/output error): disk gone".  Children cannot outlive the group:
 * urio_task_group_free cancels and awaits any still running.
 * All calls: in a task, on its loop.
 */
typedef struct urio_task_group urio_task_group_t;
URIO_EXPORT int urio_task_group_new(urio_task_group_t **group);
/* Spawns coro in the group (owns it).  Returns: the child (the group's reference:
 * valid until urio_task_group_free), or NULL with errno. */
URIO_EXPORT urio_future_t *urio_task_group_spawn(urio_task_group_t *group, urio_coro_t *coro);
/* Returns: 0; the first failed child's error; -ECANCELED if the waiter was cancelled. */
URIO_EXPORT int urio_task_group_wait(urio_task_group_t *group);
/* The group's error text, or NULL. */
URIO_EXPORT const char *urio_task_group_error_message(const urio_task_group_t *group);
URIO_EXPORT void urio_task_group_free(urio_task_group_t *group);

/* ------------------------------------------------------------------ */
/* Running a program, and crossing threads                              */

typedef struct urio_run_opts {
    int debug;                   /* 0 default, 1 on, -1 off */
    bool virtual_clock;          /* the loop's virtual clock (urio_loop_opts_t) */
} urio_run_opts_t;               /* may grow: zero-initialise it */

/*
 * asyncio.run: a new loop, main as its task; when main is done, cancels the
 * tasks left and waits for them, shuts the default executor down, reports
 * never-awaited coroutines, closes the loop.
 * Returns: main's outcome (0 with *result, its error, -ECANCELED), or the
 *          loop's creation error (URIO_ENOURING...); -EBUSY inside a running loop.
 * Thread: any thread without a running loop.  Owns main.
 */
URIO_EXPORT int urio_run(urio_coro_t *main, const urio_run_opts_t *opts, void **result);

/*
 * Runs coro as a task of loop, from any thread (asyncio's
 * run_coroutine_threadsafe(coro, loop); the loop comes first here, as in
 * every urio call).  Returns a future any thread may wait on
 * (urio_future_wait) or cancel (which cancels the task); the caller owns
 * one reference.
 * Returns: NULL with errno EINVAL, ESHUTDOWN (loop closed), ENOMEM.
 * Thread: any thread.  Owns coro.
 */
URIO_EXPORT urio_future_t *urio_run_coroutine_threadsafe(urio_loop_t *loop, urio_coro_t *coro);

#ifdef __cplusplus
}
#endif
#endif
