/*
 * combine.c — futures made of other futures: a gathering future (asyncio's
 * gather as a future: usable outside a task, cancellable) and a shield
 * (asyncio's shield(f): cancelling the outer future leaves the inner alone).
 *
 * Each child's done callback holds a reference on the combined future, so
 * nothing points at memory that may go away: the combined future lives
 * until the last callback has run, whoever dropped it meanwhile.
 */
#include "future.h"

#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Gathering                                                            */

typedef struct gathering {
    urio_future_t **fs;          /* the children, with a reference each */
    size_t n;
    size_t left;                 /* children not done yet */
    bool return_exceptions;
    bool cancelling;             /* the gathering future was cancelled */
    bool abandoned;              /* urio_gather_new failed: its queued callbacks do nothing */
    int err;                     /* the first failure, in completion order */
    size_t failed;               /* its index */
    char *errmsg;
    char *cancel_msg;
} gathering_t;

static void gathering_finalize(urio_future_t *f)
{
    gathering_t *g = urio__future_ext(f);
    for (size_t i = 0; i < g->n; i++)
        urio_future_unref(g->fs[i]);
    urio__free(g->fs);
    urio__free(g->errmsg);
    urio__free(g->cancel_msg);
}

static void cancel_children(gathering_t *g, const char *msg)
{
    for (size_t i = 0; i < g->n; i++)
        if (!urio_future_done(g->fs[i]))
            urio__future_cancel_take(g->fs[i], msg ? urio__strdup(msg) : NULL);
}

/* Cancelling the gathering future cancels its children; it ends when they have. */
static bool gathering_cancel(urio_future_t *f, char *msg)
{
    gathering_t *g = urio__future_ext(f);
    if (g->cancelling) {
        urio__free(msg);
        return true;
    }
    g->cancelling = true;
    g->cancel_msg = msg;
    cancel_children(g, msg);
    return true;
}

static void gathering_describe(const urio_future_t *f, char *buf, size_t n)
{
    const gathering_t *g = urio__future_ext((urio_future_t *)f);
    snprintf(buf, n, "<Future %s (gathering %zu, %zu left)>", urio__future_state_name(f), g->n,
             g->left);
}

static const urio__future_ops_t gathering_ops = {
    .kind = "Future",
    .sealed = true,
    .cancel = gathering_cancel,
    .describe = gathering_describe,
    .finalize = gathering_finalize,
};

static void gathering_child_done(urio_future_t *child, void *arg)
{
    urio_future_t *f = arg;
    gathering_t *g = urio__future_ext(f);
    if (URIO_UNLIKELY(g->abandoned)) {
        urio_future_unref(f);   /* the children are the caller's again: not looked at */
        return;
    }
    g->left--;
    int ret = urio_future_result(child, NULL);
    if (ret != 0 && g->err == 0 && !g->cancelling && !g->return_exceptions) {
        /* The first failure (a child's cancel counts as one): the rest are cancelled. */
        g->err = ret;
        for (size_t i = 0; i < g->n; i++)
            if (g->fs[i] == child)
                g->failed = i;
        const char *msg = urio_future_error_message(child);
        g->errmsg = msg ? urio__strdup(msg) : NULL;
        cancel_children(g, NULL);
    }
    if (g->left == 0 && !urio_future_done(f)) {
        if (g->cancelling) {
            char *msg = g->cancel_msg;
            g->cancel_msg = NULL;
            urio__future_cancel_now(f, msg);
        } else {
            urio__future_settle(f, g->err, NULL, g->errmsg);
            g->errmsg = NULL;
        }
    }
    urio_future_unref(f);       /* this callback's reference */
}

size_t urio__gathering_failed(urio_future_t *f)
{
    return ((gathering_t *)urio__future_ext(f))->failed;
}

URIO_EXPORT int urio_gather_new(urio_future_t **out, urio_loop_t *loop,
                                urio_future_t *const *fs, size_t n,
                                const urio_gather_opts_t *opts)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (loop == NULL || (n > 0 && fs == NULL))
        return -EINVAL;
    if (!urio__loop_check_thread(loop, "urio_gather_new"))
        return -EPERM;
    if (urio__loop_refuses(loop, "urio_gather_new"))
        return -ESHUTDOWN;
    for (size_t i = 0; i < n; i++)
        if (fs[i] == NULL || urio_future_loop(fs[i]) != loop)
            return -EINVAL;
    urio_future_t *f = urio__future_new_kind(loop, sizeof(gathering_t), &gathering_ops);
    if (f == NULL)
        return -ENOMEM;
    gathering_t *g = urio__future_ext(f);
    g->return_exceptions = opts && opts->return_exceptions;
    g->fs = urio__calloc(n ? n : 1, sizeof *g->fs);
    if (g->fs == NULL) {
        urio_future_unref(f);
        return -ENOMEM;
    }
    urio__future_capture_stack(f, 1);
    for (size_t i = 0; i < n; i++) {
        urio_future_ref(f);     /* the callback's */
        int ret = urio_future_add_done_callback(fs[i], gathering_child_done, f);
        if (ret < 0) {
            urio_future_unref(f);
            /* A done child's callback may be queued already: it must not act. */
            g->abandoned = true;
            for (size_t k = 0; k < g->n; k++)
                if (urio_future_remove_done_callback(fs[k], gathering_child_done, f) > 0)
                    urio_future_unref(f);
            urio_future_unref(f);
            return ret;
        }
        g->fs[g->n++] = urio_future_ref(fs[i]);
        g->left++;
    }
    if (n == 0)
        urio__future_settle(f, 0, NULL, NULL);  /* asyncio: gather() of nothing is done at once */
    *out = f;
    URIO_NO_TAILCALL();
    return 0;
}

/* ------------------------------------------------------------------ */
/* Shielding one future                                                 */

static void shield_inner_done(urio_future_t *inner, void *arg)
{
    urio_future_t *outer = arg;
    void *value = NULL;
    int ret = urio_future_result(inner, &value);    /* marks an error retrieved, as asyncio does */
    if (!urio_future_done(outer)) {
        const char *msg = urio_future_error_message(inner);
        urio__future_settle(outer, ret, value, msg ? urio__strdup(msg) : NULL);
    }
    urio_future_unref(outer);   /* the callback's reference */
}

URIO_EXPORT int urio_shield_new(urio_future_t **out, urio_future_t *inner)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (inner == NULL)
        return -EINVAL;
    urio_loop_t *loop = urio_future_loop(inner);
    if (!urio__loop_check_thread(loop, "urio_shield_new"))
        return -EPERM;
    if (urio__loop_refuses(loop, "urio_shield_new"))
        return -ESHUTDOWN;
    urio_future_t *outer = urio__future_new_kind(loop, 0, NULL);
    if (outer == NULL)
        return -ENOMEM;
    urio_future_ref(outer);
    int ret = urio_future_add_done_callback(inner, shield_inner_done, outer);
    if (ret < 0) {
        urio_future_unref(outer);
        urio_future_unref(outer);
        return ret;
    }
    urio__future_capture_stack(outer, 1);
    *out = outer;
    return 0;
}
