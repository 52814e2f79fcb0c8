/*
 * io/files.c — the file benchmarks: 4 KiB reads at uniformly random
 * aligned offsets of one large file, from the page cache and with
 * O_DIRECT, at queue depth 1 and 64; ns per read (the inverse of IOPS).
 *
 * Three readers, each its own process started the same way (proc.c) with
 * the same request: urio's bench/urio_fileread.c, libuv's uv_fs_read
 * (peers/uv_fileread.c, its thread pool sized like urio's) and fio with its
 * io_uring engine, the floor.  The command line and output of the first two
 * are in peers/fileread_cli.h.  fio is asked for the same access pattern:
 * one job, `--norandommap` (uniform random with repeats, as the others,
 * not fio's default every-block-once), `--invalidate=0` (fio would
 * otherwise drop the file's page cache first), and its two io_uring
 * options that make it faster still, registered files and fixed buffers
 * (a harder floor).  No reader is pinned: libuv's pool and io_uring's
 * io-wq workers use both cores, and pinning would be a handicap for
 * libuv's model only.
 *
 * The file (1 GiB; 256 MiB with --quick) is written once per harness run
 * with pseudo-random bytes (no zero blocks a virtual disk could skip) in
 * a fresh directory under URIO_BENCH_FILE_DIR or /var/tmp (not /tmp, a
 * tmpfs on some systems, where O_DIRECT fails), fsynced (so O_DIRECT
 * reads start no writeback) and removed at exit.  The page-cache variant
 * checks with mincore(2) before each run that every page is resident and
 * reads the file through otherwise: it measures reads from memory.  The
 * O_DIRECT variant measures the device.  The harness never drops the
 * system's page cache (root-only, and it would disturb whatever else runs
 * on the machine): O_DIRECT is the uncached measurement.
 */
#include "../bench.h"
#include "io_paths.h"
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum { BLOCK = 4096, CHUNK = 1 << 20 };

/* How long past its --seconds a reader may run before it is called hung. */
static const uint64_t READER_GRACE_NS = 30000000000u;

typedef struct files_sizes {
    uint64_t file_bytes;
    double seconds;            /* per reader run */
} files_sizes_t;

static files_sizes_t files_sizes(const bench_config_t *cfg)
{
    if (cfg->quick)
        return (files_sizes_t){ .file_bytes = 256u << 20, .seconds = 0.5 };
    return (files_sizes_t){ .file_bytes = 1u << 30, .seconds = 3.0 };
}

/* The variants, in out[] order (BENCH_FILES_*). */
static const struct variant {
    const char *label;
    unsigned depth;
    bool odirect;
} variants[BENCH_FILES_N_METRICS] = {
    [BENCH_FILES_PC_QD1] = { "pc1", 1, false },
    [BENCH_FILES_PC_QD64] = { "pc64", 64, false },
    [BENCH_FILES_DIO_QD1] = { "dio1", 1, true },
    [BENCH_FILES_DIO_QD64] = { "dio64", 64, true },
};

static const char *urio_reader(void)
{
    const char *env = getenv("URIO_BENCH_FILEREAD");
    return env && *env ? env : BENCH_URIO_FILEREAD;
}

const char *bench_files_urio_missing(void)
{
    static char why[512];
    if (bench_proc_exists(urio_reader()))
        return NULL;
    snprintf(why, sizeof why, "urio side not built: no %s (bench/urio_fileread.c)",
             urio_reader());
    return why;
}

const char *bench_files_fio_missing(void)
{
    if (bench_proc_exists(BENCH_FIO))
        return NULL;
    return "fio not found at configure time (Debian package fio; ./dev installs it)";
}

/* ------------------------------------------------------------------ */
/* The file                                                              */

static char dir_path[4096], file_path[4096 + 16];
static uint64_t file_bytes;

static void remove_file(void)
{
    unlink(file_path);
    rmdir(dir_path);
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t w = write(fd, buf, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            bench_die("writing %s: %s", file_path, w < 0 ? strerror(errno) : "no progress");
        buf += w;
        len -= (size_t)w;
    }
}

static void make_file(const bench_config_t *cfg)
{
    if (file_bytes)
        return;
    const char *base = getenv("URIO_BENCH_FILE_DIR");
    snprintf(dir_path, sizeof dir_path, "%s/urio-bench-XXXXXX", base && *base ? base : "/var/tmp");
    if (!mkdtemp(dir_path))
        bench_die("mkdtemp %s: %s", dir_path, strerror(errno));
    snprintf(file_path, sizeof file_path, "%s/read.dat", dir_path);
    atexit(remove_file);
    uint64_t size = files_sizes(cfg).file_bytes;
    fprintf(stderr, " (writing a %llu MiB file in %s)", (unsigned long long)(size >> 20),
            dir_path);
    int fd = open(file_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        bench_die("create %s: %s", file_path, strerror(errno));
    uint64_t *chunk = bench_alloc_prefaulted(CHUNK);
    uint64_t state = cfg->seed;
    for (uint64_t done = 0; done < size; done += CHUNK) {
        for (size_t i = 0; i < CHUNK / sizeof *chunk; i++)
            chunk[i] = bench_splitmix64(&state);
        write_all(fd, (const char *)chunk, CHUNK);
    }
    free(chunk);
    if (fsync(fd) != 0 || close(fd) != 0)
        bench_die("fsync %s: %s", file_path, strerror(errno));
    file_bytes = size;
}

/* Every page of the file in the page cache, reading it through if not. */
static void ensure_cached(void)
{
    int fd = open(file_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        bench_die("open %s: %s", file_path, strerror(errno));
    void *map = mmap(NULL, file_bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        bench_die("mmap %s: %s", file_path, strerror(errno));
    size_t pages = file_bytes / (uint64_t)sysconf(_SC_PAGESIZE);
    unsigned char *vec = bench_alloc_prefaulted(pages);
    if (mincore(map, file_bytes, vec) != 0)
        bench_die("mincore: %s", strerror(errno));
    size_t resident = 0;
    for (size_t i = 0; i < pages; i++)
        resident += vec[i] & 1;
    free(vec);
    munmap(map, file_bytes);
    if (resident < pages) {
        char *buf = bench_alloc_prefaulted(CHUNK);
        while (read(fd, buf, CHUNK) > 0)
            ;
        free(buf);
    }
    close(fd);
}

/* ------------------------------------------------------------------ */
/* The readers                                                           */

typedef enum reader { READER_URIO, READER_UV, READER_FIO } reader_t;

/* IOPS of one reader run. */
static double run_reader(reader_t who, const struct variant *v, double seconds)
{
    char depth[16], secs[32], out[8192];
    snprintf(depth, sizeof depth, "%u", v->depth);
    snprintf(secs, sizeof secs, "%.3f", seconds);
    uint64_t timeout = (uint64_t)(seconds * 1e9) + READER_GRACE_NS;
    if (who == READER_FIO) {
        char filename[sizeof file_path + 16], iodepth[32], runtime[48];
        snprintf(filename, sizeof filename, "--filename=%s", file_path);
        snprintf(iodepth, sizeof iodepth, "--iodepth=%u", v->depth);
        snprintf(runtime, sizeof runtime, "--runtime=%.0fms", seconds * 1000.0);
        char *argv[] = { (char *)BENCH_FIO, "--name=randread", filename, "--rw=randread",
                         "--bs=4k", "--ioengine=io_uring", iodepth,
                         v->odirect ? "--direct=1" : "--direct=0", "--time_based", runtime,
                         "--norandommap", "--randrepeat=0", "--invalidate=0", "--fixedbufs",
                         "--registerfiles", "--output-format=terse", "--terse-version=3",
                         NULL };
        bench_proc_run("fio", argv, out, sizeof out, timeout, NULL);
        /* terse v3: version;fio-version;jobname;groupid;error;read_kb;read_bw;read_iops;... */
        char *field = out;
        double iops = -1.0;
        long error = -1;
        for (int i = 0; field && i <= 7; i++) {
            if (i == 4)
                error = strtol(field, NULL, 10);
            if (i == 7)
                iops = strtod(field, NULL);
            field = strchr(field, ';');
            if (field)
                field++;
        }
        if (error != 0 || !(iops > 0.0))
            bench_die("fio: unexpected output: %s", out);
        return iops;
    }
    const char *path = who == READER_URIO ? urio_reader() : BENCH_UV_FILEREAD;
    const char *name = who == READER_URIO ? "urio-fileread" : "uv-fileread";
    char *argv[] = { (char *)path, "--file", file_path, "--block", "4096", "--depth", depth,
                     "--seconds", secs, v->odirect ? "--odirect" : NULL, NULL };
    bench_proc_run(name, argv, out, sizeof out, timeout, NULL);
    double iops, cpu;
    if (sscanf(out, "iops %lf cpu_ns_per_op %lf", &iops, &cpu) != 2 || !(iops > 0.0))
        bench_die("%s: expected 'iops <N> cpu_ns_per_op <X>', got '%s'", name, out);
    return iops;
}

/* Every variant with one reader: out[] in ns per read. */
static void files_side(const bench_config_t *cfg, reader_t who, double *out)
{
    make_file(cfg);
    double seconds = files_sizes(cfg).seconds;
    for (size_t i = 0; i < BENCH_FILES_N_METRICS; i++) {
        if (!variants[i].odirect)
            ensure_cached();
        double iops = run_reader(who, &variants[i], seconds);
        out[i] = 1e9 / iops;
        fprintf(stderr, " %s %.0fk", variants[i].label, iops / 1000.0);
    }
    fprintf(stderr, " IOPS");
}

void bench_urio_files(const bench_config_t *cfg, double *out)
{
    files_side(cfg, READER_URIO, out);
}

void bench_uv_files(const bench_config_t *cfg, double *out)
{
    files_side(cfg, READER_UV, out);
}

void bench_fio_files(const bench_config_t *cfg, double *out)
{
    files_side(cfg, READER_FIO, out);
}
