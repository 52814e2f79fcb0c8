/*
 * io_ops.c — the public I/O operations (urio/io.h), each in its two forms:
 * urio_<op> runs it in the calling task, urio_<op>_submit gives its future.
 * Both only describe the operation; io.c runs it.
 */
#include "io.h"

#include <fcntl.h>
#include <limits.h>

/* A buffer's length as the engine checks it: over INT_MAX is refused, not truncated. */
#define LEN(n) ((n) > (size_t)INT_MAX ? (int64_t)-1 : (int64_t)(n))

URIO_EXPORT int urio_openat(int dirfd, const char *path, int flags, mode_t mode, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_OPENAT, .fd = dirfd, .path = path, .flags = flags, .num = (unsigned)mode,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_openat_submit(urio_loop_t *loop, int dirfd, const char *path,
                                              int flags, mode_t mode, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_OPENAT, .fd = dirfd, .path = path, .flags = flags, .num = (unsigned)mode,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_read(int fd, void *buf, size_t len, int64_t off, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_READ, .fd = fd, .ptr = buf, .len = LEN(len), .off = off,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_read_submit(urio_loop_t *loop, int fd, void *buf, size_t len,
                                            int64_t off, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_READ, .fd = fd, .ptr = buf, .len = LEN(len), .off = off,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_write(int fd, const void *buf, size_t len, int64_t off, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_WRITE, .fd = fd, .ptr = (void *)buf, .len = LEN(len), .off = off,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_write_submit(urio_loop_t *loop, int fd, const void *buf,
                                             size_t len, int64_t off, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_WRITE, .fd = fd, .ptr = (void *)buf, .len = LEN(len), .off = off,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_readv(int fd, const struct iovec *iov, int iovcnt, int64_t off,
                           uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_READV, .fd = fd, .ptr = (void *)iov, .len = iovcnt, .off = off,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_readv_submit(urio_loop_t *loop, int fd, const struct iovec *iov,
                                             int iovcnt, int64_t off, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_READV, .fd = fd, .ptr = (void *)iov, .len = iovcnt, .off = off,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_writev(int fd, const struct iovec *iov, int iovcnt, int64_t off,
                            uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_WRITEV, .fd = fd, .ptr = (void *)iov, .len = iovcnt, .off = off,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_writev_submit(urio_loop_t *loop, int fd, const struct iovec *iov,
                                              int iovcnt, int64_t off, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_WRITEV, .fd = fd, .ptr = (void *)iov, .len = iovcnt, .off = off,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_fsync(int fd, uint64_t deadline)
{
    urio__io_args_t a = { .code = URIO__IO_FSYNC, .fd = fd, .deadline = deadline };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_fsync_submit(urio_loop_t *loop, int fd, uint64_t deadline)
{
    urio__io_args_t a = { .code = URIO__IO_FSYNC, .fd = fd, .deadline = deadline };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_fdatasync(int fd, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_FSYNC, .fd = fd, .flags = IORING_FSYNC_DATASYNC, .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_fdatasync_submit(urio_loop_t *loop, int fd, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_FSYNC, .fd = fd, .flags = IORING_FSYNC_DATASYNC, .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_fallocate(int fd, int mode, int64_t off, int64_t len, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_FALLOCATE, .fd = fd, .flags = mode, .off = off, .len = len,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_fallocate_submit(urio_loop_t *loop, int fd, int mode, int64_t off,
                                                 int64_t len, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_FALLOCATE, .fd = fd, .flags = mode, .off = off, .len = len,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_statx(int dirfd, const char *path, int flags, unsigned mask,
                           struct statx *out, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_STATX, .fd = dirfd, .path = path, .flags = flags, .num = mask, .ptr = out,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_statx_submit(urio_loop_t *loop, int dirfd, const char *path,
                                             int flags, unsigned mask, struct statx *out,
                                             uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_STATX, .fd = dirfd, .path = path, .flags = flags, .num = mask, .ptr = out,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_unlinkat(int dirfd, const char *path, int flags, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_UNLINKAT, .fd = dirfd, .path = path, .flags = flags, .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_unlinkat_submit(urio_loop_t *loop, int dirfd, const char *path,
                                                int flags, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_UNLINKAT, .fd = dirfd, .path = path, .flags = flags, .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                              unsigned flags, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_RENAMEAT, .fd = olddirfd, .path = oldpath, .fd2 = newdirfd,
        .path2 = newpath, .flags = (int)flags, .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_renameat_submit(urio_loop_t *loop, int olddirfd,
                                                const char *oldpath, int newdirfd,
                                                const char *newpath, unsigned flags,
                                                uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_RENAMEAT, .fd = olddirfd, .path = oldpath, .fd2 = newdirfd,
        .path2 = newpath, .flags = (int)flags, .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_mkdirat(int dirfd, const char *path, mode_t mode, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_MKDIRAT, .fd = dirfd, .path = path, .num = (unsigned)mode,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_mkdirat_submit(urio_loop_t *loop, int dirfd, const char *path,
                                               mode_t mode, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_MKDIRAT, .fd = dirfd, .path = path, .num = (unsigned)mode,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_close(int fd, uint64_t deadline)
{
    urio__io_args_t a = { .code = URIO__IO_CLOSE, .fd = fd, .deadline = deadline };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_close_submit(urio_loop_t *loop, int fd, uint64_t deadline)
{
    urio__io_args_t a = { .code = URIO__IO_CLOSE, .fd = fd, .deadline = deadline };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_socket(int domain, int type, int protocol, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_SOCKET, .fd = domain, .fd2 = type, .num = (unsigned)protocol,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_socket_submit(urio_loop_t *loop, int domain, int type,
                                              int protocol, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_SOCKET, .fd = domain, .fd2 = type, .num = (unsigned)protocol,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_connect(int fd, const struct sockaddr *addr, socklen_t addrlen,
                             uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_CONNECT, .fd = fd, .ptr = (void *)addr, .num = addrlen,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_connect_submit(urio_loop_t *loop, int fd,
                                               const struct sockaddr *addr, socklen_t addrlen,
                                               uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_CONNECT, .fd = fd, .ptr = (void *)addr, .num = addrlen,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_accept(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags,
                            uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_ACCEPT, .fd = fd, .ptr = addr, .ptr2 = addrlen, .flags = flags,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_accept_submit(urio_loop_t *loop, int fd, struct sockaddr *addr,
                                              socklen_t *addrlen, int flags, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_ACCEPT, .fd = fd, .ptr = addr, .ptr2 = addrlen, .flags = flags,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_send(int fd, const void *buf, size_t len, int flags, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_SEND, .fd = fd, .ptr = (void *)buf, .len = LEN(len), .flags = flags,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_send_submit(urio_loop_t *loop, int fd, const void *buf, size_t len,
                                            int flags, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_SEND, .fd = fd, .ptr = (void *)buf, .len = LEN(len), .flags = flags,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_recv(int fd, void *buf, size_t len, int flags, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_RECV, .fd = fd, .ptr = buf, .len = LEN(len), .flags = flags,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_recv_submit(urio_loop_t *loop, int fd, void *buf, size_t len,
                                            int flags, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_RECV, .fd = fd, .ptr = buf, .len = LEN(len), .flags = flags,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_sendmsg(int fd, const struct msghdr *msg, int flags, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_SENDMSG, .fd = fd, .ptr = (void *)msg, .flags = flags,
        .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_sendmsg_submit(urio_loop_t *loop, int fd, const struct msghdr *msg,
                                               int flags, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_SENDMSG, .fd = fd, .ptr = (void *)msg, .flags = flags,
        .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_recvmsg(int fd, struct msghdr *msg, int flags, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_RECVMSG, .fd = fd, .ptr = msg, .flags = flags, .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_recvmsg_submit(urio_loop_t *loop, int fd, struct msghdr *msg,
                                               int flags, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_RECVMSG, .fd = fd, .ptr = msg, .flags = flags, .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_shutdown(int fd, int how, uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_SHUTDOWN, .fd = fd, .num = (unsigned)how, .deadline = deadline,
    };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_shutdown_submit(urio_loop_t *loop, int fd, int how,
                                                uint64_t deadline)
{
    urio__io_args_t a = {
        .code = URIO__IO_SHUTDOWN, .fd = fd, .num = (unsigned)how, .deadline = deadline,
    };
    return urio__io_submit(loop, &a);
}

URIO_EXPORT int urio_poll(int fd, unsigned events, uint64_t deadline)
{
    urio__io_args_t a = { .code = URIO__IO_POLL, .fd = fd, .num = events, .deadline = deadline };
    return urio__io_run(&a);
}

URIO_EXPORT urio_future_t *urio_poll_submit(urio_loop_t *loop, int fd, unsigned events,
                                            uint64_t deadline)
{
    urio__io_args_t a = { .code = URIO__IO_POLL, .fd = fd, .num = events, .deadline = deadline };
    return urio__io_submit(loop, &a);
}
