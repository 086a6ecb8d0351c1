/* What the Azure backend's modules share: the backend, one app
 * registration's credential pool (azure_creds.c), a profile's signing
 * endpoint (azure_engine.c), and the counters behind /metrics. */
#ifndef QWICKD_AZURE_INTERNAL_H
#define QWICKD_AZURE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <curl/curl.h>

#include "signer/azure/azure.h"
#include "signer/azure/azure_cfg.h"
#include "signer/azure/azure_http.h"

#define AZ_NODE_MAX 96
#define AZ_KEYID_MAX 64
#define AZ_ERR_MAX 320
#define AZ_LAT_BUCKETS 10

/* Error classes of Azure answers, for metrics. */
typedef enum az_err_class {
    AZE_THROTTLED = 0, /* 429 */
    AZE_SERVER,        /* 5xx */
    AZE_UNAUTHORIZED,  /* 401 */
    AZE_FORBIDDEN,     /* 403 */
    AZE_REQUEST,       /* other 4xx */
    AZE_NETWORK,       /* no answer */
    AZE_OPERATION,     /* operation Failed */
    AZE_RESULT,        /* a result that does not check out */
    AZE_TIMEOUT,       /* gave up waiting */
    AZE_CREDENTIALS,   /* no credential could be had */
    AZE__COUNT
} az_err_class;

typedef struct az_stats {
    atomic_long alive, created, revoked, reaped, lock_waits, tokens;
    atomic_long errors[AZE__COUNT];
    atomic_long lat_count, lat_sum_ms;
    atomic_long lat_buckets[AZ_LAT_BUCKETS];
    atomic_long inflight;
} az_stats;

typedef struct az_app az_app;

struct azure_backend {
    qk_store *store;
    const qk_keyring *keyring;
    unsigned reaper_interval_s;
    unsigned op_timeout_s;
    char node[AZ_NODE_MAX]; /* "<host>/<pid>/<random>": this run's lease holder name */
    az_stats stats;
    int starting; /* the startup reaper pass: one try per call, no retries */

    /* App registrations in use, keyed by (org, application object id). */
    pthread_mutex_t apps_mu;
    az_app **apps;
    size_t napps;

    /* The credential thread. */
    pthread_t creds_thread;
    int creds_started;
    pthread_mutex_t creds_mu;
    pthread_cond_t creds_cv;
    int creds_stop;
    int creds_kick; /* work to do now (a token is wanted) */

    /* The sign engine. */
    struct az_engine *engine;
};

/* One app registration's credentials. `mu` guards the fields marked (mu);
 * the rest belong to the credential thread. */
struct az_app {
    azure_backend *b;
    int64_t org;
    int64_t secrets_row;  /* signing_keys row with the sealed Graph secret */
    azure_cfg cfg;        /* of the first profile that named this app */
    az_trust *trust;
    atomic_int refs;

    pthread_mutex_t mu;
    char *token;              /* (mu) codesigning access token, sodium_malloc'd */
    int64_t token_until_ms;   /* (mu) usable until (monotonic ms) */
    uint64_t token_gen;       /* (mu) bumped at each new token */
    char token_key[AZ_KEYID_MAX]; /* (mu) keyId of the secret that bought it */
    int wanted;               /* (mu) an operation waits for a token */
    uint64_t fail_gen;        /* (mu) bumped at each failed attempt */
    char fail_text[AZ_ERR_MAX]; /* (mu) why the last attempt failed */
    int fail_status;          /* (mu) HTTP status suggested for the client */

    /* Credential thread only. */
    char *graph_secret;       /* refresh token or manager secret, sodium_malloc'd */
    char *graph_token;        /* Graph access token, sodium_malloc'd */
    int64_t graph_until_ms;
    char *secret;             /* the signing app's client secret, sodium_malloc'd */
    char secret_key[AZ_KEYID_MAX];
    int64_t secret_lease;     /* azure_leases row */
    int64_t secret_until_ms;  /* end of its TTL (monotonic) */
    int64_t heartbeat_ms;     /* next lease renewal */
};

/* A profile's signing endpoint. */
struct az_profile {
    azure_backend *b;
    az_app *app;
    char *sign_url;   /* {endpoint}/codesigningaccounts/{a}/certificateprofiles/{p}/sign?api-version=… */
    char *poll_base;  /* {endpoint}/codesigningaccounts/{a}/certificateprofiles/{p}/sign/ */
    char *origin;     /* scheme://host[:port] of the endpoint: polls must stay there */
    char name[72];
    unsigned max_concurrent;
    int inflight;     /* engine thread only */
    atomic_int refs;
};

#define AZ_API_VERSION "2022-06-15-preview"

int64_t az_now_ms(void); /* monotonic */
void az_count_error(azure_backend *b, az_err_class c);
az_err_class az_class_of(const az_resp *r);

/* azure_creds.c */
qk_err az_creds_start(azure_backend *b);
void az_creds_stop(azure_backend *b); /* revokes every secret of this process */
/* The app for a profile row, created (and its Graph secret unsealed) on
 * first use; a reference the caller releases with az_app_release. */
qk_err az_app_get(azure_backend *b, const store_profile *p, const azure_cfg *cfg, az_app **out);
void az_app_release(az_app *a);
/* Non-blocking, for the engine: 1 with a copy of the token (free with
 * az_token_free) and its generation; 0 when one is on its way (the engine
 * is woken when it arrives); -1 when an attempt that started after
 * `since_fail_gen` failed (text in err). */
int az_app_token(az_app *a, uint64_t since_fail_gen, char **token, uint64_t *gen,
                 char key_id[AZ_KEYID_MAX], char *err, size_t errn, int *status);
uint64_t az_app_fail_gen(az_app *a);
/* The token of generation `gen` was refused (401): drop it. */
void az_app_token_refused(az_app *a, uint64_t gen);
void az_token_free(char *t);
/* One reaper pass over one app. */
int az_reap_app(az_app *a);

/* azure_engine.c */
struct az_engine *az_engine_new(azure_backend *b);
void az_engine_wake(struct az_engine *e);
void az_engine_free(struct az_engine *e);

#endif
