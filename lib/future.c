/*
 * future.c — futures.
 *
 * The state goes pending -> result | error | cancelled exactly once.  Done
 * callbacks wait in a small array (two inline, then a heap array); when the
 * future completes, one runner is scheduled on the loop's ready FIFO and
 * calls them all in the order they were added.  That is asyncio's order
 * (each callback scheduled with call_soon, in turn) without a ready entry
 * per callback.  The runner holds a reference on the future.
 *
 * Futures cross threads: an executor's job or another thread may hold a
 * reference, wait for the outcome (urio_future_wait blocks on a futex) or
 * cancel (through the loop's inbox).  So references are atomic, and the
 * state is published with a release store after the outcome is written;
 * readers on other threads load it with acquire.  Completing stays the loop
 * thread's business.  Each future holds a reference on its loop's memory,
 * so a future outliving urio_loop_close() can still be read and released.
 */
#include "future.h"

#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifdef URIO_ASAN
#include <sanitizer/asan_interface.h>
#endif

enum { F_PENDING, F_RESULT, F_ERROR, F_CANCELLED };

struct done_cb {
    urio_future_done_fn fn;
    void *arg;
};

struct urio_future {
    urio_loop_t *loop;
    atomic_uint refs;
    _Atomic uint32_t state;     /* F_*: set once, by the loop thread, with release */
    atomic_uint waiters;        /* threads in urio_future_wait: wake them */
    atomic_bool retrieved;      /* the error was read (result, error_message, await) */
    bool runner_scheduled;      /* loop thread */
    bool reserved;              /* loop thread: holds room in the FIFO for its runner */
    int err;                    /* the outcome: written before state */
    uint32_t ext_size;          /* bytes of the kind's state after this header */
    void *value;
    char *errmsg;               /* urio__malloc'd, or NULL */
    struct done_cb *cbs;        /* loop thread: inl, or a urio__malloc'd array */
    uint32_t ncbs, capcbs;
    struct done_cb inl[2];
    urio__cancel_hook_fn cancel_hook;   /* loop thread: told synchronously of a cancel */
    void *cancel_hook_arg;
    urio__backtrace_t *stack;   /* creation stack, debug mode only */
    const urio_site_t *err_site;    /* where the error was set, or NULL */
    urio__backtrace_t *err_stack;   /* the stack there, debug mode only */
    const urio__future_ops_t *ops;      /* a future of another kind (a task), or NULL */
    _Alignas(16) unsigned char ext[];   /* the kind's own state */
};

static inline uint32_t state_of(const urio_future_t *f)
{
    return atomic_load_explicit(&((urio_future_t *)f)->state, memory_order_acquire);
}

static bool check(const urio_future_t *f, const char *fn)
{
    return f != NULL && urio__loop_check_thread(f->loop, fn);
}

/* f's header as a new future has it: pending, no reference, no callback. */
static void header_init(urio_future_t *f, urio_loop_t *loop, const urio__future_ops_t *ops,
                        uint32_t ext_size)
{
    memset(f, 0, sizeof *f);
    f->loop = loop;
    f->cbs = f->inl;
    f->capcbs = 2;
    f->ops = ops;
    f->ext_size = ext_size;
}

urio_future_t *urio__future_new_kind(urio_loop_t *loop, size_t ext, const urio__future_ops_t *ops)
{
    urio_future_t *f = urio__malloc(sizeof *f + ext);
    if (f == NULL)
        return NULL;
    header_init(f, loop, ops, (uint32_t)ext);
    memset(f->ext, 0, ext);
    atomic_init(&f->refs, 1);
    urio__loop_ref(loop);
    return f;
}

/*
 * The last reference went and f let go of what it held: back to what
 * urio__future_new_kind made (its loop reference kept, its kind's state as
 * the last user left it), offered to its kind.  Returns: true if the kind
 * kept it.
 */
static bool recycle(urio_future_t *f)
{
    header_init(f, f->loop, f->ops, f->ext_size);     /* refs 0, as they are now */
    if (!f->ops->recycle(f))
        return false;
#ifdef URIO_ASAN
    /* Dead until reused: a use through a stale pointer is reported. */
    __asan_poison_memory_region(f, sizeof *f + f->ext_size);
#endif
    return true;
}

/* A kept future's memory, readable again (ASan). */
static void unpoison(urio_future_t *f)
{
#ifdef URIO_ASAN
    __asan_unpoison_memory_region(f, sizeof *f);    /* first: ext_size is in it */
    __asan_unpoison_memory_region(f->ext, f->ext_size);
#else
    (void)f;
#endif
}

urio_future_t *urio__future_reuse(urio_future_t *f, unsigned refs)
{
    unpoison(f);
    /* refs stayed 0 while kept, waiters too (a waiter holds a reference). */
    atomic_store_explicit(&f->refs, refs, memory_order_relaxed);
    return f;
}

void urio__future_init_refs(urio_future_t *f, unsigned refs)
{
    atomic_store_explicit(&f->refs, refs, memory_order_relaxed);
}

void urio__future_free_kept(urio_future_t *f)
{
    unpoison(f);
    urio_loop_t *loop = f->loop;
    urio__free(f);
    urio__loop_unref(loop);
}

/*
 * The creation stack, in debug mode: frames above the public function that
 * called this one, and `skip` more (urio__backtrace_capture finds its caller
 * by return address, so this must not be inlined).
 */
__attribute__((noinline)) void urio__future_capture_stack(urio_future_t *f, int skip)
{
#if URIO_DEBUG_CHECKS
    if (!f->loop->debug || f->stack != NULL)
        return;
    f->stack = urio__malloc(sizeof *f->stack);
    if (f->stack)   /* none is a poorer report, not a failure */
        urio__backtrace_capture(f->stack, skip + 1, true);
    URIO_NO_TAILCALL();
#else
    (void)f;
    (void)skip;
#endif
}

/* Debug mode: the stack where an error is set, `skip` frames above the caller. */
__attribute__((noinline)) void urio__future_capture_error_stack(urio_future_t *f, int skip)
{
#if URIO_DEBUG_CHECKS
    if (!f->loop->debug)
        return;
    urio__backtrace_t *bt = urio__malloc(sizeof *bt);
    if (bt)
        urio__backtrace_capture(bt, skip + 1, false);
    urio__free(f->err_stack);
    f->err_stack = bt;
    URIO_NO_TAILCALL();
#else
    (void)f;
    (void)skip;
#endif
}

void urio__future_copy_stack(urio_future_t *f, const urio__backtrace_t *bt)
{
    if (f->stack != NULL)
        return;
    f->stack = urio__malloc(sizeof *f->stack);
    if (f->stack)
        *f->stack = *bt;
}

void *urio__future_ext(urio_future_t *f)
{
    return f->ext;
}

const urio__future_ops_t *urio__future_ops(const urio_future_t *f)
{
    return f->ops;
}

const urio__backtrace_t *urio__future_stack(const urio_future_t *f)
{
    return f->stack;
}

URIO_EXPORT int urio_future_new(urio_future_t **out, urio_loop_t *loop)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (loop == NULL)
        return -EINVAL;
    if (!urio__loop_check_thread(loop, "urio_future_new"))
        return -EPERM;
    if (urio__loop_refuses(loop, "urio_future_new"))
        return -ESHUTDOWN;
    urio_future_t *f = urio__future_new_kind(loop, 0, NULL);
    if (f == NULL)
        return -ENOMEM;
    urio__future_capture_stack(f, 1);
    *out = f;
    return 0;
}

bool urio__future_tryref(urio_future_t *f)
{
    unsigned n = atomic_load_explicit(&f->refs, memory_order_relaxed);
    do {
        if (n == 0)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&f->refs, &n, n + 1, memory_order_acquire,
                                                    memory_order_relaxed));
    return true;
}

URIO_EXPORT urio_future_t *urio_future_ref(urio_future_t *f)
{
    if (f != NULL)
        atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
    return f;
}

void urio__future_set_origin(urio_future_t *f, const urio_site_t *site, urio__backtrace_t *bt)
{
    f->err_site = site;
    urio__free(f->err_stack);
    f->err_stack = bt;
}

char *urio__future_error_traceback(const urio_future_t *f)
{
    static const char header[] = "Traceback (most recent call last):";
    if (f->err_stack != NULL)
        return urio__backtrace_format_site(f->err_stack, f->err_site, header);
    if (f->err_site != NULL)
        return urio__site_format(f->err_site, header);
    return NULL;
}

char *urio__future_source_traceback(const urio_future_t *f)
{
    if (f->stack == NULL)
        return NULL;
    char header[64];
    snprintf(header, sizeof header, "%s created at (most recent call last):",
             f->ops ? f->ops->kind : "Future");
    return urio__backtrace_format(f->stack, header);
}

static void report_unretrieved(urio_future_t *f)
{
    char message[64];
    snprintf(message, sizeof message, "%s exception was never retrieved",
             f->ops ? f->ops->kind : "Future");
    char *src = urio__future_source_traceback(f);
    char *err = urio__future_error_traceback(f);
    urio_error_context_t ctx = {
        .message = message,
        .error = f->err,
        .error_message = f->errmsg,
        .future = f,
        .source_traceback = src,
        .error_traceback = err,
    };
    urio_loop_call_exception_handler(f->loop, &ctx);
    urio__free(src);
    urio__free(err);
}

bool urio__future_report_unretrieved(urio_future_t *f)
{
    if (state_of(f) != F_ERROR || atomic_exchange(&f->retrieved, true))
        return false;
    report_unretrieved(f);
    return true;
}

URIO_EXPORT void urio_future_unref(urio_future_t *f)
{
    /* acq_rel: the last one out sees every other thread's last use. */
    if (f == NULL || atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) > 1)
        return;
    if (state_of(f) == F_ERROR && !atomic_load(&f->retrieved)) {
        atomic_store(&f->refs, 1);      /* valid while the handler looks at it */
        atomic_store(&f->retrieved, true);  /* reported once */
        report_unretrieved(f);
        /* The handler may have kept it (urio_future_ref): then it lives on. */
        if (atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) > 1)
            return;
    }
    urio_loop_t *loop = f->loop;
    if (f->ops && f->ops->finalize)
        f->ops->finalize(f);
    if (f->reserved)
        urio__ready_unreserve(&loop->ready);
    if (f->cbs != f->inl)
        urio__free(f->cbs);
    /* One test for the usual case, a result out of debug mode: three calls fewer. */
    if (f->errmsg != NULL || f->stack != NULL || f->err_stack != NULL) {
        urio__free(f->errmsg);
        urio__free(f->stack);
        urio__free(f->err_stack);
    }
    if (f->ops && f->ops->recycle && recycle(f))
        return;
    urio__free(f);
    urio__loop_unref(loop);
}

/* The runner: calls every done callback registered so far, in order. */
static void run_callbacks(void *arg)
{
    urio_future_t *f = arg;
    f->runner_scheduled = false;
    struct done_cb local[2];
    struct done_cb *cbs = f->cbs;
    uint32_t n = f->ncbs;
    /* Detach the list: callbacks may add more to f, which schedules a new runner. */
    if (cbs == f->inl) {
        for (uint32_t i = 0; i < n; i++)   /* not memcpy: a call for one or two */
            local[i] = f->inl[i];
        cbs = local;
    } else {
        f->cbs = f->inl;
        f->capcbs = 2;
    }
    f->ncbs = 0;
    for (uint32_t i = 0; i < n; i++)
        cbs[i].fn(f, cbs[i].arg);
    if (cbs != local)
        urio__free(cbs);
    urio_future_unref(f);
}

/* The loop closed with f's runner still queued: drop the runner's reference. */
static void runner_dropped(void *arg)
{
    urio_future_t *f = arg;
    f->runner_scheduled = false;
    if (f->loop->debug)
        urio__log(URIO_LOG_DEBUG, "future: %u done callbacks dropped: the loop closed", f->ncbs);
    f->ncbs = 0;
    urio_future_unref(f);
}

/*
 * Queues the runner of a done future with callbacks.  It uses the room the
 * future reserved when its first callback came (so completing cannot fail
 * for want of memory), or reserves now for a future already done.
 * Returns: 0, -ENOMEM, or -ESHUTDOWN (the loop is closing).
 */
static const urio__ready_kind_t runner_kind = {
    { "<future done callbacks>", __FILE__, __LINE__ },
    runner_dropped,
};

/*
 * give: the caller's reference, which the runner takes over if it is
 * scheduled (*give is then cleared), instead of taking one of its own.
 */
static int schedule_runner(urio_future_t *f, bool *give)
{
    if (f->runner_scheduled || f->ncbs == 0)
        return 0;
    urio_loop_t *loop = f->loop;
    if (!f->reserved) {
        if (loop->closing)
            return -ESHUTDOWN;
        if (urio__ready_reserve(&loop->ready) < 0)
            return -ENOMEM;
    }
    f->reserved = false;
    if (loop->closing) {
        urio__ready_unreserve(&loop->ready);
        if (loop->debug)
            urio__log(URIO_LOG_DEBUG, "future: %u done callbacks dropped: the loop is closing",
                      f->ncbs);
        return -ESHUTDOWN;
    }
    if (give != NULL && *give)
        *give = false;
    else
        atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
    urio__ready_push_reserved(&loop->ready, run_callbacks, f, &runner_kind);
    f->runner_scheduled = true;
    return 0;
}

static void futex_wake_all(_Atomic uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/*
 * The one transition.  The caller checked the thread and that f is pending.
 * give: see schedule_runner (NULL: the caller gives no reference).
 */
static void transition(urio_future_t *f, uint32_t state, int err, void *value, bool *give)
{
    f->err = err;
    f->value = value;
    /*
     * seq_cst: the outcome is published (release), and ordered before the
     * load of `waiters`, which pairs with a waiter's increment-then-check.
     */
    atomic_store_explicit(&f->state, state, memory_order_seq_cst);
    if (atomic_load_explicit(&f->waiters, memory_order_seq_cst) != 0)
        futex_wake_all(&f->state);
    if (state == F_CANCELLED && f->cancel_hook != NULL) {
        urio__cancel_hook_fn hook = f->cancel_hook;
        f->cancel_hook = NULL;
        hook(f->cancel_hook_arg);
    }
    schedule_runner(f, give);
}

/*
 * A future completed a second time: a state-machine mistake that would
 * silently lose one of the two outcomes.  With debug mode's machinery
 * compiled in, it is said, naming the future and where it was made (only
 * this error path pays).
 */
__attribute__((cold, noinline)) static int done_already(const urio_future_t *f, const char *fn)
{
#if URIO_DEBUG_CHECKS
    char desc[200];
    char *src = urio__future_source_traceback(f);
    urio__log(URIO_LOG_ERROR, "%s(): %s is done already: its outcome is kept, this one "
              "refused%s%s%s", fn, urio__future_describe(f, desc, sizeof desc),
              src ? "\n" : "", src ? src : "",
              src || (f->loop && f->loop->debug) ? ""
                  : "\nEnable debug mode (URIO_DEBUG=1) to get where it was created");
    urio__free(src);
#else
    (void)f;
    (void)fn;
#endif
    return -EINVAL;
}

static int complete(urio_future_t *f, uint32_t state, int err, void *value, const char *fn)
{
    if (!check(f, fn))
        return f ? -EPERM : -EINVAL;
    if (state_of(f) != F_PENDING)
        return done_already(f, fn);
    transition(f, state, err, value, NULL);
    return 0;
}

/* A task's, a job's... outcome is urio's to set: refuse it from outside, always. */
__attribute__((cold, noinline)) static int refuse_sealed(const urio_future_t *f, const char *fn)
{
    char desc[200];
    urio__log(URIO_LOG_ERROR, "%s(): %s gets its outcome from urio (a task from its "
              "function's return), not from %s(); refused", fn,
              urio__future_describe(f, desc, sizeof desc), fn);
    return -EINVAL;
}

static int settle(urio_future_t *f, int err, void *value, char *msg, bool *give)
{
    if (state_of(f) != F_PENDING) {
        urio__free(msg);
        return -EINVAL;
    }
    if (err == 0) {
        urio__free(msg);
        transition(f, F_RESULT, 0, value, give);
    } else {
        urio__free(f->errmsg);
        f->errmsg = msg;
        transition(f, err == -ECANCELED ? F_CANCELLED : F_ERROR, err, NULL, give);
    }
    return 0;
}

int urio__future_settle(urio_future_t *f, int err, void *value, char *msg)
{
    return settle(f, err, value, msg, NULL);
}

int urio__future_settle_unref(urio_future_t *f, int err, void *value, char *msg)
{
    bool give = true;
    int ret = settle(f, err, value, msg, &give);
    if (give)
        urio_future_unref(f);
    return ret;
}

URIO_EXPORT int urio_future_set_result(urio_future_t *f, void *value)
{
    if (f != NULL && f->ops && f->ops->sealed)
        return refuse_sealed(f, "urio_future_set_result");
    return complete(f, F_RESULT, 0, value, "urio_future_set_result");
}

__attribute__((noinline)) static int set_error(urio_future_t *f, const urio_site_t *site,
                                              int err, const char *fmt,
                     va_list ap)
{
    err = urio__error_code(err, "urio_future_set_error");
    if (err >= 0)
        return -EINVAL;
    if (!check(f, "urio_future_set_error"))
        return f ? -EPERM : -EINVAL;
    if (f->ops && f->ops->sealed)
        return refuse_sealed(f, "urio_future_set_error");
    if (state_of(f) != F_PENDING)
        return done_already(f, "urio_future_set_error");
    char *msg = NULL;
    int ret = 0;
    if (fmt != NULL) {
        msg = urio__vasprintf(fmt, ap);
        if (msg == NULL)
            ret = -ENOMEM;      /* completed all the same, without the message */
    }
    f->errmsg = msg;
    f->err_site = site;
    urio__future_capture_error_stack(f, 2);
    transition(f, err == -ECANCELED ? F_CANCELLED : F_ERROR, err, NULL, NULL);
    return ret;
}

URIO_EXPORT int urio_future_set_error_site(urio_future_t *f, const urio_site_t *site, int err,
                                           const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int ret = set_error(f, site, err, fmt, ap);
    URIO_NO_TAILCALL();     /* the stack capture counts this frame */
    va_end(ap);
    return ret;
}

#undef urio_future_set_error
URIO_EXPORT int urio_future_set_error(urio_future_t *f, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int ret = set_error(f, NULL, err, fmt, ap);
    URIO_NO_TAILCALL();     /* the stack capture counts this frame */
    va_end(ap);
    return ret;
}

/*
 * The cancel itself, on the loop thread: a kind may do it its own way (a
 * task).  msg (urio__malloc'd or NULL) is the cancel's message; this takes it.
 */
static bool cancel_here(urio_future_t *f, char *msg)
{
    if (state_of(f) != F_PENDING) {
        urio__free(msg);
        return false;
    }
    if (f->ops && f->ops->cancel)
        return f->ops->cancel(f, msg);
    urio__free(f->errmsg);
    f->errmsg = msg;
    transition(f, F_CANCELLED, -ECANCELED, NULL, NULL);
    return true;
}

void urio__future_cancel_now(urio_future_t *f, char *msg)
{
    if (state_of(f) != F_PENDING) {
        urio__free(msg);
        return;
    }
    urio__free(f->errmsg);
    f->errmsg = msg;
    transition(f, F_CANCELLED, -ECANCELED, NULL, NULL);
}

/* A cancel requested from another thread, run on the loop. */
static void cancel_on_loop(void *arg)
{
    urio_future_t *f = arg;
    cancel_here(f, NULL);
    urio_future_unref(f);
}

struct cancel_msg {
    urio_future_t *f;
    char *msg;
};

static void cancel_msg_on_loop(void *arg)
{
    struct cancel_msg *c = arg;
    cancel_here(c->f, c->msg);
    urio_future_unref(c->f);
    urio__free(c);
}

static bool cancel(urio_future_t *f, char *msg)
{
    /*
     * Only the loop's thread cancels directly: the one running it, or, when
     * it is not running, its home thread.  Any other goes through the inbox,
     * also while the loop is between runs (its state is not ours to touch).
     */
    if (urio__loop_is_mine(f->loop))
        return cancel_here(f, msg);
    if (state_of(f) != F_PENDING) {
        urio__free(msg);
        return false;
    }
    urio_future_ref(f);
    int ret;
    if (msg == NULL) {
        ret = urio_call_soon_threadsafe(f->loop, cancel_on_loop, f);
    } else {
        struct cancel_msg *c = urio__malloc(sizeof *c);
        if (c == NULL) {
            urio__free(msg);
            urio_future_unref(f);
            return false;
        }
        *c = (struct cancel_msg){ f, msg };
        ret = urio_call_soon_threadsafe(f->loop, cancel_msg_on_loop, c);
        if (ret < 0) {
            urio__free(c);
            urio__free(msg);
        }
    }
    if (ret < 0) {
        urio_future_unref(f);
        return false;
    }
    return true;
}

URIO_EXPORT bool urio_future_cancel(urio_future_t *f)
{
    return f != NULL && cancel(f, NULL);
}

bool urio__future_cancel_take(urio_future_t *f, char *msg)
{
    return cancel(f, msg);
}

URIO_EXPORT bool urio_future_cancel_msg(urio_future_t *f, const char *fmt, ...)
{
    if (f == NULL)
        return false;
    char *msg = NULL;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        msg = urio__vasprintf(fmt, ap);     /* NULL on ENOMEM: cancelled without it */
        va_end(ap);
    }
    return cancel(f, msg);
}

void urio__future_set_cancel_hook(urio_future_t *f, urio__cancel_hook_fn fn, void *arg)
{
    f->cancel_hook = fn;
    f->cancel_hook_arg = arg;
}

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449     /* Linux 5.16, the same number on every architecture */
#endif

/*
 * Sleeps while f reads pending and its loop open (futex_waitv on both words:
 * a close wakes the waiter), until abs (NULL: no limit).  Without
 * futex_waitv (before 5.16), sleeps on f alone in slices of 50 ms, looking
 * at the loop between them.
 */
static void wait_pending(urio_future_t *f, const struct timespec *abs)
{
    static atomic_int no_waitv;
    if (!atomic_load_explicit(&no_waitv, memory_order_relaxed)) {
        struct futex_waitv w[2] = {
            { .val = F_PENDING, .uaddr = (uintptr_t)&f->state,
              .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG },
            { .val = 0, .uaddr = (uintptr_t)&f->loop->closed_word,
              .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG },
        };
        long r = syscall(SYS_futex_waitv, w, 2, 0, abs, CLOCK_MONOTONIC);
        if (r >= 0 || errno == EAGAIN || errno == ETIMEDOUT || errno == EINTR)
            return;     /* woken, changed, timed out or interrupted: the caller looks */
        /*
         * ENOSYS (before 5.16), or refused: a seccomp filter that answers
         * EPERM for system calls it does not know (container runtimes'
         * defaults did, before futex_waitv).  Either way it never will.
         */
        atomic_store_explicit(&no_waitv, 1, memory_order_relaxed);
    }
    struct timespec now, rel = { 0, 50 * 1000000 };
    if (abs != NULL) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t left = (int64_t)(abs->tv_sec - now.tv_sec) * 1000000000 + (abs->tv_nsec - now.tv_nsec);
        if (left <= 0)
            return;
        if (left < 50 * 1000000)
            rel.tv_nsec = (long)left;
    }
    syscall(SYS_futex, &f->state, FUTEX_WAIT_PRIVATE, F_PENDING, &rel, NULL, 0);
}

URIO_EXPORT int urio_future_wait(urio_future_t *f, int64_t timeout_ns, void **result)
{
    if (f == NULL || timeout_ns < -1)
        return -EINVAL;
    if (state_of(f) != F_PENDING)
        return urio_future_result(f, result);
    if (atomic_load(&f->loop->closed_word))
        return -ESHUTDOWN;
    if (urio__loop_progresses_only_here(f->loop)) {
        urio__log(URIO_LOG_ERROR, "urio_future_wait(): called from the thread %s the "
                  "future's loop, which would wait for itself",
                  urio_loop_current() == f->loop ? "running" : "that owns");
        return -EDEADLK;
    }
    struct timespec abs, *absp = NULL;
    if (timeout_ns >= 0) {
        uint64_t deadline = urio__now() + (uint64_t)timeout_ns;
        abs.tv_sec = (time_t)(deadline / 1000000000u);
        abs.tv_nsec = (long)(deadline % 1000000000u);
        absp = &abs;
    }
    atomic_fetch_add_explicit(&f->waiters, 1, memory_order_seq_cst);
    int ret = 0;
    while (atomic_load_explicit(&f->state, memory_order_seq_cst) == F_PENDING) {
        if (atomic_load_explicit(&f->loop->closed_word, memory_order_seq_cst)) {
            ret = -ESHUTDOWN;   /* the loop closed and nobody completed f: it never will */
            break;
        }
        if (absp != NULL && urio__now() >= (uint64_t)abs.tv_sec * 1000000000u + (uint64_t)abs.tv_nsec) {
            ret = -ETIMEDOUT;
            break;
        }
        wait_pending(f, absp);
    }
    atomic_fetch_sub_explicit(&f->waiters, 1, memory_order_relaxed);
    return ret < 0 ? ret : urio_future_result(f, result);
}

URIO_EXPORT bool urio_future_done(const urio_future_t *f)
{
    return f != NULL && state_of(f) != F_PENDING;
}

URIO_EXPORT bool urio_future_cancelled(const urio_future_t *f)
{
    return f != NULL && state_of(f) == F_CANCELLED;
}

URIO_EXPORT int urio_future_result(urio_future_t *f, void **value)
{
    if (f == NULL)
        return -EINVAL;
    switch (state_of(f)) {
    case F_PENDING:
        return URIO_ENOTDONE;
    case F_RESULT:
        if (value)
            *value = f->value;
        return 0;
    case F_ERROR:
        atomic_store_explicit(&f->retrieved, true, memory_order_relaxed);
        return f->err;
    default:
        return -ECANCELED;
    }
}

URIO_EXPORT const char *urio_future_error_message(const urio_future_t *f)
{
    if (f == NULL)
        return NULL;
    if (state_of(f) == F_ERROR)
        atomic_store_explicit(&((urio_future_t *)f)->retrieved, true, memory_order_relaxed);
    return state_of(f) == F_PENDING ? NULL : f->errmsg;
}

URIO_EXPORT urio_loop_t *urio_future_loop(const urio_future_t *f)
{
    return f ? f->loop : NULL;
}

URIO_EXPORT int urio_future_add_done_callback(urio_future_t *f, urio_future_done_fn fn, void *arg)
{
    if (f == NULL || fn == NULL)
        return -EINVAL;
    if (!check(f, "urio_future_add_done_callback"))
        return -EPERM;
    if (urio__loop_refuses(f->loop, "urio_future_add_done_callback"))
        return -ESHUTDOWN;
    if (f->ncbs == f->capcbs) {
        uint32_t cap = f->capcbs * 2;
        struct done_cb *n = urio__malloc((size_t)cap * sizeof *n);
        if (n == NULL)
            return -ENOMEM;
        memcpy(n, f->cbs, f->ncbs * sizeof *n);
        if (f->cbs != f->inl)
            urio__free(f->cbs);
        f->cbs = n;
        f->capcbs = cap;
    }
    if (state_of(f) == F_PENDING && !f->reserved) {
        /* Room for the runner now, so completing f later cannot fail. */
        if (urio__ready_reserve(&f->loop->ready) < 0)
            return -ENOMEM;
        f->reserved = true;
    }
    f->cbs[f->ncbs++] = (struct done_cb){ fn, arg };
    if (state_of(f) != F_PENDING) {
        int ret = schedule_runner(f, NULL);
        if (ret < 0) {
            f->ncbs--;      /* failed: this callback never runs */
            return ret;
        }
    }
    return 0;
}

URIO_EXPORT int urio_future_remove_done_callback(urio_future_t *f, urio_future_done_fn fn, void *arg)
{
    if (f == NULL || !check(f, "urio_future_remove_done_callback"))
        return 0;
    if (state_of(f) != F_PENDING)
        return 0;           /* done: its callbacks are scheduled, as in asyncio */
    uint32_t kept = 0;
    for (uint32_t i = 0; i < f->ncbs; i++)
        if (f->cbs[i].fn != fn || f->cbs[i].arg != arg)
            f->cbs[kept++] = f->cbs[i];
    int removed = (int)(f->ncbs - kept);
    f->ncbs = kept;
    if (kept == 0 && f->reserved) {
        urio__ready_unreserve(&f->loop->ready);
        f->reserved = false;
    }
    return removed;
}

const char *urio__future_describe(const urio_future_t *f, char *buf, size_t n)
{
    if (f->ops && f->ops->describe) {
        f->ops->describe(f, buf, n);
        return buf;
    }
    switch (state_of(f)) {
    case F_PENDING:
        snprintf(buf, n, "<Future pending>");
        break;
    case F_RESULT:
        snprintf(buf, n, "<Future finished result=%p>", f->value);
        break;
    case F_ERROR:
        snprintf(buf, n, "<Future finished error=%s>", urio_strerror_name(f->err));
        break;
    default:
        snprintf(buf, n, "<Future cancelled>");
        break;
    }
    return buf;
}

const char *urio__future_state_name(const urio_future_t *f)
{
    switch (state_of(f)) {
    case F_PENDING: return "pending";
    case F_RESULT: return "finished";
    case F_ERROR: return "finished";
    default: return "cancelled";
    }
}

/* ------------------------------------------------------------------ */
/* Running the loop until a future is done                              */

static void stop_on_done(urio_future_t *f, void *arg)
{
    (void)f;
    urio_loop_stop(arg);
}

URIO_EXPORT int urio_loop_run_until_complete(urio_loop_t *loop, urio_future_t *f)
{
    if (loop == NULL || f == NULL || f->loop != loop)
        return -EINVAL;
    if (!urio_future_done(f)) {
        int ret = urio_future_add_done_callback(f, stop_on_done, loop);
        if (ret < 0)
            return ret;
        ret = urio_loop_run_forever(loop);
        if (!urio_future_done(f)) {
            urio_future_remove_done_callback(f, stop_on_done, loop);
            return ret < 0 ? ret : URIO_ESTOPPED;
        }
        if (ret < 0)
            return ret;
    }
    return urio_future_result(f, NULL);
}
