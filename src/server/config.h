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
 *     "tls": {"cert": "tls.pem", "key": "tls.key",
 *             "priorities": null},            // GnuTLS priorities; null: TLS 1.3, and
 *                                             // TLS 1.2 with ECDHE and AEAD ciphers only
 *     "tsa": {"cert": "tsa.pem", "key": "tsa.key.sealed", "policy": null},
 *     "metrics": {"anonymous": false},    // true: GET /metrics without an API key
 *     "limits": {"threads": 0,            // 0: one per core
 *                "max_connections": 512,
 *                "max_body_bytes": 65536,
 *                "connection_timeout_seconds": 30,
 *                "commit_delay_us": 4000},   // group commit delay while others sign; 0: off
 *     "azure": {"reaper_interval_seconds": 60, // orphaned qwick- secrets revoked this often
 *               "op_timeout_seconds": 120}     // one Azure signature, submission to result
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
/* How long, at most, a durable write waits for requests still being signed
 * to share its fsync (store_sqlite_set_commit_delay). */
#define CONFIG_DEFAULT_COMMIT_DELAY_US 4000u
#define CONFIG_MAX_FILE (64u * 1024u)
/* TLS 1.3, and TLS 1.2 with ECDHE key exchange and AEAD ciphers only (no
 * CBC, no SHA-1 MACs, no RSA key transport); the server's order wins. */
#define CONFIG_DEFAULT_TLS_PRIORITIES                                                             \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:"            \
    "+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:%SERVER_PRECEDENCE"
#define CONFIG_DEFAULT_AZURE_REAPER 60u
#define CONFIG_DEFAULT_AZURE_OP_TIMEOUT 120u

typedef struct qwickd_config {
    char *listen;     /* "ADDR:PORT" */
    char *public_url; /* NULL: derived from listen */
    char *default_org;
    char *tls_cert; /* absolute (resolved against the data dir) */
    char *tls_key;
    char *tsa_cert;
    char *tsa_key;    /* sealed under the master key */
    char *tsa_policy; /* NULL: TSA_DEFAULT_POLICY */
    char *tls_priorities; /* GnuTLS priority string; NULL: CONFIG_DEFAULT_TLS_PRIORITIES */
    unsigned threads; /* 0: one per core */
    unsigned max_connections;
    size_t max_body;
    unsigned connection_timeout; /* seconds */
    unsigned commit_delay_us;
    int metrics_anonymous;
    unsigned azure_reaper_interval; /* seconds */
    unsigned azure_op_timeout;      /* seconds */
} qwickd_config;

/* Defaults, with paths resolved against data_dir. */
void config_defaults(const char *data_dir, qwickd_config *out);
/* Reads DATA/qwickd.json over the defaults. */
qk_err config_load(const char *data_dir, qwickd_config *out);
void config_free(qwickd_config *c);
/* Writes DATA/qwickd.json with the defaults (O_EXCL, 0600); `listen` may be NULL. */
qk_err config_write_defaults(const char *data_dir, const char *listen);
/* "https://127.0.0.1:8443" from "127.0.0.1:8443" ("[::1]:8443" stays bracketed). */
char *config_url_from_listen(const char *listen, int tls);

#endif
