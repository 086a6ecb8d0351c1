/* qk_sign_fn over an OpenSSL private key (see qwick/ossl_signer.h). */
#include <stdlib.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>
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

/* --- qk_evp_signer: pooled, initialized contexts ---------------------------- */

/* Idle contexts kept beyond this are freed (more than the signing threads
 * ever use at once). */
#define QK_EVP_SIGNER_MAX_IDLE 64

typedef struct pooled_ctx {
    EVP_PKEY_CTX *ctx;
    qk_hash_alg alg;
    size_t siglen; /* the maximum signature size for this key */
    struct pooled_ctx *next;
} pooled_ctx;

struct qk_evp_signer {
    EVP_PKEY *key;
    int is_rsa;
    CRYPTO_RWLOCK *lock;
    pooled_ctx *idle;
    size_t n_idle;
};

static void pooled_free(pooled_ctx *p)
{
    if (p != NULL) {
        EVP_PKEY_CTX_free(p->ctx);
        free(p);
    }
}

qk_err qk_evp_signer_new(EVP_PKEY *key, qk_evp_signer **out)
{
    qk_evp_signer *s;

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    *out = NULL;
    ERR_clear_error();
    if (key == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "no key");
    int is_rsa = EVP_PKEY_is_a(key, "RSA");
    if (!is_rsa && !EVP_PKEY_is_a(key, "EC"))
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "key type %s (RSA and EC are supported)",
                       EVP_PKEY_get0_type_name(key));
    if ((s = calloc(1, sizeof(*s))) == NULL)
        return QK_ERR_NOMEM;
    if ((s->lock = CRYPTO_THREAD_lock_new()) == NULL) {
        free(s);
        return QK_ERR_NOMEM;
    }
    if (EVP_PKEY_up_ref(key) != 1) {
        CRYPTO_THREAD_lock_free(s->lock);
        free(s);
        return qk_fail_ossl(QK_ERR_SIGNER, "key reference");
    }
    s->key = key;
    s->is_rsa = is_rsa;
    *out = s;
    return QK_OK;
}

void qk_evp_signer_free(qk_evp_signer *s)
{
    if (s == NULL)
        return;
    for (pooled_ctx *p = s->idle, *next; p != NULL; p = next) {
        next = p->next;
        pooled_free(p);
    }
    CRYPTO_THREAD_lock_free(s->lock);
    EVP_PKEY_free(s->key);
    free(s);
}

/* An idle context for `alg`, or a new initialized one. */
static qk_err pool_take(qk_evp_signer *s, qk_hash_alg alg, pooled_ctx **out)
{
    pooled_ctx *p = NULL;

    *out = NULL;
    if (CRYPTO_THREAD_write_lock(s->lock) != 1)
        return qk_fail_ossl(QK_ERR_SIGNER, "signer lock");
    for (pooled_ctx **pp = &s->idle; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->alg == alg) {
            p = *pp;
            *pp = p->next;
            s->n_idle--;
            break;
        }
    }
    CRYPTO_THREAD_unlock(s->lock);
    if (p != NULL) {
        p->next = NULL;
        *out = p;
        return QK_OK;
    }

    static const uint8_t zero[QK_HASH_MAX_SIZE];
    const EVP_MD *md = EVP_get_digestbynid(qk_hash_nid(alg));
    if (md == NULL)
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "digest algorithm %d", (int)alg);
    if ((p = calloc(1, sizeof(*p))) == NULL)
        return QK_ERR_NOMEM;
    p->alg = alg;
    if ((p->ctx = EVP_PKEY_CTX_new(s->key, NULL)) == NULL) {
        free(p);
        return QK_ERR_NOMEM;
    }
    /* See qk_evp_sign_digest for what the md does. */
    if (EVP_PKEY_sign_init(p->ctx) != 1 || EVP_PKEY_CTX_set_signature_md(p->ctx, md) != 1 ||
        (s->is_rsa && EVP_PKEY_CTX_set_rsa_padding(p->ctx, RSA_PKCS1_PADDING) != 1) ||
        EVP_PKEY_sign(p->ctx, NULL, &p->siglen, zero, qk_hash_size(alg)) != 1) {
        qk_err rc =
            qk_fail_ossl(QK_ERR_SIGNER, "setting up %s signing", EVP_PKEY_get0_type_name(s->key));
        pooled_free(p);
        return rc;
    }
    *out = p;
    return QK_OK;
}

static void pool_put(qk_evp_signer *s, pooled_ctx *p)
{
    if (CRYPTO_THREAD_write_lock(s->lock) == 1) {
        if (s->n_idle < QK_EVP_SIGNER_MAX_IDLE) {
            p->next = s->idle;
            s->idle = p;
            s->n_idle++;
            p = NULL;
        }
        CRYPTO_THREAD_unlock(s->lock);
    }
    pooled_free(p);
}

qk_err qk_evp_signer_sign(qk_evp_signer *s, qk_hash_alg alg, const uint8_t *digest, size_t len,
                          qk_buf *sig)
{
    qk_err rc;
    pooled_ctx *p = NULL;
    uint8_t *buf = NULL;

    if (sig == NULL)
        return QK_ERR_INVALID_ARG;
    sig->data = NULL;
    sig->len = 0;
    ERR_clear_error();
    if (s == NULL || digest == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "no signer or no digest");
    if (qk_hash_size(alg) == 0)
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "digest algorithm %d", (int)alg);
    if (len != qk_hash_size(alg))
        return qk_fail(QK_ERR_INVALID_ARG, "digest is %zu bytes, %s needs %zu", len,
                       qk_hash_name(alg), qk_hash_size(alg));
    if ((rc = pool_take(s, alg, &p)) != QK_OK)
        return rc;
    size_t siglen = p->siglen;
    if ((buf = malloc(siglen ? siglen : 1)) == NULL) {
        rc = QK_ERR_NOMEM;
        goto out;
    }
    if (EVP_PKEY_sign(p->ctx, buf, &siglen, digest, len) != 1) {
        rc = qk_fail_ossl(QK_ERR_SIGNER, "%s signing", EVP_PKEY_get0_type_name(s->key));
        /* A context that failed is not trusted again. */
        pooled_free(p);
        p = NULL;
        goto out;
    }
    sig->data = buf;
    sig->len = siglen;
    buf = NULL;
    rc = QK_OK;
out:
    free(buf);
    if (p != NULL)
        pool_put(s, p);
    return rc;
}

qk_err qk_evp_signer_sign_fn(void *ctx, qk_hash_alg alg, const uint8_t *digest, size_t len,
                             qk_buf *sig)
{
    return qk_evp_signer_sign((qk_evp_signer *)ctx, alg, digest, len, sig);
}
