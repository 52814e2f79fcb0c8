/*
 * inbox.c — calls from other threads into a loop.
 *
 * This is the simple, correct version: a mutex-guarded array that the loop
 * swaps out whole, so a push allocates nothing once the array has grown.
 * The lock-free MPSC queue replaces it (issue 3); the wake-up protocol is
 * already the final one:
 *
 *   producer                          loop, before it waits in the kernel
 *   --------                          -----------------------------------
 *   push; pending++ (seq_cst)         sleeping = 1 (seq_cst)
 *   if sleeping (seq_cst)             if pending (seq_cst): sleeping = 0, don't wait
 *     and exchange(sleeping, 0) == 1    else wait (the eventfd read is armed)
 *       write(eventfd)                sleeping = 0
 *
 * Both sides store then load a different variable with seq_cst, so in the
 * single total order at least one sees the other's store: either the loop
 * sees the call and does not sleep, or the producer sees "sleeping" and
 * writes the eventfd.  The exchange makes many producers wake it once.
 */
#include "internal.h"

#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

static void efd_arm(urio_loop_t *loop);

/* The eventfd read completed: the loop is awake; re-arm for the next sleep. */
static void efd_complete(urio__op_t *op, int res, uint32_t flags)
{
    (void)flags;
    urio__inbox_t *ib = (urio__inbox_t *)((char *)op - offsetof(urio__inbox_t, efd_op));
    urio_loop_t *loop = (urio_loop_t *)((char *)ib - offsetof(urio_loop_t, inbox));
    if (res == -ECANCELED || loop->closing)
        return;
    if (res < 0 && res != -EAGAIN && res != -EINTR)
        urio__log(URIO_LOG_ERROR, "inbox: reading the wake-up eventfd failed: %s",
                  urio_strerror(res));
    efd_arm(loop);
}

static void efd_arm(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    int err = 0;
    struct io_uring_sqe *sqe = urio__op_sqe(&loop->ring, &ib->efd_op, &err);
    if (sqe == NULL) {
        urio__log(URIO_LOG_CRITICAL, "inbox: cannot arm the wake-up read (%s): "
                  "cross-thread calls will wait for the loop's next turn", urio_strerror(err));
        return;
    }
    uint64_t ud = sqe->user_data;
    io_uring_prep_read(sqe, ib->efd, &ib->efd_buf, sizeof ib->efd_buf, 0);
    io_uring_sqe_set_data64(sqe, ud);
}

int urio__inbox_init(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    pthread_mutex_init(&ib->mu, NULL);
    ib->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ib->efd < 0) {
        int err = -errno;
        pthread_mutex_destroy(&ib->mu);
        return err;
    }
    ib->efd_op.complete = efd_complete;
    efd_arm(loop);
    return 0;
}

URIO_EXPORT int urio_call_soon_threadsafe(urio_loop_t *loop, urio_callback_fn fn, void *arg)
{
    if (loop == NULL || fn == NULL)
        return -EINVAL;
    urio__inbox_t *ib = &loop->inbox;
    pthread_mutex_lock(&ib->mu);
    if (ib->closed) {
        pthread_mutex_unlock(&ib->mu);
        return -ESHUTDOWN;
    }
    if (ib->n == ib->cap) {
        uint32_t cap = ib->cap ? ib->cap * 2 : 64;
        struct urio__inbox_call *c = urio__realloc(ib->calls, (size_t)cap * sizeof *c);
        if (c == NULL) {
            pthread_mutex_unlock(&ib->mu);
            return -ENOMEM;
        }
        ib->calls = c;
        ib->cap = cap;
    }
    ib->calls[ib->n++] = (struct urio__inbox_call){ fn, arg };
    atomic_fetch_add(&ib->pending, 1);
    pthread_mutex_unlock(&ib->mu);

    if (atomic_load(&ib->sleeping) && atomic_exchange(&ib->sleeping, 0)) {
        uint64_t one = 1;
        /* EAGAIN means the counter is full: the loop will wake anyway. */
        while (write(ib->efd, &one, sizeof one) < 0 && errno == EINTR)
            ;
    }
    return 0;
}

uint32_t urio__inbox_drain(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    if (!urio__inbox_pending(ib))
        return 0;
    pthread_mutex_lock(&ib->mu);
    uint32_t moved = 0;
    for (; moved < ib->n; moved++) {
        struct urio__inbox_call c = ib->calls[moved];
        urio_handle_t h = urio__call_soon(loop, c.fn, c.arg, NULL);
        if (h.id == 0)
            break;      /* ENOMEM: the rest stay in the inbox for the next turn */
    }
    memmove(ib->calls, ib->calls + moved, (size_t)(ib->n - moved) * sizeof *ib->calls);
    ib->n -= moved;
    atomic_fetch_sub(&ib->pending, moved);
    pthread_mutex_unlock(&ib->mu);
    return moved;
}

uint32_t urio__inbox_close(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    pthread_mutex_lock(&ib->mu);
    ib->closed = true;
    pthread_mutex_unlock(&ib->mu);
    /* Closed: no producer touches calls[] any more; run what was accepted. */
    uint32_t n = ib->n;
    for (uint32_t i = 0; i < n; i++)
        ib->calls[i].fn(ib->calls[i].arg);
    ib->n = 0;
    atomic_store(&ib->pending, 0);
    return n;
}

void urio__inbox_free(urio_loop_t *loop)
{
    urio__inbox_t *ib = &loop->inbox;
    if (ib->efd >= 0)
        close(ib->efd);
    ib->efd = -1;
    urio__free(ib->calls);
    ib->calls = NULL;
    pthread_mutex_destroy(&ib->mu);
}
