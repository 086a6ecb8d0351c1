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
} qk_verify_opts;

typedef struct qk_ts_result {
    int ok;          /* token signature, chain (timeStamping EKU) and imprint all valid */
    int64_t time;    /* genTime, seconds since the epoch */
    char time_str[32]; /* "2026-11-23T17:55:30Z" */
    char *error;     /* NULL when ok */
} qk_ts_result;

typedef struct qk_sig_result {
    int index;       /* 0-based, in the order signatures are found */
    int nested;      /* found under 1.3.6.1.4.1.311.2.4.1 */
    qk_hash_alg digest_alg;
    int digest_ok;   /* recomputed image digest equals the signed one */
    int message_digest_ok; /* messageDigest attribute matches the content */
    int signature_ok;      /* CMS signature valid under the signer certificate */
    int chain_ok;          /* signer chains to a trusted root with the codeSigning EKU */
    char *signer;          /* signer subject, one line ("CN=..., O=...") */
    char *issuer;          /* signer issuer */
    qk_ts_result *timestamp; /* NULL when the signature carries no timestamp */
    char *error;           /* first failing check, NULL when fully valid */
} qk_sig_result;

typedef struct qk_verify_report {
    int valid;            /* at least one signature, and every one fully valid */
    qk_sig_result *sigs;
    size_t nsigs;
    char *error;          /* file-level error (not signed, malformed table ...) or NULL */
} qk_verify_report;

/* Fills a report for every signature of `pe`. Returns QK_OK whenever a report
 * was produced, even if the signatures are invalid (see report->valid); an
 * error only for failures to verify at all (out of memory, unreadable CA file). */
QK_EXPORT QK_WUR qk_err qk_verify_pe(const qk_pe *pe, const qk_verify_opts *opts,
                                     qk_verify_report **out);
/* Verifies a detached CMS signature (DER or PEM) of `content_path`. */
QK_EXPORT QK_WUR qk_err qk_verify_detached(qk_slice p7s, const char *content_path,
                                           const qk_verify_opts *opts, qk_verify_report **out);
QK_EXPORT void qk_verify_report_free(qk_verify_report *r);

#ifdef __cplusplus
}
#endif
#endif
