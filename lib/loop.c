/*
 * loop.c — the loop: its turn, its life (new, run, stop, close) and the
 * subsystems that plug into it (the exception handler is exception.c).
 *
 * The turn (docs/loop.md) is the list of urio_loop_run_forever's phases:
 *   1. decide how long the kernel may block: not at all if anything is
 *      ready, else until the earliest timer, else until woken;
 *   2. one io_uring_enter that submits and waits — skipped while ready work
 *      keeps coming and nothing needs submitting, but never for more than
 *      URIO__ENTER_EVERY_CALLBACKS callbacks or URIO__ENTER_EVERY_NS;
 *   3. reap completions (ops complete futures or schedule callbacks);
 *   4. drain the cross-thread inbox;
 *   5. move due timers to the ready FIFO;
 *   6. run exactly the callbacks that were ready when this step began;
 *   7. the step_end hooks of the subsystems that asked for them.
 * The loop knows the core (ready.c, timer.c, ring.c, inbox.c) and nothing
 * above it: tasks, executors and I/O register as subsystems (loop.h).
 */
#include "loop.h"

#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

_Thread_local char urio__tls_token __attribute__((tls_model("initial-exec")));
_Thread_local urio_loop_t *urio__tls_loop __attribute__((tls_model("initial-exec")));

/*
 * The loops not yet closed, for the "unclosed event loop" warning at exit.
 * The list is the one piece of global state: a loop is otherwise its own.
 */
static pthread_mutex_t g_open_mu = PTHREAD_MUTEX_INITIALIZER;
static urio_loop_t *g_open;         /* guarded by g_open_mu */
static uint32_t g_open_gen;         /* guarded by g_open_mu: bumped when a child drops the list */

static void open_list_add(urio_loop_t *loop)
{
    pthread_mutex_lock(&g_open_mu);
    loop->open_gen = g_open_gen;
    loop->next_open = g_open;
    if (g_open)
        g_open->prev_open = loop;
    g_open = loop;
    pthread_mutex_unlock(&g_open_mu);
}

static void open_list_remove(urio_loop_t *loop)
{
    pthread_mutex_lock(&g_open_mu);
    if (loop->open_gen == g_open_gen) {     /* else on a list a forked child dropped */
        if (loop->prev_open)
            loop->prev_open->next_open = loop->next_open;
        else
            g_open = loop->next_open;
        if (loop->next_open)
            loop->next_open->prev_open = loop->prev_open;
        loop->next_open = loop->prev_open = NULL;
    }
    pthread_mutex_unlock(&g_open_mu);
    urio__free(loop->created);      /* only the unclosed warning wanted it */
    loop->created = NULL;
}

void urio__loop_foreach_open(void (*fn)(urio_loop_t *loop, void *arg), void *arg)
{
    pthread_mutex_lock(&g_open_mu);
    for (urio_loop_t *l = g_open; l != NULL; l = l->next_open)
        if (!urio__loop_inherited(l))
            fn(l, arg);
    pthread_mutex_unlock(&g_open_mu);
}

/* asyncio's ResourceWarning for a loop never closed, in debug mode, at exit. */
__attribute__((destructor)) static void warn_unclosed_loops(void)
{
    pthread_mutex_lock(&g_open_mu);
    for (urio_loop_t *l = g_open; l != NULL; l = l->next_open)
        if (l->debug && !urio__loop_inherited(l)) {
            char *tb = l->created ? urio__backtrace_format(l->created, "Loop created at (most "
                                                           "recent call last):")
                                  : NULL;
            urio__log(URIO_LOG_WARNING, "unclosed event loop <urio_loop %p running=%s>%s%s",
                      (void *)l, l->running ? "true" : "false", tb ? "\n" : "", tb ? tb : "");
            urio__free(tb);
        }
    pthread_mutex_unlock(&g_open_mu);
}

/* ------------------------------------------------------------------ */
/* fork                                                                 */

atomic_uint urio__fork_gen;

/*
 * In a child of fork(): the calling thread is the only one, and the loops
 * it inherited belong to the parent (their rings are not even mapped here:
 * they are marked dontfork).  The thread no longer runs any of them, so it
 * can make and run loops of its own.  Nothing else of the parent's is
 * touched: its threads' locks may have been held at the fork.
 */
static void fork_child(void)
{
    atomic_fetch_add(&urio__fork_gen, 1);
    urio__tls_loop = NULL;
}

/*
 * The open-loop list's lock was held by another thread at the fork: the
 * list may be half-updated.  The child starts a new one; loops on the old
 * (the parent's) are never unlinked from it (open_gen tells them apart).
 */
static void open_after_fork(bool held)
{
    if (held) {
        g_open = NULL;
        g_open_gen++;
    }
}

__attribute__((constructor)) static void fork_handlers(void)
{
    pthread_atfork(NULL, NULL, fork_child);
    urio__fork_lock_add("open loops", &g_open_mu, open_after_fork);
}

__attribute__((cold, noinline)) void urio__loop_closed_error(const char *fn)
{
    urio__log(URIO_LOG_ERROR, "%s(): Event loop is closed", fn);
}

bool urio__loop_refuse_inherited(const urio_loop_t *loop, const char *fn)
{
    if (URIO_LIKELY(!urio__loop_inherited(loop)))
        return false;
    urio__log(URIO_LOG_ERROR, "%s(): this event loop was created before fork() and belongs "
              "to the parent process; the child can only close it (urio_loop_close), and "
              "make a loop of its own", fn);
    return true;
}

/*
 * Closing an inherited loop in a child: only what is the child's own goes.
 * The ring's and eventfd's descriptors are closed (the parent keeps its
 * own), memory of the core is freed; no hook runs, no kernel state is
 * touched (enabling or entering the ring would take it from the parent), and
 * what the parent's threads may hold (subsystems' state) is left alone.
 */
static int close_inherited(urio_loop_t *loop)
{
    loop->closing = true;
    open_list_remove(loop);
    close(loop->ring.uring.ring_fd);
    urio__free(loop->ring.ops);
    urio__inbox_free(loop);
    urio__timers_free(&loop->timers);
    urio__ready_free(&loop->ready);
    loop->closed = true;
    urio__loop_unref(loop);     /* futures the child holds keep the memory, as usual */
    return 0;
}

/* ------------------------------------------------------------------ */
/* Threads                                                              */

__attribute__((cold, noinline)) void urio__loop_wrong_thread(const char *fn)
{
    urio__log(URIO_LOG_ERROR,
              "%s(): Non-thread-safe operation invoked on an event loop other than the "
              "current one", fn);
}

bool urio__loop_progresses_only_here(const urio_loop_t *loop)
{
    const void *me = urio__thread_token();
    const void *owner = atomic_load_explicit(&loop->owner, memory_order_acquire);
    if (owner != NULL)
        return owner == me;
    return atomic_load(&loop->bound) && atomic_load(&loop->home) == me;
}

bool urio__loop_is_mine(const urio_loop_t *loop)
{
    const void *me = urio__thread_token();
    const void *owner = atomic_load_explicit(&loop->owner, memory_order_acquire);
    return owner != NULL ? owner == me : atomic_load(&loop->home) == me;
}

/* ------------------------------------------------------------------ */
/* Subsystems                                                           */

int urio__loop_register(urio_loop_t *loop, const urio__subsystem_t *ss, void *state)
{
    if (loop->closing)
        return -ESHUTDOWN;
    if (loop->nsubs == URIO__MAX_SUBSYSTEMS)
        return -ENOSPC;
    URIO_ASSERT(urio__loop_state(loop, ss) == NULL);
    uint32_t i = loop->nsubs++;
    loop->subs[i].ss = ss;
    loop->subs[i].state = state;
    return (int)i;
}

/* Calls the flagged hooks (step_end or before_sleep), clearing the flags first. */
__attribute__((noinline)) static void run_flagged(urio_loop_t *loop, uint32_t *flags,
                                                  size_t hook_offset)
{
    uint32_t f = *flags;
    *flags = 0;
    while (f) {
        uint32_t i = (uint32_t)__builtin_ctz(f);
        f &= f - 1;
        void (*hook)(urio_loop_t *, void *);
        memcpy(&hook, (const char *)loop->subs[i].ss + hook_offset, sizeof hook);
        if (hook)
            hook(loop, loop->subs[i].state);
    }
}

/* Close-time hooks: in reverse order of registration. */
static void run_close_hooks(urio_loop_t *loop, size_t hook_offset)
{
    for (uint32_t i = loop->nsubs; i-- > 0;) {
        void (*hook)(urio_loop_t *, void *);
        memcpy(&hook, (const char *)loop->subs[i].ss + hook_offset, sizeof hook);
        if (hook)
            hook(loop, loop->subs[i].state);
    }
}

#define HOOK(name) offsetof(urio__subsystem_t, name)

/* ------------------------------------------------------------------ */
/* The turn                                                             */

/*
 * Pops the next ready entry: its callback (NULL if it was cancelled), its
 * argument in *arg.  The fields are read from the ring in place (no copy of
 * the entry): the callback may grow the FIFO, so nothing of the entry is
 * used after it is called.  A due timer's slot is released here: its handle
 * is spent.
 */
static inline urio_callback_fn ready_pop(urio_loop_t *loop, void **arg,
                                         const urio_site_t **site)
{
    urio__ready_fifo_t *q = &loop->ready;
    const struct urio__ready *e = &q->e[q->head++ & q->mask];
    urio_callback_fn fn = e->fn;
    *arg = e->arg;
    if (site)
        *site = e->site;
    if (URIO_UNLIKELY(e->key > URIO__READY_INBOX) &&
        !urio__timer_take_due(&loop->timers, e->key))
        return NULL;        /* a timer cancelled after it came due */
    return fn;
}

/* Runs n ready callbacks.  The release path: no clock read. */
static void run_ready(urio_loop_t *loop, uint32_t n)
{
    for (uint32_t k = 0; k < n; k++) {
        void *arg;
        urio_callback_fn fn = ready_pop(loop, &arg, NULL);
        if (fn)
            fn(arg);
    }
}

#if URIO_DEBUG_CHECKS
static void log_slow_callback(urio_loop_t *loop, urio_callback_fn fn, const urio_site_t *site,
                              uint64_t took)
{
    char desc[256], handle[300];
    if (loop->attrib_describe != NULL) {
        /* The callback worked for something else (a task's step): name that. */
        loop->attrib_describe(loop->attrib_obj, handle, sizeof handle);
    } else {
        urio__describe_callback((void (*)(void))fn, site, desc, sizeof desc);
        snprintf(handle, sizeof handle, "<Handle %s>", desc);
    }
    urio__log(URIO_LOG_WARNING, "Executing %s took %.3f seconds", handle, (double)took / 1e9);
}

/* Runs n ready callbacks, timing each against the slow-callback duration. */
static void run_ready_debug(urio_loop_t *loop, uint32_t n)
{
    /*
     * One cycle-counter read per callback: each callback's end is the next
     * one's start, also across steps while the loop stays out of the kernel
     * (what runs between, the turn's bookkeeping, is a few ns).
     */
    uint64_t t0 = loop->debug_ticks ? loop->debug_ticks : urio__ticks();
    loop->timing = true;
    for (uint32_t k = 0; k < n; k++) {
        void *arg;
        const urio_site_t *site;
        urio_callback_fn fn = ready_pop(loop, &arg, &site);
        if (!fn)
            continue;
        loop->attrib_describe = NULL;
        fn(arg);
        uint64_t t1 = urio__ticks();
        uint64_t took = urio__ticks_ns(t1 - t0);
        t0 = t1;
        loop->callback_hist[loop->callback_pending]++;      /* the previous one's: see loop.h */
        loop->callback_pending = 1 + urio__stats_bucket(took);
        if (took >= loop->slow_ns) {
            loop->slow_callbacks++;
            log_slow_callback(loop, fn, site, took);
            t0 = urio__ticks();     /* the report's own time is nobody's */
        }
        if (loop->attrib_release != NULL) {
            /* The report is written: let go of what the callback worked for. */
            void (*release)(const void *) = loop->attrib_release;
            loop->attrib_release = NULL;
            loop->attrib_describe = NULL;
            release(loop->attrib_obj);
        }
    }
    loop->timing = false;
    loop->debug_ticks = t0;
}
#endif

/*
 * Ready work is waiting: enter the kernel only if something must be
 * submitted, or ready work has kept the loop out of it for too long.  The
 * common answer ("no") costs two compares; the bounds are checked, with a
 * clock read, only every URIO__CLOCK_EVERY_CALLBACKS callbacks.
 */
__attribute__((noinline)) static bool enter_due(urio_loop_t *loop)
{
    if (loop->cbs_since_enter >= URIO__ENTER_EVERY_CALLBACKS)
        return true;
    loop->cbs_next_check = loop->cbs_since_enter + URIO__CLOCK_EVERY_CALLBACKS;
    return urio__now() - loop->last_enter_ns >= URIO__ENTER_EVERY_NS;
}

static inline bool must_enter(urio_loop_t *loop)
{
    if (loop->ring.sq_pending)
        return true;
    if (URIO_LIKELY(loop->cbs_since_enter < loop->cbs_next_check))
        return false;
    return enter_due(loop);
}

static void log_poll(urio_loop_t *loop, int64_t wait_ns, uint64_t took)
{
    unsigned events = loop->ring.last_reaped;
    int level = took >= 1000000000u ? URIO_LOG_INFO : URIO_LOG_DEBUG;
    if (!urio__log_enabled(level))
        return;
    if (wait_ns < 0)
        urio__log(level, "poll took %.3f ms: %u events", (double)took / 1e6, events);
    else if (events)
        urio__log(level, "poll %.3f ms took %.3f ms: %u events", (double)wait_ns / 1e6,
                  (double)took / 1e6, events);
    else if (took >= 1000000000u)
        urio__log(level, "poll %.3f ms took %.3f ms: timeout", (double)wait_ns / 1e6,
                  (double)took / 1e6);
}

static inline bool has_ready_work(urio_loop_t *loop)
{
    return urio__ready_count(&loop->ready) != 0 || loop->stopping ||
           urio__inbox_pending(&loop->inbox);
}

/* 1. How long may the kernel block?  0: not at all; -1: until woken. */
/*
 * A virtual clock may jump only when the loop would sleep for a timer and
 * nothing but a timer can wake it: no op in flight but the wake-up read,
 * no cross-thread call waiting, no subsystem with work out (executor jobs).
 */
static bool may_jump(urio_loop_t *loop)
{
    uint32_t own = loop->inbox.efd_op.state != URIO__OP_IDLE;
    if (loop->ring.inflight > own || urio__inbox_pending(&loop->inbox))
        return false;
    for (uint32_t i = 0; i < loop->nsubs; i++) {
        const urio__subsystem_t *ss = loop->subs[i].ss;
        if (ss->alive && ss->alive(loop, loop->subs[i].state))
            return false;
    }
    return true;
}

static inline int64_t how_long_to_block(urio_loop_t *loop)
{
    if (has_ready_work(loop))
        return 0;
    if (URIO_UNLIKELY(loop->sleep_flags)) {
        run_flagged(loop, &loop->sleep_flags, HOOK(before_sleep));
        if (has_ready_work(loop))
            return 0;
    }
    if (loop->timers.count == 0)
        return -1;
    /* Until the timers' slack runs out: timers due close together share a wake-up. */
    uint64_t until = urio__timer_wake(&loop->timers);
    if (until == UINT64_MAX)
        return -1;
    uint64_t now = urio__loop_now(loop);
    if (until <= now)
        return 0;
    if (URIO_UNLIKELY(loop->virtual_clock) && may_jump(loop)) {
        /* Straight to the earliest deadline (not its slack's end): on time, exactly. */
        uint64_t next = urio__timer_next(&loop->timers);
        if (next > now && next != UINT64_MAX)
            atomic_fetch_add_explicit(&loop->clock_offset, next - now, memory_order_relaxed);
        return 0;
    }
    loop->wake_deadline = until;    /* for the lag histogram */
    return until - now > INT64_MAX ? -1 : (int64_t)(until - now);
}

/* 2. Submits and blocks for at most wait_ns (-1: until woken), in one system call. */
static int block_in_kernel(urio_loop_t *loop, int64_t wait, uint64_t *t0)
{
    /* Without the armed read a producer could not wake us: sleep 1 ms at most. */
    if (!urio__inbox_armed(loop) && (wait < 0 || wait > 1000000))
        wait = 1000000;
    if (!urio__inbox_sleep_begin(loop))
        wait = 0;           /* a cross-thread call came in first: no sleep */
    *t0 = urio__now();      /* one clock read per wait, for the idle time (and debug's poll log) */
    int ret = urio__ring_enter(&loop->ring, wait);
    urio__inbox_sleep_end(&loop->inbox);
    return ret;
}

/* 5. Due timers to the FIFO; after a wake-up for a timer, how late it came. */
static void fire_timers(urio_loop_t *loop)
{
    uint64_t now = urio__loop_now(loop);
    uint32_t fired = urio__timer_fire(loop, now);
    loop->timers_fired += fired;
    if (loop->wake_deadline != 0 && fired != 0) {
        uint64_t late = now > loop->wake_deadline ? now - loop->wake_deadline : 0;
        loop->lag_hist[urio__stats_bucket(late)]++;
        loop->wake_deadline = 0;
    }
}

/* 6. Runs what is ready now, and only that. */
static inline void run_step(urio_loop_t *loop)
{
    uint32_t n = urio__ready_count(&loop->ready);
#if URIO_DEBUG_CHECKS
    if (loop->debug)
        run_ready_debug(loop, n);
    else
#endif
        run_ready(loop, n);
    loop->cbs_since_enter += n;
    loop->callbacks_run += n;
}

static int loop_turn(urio_loop_t *loop)
{
    urio__ring_t *r = &loop->ring;
    int64_t wait = how_long_to_block(loop);                 /* 1 */
    uint64_t t0 = 0;
    bool entered = true;
    int ret = 0;
    if (wait != 0)                                          /* 2 */
        ret = block_in_kernel(loop, wait, &t0);
    else if (must_enter(loop))
        ret = urio__ring_enter(r, 0);
    else
        entered = false;
    if (entered) {
        loop->debug_ticks = 0;      /* time in the kernel is no callback's */
        loop->cbs_since_enter = 0;
        loop->cbs_next_check = URIO__CLOCK_EVERY_CALLBACKS;
        loop->last_enter_ns = urio__now();
        if (t0)
            loop->idle_ns += loop->last_enter_ns - t0;
        /* The clock timers scheduled this step measure their delay from. */
        uint64_t now = loop->last_enter_ns +
                       atomic_load_explicit(&loop->clock_offset, memory_order_relaxed);
        if (now > loop->timers.now_cache)
            loop->timers.now_cache = now;
        if (URIO_UNLIKELY(ret < 0))
            return ret;
    }
    /* 3. Completions: without DEFER_TASKRUN the kernel posts them at any time. */
    if (entered || !r->defer_taskrun) {
        if (urio__ring_cq_pending(r))
            urio__ring_reap(r);
        else
            r->last_reaped = 0;
    }
    if (t0 && loop->debug)
        log_poll(loop, wait, urio__now() - t0);
    if (urio__inbox_pending(&loop->inbox))                  /* 4 */
        urio__inbox_drain(loop);
    if (loop->timers.count > 0)                             /* 5 */
        fire_timers(loop);
    run_step(loop);                                         /* 6 */
    atomic_store_explicit(&loop->progress,
                          atomic_load_explicit(&loop->progress, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (URIO_UNLIKELY(loop->step_end_flags)) {              /* 7 */
        run_flagged(loop, &loop->step_end_flags, HOOK(step_end));
        loop->debug_ticks = 0;      /* the hooks' time (threads started...) is no callback's */
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                           */

/*
 * Debug mode's stall watchdog threshold: ten times the slow-callback
 * duration, a second at least.  A slow callback is reported after it
 * returns anyway; the watchdog is for code that does not return, and taking
 * a stack interrupts what the loop thread is blocked in (a sleep inside the
 * callback returns early), so it must not fire on every slow callback.
 */
static uint64_t debug_stall_ns(const urio_loop_t *loop)
{
    uint64_t ns = loop->slow_ns > UINT64_MAX / 10 ? UINT64_MAX / 10 : loop->slow_ns * 10;
    return ns < 1000000000u ? 1000000000u : ns;
}

/* Debug mode switched on in a build that opted out of its machinery: say what is missing. */
static void warn_no_debug_checks(void)
{
#if !URIO_DEBUG_CHECKS
    urio__log(URIO_LOG_WARNING, "debug mode is on, but urio was built with "
              "-Ddebug_checks=false: slow callbacks are not reported and creation stacks "
              "are not captured; rebuild urio without that option to have them");
#endif
}

URIO_EXPORT int urio_loop_new(urio_loop_t **out, const urio_loop_opts_t *opts)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    unsigned entries = opts && opts->ring_entries ? opts->ring_entries : URIO_DEFAULT_RING_ENTRIES;
    if (entries > 32768)
        return -EINVAL;
    urio_loop_t *loop = urio__calloc(1, sizeof *loop);
    if (loop == NULL)
        return -ENOMEM;
    int debug = opts ? opts->debug : 0;
    loop->virtual_clock = opts && opts->virtual_clock;
    loop->debug = debug > 0 || (debug == 0 && urio__debug_default());
    if (loop->debug) {
        warn_no_debug_checks();
        urio__ticks_calibrate();
    }
    loop->slow_ns = URIO__SLOW_CALLBACK_NS;
    loop->timer_slack_ns = URIO__TIMER_SLACK_NS;
    loop->refs = 1;
    loop->fork_gen = atomic_load(&urio__fork_gen);
    static atomic_uint serials;
    do
        loop->serial = atomic_fetch_add_explicit(&serials, 1, memory_order_relaxed) + 1;
    while (loop->serial == 0);      /* after 2^32 loops: 0 is no loop's */
    loop->inbox.efd = -1;
    uint64_t now = urio__now();
    int ret = urio__ready_init(&loop->ready);
    if (ret < 0)
        goto fail_ready;
    ret = urio__timers_init(&loop->timers, now);
    if (ret < 0)
        goto fail_timers;
    ret = urio__ring_init(&loop->ring, entries);
    if (ret < 0)
        goto fail_ring;
    ret = urio__inbox_init(loop);
    if (ret < 0)
        goto fail_inbox;
    loop->last_enter_ns = now;
    atomic_store(&loop->home, urio__thread_token());
    if (loop->debug)
        urio__watchdog_set(loop, debug_stall_ns(loop));     /* best effort: debug mode works without */
#if URIO_DEBUG_CHECKS
    if (loop->debug && (loop->created = urio__malloc(sizeof *loop->created)) != NULL)
        urio__backtrace_capture(loop->created, 1, true);    /* from urio_loop_new's caller */
#endif
    open_list_add(loop);
    *out = loop;
    return 0;

fail_inbox:
    urio__ring_exit(&loop->ring);
fail_ring:
    urio__timers_free(&loop->timers);
fail_timers:
    urio__ready_free(&loop->ready);
fail_ready:
    urio__free(loop);
    return ret;
}

URIO_EXPORT int urio_loop_run_forever(urio_loop_t *loop)
{
    if (loop == NULL)
        return -EINVAL;
    if (urio__loop_refuse_inherited(loop, "urio_loop_run_forever"))
        return URIO_EFORKED;
    if (urio__loop_refuses(loop, "urio_loop_run_forever"))
        return -ESHUTDOWN;
    if (loop->running || urio__tls_loop != NULL) {
        urio__log(URIO_LOG_ERROR, "urio_loop_run_forever(): %s",
                  loop->running ? "This event loop is already running"
                                : "Cannot run the event loop while another loop is running");
        return -EBUSY;
    }
    for (uint32_t i = 0; i < loop->nsubs; i++) {
        const urio__subsystem_t *ss = loop->subs[i].ss;
        int ret = ss->may_run ? ss->may_run(loop, loop->subs[i].state) : 0;
        if (ret < 0)
            return ret;
    }
    int ret = urio__ring_bind(&loop->ring);
    if (ret < 0) {
        urio__log(URIO_LOG_ERROR, "urio_loop_run_forever(): this loop's ring belongs to the "
                  "thread that first ran it (IORING_SETUP_SINGLE_ISSUER); run and close the "
                  "loop on that thread");
        return ret;
    }
    loop->running = true;
    loop->run_started = urio__now();
    atomic_store(&loop->owner_thread, (unsigned long)pthread_self());
    urio__tls_loop = loop;
    atomic_store(&loop->home, urio__thread_token());
    atomic_store(&loop->bound, loop->ring.single_issuer);
    atomic_store_explicit(&loop->owner, urio__thread_token(), memory_order_release);
    for (;;) {
        ret = loop_turn(loop);
        if (ret < 0) {
            urio__log(URIO_LOG_CRITICAL, "urio_loop_run_forever(): io_uring_enter failed: "
                      "%s (%s); the loop stops", urio_strerror_name(ret), urio_strerror(ret));
            break;
        }
        if (loop->stopping)
            break;
    }
    loop->stopping = false;
    loop->running = false;
    loop->debug_ticks = 0;          /* time between runs is no callback's */
    loop->run_ns += urio__now() - loop->run_started;
    urio__tls_loop = NULL;
    /*
     * Last: once owner reads NULL another thread may close (and free) the
     * loop, so nothing of it may be touched after this store.
     */
    atomic_store_explicit(&loop->owner, NULL, memory_order_release);
    return ret;
}

URIO_EXPORT bool urio_loop_alive(const urio_loop_t *loop)
{
    if (loop == NULL || loop->closing)
        return false;
    if (urio__ready_count(&loop->ready) > 0 || urio__inbox_pending((urio__inbox_t *)&loop->inbox))
        return true;
    if (loop->timers.count > loop->timers.stale)
        return true;
    /* Ops in flight, but for the loop's own wake-up read. */
    uint32_t own = loop->inbox.efd_op.state != URIO__OP_IDLE;
    if (loop->ring.inflight > own)
        return true;
    for (uint32_t i = 0; i < loop->nsubs; i++) {
        const urio__subsystem_t *ss = loop->subs[i].ss;
        if (ss->alive && ss->alive(loop, loop->subs[i].state))
            return true;
    }
    return false;
}

URIO_EXPORT int urio_loop_stats(urio_loop_t *loop, urio_loop_stats_t *st)
{
    if (loop == NULL || st == NULL)
        return -EINVAL;
    if (!urio__loop_check_thread(loop, "urio_loop_stats"))
        return -EPERM;
    memset(st, 0, sizeof *st);
    st->turns = atomic_load_explicit(&loop->progress, memory_order_relaxed);
    st->callbacks = loop->callbacks_run;
    st->timers_fired = loop->timers_fired;
    st->enters = loop->ring.enters;
    st->completions = loop->ring.cqes;
    st->ops_in_flight = loop->ring.inflight;
    uint64_t run = loop->run_ns + (loop->running ? urio__now() - loop->run_started : 0);
    st->idle_ns = loop->idle_ns;
    st->busy_ns = run > loop->idle_ns ? run - loop->idle_ns : 0;
    st->slow_callbacks = loop->slow_callbacks;
    memcpy(st->lag_hist, loop->lag_hist, sizeof st->lag_hist);
    memcpy(st->callback_hist, loop->callback_hist + 1, sizeof st->callback_hist);
    if (loop->callback_pending != 0)
        st->callback_hist[loop->callback_pending - 1]++;
    for (uint32_t i = 0; i < loop->nsubs; i++) {
        const urio__subsystem_t *ss = loop->subs[i].ss;
        if (ss->stats)
            ss->stats(loop, loop->subs[i].state, st);
    }
    return 0;
}

URIO_EXPORT int64_t urio_loop_next_timeout(urio_loop_t *loop)
{
    if (loop == NULL || !urio__loop_check_thread(loop, "urio_loop_next_timeout"))
        return 0;
    if (has_ready_work(loop))
        return 0;
    /* Only cancelled timers left: nothing is scheduled. */
    uint64_t next = loop->timers.count > loop->timers.stale ? urio__timer_next(&loop->timers)
                                                            : UINT64_MAX;
    if (next == UINT64_MAX)
        return -1;
    uint64_t now = urio__loop_now(loop);
    if (next <= now)
        return 0;
    return next - now > INT64_MAX ? INT64_MAX : (int64_t)(next - now);
}

static void stop_on_loop(void *arg)
{
    ((urio_loop_t *)arg)->stopping = true;
}

URIO_EXPORT void urio_loop_stop(urio_loop_t *loop)
{
    if (loop == NULL)
        return;
    if (urio__loop_is_mine(loop)) {
        loop->stopping = true;
        return;
    }
    /*
     * Another thread (a control thread, a signal-handling thread): the stop
     * travels through the inbox like any cross-thread call, so it is ordered
     * after the calls this thread made before, and wakes the loop.
     */
    int ret = urio_call_soon_threadsafe(loop, stop_on_loop, loop);
    if (ret < 0 && ret != -ESHUTDOWN)
        urio__log(URIO_LOG_ERROR, "urio_loop_stop(): could not reach the loop from this "
                  "thread: %s", urio_strerror(ret));
}

URIO_EXPORT urio_loop_t *urio_loop_current(void)
{
    return urio__tls_loop;
}

URIO_EXPORT uint64_t urio_loop_time(const urio_loop_t *loop)
{
    return loop != NULL ? urio__loop_now(loop) : urio__now();
}

URIO_EXPORT void urio_loop_set_debug(urio_loop_t *loop, bool on)
{
    if (loop == NULL || !urio__loop_check_thread(loop, "urio_loop_set_debug"))
        return;
    if (on && !loop->debug) {
        warn_no_debug_checks();
        urio__ticks_calibrate();
    }
    loop->debug = on;
    loop->debug_ticks = 0;          /* time before now is no callback's */
    if (!loop->stall_set)
        urio__watchdog_set(loop, on ? debug_stall_ns(loop) : 0);   /* debug mode's default */
}

URIO_EXPORT int urio_loop_set_stall_watchdog(urio_loop_t *loop, uint64_t threshold_ns)
{
    if (loop == NULL)
        return -EINVAL;
    if (!urio__loop_check_thread(loop, "urio_loop_set_stall_watchdog"))
        return -EPERM;
    if (urio__loop_refuses(loop, "urio_loop_set_stall_watchdog"))
        return -ESHUTDOWN;
    loop->stall_set = true;
    return urio__watchdog_set(loop, threshold_ns);
}

URIO_EXPORT bool urio_loop_get_debug(const urio_loop_t *loop)
{
    return loop != NULL && loop->debug;
}

URIO_EXPORT void urio_loop_set_slow_callback_duration(urio_loop_t *loop, uint64_t ns)
{
    if (loop == NULL || !urio__loop_check_thread(loop, "urio_loop_set_slow_callback_duration"))
        return;
    loop->slow_ns = ns;
    if (loop->debug && !loop->stall_set)
        urio__watchdog_set(loop, debug_stall_ns(loop));     /* debug mode's follows it */
}

URIO_EXPORT uint64_t urio_loop_get_slow_callback_duration(const urio_loop_t *loop)
{
    return loop ? loop->slow_ns : 0;
}

URIO_EXPORT void urio_loop_set_timer_slack(urio_loop_t *loop, uint64_t ns)
{
    if (loop != NULL && urio__loop_check_thread(loop, "urio_loop_set_timer_slack"))
        loop->timer_slack_ns = ns > 1000000000u ? 1000000000u : ns;
}

URIO_EXPORT uint64_t urio_loop_get_timer_slack(const urio_loop_t *loop)
{
    return loop ? loop->timer_slack_ns : 0;
}

void urio__loop_ref(urio_loop_t *loop)
{
    atomic_fetch_add_explicit(&loop->refs, 1, memory_order_relaxed);
}

/*
 * Debug mode keeps the memory of a few closed loops after their last
 * reference: a program that uses one after urio_loop_close gets "Event loop
 * is closed" (every call checks) instead of a silent use of freed memory.
 * The oldest goes for good; all go at exit.
 */
static void loop_free(urio_loop_t *loop)
{
    if (loop->debug && loop->closed)
        urio__quarantine(loop);     /* freed, as far as urio_mem_stats goes */
    else
        urio__free(loop);
}

void urio__loop_unref(urio_loop_t *loop)
{
    /* acq_rel: the last one out sees every other thread's last use. */
    if (atomic_fetch_sub_explicit(&loop->refs, 1, memory_order_acq_rel) == 1)
        loop_free(loop);
}

URIO_EXPORT urio_loop_t *urio_loop_ref(urio_loop_t *loop)
{
    if (loop != NULL)
        urio__loop_ref(loop);
    return loop;
}

URIO_EXPORT void urio_loop_unref(urio_loop_t *loop)
{
    if (loop != NULL)
        urio__loop_unref(loop);
}

/*
 * Close, in the order docs/loop.md gives: subsystems stop producing work;
 * the calls the inbox accepted run (completions already on their way land
 * with their real outcome); subsystems cancel what is still out; the ring is
 * drained (every op's final CQE, so no buffer is freed under the kernel);
 * the inbox closes; subsystems report and free; what is left in the FIFO is
 * dropped; the core is freed.
 */
URIO_EXPORT int urio_loop_close(urio_loop_t *loop)
{
    if (loop == NULL)
        return -EINVAL;
    if (urio__loop_inherited(loop))
        return loop->closing ? 0 : close_inherited(loop);
    /* owner, not running: close may come from another thread, and owner is atomic. */
    if (atomic_load_explicit(&loop->owner, memory_order_acquire) != NULL)
        return -EBUSY;
    if (loop->closing)
        return 0;
    for (uint32_t i = 0; i < loop->nsubs; i++) {
        const urio__subsystem_t *ss = loop->subs[i].ss;
        int ret = ss->may_close ? ss->may_close(loop, loop->subs[i].state) : 0;
        if (ret < 0)
            return ret;
    }
    bool issuer = urio__ring_bind(&loop->ring) == 0;
    loop->closing = true;
    open_list_remove(loop);
    run_close_hooks(loop, HOOK(shutdown));
    urio__inbox_run_accepted(loop);
    run_close_hooks(loop, HOOK(close));
    if (issuer)
        urio__ring_drain(&loop->ring);
    else
        urio__ring_abandon(&loop->ring);
    urio__inbox_close(loop);
    run_close_hooks(loop, HOOK(release));
    loop->nsubs = 0;

    uint32_t dropped = urio__ready_drop_all(loop);
    uint32_t timers = urio__timer_count_live(&loop->timers);
    if (loop->debug && (dropped || timers))
        urio__log(URIO_LOG_DEBUG, "urio_loop_close(): dropped %u pending callbacks and %u "
                  "timers", dropped, timers);

    if (issuer)
        urio__ring_exit(&loop->ring);
    urio__inbox_free(loop);
    urio__timers_free(&loop->timers);
    urio__ready_free(&loop->ready);
    loop->closed = true;
    /* Threads still waiting on a future of this loop that nobody completed: wake them. */
    atomic_store_explicit(&loop->closed_word, 1, memory_order_seq_cst);
    syscall(SYS_futex, &loop->closed_word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    urio__loop_unref(loop);
    return 0;
}
