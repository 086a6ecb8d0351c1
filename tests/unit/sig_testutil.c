/* See sig_testutil.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/ess.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pkcs7.h>
#include <openssl/rand.h>
#include <openssl/ts.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "sig_testutil.h"

static void die(const char *what)
{
    fprintf(stderr, "sig_testutil: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    abort();
}

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            die(#x);                                                                               \
    } while (0)

static EVP_PKEY *rsa1, *rsa2, *ec;

/* Frees the cached keys at exit so leak checkers stay quiet. */
static void free_keys(void)
{
    EVP_PKEY_free(rsa1);
    EVP_PKEY_free(rsa2);
    EVP_PKEY_free(ec);
}

static EVP_PKEY *cached(EVP_PKEY **slot, const char *type)
{
    static int registered;
    if (*slot == NULL) {
        if (strcmp(type, "EC") == 0)
            *slot = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        else
            *slot = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
        CHECK(*slot != NULL);
        if (!registered) {
            atexit(free_keys);
            registered = 1;
        }
    }
    return *slot;
}

EVP_PKEY *tk_rsa_key(void)
{
    return cached(&rsa1, "RSA");
}
EVP_PKEY *tk_rsa_key2(void)
{
    return cached(&rsa2, "RSA");
}
EVP_PKEY *tk_ec_key(void)
{
    return cached(&ec, "EC");
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    CHECK(e != NULL);
    CHECK(X509_add_ext(x, e, -1));
    X509_EXTENSION_free(e);
}

X509 *tk_cert(EVP_PKEY *key, const char *cn, const char *eku, X509 *issuer, EVP_PKEY *issuer_key)
{
    X509 *x = X509_new();
    CHECK(x != NULL);
    CHECK(X509_set_version(x, 2));
    uint8_t serial[12];
    tk_random(serial, sizeof(serial));
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
    CHECK(bn != NULL);
    CHECK(BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL);
    BN_free(bn);
    X509_NAME *name = X509_NAME_new();
    CHECK(name != NULL);
    CHECK(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"Qwick Unit",
                                     -1, -1, 0));
    CHECK(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                     0));
    CHECK(X509_set_subject_name(x, name));
    CHECK(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name));
    X509_NAME_free(name);
    CHECK(X509_gmtime_adj(X509_getm_notBefore(x), -86400));
    CHECK(X509_gmtime_adj(X509_getm_notAfter(x), 365L * 86400));
    CHECK(X509_set_pubkey(x, key));
    X509 *iss = issuer ? issuer : x;
    if (eku == NULL) {
        add_ext(x, iss, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(x, iss, NID_basic_constraints, "critical,CA:FALSE");
        add_ext(x, iss, NID_key_usage, "critical,digitalSignature");
        add_ext(x, iss, NID_ext_key_usage, eku);
    }
    add_ext(x, iss, NID_subject_key_identifier, "hash");
    CHECK(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

qk_buf tk_cert_der(X509 *x)
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    CHECK(n > 0);
    qk_buf b = {malloc((size_t)n), (size_t)n};
    CHECK(b.data != NULL);
    memcpy(b.data, der, (size_t)n);
    OPENSSL_free(der);
    return b;
}

void tk_tsa_init(tk_tsa *t)
{
    t->key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    CHECK(t->key != NULL);
    t->cert = tk_cert(t->key, "Qwick Unit TSA", "critical,timeStamping", NULL, NULL);
}

void tk_tsa_cleanup(tk_tsa *t)
{
    EVP_PKEY_free(t->key);
    X509_free(t->cert);
    t->key = NULL;
    t->cert = NULL;
}

void tk_random(uint8_t *p, size_t n)
{
    CHECK(RAND_bytes(p, (int)n) == 1);
}

/* XORs one byte of an ASN1_STRING (through a copy: there is no mutable getter). */
static void flip_byte(ASN1_STRING *s, int idx, uint8_t mask)
{
    int n = ASN1_STRING_length(s);
    CHECK(idx >= 0 && idx < n);
    unsigned char *d = malloc((size_t)n);
    CHECK(d != NULL);
    memcpy(d, ASN1_STRING_get0_data(s), (size_t)n);
    d[idx] ^= mask;
    CHECK(ASN1_STRING_set(s, d, n));
    free(d);
}

/* The request with the changes `o` asks for, re-encoded. */
static BIO *tampered_request(const uint8_t *req, size_t len, const tk_reply_opts *o)
{
    const unsigned char *p = req;
    TS_REQ *r = d2i_TS_REQ(NULL, &p, (long)len);
    CHECK(r != NULL);
    if (o->other_nonce) {
        ASN1_INTEGER *n = ASN1_INTEGER_dup(TS_REQ_get_nonce(r));
        CHECK(n != NULL);
        CHECK(ASN1_INTEGER_set_int64(n, ASN1_INTEGER_get(n) ^ 0x5a5a) == 1);
        CHECK(TS_REQ_set_nonce(r, n));
        ASN1_INTEGER_free(n);
    }
    if (o->no_nonce) {
        /* No setter clears the nonce: rebuild the request without it. */
        TS_REQ *q = TS_REQ_new();
        CHECK(q != NULL);
        CHECK(TS_REQ_set_version(q, 1));
        CHECK(TS_REQ_set_msg_imprint(q, TS_REQ_get_msg_imprint(r)));
        CHECK(TS_REQ_set_cert_req(q, TS_REQ_get_cert_req(r)));
        TS_REQ_free(r);
        r = q;
    }
    TS_MSG_IMPRINT *mi = TS_REQ_get_msg_imprint(r);
    if (o->other_imprint) {
        flip_byte(TS_MSG_IMPRINT_get_msg(mi), 0, 1);
    }
    if (o->other_alg) {
        /* Same imprint bytes, different algorithm: cut to 20 bytes for sha1. */
        X509_ALGOR *a = X509_ALGOR_new();
        CHECK(a != NULL);
        CHECK(X509_ALGOR_set0(a, OBJ_nid2obj(NID_sha1), V_ASN1_NULL, NULL));
        CHECK(TS_MSG_IMPRINT_set_algo(mi, a));
        X509_ALGOR_free(a);
        ASN1_OCTET_STRING *m = TS_MSG_IMPRINT_get_msg(mi);
        CHECK(ASN1_STRING_length(m) >= 20);
        uint8_t d[20];
        memcpy(d, ASN1_STRING_get0_data(m), 20);
        CHECK(ASN1_OCTET_STRING_set(m, d, 20));
    }
    if (o->no_cert)
        CHECK(TS_REQ_set_cert_req(r, 0));
    BIO *b = BIO_new(BIO_s_mem());
    CHECK(b != NULL);
    CHECK(i2d_TS_REQ_bio(b, r) == 1);
    TS_REQ_free(r);
    return b;
}

/* genTime from tk_reply_opts.gen_time instead of the clock. */
static int fixed_time(TS_RESP_CTX *ctx, void *data, long *sec, long *usec)
{
    (void)ctx;
    *sec = (long)*(const int64_t *)data;
    *usec = 0;
    return 1;
}

/* The token of `resp` signed again by the TSA key over the same TSTInfo,
 * with CMS's default signed attributes and the ESS attribute `mode` asks for. */
static void resign_token(const tk_tsa *t, TS_RESP *resp, int mode)
{
    TS_TST_INFO *tst = TS_TST_INFO_dup(TS_RESP_get_tst_info(resp));
    CHECK(tst != NULL);
    unsigned char *der = NULL;
    int n = i2d_TS_TST_INFO(tst, &der);
    CHECK(n > 0);
    BIO *in = BIO_new_mem_buf(der, n);
    CHECK(in != NULL);
    CMS_ContentInfo *cms = CMS_sign(NULL, NULL, NULL, NULL, CMS_BINARY | CMS_PARTIAL);
    CHECK(cms != NULL);
    CHECK(CMS_set1_eContentType(cms, OBJ_nid2obj(NID_id_smime_ct_TSTInfo)));
    CMS_SignerInfo *si = CMS_add1_signer(cms, t->cert, t->key, EVP_sha256(),
                                         CMS_BINARY | CMS_NOSMIMECAP | CMS_PARTIAL);
    CHECK(si != NULL);
    if (mode == TK_ESS_OTHER || mode == TK_ESS_SELF) {
        X509 *other = mode == TK_ESS_SELF ? X509_dup(t->cert)
                                          : tk_cert(tk_rsa_key2(), "Other TSA",
                                                    "critical,timeStamping", NULL, NULL);
        CHECK(other != NULL);
        ESS_SIGNING_CERT_V2 *ss = OSSL_ESS_signing_cert_v2_new_init(EVP_sha256(), other, NULL, 0);
        CHECK(ss != NULL);
        unsigned char *ess = NULL;
        int m = i2d_ESS_SIGNING_CERT_V2(ss, &ess);
        CHECK(m > 0);
        CHECK(CMS_signed_add1_attr_by_NID(si, NID_id_smime_aa_signingCertificateV2,
                                          V_ASN1_SEQUENCE, ess, m));
        OPENSSL_free(ess);
        ESS_SIGNING_CERT_V2_free(ss);
        X509_free(other);
    }
    CHECK(CMS_final(cms, in, NULL, CMS_BINARY));
    unsigned char *tok_der = NULL;
    int k = i2d_CMS_ContentInfo(cms, &tok_der);
    CHECK(k > 0);
    const unsigned char *p = tok_der;
    PKCS7 *tok = d2i_PKCS7(NULL, &p, k);
    CHECK(tok != NULL);
    TS_RESP_set_tst_info(resp, tok, tst); /* takes both */
    OPENSSL_free(tok_der);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    OPENSSL_free(der);
}

qk_buf tk_tsa_reply(const tk_tsa *t, const uint8_t *req, size_t len, const tk_reply_opts *o)
{
    static const tk_reply_opts none = {0};
    if (o == NULL)
        o = &none;
    TS_RESP_CTX *ctx = TS_RESP_CTX_new();
    CHECK(ctx != NULL);
    CHECK(TS_RESP_CTX_set_signer_cert(ctx, t->cert));
    CHECK(TS_RESP_CTX_set_signer_key(ctx, t->key));
    ASN1_OBJECT *policy = OBJ_txt2obj("1.3.6.1.4.1.99999.2.1", 1);
    CHECK(policy != NULL);
    CHECK(TS_RESP_CTX_set_def_policy(ctx, policy));
    ASN1_OBJECT_free(policy);
    if (!o->no_digests) {
        CHECK(TS_RESP_CTX_add_md(ctx, EVP_sha1()));
        CHECK(TS_RESP_CTX_add_md(ctx, EVP_sha256()));
        CHECK(TS_RESP_CTX_add_md(ctx, EVP_sha384()));
        CHECK(TS_RESP_CTX_add_md(ctx, EVP_sha512()));
    }
    if (o->gen_time > 0)
        TS_RESP_CTX_set_time_cb(ctx, fixed_time, (void *)&o->gen_time);
    BIO *in = tampered_request(req, len, o);
    TS_RESP *resp = TS_RESP_create_response(ctx, in);
    CHECK(resp != NULL);
    BIO_free(in);
    if (o->ess != 0)
        resign_token(t, resp, o->ess);
    if (o->bad_signature) {
        PKCS7 *tok = TS_RESP_get_token(resp);
        CHECK(tok != NULL);
        PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(PKCS7_get_signer_info(tok), 0);
        CHECK(si != NULL);
        flip_byte(si->enc_digest, ASN1_STRING_length(si->enc_digest) / 2, 0x10);
    }
    if (o->status > 0)
        CHECK(TS_STATUS_INFO_set_status(TS_RESP_get_status_info(resp), o->status));
    unsigned char *der = NULL;
    int n = i2d_TS_RESP(resp, &der);
    CHECK(n > 0);
    qk_buf b = {malloc((size_t)n), (size_t)n};
    CHECK(b.data != NULL);
    memcpy(b.data, der, (size_t)n);
    OPENSSL_free(der);
    TS_RESP_free(resp);
    TS_RESP_CTX_free(ctx);
    return b;
}
