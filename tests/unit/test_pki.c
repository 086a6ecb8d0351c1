/* Development PKI and the local signer built from a sealed key. */
#include "tmpdir.h"

#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <cmocka.h>

#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "signer/pki.h"
#include "signer/signer.h"
#include "store/store.h"
#include "core/util.h"

typedef struct fixture {
    char *dir;
    qk_keyring *kr;
    pki_codesign cs;
} fixture;

/* One PKI for the whole group: RSA-3072 generation is the slow part. */
static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    char path[4096];
    f->dir = tmpdir_new();
    snprintf(path, sizeof(path), "%s/%s", f->dir, KEYRING_FILE);
    if (keyring_create(path) != QK_OK || keyring_load(path, &f->kr) != QK_OK ||
        pki_generate(f->dir, f->kr, &f->cs) != QK_OK)
        return -1;
    *state = f;
    return 0;
}

static int group_teardown(void **state)
{
    fixture *f = *state;
    pki_codesign_clear(&f->cs);
    keyring_free(f->kr);
    tmpdir_free(f->dir);
    free(f);
    return 0;
}

static X509 *load_cert(const char *dir, const char *name, int index)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *fp = fopen(path, "r");
    X509 *x = NULL;
    assert_non_null(fp);
    for (int i = 0; i <= index; i++) {
        X509_free(x);
        x = PEM_read_X509(fp, NULL, NULL, NULL);
        assert_non_null(x);
    }
    fclose(fp);
    return x;
}

static void test_files_and_modes(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *name;
        unsigned mode;
    } files[] = {
        {PKI_ROOT_CA, 0644},  {PKI_TSA_ROOT_CA, 0644},    {PKI_TLS_CA, 0644},
        {PKI_TLS_CERT, 0644}, {PKI_TSA_CERT, 0644},       {PKI_CODESIGN_CERT, 0644},
        {PKI_TLS_KEY, 0600},  {PKI_TSA_KEY_SEALED, 0600},
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", f->dir, files[i].name);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, files[i].mode);
    }
    /* No plaintext private key on disk except the TLS key. */
    DIR *d = opendir(f->dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[4096];
        qk_buf b = {NULL, 0};
        if (e->d_name[0] == '.' || strcmp(e->d_name, PKI_TLS_KEY) == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", f->dir, e->d_name);
        assert_int_equal(file_read_all(path, 1 << 20, &b), QK_OK);
        assert_null(memmem(b.data, b.len, "PRIVATE KEY", 11));
        qk_buf_free(&b);
    }
    closedir(d);
}

static int has_eku(X509 *x, int nid, int *critical)
{
    int crit = -1;
    EXTENDED_KEY_USAGE *eku = X509_get_ext_d2i(x, NID_ext_key_usage, &crit, NULL);
    int found = 0;
    for (int i = 0; eku != NULL && i < sk_ASN1_OBJECT_num(eku); i++)
        if (OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, i)) == nid)
            found = 1;
    EXTENDED_KEY_USAGE_free(eku);
    if (critical != NULL)
        *critical = crit;
    return found;
}

static void verify_chain(X509 *root, X509 *leaf, int purpose)
{
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509_STORE_add_cert(st, root);
    X509_STORE_CTX_init(ctx, st, leaf, NULL);
    if (purpose != 0)
        X509_STORE_CTX_set_purpose(ctx, purpose);
    assert_int_equal(X509_verify_cert(ctx), 1);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
}

static void test_certificates(void **state)
{
    fixture *f = *state;
    X509 *root = load_cert(f->dir, PKI_ROOT_CA, 0), *cs = load_cert(f->dir, PKI_CODESIGN_CERT, 0);
    X509 *troot = load_cert(f->dir, PKI_TSA_ROOT_CA, 0), *tsa = load_cert(f->dir, PKI_TSA_CERT, 0);
    X509 *lroot = load_cert(f->dir, PKI_TLS_CA, 0), *tls = load_cert(f->dir, PKI_TLS_CERT, 0);
    int crit = 0;

    assert_int_equal(X509_check_ca(root), 1);
    assert_int_equal(X509_check_ca(cs), 0);
    assert_true(has_eku(cs, NID_code_sign, &crit));
    assert_true(X509_get_key_usage(cs) & KU_DIGITAL_SIGNATURE);
    assert_true(has_eku(tsa, NID_time_stamp, &crit));
    assert_int_equal(crit, 1); /* RFC 3161: critical */
    assert_true(has_eku(tls, NID_server_auth, NULL));
    assert_int_equal(X509_check_host(tls, "localhost", 0, 0, NULL), 1);
    assert_int_equal(X509_check_ip_asc(tls, "127.0.0.1", 0), 1);
    assert_int_equal(EVP_PKEY_get_bits(X509_get0_pubkey(cs)), 3072);
    /* Random serials of at least 64 bits. */
    const ASN1_INTEGER *sn = X509_get0_serialNumber(cs);
    assert_true(ASN1_STRING_length(sn) >= 8);

    verify_chain(root, cs, 0);
    verify_chain(troot, tsa, X509_PURPOSE_TIMESTAMP_SIGN);
    verify_chain(lroot, tls, X509_PURPOSE_SSL_SERVER);

    /* The chain handed to the profile is leaf then root, in DER. */
    const unsigned char *p = f->cs.chain_der.data;
    X509 *d0 = d2i_X509(NULL, &p, (long)f->cs.chain_der.len);
    long rest = (long)(f->cs.chain_der.data + f->cs.chain_der.len - p);
    X509 *d1 = d2i_X509(NULL, &p, rest);
    assert_non_null(d0);
    assert_non_null(d1);
    assert_ptr_equal(p, f->cs.chain_der.data + f->cs.chain_der.len);
    assert_int_equal(X509_cmp(d0, cs), 0);
    assert_int_equal(X509_cmp(d1, root), 0);
    X509_free(d0);
    X509_free(d1);

    X509_free(root);
    X509_free(cs);
    X509_free(troot);
    X509_free(tsa);
    X509_free(lroot);
    X509_free(tls);
}

static void test_load_tsa(void **state)
{
    fixture *f = *state;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    STACK_OF(X509) *chain = NULL;
    assert_int_equal(pki_load_tsa(f->dir, f->kr, &key, &cert, &chain), QK_OK);
    assert_int_equal(X509_check_private_key(cert, key), 1);
    assert_int_equal(sk_X509_num(chain), 1);
    EVP_PKEY_free(key);
    X509_free(cert);
    sk_X509_pop_free(chain, X509_free);
}

static void check_signature(qk_signer *sg, qk_hash_alg alg, const EVP_MD *md)
{
    uint8_t digest[64];
    qk_buf sig = {NULL, 0};
    size_t n = qk_hash_size(alg);
    const unsigned char *p = sg->chain_der.data;
    X509 *leaf = d2i_X509(NULL, &p, (long)sg->chain_der.len);
    memset(digest, 0x5a, sizeof(digest));
    assert_int_equal(signer_sign_fn(sg, alg, digest, n, &sig), QK_OK);
    assert_int_equal(sig.len, 384);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(X509_get0_pubkey(leaf), NULL);
    assert_int_equal(EVP_PKEY_verify_init(ctx), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING), 1);
    assert_int_equal(EVP_PKEY_CTX_set_signature_md(ctx, md), 1);
    assert_int_equal(EVP_PKEY_verify(ctx, sig.data, sig.len, digest, n), 1);
    digest[0] ^= 1;
    assert_int_not_equal(EVP_PKEY_verify(ctx, sig.data, sig.len, digest, n), 1);
    EVP_PKEY_CTX_free(ctx);
    X509_free(leaf);
    qk_buf_free(&sig);
}

static void test_signer_from_sealed_profile(void **state)
{
    fixture *f = *state;
    qk_store *st = NULL;
    qk_signer *sg = NULL;
    qk_buf sealed = {NULL, 0};
    char aad[SECRETS_AAD_MAX];
    int64_t org = 0, org2 = 0, kid = 0, kid2 = 0, pid = 0;
    store_profile p;
    int found = 0;

    assert_int_equal(store_sqlite_open(f->dir, &st), QK_OK);
    assert_int_equal(STORE_CALL(st, org_create, "acme", NULL, &org), QK_OK);
    assert_int_equal(STORE_CALL(st, org_create, "other", NULL, &org2), QK_OK);
    secrets_aad_signing_key(aad, org);
    assert_int_equal(
        secrets_seal(f->kr, (qk_slice){f->cs.key_pem.data, f->cs.key_pem.len}, aad, &sealed),
        QK_OK);
    assert_int_equal(STORE_CALL(st, signing_key_create, org, "local-pem",
                                (qk_slice){sealed.data, sealed.len}, &kid),
                     QK_OK);
    assert_int_equal(STORE_CALL(st, profile_create, org, "default", "local", kid,
                                (qk_slice){f->cs.chain_der.data, f->cs.chain_der.len}, NULL, NULL,
                                &pid),
                     QK_OK);
    assert_int_equal(STORE_CALL(st, profile_get, org, "default", &p, &found), QK_OK);
    assert_int_equal(signer_open_profile(st, f->kr, &p, &sg), QK_OK);
    check_signature(sg, QK_HASH_SHA256, EVP_sha256());
    check_signature(sg, QK_HASH_SHA384, EVP_sha384());
    check_signature(sg, QK_HASH_SHA512, EVP_sha512());
    signer_free(sg);
    sg = NULL;
    store_profile_clear(&p);

    /* The same blob copied into another org's row does not open there. */
    assert_int_equal(STORE_CALL(st, signing_key_create, org2, "local-pem",
                                (qk_slice){sealed.data, sealed.len}, &kid2),
                     QK_OK);
    assert_int_equal(STORE_CALL(st, profile_create, org2, "copied", "local", kid2,
                                (qk_slice){f->cs.chain_der.data, f->cs.chain_der.len}, NULL, NULL,
                                &pid),
                     QK_OK);
    assert_int_equal(STORE_CALL(st, profile_get, org2, "copied", &p, &found), QK_OK);
    assert_int_equal(signer_open_profile(st, f->kr, &p, &sg), QK_ERR_CRYPTO);
    assert_null(sg);
    store_profile_clear(&p);

    qk_buf_free(&sealed);
    st->ops->close(st);
}

static void test_signer_rejects_mismatched_chain(void **state)
{
    fixture *f = *state;
    qk_signer *sg = NULL;
    X509 *tls = load_cert(f->dir, PKI_TLS_CERT, 0);
    unsigned char *der = NULL;
    int n = i2d_X509(tls, &der);
    assert_int_equal(signer_local_new((qk_slice){f->cs.key_pem.data, f->cs.key_pem.len},
                                      (qk_slice){der, (size_t)n}, &sg),
                     QK_ERR_INVALID_ARG);
    assert_null(sg);
    assert_int_equal(signer_local_new((qk_slice){(const uint8_t *)"garbage", 7},
                                      (qk_slice){f->cs.chain_der.data, f->cs.chain_der.len}, &sg),
                     QK_ERR_BAD_DER);
    OPENSSL_free(der);
    X509_free(tls);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_files_and_modes),
        cmocka_unit_test(test_certificates),
        cmocka_unit_test(test_load_tsa),
        cmocka_unit_test(test_signer_from_sealed_profile),
        cmocka_unit_test(test_signer_rejects_mismatched_chain),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
