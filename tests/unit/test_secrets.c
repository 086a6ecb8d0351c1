/* Secrets at rest: keyring file, AES-256-GCM envelopes, rotation, tampering. */
#include "tmpdir.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <cmocka.h>

#include "core/secrets.h"
#include "core/util.h"

typedef struct fixture {
    char *dir;
    char path[4096];
    qk_keyring *kr;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->dir = tmpdir_new();
    snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, KEYRING_FILE);
    if (keyring_create(f->path) != QK_OK || keyring_load(f->path, &f->kr) != QK_OK)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    keyring_free(f->kr);
    tmpdir_free(f->dir);
    free(f);
    return 0;
}

static const char secret[] = "-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n";
#define SECRET_SLICE ((qk_slice){(const uint8_t *)secret, sizeof(secret) - 1})

static void test_keyring_file_mode_and_exclusive(void **state)
{
    fixture *f = *state;
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* A second create never overwrites the master key. */
    assert_int_equal(keyring_create(f->path), QK_ERR_IO);
    assert_int_equal(keyring_current_kid(f->kr), 1);
}

static void test_keyring_refuses_open_mode(void **state)
{
    fixture *f = *state;
    qk_keyring *kr = NULL;
    assert_int_equal(chmod(f->path, 0640), 0);
    assert_int_equal(keyring_load(f->path, &kr), QK_ERR_IO);
    assert_null(kr);
}

static void write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
    chmod(path, 0600);
}

static void test_keyring_malformed(void **state)
{
    fixture *f = *state;
    qk_keyring *kr = NULL;
    char p[4200];
    static const char *const bad[] = {
        "",
        "not a keyring\n1 00\n",
        "qwick-keyring v1\n",
        "qwick-keyring v1\n1 abcd\n",
        "qwick-keyring v1\n0 000000000000000000000000000000000000000000000000000000000000000\n",
        "qwick-keyring v1\nx 0000000000000000000000000000000000000000000000000000000000000000\n",
        "qwick-keyring v1\n1 000000000000000000000000000000000000000000000000000000000000000g\n",
        /* duplicate key id */
        ("qwick-keyring v1\n1 0000000000000000000000000000000000000000000000000000000000000000\n"
         "1 1111111111111111111111111111111111111111111111111111111111111111\n"),
    };
    snprintf(p, sizeof(p), "%s/bad.key", f->dir);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_text(p, bad[i]);
        assert_int_not_equal(keyring_load(p, &kr), QK_OK);
        assert_null(kr);
    }
    assert_int_not_equal(keyring_load("/nonexistent/master.key", &kr), QK_OK);
}

static void test_seal_open_round_trip(void **state)
{
    fixture *f = *state;
    qk_buf sealed = {NULL, 0}, sealed2 = {NULL, 0}, out = {NULL, 0};
    uint32_t kid = 0;

    assert_int_equal(secrets_seal(f->kr, SECRET_SLICE, "signing_key:org=1", &sealed), QK_OK);
    assert_int_equal(sealed.len, SECRETS_OVERHEAD + SECRET_SLICE.len);
    assert_memory_equal(sealed.data, "QKS1", 4);
    assert_int_equal(secrets_blob_kid((qk_slice){sealed.data, sealed.len}, &kid), QK_OK);
    assert_int_equal(kid, 1);
    /* The plaintext does not appear in the envelope. */
    assert_null(memmem(sealed.data, sealed.len, "PRIVATE KEY", 11));
    assert_int_equal(
        secrets_open(f->kr, (qk_slice){sealed.data, sealed.len}, "signing_key:org=1", &out), QK_OK);
    assert_int_equal(out.len, SECRET_SLICE.len);
    assert_memory_equal(out.data, secret, out.len);
    qk_buf_free(&out);

    /* Random nonces: the same plaintext seals differently each time. */
    assert_int_equal(secrets_seal(f->kr, SECRET_SLICE, "signing_key:org=1", &sealed2), QK_OK);
    assert_memory_not_equal(sealed.data + 8, sealed2.data + 8, SECRETS_NONCE_SIZE);
    qk_buf_free(&sealed);
    qk_buf_free(&sealed2);

    /* Empty plaintext is fine. */
    assert_int_equal(secrets_seal(f->kr, (qk_slice){NULL, 0}, "x", &sealed), QK_OK);
    assert_int_equal(secrets_open(f->kr, (qk_slice){sealed.data, sealed.len}, "x", &out), QK_OK);
    assert_int_equal(out.len, 0);
    qk_buf_free(&out);
    qk_buf_free(&sealed);
}

static void test_open_rejects_wrong_aad(void **state)
{
    fixture *f = *state;
    qk_buf sealed = {NULL, 0}, out = {NULL, 0};
    char aad1[SECRETS_AAD_MAX], aad2[SECRETS_AAD_MAX];
    secrets_aad_signing_key(aad1, 1);
    secrets_aad_signing_key(aad2, 2);
    assert_string_equal(aad1, "signing_key:org=1");
    assert_int_equal(secrets_seal(f->kr, SECRET_SLICE, aad1, &sealed), QK_OK);
    assert_int_equal(secrets_open(f->kr, (qk_slice){sealed.data, sealed.len}, aad2, &out),
                     QK_ERR_CRYPTO);
    assert_null(out.data);
    assert_int_equal(secrets_open(f->kr, (qk_slice){sealed.data, sealed.len}, NULL, &out),
                     QK_ERR_CRYPTO);
    assert_int_equal(secrets_open(f->kr, (qk_slice){sealed.data, sealed.len}, "", &out),
                     QK_ERR_CRYPTO);
    qk_buf_free(&sealed);
}

static void test_open_rejects_tampering(void **state)
{
    fixture *f = *state;
    qk_buf sealed = {NULL, 0}, out = {NULL, 0};
    assert_int_equal(secrets_seal(f->kr, SECRET_SLICE, "a", &sealed), QK_OK);
    /* Every single-bit flip anywhere in the blob is caught. */
    for (size_t i = 0; i < sealed.len; i++) {
        sealed.data[i] ^= 0x01;
        qk_err rc = secrets_open(f->kr, (qk_slice){sealed.data, sealed.len}, "a", &out);
        assert_int_not_equal(rc, QK_OK);
        assert_null(out.data);
        sealed.data[i] ^= 0x01;
    }
    /* Truncations. */
    for (size_t n = 0; n < sealed.len; n++)
        assert_int_not_equal(secrets_open(f->kr, (qk_slice){sealed.data, n}, "a", &out), QK_OK);
    assert_int_equal(secrets_open(f->kr, (qk_slice){sealed.data, 10}, "a", &out), QK_ERR_TRUNCATED);
    /* Unknown key id. */
    sealed.data[7] = 9;
    assert_int_equal(secrets_open(f->kr, (qk_slice){sealed.data, sealed.len}, "a", &out),
                     QK_ERR_CRYPTO);
    qk_buf_free(&sealed);
}

static void test_other_keyring_cannot_open(void **state)
{
    fixture *f = *state;
    char p2[4200];
    qk_keyring *kr2 = NULL;
    qk_buf sealed = {NULL, 0}, out = {NULL, 0};
    snprintf(p2, sizeof(p2), "%s/other.key", f->dir);
    assert_int_equal(keyring_create(p2), QK_OK);
    assert_int_equal(keyring_load(p2, &kr2), QK_OK);
    assert_int_equal(secrets_seal(f->kr, SECRET_SLICE, "a", &sealed), QK_OK);
    /* Same kid (1), different key: authentication fails. */
    assert_int_equal(secrets_open(kr2, (qk_slice){sealed.data, sealed.len}, "a", &out),
                     QK_ERR_CRYPTO);
    qk_buf_free(&sealed);
    keyring_free(kr2);
}

static void test_rotation_keeps_old_blobs(void **state)
{
    fixture *f = *state;
    qk_keyring *kr2 = NULL, *kr3 = NULL;
    qk_buf old = {NULL, 0}, fresh = {NULL, 0}, out = {NULL, 0};
    uint32_t kid = 0;
    struct stat st;

    assert_int_equal(secrets_seal(f->kr, SECRET_SLICE, "a", &old), QK_OK);
    assert_int_equal(keyring_rotate(f->path), QK_OK);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(keyring_load(f->path, &kr2), QK_OK);
    assert_int_equal(keyring_current_kid(kr2), 2);

    /* New seals use the new key... */
    assert_int_equal(secrets_seal(kr2, SECRET_SLICE, "a", &fresh), QK_OK);
    assert_int_equal(secrets_blob_kid((qk_slice){fresh.data, fresh.len}, &kid), QK_OK);
    assert_int_equal(kid, 2);
    /* ...old blobs still open... */
    assert_int_equal(secrets_open(kr2, (qk_slice){old.data, old.len}, "a", &out), QK_OK);
    assert_memory_equal(out.data, secret, out.len);
    qk_buf_free(&out);
    /* ...and the pre-rotation keyring cannot open the new ones. */
    assert_int_equal(secrets_open(f->kr, (qk_slice){fresh.data, fresh.len}, "a", &out),
                     QK_ERR_CRYPTO);

    assert_int_equal(keyring_rotate(f->path), QK_OK);
    assert_int_equal(keyring_load(f->path, &kr3), QK_OK);
    assert_int_equal(keyring_current_kid(kr3), 3);
    assert_int_equal(secrets_open(kr3, (qk_slice){old.data, old.len}, "a", &out), QK_OK);
    qk_buf_free(&out);
    assert_int_equal(secrets_open(kr3, (qk_slice){fresh.data, fresh.len}, "a", &out), QK_OK);
    qk_buf_free(&out);

    qk_buf_free(&old);
    qk_buf_free(&fresh);
    keyring_free(kr2);
    keyring_free(kr3);
}

#define HEX64 "0000000000000000000000000000000000000000000000000000000000000000"

/* Each key carries the time it was made: the previous key's grace period
 * starts when its successor is created. Keyrings without the field load. */
static void test_keyring_creation_times(void **state)
{
    fixture *f = *state;
    keyring_info info[SECRETS_MAX_KEYS];
    qk_keyring *kr = NULL;
    char p[4200];
    time_t now = time(NULL);

    assert_int_equal(keyring_info_get(f->kr, info), 1);
    assert_int_equal(info[0].kid, 1);
    assert_true(info[0].created >= now - 60 && info[0].created <= now + 60);
    assert_int_equal(keyring_rotate(f->path), QK_OK);
    assert_int_equal(keyring_load(f->path, &kr), QK_OK);
    assert_int_equal(keyring_info_get(kr, info), 2);
    assert_int_equal(info[1].kid, 2);
    assert_true(info[1].created >= info[0].created && info[1].created <= now + 60);
    keyring_free(kr);

    snprintf(p, sizeof(p), "%s/legacy.key", f->dir);
    /* Listed out of order: the info comes sorted by kid. */
    write_text(p, "qwick-keyring v1\n7 " HEX64 " 1700000000\n3 " HEX64 "\n");
    assert_int_equal(keyring_load(p, &kr), QK_OK);
    assert_int_equal(keyring_info_get(kr, info), 2);
    assert_true(info[0].kid == 3 && info[0].created == 0);
    assert_true(info[1].kid == 7 && info[1].created == 1700000000);
    assert_int_equal(keyring_current_kid(kr), 7);
    keyring_free(kr);

    static const char *const bad[] = {
        "qwick-keyring v1\n1 " HEX64 " soon\n",
        "qwick-keyring v1\n1 " HEX64 " -5\n",
        "qwick-keyring v1\n1 " HEX64 " 0\n",
        "qwick-keyring v1\n1 " HEX64 " 12 13\n",
        "qwick-keyring v1\n1 " HEX64 " 99999999999999999999999\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_text(p, bad[i]);
        assert_int_equal(keyring_load(p, &kr), QK_ERR_BAD_DER);
        assert_null(kr);
    }
}

/* Retiring drops a key for good: what it sealed no longer opens, what the
 * others sealed still does; the newest key and unknown kids are refused. */
static void test_keyring_retire(void **state)
{
    fixture *f = *state;
    qk_keyring *kr = NULL;
    qk_buf old = {NULL, 0}, fresh = {NULL, 0}, out = {NULL, 0}, before = {NULL, 0},
           after = {NULL, 0};
    keyring_info info[SECRETS_MAX_KEYS];
    struct stat st;

    assert_int_equal(secrets_seal(f->kr, SECRET_SLICE, "a", &old), QK_OK);
    assert_int_equal(keyring_rotate(f->path), QK_OK);
    assert_int_equal(keyring_load(f->path, &kr), QK_OK);
    assert_int_equal(secrets_seal(kr, SECRET_SLICE, "a", &fresh), QK_OK);
    keyring_free(kr);

    uint32_t newest = 2, unknown = 9, first = 1;
    assert_int_equal(file_read_all(f->path, 4096, &before), QK_OK);
    assert_int_equal(keyring_retire(f->path, &newest, 1), QK_ERR_INVALID_ARG);
    assert_int_equal(keyring_retire(f->path, &unknown, 1), QK_ERR_INVALID_ARG);
    uint32_t mixed[] = {1, 2};
    assert_int_equal(keyring_retire(f->path, mixed, 2), QK_ERR_INVALID_ARG);
    assert_int_equal(file_read_all(f->path, 4096, &after), QK_OK);
    assert_int_equal(after.len, before.len); /* refused: nothing written */
    assert_memory_equal(after.data, before.data, before.len);

    assert_int_equal(keyring_retire(f->path, &first, 1), QK_OK);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(keyring_load(f->path, &kr), QK_OK);
    assert_int_equal(keyring_info_get(kr, info), 1);
    assert_int_equal(info[0].kid, 2);
    assert_int_equal(secrets_open(kr, (qk_slice){fresh.data, fresh.len}, "a", &out), QK_OK);
    qk_buf_free(&out);
    assert_int_equal(secrets_open(kr, (qk_slice){old.data, old.len}, "a", &out), QK_ERR_CRYPTO);
    /* The last key is the newest: it cannot go. */
    assert_int_equal(keyring_retire(f->path, &newest, 1), QK_ERR_INVALID_ARG);
    keyring_free(kr);
    qk_buf_free(&old);
    qk_buf_free(&fresh);
    qk_buf_free(&before);
    qk_buf_free(&after);
}

static void test_too_large(void **state)
{
    fixture *f = *state;
    qk_buf out = {NULL, 0};
    size_t n = SECRETS_MAX_PLAINTEXT + 1;
    uint8_t *big = calloc(1, n);
    assert_int_equal(secrets_seal(f->kr, (qk_slice){big, n}, "a", &out), QK_ERR_TOO_LARGE);
    free(big);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_keyring_file_mode_and_exclusive),
        T(test_keyring_refuses_open_mode),
        T(test_keyring_malformed),
        T(test_seal_open_round_trip),
        T(test_open_rejects_wrong_aad),
        T(test_open_rejects_tampering),
        T(test_other_keyring_cannot_open),
        T(test_rotation_keeps_old_blobs),
        T(test_too_large),
        T(test_keyring_creation_times),
        T(test_keyring_retire),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
