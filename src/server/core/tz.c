/* IANA time zones from the system's TZif files (RFC 8536, RFC 9636): the
 * transition table of the file's 64-bit block (32-bit for version 1) and,
 * after its last transition, the footer's POSIX TZ rule, evaluated here so
 * no thread touches the C library's process-wide TZ state. */
#include "core/tz.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/xalloc.h"

#define TZ_DEFAULT_DIR "/usr/share/zoneinfo"
/* Transitions name their type in one byte. */
#define TZ_MAX_TYPES 256u
/* A POSIX TZ string; real footers are under 60 bytes. */
#define TZ_MAX_FOOTER 255u
/* RFC 9636 3.2: utoff within -89999..93599; both signs get the larger bound. */
#define TZ_MAX_UTOFF 93599L
/* POSIX TZ offsets are hh[:mm[:ss]] with hh 0..24; rule times (RFC 8536
 * 3.3.1) are [+-]hhh[:mm[:ss]] with hhh 0..167. */
#define TZ_MAX_OFFSET_HOURS 24L
#define TZ_MAX_RULE_HOURS 167L
#define TZ_DAY 86400LL
/* 400 Gregorian years, after which dates and weekdays repeat (146097 days =
 * 20871 weeks): a rule is evaluated on t moved into [1970, 2370). */
#define TZ_CYCLE (146097LL * TZ_DAY)

/* One day of a POSIX TZ rule: "Jn" (1..365, February 29 never counted), "n"
 * (0..365, counted) or "Mm.w.d" (weekday d of week w, 5 = last, of month m),
 * at `secs` local time (2:00 unless "/time" says otherwise). */
typedef struct tz_rule_day {
    char kind; /* 'J', 'N' or 'M' */
    int n, m, w, d;
    long secs;
} tz_rule_day;

/* A footer: standard time, and summer time between `start` (given in
 * standard time) and `end` (given in summer time) when has_dst. */
typedef struct tz_rule {
    long std_off, dst_off; /* seconds east of UTC */
    int has_dst;
    tz_rule_day start, end;
} tz_rule;

struct tz {
    size_t timecnt;
    int64_t *times;  /* strictly ascending */
    uint8_t *idx;    /* each < typecnt */
    int32_t *utoffs; /* typecnt >= 1 of them; [0] before the first transition */
    size_t typecnt;
    int has_rule; /* the footer, after the last transition */
    tz_rule rule;
};

/* The one cursor over untrusted bytes (TZif is big-endian): never moves past
 * its end, every read returns -1 instead. */
typedef struct tz_reader {
    const uint8_t *p;
    size_t avail;
} tz_reader;

static int rd_bytes(tz_reader *r, size_t n, const uint8_t **out)
{
    if (r->avail < n)
        return -1;
    *out = r->p;
    r->p += n;
    r->avail -= n;
    return 0;
}

static int rd_sub(tz_reader *r, size_t n, tz_reader *sub)
{
    sub->avail = n;
    return rd_bytes(r, n, &sub->p);
}

static int rd_u8(tz_reader *r, uint8_t *v)
{
    const uint8_t *p;
    if (rd_bytes(r, 1, &p) != 0)
        return -1;
    *v = p[0];
    return 0;
}

static int rd_u32be(tz_reader *r, uint32_t *v)
{
    const uint8_t *p;
    if (rd_bytes(r, 4, &p) != 0)
        return -1;
    *v = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    return 0;
}

/* A signed big-endian time of 4 or 8 bytes. */
static int rd_time(tz_reader *r, size_t size, int64_t *v)
{
    const uint8_t *p;
    uint64_t u = 0;
    if (rd_bytes(r, size, &p) != 0)
        return -1;
    for (size_t i = 0; i < size; i++)
        u = u << 8 | p[i];
    *v = size == 4 ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
    return 0;
}

/* The next byte without taking it; -1 at the end. */
static int rd_peek(const tz_reader *r)
{
    return r->avail > 0 ? r->p[0] : -1;
}

/* Takes the next byte when it is `c`. */
static int rd_accept(tz_reader *r, int c)
{
    const uint8_t *p;
    return rd_peek(r) == c && rd_bytes(r, 1, &p) == 0;
}

/* The bytes before the next `c` (taken, `c` too); -1 when there is none. */
static int rd_until(tz_reader *r, uint8_t c, tz_reader *before)
{
    const uint8_t *hit = memchr(r->p, c, r->avail);
    const uint8_t *skip;
    if (hit == NULL)
        return -1;
    return rd_sub(r, (size_t)(hit - r->p), before) == 0 && rd_bytes(r, 1, &skip) == 0 ? 0 : -1;
}

/* ---- POSIX TZ strings: "std offset [dst [offset] ,start[/time],end[/time]]" */

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}
static int is_alpha(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* "CET", or "<+0530>" quoted: at least 3 characters either way. */
static int posix_name(tz_reader *s)
{
    size_t n = 0;
    if (rd_accept(s, '<')) {
        while (is_alpha(rd_peek(s)) || is_digit(rd_peek(s)) || rd_peek(s) == '+' ||
               rd_peek(s) == '-') {
            (void)rd_accept(s, rd_peek(s));
            n++;
        }
        if (!rd_accept(s, '>'))
            return -1;
    } else {
        while (is_alpha(rd_peek(s))) {
            (void)rd_accept(s, rd_peek(s));
            n++;
        }
    }
    return n >= 3 ? 0 : -1;
}

/* 1..`digits` decimal digits worth at most `max`. */
static int posix_num(tz_reader *s, int digits, long max, long *v)
{
    int n = 0;
    *v = 0;
    while (n < digits && is_digit(rd_peek(s))) {
        *v = *v * 10 + (rd_peek(s) - '0');
        (void)rd_accept(s, rd_peek(s));
        n++;
    }
    return n > 0 && *v <= max ? 0 : -1;
}

/* [+-]h[hh][:mm[:ss]] in seconds, the hours at most `max_hours`. */
static int posix_hms(tz_reader *s, long max_hours, long *secs)
{
    long h, m = 0, sec = 0;
    int neg = rd_accept(s, '-');
    if (!neg)
        (void)rd_accept(s, '+');
    if (posix_num(s, 3, max_hours, &h) != 0)
        return -1;
    if (rd_accept(s, ':')) {
        if (posix_num(s, 2, 59, &m) != 0)
            return -1;
        if (rd_accept(s, ':') && posix_num(s, 2, 59, &sec) != 0)
            return -1;
    }
    *secs = (h * 3600 + m * 60 + sec) * (neg ? -1 : 1);
    return 0;
}

/* A POSIX offset counts hours west; ours count seconds east. */
static int posix_offset(tz_reader *s, long *east)
{
    long west;
    if (posix_hms(s, TZ_MAX_OFFSET_HOURS, &west) != 0)
        return -1;
    *east = -west;
    return 0;
}

static int posix_day(tz_reader *s, tz_rule_day *d)
{
    long a, b = 0, c = 0;
    d->kind = rd_accept(s, 'M') ? 'M' : rd_accept(s, 'J') ? 'J' : 'N';
    if (d->kind == 'M') {
        if (posix_num(s, 2, 12, &a) != 0 || a < 1 || !rd_accept(s, '.') ||
            posix_num(s, 1, 5, &b) != 0 || b < 1 || !rd_accept(s, '.') ||
            posix_num(s, 1, 6, &c) != 0)
            return -1;
    } else if (posix_num(s, 3, 365, &a) != 0 || (d->kind == 'J' && a < 1)) {
        return -1;
    }
    d->n = (int)a;
    d->m = (int)a;
    d->w = (int)b;
    d->d = (int)c;
    d->secs = 2 * 3600;
    if (rd_accept(s, '/') && posix_hms(s, TZ_MAX_RULE_HOURS, &d->secs) != 0)
        return -1;
    return 0;
}

/* The whole of `s` as a rule. Summer time without ",start,end" is refused:
 * POSIX leaves its dates to the implementation, and zic always writes them. */
static int posix_parse(tz_reader *s, tz_rule *r)
{
    memset(r, 0, sizeof(*r));
    if (posix_name(s) != 0 || posix_offset(s, &r->std_off) != 0)
        return -1;
    if (s->avail == 0)
        return 0;
    r->has_dst = 1;
    if (posix_name(s) != 0)
        return -1;
    r->dst_off = r->std_off + 3600;
    if (rd_peek(s) != ',' && posix_offset(s, &r->dst_off) != 0)
        return -1;
    if (!rd_accept(s, ',') || posix_day(s, &r->start) != 0 || !rd_accept(s, ',') ||
        posix_day(s, &r->end) != 0)
        return -1;
    return s->avail == 0 ? 0 : -1;
}

/* ---- Calendar arithmetic (proleptic Gregorian, days since 1970-01-01) */

/* Division rounding down, for b > 0 (no overflow, even at INT64_MIN). */
static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b < 0);
}
static int64_t floor_mod(int64_t a, int64_t b)
{
    int64_t r = a % b;
    return r < 0 ? r + b : r;
}

static int is_leap(int64_t y)
{
    return y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
}

static int month_days(int64_t y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return days[m - 1] + (m == 2 && is_leap(y));
}

/* H. Hinnant's days_from_civil. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The year of a day (H. Hinnant's civil_from_days, the year only). */
static int64_t year_of_day(int64_t days)
{
    int64_t z = days + 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    return yoe + era * 400 + (mp >= 10);
}

/* The unix time of `d` in year y, its time of day being local time `off`
 * seconds east of UTC. */
static int64_t rule_when(const tz_rule_day *d, int64_t y, long off)
{
    int64_t day;
    if (d->kind == 'J') {
        day = days_from_civil(y, 1, 1) + d->n - 1 + (is_leap(y) && d->n >= 60);
    } else if (d->kind == 'N') {
        day = days_from_civil(y, 1, 1) + d->n;
    } else {
        int64_t first = days_from_civil(y, d->m, 1);
        int wday = (int)floor_mod(first + 4, 7); /* 1970-01-01 was a Thursday */
        int mday = 1 + (d->d - wday + 7) % 7 + (d->w - 1) * 7;
        while (mday > month_days(y, d->m))
            mday -= 7;
        day = first + mday - 1;
    }
    return day * TZ_DAY + d->secs - off;
}

/* The offset the rule gives at t: the state set by the latest change at or
 * before t, among those of the years around it (rule times of up to 167 h
 * move a change into the next year). A later change wins a tie, so
 * "EST5EDT,0/0,J365/25" (summer time all year) has no gap at New Year. */
static long rule_offset(const tz_rule *r, int64_t t)
{
    if (!r->has_dst)
        return r->std_off;
    int64_t u = floor_mod(t, TZ_CYCLE);
    int64_t y = year_of_day(floor_div(u, TZ_DAY));
    int64_t latest = INT64_MIN;
    int dst = 0;
    for (int64_t yy = y - 2; yy <= y + 1; yy++) {
        int64_t on = rule_when(&r->start, yy, r->std_off);
        int64_t off = rule_when(&r->end, yy, r->dst_off);
        if (on <= u && on >= latest) {
            latest = on;
            dst = 1;
        }
        if (off <= u && off >= latest) {
            latest = off;
            dst = 0;
        }
    }
    return dst ? r->dst_off : r->std_off;
}

/* ---- TZif */

typedef struct tzif_header {
    uint8_t version; /* 0, '2', '3' or '4' */
    uint32_t isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt;
} tzif_header;

static const char *read_header(tz_reader *r, tzif_header *h)
{
    const uint8_t *magic, *unused;
    if (rd_bytes(r, 4, &magic) != 0 || memcmp(magic, "TZif", 4) != 0)
        return "not a TZif file";
    if (rd_u8(r, &h->version) != 0 || rd_bytes(r, 15, &unused) != 0 ||
        rd_u32be(r, &h->isutcnt) != 0 || rd_u32be(r, &h->isstdcnt) != 0 ||
        rd_u32be(r, &h->leapcnt) != 0 || rd_u32be(r, &h->timecnt) != 0 ||
        rd_u32be(r, &h->typecnt) != 0 || rd_u32be(r, &h->charcnt) != 0)
        return "truncated TZif header";
    if (h->version != 0 && (h->version < '2' || h->version > '4'))
        return "unsupported TZif version";
    return NULL;
}

/* The data block's size for times of `tsize` bytes (no overflow: counts are
 * 32-bit, the sum is 64-bit). */
static uint64_t block_size(const tzif_header *h, size_t tsize)
{
    return (uint64_t)h->timecnt * (tsize + 1) + (uint64_t)h->typecnt * 6 + h->charcnt +
           (uint64_t)h->leapcnt * (tsize + 4) + h->isstdcnt + h->isutcnt;
}

static const char *read_types(tz_reader *r, const tzif_header *h, tz *z)
{
    z->typecnt = h->typecnt;
    z->utoffs = xcalloc(z->typecnt, sizeof(*z->utoffs));
    for (size_t i = 0; i < z->typecnt; i++) {
        uint32_t utoff;
        uint8_t isdst, desig;
        if (rd_u32be(r, &utoff) != 0 || rd_u8(r, &isdst) != 0 || rd_u8(r, &desig) != 0)
            return "truncated TZif data";
        z->utoffs[i] = (int32_t)utoff;
        if (z->utoffs[i] < -TZ_MAX_UTOFF || z->utoffs[i] > TZ_MAX_UTOFF)
            return "TZif UT offset out of range";
        if (isdst > 1 || desig >= h->charcnt)
            return "bad TZif local time type";
    }
    return NULL;
}

/* The data block after header `h`, times of `tsize` bytes, into z. */
static const char *read_block(tz_reader *r, const tzif_header *h, size_t tsize, tz *z)
{
    const uint8_t *chars;
    tz_reader flags;
    if (h->typecnt == 0 || h->typecnt > TZ_MAX_TYPES)
        return "bad TZif type count";
    if ((h->isutcnt != 0 && h->isutcnt != h->typecnt) ||
        (h->isstdcnt != 0 && h->isstdcnt != h->typecnt))
        return "bad TZif indicator count";
    if (h->leapcnt != 0)
        return "TZif leap-second records (\"right/\" zones) are not supported";
    if (block_size(h, tsize) > r->avail) /* before allocating by the counts */
        return "truncated TZif data";
    z->timecnt = h->timecnt;
    z->times = xcalloc(z->timecnt + 1, sizeof(*z->times));
    z->idx = xcalloc(z->timecnt + 1, sizeof(*z->idx));
    for (size_t i = 0; i < z->timecnt; i++) {
        if (rd_time(r, tsize, &z->times[i]) != 0)
            return "truncated TZif data";
        if (i > 0 && z->times[i] <= z->times[i - 1])
            return "TZif transition times not ascending";
    }
    for (size_t i = 0; i < z->timecnt; i++) {
        if (rd_u8(r, &z->idx[i]) != 0)
            return "truncated TZif data";
        if (z->idx[i] >= h->typecnt)
            return "TZif transition to an undefined type";
    }
    const char *why = read_types(r, h, z);
    if (why != NULL)
        return why;
    if (rd_bytes(r, h->charcnt, &chars) != 0 ||
        rd_sub(r, (size_t)h->isstdcnt + h->isutcnt, &flags) != 0)
        return "truncated TZif data";
    for (uint8_t f; rd_u8(&flags, &f) == 0;)
        if (f > 1)
            return "bad TZif standard/UT indicator";
    return NULL;
}

/* "\n<POSIX TZ>\n" closing the file; an empty string leaves the last type in
 * force after the last transition. */
static const char *read_footer(tz_reader *r, tz *z)
{
    tz_reader s;
    if (!rd_accept(r, '\n') || rd_until(r, '\n', &s) != 0)
        return "truncated TZif footer";
    if (s.avail > TZ_MAX_FOOTER)
        return "TZif footer too long";
    if (r->avail != 0)
        return "trailing data after the TZif footer";
    if (s.avail == 0)
        return NULL;
    if (posix_parse(&s, &z->rule) != 0)
        return "bad POSIX TZ string in the TZif footer";
    z->has_rule = 1;
    return NULL;
}

static const char *read_tzif(const uint8_t *data, size_t len, tz *z)
{
    tz_reader r = {data, len}, v1;
    tzif_header h, h2;
    const char *why = read_header(&r, &h);
    if (why != NULL)
        return why;
    if (h.version == 0) {
        why = read_block(&r, &h, 4, z);
        return why != NULL ? why : r.avail != 0 ? "trailing data after the TZif data" : NULL;
    }
    /* Version 2+: the 32-bit block is only skipped. */
    if (block_size(&h, 4) > r.avail || rd_sub(&r, (size_t)block_size(&h, 4), &v1) != 0)
        return "truncated TZif data";
    if ((why = read_header(&r, &h2)) != NULL)
        return why;
    if (h2.version != h.version)
        return "TZif headers disagree on the version";
    if ((why = read_block(&r, &h2, 8, z)) != NULL)
        return why;
    return read_footer(&r, z);
}

int tz_parse(const uint8_t *data, size_t len, tz **out, char **err)
{
    int rc = -1;
    tz *z = NULL;
    const char *why;
    *out = NULL;
    *err = NULL;
    if (len > TZ_MAX_FILE) {
        *err = xasprintf("TZif data larger than %u bytes", TZ_MAX_FILE);
        goto out;
    }
    z = xcalloc(1, sizeof(*z));
    if ((why = read_tzif(data, len, z)) != NULL) {
        *err = xstrdup(why);
        goto out;
    }
    *out = z;
    z = NULL;
    rc = 0;
out:
    tz_free(z);
    return rc;
}

void tz_free(tz *z)
{
    if (z == NULL)
        return;
    free(z->times);
    free(z->idx);
    free(z->utoffs);
    free(z);
}

long tz_offset(const tz *z, int64_t t)
{
    if (z->timecnt == 0)
        return z->has_rule ? rule_offset(&z->rule, t) : z->utoffs[0];
    if (t < z->times[0])
        return z->utoffs[0];
    if (t > z->times[z->timecnt - 1] && z->has_rule)
        return rule_offset(&z->rule, t);
    size_t lo = 0, hi = z->timecnt; /* times[lo] <= t < times[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (z->times[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return z->utoffs[z->idx[lo]];
}

void tz_local(const tz *z, int64_t t, int *wday, int *minute_of_day)
{
    /* Moved into [1970, 2370) first: the cycle is whole weeks and days, and
     * t + offset can no longer overflow. */
    int64_t local = floor_mod(t, TZ_CYCLE) + tz_offset(z, t);
    *wday = (int)floor_mod(floor_div(local, TZ_DAY) + 4, 7);
    *minute_of_day = (int)(floor_mod(local, TZ_DAY) / 60);
}

/* ---- Loading by name */

/* IANA names: components of [A-Za-z0-9_+-] between single slashes, so no
 * absolute path, "." or ".." can be formed. */
static int name_ok(const char *name)
{
    size_t n = strnlen(name, TZ_MAX_NAME + 1), comp = 0;
    if (n == 0 || n > TZ_MAX_NAME)
        return 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)name[i];
        if (c == '/') {
            if (comp == 0)
                return 0;
            comp = 0;
        } else if (is_alpha(c) || is_digit(c) || c == '_' || c == '+' || c == '-') {
            comp++;
        } else {
            return 0;
        }
    }
    return comp > 0;
}

/* A refused name fit to quote: at most TZ_MAX_NAME bytes, printable, no
 * quotes or backslashes. */
static void name_shown(const char *name, char *buf, size_t size)
{
    size_t n = strnlen(name, TZ_MAX_NAME + 1), k = 0;
    for (size_t i = 0; i < n && i < TZ_MAX_NAME && k + 1 < size; i++) {
        unsigned char c = (unsigned char)name[i];
        buf[k++] = c < 0x20 || c > 0x7e || c == '"' || c == '\\' ? '?' : (char)c;
    }
    buf[k] = '\0';
    if (n > TZ_MAX_NAME && k + 4 <= size)
        memcpy(buf + k, "...", 4);
}

/* The file at `path`, at most TZ_MAX_FILE bytes: 0, or -1 with errno set
 * (EFBIG when too large, ENOENT for something that is not a regular file). */
static int read_file(const char *path, uint8_t **data, size_t *len)
{
    struct stat st;
    int rc = -1, e = 0;
    uint8_t *buf = NULL;
    size_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) != 0) {
        e = errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        e = ENOENT; /* "Europe" is a directory, not a zone */
        goto out;
    }
    buf = xmalloc(TZ_MAX_FILE + 1);
    for (;;) {
        ssize_t got = read(fd, buf + n, TZ_MAX_FILE + 1 - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            e = errno;
            goto out;
        }
        if (got == 0)
            break;
        n += (size_t)got;
        if (n > TZ_MAX_FILE) {
            e = EFBIG;
            goto out;
        }
    }
    *data = buf;
    *len = n;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    close(fd);
    errno = e;
    return rc;
}

static tz *utc_zone(void)
{
    tz *z = xcalloc(1, sizeof(*z));
    z->typecnt = 1;
    z->utoffs = xcalloc(1, sizeof(*z->utoffs));
    return z;
}

int tz_load(const char *name, tz **out, char **err)
{
    char shown[TZ_MAX_NAME + 4], ebuf[128];
    const char *dir = getenv("TZDIR");
    char *path = NULL, *why = NULL;
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = -1;
    *out = NULL;
    *err = NULL;
    name_shown(name, shown, sizeof(shown));
    if (!name_ok(name)) {
        *err = xasprintf("invalid time zone name \"%s\"", shown);
        goto out;
    }
    if (strcmp(name, "UTC") == 0) {
        *out = utc_zone();
        rc = 0;
        goto out;
    }
    path = xasprintf("%s/%s", dir != NULL && *dir != '\0' ? dir : TZ_DEFAULT_DIR, name);
    if (read_file(path, &data, &len) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            *err = xasprintf("unknown time zone \"%s\"", shown);
        else if (errno == EFBIG)
            *err =
                xasprintf("time zone \"%s\": %s is larger than %u bytes", shown, path, TZ_MAX_FILE);
        else
            *err = xasprintf("time zone \"%s\": %s: %s", shown, path,
                             strerror_r(errno, ebuf, sizeof(ebuf)));
        goto out;
    }
    if (tz_parse(data, len, out, &why) != 0) {
        *err = xasprintf("time zone \"%s\": %s: %s", shown, path, why);
        goto out;
    }
    rc = 0;
out:
    free(why);
    free(data);
    free(path);
    return rc;
}
