/* Shared by the fuzz harnesses: the libFuzzer entry point's prototype and an
 * invariant check that crashes (so both libFuzzer and the corpus replay in
 * `make test` report it) instead of returning quietly. */
#ifndef QK_FUZZ_COMMON_H
#define QK_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Reads every byte of a region so ASan checks it is really inside the input. */
static inline uint8_t fuzz_touch(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc ^= p[i];
    return acc;
}

#endif
