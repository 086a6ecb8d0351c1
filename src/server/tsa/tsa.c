/* RFC 3161 responder on OpenSSL's TS_RESP_CTX (tsa.h): the answers to
 * POST /tsa (api/api_tsa.c) and the server-side timestamps of the signing
 * engine. No HTTP here. */
#include "tsa/tsa.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ts.h>

#include "qwick/tsp.h"

struct tsa {
    X509 *cert;
    EVP_PKEY *key;
    STACK_OF(X509) *chain; /* may be NULL */
    ASN1_OBJECT *policy;
    uint8_t serial_prefix[8];
    atomic_uint_fast64_t counter;
};

qk_err tsa_new(X509 *cert, EVP_PKEY *key, STACK_OF(X509) *chain, const char *policy_oid, tsa **out)
{
    qk_err rc = QK_ERR_CRYPTO;
    tsa *t = NULL;
    *out = NULL;

    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return QK_ERR_NOMEM;
    t->policy = OBJ_txt2obj(policy_oid ? policy_oid : TSA_DEFAULT_POLICY, 1);
    if (t->policy == NULL) {
        rc = qk_fail(QK_ERR_INVALID_ARG, "TSA policy %s is not a dotted OID", policy_oid);
        goto out;
    }
    /* TS_RESP_CTX_set_signer_cert insists on the critical timeStamping EKU;
     * check it here once so a wrong certificate fails start-up, not requests. */
    if (X509_check_purpose(cert, X509_PURPOSE_TIMESTAMP_SIGN, 0) != 1 ||
        X509_check_private_key(cert, key) != 1) {
        rc = qk_fail_ossl(QK_ERR_CRYPTO,
                          "TSA certificate lacks the timeStamping EKU or does not match its key");
        goto out;
    }
    if (!X509_up_ref(cert) || !EVP_PKEY_up_ref(key))
        goto out;
    t->cert = cert;
    t->key = key;
    if (chain != NULL && (t->chain = X509_chain_up_ref(chain)) == NULL)
        goto out;
    if (RAND_bytes(t->serial_prefix, sizeof(t->serial_prefix)) != 1) {
        rc = qk_fail_ossl(QK_ERR_CRYPTO, "RAND_bytes");
        goto out;
    }
    /* Positive and never starting with a zero byte: serials stay 16 bytes. */
    t->serial_prefix[0] = (uint8_t)((t->serial_prefix[0] & 0x7f) | 0x40);
    atomic_init(&t->counter, 1);
    *out = t;
    t = NULL;
    rc = QK_OK;
out:
    tsa_free(t);
    return rc;
}

void tsa_free(tsa *t)
{
    if (t == NULL)
        return;
    X509_free(t->cert);
    EVP_PKEY_free(t->key);
    sk_X509_pop_free(t->chain, X509_free);
    ASN1_OBJECT_free(t->policy);
    free(t);
}

static ASN1_INTEGER *serial_cb(TS_RESP_CTX *ctx, void *data)
{
    tsa *t = data;
    uint8_t b[16];
    uint64_t n = atomic_fetch_add(&t->counter, 1);
    memcpy(b, t->serial_prefix, 8);
    for (int i = 0; i < 8; i++)
        b[8 + i] = (uint8_t)(n >> (56 - 8 * i));
    ASN1_INTEGER *ai = NULL;
    BIGNUM *bn = BN_bin2bn(b, sizeof(b), NULL);
    if (bn != NULL)
        ai = BN_to_ASN1_INTEGER(bn, NULL);
    BN_free(bn);
    if (ai == NULL) {
        TS_RESP_CTX_set_status_info(ctx, TS_STATUS_REJECTION, "cannot allocate a serial number");
        TS_RESP_CTX_add_failure_info(ctx, TS_INFO_ADD_INFO_NOT_AVAILABLE);
    }
    return ai;
}

static TS_RESP_CTX *make_ctx(tsa *t)
{
    TS_RESP_CTX *ctx = TS_RESP_CTX_new();
    if (ctx == NULL)
        return NULL;
    /* A context holds the request it is answering, so each request gets its
     * own; setting one up is a few allocations next to an RSA signature. */
    if (!TS_RESP_CTX_set_signer_cert(ctx, t->cert) || !TS_RESP_CTX_set_signer_key(ctx, t->key) ||
        (t->chain != NULL && !TS_RESP_CTX_set_certs(ctx, t->chain)) ||
        !TS_RESP_CTX_set_def_policy(ctx, t->policy) || !TS_RESP_CTX_add_md(ctx, EVP_sha256()) ||
        !TS_RESP_CTX_add_md(ctx, EVP_sha384()) || !TS_RESP_CTX_add_md(ctx, EVP_sha512()) ||
        !TS_RESP_CTX_set_accuracy(ctx, 1, 0, 0) ||
        !TS_RESP_CTX_set_signer_digest(ctx, EVP_sha256()) ||
        !TS_RESP_CTX_set_ess_cert_id_digest(ctx, EVP_sha256())) {
        TS_RESP_CTX_free(ctx);
        return NULL;
    }
    TS_RESP_CTX_set_serial_cb(ctx, serial_cb, t);
    return ctx;
}

/* True when `der` is exactly one DER TimeStampReq: OpenSSL's BIO reader would
 * otherwise accept trailing bytes after the first object. */
static int strict_request(const uint8_t *der, size_t len)
{
    if (len == 0 || len > TSA_MAX_REQUEST)
        return 0;
    const unsigned char *p = der;
    TS_REQ *r = d2i_TS_REQ(NULL, &p, (long)len);
    int ok = r != NULL && p == der + len;
    TS_REQ_free(r);
    ERR_clear_error();
    return ok;
}

qk_err tsa_respond(tsa *t, const uint8_t *req, size_t len, qk_buf *reply, long *status)
{
    qk_err rc = QK_ERR_CRYPTO;
    TS_RESP_CTX *ctx = NULL;
    BIO *in = NULL;
    TS_RESP *resp = NULL;
    unsigned char *der = NULL;

    reply->data = NULL;
    reply->len = 0;
    *status = -1;
    if ((ctx = make_ctx(t)) == NULL)
        goto fail;
    /* A malformed request is answered with a TimeStampResp (rejection,
     * badDataFormat), as RFC 3161 asks: feeding OpenSSL an empty input makes
     * it build exactly that. */
    if (strict_request(req, len))
        in = BIO_new_mem_buf(req, (int)len);
    else
        in = BIO_new_mem_buf("", 0);
    if (in == NULL || (resp = TS_RESP_create_response(ctx, in)) == NULL)
        goto fail;
    int n = i2d_TS_RESP(resp, &der);
    if (n <= 0)
        goto fail;
    *status = ASN1_INTEGER_get(TS_STATUS_INFO_get0_status(TS_RESP_get_status_info(resp)));
    /* i2d allocated with OPENSSL_malloc: copied into malloc memory for qk_buf. */
    if ((reply->data = malloc((size_t)n)) == NULL) {
        rc = QK_ERR_NOMEM;
        goto out;
    }
    memcpy(reply->data, der, (size_t)n);
    reply->len = (size_t)n;
    rc = QK_OK;
    goto out;
fail:
    rc = qk_fail(QK_ERR_CRYPTO, "the time-stamping authority failed: %s",
                 ERR_reason_error_string(ERR_peek_last_error()));
out:
    ERR_clear_error();
    OPENSSL_free(der);
    TS_RESP_free(resp);
    BIO_free(in);
    TS_RESP_CTX_free(ctx);
    return rc;
}

qk_err tsa_stamp(void *ctx, qk_hash_alg alg, qk_slice value, qk_buf *token)
{
    tsa *t = ctx;
    qk_err rc = QK_ERR_CRYPTO;
    qk_tsp_req *treq = NULL;
    TS_RESP_CTX *rctx = NULL;
    BIO *in = NULL;
    TS_RESP *resp = NULL;
    unsigned char *der = NULL;

    token->data = NULL;
    token->len = 0;
    /* The request a client would send (imprint, nonce, certReq), answered
     * here: the same code path as POST /tsa, without the network. */
    if ((rc = qk_tsp_request_new(alg, value, &treq)) != QK_OK)
        goto out;
    qk_slice q = qk_tsp_request_der(treq);
    rc = QK_ERR_CRYPTO;
    if ((rctx = make_ctx(t)) == NULL || (in = BIO_new_mem_buf(q.data, (int)q.len)) == NULL ||
        (resp = TS_RESP_create_response(rctx, in)) == NULL) {
        rc = qk_fail_ossl(QK_ERR_CRYPTO, "the time-stamping authority failed");
        goto out;
    }
    long status = ASN1_INTEGER_get(TS_STATUS_INFO_get0_status(TS_RESP_get_status_info(resp)));
    PKCS7 *tok = TS_RESP_get_token(resp);
    int len;
    if ((status != TS_STATUS_GRANTED && status != TS_STATUS_GRANTED_WITH_MODS) || tok == NULL ||
        (len = i2d_PKCS7(tok, &der)) <= 0) {
        rc = qk_fail(QK_ERR_CRYPTO, "the time-stamping authority refused (status %ld)", status);
        goto out;
    }
    if ((token->data = malloc((size_t)len)) == NULL) {
        rc = QK_ERR_NOMEM;
        goto out;
    }
    memcpy(token->data, der, (size_t)len);
    token->len = (size_t)len;
    rc = QK_OK;
out:
    ERR_clear_error();
    OPENSSL_free(der);
    TS_RESP_free(resp);
    BIO_free(in);
    TS_RESP_CTX_free(rctx);
    qk_tsp_request_free(treq);
    return rc;
}
