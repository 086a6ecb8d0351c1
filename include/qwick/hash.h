/* Digest algorithms Qwick knows. SHA-1 exists only to verify legacy signatures. */
#ifndef QWICK_HASH_H
#define QWICK_HASH_H

#include <stddef.h>
#include "qwick/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qk_hash_alg {
    QK_HASH_NONE = 0,
    QK_HASH_SHA1,
    QK_HASH_SHA256,
    QK_HASH_SHA384,
    QK_HASH_SHA512
} qk_hash_alg;

#define QK_HASH_MAX_SIZE 64

/* "sha256" -> QK_HASH_SHA256 (case-insensitive, "sha-256" accepted); QK_HASH_NONE if unknown. */
QK_EXPORT qk_hash_alg qk_hash_from_name(const char *name);
/* Canonical lowercase name ("sha256"), or "unknown". */
QK_EXPORT const char *qk_hash_name(qk_hash_alg alg);
/* Output length in bytes, 0 if unknown. */
QK_EXPORT size_t qk_hash_size(qk_hash_alg alg);
/* OpenSSL NID of the algorithm (NID_sha256 ...), 0 if unknown. */
QK_EXPORT int qk_hash_nid(qk_hash_alg alg);
/* Inverse of qk_hash_nid; QK_HASH_NONE if not a supported digest. */
QK_EXPORT qk_hash_alg qk_hash_from_nid(int nid);

#ifdef __cplusplus
}
#endif
#endif
