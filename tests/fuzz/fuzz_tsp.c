/* Fuzzes the RFC 3161 reply check (qk_tsp_reply_check) against one fixed
 * request. The request's nonce normally comes from RAND_bytes; here it is
 * made deterministic (OpenSSL's RAND method is swapped for a constant one
 * while the request is built), so the seed replies in corpus/fuzz_tsp, made
 * by `openssl ts -reply` for exactly this request (see make-corpus.sh), pass
 * every check and mutations start from the deepest path.
 *
 * QK_FUZZ_TSP_REQUEST_OUT=FILE writes the request's DER to FILE (corpus
 * generation uses it). */
#define OPENSSL_SUPPRESS_DEPRECATED /* RAND_set_rand_method: test-only */
#include <string.h>

#include <openssl/rand.h>

#include "fuzz_common.h"
#include "qwick/tsp.h"

static int constant_bytes(unsigned char *buf, int num)
{
    static const char pattern[] = "QWICKNON"; /* nonce 0x5157494b4e4f4e */
    for (int i = 0; i < num; i++)
        buf[i] = (unsigned char)pattern[i % 8];
    return 1;
}

static int constant_status(void)
{
    return 1;
}

static const RAND_METHOD constant_rand = {
    .bytes = constant_bytes,
    .pseudorand = constant_bytes,
    .status = constant_status,
};

static const qk_tsp_req *fixed_request(void)
{
    static qk_tsp_req *req;
    if (req != NULL)
        return req;
    static const uint8_t data[] = "qwick fuzz_tsp signature value";
    const qk_slice s = {data, sizeof(data) - 1};
    FUZZ_CHECK(RAND_set_rand_method(&constant_rand) == 1);
    FUZZ_CHECK(qk_tsp_request_new(QK_HASH_SHA256, s, &req) == QK_OK);
    RAND_set_rand_method(NULL); /* back to the default DRBG */
    const char *out = getenv("QK_FUZZ_TSP_REQUEST_OUT");
    if (out != NULL) {
        qk_slice der = qk_tsp_request_der(req);
        FILE *f = fopen(out, "wb");
        FUZZ_CHECK(f != NULL && fwrite(der.data, 1, der.len, f) == der.len && fclose(f) == 0);
    }
    return req;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const qk_tsp_req *req = fixed_request();
    qk_buf token = {(uint8_t *)1, 1};
    const qk_slice reply = {data, size};
    qk_err rc = qk_tsp_reply_check(req, reply, &token);
    if (rc == QK_OK) {
        /* The token is a copy of the TimeStampToken inside the reply. */
        FUZZ_CHECK(token.data != NULL && token.len > 0 && token.len <= size);
        FUZZ_CHECK(memmem(data, size, token.data, token.len) != NULL);
        qk_buf_free(&token);
    } else {
        FUZZ_CHECK(token.data == NULL && token.len == 0);
    }
    return 0;
}
