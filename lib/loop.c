/*
 * loop.c — the loop: its turn, its life (new, run, stop, close), the
 * subsystems that plug into it, and the exception handler.
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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Thread_local char urio__tls_token __attribute__((tls_model("initial-exec")));
_Thread_local urio_loop_t *urio__tls_loop __attribute__((tls_model("initial-exec")));

/*
 * The loops not yet closed, for the "unclosed event loop" warning at exit.
 * The list is the one piece of global state: a loop is otherwise its own.
 */
static pthread_mutex_t g_open_mu = PTHREAD_MUTEX_INITIALIZER;
static urio_loop_t *g_open;         /* guarded by g_open_mu */

static void open_list_add(urio_loop_t *loop)
{
    pthread_mutex_lock(&g_open_mu);
    loop->next_open = g_open;
    if (g_open)
        g_open->prev_open = loop;
    g_open = loop;
    pthread_mutex_unlock(&g_open_mu);
}

static void open_list_remove(urio_loop_t *loop)
{
    pthread_mutex_lock(&g_open_mu);
    if (loop->prev_open)
        loop->prev_open->next_open = loop->next_open;
    else
        g_open = loop->next_open;
    if (loop->next_open)
        loop->next_open->prev_open = loop->prev_open;
    loop->next_open = loop->prev_open = NULL;
    pthread_mutex_unlock(&g_open_mu);
}

/* asyncio's ResourceWarning for a loop never closed, in debug mode, at exit. */
__attribute__((destructor)) static void warn_unclosed_loops(void)
{
    pthread_mutex_lock(&g_open_mu);
    for (urio_loop_t *l = g_open; l != NULL; l = l->next_open)
        if (l->debug)
            urio__log(URIO_LOG_WARNING, "unclosed event loop <urio_loop %p running=%s>",
                      (void *)l, l->running ? "true" : "false");
    pthread_mutex_unlock(&g_open_mu);
}

/* ------------------------------------------------------------------ */
/* Threads                                                              */

__attribute__((cold, noinline)) void urio__loop_wrong_thread(const char *fn)
{
    urio__log(URIO_LOG_ERROR,
              "%s(): Non-thread-safe operation invoked on an event loop other than the "
              "current one", fn);
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
    for (uint32_t k = 0; k < n; k++) {
        void *arg;
        const urio_site_t *site;
        urio_callback_fn fn = ready_pop(loop, &arg, &site);
        if (!fn)
            continue;
        loop->attrib_describe = NULL;
        uint64_t t0 = urio__now();
        fn(arg);
        uint64_t took = urio__now() - t0;
        if (took >= loop->slow_ns)
            log_slow_callback(loop, fn, site, took);
    }
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
    uint64_t now = urio__now();
    if (until <= now)
        return 0;
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
    if (loop->debug && wait != 0)
        *t0 = urio__now();
    int ret = urio__ring_enter(&loop->ring, wait);
    urio__inbox_sleep_end(&loop->inbox);
    return ret;
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
        loop->cbs_since_enter = 0;
        loop->cbs_next_check = URIO__CLOCK_EVERY_CALLBACKS;
        loop->last_enter_ns = urio__now();
        /* The clock timers scheduled this step measure their delay from. */
        if (loop->last_enter_ns > loop->timers.now_cache)
            loop->timers.now_cache = loop->last_enter_ns;
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
    if (t0)
        log_poll(loop, wait, urio__now() - t0);
    if (urio__inbox_pending(&loop->inbox))                  /* 4 */
        urio__inbox_drain(loop);
    if (loop->timers.count > 0)                             /* 5 */
        urio__timer_fire(loop, urio__now());
    run_step(loop);                                         /* 6 */
    if (URIO_UNLIKELY(loop->step_end_flags))                /* 7 */
        run_flagged(loop, &loop->step_end_flags, HOOK(step_end));
    return 0;
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                           */

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
    loop->debug = debug > 0 || (debug == 0 && urio__debug_default());
    loop->slow_ns = URIO__SLOW_CALLBACK_NS;
    loop->timer_slack_ns = URIO__TIMER_SLACK_NS;
    loop->refs = 1;
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
    if (loop->closing)
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
    urio__tls_loop = loop;
    atomic_store(&loop->home, urio__thread_token());
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
    urio__tls_loop = NULL;
    /*
     * Last: once owner reads NULL another thread may close (and free) the
     * loop, so nothing of it may be touched after this store.
     */
    atomic_store_explicit(&loop->owner, NULL, memory_order_release);
    return ret;
}

URIO_EXPORT void urio_loop_stop(urio_loop_t *loop)
{
    if (loop == NULL || !urio__loop_check_thread(loop, "urio_loop_stop"))
        return;
    loop->stopping = true;
}

URIO_EXPORT urio_loop_t *urio_loop_current(void)
{
    return urio__tls_loop;
}

URIO_EXPORT uint64_t urio_loop_time(const urio_loop_t *loop)
{
    (void)loop;
    return urio__now();
}

URIO_EXPORT void urio_loop_set_debug(urio_loop_t *loop, bool on)
{
    if (loop == NULL || !urio__loop_check_thread(loop, "urio_loop_set_debug"))
        return;
#if !URIO_DEBUG_CHECKS
    if (on && !loop->debug)
        urio__log(URIO_LOG_DEBUG, "debug mode on, but this build has -Ddebug_checks=false: "
                  "slow callbacks and creation stacks are not tracked");
#endif
    loop->debug = on;
}

URIO_EXPORT bool urio_loop_get_debug(const urio_loop_t *loop)
{
    return loop != NULL && loop->debug;
}

URIO_EXPORT void urio_loop_set_slow_callback_duration(urio_loop_t *loop, uint64_t ns)
{
    if (loop != NULL && urio__loop_check_thread(loop, "urio_loop_set_slow_callback_duration"))
        loop->slow_ns = ns;
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

void urio__loop_unref(urio_loop_t *loop)
{
    /* acq_rel: the last one out sees every other thread's last use. */
    if (atomic_fetch_sub_explicit(&loop->refs, 1, memory_order_acq_rel) == 1)
        urio__free(loop);
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
    urio__loop_unref(loop);
    return 0;
}
