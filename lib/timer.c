/*
 * timer.c — timers: urio_call_at/urio_call_later, their slots and handles,
 * and where they wait: a wheel of 1 ms buckets for the next ~4.3 s, and a
 * 4-ary heap for deadlines beyond it.
 *
 * Nothing is copied to grow: slots come in chunks of 1,024 that never move
 * (from huge-page arenas past the first 32: see URIO__SLOT_SMALL_CHUNKS in
 * timer.h), and a bucket is a list of 1 KiB chunks of entries (deadline,
 * slot, callback, argument), taken from and given back to a pool of spare
 * chunks.  Scheduling writes a slot and appends an entry: no ordering work.
 * When a bucket's tick comes due its entries are sorted into the *due run*
 * (one counting pass on the deadlines' top bits, finished by insertion;
 * stable, so FIFO among equal deadlines is insertion order: sort_bucket),
 * and firing walks the due run.  A bucket filled in deadline order, the
 * common case (equal delays), is not sorted at all.  Ordering stays exact:
 * a timer fires when the clock has passed its own deadline, not its
 * bucket's.
 * Deadlines past the wheel wait in the heap and move to the wheel as it
 * turns (invariant: every heap entry's tick is at or after tw_tick +
 * URIO__TW_BUCKETS, unless a move failed for memory; then timers of those
 * ticks go to the heap too, so FIFO order holds).
 *
 * Entries name their timer by slot and generation: cancelling frees the
 * slot at once and leaves a stale entry, skipped when reached, or dropped
 * when stale entries outnumber live ones (an O(n) sweep paid for by those
 * cancels).  While no stale entry is held (tm->stale == 0) and no timer was
 * cancelled after it came due (tm->ready_cancels == 0), firing and running
 * a timer only write its slot: slots come up in deadline order, at random
 * in memory, and after a sleep each read was a cache miss.  Generations
 * are 39 bits and a slot whose generations are used up is retired, so a
 * stale entry or handle never matches a later timer.
 *
 * Slack: a timer may fire up to max(the loop's slack, its delay / 1024,
 * capped at 100 ms) late — Linux's rule for poll and select timeouts (0.1%)
 * — so timers far ahead share wake-ups with their neighbours: on the 2-core
 * test VM a wake-up costs ~20-30 µs of CPU (a bare nanosleep as much), more
 * than firing 100 timers.  Each bucket keeps the least deadline + slack of its timers; the
 * loop sleeps until the least of those (urio__timer_wake).  No SQE per timer.
 */
#include "loop.h"

#include <string.h>

#define TW_MASK  (URIO__TW_BUCKETS - 1)
#define TW_WORDS (URIO__TW_BUCKETS / 64)
#define ARITY 4
#define SLOT_CHUNK (1u << URIO__SLOT_CHUNK_BITS)
#define MAX_SLACK_NS (100u * 1000u * 1000u)     /* Linux's MAX_SLACK */

static inline uint64_t tick_of(uint64_t when)
{
    return when >> URIO__TW_SHIFT;
}

static inline uint32_t slot_state(const struct urio__slot *s)
{
    return (uint32_t)(s->word >> URIO__SLOT_STATE_SHIFT) & 3u;
}

/* A slack in the units wheel entries keep it in (rounded down: never later). */
static inline uint32_t slack_units(uint64_t slack)
{
    uint64_t u = slack >> URIO__TW_SLACK_UNIT;
    return u > UINT32_MAX ? UINT32_MAX : (uint32_t)u;
}

static inline uint64_t units_slack(uint32_t u)
{
    return (uint64_t)u << URIO__TW_SLACK_UNIT;
}

static inline uint32_t key_slot(uint64_t key)
{
    return (uint32_t)(key & URIO__TIMER_MAX);
}

static inline uint64_t key_gen(uint64_t key)
{
    return key >> URIO__TIMER_SLOT_BITS;
}

/* The slot of a live entry, or NULL if its timer was cancelled since. */
static inline struct urio__slot *entry_slot(const urio__timers_t *tm, uint64_t key)
{
    struct urio__slot *s = urio__slot_at(tm, key_slot(key));
    return (s->word & URIO__TIMER_GEN_MASK) == key_gen(key) ? s : NULL;
}

static inline uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* ------------------------------------------------------------------ */
/* Sorting a bucket into the due run                                    */

/*
 * Stable insertion sort.  Returns: false if it gave up after `budget`
 * moves (a[] is then a permutation of its entries that still keeps equal
 * deadlines in their first order).
 */
static bool insertion_sort(struct urio__tw_entry *a, uint32_t n, uint64_t budget)
{
    for (uint32_t i = 1; i < n; i++) {
        if (a[i].when >= a[i - 1].when)
            continue;
        struct urio__tw_entry t = a[i];
        uint32_t j = i;
        for (; j > 0 && t.when < a[j - 1].when; j--)
            a[j] = a[j - 1];
        a[j] = t;
        uint64_t moved = i - j;
        if (moved >= budget)
            return false;
        budget -= moved;
    }
    return true;
}

/*
 * Stable LSD radix sort of x[0, n) on when - base, `bytes` bytes wide, with
 * y as the other buffer.  Returns: the buffer holding the result.
 */
static struct urio__tw_entry *radix_sort(struct urio__tw_entry *x, struct urio__tw_entry *y,
                                         uint32_t n, uint64_t base, uint32_t bytes)
{
    uint32_t count[8][256];
    memset(count, 0, bytes * sizeof count[0]);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t key = x[i].when - base;
        for (uint32_t d = 0; d < bytes; d++)
            count[d][(key >> (8 * d)) & 0xff]++;
    }
    struct urio__tw_entry *src = x, *dst = y;
    for (uint32_t d = 0; d < bytes; d++) {
        uint32_t *c = count[d];
        if (c[((src[0].when - base) >> (8 * d)) & 0xff] == n)
            continue;       /* every key has this byte: the pass would change nothing */
        uint32_t sum = 0;
        for (uint32_t v = 0; v < 256; v++) {
            uint32_t t = c[v];
            c[v] = sum;
            sum += t;
        }
        for (uint32_t i = 0; i < n; i++)
            dst[c[((src[i].when - base) >> (8 * d)) & 0xff]++] = src[i];
        struct urio__tw_entry *t = src;
        src = dst;
        dst = t;
    }
    return src;
}

#define SPREAD_BITS_MAX 11      /* sub-ranges of the spreading pass: 2^11 at most */

/*
 * Fetches all of a bucket chunk.  A bucket's chunks were filled at random
 * moments, among other buckets' chunks: each is on a page of its own, cold
 * after a sleep, and its five arrays are read side by side, where the
 * hardware prefetcher sees no stream.
 */
static inline void chunk_prefetch(const struct urio__tw_chunk *c)
{
    for (size_t o = 0; o < sizeof *c; o += 64)
        __builtin_prefetch((const char *)c + o);
}

/*
 * Sorts the n entries of bucket b by deadline, stably, into one of the two
 * buffers x and y.  Returns: the buffer holding the result.
 *
 * A bucket of up to a few thousand timers is spread in one counting pass
 * on the top bits of deadline - b->min, straight from its chunks, into about
 * as many sub-ranges as entries; the result is nearly sorted (an entry can
 * only be out of order within its sub-range), and an insertion sort ends
 * it in about one compare per entry.  Deadlines that crowd into a few
 * sub-ranges would make that quadratic: past a budget of moves, and for
 * bigger buckets, a radix sort on the low bytes (a bucket spans ~2^20 ns:
 * three byte-wide passes at most) does it.  Each step is stable, so FIFO
 * among equal deadlines is insertion order.
 */
static struct urio__tw_entry *sort_bucket(const struct urio__tw_bucket *b,
                                          struct urio__tw_entry *x, struct urio__tw_entry *y)
{
    uint32_t n = b->n, k = 0;
    uint64_t base = b->min, range = b->max - base;
    uint32_t range_bits = range == 0 ? 0 : 64 - (uint32_t)__builtin_clzll(range);
    uint32_t bits = n < 2 ? 1 : 32 - (uint32_t)__builtin_clz(n - 1);   /* 2^bits >= n */
    if (b->sorted || range == 0 || n <= 32 || bits > SPREAD_BITS_MAX + 2) {
        for (const struct urio__tw_chunk *c = b->first; c != NULL; c = c->next) {
            if (c->next != NULL)
                chunk_prefetch(c->next);
            for (uint32_t i = 0; i < c->n; i++)
                x[k++] = (struct urio__tw_entry){ c->when[i], c->key[i], c->fn[i], c->arg[i],
                                                  c->slack[i], 0 };
        }
        if (b->sorted || range == 0)
            return x;
        if (n <= 32) {
            insertion_sort(x, n, UINT64_MAX);
            return x;
        }
        return radix_sort(x, y, n, base, (range_bits + 7) / 8);
    }
    if (bits > SPREAD_BITS_MAX)
        bits = SPREAD_BITS_MAX;
    if (bits > range_bits)
        bits = range_bits;
    uint32_t shift = range_bits - bits;
    uint32_t count[1u << SPREAD_BITS_MAX];
    memset(count, 0, (sizeof count[0]) << bits);
    for (const struct urio__tw_chunk *c = b->first; c != NULL; c = c->next) {
        chunk_prefetch(c);      /* for the scatter pass below */
        for (uint32_t i = 0; i < c->n; i++)
            count[(c->when[i] - base) >> shift]++;
    }
    uint32_t sum = 0;
    for (uint32_t v = 0; v < (1u << bits); v++) {
        uint32_t t = count[v];
        count[v] = sum;
        sum += t;
    }
    for (const struct urio__tw_chunk *c = b->first; c != NULL; c = c->next)
        for (uint32_t i = 0; i < c->n; i++)
            x[count[(c->when[i] - base) >> shift]++] =
                (struct urio__tw_entry){ c->when[i], c->key[i], c->fn[i], c->arg[i],
                                         c->slack[i], 0 };
    if (insertion_sort(x, n, 4ull * n))
        return x;
    return radix_sort(x, y, n, base, (range_bits + 7) / 8);
}

/* ------------------------------------------------------------------ */
/* The far heap                                                         */

static inline bool heap_before(const struct urio__heap_entry *a, const struct urio__heap_entry *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void sift_up(struct urio__heap_entry *h, uint32_t i)
{
    struct urio__heap_entry t = h[i];
    while (i > 0) {
        uint32_t p = (i - 1) / ARITY;
        if (!heap_before(&t, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = t;
}

static void sift_down(struct urio__heap_entry *h, uint32_t n, uint32_t i)
{
    struct urio__heap_entry t = h[i];
    for (;;) {
        uint32_t c = i * ARITY + 1;
        if (c >= n)
            break;
        uint32_t best = c;
        uint32_t end = c + ARITY < n ? c + ARITY : n;
        for (uint32_t k = c + 1; k < end; k++)
            if (heap_before(&h[k], &h[best]))
                best = k;
        if (!heap_before(&h[best], &t))
            break;
        h[i] = h[best];
        i = best;
    }
    h[i] = t;
}

static int heap_push(urio__timers_t *tm, const struct urio__heap_entry *t)
{
    if (URIO_UNLIKELY(tm->nheap == tm->cap_heap)) {
        uint32_t cap = tm->cap_heap ? tm->cap_heap * 2 : 64;
        if (cap <= tm->cap_heap)
            return -ENOMEM;
        struct urio__heap_entry *h = urio__realloc(tm->heap, (size_t)cap * sizeof *h);
        if (h == NULL)
            return -ENOMEM;
        tm->heap = h;
        tm->cap_heap = cap;
    }
    if (tm->nheap == 0 || t->latest - t->when < tm->heap_min_slack)
        tm->heap_min_slack = t->latest - t->when;
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
        URIO_ASSERT(!heap_before(&tm->heap[k], &tm->heap[0]));
}

/* Drops cancelled entries from the heap's top. */
static void heap_trim(urio__timers_t *tm)
{
    while (tm->nheap > 0 && entry_slot(tm, tm->heap[0].key) == NULL) {
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
        tm->tw[i].min = tm->tw[i].min_latest = UINT64_MAX;
    }
    return 0;
}

static struct urio__tw_chunk *chunk_get(urio__timers_t *tm)
{
    struct urio__tw_chunk *c = tm->spare;
    if (c != NULL)
        tm->spare = c->next;
    else if ((c = urio__malloc(sizeof *c)) == NULL)
        return NULL;
    c->next = NULL;
    c->n = 0;
    return c;
}

/* Empties bucket bi, its chunks back to the pool. */
static void bucket_clear(urio__timers_t *tm, uint32_t bi)
{
    struct urio__tw_bucket *b = &tm->tw[bi];
    if (b->first != NULL) {
        b->last->next = tm->spare;
        tm->spare = b->first;
    }
    *b = (struct urio__tw_bucket){ .min = UINT64_MAX, .min_latest = UINT64_MAX,
                                   .sorted = true };
    tm->tw_bits[bi / 64] &= ~(1ull << (bi % 64));
}

static int due_reserve(urio__timers_t *tm, uint32_t n);

/*
 * Appends a timer to bucket bi.  Room to sort the bucket into the due run
 * (and merge it with what the run still holds) is made here, so firing
 * never needs memory.  Returns: 0 or -ENOMEM (nothing changed).
 */
static int bucket_add(urio__timers_t *tm, uint32_t bi, uint64_t when, uint64_t key,
                      uint64_t latest, urio_callback_fn fn, void *arg)
{
    struct urio__tw_bucket *b = &tm->tw[bi];
    uint32_t need = b->n + 1;
    if (bi == (uint32_t)(tm->tw_tick & TW_MASK))
        need += tm->due_n - tm->due_head;
    if (URIO_UNLIKELY(need > tm->due_cap) && due_reserve(tm, need) < 0)
        return -ENOMEM;
    struct urio__tw_chunk *c = b->last;
    if (URIO_UNLIKELY(c == NULL || c->n == URIO__TW_CHUNK)) {
        struct urio__tw_chunk *nc = chunk_get(tm);
        if (nc == NULL)
            return -ENOMEM;
        if (c != NULL)
            c->next = nc;
        else
            b->first = nc;
        b->last = c = nc;
    }
    c->when[c->n] = when;
    c->key[c->n] = key;
    c->fn[c->n] = fn;
    c->arg[c->n] = arg;
    c->slack[c->n++] = slack_units(latest - when);
    /* Appending in order keeps a bucket sorted: the common case costs nothing. */
    if (when >= b->max)
        b->max = when;
    else
        b->sorted = false;
    if (when < b->min)
        b->min = when;
    if (latest < b->min_latest)
        b->min_latest = latest;
    if (b->n++ == 0)
        tm->tw_bits[bi / 64] |= 1ull << (bi % 64);
    tm->tw_count++;
    return 0;
}

/* The bucket a deadline waits in, or -1 for the heap. */
static inline int64_t bucket_for(const urio__timers_t *tm, uint64_t when)
{
    uint64_t tick = tick_of(when);
    if (tick < tm->tw_tick)
        tick = tm->tw_tick;           /* already due: the wheel's first bucket */
    if (tick - tm->tw_tick >= URIO__TW_BUCKETS)
        return -1;
    /* A heap entry that a failed move left inside the wheel goes first. */
    if (URIO_UNLIKELY(tm->nheap > 0) && tick >= tick_of(tm->heap[0].when))
        return -1;
    return (int64_t)(tick & TW_MASK);
}

/* Moves heap entries that the wheel now spans into it. */
static void refill(urio__timers_t *tm)
{
    heap_trim(tm);
    while (tm->nheap > 0 && tick_of(tm->heap[0].when) < tm->tw_tick + URIO__TW_BUCKETS) {
        struct urio__heap_entry t = tm->heap[0];
        uint64_t tick = tick_of(t.when);
        if (tick < tm->tw_tick)
            tick = tm->tw_tick;       /* overdue: the wheel's first bucket */
        if (bucket_add(tm, (uint32_t)(tick & TW_MASK), t.when, t.key, t.latest, t.fn, t.arg) < 0)
            return;     /* ENOMEM: it stays in the heap; bucket_for routes its tick there */
        heap_pop(tm);
        heap_trim(tm);
    }
}

/*
 * The first non-empty bucket at offset >= from of the wheel (offsets count
 * ticks from tw_tick).  Returns: the bucket, *off its offset; or -1.
 */
static int64_t next_bucket(const urio__timers_t *tm, uint32_t from, uint32_t *off)
{
    if (from >= URIO__TW_BUCKETS)
        return -1;
    uint32_t pos = (uint32_t)(tm->tw_tick & TW_MASK);
    uint32_t start = (pos + from) & TW_MASK;
    uint32_t w = start / 64;
    uint64_t bits = tm->tw_bits[w] & (~0ull << (start % 64));
    /* TW_WORDS + 1 steps: the last revisits the first word for bits below start. */
    for (uint32_t k = 0; k <= TW_WORDS; k++) {
        if (bits) {
            uint32_t bi = w * 64 + (uint32_t)__builtin_ctzll(bits);
            uint32_t o = (bi - pos) & TW_MASK;
            if (o < from)
                return -1;  /* wrapped round to before `from`: none */
            *off = o;
            return bi;
        }
        w = (w + 1) % TW_WORDS;
        bits = tm->tw_bits[w];
    }
    return -1;
}

/* ------------------------------------------------------------------ */
/* The due run                                                          */

/* Makes both due buffers hold n entries.  Returns: 0 or -ENOMEM. */
static int due_reserve(urio__timers_t *tm, uint32_t n)
{
    if (n <= tm->due_cap)
        return 0;
    uint32_t cap = tm->due_cap ? tm->due_cap : 256;
    while (cap < n)
        cap *= 2;
    struct urio__tw_entry *due = urio__malloc((size_t)cap * sizeof *due);
    struct urio__tw_entry *tmp = urio__malloc((size_t)cap * sizeof *tmp);
    uint64_t *lat = urio__malloc((size_t)cap * sizeof *lat);
    if (due == NULL || tmp == NULL || lat == NULL) {
        urio__free(due);
        urio__free(tmp);
        urio__free(lat);
        return -ENOMEM;
    }
    uint32_t left = tm->due_n - tm->due_head;
    if (left)
        memcpy(due, tm->due + tm->due_head, (size_t)left * sizeof *due);
    if (left)
        memcpy(lat, tm->due_lat + tm->due_head, (size_t)left * sizeof *lat);
    urio__free(tm->due);
    urio__free(tm->tmp);
    urio__free(tm->due_lat);
    tm->due = due;
    tm->tmp = tmp;
    tm->due_lat = lat;
    tm->due_head = 0;
    tm->due_n = left;
    tm->due_cap = cap;
    return 0;
}

/*
 * The due run's wake-up bound: the least deadline + slack of its timers
 * from the head on.  The suffix minima are computed once per new run from
 * the entries alone (reading no slot: slots in deadline order are random in
 * memory, and this scan was 13% of a sparse run), so each firing pass finds
 * the bound of what it left in O(1).  It may be a cancelled timer's: an
 * early wake-up, never a late one.
 */
static void due_suffix(urio__timers_t *tm)
{
    uint64_t best = UINT64_MAX;
    for (uint32_t j = tm->due_n; j-- > tm->due_head;) {
        /* Slots in deadline order are random in memory: let the misses overlap. */
        uint64_t latest = sat_add(tm->due[j].when, units_slack(tm->due[j].slack));
        if (latest < best)
            best = latest;
        tm->due_lat[j] = best;
    }
}

static inline void due_bound(urio__timers_t *tm)
{
    tm->due_latest = tm->due_head < tm->due_n ? tm->due_lat[tm->due_head] : UINT64_MAX;
}

/*
 * Moves bucket bi (tw_tick's) into the due run: sorted, and merged behind
 * what the run still holds (stable: on equal deadlines the run's timers were
 * scheduled first).  The room was made when the timers were added.
 */
static void take_bucket(urio__timers_t *tm, uint32_t bi)
{
    struct urio__tw_bucket *b = &tm->tw[bi];
    uint32_t left = tm->due_n - tm->due_head, n = b->n;
    URIO_ASSERT(left + n <= tm->due_cap);
    if (tm->due_head > 0 && left > 0)
        memmove(tm->due, tm->due + tm->due_head, (size_t)left * sizeof *tm->due);
    /* Sorted in the run's free tail, or in tmp. */
    struct urio__tw_entry *r = sort_bucket(b, tm->due + left, tm->tmp);
    if (left == 0) {
        if (r == tm->tmp) {
            tm->tmp = tm->due;
            tm->due = r;
        }
    } else if (r == tm->tmp) {
        /* Merge from the back into due[0, left + n): tmp and due do not overlap. */
        struct urio__tw_entry *d = tm->due;
        int64_t l = (int64_t)left - 1, k = (int64_t)n - 1, o = (int64_t)(left + n) - 1;
        while (k >= 0) {
            if (l >= 0 && r[k].when < d[l].when)
                d[o--] = d[l--];
            else
                d[o--] = r[k--];
        }
    } else {
        /* The sorted bucket is due's tail: merge forwards into tmp, which becomes the run. */
        const struct urio__tw_entry *l = tm->due, *le = l + left, *re = r + n;
        struct urio__tw_entry *o = tm->tmp;
        while (l < le && r < re)
            *o++ = r->when < l->when ? *r++ : *l++;
        while (l < le)
            *o++ = *l++;
        while (r < re)
            *o++ = *r++;
        struct urio__tw_entry *t = tm->due;
        tm->due = tm->tmp;
        tm->tmp = t;
    }
    tm->due_head = 0;
    tm->due_n = left + n;
    /* The bucket's entries are the run's now: tw_count is unchanged. */
    bucket_clear(tm, bi);
    due_suffix(tm);
    due_bound(tm);
}

/* ------------------------------------------------------------------ */
/* Where timers wait                                                    */

static int timer_push(urio__timers_t *tm, uint64_t when, uint64_t key, uint64_t slack,
                      urio_callback_fn fn, void *arg)
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
    uint64_t latest = sat_add(when, slack);
    int64_t bi = bucket_for(tm, when);
    int ret;
    if (URIO_LIKELY(bi >= 0))
        ret = bucket_add(tm, (uint32_t)bi, when, key, latest, fn, arg);
    else
        ret = heap_push(tm, &(struct urio__heap_entry){ when, latest, tm->seq++, key, fn, arg });
    if (ret == 0)
        tm->count++;
    return ret;
}

uint64_t urio__timer_next(urio__timers_t *tm)
{
    uint64_t best = UINT64_MAX;
    /* Stale entries at the run's head are dropped on the way. */
    while (tm->due_head < tm->due_n) {
        if (entry_slot(tm, tm->due[tm->due_head].key) != NULL) {
            best = tm->due[tm->due_head].when;
            break;
        }
        tm->due_head++;
        tm->tw_count--;
        tm->count--;
        tm->stale--;
    }
    uint32_t off;
    int64_t bi = next_bucket(tm, 0, &off);
    if (bi >= 0 && tm->tw[bi].min < best)
        best = tm->tw[bi].min;      /* maybe a cancelled timer's: an early wake-up at worst */
    if (best == UINT64_MAX) {
        heap_trim(tm);
        if (tm->nheap > 0)
            best = tm->heap[0].when;
    }
    return best;
}

uint64_t urio__timer_wake(urio__timers_t *tm)
{
    uint64_t target = tm->due_head < tm->due_n ? tm->due_latest : UINT64_MAX;
    /* Buckets in tick order, while a timer in them could be due before the bound. */
    uint32_t off = 0;
    int64_t bi;
    while ((bi = next_bucket(tm, off, &off)) >= 0) {
        const struct urio__tw_bucket *b = &tm->tw[bi];
        if (b->min >= target)
            break;          /* and every later bucket's deadlines are later still */
        if (b->min_latest < target)
            target = b->min_latest;
        off++;
    }
    if (tm->nheap > 0) {
        uint64_t h = sat_add(tm->heap[0].when, tm->heap_min_slack);
        if (h < target)
            target = h;
    }
    return target;
}

/*
 * Fires the due run's timers due at `now`.  Returns: false if the ready
 * FIFO could not grow (the rest waits for the next turn).
 */
static bool fire_due(urio_loop_t *loop, uint64_t now, uint32_t *fired)
{
    urio__timers_t *tm = &loop->timers;
    const urio_site_t ***sites = tm->site_dir;
    uint32_t h = tm->due_head, n = tm->due_n;
    bool ok = true;
    /*
     * With no cancelled entry held anywhere, every entry is live and its
     * slot is written, never read: slots come up in deadline order, at
     * random in memory, and after a sleep a read is a cache miss per timer.
     */
    bool check = tm->stale != 0;
    while (h < n && tm->due[h].when <= now) {
        /* Fetch slots a few ahead, so their misses overlap. */
        if (h + 8 < n)
            __builtin_prefetch(urio__slot_at(tm, key_slot(tm->due[h + 8].key)), 1);
        const struct urio__tw_entry *e = &tm->due[h];
        uint64_t key = e->key;
        uint32_t idx = key_slot(key);
        struct urio__slot *s = urio__slot_at(tm, idx);
        if (URIO_UNLIKELY(check) && (s->word & URIO__TIMER_GEN_MASK) != key_gen(key)) {
            tm->stale--;        /* cancelled */
            tm->count--;
            h++;
            continue;
        }
        const urio_site_t *site = NULL;
        if (URIO_UNLIKELY(sites != NULL) && sites[idx >> URIO__SLOT_CHUNK_BITS] != NULL)
            site = sites[idx >> URIO__SLOT_CHUNK_BITS][idx & (SLOT_CHUNK - 1)];
        /* The FIFO entry's key is the handle id.  If the FIFO cannot grow,
         * the timer stays and fires next turn. */
        uint64_t id = (1ull << 63) | (key_gen(key) << URIO__TIMER_SLOT_BITS) | (idx + 1ull);
        if (URIO_UNLIKELY(urio__ready_push(&loop->ready, e->fn, e->arg, site, id) == 0)) {
            ok = false;
            break;
        }
        s->word = key_gen(key) | (uint64_t)URIO__SLOT_READY << URIO__SLOT_STATE_SHIFT;
        (*fired)++;
        tm->count--;
        h++;
    }
    tm->tw_count -= h - tm->due_head;
    tm->due_head = h;
    if (h == n)
        tm->due_head = tm->due_n = 0;
    else
        due_bound(tm);
    return ok;
}

uint32_t urio__timer_fire(urio_loop_t *loop, uint64_t now)
{
    urio__timers_t *tm = &loop->timers;
    uint64_t now_tick = tick_of(now);
    uint32_t fired = 0;
    if (now > tm->now_cache)
        tm->now_cache = now;
    if (URIO_UNLIKELY(tm->ready_cancels != 0) && urio__ready_count(&loop->ready) == 0)
        tm->ready_cancels = 0;  /* their FIFO entries are gone */
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
        /* Timers scheduled into the run's own tick (or overdue) join it first. */
        uint32_t bi = (uint32_t)(tm->tw_tick & TW_MASK);
        if (tm->tw[bi].n > 0)
            take_bucket(tm, bi);
        if (tm->due_head < tm->due_n) {
            if (!fire_due(loop, now, &fired))
                break;
            if (tm->due_head < tm->due_n)
                break;      /* the rest of this tick is not due yet */
        }
        uint32_t off;
        int64_t next = next_bucket(tm, 0, &off);
        if (next < 0) {
            URIO_ASSERT(tm->tw_count == 0);
            if (tm->tw_count != 0)
                break;
            continue;       /* the wheel is empty: the heap, above */
        }
        if (tm->tw_tick + off > now_tick)
            break;
        tm->tw_tick += off;
        refill(tm);
    }
    return fired;
}

uint32_t urio__timer_count_live(const urio__timers_t *tm)
{
    uint32_t n = 0;
    for (uint32_t j = tm->due_head; j < tm->due_n; j++)
        n += entry_slot(tm, tm->due[j].key) != NULL;
    for (uint32_t i = 0; tm->tw && i < URIO__TW_BUCKETS; i++)
        for (const struct urio__tw_chunk *c = tm->tw[i].first; c != NULL; c = c->next)
            for (uint32_t k = 0; k < c->n; k++)
                n += entry_slot(tm, c->key[k]) != NULL;
    for (uint32_t k = 0; k < tm->nheap; k++)
        n += entry_slot(tm, tm->heap[k].key) != NULL;
    return n;
}

/* Drops every stale entry, from the due run, the wheel and the heap. */
static void sweep(urio__timers_t *tm)
{
    uint32_t kept = 0;
    for (uint32_t j = tm->due_head; j < tm->due_n; j++)
        if (entry_slot(tm, tm->due[j].key) != NULL)
            tm->due[kept++] = tm->due[j];       /* order kept */
    tm->due_head = 0;
    tm->due_n = kept;
    due_suffix(tm);
    due_bound(tm);
    uint32_t tw_count = kept;
    for (uint32_t bi = 0; tm->tw && bi < URIO__TW_BUCKETS; bi++) {
        struct urio__tw_bucket *b = &tm->tw[bi];
        if (b->n == 0)
            continue;
        /* Compact in place, chunk by chunk, keeping the order. */
        struct urio__tw_chunk *wc = b->first;
        uint32_t wn = 0, n = 0;
        uint64_t min = UINT64_MAX, max = 0, min_latest = UINT64_MAX;
        for (struct urio__tw_chunk *c = b->first; c != NULL; c = c->next) {
            for (uint32_t k = 0; k < c->n; k++) {
                uint64_t key = c->key[k];
                if (entry_slot(tm, key) == NULL)
                    continue;
                uint64_t when = c->when[k];
                uint32_t slack = c->slack[k];
                urio_callback_fn fn = c->fn[k];
                void *arg = c->arg[k];
                if (wn == URIO__TW_CHUNK) {
                    wc->n = wn;
                    wc = wc->next;
                    wn = 0;
                }
                wc->when[wn] = when;
                wc->key[wn] = key;
                wc->fn[wn] = fn;
                wc->arg[wn] = arg;
                wc->slack[wn++] = slack;
                n++;
                if (when < min)
                    min = when;
                if (when > max)
                    max = when;
                uint64_t latest = sat_add(when, units_slack(slack));
                if (latest < min_latest)
                    min_latest = latest;
            }
        }
        if (n == 0) {
            bucket_clear(tm, bi);
            continue;
        }
        wc->n = wn;
        /* Chunks past the last one written go back to the pool. */
        if (wc->next != NULL) {
            struct urio__tw_chunk *rest = wc->next, *end = rest;
            while (end->next != NULL)
                end = end->next;
            end->next = tm->spare;
            tm->spare = rest;
            wc->next = NULL;
        }
        b->last = wc;
        b->n = n;
        b->min = min;
        b->max = max;       /* sorted stays as it was: the order is kept */
        b->min_latest = min_latest;
        tw_count += n;
    }
    tm->tw_count = tw_count;
    uint32_t n = 0;
    uint64_t min_slack = UINT64_MAX;
    for (uint32_t i = 0; i < tm->nheap; i++) {
        if (entry_slot(tm, tm->heap[i].key) == NULL)
            continue;
        if (tm->heap[i].latest - tm->heap[i].when < min_slack)
            min_slack = tm->heap[i].latest - tm->heap[i].when;
        tm->heap[n++] = tm->heap[i];
    }
    tm->nheap = n;
    tm->heap_min_slack = n ? min_slack : 0;
    if (n > 1)
        for (uint32_t i = (n - 2) / ARITY + 1; i-- > 0;)
            sift_down(tm->heap, n, i);
    tm->count = tm->tw_count + tm->nheap;
    tm->stale = 0;
}

int urio__timers_init(urio__timers_t *tm, uint64_t now)
{
    memset(tm, 0, sizeof *tm);
    tm->now_cache = now;
    tm->max_slots = URIO__TIMER_MAX;
    return 0;
}

void urio__timers_free(urio__timers_t *tm)
{
    for (uint32_t i = 0; tm->tw && i < URIO__TW_BUCKETS; i++)
        if (tm->tw[i].n > 0)
            bucket_clear(tm, i);
    while (tm->spare != NULL) {
        struct urio__tw_chunk *c = tm->spare;
        tm->spare = c->next;
        urio__free(c);
    }
    urio__free(tm->tw);
    urio__free(tm->heap);
    urio__free(tm->due);
    urio__free(tm->tmp);
    urio__free(tm->due_lat);
    uint32_t chunks = (tm->nslots + SLOT_CHUNK - 1) / SLOT_CHUNK;
    for (uint32_t k = 0; k < chunks; k++) {
        bool own = k < URIO__SLOT_SMALL_CHUNKS ||
                   (k - URIO__SLOT_SMALL_CHUNKS) % URIO__SLOT_ARENA_CHUNKS == 0;
        if (own)
            urio__free(tm->slot_dir[k]);    /* a chunk of its own, or an arena */
        if (tm->site_dir)
            urio__free(tm->site_dir[k]);
    }
    urio__free(tm->slot_dir);
    urio__free(tm->site_dir);
    urio__free(tm->free_stack);
    uint32_t max_slots = tm->max_slots;
    memset(tm, 0, sizeof *tm);
    tm->max_slots = max_slots;
}

/* ------------------------------------------------------------------ */
/* Slots and handles                                                    */

/* Makes room for one more chunk of slots (and its sites).  Returns: 0 or -ENOMEM. */
__attribute__((cold, noinline)) static int slots_grow(urio__timers_t *tm)
{
    uint32_t k = tm->nslots / SLOT_CHUNK;
    if (tm->nslots + SLOT_CHUNK > tm->free_cap) {
        uint32_t cap = tm->free_cap ? tm->free_cap * 2 : SLOT_CHUNK;
        uint64_t *fs = urio__realloc(tm->free_stack, (size_t)cap * sizeof *fs);
        if (fs == NULL)
            return -ENOMEM;
        tm->free_stack = fs;
        tm->free_cap = cap;
    }
    if (k == tm->slot_dir_cap) {
        uint32_t cap = tm->slot_dir_cap ? tm->slot_dir_cap * 2 : 16;
        struct urio__slot **d = urio__realloc(tm->slot_dir, (size_t)cap * sizeof *d);
        if (d == NULL)
            return -ENOMEM;
        tm->slot_dir = d;
        if (tm->site_dir != NULL) {
            const urio_site_t ***sd = urio__realloc(tm->site_dir, (size_t)cap * sizeof *sd);
            if (sd == NULL)
                return -ENOMEM;
            memset(sd + tm->slot_dir_cap, 0, (size_t)(cap - tm->slot_dir_cap) * sizeof *sd);
            tm->site_dir = sd;
        }
        tm->slot_dir_cap = cap;
    }
    struct urio__slot *c;
    if (k < URIO__SLOT_SMALL_CHUNKS) {
        c = urio__malloc(SLOT_CHUNK * sizeof *c);
    } else if ((k - URIO__SLOT_SMALL_CHUNKS) % URIO__SLOT_ARENA_CHUNKS == 0) {
        c = urio__huge_alloc(URIO__HUGE_PAGE);     /* a new arena; its first chunk */
    } else {
        c = tm->slot_dir[k - 1] + SLOT_CHUNK;     /* the next chunk of the arena */
    }
    if (c == NULL)
        return -ENOMEM;
    tm->slot_dir[k] = c;
    return 0;
}

/* Debug mode: remembers the site of slot i's timer for reports (best effort). */
__attribute__((cold, noinline)) static void site_set(urio__timers_t *tm, uint32_t i,
                                                     const urio_site_t *site)
{
    if (tm->site_dir == NULL) {
        tm->site_dir = urio__calloc(tm->slot_dir_cap, sizeof *tm->site_dir);
        if (tm->site_dir == NULL)
            return;         /* reports name the callback by its symbol instead */
    }
    uint32_t k = i >> URIO__SLOT_CHUNK_BITS;
    if (tm->site_dir[k] == NULL) {
        if (site == NULL)
            return;
        tm->site_dir[k] = urio__calloc(SLOT_CHUNK, sizeof *tm->site_dir[k]);
        if (tm->site_dir[k] == NULL)
            return;
    }
    tm->site_dir[k][i & (SLOT_CHUNK - 1)] = site;
}

__attribute__((cold, noinline)) static void limit_reached(urio__timers_t *tm, const char *name)
{
    if (tm->limit_logged)
        return;
    tm->limit_logged = true;
    urio__log(URIO_LOG_ERROR, "%s(): this loop already holds %u pending timers, the most one "
              "loop can hold (a handle has %d bits for the timer's slot): ENOMEM", name,
              tm->max_slots, URIO__TIMER_SLOT_BITS);
}

/* Takes a free slot for fn(arg).  Returns: its index, or -ENOMEM. */
static inline int64_t slot_alloc(urio__timers_t *tm, const char *name)
{
    uint32_t i;
    struct urio__slot *s;
    uint64_t gen;
    if (URIO_LIKELY(tm->nfree > 0)) {
        uint64_t f = tm->free_stack[--tm->nfree];
        i = (uint32_t)(f & URIO__TIMER_MAX);
        s = urio__slot_at(tm, i);
        gen = (f >> URIO__TIMER_SLOT_BITS) + 1;
    } else {
        if (URIO_UNLIKELY(tm->nslots - tm->retired >= tm->max_slots ||
                          tm->nslots >= URIO__TIMER_MAX)) {
            limit_reached(tm, name);
            return -ENOMEM;
        }
        if (URIO_UNLIKELY(tm->nslots % SLOT_CHUNK == 0) && slots_grow(tm) < 0)
            return -ENOMEM;
        i = tm->nslots++;
        s = urio__slot_at(tm, i);
        gen = 1;
    }
    URIO_ASSERT(gen & 1);
    s->word = gen | ((uint64_t)URIO__SLOT_WHEEL << URIO__SLOT_STATE_SHIFT);
    return i;
}

/* Frees a slot whose timer was never scheduled (its push failed). */
static void slot_unalloc(urio__timers_t *tm, uint32_t i)
{
    struct urio__slot *s = urio__slot_at(tm, i);
    urio__slot_free(tm, i, s, s->word & URIO__TIMER_GEN_MASK);
}

#define TIMER_BIT  (1ull << 63)

static inline urio_handle_t timer_handle(const urio_loop_t *loop, uint32_t slot, uint64_t gen)
{
    return (urio_handle_t){ TIMER_BIT | (gen << URIO__TIMER_SLOT_BITS) | (slot + 1ull),
                            loop->serial };
}

__attribute__((cold, noinline)) static urio_handle_t fail_handle(int err)
{
    errno = -err;
    return (urio_handle_t){ 0 };
}

/*
 * How late a timer scheduled `delay` ahead may fire: the loop's slack, or
 * 1/1024 of the delay (at most 100 ms) if that is more; 0 if the loop's
 * slack is 0 (exact wake-ups asked for).
 */
static inline uint64_t slack_for(const urio_loop_t *loop, uint64_t delay)
{
    uint64_t slack = loop->timer_slack_ns, prop = delay >> 10;
    if (prop > MAX_SLACK_NS)
        prop = MAX_SLACK_NS;
    return slack != 0 && prop > slack ? prop : slack;
}

/*
 * The delay a call_at gives is measured from the clock the loop last read
 * (at most a step old) while it runs, so scheduling reads no clock.
 */
static inline uint64_t loop_now(urio_loop_t *loop)
{
    if (atomic_load_explicit(&loop->owner, memory_order_relaxed) != NULL)
        return loop->timers.now_cache;
    return urio__loop_now(loop);
}

#define NOW_CACHED UINT64_MAX   /* call_at's `now`: take loop_now once the thread is checked */

static urio_handle_t call_at(urio_loop_t *loop, uint64_t when, uint64_t now,
                             urio_callback_fn fn, void *arg, const urio_site_t *site,
                             const char *name)
{
    if (URIO_UNLIKELY(loop == NULL || fn == NULL))
        return fail_handle(-EINVAL);
    if (URIO_UNLIKELY(!urio__loop_check_thread(loop, name)))
        return fail_handle(-EPERM);
    if (urio__loop_refuses(loop, name))
        return fail_handle(-ESHUTDOWN);
    urio__timers_t *tm = &loop->timers;
    if (now == NOW_CACHED)
        now = loop_now(loop);
    uint64_t slack = slack_for(loop, when > now ? when - now : 0);
    int64_t slot = slot_alloc(tm, name);
    if (URIO_UNLIKELY(slot < 0))
        return fail_handle(-ENOMEM);
    if (URIO_UNLIKELY(tm->site_dir != NULL || loop->debug))
        site_set(tm, (uint32_t)slot, loop->debug ? site : NULL);
    uint64_t gen = urio__slot_at(tm, (uint32_t)slot)->word & URIO__TIMER_GEN_MASK;
    if (URIO_UNLIKELY(timer_push(tm, when, (uint64_t)slot | gen << URIO__TIMER_SLOT_BITS,
                                 slack, fn, arg) < 0)) {
        slot_unalloc(tm, (uint32_t)slot);
        return fail_handle(-ENOMEM);
    }
    return timer_handle(loop, (uint32_t)slot, gen);
}

URIO_EXPORT urio_handle_t urio_call_at_site(urio_loop_t *loop, uint64_t when_ns,
                                            urio_callback_fn fn, void *arg,
                                            const urio_site_t *site)
{
    return call_at(loop, when_ns, NOW_CACHED, fn, arg, site, "urio_call_at");
}

URIO_EXPORT urio_handle_t urio_call_later_site(urio_loop_t *loop, uint64_t delay_ns,
                                               urio_callback_fn fn, void *arg,
                                               const urio_site_t *site)
{
    uint64_t now = loop != NULL ? urio__loop_now(loop) : 0;
    uint64_t when = sat_add(now, delay_ns);
    if (loop != NULL && loop->owner == urio__thread_token())
        loop->timers.now_cache = now;      /* a fresher start for the timer wheel */
    return call_at(loop, when, now, fn, arg, site, "urio_call_later");
}

#undef urio_call_at
URIO_EXPORT urio_handle_t urio_call_at(urio_loop_t *loop, uint64_t when_ns,
                                       urio_callback_fn fn, void *arg)
{
    return call_at(loop, when_ns, NOW_CACHED, fn, arg, NULL, "urio_call_at");
}

#undef urio_call_later
URIO_EXPORT urio_handle_t urio_call_later(urio_loop_t *loop, uint64_t delay_ns,
                                          urio_callback_fn fn, void *arg)
{
    return urio_call_later_site(loop, delay_ns, fn, arg, NULL);
}

bool urio__timer_cancel(urio__timers_t *tm, uint64_t id)
{
    uint64_t slot = (id & URIO__TIMER_MAX) - 1;
    uint64_t gen = (id >> URIO__TIMER_SLOT_BITS) & URIO__TIMER_GEN_MASK;
    if (slot >= tm->nslots || !(gen & 1))
        return false;
    struct urio__slot *s = urio__slot_at(tm, (uint32_t)slot);
    uint32_t state = slot_state(s);
    if ((s->word & URIO__TIMER_GEN_MASK) != gen ||
        (state != URIO__SLOT_WHEEL && state != URIO__SLOT_READY))
        return false;       /* ran or was cancelled */
    /*
     * Free the slot now.  Its entry in the wheel, the heap or the FIFO names
     * the old generation and is skipped when it comes up.
     */
    urio__slot_free(tm, (uint32_t)slot, s, gen);
    if (state == URIO__SLOT_READY)
        tm->ready_cancels++;    /* its FIFO entry must look at the slot now */
    if (state == URIO__SLOT_WHEEL) {
        tm->stale++;        /* the wheel counts its held entries */
        if (tm->stale >= 1024 && tm->stale * 2 >= tm->count)
            sweep(tm);
    }
    return true;
}
