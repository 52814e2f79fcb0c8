/*
 * lib/ready.h — the ready FIFO: the callbacks the loop runs in its next
 * step, and their handles (ready.c).
 */
#ifndef URIO_READY_H
#define URIO_READY_H

#include "common.h"

/*
 * An entry of the ready FIFO, a ring buffer addressed by sequence number:
 * entry s sits at s & mask.  A call_soon handle is its sequence number, so
 * a cancel finds its entry without any table.  A due timer's entry carries
 * its handle (slot and generation): cancelled, the generations differ.
 * An entry of urio's own that holds a reference (a future's runner, a
 * task's step) is of a *kind*: its site is the kind's, which says how to
 * drop the entry when the loop closes before running it, and how to name
 * it in a report.
 */
struct urio__ready {
    urio_callback_fn fn;    /* NULL: cancelled */
    void *arg;
    const urio_site_t *site;
    uint64_t key;           /* 0: call_soon's; URIO__READY_KIND; URIO__READY_INBOX; else a
                               due timer's handle id */
};

#define URIO__READY_KIND  1u  /* timer handle ids have bit 63 set: never 0, 1 or 2 */
#define URIO__READY_INBOX 2u  /* a call the inbox accepted: runs at close if not before */

typedef struct urio__ready_kind {
    urio_site_t site;                /* first: entries point at it as their site */
    /* The loop closes with the entry queued: release what it holds. */
    void (*drop)(void *arg);
} urio__ready_kind_t;

typedef struct urio__ready_fifo {
    struct urio__ready *e;
    uint64_t head, tail;         /* sequence numbers: the FIFO is [head, tail) */
    uint64_t mask;
    atomic_uint reserved;        /* room promised to futures' runners (future.c); a
                                    future's last unref may give it back from any thread */
} urio__ready_fifo_t;

int  urio__ready_init(urio__ready_fifo_t *q);
void urio__ready_free(urio__ready_fifo_t *q);

static inline uint32_t urio__ready_count(const urio__ready_fifo_t *q)
{
    return (uint32_t)(q->tail - q->head);
}

/* Doubles the FIFO.  Returns: 0 or -ENOMEM. */
int urio__ready_grow(urio__ready_fifo_t *q);
/* Grows the FIFO and appends (the fast path's cold half).  Returns: the sequence number, or 0. */
uint64_t urio__ready_push_slow(urio__ready_fifo_t *q, urio_callback_fn fn, void *arg,
                               const urio_site_t *site, uint64_t key);

/* Appends, leaving reserved room free.  Returns: the entry's sequence number, or 0 on ENOMEM. */
static inline uint64_t urio__ready_push(urio__ready_fifo_t *q, urio_callback_fn fn, void *arg,
                                        const urio_site_t *site, uint64_t key)
{
    uint32_t reserved = atomic_load_explicit(&q->reserved, memory_order_relaxed);
    if (URIO_UNLIKELY(q->tail - q->head + reserved > q->mask))
        return urio__ready_push_slow(q, fn, arg, site, key);
    uint64_t s = q->tail++;
    q->e[s & q->mask] = (struct urio__ready){ fn, arg, site, key };
    return s;
}

/* True if one push will not fail: there is room, or the FIFO could grow. */
static inline bool urio__ready_make_room(urio__ready_fifo_t *q)
{
    uint32_t reserved = atomic_load_explicit(&q->reserved, memory_order_relaxed);
    if (URIO_LIKELY(q->tail - q->head + reserved <= q->mask))
        return true;
    return urio__ready_grow(q) == 0;
}

/*
 * Reserves room in the FIFO for one later push that must not fail (a
 * future's done-callback runner): the FIFO grows now, or never.
 * Returns: 0 or -ENOMEM.
 */
int urio__ready_reserve(urio__ready_fifo_t *q);
static inline void urio__ready_unreserve(urio__ready_fifo_t *q)
{
    atomic_fetch_sub_explicit(&q->reserved, 1, memory_order_relaxed);
}
/* Pushes an entry of a kind into reserved room: cannot fail.  Returns: the sequence number. */
uint64_t urio__ready_push_reserved(urio__ready_fifo_t *q, urio_callback_fn fn, void *arg,
                                   const urio__ready_kind_t *kind);

/*
 * Schedules an entry of urio's own kind (no thread check; the loop's thread).
 * Returns: 0, -ESHUTDOWN (the loop is closing) or -ENOMEM.
 */
int urio__call_soon_kind(urio_loop_t *loop, urio_callback_fn fn, void *arg,
                         const urio__ready_kind_t *kind);

/* Cancels a call_soon handle's entry.  Returns: true if it was pending. */
bool urio__ready_cancel(urio__ready_fifo_t *q, uint64_t seq);

/*
 * At close: runs every inbox call the loop drained but did not run yet, in
 * FIFO order (accepted calls run exactly once).  Returns: how many.
 */
uint32_t urio__ready_run_inbox(urio_loop_t *loop);

/*
 * At close: drops every entry still queued (a kind's entry through its drop
 * function).  Returns: how many user callbacks and due timers were dropped.
 */
uint32_t urio__ready_drop_all(urio_loop_t *loop);

#endif
