/*
 * group.c — waiting for several, in a task: urio_gather (awaiting a
 * gathering future), urio_wait and urio_as_completed (asyncio.wait and
 * as_completed), and task groups (structured concurrency: children cannot
 * outlive their group).
 */
#include "task.h"

#include <stdio.h>

/*
 * Waits, shielded, until every future of fs is done: used after a failure
 * or a cancel, so no child outlives the call that owns it.
 */
static void await_all_done(urio_future_t *const *fs, size_t n)
{
    urio_shield_begin();
    for (size_t i = 0; i < n; i++)
        if (fs[i] != NULL && !urio_future_done(fs[i]))
            urio_await(fs[i], NULL);
    urio_shield_end();
}

/* ------------------------------------------------------------------ */
/* gather: on a gathering future (combine.c), awaited                   */

URIO_EXPORT int urio_gather_opts(urio_future_t *const *fs, size_t n, void **results,
                                 const urio_gather_opts_t *opts)
{
    urio__task_t *t = urio__task_running();
    URIO__NOTE_AWAIT(t);
    if (t == NULL)
        return -EPERM;
    if (n > 0 && fs == NULL)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (fs[i] == NULL || urio_future_loop(fs[i]) != t->loop)
            return -EINVAL;
        if (fs[i] == t->self)
            return -EDEADLK;
    }
    urio_future_t *g;
    int ret = urio_gather_new(&g, t->loop, fs, n, opts);
    if (ret < 0)
        return ret;
    /*
     * The gathering future ends only once every child has: a failure, or
     * this task's cancel (which cancels g, so its children), still waits
     * for them all.  No child outlives the call.
     */
    ret = urio_await(g, NULL);
    if (!urio_future_done(g)) {
        /* The await was refused (a cancel pending at entry cancelled g): wait, shielded. */
        urio_shield_begin();
        urio_await(g, NULL);
        urio_shield_end();
    }
    bool cancelled_here = ret == -ECANCELED && urio__task_cancel_pending(t);
    if (ret != 0 && !cancelled_here && opts && opts->failed)
        *opts->failed = urio__gathering_failed(g);
    urio_future_unref(g);
    if (cancelled_here)
        return -ECANCELED;
    for (size_t i = 0; i < n; i++) {
        void *value = NULL;
        int err = urio_future_result(fs[i], &value);
        if (opts && opts->errors)
            opts->errors[i] = err;
        if (results && ret == 0)
            results[i] = err == 0 ? value : NULL;
    }
    return ret;
}

URIO_EXPORT int urio_gather(urio_future_t *const *fs, size_t n, void **results, size_t *failed)
{
    URIO__NOTE_AWAIT(urio__task_running());
    urio_gather_opts_t opts = { .failed = failed };
    return urio_gather_opts(fs, n, results, &opts);
}

/* ------------------------------------------------------------------ */
/* urio_wait and as_completed                                           */

/*
 * What a wait's callbacks share, on the heap: each registered callback
 * holds a reference, so a callback still queued after the wait returned
 * finds live memory.
 */
typedef struct waiter {
    uint32_t refs;               /* the waiting call's + one per callback not yet run */
    urio_future_t *signal;       /* completed when the condition holds (or NULL: nobody waits) */
    int when;                    /* URIO_FIRST_COMPLETED, ... */
    size_t done, n;
    bool failed;                 /* a future ended with an error (not a cancel) */
    /* as_completed: the futures in completion order */
    urio_future_t **order;
    size_t head, tail;
} waiter_t;

static void waiter_unref(waiter_t *w)
{
    if (--w->refs > 0)
        return;
    if (w->signal)
        urio_future_unref(w->signal);
    urio__free(w->order);
    urio__free(w);
}

static bool wait_satisfied(const waiter_t *w)
{
    switch (w->when) {
    case URIO_FIRST_COMPLETED:
        return w->done > 0;
    case URIO_FIRST_EXCEPTION:
        return w->failed || w->done == w->n;
    default:
        return w->done == w->n;
    }
}

static void waiter_child_done(urio_future_t *f, void *arg)
{
    waiter_t *w = arg;
    w->done++;
    int ret = urio_future_result(f, NULL);
    if (ret != 0 && ret != -ECANCELED)
        w->failed = true;
    if (w->order != NULL)
        w->order[w->tail++] = f;
    if (w->signal != NULL && !urio_future_done(w->signal) && wait_satisfied(w))
        urio_future_set_result(w->signal, NULL);
    waiter_unref(w);
}

/* Registers w's callback on each of fs.  Returns: 0 or the error (nothing left registered). */
static int waiter_register(waiter_t *w, urio_future_t *const *fs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        w->refs++;
        int ret = urio_future_add_done_callback(fs[i], waiter_child_done, w);
        if (ret < 0) {
            w->refs--;
            for (size_t k = 0; k < i; k++)
                if (urio_future_remove_done_callback(fs[k], waiter_child_done, w) > 0)
                    w->refs--;
            return ret;
        }
    }
    return 0;
}

/* Takes back the callbacks not scheduled yet (the futures still pending). */
static void waiter_unregister(waiter_t *w, urio_future_t *const *fs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (urio_future_remove_done_callback(fs[i], waiter_child_done, w) > 0)
            w->refs--;
}

static int check_futures(const urio__task_t *t, urio_future_t *const *fs, size_t n)
{
    if (n == 0 || fs == NULL)
        return -EINVAL;         /* asyncio: "Set of Tasks/Futures is empty." */
    for (size_t i = 0; i < n; i++) {
        if (fs[i] == NULL || urio_future_loop(fs[i]) != t->loop)
            return -EINVAL;
        if (fs[i] == t->self)
            return -EDEADLK;
    }
    return 0;
}

URIO_EXPORT int urio_wait(urio_future_t *const *fs, size_t n, int when, int64_t timeout_ns,
                          bool *done)
{
    urio__task_t *t = urio__task_running();
    URIO__NOTE_AWAIT(t);
    if (t == NULL)
        return -EPERM;
    int ret = check_futures(t, fs, n);
    if (ret < 0)
        return ret;
    if ((when != URIO_FIRST_COMPLETED && when != URIO_FIRST_EXCEPTION &&
         when != URIO_ALL_COMPLETED) || timeout_ns < -1)
        return -EINVAL;
    waiter_t *w = urio__calloc(1, sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    w->refs = 1;
    w->when = when;
    w->n = n;
    /* What is done already counts now: the wait may not need to suspend at all. */
    for (size_t i = 0; i < n; i++) {
        if (urio_future_done(fs[i])) {
            w->done++;
            int r = urio_future_result(fs[i], NULL);
            w->failed |= r != 0 && r != -ECANCELED;
        }
    }
    ret = 0;
    if (!wait_satisfied(w) && timeout_ns != 0) {
        size_t pending = 0;
        urio_future_t **pf = urio__malloc(n * sizeof *pf);
        ret = pf ? urio_future_new(&w->signal, t->loop) : -ENOMEM;
        for (size_t i = 0; ret == 0 && i < n; i++)
            if (!urio_future_done(fs[i]))
                pf[pending++] = fs[i];
        if (ret == 0)
            ret = waiter_register(w, pf, pending);
        if (ret == 0) {
            ret = timeout_ns < 0 ? urio_await(w->signal, NULL)
                                 : urio_wait_for(w->signal, (uint64_t)timeout_ns, NULL);
            if (ret == -ETIMEDOUT)
                ret = 0;            /* asyncio.wait: a timeout just ends the wait */
            waiter_unregister(w, pf, pending);
        }
        urio__free(pf);
    }
    waiter_unref(w);
    if (ret < 0)
        return ret;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool d = urio_future_done(fs[i]);
        k += d;
        if (done)
            done[i] = d;
    }
    return (int)(k > INT32_MAX ? INT32_MAX : k);
}

struct urio_as_completed {
    urio_loop_t *loop;
    waiter_t *w;
    urio_future_t **fs;          /* the futures, with a reference each */
    size_t n, returned;
    uint64_t deadline;           /* UINT64_MAX: none */
};

URIO_EXPORT int urio_as_completed_new(urio_as_completed_t **out, urio_future_t *const *fs,
                                      size_t n, int64_t timeout_ns)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (n == 0 || fs == NULL || fs[0] == NULL || timeout_ns < -1)
        return -EINVAL;
    urio_loop_t *loop = urio_future_loop(fs[0]);
    if (!urio__loop_check_thread(loop, "urio_as_completed_new"))
        return -EPERM;
    for (size_t i = 0; i < n; i++)
        if (fs[i] == NULL || urio_future_loop(fs[i]) != loop)
            return -EINVAL;
    urio_as_completed_t *it = urio__calloc(1, sizeof *it);
    waiter_t *w = urio__calloc(1, sizeof *w);
    urio_future_t **own = urio__malloc(n * sizeof *own);
    urio_future_t **order = urio__malloc(n * sizeof *order);
    if (it == NULL || w == NULL || own == NULL || order == NULL) {
        urio__free(it);
        urio__free(w);
        urio__free(own);
        urio__free(order);
        return -ENOMEM;
    }
    w->refs = 1;
    w->when = URIO_FIRST_COMPLETED;
    w->n = n;
    w->order = order;
    int ret = waiter_register(w, fs, n);
    if (ret < 0) {
        waiter_unref(w);
        urio__free(own);
        urio__free(it);
        return ret;
    }
    for (size_t i = 0; i < n; i++)
        own[i] = urio_future_ref(fs[i]);
    it->loop = loop;
    it->w = w;
    it->fs = own;
    it->n = n;
    it->deadline = timeout_ns < 0 ? UINT64_MAX : urio_loop_time(loop) + (uint64_t)timeout_ns;
    *out = it;
    return 0;
}

URIO_EXPORT int urio_as_completed_next(urio_as_completed_t *it, urio_future_t **next)
{
    urio__task_t *t = urio__task_running();
    URIO__NOTE_AWAIT(t);
    if (it == NULL || next == NULL)
        return -EINVAL;
    *next = NULL;
    if (t == NULL || t->loop != it->loop)
        return -EPERM;
    waiter_t *w = it->w;
    if (it->returned == it->n)
        return 0;
    if (w->head == w->tail) {
        uint64_t now = urio_loop_time(it->loop);
        if (now >= it->deadline)
            return -ETIMEDOUT;
        int ret = urio_future_new(&w->signal, it->loop);
        if (ret < 0)
            return ret;
        ret = it->deadline == UINT64_MAX ? urio_await(w->signal, NULL)
                                         : urio_wait_for(w->signal, it->deadline - now, NULL);
        urio_future_unref(w->signal);
        w->signal = NULL;
        if (w->head == w->tail)
            return ret < 0 ? ret : -ETIMEDOUT;
    }
    *next = w->order[w->head++];
    it->returned++;
    return 1;
}

URIO_EXPORT void urio_as_completed_free(urio_as_completed_t *it)
{
    if (it == NULL)
        return;
    waiter_unregister(it->w, it->fs, it->n);
    waiter_unref(it->w);
    for (size_t i = 0; i < it->n; i++)
        urio_future_unref(it->fs[i]);
    urio__free(it->fs);
    urio__free(it);
}

/* ------------------------------------------------------------------ */
/* Task groups                                                          */

struct urio_task_group {
    uint32_t refs;               /* the owner's + one per child whose callback has not run */
    bool waiting;
    bool freed;                  /* the owner called urio_task_group_free */
    urio_loop_t *loop;
    urio_future_t **children;
    size_t n, cap;
    size_t running;
    urio_future_t *changed;      /* completed when a child ends while someone waits */
    int err;
    char *errmsg;
};

URIO_EXPORT int urio_task_group_new(urio_task_group_t **out)
{
    urio__task_t *t = urio__task_running();
    if (out == NULL)
        return -EINVAL;
    if (t == NULL)
        return -EPERM;
    urio_task_group_t *g = urio__calloc(1, sizeof *g);
    if (g == NULL)
        return -ENOMEM;
    g->refs = 1;
    g->loop = t->loop;
    *out = g;
    return 0;
}

static void group_unref(urio_task_group_t *g)
{
    if (--g->refs > 0)
        return;
    for (size_t i = 0; i < g->n; i++)
        urio_future_unref(g->children[i]);
    urio__free(g->children);
    urio__free(g->errmsg);
    urio__free(g);
}

static void group_child_done(urio_future_t *f, void *arg)
{
    urio_task_group_t *g = arg;
    g->running--;
    if (g->refs == 1 && g->freed) {
        group_unref(g);     /* the owner let go: this was the last child */
        return;
    }
    int ret = urio_future_result(f, NULL);
    if (ret != 0 && ret != -ECANCELED && g->err == 0) {
        /* The first failure: say which child and why, then cancel the siblings. */
        urio__task_t *c = urio__task_of(f);
        const char *msg = urio_future_error_message(f);
        g->err = ret;
        g->errmsg = urio__asprintf("child '%s' (created at %s:%d) failed: %s (%s)%s%s", c->name,
                                   c->site ? c->site->file : "?", c->site ? c->site->line : 0,
                                   urio_strerror_name(ret), urio_strerror(ret), msg ? ": " : "",
                                   msg ? msg : "");
        for (size_t i = 0; i < g->n; i++)
            if (g->children[i] != f)
                urio_future_cancel(g->children[i]);
    }
    if (g->changed && !urio_future_done(g->changed))
        urio_future_set_result(g->changed, NULL);
    group_unref(g);         /* this child's callback has run */
}

URIO_EXPORT urio_future_t *urio_task_group_spawn(urio_task_group_t *g, urio_coro_t *coro)
{
    if (coro == NULL || !urio__coro_check(coro, "urio_task_group_spawn")) {
        errno = EINVAL;
        return NULL;
    }
    if (g == NULL) {
        urio__coro_discard(coro);
        errno = EINVAL;
        return NULL;
    }
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 8;
        urio_future_t **c = urio__realloc(g->children, cap * sizeof *c);
        if (c == NULL) {
            urio__coro_discard(coro);
            errno = ENOMEM;
            return NULL;
        }
        g->children = c;
        g->cap = cap;
    }
    urio_future_t *child = urio_task_create(g->loop, coro);
    if (child == NULL)
        return NULL;
    if (urio_future_add_done_callback(child, group_child_done, g) < 0) {
        urio_future_cancel(child);
        urio_future_unref(child);
        errno = ENOMEM;
        return NULL;
    }
    if (g->err != 0)
        urio_future_cancel(child);  /* the group is failing already */
    g->children[g->n++] = child;
    g->running++;
    g->refs++;              /* held by the child's done callback */
    return child;
}

URIO_EXPORT int urio_task_group_wait(urio_task_group_t *g)
{
    urio__task_t *t = urio__task_running();
    URIO__NOTE_AWAIT(t);
    if (g == NULL)
        return -EINVAL;
    if (t == NULL)
        return -EPERM;
    if (g->waiting)
        return -EBUSY;      /* one waiter at a time */
    g->waiting = true;
    int ret = 0;
    while (g->running > 0) {
        ret = urio_future_new(&g->changed, g->loop);
        if (ret < 0) {
            g->waiting = false;     /* the next wait may try again */
            return ret;
        }
        ret = urio_await(g->changed, NULL);
        urio_future_unref(g->changed);
        g->changed = NULL;
        if (ret == -ECANCELED) {
            /* The waiter is cancelled: so are the children, and it waits for them. */
            for (size_t i = 0; i < g->n; i++)
                urio_future_cancel(g->children[i]);
            await_all_done(g->children, g->n);
            while (g->running > 0)
                urio_yield();       /* the last callbacks, still queued, use g */
            g->waiting = false;
            return -ECANCELED;
        }
    }
    g->waiting = false;
    return g->err;
}

URIO_EXPORT const char *urio_task_group_error_message(const urio_task_group_t *g)
{
    return g ? g->errmsg : NULL;
}

URIO_EXPORT void urio_task_group_free(urio_task_group_t *g)
{
    if (g == NULL)
        return;
    if (g->running > 0) {
        /* Children cannot outlive their group: cancel them, and in a task wait for them. */
        for (size_t i = 0; i < g->n; i++)
            urio_future_cancel(g->children[i]);
        if (urio__task_running() != NULL) {
            await_all_done(g->children, g->n);
            while (g->running > 0)
                urio_yield();
        } else {
            urio__log(URIO_LOG_ERROR, "urio_task_group_free(): called outside a task with "
                      "%zu children running: they are cancelled, not awaited", g->running);
        }
    }
    /* Callbacks still queued hold the group: the last one frees it. */
    g->freed = true;
    group_unref(g);
}

