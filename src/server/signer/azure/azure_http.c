/* Shared libcurl plumbing for the Azure backend (see azure_http.h). */
#include "signer/azure/azure_http.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sodium.h>

#include "core/util.h"

/* One trust store per app registration: the system's anchors, loaded once,
 * plus the profile's caFile. Handed to every TLS context libcurl makes, so a
 * new connection does not re-read the system's CA bundle (30-45 ms of the
 * engine thread each, measured by bench/azure.sh). */
struct az_trust {
    X509_STORE *store;
};

qk_err az_trust_new(const char *pem, az_trust **out)
{
    *out = NULL;
    az_trust *t = xcalloc(1, sizeof(*t));
    if ((t->store = X509_STORE_new()) == NULL || X509_STORE_set_default_paths(t->store) != 1) {
        az_trust_free(t);
        return qk_fail_ossl(QK_ERR_CRYPTO, "azure: cannot load the system's trust anchors");
    }
    if (pem != NULL) {
        BIO *bio = BIO_new_mem_buf(pem, -1);
        X509 *x;
        int n = 0;
        while (bio != NULL && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
            X509_STORE_add_cert(t->store, x); /* takes its own reference */
            X509_free(x);
            n++;
        }
        ERR_clear_error();
        BIO_free(bio);
        if (n == 0) {
            az_trust_free(t);
            return qk_fail(QK_ERR_BAD_DER, "azure CA: no certificate in the PEM");
        }
    }
    *out = t;
    return QK_OK;
}

void az_trust_free(az_trust *t)
{
    if (t == NULL)
        return;
    X509_STORE_free(t->store);
    free(t);
}

static CURLcode ssl_ctx_cb(CURL *e, void *sslctx, void *arg)
{
    (void)e;
    const az_trust *t = arg;
    SSL_CTX_set1_cert_store((SSL_CTX *)sslctx, t->store);
    return CURLE_OK;
}

static size_t body_cb(char *p, size_t size, size_t n, void *arg)
{
    az_resp *r = arg;
    size_t len = size * n;
    if (r->body.len + len > AZ_MAX_RESPONSE) {
        r->too_large = 1;
        return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
    }
    r->body.data = xrealloc(r->body.data, r->body.len + len + 1);
    memcpy(r->body.data + r->body.len, p, len);
    r->body.len += len;
    r->body.data[r->body.len] = '\0';
    return len;
}

/* "Name: value\r\n" → value when the name matches (case-insensitively). */
static int header_value(const char *line, size_t len, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    if (len <= nl + 1 || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
        return 0;
    const char *v = line + nl + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    size_t n = (size_t)(end - v);
    if (n >= cap)
        return 0;
    memcpy(out, v, n);
    out[n] = '\0';
    return 1;
}

static size_t header_cb(char *p, size_t size, size_t n, void *arg)
{
    az_resp *r = arg;
    size_t len = size * n;
    char v[AZ_MAX_HEADER_VALUE];
    if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) {
        /* A new response (after a 100 Continue): forget the previous one's. */
        r->retry_after = -1;
        free(r->op_location);
        r->op_location = NULL;
    } else if (header_value(p, len, "Retry-After", v, sizeof(v))) {
        char *end = NULL;
        long s = strtol(v, &end, 10);
        if (end != v && *end == '\0' && s >= 0)
            r->retry_after = s;
        else {
            time_t t = curl_getdate(v, NULL);
            time_t now = time(NULL);
            if (t != (time_t)-1)
                r->retry_after = t > now ? (long)(t - now) : 0;
        }
    } else if (header_value(p, len, "Operation-Location", v, sizeof(v))) {
        free(r->op_location);
        r->op_location = xstrdup(v);
    }
    return len;
}

void az_resp_reset(az_resp *r)
{
    qk_buf_free(&r->body);
    free(r->op_location);
    memset(r, 0, sizeof(*r));
    r->retry_after = -1;
}

void az_http_prepare(CURL *e, const char *url, const az_trust *trust, struct curl_slist *headers,
                     az_resp *r, long total_timeout_ms)
{
    az_resp_reset(r);
    curl_easy_setopt(e, CURLOPT_URL, url);
    /* Bearer tokens and secrets go to https endpoints only, never elsewhere
     * through a redirect. */
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)CURLPROTO_HTTPS);
#endif
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, total_timeout_ms);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "qwickd-azure/1");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, body_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->curl_err);
    /* Our store, not a CA file read per connection: see az_trust. */
    curl_easy_setopt(e, CURLOPT_CAINFO, NULL);
    curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
    curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, ssl_ctx_cb);
    curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, (void *)trust);
}

qk_err az_http_perform(CURL *e, az_resp *r)
{
    r->curl_rc = curl_easy_perform(e);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->curl_rc != CURLE_OK) {
        r->status = 0;
        if (r->too_large)
            return qk_fail(QK_ERR_TOO_LARGE, "Azure response larger than %u bytes",
                           AZ_MAX_RESPONSE);
        return qk_fail(QK_ERR_IO, "%s", r->curl_err[0] ? r->curl_err : curl_easy_strerror(r->curl_rc));
    }
    return QK_OK;
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

void az_error_text(const az_resp *r, char *out, size_t n)
{
    json_t *j = NULL, *e;
    const char *code = NULL, *msg = NULL;
    if (r->status == 0) {
        snprintf(out, n, "%s", r->too_large ? "response too large"
                               : r->curl_err[0] ? r->curl_err
                                                : curl_easy_strerror(r->curl_rc));
        return;
    }
    if (r->body.len > 0)
        j = json_loadb((const char *)r->body.data, r->body.len, 0, NULL);
    if (json_is_object(j)) {
        if ((e = json_object_get(j, "error")) != NULL && json_is_object(e)) {
            code = jstr(e, "code");
            msg = jstr(e, "message");
        } else if (json_is_string(e)) { /* Entra: error, error_description */
            code = json_string_value(e);
            msg = jstr(j, "error_description");
        } else if ((e = json_object_get(j, "errorDetail")) != NULL && json_is_object(e)) {
            code = jstr(e, "code");
            msg = jstr(e, "message");
        } else if (jstr(j, "title") != NULL || jstr(j, "detail") != NULL) { /* RFC 7807 */
            code = jstr(j, "title");
            msg = jstr(j, "detail");
        }
    }
    /* Error text is Azure's: keep it to one printable line. */
    char clean[512];
    size_t k = 0;
    for (const char *p = msg ? msg : ""; *p && k + 1 < sizeof(clean); p++)
        clean[k++] = isprint((unsigned char)*p) ? *p : ' ';
    clean[k] = '\0';
    if (code != NULL || msg != NULL)
        snprintf(out, n, "HTTP %ld %.64s%s%s", r->status, code ? code : "", msg ? ": " : "", clean);
    else
        snprintf(out, n, "HTTP %ld", r->status);
    for (char *p = out; *p; p++)
        if (!isprint((unsigned char)*p))
            *p = ' ';
    json_decref(j);
}

int az_is_invalid_client_secret(const az_resp *r)
{
    if (r->status != 400 && r->status != 401)
        return 0;
    json_t *j = json_loadb((const char *)r->body.data, r->body.len, 0, NULL);
    const char *err = jstr(j, "error"), *desc = jstr(j, "error_description");
    int yes = err != NULL && strcmp(err, "invalid_client") == 0 && desc != NULL &&
              strstr(desc, "AADSTS7000215") != NULL;
    json_decref(j);
    return yes;
}

int az_status_retryable(const az_resp *r)
{
    switch (r->status) {
    case 0:
        return !r->too_large;
    case 408:
    case 429:
    case 500:
    case 502:
    case 503:
    case 504:
        return 1;
    default:
        return 0;
    }
}

struct curl_slist *az_header_add(struct curl_slist *l, const char *fmt, ...)
{
    va_list ap;
    char *line = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&line, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    struct curl_slist *r = curl_slist_append(l, line);
    sodium_memzero(line, (size_t)n);
    free(line);
    if (r == NULL)
        abort();
    return r;
}

void az_slist_free_wipe(struct curl_slist *l)
{
    for (struct curl_slist *p = l; p != NULL; p = p->next)
        if (p->data != NULL)
            sodium_memzero(p->data, strlen(p->data));
    curl_slist_free_all(l);
}

char *az_form_escape(const char *s)
{
    static const char hexd[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = xmalloc(3 * n + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hexd[*p >> 4];
            *o++ = hexd[*p & 15];
        }
    }
    *o = '\0';
    return out;
}
