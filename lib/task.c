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
#include <string.h>

_Thread_local urio__task_t *urio__tls_task __attribute__((tls_model("initial-exec")));

/* A child forked from inside a task runs no task (docs/loop.md, "fork"). */
static void fork_child(void)
{
    urio__tls_task = NULL;
}

static const urio__backtrace_t *running_task_stack(void);

__attribute__((constructor)) static void task_layer_init(void)
{
    pthread_atfork(NULL, NULL, fork_child);
    urio__backtrace_parent = running_task_stack;    /* creation stacks chain through tasks */
}

static bool task_cancel(urio_future_t *f, char *msg);
static void task_describe(const urio_future_t *f, char *buf, size_t n);
static void task_finalize(urio_future_t *f);

static const urio__future_ops_t task_ops = {
    .kind = "Task",
    .sealed = true,
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

static void tasks_unref(urio__tasks_t *ts);

/* Takes t off a list of tasks (the live ones, or the failed ones). */
static void unlink_task(urio__task_t **head, urio__task_t *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        *head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->next = t->prev = NULL;
}

static void task_finalize(urio_future_t *f)
{
    urio__task_t *t = urio__task_of(f);
    if (atomic_exchange(&t->failed_listed, false)) {
        urio__tasks_t *ts = t->tasks;
        pthread_mutex_lock(&ts->failed_mu);
        unlink_task(&ts->failed, t);
        pthread_mutex_unlock(&ts->failed_mu);
        tasks_unref(ts);
    }
    urio__free(t->name_owned);
    urio__free(t->errmsg);
    urio__free(t->err_stack);
    urio__free(t->cancel_msg);
}

URIO_EXPORT urio_future_t *urio_task_current(void)
{
    urio__task_t *t = urio__tls_task;
    return t ? t->self : NULL;
}

/*
 * Names a task's step in the slow-callback report: "<Task 'fn' created at
 * file.c:42>", and where the step ran: from the await it returned from (or
 * its start) to the one it stopped in (or its end).
 */
static void task_describe_short(const void *obj, char *buf, size_t n)
{
    const urio__task_t *t = obj;
    char from[160] = "its start", to[160] = "its end";
    if (t->resumed_pc)
        urio__describe_pc((uintptr_t)t->resumed_pc - 1, from, sizeof from);
    if (t->state != URIO__TASK_DONE && t->await_pc)
        urio__describe_pc((uintptr_t)t->await_pc - 1, to, sizeof to);
    else if (t->state != URIO__TASK_DONE)
        snprintf(to, sizeof to, "an await");
    /* An await in a return statement is a tail call: the task's own frame is gone. */
    if (strncmp(from, "task_entry()", 12) == 0)
        snprintf(from, sizeof from, "%s() (its return statement)", t->name);
    if (strncmp(to, "task_entry()", 12) == 0)
        snprintf(to, sizeof to, "%s() (its return statement)", t->name);
    if (t->site)
        snprintf(buf, n, "<Task '%s' created at %s:%d, step from %s to %s>", t->name,
                 t->site->file, t->site->line, from, to);
    else
        snprintf(buf, n, "<Task '%s', step from %s to %s>", t->name, from, to);
}

/* Switches from the loop's stack into t, until t suspends or ends. */
static void task_finish(urio__task_t *t);

/*
 * A task resumed while it runs, or after it ended: a state-machine mistake
 * (a done callback or step run twice) that would jump into a stack in use
 * or freed.  Refused and said, with debug mode's machinery compiled in.
 */
#if URIO_DEBUG_CHECKS
__attribute__((cold, noinline)) static void resumed_wrongly(const urio__task_t *t)
{
    urio__log(URIO_LOG_ERROR, "task '%s' (created at %s:%d) resumed while %s: refused (a "
              "step or done callback ran twice)", t->name, t->site ? t->site->file : "?",
              t->site ? t->site->line : 0, t->state == URIO__TASK_RUNNING ? "running" : "done");
}
#endif

static void task_attrib_release(const void *obj)
{
    urio_future_unref(((const urio__task_t *)obj)->self);
}

static void switch_in(urio__task_t *t)
{
    urio_loop_t *loop = t->loop;
    urio__tasks_t *ts = t->tasks;
#if URIO_DEBUG_CHECKS
    if (URIO_UNLIKELY(t->state == URIO__TASK_RUNNING || t->state == URIO__TASK_DONE)) {
        resumed_wrongly(t);
        return;
    }
#endif
    urio__tls_task = t;
    /*
     * Whichever callback resumed it, the step is the task's: reports name the
     * task.  A report comes after the step, maybe its last: hold t for it.
     */
    if (URIO_UNLIKELY(loop->timing)) {
        urio_future_ref(t->self);
        urio__loop_attribute(loop, task_describe_short, t, task_attrib_release);
    } else {
        urio__loop_attribute(loop, task_describe_short, t, NULL);
    }
    ts->thread = urio__thread_token();
    t->state = URIO__TASK_RUNNING;
    t->resumed_pc = t->await_pc;
    t->await_pc = NULL;
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
    if (t->cancels > 0) {
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
    unlink_task(&ts->list, t);
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
    if (t->ret == 0) {
        urio__future_settle(f, 0, t->result, NULL);
    } else if (t->ret == -ECANCELED && t->cancels > 0) {
        urio__future_cancel_now(f, t->cancel_msg);     /* the message goes with it */
        t->cancel_msg = NULL;
    } else {
        /* A positive return is a mistake for its negative: urio_task_fail says so. */
        int err = t->ret < 0 ? t->ret : -t->ret;
        urio__future_set_origin(f, t->err_site, t->err_stack);
        t->err_stack = NULL;
        urio__future_settle(f, err, NULL, t->errmsg);
        t->errmsg = NULL;
        if (err != -ECANCELED) {
            /* On the failed list until its last unref: see urio__tasks_t. */
            urio__tasks_t *ts = t->tasks;
            atomic_fetch_add(&ts->refs, 1);
            pthread_mutex_lock(&ts->failed_mu);
            t->prev = NULL;
            t->next = ts->failed;
            if (ts->failed)
                ts->failed->prev = t;
            ts->failed = t;
            atomic_store(&t->failed_listed, true);
            pthread_mutex_unlock(&ts->failed_mu);
        }
    }
    urio__proxy_task_ended(t);
    urio_future_unref(f);           /* the loop's reference, held while it ran */
}

URIO_EXPORT urio_future_t *urio_task_create_opts(urio_loop_t *loop, urio_coro_t *coro,
                                                 const urio_task_opts_t *opts)
{
    if (coro == NULL || !urio__coro_check(coro, "urio_task_create")) {
        errno = EINVAL;     /* a coroutine already taken stays with whoever took it */
        return NULL;
    }
    int err = 0;
    urio__tasks_t *ts = NULL;
    if (loop == NULL)
        loop = urio_loop_current();     /* asyncio.create_task: the running loop */
    if (loop == NULL)
        err = EINVAL;
    else if (!urio__loop_check_thread(loop, "urio_task_create"))
        err = EPERM;
    else if (urio__loop_refuse_inherited(loop, "urio_task_create"))
        err = -URIO_EFORKED;        /* it would never run, nor be freed: the loop is the parent's */
    else if (urio__loop_refuses(loop, "urio_task_create"))
        err = ESHUTDOWN;
    else if ((ts = urio__tasks_get(loop)) == NULL)
        err = ENOMEM;
    if (err) {
        urio__coro_discard(coro);   /* it owns coro, also on failure */
        errno = err;
        return NULL;
    }
    urio_future_t *f = urio__future_new_kind(loop, sizeof(urio__task_t), &task_ops);
    if (f == NULL) {
        urio__coro_discard(coro);
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
        urio__coro_discard(coro);
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
        urio__coro_discard(coro);
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
        t->cancels = 1;     /* urio_run is cancelling everything: this too */
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

static bool task_cancel(urio_future_t *f, char *msg)
{
    urio__task_t *t = urio__task_of(f);
    if (t->state == URIO__TASK_DONE) {
        urio__free(msg);
        return false;
    }
    if (msg != NULL) {
        urio__free(t->cancel_msg);  /* the latest request's message wins, as in asyncio */
        t->cancel_msg = msg;
    }
    if (t->cancels++ > 0)
        return true;                /* already requested: counted (urio_task_cancelling) */
    if (t->state != URIO__TASK_SUSPENDED || t->shield != 0)
        return true;                /* delivered at its next await */
    if (t->awaiting != NULL) {
        /* Blocked in an await: cancel what it waits on; its completion resumes the task. */
        urio__future_cancel_take(t->awaiting, t->cancel_msg ? urio__strdup(t->cancel_msg) : NULL);
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

/*
 * t is about to await f: if f is a task that awaits (through a chain of
 * tasks awaiting tasks) t itself, nobody could ever finish.  Returns: the
 * task of the chain that awaits t directly, or NULL when there is no cycle.
 */
static urio__task_t *await_cycle(const urio__task_t *t, urio_future_t *f)
{
    for (unsigned hops = 0; f != NULL && urio_future_is_task(f) && hops < 100000; hops++) {
        urio__task_t *g = urio__task_of(f);
        if (g->awaiting == t->self)
            return g;
        f = g->awaiting;
    }
    return NULL;
}

/* A cycle of awaits: t gets -EDEADLK now, and so does the task x that awaits t. */
__attribute__((cold, noinline)) static int break_cycle(urio__task_t *t, urio__task_t *x)
{
    urio__log(URIO_LOG_ERROR, "urio_await(): task '%s' would await task '%s', which awaits "
              "it (a cycle: neither could finish); both awaits fail with EDEADLK", t->name,
              x->name);
    /*
     * x's wake-up step first: if there is no memory for it, x keeps waiting
     * on t (and wakes when t ends), which is still no cycle once t fails.
     */
    if (schedule_step(x) == 0) {
        urio_future_remove_done_callback(t->self, await_done, x);
        x->wake_err = -EDEADLK;
        x->awaiting = NULL;         /* a cancel of x before its step must not reach t */
    }
    return -EDEADLK;
}

URIO_EXPORT int urio_await(urio_future_t *f, void **result)
{
    urio__task_t *t = urio__task_running();
    URIO__NOTE_AWAIT(t);
    if (t == NULL) {
        urio__log(URIO_LOG_ERROR, "urio_await(): called outside a task");
        return -EPERM;
    }
    if (f == NULL || urio_future_loop(f) != t->loop)
        return -EINVAL;
    if (f == t->self)
        return -EDEADLK;
    if (urio__task_cancel_pending(t)) {
        /*
         * A task with a cancel pending that awaits something cancels it, as
         * asyncio does (bpo-34872): otherwise a child awaited after the cancel
         * would be left running, and reported pending at close.
         */
        if (!urio_future_done(f))
            urio__future_cancel_take(f, t->cancel_msg ? urio__strdup(t->cancel_msg) : NULL);
        return -ECANCELED;
    }
    if (!urio_future_done(f)) {
        urio__task_t *x = await_cycle(t, f);
        if (URIO_UNLIKELY(x != NULL))
            return break_cycle(t, x);
        int ret = urio_future_add_done_callback(f, await_done, t);
        if (ret < 0)
            return ret;
        t->awaiting = urio_future_ref(f);
        t->state = URIO__TASK_SUSPENDED;
        switch_out(t, false);
        t->awaiting = NULL;
        urio_future_unref(f);
        if (URIO_UNLIKELY(t->wake_err != 0)) {
            ret = t->wake_err;      /* woken by another task's await that closed a cycle */
            t->wake_err = 0;
            return ret;
        }
    }
    /* A cancel that came while it waited wins, as asyncio's does at the next step. */
    if (urio__task_cancel_pending(t))
        return -ECANCELED;
    return urio_future_result(f, result);
}

URIO_EXPORT int urio_await_coro(urio_coro_t *coro, void **result)
{
    urio__task_t *t = urio__task_running();
    if (coro == NULL || !urio__coro_check(coro, "urio_await_coro"))
        return -EINVAL;
    if (t == NULL) {
        urio__coro_discard(coro);
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

/* What urio_task_fail records; a task's own state until it ends. */
__attribute__((noinline)) static int task_fail(const urio_site_t *site, int err, const char *fmt,
                                              va_list ap)
{
    err = urio__error_code(err, "urio_task_fail");
    urio__task_t *t = urio__task_running();
    if (t == NULL)
        return err;
    if (fmt != NULL) {
        urio__free(t->errmsg);
        t->errmsg = urio__vasprintf(fmt, ap);   /* NULL on ENOMEM: the error without text */
    }
    t->err_site = site;
#if URIO_DEBUG_CHECKS
    if (t->loop->debug) {
        urio__backtrace_t *bt = urio__malloc(sizeof *bt);
        if (bt)
            urio__backtrace_capture(bt, 2, false);     /* from the caller of urio_task_fail */
        urio__free(t->err_stack);
        t->err_stack = bt;
    }
#endif
    URIO_NO_TAILCALL();
    return err;
}

URIO_EXPORT int urio_task_fail_site(const urio_site_t *site, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    err = task_fail(site, err, fmt, ap);
    URIO_NO_TAILCALL();     /* the stack capture counts this frame */
    va_end(ap);
    return err;
}

#undef urio_task_fail
URIO_EXPORT int urio_task_fail(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    err = task_fail(NULL, err, fmt, ap);
    URIO_NO_TAILCALL();     /* the stack capture counts this frame */
    va_end(ap);
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
    URIO__NOTE_AWAIT(t);
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
    URIO__NOTE_AWAIT(t);
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
    URIO__NOTE_AWAIT(t);
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

URIO_EXPORT unsigned urio_task_cancelling(const urio_future_t *task)
{
    if (!urio_future_is_task(task) ||
        !urio__loop_check_thread(urio_future_loop(task), "urio_task_cancelling"))
        return 0;
    return urio__task_of((urio_future_t *)task)->cancels;
}

URIO_EXPORT unsigned urio_task_uncancel(urio_future_t *task)
{
    if (!urio_future_is_task(task) || !urio__loop_check_thread(urio_future_loop(task),
                                                                 "urio_task_uncancel"))
        return 0;
    urio__task_t *t = urio__task_of(task);
    if (t->cancels > 0 && --t->cancels == 0) {
        urio__free(t->cancel_msg);
        t->cancel_msg = NULL;
    }
    return t->cancels;
}

URIO_EXPORT const char *urio_task_cancel_message(const urio_future_t *task)
{
    if (!urio_future_is_task(task) ||
        !urio__loop_check_thread(urio_future_loop(task), "urio_task_cancel_message"))
        return NULL;
    return urio__task_of((urio_future_t *)task)->cancel_msg;
}

URIO_EXPORT size_t urio_all_tasks(urio_loop_t *loop, urio_future_t **tasks, size_t cap)
{
    if (loop == NULL || !urio__loop_check_thread(loop, "urio_all_tasks"))
        return 0;
    urio__tasks_t *ts = urio__tasks_find(loop);
    if (ts == NULL)
        return 0;
    size_t k = 0;
    for (urio__task_t *t = ts->list; t != NULL; t = t->next, k++)
        if (tasks != NULL && k < cap)
            tasks[k] = urio_future_ref(t->self);
    return k;
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
static void tasks_unref(urio__tasks_t *ts)
{
    if (atomic_fetch_sub_explicit(&ts->refs, 1, memory_order_acq_rel) != 1)
        return;
    pthread_mutex_destroy(&ts->failed_mu);
    urio__free(ts);
}

/*
 * At close: tasks that failed and whose error nobody read are reported now,
 * "Task exception was never retrieved", whether or not the program still
 * holds them (a dropped urio_spawn result is the usual case).
 */
static void report_failed(urio__tasks_t *ts)
{
    urio__task_t *mine = NULL;
    pthread_mutex_lock(&ts->failed_mu);
    for (urio__task_t *t = ts->failed, *next; t != NULL; t = next) {
        next = t->next;
        /* One being freed on another thread right now is its finalizer's to report. */
        if (!urio__future_tryref(t->self))
            continue;
        if (!atomic_exchange(&t->failed_listed, false)) {
            urio_future_unref(t->self);     /* cannot be the last: its finalizer has not run */
            continue;
        }
        unlink_task(&ts->failed, t);
        t->next = mine;
        mine = t;
    }
    pthread_mutex_unlock(&ts->failed_mu);
    while (mine != NULL) {
        urio__task_t *t = mine;
        mine = t->next;
        t->next = t->prev = NULL;
        urio__future_report_unretrieved(t->self);
        urio_future_unref(t->self);
        tasks_unref(ts);            /* the list's */
    }
}

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
        urio__future_cancel_now(t->self, NULL);     /* waiters on other threads are released */
        urio__proxy_task_ended(t);
        urio_future_unref(t->self);         /* the loop's reference */
    }
    report_failed(ts);
    urio__stack_pool_free(&ts->stacks);
    urio__coro_quarantine_free(ts);
    tasks_unref(ts);            /* the loop's */
}

static void tasks_stats(const urio_loop_t *loop, void *state, urio_loop_stats_t *st)
{
    (void)loop;
    st->tasks = ((urio__tasks_t *)state)->n;
}

static const urio__subsystem_t tasks_subsystem = {
    .name = "tasks",
    .may_run = tasks_may_run,
    .stats = tasks_stats,
    .release = tasks_release,
};

urio__tasks_t *urio__tasks_find(const urio_loop_t *loop)
{
    return urio__loop_state(loop, &tasks_subsystem);
}

/* For urio__backtrace_capture: the creation stack of the task running on this thread. */
static const urio__backtrace_t *running_task_stack(void)
{
    urio__task_t *t = urio__tls_task;
    return t ? urio__future_stack(t->self) : NULL;
}

urio__tasks_t *urio__tasks_get(urio_loop_t *loop)
{
    urio__tasks_t *ts = urio__loop_state(loop, &tasks_subsystem);
    if (URIO_LIKELY(ts != NULL))
        return ts;
    ts = urio__calloc(1, sizeof *ts);
    if (ts == NULL)
        return NULL;
    atomic_init(&ts->refs, 1);
    ts->loop = loop;
    urio__dump_signal_setup();
    pthread_mutex_init(&ts->failed_mu, NULL);
    if (urio__loop_register(loop, &tasks_subsystem, ts) < 0) {
        pthread_mutex_destroy(&ts->failed_mu);
        urio__free(ts);
        return NULL;
    }
    return ts;
}
