/* RFC 3161 time-stamp protocol, client side: request, reply check, and the
 * whole exchange for a signature through a caller-supplied transport.
 *
 * The reply check trusts nothing in the reply but the token's own signature:
 * chain trust (and the timeStamping EKU) is the verifier's business, since the
 * trust anchors belong to whoever verifies the file, not to the signer. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/objects.h>
#include <openssl/pkcs7.h>
#include <openssl/rand.h>
#include <openssl/ts.h>

#include "internal.h"
#include "qwick/authenticode.h"
#include "qwick/tsp.h"
#include "sig_internal.h"

struct qk_tsp_req {
    qk_hash_alg alg;
    uint8_t imprint[QK_HASH_MAX_SIZE];
    size_t imprint_len;
    ASN1_INTEGER *nonce;
    uint8_t *der;
    size_t der_len;
};

void qk_tsp_request_free(qk_tsp_req *req)
{
    if (req == NULL)
        return;
    ASN1_INTEGER_free(req->nonce);
    free(req->der);
    free(req);
}

/* A positive 64-bit random nonce. */
static qk_err random_nonce(ASN1_INTEGER **out)
{
    uint8_t raw[8];
    BIGNUM *bn = NULL;
    *out = NULL;
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return qk_fail_ossl(QK_ERR_CRYPTO, "random nonce");
    if ((bn = BN_bin2bn(raw, sizeof(raw), NULL)) == NULL)
        return QK_ERR_NOMEM;
    *out = BN_to_ASN1_INTEGER(bn, NULL);
    BN_free(bn);
    return *out != NULL ? QK_OK : QK_ERR_NOMEM;
}

qk_err qk_tsp_request_new(qk_hash_alg alg, qk_slice data, qk_tsp_req **out)
{
    qk_err rc = QK_ERR_NOMEM;
    qk_tsp_req *r = NULL;
    TS_REQ *ts = NULL;
    TS_MSG_IMPRINT *mi = NULL;
    X509_ALGOR *algo = NULL;
    unsigned char *der = NULL;

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    *out = NULL;
    qk_clear_detail();
    ERR_clear_error(); /* stale queue entries would pollute our details */
    if (data.data == NULL && data.len != 0)
        return qk_fail(QK_ERR_INVALID_ARG, "no data to timestamp");
    if (qk_hash_size(alg) == 0)
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "digest algorithm %d", (int)alg);
    if ((r = calloc(1, sizeof(*r))) == NULL)
        goto out;
    r->alg = alg;
    r->imprint_len = qk_hash_size(alg);
    if ((rc = qk_md(alg, data.data ? data.data : (const uint8_t *)"", data.len, r->imprint)) !=
            QK_OK ||
        (rc = random_nonce(&r->nonce)) != QK_OK)
        goto out;

    rc = QK_ERR_NOMEM;
    if ((ts = TS_REQ_new()) == NULL || (mi = TS_MSG_IMPRINT_new()) == NULL ||
        (algo = X509_ALGOR_new()) == NULL)
        goto out;
    /* The setters below copy their arguments. */
    if (!X509_ALGOR_set0(algo, OBJ_nid2obj(qk_hash_nid(alg)), V_ASN1_NULL, NULL) ||
        !TS_MSG_IMPRINT_set_algo(mi, algo) ||
        !TS_MSG_IMPRINT_set_msg(mi, r->imprint, (int)r->imprint_len) ||
        !TS_REQ_set_version(ts, 1) || !TS_REQ_set_msg_imprint(ts, mi) ||
        !TS_REQ_set_nonce(ts, r->nonce) || !TS_REQ_set_cert_req(ts, 1))
        goto out;
    int n = i2d_TS_REQ(ts, &der);
    if (n <= 0) {
        rc = qk_fail_ossl(QK_ERR_CRYPTO, "encoding the TimeStampReq");
        goto out;
    }
    if ((r->der = malloc((size_t)n)) == NULL)
        goto out;
    memcpy(r->der, der, (size_t)n);
    r->der_len = (size_t)n;
    *out = r;
    r = NULL;
    rc = QK_OK;
out:
    OPENSSL_free(der);
    X509_ALGOR_free(algo);
    TS_MSG_IMPRINT_free(mi);
    TS_REQ_free(ts);
    qk_tsp_request_free(r);
    return rc;
}

qk_slice qk_tsp_request_der(const qk_tsp_req *req)
{
    qk_slice s = {NULL, 0};
    if (req != NULL) {
        s.data = req->der;
        s.len = req->der_len;
    }
    return s;
}

/* "status 2 (rejection): text; failInfo badAlg" for a refused request. */
static qk_err bad_status(const TS_STATUS_INFO *st, long status)
{
    static const char *const names[] = {"granted", "grantedWithMods",   "rejection",
                                        "waiting", "revocationWarning", "revocationNotification"};
    static const struct {
        int bit;
        const char *name;
    } fails[] = {
        {TS_INFO_BAD_ALG, "badAlg"},
        {TS_INFO_BAD_REQUEST, "badRequest"},
        {TS_INFO_BAD_DATA_FORMAT, "badDataFormat"},
        {TS_INFO_TIME_NOT_AVAILABLE, "timeNotAvailable"},
        {TS_INFO_UNACCEPTED_POLICY, "unacceptedPolicy"},
        {TS_INFO_UNACCEPTED_EXTENSION, "unacceptedExtension"},
        {TS_INFO_ADD_INFO_NOT_AVAILABLE, "addInfoNotAvailable"},
        {TS_INFO_SYSTEM_FAILURE, "systemFailure"},
    };
    char text[256] = "";
    char failinfo[160] = "";
    size_t used = 0;

    const STACK_OF(ASN1_UTF8STRING) *t = TS_STATUS_INFO_get0_text(st);
    for (int i = 0; i < sk_ASN1_UTF8STRING_num(t) && used + 1 < sizeof(text); i++) {
        const ASN1_UTF8STRING *s = sk_ASN1_UTF8STRING_value(t, i);
        int m = snprintf(text + used, sizeof(text) - used, "%s%.*s", i ? "; " : ": ",
                         ASN1_STRING_length(s), (const char *)ASN1_STRING_get0_data(s));
        if (m < 0)
            break;
        used += (size_t)m < sizeof(text) - used ? (size_t)m : sizeof(text) - used - 1;
    }
    const ASN1_BIT_STRING *fi = TS_STATUS_INFO_get0_failure_info(st);
    used = 0;
    for (size_t i = 0; fi != NULL && i < sizeof(fails) / sizeof(fails[0]); i++) {
        if (!ASN1_BIT_STRING_get_bit(fi, fails[i].bit))
            continue;
        int m = snprintf(failinfo + used, sizeof(failinfo) - used, "%s%s",
                         used ? "," : "; failInfo ", fails[i].name);
        if (m < 0 || (size_t)m >= sizeof(failinfo) - used)
            break;
        used += (size_t)m;
    }
    const char *name = status >= 0 && status < 6 ? names[status] : "unknown";
    return qk_fail(QK_ERR_TSP_BAD_STATUS, "TSA status %ld (%s)%s%s", status, name, text, failinfo);
}

/* The bytes of the timeStampToken inside a DER TimeStampResp
 * (SEQUENCE { status PKIStatusInfo, timeStampToken ContentInfo OPTIONAL }),
 * taken as they are so the token is never re-encoded. */
static qk_err token_bytes(qk_slice reply, qk_slice *tok)
{
    const unsigned char *p = reply.data, *end = reply.data + reply.len;
    long len = 0;
    int tag = 0, cls = 0;

    int r = ASN1_get_object(&p, &len, &tag, &cls, (long)reply.len);
    if (r != V_ASN1_CONSTRUCTED || tag != V_ASN1_SEQUENCE || p + len != end)
        return qk_fail(QK_ERR_BAD_DER, "TimeStampResp is not one DER SEQUENCE");
    r = ASN1_get_object(&p, &len, &tag, &cls, (long)(end - p));
    if (r != V_ASN1_CONSTRUCTED || len > end - p)
        return qk_fail(QK_ERR_BAD_DER, "TimeStampResp status is not a DER SEQUENCE");
    p += len;
    if (p == end)
        return qk_fail(QK_ERR_BAD_SIGNATURE, "TimeStampResp carries no token");
    tok->data = p;
    tok->len = (size_t)(end - p);
    return QK_OK;
}

/* The token's one SignerInfo verifies (messageDigest over the TSTInfo and the
 * signature over the attributes) with the certificate the token carries. */
static qk_err verify_token(PKCS7 *token)
{
    qk_err rc = QK_ERR_VERIFY_FAILED;
    STACK_OF(X509) *signers = NULL;
    BIO *bio = NULL;
    char buf[4096];

    STACK_OF(PKCS7_SIGNER_INFO) *sis = PKCS7_get_signer_info(token);
    if (sk_PKCS7_SIGNER_INFO_num(sis) != 1)
        return qk_fail(QK_ERR_BAD_SIGNATURE, "timestamp token has %d SignerInfos, expected 1",
                       sk_PKCS7_SIGNER_INFO_num(sis));
    if ((signers = PKCS7_get0_signers(token, NULL, 0)) == NULL) {
        rc = qk_fail_ossl(QK_ERR_VERIFY_FAILED,
                          "timestamp token does not carry its signer's certificate");
        goto out;
    }
    if ((bio = PKCS7_dataInit(token, NULL)) == NULL) {
        rc = qk_fail_ossl(QK_ERR_BAD_SIGNATURE, "timestamp token content");
        goto out;
    }
    /* Reading through the digest BIOs computes the content hash. */
    int n;
    while ((n = BIO_read(bio, buf, sizeof(buf))) > 0)
        ;
    if (PKCS7_signatureVerify(bio, token, sk_PKCS7_SIGNER_INFO_value(sis, 0),
                              sk_X509_value(signers, 0)) != 1) {
        rc = qk_fail_ossl(QK_ERR_VERIFY_FAILED, "timestamp token signature does not verify");
        goto out;
    }
    rc = QK_OK;
out:
    BIO_free_all(bio);
    sk_X509_free(signers);
    return rc;
}

qk_err qk_tsp_reply_check(const qk_tsp_req *req, qk_slice reply, qk_buf *token)
{
    qk_err rc = QK_ERR_BAD_DER;
    TS_RESP *resp = NULL;
    PKCS7 *tok = NULL;
    qk_slice tok_der = {NULL, 0};

    if (token == NULL)
        return QK_ERR_INVALID_ARG;
    token->data = NULL;
    token->len = 0;
    qk_clear_detail();
    ERR_clear_error();
    if (req == NULL || (reply.data == NULL && reply.len != 0))
        return qk_fail(QK_ERR_INVALID_ARG, "no request or no reply");
    if (reply.len == 0)
        return qk_fail(QK_ERR_TRUNCATED, "empty timestamp reply");
    if (reply.len > QK_TSP_MAX_REPLY)
        return qk_fail(QK_ERR_TOO_LARGE, "timestamp reply of %zu bytes (limit %u)", reply.len,
                       QK_TSP_MAX_REPLY);
    const unsigned char *p = reply.data;
    if ((resp = d2i_TS_RESP(NULL, &p, (long)reply.len)) == NULL) {
        rc = qk_fail_ossl(QK_ERR_BAD_DER, "timestamp reply is not a DER TimeStampResp");
        goto out;
    }
    if (p != reply.data + reply.len) {
        rc = qk_fail(QK_ERR_TRAILING_DATA, "%zu bytes after the TimeStampResp",
                     reply.len - (size_t)(p - reply.data));
        goto out;
    }
    TS_STATUS_INFO *st = TS_RESP_get_status_info(resp);
    long status = ASN1_INTEGER_get(TS_STATUS_INFO_get0_status(st));
    if (status != TS_STATUS_GRANTED && status != TS_STATUS_GRANTED_WITH_MODS) {
        rc = bad_status(st, status);
        goto out;
    }
    TS_TST_INFO *tst = TS_RESP_get_tst_info(resp);
    if (TS_RESP_get_token(resp) == NULL || tst == NULL) {
        rc = qk_fail(QK_ERR_BAD_SIGNATURE, "granted timestamp reply without a token");
        goto out;
    }

    TS_MSG_IMPRINT *mi = TS_TST_INFO_get_msg_imprint(tst);
    const X509_ALGOR *algo = TS_MSG_IMPRINT_get_algo(mi);
    const ASN1_OCTET_STRING *msg = TS_MSG_IMPRINT_get_msg(mi);
    const ASN1_OBJECT *aobj = NULL;
    int pt = V_ASN1_UNDEF;
    X509_ALGOR_get0(&aobj, &pt, NULL, algo);
    if (OBJ_obj2nid(aobj) != qk_hash_nid(req->alg) || (pt != V_ASN1_UNDEF && pt != V_ASN1_NULL)) {
        rc = qk_fail(QK_ERR_TSP_MISMATCH, "token imprint algorithm is not %s",
                     qk_hash_name(req->alg));
        goto out;
    }
    if ((size_t)ASN1_STRING_length(msg) != req->imprint_len ||
        CRYPTO_memcmp(ASN1_STRING_get0_data(msg), req->imprint, req->imprint_len) != 0) {
        rc = qk_fail(QK_ERR_TSP_MISMATCH, "token imprint differs from the request");
        goto out;
    }
    const ASN1_INTEGER *nonce = TS_TST_INFO_get_nonce(tst);
    if (nonce == NULL) {
        rc = qk_fail(QK_ERR_TSP_MISMATCH, "token has no nonce (the request sent one)");
        goto out;
    }
    if (ASN1_INTEGER_cmp(nonce, req->nonce) != 0) {
        rc = qk_fail(QK_ERR_TSP_MISMATCH, "token nonce differs from the request");
        goto out;
    }

    if ((rc = token_bytes(reply, &tok_der)) != QK_OK ||
        (rc = qk_p7_decode_signed(tok_der, QK_TSP_MAX_REPLY, "timestamp token", &tok)) != QK_OK ||
        (rc = verify_token(tok)) != QK_OK)
        goto out;
    if ((token->data = malloc(tok_der.len)) == NULL) {
        rc = QK_ERR_NOMEM;
        goto out;
    }
    memcpy(token->data, tok_der.data, tok_der.len);
    token->len = tok_der.len;
    rc = QK_OK;
out:
    PKCS7_free(tok);
    TS_RESP_free(resp);
    return rc;
}

qk_err qk_timestamp(qk_slice contentinfo, qk_hash_alg alg, qk_tsp_transport send, void *ctx,
                    qk_buf *out)
{
    qk_err rc;
    qk_buf value = {NULL, 0}, reply = {NULL, 0}, token = {NULL, 0};
    qk_tsp_req *req = NULL;

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    out->data = NULL;
    out->len = 0;
    if (send == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "no timestamp transport");
    if ((rc = qk_sig_value(contentinfo, &value)) != QK_OK ||
        (rc = qk_tsp_request_new(alg, (qk_slice){value.data, value.len}, &req)) != QK_OK)
        goto out;
    if ((rc = send(ctx, qk_tsp_request_der(req), &reply)) != QK_OK) {
        if (qk_error_detail()[0] == '\0')
            (void)qk_fail(rc, "timestamp transport failed");
        goto out;
    }
    if ((rc = qk_tsp_reply_check(req, (qk_slice){reply.data, reply.len}, &token)) != QK_OK ||
        (rc = qk_sig_add_timestamp(contentinfo, (qk_slice){token.data, token.len}, out)) != QK_OK)
        goto out;
out:
    qk_buf_free(&value);
    qk_buf_free(&reply);
    qk_buf_free(&token);
    qk_tsp_request_free(req);
    return rc;
}
