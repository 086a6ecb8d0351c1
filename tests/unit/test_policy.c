/* Unit tests for src/server/policy/policy.c: the strict parser (every bad
 * value refused with its key named) and each rule's decision, signing hours
 * in another time zone included. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "policy/policy.h"

static policy *parse_ok(const char *doc)
{
    policy *p = NULL;
    api_error e;
    if (policy_parse((const uint8_t *)doc, strlen(doc), &p, &e) != 0)
        fail_msg("refused: %s: %s", doc, e.message);
    return p;
}

/* Expects `doc` refused with a message containing `key`. */
static void refused(const char *doc, const char *key)
{
    policy *p = NULL;
    api_error e;
    if (policy_parse((const uint8_t *)doc, strlen(doc), &p, &e) == 0)
        fail_msg("accepted: %s", doc);
    assert_null(p);
    assert_int_equal(e.status, 400);
    assert_string_equal(e.code, "invalid_policy");
    if (strstr(e.message, key) == NULL)
        fail_msg("%s: message \"%s\" does not name %s", doc, e.message, key);
}

static void test_refusals(void **state)
{
    (void)state;
    refused("", "");
    refused("[]", "");
    refused("{\"ip_allowlist\": \"10.0.0.0/8\"}", "ip_allowlist");
    refused("{\"ip_allowlist\": [\"10.0.0.1/8\"]}", "ip_allowlist[0]");
    refused("{\"ip_allowlist\": [\"10.0.0.0/8\", \"nonsense\"]}", "ip_allowlist[1]");
    refused("{\"ip_allowlist\": [5]}", "ip_allowlist[0]");
    refused("{\"signing_hours\": {\"from\": \"08:00\"}}", "signing_hours");
    refused("{\"signing_hours\": {\"from\": \"8:00\", \"to\": \"18:00\"}}", "signing_hours.from");
    refused("{\"signing_hours\": {\"from\": \"08:00\", \"to\": \"25:00\"}}", "signing_hours.to");
    refused("{\"signing_hours\": {\"from\": \"08:00\", \"to\": \"08:00\"}}", "signing_hours");
    refused("{\"signing_hours\": {\"days\": \"mon-xyz\", \"from\": \"08:00\", \"to\": \"18:00\"}}",
            "signing_hours.days");
    refused("{\"signing_hours\": {\"days\": \"mon,\", \"from\": \"08:00\", \"to\": \"18:00\"}}",
            "signing_hours.days");
    refused("{\"signing_hours\": {\"from\": \"08:00\", \"to\": \"18:00\", \"timezone\": "
            "\"Mars/Base\"}}",
            "signing_hours.timezone");
    refused("{\"signing_hours\": {\"from\": \"08:00\", \"to\": \"18:00\", \"timezone\": "
            "\"../../etc/passwd\"}}",
            "signing_hours.timezone");
    refused("{\"signing_hours\": {\"from\": \"08:00\", \"to\": \"18:00\", \"tz\": \"UTC\"}}",
            "signing_hours.tz");
    refused("{\"filenames\": [\"a/*.exe\"]}", "filenames[0]");
    refused("{\"formats\": [\"msi\"]}", "formats[0]");
    refused("{\"formats\": []}", "formats");
    refused("{\"algorithms\": [\"sha1\"]}", "algorithms[0]");
    refused("{\"require_justification\": \"yes\"}", "require_justification");
    refused("{\"rate_limits\": []}", "rate_limits");
    refused("{\"require_approval\": {\"approvals\": 2}}", "require_approval");
    refused("{\"colour\": \"blue\"}", "colour");
    refused("{\"formats\": [\"cms\"], \"formats\": [\"raw\"]}", ""); /* duplicate key */
}

static void test_canonical(void **state)
{
    (void)state;
    policy *p = parse_ok("{ \"require_justification\": true, \"algorithms\": [\"sha256\"] }");
    char *c = policy_canonical(p);
    assert_string_equal(c, "{\"algorithms\":[\"sha256\"],\"require_justification\":true}");
    free(c);
    policy_free(p);
    p = parse_ok("{}");
    policy_decision d;
    policy_request r = {.now = 0, .format = "raw", .alg = QK_HASH_SHA512};
    policy_check(p, &r, &d);
    assert_true(d.allowed);
    policy_free(p);
    policy_check(NULL, &r, &d);
    assert_true(d.allowed);
    assert_string_equal(d.rule, "none");
}

static struct sockaddr_storage addr(const char *s)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, s, &v4->sin_addr) == 1)
        v4->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, s, &v6->sin6_addr) == 1)
        v6->sin6_family = AF_INET6;
    else
        fail_msg("bad address %s", s);
    return ss;
}

static void expect(const policy *p, const policy_request *r, const char *code, const char *rule)
{
    policy_decision d;
    policy_check(p, r, &d);
    if (code == NULL) {
        if (!d.allowed)
            fail_msg("denied by %s (%s): %s", d.rule, d.code, d.message);
        return;
    }
    if (d.allowed)
        fail_msg("allowed, expected %s", code);
    assert_string_equal(d.code, code);
    assert_string_equal(d.rule, rule);
    assert_true(d.message[0] != '\0');
}

static void test_rules(void **state)
{
    (void)state;
    policy *p =
        parse_ok("{\"ip_allowlist\": [\"10.0.0.0/8\", \"127.0.0.1/32\", \"2001:db8::/32\"],"
                 " \"filenames\": [\"*.exe\", \"*.dll\"], \"formats\": [\"authenticode-pe\"],"
                 " \"algorithms\": [\"sha256\", \"sha384\"], \"require_justification\": true}");
    struct sockaddr_storage in = addr("10.9.8.7"), in6 = addr("2001:db8:1::5"),
                            out = addr("192.168.1.1"), out6 = addr("2001:db9::1"),
                            lo = addr("127.0.0.1");
    policy_request r = {.addr = (struct sockaddr *)&in,
                        .now = 1700000000,
                        .filename = "App.EXE",
                        .format = "authenticode-pe",
                        .alg = QK_HASH_SHA256,
                        .has_justification = 1};
    expect(p, &r, NULL, NULL);
    r.addr = (struct sockaddr *)&in6;
    expect(p, &r, NULL, NULL);
    r.addr = (struct sockaddr *)&lo;
    expect(p, &r, NULL, NULL);
    r.addr = (struct sockaddr *)&out;
    expect(p, &r, "ip_not_allowed", "ip_allowlist");
    r.addr = (struct sockaddr *)&out6;
    expect(p, &r, "ip_not_allowed", "ip_allowlist");
    r.addr = NULL;
    expect(p, &r, "ip_not_allowed", "ip_allowlist");
    r.addr = (struct sockaddr *)&in;
    r.format = "cms";
    expect(p, &r, "format_not_allowed", "formats");
    r.format = "authenticode-pe";
    r.alg = QK_HASH_SHA512;
    expect(p, &r, "algorithm_not_allowed", "algorithms");
    r.alg = QK_HASH_SHA384;
    r.filename = "setup.msi";
    expect(p, &r, "filename_not_allowed", "filenames");
    r.filename = "C:\\\\build\\\\out\\\\lib.dll"; /* a path: its last component counts */
    expect(p, &r, NULL, NULL);
    r.filename = "dist/tool.exe";
    expect(p, &r, NULL, NULL);
    r.filename = NULL;
    expect(p, &r, "filename_not_allowed", "filenames");
    r.filename = "a.exe";
    r.has_justification = 0;
    expect(p, &r, "justification_required", "require_justification");
    /* The first rule in order decides: address before everything else. */
    r.addr = (struct sockaddr *)&out;
    r.format = "raw";
    expect(p, &r, "ip_not_allowed", "ip_allowlist");
    policy_free(p);
}

/* 2026-01-05 is a Monday. Berlin is UTC+1 in January, UTC+2 in July. */
#define MON_2026_01_05_UTC 1767571200LL
#define H (3600LL)

static void test_hours(void **state)
{
    (void)state;
    policy *p = parse_ok("{\"signing_hours\": {\"days\": \"mon-fri\", \"from\": \"08:00\", "
                         "\"to\": \"18:00\", \"timezone\": \"Europe/Berlin\"}}");
    policy_request r = {.format = "authenticode-pe", .alg = QK_HASH_SHA256};
    int64_t mon = MON_2026_01_05_UTC;
    r.now = mon + 7 * H; /* 08:00 Berlin */
    expect(p, &r, NULL, NULL);
    r.now = mon + 7 * H - 1; /* 07:59:59 */
    expect(p, &r, "outside_signing_hours", "signing_hours");
    r.now = mon + 17 * H - 1; /* 17:59:59 */
    expect(p, &r, NULL, NULL);
    r.now = mon + 17 * H; /* 18:00: the end is excluded */
    expect(p, &r, "outside_signing_hours", "signing_hours");
    r.now = mon + 5 * 24 * H + 10 * H; /* Saturday 11:00 */
    expect(p, &r, "outside_signing_hours", "signing_hours");
    /* Sunday 23:30 UTC is Monday 00:30 in Berlin: outside the hours, but a Monday. */
    r.now = mon - 30 * 60;
    expect(p, &r, "outside_signing_hours", "signing_hours");
    /* Summer time: 2026-07-06 (a Monday) 06:00 UTC is 08:00 in Berlin. */
    int64_t jul = mon + 182 * 24 * H;
    r.now = jul + 6 * H;
    expect(p, &r, NULL, NULL);
    r.now = jul + 6 * H - 1;
    expect(p, &r, "outside_signing_hours", "signing_hours");
    policy_free(p);

    /* Past midnight: Friday 22:00 to Saturday 06:00 belongs to Friday. */
    p = parse_ok(
        "{\"signing_hours\": {\"days\": \"fri\", \"from\": \"22:00\", \"to\": \"06:00\"}}");
    int64_t fri = mon + 4 * 24 * H;
    r.now = fri + 23 * H;
    expect(p, &r, NULL, NULL);
    r.now = fri + 24 * H + 5 * H;
    expect(p, &r, NULL, NULL);
    r.now = fri + 24 * H + 6 * H;
    expect(p, &r, "outside_signing_hours", "signing_hours");
    r.now = fri + 5 * H; /* Friday 05:00 belongs to Thursday's window */
    expect(p, &r, "outside_signing_hours", "signing_hours");
    policy_free(p);

    /* Wrapping day ranges and lists. */
    p = parse_ok("{\"signing_hours\": {\"days\": \"sat-sun,wed\", \"from\": \"00:00\", "
                 "\"to\": \"24:00\"}}");
    r.now = mon + 2 * 24 * H + 1; /* Wednesday */
    expect(p, &r, NULL, NULL);
    r.now = mon + 1 * 24 * H; /* Tuesday */
    expect(p, &r, "outside_signing_hours", "signing_hours");
    r.now = mon - 1; /* Sunday 23:59:59 */
    expect(p, &r, NULL, NULL);
    policy_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_canonical),
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_hours),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
