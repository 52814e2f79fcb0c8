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

/* The benchmark's second build of the library: debug mode's machinery out (bench/debug.c). */
#ifdef URIO_FORCE_NO_DEBUG_CHECKS
#undef URIO_DEBUG_CHECKS
#define URIO_DEBUG_CHECKS 0
#endif

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
 * URIO_ASSERT(cond): an invariant a comment states.  In debug and
 * debugoptimized builds (URIO_ASSERTS) a false one logs CRITICAL with where
 * and aborts: corruption stops where it starts.  Compiled out in release
 * builds (the condition is not evaluated).
 */
#if URIO_ASSERTS
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
/*
 * A block kept on purpose after its owner let go (debug mode's quarantine
 * of freed loops and executors, to report a use after free): forget counts
 * it as freed in urio_mem_stats; free_forgotten releases it for good.
 */
void  urio__forget(void *p);
void  urio__free_forgotten(void *p);
/* Frees p later (a bounded quarantine, debug mode's: see alloc.c); forgotten at once. */
void  urio__quarantine(void *p);
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
 * n bytes (a multiple of URIO__HUGE_PAGE) aligned to URIO__HUGE_PAGE and
 * advised for transparent huge pages (MADV_HUGEPAGE): for tables read at
 * random, where a TLB miss per access is what costs.  Freed with
 * urio__free.  Returns: the block, or NULL.
 */
#define URIO__HUGE_PAGE (2u << 20)
void *urio__huge_alloc(size_t n);

/*
 * Failure injection for tests: after `countdown` more successful
 * allocations, allocations fail; once (persistent false) or until reset
 * (persistent true).  countdown < 0 turns injection off.
 */
void urio__alloc_fail_after(long countdown, bool persistent);

/*
 * Coverage builds only (-Db_coverage=true, ./dev coverage): writes this
 * process's gcov counters now.  gcov writes them at exit(); a urio process
 * that ends otherwise — a pool's worker or fork server by _exit(), a task's
 * stack overflow by death from SIGSEGV, a broken invariant by abort() —
 * would lose the counts of all it ran.
 * Called just before such an end; nothing in any other build.
 */
#if URIO_COVERAGE
void __gcov_dump(void);
#define URIO_COVERAGE_FLUSH() __gcov_dump()
#else
#define URIO_COVERAGE_FLUSH() ((void)0)
#endif

/* ------------------------------------------------------------------ */
/* log.c                                                                */

void urio__vlog(int level, const char *fmt, va_list ap);
#define urio__log urio_log
/* Tests: forget the level, so URIO_LOG_LEVEL is read again at the next message. */
void urio__log_level_reread(void);
/* True if a message at `level` would reach a handler (skip costly formatting). */
bool urio__log_enabled(int level);

/*
 * An error code given to a public call that wants a negative errno: a
 * positive one (EIO for -EIO) is taken as its negative, with a WARNING
 * naming fn; 0 and negatives pass unchanged.
 */
int urio__error_code(int err, const char *fn);

/* ------------------------------------------------------------------ */
/* fork.c: process-wide locks in a child of fork()                      */

/*
 * Registers a process-wide lock (from a constructor of the file that owns
 * it): in every child of fork() the lock is usable again.  after_fork (if
 * not NULL) then runs in the child; held is true when another thread of the
 * parent held the lock at the fork: the lock was made anew, and what it
 * guards may be half-updated, so after_fork must leave that in a safe empty
 * state, leaking rather than freeing what was there.  It runs in an atfork
 * child handler: no lock, no allocation, no log line.
 */
void urio__fork_lock_add(const char *name, pthread_mutex_t *mu, void (*after_fork)(bool held));
/* Test hook: the i-th registered lock and its name, or NULL past the last. */
pthread_mutex_t *urio__test_fork_lock(unsigned i, const char **name);

/* ------------------------------------------------------------------ */
/* debug.c: the debug switches, and stacks for reports                  */

/*
 * Debug mode asked for by the environment or the build, for a new loop (or a
 * coroutine made outside any loop): URIO_DEBUG (1/true/yes/on or
 * 0/false/no/off; anything else is ignored with a WARNING), parsed here and
 * nowhere else, else a debug build.
 */
bool urio__debug_default(void);
/* A boolean switch's value: 1 (1/true/yes/on), 0 (0/false/no/off), -1 unset or empty, -2 not understood. */
int urio__parse_bool(const char *v);

#define URIO__BACKTRACE_DEPTH 32

typedef struct urio__backtrace {
    void *frames[URIO__BACKTRACE_DEPTH + 2];
    int n;
} urio__backtrace_t;

/*
 * Captures the caller's stack, skipping `skip` frames above the caller (0:
 * from the caller).  With chain, in a task, the task's own creation stack
 * follows (the hook below), so a creation stack reaches main(); an error's
 * stack is the task's own frames only, as in a Python traceback.
 */
void urio__backtrace_capture(urio__backtrace_t *bt, int skip, bool chain);
/*
 * A suspended stack for urio__backtrace_unwind: the registers it resumes
 * with, by DWARF number (the architecture's: lib/arch/switch.h fills them
 * from a saved context), and the memory the unwinder may read, [lo, hi).
 */
typedef struct urio__unwind_regs {
    uintptr_t pc;                /* where it resumes: a return address */
    int n;
    struct { unsigned regno; uint64_t value; } reg[16];
    uintptr_t lo, hi;
} urio__unwind_regs_t;

/*
 * Unwinds a suspended stack (not the caller's) from its registers, with
 * the call frame information of the process's modules (libdw); memory is
 * read through process_vm_readv, so a corrupt stack ends the walk, never
 * the process.  Returns: the frames found (bt->n); -ENOTSUP without libdw,
 * -ENOMEM, -EIO when libdw cannot start.  Thread: any; slow (a libdw
 * session per call): for dumps, not hot paths.
 */
int urio__backtrace_unwind(urio__backtrace_t *bt, const urio__unwind_regs_t *regs);
/* Set on this thread while urio__backtrace_capture unwinds (the stall handler's check). */
#include <signal.h>
extern _Thread_local volatile sig_atomic_t urio__tls_unwinding;
/* The task layer's: the creation stack of the task running on this thread, or NULL. */
extern const urio__backtrace_t *(*urio__backtrace_parent)(void);
/*
 * Formats a stack "most recent call last", one frame a line in Python's
 * traceback style, under `header`; symbolised to function, file and line
 * with libdw where built in, else with dladdr's symbol names.
 * Returns: a urio__malloc'd string, or NULL on ENOMEM.
 */
char *urio__backtrace_format(const urio__backtrace_t *bt, const char *header);
/* The same, ending with the frame of site when the stack lacks it (a tail call). */
char *urio__backtrace_format_site(const urio__backtrace_t *bt, const urio_site_t *site,
                                  const char *header);
/*
 * Formats one frame from a site under header, as backtrace_format does
 * ("  File "bug.c", line 7, in bug" and the source line when the file is
 * there).  Returns: a urio__malloc'd string, or NULL on ENOMEM.
 */
char *urio__site_format(const urio_site_t *site, const char *header);
/* The source line at a site, stripped, into buf ("" if its file cannot be read). */
const char *urio__site_source(const urio_site_t *site, char *buf, size_t n);
/*
 * Describes a callback for reports: "name() at file.c:42" from its site, or
 * the symbol of fn's address when it has no site.  Writes into buf.
 */
const char *urio__describe_callback(void (*fn)(void), const urio_site_t *site,
                                    char *buf, size_t n);
/* "fn() at file.c:42" for a code address (a return address less one), into buf. */
const char *urio__describe_pc(uintptr_t pc, char *buf, size_t n);

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
 * A cheap timestamp, for timing every callback in debug mode: the CPU's
 * cycle counter where the kernel's clock itself uses a constant one (the
 * TSC on x86-64, the virtual counter on AArch64), else the clock.
 * urio__ticks_ns converts a difference to nanoseconds with the factor
 * urio__ticks_calibrate measured (once per process; call it before timing).
 */
extern uint64_t urio__ticks_mult;        /* ns = ticks * mult >> 32; 0: ticks are ns */
void urio__ticks_calibrate(void);

static inline uint64_t urio__ticks(void)
{
#if defined(__x86_64__)
    if (URIO_LIKELY(urio__ticks_mult != 0))
        return __builtin_ia32_rdtsc();
#elif defined(__aarch64__)
    if (URIO_LIKELY(urio__ticks_mult != 0)) {
        uint64_t v;
        __asm__ volatile("mrs %0, cntvct_el0" : "=r"(v));
        return v;
    }
#endif
    return urio__now();
}

static inline uint64_t urio__ticks_ns(uint64_t ticks)
{
    if (urio__ticks_mult == 0)
        return ticks;
    __extension__ typedef unsigned __int128 u128;
    return (uint64_t)(((u128)ticks * urio__ticks_mult) >> 32);
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
