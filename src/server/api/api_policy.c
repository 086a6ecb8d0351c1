/* Signing policies over HTTP (api_policy.h):
 *
 *   GET  /api/v1/profiles/{name}/policy   {"profile","policy":{…}|null}      admin
 *   PUT  /api/v1/profiles/{name}/policy   a policy document → the same        admin
 *   DELETE /api/v1/profiles/{name}/policy removes it → the same               admin
 *   POST /api/v1/policy/evaluate          a hypothetical request → decision   admin
 *
 * and the check every signing request goes through (api_policy_check), with
 * each profile's parsed policy cached: parsing a document of a thousand
 * ranges per request would cost more than the check. */
#include "api/api_policy.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/log.h"
#include "core/util.h"
#include "policy/policy.h"

/* Cached parsed policies beyond this count are parsed per request. */
#define POLICY_CACHE_MAX 1024

typedef struct cached_policy {
    int64_t org, profile_id;
    char *text; /* the stored document: a change shows as a different text */
    policy *pol;
    atomic_int refs;
    struct cached_policy *next;
} cached_policy;

struct policy_cache {
    pthread_mutex_t lock;
    cached_policy *head;
    size_t n;
};

static void cached_release(cached_policy *e)
{
    if (e == NULL || atomic_fetch_sub(&e->refs, 1) != 1)
        return;
    policy_free(e->pol);
    free(e->text);
    free(e);
}

policy_cache *policy_cache_new(void)
{
    policy_cache *c = xcalloc(1, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void policy_cache_free(policy_cache *c)
{
    if (c == NULL)
        return;
    for (cached_policy *e = c->head, *next; e != NULL; e = next) {
        next = e->next;
        cached_release(e);
    }
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* The parsed policy of profile `p` (a reference: release it), or NULL with
 * *e when its stored document no longer parses (refused: fail closed). */
static cached_policy *policy_of(policy_cache *c, const store_profile *p, api_error *e)
{
    pthread_mutex_lock(&c->lock);
    for (cached_policy *x = c->head; x != NULL; x = x->next)
        if (x->org == p->org_id && x->profile_id == p->id && strcmp(x->text, p->policy) == 0) {
            atomic_fetch_add(&x->refs, 1);
            pthread_mutex_unlock(&c->lock);
            return x;
        }
    pthread_mutex_unlock(&c->lock);

    policy *pol = NULL;
    if (policy_parse((const uint8_t *)p->policy, strlen(p->policy), &pol, e) != 0)
        return NULL;
    cached_policy *n = xcalloc(1, sizeof(*n));
    n->org = p->org_id;
    n->profile_id = p->id;
    n->text = xstrdup(p->policy);
    n->pol = pol;
    atomic_init(&n->refs, 1);
    pthread_mutex_lock(&c->lock);
    /* Drop the entry of an earlier version of this profile's policy. */
    for (cached_policy **pp = &c->head; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->org == p->org_id && (*pp)->profile_id == p->id) {
            cached_policy *old = *pp;
            *pp = old->next;
            c->n--;
            cached_release(old);
            break;
        }
    if (c->n < POLICY_CACHE_MAX) {
        atomic_fetch_add(&n->refs, 1);
        n->next = c->head;
        c->head = n;
        c->n++;
    }
    pthread_mutex_unlock(&c->lock);
    return n;
}

int api_policy_check(http_req *req, const store_profile *prof, const sign_input *in,
                     policy_decision *d)
{
    memset(d, 0, sizeof(*d));
    d->allowed = 1;
    d->rule = "none";
    if (prof->policy == NULL)
        return 0;
    api_error e;
    cached_policy *cp = policy_of(req->srv->policies, prof, &e);
    if (cp == NULL) {
        log_kv(LOG_ERROR, "stored policy does not parse", "request_id", req->id, "profile",
               prof->name, "detail", e.message, NULL);
        d->allowed = 0;
        d->status = 500;
        d->code = "invalid_policy";
        d->rule = "policy";
        snprintf(d->message, sizeof(d->message), "the profile's stored policy is invalid: %.200s",
                 e.message);
        return -1;
    }
    policy_request r = {
        .addr = http_client_addr(req),
        .now = now_unix(),
        .filename = in->filename,
        .format = sign_format_name(in->format),
        .alg = in->alg,
        .has_justification = in->justification != NULL && in->justification[0] != '\0',
    };
    policy_check(cp->pol, &r, d);
    cached_release(cp);
    return d->allowed ? 0 : -1;
}

/* --- administration -------------------------------------------------------- */

static int admin_key(http_req *req, store_apikey *key)
{
    if (api_authenticate(req, key) != 0)
        return -1;
    if (api_need_role(req, key, ROLE_ADMIN) != 0) {
        store_apikey_clear(key);
        return -1;
    }
    return 0;
}

static int read_profile(http_req *req, int64_t org, const char *name, store_profile *p)
{
    int found = 0;
    qk_err rc = STORE_CALL(req->srv->store, profile_get, org, name, p, &found);
    if (rc == QK_OK)
        return 0;
    if (!found && rc == QK_ERR_INVALID_ARG)
        http_error(req, 404, "not_found", "no such profile");
    else
        http_error(req, 503, "store_unavailable", "cannot read the profile now");
    return -1;
}

static void reply_policy(http_req *req, int status, const char *name, const char *text)
{
    json_t *j = json_object();
    json_object_set_new(j, "profile", json_string(name));
    json_object_set_new(j, "policy", text != NULL ? json_loads(text, 0, NULL) : json_null());
    http_json(req, status, j);
}

void api_policy_get(http_req *req)
{
    store_apikey key;
    store_profile p;
    if (admin_key(req, &key) != 0)
        return;
    if (read_profile(req, key.org_id, req->params[0], &p) == 0) {
        reply_policy(req, 200, p.name, p.policy);
        store_profile_clear(&p);
    }
    store_apikey_clear(&key);
}

/* PUT (a document) and DELETE (none). */
static void set_policy(http_req *req, int put)
{
    store_apikey key;
    store_profile p;
    policy *pol = NULL;
    char *canon = NULL;
    api_error e;
    int found = 0;
    if (admin_key(req, &key) != 0)
        return;
    if (put) {
        if (api_require_json(req) != 0)
            goto out;
        if (policy_parse(req->body, req->body_len, &pol, &e) != 0) {
            api_reply_error(req, &e);
            goto out;
        }
        canon = policy_canonical(pol);
    }
    if (read_profile(req, key.org_id, req->params[0], &p) != 0)
        goto out;
    store_profile_clear(&p);
    store_audit a;
    api_audit_init(req, &key, put ? "policy.set" : "policy.clear", &a);
    a.profile = req->params[0];
    if (STORE_CALL(req->srv->store, profile_set_policy, key.org_id, req->params[0], canon,
                   now_unix(), &a, &found) != QK_OK) {
        http_error(req, 503, "store_unavailable", "cannot change the policy now");
        goto out;
    }
    reply_policy(req, 200, req->params[0], canon);
out:
    free(canon);
    policy_free(pol);
    store_apikey_clear(&key);
}

void api_policy_put(http_req *req)
{
    set_policy(req, 1);
}

void api_policy_delete(http_req *req)
{
    set_policy(req, 0);
}

/* An address for the evaluation ("10.1.2.3", "2001:db8::1"). */
static int parse_addr(const char *s, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, s, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        return 0;
    }
    return -1;
}

/* POST /api/v1/policy/evaluate:
 *   {"profile"?: NAME | "policy"?: {…}, "filename"?, "format"?, "algorithm"?,
 *    "address"?, "time"?: unix seconds, "justification"?}
 * → {"decision":"allow"|"deny","rule","code"?,"status"?,"message"?}
 * The profile's stored policy, or a document to try before applying it.
 * Nothing is signed and nothing is recorded. */
void api_policy_evaluate(http_req *req)
{
    static const char *const fields[] = {"profile", "policy",        "filename",
                                         "format",  "algorithm",     "address",
                                         "time",    "justification", NULL};
    store_apikey key;
    store_profile p = {0};
    policy *pol = NULL;
    json_t *body = NULL;
    api_error e;
    if (admin_key(req, &key) != 0)
        return;
    if ((body = api_parse_object(req)) == NULL || api_only_fields(req, body, NULL, fields) != 0)
        goto out;
    const char *profile = NULL, *filename = NULL, *format = NULL, *algorithm = NULL,
               *address = NULL, *justification = NULL;
    if (json_in_opt_string(body, "profile", SIGN_MAX_PROFILE, &profile, &e) != 0 ||
        json_in_opt_string(body, "filename", SIGN_MAX_FILENAME, &filename, &e) != 0 ||
        json_in_opt_string(body, "format", 32, &format, &e) != 0 ||
        json_in_opt_string(body, "algorithm", 16, &algorithm, &e) != 0 ||
        json_in_opt_string(body, "address", 64, &address, &e) != 0 ||
        json_in_opt_string(body, "justification", SIGN_MAX_JUSTIFICATION, &justification, &e) !=
            0) {
        api_reply_error(req, &e);
        goto out;
    }
    json_t *doc = json_object_get(body, "policy");
    if ((profile == NULL) == (doc == NULL)) {
        http_error(req, 400, "invalid_value", "give either 'profile' or 'policy'");
        goto out;
    }
    if (doc != NULL) {
        char *text = json_is_object(doc) ? json_dumps(doc, JSON_COMPACT) : NULL;
        int rc = text != NULL ? policy_parse((const uint8_t *)text, strlen(text), &pol, &e)
                              : api_fail(&e, 400, "invalid_policy", "'policy' must be an object");
        free(text);
        if (rc != 0) {
            api_reply_error(req, &e);
            goto out;
        }
    } else {
        if (read_profile(req, key.org_id, profile, &p) != 0)
            goto out;
        if (p.policy != NULL &&
            policy_parse((const uint8_t *)p.policy, strlen(p.policy), &pol, &e) != 0) {
            http_error(req, 500, "invalid_policy", "the stored policy is invalid: %s", e.message);
            goto out;
        }
    }
    policy_request r = {.now = now_unix(), .filename = filename, .alg = QK_HASH_SHA256};
    struct sockaddr_storage ss;
    if (address != NULL) {
        if (parse_addr(address, &ss) != 0) {
            http_error(req, 400, "invalid_value", "'address' is not an IPv4 or IPv6 address");
            goto out;
        }
        r.addr = (const struct sockaddr *)&ss;
    } else {
        r.addr = http_client_addr(req);
    }
    sign_format fmt = FMT_AUTHENTICODE_PE;
    if (format != NULL && sign_format_parse(format, &fmt) != 0) {
        http_error(req, 400, "unknown_format", "'format' is not a format");
        goto out;
    }
    r.format = sign_format_name(fmt);
    if (algorithm != NULL && (r.alg = qk_hash_from_name(algorithm)) == QK_HASH_NONE) {
        http_error(req, 400, "unknown_algorithm", "'algorithm' is not an algorithm");
        goto out;
    }
    json_t *t = json_object_get(body, "time");
    if (t != NULL) {
        if (!json_is_integer(t) || json_integer_value(t) < 0) {
            http_error(req, 400, "invalid_type", "'time' must be unix seconds");
            goto out;
        }
        r.now = json_integer_value(t);
    }
    r.has_justification = justification != NULL && justification[0] != '\0';
    policy_decision d;
    policy_check(pol, &r, &d);
    json_t *j = json_pack("{s:s,s:s}", "decision", d.allowed ? "allow" : "deny", "rule", d.rule);
    if (!d.allowed) {
        json_object_set_new(j, "code", json_string(d.code));
        json_object_set_new(j, "status", json_integer(d.status));
        json_object_set_new(j, "message", json_string(d.message));
    }
    http_json(req, 200, j);
out:
    json_decref(body);
    policy_free(pol);
    store_profile_clear(&p);
    store_apikey_clear(&key);
}
