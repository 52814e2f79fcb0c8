/*
 * timer.c — timers: a wheel of 1 ms buckets for the next ~4.3 s, and a
 * 4-ary heap for deadlines beyond it.
 *
 * Scheduling appends to a bucket (no ordering work at all); a bucket is
 * sorted on (deadline, sequence) only when its tick comes due, so firing is
 * a walk along a sorted array instead of a heap pop per timer with a cache
 * miss per level.  Ordering stays exact: the sequence number keeps FIFO
 * order among equal deadlines, and a timer fires when the clock has passed
 * its own deadline, not its bucket's.  Deadlines past the wheel wait in the
 * heap, and move to the wheel as it turns (invariant: every heap entry's
 * tick is at or after tw_tick + URIO__TW_BUCKETS).
 *
 * Entries carry their slot's generation: cancelling frees the slot at once
 * and leaves a stale entry that is dropped when reached, or when stale
 * entries outnumber live ones (an O(n) sweep paid for by those cancels).
 * No SQE per timer: the earliest deadline is the loop's wait timeout.
 */
#include "internal.h"

#include <string.h>

#define TW_MASK  (URIO__TW_BUCKETS - 1)
#define TW_WORDS (URIO__TW_BUCKETS / 64)
#define ARITY 4


static inline bool before(const struct urio__timer *a, const struct urio__timer *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static inline bool live(const urio_loop_t *loop, const struct urio__timer *t)
{
    return loop->slots[t->slot].gen == t->gen;
}

static inline uint64_t tick_of(uint64_t when)
{
    return when >> URIO__TW_SHIFT;
}

/* ------------------------------------------------------------------ */
/* Sorting a bucket: quicksort (median of three) over insertion sort.   */

static void insertion_sort(struct urio__timer *a, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        struct urio__timer t = a[i];
        size_t j = i;
        for (; j > 0 && before(&t, &a[j - 1]); j--)
            a[j] = a[j - 1];
        a[j] = t;
    }
}

static inline void swap(struct urio__timer *a, size_t i, size_t j)
{
    struct urio__timer t = a[i];
    a[i] = a[j];
    a[j] = t;
}

static void sort_timers(struct urio__timer *a, size_t n)
{
    while (n > 16) {
        size_t m = n / 2;
        if (before(&a[m], &a[0]))
            swap(a, 0, m);
        if (before(&a[n - 1], &a[0]))
            swap(a, 0, n - 1);
        if (before(&a[n - 1], &a[m]))
            swap(a, m, n - 1);
        struct urio__timer p = a[m];
        /* Hoare's partition; keys are unique (the sequence number). */
        size_t i = 0, j = n - 1;
        for (;;) {
            while (before(&a[i], &p))
                i++;
            while (before(&p, &a[j]))
                j--;
            if (i >= j)
                break;
            swap(a, i, j);
            i++;
            j--;
        }
        size_t left = j + 1;
        /* Recurse into the smaller side: the stack stays O(log n). */
        if (left < n - left) {
            sort_timers(a, left);
            a += left;
            n -= left;
        } else {
            sort_timers(a + left, n - left);
            n = left;
        }
    }
    insertion_sort(a, n);
}

/* ------------------------------------------------------------------ */
/* The far heap                                                         */

static void sift_up(struct urio__timer *h, uint32_t i)
{
    struct urio__timer t = h[i];
    while (i > 0) {
        uint32_t p = (i - 1) / ARITY;
        if (!before(&t, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = t;
}

static void sift_down(struct urio__timer *h, uint32_t n, uint32_t i)
{
    struct urio__timer t = h[i];
    for (;;) {
        uint32_t c = i * ARITY + 1;
        if (c >= n)
            break;
        uint32_t best = c;
        uint32_t end = c + ARITY < n ? c + ARITY : n;
        for (uint32_t k = c + 1; k < end; k++)
            if (before(&h[k], &h[best]))
                best = k;
        if (!before(&h[best], &t))
            break;
        h[i] = h[best];
        i = best;
    }
    h[i] = t;
}

static int heap_push(urio_loop_t *loop, const struct urio__timer *t)
{
    if (URIO_UNLIKELY(loop->nheap == loop->cap_heap)) {
        uint32_t cap = loop->cap_heap ? loop->cap_heap * 2 : 64;
        if (cap <= loop->cap_heap)
            return -ENOMEM;
        struct urio__timer *h = urio__realloc(loop->heap, (size_t)cap * sizeof *h);
        if (h == NULL)
            return -ENOMEM;
        loop->heap = h;
        loop->cap_heap = cap;
    }
    loop->heap[loop->nheap] = *t;
    sift_up(loop->heap, loop->nheap++);
    return 0;
}

static void heap_pop(urio_loop_t *loop)
{
    if (--loop->nheap > 0) {
        loop->heap[0] = loop->heap[loop->nheap];
        sift_down(loop->heap, loop->nheap, 0);
    }
}

/* Drops cancelled entries from the heap's top. */
static void heap_trim(urio_loop_t *loop)
{
    while (loop->nheap > 0 && !live(loop, &loop->heap[0])) {
        heap_pop(loop);
        loop->timers--;
        loop->timer_stale--;
    }
}

/* ------------------------------------------------------------------ */
/* The wheel                                                            */

static int wheel_make(urio_loop_t *loop)
{
    loop->tw = urio__calloc(URIO__TW_BUCKETS, sizeof *loop->tw);
    if (loop->tw == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < URIO__TW_BUCKETS; i++) {
        loop->tw[i].sorted = true;
        loop->tw[i].min = UINT64_MAX;
    }
    return 0;
}

/*
 * Arrays of emptied buckets wait in a list threaded through themselves (a
 * bucket array holds at least 16 entries, room for the link), so the wheel
 * allocates only while the number of busy buckets grows: in steady state,
 * scheduling allocates nothing.
 */
struct spare {
    struct spare *next;
    uint32_t cap;
};
_Static_assert(sizeof(struct spare) <= 16 * sizeof(struct urio__timer),
               "a spare bucket array holds its link");

static void bucket_clear(urio_loop_t *loop, uint32_t bi)
{
    struct urio__tw_bucket *b = &loop->tw[bi];
    if (b->e != NULL) {
        struct spare *sp = (struct spare *)(void *)b->e;
        sp->next = loop->tw_spare;
        sp->cap = b->cap;
        loop->tw_spare = sp;
        b->e = NULL;
        b->cap = 0;
    }
    b->head = b->n = 0;
    b->sorted = true;
    b->min = UINT64_MAX;
    loop->tw_bits[bi / 64] &= ~(1ull << (bi % 64));
}

static int bucket_add(urio_loop_t *loop, uint32_t bi, const struct urio__timer *t)
{
    struct urio__tw_bucket *b = &loop->tw[bi];
    if (b->cap == 0 && loop->tw_spare != NULL) {
        struct spare *sp = loop->tw_spare;
        loop->tw_spare = sp->next;
        b->e = (struct urio__timer *)(void *)sp;
        b->cap = sp->cap;
    }
    if (URIO_UNLIKELY(b->n == b->cap)) {
        if (b->head > 0 && b->head >= b->n / 2) {
            /* Half of it already fired: slide down instead of growing. */
            memmove(b->e, b->e + b->head, (size_t)(b->n - b->head) * sizeof *b->e);
            b->n -= b->head;
            b->head = 0;
        } else {
            uint32_t cap = b->cap ? b->cap * 2 : 16;
            if (cap <= b->cap)
                return -ENOMEM;
            struct urio__timer *e = urio__realloc(b->e, (size_t)cap * sizeof *e);
            if (e == NULL)
                return -ENOMEM;
            b->e = e;
            b->cap = cap;
        }
    }
    /* Appending in order keeps a bucket sorted: the common case costs nothing. */
    if (b->sorted && b->n > b->head && before(t, &b->e[b->n - 1]))
        b->sorted = false;
    b->e[b->n++] = *t;
    if (t->when < b->min)
        b->min = t->when;
    loop->tw_bits[bi / 64] |= 1ull << (bi % 64);
    loop->tw_count++;
    return 0;
}

/* Adds t to the wheel if its tick is inside it, else to the heap. */
static int place(urio_loop_t *loop, const struct urio__timer *t)
{
    uint64_t tick = tick_of(t->when);
    if (tick < loop->tw_tick)
        tick = loop->tw_tick;           /* already due: the wheel's first bucket */
    if (tick - loop->tw_tick >= URIO__TW_BUCKETS)
        return heap_push(loop, t);
    return bucket_add(loop, (uint32_t)(tick & TW_MASK), t);
}

/* Moves heap entries that the wheel now spans into it. */
static void refill(urio_loop_t *loop)
{
    heap_trim(loop);
    while (loop->nheap > 0 && tick_of(loop->heap[0].when) < loop->tw_tick + URIO__TW_BUCKETS) {
        struct urio__timer t = loop->heap[0];
        uint64_t tick = tick_of(t.when);
        if (tick < loop->tw_tick)
            tick = loop->tw_tick;       /* overdue: the wheel's first bucket */
        if (bucket_add(loop, (uint32_t)(tick & TW_MASK), &t) < 0)
            return;     /* ENOMEM: it stays in the heap, fired from there later */
        heap_pop(loop);
        heap_trim(loop);
    }
}

/* The first non-empty bucket at or after tw_tick (tw_count must be > 0). */
static uint32_t first_bucket(const urio_loop_t *loop, uint64_t *tick)
{
    uint32_t pos = (uint32_t)(loop->tw_tick & TW_MASK);
    uint32_t w = pos / 64;
    uint64_t bits = loop->tw_bits[w] & (~0ull << (pos % 64));
    /* TW_WORDS + 1 steps: the last revisits the first word for bits below pos. */
    for (uint32_t k = 0; k <= TW_WORDS; k++) {
        if (bits) {
            uint32_t bi = w * 64 + (uint32_t)__builtin_ctzll(bits);
            *tick = loop->tw_tick + ((bi - pos) & TW_MASK);
            return bi;
        }
        w = (w + 1) % TW_WORDS;
        bits = loop->tw_bits[w];
    }
    *tick = UINT64_MAX;     /* can't happen while tw_count > 0 */
    return 0;
}

/* ------------------------------------------------------------------ */
/* The loop's interface                                                 */

int urio__timer_push(urio_loop_t *loop, uint64_t when, uint32_t slot, uint32_t gen)
{
    if (URIO_UNLIKELY(loop->tw == NULL) && wheel_make(loop) < 0)
        return -ENOMEM;
    if (loop->tw_count == 0) {
        /*
         * An empty wheel may start anywhere not after now, and not after the
         * heap's first timer (which may be overdue): the heap must stay
         * entirely beyond the wheel.
         */
        uint64_t start = tick_of(loop->now_cache);
        heap_trim(loop);
        if (loop->nheap > 0 && tick_of(loop->heap[0].when) < start)
            start = tick_of(loop->heap[0].when);
        if (start > loop->tw_tick) {
            loop->tw_tick = start;
            refill(loop);
        }
    }
    struct urio__timer t = { when, loop->timer_seq++, slot, gen };
    int ret = place(loop, &t);
    if (ret == 0)
        loop->timers++;
    return ret;
}

uint64_t urio__timer_next(urio_loop_t *loop)
{
    while (loop->tw_count > 0) {
        uint64_t tick;
        uint32_t bi = first_bucket(loop, &tick);
        struct urio__tw_bucket *b = &loop->tw[bi];
        if (!b->sorted)
            return b->min;  /* maybe a cancelled timer's: an early wake-up at worst */
        while (b->head < b->n && !live(loop, &b->e[b->head])) {
            b->head++;
            loop->tw_count--;
            loop->timers--;
            loop->timer_stale--;
        }
        if (b->head < b->n)
            return b->min = b->e[b->head].when;
        bucket_clear(loop, bi);
    }
    heap_trim(loop);
    return loop->nheap > 0 ? loop->heap[0].when : UINT64_MAX;
}

uint32_t urio__timer_fire(urio_loop_t *loop, uint64_t now)
{
    uint64_t now_tick = tick_of(now);
    uint32_t fired = 0;
    if (now > loop->now_cache)
        loop->now_cache = now;
    for (;;) {
        if (loop->tw_count == 0) {
            heap_trim(loop);
            if (loop->nheap == 0 || tick_of(loop->heap[0].when) > now_tick)
                break;
            /* The wheel is empty and the heap's first timer is due: turn to it. */
            loop->tw_tick = tick_of(loop->heap[0].when);
            refill(loop);
            if (loop->tw_count == 0)
                break;      /* out of memory for the bucket; next turn */
            continue;
        }
        uint64_t tick;
        uint32_t bi = first_bucket(loop, &tick);
        if (tick > now_tick)
            break;
        if (tick > loop->tw_tick) {
            loop->tw_tick = tick;
            refill(loop);
        }
        struct urio__tw_bucket *b = &loop->tw[bi];
        if (!b->sorted) {
            sort_timers(b->e + b->head, b->n - b->head);
            b->sorted = true;
        }
        while (b->head < b->n && b->e[b->head].when <= now) {
            struct urio__timer *t = &b->e[b->head];
            /*
             * Slots are touched in deadline order, which is random in memory:
             * fetch a few ahead so their misses overlap (measured: the miss
             * on the slot was most of the cost of firing a timer).
             */
            if (b->head + 8 < b->n)
                __builtin_prefetch(&loop->slots[b->e[b->head + 8].slot]);
            if (live(loop, t)) {
                struct urio__slot *s = &loop->slots[t->slot];
                /* If the FIFO cannot grow, the timer stays and fires next turn. */
                if (URIO_UNLIKELY(urio__ready_push(loop, s->fn, s->arg, s->site, t->slot + 1,
                                                   t->gen) == 0))
                    return fired;
                s->where = URIO__SLOT_READY;
                fired++;
            } else {
                loop->timer_stale--;
            }
            b->head++;
            loop->tw_count--;
            loop->timers--;
        }
        if (b->head < b->n) {
            b->min = b->e[b->head].when;
            break;          /* the rest of this tick is not due yet */
        }
        bucket_clear(loop, bi);
    }
    return fired;
}

uint32_t urio__timer_count_live(const urio_loop_t *loop)
{
    uint32_t n = 0;
    for (uint32_t i = 0; loop->tw && i < URIO__TW_BUCKETS; i++)
        for (uint32_t k = loop->tw[i].head; k < loop->tw[i].n; k++)
            n += live(loop, &loop->tw[i].e[k]);
    for (uint32_t k = 0; k < loop->nheap; k++)
        n += live(loop, &loop->heap[k]);
    return n;
}

/* Drops every stale entry, from the wheel and the heap. */
static void sweep(urio_loop_t *loop)
{
    for (uint32_t bi = 0; loop->tw && bi < URIO__TW_BUCKETS; bi++) {
        struct urio__tw_bucket *b = &loop->tw[bi];
        if (b->head == b->n)
            continue;
        uint32_t kept = 0;
        uint64_t min = UINT64_MAX;
        for (uint32_t k = b->head; k < b->n; k++) {
            if (!live(loop, &b->e[k]))
                continue;
            if (b->e[k].when < min)
                min = b->e[k].when;
            b->e[kept++] = b->e[k];     /* order kept: a sorted bucket stays sorted */
        }
        loop->tw_count -= (b->n - b->head) - kept;
        b->head = 0;
        b->n = kept;
        b->min = min;
        if (kept == 0)
            bucket_clear(loop, bi);
    }
    uint32_t n = 0;
    for (uint32_t i = 0; i < loop->nheap; i++)
        if (live(loop, &loop->heap[i]))
            loop->heap[n++] = loop->heap[i];
    loop->nheap = n;
    if (n > 1)
        for (uint32_t i = (n - 2) / ARITY + 1; i-- > 0;)
            sift_down(loop->heap, n, i);
    loop->timers = loop->tw_count + loop->nheap;
    loop->timer_stale = 0;
}

void urio__timer_cancelled(urio_loop_t *loop)
{
    loop->timer_stale++;
    if (loop->timer_stale >= 1024 && loop->timer_stale * 2 >= loop->timers)
        sweep(loop);
}

void urio__timer_free_all(urio_loop_t *loop)
{
    for (uint32_t i = 0; loop->tw && i < URIO__TW_BUCKETS; i++)
        urio__free(loop->tw[i].e);
    while (loop->tw_spare != NULL) {
        struct spare *sp = loop->tw_spare;
        loop->tw_spare = sp->next;
        urio__free(sp);
    }
    urio__free(loop->tw);
    urio__free(loop->heap);
    loop->tw = NULL;
    loop->heap = NULL;
    loop->nheap = loop->cap_heap = loop->tw_count = loop->timers = loop->timer_stale = 0;
}
