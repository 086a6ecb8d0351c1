/* Key hygiene: the process state harden_process leaves, private keys landing
 * in OpenSSL's secure heap, and the mode checks serve runs at start. */
#include "tmpdir.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <cmocka.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "core/hardening.h"
#include "signer/pki.h"

static void test_process_state(void **state)
{
    harden_state h;
    struct rlimit rl;
    (void)state;
    assert_int_equal(harden_process(), QK_OK);
    assert_int_equal(harden_process(), QK_OK); /* idempotent */
    assert_int_equal(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
    assert_int_equal(getrlimit(RLIMIT_CORE, &rl), 0);
    assert_int_equal(rl.rlim_cur, 0);
    assert_int_equal(rl.rlim_max, 0);
    assert_true(CRYPTO_secure_malloc_initialized());
    harden_status(&h);
    assert_int_equal(h.dumpable, 0);
    assert_int_equal(h.core, 0);
    assert_true(h.secure_heap == 1 || h.secure_heap == 2);
}

/* A private key parsed the way serve parses the TSA and signing keys keeps
 * its private values in the secure heap, and gives them back when freed. */
static void test_private_key_in_secure_heap(void **state)
{
    EVP_PKEY *gen = NULL, *key = NULL;
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL;
    (void)state;
    assert_int_equal(harden_process(), QK_OK);
    gen = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    assert_non_null(gen);
    assert_int_equal(PEM_write_bio_PrivateKey(bio, gen, NULL, NULL, 0, NULL, NULL), 1);
    long n = BIO_get_mem_data(bio, &pem);
    assert_true(n > 0);

    size_t before = CRYPTO_secure_used();
    assert_int_equal(pki_parse_key_pem((qk_slice){(const uint8_t *)pem, (size_t)n}, &key), QK_OK);
    size_t loaded = CRYPTO_secure_used();
    assert_true(loaded >= before + 640); /* d (256 bytes), p, q and the CRT values (128 each) */
    EVP_PKEY_free(key);
    assert_true(CRYPTO_secure_used() < loaded);
    EVP_PKEY_free(gen);
    BIO_free(bio);
}

static void test_dir_modes(void **state)
{
    char *dir = tmpdir_new();
    char file[4200], missing[4200];
    (void)state;
    snprintf(file, sizeof(file), "%s/file", dir);
    snprintf(missing, sizeof(missing), "%s/missing", dir);
    assert_int_equal(chmod(dir, 0700), 0);
    assert_int_equal(harden_check_dir(dir), QK_OK);
    static const mode_t bad[] = {0750, 0705, 0701, 0710, 0720, 0777};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(chmod(dir, bad[i]), 0);
        assert_int_equal(harden_check_dir(dir), QK_ERR_IO);
        char want[16];
        snprintf(want, sizeof(want), "mode %04o", (unsigned)bad[i]);
        assert_non_null(strstr(qk_error_detail(), want));
        assert_non_null(strstr(qk_error_detail(), dir));
    }
    assert_int_equal(chmod(dir, 0700), 0);
    FILE *fp = fopen(file, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(harden_check_dir(file), QK_ERR_IO); /* not a directory */
    assert_int_equal(harden_check_dir(missing), QK_ERR_IO);
    tmpdir_free(dir);
}

static void test_private_file_modes(void **state)
{
    char *dir = tmpdir_new();
    char file[4200];
    (void)state;
    snprintf(file, sizeof(file), "%s/tls.key", dir);
    FILE *fp = fopen(file, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(chmod(file, 0600), 0);
    assert_int_equal(harden_check_private(file, "TLS key"), QK_OK);
    assert_int_equal(chmod(file, 0400), 0);
    assert_int_equal(harden_check_private(file, "TLS key"), QK_OK);
    static const mode_t bad[] = {0640, 0604, 0620, 0602, 0660, 0644};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(chmod(file, bad[i]), 0);
        assert_int_equal(harden_check_private(file, "TLS key"), QK_ERR_IO);
        assert_non_null(strstr(qk_error_detail(), "TLS key"));
        assert_non_null(strstr(qk_error_detail(), file));
    }
    /* Missing: whoever opens it reports that. A directory is refused. */
    snprintf(file, sizeof(file), "%s/none", dir);
    assert_int_equal(harden_check_private(file, "database"), QK_OK);
    assert_int_equal(harden_check_private(dir, "database"), QK_ERR_IO);
    tmpdir_free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_process_state),
        cmocka_unit_test(test_private_key_in_secure_heap),
        cmocka_unit_test(test_dir_modes),
        cmocka_unit_test(test_private_file_modes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
