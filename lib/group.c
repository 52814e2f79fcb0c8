/*
 * group.c — waiting for several: urio_gather, and task groups (structured
 * concurrency: children cannot outlive their group).
 */
#include "task.h"

#include <stdio.h>

/* ------------------------------------------------------------------ */
/* Gathering, and task groups                                           */

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

typedef struct gather {
    urio_future_t *any;          /* completed when a child fails, or all are done */
    size_t left;
    int err;
    size_t failed;
    urio_future_t *const *fs;
    size_t n;
} gather_t;

static void gather_child_done(urio_future_t *f, void *arg)
{
    gather_t *g = arg;
    g->left--;
    int ret = urio_future_result(f, NULL);
    if (ret != 0 && g->err == 0) {
        g->err = ret;
        for (size_t i = 0; i < g->n; i++)
            if (g->fs[i] == f)
                g->failed = i;
    }
    if ((ret != 0 || g->left == 0) && !urio_future_done(g->any))
        urio_future_set_result(g->any, NULL);
}

URIO_EXPORT int urio_gather(urio_future_t *const *fs, size_t n, void **results, size_t *failed)
{
    urio__task_t *t = urio__task_running();
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
    gather_t g = { .left = n, .fs = fs, .n = n };
    int err = urio_future_new(&g.any, t->loop);
    if (err < 0)
        return err;
    size_t registered = 0;
    int ret = 0;
    for (; registered < n; registered++) {
        ret = urio_future_add_done_callback(fs[registered], gather_child_done, &g);
        if (ret < 0)
            break;
    }
    if (ret == 0 && n > 0)
        ret = urio_await(g.any, NULL);
    /* A failure, a cancel, or an error registering: cancel the rest, let them finish. */
    if (ret != 0 || g.err != 0) {
        for (size_t i = 0; i < n; i++)
            urio_future_cancel(fs[i]);
    }
    for (size_t i = registered; i < n; i++)
        g.left--;               /* never registered: not counted */
    await_all_done(fs, n);
    /* A child that ended just now may have its callback (which uses g) still queued. */
    while (g.left > 0)
        urio_yield();
    urio_future_unref(g.any);
    if (ret == -ECANCELED && urio__task_cancel_pending(t))
        return -ECANCELED;
    if (ret < 0 && g.err == 0)
        return ret;
    if (g.err != 0) {
        if (failed)
            *failed = g.failed;
        return g.err;
    }
    for (size_t i = 0; results && i < n; i++)
        urio_future_result(fs[i], &results[i]);
    return 0;
}

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
    if (g == NULL || coro == NULL) {
        urio_coro_close(coro);
        errno = EINVAL;
        return NULL;
    }
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 8;
        urio_future_t **c = urio__realloc(g->children, cap * sizeof *c);
        if (c == NULL) {
            urio_coro_close(coro);
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

