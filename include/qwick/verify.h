/* Verifying Authenticode signatures of a PE image (every certificate table
 * entry and every nested signature) and detached CMS signatures. */
#ifndef QWICK_VERIFY_H
#define QWICK_VERIFY_H

#include <stdint.h>
#include "qwick/buf.h"
#include "qwick/error.h"
#include "qwick/export.h"
#include "qwick/hash.h"
#include "qwick/pe.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qk_verify_opts {
    const char *ca_file;     /* PEM roots for code signing; NULL: the system store */
    const char *tsa_ca_file; /* PEM roots for timestamps; NULL: ca_file, else the system store */
    /* Integrity-only modes, for a signer checking what it just wrote. With
     * skip_chain the signer's certificate chain is not evaluated and no
     * code-signing store is loaded; with skip_ts_chain the same holds for the
     * TSA chain of timestamps. A skipped chain shows chain_checked 0 (and
     * chain_ok 0) in its result and does not count against `valid`: a report
     * is then valid when digests, signatures and timestamp tokens are. */
    int skip_chain;
    int skip_ts_chain;
} qk_verify_opts;

typedef struct qk_ts_result {
    int ok;          /* token signature, imprint and (when chain_checked) the TSA
                        chain with the timeStamping EKU all valid */
    int64_t time;    /* genTime, seconds since the epoch */
    char time_str[32]; /* "2026-11-23T17:55:30Z" */
    char *error;     /* NULL when ok */
    int chain_checked; /* 0 when the TSA chain was not evaluated (skip_ts_chain) */
} qk_ts_result;

typedef struct qk_sig_result {
    int index;       /* 0-based, in the order signatures are found */
    int nested;      /* found under 1.3.6.1.4.1.311.2.4.1 */
    qk_hash_alg digest_alg;
    int digest_ok;   /* recomputed image digest equals the signed one */
    int message_digest_ok; /* messageDigest attribute matches the content */
    int signature_ok;      /* CMS signature valid under the signer certificate */
    int chain_ok;          /* signer chains to a trusted root with the codeSigning EKU
                              (always 0 when chain_checked is 0) */
    char *signer;          /* signer subject, one line ("CN=..., O=...") */
    char *issuer;          /* signer issuer */
    qk_ts_result *timestamp; /* NULL when the signature carries no timestamp */
    char *error;           /* first failing check, NULL when fully valid */
    int chain_checked;     /* 1 when the chain was evaluated; 0 with skip_chain */
} qk_sig_result;

typedef struct qk_verify_report {
    int valid;            /* at least one signature, and every one fully valid */
    qk_sig_result *sigs;
    size_t nsigs;
    char *error;          /* file-level error (not signed, malformed table ...) or NULL */
} qk_verify_report;

/* Trust stores loaded once (a system bundle takes ~90 ms to parse) for many
 * verifications. Immutable after qk_verify_ctx_new, so threads may share one.
 * The strings in opts are only used during qk_verify_ctx_new. */
typedef struct qk_verify_ctx qk_verify_ctx;
QK_EXPORT QK_WUR qk_err qk_verify_ctx_new(const qk_verify_opts *opts, qk_verify_ctx **out);
QK_EXPORT void qk_verify_ctx_free(qk_verify_ctx *ctx);

/* Fills a report for every signature of `pe`. Returns QK_OK whenever a report
 * was produced, even if the signatures are invalid (see report->valid); an
 * error only for failures to verify at all (out of memory, unreadable CA file). */
QK_EXPORT QK_WUR qk_err qk_verify_pe(const qk_pe *pe, const qk_verify_opts *opts,
                                     qk_verify_report **out);
/* Verifies a detached CMS signature (DER or PEM) of `content_path`. A
 * timestamp is looked for among the SignerInfo's unsigned attributes:
 * id-aa-timeStampToken (1.2.840.113549.1.9.16.2.14, RFC 3161 Appendix A), else
 * Microsoft's 1.3.6.1.4.1.311.3.3.1, else a PKCS#9 countersignature; with a
 * valid one the signer's chain is judged at its time. */
QK_EXPORT QK_WUR qk_err qk_verify_detached(qk_slice p7s, const char *content_path,
                                           const qk_verify_opts *opts, qk_verify_report **out);
/* The same two with stores from a context. */
QK_EXPORT QK_WUR qk_err qk_verify_pe_ctx(const qk_pe *pe, const qk_verify_ctx *ctx,
                                         qk_verify_report **out);
QK_EXPORT QK_WUR qk_err qk_verify_detached_ctx(qk_slice p7s, const char *content_path,
                                               const qk_verify_ctx *ctx, qk_verify_report **out);
QK_EXPORT void qk_verify_report_free(qk_verify_report *r);

#ifdef __cplusplus
}
#endif
#endif
