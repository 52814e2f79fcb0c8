/*
 * inbox.c — calls from other threads into a loop.
 *
 * The inbox is a lock-free MPSC queue (mpsc.h).  A call takes a node, writes
 * fn and arg into it and pushes it with one compare-and-swap: in steady
 * state that is the only read-modify-write of the call, and `back` the only
 * shared line it writes besides the node.
 *
 * Nodes: one pool for the whole process, handed out through per-thread
 * magazines (the idea of jemalloc's tcache).  A magazine is an array of up
 * to 62 node pointers owned by one thread: a call pops one (no atomics); the
 * loop puts each node it consumed into its own thread's magazine (it writes
 * the pointer, not the node, so the node's line goes back to the producer
 * clean).  Full and empty magazines meet in two lock-free stacks (the
 * depot): one compare-and-swap per 62 calls on each side.  The pool grows
 * by 64 KiB mmap'd chunks and never shrinks: it holds at most the most
 * calls ever in flight at once in the process.  Being process-wide, nodes
 * belong to no loop, so a magazine can outlive the loops its nodes visited;
 * a thread's magazine goes back to the depot when the thread exits (a
 * pthread key's destructor).
 *
 * The wake-up protocol (model-checked in tests/model/inbox.pml):
 *
 *   producer                          loop, before it waits in the kernel
 *   --------                          -----------------------------------
 *   CAS(back, node)        seq_cst    sleeping = 1                 seq_cst
 *   link prev -> node      release    if back != sentinel (or front does not
 *   if sleeping            seq_cst      show empty): sleeping = 0, no sleep
 *     and CAS(sleeping, 1 -> 0)       else wait (the eventfd read is armed)
 *       write(eventfd)                sleeping = 0
 *
 * Both sides store, then load the other's variable, with seq_cst: in the
 * single total order at least one sees the other.  Either the loop sees the
 * node and does not sleep, or the producer sees "sleeping" and writes the
 * eventfd, whose read is always armed in the ring.  The CAS on `sleeping`
 * makes many producers wake a sleeping loop once.
 *
 * Closing: close exchanges `back` for the address of `closed`, which is
 * no node.  A push is a compare-and-swap that refuses to replace that
 * value (urio__mpsc_push_open): in one atomic step a producer either
 * pushes before the close point or sees the queue closed and gives up.  So
 * the fast path has no close counter at all, and close knows the last
 * accepted node: the value its exchange returned.  It runs every node up
 * to it, waiting out pushes still linking.  Then it sets `sleeping` to
 * SLEEP_CLOSED and waits out producers inside the eventfd write (a counter
 * only that rare path touches), so none writes to a closed fd.  Producers
 * that may call while the loop closes hold a reference (loop.h): the
 * inbox's memory stays valid, and they read the closed `back`.
 *
 * Async-signal safety: a call from a signal handler takes no lock and
 * calls no malloc: a handler that interrupted its own thread inside a
 * magazine operation (the `depth` guard) takes a node straight from the
 * depot; growth is mmap, with no lock; errno is saved and restored.  A
 * thread's first call stores its exit hook with pthread_setspecific, which
 * glibc does without allocating for the process's first 32 keys (the key is
 * made when urio is loaded).
 */
#include "loop.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* The node pool: process-wide, per-thread magazines                   */

#define MAG_NODES  62           /* a magazine is 512 bytes */
#define MAG_CHUNK  128          /* magazines per 64 KiB chunk */
#define MAG_DIR    4096         /* chunks of magazines at most: 524,288 magazines */
#define NODE_CHUNK_BYTES (64u * 1024u)

typedef struct mag {
    _Atomic uint32_t next;      /* in a stack: the index + 1 of the next magazine */
    uint32_t self;              /* its index */
    uint32_t n;                 /* nodes held: v[0, n) (owner only) */
    uint32_t pad;
    urio__inbox_node_t *v[MAG_NODES];
} mag_t;
_Static_assert(sizeof(mag_t) == 512, "a magazine is 512 bytes");

/*
 * The pool's one piece of global state.  The stacks' heads carry a tag
 * against ABA: tag << 32 | index + 1.
 */
static struct {
    _Alignas(64) _Atomic uint64_t full;     /* magazines holding nodes */
    _Alignas(64) _Atomic uint64_t empty;    /* magazines holding none */
    _Alignas(64) atomic_uint nchunks;       /* chunk numbers handed out */
    _Atomic(mag_t *) dir[MAG_DIR];
    pthread_key_t key;                      /* its destructor returns a thread's magazine */
    bool key_ok;
} g_pool;

/* The calling thread's magazine.  depth > 0 while it is being changed. */
static _Thread_local struct {
    mag_t *m;
    uint32_t depth;
    bool keyed;                 /* the exit destructor is registered */
} tls_pool __attribute__((tls_model("initial-exec")));

static inline mag_t *mag_at(uint32_t idx)
{
    return atomic_load_explicit(&g_pool.dir[idx / MAG_CHUNK], memory_order_acquire) +
           idx % MAG_CHUNK;
}

static void mstack_push(_Atomic uint64_t *head, mag_t *m)
{
    uint64_t old = atomic_load_explicit(head, memory_order_relaxed), new;
    do {
        atomic_store_explicit(&m->next, (uint32_t)old, memory_order_relaxed);
        new = ((uint64_t)((uint32_t)(old >> 32) + 1) << 32) | (m->self + 1u);
    } while (!atomic_compare_exchange_weak_explicit(head, &old, new, memory_order_release,
                                                    memory_order_relaxed));
}

static mag_t *mstack_pop(_Atomic uint64_t *head)
{
    uint64_t old = atomic_load_explicit(head, memory_order_acquire);
    while ((uint32_t)old != 0) {
        mag_t *m = mag_at((uint32_t)old - 1);
        /* Maybe stale if another thread pops m first: then the tag differs and the CAS fails. */
        uint32_t next = atomic_load_explicit(&m->next, memory_order_relaxed);
        uint64_t new = ((uint64_t)((uint32_t)(old >> 32) + 1) << 32) | next;
        if (atomic_compare_exchange_weak_explicit(head, &old, new, memory_order_acquire,
                                                  memory_order_acquire))
            return m;
    }
    return NULL;
}

/* A new chunk of empty magazines: returns one, the rest go on the empty stack. */
static mag_t *mags_grow(void)
{
    uint32_t k = atomic_fetch_add(&g_pool.nchunks, 1);
    if (k >= MAG_DIR)
        return NULL;
    mag_t *c = urio__pages_alloc(MAG_CHUNK * sizeof *c);
    if (c == NULL)
        return NULL;        /* chunk number k stays unused */
    for (uint32_t i = 0; i < MAG_CHUNK; i++) {
        c[i].self = k * MAG_CHUNK + i;
        c[i].n = 0;
    }
    /* Published before any of its indices can be in a stack. */
    atomic_store_explicit(&g_pool.dir[k], c, memory_order_release);
    for (uint32_t i = 1; i < MAG_CHUNK; i++)
        mstack_push(&g_pool.empty, &c[i]);
    return &c[0];
}

static mag_t *mag_empty(void)
{
    mag_t *m = mstack_pop(&g_pool.empty);
    if (m == NULL)
        m = mags_grow();
    if (m != NULL)
        m->n = 0;
    return m;
}

/* A new chunk of nodes, in full magazines: returns one, the rest go to the depot. */
static mag_t *nodes_grow(void)
{
    enum { PER_CHUNK = NODE_CHUNK_BYTES / sizeof(urio__inbox_node_t) };
    urio__inbox_node_t *c = urio__pages_alloc(NODE_CHUNK_BYTES);
    if (c == NULL)
        return NULL;
    mag_t *first = NULL;
    for (uint32_t i = 0; i + MAG_NODES <= PER_CHUNK; i += MAG_NODES) {
        mag_t *m = mag_empty();
        if (m == NULL)
            break;          /* the rest of the chunk stays unused */
        for (uint32_t k = 0; k < MAG_NODES; k++)
            m->v[k] = &c[i + MAG_NODES - 1 - k];    /* popped from the top: in address order */
        m->n = MAG_NODES;
        if (first == NULL)
            first = m;
        else
            mstack_push(&g_pool.full, m);
    }
    return first;
}

/* A full magazine from the depot, or a new one. */
static mag_t *mag_full(void)
{
    mag_t *m = mstack_pop(&g_pool.full);
    return m != NULL ? m : nodes_grow();
}

/* Thread exit: its magazine goes back to the depot. */
static void pool_thread_exit(void *arg)
{
    (void)arg;
    mag_t *m = tls_pool.m;
    tls_pool.m = NULL;
    if (m != NULL)
        mstack_push(m->n > 0 ? &g_pool.full : &g_pool.empty, m);
}

/*
 * The key is made when urio is loaded, not at a first call (which may be in
 * a signal handler): early, so it is one of the process's first 32 keys,
 * which glibc's pthread_setspecific stores without allocating.
 */
__attribute__((constructor)) static void pool_key_make(void)
{
    g_pool.key_ok = pthread_key_create(&g_pool.key, pool_thread_exit) == 0;
}

/* Arranges for this thread's magazine to go back at its exit. */
static void pool_key_set(void)
{
    tls_pool.keyed = true;
    if (g_pool.key_ok)
        pthread_setspecific(g_pool.key, &tls_pool);     /* non-NULL: the destructor runs */
}

/*
 * The slow half of node_get: the magazine is empty or missing, or a signal
 * handler interrupted this thread inside a magazine operation.  errno is
 * kept (mmap, pthread_once may set it).
 */
__attribute__((noinline)) static urio__inbox_node_t *node_get_slow(void)
{
    int saved = errno;
    urio__inbox_node_t *n = NULL;
    if (tls_pool.depth > 0) {
        /* Reentered from a signal handler: one node, straight from the depot. */
        mag_t *m = mag_full();
        if (m != NULL) {
            n = m->v[--m->n];
            mstack_push(m->n > 0 ? &g_pool.full : &g_pool.empty, m);
        }
        errno = saved;
        return n;
    }
    tls_pool.depth++;
    atomic_signal_fence(memory_order_seq_cst);
    if (!tls_pool.keyed)
        pool_key_set();
    mag_t *m = mag_full();
    if (m != NULL) {
        if (tls_pool.m != NULL)
            mstack_push(&g_pool.empty, tls_pool.m);
        tls_pool.m = m;
        n = m->v[--m->n];
    }
    atomic_signal_fence(memory_order_seq_cst);
    tls_pool.depth--;
    errno = saved;
    return n;
}

/*
 * Takes a node from this thread's magazine.  The depth guard goes up first:
 * a signal handler that interrupts the check or the pop sees it and keeps
 * off the magazine.
 */
static inline urio__inbox_node_t *node_get(void)
{
    urio__inbox_node_t *n = NULL;
    tls_pool.depth++;
    atomic_signal_fence(memory_order_seq_cst);
    mag_t *m = tls_pool.m;
    if (URIO_LIKELY(m != NULL && m->n > 0 && tls_pool.depth == 1))
        n = m->v[--m->n];
    atomic_signal_fence(memory_order_seq_cst);
    tls_pool.depth--;
    return URIO_LIKELY(n != NULL) ? n : node_get_slow();
}

__attribute__((noinline)) static void node_put_slow(urio__inbox_node_t *n)
{
    if (tls_pool.depth > 0) {
        /* Not expected (the loop does not consume in a signal handler): a magazine of one. */
        mag_t *m = mag_empty();
        if (m == NULL)
            return;     /* out of memory: the node is dropped, never reused */
        m->v[m->n++] = n;
        mstack_push(&g_pool.full, m);
        return;
    }
    tls_pool.depth++;
    atomic_signal_fence(memory_order_seq_cst);
    if (!tls_pool.keyed)
        pool_key_set();
    mag_t *m = tls_pool.m;
    if (m != NULL && m->n == MAG_NODES) {
        mstack_push(&g_pool.full, m);
        m = tls_pool.m = NULL;
    }
    if (m == NULL)
        m = tls_pool.m = mag_empty();
    if (m != NULL)
        m->v[m->n++] = n;       /* else: out of memory, the node is dropped */
    atomic_signal_fence(memory_order_seq_cst);
    tls_pool.depth--;
}

/* Gives a consumed pool node back, to this thread's magazine (depth: see node_get). */
static inline void node_put(urio__inbox_node_t *n)
{
    bool done = false;
    tls_pool.depth++;
    atomic_signal_fence(memory_order_seq_cst);
    mag_t *m = tls_pool.m;
    if (URIO_LIKELY(m != NULL && m->n < MAG_NODES && tls_pool.depth == 1)) {
        m->v[m->n++] = n;
        done = true;
    }
    atomic_signal_fence(memory_order_seq_cst);
    tls_pool.depth--;
    if (URIO_UNLIKELY(!done))
        node_put_slow(n);
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
    ib->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ib->efd < 0)
        return -errno;
    ib->efd_op.complete = efd_complete;
    efd_arm(loop);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Producers                                                            */

/*
 * The loop announced it sleeps: wake it, once for many producers.  Counted
 * in `wakers`, so that close does not close the eventfd under the write.
 */
__attribute__((noinline)) static void wake_slow(urio__inbox_t *ib)
{
    int saved = errno;
    atomic_fetch_add_explicit(&ib->wakers, 1, memory_order_seq_cst);
    int one_sleeping = 1;
    if (atomic_compare_exchange_strong_explicit(&ib->sleeping, &one_sleeping, 0,
                                                memory_order_seq_cst, memory_order_seq_cst)) {
        uint64_t one = 1;
        /* EAGAIN: the counter is full, so the loop wakes anyway. */
        while (write(ib->efd, &one, sizeof one) < 0 && errno == EINTR)
            ;
    }
    atomic_fetch_sub_explicit(&ib->wakers, 1, memory_order_release);
    errno = saved;
}

static inline void wake(urio__inbox_t *ib)
{
    if (URIO_UNLIKELY(atomic_load_explicit(&ib->sleeping, memory_order_seq_cst) == 1))
        wake_slow(ib);
}

URIO_EXPORT int urio_call_soon_threadsafe(urio_loop_t *loop, urio_callback_fn fn, void *arg)
{
    if (URIO_UNLIKELY(loop == NULL || fn == NULL))
        return -EINVAL;
    if (URIO_UNLIKELY(urio__loop_inherited(loop))) {
        urio__loop_refuse_inherited(loop, "urio_call_soon_threadsafe");
        return URIO_EFORKED;
    }
    urio__inbox_t *ib = &loop->inbox;
    urio__inbox_node_t *n = node_get();
    if (URIO_UNLIKELY(n == NULL))
        return -ENOMEM;
    n->fn = fn;
    n->arg = arg;
    n->idx = URIO__INBOX_POOL;
    if (URIO_UNLIKELY(!urio__mpsc_push_open(&ib->q, &n->link, &ib->closed))) {
        node_put(n);
        return -ESHUTDOWN;
    }
    wake(ib);
    return 0;
}

int urio__inbox_push_node(urio_loop_t *loop, urio__inbox_node_t *n)
{
    urio__inbox_t *ib = &loop->inbox;
    n->idx = URIO__INBOX_FOREIGN;
    if (!urio__mpsc_push_open(&ib->q, &n->link, &ib->closed))
        return -ESHUTDOWN;
    wake(ib);
    return 0;
}

/* ------------------------------------------------------------------ */
/* The loop's side                                                      */

/* Gives a consumed node back: a pool node to this thread's magazine. */
static inline void node_done(urio__inbox_node_t *n)
{
    if (n->idx == URIO__INBOX_POOL)
        node_put(n);
}

/* Pops one node of the queue, or NULL (*busy: a push is in progress). */
static inline urio__inbox_node_t *pop(urio__inbox_t *ib, bool *busy)
{
    return (urio__inbox_node_t *)(void *)urio__mpsc_pop(&ib->q, busy);
}

/*
 * Moves calls to the ready FIFO, up to the snapshot `last` of back taken
 * when the drain began, at most `budget` of them.  A push in progress stops
 * it, unless `wait` (then it yields until the push is linked).
 * Returns: how many moved; *full if the FIFO could not grow.
 */
static uint32_t drain_to(urio_loop_t *loop, urio__mpsc_node_t *last, uint32_t budget, bool wait,
                         bool *full, bool *busy)
{
    urio__inbox_t *ib = &loop->inbox;
    uint32_t moved = 0;
    *full = *busy = false;
    while (moved < budget) {
        /*
         * `last` is the sentinel when the consumer's own re-push of the sentinel was
         * the newest node: then everything before the sentinel is the snapshot,
         * and reaching the sentinel again is the end of it.
         */
        if (last == &ib->q.sentinel && ib->q.front == &ib->q.sentinel)
            break;
        /* Room first: a node, once popped, must go somewhere. */
        if (!urio__ready_make_room(&loop->ready)) {
            *full = true;
            break;
        }
        urio__inbox_node_t *n = pop(ib, busy);
        if (n == NULL) {
            if (*busy && wait) {
                sched_yield();  /* a producer of the snapshot is between its two steps */
                continue;
            }
            break;              /* empty, or a push in progress: next turn */
        }
        bool was_last = &n->link == last;
        /* Marked as the inbox's: close runs it if the loop never gets to. */
        urio__ready_push(&loop->ready, n->fn, n->arg, NULL, URIO__READY_INBOX);
        node_done(n);
        moved++;
        if (was_last)
            break;
    }
    return moved;
}

uint32_t urio__inbox_drain(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    /*
     * Take only what was there when the drain began: producers that keep
     * pace with the loop must not keep it in this step, away from its timers
     * and I/O (the rest waits for the next turn, which will not sleep).
     */
    urio__mpsc_node_t *last = atomic_load_explicit(&ib->q.back, memory_order_acquire);
    bool full, busy;
    uint32_t moved = drain_to(loop, last, 65536, false, &full, &busy);
    /*
     * A producer stopped between its two steps and nothing else to do: let it
     * run (it may share this CPU) rather than spin through empty turns.
     */
    if (busy && moved == 0 && urio__ready_count(&loop->ready) == 0)
        sched_yield();
    return moved;
}

int urio__inbox_drain_all(urio_loop_t *loop)
{
    urio__mpsc_node_t *last = atomic_load_explicit(&loop->inbox.q.back, memory_order_acquire);
    bool full, busy;
    drain_to(loop, last, UINT32_MAX, true, &full, &busy);
    return full ? -ENOMEM : 0;
}

/* Runs what the queue holds up to `last`, at once.  Returns: how many ran. */
static uint32_t run_to(urio__inbox_t *ib, urio__mpsc_node_t *last)
{
    uint32_t ran = 0;
    for (;;) {
        if (last == &ib->q.sentinel && ib->q.front == &ib->q.sentinel)
            break;      /* the snapshot ended at the sentinel (see drain_to) */
        bool busy;
        urio__inbox_node_t *n = pop(ib, &busy);
        if (n == NULL) {
            if (!busy)
                break;
            sched_yield();      /* a producer of the snapshot is between its two steps */
            continue;
        }
        bool was_last = &n->link == last;
        urio_callback_fn fn = n->fn;
        void *arg = n->arg;     /* read first: a foreign node may be freed by the call */
        node_done(n);           /* a pool node goes back; its fields were read */
        fn(arg);
        ran++;
        if (was_last)
            break;
    }
    return ran;
}

/* The node after n, once its pusher has linked it (it is between its two steps). */
static urio__mpsc_node_t *next_linked(urio__mpsc_node_t *n)
{
    urio__mpsc_node_t *next;
    while ((next = atomic_load_explicit(&n->next, memory_order_acquire)) == NULL)
        sched_yield();
    return next;
}

uint32_t urio__inbox_run_accepted(urio_loop_t *loop)
{
    /* Calls the loop drained but did not run yet came first. */
    uint32_t ran = urio__ready_run_inbox(loop);
    urio__inbox_t *ib = &loop->inbox;
    /* What was accepted before now: everything up to the newest node pushed. */
    return ran + run_to(ib, atomic_load_explicit(&ib->q.back, memory_order_acquire));
}

bool urio__inbox_sleep_begin(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    atomic_store(&ib->sleeping, 1);
    if (urio__mpsc_nonempty(&ib->q, memory_order_seq_cst)) {
        atomic_store(&ib->sleeping, 0);
        return false;       /* a producer got in first: no sleep */
    }
    return true;
}

uint32_t urio__inbox_close(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    /* The close point: no push gets past it, every node up to `last` was accepted. */
    urio__mpsc_node_t *last = atomic_exchange_explicit(&ib->q.back, &ib->closed,
                                                       memory_order_seq_cst);
    uint32_t ran = urio__ready_run_inbox(loop);
    /*
     * Walk from front to last (pop cannot: back is no node now), running each
     * node; last's next stays NULL, no push can follow it.
     */
    urio__mpsc_node_t *cur = ib->q.front;
    for (;;) {
        if (cur == &ib->q.sentinel) {
            if (cur == last)
                break;          /* nothing was accepted after the sentinel */
            cur = next_linked(cur);
            continue;
        }
        urio__inbox_node_t *n = (urio__inbox_node_t *)(void *)cur;
        urio__mpsc_node_t *next = cur == last ? NULL : next_linked(cur);
        urio_callback_fn fn = n->fn;
        void *arg = n->arg;     /* read first: a foreign node may be freed by the call */
        node_done(n);
        fn(arg);
        ran++;
        if (cur == last)
            break;
        cur = next;
    }
    ib->q.front = &ib->q.sentinel;
    /* No new wake-up starts; wait out those in progress before the eventfd closes. */
    atomic_store_explicit(&ib->sleeping, URIO__SLEEP_CLOSED, memory_order_seq_cst);
    while (atomic_load_explicit(&ib->wakers, memory_order_acquire) != 0)
        sched_yield();
    return ran;
}

void urio__inbox_free(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    if (ib->efd >= 0)
        close(ib->efd);
    ib->efd = -1;
}
