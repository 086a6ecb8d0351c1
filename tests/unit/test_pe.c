#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "qwick/pe.h"

static void test_rejects_empty(void **state)
{
    (void)state;
    qk_pe *pe = NULL;
    assert_int_equal(qk_pe_parse_mem((const uint8_t *)"", 0, &pe), QK_ERR_NOT_PE);
    assert_null(pe);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rejects_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
