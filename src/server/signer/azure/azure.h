/* The Azure Trusted Signing backend of qwickd.
 *
 * One azure_backend per server holds two threads:
 *  - the sign engine: a libcurl multi loop that carries every Azure signature
 *    in flight (submit, then poll the operation after each Retry-After), so
 *    hundreds of signatures wait on Azure without a thread each;
 *  - the credential thread: for each app registration in use, the disposable
 *    client secret (created through Microsoft Graph, pooled for its TTL,
 *    revoked after it), the access token it buys, the leases that keep the
 *    number of live secrets within maxSecrets across every node sharing the
 *    store, and the reaper that revokes "qwick-" secrets no live lease holds.
 * See docs/azure.md for the lifecycle and its guarantees. */
#ifndef QWICKD_AZURE_H
#define QWICKD_AZURE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "qwick/buf.h"
#include "qwick/error.h"
#include "qwick/hash.h"
#include "core/secrets.h"
#include "store/store.h"

typedef struct azure_backend azure_backend;
typedef struct az_profile az_profile;

#define AZURE_DEFAULT_REAPER_INTERVAL 60u
/* Display names of the secrets qwickd creates start with this; the reaper
 * never touches any other. */
#define AZURE_SECRET_PREFIX "qwick-"

typedef struct azure_options {
    qk_store *store;
    const qk_keyring *keyring;
    unsigned reaper_interval_s; /* 0: AZURE_DEFAULT_REAPER_INTERVAL */
    unsigned op_timeout_s;      /* one signature, from submission to result; 0: 120 */
} azure_options;

/* Starts the two threads. */
qk_err azure_backend_new(const azure_options *o, azure_backend **out);
/* One reaper pass over every enabled Azure profile of every org, on the
 * calling thread (serve runs it before it accepts requests). Returns the
 * number of secrets revoked; failures are logged, not fatal. */
int azure_backend_reap_now(azure_backend *b);
/* Fails what is still queued, revokes every secret this process created,
 * stops the threads and frees everything. NULL-safe. */
void azure_backend_free(azure_backend *b);

/* The Azure side of a profile (config parsed, app registration shared with
 * the other profiles of the same app). Reference counted. */
qk_err azure_profile_open(azure_backend *b, const store_profile *p, az_profile **out);
void azure_profile_release(az_profile *p);

/* Completion of an Azure signature, called once on the engine thread:
 * rc QK_OK with the raw signature and the chain it verifies under (DER,
 * leaf first; both owned by the callee, who frees them) and `note` (the
 * credential used, for the audit row); otherwise `detail` says why and
 * `status` suggests the HTTP status for the client (502, 503, 504). */
typedef struct azure_result {
    qk_err rc;
    int status;
    const char *detail;
    qk_buf signature;
    qk_buf chain_der;
    const char *note;
} azure_result;
typedef void (*azure_done_fn)(void *arg, azure_result *r);

/* Queues a signature of `digest` (hashed with alg) and returns at once. */
qk_err azure_sign_async(az_profile *p, qk_hash_alg alg, const uint8_t *digest, size_t len,
                        azure_done_fn done, void *arg);

/* Prometheus text for the backend's metrics (heap string, may be NULL). */
char *azure_metrics_render(azure_backend *b);

#endif
