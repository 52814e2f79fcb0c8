/*
 * lib/task.h — what task.c, stack.c, coro.c, group.c and run.c share.
 *
 * A task is a future of the "Task" kind (future.c) whose extension is a
 * struct urio__task.  Loop thread only, unless a comment says otherwise.
 */
#ifndef URIO_TASK_INTERNAL_H
#define URIO_TASK_INTERNAL_H

#include "internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define URIO_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define URIO_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define URIO_TSAN_FIBERS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define URIO_TSAN_FIBERS 1
#endif
#endif

#ifdef URIO_ASAN
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old,
                                     size_t *size_old);
#endif
#ifdef URIO_TSAN_FIBERS
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
#endif
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define URIO_VALGRIND 1
#endif
#endif


/* stack.c: a task's stack, mmap'd with a guard page below. */
typedef struct task_stack {
    struct task_stack *next;     /* in the pool */
    void *map;                   /* the mapping: guard page, then the stack */
    size_t map_size;
    void *base;                  /* the usable stack's lowest address */
    size_t size;
    unsigned valgrind_id;
} task_stack_t;

task_stack_t *urio__stack_get(urio_loop_t *loop, size_t size);
void urio__stack_put(urio_loop_t *loop, task_stack_t *st);
void urio__stack_free(task_stack_t *st);
void urio__stack_pool_free(urio_loop_t *loop);
/* stack.c, debug mode: the overflow report's handler, and this thread's alternate stack. */
void urio__overflow_handler_on(void);
void urio__overflow_reporting_on(void);

/* coro.c: a coroutine object. */
struct urio_coro {
    urio_coro_fn fn;
    void *arg;
    const urio_site_t *site;
    urio_loop_t *loop;           /* the loop it was made in (its list), or NULL (the global list) */
    struct urio_coro *next, *prev;
    bool listed;                 /* on its list: a never-awaited candidate */
    urio__stack_t *stack;        /* debug mode: where it was made */
};

void urio__coro_claim(urio_coro_t *c);
void urio__coro_free(urio_coro_t *c);
const char *urio__coro_name(const urio_coro_t *c);
/* coro.c, at close: reports and frees the loop's never-awaited coroutines. */
void urio__coros_close(urio_loop_t *loop);

/* task.c: tasks. */
enum { T_NEW, T_RUNNING, T_SUSPENDED, T_DONE };

typedef struct urio__task {
    urio_future_t *self;         /* the task's future (this is its extension) */
    urio_loop_t *loop;
    urio_coro_t *coro;           /* owned until the task ends */
    const urio_site_t *site;     /* the coroutine's: names the task */
    const char *name;
    char *name_owned;
    urio__ctx_t ctx;             /* the task, while suspended */
    task_stack_t *stack;
    urio_future_t *awaiting;     /* the future it is blocked on, with a reference */
    urio_handle_t sleep_timer;   /* in urio_sleep: the timer that resumes it */
    urio_future_t *proxy;        /* run_coroutine_threadsafe's future mirroring it, or NULL */
    struct urio__task *next, *prev;   /* the loop's live tasks */
    uint8_t state;
    bool cancel_requested;
    uint32_t shield;             /* urio_shield_begin depth */
    int ret;                     /* what the function returned */
    void *result;
    char *errmsg;                /* urio_task_fail's message */
    /* Sanitizer bookkeeping, per switch. */
    void *asan_fake;
    const void *loop_stack_bottom;
    size_t loop_stack_size;
    void *tsan_fiber;
} urio__task_t;

static inline urio__task_t *urio__task_of(urio_future_t *f)
{
    return urio__future_ext(f);
}

/* The task running on this thread, or NULL. */
static inline urio__task_t *urio__task_running(void)
{
    urio_loop_t *loop = urio_loop_current();
    return loop ? loop->current_task : NULL;
}

/* True if a cancel must interrupt the task's awaits now (requested, not shielded). */
static inline bool urio__task_cancel_pending(const urio__task_t *t)
{
    return t->cancel_requested && t->shield == 0;
}

/* run.c: at close, cancels the run_coroutine_threadsafe future mirroring t. */
void urio__proxy_settle_at_close(urio__task_t *t);

#endif
