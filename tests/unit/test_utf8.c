/* src/common/utf8.c: well-formedness per RFC 3629 and the lossy copy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/utf8.h"

static void test_seq_len(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t want;
    } cases[] = {
        {"a", 1},
        {"\x7f", 1},
        {"\xc2\x80", 2},         /* U+0080, smallest 2-byte */
        {"\xdf\xbf", 2},         /* U+07FF */
        {"\xe0\xa0\x80", 3},     /* U+0800 */
        {"\xed\x9f\xbf", 3},     /* U+D7FF, just below the surrogates */
        {"\xee\x80\x80", 3},     /* U+E000, just above */
        {"\xef\xbf\xbf", 3},     /* U+FFFF */
        {"\xf0\x90\x80\x80", 4}, /* U+10000 */
        {"\xf4\x8f\xbf\xbf", 4}, /* U+10FFFF, the last code point */
        {"\x80", 0},             /* stray continuation */
        {"\xbf", 0},
        {"\xc0\xaf", 0},         /* overlong '/' */
        {"\xc1\xbf", 0},
        {"\xe0\x80\xaf", 0},     /* overlong 3-byte */
        {"\xf0\x80\x80\xaf", 0}, /* overlong 4-byte */
        {"\xed\xa0\x80", 0},     /* U+D800 surrogate */
        {"\xed\xbf\xbf", 0},     /* U+DFFF */
        {"\xf4\x90\x80\x80", 0}, /* U+110000 */
        {"\xf5\x80\x80\x80", 0},
        {"\xff", 0},
        {"\xc3", 0},             /* truncated by the NUL */
        {"\xe2\x82", 0},
        {"\xf0\x9f\x98", 0},
        {"\xc3" "a", 0},         /* continuation missing */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t got = utf8_seq_len(cases[i].s);
        if (got != cases[i].want)
            fail_msg("case %zu: %zu, want %zu", i, got, cases[i].want);
    }
}

static void test_lossy(void **state)
{
    (void)state;
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"app.exe", "app.exe"},
        {"", ""},
        {"caf\xc3\xa9.exe", "caf\xc3\xa9.exe"},             /* kept */
        {"\xffsetup.exe", "?setup.exe"},                      /* Latin-1 byte */
        {"caf\xe9.exe", "caf?.exe"},                          /* Latin-1 e-acute */
        {"\xe2\x82\xac\xe2\x82", "\xe2\x82\xac??"},           /* euro, then a cut one */
        {"\xed\xa0\x80x", "???x"},                            /* surrogate: 3 bytes */
        {"\xf0\x9f\x98\x80 ok", "\xf0\x9f\x98\x80 ok"},       /* emoji kept */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = utf8_lossy(cases[i].in);
        assert_int_equal(strlen(got), strlen(cases[i].in));
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("case %zu: \"%s\", want \"%s\"", i, got, cases[i].want);
        /* The result is always well formed. */
        for (const char *p = got; *p;) {
            size_t n = utf8_seq_len(p);
            assert_true(n > 0);
            p += n;
        }
        free(got);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seq_len),
        cmocka_unit_test(test_lossy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
