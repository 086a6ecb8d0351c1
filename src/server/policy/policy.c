/* Signing policies (policy.h): the strict parser and the checks. */
#include "policy/policy.h"

#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "core/cidr.h"
#include "core/tz.h"

/* The signature formats a policy may name (the API's "format" values). */
static const char *const format_names[] = {"authenticode-pe", "cms", "raw"};
#define NFORMATS (sizeof(format_names) / sizeof(format_names[0]))

static int format_index(const char *name)
{
    for (size_t i = 0; name != NULL && i < NFORMATS; i++)
        if (strcmp(name, format_names[i]) == 0)
            return (int)i;
    return -1;
}

/* Days of the week as a bit mask, bit 0 = Sunday (struct tm's tm_wday). */
#define ALL_DAYS 0x7fu

struct policy {
    json_t *doc; /* the document as parsed: policy_canonical prints it */
    int has_allowlist;
    cidr *allow;
    size_t nallow;
    int has_hours;
    unsigned days;    /* ALL_DAYS-style mask */
    int from, to;     /* minutes since local midnight; from > to: past midnight */
    tz *zone;         /* the hours' time zone */
    char **filenames; /* glob patterns, matched ignoring case */
    size_t nfilenames;
    int has_filenames;
    unsigned formats; /* bit per entry of format_names; 0: any */
    unsigned algs;    /* bit per qk_hash_alg; 0: any */
    int require_justification;
};

void policy_free(policy *p)
{
    if (p == NULL)
        return;
    json_decref(p->doc);
    free(p->allow);
    tz_free(p->zone);
    for (size_t i = 0; i < p->nfilenames; i++)
        free(p->filenames[i]);
    free(p->filenames);
    free(p);
}

static int bad(api_error *e, const char *key, const char *what)
{
    return api_fail(e, 400, "invalid_policy", "%s: %s", key, what);
}

/* A JSON array of strings (at most POLICY_MAX_LIST, each non-empty). */
static int string_array(json_t *v, const char *key, size_t *n, api_error *e)
{
    if (!json_is_array(v))
        return bad(e, key, "must be an array of strings");
    if (json_array_size(v) > POLICY_MAX_LIST)
        return api_fail(e, 400, "invalid_policy", "%s: more than %u entries", key, POLICY_MAX_LIST);
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s)
    {
        if (!json_is_string(s) || json_string_length(s) == 0)
            return api_fail(e, 400, "invalid_policy", "%s[%zu]: must be a non-empty string", key,
                            i);
    }
    *n = json_array_size(v);
    return 0;
}

static int parse_allowlist(policy *p, json_t *v, api_error *e)
{
    size_t n;
    if (string_array(v, "ip_allowlist", &n, e) != 0)
        return -1;
    p->has_allowlist = 1;
    p->allow = xcalloc(n ? n : 1, sizeof(*p->allow));
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(v, i));
        if (cidr_parse(s, &p->allow[i]) != 0)
            return api_fail(e, 400, "invalid_policy",
                            "ip_allowlist[%zu]: \"%.64s\" is not an address or range (host bits "
                            "set?)",
                            i, s);
    }
    p->nallow = n;
    return 0;
}

static int day_of(const char *s, size_t len)
{
    static const char *const names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
    for (int d = 0; d < 7; d++)
        if (len == 3 && strncmp(s, names[d], 3) == 0)
            return d;
    return -1;
}

/* "mon-fri", "sat,sun", "mon-wed,fri", "sun-sat", "fri-mon" (wrapping). */
static int parse_days(const char *s, unsigned *mask)
{
    *mask = 0;
    while (*s != '\0') {
        size_t n = strcspn(s, ",");
        const char *dash = memchr(s, '-', n);
        int a, b;
        if (dash != NULL) {
            a = day_of(s, (size_t)(dash - s));
            b = day_of(dash + 1, n - (size_t)(dash - s) - 1);
        } else {
            a = b = day_of(s, n);
        }
        if (a < 0 || b < 0)
            return -1;
        for (int d = a;; d = (d + 1) % 7) {
            *mask |= 1u << d;
            if (d == b)
                break;
        }
        s += n;
        if (*s == ',' && *++s == '\0')
            return -1; /* a trailing comma */
    }
    return *mask != 0 ? 0 : -1;
}

/* "HH:MM", 00:00 .. 24:00. */
static int parse_hhmm(const char *s, int *minutes)
{
    if (strlen(s) != 5 || s[2] != ':' || s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9' ||
        s[3] < '0' || s[3] > '5' || s[4] < '0' || s[4] > '9')
        return -1;
    int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h > 24 || (h == 24 && m != 0))
        return -1;
    *minutes = h * 60 + m;
    return 0;
}

static int parse_hours(policy *p, json_t *v, api_error *e)
{
    static const char *const keys[] = {"days", "from", "to", "timezone"};
    if (!json_is_object(v))
        return bad(e, "signing_hours", "must be an object");
    const char *k;
    json_t *m;
    json_object_foreach(v, k, m)
    {
        size_t i = 0;
        while (i < 4 && strcmp(k, keys[i]) != 0)
            i++;
        if (i == 4)
            return api_fail(e, 400, "invalid_policy", "signing_hours.%.64s: unknown key", k);
        if (!json_is_string(m))
            return api_fail(e, 400, "invalid_policy", "signing_hours.%s: must be a string", k);
    }
    const char *days = json_string_value(json_object_get(v, "days"));
    const char *from = json_string_value(json_object_get(v, "from"));
    const char *to = json_string_value(json_object_get(v, "to"));
    const char *zone = json_string_value(json_object_get(v, "timezone"));
    p->days = ALL_DAYS;
    if (days != NULL && parse_days(days, &p->days) != 0)
        return bad(e, "signing_hours.days",
                   "must be days (sun mon tue wed thu fri sat) or ranges of them, comma-separated, "
                   "e.g. \"mon-fri\"");
    if (from == NULL || to == NULL)
        return bad(e, "signing_hours", "needs \"from\" and \"to\"");
    if (parse_hhmm(from, &p->from) != 0)
        return bad(e, "signing_hours.from", "must be a time HH:MM (00:00 to 24:00)");
    if (parse_hhmm(to, &p->to) != 0)
        return bad(e, "signing_hours.to", "must be a time HH:MM (00:00 to 24:00)");
    if (p->from == p->to)
        return bad(e, "signing_hours", "\"from\" and \"to\" are the same time");
    char *err = NULL;
    if (tz_load(zone != NULL ? zone : "UTC", &p->zone, &err) != 0) {
        api_fail(e, 400, "invalid_policy", "signing_hours.timezone: %s", err);
        free(err);
        return -1;
    }
    p->has_hours = 1;
    return 0;
}

static int parse_filenames(policy *p, json_t *v, api_error *e)
{
    size_t n;
    if (string_array(v, "filenames", &n, e) != 0)
        return -1;
    p->has_filenames = 1;
    p->filenames = xcalloc(n ? n : 1, sizeof(*p->filenames));
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(v, i));
        if (strlen(s) > POLICY_MAX_PATTERN || strchr(s, '/') != NULL)
            return api_fail(e, 400, "invalid_policy",
                            "filenames[%zu]: a pattern for a file's name (no '/', at most %u "
                            "bytes)",
                            i, POLICY_MAX_PATTERN);
        p->filenames[p->nfilenames++] = xstrdup(s);
    }
    return 0;
}

static int parse_formats(policy *p, json_t *v, api_error *e)
{
    size_t n;
    if (string_array(v, "formats", &n, e) != 0)
        return -1;
    if (n == 0)
        return bad(e, "formats", "must name at least one format");
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(v, i));
        int f = format_index(s);
        if (f < 0)
            return api_fail(e, 400, "invalid_policy",
                            "formats[%zu]: \"%.32s\" is not a format (authenticode-pe, cms, raw)",
                            i, s);
        p->formats |= 1u << f;
    }
    return 0;
}

static int parse_algorithms(policy *p, json_t *v, api_error *e)
{
    size_t n;
    if (string_array(v, "algorithms", &n, e) != 0)
        return -1;
    if (n == 0)
        return bad(e, "algorithms", "must name at least one algorithm");
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(v, i));
        qk_hash_alg a;
        if (strcmp(s, "sha256") == 0)
            a = QK_HASH_SHA256;
        else if (strcmp(s, "sha384") == 0)
            a = QK_HASH_SHA384;
        else if (strcmp(s, "sha512") == 0)
            a = QK_HASH_SHA512;
        else
            return api_fail(e, 400, "invalid_policy",
                            "algorithms[%zu]: \"%.32s\" is not an algorithm (sha256, sha384, "
                            "sha512)",
                            i, s);
        p->algs |= 1u << a;
    }
    return 0;
}

int policy_parse(const uint8_t *json, size_t len, policy **out, api_error *e)
{
    *out = NULL;
    if (len > POLICY_MAX_BYTES)
        return api_fail(e, 400, "invalid_policy", "the policy is %zu bytes (limit %u)", len,
                        POLICY_MAX_BYTES);
    json_t *doc = json_in_object(json, len, e);
    if (doc == NULL) {
        e->code = "invalid_policy";
        return -1;
    }
    policy *p = xcalloc(1, sizeof(*p));
    p->doc = doc;
    const char *k;
    json_t *v;
    int rc = 0;
    json_object_foreach(doc, k, v)
    {
        if (strcmp(k, "ip_allowlist") == 0)
            rc = parse_allowlist(p, v, e);
        else if (strcmp(k, "signing_hours") == 0)
            rc = parse_hours(p, v, e);
        else if (strcmp(k, "filenames") == 0)
            rc = parse_filenames(p, v, e);
        else if (strcmp(k, "formats") == 0)
            rc = parse_formats(p, v, e);
        else if (strcmp(k, "algorithms") == 0)
            rc = parse_algorithms(p, v, e);
        else if (strcmp(k, "require_justification") == 0) {
            if (!json_is_boolean(v))
                rc = bad(e, "require_justification", "must be true or false");
            p->require_justification = json_is_true(v);
        } else if (strcmp(k, "rate_limits") == 0 || strcmp(k, "require_approval") == 0)
            rc = api_fail(e, 400, "invalid_policy",
                          "%s: not enforced by this qwickd yet, so not accepted", k);
        else
            rc = api_fail(e, 400, "invalid_policy", "%.64s: unknown key", k);
        if (rc != 0)
            break;
    }
    if (rc != 0) {
        policy_free(p);
        return -1;
    }
    *out = p;
    return 0;
}

char *policy_canonical(const policy *p)
{
    char *s = json_dumps(p->doc, JSON_COMPACT | JSON_SORT_KEYS);
    if (s == NULL) {
        fputs("qwickd: out of memory\n", stderr);
        abort();
    }
    return s;
}

static void deny(policy_decision *d, int status, const char *code, const char *rule,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void deny(policy_decision *d, int status, const char *code, const char *rule,
                 const char *fmt, ...)
{
    va_list ap;
    d->allowed = 0;
    d->status = status;
    d->code = code;
    d->rule = rule;
    va_start(ap, fmt);
    vsnprintf(d->message, sizeof(d->message), fmt, ap);
    va_end(ap);
}

/* Whether `now` falls in the window: on one of its days from `from`, until
 * `to` (the next day's, for a window past midnight). */
static int in_hours(const policy *p, int64_t now)
{
    int wday, minute;
    tz_local(p->zone, now, &wday, &minute);
    if (p->from < p->to)
        return (p->days & (1u << wday)) && minute >= p->from && minute < p->to;
    /* Past midnight: the evening part belongs to today, the morning part to
     * the window that began yesterday. */
    int yesterday = (wday + 6) % 7;
    return ((p->days & (1u << wday)) && minute >= p->from) ||
           ((p->days & (1u << yesterday)) && minute < p->to);
}

static int name_allowed(const policy *p, const char *filename)
{
    if (filename == NULL)
        return 0;
    /* The name only: a client may send a path. */
    const char *base = filename;
    for (const char *c = filename; *c != '\0'; c++)
        if (*c == '/' || *c == '\\')
            base = c + 1;
    for (size_t i = 0; i < p->nfilenames; i++)
        if (fnmatch(p->filenames[i], base, FNM_CASEFOLD | FNM_NOESCAPE) == 0)
            return 1;
    return 0;
}

void policy_check(const policy *p, const policy_request *r, policy_decision *d)
{
    memset(d, 0, sizeof(*d));
    d->allowed = 1;
    d->rule = "none";
    if (p == NULL)
        return;
    if (p->has_allowlist && (r->addr == NULL || !cidr_match(p->allow, p->nallow, r->addr))) {
        deny(d, 403, "ip_not_allowed", "ip_allowlist",
             "the client address is not in the profile's ip_allowlist");
        return;
    }
    if (p->has_hours && !in_hours(p, r->now)) {
        const char *zone = json_string_value(
            json_object_get(json_object_get(p->doc, "signing_hours"), "timezone"));
        deny(d, 403, "outside_signing_hours", "signing_hours",
             "outside the profile's signing hours (%s)", zone != NULL ? zone : "UTC");
        return;
    }
    int f = format_index(r->format);
    if (p->formats != 0 && (f < 0 || !(p->formats & (1u << f)))) {
        deny(d, 403, "format_not_allowed", "formats", "the profile's policy does not allow %.32s",
             r->format != NULL ? r->format : "(none)");
        return;
    }
    if (p->algs != 0 && !(p->algs & (1u << r->alg))) {
        deny(d, 403, "algorithm_not_allowed", "algorithms",
             "the profile's policy does not allow %s", qk_hash_name(r->alg));
        return;
    }
    if (p->has_filenames && !name_allowed(p, r->filename)) {
        if (r->filename != NULL)
            deny(d, 403, "filename_not_allowed", "filenames",
                 "the file name does not match the profile's filenames");
        else
            deny(d, 403, "filename_not_allowed", "filenames",
                 "the profile's policy needs metadata.filename");
        return;
    }
    if (p->require_justification && !r->has_justification) {
        deny(d, 400, "justification_required", "require_justification",
             "the profile's policy requires metadata.justification");
        return;
    }
}
