/*
 * zc_probe.c — does zero-copy send (IORING_OP_SEND_ZC) pay on this machine?
 * A program of its own (bench/meson.build: urio-zc-probe), liburing only,
 * measuring the kernel operations urio's stream write path would choose
 * between (lib/io_stream.c: one send in flight per stream, MSG_WAITALL):
 *
 *   urio-zc-probe [--quick] [--runs N] [--seconds S] [--sizes 4096,65536,...]
 *                 [--transport tcp|unix|both | --connect HOST:PORT] [--verbose]
 *   urio-zc-probe --sink PORT
 *
 * For each transport (TCP over 127.0.0.1, an AF_UNIX stream socketpair) and
 * each size, R runs of each mode, the modes' order rotating from run to run:
 *
 *   send      IORING_OP_SEND of the whole buffer, the next one submitted when
 *             its CQE comes (what urio does today);
 *   zc        IORING_OP_SEND_ZC, the next send submitted at the send's own
 *             CQE, the notification (IORING_CQE_F_NOTIF) reaped whenever it
 *             comes: the best zero-copy can do (the buffer is reused before
 *             the kernel let go of it, harmless here: its bytes never change);
 *   zc-wait   IORING_OP_SEND_ZC, the next send only after the notification:
 *             what a stream that must reuse or free its buffer has to do.
 *
 * A receiver thread drains the other end with blocking recv(2) into 1 MiB.
 * Each run warms up for a tenth of S, then measures S seconds: throughput
 * (MiB/s of sends completed) and the sender's CPU per MiB: the process's
 * CPU clock minus the receiver thread's over the same window (so it counts
 * the sending thread and any io-wq worker; the softirq work of loopback
 * delivery lands on whichever thread's context runs it, usually the
 * sender's).  The table gives the median and min–max over the runs and the
 * median (min–max) of the per-run CPU ratio zc/send (< 1: zero-copy pays).
 *
 * Support is probed and reported: the opcode (io_uring_get_probe_ring),
 * then one SEND_ZC on each transport (a kernel or a socket family without
 * zero-copy answers -EINVAL / -EOPNOTSUPP in the CQE).  With
 * IORING_SEND_ZC_REPORT_USAGE (6.2) each notification says whether the
 * kernel copied the data after all: the "copied" column counts those.  On
 * loopback it does: a zero-copy skb delivered to a local socket has its
 * pages copied on the way in (skb_orphan_frags_rx), so loopback shows the
 * cost of zero-copy's bookkeeping, never its gain on a NIC.
 *
 * Over a real NIC: run "urio-zc-probe --sink PORT" on another host (it
 * drains every connection, forever) and "--connect HOST:PORT" here: the
 * "nic" rows then send to it, and the CPU columns are this process's alone.
 *
 * Output: the table on stdout; with --verbose, one line per run on stderr.
 */
#include <errno.h>
#include <stdarg.h>
#include <liburing.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Kernel 6.2's, newer than Debian 12's liburing 2.3 headers. */
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif

enum mode { M_SEND, M_ZC, M_ZC_WAIT, NMODES };
static const char *const mode_name[NMODES] = { "send", "zc", "zc-wait" };
enum transport { T_TCP, T_UNIX, T_REMOTE, NTRANSPORTS };
static const char *const transport_name[NTRANSPORTS] = { "tcp", "unix", "remote" };

#define MAX_SIZES 16
#define MAX_RUNS 64
#define RECV_BUF (1u << 20)

static struct {
    unsigned runs;
    double seconds;
    size_t sizes[MAX_SIZES];
    unsigned nsizes;
    bool transports[NTRANSPORTS];
    bool verbose;
    const char *remote_host, *remote_port;    /* --connect HOST:PORT */
} opt = {
    .runs = 5,
    .seconds = 1.0,
    .sizes = { 4096, 16384, 65536, 262144, 1048576 },
    .nsizes = 5,
    .transports = { true, true, false },
};

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("urio-zc-probe: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static double clock_s(clockid_t c)
{
    struct timespec ts;
    if (clock_gettime(c, &ts) != 0)
        die("clock_gettime: %s", strerror(errno));
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ */
/* The connection and its receiver                                      */

typedef struct receiver {
    int fd;
    pthread_t thread;
    clockid_t cpu;
    uint64_t bytes;
} receiver_t;

static void *receive_all(void *arg)
{
    receiver_t *rc = arg;
    unsigned char *buf = malloc(RECV_BUF);
    if (buf == NULL)
        die("out of memory");
    for (;;) {
        ssize_t n = recv(rc->fd, buf, RECV_BUF, 0);
        if (n > 0) {
            rc->bytes += (uint64_t)n;
        } else if (n == 0) {
            break;
        } else if (errno == ECONNRESET) {
            break;
        } else if (errno != EINTR) {
            die("recv: %s", strerror(errno));
        }
    }
    free(buf);
    return NULL;
}

/* A TCP connection to --connect's sink (another host's urio-zc-probe --sink). */
static int connect_remote(void)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
    int err = getaddrinfo(opt.remote_host, opt.remote_port, &hints, &ai);
    if (err != 0)
        die("%s: %s", opt.remote_host, gai_strerror(err));
    int fd = -1;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0)
        die("connect to %s:%s: %s", opt.remote_host, opt.remote_port, strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/*
 * A connected pair: *snd for the sender, *rcv for the receiver (-1 for the
 * remote transport: the sink on the other host receives).
 */
static void connect_pair(enum transport t, int *snd, int *rcv)
{
    if (t == T_REMOTE) {
        *snd = connect_remote();
        *rcv = -1;
        return;
    }
    if (t == T_UNIX) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
            die("socketpair: %s", strerror(errno));
        *snd = sv[0];
        *rcv = sv[1];
        return;
    }
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
        getsockname(l, (struct sockaddr *)&a, &alen) != 0)
        die("listen on 127.0.0.1: %s", strerror(errno));
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a) != 0)
        die("connect: %s", strerror(errno));
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (s < 0)
        die("accept: %s", strerror(errno));
    close(l);
    int one = 1;    /* as urio's streams have it */
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *snd = c;
    *rcv = s;
}

static void receiver_start(receiver_t *rc, int fd)
{
    memset(rc, 0, sizeof *rc);
    rc->fd = fd;
    if (fd < 0)
        return;         /* the remote transport: no receiver here */
    int err = pthread_create(&rc->thread, NULL, receive_all, rc);
    if (err != 0)
        die("pthread_create: %s", strerror(err));
    if ((err = pthread_getcpuclockid(rc->thread, &rc->cpu)) != 0)
        die("pthread_getcpuclockid: %s", strerror(err));
}

/* ------------------------------------------------------------------ */
/* The sender                                                           */

static void ring_init(struct io_uring *ring)
{
    /* As urio's loops set theirs up (lib/ring.c), where the kernel has it. */
    struct io_uring_params p = { .flags = IORING_SETUP_SINGLE_ISSUER |
                                          IORING_SETUP_DEFER_TASKRUN };
    if (io_uring_queue_init_params(64, ring, &p) == 0)
        return;
    int err = io_uring_queue_init(64, ring, 0);
    if (err < 0)
        die("io_uring_queue_init: %s", strerror(-err));
}

static struct io_uring_cqe *wait_cqe(struct io_uring *ring)
{
    struct io_uring_cqe *cqe;
    int err;
    while ((err = io_uring_wait_cqe(ring, &cqe)) == -EINTR)
        ;
    if (err < 0)
        die("io_uring_wait_cqe: %s", strerror(-err));
    return cqe;
}

typedef struct sender {
    struct io_uring ring;
    int fd;
    const unsigned char *buf;
    size_t size;
    enum mode mode;
    unsigned notifs_pending;    /* SEND_ZC notifications still to come */
    uint64_t notifs, copied;    /* notifications seen, those saying "copied" */
} sender_t;

/* Sends the buffer once, as `mode` does.  Returns the send's result (the byte count). */
static int send_once(sender_t *s)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    if (s->mode == M_SEND)
        io_uring_prep_send(sqe, s->fd, s->buf, s->size, MSG_NOSIGNAL | MSG_WAITALL);
    else
        io_uring_prep_send_zc(sqe, s->fd, s->buf, s->size, MSG_NOSIGNAL | MSG_WAITALL,
                              IORING_SEND_ZC_REPORT_USAGE);
    sqe->user_data = 1;
    io_uring_submit(&s->ring);
    int res = INT32_MIN;
    while (res == INT32_MIN || (s->mode == M_ZC_WAIT && s->notifs_pending > 0)) {
        struct io_uring_cqe *cqe = wait_cqe(&s->ring);
        if (cqe->flags & IORING_CQE_F_NOTIF) {
            s->notifs_pending--;
            s->notifs++;
            if ((uint32_t)cqe->res & IORING_NOTIF_USAGE_ZC_COPIED)
                s->copied++;
        } else {
            res = cqe->res;
            if (cqe->flags & IORING_CQE_F_MORE)
                s->notifs_pending++;
        }
        io_uring_cqe_seen(&s->ring, cqe);
    }
    return res;
}

/* Reaps the notifications still to come. */
static void sender_settle(sender_t *s)
{
    while (s->notifs_pending > 0) {
        struct io_uring_cqe *cqe = wait_cqe(&s->ring);
        if (cqe->flags & IORING_CQE_F_NOTIF) {
            s->notifs_pending--;
            s->notifs++;
            if ((uint32_t)cqe->res & IORING_NOTIF_USAGE_ZC_COPIED)
                s->copied++;
        }
        io_uring_cqe_seen(&s->ring, cqe);
    }
}

/* ------------------------------------------------------------------ */
/* Support                                                              */

/* One SEND_ZC of 4 KiB on a fresh pair: 0, or the CQE's negative errno. */
static int zc_try(enum transport t, bool *copied_reported)
{
    int snd, rcv;
    connect_pair(t, &snd, &rcv);
    static unsigned char buf[4096];
    sender_t s = { .fd = snd, .buf = buf, .size = sizeof buf, .mode = M_ZC_WAIT };
    ring_init(&s.ring);
    int res = send_once(&s);
    *copied_reported = s.copied > 0;
    io_uring_queue_exit(&s.ring);
    close(snd);
    if (rcv >= 0)
        close(rcv);
    return res == (int)sizeof buf ? 0 : res < 0 ? res : -EIO;
}

/* ------------------------------------------------------------------ */
/* Runs and the table                                                   */

typedef struct result {
    double mib_s, cpu_us_per_mib, total_us_per_mib, copied_share;
} result_t;

static result_t run_once(enum transport t, enum mode m, size_t size, const unsigned char *buf)
{
    int snd, rcv;
    connect_pair(t, &snd, &rcv);
    receiver_t rc;
    receiver_start(&rc, rcv);
    sender_t s = { .fd = snd, .buf = buf, .size = size, .mode = m };
    ring_init(&s.ring);

    double warm_end = clock_s(CLOCK_MONOTONIC) + opt.seconds / 10;
    while (clock_s(CLOCK_MONOTONIC) < warm_end)
        if (send_once(&s) != (int)size)
            die("%s %s of %zu bytes failed", transport_name[t], mode_name[m], size);
    sender_settle(&s);
    s.notifs = s.copied = 0;

    double w0 = clock_s(CLOCK_MONOTONIC), p0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    double r0 = rcv >= 0 ? clock_s(rc.cpu) : 0;
    double end = w0 + opt.seconds;
    uint64_t bytes = 0;
    do {
        int res = send_once(&s);
        if (res != (int)size)
            die("%s %s of %zu bytes gave %d", transport_name[t], mode_name[m], size, res);
        bytes += size;
    } while (clock_s(CLOCK_MONOTONIC) < end);
    sender_settle(&s);
    double w1 = clock_s(CLOCK_MONOTONIC), p1 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    double r1 = rcv >= 0 ? clock_s(rc.cpu) : 0;

    shutdown(snd, SHUT_WR);
    if (rcv >= 0)
        pthread_join(rc.thread, NULL);
    io_uring_queue_exit(&s.ring);
    close(snd);
    if (rcv >= 0)
        close(rcv);

    double mib = (double)bytes / (1024.0 * 1024.0);
    result_t r = {
        .mib_s = mib / (w1 - w0),
        .cpu_us_per_mib = ((p1 - p0) - (r1 - r0)) * 1e6 / mib,
        .total_us_per_mib = (p1 - p0) * 1e6 / mib,
        .copied_share = s.notifs ? (double)s.copied / (double)s.notifs : -1,
    };
    if (opt.verbose)
        fprintf(stderr, "  %-4s %8zu %-7s %9.1f MiB/s  sender %7.1f us/MiB  receiver %7.1f "
                "us/MiB  notifs %llu copied %llu\n", transport_name[t], size, mode_name[m],
                r.mib_s, r.cpu_us_per_mib, (r1 - r0) * 1e6 / mib,
                (unsigned long long)s.notifs, (unsigned long long)s.copied);
    return r;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median, min and max of v[0..n-1] (sorted in place). */
static void stats(double *v, unsigned n, double *med, double *lo, double *hi)
{
    qsort(v, n, sizeof *v, cmp_double);
    *med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    *lo = v[0];
    *hi = v[n - 1];
}

static void parse_sizes(char *arg)
{
    opt.nsizes = 0;
    for (char *tok = strtok(arg, ","); tok; tok = strtok(NULL, ",")) {
        char *e;
        unsigned long long v = strtoull(tok, &e, 10);
        if (*e == 'k' || *e == 'K')
            v *= 1024, e++;
        else if (*e == 'm' || *e == 'M')
            v *= 1024 * 1024, e++;
        if (*e != '\0' || v == 0 || v > (1u << 30) || opt.nsizes == MAX_SIZES)
            die("--sizes: '%s' is not a size from 1 to 1G (at most %d sizes)", tok, MAX_SIZES);
        opt.sizes[opt.nsizes++] = (size_t)v;
    }
}

static void usage(void)
{
    fputs("usage: urio-zc-probe [--quick] [--runs N] [--seconds S] [--sizes 4k,64k,1m]\n"
          "                     [--transport tcp|unix|both | --connect HOST:PORT] [--verbose]\n"
          "       urio-zc-probe --sink PORT     (on the other host: drain every connection)\n",
          stderr);
    exit(2);
}

/* --sink PORT: accepts connections forever, each drained by a thread of its own. */
static void *sink_conn(void *arg)
{
    receiver_t *rc = arg;
    receive_all(rc);
    close(rc->fd);
    free(rc);
    return NULL;
}

static int sink(const char *port)
{
    int l = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0), zero = 0, one = 1;
    struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)atoi(port)) };
    setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 16) != 0)
        die("listen on port %s: %s", port, strerror(errno));
    printf("urio-zc-probe: sink listening on [::]:%s\n", port);
    fflush(stdout);
    for (;;) {
        int fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            die("accept: %s", strerror(errno));
        }
        receiver_t *rc = calloc(1, sizeof *rc);
        pthread_t th;
        if (rc == NULL)
            die("out of memory");
        rc->fd = fd;
        if (pthread_create(&th, NULL, sink_conn, rc) != 0)
            die("pthread_create failed");
        pthread_detach(th);
    }
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--quick") == 0) {
            opt.runs = 3;
            opt.seconds = 0.3;
        } else if (strcmp(a, "--runs") == 0 && v) {
            opt.runs = (unsigned)atoi(v), i++;
            if (opt.runs < 1 || opt.runs > MAX_RUNS)
                die("--runs: 1 to %d", MAX_RUNS);
        } else if (strcmp(a, "--seconds") == 0 && v) {
            opt.seconds = atof(v), i++;
            if (!(opt.seconds > 0 && opt.seconds <= 60))
                die("--seconds: more than 0, at most 60");
        } else if (strcmp(a, "--sizes") == 0 && v) {
            char *copy = strdup(v);
            parse_sizes(copy);
            free(copy);
            i++;
        } else if (strcmp(a, "--transport") == 0 && v) {
            bool tcp = strcmp(v, "tcp") == 0, un = strcmp(v, "unix") == 0,
                 both = strcmp(v, "both") == 0;
            if (!tcp && !un && !both)
                usage();
            opt.transports[T_TCP] = tcp || both;
            opt.transports[T_UNIX] = un || both;
            i++;
        } else if (strcmp(a, "--sink") == 0 && v) {
            return sink(v);
        } else if (strcmp(a, "--connect") == 0 && v) {
            char *hp = strdup(v), *colon = hp ? strrchr(hp, ':') : NULL;
            if (colon == NULL || colon == hp || colon[1] == '\0')
                die("--connect wants HOST:PORT, not '%s'", v);
            *colon = '\0';
            if (hp[0] == '[' && colon[-1] == ']') {      /* [v6addr]:port */
                colon[-1] = '\0';
                memmove(hp, hp + 1, strlen(hp));
            }
            opt.remote_host = hp;
            opt.remote_port = colon + 1;
            opt.transports[T_TCP] = opt.transports[T_UNIX] = false;
            opt.transports[T_REMOTE] = true;
            i++;
        } else if (strcmp(a, "--verbose") == 0) {
            opt.verbose = true;
        } else {
            usage();
        }
    }

    /* Support: the opcode, then each transport. */
    struct io_uring probe_ring;
    ring_init(&probe_ring);
    struct io_uring_probe *p = io_uring_get_probe_ring(&probe_ring);
    bool op_ok = p != NULL && io_uring_opcode_supported(p, IORING_OP_SEND_ZC);
    if (p)
        io_uring_free_probe(p);
    io_uring_queue_exit(&probe_ring);
    printf("IORING_OP_SEND_ZC: %s\n", p == NULL ? "probe refused (unknown)"
                                      : op_ok ? "supported" : "not supported by this kernel");
    bool zc_ok[NTRANSPORTS] = { false, false, false };
    for (int t = 0; t < NTRANSPORTS; t++) {
        if (!opt.transports[t])
            continue;
        bool copied = false;
        int err = zc_try(t, &copied);
        zc_ok[t] = err == 0;
        if (err == 0)
            printf("  %-4s: SEND_ZC works%s\n", transport_name[t],
                   copied ? "; the kernel reports it COPIED the data (no zero-copy here)" : "");
        else
            printf("  %-4s: SEND_ZC refused: %s (%s): plain send only\n", transport_name[t],
                   strerrorname_np(-err) ? strerrorname_np(-err) : "?", strerror(-err));
    }

    size_t max = 0;
    for (unsigned i = 0; i < opt.nsizes; i++)
        max = opt.sizes[i] > max ? opt.sizes[i] : max;
    unsigned char *buf = malloc(max);
    if (buf == NULL)
        die("out of memory");
    for (size_t i = 0; i < max; i++)
        buf[i] = (unsigned char)(i * 131 + 7);

    printf("\n%u runs of %.2f s each (after %.2f s of warm-up), one send in flight; "
           "median [min-max]\n", opt.runs, opt.seconds, opt.seconds / 10);
    printf("%-4s %8s %-7s %20s %24s %24s %7s %18s %18s\n", "", "size", "mode", "MiB/s",
           "sender CPU us/MiB", "total CPU us/MiB", "copied", "sender zc/send",
           "total zc/send");
    fflush(stdout);
    unsigned run_no = 0;
    for (int t = 0; t < NTRANSPORTS; t++) {
        if (!opt.transports[t])
            continue;
        int nmodes = zc_ok[t] ? NMODES : 1;
        for (unsigned si = 0; si < opt.nsizes; si++) {
            size_t size = opt.sizes[si];
            double tput[NMODES][MAX_RUNS], cpu[NMODES][MAX_RUNS], cop[NMODES][MAX_RUNS];
            double ratio[NMODES][MAX_RUNS], tot[NMODES][MAX_RUNS], tratio[NMODES][MAX_RUNS];
            for (unsigned r = 0; r < opt.runs; r++, run_no++) {
                for (int k = 0; k < nmodes; k++) {
                    int m = (int)((k + run_no) % (unsigned)nmodes);    /* rotate the order */
                    result_t res = run_once(t, m, size, buf);
                    tput[m][r] = res.mib_s;
                    cpu[m][r] = res.cpu_us_per_mib;
                    tot[m][r] = res.total_us_per_mib;
                    cop[m][r] = res.copied_share;
                }
                for (int m = 0; m < nmodes; m++) {
                    ratio[m][r] = cpu[m][r] / cpu[M_SEND][r];
                    tratio[m][r] = tot[m][r] / tot[M_SEND][r];
                }
            }
            for (int m = 0; m < nmodes; m++) {
                double tm, tl, th, cm, cl, ch, rm, rl, rh, pm, pl, ph, om, ol, oh, qm, ql, qh;
                stats(tput[m], opt.runs, &tm, &tl, &th);
                stats(cpu[m], opt.runs, &cm, &cl, &ch);
                stats(ratio[m], opt.runs, &rm, &rl, &rh);
                stats(cop[m], opt.runs, &pm, &pl, &ph);
                stats(tot[m], opt.runs, &om, &ol, &oh);
                stats(tratio[m], opt.runs, &qm, &ql, &qh);
                char copied[16] = "-";
                if (m != M_SEND)
                    snprintf(copied, sizeof copied, "%.0f%%", pm * 100);
                char rs[40] = "-", qs[40] = "-";
                if (m != M_SEND) {
                    snprintf(rs, sizeof rs, "%.2f [%.2f-%.2f]", rm, rl, rh);
                    snprintf(qs, sizeof qs, "%.2f [%.2f-%.2f]", qm, ql, qh);
                }
                printf("%-4s %8zu %-7s %6.0f [%5.0f-%5.0f] %8.1f [%6.1f-%6.1f] "
                       "%8.1f [%6.1f-%6.1f] %7s %18s %18s\n", transport_name[t], size,
                       mode_name[m], tm, tl, th, cm, cl, ch, om, ol, oh, copied, rs, qs);
            }
            fflush(stdout);
        }
    }
    printf("\nsender CPU = the process's CPU clock minus the receiver thread's, per MiB sent "
           "(ns/byte = us/MiB / 1048.576);\ntotal CPU = the whole process's (sender and "
           "receiver: on loopback the copy may land on either side).\n"
           "copied = share of SEND_ZC notifications saying the kernel copied the data "
           "(IORING_NOTIF_USAGE_ZC_COPIED).\n");
    free(buf);
    return 0;
}
