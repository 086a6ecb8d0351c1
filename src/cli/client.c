/* qwickd API client (see client.h). */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cli.h"
#include "client.h"
#include "common/b64.h"
#include "qwick/authenticode.h"

#ifndef QWICK_VERSION
#define QWICK_VERSION "0.1.0"
#endif

struct client {
    CURL *curl;
    struct curl_slist *headers; /* holds the Authorization header: wiped on free */
    char *base;                 /* server URL without trailing slash */
    int plain;                  /* http:// (to a loopback IP literal only) */
    char errbuf[CURL_ERROR_SIZE];
    uint64_t rng; /* jitter for backoff, per client so threads never share it */
    const client_cancel_flag *cancel;
};

/* A response body being received; capped at CLIENT_MAX_RESPONSE. */
typedef struct resp_body {
    char *data;
    size_t len, cap;
    int too_large;
} resp_body;

static size_t on_write(char *p, size_t size, size_t nmemb, void *ctx)
{
    resp_body *b = ctx;
    size_t n = size * nmemb;
    if (n > CLIENT_MAX_RESPONSE - b->len) {
        b->too_large = 1;
        return 0; /* makes curl fail with CURLE_WRITE_ERROR */
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (d == NULL) {
            fputs("qwick: out of memory\n", stderr);
            abort();
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* Plain HTTP would send the bearer key in clear: allow it only to an IP
 * literal of this host, 127.0.0.0/8 or ::1. A name ("localhost",
 * "127.attacker.example") resolves to wherever DNS says; a literal cannot. */
static int is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    char buf[INET6_ADDRSTRLEN + 2];
    size_t n = strlen(host);
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (n >= 2 && n - 2 < sizeof(buf) && host[0] == '[' && host[n - 1] == ']') {
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = '\0';
        host = buf;
    }
    return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* Called once the connection is up and before the request (and its bearer
 * key) is sent: over plain HTTP, the address actually connected to must be
 * a loopback address too. */
static int check_peer(void *ctx, char *peer_ip, char *local_ip, int peer_port, int local_port)
{
    const client *c = ctx;
    (void)local_ip, (void)peer_port, (void)local_port;
    if (!c->plain || is_loopback(peer_ip))
        return CURL_PREREQFUNC_OK;
    return CURL_PREREQFUNC_ABORT;
}

/* 0: https; 1: plain http to a loopback IP literal; -1: refused (*err). */
static int check_url(const char *url, char **err)
{
    int rc = -1;
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL;

    if (u == NULL) {
        *err = xstrdup("out of memory");
        goto out;
    }
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        *err = xasprintf("invalid server URL '%s'", url);
        goto out;
    }
    if (strcasecmp(scheme, "https") != 0 &&
        !(strcasecmp(scheme, "http") == 0 && is_loopback(host))) {
        *err = xasprintf("server URL '%s': use https (plain http only to a loopback IP "
                         "address: 127.0.0.0/8 or [::1])",
                         url);
        goto out;
    }
    rc = strcasecmp(scheme, "http") == 0 ? 1 : 0;
out:
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return rc;
}

client *client_new(const cli_config *cfg, char **err)
{
    client *c = NULL, *ret = NULL;
    char *auth = NULL;
    struct curl_slist *h;

    *err = NULL;
    int plain = check_url(cfg->server, err);
    if (plain < 0)
        goto out;
    c = xcalloc(1, sizeof(*c));
    c->plain = plain;
    c->base = xstrdup(cfg->server);
    c->rng = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)c ^ 0x9e3779b97f4a7c15u;
    if ((c->curl = curl_easy_init()) == NULL) {
        *err = xstrdup("cannot initialise libcurl");
        goto out;
    }
    auth = xasprintf("Authorization: Bearer %s", cfg->api_key);
    /* "Expect:" drops the 100-continue round trip: bodies are tiny. */
    const char *hdrs[] = {auth, "Content-Type: application/json", "Accept: application/json",
                          "Expect:"};
    for (size_t i = 0; i < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
        if ((h = curl_slist_append(c->headers, hdrs[i])) == NULL) {
            *err = xstrdup("out of memory");
            goto out;
        }
        c->headers = h;
    }

    CURL *k = c->curl;
    curl_easy_setopt(k, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(k, CURLOPT_USERAGENT, "qwick/" QWICK_VERSION);
    curl_easy_setopt(k, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(k, CURLOPT_WRITEFUNCTION, on_write);
    /* Worker threads: no SIGALRM-based DNS timeouts. */
    curl_easy_setopt(k, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(k, CURLOPT_CONNECTTIMEOUT, CLIENT_CONNECT_TIMEOUT_S);
    curl_easy_setopt(k, CURLOPT_TIMEOUT, CLIENT_REQUEST_TIMEOUT_S);
    curl_easy_setopt(k, CURLOPT_TCP_KEEPALIVE, 1L);
    /* Never follow redirects: a redirect could carry the bearer key elsewhere. */
    curl_easy_setopt(k, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(k, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(k, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(k, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(k, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(k, CURLOPT_PREREQFUNCTION, check_peer);
    curl_easy_setopt(k, CURLOPT_PREREQDATA, c);
    if (cfg->cacert != NULL)
        curl_easy_setopt(k, CURLOPT_CAINFO, cfg->cacert);
    ret = c;
    c = NULL;
out:
    if (auth != NULL) {
        OPENSSL_cleanse(auth, strlen(auth));
        free(auth);
    }
    client_free(c);
    return ret;
}

static int on_progress(void *ctx, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    const client *c = ctx;
    (void)dt, (void)dn, (void)ut, (void)un;
    return c->cancel != NULL && *c->cancel; /* non-zero aborts the transfer */
}

void client_set_cancel(client *c, const client_cancel_flag *flag)
{
    c->cancel = flag;
    curl_easy_setopt(c->curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c->curl, CURLOPT_XFERINFODATA, c);
    curl_easy_setopt(c->curl, CURLOPT_NOPROGRESS, 0L);
}

void client_free(client *c)
{
    if (c == NULL)
        return;
    if (c->curl != NULL)
        curl_easy_cleanup(c->curl);
    for (struct curl_slist *h = c->headers; h != NULL; h = h->next)
        OPENSSL_cleanse(h->data, strlen(h->data));
    curl_slist_free_all(c->headers);
    free(c->base);
    free(c);
}

/* --- base64 (src/common/b64.c: strict, canonical) -------------------- */

static char *b64_text(qk_slice in)
{
    char *out = xmalloc(B64_ENCODED_SIZE(in.len));
    b64_encode(in.data, in.len, out);
    return out;
}

static int b64_buf(const char *in, size_t len, qk_buf *out)
{
    out->data = NULL;
    out->len = 0;
    if (len == 0 || len > CLIENT_MAX_RESPONSE)
        return -1;
    uint8_t *d = xmalloc(len / 4 * 3 + 3);
    size_t n;
    if (b64_decode(in, len, d, len / 4 * 3 + 3, &n) != 0) {
        free(d);
        return -1;
    }
    out->data = d;
    out->len = n;
    return 0;
}

/* --- one HTTP exchange with retries ------------------------------------ */

int client_cancelled(const client *c)
{
    return c->cancel != NULL && *c->cancel;
}

/* Sleeps in short steps so an interrupt is noticed promptly. */
void client_nap(const client *c, long ms)
{
    while (ms > 0 && !client_cancelled(c)) {
        long step = ms < 100 ? ms : 100;
        struct timespec ts = {0, step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
}

/* xorshift64: jitter only, nothing secret. */
static uint64_t next_random(client *c)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

long client_jitter(client *c, long ms)
{
    return ms + (long)(next_random(c) % (uint64_t)(ms / 4 + 1));
}

/* 250 ms doubling per attempt, with up to 50% jitter so parallel workers
 * (and parallel CI jobs) do not retry in lockstep. */
static long backoff_ms(client *c, int attempt)
{
    long ms = 250L << (attempt < 8 ? attempt : 8);
    ms += (long)(next_random(c) % (uint64_t)(ms / 2 + 1));
    return ms < CLIENT_MAX_BACKOFF_S * 1000L ? ms : CLIENT_MAX_BACKOFF_S * 1000L;
}

/* Failures where the request never reached the server, so resending it
 * cannot sign twice. */
static int retryable_curl(client *c, CURLcode cc)
{
    curl_off_t connect_us = 0;
    switch (cc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return 1;
    case CURLE_OPERATION_TIMEDOUT:
        /* Only when the timeout hit while still connecting. */
        return curl_easy_getinfo(c->curl, CURLINFO_CONNECT_TIME_T, &connect_us) == CURLE_OK &&
               connect_us == 0;
    default:
        return 0;
    }
}

/* "server: <code>: <message>" from {"error":{"code","message"}}, else the HTTP status. */
static char *server_error(long status, json_t *j)
{
    json_t *e = json_object_get(j, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    if (code != NULL && msg != NULL)
        return xasprintf("server: %s: %s", code, msg);
    if (code != NULL)
        return xasprintf("server: %s (HTTP %ld)", code, status);
    if (json_is_string(e))
        return xasprintf("server: %s (HTTP %ld)", json_string_value(e), status);
    return xasprintf("server: HTTP %ld", status);
}

/* The handle set up for `method` on `url`: a body only with POST. */
static void set_method(CURL *k, const char *method, const char *url, const char *req)
{
    curl_easy_setopt(k, CURLOPT_URL, url);
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(k, CURLOPT_POSTFIELDS, req);
        curl_easy_setopt(k, CURLOPT_POSTFIELDSIZE, (long)strlen(req));
    } else {
        curl_easy_setopt(k, CURLOPT_HTTPGET, 1L);
    }
    /* The handle is reused: a DELETE must not stick to the next call. */
    curl_easy_setopt(k, CURLOPT_CUSTOMREQUEST, strcmp(method, "DELETE") == 0 ? "DELETE" : NULL);
}

/* The answer's Retry-After in seconds (0: none), at most CLIENT_MAX_BACKOFF_S. */
static long retry_after_s(CURL *k)
{
    curl_off_t ra = 0;
    if (curl_easy_getinfo(k, CURLINFO_RETRY_AFTER, &ra) != CURLE_OK || ra <= 0)
        return 0;
    return ra >= CLIENT_MAX_BACKOFF_S ? CLIENT_MAX_BACKOFF_S : (long)ra;
}

/* One request with retries (connection errors, 429/503 with Retry-After):
 * the final status, Retry-After and body in *status, *ra and *b (the caller
 * frees b->data). */
static int perform(client *c, const char *method, const char *path, const char *req, long *status,
                   long *ra, resp_body *b, char **err)
{
    int rc = -1;
    char *url = xasprintf("%s%s", c->base, path);
    CURL *k = c->curl;

    *status = 0;
    *ra = 0;
    set_method(k, method, url, req);
    curl_easy_setopt(k, CURLOPT_WRITEDATA, b);

    for (int attempt = 0;; attempt++) {
        long wait_ms;
        b->len = 0;
        b->too_large = 0;
        c->errbuf[0] = '\0';
        CURLcode cc = curl_easy_perform(k);
        if (client_cancelled(c)) {
            *err = xstrdup("interrupted");
            goto out;
        }
        if (cc != CURLE_OK) {
            if (b->too_large) {
                *err = xasprintf("server response larger than %u bytes", CLIENT_MAX_RESPONSE);
                goto out;
            }
            if (attempt + 1 < CLIENT_MAX_ATTEMPTS && retryable_curl(c, cc)) {
                client_nap(c, backoff_ms(c, attempt));
                continue;
            }
            *err = xasprintf("cannot reach %s: %s", c->base,
                             c->errbuf[0] ? c->errbuf : curl_easy_strerror(cc));
            goto out;
        }
        curl_easy_getinfo(k, CURLINFO_RESPONSE_CODE, status);
        *ra = retry_after_s(k);
        if ((*status == 429 || *status == 503) && attempt + 1 < CLIENT_MAX_ATTEMPTS) {
            wait_ms = *ra > 0 ? *ra * 1000L : backoff_ms(c, attempt);
            client_nap(c, wait_ms);
            continue;
        }
        break;
    }
    rc = 0;
out:
    /* Don't leave a pointer to the caller's buffer in the handle. */
    curl_easy_setopt(k, CURLOPT_WRITEDATA, NULL);
    free(url);
    return rc;
}

int client_call(client *c, const char *method, const char *path, const char *body,
                client_answer *ans, char **err)
{
    int rc = -1;
    resp_body b = {0};
    json_t *j = NULL;

    memset(ans, 0, sizeof(*ans));
    if (perform(c, method, path, body, &ans->status, &ans->retry_after, &b, err) != 0)
        goto out;

    json_error_t jerr;
    if (b.len > 0)
        j = json_loadb(b.data, b.len, JSON_REJECT_DUPLICATES, &jerr);
    if (ans->status < 200 || ans->status >= 300) {
        *err = server_error(ans->status, j);
        goto out;
    }
    if (!json_is_object(j)) {
        *err = xasprintf("server: HTTP %ld with a body that is not a JSON object", ans->status);
        goto out;
    }
    ans->json = j;
    j = NULL;
    rc = 0;
out:
    json_decref(j);
    free(b.data);
    return rc;
}

int client_get_json(client *c, const char *path, json_t **out, char **err)
{
    client_answer ans;
    int rc = client_call(c, "GET", path, NULL, &ans, err);
    *out = ans.json;
    return rc;
}

int client_get_text(client *c, const char *path, char **out, size_t *len, char **err)
{
    resp_body b = {0};
    long status = 0, ra = 0;
    *out = NULL;
    *len = 0;
    if (perform(c, "GET", path, NULL, &status, &ra, &b, err) != 0)
        goto fail;
    if (status < 200 || status >= 300) {
        json_error_t jerr;
        json_t *j = json_loadb(b.data, b.len, JSON_REJECT_DUPLICATES, &jerr);
        *err = server_error(status, j);
        json_decref(j);
        goto fail;
    }
    *out = xmalloc(b.len + 1);
    memcpy(*out, b.data, b.len);
    (*out)[b.len] = '\0';
    *len = b.len;
    free(b.data);
    return 0;
fail:
    free(b.data);
    return -1;
}

/* --- sign/digest ------------------------------------------------------- */

static const char *opt_string(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s != NULL && s[0] != '\0' ? s : NULL;
}

/* Why a request ended unsigned: "error" (a reason, or an {"code","message"}
 * object), else the older "failureReason". */
static const char *end_reason(json_t *j)
{
    json_t *e = json_object_get(j, "error");
    if (json_is_object(e))
        return opt_string(e, "message");
    return json_is_string(e) ? opt_string(j, "error") : opt_string(j, "failureReason");
}

/* The chain is informational (the signature embeds it): skip bad entries. */
static void take_chain(json_t *j, client_sign_res *res)
{
    json_t *chain = json_object_get(j, "certificateChain");
    size_t n = json_array_size(chain);
    if (n > QK_MAX_CHAIN_LEN)
        n = QK_MAX_CHAIN_LEN;
    res->chain = xcalloc(n, sizeof(*res->chain));
    for (size_t i = 0; i < n; i++) {
        const char *c = json_string_value(json_array_get(chain, i));
        if (c != NULL && b64_buf(c, strlen(c), &res->chain[res->nchain]) == 0)
            res->nchain++;
    }
}

int client_take_signed(json_t *j, client_sign_res *res, char **err)
{
    const char *status = opt_string(j, "status");
    const char *sig = opt_string(j, "signature");
    const char *id = opt_string(j, "requestId");
    const char *ts = opt_string(j, "timestampUrl");
    const char *why = end_reason(j);

    memset(res, 0, sizeof(*res));
    if (status != NULL && strcmp(status, "SIGNED") != 0) {
        *err = xasprintf("server: request %s ended %s%s%s", id ? id : "?", status, why ? ": " : "",
                         why ? why : "");
        return -1;
    }
    if (sig == NULL) {
        *err = xstrdup("server: answer has no signature");
        return -1;
    }
    if (b64_buf(sig, strlen(sig), &res->signature) != 0) {
        *err = xstrdup("server: signature is not valid base64");
        return -1;
    }
    take_chain(j, res);
    res->request_id = id ? xstrdup(id) : NULL;
    res->timestamp_url = ts ? xstrdup(ts) : NULL;
    res->timestamped = json_is_true(json_object_get(j, "timestamped"));
    return 0;
}

/* The request body; NULL when a metadata string is not UTF-8 (json_string()
 * refuses those). */
static char *sign_body(const client_sign_req *req)
{
    char *digest = b64_text(req->digest), *text = NULL;
    json_t *meta = json_object(), *body = json_object();
    if (meta == NULL || body == NULL) {
        fputs("qwick: out of memory\n", stderr);
        abort();
    }
    if (req->filename != NULL)
        json_object_set_new(meta, "filename", json_string(req->filename));
    if (req->description != NULL)
        json_object_set_new(meta, "description", json_string(req->description));
    if (req->url != NULL)
        json_object_set_new(meta, "url", json_string(req->url));
    if (req->justification != NULL)
        json_object_set_new(meta, "justification", json_string(req->justification));
    json_object_set_new(body, "digest", json_string(digest));
    json_object_set_new(body, "algorithm", json_string(qk_hash_name(req->alg)));
    json_object_set_new(body, "format", json_string(req->format));
    json_object_set_new(body, "profile", json_string(req->profile));
    json_object_set(body, "metadata", meta);
    if (req->no_timestamp)
        json_object_set_new(body, "timestamp", json_false());
    else if (req->server_timestamp)
        json_object_set_new(body, "timestamp", json_string("server"));
    if (req->async)
        json_object_set_new(body, "async", json_true());
    if (json_object_size(meta) ==
        (size_t)(!!req->filename + !!req->description + !!req->url + !!req->justification))
        text = json_dumps(body, JSON_COMPACT);
    json_decref(meta);
    json_decref(body);
    free(digest);
    return text;
}

int client_sign_submit(client *c, const client_sign_req *req, client_answer *ans, char **err)
{
    char *text = sign_body(req);
    int rc = -1;

    memset(ans, 0, sizeof(*ans));
    *err = NULL;
    if (text == NULL) {
        *err =
            xstrdup("cannot encode the request (--description, --url and --justification must be "
                    "UTF-8)");
        return -1;
    }
    if (client_call(c, "POST", "/api/v1/sign/digest", text, ans, err) != 0)
        goto out;
    if (ans->status != 200 && ans->status != 202) {
        *err = xasprintf("server: unexpected HTTP %ld to a signing request", ans->status);
        json_decref(ans->json);
        ans->json = NULL;
        goto out;
    }
    rc = 0;
out:
    free(text);
    return rc;
}

void client_sign_res_free(client_sign_res *res)
{
    if (res == NULL)
        return;
    free(res->request_id);
    free(res->timestamp_url);
    qk_buf_free(&res->signature);
    for (size_t i = 0; i < res->nchain; i++)
        qk_buf_free(&res->chain[i]);
    free(res->chain);
    memset(res, 0, sizeof(*res));
}
