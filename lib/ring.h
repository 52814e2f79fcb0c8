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
    struct __kernel_timespec *next_deadline;   /* urio__ring_deadline_next's, for the next typed op */
    bool probed;                     /* ops[] below was filled in */
    uint64_t ops_supported[4];       /* bit n: opcode n is supported (io_uring_get_probe_ring) */
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
 * True if the calling thread may enter the ring: it is enabled and this is
 * its issuer, or it has no single issuer.  Binds nothing (see urio__ring_bind).
 */
bool urio__ring_is_issuer(const urio__ring_t *r);
/*
 * True if the kernel supports `opcode` (IORING_OP_*), probed once per ring
 * (io_uring_get_probe_ring) the first time it is asked, on the issuer's
 * thread (binding the ring to the caller).  Unprobeable rings answer true
 * and leave the op's -EINVAL to tell.
 */
bool urio__ring_has_op(urio__ring_t *r, unsigned opcode);
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
 * A deadline for the next typed op submitted on r: a linked timeout
 * (IORING_OP_LINK_TIMEOUT, absolute, on CLOCK_MONOTONIC: urio_loop_time's
 * clock).  When it passes first, the op completes with -ECANCELED; the
 * timeout's own CQE is ignored.  Room for both SQEs is made now, so the pair
 * never splits across two submissions.  The kernel reads *ts when the SQEs
 * are submitted (the next enter): keep it in the op's owner.  If the next
 * typed op fails, the deadline is dropped with it.
 * Returns: 0, or a negative errno (no deadline armed).
 */
int urio__ring_deadline_next(urio__ring_t *r, struct __kernel_timespec *ts);

/*
 * Typed ops of the I/O layer (lib/io*.c) and the process pool.  Same rules: every pointer the op
 * is given (buffers, iovecs, msghdrs, sockaddrs, paths, statx) stays the
 * owner's and alive until op's final CQE.  res is what the system call of
 * the same name returns (a count, an fd, 0), or a negative errno.
 */
#define URIO__OP_BIND   56u     /* IORING_OP_BIND, 6.11: newer than Debian 12's headers */
#define URIO__OP_LISTEN 57u     /* IORING_OP_LISTEN, 6.11 */
struct statx;
int urio__op_recv(urio__ring_t *r, urio__op_t *op, int fd, void *buf, unsigned len, int flags);
int urio__op_send(urio__ring_t *r, urio__op_t *op, int fd, const void *buf, unsigned len,
                  int flags);
int urio__op_sendmsg(urio__ring_t *r, urio__op_t *op, int fd, const struct msghdr *msg,
                     unsigned flags);
int urio__op_recvmsg(urio__ring_t *r, urio__op_t *op, int fd, struct msghdr *msg,
                     unsigned flags);
/* A one-shot poll of fd for `mask` (POLLIN...); res is the events that fired. */
int urio__op_poll(urio__ring_t *r, urio__op_t *op, int fd, unsigned mask);
int urio__op_readv(urio__ring_t *r, urio__op_t *op, int fd, const struct iovec *iov,
                   unsigned n, uint64_t off);
int urio__op_writev(urio__ring_t *r, urio__op_t *op, int fd, const struct iovec *iov,
                    unsigned n, uint64_t off);
/* accept4(fd, addr, len, flags); with multishot, one CQE per connection (F_MORE while armed). */
int urio__op_accept(urio__ring_t *r, urio__op_t *op, int fd, struct sockaddr *addr,
                    socklen_t *addrlen, int flags, bool multishot);
int urio__op_connect(urio__ring_t *r, urio__op_t *op, int fd, const struct sockaddr *addr,
                     socklen_t addrlen);
int urio__op_socket(urio__ring_t *r, urio__op_t *op, int domain, int type, int protocol);
/* bind and listen: IORING_OP_BIND / LISTEN (6.11), filled in by hand (liburing 2.3 lacks them). */
int urio__op_bind(urio__ring_t *r, urio__op_t *op, int fd, const struct sockaddr *addr,
                  socklen_t addrlen);
int urio__op_listen(urio__ring_t *r, urio__op_t *op, int fd, int backlog);
int urio__op_shutdown(urio__ring_t *r, urio__op_t *op, int fd, int how);
int urio__op_close(urio__ring_t *r, urio__op_t *op, int fd);
int urio__op_openat(urio__ring_t *r, urio__op_t *op, int dfd, const char *path, int flags,
                    unsigned mode);
/* fsync(2) (flags 0) or fdatasync(2) (IORING_FSYNC_DATASYNC). */
int urio__op_fsync(urio__ring_t *r, urio__op_t *op, int fd, unsigned flags);
int urio__op_fallocate(urio__ring_t *r, urio__op_t *op, int fd, int mode, uint64_t off,
                       uint64_t len);
int urio__op_statx(urio__ring_t *r, urio__op_t *op, int dfd, const char *path, int flags,
                   unsigned mask, struct statx *out);
int urio__op_unlinkat(urio__ring_t *r, urio__op_t *op, int dfd, const char *path, int flags);
int urio__op_renameat(urio__ring_t *r, urio__op_t *op, int olddfd, const char *oldpath,
                      int newdfd, const char *newpath, unsigned flags);
int urio__op_mkdirat(urio__ring_t *r, urio__op_t *op, int dfd, const char *path, unsigned mode);

/*
 * A ring of provided buffers (IORING_REGISTER_PBUF_RING, 5.19): the kernel
 * picks a free buffer for each receive of an op submitted with its group
 * (urio__op_recv_multishot), and the CQE names it (IORING_CQE_F_BUFFER, the
 * id in the flags' upper 16 bits).  The owner gives each buffer back with
 * urio__bufring_recycle once it has copied the data out.  One mapping holds
 * the ring's entries and the buffers; liburing 2.3 has no
 * io_uring_setup_buf_ring, so ring.c maps and registers it by hand.
 * Loop thread only.
 */
typedef struct urio__bufring {
    struct io_uring_buf_ring *br;    /* the entries, shared with the kernel */
    unsigned char *bufs;             /* nbufs buffers of buf_size bytes */
    void *map;
    size_t map_size;
    uint32_t nbufs, buf_size;
    uint16_t bgid;
    bool registered;
} urio__bufring_t;

/*
 * Maps nbufs (a power of two, at most 32768) buffers of buf_size bytes,
 * registers them as group bgid and hands them all to the kernel.
 * Returns: 0; -EINVAL (sizes); -ENOMEM; the kernel's error (-EINVAL before
 * 5.19: the caller falls back to plain receives).
 */
int  urio__bufring_init(urio__ring_t *r, urio__bufring_t *b, uint16_t bgid, uint32_t nbufs,
                        uint32_t buf_size);
/* Unregisters (when r is still usable from this thread) and unmaps b. */
void urio__bufring_exit(urio__ring_t *r, urio__bufring_t *b);
static inline unsigned char *urio__bufring_buf(const urio__bufring_t *b, uint32_t bid)
{
    return b->bufs + (size_t)bid * b->buf_size;
}
/* Gives buffer bid back to the kernel. */
static inline void urio__bufring_recycle(urio__bufring_t *b, uint32_t bid)
{
    io_uring_buf_ring_add(b->br, urio__bufring_buf(b, bid), b->buf_size, (unsigned short)bid,
                          io_uring_buf_ring_mask(b->nbufs), 0);
    io_uring_buf_ring_advance(b->br, 1);
}
/*
 * A multishot receive (IORING_RECV_MULTISHOT, 6.0) into b's buffers: one CQE
 * per chunk received, F_MORE while it stays armed; a CQE without it (EOF's
 * 0, an error, -ENOBUFS when b ran dry) ends it.  A kernel without multishot
 * receive ends it at once with -EINVAL.
 */
int urio__op_recv_multishot(urio__ring_t *r, urio__op_t *op, int fd, const urio__bufring_t *b,
                            int flags);

#endif
