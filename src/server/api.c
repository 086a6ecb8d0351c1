/* Shared API plumbing (authentication, strict JSON) and the small handlers:
 * API keys, health, metrics. Signing lives in api_sign.c. */
#include "api.h"
#include "azure/azure.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "apikey.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

int api_authenticate(http_req *req, store_apikey *key)
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
    qk_err rc = apikey_authenticate(req->srv->store, h, now_unix(), key, &st);
    if (rc != QK_OK) {
        log_kv(LOG_ERROR, "authentication failed", "request_id", req->id, "detail",
               qk_error_detail(), NULL);
        http_error(req, 503, "store_unavailable", "cannot check the API key now");
        return -1;
    }
    if (st != APIKEY_OK) {
        if (key->id != 0)
            snprintf(req->actor, sizeof(req->actor), "apikey:%" PRId64, key->id);
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

/* Answers 403 and returns -1 unless the key has at least `role`. */
int api_need_role(http_req *req, const store_apikey *key, store_role role)
{
    if (key->role >= role)
        return 0;
    http_error(req, 403, "forbidden", "this needs the %s role; the key has %s",
               store_role_name(role), store_role_name(key->role));
    return -1;
}

static json_t *key_json(const store_apikey *k)
{
    return json_pack("{s:I,s:s,s:s,s:s,s:I,s:I,s:I,s:I}", "id", (json_int_t)k->id, "name",
                     k->name ? k->name : "", "prefix", k->prefix ? k->prefix : "", "role",
                     store_role_name(k->role), "createdAt", (json_int_t)k->created_at, "expiresAt",
                     (json_int_t)k->expires_at, "revokedAt", (json_int_t)k->revoked_at,
                     "lastUsedAt", (json_int_t)k->last_used_at);
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
    static const char *const fields[] = {"name", "role", "expiresAt", NULL};
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
    store_audit a;
    api_audit_init(req, &key, "apikey.create", &a);
    a.detail = name;
    if (apikey_create(req->srv->store, key.org_id, key.user_id, name, role, expires, secret, &id) !=
        QK_OK) {
        log_kv(LOG_ERROR, "apikey create failed", "request_id", req->id, "detail",
               qk_error_detail(), NULL);
        http_error(req, 500, "internal", "cannot create the key");
        goto out;
    }
    if (STORE_CALL(req->srv->store, audit_append, &a) != QK_OK)
        log_kv(LOG_ERROR, "audit append failed", "request_id", req->id, "detail", qk_error_detail(),
               NULL);
    char prefix[APIKEY_PREFIX_LEN + 1];
    snprintf(prefix, sizeof(prefix), "%s", secret);
    /* The body carries the only copy of the key the client will ever see. */
    http_mark_secret(req);
    http_json(req, 201,
              json_pack("{s:I,s:s,s:s,s:s,s:s,s:I}", "id", (json_int_t)id, "key", secret, "prefix",
                        prefix, "name", name, "role", store_role_name(role), "expiresAt",
                        (json_int_t)expires));
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
    qk_err rc = STORE_CALL(req->srv->store, apikey_revoke, key.org_id, (int64_t)id, &found);
    if (rc != QK_OK && !found) {
        http_error(req, 404, "not_found", "no such key");
        goto out;
    }
    if (rc != QK_OK) {
        http_error(req, 503, "store_unavailable", "cannot revoke the key now");
        goto out;
    }
    store_audit a;
    char detail[32];
    snprintf(detail, sizeof(detail), "apikey:%lld", id);
    api_audit_init(req, &key, "apikey.revoke", &a);
    a.detail = detail;
    if (STORE_CALL(req->srv->store, audit_append, &a) != QK_OK)
        log_kv(LOG_ERROR, "audit append failed", "request_id", req->id, "detail", qk_error_detail(),
               NULL);
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

void api_metrics(http_req *req)
{
    size_t len = 0;
    /* Profile names and traffic are the org's business: a scraper sends a
     * key (Prometheus: authorization.credentials), any role will do. */
    if (!req->srv->metrics_anonymous) {
        store_apikey key;
        if (api_authenticate(req, &key) != 0)
            return;
        store_apikey_clear(&key);
    }
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
    char *az = req->srv->azure != NULL ? azure_metrics_render(req->srv->azure) : NULL;
    if (az != NULL) {
        char *both = xasprintf("%s%s", all, az);
        free(all);
        free(az);
        all = both;
    }
    http_bytes(req, 200, "text/plain; version=0.0.4; charset=utf-8", all, strlen(all));
}
