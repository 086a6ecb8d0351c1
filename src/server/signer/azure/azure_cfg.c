/* Azure profile settings: strict import and parse (see azure_cfg.h). */
#include "signer/azure/azure_cfg.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/util.h"

#define AZ_MAX_STR 512

static const char *const azure_keys[] = {
    "endpoint",    "account",  "certificateProfile", "tenantId", "clientId",
    "applicationObjectId", "authorityUrl", "graphUrl", "caFile", "caPem",
    "graph",       "credentials", NULL};

static int key_allowed(const char *k, const char *const *allowed)
{
    for (size_t i = 0; allowed[i] != NULL; i++)
        if (strcmp(k, allowed[i]) == 0)
            return 1;
    return 0;
}

static qk_err only_keys(json_t *obj, const char *where, const char *const *allowed)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        (void)v;
        if (!key_allowed(k, allowed))
            return qk_fail(QK_ERR_INVALID_ARG, "%s: unknown key '%s'", where, k);
    }
    return QK_OK;
}

/* Refresh tokens and client secrets run to kilobytes. */
#define AZ_MAX_SECRET (16 * 1024)

static qk_err get_str_max(json_t *obj, const char *where, const char *key, const char *def,
                          size_t max, const char **out);

/* A required (or optional when `def` is given) string of sane characters. */
static qk_err get_str(json_t *obj, const char *where, const char *key, const char *def,
                      const char **out)
{
    return get_str_max(obj, where, key, def, AZ_MAX_STR, out);
}

static qk_err get_str_max(json_t *obj, const char *where, const char *key, const char *def,
                          size_t max, const char **out)
{
    json_t *v = json_object_get(obj, key);
    *out = def;
    if (v == NULL || json_is_null(v)) {
        if (def == NULL)
            return qk_fail(QK_ERR_INVALID_ARG, "%s.%s is required", where, key);
        return QK_OK;
    }
    const char *s = json_string_value(v);
    if (s == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "%s.%s must be a string", where, key);
    size_t n = strlen(s);
    if (n == 0 || n > max || n != json_string_length(v))
        return qk_fail(QK_ERR_INVALID_ARG, "%s.%s must be 1 to %zu characters", where, key, max);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || s[i] == 0x7f)
            return qk_fail(QK_ERR_INVALID_ARG, "%s.%s must not contain spaces or controls",
                           where, key);
    *out = s;
    return QK_OK;
}

/* A path segment of a URL (account, profile, ids): no '/', '?', '#', '%'. */
static qk_err get_segment(json_t *obj, const char *key, const char **out)
{
    qk_err rc = get_str(obj, "azure", key, NULL, out);
    if (rc == QK_OK && strpbrk(*out, "/?#%&\\:") != NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "azure.%s must not contain / ? # %% & \\ or :", key);
    return rc;
}

/* https://host[:port][/path] without query, fragment or user info; the
 * trailing slash dropped. */
static qk_err get_url(json_t *obj, const char *key, const char *def, char **out)
{
    const char *s;
    qk_err rc;
    *out = NULL;
    if ((rc = get_str(obj, "azure", key, def, &s)) != QK_OK)
        return rc;
    if (strncmp(s, "https://", 8) != 0 || s[8] == '\0' || s[8] == '/')
        return qk_fail(QK_ERR_INVALID_ARG, "azure.%s must be an https:// URL", key);
    if (strpbrk(s + 8, "?#@") != NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "azure.%s must not have a query, fragment or user",
                       key);
    size_t n = strlen(s);
    while (n > 8 && s[n - 1] == '/')
        n--;
    *out = xstrndup(s, n);
    return QK_OK;
}

static qk_err get_uint(json_t *obj, const char *where, const char *key, unsigned def,
                       unsigned lo, unsigned hi, unsigned *out)
{
    json_t *v = json_object_get(obj, key);
    *out = def;
    if (v == NULL)
        return QK_OK;
    if (!json_is_integer(v) || json_integer_value(v) < (json_int_t)lo ||
        json_integer_value(v) > (json_int_t)hi)
        return qk_fail(QK_ERR_INVALID_ARG, "%s.%s must be an integer from %u to %u", where, key,
                       lo, hi);
    *out = (unsigned)json_integer_value(v);
    return QK_OK;
}

/* PEM text that holds at least one certificate. */
static qk_err check_ca_pem(const char *pem, size_t len)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    X509 *x = NULL;
    int n = 0;
    while (bio != NULL && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        X509_free(x);
        n++;
    }
    ERR_clear_error();
    BIO_free(bio);
    return n > 0 ? QK_OK : qk_fail(QK_ERR_BAD_DER, "azure CA PEM holds no certificate");
}

static qk_err read_ca_file(const char *path, const char *base_dir, char **out)
{
    char *full = path[0] == '/' ? xstrdup(path) : path_join(base_dir, path);
    qk_buf b = {NULL, 0};
    qk_err rc = file_read_all(full, AZURE_MAX_CA_PEM, &b);
    *out = NULL;
    if (rc == QK_OK && (rc = check_ca_pem((const char *)b.data, b.len)) != QK_OK)
        rc = qk_fail(QK_ERR_BAD_DER, "azure.caFile %s holds no PEM certificate", full);
    if (rc == QK_OK)
        *out = xstrndup((const char *)b.data, b.len);
    qk_buf_free(&b);
    free(full);
    return rc;
}

static qk_err import_graph(json_t *g, const char *client_id, json_t *pub, json_t **secrets)
{
    const char *rt = NULL, *cs = NULL, *cid = NULL;
    static const char *const graph_keys[] = {"refreshToken", "clientId", "clientSecret", NULL};
    qk_err rc;
    if (!json_is_object(g))
        return qk_fail(QK_ERR_INVALID_ARG, "azure.graph must be an object");
    if ((rc = only_keys(g, "azure.graph", graph_keys)) != QK_OK ||
        (rc = get_str_max(g, "azure.graph", "refreshToken", "", AZ_MAX_SECRET, &rt)) != QK_OK ||
        (rc = get_str_max(g, "azure.graph", "clientSecret", "", AZ_MAX_SECRET, &cs)) != QK_OK ||
        (rc = get_str(g, "azure.graph", "clientId", client_id, &cid)) != QK_OK)
        return rc;
    if ((rt[0] != '\0') == (cs[0] != '\0'))
        return qk_fail(QK_ERR_INVALID_ARG,
                       "azure.graph needs exactly one of refreshToken or clientSecret");
    if (cs[0] != '\0' && json_object_get(g, "clientId") == NULL)
        return qk_fail(QK_ERR_INVALID_ARG,
                       "azure.graph.clientId is required with clientSecret (the manager app)");
    json_object_set_new(pub, "graph",
                        json_pack("{s:s, s:s}", "clientId", cid, "grant",
                                  rt[0] ? "refresh_token" : "client_credentials"));
    *secrets = rt[0] ? json_pack("{s:s}", "refreshToken", rt) : json_pack("{s:s}", "clientSecret", cs);
    return *secrets != NULL ? QK_OK : qk_fail(QK_ERR_NOMEM, "graph secrets");
}

static qk_err import_credentials(json_t *c, json_t *pub)
{
    static const char *const cred_keys[] = {"ttlSeconds", "maxSecrets", "lockTimeoutSeconds",
                                            "maxConcurrent", NULL};
    unsigned ttl, max, lock, conc;
    qk_err rc;
    if (c != NULL && !json_is_object(c))
        return qk_fail(QK_ERR_INVALID_ARG, "azure.credentials must be an object");
    json_t *empty = json_object();
    json_t *o = c != NULL ? c : empty;
    if ((rc = only_keys(o, "azure.credentials", cred_keys)) != QK_OK ||
        (rc = get_uint(o, "azure.credentials", "ttlSeconds", AZURE_DEFAULT_TTL, AZURE_MIN_TTL,
                       AZURE_MAX_TTL, &ttl)) != QK_OK ||
        (rc = get_uint(o, "azure.credentials", "maxSecrets", AZURE_DEFAULT_MAX_SECRETS, 1,
                       AZURE_MAX_SECRETS_LIMIT, &max)) != QK_OK ||
        (rc = get_uint(o, "azure.credentials", "lockTimeoutSeconds", AZURE_DEFAULT_LOCK_TIMEOUT,
                       1, 3600, &lock)) != QK_OK ||
        (rc = get_uint(o, "azure.credentials", "maxConcurrent", AZURE_DEFAULT_MAX_CONCURRENT, 1,
                       4096, &conc)) != QK_OK) {
        json_decref(empty);
        return rc;
    }
    json_decref(empty);
    json_object_set_new(pub, "credentials",
                        json_pack("{s:I, s:I, s:I, s:I}", "ttlSeconds", (json_int_t)ttl,
                                  "maxSecrets", (json_int_t)max, "lockTimeoutSeconds",
                                  (json_int_t)lock, "maxConcurrent", (json_int_t)conc));
    return QK_OK;
}

qk_err azure_cfg_import(json_t *in, const char *base_dir, json_t **public_json,
                        json_t **secrets_json)
{
    json_t *pub = NULL, *secrets = NULL;
    char *url = NULL, *ca = NULL;
    const char *s;
    qk_err rc;
    static const char *const ids[] = {"account", "certificateProfile", "tenantId", "clientId",
                                      "applicationObjectId", NULL};
    static const char *const urls[] = {"endpoint", "authorityUrl", "graphUrl", NULL};
    static const char *const url_defaults[] = {NULL, AZURE_DEFAULT_AUTHORITY,
                                               AZURE_DEFAULT_GRAPH};

    *public_json = *secrets_json = NULL;
    if (!json_is_object(in))
        return qk_fail(QK_ERR_INVALID_ARG, "\"azure\" must be an object");
    if ((rc = only_keys(in, "azure", azure_keys)) != QK_OK)
        return rc;
    if (json_object_get(in, "caFile") != NULL && json_object_get(in, "caPem") != NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "azure: give caFile or caPem, not both");
    if (base_dir == NULL && json_object_get(in, "caFile") != NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "azure.caFile: files cannot be named here, give caPem");
    pub = json_object();
    for (size_t i = 0; urls[i] != NULL; i++) {
        if ((rc = get_url(in, urls[i], url_defaults[i], &url)) != QK_OK)
            goto out;
        json_object_set_new(pub, urls[i], json_string(url));
        free(url);
        url = NULL;
    }
    for (size_t i = 0; ids[i] != NULL; i++) {
        if ((rc = get_segment(in, ids[i], &s)) != QK_OK)
            goto out;
        json_object_set_new(pub, ids[i], json_string(s));
    }
    if ((rc = get_str(in, "azure", "caFile", "", &s)) != QK_OK)
        goto out;
    if (s[0] != '\0' && (rc = read_ca_file(s, base_dir, &ca)) != QK_OK)
        goto out;
    if (ca == NULL && json_object_get(in, "caPem") != NULL) {
        json_t *v = json_object_get(in, "caPem");
        if (!json_is_string(v) || json_string_length(v) > AZURE_MAX_CA_PEM) {
            rc = qk_fail(QK_ERR_INVALID_ARG, "azure.caPem must be PEM text");
            goto out;
        }
        if (check_ca_pem(json_string_value(v), json_string_length(v)) != QK_OK) {
            rc = qk_fail(QK_ERR_BAD_DER, "azure.caPem holds no PEM certificate");
            goto out;
        }
        ca = xstrdup(json_string_value(v));
    }
    if (ca != NULL)
        json_object_set_new(pub, "caPem", json_string(ca));
    if (json_object_get(in, "graph") == NULL) {
        rc = qk_fail(QK_ERR_INVALID_ARG, "azure.graph is required (refreshToken or clientSecret)");
        goto out;
    }
    if ((rc = import_graph(json_object_get(in, "graph"),
                           json_string_value(json_object_get(pub, "clientId")), pub, &secrets)) !=
            QK_OK ||
        (rc = import_credentials(json_object_get(in, "credentials"), pub)) != QK_OK)
        goto out;
    *public_json = pub;
    *secrets_json = secrets;
    pub = secrets = NULL;
out:
    free(url);
    free(ca);
    json_decref(pub);
    json_decref(secrets);
    return rc;
}

static char *dup_member(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s != NULL ? xstrdup(s) : NULL;
}

static unsigned uint_member(json_t *o, const char *k, unsigned def)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (unsigned)json_integer_value(v) : def;
}

qk_err azure_cfg_parse(json_t *pub, azure_cfg *out)
{
    memset(out, 0, sizeof(*out));
    if (!json_is_object(pub))
        return qk_fail(QK_ERR_INVALID_ARG, "azure profile config is not an object");
    out->endpoint = dup_member(pub, "endpoint");
    out->account = dup_member(pub, "account");
    out->cert_profile = dup_member(pub, "certificateProfile");
    out->tenant = dup_member(pub, "tenantId");
    out->client_id = dup_member(pub, "clientId");
    out->app_object_id = dup_member(pub, "applicationObjectId");
    out->authority_url = dup_member(pub, "authorityUrl");
    out->graph_url = dup_member(pub, "graphUrl");
    out->ca_pem = dup_member(pub, "caPem");
    json_t *g = json_object_get(pub, "graph");
    out->graph_client_id = dup_member(g, "clientId");
    const char *grant = json_string_value(json_object_get(g, "grant"));
    out->grant = grant != NULL && strcmp(grant, "client_credentials") == 0
                     ? AZ_GRANT_CLIENT_CREDENTIALS
                     : AZ_GRANT_REFRESH_TOKEN;
    json_t *c = json_object_get(pub, "credentials");
    out->ttl_seconds = uint_member(c, "ttlSeconds", AZURE_DEFAULT_TTL);
    out->max_secrets = uint_member(c, "maxSecrets", AZURE_DEFAULT_MAX_SECRETS);
    out->lock_timeout_seconds = uint_member(c, "lockTimeoutSeconds", AZURE_DEFAULT_LOCK_TIMEOUT);
    out->max_concurrent = uint_member(c, "maxConcurrent", AZURE_DEFAULT_MAX_CONCURRENT);
    if (out->endpoint == NULL || out->account == NULL || out->cert_profile == NULL ||
        out->tenant == NULL || out->client_id == NULL || out->app_object_id == NULL ||
        out->authority_url == NULL || out->graph_url == NULL || out->graph_client_id == NULL) {
        azure_cfg_clear(out);
        return qk_fail(QK_ERR_INVALID_ARG, "azure profile config is incomplete");
    }
    return QK_OK;
}

void azure_cfg_clear(azure_cfg *c)
{
    if (c == NULL)
        return;
    free(c->endpoint);
    free(c->account);
    free(c->cert_profile);
    free(c->tenant);
    free(c->client_id);
    free(c->app_object_id);
    free(c->authority_url);
    free(c->graph_url);
    free(c->ca_pem);
    free(c->graph_client_id);
    memset(c, 0, sizeof(*c));
}

const char *azure_sig_alg(const char *hash_alg)
{
    if (hash_alg == NULL)
        return NULL;
    if (strcmp(hash_alg, "sha256") == 0)
        return "RS256";
    if (strcmp(hash_alg, "sha384") == 0)
        return "RS384";
    if (strcmp(hash_alg, "sha512") == 0)
        return "RS512";
    return NULL;
}
