/*
 * lib/inbox.h — the cross-thread inbox (inbox.c): a lock-free MPSC queue of
 * pooled nodes, and the loop's wake-up.
 */
#ifndef URIO_INBOX_H
#define URIO_INBOX_H

#include "common.h"
#include "mpsc.h"
#include "ring.h"

#define URIO__INBOX_CHUNKS  24
#define URIO__INBOX_FOREIGN UINT32_MAX   /* a node owned by its pusher, not the pool */

typedef struct urio__inbox_node {
    urio__mpsc_node_t link;          /* first: the queue's node */
    urio_callback_fn fn;
    void *arg;
    _Atomic uint32_t free_next;      /* in the free stack: the next free index + 1 */
    uint32_t idx;                    /* index in the pool, or URIO__INBOX_FOREIGN */
} urio__inbox_node_t;

typedef struct urio__inbox {
    urio__mpsc_t q;
    /* Producers' hot words, each on its own line. */
    _Alignas(64) _Atomic uint64_t free_head;   /* the pool's free stack: tag << 32 | index + 1 */
    _Alignas(64) atomic_uint state;            /* producers inside a push | CLOSED_BIT */
    _Alignas(64) atomic_int sleeping;          /* the loop announced it is about to wait */
    /* The pool's chunks: chunk k holds 64 << k nodes; grown under grow_mu. */
    _Atomic(urio__inbox_node_t *) chunks[URIO__INBOX_CHUNKS];
    pthread_mutex_t grow_mu;
    uint32_t nchunks;                /* guarded by grow_mu */
    urio__inbox_node_t *held;        /* loop thread: popped, not yet moved (ENOMEM) */
    int efd;                         /* the eventfd the loop waits on */
    uint64_t efd_buf;                /* the kernel writes here: owned by the read op */
    urio__op_t efd_op;               /* the always-armed read of efd */
} urio__inbox_t;

int  urio__inbox_init(urio_loop_t *loop);
/* Moves every accepted call to the ready FIFO.  Returns: how many. */
uint32_t urio__inbox_drain(urio_loop_t *loop);
/* Runs every call accepted so far, at once, without closing (close's first pass). */
uint32_t urio__inbox_run_accepted(urio_loop_t *loop);
/* Closes the inbox to new calls and runs every accepted one.  Returns: how many ran. */
uint32_t urio__inbox_close(urio_loop_t *loop);
void urio__inbox_free(urio_loop_t *loop);
/* True if calls wait in the inbox (relaxed: the sleep check uses seq_cst itself). */
static inline bool urio__inbox_pending(urio__inbox_t *ib)
{
    return ib->held != NULL || urio__mpsc_nonempty(&ib->q, memory_order_relaxed);
}
/*
 * The loop is about to sleep in the kernel: announces it (producers then
 * wake it), unless calls came in first.  Returns: true if it may sleep;
 * false if it must not (calls are waiting: the announcement is withdrawn).
 */
bool urio__inbox_sleep_begin(urio_loop_t *loop);
/* The loop is awake again. */
static inline void urio__inbox_sleep_end(urio__inbox_t *ib)
{
    atomic_store(&ib->sleeping, 0);
}
/* True if the wake-up read is in the ring (re-arming it if it failed before). */
bool urio__inbox_armed(urio_loop_t *loop);
/* Pushes a node its owner made (an executor's completion): no pool, no allocation. */
int urio__inbox_push_node(urio_loop_t *loop, urio__inbox_node_t *n);

#endif
