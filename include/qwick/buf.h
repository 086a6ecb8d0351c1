/* Byte slices shared across the public API. */
#ifndef QWICK_BUF_H
#define QWICK_BUF_H

#include <stddef.h>
#include <stdint.h>
#include "qwick/export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A borrowed view: the callee never frees it. */
typedef struct qk_slice {
    const uint8_t *data;
    size_t len;
} qk_slice;

/* An owned, heap-allocated buffer: release with qk_buf_free(). */
typedef struct qk_buf {
    uint8_t *data;
    size_t len;
} qk_buf;

/* Frees b->data (wiping it first) and resets b to {NULL, 0}. NULL-safe. */
QK_EXPORT void qk_buf_free(qk_buf *b);

#ifdef __cplusplus
}
#endif
#endif
