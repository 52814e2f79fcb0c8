/*
 * io_stream.c — streams: a connected socket with a read buffer that the
 * ring fills all the time (a multishot receive into the loop's provided
 * buffers, copied out and given back at once; one-shot receives where the
 * kernel has no buffer rings), a write buffer that one send at a time
 * empties, backpressure both ways, half-close, close; and connecting.
 *
 * Lifetimes: a stream is reference counted (loop thread only): its owner's
 * reference, one per op in flight, one per task parked on it.  close()
 * drops the owner's; the last reference frees it, after the socket's close
 * op.  So an op's final CQE always finds its stream, and a task woken from
 * a read finds it too.
 */
#include "io.h"

#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_LIMIT  (64u * 1024)
#define DEFAULT_HIGH   (64u * 1024)
#define RCHUNK         (16u * 1024)
#define MAX_SEND       (1u << 30)
/* A write buffer larger than this is freed once empty (one big write must
 * not keep its memory for the connection's life); smaller ones are kept. */
#define WBUF_KEEP      (64u * 1024)

static void stream_step(urio_stream_t *s);

static inline size_t rbuffered(const urio_stream_t *s)
{
    return s->rtail - s->rhead;
}

static inline size_t wbuffered(const urio_stream_t *s)
{
    return (s->out.len - s->out.sent) + s->pend.len;
}

static inline urio__ring_t *ring_of(const urio_stream_t *s)
{
    return &s->loop->ring;
}

/* ------------------------------------------------------------------ */
/* Life                                                                 */

static void stream_free(urio_stream_t *s)
{
    urio__io_t *io = s->io;
    if (s->prev)
        s->prev->next = s->next;
    else
        io->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    io->nstreams--;
    if (s->fd >= 0)
        close(s->fd);
    if (s->rw.timer.id)
        urio_handle_cancel(s->loop, s->rw.timer);
    if (s->dw.timer.id)
        urio_handle_cancel(s->loop, s->dw.timer);
    urio__free(s->rbuf);
    urio__free(s->rchunk);
    urio__free(s->out.p);
    urio__free(s->pend.p);
    urio__free(s->stack);
    urio__free(s);
}

void urio__stream_unref(urio_stream_t *s)
{
    URIO_ASSERT(s->refs > 0);
    if (--s->refs == 0)
        stream_free(s);
}

urio_stream_t *urio__stream_wrap(urio__io_t *io, int fd, const urio_site_t *site)
{
    urio_stream_t *s = urio__calloc(1, sizeof *s);
    if (s == NULL) {
        close(fd);
        return NULL;
    }
    s->io = io;
    s->loop = io->loop;
    s->fd = fd;
    s->refs = 1;
    s->limit = DEFAULT_LIMIT;
    s->high = DEFAULT_HIGH;
    s->low = DEFAULT_HIGH / 4;
    s->site = site;
#if URIO_DEBUG_CHECKS
    if (io->loop->debug) {
        s->stack = urio__malloc(sizeof *s->stack);
        if (s->stack)
            urio__backtrace_capture(s->stack, 2, true);
    }
#endif
    s->next = io->streams;
    if (io->streams)
        io->streams->prev = s;
    io->streams = s;
    io->nstreams++;
    stream_step(s);      /* start receiving */
    return s;
}

URIO_EXPORT int urio_stream_new_site(urio_stream_t **out, urio_loop_t *loop, int fd,
                                     const urio_site_t *site)
{
    if (out == NULL || loop == NULL)
        return -EINVAL;
    *out = NULL;
    if (fd < 0)
        return -EBADF;
    if (!urio__loop_check_thread(loop, "urio_stream_new"))
        return -EPERM;
    if (loop->closing)
        return -ESHUTDOWN;
    urio__io_t *io = urio__io_get(loop);
    if (io == NULL) {
        close(fd);
        return -ENOMEM;
    }
    *out = urio__stream_wrap(io, fd, site);
    return *out ? 0 : -ENOMEM;
}

/* ------------------------------------------------------------------ */
/* Waking the waiting tasks                                             */

static void reader_wake(urio_stream_t *s, int why)
{
    urio__io_waiter_wake(s->loop, &s->rw, why);
}

static void drainer_wake(urio_stream_t *s, int why)
{
    urio__io_waiter_wake(s->loop, &s->dw, why);
}

/* Wakes the reader if what it waits for is here. */
static void reader_check(urio_stream_t *s)
{
    if (s->rw.task && (s->direct_len > 0 || rbuffered(s) >= s->want || s->eof || s->rerr))
        reader_wake(s, 0);
}

static void reader_cancel(void *arg)
{
    reader_wake(arg, -ECANCELED);
}

static void reader_timeout(void *arg)
{
    urio_stream_t *s = arg;
    s->rw.timer.id = 0;
    reader_wake(s, -ETIMEDOUT);
}

static void drainer_cancel(void *arg)
{
    drainer_wake(arg, -ECANCELED);
}

static void drainer_timeout(void *arg)
{
    urio_stream_t *s = arg;
    s->dw.timer.id = 0;
    drainer_wake(s, -ETIMEDOUT);
}

/*
 * Parks t on s (as its reader or drainer) until woken, with a timer for the
 * deadline.  Holds a reference on s meanwhile: the caller drops it (after
 * reading what it needs) with urio__stream_unref.
 * Returns: why it woke, or -ENOMEM (not parked; no reference taken).
 */
static int stream_park(urio_stream_t *s, urio__task_t *t, bool reader, uint64_t deadline)
{
    static const urio_site_t rsite = { "<stream read deadline>", __FILE__, __LINE__ };
    static const urio_site_t dsite = { "<stream drain deadline>", __FILE__, __LINE__ };
    int err = reader ? urio__io_waiter_arm(s->loop, &s->rw, t, deadline, reader_timeout, s,
                                           &rsite)
                     : urio__io_waiter_arm(s->loop, &s->dw, t, deadline, drainer_timeout, s,
                                           &dsite);
    if (err < 0)
        return err;
    s->refs++;
    if (reader) {
        if (s->rstate == URIO__R_IDLE)
            stream_step(s);  /* a reader that wants more than is buffered resumes receiving */
        return urio__io_waiter_park(&s->rw, reader_cancel, s);
    }
    return urio__io_waiter_park(&s->dw, drainer_cancel, s);
}

/* ------------------------------------------------------------------ */
/* Receiving                                                            */

/* Appends n received bytes, first into a reader's own buffer if one waits empty-handed. */
static void deliver(urio_stream_t *s, const unsigned char *p, size_t n)
{
    if (s->rw.task && s->direct && rbuffered(s) == 0) {
        size_t c = s->direct_cap - s->direct_len;
        c = c < n ? c : n;
        memcpy(s->direct + s->direct_len, p, c);
        s->direct_len += c;
        p += c;
        n -= c;
    }
    if (n == 0)
        return;
    if (s->rcap - s->rtail < n) {
        size_t have = rbuffered(s);
        if (s->rhead > 0) {
            memmove(s->rbuf, s->rbuf + s->rhead, have);
            s->rhead = 0;
            s->rtail = have;
        }
        if (s->rcap - s->rtail < n) {
            size_t cap = s->rcap ? s->rcap : 4096;
            while (cap - have < n)
                cap *= 2;
            unsigned char *nb = urio__realloc(s->rbuf, cap);
            if (nb == NULL) {
                s->rerr = -ENOMEM;      /* the stream is broken: say so to every read */
                return;
            }
            s->rbuf = nb;
            s->rcap = cap;
        }
    }
    memcpy(s->rbuf + s->rtail, p, n);
    s->rtail += n;
}

static void on_recv(urio__op_t *op, int res, uint32_t flags)
{
    urio_stream_t *s = urio__container_of(op, urio_stream_t, rop);
    bool final = !(flags & IORING_CQE_F_MORE);
    if (res > 0) {
        if (flags & IORING_CQE_F_BUFFER) {
            uint32_t bid = flags >> IORING_CQE_BUFFER_SHIFT;
            urio__bufring_t *b = &s->io->bufs;
            deliver(s, urio__bufring_buf(b, bid), (size_t)res);
            urio__bufring_recycle(b, bid);
        } else {
            deliver(s, s->rchunk, (size_t)res);
        }
    } else if (res == 0) {
        s->eof = true;
    } else if (res == -EINVAL && s->multishot) {
        /* A kernel without IORING_RECV_MULTISHOT (before 6.0): one-shot receives from now on. */
        s->io->no_recv_multishot = true;
        urio__log(URIO_LOG_DEBUG, "io: multishot receive refused (EINVAL): streams fall back "
                  "to one-shot recv");
    } else if (res != -ENOBUFS && res != -ECANCELED) {
        /* (-ENOBUFS: the loop's buffers ran dry for a moment; receiving resumes below.) */
        s->rerr = res;
    }
    reader_check(s);
    if (final) {
        s->rstate = URIO__R_IDLE;
        urio__io_op_done(s->io);
        stream_step(s);
        urio__stream_unref(s);      /* the op's */
    } else if (URIO_UNLIKELY(rbuffered(s) >= 2 * s->limit)) {
        stream_step(s);             /* enough unread: stop receiving */
    }
}

/* Receives while someone may read what comes: not past twice the limit. */
static bool want_receive(const urio_stream_t *s)
{
    if (s->closed || s->eof || s->rerr || s->fd < 0)
        return false;
    size_t cap = 2 * s->limit;
    if (s->rw.task && s->want > cap)
        cap = s->want;
    return rbuffered(s) < cap;
}

static void receive_update(urio_stream_t *s)
{
    bool want = want_receive(s);
    if (want && s->rstate == URIO__R_IDLE) {
        urio__ring_t *r = ring_of(s);
        urio__bufring_t *b = s->io->no_recv_multishot ? NULL : urio__io_bufs(s->io);
        int err;
        s->rop.complete = on_recv;
        if (b != NULL) {
            s->multishot = true;
            err = urio__op_recv_multishot(r, &s->rop, s->fd, b, 0);
        } else {
            s->multishot = false;
            if (s->rchunk == NULL && (s->rchunk = urio__malloc(RCHUNK)) == NULL)
                err = -ENOMEM;
            else
                err = urio__op_recv(r, &s->rop, s->fd, s->rchunk, RCHUNK, 0);
        }
        if (err < 0) {
            s->rerr = err;
            reader_check(s);
            return;
        }
        s->rstate = URIO__R_ARMED;
        s->refs++;
        urio__io_op_started(s->io);
    } else if (!want && s->rstate == URIO__R_ARMED) {
        s->rstate = URIO__R_STOPPING;
        urio__op_cancel(ring_of(s), &s->rop);
    }
}

/* The reader took n bytes. */
static void consume(urio_stream_t *s, size_t n)
{
    s->rhead += n;
    if (s->rhead == s->rtail)
        s->rhead = s->rtail = 0;
    if (s->rstate == URIO__R_IDLE)
        stream_step(s);
}

/* ------------------------------------------------------------------ */
/* Sending                                                              */

static void on_send(urio__op_t *op, int res, uint32_t flags);

static void write_failed(urio_stream_t *s, int err)
{
    if (s->werr == 0)
        s->werr = err;
    s->out.len = s->out.sent = 0;
    s->pend.len = 0;
    s->wpaused = false;
    drainer_wake(s, s->werr);
}

/* An empty write buffer: kept for the next writes, or freed if it grew big. */
static void wbuf_emptied(urio__wbuf_t *b)
{
    b->len = 0;
    if (URIO_UNLIKELY(b->cap > WBUF_KEEP)) {
        urio__free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
}

static void send_more(urio_stream_t *s)
{
    /* Nothing is submitted while the loop closes: its ring is being drained. */
    if (s->wop.state != URIO__OP_IDLE || s->werr || s->fd < 0 || s->loop->closing)
        return;
    if (s->out.sent == s->out.len) {
        s->out.sent = 0;
        wbuf_emptied(&s->out);
        if (s->pend.len == 0)
            return;
        urio__wbuf_t t = s->out;
        s->out = s->pend;
        s->pend = t;
    }
    size_t n = s->out.len - s->out.sent;
    n = n < MAX_SEND ? n : MAX_SEND;
    s->wop.complete = on_send;
    int err = urio__op_send(ring_of(s), &s->wop, s->fd, s->out.p + s->out.sent, (unsigned)n,
                            MSG_NOSIGNAL | MSG_WAITALL);
    if (err < 0) {
        write_failed(s, err);
        return;
    }
    s->refs++;
    urio__io_op_started(s->io);
}

static void on_send(urio__op_t *op, int res, uint32_t flags)
{
    (void)flags;
    urio_stream_t *s = urio__container_of(op, urio_stream_t, wop);
    urio__io_op_done(s->io);
    if (URIO_LIKELY(res > 0)) {
        if (URIO_LIKELY(s->werr == 0))   /* else the buffers were dropped (an abort's race) */
            s->out.sent += (size_t)res;
    } else if (!(res == -ECANCELED && s->aborted)) {
        write_failed(s, res < 0 ? res : -EIO);   /* (0 bytes for a non-empty send: no progress) */
    }
    if (URIO_UNLIKELY(s->wpaused) && wbuffered(s) <= s->low) {
        s->wpaused = false;
        drainer_wake(s, 0);
    }
    if (URIO_LIKELY(s->out.sent == s->out.len && s->pend.len == 0 && !s->closed &&
                    !s->eof_asked && !s->loop->closing)) {
        /* All sent, nothing else to do: the common case of a reply. */
        s->out.sent = 0;
        wbuf_emptied(&s->out);
        if (URIO_UNLIKELY(s->pend.cap > WBUF_KEEP))
            wbuf_emptied(&s->pend);
    } else {
        stream_step(s);
    }
    urio__stream_unref(s);          /* the op's */
}

static int wbuf_append(urio__wbuf_t *b, const void *data, size_t n)
{
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < n) {
            if (cap > SIZE_MAX / 2)
                return -ENOMEM;
            cap *= 2;
        }
        unsigned char *p = urio__realloc(b->p, cap);
        if (p == NULL)
            return -ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Shutting down and closing                                            */

static void on_x(urio__op_t *op, int res, uint32_t flags)
{
    (void)flags;
    urio_stream_t *s = urio__container_of(op, urio_stream_t, xop);
    urio__io_op_done(s->io);
    if (s->xkind == URIO__X_SHUTDOWN) {
        s->eof_sent = true;
        if (res < 0 && res != -ENOTCONN && s->werr == 0)
            s->werr = res;
    } else {
        s->fd = -1;                 /* closed, whatever res says */
    }
    s->xkind = URIO__X_NONE;
    stream_step(s);
    urio__stream_unref(s);          /* the op's */
}

static void submit_x(urio_stream_t *s, uint8_t kind)
{
    urio__ring_t *r = ring_of(s);
    s->xop.complete = on_x;
    int err = kind == URIO__X_CLOSE ? urio__op_close(r, &s->xop, s->fd)
                                    : urio__op_shutdown(r, &s->xop, s->fd, SHUT_WR);
    if (err < 0) {
        /* No SQE to be had: do it now rather than never. */
        if (kind == URIO__X_CLOSE) {
            close(s->fd);
            s->fd = -1;
        } else {
            shutdown(s->fd, SHUT_WR);
            s->eof_sent = true;
        }
        return;
    }
    s->xkind = kind;
    s->refs++;
    urio__io_op_started(s->io);
}

/*
 * Moves s along after anything changed: receive or stop receiving, send
 * what is buffered, shut the sending side once flushed (write_eof), close
 * the socket once closed and flushed with no op left on it.  Nothing is
 * submitted while the loop closes: its ring is being drained.
 */
static void stream_step(urio_stream_t *s)
{
    if (URIO_UNLIKELY(s->loop->closing))
        return;
    receive_update(s);
    if (s->wop.state == URIO__OP_IDLE && wbuffered(s) > 0 && !s->werr)
        send_more(s);
    if (s->xkind != URIO__X_NONE || s->fd < 0 || s->wop.state != URIO__OP_IDLE)
        return;
    bool flushed = wbuffered(s) == 0 || s->werr;
    if (s->closed) {
        if (flushed && s->rstate == URIO__R_IDLE)
            submit_x(s, URIO__X_CLOSE);
    } else if (s->eof_asked && !s->eof_sent && flushed) {
        submit_x(s, URIO__X_SHUTDOWN);
    }
}

URIO_EXPORT void urio_stream_close(urio_stream_t *s)
{
    if (s == NULL || s->closed || !urio__loop_check_thread(s->loop, "urio_stream_close"))
        return;
    s->closed = true;
    reader_wake(s, -EBADF);
    drainer_wake(s, -EBADF);
    stream_step(s);
    urio__stream_unref(s);          /* the owner's */
}

URIO_EXPORT void urio_stream_abort(urio_stream_t *s)
{
    if (s == NULL || s->closed || !urio__loop_check_thread(s->loop, "urio_stream_abort"))
        return;
    s->aborted = true;
    if (s->fd >= 0) {
        struct linger lg = { 1, 0 };    /* close() then resets the connection */
        setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    write_failed(s, -ECONNABORTED);
    if (s->wop.state == URIO__OP_INFLIGHT)
        urio__op_cancel(ring_of(s), &s->wop);
    urio_stream_close(s);
}

/* ------------------------------------------------------------------ */
/* Reading                                                              */

/* Checks a reading call's arguments and gives its task, or NULL with *err. */
static urio__task_t *read_check(urio_stream_t *s, const void *buf, size_t n, const char *fn,
                                int *err)
{
    urio__task_t *t = urio__io_task(fn);
    *err = t == NULL ? -EPERM : 0;
    if (t && (s == NULL || (buf == NULL && n > 0) || n > INT_MAX))
        *err = -EINVAL;
    else if (t && s->loop != t->loop)
        *err = -EINVAL;
    else if (t && s->closed)
        *err = -EBADF;
    return *err ? NULL : t;
}

/* Why a read cannot wait: another reader, a cancel already asked.  0 if it can. */
static int read_blocked(const urio_stream_t *s, const urio__task_t *t)
{
    if (s->rw.task)
        return -EBUSY;
    if (urio__task_cancel_pending(t))
        return -ECANCELED;
    return 0;
}

URIO_EXPORT int urio_stream_read(urio_stream_t *s, void *buf, size_t n, uint64_t deadline)
{
    int err;
    urio__task_t *t = read_check(s, buf, n, "urio_stream_read", &err);
    if (t == NULL)
        return err;
    if (n == 0)
        return 0;
    for (;;) {
        size_t avail = rbuffered(s);
        if (avail > 0) {
            size_t c = avail < n ? avail : n;
            memcpy(buf, s->rbuf + s->rhead, c);
            consume(s, c);
            return (int)c;
        }
        if (s->rerr)
            return s->rerr;
        if (s->eof)
            return 0;
        if ((err = read_blocked(s, t)) < 0)
            return err;
        s->want = 1;
        s->direct = buf;
        s->direct_cap = n;
        s->direct_len = 0;
        err = stream_park(s, t, true, deadline);
        if (err == -ENOMEM)
            return err;
        size_t got = s->direct_len;
        s->direct = NULL;
        s->direct_len = 0;
        urio__stream_unref(s);      /* the park's: s may be gone if err != 0 */
        if (got > 0)
            return (int)got;
        if (err < 0)
            return err;
    }
}

URIO_EXPORT int urio_stream_read_exactly(urio_stream_t *s, void *buf, size_t n,
                                         uint64_t deadline)
{
    int err;
    urio__task_t *t = read_check(s, buf, n, "urio_stream_read_exactly", &err);
    if (t == NULL)
        return err;
    for (;;) {
        size_t avail = rbuffered(s);
        if (avail >= n) {
            memcpy(buf, s->rbuf + s->rhead, n);
            consume(s, n);
            return (int)n;
        }
        if (s->rerr)
            return s->rerr;
        if (s->eof)
            return urio__io_fail(URIO_EINCOMPLETE, "urio_stream_read_exactly(): EOF after %zu "
                                 "of %zu bytes (they stay in the stream)", avail, n);
        if ((err = read_blocked(s, t)) < 0)
            return err;
        s->want = n;
        s->direct = NULL;
        err = stream_park(s, t, true, deadline);
        if (err == -ENOMEM)
            return err;
        urio__stream_unref(s);
        if (err < 0)
            return err;
    }
}

URIO_EXPORT int urio_stream_read_until(urio_stream_t *s, const void *delim, size_t dlen,
                                       void *buf, size_t cap, uint64_t deadline)
{
    int err;
    urio__task_t *t = read_check(s, buf, cap, "urio_stream_read_until", &err);
    if (t == NULL)
        return err;
    if (delim == NULL || dlen == 0 || buf == NULL || cap == 0)
        return -EINVAL;
    size_t scanned = 0;         /* bytes known to hold no delimiter start */
    for (;;) {
        size_t avail = rbuffered(s);
        const unsigned char *base = s->rbuf + s->rhead;
        if (avail >= dlen) {
            const unsigned char *hit = memmem(base + scanned, avail - scanned, delim, dlen);
            if (hit != NULL) {
                size_t end = (size_t)(hit - base) + dlen;
                if (end > cap)
                    return urio__io_fail(URIO_ELIMIT, "urio_stream_read_until(): the separator "
                                         "ends at byte %zu, past the buffer of %zu bytes (the "
                                         "data stays in the stream)", end, cap);
                memcpy(buf, base, end);
                consume(s, end);
                return (int)end;
            }
            scanned = avail - dlen + 1;
        }
        size_t bound = cap < s->limit ? cap : s->limit;
        if (avail >= bound)
            return urio__io_fail(URIO_ELIMIT, "urio_stream_read_until(): no separator within "
                                 "%zu bytes (the %s; %zu bytes buffered stay in the stream)",
                                 bound, bound == s->limit ? "stream's limit" : "buffer's size",
                                 avail);
        if (s->rerr)
            return s->rerr;
        if (s->eof)
            return urio__io_fail(URIO_EINCOMPLETE, "urio_stream_read_until(): EOF before the "
                                 "separator (%zu bytes stay in the stream)", avail);
        if ((err = read_blocked(s, t)) < 0)
            return err;
        s->want = avail + 1;
        s->direct = NULL;
        err = stream_park(s, t, true, deadline);
        if (err == -ENOMEM)
            return err;
        urio__stream_unref(s);
        if (err < 0)
            return err;
    }
}

URIO_EXPORT int urio_stream_set_limit(urio_stream_t *s, size_t limit)
{
    if (s == NULL || limit == 0 || limit > SIZE_MAX / 4)
        return -EINVAL;
    s->limit = limit;
    stream_step(s);
    return 0;
}

URIO_EXPORT size_t urio_stream_buffered(const urio_stream_t *s)
{
    return s ? rbuffered(s) : 0;
}

URIO_EXPORT bool urio_stream_at_eof(const urio_stream_t *s)
{
    return s != NULL && s->eof;
}

/* ------------------------------------------------------------------ */
/* Writing                                                              */

URIO_EXPORT int urio_stream_write(urio_stream_t *s, const void *data, size_t n)
{
    if (s == NULL || (data == NULL && n > 0))
        return -EINVAL;
    if (!urio__loop_check_thread(s->loop, "urio_stream_write"))
        return -EPERM;
    if (s->closed || s->eof_asked)
        return -EPIPE;
    if (s->werr)
        return s->werr;
    if (n == 0)
        return 0;
    /* `out` only when no send points into it; else `pend`, which none does. */
    urio__wbuf_t *b = s->wop.state == URIO__OP_IDLE && s->pend.len == 0 ? &s->out : &s->pend;
    if (wbuf_append(b, data, n) < 0)
        return -ENOMEM;
    if (s->wop.state == URIO__OP_IDLE)
        send_more(s);
    if (wbuffered(s) > s->high)
        s->wpaused = true;
    return s->werr;
}

URIO_EXPORT int urio_stream_drain(urio_stream_t *s, uint64_t deadline)
{
    /* The common answer, "nothing to wait for", without the full checks. */
    urio__task_t *self = urio__task_running();
    if (URIO_LIKELY(self != NULL && s != NULL && !s->wpaused && s->werr == 0 && !s->closed &&
                    s->loop == self->loop))
        return 0;
    int err;
    urio__task_t *t = read_check(s, NULL, 0, "urio_stream_drain", &err);
    if (t == NULL)
        return err;
    if (s->werr)
        return s->werr;
    if (!s->wpaused)
        return 0;
    if (s->dw.task)
        return -EBUSY;
    if (urio__task_cancel_pending(t))
        return -ECANCELED;
    err = stream_park(s, t, false, deadline);
    if (err == -ENOMEM)
        return err;
    urio__stream_unref(s);
    return err;
}

URIO_EXPORT int urio_stream_set_write_buffer_limits(urio_stream_t *s, size_t high, size_t low)
{
    if (s == NULL)
        return -EINVAL;
    if (high == 0)
        high = DEFAULT_HIGH;
    if (low == 0)
        low = high / 4;
    if (low > high)
        return -EINVAL;
    s->high = high;
    s->low = low;
    if (wbuffered(s) > high)
        s->wpaused = true;
    else if (wbuffered(s) <= low && s->wpaused) {
        s->wpaused = false;
        drainer_wake(s, 0);
    }
    return 0;
}

URIO_EXPORT size_t urio_stream_write_buffered(const urio_stream_t *s)
{
    return s ? wbuffered(s) : 0;
}

URIO_EXPORT int urio_stream_write_eof(urio_stream_t *s)
{
    if (s == NULL)
        return -EINVAL;
    if (!urio__loop_check_thread(s->loop, "urio_stream_write_eof"))
        return -EPERM;
    if (s->closed)
        return -EBADF;
    s->eof_asked = true;
    stream_step(s);
    return 0;
}

URIO_EXPORT int urio_stream_fd(const urio_stream_t *s)
{
    return s && !s->closed ? s->fd : -1;
}

URIO_EXPORT const char *urio_stream_peername(const urio_stream_t *s, char *buf, size_t n)
{
    if (buf == NULL || n == 0)
        return buf;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (s == NULL || s->fd < 0 || getpeername(s->fd, (struct sockaddr *)&ss, &len) < 0)
        snprintf(buf, n, "?");
    else
        urio__addr_format((struct sockaddr *)&ss, len, buf, n);
    return buf;
}

/* ------------------------------------------------------------------ */
/* When the loop closes                                                 */

/* "<urio_stream fd=7 peer=127.0.0.1:4242 created at file.c:42>" into buf. */
static void stream_describe(const urio_stream_t *s, char *buf, size_t n)
{
    char peer[80];
    urio_stream_peername(s, peer, sizeof peer);
    if (s->site && s->site->file)
        snprintf(buf, n, "<urio_stream fd=%d peer=%s created at %s:%d>", s->fd, peer,
                 s->site->file, s->site->line);
    else
        snprintf(buf, n, "<urio_stream fd=%d peer=%s>", s->fd, peer);
}

void urio__streams_close(urio__io_t *io)
{
    for (urio_stream_t *s = io->streams; s != NULL; s = s->next) {
        if (s->closed || s->server != NULL)
            continue;   /* (a connection's stream is its server's, reported with it) */
        if (io->loop->debug) {
            char desc[300];
            stream_describe(s, desc, sizeof desc);
            char *tb = s->stack ? urio__backtrace_format(s->stack,
                                                         "Object allocated at (most recent "
                                                         "call last):") : NULL;
            urio__log(URIO_LOG_WARNING, "unclosed %s%s%s", desc, tb ? "\n" : "", tb ? tb : "");
            urio__free(tb);
        }
        s->closed = true;
    }
}

void urio__streams_release(urio__io_t *io)
{
    while (io->streams)
        stream_free(io->streams);
}

/* ------------------------------------------------------------------ */
/* Connecting                                                           */

/* Connects a new socket to one address.  Returns: the fd, or a negative errno. */
static int connect_one(const struct sockaddr *sa, socklen_t len, int family, uint64_t deadline)
{
    int fd = urio_socket(family, SOCK_STREAM, 0, deadline);
    if (fd < 0)
        return fd;
    if (family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    int err = urio_connect(fd, sa, len, deadline);
    if (err < 0) {
        /* Shielded: a cancelled task must still not leak the socket. */
        urio_shield_begin();
        urio_close(fd, 0);
        urio_shield_end();
        return err;
    }
    return fd;
}

static int connected(urio_stream_t **out, int fd, const urio_site_t *site)
{
    urio__io_t *io = urio__io_get(urio__task_running()->loop);
    if (io == NULL) {
        close(fd);
        return -ENOMEM;
    }
    *out = urio__stream_wrap(io, fd, site);
    return *out ? 0 : -ENOMEM;
}

/* The message for a failed connect, naming host:port and the address tried. */
static int connect_failed(int err, const char *host, int port, const char *addr)
{
    switch (err) {
    case -ECONNREFUSED:
        return urio__io_fail(err, "connection to %s:%d (%s) refused", host, port, addr);
    case -ETIMEDOUT:
        return urio__io_fail(err, "connection to %s:%d (%s) timed out", host, port, addr);
    case -ECANCELED:
        return urio__io_fail(err, "connection to %s:%d (%s) cancelled", host, port, addr);
    default:
        return urio__io_fail(err, "connection to %s:%d (%s) failed: %s", host, port, addr,
                             urio_strerror(err));
    }
}

URIO_EXPORT int urio_open_connection_site(urio_stream_t **out, const char *host, int port,
                                          uint64_t deadline, const urio_site_t *site)
{
    urio__task_t *t = urio__io_task("urio_open_connection");
    if (t == NULL)
        return -EPERM;
    urio__io_clear_message();
    if (out == NULL || host == NULL || host[0] == '\0')
        return urio__io_fail(-EINVAL, "urio_open_connection(): %s",
                             out == NULL ? "NULL out" : "no host");
    *out = NULL;
    if (port <= 0 || port > 65535)
        return urio__io_fail(-EINVAL, "urio_open_connection(): port %d is out of range "
                             "(1..65535)", port);
    struct addrinfo *ai = NULL;
    int err = urio__resolve(host, port, false, deadline, &ai);
    if (err < 0)
        return err;
    char addr[80] = "?";
    err = -EHOSTUNREACH;
    for (struct addrinfo *a = ai; a != NULL; a = a->ai_next) {
        urio__addr_format(a->ai_addr, a->ai_addrlen, addr, sizeof addr);
        int fd = connect_one(a->ai_addr, a->ai_addrlen, a->ai_family, deadline);
        if (fd >= 0) {
            freeaddrinfo(ai);
            return connected(out, fd, site);
        }
        err = fd;
        if (err == -ETIMEDOUT || err == -ECANCELED)
            break;      /* the deadline is spent, or the caller gave up: no next address */
    }
    freeaddrinfo(ai);
    return connect_failed(err, host, port, addr);
}

URIO_EXPORT int urio_open_unix_connection_site(urio_stream_t **out, const char *path,
                                               uint64_t deadline, const urio_site_t *site)
{
    urio__task_t *t = urio__io_task("urio_open_unix_connection");
    if (t == NULL)
        return -EPERM;
    urio__io_clear_message();
    if (out == NULL || path == NULL || path[0] == '\0')
        return -EINVAL;
    *out = NULL;
    struct sockaddr_un un;
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    size_t plen = strlen(path);
    if (plen >= sizeof un.sun_path)
        return urio__io_fail(-ENAMETOOLONG, "unix socket path too long (%zu bytes, at most "
                             "%zu): %s", plen, sizeof un.sun_path - 1, path);
    memcpy(un.sun_path, path, plen);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen + 1);
    int fd = connect_one((struct sockaddr *)&un, len, AF_UNIX, deadline);
    if (fd < 0)
        return urio__io_fail(fd, "connection to unix:%s %s", path,
                             fd == -ECONNREFUSED ? "refused"
                             : fd == -ETIMEDOUT ? "timed out"
                             : fd == -ENOENT ? "failed: no such socket" : "failed");
    return connected(out, fd, site);
}
