/*
 * io_addr.c — addresses: formatting them for messages, and resolving
 * host:port.  A numeric host is parsed at once; a name goes to getaddrinfo
 * in the loop's default executor (as asyncio's loop.getaddrinfo does), so
 * the loop never blocks on DNS.
 *
 * The lookup's arguments live in a block the job reads on its worker.  When
 * the waiting task gives up (cancelled), the job may be queued, running or
 * over: the block then becomes an orphan of the loop's io state, freed once
 * the job says it is over (its `done` flag) or when the loop closes, after
 * its default executor has shut down (no job of it can run any more).
 */
#include "io.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

struct urio__resolve {
    struct urio__resolve *next;  /* io->orphans (loop thread) */
    atomic_bool done;            /* the job no longer touches this block (release/acquire) */
    struct addrinfo hints;
    char port[8];
    char host[];
};

const char *urio__addr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t n)
{
    char ip[INET6_ADDRSTRLEN];
    if (sa == NULL || len < sizeof(sa_family_t)) {
        snprintf(buf, n, "?");
    } else if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        snprintf(buf, n, "%s:%u", ip, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        snprintf(buf, n, "[%s]:%u", ip, ntohs(in6->sin6_port));
    } else if (sa->sa_family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)(const void *)sa;
        size_t plen = len > offsetof(struct sockaddr_un, sun_path)
                          ? len - offsetof(struct sockaddr_un, sun_path) : 0;
        if (plen == 0)
            snprintf(buf, n, "unix:(unnamed)");
        else if (un->sun_path[0] == '\0')
            snprintf(buf, n, "unix:@%.*s", (int)(plen - 1), un->sun_path + 1);
        else
            snprintf(buf, n, "unix:%.*s", (int)strnlen(un->sun_path, plen), un->sun_path);
    } else {
        snprintf(buf, n, "<family %d>", sa->sa_family);
    }
    return buf;
}

/* getaddrinfo's failure as an error code, and its message naming the host. */
static int lookup_error(int rc, const char *host, char *msg, size_t n)
{
    int err;
    switch (rc) {
    case EAI_NONAME:
#ifdef EAI_NODATA
    case EAI_NODATA:
#endif
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY:
#endif
        snprintf(msg, n, "no such host: '%s' (%s)", host, gai_strerror(rc));
        return URIO_ENOHOST;
    case EAI_AGAIN:
        err = -EAGAIN;
        break;
    case EAI_MEMORY:
        err = -ENOMEM;
        break;
    case EAI_SYSTEM:
        err = errno ? -errno : -EIO;
        break;
    default:
        err = -EINVAL;
        break;
    }
    snprintf(msg, n, "resolving '%s' failed: %s", host, gai_strerror(rc));
    return err;
}

/* The job, on a worker thread. */
static void *resolve_job(void *arg)
{
    struct urio__resolve *rs = arg;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(rs->host, rs->port, &rs->hints, &res);
    void *ret = res;
    if (rc != 0) {
        char msg[400];
        int err = lookup_error(rc, rs->host, msg, sizeof msg);
        ret = urio_executor_fail(err, "%s", msg);
    }
    /* Last touch of rs: from here the loop may free it. */
    atomic_store_explicit(&rs->done, true, memory_order_release);
    return ret;
}

static void free_addrinfo(void *p)
{
    freeaddrinfo(p);
}

void urio__resolve_sweep(urio__io_t *io, bool all)
{
    struct urio__resolve **pp = &io->orphans;
    while (*pp) {
        struct urio__resolve *rs = *pp;
        if (all || atomic_load_explicit(&rs->done, memory_order_acquire)) {
            *pp = rs->next;
            urio__free(rs);
        } else {
            pp = &rs->next;
        }
    }
}

int urio__resolve(const char *host, int port, bool passive, uint64_t deadline,
                  struct addrinfo **out)
{
    *out = NULL;
    urio__task_t *t = urio__task_running();
    if (t == NULL)
        return -EPERM;
    if (port < 0 || port > 65535)
        return urio__io_fail(-EINVAL, "port %d is out of range (0..65535)", port);
    if (host != NULL && host[0] == '\0')
        host = NULL;
    if (host == NULL && !passive)
        return urio__io_fail(-EINVAL, "no host to connect to");
    size_t hlen = host ? strlen(host) : 0;
    if (hlen > 253)
        return urio__io_fail(-EINVAL, "host name too long (%zu bytes)", hlen);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = (passive ? AI_PASSIVE : 0) | AI_NUMERICSERV;
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%d", port);

    /* A numeric host (or the wildcard) needs no lookup: parse it here. */
    hints.ai_flags |= AI_NUMERICHOST;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc == 0) {
        *out = res;
        return 0;
    }
    if (rc != EAI_NONAME) {
        char msg[400];
        int err = lookup_error(rc, host ? host : "*", msg, sizeof msg);
        return urio__io_fail(err, "%s", msg);
    }
    hints.ai_flags &= ~AI_NUMERICHOST;

    urio__io_t *io = urio__io_get(t->loop);
    if (io == NULL)
        return -ENOMEM;
    urio__resolve_sweep(io, false);
    struct urio__resolve *rs = urio__calloc(1, sizeof *rs + hlen + 1);
    if (rs == NULL)
        return -ENOMEM;
    rs->hints = hints;
    memcpy(rs->port, portstr, sizeof portstr);
    memcpy(rs->host, host, hlen + 1);
    atomic_init(&rs->done, false);
    urio_job_opts_t jo = { .free_result = free_addrinfo };
    urio_future_t *f = urio_run_in_executor_opts(t->loop, NULL, resolve_job, rs, &jo);
    if (f == NULL) {
        int err = -errno;
        urio__free(rs);
        return urio__io_fail(err, "resolving '%s': %s", host, urio_strerror(err));
    }
    void *v = NULL;
    int err;
    if (deadline == 0) {
        err = urio_await(f, &v);
    } else {
        uint64_t now = urio__loop_now(urio_future_loop(f));
        err = urio_wait_for(f, deadline > now ? deadline - now : 0, &v);
    }
    if (err == 0) {
        *out = v;
    } else if (err == -ETIMEDOUT) {
        urio__io_fail(err, "resolving '%s' timed out", host);
    } else if (err != -ECANCELED) {
        const char *m = urio_future_error_message(f);
        urio__io_fail(err, "%s", m ? m : urio_strerror(err));
    } else if (urio_future_result(f, &v) == 0 && v != NULL) {
        freeaddrinfo(v);            /* the lookup finished, but its task was cancelled */
    }
    urio_future_unref(f);
    if ((err == -ECANCELED || err == -ETIMEDOUT) &&
        !atomic_load_explicit(&rs->done, memory_order_acquire)) {
        rs->next = io->orphans;     /* the job may still read it */
        io->orphans = rs;
    } else {
        urio__free(rs);
    }
    return err;
}
