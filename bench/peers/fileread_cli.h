/*
 * peers/fileread_cli.h — the command line and output of the file readers
 * of the files benchmark (bench/io/files.c), urio's bench/urio_fileread.c
 * included, so that the harness runs each of them the same way:
 *
 *   READER --file PATH --block 4096 --depth D --seconds S [--odirect]
 *
 * A reader keeps D reads of `block` bytes in flight at uniformly random
 * block-aligned offsets of the file (fileread_next_offset: the same
 * sequence for every reader), counts the reads that complete within S
 * seconds of its first submission, and prints one line:
 *
 *   iops <N> cpu_ns_per_op <X>
 *
 * where X is the process's CPU time (every thread, getrusage) per counted
 * read.  --odirect opens the file O_DIRECT (buffers aligned to 4096).
 *
 * Header-only statics: each reader is its own small executable.
 */
#ifndef URIO_BENCH_FILEREAD_CLI_H
#define URIO_BENCH_FILEREAD_CLI_H

#include "../bench.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

enum { FILEREAD_ALIGN = 4096 };

typedef struct fileread_cli {
    const char *prog;
    const char *file;
    unsigned block;
    unsigned depth;
    double seconds;
    bool odirect;
    uint64_t rng;              /* the offsets' PRNG state */
} fileread_cli_t;

static inline void fileread_usage(const char *prog)
{
    fprintf(stderr, "usage: %s --file PATH --block 4096 --depth D --seconds S [--odirect]\n",
            prog);
    exit(2);
}

static inline unsigned long fileread_count(const char *prog, const char *s)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v == 0 || v > 1u << 20)
        fileread_usage(prog);
    return v;
}

static inline void fileread_parse(fileread_cli_t *cli, int argc, char **argv)
{
    const char *slash = strrchr(argv[0], '/');
    *cli = (fileread_cli_t){ .prog = slash ? slash + 1 : argv[0], .block = 4096, .depth = 1,
                             .seconds = 1.0, .rng = 0x75726f69u };
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--odirect") == 0) {
            cli->odirect = true;
            continue;
        }
        if (i + 1 >= argc)
            fileread_usage(cli->prog);
        const char *v = argv[++i];
        if (strcmp(argv[i - 1], "--file") == 0) {
            cli->file = v;
        } else if (strcmp(argv[i - 1], "--block") == 0) {
            cli->block = (unsigned)fileread_count(cli->prog, v);
        } else if (strcmp(argv[i - 1], "--depth") == 0) {
            cli->depth = (unsigned)fileread_count(cli->prog, v);
        } else if (strcmp(argv[i - 1], "--seconds") == 0) {
            char *end;
            cli->seconds = strtod(v, &end);
            if (*end != '\0' || !(cli->seconds > 0.0 && cli->seconds < 86400.0))
                fileread_usage(cli->prog);
        } else {
            fileread_usage(cli->prog);
        }
    }
    if (!cli->file || cli->block % (cli->odirect ? 512u : 1u) != 0)
        fileread_usage(cli->prog);
}

/* The next offset: a uniformly random block of a file of `blocks` blocks. */
static inline uint64_t fileread_next_offset(fileread_cli_t *cli, uint64_t blocks)
{
    return (bench_splitmix64(&cli->rng) % blocks) * cli->block;
}

/* CPU time of the whole process (all its threads), ns. */
static inline uint64_t fileread_cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) * 1000000000u +
           ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000u;
}

static inline void fileread_report(uint64_t reads, double seconds, uint64_t cpu_ns)
{
    printf("iops %.0f cpu_ns_per_op %.1f\n", (double)reads / seconds,
           reads ? (double)cpu_ns / (double)reads : 0.0);
    fflush(stdout);
}

#endif
