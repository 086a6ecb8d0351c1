/* Reading and editing existing ContentInfo(SignedData) blobs: the signature
 * value a timestamp covers, adding a timestamp token (under the attribute the
 * content type calls for), nesting a signature.
 *
 * Edits go through OpenSSL's PKCS7 objects and a re-encode. That is only safe
 * because qk_p7_decode_signed() insists the input is DER to begin with (the
 * re-encode of the untouched structure reproduces it exactly): the signed
 * attributes and the content then come out byte for byte as they went in, and
 * only the unsigned attributes change. Values we add (tokens, nested
 * signatures) are carried as raw DER and never re-encoded. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>

#include "internal.h"
#include "qwick/authenticode.h"
#include "qwick/tsp.h"
#include "sig_internal.h"
#include "spc.h"

qk_err qk_p7_decode_signed(qk_slice der, size_t max, const char *what, PKCS7 **out)
{
    qk_err rc = QK_ERR_BAD_DER;
    PKCS7 *p7 = NULL;
    unsigned char *re = NULL;
    int relen = 0;

    *out = NULL;
    if (der.data == NULL || der.len == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "%s is empty", what);
    if (der.len > max || der.len > LONG_MAX)
        return qk_fail(QK_ERR_TOO_LARGE, "%s of %zu bytes (limit %zu)", what, der.len, max);
    const unsigned char *p = der.data;
    if ((p7 = d2i_PKCS7(NULL, &p, (long)der.len)) == NULL) {
        rc = qk_fail_ossl(QK_ERR_BAD_DER, "%s is not a DER ContentInfo", what);
        goto out;
    }
    if (p != der.data + der.len) {
        rc = qk_fail(QK_ERR_TRAILING_DATA, "%zu bytes after the %s",
                     der.len - (size_t)(p - der.data), what);
        goto out;
    }
    if (!PKCS7_type_is_signed(p7) || p7->d.sign == NULL || p7->d.sign->contents == NULL) {
        rc = qk_fail(QK_ERR_BAD_SIGNATURE, "%s is not a ContentInfo(SignedData)", what);
        goto out;
    }
    if (sk_PKCS7_SIGNER_INFO_num(p7->d.sign->signer_info) < 1) {
        rc = qk_fail(QK_ERR_BAD_SIGNATURE, "%s has no SignerInfo", what);
        goto out;
    }
    if ((relen = i2d_PKCS7(p7, &re)) < 0) {
        rc = qk_fail_ossl(QK_ERR_BAD_DER, "%s cannot be re-encoded", what);
        goto out;
    }
    if ((size_t)relen != der.len || memcmp(re, der.data, der.len) != 0) {
        rc = qk_fail(QK_ERR_BAD_DER, "%s is BER, not DER (re-encoding changes it)", what);
        goto out;
    }
    *out = p7;
    p7 = NULL;
    rc = QK_OK;
out:
    OPENSSL_free(re);
    PKCS7_free(p7);
    return rc;
}

qk_err qk_p7_encode(PKCS7 *p7, qk_buf *out)
{
    unsigned char *der = NULL;
    int len = i2d_PKCS7(p7, &der);
    if (len <= 0)
        return qk_fail_ossl(QK_ERR_CRYPTO, "encoding the ContentInfo");
    /* Hand out malloc memory: qk_buf_free() uses free(), not OPENSSL_free(). */
    out->data = malloc((size_t)len);
    if (out->data == NULL) {
        OPENSSL_free(der);
        return QK_ERR_NOMEM;
    }
    memcpy(out->data, der, (size_t)len);
    out->len = (size_t)len;
    OPENSSL_free(der);
    return QK_OK;
}

qk_err qk_x509_decode(qk_slice der, const char *what, X509 **out)
{
    *out = NULL;
    if (der.data == NULL || der.len == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "%s is empty", what);
    if (der.len > QK_MAX_CERT_SIZE)
        return qk_fail(QK_ERR_TOO_LARGE, "%s of %zu bytes (limit %u)", what, der.len,
                       QK_MAX_CERT_SIZE);
    const unsigned char *p = der.data;
    X509 *x = d2i_X509(NULL, &p, (long)der.len);
    if (x == NULL)
        return qk_fail_ossl(QK_ERR_BAD_DER, "%s is not a DER certificate", what);
    if (p != der.data + der.len) {
        X509_free(x);
        return qk_fail(QK_ERR_TRAILING_DATA, "%zu bytes after %s", der.len - (size_t)(p - der.data),
                       what);
    }
    *out = x;
    return QK_OK;
}

qk_err qk_asn1_type_seq(const uint8_t *der, size_t len, ASN1_TYPE **out)
{
    ASN1_TYPE *t = NULL;
    ASN1_STRING *s = NULL;

    *out = NULL;
    if (len > INT_MAX)
        return qk_fail(QK_ERR_TOO_LARGE, "DER value of %zu bytes", len);
    if ((t = ASN1_TYPE_new()) == NULL || (s = ASN1_STRING_type_new(V_ASN1_SEQUENCE)) == NULL ||
        !ASN1_STRING_set(s, der, (int)len)) {
        ASN1_TYPE_free(t);
        ASN1_STRING_free(s);
        return QK_ERR_NOMEM;
    }
    ASN1_TYPE_set(t, V_ASN1_SEQUENCE, s);
    *out = t;
    return QK_OK;
}

qk_err qk_attr_add(STACK_OF(X509_ATTRIBUTE) **sk, const char *oid, int type, const void *data,
                   int len)
{
    qk_err rc = QK_ERR_NOMEM;
    ASN1_OBJECT *obj = OBJ_txt2obj(oid, 1);
    X509_ATTRIBUTE *attr = NULL;

    if (obj == NULL)
        goto out;
    if ((attr = X509_ATTRIBUTE_create_by_OBJ(NULL, obj, type, data, len)) == NULL) {
        rc = qk_fail_ossl(QK_ERR_NOMEM, "building attribute %s", oid);
        goto out;
    }
    /* X509at_add1_attr copies; the local one is freed below. */
    if (X509at_add1_attr(sk, attr) == NULL) {
        rc = qk_fail_ossl(QK_ERR_NOMEM, "adding attribute %s", oid);
        goto out;
    }
    rc = QK_OK;
out:
    X509_ATTRIBUTE_free(attr);
    ASN1_OBJECT_free(obj);
    return rc;
}

qk_err qk_md(qk_hash_alg alg, const uint8_t *p, size_t len, uint8_t *out)
{
    const EVP_MD *md = EVP_get_digestbynid(qk_hash_nid(alg));
    unsigned int n = 0;
    if (md == NULL)
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "digest %s", qk_hash_name(alg));
    if (EVP_Digest(p, len, out, &n, md, NULL) != 1)
        return qk_fail_ossl(QK_ERR_CRYPTO, "%s digest", qk_hash_name(alg));
    return QK_OK;
}

/* --- public ------------------------------------------------------------- */

qk_err qk_sig_value(qk_slice contentinfo, qk_buf *out)
{
    qk_err rc;
    PKCS7 *p7 = NULL;

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    out->data = NULL;
    out->len = 0;
    qk_clear_detail();
    ERR_clear_error(); /* stale queue entries would pollute our details */
    if ((rc = qk_p7_decode_signed(contentinfo, QK_MAX_CONTENTINFO_SIZE, "signature", &p7)) != QK_OK)
        goto out;
    PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
    const ASN1_OCTET_STRING *sig = si->enc_digest;
    if (sig == NULL || ASN1_STRING_length(sig) <= 0) {
        rc = qk_fail(QK_ERR_BAD_SIGNATURE, "SignerInfo has an empty signature value");
        goto out;
    }
    if ((size_t)ASN1_STRING_length(sig) > QK_MAX_SIGNATURE_SIZE) {
        rc = qk_fail(QK_ERR_TOO_LARGE, "signature value of %d bytes (limit %d)",
                     ASN1_STRING_length(sig), QK_MAX_SIGNATURE_SIZE);
        goto out;
    }
    size_t n = (size_t)ASN1_STRING_length(sig);
    if ((out->data = malloc(n)) == NULL) {
        rc = QK_ERR_NOMEM;
        goto out;
    }
    memcpy(out->data, ASN1_STRING_get0_data(sig), n);
    out->len = n;
    rc = QK_OK;
out:
    PKCS7_free(p7);
    return rc;
}

/* Removes every attribute of type `oid` from *sk. */
static qk_err attr_delete_all(STACK_OF(X509_ATTRIBUTE) *sk, const char *oid)
{
    ASN1_OBJECT *obj = OBJ_txt2obj(oid, 1);
    if (obj == NULL)
        return QK_ERR_NOMEM;
    int i;
    while ((i = X509at_get_attr_by_OBJ(sk, obj, -1)) >= 0)
        X509_ATTRIBUTE_free(X509at_delete_attr(sk, i));
    ASN1_OBJECT_free(obj);
    return QK_OK;
}

/* Where a SignedData carries its RFC 3161 token, by its content type:
 * Authenticode content (SpcIndirectDataContent, and any other type under
 * Microsoft's arc 1.3.6.1.4.1.311) in Microsoft's attribute, which is what
 * Windows reads; anything else (id-data, detached CMS) in RFC 3161 Appendix A's
 * id-aa-timeStampToken, which is what CMS tools read. */
static const char *timestamp_attr_oid(const PKCS7 *p7)
{
    static const char ms_arc[] = "1.3.6.1.4.1.311.";
    char buf[128];
    int n = OBJ_obj2txt(buf, sizeof(buf), p7->d.sign->contents->type, 1);
    if (n > 0 && (size_t)n < sizeof(buf) && strncmp(buf, ms_arc, sizeof(ms_arc) - 1) == 0)
        return QK_OID_SPC_RFC3161_TIMESTAMP;
    return QK_OID_AA_TIMESTAMP_TOKEN;
}

qk_err qk_sig_add_timestamp(qk_slice contentinfo, qk_slice token, qk_buf *out)
{
    qk_err rc;
    PKCS7 *p7 = NULL, *tok = NULL;

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    out->data = NULL;
    out->len = 0;
    qk_clear_detail();
    ERR_clear_error();
    if ((rc = qk_p7_decode_signed(contentinfo, QK_MAX_CONTENTINFO_SIZE, "signature", &p7)) !=
            QK_OK ||
        (rc = qk_p7_decode_signed(token, QK_TSP_MAX_REPLY, "timestamp token", &tok)) != QK_OK)
        goto out;
    if (OBJ_obj2nid(tok->d.sign->contents->type) != NID_id_smime_ct_TSTInfo) {
        rc = qk_fail(QK_ERR_BAD_SIGNATURE, "timestamp token does not hold a TSTInfo");
        goto out;
    }
    PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
    /* Re-timestamping replaces the old token, under either attribute: a
     * SignerInfo carries one. */
    if (si->unauth_attr != NULL &&
        ((rc = attr_delete_all(si->unauth_attr, QK_OID_SPC_RFC3161_TIMESTAMP)) != QK_OK ||
         (rc = attr_delete_all(si->unauth_attr, QK_OID_AA_TIMESTAMP_TOKEN)) != QK_OK))
        goto out;
    if ((rc = qk_attr_add(&si->unauth_attr, timestamp_attr_oid(p7), V_ASN1_SEQUENCE, token.data,
                          (int)token.len)) != QK_OK)
        goto out;
    rc = qk_p7_encode(p7, out);
out:
    PKCS7_free(p7);
    PKCS7_free(tok);
    return rc;
}

qk_err qk_sig_nest(qk_slice outer, qk_slice inner, qk_buf *out)
{
    qk_err rc;
    PKCS7 *p7 = NULL, *in = NULL;
    ASN1_OBJECT *obj = NULL;

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    out->data = NULL;
    out->len = 0;
    qk_clear_detail();
    ERR_clear_error();
    if ((rc = qk_p7_decode_signed(outer, QK_MAX_CONTENTINFO_SIZE, "outer signature", &p7)) !=
            QK_OK ||
        (rc = qk_p7_decode_signed(inner, QK_MAX_CONTENTINFO_SIZE, "nested signature", &in)) !=
            QK_OK)
        goto out;
    PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
    if ((obj = OBJ_txt2obj(QK_OID_SPC_NESTED_SIGNATURE, 1)) == NULL) {
        rc = QK_ERR_NOMEM;
        goto out;
    }
    int idx = X509at_get_attr_by_OBJ(si->unauth_attr, obj, -1);
    if (idx >= 0) {
        /* One attribute, one value per nested signature (as Windows does). */
        X509_ATTRIBUTE *attr = X509at_get_attr(si->unauth_attr, idx);
        if (!X509_ATTRIBUTE_set1_data(attr, V_ASN1_SEQUENCE, inner.data, (int)inner.len)) {
            rc = qk_fail_ossl(QK_ERR_NOMEM, "adding a nested signature");
            goto out;
        }
    } else if ((rc = qk_attr_add(&si->unauth_attr, QK_OID_SPC_NESTED_SIGNATURE, V_ASN1_SEQUENCE,
                                 inner.data, (int)inner.len)) != QK_OK) {
        goto out;
    }
    rc = qk_p7_encode(p7, out);
out:
    ASN1_OBJECT_free(obj);
    PKCS7_free(p7);
    PKCS7_free(in);
    return rc;
}
