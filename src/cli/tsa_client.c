/* RFC 3161 over HTTP with libcurl: see tsa_client.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#include "qwick/tsp.h"
#include "tsa_client.h"

struct tsa_client {
    CURL *curl;
    char **urls;
    size_t nurls;
    const char *last_url;
    long connect_ms, total_ms;
    unsigned attempts;
    long backoff_ms;
    char *cacert;
    char *auth_header;   /* "Authorization: Bearer <key>" (secret), or NULL */
    char *auth_prefix;   /* sent only to URLs under this base */
    long retry_after_ms; /* the last 429/503's Retry-After, 0 if none */
    char curl_err[CURL_ERROR_SIZE];
    char err[512];
};

/* Reply body being received; `too_large` aborts the transfer past the limit. */
typedef struct body {
    unsigned char *p;
    size_t len, cap;
    int too_large;
    int nomem;
} body;

static size_t on_data(char *data, size_t size, size_t nmemb, void *ctx)
{
    body *b = ctx;
    size_t n = size * nmemb;
    if (n > QK_TSP_MAX_REPLY - b->len) {
        b->too_large = 1;
        return 0;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 8192;
        while (cap < b->len + n)
            cap *= 2;
        if (cap > QK_TSP_MAX_REPLY)
            cap = QK_TSP_MAX_REPLY;
        unsigned char *q = realloc(b->p, cap);
        if (q == NULL) {
            b->nomem = 1;
            return 0;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return n;
}

static void set_err(tsa_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(tsa_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
}

tsa_client *tsa_client_new(const char *const *urls, size_t n)
{
    tsa_client *c = NULL;
    if (urls == NULL || n == 0)
        return NULL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return NULL;
    if ((c = calloc(1, sizeof(*c))) == NULL || (c->urls = calloc(n, sizeof(char *))) == NULL)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (urls[i] == NULL || (c->urls[i] = strdup(urls[i])) == NULL)
            goto fail;
        c->nurls++;
    }
    if ((c->curl = curl_easy_init()) == NULL)
        goto fail;
    c->connect_ms = 10000;
    c->total_ms = 30000;
    c->attempts = 3;
    c->backoff_ms = 500;
    return c;
fail:
    tsa_client_free(c);
    if (c == NULL)
        curl_global_cleanup();
    return NULL;
}

void tsa_client_free(tsa_client *c)
{
    if (c != NULL && c->auth_header != NULL) {
        OPENSSL_cleanse(c->auth_header, strlen(c->auth_header));
        free(c->auth_header);
        c->auth_header = NULL;
        free(c->auth_prefix);
        c->auth_prefix = NULL;
    }
    if (c == NULL)
        return;
    if (c->curl != NULL)
        curl_easy_cleanup(c->curl);
    for (size_t i = 0; i < c->nurls; i++)
        free(c->urls[i]);
    free(c->urls);
    free(c->cacert);
    free(c);
    curl_global_cleanup();
}

void tsa_client_set_timeouts(tsa_client *c, long connect_ms, long total_ms)
{
    if (connect_ms > 0)
        c->connect_ms = connect_ms;
    if (total_ms > 0)
        c->total_ms = total_ms;
}

void tsa_client_set_retries(tsa_client *c, unsigned attempts, long backoff_ms)
{
    c->attempts = attempts ? attempts : 1;
    c->backoff_ms = backoff_ms >= 0 ? backoff_ms : 0;
}

int tsa_client_set_cacert(tsa_client *c, const char *path)
{
    char *p = NULL;
    if (path != NULL && (p = strdup(path)) == NULL)
        return -1;
    free(c->cacert);
    c->cacert = p;
    return 0;
}

const char *tsa_client_error(const tsa_client *c)
{
    return c ? c->err : "";
}
const char *tsa_client_last_url(const tsa_client *c)
{
    return c ? c->last_url : NULL;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Failures worth another attempt at the same URL. */
static int transient_curl(CURLcode cc)
{
    switch (cc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        return 1;
    default:
        return 0;
    }
}

typedef enum { TRY_OK, TRY_RETRY, TRY_NEXT_URL, TRY_FATAL } try_result;

int tsa_client_set_bearer(tsa_client *c, const char *key, const char *base)
{
    if (c == NULL || key == NULL || base == NULL)
        return -1;
    size_t n = strlen("Authorization: Bearer ") + strlen(key) + 1;
    if ((c->auth_header = malloc(n)) == NULL || (c->auth_prefix = strdup(base)) == NULL)
        return -1;
    snprintf(c->auth_header, n, "Authorization: Bearer %s", key);
    return 0;
}

/* Whether `url` is under the base the credential belongs to. */
static int gets_credential(const tsa_client *c, const char *url)
{
    size_t n = c->auth_prefix != NULL ? strlen(c->auth_prefix) : 0;
    return c->auth_header != NULL && strncmp(url, c->auth_prefix, n) == 0 &&
           (url[n] == '/' || url[n] == '\0');
}

/* One POST. On TRY_OK *reply holds the body. */
static try_result try_once(tsa_client *c, const char *url, struct curl_slist *hdrs, qk_slice req,
                           qk_buf *reply, qk_err *rc)
{
    body b = {0};
    CURL *h = c->curl;
    long status = 0;
    char *ctype = NULL;

    /* Reset per attempt but keep the handle: its connection cache survives. */
    curl_easy_reset(h);
    c->curl_err[0] = '\0';
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->curl_err);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 3L);
    curl_easy_setopt(h, CURLOPT_POSTREDIR, (long)CURL_REDIR_POST_ALL);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, (const char *)req.data);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req.len);
    /* The API key goes only to the server's own TSA (and, by libcurl's rule,
     * never on to another host a redirect names). */
    struct curl_slist *with_auth = NULL;
    if (gets_credential(c, url)) {
        with_auth = curl_slist_append(NULL, c->auth_header);
        for (struct curl_slist *l = hdrs; with_auth != NULL && l != NULL; l = l->next)
            with_auth = curl_slist_append(with_auth, l->data);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, with_auth != NULL ? with_auth : hdrs);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "qwick-tsa/1");
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->connect_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->total_ms);
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)QK_TSP_MAX_REPLY);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    if (c->cacert != NULL)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->cacert);

    CURLcode cc = curl_easy_perform(h);
    try_result res = TRY_NEXT_URL;
    if (b.nomem) {
        *rc = QK_ERR_NOMEM;
        set_err(c, "%s: out of memory", url);
        res = TRY_FATAL;
        goto out;
    }
    if (b.too_large || cc == CURLE_FILESIZE_EXCEEDED) {
        *rc = QK_ERR_TOO_LARGE;
        set_err(c, "%s: reply larger than %u bytes", url, QK_TSP_MAX_REPLY);
        goto out;
    }
    if (cc != CURLE_OK) {
        *rc = QK_ERR_IO;
        set_err(c, "%s: %s", url, c->curl_err[0] ? c->curl_err : curl_easy_strerror(cc));
        res = transient_curl(cc) ? TRY_RETRY : TRY_NEXT_URL;
        goto out;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        curl_off_t ra = 0;
        *rc = QK_ERR_IO;
        set_err(c, "%s: HTTP status %ld", url, status);
        res = (status >= 500 || status == 429) ? TRY_RETRY : TRY_NEXT_URL;
        if ((status == 429 || status == 503) &&
            curl_easy_getinfo(h, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0)
            c->retry_after_ms = ra > 30 ? 30000L : (long)ra * 1000L;
        goto out;
    }
    curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ctype);
    size_t tlen = ctype ? strcspn(ctype, "; \t") : 0;
    if (ctype == NULL || tlen != strlen("application/timestamp-reply") ||
        strncasecmp(ctype, "application/timestamp-reply", tlen) != 0) {
        *rc = QK_ERR_IO;
        set_err(c, "%s: reply content type is '%s', expected application/timestamp-reply", url,
                ctype ? ctype : "(none)");
        goto out;
    }
    reply->data = b.p;
    reply->len = b.len;
    b.p = NULL;
    res = TRY_OK;
out:
    curl_slist_free_all(with_auth);
    free(b.p);
    return res;
}

qk_err tsa_client_send(void *ctx, qk_slice request, qk_buf *reply)
{
    tsa_client *c = ctx;
    qk_err rc = QK_ERR_IO;
    struct curl_slist *hdrs = NULL, *t;

    if (reply == NULL)
        return QK_ERR_INVALID_ARG;
    reply->data = NULL;
    reply->len = 0;
    if (c == NULL || request.data == NULL || request.len == 0)
        return QK_ERR_INVALID_ARG;
    c->err[0] = '\0';
    c->last_url = NULL;
    /* An empty Expect: avoids the 100-continue round trip on every request. */
    static const char *const lines[] = {"Content-Type: application/timestamp-query",
                                        "Accept: application/timestamp-reply", "Expect:"};
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        if ((t = curl_slist_append(hdrs, lines[i])) == NULL) {
            curl_slist_free_all(hdrs);
            set_err(c, "out of memory");
            return QK_ERR_NOMEM;
        }
        hdrs = t;
    }
    for (size_t u = 0; u < c->nurls; u++) {
        long delay = c->backoff_ms;
        for (unsigned a = 0; a < c->attempts; a++) {
            if (a > 0) {
                /* A server's Retry-After (capped at 30 s) wins over the backoff. */
                sleep_ms(c->retry_after_ms > delay ? c->retry_after_ms : delay);
                delay *= 2;
            }
            c->retry_after_ms = 0;
            try_result r = try_once(c, c->urls[u], hdrs, request, reply, &rc);
            if (r == TRY_OK) {
                c->last_url = c->urls[u];
                c->err[0] = '\0';
                rc = QK_OK;
                goto out;
            }
            if (r == TRY_FATAL)
                goto out;
            if (r == TRY_NEXT_URL)
                break;
        }
    }
out:
    curl_slist_free_all(hdrs);
    return rc;
}
