/*
 * inbox.c — calls from other threads into a loop.
 *
 * The inbox is a lock-free MPSC queue (mpsc.h) of nodes taken from a
 * per-loop pool: a Treiber stack of free nodes whose head carries a tag
 * against ABA.  In steady state a call takes a node with one CAS, pushes it
 * with one exchange, and allocates nothing; the loop hands nodes back a
 * batch at a time, with one CAS.  (A per-thread node cache would save the
 * CAS, but a cache must outlive neither its thread nor the loop its nodes
 * belong to; the CAS costs a few ns uncontended.)  The pool grows, under a
 * mutex, only when it runs dry.
 *
 * The wake-up protocol (model-checked in tests/model/inbox.pml):
 *
 *   producer                          loop, before it waits in the kernel
 *   --------                          -----------------------------------
 *   exchange(back, node)   seq_cst    sleeping = 1                 seq_cst
 *   link prev -> node      release    if back != sentinel (or front does not
 *   if sleeping            seq_cst      show empty): sleeping = 0, no sleep
 *     and exchange(sleeping, 0) == 1  else wait (the eventfd read is armed)
 *       write(eventfd)                sleeping = 0
 *
 * Both sides store, then load the other's variable, with seq_cst: in the
 * single total order at least one sees the other.  Either the loop sees the
 * node and does not sleep, or the producer sees "sleeping" and writes the
 * eventfd, whose read is always armed in the ring.  The exchange on
 * `sleeping` makes many producers wake a sleeping loop once.
 *
 * Closing: `state` counts producers inside urio_call_soon_threadsafe, with
 * bit 31 meaning "closed".  A producer adds 1 and backs out if it sees the
 * bit; close sets the bit, then waits for the count to reach zero.  After
 * that no producer can push, every accepted call is linked, and close runs
 * them all: every accepted call runs exactly once.
 */
#include "loop.h"

#include <sched.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define CLOSED_BIT (1u << 31)
#define NODE_BASE  64u         /* chunk k holds NODE_BASE << k nodes */

/* ------------------------------------------------------------------ */
/* The node pool                                                        */

static inline urio__inbox_node_t *node_at(urio__inbox_t *ib, uint32_t idx)
{
    uint32_t k = 31u - (uint32_t)__builtin_clz(idx / NODE_BASE + 1);
    uint32_t first = NODE_BASE * ((1u << k) - 1);
    return atomic_load_explicit(&ib->chunks[k], memory_order_acquire) + (idx - first);
}

static inline uint64_t pack(uint32_t tag, uint32_t idx1)
{
    return ((uint64_t)tag << 32) | idx1;
}

/* Pushes the list first..last (linked by free_next) on the free stack. */
static void free_push(urio__inbox_t *ib, urio__inbox_node_t *first, urio__inbox_node_t *last)
{
    uint64_t old = atomic_load_explicit(&ib->free_head, memory_order_relaxed);
    uint64_t new;
    do {
        atomic_store_explicit(&last->free_next, (uint32_t)old, memory_order_relaxed);
        new = pack((uint32_t)(old >> 32) + 1, first->idx + 1);
    } while (!atomic_compare_exchange_weak_explicit(&ib->free_head, &old, new,
                                                    memory_order_release,
                                                    memory_order_relaxed));
}

/* Adds a chunk to the pool.  Returns: 0, or -ENOMEM. */
static int pool_grow(urio__inbox_t *ib)
{
    pthread_mutex_lock(&ib->grow_mu);
    int ret = 0;
    if ((uint32_t)atomic_load(&ib->free_head) != 0)
        goto out;           /* another producer grew it, or nodes came back */
    uint32_t k = ib->nchunks;
    if (k >= URIO__INBOX_CHUNKS) {
        ret = -ENOMEM;
        goto out;
    }
    uint32_t n = NODE_BASE << k, first = NODE_BASE * ((1u << k) - 1);
    urio__inbox_node_t *c = urio__calloc(n, sizeof *c);
    if (c == NULL) {
        ret = -ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) {
        c[i].idx = first + i;
        atomic_store_explicit(&c[i].free_next, i + 1 < n ? first + i + 2 : 0,
                              memory_order_relaxed);
    }
    /* Publish the chunk before any of its indices can be popped. */
    atomic_store_explicit(&ib->chunks[k], c, memory_order_release);
    ib->nchunks = k + 1;
    free_push(ib, &c[0], &c[n - 1]);
out:
    pthread_mutex_unlock(&ib->grow_mu);
    return ret;
}

static urio__inbox_node_t *pool_pop(urio__inbox_t *ib)
{
    for (;;) {
        uint64_t old = atomic_load_explicit(&ib->free_head, memory_order_acquire);
        while ((uint32_t)old != 0) {
            urio__inbox_node_t *n = node_at(ib, (uint32_t)old - 1);
            /* Maybe stale if another thread pops n first: then the tag differs and the CAS fails. */
            uint32_t next = atomic_load_explicit(&n->free_next, memory_order_relaxed);
            uint64_t new = pack((uint32_t)(old >> 32) + 1, next);
            if (atomic_compare_exchange_weak_explicit(&ib->free_head, &old, new,
                                                      memory_order_acquire,
                                                      memory_order_acquire))
                return n;
        }
        if (pool_grow(ib) < 0)
            return NULL;
    }
}

/* ------------------------------------------------------------------ */
/* The eventfd: always armed in the ring while the loop is open         */

static void efd_arm(urio_loop_t *loop);

static void efd_complete(urio__op_t *op, int res, uint32_t flags)
{
    (void)flags;
    urio__inbox_t *ib = urio__container_of(op, urio__inbox_t, efd_op);
    urio_loop_t *loop = urio__container_of(ib, urio_loop_t, inbox);
    if (res == -ECANCELED || loop->closing)
        return;
    if (res < 0 && res != -EAGAIN && res != -EINTR)
        urio__log(URIO_LOG_ERROR, "inbox: reading the wake-up eventfd failed: %s",
                  urio_strerror(res));
    efd_arm(loop);
}

bool urio__inbox_armed(urio_loop_t *loop)
{
    /* Not armed (arming failed for memory, say): try again before a sleep. */
    if (loop->inbox.efd_op.state == URIO__OP_IDLE)
        efd_arm(loop);
    return loop->inbox.efd_op.state != URIO__OP_IDLE;
}

static void efd_arm(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    int err = urio__op_read(&loop->ring, &ib->efd_op, ib->efd, &ib->efd_buf,
                            sizeof ib->efd_buf, 0);
    if (err < 0)
        urio__log(URIO_LOG_ERROR, "inbox: cannot arm the wake-up read (%s): the loop will "
                  "poll for cross-thread calls until it can", urio_strerror(err));
}

int urio__inbox_init(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    urio__mpsc_init(&ib->q);
    pthread_mutex_init(&ib->grow_mu, NULL);
    ib->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ib->efd < 0) {
        int err = -errno;
        pthread_mutex_destroy(&ib->grow_mu);
        return err;
    }
    ib->efd_op.complete = efd_complete;
    efd_arm(loop);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Producers                                                            */

/* Wakes the loop if it announced it sleeps; many producers, one write. */
static inline void wake(urio__inbox_t *ib)
{
    if (atomic_load_explicit(&ib->sleeping, memory_order_seq_cst) &&
        atomic_exchange_explicit(&ib->sleeping, 0, memory_order_seq_cst)) {
        uint64_t one = 1;
        /* EAGAIN: the counter is full, so the loop wakes anyway. */
        while (write(ib->efd, &one, sizeof one) < 0 && errno == EINTR)
            ;
    }
}

/* Enters as a producer.  Returns: false if the inbox is closed. */
static inline bool producer_enter(urio__inbox_t *ib)
{
    uint32_t s = atomic_fetch_add_explicit(&ib->state, 1, memory_order_seq_cst);
    if (URIO_UNLIKELY(s & CLOSED_BIT)) {
        atomic_fetch_sub_explicit(&ib->state, 1, memory_order_release);
        return false;
    }
    return true;
}

static inline void producer_leave(urio__inbox_t *ib)
{
    atomic_fetch_sub_explicit(&ib->state, 1, memory_order_release);
}

URIO_EXPORT int urio_call_soon_threadsafe(urio_loop_t *loop, urio_callback_fn fn, void *arg)
{
    if (loop == NULL || fn == NULL)
        return -EINVAL;
    urio__inbox_t *ib = &loop->inbox;
    if (!producer_enter(ib))
        return -ESHUTDOWN;
    urio__inbox_node_t *n = pool_pop(ib);
    if (URIO_UNLIKELY(n == NULL)) {
        producer_leave(ib);
        return -ENOMEM;
    }
    n->fn = fn;
    n->arg = arg;
    urio__mpsc_push(&ib->q, &n->link);
    wake(ib);
    producer_leave(ib);
    return 0;
}

int urio__inbox_push_node(urio_loop_t *loop, urio__inbox_node_t *n)
{
    urio__inbox_t *ib = &loop->inbox;
    if (!producer_enter(ib))
        return -ESHUTDOWN;
    n->idx = URIO__INBOX_FOREIGN;
    urio__mpsc_push(&ib->q, &n->link);
    wake(ib);
    producer_leave(ib);
    return 0;
}

/* ------------------------------------------------------------------ */
/* The loop's side                                                      */

/* Returns pool nodes first..last to the free stack (foreign nodes are their owners'). */
struct batch {
    urio__inbox_node_t *first, *last;
};

static inline void batch_add(struct batch *b, urio__inbox_node_t *n)
{
    if (n->idx == URIO__INBOX_FOREIGN)
        return;
    atomic_store_explicit(&n->free_next, b->first ? b->first->idx + 1 : 0, memory_order_relaxed);
    if (b->last == NULL)
        b->last = n;
    b->first = n;
}

uint32_t urio__inbox_drain(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    struct batch b = { NULL, NULL };
    uint32_t moved = 0;
    /*
     * Take only what was there when the drain began: producers that keep
     * pace with the loop must not keep it in this step, away from its timers
     * and I/O (the rest waits for the next turn, which will not sleep).
     */
    urio__mpsc_node_t *last = atomic_load_explicit(&ib->q.back, memory_order_acquire);
    bool busy = false;
    for (uint32_t budget = 65536; budget > 0; budget--) {
        urio__inbox_node_t *n = ib->held;
        /*
         * `last` is the sentinel when the consumer's own re-push of the sentinel was
         * the newest node: then everything before the sentinel is the snapshot,
         * and reaching the sentinel again is the end of it.
         */
        if (n == NULL && last == &ib->q.sentinel && ib->q.front == &ib->q.sentinel)
            break;
        if (n == NULL) {
            urio__mpsc_node_t *link = urio__mpsc_pop(&ib->q, &busy);
            if (link == NULL)
                break;      /* empty, or a push in progress: next turn */
            n = (urio__inbox_node_t *)(void *)link;
        }
        /* Copy it into the ready FIFO; if that cannot grow, hold it for the next turn. */
        if (urio__ready_push(&loop->ready, n->fn, n->arg, NULL, 0) == 0) {
            ib->held = n;
            break;
        }
        ib->held = NULL;
        bool was_last = &n->link == last;
        batch_add(&b, n);
        moved++;
        if (was_last)
            break;
    }
    if (b.first)
        free_push(ib, b.first, b.last);
    /*
     * A producer stopped between its two steps and nothing else to do: let it
     * run (it may share this CPU) rather than spin through empty turns.
     */
    if (busy && moved == 0 && urio__ready_count(&loop->ready) == 0)
        sched_yield();
    return moved;
}

uint32_t urio__inbox_run_accepted(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    struct batch b = { NULL, NULL };
    uint32_t ran = 0;
    /* What was accepted before now: everything up to the newest node pushed. */
    urio__mpsc_node_t *last = atomic_load_explicit(&ib->q.back, memory_order_acquire);
    for (;;) {
        urio__inbox_node_t *n = ib->held;
        ib->held = NULL;
        if (n == NULL && last == &ib->q.sentinel && ib->q.front == &ib->q.sentinel)
            break;      /* the snapshot ended at the sentinel (see urio__inbox_drain) */
        if (n == NULL) {
            bool busy;
            urio__mpsc_node_t *link = urio__mpsc_pop(&ib->q, &busy);
            if (link == NULL) {
                if (!busy)
                    break;
                sched_yield();  /* a producer of the snapshot is between its two steps */
                continue;
            }
            n = (urio__inbox_node_t *)(void *)link;
        }
        bool was_last = &n->link == last;
        urio_callback_fn fn = n->fn;
        void *arg = n->arg;     /* read first: a foreign node may be freed by the call */
        batch_add(&b, n);       /* a pool node goes back; its fields were read */
        fn(arg);
        ran++;
        if (was_last)
            break;
    }
    if (b.first)
        free_push(ib, b.first, b.last);
    return ran;
}

bool urio__inbox_sleep_begin(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    atomic_store(&ib->sleeping, 1);
    if (ib->held != NULL || urio__mpsc_nonempty(&ib->q, memory_order_seq_cst)) {
        atomic_store(&ib->sleeping, 0);
        return false;       /* a producer got in first: no sleep */
    }
    return true;
}

uint32_t urio__inbox_close(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    atomic_fetch_or_explicit(&ib->state, CLOSED_BIT, memory_order_seq_cst);
    /* Wait out producers inside a push: after this, every accepted call is linked. */
    while ((atomic_load_explicit(&ib->state, memory_order_acquire) & ~CLOSED_BIT) != 0)
        sched_yield();
    uint32_t ran = 0;
    for (;;) {
        urio__inbox_node_t *n = ib->held;
        ib->held = NULL;
        if (n == NULL) {
            bool busy;
            urio__mpsc_node_t *link = urio__mpsc_pop(&ib->q, &busy);
            if (link == NULL) {
                if (busy) {
                    sched_yield();
                    continue;   /* can't last: no producer is inside any more */
                }
                break;
            }
            n = (urio__inbox_node_t *)(void *)link;
        }
        urio_callback_fn fn = n->fn;
        void *arg = n->arg;     /* read first: a foreign node may be freed by the call */
        fn(arg);
        ran++;
    }
    return ran;                 /* the pool is freed whole: no need to return the nodes */
}

void urio__inbox_free(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    if (ib->efd >= 0)
        close(ib->efd);
    ib->efd = -1;
    for (uint32_t k = 0; k < ib->nchunks; k++)
        urio__free(atomic_load_explicit(&ib->chunks[k], memory_order_relaxed));
    ib->nchunks = 0;
    pthread_mutex_destroy(&ib->grow_mu);
}
