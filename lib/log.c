/*
 * log.c — the `urio` logger.
 *
 * The level is one atomic; the handler is a (fn, ud) pair read under a mutex
 * and called outside it, so a handler may log (or change the handler)
 * without deadlocking.  The default handler formats the whole line first and
 * writes it with one write(2), so lines from several threads never mix.
 */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static atomic_int g_level = -1;      /* -1: not read from the environment yet */
static pthread_mutex_t g_handler_mu = PTHREAD_MUTEX_INITIALIZER;
static urio_log_handler_fn g_handler; /* guarded by g_handler_mu; NULL: default */
static void *g_handler_ud;            /* guarded by g_handler_mu */

/* A child of fork() keeps the handler; only the lock is made anew if it was held (fork.c). */
__attribute__((constructor)) static void log_fork_lock(void)
{
    urio__fork_lock_add("log handler", &g_handler_mu, NULL);
}

/* A level's name or number; -1 for text that is neither. */
static int parse_level(const char *s)
{
    static const struct { const char *name; int level; } names[] = {
        { "debug", URIO_LOG_DEBUG }, { "info", URIO_LOG_INFO },
        { "warning", URIO_LOG_WARNING }, { "warn", URIO_LOG_WARNING },
        { "error", URIO_LOG_ERROR }, { "critical", URIO_LOG_CRITICAL },
    };
    if (s == NULL || *s == '\0')
        return URIO_LOG_INFO;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(s, names[i].name) == 0)
            return names[i].level;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end == '\0' && v >= 0 && v <= 100)
        return (int)v;
    return -1;
}

static int current_level(void)
{
    int l = atomic_load_explicit(&g_level, memory_order_relaxed);
    if (URIO_LIKELY(l >= 0))
        return l;
    const char *v = getenv("URIO_LOG_LEVEL");
    int env = parse_level(v);
    int expected = -1;
    /* A concurrent urio_log_set_level wins over the environment. */
    atomic_compare_exchange_strong(&g_level, &expected, env < 0 ? URIO_LOG_INFO : env);
    if (env < 0 && expected == -1)  /* this call read it: say once that it is not understood */
        urio_log(URIO_LOG_WARNING, "URIO_LOG_LEVEL=%s is not understood (use debug, info, "
                 "warning, error, critical or a number): the level is INFO", v);
    return atomic_load(&g_level);
}

void urio__log_level_reread(void)
{
    atomic_store(&g_level, -1);
}

URIO_EXPORT void urio_log_set_level(int level)
{
    atomic_store(&g_level, level < 0 ? 0 : level);
}

URIO_EXPORT int urio_log_get_level(void)
{
    return current_level();
}

URIO_EXPORT void urio_log_set_handler(urio_log_handler_fn fn, void *ud)
{
    pthread_mutex_lock(&g_handler_mu);
    g_handler = fn;
    g_handler_ud = fn ? ud : NULL;
    pthread_mutex_unlock(&g_handler_mu);
}

URIO_EXPORT const char *urio_log_level_name(int level)
{
    static _Thread_local char other[24];
    switch (level) {
    case URIO_LOG_DEBUG: return "DEBUG";
    case URIO_LOG_INFO: return "INFO";
    case URIO_LOG_WARNING: return "WARNING";
    case URIO_LOG_ERROR: return "ERROR";
    case URIO_LOG_CRITICAL: return "CRITICAL";
    default:
        /* Python's logging names an unnamed level the same way. */
        snprintf(other, sizeof other, "Level %d", level);
        return other;
    }
}

bool urio__log_enabled(int level)
{
    return level >= current_level();
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

/* "2026-11-24 21:30:48.123 WARNING urio: <message>\n" in one write. */
static void default_handler(int level, const char *message)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    char head[64];
    int hn = snprintf(head, sizeof head, "%04d-%02d-%02d %02d:%02d:%02d.%03ld %s urio: ",
                      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                      tm.tm_sec, ts.tv_nsec / 1000000, urio_log_level_name(level));
    size_t mn = strlen(message);
    char stackbuf[1024];
    size_t total = (size_t)hn + mn + 1;
    char *line = total <= sizeof stackbuf ? stackbuf : malloc(total);
    if (line == NULL) {
        /* Out of memory: still say it, in two writes. */
        write_all(STDERR_FILENO, head, (size_t)hn);
        write_all(STDERR_FILENO, message, mn);
        write_all(STDERR_FILENO, "\n", 1);
        return;
    }
    memcpy(line, head, (size_t)hn);
    memcpy(line + hn, message, mn);
    line[total - 1] = '\n';
    write_all(STDERR_FILENO, line, total);
    if (line != stackbuf)
        free(line);
}

void urio__vlog(int level, const char *fmt, va_list ap)
{
    if (level < current_level())
        return;
    char buf[512];
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(buf, sizeof buf, fmt, ap2);
    va_end(ap2);
    char *msg = buf;
    if (n < 0)
        return;
    /* The logger must work when memory is short: plain malloc, not the counted hook. */
    if ((size_t)n >= sizeof buf) {
        msg = malloc((size_t)n + 1);
        if (msg)
            vsnprintf(msg, (size_t)n + 1, fmt, ap);
        else
            msg = buf;       /* truncated, but said */
    }
    /* One trailing newline is the handler's business, not the message's. */
    size_t len = strlen(msg);
    if (len > 0 && msg[len - 1] == '\n')
        msg[len - 1] = '\0';

    pthread_mutex_lock(&g_handler_mu);
    urio_log_handler_fn fn = g_handler;
    void *ud = g_handler_ud;
    pthread_mutex_unlock(&g_handler_mu);
    if (fn)
        fn(level, msg, ud);
    else
        default_handler(level, msg);
    if (msg != buf)
        free(msg);
}

URIO_EXPORT void urio_log(int level, const char *fmt, ...)
{
    if (fmt == NULL) {
        urio_log(URIO_LOG_ERROR, "urio_log(): called with a NULL format (level %d): nothing "
                 "to log", level);
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    urio__vlog(level, fmt, ap);
    va_end(ap);
}
