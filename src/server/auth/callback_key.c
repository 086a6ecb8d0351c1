#include "auth/callback_key.h"

#include <stdio.h>
#include <string.h>

#include <sodium.h>

qk_err callback_secret(qk_store *st, const qk_keyring *kr, int64_t org,
                       uint8_t out[CALLBACK_SECRET_LEN])
{
    char name[64];
    qk_buf sealed = {NULL, 0}, pub = {NULL, 0}, plain = {NULL, 0};
    int found = 0;
    snprintf(name, sizeof(name), CALLBACK_SECRET_PREFIX "%lld", (long long)org);
    qk_err rc = STORE_CALL(st, instance_secret_get, name, &sealed, &pub, &found);
    if (rc == QK_OK && !found) {
        uint8_t fresh[CALLBACK_SECRET_LEN];
        qk_buf mine = {NULL, 0};
        randombytes_buf(fresh, sizeof(fresh));
        rc = secrets_seal(kr, (qk_slice){fresh, sizeof(fresh)}, name, &mine);
        sodium_memzero(fresh, sizeof(fresh));
        if (rc == QK_OK) /* inserted only when free: a racing node's may win */
            rc = STORE_CALL(st, instance_secret_put, name, (qk_slice){mine.data, mine.len},
                            (qk_slice){(const uint8_t *)"", 0});
        qk_buf_free(&mine);
        if (rc == QK_OK)
            rc = STORE_CALL(st, instance_secret_get, name, &sealed, &pub, &found);
        if (rc == QK_OK && !found)
            rc = qk_fail(QK_ERR_IO, "callback secret of org %lld vanished", (long long)org);
    }
    if (rc == QK_OK)
        rc = secrets_open(kr, (qk_slice){sealed.data, sealed.len}, name, &plain);
    if (rc == QK_OK && plain.len != CALLBACK_SECRET_LEN)
        rc = qk_fail(QK_ERR_INVALID_ARG, "the callback secret of org %lld has the wrong size",
                     (long long)org);
    if (rc == QK_OK)
        memcpy(out, plain.data, CALLBACK_SECRET_LEN);
    if (plain.data != NULL)
        sodium_memzero(plain.data, plain.len);
    qk_buf_free(&plain);
    qk_buf_free(&sealed);
    qk_buf_free(&pub);
    return rc;
}
