/* Azure Trusted Signing results and settings, and profile import:
 * az_op_parse (status bodies), az_chain_for_signature (finding the leaf of a
 * returned PKCS#7 by the signature and ordering its issuers),
 * azure_cfg_import/azure_cfg_parse (the operator's "azure" object) and
 * profile_import_json (local PEM, encrypted PEM and PKCS#12, azure). The PKI
 * is made at test time with the OpenSSL API: root -> intermediate -> leaf
 * (codeSigning), plus an unrelated self-signed certificate. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/pkcs7.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "signer/azure/azure_cfg.h"
#include "signer/azure/azure_result.h"
#include "common/b64.h"
#include "signer/profile.h"
#include "qwick/authenticode.h"

/* ---- test PKI ------------------------------------------------------------ */

typedef struct pki {
    EVP_PKEY *root_key, *int_key, *leaf_key, *other_key;
    X509 *root, *inter, *leaf, *other;
    X509 *leaf_noeku;   /* the leaf's key, issued by root, without codeSigning */
    X509 *leaf_expired; /* the leaf's key, issued by root, expired an hour ago */
    uint8_t digest[32]; /* SHA-256 of "qwick" */
    uint8_t sig[512];   /* the leaf's PKCS#1 v1.5 signature over digest */
    size_t sig_len;
} pki;

static pki P;

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (e == NULL || !X509_add_ext(x, e, -1))
        abort();
    X509_EXTENSION_free(e);
}

/* A certificate for `key` named CN=cn, signed by issuer_key (self-signed
 * when issuer is NULL). eku: an extendedKeyUsage value or NULL. */
static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, int ca,
                       const char *eku, long not_after_secs)
{
    static long serial = 1;
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    if (x == NULL || name == NULL ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0))
        abort();
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -7200);
    X509_gmtime_adj(X509_getm_notAfter(x), not_after_secs);
    X509_set_subject_name(x, name);
    X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name);
    X509_set_pubkey(x, key);
    X509 *iss = issuer != NULL ? issuer : x;
    add_ext(x, iss, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    add_ext(x, iss, NID_key_usage, ca ? "critical,keyCertSign" : "critical,digitalSignature");
    add_ext(x, iss, NID_subject_key_identifier, "hash");
    if (issuer != NULL)
        add_ext(x, iss, NID_authority_key_identifier, "keyid:always");
    if (eku != NULL)
        add_ext(x, iss, NID_ext_key_usage, eku);
    if (X509_sign(x, issuer_key, EVP_sha256()) <= 0)
        abort();
    X509_NAME_free(name);
    return x;
}

/* PKCS#1 v1.5 signature with DigestInfo, as Azure returns it. */
static size_t sign_digest(EVP_PKEY *key, const uint8_t *digest, size_t dlen, uint8_t *sig,
                          size_t cap)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(key, NULL);
    size_t len = cap;
    if (ctx == NULL || EVP_PKEY_sign_init(ctx) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) != 1 ||
        EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) != 1 ||
        EVP_PKEY_sign(ctx, sig, &len, digest, dlen) != 1)
        abort();
    EVP_PKEY_CTX_free(ctx);
    return len;
}

static EVP_PKEY *rsa_key(void)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    if (k == NULL)
        abort();
    return k;
}

static int pki_setup(void **state)
{
    (void)state;
    unsigned int dlen = 0;
    P.root_key = rsa_key();
    P.int_key = rsa_key();
    P.leaf_key = rsa_key();
    P.other_key = rsa_key();
    P.root = make_cert("Test Root", P.root_key, NULL, P.root_key, 1, NULL, 86400);
    P.inter = make_cert("Test Intermediate", P.int_key, P.root, P.root_key, 1, NULL, 86400);
    P.leaf = make_cert("Test Leaf", P.leaf_key, P.inter, P.int_key, 0, "codeSigning", 86400);
    P.other = make_cert("Stranger", P.other_key, NULL, P.other_key, 1, NULL, 86400);
    P.leaf_noeku = make_cert("No EKU", P.leaf_key, P.root, P.root_key, 0, "serverAuth", 86400);
    P.leaf_expired = make_cert("Expired", P.leaf_key, P.root, P.root_key, 0, "codeSigning", -3600);
    if (!EVP_Digest("qwick", 5, P.digest, &dlen, EVP_sha256(), NULL) || dlen != 32)
        abort();
    P.sig_len = sign_digest(P.leaf_key, P.digest, sizeof(P.digest), P.sig, sizeof(P.sig));
    return 0;
}

static int pki_teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(P.root_key);
    EVP_PKEY_free(P.int_key);
    EVP_PKEY_free(P.leaf_key);
    EVP_PKEY_free(P.other_key);
    X509_free(P.root);
    X509_free(P.inter);
    X509_free(P.leaf);
    X509_free(P.other);
    X509_free(P.leaf_noeku);
    X509_free(P.leaf_expired);
    return 0;
}

/* ---- encoders -------------------------------------------------------------- */

static qk_buf der_of(X509 *x)
{
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    assert_true(len > 0);
    return (qk_buf){der, (size_t)len};
}

/* DER of the certificates, back to back (the shape of a chain_der). */
static qk_buf concat_der(X509 *const *xs, size_t n)
{
    qk_buf out = {NULL, 0};
    for (size_t i = 0; i < n; i++) {
        qk_buf d = der_of(xs[i]);
        out.data = realloc(out.data, out.len + d.len);
        assert_non_null(out.data);
        memcpy(out.data + out.len, d.data, d.len);
        out.len += d.len;
        OPENSSL_free(d.data);
    }
    return out;
}

/* A certs-only PKCS#7 SignedData (what Azure's signingCertificate holds). */
static qk_buf p7_of(X509 *const *xs, size_t n)
{
    PKCS7 *p7 = PKCS7_new();
    unsigned char *der = NULL;
    assert_non_null(p7);
    assert_int_equal(PKCS7_set_type(p7, NID_pkcs7_signed), 1);
    assert_int_equal(PKCS7_content_new(p7, NID_pkcs7_data), 1);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(PKCS7_add_certificate(p7, xs[i]), 1);
    int len = i2d_PKCS7(p7, &der);
    assert_true(len > 0);
    PKCS7_free(p7);
    return (qk_buf){der, (size_t)len};
}

static char *b64_of(const uint8_t *p, size_t n)
{
    char *s = malloc(B64_ENCODED_SIZE(n));
    assert_non_null(s);
    b64_encode(p, n, s);
    return s;
}

/* Inserts "\r\n" every 64 characters (the inner text as some clients wrap it). */
static char *wrap64(const char *s)
{
    size_t n = strlen(s), k = 0;
    char *out = malloc(n + 2 * (n / 64 + 1) + 1);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && i % 64 == 0) {
            out[k++] = '\r';
            out[k++] = '\n';
        }
        out[k++] = s[i];
    }
    out[k] = '\0';
    return out;
}

/* signingCertificate: base64 of the base64 text of the PKCS#7. */
static char *cert_field(qk_buf p7, int wrapped)
{
    char *inner = b64_of(p7.data, p7.len);
    if (wrapped) {
        char *w = wrap64(inner);
        free(inner);
        inner = w;
    }
    char *outer = b64_of((const uint8_t *)inner, strlen(inner));
    free(inner);
    return outer;
}

static char *pem_of_cert(X509 *x)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *p = NULL;
    assert_true(bio != NULL && PEM_write_bio_X509(bio, x));
    long n = BIO_get_mem_data(bio, &p);
    char *s = strndup(p, (size_t)n);
    BIO_free(bio);
    return s;
}

/* PKCS#8 PEM of a private key, encrypted with AES-256-CBC when pass != NULL. */
static char *pem_of_key(EVP_PKEY *k, const char *pass)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *p = NULL;
    assert_non_null(bio);
    assert_int_equal(PEM_write_bio_PKCS8PrivateKey(bio, k, pass ? EVP_aes_256_cbc() : NULL, NULL, 0,
                                                   NULL, (void *)pass),
                     1);
    long n = BIO_get_mem_data(bio, &p);
    char *s = strndup(p, (size_t)n);
    BIO_free(bio);
    return s;
}

static json_t *parse_json(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &e);
    if (j == NULL)
        fail_msg("bad test JSON (%s): %s", e.text, text);
    return j;
}

/* ---- az_op_parse ------------------------------------------------------------ */

static qk_err op_parse_str(const char *body, az_op *op)
{
    return az_op_parse((const uint8_t *)body, strlen(body), op);
}

static void expect_state(const char *body, az_op_state want)
{
    az_op op;
    if (op_parse_str(body, &op) != QK_OK)
        fail_msg("refused (%s): %s", qk_error_detail(), body);
    if (op.state != want)
        fail_msg("state %d, want %d: %s", op.state, want, body);
    az_op_clear(&op);
}

static void expect_op_refused(const char *body)
{
    az_op op;
    if (op_parse_str(body, &op) == QK_OK)
        fail_msg("accepted (state %d): %s", op.state, body);
    assert_null(op.signature.data);
    assert_null(op.pkcs7_der.data);
    assert_int_equal(op.state, AZ_OP_PENDING);
}

static void op_pending_states(void **state)
{
    (void)state;
    expect_state("{\"id\":\"a\",\"status\":\"InProgress\"}", AZ_OP_PENDING);
    expect_state("{\"id\":\"a\",\"status\":\" inprogress \"}", AZ_OP_PENDING);
    expect_state("{\"id\":\"a\",\"status\":\"RUNNING\"}", AZ_OP_PENDING);
    expect_state("{\"id\":\"a\",\"status\":\"NotStarted\"}", AZ_OP_PENDING);
    expect_state("{\"id\":\"a\",\"status\":\"Not Started\"}", AZ_OP_PENDING);
    expect_state("{\"id\":\"a\",\"result\":{\"status\":\"running\"}}", AZ_OP_PENDING);
    /* Not one of the three: a failure, with the status as the reason. */
    expect_state("{\"status\":\"InProgres\"}", AZ_OP_FAILED);
    expect_state("{\"status\":\"Run\"}", AZ_OP_FAILED);
}

/* A Succeeded body with the leaf's signature and a PKCS#7 of the chain. */
static char *succeeded_body(int nested, int wrapped, const char *sig_override)
{
    X509 *xs[] = {P.root, P.leaf, P.inter};
    qk_buf p7 = p7_of(xs, 3);
    char *cert = cert_field(p7, wrapped);
    char *sig = sig_override ? strdup(sig_override) : b64_of(P.sig, P.sig_len);
    json_t *payload = json_pack("{s:s, s:s}", "signature", sig, "signingCertificate", cert);
    json_t *doc = nested ? json_pack("{s:s, s:s, s:o}", "id", "op-1", "status", "Succeeded",
                                     "result", payload)
                         : json_pack("{s:s, s:s}", "id", "op-1", "status", "Succeeded");
    assert_non_null(doc);
    if (!nested) {
        json_object_update(doc, payload);
        json_decref(payload);
    }
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    free(sig);
    free(cert);
    OPENSSL_free(p7.data);
    return text;
}

static void expect_succeeded(const char *body)
{
    X509 *xs[] = {P.root, P.leaf, P.inter};
    qk_buf p7 = p7_of(xs, 3);
    az_op op;
    if (op_parse_str(body, &op) != QK_OK)
        fail_msg("refused: %s", qk_error_detail());
    assert_int_equal(op.state, AZ_OP_SUCCEEDED);
    assert_int_equal(op.signature.len, P.sig_len);
    assert_memory_equal(op.signature.data, P.sig, P.sig_len);
    assert_int_equal(op.pkcs7_der.len, p7.len);
    assert_memory_equal(op.pkcs7_der.data, p7.data, p7.len);
    az_op_clear(&op);
    assert_null(op.signature.data);
    OPENSSL_free(p7.data);
}

static void op_succeeded_flat_and_nested(void **state)
{
    (void)state;
    char *flat = succeeded_body(0, 0, NULL), *nested = succeeded_body(1, 0, NULL);
    char *wrapped = succeeded_body(1, 1, NULL);
    expect_succeeded(flat);
    expect_succeeded(nested);
    expect_succeeded(wrapped); /* inner base64 with CRLF line breaks */
    free(flat);
    free(nested);
    free(wrapped);
    /* Status under "result" too, and written oddly. */
    char *b64sig = b64_of(P.sig, P.sig_len);
    X509 *xs[] = {P.leaf};
    qk_buf p7 = p7_of(xs, 1);
    char *cert = cert_field(p7, 0);
    json_t *doc = json_pack("{s:{s:s, s:s, s:s}}", "result", "status", " SUCCEEDED ", "signature",
                            b64sig, "signingCertificate", cert);
    char *text = json_dumps(doc, JSON_COMPACT);
    expect_state(text, AZ_OP_SUCCEEDED);
    free(text);
    json_decref(doc);
    free(cert);
    free(b64sig);
    OPENSSL_free(p7.data);
}

static void op_failed_reason(void **state)
{
    (void)state;
    az_op op;
    assert_int_equal(op_parse_str("{\"status\":\"Failed\",\"error\":{\"code\":\"SigningFailed\","
                                  "\"message\":\"profile\\ndisabled\"}}",
                                  &op),
                     QK_OK);
    assert_int_equal(op.state, AZ_OP_FAILED);
    assert_non_null(strstr(op.error, "Failed"));
    assert_non_null(strstr(op.error, "SigningFailed"));
    assert_non_null(strstr(op.error, "profile disabled")); /* controls made spaces */
    assert_null(op.signature.data);
    az_op_clear(&op);

    /* The error object under "result". */
    assert_int_equal(op_parse_str("{\"result\":{\"status\":\"Failed\",\"error\":"
                                  "{\"code\":\"Quota\",\"message\":\"too many\"}}}",
                                  &op),
                     QK_OK);
    assert_int_equal(op.state, AZ_OP_FAILED);
    assert_non_null(strstr(op.error, "Quota"));
    assert_non_null(strstr(op.error, "too many"));
    az_op_clear(&op);

    /* Unknown statuses fail, naming the status; no error object is fine. */
    assert_int_equal(op_parse_str("{\"status\":\"Cancelled\"}", &op), QK_OK);
    assert_int_equal(op.state, AZ_OP_FAILED);
    assert_non_null(strstr(op.error, "Cancelled"));
    az_op_clear(&op);
    expect_state("{\"status\":\"TimedOut\",\"error\":\"not an object\"}", AZ_OP_FAILED);
}

static void op_refusals(void **state)
{
    (void)state;
    char *b;
    expect_op_refused("");
    expect_op_refused("not json");
    expect_op_refused("[\"status\",\"Succeeded\"]");
    expect_op_refused("{\"status\":\"Running\"");
    expect_op_refused("{\"status\":\"Running\",\"status\":\"Failed\"}");
    expect_op_refused("{\"id\":\"a\"}");
    expect_op_refused("{\"status\":42}");
    expect_op_refused("{\"status\":null,\"result\":{}}");
    expect_op_refused("{\"status\":\"Succeeded\"}");
    expect_op_refused("{\"status\":\"Succeeded\",\"result\":{\"signature\":\"AAAA\"}}");
    expect_op_refused(
        "{\"status\":\"Succeeded\",\"signature\":1,\"signingCertificate\":\"QUFBQQ==\"}");
    expect_op_refused(
        "{\"status\":\"Succeeded\",\"signature\":\"\",\"signingCertificate\":\"QUFBQQ==\"}");
    /* Bad base64 in the signature, the outer and the inner certificate text. */
    expect_op_refused(b = succeeded_body(0, 0, "not base64!"));
    free(b);
    expect_op_refused(b = succeeded_body(1, 0, "AAA"));
    free(b);
    expect_op_refused(
        "{\"status\":\"Succeeded\",\"signature\":\"AAAA\",\"signingCertificate\":\"!!!!\"}");
    /* "QUFB IA==" is base64 of "AAA " : the inner text holds a space. */
    expect_op_refused("{\"status\":\"Succeeded\",\"signature\":\"AAAA\","
                      "\"signingCertificate\":\"QUFBIA==\"}");
    /* Inner base64 with unpadded length: "AAA" -> "QUFB". */
    expect_op_refused("{\"status\":\"Succeeded\",\"signature\":\"AAAA\","
                      "\"signingCertificate\":\"QUFB\"}");
    /* A signature over QK_MAX_SIGNATURE_SIZE bytes. */
    uint8_t big[QK_MAX_SIGNATURE_SIZE + 3];
    memset(big, 0x5a, sizeof(big));
    char *bigsig = b64_of(big, sizeof(big));
    expect_op_refused(b = succeeded_body(0, 0, bigsig));
    free(b);
    free(bigsig);
}

/* ---- az_chain_for_signature ------------------------------------------------- */

static qk_err chain_for(qk_buf p7, const uint8_t *digest, const uint8_t *sig, size_t sig_len,
                        qk_buf *chain)
{
    return az_chain_for_signature((qk_slice){p7.data, p7.len}, QK_HASH_SHA256, digest, 32,
                                  (qk_slice){sig, sig_len}, chain);
}

static void expect_chain(X509 *const *in, size_t n_in, X509 *const *want, size_t n_want)
{
    qk_buf p7 = p7_of(in, n_in), chain = {NULL, 0};
    qk_buf expect = concat_der(want, n_want);
    if (chain_for(p7, P.digest, P.sig, P.sig_len, &chain) != QK_OK)
        fail_msg("refused: %s", qk_error_detail());
    assert_int_equal(chain.len, expect.len);
    assert_memory_equal(chain.data, expect.data, expect.len);
    qk_buf_free(&chain);
    free(expect.data);
    OPENSSL_free(p7.data);
}

static void chain_ordered_from_shuffled(void **state)
{
    (void)state;
    X509 *want[] = {P.leaf, P.inter, P.root};
    X509 *shuffled[] = {P.root, P.leaf, P.inter};
    X509 *reversed[] = {P.root, P.inter, P.leaf};
    X509 *with_stranger[] = {P.other, P.inter, P.root, P.leaf};
    X509 *no_root[] = {P.inter, P.leaf};
    X509 *leaf_only[] = {P.leaf};
    expect_chain(shuffled, 3, want, 3);
    expect_chain(reversed, 3, want, 3);
    expect_chain(with_stranger, 4, want, 3); /* the stranger is dropped */
    expect_chain(no_root, 2, want, 2);
    expect_chain(leaf_only, 1, want, 1);
    /* The leaf's issuer missing: the chain stops at the leaf. */
    X509 *gap[] = {P.root, P.leaf, P.other};
    expect_chain(gap, 3, want, 1);
}

static void expect_chain_refused(qk_buf p7, const uint8_t *digest, const uint8_t *sig,
                                 size_t sig_len, qk_err want)
{
    qk_buf chain = {(uint8_t *)"x", 1};
    qk_err rc = chain_for(p7, digest, sig, sig_len, &chain);
    if (rc != want)
        fail_msg("got %d (%s), want %d", rc, qk_error_detail(), want);
    assert_null(chain.data);
    assert_int_equal(chain.len, 0);
}

static void chain_refusals(void **state)
{
    (void)state;
    X509 *xs[] = {P.root, P.leaf, P.inter};
    qk_buf p7 = p7_of(xs, 3);
    uint8_t other_sig[512], digest[32], sig[512];

    /* Signed by a key whose certificate is not in the PKCS#7. */
    size_t olen = sign_digest(P.other_key, P.digest, 32, other_sig, sizeof(other_sig));
    expect_chain_refused(p7, P.digest, other_sig, olen, QK_ERR_CRYPTO);
    /* The digest or the signature changed by one bit. */
    memcpy(digest, P.digest, 32);
    digest[31] ^= 0x01;
    expect_chain_refused(p7, digest, P.sig, P.sig_len, QK_ERR_CRYPTO);
    memcpy(sig, P.sig, P.sig_len);
    sig[P.sig_len / 2] ^= 0x80;
    expect_chain_refused(p7, P.digest, sig, P.sig_len, QK_ERR_CRYPTO);
    expect_chain_refused(p7, P.digest, P.sig, P.sig_len - 1, QK_ERR_CRYPTO);
    expect_chain_refused(p7, P.digest, P.sig, 0, QK_ERR_CRYPTO);

    /* A digest of the wrong size for its algorithm. */
    qk_buf chain = {NULL, 0};
    assert_int_equal(az_chain_for_signature((qk_slice){p7.data, p7.len}, QK_HASH_SHA384, P.digest,
                                            32, (qk_slice){P.sig, P.sig_len}, &chain),
                     QK_ERR_INVALID_ARG);
    assert_null(chain.data);

    /* Trailing bytes, truncation, nothing at all. */
    qk_buf longer = {malloc(p7.len + 1), p7.len + 1};
    assert_non_null(longer.data);
    memcpy(longer.data, p7.data, p7.len);
    longer.data[p7.len] = 0;
    expect_chain_refused(longer, P.digest, P.sig, P.sig_len, QK_ERR_BAD_DER);
    free(longer.data);
    expect_chain_refused((qk_buf){p7.data, p7.len - 1}, P.digest, P.sig, P.sig_len, QK_ERR_BAD_DER);
    expect_chain_refused((qk_buf){p7.data, 0}, P.digest, P.sig, P.sig_len, QK_ERR_BAD_DER);

    /* A PKCS#7 without certificates. */
    qk_buf empty = p7_of(NULL, 0);
    expect_chain_refused(empty, P.digest, P.sig, P.sig_len, QK_ERR_BAD_DER);
    OPENSSL_free(empty.data);

    /* Two certificates with the leaf's key: ambiguous, refused. */
    X509 *twins[] = {P.leaf, P.leaf_noeku, P.root};
    qk_buf t = p7_of(twins, 3);
    expect_chain_refused(t, P.digest, P.sig, P.sig_len, QK_ERR_BAD_DER);
    OPENSSL_free(t.data);
    OPENSSL_free(p7.data);
}

/* ---- azure_cfg_import / azure_cfg_parse --------------------------------- */

#define AZ_BASE                                                                                    \
    "\"endpoint\":\"https://eus.codesigning.azure.net/\",\"account\":\"acct\","                    \
    "\"certificateProfile\":\"prof\",\"tenantId\":\"tenant-1\",\"clientId\":\"client-1\","         \
    "\"applicationObjectId\":\"obj-1\""

static qk_err cfg_import_str(const char *text, json_t **pub, json_t **sec)
{
    json_t *in = parse_json(text);
    qk_err rc = azure_cfg_import(in, NULL, pub, sec);
    json_decref(in);
    return rc;
}

static void cfg_full_valid(void **state)
{
    (void)state;
    json_t *pub = NULL, *sec = NULL;
    assert_int_equal(
        cfg_import_str("{" AZ_BASE ",\"graph\":{\"refreshToken\":\"rt-SECRET\"}}", &pub, &sec),
        QK_OK);
    json_t *want = parse_json(
        "{\"endpoint\":\"https://eus.codesigning.azure.net\",\"account\":\"acct\","
        "\"certificateProfile\":\"prof\",\"tenantId\":\"tenant-1\",\"clientId\":\"client-1\","
        "\"applicationObjectId\":\"obj-1\",\"authorityUrl\":\"" AZURE_DEFAULT_AUTHORITY "\","
        "\"graphUrl\":\"" AZURE_DEFAULT_GRAPH "\","
        "\"graph\":{\"clientId\":\"client-1\",\"grant\":\"refresh_token\"}}");
    json_object_set_new(want, "credentials",
                        json_pack("{s:I, s:I, s:I, s:I}", "ttlSeconds",
                                  (json_int_t)AZURE_DEFAULT_TTL, "maxSecrets",
                                  (json_int_t)AZURE_DEFAULT_MAX_SECRETS, "lockTimeoutSeconds",
                                  (json_int_t)AZURE_DEFAULT_LOCK_TIMEOUT, "maxConcurrent",
                                  (json_int_t)AZURE_DEFAULT_MAX_CONCURRENT));
    if (!json_equal(pub, want)) {
        char *got = json_dumps(pub, JSON_SORT_KEYS);
        fail_msg("public form: %s", got);
    }
    char *text = json_dumps(pub, JSON_COMPACT);
    assert_null(strstr(text, "rt-SECRET"));
    assert_null(strstr(text, "refreshToken"));
    free(text);
    assert_int_equal(json_object_size(sec), 1);
    assert_string_equal(json_string_value(json_object_get(sec, "refreshToken")), "rt-SECRET");
    json_decref(want);
    json_decref(pub);
    json_decref(sec);
}

static void cfg_client_credentials_and_options(void **state)
{
    (void)state;
    json_t *pub = NULL, *sec = NULL;
    char *ca = pem_of_cert(P.root);
    json_t *in = parse_json("{" AZ_BASE ",\"authorityUrl\":\"https://login.example/tenant//\","
                            "\"graph\":{\"clientId\":\"manager\",\"clientSecret\":\"cs-SECRET\"},"
                            "\"credentials\":{\"ttlSeconds\":600,\"maxSecrets\":5,"
                            "\"lockTimeoutSeconds\":10,\"maxConcurrent\":8}}");
    json_object_set_new(in, "caPem", json_string(ca));
    if (azure_cfg_import(in, NULL, &pub, &sec) != QK_OK)
        fail_msg("refused: %s", qk_error_detail());
    assert_string_equal(json_string_value(json_object_get(pub, "authorityUrl")),
                        "https://login.example/tenant");
    assert_string_equal(json_string_value(json_object_get(pub, "caPem")), ca);
    json_t *g = json_object_get(pub, "graph");
    assert_string_equal(json_string_value(json_object_get(g, "clientId")), "manager");
    assert_string_equal(json_string_value(json_object_get(g, "grant")), "client_credentials");
    assert_null(json_object_get(g, "clientSecret"));
    assert_string_equal(json_string_value(json_object_get(sec, "clientSecret")), "cs-SECRET");
    json_t *c = json_object_get(pub, "credentials");
    assert_int_equal(json_integer_value(json_object_get(c, "ttlSeconds")), 600);
    assert_int_equal(json_integer_value(json_object_get(c, "maxConcurrent")), 8);

    azure_cfg cfg;
    assert_int_equal(azure_cfg_parse(pub, &cfg), QK_OK);
    assert_int_equal(cfg.grant, AZ_GRANT_CLIENT_CREDENTIALS);
    assert_string_equal(cfg.graph_client_id, "manager");
    assert_string_equal(cfg.ca_pem, ca);
    assert_int_equal(cfg.max_secrets, 5);
    assert_int_equal(cfg.lock_timeout_seconds, 10);
    azure_cfg_clear(&cfg);
    assert_null(cfg.endpoint);
    json_decref(in);
    json_decref(pub);
    json_decref(sec);
    free(ca);
}

/* The valid config with `key` set to the JSON `value` (removed when NULL),
 * expected refused with `detail_has` in qk_error_detail(). */
static void cfg_refused_with(const char *key, const char *value, const char *detail_has)
{
    json_t *in = parse_json("{" AZ_BASE ",\"graph\":{\"refreshToken\":\"rt\"}}");
    json_t *pub = (json_t *)1, *sec = (json_t *)1;
    if (value == NULL) {
        json_object_del(in, key);
    } else {
        json_t *v = json_loads(value, JSON_DECODE_ANY, NULL);
        assert_non_null(v);
        json_object_set_new(in, key, v);
    }
    if (azure_cfg_import(in, NULL, &pub, &sec) == QK_OK)
        fail_msg("accepted %s = %s", key, value ? value : "(absent)");
    assert_null(pub);
    assert_null(sec);
    if (strstr(qk_error_detail(), detail_has) == NULL)
        fail_msg("%s = %s: detail \"%s\" lacks \"%s\"", key, value ? value : "(absent)",
                 qk_error_detail(), detail_has);
    json_decref(in);
}

static void cfg_refusals(void **state)
{
    (void)state;
    char v[128];
    /* URLs: https only, a host, no user info, query or fragment. */
    cfg_refused_with("endpoint", "\"http://eus.codesigning.azure.net\"", "endpoint");
    cfg_refused_with("endpoint", "\"https://\"", "endpoint");
    cfg_refused_with("endpoint", "\"https://e.example/?x=1\"", "endpoint");
    cfg_refused_with("authorityUrl", "\"http://login.example\"", "authorityUrl");
    cfg_refused_with("graphUrl", "\"https://u:p@graph.example\"", "graphUrl");
    cfg_refused_with("graphUrl", "\"https:///x\"", "graphUrl");
    cfg_refused_with("graphUrl", "\"https://graph.example#f\"", "graphUrl");
    /* Unknown keys, at each level. */
    cfg_refused_with("surprise", "1", "surprise");
    cfg_refused_with("graph", "{\"refreshToken\":\"rt\",\"scope\":\"x\"}", "scope");
    cfg_refused_with("credentials", "{\"ttl\":5}", "ttl");
    /* The Graph grant: exactly one secret; a manager app with clientSecret. */
    cfg_refused_with("graph",
                     "{\"refreshToken\":\"rt\",\"clientSecret\":\"cs\",\"clientId\":\"m\"}",
                     "refreshToken");
    cfg_refused_with("graph", "{\"clientId\":\"m\"}", "graph");
    cfg_refused_with("graph", "{\"refreshToken\":\"\"}", "refreshToken");
    cfg_refused_with("graph", "{\"refreshToken\":\"has space\"}", "refreshToken");
    cfg_refused_with("graph", "{\"clientSecret\":\"cs\"}", "clientId");
    cfg_refused_with("graph", NULL, "graph");
    cfg_refused_with("graph", "\"rt\"", "graph");
    cfg_refused_with("graph", "null", "graph");
    /* Credentials limits. */
    snprintf(v, sizeof(v), "{\"ttlSeconds\":%u}", AZURE_MIN_TTL - 1);
    cfg_refused_with("credentials", v, "ttlSeconds");
    snprintf(v, sizeof(v), "{\"ttlSeconds\":%u}", AZURE_MAX_TTL + 1);
    cfg_refused_with("credentials", v, "ttlSeconds");
    cfg_refused_with("credentials", "{\"ttlSeconds\":\"300\"}", "ttlSeconds");
    cfg_refused_with("credentials", "{\"ttlSeconds\":300.0}", "ttlSeconds");
    cfg_refused_with("credentials", "{\"maxSecrets\":0}", "maxSecrets");
    snprintf(v, sizeof(v), "{\"maxSecrets\":%u}", AZURE_MAX_SECRETS_LIMIT + 1);
    cfg_refused_with("credentials", v, "maxSecrets");
    cfg_refused_with("credentials", "{\"maxConcurrent\":-1}", "maxConcurrent");
    cfg_refused_with("credentials", "[]", "credentials");
    /* Trust anchors: no files without a base directory; inline PEM only. */
    cfg_refused_with("caFile", "\"ca.pem\"", "caFile");
    cfg_refused_with("caPem", "\"not a certificate\"", "PEM");
    cfg_refused_with(
        "caPem", "\"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\"", "PEM");
    cfg_refused_with("caPem", "7", "caPem");
    /* Identifiers: required, non-empty, no spaces, no URL syntax. */
    cfg_refused_with("account", NULL, "account");
    cfg_refused_with("tenantId", "\"\"", "tenantId");
    cfg_refused_with("clientId", "null", "clientId");
    cfg_refused_with("account", "\"a/../b\"", "account");
    cfg_refused_with("certificateProfile", "\"p?x=1\"", "certificateProfile");
    cfg_refused_with("applicationObjectId", "\"o 1\"", "applicationObjectId");
    cfg_refused_with("account", "[\"a\"]", "account");

    json_t *pub = (json_t *)1, *sec = (json_t *)1, *arr = json_array();
    assert_int_equal(azure_cfg_import(arr, "/tmp", &pub, &sec), QK_ERR_INVALID_ARG);
    assert_null(pub);
    assert_null(sec);
    json_decref(arr);
}

/* Boundary values of the credentials limits are accepted. */
static void cfg_credentials_edges(void **state)
{
    (void)state;
    char b[1024];
    const unsigned ttl[] = {AZURE_MIN_TTL, AZURE_MAX_TTL};
    for (size_t i = 0; i < 2; i++) {
        json_t *pub = NULL, *sec = NULL;
        snprintf(b, sizeof(b),
                 "{" AZ_BASE ",\"graph\":{\"refreshToken\":\"rt\"},\"credentials\":"
                 "{\"ttlSeconds\":%u,\"maxSecrets\":%u}}",
                 ttl[i], AZURE_MAX_SECRETS_LIMIT);
        if (cfg_import_str(b, &pub, &sec) != QK_OK)
            fail_msg("refused %s: %s", b, qk_error_detail());
        json_t *c = json_object_get(pub, "credentials");
        assert_int_equal(json_integer_value(json_object_get(c, "ttlSeconds")), ttl[i]);
        json_decref(pub);
        json_decref(sec);
    }
}

static void cfg_parse_round_trip(void **state)
{
    (void)state;
    json_t *pub = NULL, *sec = NULL;
    azure_cfg c;
    assert_int_equal(
        cfg_import_str("{" AZ_BASE ",\"graph\":{\"refreshToken\":\"rt\"}}", &pub, &sec), QK_OK);
    assert_int_equal(azure_cfg_parse(pub, &c), QK_OK);
    assert_string_equal(c.endpoint, "https://eus.codesigning.azure.net");
    assert_string_equal(c.account, "acct");
    assert_string_equal(c.cert_profile, "prof");
    assert_string_equal(c.tenant, "tenant-1");
    assert_string_equal(c.client_id, "client-1");
    assert_string_equal(c.app_object_id, "obj-1");
    assert_string_equal(c.authority_url, AZURE_DEFAULT_AUTHORITY);
    assert_string_equal(c.graph_url, AZURE_DEFAULT_GRAPH);
    assert_null(c.ca_pem);
    assert_string_equal(c.graph_client_id, "client-1");
    assert_int_equal(c.grant, AZ_GRANT_REFRESH_TOKEN);
    assert_int_equal(c.ttl_seconds, AZURE_DEFAULT_TTL);
    assert_int_equal(c.max_secrets, AZURE_DEFAULT_MAX_SECRETS);
    assert_int_equal(c.lock_timeout_seconds, AZURE_DEFAULT_LOCK_TIMEOUT);
    assert_int_equal(c.max_concurrent, AZURE_DEFAULT_MAX_CONCURRENT);
    azure_cfg_clear(&c);

    /* Incomplete or not an object. */
    json_object_del(pub, "endpoint");
    assert_int_equal(azure_cfg_parse(pub, &c), QK_ERR_INVALID_ARG);
    assert_null(c.account);
    json_t *arr = json_array();
    assert_int_equal(azure_cfg_parse(arr, &c), QK_ERR_INVALID_ARG);
    json_decref(arr);
    json_decref(pub);
    json_decref(sec);
}

/* ---- profile_import_json ----------------------------------------------------- */

static qk_err import_and_free(json_t *cfg, profile_import *imp)
{
    qk_err rc = profile_import_json(cfg, NULL, imp);
    json_decref(cfg);
    return rc;
}

/* {"backend":"local","keyPem":…,"chainPem":…} with chainPem the PEMs of xs. */
static json_t *local_cfg(const char *key_pem, X509 *const *xs, size_t n, const char *password)
{
    json_t *cfg = json_pack("{s:s, s:s}", "backend", "local", "keyPem", key_pem);
    size_t len = 0;
    char *chain = calloc(1, 1);
    assert_non_null(chain);
    for (size_t i = 0; i < n; i++) {
        char *pem = pem_of_cert(xs[i]);
        chain = realloc(chain, len + strlen(pem) + 1);
        assert_non_null(chain);
        memcpy(chain + len, pem, strlen(pem) + 1);
        len += strlen(pem);
        free(pem);
    }
    if (n > 0)
        json_object_set_new(cfg, "chainPem", json_string(chain));
    if (password != NULL)
        json_object_set_new(cfg, "password", json_string(password));
    free(chain);
    return cfg;
}

static void expect_local_ok(json_t *cfg, X509 *const *want, size_t n)
{
    profile_import imp;
    qk_buf expect = concat_der(want, n);
    if (import_and_free(cfg, &imp) != QK_OK)
        fail_msg("refused: %s", qk_error_detail());
    assert_string_equal(imp.backend, "local");
    assert_string_equal(imp.key_kind, "local-pem");
    assert_string_equal(imp.config, "{\"backend\":\"local\"}");
    assert_int_equal(imp.chain_der.len, expect.len);
    assert_memory_equal(imp.chain_der.data, expect.data, expect.len);
    /* The secret is the leaf's private key as (unencrypted) PEM. */
    BIO *bio = BIO_new_mem_buf(imp.secret.data, (int)imp.secret.len);
    EVP_PKEY *k = PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *)"");
    assert_non_null(k);
    assert_int_equal(EVP_PKEY_eq(k, P.leaf_key), 1);
    assert_non_null(strstr((const char *)imp.secret.data, "-----BEGIN PRIVATE KEY-----"));
    EVP_PKEY_free(k);
    BIO_free(bio);
    profile_import_clear(&imp);
    assert_null(imp.secret.data);
    free(expect.data);
}

static void expect_profile_refused(json_t *cfg, const char *detail_has)
{
    profile_import imp;
    char *text = json_dumps(cfg, JSON_COMPACT);
    if (import_and_free(cfg, &imp) == QK_OK)
        fail_msg("accepted: %.200s", text);
    assert_null(imp.secret.data);
    assert_null(imp.chain_der.data);
    assert_null(imp.config);
    if (detail_has != NULL && strstr(qk_error_detail(), detail_has) == NULL)
        fail_msg("detail \"%s\" lacks \"%s\"", qk_error_detail(), detail_has);
    free(text);
}

static void profile_local_pem(void **state)
{
    (void)state;
    char *key = pem_of_key(P.leaf_key, NULL);
    X509 *leaf[] = {P.leaf};
    X509 *full[] = {P.leaf, P.inter, P.root};
    X509 *shuffled[] = {P.root, P.leaf, P.inter};
    expect_local_ok(local_cfg(key, leaf, 1, NULL), leaf, 1);
    expect_local_ok(local_cfg(key, shuffled, 3, NULL), full, 3);
    /* A password given for a plain key is not an error. */
    expect_local_ok(local_cfg(key, leaf, 1, "unused"), leaf, 1);
    free(key);
}

static void profile_local_encrypted_pem(void **state)
{
    (void)state;
    char *key = pem_of_key(P.leaf_key, "correct horse");
    X509 *leaf[] = {P.leaf};
    assert_non_null(strstr(key, "ENCRYPTED"));
    expect_local_ok(local_cfg(key, leaf, 1, "correct horse"), leaf, 1);
    expect_profile_refused(local_cfg(key, leaf, 1, "wrong horse"), "password");
    expect_profile_refused(local_cfg(key, leaf, 1, NULL), "password");
    expect_profile_refused(local_cfg(key, leaf, 1, ""), NULL);
    free(key);
}

static void profile_local_refusals(void **state)
{
    (void)state;
    char *key = pem_of_key(P.leaf_key, NULL), *other = pem_of_key(P.other_key, NULL);
    X509 *noeku[] = {P.leaf_noeku, P.root};
    X509 *expired[] = {P.leaf_expired, P.root};
    X509 *leaf[] = {P.leaf};
    X509 *stranger[] = {P.leaf, P.other};
    X509 *not_leaf[] = {P.inter, P.root};

    expect_profile_refused(local_cfg(key, noeku, 2, NULL), "codeSigning");
    expect_profile_refused(local_cfg(key, expired, 2, NULL), "expired");
    expect_profile_refused(local_cfg(other, leaf, 1, NULL), "matches");
    expect_profile_refused(local_cfg(key, not_leaf, 2, NULL), "matches");
    expect_profile_refused(local_cfg(key, stranger, 2, NULL), "certificate 2");
    expect_profile_refused(local_cfg(key, NULL, 0, NULL), "chain");
    expect_profile_refused(local_cfg("not a key", leaf, 1, NULL), "key");
    json_t *cfg = local_cfg(key, leaf, 1, NULL);
    json_object_set_new(cfg, "chainPem", json_string("no PEM here"));
    expect_profile_refused(cfg, "chain");
    /* File names are refused without a base directory (the API). */
    expect_profile_refused(
        json_pack("{s:s, s:s, s:s}", "backend", "local", "key", "key.pem", "chainPem", "x"), "key");
    expect_profile_refused(
        json_pack("{s:s, s:s, s:s}", "backend", "local", "keyPem", key, "chain", "chain.pem"),
        "chain");
    expect_profile_refused(json_pack("{s:s, s:s}", "backend", "local", "pkcs12", "a.pfx"),
                           "pkcs12");
    expect_profile_refused(
        json_pack("{s:s, s:s, s:s}", "backend", "local", "keyPem", key, "pkcs12Base64", "AAAA"),
        "exactly one");
    expect_profile_refused(json_pack("{s:s}", "backend", "local"), "exactly one");
    expect_profile_refused(
        json_pack("{s:s, s:s, s:s}", "backend", "local", "keyPem", key, "keyFile", "x"), "keyFile");
    expect_profile_refused(
        json_pack("{s:s, s:s, s:i}", "backend", "local", "keyPem", key, "password", 1), "password");
    free(key);
    free(other);
}

static char *p12_b64(const char *password, STACK_OF(X509) *ca)
{
    PKCS12 *p12 = PKCS12_create(password, "qwick test", P.leaf_key, P.leaf, ca, 0, 0, 0, 0, 0);
    unsigned char *der = NULL;
    assert_non_null(p12);
    int len = i2d_PKCS12(p12, &der);
    assert_true(len > 0);
    char *s = b64_of(der, (size_t)len);
    OPENSSL_free(der);
    PKCS12_free(p12);
    return s;
}

static void profile_local_pkcs12(void **state)
{
    (void)state;
    STACK_OF(X509) *ca = sk_X509_new_null();
    sk_X509_push(ca, P.root);
    sk_X509_push(ca, P.inter);
    char *b = p12_b64("p12-pass", ca);
    X509 *full[] = {P.leaf, P.inter, P.root};
    X509 *leaf[] = {P.leaf};

    expect_local_ok(
        json_pack("{s:s, s:s, s:s}", "backend", "local", "pkcs12Base64", b, "password", "p12-pass"),
        full, 3);
    expect_profile_refused(
        json_pack("{s:s, s:s, s:s}", "backend", "local", "pkcs12Base64", b, "password", "nope"),
        "pkcs12");
    expect_profile_refused(json_pack("{s:s, s:s}", "backend", "local", "pkcs12Base64", b),
                           "pkcs12");
    expect_profile_refused(json_pack("{s:s, s:s, s:s}", "backend", "local", "pkcs12Base64",
                                     "bm90IGEgcGZ4", "password", "p12-pass"),
                           "pkcs12");
    expect_profile_refused(json_pack("{s:s, s:s, s:s}", "backend", "local", "pkcs12Base64",
                                     "not base64", "password", "p12-pass"),
                           "pkcs12Base64");
    free(b);
    /* A PKCS#12 with only the leaf. */
    b = p12_b64("p12-pass", NULL);
    expect_local_ok(
        json_pack("{s:s, s:s, s:s}", "backend", "local", "pkcs12Base64", b, "password", "p12-pass"),
        leaf, 1);
    free(b);
    sk_X509_free(ca);
}

static void profile_backends(void **state)
{
    (void)state;
    profile_import imp;
    expect_profile_refused(json_pack("{s:s}", "backend", "hsm"), "hsm");
    expect_profile_refused(json_pack("{s:i}", "backend", 1), "backend");
    expect_profile_refused(json_pack("{s:s}", "keyPem", "x"), "backend");
    expect_profile_refused(json_array(), NULL);

    json_t *cfg = parse_json("{\"backend\":\"azure\",\"azure\":{" AZ_BASE
                             ",\"graph\":{\"refreshToken\":\"rt-SECRET\"}}}");
    if (profile_import_json(cfg, NULL, &imp) != QK_OK)
        fail_msg("azure refused: %s", qk_error_detail());
    assert_string_equal(imp.backend, "azure");
    assert_string_equal(imp.key_kind, "azure-graph");
    assert_null(imp.chain_der.data);
    assert_null(strstr(imp.config, "rt-SECRET"));
    json_t *pub = parse_json(imp.config);
    assert_string_equal(json_string_value(json_object_get(pub, "backend")), "azure");
    azure_cfg c;
    assert_int_equal(azure_cfg_parse(json_object_get(pub, "azure"), &c), QK_OK);
    assert_string_equal(c.account, "acct");
    azure_cfg_clear(&c);
    json_decref(pub);
    json_t *sec = json_loadb((const char *)imp.secret.data, imp.secret.len, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(sec, "refreshToken")), "rt-SECRET");
    json_decref(sec);
    profile_import_clear(&imp);
    json_decref(cfg);

    expect_profile_refused(json_pack("{s:s}", "backend", "azure"), "azure");
    expect_profile_refused(parse_json("{\"backend\":\"azure\",\"keyPem\":\"x\",\"azure\":{}}"),
                           "keyPem");
    expect_profile_refused(
        parse_json("{\"backend\":\"azure\",\"azure\":{" AZ_BASE
                   ",\"caFile\":\"ca.pem\",\"graph\":{\"refreshToken\":\"r\"}}}"),
        "caFile");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(op_pending_states),
        cmocka_unit_test(op_succeeded_flat_and_nested),
        cmocka_unit_test(op_failed_reason),
        cmocka_unit_test(op_refusals),
        cmocka_unit_test(chain_ordered_from_shuffled),
        cmocka_unit_test(chain_refusals),
        cmocka_unit_test(cfg_full_valid),
        cmocka_unit_test(cfg_client_credentials_and_options),
        cmocka_unit_test(cfg_refusals),
        cmocka_unit_test(cfg_credentials_edges),
        cmocka_unit_test(cfg_parse_round_trip),
        cmocka_unit_test(profile_local_pem),
        cmocka_unit_test(profile_local_encrypted_pem),
        cmocka_unit_test(profile_local_refusals),
        cmocka_unit_test(profile_local_pkcs12),
        cmocka_unit_test(profile_backends),
    };
    return cmocka_run_group_tests(tests, pki_setup, pki_teardown);
}
