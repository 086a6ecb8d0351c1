/* Qwick error codes: one enum for the whole library, with a message for each. */
#ifndef QWICK_ERROR_H
#define QWICK_ERROR_H

#include "qwick/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qk_err {
    QK_OK = 0,
    QK_ERR_NOMEM,            /* allocation failed */
    QK_ERR_INVALID_ARG,      /* caller passed a bad argument */
    QK_ERR_IO,               /* open/read/write/fsync/rename failed (errno in detail) */
    QK_ERR_TOO_LARGE,        /* input exceeds a named maximum */
    QK_ERR_TRUNCATED,        /* input ends before a structure it declares */
    QK_ERR_TRAILING_DATA,    /* bytes after a complete structure */
    QK_ERR_NOT_PE,           /* no MZ / PE signature */
    QK_ERR_PE_BAD_HEADER,    /* PE header fields out of range */
    QK_ERR_PE_BAD_MAGIC,     /* optional header magic is neither PE32 nor PE32+ */
    QK_ERR_PE_BAD_SECTIONS,  /* section table past EOF or inconsistent */
    QK_ERR_PE_NO_CERT_DIR,   /* NumberOfRvaAndSizes < 5 */
    QK_ERR_PE_BAD_CERT_TABLE,/* certificate table malformed, outside file, not at end */
    QK_ERR_UNSIGNED,         /* file has no signature */
    QK_ERR_UNSUPPORTED_ALG,  /* hash or signature algorithm not supported */
    QK_ERR_BAD_DER,          /* DER/ASN.1 parse error */
    QK_ERR_BAD_SIGNATURE,    /* signature structure not Authenticode / not as expected */
    QK_ERR_CRYPTO,           /* OpenSSL operation failed (queue in detail) */
    QK_ERR_DIGEST_MISMATCH,  /* recomputed digest differs */
    QK_ERR_VERIFY_FAILED,    /* signature or chain verification failed */
    QK_ERR_TSP_BAD_STATUS,   /* timestamp reply status not granted */
    QK_ERR_TSP_MISMATCH,     /* timestamp nonce or imprint mismatch */
    QK_ERR_SIGNER,           /* signer callback failed */
    QK_ERR__COUNT
} qk_err;

/* A static, human-readable message for an error code. Never NULL. */
QK_EXPORT const char *qk_strerror(qk_err err);

/* Context for the most recent error raised on this thread (errno text, OpenSSL
 * error queue, the field that was wrong...). Empty string when none. */
QK_EXPORT const char *qk_error_detail(void);

/* Records a printf-style detail for `err` on this thread and returns `err`,
 * so call sites read `return qk_fail(QK_ERR_X, "what %s", why);`. */
QK_EXPORT qk_err qk_fail(qk_err err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Like qk_fail, appending OpenSSL's error queue (which it then clears). */
QK_EXPORT qk_err qk_fail_ossl(qk_err err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Clears this thread's error detail. */
QK_EXPORT void qk_clear_detail(void);

#ifdef __cplusplus
}
#endif
#endif
