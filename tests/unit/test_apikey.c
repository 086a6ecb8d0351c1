/* API keys: format, hashing, authentication outcomes, tenancy. */
#include "tmpdir.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sodium.h>

#include "auth/apikey.h"

typedef struct fixture {
    char *dir;
    qk_store *s;
    int64_t org_a, org_b;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->dir = tmpdir_new();
    if (store_sqlite_open(f->dir, &f->s) != QK_OK ||
        STORE_CALL(f->s, org_create, "a", NULL, &f->org_a) != QK_OK ||
        STORE_CALL(f->s, org_create, "b", NULL, &f->org_b) != QK_OK)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    f->s->ops->close(f->s);
    tmpdir_free(f->dir);
    free(f);
    return 0;
}

static void test_format(void **state)
{
    (void)state;
    char key[APIKEY_LEN + 1], prefix[APIKEY_PREFIX_LEN + 1], prev[APIKEY_LEN + 1] = "";
    uint8_t hash[32], expect[32];
    for (int i = 0; i < 200; i++) {
        apikey_generate(key, prefix, hash);
        assert_int_equal(strlen(key), APIKEY_LEN);
        assert_memory_equal(key, "qk_", 3);
        assert_true(apikey_well_formed(key, strlen(key)));
        assert_memory_equal(prefix, key, APIKEY_PREFIX_LEN);
        assert_int_equal(strlen(prefix), APIKEY_PREFIX_LEN);
        crypto_hash_sha256(expect, (const unsigned char *)key, APIKEY_LEN);
        assert_memory_equal(hash, expect, 32);
        assert_string_not_equal(key, prev);
        memcpy(prev, key, sizeof(prev));
    }
    /* 43 base62 digits carry all 256 random bits: 62^43 > 2^256 > 62^42. */
    assert_true(43 * 5.954 > 256 && 42 * 5.954 < 256);
}

static void test_well_formed_rejects(void **state)
{
    (void)state;
    char key[APIKEY_LEN + 1], prefix[APIKEY_PREFIX_LEN + 1];
    uint8_t hash[32];
    apikey_generate(key, prefix, hash);
    assert_false(apikey_well_formed(NULL, 0));
    assert_false(apikey_well_formed(key, APIKEY_LEN - 1));
    assert_false(apikey_well_formed(key, 0));
    char bad[APIKEY_LEN + 2];
    memcpy(bad, key, APIKEY_LEN + 1);
    bad[0] = 'Q';
    assert_false(apikey_well_formed(bad, APIKEY_LEN));
    memcpy(bad, key, APIKEY_LEN + 1);
    bad[20] = '-';
    assert_false(apikey_well_formed(bad, APIKEY_LEN));
    memcpy(bad, key, APIKEY_LEN + 1);
    bad[APIKEY_LEN] = 'x';
    bad[APIKEY_LEN + 1] = '\0';
    assert_false(apikey_well_formed(bad, APIKEY_LEN + 1));
}

static apikey_status auth(fixture *f, const char *k, int64_t now, store_apikey *out)
{
    apikey_status st = APIKEY_OK;
    assert_int_equal(apikey_authenticate(f->s, k, now, out, &st), QK_OK);
    return st;
}

static void test_authenticate(void **state)
{
    fixture *f = *state;
    char key[APIKEY_LEN + 1], other[APIKEY_LEN + 1], prefix[APIKEY_PREFIX_LEN + 1];
    uint8_t hash[32];
    int64_t id = 0, now = 1700000000;
    int found = 0;
    store_apikey k;

    assert_int_equal(apikey_create(f->s, f->org_a, 0, "ci", ROLE_SIGNER, 0, NULL, key, &id), QK_OK);
    assert_true(id > 0);
    assert_int_equal(auth(f, key, now, &k), APIKEY_OK);
    assert_int_equal(k.id, id);
    assert_int_equal(k.org_id, f->org_a);
    assert_int_equal(k.role, ROLE_SIGNER);
    assert_memory_equal(k.prefix, key, APIKEY_PREFIX_LEN);
    store_apikey_clear(&k);

    /* Well-formed but unknown, and malformed in several ways. */
    apikey_generate(other, prefix, hash);
    assert_int_equal(auth(f, other, now, &k), APIKEY_UNKNOWN);
    assert_int_equal(k.id, 0);
    assert_int_equal(auth(f, NULL, now, &k), APIKEY_UNKNOWN);
    assert_int_equal(auth(f, "", now, &k), APIKEY_UNKNOWN);
    assert_int_equal(auth(f, "qk_short", now, &k), APIKEY_UNKNOWN);
    char longer[APIKEY_LEN + 2];
    memcpy(longer, key, APIKEY_LEN);
    longer[APIKEY_LEN] = 'A';
    longer[APIKEY_LEN + 1] = '\0';
    assert_int_equal(auth(f, longer, now, &k), APIKEY_UNKNOWN);
    char flipped[APIKEY_LEN + 1];
    memcpy(flipped, key, sizeof(flipped));
    flipped[APIKEY_LEN - 1] = flipped[APIKEY_LEN - 1] == 'a' ? 'b' : 'a';
    assert_int_equal(auth(f, flipped, now, &k), APIKEY_UNKNOWN);

    /* Revocation takes effect on the next authentication. */
    assert_int_equal(STORE_CALL(f->s, apikey_revoke, f->org_a, id, NULL, &found), QK_OK);
    assert_int_equal(auth(f, key, now, &k), APIKEY_REVOKED);
    assert_int_equal(k.id, id);
    store_apikey_clear(&k);
}

static void test_expiry(void **state)
{
    fixture *f = *state;
    char key[APIKEY_LEN + 1];
    int64_t id = 0, now = 1700000000;
    store_apikey k;

    assert_int_equal(
        apikey_create(f->s, f->org_a, 0, "short", ROLE_VIEWER, now + 10, NULL, key, &id), QK_OK);
    assert_int_equal(auth(f, key, now + 9, &k), APIKEY_OK);
    store_apikey_clear(&k);
    assert_int_equal(auth(f, key, now + 10, &k), APIKEY_EXPIRED);
    store_apikey_clear(&k);
    assert_int_equal(auth(f, key, now + 1000, &k), APIKEY_EXPIRED);
    store_apikey_clear(&k);
}

static void test_status_codes(void **state)
{
    (void)state;
    assert_string_equal(apikey_status_code(APIKEY_OK), "ok");
    assert_string_equal(apikey_status_code(APIKEY_UNKNOWN), "unknown_api_key");
    assert_string_equal(apikey_status_code(APIKEY_REVOKED), "revoked_api_key");
    assert_string_equal(apikey_status_code(APIKEY_EXPIRED), "expired_api_key");
}

static void test_org_isolation(void **state)
{
    fixture *f = *state;
    char ka[APIKEY_LEN + 1], kb[APIKEY_LEN + 1];
    int64_t ida = 0, idb = 0;
    int found = 1;
    store_apikey k;

    assert_int_equal(apikey_create(f->s, f->org_a, 0, "a", ROLE_ADMIN, 0, NULL, ka, &ida), QK_OK);
    assert_int_equal(apikey_create(f->s, f->org_b, 0, "b", ROLE_ADMIN, 0, NULL, kb, &idb), QK_OK);
    assert_int_equal(auth(f, ka, 1, &k), APIKEY_OK);
    assert_int_equal(k.org_id, f->org_a);
    store_apikey_clear(&k);
    assert_int_equal(auth(f, kb, 1, &k), APIKEY_OK);
    assert_int_equal(k.org_id, f->org_b);
    store_apikey_clear(&k);
    /* An admin of B cannot revoke A's key by id. */
    assert_int_equal(STORE_CALL(f->s, apikey_revoke, f->org_b, ida, NULL, &found),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    assert_int_equal(auth(f, ka, 1, &k), APIKEY_OK);
    store_apikey_clear(&k);
}

static void test_last_used_recorded(void **state)
{
    fixture *f = *state;
    char key[APIKEY_LEN + 1];
    int64_t id = 0;
    int found = 0;
    store_apikey k;
    assert_int_equal(apikey_create(f->s, f->org_a, 0, "t", ROLE_SIGNER, 0, NULL, key, &id), QK_OK);
    assert_int_equal(auth(f, key, 1700000000, &k), APIKEY_OK);
    store_apikey_clear(&k);
    /* Asynchronous: visible once the writer has drained (close does that). */
    f->s->ops->close(f->s);
    assert_int_equal(store_sqlite_open(f->dir, &f->s), QK_OK);
    assert_int_equal(STORE_CALL(f->s, apikey_get, f->org_a, id, &k, &found), QK_OK);
    assert_int_equal(k.last_used_at, 1700000000);
    store_apikey_clear(&k);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_format),
        T(test_well_formed_rejects),
        T(test_authenticate),
        T(test_expiry),
        T(test_status_codes),
        T(test_org_isolation),
        T(test_last_used_recorded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
