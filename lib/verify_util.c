/* Building blocks of signature verification: trust stores, signer checks,
 * chain and EKU policy, names and times. See verify_internal.h. */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#include "internal.h"
#include "verify_internal.h"

/* --- trust stores ------------------------------------------------------ */

static qk_err load_store(const char *file, X509_STORE **out)
{
    qk_err rc = QK_ERR_NOMEM;
    X509_STORE *st = NULL;

    *out = NULL;
    if ((st = X509_STORE_new()) == NULL)
        goto out;
    if (file != NULL) {
        if (X509_STORE_load_file(st, file) != 1) {
            rc = qk_fail_ossl(QK_ERR_IO, "cannot load CA certificates from %s", file);
            goto out;
        }
    } else if (X509_STORE_set_default_paths(st) != 1) {
        rc = qk_fail_ossl(QK_ERR_CRYPTO, "cannot load the system certificate store");
        goto out;
    }
    *out = st;
    st = NULL;
    rc = QK_OK;
out:
    X509_STORE_free(st);
    return rc;
}

qk_err qk_verify_ctx_new(const qk_verify_opts *opts, qk_verify_ctx **out)
{
    qk_err rc = QK_ERR_NOMEM;
    qk_verify_ctx *c = NULL;
    const char *ca = opts ? opts->ca_file : NULL;
    const char *tsa = opts ? opts->tsa_ca_file : NULL;
    int skip_cs = opts ? opts->skip_chain : 0;
    int skip_ts = opts ? opts->skip_ts_chain : 0;

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    *out = NULL;
    qk_clear_detail();
    if ((c = calloc(1, sizeof(*c))) == NULL)
        goto out;
    if (!skip_cs && (rc = load_store(ca, &c->cs_store)) != QK_OK)
        goto out;
    if (skip_ts) {
        rc = QK_OK;
    } else if (tsa == NULL && c->cs_store != NULL) {
        /* No separate TSA roots: timestamps chain to the code-signing roots. */
        if (X509_STORE_up_ref(c->cs_store) != 1) {
            rc = qk_fail_ossl(QK_ERR_CRYPTO, "X509_STORE_up_ref");
            goto out;
        }
        c->ts_store = c->cs_store;
        rc = QK_OK;
    } else if ((rc = load_store(tsa != NULL ? tsa : ca, &c->ts_store)) != QK_OK) {
        goto out;
    }
    *out = c;
    c = NULL;
out:
    qk_verify_ctx_free(c);
    ERR_clear_error();
    return rc;
}

void qk_verify_ctx_free(qk_verify_ctx *c)
{
    if (c == NULL)
        return;
    X509_STORE_free(c->cs_store);
    X509_STORE_free(c->ts_store);
    free(c);
}

void qk_vctx_begin(qk_vctx *v, const qk_verify_ctx *ctx)
{
    memset(v, 0, sizeof(*v));
    v->cs_store = ctx->cs_store;
    v->ts_store = ctx->ts_store;
}

/* --- messages, names, times -------------------------------------------- */

void qk_vnote(qk_vctx *v, char **slot, const char *fmt, ...)
{
    char buf[512];
    va_list ap;

    if (*slot != NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if ((*slot = strdup(buf)) == NULL)
        v->nomem = 1;
}

char *qk_vname(qk_vctx *v, const X509_NAME *name)
{
    /* RFC 2253 escaping and order, but ", " between RDNs and raw UTF-8 instead
     * of \XX escapes so names read naturally; control characters stay escaped. */
    const unsigned long flags =
        (XN_FLAG_RFC2253 & ~(ASN1_STRFLGS_ESC_MSB | XN_FLAG_SEP_MASK)) | XN_FLAG_SEP_CPLUS_SPC;
    BIO *b = NULL;
    char *s = NULL, *data = NULL;
    long len;

    if (name == NULL)
        return NULL;
    if ((b = BIO_new(BIO_s_mem())) == NULL) {
        v->nomem = 1;
        goto out;
    }
    if (X509_NAME_print_ex(b, name, 0, flags) < 0)
        goto out;
    len = BIO_get_mem_data(b, &data);
    if (len < 0 || (data == NULL && len != 0))
        goto out;
    if ((s = malloc((size_t)len + 1)) == NULL) {
        v->nomem = 1;
        goto out;
    }
    if (len > 0)
        memcpy(s, data, (size_t)len);
    s[len] = '\0';
out:
    BIO_free(b);
    ERR_clear_error();
    return s;
}

int qk_obj_is(const ASN1_OBJECT *o, const char *oid)
{
    char buf[128];
    if (o == NULL)
        return 0;
    int n = OBJ_obj2txt(buf, sizeof(buf), o, 1);
    /* A longer OID does not fit the buffer and cannot equal any we know. */
    return n > 0 && (size_t)n < sizeof(buf) && strcmp(buf, oid) == 0;
}

int qk_asn1_time_to_epoch(const ASN1_TIME *t, int64_t *out)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    /* -1 is also 1969-12-31T23:59:59, which no signature of ours can carry. */
    time_t e = timegm(&tm);
    if (e == (time_t)-1)
        return 0;
    *out = (int64_t)e;
    return 1;
}

void qk_ts_set_time(qk_ts_result *ts, int64_t t)
{
    struct tm tm;
    time_t tt = (time_t)t;

    ts->time = t;
    ts->time_str[0] = '\0';
    if (gmtime_r(&tt, &tm) == NULL ||
        strftime(ts->time_str, sizeof(ts->time_str), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        ts->time_str[0] = '\0';
}

/* --- attributes and signer checks --------------------------------------- */

const ASN1_TYPE *qk_attr_one(const STACK_OF(X509_ATTRIBUTE) * attrs, int nid, int type,
                             const char **why)
{
    int i = X509at_get_attr_by_NID(attrs, nid, -1);
    if (i < 0) {
        *why = "is missing";
        return NULL;
    }
    if (X509at_get_attr_by_NID(attrs, nid, i) >= 0) {
        *why = "occurs more than once";
        return NULL;
    }
    X509_ATTRIBUTE *a = X509at_get_attr(attrs, i);
    if (a == NULL || X509_ATTRIBUTE_count(a) != 1) {
        *why = "does not have exactly one value";
        return NULL;
    }
    ASN1_TYPE *t = X509_ATTRIBUTE_get0_type(a, 0);
    if (t == NULL || (type >= 0 && t->type != type)) {
        *why = "has the wrong type";
        return NULL;
    }
    return t;
}

static int hash_bytes(const EVP_MD *md, const uint8_t *p, size_t n, uint8_t *out,
                      unsigned int *outlen)
{
    return EVP_Digest(p, n, out, outlen, md, NULL) == 1;
}

/* The key type a SignerInfo's signatureAlgorithm names (rsaEncryption and
 * sha256WithRSAEncryption both mean RSA) and the digest it implies, if any. */
static void sig_alg_parts(const X509_ALGOR *alg, int *pkey_nid, int *md_nid)
{
    int nid = alg ? OBJ_obj2nid(alg->algorithm) : NID_undef;
    *md_nid = NID_undef;
    *pkey_nid = NID_undef;
    if (!OBJ_find_sigid_algs(nid, md_nid, pkey_nid)) {
        *pkey_nid = nid;
        *md_nid = NID_undef;
    }
}

static int signature_check(qk_vctx *v, PKCS7_SIGNER_INFO *si, X509 *cert, const EVP_MD *md,
                           const char *what, char **err)
{
    int ok = 0, pkey_nid, md_nid, derlen;
    unsigned char *der = NULL;
    EVP_MD_CTX *ctx = NULL;
    EVP_PKEY *pkey = X509_get0_pubkey(cert);

    if (pkey == NULL) {
        qk_vnote(v, err, "%ssigner certificate has an unusable public key", what);
        goto out;
    }
    sig_alg_parts(si->digest_enc_alg, &pkey_nid, &md_nid);
    /* EVP_PKEY_RSA and EVP_PKEY_EC are the NIDs rsaEncryption and id-ecPublicKey. */
    if ((pkey_nid != EVP_PKEY_RSA && pkey_nid != EVP_PKEY_EC) ||
        EVP_PKEY_get_base_id(pkey) != pkey_nid) {
        qk_vnote(v, err, "%ssignature algorithm does not match the signer's key", what);
        goto out;
    }
    if (md_nid != NID_undef && md_nid != EVP_MD_get_type(md)) {
        qk_vnote(v, err, "%ssignature algorithm's digest differs from the digest algorithm", what);
        goto out;
    }
    if (si->enc_digest == NULL || si->enc_digest->length <= 0) {
        qk_vnote(v, err, "%sempty signature value", what);
        goto out;
    }
    /* PKCS7_ATTR_VERIFY encodes the attributes as a SET (tag 0x31) in the
     * order they were received: the bytes the signer hashed. */
    derlen = ASN1_item_i2d((ASN1_VALUE *)si->auth_attr, &der, ASN1_ITEM_rptr(PKCS7_ATTR_VERIFY));
    if (derlen <= 0) {
        qk_vnote(v, err, "%scannot encode the authenticated attributes", what);
        goto out;
    }
    if ((ctx = EVP_MD_CTX_new()) == NULL) {
        v->nomem = 1;
        goto out;
    }
    if (EVP_DigestVerifyInit(ctx, NULL, md, NULL, pkey) != 1 ||
        EVP_DigestVerify(ctx, si->enc_digest->data, (size_t)si->enc_digest->length, der,
                         (size_t)derlen) != 1) {
        qk_vnote(v, err, "%ssignature verification failed", what);
        goto out;
    }
    ok = 1;
out:
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    ERR_clear_error();
    return ok;
}

void qk_vsigner_check(qk_vctx *v, PKCS7_SIGNER_INFO *si, STACK_OF(X509) * certs,
                      const uint8_t *content, size_t content_len, const char *ctype_oid,
                      const char *what, int *md_ok, int *sig_ok, X509 **signer, char **err)
{
    const char *why = NULL;
    const ASN1_TYPE *t;
    const EVP_MD *md;
    uint8_t h[EVP_MAX_MD_SIZE];
    unsigned int hlen = 0;
    qk_hash_alg alg;
    X509 *cert = NULL;

    *md_ok = 0;
    *sig_ok = 0;
    *signer = NULL;
    if (si->issuer_and_serial != NULL)
        cert = X509_find_by_issuer_and_serial(certs, si->issuer_and_serial->issuer,
                                              si->issuer_and_serial->serial);
    *signer = cert;

    alg = si->digest_alg ? qk_hash_from_nid(OBJ_obj2nid(si->digest_alg->algorithm)) : QK_HASH_NONE;
    if (alg == QK_HASH_NONE || (md = EVP_get_digestbynid(qk_hash_nid(alg))) == NULL) {
        qk_vnote(v, err, "%sunsupported digest algorithm", what);
        return;
    }
    if (sk_X509_ATTRIBUTE_num(si->auth_attr) <= 0) {
        qk_vnote(v, err, "%sno authenticated attributes", what);
        return;
    }

    /* contentType and messageDigest together bind the attributes to the content. */
    int md_good = 1;
    if (ctype_oid != NULL) {
        t = qk_attr_one(si->auth_attr, NID_pkcs9_contentType, V_ASN1_OBJECT, &why);
        if (t == NULL) {
            qk_vnote(v, err, "%scontentType attribute %s", what, why);
            md_good = 0;
        } else if (!qk_obj_is(t->value.object, ctype_oid)) {
            qk_vnote(v, err, "%scontentType attribute is not %s", what, ctype_oid);
            md_good = 0;
        }
    }
    t = qk_attr_one(si->auth_attr, NID_pkcs9_messageDigest, V_ASN1_OCTET_STRING, &why);
    if (t == NULL) {
        qk_vnote(v, err, "%smessageDigest attribute %s", what, why);
        md_good = 0;
    } else if (!hash_bytes(md, content, content_len, h, &hlen)) {
        qk_vnote(v, err, "%scannot hash the signed content", what);
        md_good = 0;
    } else if ((unsigned int)t->value.octet_string->length != hlen ||
               CRYPTO_memcmp(t->value.octet_string->data, h, hlen) != 0) {
        qk_vnote(v, err, "%smessage digest mismatch", what);
        md_good = 0;
    }
    *md_ok = md_good;

    if (cert == NULL) {
        qk_vnote(v, err, "%ssigner certificate not found in the signature", what);
        return;
    }
    *sig_ok = signature_check(v, si, cert, md, what, err);
}

/* --- chain and EKU ------------------------------------------------------ */

static const char *eku_name(qk_eku_policy eku)
{
    return eku == QK_EKU_TIMESTAMPING ? "timeStamping" : "codeSigning";
}

/* OpenSSL 3.0 has no code-signing purpose, so the chain is built with
 * X509_PURPOSE_ANY and the extended key usages are checked here: the leaf
 * must list the required usage, and a CA that restricts its EKU at all must
 * include it (or anyExtendedKeyUsage), as Windows' chain engine requires. */
static int eku_check(qk_vctx *v, STACK_OF(X509) * chain, qk_eku_policy eku, const char *what,
                     char **err)
{
    X509 *leaf = sk_X509_value(chain, 0);
    uint32_t need = eku == QK_EKU_TIMESTAMPING ? XKU_TIMESTAMP : XKU_CODE_SIGN;

    if (leaf == NULL)
        return 0;
    uint32_t flags = X509_get_extension_flags(leaf);
    uint32_t xku = X509_get_extended_key_usage(leaf);
    /* A key usage extension, when present, must allow signing: digitalSignature
     * for code, or nonRepudiation as RFC 3161 and S/MIME signers also use. */
    uint32_t ku_ok = eku == QK_EKU_CODE_SIGNING ? KU_DIGITAL_SIGNATURE
                                                : KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION;
    if ((flags & EXFLAG_KUSAGE) && !(X509_get_key_usage(leaf) & ku_ok)) {
        qk_vnote(v, err, "%s: signer certificate's key usage does not allow signatures", what);
        return 0;
    }
    if (eku == QK_EKU_NOT_TS_ONLY) {
        if ((flags & EXFLAG_XKUSAGE) && xku == XKU_TIMESTAMP) {
            qk_vnote(v, err, "%s: signer certificate is for time stamping only", what);
            return 0;
        }
        return 1;
    }
    if (!(flags & EXFLAG_XKUSAGE) || !(xku & need)) {
        qk_vnote(v, err, "%s: signer certificate lacks the %s extended key usage", what,
                 eku_name(eku));
        return 0;
    }
    for (int i = 1; i < sk_X509_num(chain); i++) {
        X509 *ca = sk_X509_value(chain, i);
        if ((X509_get_extension_flags(ca) & EXFLAG_XKUSAGE) &&
            !(X509_get_extended_key_usage(ca) & (need | XKU_ANYEKU))) {
            qk_vnote(v, err, "%s: an issuing certificate does not allow %s", what, eku_name(eku));
            return 0;
        }
    }
    return 1;
}

int qk_vchain(qk_vctx *v, X509_STORE *store, X509 *leaf, STACK_OF(X509) * untrusted,
              qk_eku_policy eku, int64_t when, const char *what, char **err)
{
    int ok = 0;
    X509_STORE_CTX *ctx = NULL;

    if (leaf == NULL) {
        qk_vnote(v, err, "%s: no signer certificate", what);
        return 0;
    }
    if ((ctx = X509_STORE_CTX_new()) == NULL) {
        v->nomem = 1;
        goto out;
    }
    if (X509_STORE_CTX_init(ctx, store, leaf, untrusted) != 1 ||
        X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_ANY) != 1) {
        qk_vnote(v, err, "%s: cannot set up verification", what);
        goto out;
    }
    if (when >= 0)
        X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx), (time_t)when);
    if (X509_verify_cert(ctx) != 1) {
        qk_vnote(v, err, "%s: %s", what,
                 X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
        goto out;
    }
    ok = eku_check(v, X509_STORE_CTX_get0_chain(ctx), eku, what, err);
out:
    X509_STORE_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

int qk_sig_fully_valid(const qk_sig_result *s)
{
    return s->digest_ok && s->message_digest_ok && s->signature_ok &&
           (s->chain_ok || !s->chain_checked) && (s->timestamp == NULL || s->timestamp->ok);
}

void qk_sig_result_clear(qk_sig_result *s)
{
    free(s->signer);
    free(s->issuer);
    free(s->error);
    qk_ts_result_free(s->timestamp);
    s->signer = s->issuer = s->error = NULL;
    s->timestamp = NULL;
}
