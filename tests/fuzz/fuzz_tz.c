/* Fuzzes qwickd's TZif reader (src/server/core/tz.c): tz_parse on the raw
 * bytes. A refused input has a message and no zone; an accepted zone gives,
 * at instants spread over +-2^62 s and around each of the first transitions
 * and the data's own 64-bit values, offsets within +-26 h, a weekday 0..6
 * and a minute of the day 0..1439. */
#include <string.h>

#include "core/tz.h"
#include "fuzz_common.h"

static void check_at(const tz *z, int64_t t)
{
    int wday = -1, minute = -1;
    long off = tz_offset(z, t);
    FUZZ_CHECK(off >= -26L * 3600 && off <= 26L * 3600);
    tz_local(z, t, &wday, &minute);
    FUZZ_CHECK(wday >= 0 && wday <= 6);
    FUZZ_CHECK(minute >= 0 && minute <= 1439);
}

static int64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tz *z = NULL;
    char *err = NULL;
    if (tz_parse(data, size, &z, &err) != 0) {
        FUZZ_CHECK(z == NULL && err != NULL && err[0] != '\0');
        free(err);
        return 0;
    }
    FUZZ_CHECK(err == NULL && z != NULL);
    for (int64_t t = INT64_MIN; t <= INT64_MAX - (INT64_C(1) << 58); t += INT64_C(1) << 58)
        check_at(z, t);
    check_at(z, INT64_MAX);
    /* 1900..2100 every ~30 days: the table and the footer's rule. */
    for (int64_t t = -2208988800; t < 4102444800; t += 2629743)
        check_at(z, t);
    /* Instants the input names (transition times among them), +-1 s. */
    for (size_t i = 0; i + 8 <= size && i < 4096; i++) {
        int64_t t = get64(data + i);
        check_at(z, t);
        if (t > INT64_MIN)
            check_at(z, t - 1);
        if (t < INT64_MAX)
            check_at(z, t + 1);
    }
    tz_free(z);
    return 0;
}
