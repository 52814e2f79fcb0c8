/*
 * cat.c — concatenates files to standard output through the ring: statx
 * (a directory is refused), openat, then reads and writes of 64 KiB, the
 * next block's read in flight (a future) while the current one is written.
 *
 *   cat FILE...        ("-" reads standard input)
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <urio.h>

#define BLOCK (64 * 1024)

/* Writes all of buf to fd (a pipe may take less at a time). */
static int write_all(int fd, const char *buf, int n)
{
    while (n > 0) {
        int w = urio_write(fd, buf, (size_t)n, -1, 0);
        if (w < 0)
            return w;
        buf += w;
        n -= w;
    }
    return 0;
}

static int cat_fd(int fd, const char *name)
{
    static char bufs[2][BLOCK];
    int cur = 0;
    int64_t off = -1;       /* the file's position: works for pipes too */
    int n = urio_read(fd, bufs[cur], BLOCK, off, 0);
    while (n > 0) {
        /* The next block is read while this one is written. */
        urio_future_t *next = urio_read_submit(urio_loop_current(), fd, bufs[!cur], BLOCK, off, 0);
        if (next == NULL)
            return -errno;
        int err = write_all(1, bufs[cur], n);
        urio_await(next, NULL);     /* (its outcome, error or count, is read just below) */
        n = urio_io_result(next);
        urio_future_unref(next);
        if (err < 0) {
            fprintf(stderr, "cat: write: %s\n", urio_strerror(err));
            return err;
        }
        cur = !cur;
    }
    if (n < 0)
        fprintf(stderr, "cat: %s: %s\n", name, urio_strerror(n));
    return n;
}

static int cat(void *arg, void **result)
{
    (void)result;
    char **files = arg;
    int status = 0;
    for (; *files; files++) {
        if (strcmp(*files, "-") == 0) {
            status |= cat_fd(0, "<stdin>") < 0;
            continue;
        }
        struct statx st;
        int err = urio_statx(AT_FDCWD, *files, 0, STATX_TYPE, &st, 0);
        if (err == 0 && S_ISDIR(st.stx_mode))
            err = -EISDIR;
        int fd = err < 0 ? err : urio_openat(AT_FDCWD, *files, O_RDONLY, 0, 0);
        if (fd < 0) {
            fprintf(stderr, "cat: %s: %s\n", *files, urio_strerror(fd));
            status = 1;
            continue;
        }
        status |= cat_fd(fd, *files) < 0;
        urio_close(fd, 0);
    }
    return status ? -EIO : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: cat FILE...\n");
        return 2;
    }
    return urio_run(URIO_CORO(cat, argv + 1), NULL, NULL) < 0;
}
