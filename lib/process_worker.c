/*
 * process_worker.c — the registry of functions, and the worker: the loop a
 * pool's worker process runs, from before main until its parent closes the
 * channel.
 *
 * A worker is single-threaded and plain: blocking recvmsg and sendmsg on
 * its channel, one job at a time, in the order they came.  It sends each
 * job's result before it starts the next, so the parent always knows which
 * job a dead worker held: the first one without a result.  Frames from the
 * parent are checked as strictly as the parent checks the worker's; a bad
 * one ends the worker (exit status 70) with a line on stderr.
 */
#include "process.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* The registry                                                         */

/*
 * Filled by constructors before main, read-only after: the one piece of
 * global state here, and by design (functions are registered at build time).
 */
static urio_process_fn_def_t *registry;

URIO_EXPORT int urio_process_fn_register(urio_process_fn_def_t *def)
{
    if (def == NULL || def->name == NULL || def->fn == NULL)
        return -EINVAL;
    size_t len = strlen(def->name);
    if (len == 0 || len > URIO__PF_NAME_MAX)
        return -EINVAL;
    if (urio__process_fn_find(def->name, len) != NULL) {
        if (urio__process_fn_find(def->name, len) == def)
            return 0;
        urio__log(URIO_LOG_ERROR, "URIO_PROCESS_FN(\"%s\"): the name is registered twice; "
                  "the second registration is ignored", def->name);
        return -EEXIST;
    }
    def->next = registry;
    registry = def;
    return 0;
}

const urio_process_fn_def_t *urio__process_fn_find(const char *name, size_t len)
{
    for (const urio_process_fn_def_t *d = registry; d != NULL; d = d->next)
        if (strncmp(d->name, name, len) == 0 && d->name[len] == '\0')
            return d;
    return NULL;
}

bool urio__process_fn_any(void)
{
    return registry != NULL;
}

/* ------------------------------------------------------------------ */
/* Entering                                                             */

URIO_EXPORT void urio_process_worker_enter(void)
{
    static bool checked;
    if (checked)
        return;
    checked = true;
    const char *env = getenv(URIO__PROCESS_ENV);
    if (env == NULL)
        return;
    char *end;
    long fd = strtol(env, &end, 10);
    long ppid = *end == ',' ? strtol(end + 1, &end, 10) : 0;
    if (*end != '\0' || fd != URIO__PROCESS_CHANNEL_FD || ppid <= 1) {
        fprintf(stderr, "urio: %s=\"%s\" is not a worker's setting: running the program\n",
                URIO__PROCESS_ENV, env);
        unsetenv(URIO__PROCESS_ENV);
        return;
    }
    unsetenv(URIO__PROCESS_ENV);    /* the worker's own children are not workers */
    urio__process_worker_run((int)fd, (pid_t)ppid);
}

/* ------------------------------------------------------------------ */
/* A job in the worker                                                  */

struct urio_process_call {
    uint64_t max_payload;
    void *out;               /* the output: heap, or a shared mapping */
    size_t out_len;
    int out_fd;              /* the output's memfd, or -1 */
    void *offer;             /* the parent's buffer offered for the output, or NULL */
    size_t offer_len;
    bool out_in_offer;       /* out is the offered buffer */
    int err;
    char msg[URIO__PF_MSG_MAX + 1];
};

static void output_release(urio_process_call_t *c)
{
    if (c->out_in_offer) {
        c->out_in_offer = false;    /* the parent's buffer, mapped for as long as we like */
    } else if (c->out_fd >= 0) {
        munmap(c->out, c->out_len);
        close(c->out_fd);
    } else {
        urio__free(c->out);
    }
    c->out = NULL;
    c->out_len = 0;
    c->out_fd = -1;
}

URIO_EXPORT void *urio_process_output(urio_process_call_t *call, size_t len)
{
    if (call == NULL) {
        errno = EINVAL;
        return NULL;
    }
    output_release(call);
    if (len > call->max_payload) {
        errno = EMSGSIZE;
        return NULL;
    }
    if (len >= URIO__PF_SHM_MIN && call->offer != NULL && len <= call->offer_len) {
        call->out = call->offer;
        call->out_in_offer = true;
    } else if (len >= URIO__PF_SHM_MIN) {
        void *map;
        int fd = urio__pf_shm_create(len, &map);
        if (fd < 0) {
            errno = -fd;
            return NULL;
        }
        call->out = map;
        call->out_fd = fd;
    } else {
        call->out = urio__malloc(len ? len : 1);
        if (call->out == NULL) {
            errno = ENOMEM;
            return NULL;
        }
    }
    call->out_len = len;
    return call->out;
}

URIO_EXPORT int urio_process_fail(urio_process_call_t *call, int err, const char *fmt, ...)
{
    if (err >= 0)
        err = -EINVAL;
    if (call == NULL)
        return err;
    call->err = err;
    call->msg[0] = '\0';
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(call->msg, sizeof call->msg, fmt, ap);
        va_end(ap);
    }
    return err;
}

/* ------------------------------------------------------------------ */
/* Test hooks: deaths at the moments a job is taken or its result sent   */

static int test_moment, test_how;    /* armed by a job, in this worker only */

void urio__process_test_die(int moment, int how)
{
    test_moment = moment;
    test_how = how;
}

void urio__process_test_die_now(int how)
{
    URIO_COVERAGE_FLUSH();          /* each way below ends the process without exit() */
    /* GCOVR_EXCL_START: what runs after the flush is never counted */
    switch (how) {
    case URIO__PT_SEGV: {
        /* A real fault (on a page that forbids access: a NULL store is UBSan's first). */
        volatile int *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page != MAP_FAILED)
            *page = 1;
        raise(SIGSEGV);
        break;
    }
    case URIO__PT_KILL:
        raise(SIGKILL);
        break;
    case URIO__PT_ABORT:
        abort();
    case URIO__PT_EXIT3:
        urio__process_exit(3);
    case URIO__PT_HANG:
        for (;;)
            pause();
    }
    urio__process_exit(99);
    /* GCOVR_EXCL_STOP */
}

/* ------------------------------------------------------------------ */
/* The worker's loop                                                    */

enum { EXIT_PROTOCOL = 70, EXIT_ORPHAN = 71, EXIT_SETUP = 72 };
enum { MAX_FDS = 64 };

typedef struct worker {
    int fd;
    uint64_t max_payload;
    char *buf;               /* received bytes: [off, len) not yet decoded */
    size_t off, len, cap;
    int fds[MAX_FDS * 4];    /* received fds, in order, not yet claimed */
    unsigned nfds;
    uint32_t seq;            /* the last job's number */
} worker_t;

__attribute__((noreturn, format(printf, 2, 3))) static void die(int status, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "urio worker %d: %s\n", (int)getpid(), line);
    urio__process_exit(status);
}

/* Reads more bytes (and fds) from the parent; exits on EOF. */
static void receive(worker_t *w)
{
    if (w->off > 0 && w->off == w->len) {
        w->off = w->len = 0;
    } else if (w->cap - w->len < URIO__PF_FRAME_MAX) {
        memmove(w->buf, w->buf + w->off, w->len - w->off);
        w->len -= w->off;
        w->off = 0;
    }
    struct iovec iov = { w->buf + w->len, w->cap - w->len };
    _Alignas(struct cmsghdr) char ctl[CMSG_SPACE(MAX_FDS * sizeof(int))];
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = ctl, .msg_controllen = sizeof ctl };
    ssize_t n;
    do
        n = recvmsg(w->fd, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n == 0)
        urio__process_exit(0);      /* the parent closed the channel: done */
    if (n < 0)
        die(errno == ECONNRESET ? 0 : EXIT_PROTOCOL, "reading the channel: %s", strerror(errno));
    if (mh.msg_flags & MSG_CTRUNC)
        die(EXIT_PROTOCOL, "too many fds in one message from the parent");
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            die(EXIT_PROTOCOL, "unexpected control message from the parent");
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            if (w->nfds == sizeof w->fds / sizeof w->fds[0])
                die(EXIT_PROTOCOL, "the parent sent fds no frame claims");
            memcpy(&w->fds[w->nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    }
    w->len += (size_t)n;
}

/* The next frame from the parent, whole, of a type in `accept`. */
static void next_frame(worker_t *w, unsigned accept, urio__pf_frame_t *f)
{
    for (;;) {
        const char *why = NULL;
        ssize_t n = urio__pf_decode(w->buf + w->off, w->len - w->off, accept, w->max_payload,
                                    f, &why);
        if (n < 0)
            die(EXIT_PROTOCOL, "malformed frame from the parent: %s", why);
        if (n > 0) {
            w->off += (size_t)n;
            return;
        }
        receive(w);
    }
}

static int take_fd(worker_t *w)
{
    if (w->nfds == 0)
        die(EXIT_PROTOCOL, "a shared-memory frame came without its memfd");
    int fd = w->fds[0];
    memmove(w->fds, w->fds + 1, --w->nfds * sizeof(int));
    return fd;
}

/* Writes the whole message (retrying partial writes); exits if the parent is gone. */
static void send_all(worker_t *w, struct iovec *iov, int iovcnt, int fd)
{
    _Alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)iovcnt };
    if (fd >= 0) {
        memset(&ctl, 0, sizeof ctl);
        mh.msg_control = ctl;
        mh.msg_controllen = sizeof ctl;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    while (mh.msg_iovlen > 0) {
        ssize_t n = sendmsg(w->fd, &mh, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            urio__process_exit(0);  /* the parent is gone or closed the channel */
        mh.msg_control = NULL;      /* the fd went with the first byte */
        mh.msg_controllen = 0;
        while (mh.msg_iovlen > 0 && (size_t)n >= mh.msg_iov->iov_len) {
            n -= (ssize_t)mh.msg_iov->iov_len;
            mh.msg_iov++;
            mh.msg_iovlen--;
        }
        if (mh.msg_iovlen > 0) {
            mh.msg_iov->iov_base = (char *)mh.msg_iov->iov_base + n;
            mh.msg_iov->iov_len -= (size_t)n;
        }
    }
}

static void send_result(worker_t *w, uint32_t seq, urio_process_call_t *c, int ret)
{
    urio__pf_header_t h;
    struct iovec iov[2];
    if (ret < 0) {
        size_t mlen = strlen(c->msg);
        urio__pf_header_init(&h, URIO__PF_RESULT, 0, seq, ret, (uint16_t)mlen, 0);
        iov[0] = (struct iovec){ &h, sizeof h };
        iov[1] = (struct iovec){ c->msg, mlen };
        send_all(w, iov, 2, -1);
        return;
    }
    if (c->out_in_offer) {
        urio__pf_header_init(&h, URIO__PF_RESULT, URIO__PF_SHM | URIO__PF_INOFFER, seq, 0, 0,
                             c->out_len);
        iov[0] = (struct iovec){ &h, sizeof h };
        send_all(w, iov, 1, -1);
        return;
    }
    if (c->out_fd >= 0) {
        munmap(c->out, c->out_len);
        c->out = NULL;
        int err = urio__pf_shm_seal(c->out_fd);
        if (err < 0)
            die(EXIT_SETUP, "sealing an output memfd: %s", strerror(-err));
        urio__pf_header_init(&h, URIO__PF_RESULT, URIO__PF_SHM, seq, 0, 0, c->out_len);
        iov[0] = (struct iovec){ &h, sizeof h };
        send_all(w, iov, 1, c->out_fd);
        close(c->out_fd);
        c->out_fd = -1;
        c->out_len = 0;
        return;
    }
    urio__pf_header_init(&h, URIO__PF_RESULT, 0, seq, 0, 0, c->out_len);
    iov[0] = (struct iovec){ &h, sizeof h };
    iov[1] = (struct iovec){ c->out, c->out_len };
    if (test_moment == URIO__PT_SEND) {
        iov[1].iov_len /= 2;        /* the header and half the output, then the end */
        send_all(w, iov, 2, -1);
        urio__process_test_die_now(test_how);
    }
    send_all(w, iov, 2, -1);
}

/*
 * The parent's shared buffers, mapped once: it reuses them, so the same
 * inodes come back, and a job then costs no mmap and no page faults.
 */
enum { MAPS = 32 };
static struct wmap {
    dev_t dev;
    ino_t ino;
    void *map;
    size_t len;
    uint64_t used;
} wmaps[MAPS];
static unsigned nwmaps;
static uint64_t wtick;

/* A mapping of the received memfd fd (closed here) of at least `need` bytes. */
static void *map_buffer(int fd, uint64_t need, size_t *len, const char **why)
{
    struct stat st;
    int seals = fcntl(fd, F_GET_SEALS);
    if (fstat(fd, &st) < 0 || seals < 0 || !(seals & F_SEAL_SHRINK) ||
        (uint64_t)st.st_size < need) {
        close(fd);
        *why = "a shared buffer unsealed or smaller than its frame says";
        return NULL;
    }
    struct wmap *m = NULL, *lru = &wmaps[0];
    for (unsigned i = 0; i < nwmaps; i++) {
        if (wmaps[i].dev == st.st_dev && wmaps[i].ino == st.st_ino &&
            wmaps[i].len == (size_t)st.st_size) {
            m = &wmaps[i];
            break;
        }
        if (wmaps[i].used < lru->used)
            lru = &wmaps[i];
    }
    if (m == NULL) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_POPULATE, fd, 0);
        if (p == MAP_FAILED) {
            close(fd);
            *why = "a shared buffer cannot be mapped";
            return NULL;
        }
        if (nwmaps < MAPS) {
            m = &wmaps[nwmaps++];
        } else {
            munmap(lru->map, lru->len);
            m = lru;
        }
        *m = (struct wmap){ st.st_dev, st.st_ino, p, (size_t)st.st_size, 0 };
    }
    close(fd);
    m->used = ++wtick;
    *len = m->len;
    return m->map;
}

static void run_job(worker_t *w, const urio__pf_frame_t *f)
{
    if (f->h.seq != w->seq + 1)
        die(EXIT_PROTOCOL, "job number %u out of order (expected %u)", f->h.seq, w->seq + 1);
    w->seq = f->h.seq;
    if (test_moment == URIO__PT_TAKE)
        urio__process_test_die_now(test_how);
    const void *in = f->payload;
    urio_process_call_t call = { .max_payload = w->max_payload, .out_fd = -1 };
    const char *why = NULL;
    size_t maplen;
    if (f->h.flags & URIO__PF_SHM) {
        in = map_buffer(take_fd(w), f->h.payload_len, &maplen, &why);
        if (in == NULL)
            die(EXIT_PROTOCOL, "job %u: %s", f->h.seq, why);
    }
    if (f->h.flags & URIO__PF_OUTBUF) {
        call.offer = map_buffer(take_fd(w), 0, &call.offer_len, &why);
        if (call.offer == NULL)
            die(EXIT_PROTOCOL, "job %u: %s", f->h.seq, why);
    }
    const urio_process_fn_def_t *def = urio__process_fn_find(f->text, f->h.text_len);
    int ret;
    if (def == NULL) {
        ret = urio_process_fail(&call, -ENOENT, "no function named '%.*s' is registered in "
                                "this program (URIO_PROCESS_FN)", (int)f->h.text_len, f->text);
    } else {
        ret = def->fn(&call, in, (size_t)f->h.payload_len);
        if (ret < 0 && call.err != ret)
            call.msg[0] = '\0';     /* failed with another error than the message's */
        if (ret > 0)
            ret = 0;
    }
    send_result(w, f->h.seq, &call, ret);
    output_release(&call);
}

void urio__process_worker_run(int fd, pid_t expected_parent)
{
    /* Die with the parent; and if it died before this line, the check below sees it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != expected_parent)
        urio__process_exit(EXIT_ORPHAN);
    urio__process_close_from(fd + 1);
    worker_t w = { .fd = fd, .max_payload = sizeof(urio__pf_config_t),
                   .cap = 2 * (size_t)URIO__PF_FRAME_MAX };
    w.buf = urio__malloc(w.cap);
    if (w.buf == NULL)
        die(EXIT_SETUP, "out of memory for the channel's buffer");

    /* READY first: it tells the parent this process's pid (a fork server's clone has no other way). */
    urio__pf_header_t h;
    urio__pf_ready_t r = { .pid = (uint32_t)getpid() };
    urio__pf_header_init(&h, URIO__PF_READY, 0, URIO__PF_VERSION, 0, 0, sizeof r);
    struct iovec iov[2] = { { &h, sizeof h }, { &r, sizeof r } };
    send_all(&w, iov, 2, -1);

    urio__pf_frame_t f;
    next_frame(&w, 1u << URIO__PF_CONFIG, &f);
    urio__pf_config_t cfg;
    memcpy(&cfg, f.payload, sizeof cfg);
    if (cfg.max_payload == 0 || cfg.max_payload > (1ull << 40))
        die(EXIT_PROTOCOL, "bad payload limit %llu in CONFIG", (unsigned long long)cfg.max_payload);
    w.max_payload = cfg.max_payload;
    if (cfg.memory != 0) {
        struct rlimit rl = { cfg.memory, cfg.memory };
        if (setrlimit(RLIMIT_AS, &rl) < 0)
            die(EXIT_SETUP, "setrlimit(RLIMIT_AS, %llu): %s", (unsigned long long)cfg.memory,
                strerror(errno));
    }

    for (;;) {
        next_frame(&w, 1u << URIO__PF_JOB, &f);
        run_job(&w, &f);
    }
}
