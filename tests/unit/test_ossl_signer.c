/* qk_evp_signer: pooled contexts give the same signatures as
 * qk_evp_sign_digest, across algorithms and from many threads at once, and
 * bad input is refused without poisoning the pool. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "qwick/ossl_signer.h"
#include "sig_testutil.h"

static const qk_hash_alg algs[] = {QK_HASH_SHA1, QK_HASH_SHA256, QK_HASH_SHA384, QK_HASH_SHA512};

/* RSA PKCS#1 v1.5 is deterministic: identical bytes, context reused. */
static void rsa_same_bytes(void **state)
{
    (void)state;
    qk_evp_signer *s = NULL;
    assert_int_equal(qk_evp_signer_new(tk_rsa_key(), &s), QK_OK);
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
            uint8_t dg[QK_HASH_MAX_SIZE];
            size_t n = qk_hash_size(algs[i]);
            qk_buf a = {NULL, 0}, b = {NULL, 0};
            tk_random(dg, n);
            assert_int_equal(qk_evp_signer_sign(s, algs[i], dg, n, &a), QK_OK);
            assert_int_equal(qk_evp_sign_digest(tk_rsa_key(), algs[i], dg, n, &b), QK_OK);
            assert_int_equal(a.len, b.len);
            assert_memory_equal(a.data, b.data, a.len);
            qk_buf_free(&a);
            qk_buf_free(&b);
        }
    }
    qk_evp_signer_free(s);
}

static int ec_verifies(EVP_PKEY *key, qk_hash_alg alg, const uint8_t *dg, size_t n, qk_buf sig)
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(key, NULL);
    int ok = c != NULL && EVP_PKEY_verify_init(c) == 1 &&
             EVP_PKEY_CTX_set_signature_md(c, EVP_get_digestbynid(qk_hash_nid(alg))) == 1 &&
             EVP_PKEY_verify(c, sig.data, sig.len, dg, n) == 1;
    EVP_PKEY_CTX_free(c);
    return ok;
}

static void ec_verifies_and_flip_fails(void **state)
{
    (void)state;
    qk_evp_signer *s = NULL;
    assert_int_equal(qk_evp_signer_new(tk_ec_key(), &s), QK_OK);
    for (int round = 0; round < 3; round++) {
        uint8_t dg[32];
        qk_buf sig = {NULL, 0};
        tk_random(dg, sizeof(dg));
        assert_int_equal(qk_evp_signer_sign(s, QK_HASH_SHA256, dg, sizeof(dg), &sig), QK_OK);
        assert_true(ec_verifies(tk_ec_key(), QK_HASH_SHA256, dg, sizeof(dg), sig));
        dg[round] ^= 0x01;
        assert_false(ec_verifies(tk_ec_key(), QK_HASH_SHA256, dg, sizeof(dg), sig));
        qk_buf_free(&sig);
    }
    qk_evp_signer_free(s);
}

static void bad_input(void **state)
{
    (void)state;
    qk_evp_signer *s = NULL;
    uint8_t dg[64] = {0};
    qk_buf sig = {(uint8_t *)1, 1};

    assert_int_equal(qk_evp_signer_new(NULL, &s), QK_ERR_INVALID_ARG);
    assert_null(s);
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ed);
    assert_int_equal(qk_evp_signer_new(ed, &s), QK_ERR_UNSUPPORTED_ALG);
    assert_null(s);
    EVP_PKEY_free(ed);

    assert_int_equal(qk_evp_signer_new(tk_rsa_key(), &s), QK_OK);
    /* Truncated, oversize, unknown algorithm, missing pointers. */
    assert_int_equal(qk_evp_signer_sign(s, QK_HASH_SHA256, dg, 31, &sig), QK_ERR_INVALID_ARG);
    assert_null(sig.data);
    assert_int_equal(sig.len, 0);
    assert_int_equal(qk_evp_signer_sign(s, QK_HASH_SHA256, dg, 33, &sig), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_evp_signer_sign(s, QK_HASH_NONE, dg, 32, &sig), QK_ERR_UNSUPPORTED_ALG);
    assert_int_equal(qk_evp_signer_sign(s, (qk_hash_alg)99, dg, 32, &sig), QK_ERR_UNSUPPORTED_ALG);
    assert_int_equal(qk_evp_signer_sign(s, QK_HASH_SHA256, NULL, 32, &sig), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_evp_signer_sign(NULL, QK_HASH_SHA256, dg, 32, &sig), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_evp_signer_sign(s, QK_HASH_SHA256, dg, 32, NULL), QK_ERR_INVALID_ARG);
    /* The signer still works after the refusals. */
    assert_int_equal(qk_evp_signer_sign(s, QK_HASH_SHA256, dg, 32, &sig), QK_OK);
    assert_int_equal(sig.len, (size_t)EVP_PKEY_get_size(tk_rsa_key()));
    qk_buf_free(&sig);
    assert_int_equal(qk_evp_signer_sign_fn(s, QK_HASH_SHA384, dg, 48, &sig), QK_OK);
    qk_buf_free(&sig);
    qk_evp_signer_free(s);
    qk_evp_signer_free(NULL);
}

#define N_THREADS 8
#define N_PER_THREAD 12

typedef struct worker {
    qk_evp_signer *s;
    int failures;
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < N_PER_THREAD; i++) {
        qk_hash_alg alg = algs[i % 4];
        size_t n = qk_hash_size(alg);
        uint8_t dg[QK_HASH_MAX_SIZE];
        qk_buf a = {NULL, 0}, b = {NULL, 0};
        tk_random(dg, n);
        if (qk_evp_signer_sign(w->s, alg, dg, n, &a) != QK_OK ||
            qk_evp_sign_digest(tk_rsa_key(), alg, dg, n, &b) != QK_OK || a.len != b.len ||
            memcmp(a.data, b.data, a.len) != 0)
            w->failures++;
        qk_buf_free(&a);
        qk_buf_free(&b);
    }
    return NULL;
}

static void threads_same_bytes(void **state)
{
    (void)state;
    qk_evp_signer *s = NULL;
    pthread_t th[N_THREADS];
    worker w[N_THREADS];
    assert_int_equal(qk_evp_signer_new(tk_rsa_key(), &s), QK_OK);
    for (int i = 0; i < N_THREADS; i++) {
        w[i] = (worker){s, 0};
        assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].failures, 0);
    }
    qk_evp_signer_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rsa_same_bytes),
        cmocka_unit_test(ec_verifies_and_flip_fails),
        cmocka_unit_test(bad_input),
        cmocka_unit_test(threads_same_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
