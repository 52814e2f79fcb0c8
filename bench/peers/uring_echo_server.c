/*
 * peers/uring_echo_server.c — a hand-written liburing echo server, one
 * thread: the floor of the echo benchmark (bench/io/echo.c), what io_uring
 * costs with nothing between the application and liburing.  Command line
 * in echo_cli.h.
 *
 * The ring is set up IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
 * (completions run only when this thread asks for them: no interrupts of
 * the loop, batched task work), its fd registered.  One multishot accept; per connection one
 * multishot recv selecting its buffers from a provided buffer ring (no
 * buffer is tied up by an idle connection).  What a recv filled is sent
 * back from that very buffer, which goes back to the ring when its send
 * has completed: no copy.  A connection has at most one send in flight
 * (two sends on one socket may complete out of order once one of them
 * waits for space); later buffers wait in a per-connection list linked
 * through the buffer ids.
 *
 * liburing 2.3 has io_uring_register_buf_ring but not
 * io_uring_setup_buf_ring: the ring is mapped and registered here by hand.
 */
#include "echo_cli.h"

#include <liburing.h>
#include <poll.h>
#include <sys/mman.h>

enum {
    SQ_ENTRIES = 1024,
    CQ_ENTRIES = 8192,
    NBUFS = 1024,          /* a power of two */
    BUF_SIZE = 4096,
    BGID = 0,
};

enum op { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_SIGNAL };

/* user_data: the fd in the high bits, the op in the low byte. */
static inline uint64_t tag(int fd, enum op op)
{
    return (uint64_t)(unsigned)fd << 8 | op;
}

/* Indexed by fd.  A slot is reused only after close(2), which happens only
 * once none of its operations can complete any more: a CQE always finds the
 * connection it was submitted for. */
typedef struct conn {
    bool recv_armed;           /* a multishot recv is in the kernel */
    bool send_inflight;        /* the send of `head` is in the kernel */
    bool rearm;                /* recv stopped for want of buffers: arm again */
    bool dead;                 /* EOF or error seen: close once idle */
    int head, tail;            /* queued buffer ids, -1: none */
    unsigned sent;             /* bytes of head already sent */
} conn_t;

static const echo_cli_t *cli;
static struct io_uring ring;
static struct io_uring_buf_ring *br;
static char *bufs;
static int next_bid[NBUFS];    /* the queue of a connection, linked by bid */
static unsigned buf_len[NBUFS];
static int bufs_to_return;     /* added to the ring since the last advance */
static conn_t *conns;
static size_t n_conns;
static int *rearm_list;        /* fds whose recv is to be armed again */
static size_t n_rearm;

static struct io_uring_sqe *get_sqe(void)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (!sqe) {
        io_uring_submit(&ring);
        sqe = io_uring_get_sqe(&ring);
        if (!sqe)
            echo_cli_die(cli, "no SQE after submitting");
    }
    return sqe;
}

static void arm_accept(int lfd)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, tag(lfd, OP_ACCEPT));
}

static void arm_recv(int fd)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, tag(fd, OP_RECV));
    conns[fd].recv_armed = true;
}

static void start_send(int fd)
{
    conn_t *c = &conns[fd];
    int bid = c->head;
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_send(sqe, fd, bufs + (size_t)bid * BUF_SIZE + c->sent, buf_len[bid] - c->sent,
                       MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, tag(fd, OP_SEND));
    c->send_inflight = true;
}

static void return_buf(int bid)
{
    io_uring_buf_ring_add(br, bufs + (size_t)bid * BUF_SIZE, BUF_SIZE, (unsigned short)bid,
                          io_uring_buf_ring_mask(NBUFS), bufs_to_return++);
}

/* Pops the head of c's queue and gives its buffer back. */
static void pop_head(conn_t *c)
{
    int bid = c->head;
    c->head = next_bid[bid];
    if (c->head < 0)
        c->tail = -1;
    c->sent = 0;
    return_buf(bid);
}

static void maybe_close(int fd)
{
    conn_t *c = &conns[fd];
    if (!c->dead || c->recv_armed || c->send_inflight || c->rearm)
        return;
    while (c->head >= 0)
        pop_head(c);
    close(fd);
}

static void conn_new(int fd)
{
    if ((size_t)fd >= n_conns) {
        size_t n = n_conns ? n_conns : 64;
        while (n <= (size_t)fd)
            n *= 2;
        conn_t *grown = realloc(conns, n * sizeof *conns);
        int *rl = realloc(rearm_list, n * sizeof *rearm_list);
        if (!grown || !rl)
            echo_cli_die(cli, "out of memory");
        conns = grown;
        rearm_list = rl;
        n_conns = n;
    }
    conns[fd] = (conn_t){ .head = -1, .tail = -1 };
    echo_cli_nodelay(fd);
    arm_recv(fd);
}

static void on_recv(int fd, int res, unsigned flags)
{
    conn_t *c = &conns[fd];
    bool more = flags & IORING_CQE_F_MORE;
    if (!more)
        c->recv_armed = false;
    if (res > 0) {
        int bid = (int)(flags >> IORING_CQE_BUFFER_SHIFT);
        buf_len[bid] = (unsigned)res;
        next_bid[bid] = -1;
        if (c->tail >= 0)
            next_bid[c->tail] = bid;
        else
            c->head = bid;
        c->tail = bid;
        if (!c->send_inflight)
            start_send(fd);
        if (!more && !c->dead) {   /* the kernel ended the multishot (CQ pressure) */
            c->rearm = true;
            rearm_list[n_rearm++] = fd;
        }
        return;
    }
    if (res == -ENOBUFS && !c->dead) {
        /* Armed again after this batch, once sent buffers are back. */
        c->rearm = true;
        rearm_list[n_rearm++] = fd;
        return;
    }
    /* EOF or an error: the multishot has ended. */
    c->dead = true;
    maybe_close(fd);
}

static void on_send(int fd, int res)
{
    conn_t *c = &conns[fd];
    c->send_inflight = false;
    if (res < 0) {
        /* The peer is gone: wake our recv so that it ends, then close. */
        c->dead = true;
        shutdown(fd, SHUT_RDWR);
        maybe_close(fd);
        return;
    }
    c->sent += (unsigned)res;
    if (c->sent < buf_len[c->head]) {   /* short send: the rest */
        start_send(fd);
        return;
    }
    pop_head(c);
    if (c->head >= 0)
        start_send(fd);
    else
        maybe_close(fd);
}

static void setup_buf_ring(void)
{
    size_t ring_size = NBUFS * sizeof(struct io_uring_buf);
    br = mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br == MAP_FAILED)
        echo_cli_die(cli, "mmap: %s", strerror(errno));
    io_uring_buf_ring_init(br);
    struct io_uring_buf_reg reg = { .ring_addr = (uint64_t)(uintptr_t)br,
                                    .ring_entries = NBUFS, .bgid = BGID };
    int err = io_uring_register_buf_ring(&ring, &reg, 0);
    if (err < 0)
        echo_cli_die(cli, "io_uring_register_buf_ring: %s", strerror(-err));
    bufs = mmap(NULL, (size_t)NBUFS * BUF_SIZE, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (bufs == MAP_FAILED)
        echo_cli_die(cli, "mmap: %s", strerror(errno));
    for (int bid = 0; bid < NBUFS; bid++)
        return_buf(bid);
    io_uring_buf_ring_advance(br, bufs_to_return);
    bufs_to_return = 0;
}

int main(int argc, char **argv)
{
    static echo_cli_t opts;
    echo_cli_parse(&opts, argc, argv);
    cli = &opts;

    int sfd = echo_cli_signalfd(cli);
    int lfd = echo_cli_listen(cli, 0);

    struct io_uring_params p = {
        .flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE,
        .cq_entries = CQ_ENTRIES,
    };
    int err = io_uring_queue_init_params(SQ_ENTRIES, &ring, &p);
    if (err < 0)
        echo_cli_die(cli, "io_uring_queue_init_params (SINGLE_ISSUER|DEFER_TASKRUN): %s",
                     strerror(-err));
    /* io_uring_enter without an fd lookup each time (5.18+; without it, a
     * little slower, still correct). */
    io_uring_register_ring_fd(&ring);
    setup_buf_ring();

    arm_accept(lfd);
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_poll_add(sqe, sfd, POLLIN);
    io_uring_sqe_set_data64(sqe, tag(sfd, OP_SIGNAL));
    echo_cli_announce(cli, lfd);

    for (bool stop = false; !stop;) {
        err = io_uring_submit_and_wait(&ring, 1);
        if (err < 0 && err != -EINTR)
            echo_cli_die(cli, "io_uring_submit_and_wait: %s", strerror(-err));
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            int fd = (int)(cqe->user_data >> 8);
            switch ((enum op)(cqe->user_data & 0xff)) {
            case OP_RECV:
                on_recv(fd, cqe->res, cqe->flags);
                break;
            case OP_SEND:
                on_send(fd, cqe->res);
                break;
            case OP_ACCEPT:
                if (cqe->res >= 0)
                    conn_new(cqe->res);
                else if (cqe->res != -ECANCELED)
                    fprintf(stderr, "%s: accept: %s\n", cli->prog, strerror(-cqe->res));
                if (!(cqe->flags & IORING_CQE_F_MORE))
                    arm_accept(lfd);
                break;
            case OP_SIGNAL:
                stop = true;
                break;
            }
        }
        io_uring_cq_advance(&ring, seen);
        /* Buffers sent back during the batch become the kernel's again
         * before any recv is re-armed, then in the next submit. */
        if (bufs_to_return) {
            io_uring_buf_ring_advance(br, bufs_to_return);
            bufs_to_return = 0;
        }
        for (size_t i = 0; i < n_rearm; i++) {
            int fd = rearm_list[i];
            conns[fd].rearm = false;
            if (conns[fd].dead)
                maybe_close(fd);
            else
                arm_recv(fd);
        }
        n_rearm = 0;
    }
    /* Open connections are closed by exit. */
    io_uring_queue_exit(&ring);
    close(lfd);
    if (cli->unix_path)
        unlink(cli->unix_path);
    return 0;
}
