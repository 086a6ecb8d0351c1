/* API key generation and authentication (see apikey.h). */
#include <string.h>

#include <sodium.h>

#include "auth/apikey.h"

/* last_used_at resolution: a key in constant use costs one UPDATE a minute. */
#define APIKEY_TOUCH_INTERVAL 60

static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

const char *apikey_status_code(apikey_status st)
{
    switch (st) {
    case APIKEY_OK:
        return "ok";
    case APIKEY_UNKNOWN:
        return "unknown_api_key";
    case APIKEY_REVOKED:
        return "revoked_api_key";
    case APIKEY_EXPIRED:
        return "expired_api_key";
    }
    return "unknown_api_key";
}

/* Base62 of a 256-bit big-endian number, fixed width (leading '0's): schoolbook
 * division of the byte string by 62, least significant digit first. Fixed
 * width keeps every key the same length, which makes them easy to recognise
 * (secret scanners, log redaction). */
static void base62_256(uint8_t num[APIKEY_RANDOM_BYTES], char out[APIKEY_BODY_LEN])
{
    for (int d = APIKEY_BODY_LEN - 1; d >= 0; d--) {
        unsigned rem = 0;
        for (size_t i = 0; i < APIKEY_RANDOM_BYTES; i++) {
            unsigned cur = rem * 256u + num[i];
            num[i] = (uint8_t)(cur / 62u);
            rem = cur % 62u;
        }
        out[d] = b62[rem];
    }
}

void apikey_hash(const char *key, size_t len, uint8_t hash[32])
{
    crypto_hash_sha256(hash, (const unsigned char *)key, len);
}

void apikey_generate(char key[APIKEY_LEN + 1], char prefix[APIKEY_PREFIX_LEN + 1], uint8_t hash[32])
{
    token_generate(APIKEY_TAG, key, prefix, hash);
}

void token_generate(const char tag[4], char key[APIKEY_LEN + 1], char prefix[APIKEY_PREFIX_LEN + 1],
                    uint8_t hash[32])
{
    uint8_t rnd[APIKEY_RANDOM_BYTES];
    randombytes_buf(rnd, sizeof(rnd));
    memcpy(key, tag, 3);
    base62_256(rnd, key + 3);
    key[APIKEY_LEN] = '\0';
    sodium_memzero(rnd, sizeof(rnd));
    memcpy(prefix, key, APIKEY_PREFIX_LEN);
    prefix[APIKEY_PREFIX_LEN] = '\0';
    apikey_hash(key, APIKEY_LEN, hash);
}

int operator_token_well_formed(const char *token, size_t len)
{
    if (token == NULL || len != APIKEY_LEN || memcmp(token, OPERATOR_TOKEN_TAG, 3) != 0)
        return 0;
    for (size_t i = 3; i < len; i++) {
        char c = token[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
            return 0;
    }
    return 1;
}

int apikey_well_formed(const char *key, size_t len)
{
    if (key == NULL || len != APIKEY_LEN || memcmp(key, APIKEY_TAG, 3) != 0)
        return 0;
    for (size_t i = 3; i < len; i++) {
        char c = key[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
            return 0;
    }
    return 1;
}

qk_err apikey_create(qk_store *s, int64_t org, int64_t user, const char *name, store_role role,
                     int64_t expires_at, const store_audit *audit, char key_out[APIKEY_LEN + 1],
                     int64_t *id)
{
    return apikey_create_for(s, org, user, name, role, expires_at, NULL, audit, key_out, id);
}

int apikey_may_use_profile(const store_apikey *k, const char *profile)
{
    if (k->profiles == NULL)
        return 1;
    size_t want = strlen(profile);
    for (const char *p = k->profiles;;) {
        size_t len = strcspn(p, ",");
        if (len == want && memcmp(p, profile, len) == 0)
            return 1;
        if (p[len] == '\0')
            return 0;
        p += len + 1;
    }
}

qk_err apikey_create_for(qk_store *s, int64_t org, int64_t user, const char *name, store_role role,
                         int64_t expires_at, const char *profiles, const store_audit *audit,
                         char key_out[APIKEY_LEN + 1], int64_t *id)
{
    char key[APIKEY_LEN + 1], prefix[APIKEY_PREFIX_LEN + 1];
    uint8_t hash[32];
    qk_err rc;

    *id = 0;
    key_out[0] = '\0';
    apikey_generate(key, prefix, hash);
    rc = STORE_CALL(s, apikey_create, org, user, name, prefix, hash, role, expires_at, profiles,
                    audit, id);
    if (rc == QK_OK)
        memcpy(key_out, key, sizeof(key));
    sodium_memzero(key, sizeof(key));
    return rc;
}

qk_err apikey_authenticate(qk_store *s, const char *presented, int64_t now, store_apikey *out,
                           apikey_status *status)
{
    return apikey_authenticate_profile(s, presented, now, NULL, out, status, NULL, NULL);
}

qk_err apikey_authenticate_profile(qk_store *s, const char *presented, int64_t now,
                                   const char *profile, store_apikey *out, apikey_status *status,
                                   store_profile *prof, int *prof_found)
{
    uint8_t hash[32], stored[32];
    int found = 0, pfound = 0;
    size_t len;
    qk_err rc;

    memset(out, 0, sizeof(*out));
    *status = APIKEY_UNKNOWN;
    if (prof_found != NULL)
        *prof_found = 0;
    if (presented == NULL)
        return QK_OK;
    len = strnlen(presented, APIKEY_LEN + 1);
    if (!apikey_well_formed(presented, len))
        return QK_OK;
    apikey_hash(presented, len, hash);
    if (profile != NULL)
        rc =
            STORE_CALL(s, apikey_lookup_profile, hash, profile, out, stored, &found, prof, &pfound);
    else
        rc = STORE_CALL(s, apikey_lookup, hash, out, stored, &found);
    if (rc == QK_ERR_INVALID_ARG && !found) {
        memset(out, 0, sizeof(*out));
        return QK_OK; /* unknown key: not an error of the store */
    }
    if (rc != QK_OK)
        return rc;
    /* The profile is the caller's only with a good key. */
    if (pfound && (sodium_memcmp(stored, hash, sizeof(hash)) != 0 || out->revoked_at != 0 ||
                   (out->expires_at != 0 && now >= out->expires_at))) {
        store_profile_clear(prof);
        pfound = 0;
    }
    if (prof_found != NULL)
        *prof_found = pfound;
    /* The lookup matched on the hash already; comparing again in constant
     * time means correctness never rests on how the database compares. */
    if (sodium_memcmp(stored, hash, sizeof(hash)) != 0) {
        store_apikey_clear(out);
        return QK_OK;
    }
    if (out->revoked_at != 0) {
        *status = APIKEY_REVOKED;
        return QK_OK;
    }
    if (out->expires_at != 0 && now >= out->expires_at) {
        *status = APIKEY_EXPIRED;
        return QK_OK;
    }
    *status = APIKEY_OK;
    /* Best effort and asynchronous (see store.h): authentication never waits
     * for a commit just to record last use, and a busy key is written at most
     * every APIKEY_TOUCH_INTERVAL seconds. */
    if (now - out->last_used_at >= APIKEY_TOUCH_INTERVAL)
        (void)STORE_CALL(s, apikey_touch, out->org_id, out->id, now);
    return QK_OK;
}
