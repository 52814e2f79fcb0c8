/*
 * lib/timer.h — timers (timer.c): their slots and handles, the wheel and
 * the far heap.  Loop thread only.
 */
#ifndef URIO_TIMER_H
#define URIO_TIMER_H

#include "common.h"

/*
 * A timer handle's id: bit 63, the slot's 39-bit generation, the slot's
 * index + 1 in 24 bits.  So a loop holds at most 2^24 - 1 timers at once
 * (URIO__TIMER_MAX, 16,777,215).  A generation is odd while its timer is
 * pending and is bumped when it runs or is cancelled; a slot whose
 * generations are used up (2^38 timers on one slot) is retired, never
 * reused, so a stale handle can never name a later timer.
 */
#define URIO__TIMER_SLOT_BITS 24
#define URIO__TIMER_MAX       ((1u << URIO__TIMER_SLOT_BITS) - 1)
#define URIO__TIMER_GEN_BITS  39
#define URIO__TIMER_GEN_MASK  ((1ull << URIO__TIMER_GEN_BITS) - 1)

/*
 * A timer's slot, 8 bytes.  `word` packs the generation (bits 0-38) and
 * the state (bits 39-40).  Entries in the wheel, the heap and the ready FIFO
 * name their timer by key: slot | generation << 24, and carry its callback
 * and argument (so firing reads no slot).  Cancelling frees the slot at
 * once; its entry, left behind, no longer matches the slot's generation and
 * is skipped when reached.
 */
struct urio__slot {
    uint64_t word;
};
enum { URIO__SLOT_FREE, URIO__SLOT_WHEEL, URIO__SLOT_READY };
#define URIO__SLOT_STATE_SHIFT URIO__TIMER_GEN_BITS
#define URIO__TW_SLACK_UNIT    10   /* wheel entries keep their slack in units of 2^10 ns */

#define URIO__SLOT_CHUNK_BITS 10    /* slots come in chunks of 1,024 */
/*
 * The first 32 chunks of slots (32,768 timers, 256 KiB) are allocated one
 * by one; later ones are carved from 2 MiB arenas advised for huge pages,
 * 256 chunks each.  Slots are touched in deadline order, at random in
 * memory, and after the loop slept the TLB is cold: with 4 KiB pages nearly
 * every fired timer paid a page walk (~14 ns more per timer with 200,000
 * timers on the 2-core VM).  A small loop stays small.
 */
#define URIO__SLOT_SMALL_CHUNKS 32u
#define URIO__SLOT_ARENA_CHUNKS \
    ((uint32_t)(URIO__HUGE_PAGE / (sizeof(struct urio__slot) << URIO__SLOT_CHUNK_BITS)))

/* A timer in the due run (sorted). */
struct urio__tw_entry {
    uint64_t when;
    uint64_t key;           /* slot | generation << 24 */
    urio_callback_fn fn;
    void *arg;
    uint32_t slack;         /* in units of 2^URIO__TW_SLACK_UNIT ns */
    uint32_t pad;
};

/*
 * A bucket's entries, in insertion order, in chunks of 28 (1 KiB).  Each
 * keeps its slack, so bounding a wake-up reads no slot.
 */
#define URIO__TW_CHUNK 28
struct urio__tw_chunk {
    struct urio__tw_chunk *next;
    uint32_t n, pad;
    uint64_t when[URIO__TW_CHUNK];
    uint64_t key[URIO__TW_CHUNK];
    urio_callback_fn fn[URIO__TW_CHUNK];
    void *arg[URIO__TW_CHUNK];
    uint32_t slack[URIO__TW_CHUNK];
};

struct urio__tw_bucket {    /* the timers of one tick, in insertion order */
    struct urio__tw_chunk *first, *last;
    uint64_t min, max;      /* of their deadlines (min may be a cancelled one's) */
    uint64_t min_latest;    /* no timer here may fire later than this: the wake-up bound */
    uint32_t n;
    bool sorted;            /* appended in deadline order: no sort when due */
};

struct urio__heap_entry {   /* a timer beyond the wheel */
    uint64_t when, latest;
    uint64_t seq;           /* FIFO among equal deadlines */
    uint64_t key;
    urio_callback_fn fn;
    void *arg;
};

#define URIO__TW_SHIFT   20          /* a tick is 2^20 ns, about 1 ms */
#define URIO__TW_BUCKETS 4096u       /* the wheel spans about 4.3 s */

typedef struct urio__timers {
    /*
     * Slots, in chunks that never move.  Free ones wait on a stack of
     * index | generation << 24, with room for every slot (made with the
     * slot), so freeing never fails and taking a slot reads no cold one.
     */
    struct urio__slot **slot_dir;
    const urio_site_t ***site_dir;   /* debug mode: each slot's site, chunk by chunk */
    uint32_t slot_dir_cap;           /* chunks the directories have room for */
    uint32_t nslots;                 /* slots ever made (the high-water mark) */
    uint64_t *free_stack;
    uint32_t nfree, free_cap;
    uint32_t max_slots;              /* URIO__TIMER_MAX (lower in tests) */
    uint32_t retired;                /* slots retired with their generations used up */

    /* A wheel of ~1 ms buckets over the next ~4.3 s, and a 4-ary heap beyond it. */
    struct urio__tw_bucket *tw;  /* URIO__TW_BUCKETS of them, made at the first timer */
    uint64_t tw_bits[URIO__TW_BUCKETS / 64];   /* non-empty buckets */
    uint64_t tw_tick;            /* the wheel's first tick: heap entries are all later */
    struct urio__tw_chunk *spare;    /* chunks of emptied buckets, for reuse */
    /* The due run: the sorted timers of tick tw_tick not fired yet. */
    struct urio__tw_entry *due, *tmp;   /* two buffers of due_cap entries (tmp: to sort) */
    uint64_t *due_lat;           /* due_lat[j]: the least deadline + slack of due[j, due_n) */
    uint32_t due_head, due_n, due_cap;
    uint64_t due_latest;         /* the due run's wake-up bound: due_lat[due_head] */
    uint32_t tw_count;           /* entries in buckets and the due run, live or stale */
    struct urio__heap_entry *heap;
    uint32_t nheap, cap_heap;
    uint64_t heap_min_slack;     /* no heap entry has less slack */
    uint32_t count;              /* entries in wheel and heap, live or stale */
    uint32_t stale;              /* of them, cancelled: while 0, firing reads no slot */
    uint32_t ready_cancels;      /* timers cancelled after they came due, their FIFO
                                    entries maybe still waiting: while 0, running a due
                                    timer reads no slot (it only writes it) */
    uint64_t seq;
    uint64_t now_cache;          /* the clock when timers were last fired: <= now */
    bool limit_logged;
} urio__timers_t;

int  urio__timers_init(urio__timers_t *tm, uint64_t now);
void urio__timers_free(urio__timers_t *tm);

/* True if the id is a timer's handle (else a call_soon's). */
static inline bool urio__handle_is_timer(uint64_t id)
{
    return (id >> 63) != 0;
}
/* Cancels a timer handle.  Returns: true if it was pending. */
bool urio__timer_cancel(urio__timers_t *tm, uint64_t id);

static inline struct urio__slot *urio__slot_at(const urio__timers_t *tm, uint32_t i)
{
    return &tm->slot_dir[i >> URIO__SLOT_CHUNK_BITS][i & ((1u << URIO__SLOT_CHUNK_BITS) - 1)];
}

/*
 * Frees slot i, whose pending timer (generation `gen`) ran or was
 * cancelled: the next generation, even, and the slot on the free stack; or,
 * its generations used up, the slot retired (generation 0, never handed out).
 */
static inline void urio__slot_free(urio__timers_t *tm, uint32_t i, struct urio__slot *s,
                                   uint64_t gen)
{
    if (URIO_UNLIKELY(gen == URIO__TIMER_GEN_MASK)) {
        s->word = 0;
        tm->retired++;
        return;
    }
    s->word = gen + 1;  /* FREE */
    tm->free_stack[tm->nfree++] = i | ((gen + 1) << URIO__TIMER_SLOT_BITS);
}

/*
 * A due timer's FIFO entry (key: its handle id) is about to run: true if
 * it is still live (not cancelled since it came due); then its slot is
 * freed (the handle is spent).  With no such cancel outstanding it is live
 * without looking: slots are read at random, and after a sleep each read
 * is a cache miss.
 */
static inline bool urio__timer_take_due(urio__timers_t *tm, uint64_t key)
{
    uint32_t i = (uint32_t)(key & URIO__TIMER_MAX) - 1;
    struct urio__slot *s = urio__slot_at(tm, i);
    uint64_t gen = (key >> URIO__TIMER_SLOT_BITS) & URIO__TIMER_GEN_MASK;
    if (URIO_UNLIKELY(tm->ready_cancels != 0) && (s->word & URIO__TIMER_GEN_MASK) != gen) {
        tm->ready_cancels--;
        return false;   /* cancelled: the slot was freed then */
    }
    urio__slot_free(tm, i, s, gen);
    return true;
}
/* True if a due timer's FIFO entry is still live (close's count). */
static inline bool urio__timer_entry_live(const urio__timers_t *tm, uint64_t key)
{
    const struct urio__slot *s = urio__slot_at(tm, (uint32_t)(key & URIO__TIMER_MAX) - 1);
    return (s->word & URIO__TIMER_GEN_MASK) == ((key >> URIO__TIMER_SLOT_BITS) &
                                                URIO__TIMER_GEN_MASK);
}

/*
 * The earliest deadline, or UINT64_MAX.  It may be a cancelled timer's
 * (an early wake-up, never a late one).
 */
uint64_t urio__timer_next(urio__timers_t *tm);
/*
 * When the loop must be awake to fire every timer within its slack: the
 * least of deadline + slack over pending timers (docs/loop.md, "Timer
 * slack"), or UINT64_MAX.  Never later than that; maybe earlier.
 */
uint64_t urio__timer_wake(urio__timers_t *tm);
/* Moves every timer due at `now` to the loop's ready FIFO.  Returns: how many. */
uint32_t urio__timer_fire(urio_loop_t *loop, uint64_t now);
/* Live timers (for close's report). */
uint32_t urio__timer_count_live(const urio__timers_t *tm);

#endif
