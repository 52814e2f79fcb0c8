/*
 * process_spawn.c — starting a pool's workers without ever forking a
 * multi-threaded parent that then runs C code.
 *
 * Two ways (docs/process_pool.md compares them, measured):
 *  - exec (the default): posix_spawn of /proc/self/exe, a vfork-and-exec
 *    that runs no C code of ours in the child; the new program image
 *    recognises URIO_PROCESS_WORKER in its environment in a constructor
 *    (URIO_PROCESS_FN's) and becomes the worker before main.
 *  - fork server: a process forked at the top of main, while the program
 *    has one thread, that clones workers on request.  Its clones are made
 *    with CLONE_PARENT, so they are children of the program itself: the
 *    pool reaps them, and they die with it, as exec'd workers do.
 *
 * Either way the worker keeps only its channel (fd 3) and stdin, stdout
 * and stderr; every other fd is closed as it starts.
 */
#include "process.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* ------------------------------------------------------------------ */
/* Small system helpers                                                 */

bool urio__process_no_pidfd;

int urio__process_pidfd_open(pid_t pid)
{
    if (urio__process_no_pidfd)
        return -ENOSYS;
#ifdef SYS_pidfd_open
    long fd = syscall(SYS_pidfd_open, pid, 0);
    if (fd >= 0) {
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);    /* pidfds are close-on-exec; to be sure */
        return (int)fd;
    }
    return -errno;
#else
    (void)pid;
    return -ENOSYS;
#endif
}

int urio__process_signal(int pidfd, pid_t pid, int sig)
{
#ifdef SYS_pidfd_send_signal
    if (pidfd >= 0) {
        if (syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) == 0)
            return 0;
        if (errno != ENOSYS)
            return -errno;
    }
#else
    (void)pidfd;
#endif
    return kill(pid, sig) == 0 ? 0 : -errno;
}

void urio__process_close_from(int from)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)from, ~0u, 0) == 0)
        return;
#endif
    /* Before Linux 5.9: what /proc lists, collected first (closing changes the listing). */
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return;
    int fds[1024];
    size_t n = 0;
    struct dirent *e;
    int self = dirfd(d);
    while ((e = readdir(d)) != NULL && n < sizeof fds / sizeof fds[0]) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd >= from && fd != self)
            fds[n++] = fd;
    }
    closedir(d);
    for (size_t i = 0; i < n; i++)
        close(fds[i]);
}

/* ------------------------------------------------------------------ */
/* Exec                                                                 */

/* environ without any URIO_PROCESS_WORKER, plus ours.  Returns: NULL on ENOMEM. */
static char **worker_environ(char *ours)
{
    size_t n = 0;
    for (char **e = environ; e && *e; e++)
        n++;
    char **env = urio__malloc((n + 2) * sizeof *env);
    if (env == NULL)
        return NULL;
    size_t k = 0;
    size_t plen = strlen(URIO__PROCESS_ENV);
    for (char **e = environ; e && *e; e++)
        if (strncmp(*e, URIO__PROCESS_ENV, plen) != 0 || (*e)[plen] != '=')
            env[k++] = *e;
    env[k++] = ours;
    env[k] = NULL;
    return env;
}

static int spawn_exec(int child_fd, pid_t *pid)
{
    char ours[64];
    snprintf(ours, sizeof ours, "%s=%d,%d", URIO__PROCESS_ENV, URIO__PROCESS_CHANNEL_FD,
             (int)getpid());
    char **env = worker_environ(ours);
    if (env == NULL)
        return -ENOMEM;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    /* dup2 onto itself clears close-on-exec (glibc 2.29 and later). */
    posix_spawn_file_actions_adddup2(&fa, child_fd, URIO__PROCESS_CHANNEL_FD);
    /* The worker starts with no signal blocked and every handler at its default. */
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    char name[] = "urio-worker";
    char *argv[] = { name, NULL };
    int ret = posix_spawn(pid, "/proc/self/exe", &fa, &attr, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    urio__free(env);
    return -ret;
}

/* ------------------------------------------------------------------ */
/* The fork server                                                      */

static pthread_mutex_t fs_mu = PTHREAD_MUTEX_INITIALIZER;
static int fs_fd = -1;           /* guarded by fs_mu: our end of the server's socket */
static pid_t fs_pid;             /* guarded by fs_mu */
static bool fs_parents;          /* guarded by fs_mu: a child of fork() that dropped the parent's */

/*
 * A child of fork() never uses its parent's fork server: the server's
 * clones are made with CLONE_PARENT, so they would be the parent's
 * children, reaped by nobody in this process, and the child's copy of the
 * socket would keep the server alive after the parent stopped it.  The copy
 * is closed (fs_fd never names a closed fd: stopping clears it before the
 * close), also when another thread held fs_mu; the child may start a server
 * of its own.
 */
static void fs_after_fork(bool held)
{
    (void)held;
    if (fs_fd >= 0) {
        close(fs_fd);
        fs_parents = true;
    }
    fs_fd = -1;
    fs_pid = 0;
}

__attribute__((constructor)) static void fs_fork_lock(void)
{
    urio__fork_lock_add("fork server", &fs_mu, fs_after_fork);
}

/* The number of threads of this process. */
static int thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static void reset_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &sa, NULL);    /* SIGKILL, SIGSTOP and glibc's own refuse: fine */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/*
 * The server: single-threaded, blocking.  Each request is one message
 * carrying a worker's channel; the server clones a worker onto it.  A clone
 * that fails is answered by closing the channel: the pool sees the worker
 * end before READY and counts a failed start.
 */
__attribute__((noreturn)) static void fork_server_run(int fd, pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        urio__process_exit(0);
    for (;;) {
        char byte;
        struct iovec iov = { &byte, 1 };
        _Alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = ctl, .msg_controllen = sizeof ctl };
        ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            urio__process_exit(0);  /* the program closed its end, or died */
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        if (c == NULL || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int)))
            continue;
        int chan;
        memcpy(&chan, CMSG_DATA(c), sizeof chan);
        /*
         * CLONE_PARENT: the worker is the program's child, not ours.  The
         * raw clone is fork without glibc's atfork handlers: this process
         * has one thread, so no lock can be held in the copy.
         */
        long pid = syscall(SYS_clone, (unsigned long)CLONE_PARENT, NULL, NULL, NULL, 0);
        if (pid == 0) {
            if (chan != URIO__PROCESS_CHANNEL_FD) {
                dup2(chan, URIO__PROCESS_CHANNEL_FD);
                close(chan);
            }
            fcntl(URIO__PROCESS_CHANNEL_FD, F_SETFD, 0);
            urio__process_worker_run(URIO__PROCESS_CHANNEL_FD, parent);
        }
        close(chan);
    }
}

URIO_EXPORT int urio_process_fork_server_start(void)
{
    pthread_mutex_lock(&fs_mu);
    int ret = 0;
    if (fs_fd >= 0)
        goto out;
    if (!urio__process_fn_any()) {
        ret = -ENOENT;
        goto out;
    }
    if (thread_count() != 1) {
        urio__log(URIO_LOG_ERROR, "urio_process_fork_server_start(): the process already "
                  "runs %d threads; forking it is not safe: call it at the top of main",
                  thread_count());
        ret = -EBUSY;
        goto out;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        ret = -errno;
        goto out;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        ret = -errno;
        close(sv[0]);
        close(sv[1]);
        goto out;
    }
    if (pid == 0) {
        reset_signals();
        if (sv[1] != 4) {
            dup2(sv[1], 4);
        }
        urio__process_close_from(5);
        /* fd 3 may be anything of the program's: keep only 0-2 and ours (4). */
        close(3);
        fork_server_run(4, parent);
    }
    close(sv[1]);
    fs_fd = sv[0];
    fs_pid = pid;
    fs_parents = false;
out:
    pthread_mutex_unlock(&fs_mu);
    return ret;
}

URIO_EXPORT void urio_process_fork_server_stop(void)
{
    pthread_mutex_lock(&fs_mu);
    if (fs_fd >= 0) {
        int fd = fs_fd;
        fs_fd = -1;         /* first: a child forked meanwhile must not close the number */
        close(fd);
        int status;
        while (waitpid(fs_pid, &status, 0) < 0 && errno == EINTR) {
        }
        fs_pid = 0;
    }
    pthread_mutex_unlock(&fs_mu);
}

static int spawn_fork_server(int child_fd)
{
    pthread_mutex_lock(&fs_mu);
    int ret = -ENOTCONN;
    if (fs_fd < 0 && fs_parents) {
        fs_parents = false;     /* said once */
        urio__log(URIO_LOG_ERROR, "process pool: the fork server belongs to the parent process "
                  "(this process is a child of fork()): a child cannot use it, its workers "
                  "would be the parent's children; start this process's own "
                  "(urio_process_fork_server_start) or start workers with "
                  "URIO_PROCESS_START_EXEC");
    }
    if (fs_fd >= 0) {
        char byte = 'w';
        struct iovec iov = { &byte, 1 };
        _Alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
        memset(&ctl, 0, sizeof ctl);
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = ctl, .msg_controllen = sizeof ctl };
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &child_fd, sizeof child_fd);
        /* Never blocks the loop: a full queue is a failed start, retried later. */
        ret = sendmsg(fs_fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) == 1 ? 0 : -errno;
    }
    pthread_mutex_unlock(&fs_mu);
    return ret;
}

/* ------------------------------------------------------------------ */

int urio__process_spawn(int how, int child_fd, pid_t *pid)
{
    int ret;
    *pid = 0;
    if (how == URIO_PROCESS_START_FORK_SERVER)
        ret = spawn_fork_server(child_fd);
    else
        ret = spawn_exec(child_fd, pid);
    close(child_fd);
    return ret;
}
