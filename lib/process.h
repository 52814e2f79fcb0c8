/*
 * lib/process.h — what the process pool's files share (layer procpool):
 * the channel's wire format and its decoder (process_frame.c), the
 * registry and the worker (process_worker.c), and how workers are started
 * (process_spawn.c).  process_pool.c is the parent's side.
 */
#ifndef URIO_PROCESS_INTERNAL_H
#define URIO_PROCESS_INTERNAL_H

#include "executor.h"
#include "urio/process_pool.h"

#include <sys/types.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* The wire: length-prefixed frames on a stream socket                  */

/*
 * Every frame is a 32-byte header, then `text_len` bytes of text (a job's
 * function name, a result's error message), then the payload inline, or
 * nothing when the payload travels in a sealed memfd sent with the frame
 * (SCM_RIGHTS; flag URIO__PF_SHM).  Both ends are the same program on the
 * same machine: fields are in the host's byte order.
 */
enum {
    URIO__PF_MAGIC = 0x5046,            /* "PF" */
    URIO__PF_VERSION = 1,
    URIO__PF_HEADER = 32,
    URIO__PF_SHM_MIN = 64 * 1024,       /* payloads from here up go through a memfd */
    URIO__PF_NAME_MAX = 255,            /* a function's name */
    URIO__PF_MSG_MAX = 1024,            /* an error message */
    /* The longest frame: header, the longest text, the longest inline payload. */
    URIO__PF_FRAME_MAX = URIO__PF_HEADER + URIO__PF_MSG_MAX + URIO__PF_SHM_MIN - 1,
};

enum urio__pf_type {
    URIO__PF_CONFIG = 1,    /* parent -> worker, first: the worker's settings */
    URIO__PF_READY = 2,     /* worker -> parent: started, configured, taking jobs */
    URIO__PF_JOB = 3,       /* parent -> worker: run a function */
    URIO__PF_RESULT = 4,    /* worker -> parent: a job's output or error */
};

#define URIO__PF_SHM 0x01u      /* the payload is in a memfd: the one sent with this frame, */
#define URIO__PF_INOFFER 0x04u  /* RESULT: ... or the buffer the JOB offered (no fd sent) */
#define URIO__PF_OUTBUF 0x02u   /* JOB: a memfd offered for the output comes (after the input's) */

typedef struct urio__pf_header {
    uint32_t len;           /* the whole frame, header included */
    uint16_t magic;         /* URIO__PF_MAGIC */
    uint8_t type;           /* enum urio__pf_type */
    uint8_t flags;          /* URIO__PF_SHM or 0 */
    uint32_t seq;           /* JOB, RESULT: the job's number; CONFIG, READY: the version */
    int32_t err;            /* RESULT: 0 or a negative error; else 0 */
    uint16_t text_len;      /* JOB: the name (1..255); RESULT: the message (error only) */
    uint16_t reserved;      /* 0 */
    uint32_t reserved2;     /* 0 */
    uint64_t payload_len;   /* the payload's bytes, inline or in the memfd */
} urio__pf_header_t;

_Static_assert(sizeof(urio__pf_header_t) == URIO__PF_HEADER, "the header is 32 bytes");

/* The payloads of CONFIG and READY (inline, exactly these sizes). */
typedef struct urio__pf_config {
    uint64_t max_payload;   /* bytes in or out per job */
    uint64_t memory;        /* RLIMIT_AS, or 0 */
} urio__pf_config_t;

typedef struct urio__pf_ready {
    uint32_t pid;           /* the worker's own */
    uint32_t reserved;      /* 0 */
} urio__pf_ready_t;

/* A decoded frame: pointers into the buffer it was decoded from. */
typedef struct urio__pf_frame {
    urio__pf_header_t h;
    const char *text;       /* h.text_len bytes, not NUL-terminated */
    const void *payload;    /* inline payload, or NULL when URIO__PF_SHM */
} urio__pf_frame_t;

/*
 * Decodes the frame at the start of buf[0..len): every field is checked
 * against what `accept` (a mask of 1 << type) allows and max_payload.
 * Returns: the frame's length (> 0) with *out filled; 0 if buf holds only
 * part of a valid frame so far; -EPROTO for a malformed frame, with *why
 * a static text saying which field.  Pure: no allocation, no I/O.
 */
ssize_t urio__pf_decode(const void *buf, size_t len, unsigned accept, uint64_t max_payload,
                        urio__pf_frame_t *out, const char **why);

/* Fills a header for a frame of these fields. */
void urio__pf_header_init(urio__pf_header_t *h, uint8_t type, uint8_t flags, uint32_t seq,
                          int32_t err, uint16_t text_len, uint64_t payload_len);

/*
 * A sealed memfd holding len bytes (for a payload from URIO__PF_SHM_MIN up):
 * created, sized, mapped writable at *map for the caller to fill.  Seal it
 * with urio__pf_shm_seal once filled (after unmapping).
 * Returns: the fd, or a negative errno.
 */
int urio__pf_shm_create(size_t len, void **map);
/* Seals fd's size (shrink, grow, further seals) after the writer unmapped it. */
int urio__pf_shm_seal(int fd);
/*
 * Maps a received memfd read-only after checking it is sealed against
 * shrinking and holds at least len bytes (so reading it can never fault).
 * Returns: the mapping, or NULL with *why set.
 */
void *urio__pf_shm_map(int fd, size_t len, const char **why);

/* ------------------------------------------------------------------ */
/* The registry and the worker (process_worker.c)                       */

/* The registered function named name[0..len), or NULL. */
const urio_process_fn_def_t *urio__process_fn_find(const char *name, size_t len);
/* True if any function is registered. */
bool urio__process_fn_any(void);
/*
 * Runs a worker on channel fd (never returns): reads CONFIG, answers READY,
 * then runs jobs until the parent closes the channel.  expected_parent is
 * the pid that must stay its parent.
 */
__attribute__((noreturn)) void urio__process_worker_run(int fd, pid_t expected_parent);

/* How a worker or the fork server ends: _exit, its coverage counters written first
 * in coverage builds (URIO_COVERAGE_FLUSH, lib/common.h). */
__attribute__((noreturn)) static inline void urio__process_exit(int status)
{
    URIO_COVERAGE_FLUSH();
    _exit(status);      /* GCOVR_EXCL_LINE: what runs after the flush is never counted */
}

/*
 * Test hooks (tests/test_process_pool.c), in the worker: die at the next
 * job's take (after reading it, before running it), or halfway through
 * sending this job's result; or now.  `how`: URIO__PT_SEGV...
 */
enum { URIO__PT_TAKE = 1, URIO__PT_SEND = 2 };
enum { URIO__PT_SEGV = 1, URIO__PT_KILL, URIO__PT_ABORT, URIO__PT_EXIT3, URIO__PT_HANG };
void urio__process_test_die(int moment, int how);
void urio__process_test_die_now(int how);

/* The environment variable that makes a started program a worker: "FD,PPID". */
#define URIO__PROCESS_ENV "URIO_PROCESS_WORKER"
/* The fd a worker's channel has in the worker. */
#define URIO__PROCESS_CHANNEL_FD 3

/* ------------------------------------------------------------------ */
/* Starting workers (process_spawn.c)                                   */

/*
 * Starts a worker whose channel is child_fd (always closed here, in the
 * parent).  how: URIO_PROCESS_START_*.  With exec the pid is known at once;
 * the fork server's worker tells it in READY (*pid = 0).
 * Returns: 0, or a negative errno (-ENOTCONN: no fork server).
 */
int urio__process_spawn(int how, int child_fd, pid_t *pid);

/*
 * Test hook: true makes urio__process_pidfd_open fail with ENOSYS, as on
 * kernels before 5.3, so the fallback (exits seen through the channel's
 * end, then waitpid) is tested here too.  Set only while no pool runs.
 */
extern bool urio__process_no_pidfd;
/* pidfd_open(pid), or a negative errno (-ENOSYS where the kernel lacks it). */
int urio__process_pidfd_open(pid_t pid);
/* Sends sig through a pidfd (pidfd_send_signal), else by pid. */
int urio__process_signal(int pidfd, pid_t pid, int sig);
/* Closes every fd from `from` up (close_range, else one by one from /proc). */
void urio__process_close_from(int from);

#endif
