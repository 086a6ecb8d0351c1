/* API keys: "qk_" + 43 base62 characters (256 random bits, fixed length).
 *
 * Only SHA-256(key) is stored; the plaintext exists once, when created, and is
 * shown to the user then wiped. Authentication looks the hash up (an index
 * lookup, so no timing signal about other keys) and compares the stored hash
 * to the computed one again in constant time. */
#ifndef QWICKD_APIKEY_H
#define QWICKD_APIKEY_H

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

#define APIKEY_TAG "qk_"
#define APIKEY_RANDOM_BYTES 32
#define APIKEY_BODY_LEN 43 /* ceil(256 / log2(62)) */
#define APIKEY_LEN (3 + APIKEY_BODY_LEN)
#define APIKEY_PREFIX_LEN 10 /* what list/dashboard show: "qk_" + 7 characters */

typedef enum apikey_status {
    APIKEY_OK = 0,
    APIKEY_UNKNOWN, /* malformed, or no such key */
    APIKEY_REVOKED,
    APIKEY_EXPIRED,
} apikey_status;

/* Stable machine names for JSON errors: "ok", "unknown_api_key",
 * "revoked_api_key", "expired_api_key". */
const char *apikey_status_code(apikey_status st);

/* A fresh key, its display prefix and its SHA-256. The caller wipes `key`
 * (sodium_memzero) once it has been shown. */
void apikey_generate(char key[APIKEY_LEN + 1], char prefix[APIKEY_PREFIX_LEN + 1],
                     uint8_t hash[32]);
/* The same for another kind of secret: `tag` is its 3-character prefix
 * ("qo_" for operator tokens). */
void token_generate(const char tag[4], char key[APIKEY_LEN + 1], char prefix[APIKEY_PREFIX_LEN + 1],
                    uint8_t hash[32]);
#define OPERATOR_TOKEN_TAG "qo_"
/* 1 when `token` has the form of an operator token. */
int operator_token_well_formed(const char *token, size_t len);
/* 1 if `key` (len bytes) has the shape of a qwick API key. */
int apikey_well_formed(const char *key, size_t len);
/* SHA-256 of the key text, as stored. */
void apikey_hash(const char *key, size_t len, uint8_t hash[32]);

/* Generates and stores a key for `org`; the plaintext is written to key_out
 * (wipe it after showing it). user 0: not tied to a user; expires_at 0: never. */
/* `audit`: the entry committed with the key (store.h); NULL only for init. */
qk_err apikey_create(qk_store *s, int64_t org, int64_t user, const char *name, store_role role,
                     int64_t expires_at, const store_audit *audit, char key_out[APIKEY_LEN + 1],
                     int64_t *id);
/* The same, limited to `profiles` ("a,b": the only profiles it may sign
 * with, checked by the caller with profile_list_ok; NULL: any). */
qk_err apikey_create_for(qk_store *s, int64_t org, int64_t user, const char *name, store_role role,
                         int64_t expires_at, const char *profiles, const store_audit *audit,
                         char key_out[APIKEY_LEN + 1], int64_t *id);

/* Whether key `k` may sign with `profile`. */
int apikey_may_use_profile(const store_apikey *k, const char *profile);

/* Checks a presented key (NUL-terminated, e.g. from "Authorization: Bearer").
 * Returns QK_OK with *status set, or a store error. With APIKEY_OK, *out is the
 * key's row (org, role...) and last_used is updated in the background; with
 * REVOKED/EXPIRED *out is filled too (for logging the key id); with UNKNOWN it
 * is zeroed. Free *out with store_apikey_clear. `now` is unix seconds: a key
 * with expires_at <= now is expired. */
qk_err apikey_authenticate(qk_store *s, const char *presented, int64_t now, store_apikey *out,
                           apikey_status *status);
/* The same, reading the profile named `profile` of the key's org in the same
 * statement (the signing path). *prof_found = 1 and *prof filled (free with
 * store_profile_clear) only with APIKEY_OK and the profile there. */
qk_err apikey_authenticate_profile(qk_store *s, const char *presented, int64_t now,
                                   const char *profile, store_apikey *out, apikey_status *status,
                                   store_profile *prof, int *prof_found);

#endif
