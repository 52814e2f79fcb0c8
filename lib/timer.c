/*
 * timer.c — timers: urio_call_at/urio_call_later, their slots and handles,
 * and where they wait: a wheel of 1 ms buckets for the next ~4.3 s, and a
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
#include "loop.h"

#include <string.h>

#define TW_MASK  (URIO__TW_BUCKETS - 1)
#define TW_WORDS (URIO__TW_BUCKETS / 64)
#define ARITY 4


static inline bool before(const struct urio__timer *a, const struct urio__timer *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static inline bool live(const urio__timers_t *tm, const struct urio__timer *t)
{
    return tm->slots[t->slot].gen == t->gen;
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

static int heap_push(urio__timers_t *tm, const struct urio__timer *t)
{
    if (URIO_UNLIKELY(tm->nheap == tm->cap_heap)) {
        uint32_t cap = tm->cap_heap ? tm->cap_heap * 2 : 64;
        if (cap <= tm->cap_heap)
            return -ENOMEM;
        struct urio__timer *h = urio__realloc(tm->heap, (size_t)cap * sizeof *h);
        if (h == NULL)
            return -ENOMEM;
        tm->heap = h;
        tm->cap_heap = cap;
    }
    tm->heap[tm->nheap] = *t;
    sift_up(tm->heap, tm->nheap++);
    return 0;
}

static void heap_pop(urio__timers_t *tm)
{
    if (--tm->nheap > 0) {
        tm->heap[0] = tm->heap[tm->nheap];
        sift_down(tm->heap, tm->nheap, 0);
    }
    /* The heap property at its top: no child of the root comes before it. */
    for (uint32_t k = 1; k <= ARITY && k < tm->nheap; k++)
        URIO_ASSERT(!before(&tm->heap[k], &tm->heap[0]));
}

/* Drops cancelled entries from the heap's top. */
static void heap_trim(urio__timers_t *tm)
{
    while (tm->nheap > 0 && !live(tm, &tm->heap[0])) {
        heap_pop(tm);
        tm->count--;
        tm->stale--;
    }
}

/* ------------------------------------------------------------------ */
/* The wheel                                                            */

static int wheel_make(urio__timers_t *tm)
{
    tm->tw = urio__calloc(URIO__TW_BUCKETS, sizeof *tm->tw);
    if (tm->tw == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < URIO__TW_BUCKETS; i++) {
        tm->tw[i].sorted = true;
        tm->tw[i].min = UINT64_MAX;
    }
    return 0;
}

/*
 * Arrays of emptied buckets wait in a list threaded through themselves (a
 * bucket array holds at least 16 entries, room for the link), so the wheel
 * allocates only while the number of busy buckets grows: in steady state,
 * scheduling allocates nothing.
 */
struct urio__tw_spare {
    struct urio__tw_spare *next;
    uint32_t cap;
};
_Static_assert(sizeof(struct urio__tw_spare) <= 16 * sizeof(struct urio__timer),
               "a spare bucket array holds its link");

static void bucket_clear(urio__timers_t *tm, uint32_t bi)
{
    struct urio__tw_bucket *b = &tm->tw[bi];
    if (b->e != NULL) {
        struct urio__tw_spare *sp = (struct urio__tw_spare *)(void *)b->e;
        sp->next = tm->tw_spare;
        sp->cap = b->cap;
        tm->tw_spare = sp;
        b->e = NULL;
        b->cap = 0;
    }
    b->head = b->n = 0;
    b->sorted = true;
    b->min = UINT64_MAX;
    tm->tw_bits[bi / 64] &= ~(1ull << (bi % 64));
}

static int bucket_add(urio__timers_t *tm, uint32_t bi, const struct urio__timer *t)
{
    struct urio__tw_bucket *b = &tm->tw[bi];
    if (b->cap == 0 && tm->tw_spare != NULL) {
        struct urio__tw_spare *sp = tm->tw_spare;
        tm->tw_spare = sp->next;
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
    tm->tw_bits[bi / 64] |= 1ull << (bi % 64);
    tm->tw_count++;
    return 0;
}

/* Adds t to the wheel if its tick is inside it, else to the heap. */
static int place(urio__timers_t *tm, const struct urio__timer *t)
{
    uint64_t tick = tick_of(t->when);
    if (tick < tm->tw_tick)
        tick = tm->tw_tick;           /* already due: the wheel's first bucket */
    if (tick - tm->tw_tick >= URIO__TW_BUCKETS)
        return heap_push(tm, t);
    return bucket_add(tm, (uint32_t)(tick & TW_MASK), t);
}

/* Moves heap entries that the wheel now spans into it. */
static void refill(urio__timers_t *tm)
{
    heap_trim(tm);
    while (tm->nheap > 0 && tick_of(tm->heap[0].when) < tm->tw_tick + URIO__TW_BUCKETS) {
        struct urio__timer t = tm->heap[0];
        uint64_t tick = tick_of(t.when);
        if (tick < tm->tw_tick)
            tick = tm->tw_tick;       /* overdue: the wheel's first bucket */
        if (bucket_add(tm, (uint32_t)(tick & TW_MASK), &t) < 0)
            return;     /* ENOMEM: it stays in the heap, fired from there later */
        heap_pop(tm);
        heap_trim(tm);
    }
    /* The invariant: every heap entry lies beyond the wheel. */
    URIO_ASSERT(tm->nheap == 0 || tick_of(tm->heap[0].when) >= tm->tw_tick + URIO__TW_BUCKETS);
}

/* The first non-empty bucket at or after tw_tick (tw_count must be > 0). */
static uint32_t first_bucket(const urio__timers_t *tm, uint64_t *tick)
{
    uint32_t pos = (uint32_t)(tm->tw_tick & TW_MASK);
    uint32_t w = pos / 64;
    uint64_t bits = tm->tw_bits[w] & (~0ull << (pos % 64));
    /* TW_WORDS + 1 steps: the last revisits the first word for bits below pos. */
    for (uint32_t k = 0; k <= TW_WORDS; k++) {
        if (bits) {
            uint32_t bi = w * 64 + (uint32_t)__builtin_ctzll(bits);
            *tick = tm->tw_tick + ((bi - pos) & TW_MASK);
            return bi;
        }
        w = (w + 1) % TW_WORDS;
        bits = tm->tw_bits[w];
    }
    *tick = UINT64_MAX;     /* can't happen while tw_count > 0 */
    return 0;
}

/* ------------------------------------------------------------------ */
/* Where timers wait                                                    */

static int timer_push(urio__timers_t *tm, uint64_t when, uint32_t slot, uint32_t gen)
{
    if (URIO_UNLIKELY(tm->tw == NULL) && wheel_make(tm) < 0)
        return -ENOMEM;
    if (tm->tw_count == 0) {
        /*
         * An empty wheel may start anywhere not after now, and not after the
         * heap's first timer (which may be overdue): the heap must stay
         * entirely beyond the wheel.
         */
        uint64_t start = tick_of(tm->now_cache);
        heap_trim(tm);
        if (tm->nheap > 0 && tick_of(tm->heap[0].when) < start)
            start = tick_of(tm->heap[0].when);
        if (start > tm->tw_tick) {
            tm->tw_tick = start;
            refill(tm);
        }
    }
    struct urio__timer t = { when, tm->seq++, slot, gen };
    int ret = place(tm, &t);
    if (ret == 0)
        tm->count++;
    return ret;
}

uint64_t urio__timer_next(urio__timers_t *tm)
{
    while (tm->tw_count > 0) {
        uint64_t tick;
        uint32_t bi = first_bucket(tm, &tick);
        struct urio__tw_bucket *b = &tm->tw[bi];
        if (!b->sorted)
            return b->min;  /* maybe a cancelled timer's: an early wake-up at worst */
        while (b->head < b->n && !live(tm, &b->e[b->head])) {
            b->head++;
            tm->tw_count--;
            tm->count--;
            tm->stale--;
        }
        if (b->head < b->n) {
            URIO_ASSERT(b->min <= b->e[b->head].when);
            return b->min = b->e[b->head].when;
        }
        bucket_clear(tm, bi);
    }
    heap_trim(tm);
    return tm->nheap > 0 ? tm->heap[0].when : UINT64_MAX;
}

uint32_t urio__timer_fire(urio_loop_t *loop, uint64_t now)
{
    urio__timers_t *tm = &loop->timers;
    uint64_t now_tick = tick_of(now);
    uint32_t fired = 0;
    if (now > tm->now_cache)
        tm->now_cache = now;
    for (;;) {
        if (tm->tw_count == 0) {
            heap_trim(tm);
            if (tm->nheap == 0 || tick_of(tm->heap[0].when) > now_tick)
                break;
            /* The wheel is empty and the heap's first timer is due: turn to it. */
            tm->tw_tick = tick_of(tm->heap[0].when);
            refill(tm);
            if (tm->tw_count == 0)
                break;      /* out of memory for the bucket; next turn */
            continue;
        }
        uint64_t tick;
        uint32_t bi = first_bucket(tm, &tick);
        if (tick > now_tick)
            break;
        if (tick > tm->tw_tick) {
            tm->tw_tick = tick;
            refill(tm);
        }
        struct urio__tw_bucket *b = &tm->tw[bi];
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
                __builtin_prefetch(&tm->slots[b->e[b->head + 8].slot]);
            if (live(tm, t)) {
                struct urio__slot *s = &tm->slots[t->slot];
                /* If the FIFO cannot grow, the timer stays and fires next turn. */
                if (URIO_UNLIKELY(urio__ready_push(&loop->ready, s->fn, s->arg, s->site, t->slot + 1,
                                                   t->gen) == 0))
                    return fired;
                s->where = URIO__SLOT_READY;
                fired++;
            } else {
                tm->stale--;
            }
            b->head++;
            tm->tw_count--;
            tm->count--;
        }
        if (b->head < b->n) {
            b->min = b->e[b->head].when;
            break;          /* the rest of this tick is not due yet */
        }
        bucket_clear(tm, bi);
    }
    return fired;
}

uint32_t urio__timer_count_live(const urio__timers_t *tm)
{
    uint32_t n = 0;
    for (uint32_t i = 0; tm->tw && i < URIO__TW_BUCKETS; i++)
        for (uint32_t k = tm->tw[i].head; k < tm->tw[i].n; k++)
            n += live(tm, &tm->tw[i].e[k]);
    for (uint32_t k = 0; k < tm->nheap; k++)
        n += live(tm, &tm->heap[k]);
    return n;
}

/* Drops every stale entry, from the wheel and the heap. */
static void sweep(urio__timers_t *tm)
{
    for (uint32_t bi = 0; tm->tw && bi < URIO__TW_BUCKETS; bi++) {
        struct urio__tw_bucket *b = &tm->tw[bi];
        if (b->head == b->n)
            continue;
        uint32_t kept = 0;
        uint64_t min = UINT64_MAX;
        for (uint32_t k = b->head; k < b->n; k++) {
            if (!live(tm, &b->e[k]))
                continue;
            if (b->e[k].when < min)
                min = b->e[k].when;
            b->e[kept++] = b->e[k];     /* order kept: a sorted bucket stays sorted */
        }
        tm->tw_count -= (b->n - b->head) - kept;
        b->head = 0;
        b->n = kept;
        b->min = min;
        if (kept == 0)
            bucket_clear(tm, bi);
    }
    uint32_t n = 0;
    for (uint32_t i = 0; i < tm->nheap; i++)
        if (live(tm, &tm->heap[i]))
            tm->heap[n++] = tm->heap[i];
    tm->nheap = n;
    if (n > 1)
        for (uint32_t i = (n - 2) / ARITY + 1; i-- > 0;)
            sift_down(tm->heap, n, i);
    tm->count = tm->tw_count + tm->nheap;
    tm->stale = 0;
}

static void timer_cancelled(urio__timers_t *tm)
{
    tm->stale++;
    if (tm->stale >= 1024 && tm->stale * 2 >= tm->count)
        sweep(tm);
}

int urio__timers_init(urio__timers_t *tm, uint64_t now)
{
    memset(tm, 0, sizeof *tm);
    tm->cap_slots = 64;
    tm->slots = urio__malloc(tm->cap_slots * sizeof *tm->slots);
    tm->free_slots = urio__malloc(tm->cap_slots * sizeof *tm->free_slots);
    if (tm->slots == NULL || tm->free_slots == NULL) {
        urio__timers_free(tm);
        return -ENOMEM;
    }
    tm->now_cache = now;
    return 0;
}

void urio__timers_free(urio__timers_t *tm)
{
    for (uint32_t i = 0; tm->tw && i < URIO__TW_BUCKETS; i++)
        urio__free(tm->tw[i].e);
    while (tm->tw_spare != NULL) {
        struct urio__tw_spare *sp = tm->tw_spare;
        tm->tw_spare = sp->next;
        urio__free(sp);
    }
    urio__free(tm->tw);
    urio__free(tm->heap);
    urio__free(tm->slots);
    urio__free(tm->free_slots);
    tm->tw = NULL;
    tm->heap = NULL;
    tm->slots = NULL;
    tm->free_slots = NULL;
    tm->nheap = tm->cap_heap = tm->tw_count = tm->count = tm->stale = 0;
    tm->nslots = tm->nfree = tm->cap_slots = 0;
}

/* ------------------------------------------------------------------ */
/* Slots and handles                                                    */

static int slot_alloc(urio__timers_t *tm, urio_callback_fn fn, void *arg,
                      const urio_site_t *site, uint32_t *out)
{
    uint32_t i, gen;
    if (URIO_LIKELY(tm->nfree > 0)) {
        /* The stack holds the generation: allocating reads no cold slot. */
        struct urio__free_slot f = tm->free_slots[--tm->nfree];
        i = f.idx;
        gen = f.gen + 1;
    } else {
        if (tm->nslots == tm->cap_slots) {
            uint32_t cap = tm->cap_slots * 2;
            if (cap > (1u << URIO__TIMER_SLOT_BITS) - 1)
                return -ENOMEM;     /* a handle has 24 bits for the slot */
            struct urio__slot *s = urio__realloc(tm->slots, (size_t)cap * sizeof *s);
            if (s == NULL)
                return -ENOMEM;
            tm->slots = s;
            struct urio__free_slot *f = urio__realloc(tm->free_slots, (size_t)cap * sizeof *f);
            if (f == NULL)
                return -ENOMEM;     /* slots grew, cap_slots did not: harmless */
            tm->free_slots = f;
            tm->cap_slots = cap;
        }
        i = tm->nslots++;
        gen = 1;
    }
    URIO_ASSERT(gen & 1);
    tm->slots[i] = (struct urio__slot){ fn, arg, site, gen, URIO__SLOT_WHEEL };
    *out = i;
    return 0;
}

static void slot_release(urio__timers_t *tm, uint32_t i)
{
    uint32_t gen = ++tm->slots[i].gen;    /* even: free */
    URIO_ASSERT(!(gen & 1));
    tm->free_slots[tm->nfree++] = (struct urio__free_slot){ i, gen };
}

/*
 * A timer handle's id: bit 63, the slot's whole 32-bit generation and the
 * slot index + 1 (24 bits).
 */
#define TIMER_BIT  (1ull << 63)
#define SLOT_MASK  ((1ull << URIO__TIMER_SLOT_BITS) - 1)

static inline urio_handle_t timer_handle(uint32_t slot, uint32_t gen)
{
    return (urio_handle_t){ TIMER_BIT | ((uint64_t)gen << URIO__TIMER_SLOT_BITS) | (slot + 1ull) };
}

__attribute__((cold, noinline)) static urio_handle_t fail_handle(int err)
{
    errno = -err;
    return (urio_handle_t){ 0 };
}

static urio_handle_t call_at(urio_loop_t *loop, uint64_t when, urio_callback_fn fn, void *arg,
                             const urio_site_t *site, const char *name)
{
    if (URIO_UNLIKELY(loop == NULL || fn == NULL))
        return fail_handle(-EINVAL);
    if (URIO_UNLIKELY(!urio__loop_check_thread(loop, name)))
        return fail_handle(-EPERM);
    if (urio__loop_refuses(loop, name))
        return fail_handle(-ESHUTDOWN);
    urio__timers_t *tm = &loop->timers;
    uint32_t slot;
    if (URIO_UNLIKELY(slot_alloc(tm, fn, arg, site, &slot) < 0))
        return fail_handle(-ENOMEM);
    uint32_t gen = tm->slots[slot].gen;
    if (URIO_UNLIKELY(timer_push(tm, when, slot, gen) < 0)) {
        slot_release(tm, slot);
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
        loop->timers.now_cache = now;      /* a fresher start for the timer wheel */
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

bool urio__timer_cancel(urio__timers_t *tm, uint64_t id)
{
    uint64_t slot = (id & SLOT_MASK) - 1;
    uint32_t gen = (uint32_t)(id >> URIO__TIMER_SLOT_BITS);
    if (slot >= tm->nslots)
        return false;
    struct urio__slot *s = &tm->slots[slot];
    if (s->gen != gen || !(gen & 1))
        return false;       /* ran or was cancelled */
    /*
     * Free the slot now.  Its entry in the wheel, the heap or the FIFO names
     * the old generation and is skipped when it comes up.
     */
    bool in_wheel = s->where == URIO__SLOT_WHEEL;
    slot_release(tm, (uint32_t)slot);
    if (in_wheel)
        timer_cancelled(tm);    /* the wheel counts its stale entries */
    return true;
}
