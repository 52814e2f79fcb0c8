/*
 * lib/loop.h — the loop's own state (loop.c), and the interface through
 * which the layers above the core plug into it: subsystems.
 *
 * The core (loop, ready FIFO, timers, ring, inbox) knows nothing of the
 * layers built on it.  A subsystem (tasks, an executor, I/O) registers with
 * a loop the first time it is used there, with a table of hooks and its own
 * state, and the loop calls the hooks at fixed points of its life:
 *
 *   may_run       a run starts            refuse it (a negative errno; the hook logs why)
 *   step_end      after a step's callbacks, if the subsystem flagged it
 *   before_sleep  before the loop blocks in the kernel, if flagged
 *   alive         urio_loop_alive         true if the subsystem has work in progress
 *   stats         urio_loop_stats         fill in the subsystem's counters
 *   may_close     close starts            refuse it
 *   shutdown      close, first            stop producing work; may wait for threads
 *   close         close, after the calls the inbox had accepted have run:
 *                                         cancel or settle what is still out
 *   release       close, after the ring is drained and the inbox closed:
 *                                         report what leaked, free the state
 *
 * Close-time hooks run in reverse order of registration (what registered
 * last, built on what came before, goes first).  Flags cost the turn one
 * compare each when clear.
 */
#ifndef URIO_LOOP_INTERNAL_H
#define URIO_LOOP_INTERNAL_H

#include "common.h"
#include "inbox.h"
#include "ready.h"
#include "ring.h"
#include "timer.h"

typedef struct urio__subsystem {
    const char *name;
    int  (*may_run)(urio_loop_t *loop, void *state);
    bool (*alive)(const urio_loop_t *loop, void *state);
    void (*stats)(const urio_loop_t *loop, void *state, urio_loop_stats_t *st);
    void (*step_end)(urio_loop_t *loop, void *state);
    void (*before_sleep)(urio_loop_t *loop, void *state);
    int  (*may_close)(urio_loop_t *loop, void *state);
    void (*shutdown)(urio_loop_t *loop, void *state);
    void (*close)(urio_loop_t *loop, void *state);
    void (*release)(urio_loop_t *loop, void *state);
} urio__subsystem_t;

#define URIO__MAX_SUBSYSTEMS 8

/*
 * In debug mode, what the running callback works for, when it is not the
 * callback itself (a callback that resumed a task ran the task's step): the
 * slow-callback report names it.  Set by the subsystem, cleared by the loop
 * before each callback.
 */
typedef void (*urio__describe_fn)(const void *obj, char *buf, size_t n);

struct urio_loop {
    /* Hot: the ready FIFO and the turn's bookkeeping.  Loop thread only. */
    urio__ready_fifo_t ready;
    uint32_t step_end_flags;     /* bit i: subsystem i wants its step_end hook */
    uint32_t sleep_flags;        /* bit i: subsystem i wants its before_sleep hook */
    /* When the loop last entered the kernel, to bound how long ready work may keep it out. */
    uint32_t cbs_since_enter;
    uint32_t cbs_next_check;     /* cbs_since_enter at which to look at the bounds again */
    uint64_t last_enter_ns;

    urio__backtrace_t *created; /* debug mode: where urio_loop_new was called (the unclosed warning) */
    bool debug;
    bool stall_set;              /* the program chose the stall watchdog's threshold */
    bool stopping;
    bool closing;
    bool closed;
    /*
     * 1 once close has finished (a futex word): threads blocked in
     * urio_future_wait on a future of this loop that stayed pending wake up
     * and return -ESHUTDOWN.
     */
    _Atomic uint32_t closed_word;
    bool running;
    _Atomic(const void *) owner; /* thread token while running, else NULL */
    _Atomic(const void *) home;  /* the thread that made it, then the ring's issuer */
    atomic_bool bound;           /* a run bound the ring to `home` (SINGLE_ISSUER) */
    uint32_t fork_gen;           /* urio__fork_gen when made: another value in a forked child */
    uint32_t serial;             /* this loop's number in the process, never 0: in its handles */
    uint64_t slow_ns;
    uint64_t timer_slack_ns;     /* how late a wake-up for a timer may be */
    _Atomic uint64_t clock_offset;   /* virtual clock: how far loop time ran ahead of the real
                                        one (written by the loop, read by any thread) */
    bool virtual_clock;          /* jump to the next timer instead of sleeping for it */
    urio__describe_fn attrib_describe;   /* debug mode: see urio__describe_fn */
    const void *attrib_obj;
    void (*attrib_release)(const void *obj);   /* drops the hold on attrib_obj, or NULL */
    bool timing;                 /* run_ready_debug is timing callbacks (for a report) */

    urio__timers_t timers;
    urio__ring_t ring;
    urio__inbox_t inbox;

    struct {
        const urio__subsystem_t *ss;
        void *state;
    } subs[URIO__MAX_SUBSYSTEMS];
    uint32_t nsubs;

    urio_exception_handler_fn exc_fn;
    void *exc_ud;

    struct urio_loop *next_open, *prev_open;   /* the open loops: guarded by a mutex in loop.c */
    uint32_t open_gen;           /* the open-loop list it is on (see open_after_fork) */
    atomic_uint refs;            /* 1 for the open loop, 1 per live future, urio_loop_ref's */

    /* Statistics (urio_loop_stats).  Loop thread only. */
    uint64_t callbacks_run;
    _Atomic uint64_t progress;   /* turns completed: the stall watchdog reads it */
    atomic_ulong owner_thread;   /* the pthread_t running the loop (the watchdog signals it) */
    uint64_t timers_fired;
    uint64_t idle_ns;            /* blocked in the kernel */
    uint64_t run_ns;             /* in urio_loop_run_forever, runs that ended */
    uint64_t run_started;        /* the clock when the current run began */
    uint64_t wake_deadline;      /* the timer the loop blocked for, or 0 */
    uint64_t debug_ticks;        /* debug mode: the last callback's end (urio__ticks), or 0 */
    uint64_t slow_callbacks;
    uint64_t lag_hist[URIO_STATS_BUCKETS];
    /*
     * Debug mode's callback durations: entry k + 1 counts bucket k; entry 0
     * is a sink.  Each callback's bucket is counted one timed callback late
     * (callback_pending: its entry, 0 for none), and urio_loop_stats adds the
     * pending one.  An increment at an address computed from the cycle
     * counter just read cost about 6 ns a callback on Zen 3, a third of
     * debug mode's whole cost (the loads after it seem to wait for the slow
     * rdtsc); one at an address known a callback earlier costs nothing.
     */
    uint64_t callback_hist[URIO_STATS_BUCKETS + 1];
    uint32_t callback_pending;
};

/* The bucket of a duration in ns: k holds [2^k, 2^(k+1)), 0 holds 0 and 1, the last the rest. */
static inline unsigned urio__stats_bucket(uint64_t ns)
{
    unsigned k = ns < 2 ? 0 : 63u - (unsigned)__builtin_clzll(ns);
    return k < URIO_STATS_BUCKETS ? k : URIO_STATS_BUCKETS - 1;
}

/*
 * Registers ss with loop, with its state (the subsystem's; released by its
 * release hook).  Returns: the subsystem's index (for the flags), -ENOSPC
 * past URIO__MAX_SUBSYSTEMS, -ESHUTDOWN on a closing loop.
 */
int urio__loop_register(urio_loop_t *loop, const urio__subsystem_t *ss, void *state);

/* ss's state on loop, or NULL if it never registered there. */
static inline void *urio__loop_state(const urio_loop_t *loop, const urio__subsystem_t *ss)
{
    for (uint32_t i = 0; i < loop->nsubs; i++)
        if (loop->subs[i].ss == ss)
            return loop->subs[i].state;
    return NULL;
}

/* Asks for subsystem `index`'s step_end hook at the end of this step (or the next). */
static inline void urio__loop_want_step_end(urio_loop_t *loop, int index)
{
    loop->step_end_flags |= 1u << index;
}

/* Asks for subsystem `index`'s before_sleep hook before the loop next blocks. */
static inline void urio__loop_want_before_sleep(urio_loop_t *loop, int index)
{
    loop->sleep_flags |= 1u << index;
}

/*
 * The loop's time (urio_loop_time): the monotonic clock, plus what a virtual
 * clock's jumps added.  Deadlines the kernel sees (linked timeouts) are
 * real: subtract clock_offset.
 */
static inline uint64_t urio__loop_now(const urio_loop_t *loop)
{
    return urio__now() + atomic_load_explicit(&loop->clock_offset, memory_order_relaxed);
}

/*
 * Debug mode: the running callback works for obj (see urio__describe_fn).
 * While the loop is timing callbacks (loop->timing) a report may name obj
 * after the callback returned, when obj may be gone: the subsystem then
 * holds obj for it and passes `release`, which the loop calls once the
 * report is written (or another attribution replaces this one).
 */
static inline void urio__loop_attribute(urio_loop_t *loop, urio__describe_fn fn, const void *obj,
                                        void (*release)(const void *obj))
{
    if (URIO_UNLIKELY(loop->attrib_release != NULL))
        loop->attrib_release(loop->attrib_obj);
    loop->attrib_describe = fn;
    loop->attrib_obj = obj;
    loop->attrib_release = release;
}

/* Logs a loop-only call made from another thread, naming `fn`. */
void urio__loop_wrong_thread(const char *fn);

/* The loop this thread is running (urio_loop_current), or NULL. */
extern _Thread_local urio_loop_t *urio__tls_loop __attribute__((tls_model("initial-exec")));

/*
 * Wrong-thread check for loop-only calls; logs the refusal naming `fn`.
 * The common case, a call from the loop's own callbacks, is one compare.
 */
static inline bool urio__loop_check_thread(const urio_loop_t *loop, const char *fn)
{
    if (URIO_LIKELY(urio__tls_loop == loop))
        return true;
    const void *owner = atomic_load_explicit(&loop->owner, memory_order_relaxed);
    if (URIO_LIKELY(owner == NULL || owner == urio__thread_token()))
        return true;
    urio__loop_wrong_thread(fn);
    return false;
}
/*
 * True if the calling thread is the loop's: the one running it, or, while
 * it does not run, its home thread (the one that made or last ran it).
 */
bool urio__loop_is_mine(const urio_loop_t *loop);
/* Calls fn(loop, arg) for every open loop, under the open list's lock (fn must not close one). */
void urio__loop_foreach_open(void (*fn)(urio_loop_t *loop, void *arg), void *arg);

/*
 * watchdog.c: the stall watchdog for loop with threshold_ns (0: off); made at
 * the first call with a threshold.  Returns: 0, -ENOMEM, or pthread_create's error.
 */
int urio__watchdog_set(urio_loop_t *loop, uint64_t threshold_ns);

/* Logs a call on a closed loop (asyncio's "Event loop is closed"), naming fn. */
void urio__loop_closed_error(const char *fn);

/*
 * True if the loop is closing or closed: the call fn must fail with
 * -ESHUTDOWN.  A call on a loop already closed is a program's mistake, and
 * is logged (during close, urio's own calls are refused quietly).
 */
static inline bool urio__loop_refuses(const urio_loop_t *loop, const char *fn)
{
    if (URIO_LIKELY(!loop->closing))
        return false;
    if (loop->closed)
        urio__loop_closed_error(fn);
    return true;
}

/*
 * True if only the calling thread can make the loop progress: it runs it,
 * or the loop's ring is bound to it (urio_future_wait would wait forever).
 */
bool urio__loop_progresses_only_here(const urio_loop_t *loop);
/*
 * Forks this process has been through (bumped in each child): a loop made
 * before a fork belongs to the parent, and the child may only close it.
 */
extern atomic_uint urio__fork_gen;
static inline bool urio__loop_inherited(const urio_loop_t *loop)
{
    return loop->fork_gen != atomic_load_explicit(&urio__fork_gen, memory_order_relaxed);
}
/* Refuses an inherited loop with an ERROR naming fn.  Returns: true if inherited. */
bool urio__loop_refuse_inherited(const urio_loop_t *loop, const char *fn);
void urio__loop_ref(urio_loop_t *loop);
void urio__loop_unref(urio_loop_t *loop);

/* The default timer slack: Linux's default timer_slack_ns for a thread. */
#define URIO__TIMER_SLACK_NS (50u * 1000u)
/* The default slow-callback threshold: asyncio's 100 ms. */
#define URIO__SLOW_CALLBACK_NS (100u * 1000u * 1000u)
/*
 * How long ready work may keep the loop out of the kernel: it enters (reaps
 * completions, submits) at least every URIO__ENTER_EVERY_CALLBACKS callbacks,
 * and, checked every URIO__CLOCK_EVERY_CALLBACKS callbacks, every
 * URIO__ENTER_EVERY_NS.  Measured in docs/loop.md.
 */
#define URIO__ENTER_EVERY_CALLBACKS 1024u
#define URIO__CLOCK_EVERY_CALLBACKS 64u
#define URIO__ENTER_EVERY_NS        (50u * 1000u)

#endif
