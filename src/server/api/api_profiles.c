/* /api/v1/profiles: certificate profile administration for admins.
 *
 *   GET  /api/v1/profiles                 {"profiles":[…]}
 *   POST /api/v1/profiles                 {"name","config":{…}} → 201 the profile
 *   GET  /api/v1/profiles/{name}          the profile
 *   POST /api/v1/profiles/{name}/disable  the profile, now disabled
 *
 * A config is what `qwickd profile create` reads, with contents instead of
 * file names (keyPem, chainPem, pkcs12Base64, azure.caPem). Secrets in it are
 * sealed and never returned. Every change commits with its audit entry in
 * one transaction (fail-closed: no entry, no change). */
#include <string.h>

#include <sodium.h>

#include "api/api.h"
#include "core/log.h"
#include "signer/profile.h"
#include "core/util.h"

/* The request body holds secrets (keys, tokens): wiped once parsed. */
static void wipe_body(http_req *req)
{
    if (req->body != NULL)
        sodium_memzero(req->body, req->body_len);
}

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

static void reply_profile(http_req *req, int status, int64_t org, const char *name)
{
    store_profile p;
    int found = 0;
    qk_err rc = STORE_CALL(req->srv->store, profile_get, org, name, &p, &found);
    if (rc != QK_OK) {
        if (!found && rc == QK_ERR_INVALID_ARG)
            http_error(req, 404, "not_found", "no such profile");
        else
            http_error(req, 503, "store_unavailable", "cannot read the profile now");
        return;
    }
    http_json(req, status, profile_json(&p));
    store_profile_clear(&p);
}

void api_profiles_list(http_req *req)
{
    store_apikey key;
    store_profile *ps = NULL;
    size_t n = 0;
    if (admin_key(req, &key) != 0)
        return;
    if (STORE_CALL(req->srv->store, profile_list, key.org_id, &ps, &n) != QK_OK) {
        http_error(req, 503, "store_unavailable", "cannot list profiles now");
    } else {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, profile_json(&ps[i]));
        http_json(req, 200, json_pack("{s:o}", "profiles", arr));
    }
    store_profile_list_free(ps, n);
    store_apikey_clear(&key);
}

void api_profiles_get(http_req *req)
{
    store_apikey key;
    if (admin_key(req, &key) != 0)
        return;
    reply_profile(req, 200, key.org_id, req->params[0]);
    store_apikey_clear(&key);
}

void api_profiles_create(http_req *req)
{
    static const char *const fields[] = {"name", "config", NULL};
    store_apikey key;
    profile_import imp;
    json_t *body = NULL;
    const char *name = NULL;
    int64_t id = 0;
    int found = 0;
    qk_err rc;

    memset(&imp, 0, sizeof(imp));
    if (admin_key(req, &key) != 0) {
        wipe_body(req);
        return;
    }
    body = api_parse_object(req);
    wipe_body(req);
    if (body == NULL || api_only_fields(req, body, NULL, fields) != 0 ||
        api_opt_string(req, body, "name", PROFILE_MAX_NAME, &name) != 0)
        goto out;
    if (name == NULL || !profile_name_ok(name)) {
        http_error(req, 400, "invalid_value", "'name' is required: 1 to %d of A-Z a-z 0-9 . _ -",
                   PROFILE_MAX_NAME);
        goto out;
    }
    if (!json_is_object(json_object_get(body, "config"))) {
        http_error(req, 400, "missing_field", "'config' (an object) is required");
        goto out;
    }
    store_profile existing;
    if (STORE_CALL(req->srv->store, profile_get, key.org_id, name, &existing, &found) == QK_OK) {
        store_profile_clear(&existing);
        http_error(req, 409, "profile_exists", "a profile named '%s' exists", name);
        goto out;
    }
    if ((rc = profile_import_json(json_object_get(body, "config"), NULL, &imp)) != QK_OK) {
        http_error(req, 400, "invalid_config", "%s", qk_error_detail());
        goto out;
    }
    store_audit a;
    api_audit_init(req, &key, "profile.create", &a);
    if ((rc = profile_store(req->srv->store, req->srv->keyring, key.org_id, name, &imp, &a, &id)) !=
        QK_OK) {
        log_kv(LOG_ERROR, "profile create failed", "request_id", req->id, "detail",
               qk_error_detail(), NULL);
        http_error(req, 503, "store_unavailable",
                   "the profile and its audit entry could not be recorded, so it was not made");
        goto out;
    }
    reply_profile(req, 201, key.org_id, name);
out:
    profile_import_clear(&imp);
    profile_json_wipe(body);
    json_decref(body);
    store_apikey_clear(&key);
}

void api_profiles_disable(http_req *req)
{
    store_apikey key;
    store_profile p;
    int found = 0;
    if (admin_key(req, &key) != 0)
        return;
    qk_err rc = STORE_CALL(req->srv->store, profile_get, key.org_id, req->params[0], &p, &found);
    if (rc != QK_OK) {
        if (!found && rc == QK_ERR_INVALID_ARG)
            http_error(req, 404, "not_found", "no such profile");
        else
            http_error(req, 503, "store_unavailable", "cannot read the profile now");
        goto out;
    }
    store_profile_clear(&p);
    store_audit a;
    api_audit_init(req, &key, "profile.disable", &a);
    if (STORE_CALL(req->srv->store, profile_disable, key.org_id, req->params[0], now_unix(), &a,
                   &found) != QK_OK) {
        http_error(req, 503, "store_unavailable", "cannot disable the profile now");
        goto out;
    }
    reply_profile(req, 200, key.org_id, req->params[0]);
out:
    store_apikey_clear(&key);
}
