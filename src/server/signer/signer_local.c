/* The local key backend: a private key unsealed into memory at start (see
 * signer.h), signing through libqwick's qk_evp_signer (a pool of initialized
 * EVP_PKEY_CTXs: creating and initializing one per signature costs a provider
 * fetch under OpenSSL 3.0's global locks). */
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include "signer/pki.h"
#include "qwick/ossl_signer.h"
#include "core/secrets.h"
#include "signer/signer.h"
#include "store/store.h"
#include "core/util.h"

typedef struct local_signer {
    qk_signer base;
    qk_evp_signer *evp;
} local_signer;

static qk_err local_sign(qk_signer *s, qk_hash_alg alg, const uint8_t *digest, size_t len,
                         qk_buf *sig)
{
    return qk_evp_signer_sign(((local_signer *)s)->evp, alg, digest, len, sig);
}

static void local_free(qk_signer *s)
{
    local_signer *ls = (local_signer *)s;
    if (ls == NULL)
        return;
    qk_evp_signer_free(ls->evp);
    qk_buf_free(&ls->base.chain_der);
    free(ls);
}

static const signer_ops local_ops = {
    .sign = local_sign,
    .free = local_free,
};

qk_err signer_sign_fn(void *ctx, qk_hash_alg alg, const uint8_t *digest, size_t len, qk_buf *sig)
{
    qk_signer *s = ctx;
    return s->ops->sign(s, alg, digest, len, sig);
}

void signer_free(qk_signer *s)
{
    if (s != NULL)
        s->ops->free(s);
}

/* The key must belong to the chain's leaf: a mismatched profile would
 * otherwise produce signatures that fail only at verification time. */
static qk_err check_key_matches_leaf(EVP_PKEY *key, qk_slice chain)
{
    const unsigned char *p = chain.data;
    X509 *leaf = NULL;
    qk_err rc = QK_OK;
    if (chain.len == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "empty certificate chain");
    leaf = d2i_X509(NULL, &p, (long)chain.len);
    if (leaf == NULL)
        return qk_fail_ossl(QK_ERR_BAD_DER, "first certificate of the chain");
    if (X509_check_private_key(leaf, key) != 1)
        rc = qk_fail_ossl(QK_ERR_INVALID_ARG, "the key does not match the chain's leaf");
    X509_free(leaf);
    return rc;
}

qk_err signer_local_new(qk_slice pem_key, qk_slice chain_der, qk_signer **out)
{
    qk_err rc;
    local_signer *ls = NULL;
    EVP_PKEY *key = NULL;
    qk_evp_signer *evp = NULL;

    *out = NULL;
    if ((rc = pki_parse_key_pem(pem_key, &key)) != QK_OK)
        return rc;
    if ((rc = check_key_matches_leaf(key, chain_der)) != QK_OK ||
        (rc = qk_evp_signer_new(key, &evp)) != QK_OK)
        goto out;
    ls = xcalloc(1, sizeof(*ls));
    ls->base.ops = &local_ops;
    ls->base.chain_der.data = xmalloc(chain_der.len);
    memcpy(ls->base.chain_der.data, chain_der.data, chain_der.len);
    ls->base.chain_der.len = chain_der.len;
    /* OpenSSL's RSA private operation verifies its CRT result with the public
     * exponent (and recomputes a wrong one); the key matched the leaf above. */
    ls->base.self_checked = EVP_PKEY_is_a(key, "RSA");
    ls->evp = evp;
    evp = NULL;
    *out = &ls->base;
    rc = QK_OK;
out:
    EVP_PKEY_free(key);
    return rc;
}

qk_err signer_open_profile(struct qk_store *st, const struct qk_keyring *kr,
                           const struct store_profile *p, qk_signer **out)
{
    qk_err rc;
    store_signing_key key;
    qk_buf pem = {NULL, 0};
    char aad[SECRETS_AAD_MAX];
    int found = 0;

    *out = NULL;
    if (p->backend == NULL || strcmp(p->backend, "local") != 0)
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "profile %s: backend '%s' is not available", p->name,
                       p->backend ? p->backend : "");
    if ((rc = STORE_CALL(st, signing_key_get, p->org_id, p->key_id, &key, &found)) != QK_OK)
        return rc;
    if (key.kind == NULL || strcmp(key.kind, "local-pem") != 0) {
        rc = qk_fail(QK_ERR_UNSUPPORTED_ALG, "signing key kind '%s'", key.kind ? key.kind : "");
        goto out;
    }
    secrets_aad_signing_key(aad, p->org_id);
    if ((rc = secrets_open(kr, (qk_slice){key.sealed.data, key.sealed.len}, aad, &pem)) != QK_OK)
        goto out;
    rc = signer_local_new((qk_slice){pem.data, pem.len},
                          (qk_slice){p->chain_der.data, p->chain_der.len}, out);
out:
    qk_buf_free(&pem);
    store_signing_key_clear(&key);
    return rc;
}
