/* Completion callbacks (callbacks.h): one sender thread, a list of
 * deliveries ordered by when they are due. */
#include "api/callbacks.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <sodium.h>

#include "auth/callback_key.h"
#include "common/hex.h"
#include "core/cidr.h"
#include "core/log.h"
#include "core/util.h"

#define CALLBACK_ATTEMPTS 6 /* then dropped, with a log line */
#define CALLBACK_FIRST_DELAY_MS 1000
#define CALLBACK_TIMEOUT_MS 10000L
#define CALLBACK_PENDING_MAX 10000 /* more waiting than this: new ones are dropped */

typedef struct delivery {
    int64_t org;
    char id[40];
    char *url, *body;
    int attempts;
    int64_t due_ms;
    struct delivery *next;
} delivery;

struct callbacks {
    server *srv;
    cidr *allow;
    size_t nallow;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    delivery *pending; /* by due_ms */
    size_t npending;
    int stop;
    uint64_t delivered, failed_attempts, dropped;
};

static void delivery_free(delivery *d)
{
    free(d->url);
    free(d->body);
    free(d);
}

/* Inserts by due time; the caller holds the lock. */
static void insert_due(callbacks *cb, delivery *d)
{
    delivery **pp = &cb->pending;
    while (*pp != NULL && (*pp)->due_ms <= d->due_ms)
        pp = &(*pp)->next;
    d->next = *pp;
    *pp = d;
    cb->npending++;
    pthread_cond_signal(&cb->cond);
}

/* curl's socket opener: only addresses inside the allowed ranges. */
static curl_socket_t open_allowed(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    callbacks *cb = clientp;
    if (purpose != CURLSOCKTYPE_IPCXN || !cidr_match(cb->allow, cb->nallow, &a->addr))
        return CURL_SOCKET_BAD;
    return socket(a->family, a->socktype, a->protocol);
}

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

/* One POST; 0 when answered 2xx. */
static int post_once(callbacks *cb, delivery *d, char *why, size_t why_len)
{
    uint8_t key[CALLBACK_SECRET_LEN], mac[crypto_auth_hmacsha256_BYTES];
    char mac_hex[2 * sizeof(mac) + 1], header[160];
    qk_err rc = callback_secret(cb->srv->store, cb->srv->keyring, d->org, key);
    if (rc != QK_OK) {
        snprintf(why, why_len, "callback secret: %s", qk_error_detail());
        return -1;
    }
    int64_t t = now_unix();
    char *signed_text = xasprintf("%" PRId64 ".%s", t, d->body);
    crypto_auth_hmacsha256(mac, (const uint8_t *)signed_text, strlen(signed_text), key);
    sodium_memzero(key, sizeof(key));
    free(signed_text);
    hex_encode(mac, sizeof(mac), mac_hex);
    snprintf(header, sizeof(header), "Qwick-Signature: t=%" PRId64 ",v1=%s", t, mac_hex);

    CURL *e = curl_easy_init();
    struct curl_slist *h = NULL;
    char err[CURL_ERROR_SIZE] = "";
    long status = 0;
    if (e == NULL) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, header);
    curl_easy_setopt(e, CURLOPT_URL, d->url);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_NOPROXY, "*"); /* the address checked is the one reached */
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, CALLBACK_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, CALLBACK_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "qwickd-callback/1");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, d->body);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_allowed);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, cb);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, err);
    CURLcode c = curl_easy_perform(e);
    if (c == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    if (c == CURLE_COULDNT_CONNECT && err[0] == '\0')
        snprintf(why, why_len, "not reachable (or not inside queue.callback_allow)");
    else if (c != CURLE_OK)
        snprintf(why, why_len, "%s", err[0] ? err : curl_easy_strerror(c));
    else if (status < 200 || status > 299)
        snprintf(why, why_len, "answered %ld", status);
    else
        return 0;
    return -1;
}

static void *sender(void *arg)
{
    callbacks *cb = arg;
    pthread_mutex_lock(&cb->lock);
    while (!cb->stop) {
        delivery *d = cb->pending;
        int64_t now = now_unix_ms();
        if (d == NULL || d->due_ms > now) {
            cond_wait_ms(&cb->cond, &cb->lock, d == NULL ? 1000 : d->due_ms - now);
            continue;
        }
        cb->pending = d->next;
        cb->npending--;
        pthread_mutex_unlock(&cb->lock);
        char why[256] = "";
        int ok = post_once(cb, d, why, sizeof(why)) == 0;
        pthread_mutex_lock(&cb->lock);
        d->attempts++;
        if (ok) {
            cb->delivered++;
            delivery_free(d);
        } else if (d->attempts >= CALLBACK_ATTEMPTS) {
            cb->failed_attempts++;
            cb->dropped++;
            log_kv(LOG_WARN, "callback dropped", "request_id", d->id, "detail", why, NULL);
            delivery_free(d);
        } else {
            cb->failed_attempts++;
            log_kv(LOG_INFO, "callback failed, will retry", "request_id", d->id, "detail", why,
                   NULL);
            int64_t delay = (int64_t)CALLBACK_FIRST_DELAY_MS << (d->attempts - 1);
            d->due_ms = now_unix_ms() + delay / 2 + randombytes_uniform((uint32_t)(delay / 2) + 1);
            insert_due(cb, d);
        }
    }
    pthread_mutex_unlock(&cb->lock);
    return NULL;
}

qk_err callbacks_new(server *srv, char *const *allow, size_t n, callbacks **out)
{
    callbacks *cb = xcalloc(1, sizeof(*cb));
    cb->srv = srv;
    cb->allow = xcalloc(n ? n : 1, sizeof(cidr));
    for (size_t i = 0; i < n; i++)
        if (cidr_parse(allow[i], &cb->allow[cb->nallow]) == 0)
            cb->nallow++;
    pthread_mutex_init(&cb->lock, NULL);
    pthread_cond_init(&cb->cond, NULL);
    /* No allowed address, no callback: no sender thread either. */
    if (cb->nallow > 0 && pthread_create(&cb->thread, NULL, sender, cb) != 0) {
        pthread_cond_destroy(&cb->cond);
        pthread_mutex_destroy(&cb->lock);
        free(cb->allow);
        free(cb);
        return qk_fail(QK_ERR_IO, "cannot start the callback sender");
    }
    *out = cb;
    return QK_OK;
}

void callbacks_stop(callbacks *cb)
{
    if (cb == NULL)
        return;
    pthread_mutex_lock(&cb->lock);
    int joined = cb->stop;
    cb->stop = 1;
    pthread_cond_signal(&cb->cond);
    pthread_mutex_unlock(&cb->lock);
    if (!joined && cb->nallow > 0)
        pthread_join(cb->thread, NULL);
}

void callbacks_free(callbacks *cb)
{
    if (cb == NULL)
        return;
    callbacks_stop(cb);
    if (cb->npending > 0)
        log_kv(LOG_WARN, "callbacks not delivered at shutdown", NULL);
    while (cb->pending != NULL) {
        delivery *d = cb->pending;
        cb->pending = d->next;
        delivery_free(d);
    }
    pthread_cond_destroy(&cb->cond);
    pthread_mutex_destroy(&cb->lock);
    free(cb->allow);
    free(cb);
}

/* A host that is an address literal must be allowed (a name is checked
 * when it is reached, on the address it resolves to). */
static int literal_allowed(const callbacks *cb, const char *host)
{
    char h[64];
    size_t n = strlen(host);
    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    memset(&a6, 0, sizeof(a6));
    memset(&a4, 0, sizeof(a4));
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof(h)) {
        memcpy(h, host + 1, n - 2);
        h[n - 2] = '\0';
    } else if (n < sizeof(h)) {
        memcpy(h, host, n + 1);
    } else {
        return 1;
    }
    if (inet_pton(AF_INET, h, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        return cidr_match(cb->allow, cb->nallow, (const struct sockaddr *)&a4);
    }
    if (inet_pton(AF_INET6, h, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        return cidr_match(cb->allow, cb->nallow, (const struct sockaddr *)&a6);
    }
    return 1;
}

const char *callbacks_check_url(const callbacks *cb, const char *url)
{
    if (cb == NULL || cb->nallow == 0)
        return "callbacks are off on this server (queue.callback_allow is empty)";
    if (strlen(url) > CALLBACK_URL_MAX)
        return "the callbackUrl is too long";
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL;
    const char *why = NULL;
    if (u == NULL || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        why = "the callbackUrl is not an absolute URL";
    else if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)
        why = "the callbackUrl must be http or https";
    else if (strchr(url, '@') != NULL)
        why = "the callbackUrl must not carry credentials";
    else if (!literal_allowed(cb, host))
        why = "the callbackUrl's address is not inside queue.callback_allow";
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return why;
}

void callbacks_send(callbacks *cb, const store_sign_request *r)
{
    if (cb == NULL || cb->nallow == 0 || r->callback_url == NULL)
        return;
    json_t *j = json_pack("{s:s,s:s,s:s,s:I}", "requestId", r->id, "status",
                          req_status_name(r->status), "profile", r->profile ? r->profile : "",
                          "completedAt", (json_int_t)r->completed_at);
    if (j != NULL && r->error != NULL)
        json_object_set_new(j, "error", json_string(r->error));
    char *body = j != NULL ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    if (body == NULL)
        return;
    delivery *d = xcalloc(1, sizeof(*d));
    d->org = r->org_id;
    snprintf(d->id, sizeof(d->id), "%s", r->id);
    d->url = xstrdup(r->callback_url);
    d->body = body;
    d->due_ms = now_unix_ms();
    pthread_mutex_lock(&cb->lock);
    if (cb->stop || cb->npending >= CALLBACK_PENDING_MAX) {
        cb->dropped++;
        pthread_mutex_unlock(&cb->lock);
        log_kv(LOG_WARN, "callback dropped: shutting down or too many pending", "request_id", r->id,
               NULL);
        delivery_free(d);
        return;
    }
    insert_due(cb, d);
    pthread_mutex_unlock(&cb->lock);
}

char *callbacks_metrics_render(callbacks *cb)
{
    pthread_mutex_lock(&cb->lock);
    char *text = xasprintf("# HELP qwickd_callbacks_total Callback deliveries by outcome.\n"
                           "# TYPE qwickd_callbacks_total counter\n"
                           "qwickd_callbacks_total{outcome=\"delivered\"} %" PRIu64 "\n"
                           "qwickd_callbacks_total{outcome=\"failed_attempt\"} %" PRIu64 "\n"
                           "qwickd_callbacks_total{outcome=\"dropped\"} %" PRIu64 "\n"
                           "# HELP qwickd_callbacks_pending Callbacks waiting to be delivered.\n"
                           "# TYPE qwickd_callbacks_pending gauge\n"
                           "qwickd_callbacks_pending %zu\n",
                           cb->delivered, cb->failed_attempts, cb->dropped, cb->npending);
    pthread_mutex_unlock(&cb->lock);
    return text;
}
