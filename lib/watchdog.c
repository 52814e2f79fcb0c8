/*
 * watchdog.c — the stall watchdog: a thread that notices the loop stuck in
 * one turn (a callback or task step running on and on) and logs, while it
 * is still stuck, where the loop thread is: "loop stalled for 250 ms in:"
 * and the symbolised frames (Seastar's reactor stall detector).
 *
 * The loop pays nothing for it: its turn counter is a relaxed store it makes
 * anyway.  The watchdog looks every quarter of the threshold; a counter that
 * has not moved while the loop thread burned the threshold in CPU time (its
 * thread CPU clock, as Seastar's detector uses: a loop thread preempted on a
 * busy machine is not stalled) is a stall.  To
 * see the stack it sends the loop thread a signal whose handler only copies
 * the frames (backtrace, loaded beforehand) into a buffer; the watchdog
 * thread symbolises and logs them.  While the same stall goes on, the next
 * report comes at twice the time, then four times...
 *
 * The signal is SIGRTMAX - 7 (URIO_STALL_SIGNAL).  A program that handles it
 * itself keeps it: the report then says the stack could not be taken.
 */
#include "loop.h"

#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define URIO_STALL_SIGNAL (SIGRTMAX - 7)
#define FRAMES 48

typedef struct watchdog {
    urio_loop_t *loop;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;                   /* guarded by mu */
    uint64_t threshold_ns;       /* guarded by mu */
} watchdog_t;

/*
 * One stack request at a time, process-wide (the handler writes here).  A
 * watchdog is a loop's, so a child of fork() starts its own with its own
 * loops; if a parent's watchdog held the request at the fork, the child
 * forgets it (and whether the handler was installed: it looks again).
 */
static pthread_mutex_t g_request_mu = PTHREAD_MUTEX_INITIALIZER;
static void *g_frames[FRAMES];
static atomic_int g_nframes = 0;         /* -1: requested, not taken yet; -2: refused */
static pthread_t g_target;               /* the thread asked (a late signal to another is ignored) */
static bool g_signal_tried;              /* guarded by g_request_mu */

static void request_after_fork(bool held)
{
    if (!held)
        return;
    atomic_store(&g_nframes, 0);
    g_signal_tried = false;
}

__attribute__((constructor)) static void request_fork_lock(void)
{
    urio__fork_lock_add("stall watchdog", &g_request_mu, request_after_fork);
}

static void on_stall_signal(int sig)
{
    (void)sig;
    int saved = errno;
    /* Pairs with the request's store: the watchdog's last read of g_frames came before. */
    if (atomic_load_explicit(&g_nframes, memory_order_acquire) != -1 ||
        !pthread_equal(pthread_self(), g_target)) {
        errno = saved;
        return;     /* not asked for (a stray or late signal): leave the buffer alone */
    }
    if (urio__tls_unwinding) {
        /* Interrupted inside the unwinder (debug mode taking a stack): not re-entered. */
        atomic_store_explicit(&g_nframes, -2, memory_order_release);
        errno = saved;
        return;
    }
    int n = backtrace(g_frames, FRAMES);
    atomic_store_explicit(&g_nframes, n, memory_order_release);
    errno = saved;
}

/*
 * Installs the handler unless the program has one, looking each time (the
 * program may take the signal later, a forked child may have).  Under
 * g_request_mu.
 */
static bool signal_ready(void)
{
    if (!g_signal_tried) {
        g_signal_tried = true;
        void *warm[2];
        backtrace(warm, 2);     /* loads the unwinder now, not inside the handler */
    }
    struct sigaction cur;
    if (sigaction(URIO_STALL_SIGNAL, NULL, &cur) != 0 || (cur.sa_flags & SA_SIGINFO) ||
        (cur.sa_handler != SIG_DFL && cur.sa_handler != on_stall_signal))
        return false;
    if (cur.sa_handler == on_stall_signal)
        return true;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stall_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(URIO_STALL_SIGNAL, &sa, NULL) == 0;
}

/*
 * The loop thread's stack, formatted; NULL if it cannot be taken, with why
 * in *why.
 */
static char *take_stack(pthread_t loop_thread, const char **why)
{
    pthread_mutex_lock(&g_request_mu);
    char *text = NULL;
    *why = "the program handles the stall signal itself";
    if (signal_ready()) {
        g_target = loop_thread;
        atomic_store_explicit(&g_nframes, -1, memory_order_release);
        *why = "the loop thread is gone";
        if (pthread_kill(loop_thread, URIO_STALL_SIGNAL) == 0) {
            /* The handler runs as soon as the thread is scheduled: wait a while for it. */
            for (int i = 0; i < 2000 && atomic_load_explicit(&g_nframes,
                                                             memory_order_acquire) < 0; i++) {
                struct timespec ts = { 0, 50 * 1000 };
                nanosleep(&ts, NULL);
            }
            /* A handler that never ran: a later one sees -1 no more and leaves the buffer be. */
            int n = atomic_exchange_explicit(&g_nframes, 0, memory_order_acq_rel);
            *why = n == -1   ? "the loop thread did not take the stall signal within 100 ms: "
                               "does it block it?"
                   : n == -2 ? "the loop thread was taking a stack itself"
                             : "no frames";
            if (n > 2) {
                /* Frames 0 and 1 are the handler and the kernel's signal trampoline. */
                urio__backtrace_t bt = { .n = 0 };
                for (int i = 2; i < n && bt.n < URIO__BACKTRACE_DEPTH; i++)
                    bt.frames[bt.n++] = g_frames[i];
                text = urio__backtrace_format(&bt, "");
            }
        }
    }
    pthread_mutex_unlock(&g_request_mu);
    return text;
}

static void *watch(void *arg)
{
    watchdog_t *w = arg;
    urio_loop_t *loop = w->loop;
    uint64_t last_turns = atomic_load_explicit(&loop->progress, memory_order_relaxed);
    uint64_t since = 0, factor = 1;     /* CPU time at the last progress; next report at threshold * factor */
    bool known = false;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        uint64_t threshold = w->threshold_ns;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        uint64_t at = (uint64_t)until.tv_sec * 1000000000u + (uint64_t)until.tv_nsec +
                      threshold / 4;
        until.tv_sec = (time_t)(at / 1000000000u);
        until.tv_nsec = (long)(at % 1000000000u);
        pthread_cond_timedwait(&w->cv, &w->mu, &until);
        if (w->stop)
            break;
        pthread_mutex_unlock(&w->mu);

        uint64_t turns = atomic_load_explicit(&loop->progress, memory_order_relaxed);
        bool running = atomic_load_explicit(&loop->owner, memory_order_acquire) != NULL;
        pthread_t th = (pthread_t)atomic_load(&loop->owner_thread);
        clockid_t cid;
        struct timespec ts;
        uint64_t now = 0;
        bool have_cpu = running && pthread_getcpuclockid(th, &cid) == 0 &&
                        clock_gettime(cid, &ts) == 0;
        if (have_cpu)
            now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        if (!have_cpu || !known || turns != last_turns) {
            last_turns = turns;
            since = now;
            known = have_cpu;
            factor = 1;
        } else if (now - since >= threshold * factor) {
            const char *why;
            char *stack = take_stack(th, &why);
            /* The same run, still stuck?  (It may have ended while the stack was taken.) */
            bool same = atomic_load_explicit(&loop->progress, memory_order_relaxed) == turns &&
                        atomic_load_explicit(&loop->owner, memory_order_acquire) != NULL;
            if (!same)
                urio__log(URIO_LOG_WARNING, "loop stalled for %.0f ms of CPU time (it moved "
                          "on while its stack was taken)", (double)(now - since) / 1e6);
            else if (stack != NULL)
                urio__log(URIO_LOG_WARNING, "loop stalled for %.0f ms of CPU time in:%s",
                          (double)(now - since) / 1e6, stack);
            else
                urio__log(URIO_LOG_WARNING, "loop stalled for %.0f ms of CPU time (its stack "
                          "could not be taken: %s; signal %d)", (double)(now - since) / 1e6,
                          why, URIO_STALL_SIGNAL);
            urio__free(stack);
            factor *= 2;                /* the same stall: report it again, less often */
        }
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void watchdog_stop(watchdog_t *w)
{
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    urio__free(w);
}

/* Close, first: during the close the loop does not run, so nothing to watch. */
static void watchdog_shutdown(urio_loop_t *loop, void *state)
{
    (void)loop;
    watchdog_t *w = state;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
}

static void watchdog_release(urio_loop_t *loop, void *state)
{
    (void)loop;
    watchdog_t *w = state;
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    urio__free(w);
}

static const urio__subsystem_t watchdog_subsystem = {
    .name = "stall watchdog",
    .shutdown = watchdog_shutdown,
    .release = watchdog_release,
};

int urio__watchdog_set(urio_loop_t *loop, uint64_t threshold_ns)
{
    /*
     * An inherited loop's watchdog is the parent's: its thread is not in
     * this process, and its lock and condition may have been held at the fork.
     */
    if (urio__loop_inherited(loop)) {
        urio__log(URIO_LOG_ERROR, "the stall watchdog of an event loop created before fork() "
                  "belongs to the parent process: unchanged; the child can only close that "
                  "loop (urio_loop_close), and make a loop of its own");
        return URIO_EFORKED;
    }
    watchdog_t *w = urio__loop_state(loop, &watchdog_subsystem);
    if (w != NULL) {
        pthread_mutex_lock(&w->mu);
        w->threshold_ns = threshold_ns ? threshold_ns : UINT64_MAX / 4;    /* 0: off */
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        return 0;
    }
    if (threshold_ns == 0)
        return 0;
    w = urio__calloc(1, sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    w->loop = loop;
    w->threshold_ns = threshold_ns;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    int ret = pthread_create(&w->thread, NULL, watch, w);
    if (ret != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        urio__free(w);
        return -ret;
    }
    ret = urio__loop_register(loop, &watchdog_subsystem, w);
    if (ret < 0) {
        watchdog_stop(w);
        return ret;
    }
    return 0;
}
