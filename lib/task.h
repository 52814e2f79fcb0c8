/*
 * lib/task.h — what task.c, stack.c, coro.c, group.c and run.c share.
 *
 * A task is a future of the "Task" kind (future.c) whose extension is a
 * struct urio__task.  The tasks of a loop, its coroutines and its stack
 * pool are the "tasks" subsystem's state on that loop (urio__tasks_t),
 * registered with the loop at its first coroutine or task.  Loop thread
 * only, unless a comment says otherwise.
 */
#ifndef URIO_TASK_INTERNAL_H
#define URIO_TASK_INTERNAL_H

#include "future.h"
#include "arch/switch.h"

#ifdef URIO_ASAN
void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old,
                                     size_t *size_old);
#endif
#ifdef URIO_TSAN
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
#endif
#ifdef URIO_VALGRIND
#include <valgrind/valgrind.h>
#endif

/* stack.c: a task's stack, mmap'd with a guard page below. */
typedef struct urio__task_stack {
    struct urio__task_stack *next;   /* in the pool */
    void *map;                   /* the mapping: guard page, then the stack */
    size_t map_size;
    void *base;                  /* the usable stack's lowest address */
    size_t size;
    unsigned valgrind_id;
} urio__task_stack_t;

typedef struct urio__stack_pool {
    urio__task_stack_t *free;
    uint32_t nfree;
} urio__stack_pool_t;

/*
 * A stack of at least `size` bytes (rounded up to pages), from the pool or
 * new.  Returns: the stack; NULL with *err -EINVAL (a size that cannot be
 * mapped) or -ENOMEM.
 */
urio__task_stack_t *urio__stack_get(urio__stack_pool_t *pool, size_t size, int *err);
void urio__stack_put(urio__stack_pool_t *pool, urio__task_stack_t *st);
void urio__stack_free(urio__task_stack_t *st);
void urio__stack_pool_free(urio__stack_pool_t *pool);
/* stack.c, debug mode: the overflow report's handler, and this thread's alternate stack. */
void urio__overflow_handler_on(void);
void urio__overflow_reporting_on(void);

/* The tasks subsystem's state on one loop. */
typedef struct urio__tasks {
    /*
     * 1 for the loop (dropped at close) + 1 per task on the failed list:
     * a task finalized on another thread after the close still finds the
     * list's lock.
     */
    atomic_uint refs;
    urio_loop_t *loop;
    urio__ctx_t task_return;             /* the loop's context while a task runs */
    const void *thread;                  /* the thread its tasks run (and are suspended) on */
    struct urio__task *list;             /* every task not finished */
    uint32_t n;
    urio_future_t *drained;              /* urio_run: completed when the last task ends */
    struct urio_coro *coros;             /* coroutines made here, not started nor closed */
    urio__stack_pool_t stacks;           /* task stacks kept for reuse */
    /*
     * Tasks that ended with an error, until their last reference goes: at
     * close, those whose error nobody read are reported even if the program
     * dropped its reference on the floor (urio_spawn's result ignored).
     * Guarded by failed_mu: a task's last unref may happen on any thread.
     */
    pthread_mutex_t failed_mu;
    struct urio__task *failed;
    struct urio_coro **quarantine;       /* debug mode: coroutines freed lately (coro.c) */
    unsigned quarantine_next;
    void *san_fiber;                     /* the loop's own fiber (TSan), or NULL */
} urio__tasks_t;

/* The loop's tasks state, registering the subsystem at first use.  NULL on ENOMEM. */
urio__tasks_t *urio__tasks_get(urio_loop_t *loop);
/* The loop's tasks state, or NULL if it never had a coroutine or task. */
urio__tasks_t *urio__tasks_find(const urio_loop_t *loop);

/* coro.c: a coroutine object. */
enum urio__coro_state {
    URIO__CORO_NEW = 0x636f726fu,    /* made, not handed to anything yet */
    URIO__CORO_HANDED,               /* given to a task, an await, or another thread's loop */
    URIO__CORO_DEAD,                 /* freed: debug mode keeps it a while to catch reuse */
};

struct urio_coro {
    uint32_t state;              /* enum urio__coro_state: anything else is not a coroutine */
    bool listed;                 /* on its list: a never-awaited candidate */
    bool debug;                  /* made in debug mode: quarantined when freed */
    urio_coro_fn fn;
    void *arg;
    const urio_site_t *site;
    urio__tasks_t *tasks;        /* its loop's list, or NULL (the global list) */
    struct urio_coro *next, *prev;
    unsigned list_gen;           /* on the global list: the list's generation it joined (coro.c) */
    urio__backtrace_t *stack;    /* debug mode: where it was made */
};

/*
 * A public call about to take c (fn: its name, for the message): true if c
 * is a coroutine nobody has taken yet.  Otherwise logs ERROR "fn(): cannot
 * reuse already awaited coroutine 'f' (created at file.c:42)" (asyncio's
 * words) and returns false: the caller must then leave c alone.
 */
bool urio__coro_check(const urio_coro_t *c, const char *fn);
/* Marks c handed over: no longer a never-awaited candidate, no longer takeable. */
void urio__coro_claim(urio_coro_t *c);
/* Frees c (urio's own paths: after it ran, or when a call that took it fails). */
void urio__coro_free(urio_coro_t *c);
/* Unlinks and frees a coroutine a call took but will not run (its failure path). */
void urio__coro_discard(urio_coro_t *c);
const char *urio__coro_name(const urio_coro_t *c);
/* coro.c, at close: reports and frees the loop's never-awaited coroutines. */
void urio__coros_close(urio__tasks_t *ts);
void urio__coro_quarantine_free(urio__tasks_t *ts);

/* task.c: tasks. */
enum urio__task_state {
    URIO__TASK_NEW,
    URIO__TASK_RUNNING,
    URIO__TASK_SUSPENDED,
    URIO__TASK_DONE,
};

typedef struct urio__task {
    urio_future_t *self;         /* the task's future (this is its extension) */
    urio_loop_t *loop;
    urio__tasks_t *tasks;        /* its loop's tasks state */
    urio_coro_t *coro;           /* owned until the task ends */
    const urio_site_t *site;     /* the coroutine's: names the task */
    const char *name;
    char *name_owned;
    urio__ctx_t ctx;             /* the task, while suspended */
    urio__task_stack_t *stack;
    urio_future_t *awaiting;     /* the future it is blocked on, with a reference */
    urio_handle_t sleep_timer;   /* in urio_sleep: the timer that resumes it */
    urio_future_t *proxy;        /* run_coroutine_threadsafe's future mirroring it, or NULL */
    urio__cancel_hook_fn park_cancel;   /* parked (urio__task_park): told of a cancel, once */
    void *park_arg;
    bool parked;                 /* parked, and room for its wake-up step is reserved */
    struct urio__task *next, *prev;   /* the loop's live tasks; then the failed list */
    atomic_bool failed_listed;   /* on its loop's failed list (whoever clears it unlinks) */
    uint8_t state;               /* enum urio__task_state */
    uint32_t cancels;            /* cancel requests not withdrawn by urio_task_uncancel */
    char *cancel_msg;            /* the latest request's message, or NULL */
    uint32_t shield;             /* urio_shield_begin depth */
    void *await_pc;              /* where the program awaits now (URIO__NOTE_AWAIT), or NULL */
    void *resumed_pc;            /* where the running step began (the await it returned from) */
    int ret;                     /* what the function returned */
    int wake_err;                /* set when woken from an await by something else (-EDEADLK) */
    void *result;
    char *errmsg;                /* urio_task_fail's message */
    const urio_site_t *err_site; /* where urio_task_fail was called */
    urio__backtrace_t *err_stack;   /* debug mode: the stack there */
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

/* The task running on this thread, or NULL.  Any thread (a thread-local). */
extern _Thread_local urio__task_t *urio__tls_task __attribute__((tls_model("initial-exec")));
static inline urio__task_t *urio__task_running(void)
{
    return urio__tls_task;
}

/*
 * In a public awaiting call: notes where the program called it (the first
 * such call of this suspension: urio's own inner awaits keep the outer
 * one), for reports of a slow step and for task dumps.
 */
#define URIO__NOTE_AWAIT(t)                                                        \
    do {                                                                           \
        if ((t) != NULL && (t)->await_pc == NULL)                                  \
            (t)->await_pc = __builtin_return_address(0);                           \
    } while (0)

/* True if a cancel must interrupt the task's awaits now (requested, not shielded). */
static inline bool urio__task_cancel_pending(const urio__task_t *t)
{
    return t->cancels > 0 && t->shield == 0;
}

/* dump.c: installs the URIO_DUMP_SIGNAL handler, once per process. */
void urio__dump_signal_setup(void);
/*
 * Parking: how the I/O layer waits for an op's final CQE or a stream's data
 * without a future.  First reserve room for the wake-up step (so unparking
 * cannot fail), then start the work, then park; if the work could not start,
 * give the room back instead.  A cancel of the task while it is parked (and
 * not shielded) calls on_cancel(arg) once: the hook asks the kernel to stop,
 * or unparks the task itself; either way the task stays parked until
 * urio__task_unpark.  A task still parked when its loop closes is destroyed
 * there, never resumed.  Loop thread only.
 */
int  urio__task_reserve_wake(urio__task_t *t);   /* 0 or -ENOMEM */
void urio__task_release_wake(urio__task_t *t);
void urio__task_park(urio__task_t *t, urio__cancel_hook_fn on_cancel, void *arg);
/* Schedules the parked task t's next step; harmless if t is not parked. */
void urio__task_unpark(urio__task_t *t);

/* run.c: the task ended (or is destroyed at close): settles the run_coroutine_threadsafe future. */
void urio__proxy_task_ended(urio__task_t *t);

#endif
