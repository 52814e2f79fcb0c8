/*
 * lib/timer.h — timers (timer.c): their slots and handles, the wheel and
 * the far heap.  Loop thread only.
 */
#ifndef URIO_TIMER_H
#define URIO_TIMER_H

#include "common.h"

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

struct urio__tw_spare;      /* an emptied bucket's array, kept for reuse (timer.c) */

typedef struct urio__timers {
    /* Slots and the stack of free ones. */
    struct urio__slot *slots;
    struct urio__free_slot *free_slots;
    uint32_t nslots, cap_slots, nfree;

    /* A wheel of ~1 ms buckets over the next ~4.3 s, and a 4-ary heap for later deadlines. */
    struct urio__tw_bucket *tw;  /* URIO__TW_BUCKETS of them, made at the first timer */
    uint64_t tw_bits[URIO__TW_BUCKETS / 64];   /* non-empty buckets */
    uint64_t tw_tick;            /* the wheel's first tick: heap entries are all later */
    struct urio__tw_spare *tw_spare;   /* arrays of emptied buckets, for reuse */
    uint32_t tw_count;           /* entries in the wheel, live or stale */
    struct urio__timer *heap;
    uint32_t nheap, cap_heap;
    uint32_t count;              /* entries in wheel and heap, live or stale */
    uint32_t stale;              /* cancelled entries not yet dropped */
    uint64_t seq;
    uint64_t now_cache;          /* the clock when timers were last fired: <= now */
} urio__timers_t;

/*
 * A timer handle has 24 bits for the slot index: at most 2^24 - 1 timers
 * pending at once on one loop (16,777,215).
 */
#define URIO__TIMER_SLOT_BITS 24
#define URIO__TIMER_MAX       ((1u << URIO__TIMER_SLOT_BITS) - 1)

int  urio__timers_init(urio__timers_t *tm, uint64_t now);
void urio__timers_free(urio__timers_t *tm);

/* True if the id is a timer's handle (else a call_soon's). */
static inline bool urio__handle_is_timer(uint64_t id)
{
    return (id >> 63) != 0;
}
/* Cancels a timer handle.  Returns: true if it was pending. */
bool urio__timer_cancel(urio__timers_t *tm, uint64_t id);

/*
 * A due timer's FIFO entry is about to run: true if it is still live (not
 * cancelled since it came due); then its slot is released (the handle is
 * spent).
 */
static inline bool urio__timer_take_due(urio__timers_t *tm, uint32_t slot, uint32_t gen)
{
    struct urio__slot *s = &tm->slots[slot];
    if (s->gen != gen)
        return false;
    uint32_t g = ++s->gen;      /* even: free */
    tm->free_slots[tm->nfree++] = (struct urio__free_slot){ slot, g };
    return true;
}
/* True if a due timer's FIFO entry is still live (close's count). */
static inline bool urio__timer_entry_live(const urio__timers_t *tm, uint32_t slot, uint32_t gen)
{
    return tm->slots[slot].gen == gen;
}

/*
 * The earliest deadline, or UINT64_MAX: the wait's timeout.  It may be a
 * cancelled timer's (an early wake-up, never a late one).
 */
uint64_t urio__timer_next(urio__timers_t *tm);
/* Moves every timer due at `now` to the loop's ready FIFO.  Returns: how many. */
uint32_t urio__timer_fire(urio_loop_t *loop, uint64_t now);
/* Live timers (for close's report). */
uint32_t urio__timer_count_live(const urio__timers_t *tm);

#endif
