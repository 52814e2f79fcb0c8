/*
 * lib/internal.h — urio's internal types and urio__ prototypes.
 *
 * Everything here is hidden (-fvisibility=hidden): tests and the bench link
 * the static archive and may use it, users never see it.
 */
#ifndef URIO_INTERNAL_H
#define URIO_INTERNAL_H

#include "urio_config.h"
#include "urio.h"
#include "mpsc.h"
#include "arch/switch.h"

#include <liburing.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <time.h>

#define URIO_LIKELY(x)   __builtin_expect(!!(x), 1)
#define URIO_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ------------------------------------------------------------------ */
/* alloc.c: the one allocation hook                                     */

void *urio__malloc(size_t n);
void *urio__calloc(size_t n, size_t size);
void *urio__realloc(void *p, size_t n);
void  urio__free(void *p);
char *urio__strdup(const char *s);
char *urio__vasprintf(const char *fmt, va_list ap);
char *urio__asprintf(const char *fmt, ...) URIO_PRINTF(1, 2);

/*
 * Failure injection for tests: after `countdown` more successful
 * allocations, allocations fail; once (persistent false) or until reset
 * (persistent true).  countdown < 0 turns injection off.
 */
void urio__alloc_fail_after(long countdown, bool persistent);

/* ------------------------------------------------------------------ */
/* log.c                                                                */

void urio__vlog(int level, const char *fmt, va_list ap);
#define urio__log urio_log
/* True if a message at `level` would reach a handler (skip costly formatting). */
bool urio__log_enabled(int level);

/* ------------------------------------------------------------------ */
/* debug.c: stacks and names for reports                                */

#define URIO__STACK_DEPTH 10

typedef struct urio__stack {
    void *frames[URIO__STACK_DEPTH + 2];
    int n;
} urio__stack_t;

/* Captures the caller's stack, skipping `skip` frames above the caller (0: from the caller). */
void urio__stack_capture(urio__stack_t *st, int skip);
/*
 * Formats a stack "most recent call last", one frame a line in Python's
 * traceback style, under `header`; symbolised to function, file and line
 * with libdw where built in, else with dladdr's symbol names.
 * Returns: a urio__malloc'd string, or NULL on ENOMEM.
 */
char *urio__stack_format(const urio__stack_t *st, const char *header);
/*
 * Describes a callback for reports: "name() at file.c:42" from its site, or
 * the symbol of fn's address when it has no site.  Writes into buf.
 */
const char *urio__describe_callback(void (*fn)(void), const urio_site_t *site,
                                    char *buf, size_t n);

/* Reads the monotonic clock in nanoseconds. */
static inline uint64_t urio__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ */
/* ring.c: the only file that talks to io_uring                         */

/*
 * An op: one asynchronous operation in the ring.  It lives inside the object
 * that owns it (a stream, a task's wait slot, the loop's wake-up read) and
 * must stay alive, with every buffer the kernel may touch, until its final
 * completion: the one without IORING_CQE_F_MORE.  That includes after a
 * cancel: cancelling only asks the kernel to finish it early.
 */
typedef struct urio__op urio__op_t;
typedef void (*urio__op_complete_fn)(urio__op_t *op, int res, uint32_t cqe_flags);

enum urio__op_state {
    URIO__OP_IDLE = 0,      /* not in the ring */
    URIO__OP_INFLIGHT,      /* submitted (or queued in the SQ) */
    URIO__OP_CANCELLING,    /* in flight, and a cancel was sent */
};

struct urio__op {
    urio__op_complete_fn complete;   /* loop thread: called once per CQE */
    uint32_t slot;                   /* index in the ring's op table while in flight */
    uint8_t state;                   /* enum urio__op_state */
};

struct urio__op_entry {
    urio__op_t *op;                  /* NULL when free */
    uint32_t gen;                    /* bumped at every release: stale CQEs show */
    uint32_t next_free;
};

typedef struct urio__ring {
    struct io_uring uring;
    unsigned setup_flags;            /* what io_uring_setup accepted */
    unsigned features;               /* IORING_FEAT_* */
    bool enabled;                    /* IORING_SETUP_R_DISABLED lifted */
    bool defer_taskrun;              /* completions appear only when we enter */
    uint32_t sq_pending;             /* SQEs queued since the last enter: loop-local, no ring read */
    bool single_issuer;
    const void *issuer;              /* thread token of the ring's issuer, once enabled */
    struct urio__op_entry *ops;      /* slot 0 is reserved: user_data 0 means "ignore" */
    uint32_t nops, cap_ops, free_op;
    uint32_t inflight;               /* ops whose final CQE has not come */
    uint64_t enters;                 /* io_uring_enter calls made (statistics) */
    uint64_t cqes;                   /* CQEs reaped */
    uint32_t last_reaped;            /* CQEs reaped by the last urio__ring_reap */
} urio__ring_t;

/*
 * A token unique to the calling thread: the address of a thread-local.
 * initial-exec: one instruction, no __tls_get_addr, on the hot paths that
 * check the caller's thread.
 */
extern _Thread_local char urio__tls_token __attribute__((tls_model("initial-exec")));
static inline const void *urio__thread_token(void)
{
    return &urio__tls_token;
}

int  urio__ring_init(urio__ring_t *r, unsigned entries);
void urio__ring_exit(urio__ring_t *r);
/* Closes the ring (the kernel cancels what is in flight) but keeps the op table. */
void urio__ring_unmap(urio__ring_t *r);
/*
 * Binds the ring to the calling thread (IORING_SETUP_SINGLE_ISSUER) the first
 * time; afterwards checks the caller is that thread.
 * Returns: 0, or -EPERM from another thread.
 */
int  urio__ring_bind(urio__ring_t *r);
/* An SQE, submitting queued ones to make room.  NULL with *err on failure. */
struct io_uring_sqe *urio__ring_sqe(urio__ring_t *r, int *err);
/*
 * An SQE for op; when the SQ is full, submits what is queued and retries.
 * The SQE's user_data is set: prepare it, but do not change user_data.
 * Returns: the SQE, or NULL with *err set (-ENOMEM for the op table, or the
 * submit error when the SQ stays full).
 */
struct io_uring_sqe *urio__op_sqe(urio__ring_t *r, urio__op_t *op, int *err);
/* Asks the kernel to cancel op; its own CQE still comes (-ECANCELED or its result). */
int  urio__op_cancel(urio__ring_t *r, urio__op_t *op);
/*
 * Submits queued SQEs and waits: wait_ns < 0 forever, 0 not at all, else at
 * most wait_ns.  Interrupted and busy waits return 0: the loop reaps and
 * comes back.  Returns: 0 or a negative errno that means the ring is broken.
 */
int  urio__ring_enter(urio__ring_t *r, int64_t wait_ns);
/* Reaps every CQE (flushing a CQ overflow), completing ops.  Returns: CQEs reaped. */
unsigned urio__ring_reap(urio__ring_t *r);
/*
 * True if completions may be waiting without an enter: always on rings
 * without DEFER_TASKRUN, where the kernel posts them at any time.
 */
static inline bool urio__ring_cq_pending(const urio__ring_t *r)
{
    return io_uring_cq_ready(&r->uring) || io_uring_cq_has_overflow(&r->uring);
}
/* Test helpers (tests/test_ring.c): a NOP, and a timeout op of ns. */
int urio__op_nop(urio__ring_t *r, urio__op_t *op);
int urio__op_timeout(urio__ring_t *r, urio__op_t *op, struct __kernel_timespec *ts);

/* ------------------------------------------------------------------ */
/* loop.c, timer.c: callbacks, handles, timers                         */

/*
 * A timer's slot: what to call, named by (index, generation).  The
 * generation is odd while the timer is pending and bumped at every change,
 * so stale handles and stale wheel or FIFO entries never match.
 */
struct urio__slot {
    urio_callback_fn fn;
    void *arg;
    const urio_site_t *site;
    uint32_t gen;           /* odd: pending; even: free */
    uint32_t where;         /* pending: URIO__SLOT_WHEEL or URIO__SLOT_READY */
};
#define URIO__SLOT_WHEEL 1u
#define URIO__SLOT_READY 2u

struct urio__free_slot {    /* the free-slot stack: index and current generation */
    uint32_t idx, gen;
};

/*
 * An entry of the ready FIFO, a ring buffer addressed by sequence number:
 * entry s sits at s & mask.  A call_soon handle is its sequence number, so
 * a cancel finds its entry without any table.  A due timer's entry names
 * its slot, which is the timer's handle: cancelled, the generations differ.
 */
struct urio__ready {
    urio_callback_fn fn;    /* NULL: cancelled */
    void *arg;
    const urio_site_t *site;
    uint32_t slot1;         /* a timer's slot + 1, or 0 */
    uint32_t gen;
};

struct urio__timer {        /* a timer: in a wheel bucket or the far heap */
    uint64_t when;
    uint64_t seq;           /* FIFO among equal deadlines */
    uint32_t slot, gen;     /* gen mismatch: cancelled, skip it */
};

#define URIO__TW_SHIFT   20          /* a tick is 2^20 ns, about 1 ms */
#define URIO__TW_BUCKETS 4096u       /* the wheel spans about 4.3 s */

struct urio__tw_bucket {    /* the timers of one tick, sorted lazily */
    struct urio__timer *e;
    uint32_t head, n, cap;  /* live range [head, n) */
    bool sorted;            /* [head, n) is in (when, seq) order */
    uint64_t min;           /* no entry is earlier (may name a cancelled one) */
};

/* The cross-thread inbox (lib/inbox.c): a lock-free MPSC queue of pooled nodes. */
#define URIO__INBOX_CHUNKS  24
#define URIO__INBOX_FOREIGN UINT32_MAX   /* a node owned by its pusher, not the pool */

typedef struct urio__inbox_node {
    urio__mpsc_node_t link;          /* first: the queue's node */
    urio_callback_fn fn;
    void *arg;
    _Atomic uint32_t free_next;      /* in the free stack: the next free index + 1 */
    uint32_t idx;                    /* index in the pool, or URIO__INBOX_FOREIGN */
} urio__inbox_node_t;

typedef struct urio__inbox {
    urio__mpsc_t q;
    /* Producers' hot words, each on its own line. */
    _Alignas(64) _Atomic uint64_t free_head;   /* the pool's free stack: tag << 32 | index + 1 */
    _Alignas(64) atomic_uint state;            /* producers inside a push | CLOSED_BIT */
    _Alignas(64) atomic_int sleeping;          /* the loop announced it is about to wait */
    /* The pool's chunks: chunk k holds 64 << k nodes; grown under grow_mu. */
    _Atomic(urio__inbox_node_t *) chunks[URIO__INBOX_CHUNKS];
    pthread_mutex_t grow_mu;
    uint32_t nchunks;                /* guarded by grow_mu */
    urio__inbox_node_t *held;        /* loop thread: popped, not yet moved (ENOMEM) */
    int efd;                         /* the eventfd the loop waits on */
    uint64_t efd_buf;                /* the kernel writes here: owned by the read op */
    urio__op_t efd_op;               /* the always-armed read of efd */
} urio__inbox_t;

struct urio_loop {
    /* Hot: the ready FIFO.  Loop thread only. */
    struct urio__ready *ready;
    uint64_t ready_head, ready_tail;   /* sequence numbers: the FIFO is [head, tail) */
    uint64_t ready_mask;
    atomic_uint ready_reserved;  /* room promised to futures' runners (future.c); a
                                    future's last unref may give it back from any thread */

    /* Timers' slots and the stack of free ones.  Loop thread only. */
    struct urio__slot *slots;
    struct urio__free_slot *free_slots;
    uint32_t nslots, cap_slots, nfree;

    /*
     * Timers (timer.c): a wheel of ~1 ms buckets over the next ~4.3 s, and a
     * 4-ary heap for later deadlines.  Loop thread only.
     */
    struct urio__tw_bucket *tw;  /* URIO__TW_BUCKETS of them, made at the first timer */
    uint64_t tw_bits[URIO__TW_BUCKETS / 64];   /* non-empty buckets */
    uint64_t tw_tick;            /* the wheel's first tick: heap entries are all later */
    struct spare *tw_spare;      /* arrays of emptied buckets, for reuse */
    uint32_t tw_count;           /* entries in the wheel, live or stale */
    struct urio__timer *heap;
    uint32_t nheap, cap_heap;
    uint32_t timers;             /* entries in wheel and heap, live or stale */
    uint32_t timer_stale;        /* cancelled entries not yet dropped */
    uint64_t timer_seq;
    uint64_t now_cache;          /* the clock when timers were last fired: <= now */

    /* When the loop last entered the kernel, to bound how long ready work may keep it out. */
    uint32_t cbs_since_enter;
    uint32_t cbs_next_check;     /* cbs_since_enter at which to look at the bounds again */
    uint64_t last_enter_ns;

    bool debug;
    bool stopping;
    bool closing;
    bool closed;
    bool running;
    _Atomic(const void *) owner; /* thread token while running, else NULL */
    _Atomic(const void *) home;  /* the thread that made it, then the ring's issuer */
    uint64_t slow_ns;
    uint64_t timer_slack_ns;     /* how late a wake-up for a timer may be */

    urio__ring_t ring;
    urio__inbox_t inbox;

    /* Tasks (task.c).  Loop thread only. */
    struct urio__task *current_task;     /* the task running now, or NULL */
    struct urio__task *stepped_task;     /* debug: the task the current callback resumed */
    const void *task_thread;             /* the thread its tasks run (and are suspended) on */
    urio__ctx_t task_return;             /* the loop's context while a task runs */
    struct urio__task *tasks;            /* every task not finished: a list */
    uint32_t ntasks;
    urio_future_t *tasks_drained;        /* urio_run: completed when the last task ends */
    struct urio_coro *coros;             /* coroutines made here, not started nor closed */
    struct urio__stack_pool *stacks;     /* task stacks kept for reuse */
    void *san_fiber;                     /* the loop's own fiber (TSan), or NULL */

    urio_executor_t *default_ex;     /* made by the first urio_run_in_executor(NULL) */
    struct urio__job *jobs_head, *jobs_tail;   /* submitted this turn, not yet handed over */
    struct urio__job *jobs_live;               /* every job whose future is not settled */

    urio_exception_handler_fn exc_fn;
    void *exc_ud;

    struct urio_loop *next_open, *prev_open;   /* the open loops: guarded by a mutex in loop.c */
    atomic_uint refs;            /* 1 for the open loop, 1 per live future, urio_loop_ref's */
    uint64_t callbacks_run;      /* statistics */
};

/* Wrong-thread check for loop-only calls; logs the refusal naming `fn`. */
bool urio__loop_check_thread(const urio_loop_t *loop, const char *fn);
void urio__loop_ref(urio_loop_t *loop);
void urio__loop_unref(urio_loop_t *loop);

/* Schedules an internal callback (no thread check). */
urio_handle_t urio__call_soon(urio_loop_t *loop, urio_callback_fn fn, void *arg,
                              const urio_site_t *site);

void urio__slot_release(urio_loop_t *loop, uint32_t idx);
/* Appends to the ready FIFO.  Returns: the entry's sequence number, or 0 on ENOMEM. */
uint64_t urio__ready_push(urio_loop_t *loop, urio_callback_fn fn, void *arg,
                          const urio_site_t *site, uint32_t slot1, uint32_t gen);
/*
 * Reserves room in the FIFO for one later push that must not fail (a
 * future's done-callback runner): the FIFO grows now, or never.
 * Returns: 0 or -ENOMEM.
 */
int urio__ready_reserve(urio_loop_t *loop);
static inline void urio__ready_unreserve(urio_loop_t *loop)
{
    atomic_fetch_sub_explicit(&loop->ready_reserved, 1, memory_order_relaxed);
}
/* Pushes into reserved room: cannot fail.  Returns: the sequence number. */
uint64_t urio__ready_push_reserved(urio_loop_t *loop, urio_callback_fn fn, void *arg,
                                   const urio_site_t *site);
static inline uint32_t urio__ready_count(const urio_loop_t *loop)
{
    return (uint32_t)(loop->ready_tail - loop->ready_head);
}

int  urio__timer_push(urio_loop_t *loop, uint64_t when, uint32_t slot, uint32_t gen);
/*
 * The earliest deadline, or UINT64_MAX: the wait's timeout.  It may be a
 * cancelled timer's (an early wake-up, never a late one).
 */
uint64_t urio__timer_next(urio_loop_t *loop);
/* Live timers (for close's report). */
uint32_t urio__timer_count_live(const urio_loop_t *loop);
/* Moves every timer due at `now` to the ready FIFO.  Returns: how many. */
uint32_t urio__timer_fire(urio_loop_t *loop, uint64_t now);
/* Notes a cancelled timer; compacts when stale entries dominate. */
void urio__timer_cancelled(urio_loop_t *loop);
void urio__timer_free_all(urio_loop_t *loop);

int  urio__inbox_init(urio_loop_t *loop);
/* Moves every accepted call to the ready FIFO.  Returns: how many. */
uint32_t urio__inbox_drain(urio_loop_t *loop);
/* Closes the inbox to new calls and runs every accepted one.  Returns: how many ran. */
uint32_t urio__inbox_close(urio_loop_t *loop);
void urio__inbox_free(urio_loop_t *loop);
/* True if calls wait in the inbox (relaxed: the sleep check uses seq_cst itself). */
static inline bool urio__inbox_pending(urio__inbox_t *ib)
{
    return ib->held != NULL || urio__mpsc_nonempty(&ib->q, memory_order_relaxed);
}
/* True if the wake-up read is in the ring (re-arming it if it failed before). */
bool urio__inbox_armed(urio_loop_t *loop);
/* Pushes a node its owner made (an executor's completion): no pool, no allocation. */
int urio__inbox_push_node(urio_loop_t *loop, urio__inbox_node_t *n);

/*
 * future.c: futures of another kind (tasks) carry an ops table and their own
 * state after the future's (urio__future_ext).
 */
typedef struct urio__future_ops {
    const char *kind;                               /* "Task": in reports */
    bool (*cancel)(urio_future_t *f);               /* replaces the plain cancel (loop thread) */
    void (*describe)(const urio_future_t *f, char *buf, size_t n);
    void (*finalize)(urio_future_t *f);             /* at the last unref, before the free */
} urio__future_ops_t;
urio_future_t *urio__future_new_ext(urio_loop_t *loop, size_t ext, const urio__future_ops_t *ops);
/* The same from any thread (no creation stack): for run_coroutine_threadsafe. */
urio_future_t *urio__future_new_foreign(urio_loop_t *loop, size_t ext, const urio__future_ops_t *ops);
void *urio__future_ext(urio_future_t *f);
/* Gives f a creation stack (urio__malloc'd; f frees it). */
void urio__future_capture_stack(urio_future_t *f, urio__stack_t *st);
const urio__future_ops_t *urio__future_ops(const urio_future_t *f);
const urio__stack_t *urio__future_stack(const urio_future_t *f);
/* Cancels f now, bypassing its kind's cancel (a task ending cancelled). */
void urio__future_cancel_now(urio_future_t *f);
const char *urio__future_state_name(const urio_future_t *f);

/*
 * future.c: a hook told synchronously, on the loop thread, when a future is
 * cancelled (an executor's job that must not start; a task's pending op).
 */
typedef void (*urio__cancel_hook_fn)(void *arg);
void urio__future_set_cancel_hook(urio_future_t *f, urio__cancel_hook_fn fn, void *arg);
/* task.c: at close, reports never-awaited coroutines and pending tasks, frees them. */
void urio__tasks_close(urio_loop_t *loop);
/* task.c: releases a dropped task step's reference; false if fn is not a step. */
bool urio__task_step_dropped(urio_callback_fn fn, void *arg);
/* task.c: names a task for the slow-callback report: "<Task 'fn' created at file.c:42>". */
void urio__task_describe_short(const struct urio__task *t, char *buf, size_t n);
/* thread_pool.c: hands the jobs submitted this turn to their pools. */
void urio__executor_flush(urio_loop_t *loop);
/* thread_pool.c: at close, cancels every job of the loop still in a pool. */
void urio__executor_loop_closing(urio_loop_t *loop);
/* thread_pool.c: true on one of ex's worker threads. */
bool urio__executor_is_worker(const urio_executor_t *ex);
/* future.c: the runner's site marks its FIFO entries; close releases them. */
extern const urio_site_t urio__future_runner_site;
void urio__future_runner_dropped(void *arg);
/* future.c: "<Future pending>", "<Future finished error=EIO>" ... into buf. */
const char *urio__future_describe(const urio_future_t *f, char *buf, size_t n);

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
