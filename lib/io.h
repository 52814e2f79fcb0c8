/*
 * lib/io.h — what the I/O layer's files share (io.c: the engine and the io
 * subsystem; io_ops.c: the public operations; io_addr.c: addresses and name
 * resolution; io_stream.c: streams; io_server.c: servers and connections).
 *
 * The I/O layer sits on tasks and futures; it reaches the kernel only
 * through the ring's typed ops (ring.h) and the loop only through its
 * subsystem hooks (loop.h).  Loop thread only, unless a comment says
 * otherwise.
 */
#ifndef URIO_IO_INTERNAL_H
#define URIO_IO_INTERNAL_H

#include "task.h"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <urio/io.h>
#include <urio/stream.h>

/* ------------------------------------------------------------------ */
/* One operation, described                                             */

enum urio__io_code {
    URIO__IO_READ, URIO__IO_WRITE, URIO__IO_READV, URIO__IO_WRITEV,
    URIO__IO_RECV, URIO__IO_SEND, URIO__IO_RECVMSG, URIO__IO_SENDMSG,
    URIO__IO_ACCEPT, URIO__IO_CONNECT, URIO__IO_SOCKET, URIO__IO_BIND, URIO__IO_LISTEN,
    URIO__IO_SHUTDOWN, URIO__IO_CLOSE, URIO__IO_OPENAT, URIO__IO_FSYNC, URIO__IO_FALLOCATE,
    URIO__IO_STATX, URIO__IO_UNLINKAT, URIO__IO_RENAMEAT, URIO__IO_MKDIRAT, URIO__IO_POLL,
};

/* The arguments of one operation: what the public calls fill in. */
typedef struct urio__io_args {
    uint8_t code;                /* enum urio__io_code */
    int fd;                      /* the fd, or the dirfd */
    int fd2;                     /* renameat's newdirfd; socket's type */
    int flags;                   /* msg flags, open flags, statx flags, accept flags... */
    unsigned num;                /* a mode, a mask, how, a backlog, a sockaddr's length */
    int64_t off;                 /* a file offset (-1: the file position), fallocate's offset */
    int64_t len;                 /* a buffer's length (-1: over INT_MAX), an iovec count,
                                    fallocate's length */
    void *ptr;                   /* a buffer, iovecs, a msghdr, a sockaddr, a statx */
    void *ptr2;                  /* accept's socklen_t * */
    const char *path, *path2;
    uint64_t deadline;           /* 0, or absolute on urio__now's clock */
} urio__io_args_t;

typedef struct urio__io urio__io_t;

/*
 * An operation in flight.  The task form keeps it on the task's stack (the
 * task stays parked until the final CQE); the future form inside its future
 * (a future kind), which the op holds a reference on until the final CQE.
 * Either way it and what its args point to live until the kernel lets go.
 */
typedef struct urio__io_req {
    urio__op_t op;
    struct __kernel_timespec ts; /* the deadline, read by the kernel at submit */
    urio__io_args_t a;
    urio__io_t *io;
    urio__task_t *task;          /* the task form: the parked task */
    urio_future_t *f;            /* the future form */
    int res;
    bool cancel_asked;           /* the owner cancelled: -ECANCELED is not a time-out */
    char *cancel_msg;            /* the future form: the cancel's message (urio__malloc'd) */
} urio__io_req_t;

/*
 * A task parked on an I/O object (a stream's reader or drainer, a server's
 * wait_closed) until the object wakes it, with a deadline's timer.
 * Arm (reserve the task's wake-up, start the timer: fn(arg) at deadline,
 * none when 0), then park; the object wakes it with why it woke (0,
 * -ECANCELED, -ETIMEDOUT, -EBADF); the timer's callback clears `timer`
 * first.  Loop thread.
 */
typedef struct urio__io_waiter {
    urio__task_t *task;          /* NULL: nobody waits */
    urio_handle_t timer;
    int why;
} urio__io_waiter_t;

int  urio__io_waiter_arm(urio_loop_t *loop, urio__io_waiter_t *w, urio__task_t *t,
                         uint64_t deadline, urio_callback_fn fn, void *arg,
                         const urio_site_t *site);     /* 0, -ENOMEM, or the timer's error */
int  urio__io_waiter_park(urio__io_waiter_t *w, urio__cancel_hook_fn on_cancel, void *arg);
void urio__io_waiter_wake(urio_loop_t *loop, urio__io_waiter_t *w, int why);

/*
 * Checks an operation's arguments.  Returns: 0, -EBADF, -EINVAL.
 * Any thread (pure).
 */
int urio__io_check(const urio__io_args_t *a);
/*
 * The task form: runs the operation, parking the running task until its
 * final CQE.  Returns: the CQE's result (-ETIMEDOUT when the deadline
 * passed), or -EPERM outside a task, -ECANCELED for a task already
 * cancelled, the argument check's or the submission's error.
 */
int urio__io_run(urio__io_args_t *a);
/* The future form.  Returns: a new reference, or NULL with errno. */
urio_future_t *urio__io_submit(urio_loop_t *loop, urio__io_args_t *a);

/* ------------------------------------------------------------------ */
/* The io subsystem's state on a loop                                   */

struct urio__io {
    urio_loop_t *loop;
    pid_t pid;                   /* the process that made it: a forked child may close freely */
    uint32_t inflight;           /* ops of this layer whose final CQE has not come */
    urio__bufring_t bufs;        /* provided buffers for streams' multishot receives */
    uint8_t bufs_state;          /* URIO__BUFS_* */
    bool no_recv_multishot;      /* the kernel refused IORING_RECV_MULTISHOT once */
    bool no_accept_multishot;    /* ... or multishot accept */
    struct urio_stream *streams; /* every stream not freed (open, or closing) */
    struct urio_server *servers; /* every server not freed */
    struct urio__resolve *orphans;   /* name lookups whose task gave up waiting */
    uint32_t nstreams;
};

enum { URIO__BUFS_UNTRIED, URIO__BUFS_READY, URIO__BUFS_NONE };

#define URIO__BUF_COUNT 256u         /* provided buffers per loop */
#define URIO__BUF_SIZE  16384u       /* bytes each: 4 MiB of receive buffers per loop */

/* Tests only: 1 forces the fallbacks (one-shot receive and accept, no buffer ring). */
extern int urio__io_force_fallback;

/* The loop's io state, registering the subsystem at first use.  NULL on ENOMEM/ESHUTDOWN. */
urio__io_t *urio__io_get(urio_loop_t *loop);
/* The provided-buffer ring, set up at first use; NULL where the kernel has none. */
urio__bufring_t *urio__io_bufs(urio__io_t *io);

static inline void urio__io_op_started(urio__io_t *io)
{
    io->inflight++;
}

static inline void urio__io_op_done(urio__io_t *io)
{
    io->inflight--;
}

/* Sets this thread's I/O error message (urio_io_error_message); returns err. */
int urio__io_fail(int err, const char *fmt, ...) URIO_PRINTF(2, 3);
void urio__io_clear_message(void);

/* Logs that `fn` was called outside a task (cold). */
void urio__io_no_task(const char *fn);
/* The running task, or NULL after logging that `fn` needs one. */
static inline urio__task_t *urio__io_task(const char *fn)
{
    urio__task_t *t = urio__task_running();
    if (URIO_UNLIKELY(t == NULL))
        urio__io_no_task(fn);
    return t;
}

/* ------------------------------------------------------------------ */
/* io_addr.c: addresses and name resolution                             */

/* "127.0.0.1:80", "[::1]:80", "unix:/path" into buf. */
const char *urio__addr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t n);

/*
 * Resolves host:port in the running task: numeric hosts at once, names by
 * getaddrinfo in the loop's default executor, waited for until deadline (0:
 * none).  host NULL or "" with passive gives the wildcard addresses.
 * Returns: 0 with *out (freeaddrinfo it), URIO_ENOHOST, -EAGAIN (a
 * temporary failure), -ETIMEDOUT, -ECANCELED, -EINVAL, -ENOMEM; failures
 * set the message, naming the host.
 */
int urio__resolve(const char *host, int port, bool passive, uint64_t deadline,
                  struct addrinfo **out);
/* Frees the lookups whose jobs are over (all: at release, the executor is shut down). */
void urio__resolve_sweep(urio__io_t *io, bool all);

/* ------------------------------------------------------------------ */
/* io_stream.c: streams                                                 */

/* A growable byte buffer; the one a send is in flight on is never resized. */
typedef struct urio__wbuf {
    unsigned char *p;
    size_t len, sent, cap;
} urio__wbuf_t;

enum { URIO__R_IDLE, URIO__R_ARMED, URIO__R_STOPPING };
enum { URIO__X_NONE, URIO__X_SHUTDOWN, URIO__X_CLOSE };

struct urio_stream {
    urio__io_t *io;
    urio_loop_t *loop;
    int fd;                      /* -1 once closed */
    uint32_t refs;               /* the owner's until close, one per op in flight, one per
                                    parked reader or drainer, a server connection's */
    /* Receiving: the kernel writes into the loop's provided buffers (or into
     * rchunk), never into rbuf, which is copied into and may move. */
    urio__op_t rop;
    uint8_t rstate;              /* URIO__R_* */
    bool multishot;              /* rop is a multishot receive into provided buffers */
    bool eof;                    /* the peer's EOF arrived */
    bool closed;                 /* urio_stream_close or _abort was called */
    bool aborted;
    int rerr;                    /* a receive error: every later read gets it */
    unsigned char *rbuf;         /* received, unread: [rhead, rtail) */
    size_t rhead, rtail, rcap;
    unsigned char *rchunk;       /* one-shot receives land here (no provided buffers) */
    size_t limit;
    /* The task waiting for data, at most one. */
    urio__io_waiter_t rw;
    size_t want;                 /* wake it once this much is buffered */
    unsigned char *direct;       /* read: copy arriving bytes straight into its buffer */
    size_t direct_cap, direct_len;
    /* Sending: `out` is what the send in flight (wop) points into; writes
     * meanwhile append to `pend`; they swap when `out` is all sent. */
    urio__op_t wop;
    urio__wbuf_t out, pend;
    size_t high, low;
    bool wpaused;                /* above high water, until down to low */
    bool eof_asked;              /* write_eof: shut the sending side once flushed */
    bool eof_sent;
    int werr;                    /* a send error: every later write gets it */
    urio__io_waiter_t dw;         /* the task waiting for the sends to drain */
    /* shutdown(SHUT_WR) or close */
    urio__op_t xop;
    uint8_t xkind;               /* URIO__X_* in flight */
    /* A server's connection: its server and handler task. */
    struct urio_server *server;
    urio_future_t *task;
    struct urio_stream *cnext, *cprev;
    struct urio_stream *next, *prev;    /* io->streams */
    const urio_site_t *site;
    urio__backtrace_t *stack;    /* debug mode: where it was made */
};

/* ------------------------------------------------------------------ */
/* io_stream.c and io_server.c: what the subsystem's hooks call         */

/*
 * A stream on fd (owned from here), its owner's reference held.  Returns:
 * the stream, or NULL on ENOMEM (fd is then closed).
 */
urio_stream_t *urio__stream_wrap(urio__io_t *io, int fd, const urio_site_t *site);
void urio__stream_unref(urio_stream_t *s);
/* The loop closes: report unclosed streams (debug mode) and stop them. */
void urio__streams_close(urio__io_t *io);
/* The ring is drained: close their fds and free them. */
void urio__streams_release(urio__io_t *io);
void urio__servers_close(urio__io_t *io);
void urio__servers_release(urio__io_t *io);
/* A connection of srv ended (its task is done). */
void urio__server_conn_ended(struct urio_server *srv, urio_stream_t *s);

#endif
