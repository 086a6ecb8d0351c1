/* qwickd.json loading and writing (see config.h). */
#include <stdlib.h>
#include <stddef.h>
#include <string.h>

#include <jansson.h>

#include "config/config.h"
#include "http/http.h"
#include "signer/pki.h"
#include "core/ratelimit.h"
#include "store/store.h"
#include "core/cidr.h"
#include "core/util.h"

static char *resolve(const char *dir, const char *p)
{
    return p[0] == '/' ? xstrdup(p) : path_join(dir, p);
}

void config_defaults(const char *data_dir, qwickd_config *c)
{
    memset(c, 0, sizeof(*c));
    c->listen = xstrdup(CONFIG_DEFAULT_LISTEN);
    c->default_org = xstrdup(CONFIG_DEFAULT_ORG);
    c->tls_cert = path_join(data_dir, PKI_TLS_CERT);
    c->tls_key = path_join(data_dir, PKI_TLS_KEY);
    c->tsa_cert = path_join(data_dir, PKI_TSA_CERT);
    c->tsa_key = path_join(data_dir, PKI_TSA_KEY_SEALED);
    c->max_connections = CONFIG_DEFAULT_MAX_CONNECTIONS;
    c->max_body = CONFIG_DEFAULT_MAX_BODY;
    c->connection_timeout = CONFIG_DEFAULT_CONN_TIMEOUT;
    c->max_connections_per_ip = CONFIG_DEFAULT_MAX_PER_IP;
    c->handshake_timeout = CONFIG_DEFAULT_HANDSHAKE_TIMEOUT;
    c->head_timeout = CONFIG_DEFAULT_HEAD_TIMEOUT;
    c->body_timeout = CONFIG_DEFAULT_BODY_TIMEOUT;
    c->tsa_rate = CONFIG_DEFAULT_TSA_RATE;
    c->tsa_burst = CONFIG_DEFAULT_TSA_BURST;
    c->commit_delay_us = CONFIG_DEFAULT_COMMIT_DELAY_US;
    c->azure_reaper_interval = CONFIG_DEFAULT_AZURE_REAPER;
    c->azure_op_timeout = CONFIG_DEFAULT_AZURE_OP_TIMEOUT;
    c->queue_concurrency = CONFIG_DEFAULT_QUEUE_CONCURRENCY;
    c->queue_max_attempts = CONFIG_DEFAULT_QUEUE_MAX_ATTEMPTS;
    c->queue_lease_seconds = CONFIG_DEFAULT_QUEUE_LEASE;
    c->queue_backoff_ms = CONFIG_DEFAULT_QUEUE_BACKOFF_MS;
    c->queue_backoff_max_ms = CONFIG_DEFAULT_QUEUE_BACKOFF_MAX_MS;
    c->queue_poll_ms = CONFIG_DEFAULT_QUEUE_POLL_MS;
    c->queue_sync_wait_seconds = CONFIG_DEFAULT_QUEUE_SYNC_WAIT;
}

void config_free(qwickd_config *c)
{
    if (c == NULL)
        return;
    free(c->listen);
    free(c->public_url);
    free(c->default_org);
    free(c->database);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->tsa_cert);
    free(c->tsa_key);
    free(c->tsa_policy);
    free(c->tls_priorities);
    for (size_t i = 0; i < c->ncallback_allow; i++)
        free(c->callback_allow[i]);
    free(c->callback_allow);
    memset(c, 0, sizeof(*c));
}

/* Replaces *dst with a string member (NULL allowed when nullable). */
static qk_err get_str(json_t *v, const char *key, int nullable, char **dst, const char *dir)
{
    if (json_is_null(v) && nullable) {
        free(*dst);
        *dst = NULL;
        return QK_OK;
    }
    if (!json_is_string(v) || json_string_length(v) == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "%s: \"%s\" must be a non-empty string", CONFIG_FILE,
                       key);
    free(*dst);
    *dst = dir != NULL ? resolve(dir, json_string_value(v)) : xstrdup(json_string_value(v));
    return QK_OK;
}

static qk_err get_uint(json_t *v, const char *key, json_int_t max, json_int_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > max)
        return qk_fail(QK_ERR_INVALID_ARG, "%s: \"%s\" must be an integer in 0..%lld", CONFIG_FILE,
                       key, (long long)max);
    *out = json_integer_value(v);
    return QK_OK;
}

/* An integer in lo..hi, the key named in full when it is not. */
static qk_err get_range(json_t *v, const char *key, json_int_t lo, json_int_t hi, json_int_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return qk_fail(QK_ERR_INVALID_ARG, "%s: \"%s\" must be an integer in %lld..%lld",
                       CONFIG_FILE, key, (long long)lo, (long long)hi);
    *out = json_integer_value(v);
    return QK_OK;
}

static qk_err unknown(const char *where, const char *key)
{
    return qk_fail(QK_ERR_INVALID_ARG, "%s: unknown key \"%s%s\"", CONFIG_FILE, where, key);
}

/* {"cert", "key", EXTRA}: "tls" with EXTRA "priorities". */
static qk_err parse_pair(json_t *obj, const char *section, char **cert, char **key,
                         const char *extra_name, char **extra, const char *dir)
{
    const char *k;
    json_t *v;
    qk_err rc;
    if (!json_is_object(obj))
        return qk_fail(QK_ERR_INVALID_ARG, "%s: \"%s\" must be an object", CONFIG_FILE, section);
    json_object_foreach(obj, k, v)
    {
        if (strcmp(k, "cert") == 0)
            rc = get_str(v, "cert", 0, cert, dir);
        else if (strcmp(k, "key") == 0)
            rc = get_str(v, "key", 0, key, dir);
        else if (extra != NULL && strcmp(k, extra_name) == 0)
            rc = get_str(v, extra_name, 1, extra, NULL);
        else
            rc = unknown(section, k);
        if (rc != QK_OK)
            return rc;
    }
    return QK_OK;
}

/* The base of the timestampUrl every response carries: an http(s) URL of
 * printable ASCII without spaces, quotes or backslashes, and no trailing
 * slash ("/tsa" is appended). */
static qk_err check_public_url(const char *u)
{
    size_t n = strlen(u);
    if (strncmp(u, "https://", 8) != 0 && strncmp(u, "http://", 7) != 0)
        return qk_fail(QK_ERR_INVALID_ARG, "%s: \"public_url\" must start with https:// or http://",
                       CONFIG_FILE);
    for (const char *p = u; *p; p++)
        if (*p <= ' ' || *p > '~' || *p == '"' || *p == '\\')
            return qk_fail(QK_ERR_INVALID_ARG,
                           "%s: \"public_url\" has a space, quote, backslash or non-ASCII byte",
                           CONFIG_FILE);
    if (u[n - 1] == '/')
        return qk_fail(QK_ERR_INVALID_ARG, "%s: \"public_url\" must not end with /", CONFIG_FILE);
    return QK_OK;
}

/* "tsa": the identity (cert, key, policy) and who may ask how often. */
static qk_err parse_tsa(json_t *obj, qwickd_config *c, const char *dir)
{
    const char *k;
    json_t *v;
    json_int_t n = 0;
    qk_err rc;
    if (!json_is_object(obj))
        return qk_fail(QK_ERR_INVALID_ARG, "%s: \"tsa\" must be an object", CONFIG_FILE);
    json_object_foreach(obj, k, v)
    {
        if (strcmp(k, "cert") == 0) {
            rc = get_str(v, "tsa.cert", 0, &c->tsa_cert, dir);
        } else if (strcmp(k, "key") == 0) {
            rc = get_str(v, "tsa.key", 0, &c->tsa_key, dir);
        } else if (strcmp(k, "policy") == 0) {
            rc = get_str(v, "tsa.policy", 1, &c->tsa_policy, NULL);
        } else if (strcmp(k, "rate_per_ip_per_second") == 0) {
            if ((rc = get_range(v, "tsa.rate_per_ip_per_second", 1, RATELIMIT_MAX_RATE, &n)) ==
                QK_OK)
                c->tsa_rate = (unsigned)n;
        } else if (strcmp(k, "burst_per_ip") == 0) {
            if ((rc = get_range(v, "tsa.burst_per_ip", 1, RATELIMIT_MAX_BURST, &n)) == QK_OK)
                c->tsa_burst = (unsigned)n;
        } else if (strcmp(k, "require_api_key") == 0) {
            rc = json_is_boolean(v)
                     ? QK_OK
                     : qk_fail(QK_ERR_INVALID_ARG,
                               "%s: \"tsa.require_api_key\" must be true or false", CONFIG_FILE);
            if (rc == QK_OK)
                c->tsa_require_key = json_is_true(v);
        } else {
            rc = unknown("tsa.", k);
        }
        if (rc != QK_OK)
            return rc;
    }
    return QK_OK;
}

static qk_err parse_metrics(json_t *obj, qwickd_config *c)
{
    const char *k;
    json_t *v;
    if (!json_is_object(obj))
        return qk_fail(QK_ERR_INVALID_ARG, "%s: \"metrics\" must be an object", CONFIG_FILE);
    json_object_foreach(obj, k, v)
    {
        if (strcmp(k, "anonymous") != 0)
            return unknown("metrics.", k);
        if (!json_is_boolean(v))
            return qk_fail(QK_ERR_INVALID_ARG, "%s: \"metrics.anonymous\" must be true or false",
                           CONFIG_FILE);
        c->metrics_anonymous = json_is_true(v);
    }
    return QK_OK;
}

/* One address at its cap must leave room for everyone else: the per-address
 * cap is below the total. Left at its default, it is half of a total too low for it. */
static qk_err check_per_ip(qwickd_config *c, int per_ip_set)
{
    if (c->max_connections_per_ip < c->max_connections)
        return QK_OK;
    if (per_ip_set)
        return qk_fail(QK_ERR_INVALID_ARG,
                       "%s: \"limits.max_connections_per_ip\" must be below "
                       "limits.max_connections (%u)",
                       CONFIG_FILE, c->max_connections);
    c->max_connections_per_ip = c->max_connections > 1 ? c->max_connections / 2 : 1;
    return QK_OK;
}

static qk_err parse_limits(json_t *obj, qwickd_config *c)
{
    const char *k;
    json_t *v;
    json_int_t n = 0;
    int per_ip_set = 0;
    qk_err rc;
    if (!json_is_object(obj))
        return qk_fail(QK_ERR_INVALID_ARG, "%s: \"limits\" must be an object", CONFIG_FILE);
    json_object_foreach(obj, k, v)
    {
        if (strcmp(k, "threads") == 0) {
            if ((rc = get_uint(v, k, 1024, &n)) == QK_OK)
                c->threads = (unsigned)n;
        } else if (strcmp(k, "max_connections") == 0) {
            if ((rc = get_uint(v, k, 1000000, &n)) == QK_OK)
                c->max_connections = (unsigned)n;
        } else if (strcmp(k, "max_body_bytes") == 0) {
            /* What the HTTP layer can honour, not more: a larger value used to
             * be accepted and silently clamped. */
            if ((rc = get_range(v, "limits.max_body_bytes", 1024, QK_HTTP_MAX_BODY_LIMIT, &n)) ==
                QK_OK)
                c->max_body = (size_t)n;
        } else if (strcmp(k, "commit_delay_us") == 0) {
            if ((rc = get_uint(v, k, STORE_MAX_COMMIT_DELAY_US, &n)) == QK_OK)
                c->commit_delay_us = (unsigned)n;
        } else if (strcmp(k, "connection_timeout_seconds") == 0) {
            /* 0 would mean "no timeout at all" to libmicrohttpd. */
            if ((rc = get_range(v, "limits.connection_timeout_seconds", 1, 86400, &n)) == QK_OK)
                c->connection_timeout = (unsigned)n;
        } else if (strcmp(k, "max_connections_per_ip") == 0) {
            if ((rc = get_range(v, "limits.max_connections_per_ip", 1, 1000000, &n)) == QK_OK) {
                c->max_connections_per_ip = (unsigned)n;
                per_ip_set = 1;
            }
        } else if (strcmp(k, "tls_handshake_timeout_seconds") == 0) {
            if ((rc = get_range(v, "limits.tls_handshake_timeout_seconds", 1,
                                CONFIG_MAX_PHASE_TIMEOUT, &n)) == QK_OK)
                c->handshake_timeout = (unsigned)n;
        } else if (strcmp(k, "request_head_timeout_seconds") == 0) {
            if ((rc = get_range(v, "limits.request_head_timeout_seconds", 1,
                                CONFIG_MAX_PHASE_TIMEOUT, &n)) == QK_OK)
                c->head_timeout = (unsigned)n;
        } else if (strcmp(k, "request_body_timeout_seconds") == 0) {
            if ((rc = get_range(v, "limits.request_body_timeout_seconds", 1,
                                CONFIG_MAX_PHASE_TIMEOUT, &n)) == QK_OK)
                c->body_timeout = (unsigned)n;
        } else {
            rc = unknown("limits.", k);
        }
        if (rc != QK_OK)
            return rc;
    }
    return check_per_ip(c, per_ip_set);
}

static qk_err parse_azure(json_t *obj, qwickd_config *c)
{
    const char *k;
    json_t *v;
    json_int_t n = 0;
    qk_err rc;
    if (!json_is_object(obj))
        return qk_fail(QK_ERR_INVALID_ARG, "%s: \"azure\" must be an object", CONFIG_FILE);
    json_object_foreach(obj, k, v)
    {
        if (strcmp(k, "reaper_interval_seconds") == 0) {
            if ((rc = get_uint(v, k, 86400, &n)) == QK_OK && n == 0)
                rc = qk_fail(QK_ERR_INVALID_ARG, "%s: azure.reaper_interval_seconds must be > 0",
                             CONFIG_FILE);
            if (rc == QK_OK)
                c->azure_reaper_interval = (unsigned)n;
        } else if (strcmp(k, "op_timeout_seconds") == 0) {
            if ((rc = get_uint(v, k, 3600, &n)) == QK_OK && n == 0)
                rc = qk_fail(QK_ERR_INVALID_ARG, "%s: azure.op_timeout_seconds must be > 0",
                             CONFIG_FILE);
            if (rc == QK_OK)
                c->azure_op_timeout = (unsigned)n;
        } else {
            rc = unknown("azure.", k);
        }
        if (rc != QK_OK)
            return rc;
    }
    return QK_OK;
}

/* A list of CIDR strings ("10.0.0.0/8", "::1/128"), each checked by cidr_parse. */
static qk_err parse_cidrs(json_t *v, const char *what, char ***out, size_t *n)
{
    size_t i;
    json_t *e;
    if (!json_is_array(v) || json_array_size(v) > 256)
        return qk_fail(QK_ERR_INVALID_ARG, "%s: \"%s\" must be an array of at most 256 CIDRs",
                       CONFIG_FILE, what);
    json_array_foreach(v, i, e)
    {
        cidr c;
        const char *s = json_string_value(e);
        if (s == NULL || cidr_parse(s, &c) != 0)
            return qk_fail(QK_ERR_INVALID_ARG,
                           "%s: %s[%zu] is not a CIDR (\"10.0.0.0/8\", "
                           "\"::1/128\")",
                           CONFIG_FILE, what, i);
    }
    for (size_t k = 0; k < *n; k++)
        free((*out)[k]);
    free(*out);
    *n = json_array_size(v);
    *out = xcalloc(*n ? *n : 1, sizeof(char *));
    json_array_foreach(v, i, e)(*out)[i] = xstrdup(json_string_value(e));
    return QK_OK;
}

/* "queue": every value an integer within its range, and the callbacks' CIDRs. */
static qk_err parse_queue(json_t *obj, qwickd_config *c)
{
    static const struct {
        const char *key;
        json_int_t lo, hi;
        size_t off;
    } keys[] = {
        {"concurrency", 0, 10000, offsetof(qwickd_config, queue_concurrency)},
        {"max_attempts", 1, 100, offsetof(qwickd_config, queue_max_attempts)},
        {"lease_seconds", 1, 86400, offsetof(qwickd_config, queue_lease_seconds)},
        {"backoff_ms", 1, 3600000, offsetof(qwickd_config, queue_backoff_ms)},
        {"backoff_max_ms", 1, 86400000, offsetof(qwickd_config, queue_backoff_max_ms)},
        {"poll_ms", 10, 60000, offsetof(qwickd_config, queue_poll_ms)},
        {"sync_wait_seconds", 0, 3600, offsetof(qwickd_config, queue_sync_wait_seconds)},
    };
    const char *k;
    json_t *v;
    if (!json_is_object(obj))
        return qk_fail(QK_ERR_INVALID_ARG, "%s: \"queue\" must be an object", CONFIG_FILE);
    json_object_foreach(obj, k, v)
    {
        size_t i = 0;
        if (strcmp(k, "callback_allow") == 0) {
            qk_err rc =
                parse_cidrs(v, "queue.callback_allow", &c->callback_allow, &c->ncallback_allow);
            if (rc != QK_OK)
                return rc;
            continue;
        }
        json_int_t n = 0;
        char what[64];
        while (i < sizeof(keys) / sizeof(keys[0]) && strcmp(keys[i].key, k) != 0)
            i++;
        if (i == sizeof(keys) / sizeof(keys[0]))
            return unknown("queue.", k);
        snprintf(what, sizeof(what), "queue.%s", k);
        qk_err rc = get_range(v, what, keys[i].lo, keys[i].hi, &n);
        if (rc != QK_OK)
            return rc;
        *(unsigned *)((char *)c + keys[i].off) = (unsigned)n;
    }
    return QK_OK;
}

qk_err config_load(const char *data_dir, qwickd_config *out)
{
    qk_err rc = QK_ERR_IO;
    char *path = path_join(data_dir, CONFIG_FILE);
    qk_buf text = {NULL, 0};
    json_t *root = NULL, *v;
    json_error_t jerr;
    const char *k;
    qwickd_config c;

    config_defaults(data_dir, &c);
    memset(out, 0, sizeof(*out));
    if ((rc = file_read_all(path, CONFIG_MAX_FILE, &text)) != QK_OK)
        goto out;
    root = json_loadb((const char *)text.data, text.len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL || !json_is_object(root)) {
        rc = qk_fail(QK_ERR_INVALID_ARG, "%s: line %d: %s", path, jerr.line,
                     root == NULL ? jerr.text : "not a JSON object");
        goto out;
    }
    rc = QK_OK;
    json_object_foreach(root, k, v)
    {
        if (strcmp(k, "version") == 0)
            rc = json_is_integer(v) && json_integer_value(v) == 1
                     ? QK_OK
                     : qk_fail(QK_ERR_INVALID_ARG, "%s: unsupported version", CONFIG_FILE);
        else if (strcmp(k, "listen") == 0)
            rc = get_str(v, k, 0, &c.listen, NULL);
        else if (strcmp(k, "public_url") == 0) {
            if ((rc = get_str(v, k, 1, &c.public_url, NULL)) == QK_OK && c.public_url != NULL)
                rc = check_public_url(c.public_url);
        } else if (strcmp(k, "default_org") == 0)
            rc = get_str(v, k, 0, &c.default_org, NULL);
        else if (strcmp(k, "database") == 0)
            rc = get_str(v, k, 1, &c.database, NULL);
        else if (strcmp(k, "tls") == 0)
            rc = parse_pair(v, "tls.", &c.tls_cert, &c.tls_key, "priorities", &c.tls_priorities,
                            data_dir);
        else if (strcmp(k, "tsa") == 0)
            rc = parse_tsa(v, &c, data_dir);
        else if (strcmp(k, "limits") == 0)
            rc = parse_limits(v, &c);
        else if (strcmp(k, "metrics") == 0)
            rc = parse_metrics(v, &c);
        else if (strcmp(k, "azure") == 0)
            rc = parse_azure(v, &c);
        else if (strcmp(k, "queue") == 0)
            rc = parse_queue(v, &c);
        else
            rc = unknown("", k);
        if (rc != QK_OK)
            goto out;
    }
    *out = c;
    memset(&c, 0, sizeof(c));
out:
    config_free(&c);
    json_decref(root);
    qk_buf_free(&text);
    free(path);
    return rc;
}

qk_err config_write_defaults(const char *data_dir, const char *listen, const char *database)
{
    qk_err rc;
    char *path = path_join(data_dir, CONFIG_FILE);
    char *text = NULL;
    json_t *root = json_pack(
        "{s:i, s:s, s:n, s:s, s:{s:s, s:s}, s:{s:s, s:s, s:n, s:i, s:i, s:b}, s:{s:b}, "
        "s:{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i}, s:{s:i, s:i}}",
        "version", 1, "listen", listen != NULL ? listen : CONFIG_DEFAULT_LISTEN, "public_url",
        "default_org", CONFIG_DEFAULT_ORG, "tls", "cert", PKI_TLS_CERT, "key", PKI_TLS_KEY, "tsa",
        "cert", PKI_TSA_CERT, "key", PKI_TSA_KEY_SEALED, "policy", "rate_per_ip_per_second",
        (int)CONFIG_DEFAULT_TSA_RATE, "burst_per_ip", (int)CONFIG_DEFAULT_TSA_BURST,
        "require_api_key", 0, "metrics", "anonymous", 0, "limits", "threads", 0, "max_connections",
        (int)CONFIG_DEFAULT_MAX_CONNECTIONS, "max_connections_per_ip",
        (int)CONFIG_DEFAULT_MAX_PER_IP, "max_body_bytes", (int)CONFIG_DEFAULT_MAX_BODY,
        "connection_timeout_seconds", (int)CONFIG_DEFAULT_CONN_TIMEOUT,
        "tls_handshake_timeout_seconds", (int)CONFIG_DEFAULT_HANDSHAKE_TIMEOUT,
        "request_head_timeout_seconds", (int)CONFIG_DEFAULT_HEAD_TIMEOUT,
        "request_body_timeout_seconds", (int)CONFIG_DEFAULT_BODY_TIMEOUT, "commit_delay_us",
        (int)CONFIG_DEFAULT_COMMIT_DELAY_US, "azure", "reaper_interval_seconds",
        (int)CONFIG_DEFAULT_AZURE_REAPER, "op_timeout_seconds",
        (int)CONFIG_DEFAULT_AZURE_OP_TIMEOUT);
    if (root != NULL)
        json_object_set_new(root, "queue",
                            json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i}", "concurrency",
                                      (int)CONFIG_DEFAULT_QUEUE_CONCURRENCY, "max_attempts",
                                      (int)CONFIG_DEFAULT_QUEUE_MAX_ATTEMPTS, "lease_seconds",
                                      (int)CONFIG_DEFAULT_QUEUE_LEASE, "backoff_ms",
                                      (int)CONFIG_DEFAULT_QUEUE_BACKOFF_MS, "backoff_max_ms",
                                      (int)CONFIG_DEFAULT_QUEUE_BACKOFF_MAX_MS, "poll_ms",
                                      (int)CONFIG_DEFAULT_QUEUE_POLL_MS, "sync_wait_seconds",
                                      (int)CONFIG_DEFAULT_QUEUE_SYNC_WAIT));
    if (root != NULL)
        json_object_set_new(root, "database",
                            database != NULL ? json_string(database) : json_null());
    if (root == NULL || (text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER)) == NULL) {
        rc = qk_fail(QK_ERR_NOMEM, "building %s", CONFIG_FILE);
        goto out;
    }
    size_t n = strlen(text);
    text = xrealloc(text, n + 2);
    text[n] = '\n';
    text[n + 1] = '\0';
    rc = file_create_excl(path, (qk_slice){(const uint8_t *)text, n + 1}, 0600);
out:
    free(text);
    json_decref(root);
    free(path);
    return rc;
}

char *config_url_from_listen(const char *listen, int tls)
{
    const char *scheme = tls ? "https" : "http";
    /* "0.0.0.0:8443" or "[::]:8443" are not URLs a client can use; the caller
     * decides (public_url, or the Host header) in that case. */
    return xasprintf("%s://%s", scheme, listen);
}
