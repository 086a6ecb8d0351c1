/* Fuzzes qwickd's reading of Azure Trusted Signing answers (azure_result.c).
 * Two modes, chosen by the first byte:
 *
 *   0x01 sl_hi sl_lo SIG[sl] PKCS7   az_chain_for_signature on the raw DER
 *   anything else                    az_op_parse on the bytes as a status
 *                                    body; a Succeeded result's signature
 *                                    and PKCS#7 then go to
 *                                    az_chain_for_signature
 *
 * The digest is fixed: SHA-256 of the empty string (the seeds in
 * corpus/fuzz_azure_result/ carry signatures over it by their leaf key).
 * Invariants: a parsed body has a known state, a Succeeded one a signature
 * of 1..QK_MAX_SIGNATURE_SIZE bytes and a non-empty PKCS#7, a Failed one a
 * printable reason, a refused one leaves nothing allocated; an accepted
 * chain is whole DER certificates, at most QK_MAX_CHAIN_LEN, the first of
 * which verifies the signature and each issued the one before it; a refused
 * chain is {NULL, 0}. */
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "signer/azure/azure_result.h"
#include "fuzz_common.h"
#include "qwick/authenticode.h"

#define MODE_DER 0x01

static const uint8_t empty_sha256[32] = {
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};

static int leaf_verifies(X509 *x, qk_slice sig)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(X509_get0_pubkey(x), NULL);
    int ok = ctx != NULL && EVP_PKEY_verify_init(ctx) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1 &&
             EVP_PKEY_verify(ctx, sig.data, sig.len, empty_sha256, sizeof(empty_sha256)) == 1;
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

/* The chain is back-to-back DER certificates, leaf (the signer) first, each
 * issued by the next. */
static void check_chain(const qk_buf *chain, qk_slice sig)
{
    const unsigned char *p = chain->data, *end = chain->data + chain->len;
    X509 *prev = NULL;
    int count = 0;
    FUZZ_CHECK(chain->data != NULL && chain->len > 0);
    while (p < end) {
        X509 *x = d2i_X509(NULL, &p, (long)(end - p));
        FUZZ_CHECK(x != NULL);
        FUZZ_CHECK(++count <= QK_MAX_CHAIN_LEN);
        if (prev == NULL)
            FUZZ_CHECK(leaf_verifies(x, sig));
        else
            FUZZ_CHECK(X509_check_issued(x, prev) == X509_V_OK);
        X509_free(prev);
        prev = x;
    }
    FUZZ_CHECK(p == end);
    X509_free(prev);
    ERR_clear_error();
}

static void chain_for(qk_slice p7, qk_slice sig)
{
    qk_buf chain = {(uint8_t *)1, 1};
    if (az_chain_for_signature(p7, QK_HASH_SHA256, empty_sha256, sizeof(empty_sha256), sig,
                               &chain) == QK_OK) {
        check_chain(&chain, sig);
        qk_buf_free(&chain);
    } else {
        FUZZ_CHECK(chain.data == NULL && chain.len == 0);
    }
}

static void status_body(const uint8_t *data, size_t size)
{
    az_op op;
    if (az_op_parse(data, size, &op) != QK_OK) {
        FUZZ_CHECK(op.state == AZ_OP_PENDING && op.signature.data == NULL &&
                   op.pkcs7_der.data == NULL && op.error[0] == '\0');
        return;
    }
    switch (op.state) {
    case AZ_OP_PENDING:
        FUZZ_CHECK(op.signature.data == NULL && op.pkcs7_der.data == NULL);
        break;
    case AZ_OP_FAILED:
        FUZZ_CHECK(op.signature.data == NULL && op.pkcs7_der.data == NULL);
        FUZZ_CHECK(memchr(op.error, '\0', sizeof(op.error)) != NULL && op.error[0] != '\0');
        for (const char *c = op.error; *c; c++)
            FUZZ_CHECK(*c >= 0x20 && *c < 0x7f);
        break;
    case AZ_OP_SUCCEEDED:
        FUZZ_CHECK(op.signature.len > 0 && op.signature.len <= QK_MAX_SIGNATURE_SIZE);
        FUZZ_CHECK(op.pkcs7_der.len > 0);
        fuzz_touch(op.signature.data, op.signature.len);
        fuzz_touch(op.pkcs7_der.data, op.pkcs7_der.len);
        chain_for((qk_slice){op.pkcs7_der.data, op.pkcs7_der.len},
                  (qk_slice){op.signature.data, op.signature.len});
        break;
    default:
        FUZZ_CHECK(!"unknown az_op_state");
    }
    az_op_clear(&op);
    FUZZ_CHECK(op.signature.data == NULL && op.pkcs7_der.data == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size >= 3 && data[0] == MODE_DER) {
        size_t sl = (size_t)data[1] << 8 | data[2];
        if (sl > size - 3)
            return 0;
        chain_for((qk_slice){data + 3 + sl, size - 3 - sl}, (qk_slice){data + 3, sl});
        return 0;
    }
    status_body(data, size);
    return 0;
}
