/* Unit tests for lib/authenticode.c, lib/cms_edit.c and lib/ossl_signer.c.
 *
 * Signatures are parsed back with OpenSSL's own PKCS7/CMS decoders and every
 * field the Authenticode format fixes is checked; hashes and signatures are
 * recomputed here independently. Malformed inputs (truncated, bit-flipped,
 * trailing data, oversize) must give errors, never crashes or leaks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pkcs7.h>
#include <openssl/rsa.h>
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

/* --- fixtures ------------------------------------------------------------ */

typedef struct signer {
    EVP_PKEY *key; /* borrowed from sig_testutil's cache */
    X509 *cert;
    qk_buf der;
} signer;

static void signer_init(signer *s, EVP_PKEY *key, const char *cn)
{
    s->key = key;
    s->cert = tk_cert(key, cn, "codeSigning", NULL, NULL);
    s->der = tk_cert_der(s->cert);
}

static void signer_cleanup(signer *s)
{
    X509_free(s->cert);
    qk_buf_free(&s->der);
}

static qk_slice sl(const qk_buf *b)
{
    return (qk_slice){b->data, b->len};
}

static void hash(qk_hash_alg alg, const uint8_t *p, size_t n, uint8_t *out)
{
    const EVP_MD *md = EVP_get_digestbynid(qk_hash_nid(alg));
    assert_non_null(md);
    assert_int_equal(EVP_Digest(p, n, out, NULL, md, NULL), 1);
}

/* Signs a random digest in `format` with s; returns the digest used in dg. */
static qk_buf sign_with(const signer *s, qk_sig_format format, qk_hash_alg alg, const char *name,
                        const char *url, uint8_t *dg)
{
    uint8_t local[QK_HASH_MAX_SIZE];
    if (dg == NULL)
        dg = local;
    tk_random(dg, qk_hash_size(alg));
    qk_sign_request req = {.format = format,
                           .alg = alg,
                           .digest = {dg, qk_hash_size(alg)},
                           .program_name = name,
                           .url = url,
                           .signing_time = 1700000000};
    qk_slice chain = sl(&s->der);
    qk_buf out = {0};
    qk_err rc = qk_sign(&req, qk_evp_sign_fn, s->key, &chain, 1, &out);
    if (rc != QK_OK)
        fail_msg("qk_sign: %s: %s", qk_strerror(rc), qk_error_detail());
    assert_non_null(out.data);
    return out;
}

static PKCS7 *parse_p7(const qk_buf *b)
{
    const unsigned char *p = b->data;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)b->len);
    assert_non_null(p7);
    assert_ptr_equal(p, b->data + b->len);
    /* Our output is DER: re-encoding changes nothing. */
    unsigned char *re = NULL;
    int n = i2d_PKCS7(p7, &re);
    assert_int_equal(n, (int)b->len);
    assert_memory_equal(re, b->data, b->len);
    OPENSSL_free(re);
    return p7;
}

static int obj_is(const ASN1_OBJECT *o, const char *oid)
{
    ASN1_OBJECT *want = OBJ_txt2obj(oid, 1);
    assert_non_null(want);
    int eq = OBJ_cmp(o, want) == 0;
    ASN1_OBJECT_free(want);
    return eq;
}

/* The one value of attribute `oid` (which must occur exactly once). */
static const ASN1_TYPE *attr_value(const STACK_OF(X509_ATTRIBUTE) *attrs, const char *oid,
                                   int *count)
{
    const ASN1_TYPE *v = NULL;
    int found = 0;
    for (int i = 0; i < X509at_get_attr_count(attrs); i++) {
        X509_ATTRIBUTE *a = X509at_get_attr(attrs, i);
        if (obj_is(X509_ATTRIBUTE_get0_object(a), oid)) {
            found++;
            if (count)
                *count = X509_ATTRIBUTE_count(a);
            v = X509_ATTRIBUTE_get0_type(a, 0);
        }
    }
    assert_int_equal(found, 1);
    assert_non_null(v);
    return v;
}

static int has_attr(const STACK_OF(X509_ATTRIBUTE) *attrs, const char *oid)
{
    for (int i = 0; i < X509at_get_attr_count(attrs); i++)
        if (obj_is(X509_ATTRIBUTE_get0_object(X509at_get_attr(attrs, i)), oid))
            return 1;
    return 0;
}

/* DER of the signed attributes as SET OF (what the signature covers). */
static qk_buf attrs_set_der(const STACK_OF(X509_ATTRIBUTE) *attrs)
{
    unsigned char *der = NULL;
    int n = ASN1_item_i2d((const ASN1_VALUE *)attrs, &der, ASN1_ITEM_rptr(PKCS7_ATTR_SIGN));
    assert_true(n > 0);
    qk_buf b = {malloc((size_t)n), (size_t)n};
    assert_non_null(b.data);
    memcpy(b.data, der, (size_t)n);
    OPENSSL_free(der);
    return b;
}

static void check_signature_value(PKCS7_SIGNER_INFO *si, EVP_PKEY *key, qk_hash_alg alg)
{
    qk_buf tbs = attrs_set_der(si->auth_attr);
    assert_int_equal(tbs.data[0], 0x31);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(
        EVP_DigestVerifyInit(ctx, NULL, EVP_get_digestbynid(qk_hash_nid(alg)), NULL, key), 1);
    assert_int_equal(EVP_DigestVerify(ctx, ASN1_STRING_get0_data(si->enc_digest),
                                      (size_t)ASN1_STRING_length(si->enc_digest), tbs.data,
                                      tbs.len),
                     1);
    EVP_MD_CTX_free(ctx);
    qk_buf_free(&tbs);
}

static void check_alg_null(const X509_ALGOR *a, int nid, int want_null)
{
    const ASN1_OBJECT *o;
    int ptype;
    X509_ALGOR_get0(&o, &ptype, NULL, a);
    assert_int_equal(OBJ_obj2nid(o), nid);
    assert_int_equal(ptype, want_null ? V_ASN1_NULL : V_ASN1_UNDEF);
}

static void check_bmp(const ASN1_STRING *s, const char *ascii)
{
    assert_int_equal(ASN1_STRING_type(s), V_ASN1_BMPSTRING);
    size_t n = strlen(ascii);
    assert_int_equal(ASN1_STRING_length(s), (int)(2 * n));
    const unsigned char *d = ASN1_STRING_get0_data(s);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(d[2 * i], 0);
        assert_int_equal(d[2 * i + 1], (unsigned char)ascii[i]);
    }
}

/* Checks every field of an Authenticode PE signature over `dg`. */
static void check_pe_structure(const qk_buf *sig, const signer *s, qk_hash_alg alg,
                               const uint8_t *dg, const char *name, const char *url)
{
    PKCS7 *p7 = parse_p7(sig);
    int mdnid = qk_hash_nid(alg);
    assert_true(PKCS7_type_is_signed(p7));
    PKCS7_SIGNED *sd = p7->d.sign;
    assert_int_equal(ASN1_INTEGER_get(sd->version), 1);
    assert_int_equal(sk_X509_ALGOR_num(sd->md_algs), 1);
    check_alg_null(sk_X509_ALGOR_value(sd->md_algs, 0), mdnid, 1);

    /* encapContentInfo: SpcIndirectDataContent. */
    assert_true(obj_is(sd->contents->type, QK_OID_SPC_INDIRECT_DATA));
    const ASN1_TYPE *other = sd->contents->d.other;
    assert_non_null(other);
    assert_int_equal(other->type, V_ASN1_SEQUENCE);
    const unsigned char *content = ASN1_STRING_get0_data(other->value.sequence);
    size_t content_len = (size_t)ASN1_STRING_length(other->value.sequence);
    QK_SPC_INDIRECT_DATA *idc = qk_spc_indirect_data_decode(content, (long)content_len);
    assert_non_null(idc);
    assert_true(obj_is(idc->data->type, QK_OID_SPC_PE_IMAGE_DATA));
    check_alg_null(idc->messageDigest->digestAlgorithm, mdnid, 1);
    assert_int_equal(ASN1_STRING_length(idc->messageDigest->digest), (int)qk_hash_size(alg));
    assert_memory_equal(ASN1_STRING_get0_data(idc->messageDigest->digest), dg, qk_hash_size(alg));
    assert_int_equal(idc->data->value->type, V_ASN1_SEQUENCE);
    const unsigned char *p = ASN1_STRING_get0_data(idc->data->value->value.sequence);
    long plen = ASN1_STRING_length(idc->data->value->value.sequence);
    /* SpcPeImageData exactly as signtool writes it. */
    static const uint8_t pe_image_data[] = {
        0x30, 0x25, 0x03, 0x01, 0x00, 0xa0, 0x20, 0xa2, 0x1e, 0x80, 0x1c, 0x00, 0x3c,
        0x00, 0x3c, 0x00, 0x3c, 0x00, 0x4f, 0x00, 0x62, 0x00, 0x73, 0x00, 0x6f, 0x00,
        0x6c, 0x00, 0x65, 0x00, 0x74, 0x00, 0x65, 0x00, 0x3e, 0x00, 0x3e, 0x00, 0x3e};
    assert_int_equal(plen, sizeof(pe_image_data));
    assert_memory_equal(p, pe_image_data, sizeof(pe_image_data));
    QK_SPC_PE_IMAGE_DATA *pid = d2i_QK_SPC_PE_IMAGE_DATA(NULL, &p, plen);
    assert_non_null(pid);
    assert_int_equal(ASN1_STRING_length(pid->flags), 0);
    assert_int_equal(pid->file->type, 2);
    check_bmp(pid->file->value.file->value.unicode, "<<<Obsolete>>>");
    QK_SPC_PE_IMAGE_DATA_free(pid);
    QK_SPC_INDIRECT_DATA_free(idc);

    /* Certificates: the signer's. */
    assert_int_equal(sk_X509_num(sd->cert), 1);
    assert_int_equal(X509_cmp(sk_X509_value(sd->cert, 0), s->cert), 0);

    /* The one SignerInfo. */
    assert_int_equal(sk_PKCS7_SIGNER_INFO_num(sd->signer_info), 1);
    PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(sd->signer_info, 0);
    assert_int_equal(ASN1_INTEGER_get(si->version), 1);
    assert_int_equal(X509_NAME_cmp(si->issuer_and_serial->issuer, X509_get_issuer_name(s->cert)),
                     0);
    assert_int_equal(
        ASN1_INTEGER_cmp(si->issuer_and_serial->serial, X509_get0_serialNumber(s->cert)), 0);
    check_alg_null(si->digest_alg, mdnid, 1);
    if (EVP_PKEY_is_a(s->key, "RSA")) {
        check_alg_null(si->digest_enc_alg, NID_rsaEncryption, 1);
    } else {
        int snid = 0;
        assert_int_equal(OBJ_find_sigid_by_algs(&snid, mdnid, NID_X9_62_id_ecPublicKey), 1);
        check_alg_null(si->digest_enc_alg, snid, 0);
    }
    assert_int_equal(X509at_get_attr_count(si->auth_attr), 4);
    assert_null(si->unauth_attr); /* nothing unsigned until a timestamp or nesting */

    const ASN1_TYPE *ct = attr_value(si->auth_attr, "1.2.840.113549.1.9.3", NULL);
    assert_int_equal(ct->type, V_ASN1_OBJECT);
    assert_true(obj_is(ct->value.object, QK_OID_SPC_INDIRECT_DATA));

    /* messageDigest: hash of the content without its outer tag and length. */
    const ASN1_TYPE *md = attr_value(si->auth_attr, "1.2.840.113549.1.9.4", NULL);
    assert_int_equal(md->type, V_ASN1_OCTET_STRING);
    const unsigned char *q = content;
    long clen;
    int tag, cls;
    assert_int_equal(ASN1_get_object(&q, &clen, &tag, &cls, (long)content_len), V_ASN1_CONSTRUCTED);
    assert_int_equal(tag, V_ASN1_SEQUENCE);
    assert_ptr_equal(q + clen, content + content_len);
    uint8_t want[QK_HASH_MAX_SIZE];
    hash(alg, q, (size_t)clen, want);
    assert_int_equal(ASN1_STRING_length(md->value.octet_string), (int)qk_hash_size(alg));
    assert_memory_equal(ASN1_STRING_get0_data(md->value.octet_string), want, qk_hash_size(alg));

    const ASN1_TYPE *st = attr_value(si->auth_attr, QK_OID_SPC_STATEMENT_TYPE, NULL);
    assert_int_equal(st->type, V_ASN1_SEQUENCE);
    static const uint8_t stmt[] = {0x30, 0x0c, 0x06, 0x0a, 0x2b, 0x06, 0x01,
                                   0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x15};
    assert_int_equal(ASN1_STRING_length(st->value.sequence), sizeof(stmt));
    assert_memory_equal(ASN1_STRING_get0_data(st->value.sequence), stmt, sizeof(stmt));

    const ASN1_TYPE *op = attr_value(si->auth_attr, QK_OID_SPC_SP_OPUS_INFO, NULL);
    assert_int_equal(op->type, V_ASN1_SEQUENCE);
    p = ASN1_STRING_get0_data(op->value.sequence);
    plen = ASN1_STRING_length(op->value.sequence);
    QK_SPC_SP_OPUS_INFO *oi = d2i_QK_SPC_SP_OPUS_INFO(NULL, &p, plen);
    assert_non_null(oi);
    if (name) {
        assert_non_null(oi->programName);
        assert_int_equal(oi->programName->type, 0);
        check_bmp(oi->programName->value.unicode, name);
    } else {
        assert_null(oi->programName);
    }
    if (url) {
        assert_non_null(oi->moreInfo);
        assert_int_equal(oi->moreInfo->type, 0);
        assert_int_equal(ASN1_STRING_type(oi->moreInfo->value.url), V_ASN1_IA5STRING);
        assert_int_equal(ASN1_STRING_length(oi->moreInfo->value.url), (int)strlen(url));
        assert_memory_equal(ASN1_STRING_get0_data(oi->moreInfo->value.url), url, strlen(url));
    } else {
        assert_null(oi->moreInfo);
    }
    if (!name && !url) {
        assert_int_equal(ASN1_STRING_length(op->value.sequence), 2); /* 30 00 */
    }
    QK_SPC_SP_OPUS_INFO_free(oi);

    check_signature_value(si, s->key, alg);
    PKCS7_free(p7);
}

/* --- structure ----------------------------------------------------------- */

static void test_pe_structure_rsa(void **state)
{
    (void)state;
    signer s;
    signer_init(&s, tk_rsa_key(), "Unit RSA Signer");
    for (size_t i = 0; i < NALGS; i++) {
        uint8_t dg[QK_HASH_MAX_SIZE];
        qk_buf sig = sign_with(&s, QK_FORMAT_AUTHENTICODE_PE, all_algs[i], "Qwick Test",
                               "https://example.com/qwick", dg);
        check_pe_structure(&sig, &s, all_algs[i], dg, "Qwick Test", "https://example.com/qwick");
        qk_buf_free(&sig);
    }
    signer_cleanup(&s);
}

static void test_pe_structure_ecdsa(void **state)
{
    (void)state;
    signer s;
    signer_init(&s, tk_ec_key(), "Unit EC Signer");
    for (size_t i = 0; i < NALGS; i++) {
        uint8_t dg[QK_HASH_MAX_SIZE];
        qk_buf sig = sign_with(&s, QK_FORMAT_AUTHENTICODE_PE, all_algs[i], NULL, NULL, dg);
        check_pe_structure(&sig, &s, all_algs[i], dg, NULL, NULL);
        qk_buf_free(&sig);
    }
    signer_cleanup(&s);
}

static void test_pe_opus_one_field(void **state)
{
    (void)state;
    signer s;
    signer_init(&s, tk_rsa_key(), "Unit RSA Signer");
    uint8_t dg[QK_HASH_MAX_SIZE];
    qk_buf sig = sign_with(&s, QK_FORMAT_AUTHENTICODE_PE, QK_HASH_SHA256, "Only a name", NULL, dg);
    check_pe_structure(&sig, &s, QK_HASH_SHA256, dg, "Only a name", NULL);
    qk_buf_free(&sig);
    sig = sign_with(&s, QK_FORMAT_AUTHENTICODE_PE, QK_HASH_SHA256, "", "http://x.test/", dg);
    check_pe_structure(&sig, &s, QK_HASH_SHA256, dg, NULL, "http://x.test/");
    qk_buf_free(&sig);

    /* A URL must be IA5 (ASCII); a name must fit the BMP. */
    qk_tbs *tbs = NULL;
    qk_sign_request req = {.format = QK_FORMAT_AUTHENTICODE_PE,
                           .alg = QK_HASH_SHA256,
                           .digest = {dg, 32},
                           .url = "https://ex\xc3\xa4mple.test"};
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_ERR_INVALID_ARG);
    assert_null(tbs);
    req.url = NULL;
    req.program_name = "emoji \xf0\x9f\x98\x80";
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_ERR_INVALID_ARG);
    req.program_name = "not utf-8 \xff";
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_ERR_INVALID_ARG);
    char *big = malloc(5000);
    assert_non_null(big);
    memset(big, 'a', 4999);
    big[4999] = '\0';
    req.program_name = big;
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_ERR_TOO_LARGE);
    free(big);
    /* Non-ASCII names are fine (UTF-8 to UCS-2). */
    req.program_name = "Gr\xc3\xbc\xc3\x9f"
                       "e";
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_OK);
    qk_tbs_free(tbs);
    signer_cleanup(&s);
}

static void test_cms_detached(void **state)
{
    (void)state;
    static const char content[] = "detached content signed by qwick\n";
    signer rs, es;
    signer_init(&rs, tk_rsa_key(), "Unit RSA Signer");
    signer_init(&es, tk_ec_key(), "Unit EC Signer");
    const signer *ss[] = {&rs, &es};
    for (size_t k = 0; k < 2; k++) {
        for (size_t i = 0; i < NALGS; i++) {
            qk_hash_alg alg = all_algs[i];
            uint8_t dg[QK_HASH_MAX_SIZE];
            hash(alg, (const uint8_t *)content, strlen(content), dg);
            qk_sign_request req = {.format = QK_FORMAT_CMS_DETACHED,
                                   .alg = alg,
                                   .digest = {dg, qk_hash_size(alg)},
                                   .signing_time = 1700000000};
            qk_slice chain = sl(&ss[k]->der);
            qk_buf sig = {0};
            assert_int_equal(qk_sign(&req, qk_evp_sign_fn, ss[k]->key, &chain, 1, &sig), QK_OK);

            PKCS7 *p7 = parse_p7(&sig);
            assert_int_equal(OBJ_obj2nid(p7->d.sign->contents->type), NID_pkcs7_data);
            assert_true(PKCS7_get_detached(p7));
            PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
            assert_int_equal(X509at_get_attr_count(si->auth_attr), 3);
            const ASN1_TYPE *ct = attr_value(si->auth_attr, "1.2.840.113549.1.9.3", NULL);
            assert_int_equal(OBJ_obj2nid(ct->value.object), NID_pkcs7_data);
            const ASN1_TYPE *tm = attr_value(si->auth_attr, "1.2.840.113549.1.9.5", NULL);
            assert_int_equal(tm->type, V_ASN1_UTCTIME);
            ASN1_TIME *want = ASN1_TIME_set(NULL, 1700000000);
            assert_int_equal(ASN1_TIME_compare(tm->value.utctime, want), 0);
            ASN1_TIME_free(want);
            const ASN1_TYPE *md = attr_value(si->auth_attr, "1.2.840.113549.1.9.4", NULL);
            assert_memory_equal(ASN1_STRING_get0_data(md->value.octet_string), dg,
                                qk_hash_size(alg));
            check_signature_value(si, ss[k]->key, alg);
            PKCS7_free(p7);

            /* OpenSSL's CMS verifier accepts it over the content. */
            const unsigned char *p = sig.data;
            CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)sig.len);
            assert_non_null(cms);
            BIO *in = BIO_new_mem_buf(content, (int)strlen(content));
            assert_non_null(in);
            int ok = CMS_verify(cms, NULL, NULL, in, NULL, CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY);
            assert_int_equal(ok, 1);
            BIO_free(in);
            /* ...and rejects other content. */
            in = BIO_new_mem_buf("other", 5);
            assert_int_equal(
                CMS_verify(cms, NULL, NULL, in, NULL, CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY), 0);
            BIO_free(in);
            CMS_ContentInfo_free(cms);
            qk_buf_free(&sig);
        }
    }
    signer_cleanup(&rs);
    signer_cleanup(&es);
}

static void test_chain_certificates(void **state)
{
    (void)state;
    EVP_PKEY *ca_key = tk_rsa_key2();
    X509 *root = tk_cert(ca_key, "Unit Root", NULL, NULL, NULL);
    X509 *inter = tk_cert(ca_key, "Unit Inter", NULL, root, ca_key);
    X509 *leaf = tk_cert(tk_ec_key(), "Unit Leaf", "codeSigning", inter, ca_key);
    qk_buf d[3] = {tk_cert_der(leaf), tk_cert_der(inter), tk_cert_der(root)};
    /* Duplicates and the root in the input: the root is left out, the rest once each. */
    qk_slice chain[5] = {sl(&d[0]), sl(&d[2]), sl(&d[1]), sl(&d[1]), sl(&d[0])};
    uint8_t dg[32];
    tk_random(dg, sizeof(dg));
    qk_sign_request req = {
        .format = QK_FORMAT_AUTHENTICODE_PE, .alg = QK_HASH_SHA256, .digest = {dg, 32}};
    qk_buf sig = {0};
    assert_int_equal(qk_sign(&req, qk_evp_sign_fn, tk_ec_key(), chain, 5, &sig), QK_OK);
    PKCS7 *p7 = parse_p7(&sig);
    assert_int_equal(sk_X509_num(p7->d.sign->cert), 2);
    assert_int_equal(X509_cmp(sk_X509_value(p7->d.sign->cert, 0), leaf), 0);
    assert_int_equal(X509_cmp(sk_X509_value(p7->d.sign->cert, 1), inter), 0);
    PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
    assert_int_equal(X509_NAME_cmp(si->issuer_and_serial->issuer, X509_get_subject_name(inter)), 0);
    PKCS7_free(p7);
    qk_buf_free(&sig);
    for (int i = 0; i < 3; i++)
        qk_buf_free(&d[i]);
    X509_free(root);
    X509_free(inter);
    X509_free(leaf);
}

/* --- two-phase signing and its checks ----------------------------------- */

static void test_tbs_two_phase(void **state)
{
    (void)state;
    signer s;
    signer_init(&s, tk_rsa_key(), "Unit RSA Signer");
    uint8_t dg[48];
    tk_random(dg, sizeof(dg));
    qk_sign_request req = {.format = QK_FORMAT_AUTHENTICODE_PE,
                           .alg = QK_HASH_SHA384,
                           .digest = {dg, 48},
                           .program_name = "p"};
    qk_tbs *tbs = NULL;
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_OK);
    qk_slice attrs = qk_tbs_attrs_der(tbs);
    assert_non_null(attrs.data);
    assert_int_equal(attrs.data[0], 0x31);
    uint8_t tdg[QK_HASH_MAX_SIZE], want[QK_HASH_MAX_SIZE];
    size_t tlen = 0;
    assert_int_equal(qk_tbs_digest(tbs, tdg, &tlen), QK_OK);
    assert_int_equal(tlen, 48);
    hash(QK_HASH_SHA384, attrs.data, attrs.len, want);
    assert_memory_equal(tdg, want, 48);

    qk_buf raw = {0};
    assert_int_equal(qk_evp_sign_digest(s.key, QK_HASH_SHA384, tdg, tlen, &raw), QK_OK);
    qk_slice chain = sl(&s.der);
    qk_buf out = {0};
    assert_int_equal(qk_tbs_finish(tbs, sl(&raw), &chain, 1, &out), QK_OK);
    /* The [0] attributes in the output are the signed bytes with tag 0xA0. */
    PKCS7 *p7 = parse_p7(&out);
    PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
    qk_buf enc = attrs_set_der(si->auth_attr);
    assert_int_equal(enc.len, attrs.len);
    assert_memory_equal(enc.data, attrs.data, attrs.len);
    qk_buf_free(&enc);
    size_t i;
    for (i = 0; i + attrs.len <= out.len; i++)
        if (out.data[i] == 0xa0 && memcmp(out.data + i + 1, attrs.data + 1, attrs.len - 1) == 0)
            break;
    assert_true(i + attrs.len <= out.len);
    assert_memory_equal(ASN1_STRING_get0_data(si->enc_digest), raw.data, raw.len);
    PKCS7_free(p7);
    qk_buf_free(&out);

    /* A corrupted signature, another key's signature, another signer's
     * certificate: all rejected before anything is returned. */
    raw.data[raw.len / 2] ^= 1;
    out.data = (uint8_t *)1;
    assert_int_equal(qk_tbs_finish(tbs, sl(&raw), &chain, 1, &out), QK_ERR_VERIFY_FAILED);
    assert_null(out.data);
    raw.data[raw.len / 2] ^= 1;
    qk_buf other = {0};
    assert_int_equal(qk_evp_sign_digest(tk_rsa_key2(), QK_HASH_SHA384, tdg, tlen, &other), QK_OK);
    assert_int_equal(qk_tbs_finish(tbs, sl(&other), &chain, 1, &out), QK_ERR_VERIFY_FAILED);
    qk_buf_free(&other);
    signer e;
    signer_init(&e, tk_ec_key(), "Unit EC Signer");
    qk_slice echain = sl(&e.der);
    assert_int_equal(qk_tbs_finish(tbs, sl(&raw), &echain, 1, &out), QK_ERR_VERIFY_FAILED);
    /* A signature over the right digest made with the wrong hash in DigestInfo. */
    uint8_t sha256_of_attrs[32];
    hash(QK_HASH_SHA256, attrs.data, attrs.len, sha256_of_attrs);
    assert_int_equal(qk_evp_sign_digest(s.key, QK_HASH_SHA256, sha256_of_attrs, 32, &other), QK_OK);
    assert_int_equal(qk_tbs_finish(tbs, sl(&other), &chain, 1, &out), QK_ERR_VERIFY_FAILED);
    qk_buf_free(&other);
    assert_null(out.data);

    qk_buf_free(&raw);
    qk_tbs_free(tbs);
    qk_tbs_free(NULL);
    signer_cleanup(&e);
    signer_cleanup(&s);
}

static void test_tbs_bad_requests(void **state)
{
    (void)state;
    uint8_t dg[64] = {0};
    qk_tbs *tbs = (qk_tbs *)1;
    qk_sign_request req = {
        .format = QK_FORMAT_AUTHENTICODE_PE, .alg = QK_HASH_SHA256, .digest = {dg, 31}};
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_ERR_INVALID_ARG);
    assert_null(tbs);
    req.digest.len = 33;
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_ERR_INVALID_ARG);
    req.digest.len = 64; /* sha512's length under sha256 */
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_ERR_INVALID_ARG);
    req.digest = (qk_slice){NULL, 32};
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_ERR_INVALID_ARG);
    req.digest = (qk_slice){dg, 32};
    req.alg = QK_HASH_NONE;
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_ERR_UNSUPPORTED_ALG);
    req.alg = (qk_hash_alg)99;
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_ERR_UNSUPPORTED_ALG);
    req.alg = QK_HASH_SHA256;
    req.format = (qk_sig_format)7;
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_ERR_INVALID_ARG);
    req.format = QK_FORMAT_CMS_DETACHED;
    req.signing_time = -5;
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_tbs_new(NULL, &tbs), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_tbs_new(&req, NULL), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_tbs_digest(NULL, dg, NULL), QK_ERR_INVALID_ARG);
    assert_null(qk_tbs_attrs_der(NULL).data);
}

static void test_finish_limits(void **state)
{
    (void)state;
    signer s;
    signer_init(&s, tk_rsa_key(), "Unit RSA Signer");
    uint8_t dg[32], tdg[32];
    tk_random(dg, sizeof(dg));
    qk_sign_request req = {
        .format = QK_FORMAT_AUTHENTICODE_PE, .alg = QK_HASH_SHA256, .digest = {dg, 32}};
    qk_tbs *tbs = NULL;
    assert_int_equal(qk_tbs_new(&req, &tbs), QK_OK);
    assert_int_equal(qk_tbs_digest(tbs, tdg, NULL), QK_OK);
    qk_buf raw = {0}, out = {0};
    assert_int_equal(qk_evp_sign_digest(s.key, QK_HASH_SHA256, tdg, 32, &raw), QK_OK);

    qk_slice chain[QK_MAX_CHAIN_LEN + 1];
    for (size_t i = 0; i <= QK_MAX_CHAIN_LEN; i++)
        chain[i] = sl(&s.der);
    assert_int_equal(qk_tbs_finish(tbs, sl(&raw), chain, QK_MAX_CHAIN_LEN + 1, &out),
                     QK_ERR_TOO_LARGE);
    assert_int_equal(qk_tbs_finish(tbs, sl(&raw), chain, QK_MAX_CHAIN_LEN, &out), QK_OK);
    qk_buf_free(&out);
    assert_int_equal(qk_tbs_finish(tbs, sl(&raw), chain, 0, &out), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_tbs_finish(tbs, sl(&raw), NULL, 1, &out), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_tbs_finish(NULL, sl(&raw), chain, 1, &out), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_tbs_finish(tbs, (qk_slice){NULL, 0}, chain, 1, &out), QK_ERR_INVALID_ARG);
    uint8_t *bigsig = calloc(1, QK_MAX_SIGNATURE_SIZE + 1);
    assert_non_null(bigsig);
    assert_int_equal(
        qk_tbs_finish(tbs, (qk_slice){bigsig, QK_MAX_SIGNATURE_SIZE + 1}, chain, 1, &out),
        QK_ERR_TOO_LARGE);
    free(bigsig);

    /* Certificates: trailing data, truncation, garbage, oversize. */
    uint8_t *cert = malloc(QK_MAX_CERT_SIZE + 1);
    assert_non_null(cert);
    memcpy(cert, s.der.data, s.der.len);
    cert[s.der.len] = 0;
    qk_slice c = {cert, s.der.len + 1};
    assert_int_equal(qk_tbs_finish(tbs, sl(&raw), &c, 1, &out), QK_ERR_TRAILING_DATA);
    for (size_t cut = 0; cut < s.der.len; cut += 7) {
        c.len = cut;
        qk_err rc = qk_tbs_finish(tbs, sl(&raw), &c, 1, &out);
        assert_true(rc == QK_ERR_BAD_DER || rc == QK_ERR_INVALID_ARG);
        assert_null(out.data);
    }
    memset(cert, 0x30, QK_MAX_CERT_SIZE + 1);
    c.len = QK_MAX_CERT_SIZE + 1;
    assert_int_equal(qk_tbs_finish(tbs, sl(&raw), &c, 1, &out), QK_ERR_TOO_LARGE);
    c.len = 100;
    assert_int_equal(qk_tbs_finish(tbs, sl(&raw), &c, 1, &out), QK_ERR_BAD_DER);
    /* A broken intermediate is as fatal as a broken leaf. */
    qk_slice two[2] = {sl(&s.der), {cert, 100}};
    assert_int_equal(qk_tbs_finish(tbs, sl(&raw), two, 2, &out), QK_ERR_BAD_DER);
    free(cert);
    assert_null(out.data);

    qk_buf_free(&raw);
    qk_tbs_free(tbs);
    signer_cleanup(&s);
}

/* --- qk_sign callbacks and the EVP signer --------------------------------- */

static qk_err failing_signer(void *ctx, qk_hash_alg alg, const uint8_t *d, size_t n, qk_buf *sig)
{
    (void)ctx, (void)alg, (void)d, (void)n, (void)sig;
    return QK_ERR_SIGNER;
}

static qk_err empty_signer(void *ctx, qk_hash_alg alg, const uint8_t *d, size_t n, qk_buf *sig)
{
    (void)ctx, (void)alg, (void)d, (void)n;
    sig->data = NULL;
    sig->len = 0;
    return QK_OK;
}

static void test_sign_callbacks(void **state)
{
    (void)state;
    signer s;
    signer_init(&s, tk_rsa_key(), "Unit RSA Signer");
    uint8_t dg[32] = {1};
    qk_sign_request req = {
        .format = QK_FORMAT_AUTHENTICODE_PE, .alg = QK_HASH_SHA256, .digest = {dg, 32}};
    qk_slice chain = sl(&s.der);
    qk_buf out = {0};
    assert_int_equal(qk_sign(&req, failing_signer, NULL, &chain, 1, &out), QK_ERR_SIGNER);
    assert_string_not_equal(qk_error_detail(), "");
    assert_int_equal(qk_sign(&req, empty_signer, NULL, &chain, 1, &out), QK_ERR_SIGNER);
    assert_int_equal(qk_sign(&req, NULL, NULL, &chain, 1, &out), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_sign(&req, qk_evp_sign_fn, s.key, &chain, 1, NULL), QK_ERR_INVALID_ARG);
    /* The key does not match the certificate. */
    assert_int_equal(qk_sign(&req, qk_evp_sign_fn, tk_ec_key(), &chain, 1, &out),
                     QK_ERR_VERIFY_FAILED);
    assert_null(out.data);

    /* self_checked: the signer vouches for its output (OpenSSL RSA checks
     * its CRT result), so the assembler does not verify again. The output is
     * the same valid signature; and the check really is skipped, which is
     * why only a signer whose key matched the leaf may set it. */
    req.self_checked = 1;
    assert_int_equal(qk_sign(&req, qk_evp_sign_fn, s.key, &chain, 1, &out), QK_OK);
    PKCS7 *p7 = parse_p7(&out);
    check_signature_value(sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0), s.key,
                          QK_HASH_SHA256);
    PKCS7_free(p7);
    qk_buf_free(&out);
    assert_int_equal(qk_sign(&req, qk_evp_sign_fn, tk_rsa_key2(), &chain, 1, &out), QK_OK);
    qk_buf_free(&out);
    signer_cleanup(&s);
}

static void test_evp_signer(void **state)
{
    (void)state;
    uint8_t dg[QK_HASH_MAX_SIZE];
    tk_random(dg, sizeof(dg));
    for (size_t i = 0; i < NALGS; i++) {
        qk_hash_alg alg = all_algs[i];
        size_t n = qk_hash_size(alg);
        const EVP_MD *md = EVP_get_digestbynid(qk_hash_nid(alg));
        EVP_PKEY *keys[2] = {tk_rsa_key(), tk_ec_key()};
        for (int k = 0; k < 2; k++) {
            qk_buf sig = {0};
            assert_int_equal(qk_evp_sign_digest(keys[k], alg, dg, n, &sig), QK_OK);
            EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(keys[k], NULL);
            assert_non_null(ctx);
            assert_int_equal(EVP_PKEY_verify_init(ctx), 1);
            assert_int_equal(EVP_PKEY_CTX_set_signature_md(ctx, md), 1);
            assert_int_equal(EVP_PKEY_verify(ctx, sig.data, sig.len, dg, n), 1);
            EVP_PKEY_CTX_free(ctx);
            if (k == 0) {
                /* PKCS#1 v1.5: the recovered block is DigestInfo(alg, dg). */
                uint8_t rec[512];
                size_t reclen = sizeof(rec);
                ctx = EVP_PKEY_CTX_new(keys[k], NULL);
                assert_int_equal(EVP_PKEY_verify_recover_init(ctx), 1);
                assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING), 1);
                assert_int_equal(EVP_PKEY_verify_recover(ctx, rec, &reclen, sig.data, sig.len), 1);
                EVP_PKEY_CTX_free(ctx);
                const unsigned char *p = rec;
                QK_DIGEST_INFO *di = d2i_QK_DIGEST_INFO(NULL, &p, (long)reclen);
                assert_non_null(di);
                assert_ptr_equal(p, rec + reclen);
                check_alg_null(di->digestAlgorithm, qk_hash_nid(alg), 1);
                assert_memory_equal(ASN1_STRING_get0_data(di->digest), dg, n);
                QK_DIGEST_INFO_free(di);
            }
            qk_buf_free(&sig);
            assert_int_equal(qk_evp_sign_digest(keys[k], alg, dg, n - 1, &sig), QK_ERR_INVALID_ARG);
            assert_null(sig.data);
        }
    }
    qk_buf sig = {0};
    assert_int_equal(qk_evp_sign_digest(tk_rsa_key(), QK_HASH_NONE, dg, 32, &sig),
                     QK_ERR_UNSUPPORTED_ALG);
    assert_int_equal(qk_evp_sign_digest(NULL, QK_HASH_SHA256, dg, 32, &sig), QK_ERR_INVALID_ARG);
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ed);
    assert_int_equal(qk_evp_sign_digest(ed, QK_HASH_SHA256, dg, 32, &sig), QK_ERR_UNSUPPORTED_ALG);
    EVP_PKEY_free(ed);
}

/* --- editing: signature value, timestamp, nesting -------------------------- */

/* A real TimeStampToken for `sig`'s signature value, from the in-test TSA. */
static qk_buf make_token(const tk_tsa *tsa, const qk_buf *sig)
{
    qk_buf value = {0}, token = {0};
    qk_tsp_req *req = NULL;
    assert_int_equal(qk_sig_value(sl(sig), &value), QK_OK);
    assert_int_equal(qk_tsp_request_new(QK_HASH_SHA256, sl(&value), &req), QK_OK);
    qk_slice rq = qk_tsp_request_der(req);
    qk_buf reply = tk_tsa_reply(tsa, rq.data, rq.len, NULL);
    assert_int_equal(qk_tsp_reply_check(req, sl(&reply), &token), QK_OK);
    qk_buf_free(&reply);
    qk_buf_free(&value);
    qk_tsp_request_free(req);
    return token;
}

static PKCS7_SIGNER_INFO *first_si(PKCS7 *p7)
{
    return sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
}

/* Everything but the unsigned attributes is unchanged between a and b. */
static void check_same_signed_part(const qk_buf *a, const qk_buf *b)
{
    PKCS7 *pa = parse_p7(a), *pb = parse_p7(b);
    PKCS7_SIGNER_INFO *sa = first_si(pa), *sb = first_si(pb);
    qk_buf ea = attrs_set_der(sa->auth_attr), eb = attrs_set_der(sb->auth_attr);
    assert_int_equal(ea.len, eb.len);
    assert_memory_equal(ea.data, eb.data, ea.len);
    assert_int_equal(ASN1_STRING_cmp(sa->enc_digest, sb->enc_digest), 0);
    assert_int_equal(OBJ_cmp(pa->d.sign->contents->type, pb->d.sign->contents->type), 0);
    if (PKCS7_type_is_data(pa->d.sign->contents)) /* detached: no content at all */
        assert_true(PKCS7_get_detached(pa) && PKCS7_get_detached(pb));
    else
        assert_int_equal(
            ASN1_TYPE_cmp(pa->d.sign->contents->d.other, pb->d.sign->contents->d.other), 0);
    assert_int_equal(sk_X509_num(pa->d.sign->cert), sk_X509_num(pb->d.sign->cert));
    qk_buf_free(&ea);
    qk_buf_free(&eb);
    PKCS7_free(pa);
    PKCS7_free(pb);
}

static void test_sig_value(void **state)
{
    (void)state;
    signer s;
    signer_init(&s, tk_ec_key(), "Unit EC Signer");
    qk_buf sig = sign_with(&s, QK_FORMAT_AUTHENTICODE_PE, QK_HASH_SHA256, NULL, NULL, NULL);
    qk_buf v = {0};
    assert_int_equal(qk_sig_value(sl(&sig), &v), QK_OK);
    PKCS7 *p7 = parse_p7(&sig);
    assert_int_equal(v.len, (size_t)ASN1_STRING_length(first_si(p7)->enc_digest));
    assert_memory_equal(v.data, ASN1_STRING_get0_data(first_si(p7)->enc_digest), v.len);
    PKCS7_free(p7);
    qk_buf_free(&v);
    assert_int_equal(qk_sig_value(sl(&sig), NULL), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_sig_value((qk_slice){NULL, 0}, &v), QK_ERR_INVALID_ARG);
    qk_buf_free(&sig);
    signer_cleanup(&s);
}

static void test_add_timestamp(void **state)
{
    (void)state;
    tk_tsa tsa;
    tk_tsa_init(&tsa);
    signer s;
    signer_init(&s, tk_rsa_key(), "Unit RSA Signer");
    qk_buf sig = sign_with(&s, QK_FORMAT_AUTHENTICODE_PE, QK_HASH_SHA256, "x", NULL, NULL);
    qk_buf tok = make_token(&tsa, &sig);
    qk_buf ts1 = {0}, ts2 = {0};
    assert_int_equal(qk_sig_add_timestamp(sl(&sig), sl(&tok), &ts1), QK_OK);
    check_same_signed_part(&sig, &ts1);
    PKCS7 *p7 = parse_p7(&ts1);
    int count = 0;
    const ASN1_TYPE *v =
        attr_value(first_si(p7)->unauth_attr, QK_OID_SPC_RFC3161_TIMESTAMP, &count);
    assert_int_equal(count, 1);
    assert_int_equal(v->type, V_ASN1_SEQUENCE);
    assert_int_equal(ASN1_STRING_length(v->value.sequence), (int)tok.len);
    assert_memory_equal(ASN1_STRING_get0_data(v->value.sequence), tok.data, tok.len);
    PKCS7_free(p7);

    /* Timestamping again replaces the token instead of adding a second. */
    qk_buf tok2 = make_token(&tsa, &ts1);
    assert_int_equal(qk_sig_add_timestamp(sl(&ts1), sl(&tok2), &ts2), QK_OK);
    check_same_signed_part(&sig, &ts2);
    p7 = parse_p7(&ts2);
    v = attr_value(first_si(p7)->unauth_attr, QK_OID_SPC_RFC3161_TIMESTAMP, &count);
    assert_int_equal(count, 1);
    assert_memory_equal(ASN1_STRING_get0_data(v->value.sequence), tok2.data, tok2.len);
    PKCS7_free(p7);

    /* Only TSTInfo tokens: a signature is not a timestamp token. */
    qk_buf out = {0};
    assert_int_equal(qk_sig_add_timestamp(sl(&sig), sl(&sig), &out), QK_ERR_BAD_SIGNATURE);
    assert_null(out.data);
    /* An oversized token. */
    uint8_t *big = calloc(1, QK_TSP_MAX_REPLY + 1);
    assert_non_null(big);
    assert_int_equal(qk_sig_add_timestamp(sl(&sig), (qk_slice){big, QK_TSP_MAX_REPLY + 1}, &out),
                     QK_ERR_TOO_LARGE);
    free(big);

    qk_buf_free(&tok);
    qk_buf_free(&tok2);
    qk_buf_free(&ts1);
    qk_buf_free(&ts2);
    qk_buf_free(&sig);
    signer_cleanup(&s);
    tk_tsa_cleanup(&tsa);
}

typedef struct tsa_ctx {
    const tk_tsa *tsa;
} tsa_ctx;

static qk_err tsa_send(void *ctx, qk_slice req, qk_buf *reply)
{
    *reply = tk_tsa_reply(((const tsa_ctx *)ctx)->tsa, req.data, req.len, NULL);
    return QK_OK;
}

/* Detached CMS gets RFC 3161 Appendix A's id-aa-timeStampToken, which CMS
 * tools read, not Microsoft's attribute; Authenticode keeps Microsoft's. */
static void test_cms_timestamp_attr(void **state)
{
    (void)state;
    static const char content[] = "detached content with a timestamp\n";
    tk_tsa tsa;
    tk_tsa_init(&tsa);
    tsa_ctx tc = {&tsa};
    signer s;
    signer_init(&s, tk_rsa_key(), "Unit RSA Signer");
    uint8_t dg[QK_HASH_MAX_SIZE];
    hash(QK_HASH_SHA256, (const uint8_t *)content, strlen(content), dg);
    qk_sign_request req = {.format = QK_FORMAT_CMS_DETACHED,
                           .alg = QK_HASH_SHA256,
                           .digest = {dg, 32},
                           .signing_time = 1700000000};
    qk_slice chain = sl(&s.der);
    qk_buf sig = {0}, ts1 = {0}, ts2 = {0};
    assert_int_equal(qk_sign(&req, qk_evp_sign_fn, s.key, &chain, 1, &sig), QK_OK);

    assert_int_equal(qk_timestamp(sl(&sig), QK_HASH_SHA256, tsa_send, &tc, &ts1), QK_OK);
    check_same_signed_part(&sig, &ts1);
    PKCS7 *p7 = parse_p7(&ts1);
    int count = 0;
    const ASN1_TYPE *v = attr_value(first_si(p7)->unauth_attr, QK_OID_AA_TIMESTAMP_TOKEN, &count);
    assert_int_equal(count, 1);
    assert_int_equal(v->type, V_ASN1_SEQUENCE);
    assert_false(has_attr(first_si(p7)->unauth_attr, QK_OID_SPC_RFC3161_TIMESTAMP));
    assert_int_equal(X509at_get_attr_count(first_si(p7)->unauth_attr), 1);
    /* OpenSSL knows it by name: the standard attribute. */
    assert_true(X509at_get_attr_by_NID(first_si(p7)->unauth_attr,
                                       NID_id_smime_aa_timeStampToken, -1) >= 0);
    /* The token inside is a TSTInfo SignedData whose imprint is the hash of
     * the signature value. */
    const unsigned char *p = ASN1_STRING_get0_data(v->value.sequence);
    PKCS7 *tok = d2i_PKCS7(NULL, &p, ASN1_STRING_length(v->value.sequence));
    assert_non_null(tok);
    TS_TST_INFO *tst = PKCS7_to_TS_TST_INFO(tok);
    assert_non_null(tst);
    const ASN1_OCTET_STRING *imp = TS_MSG_IMPRINT_get_msg(TS_TST_INFO_get_msg_imprint(tst));
    uint8_t h[32];
    const ASN1_OCTET_STRING *sv = first_si(p7)->enc_digest;
    hash(QK_HASH_SHA256, ASN1_STRING_get0_data(sv), (size_t)ASN1_STRING_length(sv), h);
    assert_int_equal(ASN1_STRING_length(imp), 32);
    assert_memory_equal(ASN1_STRING_get0_data(imp), h, 32);
    TS_TST_INFO_free(tst);
    PKCS7_free(tok);
    PKCS7_free(p7);

    /* OpenSSL's CMS verifier still accepts the signature over the content. */
    p = ts1.data;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)ts1.len);
    assert_non_null(cms);
    BIO *in = BIO_new_mem_buf(content, (int)strlen(content));
    assert_non_null(in);
    assert_int_equal(
        CMS_verify(cms, NULL, NULL, in, NULL, CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY), 1);
    BIO_free(in);
    CMS_ContentInfo_free(cms);

    /* Re-timestamping replaces the token. */
    assert_int_equal(qk_timestamp(sl(&ts1), QK_HASH_SHA384, tsa_send, &tc, &ts2), QK_OK);
    check_same_signed_part(&sig, &ts2);
    p7 = parse_p7(&ts2);
    (void)attr_value(first_si(p7)->unauth_attr, QK_OID_AA_TIMESTAMP_TOKEN, NULL);
    assert_int_equal(X509at_get_attr_count(first_si(p7)->unauth_attr), 1);
    PKCS7_free(p7);
    qk_buf_free(&ts2);

    /* Authenticode content keeps Microsoft's attribute. */
    qk_buf pe = sign_with(&s, QK_FORMAT_AUTHENTICODE_PE, QK_HASH_SHA256, NULL, NULL, NULL);
    assert_int_equal(qk_timestamp(sl(&pe), QK_HASH_SHA256, tsa_send, &tc, &ts2), QK_OK);
    p7 = parse_p7(&ts2);
    (void)attr_value(first_si(p7)->unauth_attr, QK_OID_SPC_RFC3161_TIMESTAMP, NULL);
    assert_false(has_attr(first_si(p7)->unauth_attr, QK_OID_AA_TIMESTAMP_TOKEN));
    PKCS7_free(p7);

    qk_buf_free(&pe);
    qk_buf_free(&ts2);
    qk_buf_free(&ts1);
    qk_buf_free(&sig);
    signer_cleanup(&s);
    tk_tsa_cleanup(&tsa);
}

static void test_nest(void **state)
{
    (void)state;
    tk_tsa tsa;
    tk_tsa_init(&tsa);
    signer rs, es;
    signer_init(&rs, tk_rsa_key(), "Unit RSA Signer");
    signer_init(&es, tk_ec_key(), "Unit EC Signer");
    qk_buf outer = sign_with(&rs, QK_FORMAT_AUTHENTICODE_PE, QK_HASH_SHA1, NULL, NULL, NULL);
    qk_buf tok = make_token(&tsa, &outer);
    qk_buf outer_ts = {0};
    assert_int_equal(qk_sig_add_timestamp(sl(&outer), sl(&tok), &outer_ts), QK_OK);
    qk_buf in1 = sign_with(&es, QK_FORMAT_AUTHENTICODE_PE, QK_HASH_SHA256, NULL, NULL, NULL);
    qk_buf in2 = sign_with(&rs, QK_FORMAT_AUTHENTICODE_PE, QK_HASH_SHA512, NULL, NULL, NULL);

    qk_buf n1 = {0}, n2 = {0};
    assert_int_equal(qk_sig_nest(sl(&outer_ts), sl(&in1), &n1), QK_OK);
    check_same_signed_part(&outer, &n1);
    PKCS7 *p7 = parse_p7(&n1);
    int count = 0;
    const ASN1_TYPE *v = attr_value(first_si(p7)->unauth_attr, QK_OID_SPC_NESTED_SIGNATURE, &count);
    assert_int_equal(count, 1);
    assert_int_equal(ASN1_STRING_length(v->value.sequence), (int)in1.len);
    assert_memory_equal(ASN1_STRING_get0_data(v->value.sequence), in1.data, in1.len);
    /* The timestamp is still there. */
    assert_true(has_attr(first_si(p7)->unauth_attr, QK_OID_SPC_RFC3161_TIMESTAMP));
    PKCS7_free(p7);

    /* A second nested signature goes into the same attribute's SET. */
    assert_int_equal(qk_sig_nest(sl(&n1), sl(&in2), &n2), QK_OK);
    check_same_signed_part(&outer, &n2);
    p7 = parse_p7(&n2);
    (void)attr_value(first_si(p7)->unauth_attr, QK_OID_SPC_NESTED_SIGNATURE, &count);
    assert_int_equal(count, 2);
    int seen1 = 0, seen2 = 0;
    for (int i = 0; i < X509at_get_attr_count(first_si(p7)->unauth_attr); i++) {
        X509_ATTRIBUTE *at = X509at_get_attr(first_si(p7)->unauth_attr, i);
        if (!obj_is(X509_ATTRIBUTE_get0_object(at), QK_OID_SPC_NESTED_SIGNATURE))
            continue;
        for (int j = 0; j < X509_ATTRIBUTE_count(at); j++) {
            const ASN1_STRING *sq = X509_ATTRIBUTE_get0_type(at, j)->value.sequence;
            if ((size_t)ASN1_STRING_length(sq) == in1.len &&
                memcmp(ASN1_STRING_get0_data(sq), in1.data, in1.len) == 0)
                seen1 = 1;
            if ((size_t)ASN1_STRING_length(sq) == in2.len &&
                memcmp(ASN1_STRING_get0_data(sq), in2.data, in2.len) == 0)
                seen2 = 1;
        }
    }
    assert_true(seen1 && seen2);
    PKCS7_free(p7);

    qk_buf out = {0};
    assert_int_equal(qk_sig_nest(sl(&outer), (qk_slice){NULL, 0}, &out), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_sig_nest(sl(&outer), sl(&in1), NULL), QK_ERR_INVALID_ARG);
    qk_buf_free(&n1);
    qk_buf_free(&n2);
    qk_buf_free(&in1);
    qk_buf_free(&in2);
    qk_buf_free(&tok);
    qk_buf_free(&outer);
    qk_buf_free(&outer_ts);
    signer_cleanup(&rs);
    signer_cleanup(&es);
    tk_tsa_cleanup(&tsa);
}

/* --- malformed inputs ----------------------------------------------------- */

typedef qk_err (*edit_fn)(const qk_slice *in, const void *ctx, qk_buf *out);

typedef struct edit_ctx {
    qk_slice other;
} edit_ctx;

static qk_err e_value(const qk_slice *in, const void *c, qk_buf *out)
{
    (void)c;
    return qk_sig_value(*in, out);
}
static qk_err e_ts_sig(const qk_slice *in, const void *c, qk_buf *out)
{
    return qk_sig_add_timestamp(*in, ((const edit_ctx *)c)->other, out);
}
static qk_err e_ts_token(const qk_slice *in, const void *c, qk_buf *out)
{
    return qk_sig_add_timestamp(((const edit_ctx *)c)->other, *in, out);
}
static qk_err e_nest_outer(const qk_slice *in, const void *c, qk_buf *out)
{
    return qk_sig_nest(*in, ((const edit_ctx *)c)->other, out);
}
static qk_err e_nest_inner(const qk_slice *in, const void *c, qk_buf *out)
{
    return qk_sig_nest(((const edit_ctx *)c)->other, *in, out);
}

/* Runs fn over a private heap copy (so ASan sees any overread). */
static qk_err run_copy(edit_fn fn, const edit_ctx *c, const uint8_t *p, size_t n)
{
    uint8_t *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, p, n);
    qk_slice in = {copy, n};
    qk_buf out = {(uint8_t *)1, 1};
    qk_err rc = fn(&in, c, &out);
    if (rc != QK_OK) {
        assert_null(out.data);
        assert_int_equal(out.len, 0);
    }
    qk_buf_free(&out);
    free(copy);
    return rc;
}

static void hostile_inputs(edit_fn fn, const edit_ctx *c, const qk_buf *good)
{
    assert_int_equal(run_copy(fn, c, good->data, good->len), QK_OK);
    /* Every truncation fails. */
    for (size_t n = 0; n < good->len; n++)
        assert_int_not_equal(run_copy(fn, c, good->data, n), QK_OK);
    /* Trailing data is named as such. */
    uint8_t *more = malloc(good->len + 3);
    assert_non_null(more);
    memcpy(more, good->data, good->len);
    memcpy(more + good->len, "\x00\x00\x01", 3);
    for (size_t extra = 1; extra <= 3; extra++)
        assert_int_equal(run_copy(fn, c, more, good->len + extra), QK_ERR_TRAILING_DATA);
    /* Bit flips: any result but a crash or a leak. Flips in the structure
     * must fail; flips inside opaque values (signature bytes) may pass. */
    memcpy(more, good->data, good->len);
    for (size_t i = 0; i < good->len; i++) {
        uint8_t bit = (uint8_t)(1u << (i % 8));
        more[i] ^= bit;
        (void)run_copy(fn, c, more, good->len);
        more[i] ^= bit;
    }
    /* The outer SEQUENCE with a non-minimal length: BER, not DER. */
    assert_int_equal(good->data[0], 0x30);
    assert_int_equal(good->data[1], 0x82);
    uint8_t *ber = malloc(good->len + 1);
    assert_non_null(ber);
    ber[0] = 0x30;
    ber[1] = 0x83;
    ber[2] = 0;
    memcpy(ber + 3, good->data + 2, good->len - 2);
    assert_int_not_equal(run_copy(fn, c, ber, good->len + 1), QK_OK);
    free(ber);
    free(more);
}

static void test_hostile_inputs(void **state)
{
    (void)state;
    tk_tsa tsa;
    tk_tsa_init(&tsa);
    signer s;
    signer_init(&s, tk_ec_key(), "Unit EC Signer");
    qk_buf sig = sign_with(&s, QK_FORMAT_AUTHENTICODE_PE, QK_HASH_SHA256, NULL, NULL, NULL);
    qk_buf inner = sign_with(&s, QK_FORMAT_AUTHENTICODE_PE, QK_HASH_SHA384, NULL, NULL, NULL);
    qk_buf tok = make_token(&tsa, &sig);

    edit_ctx c = {{NULL, 0}};
    hostile_inputs(e_value, &c, &sig);
    c.other = sl(&tok);
    hostile_inputs(e_ts_sig, &c, &sig);
    c.other = sl(&sig);
    hostile_inputs(e_ts_token, &c, &tok);
    c.other = sl(&inner);
    hostile_inputs(e_nest_outer, &c, &sig);
    c.other = sl(&sig);
    hostile_inputs(e_nest_inner, &c, &inner);

    /* Well-formed DER that is not SignedData. */
    static const uint8_t data_ci[] = {0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48,
                                      0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01};
    qk_buf out = {0};
    assert_int_equal(qk_sig_value((qk_slice){data_ci, sizeof(data_ci)}, &out),
                     QK_ERR_BAD_SIGNATURE);

    qk_buf_free(&sig);
    qk_buf_free(&inner);
    qk_buf_free(&tok);
    signer_cleanup(&s);
    tk_tsa_cleanup(&tsa);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pe_structure_rsa),
        cmocka_unit_test(test_pe_structure_ecdsa),
        cmocka_unit_test(test_pe_opus_one_field),
        cmocka_unit_test(test_cms_detached),
        cmocka_unit_test(test_chain_certificates),
        cmocka_unit_test(test_tbs_two_phase),
        cmocka_unit_test(test_tbs_bad_requests),
        cmocka_unit_test(test_finish_limits),
        cmocka_unit_test(test_sign_callbacks),
        cmocka_unit_test(test_evp_signer),
        cmocka_unit_test(test_sig_value),
        cmocka_unit_test(test_add_timestamp),
        cmocka_unit_test(test_cms_timestamp_attr),
        cmocka_unit_test(test_nest),
        cmocka_unit_test(test_hostile_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
