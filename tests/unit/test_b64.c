/* qwickd's strict base64: round trips, and every non-canonical spelling of a
 * digest is refused (padding, alphabet, stray bits, whitespace, overflow). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common/b64.h"

static void round_trips(void **state)
{
    (void)state;
    uint8_t in[70], out[70];
    char text[B64_ENCODED_SIZE(70)];
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (uint8_t)(i * 37 + 11);
    for (size_t n = 0; n <= sizeof(in); n++) {
        size_t len = b64_encode(in, n, text), got = 99;
        assert_int_equal(len, (n + 2) / 3 * 4);
        assert_int_equal(strlen(text), len);
        assert_int_equal(b64_decode(text, len, out, sizeof(out), &got), 0);
        assert_int_equal(got, n);
        assert_memory_equal(in, out, n);
    }
}

static void known_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *plain, *b64;
    } v[] = {{"", ""},
             {"f", "Zg=="},
             {"fo", "Zm8="},
             {"foo", "Zm9v"},
             {"foob", "Zm9vYg=="},
             {"fooba", "Zm9vYmE="},
             {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char text[16];
        uint8_t out[16];
        size_t n = 0;
        b64_encode((const uint8_t *)v[i].plain, strlen(v[i].plain), text);
        assert_string_equal(text, v[i].b64);
        assert_int_equal(b64_decode(v[i].b64, strlen(v[i].b64), out, sizeof(out), &n), 0);
        assert_int_equal(n, strlen(v[i].plain));
        assert_memory_equal(out, v[i].plain, n);
    }
}

static void refuses_non_canonical(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "Zg",                              /* missing padding */
        "Zg=",                             /* short padding */
        "Zh==",                            /* non-zero bits under the padding */
        "Zm9=",                            /* likewise, one '=' */
        "Z===",                            /* three pad characters */
        "=Zg=",                            /* padding first */
        "Zg==Zg==",                        /* padding in the middle */
        "Zm9v\n",                          /* whitespace */
        " Zm9v",    "Zm-v",                /* URL-safe alphabet */
        "Zm_v",     "Zm9v!!!!", "Zm\x80v", /* high byte */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t out[16];
        size_t n = 1234;
        assert_int_equal(b64_decode(bad[i], strlen(bad[i]), out, sizeof(out), &n), -1);
        assert_int_equal(n, 0);
    }
}

static void refuses_overflow(void **state)
{
    (void)state;
    uint8_t out[3];
    size_t n = 0;
    /* 6 bytes do not fit in 3; exactly 3 do */
    assert_int_equal(b64_decode("Zm9vYmFy", 8, out, sizeof(out), &n), -1);
    assert_int_equal(b64_decode("Zm9v", 4, out, sizeof(out), &n), 0);
    assert_int_equal(n, 3);
    /* 2 bytes fit in 2 even though 4 characters could mean 3 */
    assert_int_equal(b64_decode("Zm8=", 4, out, 2, &n), 0);
    assert_int_equal(n, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trips),
        cmocka_unit_test(known_vectors),
        cmocka_unit_test(refuses_non_canonical),
        cmocka_unit_test(refuses_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
