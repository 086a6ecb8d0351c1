/* qk_chain: a chain decoded once gives the same signatures as DER slices,
 * from many threads at once, and bad input is refused at qk_chain_new. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/x509.h>

#include "qwick/authenticode.h"
#include "qwick/ossl_signer.h"
#include "sig_testutil.h"

typedef struct fixture {
    X509 *root, *leaf;
    qk_buf root_der, leaf_der;
    qk_slice chain[2];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->root = tk_cert(tk_ec_key(), "Chain Test Root", NULL, NULL, NULL);
    f->leaf = tk_cert(tk_rsa_key(), "Chain Test Signer", "codeSigning", f->root, tk_ec_key());
    f->leaf_der = tk_cert_der(f->leaf);
    f->root_der = tk_cert_der(f->root);
    f->chain[0] = (qk_slice){f->leaf_der.data, f->leaf_der.len};
    f->chain[1] = (qk_slice){f->root_der.data, f->root_der.len};
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    X509_free(f->root);
    X509_free(f->leaf);
    qk_buf_free(&f->root_der);
    qk_buf_free(&f->leaf_der);
    free(f);
    return 0;
}

static qk_sign_request pe_request(const uint8_t *dg)
{
    return (qk_sign_request){.format = QK_FORMAT_AUTHENTICODE_PE,
                             .alg = QK_HASH_SHA256,
                             .digest = {dg, 32},
                             .program_name = "chain test",
                             .url = "https://example.com/"};
}

/* RSA PKCS#1 v1.5 is deterministic, so both paths give identical bytes. */
static void same_bytes_as_slices(void **state)
{
    fixture *f = *state;
    uint8_t dg[32];
    qk_chain *c = NULL;
    qk_buf a = {0}, b = {0};
    tk_random(dg, sizeof(dg));
    qk_sign_request req = pe_request(dg);
    assert_int_equal(qk_chain_new(f->chain, 2, &c), QK_OK);
    assert_int_equal(qk_sign(&req, qk_evp_sign_fn, tk_rsa_key(), f->chain, 2, &a), QK_OK);
    assert_int_equal(qk_sign_chain(&req, qk_evp_sign_fn, tk_rsa_key(), c, &b), QK_OK);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    qk_buf_free(&a);
    qk_buf_free(&b);
    qk_chain_free(c);
}

typedef struct worker_arg {
    const qk_chain *c;
    int failures;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *w = p;
    for (int i = 0; i < 20; i++) {
        uint8_t dg[32];
        qk_buf out = {0};
        tk_random(dg, sizeof(dg));
        qk_sign_request req = pe_request(dg);
        req.format = i % 2 ? QK_FORMAT_CMS_DETACHED : QK_FORMAT_AUTHENTICODE_PE;
        if (qk_sign_chain(&req, qk_evp_sign_fn, tk_rsa_key(), w->c, &out) != QK_OK || out.len == 0)
            w->failures++;
        qk_buf_free(&out);
    }
    return NULL;
}

/* One decoded chain shared by threads (what qwickd's signer cache does). */
static void shared_by_threads(void **state)
{
    fixture *f = *state;
    qk_chain *c = NULL;
    pthread_t t[4];
    worker_arg w[4];
    assert_int_equal(qk_chain_new(f->chain, 2, &c), QK_OK);
    for (int i = 0; i < 4; i++) {
        w[i] = (worker_arg){c, 0};
        assert_int_equal(pthread_create(&t[i], NULL, worker, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    qk_chain_free(c);
}

static void refuses_bad_chains(void **state)
{
    fixture *f = *state;
    qk_chain *c = (qk_chain *)1;
    uint8_t junk[64];
    memset(junk, 0x30, sizeof(junk));

    assert_int_equal(qk_chain_new(f->chain, 0, &c), QK_ERR_INVALID_ARG);
    assert_null(c);
    assert_int_equal(qk_chain_new(NULL, 1, &c), QK_ERR_INVALID_ARG);
    qk_slice bad = {junk, sizeof(junk)};
    assert_int_equal(qk_chain_new(&bad, 1, &c), QK_ERR_BAD_DER);
    assert_null(c);
    /* truncated leaf */
    qk_slice cut = {f->leaf_der.data, f->leaf_der.len - 1};
    assert_int_not_equal(qk_chain_new(&cut, 1, &c), QK_OK);
    /* trailing byte after the leaf */
    uint8_t *tail = malloc(f->leaf_der.len + 1);
    memcpy(tail, f->leaf_der.data, f->leaf_der.len);
    tail[f->leaf_der.len] = 0;
    qk_slice trailing = {tail, f->leaf_der.len + 1};
    assert_int_equal(qk_chain_new(&trailing, 1, &c), QK_ERR_TRAILING_DATA);
    free(tail);
    /* too many certificates */
    qk_slice many[QK_MAX_CHAIN_LEN + 1];
    for (size_t i = 0; i < QK_MAX_CHAIN_LEN + 1; i++)
        many[i] = f->chain[0];
    assert_int_equal(qk_chain_new(many, QK_MAX_CHAIN_LEN + 1, &c), QK_ERR_TOO_LARGE);
    /* no chain at signing time */
    uint8_t dg[32] = {0};
    qk_sign_request req = pe_request(dg);
    qk_buf out = {(uint8_t *)1, 1};
    assert_int_equal(qk_sign_chain(&req, qk_evp_sign_fn, tk_rsa_key(), NULL, &out),
                     QK_ERR_INVALID_ARG);
    assert_null(out.data);
    qk_chain_free(NULL);
}

/* A signature that does not match the leaf is refused with a decoded chain too. */
static void wrong_key_refused(void **state)
{
    fixture *f = *state;
    qk_chain *c = NULL;
    uint8_t dg[32];
    qk_buf out = {0};
    tk_random(dg, sizeof(dg));
    qk_sign_request req = pe_request(dg);
    assert_int_equal(qk_chain_new(f->chain, 2, &c), QK_OK);
    assert_int_not_equal(qk_sign_chain(&req, qk_evp_sign_fn, tk_rsa_key2(), c, &out), QK_OK);
    assert_null(out.data);
    qk_chain_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(same_bytes_as_slices),
        cmocka_unit_test(shared_by_threads),
        cmocka_unit_test(refuses_bad_chains),
        cmocka_unit_test(wrong_key_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
