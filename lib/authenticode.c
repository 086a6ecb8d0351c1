/* Assembling Authenticode and detached CMS signatures around a signature
 * value produced elsewhere (local key, HSM, cloud signing service).
 *
 * qk_tbs_new() fixes everything the signature covers: the content
 * (SpcIndirectDataContent for PE) and the authenticated attributes, encoded
 * once as DER SET OF. qk_tbs_finish() puts the SignedData together with
 * OpenSSL's PKCS7 objects, filling in the SignerInfo fields directly instead
 * of through PKCS7_sign(), which would want to hold the private key. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pkcs7.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "internal.h"
#include "qwick/authenticode.h"
#include "qwick/tsp.h"
#include "sig_internal.h"
#include "spc.h"

/* Longest program name / URL put in SpcSpOpusInfo, in bytes of UTF-8. */
#define QK_MAX_OPUS_TEXT 1024

struct qk_tbs {
    qk_sig_format format;
    qk_hash_alg alg;
    uint8_t *content; /* PE: DER SpcIndirectDataContent; CMS: NULL (detached) */
    size_t content_len;
    STACK_OF(X509_ATTRIBUTE) *attrs;
    uint8_t *attrs_der; /* DER SET OF attrs: the signed bytes */
    size_t attrs_len;
    int self_checked;  /* qk_sign_request.self_checked */
    qk_stamp_fn stamp; /* qk_sign_request.stamp, stamp_ctx */
    void *stamp_ctx;
};

/* The BMPString (UCS-2, big-endian) form of UTF-8 text. */
static qk_err bmp_string(const char *utf8, ASN1_STRING **out)
{
    ASN1_STRING *s = NULL;
    *out = NULL;
    if (ASN1_mbstring_copy(&s, (const unsigned char *)utf8, -1, MBSTRING_UTF8, B_ASN1_BMPSTRING) <=
        0)
        return qk_fail_ossl(QK_ERR_INVALID_ARG,
                            "text is not UTF-8 within the Basic Multilingual Plane");
    *out = s;
    return QK_OK;
}

/* SpcString.unicode holding `utf8`. */
static qk_err spc_string_unicode(const char *utf8, QK_SPC_STRING **out)
{
    qk_err rc;
    QK_SPC_STRING *s = NULL;
    *out = NULL;
    if ((s = QK_SPC_STRING_new()) == NULL)
        return QK_ERR_NOMEM;
    s->type = 0;
    if ((rc = bmp_string(utf8, &s->value.unicode)) != QK_OK) {
        QK_SPC_STRING_free(s);
        return rc;
    }
    *out = s;
    return QK_OK;
}

/* Generic i2d through an ASN.1 item into malloc memory. */
static qk_err item_der(const void *val, const ASN1_ITEM *it, const char *what, uint8_t **der,
                       size_t *len)
{
    unsigned char *p = NULL;
    int n = ASN1_item_i2d((const ASN1_VALUE *)val, &p, it);
    *der = NULL;
    *len = 0;
    if (n <= 0)
        return qk_fail_ossl(QK_ERR_CRYPTO, "encoding %s", what);
    if ((*der = malloc((size_t)n)) == NULL) {
        OPENSSL_free(p);
        return QK_ERR_NOMEM;
    }
    memcpy(*der, p, (size_t)n);
    *len = (size_t)n;
    OPENSSL_free(p);
    return QK_OK;
}

/* SpcIndirectDataContent{SpcAttributeTypeAndOptionalValue{SPC_PE_IMAGE_DATA,
 * SpcPeImageData{flags = {}, file = SpcLink.file(SpcString.unicode
 * "<<<Obsolete>>>")}}, DigestInfo{alg, digest}}: what signtool writes. */
static qk_err pe_content(qk_hash_alg alg, qk_slice digest, uint8_t **der, size_t *len)
{
    qk_err rc = QK_ERR_NOMEM;
    QK_SPC_PE_IMAGE_DATA *pid = NULL;
    QK_SPC_INDIRECT_DATA *idc = NULL;
    uint8_t *pid_der = NULL;
    size_t pid_len = 0;

    if ((pid = QK_SPC_PE_IMAGE_DATA_new()) == NULL || (pid->file = QK_SPC_LINK_new()) == NULL)
        goto out;
    /* flags: an empty BIT STRING (03 01 00). */
    if (!ASN1_BIT_STRING_set(pid->flags, NULL, 0))
        goto out;
    pid->file->type = 2;
    if ((rc = spc_string_unicode("<<<Obsolete>>>", &pid->file->value.file)) != QK_OK)
        goto out;
    if ((rc = item_der(pid, ASN1_ITEM_rptr(QK_SPC_PE_IMAGE_DATA), "SpcPeImageData", &pid_der,
                       &pid_len)) != QK_OK)
        goto out;

    rc = QK_ERR_NOMEM;
    if ((idc = QK_SPC_INDIRECT_DATA_new()) == NULL)
        goto out;
    ASN1_OBJECT_free(idc->data->type);
    if ((idc->data->type = OBJ_txt2obj(QK_OID_SPC_PE_IMAGE_DATA, 1)) == NULL)
        goto out;
    if ((rc = qk_asn1_type_seq(pid_der, pid_len, &idc->data->value)) != QK_OK)
        goto out;
    rc = QK_ERR_NOMEM;
    if (!X509_ALGOR_set0(idc->messageDigest->digestAlgorithm, OBJ_nid2obj(qk_hash_nid(alg)),
                         V_ASN1_NULL, NULL) ||
        !ASN1_OCTET_STRING_set(idc->messageDigest->digest, digest.data, (int)digest.len))
        goto out;
    rc = item_der(idc, ASN1_ITEM_rptr(QK_SPC_INDIRECT_DATA), "SpcIndirectDataContent", der, len);
out:
    free(pid_der);
    QK_SPC_PE_IMAGE_DATA_free(pid);
    QK_SPC_INDIRECT_DATA_free(idc);
    return rc;
}

/* SpcSpOpusInfo{programName [0] SpcString.unicode, moreInfo [1] SpcLink.url},
 * both optional: an empty SEQUENCE when neither is given. */
static qk_err opus_info(const char *name, const char *url, uint8_t **der, size_t *len)
{
    qk_err rc = QK_ERR_NOMEM;
    QK_SPC_SP_OPUS_INFO *oi = NULL;

    if ((name && strlen(name) > QK_MAX_OPUS_TEXT) || (url && strlen(url) > QK_MAX_OPUS_TEXT))
        return qk_fail(QK_ERR_TOO_LARGE, "program name or URL longer than %d bytes",
                       QK_MAX_OPUS_TEXT);
    if ((oi = QK_SPC_SP_OPUS_INFO_new()) == NULL)
        goto out;
    if (name != NULL && name[0] != '\0' &&
        (rc = spc_string_unicode(name, &oi->programName)) != QK_OK)
        goto out;
    if (url != NULL && url[0] != '\0') {
        rc = QK_ERR_NOMEM;
        if ((oi->moreInfo = QK_SPC_LINK_new()) == NULL)
            goto out;
        oi->moreInfo->type = 0;
        if (ASN1_mbstring_copy(&oi->moreInfo->value.url, (const unsigned char *)url, -1,
                               MBSTRING_UTF8, B_ASN1_IA5STRING) <= 0) {
            rc = qk_fail_ossl(QK_ERR_INVALID_ARG, "URL is not ASCII (IA5String)");
            goto out;
        }
    }
    rc = item_der(oi, ASN1_ITEM_rptr(QK_SPC_SP_OPUS_INFO), "SpcSpOpusInfo", der, len);
out:
    QK_SPC_SP_OPUS_INFO_free(oi);
    return rc;
}

/* SpcStatementType ::= SEQUENCE OF OID, here {individual code signing}. */
static qk_err statement_type(uint8_t **der, size_t *len)
{
    qk_err rc = QK_ERR_NOMEM;
    ASN1_SEQUENCE_ANY *seq = NULL;
    ASN1_TYPE *t = NULL;
    ASN1_OBJECT *obj = NULL;

    if ((seq = sk_ASN1_TYPE_new_null()) == NULL || (t = ASN1_TYPE_new()) == NULL ||
        (obj = OBJ_txt2obj(QK_OID_SPC_INDIVIDUAL_SP_KEY_PURPOSE, 1)) == NULL)
        goto out;
    ASN1_TYPE_set(t, V_ASN1_OBJECT, obj);
    obj = NULL;
    if (!sk_ASN1_TYPE_push(seq, t))
        goto out;
    t = NULL;
    rc = item_der(seq, ASN1_ITEM_rptr(ASN1_SEQUENCE_ANY), "SpcStatementType", der, len);
out:
    ASN1_OBJECT_free(obj);
    ASN1_TYPE_free(t);
    sk_ASN1_TYPE_pop_free(seq, ASN1_TYPE_free);
    return rc;
}

/* The bytes of a DER TLV after its tag and length: what the messageDigest
 * attribute of an Authenticode signature covers. */
static qk_err der_contents(const uint8_t *der, size_t len, const uint8_t **p, size_t *n)
{
    const unsigned char *q = der;
    long clen = 0;
    int tag = 0, cls = 0;
    int r = ASN1_get_object(&q, &clen, &tag, &cls, (long)len);
    if ((r & 0x80) || r != V_ASN1_CONSTRUCTED || clen < 0 ||
        (size_t)(q - der) + (size_t)clen != len)
        return qk_fail(QK_ERR_BAD_DER, "internal: content is not one definite-length TLV");
    *p = q;
    *n = (size_t)clen;
    return QK_OK;
}

static qk_err add_object_attr(STACK_OF(X509_ATTRIBUTE) **sk, const char *oid, int nid)
{
    ASN1_OBJECT *obj = OBJ_nid2obj(nid);
    if (obj == NULL)
        return QK_ERR_NOMEM;
    return qk_attr_add(sk, oid, V_ASN1_OBJECT, obj, -1);
}

static qk_err pe_attrs(qk_tbs *t, const qk_sign_request *req, const uint8_t *md, size_t mdlen)
{
    qk_err rc;
    uint8_t *opus = NULL, *stmt = NULL;
    size_t opus_len = 0, stmt_len = 0;
    ASN1_OBJECT *spc = NULL;

    if ((rc = opus_info(req->program_name, req->url, &opus, &opus_len)) != QK_OK ||
        (rc = statement_type(&stmt, &stmt_len)) != QK_OK)
        goto out;
    rc = QK_ERR_NOMEM;
    if ((spc = OBJ_txt2obj(QK_OID_SPC_INDIRECT_DATA, 1)) == NULL)
        goto out;
    if ((rc = qk_attr_add(&t->attrs, "1.2.840.113549.1.9.3", V_ASN1_OBJECT, spc, -1)) != QK_OK ||
        (rc = qk_attr_add(&t->attrs, QK_OID_SPC_SP_OPUS_INFO, V_ASN1_SEQUENCE, opus,
                          (int)opus_len)) != QK_OK ||
        (rc = qk_attr_add(&t->attrs, QK_OID_SPC_STATEMENT_TYPE, V_ASN1_SEQUENCE, stmt,
                          (int)stmt_len)) != QK_OK ||
        (rc = qk_attr_add(&t->attrs, "1.2.840.113549.1.9.4", V_ASN1_OCTET_STRING, md,
                          (int)mdlen)) != QK_OK)
        goto out;
out:
    ASN1_OBJECT_free(spc);
    free(opus);
    free(stmt);
    return rc;
}

static qk_err cms_attrs(qk_tbs *t, const qk_sign_request *req)
{
    qk_err rc = QK_ERR_NOMEM;
    ASN1_TIME *when = NULL;
    time_t now = req->signing_time ? (time_t)req->signing_time : time(NULL);

    if (req->signing_time < 0)
        return qk_fail(QK_ERR_INVALID_ARG, "negative signing time");
    /* ASN1_TIME_set picks UTCTime up to 2049 and GeneralizedTime after, as
     * RFC 5652 11.3 requires of signingTime. */
    if ((when = ASN1_TIME_set(NULL, now)) == NULL)
        goto out;
    if ((rc = add_object_attr(&t->attrs, "1.2.840.113549.1.9.3", NID_pkcs7_data)) != QK_OK ||
        (rc = qk_attr_add(&t->attrs, "1.2.840.113549.1.9.5", ASN1_STRING_type(when), when, -1)) !=
            QK_OK ||
        (rc = qk_attr_add(&t->attrs, "1.2.840.113549.1.9.4", V_ASN1_OCTET_STRING, req->digest.data,
                          (int)req->digest.len)) != QK_OK)
        goto out;
out:
    ASN1_TIME_free(when);
    return rc;
}

qk_err qk_tbs_new(const qk_sign_request *req, qk_tbs **out)
{
    qk_err rc = QK_ERR_NOMEM;
    qk_tbs *t = NULL;
    uint8_t md[QK_HASH_MAX_SIZE];

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    *out = NULL;
    qk_clear_detail();
    ERR_clear_error(); /* stale queue entries would pollute our details */
    if (req == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "no sign request");
    size_t hlen = qk_hash_size(req->alg);
    if (hlen == 0)
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "digest algorithm %d", (int)req->alg);
    if (req->digest.data == NULL || req->digest.len != hlen)
        return qk_fail(QK_ERR_INVALID_ARG, "digest is %zu bytes, %s needs %zu", req->digest.len,
                       qk_hash_name(req->alg), hlen);
    if (req->format != QK_FORMAT_AUTHENTICODE_PE && req->format != QK_FORMAT_CMS_DETACHED)
        return qk_fail(QK_ERR_INVALID_ARG, "unknown signature format %d", (int)req->format);

    if ((t = calloc(1, sizeof(*t))) == NULL)
        goto out;
    t->format = req->format;
    t->alg = req->alg;
    t->self_checked = req->self_checked != 0;
    t->stamp = req->stamp;
    t->stamp_ctx = req->stamp_ctx;
    if ((t->attrs = sk_X509_ATTRIBUTE_new_null()) == NULL)
        goto out;
    if (req->format == QK_FORMAT_AUTHENTICODE_PE) {
        const uint8_t *body = NULL;
        size_t body_len = 0;
        if ((rc = pe_content(req->alg, req->digest, &t->content, &t->content_len)) != QK_OK ||
            (rc = der_contents(t->content, t->content_len, &body, &body_len)) != QK_OK ||
            (rc = qk_md(req->alg, body, body_len, md)) != QK_OK ||
            (rc = pe_attrs(t, req, md, hlen)) != QK_OK)
            goto out;
    } else if ((rc = cms_attrs(t, req)) != QK_OK) {
        goto out;
    }
    /* PKCS7_ATTR_SIGN is the SET OF form, DER-sorted: exactly what the SignerInfo
     * carries under [0] and what the signature covers. */
    if ((rc = item_der(t->attrs, ASN1_ITEM_rptr(PKCS7_ATTR_SIGN), "signed attributes",
                       &t->attrs_der, &t->attrs_len)) != QK_OK)
        goto out;
    *out = t;
    t = NULL;
    rc = QK_OK;
out:
    qk_tbs_free(t);
    return rc;
}

void qk_tbs_free(qk_tbs *tbs)
{
    if (tbs == NULL)
        return;
    free(tbs->content);
    free(tbs->attrs_der);
    sk_X509_ATTRIBUTE_pop_free(tbs->attrs, X509_ATTRIBUTE_free);
    free(tbs);
}

qk_slice qk_tbs_attrs_der(const qk_tbs *tbs)
{
    qk_slice s = {NULL, 0};
    if (tbs != NULL) {
        s.data = tbs->attrs_der;
        s.len = tbs->attrs_len;
    }
    return s;
}

qk_err qk_tbs_digest(const qk_tbs *tbs, uint8_t *out, size_t *outlen)
{
    if (tbs == NULL || out == NULL)
        return QK_ERR_INVALID_ARG;
    qk_err rc = qk_md(tbs->alg, tbs->attrs_der, tbs->attrs_len, out);
    if (rc == QK_OK && outlen != NULL)
        *outlen = qk_hash_size(tbs->alg);
    return rc;
}

/* The SignerInfo signatureAlgorithm for the signer's key: rsaEncryption
 * (NULL parameters) for RSA, as signtool writes it; ecdsa-with-SHAxxx
 * (no parameters) for EC. */
static qk_err sig_algor(EVP_PKEY *pub, qk_hash_alg alg, X509_ALGOR *a)
{
    if (EVP_PKEY_is_a(pub, "RSA")) {
        if (!X509_ALGOR_set0(a, OBJ_nid2obj(NID_rsaEncryption), V_ASN1_NULL, NULL))
            return QK_ERR_NOMEM;
        return QK_OK;
    }
    if (EVP_PKEY_is_a(pub, "EC")) {
        int snid = NID_undef;
        if (!OBJ_find_sigid_by_algs(&snid, qk_hash_nid(alg), NID_X9_62_id_ecPublicKey))
            return qk_fail(QK_ERR_UNSUPPORTED_ALG, "ECDSA with %s", qk_hash_name(alg));
        if (!X509_ALGOR_set0(a, OBJ_nid2obj(snid), V_ASN1_UNDEF, NULL))
            return QK_ERR_NOMEM;
        return QK_OK;
    }
    return qk_fail(QK_ERR_UNSUPPORTED_ALG, "signer key type %s (RSA and EC are supported)",
                   EVP_PKEY_get0_type_name(pub));
}

/* Checks `sig` over the signed attributes with the signer's public key, so a
 * wrong key, a wrong hash or a corrupted value never leaves this library. */
static qk_err check_signature(const qk_tbs *t, EVP_PKEY *pub, qk_slice sig)
{
    qk_err rc = QK_ERR_NOMEM;
    EVP_MD_CTX *ctx = NULL;
    EVP_PKEY_CTX *pctx = NULL;
    const EVP_MD *md = EVP_get_digestbynid(qk_hash_nid(t->alg));

    if (md == NULL)
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "digest %s", qk_hash_name(t->alg));
    if ((ctx = EVP_MD_CTX_new()) == NULL)
        goto out;
    if (EVP_DigestVerifyInit(ctx, &pctx, md, NULL, pub) != 1 ||
        (EVP_PKEY_is_a(pub, "RSA") && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1)) {
        rc = qk_fail_ossl(QK_ERR_CRYPTO, "setting up signature verification");
        goto out;
    }
    if (EVP_DigestVerify(ctx, sig.data, sig.len, t->attrs_der, t->attrs_len) != 1) {
        rc = qk_fail_ossl(QK_ERR_VERIFY_FAILED,
                          "signature value does not verify under the signer certificate "
                          "(%s %s)",
                          EVP_PKEY_get0_type_name(pub), qk_hash_name(t->alg));
        goto out;
    }
    rc = QK_OK;
out:
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* The encapContentInfo: SPC indirect data for PE, bare id-data for detached CMS. */
static qk_err encap_content(const qk_tbs *t, PKCS7 **out)
{
    qk_err rc = QK_ERR_NOMEM;
    PKCS7 *c = NULL;

    *out = NULL;
    if ((c = PKCS7_new()) == NULL)
        goto out;
    if (t->format == QK_FORMAT_AUTHENTICODE_PE) {
        if ((c->type = OBJ_txt2obj(QK_OID_SPC_INDIRECT_DATA, 1)) == NULL)
            goto out;
        if ((rc = qk_asn1_type_seq(t->content, t->content_len, &c->d.other)) != QK_OK)
            goto out;
    } else {
        if (!PKCS7_set_type(c, NID_pkcs7_data))
            goto out;
        /* Detached: no eContent. */
        ASN1_OCTET_STRING_free(c->d.data);
        c->d.data = NULL;
    }
    *out = c;
    c = NULL;
    rc = QK_OK;
out:
    PKCS7_free(c);
    return rc;
}

/* 1 when the same certificate is already in the SignedData. */
static int has_cert(const STACK_OF(X509) *certs, const X509 *x)
{
    for (int i = 0; i < sk_X509_num(certs); i++)
        if (X509_cmp(sk_X509_value(certs, i), x) == 0)
            return 1;
    return 0;
}

/* A chain decoded once. With OpenSSL 3.0, decoding a certificate (its public
 * key goes through the provider decoders) costs about a tenth of an RSA-3072
 * signature, so a server signing many times with one chain keeps it decoded.
 * The X509 objects are only read after qk_chain_new (X509_check_issued and
 * X509_cmp fill their caches under OpenSSL's own lock), so one chain may be
 * used by many threads at once. */
struct qk_chain {
    X509 *certs[QK_MAX_CHAIN_LEN];
    size_t n;
};

static qk_err decode_chain(const qk_slice *chain, size_t nchain, X509 **certs)
{
    qk_err rc;
    if (chain == NULL || nchain == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "empty certificate chain");
    if (nchain > QK_MAX_CHAIN_LEN)
        return qk_fail(QK_ERR_TOO_LARGE, "certificate chain of %zu (limit %d)", nchain,
                       QK_MAX_CHAIN_LEN);
    for (size_t i = 0; i < nchain; i++) {
        char what[48];
        snprintf(what, sizeof(what), "certificate %zu of the chain", i);
        if ((rc = qk_x509_decode(chain[i], what, &certs[i])) != QK_OK)
            return rc;
    }
    return QK_OK;
}

qk_err qk_chain_new(const qk_slice *chain, size_t nchain, qk_chain **out)
{
    qk_err rc;
    qk_chain *c = NULL;

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    *out = NULL;
    qk_clear_detail();
    ERR_clear_error();
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return QK_ERR_NOMEM;
    if ((rc = decode_chain(chain, nchain, c->certs)) != QK_OK)
        goto out;
    c->n = nchain;
    if (X509_get0_pubkey(c->certs[0]) == NULL) {
        rc = qk_fail_ossl(QK_ERR_BAD_DER, "signer certificate public key");
        goto out;
    }
    /* Warm the caches the signing path reads (extensions, hashes). */
    for (size_t i = 0; i < c->n; i++)
        (void)X509_check_issued(c->certs[i], c->certs[i]);
    *out = c;
    c = NULL;
    rc = QK_OK;
out:
    qk_chain_free(c);
    return rc;
}

void qk_chain_free(qk_chain *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < QK_MAX_CHAIN_LEN; i++)
        X509_free(c->certs[i]);
    free(c);
}

static qk_err finish_certs(const qk_tbs *tbs, qk_slice signature, X509 *const *certs, size_t nchain,
                           qk_buf *out);

qk_err qk_tbs_finish(const qk_tbs *tbs, qk_slice signature, const qk_slice *chain, size_t nchain,
                     qk_buf *out)
{
    qk_err rc;
    X509 *certs[QK_MAX_CHAIN_LEN] = {NULL};

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    out->data = NULL;
    out->len = 0;
    qk_clear_detail();
    ERR_clear_error();
    if (tbs == NULL || chain == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "no signed attributes or no certificate chain");
    if ((rc = decode_chain(chain, nchain, certs)) == QK_OK)
        rc = finish_certs(tbs, signature, certs, nchain, out);
    for (size_t i = 0; i < QK_MAX_CHAIN_LEN; i++)
        X509_free(certs[i]);
    return rc;
}

qk_err qk_tbs_finish_chain(const qk_tbs *tbs, qk_slice signature, const qk_chain *chain,
                           qk_buf *out)
{
    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    out->data = NULL;
    out->len = 0;
    qk_clear_detail();
    ERR_clear_error();
    if (tbs == NULL || chain == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "no signed attributes or no certificate chain");
    return finish_certs(tbs, signature, chain->certs, chain->n, out);
}

/* Whether der is exactly one definite-length SEQUENCE. */
static int one_sequence(const uint8_t *der, size_t len)
{
    const unsigned char *q = der;
    long clen = 0;
    int tag = 0, cls = 0;
    int r = ASN1_get_object(&q, &clen, &tag, &cls, (long)len);
    return !(r & 0x80) && r == V_ASN1_CONSTRUCTED && tag == V_ASN1_SEQUENCE &&
           cls == V_ASN1_UNIVERSAL && clen >= 0 && (size_t)(q - der) + (size_t)clen == len;
}

/* The token from tbs->stamp for `signature`, as an unsigned attribute of si. */
static qk_err add_stamp(const qk_tbs *tbs, qk_slice signature, PKCS7_SIGNER_INFO *si)
{
    qk_buf token = {NULL, 0};
    qk_err rc = tbs->stamp(tbs->stamp_ctx, tbs->alg, signature, &token);
    if (rc != QK_OK) {
        if (qk_error_detail()[0] == '\0')
            (void)qk_fail(rc, "timestamp callback failed");
    } else if (token.data == NULL || token.len > QK_TSP_MAX_REPLY ||
               !one_sequence(token.data, token.len)) {
        rc = qk_fail(QK_ERR_BAD_DER, "the timestamp callback returned no DER SEQUENCE");
    } else {
        rc = qk_attr_add(&si->unauth_attr,
                         tbs->format == QK_FORMAT_AUTHENTICODE_PE ? QK_OID_SPC_RFC3161_TIMESTAMP
                                                                  : QK_OID_AA_TIMESTAMP_TOKEN,
                         V_ASN1_SEQUENCE, token.data, (int)token.len);
    }
    qk_buf_free(&token);
    return rc;
}

/* qk_tbs_finish on decoded certificates (only read, never changed). */
static qk_err finish_certs(const qk_tbs *tbs, qk_slice signature, X509 *const *certs, size_t nchain,
                           qk_buf *out)
{
    qk_err rc = QK_ERR_NOMEM;
    PKCS7 *p7 = NULL, *content = NULL;
    PKCS7_SIGNER_INFO *si = NULL;
    unsigned char *check = NULL;

    if (signature.data == NULL || signature.len == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "empty signature value");
    if (signature.len > QK_MAX_SIGNATURE_SIZE)
        return qk_fail(QK_ERR_TOO_LARGE, "signature value of %zu bytes (limit %d)", signature.len,
                       QK_MAX_SIGNATURE_SIZE);
    X509 *leaf = certs[0];
    EVP_PKEY *pub = X509_get0_pubkey(leaf);
    if (pub == NULL) {
        rc = qk_fail_ossl(QK_ERR_BAD_DER, "signer certificate public key");
        goto out;
    }
    if (!tbs->self_checked && (rc = check_signature(tbs, pub, signature)) != QK_OK)
        goto out;

    rc = QK_ERR_NOMEM;
    if ((p7 = PKCS7_new()) == NULL || !PKCS7_set_type(p7, NID_pkcs7_signed))
        goto out;
    if ((rc = encap_content(tbs, &content)) != QK_OK)
        goto out;
    rc = QK_ERR_NOMEM;
    if (!PKCS7_set_content(p7, content))
        goto out;
    content = NULL;

    if ((si = PKCS7_SIGNER_INFO_new()) == NULL || !ASN1_INTEGER_set(si->version, 1) ||
        !X509_NAME_set(&si->issuer_and_serial->issuer, X509_get_issuer_name(leaf)))
        goto out;
    ASN1_INTEGER_free(si->issuer_and_serial->serial);
    if ((si->issuer_and_serial->serial = ASN1_INTEGER_dup(X509_get0_serialNumber(leaf))) == NULL)
        goto out;
    if (!X509_ALGOR_set0(si->digest_alg, OBJ_nid2obj(qk_hash_nid(tbs->alg)), V_ASN1_NULL, NULL))
        goto out;
    if ((rc = sig_algor(pub, tbs->alg, si->digest_enc_alg)) != QK_OK)
        goto out;
    rc = QK_ERR_NOMEM;
    si->auth_attr =
        sk_X509_ATTRIBUTE_deep_copy(tbs->attrs, X509_ATTRIBUTE_dup, X509_ATTRIBUTE_free);
    if (si->auth_attr == NULL ||
        !ASN1_OCTET_STRING_set(si->enc_digest, signature.data, (int)signature.len))
        goto out;
    if (tbs->stamp != NULL && (rc = add_stamp(tbs, signature, si)) != QK_OK)
        goto out;
    rc = QK_ERR_NOMEM;
    /* PKCS7_add_signer also lists the digest algorithm (NULL parameters) in
     * digestAlgorithms; it owns si from here on. */
    if (!PKCS7_add_signer(p7, si))
        goto out;
    si = NULL;
    /* Self-signed roots are left out, as signtool does: a verifier must hold
     * them already, and some (sbverify) reject a chain that carries its own
     * untrusted root. */
    for (size_t i = 0; i < nchain; i++) {
        if (i > 0 && X509_check_issued(certs[i], certs[i]) == X509_V_OK)
            continue;
        if (!has_cert(p7->d.sign->cert, certs[i]) && !PKCS7_add_certificate(p7, certs[i]))
            goto out;
    }

    /* What goes under [0] must be the bytes that were signed. */
    PKCS7_SIGNER_INFO *added = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
    int n = ASN1_item_i2d((const ASN1_VALUE *)added->auth_attr, &check,
                          ASN1_ITEM_rptr(PKCS7_ATTR_SIGN));
    if (n < 0 || (size_t)n != tbs->attrs_len || memcmp(check, tbs->attrs_der, tbs->attrs_len)) {
        rc = qk_fail(QK_ERR_CRYPTO, "internal: signed attributes changed while assembling");
        goto out;
    }
    rc = qk_p7_encode(p7, out);
out:
    OPENSSL_free(check);
    PKCS7_SIGNER_INFO_free(si);
    PKCS7_free(content);
    PKCS7_free(p7);
    return rc;
}

/* tbs, sign, then `finish` with either DER slices or a decoded chain. */
static qk_err sign_with(const qk_sign_request *req, qk_sign_fn fn, void *ctx, const qk_slice *chain,
                        size_t nchain, const qk_chain *decoded, qk_buf *out);

qk_err qk_sign(const qk_sign_request *req, qk_sign_fn fn, void *ctx, const qk_slice *chain,
               size_t nchain, qk_buf *out)
{
    return sign_with(req, fn, ctx, chain, nchain, NULL, out);
}

qk_err qk_sign_chain(const qk_sign_request *req, qk_sign_fn fn, void *ctx, const qk_chain *chain,
                     qk_buf *out)
{
    if (chain == NULL) {
        if (out != NULL) {
            out->data = NULL;
            out->len = 0;
        }
        return qk_fail(QK_ERR_INVALID_ARG, "no certificate chain");
    }
    return sign_with(req, fn, ctx, NULL, 0, chain, out);
}

static qk_err sign_with(const qk_sign_request *req, qk_sign_fn fn, void *ctx, const qk_slice *chain,
                        size_t nchain, const qk_chain *decoded, qk_buf *out)
{
    qk_err rc;
    qk_tbs *tbs = NULL;
    qk_buf sig = {NULL, 0};
    uint8_t dg[QK_HASH_MAX_SIZE];
    size_t dglen = 0;

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    out->data = NULL;
    out->len = 0;
    if (fn == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "no signer");
    if ((rc = qk_tbs_new(req, &tbs)) != QK_OK || (rc = qk_tbs_digest(tbs, dg, &dglen)) != QK_OK)
        goto out;
    if ((rc = fn(ctx, tbs->alg, dg, dglen, &sig)) != QK_OK) {
        if (qk_error_detail()[0] == '\0')
            (void)qk_fail(rc, "signer callback failed");
        goto out;
    }
    if (sig.data == NULL || sig.len == 0) {
        rc = qk_fail(QK_ERR_SIGNER, "signer returned an empty signature");
        goto out;
    }
    if (decoded != NULL)
        rc = qk_tbs_finish_chain(tbs, (qk_slice){sig.data, sig.len}, decoded, out);
    else
        rc = qk_tbs_finish(tbs, (qk_slice){sig.data, sig.len}, chain, nchain, out);
out:
    qk_buf_free(&sig);
    qk_tbs_free(tbs);
    return rc;
}
