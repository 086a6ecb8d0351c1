/* Azure sign results: status bodies and certificate chains (see azure_result.h). */
#include "signer/azure/azure_result.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pkcs7.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/b64.h"
#include "qwick/authenticode.h"
#include "core/util.h"

#define AZ_MAX_CERT_BLOB (256u * 1024u)

/* "In Progress " → "inprogress". */
static void normalize(const char *s, char *out, size_t cap)
{
    size_t k = 0;
    for (; *s && k + 1 < cap; s++)
        if (!isspace((unsigned char)*s) && *s != '_' && *s != '-')
            out[k++] = (char)tolower((unsigned char)*s);
    out[k] = '\0';
}

static qk_err b64_field(const char *s, size_t n, const char *what, size_t max, qk_buf *out)
{
    if (n == 0 || n > max)
        return qk_fail(QK_ERR_INVALID_ARG, "Azure result: %s of %zu characters", what, n);
    out->data = xmalloc(n);
    if (b64_decode(s, n, out->data, n, &out->len) != 0 || out->len == 0) {
        qk_buf_free(out);
        return qk_fail(QK_ERR_INVALID_ARG, "Azure result: %s is not base64", what);
    }
    return QK_OK;
}

/* signingCertificate: base64 → base64 text (line breaks tolerated) → DER. */
static qk_err decode_cert_blob(const char *s, size_t n, qk_buf *der)
{
    qk_buf text = {NULL, 0};
    qk_err rc = b64_field(s, n, "signingCertificate", AZ_MAX_CERT_BLOB, &text);
    if (rc != QK_OK)
        return rc;
    size_t k = 0;
    for (size_t i = 0; i < text.len; i++)
        if (text.data[i] != '\r' && text.data[i] != '\n')
            text.data[k++] = text.data[i];
    rc = b64_field((const char *)text.data, k, "signingCertificate (inner)", AZ_MAX_CERT_BLOB,
                   der);
    qk_buf_free(&text);
    return rc;
}

static void failure_text(json_t *root, const char *status, az_op *out)
{
    json_t *e = json_object_get(root, "error");
    if (!json_is_object(e))
        e = json_object_get(json_object_get(root, "result"), "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    snprintf(out->error, sizeof(out->error), "operation %.32s%s%.64s%s%.128s", status,
             code ? ": " : "", code ? code : "", msg ? ": " : "", msg ? msg : "");
    for (char *p = out->error; *p; p++)
        if (!isprint((unsigned char)*p))
            *p = ' ';
}

qk_err az_op_parse(const uint8_t *body, size_t len, az_op *out)
{
    json_error_t jerr;
    json_t *root = NULL;
    qk_err rc = QK_OK;
    char st[32];

    memset(out, 0, sizeof(*out));
    root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        json_decref(root);
        return qk_fail(QK_ERR_INVALID_ARG, "Azure result is not a JSON object");
    }
    json_t *res = json_object_get(root, "result");
    const char *status = json_string_value(json_object_get(root, "status"));
    if (status == NULL && json_is_object(res))
        status = json_string_value(json_object_get(res, "status"));
    if (status == NULL) {
        rc = qk_fail(QK_ERR_INVALID_ARG, "Azure result has no status");
        goto out;
    }
    normalize(status, st, sizeof(st));
    if (strcmp(st, "inprogress") == 0 || strcmp(st, "running") == 0 ||
        strcmp(st, "notstarted") == 0) {
        out->state = AZ_OP_PENDING;
        goto out;
    }
    if (strcmp(st, "succeeded") != 0) {
        out->state = AZ_OP_FAILED;
        failure_text(root, status, out);
        goto out;
    }
    /* The payload, flat or under "result". */
    json_t *src = root;
    if (json_object_get(src, "signature") == NULL && json_is_object(res))
        src = res;
    json_t *sig = json_object_get(src, "signature"), *cert = json_object_get(src, "signingCertificate");
    if (!json_is_string(sig) || !json_is_string(cert)) {
        rc = qk_fail(QK_ERR_INVALID_ARG, "Azure result Succeeded without signature and "
                                         "signingCertificate");
        goto out;
    }
    if ((rc = b64_field(json_string_value(sig), json_string_length(sig), "signature",
                        2 * QK_MAX_SIGNATURE_SIZE, &out->signature)) != QK_OK ||
        (rc = decode_cert_blob(json_string_value(cert), json_string_length(cert),
                               &out->pkcs7_der)) != QK_OK)
        goto out;
    if (out->signature.len > QK_MAX_SIGNATURE_SIZE) {
        rc = qk_fail(QK_ERR_TOO_LARGE, "Azure signature of %zu bytes", out->signature.len);
        goto out;
    }
    out->state = AZ_OP_SUCCEEDED;
out:
    if (rc != QK_OK)
        az_op_clear(out);
    json_decref(root);
    return rc;
}

void az_op_clear(az_op *op)
{
    if (op == NULL)
        return;
    qk_buf_free(&op->signature);
    qk_buf_free(&op->pkcs7_der);
    memset(op, 0, sizeof(*op));
}

static const EVP_MD *md_of(qk_hash_alg alg)
{
    switch (alg) {
    case QK_HASH_SHA256: return EVP_sha256();
    case QK_HASH_SHA384: return EVP_sha384();
    case QK_HASH_SHA512: return EVP_sha512();
    default: return NULL;
    }
}

/* Whether `x`'s RSA key verifies sig over digest (PKCS#1 v1.5, DigestInfo). */
static int verifies(X509 *x, const EVP_MD *md, const uint8_t *digest, size_t dlen, qk_slice sig)
{
    EVP_PKEY *pk = X509_get0_pubkey(x);
    EVP_PKEY_CTX *ctx = pk != NULL ? EVP_PKEY_CTX_new(pk, NULL) : NULL;
    int ok = ctx != NULL && EVP_PKEY_is_a(pk, "RSA") && EVP_PKEY_verify_init(ctx) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_CTX_set_signature_md(ctx, md) == 1 &&
             EVP_PKEY_verify(ctx, sig.data, sig.len, digest, dlen) == 1;
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

static void append_der(X509 *x, qk_buf *out, qk_err *rc)
{
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    if (len <= 0) {
        *rc = qk_fail_ossl(QK_ERR_BAD_DER, "encode certificate");
        return;
    }
    out->data = xrealloc(out->data, out->len + (size_t)len);
    memcpy(out->data + out->len, der, (size_t)len);
    out->len += (size_t)len;
    OPENSSL_free(der);
}

qk_err az_chain_for_signature(qk_slice pkcs7_der, qk_hash_alg alg, const uint8_t *digest,
                              size_t dlen, qk_slice sig, qk_buf *chain_der)
{
    const unsigned char *p = pkcs7_der.data;
    PKCS7 *p7 = NULL;
    STACK_OF(X509) *certs = NULL;
    const EVP_MD *md = md_of(alg);
    qk_err rc = QK_OK;
    int n, leaf = -1, used[QK_MAX_CHAIN_LEN] = {0};

    chain_der->data = NULL;
    chain_der->len = 0;
    if (md == NULL || (size_t)EVP_MD_get_size(md) != dlen)
        return qk_fail(QK_ERR_INVALID_ARG, "digest does not match its algorithm");
    p7 = d2i_PKCS7(NULL, &p, (long)pkcs7_der.len);
    if (p7 == NULL || p != pkcs7_der.data + pkcs7_der.len) {
        rc = qk_fail_ossl(QK_ERR_BAD_DER, "Azure signingCertificate is not one DER PKCS#7");
        goto out;
    }
    /* DER, not any BER: the encoding must be the one re-encoding gives. */
    unsigned char *re = NULL;
    int relen = i2d_PKCS7(p7, &re);
    int same = relen > 0 && (size_t)relen == pkcs7_der.len && memcmp(re, pkcs7_der.data, pkcs7_der.len) == 0;
    OPENSSL_free(re);
    if (!same) {
        rc = qk_fail(QK_ERR_BAD_DER, "Azure signingCertificate is BER, not DER");
        goto out;
    }
    if (!PKCS7_type_is_signed(p7) || p7->d.sign == NULL ||
        (certs = p7->d.sign->cert) == NULL || (n = sk_X509_num(certs)) == 0) {
        rc = qk_fail(QK_ERR_BAD_DER, "Azure signingCertificate holds no certificate");
        goto out;
    }
    if (n > QK_MAX_CHAIN_LEN) {
        rc = qk_fail(QK_ERR_TOO_LARGE, "Azure chain of %d certificates", n);
        goto out;
    }
    for (int i = 0; i < n; i++)
        if (verifies(sk_X509_value(certs, i), md, digest, dlen, sig)) {
            if (leaf >= 0 && X509_cmp(sk_X509_value(certs, leaf), sk_X509_value(certs, i)) == 0)
                continue; /* the same certificate twice */
            if (leaf >= 0) {
                rc = qk_fail(QK_ERR_BAD_DER, "Azure chain: two certificates share the leaf's key");
                goto out;
            }
            leaf = i;
        }
    if (leaf < 0) {
        rc = qk_fail(QK_ERR_CRYPTO, "the signature from Azure does not verify with any "
                                    "certificate it returned");
        goto out;
    }
    used[leaf] = 1;
    X509 *cur = sk_X509_value(certs, leaf);
    append_der(cur, chain_der, &rc);
    for (int depth = 1; rc == QK_OK && depth < n; depth++) {
        int next = -1;
        if (X509_check_issued(cur, cur) == X509_V_OK)
            break;
        for (int i = 0; i < n && next < 0; i++)
            if (!used[i] && X509_check_issued(sk_X509_value(certs, i), cur) == X509_V_OK)
                next = i;
        if (next < 0)
            break;
        used[next] = 1;
        cur = sk_X509_value(certs, next);
        append_der(cur, chain_der, &rc);
    }
out:
    ERR_clear_error();
    PKCS7_free(p7);
    if (rc != QK_OK)
        qk_buf_free(chain_der);
    return rc;
}
