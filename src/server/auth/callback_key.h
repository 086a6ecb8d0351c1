/* The secret each org's completion callbacks are signed with (HMAC-SHA256,
 * api/callbacks.h): 32 random bytes, sealed under the master key and kept
 * as the instance secret "callback-hmac:<org>" (its AAD is that name), made
 * on first use; nodes racing to make it agree on the first one stored. */
#ifndef QWICKD_CALLBACK_KEY_H
#define QWICKD_CALLBACK_KEY_H

#include <stdint.h>

#include "core/secrets.h"
#include "store/store.h"

#define CALLBACK_SECRET_PREFIX "callback-hmac:"
#define CALLBACK_SECRET_LEN 32

qk_err callback_secret(qk_store *st, const qk_keyring *kr, int64_t org,
                       uint8_t out[CALLBACK_SECRET_LEN]);

#endif
