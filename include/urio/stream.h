/*
 * urio/stream.h — TCP and Unix streams, servers and connections (asyncio's
 * StreamReader/StreamWriter, start_server and open_connection).
 *
 * A stream owns a connected socket.  It receives all the time (a multishot
 * receive into the loop's provided buffers where the kernel has them) into
 * its read buffer, up to twice its limit, and sends what urio_stream_write
 * buffered, in order.  The waiting calls (read, read_exactly, read_until,
 * drain, open_connection, server_new, server_wait_closed) suspend the
 * calling task; write, write_eof and close never wait and work from any code
 * on the loop's thread.
 *
 * deadline: 0 for none, else absolute on urio_loop_time's clock
 * (urio_deadline_in); passing it gives -ETIMEDOUT.  Cancelling the waiting
 * task gives -ECANCELED.  Neither loses data: what arrived stays buffered.
 *
 * In debug mode a stream or server never closed is reported when its loop
 * closes, as asyncio's ResourceWarning: "unclosed <urio_stream fd=7
 * peer=127.0.0.1:4242 created at file.c:42>".
 * Thread: the loop's thread, for every call here.
 */
#ifndef URIO_STREAM_H
#define URIO_STREAM_H

#include "base.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct urio_stream urio_stream_t;
typedef struct urio_server urio_server_t;

/* ------------------------------------------------------------------ */
/* Connections                                                          */

/*
 * In a task: connects to host:port (a name is resolved off the loop, by
 * getaddrinfo in the default executor; each address is tried in turn) and
 * gives the connected stream in *out.
 * Returns: 0; -ECONNREFUSED, URIO_ENOHOST, -ETIMEDOUT (the deadline passed),
 *          -ECANCELED, -EINVAL (NULL out or host, port outside 1..65535),
 *          -EPERM outside a task.  urio_io_error_message() names the host:
 *          "connection to localhost:1 (127.0.0.1:1) refused".
 * Ownership: the caller owns the stream: urio_stream_close it.
 */
URIO_EXPORT int urio_open_connection_site(urio_stream_t **out, const char *host, int port,
                                          uint64_t deadline, const urio_site_t *site);
#define urio_open_connection(out, host, port, deadline)                              \
    urio_open_connection_site((out), (host), (port), (deadline), URIO_SITE(connection))

/* The same on a Unix socket at path. */
URIO_EXPORT int urio_open_unix_connection_site(urio_stream_t **out, const char *path,
                                               uint64_t deadline, const urio_site_t *site);
#define urio_open_unix_connection(out, path, deadline)                               \
    urio_open_unix_connection_site((out), (path), (deadline), URIO_SITE(connection))

/*
 * A stream on fd, a connected stream socket (taken over: the stream closes
 * it).  Any code on loop's thread.
 * Returns: 0; -EBADF (fd < 0), -EINVAL (NULL), -ESHUTDOWN, -ENOMEM (fd is
 *          then closed too).
 */
URIO_EXPORT int urio_stream_new_site(urio_stream_t **out, urio_loop_t *loop, int fd,
                                     const urio_site_t *site);
#define urio_stream_new(out, loop, fd)                                                \
    urio_stream_new_site((out), (loop), (fd), URIO_SITE(stream))

/* ------------------------------------------------------------------ */
/* Reading                                                              */

/*
 * In a task: reads at most n bytes (at least 1 unless at EOF).
 * Returns: bytes read; 0 at EOF; the receive error (-ECONNRESET...);
 *          -ETIMEDOUT, -ECANCELED; -EBUSY if another task is reading s;
 *          -EINVAL (NULL, n over INT_MAX).
 */
URIO_EXPORT int urio_stream_read(urio_stream_t *s, void *buf, size_t n, uint64_t deadline);

/*
 * In a task: reads exactly n bytes.
 * Returns: n; URIO_EINCOMPLETE when EOF came first (what did come stays in
 *          the stream: urio_stream_read gets it); the other errors of read.
 */
URIO_EXPORT int urio_stream_read_exactly(urio_stream_t *s, void *buf, size_t n,
                                         uint64_t deadline);

/*
 * In a task: reads up to and including the first occurrence of delim (dlen
 * bytes) into buf (cap bytes).
 * Returns: the bytes given, delimiter included; URIO_ELIMIT when no
 *          delimiter is within the stream's limit or cap bytes (the data
 *          stays in the stream, the message says which bound);
 *          URIO_EINCOMPLETE at EOF without a delimiter (data kept); the
 *          other errors of read.
 */
URIO_EXPORT int urio_stream_read_until(urio_stream_t *s, const void *delim, size_t dlen,
                                       void *buf, size_t cap, uint64_t deadline);

/*
 * The read limit (default 64 KiB, asyncio's): read_until's bound, and the
 * stream stops receiving while twice this much is buffered unread.
 * Returns: 0; -EINVAL (NULL, 0).
 */
URIO_EXPORT int urio_stream_set_limit(urio_stream_t *s, size_t limit);

/* Bytes received and not yet read. */
URIO_EXPORT size_t urio_stream_buffered(const urio_stream_t *s);
/* True once the peer's EOF was received (buffered bytes may remain). */
URIO_EXPORT bool urio_stream_at_eof(const urio_stream_t *s);

/* ------------------------------------------------------------------ */
/* Writing                                                              */

/*
 * Buffers n bytes (copied) to be sent after what is already buffered;
 * never waits.  Call urio_stream_drain to respect the peer's pace.
 * Returns: 0; -EPIPE after write_eof or close; a send error seen before
 *          (-ECONNRESET, -EPIPE); -EINVAL (NULL); -ENOMEM.
 */
URIO_EXPORT int urio_stream_write(urio_stream_t *s, const void *data, size_t n);

/*
 * In a task: waits while the write buffer is above its high-water mark,
 * until it is down to the low one (asyncio's drain).
 * Returns: 0; a send error; -ETIMEDOUT, -ECANCELED; -EBUSY (another task drains).
 */
URIO_EXPORT int urio_stream_drain(urio_stream_t *s, uint64_t deadline);

/*
 * The write buffer's marks (defaults 64 KiB and 16 KiB); high 0: the
 * defaults; low 0: high / 4.  Returns: 0; -EINVAL (low > high, NULL).
 */
URIO_EXPORT int urio_stream_set_write_buffer_limits(urio_stream_t *s, size_t high, size_t low);

/* Bytes buffered and not yet sent. */
URIO_EXPORT size_t urio_stream_write_buffered(const urio_stream_t *s);

/*
 * Half-close: once what is buffered is sent, shuts the sending side
 * (the peer reads EOF); reading goes on.  Returns: 0; -EINVAL (NULL).
 */
URIO_EXPORT int urio_stream_write_eof(urio_stream_t *s);

/* ------------------------------------------------------------------ */
/* Closing                                                              */

/*
 * Closes s: stops receiving, sends what is still buffered, then closes the
 * socket; urio frees the stream after.  A task reading or draining s gets
 * -EBADF.  s must not be used after this call (except a server's
 * connection stream, which stays valid until its handler returns).
 */
URIO_EXPORT void urio_stream_close(urio_stream_t *s);

/* Closes s now, discarding what is buffered; the peer sees a reset (RST). */
URIO_EXPORT void urio_stream_abort(urio_stream_t *s);

/* The socket (still the stream's: do not close it), or -1 once closed. */
URIO_EXPORT int urio_stream_fd(const urio_stream_t *s);

/* "127.0.0.1:4242", "[::1]:80", "unix:/run/x.sock" (or "?") into buf.  Returns: buf. */
URIO_EXPORT const char *urio_stream_peername(const urio_stream_t *s, char *buf, size_t n);

/* ------------------------------------------------------------------ */
/* Servers                                                              */

/*
 * A connection's handler: runs as its own task, one per connection, with
 * the connection's stream (the server's: closed when the handler returns).
 * Returns 0 or a negative error (reported as the task's, unretrieved).
 */
typedef int (*urio_conn_fn)(urio_stream_t *stream, void *arg);

typedef struct urio_server_opts {
    int backlog;             /* listen(2)'s; 0: 4096 */
    bool reuseport;          /* SO_REUSEPORT: one server per loop, one loop per core */
    bool v6only;             /* an IPv6 wildcard serves IPv6 only (default: dual-stack) */
    size_t stack_size;       /* handlers' task stacks; 0: the default */
} urio_server_opts_t;        /* may grow: zero-initialise it */

/*
 * In a task: listens on host:port and runs fn(stream, arg) in a new task for
 * each connection (multishot accept).  host NULL or "" (or "::") listens on
 * every address, IPv4 and IPv6 (dual-stack); "0.0.0.0" IPv4 only; a name is
 * resolved and each of its addresses listened on.  port 0 picks a free port:
 * urio_server_port tells it.  When the process runs out of fds, accepting
 * backs off (one WARNING) and resumes when fds free up.
 * Returns: 0; -EADDRINUSE, -EACCES, URIO_ENOHOST, -EINVAL (NULL out or fn,
 *          port outside 0..65535), -EPERM outside a task; the message names
 *          the address.
 * Ownership: the caller owns the server: urio_server_close then _free it.
 */
URIO_EXPORT int urio_server_new_site(urio_server_t **out, const char *host, int port,
                                     urio_conn_fn fn, void *arg, const urio_server_opts_t *opts,
                                     const urio_site_t *site);
#define urio_server_new(out, host, port, fn, arg, opts)                                \
    urio_server_new_site((out), (host), (port), (fn), (arg), (opts), URIO_SITE(fn))

/* The same on a Unix socket at path (a stale socket file there is replaced). */
URIO_EXPORT int urio_server_new_unix_site(urio_server_t **out, const char *path, urio_conn_fn fn,
                                          void *arg, const urio_server_opts_t *opts,
                                          const urio_site_t *site);
#define urio_server_new_unix(out, path, fn, arg, opts)                                 \
    urio_server_new_unix_site((out), (path), (fn), (arg), (opts), URIO_SITE(fn))

/* The port the server listens on (its first address's); 0 for Unix sockets. */
URIO_EXPORT int urio_server_port(const urio_server_t *srv);

/* Connections whose handler is still running. */
URIO_EXPORT unsigned urio_server_connections(const urio_server_t *srv);

/*
 * Stops accepting: the accepts are cancelled and the listening sockets
 * closed through the ring, in the loop's next turns (a connect after that
 * is refused).  Running connections go on.
 */
URIO_EXPORT void urio_server_close(urio_server_t *srv);

/*
 * In a task, after urio_server_close: waits for the connections to finish;
 * at the deadline cancels their handlers and waits for them to end.
 * Returns: 0; -ETIMEDOUT (some were cancelled); -ECANCELED (the waiter was:
 *          the connections go on); -EINVAL (NULL, or not closed).
 */
URIO_EXPORT int urio_server_wait_closed(urio_server_t *srv, uint64_t deadline);

/* Frees srv (closing it first); handlers still running are cancelled. */
URIO_EXPORT void urio_server_free(urio_server_t *srv);

#ifdef __cplusplus
}
#endif
#endif
