/*
 * lib/executor.h — what every executor is (executor.c dispatches the
 * public calls common to all of them): a table of operations first in the
 * executor's own struct.
 */
#ifndef URIO_EXECUTOR_INTERNAL_H
#define URIO_EXECUTOR_INTERNAL_H

#include "future.h"

typedef struct urio__executor_ops {
    const char *kind;                            /* "thread pool": in messages */
    /* Python's Executor.shutdown; see urio_executor_shutdown. */
    int  (*shutdown)(urio_executor_t *ex, bool wait, bool cancel_futures);
    /* Shuts down (waiting) and drops the owner's reference. */
    void (*free)(urio_executor_t *ex);
} urio__executor_ops_t;

struct urio_executor {
    const urio__executor_ops_t *ops;     /* the freed table once urio_executor_free ran */
    /* Debug mode: on the list of executors never shut down (executor.c), with where made. */
    struct urio_executor *live_next, *live_prev;
    bool live;
    unsigned live_gen;           /* the list's generation it joined (a child of fork() may start anew) */
    urio__backtrace_t *created;
};

/*
 * Debug mode's resource warning for executors: a new executor is tracked
 * (with where it was made) until it is shut down; those still running at
 * exit are reported.  track: at creation (it looks at debug mode itself);
 * shut: at shutdown and at free.
 */
void urio__executor_track(urio_executor_t *ex);
void urio__executor_shut(urio_executor_t *ex);

/* True (and an ERROR naming fn) if the program's handle was freed already. */
bool urio__executor_freed(const urio_executor_t *ex, const char *fn);
/*
 * The executor's memory goes (its last reference): freed, or, in debug mode
 * for one the program freed, kept poisoned a while (executor.c).
 */
void urio__executor_release(urio_executor_t *ex);

#endif
