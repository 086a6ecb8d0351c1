/* The Azure backend's life cycle, its profiles and its metrics (azure.h). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "signer/azure/azure_internal.h"
#include "core/log.h"
#include "core/util.h"

int64_t az_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void az_count_error(azure_backend *b, az_err_class c)
{
    if (c >= 0 && c < AZE__COUNT)
        atomic_fetch_add(&b->stats.errors[c], 1);
}

az_err_class az_class_of(const az_resp *r)
{
    if (r->status == 0)
        return AZE_NETWORK;
    if (r->status == 429)
        return AZE_THROTTLED;
    if (r->status >= 500)
        return AZE_SERVER;
    if (r->status == 401)
        return AZE_UNAUTHORIZED;
    if (r->status == 403)
        return AZE_FORBIDDEN;
    return AZE_REQUEST;
}

qk_err azure_backend_new(const azure_options *o, azure_backend **out)
{
    char host[64] = "qwickd";
    uint8_t rnd[4];
    char hex[9];
    qk_err rc;

    *out = NULL;
    azure_backend *b = xcalloc(1, sizeof(*b));
    b->store = o->store;
    b->keyring = o->keyring;
    b->reaper_interval_s = o->reaper_interval_s ? o->reaper_interval_s
                                                : AZURE_DEFAULT_REAPER_INTERVAL;
    b->op_timeout_s = o->op_timeout_s ? o->op_timeout_s : 120;
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    randombytes_buf(rnd, sizeof(rnd));
    hex_encode(rnd, sizeof(rnd), hex);
    snprintf(b->node, sizeof(b->node), "%s/%ld/%s", host, (long)getpid(), hex);
    pthread_mutex_init(&b->apps_mu, NULL);
    pthread_mutex_init(&b->creds_mu, NULL);
    pthread_cond_init(&b->creds_cv, NULL);
    if ((b->engine = az_engine_new(b)) == NULL) {
        rc = qk_fail(QK_ERR_IO, "cannot start the Azure sign engine");
        goto fail;
    }
    /* Before serving: secrets left behind by a crashed run are revoked now,
     * not an interval later. */
    b->starting = 1;
    int reaped = azure_backend_reap_now(b);
    b->starting = 0;
    if (reaped > 0) {
        char n[16];
        snprintf(n, sizeof(n), "%d", reaped);
        log_kv(LOG_INFO, "azure reaper: startup pass revoked orphaned secrets", "count", n, NULL);
    }
    if ((rc = az_creds_start(b)) != QK_OK)
        goto fail;
    *out = b;
    return QK_OK;
fail:
    azure_backend_free(b);
    return rc;
}

void azure_backend_free(azure_backend *b)
{
    if (b == NULL)
        return;
    az_engine_free(b->engine); /* fails what is queued */
    b->engine = NULL;
    az_creds_stop(b);          /* revokes this process's secrets */
    for (size_t i = 0; i < b->napps; i++)
        az_app_release(b->apps[i]);
    free(b->apps);
    pthread_mutex_destroy(&b->apps_mu);
    pthread_mutex_destroy(&b->creds_mu);
    pthread_cond_destroy(&b->creds_cv);
    free(b);
}

/* "https://host:port" of an endpoint URL (which has no path). */
static char *origin_of(const char *url)
{
    const char *p = strchr(url + strlen("https://"), '/');
    return p ? xstrndup(url, (size_t)(p - url)) : xstrdup(url);
}

qk_err azure_profile_open(azure_backend *b, const store_profile *p, az_profile **out)
{
    azure_cfg cfg;
    json_t *j = NULL;
    qk_err rc;
    *out = NULL;
    if (b == NULL)
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "the Azure backend is not running");
    if (p->config == NULL || (j = json_loads(p->config, 0, NULL)) == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "profile %s has no Azure config", p->name);
    rc = azure_cfg_parse(json_object_get(j, "azure"), &cfg);
    json_decref(j);
    if (rc != QK_OK)
        return rc;
    az_profile *ap = xcalloc(1, sizeof(*ap));
    ap->b = b;
    if ((rc = az_app_get(b, p, &cfg, &ap->app)) != QK_OK) {
        azure_cfg_clear(&cfg);
        free(ap);
        return rc;
    }
    ap->poll_base = xasprintf("%s/codesigningaccounts/%s/certificateprofiles/%s/sign/",
                              cfg.endpoint, cfg.account, cfg.cert_profile);
    ap->sign_url = xasprintf("%s/codesigningaccounts/%s/certificateprofiles/%s/sign"
                             "?api-version=" AZ_API_VERSION,
                             cfg.endpoint, cfg.account, cfg.cert_profile);
    ap->origin = origin_of(cfg.endpoint);
    snprintf(ap->name, sizeof(ap->name), "%s", p->name);
    ap->max_concurrent = cfg.max_concurrent;
    atomic_init(&ap->refs, 1);
    azure_cfg_clear(&cfg);
    *out = ap;
    return QK_OK;
}

void azure_profile_release(az_profile *p)
{
    if (p == NULL || atomic_fetch_sub(&p->refs, 1) != 1)
        return;
    az_app_release(p->app);
    free(p->sign_url);
    free(p->poll_base);
    free(p->origin);
    free(p);
}

char *azure_metrics_render(azure_backend *b)
{
    static const char *const classes[AZE__COUNT] = {
        "throttled", "server", "unauthorized", "forbidden", "request",
        "network",   "operation_failed", "bad_result", "timeout", "credentials"};
    static const char *const le[AZ_LAT_BUCKETS] = {"0.25", "0.5", "1", "2",  "3",
                                                   "5",    "10",  "30", "60", "+Inf"};
    az_stats *s = &b->stats;
    char *out = xasprintf(
        "# HELP qwickd_azure_secrets_alive Azure client secrets this qwickd holds now.\n"
        "# TYPE qwickd_azure_secrets_alive gauge\nqwickd_azure_secrets_alive %ld\n"
        "# HELP qwickd_azure_secrets_created_total Client secrets created through Graph.\n"
        "# TYPE qwickd_azure_secrets_created_total counter\nqwickd_azure_secrets_created_total %ld\n"
        "# HELP qwickd_azure_secrets_revoked_total Client secrets revoked after their TTL or at shutdown.\n"
        "# TYPE qwickd_azure_secrets_revoked_total counter\nqwickd_azure_secrets_revoked_total %ld\n"
        "# HELP qwickd_azure_secrets_reaped_total Orphaned qwick- secrets revoked by the reaper.\n"
        "# TYPE qwickd_azure_secrets_reaped_total counter\nqwickd_azure_secrets_reaped_total %ld\n"
        "# HELP qwickd_azure_lock_waits_total Times a secret had to wait for a slot (maxSecrets).\n"
        "# TYPE qwickd_azure_lock_waits_total counter\nqwickd_azure_lock_waits_total %ld\n"
        "# HELP qwickd_azure_tokens_total Codesigning access tokens obtained.\n"
        "# TYPE qwickd_azure_tokens_total counter\nqwickd_azure_tokens_total %ld\n"
        "# HELP qwickd_azure_signatures_in_flight Azure signatures being carried now.\n"
        "# TYPE qwickd_azure_signatures_in_flight gauge\nqwickd_azure_signatures_in_flight %ld\n"
        "# HELP qwickd_azure_errors_total Azure errors by class.\n"
        "# TYPE qwickd_azure_errors_total counter\n",
        atomic_load(&s->alive), atomic_load(&s->created), atomic_load(&s->revoked),
        atomic_load(&s->reaped), atomic_load(&s->lock_waits), atomic_load(&s->tokens),
        atomic_load(&s->inflight));
    for (int i = 0; i < AZE__COUNT; i++) {
        char *n = xasprintf("%sqwickd_azure_errors_total{class=\"%s\"} %ld\n", out, classes[i],
                            atomic_load(&s->errors[i]));
        free(out);
        out = n;
    }
    char *n = xasprintf("%s# HELP qwickd_azure_sign_duration_seconds Azure signature latency, "
                        "submission to result.\n"
                        "# TYPE qwickd_azure_sign_duration_seconds histogram\n",
                        out);
    free(out);
    out = n;
    long cum = 0;
    for (int i = 0; i < AZ_LAT_BUCKETS; i++) {
        cum += atomic_load(&s->lat_buckets[i]);
        n = xasprintf("%sqwickd_azure_sign_duration_seconds_bucket{le=\"%s\"} %ld\n", out, le[i],
                      cum);
        free(out);
        out = n;
    }
    n = xasprintf("%sqwickd_azure_sign_duration_seconds_sum %.3f\n"
                  "qwickd_azure_sign_duration_seconds_count %ld\n",
                  out, (double)atomic_load(&s->lat_sum_ms) / 1000.0, atomic_load(&s->lat_count));
    free(out);
    return n;
}
