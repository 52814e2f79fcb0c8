/*
 * urio_fileread.c — urio's side of the files benchmark (bench/io/files.c):
 * random block-aligned reads of a file through urio's file API, D of them
 * in flight, from one loop.
 *
 *   urio-fileread --file PATH --block 4096 --depth D --seconds S [--odirect]
 *
 * Depth D is D tasks, each reading in a loop with urio_read (the task form:
 * it parks until its CQE), so D reads are always in the ring.  Offsets come
 * from the one sequence every reader of the benchmark draws from
 * (peers/fileread_cli.h), in submission order.  A timer ends the run after
 * S seconds; reads that complete after it are not counted.  Prints one
 * line: "iops <N> cpu_ns_per_op <X>" (X: the process's CPU time, every
 * thread, per counted read).
 */
#include "peers/fileread_cli.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <urio.h>

struct run {
    fileread_cli_t cli;
    int fd;
    uint64_t blocks;
    bool stopped;
    uint64_t reads;
    int err;
};

static int reader(void *arg, void **result)
{
    (void)result;
    struct run *r = arg;
    void *buf;
    if (posix_memalign(&buf, FILEREAD_ALIGN, r->cli.block) != 0)
        return -ENOMEM;
    while (!r->stopped) {
        uint64_t off = fileread_next_offset(&r->cli, r->blocks);
        int n = urio_read(r->fd, buf, r->cli.block, (int64_t)off, 0);
        if (n != (int)r->cli.block) {
            r->err = n < 0 ? n : -EIO;
            r->stopped = true;
            break;
        }
        if (!r->stopped)
            r->reads++;
    }
    free(buf);
    return 0;
}

static void stop(void *arg)
{
    ((struct run *)arg)->stopped = true;
}

static int bench_main(void *arg, void **result)
{
    (void)result;
    struct run *r = arg;
    urio_loop_t *loop = urio_loop_current();
    urio_future_t **tasks = calloc(r->cli.depth, sizeof *tasks);
    if (tasks == NULL)
        return -ENOMEM;
    urio_call_later(loop, (uint64_t)(r->cli.seconds * 1e9), stop, r);
    for (unsigned i = 0; i < r->cli.depth; i++)
        tasks[i] = urio_spawn(loop, reader, r);
    int err = urio_gather(tasks, r->cli.depth, NULL, NULL);
    for (unsigned i = 0; i < r->cli.depth; i++)
        urio_future_unref(tasks[i]);
    free(tasks);
    return err;
}

int main(int argc, char **argv)
{
    struct run r = { 0 };
    fileread_parse(&r.cli, argc, argv);
    r.fd = open(r.cli.file, O_RDONLY | O_CLOEXEC | (r.cli.odirect ? O_DIRECT : 0));
    if (r.fd < 0) {
        perror(r.cli.file);
        return 1;
    }
    struct stat st;
    if (fstat(r.fd, &st) < 0 || st.st_size < (off_t)r.cli.block) {
        fprintf(stderr, "%s: %s: smaller than one block\n", r.cli.prog, r.cli.file);
        return 1;
    }
    r.blocks = (uint64_t)st.st_size / r.cli.block;
    uint64_t cpu0 = fileread_cpu_ns();
    int err = urio_run(URIO_CORO(bench_main, &r), NULL, NULL);
    uint64_t cpu = fileread_cpu_ns() - cpu0;
    close(r.fd);
    if (err == 0)
        err = r.err;
    if (err < 0) {
        fprintf(stderr, "%s: %s\n", r.cli.prog, urio_strerror(err));
        return 1;
    }
    fileread_report(r.reads, r.cli.seconds, cpu);
    return 0;
}
