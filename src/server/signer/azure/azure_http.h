/* HTTP to Azure (Entra ID, Microsoft Graph, Trusted Signing) over libcurl:
 * the options every request shares (HTTPS only, no redirects, verified TLS
 * with optional extra trust anchors, timeouts), a capped response body, the
 * headers the protocols need (Retry-After, Operation-Location), and the
 * error bodies Azure sends, turned into one line of text. */
#ifndef QWICKD_AZURE_HTTP_H
#define QWICKD_AZURE_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

#include "qwick/buf.h"
#include "qwick/error.h"

/* Largest response body read from Azure (a sign result is ~10 KB). */
#define AZ_MAX_RESPONSE (1024u * 1024u)
#define AZ_MAX_HEADER_VALUE 2048
/* Longest wait a Retry-After may ask for before we give up instead. */
#define AZ_MAX_RETRY_AFTER_S 120

typedef struct az_trust az_trust;

/* The trust anchors for one app registration's endpoints: the system's,
 * loaded once, plus `pem` (NULL: none). Shared by every transfer. */
qk_err az_trust_new(const char *pem, az_trust **out);
void az_trust_free(az_trust *t);

typedef struct az_resp {
    long status;       /* HTTP status; 0 when the transfer failed */
    qk_buf body;       /* NUL-terminated one past len */
    int too_large;     /* body exceeded AZ_MAX_RESPONSE */
    long retry_after;  /* seconds; -1 when absent or unparseable */
    char *op_location; /* Operation-Location, NULL when absent */
    CURLcode curl_rc;
    char curl_err[CURL_ERROR_SIZE];
} az_resp;

/* Sets the shared options (trust must not be NULL) and points the body/header callbacks at `r`
 * (which must outlive the transfer). `headers` may be NULL; the caller owns
 * it. total_timeout_ms bounds the whole transfer. */
void az_http_prepare(CURL *e, const char *url, const az_trust *trust, struct curl_slist *headers,
                     az_resp *r, long total_timeout_ms);
/* Resets `r` for reuse (frees its body and location). */
void az_resp_reset(az_resp *r);
/* Blocking transfer (the credential thread's calls). */
qk_err az_http_perform(CURL *e, az_resp *r);

/* One line describing a failed response: Azure's own code and message from
 * any of its error shapes ({"error":{code,message}}, Entra's
 * {"error","error_description"}, {"errorDetail":{…}}, problem details), or
 * the HTTP status alone (a bare 403). */
void az_error_text(const az_resp *r, char *out, size_t n);
/* Entra's error code ("invalid_client") and whether the description names
 * AADSTS7000215 (a secret not yet replicated, or wrong). */
int az_is_invalid_client_secret(const az_resp *r);

/* Whether a status should be retried: 408, 429, 500, 502, 503, 504, or a
 * transfer that failed before any status. */
int az_status_retryable(const az_resp *r);

/* "Authorization: Bearer <token>" etc. appended to a list; the token text is
 * copied into curl's list (wipe with az_slist_free_wipe). */
struct curl_slist *az_header_add(struct curl_slist *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void az_slist_free_wipe(struct curl_slist *l);

/* application/x-www-form-urlencoded value escaping (into a heap string). */
char *az_form_escape(const char *s);

#endif
