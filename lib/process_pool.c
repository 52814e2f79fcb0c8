/*
 * process_pool.c — the process pool executor: the parent's side.
 *
 * A pool serves one loop: the one of its first job.  Each worker is a
 * process with a stream socket (its channel) and, where the kernel has
 * them, a pidfd; three ops in the loop's ring drive it: a recvmsg always
 * armed on the channel, a sendmsg while jobs are being written, and a poll
 * of the pidfd that completes when the worker exits.  Nothing blocks the
 * loop: CONFIG, the first frame, is written at once into the new socket's
 * empty buffer; everything else goes through the ring.
 *
 * Jobs wait in the pool's FIFO; each ready worker holds a pipeline of up to
 * PIPELINE jobs (filled round-robin, so a second job goes to a worker only
 * when every worker has one).  A worker runs them in order and sends each
 * result before starting the next, so when it dies the first job of its
 * pipeline is the one it held: that job fails (URIO_EBROKENWORKER, or
 * -ETIMEDOUT if the pool killed it for running late); the others go back
 * to the front of the FIFO, untouched.  A death is judged only once the
 * channel is read to its end and the process reaped, so a result written
 * just before dying is never mistaken for a lost one.
 *
 * A job lives inside its future (a future kind).  The caller holds one
 * reference, the pool another from submission until it settles the job; the
 * last one frees the input and output and lets go of the pool.
 */
#include "process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

enum {
    PIPELINE = 16,                  /* jobs a worker may hold (sent, not yet answered) */
    MAX_RECV_FDS = 16,              /* fds one recvmsg may bring (workers send one per message) */
    START_FAILURES_MAX = 3,         /* failed starts in a row, no worker ready: fail the queue */
    SHM_CACHE = 16,                 /* shared buffers kept for reuse */
};
#define START_TIMEOUT_NS (30ull * 1000000000u)
#define RETRY_NS (100ull * 1000000u)

typedef struct pool pool_t;
typedef struct worker worker_t;
typedef struct pjob pjob_t;
typedef struct loop_side loop_side_t;

/*
 * A shared buffer: a sealed memfd of fixed size, mapped read-write by the
 * parent for its whole life.  Buffers carry inputs and offered outputs of
 * 64 KiB and more; once a worker is done with one (and the future holding
 * an output in it is gone) it goes back to the pool's cache, so a payload
 * costs a copy, not a page allocation and zeroing per page, nor a mapping
 * per job (workers keep their mappings of the buffers they saw, by inode).
 */
typedef struct shm_buf {
    int fd;
    size_t len;
    void *map;
    struct shm_buf *next;        /* in the cache */
} shm_buf_t;

enum { W_STARTING, W_READY, W_RETIRING, W_DEAD };

struct pjob {
    pool_t *pool;
    urio_future_t *f;
    pjob_t *next, *prev;         /* the pool's FIFO, or the worker's pipeline */
    worker_t *w;                 /* the worker holding it, or NULL while queued */
    uint32_t seq;                /* its number on that worker */
    bool queued;                 /* in the FIFO */
    uint8_t sending;             /* batches in flight that read its input (a sendmsg) */
    bool settled;                /* the pool let go of it (its reference dropped) */
    uint16_t name_len;
    char *buf;                   /* the name, then the inline input */
    size_t in_len;
    shm_buf_t *in_buf;           /* the input, from 64 KiB up: a shared buffer, or NULL */
    shm_buf_t *out_buf;          /* a buffer offered for the output (as large as the input) */
    bool out_in_buf;             /* the output is in out_buf: kept until the future goes */
    urio_bytes_t out;            /* the result the future points to */
    void *out_map;               /* out.data when it is a mapping (munmap), else heap */
    uint64_t deadline;           /* while it is the head of a pipeline, with a timeout */
};

struct worker {
    pool_t *pool;
    worker_t *next, *prev;       /* the pool's workers */
    int state;                   /* W_* */
    pid_t pid;
    int pidfd;                   /* or -1 (no pidfd: the exit is polled with waitpid) */
    int fd;                      /* the channel */
    uint64_t started;            /* spawn time, for the start-up deadline */
    /* Ops: each stays alive (in this struct) until its final CQE. */
    urio__op_t recv_op, send_op, exit_op;
    /* Receiving: bytes [roff, rlen) not decoded yet; fds not claimed yet. */
    char *rbuf;
    size_t roff, rlen;
    struct msghdr rmh;
    struct iovec riov;
    _Alignas(struct cmsghdr) char rctl[CMSG_SPACE(MAX_RECV_FDS * sizeof(int))];
    int rfds[MAX_RECV_FDS * 2];
    unsigned nrfds;
    /* Sending: a batch of frames, written by one sendmsg (resumed when short). */
    pjob_t *pipe_head, *pipe_tail;
    unsigned npipe;
    pjob_t *unsent;              /* the first job of the pipeline not yet in a batch */
    uint32_t seq_next;
    struct msghdr smh;
    struct iovec siov[3 * PIPELINE];
    urio__pf_header_t shdr[PIPELINE];
    _Alignas(struct cmsghdr) char sctl[CMSG_SPACE(2 * PIPELINE * sizeof(int))];
    pjob_t *batch[PIPELINE];     /* the jobs the sendmsg in flight reads (each referenced) */
    unsigned nbatch;
    unsigned jobs_done;
    bool ready_seen;             /* READY came (its pid is known) */
    /* The end. */
    bool eof;                    /* the channel is read to its end (or failed) */
    bool reaped;                 /* the process is reaped: status holds how it ended */
    bool judged;                 /* its death was handled */
    bool timed_out;              /* the pool killed it: its job ran past the timeout */
    bool killed;                 /* the pool killed it (timeout, protocol, close) */
    int end_code, end_status;    /* from waitid: CLD_*, and the status or signal */
    char why[96];                /* a protocol error, for the message */
};

struct pool {
    urio_executor_t base;        /* first: the executor's kind */
    /* Settings, fixed at creation. */
    unsigned nworkers;
    unsigned max_jobs;
    uint64_t timeout_ns;
    uint64_t max_payload;
    uint64_t memory;
    int start;
    /* Loop thread (once bound). */
    urio_loop_t *loop;           /* the loop it serves, or NULL: not yet, or that loop closed */
    loop_side_t *ls;
    pool_t *lnext;               /* the loop side's pools */
    pjob_t *q_head, *q_tail;     /* jobs waiting for a worker */
    size_t nqueued;
    worker_t *workers;
    unsigned nlive;              /* workers STARTING or READY */
    unsigned nready;
    unsigned start_failures;     /* in a row, since a worker was last ready */
    bool shutdown;               /* no new jobs */
    bool closing;                /* the loop closes: nothing new starts, nothing is re-armed */
    bool dispatch_pending;       /* a step_end dispatch is asked for */
    bool broken_start;           /* workers fail to start: no respawn until the next job */
    urio_handle_t timer;         /* the deadline / retry timer, or id 0 */
    uint64_t timer_at;
    uint64_t retry_at;           /* when to try starting workers again, or 0 */
    bool arming, rearm;          /* pool_arm_timer is running / was asked again meanwhile */
    bool forgetting;             /* stopped: the loop side lets go of it in a callback */
    uint64_t t_first_job;
    urio_process_pool_stats_t st;
    shm_buf_t *bufs;             /* guarded by mu: buffers nobody uses, for reuse */
    unsigned nbufs;
    /* Any thread. */
    atomic_uint refs;            /* the owner's + one per job */
    pthread_mutex_t mu;          /* guards `stopped` for waiters on other threads */
    pthread_cond_t cv;
    bool stopped;                /* no worker left after shutdown (or its loop closed) */
};

struct loop_side {
    int index;
    pool_t *pools;               /* pools serving this loop */
};

static void pool_dispatch(pool_t *p);
static void pool_fill(pool_t *p);
static void worker_check_end(worker_t *w);
static void pool_arm_timer(pool_t *p);
static void pool_check_stopped(pool_t *p);
static void worker_kill(worker_t *w, const char *why);
static void worker_batch_release(worker_t *w);
static void pool_forget(void *arg);

/* ------------------------------------------------------------------ */
/* Jobs                                                                 */

static void buf_destroy(shm_buf_t *b)
{
    munmap(b->map, b->len);
    close(b->fd);
    urio__free(b);
}

/* A buffer of exactly len bytes: from the cache, or new.  Any thread. */
static shm_buf_t *buf_get(pool_t *p, size_t len, int *err)
{
    pthread_mutex_lock(&p->mu);
    for (shm_buf_t **bp = &p->bufs; *bp != NULL; bp = &(*bp)->next) {
        if ((*bp)->len == len) {
            shm_buf_t *b = *bp;
            *bp = b->next;
            p->nbufs--;
            pthread_mutex_unlock(&p->mu);
            return b;
        }
    }
    pthread_mutex_unlock(&p->mu);
    shm_buf_t *b = urio__malloc(sizeof *b);
    if (b == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    b->len = len;
    b->fd = urio__pf_shm_create(len, &b->map);
    if (b->fd < 0) {
        *err = b->fd;
        urio__free(b);
        return NULL;
    }
    int ret = urio__pf_shm_seal(b->fd);
    if (ret < 0) {
        *err = ret;
        munmap(b->map, len);
        close(b->fd);
        urio__free(b);
        return NULL;
    }
    return b;
}

/* Back to the cache (the least recently put goes when it is full).  Any thread. */
static void buf_put(pool_t *p, shm_buf_t *b)
{
    shm_buf_t *drop = NULL;
    pthread_mutex_lock(&p->mu);
    b->next = p->bufs;
    p->bufs = b;
    if (++p->nbufs > SHM_CACHE) {
        shm_buf_t **bp = &p->bufs;
        while ((*bp)->next != NULL)
            bp = &(*bp)->next;
        drop = *bp;
        *bp = NULL;
        p->nbufs--;
    }
    pthread_mutex_unlock(&p->mu);
    if (drop != NULL)
        buf_destroy(drop);
}

static void buf_drop_cache(pool_t *p)
{
    pthread_mutex_lock(&p->mu);
    shm_buf_t *b = p->bufs;
    p->bufs = NULL;
    p->nbufs = 0;
    pthread_mutex_unlock(&p->mu);
    while (b != NULL) {
        shm_buf_t *n = b->next;
        buf_destroy(b);
        b = n;
    }
}

static void pool_unref(pool_t *p)
{
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1)
        return;
    buf_drop_cache(p);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    urio__free(p);
}

/*
 * Lets go of j's input and of the buffer offered for its output, unless the
 * output is in it: buffers go back to the pool's cache (the worker is done
 * with them), or are destroyed when the job has no pool.
 */
static void job_release_input(pjob_t *j)
{
    urio__free(j->buf);
    j->buf = NULL;
    shm_buf_t *bufs[2] = { j->in_buf, j->out_in_buf ? NULL : j->out_buf };
    j->in_buf = NULL;
    if (!j->out_in_buf)
        j->out_buf = NULL;
    for (int i = 0; i < 2; i++) {
        if (bufs[i] == NULL)
            continue;
        if (j->pool != NULL)
            buf_put(j->pool, bufs[i]);
        else
            buf_destroy(bufs[i]);
    }
}

static void job_finalize(urio_future_t *f)
{
    pjob_t *j = urio__future_ext(f);
    job_release_input(j);
    if (j->out_in_buf)
        buf_put(j->pool, j->out_buf);
    else if (j->out_map != NULL)
        munmap(j->out_map, j->out.len);
    else
        urio__free((void *)j->out.data);
    if (j->pool != NULL)
        pool_unref(j->pool);
}

static void job_describe(const urio_future_t *f, char *buf, size_t n)
{
    const pjob_t *j = urio__future_ext((urio_future_t *)f);
    snprintf(buf, n, "<Future %s process job '%.*s'>", urio__future_state_name(f),
             (int)j->name_len, j->buf ? j->buf : "?");
}

static const urio__future_ops_t job_ops = {
    .kind = "Future",
    .sealed = true,             /* its outcome is its worker's */
    .describe = job_describe,
    .finalize = job_finalize,
};

/* The pool lets go of j: its future gets err (0: the output) unless it is done. */
static void job_settle(pjob_t *j, int err, const char *fmt, ...) URIO_PRINTF(3, 4);
static void job_settle(pjob_t *j, int err, const char *fmt, ...)
{
    if (j->settled)
        return;
    j->settled = true;
    urio__future_set_cancel_hook(j->f, NULL, NULL);
    if (!urio_future_done(j->f)) {
        char *msg = NULL;
        if (err != 0 && err != -ECANCELED && fmt != NULL) {
            va_list ap;
            va_start(ap, fmt);
            msg = urio__vasprintf(fmt, ap);     /* NULL on ENOMEM: the error without text */
            va_end(ap);
        }
        urio__future_settle(j->f, err, err == 0 ? &j->out : NULL, msg);
    }
    if (j->sending == 0)
        job_release_input(j);   /* else when the sendmsg reading it completes */
    urio_future_unref(j->f);    /* the pool's reference */
}

static void queue_remove(pool_t *p, pjob_t *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        p->q_head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        p->q_tail = j->prev;
    j->next = j->prev = NULL;
    j->queued = false;
    p->nqueued--;
}

static void queue_push_back(pool_t *p, pjob_t *j)
{
    j->w = NULL;
    j->next = NULL;
    j->prev = p->q_tail;
    if (p->q_tail)
        p->q_tail->next = j;
    else
        p->q_head = j;
    p->q_tail = j;
    j->queued = true;
    p->nqueued++;
}

/* Puts a run of jobs [first..] back at the front of the FIFO, in their order. */
static void queue_push_front_list(pool_t *p, pjob_t *first)
{
    pjob_t *last = NULL;
    size_t n = 0;
    for (pjob_t *j = first; j != NULL; j = j->next) {
        j->w = NULL;
        j->queued = true;
        j->deadline = 0;
        last = j;
        n++;
    }
    if (last == NULL)
        return;
    first->prev = NULL;
    last->next = p->q_head;
    if (p->q_head)
        p->q_head->prev = last;
    else
        p->q_tail = last;
    p->q_head = first;
    p->nqueued += n;
}

/* The future was cancelled (loop thread): a job still queued never runs. */
static void job_cancel_hook(void *arg)
{
    pjob_t *j = arg;
    pool_t *p = j->pool;
    if (j->queued) {
        queue_remove(p, j);
        job_settle(j, -ECANCELED, NULL);
        pool_check_stopped(p);
    }
    /* Held by a worker: it runs; its output is dropped when it comes. */
}

static void pool_fail_queue(pool_t *p, int err, const char *msg)
{
    while (p->q_head != NULL) {
        pjob_t *j = p->q_head;
        queue_remove(p, j);
        if (msg)
            job_settle(j, err, "%s", msg);
        else
            job_settle(j, err, NULL);
    }
}

/* ------------------------------------------------------------------ */
/* How a worker ended, in words                                         */

static void describe_end(const worker_t *w, char *buf, size_t n)
{
    if (!w->reaped) {
        snprintf(buf, n, "its channel failed");
    } else if (w->end_code == CLD_EXITED) {
        snprintf(buf, n, "exited with status %d", w->end_status);
    } else {
        const char *name = sigabbrev_np(w->end_status);
        snprintf(buf, n, "killed by signal SIG%s%s", name ? name : "?",
                 w->end_code == CLD_DUMPED ? ", core dumped" : "");
    }
}

/* ------------------------------------------------------------------ */
/* Workers: starting                                                    */

static void recv_complete(urio__op_t *op, int res, uint32_t flags);
static void send_complete(urio__op_t *op, int res, uint32_t flags);
static void exit_complete(urio__op_t *op, int res, uint32_t flags);

static urio__ring_t *ring_of(pool_t *p)
{
    return &p->loop->ring;
}

static void worker_arm_recv(worker_t *w)
{
    if (w->eof || w->pool->closing)
        return;
    if (w->rlen == w->roff)
        w->roff = w->rlen = 0;
    else if (2 * (size_t)URIO__PF_FRAME_MAX - w->rlen < URIO__PF_FRAME_MAX) {
        memmove(w->rbuf, w->rbuf + w->roff, w->rlen - w->roff);
        w->rlen -= w->roff;
        w->roff = 0;
    }
    w->riov.iov_base = w->rbuf + w->rlen;
    w->riov.iov_len = 2 * (size_t)URIO__PF_FRAME_MAX - w->rlen;
    memset(&w->rmh, 0, sizeof w->rmh);
    w->rmh.msg_iov = &w->riov;
    w->rmh.msg_iovlen = 1;
    w->rmh.msg_control = w->rctl;
    w->rmh.msg_controllen = sizeof w->rctl;
    int err = urio__op_recvmsg(ring_of(w->pool), &w->recv_op, w->fd, &w->rmh, MSG_CMSG_CLOEXEC);
    if (err < 0) {
        urio__log(URIO_LOG_ERROR, "process pool: cannot read worker pid %d's channel: %s; "
                  "killing it", (int)w->pid, urio_strerror(err));
        w->eof = true;
        worker_kill(w, "its channel cannot be read");
    }
}

static void worker_arm_exit(worker_t *w)
{
    if (w->pidfd < 0 || w->pool->closing)
        return;
    if (urio__op_poll(ring_of(w->pool), &w->exit_op, w->pidfd, POLLIN) < 0) {
        /* Without the poll, the exit is seen through the channel's end. */
        close(w->pidfd);
        w->pidfd = -1;
    }
}

static void worker_link(pool_t *p, worker_t *w)
{
    w->next = p->workers;
    w->prev = NULL;
    if (p->workers)
        p->workers->prev = w;
    p->workers = w;
}

static void worker_unlink(pool_t *p, worker_t *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        p->workers = w->next;
    if (w->next)
        w->next->prev = w->prev;
}

/* Starts one worker.  Returns: 0 or a negative errno (nothing left behind). */
static int worker_start(pool_t *p)
{
    worker_t *w = urio__calloc(1, sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    w->rbuf = urio__malloc(2 * (size_t)URIO__PF_FRAME_MAX);
    if (w->rbuf == NULL) {
        urio__free(w);
        return -ENOMEM;
    }
    w->pool = p;
    w->pidfd = -1;
    w->recv_op.complete = recv_complete;
    w->send_op.complete = send_complete;
    w->exit_op.complete = exit_complete;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        int err = -errno;
        urio__free(w->rbuf);
        urio__free(w);
        return err;
    }
    /* CONFIG first, into the empty socket buffer: this cannot block. */
    struct {
        urio__pf_header_t h;
        urio__pf_config_t c;
    } cfg;
    urio__pf_header_init(&cfg.h, URIO__PF_CONFIG, 0, URIO__PF_VERSION, 0, 0, sizeof cfg.c);
    cfg.c = (urio__pf_config_t){ .max_payload = p->max_payload, .memory = p->memory };
    int err = 0;
    if (send(sv[0], &cfg, sizeof cfg, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)sizeof cfg)
        err = -errno;
    pid_t pid = 0;
    if (err == 0)
        err = urio__process_spawn(p->start, sv[1], &pid);
    else
        close(sv[1]);
    if (err < 0) {
        close(sv[0]);
        urio__free(w->rbuf);
        urio__free(w);
        return err;
    }
    w->fd = sv[0];
    w->pid = pid;
    w->started = urio__now();
    if (pid > 0) {
        int fd = urio__process_pidfd_open(pid);
        w->pidfd = fd >= 0 ? fd : -1;
    }
    w->state = W_STARTING;
    worker_link(p, w);
    p->nlive++;
    p->st.spawned++;
    worker_arm_recv(w);
    worker_arm_exit(w);
    return 0;
}

/* Starts workers until the pool is at its size (or, shut down, while jobs wait). */
static void pool_fill(pool_t *p)
{
    if (p->loop == NULL || p->closing || p->broken_start)
        return;
    if (p->retry_at != 0 && urio__now() < p->retry_at)
        return;     /* starts failed lately: the timer tries again */
    p->retry_at = 0;
    unsigned want = p->nworkers;
    if (p->shutdown) {
        size_t need = p->nqueued;
        want = need < want ? (unsigned)need : want;
    }
    while (p->nlive < want) {
        int err = worker_start(p);
        if (err < 0) {
            urio__log(URIO_LOG_WARNING, "process pool: starting a worker failed: %s; "
                      "retrying in %llu ms", urio_strerror(err),
                      (unsigned long long)(RETRY_NS / 1000000u));
            if (p->nlive == 0 && ++p->start_failures >= START_FAILURES_MAX) {
                p->broken_start = true;
                char msg[160];
                snprintf(msg, sizeof msg, "no worker could be started: %s",
                         urio_strerror(err));
                pool_fail_queue(p, URIO_EBROKENWORKER, msg);
                pool_check_stopped(p);
                return;
            }
            p->retry_at = urio__now() + RETRY_NS;
            pool_arm_timer(p);
            return;
        }
    }
}

/* ------------------------------------------------------------------ */
/* Workers: sending jobs                                                */

/* Writes the jobs of w's pipeline not yet written, in one sendmsg. */
static void worker_send(worker_t *w)
{
    if (w->send_op.state != URIO__OP_IDLE || w->unsent == NULL || w->eof || w->pool->closing)
        return;
    memset(&w->smh, 0, sizeof w->smh);
    unsigned niov = 0, nfds = 0, k = 0;
    int fds[2 * PIPELINE];
    for (pjob_t *j = w->unsent; j != NULL && k < PIPELINE; j = j->next, k++) {
        /* The kernel reads the input (and the memfd's number) until the CQE: hold it. */
        urio_future_ref(j->f);
        j->sending++;
        w->batch[w->nbatch++] = j;
        bool shm = j->in_buf != NULL;
        uint8_t flags = (shm ? URIO__PF_SHM : 0) | (j->out_buf ? URIO__PF_OUTBUF : 0);
        urio__pf_header_init(&w->shdr[k], URIO__PF_JOB, flags, j->seq, 0, j->name_len,
                             j->in_len);
        w->siov[niov++] = (struct iovec){ &w->shdr[k], sizeof w->shdr[k] };
        w->siov[niov++] = (struct iovec){ j->buf, j->name_len };
        if (shm)
            fds[nfds++] = j->in_buf->fd;
        if (j->out_buf)
            fds[nfds++] = j->out_buf->fd;
        if (!shm && j->in_len > 0)
            w->siov[niov++] = (struct iovec){ j->buf + j->name_len, j->in_len };
        w->unsent = j->next;
    }
    w->smh.msg_iov = w->siov;
    w->smh.msg_iovlen = niov;
    if (nfds > 0) {
        memset(&w->sctl, 0, sizeof w->sctl);
        w->smh.msg_control = w->sctl;
        w->smh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&w->smh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    int err = urio__op_sendmsg(ring_of(w->pool), &w->send_op, w->fd, &w->smh, MSG_NOSIGNAL);
    if (err < 0) {
        /* The ring cannot take it: this worker is unusable; its jobs go elsewhere. */
        urio__log(URIO_LOG_ERROR, "process pool: cannot write to worker pid %d: %s; killing it",
                  (int)w->pid, urio_strerror(err));
        worker_batch_release(w);
        worker_kill(w, "its channel cannot be written");
    }
}

static void send_complete(urio__op_t *op, int res, uint32_t flags)
{
    (void)flags;
    worker_t *w = urio__container_of(op, worker_t, send_op);
    if (res < 0 || w->pool->closing || w->state == W_DEAD) {
        /* EPIPE and friends: the worker is gone; its end is handled through the exit. */
        worker_batch_release(w);
        worker_check_end(w);
        return;
    }
    /* A short write: resume after what went (the fds went with the first byte). */
    size_t left = (size_t)res;
    struct iovec *iov = w->smh.msg_iov;
    size_t n = w->smh.msg_iovlen;
    while (n > 0 && left >= iov->iov_len) {
        left -= iov->iov_len;
        iov++;
        n--;
    }
    if (n > 0) {
        iov->iov_base = (char *)iov->iov_base + left;
        iov->iov_len -= left;
        w->smh.msg_iov = iov;
        w->smh.msg_iovlen = n;
        w->smh.msg_control = NULL;
        w->smh.msg_controllen = 0;
        if (urio__op_sendmsg(ring_of(w->pool), &w->send_op, w->fd, &w->smh, MSG_NOSIGNAL) < 0) {
            worker_batch_release(w);
            worker_kill(w, "its channel cannot be written");
        }
        return;
    }
    worker_batch_release(w);
    worker_send(w);     /* jobs that came meanwhile */
}

/* The sendmsg that read the batch's inputs is over: let go of them. */
static void worker_batch_release(worker_t *w)
{
    unsigned n = w->nbatch;
    w->nbatch = 0;
    for (unsigned i = 0; i < n; i++) {
        pjob_t *j = w->batch[i];
        if (--j->sending == 0 && j->settled)
            job_release_input(j);
        urio_future_unref(j->f);
    }
}

/* Gives w the job j: the end of its pipeline. */
static void worker_take(worker_t *w, pjob_t *j)
{
    pool_t *p = w->pool;
    j->w = w;
    j->seq = ++w->seq_next;
    j->next = NULL;
    j->prev = w->pipe_tail;
    if (w->pipe_tail)
        w->pipe_tail->next = j;
    else
        w->pipe_head = j;
    w->pipe_tail = j;
    if (w->unsent == NULL)
        w->unsent = j;
    if (w->npipe++ == 0 && p->timeout_ns) {
        j->deadline = urio__now() + p->timeout_ns;
        if (p->timer.id == 0)       /* deadlines only grow: an armed timer comes first */
            pool_arm_timer(p);
    }
}

/* Hands queued jobs to ready workers, round-robin, up to PIPELINE each. */
static void pool_dispatch(pool_t *p)
{
    p->dispatch_pending = false;
    if (p->q_head == NULL || p->closing || p->nready == 0)
        return;
    for (unsigned depth = 1; depth <= PIPELINE && p->q_head != NULL; depth++) {
        for (worker_t *w = p->workers; w != NULL && p->q_head != NULL; w = w->next) {
            /* A killed worker takes nothing more: what it took would fail with it. */
            if (w->state != W_READY || w->killed || w->npipe >= depth)
                continue;
            /* A worker about to be recycled takes no more than it has left to do. */
            if (p->max_jobs && w->jobs_done + w->npipe >= p->max_jobs)
                continue;
            pjob_t *j = p->q_head;
            queue_remove(p, j);
            worker_take(w, j);
        }
    }
    for (worker_t *w = p->workers; w != NULL; w = w->next)
        if (w->unsent != NULL)
            worker_send(w);
}

/* Stops giving w jobs and lets it exit: it reads the end of its channel. */
static void worker_retire(worker_t *w)
{
    pool_t *p = w->pool;
    if (w->state == W_READY)
        p->nready--;
    if (w->state == W_READY || w->state == W_STARTING)
        p->nlive--;
    w->state = W_RETIRING;
    shutdown(w->fd, SHUT_WR);
}

/* ------------------------------------------------------------------ */
/* Workers: receiving                                                   */

static void worker_kill(worker_t *w, const char *why)
{
    if (why && w->why[0] == '\0')
        snprintf(w->why, sizeof w->why, "%s", why);
    w->killed = true;
    if (w->pid > 0)
        urio__process_signal(w->pidfd, w->pid, SIGKILL);
    else
        shutdown(w->fd, SHUT_RDWR);     /* no pid yet (a fork server's): it reads the end */
}

static void worker_ready(worker_t *w, const urio__pf_frame_t *f)
{
    pool_t *p = w->pool;
    urio__pf_ready_t r;
    memcpy(&r, f->payload, sizeof r);
    w->ready_seen = true;
    if (w->pid == 0) {
        /* The fork server's worker: a child of ours, so its pid is ours to open. */
        w->pid = (pid_t)r.pid;
        int fd = urio__process_pidfd_open(w->pid);
        w->pidfd = fd >= 0 ? fd : -1;
        worker_arm_exit(w);
    } else if ((pid_t)r.pid != w->pid) {
        worker_kill(w, "READY with another pid");
        return;
    }
    if (w->state != W_STARTING)
        return;         /* retired before it was ready: it exits on the channel's end */
    w->state = W_READY;
    p->nready++;
    p->start_failures = 0;
    if (p->st.startup_ns == 0 && p->nready == p->nworkers)
        p->st.startup_ns = urio__now() - p->t_first_job;
    if (p->shutdown && p->q_head == NULL)
        worker_retire(w);
}

static void worker_result(worker_t *w, const urio__pf_frame_t *f)
{
    pool_t *p = w->pool;
    pjob_t *j = w->pipe_head;
    if (j == NULL || j->w != w || w->unsent == j || f->h.seq != j->seq) {
        worker_kill(w, "a result for no job it held");
        return;
    }
    int fd = -1;
    bool in_buf = (f->h.flags & URIO__PF_INOFFER) != 0;
    if (in_buf && (j->out_buf == NULL || f->h.payload_len > j->out_buf->len)) {
        worker_kill(w, "a result in a buffer it was not offered");
        return;
    }
    if ((f->h.flags & URIO__PF_SHM) && !in_buf) {
        if (w->nrfds == 0) {
            worker_kill(w, "a shared-memory result without its memfd");
            return;
        }
        fd = w->rfds[0];
        memmove(w->rfds, w->rfds + 1, --w->nrfds * sizeof(int));
    }
    /* Out of the pipeline: the next one is now the one it runs. */
    w->pipe_head = j->next;
    if (w->pipe_head)
        w->pipe_head->prev = NULL;
    else
        w->pipe_tail = NULL;
    w->npipe--;
    j->next = j->prev = NULL;
    j->w = NULL;
    if (w->pipe_head && p->timeout_ns) {
        w->pipe_head->deadline = urio__now() + p->timeout_ns;
        if (p->timer.id == 0)
            pool_arm_timer(p);
    }
    w->jobs_done++;
    p->st.jobs_done++;

    if (f->h.err != 0) {
        if (f->h.text_len)
            job_settle(j, f->h.err, "%.*s", (int)f->h.text_len, f->text);
        else
            job_settle(j, f->h.err, NULL);
    } else if (urio_future_done(j->f)) {
        if (fd >= 0)
            close(fd);
        job_settle(j, 0, NULL);      /* cancelled meanwhile: the output is nobody's */
    } else if (in_buf) {
        j->out_in_buf = true;        /* the offered buffer is the future's until it goes */
        j->out.data = j->out_buf->map;
        j->out.len = f->h.payload_len;
        job_settle(j, 0, NULL);
    } else if (fd >= 0) {
        const char *why = NULL;
        void *map = urio__pf_shm_map(fd, f->h.payload_len, &why);
        close(fd);
        if (map == NULL) {
            job_settle(j, URIO_EBROKENWORKER, "worker pid %d sent a bad result: %s",
                       (int)w->pid, why);
            worker_kill(w, why);
            return;
        }
        j->out_map = map;
        j->out.data = map;
        j->out.len = f->h.payload_len;
        job_settle(j, 0, NULL);
    } else {
        void *data = urio__malloc(f->h.payload_len ? f->h.payload_len : 1);
        if (data == NULL) {
            job_settle(j, -ENOMEM, "no memory for the job's output (%llu bytes)",
                       (unsigned long long)f->h.payload_len);
        } else {
            memcpy(data, f->payload, f->h.payload_len);
            j->out.data = data;
            j->out.len = f->h.payload_len;
            job_settle(j, 0, NULL);
        }
    }
    if (p->max_jobs && w->jobs_done >= p->max_jobs && w->state == W_READY) {
        p->st.recycled++;
        worker_retire(w);
        pool_fill(p);
    } else if (p->shutdown && w->npipe == 0 && p->q_head == NULL && w->state == W_READY) {
        worker_retire(w);
    }
}

/* Decodes every whole frame received from w.  Returns: false if w was killed for one. */
static bool worker_decode(worker_t *w)
{
    pool_t *p = w->pool;
    unsigned accept = w->ready_seen ? 1u << URIO__PF_RESULT : 1u << URIO__PF_READY;
    while (!w->killed) {
        urio__pf_frame_t f;
        const char *why = NULL;
        ssize_t n = urio__pf_decode(w->rbuf + w->roff, w->rlen - w->roff, accept,
                                    p->max_payload, &f, &why);
        if (n == 0)
            return true;
        if (n < 0) {
            worker_kill(w, why);
            return false;
        }
        w->roff += (size_t)n;
        if (f.h.type == URIO__PF_READY) {
            worker_ready(w, &f);
            accept = 1u << URIO__PF_RESULT;
        } else {
            worker_result(w, &f);
        }
    }
    return false;
}

/* Takes the fds a recvmsg brought.  Returns: false if they overflowed. */
static bool take_fds(worker_t *w, const struct msghdr *mh)
{
    if (mh->msg_flags & MSG_CTRUNC)
        return false;
    if (mh->msg_controllen == 0)
        return true;
    bool ok = true;
    for (struct cmsghdr *c = CMSG_FIRSTHDR((struct msghdr *)mh); c != NULL;
         c = CMSG_NXTHDR((struct msghdr *)mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (w->nrfds < sizeof w->rfds / sizeof w->rfds[0])
                w->rfds[w->nrfds++] = fd;
            else {
                close(fd);
                ok = false;
            }
        }
    }
    return ok;
}

/*
 * The worker's process is reaped: what it wrote before dying is in the
 * socket.  Reads it without waiting (no op is in flight), to the end.
 */
static void worker_drain(worker_t *w)
{
    while (!w->eof) {
        if (2 * (size_t)URIO__PF_FRAME_MAX - w->rlen < URIO__PF_FRAME_MAX) {
            memmove(w->rbuf, w->rbuf + w->roff, w->rlen - w->roff);
            w->rlen -= w->roff;
            w->roff = 0;
        }
        struct iovec iov = { w->rbuf + w->rlen, 2 * (size_t)URIO__PF_FRAME_MAX - w->rlen };
        _Alignas(struct cmsghdr) char ctl[CMSG_SPACE(MAX_RECV_FDS * sizeof(int))];
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = ctl, .msg_controllen = sizeof ctl };
        ssize_t n = recvmsg(w->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n <= 0) {
            w->eof = true;
            break;
        }
        w->rlen += (size_t)n;
        if (!take_fds(w, &mh) || !worker_decode(w))
            w->eof = true;
    }
}

static void recv_complete(urio__op_t *op, int res, uint32_t flags)
{
    (void)flags;
    worker_t *w = urio__container_of(op, worker_t, recv_op);
    pool_t *p = w->pool;
    if (p->closing || w->judged) {
        w->eof = true;
        worker_check_end(w);
        return;
    }
    if (res > 0) {
        w->rlen += (size_t)res;
        if (!take_fds(w, &w->rmh)) {
            worker_kill(w, "too many fds in one message");
            w->eof = true;
        } else if (!worker_decode(w)) {
            w->eof = true;
        }
    } else if (res == 0 || res == -ECONNRESET) {
        w->eof = true;      /* ECONNRESET: it died with bytes of ours unread */
    } else if (!w->reaped) {
        w->eof = true;
        worker_kill(w, "its channel failed");
    }
    /* Reaped (the recv was cancelled, or raced the exit): read what is left now. */
    if (!w->eof) {
        if (w->reaped)
            worker_drain(w);
        else
            worker_arm_recv(w);
    }
    worker_check_end(w);
    if (!p->closing)
        pool_dispatch(p);
}

/* Reaps w if it exited.  Returns: true if it did (w->reaped, status filled). */
static bool worker_reap(worker_t *w, bool block)
{
    if (w->reaped)
        return true;
    if (w->pid <= 0)
        return false;
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int flags = WEXITED | (block ? 0 : WNOHANG);
    int ret;
    do {
        if (w->pidfd >= 0)
            ret = waitid(P_PIDFD, (id_t)w->pidfd, &si, flags);
        else
            ret = waitid(P_PID, (id_t)w->pid, &si, flags);
    } while (ret < 0 && errno == EINTR);
    if (ret < 0) {
        /* ECHILD: not ours to reap (cannot happen for our own child): count it gone. */
        w->reaped = true;
        w->end_code = CLD_KILLED;
        w->end_status = 0;
        return true;
    }
    if (si.si_pid == 0)
        return false;
    w->reaped = true;
    w->end_code = si.si_code;
    w->end_status = si.si_status;
    return true;
}

static void exit_complete(urio__op_t *op, int res, uint32_t flags)
{
    (void)flags;
    (void)res;
    worker_t *w = urio__container_of(op, worker_t, exit_op);
    if (w->pool->closing) {
        worker_check_end(w);
        return;
    }
    if (!worker_reap(w, false)) {
        worker_arm_exit(w);         /* woken early: wait again */
        return;
    }
    if (w->recv_op.state != URIO__OP_IDLE) {
        /* What it wrote before dying is read by the recv in flight, or after its cancel. */
        urio__op_cancel(ring_of(w->pool), &w->recv_op);
    } else {
        worker_drain(w);
    }
    pool_t *p = w->pool;
    worker_check_end(w);        /* may free w */
    pool_dispatch(p);
}

/* ------------------------------------------------------------------ */
/* Workers: the end                                                     */

/* The worker is gone and its channel read to the end: fail what it held, requeue the rest. */
static void worker_judge(worker_t *w)
{
    pool_t *p = w->pool;
    w->judged = true;
    bool was_live = w->state == W_STARTING || w->state == W_READY;
    if (w->state == W_READY)
        p->nready--;
    if (was_live)
        p->nlive--;
    bool started = w->state != W_STARTING;
    w->state = W_DEAD;
    char how[96];
    describe_end(w, how, sizeof how);
    pjob_t *held = w->pipe_head;
    if (held != NULL) {
        pjob_t *rest = held->next;
        held->next = held->prev = NULL;
        held->w = NULL;
        if (rest)
            rest->prev = NULL;
        w->pipe_head = w->pipe_tail = w->unsent = NULL;
        w->npipe = 0;
        p->st.jobs_failed++;
        p->st.died++;
        if (w->timed_out) {
            job_settle(held, -ETIMEDOUT, "job '%.*s' ran past its timeout of %.3f s: worker "
                       "pid %d was killed", (int)held->name_len, held->buf,
                       (double)p->timeout_ns / 1e9, (int)w->pid);
        } else {
            job_settle(held, URIO_EBROKENWORKER, "worker pid %d died (%s%s%s) while running "
                       "job '%.*s'", (int)w->pid, how, w->why[0] ? ": " : "", w->why,
                       (int)held->name_len, held->buf);
        }
        queue_push_front_list(p, rest);
    } else if (!started) {
        p->st.died++;
        if (!p->closing && !p->shutdown) {
            urio__log(URIO_LOG_WARNING, "process pool: worker pid %d %s before it was ready%s%s",
                      (int)w->pid, how, w->why[0] ? ": " : "", w->why);
            /*
             * Failing starts in a row: a program whose workers cannot start
             * fails its jobs rather than leave them waiting forever; one whose
             * starting workers are being killed from outside (SIGKILL: an
             * operator, the OOM killer) slows down and keeps trying.
             */
            bool outside_kill = w->end_code != CLD_EXITED && w->end_status == SIGKILL &&
                                !w->killed;
            if (++p->start_failures >= START_FAILURES_MAX) {
                p->retry_at = urio__now() + RETRY_NS;
                pool_arm_timer(p);
            }
            if (p->start_failures >= START_FAILURES_MAX && p->nready == 0 && !outside_kill) {
                p->broken_start = true;
                char msg[200];
                snprintf(msg, sizeof msg, "workers die before they are ready (the last, pid "
                         "%d, %s)", (int)w->pid, how);
                pool_fail_queue(p, URIO_EBROKENWORKER, msg);
            }
        }
    } else if (w->killed && w->why[0] && !p->closing) {
        urio__log(URIO_LOG_WARNING, "process pool: worker pid %d killed: %s", (int)w->pid, w->why);
    }
    for (unsigned i = 0; i < w->nrfds; i++)
        close(w->rfds[i]);
    w->nrfds = 0;
}

/* Frees w once it is judged and none of its ops is in flight. */
static void worker_maybe_free(worker_t *w)
{
    if (!w->judged || w->recv_op.state != URIO__OP_IDLE || w->send_op.state != URIO__OP_IDLE ||
        w->exit_op.state != URIO__OP_IDLE)
        return;
    pool_t *p = w->pool;
    worker_unlink(p, w);
    close(w->fd);
    if (w->pidfd >= 0)
        close(w->pidfd);
    urio__free(w->rbuf);
    urio__free(w);
    pool_check_stopped(p);
}

/* After any event of w's: judge its end when both halves are known, then free it. */
static void worker_check_end(worker_t *w)
{
    pool_t *p = w->pool;
    if (w->judged || p->closing) {
        if (w->judged)
            worker_maybe_free(w);
        return;
    }
    if (w->eof && !w->reaped && w->pidfd < 0)
        worker_reap(w, false);      /* no pidfd: the timer polls it */
    if (w->eof && w->reaped) {
        worker_judge(w);
        if (w->send_op.state != URIO__OP_IDLE)
            urio__op_cancel(ring_of(p), &w->send_op);
        worker_maybe_free(w);       /* w is not touched after this */
        pool_fill(p);
    } else if (w->eof && !w->reaped && w->pidfd < 0) {
        /*
         * The timer polls its exit.  Arming it checks every worker's time now,
         * this one's too: it may be judged and freed in there.  Not touched after.
         */
        pool_arm_timer(p);
    }
}

/* ------------------------------------------------------------------ */
/* Time: job deadlines, start-up deadlines, retries, exits without pidfd */

/* Acts on every deadline passed; returns the next one (UINT64_MAX: none). */
static uint64_t pool_check_time(pool_t *p, uint64_t now)
{
    uint64_t next = UINT64_MAX;
    for (worker_t *w = p->workers, *nw; w != NULL; w = nw) {
        nw = w->next;
        if (w->judged)
            continue;
        if (w->eof && !w->reaped && w->pidfd < 0) {
            if (worker_reap(w, false))
                worker_check_end(w);        /* judged, maybe freed: not touched again */
            else if (next > now + 1000000u)
                next = now + 1000000u;      /* no pidfd: poll the exit every ms */
            continue;
        }
        if (w->killed)
            continue;
        if (w->state == W_STARTING) {
            uint64_t d = w->started + START_TIMEOUT_NS;
            if (now >= d)
                worker_kill(w, "not ready after 30 s");
            else if (d < next)
                next = d;
        } else if (w->state == W_READY && w->pipe_head && w->pipe_head->deadline &&
                   w->unsent != w->pipe_head) {
            uint64_t d = w->pipe_head->deadline;
            if (now >= d) {
                w->timed_out = true;
                worker_kill(w, NULL);
            } else if (d < next) {
                next = d;
            }
        }
    }
    if (p->retry_at != 0 && p->retry_at < next)
        next = p->retry_at;
    return next;
}

/* Starts workers again if a failed start's retry is due. */
static void pool_retry_due(pool_t *p, uint64_t now)
{
    if (p->retry_at != 0 && now >= p->retry_at) {
        p->retry_at = 0;
        pool_fill(p);
    }
}

static void pool_timer_fired(void *arg)
{
    pool_t *p = arg;
    p->timer.id = 0;
    p->timer_at = 0;
    if (p->loop == NULL || p->closing)
        return;
    pool_retry_due(p, urio__now());
    pool_arm_timer(p);
    pool_dispatch(p);
}

/* Arms the timer at the next deadline (acting on those already past). */
static void pool_arm_timer(pool_t *p)
{
    if (p->loop == NULL || p->closing)
        return;
    if (p->arming) {
        p->rearm = true;        /* called back from what the check did: check again after */
        return;
    }
    p->arming = true;
    uint64_t now, next;
    do {
        p->rearm = false;
        now = urio__now();
        next = pool_check_time(p, now);
    } while (p->rearm);
    p->arming = false;
    if (next == UINT64_MAX)
        return;
    if (p->timer.id != 0 && p->timer_at <= next)
        return;
    if (p->timer.id != 0)
        urio_handle_cancel(p->loop, p->timer);
    uint64_t when = urio_loop_time(p->loop) + (next - now);
    p->timer = urio_call_at(p->loop, when, pool_timer_fired, p);
    p->timer_at = p->timer.id ? next : 0;
}

/* ------------------------------------------------------------------ */
/* Shutdown and waiting                                                 */

/* A stopped pool leaves its loop's side (a callback: nothing of it is on the stack). */
static void pool_forget(void *arg)
{
    pool_t *p = arg;
    loop_side_t *ls = p->ls;
    if (ls != NULL && !p->closing && p->workers == NULL && p->q_head == NULL) {
        for (pool_t **pp = &ls->pools; *pp != NULL; pp = &(*pp)->lnext) {
            if (*pp == p) {
                *pp = p->lnext;
                break;
            }
        }
        p->ls = NULL;
        p->loop = NULL;
        pool_unref(p);      /* the loop side's */
    }
    p->forgetting = false;
    pool_unref(p);          /* this callback's */
}

/* After shutdown: once no worker is left, the pool has stopped; wake waiters. */
static void pool_check_stopped(pool_t *p)
{
    if (!p->shutdown || p->workers != NULL || p->q_head != NULL)
        return;
    pthread_mutex_lock(&p->mu);
    bool was = p->stopped;
    p->stopped = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (!was && p->timer.id != 0 && p->loop != NULL) {
        urio_handle_cancel(p->loop, p->timer);
        p->timer.id = 0;
    }
    /*
     * The loop's side may let go of a stopped pool, but not here: callers up
     * the stack (a completion, a cancel) still use it.  In a callback of its
     * own; failing that, at the loop's close.
     */
    if (!was && p->ls != NULL && !p->closing && !p->forgetting) {
        atomic_fetch_add(&p->refs, 1);
        if (urio_call_soon(p->loop, pool_forget, p).id != 0)
            p->forgetting = true;
        else
            pool_unref(p);
    }
}

/* Loop thread: no new jobs; cancel the queue if asked; retire idle workers. */
static void pool_shutdown_here(pool_t *p, bool cancel_futures)
{
    p->shutdown = true;
    if (cancel_futures)
        pool_fail_queue(p, -ECANCELED, NULL);
    if (p->loop == NULL) {
        pool_check_stopped(p);
        return;
    }
    pool_dispatch(p);
    for (worker_t *w = p->workers; w != NULL; w = w->next)
        if ((w->state == W_READY && w->npipe == 0 && p->q_head == NULL) ||
            (w->state == W_STARTING && p->q_head == NULL))
            worker_retire(w);
    pool_fill(p);
    pool_check_stopped(p);
}

/*
 * Loop thread, waiting: drives the loop's ring (its completions only
 * complete ops and futures: no user code runs) until every worker is gone.
 */
static void pool_pump(pool_t *p)
{
    urio_loop_t *loop = p->loop;
    pool_dispatch(p);
    while (p->loop != NULL && !p->closing && (p->workers != NULL || p->q_head != NULL)) {
        uint64_t now = urio__now();
        pool_retry_due(p, now);
        uint64_t next = pool_check_time(p, now);
        int64_t wait = 100 * 1000000;
        if (next != UINT64_MAX && next - now < (uint64_t)wait)
            wait = (int64_t)(next - now) + 1;
        int err = urio__ring_enter(&loop->ring, wait);
        urio__ring_reap(&loop->ring);
        if (err < 0) {
            urio__log(URIO_LOG_CRITICAL, "process pool: shutdown cannot drive the loop's ring "
                      "(%s): not waiting for the workers", urio_strerror(err));
            return;
        }
    }
}

static void shutdown_on_loop(void *arg)
{
    pool_t *p = arg;
    if (p->loop != NULL && !p->closing)
        pool_shutdown_here(p, false);
    pool_unref(p);
}

static void shutdown_cancel_on_loop(void *arg)
{
    pool_t *p = arg;
    if (p->loop != NULL && !p->closing)
        pool_shutdown_here(p, true);
    pool_unref(p);
}

static int pool_shutdown(urio_executor_t *base, bool wait, bool cancel_futures)
{
    pool_t *p = (pool_t *)base;
    urio_loop_t *loop = p->loop;
    if (loop == NULL || urio__loop_is_mine(loop)) {
        if (loop != NULL && p->closing)
            return 0;
        pool_shutdown_here(p, cancel_futures);
        if (wait && p->loop != NULL)
            pool_pump(p);
        return 0;
    }
    /* Another thread: the loop does it; wait for its word. */
    atomic_fetch_add(&p->refs, 1);
    if (urio_call_soon_threadsafe(loop, cancel_futures ? shutdown_cancel_on_loop
                                                       : shutdown_on_loop, p) < 0)
        pool_unref(p);      /* the loop is closing: its close stops the pool */
    if (wait) {
        pthread_mutex_lock(&p->mu);
        while (!p->stopped)
            pthread_cond_wait(&p->cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
    return 0;
}

static void pool_free(urio_executor_t *base)
{
    pool_t *p = (pool_t *)base;
    pool_shutdown(base, true, false);
    pool_unref(p);
}

static const urio__executor_ops_t pool_ops = {
    .kind = "process pool",
    .shutdown = pool_shutdown,
    .free = pool_free,
};

/* ------------------------------------------------------------------ */
/* The loop's side                                                      */

static void side_step_end(urio_loop_t *loop, void *state)
{
    (void)loop;
    loop_side_t *ls = state;
    for (pool_t *p = ls->pools; p != NULL; p = p->lnext)
        if (p->dispatch_pending)
            pool_dispatch(p);
}

/*
 * Close, first: nothing new starts; queued jobs are cancelled; workers are
 * killed and the jobs they held cancelled.  The ring's drain then ends
 * every op (their completions see `closing` and touch nothing else).
 */
static void side_shutdown(urio_loop_t *loop, void *state)
{
    (void)loop;
    loop_side_t *ls = state;
    for (pool_t *p = ls->pools; p != NULL; p = p->lnext) {
        p->shutdown = true;
        p->closing = true;
        if (p->timer.id != 0) {
            urio_handle_cancel(loop, p->timer);
            p->timer.id = 0;
        }
        pool_fail_queue(p, -ECANCELED, NULL);
        for (worker_t *w = p->workers; w != NULL; w = w->next) {
            if (!w->reaped)
                worker_kill(w, NULL);
            for (pjob_t *j = w->pipe_head, *n; j != NULL; j = n) {
                n = j->next;
                j->w = NULL;
                job_settle(j, -ECANCELED, NULL);
            }
            w->pipe_head = w->pipe_tail = w->unsent = NULL;
            w->npipe = 0;
        }
    }
}

/*
 * A fork server's worker that was killed before its READY came has no pid
 * yet, and is our child all the same: read its READY (it sends it first
 * thing) to learn the pid and reap it.  Blocking, briefly: the loop closes.
 */
static void worker_await_pid(worker_t *w)
{
    uint64_t deadline = urio__now() + 2000000000ull;
    while (w->pid == 0 && !w->ready_seen) {
        urio__pf_frame_t f;
        const char *why = NULL;
        ssize_t n = urio__pf_decode(w->rbuf + w->roff, w->rlen - w->roff,
                                    1u << URIO__PF_READY, w->pool->max_payload, &f, &why);
        if (n > 0) {
            urio__pf_ready_t r;
            memcpy(&r, f.payload, sizeof r);
            w->pid = (pid_t)r.pid;
            break;
        }
        uint64_t now = urio__now();
        if (n < 0 || now >= deadline || 2 * (size_t)URIO__PF_FRAME_MAX == w->rlen)
            break;
        struct pollfd pfd = { .fd = w->fd, .events = POLLIN };
        if (poll(&pfd, 1, (int)((deadline - now) / 1000000u) + 1) <= 0)
            continue;
        ssize_t got = recv(w->fd, w->rbuf + w->rlen, 2 * (size_t)URIO__PF_FRAME_MAX - w->rlen,
                           MSG_DONTWAIT);
        if (got <= 0)
            break;
        w->rlen += (size_t)got;
    }
    if (w->pid > 0)
        urio__process_signal(-1, w->pid, SIGKILL);
    else
        urio__log(URIO_LOG_WARNING, "process pool: a worker from the fork server never said "
                  "its pid; it exits on its channel's end, unreaped");
}

/* Close, last (the ring is drained): reap the killed workers, free them, let go of the pools. */
static void side_release(urio_loop_t *loop, void *state)
{
    (void)loop;
    loop_side_t *ls = state;
    while (ls->pools != NULL) {
        pool_t *p = ls->pools;
        ls->pools = p->lnext;
        while (p->workers != NULL) {
            worker_t *w = p->workers;
            if (w->pid == 0)
                worker_await_pid(w);
            if (w->pid > 0)
                worker_reap(w, true);
            w->judged = true;
            worker_batch_release(w);
            for (unsigned i = 0; i < w->nrfds; i++)
                close(w->rfds[i]);
            w->nrfds = 0;
            /* The ring was drained (or abandoned, completing every op): none is in flight. */
            URIO_ASSERT(w->recv_op.state == URIO__OP_IDLE && w->send_op.state == URIO__OP_IDLE &&
                        w->exit_op.state == URIO__OP_IDLE);
            w->recv_op.state = w->send_op.state = w->exit_op.state = URIO__OP_IDLE;
            worker_maybe_free(w);
        }
        p->loop = NULL;
        p->ls = NULL;
        p->nlive = p->nready = 0;
        buf_drop_cache(p);
        if (p->forgetting) {
            /* pool_forget's callback is dropped with the ready FIFO, unrun: its reference. */
            p->forgetting = false;
            pool_unref(p);
        }
        pthread_mutex_lock(&p->mu);
        p->stopped = true;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        pool_unref(p);      /* the loop side's reference */
    }
    urio__free(ls);
}

static const urio__subsystem_t side_subsystem = {
    .name = "process pool",
    .step_end = side_step_end,
    .shutdown = side_shutdown,
    .release = side_release,
};

/* Binds p to loop at its first job: registers the loop's side, starts the workers. */
static int pool_bind(pool_t *p, urio_loop_t *loop)
{
    loop_side_t *ls = urio__loop_state(loop, &side_subsystem);
    if (ls == NULL) {
        ls = urio__calloc(1, sizeof *ls);
        if (ls == NULL)
            return -ENOMEM;
        int index = urio__loop_register(loop, &side_subsystem, ls);
        if (index < 0) {
            urio__free(ls);
            return index;
        }
        ls->index = index;
    }
    p->loop = loop;
    p->ls = ls;
    p->lnext = ls->pools;
    ls->pools = p;
    atomic_fetch_add(&p->refs, 1);      /* the loop side's */
    p->t_first_job = urio__now();
    pool_fill(p);
    return 0;
}

/* ------------------------------------------------------------------ */
/* The API                                                              */

static unsigned default_workers(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores < 1 ? 1u : cores > 1024 ? 1024u : (unsigned)cores;
}

URIO_EXPORT int urio_process_pool_new(urio_executor_t **out, const urio_process_pool_opts_t *opts)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    urio_process_pool_opts_t o = opts ? *opts : (urio_process_pool_opts_t){ 0 };
    if (o.workers > 1024 || (o.start != URIO_PROCESS_START_EXEC &&
                             o.start != URIO_PROCESS_START_FORK_SERVER))
        return -EINVAL;
    if (o.max_payload > (1ull << 40))
        return -EINVAL;
    if (!urio__process_fn_any()) {
        urio__log(URIO_LOG_ERROR, "urio_process_pool_new(): no function is registered "
                  "(URIO_PROCESS_FN): a worker would have nothing to run");
        return -ENOENT;
    }
    pool_t *p = urio__calloc(1, sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    p->base.ops = &pool_ops;
    p->nworkers = o.workers ? o.workers : default_workers();
    p->max_jobs = o.max_jobs_per_worker;
    p->timeout_ns = o.job_timeout_ns;
    p->max_payload = o.max_payload ? o.max_payload : 64u << 20;
    p->memory = o.worker_memory;
    p->start = o.start;
    atomic_init(&p->refs, 1);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    urio__executor_track(&p->base);     /* debug mode: reported if never shut down */
    *out = &p->base;
    return 0;
}

static urio_future_t *fail(int err)
{
    errno = -err;
    return NULL;
}

/* Copies the input: inline after the name, or into a sealed memfd. */
/*
 * Copies the input: inline after the name, or, from 64 KiB up, into a
 * shared buffer; then the worker is also offered a buffer as large for its
 * output (it writes there when the output fits).
 */
static int job_fill_input(pool_t *p, pjob_t *j, const char *fn, size_t name_len,
                          const void *in, size_t len)
{
    bool shm = len >= URIO__PF_SHM_MIN;
    j->buf = urio__malloc(name_len + (shm ? 0 : len) + 1);
    if (j->buf == NULL)
        return -ENOMEM;
    memcpy(j->buf, fn, name_len);
    j->name_len = (uint16_t)name_len;
    j->in_len = len;
    if (!shm) {
        if (len)
            memcpy(j->buf + name_len, in, len);
        return 0;
    }
    int err = 0;
    j->in_buf = buf_get(p, len, &err);
    if (j->in_buf == NULL)
        return err;
    memcpy(j->in_buf->map, in, len);
    j->out_buf = buf_get(p, len, &err);     /* none is no failure: the worker makes its own */
    return 0;
}

URIO_EXPORT urio_future_t *urio_process_pool_submit(urio_loop_t *loop, urio_executor_t *base,
                                                    const char *fn, const void *in, size_t len)
{
    if (loop == NULL || base == NULL || fn == NULL || (in == NULL && len > 0))
        return fail(-EINVAL);
    if (base->ops != &pool_ops) {
        urio__log(URIO_LOG_ERROR, "urio_process_pool_submit(): a %s is not a process pool",
                  base->ops->kind);
        return fail(-EINVAL);
    }
    size_t name_len = strlen(fn);
    if (name_len == 0 || name_len > URIO__PF_NAME_MAX)
        return fail(-EINVAL);
    if (!urio__loop_check_thread(loop, "urio_process_pool_submit"))
        return fail(-EPERM);
    pool_t *p = (pool_t *)base;
    if (loop->closing || p->shutdown)
        return fail(-ESHUTDOWN);
    if (p->loop != NULL && p->loop != loop) {
        urio__log(URIO_LOG_ERROR, "urio_process_pool_submit(): this process pool serves "
                  "another loop (the one of its first job)");
        return fail(-EXDEV);
    }
    if (len > p->max_payload)
        return fail(-EMSGSIZE);
    urio_future_t *f = urio__future_new_kind(loop, sizeof(pjob_t), &job_ops);
    if (f == NULL)
        return fail(-ENOMEM);
    urio__future_capture_stack(f, 1);
    pjob_t *j = urio__future_ext(f);
    j->f = f;
    int err = job_fill_input(p, j, fn, name_len, in, len);
    if (err == 0 && p->loop == NULL)
        err = pool_bind(p, loop);
    if (err < 0) {
        urio_future_unref(f);      /* finalize frees the input; no pool reference yet */
        return fail(err);
    }
    j->pool = p;
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    urio_future_ref(f);            /* the pool's, until it settles the job */
    queue_push_back(p, j);
    urio__future_set_cancel_hook(f, job_cancel_hook, j);
    if (p->broken_start) {
        /* Workers failed to start before: a new job tries again (or fails with them). */
        p->broken_start = false;
        p->start_failures = 0;
        p->retry_at = 0;
        pool_fill(p);
    }
    /* Jobs of one step go out together, at its end: one sendmsg per worker. */
    if (atomic_load_explicit(&loop->owner, memory_order_relaxed) == NULL) {
        pool_dispatch(p);
    } else if (!p->dispatch_pending) {
        p->dispatch_pending = true;
        urio__loop_want_step_end(loop, p->ls->index);
    }
    return f;
}

URIO_EXPORT int urio_process_pool_stats(urio_executor_t *base, urio_process_pool_stats_t *st,
                                        pid_t *pids, size_t n)
{
    if (base == NULL || st == NULL || base->ops != &pool_ops)
        return -EINVAL;
    pool_t *p = (pool_t *)base;
    *st = p->st;
    st->workers = p->nlive;
    st->ready = p->nready;
    int live = 0;
    for (worker_t *w = p->workers; w != NULL; w = w->next) {
        if (w->state != W_READY && w->state != W_STARTING)
            continue;
        if (pids != NULL && (size_t)live < n && w->pid > 0)
            pids[live] = w->pid;
        live++;
    }
    return live;
}
