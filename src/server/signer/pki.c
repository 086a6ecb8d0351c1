/* Development PKI generation (see pki.h). */
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "signer/pki.h"
#include "core/util.h"

#define PKI_MAX_FILE (256u * 1024u)
#define DAY_SECONDS (24L * 3600L)

typedef struct cert_spec {
    const char *cn;
    long days;
    const char *basic; /* basicConstraints */
    const char *key_usage;
    const char *eku; /* extendedKeyUsage, NULL for none */
    const char *san; /* subjectAltName, NULL for none */
} cert_spec;

static EVP_PKEY *gen_rsa(unsigned bits)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
}

static EVP_PKEY *gen_ec(const char *curve)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", curve);
}

/* SHA-384 for P-384 issuers, SHA-256 otherwise. */
static const EVP_MD *md_for(EVP_PKEY *issuer_key)
{
    return EVP_PKEY_get_bits(issuer_key) >= 384 && EVP_PKEY_is_a(issuer_key, "EC") ? EVP_sha384()
                                                                                   : EVP_sha256();
}

/* A positive serial with 126 random bits (CA/B asks for at least 64). */
static int set_random_serial(X509 *x)
{
    unsigned char b[16];
    BIGNUM *bn = NULL;
    ASN1_INTEGER *ai = NULL;
    int ok = 0;
    if (RAND_bytes(b, sizeof(b)) != 1)
        return 0;
    b[0] &= 0x7f;
    b[0] |= 0x40; /* non-zero leading byte: always 16 bytes of DER content */
    if ((bn = BN_bin2bn(b, sizeof(b), NULL)) != NULL && (ai = BN_to_ASN1_INTEGER(bn, NULL)) != NULL)
        ok = X509_set_serialNumber(x, ai);
    ASN1_INTEGER_free(ai);
    BN_free(bn);
    return ok;
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int ok;
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (ext == NULL)
        return 0;
    ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

/* Issues a certificate for `key` with `spec`, signed by issuer/issuer_key
 * (issuer NULL: self-signed with key). */
static qk_err issue(const cert_spec *spec, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key,
                    X509 **out)
{
    qk_err rc = QK_ERR_CRYPTO;
    X509 *x = NULL;
    X509_NAME *name = NULL;
    int ok;

    *out = NULL;
    ok = (x = X509_new()) != NULL && X509_set_version(x, X509_VERSION_3) == 1 &&
         set_random_serial(x) && (name = X509_NAME_new()) != NULL &&
         X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                                    (const unsigned char *)"Qwick Development", -1, -1, 0) == 1 &&
         X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)spec->cn, -1,
                                    -1, 0) == 1 &&
         X509_set_subject_name(x, name) == 1 &&
         X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name) == 1 &&
         /* An hour of slack for clocks that run behind the server's. */
         X509_gmtime_adj(X509_getm_notBefore(x), -3600) != NULL &&
         X509_time_adj_ex(X509_getm_notAfter(x), (int)spec->days, 0, NULL) != NULL &&
         X509_set_pubkey(x, key) == 1;
    if (ok && issuer == NULL) { /* self-signed */
        issuer = x;
        issuer_key = key;
    }
    ok = ok && add_ext(x, issuer, NID_basic_constraints, spec->basic) &&
         add_ext(x, issuer, NID_key_usage, spec->key_usage) &&
         add_ext(x, issuer, NID_subject_key_identifier, "hash") &&
         add_ext(x, issuer, NID_authority_key_identifier, "keyid:always") &&
         (spec->eku == NULL || add_ext(x, issuer, NID_ext_key_usage, spec->eku)) &&
         (spec->san == NULL || add_ext(x, issuer, NID_subject_alt_name, spec->san)) &&
         X509_sign(x, issuer_key, md_for(issuer_key)) > 0;
    if (!ok) {
        rc = qk_fail_ossl(QK_ERR_CRYPTO, "issue certificate '%s'", spec->cn);
        goto out;
    }
    *out = x;
    x = NULL;
    rc = QK_OK;
out:
    X509_NAME_free(name);
    X509_free(x);
    return rc;
}

/* BIO contents as an owned buffer. */
static qk_err bio_take(BIO *bio, qk_buf *out)
{
    char *p = NULL;
    long n = BIO_get_mem_data(bio, &p);
    out->data = NULL;
    out->len = 0;
    if (n <= 0)
        return qk_fail_ossl(QK_ERR_CRYPTO, "empty PEM output");
    out->data = xmalloc((size_t)n + 1);
    memcpy(out->data, p, (size_t)n);
    out->data[n] = '\0';
    out->len = (size_t)n;
    return QK_OK;
}

static qk_err certs_pem(X509 *const *certs, size_t n, qk_buf *out)
{
    qk_err rc = QK_ERR_CRYPTO;
    BIO *bio = BIO_new(BIO_s_mem());
    out->data = NULL;
    out->len = 0;
    if (bio == NULL)
        return qk_fail_ossl(QK_ERR_NOMEM, "BIO_new");
    for (size_t i = 0; i < n; i++)
        if (PEM_write_bio_X509(bio, certs[i]) != 1) {
            rc = qk_fail_ossl(QK_ERR_CRYPTO, "PEM_write_bio_X509");
            goto out;
        }
    rc = bio_take(bio, out);
out:
    BIO_free(bio);
    return rc;
}

/* PKCS#8 PEM of a private key. The BIO is secure-heap backed and cleansed on
 * free; the copy is the caller's to wipe. */
static qk_err key_pem(EVP_PKEY *key, qk_buf *out)
{
    qk_err rc;
    BIO *bio = BIO_new(BIO_s_secmem());
    out->data = NULL;
    out->len = 0;
    if (bio == NULL)
        return qk_fail_ossl(QK_ERR_NOMEM, "BIO_new");
    if (PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1)
        rc = qk_fail_ossl(QK_ERR_CRYPTO, "PEM_write_bio_PrivateKey");
    else
        rc = bio_take(bio, out);
    BIO_free(bio);
    return rc;
}

static qk_err write_file(const char *dir, const char *name, qk_slice data, mode_t mode)
{
    char *path = path_join(dir, name);
    qk_err rc = file_create_excl(path, data, mode);
    free(path);
    return rc;
}

static qk_err write_certs(const char *dir, const char *name, X509 *const *certs, size_t n)
{
    qk_buf pem = {NULL, 0};
    qk_err rc = certs_pem(certs, n, &pem);
    if (rc == QK_OK)
        rc = write_file(dir, name, (qk_slice){pem.data, pem.len}, 0644);
    qk_buf_free(&pem);
    return rc;
}

static qk_err append_der(X509 *x, qk_buf *chain)
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    if (n <= 0)
        return qk_fail_ossl(QK_ERR_CRYPTO, "i2d_X509");
    chain->data = xrealloc(chain->data, chain->len + (size_t)n);
    memcpy(chain->data + chain->len, der, (size_t)n);
    chain->len += (size_t)n;
    OPENSSL_free(der);
    return QK_OK;
}

static const cert_spec root_spec = {
    .cn = "Qwick Dev Root CA",
    .days = 3650,
    .basic = "critical,CA:TRUE,pathlen:0",
    .key_usage = "critical,keyCertSign,cRLSign",
};
static const cert_spec codesign_spec = {
    .cn = "Qwick Dev Code Signing",
    .days = 730,
    .basic = "critical,CA:FALSE",
    .key_usage = "critical,digitalSignature",
    .eku = "codeSigning",
};
static const cert_spec tsa_root_spec = {
    .cn = "Qwick Dev TSA Root",
    .days = 3650,
    .basic = "critical,CA:TRUE,pathlen:0",
    .key_usage = "critical,keyCertSign,cRLSign",
};
/* RFC 3161 §2.3: the TSA certificate has exactly one EKU, timeStamping, critical. */
static const cert_spec tsa_spec = {
    .cn = "Qwick Dev TSA",
    .days = 1825,
    .basic = "critical,CA:FALSE",
    .key_usage = "critical,digitalSignature",
    .eku = "critical,timeStamping",
};
static const cert_spec tls_ca_spec = {
    .cn = "Qwick Dev TLS CA",
    .days = 3650,
    .basic = "critical,CA:TRUE,pathlen:0",
    .key_usage = "critical,keyCertSign,cRLSign",
};
static const cert_spec tls_spec = {
    .cn = "localhost",
    .days = 730,
    .basic = "critical,CA:FALSE",
    .key_usage = "critical,digitalSignature",
    .eku = "serverAuth",
    .san = "IP:127.0.0.1,IP:::1,DNS:localhost",
};

qk_err pki_generate(const char *dir, const qk_keyring *kr, pki_codesign *out)
{
    qk_err rc = QK_ERR_CRYPTO;
    EVP_PKEY *root_key = NULL, *cs_key = NULL, *tsa_root_key = NULL, *tsa_key = NULL,
             *tls_ca_key = NULL, *tls_key = NULL;
    X509 *root = NULL, *cs = NULL, *tsa_root = NULL, *tsa = NULL, *tls_ca = NULL, *tls = NULL;
    qk_buf pem = {NULL, 0}, sealed = {NULL, 0};
    pki_codesign res = {{NULL, 0}, {NULL, 0}};

    memset(out, 0, sizeof(*out));
    if ((root_key = gen_ec("P-384")) == NULL || (tsa_root_key = gen_ec("P-384")) == NULL ||
        (tls_ca_key = gen_ec("P-256")) == NULL || (tls_key = gen_ec("P-256")) == NULL ||
        (cs_key = gen_rsa(3072)) == NULL || (tsa_key = gen_rsa(3072)) == NULL) {
        rc = qk_fail_ossl(QK_ERR_CRYPTO, "key generation");
        goto out;
    }
    if ((rc = issue(&root_spec, root_key, NULL, NULL, &root)) != QK_OK ||
        (rc = issue(&codesign_spec, cs_key, root, root_key, &cs)) != QK_OK ||
        (rc = issue(&tsa_root_spec, tsa_root_key, NULL, NULL, &tsa_root)) != QK_OK ||
        (rc = issue(&tsa_spec, tsa_key, tsa_root, tsa_root_key, &tsa)) != QK_OK ||
        (rc = issue(&tls_ca_spec, tls_ca_key, NULL, NULL, &tls_ca)) != QK_OK ||
        (rc = issue(&tls_spec, tls_key, tls_ca, tls_ca_key, &tls)) != QK_OK)
        goto out;

    X509 *const cs_chain[] = {cs, root}, *const tsa_chain[] = {tsa, tsa_root};
    if ((rc = write_certs(dir, PKI_ROOT_CA, &root, 1)) != QK_OK ||
        (rc = write_certs(dir, PKI_TSA_ROOT_CA, &tsa_root, 1)) != QK_OK ||
        (rc = write_certs(dir, PKI_TLS_CA, &tls_ca, 1)) != QK_OK ||
        (rc = write_certs(dir, PKI_TLS_CERT, &tls, 1)) != QK_OK ||
        (rc = write_certs(dir, PKI_TSA_CERT, tsa_chain, 2)) != QK_OK ||
        (rc = write_certs(dir, PKI_CODESIGN_CERT, cs_chain, 2)) != QK_OK)
        goto out;

    if ((rc = key_pem(tls_key, &pem)) != QK_OK ||
        (rc = write_file(dir, PKI_TLS_KEY, (qk_slice){pem.data, pem.len}, 0600)) != QK_OK)
        goto out;
    qk_buf_free(&pem);

    if ((rc = key_pem(tsa_key, &pem)) != QK_OK ||
        (rc = secrets_seal(kr, (qk_slice){pem.data, pem.len}, SECRETS_AAD_TSA_KEY, &sealed)) !=
            QK_OK ||
        (rc = write_file(dir, PKI_TSA_KEY_SEALED, (qk_slice){sealed.data, sealed.len}, 0600)) !=
            QK_OK)
        goto out;
    qk_buf_free(&pem);

    if ((rc = key_pem(cs_key, &res.key_pem)) != QK_OK ||
        (rc = append_der(cs, &res.chain_der)) != QK_OK ||
        (rc = append_der(root, &res.chain_der)) != QK_OK)
        goto out;
    *out = res;
    memset(&res, 0, sizeof(res));
    rc = QK_OK;
out:
    pki_codesign_clear(&res);
    qk_buf_free(&pem);
    qk_buf_free(&sealed);
    X509_free(root);
    X509_free(cs);
    X509_free(tsa_root);
    X509_free(tsa);
    X509_free(tls_ca);
    X509_free(tls);
    EVP_PKEY_free(root_key); /* the roots' keys are never written anywhere */
    EVP_PKEY_free(cs_key);
    EVP_PKEY_free(tsa_root_key);
    EVP_PKEY_free(tsa_key);
    EVP_PKEY_free(tls_ca_key);
    EVP_PKEY_free(tls_key);
    return rc;
}

void pki_codesign_clear(pki_codesign *c)
{
    if (c == NULL)
        return;
    qk_buf_free(&c->key_pem);
    qk_buf_free(&c->chain_der);
}

qk_err pki_parse_key_pem(qk_slice pem, EVP_PKEY **out)
{
    BIO *bio = NULL;
    qk_err rc = QK_OK;
    *out = NULL;
    if (pem.len > PKI_MAX_FILE)
        return qk_fail(QK_ERR_TOO_LARGE, "private key PEM larger than %u bytes", PKI_MAX_FILE);
    bio = BIO_new_mem_buf(pem.data, (int)pem.len);
    if (bio == NULL)
        return qk_fail_ossl(QK_ERR_NOMEM, "BIO_new_mem_buf");
    /* No passphrase callback: the key is protected by sealing, not by PEM
     * encryption, and a prompt must never appear in a server. */
    *out = PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *)"");
    if (*out == NULL)
        rc = qk_fail_ossl(QK_ERR_BAD_DER, "cannot parse the private key PEM");
    BIO_free(bio);
    return rc;
}

qk_err pki_load_tsa(const char *dir, const qk_keyring *kr, EVP_PKEY **key, X509 **cert,
                    STACK_OF(X509) * *chain)
{
    qk_err rc = QK_ERR_IO;
    char *path = NULL;
    qk_buf sealed = {NULL, 0}, pem = {NULL, 0}, certs = {NULL, 0};
    EVP_PKEY *k = NULL;
    X509 *leaf = NULL, *x = NULL;
    STACK_OF(X509) *rest = NULL;
    BIO *bio = NULL;

    *key = NULL;
    *cert = NULL;
    *chain = NULL;
    path = path_join(dir, PKI_TSA_KEY_SEALED);
    rc = file_read_all(path, PKI_MAX_FILE, &sealed);
    free(path);
    if (rc != QK_OK)
        goto out;
    if ((rc = secrets_open(kr, (qk_slice){sealed.data, sealed.len}, SECRETS_AAD_TSA_KEY, &pem)) !=
            QK_OK ||
        (rc = pki_parse_key_pem((qk_slice){pem.data, pem.len}, &k)) != QK_OK)
        goto out;

    path = path_join(dir, PKI_TSA_CERT);
    rc = file_read_all(path, PKI_MAX_FILE, &certs);
    free(path);
    if (rc != QK_OK)
        goto out;
    if ((bio = BIO_new_mem_buf(certs.data, (int)certs.len)) == NULL ||
        (rest = sk_X509_new_null()) == NULL) {
        rc = qk_fail_ossl(QK_ERR_NOMEM, "BIO/stack");
        goto out;
    }
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (leaf == NULL) {
            leaf = x;
        } else if (sk_X509_push(rest, x) <= 0) {
            X509_free(x);
            rc = qk_fail_ossl(QK_ERR_NOMEM, "sk_X509_push");
            goto out;
        }
    }
    ERR_clear_error(); /* the loop ends on "no start line" */
    if (leaf == NULL) {
        rc = qk_fail(QK_ERR_BAD_DER, "%s/%s holds no certificate", dir, PKI_TSA_CERT);
        goto out;
    }
    if (X509_check_private_key(leaf, k) != 1) {
        rc = qk_fail_ossl(QK_ERR_CRYPTO, "the TSA key does not match %s", PKI_TSA_CERT);
        goto out;
    }
    *key = k;
    *cert = leaf;
    *chain = rest;
    k = NULL;
    leaf = NULL;
    rest = NULL;
    rc = QK_OK;
out:
    BIO_free(bio);
    EVP_PKEY_free(k);
    X509_free(leaf);
    sk_X509_pop_free(rest, X509_free);
    qk_buf_free(&sealed);
    qk_buf_free(&pem);
    qk_buf_free(&certs);
    return rc;
}
