/* The log key and checkpoints; see transparency.h. */
#include "audit/transparency.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/tlog.h"
#include "core/util.h"

struct tl_key {
    uint8_t pub[crypto_sign_PUBLICKEYBYTES];
    uint8_t *sk; /* sodium_malloc'd, read-only between uses */
    char *vkey;
    char id[9]; /* the key id in hex: names the log in its origin */
};

static qk_err key_from_seed(const uint8_t seed[crypto_sign_SEEDBYTES], tl_key **out)
{
    tl_key *k = xcalloc(1, sizeof(*k));
    if ((k->sk = sodium_malloc(crypto_sign_SECRETKEYBYTES)) == NULL) {
        free(k);
        return qk_fail(QK_ERR_NOMEM, "log key");
    }
    crypto_sign_seed_keypair(k->pub, k->sk, seed);
    sodium_mprotect_readonly(k->sk);
    k->vkey = tlog_vkey_format(TLOG_KEY_NAME, k->pub);
    snprintf(k->id, sizeof(k->id), "%08" PRIx32, tlog_key_id(TLOG_KEY_NAME, k->pub));
    *out = k;
    return QK_OK;
}

static qk_err key_create(qk_store *st, const qk_keyring *kr)
{
    uint8_t seed[crypto_sign_SEEDBYTES], pk[crypto_sign_PUBLICKEYBYTES],
        sk[crypto_sign_SECRETKEYBYTES];
    qk_buf sealed = {NULL, 0};
    randombytes_buf(seed, sizeof(seed));
    crypto_sign_seed_keypair(pk, sk, seed);
    sodium_memzero(sk, sizeof(sk));
    qk_err rc = secrets_seal(kr, (qk_slice){seed, sizeof(seed)}, SECRETS_AAD_LOG_KEY, &sealed);
    sodium_memzero(seed, sizeof(seed));
    if (rc == QK_OK)
        rc = STORE_CALL(st, instance_secret_put, TL_SECRET_NAME,
                        (qk_slice){sealed.data, sealed.len}, (qk_slice){pk, sizeof(pk)});
    qk_buf_free(&sealed);
    return rc;
}

qk_err tl_key_load(qk_store *st, const qk_keyring *kr, int create, tl_key **out)
{
    qk_buf sealed = {NULL, 0}, pub = {NULL, 0}, seed = {NULL, 0};
    int found = 0;
    qk_err rc;

    *out = NULL;
    rc = STORE_CALL(st, instance_secret_get, TL_SECRET_NAME, &sealed, &pub, &found);
    if (rc == QK_OK && !found && create) {
        if ((rc = key_create(st, kr)) == QK_OK)
            rc = STORE_CALL(st, instance_secret_get, TL_SECRET_NAME, &sealed, &pub, &found);
    }
    if (rc != QK_OK)
        goto out;
    if (!found) {
        rc = qk_fail(QK_ERR_INVALID_ARG, "the data directory has no log key yet");
        goto out;
    }
    if ((rc = secrets_open(kr, (qk_slice){sealed.data, sealed.len}, SECRETS_AAD_LOG_KEY, &seed)) !=
        QK_OK)
        goto out;
    if (seed.len != crypto_sign_SEEDBYTES) {
        rc = qk_fail(QK_ERR_INVALID_ARG, "the sealed log key has the wrong size");
        goto out;
    }
    if ((rc = key_from_seed(seed.data, out)) != QK_OK)
        goto out;
    /* The public key stored beside it must be this key's. */
    if (pub.len != sizeof((*out)->pub) || sodium_memcmp(pub.data, (*out)->pub, pub.len) != 0) {
        tl_key_free(*out);
        *out = NULL;
        rc = qk_fail(QK_ERR_INVALID_ARG, "the stored log public key does not match the log key");
    }
out:
    qk_buf_free(&seed);
    qk_buf_free(&sealed);
    qk_buf_free(&pub);
    return rc;
}

void tl_key_free(tl_key *k)
{
    if (k == NULL)
        return;
    sodium_free(k->sk); /* wipes */
    free(k->vkey);
    free(k);
}

const char *tl_key_vkey(const tl_key *k)
{
    return k->vkey;
}

char *tl_origin(const tl_key *k, int64_t org)
{
    return xasprintf("qwickd-%s/org/%" PRId64, k->id, org);
}

char *tl_sign_checkpoint(const tl_key *k, int64_t org, int64_t size, const uint8_t root[32])
{
    uint8_t sig[crypto_sign_BYTES];
    char *origin = tl_origin(k, org);
    char *body = tlog_checkpoint_body(origin, size, root);
    crypto_sign_detached(sig, NULL, (const uint8_t *)body, strlen(body), k->sk);
    char *note = tlog_note_format(body, TLOG_KEY_NAME, k->pub, sig);
    free(body);
    free(origin);
    return note;
}

qk_err tl_checkpoint(qk_store *st, const tl_key *k, int64_t org, store_checkpoint *out, int *empty)
{
    store_proof root;
    int found = 0;
    qk_err rc;

    *empty = 0;
    memset(out, 0, sizeof(*out));
    if ((rc = STORE_CALL(st, log_prove, org, PROOF_ROOT, 0, 0, &root)) != QK_OK) {
        /* An org without entries has no tree yet. */
        if (rc == QK_ERR_INVALID_ARG) {
            *empty = 1;
            return QK_OK;
        }
        return rc;
    }
    if ((rc = STORE_CALL(st, checkpoint_latest, org, out, &found)) != QK_OK)
        return rc;
    if (found && out->size == root.size)
        return QK_OK;
    store_checkpoint_clear(out);
    out->size = root.size;
    memcpy(out->root, root.root, sizeof(out->root));
    out->note = tl_sign_checkpoint(k, org, root.size, root.root);
    if ((rc = STORE_CALL(st, checkpoint_add, org, root.size, root.root, out->note)) != QK_OK)
        store_checkpoint_clear(out);
    return rc;
}
