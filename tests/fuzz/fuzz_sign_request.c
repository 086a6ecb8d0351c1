/* Fuzzes qwickd's parser of POST /api/v1/sign/digest bodies (sign_input_parse:
 * jansson under strict options, field checks, strict base64). Invariants: an
 * accepted body has a digest of exactly its algorithm's size, a known format,
 * a profile, and strings within their limits; a refused one names a 4xx
 * status, a code and a message. */
#include <string.h>

#include "fuzz_common.h"
#include "api/sign_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sign_input in;
    api_error e;
    if (sign_input_parse(data, size, &in, &e) == 0) {
        FUZZ_CHECK(in.digest_len == qk_hash_size(in.alg));
        FUZZ_CHECK(in.format <= FMT_RAW);
        FUZZ_CHECK(in.profile != NULL && in.profile[0] != '\0');
        FUZZ_CHECK(strlen(in.profile) <= SIGN_MAX_PROFILE);
        FUZZ_CHECK(in.filename == NULL || strlen(in.filename) <= SIGN_MAX_FILENAME);
        FUZZ_CHECK(in.description == NULL || strlen(in.description) <= SIGN_MAX_DESCRIPTION);
        FUZZ_CHECK(in.url == NULL || strlen(in.url) <= SIGN_MAX_URL);
        fuzz_touch(in.digest, in.digest_len);
        sign_input_clear(&in);
    } else {
        FUZZ_CHECK(e.status >= 400 && e.status < 500);
        FUZZ_CHECK(e.code != NULL && e.message[0] != '\0');
        FUZZ_CHECK(in.root == NULL);
    }
    return 0;
}
