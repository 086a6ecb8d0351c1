/* Key backends that sign in-process: something that signs a digest with a key
 * that never leaves the server. "local" (a sealed PEM key) now; "pkcs11"
 * later. Azure Trusted Signing signs remotely and asynchronously: see
 * azure/azure.h. */
#ifndef QWICKD_SIGNER_H
#define QWICKD_SIGNER_H

#include "qwick/authenticode.h"
#include "qwick/buf.h"
#include "qwick/error.h"
#include "qwick/hash.h"

typedef struct qk_signer qk_signer;

typedef struct signer_ops {
    /* Signs `digest` (already hashed with alg): RSA PKCS#1 v1.5 or DER ECDSA. */
    qk_err (*sign)(qk_signer *s, qk_hash_alg alg, const uint8_t *digest, size_t len, qk_buf *sig);
    void (*free)(qk_signer *s);
} signer_ops;

struct qk_signer {
    const signer_ops *ops;
    qk_buf chain_der;  /* concatenated DER certificates, leaf first */
    /* The backend checks its own signatures and its key matches the chain's
     * leaf, so assembly may skip its own check (qk_sign_request.self_checked):
     * the local backend with an RSA key. HSM and remote backends leave it 0. */
    int self_checked;
};

/* A qk_sign_fn adapter: ctx is a qk_signer*. */
qk_err signer_sign_fn(void *ctx, qk_hash_alg alg, const uint8_t *digest, size_t len, qk_buf *sig);

/* Local backend: `pem_key` is the decrypted PEM private key (wiped by the caller).
 * The key must match chain_der's first certificate. The signer is safe to use
 * from many threads at once (each call takes its own EVP_PKEY_CTX from the
 * signer's pool). */
qk_err signer_local_new(qk_slice pem_key, qk_slice chain_der, qk_signer **out);

/* Frees a signer of any backend (NULL-safe). */
void signer_free(qk_signer *s);

struct qk_store;
struct qk_keyring;
struct store_profile;
/* The signer a profile names: reads its signing key (same org) from the store,
 * unseals it under the keyring (AAD secrets_aad_signing_key(org)), and builds
 * the backend ("local" now). The plaintext key is wiped before returning. */
qk_err signer_open_profile(struct qk_store *st, const struct qk_keyring *kr,
                           const struct store_profile *p, qk_signer **out);

#endif
