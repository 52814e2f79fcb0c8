/*
 * lib/common.h — what every file of lib/ uses: the build's configuration,
 * branch hints, container_of, debug-build assertions, which sanitizer or
 * tool the build is under, the allocation hook, the logger's internals,
 * stack capture for reports, the clock and the thread token.
 *
 * Everything here is hidden (-fvisibility=hidden): tests and the bench link
 * the static archive and may use it, users never see it.
 */
#ifndef URIO_COMMON_H
#define URIO_COMMON_H

#include "urio_config.h"
#include "urio.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <time.h>

#define URIO_LIKELY(x)   __builtin_expect(!!(x), 1)
#define URIO_UNLIKELY(x) __builtin_expect(!!(x), 0)

/*
 * Placed after a call, keeps it from becoming a tail call: stack captures
 * count frames above their caller, and a tail call removes one.
 */
#define URIO_NO_TAILCALL() __asm__ volatile("" ::: "memory")

/* The struct of type `type` whose member `member` is at `ptr`. */
#define urio__container_of(ptr, type, member)                                      \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/*
 * URIO_ASSERT(cond): an invariant a comment states.  With debug checks
 * compiled in (-Ddebug_checks, on in debug and debugoptimized builds) a
 * false one logs CRITICAL with where and aborts: corruption stops where it
 * starts.  Compiled out otherwise (the condition is not evaluated).
 */
#if URIO_DEBUG_CHECKS
__attribute__((noreturn, cold)) void urio__assert_failed(const char *cond, const char *file,
                                                         int line, const char *fn);
#define URIO_ASSERT(cond)                                                          \
    (URIO_LIKELY(cond) ? (void)0 : urio__assert_failed(#cond, __FILE__, __LINE__, __func__))
#else
#define URIO_ASSERT(cond) ((void)0)
#endif

/* ------------------------------------------------------------------ */
/* The build's sanitizers and tools, detected once                      */

#if defined(__SANITIZE_ADDRESS__)
#define URIO_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define URIO_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define URIO_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define URIO_TSAN 1
#endif
#endif
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#define URIO_VALGRIND 1
#endif
#endif

/* ------------------------------------------------------------------ */
/* alloc.c: the one allocation hook                                     */

void *urio__malloc(size_t n);
void *urio__calloc(size_t n, size_t size);
void *urio__realloc(void *p, size_t n);
void  urio__free(void *p);
char *urio__strdup(const char *s);
char *urio__vasprintf(const char *fmt, va_list ap);
char *urio__asprintf(const char *fmt, ...) URIO_PRINTF(1, 2);
/*
 * n bytes of fresh zeroed pages (mmap), for memory that lives as long as the
 * process (the cross-thread node pool): never freed, so not counted as live
 * blocks.  Failure injection applies.  No lock, no malloc: usable from a
 * signal handler.  Returns: the pages, or NULL.
 */
void *urio__pages_alloc(size_t n);

/*
 * Failure injection for tests: after `countdown` more successful
 * allocations, allocations fail; once (persistent false) or until reset
 * (persistent true).  countdown < 0 turns injection off.
 */
void urio__alloc_fail_after(long countdown, bool persistent);

/* ------------------------------------------------------------------ */
/* log.c                                                                */

void urio__vlog(int level, const char *fmt, va_list ap);
#define urio__log urio_log
/* True if a message at `level` would reach a handler (skip costly formatting). */
bool urio__log_enabled(int level);

/* ------------------------------------------------------------------ */
/* debug.c: the debug switches, and stacks for reports                  */

/*
 * Debug mode asked for by the environment or the build, for a new loop (or a
 * coroutine made outside any loop): URIO_DEBUG, parsed once per call here and
 * nowhere else, or a debug build.
 */
bool urio__debug_default(void);

#define URIO__BACKTRACE_DEPTH 10

typedef struct urio__backtrace {
    void *frames[URIO__BACKTRACE_DEPTH + 2];
    int n;
} urio__backtrace_t;

/* Captures the caller's stack, skipping `skip` frames above the caller (0: from the caller). */
void urio__backtrace_capture(urio__backtrace_t *bt, int skip);
/*
 * Formats a stack "most recent call last", one frame a line in Python's
 * traceback style, under `header`; symbolised to function, file and line
 * with libdw where built in, else with dladdr's symbol names.
 * Returns: a urio__malloc'd string, or NULL on ENOMEM.
 */
char *urio__backtrace_format(const urio__backtrace_t *bt, const char *header);
/*
 * Describes a callback for reports: "name() at file.c:42" from its site, or
 * the symbol of fn's address when it has no site.  Writes into buf.
 */
const char *urio__describe_callback(void (*fn)(void), const urio_site_t *site,
                                    char *buf, size_t n);

/* ------------------------------------------------------------------ */
/* The clock and the calling thread                                     */

/* Reads the monotonic clock in nanoseconds. */
static inline uint64_t urio__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * A token unique to the calling thread: the address of a thread-local.
 * initial-exec: one instruction, no __tls_get_addr, on the hot paths that
 * check the caller's thread.
 */
extern _Thread_local char urio__tls_token __attribute__((tls_model("initial-exec")));
static inline const void *urio__thread_token(void)
{
    return &urio__tls_token;
}

#endif
