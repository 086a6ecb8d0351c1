/* DATA/qwickd.json: the settings `qwickd serve` starts from. `qwickd init`
 * writes it with every default spelled out; command-line flags of `serve`
 * override it. Unknown keys are rejected so a typo does not silently fall back
 * to a default. Relative paths are relative to the data directory.
 *
 *   {
 *     "version": 1,
 *     "listen": "127.0.0.1:8443",
 *     "public_url": null,                 // base of timestampUrl; null: from listen
 *     "default_org": "default",
 *     "database": null,                   // PostgreSQL URL (the owner's, no password);
 *                                         // null: SQLite in the data directory
 *     "tls": {"cert": "tls.pem", "key": "tls.key",
 *             "priorities": null},            // GnuTLS priorities; null: TLS 1.3, and
 *                                             // TLS 1.2 with ECDHE and AEAD ciphers only
 *     "tsa": {"cert": "tsa.pem", "key": "tsa.key.sealed", "policy": null,
 *             "rate_per_ip_per_second": 20,  // POST /tsa token bucket per client
 *             "burst_per_ip": 100,           // address; beyond it 429 + Retry-After
 *             "require_api_key": false},     // true: a Bearer API key of any role
 *     "metrics": {"anonymous": false},    // true: GET /metrics without an API key
 *     "limits": {"threads": 0,            // 0: one per core
 *                "max_connections": 512,
 *                "max_connections_per_ip": 64,  // IPv4 address or IPv6 /64
 *                "max_body_bytes": 65536,
 *                "connection_timeout_seconds": 30,     // idle
 *                "tls_handshake_timeout_seconds": 10,  // whole handshake
 *                "request_head_timeout_seconds": 20,   // whole request line + headers
 *                "request_body_timeout_seconds": 30,   // whole body
 *                "commit_delay_us": 4000},   // group commit delay while others sign; 0: off
 *     "azure": {"reaper_interval_seconds": 60, // orphaned qwick- secrets revoked this often
 *               "op_timeout_seconds": 120},    // one Azure signature, submission to result
 *     "queue": {"concurrency": 256,      // queued requests in flight per node
 *               "max_attempts": 5,       // then FAILED (a dead letter)
 *               "lease_seconds": 300,    // a claim not finished by then goes back
 *               "backoff_ms": 1000,      // first retry's delay, doubling, with jitter
 *               "backoff_max_ms": 60000,
 *               "poll_ms": 500,          // an idle node looks for other nodes' work
 *               "sync_wait_seconds": 30, // synchronous request with an Idempotency-Key
 *               "callback_allow": []}    // CIDRs callbackUrl may reach; empty: no callbacks
 *   }
 */
#ifndef QWICKD_CONFIG_H
#define QWICKD_CONFIG_H

#include <stddef.h>

#include "qwick/error.h"

#define CONFIG_FILE "qwickd.json"
#define CONFIG_DEFAULT_LISTEN "127.0.0.1:8443"
#define CONFIG_DEFAULT_ORG "default"
#define CONFIG_DEFAULT_MAX_CONNECTIONS 512u
#define CONFIG_DEFAULT_MAX_BODY (64u * 1024u)
#define CONFIG_DEFAULT_CONN_TIMEOUT 30u
/* One client address holds at most this many connections, so it cannot fill
 * the server (left out of qwickd.json with max_connections <= 64: half of
 * max_connections). */
#define CONFIG_DEFAULT_MAX_PER_IP 64u
/* Deadlines for a whole phase of a request, however slowly its bytes come
 * (connection_timeout_seconds only bounds the silence between them). */
#define CONFIG_DEFAULT_HANDSHAKE_TIMEOUT 10u
#define CONFIG_DEFAULT_HEAD_TIMEOUT 20u
#define CONFIG_DEFAULT_BODY_TIMEOUT 30u
#define CONFIG_MAX_PHASE_TIMEOUT 3600u
/* POST /tsa per client address: a timestamp is an RSA signature (~9 ms of a
 * core with RSA-3072), so the bucket bounds what one client can make the
 * signing threads do; the burst covers a batch signing run. */
#define CONFIG_DEFAULT_TSA_RATE 20u
#define CONFIG_DEFAULT_TSA_BURST 100u
/* How long, at most, a durable write waits for requests still being signed
 * to share its fsync (store_sqlite_set_commit_delay). */
#define CONFIG_DEFAULT_COMMIT_DELAY_US 4000u
#define CONFIG_MAX_FILE (64u * 1024u)
/* TLS 1.3, and TLS 1.2 with ECDHE key exchange and AEAD ciphers only (no
 * CBC, no SHA-1 MACs, no RSA key transport); the server's order wins. */
#define CONFIG_DEFAULT_TLS_PRIORITIES                                                              \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:"            \
    "+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:%SERVER_PRECEDENCE"
#define CONFIG_DEFAULT_AZURE_REAPER 60u
#define CONFIG_DEFAULT_AZURE_OP_TIMEOUT 120u
#define CONFIG_DEFAULT_QUEUE_CONCURRENCY 256u
#define CONFIG_DEFAULT_QUEUE_MAX_ATTEMPTS 5u
#define CONFIG_DEFAULT_QUEUE_LEASE 300u
#define CONFIG_DEFAULT_QUEUE_BACKOFF_MS 1000u
#define CONFIG_DEFAULT_QUEUE_BACKOFF_MAX_MS 60000u
#define CONFIG_DEFAULT_QUEUE_POLL_MS 500u
#define CONFIG_DEFAULT_QUEUE_SYNC_WAIT 30u

typedef struct qwickd_config {
    char *listen;     /* "ADDR:PORT" */
    char *public_url; /* NULL: derived from listen */
    char *default_org;
    char *database; /* PostgreSQL URL; NULL: SQLite (qwick.db in the data directory) */
    char *tls_cert; /* absolute (resolved against the data dir) */
    char *tls_key;
    char *tsa_cert;
    char *tsa_key;        /* sealed under the master key */
    char *tsa_policy;     /* NULL: TSA_DEFAULT_POLICY */
    char *tls_priorities; /* GnuTLS priority string; NULL: CONFIG_DEFAULT_TLS_PRIORITIES */
    unsigned threads;     /* 0: one per core */
    unsigned max_connections;
    unsigned max_connections_per_ip; /* < max_connections */
    size_t max_body;
    unsigned connection_timeout; /* seconds, idle */
    unsigned handshake_timeout;  /* seconds, whole phase */
    unsigned head_timeout;
    unsigned body_timeout;
    unsigned tsa_rate; /* tokens a second per client address */
    unsigned tsa_burst;
    int tsa_require_key;
    unsigned commit_delay_us;
    int metrics_anonymous;
    unsigned azure_reaper_interval; /* seconds */
    unsigned azure_op_timeout;      /* seconds */
    /* The queue (docs/api.md "Asynchronous signing"). */
    unsigned queue_concurrency;  /* requests in flight per node */
    unsigned queue_max_attempts; /* then FAILED: a dead letter */
    unsigned queue_lease_seconds;
    unsigned queue_backoff_ms;        /* the first retry's delay, doubling */
    unsigned queue_backoff_max_ms;    /* cap */
    unsigned queue_poll_ms;           /* how often an idle node looks for others' work */
    unsigned queue_sync_wait_seconds; /* a synchronous request with an Idempotency-Key */
    char **callback_allow; /* CIDRs callbacks may go to ("127.0.0.1/32"); none: no callbacks */
    size_t ncallback_allow;
} qwickd_config;

/* Defaults, with paths resolved against data_dir. */
void config_defaults(const char *data_dir, qwickd_config *out);
/* Reads DATA/qwickd.json over the defaults. */
qk_err config_load(const char *data_dir, qwickd_config *out);
void config_free(qwickd_config *c);
/* Writes DATA/qwickd.json with the defaults (O_EXCL, 0600); `listen` and
 * `database` may be NULL. */
qk_err config_write_defaults(const char *data_dir, const char *listen, const char *database);
/* "https://127.0.0.1:8443" from "127.0.0.1:8443" ("[::1]:8443" stays bracketed). */
char *config_url_from_listen(const char *listen, int tls);

#endif
