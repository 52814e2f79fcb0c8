/*
 * dump.c — the task dump (Go's goroutine dump for urio's tasks): every live
 * task of a loop with its name, state, creation site and where it is
 * suspended, on demand (urio_loop_dump_tasks), for every loop at once
 * (urio_dump_all_tasks), or on a signal the program opts into
 * (URIO_DUMP_SIGNAL=SIGUSR1).
 */
#include "task.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *state_name(const urio__task_t *t)
{
    switch (t->state) {
    case URIO__TASK_NEW: return "not started";
    case URIO__TASK_RUNNING: return "running";
    case URIO__TASK_SUSPENDED: return "suspended";
    default: return "finished";
    }
}

/*
 * Debug mode: a suspended task's stack, walked from the registers its
 * context resumes with, from the program's await down to the task's first
 * frame (urio's own frames between the await and the switch left out).
 */
static void dump_suspended_stack(FILE *out, const urio__task_t *t)
{
    urio__unwind_regs_t regs = {
        .lo = (uintptr_t)t->stack->base,
        .hi = (uintptr_t)t->stack->base + t->stack->size,
    };
    unsigned regno[16];
    uint64_t value[16];
    regs.n = urio__ctx_resume_regs(&t->ctx, &regs.pc, regno, value, 16);
    if (regs.n == 0)
        return;
    for (int i = 0; i < regs.n; i++) {
        regs.reg[i].regno = regno[i];
        regs.reg[i].value = value[i];
    }
    urio__backtrace_t bt;
    if (urio__backtrace_unwind(&bt, &regs) <= 0)
        return;
    int from = 0;
    for (int i = 0; i < bt.n; i++) {
        if (bt.frames[i] == t->await_pc) {
            from = i;
            break;
        }
    }
    memmove(bt.frames, bt.frames + from, (size_t)(bt.n - from) * sizeof bt.frames[0]);
    bt.n -= from;
    char *tb = urio__backtrace_format(&bt, "    suspended at (most recent call last):");
    if (tb) {
        fprintf(out, "%s\n", tb);
        urio__free(tb);
    }
}

/* One task: its line, what it waits on, and (debug mode) its stacks. */
static void dump_task(FILE *out, const urio__task_t *t, bool debug)
{
    char where[200] = "";
    if (t->state == URIO__TASK_SUSPENDED && t->await_pc != NULL) {
        char pc[160];
        urio__describe_pc((uintptr_t)t->await_pc - 1, pc, sizeof pc);
        if (strncmp(pc, "task_entry()", 12) == 0)   /* `return urio_sleep(...)`: a tail call */
            snprintf(where, sizeof where, " in %s() (its return statement)", t->name);
        else
            snprintf(where, sizeof where, " in %s", pc);
    }
    fprintf(out, "<Task '%s' %s%s", t->name, state_name(t), where);
    if (t->site)
        fprintf(out, ", created at %s:%d", t->site->file, t->site->line);
    if (t->cancels > 0)
        fprintf(out, ", cancelling (%u)", t->cancels);
    fprintf(out, ">\n");
    if (t->awaiting != NULL) {
        char desc[200];
        fprintf(out, "    awaiting %s\n", urio__future_describe(t->awaiting, desc, sizeof desc));
    }
    if (URIO_DEBUG_CHECKS && debug && t->state == URIO__TASK_SUSPENDED && t->stack != NULL)
        dump_suspended_stack(out, t);
    const urio__backtrace_t *bt = urio__future_stack(t->self);
    char *tb = bt ? urio__backtrace_format(bt, "    created at (most recent call last):") : NULL;
    if (tb) {
        fprintf(out, "%s\n", tb);
        urio__free(tb);
    }
}

URIO_EXPORT int urio_loop_dump_tasks(urio_loop_t *loop, FILE *out)
{
    if (loop == NULL || out == NULL)
        return -EINVAL;
    if (!urio__loop_check_thread(loop, "urio_loop_dump_tasks"))
        return -EPERM;
    urio__tasks_t *ts = urio__tasks_find(loop);
    unsigned n = ts ? ts->n : 0;
    fprintf(out, "urio: %u task%s on loop %p%s\n", n, n == 1 ? "" : "s", (void *)loop,
            n ? ":" : "");
    for (urio__task_t *t = ts ? ts->list : NULL; t != NULL; t = t->next)
        dump_task(out, t, urio_loop_get_debug(loop));
    fflush(out);
    return (int)n;
}

/* ------------------------------------------------------------------ */
/* Every loop, from any thread; on a signal                             */

static void dump_on_loop(void *arg)
{
    urio_loop_dump_tasks(arg, stderr);
}

static void post_dump(urio_loop_t *loop, void *arg)
{
    (void)arg;
    urio_call_soon_threadsafe(loop, dump_on_loop, loop);
}

URIO_EXPORT void urio_dump_all_tasks(void)
{
    urio__loop_foreach_open(post_dump, NULL);
}

/*
 * The signal handler only writes a byte to a pipe (async-signal-safe); a
 * thread of urio's reads it and asks every loop to dump its tasks at its
 * next turn (a loop that is not running dumps when it runs again).
 */
static int g_dump_pipe[2] = { -1, -1 };

static void on_dump_signal(int sig)
{
    (void)sig;
    int saved = errno;
    char c = 'd';
    ssize_t w = write(g_dump_pipe[1], &c, 1);
    (void)w;
    errno = saved;
}

static void *dump_thread(void *arg)
{
    (void)arg;
    char buf[16];
    for (;;) {
        ssize_t r = read(g_dump_pipe[0], buf, sizeof buf);
        if (r > 0)
            urio_dump_all_tasks();
        else if (r == 0 || errno != EINTR)
            return NULL;
    }
}

static int signal_number(const char *v)
{
    static const struct { const char *name; int sig; } names[] = {
        { "SIGUSR1", SIGUSR1 }, { "SIGUSR2", SIGUSR2 }, { "SIGQUIT", SIGQUIT },
        { "SIGPWR", SIGPWR }, { "SIGWINCH", SIGWINCH },
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(v, names[i].name) == 0 || strcmp(v, names[i].name + 3) == 0)
            return names[i].sig;
    char *end;
    long n = strtol(v, &end, 10);
    return *end == '\0' && n > 0 && n < NSIG ? (int)n : -1;
}

/* URIO_DUMP_SIGNAL, at the first task: install the handler and its thread, once. */
static void install_dump_signal(void)
{
    const char *v = getenv("URIO_DUMP_SIGNAL");
    if (v == NULL || *v == '\0')
        return;
    int sig = signal_number(v);
    if (sig < 0) {
        urio__log(URIO_LOG_WARNING, "URIO_DUMP_SIGNAL=%s is not understood (use SIGUSR1, "
                  "SIGUSR2, SIGQUIT, SIGPWR, SIGWINCH or a number): no task dump on a signal", v);
        return;
    }
    struct sigaction cur;
    if (sigaction(sig, NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO ||
                                            (cur.sa_handler != SIG_DFL &&
                                             cur.sa_handler != SIG_IGN &&
                                             cur.sa_handler != on_dump_signal))) {
        urio__log(URIO_LOG_WARNING, "URIO_DUMP_SIGNAL=%s: the program handles that signal "
                  "already; no task dump on it", v);
        return;
    }
    if (pipe2(g_dump_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return;
    int flags = fcntl(g_dump_pipe[0], F_GETFL);
    fcntl(g_dump_pipe[0], F_SETFL, flags & ~O_NONBLOCK);   /* the thread blocks; the handler never */
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int ret = pthread_create(&th, &attr, dump_thread, NULL);
    pthread_attr_destroy(&attr);
    if (ret != 0)
        return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_dump_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
    urio__log(URIO_LOG_DEBUG, "task dump on signal %d (URIO_DUMP_SIGNAL=%s)", sig, v);
}

/*
 * Once per process — per process: a child of fork() has the handler but not
 * the thread, so it sets up its own (a fresh pipe, a fresh thread).  A child
 * forked while another thread was setting up leaves the parent's pipe alone
 * (its numbers may be half-written: two fds leaked) and sets up anew.
 */
static pthread_mutex_t g_setup_mu = PTHREAD_MUTEX_INITIALIZER;
static pid_t g_setup_in;                 /* guarded by g_setup_mu */

static void setup_after_fork(bool held)
{
    if (!held)
        return;
    g_dump_pipe[0] = g_dump_pipe[1] = -1;
    g_setup_in = 0;
}

__attribute__((constructor)) static void setup_fork_lock(void)
{
    urio__fork_lock_add("dump signal setup", &g_setup_mu, setup_after_fork);
}

void urio__dump_signal_setup(void)
{
    pthread_mutex_lock(&g_setup_mu);
    if (g_setup_in != getpid()) {
        g_setup_in = getpid();
        if (g_dump_pipe[0] >= 0) {
            close(g_dump_pipe[0]);
            close(g_dump_pipe[1]);
            g_dump_pipe[0] = g_dump_pipe[1] = -1;
        }
        install_dump_signal();
    }
    pthread_mutex_unlock(&g_setup_mu);
}
