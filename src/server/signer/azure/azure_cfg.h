/* An Azure Trusted Signing profile's settings: read from the operator's
 * config file on import (`qwickd profile create`, POST /api/v1/profiles),
 * split into public settings (kept as the profile's config JSON) and secrets
 * (sealed under the master key), and read back by the signer at run time.
 *
 * Input (the "azure" object of a profile config; unknown keys refused):
 *   endpoint, account, certificateProfile, tenantId, clientId,
 *   applicationObjectId                                   required strings
 *   authorityUrl  default https://login.microsoftonline.com
 *   graphUrl      default https://graph.microsoft.com
 *   caFile        PEM file of extra trust anchors for these endpoints
 *   graph         {"refreshToken", "clientId"?} or {"clientId", "clientSecret"}
 *   credentials   {"ttlSeconds" 300, "maxSecrets" 2, "lockTimeoutSeconds" 60,
 *                  "maxConcurrent" 256}
 * Every URL must be https. The public form replaces caFile by "caPem" (the
 * file's certificates) and graph's secret by "grant": "refresh_token" or
 * "client_credentials". */
#ifndef QWICKD_AZURE_CFG_H
#define QWICKD_AZURE_CFG_H

#include <jansson.h>

#include "qwick/error.h"

#define AZURE_DEFAULT_AUTHORITY "https://login.microsoftonline.com"
#define AZURE_DEFAULT_GRAPH "https://graph.microsoft.com"
#define AZURE_DEFAULT_TTL 300u
#define AZURE_MIN_TTL 5u
#define AZURE_MAX_TTL 86400u
#define AZURE_DEFAULT_MAX_SECRETS 2u
#define AZURE_MAX_SECRETS_LIMIT 100u
#define AZURE_DEFAULT_LOCK_TIMEOUT 60u
#define AZURE_DEFAULT_MAX_CONCURRENT 256u
#define AZURE_MAX_CA_PEM (256u * 1024u)

typedef enum azure_grant { AZ_GRANT_REFRESH_TOKEN = 0, AZ_GRANT_CLIENT_CREDENTIALS = 1 } azure_grant;

typedef struct azure_cfg {
    char *endpoint; /* no trailing slash */
    char *account, *cert_profile;
    char *tenant, *client_id, *app_object_id;
    char *authority_url, *graph_url; /* no trailing slash */
    char *ca_pem;                    /* NULL: the system's trust store only */
    char *graph_client_id;           /* client of the Graph grant */
    azure_grant grant;
    unsigned ttl_seconds, max_secrets, lock_timeout_seconds, max_concurrent;
} azure_cfg;

/* Validates `in` (the "azure" object of an operator's config); relative
 * caFile paths are resolved against base_dir (NULL: files refused, only an
 * inline "caPem" is accepted, as over the API). On success *public_json is the
 * public form and *secrets_json {"refreshToken"} or {"clientSecret"} (both
 * owned by the caller; wipe the secrets' text after sealing it). Errors name
 * the offending key (qk_error_detail). */
qk_err azure_cfg_import(json_t *in, const char *base_dir, json_t **public_json,
                        json_t **secrets_json);

/* Reads the public form back (as stored in a profile row). */
qk_err azure_cfg_parse(json_t *public_json, azure_cfg *out);
void azure_cfg_clear(azure_cfg *c);

/* The RS256/RS384/RS512 name for a digest algorithm name ("sha256"...);
 * NULL for others. */
const char *azure_sig_alg(const char *hash_alg);

#endif
