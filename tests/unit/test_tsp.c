/* Unit tests for lib/tsp.c: the TimeStampReq we send, the checks on the
 * TimeStampResp we get back, and qk_timestamp through an in-process transport.
 * Replies come from OpenSSL's own responder (TS_RESP_CTX) with a test TSA key,
 * tampered in exactly one way per case. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pkcs7.h>
#include <openssl/ts.h>
#include <openssl/x509.h>

#include "qwick/authenticode.h"
#include "qwick/ossl_signer.h"
#include "qwick/tsp.h"
#include "sig_testutil.h"
#include "spc.h"

static const qk_hash_alg all_algs[] = {QK_HASH_SHA1, QK_HASH_SHA256, QK_HASH_SHA384,
                                       QK_HASH_SHA512};
#define NALGS (sizeof(all_algs) / sizeof(all_algs[0]))

static tk_tsa tsa;

static int setup(void **state)
{
    (void)state;
    tk_tsa_init(&tsa);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tk_tsa_cleanup(&tsa);
    return 0;
}

static qk_slice sl(const qk_buf *b)
{
    return (qk_slice){b->data, b->len};
}

static TS_REQ *parse_req(const qk_tsp_req *r)
{
    qk_slice der = qk_tsp_request_der(r);
    const unsigned char *p = der.data;
    TS_REQ *req = d2i_TS_REQ(NULL, &p, (long)der.len);
    assert_non_null(req);
    assert_ptr_equal(p, der.data + der.len);
    return req;
}

/* Checks `reply` against a fresh request over `data`, returns the result. */
static qk_err check_with(const tk_reply_opts *o, qk_hash_alg alg, qk_buf *token)
{
    static const uint8_t data[] = "signature value bytes";
    qk_tsp_req *req = NULL;
    assert_int_equal(qk_tsp_request_new(alg, (qk_slice){data, sizeof(data)}, &req), QK_OK);
    qk_slice rq = qk_tsp_request_der(req);
    qk_buf reply = tk_tsa_reply(&tsa, rq.data, rq.len, o);
    qk_buf tok = {(uint8_t *)1, 1};
    qk_err rc = qk_tsp_reply_check(req, sl(&reply), &tok);
    if (rc != QK_OK) {
        assert_null(tok.data);
        assert_int_equal(tok.len, 0);
    }
    if (token != NULL)
        *token = tok;
    else
        qk_buf_free(&tok);
    qk_buf_free(&reply);
    qk_tsp_request_free(req);
    return rc;
}

/* --- the request ----------------------------------------------------------- */

static void test_request_fields(void **state)
{
    (void)state;
    static const uint8_t data[] = {1, 2, 3, 4, 5};
    for (size_t i = 0; i < NALGS; i++) {
        qk_tsp_req *a = NULL, *b = NULL;
        assert_int_equal(qk_tsp_request_new(all_algs[i], (qk_slice){data, 5}, &a), QK_OK);
        assert_int_equal(qk_tsp_request_new(all_algs[i], (qk_slice){data, 5}, &b), QK_OK);
        TS_REQ *ra = parse_req(a), *rb = parse_req(b);
        assert_int_equal(TS_REQ_get_version(ra), 1);
        assert_int_equal(TS_REQ_get_cert_req(ra), 1);
        assert_null(TS_REQ_get_policy_id(ra));
        TS_MSG_IMPRINT *mi = TS_REQ_get_msg_imprint(ra);
        const ASN1_OBJECT *o;
        int pt;
        X509_ALGOR_get0(&o, &pt, NULL, TS_MSG_IMPRINT_get_algo(mi));
        assert_int_equal(OBJ_obj2nid(o), qk_hash_nid(all_algs[i]));
        uint8_t want[QK_HASH_MAX_SIZE];
        assert_int_equal(
            EVP_Digest(data, 5, want, NULL, EVP_get_digestbynid(qk_hash_nid(all_algs[i])), NULL),
            1);
        ASN1_OCTET_STRING *m = TS_MSG_IMPRINT_get_msg(mi);
        assert_int_equal(ASN1_STRING_length(m), (int)qk_hash_size(all_algs[i]));
        assert_memory_equal(ASN1_STRING_get0_data(m), want, qk_hash_size(all_algs[i]));
        /* A nonce of at most 64 bits, different every time. */
        const ASN1_INTEGER *na = TS_REQ_get_nonce(ra), *nb = TS_REQ_get_nonce(rb);
        assert_non_null(na);
        assert_non_null(nb);
        assert_true(ASN1_STRING_length(na) <= 9);
        assert_int_not_equal(ASN1_INTEGER_cmp(na, nb), 0);
        TS_REQ_free(ra);
        TS_REQ_free(rb);
        qk_tsp_request_free(a);
        qk_tsp_request_free(b);
    }
    qk_tsp_req *r = (qk_tsp_req *)1;
    assert_int_equal(qk_tsp_request_new(QK_HASH_NONE, (qk_slice){data, 5}, &r),
                     QK_ERR_UNSUPPORTED_ALG);
    assert_null(r);
    assert_int_equal(qk_tsp_request_new(QK_HASH_SHA256, (qk_slice){NULL, 5}, &r),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(qk_tsp_request_new(QK_HASH_SHA256, (qk_slice){data, 5}, NULL),
                     QK_ERR_INVALID_ARG);
    /* Empty data is still something to timestamp. */
    assert_int_equal(qk_tsp_request_new(QK_HASH_SHA256, (qk_slice){NULL, 0}, &r), QK_OK);
    qk_tsp_request_free(r);
    qk_tsp_request_free(NULL);
    assert_null(qk_tsp_request_der(NULL).data);
}

/* --- reply checks ------------------------------------------------------------ */

static void test_reply_granted(void **state)
{
    (void)state;
    for (size_t i = 0; i < NALGS; i++) {
        qk_buf tok = {0};
        assert_int_equal(check_with(NULL, all_algs[i], &tok), QK_OK);
        /* The token is a ContentInfo(SignedData) over a TSTInfo, carrying the TSA cert. */
        const unsigned char *p = tok.data;
        PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)tok.len);
        assert_non_null(p7);
        assert_ptr_equal(p, tok.data + tok.len);
        assert_true(PKCS7_type_is_signed(p7));
        assert_int_equal(OBJ_obj2nid(p7->d.sign->contents->type), NID_id_smime_ct_TSTInfo);
        assert_int_equal(sk_X509_num(p7->d.sign->cert), 1);
        assert_int_equal(X509_cmp(sk_X509_value(p7->d.sign->cert, 0), tsa.cert), 0);
        PKCS7_free(p7);
        qk_buf_free(&tok);
    }
    tk_reply_opts mods = {.status = 1};
    assert_int_equal(check_with(&mods, QK_HASH_SHA256, NULL), QK_OK);
}

static void test_reply_rejections(void **state)
{
    (void)state;
    tk_reply_opts o = {.no_digests = 1};
    assert_int_equal(check_with(&o, QK_HASH_SHA256, NULL), QK_ERR_TSP_BAD_STATUS);
    /* The detail carries the TSA's status, text and failure info. */
    const char *d = qk_error_detail();
    assert_non_null(strstr(d, "rejection"));
    assert_non_null(strstr(d, "badAlg"));
    assert_non_null(strstr(d, "not supported"));

    o = (tk_reply_opts){.other_nonce = 1};
    assert_int_equal(check_with(&o, QK_HASH_SHA256, NULL), QK_ERR_TSP_MISMATCH);
    assert_non_null(strstr(qk_error_detail(), "nonce"));
    o = (tk_reply_opts){.no_nonce = 1};
    assert_int_equal(check_with(&o, QK_HASH_SHA256, NULL), QK_ERR_TSP_MISMATCH);
    o = (tk_reply_opts){.other_imprint = 1};
    assert_int_equal(check_with(&o, QK_HASH_SHA384, NULL), QK_ERR_TSP_MISMATCH);
    assert_non_null(strstr(qk_error_detail(), "imprint"));
    o = (tk_reply_opts){.other_alg = 1};
    assert_int_equal(check_with(&o, QK_HASH_SHA256, NULL), QK_ERR_TSP_MISMATCH);
    o = (tk_reply_opts){.bad_signature = 1};
    assert_int_equal(check_with(&o, QK_HASH_SHA256, NULL), QK_ERR_VERIFY_FAILED);
    o = (tk_reply_opts){.no_cert = 1};
    assert_int_equal(check_with(&o, QK_HASH_SHA256, NULL), QK_ERR_VERIFY_FAILED);
    /* Status values other than 0 and 1, even with a token attached. */
    for (int st = 2; st <= 5; st++) {
        o = (tk_reply_opts){.status = st};
        qk_err rc = check_with(&o, QK_HASH_SHA256, NULL);
        /* OpenSSL's decoder refuses a token beside a failure status; either way it fails. */
        assert_true(rc == QK_ERR_TSP_BAD_STATUS || rc == QK_ERR_BAD_DER);
    }
}

static void test_reply_malformed(void **state)
{
    (void)state;
    static const uint8_t data[] = "abc";
    qk_tsp_req *req = NULL, *other = NULL;
    assert_int_equal(qk_tsp_request_new(QK_HASH_SHA256, (qk_slice){data, 3}, &req), QK_OK);
    assert_int_equal(qk_tsp_request_new(QK_HASH_SHA256, (qk_slice){data, 3}, &other), QK_OK);
    qk_slice rq = qk_tsp_request_der(req);
    qk_buf reply = tk_tsa_reply(&tsa, rq.data, rq.len, NULL);
    qk_buf tok = {0};
    assert_int_equal(qk_tsp_reply_check(req, sl(&reply), &tok), QK_OK);
    qk_buf_free(&tok);
    /* The reply to another request (other nonce). */
    assert_int_equal(qk_tsp_reply_check(other, sl(&reply), &tok), QK_ERR_TSP_MISMATCH);

    uint8_t *buf = malloc(reply.len + 2);
    assert_non_null(buf);
    for (size_t n = 0; n < reply.len; n++) {
        memcpy(buf, reply.data, n);
        uint8_t *copy = malloc(n ? n : 1);
        assert_non_null(copy);
        memcpy(copy, reply.data, n);
        assert_int_not_equal(qk_tsp_reply_check(req, (qk_slice){copy, n}, &tok), QK_OK);
        assert_null(tok.data);
        free(copy);
    }
    memcpy(buf, reply.data, reply.len);
    buf[reply.len] = 0;
    buf[reply.len + 1] = 0;
    assert_int_equal(qk_tsp_reply_check(req, (qk_slice){buf, reply.len + 1}, &tok),
                     QK_ERR_TRAILING_DATA);
    assert_int_equal(qk_tsp_reply_check(req, (qk_slice){buf, reply.len + 2}, &tok),
                     QK_ERR_TRAILING_DATA);
    /* Where the TSTInfo (the signed content) sits in the reply. */
    const unsigned char *rp = reply.data;
    TS_RESP *resp = d2i_TS_RESP(NULL, &rp, (long)reply.len);
    assert_non_null(resp);
    unsigned char *tst_der = NULL;
    int tst_len = i2d_TS_TST_INFO(TS_RESP_get_tst_info(resp), &tst_der);
    assert_true(tst_len > 0);
    const uint8_t *at = memmem(reply.data, reply.len, tst_der, (size_t)tst_len);
    assert_non_null(at);
    size_t tst_off = (size_t)(at - reply.data);
    OPENSSL_free(tst_der);
    TS_RESP_free(resp);
    /* Bit flips: never a crash or a leak. Bytes the TSA did not sign (its
     * certificate, which we do not judge here) may flip unnoticed; a flip in
     * the TSTInfo never does. */
    for (size_t i = 0; i < reply.len; i++) {
        uint8_t bit = (uint8_t)(1u << (i % 8));
        buf[i] ^= bit;
        qk_err rc = qk_tsp_reply_check(req, (qk_slice){buf, reply.len}, &tok);
        if (i >= tst_off && i < tst_off + (size_t)tst_len)
            assert_int_not_equal(rc, QK_OK);
        if (rc != QK_OK)
            assert_null(tok.data);
        qk_buf_free(&tok);
        buf[i] ^= bit;
    }
    free(buf);

    assert_int_equal(qk_tsp_reply_check(req, (qk_slice){NULL, 0}, &tok), QK_ERR_TRUNCATED);
    uint8_t *big = calloc(1, QK_TSP_MAX_REPLY + 1);
    assert_non_null(big);
    assert_int_equal(qk_tsp_reply_check(req, (qk_slice){big, QK_TSP_MAX_REPLY + 1}, &tok),
                     QK_ERR_TOO_LARGE);
    free(big);
    assert_int_equal(qk_tsp_reply_check(NULL, sl(&reply), &tok), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_tsp_reply_check(req, sl(&reply), NULL), QK_ERR_INVALID_ARG);
    qk_buf_free(&reply);
    qk_tsp_request_free(req);
    qk_tsp_request_free(other);
}

/* --- qk_timestamp -------------------------------------------------------- */

typedef struct transport {
    tk_reply_opts opts;
    int calls;
    qk_err fail; /* returned instead of answering, when set */
    int garbage; /* answer with bytes that are no TimeStampResp */
} transport;

static qk_err fake_send(void *ctx, qk_slice request, qk_buf *reply)
{
    transport *t = ctx;
    t->calls++;
    if (t->fail != QK_OK)
        return t->fail;
    if (t->garbage) {
        reply->data = malloc(4);
        assert_non_null(reply->data);
        memcpy(reply->data, "\x30\x02\x05\x00", 4);
        reply->len = 4;
        return QK_OK;
    }
    *reply = tk_tsa_reply(&tsa, request.data, request.len, &t->opts);
    return QK_OK;
}

static qk_buf make_signature(qk_hash_alg alg)
{
    EVP_PKEY *key = tk_rsa_key();
    X509 *cert = tk_cert(key, "Unit Signer", "codeSigning", NULL, NULL);
    qk_buf der = tk_cert_der(cert);
    uint8_t dg[QK_HASH_MAX_SIZE];
    tk_random(dg, sizeof(dg));
    qk_sign_request req = {
        .format = QK_FORMAT_AUTHENTICODE_PE, .alg = alg, .digest = {dg, qk_hash_size(alg)}};
    qk_slice chain = sl(&der);
    qk_buf sig = {0};
    assert_int_equal(qk_sign(&req, qk_evp_sign_fn, key, &chain, 1, &sig), QK_OK);
    qk_buf_free(&der);
    X509_free(cert);
    return sig;
}

static void test_timestamp_flow(void **state)
{
    (void)state;
    for (size_t i = 0; i < NALGS; i++) {
        qk_buf sig = make_signature(all_algs[i]);
        transport t = {0};
        qk_buf out = {0};
        assert_int_equal(qk_timestamp(sl(&sig), all_algs[i], fake_send, &t, &out), QK_OK);
        assert_int_equal(t.calls, 1);
        /* The signature value is unchanged and a token covering it is attached. */
        qk_buf v1 = {0}, v2 = {0};
        assert_int_equal(qk_sig_value(sl(&sig), &v1), QK_OK);
        assert_int_equal(qk_sig_value(sl(&out), &v2), QK_OK);
        assert_int_equal(v1.len, v2.len);
        assert_memory_equal(v1.data, v2.data, v1.len);
        const unsigned char *p = out.data;
        PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)out.len);
        assert_non_null(p7);
        PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
        assert_int_equal(X509at_get_attr_count(si->unauth_attr), 1);
        X509_ATTRIBUTE *a = X509at_get_attr(si->unauth_attr, 0);
        char oid[64];
        OBJ_obj2txt(oid, sizeof(oid), X509_ATTRIBUTE_get0_object(a), 1);
        assert_string_equal(oid, QK_OID_SPC_RFC3161_TIMESTAMP);
        /* The token's imprint is the hash of the signature value. */
        const ASN1_STRING *tv = X509_ATTRIBUTE_get0_type(a, 0)->value.sequence;
        const unsigned char *tp = ASN1_STRING_get0_data(tv);
        PKCS7 *tok = d2i_PKCS7(NULL, &tp, ASN1_STRING_length(tv));
        assert_non_null(tok);
        TS_TST_INFO *tst = PKCS7_to_TS_TST_INFO(tok);
        assert_non_null(tst);
        uint8_t want[QK_HASH_MAX_SIZE];
        assert_int_equal(EVP_Digest(v1.data, v1.len, want, NULL,
                                    EVP_get_digestbynid(qk_hash_nid(all_algs[i])), NULL),
                         1);
        ASN1_OCTET_STRING *m = TS_MSG_IMPRINT_get_msg(TS_TST_INFO_get_msg_imprint(tst));
        assert_memory_equal(ASN1_STRING_get0_data(m), want, qk_hash_size(all_algs[i]));
        TS_TST_INFO_free(tst);
        PKCS7_free(tok);
        PKCS7_free(p7);
        qk_buf_free(&v1);
        qk_buf_free(&v2);
        qk_buf_free(&out);
        qk_buf_free(&sig);
    }

    qk_buf sig = make_signature(QK_HASH_SHA256);
    qk_buf out = {0};
    transport t = {.fail = QK_ERR_IO};
    assert_int_equal(qk_timestamp(sl(&sig), QK_HASH_SHA256, fake_send, &t, &out), QK_ERR_IO);
    assert_null(out.data);
    t = (transport){.garbage = 1};
    assert_int_equal(qk_timestamp(sl(&sig), QK_HASH_SHA256, fake_send, &t, &out), QK_ERR_BAD_DER);
    t = (transport){.opts = {.other_nonce = 1}};
    assert_int_equal(qk_timestamp(sl(&sig), QK_HASH_SHA256, fake_send, &t, &out),
                     QK_ERR_TSP_MISMATCH);
    t = (transport){.opts = {.no_digests = 1}};
    assert_int_equal(qk_timestamp(sl(&sig), QK_HASH_SHA256, fake_send, &t, &out),
                     QK_ERR_TSP_BAD_STATUS);
    assert_null(out.data);
    /* A broken signature never reaches the transport. */
    t = (transport){0};
    assert_int_not_equal(
        qk_timestamp((qk_slice){sig.data, sig.len - 1}, QK_HASH_SHA256, fake_send, &t, &out),
        QK_OK);
    assert_int_equal(t.calls, 0);
    assert_int_equal(qk_timestamp(sl(&sig), QK_HASH_SHA256, NULL, &t, &out), QK_ERR_INVALID_ARG);
    qk_buf_free(&sig);
}

/* --- qk_sign_request.stamp: the token attached while assembling --------- */

typedef struct stamper {
    int calls;
    qk_err fail;   /* returned instead of a token, when set */
    int garbage;   /* return bytes that are not one DER SEQUENCE */
    qk_buf last;   /* a copy of the token handed out */
    qk_slice seen; /* the value it was asked to stamp (copied) */
    uint8_t value[1024];
} stamper;

static qk_err test_stamp(void *ctx, qk_hash_alg alg, qk_slice value, qk_buf *token)
{
    stamper *st = ctx;
    st->calls++;
    assert_true(value.len <= sizeof(st->value));
    memcpy(st->value, value.data, value.len);
    st->seen = (qk_slice){st->value, value.len};
    if (st->fail != QK_OK)
        return st->fail;
    if (st->garbage) {
        token->data = malloc(5);
        assert_non_null(token->data);
        memcpy(token->data, "\x30\x02\x05\x00\x00", 5); /* a trailing byte */
        token->len = 5;
        return QK_OK;
    }
    qk_tsp_req *req = NULL;
    assert_int_equal(qk_tsp_request_new(alg, value, &req), QK_OK);
    qk_slice rq = qk_tsp_request_der(req);
    qk_buf reply = tk_tsa_reply(&tsa, rq.data, rq.len, NULL);
    assert_int_equal(qk_tsp_reply_check(req, sl(&reply), token), QK_OK);
    qk_buf_free(&reply);
    qk_tsp_request_free(req);
    qk_buf_free(&st->last);
    st->last.data = malloc(token->len);
    assert_non_null(st->last.data);
    memcpy(st->last.data, token->data, token->len);
    st->last.len = token->len;
    return QK_OK;
}

static qk_buf stamped_signature(qk_sig_format format, qk_hash_alg alg, stamper *st, qk_err want)
{
    EVP_PKEY *key = tk_rsa_key();
    X509 *cert = tk_cert(key, "Unit Signer", "codeSigning", NULL, NULL);
    qk_buf der = tk_cert_der(cert);
    uint8_t dg[QK_HASH_MAX_SIZE];
    tk_random(dg, sizeof(dg));
    qk_sign_request req = {.format = format,
                           .alg = alg,
                           .digest = {dg, qk_hash_size(alg)},
                           .stamp = test_stamp,
                           .stamp_ctx = st};
    qk_slice chain = sl(&der);
    qk_buf sig = {(uint8_t *)1, 1};
    assert_int_equal(qk_sign(&req, qk_evp_sign_fn, key, &chain, 1, &sig), want);
    if (want != QK_OK)
        assert_null(sig.data);
    qk_buf_free(&der);
    X509_free(cert);
    return sig;
}

static void test_sign_stamp(void **state)
{
    (void)state;
    static const qk_sig_format formats[] = {QK_FORMAT_AUTHENTICODE_PE, QK_FORMAT_CMS_DETACHED};
    static const char *const oids[] = {QK_OID_SPC_RFC3161_TIMESTAMP, "1.2.840.113549.1.9.16.2.14"};
    for (size_t f = 0; f < 2; f++) {
        stamper st = {0};
        qk_buf sig = stamped_signature(formats[f], QK_HASH_SHA384, &st, QK_OK);
        assert_int_equal(st.calls, 1);
        /* The callback was asked for the signature value the result carries. */
        qk_buf v = {0};
        assert_int_equal(qk_sig_value(sl(&sig), &v), QK_OK);
        assert_int_equal(v.len, st.seen.len);
        assert_memory_equal(v.data, st.seen.data, v.len);
        /* One unsigned attribute, under the format's OID, holding the token. */
        const unsigned char *p = sig.data;
        PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)sig.len);
        assert_non_null(p7);
        PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
        assert_int_equal(X509at_get_attr_count(si->unauth_attr), 1);
        X509_ATTRIBUTE *a = X509at_get_attr(si->unauth_attr, 0);
        char oid[64];
        OBJ_obj2txt(oid, sizeof(oid), X509_ATTRIBUTE_get0_object(a), 1);
        assert_string_equal(oid, oids[f]);
        const ASN1_STRING *tv = X509_ATTRIBUTE_get0_type(a, 0)->value.sequence;
        assert_int_equal((size_t)ASN1_STRING_length(tv), st.last.len);
        assert_memory_equal(ASN1_STRING_get0_data(tv), st.last.data, st.last.len);
        PKCS7_free(p7);
        /* The same bytes the two-pass route (qk_sig_add_timestamp, which
         * replaces a token) makes from it. */
        qk_buf again = {0};
        assert_int_equal(qk_sig_add_timestamp(sl(&sig), sl(&st.last), &again), QK_OK);
        assert_int_equal(again.len, sig.len);
        assert_memory_equal(again.data, sig.data, sig.len);
        qk_buf_free(&again);
        qk_buf_free(&v);
        qk_buf_free(&st.last);
        qk_buf_free(&sig);
    }
    /* A callback that fails, or returns no DER SEQUENCE, fails the signature. */
    stamper st = {.fail = QK_ERR_IO};
    qk_buf none = stamped_signature(QK_FORMAT_AUTHENTICODE_PE, QK_HASH_SHA256, &st, QK_ERR_IO);
    assert_null(none.data);
    st = (stamper){.garbage = 1};
    none = stamped_signature(QK_FORMAT_AUTHENTICODE_PE, QK_HASH_SHA256, &st, QK_ERR_BAD_DER);
    assert_int_equal(st.calls, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_fields),   cmocka_unit_test(test_reply_granted),
        cmocka_unit_test(test_reply_rejections), cmocka_unit_test(test_reply_malformed),
        cmocka_unit_test(test_timestamp_flow),   cmocka_unit_test(test_sign_stamp),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
