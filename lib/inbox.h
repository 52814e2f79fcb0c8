/*
 * lib/inbox.h — the cross-thread inbox (inbox.c): a lock-free MPSC queue of
 * nodes from a process-wide pool with per-thread magazines, and the loop's
 * wake-up.
 */
#ifndef URIO_INBOX_H
#define URIO_INBOX_H

#include "common.h"
#include "mpsc.h"
#include "ring.h"

#define URIO__INBOX_POOL    0u            /* a node of the process-wide pool */
#define URIO__INBOX_FOREIGN UINT32_MAX   /* a node owned by its pusher (an executor's job) */

typedef struct urio__inbox_node {
    urio__mpsc_node_t link;          /* first: the queue's node */
    urio_callback_fn fn;
    void *arg;
    uint32_t idx;                    /* URIO__INBOX_POOL or URIO__INBOX_FOREIGN */
    uint32_t pad;
} urio__inbox_node_t;

typedef struct urio__inbox {
    urio__mpsc_t q;                  /* back and front, each on its own line */
    /*
     * Read by every producer, written rarely: `sleeping` is set when the
     * loop is about to wait in the kernel (URIO__SLEEP_CLOSED once the
     * inbox is closed); `wakers` counts producers inside the eventfd write.
     */
    _Alignas(64) atomic_int sleeping;
    atomic_uint wakers;
    urio__mpsc_node_t closed;        /* not a node: `back` holds its address once closed */
    int efd;                         /* the eventfd the loop waits on */
    uint64_t efd_buf;                /* the kernel writes here: owned by the read op */
    urio__op_t efd_op;               /* the always-armed read of efd */
} urio__inbox_t;

#define URIO__SLEEP_CLOSED 2

int  urio__inbox_init(urio_loop_t *loop);
/* Moves calls accepted so far to the ready FIFO (at most a budget of them).  Returns: how many. */
uint32_t urio__inbox_drain(urio_loop_t *loop);
/*
 * Moves every call accepted so far to the ready FIFO, waiting out pushes in
 * progress: what urio_call_soon does before it appends, so that a call that
 * happened before it runs before it.  Returns: 0, or -ENOMEM (the FIFO
 * could not grow; nothing accepted is lost).
 */
int urio__inbox_drain_all(urio_loop_t *loop);
/* Runs every call accepted so far, at once, without closing (close's first pass). */
uint32_t urio__inbox_run_accepted(urio_loop_t *loop);
/* Closes the inbox to new calls and runs every accepted one.  Returns: how many ran. */
uint32_t urio__inbox_close(urio_loop_t *loop);
void urio__inbox_free(urio_loop_t *loop);
/*
 * True if calls wait in the inbox (relaxed: the sleep check uses seq_cst
 * itself).  Empty is back and front both at the sentinel; a drain that
 * stopped early leaves front elsewhere even when back is the sentinel.
 */
static inline bool urio__inbox_pending(urio__inbox_t *ib)
{
    return urio__mpsc_nonempty(&ib->q, memory_order_relaxed);
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
