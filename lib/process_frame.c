/*
 * process_frame.c — the process pool's wire: the frame decoder both ends
 * use, and the sealed memfds that carry large payloads.
 *
 * The decoder trusts nothing: a worker may be buggy or compromised, and
 * what it sends must never crash or confuse the parent.  Each field is
 * checked against the one value or range it may hold; a frame that breaks
 * any rule fails the channel (the caller kills that worker).  It is fuzzed
 * (tests/fuzz/fuzz_frame.c).
 */
#include "process.h"

#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void urio__pf_header_init(urio__pf_header_t *h, uint8_t type, uint8_t flags, uint32_t seq,
                          int32_t err, uint16_t text_len, uint64_t payload_len)
{
    memset(h, 0, sizeof *h);
    h->magic = URIO__PF_MAGIC;
    h->type = type;
    h->flags = flags;
    h->seq = seq;
    h->err = err;
    h->text_len = text_len;
    h->payload_len = payload_len;
    h->len = (uint32_t)(URIO__PF_HEADER + text_len + ((flags & URIO__PF_SHM) ? 0 : payload_len));
}

/* An error a result may carry: a negative errno, or one of urio's own codes. */
static bool valid_error(int32_t err)
{
    return (err < 0 && err >= -4095) || (err <= -10001 && err >= -10999);
}

#define MALFORMED(text)                                                             \
    do {                                                                            \
        *why = (text);                                                              \
        return -EPROTO;                                                             \
    } while (0)

ssize_t urio__pf_decode(const void *buf, size_t len, unsigned accept, uint64_t max_payload,
                        urio__pf_frame_t *out, const char **why)
{
    if (len < URIO__PF_HEADER)
        return 0;
    urio__pf_header_t h;
    memcpy(&h, buf, sizeof h);      /* buf may be unaligned */
    if (h.magic != URIO__PF_MAGIC)
        MALFORMED("bad magic");
    if (h.type < URIO__PF_CONFIG || h.type > URIO__PF_RESULT || !(accept & (1u << h.type)))
        MALFORMED("unexpected frame type");
    if (h.flags & ~(URIO__PF_SHM | URIO__PF_OUTBUF | URIO__PF_INOFFER))
        MALFORMED("unknown flags");
    if (((h.flags & URIO__PF_OUTBUF) && h.type != URIO__PF_JOB) ||
        ((h.flags & URIO__PF_INOFFER) && (h.type != URIO__PF_RESULT || !(h.flags & URIO__PF_SHM))))
        MALFORMED("flags out of place");
    if (h.reserved != 0 || h.reserved2 != 0)
        MALFORMED("reserved field not zero");
    if (h.len < URIO__PF_HEADER || h.len > URIO__PF_FRAME_MAX)
        MALFORMED("frame length out of range");
    if (h.payload_len > max_payload)
        MALFORMED("payload over the limit");
    bool shm = (h.flags & URIO__PF_SHM) != 0;
    if (shm != (h.payload_len >= URIO__PF_SHM_MIN))
        MALFORMED("payload in the wrong place for its size");
    switch (h.type) {
    case URIO__PF_CONFIG:
        if (h.seq != URIO__PF_VERSION || h.err != 0 || h.text_len != 0 || h.flags != 0 ||
            h.payload_len != sizeof(urio__pf_config_t))
            MALFORMED("bad CONFIG frame");
        break;
    case URIO__PF_READY:
        if (h.seq != URIO__PF_VERSION || h.err != 0 || h.text_len != 0 || h.flags != 0 ||
            h.payload_len != sizeof(urio__pf_ready_t))
            MALFORMED("bad READY frame");
        break;
    case URIO__PF_JOB:
        if (h.err != 0)
            MALFORMED("a job with an error");
        if (h.text_len == 0 || h.text_len > URIO__PF_NAME_MAX)
            MALFORMED("function name length out of range");
        break;
    case URIO__PF_RESULT:
        if (h.err != 0 && !valid_error(h.err))
            MALFORMED("result error out of range");
        if (h.err == 0 && h.text_len != 0)
            MALFORMED("a message without an error");
        if (h.err != 0 && h.payload_len != 0)
            MALFORMED("an error with a payload");
        if (h.text_len > URIO__PF_MSG_MAX)
            MALFORMED("message length out of range");
        break;
    }
    uint64_t want = (uint64_t)URIO__PF_HEADER + h.text_len + (shm ? 0 : h.payload_len);
    if (h.len != want)
        MALFORMED("frame length disagrees with its fields");
    if (len < h.len)
        return 0;
    const char *p = (const char *)buf + URIO__PF_HEADER;
    if (h.type == URIO__PF_JOB && memchr(p, '\0', h.text_len) != NULL)
        MALFORMED("NUL in the function name");
    if (h.type == URIO__PF_READY) {
        urio__pf_ready_t r;
        memcpy(&r, p, sizeof r);
        if (r.pid == 0 || r.pid > (uint32_t)INT32_MAX || r.reserved != 0)
            MALFORMED("bad pid in READY");
    }
    out->h = h;
    out->text = p;
    out->payload = shm ? NULL : p + h.text_len;
    return (ssize_t)h.len;
}

/* ------------------------------------------------------------------ */
/* Shared memory                                                        */

int urio__pf_shm_create(size_t len, void **map)
{
    int fd = memfd_create("urio-payload", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)len) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    /* Populated: the caller fills it all; one call allocates what a fault per page would. */
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) {
        int err = -errno;
        close(fd);
        return err;
    }
    *map = p;
    return fd;
}

int urio__pf_shm_seal(int fd)
{
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
        return -errno;
    return 0;
}

void *urio__pf_shm_map(int fd, size_t len, const char **why)
{
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
        *why = "payload memfd not sealed against shrinking";
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size < len) {
        *why = "payload memfd smaller than its frame says";
        return NULL;
    }
    /* Populated: the pages exist (the sender wrote them); mapping them all at once beats a fault each. */
    void *p = mmap(NULL, len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) {
        *why = "payload memfd cannot be mapped";
        return NULL;
    }
    return p;
}
