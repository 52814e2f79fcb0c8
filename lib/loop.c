/*
 * loop.c — the loop: its turn, the ready FIFO, handles, run/stop/close.
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
 *   6. run exactly the callbacks that were ready when this step began.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local urio_loop_t *tls_current __attribute__((tls_model("initial-exec")));

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
/* The ready FIFO                                                       */

static int ready_grow(urio_loop_t *loop)
{
    uint64_t cap = loop->ready_mask + 1, ncap = cap * 2;
    if (ncap > (1ull << 31))
        return -ENOMEM;
    struct urio__ready *r = urio__malloc((size_t)ncap * sizeof *r);
    if (r == NULL)
        return -ENOMEM;
    /* Entry s moves from s & mask to s & (2 * mask + 1): handles stay valid. */
    for (uint64_t q = loop->ready_head; q != loop->ready_tail; q++)
        r[q & (ncap - 1)] = loop->ready[q & loop->ready_mask];
    urio__free(loop->ready);
    loop->ready = r;
    loop->ready_mask = ncap - 1;
    return 0;
}

/*
 * The FIFO must grow first: out of line, as a tail call from the fast path,
 * so the fast path keeps nothing live across a call (no registers to save).
 */
__attribute__((cold, noinline)) static uint64_t ready_push_slow(urio_loop_t *loop,
                                                                urio_callback_fn fn, void *arg,
                                                                const urio_site_t *site,
                                                                uint32_t slot1, uint32_t gen)
{
    if (ready_grow(loop) < 0)
        return 0;
    uint64_t q = loop->ready_tail++;
    loop->ready[q & loop->ready_mask] = (struct urio__ready){ fn, arg, site, slot1, gen };
    return q;
}

uint64_t urio__ready_push(urio_loop_t *loop, urio_callback_fn fn, void *arg,
                          const urio_site_t *site, uint32_t slot1, uint32_t gen)
{
    /* Leave the reserved room free. */
    uint32_t reserved = atomic_load_explicit(&loop->ready_reserved, memory_order_relaxed);
    if (URIO_UNLIKELY(loop->ready_tail - loop->ready_head + reserved > loop->ready_mask))
        return ready_push_slow(loop, fn, arg, site, slot1, gen);
    uint64_t q = loop->ready_tail++;
    loop->ready[q & loop->ready_mask] = (struct urio__ready){ fn, arg, site, slot1, gen };
    return q;
}

int urio__ready_reserve(urio_loop_t *loop)
{
    uint32_t reserved = atomic_load_explicit(&loop->ready_reserved, memory_order_relaxed);
    if (loop->ready_tail - loop->ready_head + reserved > loop->ready_mask &&
        ready_grow(loop) < 0)
        return -ENOMEM;
    atomic_fetch_add_explicit(&loop->ready_reserved, 1, memory_order_relaxed);
    return 0;
}

uint64_t urio__ready_push_reserved(urio_loop_t *loop, urio_callback_fn fn, void *arg,
                                   const urio_site_t *site)
{
    atomic_fetch_sub_explicit(&loop->ready_reserved, 1, memory_order_relaxed);
    uint64_t q = loop->ready_tail++;
    loop->ready[q & loop->ready_mask] = (struct urio__ready){ fn, arg, site, 0, 0 };
    return q;
}

/* A timer handle has 24 bits for the slot index (16M timers per loop). */
#define SLOT_BITS  24
#define SLOT_MASK  ((1ull << SLOT_BITS) - 1)

/* ------------------------------------------------------------------ */
/* Timers' slots                                                        */

static int slot_alloc(urio_loop_t *loop, urio_callback_fn fn, void *arg,
                      const urio_site_t *site, uint32_t *out)
{
    uint32_t i, gen;
    if (URIO_LIKELY(loop->nfree > 0)) {
        /* The stack holds the generation: allocating reads no cold slot. */
        struct urio__free_slot f = loop->free_slots[--loop->nfree];
        i = f.idx;
        gen = f.gen + 1;
    } else {
        if (loop->nslots == loop->cap_slots) {
            uint32_t cap = loop->cap_slots * 2;
            if (cap > (1u << SLOT_BITS) - 1)
                return -ENOMEM;     /* a handle has 24 bits for the slot */
            struct urio__slot *s = urio__realloc(loop->slots, (size_t)cap * sizeof *s);
            if (s == NULL)
                return -ENOMEM;
            loop->slots = s;
            struct urio__free_slot *f = urio__realloc(loop->free_slots, (size_t)cap * sizeof *f);
            if (f == NULL)
                return -ENOMEM;     /* slots grew, cap_slots did not: harmless */
            loop->free_slots = f;
            loop->cap_slots = cap;
        }
        i = loop->nslots++;
        gen = 1;
    }
    loop->slots[i] = (struct urio__slot){ fn, arg, site, gen, URIO__SLOT_WHEEL };
    *out = i;
    return 0;
}

void urio__slot_release(urio_loop_t *loop, uint32_t i)
{
    uint32_t gen = ++loop->slots[i].gen;    /* even: free */
    loop->free_slots[loop->nfree++] = (struct urio__free_slot){ i, gen };
}

/* ------------------------------------------------------------------ */
/* Handles                                                              */

/*
 * A handle's id: a call_soon's is its FIFO sequence number (bit 63 clear,
 * never 0: the FIFO starts at 1); a timer's is bit 63, the slot's whole
 * 32-bit generation and the slot index + 1 (24 bits).
 */
#define TIMER_BIT  (1ull << 63)

static inline urio_handle_t timer_handle(uint32_t slot, uint32_t gen)
{
    return (urio_handle_t){ TIMER_BIT | ((uint64_t)gen << SLOT_BITS) | (slot + 1ull) };
}

/* Out of line and cold: the scheduling fast paths then need few registers. */
__attribute__((cold, noinline)) static urio_handle_t fail_handle(int err)
{
    errno = -err;
    return (urio_handle_t){ 0 };
}

/* The FIFO is full: grow it (out of line), or fail with ENOMEM. */
__attribute__((cold, noinline)) static urio_handle_t call_soon_slow(urio_loop_t *loop,
                                                                   urio_callback_fn fn, void *arg,
                                                                   const urio_site_t *site)
{
    uint64_t q = ready_push_slow(loop, fn, arg, site, 0, 0);
    if (q == 0)
        return fail_handle(-ENOMEM);
    return (urio_handle_t){ q };
}

urio_handle_t urio__call_soon(urio_loop_t *loop, urio_callback_fn fn, void *arg,
                              const urio_site_t *site)
{
    if (URIO_UNLIKELY(loop->closing))
        return fail_handle(-ESHUTDOWN);
    /* urio__ready_push's fast path, here so that success needs no further test. */
    uint32_t reserved = atomic_load_explicit(&loop->ready_reserved, memory_order_relaxed);
    if (URIO_UNLIKELY(loop->ready_tail - loop->ready_head + reserved > loop->ready_mask))
        return call_soon_slow(loop, fn, arg, site);
    uint64_t q = loop->ready_tail++;
    loop->ready[q & loop->ready_mask] = (struct urio__ready){ fn, arg, site, 0, 0 };
    return (urio_handle_t){ q };
}

__attribute__((cold, noinline)) static bool wrong_thread(const char *fn)
{
    urio__log(URIO_LOG_ERROR,
              "%s(): Non-thread-safe operation invoked on an event loop other than the "
              "current one", fn);
    return false;
}

bool urio__loop_check_thread(const urio_loop_t *loop, const char *fn)
{
    const void *owner = atomic_load_explicit(&loop->owner, memory_order_relaxed);
    if (URIO_LIKELY(owner == NULL || owner == urio__thread_token()))
        return true;
    return wrong_thread(fn);
}

URIO_EXPORT urio_handle_t urio_call_soon_site(urio_loop_t *loop, urio_callback_fn fn, void *arg,
                                              const urio_site_t *site)
{
    if (URIO_UNLIKELY(loop == NULL || fn == NULL))
        return fail_handle(-EINVAL);
    if (URIO_UNLIKELY(!urio__loop_check_thread(loop, "urio_call_soon")))
        return fail_handle(-EPERM);
    return urio__call_soon(loop, fn, arg, site);
}

#undef urio_call_soon
URIO_EXPORT urio_handle_t urio_call_soon(urio_loop_t *loop, urio_callback_fn fn, void *arg)
{
    return urio_call_soon_site(loop, fn, arg, NULL);
}

static urio_handle_t call_at(urio_loop_t *loop, uint64_t when, urio_callback_fn fn, void *arg,
                             const urio_site_t *site, const char *name)
{
    if (URIO_UNLIKELY(loop == NULL || fn == NULL))
        return fail_handle(-EINVAL);
    if (URIO_UNLIKELY(!urio__loop_check_thread(loop, name)))
        return fail_handle(-EPERM);
    if (URIO_UNLIKELY(loop->closing))
        return fail_handle(-ESHUTDOWN);
    uint32_t slot;
    if (URIO_UNLIKELY(slot_alloc(loop, fn, arg, site, &slot) < 0))
        return fail_handle(-ENOMEM);
    uint32_t gen = loop->slots[slot].gen;
    if (URIO_UNLIKELY(urio__timer_push(loop, when, slot, gen) < 0)) {
        urio__slot_release(loop, slot);
        return fail_handle(-ENOMEM);
    }
    return timer_handle(slot, gen);
}

URIO_EXPORT urio_handle_t urio_call_at_site(urio_loop_t *loop, uint64_t when_ns,
                                            urio_callback_fn fn, void *arg,
                                            const urio_site_t *site)
{
    return call_at(loop, when_ns, fn, arg, site, "urio_call_at");
}

URIO_EXPORT urio_handle_t urio_call_later_site(urio_loop_t *loop, uint64_t delay_ns,
                                               urio_callback_fn fn, void *arg,
                                               const urio_site_t *site)
{
    uint64_t now = urio__now();
    uint64_t when = delay_ns > UINT64_MAX - now ? UINT64_MAX : now + delay_ns;
    if (loop != NULL && loop->owner == urio__thread_token())
        loop->now_cache = now;      /* a fresher start for the timer wheel */
    return call_at(loop, when, fn, arg, site, "urio_call_later");
}

#undef urio_call_at
URIO_EXPORT urio_handle_t urio_call_at(urio_loop_t *loop, uint64_t when_ns,
                                       urio_callback_fn fn, void *arg)
{
    return call_at(loop, when_ns, fn, arg, NULL, "urio_call_at");
}

#undef urio_call_later
URIO_EXPORT urio_handle_t urio_call_later(urio_loop_t *loop, uint64_t delay_ns,
                                          urio_callback_fn fn, void *arg)
{
    return urio_call_later_site(loop, delay_ns, fn, arg, NULL);
}

URIO_EXPORT bool urio_handle_cancel(urio_loop_t *loop, urio_handle_t h)
{
    if (loop == NULL || h.id == 0)
        return false;
    if (!urio__loop_check_thread(loop, "urio_handle_cancel"))
        return false;
    if (!(h.id & TIMER_BIT)) {
        uint64_t q = h.id;
        if (q < loop->ready_head || q >= loop->ready_tail)
            return false;   /* ran, or never ours: a harmless no-op */
        struct urio__ready *e = &loop->ready[q & loop->ready_mask];
        if (e->fn == NULL || e->slot1 != 0)
            return false;   /* already cancelled */
        e->fn = NULL;
        return true;
    }
    uint64_t slot = (h.id & SLOT_MASK) - 1;
    uint32_t gen = (uint32_t)(h.id >> SLOT_BITS);
    if (slot >= loop->nslots)
        return false;
    struct urio__slot *s = &loop->slots[slot];
    if (s->gen != gen || !(gen & 1))
        return false;       /* ran or was cancelled */
    /*
     * Free the slot now.  Its entry in the wheel, the heap or the FIFO names
     * the old generation and is skipped when it comes up.
     */
    bool in_wheel = s->where == URIO__SLOT_WHEEL;
    urio__slot_release(loop, (uint32_t)slot);
    if (in_wheel)
        urio__timer_cancelled(loop);    /* the wheel counts its stale entries */
    return true;
}

/* ------------------------------------------------------------------ */
/* The turn                                                             */

#if URIO_DEBUG_CHECKS
static void log_slow_callback(urio_loop_t *loop, urio_callback_fn fn, const urio_site_t *site,
                              uint64_t took)
{
    char desc[256], handle[300];
    /* A callback that resumed a task ran the task's step: name the task. */
    if (loop->stepped_task != NULL) {
        urio__task_describe_short(loop->stepped_task, handle, sizeof handle);
    } else {
        urio__describe_callback((void (*)(void))fn, site, desc, sizeof desc);
        snprintf(handle, sizeof handle, "<Handle %s>", desc);
    }
    urio__log(URIO_LOG_WARNING, "Executing %s took %.3f seconds", handle, (double)took / 1e9);
}
#endif

/*
 * Pops the next ready entry into *out.  Returns: false if it was cancelled.
 * A due timer's slot is released here: its handle is spent.
 */
static inline bool ready_pop(urio_loop_t *loop, struct urio__ready *out)
{
    *out = loop->ready[loop->ready_head & loop->ready_mask];
    loop->ready_head++;
    if (URIO_UNLIKELY(out->slot1 != 0)) {
        uint32_t slot = out->slot1 - 1;
        if (loop->slots[slot].gen != out->gen)
            return false;   /* cancelled after it came due */
        urio__slot_release(loop, slot);
    }
    return out->fn != NULL;
}

/* Runs n ready callbacks.  The release path: no clock read. */
static void run_ready(urio_loop_t *loop, uint32_t n)
{
    struct urio__ready e;
    for (uint32_t k = 0; k < n; k++)
        if (ready_pop(loop, &e))
            e.fn(e.arg);
}

#if URIO_DEBUG_CHECKS
/* Runs n ready callbacks, timing each against the slow-callback duration. */
static void run_ready_debug(urio_loop_t *loop, uint32_t n)
{
    struct urio__ready e;
    for (uint32_t k = 0; k < n; k++) {
        if (!ready_pop(loop, &e))
            continue;
        loop->stepped_task = NULL;
        uint64_t t0 = urio__now();
        e.fn(e.arg);
        uint64_t took = urio__now() - t0;
        if (took >= loop->slow_ns)
            log_slow_callback(loop, e.fn, e.site, took);
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

static int loop_turn(urio_loop_t *loop)
{
    urio__ring_t *r = &loop->ring;
    urio__inbox_t *ib = &loop->inbox;
    int64_t wait = 0;
    int ret = 0;

    /* 1. How long may the kernel block? */
    if (urio__ready_count(loop) == 0 && !loop->stopping && !urio__inbox_pending(ib)) {
        wait = -1;
        if (loop->timers > 0) {
            uint64_t next = urio__timer_next(loop);
            if (next != UINT64_MAX) {
                /* Sleep past the deadline by the slack: timers due close together share a wake-up. */
                uint64_t now = urio__now();
                uint64_t until = next > UINT64_MAX - loop->timer_slack_ns ? next
                                                                          : next + loop->timer_slack_ns;
                wait = next > now ? (until - now > INT64_MAX ? -1 : (int64_t)(until - now)) : 0;
            }
        }
    }

    /* 2. Submit and wait, in one system call. */
    uint64_t t0 = 0;
    if (wait == 0) {
        if (must_enter(loop))
            ret = urio__ring_enter(r, 0);
        else if (r->defer_taskrun)
            goto inbox;     /* no system call, and no completion can have come */
        else
            goto reap;      /* no system call: completions are peeked below */
    } else {
        /* Without the armed read a producer could not wake us: sleep 1 ms at most. */
        if (!urio__inbox_armed(loop) && (wait < 0 || wait > 1000000))
            wait = 1000000;
        atomic_store(&ib->sleeping, 1);
        if (ib->held != NULL || urio__mpsc_nonempty(&ib->q, memory_order_seq_cst)) {
            atomic_store(&ib->sleeping, 0);
            wait = 0;       /* a producer got in first: no sleep */
        }
        if (loop->debug && wait != 0)
            t0 = urio__now();
        ret = urio__ring_enter(r, wait);
        atomic_store(&ib->sleeping, 0);
    }
    loop->cbs_since_enter = 0;
    loop->cbs_next_check = URIO__CLOCK_EVERY_CALLBACKS;
    loop->last_enter_ns = urio__now();
    if (URIO_UNLIKELY(ret < 0))
        return ret;

reap:
    /* 3. Completions. */
    if (urio__ring_cq_pending(r))
        urio__ring_reap(r);
    else
        r->last_reaped = 0;
    if (t0)
        log_poll(loop, wait, urio__now() - t0);

inbox:
    /* 4. The inbox. */
    if (urio__inbox_pending(ib))
        urio__inbox_drain(loop);

    /* 5. Due timers. */
    if (loop->timers > 0)
        urio__timer_fire(loop, urio__now());

    /* 6. What is ready now, and only that. */
    uint32_t n = urio__ready_count(loop);
#if URIO_DEBUG_CHECKS
    if (loop->debug)
        run_ready_debug(loop, n);
    else
#endif
        run_ready(loop, n);
    loop->cbs_since_enter += n;
    loop->callbacks_run += n;
    /* Jobs the callbacks submitted: to their pools, a batch per pool. */
    if (loop->jobs_head != NULL)
        urio__executor_flush(loop);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                           */

static bool env_debug(void)
{
    const char *v = getenv("URIO_DEBUG");
    return v != NULL && *v != '\0' && strcmp(v, "0") != 0;
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
    loop->debug = debug > 0 || (debug == 0 && (env_debug() || URIO_DEBUG_BUILD));
    loop->slow_ns = URIO__SLOW_CALLBACK_NS;
    loop->timer_slack_ns = URIO__TIMER_SLACK_NS;
    loop->refs = 1;
    loop->cap_slots = 64;
    loop->slots = urio__malloc(loop->cap_slots * sizeof *loop->slots);
    loop->free_slots = urio__malloc(loop->cap_slots * sizeof *loop->free_slots);
    loop->ready = urio__malloc(64 * sizeof *loop->ready);
    loop->ready_mask = 63;
    loop->ready_head = loop->ready_tail = 1;    /* sequence 0 would be handle id 0 */
    loop->inbox.efd = -1;
    int ret = -ENOMEM;
    if (loop->slots == NULL || loop->free_slots == NULL || loop->ready == NULL)
        goto fail;
    ret = urio__ring_init(&loop->ring, entries);
    if (ret < 0)
        goto fail;
    ret = urio__inbox_init(loop);
    if (ret < 0) {
        urio__ring_exit(&loop->ring);
        goto fail;
    }
    loop->last_enter_ns = urio__now();
    loop->now_cache = loop->last_enter_ns;
    atomic_store(&loop->home, urio__thread_token());
    open_list_add(loop);
    *out = loop;
    return 0;

fail:
    urio__free(loop->slots);
    urio__free(loop->free_slots);
    urio__free(loop->ready);
    urio__free(loop);
    return ret;
}

URIO_EXPORT int urio_loop_run_forever(urio_loop_t *loop)
{
    if (loop == NULL)
        return -EINVAL;
    if (loop->closing)
        return -ESHUTDOWN;
    if (loop->running || tls_current != NULL) {
        urio__log(URIO_LOG_ERROR, "urio_loop_run_forever(): %s",
                  loop->running ? "This event loop is already running"
                                : "Cannot run the event loop while another loop is running");
        return -EBUSY;
    }
    if (loop->ntasks > 0 && loop->task_thread != NULL && loop->task_thread != urio__thread_token()) {
        /* A suspended task must resume on the thread it was suspended on. */
        urio__log(URIO_LOG_ERROR, "urio_loop_run_forever(): this loop has tasks suspended on "
                  "another thread; run it on that thread");
        return -EPERM;
    }
    int ret = urio__ring_bind(&loop->ring);
    if (ret < 0) {
        urio__log(URIO_LOG_ERROR, "urio_loop_run_forever(): this loop's ring belongs to the "
                  "thread that first ran it (IORING_SETUP_SINGLE_ISSUER); run and close the "
                  "loop on that thread");
        return ret;
    }
    loop->running = true;
    tls_current = loop;
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
    atomic_store_explicit(&loop->owner, NULL, memory_order_release);
    tls_current = NULL;
    loop->running = false;
    return ret;
}

static void stop_on_done(urio_future_t *f, void *arg)
{
    (void)f;
    urio_loop_stop(arg);
}

URIO_EXPORT int urio_loop_run_until_complete(urio_loop_t *loop, urio_future_t *f)
{
    if (loop == NULL || f == NULL || urio_future_loop(f) != loop)
        return -EINVAL;
    if (!urio_future_done(f)) {
        int ret = urio_future_add_done_callback(f, stop_on_done, loop);
        if (ret < 0)
            return ret;
        ret = urio_loop_run_forever(loop);
        if (!urio_future_done(f)) {
            urio_future_remove_done_callback(f, stop_on_done, loop);
            return ret < 0 ? ret : URIO_ESTOPPED;
        }
        if (ret < 0)
            return ret;
    }
    return urio_future_result(f, NULL);
}

URIO_EXPORT void urio_loop_stop(urio_loop_t *loop)
{
    if (loop == NULL || !urio__loop_check_thread(loop, "urio_loop_stop"))
        return;
    loop->stopping = true;
}

URIO_EXPORT urio_loop_t *urio_loop_current(void)
{
    return tls_current;
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

/* Cancels every op still in the ring and waits for each one's final CQE. */
static void drain_ring(urio_loop_t *loop)
{
    urio__ring_t *r = &loop->ring;
    for (uint32_t s = 1; s < r->nops; s++) {
        urio__op_t *op = r->ops[s].op;
        if (op != NULL && op->state == URIO__OP_INFLIGHT)
            urio__op_cancel(r, op);
    }
    uint64_t deadline = urio__now() + 10ull * 1000000000u;
    bool warned = false;
    while (r->inflight > 0) {
        int ret = urio__ring_enter(r, 100 * 1000000);
        urio__ring_reap(r);
        if (ret < 0) {
            urio__log(URIO_LOG_CRITICAL, "urio_loop_close(): io_uring_enter failed (%s) with "
                      "%u operations in flight; closing the ring anyway", urio_strerror(ret),
                      r->inflight);
            return;
        }
        if (!warned && urio__now() > deadline) {
            urio__log(URIO_LOG_WARNING, "urio_loop_close(): still waiting for %u cancelled "
                      "operations to complete after 10 s", r->inflight);
            warned = true;
        }
    }
}

/*
 * Closing from a thread that is not the ring's issuer (the loop ran on a
 * thread that has since finished): this thread may not enter the ring, so
 * the ring is torn down and the kernel cancels what is left.  The loop's own
 * ops (the wake-up read) own no memory the kernel could write after that.
 * Each op still gets its one completion, -ECANCELED, so owners are told.
 */
static void abandon_ring(urio_loop_t *loop)
{
    urio__ring_t *r = &loop->ring;
    urio__ring_unmap(r);
    for (uint32_t s = 1; s < r->nops; s++) {
        urio__op_t *op = r->ops[s].op;
        if (op == NULL)
            continue;
        r->ops[s].op = NULL;
        op->state = URIO__OP_IDLE;
        r->inflight--;
        op->complete(op, -ECANCELED, 0);
    }
    urio__free(r->ops);
    r->ops = NULL;
}

URIO_EXPORT int urio_loop_close(urio_loop_t *loop)
{
    if (loop == NULL)
        return -EINVAL;
    /* owner, not running: close may come from another thread, and owner is atomic. */
    if (atomic_load_explicit(&loop->owner, memory_order_acquire) != NULL)
        return -EBUSY;
    if (loop->closing)
        return 0;
    if (urio__executor_is_worker(loop->default_ex)) {
        urio__log(URIO_LOG_ERROR, "urio_loop_close(): called from a worker of the loop's own "
                  "thread pool, which close must wait for");
        return -EDEADLK;
    }
    bool issuer = urio__ring_bind(&loop->ring) == 0;
    /*
     * The default pool first: jobs not started are cancelled, running ones
     * finish, and every worker exits.  Their completions land in the inbox
     * and run below, before the inbox closes.
     */
    if (loop->default_ex != NULL) {
        urio_executor_shutdown(loop->default_ex, true, true);
        urio_executor_free(loop->default_ex);
        loop->default_ex = NULL;
    }
    loop->closing = true;
    /* Jobs in pools of the program's own: cancelled, their futures settled now. */
    urio__executor_loop_closing(loop);
    open_list_remove(loop);
    if (issuer)
        drain_ring(loop);
    else
        abandon_ring(loop);
    urio__inbox_close(loop);
    /* Never-awaited coroutines and tasks still pending: reported, then freed. */
    urio__tasks_close(loop);

    uint32_t dropped = 0, timers = 0;
    for (uint64_t q = loop->ready_head; q != loop->ready_tail; q++) {
        const struct urio__ready *e = &loop->ready[q & loop->ready_mask];
        if (e->fn != NULL && e->site == &urio__future_runner_site) {
            /* urio's own entry holds a reference on its future: release it. */
            urio__future_runner_dropped(e->arg);
            continue;
        }
        if (e->fn != NULL && urio__task_step_dropped(e->fn, e->arg))
            continue;
        dropped += e->fn != NULL && (e->slot1 == 0 || loop->slots[e->slot1 - 1].gen == e->gen);
    }
    timers = urio__timer_count_live(loop);
    if (loop->debug && (dropped || timers))
        urio__log(URIO_LOG_DEBUG, "urio_loop_close(): dropped %u pending callbacks and %u "
                  "timers", dropped, timers);

    if (issuer)
        urio__ring_exit(&loop->ring);
    urio__inbox_free(loop);
    urio__timer_free_all(loop);
    urio__free(loop->slots);
    urio__free(loop->free_slots);
    urio__free(loop->ready);
    loop->slots = NULL;
    loop->free_slots = NULL;
    loop->ready = NULL;
    loop->nslots = loop->nfree = 0;
    loop->ready_head = loop->ready_tail;
    loop->closed = true;
    urio__loop_unref(loop);
    return 0;
}

/* ------------------------------------------------------------------ */
/* The exception handler                                                */

URIO_EXPORT void urio_loop_set_exception_handler(urio_loop_t *loop,
                                                 urio_exception_handler_fn fn, void *ud)
{
    if (loop == NULL || !urio__loop_check_thread(loop, "urio_loop_set_exception_handler"))
        return;
    loop->exc_fn = fn;
    loop->exc_ud = fn ? ud : NULL;
}

URIO_EXPORT void urio_loop_default_exception_handler(urio_loop_t *loop,
                                                     const urio_error_context_t *ctx)
{
    (void)loop;
    if (ctx == NULL)
        return;
    char obj[256] = "";
    if (ctx->future) {
        char desc[200];
        snprintf(obj, sizeof obj, "\nfuture: %s",
                 urio__future_describe(ctx->future, desc, sizeof desc));
    }
    char err[512] = "";
    if (ctx->error)
        snprintf(err, sizeof err, "\nerror: %s (%s)%s%s", urio_strerror_name(ctx->error),
                 urio_strerror(ctx->error), ctx->error_message ? ": " : "",
                 ctx->error_message ? ctx->error_message : "");
    urio__log(URIO_LOG_ERROR, "%s%s%s%s%s", ctx->message ? ctx->message : "Unhandled error",
              obj, err, ctx->source_traceback ? "\n" : "",
              ctx->source_traceback ? ctx->source_traceback : "");
}

URIO_EXPORT void urio_loop_call_exception_handler(urio_loop_t *loop,
                                                  const urio_error_context_t *ctx)
{
    if (loop != NULL && loop->exc_fn != NULL)
        loop->exc_fn(loop, ctx, loop->exc_ud);
    else
        urio_loop_default_exception_handler(loop, ctx);
}
