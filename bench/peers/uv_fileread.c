/*
 * peers/uv_fileread.c — uv-fileread: random reads of a file with libuv's
 * uv_fs_read, a peer of the files benchmark (bench/io/files.c).  Command
 * line and output in fileread_cli.h.
 *
 * libuv does file I/O in its thread pool (UV_THREADPOOL_SIZE workers, set
 * by the harness to the size of urio's pool): `depth` requests stay queued,
 * each one's callback checks its read and queues the next, as a libuv user
 * keeps a queue depth.  Buffers are allocated, aligned and touched before
 * the first read; the file is opened before the clock starts.
 */
#include "fileread_cli.h"

#include <fcntl.h>

#include <uv.h>

typedef struct reader {
    uv_fs_t req;
    char *buf;
} reader_t;

static fileread_cli_t cli;
static uv_loop_t *loop;
static uv_file file;
static uint64_t blocks, deadline, reads;

__attribute__((noreturn)) static void die(const char *what, int err)
{
    fprintf(stderr, "%s: %s: %s\n", cli.prog, what, uv_strerror(err));
    exit(1);
}

static void read_cb(uv_fs_t *req);

static void submit(reader_t *r)
{
    uv_buf_t buf = uv_buf_init(r->buf, cli.block);
    int err = uv_fs_read(loop, &r->req, file, &buf, 1,
                         (int64_t)fileread_next_offset(&cli, blocks), read_cb);
    if (err)
        die("uv_fs_read", err);
}

static void read_cb(uv_fs_t *req)
{
    reader_t *r = req->data;
    ssize_t res = req->result;
    uv_fs_req_cleanup(req);
    if (res < 0)
        die("read", (int)res);
    if ((size_t)res != cli.block) {
        fprintf(stderr, "%s: short read: %zd of %u bytes\n", cli.prog, res, cli.block);
        exit(1);
    }
    if (uv_hrtime() >= deadline)
        return;   /* past the window: not counted, not replaced */
    reads++;
    r->req.data = r;
    submit(r);
}

int main(int argc, char **argv)
{
    fileread_parse(&cli, argc, argv);
    loop = uv_default_loop();

    uv_fs_t req;
    int fd = uv_fs_open(NULL, &req, cli.file, O_RDONLY | (cli.odirect ? O_DIRECT : 0), 0, NULL);
    uv_fs_req_cleanup(&req);
    if (fd < 0)
        die(cli.file, fd);
    file = fd;
    int err = uv_fs_fstat(NULL, &req, file, NULL);
    if (err)
        die("fstat", err);
    blocks = req.statbuf.st_size / cli.block;
    uv_fs_req_cleanup(&req);
    if (blocks == 0) {
        fprintf(stderr, "%s: %s is smaller than one block\n", cli.prog, cli.file);
        return 1;
    }

    reader_t *readers = calloc(cli.depth, sizeof *readers);
    if (!readers) {
        fprintf(stderr, "%s: out of memory\n", cli.prog);
        return 1;
    }
    for (unsigned i = 0; i < cli.depth; i++) {
        if (posix_memalign((void **)&readers[i].buf, FILEREAD_ALIGN, cli.block) != 0) {
            fprintf(stderr, "%s: out of memory\n", cli.prog);
            return 1;
        }
        memset(readers[i].buf, 0, cli.block);
        readers[i].req.data = &readers[i];
    }

    uint64_t cpu0 = fileread_cpu_ns();
    uint64_t start = uv_hrtime();
    deadline = start + (uint64_t)(cli.seconds * 1e9);
    for (unsigned i = 0; i < cli.depth; i++)
        submit(&readers[i]);
    uv_run(loop, UV_RUN_DEFAULT);   /* until every read past the deadline is back */
    uint64_t cpu1 = fileread_cpu_ns();

    fileread_report(reads, cli.seconds, cpu1 - cpu0);

    uv_fs_close(NULL, &req, file, NULL);
    uv_fs_req_cleanup(&req);
    for (unsigned i = 0; i < cli.depth; i++)
        free(readers[i].buf);
    free(readers);
    return uv_loop_close(loop) != 0;
}
