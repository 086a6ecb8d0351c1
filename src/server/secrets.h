/* Secrets at rest: AES-256-GCM envelope encryption under a master key.
 *
 * The master key file holds one or more keys, each with a key id; the newest
 * seals, any of them opens, so an old key keeps working through a rotation
 * grace period. Sealed blob: "QKS1" | kid (u32 BE) | nonce (12) | tag (16) | ciphertext.
 * The associated data binds a blob to its purpose (e.g. "signing_key:3"). */
#ifndef QWICKD_SECRETS_H
#define QWICKD_SECRETS_H

#include "qwick/buf.h"
#include "qwick/error.h"

typedef struct qk_keyring qk_keyring;

/* Creates DIR/master.key (0600) with one fresh random key; refuses if it exists. */
qk_err keyring_create(const char *path);
qk_err keyring_load(const char *path, qk_keyring **out);
/* Adds a new key that becomes the sealing key; old keys stay for opening. */
qk_err keyring_rotate(const char *path);
void keyring_free(qk_keyring *kr); /* wipes key material */

qk_err secrets_seal(const qk_keyring *kr, qk_slice plaintext, const char *aad, qk_buf *out);
/* Plaintext is returned in *out; wipe it with qk_buf_free when done. */
qk_err secrets_open(const qk_keyring *kr, qk_slice sealed, const char *aad, qk_buf *out);

#endif
