/* qwickd metrics: the exposition text, label escaping, bounded cardinality,
 * and counts that add up under concurrent updates. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/metrics.h"

static char *render(metrics *m)
{
    size_t len = 0;
    char *t = metrics_render(m, &len);
    assert_non_null(t);
    assert_int_equal(strlen(t), len);
    return t;
}

static void exposition(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    assert_non_null(m);
    metrics_request(m, "sign_digest", "POST", 200, 0.003);
    metrics_request(m, "sign_digest", "POST", 200, 0.2);
    metrics_request(m, "sign_digest", "POST", 400, 0.0001);
    metrics_signature(m, "default", "sha256", "cms");
    metrics_error(m, "unknown_field");
    metrics_timestamp(m, 0);
    metrics_inflight_add(m, 2);
    metrics_inflight_add(m, -1);
    char *t = render(m);
    assert_non_null(strstr(t, "# TYPE qwickd_http_requests_total counter\n"));
    assert_non_null(strstr(t, "qwickd_http_requests_total{route=\"sign_digest\",method=\"POST\","
                              "status=\"200\"} 2\n"));
    assert_non_null(strstr(t, "status=\"400\"} 1\n"));
    assert_non_null(strstr(t, "# TYPE qwickd_http_request_duration_seconds histogram\n"));
    /* cumulative buckets: 0.0001 <= 0.0005; 0.003 <= 0.005; 0.2 <= 0.25 */
    assert_non_null(strstr(t, "_bucket{route=\"sign_digest\",le=\"0.0005\"} 1\n"));
    assert_non_null(strstr(t, "_bucket{route=\"sign_digest\",le=\"0.005\"} 2\n"));
    assert_non_null(strstr(t, "_bucket{route=\"sign_digest\",le=\"0.25\"} 3\n"));
    assert_non_null(strstr(t, "_bucket{route=\"sign_digest\",le=\"+Inf\"} 3\n"));
    assert_non_null(
        strstr(t, "qwickd_http_request_duration_seconds_count{route=\"sign_digest\"} 3\n"));
    assert_non_null(strstr(t, "qwickd_signatures_total{profile=\"default\",algorithm=\"sha256\","
                              "format=\"cms\"} 1\n"));
    assert_non_null(strstr(t, "qwickd_errors_total{code=\"unknown_field\"} 1\n"));
    assert_non_null(strstr(t, "qwickd_tsa_responses_total{status=\"0\"} 1\n"));
    assert_non_null(strstr(t, "qwickd_http_requests_in_flight 1\n"));
    assert_int_equal(metrics_inflight(m), 1);
    free(t);
    metrics_free(m);
}

/* A profile name is admin-chosen text: it must not break the format. */
static void escapes_labels(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    metrics_signature(m, "a\"b\\c\nd", "sha256", "raw");
    char *t = render(m);
    assert_non_null(strstr(t, "profile=\"a\\\"b\\\\c\\nd\""));
    free(t);
    metrics_free(m);
}

static void bounded_series(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    char code[32];
    for (int i = 0; i < METRICS_MAX_SERIES * 3; i++) {
        snprintf(code, sizeof(code), "code_%d", i);
        metrics_error(m, code);
    }
    char *t = render(m);
    size_t lines = 0;
    for (const char *p = t; (p = strstr(p, "qwickd_errors_total{")) != NULL; p++)
        lines++;
    assert_int_equal(lines, METRICS_MAX_SERIES);
    /* everything past the limit lands in "other" */
    char want[64];
    snprintf(want, sizeof(want), "{code=\"other\"} %d\n", METRICS_MAX_SERIES * 2 + 1);
    assert_non_null(strstr(t, want));
    free(t);
    metrics_free(m);
}

/* Methods come from clients: 300 junk ones must not crowd out real ones. */
static void junk_methods(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    char method[32];
    for (int i = 0; i < 300; i++) {
        snprintf(method, sizeof(method), "JUNK%d", i);
        metrics_request(m, "not_found", method, 405, 0.001);
    }
    metrics_request(m, "healthz", "GET", 200, 0.001);
    char *t = render(m);
    assert_non_null(strstr(t, "{route=\"healthz\",method=\"GET\",status=\"200\"} 1\n"));
    assert_non_null(strstr(t, "{route=\"not_found\",method=\"other\",status=\"405\"} 300\n"));
    assert_null(strstr(t, "JUNK"));
    free(t);
    metrics_free(m);
}

static void *hammer(void *p)
{
    metrics *m = p;
    for (int i = 0; i < 10000; i++) {
        metrics_request(m, "healthz", "GET", 200, 0.001);
        metrics_signature(m, "default", "sha512", "authenticode-pe");
    }
    return NULL;
}

static void concurrent_counts(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer, m), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    char *text = render(m);
    assert_non_null(strstr(text, "route=\"healthz\",method=\"GET\",status=\"200\"} 40000\n"));
    assert_non_null(strstr(text, "format=\"authenticode-pe\"} 40000\n"));
    free(text);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(exposition),
        cmocka_unit_test(escapes_labels),
        cmocka_unit_test(bounded_series),
        cmocka_unit_test(junk_methods),
        cmocka_unit_test(concurrent_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
