/*
 * coro.c — coroutine objects (URIO_CORO) and the never-awaited check: each
 * sits on its loop's list (or, made outside any loop, a global one checked
 * at exit) until it is started, handed over or closed.
 */
#include "task.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Coroutine objects and the never-awaited check                        */

/*
 * Coroutines made outside any loop: checked at exit.  Guarded by g_coros_mu.
 * The generation changes when a child of fork() finds the list held by
 * another thread of the parent, half-linked: the child starts an empty list,
 * and leaves the coroutines of the old one unlinked (and unreported).
 */
static pthread_mutex_t g_coros_mu = PTHREAD_MUTEX_INITIALIZER;
static struct urio_coro *g_coros;
static unsigned g_coros_gen;         /* guarded by g_coros_mu */

static void coros_after_fork(bool held)
{
    if (!held)
        return;
    g_coros = NULL;
    g_coros_gen++;
}

__attribute__((constructor)) static void coros_fork_lock(void)
{
    urio__fork_lock_add("coroutines", &g_coros_mu, coros_after_fork);
}

static struct urio_coro **list_of(urio_coro_t *c)
{
    return c->tasks ? &c->tasks->coros : &g_coros;
}

static void coro_link(urio_coro_t *c)
{
    if (c->tasks == NULL)
        pthread_mutex_lock(&g_coros_mu);
    struct urio_coro **head = list_of(c);
    c->prev = NULL;
    c->next = *head;
    if (*head)
        (*head)->prev = c;
    *head = c;
    c->listed = true;
    if (c->tasks == NULL) {
        c->list_gen = g_coros_gen;
        pthread_mutex_unlock(&g_coros_mu);
    }
}

static void coro_unlink(urio_coro_t *c)
{
    if (!c->listed)
        return;             /* handed over already */
    c->listed = false;
    if (c->tasks == NULL)
        pthread_mutex_lock(&g_coros_mu);
    if (c->tasks != NULL || c->list_gen == g_coros_gen) {
        if (c->prev)
            c->prev->next = c->next;
        else
            *list_of(c) = c->next;
        if (c->next)
            c->next->prev = c->prev;
    }
    c->next = c->prev = NULL;
    if (c->tasks == NULL)
        pthread_mutex_unlock(&g_coros_mu);
}

URIO_EXPORT urio_coro_t *urio_coro_create(urio_coro_fn fn, void *arg, const urio_site_t *site)
{
    if (fn == NULL) {
        errno = EINVAL;
        return NULL;
    }
    urio_coro_t *c = urio__calloc(1, sizeof *c);
    if (c == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    c->state = URIO__CORO_NEW;
    c->fn = fn;
    c->arg = arg;
    c->site = site;
    urio_loop_t *loop = urio_loop_current();
    c->debug = loop != NULL ? loop->debug : urio__debug_default();
    if (loop != NULL) {
        /* Made in a running loop: it belongs to that loop, checked at its close. */
        c->tasks = urio__tasks_get(loop);
        if (c->tasks == NULL) {
            urio__free(c);
            errno = ENOMEM;
            return NULL;
        }
    }
#if URIO_DEBUG_CHECKS
    if (c->debug) {
        c->stack = urio__malloc(sizeof *c->stack);
        if (c->stack)
            urio__backtrace_capture(c->stack, 1, true);
    }
#endif
    coro_link(c);
    return c;
}

static void really_free(urio_coro_t *c)
{
    urio__free(c->stack);
    urio__free(c);
}

/*
 * Debug mode keeps the coroutines its loop's tasks ran a while, poisoned,
 * so that handing one over again (a coroutine awaited twice) is reported
 * instead of being a silent use of freed memory.  A bounded ring per loop
 * (the oldest goes for good), freed when the loop closes.
 */
#define QUARANTINE 256

void urio__coro_free(urio_coro_t *c)
{
    urio_loop_t *loop = c->debug ? urio_loop_current() : NULL;
    urio__tasks_t *ts = loop ? urio__tasks_find(loop) : NULL;
    if (ts != NULL && ts->quarantine == NULL)
        ts->quarantine = urio__calloc(QUARANTINE, sizeof *ts->quarantine);
    if (ts == NULL || ts->quarantine == NULL) {
        really_free(c);
        return;
    }
    c->state = URIO__CORO_DEAD;
    c->fn = NULL;
    urio_coro_t *old = ts->quarantine[ts->quarantine_next];
    ts->quarantine[ts->quarantine_next] = c;
    ts->quarantine_next = (ts->quarantine_next + 1) % QUARANTINE;
    if (old)
        really_free(old);
}

void urio__coro_quarantine_free(urio__tasks_t *ts)
{
    for (unsigned i = 0; ts->quarantine && i < QUARANTINE; i++)
        if (ts->quarantine[i])
            really_free(ts->quarantine[i]);
    urio__free(ts->quarantine);
    ts->quarantine = NULL;
}

bool urio__coro_check(const urio_coro_t *c, const char *fn)
{
    if (URIO_LIKELY(c->state == URIO__CORO_NEW))
        return true;
    if (c->state == URIO__CORO_HANDED || c->state == URIO__CORO_DEAD)
        urio__log(URIO_LOG_ERROR, "%s(): cannot reuse already awaited coroutine '%s' (created "
                  "at %s:%d)", fn, urio__coro_name(c), c->site ? c->site->file : "?",
                  c->site ? c->site->line : 0);
    else
        urio__log(URIO_LOG_ERROR, "%s(): not a coroutine (freed, or never made by "
                  "URIO_CORO)", fn);
    return false;
}

/* The coroutine is started (or handed over): no longer a candidate for the warning. */
void urio__coro_claim(urio_coro_t *c)
{
    coro_unlink(c);
    c->state = URIO__CORO_HANDED;
}

void urio__coro_discard(urio_coro_t *c)
{
    coro_unlink(c);
    urio__coro_free(c);
}

URIO_EXPORT void urio_coro_close(urio_coro_t *c)
{
    if (c == NULL || !urio__coro_check(c, "urio_coro_close"))
        return;
    urio__coro_discard(c);
}

const char *urio__coro_name(const urio_coro_t *c)
{
    return c->site && c->site->name ? c->site->name : "?";
}

/* "file.c:42: RuntimeWarning: coroutine 'fn' was never awaited" (+ the stack). */
static void report_never_awaited(urio_coro_t *c)
{
    char *tb = c->stack ? urio__backtrace_format(c->stack, "Coroutine created at (most recent call last)")
                        : NULL;
    char src[256];
    urio__site_source(c->site, src, sizeof src);    /* Python prints the line, indented */
    urio__log(URIO_LOG_WARNING, "%s:%d: RuntimeWarning: coroutine '%s' was never awaited%s%s%s%s",
              c->site ? c->site->file : "?", c->site ? c->site->line : 0, urio__coro_name(c),
              src[0] ? "\n  " : "", src, tb ? "\n" : "",
              tb ? tb : (c->debug ? "" : "\nEnable debug mode (URIO_DEBUG=1) to get where it "
                                         "was created"));
    urio__free(tb);
}

__attribute__((destructor)) static void check_coros_at_exit(void)
{
    pthread_mutex_lock(&g_coros_mu);
    urio_coro_t *c = g_coros;
    g_coros = NULL;
    pthread_mutex_unlock(&g_coros_mu);
    while (c) {
        urio_coro_t *next = c->next;
        report_never_awaited(c);
        really_free(c);
        c = next;
    }
}

void urio__coros_close(urio__tasks_t *ts)
{
    /* Coroutines made in this loop and never started. */
    while (ts->coros) {
        urio_coro_t *c = ts->coros;
        coro_unlink(c);
        report_never_awaited(c);
        urio__coro_free(c);
    }
}
