/*
 * mpsc.h — an intrusive lock-free multi-producer single-consumer queue
 * (Dmitry Vyukov's design, written from its description; the always-present
 * dummy node he describes is the `sentinel` here).
 *
 * A push is one atomic exchange (or one compare-and-swap, when the queue
 * can be closed) and one store; a pop is plain loads and stores, plus one
 * exchange when the queue drains to its last node.  Nodes live in their
 * owners' memory; the queue never allocates.
 *
 * Memory ordering:
 * - push: the exchange on `back` is seq_cst.  It orders the node's fields
 *   (written before it) for the consumer, and it is the "store" half of the
 *   wake-up protocol in inbox.c: the producer loads `sleeping` after it, and
 *   the consumer stores `sleeping` before loading `back`, so one of them sees
 *   the other (seq_cst's single total order).
 * - push then links the previous node to the new one with a release store;
 *   the consumer's acquire load of `next` pairs with it, so a node's fields
 *   are visible once the consumer can reach it.
 * - Between the exchange and the link the queue is "in progress": `back`
 *   shows the new node but the chain does not reach it yet.  pop() then
 *   returns NULL with *busy set: the consumer must not treat the queue as
 *   empty (and must not sleep), and simply comes back on its next turn.  It
 *   never blocks on a producer and never drops a node.
 */
#ifndef URIO_MPSC_H
#define URIO_MPSC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct urio__mpsc_node {
    _Atomic(struct urio__mpsc_node *) next;
} urio__mpsc_node_t;

typedef struct urio__mpsc {
    _Alignas(64) _Atomic(urio__mpsc_node_t *) back;   /* producers: the newest node */
    _Alignas(64) urio__mpsc_node_t *front;            /* consumer only: the oldest */
    urio__mpsc_node_t sentinel;                           /* keeps the queue never-empty */
} urio__mpsc_t;

static inline void urio__mpsc_init(urio__mpsc_t *q)
{
    atomic_store_explicit(&q->sentinel.next, NULL, memory_order_relaxed);
    atomic_store_explicit(&q->back, &q->sentinel, memory_order_relaxed);
    q->front = &q->sentinel;
}

/* Any thread. */
static inline void urio__mpsc_push(urio__mpsc_t *q, urio__mpsc_node_t *n)
{
    atomic_store_explicit(&n->next, NULL, memory_order_relaxed);
    urio__mpsc_node_t *prev = atomic_exchange_explicit(&q->back, n, memory_order_seq_cst);
    atomic_store_explicit(&prev->next, n, memory_order_release);
}

/*
 * Any thread: pushes n unless `back` is `closed` (a value the consumer's
 * closer exchanged in, never a node).  One compare-and-swap when
 * uncontended, seq_cst like push's exchange (the wake-up protocol relies on
 * it); a closed queue is seen and refused in the same atomic step, so
 * every node pushed lies before the close point.  `back` is read with
 * acquire (a plain load on x86): a producer that sees it closed also sees
 * what the consumer did before its closing exchange (an executor's job,
 * refused, reads how the closing loop settled it).  Returns: false if closed.
 */
static inline bool urio__mpsc_push_open(urio__mpsc_t *q, urio__mpsc_node_t *n,
                                        urio__mpsc_node_t *closed)
{
    atomic_store_explicit(&n->next, NULL, memory_order_relaxed);
    urio__mpsc_node_t *prev = atomic_load_explicit(&q->back, memory_order_acquire);
    do {
        if (__builtin_expect(prev == closed, 0))
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&q->back, &prev, n, memory_order_seq_cst,
                                                    memory_order_acquire));
    atomic_store_explicit(&prev->next, n, memory_order_release);
    return true;
}

/*
 * True if a producer has pushed a node the consumer has not popped yet.
 * `order` is seq_cst for the wake-up protocol's check, relaxed elsewhere.
 */
static inline bool urio__mpsc_nonempty(urio__mpsc_t *q, memory_order order)
{
    return atomic_load_explicit(&q->back, order) != &q->sentinel || q->front != &q->sentinel;
}

/* Consumer only.  NULL when empty, or (with *busy true) while a push is in progress. */
static inline urio__mpsc_node_t *urio__mpsc_pop(urio__mpsc_t *q, bool *busy)
{
    urio__mpsc_node_t *front = q->front;
    urio__mpsc_node_t *next = atomic_load_explicit(&front->next, memory_order_acquire);
    *busy = false;
    if (front == &q->sentinel) {
        if (next == NULL) {
            /* Empty, unless a producer has exchanged but not linked yet. */
            *busy = atomic_load_explicit(&q->back, memory_order_acquire) != &q->sentinel;
            return NULL;
        }
        q->front = next;
        front = next;
        next = atomic_load_explicit(&front->next, memory_order_acquire);
    }
    if (next != NULL) {
        q->front = next;
        return front;
    }
    /* front is the last linked node: is it the newest one? */
    if (atomic_load_explicit(&q->back, memory_order_acquire) != front) {
        *busy = true;       /* a producer is between its exchange and its link */
        return NULL;
    }
    /* Put the sentinel behind it, so front can be handed out. */
    urio__mpsc_push(q, &q->sentinel);
    next = atomic_load_explicit(&front->next, memory_order_acquire);
    if (next != NULL) {
        q->front = next;
        return front;
    }
    *busy = true;           /* a producer got in between: its link is on its way */
    return NULL;
}

#endif
