/*
 * io.c — the I/O layer's engine: one operation through the ring, in a task
 * (parked until its final CQE) or as a future; deadlines; cancellation; and
 * the io subsystem on each loop (its provided buffers, what is in flight,
 * what it reports and frees when the loop closes).
 *
 * Cancellation safety is the point of the shapes here.  An op and every
 * pointer it carries live until the kernel's final CQE: a task's op lives
 * on the task's stack and the task stays parked until that CQE, also when
 * cancelled; a future's op lives inside the future, which the op holds a
 * reference on.  A cancel only asks the kernel to stop (IORING_OP_ASYNC_CANCEL);
 * whatever the final CQE says is delivered to a defined owner.
 */
#include "io.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int urio__io_force_fallback;

/* ------------------------------------------------------------------ */
/* Messages                                                             */

static _Thread_local char tls_msg[512];
static _Thread_local bool tls_has_msg;

URIO_EXPORT const char *urio_io_error_message(void)
{
    return tls_has_msg ? tls_msg : NULL;
}

void urio__io_clear_message(void)
{
    tls_has_msg = false;
}

int urio__io_fail(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_msg, sizeof tls_msg, fmt, ap);
    va_end(ap);
    tls_has_msg = true;
    return err;
}

URIO_EXPORT uint64_t urio_deadline_in(uint64_t ns)
{
    /* On the running loop's clock (a virtual clock's included). */
    urio_loop_t *loop = urio_loop_current();
    uint64_t now = loop != NULL ? urio__loop_now(loop) : urio__now();
    return ns > UINT64_MAX - now ? UINT64_MAX : now + ns;
}

__attribute__((cold, noinline)) void urio__io_no_task(const char *fn)
{
    urio__log(URIO_LOG_ERROR, "%s(): called outside a task: it waits, and only a task "
              "can (callbacks start operations with the _submit forms of urio/io.h)", fn);
}

/* ------------------------------------------------------------------ */
/* Arguments                                                            */

static bool produces_fd(uint8_t code)
{
    return code == URIO__IO_OPENAT || code == URIO__IO_SOCKET || code == URIO__IO_ACCEPT;
}

int urio__io_check(const urio__io_args_t *a)
{
    switch (a->code) {
    case URIO__IO_OPENAT:
    case URIO__IO_STATX:
    case URIO__IO_UNLINKAT:
    case URIO__IO_MKDIRAT:
    case URIO__IO_RENAMEAT:
        if (a->fd < 0 && a->fd != AT_FDCWD)
            return -EBADF;
        if (a->code == URIO__IO_RENAMEAT && a->fd2 < 0 && a->fd2 != AT_FDCWD)
            return -EBADF;
        if (a->path == NULL || (a->code == URIO__IO_RENAMEAT && a->path2 == NULL))
            return -EINVAL;
        if (a->code == URIO__IO_STATX && a->ptr == NULL)
            return -EINVAL;
        return 0;
    case URIO__IO_SOCKET:
        return 0;
    default:
        break;
    }
    if (a->fd < 0)
        return -EBADF;
    switch (a->code) {
    case URIO__IO_READ:
    case URIO__IO_WRITE:
    case URIO__IO_READV:
    case URIO__IO_WRITEV:
        if (a->off < -1)
            return -EINVAL;
        break;
    default:
        break;
    }
    switch (a->code) {
    case URIO__IO_READ:
    case URIO__IO_WRITE:
    case URIO__IO_RECV:
    case URIO__IO_SEND:
        if (a->len < 0 || a->len > INT_MAX || (a->ptr == NULL && a->len > 0))
            return -EINVAL;
        return 0;
    case URIO__IO_READV:
    case URIO__IO_WRITEV:
        if (a->ptr == NULL || a->len <= 0 || a->len > IOV_MAX)
            return -EINVAL;
        return 0;
    case URIO__IO_RECVMSG:
    case URIO__IO_SENDMSG:
        return a->ptr == NULL ? -EINVAL : 0;
    case URIO__IO_CONNECT:
    case URIO__IO_BIND:
        if (a->ptr == NULL || a->num < sizeof(sa_family_t) ||
            a->num > sizeof(struct sockaddr_storage))
            return -EINVAL;
        return 0;
    case URIO__IO_ACCEPT:
        return (a->ptr != NULL && a->ptr2 == NULL) ? -EINVAL : 0;
    case URIO__IO_SHUTDOWN:
        return a->num > SHUT_RDWR ? -EINVAL : 0;
    case URIO__IO_FALLOCATE:
        return (a->off < 0 || a->len <= 0) ? -EINVAL : 0;
    case URIO__IO_POLL:
        return a->num == 0 ? -EINVAL : 0;
    default:
        return 0;
    }
}

/* ------------------------------------------------------------------ */
/* Submission and completion                                            */

static void req_complete(urio__op_t *op, int res, uint32_t flags);

/*
 * Does the operation at once, without the ring, where the kernel lacks its
 * op (socket before 5.19, bind and listen before 6.11): these never block.
 */
static int do_sync(const urio__io_args_t *a)
{
    int ret;
    switch (a->code) {
    case URIO__IO_SOCKET:
        ret = socket(a->fd, a->fd2 | SOCK_CLOEXEC, (int)a->num);
        break;
    case URIO__IO_BIND:
        ret = bind(a->fd, a->ptr, (socklen_t)a->num);
        break;
    default:
        ret = listen(a->fd, (int)a->num);
        break;
    }
    return ret < 0 ? -errno : ret;
}

static bool needs_sync(urio__ring_t *r, uint8_t code)
{
    switch (code) {
    case URIO__IO_SOCKET:
        return urio__io_force_fallback || !urio__ring_has_op(r, IORING_OP_SOCKET);
    case URIO__IO_BIND:
        return urio__io_force_fallback || !urio__ring_has_op(r, URIO__OP_BIND);
    case URIO__IO_LISTEN:
        return urio__io_force_fallback || !urio__ring_has_op(r, URIO__OP_LISTEN);
    default:
        return false;
    }
}

/*
 * Puts rq's operation in the ring (with its deadline linked).  Returns: 0
 * (in flight: its CQE will come), 1 (done at once: rq->res holds the
 * outcome), or a negative errno (nothing started).
 */
static int req_start(urio__io_t *io, urio__io_req_t *rq)
{
    urio__ring_t *r = &io->loop->ring;
    urio__io_args_t *a = &rq->a;
    if (URIO_UNLIKELY(io->loop->closing))
        return -ESHUTDOWN;
    if (URIO_UNLIKELY(needs_sync(r, a->code))) {
        rq->res = do_sync(a);
        return 1;
    }
    rq->io = io;
    rq->op.complete = req_complete;
    if (a->deadline != 0) {
        /* The kernel's clock is the real one: take back a virtual clock's jumps. */
        uint64_t off = atomic_load_explicit(&io->loop->clock_offset, memory_order_relaxed);
        uint64_t real = a->deadline > off ? a->deadline - off : 1;
        rq->ts.tv_sec = (int64_t)(real / 1000000000u);
        rq->ts.tv_nsec = (long long)(real % 1000000000u);
        int err = urio__ring_deadline_next(r, &rq->ts);
        if (err < 0)
            return err;
    }
    urio__op_t *op = &rq->op;
    uint64_t off = (uint64_t)a->off;
    int err;
    switch (a->code) {
    case URIO__IO_READ:
        err = urio__op_read(r, op, a->fd, a->ptr, (unsigned)a->len, off);
        break;
    case URIO__IO_WRITE:
        err = urio__op_write(r, op, a->fd, a->ptr, (unsigned)a->len, off);
        break;
    case URIO__IO_READV:
        err = urio__op_readv(r, op, a->fd, a->ptr, (unsigned)a->len, off);
        break;
    case URIO__IO_WRITEV:
        err = urio__op_writev(r, op, a->fd, a->ptr, (unsigned)a->len, off);
        break;
    case URIO__IO_RECV:
        err = urio__op_recv(r, op, a->fd, a->ptr, (unsigned)a->len, a->flags);
        break;
    case URIO__IO_SEND:
        err = urio__op_send(r, op, a->fd, a->ptr, (unsigned)a->len, a->flags | MSG_NOSIGNAL);
        break;
    case URIO__IO_RECVMSG:
        err = urio__op_recvmsg(r, op, a->fd, a->ptr, (unsigned)a->flags);
        break;
    case URIO__IO_SENDMSG:
        err = urio__op_sendmsg(r, op, a->fd, a->ptr, (unsigned)a->flags | MSG_NOSIGNAL);
        break;
    case URIO__IO_ACCEPT:
        err = urio__op_accept(r, op, a->fd, a->ptr, a->ptr2, a->flags | SOCK_CLOEXEC, false);
        break;
    case URIO__IO_CONNECT:
        err = urio__op_connect(r, op, a->fd, a->ptr, (socklen_t)a->num);
        break;
    case URIO__IO_SOCKET:
        err = urio__op_socket(r, op, a->fd, a->fd2 | SOCK_CLOEXEC, (int)a->num);
        break;
    case URIO__IO_BIND:
        err = urio__op_bind(r, op, a->fd, a->ptr, (socklen_t)a->num);
        break;
    case URIO__IO_LISTEN:
        err = urio__op_listen(r, op, a->fd, (int)a->num);
        break;
    case URIO__IO_SHUTDOWN:
        err = urio__op_shutdown(r, op, a->fd, (int)a->num);
        break;
    case URIO__IO_CLOSE:
        err = urio__op_close(r, op, a->fd);
        break;
    case URIO__IO_OPENAT:
        err = urio__op_openat(r, op, a->fd, a->path, a->flags | O_CLOEXEC, a->num);
        break;
    case URIO__IO_FSYNC:
        err = urio__op_fsync(r, op, a->fd, (unsigned)a->flags);
        break;
    case URIO__IO_FALLOCATE:
        err = urio__op_fallocate(r, op, a->fd, a->flags, (uint64_t)a->off, (uint64_t)a->len);
        break;
    case URIO__IO_STATX:
        err = urio__op_statx(r, op, a->fd, a->path, a->flags, a->num, a->ptr);
        break;
    case URIO__IO_UNLINKAT:
        err = urio__op_unlinkat(r, op, a->fd, a->path, a->flags);
        break;
    case URIO__IO_RENAMEAT:
        err = urio__op_renameat(r, op, a->fd, a->path, a->fd2, a->path2, (unsigned)a->flags);
        break;
    case URIO__IO_MKDIRAT:
        err = urio__op_mkdirat(r, op, a->fd, a->path, a->num);
        break;
    case URIO__IO_POLL:
        err = urio__op_poll(r, op, a->fd, a->num);
        break;
    default:
        err = -EINVAL;
        break;
    }
    if (err == 0)
        urio__io_op_started(io);
    return err;
}

/* The CQE's result as the caller sees it: a deadline's cancel is a time-out. */
static inline int req_result(const urio__io_req_t *rq, int res)
{
    if (res == -ECANCELED && rq->a.deadline != 0 && !rq->cancel_asked)
        return -ETIMEDOUT;
    return res;
}

static void future_settle(urio__io_req_t *rq);

/* The op's one and only CQE (no op of this engine is multishot). */
static void req_complete(urio__op_t *op, int res, uint32_t flags)
{
    (void)flags;
    urio__io_req_t *rq = urio__container_of(op, urio__io_req_t, op);
    urio__io_op_done(rq->io);
    rq->res = req_result(rq, res);
    if (rq->task != NULL)
        urio__task_unpark(rq->task);    /* its stack, and rq on it, stay until it runs */
    else
        future_settle(rq);
}

/* A parked task was cancelled: ask the kernel to stop its op; the CQE unparks it. */
static void req_cancel(void *arg)
{
    urio__io_req_t *rq = arg;
    rq->cancel_asked = true;
    int err = urio__op_cancel(&rq->io->loop->ring, &rq->op);
    if (err < 0 && err != -ENOENT)
        urio__log(URIO_LOG_WARNING, "I/O cancel could not be submitted (%s): the operation "
                  "runs to its end", urio_strerror(err));
}

int urio__io_run(urio__io_args_t *a)
{
    urio__task_t *t = urio__task_running();
    if (URIO_UNLIKELY(t == NULL))
        return -EPERM;
    int err = urio__io_check(a);
    if (URIO_UNLIKELY(err < 0))
        return err;
    if (URIO_UNLIKELY(urio__task_cancel_pending(t)))
        return -ECANCELED;
    urio__io_t *io = urio__io_get(t->loop);
    if (URIO_UNLIKELY(io == NULL))
        return t->loop->closing ? -ESHUTDOWN : -ENOMEM;
    urio__io_req_t rq;
    rq.a = *a;
    rq.task = t;
    rq.f = NULL;
    rq.io = io;
    rq.cancel_asked = false;
    rq.op.state = URIO__OP_IDLE;
    if (URIO_UNLIKELY(urio__task_reserve_wake(t) < 0))
        return -ENOMEM;
    err = req_start(io, &rq);
    if (URIO_UNLIKELY(err != 0)) {
        urio__task_release_wake(t);
        return err > 0 ? rq.res : err;
    }
    /* Parked until the final CQE, whatever happens: rq is on this stack. */
    urio__task_park(t, req_cancel, &rq);
    return rq.res;
}

/* ------------------------------------------------------------------ */
/* Waiters: tasks parked on streams and servers                         */

int urio__io_waiter_arm(urio_loop_t *loop, urio__io_waiter_t *w, urio__task_t *t,
                        uint64_t deadline, urio_callback_fn fn, void *arg,
                        const urio_site_t *site)
{
    if (urio__task_reserve_wake(t) < 0)
        return -ENOMEM;
    urio_handle_t h = { 0, 0 };
    if (deadline != 0) {
        h = urio_call_at_site(loop, deadline, fn, arg, site);
        if (h.id == 0) {
            urio__task_release_wake(t);
            return -errno;
        }
    }
    w->task = t;
    w->timer = h;
    w->why = 0;
    return 0;
}

int urio__io_waiter_park(urio__io_waiter_t *w, urio__cancel_hook_fn on_cancel, void *arg)
{
    urio__task_park(w->task, on_cancel, arg);
    return w->why;
}

void urio__io_waiter_wake(urio_loop_t *loop, urio__io_waiter_t *w, int why)
{
    urio__task_t *t = w->task;
    if (t == NULL)
        return;
    w->task = NULL;
    w->why = why;
    if (w->timer.id) {
        urio_handle_cancel(loop, w->timer);
        w->timer.id = 0;
    }
    urio__task_unpark(t);
}

/* ------------------------------------------------------------------ */
/* The future form                                                      */

static bool io_future_cancel(urio_future_t *f, char *msg);
static void io_future_describe(const urio_future_t *f, char *buf, size_t n);

static const urio__future_ops_t io_future_ops = {
    .kind = "Future",
    .sealed = true,                 /* its outcome is the kernel's */
    .cancel = io_future_cancel,
    .describe = io_future_describe,
};

static const char *const code_names[] = {
    [URIO__IO_READ] = "read", [URIO__IO_WRITE] = "write", [URIO__IO_READV] = "readv",
    [URIO__IO_WRITEV] = "writev", [URIO__IO_RECV] = "recv", [URIO__IO_SEND] = "send",
    [URIO__IO_RECVMSG] = "recvmsg", [URIO__IO_SENDMSG] = "sendmsg",
    [URIO__IO_ACCEPT] = "accept", [URIO__IO_CONNECT] = "connect",
    [URIO__IO_SOCKET] = "socket", [URIO__IO_BIND] = "bind", [URIO__IO_LISTEN] = "listen",
    [URIO__IO_SHUTDOWN] = "shutdown", [URIO__IO_CLOSE] = "close", [URIO__IO_OPENAT] = "openat",
    [URIO__IO_FSYNC] = "fsync", [URIO__IO_FALLOCATE] = "fallocate", [URIO__IO_STATX] = "statx",
    [URIO__IO_UNLINKAT] = "unlinkat", [URIO__IO_RENAMEAT] = "renameat",
    [URIO__IO_MKDIRAT] = "mkdirat", [URIO__IO_POLL] = "poll",
};

static void io_future_describe(const urio_future_t *f, char *buf, size_t n)
{
    const urio__io_req_t *rq = urio__future_ext((urio_future_t *)f);
    snprintf(buf, n, "<Future %s %s fd=%d>", urio__future_state_name(f),
             code_names[rq->a.code], rq->a.fd);
}

/*
 * Cancelling an I/O future asks the kernel to stop the op; the future stays
 * pending until the final CQE says how it ended (as a task does).
 */
static bool io_future_cancel(urio_future_t *f, char *msg)
{
    urio__io_req_t *rq = urio__future_ext(f);
    if (urio_future_done(f)) {
        urio__free(msg);
        return false;
    }
    if (msg != NULL) {
        urio__free(rq->cancel_msg);     /* the latest request's message wins */
        rq->cancel_msg = msg;
    }
    if (!rq->cancel_asked) {
        rq->cancel_asked = true;
        int err = urio__op_cancel(&rq->io->loop->ring, &rq->op);
        if (err < 0 && err != -ENOENT)
            urio__log(URIO_LOG_WARNING, "I/O cancel could not be submitted (%s): the "
                      "operation runs to its end", urio_strerror(err));
    }
    return true;
}

static void future_settle(urio__io_req_t *rq)
{
    urio_future_t *f = rq->f;
    int res = rq->res;
    if (rq->cancel_asked && res >= 0 && produces_fd(rq->a.code)) {
        /* The cancel lost the race: nobody wants this fd any more. */
        close(res);
        res = -ECANCELED;
    }
    char *msg = rq->cancel_msg;
    rq->cancel_msg = NULL;
    if (res >= 0) {
        urio__free(msg);
        urio__future_settle(f, 0, (void *)(intptr_t)res, NULL);
    } else {
        if (res != -ECANCELED) {
            urio__free(msg);
            msg = NULL;
        }
        urio__future_settle(f, res, NULL, msg);
    }
    urio_future_unref(f);           /* the op's reference */
}

urio_future_t *urio__io_submit(urio_loop_t *loop, urio__io_args_t *a)
{
    int err = 0;
    if (loop == NULL)
        err = -EINVAL;
    else if (!urio__loop_check_thread(loop, "urio_*_submit"))
        err = -EPERM;
    else if (URIO_UNLIKELY(urio__loop_refuse_inherited(loop, "urio_*_submit")))
        err = URIO_EFORKED;     /* the parent's ring (not mapped in this child) */
    else if (loop->closing)
        err = -ESHUTDOWN;
    else
        err = urio__io_check(a);
    urio__io_t *io = err == 0 ? urio__io_get(loop) : NULL;
    if (err == 0 && io == NULL)
        err = -ENOMEM;
    if (err < 0) {
        errno = -err;
        return NULL;
    }
    urio_future_t *f = urio__future_new_kind(loop, sizeof(urio__io_req_t), &io_future_ops);
    if (f == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    urio__future_capture_stack(f, 1);
    urio__io_req_t *rq = urio__future_ext(f);
    rq->a = *a;
    rq->f = f;
    rq->io = io;
    err = req_start(io, rq);
    if (err < 0) {
        urio_future_unref(f);
        errno = -err;
        return NULL;
    }
    if (err > 0) {
        /* Done at once, without the ring. */
        if (rq->res >= 0)
            urio__future_settle(f, 0, (void *)(intptr_t)rq->res, NULL);
        else
            urio__future_settle(f, rq->res, NULL, NULL);
        return f;
    }
    urio_future_ref(f);             /* the op's, until its final CQE */
    return f;
}

URIO_EXPORT int urio_io_result(urio_future_t *f)
{
    void *v = NULL;
    int err = urio_future_result(f, &v);
    return err < 0 ? err : (int)(intptr_t)v;
}

/* ------------------------------------------------------------------ */
/* The io subsystem                                                     */

static int io_may_close(urio_loop_t *loop, void *state)
{
    urio__io_t *io = state;
    /*
     * The ring can be drained only by its issuer (SINGLE_ISSUER and
     * DEFER_TASKRUN: another thread can neither enter nor cancel).  Tearing
     * it down from here would free buffers the kernel may still write (an
     * io-wq worker mid-read, a block device's DMA): refuse.  A forked child
     * shares no memory the parent's kernel work can reach: it may close.
     */
    if (io->inflight == 0 || urio__ring_is_issuer(&loop->ring) || !loop->ring.enabled ||
        io->pid != getpid())
        return 0;
    urio__log(URIO_LOG_ERROR, "urio_loop_close(): %u I/O operations are in flight and this "
              "thread is not the loop's (the thread that ran it issues its ring): the kernel "
              "may still write into their buffers, and only that thread can wait for it. "
              "Close the loop on the thread that ran it", io->inflight);
    return -EBUSY;
}

static void io_close(urio_loop_t *loop, void *state)
{
    (void)loop;
    urio__io_t *io = state;
    urio__servers_close(io);
    urio__streams_close(io);
}

static void io_release(urio_loop_t *loop, void *state)
{
    urio__io_t *io = state;
    urio__servers_release(io);
    urio__streams_release(io);
    urio__resolve_sweep(io, true);
    urio__bufring_exit(&loop->ring, &io->bufs);
    urio__free(io);
}

static const urio__subsystem_t io_subsystem = {
    .name = "io",
    .may_close = io_may_close,
    .close = io_close,
    .release = io_release,
};

urio__io_t *urio__io_get(urio_loop_t *loop)
{
    urio__io_t *io = urio__loop_state(loop, &io_subsystem);
    if (URIO_LIKELY(io != NULL))
        return io;
    io = urio__calloc(1, sizeof *io);
    if (io == NULL)
        return NULL;
    io->loop = loop;
    io->pid = getpid();
    if (urio__loop_register(loop, &io_subsystem, io) < 0) {
        urio__free(io);
        return NULL;
    }
    return io;
}

urio__bufring_t *urio__io_bufs(urio__io_t *io)
{
    if (URIO_LIKELY(io->bufs_state == URIO__BUFS_READY))
        return &io->bufs;
    if (io->bufs_state == URIO__BUFS_NONE)
        return NULL;
    io->bufs_state = URIO__BUFS_NONE;
    if (urio__io_force_fallback)
        return NULL;
    int err = urio__bufring_init(&io->loop->ring, &io->bufs, 0, URIO__BUF_COUNT,
                                 URIO__BUF_SIZE);
    if (err < 0) {
        urio__log(URIO_LOG_DEBUG, "io: no provided-buffer ring (%s): streams receive with "
                  "one-shot recv", urio_strerror(err));
        return NULL;
    }
    io->bufs_state = URIO__BUFS_READY;
    return &io->bufs;
}
