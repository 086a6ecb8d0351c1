/* Signing a digest with an OpenSSL EVP_PKEY: the local-key backend of qk_sign.
 * RSA keys give PKCS#1 v1.5 signatures over DigestInfo(alg, digest); EC keys
 * give DER ECDSA-Sig-Value. The key never leaves the caller. */
#ifndef QWICK_OSSL_SIGNER_H
#define QWICK_OSSL_SIGNER_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "qwick/authenticode.h"
#include "qwick/buf.h"
#include "qwick/error.h"
#include "qwick/export.h"
#include "qwick/hash.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Signs `digest` (len must be qk_hash_size(alg)) with `key`; *sig is heap
 * memory the caller releases with qk_buf_free. */
QK_EXPORT QK_WUR qk_err qk_evp_sign_digest(EVP_PKEY *key, qk_hash_alg alg, const uint8_t *digest,
                                           size_t len, qk_buf *sig);

/* A qk_sign_fn whose ctx is an EVP_PKEY *. */
QK_EXPORT qk_err qk_evp_sign_fn(void *ctx, qk_hash_alg alg, const uint8_t *digest, size_t len,
                                qk_buf *sig);

/* A reusable signer over one key: keeps initialized EVP_PKEY_CTXs (one per
 * concurrent caller and digest algorithm) in a pool, so a signature costs
 * EVP_PKEY_sign alone instead of a context creation, a provider fetch and the
 * padding setup. Thread-safe: each call takes a context from the pool (or
 * makes one) and puts it back. Same output as qk_evp_sign_digest. */
typedef struct qk_evp_signer qk_evp_signer;

/* Takes its own reference on `key`. */
QK_EXPORT QK_WUR qk_err qk_evp_signer_new(EVP_PKEY *key, qk_evp_signer **out);
QK_EXPORT QK_WUR qk_err qk_evp_signer_sign(qk_evp_signer *s, qk_hash_alg alg, const uint8_t *digest,
                                           size_t len, qk_buf *sig);
/* No call may be running on `s`. NULL-safe. */
QK_EXPORT void qk_evp_signer_free(qk_evp_signer *s);
/* A qk_sign_fn whose ctx is a qk_evp_signer *. */
QK_EXPORT qk_err qk_evp_signer_sign_fn(void *ctx, qk_hash_alg alg, const uint8_t *digest,
                                       size_t len, qk_buf *sig);

#ifdef __cplusplus
}
#endif
#endif
