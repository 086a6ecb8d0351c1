/* The sign request parser: defaults, every refusal class with its code, and
 * limits at their edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/b64.h"
#include "api/sign_input.h"

static char d32[B64_ENCODED_SIZE(32)], d48[B64_ENCODED_SIZE(48)], d64[B64_ENCODED_SIZE(64)];

static int setup(void **state)
{
    uint8_t raw[64];
    (void)state;
    for (size_t i = 0; i < sizeof(raw); i++)
        raw[i] = (uint8_t)(0xA0 + i);
    b64_encode(raw, 32, d32);
    b64_encode(raw, 48, d48);
    b64_encode(raw, 64, d64);
    return 0;
}

static int parse_str(const char *body, sign_input *in, api_error *e)
{
    return sign_input_parse((const uint8_t *)body, strlen(body), in, e);
}

/* Expects `body` refused with `status` and `code`. */
static void refused(const char *body, int status, const char *code)
{
    sign_input in;
    api_error e;
    if (parse_str(body, &in, &e) == 0)
        fail_msg("accepted: %s", body);
    if (e.status != status || strcmp(e.code, code) != 0)
        fail_msg("%s: got %d %s (%s), want %d %s", body, e.status, e.code, e.message, status, code);
    assert_null(in.root);
    assert_true(e.message[0] != '\0');
}

static void accepts_full_and_defaults(void **state)
{
    (void)state;
    char body[512];
    sign_input in;
    api_error e;
    snprintf(body, sizeof(body),
             "{\"digest\":\"%s\",\"algorithm\":\"sha384\",\"format\":\"cms\",\"profile\":\"rel\","
             "\"metadata\":{\"filename\":\"a.exe\",\"description\":\"A\",\"url\":\"https://x/\"}}",
             d48);
    assert_int_equal(parse_str(body, &in, &e), 0);
    assert_int_equal(in.alg, QK_HASH_SHA384);
    assert_int_equal(in.format, FMT_CMS);
    assert_string_equal(in.profile, "rel");
    assert_string_equal(in.filename, "a.exe");
    assert_string_equal(in.description, "A");
    assert_string_equal(in.url, "https://x/");
    assert_int_equal(in.digest_len, 48);
    assert_int_equal(in.digest[0], 0xA0);
    sign_input_clear(&in);

    snprintf(body, sizeof(body), "{\"digest\":\"%s\",\"algorithm\":\"sha512\",\"metadata\":null}",
             d64);
    assert_int_equal(parse_str(body, &in, &e), 0);
    assert_int_equal(in.format, FMT_AUTHENTICODE_PE);
    assert_string_equal(in.profile, "default");
    assert_null(in.filename);
    assert_string_equal(sign_format_name(in.format), "authenticode-pe");
    sign_input_clear(&in);

    snprintf(body, sizeof(body), "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"format\":\"raw\"}",
             d32);
    assert_int_equal(parse_str(body, &in, &e), 0);
    assert_int_equal(in.format, FMT_RAW);
    assert_int_equal(in.async, 0);
    sign_input_clear(&in);

    snprintf(body, sizeof(body), "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"async\":true}",
             d32);
    assert_int_equal(parse_str(body, &in, &e), 0);
    assert_int_equal(in.async, 1);
    assert_null(in.idempotency_key);
    sign_input_clear(&in);

    snprintf(body, sizeof(body),
             "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"idempotencyKey\":\"k-1\","
             "\"callbackUrl\":\"https://ci.example/hook\"}",
             d32);
    assert_int_equal(parse_str(body, &in, &e), 0);
    assert_string_equal(in.idempotency_key, "k-1");
    assert_string_equal(in.callback_url, "https://ci.example/hook");
    assert_int_equal(in.no_timestamp, 0);
    assert_int_equal(in.server_timestamp, 0);
    sign_input_clear(&in);

    /* "timestamp": false (no timestamp), "server" (stamped by the server). */
    snprintf(body, sizeof(body), "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"timestamp\":false}",
             d32);
    assert_int_equal(parse_str(body, &in, &e), 0);
    assert_int_equal(in.no_timestamp, 1);
    assert_int_equal(in.server_timestamp, 0);
    sign_input_clear(&in);
    snprintf(body, sizeof(body),
             "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"timestamp\":\"server\"}", d32);
    assert_int_equal(parse_str(body, &in, &e), 0);
    assert_int_equal(in.no_timestamp, 0);
    assert_int_equal(in.server_timestamp, 1);
    sign_input_clear(&in);
    snprintf(body, sizeof(body),
             "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"timestamp\":\"client\"}", d32);
    refused(body, 400, "invalid_type");
    snprintf(body, sizeof(body), "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"timestamp\":1}",
             d32);
    refused(body, 400, "invalid_type");
}

static void refuses_each_class(void **state)
{
    (void)state;
    char b[512];
    refused("", 400, "invalid_json");
    refused("{", 400, "invalid_json");
    refused("[1]", 400, "invalid_json");
    refused("\"digest\"", 400, "invalid_json");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"sha256\"}{}", d32);
    refused(b, 400, "invalid_json");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"algorithm\":\"sha256\"}",
             d32);
    refused(b, 400, "invalid_json");
    refused("{\"digest\":\"a\\u0000b\",\"algorithm\":\"sha256\"}", 400, "invalid_json");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"callback\":false}", d32);
    refused(b, 400, "unknown_field");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"async\":\"yes\"}", d32);
    refused(b, 400, "invalid_type");
    snprintf(b, sizeof(b),
             "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"metadata\":{\"os\":\"x\"}}", d32);
    refused(b, 400, "unknown_field");
    refused("{\"digest\":[],\"algorithm\":\"sha256\"}", 400, "invalid_type");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":256}", d32);
    refused(b, 400, "invalid_type");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"profile\":null}", d32);
    refused(b, 400, "invalid_type");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"metadata\":[]}", d32);
    refused(b, 400, "invalid_type");
    refused("{\"algorithm\":\"sha256\"}", 400, "missing_field");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\"}", d32);
    refused(b, 400, "missing_field");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"SHA256\"}", d32);
    refused(b, 400, "unknown_algorithm");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"sha-256\"}", d32);
    refused(b, 400, "unknown_algorithm");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"sha1\"}", d32);
    refused(b, 400, "unknown_algorithm");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"format\":\"PE\"}", d32);
    refused(b, 400, "unknown_format");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"profile\":\"\"}", d32);
    refused(b, 400, "invalid_value");
    refused("{\"digest\":\"not base64!\",\"algorithm\":\"sha256\"}", 400, "invalid_digest");
    refused("{\"digest\":\"\",\"algorithm\":\"sha256\"}", 400, "digest_length");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"sha512\"}", d48);
    refused(b, 400, "digest_length");
    snprintf(b, sizeof(b), "{\"digest\":\"%s\",\"algorithm\":\"sha256\"}", d64);
    refused(b, 400, "digest_length");
}

static void string_limits(void **state)
{
    (void)state;
    static const struct {
        const char *field;
        size_t max;
        int meta;
    } f[] = {{"profile", SIGN_MAX_PROFILE, 0},
             {"filename", SIGN_MAX_FILENAME, 1},
             {"description", SIGN_MAX_DESCRIPTION, 1},
             {"url", SIGN_MAX_URL, 1}};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        for (size_t extra = 0; extra <= 1; extra++) {
            size_t n = f[i].max + extra;
            char *v = malloc(n + 1);
            char *b = malloc(n + 256);
            if (v == NULL || b == NULL)
                abort();
            memset(v, 'a', n);
            v[n] = '\0';
            if (f[i].meta)
                sprintf(b,
                        "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"metadata\":{\"%s\":\"%s\"}}",
                        d32, f[i].field, v);
            else
                sprintf(b, "{\"digest\":\"%s\",\"algorithm\":\"sha256\",\"%s\":\"%s\"}", d32,
                        f[i].field, v);
            sign_input in;
            api_error e;
            int rc = parse_str(b, &in, &e);
            if (extra == 0) {
                assert_int_equal(rc, 0);
                sign_input_clear(&in);
            } else {
                assert_int_equal(rc, -1);
                assert_string_equal(e.code, "field_too_long");
            }
            free(v);
            free(b);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(accepts_full_and_defaults),
        cmocka_unit_test(refuses_each_class),
        cmocka_unit_test(string_limits),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
