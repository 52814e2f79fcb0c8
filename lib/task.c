/*
 * task.c — coroutines and tasks: functions running on their own stacks.
 *
 * A task is a future (future.c's "Task" kind) whose extension is a
 * struct urio__task: the coroutine, its stack and its suspended context.
 * The loop runs a task by switching to its context from a callback (a
 * "step"); the task runs until it awaits something not done, which adds a
 * done callback that will switch back into it, and switches to the loop.
 * Tasks never switch to each other directly: every step starts from the
 * loop's stack, so a task's suspension is always one switch deep.
 *
 * Cancellation is a request: urio_future_cancel(task) sets a flag and
 * cancels the future the task is blocked on; the await returns -ECANCELED
 * and so does every later one (unless shielded); the task ends cancelled if
 * it returns -ECANCELED.
 *
 * Sanitizers follow the switches: ASan's fiber annotations, TSan's fibers,
 * and valgrind's stack registration are compiled in when that tool is in use.
 */
#include "task.h"

#include <stdio.h>
#include <stdlib.h>

_Thread_local urio__task_t *urio__tls_task __attribute__((tls_model("initial-exec")));

static bool task_cancel(urio_future_t *f);
static void task_describe(const urio_future_t *f, char *buf, size_t n);
static void task_finalize(urio_future_t *f);

static const urio__future_ops_t task_ops = {
    .kind = "Task",
    .cancel = task_cancel,
    .describe = task_describe,
    .finalize = task_finalize,
};

URIO_EXPORT bool urio_future_is_task(const urio_future_t *f)
{
    return f != NULL && urio__future_ops(f) == &task_ops;
}

URIO_EXPORT const char *urio_task_name(const urio_future_t *f)
{
    return urio_future_is_task(f) ? urio__task_of((urio_future_t *)f)->name : NULL;
}

static void task_describe(const urio_future_t *f, char *buf, size_t n)
{
    const urio__task_t *t = urio__task_of((urio_future_t *)f);
    const char *state = urio__future_state_name(f);
    if (t->site)
        snprintf(buf, n, "<Task %s '%s' created at %s:%d>", state, t->name, t->site->file,
                 t->site->line);
    else
        snprintf(buf, n, "<Task %s '%s'>", state, t->name);
}

static void task_finalize(urio_future_t *f)
{
    urio__task_t *t = urio__task_of(f);
    urio__free(t->name_owned);
    urio__free(t->errmsg);
}

URIO_EXPORT urio_future_t *urio_task_current(void)
{
    urio__task_t *t = urio__tls_task;
    return t ? t->self : NULL;
}

/* "<Task 'fn' created at file.c:42>": names a task's step in the slow-callback report. */
static void task_describe_short(const void *obj, char *buf, size_t n)
{
    const urio__task_t *t = obj;
    if (t->site)
        snprintf(buf, n, "<Task '%s' created at %s:%d>", t->name, t->site->file, t->site->line);
    else
        snprintf(buf, n, "<Task '%s'>", t->name);
}

/* Switches from the loop's stack into t, until t suspends or ends. */
static void task_finish(urio__task_t *t);

static void switch_in(urio__task_t *t)
{
    urio_loop_t *loop = t->loop;
    urio__tasks_t *ts = t->tasks;
    urio__tls_task = t;
    /* Whichever callback resumed it, the step is the task's: reports name the task. */
    urio__loop_attribute(loop, task_describe_short, t);
    ts->thread = urio__thread_token();
    t->state = URIO__TASK_RUNNING;
#ifdef URIO_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, t->stack->base, t->stack->size);
#endif
#ifdef URIO_TSAN
    if (ts->san_fiber == NULL)
        ts->san_fiber = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(t->tsan_fiber, 0);
#endif
    urio__ctx_switch(&ts->task_return, &t->ctx);
#ifdef URIO_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
    urio__tls_task = NULL;
    if (t->state == URIO__TASK_DONE)
        task_finish(t);
}

/* From the task's stack back to the loop's; returns when the loop resumes it. */
static void switch_out(urio__task_t *t, bool for_good)
{
#ifdef URIO_ASAN
    __sanitizer_start_switch_fiber(for_good ? NULL : &t->asan_fake, t->loop_stack_bottom,
                                   t->loop_stack_size);
#endif
#ifdef URIO_TSAN
    __tsan_switch_to_fiber(t->tasks->san_fiber, 0);
#endif
    urio__ctx_switch(&t->ctx, &t->tasks->task_return);
#ifdef URIO_ASAN
    __sanitizer_finish_switch_fiber(t->asan_fake, &t->loop_stack_bottom, &t->loop_stack_size);
#else
    (void)for_good;
#endif
}

/* The task's first frame, on its own stack. */
static void task_entry(void *arg)
{
    urio__task_t *t = arg;
#ifdef URIO_ASAN
    __sanitizer_finish_switch_fiber(NULL, &t->loop_stack_bottom, &t->loop_stack_size);
#endif
    if (t->cancel_requested) {
        t->ret = -ECANCELED;        /* cancelled before its first step: the body never runs */
    } else {
        urio_coro_t *c = t->coro;
        t->ret = c->fn(c->arg, &t->result);
    }
    t->state = URIO__TASK_DONE;
    switch_out(t, true);
    abort();                        /* a finished task is never resumed */
}

/* A step: the loop resumes t (its first step, after a yield, or after an await). */
static void task_step(void *arg)
{
    urio__task_t *t = arg;
    if (t->loop->debug)
        urio__overflow_reporting_on();
    if (t->state != URIO__TASK_DONE)
        switch_in(t);
    urio_future_unref(t->self);     /* the step's reference */
}

/* The loop closed with a step queued: release the step's reference. */
static void step_dropped(void *arg)
{
    urio_future_unref(((urio__task_t *)arg)->self);
}

static const urio__ready_kind_t step_kind = {
    { "<task step>", __FILE__, __LINE__ },
    step_dropped,
};

static int schedule_step(urio__task_t *t)
{
    urio_future_ref(t->self);
    int ret = urio__call_soon_kind(t->loop, task_step, t, &step_kind);
    if (ret < 0)
        urio_future_unref(t->self);
    return ret;
}

static void task_list_remove(urio__task_t *t)
{
    urio__tasks_t *ts = t->tasks;
    if (t->prev)
        t->prev->next = t->next;
    else
        ts->list = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->next = t->prev = NULL;
    ts->n--;
    if (ts->n == 0 && ts->drained != NULL && !urio_future_done(ts->drained))
        urio_future_set_result(ts->drained, NULL);
}

/* The task's function returned: free its stack, complete its future. */
static void task_finish(urio__task_t *t)
{
#ifdef URIO_TSAN
    __tsan_destroy_fiber(t->tsan_fiber);
    t->tsan_fiber = NULL;
#endif
    urio__stack_put(&t->tasks->stacks, t->stack);
    t->stack = NULL;
    urio__coro_free(t->coro);
    t->coro = NULL;
    task_list_remove(t);
    urio_future_t *f = t->self;
    if (t->ret == 0)
        urio_future_set_result(f, t->result);
    else if (t->ret == -ECANCELED && t->cancel_requested)
        urio__future_cancel_now(f);
    else if (t->errmsg)
        urio_future_set_error(f, t->ret < 0 ? t->ret : -EINVAL, "%s", t->errmsg);
    else
        urio_future_set_error(f, t->ret < 0 ? t->ret : -EINVAL, NULL);
    urio__proxy_task_ended(t);
    urio_future_unref(f);           /* the loop's reference, held while it ran */
}

URIO_EXPORT urio_future_t *urio_task_create_opts(urio_loop_t *loop, urio_coro_t *coro,
                                                 const urio_task_opts_t *opts)
{
    if (coro == NULL) {
        errno = EINVAL;
        return NULL;
    }
    int err = 0;
    urio__tasks_t *ts = NULL;
    if (loop == NULL)
        err = EINVAL;
    else if (!urio__loop_check_thread(loop, "urio_task_create"))
        err = EPERM;
    else if (loop->closing)
        err = ESHUTDOWN;
    else if ((ts = urio__tasks_get(loop)) == NULL)
        err = ENOMEM;
    if (err) {
        urio_coro_close(coro);      /* it owns coro, also on failure */
        errno = err;
        return NULL;
    }
    urio_future_t *f = urio__future_new_kind(loop, sizeof(urio__task_t), &task_ops);
    if (f == NULL) {
        urio_coro_close(coro);
        errno = ENOMEM;
        return NULL;
    }
    urio__task_t *t = urio__task_of(f);
    t->self = f;
    t->loop = loop;
    t->tasks = ts;
    t->site = coro->site;
    t->name = urio__coro_name(coro);
    if (opts && opts->name) {
        t->name_owned = urio__strdup(opts->name);
        if (t->name_owned)
            t->name = t->name_owned;
    }
    size_t size = opts && opts->stack_size ? opts->stack_size : URIO_DEFAULT_STACK_SIZE;
    t->stack = urio__stack_get(&ts->stacks, size, &err);
    if (t->stack == NULL) {
        urio_coro_close(coro);
        urio_future_unref(f);
        errno = -err;
        return NULL;
    }
    urio__ctx_make(&t->ctx, t->stack->base, t->stack->size, task_entry, t);
#ifdef URIO_TSAN
    t->tsan_fiber = __tsan_create_fiber(0);
#endif
    /* The task reports where it was created: its coroutine's stack, or here. */
    if (coro->stack)
        urio__future_copy_stack(f, coro->stack);
    else
        urio__future_capture_stack(f, 1);
    if (loop->debug)
        urio__overflow_handler_on();
    urio_future_ref(f);             /* the loop's, until the task ends */
    int ret = schedule_step(t);
    if (ret < 0) {
        urio__stack_put(&ts->stacks, t->stack);
        t->stack = NULL;
        urio_coro_close(coro);
#ifdef URIO_TSAN
        __tsan_destroy_fiber(t->tsan_fiber);
#endif
        urio_future_unref(f);
        urio_future_unref(f);
        errno = -ret;
        return NULL;
    }
    urio__coro_claim(coro);
    t->coro = coro;
    if (ts->drained != NULL)
        t->cancel_requested = true;     /* urio_run is cancelling everything: this too */
    t->next = ts->list;
    if (ts->list)
        ts->list->prev = t;
    ts->list = t;
    ts->n++;
    return f;
}

#undef urio_task_create
URIO_EXPORT urio_future_t *urio_task_create(urio_loop_t *loop, urio_coro_t *coro)
{
    return urio_task_create_opts(loop, coro, NULL);
}

/* ------------------------------------------------------------------ */
/* Awaiting                                                             */

/* f is done: resume the task blocked on it. */
static void await_done(urio_future_t *f, void *arg)
{
    urio__task_t *t = arg;
    if (t->awaiting != f || t->state != URIO__TASK_SUSPENDED)
        return;
    switch_in(t);
}

static bool task_cancel(urio_future_t *f)
{
    urio__task_t *t = urio__task_of(f);
    if (t->state == URIO__TASK_DONE)
        return false;
    if (t->cancel_requested)
        return true;                /* idempotent */
    t->cancel_requested = true;
    if (t->state != URIO__TASK_SUSPENDED || t->shield != 0)
        return true;                /* delivered at its next await */
    if (t->awaiting != NULL) {
        /* Blocked in an await: cancel what it waits on; its completion resumes the task. */
        urio_future_cancel(t->awaiting);
    } else if (t->parked) {
        /* Parked in I/O: the I/O layer stops the op; its final CQE unparks the task. */
        urio__cancel_hook_fn hook = t->park_cancel;
        t->park_cancel = NULL;
        if (hook)
            hook(t->park_arg);
    } else if (t->sleep_timer.id != 0) {
        /* Asleep: stop the timer and wake it now. */
        urio_handle_cancel(t->loop, t->sleep_timer);
        t->sleep_timer.id = 0;
        schedule_step(t);
    }
    return true;
}

URIO_EXPORT int urio_await(urio_future_t *f, void **result)
{
    urio__task_t *t = urio__task_running();
    if (t == NULL) {
        urio__log(URIO_LOG_ERROR, "urio_await(): called outside a task");
        return -EPERM;
    }
    if (f == NULL || urio_future_loop(f) != t->loop)
        return -EINVAL;
    if (f == t->self)
        return -EDEADLK;
    if (urio__task_cancel_pending(t))
        return -ECANCELED;
    if (!urio_future_done(f)) {
        int ret = urio_future_add_done_callback(f, await_done, t);
        if (ret < 0)
            return ret;
        t->awaiting = urio_future_ref(f);
        t->state = URIO__TASK_SUSPENDED;
        switch_out(t, false);
        t->awaiting = NULL;
        urio_future_unref(f);
    }
    /* A cancel that came while it waited wins, as asyncio's does at the next step. */
    if (urio__task_cancel_pending(t))
        return -ECANCELED;
    return urio_future_result(f, result);
}

URIO_EXPORT int urio_await_coro(urio_coro_t *coro, void **result)
{
    urio__task_t *t = urio__task_running();
    if (coro == NULL)
        return -EINVAL;
    if (t == NULL) {
        urio_coro_close(coro);
        urio__log(URIO_LOG_ERROR, "urio_await_coro(): called outside a task");
        return -EPERM;
    }
    urio__coro_claim(coro);
    void *res = NULL;
    int ret = urio__task_cancel_pending(t) ? -ECANCELED : coro->fn(coro->arg, &res);
    urio__coro_free(coro);
    if (ret == 0 && result)
        *result = res;
    return ret;
}

URIO_EXPORT int urio_task_fail(int err, const char *fmt, ...)
{
    urio__task_t *t = urio__task_running();
    if (t == NULL || fmt == NULL)
        return err;
    va_list ap;
    va_start(ap, fmt);
    char *msg = urio__vasprintf(fmt, ap);
    va_end(ap);
    urio__free(t->errmsg);
    t->errmsg = msg;                /* NULL on ENOMEM: the error without its text */
    return err;
}

/* The sleep's timer: resume the task.  No future, so nothing to leak if the loop closes. */
static void sleep_wake(void *arg)
{
    urio__task_t *t = arg;
    if (t->sleep_timer.id != 0 && t->state == URIO__TASK_SUSPENDED) {
        t->sleep_timer.id = 0;
        switch_in(t);
    }
}

URIO_EXPORT int urio_sleep(uint64_t ns)
{
    urio__task_t *t = urio__task_running();
    if (t == NULL)
        return -EPERM;
    if (ns == 0)
        return urio_yield();
    if (urio__task_cancel_pending(t))
        return -ECANCELED;
    static const urio_site_t site = { "<urio_sleep>", __FILE__, __LINE__ };
    urio_handle_t h = urio_call_later_site(t->loop, ns, sleep_wake, t, &site);
    if (h.id == 0)
        return -errno;
    t->sleep_timer = h;
    t->state = URIO__TASK_SUSPENDED;
    switch_out(t, false);
    /* Resumed by the timer, or early by a cancel (which cancelled the timer). */
    t->sleep_timer.id = 0;
    return urio__task_cancel_pending(t) ? -ECANCELED : 0;
}

int urio__task_reserve_wake(urio__task_t *t)
{
    return urio__ready_reserve(&t->loop->ready);
}

void urio__task_release_wake(urio__task_t *t)
{
    urio__ready_unreserve(&t->loop->ready);
}

void urio__task_park(urio__task_t *t, urio__cancel_hook_fn on_cancel, void *arg)
{
    t->park_cancel = on_cancel;
    t->park_arg = arg;
    t->parked = true;
    t->state = URIO__TASK_SUSPENDED;
    switch_out(t, false);
    t->park_cancel = NULL;
}

void urio__task_unpark(urio__task_t *t)
{
    if (!t->parked)
        return;
    t->parked = false;
    urio_loop_t *loop = t->loop;
    if (URIO_UNLIKELY(loop->closing)) {
        /* Never resumed: the tasks' release hook destroys it. */
        urio__ready_unreserve(&loop->ready);
        return;
    }
    urio_future_ref(t->self);       /* the step's */
    urio__ready_push_reserved(&loop->ready, task_step, t, &step_kind);
}

URIO_EXPORT int urio_yield(void)
{
    urio__task_t *t = urio__task_running();
    if (t == NULL)
        return -EPERM;
    int ret = schedule_step(t);
    if (ret < 0)
        return ret;
    t->state = URIO__TASK_SUSPENDED;
    switch_out(t, false);
    return urio__task_cancel_pending(t) ? -ECANCELED : 0;
}

struct wait_for {
    urio_future_t *f;
    bool timed_out;
};

static void wait_for_expired(void *arg)
{
    struct wait_for *w = arg;
    if (!urio_future_done(w->f)) {
        w->timed_out = true;
        urio_future_cancel(w->f);
    }
}

URIO_EXPORT int urio_wait_for(urio_future_t *f, uint64_t timeout_ns, void **result)
{
    urio__task_t *t = urio__task_running();
    if (t == NULL)
        return -EPERM;
    if (f == NULL)
        return -EINVAL;
    struct wait_for w = { f, false };
    static const urio_site_t site = { "<urio_wait_for timeout>", __FILE__, __LINE__ };
    urio_handle_t h = urio_call_later_site(t->loop, timeout_ns, wait_for_expired, &w, &site);
    if (h.id == 0)
        return -errno;
    int ret = urio_await(f, result);
    urio_handle_cancel(t->loop, h);
    if (w.timed_out && urio_future_cancelled(f))
        return -ETIMEDOUT;      /* (a shielded f may finish anyway: then its outcome stands) */
    if (ret == -ECANCELED && urio__task_cancel_pending(t))
        urio_future_cancel(f);      /* the waiter was cancelled: so is what it waited for */
    return ret;
}

URIO_EXPORT int urio_shield_begin(void)
{
    urio__task_t *t = urio__task_running();
    if (t == NULL)
        return -EPERM;
    t->shield++;
    return 0;
}

URIO_EXPORT int urio_shield_end(void)
{
    urio__task_t *t = urio__task_running();
    if (t == NULL || t->shield == 0)
        return -EPERM;
    t->shield--;
    return 0;
}

/* ------------------------------------------------------------------ */
/* The tasks subsystem on a loop                                        */

/* A suspended task must resume on the thread it was suspended on. */
static int tasks_may_run(urio_loop_t *loop, void *state)
{
    (void)loop;
    urio__tasks_t *ts = state;
    if (ts->n > 0 && ts->thread != NULL && ts->thread != urio__thread_token()) {
        urio__log(URIO_LOG_ERROR, "urio_loop_run_forever(): this loop has tasks suspended on "
                  "another thread; run it on that thread");
        return -EPERM;
    }
    return 0;
}

/*
 * Close, last: never-awaited coroutines and tasks still pending are
 * reported, then freed.  The ring is drained by now: no op of a task's can
 * still write into its stack.
 */
static void tasks_release(urio_loop_t *loop, void *state)
{
    urio__tasks_t *ts = state;
    urio__coros_close(ts);
    /* Tasks still pending: their stacks hold frames that will never run again. */
    while (ts->list) {
        urio__task_t *t = ts->list;
        char *tb = NULL;
        const urio__backtrace_t *bt = urio__future_stack(t->self);
        if (bt)
            tb = urio__backtrace_format(bt, "Task created at (most recent call last):");
        urio_error_context_t ctx = {
            .message = "Task was destroyed but it is pending!",
            .future = t->self,
            .source_traceback = tb,
        };
        urio_loop_call_exception_handler(loop, &ctx);
        urio__free(tb);
        task_list_remove(t);
        if (t->parked) {
            urio__ready_unreserve(&loop->ready);    /* its wake-up will never come */
            t->parked = false;
        }
        if (t->awaiting) {
            urio_future_remove_done_callback(t->awaiting, await_done, t);
            urio_future_unref(t->awaiting);
            t->awaiting = NULL;
        }
#ifdef URIO_TSAN
        __tsan_destroy_fiber(t->tsan_fiber);
#endif
        urio__stack_free(t->stack);
        t->stack = NULL;
        urio__coro_free(t->coro);
        t->coro = NULL;
        t->state = URIO__TASK_DONE;
        urio__future_cancel_now(t->self);   /* waiters on other threads are released */
        urio__proxy_task_ended(t);
        urio_future_unref(t->self);         /* the loop's reference */
    }
    urio__stack_pool_free(&ts->stacks);
    urio__free(ts);
}

static const urio__subsystem_t tasks_subsystem = {
    .name = "tasks",
    .may_run = tasks_may_run,
    .release = tasks_release,
};

urio__tasks_t *urio__tasks_find(const urio_loop_t *loop)
{
    return urio__loop_state(loop, &tasks_subsystem);
}

urio__tasks_t *urio__tasks_get(urio_loop_t *loop)
{
    urio__tasks_t *ts = urio__loop_state(loop, &tasks_subsystem);
    if (URIO_LIKELY(ts != NULL))
        return ts;
    ts = urio__calloc(1, sizeof *ts);
    if (ts == NULL)
        return NULL;
    ts->loop = loop;
    if (urio__loop_register(loop, &tasks_subsystem, ts) < 0) {
        urio__free(ts);
        return NULL;
    }
    return ts;
}
