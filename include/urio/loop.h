/*
 * urio/loop.h — the event loop, its callbacks and timers, the exception
 * handler and debug mode.
 *
 * A loop runs on one thread at a time: the one running it.  The loop's ring
 * (io_uring with IORING_SETUP_SINGLE_ISSUER) is bound to the first thread
 * that runs the loop: later runs must be on that thread too.
 */
#ifndef URIO_LOOP_H
#define URIO_LOOP_H

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct urio_loop_opts {
    unsigned ring_entries;   /* SQ entries; 0: the default (256) */
    int debug;               /* 0: from URIO_DEBUG and the build; 1 on; -1 off */
    /*
     * A virtual clock, for tests: when the loop would sleep until a timer
     * and nothing else can wake it (no I/O in flight, no executor job out),
     * its time jumps to that timer instead.  A test of a 10-minute timeout
     * runs in microseconds (docs/developing.md, "A virtual clock").
     */
    bool virtual_clock;
} urio_loop_opts_t;          /* may grow: zero-initialise it (zero means "the default") */

/*
 * Creates a loop with its own io_uring.
 * Returns: 0; -EINVAL (NULL loop, ring_entries over 32768); -ENOMEM;
 *          URIO_ENOURING when the kernel refuses io_uring (sysctl
 *          kernel.io_uring_disabled, a seccomp filter, no kernel support):
 *          an ERROR line on the urio logger says which and what to do;
 *          another negative errno from io_uring_setup or eventfd.
 * Ownership: the caller owns *loop until urio_loop_close().
 * Thread: any thread.
 */
URIO_EXPORT int urio_loop_new(urio_loop_t **loop, const urio_loop_opts_t *opts);

/*
 * Runs the loop until urio_loop_stop().  The turn is the one in
 * docs/loop.md: wait in io_uring (only when nothing is ready), reap
 * completions, drain the cross-thread inbox, fire due timers, run the
 * callbacks that were ready when the step began.
 * Returns: 0 after a stop; -EBUSY if already running; -EPERM from a thread
 *          other than the one the ring is bound to; -ESHUTDOWN if closed.
 * Thread: becomes the loop's thread for the duration.
 */
URIO_EXPORT int urio_loop_run_forever(urio_loop_t *loop);

/*
 * Runs the loop until f is done, then returns f's outcome as
 * urio_future_result() gives it (which marks an error as retrieved).
 * Returns: 0, f's error, -ECANCELED; URIO_ESTOPPED if urio_loop_stop() ended
 *          the run first; -EINVAL if f belongs to another loop; the errors
 *          of urio_loop_run_forever().
 */
URIO_EXPORT int urio_loop_run_until_complete(urio_loop_t *loop, urio_future_t *f);

/*
 * Asks a running loop to stop after the callbacks of the current turn.
 * Called before the loop runs, the next run stops after one turn.
 * Thread: any thread.  From another thread the request travels through the
 * loop's inbox (as urio_call_soon_threadsafe does: it wakes the loop, and
 * comes after the calls that thread made before).  Not from a signal
 * handler: see docs/threads.md for stopping a loop on SIGINT/SIGTERM.
 */
URIO_EXPORT void urio_loop_stop(urio_loop_t *loop);

/*
 * Closes the loop: cancels its in-flight ring operations and waits for their
 * completions, runs the callbacks urio_call_soon_threadsafe() had accepted,
 * drops pending callbacks and timers (debug mode logs how many), and frees
 * the loop.  Futures still referenced stay valid (they keep the loop's
 * memory, not its ring) and can still be read and unreferenced.
 * Closing from another thread than the one that ran the loop (after that
 * thread has finished, say) works: the ring is torn down without entering it.
 * Returns: 0 (also for a loop already closed whose memory futures still
 *          hold); -EBUSY while running (nothing changes); -EINVAL for NULL.
 */
URIO_EXPORT int urio_loop_close(urio_loop_t *loop);

/*
 * Keeps the loop's memory valid for another thread that may call
 * urio_call_soon_threadsafe() on it at any time, even after (or while)
 * the loop closes: such calls then fail with -ESHUTDOWN instead of touching
 * freed memory.  urio_loop_close() frees the loop when the last reference
 * goes.
 * Thread: any thread.
 */
URIO_EXPORT urio_loop_t *urio_loop_ref(urio_loop_t *loop);
URIO_EXPORT void urio_loop_unref(urio_loop_t *loop);

/*
 * True if the loop has work that would keep it running: callbacks ready,
 * timers pending, operations in flight, executor jobs outstanding (libuv's
 * uv_loop_alive).  A task suspended on a future nobody will complete does
 * not count.  For programs that embed the loop in another.
 * Thread: the loop's thread (a snapshot from others).
 */
URIO_EXPORT bool urio_loop_alive(const urio_loop_t *loop);

/*
 * How long the loop would block now (libuv's uv_backend_timeout): 0 if work
 * is ready, the nanoseconds until its earliest timer is due, or -1 if nothing
 * is scheduled.  With timers cancelled but not yet swept the answer may be
 * early, never late.  Thread: the loop's thread.
 */
URIO_EXPORT int64_t urio_loop_next_timeout(urio_loop_t *loop);

/*
 * A loop's statistics, cheap enough to leave on in production: counters
 * and histograms the loop keeps anyway or per blocking wait, except the
 * callback durations, which need a clock read per callback (debug mode).
 * Histograms have log2 buckets of nanoseconds: bucket k counts values in
 * [2^k, 2^(k+1)) ns (k = 20 is about 1 ms), the last one everything above.
 */
#define URIO_STATS_BUCKETS 32
typedef struct urio_loop_stats {
    uint64_t turns;              /* turns of the loop */
    uint64_t callbacks;          /* callbacks and task steps run */
    uint64_t timers_fired;
    uint64_t enters;             /* io_uring_enter system calls */
    uint64_t completions;        /* CQEs reaped */
    uint64_t ops_in_flight;      /* operations in the ring now (the loop's own wake-up read too) */
    uint64_t tasks;              /* tasks not finished */
    uint64_t jobs;               /* executor jobs out */
    uint64_t busy_ns;            /* time running callbacks and bookkeeping, over every run */
    uint64_t idle_ns;            /* time blocked in the kernel waiting for work */
    uint64_t slow_callbacks;     /* debug mode: callbacks over the slow-callback duration */
    /* How late the loop woke past the wake-up it planned for its next timer
     * (the deadline plus the timers' slack): loop lag. */
    uint64_t lag_hist[URIO_STATS_BUCKETS];
    /* Debug mode: how long each callback or task step took. */
    uint64_t callback_hist[URIO_STATS_BUCKETS];
} urio_loop_stats_t;

/*
 * Fills *st with loop's statistics.
 * Returns: 0; -EINVAL (NULL); -EPERM (wrong thread).
 * Thread: the loop's thread.
 */
URIO_EXPORT int urio_loop_stats(urio_loop_t *loop, urio_loop_stats_t *st);

/* The loop running on this thread, or NULL.  Thread: any thread. */
URIO_EXPORT urio_loop_t *urio_loop_current(void);

/*
 * The loop's clock: CLOCK_MONOTONIC in nanoseconds (plus the jumps of a
 * virtual clock, urio_loop_opts_t).  Timers are due by this clock.
 * Thread: any thread.
 */
URIO_EXPORT uint64_t urio_loop_time(const urio_loop_t *loop);

/* Debug mode (docs/debug.md).  Thread: the loop's thread. */
URIO_EXPORT void urio_loop_set_debug(urio_loop_t *loop, bool on);
URIO_EXPORT bool urio_loop_get_debug(const urio_loop_t *loop);

/*
 * A callback or task step longer than this is logged at WARNING in debug
 * mode: "Executing <Handle fn() at file.c:42> took 0.153 seconds".
 * Default 100 ms.
 */
URIO_EXPORT void urio_loop_set_slow_callback_duration(urio_loop_t *loop, uint64_t ns);
URIO_EXPORT uint64_t urio_loop_get_slow_callback_duration(const urio_loop_t *loop);

/*
 * The stall watchdog: a thread that notices the loop stuck in one turn for
 * threshold_ns of the loop thread's CPU time (a callback or task step that
 * computes on and on; a thread merely waiting for a CPU is not stalled) and
 * logs, while it is still stuck, WARNING "loop stalled for 250 ms of CPU time
 * in:" and the loop thread's stack; the same stall is reported again at twice the time,
 * then four times...  Debug mode turns it on with ten times the
 * slow-callback duration (a second at least) as the threshold; this call
 * sets it (0 turns it off) whatever debug mode says.  It costs the loop
 * nothing (it reads a counter the loop keeps).  The stack is taken with
 * signal SIGRTMAX - 7, unless the program handles that signal itself (the
 * report then says so); the signal interrupts what the stalled code is
 * blocked in (a sleep there returns early with EINTR).
 * Returns: 0; -EINVAL; -EPERM (wrong thread); -ESHUTDOWN; -ENOMEM or the
 *          error of pthread_create.
 * Thread: the loop's thread.
 */
URIO_EXPORT int urio_loop_set_stall_watchdog(urio_loop_t *loop, uint64_t threshold_ns);

/*
 * Timer slack: when the loop sleeps until a timer, it may sleep this much
 * longer, so that timers due close together share one wake-up (and one
 * system call).  Timers never fire early; they may fire up to their slack
 * late beyond the time the loop takes: this value, or 1/1024 of the delay
 * the timer was scheduled with (at most 100 ms) if that is more — Linux's
 * rule for poll/select timeouts.  Default 50 µs, Linux's own default slack
 * for a thread's timed waits; 0 wakes exactly at each deadline (for timers
 * scheduled while it is 0).  At most 1 s.
 * Thread: the loop's thread.
 */
URIO_EXPORT void urio_loop_set_timer_slack(urio_loop_t *loop, uint64_t ns);
URIO_EXPORT uint64_t urio_loop_get_timer_slack(const urio_loop_t *loop);

/* ------------------------------------------------------------------ */
/* Errors that nobody handled: the exception handler                   */

typedef struct urio_error_context {
    const char *message;           /* "Task exception was never retrieved", ... */
    int error;                     /* negative errno or URIO_E* code, or 0 */
    const char *error_message;     /* the error's text, or NULL */
    urio_future_t *future;         /* the future or task concerned, or NULL */
    const char *source_traceback;  /* where it was created, debug mode only, or NULL */
    /*
     * Where the error was set, as Python prints it: "Traceback (most recent
     * call last):" and the frames (the call's site always, the whole stack
     * in debug mode), or NULL.
     */
    const char *error_traceback;
} urio_error_context_t;

typedef void (*urio_exception_handler_fn)(urio_loop_t *loop,
                                          const urio_error_context_t *ctx, void *ud);

/*
 * Sets the loop's exception handler; NULL restores the default, which logs
 * the report at ERROR as one message: the text, the object, the error's name
 * and message, and (debug mode) the creation stack.
 * Thread: the loop's thread.
 */
URIO_EXPORT void urio_loop_set_exception_handler(urio_loop_t *loop,
                                                 urio_exception_handler_fn fn, void *ud);

/* Calls the loop's exception handler (or the default one) with ctx. */
URIO_EXPORT void urio_loop_call_exception_handler(urio_loop_t *loop,
                                                  const urio_error_context_t *ctx);

/* The default handler, for custom handlers that want to add to it. */
URIO_EXPORT void urio_loop_default_exception_handler(urio_loop_t *loop,
                                                     const urio_error_context_t *ctx);

/* ------------------------------------------------------------------ */
/* Callbacks and timers                                                 */

typedef void (*urio_callback_fn)(void *arg);
/*
 * A value naming a pending callback or timer of one loop: `loop` is that
 * loop's serial, so a handle given to another loop is refused, never taken
 * for one of its own.  id 0 means "none".
 */
typedef struct urio_handle {
    uint64_t id;
    uint32_t loop;
} urio_handle_t;

/*
 * Schedules fn(arg) to run on the loop's thread: soon (FIFO), after delay_ns,
 * or at when_ns on urio_loop_time()'s clock.  Timers run in deadline order,
 * FIFO among equal deadlines, never before their deadline.  A call_soon
 * runs after every urio_call_soon_threadsafe() call that happened before it
 * (made on this thread, or seen made): it moves them to the FIFO first.
 * Returns: a handle; id 0 on failure with errno set: EINVAL (NULL loop or
 *          fn), EPERM (called from a thread other than the running loop's;
 *          an ERROR line names the function), ESHUTDOWN (closed or closing
 *          loop), ENOMEM (also when the loop already holds 16,777,215
 *          timers, the most one loop can: an ERROR line says so).  When the
 *          call fails, fn never runs.
 * Thread: the loop's thread.
 * The macros record the callback's name, file and line (urio_site_t) for
 * reports; the functions of the same names still exist, so taking
 * &urio_call_soon works.
 */
URIO_EXPORT urio_handle_t urio_call_soon(urio_loop_t *loop, urio_callback_fn fn, void *arg);
URIO_EXPORT urio_handle_t urio_call_later(urio_loop_t *loop, uint64_t delay_ns,
                                          urio_callback_fn fn, void *arg);
URIO_EXPORT urio_handle_t urio_call_at(urio_loop_t *loop, uint64_t when_ns,
                                       urio_callback_fn fn, void *arg);

URIO_EXPORT urio_handle_t urio_call_soon_site(urio_loop_t *loop, urio_callback_fn fn, void *arg,
                                              const urio_site_t *site);
URIO_EXPORT urio_handle_t urio_call_later_site(urio_loop_t *loop, uint64_t delay_ns,
                                               urio_callback_fn fn, void *arg,
                                               const urio_site_t *site);
URIO_EXPORT urio_handle_t urio_call_at_site(urio_loop_t *loop, uint64_t when_ns,
                                            urio_callback_fn fn, void *arg,
                                            const urio_site_t *site);

#define urio_call_soon(loop, fn, arg) urio_call_soon_site((loop), (fn), (arg), URIO_SITE(fn))
#define urio_call_later(loop, delay_ns, fn, arg)                                           \
    urio_call_later_site((loop), (delay_ns), (fn), (arg), URIO_SITE(fn))
#define urio_call_at(loop, when_ns, fn, arg)                                               \
    urio_call_at_site((loop), (when_ns), (fn), (arg), URIO_SITE(fn))

/*
 * Cancels a pending callback or timer.  A handle that already ran, was
 * cancelled, or is id 0 is a harmless no-op.  Another loop's handle is
 * refused (false, and an ERROR line naming the misuse).
 * Returns: true if it was still pending (it will not run).
 * Thread: the loop's thread (false and an ERROR line from another).
 */
URIO_EXPORT bool urio_handle_cancel(urio_loop_t *loop, urio_handle_t h);

/*
 * Schedules fn(arg) on the loop from any thread; wakes the loop only when it
 * sleeps.  Lock-free, and async-signal-safe: no lock, no malloc (the node
 * pool, process-wide, grows by mmap), errno kept; a signal handler may call
 * it (to stop a loop on SIGTERM, say).  Every accepted call runs exactly
 * once: on the loop, or during urio_loop_close() if the loop closes first.
 * Order: calls made with urio_call_soon() and this function run in
 * happens-before order, whichever threads made them (docs/threads.md).
 * Returns: 0; -EINVAL (NULL loop or fn); -ESHUTDOWN once the loop's close
 *          has begun; -ENOMEM.  When it fails, fn never runs.
 * Thread: any thread; a signal handler.
 */
URIO_EXPORT int urio_call_soon_threadsafe(urio_loop_t *loop, urio_callback_fn fn, void *arg);

#ifdef __cplusplus
}
#endif
#endif
