/*
 * lib/ring.h — the op layer over io_uring (ring.c is the only file that
 * talks to io_uring; everything else asks it for SQEs and gets completions).
 */
#ifndef URIO_RING_H
#define URIO_RING_H

#include "common.h"

#include <liburing.h>

/*
 * An op: one asynchronous operation in the ring.  It lives inside the object
 * that owns it (a stream, a task's wait slot, the loop's wake-up read) and
 * must stay alive, with every buffer the kernel may touch, until its final
 * completion: the one without IORING_CQE_F_MORE.  That includes after a
 * cancel: cancelling only asks the kernel to finish it early.
 */
typedef struct urio__op urio__op_t;
typedef void (*urio__op_complete_fn)(urio__op_t *op, int res, uint32_t cqe_flags);

enum urio__op_state {
    URIO__OP_IDLE = 0,      /* not in the ring */
    URIO__OP_INFLIGHT,      /* submitted (or queued in the SQ) */
    URIO__OP_CANCELLING,    /* in flight, and a cancel was sent */
};

struct urio__op {
    urio__op_complete_fn complete;   /* loop thread: called once per CQE */
    uint32_t slot;                   /* index in the ring's op table while in flight */
    uint8_t state;                   /* enum urio__op_state */
};

struct urio__op_entry {
    urio__op_t *op;                  /* NULL when free */
    uint32_t gen;                    /* bumped at every release: stale CQEs show */
    uint32_t next_free;
};

typedef struct urio__ring {
    struct io_uring uring;
    unsigned setup_flags;            /* what io_uring_setup accepted */
    unsigned features;               /* IORING_FEAT_* */
    bool enabled;                    /* IORING_SETUP_R_DISABLED lifted */
    bool defer_taskrun;              /* completions appear only when we enter */
    uint32_t sq_pending;             /* SQEs queued since the last enter: loop-local, no ring read */
    bool single_issuer;
    const void *issuer;              /* thread token of the ring's issuer, once enabled */
    struct urio__op_entry *ops;      /* slot 0 is reserved: user_data 0 means "ignore" */
    uint32_t nops, cap_ops, free_op;
    uint32_t inflight;               /* ops whose final CQE has not come */
    uint64_t enters;                 /* io_uring_enter calls made (statistics) */
    uint64_t cqes;                   /* CQEs reaped */
    uint32_t last_reaped;            /* CQEs reaped by the last urio__ring_reap */
} urio__ring_t;

int  urio__ring_init(urio__ring_t *r, unsigned entries);
void urio__ring_exit(urio__ring_t *r);
/*
 * Binds the ring to the calling thread (IORING_SETUP_SINGLE_ISSUER) the first
 * time; afterwards checks the caller is that thread.
 * Returns: 0, or -EPERM from another thread.
 */
int  urio__ring_bind(urio__ring_t *r);
/* An SQE, submitting queued ones to make room.  NULL with *err on failure. */
struct io_uring_sqe *urio__ring_sqe(urio__ring_t *r, int *err);
/*
 * An SQE for op; when the SQ is full, submits what is queued and retries.
 * The SQE's user_data is set: prepare it, but do not change user_data.
 * Returns: the SQE, or NULL with *err set (-ENOMEM for the op table, or the
 * submit error when the SQ stays full).
 */
struct io_uring_sqe *urio__op_sqe(urio__ring_t *r, urio__op_t *op, int *err);
/* Asks the kernel to cancel op; its own CQE still comes (-ECANCELED or its result). */
int  urio__op_cancel(urio__ring_t *r, urio__op_t *op);
/*
 * Submits queued SQEs and waits: wait_ns < 0 forever, 0 not at all, else at
 * most wait_ns.  Interrupted and busy waits return 0: the loop reaps and
 * comes back.  Returns: 0 or a negative errno that means the ring is broken.
 */
int  urio__ring_enter(urio__ring_t *r, int64_t wait_ns);
/* Reaps every CQE (flushing a CQ overflow), completing ops.  Returns: CQEs reaped. */
unsigned urio__ring_reap(urio__ring_t *r);
/*
 * Cancels every op in flight and waits for each one's final CQE (close, on
 * the issuer's thread).  Logs and gives up if the ring itself fails.
 */
void urio__ring_drain(urio__ring_t *r);
/*
 * Closing from a thread that is not the ring's issuer: tears the ring down
 * (the kernel cancels what is left) and completes every op still in the
 * table with -ECANCELED, so owners are told.  Frees the op table.
 */
void urio__ring_abandon(urio__ring_t *r);
/*
 * True if completions may be waiting without an enter: always on rings
 * without DEFER_TASKRUN, where the kernel posts them at any time.
 */
static inline bool urio__ring_cq_pending(const urio__ring_t *r)
{
    return io_uring_cq_ready(&r->uring) || io_uring_cq_has_overflow(&r->uring);
}
/*
 * Typed ops: submit op as one operation (queued in the SQ; the next enter
 * submits it).  Every buffer stays the owner's, alive until op's final CQE.
 * Returns: 0, or a negative errno (the op is then not in flight).
 * Offsets of -1 mean "the file position" where the kernel allows it.
 */
int urio__op_nop(urio__ring_t *r, urio__op_t *op);
int urio__op_timeout(urio__ring_t *r, urio__op_t *op, struct __kernel_timespec *ts);
int urio__op_read(urio__ring_t *r, urio__op_t *op, int fd, void *buf, unsigned len,
                  uint64_t off);
int urio__op_write(urio__ring_t *r, urio__op_t *op, int fd, const void *buf, unsigned len,
                   uint64_t off);

/*
 * Typed ops of the process pool (its workers' channels and exits), kept in
 * one block.  sendmsg and recvmsg: the msghdr, its iovecs and its control
 * buffer stay the owner's until op's CQE.  poll: a one-shot poll of fd for
 * `mask` (POLLIN...); res is the events that fired.
 */
struct msghdr;
int urio__op_sendmsg(urio__ring_t *r, urio__op_t *op, int fd, const struct msghdr *msg,
                     unsigned flags);
int urio__op_recvmsg(urio__ring_t *r, urio__op_t *op, int fd, struct msghdr *msg,
                     unsigned flags);
int urio__op_poll(urio__ring_t *r, urio__op_t *op, int fd, unsigned mask);

#endif
