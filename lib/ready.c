/*
 * ready.c — the ready FIFO and call_soon: the callbacks the loop runs in
 * its next step, their handles, and urio_handle_cancel.
 *
 * The FIFO is a ring buffer addressed by sequence number (entry s at
 * s & mask).  A call_soon handle is its sequence number: cancelling finds
 * the entry in O(1), and a handle that already ran is behind the head.
 * Scheduling allocates nothing once the FIFO has grown.
 */
#include "loop.h"

#include <string.h>

int urio__ready_init(urio__ready_fifo_t *q)
{
    q->e = urio__malloc(64 * sizeof *q->e);
    if (q->e == NULL)
        return -ENOMEM;
    q->mask = 63;
    q->head = q->tail = 1;      /* sequence 0 would be handle id 0 */
    atomic_init(&q->reserved, 0);
    return 0;
}

void urio__ready_free(urio__ready_fifo_t *q)
{
    urio__free(q->e);
    q->e = NULL;
    q->head = q->tail;
}

int urio__ready_grow(urio__ready_fifo_t *q)
{
    uint64_t cap = q->mask + 1, ncap = cap * 2;
    if (ncap > (1ull << 31))
        return -ENOMEM;
    struct urio__ready *e = urio__malloc((size_t)ncap * sizeof *e);
    if (e == NULL)
        return -ENOMEM;
    /* Entry s moves from s & mask to s & (2 * mask + 1): handles stay valid. */
    for (uint64_t s = q->head; s != q->tail; s++)
        e[s & (ncap - 1)] = q->e[s & q->mask];
    urio__free(q->e);
    q->e = e;
    q->mask = ncap - 1;
    return 0;
}

/*
 * The FIFO must grow first: out of line, as a tail call from the fast path,
 * so the fast path keeps nothing live across a call (no registers to save).
 */
__attribute__((cold, noinline)) uint64_t urio__ready_push_slow(urio__ready_fifo_t *q,
                                                                urio_callback_fn fn, void *arg,
                                                                const urio_site_t *site,
                                                                uint64_t key)
{
    if (urio__ready_grow(q) < 0)
        return 0;
    uint64_t s = q->tail++;
    q->e[s & q->mask] = (struct urio__ready){ fn, arg, site, key };
    return s;
}

int urio__ready_reserve(urio__ready_fifo_t *q)
{
    uint32_t reserved = atomic_load_explicit(&q->reserved, memory_order_relaxed);
    if (q->tail - q->head + reserved > q->mask && urio__ready_grow(q) < 0)
        return -ENOMEM;
    atomic_fetch_add_explicit(&q->reserved, 1, memory_order_relaxed);
    return 0;
}

uint64_t urio__ready_push_reserved(urio__ready_fifo_t *q, urio_callback_fn fn, void *arg,
                                   const urio__ready_kind_t *kind)
{
    atomic_fetch_sub_explicit(&q->reserved, 1, memory_order_relaxed);
    URIO_ASSERT(q->tail - q->head <= q->mask);
    uint64_t s = q->tail++;
    q->e[s & q->mask] = (struct urio__ready){ fn, arg, &kind->site, URIO__READY_KIND };
    return s;
}

bool urio__ready_cancel(urio__ready_fifo_t *q, uint64_t seq)
{
    if (seq < q->head || seq >= q->tail)
        return false;   /* ran, or never ours: a harmless no-op */
    struct urio__ready *e = &q->e[seq & q->mask];
    if (e->fn == NULL || e->key != 0)
        return false;   /* already cancelled, or not a call_soon's entry */
    e->fn = NULL;
    return true;
}

uint32_t urio__ready_run_inbox(urio_loop_t *loop)
{
    urio__ready_fifo_t *q = &loop->ready;
    uint32_t ran = 0;
    for (uint64_t s = q->head; s != q->tail; s++) {
        struct urio__ready *e = &q->e[s & q->mask];
        if (e->key != URIO__READY_INBOX || e->fn == NULL)
            continue;
        urio_callback_fn fn = e->fn;
        void *arg = e->arg;
        e->fn = NULL;           /* first: the call may append, and the FIFO move */
        fn(arg);
        ran++;
    }
    return ran;
}

uint32_t urio__ready_drop_all(urio_loop_t *loop)
{
    urio__ready_fifo_t *q = &loop->ready;
    uint32_t dropped = 0;
    for (uint64_t s = q->head; s != q->tail; s++) {
        const struct urio__ready *e = &q->e[s & q->mask];
        if (e->fn == NULL)
            continue;
        if (e->key == URIO__READY_KIND) {
            /* urio's own entry holds a reference: release it. */
            const urio__ready_kind_t *kind = (const urio__ready_kind_t *)(const void *)e->site;
            if (kind->drop)
                kind->drop(e->arg);
            continue;
        }
        dropped += e->key == 0 || urio__timer_entry_live(&loop->timers, e->key);
    }
    q->head = q->tail;
    return dropped;
}

/* ------------------------------------------------------------------ */
/* call_soon                                                            */

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
    uint64_t s = urio__ready_push_slow(&loop->ready, fn, arg, site, 0);
    if (s == 0)
        return fail_handle(-ENOMEM);
    return (urio_handle_t){ s, loop->serial };
}

/* The inbox holds calls: they go to the FIFO first (out of line, cold). */
__attribute__((cold, noinline)) static urio_handle_t call_soon_after_inbox(urio_loop_t *loop,
                                                                          urio_callback_fn fn,
                                                                          void *arg,
                                                                          const urio_site_t *site)
{
    if (urio__inbox_drain_all(loop) < 0)
        return fail_handle(-ENOMEM);
    uint64_t s = urio__ready_push(&loop->ready, fn, arg, site, 0);
    if (s == 0)
        return fail_handle(-ENOMEM);
    return (urio_handle_t){ s, loop->serial };
}

int urio__call_soon_kind(urio_loop_t *loop, urio_callback_fn fn, void *arg,
                         const urio__ready_kind_t *kind)
{
    if (URIO_UNLIKELY(loop->closing))
        return -ESHUTDOWN;
    if (urio__ready_push(&loop->ready, fn, arg, &kind->site, URIO__READY_KIND) == 0)
        return -ENOMEM;
    return 0;
}

URIO_EXPORT urio_handle_t urio_call_soon_site(urio_loop_t *loop, urio_callback_fn fn, void *arg,
                                              const urio_site_t *site)
{
    if (URIO_UNLIKELY(loop == NULL || fn == NULL))
        return fail_handle(-EINVAL);
    if (URIO_UNLIKELY(!urio__loop_check_thread(loop, "urio_call_soon")))
        return fail_handle(-EPERM);
    if (urio__loop_refuses(loop, "urio_call_soon"))
        return fail_handle(-ESHUTDOWN);
    /*
     * Calls the inbox accepted come first: one of them may have happened
     * before this call (made on this thread, or seen done by it), and calls
     * run in happens-before order whichever threads made them.
     */
    if (URIO_UNLIKELY(urio__inbox_pending(&loop->inbox)))
        return call_soon_after_inbox(loop, fn, arg, site);
    /* urio__ready_push's fast path, here so that success needs no further test. */
    urio__ready_fifo_t *q = &loop->ready;
    uint32_t reserved = atomic_load_explicit(&q->reserved, memory_order_relaxed);
    if (URIO_UNLIKELY(q->tail - q->head + reserved > q->mask))
        return call_soon_slow(loop, fn, arg, site);
    uint64_t s = q->tail++;
    q->e[s & q->mask] = (struct urio__ready){ fn, arg, site, 0 };
    return (urio_handle_t){ s, loop->serial };
}

#undef urio_call_soon
URIO_EXPORT urio_handle_t urio_call_soon(urio_loop_t *loop, urio_callback_fn fn, void *arg)
{
    return urio_call_soon_site(loop, fn, arg, NULL);
}

URIO_EXPORT bool urio_handle_cancel(urio_loop_t *loop, urio_handle_t h)
{
    if (loop == NULL || h.id == 0)
        return false;
    if (!urio__loop_check_thread(loop, "urio_handle_cancel"))
        return false;
    if (URIO_UNLIKELY(h.loop != loop->serial)) {
        urio__log(URIO_LOG_ERROR, "urio_handle_cancel(): the handle belongs to another event "
                  "loop (a callback or timer it scheduled): nothing cancelled");
        return false;
    }
    if (urio__handle_is_timer(h.id))
        return urio__timer_cancel(&loop->timers, h.id);
    return urio__ready_cancel(&loop->ready, h.id);
}
