/*
 * timer.c — the timer heap.
 *
 * A 4-ary min-heap of (deadline, sequence) entries: four children share a
 * cache line or two, so a pop touches half the levels of a binary heap.  The
 * sequence number keeps FIFO order among equal deadlines.  Entries carry the
 * slot's generation: cancelling a timer frees its slot at once and leaves a
 * stale entry that is skipped when it reaches the top, or dropped when stale
 * entries outnumber live ones (an O(n) rebuild, amortised by the cancels
 * that caused it).  No SQE per timer: the earliest deadline is the loop's
 * wait timeout.
 */
#include "internal.h"

#include <string.h>

#define ARITY 4

static inline bool before(const struct urio__timer *a, const struct urio__timer *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

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

int urio__timer_push(urio_loop_t *loop, uint64_t when, uint32_t slot, uint32_t gen)
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
    uint32_t i = loop->nheap++;
    loop->heap[i] = (struct urio__timer){ when, loop->timer_seq++, slot, gen };
    sift_up(loop->heap, i);
    return 0;
}

static inline bool entry_live(const urio_loop_t *loop, const struct urio__timer *t)
{
    return loop->slots[t->slot].gen == t->gen;
}

static void pop_top(urio_loop_t *loop)
{
    struct urio__timer *h = loop->heap;
    if (--loop->nheap > 0) {
        h[0] = h[loop->nheap];
        sift_down(h, loop->nheap, 0);
    }
}

uint64_t urio__timer_next(urio_loop_t *loop)
{
    while (loop->nheap > 0) {
        if (entry_live(loop, &loop->heap[0]))
            return loop->heap[0].when;
        pop_top(loop);
        loop->heap_stale--;
    }
    return UINT64_MAX;
}

uint32_t urio__timer_fire(urio_loop_t *loop, uint64_t now)
{
    uint32_t fired = 0;
    while (loop->nheap > 0 && loop->heap[0].when <= now) {
        struct urio__timer t = loop->heap[0];
        pop_top(loop);
        if (!entry_live(loop, &t)) {
            loop->heap_stale--;
            continue;
        }
        /*
         * The ready FIFO may need to grow; if it cannot, the timer goes back
         * and fires on a later turn rather than being lost.
         */
        if (URIO_UNLIKELY(urio__ready_push(loop, t.slot, t.gen) < 0)) {
            loop->heap[loop->nheap++] = t;
            sift_up(loop->heap, loop->nheap - 1);
            break;
        }
        fired++;
    }
    return fired;
}

void urio__timer_cancelled(urio_loop_t *loop)
{
    loop->heap_stale++;
    if (loop->heap_stale < 1024 || loop->heap_stale * 2 < loop->nheap)
        return;
    /* Stale entries dominate: keep the live ones and heapify them in place. */
    uint32_t n = 0;
    for (uint32_t i = 0; i < loop->nheap; i++)
        if (entry_live(loop, &loop->heap[i]))
            loop->heap[n++] = loop->heap[i];
    loop->nheap = n;
    loop->heap_stale = 0;
    if (n > 1)
        for (uint32_t i = (n - 2) / ARITY + 1; i-- > 0;)
            sift_down(loop->heap, n, i);
}

void urio__timer_free_all(urio_loop_t *loop)
{
    urio__free(loop->heap);
    loop->heap = NULL;
    loop->nheap = loop->cap_heap = loop->heap_stale = 0;
}
