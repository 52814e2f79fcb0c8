/*
 * fuzz_frame.c — libFuzzer target for the process pool's frame decoder
 * (lib/process_frame.c): any bytes, decoded as a stream of frames under each
 * direction's rules, must give frames that lie wholly inside the input and
 * agree with their own fields, or a clean "malformed" / "need more".
 *
 * Built with clang's -fsanitize=fuzzer where clang is found; replay.c runs
 * the corpus through the same function in every build (meson test
 * fuzz-frame-corpus).
 */
#include "process.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "fuzz_frame: %s broken at line %d\n", #cond, __LINE__); \
            abort();                                                                \
        }                                                                           \
    } while (0)

static void decode_stream(const uint8_t *data, size_t size, unsigned accept, uint64_t max)
{
    size_t off = 0;
    while (off < size) {
        urio__pf_frame_t f;
        const char *why = NULL;
        ssize_t n = urio__pf_decode(data + off, size - off, accept, max, &f, &why);
        if (n < 0) {
            CHECK(n == -EPROTO && why != NULL);
            return;
        }
        if (n == 0)
            return;
        CHECK((size_t)n >= URIO__PF_HEADER && (size_t)n <= size - off);
        CHECK(n == (ssize_t)f.h.len && f.h.len <= URIO__PF_FRAME_MAX);
        CHECK(accept & (1u << f.h.type));
        CHECK(f.h.payload_len <= max);
        const uint8_t *start = data + off, *end = start + n;
        CHECK((const uint8_t *)f.text == start + URIO__PF_HEADER);
        CHECK((const uint8_t *)f.text + f.h.text_len <= end);
        if (f.h.flags & URIO__PF_SHM) {
            CHECK(f.payload == NULL && f.h.payload_len >= URIO__PF_SHM_MIN);
        } else {
            CHECK((const uint8_t *)f.payload + f.h.payload_len == end);
            CHECK(f.h.payload_len < URIO__PF_SHM_MIN);
        }
        if (f.h.type == URIO__PF_JOB)
            CHECK(f.h.text_len >= 1 && f.h.text_len <= URIO__PF_NAME_MAX &&
                  memchr(f.text, 0, f.h.text_len) == NULL);
        if (f.h.type == URIO__PF_RESULT && f.h.err != 0)
            CHECK(f.h.err < 0 && f.h.payload_len == 0);
        /* Touch every byte the frame claims: ASan sees any overread. */
        volatile uint8_t sink = 0;
        for (const uint8_t *p = start; p < end; p++)
            sink ^= *p;
        (void)sink;
        off += (size_t)n;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned accepts[] = {
        1u << URIO__PF_CONFIG,                          /* a worker's first frame */
        1u << URIO__PF_JOB,                             /* a worker's jobs */
        1u << URIO__PF_READY,                           /* the parent, before READY */
        1u << URIO__PF_RESULT,                          /* the parent, after */
        (1u << URIO__PF_CONFIG) | (1u << URIO__PF_READY) | (1u << URIO__PF_JOB) |
            (1u << URIO__PF_RESULT),
    };
    for (size_t i = 0; i < sizeof accepts / sizeof accepts[0]; i++) {
        decode_stream(data, size, accepts[i], 64u << 20);
        decode_stream(data, size, accepts[i], 100);     /* a small payload limit */
    }
    return 0;
}
