/* The one reader for untrusted bytes: a cursor that never moves past its end.
 * Every accessor checks `avail` before touching memory and returns
 * QK_ERR_TRUNCATED instead of reading out of bounds. */
#ifndef QK_LIB_READER_H
#define QK_LIB_READER_H

#include <stddef.h>
#include <stdint.h>
#include "qwick/error.h"

typedef struct qk_reader {
    const uint8_t *base; /* start of the whole buffer (for offsets) */
    const uint8_t *p;    /* cursor */
    size_t avail;        /* bytes left from p */
} qk_reader;

static inline void qk_rd_init(qk_reader *r, const uint8_t *data, size_t len)
{
    r->base = data;
    r->p = data;
    r->avail = len;
}

static inline size_t qk_rd_offset(const qk_reader *r) { return (size_t)(r->p - r->base); }

/* A reader over [off, off+len) of the buffer `data` of size `size`. */
static inline QK_WUR qk_err qk_rd_at(const uint8_t *data, size_t size, uint64_t off, uint64_t len,
                                    qk_reader *out)
{
    if (off > size || len > size - off)
        return QK_ERR_TRUNCATED;
    out->base = data;
    out->p = data + off;
    out->avail = (size_t)len;
    return QK_OK;
}

static inline QK_WUR qk_err qk_rd_skip(qk_reader *r, size_t n)
{
    if (r->avail < n)
        return QK_ERR_TRUNCATED;
    r->p += n;
    r->avail -= n;
    return QK_OK;
}

static inline QK_WUR qk_err qk_rd_bytes(qk_reader *r, size_t n, const uint8_t **out)
{
    if (r->avail < n)
        return QK_ERR_TRUNCATED;
    *out = r->p;
    r->p += n;
    r->avail -= n;
    return QK_OK;
}

static inline QK_WUR qk_err qk_rd_u8(qk_reader *r, uint8_t *v)
{
    if (r->avail < 1)
        return QK_ERR_TRUNCATED;
    *v = r->p[0];
    r->p++;
    r->avail--;
    return QK_OK;
}

static inline QK_WUR qk_err qk_rd_u16le(qk_reader *r, uint16_t *v)
{
    if (r->avail < 2)
        return QK_ERR_TRUNCATED;
    *v = (uint16_t)(r->p[0] | (r->p[1] << 8));
    r->p += 2;
    r->avail -= 2;
    return QK_OK;
}

static inline QK_WUR qk_err qk_rd_u32le(qk_reader *r, uint32_t *v)
{
    if (r->avail < 4)
        return QK_ERR_TRUNCATED;
    *v = (uint32_t)r->p[0] | ((uint32_t)r->p[1] << 8) | ((uint32_t)r->p[2] << 16) |
         ((uint32_t)r->p[3] << 24);
    r->p += 4;
    r->avail -= 4;
    return QK_OK;
}

/* Splits off the next n bytes as an independent reader. */
static inline QK_WUR qk_err qk_rd_sub(qk_reader *r, size_t n, qk_reader *sub)
{
    if (r->avail < n)
        return QK_ERR_TRUNCATED;
    sub->base = r->base;
    sub->p = r->p;
    sub->avail = n;
    r->p += n;
    r->avail -= n;
    return QK_OK;
}

/* Little-endian stores for building output. */
static inline void qk_put_u16le(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void qk_put_u32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t qk_get_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

#endif
