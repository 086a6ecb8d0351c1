/* The transparency log's signing side: the instance's Ed25519 log key
 * (sealed under the master key in the store, created by `qwickd init` or on
 * first use) and signed checkpoints of each org's tree. The tree itself is
 * kept by the store (store.h: log_*), its math and formats in
 * src/common/tlog.h; docs/transparency.md describes the whole. */
#ifndef QWICKD_TRANSPARENCY_H
#define QWICKD_TRANSPARENCY_H

#include <stdint.h>

#include "core/secrets.h"
#include "store/store.h"

typedef struct tl_key tl_key;

#define TL_SECRET_NAME "log-ed25519"
#define SECRETS_AAD_LOG_KEY "log_key"

/* Loads the log key, creating it first when the store has none and
 * `create` is set (several processes racing agree on the first one stored). */
qk_err tl_key_load(qk_store *st, const qk_keyring *kr, int create, tl_key **out);
void tl_key_free(tl_key *k); /* wipes the secret key */
/* The verifier key "qwickd-log+<id>+<base64>" (C2SP signed-note format). */
const char *tl_key_vkey(const tl_key *k);

/* The checkpoint origin of an org's log: "<host id>/org/<org id>". */
char *tl_origin(const tl_key *k, int64_t org);

/* The org's latest checkpoint: the stored one when it covers the whole log,
 * else a new one signed and stored first. *empty = 1 (and nothing in *out)
 * while the log has no entry. */
qk_err tl_checkpoint(qk_store *st, const tl_key *k, int64_t org, store_checkpoint *out, int *empty);

/* Signs a checkpoint of (size, root) for org; heap note. */
char *tl_sign_checkpoint(const tl_key *k, int64_t org, int64_t size, const uint8_t root[32]);

#endif
