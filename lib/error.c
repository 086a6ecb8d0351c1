#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "internal.h"
#include "qwick/buf.h"
#include "qwick/error.h"

#include <openssl/crypto.h>
#include <stdlib.h>

static const char *const messages[QK_ERR__COUNT] = {
    [QK_OK] = "success",
    [QK_ERR_NOMEM] = "out of memory",
    [QK_ERR_INVALID_ARG] = "invalid argument",
    [QK_ERR_IO] = "I/O error",
    [QK_ERR_TOO_LARGE] = "input too large",
    [QK_ERR_TRUNCATED] = "input truncated",
    [QK_ERR_TRAILING_DATA] = "unexpected trailing data",
    [QK_ERR_NOT_PE] = "not a PE file",
    [QK_ERR_PE_BAD_HEADER] = "malformed PE header",
    [QK_ERR_PE_BAD_MAGIC] = "unknown PE optional header magic",
    [QK_ERR_PE_BAD_SECTIONS] = "malformed PE section table",
    [QK_ERR_PE_NO_CERT_DIR] = "PE has no certificate table directory entry",
    [QK_ERR_PE_BAD_CERT_TABLE] = "malformed PE certificate table",
    [QK_ERR_UNSIGNED] = "file is not signed",
    [QK_ERR_UNSUPPORTED_ALG] = "unsupported algorithm",
    [QK_ERR_BAD_DER] = "malformed DER",
    [QK_ERR_BAD_SIGNATURE] = "malformed signature",
    [QK_ERR_CRYPTO] = "cryptographic operation failed",
    [QK_ERR_DIGEST_MISMATCH] = "digest mismatch",
    [QK_ERR_VERIFY_FAILED] = "verification failed",
    [QK_ERR_TSP_BAD_STATUS] = "timestamp request rejected",
    [QK_ERR_TSP_MISMATCH] = "timestamp reply does not match the request",
    [QK_ERR_SIGNER] = "signer failed",
};

const char *qk_strerror(qk_err err)
{
    if ((unsigned)err >= QK_ERR__COUNT || messages[err] == NULL)
        return "unknown error";
    return messages[err];
}

static _Thread_local char detail[512];

const char *qk_error_detail(void) { return detail; }

void qk_clear_detail(void) { detail[0] = '\0'; }

qk_err qk_fail(qk_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    return err;
}

qk_err qk_fail_ossl(qk_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    size_t used = (size_t)n < sizeof(detail) ? (size_t)n : sizeof(detail) - 1;
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        if (used + 3 < sizeof(detail)) {
            char buf[256];
            ERR_error_string_n(e, buf, sizeof(buf));
            int m = snprintf(detail + used, sizeof(detail) - used, ": %s", buf);
            if (m > 0)
                used += (size_t)m < sizeof(detail) - used ? (size_t)m : sizeof(detail) - used - 1;
        }
    }
    return err;
}

void qk_buf_free(qk_buf *b)
{
    if (b == NULL)
        return;
    if (b->data != NULL) {
        OPENSSL_cleanse(b->data, b->len);
        free(b->data);
    }
    b->data = NULL;
    b->len = 0;
}
