/*
 * fork.c — urio's process-wide locks, made usable again in a child of fork().
 *
 * fork() copies the calling thread only, and every lock as the parent's other
 * threads left it: a lock one of them held is held for ever in the child,
 * whose first log line, report or coroutine would wait on it.  Each file with
 * a process-wide lock registers it here, from a constructor.  In the child,
 * one atfork handler looks at each: a lock it can take was free at the fork,
 * so what it guards is whole (the lock is released again); one it cannot take
 * was held mid-update, so it is made anew and the file's hook puts what it
 * guards in an empty state, leaking what was there (it may be half-made, and
 * its memory may be in use by the parent's copy of the holder).
 */
#include "common.h"

#define MAX_LOCKS 16

/* Filled by constructors, before main and before any thread of urio's: no lock. */
static struct {
    const char *name;
    pthread_mutex_t *mu;
    void (*after_fork)(bool held);
} g_locks[MAX_LOCKS];
static unsigned g_nlocks;

/* In the child, which has one thread: the parent's other threads are gone. */
static void fork_child(void)
{
    for (unsigned i = 0; i < g_nlocks; i++) {
        bool held = pthread_mutex_trylock(g_locks[i].mu) != 0;
        if (held)
            pthread_mutex_init(g_locks[i].mu, NULL);
        else
            pthread_mutex_unlock(g_locks[i].mu);
        if (g_locks[i].after_fork)
            g_locks[i].after_fork(held);
    }
}

void urio__fork_lock_add(const char *name, pthread_mutex_t *mu, void (*after_fork)(bool held))
{
    if (g_nlocks == 0)
        pthread_atfork(NULL, NULL, fork_child);
    URIO_ASSERT(g_nlocks < MAX_LOCKS);
    if (g_nlocks == MAX_LOCKS)
        return;
    g_locks[g_nlocks].name = name;
    g_locks[g_nlocks].mu = mu;
    g_locks[g_nlocks].after_fork = after_fork;
    g_nlocks++;
}

pthread_mutex_t *urio__test_fork_lock(unsigned i, const char **name)
{
    if (i >= g_nlocks)
        return NULL;
    *name = g_locks[i].name;
    return g_locks[i].mu;
}
