/* Verification of the Authenticode signatures of a PE image: every
 * WIN_CERTIFICATE entry and, recursively, the nested signatures each carries
 * under 1.3.6.1.4.1.311.2.4.1. Each signature gets its own result; a broken
 * one is reported, never fatal to the others. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pkcs7.h>

#include "internal.h"
#include "reader.h"
#include "spc.h"
#include "verify_internal.h"

typedef struct vstate {
    qk_vctx v;
    const qk_pe *pe;
    qk_sig_result *sigs;
    size_t n, cap;
    int overflow; /* more than QK_VERIFY_MAX_SIGS signatures */
} vstate;

/* Appends a zeroed result, or returns NULL (cap reached or out of memory).
 * The array moves when it grows: callers hold the pointer only until the
 * next sig_add. */
static qk_sig_result *sig_add(vstate *st, int nested)
{
    if (st->n == QK_VERIFY_MAX_SIGS) {
        st->overflow = 1;
        return NULL;
    }
    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 4;
        if (cap > QK_VERIFY_MAX_SIGS)
            cap = QK_VERIFY_MAX_SIGS;
        qk_sig_result *p = realloc(st->sigs, cap * sizeof(*p));
        if (p == NULL) {
            st->v.nomem = 1;
            return NULL;
        }
        st->sigs = p;
        st->cap = cap;
    }
    qk_sig_result *s = &st->sigs[st->n];
    memset(s, 0, sizeof(*s));
    s->index = (int)st->n;
    s->nested = nested;
    st->n++;
    return s;
}

/* The contents octets of the DER SEQUENCE at [p, p+len): what the
 * messageDigest attribute of an Authenticode signature covers. */
static int der_contents(const uint8_t *p, size_t len, const uint8_t **content, size_t *clen)
{
    qk_reader r;
    uint8_t tag, l0, b;
    size_t n = 0;

    qk_rd_init(&r, p, len);
    if (qk_rd_u8(&r, &tag) != QK_OK || tag != 0x30 || qk_rd_u8(&r, &l0) != QK_OK)
        return 0;
    if (l0 < 0x80) {
        n = l0;
    } else {
        size_t k = l0 & 0x7f;
        /* No indefinite length (BER) and no lengths beyond 4 GiB. */
        if (k == 0 || k > 4)
            return 0;
        for (size_t i = 0; i < k; i++) {
            if (qk_rd_u8(&r, &b) != QK_OK)
                return 0;
            n = (n << 8) | b;
        }
    }
    if (n != r.avail)
        return 0;
    *content = r.p;
    *clen = n;
    return 1;
}

static void check_image_digest(vstate *st, qk_sig_result *s, const QK_SPC_INDIRECT_DATA *idc)
{
    qk_vctx *v = &st->v;
    uint8_t md[QK_HASH_MAX_SIZE];
    const ASN1_OCTET_STRING *want = idc->messageDigest->digest;

    s->digest_alg = qk_hash_from_nid(OBJ_obj2nid(idc->messageDigest->digestAlgorithm->algorithm));
    if (!qk_obj_is(idc->data->type, QK_OID_SPC_PE_IMAGE_DATA)) {
        qk_vnote(v, &s->error, "signed content is not a PE image (SpcPeImageData)");
        return;
    }
    if (s->digest_alg == QK_HASH_NONE) {
        qk_vnote(v, &s->error, "unsupported image digest algorithm");
        return;
    }
    qk_err rc = qk_pe_digest(st->pe, s->digest_alg, md);
    if (rc == QK_ERR_NOMEM)
        v->nomem = 1;
    if (rc != QK_OK) {
        qk_vnote(v, &s->error, "cannot compute the image digest: %s", qk_strerror(rc));
        return;
    }
    size_t n = qk_hash_size(s->digest_alg);
    if (want == NULL || (size_t)want->length != n || CRYPTO_memcmp(want->data, md, n) != 0) {
        qk_vnote(v, &s->error, "image digest mismatch");
        return;
    }
    s->digest_ok = 1;
}

/* Every check of one Authenticode SignedData. Returns its SignerInfo (owned
 * by p7) so the caller can look for nested signatures, or NULL when the
 * structure is too broken to have one. */
static PKCS7_SIGNER_INFO *check_signed_data(vstate *st, qk_sig_result *s, PKCS7 *p7)
{
    qk_vctx *v = &st->v;
    QK_SPC_INDIRECT_DATA *idc = NULL;
    PKCS7_SIGNER_INFO *si = NULL, *ret = NULL;
    PKCS7_SIGNED *sd;
    ASN1_STRING *seq = NULL;
    const uint8_t *content = NULL;
    size_t clen = 0;
    X509 *signer = NULL;
    int n;

    if (!PKCS7_type_is_signed(p7) || (sd = p7->d.sign) == NULL) {
        qk_vnote(v, &s->error, "malformed signature: not a SignedData");
        goto out;
    }
    /* OpenSSL keeps content of a type it does not know as an ASN1_TYPE; for a
     * SEQUENCE its value is the complete DER, header included. */
    if (sd->contents == NULL || !qk_obj_is(sd->contents->type, QK_OID_SPC_INDIRECT_DATA) ||
        sd->contents->d.other == NULL || sd->contents->d.other->type != V_ASN1_SEQUENCE ||
        (seq = sd->contents->d.other->value.sequence) == NULL) {
        qk_vnote(v, &s->error, "malformed signature: content is not SpcIndirectDataContent");
        goto out;
    }
    if (seq->length <= 0 || (idc = qk_spc_indirect_data_decode(seq->data, seq->length)) == NULL ||
        !der_contents(seq->data, (size_t)seq->length, &content, &clen)) {
        qk_vnote(v, &s->error, "malformed signature: invalid SpcIndirectDataContent");
        goto out;
    }
    if ((n = sk_PKCS7_SIGNER_INFO_num(sd->signer_info)) != 1) {
        qk_vnote(v, &s->error, "malformed signature: %d signers, expected exactly one",
                 n < 0 ? 0 : n);
        goto out;
    }
    si = sk_PKCS7_SIGNER_INFO_value(sd->signer_info, 0);
    if (si == NULL || si->issuer_and_serial == NULL) {
        qk_vnote(v, &s->error, "malformed signature: no signer identifier");
        goto out;
    }

    /* Identity first, so even a failing signature says whose it claims to be. */
    signer = X509_find_by_issuer_and_serial(sd->cert, si->issuer_and_serial->issuer,
                                            si->issuer_and_serial->serial);
    if (signer != NULL)
        s->signer = qk_vname(v, X509_get_subject_name(signer));
    s->issuer = qk_vname(v, signer ? X509_get_issuer_name(signer) : si->issuer_and_serial->issuer);

    check_image_digest(st, s, idc);
    qk_vsigner_check(v, si, sd->cert, content, clen, QK_OID_SPC_INDIRECT_DATA, "",
                     &s->message_digest_ok, &s->signature_ok, &signer, &s->error);
    qk_vts_check(v, si, sd->cert, &s->timestamp);
    if (s->timestamp != NULL && !s->timestamp->ok)
        qk_vnote(v, &s->error, "timestamp: %s",
                 s->timestamp->error ? s->timestamp->error : "invalid");
    /* A valid timestamp proves the signature existed at its time: judge the
     * certificates then, so expiry after signing does not matter. */
    int64_t when = (s->timestamp != NULL && s->timestamp->ok) ? s->timestamp->time : -1;
    if (v->cs_store != NULL) {
        s->chain_checked = 1;
        s->chain_ok = qk_vchain(v, v->cs_store, signer, sd->cert, QK_EKU_CODE_SIGNING, when,
                                "certificate chain", &s->error);
    }
    ret = si;
out:
    QK_SPC_INDIRECT_DATA_free(idc);
    ERR_clear_error();
    return ret;
}

static void verify_contentinfo(vstate *st, const uint8_t *der, size_t len, int nested, int depth);

/* Nested signatures of `si`: each value of each 1.3.6.1.4.1.311.2.4.1
 * attribute is a ContentInfo (a SET that may hold several). */
static void verify_nested(vstate *st, PKCS7_SIGNER_INFO *si, int depth)
{
    for (int i = 0; i < sk_X509_ATTRIBUTE_num(si->unauth_attr); i++) {
        X509_ATTRIBUTE *a = sk_X509_ATTRIBUTE_value(si->unauth_attr, i);
        if (!qk_obj_is(X509_ATTRIBUTE_get0_object(a), QK_OID_SPC_NESTED_SIGNATURE))
            continue;
        for (int j = 0; j < X509_ATTRIBUTE_count(a); j++) {
            ASN1_TYPE *t = X509_ATTRIBUTE_get0_type(a, j);
            if (depth >= QK_VERIFY_MAX_DEPTH) {
                qk_sig_result *s = sig_add(st, 1);
                if (s != NULL)
                    qk_vnote(&st->v, &s->error,
                             "nested signature deeper than %d levels not verified",
                             QK_VERIFY_MAX_DEPTH);
            } else if (t == NULL || t->type != V_ASN1_SEQUENCE || t->value.sequence == NULL ||
                       t->value.sequence->length <= 0) {
                qk_sig_result *s = sig_add(st, 1);
                if (s != NULL)
                    qk_vnote(&st->v, &s->error, "malformed nested signature: not a ContentInfo");
            } else {
                verify_contentinfo(st, t->value.sequence->data, (size_t)t->value.sequence->length,
                                   1, depth + 1);
            }
            if (st->overflow || st->v.nomem)
                return;
        }
    }
}

static void verify_contentinfo(vstate *st, const uint8_t *der, size_t len, int nested, int depth)
{
    PKCS7 *p7 = NULL;
    PKCS7_SIGNER_INFO *si = NULL;
    const unsigned char *p = der;
    qk_sig_result *s = sig_add(st, nested);

    if (s == NULL)
        return;
    if (len == 0 || len > QK_VERIFY_MAX_SIG_SIZE) {
        qk_vnote(&st->v, &s->error, "malformed signature: %zu bytes of DER", len);
        goto out;
    }
    if ((p7 = d2i_PKCS7(NULL, &p, (long)len)) == NULL) {
        qk_vnote(&st->v, &s->error, "malformed signature: not a DER PKCS#7 ContentInfo");
        goto out;
    }
    if (p != der + len) {
        qk_vnote(&st->v, &s->error,
                 "malformed signature: %zu bytes of trailing data after the ContentInfo",
                 (size_t)(der + len - p));
        goto out;
    }
    si = check_signed_data(st, s, p7);
    /* s is not used past this point: nested results may move the array. */
    if (si != NULL)
        verify_nested(st, si, depth);
out:
    PKCS7_free(p7);
    ERR_clear_error();
}

/* One WIN_CERTIFICATE entry. Bytes between its DER and the end of the entry
 * may only be the zero padding: anything else is data no signature covers. */
static void verify_entry(vstate *st, const qk_pe_cert *c)
{
    qk_sig_result *s;
    size_t region = c->length >= 8 ? c->length - 8 : 0;

    if (c->type != QK_WIN_CERT_TYPE_PKCS_SIGNED_DATA || c->revision != QK_WIN_CERT_REVISION_2_0) {
        if ((s = sig_add(st, 0)) != NULL)
            qk_vnote(&st->v, &s->error,
                     "unsupported certificate table entry (revision 0x%04x, type 0x%04x)",
                     c->revision, c->type);
        return;
    }
    for (size_t i = c->data.len; i < region; i++) {
        if (c->data.data[i] != 0) {
            if ((s = sig_add(st, 0)) != NULL)
                qk_vnote(&st->v, &s->error,
                         "malformed signature: non-zero data after the ContentInfo in its "
                         "certificate table entry");
            return;
        }
    }
    verify_contentinfo(st, c->data.data, c->data.len, 0, 0);
}

qk_err qk_verify_pe(const qk_pe *pe, const qk_verify_opts *opts, qk_verify_report **out)
{
    qk_err rc;
    qk_verify_ctx *ctx = NULL;

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    *out = NULL;
    if (pe == NULL)
        return QK_ERR_INVALID_ARG;
    if ((rc = qk_verify_ctx_new(opts, &ctx)) != QK_OK)
        return rc;
    rc = qk_verify_pe_ctx(pe, ctx, out);
    qk_verify_ctx_free(ctx);
    return rc;
}

qk_err qk_verify_pe_ctx(const qk_pe *pe, const qk_verify_ctx *ctx, qk_verify_report **out)
{
    qk_err rc = QK_ERR_INVALID_ARG;
    qk_verify_report *r = NULL;
    vstate st = {0};

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    *out = NULL;
    if (pe == NULL || ctx == NULL)
        return QK_ERR_INVALID_ARG;
    qk_clear_detail();
    if ((r = calloc(1, sizeof(*r))) == NULL) {
        rc = QK_ERR_NOMEM;
        goto out;
    }
    qk_vctx_begin(&st.v, ctx);
    st.pe = pe;

    size_t ncerts = qk_pe_cert_count(pe);
    if (ncerts == 0) {
        uint32_t toff, tsize;
        qk_pe_cert_table(pe, &toff, &tsize);
        if (tsize == 0)
            qk_vnote(&st.v, &r->error, "%s", qk_strerror(QK_ERR_UNSIGNED));
        else
            qk_vnote(&st.v, &r->error, "certificate table holds no signature");
    }
    for (size_t i = 0; i < ncerts && !st.overflow && !st.v.nomem; i++)
        verify_entry(&st, qk_pe_cert_get(pe, i));
    if (st.overflow)
        qk_vnote(&st.v, &r->error, "more than %d signatures", QK_VERIFY_MAX_SIGS);

    int valid = r->error == NULL && st.n > 0;
    for (size_t i = 0; i < st.n; i++) {
        qk_sig_result *s = &st.sigs[i];
        if (qk_sig_fully_valid(s) && s->error == NULL)
            continue;
        /* Every failure path notes a reason; this only guards the invariant
         * "error is NULL exactly when the signature is fully valid". */
        qk_vnote(&st.v, &s->error, "verification failed");
        valid = 0;
    }
    if (st.v.nomem) {
        rc = qk_fail(QK_ERR_NOMEM, "while verifying signatures");
        goto out;
    }
    r->valid = valid;
    r->sigs = st.sigs;
    r->nsigs = st.n;
    st.sigs = NULL;
    st.n = 0;
    *out = r;
    r = NULL;
    rc = QK_OK;
out:
    for (size_t i = 0; i < st.n; i++)
        qk_sig_result_clear(&st.sigs[i]);
    free(st.sigs);
    qk_verify_report_free(r);
    ERR_clear_error();
    return rc;
}

void qk_verify_report_free(qk_verify_report *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nsigs; i++)
        qk_sig_result_clear(&r->sigs[i]);
    free(r->sigs);
    free(r->error);
    free(r);
}
