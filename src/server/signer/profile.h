/* Certificate profiles as operators write them: a JSON config naming the
 * backend and its key material, imported into the store (`qwickd profile
 * create`, POST /api/v1/profiles) and described back without secrets.
 *
 *   {"backend": "local", "key": "key.pem", "chain": "chain.pem", "password": "…"}
 *   {"backend": "local", "pkcs12": "file.pfx", "password": "…", "chain"?: "…"}
 *   {"backend": "azure", "azure": {…}}            (see azure/azure_cfg.h)
 * Over the API, files cannot be named: "keyPem", "chainPem", "pkcs12Base64"
 * and azure's "caPem" carry the contents instead.
 *
 * Import checks what a signature will need: the key matches a certificate of
 * the chain (which becomes the leaf), the leaf allows code signing and has
 * not expired, the chain is ordered leaf to root. Secrets (the private key,
 * decrypted; Graph refresh tokens and client secrets) are sealed under the
 * master key; passwords are used once and dropped; the file is not kept. */
#ifndef QWICKD_PROFILE_H
#define QWICKD_PROFILE_H

#include <jansson.h>

#include "qwick/buf.h"
#include "qwick/error.h"
#include "core/secrets.h"
#include "store/store.h"

#define PROFILE_MAX_CONFIG (256u * 1024u)
#define PROFILE_MAX_NAME 64

typedef struct profile_import {
    const char *backend;  /* "local" | "azure" (static) */
    const char *key_kind; /* signing_keys.kind: "local-pem" | "azure-graph" (static) */
    qk_buf secret;        /* plaintext to seal: PKCS#8 PEM or secrets JSON; wiped */
    qk_buf chain_der;     /* local: leaf first; azure: empty */
    char *config;         /* public settings JSON text */
} profile_import;

/* A profile name: 1..64 of [A-Za-z0-9._-], not starting with '.' or '-'. */
int profile_name_ok(const char *name);
/* Most names in a list of profiles (an API key's limits). */
#define PROFILE_MAX_LIST 32
/* Whether `list` is 1..PROFILE_MAX_LIST profile names joined by commas. */
int profile_list_ok(const char *list);

/* Validates a config object. base_dir: where relative file names are
 * resolved; NULL refuses file names (the API). */
qk_err profile_import_json(json_t *cfg, const char *base_dir, profile_import *out);
/* Reads and validates a config file (relative names against its folder). */
qk_err profile_import_file(const char *path, profile_import *out);
void profile_import_clear(profile_import *p);

/* Seals the secret (AAD secrets_aad_signing_key(org)) and writes the
 * signing-key and profile rows. */
/* `audit`: the entry committed with the profile (NULL only for init). */
qk_err profile_store(qk_store *st, const qk_keyring *kr, int64_t org, const char *name,
                     const profile_import *imp, const store_audit *audit, int64_t *id);

/* Wipes every string in `j` (a config or secrets document, recursively)
 * before the caller frees it: jansson's copies would otherwise linger in
 * freed heap memory. */
void profile_json_wipe(json_t *j);

/* The profile for display: name, backend, status, times, public config,
 * leaf certificate summary; never a secret. NULL on allocation failure. */
json_t *profile_json(const store_profile *p);

/* True for backends whose certificates are short-lived (Azure's live 72
 * hours), so every signature must carry a timestamp. */
int profile_requires_timestamp(const store_profile *p);
/* The profile's config says "asyncOnly", or names a "callbackUrl": every
 * request is queued (202). */
int profile_async_only(const store_profile *p);
/* The profile's "callbackUrl" (heap string), or NULL. */
char *profile_callback_url(const store_profile *p);
/* Whether the profile signs `format`: its config's "formats", by default
 * "authenticode-pe" and "cms" (a bare signature over any pre-hash, "raw",
 * lets a key holder build any structure, so it must be asked for). */
int profile_format_allowed(const store_profile *p, const char *format);

#endif
