/*
 * urio/io.h — I/O operations on the ring: files, sockets, and a poll for any
 * fd.  Streams, servers and connections are in urio/stream.h.
 *
 * Every operation comes in two forms, with the same arguments:
 *
 *   int n = urio_recv(fd, buf, len, flags, deadline);              in a task
 *   urio_future_t *f = urio_recv_submit(loop, fd, buf, len, flags, deadline);
 *
 * The task form suspends the calling task until the kernel's completion and
 * returns what the completion says: a count, an fd, 0, or a negative errno.
 * The _submit form, for callbacks and any code on the loop's thread, starts
 * the operation and returns its future (a new reference), which completes
 * with the same value as its result ((void *)(intptr_t)n: read it with
 * urio_io_result) or with the error.
 *
 * deadline: 0 for none, or an absolute time on urio_loop_time's clock
 * (urio_deadline_in(ns) is now + ns).  When it passes before the operation
 * completes, the kernel cancels it and the call gives -ETIMEDOUT.
 *
 * Ownership: every pointer passed in (buffers, iovecs, msghdrs, sockaddrs,
 * paths, statx) stays the caller's and must stay valid until the operation
 * is done: the task form returns only then (a cancelled task stays suspended
 * until the kernel has let go); a future completes only then, also after
 * urio_future_cancel.  fds urio opens (openat, socket, accept) are
 * close-on-exec.
 *
 * Cancellation: cancelling the task (or the future) asks the kernel to stop
 * the operation; it then gives -ECANCELED.  If the operation completed
 * anyway (the cancel came too late), its result is not lost: the task form
 * returns it (the cancel shows at the task's next wait); a future completes
 * with it, except an fd nobody asked for any more (openat, socket, accept),
 * which urio closes before the future ends cancelled.
 *
 * Bad input gives an error, never a crash: -EBADF (a negative fd), -EINVAL
 * (NULL buffer with a length, a length over INT_MAX, NULL path or address,
 * an offset below -1...), -EPERM (a task form outside a task), -ESHUTDOWN
 * (a closing loop).  Thread: the loop's thread.
 */
#ifndef URIO_IO_H
#define URIO_IO_H

#include "base.h"

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

struct statx;

/* urio_loop_time's clock now + ns: a deadline ns from now.  Thread: any thread. */
URIO_EXPORT uint64_t urio_deadline_in(uint64_t ns);

/*
 * The outcome of an I/O future as the task form gives it: its result (a
 * count, an fd, 0), its error, -ECANCELED, or URIO_ENOTDONE.
 */
URIO_EXPORT int urio_io_result(urio_future_t *f);

/*
 * The message of the last failed call on this thread that gave one (a
 * connect names the host and address, a listen its address, read_until its
 * limit), or NULL.  Valid until the next such call on this thread.
 */
URIO_EXPORT const char *urio_io_error_message(void);

/* ------------------------------------------------------------------ */
/* Files.  off: a position in the file, or -1 for the file's position. */

/* openat(2) (O_CLOEXEC added).  Returns: the new fd, or a negative errno. */
URIO_EXPORT int urio_openat(int dirfd, const char *path, int flags, mode_t mode, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_openat_submit(urio_loop_t *loop, int dirfd, const char *path,
                                              int flags, mode_t mode, uint64_t deadline);

/* pread/pwrite.  Returns: bytes moved (0 at end of file), or a negative errno. */
URIO_EXPORT int urio_read(int fd, void *buf, size_t len, int64_t off, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_read_submit(urio_loop_t *loop, int fd, void *buf, size_t len,
                                            int64_t off, uint64_t deadline);
URIO_EXPORT int urio_write(int fd, const void *buf, size_t len, int64_t off, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_write_submit(urio_loop_t *loop, int fd, const void *buf,
                                             size_t len, int64_t off, uint64_t deadline);

/* preadv/pwritev (iovcnt 1..IOV_MAX).  Returns: bytes moved, or a negative errno. */
URIO_EXPORT int urio_readv(int fd, const struct iovec *iov, int iovcnt, int64_t off,
                           uint64_t deadline);
URIO_EXPORT urio_future_t *urio_readv_submit(urio_loop_t *loop, int fd, const struct iovec *iov,
                                             int iovcnt, int64_t off, uint64_t deadline);
URIO_EXPORT int urio_writev(int fd, const struct iovec *iov, int iovcnt, int64_t off,
                            uint64_t deadline);
URIO_EXPORT urio_future_t *urio_writev_submit(urio_loop_t *loop, int fd, const struct iovec *iov,
                                              int iovcnt, int64_t off, uint64_t deadline);

/* fsync(2), fdatasync(2).  Returns: 0 or a negative errno. */
URIO_EXPORT int urio_fsync(int fd, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_fsync_submit(urio_loop_t *loop, int fd, uint64_t deadline);
URIO_EXPORT int urio_fdatasync(int fd, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_fdatasync_submit(urio_loop_t *loop, int fd, uint64_t deadline);

/* fallocate(2) (off, len >= 0).  Returns: 0 or a negative errno. */
URIO_EXPORT int urio_fallocate(int fd, int mode, int64_t off, int64_t len, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_fallocate_submit(urio_loop_t *loop, int fd, int mode, int64_t off,
                                                 int64_t len, uint64_t deadline);

/* statx(2) into *out.  Returns: 0 or a negative errno. */
URIO_EXPORT int urio_statx(int dirfd, const char *path, int flags, unsigned mask,
                           struct statx *out, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_statx_submit(urio_loop_t *loop, int dirfd, const char *path,
                                             int flags, unsigned mask, struct statx *out,
                                             uint64_t deadline);

/* unlinkat(2), renameat2(2), mkdirat(2).  Returns: 0 or a negative errno. */
URIO_EXPORT int urio_unlinkat(int dirfd, const char *path, int flags, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_unlinkat_submit(urio_loop_t *loop, int dirfd, const char *path,
                                                int flags, uint64_t deadline);
URIO_EXPORT int urio_renameat(int olddirfd, const char *oldpath, int newdirfd,
                              const char *newpath, unsigned flags, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_renameat_submit(urio_loop_t *loop, int olddirfd,
                                                const char *oldpath, int newdirfd,
                                                const char *newpath, unsigned flags,
                                                uint64_t deadline);
URIO_EXPORT int urio_mkdirat(int dirfd, const char *path, mode_t mode, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_mkdirat_submit(urio_loop_t *loop, int dirfd, const char *path,
                                               mode_t mode, uint64_t deadline);

/* close(2) of any fd.  Returns: 0 or a negative errno. */
URIO_EXPORT int urio_close(int fd, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_close_submit(urio_loop_t *loop, int fd, uint64_t deadline);

/* ------------------------------------------------------------------ */
/* Sockets                                                              */

/* socket(2) (SOCK_CLOEXEC added).  Returns: the new fd, or a negative errno. */
URIO_EXPORT int urio_socket(int domain, int type, int protocol, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_socket_submit(urio_loop_t *loop, int domain, int type,
                                              int protocol, uint64_t deadline);

/* connect(2).  Returns: 0, or -ECONNREFUSED, -ETIMEDOUT, ... */
URIO_EXPORT int urio_connect(int fd, const struct sockaddr *addr, socklen_t addrlen,
                             uint64_t deadline);
URIO_EXPORT urio_future_t *urio_connect_submit(urio_loop_t *loop, int fd,
                                               const struct sockaddr *addr, socklen_t addrlen,
                                               uint64_t deadline);

/*
 * accept4(2) (SOCK_CLOEXEC added); addr and addrlen may be NULL.
 * Returns: the connection's fd, or a negative errno (-EMFILE...).
 */
URIO_EXPORT int urio_accept(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags,
                            uint64_t deadline);
URIO_EXPORT urio_future_t *urio_accept_submit(urio_loop_t *loop, int fd, struct sockaddr *addr,
                                              socklen_t *addrlen, int flags, uint64_t deadline);

/* send(2), recv(2).  Returns: bytes moved (recv: 0 at EOF), or a negative errno. */
URIO_EXPORT int urio_send(int fd, const void *buf, size_t len, int flags, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_send_submit(urio_loop_t *loop, int fd, const void *buf,
                                            size_t len, int flags, uint64_t deadline);
URIO_EXPORT int urio_recv(int fd, void *buf, size_t len, int flags, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_recv_submit(urio_loop_t *loop, int fd, void *buf, size_t len,
                                            int flags, uint64_t deadline);

/* sendmsg(2), recvmsg(2): the msghdr and all it points to stay the caller's. */
URIO_EXPORT int urio_sendmsg(int fd, const struct msghdr *msg, int flags, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_sendmsg_submit(urio_loop_t *loop, int fd,
                                               const struct msghdr *msg, int flags,
                                               uint64_t deadline);
URIO_EXPORT int urio_recvmsg(int fd, struct msghdr *msg, int flags, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_recvmsg_submit(urio_loop_t *loop, int fd, struct msghdr *msg,
                                               int flags, uint64_t deadline);

/* shutdown(2) (SHUT_RD, SHUT_WR, SHUT_RDWR).  Returns: 0 or a negative errno. */
URIO_EXPORT int urio_shutdown(int fd, int how, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_shutdown_submit(urio_loop_t *loop, int fd, int how,
                                                uint64_t deadline);

/*
 * Waits until fd is ready for `events` (POLLIN, POLLOUT...): the escape
 * hatch for libraries that own their fds.  Returns: the events that fired
 * (POLLIN, POLLHUP...), or a negative errno.
 */
URIO_EXPORT int urio_poll(int fd, unsigned events, uint64_t deadline);
URIO_EXPORT urio_future_t *urio_poll_submit(urio_loop_t *loop, int fd, unsigned events,
                                            uint64_t deadline);

#ifdef __cplusplus
}
#endif
#endif
