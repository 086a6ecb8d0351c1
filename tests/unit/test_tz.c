/* qwickd's time zones (src/server/core/tz.c): real zones and POSIX TZ footers
 * against glibc's localtime_r (1901..2100, every ~7.3 days and +-1 s around
 * every change found), zone names (invalid, unknown, $TZDIR), and damaged
 * TZif data (every prefix, random byte flips, oversize, bad footers, leap
 * seconds); one zone shared by threads. glibc's TZ is used here only, as the
 * reference: tz.c never touches it. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "core/tz.h"

#define ZONEINFO "/usr/share/zoneinfo"
#define T1901 (-2147483648LL)
#define T2038 2147483647LL
#define T2100 4102444800LL
#define STEP 630720 /* 7.3 days: every weekday and time of day in turn */

static const char *const zones[] = {
    "Europe/Berlin",     "America/New_York",
    "America/Sao_Paulo", "Australia/Lord_Howe",
    "Asia/Kolkata",      "Pacific/Chatham",
    "Pacific/Apia",      "Europe/Dublin",
    "Africa/Casablanca", "UTC",
};

/* glibc's view of t under the TZ set by use_glibc_tz. */
typedef struct local {
    long off;
    int wday, minute;
} local;

static void use_glibc_tz(const char *tzenv)
{
    assert_int_equal(setenv("TZ", tzenv, 1), 0);
    tzset();
}

static local glibc_at(int64_t t)
{
    struct tm tm;
    time_t tt = (time_t)t;
    assert_non_null(localtime_r(&tt, &tm));
    return (local){tm.tm_gmtoff, tm.tm_wday, tm.tm_hour * 60 + tm.tm_min};
}

static local ours_at(const tz *z, int64_t t)
{
    local l = {tz_offset(z, t), -1, -1};
    tz_local(z, t, &l.wday, &l.minute);
    return l;
}

/* 1 (and a message) when tz and glibc disagree at t. */
static int differs(const tz *z, const char *what, int64_t t)
{
    local g = glibc_at(t), o = ours_at(z, t);
    if (g.off == o.off && g.wday == o.wday && g.minute == o.minute)
        return 0;
    print_error("%s at %lld: glibc %ld/%d/%d, tz %ld/%d/%d\n", what, (long long)t, g.off, g.wday,
                g.minute, o.off, o.wday, o.minute);
    return 1;
}

/* The first second after `lo` whose glibc offset is not lo's, knowing hi's is
 * not (some change in (lo, hi]). */
static int64_t change_after(int64_t lo, int64_t hi)
{
    long before = glibc_at(lo).off;
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (glibc_at(mid).off == before)
            lo = mid;
        else
            hi = mid;
    }
    return hi;
}

/* Compares z with glibc under TZ=tzenv over [from, to]; returns the number
 * of disagreements, *changes the number of changes found. */
static int compare_with_glibc(const tz *z, const char *tzenv, int64_t from, int64_t to,
                              int *changes)
{
    int bad = 0;
    use_glibc_tz(tzenv);
    *changes = 0;
    for (int64_t t = from; t <= to && bad < 10; t += STEP) {
        bad += differs(z, tzenv, t);
        int64_t next = t + STEP <= to ? t + STEP : to;
        if (next > t && glibc_at(next).off != glibc_at(t).off) {
            int64_t c = change_after(t, next);
            bad += differs(z, tzenv, c - 1) + differs(z, tzenv, c) + differs(z, tzenv, c + 1);
            ++*changes;
        }
    }
    return bad;
}

static void test_zones_match_glibc(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(zones) / sizeof(zones[0]); i++) {
        tz *z = NULL;
        char *err = NULL;
        int changes = 0;
        assert_int_equal(tz_load(zones[i], &z, &err), 0);
        assert_null(err);
        assert_int_equal(compare_with_glibc(z, zones[i], T1901, T2100, &changes), 0);
        /* DST zones change every year up to 2100 (the footer's rule). */
        if (strcmp(zones[i], "Europe/Berlin") == 0 || strcmp(zones[i], "Pacific/Chatham") == 0)
            assert_true(changes > 2 * (2100 - 1980));
        tz_free(z);
    }
}

/* ---- Hand-made TZif images */

typedef struct image {
    uint8_t b[8192];
    size_t n;
} image;

static void put(image *im, const void *p, size_t n)
{
    if (n == 0)
        return;
    assert_true(im->n + n <= sizeof(im->b));
    memcpy(im->b + im->n, p, n);
    im->n += n;
}

static void put_be(image *im, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) {
        uint8_t c = (uint8_t)(v >> (8 * i));
        put(im, &c, 1);
    }
}

static void put_header(image *im, char version, uint32_t timecnt, uint32_t typecnt,
                       uint32_t charcnt)
{
    static const uint8_t unused[15];
    put(im, "TZif", 4);
    put(im, &version, 1);
    put(im, unused, sizeof(unused));
    uint32_t counts[6] = {0, 0, 0, timecnt, typecnt, charcnt};
    for (int i = 0; i < 6; i++)
        put_be(im, counts[i], 4);
}

/* A version-3 image: n transitions to the given types, then `footer`. */
static void make_tzif(image *im, const int64_t *times, const uint8_t *idx, size_t n,
                      const int32_t *utoffs, size_t ntypes, const char *footer)
{
    im->n = 0;
    put_header(im, 0, 0, 0, 0); /* an empty 32-bit block (replaced by version below) */
    im->b[4] = '3';
    put_header(im, '3', (uint32_t)n, (uint32_t)ntypes, 4);
    for (size_t i = 0; i < n; i++)
        put_be(im, (uint64_t)times[i], 8);
    put(im, idx, n);
    for (size_t i = 0; i < ntypes; i++) {
        put_be(im, (uint32_t)utoffs[i], 4);
        put(im, "\0\0", 2);
    }
    put(im, "ZZZ", 4);
    put(im, "\n", 1);
    put(im, footer, strlen(footer));
    put(im, "\n", 1);
}

/* A zone of a footer only (no transitions), asserted to parse. */
static tz *footer_zone(const char *footer)
{
    image im;
    tz *z = NULL;
    char *err = NULL;
    int32_t utoff = 0;
    make_tzif(&im, NULL, NULL, 0, &utoff, 1, footer);
    if (tz_parse(im.b, im.n, &z, &err) != 0)
        fail_msg("footer \"%s\" refused: %s", footer, err);
    return z;
}

static void test_footers_match_glibc(void **state)
{
    static const char *const footers[] = {
        "CET-1CEST,M3.5.0,M10.5.0/3",
        "EST5EDT,M3.2.0,M11.1.0",
        "<+1030>-10:30<+11>-11,M10.1.0,M4.1.0",
        "<+1245>-12:45<+1345>,M9.5.0/2:45,M4.1.0/3:45",
        "IST-1GMT0,M10.5.0,M3.5.0/1", /* negative DST */
        "IST-5:30",
        "<+0530>-5:30",
        "<-03>3",
        "UTC0",
        "<+14>-14",
        "<-12>+12",
        "AAA3BBB,J60/1:30,J300/1:30",      /* Jn: February 29 not counted */
        "AAA3BBB,59/1:30,299",             /* n: counted */
        "AAA-3BBB-4:15:30,J60/0,J300/23",  /* explicit DST offset with seconds */
        "<-02>2<-01>,M3.5.0/-1,M10.5.0/0", /* America/Nuuk: negative time */
        "IST-2IDT,M3.4.4/26,M10.5.0",      /* Asia/Jerusalem: time > 24 h */
        "<-04>4<-03>,M9.1.6/24,M4.1.6/24", /* America/Santiago */
        "<-01>1<+00>,M3.5.0/0,M10.5.0/1",
        "AAA5BBB,M4.1.0/-100,M9.5.6/150", /* far from midnight */
    };
    (void)state;
    for (size_t i = 0; i < sizeof(footers) / sizeof(footers[0]); i++) {
        tz *z = footer_zone(footers[i]);
        int changes = 0;
        assert_int_equal(compare_with_glibc(z, footers[i], 0, T2100, &changes), 0);
        tz_free(z);
    }
}

/* RFC 8536 3.3.1's "DST all year": no gap at New Year (glibc has one). */
static void test_footer_dst_all_year(void **state)
{
    (void)state;
    tz *z = footer_zone("EST5EDT,0/0,J365/25");
    for (int64_t t = 0; t < T2100; t += 3600 * 7 + 13)
        assert_int_equal(tz_offset(z, t), -4 * 3600);
    tz_free(z);
    /* Summer time from January 1 00:00 (21:00Z the day before) to December
     * 31 23:00 (18:44:30Z): glibc, looking at the UTC year's changes only,
     * misses the next year's start between 21:00Z and midnight. */
    z = footer_zone("AAA-3BBB-4:15:30,J1/0,J365/23");
    assert_int_equal(tz_offset(z, 2745513869), 15330); /* 2056-12-31 18:44:29Z */
    assert_int_equal(tz_offset(z, 2745513870), 10800);
    assert_int_equal(tz_offset(z, 2745521999), 10800);
    assert_int_equal(tz_offset(z, 2745522000), 15330); /* 21:00Z */
    assert_int_equal(tz_offset(z, 2745532799), 15330);
    tz_free(z);
}

static void test_bad_footers(void **state)
{
    static const char *const bad[] = {
        "CET",                          /* no offset */
        "CET-1CEST",                    /* DST without a rule */
        "CET-25",                       /* hours > 24 */
        "CET-1:60",                     /* minutes > 59 */
        "AB-1",                         /* name < 3 characters */
        "<AB>-1",                       /* quoted too */
        "<+0530-5:30",                  /* unclosed */
        "<+05 30>-5:30",                /* space */
        "CET-1CEST,M13.1.0,M10.5.0",    /* month 13 */
        "CET-1CEST,M3.6.0,M10.5.0",     /* week 6 */
        "CET-1CEST,M3.5.7,M10.5.0",     /* day 7 */
        "CET-1CEST,M3.0.0,M10.5.0",     /* week 0 */
        "CET-1CEST,J0,J365",            /* J is 1-based */
        "CET-1CEST,366,J365",           /* n is 0..365 */
        "CET-1CEST,M3.5.0,M10.5.0/168", /* time > 167 h */
        "CET-1CEST,M3.5.0",             /* no end */
        "CET-1CEST,M3.5.0,M10.5.0/3x",  /* trailing */
        "CET-1 ",
        "-1CET",
    };
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        image im;
        tz *z = NULL;
        char *err = NULL;
        int32_t utoff = 0;
        make_tzif(&im, NULL, NULL, 0, &utoff, 1, bad[i]);
        if (tz_parse(im.b, im.n, &z, &err) == 0)
            fail_msg("footer \"%s\" accepted", bad[i]);
        assert_null(z);
        assert_non_null(strstr(err, "footer"));
        free(err);
    }
}

/* The table, then the footer after the last transition; type 0 before. */
static void test_table_then_footer(void **state)
{
    static const int64_t times[] = {1000, 2000};
    static const uint8_t idx[] = {1, 0};
    static const int32_t utoffs[] = {3600, 7200};
    image im;
    tz *z = NULL;
    char *err = NULL;
    (void)state;
    make_tzif(&im, times, idx, 2, utoffs, 2, "<+05>-5");
    assert_int_equal(tz_parse(im.b, im.n, &z, &err), 0);
    assert_int_equal(tz_offset(z, INT64_MIN), 3600);
    assert_int_equal(tz_offset(z, 999), 3600);
    assert_int_equal(tz_offset(z, 1000), 7200);
    assert_int_equal(tz_offset(z, 1999), 7200);
    assert_int_equal(tz_offset(z, 2000), 3600);
    assert_int_equal(tz_offset(z, 2001), 5 * 3600);
    assert_int_equal(tz_offset(z, INT64_MAX), 5 * 3600);
    tz_free(z);

    /* An empty footer: the last type stays. */
    make_tzif(&im, times, idx, 2, utoffs, 2, "");
    assert_int_equal(tz_parse(im.b, im.n, &z, &err), 0);
    assert_int_equal(tz_offset(z, INT64_MAX), 3600);
    tz_free(z);

    /* Not ascending; a type index past typecnt; an offset past 26 h. */
    static const int64_t same[] = {1000, 1000};
    static const uint8_t idx2[] = {0, 2};
    static const int32_t huge[] = {0, 26 * 3600};
    make_tzif(&im, same, idx, 2, utoffs, 2, "");
    assert_int_equal(tz_parse(im.b, im.n, &z, &err), -1);
    free(err);
    make_tzif(&im, times, idx2, 2, utoffs, 2, "");
    assert_int_equal(tz_parse(im.b, im.n, &z, &err), -1);
    free(err);
    make_tzif(&im, times, idx, 2, huge, 2, "");
    assert_int_equal(tz_parse(im.b, im.n, &z, &err), -1);
    free(err);
}

static void test_utc(void **state)
{
    tz *z = NULL;
    char *err = NULL;
    int wday, minute;
    (void)state;
    assert_int_equal(setenv("TZDIR", "/nonexistent", 1), 0); /* built in: no file */
    assert_int_equal(tz_load("UTC", &z, &err), 0);
    assert_int_equal(unsetenv("TZDIR"), 0);
    assert_int_equal(tz_offset(z, 1700000000), 0);
    tz_local(z, 0, &wday, &minute);
    assert_int_equal(wday, 4); /* 1970-01-01: Thursday */
    assert_int_equal(minute, 0);
    tz_local(z, -1, &wday, &minute);
    assert_int_equal(wday, 3);
    assert_int_equal(minute, 1439);
    for (int64_t t = INT64_MIN; t <= INT64_MAX - (INT64_C(1) << 56); t += INT64_C(1) << 56) {
        tz_local(z, t, &wday, &minute);
        assert_in_range(wday, 0, 6);
        assert_in_range(minute, 0, 1439);
    }
    tz_local(z, INT64_MAX, &wday, &minute);
    assert_in_range(wday, 0, 6);
    tz_free(z);
}

static void test_berlin_known(void **state)
{
    tz *z = NULL;
    char *err = NULL;
    int wday, minute;
    (void)state;
    assert_int_equal(tz_load("Europe/Berlin", &z, &err), 0);
    assert_int_equal(tz_offset(z, 1711846799), 3600); /* 2024-03-31 00:59:59Z */
    assert_int_equal(tz_offset(z, 1711846800), 7200);
    tz_local(z, 1719837240, &wday, &minute); /* 2024-07-01 12:34Z: Monday 14:34 */
    assert_int_equal(wday, 1);
    assert_int_equal(minute, 14 * 60 + 34);
    tz_local(z, 4102444800 + 86400 * 180, &wday, &minute); /* 2100-06-30 (footer) */
    assert_int_equal(wday, 3);
    assert_int_equal(minute, 120);
    tz_free(z);
}

static void test_bad_names(void **state)
{
    static const char *const bad[] = {
        "../etc/passwd",
        "/etc/passwd",
        "Europe//Berlin",
        "",
        "a/./b",
        "a/../b",
        "Europe/Berlin/",
        ".",
        "..",
        "a b",
        "zone.tab",
        "Europe\\Berlin",
        "Europe/Berlin\n",
    };
    char long_name[TZ_MAX_NAME + 2];
    tz *z = (tz *)1;
    char *err = NULL;
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(tz_load(bad[i], &z, &err), -1);
        assert_null(z);
        assert_non_null(strstr(err, "invalid time zone name"));
        free(err);
    }
    memset(long_name, 'A', TZ_MAX_NAME + 1);
    long_name[TZ_MAX_NAME + 1] = '\0';
    assert_int_equal(tz_load(long_name, &z, &err), -1);
    assert_non_null(strstr(err, "invalid time zone name"));
    assert_true(strlen(err) < 2 * TZ_MAX_NAME); /* the name is cut */
    free(err);
    long_name[TZ_MAX_NAME] = '\0'; /* 64 bytes: a valid name, no such zone */
    assert_int_equal(tz_load(long_name, &z, &err), -1);
    assert_non_null(strstr(err, "unknown time zone"));
    free(err);
}

static void test_unknown(void **state)
{
    static const char *const unknown[] = {"Mars/Base", "Europe", "Europe/Berlin/x"};
    tz *z = NULL;
    char *err = NULL;
    char want[128];
    (void)state;
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        assert_int_equal(tz_load(unknown[i], &z, &err), -1);
        assert_null(z);
        snprintf(want, sizeof(want), "unknown time zone \"%s\"", unknown[i]);
        assert_string_equal(err, want);
        free(err);
    }
    /* $TZDIR is where zones are looked up. */
    assert_int_equal(setenv("TZDIR", "/nonexistent", 1), 0);
    assert_int_equal(tz_load("Europe/Berlin", &z, &err), -1);
    assert_string_equal(err, "unknown time zone \"Europe/Berlin\"");
    free(err);
    assert_int_equal(setenv("TZDIR", ZONEINFO "/Europe", 1), 0);
    assert_int_equal(tz_load("Berlin", &z, &err), 0);
    tz_free(z);
    assert_int_equal(unsetenv("TZDIR"), 0);
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = malloc(1 << 20);
    assert_non_null(f);
    assert_non_null(buf);
    *len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

/* Parses a copy of exactly n bytes (so ASan sees reads past them); on success
 * checks the zone's answers are in range. */
static int parse_copy(const uint8_t *data, size_t n)
{
    uint8_t *copy = malloc(n ? n : 1);
    tz *z = NULL;
    char *err = NULL;
    assert_non_null(copy);
    memcpy(copy, data, n);
    int rc = tz_parse(copy, n, &z, &err);
    free(copy);
    if (rc != 0) {
        assert_null(z);
        assert_non_null(err);
        free(err);
        return rc;
    }
    assert_null(err);
    for (int64_t t = T1901; t < T2100; t += 86400 * 97 + 3607) {
        local l = ours_at(z, t);
        assert_in_range(l.off + 26 * 3600, 0, 52 * 3600);
        assert_in_range(l.wday, 0, 6);
        assert_in_range(l.minute, 0, 1439);
    }
    tz_free(z);
    return rc;
}

static void test_prefixes(void **state)
{
    size_t len;
    uint8_t *data = read_all(ZONEINFO "/Europe/Berlin", &len);
    (void)state;
    assert_int_equal(parse_copy(data, len), 0);
    for (size_t n = 0; n < len; n++) /* no proper prefix is a whole file */
        assert_int_equal(parse_copy(data, n), -1);
    free(data);
}

static void test_byte_flips(void **state)
{
    static const char *const files[] = {"Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata"};
    uint64_t rng = 0x9e3779b97f4a7c15u;
    int accepted = 0;
    (void)state;
    for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
        char path[256];
        size_t len;
        snprintf(path, sizeof(path), ZONEINFO "/%s", files[f]);
        uint8_t *data = read_all(path, &len);
        for (int round = 0; round < 3000; round++) {
            uint8_t *copy = malloc(len);
            memcpy(copy, data, len);
            int flips = 1 + round % 4;
            for (int k = 0; k < flips; k++) {
                rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                copy[(rng >> 8) % len] ^= (uint8_t)(1u << (rng % 8));
            }
            accepted += parse_copy(copy, len) == 0;
            free(copy);
        }
        free(data);
    }
    /* Flips in abbreviations and most times keep the file valid. */
    assert_true(accepted > 0);
}

static void test_oversize(void **state)
{
    uint8_t *big = calloc(1, TZ_MAX_FILE + 1);
    size_t len;
    uint8_t *data = read_all(ZONEINFO "/UTC", &len);
    tz *z = NULL;
    char *err = NULL;
    (void)state;
    memcpy(big, data, len);
    assert_int_equal(tz_parse(big, TZ_MAX_FILE + 1, &z, &err), -1);
    assert_non_null(strstr(err, "larger"));
    free(err);
    /* Trailing bytes after the footer. */
    assert_int_equal(tz_parse(big, len + 1, &z, &err), -1);
    assert_non_null(strstr(err, "trailing"));
    free(err);
    free(big);
    free(data);
}

/* Berlin's 32-bit block alone, as a version 1 file: valid through 2037. */
static void test_version1(void **state)
{
    size_t len;
    uint8_t *data = read_all(ZONEINFO "/Europe/Berlin", &len);
    tz *z = NULL;
    char *err = NULL;
    int changes = 0;
    (void)state;
    uint32_t c[6];
    for (int i = 0; i < 6; i++)
        c[i] = (uint32_t)data[20 + 4 * i] << 24 | (uint32_t)data[21 + 4 * i] << 16 |
               (uint32_t)data[22 + 4 * i] << 8 | data[23 + 4 * i];
    size_t v1 = 44 + c[3] * 5 + c[4] * 6 + c[5] + c[2] * 8 + c[1] + c[0];
    data[4] = 0;
    assert_int_equal(tz_parse(data, v1, &z, &err), 0);
    assert_int_equal(
        compare_with_glibc(z, "Europe/Berlin", T1901 + 1, T2038 - 86400 * 60, &changes), 0);
    assert_true(changes > 100);
    tz_free(z);
    assert_int_equal(tz_parse(data, v1 + 1, &z, &err), -1); /* trailing data */
    free(err);
    data[4] = '5'; /* unknown version */
    assert_int_equal(tz_parse(data, len, &z, &err), -1);
    assert_non_null(strstr(err, "version"));
    free(err);
    free(data);
}

static void test_leap_seconds_refused(void **state)
{
    FILE *f = fopen(ZONEINFO "/right/UTC", "rb");
    tz *z = NULL;
    char *err = NULL;
    (void)state;
    if (f == NULL)
        skip();
    fclose(f);
    assert_int_equal(tz_load("right/UTC", &z, &err), -1);
    assert_non_null(strstr(err, "leap-second"));
    free(err);
}

/* ---- One zone, many threads */

#define THREADS 8
static tz *shared;
static long expected[1000];

static int64_t nth_instant(int i)
{
    return (int64_t)i * 4102444 + 17;
}

static void *worker(void *arg)
{
    (void)arg;
    for (int round = 0; round < 50; round++)
        for (int i = 0; i < 1000; i++)
            if (tz_offset(shared, nth_instant(i)) != expected[i])
                return (void *)1;
    return NULL;
}

static void test_threads(void **state)
{
    pthread_t th[THREADS];
    char *err = NULL;
    (void)state;
    assert_int_equal(tz_load("America/New_York", &shared, &err), 0);
    for (int i = 0; i < 1000; i++)
        expected[i] = tz_offset(shared, nth_instant(i));
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker, NULL), 0);
    for (int i = 0; i < THREADS; i++) {
        void *r;
        assert_int_equal(pthread_join(th[i], &r), 0);
        assert_null(r);
    }
    tz_free(shared);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zones_match_glibc),
        cmocka_unit_test(test_footers_match_glibc),
        cmocka_unit_test(test_footer_dst_all_year),
        cmocka_unit_test(test_bad_footers),
        cmocka_unit_test(test_table_then_footer),
        cmocka_unit_test(test_utc),
        cmocka_unit_test(test_berlin_known),
        cmocka_unit_test(test_bad_names),
        cmocka_unit_test(test_unknown),
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_byte_flips),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_version1),
        cmocka_unit_test(test_leap_seconds_refused),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
