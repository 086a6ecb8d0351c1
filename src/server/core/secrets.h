/* Secrets at rest: AES-256-GCM envelope encryption under a master key.
 *
 * The master key file holds one or more 256-bit keys, each with a key id (kid);
 * the newest (highest kid) seals, any of them opens, so an old key keeps working
 * through a rotation grace period. Sealed blob:
 *   "QKS1" | kid (u32 BE) | nonce (12, random) | tag (16) | ciphertext
 * The GCM associated data is the 8-byte header followed by `aad`, a string that
 * binds a blob to its purpose (e.g. secrets_aad_signing_key()): a blob copied
 * into another row or another org does not open.
 *
 * File format (text, 0600): a line "qwick-keyring v1", then one line per key:
 * "<kid> <64 hex digits> <created>", created being when the key was made (unix
 * seconds; keyrings written before it have no third field, read as unknown).
 * A key is superseded when the next kid is created: that starts its grace
 * period (qwickd keyring retire). keyring_load refuses a file readable by
 * group/other. Where the file lives is the admin commands' business
 * (master_key_path in qwickd.h): DATA/master.key by default.
 * In memory the keys live in sodium_malloc'd memory (guard pages, mlock'd when
 * the limit allows, read-only after load) and are wiped by keyring_free. */
#ifndef QWICKD_SECRETS_H
#define QWICKD_SECRETS_H

#include <stddef.h>
#include <stdint.h>

#include "qwick/buf.h"
#include "qwick/error.h"

typedef struct qk_keyring qk_keyring;

#define SECRETS_KEY_SIZE 32
#define SECRETS_NONCE_SIZE 12
#define SECRETS_TAG_SIZE 16
#define SECRETS_HEADER_SIZE 8 /* "QKS1" + kid */
#define SECRETS_OVERHEAD (SECRETS_HEADER_SIZE + SECRETS_NONCE_SIZE + SECRETS_TAG_SIZE)
#define SECRETS_MAX_PLAINTEXT (1u << 20) /* sealed things are keys and credentials */
#define SECRETS_MAX_KEYS 64
#define KEYRING_FILE "master.key"

/* Creates the keyring file at `path` (e.g. DATA/master.key) with mode 0600 and
 * one fresh random key (kid 1); refuses (QK_ERR_IO) if the file exists. */
qk_err keyring_create(const char *path);
qk_err keyring_load(const char *path, qk_keyring **out);
/* Adds a new key (kid = newest + 1) to the file at `path`, atomically; it
 * becomes the sealing key for keyrings loaded afterwards; old keys stay for
 * opening. */
qk_err keyring_rotate(const char *path);
/* Removes keys `kids` from the file at `path`, atomically. Refuses
 * (QK_ERR_INVALID_ARG, nothing written) a kid that is not in the file or is
 * the newest one. Whether any sealed blob still needs them is the caller's
 * question (qwickd keyring retire scans them all first). */
qk_err keyring_retire(const char *path, const uint32_t *kids, size_t nkids);
void keyring_free(qk_keyring *kr); /* wipes key material */

/* The keyring's keys without their material, by kid; returns how many. */
typedef struct keyring_info {
    uint32_t kid;
    int64_t created; /* unix seconds; 0: not recorded */
} keyring_info;
size_t keyring_info_get(const qk_keyring *kr, keyring_info out[SECRETS_MAX_KEYS]);
/* The kid that secrets_seal uses. */
uint32_t keyring_current_kid(const qk_keyring *kr);

qk_err secrets_seal(const qk_keyring *kr, qk_slice plaintext, const char *aad, qk_buf *out);
/* Plaintext is returned in *out; wipe it with qk_buf_free when done.
 * Malformed blob: QK_ERR_TRUNCATED / QK_ERR_BAD_DER; unknown kid or failed
 * authentication (wrong AAD, tampering): QK_ERR_CRYPTO. */
qk_err secrets_open(const qk_keyring *kr, qk_slice sealed, const char *aad, qk_buf *out);
/* The kid a sealed blob names (to find blobs that still need re-sealing). */
qk_err secrets_blob_kid(qk_slice sealed, uint32_t *kid);

/* AAD strings used across qwickd, so sealers and openers agree. */
#define SECRETS_AAD_MAX 64
/* "signing_key:org=<org>": binds a signing key blob to its tenant. */
void secrets_aad_signing_key(char out[SECRETS_AAD_MAX], int64_t org);
#define SECRETS_AAD_TSA_KEY "tsa_key"

#endif
