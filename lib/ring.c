/*
 * ring.c — the only file that talks to io_uring.
 *
 * It sets the ring up (probing the best flags the kernel takes), hands out
 * SQEs (submitting and retrying when the SQ is full), tags each operation's
 * user_data with a table slot and a generation, reaps completions (flushing
 * a CQ overflow) and dispatches them to their ops.  Nothing here runs user
 * code: an op's completion is urio's own and at most schedules a callback.
 */
#include "ring.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/*
 * ThreadSanitizer does not see liburing's raw mmap of the rings, so a ring
 * mapped where a finished thread's ring used to be looks like memory shared
 * without synchronisation.  The kernel orders the old munmap before the new
 * mmap; tell TSan with a release at exit and an acquire at setup.
 */
#ifdef URIO_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char ring_mappings;
#define TSAN_RING_ACQUIRE() __tsan_acquire(&ring_mappings)
#define TSAN_RING_RELEASE() __tsan_release(&ring_mappings)
#else
#define TSAN_RING_ACQUIRE() ((void)0)
#define TSAN_RING_RELEASE() ((void)0)
#endif

/* ------------------------------------------------------------------ */
/* Setup                                                                */

/*
 * The flag sets to try, best first.  SINGLE_ISSUER|DEFER_TASKRUN (6.1) runs
 * completion work only when the loop enters the kernel, on its thread: no
 * interrupts of the loop thread, fewer context switches.  R_DISABLED lets the
 * loop be created on one thread and run on another: the issuer is fixed when
 * the ring is enabled, at the first submit.  COOP_TASKRUN (5.19) is the next
 * best; plain rings work everywhere io_uring does.
 */
static const unsigned setup_tries[] = {
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
        IORING_SETUP_R_DISABLED,
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_SUBMIT_ALL,
    0,
};

static int read_sysctl_int(const char *path, int *out)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    int ok = fscanf(f, "%d", out) == 1;
    fclose(f);
    return ok ? 0 : -1;
}

/* Says why io_uring is unavailable and what to do, once per failure. */
static void log_unavailable(int err)
{
    int disabled = 0;
    const char *path = "/proc/sys/kernel/io_uring_disabled";
    bool have_sysctl = read_sysctl_int(path, &disabled) == 0;
    if (have_sysctl && disabled == 2) {
        urio__log(URIO_LOG_ERROR,
                  "io_uring is unavailable: io_uring_setup failed with %s (%s) because the "
                  "sysctl kernel.io_uring_disabled is 2 (io_uring disabled for every process); "
                  "set it to 0 with 'sysctl -w kernel.io_uring_disabled=0' to use urio",
                  urio_strerror_name(err), urio_strerror(err));
    } else if (have_sysctl && disabled == 1 && err == -EPERM) {
        urio__log(URIO_LOG_ERROR,
                  "io_uring is unavailable: io_uring_setup failed with EPERM because the "
                  "sysctl kernel.io_uring_disabled is 1 (only members of the group "
                  "kernel.io_uring_group may use io_uring); add this user to that group, "
                  "or set the sysctl to 0");
    } else if (err == -ENOSYS) {
        urio__log(URIO_LOG_ERROR,
                  "io_uring is unavailable: io_uring_setup failed with ENOSYS: the kernel "
                  "was built without io_uring (CONFIG_IO_URING), or a seccomp filter blocks "
                  "it (container runtimes' default profiles do); allow the system calls "
                  "io_uring_setup, io_uring_enter and io_uring_register in the seccomp "
                  "profile, or use a kernel with io_uring (5.10 or later; 6.1+ is best)");
    } else {
        urio__log(URIO_LOG_ERROR,
                  "io_uring is unavailable: io_uring_setup failed with %s (%s): a seccomp "
                  "filter or a security module (SELinux, AppArmor) refuses it; allow the "
                  "system calls io_uring_setup, io_uring_enter and io_uring_register for "
                  "this program",
                  urio_strerror_name(err), urio_strerror(err));
    }
}

int urio__ring_init(urio__ring_t *r, unsigned entries)
{
    memset(r, 0, sizeof *r);
    TSAN_RING_ACQUIRE();
    int ret = -EINVAL;
    for (size_t i = 0; i < sizeof setup_tries / sizeof setup_tries[0]; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        p.flags = setup_tries[i];
        ret = io_uring_queue_init_params(entries, &r->uring, &p);
        if (ret == -EINVAL)
            continue;       /* a flag this kernel does not know: try the next set */
        if (ret == 0) {
            r->setup_flags = p.flags;
            r->features = p.features;
        }
        break;
    }
    if (ret == -ENOSYS || ret == -EPERM || ret == -EACCES) {
        log_unavailable(ret);
        return URIO_ENOURING;
    }
    if (ret < 0) {
        urio__log(URIO_LOG_ERROR, "io_uring_setup(%u entries) failed: %s (%s)", entries,
                  urio_strerror_name(ret), urio_strerror(ret));
        return ret;
    }
    /* A forked child must not touch the parent's rings (or see them as shared memory). */
    io_uring_ring_dontfork(&r->uring);
    r->single_issuer = (r->setup_flags & IORING_SETUP_SINGLE_ISSUER) != 0;
    r->defer_taskrun = (r->setup_flags & IORING_SETUP_DEFER_TASKRUN) != 0;
    r->enabled = !(r->setup_flags & IORING_SETUP_R_DISABLED);
    if (!(r->features & IORING_FEAT_NODROP))
        urio__log(URIO_LOG_WARNING, "this kernel's io_uring lacks IORING_FEAT_NODROP (5.5): "
                  "completions can be lost when the completion queue overflows");
    r->cap_ops = 64;
    r->ops = urio__calloc(r->cap_ops, sizeof *r->ops);
    if (r->ops == NULL) {
        io_uring_queue_exit(&r->uring);
        return -ENOMEM;
    }
    r->nops = 1;             /* slot 0: user_data 0 means "no op" */
    r->free_op = 0;          /* 0: none free */
    return 0;
}

static void ring_unmap(urio__ring_t *r)
{
    TSAN_RING_RELEASE();
    io_uring_queue_exit(&r->uring);
}

void urio__ring_exit(urio__ring_t *r)
{
    URIO_ASSERT(r->ops == NULL || r->inflight == 0);
    ring_unmap(r);
    urio__free(r->ops);
    r->ops = NULL;
}

/*
 * liburing 2.3 declares io_uring_enable_rings() but does not export it
 * (Debian 12's liburing.so lacks the symbol): the raw call, in one place.
 */
static int enable_rings(struct io_uring *ring)
{
    long ret = syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_ENABLE_RINGS,
                       NULL, 0);
    return ret < 0 ? -errno : 0;
}

int urio__ring_bind(urio__ring_t *r)
{
    const void *me = urio__thread_token();
    if (r->enabled)
        return (!r->single_issuer || r->issuer == me) ? 0 : -EPERM;
    int ret = enable_rings(&r->uring);
    if (ret < 0) {
        urio__log(URIO_LOG_ERROR, "io_uring: enabling the ring failed: %s",
                  urio_strerror(ret));
        return ret;
    }
    r->enabled = true;
    r->issuer = me;
    /*
     * No io_uring_register_ring_fd: a registered ring fd belongs to the
     * issuer thread and keeps the ring alive after urio_loop_close() from
     * another thread has closed the fd.  Enters are rare (batched), so the
     * fdget it would save is not worth a ring that outlives its close.
     */
    return 0;
}

bool urio__ring_is_issuer(const urio__ring_t *r)
{
    return r->enabled && (!r->single_issuer || r->issuer == urio__thread_token());
}

bool urio__ring_has_op(urio__ring_t *r, unsigned opcode)
{
    if (opcode >= 256)
        return false;
    if (!r->probed) {
        if (urio__ring_bind(r) < 0)
            return true;        /* not ours to probe: let the op's own -EINVAL tell */
        struct io_uring_probe *p = io_uring_get_probe_ring(&r->uring);
        if (p == NULL)
            return true;
        for (unsigned i = 0; i <= p->last_op && i < p->ops_len && i < 256; i++)
            if (p->ops[i].flags & IO_URING_OP_SUPPORTED)
                r->ops_supported[i / 64] |= 1ull << (i % 64);
        io_uring_free_probe(p);
        r->probed = true;
    }
    return (r->ops_supported[opcode / 64] >> (opcode % 64)) & 1;
}

/* ------------------------------------------------------------------ */
/* Ops                                                                  */

static inline uint64_t op_user_data(const urio__ring_t *r, uint32_t slot)
{
    return ((uint64_t)r->ops[slot].gen << 32) | slot;
}

static int op_slot_alloc(urio__ring_t *r, urio__op_t *op)
{
    uint32_t s = r->free_op;
    if (s != 0) {
        r->free_op = r->ops[s].next_free;
    } else {
        if (r->nops == r->cap_ops) {
            if (r->cap_ops >= (UINT32_MAX >> 1))
                return -ENOMEM;
            struct urio__op_entry *n = urio__realloc(r->ops, 2 * (size_t)r->cap_ops * sizeof *n);
            if (n == NULL)
                return -ENOMEM;
            memset(n + r->cap_ops, 0, (size_t)r->cap_ops * sizeof *n);
            r->ops = n;
            r->cap_ops *= 2;
        }
        s = r->nops++;
    }
    r->ops[s].op = op;
    op->slot = s;
    return 0;
}

static void op_slot_release(urio__ring_t *r, uint32_t s)
{
    r->ops[s].op = NULL;
    r->ops[s].gen++;
    r->ops[s].next_free = r->free_op;
    r->free_op = s;
}

/* Submits what the SQ holds to make room.  Returns: 0 or a negative errno. */
static int make_room(urio__ring_t *r)
{
    int ret = urio__ring_bind(r);
    if (ret < 0)
        return ret;
    for (int tries = 0; tries < 64; tries++) {
        r->enters++;
        ret = io_uring_submit(&r->uring);
        if (ret >= 0 || ret == -EINTR)
            return 0;
        if (ret != -EBUSY && ret != -EAGAIN)
            return ret;
        /* The kernel holds back submissions while completions wait: reap them. */
        urio__ring_reap(r);
    }
    return -EBUSY;
}

struct io_uring_sqe *urio__ring_sqe(urio__ring_t *r, int *err)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);
    while (URIO_UNLIKELY(sqe == NULL)) {
        int ret = make_room(r);
        if (ret < 0) {
            *err = ret;
            return NULL;
        }
        sqe = io_uring_get_sqe(&r->uring);
    }
    r->sq_pending++;
    return sqe;
}

struct io_uring_sqe *urio__op_sqe(urio__ring_t *r, urio__op_t *op, int *err)
{
    URIO_ASSERT(op->complete != NULL);
    if (op->state != URIO__OP_IDLE) {
        *err = -EBUSY;
        return NULL;
    }
    /* The slot first: failing after taking an SQE would leave a hole in the SQ. */
    int ret = op_slot_alloc(r, op);
    if (ret < 0) {
        *err = ret;
        return NULL;
    }
    struct io_uring_sqe *sqe = urio__ring_sqe(r, err);
    if (sqe == NULL) {
        op_slot_release(r, op->slot);
        return NULL;
    }
    /*
     * liburing's prep helpers leave user_data alone; set it now so a caller
     * cannot forget.  The op counts as in flight from here: the SQE will be
     * submitted with the next enter, whatever happens.
     */
    io_uring_sqe_set_data64(sqe, op_user_data(r, op->slot));
    op->state = URIO__OP_INFLIGHT;
    r->inflight++;
    return sqe;
}

int urio__op_cancel(urio__ring_t *r, urio__op_t *op)
{
    if (op->state == URIO__OP_IDLE)
        return -ENOENT;
    if (op->state == URIO__OP_CANCELLING)
        return 0;
    int err = 0;
    struct io_uring_sqe *sqe = urio__ring_sqe(r, &err);
    if (sqe == NULL)
        return err;
    io_uring_prep_cancel64(sqe, op_user_data(r, op->slot), 0);
    io_uring_sqe_set_data64(sqe, 0);    /* the cancel's own CQE is not interesting */
    op->state = URIO__OP_CANCELLING;
    return 0;
}

/*
 * The typed ops: each takes an SQE for op, prepares it, and restores the
 * tag (liburing's prep helpers clear user_data).  Returns: 0, or the
 * negative errno urio__op_sqe gave (the op is then not in flight).
 */
#define PREP_OP(r, op, prep)                                                        \
    do {                                                                            \
        int err_ = 0;                                                               \
        struct io_uring_sqe *sqe = urio__op_sqe((r), (op), &err_);                  \
        if (sqe == NULL) {                                                          \
            (r)->next_deadline = NULL;                                              \
            return err_;                                                            \
        }                                                                           \
        prep;                                                                       \
        io_uring_sqe_set_data64(sqe, op_user_data((r), (op)->slot));                \
        if (URIO_UNLIKELY((r)->next_deadline != NULL))                              \
            link_deadline((r), sqe);                                                \
        return 0;                                                                   \
    } while (0)

int urio__ring_deadline_next(urio__ring_t *r, struct __kernel_timespec *ts)
{
    /* Both SQEs in one submission: a link whose timeout came later would not be linked. */
    if (io_uring_sq_space_left(&r->uring) < 2) {
        int ret = make_room(r);
        if (ret < 0)
            return ret;
        if (io_uring_sq_space_left(&r->uring) < 2)
            return -EBUSY;
    }
    r->next_deadline = ts;
    return 0;
}

/*
 * Links a timeout to sqe, just prepared: urio__ring_deadline_next made room,
 * and nothing was submitted since, so the next SQE follows it in the SQ.
 * The timeout's CQE carries user_data 0: ignored.
 */
static void link_deadline(urio__ring_t *r, struct io_uring_sqe *sqe)
{
    struct __kernel_timespec *ts = r->next_deadline;
    r->next_deadline = NULL;
    struct io_uring_sqe *t = io_uring_get_sqe(&r->uring);
    URIO_ASSERT(t != NULL);
    if (t == NULL)
        return;     /* can't happen (room was made): the op runs without its deadline */
    sqe->flags |= IOSQE_IO_LINK;
    io_uring_prep_link_timeout(t, ts, IORING_TIMEOUT_ABS);
    io_uring_sqe_set_data64(t, 0);
    r->sq_pending++;
}

int urio__op_nop(urio__ring_t *r, urio__op_t *op)
{
    PREP_OP(r, op, io_uring_prep_nop(sqe));
}

int urio__op_timeout(urio__ring_t *r, urio__op_t *op, struct __kernel_timespec *ts)
{
    PREP_OP(r, op, io_uring_prep_timeout(sqe, ts, 0, 0));
}

int urio__op_read(urio__ring_t *r, urio__op_t *op, int fd, void *buf, unsigned len,
                  uint64_t off)
{
    PREP_OP(r, op, io_uring_prep_read(sqe, fd, buf, len, off));
}

int urio__op_write(urio__ring_t *r, urio__op_t *op, int fd, const void *buf, unsigned len,
                   uint64_t off)
{
    PREP_OP(r, op, io_uring_prep_write(sqe, fd, buf, len, off));
}

int urio__op_recv(urio__ring_t *r, urio__op_t *op, int fd, void *buf, unsigned len, int flags)
{
    PREP_OP(r, op, io_uring_prep_recv(sqe, fd, buf, len, flags));
}

int urio__op_send(urio__ring_t *r, urio__op_t *op, int fd, const void *buf, unsigned len,
                  int flags)
{
    PREP_OP(r, op, io_uring_prep_send(sqe, fd, buf, len, flags));
}

int urio__op_sendmsg(urio__ring_t *r, urio__op_t *op, int fd, const struct msghdr *msg,
                     unsigned flags)
{
    PREP_OP(r, op, io_uring_prep_sendmsg(sqe, fd, msg, flags));
}

int urio__op_recvmsg(urio__ring_t *r, urio__op_t *op, int fd, struct msghdr *msg,
                     unsigned flags)
{
    PREP_OP(r, op, io_uring_prep_recvmsg(sqe, fd, msg, flags));
}

int urio__op_poll(urio__ring_t *r, urio__op_t *op, int fd, unsigned mask)
{
    PREP_OP(r, op, io_uring_prep_poll_add(sqe, fd, mask));
}

int urio__op_readv(urio__ring_t *r, urio__op_t *op, int fd, const struct iovec *iov,
                   unsigned n, uint64_t off)
{
    PREP_OP(r, op, io_uring_prep_readv(sqe, fd, iov, n, off));
}

int urio__op_writev(urio__ring_t *r, urio__op_t *op, int fd, const struct iovec *iov,
                    unsigned n, uint64_t off)
{
    PREP_OP(r, op, io_uring_prep_writev(sqe, fd, iov, n, off));
}

int urio__op_accept(urio__ring_t *r, urio__op_t *op, int fd, struct sockaddr *addr,
                    socklen_t *addrlen, int flags, bool multishot)
{
    if (multishot)
        PREP_OP(r, op, io_uring_prep_multishot_accept(sqe, fd, addr, addrlen, flags));
    PREP_OP(r, op, io_uring_prep_accept(sqe, fd, addr, addrlen, flags));
}

int urio__op_connect(urio__ring_t *r, urio__op_t *op, int fd, const struct sockaddr *addr,
                     socklen_t addrlen)
{
    PREP_OP(r, op, io_uring_prep_connect(sqe, fd, addr, addrlen));
}

int urio__op_socket(urio__ring_t *r, urio__op_t *op, int domain, int type, int protocol)
{
    PREP_OP(r, op, io_uring_prep_socket(sqe, domain, type, protocol, 0));
}

/*
 * bind and listen, as liburing 2.7 prepares them: bind's address in addr
 * and its length in addr2 (the offset's field); listen's backlog in len.
 */
int urio__op_bind(urio__ring_t *r, urio__op_t *op, int fd, const struct sockaddr *addr,
                  socklen_t addrlen)
{
    PREP_OP(r, op, io_uring_prep_rw((int)URIO__OP_BIND, sqe, fd, addr, 0, addrlen));
}

int urio__op_listen(urio__ring_t *r, urio__op_t *op, int fd, int backlog)
{
    PREP_OP(r, op, io_uring_prep_rw((int)URIO__OP_LISTEN, sqe, fd, NULL, (unsigned)backlog, 0));
}

int urio__op_shutdown(urio__ring_t *r, urio__op_t *op, int fd, int how)
{
    PREP_OP(r, op, io_uring_prep_shutdown(sqe, fd, how));
}

int urio__op_close(urio__ring_t *r, urio__op_t *op, int fd)
{
    PREP_OP(r, op, io_uring_prep_close(sqe, fd));
}

int urio__op_openat(urio__ring_t *r, urio__op_t *op, int dfd, const char *path, int flags,
                    unsigned mode)
{
    PREP_OP(r, op, io_uring_prep_openat(sqe, dfd, path, flags, mode));
}

int urio__op_fsync(urio__ring_t *r, urio__op_t *op, int fd, unsigned flags)
{
    PREP_OP(r, op, io_uring_prep_fsync(sqe, fd, flags));
}

int urio__op_fallocate(urio__ring_t *r, urio__op_t *op, int fd, int mode, uint64_t off,
                       uint64_t len)
{
    PREP_OP(r, op, io_uring_prep_fallocate(sqe, fd, mode, off, len));
}

int urio__op_statx(urio__ring_t *r, urio__op_t *op, int dfd, const char *path, int flags,
                   unsigned mask, struct statx *out)
{
    PREP_OP(r, op, io_uring_prep_statx(sqe, dfd, path, flags, mask, out));
}

int urio__op_unlinkat(urio__ring_t *r, urio__op_t *op, int dfd, const char *path, int flags)
{
    PREP_OP(r, op, io_uring_prep_unlinkat(sqe, dfd, path, flags));
}

int urio__op_renameat(urio__ring_t *r, urio__op_t *op, int olddfd, const char *oldpath,
                      int newdfd, const char *newpath, unsigned flags)
{
    PREP_OP(r, op, io_uring_prep_renameat(sqe, olddfd, oldpath, newdfd, newpath, flags));
}

int urio__op_mkdirat(urio__ring_t *r, urio__op_t *op, int dfd, const char *path, unsigned mode)
{
    PREP_OP(r, op, io_uring_prep_mkdirat(sqe, dfd, path, mode));
}

int urio__op_recv_multishot(urio__ring_t *r, urio__op_t *op, int fd, const urio__bufring_t *b,
                            int flags)
{
    PREP_OP(r, op, {
        io_uring_prep_recv_multishot(sqe, fd, NULL, 0, flags);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = b->bgid;
    });
}

/* ------------------------------------------------------------------ */
/* Provided buffers                                                     */

int urio__bufring_init(urio__ring_t *r, urio__bufring_t *b, uint16_t bgid, uint32_t nbufs,
                       uint32_t buf_size)
{
    memset(b, 0, sizeof *b);
    if (nbufs == 0 || nbufs > 32768 || (nbufs & (nbufs - 1)) != 0 || buf_size == 0)
        return -EINVAL;
    int ret = urio__ring_bind(r);
    if (ret < 0)
        return ret;
    /* The entries first, page-aligned as the kernel wants, then the buffers. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t ring_size = ((size_t)nbufs * sizeof(struct io_uring_buf) + page - 1) & ~(page - 1);
    size_t size = ring_size + (size_t)nbufs * buf_size;
    void *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        return -ENOMEM;
    b->map = map;
    b->map_size = size;
    b->br = map;
    b->bufs = (unsigned char *)map + ring_size;
    b->nbufs = nbufs;
    b->buf_size = buf_size;
    b->bgid = bgid;
    io_uring_buf_ring_init(b->br);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)b->br;
    reg.ring_entries = nbufs;
    reg.bgid = bgid;
    ret = io_uring_register_buf_ring(&r->uring, &reg, 0);
    if (ret < 0) {
        munmap(map, size);
        memset(b, 0, sizeof *b);
        return ret;
    }
    b->registered = true;
    int mask = io_uring_buf_ring_mask(nbufs);
    for (uint32_t i = 0; i < nbufs; i++)
        io_uring_buf_ring_add(b->br, urio__bufring_buf(b, i), buf_size, (unsigned short)i,
                              mask, (int)i);
    io_uring_buf_ring_advance(b->br, (int)nbufs);
    return 0;
}

void urio__bufring_exit(urio__ring_t *r, urio__bufring_t *b)
{
    if (b->map == NULL)
        return;
    /*
     * No receive is in flight by now (the ring was drained, or had nothing
     * in flight), so the kernel picks no more buffers; unregister where
     * this thread may, and the ring's teardown forgets the group otherwise.
     */
    if (b->registered && urio__ring_is_issuer(r))
        io_uring_unregister_buf_ring(&r->uring, b->bgid);
    munmap(b->map, b->map_size);
    memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------------------ */
/* Enter and reap                                                       */

int urio__ring_enter(urio__ring_t *r, int64_t wait_ns)
{
    int ret = urio__ring_bind(r);
    if (ret < 0)
        return ret;
    r->enters++;
    if (wait_ns == 0) {
        ret = io_uring_submit_and_get_events(&r->uring);
    } else if (wait_ns < 0) {
        ret = io_uring_submit_and_wait(&r->uring, 1);
    } else {
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {
            .tv_sec = wait_ns / 1000000000,
            .tv_nsec = wait_ns % 1000000000,
        };
        ret = io_uring_submit_and_wait_timeout(&r->uring, &cqe, 1, &ts, NULL);
    }
    /* What the kernel did not take stays queued, and counted. */
    r->sq_pending = io_uring_sq_ready(&r->uring);
    /*
     * A timeout, a signal, or a kernel that holds submissions back until the
     * CQ has room are all "reap and come back": the SQEs stay queued.
     */
    if (ret >= 0 || ret == -ETIME || ret == -EINTR || ret == -EAGAIN || ret == -EBUSY)
        return 0;
    return ret;
}

static void dispatch(urio__ring_t *r, uint64_t ud, int res, uint32_t flags)
{
    if (ud == 0)
        return;      /* a cancel request's own completion */
    uint32_t s = (uint32_t)ud;
    uint32_t gen = (uint32_t)(ud >> 32);
    if (URIO_UNLIKELY(s >= r->nops || r->ops[s].op == NULL || r->ops[s].gen != gen)) {
        /* Can't happen unless an op was reused before its final CQE: say so loudly. */
        urio__log(URIO_LOG_CRITICAL, "io_uring: completion for a stale op (slot %u, "
                  "generation %u, res %d): an op was released before its final CQE", s, gen, res);
        URIO_ASSERT(!"a CQE for a released op");
        return;
    }
    urio__op_t *op = r->ops[s].op;
    URIO_ASSERT(op->slot == s && op->state != URIO__OP_IDLE);
    if (!(flags & IORING_CQE_F_MORE)) {
        op_slot_release(r, s);
        op->state = URIO__OP_IDLE;
        r->inflight--;
    }
    op->complete(op, res, flags);    /* the op may be freed by its owner from here */
}

unsigned urio__ring_reap(urio__ring_t *r)
{
    enum { BATCH = 64 };
    unsigned total = 0;
    for (;;) {
        /*
         * Copy a batch out and release the CQ slots before dispatching, so a
         * completion that submits (and reaps, to make room) cannot see the
         * same CQE twice.
         */
        struct { uint64_t ud; int32_t res; uint32_t flags; } batch[BATCH];
        struct io_uring_cqe *cqes[BATCH];
        unsigned n = io_uring_peek_batch_cqe(&r->uring, cqes, BATCH);
        for (unsigned i = 0; i < n; i++) {
            batch[i].ud = cqes[i]->user_data;
            batch[i].res = cqes[i]->res;
            batch[i].flags = cqes[i]->flags;
        }
        if (n)
            io_uring_cq_advance(&r->uring, n);
        for (unsigned i = 0; i < n; i++)
            dispatch(r, batch[i].ud, batch[i].res, batch[i].flags);
        total += n;
        if (n == BATCH)
            continue;
        /* The kernel kept completions that did not fit: flush them into the CQ. */
        if (io_uring_cq_has_overflow(&r->uring) && r->enabled &&
            (!r->single_issuer || r->issuer == urio__thread_token())) {
            r->enters++;
            io_uring_get_events(&r->uring);
            if (io_uring_cq_ready(&r->uring))
                continue;
        }
        break;
    }
    r->cqes += total;
    r->last_reaped = total;
    return total;
}

/* ------------------------------------------------------------------ */
/* Closing                                                              */

void urio__ring_drain(urio__ring_t *r)
{
    for (uint32_t s = 1; s < r->nops; s++) {
        urio__op_t *op = r->ops[s].op;
        if (op != NULL && op->state == URIO__OP_INFLIGHT)
            urio__op_cancel(r, op);
    }
    uint64_t deadline = urio__now() + 10ull * 1000000000u;
    bool warned = false;
    while (r->inflight > 0) {
        int ret = urio__ring_enter(r, 100 * 1000000);
        urio__ring_reap(r);
        if (ret < 0) {
            urio__log(URIO_LOG_CRITICAL, "urio_loop_close(): io_uring_enter failed (%s) with "
                      "%u operations in flight; closing the ring anyway", urio_strerror(ret),
                      r->inflight);
            return;
        }
        if (!warned && urio__now() > deadline) {
            urio__log(URIO_LOG_WARNING, "urio_loop_close(): still waiting for %u cancelled "
                      "operations to complete after 10 s", r->inflight);
            warned = true;
        }
    }
}

void urio__ring_abandon(urio__ring_t *r)
{
    ring_unmap(r);
    for (uint32_t s = 1; s < r->nops; s++) {
        urio__op_t *op = r->ops[s].op;
        if (op == NULL)
            continue;
        r->ops[s].op = NULL;
        op->state = URIO__OP_IDLE;
        r->inflight--;
        op->complete(op, -ECANCELED, 0);
    }
    urio__free(r->ops);
    r->ops = NULL;
}
