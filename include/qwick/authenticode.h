/* Building Authenticode (and detached CMS) signatures from a digest.
 *
 * Signing is split in two so the private key can live anywhere (local key,
 * PKCS#11 token, Azure Trusted Signing): qk_tbs_new() builds the content and
 * the signed attributes, qk_tbs_digest() gives the hash a key must sign,
 * qk_tbs_finish() assembles the DER ContentInfo around the raw signature. */
#ifndef QWICK_AUTHENTICODE_H
#define QWICK_AUTHENTICODE_H

#include <stddef.h>
#include <stdint.h>
#include "qwick/buf.h"
#include "qwick/error.h"
#include "qwick/export.h"
#include "qwick/hash.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qk_sig_format {
    /* SignedData over SpcIndirectDataContent{SpcPeImageData, DigestInfo(image digest)}. */
    QK_FORMAT_AUTHENTICODE_PE = 0,
    /* Detached CMS SignedData over id-data: signed attributes contentType,
     * signingTime, messageDigest (= the content digest); no eContent. */
    QK_FORMAT_CMS_DETACHED = 1,
} qk_sig_format;

/* Obtains an RFC 3161 TimeStampToken (DER ContentInfo, in *token, malloc'd)
 * for a signature value, imprint hashed with `alg`: see qk_sign_request.stamp. */
typedef qk_err (*qk_stamp_fn)(void *ctx, qk_hash_alg alg, qk_slice value, qk_buf *token);

typedef struct qk_sign_request {
    qk_sig_format format;
    qk_hash_alg alg;          /* digest algorithm of `digest` and of the signature */
    qk_slice digest;          /* image digest (PE) or content digest (CMS) */
    const char *program_name; /* SpcSpOpusInfo programName (PE only, optional) */
    const char *url;          /* SpcSpOpusInfo moreInfo URL (PE only, optional) */
    int64_t signing_time;     /* CMS signingTime, seconds since the epoch (0: now) */
    /* Skip the check of the signature value against the signer certificate's
     * public key (see qk_tbs_finish). Only for a signer that checks its own
     * output and whose key is known to match the certificate: OpenSSL's RSA
     * private operation verifies every CRT result with the public exponent
     * and recomputes a wrong one, so a local RSA key loaded after
     * X509_check_private_key qualifies; an HSM or remote signer does not. */
    int self_checked;
    /* Optional: timestamps the signature while it is assembled (a TSA in the
     * same process), so no second pass (qk_sig_value, qk_sig_add_timestamp)
     * has to decode and re-encode the result. Called once with the signature
     * value; the token goes into the SignerInfo's unsigned attributes under
     * the attribute qk_sig_add_timestamp would use. The token is the
     * caller's word: it is checked to be one DER SEQUENCE, nothing more. */
    qk_stamp_fn stamp;
    void *stamp_ctx;
} qk_sign_request;

/* Largest signature value and certificate accepted by the assembler. */
#define QK_MAX_SIGNATURE_SIZE 2048
#define QK_MAX_CERT_SIZE (64u * 1024u)
#define QK_MAX_CHAIN_LEN 16

typedef struct qk_tbs qk_tbs;

QK_EXPORT QK_WUR qk_err qk_tbs_new(const qk_sign_request *req, qk_tbs **out);
QK_EXPORT void qk_tbs_free(qk_tbs *tbs);
/* DER of the signed attributes as a SET OF (tag 0x31): the bytes the signature covers. */
QK_EXPORT qk_slice qk_tbs_attrs_der(const qk_tbs *tbs);
/* Hash (with req->alg) of qk_tbs_attrs_der: what a digest-signing key signs.
 * out must hold qk_hash_size(alg) bytes. */
QK_EXPORT QK_WUR qk_err qk_tbs_digest(const qk_tbs *tbs, uint8_t *out, size_t *outlen);
/* Assembles the DER ContentInfo(SignedData). `signature` is the raw value from
 * the key: RSA PKCS#1 v1.5 over DigestInfo(tbs digest), or a DER ECDSA-Sig-Value.
 * chain[0] is the signer's DER certificate, then intermediates (any order);
 * self-signed roots among them are left out of the SignedData, as signtool does.
 * The signature algorithm follows the signer's key type. The signature is
 * checked against the certificate before anything is returned (unless the
 * request said self_checked). */
QK_EXPORT QK_WUR qk_err qk_tbs_finish(const qk_tbs *tbs, qk_slice signature, const qk_slice *chain,
                                      size_t nchain, qk_buf *out);

/* A certificate chain (leaf first) decoded once, for signing many times:
 * decoding certificates costs about a tenth of an RSA-3072 signature with
 * OpenSSL 3.0. Immutable after qk_chain_new, so it may be shared by threads. */
typedef struct qk_chain qk_chain;
QK_EXPORT QK_WUR qk_err qk_chain_new(const qk_slice *chain, size_t nchain, qk_chain **out);
QK_EXPORT void qk_chain_free(qk_chain *c);
/* qk_tbs_finish with a decoded chain. */
QK_EXPORT QK_WUR qk_err qk_tbs_finish_chain(const qk_tbs *tbs, qk_slice signature,
                                            const qk_chain *chain, qk_buf *out);

/* A key that signs a digest: writes the raw signature to *sig (heap, caller frees). */
typedef qk_err (*qk_sign_fn)(void *ctx, qk_hash_alg alg, const uint8_t *digest, size_t len,
                             qk_buf *sig);

/* qk_tbs_new + sign + qk_tbs_finish in one call. */
QK_EXPORT QK_WUR qk_err qk_sign(const qk_sign_request *req, qk_sign_fn fn, void *ctx,
                                const qk_slice *chain, size_t nchain, qk_buf *out);

/* qk_sign with a decoded chain. */
QK_EXPORT QK_WUR qk_err qk_sign_chain(const qk_sign_request *req, qk_sign_fn fn, void *ctx,
                                      const qk_chain *chain, qk_buf *out);

/* The first SignerInfo's signature value of a ContentInfo(SignedData): the
 * bytes an RFC 3161 timestamp imprint covers. */
QK_EXPORT QK_WUR qk_err qk_sig_value(qk_slice contentinfo, qk_buf *out);
/* Returns contentinfo with `token` (a DER TimeStampToken ContentInfo) added as
 * an unsigned attribute of its SignerInfo, replacing any token already there.
 * The attribute follows the encapsulated content type: Authenticode content
 * (SpcIndirectDataContent, or any type under 1.3.6.1.4.1.311) gets Microsoft's
 * 1.3.6.1.4.1.311.3.3.1; other content (id-data, QK_FORMAT_CMS_DETACHED) gets
 * RFC 3161 Appendix A's id-aa-timeStampToken 1.2.840.113549.1.9.16.2.14. */
QK_EXPORT QK_WUR qk_err qk_sig_add_timestamp(qk_slice contentinfo, qk_slice token, qk_buf *out);
/* Returns `outer` with `inner` appended as a nested signature
 * (unsigned attribute 1.3.6.1.4.1.311.2.4.1), keeping nested ones already there. */
QK_EXPORT QK_WUR qk_err qk_sig_nest(qk_slice outer, qk_slice inner, qk_buf *out);

#ifdef __cplusplus
}
#endif
#endif
