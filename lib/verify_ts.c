/* Timestamps of signatures: RFC 3161 tokens (Authenticode's unsigned attribute
 * 1.3.6.1.4.1.311.3.3.1, or in plain CMS RFC 3161 Appendix A's
 * id-aa-timeStampToken 1.2.840.113549.1.9.16.2.14) and legacy countersignatures
 * (PKCS#9 countersignature 1.2.840.113549.1.9.6). All bind a time to the outer
 * SignerInfo's signature value, and all must chain to the TSA roots with the
 * timeStamping EKU. The TSA chain is evaluated at the time the timestamp
 * asserts: a TSA certificate that expired since still vouches for the times it
 * issued while valid, which is what timestamps are for. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ess.h>
#include <openssl/evp.h>
#include <openssl/ts.h>

#include "spc.h"
#include "verify_internal.h"

void qk_ts_result_free(qk_ts_result *ts)
{
    if (ts == NULL)
        return;
    free(ts->error);
    free(ts);
}

/* The DER of an attribute's single SEQUENCE value (a ContentInfo or SignerInfo). */
static int attr_der(const X509_ATTRIBUTE *a, const uint8_t **der, size_t *len)
{
    if (X509_ATTRIBUTE_count(a) != 1)
        return 0;
    ASN1_TYPE *t = X509_ATTRIBUTE_get0_type((X509_ATTRIBUTE *)a, 0);
    if (t == NULL || t->type != V_ASN1_SEQUENCE || t->value.sequence == NULL ||
        t->value.sequence->length <= 0)
        return 0;
    *der = t->value.sequence->data;
    *len = (size_t)t->value.sequence->length;
    return 1;
}

/* The imprint must be the hash of the outer signature value, with the
 * algorithm the token names. */
static int imprint_check(qk_vctx *v, TS_TST_INFO *tst, const ASN1_OCTET_STRING *sigval, char **err)
{
    TS_MSG_IMPRINT *mi = TS_TST_INFO_get_msg_imprint(tst);
    X509_ALGOR *alg = mi ? TS_MSG_IMPRINT_get_algo(mi) : NULL;
    ASN1_OCTET_STRING *msg = mi ? TS_MSG_IMPRINT_get_msg(mi) : NULL;
    uint8_t h[EVP_MAX_MD_SIZE];
    unsigned int hlen = 0;
    const EVP_MD *md;

    qk_hash_alg a = alg ? qk_hash_from_nid(OBJ_obj2nid(alg->algorithm)) : QK_HASH_NONE;
    if (a == QK_HASH_NONE || (md = EVP_get_digestbynid(qk_hash_nid(a))) == NULL) {
        qk_vnote(v, err, "timestamp imprint uses an unsupported digest algorithm");
        return 0;
    }
    if (msg == NULL || sigval == NULL ||
        EVP_Digest(sigval->data, (size_t)sigval->length, h, &hlen, md, NULL) != 1) {
        qk_vnote(v, err, "cannot compute the timestamp imprint");
        return 0;
    }
    if ((unsigned int)msg->length != hlen || CRYPTO_memcmp(msg->data, h, hlen) != 0) {
        qk_vnote(v, err, "timestamp imprint does not match the signature");
        return 0;
    }
    return 1;
}

/* Candidate intermediates for the TSA chain: the token's certificates, then
 * the outer signature's (some signers put the TSA chain there). */
/* One ESS attribute (signingCertificate or signingCertificateV2) of the
 * token's signer, decoded with `d2i`; *out stays NULL when it is absent.
 * Returns 0 when it is there more than once or does not decode exactly. */
static int ess_attr(CMS_SignerInfo *si, int nid, void *(*d2i)(const unsigned char **, long),
                    void **out)
{
    const uint8_t *der;
    size_t len;
    *out = NULL;
    int i = CMS_signed_get_attr_by_NID(si, nid, -1);
    if (i < 0)
        return 1;
    if (CMS_signed_get_attr_by_NID(si, nid, i) >= 0 ||
        !attr_der(CMS_signed_get_attr(si, i), &der, &len) || len > LONG_MAX)
        return 0;
    const unsigned char *p = der;
    *out = d2i(&p, (long)len);
    return *out != NULL && p == der + len;
}

static void *d2i_ess_v1(const unsigned char **p, long len)
{
    return d2i_ESS_SIGNING_CERT(NULL, p, len);
}

static void *d2i_ess_v2(const unsigned char **p, long len)
{
    return d2i_ESS_SIGNING_CERT_V2(NULL, p, len);
}

/* RFC 3161 2.4.1 (and RFC 5816 for V2): the token's signed attributes name
 * the TSA certificate in an ESS signingCertificate(V2), so the certificate
 * that signed cannot be swapped for another one holding the same key. A
 * token without one, or naming another certificate, is rejected (as
 * `openssl ts -verify` does). */
static int ess_check(qk_vctx *v, CMS_SignerInfo *si, X509 *tsa, char **err)
{
    void *ss = NULL, *ss2 = NULL;
    STACK_OF(X509) *signer = NULL;
    int ok = 0;

    if (!ess_attr(si, NID_id_smime_aa_signingCertificate, d2i_ess_v1, &ss) ||
        !ess_attr(si, NID_id_smime_aa_signingCertificateV2, d2i_ess_v2, &ss2)) {
        qk_vnote(v, err, "timestamp token has a malformed or repeated ESS signingCertificate");
        goto out;
    }
    if (ss == NULL && ss2 == NULL) {
        qk_vnote(v, err, "timestamp token has no ESS signingCertificate attribute");
        goto out;
    }
    if ((signer = sk_X509_new_null()) == NULL || !sk_X509_push(signer, tsa)) {
        v->nomem = 1;
        goto out;
    }
    if (OSSL_ESS_check_signing_certs(ss, ss2, signer, 1) <= 0) {
        qk_vnote(v, err,
                 "timestamp token's ESS signingCertificate does not name its signer certificate");
        goto out;
    }
    ok = 1;
out:
    sk_X509_free(signer); /* the certificate itself is the token's */
    ESS_SIGNING_CERT_free(ss);
    ESS_SIGNING_CERT_V2_free(ss2);
    return ok;
}

static STACK_OF(X509) * ts_untrusted(qk_vctx *v, CMS_ContentInfo *cms, STACK_OF(X509) * outer)
{
    STACK_OF(X509) *s = CMS_get1_certs(cms);
    if (s == NULL && (s = sk_X509_new_null()) == NULL) {
        v->nomem = 1;
        return NULL;
    }
    for (int i = 0; i < sk_X509_num(outer); i++) {
        X509 *x = sk_X509_value(outer, i);
        if (X509_up_ref(x) != 1)
            continue;
        if (sk_X509_push(s, x) <= 0) {
            X509_free(x);
            v->nomem = 1;
            break;
        }
    }
    return s;
}

static void check_rfc3161(qk_vctx *v, const ASN1_OCTET_STRING *sigval, STACK_OF(X509) * outer,
                          const uint8_t *der, size_t len, qk_ts_result *ts)
{
    CMS_ContentInfo *cms = NULL;
    TS_TST_INFO *tst = NULL;
    STACK_OF(X509) *untrusted = NULL;
    const unsigned char *p = der, *q;
    ASN1_OCTET_STRING **content;
    X509 *tsa = NULL;
    int64_t t = 0;
    int time_ok = 0, sig_ok = 0, imprint_ok = 0, chain_ok = 0;

    if (len > LONG_MAX || (cms = d2i_CMS_ContentInfo(NULL, &p, (long)len)) == NULL ||
        p != der + len) {
        qk_vnote(v, &ts->error, "malformed timestamp token");
        goto out;
    }
    if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed ||
        OBJ_obj2nid(CMS_get0_eContentType(cms)) != NID_id_smime_ct_TSTInfo) {
        qk_vnote(v, &ts->error, "timestamp token is not a SignedData over TSTInfo");
        goto out;
    }
    content = CMS_get0_content(cms);
    if (content == NULL || *content == NULL || (*content)->length <= 0) {
        qk_vnote(v, &ts->error, "timestamp token has no TSTInfo");
        goto out;
    }
    q = (*content)->data;
    tst = d2i_TS_TST_INFO(NULL, &q, (*content)->length);
    if (tst == NULL || q != (*content)->data + (*content)->length) {
        qk_vnote(v, &ts->error, "malformed TSTInfo");
        goto out;
    }
    if (!qk_asn1_time_to_epoch(TS_TST_INFO_get_time(tst), &t)) {
        qk_vnote(v, &ts->error, "timestamp has an invalid genTime");
        goto out;
    }
    qk_ts_set_time(ts, t);
    time_ok = 1;

    if (sk_CMS_SignerInfo_num(CMS_get0_SignerInfos(cms)) != 1) {
        qk_vnote(v, &ts->error, "timestamp token must have exactly one signer");
        goto out;
    }
    /* Signature and messageDigest of the token; trust is checked below with
     * our own policy, so OpenSSL's signer-certificate verification is off. */
    if (CMS_verify(cms, outer, NULL, NULL, NULL, CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY) != 1)
        qk_vnote(v, &ts->error, "timestamp token signature verification failed");
    else
        sig_ok = 1;
    imprint_ok = imprint_check(v, tst, sigval, &ts->error);

    CMS_SignerInfo *tsi = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
    CMS_SignerInfo_get0_algs(tsi, NULL, &tsa, NULL, NULL);
    if (tsa == NULL) {
        qk_vnote(v, &ts->error, "timestamp signer certificate not found");
        goto out;
    }
    if (!ess_check(v, tsi, tsa, &ts->error))
        sig_ok = 0;
    if (v->ts_store == NULL) {
        chain_ok = 1; /* integrity only: not evaluated */
        goto out;
    }
    if ((untrusted = ts_untrusted(v, cms, outer)) == NULL)
        goto out;
    ts->chain_checked = 1;
    chain_ok = qk_vchain(v, v->ts_store, tsa, untrusted, QK_EKU_TIMESTAMPING, t,
                         "timestamp certificate chain", &ts->error);
out:
    ts->ok = time_ok && sig_ok && imprint_ok && chain_ok;
    sk_X509_pop_free(untrusted, X509_free);
    TS_TST_INFO_free(tst);
    CMS_ContentInfo_free(cms);
    ERR_clear_error();
}

static void check_countersig(qk_vctx *v, const ASN1_OCTET_STRING *sigval,
                             STACK_OF(X509) * outer, const uint8_t *der, size_t len,
                             qk_ts_result *ts)
{
    PKCS7_SIGNER_INFO *cs = NULL;
    const unsigned char *p = der;
    const ASN1_TYPE *st;
    const char *why = NULL;
    X509 *signer = NULL;
    int64_t t = 0;
    int md_ok = 0, sig_ok = 0, chain_ok = 0;

    if (len > LONG_MAX || (cs = d2i_PKCS7_SIGNER_INFO(NULL, &p, (long)len)) == NULL ||
        p != der + len) {
        qk_vnote(v, &ts->error, "malformed countersignature");
        goto out;
    }
    st = qk_attr_one(cs->auth_attr, NID_pkcs9_signingTime, -1, &why);
    if (st == NULL) {
        qk_vnote(v, &ts->error, "countersignature signingTime attribute %s", why);
        goto out;
    }
    if ((st->type != V_ASN1_UTCTIME && st->type != V_ASN1_GENERALIZEDTIME) ||
        !qk_asn1_time_to_epoch(st->value.asn1_string, &t)) {
        qk_vnote(v, &ts->error, "countersignature has an invalid signingTime");
        goto out;
    }
    qk_ts_set_time(ts, t);
    if (sigval == NULL) {
        qk_vnote(v, &ts->error, "outer signature has no signature value");
        goto out;
    }
    /* The countersigned "content" is the outer signature value. */
    qk_vsigner_check(v, cs, outer, sigval->data, (size_t)sigval->length, NULL,
                     "countersignature: ", &md_ok, &sig_ok, &signer, &ts->error);
    if (signer == NULL)
        goto out;
    if (v->ts_store == NULL) {
        chain_ok = 1; /* integrity only: not evaluated */
        goto out;
    }
    ts->chain_checked = 1;
    chain_ok = qk_vchain(v, v->ts_store, signer, outer, QK_EKU_TIMESTAMPING, t,
                         "countersignature certificate chain", &ts->error);
out:
    ts->ok = md_ok && sig_ok && chain_ok;
    PKCS7_SIGNER_INFO_free(cs);
    ERR_clear_error();
}

/* The timestamp attributes a SignerInfo may carry, in order of precedence:
 * the RFC 3161 token the format defines first, then the other token
 * attribute, then a legacy countersignature. */
enum { TS_PRIMARY, TS_SECONDARY, TS_LEGACY, TS_KINDS };

static void ts_classify(X509_ATTRIBUTE *a, const char *primary, const char *secondary,
                        X509_ATTRIBUTE *found[TS_KINDS])
{
    ASN1_OBJECT *o = X509_ATTRIBUTE_get0_object(a);
    if (found[TS_PRIMARY] == NULL && qk_obj_is(o, primary))
        found[TS_PRIMARY] = a;
    else if (secondary != NULL && found[TS_SECONDARY] == NULL && qk_obj_is(o, secondary))
        found[TS_SECONDARY] = a;
    else if (found[TS_LEGACY] == NULL && OBJ_obj2nid(o) == NID_pkcs9_countersignature)
        found[TS_LEGACY] = a;
}

static void ts_check(qk_vctx *v, X509_ATTRIBUTE *const found[TS_KINDS],
                     const ASN1_OCTET_STRING *sigval, STACK_OF(X509) * certs, qk_ts_result **out)
{
    const uint8_t *der = NULL;
    size_t len = 0;
    qk_ts_result *ts = NULL;
    X509_ATTRIBUTE *a = found[TS_PRIMARY] ? found[TS_PRIMARY] : found[TS_SECONDARY];
    int token = a != NULL;

    *out = NULL;
    if (a == NULL && (a = found[TS_LEGACY]) == NULL)
        return;
    if ((ts = calloc(1, sizeof(*ts))) == NULL) {
        v->nomem = 1;
        return;
    }
    if (!attr_der(a, &der, &len))
        qk_vnote(v, &ts->error, "timestamp attribute must hold exactly one SEQUENCE");
    else if (token)
        check_rfc3161(v, sigval, certs, der, len, ts);
    else
        check_countersig(v, sigval, certs, der, len, ts);
    if (!ts->ok)
        qk_vnote(v, &ts->error, "timestamp verification failed");
    *out = ts;
}

void qk_vts_check(qk_vctx *v, PKCS7_SIGNER_INFO *si, STACK_OF(X509) * certs, qk_ts_result **out)
{
    X509_ATTRIBUTE *found[TS_KINDS] = {NULL};

    /* Windows reads only Microsoft's attribute in Authenticode. */
    for (int i = 0; i < sk_X509_ATTRIBUTE_num(si->unauth_attr); i++)
        ts_classify(sk_X509_ATTRIBUTE_value(si->unauth_attr, i), QK_OID_SPC_RFC3161_TIMESTAMP,
                    NULL, found);
    ts_check(v, found, si->enc_digest, certs, out);
}

void qk_vts_check_cms(qk_vctx *v, CMS_SignerInfo *si, STACK_OF(X509) * certs, qk_ts_result **out)
{
    X509_ATTRIBUTE *found[TS_KINDS] = {NULL};

    /* Microsoft's attribute is accepted second: detached signatures written
     * by qwick before it used the standard one carry it. */
    for (int i = 0; i < CMS_unsigned_get_attr_count(si); i++)
        ts_classify(CMS_unsigned_get_attr(si, i), QK_OID_AA_TIMESTAMP_TOKEN,
                    QK_OID_SPC_RFC3161_TIMESTAMP, found);
    ts_check(v, found, CMS_SignerInfo_get0_signature(si), certs, out);
}
