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
 * submission is one allocation.  Two sides hold the future, each with a
 * reference: the loop (until it has "settled" it: completed it, or cancelled
 * it at close) and the pool (until the job's trip back to the loop is over,
 * or failed because the loop closed); the caller holds a third.  The last
 * reference frees the result if nobody received it, and lets go of the pool.
 */
#include "internal.h"

#include <string.h>
#include <unistd.h>

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_CANCELLED };

typedef struct urio__job {
    urio__inbox_node_t node;     /* first: the completion's trip to the loop */
    struct urio__job *next;      /* the loop's batch, then the pool's FIFO (under ex->mu) */
    struct urio__job *lnext, *lprev;   /* loop thread: the loop's unsettled jobs */
    urio_executor_t *ex;
    urio_loop_t *loop;
    urio_future_t *f;
    urio_blocking_fn fn;
    void *arg;
    urio_free_fn free_result;
    void *result;                /* written by the worker before the push */
    int err;
    char *errmsg;
    atomic_int state;
    bool settled;                /* loop thread: the future has its outcome */
    bool delivered;              /* the result went to the future, or was freed */
} job_t;

struct urio_executor {
    pthread_mutex_t mu;
    pthread_cond_t work;         /* a job came, or shutdown */
    job_t *head, *tail;          /* guarded by mu */
    unsigned max_workers;
    unsigned nthreads;           /* guarded by mu: started, not yet joined */
    unsigned idle;               /* guarded by mu: waiting on `work` */
    unsigned waking;             /* guarded by mu: signalled, not yet awake */
    bool shutdown;               /* guarded by mu */
    atomic_bool closed;          /* shutdown, readable without mu (an early refusal) */
    atomic_uint refs;            /* the owner's (urio_executor_free drops it) + one per job */
    pthread_mutex_t join_mu;     /* one joiner at a time */
    pthread_t *threads;          /* guarded by mu: nthreads of them */
};

static _Thread_local job_t *tls_job;          /* the job this worker runs */
static _Thread_local urio_executor_t *tls_ex; /* the pool this worker belongs to */

static void executor_unref(urio_executor_t *ex);

/* ------------------------------------------------------------------ */
/* Settling, on the loop; the last reference, anywhere                  */

/* Drops one side's reference: the job is the future's extension. */
static void job_unref(job_t *j)
{
    urio_future_unref(j->f);
}

/* The future's last reference went (any thread): what the job still holds. */
static void job_finalize(urio_future_t *f)
{
    job_t *j = urio__future_ext(f);
    urio__free(j->errmsg);
    if (j->ex != NULL)
        executor_unref(j->ex);
}

static const urio__future_ops_t job_ops = {
    .kind = "Future",
    .finalize = job_finalize,
};

/* Gives the future its outcome and lets go of the loop's side.  Loop thread. */
static void job_settle(job_t *j, int forced_err)
{
    if (j->settled)
        return;
    j->settled = true;
    urio__future_set_cancel_hook(j->f, NULL, NULL);
    int state = atomic_load(&j->state);
    if (urio_future_done(j->f)) {
        /* Cancelled after the job started: the result is nobody's. */
        if (state == JOB_DONE && j->err == 0 && j->free_result && !j->delivered)
            j->free_result(j->result);
        j->delivered = true;
    } else if (forced_err == -ECANCELED || state == JOB_CANCELLED) {
        urio__future_cancel_now(j->f);
    } else if (forced_err < 0) {
        urio_future_set_error(j->f, forced_err, NULL);
    } else if (j->err < 0) {
        if (j->errmsg)
            urio_future_set_error(j->f, j->err, "%s", j->errmsg);
        else
            urio_future_set_error(j->f, j->err, NULL);
    } else {
        urio_future_set_result(j->f, j->result);
        j->delivered = true;
    }
    urio_loop_t *loop = j->loop;
    if (j->lprev)
        j->lprev->lnext = j->lnext;
    else
        loop->jobs_live = j->lnext;
    if (j->lnext)
        j->lnext->lprev = j->lprev;
    job_unref(j);
}

/* The completion's arrival on the loop (from its inbox): the pool's side ends here. */
static void job_complete(void *arg)
{
    job_t *j = arg;
    job_settle(j, 0);
    job_unref(j);
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
        job_unref(j);
    }
}

/* The future was cancelled on the loop: if no worker took the job yet, it never will. */
static void job_cancel_hook(void *arg)
{
    job_t *j = arg;
    int queued = JOB_QUEUED;
    atomic_compare_exchange_strong(&j->state, &queued, JOB_CANCELLED);
}

/* The loop closes: every job of it still out there is cancelled and let go. */
void urio__executor_loop_closing(urio_loop_t *loop)
{
    if (loop->jobs_head != NULL)
        urio__executor_flush(loop);
    while (loop->jobs_live != NULL) {
        job_t *j = loop->jobs_live;
        int queued = JOB_QUEUED;
        atomic_compare_exchange_strong(&j->state, &queued, JOB_CANCELLED);
        job_settle(j, -ECANCELED);
    }
}

bool urio__executor_is_worker(const urio_executor_t *ex)
{
    return ex != NULL && tls_ex == ex;
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

static void *worker_main(void *arg)
{
    urio_executor_t *ex = arg;
    tls_ex = ex;
    pthread_mutex_lock(&ex->mu);
    for (;;) {
        while (ex->head == NULL && !ex->shutdown) {
            ex->idle++;
            pthread_cond_wait(&ex->work, &ex->mu);
            ex->idle--;
            if (ex->waking > 0)
                ex->waking--;
        }
        job_t *j = ex->head;
        if (j == NULL)
            break;          /* shut down and drained */
        ex->head = j->next;
        if (ex->head == NULL)
            ex->tail = NULL;
        pthread_mutex_unlock(&ex->mu);
        run_job(j);
        pthread_mutex_lock(&ex->mu);
    }
    pthread_mutex_unlock(&ex->mu);
    return NULL;
}

/* Starts a worker if none is idle and the pool may grow.  Called with mu held. */
static int maybe_spawn(urio_executor_t *ex)
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

URIO_EXPORT int urio_thread_pool_new(urio_executor_t **out, unsigned max_workers)
{
    if (out == NULL || max_workers > 1024)
        return -EINVAL;
    *out = NULL;
    urio_executor_t *ex = urio__calloc(1, sizeof *ex);
    if (ex == NULL)
        return -ENOMEM;
    ex->max_workers = max_workers ? max_workers : default_workers();
    ex->threads = urio__calloc(ex->max_workers, sizeof *ex->threads);
    if (ex->threads == NULL) {
        urio__free(ex);
        return -ENOMEM;
    }
    pthread_mutex_init(&ex->mu, NULL);
    pthread_mutex_init(&ex->join_mu, NULL);
    pthread_cond_init(&ex->work, NULL);
    atomic_init(&ex->refs, 1);
    *out = ex;
    return 0;
}

static urio_future_t *fail(int err)
{
    errno = -err;
    return NULL;
}

URIO_EXPORT urio_future_t *urio_run_in_executor_dtor(urio_loop_t *loop, urio_executor_t *ex,
                                                     urio_blocking_fn fn, void *arg,
                                                     urio_free_fn free_result)
{
    if (loop == NULL || fn == NULL)
        return fail(-EINVAL);
    if (!urio__loop_check_thread(loop, "urio_run_in_executor"))
        return fail(-EPERM);
    if (loop->closing)
        return fail(-ESHUTDOWN);
    if (ex == NULL) {
        if (loop->default_ex == NULL) {
            int ret = urio_thread_pool_new(&loop->default_ex, 0);
            if (ret < 0)
                return fail(ret);
        }
        ex = loop->default_ex;
    }
    urio_future_t *f = urio__future_new_ext(loop, sizeof(job_t), &job_ops);
    if (f == NULL)
        return fail(-ENOMEM);
#if URIO_DEBUG_CHECKS
    if (loop->debug) {
        urio__stack_t *st = urio__malloc(sizeof *st);
        if (st) {
            urio__stack_capture(st, 1);     /* from the submitting caller */
            urio__future_capture_stack(f, st);
        }
    }
#endif
    job_t *j = urio__future_ext(f);
    j->node.idx = URIO__INBOX_FOREIGN;
    j->ex = ex;
    j->loop = loop;
    j->f = f;
    j->fn = fn;
    j->arg = arg;
    j->free_result = free_result;
    atomic_init(&j->state, JOB_QUEUED);
    urio_future_ref(f);             /* the loop's side */
    urio_future_ref(f);             /* the pool's side */
    atomic_fetch_add_explicit(&ex->refs, 1, memory_order_relaxed);
    if (atomic_load_explicit(&ex->closed, memory_order_relaxed)) {
        /* An early answer; the check that counts is under the pool's lock, at the flush. */
        j->settled = true;
        urio_future_unref(f);       /* the loop's side */
        urio_future_unref(f);       /* the pool's side */
        urio_future_unref(f);       /* the caller's: nobody gets it */
        return fail(-ESHUTDOWN);
    }
    /*
     * Queue it on the loop; the loop hands its batch to the pools once per
     * turn (urio__executor_flush): one lock for many jobs, not one each, so
     * the loop thread and the workers fight less over the pool's mutex.
     */
    j->next = NULL;
    if (loop->jobs_tail)
        loop->jobs_tail->next = j;
    else
        loop->jobs_head = j;
    loop->jobs_tail = j;
    j->lnext = loop->jobs_live;
    j->lprev = NULL;
    if (loop->jobs_live)
        loop->jobs_live->lprev = j;
    loop->jobs_live = j;
    urio__future_set_cancel_hook(f, job_cancel_hook, j);
    /* Outside a run there is no end of turn to wait for: hand it over now. */
    if (atomic_load_explicit(&loop->owner, memory_order_relaxed) == NULL)
        urio__executor_flush(loop);
    return f;
}

void urio__executor_flush(urio_loop_t *loop)
{
    job_t *j = loop->jobs_head;
    loop->jobs_head = loop->jobs_tail = NULL;
    while (j != NULL) {
        /* A run of jobs for the same pool goes in under one lock. */
        urio_executor_t *ex = j->ex;
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
            /* Wake one idle worker per job, no more: needless wake-ups cost context switches. */
            for (unsigned k = 0; k < n && ex->idle > ex->waking; k++) {
                ex->waking++;
                pthread_cond_signal(&ex->work);
            }
        }
        pthread_mutex_unlock(&ex->mu);
        if (ret < 0) {
            /* The pool shut down (or cannot start a thread) since the call: fail these jobs. */
            for (job_t *k = first, *next; k != NULL; k = next) {
                next = k->next;
                atomic_store(&k->state, JOB_CANCELLED);
                job_settle(k, ret);
                job_unref(k);       /* the pool's side: it never got the job */
            }
        }
    }
}

URIO_EXPORT urio_future_t *urio_run_in_executor(urio_loop_t *loop, urio_executor_t *ex,
                                                urio_blocking_fn fn, void *arg)
{
    return urio_run_in_executor_dtor(loop, ex, fn, arg, NULL);
}

URIO_EXPORT void *urio_executor_fail(int err, const char *fmt, ...)
{
    job_t *j = tls_job;
    if (j == NULL) {
        urio__log(URIO_LOG_ERROR, "urio_executor_fail(): called outside an executor job");
        return NULL;
    }
    j->err = err < 0 ? err : -EINVAL;
    urio__free(j->errmsg);
    j->errmsg = NULL;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        j->errmsg = urio__vasprintf(fmt, ap);   /* NULL on ENOMEM: the error without text */
        va_end(ap);
    }
    return NULL;
}

URIO_EXPORT int urio_executor_shutdown(urio_executor_t *ex, bool wait, bool cancel_futures)
{
    if (ex == NULL)
        return -EINVAL;
    if (wait && tls_ex == ex)
        return -EDEADLK;
    /* Jobs this thread's loop accepted but has not handed over yet come first. */
    urio_loop_t *cur = urio_loop_current();
    if (cur != NULL && cur->jobs_head != NULL)
        urio__executor_flush(cur);
    pthread_mutex_lock(&ex->mu);
    ex->shutdown = true;
    atomic_store(&ex->closed, true);
    job_t *cancelled = NULL;
    if (cancel_futures) {
        /* Take every job not yet started; each goes back to its loop as cancelled. */
        cancelled = ex->head;
        ex->head = ex->tail = NULL;
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

static void executor_unref(urio_executor_t *ex)
{
    if (atomic_fetch_sub_explicit(&ex->refs, 1, memory_order_acq_rel) != 1)
        return;
    pthread_cond_destroy(&ex->work);
    pthread_mutex_destroy(&ex->join_mu);
    pthread_mutex_destroy(&ex->mu);
    urio__free(ex->threads);
    urio__free(ex);
}

URIO_EXPORT void urio_executor_free(urio_executor_t *ex)
{
    if (ex == NULL)
        return;
    urio_executor_shutdown(ex, true, false);
    /* Jobs still held by loops keep the memory until they are let go. */
    executor_unref(ex);
}
