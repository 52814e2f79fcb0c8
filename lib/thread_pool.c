/*
 * thread_pool.c — the thread pool executor.
 *
 * Jobs wait in a FIFO under the pool's mutex; workers, started on demand up
 * to max_workers, block on a condition variable.  A job carries its own
 * inbox node: when it finishes, the worker pushes that node into its loop's
 * inbox (no allocation, no lock on the loop), and the loop completes the
 * future in its next turn, together with every other completion that came
 * meanwhile.
 *
 * A job's life: QUEUED -> RUNNING -> DONE, or QUEUED -> CANCELLED (its future
 * was cancelled before a worker took it, or shutdown(cancel_futures) or the
 * loop's close took it out: the worker that pops it skips it).
 *
 * The job lives inside its future (a future kind, future.c), so a
 * submission is one allocation at most: a future whose last reference goes
 * on its loop's thread is kept for the loop's next job (future.c's recycle).
 * The caller holds a reference, and the pool's side another, from the
 * submission until the job's trip back to the loop is over (or failed
 * because the loop closed).  The loop's side (the job is on
 * its live list until the loop has "settled" the future: completed it, or
 * cancelled it at close) needs none of its own: it always ends first, or
 * with the pool's (a failed trip back means the loop closed, and close
 * settled every job before its inbox closed).  Where the two end together,
 * the pool's reference goes to the future's done-callback runner.  The last
 * reference frees the result if nobody received it, and lets go of the pool.
 */
#include "executor.h"

#include <string.h>
#include <unistd.h>

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_CANCELLED };

typedef struct pool pool_t;
typedef struct loop_side loop_side_t;

/*
 * Most dead jobs a loop keeps for new ones: a burst's worth (a job's future
 * is about 320 bytes: 80 KiB); past it, they are freed.
 */
#define JOB_CACHE 256

/*
 * A job, laid out by who writes it: the worker's line (what it writes on
 * the way back), the fields set at submission and only read after, and the
 * loop's own.  So a completion moves one line from the worker to the loop,
 * and the loop's bookkeeping writes never take a line back from a worker
 * (measured: the loop's first locked op after a completion stalled on those
 * transfers, 21% of the samples of a throughput run).
 */
typedef struct job {
    /* Written by the worker (and the pool's FIFO link, under ex->mu). */
    urio__inbox_node_t node;     /* the completion's trip to the loop */
    void *result;                /* written by the worker before the push */
    char *errmsg;
    int err;
    atomic_int state;
    struct job *next;            /* the loop's batch, then the pool's FIFO (under ex->mu) */
    /* Set at submission, read by the worker. */
    pool_t *ex;
    urio_loop_t *loop;
    loop_side_t *ls;             /* the loop's side of the pools (loop thread) */
    urio_future_t *f;
    urio_blocking_fn fn;
    void *arg;
    urio_free_fn free_result;
    const urio_site_t *err_site; /* where urio_executor_fail was called (worker) */
    urio__backtrace_t *err_stack;   /* debug mode: the stack there (worker) */
    bool debug;                  /* the loop was in debug mode at submission */
    /* The loop's own. */
    struct job *lnext, *lprev;   /* loop thread: the loop's unsettled jobs */
    bool settled;                /* loop thread: the future has its outcome */
    bool delivered;              /* the result went to the future, or was freed */
} job_t;

struct pool {
    urio_executor_t base;        /* first: the executor's kind */
    pool_t *retired_next;        /* loop thread: in its loop side's retired list */
    pthread_mutex_t mu;
    pthread_cond_t work;         /* a job came, or shutdown */
    job_t *head, *tail;          /* guarded by mu */
    unsigned queued;             /* guarded by mu: jobs in head..tail */
    unsigned max_workers;
    unsigned nthreads;           /* guarded by mu: started, not yet joined */
    unsigned idle;               /* guarded by mu: waiting on `work` */
    unsigned waking;             /* guarded by mu: signalled, not yet awake */
    unsigned cores;              /* online CPUs at creation: most workers woken for a queue */
    unsigned long taken;         /* guarded by mu: shares taken so far (the queue's progress) */
    bool watching;               /* guarded by mu: a worker watches the queue, or is woken to */
    bool watch_pending;          /* guarded by mu: woken to watch, not yet awake */
    bool shutdown;               /* guarded by mu */
    atomic_bool cancel_queued;   /* shutdown(cancel_futures): jobs a worker took but did not
                                    start are cancelled too */
    /*
     * The loop's per-job words, on a line of their own: a submission and a
     * job's end touch them, both on the loop's thread, and workers hammer
     * the lines of mu and the queue.
     */
    char pad0[64];               /* (padding, not _Alignas: the pool is a plain allocation) */
    atomic_uint refs;            /* the owner's (urio_executor_free drops it) + one per job */
    atomic_bool closed;          /* shutdown, readable without mu (an early refusal) */
    char pad1[64];
    pthread_mutex_t join_mu;     /* one joiner at a time */
    pthread_t *threads;          /* guarded by mu: nthreads of them */
};

/*
 * A loop's side of the thread pools, registered with the loop as a
 * subsystem at its first job: the default pool, the jobs submitted this
 * step, and every job whose future is not settled.  Loop thread only.
 */
struct loop_side {
    int index;                   /* the subsystem's, for the step_end flag */
    pool_t *default_ex;          /* made by the first urio_run_in_executor(NULL), or set */
    bool default_owned;          /* the loop made default_ex (and shuts it down at close) */
    pool_t *retired;             /* pools the loop made, replaced by a set default: freed at close */
    job_t *jobs_head, *jobs_tail;   /* submitted this step, not yet handed over */
    job_t *jobs_live;            /* every job whose future is not settled */
    /*
     * Dead jobs (their futures' last reference went on this thread), kept
     * for new ones: a submission then allocates nothing, and takes memory
     * still in this CPU's cache (LIFO).  Freed at close.
     */
    unsigned ncache;
    urio_future_t *cache[JOB_CACHE];     /* poisoned under ASan while here */
};

static _Thread_local job_t *tls_job;          /* the job this worker runs */
static _Thread_local pool_t *tls_ex;          /* the pool this worker belongs to */

static void executor_unref(pool_t *ex);
static void flush(urio_loop_t *loop, loop_side_t *ls);

/* ------------------------------------------------------------------ */
/* Settling, on the loop; the last reference, anywhere                  */

/* The future's last reference went (any thread): what the job still holds. */
static void job_finalize(urio_future_t *f)
{
    job_t *j = urio__future_ext(f);
    if (j->errmsg != NULL || j->err_stack != NULL) {   /* a failed job's */
        urio__free(j->errmsg);
        j->errmsg = NULL;
        urio__free(j->err_stack);
        j->err_stack = NULL;
    }
    if (j->ex != NULL)
        executor_unref(j->ex);
    j->ex = NULL;
}

/*
 * A dead job's future (any thread): kept for the loop's next job, if this is
 * the loop's thread running it, before its close (which frees the cache),
 * and the cache has room.
 */
static bool job_recycle(urio_future_t *f)
{
    job_t *j = urio__future_ext(f);
    urio_loop_t *loop = j->loop;
    if (urio__tls_loop != loop || loop->closing || j->ls->ncache == JOB_CACHE)
        return false;
    j->ls->cache[j->ls->ncache++] = f;
    return true;
}

static const urio__future_ops_t job_ops = {
    .kind = "Future",
    .sealed = true,
    .finalize = job_finalize,
    .recycle = job_recycle,
};

/*
 * A result the future will never take (it was cancelled, or failed at
 * close): freed here once the job is done.  A job still running frees it at
 * its end (job_send when the loop is gone, job_complete otherwise).
 */
static void job_discard_result(job_t *j)
{
    /* The state first: while the job runs, delivered is its worker's (job_send). */
    if (atomic_load(&j->state) != JOB_DONE || j->delivered)
        return;
    if (j->err == 0 && j->free_result)
        j->free_result(j->result);
    j->delivered = true;
}

/*
 * Gives the future its outcome and takes the job off the loop's live list.
 * pool_side: the pool's side ends here too, and its reference goes (to the
 * done-callback runner, when settling schedules one).  Loop thread.
 */
static void job_settle(job_t *j, int forced_err, bool pool_side)
{
    urio_future_t *f = j->f;        /* j is f's: gone with the last reference */
    if (j->settled) {
        job_discard_result(j);      /* the job ended after its future was settled */
        if (pool_side)
            urio_future_unref(f);
        return;
    }
    j->settled = true;
    loop_side_t *ls = j->ls;
    if (j->lprev)
        j->lprev->lnext = j->lnext;
    else
        ls->jobs_live = j->lnext;
    if (j->lnext)
        j->lnext->lprev = j->lprev;
    urio__future_set_cancel_hook(f, NULL, NULL);
    int state = atomic_load(&j->state);
    int err = 0;
    void *value = NULL;
    char *msg = NULL;
    if (urio_future_done(f)) {
        /* Cancelled after the job started: the result is nobody's. */
        job_discard_result(j);
        if (pool_side)
            urio_future_unref(f);
        return;
    }
    if (forced_err < 0 && forced_err != -ECANCELED) {
        /* Refused at hand-over (a pool shut down, no thread): the job never ran. */
        err = forced_err;
    } else if (forced_err == -ECANCELED || state == JOB_CANCELLED) {
        err = -ECANCELED;
        job_discard_result(j);
    } else if (j->err < 0) {
        urio__future_set_origin(f, j->err_site, j->err_stack);
        j->err_stack = NULL;
        err = j->err;
        msg = j->errmsg;
        j->errmsg = NULL;
    } else {
        value = j->result;
        j->delivered = true;
    }
    if (pool_side)
        urio__future_settle_unref(f, err, value, msg);
    else
        urio__future_settle(f, err, value, msg);
}

/* The completion's arrival on the loop (from its inbox): the pool's side ends here. */
static void job_complete(void *arg)
{
    job_settle(arg, 0, true);
}

/* Sends a finished (or skipped) job back to its loop.  Any thread. */
static void job_send(job_t *j)
{
    j->node.fn = job_complete;
    j->node.arg = j;
    if (urio__inbox_push_node(j->loop, &j->node) < 0) {
        /*
         * The loop closed, and settled the future then (before it closed its
         * inbox, so what it did is visible here): free a result it never got.
         */
        if (atomic_load(&j->state) == JOB_DONE && j->err == 0 && j->free_result &&
            !j->delivered)
            j->free_result(j->result);
        j->delivered = true;
        urio_future_unref(j->f);    /* the pool's side */
    }
}

/* The future was cancelled on the loop: if no worker took the job yet, it never will. */
static void job_cancel_hook(void *arg)
{
    job_t *j = arg;
    int queued = JOB_QUEUED;
    atomic_compare_exchange_strong(&j->state, &queued, JOB_CANCELLED);
}

/* ------------------------------------------------------------------ */
/* Workers                                                              */

static void run_job(job_t *j)
{
    int queued = JOB_QUEUED;
    if (!atomic_compare_exchange_strong(&j->state, &queued, JOB_RUNNING)) {
        /* Cancelled while queued: its future is already cancelled; just let go. */
        job_send(j);
        return;
    }
    tls_job = j;
    void *result = j->fn(j->arg);
    tls_job = NULL;
    j->result = j->err < 0 ? NULL : result;
    atomic_store(&j->state, JOB_DONE);
    job_send(j);
}

/* Most jobs a worker takes under one lock. */
#define WORKER_BATCH 16

/*
 * How long queued jobs may wait behind awake workers that take none (each
 * is stuck in a long job) before the watching worker joins them.
 */
#define STALL_NS (1000 * 1000L)

/*
 * Workers running a job, taking one, or signalled.  Called with mu held.
 * (A shutdown's join counts workers out of nthreads before they are gone.)
 */
static unsigned awake(const pool_t *ex)
{
    return ex->nthreads + ex->waking > ex->idle ? ex->nthreads + ex->waking - ex->idle : 0;
}

/*
 * Wakes a worker for the jobs in the queue, if one is idle.  Called with mu
 * held.  Workers awake are kept to the number of cores: on 2 cores a third awake worker only takes turns
 * with the other two and the loop, each turn a futex wait and a wake-up,
 * and the awake ones come back for more when their share is done.  Past
 * that limit, one idle worker is woken to watch the queue instead: if no
 * share is taken for STALL_NS, the awake workers are stuck in long jobs
 * (blocking ones, the pool's purpose), and it joins them, so such jobs
 * still get every worker, one more each STALL_NS.
 */
static void wake_for_queue(pool_t *ex)
{
    if (ex->head == NULL || ex->idle <= ex->waking)
        return;
    if (awake(ex) >= ex->cores) {
        if (ex->watching)
            return;
        ex->watching = ex->watch_pending = true;    /* the next worker to wake watches */
    }
    ex->waking++;
    pthread_cond_signal(&ex->work);
}

/*
 * An idle worker's wait, for work or (watch) for the queue's progress.
 * Called with mu held.  Returns: true if this worker should take a share.
 */
static bool idle_wait(pool_t *ex, bool *watch)
{
    ex->idle++;
    int ret;
    unsigned long taken = ex->taken;
    if (*watch) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += STALL_NS;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        ret = pthread_cond_timedwait(&ex->work, &ex->mu, &until);
    } else {
        ret = pthread_cond_wait(&ex->work, &ex->mu);
    }
    ex->idle--;
    if (ret == ETIMEDOUT) {
        if (ex->head != NULL && ex->taken != taken)
            return false;       /* the queue moves: watch on */
        /* Drained (nothing to watch), or stalled (join). */
        *watch = ex->watching = false;
        return ex->head != NULL;
    }
    if (ex->waking == 0)
        return ex->head != NULL && !*watch;     /* not signalled: a spurious wake-up */
    ex->waking--;
    if (*watch) {
        /* The watcher, signalled for work: the next capped wake-up picks another. */
        *watch = ex->watching = false;
    } else if (ex->watch_pending) {
        /* Woken to watch (wake_for_queue), unless a core came free meanwhile. */
        ex->watch_pending = false;
        if (awake(ex) > ex->cores) {
            *watch = true;
            return false;
        }
        ex->watching = false;
    }
    return ex->head != NULL;
}

/*
 * A worker takes its share of the queue under one lock: one job, or, when
 * many wait, queued / workers of them (at most WORKER_BATCH), so a long
 * queue costs one lock per share and slow jobs still spread over every
 * worker.  Wake-ups are chained: the loop wakes one worker per batch it
 * hands over, and a worker that leaves jobs behind wakes the next idle one,
 * up to one awake worker per core (wake_for_queue), so the loop's thread
 * makes one futex call per batch, not one per job, and tiny jobs do not
 * wake workers that would only take turns on the same cores.
 */
static void *worker_main(void *arg)
{
    pool_t *ex = arg;
    tls_ex = ex;
    pthread_setname_np(pthread_self(), "urio-pool");   /* for top -H, perf, gdb */
    bool watch = false;         /* this worker watches the queue (idle_wait) */
    pthread_mutex_lock(&ex->mu);
    for (;;) {
        if (ex->head == NULL && !ex->shutdown)
            while (!idle_wait(ex, &watch) && !ex->shutdown)
                ;
        if (watch)
            ex->watching = false;   /* shut down */
        watch = false;
        job_t *first = ex->head;
        if (first == NULL)
            break;          /* shut down and drained */
        /* nthreads counts workers not yet joined: 0 while a shutdown joins this one. */
        unsigned share = ex->queued / (ex->nthreads ? ex->nthreads : 1);
        if (share > WORKER_BATCH)
            share = WORKER_BATCH;
        job_t *last = first;
        for (unsigned k = 1; k < share && last->next != NULL; k++)
            last = last->next;
        ex->head = last->next;
        if (ex->head == NULL)
            ex->tail = NULL;
        for (job_t *j = first;; j = j->next) {
            ex->queued--;
            if (j == last)
                break;
        }
        ex->taken++;
        wake_for_queue(ex);
        pthread_mutex_unlock(&ex->mu);
        last->next = NULL;
        for (job_t *j = first, *next; j != NULL; j = next) {
            next = j->next;     /* read first: sending the job lets the loop free it */
            if (j != first && atomic_load_explicit(&ex->cancel_queued, memory_order_relaxed)) {
                /* Not started when shutdown(cancel_futures) came: Python cancels it. */
                int queued = JOB_QUEUED;
                atomic_compare_exchange_strong(&j->state, &queued, JOB_CANCELLED);
            }
            run_job(j);
        }
        pthread_mutex_lock(&ex->mu);
    }
    pthread_mutex_unlock(&ex->mu);
    return NULL;
}

/* Starts a worker if none is idle and the pool may grow.  Called with mu held. */
static int maybe_spawn(pool_t *ex)
{
    if (ex->idle > ex->waking || ex->nthreads >= ex->max_workers)
        return 0;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int ret = pthread_create(&ex->threads[ex->nthreads], &attr, worker_main, ex);
    pthread_attr_destroy(&attr);
    if (ret != 0)
        return ex->nthreads > 0 ? 0 : -ret;   /* others will get to it */
    ex->nthreads++;
    return 0;
}

/* ------------------------------------------------------------------ */
/* The API                                                              */

static unsigned default_workers(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1)
        cores = 1;
    return cores + 4 < 32 ? (unsigned)cores + 4 : 32;
}

static int pool_shutdown(urio_executor_t *base, bool wait, bool cancel_futures);
static void pool_free(urio_executor_t *base);

static const urio__executor_ops_t pool_ops = {
    .kind = "thread pool",
    .shutdown = pool_shutdown,
    .free = pool_free,
};

static int pool_new(pool_t **out, unsigned max_workers)
{
    pool_t *ex = urio__calloc(1, sizeof *ex);
    if (ex == NULL)
        return -ENOMEM;
    ex->base.ops = &pool_ops;
    ex->max_workers = max_workers ? max_workers : default_workers();
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    ex->cores = cores < 1 ? 1 : (unsigned)cores;
    ex->threads = urio__calloc(ex->max_workers, sizeof *ex->threads);
    if (ex->threads == NULL) {
        urio__free(ex);
        return -ENOMEM;
    }
    pthread_mutex_init(&ex->mu, NULL);
    pthread_mutex_init(&ex->join_mu, NULL);
    /* Monotonic: a watching worker's timeout (idle_wait) ignores clock changes. */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ex->work, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&ex->refs, 1);
    *out = ex;
    return 0;
}

URIO_EXPORT int urio_thread_pool_new(urio_executor_t **out, unsigned max_workers)
{
    if (out == NULL || max_workers > 1024)
        return -EINVAL;
    *out = NULL;
    pool_t *ex;
    int ret = pool_new(&ex, max_workers);
    if (ret == 0) {
        urio__executor_track(&ex->base);    /* debug mode: reported if never shut down */
        *out = &ex->base;
    }
    return ret;
}

/* ------------------------------------------------------------------ */
/* The loop's side                                                      */

static void side_step_end(urio_loop_t *loop, void *state)
{
    flush(loop, state);
}

static int side_may_close(urio_loop_t *loop, void *state)
{
    (void)loop;
    loop_side_t *ls = state;
    bool mine = ls->default_ex != NULL && ls->default_owned && tls_ex == ls->default_ex;
    for (pool_t *p = ls->retired; p != NULL; p = p->retired_next)
        mine |= tls_ex == p;
    if (mine) {
        urio__log(URIO_LOG_ERROR, "urio_loop_close(): called from a worker of the loop's own "
                  "thread pool, which close must wait for");
        return -EDEADLK;
    }
    return 0;
}

/*
 * Close, first: the default pool shuts down; jobs not started are cancelled,
 * running ones finish, and every worker exits.  Their completions are in the
 * inbox, whose accepted calls the loop runs next: they settle with their
 * real outcome.
 */
/*
 * Joins ex's workers while serving the loop's inbox: a running job may be
 * blocked on a call it made to this loop (run_coroutine_threadsafe, then a
 * wait on the proxy), which only running the inbox's accepted calls ends
 * (on a closing loop they are refused, and the job's wait returns).
 */
static void join_serving(urio_loop_t *loop, pool_t *ex)
{
    pthread_mutex_lock(&ex->join_mu);
    pthread_mutex_lock(&ex->mu);
    while (ex->nthreads > 0) {
        pthread_t t = ex->threads[--ex->nthreads];
        pthread_mutex_unlock(&ex->mu);
        for (;;) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 10 * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            if (pthread_timedjoin_np(t, NULL, &until) == 0)
                break;
            urio__inbox_run_accepted(loop);
        }
        pthread_mutex_lock(&ex->mu);
    }
    pthread_mutex_unlock(&ex->mu);
    pthread_mutex_unlock(&ex->join_mu);
}

static void side_shutdown(urio_loop_t *loop, void *state)
{
    loop_side_t *ls = state;
    bool own_default = ls->default_ex != NULL && ls->default_owned;
    /* Stop them all first (queued jobs cancelled), then wait for each. */
    if (own_default)
        pool_shutdown(&ls->default_ex->base, false, true);
    for (pool_t *p = ls->retired; p != NULL; p = p->retired_next)
        pool_shutdown(&p->base, false, true);
    if (own_default)
        join_serving(loop, ls->default_ex);
    for (pool_t *p = ls->retired; p != NULL; p = p->retired_next)
        join_serving(loop, p);
}

/* Close, then: jobs still in pools of the program's own are cancelled, their futures settled. */
static void side_close(urio_loop_t *loop, void *state)
{
    loop_side_t *ls = state;
    if (ls->jobs_head != NULL)
        flush(loop, ls);
    while (ls->jobs_live != NULL) {
        job_t *j = ls->jobs_live;
        int queued = JOB_QUEUED;
        atomic_compare_exchange_strong(&j->state, &queued, JOB_CANCELLED);
        job_settle(j, -ECANCELED, false);
    }
}

static void side_release(urio_loop_t *loop, void *state)
{
    (void)loop;
    loop_side_t *ls = state;
    if (ls->default_ex != NULL && ls->default_owned)
        pool_free(&ls->default_ex->base);
    while (ls->retired != NULL) {
        pool_t *p = ls->retired;
        ls->retired = p->retired_next;
        pool_free(&p->base);
    }
    while (ls->ncache > 0)
        urio__future_free_kept(ls->cache[--ls->ncache]);
    urio__free(ls);
}

static bool side_alive(const urio_loop_t *loop, void *state)
{
    (void)loop;
    const loop_side_t *ls = state;
    return ls->jobs_live != NULL;
}

static void side_stats(const urio_loop_t *loop, void *state, urio_loop_stats_t *st)
{
    (void)loop;
    for (const job_t *j = ((loop_side_t *)state)->jobs_live; j != NULL; j = j->lnext)
        st->jobs++;
}

static const urio__subsystem_t side_subsystem = {
    .name = "thread pool",
    .alive = side_alive,
    .stats = side_stats,
    .step_end = side_step_end,
    .may_close = side_may_close,
    .shutdown = side_shutdown,
    .close = side_close,
    .release = side_release,
};

/* The loop's side, registered at its first job.  Returns: NULL on ENOMEM. */
static loop_side_t *side_of(urio_loop_t *loop)
{
    loop_side_t *ls = urio__loop_state(loop, &side_subsystem);
    if (URIO_LIKELY(ls != NULL))
        return ls;
    ls = urio__calloc(1, sizeof *ls);
    if (ls == NULL)
        return NULL;
    int index = urio__loop_register(loop, &side_subsystem, ls);
    if (index < 0) {
        urio__free(ls);
        return NULL;
    }
    ls->index = index;
    return ls;
}

/* ------------------------------------------------------------------ */
/* Submitting                                                           */

static urio_future_t *fail(int err)
{
    errno = -err;
    return NULL;
}

URIO_EXPORT urio_future_t *urio_run_in_executor_opts(urio_loop_t *loop, urio_executor_t *base,
                                                     urio_blocking_fn fn, void *arg,
                                                     const urio_job_opts_t *opts)
{
    if (loop == NULL || fn == NULL)
        return fail(-EINVAL);
    if (base != NULL && base->ops != &pool_ops) {
        if (!urio__executor_freed(base, "urio_run_in_executor"))
            urio__log(URIO_LOG_ERROR, "urio_run_in_executor(): a %s runs registered "
                      "functions, not function pointers", base->ops->kind);
        return fail(-EINVAL);
    }
    if (!urio__loop_check_thread(loop, "urio_run_in_executor"))
        return fail(-EPERM);
    if (URIO_UNLIKELY(urio__loop_refuse_inherited(loop, "urio_run_in_executor")))
        return fail(URIO_EFORKED);  /* the parent's pools: no worker of theirs is here */
    if (urio__loop_refuses(loop, "urio_run_in_executor"))
        return fail(-ESHUTDOWN);
    loop_side_t *ls = side_of(loop);
    if (ls == NULL)
        return fail(-ENOMEM);
    pool_t *ex = (pool_t *)base;
    if (ex == NULL) {
        if (ls->default_ex == NULL) {
            int ret = pool_new(&ls->default_ex, 0);
            if (ret < 0)
                return fail(ret);
            ls->default_owned = true;
        }
        if (urio__executor_freed(&ls->default_ex->base, "urio_run_in_executor"))
            return fail(-EINVAL);   /* the program freed the default it had set */
        ex = ls->default_ex;
    }
    /* The caller's reference and the pool's side's. */
    urio_future_t *f;
    job_t *j;
    if (ls->ncache > 0) {
        f = urio__future_reuse(ls->cache[--ls->ncache], 2);
        j = urio__future_ext(f);
        /* What a job's life changed; job_finalize cleared errmsg and err_stack. */
        j->result = NULL;
        j->err = 0;
        j->err_site = NULL;
        j->settled = false;
        j->delivered = false;
    } else {
        f = urio__future_new_kind(loop, sizeof(job_t), &job_ops);
        if (f == NULL)
            return fail(-ENOMEM);
        urio__future_init_refs(f, 2);
        j = urio__future_ext(f);
        j->node.idx = URIO__INBOX_FOREIGN;
        j->loop = loop;
        j->ls = ls;
        j->f = f;
    }
    urio__future_capture_stack(f, 1);      /* from the submitting caller */
    j->ex = ex;
    j->fn = fn;
    j->arg = arg;
    j->free_result = opts ? opts->free_result : NULL;
    j->debug = loop->debug;
    atomic_init(&j->state, JOB_QUEUED);
    atomic_fetch_add_explicit(&ex->refs, 1, memory_order_relaxed);
    if (atomic_load_explicit(&ex->closed, memory_order_relaxed)) {
        /* An early answer; the check that counts is under the pool's lock, at the flush. */
        j->settled = true;
        urio_future_unref(f);       /* the pool's side */
        urio_future_unref(f);       /* the caller's: nobody gets it */
        return fail(-ESHUTDOWN);
    }
    /*
     * Queue it on the loop; the loop hands its batch to the pools once per
     * step (the step_end hook): one lock for many jobs, not one each, so
     * the loop thread and the workers fight less over the pool's mutex.
     */
    j->next = NULL;
    if (ls->jobs_tail)
        ls->jobs_tail->next = j;
    else
        ls->jobs_head = j;
    ls->jobs_tail = j;
    j->lnext = ls->jobs_live;
    j->lprev = NULL;
    if (ls->jobs_live)
        ls->jobs_live->lprev = j;
    ls->jobs_live = j;
    urio__future_set_cancel_hook(f, job_cancel_hook, j);
    /* Outside a run there is no end of step to wait for: hand it over now. */
    if (atomic_load_explicit(&loop->owner, memory_order_relaxed) == NULL)
        flush(loop, ls);
    else
        urio__loop_want_step_end(loop, ls->index);
    return f;
}

URIO_EXPORT urio_future_t *urio_run_in_executor(urio_loop_t *loop, urio_executor_t *ex,
                                                urio_blocking_fn fn, void *arg)
{
    return urio_run_in_executor_opts(loop, ex, fn, arg, NULL);
}

/* Hands the jobs submitted this step to their pools, a batch per pool. */
static void flush(urio_loop_t *loop, loop_side_t *ls)
{
    (void)loop;
    job_t *j = ls->jobs_head;
    ls->jobs_head = ls->jobs_tail = NULL;
    while (j != NULL) {
        /* A run of jobs for the same pool goes in under one lock. */
        pool_t *ex = j->ex;
        job_t *first = j, *last = j;
        unsigned n = 1;
        while (last->next != NULL && last->next->ex == ex) {
            last = last->next;
            n++;
        }
        j = last->next;
        last->next = NULL;
        pthread_mutex_lock(&ex->mu);
        int ret = 0;
        if (ex->shutdown) {
            ret = -ESHUTDOWN;
        } else {
            /* Start a worker per job while none is idle, up to the pool's size. */
            for (unsigned k = 0; k < n && ex->idle <= ex->waking; k++) {
                int r = maybe_spawn(ex);
                if (r < 0) {
                    if (ex->nthreads == 0)
                        ret = r;    /* no thread at all to run them */
                    break;
                }
                if (ex->nthreads >= ex->max_workers)
                    break;
            }
        }
        if (ret == 0) {
            if (ex->tail)
                ex->tail->next = first;
            else
                ex->head = first;
            ex->tail = last;
            ex->queued += n;
            /* One idle worker; it wakes the next if it leaves jobs behind (worker_main). */
            wake_for_queue(ex);
        }
        pthread_mutex_unlock(&ex->mu);
        if (ret < 0) {
            /* The pool shut down (or cannot start a thread) since the call: fail these jobs. */
            for (job_t *k = first, *next; k != NULL; k = next) {
                next = k->next;
                atomic_store(&k->state, JOB_CANCELLED);
                job_settle(k, ret, true);   /* the pool's side ends: it never got the job */
            }
        }
    }
}

__attribute__((noinline)) static void job_fail(const urio_site_t *site, int err,
                                               const char *fmt, va_list ap)
{
    job_t *j = tls_job;
    if (j == NULL) {
        urio__log(URIO_LOG_ERROR, "urio_executor_fail(): called outside an executor job");
        return;
    }
    err = urio__error_code(err, "urio_executor_fail");
    j->err = err < 0 ? err : -EINVAL;
    urio__free(j->errmsg);
    j->errmsg = fmt ? urio__vasprintf(fmt, ap) : NULL;  /* NULL on ENOMEM: no text */
    j->err_site = site;
#if URIO_DEBUG_CHECKS
    if (j->debug) {
        urio__backtrace_t *bt = urio__malloc(sizeof *bt);
        if (bt)
            urio__backtrace_capture(bt, 2, false);     /* from the caller of urio_executor_fail */
        urio__free(j->err_stack);
        j->err_stack = bt;
    }
#endif
    URIO_NO_TAILCALL();
}

URIO_EXPORT void *urio_executor_fail_site(const urio_site_t *site, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    job_fail(site, err, fmt, ap);
    URIO_NO_TAILCALL();     /* the stack capture counts this frame */
    va_end(ap);
    return NULL;
}

#undef urio_executor_fail
URIO_EXPORT void *urio_executor_fail(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    job_fail(NULL, err, fmt, ap);
    URIO_NO_TAILCALL();     /* the stack capture counts this frame */
    va_end(ap);
    return NULL;
}

static int pool_shutdown(urio_executor_t *base, bool wait, bool cancel_futures)
{
    pool_t *ex = (pool_t *)base;
    if (wait && tls_ex == ex)
        return -EDEADLK;
    /* Jobs this thread's loop accepted but has not handed over yet come first. */
    urio_loop_t *cur = urio_loop_current();
    loop_side_t *ls = cur ? urio__loop_state(cur, &side_subsystem) : NULL;
    if (ls != NULL && ls->jobs_head != NULL)
        flush(cur, ls);
    pthread_mutex_lock(&ex->mu);
    ex->shutdown = true;
    atomic_store(&ex->closed, true);
    job_t *cancelled = NULL;
    if (cancel_futures) {
        atomic_store(&ex->cancel_queued, true);
        /* Take every job not yet started; each goes back to its loop as cancelled. */
        cancelled = ex->head;
        ex->head = ex->tail = NULL;
        ex->queued = 0;
    }
    pthread_cond_broadcast(&ex->work);
    pthread_mutex_unlock(&ex->mu);
    while (cancelled) {
        job_t *j = cancelled;
        cancelled = j->next;
        atomic_store(&j->state, JOB_CANCELLED);
        job_send(j);
    }
    if (!wait)
        return 0;
    /* One joiner at a time: a second caller returns when every worker is gone too. */
    pthread_mutex_lock(&ex->join_mu);
    pthread_mutex_lock(&ex->mu);
    while (ex->nthreads > 0) {
        pthread_t t = ex->threads[--ex->nthreads];
        pthread_mutex_unlock(&ex->mu);
        pthread_join(t, NULL);
        pthread_mutex_lock(&ex->mu);
    }
    pthread_mutex_unlock(&ex->mu);
    pthread_mutex_unlock(&ex->join_mu);
    return 0;
}

static void executor_unref(pool_t *ex)
{
    if (atomic_fetch_sub_explicit(&ex->refs, 1, memory_order_acq_rel) != 1)
        return;
    pthread_cond_destroy(&ex->work);
    pthread_mutex_destroy(&ex->join_mu);
    pthread_mutex_destroy(&ex->mu);
    urio__free(ex->threads);
    urio__executor_release(&ex->base);
}

static void pool_free(urio_executor_t *base)
{
    pool_t *ex = (pool_t *)base;
    pool_shutdown(base, true, false);
    /* Jobs still held by loops keep the memory until they are let go. */
    executor_unref(ex);
}

/* ------------------------------------------------------------------ */
/* The loop's default executor                                          */

URIO_EXPORT int urio_loop_set_default_executor(urio_loop_t *loop, urio_executor_t *base)
{
    if (loop == NULL)
        return -EINVAL;
    if (base != NULL && base->ops != &pool_ops) {
        if (!urio__executor_freed(base, "urio_loop_set_default_executor"))
            urio__log(URIO_LOG_ERROR, "urio_loop_set_default_executor(): the default "
                      "executor runs function pointers: a %s cannot be it", base->ops->kind);
        return -EINVAL;
    }
    if (!urio__loop_check_thread(loop, "urio_loop_set_default_executor"))
        return -EPERM;
    if (urio__loop_refuse_inherited(loop, "urio_loop_set_default_executor"))
        return URIO_EFORKED;
    if (urio__loop_refuses(loop, "urio_loop_set_default_executor"))
        return -ESHUTDOWN;
    loop_side_t *ls = side_of(loop);
    if (ls == NULL)
        return -ENOMEM;
    if (ls->jobs_head != NULL)
        flush(loop, ls);    /* jobs already accepted go where they were meant to */
    if (ls->default_ex != NULL && ls->default_owned) {
        /*
         * The pool the loop made: no new jobs; those it has finish and come
         * back.  Its workers are joined at close (nobody waits here).
         */
        pool_shutdown(&ls->default_ex->base, false, false);
        ls->default_ex->retired_next = ls->retired;
        ls->retired = ls->default_ex;
    }
    ls->default_ex = (pool_t *)base;
    ls->default_owned = false;
    return 0;
}

/*
 * shutdown_default_executor: a thread of its own joins the pool's workers
 * (the loop never blocks), then tells the loop through its inbox.  What the
 * thread and the loop share is reference counted: either may finish first.
 */
typedef struct shutdown_req {
    atomic_uint refs;            /* the thread's, the loop side's */
    urio_loop_t *loop;
    pool_t *ex;
    urio_future_t *f;            /* loop thread: completed by whichever comes first */
    urio_handle_t timer;
    uint64_t timeout_ns;
} shutdown_req_t;

static void req_unref(shutdown_req_t *r)
{
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    executor_unref(r->ex);
    urio_future_unref(r->f);
    urio_loop_unref(r->loop);
    urio__free(r);
}

/* On the loop: the workers are gone. */
static void shutdown_joined(void *arg)
{
    shutdown_req_t *r = arg;
    urio_handle_cancel(r->loop, r->timer);
    if (!urio_future_done(r->f))
        urio_future_set_result(r->f, NULL);
    req_unref(r);
}

/* On the loop: the time-out came first. */
static void shutdown_timed_out(void *arg)
{
    shutdown_req_t *r = arg;
    if (urio_future_done(r->f))
        return;
    /* asyncio's words (base_events.py, shutdown_default_executor). */
    urio__log(URIO_LOG_WARNING, "The executor did not finishing joining its threads within "
              "%g seconds.", (double)r->timeout_ns / 1e9);
    urio_future_set_error(r->f, -ETIMEDOUT, "the default executor's threads did not finish "
                          "within %g seconds", (double)r->timeout_ns / 1e9);
}

static void *shutdown_thread(void *arg)
{
    shutdown_req_t *r = arg;
    pool_shutdown(&r->ex->base, true, false);
    int err;
    /* Out of memory for the call (the node pool could not grow): try again, never give up. */
    while ((err = urio_call_soon_threadsafe(r->loop, shutdown_joined, r)) == -ENOMEM)
        usleep(1000);
    if (err < 0)
        req_unref(r);       /* the loop closed: its side of the request is gone with it */
    req_unref(r);
    return NULL;
}

URIO_EXPORT urio_future_t *urio_loop_shutdown_default_executor(urio_loop_t *loop,
                                                               int64_t timeout_ns)
{
    if (loop == NULL || timeout_ns < -1)
        return fail(-EINVAL);
    if (!urio__loop_check_thread(loop, "urio_loop_shutdown_default_executor"))
        return fail(-EPERM);
    if (urio__loop_refuse_inherited(loop, "urio_loop_shutdown_default_executor"))
        return fail(URIO_EFORKED);
    if (urio__loop_refuses(loop, "urio_loop_shutdown_default_executor"))
        return fail(-ESHUTDOWN);
    urio_future_t *f;
    int ret = urio_future_new(&f, loop);
    if (ret < 0)
        return fail(ret);
    loop_side_t *ls = urio__loop_state(loop, &side_subsystem);
    if (ls == NULL || ls->default_ex == NULL) {
        urio_future_set_result(f, NULL);    /* nothing to shut down */
        return f;
    }
    if (urio__executor_freed(&ls->default_ex->base, "urio_loop_shutdown_default_executor")) {
        urio_future_unref(f);
        return fail(-EINVAL);       /* the program freed the default it had set */
    }
    if (ls->jobs_head != NULL)
        flush(loop, ls);
    shutdown_req_t *r = urio__calloc(1, sizeof *r);
    if (r == NULL) {
        urio_future_unref(f);
        return fail(-ENOMEM);
    }
    atomic_init(&r->refs, 2);
    r->loop = urio_loop_ref(loop);
    r->ex = ls->default_ex;
    atomic_fetch_add_explicit(&r->ex->refs, 1, memory_order_relaxed);
    r->f = urio_future_ref(f);
    r->timeout_ns = (uint64_t)timeout_ns;
    /* No new jobs from here on, as in asyncio. */
    pthread_mutex_lock(&r->ex->mu);
    r->ex->shutdown = true;
    atomic_store(&r->ex->closed, true);
    pthread_cond_broadcast(&r->ex->work);
    pthread_mutex_unlock(&r->ex->mu);
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    ret = pthread_create(&th, &attr, shutdown_thread, r);
    pthread_attr_destroy(&attr);
    if (ret != 0) {
        atomic_store(&r->refs, 1);
        req_unref(r);
        urio_future_unref(f);
        return fail(-ret);
    }
    if (timeout_ns >= 0) {
        static const urio_site_t site = { "<shutdown_default_executor timeout>", __FILE__,
                                          __LINE__ };
        r->timer = urio_call_later_site(loop, (uint64_t)timeout_ns, shutdown_timed_out, r,
                                        &site);
    }
    return f;
}
