/* Shared API plumbing (authentication, strict JSON) and the small handlers:
 * API keys, health, metrics. Signing lives in api_sign.c. */
#include "api/api.h"
#include "api/callbacks.h"
#include "api/queue.h"
#include "signer/azure/azure.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "auth/apikey.h"
#include "signer/profile.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/util.h"

/* Failed authentications, counted per (org, source address, reason) and
 * written as one `auth.failure` entry per bucket and interval, so a flood
 * of bad keys costs a few rows, not one per request. Unknown keys belong
 * to no org: their entries go to the instance log (org 0); revoked and
 * expired keys to their org's. Past AUTHFAIL_BUCKETS sources, further ones
 * share one bucket with the address "*". */
#define AUTHFAIL_BUCKETS 256
#define AUTHFAIL_INTERVAL_S 60

typedef struct authfail_bucket {
    int64_t org;
    char ip[INET6_ADDRSTRLEN];
    const char *reason;
    int64_t count, first_ms, last_ms;
} authfail_bucket;

static struct {
    pthread_mutex_t lock;
    authfail_bucket b[AUTHFAIL_BUCKETS + 1];
    size_t n;
    int64_t window_start_ms;
} authfail = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int64_t authfail_interval_ms(void)
{
    /* A test knob: integration tests cannot wait a minute. */
    const char *e = getenv("QWICKD_AUTH_FAILURE_INTERVAL_MS");
    long v = e != NULL ? strtol(e, NULL, 10) : 0;
    return v > 0 ? v : AUTHFAIL_INTERVAL_S * 1000;
}

static void authfail_write(qk_store *st, const authfail_bucket *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char meta[160];
        snprintf(meta, sizeof(meta),
                 "{\"count\":%" PRId64 ",\"firstMs\":%" PRId64 ",\"lastMs\":%" PRId64
                 ",\"reason\":\"%s\"}",
                 b[i].count, b[i].first_ms, b[i].last_ms, b[i].reason);
        store_audit a = {.org_id = b[i].org,
                         .ts = b[i].last_ms,
                         .actor = "anonymous",
                         .client_ip = b[i].ip,
                         .action = "auth.failure",
                         .outcome = AUDIT_DENIED,
                         .detail = b[i].reason,
                         .meta = meta};
        if (STORE_CALL(st, audit_append, &a) != QK_OK)
            log_kv(LOG_ERROR, "auth failure audit failed", "detail", qk_error_detail(), NULL);
    }
}

/* Takes the buckets when the interval is over (or `force`) and writes them. */
void api_auth_failures_flush(qk_store *st, int force)
{
    authfail_bucket out[AUTHFAIL_BUCKETS + 1];
    size_t n = 0;
    int64_t now = now_unix_ms();
    pthread_mutex_lock(&authfail.lock);
    if (authfail.n > 0 && (force || now - authfail.window_start_ms >= authfail_interval_ms())) {
        n = authfail.n;
        memcpy(out, authfail.b, n * sizeof(out[0]));
        authfail.n = 0;
    }
    pthread_mutex_unlock(&authfail.lock);
    authfail_write(st, out, n);
}

static void auth_failed(http_req *req, int64_t org, const char *reason)
{
    int64_t now = now_unix_ms();
    size_t i;
    pthread_mutex_lock(&authfail.lock);
    if (authfail.n == 0)
        authfail.window_start_ms = now;
    for (i = 0; i < authfail.n; i++) {
        authfail_bucket *b = &authfail.b[i];
        if (b->org == org && b->reason == reason &&
            (strcmp(b->ip, req->client_ip) == 0 || (i == AUTHFAIL_BUCKETS && b->ip[0] == '*')))
            break;
    }
    if (i == authfail.n) {
        if (i > AUTHFAIL_BUCKETS) /* the overflow bucket is taken by another reason */
            i = AUTHFAIL_BUCKETS;
        else
            authfail.n++;
        authfail_bucket *b = &authfail.b[i];
        if (b->count == 0 || i < AUTHFAIL_BUCKETS) {
            memset(b, 0, sizeof(*b));
            b->org = org;
            b->reason = reason;
            b->first_ms = now;
            snprintf(b->ip, sizeof(b->ip), "%s", i == AUTHFAIL_BUCKETS ? "*" : req->client_ip);
        }
    }
    authfail.b[i].count++;
    authfail.b[i].last_ms = now;
    pthread_mutex_unlock(&authfail.lock);
    api_auth_failures_flush(req->srv->store, 0);
}

int api_authenticate(http_req *req, store_apikey *key)
{
    return api_authenticate_profile(req, key, NULL, NULL, NULL);
}

int api_authenticate_profile(http_req *req, store_apikey *key, const char *profile,
                             store_profile *prof, int *prof_found)
{
    memset(key, 0, sizeof(*key));
    const char *h = http_header(req, MHD_HTTP_HEADER_AUTHORIZATION);
    if (h == NULL) {
        http_error(req, 401, "missing_api_key",
                   "send the API key as 'Authorization: Bearer qk_...'");
        http_header_set(req, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
        return -1;
    }
    if (strncasecmp(h, "Bearer ", 7) != 0) {
        http_error(req, 401, "missing_api_key", "the Authorization scheme must be Bearer");
        http_header_set(req, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
        return -1;
    }
    h += 7;
    while (*h == ' ')
        h++;
    apikey_status st = APIKEY_UNKNOWN;
    qk_err rc = apikey_authenticate_profile(req->srv->store, h, now_unix(), profile, key, &st, prof,
                                            prof_found);
    if (rc != QK_OK) {
        log_kv(LOG_ERROR, "authentication failed", "request_id", req->id, "detail",
               qk_error_detail(), NULL);
        http_error(req, 503, "store_unavailable", "cannot check the API key now");
        return -1;
    }
    if (st != APIKEY_OK) {
        if (key->id != 0)
            snprintf(req->actor, sizeof(req->actor), "apikey:%" PRId64, key->id);
        auth_failed(req, key->id != 0 ? key->org_id : 0, apikey_status_code(st));
        store_apikey_clear(key);
        http_error(req, 401, apikey_status_code(st), "the API key is %s",
                   st == APIKEY_REVOKED   ? "revoked"
                   : st == APIKEY_EXPIRED ? "expired"
                                          : "not valid");
        http_header_set(req, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"");
        return -1;
    }
    snprintf(req->actor, sizeof(req->actor), "apikey:%" PRId64, key->id);
    return 0;
}

void api_reply_error(http_req *req, const api_error *e)
{
    http_error(req, e->status, e->code, "%s", e->message);
}

int api_require_json(http_req *req)
{
    if (http_content_type_is(req, "application/json"))
        return 0;
    http_error(req, 415, "unsupported_media_type", "Content-Type must be application/json");
    return -1;
}

json_t *api_parse_object(http_req *req)
{
    api_error e;
    if (api_require_json(req) != 0)
        return NULL;
    json_t *j = json_in_object(req->body, req->body_len, &e);
    if (j == NULL)
        api_reply_error(req, &e);
    return j;
}

int api_only_fields(http_req *req, json_t *obj, const char *where, const char *const *allowed)
{
    api_error e;
    if (json_in_only_fields(obj, where, allowed, &e) == 0)
        return 0;
    api_reply_error(req, &e);
    return -1;
}

int api_opt_string(http_req *req, json_t *obj, const char *name, size_t max, const char **out)
{
    api_error e;
    if (json_in_opt_string(obj, name, max, out, &e) == 0)
        return 0;
    api_reply_error(req, &e);
    return -1;
}

void api_audit_init(http_req *req, const store_apikey *key, const char *action, store_audit *a)
{
    memset(a, 0, sizeof(*a));
    a->org_id = key->org_id;
    a->ts = now_unix_ms();
    a->actor = req->actor;
    a->client_ip = req->client_ip;
    a->action = action;
    a->outcome = AUDIT_ALLOWED;
}

/* "https://host:port" for timestampUrl: the configured/derived base URL, or
 * from a Host header that looks like a host name (listening on a wildcard). */
char *api_tsa_url(http_req *req)
{
    if (req->srv->base_url != NULL)
        return xasprintf("%s/tsa", req->srv->base_url);
    const char *host = http_header(req, MHD_HTTP_HEADER_HOST);
    if (host == NULL || host[0] == '\0' || strlen(host) > 255 ||
        strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]") !=
            strlen(host))
        return NULL;
    return xasprintf("%s://%s/tsa", req->srv->tls ? "https" : "http", host);
}

/* Answers 403 and returns -1 unless the key has at least `role`. */
int api_need_role(http_req *req, const store_apikey *key, store_role role)
{
    if (key->role >= role)
        return 0;
    http_error(req, 403, "forbidden", "this needs the %s role; the key has %s",
               store_role_name(role), store_role_name(key->role));
    return -1;
}

/* ["a","b"] of a key's "a,b"; null when it may use any profile. */
json_t *api_key_profiles_json(const store_apikey *k)
{
    if (k->profiles == NULL)
        return json_null();
    json_t *a = json_array();
    for (const char *p = k->profiles;;) {
        size_t len = strcspn(p, ",");
        json_array_append_new(a, json_stringn(p, len));
        if (p[len] == '\0')
            return a;
        p += len + 1;
    }
}

static json_t *key_json(const store_apikey *k)
{
    json_t *j = json_pack("{s:I,s:s,s:s,s:s,s:I,s:I,s:I,s:I}", "id", (json_int_t)k->id, "name",
                          k->name ? k->name : "", "prefix", k->prefix ? k->prefix : "", "role",
                          store_role_name(k->role), "createdAt", (json_int_t)k->created_at,
                          "expiresAt", (json_int_t)k->expires_at, "revokedAt",
                          (json_int_t)k->revoked_at, "lastUsedAt", (json_int_t)k->last_used_at);
    json_object_set_new(j, "profiles", api_key_profiles_json(k));
    return j;
}

void api_keys_list(http_req *req)
{
    store_apikey key, *keys = NULL;
    size_t n = 0;
    if (api_authenticate(req, &key) != 0)
        return;
    if (api_need_role(req, &key, ROLE_ADMIN) != 0)
        goto out;
    if (STORE_CALL(req->srv->store, apikey_list, key.org_id, &keys, &n) != QK_OK) {
        http_error(req, 503, "store_unavailable", "cannot list keys now");
        goto out;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, key_json(&keys[i]));
    http_json(req, 200, json_pack("{s:o}", "keys", arr));
out:
    store_apikey_list_free(keys, n);
    store_apikey_clear(&key);
}

void api_keys_create(http_req *req)
{
    static const char *const fields[] = {"name", "role", "expiresAt", "profiles", NULL};
    store_apikey key;
    json_t *body = NULL;
    char secret[APIKEY_LEN + 1] = "";
    const char *name = NULL, *role_name = NULL;
    store_role role = ROLE_SIGNER;
    int64_t expires = 0, id = 0;

    if (api_authenticate(req, &key) != 0)
        return;
    if (api_need_role(req, &key, ROLE_ADMIN) != 0)
        goto out;
    if ((body = api_parse_object(req)) == NULL || api_only_fields(req, body, NULL, fields) != 0 ||
        api_opt_string(req, body, "name", API_MAX_KEY_NAME, &name) != 0 ||
        api_opt_string(req, body, "role", 16, &role_name) != 0)
        goto out;
    if (name == NULL || name[0] == '\0') {
        http_error(req, 400, "missing_field", "'name' is required");
        goto out;
    }
    if (role_name != NULL && store_role_parse(role_name, &role) != 0) {
        http_error(req, 400, "invalid_value", "'role' must be viewer, signer or admin");
        goto out;
    }
    json_t *exp = json_object_get(body, "expiresAt");
    if (exp != NULL && !json_is_null(exp)) {
        if (!json_is_integer(exp)) {
            http_error(req, 400, "invalid_type", "'expiresAt' must be unix seconds");
            goto out;
        }
        expires = json_integer_value(exp);
        if (expires <= now_unix()) {
            http_error(req, 400, "invalid_value", "'expiresAt' must be in the future");
            goto out;
        }
    }
    /* "profiles": ["a", "b"], the only profiles the key may sign with. */
    char profiles[PROFILE_MAX_LIST * 65] = "";
    json_t *pl = json_object_get(body, "profiles");
    if (pl != NULL && !json_is_null(pl)) {
        size_t i, used = 0;
        json_t *v;
        int okay =
            json_is_array(pl) && json_array_size(pl) > 0 && json_array_size(pl) <= PROFILE_MAX_LIST;
        json_array_foreach(pl, i, v)
        {
            const char *s = json_string_value(v);
            if (!okay || s == NULL || !profile_name_ok(s) || strchr(s, ',') != NULL) {
                okay = 0;
                break;
            }
            used +=
                (size_t)snprintf(profiles + used, sizeof(profiles) - used, "%s%s", i ? "," : "", s);
        }
        if (!okay || !profile_list_ok(profiles)) {
            http_error(req, 400, "invalid_value",
                       "'profiles' must be an array of 1 to %d profile names", PROFILE_MAX_LIST);
            goto out;
        }
    }
    /* The key and its audit entry (with its id, role and expiry) commit
     * together: no entry, no key. */
    store_audit a;
    api_audit_init(req, &key, "apikey.create", &a);
    if (apikey_create_for(req->srv->store, key.org_id, key.user_id, name, role, expires,
                          profiles[0] ? profiles : NULL, &a, secret, &id) != QK_OK) {
        log_kv(LOG_ERROR, "apikey create failed", "request_id", req->id, "detail",
               qk_error_detail(), NULL);
        http_error(req, 503, "store_unavailable",
                   "the key and its audit entry could not be recorded, so no key was made");
        goto out;
    }
    char prefix[APIKEY_PREFIX_LEN + 1];
    snprintf(prefix, sizeof(prefix), "%s", secret);
    /* The body carries the only copy of the key the client will ever see. */
    http_mark_secret(req);
    json_t *made = json_pack("{s:I,s:s,s:s,s:s,s:s,s:I}", "id", (json_int_t)id, "key", secret,
                             "prefix", prefix, "name", name, "role", store_role_name(role),
                             "expiresAt", (json_int_t)expires);
    json_object_set(made, "profiles", pl != NULL && !json_is_null(pl) ? pl : json_null());
    http_json(req, 201, made);
out:
    sodium_memzero(secret, sizeof(secret));
    json_decref(body);
    store_apikey_clear(&key);
}

void api_keys_revoke(http_req *req)
{
    store_apikey key;
    if (api_authenticate(req, &key) != 0)
        return;
    if (api_need_role(req, &key, ROLE_ADMIN) != 0)
        goto out;
    const char *s = req->params[0];
    char *end = NULL;
    errno = 0;
    long long id = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || s[0] < '1' || s[0] > '9' || id <= 0) {
        http_error(req, 404, "not_found", "no such key");
        goto out;
    }
    int found = 0;
    store_audit a;
    api_audit_init(req, &key, "apikey.revoke", &a);
    qk_err rc = STORE_CALL(req->srv->store, apikey_revoke, key.org_id, (int64_t)id, &a, &found);
    if (rc != QK_OK && !found && rc == QK_ERR_INVALID_ARG) {
        http_error(req, 404, "not_found", "no such key");
        goto out;
    }
    if (rc != QK_OK) {
        /* The revocation and its entry commit together, or neither. */
        http_error(req, 503, "store_unavailable", "cannot revoke the key now");
        goto out;
    }
    http_json(req, 200, json_pack("{s:I,s:b}", "id", (json_int_t)id, "revoked", 1));
out:
    store_apikey_clear(&key);
}

void api_healthz(http_req *req)
{
    int64_t n = 0;
    /* A read through the store's reader pool: proves the database opens and
     * answers, without touching any tenant's rows (org 0 has none). */
    if (STORE_CALL(req->srv->store, audit_count, 0, "healthz", &n) != QK_OK) {
        http_error(req, 503, "store_unavailable", "the store does not answer");
        return;
    }
    http_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

/* The instance operator's credential: "Bearer qo_..." (qwickd operator
 * token create). An org's API key, whatever its role, is refused: /metrics
 * shows every org's traffic. 0, or -1 after answering. */
static int operator_authenticate(http_req *req)
{
    const char *h = http_header(req, MHD_HTTP_HEADER_AUTHORIZATION);
    uint8_t hash[32];
    int64_t id = 0;
    int found = 0;
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0) {
        http_error(req, 401, "missing_operator_token",
                   "send the operator token as 'Authorization: Bearer qo_...'");
        http_header_set(req, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
        return -1;
    }
    h += 7;
    while (*h == ' ')
        h++;
    size_t len = strnlen(h, APIKEY_LEN + 1);
    if (apikey_well_formed(h, len)) {
        http_error(req, 403, "forbidden",
                   "/metrics takes the operator token (qo_...), not an org's API key");
        return -1;
    }
    if (!operator_token_well_formed(h, len)) {
        http_error(req, 401, "unknown_operator_token", "the operator token is not valid");
        return -1;
    }
    apikey_hash(h, len, hash);
    qk_err rc = STORE_CALL(req->srv->store, operator_token_lookup, hash, &id, &found);
    if (rc != QK_OK) {
        http_error(req, 503, "store_unavailable", "cannot check the operator token now");
        return -1;
    }
    if (!found) {
        http_error(req, 401, "unknown_operator_token", "the operator token is not valid");
        return -1;
    }
    snprintf(req->actor, sizeof(req->actor), "operator:%" PRId64, id);
    return 0;
}

/* GET /api/v1/usage?since=&until=: the org's own signing usage (any role). */
void api_usage(http_req *req)
{
    store_apikey key;
    store_usage u;
    if (api_authenticate(req, &key) != 0)
        return;
    int64_t until = now_unix() + 1, since = until - 30 * 86400;
    const char *qs = MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, "since");
    const char *qu = MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, "until");
    char *end = NULL;
    if (qs != NULL) {
        errno = 0;
        since = strtoll(qs, &end, 10);
        if (errno != 0 || end == qs || *end != '\0' || since < 0) {
            http_error(req, 400, "invalid_value", "since: unix seconds");
            goto out;
        }
    }
    if (qu != NULL) {
        errno = 0;
        until = strtoll(qu, &end, 10);
        if (errno != 0 || end == qu || *end != '\0' || until <= since || until > INT64_MAX / 1000) {
            http_error(req, 400, "invalid_value", "until: unix seconds, after since");
            goto out;
        }
    }
    if (STORE_CALL(req->srv->store, usage, key.org_id, since, until, &u) != QK_OK) {
        http_error(req, 503, "store_unavailable", "cannot read usage now");
        goto out;
    }
    json_t *byp = json_object();
    for (size_t i = 0; i < u.nprofiles; i++)
        json_object_set_new(byp, u.by_profile[i].profile, json_integer(u.by_profile[i].signatures));
    http_json(req, 200,
              json_pack("{s:I,s:I,s:I,s:I,s:I,s:o}", "since", (json_int_t)since, "until",
                        (json_int_t)until, "signatures", (json_int_t)u.allowed, "denied",
                        (json_int_t)u.denied, "failed", (json_int_t)u.failed, "byProfile", byp));
    store_usage_clear(&u);
out:
    store_apikey_clear(&key);
}

/* `all` followed by `more` (both heap strings, freed; `more` may be NULL). */
static char *text_append(char *all, char *more)
{
    if (more == NULL)
        return all;
    char *both = xasprintf("%s%s", all, more);
    free(all);
    free(more);
    return both;
}

void api_metrics(http_req *req)
{
    size_t len = 0;
    if (!req->srv->metrics_anonymous && operator_authenticate(req) != 0)
        return;
    char *text = metrics_render(req->srv->metrics, &len);
    if (text == NULL) {
        http_error(req, 500, "internal", "out of memory");
        return;
    }
    store_sqlite_counters st;
    store_sqlite_stats(req->srv->store, &st);
    char *all = xasprintf("%s"
                          "# HELP qwickd_store_commits_total Store transactions (group commits).\n"
                          "# TYPE qwickd_store_commits_total counter\n"
                          "qwickd_store_commits_total %" PRIu64 "\n"
                          "# HELP qwickd_store_writes_total Writes carried by those commits.\n"
                          "# TYPE qwickd_store_writes_total counter\n"
                          "qwickd_store_writes_total %" PRIu64 "\n"
                          "# HELP qwickd_store_delayed_commits_total Commits that waited for "
                          "more writes (limits.commit_delay_us).\n"
                          "# TYPE qwickd_store_delayed_commits_total counter\n"
                          "qwickd_store_delayed_commits_total %" PRIu64 "\n"
                          "# HELP qwickd_store_checkpoints_total WAL checkpoint passes.\n"
                          "# TYPE qwickd_store_checkpoints_total counter\n"
                          "qwickd_store_checkpoints_total %" PRIu64 "\n",
                          text, st.commits, st.writes, st.delayed, st.checkpoints);
    free(text);
    if (req->srv->queue != NULL)
        all = text_append(all, queue_metrics_render(req->srv->queue));
    if (req->srv->callbacks != NULL)
        all = text_append(all, callbacks_metrics_render(req->srv->callbacks));
    if (req->srv->azure != NULL)
        all = text_append(all, azure_metrics_render(req->srv->azure));
    http_bytes(req, 200, "text/plain; version=0.0.4; charset=utf-8", all, strlen(all));
}
