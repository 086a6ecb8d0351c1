/* Disposable Azure credentials (see azure.h and docs/azure.md).
 *
 * Per app registration: a Graph token (refresh-token grant, the rotated
 * refresh token sealed back into the store; or a manager app's client
 * credentials), one client secret of the signing app created with
 * addPassword under a store lease, the codesigning token that secret buys,
 * and the secret's revocation once its TTL has run. All Graph and Entra calls
 * are made on the credential thread (or, for the startup reaper pass, before
 * that thread starts), so these fields need no lock; what the engine reads
 * (the token) sits behind az_app.mu. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "signer/azure/azure_internal.h"
#include "core/log.h"
#include "core/util.h"

#define GRAPH_SCOPE "https://graph.microsoft.com/.default"
#define CODESIGN_SCOPE "https://codesigning.azure.net/.default"
#define HTTP_TIMEOUT_MS 30000L
#define MAX_TRIES 6
/* A new secret can be refused (AADSTS7000215) while Entra replicates it. */
#define NEW_SECRET_GRACE_MS 60000
/* A secret's endDateTime lies this far past its TTL, so Azure's own expiry
 * never cuts a request short; qwickd revokes it at the TTL. */
#define SECRET_END_MARGIN_S 120
/* The reaper spares unheld secrets this young while some node is creating
 * one (its lease does not name the keyId yet). */
#define CREATING_GRACE_S 120
#define LOCK_POLL_MS 250

/* ---- small helpers ------------------------------------------------------ */

static char *secure_dup(const char *s, size_t n)
{
    char *p = sodium_malloc(n + 1);
    if (p == NULL)
        abort();
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static void secure_free(char **p)
{
    if (*p != NULL)
        sodium_free(*p); /* wipes */
    *p = NULL;
}

void az_token_free(char *t)
{
    if (t != NULL) {
        sodium_memzero(t, strlen(t));
        free(t);
    }
}

/* Sleeps up to ms on the credential condition; 1 when the backend stops. */
static int creds_sleep(azure_backend *b, int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&b->creds_mu);
    if (!b->creds_stop)
        pthread_cond_timedwait(&b->creds_cv, &b->creds_mu, &ts);
    int stop = b->creds_stop;
    pthread_mutex_unlock(&b->creds_mu);
    return stop;
}

static int stopping(azure_backend *b)
{
    pthread_mutex_lock(&b->creds_mu);
    int s = b->creds_stop;
    pthread_mutex_unlock(&b->creds_mu);
    return s;
}

static void audit(az_app *a, const char *action, audit_outcome outcome, const char *detail,
                  qk_err *rc)
{
    store_audit au = {
        .org_id = a->org,
        .actor = "qwickd",
        .action = action,
        .outcome = outcome,
        .detail = detail,
        .profile = a->cfg.app_object_id,
    };
    qk_err r = STORE_CALL(a->b->store, audit_append, &au);
    if (r != QK_OK)
        log_kv(LOG_ERROR, "audit append failed", "action", action, "detail", qk_error_detail(), NULL);
    if (rc != NULL)
        *rc = r;
}

/* One request with retries for 429/5xx/network errors, honouring
 * Retry-After. `prepare` sets the request up again before each try. */
typedef void (*prep_fn)(az_app *a, CURL *e, az_resp *r, void *ctx);

static qk_err call(az_app *a, CURL *e, az_resp *r, prep_fn prep, void *ctx, const char *what)
{
    qk_err rc = QK_OK;
    for (int attempt = 1;; attempt++) {
        curl_easy_reset(e);
        prep(a, e, r, ctx);
        rc = az_http_perform(e, r);
        if (r->status >= 200 && r->status < 300)
            return QK_OK;
        az_count_error(a->b, az_class_of(r));
        /* The startup pass tries once: serving is not held up by Graph. */
        if (!az_status_retryable(r) || attempt >= MAX_TRIES || a->b->starting)
            break;
        int64_t wait = r->retry_after >= 0 ? r->retry_after * 1000 : 250L << attempt;
        if (wait > AZ_MAX_RETRY_AFTER_S * 1000)
            break;
        log_kv(LOG_WARN, "azure: retrying", "call", what, "status",
               r->status ? (r->status == 429 ? "429" : "5xx") : "network", NULL);
        if (creds_sleep(a->b, wait))
            break;
    }
    char text[AZ_ERR_MAX];
    az_error_text(r, text, sizeof(text));
    return qk_fail(rc != QK_OK ? rc : QK_ERR_IO, "%s: %s", what, text);
}

/* ---- Entra tokens --------------------------------------------------------- */

typedef struct token_req {
    char *url;
    char *form; /* wiped after use */
    struct curl_slist *hdrs;
} token_req;

static void prep_token(az_app *a, CURL *e, az_resp *r, void *ctx)
{
    token_req *t = ctx;
    az_http_prepare(e, t->url, a->trust, t->hdrs, r, HTTP_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->form);
}

/* POST the token endpoint with `form`; on 200 the access token (sodium
 * memory) and its lifetime, and a rotated refresh token when one came. */
static qk_err entra_token(az_app *a, CURL *e, char *form, char **token, int64_t *expires_s,
                          char **refresh, az_resp *r)
{
    token_req t = {xasprintf("%s/%s/oauth2/v2.0/token", a->cfg.authority_url, a->cfg.tenant),
                   form, NULL};
    json_t *j = NULL;
    qk_err rc;
    *token = NULL;
    if (refresh != NULL)
        *refresh = NULL;
    t.hdrs = curl_slist_append(NULL, "Content-Type: application/x-www-form-urlencoded");
    t.hdrs = curl_slist_append(t.hdrs, "Accept: application/json");
    rc = call(a, e, r, prep_token, &t, "Entra token");
    if (rc == QK_OK) {
        j = json_loadb((const char *)r->body.data, r->body.len, 0, NULL);
        json_t *at = json_object_get(j, "access_token"), *rt = json_object_get(j, "refresh_token");
        json_t *ex = json_object_get(j, "expires_in");
        if (!json_is_string(at) || json_string_length(at) == 0) {
            rc = qk_fail(QK_ERR_INVALID_ARG, "Entra token: no access_token in the answer");
        } else {
            *token = secure_dup(json_string_value(at), json_string_length(at));
            /* expires_in is a number, or a numeric string in older replies. */
            *expires_s = json_is_integer(ex) ? json_integer_value(ex)
                         : json_is_string(ex) ? strtol(json_string_value(ex), NULL, 10)
                                              : 3600;
            if (refresh != NULL && json_is_string(rt) && json_string_length(rt) > 0)
                *refresh = secure_dup(json_string_value(rt), json_string_length(rt));
        }
        /* Wipe the token texts jansson copied. */
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) {
            if (json_is_string(v))
                sodium_memzero((char *)json_string_value(v), json_string_length(v));
        }
    }
    /* A success carries tokens: wipe it. An error body is kept for the
     * caller (AADSTS codes); it holds no secret. */
    if (rc == QK_OK && r->body.data != NULL)
        sodium_memzero(r->body.data, r->body.len);
    json_decref(j);
    curl_slist_free_all(t.hdrs);
    free(t.url);
    return rc;
}

static char *form_join(const char *const *kv)
{
    size_t cap = 1;
    for (size_t i = 0; kv[i] != NULL; i += 2)
        cap += strlen(kv[i]) + 3 * strlen(kv[i + 1]) + 2;
    char *out = xmalloc(cap), *o = out;
    for (size_t i = 0; kv[i] != NULL; i += 2) {
        char *v = az_form_escape(kv[i + 1]);
        o += sprintf(o, "%s%s=%s", i ? "&" : "", kv[i], v);
        sodium_memzero(v, strlen(v));
        free(v);
    }
    *o = '\0';
    return out;
}

static void form_free(char *f)
{
    if (f != NULL) {
        sodium_memzero(f, strlen(f));
        free(f);
    }
}

/* Seals a rotated refresh token into the profile's secrets row. */
static void persist_refresh(az_app *a, const char *rt)
{
    char aad[SECRETS_AAD_MAX];
    qk_buf sealed = {NULL, 0};
    json_t *j = json_pack("{s:s}", "refreshToken", rt);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    int found = 0;
    qk_err rc = QK_ERR_NOMEM;
    secrets_aad_signing_key(aad, a->org);
    if (text != NULL &&
        (rc = secrets_seal(a->b->keyring, (qk_slice){(const uint8_t *)text, strlen(text)}, aad,
                           &sealed)) == QK_OK)
        rc = STORE_CALL(a->b->store, signing_key_update, a->org, a->secrets_row,
                        (qk_slice){sealed.data, sealed.len}, &found);
    if (rc != QK_OK)
        log_kv(LOG_ERROR, "azure: cannot store the rotated Graph refresh token", "app",
               a->cfg.app_object_id, "detail", qk_error_detail(), NULL);
    if (text != NULL) {
        sodium_memzero(text, strlen(text));
        free(text);
    }
    if (j != NULL)
        sodium_memzero((char *)json_string_value(json_object_get(j, "refreshToken")), strlen(rt));
    json_decref(j);
    qk_buf_free(&sealed);
}

/* Reads the sealed Graph secret of the app from the store (again: another
 * node may have rotated the refresh token). */
static qk_err load_graph_secret(az_app *a)
{
    store_signing_key k;
    qk_buf plain = {NULL, 0};
    char aad[SECRETS_AAD_MAX];
    int found = 0;
    json_t *j = NULL;
    qk_err rc = STORE_CALL(a->b->store, signing_key_get, a->org, a->secrets_row, &k, &found);
    if (rc != QK_OK)
        return rc;
    secrets_aad_signing_key(aad, a->org);
    rc = secrets_open(a->b->keyring, (qk_slice){k.sealed.data, k.sealed.len}, aad, &plain);
    store_signing_key_clear(&k);
    if (rc != QK_OK)
        return rc;
    j = json_loadb((const char *)plain.data, plain.len, 0, NULL);
    json_t *v = json_object_get(j, a->cfg.grant == AZ_GRANT_REFRESH_TOKEN ? "refreshToken"
                                                                          : "clientSecret");
    if (json_is_string(v)) {
        secure_free(&a->graph_secret);
        a->graph_secret = secure_dup(json_string_value(v), json_string_length(v));
        sodium_memzero((char *)json_string_value(v), json_string_length(v));
    } else {
        rc = qk_fail(QK_ERR_INVALID_ARG, "azure profile secrets lack the Graph credential");
    }
    json_decref(j);
    sodium_memzero(plain.data, plain.len);
    qk_buf_free(&plain);
    return rc;
}

static qk_err graph_token_once(az_app *a, CURL *e, az_resp *r)
{
    char *form, *tok = NULL, *rt = NULL;
    int64_t exp = 0;
    if (a->cfg.grant == AZ_GRANT_REFRESH_TOKEN) {
        const char *kv[] = {"client_id", a->cfg.graph_client_id, "grant_type", "refresh_token",
                            "refresh_token", a->graph_secret, "scope",
                            GRAPH_SCOPE " offline_access", NULL};
        form = form_join(kv);
    } else {
        const char *kv[] = {"client_id", a->cfg.graph_client_id, "client_secret", a->graph_secret,
                            "grant_type", "client_credentials", "scope", GRAPH_SCOPE, NULL};
        form = form_join(kv);
    }
    qk_err rc = entra_token(a, e, form, &tok, &exp, a->cfg.grant == AZ_GRANT_REFRESH_TOKEN ? &rt : NULL, r);
    form_free(form);
    if (rc != QK_OK)
        return rc;
    secure_free(&a->graph_token);
    a->graph_token = tok;
    a->graph_until_ms = az_now_ms() + (exp > 120 ? exp - 60 : exp / 2) * 1000;
    if (rt != NULL) {
        /* Rotation: the old refresh token may already be spent. */
        secure_free(&a->graph_secret);
        a->graph_secret = rt;
        persist_refresh(a, rt);
    }
    return QK_OK;
}

static qk_err graph_token(az_app *a, CURL *e)
{
    az_resp r = {0};
    qk_err rc = QK_OK;
    if (a->graph_token != NULL && az_now_ms() < a->graph_until_ms)
        return QK_OK;
    if (a->graph_secret == NULL && (rc = load_graph_secret(a)) != QK_OK)
        return rc;
    rc = graph_token_once(a, e, &r);
    if (rc != QK_OK && r.status == 400 && a->cfg.grant == AZ_GRANT_REFRESH_TOKEN &&
        load_graph_secret(a) == QK_OK) {
        /* invalid_grant: another node may have rotated the token; retry once
         * with what the store holds now. */
        az_resp_reset(&r);
        rc = graph_token_once(a, e, &r);
    }
    az_resp_reset(&r);
    return rc;
}

/* ---- Graph ------------------------------------------------------------------ */

typedef struct graph_req {
    char *url;
    const char *body; /* NULL: GET */
    struct curl_slist *hdrs;
} graph_req;

static void prep_graph(az_app *a, CURL *e, az_resp *r, void *ctx)
{
    graph_req *g = ctx;
    az_http_prepare(e, g->url, a->trust, g->hdrs, r, HTTP_TIMEOUT_MS);
    if (g->body != NULL)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, g->body);
}

/* A Graph call on the app: op "" (GET the application) or "addPassword" /
 * "removePassword" with a JSON body. A 401 renews the Graph token once. */
static qk_err graph_call(az_app *a, CURL *e, const char *op, const char *body, az_resp *r)
{
    qk_err rc = QK_OK;
    for (int renewed = 0;; renewed = 1) {
        if ((rc = graph_token(a, e)) != QK_OK)
            return rc;
        graph_req g = {xasprintf("%s/v1.0/applications/%s%s%s", a->cfg.graph_url,
                                 a->cfg.app_object_id, op[0] ? "/" : "", op),
                       body, NULL};
        g.hdrs = az_header_add(NULL, "Authorization: Bearer %s", a->graph_token);
        g.hdrs = curl_slist_append(g.hdrs, "Accept: application/json");
        if (body != NULL)
            g.hdrs = curl_slist_append(g.hdrs, "Content-Type: application/json");
        rc = call(a, e, r, prep_graph, &g, op[0] ? op : "Graph application");
        az_slist_free_wipe(g.hdrs);
        free(g.url);
        if (rc == QK_OK || r->status != 401 || renewed)
            return rc;
        secure_free(&a->graph_token); /* expired early: one renewal, not a loop */
    }
}

static void iso_time(int64_t t, char out[32])
{
    struct tm tm;
    time_t tt = (time_t)t;
    gmtime_r(&tt, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static qk_err remove_password(az_app *a, CURL *e, const char *key_id, int *gone)
{
    az_resp r = {0};
    char body[160];
    *gone = 0;
    snprintf(body, sizeof(body), "{\"keyId\":\"%s\"}", key_id);
    qk_err rc = graph_call(a, e, "removePassword", body, &r);
    if (rc != QK_OK && (r.status == 404 || r.status == 400)) {
        /* Already gone (revoked elsewhere, or expired and cleaned up). */
        *gone = 1;
        rc = QK_OK;
    }
    az_resp_reset(&r);
    return rc;
}

/* ---- the signing secret ------------------------------------------------------ */

static void set_failure(az_app *a, int status, const char *prefix, const char *detail)
{
    pthread_mutex_lock(&a->mu);
    size_t n = strlen(prefix) < sizeof(a->fail_text) - 1 ? strlen(prefix) : sizeof(a->fail_text) - 1;
    memcpy(a->fail_text, prefix, n);
    size_t m = strlen(detail);
    if (m > sizeof(a->fail_text) - 1 - n)
        m = sizeof(a->fail_text) - 1 - n;
    memcpy(a->fail_text + n, detail, m);
    a->fail_text[n + m] = '\0';
    a->fail_status = status;
    a->fail_gen++;
    a->wanted = 0;
    pthread_mutex_unlock(&a->mu);
    az_engine_wake(a->b->engine);
}

/* Revokes the app's current secret (TTL over, or shutting down). */
static void retire_secret(az_app *a, CURL *e, const char *why)
{
    char detail[256];
    int gone = 0;
    if (a->secret == NULL)
        return;
    pthread_mutex_lock(&a->mu);
    if (a->token != NULL)
        sodium_free(a->token);
    a->token = NULL;
    a->token_until_ms = 0;
    pthread_mutex_unlock(&a->mu);
    qk_err rc = remove_password(a, e, a->secret_key, &gone);
    snprintf(detail, sizeof(detail), "app %s keyId %s (%s)", a->cfg.app_object_id, a->secret_key,
             why);
    if (rc == QK_OK) {
        STORE_CALL(a->b->store, lease_release, a->org, a->secret_lease, now_unix());
        audit(a, "azure.credential.revoke", AUDIT_ALLOWED, detail, NULL);
        atomic_fetch_add(&a->b->stats.revoked, 1);
        atomic_fetch_sub(&a->b->stats.alive, 1);
        log_kv(LOG_INFO, "azure: secret revoked", "app", a->cfg.app_object_id, "key_id",
               a->secret_key, "why", why, NULL);
    } else {
        /* The lease stays live but is no longer renewed: once it runs out,
         * a reaper (here or on another node) revokes the secret. */
        audit(a, "azure.credential.revoke", AUDIT_FAILED, detail, NULL);
        atomic_fetch_sub(&a->b->stats.alive, 1);
        log_kv(LOG_WARN, "azure: revoking a secret failed; the reaper will retry", "app",
               a->cfg.app_object_id, "key_id", a->secret_key, "detail", qk_error_detail(), NULL);
    }
    secure_free(&a->secret);
    a->secret_key[0] = '\0';
    a->secret_lease = 0;
}

/* Waits (FIFO across this node's requests: one thread asks) for a lease
 * slot: at most maxSecrets live secrets for the app across all nodes. */
static qk_err take_lease(az_app *a, int64_t *lease_id)
{
    int64_t deadline = az_now_ms() + (int64_t)a->cfg.lock_timeout_seconds * 1000;
    int waited = 0, granted = 0;
    for (;;) {
        int64_t until = now_unix() + 2 * (int64_t)a->b->reaper_interval_s;
        qk_err rc = STORE_CALL(a->b->store, lease_acquire, a->org, a->cfg.app_object_id,
                               a->b->node, (int)a->cfg.max_secrets, until, lease_id, &granted);
        if (rc != QK_OK)
            return rc;
        if (granted)
            return QK_OK;
        if (!waited) {
            waited = 1;
            atomic_fetch_add(&a->b->stats.lock_waits, 1);
            log_kv(LOG_INFO, "azure: waiting for a secret slot (maxSecrets reached)", "app",
                   a->cfg.app_object_id, NULL);
        }
        if (az_now_ms() >= deadline)
            return qk_fail(QK_ERR_IO,
                           "all %u secrets allowed for app %s are in use; waited %u s",
                           a->cfg.max_secrets, a->cfg.app_object_id, a->cfg.lock_timeout_seconds);
        if (creds_sleep(a->b, LOCK_POLL_MS))
            return qk_fail(QK_ERR_IO, "shutting down");
    }
}

static qk_err create_secret(az_app *a, CURL *e)
{
    az_resp r = {0};
    char end[32], body[320], name[128], detail[256];
    int64_t lease = 0;
    json_t *j = NULL;
    qk_err rc;

    /* Graph first: a lease is only taken when addPassword can be called. */
    if ((rc = graph_token(a, e)) != QK_OK || (rc = take_lease(a, &lease)) != QK_OK)
        return rc;
    int64_t now = now_unix();
    iso_time(now + (int64_t)a->cfg.ttl_seconds + SECRET_END_MARGIN_S, end);
    snprintf(name, sizeof(name), AZURE_SECRET_PREFIX "%s-%" PRId64, a->b->node, now);
    for (char *p = name; *p; p++)
        if (*p == '/' || *p == '"' || *p == '\\')
            *p = '-';
    snprintf(body, sizeof(body),
             "{\"passwordCredential\":{\"displayName\":\"%s\",\"endDateTime\":\"%s\"}}", name, end);
    rc = graph_call(a, e, "addPassword", body, &r);
    if (rc == QK_OK) {
        j = json_loadb((const char *)r.body.data, r.body.len, 0, NULL);
        json_t *kid = json_object_get(j, "keyId"), *st = json_object_get(j, "secretText");
        if (!json_is_string(kid) || json_string_length(kid) == 0 ||
            json_string_length(kid) >= AZ_KEYID_MAX || !json_is_string(st) ||
            json_string_length(st) == 0) {
            rc = qk_fail(QK_ERR_INVALID_ARG, "addPassword: no keyId/secretText in the answer");
        } else {
            a->secret = secure_dup(json_string_value(st), json_string_length(st));
            sodium_memzero((char *)json_string_value(st), json_string_length(st));
            snprintf(a->secret_key, sizeof(a->secret_key), "%s", json_string_value(kid));
        }
    }
    if (r.body.data != NULL)
        sodium_memzero(r.body.data, r.body.len);
    json_decref(j);
    long status = r.status;
    az_resp_reset(&r);
    if (rc != QK_OK) {
        /* Refused: no secret exists, the slot is free again. Otherwise (no
         * answer) the secret may exist without our knowing its keyId: the
         * lease is left to run out and the reaper finds the secret. */
        if (status >= 400)
            STORE_CALL(a->b->store, lease_release, a->org, lease, now_unix());
        return rc;
    }
    a->secret_lease = lease;
    a->secret_until_ms = az_now_ms() + (int64_t)a->cfg.ttl_seconds * 1000;
    a->heartbeat_ms = az_now_ms() + (int64_t)a->b->reaper_interval_s * 1000 / 2;
    atomic_fetch_add(&a->b->stats.created, 1);
    atomic_fetch_add(&a->b->stats.alive, 1);
    snprintf(detail, sizeof(detail), "app %s keyId %s ttl %us", a->cfg.app_object_id,
             a->secret_key, a->cfg.ttl_seconds);
    if ((rc = STORE_CALL(a->b->store, lease_update, a->org, lease, a->secret_key, 0)) != QK_OK) {
        retire_secret(a, e, "lease not recorded");
        return rc;
    }
    audit(a, "azure.credential.create", AUDIT_ALLOWED, detail, &rc);
    if (rc != QK_OK) {
        retire_secret(a, e, "creation not audited");
        return qk_fail(QK_ERR_IO, "the new secret could not be audited, so it was revoked");
    }
    log_kv(LOG_INFO, "azure: secret created", "app", a->cfg.app_object_id, "key_id",
           a->secret_key, NULL);
    return QK_OK;
}

/* The codesigning token bought with the current secret; retries Entra's
 * AADSTS7000215 while a new secret replicates. */
static qk_err codesign_token(az_app *a, CURL *e)
{
    int64_t deadline = az_now_ms() + NEW_SECRET_GRACE_MS, delay = 500;
    char detail[256];
    for (;;) {
        az_resp r = {0};
        char *tok = NULL;
        int64_t exp = 0;
        const char *kv[] = {"client_id", a->cfg.client_id, "client_secret", a->secret,
                            "grant_type", "client_credentials", "scope", CODESIGN_SCOPE, NULL};
        char *form = form_join(kv);
        qk_err rc = entra_token(a, e, form, &tok, &exp, NULL, &r);
        form_free(form);
        int not_yet = rc != QK_OK && az_is_invalid_client_secret(&r);
        az_resp_reset(&r);
        if (rc == QK_OK) {
            int64_t until = az_now_ms() + (exp > 120 ? exp - 60 : exp / 2) * 1000;
            if (until > a->secret_until_ms)
                until = a->secret_until_ms;
            pthread_mutex_lock(&a->mu);
            if (a->token != NULL)
                sodium_free(a->token);
            a->token = tok;
            a->token_until_ms = until;
            a->token_gen++;
            snprintf(a->token_key, sizeof(a->token_key), "%s", a->secret_key);
            a->wanted = 0;
            pthread_mutex_unlock(&a->mu);
            atomic_fetch_add(&a->b->stats.tokens, 1);
            snprintf(detail, sizeof(detail), "app %s keyId %s: codesigning token",
                     a->cfg.app_object_id, a->secret_key);
            audit(a, "azure.credential.use", AUDIT_ALLOWED, detail, NULL);
            az_engine_wake(a->b->engine);
            return QK_OK;
        }
        if (!not_yet || az_now_ms() + delay > deadline)
            return rc;
        log_kv(LOG_INFO, "azure: new secret not accepted yet (AADSTS7000215), retrying", "app",
               a->cfg.app_object_id, NULL);
        if (creds_sleep(a->b, delay))
            return qk_fail(QK_ERR_IO, "shutting down");
        delay = delay * 2 > 5000 ? 5000 : delay * 2;
    }
}

/* A token for waiting operations: a secret first when none is alive. */
static void fetch_token(az_app *a, CURL *e)
{
    qk_err rc = QK_OK;
    if (a->secret != NULL && az_now_ms() >= a->secret_until_ms)
        retire_secret(a, e, "ttl");
    if (a->secret == NULL && (rc = create_secret(a, e)) != QK_OK) {
        set_failure(a, 503, "no Azure credential: ", qk_error_detail());
        return;
    }
    if ((rc = codesign_token(a, e)) != QK_OK) {
        const char *d = qk_error_detail();
        char keep[AZ_ERR_MAX];
        snprintf(keep, sizeof(keep), "%s", d);
        /* A secret Entra still refuses after the grace period is useless. */
        retire_secret(a, e, "refused by Entra");
        set_failure(a, 502, "no Azure token: ", keep);
    }
}

static void heartbeat(az_app *a)
{
    if (a->secret == NULL || az_now_ms() < a->heartbeat_ms)
        return;
    int64_t until = now_unix() + 2 * (int64_t)a->b->reaper_interval_s;
    if (STORE_CALL(a->b->store, lease_update, a->org, a->secret_lease, NULL, until) != QK_OK)
        log_kv(LOG_WARN, "azure: lease renewal failed", "detail", qk_error_detail(), NULL);
    a->heartbeat_ms = az_now_ms() + (int64_t)a->b->reaper_interval_s * 1000 / 2;
}

/* ---- the reaper ---------------------------------------------------------------- */

static int64_t parse_iso(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    if (s == NULL || strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) == NULL)
        return 0;
    return (int64_t)timegm(&tm);
}

/* A lease held by a process of this host that no longer exists: its holder
 * crashed (kill -9), so it is dead now rather than when it runs out. */
static int holder_dead_here(const azure_backend *b, const char *node)
{
    const char *slash = strchr(b->node, '/');
    size_t hl = slash ? (size_t)(slash - b->node) : 0;
    if (node == NULL || hl == 0 || strncmp(node, b->node, hl + 1) != 0)
        return 0;
    char *end = NULL;
    long pid = strtol(node + hl + 1, &end, 10);
    if (end == node + hl + 1 || *end != '/' || pid <= 0)
        return 0;
    if (strcmp(node, b->node) == 0)
        return 0;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

static int lease_live(const azure_backend *b, const store_lease *l, int64_t now)
{
    return l->lease_until > now && !holder_dead_here(b, l->node);
}

static int reap_with(az_app *a, CURL *e)
{
    az_resp r = {0};
    store_lease *leases = NULL;
    size_t nl = 0;
    json_t *j = NULL;
    int reaped = 0, spared = 0;
    int64_t now = now_unix();
    char detail[256];

    qk_err rc = graph_call(a, e, "", NULL, &r);
    if (rc == QK_OK)
        j = json_loadb((const char *)r.body.data, r.body.len, 0, NULL);
    az_resp_reset(&r);
    json_t *creds = json_object_get(j, "passwordCredentials");
    if (rc != QK_OK || !json_is_array(creds)) {
        log_kv(LOG_WARN, "azure reaper: cannot list the app's credentials", "app",
               a->cfg.app_object_id, "detail", rc != QK_OK ? qk_error_detail() : "no list", NULL);
        json_decref(j);
        return 0;
    }
    if (STORE_CALL(a->b->store, lease_list, a->org, a->cfg.app_object_id, &leases, &nl) != QK_OK) {
        json_decref(j);
        return 0;
    }
    int creating = 0;
    for (size_t i = 0; i < nl; i++)
        if (leases[i].key_id == NULL && lease_live(a->b, &leases[i], now))
            creating = 1;
    size_t idx;
    json_t *c;
    json_array_foreach(creds, idx, c) {
        const char *name = json_string_value(json_object_get(c, "displayName"));
        const char *kid = json_string_value(json_object_get(c, "keyId"));
        if (name == NULL || kid == NULL || strncmp(name, AZURE_SECRET_PREFIX,
                                                   strlen(AZURE_SECRET_PREFIX)) != 0)
            continue; /* not ours: never touched */
        int held = 0;
        for (size_t i = 0; i < nl && !held; i++)
            held = leases[i].key_id != NULL && strcmp(leases[i].key_id, kid) == 0 &&
                   lease_live(a->b, &leases[i], now);
        if (held)
            continue;
        int64_t start = parse_iso(json_string_value(json_object_get(c, "startDateTime")));
        if (creating && start > now - CREATING_GRACE_S) {
            spared++;
            continue;
        }
        int gone = 0;
        if (remove_password(a, e, kid, &gone) != QK_OK) {
            log_kv(LOG_WARN, "azure reaper: revoke failed", "key_id", kid, "detail",
                   qk_error_detail(), NULL);
            continue;
        }
        STORE_CALL(a->b->store, lease_release_key, a->org, a->cfg.app_object_id, kid, now);
        snprintf(detail, sizeof(detail), "app %s keyId %s (%s): no live lease holds it",
                 a->cfg.app_object_id, kid, name);
        audit(a, "azure.credential.reap", AUDIT_ALLOWED, detail, NULL);
        atomic_fetch_add(&a->b->stats.reaped, 1);
        log_kv(LOG_INFO, "azure reaper: orphaned secret revoked", "app", a->cfg.app_object_id,
               "key_id", kid, NULL);
        reaped++;
    }
    /* Leases that ran out and whose secret is no longer listed: release. */
    for (size_t i = 0; i < nl; i++) {
        if (lease_live(a->b, &leases[i], now))
            continue;
        int listed = 0;
        json_array_foreach(creds, idx, c) {
            const char *kid = json_string_value(json_object_get(c, "keyId"));
            if (leases[i].key_id != NULL && kid != NULL && strcmp(kid, leases[i].key_id) == 0)
                listed = 1;
        }
        if ((leases[i].key_id != NULL && (!listed || reaped > 0)) ||
            (leases[i].key_id == NULL && spared == 0))
            STORE_CALL(a->b->store, lease_release, a->org, leases[i].id, now);
    }
    store_lease_list_free(leases, nl);
    json_decref(j);
    return reaped;
}

int az_reap_app(az_app *a)
{
    CURL *e = curl_easy_init();
    if (e == NULL)
        return 0;
    int n = reap_with(a, e);
    curl_easy_cleanup(e);
    return n;
}

/* ---- the engine's side ------------------------------------------------------------ */

int az_app_token(az_app *a, uint64_t since_fail_gen, char **token, uint64_t *gen,
                 char key_id[AZ_KEYID_MAX], char *err, size_t errn, int *status)
{
    int r;
    pthread_mutex_lock(&a->mu);
    if (a->token != NULL && az_now_ms() < a->token_until_ms) {
        *token = xstrdup(a->token);
        *gen = a->token_gen;
        snprintf(key_id, AZ_KEYID_MAX, "%s", a->token_key);
        r = 1;
    } else if (a->fail_gen != since_fail_gen) {
        snprintf(err, errn, "%s", a->fail_text);
        *status = a->fail_status;
        r = -1;
    } else {
        a->wanted = 1;
        r = 0;
    }
    pthread_mutex_unlock(&a->mu);
    if (r == 0) {
        pthread_mutex_lock(&a->b->creds_mu);
        a->b->creds_kick = 1;
        pthread_cond_signal(&a->b->creds_cv);
        pthread_mutex_unlock(&a->b->creds_mu);
    }
    return r;
}

uint64_t az_app_fail_gen(az_app *a)
{
    pthread_mutex_lock(&a->mu);
    uint64_t g = a->fail_gen;
    pthread_mutex_unlock(&a->mu);
    return g;
}

void az_app_token_refused(az_app *a, uint64_t gen)
{
    pthread_mutex_lock(&a->mu);
    if (a->token_gen == gen && a->token != NULL) {
        sodium_free(a->token);
        a->token = NULL;
        a->token_until_ms = 0;
    }
    pthread_mutex_unlock(&a->mu);
}

/* ---- apps ------------------------------------------------------------------------ */

qk_err az_app_get(azure_backend *b, const store_profile *p, const azure_cfg *cfg, az_app **out)
{
    *out = NULL;
    pthread_mutex_lock(&b->apps_mu);
    for (size_t i = 0; i < b->napps; i++)
        if (b->apps[i]->org == p->org_id &&
            strcmp(b->apps[i]->cfg.app_object_id, cfg->app_object_id) == 0) {
            atomic_fetch_add(&b->apps[i]->refs, 1);
            *out = b->apps[i];
            pthread_mutex_unlock(&b->apps_mu);
            return QK_OK;
        }
    az_app *a = xcalloc(1, sizeof(*a));
    a->b = b;
    a->org = p->org_id;
    a->secrets_row = p->key_id;
    /* A deep copy of the config. */
    a->cfg = *cfg;
    a->cfg.endpoint = xstrdup(cfg->endpoint);
    a->cfg.account = xstrdup(cfg->account);
    a->cfg.cert_profile = xstrdup(cfg->cert_profile);
    a->cfg.tenant = xstrdup(cfg->tenant);
    a->cfg.client_id = xstrdup(cfg->client_id);
    a->cfg.app_object_id = xstrdup(cfg->app_object_id);
    a->cfg.authority_url = xstrdup(cfg->authority_url);
    a->cfg.graph_url = xstrdup(cfg->graph_url);
    a->cfg.ca_pem = xstrdup_null(cfg->ca_pem);
    a->cfg.graph_client_id = xstrdup(cfg->graph_client_id);
    pthread_mutex_init(&a->mu, NULL);
    atomic_init(&a->refs, 2); /* the registry's and the caller's */
    qk_err rc = az_trust_new(a->cfg.ca_pem, &a->trust);
    if (rc != QK_OK) {
        pthread_mutex_unlock(&b->apps_mu);
        azure_cfg_clear(&a->cfg);
        pthread_mutex_destroy(&a->mu);
        free(a);
        return rc;
    }
    b->apps = xrealloc(b->apps, (b->napps + 1) * sizeof(*b->apps));
    b->apps[b->napps++] = a;
    pthread_mutex_unlock(&b->apps_mu);
    *out = a;
    return QK_OK;
}

void az_app_release(az_app *a)
{
    if (a == NULL || atomic_fetch_sub(&a->refs, 1) != 1)
        return;
    secure_free(&a->graph_secret);
    secure_free(&a->graph_token);
    secure_free(&a->secret);
    if (a->token != NULL)
        sodium_free(a->token);
    az_trust_free(a->trust);
    azure_cfg_clear(&a->cfg);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

/* A snapshot of the registry, each app with a reference. */
static az_app **apps_snapshot(azure_backend *b, size_t *n)
{
    pthread_mutex_lock(&b->apps_mu);
    az_app **v = xcalloc(b->napps + 1, sizeof(*v));
    for (size_t i = 0; i < b->napps; i++) {
        atomic_fetch_add(&b->apps[i]->refs, 1);
        v[i] = b->apps[i];
    }
    *n = b->napps;
    pthread_mutex_unlock(&b->apps_mu);
    return v;
}

static void apps_release(az_app **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        az_app_release(v[i]);
    free(v);
}

/* ---- the credential thread ------------------------------------------------------ */

static void reap_all(azure_backend *b, CURL *e)
{
    store_org *orgs = NULL;
    size_t no = 0;
    if (STORE_CALL(b->store, org_list, &orgs, &no) != QK_OK)
        return;
    for (size_t i = 0; i < no && !stopping(b); i++) {
        store_profile *ps = NULL;
        size_t np = 0;
        if (STORE_CALL(b->store, profile_list, orgs[i].id, &ps, &np) != QK_OK)
            continue;
        for (size_t k = 0; k < np; k++) {
            if (ps[k].backend == NULL || strcmp(ps[k].backend, "azure") != 0 ||
                ps[k].disabled_at != 0 || ps[k].config == NULL)
                continue;
            json_t *cfg_json = json_loads(ps[k].config, 0, NULL);
            azure_cfg cfg;
            az_app *a = NULL;
            if (cfg_json != NULL &&
                azure_cfg_parse(json_object_get(cfg_json, "azure"), &cfg) == QK_OK) {
                if (az_app_get(b, &ps[k], &cfg, &a) == QK_OK) {
                    reap_with(a, e);
                    az_app_release(a);
                }
                azure_cfg_clear(&cfg);
            }
            json_decref(cfg_json);
        }
        store_profile_list_free(ps, np);
    }
    store_org_list_free(orgs, no);
}

int azure_backend_reap_now(azure_backend *b)
{
    CURL *e = curl_easy_init();
    long before = atomic_load(&b->stats.reaped);
    if (e != NULL) {
        reap_all(b, e);
        curl_easy_cleanup(e);
    }
    return (int)(atomic_load(&b->stats.reaped) - before);
}

static void *creds_main(void *arg)
{
    azure_backend *b = arg;
    CURL *e = curl_easy_init();
    int64_t next_reap = az_now_ms() + (int64_t)b->reaper_interval_s * 1000;
    while (e != NULL && !stopping(b)) {
        size_t n = 0;
        az_app **apps = apps_snapshot(b, &n);
        for (size_t i = 0; i < n && !stopping(b); i++) {
            az_app *a = apps[i];
            pthread_mutex_lock(&a->mu);
            int want = a->wanted && (a->token == NULL || az_now_ms() >= a->token_until_ms);
            pthread_mutex_unlock(&a->mu);
            if (a->secret != NULL && az_now_ms() >= a->secret_until_ms)
                retire_secret(a, e, "ttl");
            if (want)
                fetch_token(a, e);
            heartbeat(a);
        }
        apps_release(apps, n);
        if (az_now_ms() >= next_reap) {
            reap_all(b, e);
            next_reap = az_now_ms() + (int64_t)b->reaper_interval_s * 1000;
        }
        pthread_mutex_lock(&b->creds_mu);
        if (!b->creds_kick && !b->creds_stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 200 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&b->creds_cv, &b->creds_mu, &ts);
        }
        b->creds_kick = 0;
        pthread_mutex_unlock(&b->creds_mu);
    }
    curl_easy_cleanup(e);
    return NULL;
}

qk_err az_creds_start(azure_backend *b)
{
    if (pthread_create(&b->creds_thread, NULL, creds_main, b) != 0)
        return qk_fail(QK_ERR_IO, "cannot start the Azure credential thread");
    b->creds_started = 1;
    return QK_OK;
}

void az_creds_stop(azure_backend *b)
{
    pthread_mutex_lock(&b->creds_mu);
    b->creds_stop = 1;
    pthread_cond_broadcast(&b->creds_cv);
    pthread_mutex_unlock(&b->creds_mu);
    if (b->creds_started)
        pthread_join(b->creds_thread, NULL);
    b->creds_started = 0;
    /* Clean shutdown: every secret this process created is revoked. The
     * stop flag is cleared for these last calls so their retries still run
     * (bounded by MAX_TRIES). */
    pthread_mutex_lock(&b->creds_mu);
    b->creds_stop = 0;
    pthread_mutex_unlock(&b->creds_mu);
    CURL *e = curl_easy_init();
    size_t n = 0;
    az_app **apps = apps_snapshot(b, &n);
    for (size_t i = 0; e != NULL && i < n; i++)
        retire_secret(apps[i], e, "shutdown");
    apps_release(apps, n);
    curl_easy_cleanup(e);
    pthread_mutex_lock(&b->creds_mu);
    b->creds_stop = 1;
    pthread_mutex_unlock(&b->creds_mu);
}
