/* The state `qwickd serve` shares with every request handler. Built once by
 * cmd_serve before the HTTP daemon starts, read-only afterwards except for
 * the members that carry their own locks (metrics, signer cache, work queue). */
#ifndef QWICKD_SERVER_H
#define QWICKD_SERVER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/metrics.h"
#include "core/secrets.h"
#include "store/store.h"

typedef struct signer_cache signer_cache;
typedef struct policy_cache policy_cache;
typedef struct azure_backend azure_backend;
typedef struct tsa tsa;
typedef struct workq workq;
typedef struct ratelimit_buckets ratelimit_buckets;
typedef struct tl_key tl_key;
typedef struct signing_queue signing_queue;
typedef struct callbacks callbacks;

typedef struct server {
    qk_store *store;
    qk_keyring *keyring;
    const char *data_dir;
    /* "https://127.0.0.1:8443": what timestampUrl is built from. NULL when
     * listening on a wildcard address without a configured public_url: the
     * request's Host header is used then. */
    char *base_url;
    int tls;
    /* GET /metrics without an API key (metrics.anonymous in qwickd.json);
     * by default any valid key, whatever its role, is required. */
    int metrics_anonymous;
    metrics *metrics;
    signer_cache *signers;
    policy_cache *policies; /* each profile's parsed signing policy (api_policy.h) */
    azure_backend *azure;   /* Azure Trusted Signing: its engine and credential threads */
    tsa *tsa;
    /* POST /tsa: a token bucket per client address (tsa.rate_per_ip_per_second,
     * tsa.burst_per_ip), and whether a Bearer API key is required. */
    ratelimit_buckets *tsa_limit;
    int tsa_require_key;
    tl_key *logkey; /* signs the transparency log's checkpoints */
    workq *signq;   /* one thread per core: the RSA work of every connection */
    /* Requests handed to the signing threads whose rows are not queued for
     * commit yet: the store's commit delay waits only while this is > 0. */
    atomic_int signing;
    workq *commits;       /* threads that wait on durable commits off the HTTP pool */
    callbacks *callbacks; /* completion callbacks of queued requests (api/callbacks.h) */
    signing_queue *queue; /* the asynchronous queue's workers (api/queue.h); NULL: not started */
    /* Set at SIGTERM: new requests get 503 and their connection is closed,
     * requests already admitted run to completion. */
    atomic_int draining;
} server;

/* `qwickd serve ...`: runs until SIGTERM/SIGINT; 0 after a clean shutdown. */
int cmd_serve(int argc, char **argv);

#endif
