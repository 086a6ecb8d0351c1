/* qk_sign_fn over an OpenSSL private key (see qwick/ossl_signer.h). */
#include <stdlib.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "internal.h"
#include "qwick/ossl_signer.h"

qk_err qk_evp_sign_digest(EVP_PKEY *key, qk_hash_alg alg, const uint8_t *digest, size_t len,
                          qk_buf *sig)
{
    qk_err rc = QK_ERR_NOMEM;
    EVP_PKEY_CTX *ctx = NULL;
    uint8_t *buf = NULL;
    size_t siglen = 0;

    if (sig == NULL)
        return QK_ERR_INVALID_ARG;
    sig->data = NULL;
    sig->len = 0;
    ERR_clear_error(); /* stale queue entries would pollute our details */
    if (key == NULL || digest == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "no key or no digest");
    const EVP_MD *md = EVP_get_digestbynid(qk_hash_nid(alg));
    if (md == NULL)
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "digest algorithm %d", (int)alg);
    if (len != qk_hash_size(alg))
        return qk_fail(QK_ERR_INVALID_ARG, "digest is %zu bytes, %s needs %zu", len,
                       qk_hash_name(alg), qk_hash_size(alg));
    int is_rsa = EVP_PKEY_is_a(key, "RSA");
    if (!is_rsa && !EVP_PKEY_is_a(key, "EC"))
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "key type %s (RSA and EC are supported)",
                       EVP_PKEY_get0_type_name(key));
    if ((ctx = EVP_PKEY_CTX_new(key, NULL)) == NULL)
        goto out;
    /* The signature md makes RSA wrap the digest in DigestInfo(alg) before
     * PKCS#1 v1.5 padding, and makes ECDSA check the digest length. */
    if (EVP_PKEY_sign_init(ctx) != 1 || EVP_PKEY_CTX_set_signature_md(ctx, md) != 1 ||
        (is_rsa && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) != 1) ||
        EVP_PKEY_sign(ctx, NULL, &siglen, digest, len) != 1) {
        rc = qk_fail_ossl(QK_ERR_SIGNER, "setting up %s signing", EVP_PKEY_get0_type_name(key));
        goto out;
    }
    if ((buf = malloc(siglen ? siglen : 1)) == NULL) {
        rc = QK_ERR_NOMEM;
        goto out;
    }
    if (EVP_PKEY_sign(ctx, buf, &siglen, digest, len) != 1) {
        rc = qk_fail_ossl(QK_ERR_SIGNER, "%s signing", EVP_PKEY_get0_type_name(key));
        goto out;
    }
    sig->data = buf;
    sig->len = siglen;
    buf = NULL;
    rc = QK_OK;
out:
    free(buf);
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

qk_err qk_evp_sign_fn(void *ctx, qk_hash_alg alg, const uint8_t *digest, size_t len, qk_buf *sig)
{
    return qk_evp_sign_digest((EVP_PKEY *)ctx, alg, digest, len, sig);
}
