/* Verification of a detached CMS SignedData (DER or PEM) over a file. The
 * file is streamed once through OpenSSL's digest BIOs (one per digest
 * algorithm the signers use), so its size does not matter. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "internal.h"
#include "verify_internal.h"

#define READ_CHUNK (256u * 1024u)

/* Strict DER, or PEM whose label is one OpenSSL and common tools write for
 * CMS/PKCS#7; the PEM payload then gets the same strict DER check. */
static qk_err parse_cms(qk_slice p7s, CMS_ContentInfo **out, const char **why)
{
    qk_err rc = QK_ERR_NOMEM;
    BIO *b = NULL;
    char *name = NULL, *header = NULL;
    unsigned char *pem = NULL;
    long pemlen = 0;
    const unsigned char *der = p7s.data, *p;
    size_t len = p7s.len;

    *out = NULL;
    *why = NULL;
    if (len >= 11 && memcmp(der, "-----BEGIN ", 11) == 0) {
        if ((b = BIO_new_mem_buf(der, (int)len)) == NULL)
            goto out;
        if (PEM_read_bio(b, &name, &header, &pem, &pemlen) != 1 || pemlen <= 0) {
            *why = "malformed PEM";
            rc = QK_OK;
            goto out;
        }
        if (strcmp(name, "CMS") != 0 && strcmp(name, "PKCS7") != 0 &&
            strcmp(name, "PKCS #7 SIGNED DATA") != 0) {
            *why = "PEM block is not CMS or PKCS7";
            rc = QK_OK;
            goto out;
        }
        der = pem;
        len = (size_t)pemlen;
    }
    p = der;
    *out = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    if (*out == NULL || p != der + len) {
        CMS_ContentInfo_free(*out);
        *out = NULL;
        *why = "not a DER or PEM CMS ContentInfo";
    }
    rc = QK_OK;
out:
    BIO_free(b);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(pem);
    ERR_clear_error();
    return rc;
}

/* Reads `chain` (digest BIOs over the file) to the end. */
static qk_err drain(BIO *chain, const char *path)
{
    qk_err rc = QK_ERR_NOMEM;
    unsigned char *buf = malloc(READ_CHUNK);
    int n;

    if (buf == NULL)
        return QK_ERR_NOMEM;
    while ((n = BIO_read(chain, buf, (int)READ_CHUNK)) > 0)
        ;
    if (n < 0) {
        rc = qk_fail_ossl(QK_ERR_IO, "reading %s", path);
        goto out;
    }
    rc = QK_OK;
out:
    free(buf);
    return rc;
}

static void check_signer(qk_vctx *v, CMS_SignerInfo *si, BIO *chain, STACK_OF(X509) * certs,
                         qk_sig_result *s)
{
    X509 *signer = NULL;
    X509_ALGOR *dig = NULL;
    X509_NAME *issuer = NULL;
    ASN1_INTEGER *serial = NULL;

    CMS_SignerInfo_get0_algs(si, NULL, &signer, &dig, NULL);
    s->digest_alg = dig ? qk_hash_from_nid(OBJ_obj2nid(dig->algorithm)) : QK_HASH_NONE;
    if (signer != NULL) {
        s->signer = qk_vname(v, X509_get_subject_name(signer));
        s->issuer = qk_vname(v, X509_get_issuer_name(signer));
    } else if (CMS_SignerInfo_get0_signer_id(si, NULL, &issuer, &serial) == 1 && issuer) {
        s->issuer = qk_vname(v, issuer);
    }
    if (s->digest_alg == QK_HASH_NONE) {
        qk_vnote(v, &s->error, "unsupported digest algorithm");
    } else if (chain == NULL) {
        qk_vnote(v, &s->error, "cannot compute the content digest");
    } else if (CMS_signed_get_attr_count(si) > 0) {
        /* messageDigest against the streamed content, then the signature over
         * the signed attributes. */
        if (CMS_SignerInfo_verify_content(si, chain) == 1)
            s->digest_ok = s->message_digest_ok = 1;
        else
            qk_vnote(v, &s->error, "content digest mismatch");
        if (signer == NULL)
            qk_vnote(v, &s->error, "signer certificate not found in the signature");
        else if (CMS_SignerInfo_verify(si) == 1)
            s->signature_ok = 1;
        else
            qk_vnote(v, &s->error, "signature verification failed");
    } else if (signer == NULL) {
        qk_vnote(v, &s->error, "signer certificate not found in the signature");
    } else if (CMS_SignerInfo_verify_content(si, chain) == 1) {
        /* Without signed attributes the signature is over the content digest
         * itself: one check covers both. */
        s->digest_ok = s->message_digest_ok = s->signature_ok = 1;
    } else {
        qk_vnote(v, &s->error, "content digest or signature mismatch");
    }
    ERR_clear_error();
    qk_vts_check_cms(v, si, certs, &s->timestamp);
    if (s->timestamp != NULL && !s->timestamp->ok)
        qk_vnote(v, &s->error, "timestamp: %s",
                 s->timestamp->error ? s->timestamp->error : "invalid");
    /* As for Authenticode: a valid timestamp moves the chain check to its time. */
    int64_t when = (s->timestamp != NULL && s->timestamp->ok) ? s->timestamp->time : -1;
    if (v->cs_store != NULL) {
        s->chain_checked = 1;
        s->chain_ok = qk_vchain(v, v->cs_store, signer, certs, QK_EKU_NOT_TS_ONLY, when,
                                "certificate chain", &s->error);
    }
}

qk_err qk_verify_detached(qk_slice p7s, const char *content_path, const qk_verify_opts *opts,
                          qk_verify_report **out)
{
    qk_err rc;
    qk_verify_ctx *ctx = NULL;

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    *out = NULL;
    if (content_path == NULL || (p7s.data == NULL && p7s.len != 0))
        return QK_ERR_INVALID_ARG;
    if ((rc = qk_verify_ctx_new(opts, &ctx)) != QK_OK)
        return rc;
    rc = qk_verify_detached_ctx(p7s, content_path, ctx, out);
    qk_verify_ctx_free(ctx);
    return rc;
}

qk_err qk_verify_detached_ctx(qk_slice p7s, const char *content_path, const qk_verify_ctx *ctx,
                              qk_verify_report **out)
{
    qk_err rc = QK_ERR_INVALID_ARG;
    qk_verify_report *r = NULL;
    qk_vctx v = {0};
    CMS_ContentInfo *cms = NULL;
    STACK_OF(CMS_SignerInfo) * sis;
    STACK_OF(X509) *certs = NULL;
    BIO *file = NULL, *chain = NULL;
    const char *why = NULL;
    int fd = -1, n;

    if (out == NULL)
        return QK_ERR_INVALID_ARG;
    *out = NULL;
    if (ctx == NULL || content_path == NULL || (p7s.data == NULL && p7s.len != 0))
        return QK_ERR_INVALID_ARG;
    qk_clear_detail();
    if (p7s.len > QK_VERIFY_MAX_SIG_SIZE)
        return qk_fail(QK_ERR_TOO_LARGE, "signature of %zu bytes", p7s.len);
    if ((r = calloc(1, sizeof(*r))) == NULL) {
        rc = QK_ERR_NOMEM;
        goto out;
    }
    qk_vctx_begin(&v, ctx);
    if ((fd = open(content_path, O_RDONLY | O_CLOEXEC)) < 0) {
        rc = qk_fail(QK_ERR_IO, "%s: %s", content_path, strerror(errno));
        goto out;
    }
    if ((rc = parse_cms(p7s, &cms, &why)) != QK_OK)
        goto out;
    if (cms == NULL) {
        qk_vnote(&v, &r->error, "malformed signature: %s", why);
        goto report;
    }
    if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed) {
        qk_vnote(&v, &r->error, "malformed signature: not a SignedData");
        goto report;
    }
    if (CMS_is_detached(cms) != 1) {
        qk_vnote(&v, &r->error, "signature embeds its content; expected a detached signature");
        goto report;
    }
    sis = CMS_get0_SignerInfos(cms);
    if ((n = sk_CMS_SignerInfo_num(sis)) <= 0) {
        qk_vnote(&v, &r->error, "signature has no signers");
        goto report;
    }
    if (n > QK_VERIFY_MAX_SIGS) {
        qk_vnote(&v, &r->error, "more than %d signers", QK_VERIFY_MAX_SIGS);
        goto report;
    }
    if ((r->sigs = calloc((size_t)n, sizeof(*r->sigs))) == NULL) {
        rc = QK_ERR_NOMEM;
        goto out;
    }
    r->nsigs = (size_t)n;
    /* Matches each SignerInfo with its certificate among the embedded ones;
     * a signer without one is reported below, so the count is not checked. */
    (void)CMS_set1_signers_certs(cms, NULL, 0);
    certs = CMS_get1_certs(cms);

    if ((file = BIO_new_fd(fd, BIO_CLOSE)) == NULL) {
        rc = QK_ERR_NOMEM;
        goto out;
    }
    fd = -1;
    /* On success the chain owns `file`; on failure it is still ours. */
    if ((chain = CMS_dataInit(cms, file)) != NULL) {
        file = NULL;
        if ((rc = drain(chain, content_path)) != QK_OK)
            goto out;
    }
    ERR_clear_error();
    for (int i = 0; i < n; i++) {
        r->sigs[i].index = i;
        check_signer(&v, sk_CMS_SignerInfo_value(sis, i), chain, certs, &r->sigs[i]);
    }
report:
    r->valid = r->error == NULL && r->nsigs > 0;
    for (size_t i = 0; i < r->nsigs; i++) {
        qk_sig_result *s = &r->sigs[i];
        if (qk_sig_fully_valid(s) && !s->error)
            continue;
        qk_vnote(&v, &s->error, "verification failed");
        r->valid = 0;
    }
    if (v.nomem) {
        rc = qk_fail(QK_ERR_NOMEM, "while verifying a detached signature");
        goto out;
    }
    *out = r;
    r = NULL;
    rc = QK_OK;
out:
    if (fd >= 0)
        close(fd);
    BIO_free_all(chain);
    BIO_free(file);
    sk_X509_pop_free(certs, X509_free);
    CMS_ContentInfo_free(cms);
    qk_verify_report_free(r);
    ERR_clear_error();
    return rc;
}
