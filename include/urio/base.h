/*
 * urio/base.h — the export macro, error codes, creation sites and memory
 * statistics shared by every subsystem.
 */
#ifndef URIO_BASE_H
#define URIO_BASE_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(URIO_BUILDING) && defined(__GNUC__)
#define URIO_EXPORT __attribute__((visibility("default")))
#else
#define URIO_EXPORT
#endif

#if defined(__GNUC__)
#define URIO_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define URIO_PRINTF(fmt, args)
#endif

typedef struct urio_loop urio_loop_t;
typedef struct urio_future urio_future_t;

/*
 * Errors.  Calls that can fail return 0 (or a non-negative count) on
 * success and a negative errno value on failure, as liburing does.  urio's
 * own conditions, which no errno names, have the stable codes below.
 */
enum {
    URIO_ENOTDONE      = -10001, /* the future has no outcome yet */
    URIO_ENOURING      = -10002, /* io_uring is unavailable (disabled, seccomp, ENOSYS) */
    URIO_ESTOPPED      = -10003, /* the loop stopped before the future completed */
    URIO_EBROKENWORKER = -10004, /* a process-pool worker died while running the job */
    URIO_EFORKED       = -10005, /* the loop belongs to the parent process (inherited by fork) */
    URIO_ENOHOST       = -10006, /* no such host: the name does not resolve */
    URIO_ELIMIT        = -10007, /* read_until: no delimiter within the limit (data kept) */
    URIO_EINCOMPLETE   = -10008, /* EOF came before the bytes asked for (data kept) */
};

/*
 * The text of any error code: a negative errno value, a URIO_E* code, or 0.
 * Returns: a static string, never NULL ("Unknown error -123" style text for
 *          codes nobody defined is kept in a thread-local buffer).
 * Thread: any thread.
 */
URIO_EXPORT const char *urio_strerror(int err);

/*
 * The symbolic name of an error code: "ECANCELED", "URIO_ENOURING", "0".
 * Returns: a static string, or "E?" for an unknown code.
 * Thread: any thread.
 */
URIO_EXPORT const char *urio_strerror_name(int err);

/*
 * Where a callback or coroutine was handed to urio.  The scheduling macros
 * fill one in (static storage) so reports name the function and the line
 * even in a stripped binary.
 */
typedef struct urio_site {
    const char *name;   /* the callback as written at the call: "on_timer" */
    const char *file;   /* __FILE__ */
    int line;           /* __LINE__ */
} urio_site_t;

#if defined(__GNUC__) && !defined(URIO_NO_SITES)
#define URIO_SITE(fn)                                                            \
    (__extension__({                                                             \
        static const urio_site_t urio__site_ = { #fn, __FILE__, __LINE__ };      \
        &urio__site_;                                                            \
    }))
#else
#define URIO_SITE(fn) ((const urio_site_t *)0)
#endif

/*
 * The site of the call where the macro stands, named after the enclosing
 * function: error reports say where an error was set ("File "bug.c",
 * line 7, in bug"), as a Python traceback does.
 */
#if defined(__GNUC__) && !defined(URIO_NO_SITES)
#define URIO_HERE()                                                              \
    (__extension__({                                                             \
        static const urio_site_t urio__here_ = { __func__, __FILE__, __LINE__ }; \
        &urio__here_;                                                            \
    }))
#else
#define URIO_HERE() ((const urio_site_t *)0)
#endif

/* Durations in nanoseconds, urio's unit of time: urio_sleep(URIO_MS(10)). */
#define URIO_US(n)  ((uint64_t)(n) * 1000u)
#define URIO_MS(n)  ((uint64_t)(n) * 1000000u)
#define URIO_SEC(n) ((uint64_t)(n) * 1000000000u)

/* What urio's allocator hook has done since the process started. */
typedef struct urio_mem_stats {
    uint64_t allocs;      /* successful allocations (realloc of NULL counts) */
    uint64_t frees;       /* releases of a block */
    uint64_t live;        /* blocks allocated and not yet freed */
    uint64_t failures;    /* allocations that failed (and were reported as -ENOMEM) */
} urio_mem_stats_t;

/*
 * Fills *st with the counters of every allocation urio made for itself.
 * Thread: any thread (the counters are relaxed atomics: exact once quiet).
 */
URIO_EXPORT void urio_mem_stats(urio_mem_stats_t *st);

#ifdef __cplusplus
}
#endif
#endif
