/*
 * io/proc.c — starting, watching and stopping the benchmarks' child
 * programs (see proc.h).
 */
#include "proc.h"

#include "../bench.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

_Static_assert(sizeof(cpu_set_t) <= sizeof(((bench_affinity_t *)0)->mask),
               "bench_affinity_t too small for a cpu_set_t");

/* How long a stopped server may take to exit before it is killed. */
static const uint64_t STOP_NS = 5000000000u;

bool bench_proc_exists(const char *path)
{
    return path && *path && access(path, X_OK) == 0;
}

void bench_proc_start(bench_proc_t *p, const char *name, char *const argv[], int cpu)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        bench_die("pipe2: %s", strerror(errno));
    fflush(NULL);   /* nothing buffered is written twice */
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork: %s", strerror(errno));
    if (pid == 0) {
        /* Async-signal-safe calls only until exec: the harness may have
         * threads (libuv's pool, from earlier rows) holding locks. */
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (cpu >= 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(cpu, &set);
            sched_setaffinity(0, sizeof set, &set);
        }
        dup2(fds[1], STDOUT_FILENO);   /* dup2 clears O_CLOEXEC on the copy */
        execv(argv[0], argv);
        static const char msg[] = "urio-bench: cannot run ";
        ssize_t r = write(STDERR_FILENO, msg, sizeof msg - 1);
        r = write(STDERR_FILENO, argv[0], strlen(argv[0]));
        r = write(STDERR_FILENO, "\n", 1);
        (void)r;
        _exit(127);
    }
    close(fds[1]);
    *p = (bench_proc_t){ .name = name, .pid = pid, .out = fds[0] };
    int err = clock_getcpuclockid(pid, &p->cpu_clock);
    if (err)
        bench_die("clock_getcpuclockid(%s): %s", name, strerror(err));
}

/* The child's exit, as a phrase for messages. */
static void describe_status(int status, char *buf, size_t size)
{
    if (WIFEXITED(status))
        snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, size, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, size, "ended (wait status %#x)", status);
}

BENCH_NORETURN static void died_early(bench_proc_t *p, const char *waiting_for)
{
    int status;
    char how[96];
    /* The pipe closes just before the exit is reported: wait for it. */
    if (waitpid(p->pid, &status, 0) == p->pid)
        describe_status(status, how, sizeof how);
    else
        snprintf(how, sizeof how, "closed its stdout");
    bench_die("%s %s before %s", p->name, how, waiting_for);
}

void bench_proc_read_line(bench_proc_t *p, char *line, size_t size, uint64_t timeout_ns)
{
    uint64_t end = bench_now_ns() + timeout_ns;
    size_t len = 0;
    for (;;) {
        uint64_t now = bench_now_ns();
        if (now >= end) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, NULL, 0);
            bench_die("%s printed no line within %.0f s", p->name, (double)timeout_ns / 1e9);
        }
        struct pollfd pfd = { .fd = p->out, .events = POLLIN };
        int n = poll(&pfd, 1, (int)((end - now) / 1000000u) + 1);
        if (n < 0 && errno != EINTR)
            bench_die("poll: %s", strerror(errno));
        if (n <= 0)
            continue;
        /* Byte by byte: what follows the line stays in the pipe. */
        char ch;
        ssize_t r = read(p->out, &ch, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            died_early(p, "printing a line");
        if (ch == '\n')
            break;
        if (len + 1 < size)
            line[len++] = ch;
    }
    line[len] = '\0';
}

uint64_t bench_proc_cpu_ns(const bench_proc_t *p)
{
    struct timespec ts;
    if (clock_gettime(p->cpu_clock, &ts) != 0)
        bench_die("CPU clock of %s: %s", p->name, strerror(errno));
    return bench_ts_ns(&ts);
}

/* Waits for p until `end`; true if it exited (status filled). */
static bool wait_until(const bench_proc_t *p, uint64_t end, int *status)
{
    bool eof = false;
    for (;;) {
        pid_t r = waitpid(p->pid, status, WNOHANG);
        if (r == p->pid)
            return true;
        if (r < 0 && errno != EINTR)
            bench_die("waitpid(%s): %s", p->name, strerror(errno));
        if (bench_now_ns() >= end)
            return false;
        /* Drain its stdout meanwhile, so that a chatty child never blocks. */
        char buf[512];
        struct pollfd pfd = { .fd = eof ? -1 : p->out, .events = POLLIN };
        if (poll(&pfd, 1, 1) > 0 && read(p->out, buf, sizeof buf) <= 0)
            eof = true;
    }
}

void bench_proc_stop(bench_proc_t *p)
{
    int status;
    kill(p->pid, SIGTERM);
    if (!wait_until(p, bench_now_ns() + STOP_NS, &status)) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &status, 0);
        fprintf(stderr, "\nurio-bench: %s did not exit within %.0f s of SIGTERM: killed\n",
                p->name, (double)STOP_NS / 1e9);
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char how[96];
        describe_status(status, how, sizeof how);
        fprintf(stderr, "\nurio-bench: %s %s on SIGTERM (its contract: exit 0)\n", p->name, how);
    }
    close(p->out);
    p->pid = -1;
    p->out = -1;
}

void bench_proc_run(const char *name, char *const argv[], char *out, size_t size,
                    uint64_t timeout_ns, struct rusage *ru)
{
    bench_proc_t p;
    bench_proc_start(&p, name, argv, -1);
    uint64_t end = bench_now_ns() + timeout_ns;
    size_t len = 0;
    for (;;) {
        uint64_t now = bench_now_ns();
        if (now >= end) {
            kill(p.pid, SIGKILL);
            waitpid(p.pid, NULL, 0);
            bench_die("%s still running after %.0f s: killed", name, (double)timeout_ns / 1e9);
        }
        struct pollfd pfd = { .fd = p.out, .events = POLLIN };
        int n = poll(&pfd, 1, (int)((end - now) / 1000000u) + 1);
        if (n < 0 && errno != EINTR)
            bench_die("poll: %s", strerror(errno));
        if (n <= 0)
            continue;
        char buf[4096];
        ssize_t r = read(p.out, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;   /* EOF: it is exiting */
        size_t k = (size_t)r < size - 1 - len ? (size_t)r : size - 1 - len;
        memcpy(out + len, buf, k);
        len += k;
    }
    out[len] = '\0';
    close(p.out);
    int status;
    struct rusage usage;
    if (wait4(p.pid, &status, 0, &usage) != p.pid)
        bench_die("wait4(%s): %s", name, strerror(errno));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char how[96];
        describe_status(status, how, sizeof how);
        bench_die("%s %s; its output: %s", name, how, len ? out : "(none)");
    }
    if (ru)
        *ru = usage;
}

void bench_pin_cpus(int *client, int *server)
{
    *client = *server = -1;
    const char *env = getenv("URIO_BENCH_PIN");
    if (!env || strcmp(env, "1") != 0)
        return;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) < 2)
        return;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &set))
            continue;
        if (*client < 0)
            *client = cpu;
        *server = cpu;
    }
}

void bench_pin_self(int cpu, bench_affinity_t *saved)
{
    saved->saved = false;
    if (cpu < 0)
        return;
    cpu_set_t *old = (cpu_set_t *)(void *)saved->mask;
    if (sched_getaffinity(0, sizeof *old, old) != 0)
        bench_die("sched_getaffinity: %s", strerror(errno));
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        bench_die("sched_setaffinity: %s", strerror(errno));
    saved->saved = true;
}

void bench_unpin_self(const bench_affinity_t *saved)
{
    if (saved->saved &&
        sched_setaffinity(0, sizeof(cpu_set_t), (const cpu_set_t *)(const void *)saved->mask) != 0)
        bench_die("sched_setaffinity: %s", strerror(errno));
}
