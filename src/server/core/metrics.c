#include "core/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Latency buckets in seconds: a signature is ~1-5 ms of RSA, so most of the
 * resolution sits between 1 ms and 100 ms. */
static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1,    0.25,  0.5,    1.0,   2.5,  10.0};
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))
#define MAX_LABELS 3

typedef struct series {
    char labels[MAX_LABELS][METRICS_MAX_LABEL];
    uint64_t count;
    /* Histogram part (only used by the latency family). */
    uint64_t bucket[NBUCKETS];
    double sum;
} series;

typedef struct family {
    pthread_mutex_t lock;
    size_t nlabels;
    size_t n;
    series *s; /* METRICS_MAX_SERIES entries */
} family;

struct metrics {
    family requests;   /* route, method, status */
    family latency;    /* route */
    family signatures; /* profile, algorithm, format */
    family errors;     /* code */
    family timestamps; /* status */
    family dropped;    /* reason */
    atomic_long inflight;
};

static int family_init(family *f, size_t nlabels)
{
    f->nlabels = nlabels;
    f->n = 0;
    f->s = calloc(METRICS_MAX_SERIES, sizeof(series));
    if (f->s == NULL)
        return -1;
    pthread_mutex_init(&f->lock, NULL);
    return 0;
}

static void family_free(family *f)
{
    if (f->s == NULL)
        return;
    pthread_mutex_destroy(&f->lock);
    free(f->s);
    f->s = NULL;
}

metrics *metrics_new(void)
{
    metrics *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    if (family_init(&m->requests, 3) != 0 || family_init(&m->latency, 1) != 0 ||
        family_init(&m->signatures, 3) != 0 || family_init(&m->errors, 1) != 0 ||
        family_init(&m->timestamps, 1) != 0 || family_init(&m->dropped, 1) != 0) {
        metrics_free(m);
        return NULL;
    }
    atomic_init(&m->inflight, 0);
    return m;
}

void metrics_free(metrics *m)
{
    if (m == NULL)
        return;
    family_free(&m->requests);
    family_free(&m->latency);
    family_free(&m->signatures);
    family_free(&m->errors);
    family_free(&m->timestamps);
    family_free(&m->dropped);
    free(m);
}

/* Finds or adds the series for `vals`; caller holds the lock. The last slot is
 * reserved for the "other" overflow series. */
static series *lookup(family *f, const char *const *vals)
{
    for (size_t i = 0; i < f->n; i++) {
        size_t k = 0;
        while (k < f->nlabels && strncmp(f->s[i].labels[k], vals[k], METRICS_MAX_LABEL - 1) == 0)
            k++;
        if (k == f->nlabels)
            return &f->s[i];
    }
    series *s;
    if (f->n < METRICS_MAX_SERIES - 1) {
        s = &f->s[f->n++];
        for (size_t k = 0; k < f->nlabels; k++)
            snprintf(s->labels[k], METRICS_MAX_LABEL, "%s", vals[k] ? vals[k] : "");
        return s;
    }
    s = &f->s[METRICS_MAX_SERIES - 1];
    if (f->n == METRICS_MAX_SERIES - 1) {
        f->n++;
        for (size_t k = 0; k < f->nlabels; k++)
            snprintf(s->labels[k], METRICS_MAX_LABEL, "other");
    }
    return s;
}

static void count(family *f, const char *const *vals)
{
    pthread_mutex_lock(&f->lock);
    lookup(f, vals)->count++;
    pthread_mutex_unlock(&f->lock);
}

/* The method label from a fixed set: it comes from the client, and junk
 * methods must not use up the family's series (they were seen to push real
 * traffic into "other"). */
static const char *method_label(const char *method)
{
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    for (size_t i = 0; method != NULL && i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(method, known[i]) == 0)
            return known[i];
    return "other";
}

void metrics_request(metrics *m, const char *route, const char *method, int status, double seconds)
{
    char st[16];
    snprintf(st, sizeof(st), "%d", status);
    const char *rv[3] = {route, method_label(method), st};
    count(&m->requests, rv);

    const char *lv[1] = {route};
    pthread_mutex_lock(&m->latency.lock);
    series *s = lookup(&m->latency, lv);
    s->count++;
    s->sum += seconds;
    for (size_t i = 0; i < NBUCKETS; i++)
        if (seconds <= buckets[i])
            s->bucket[i]++;
    pthread_mutex_unlock(&m->latency.lock);
}

void metrics_signature(metrics *m, const char *profile, const char *algorithm, const char *format)
{
    const char *v[3] = {profile, algorithm, format};
    count(&m->signatures, v);
}

void metrics_error(metrics *m, const char *code)
{
    const char *v[1] = {code};
    count(&m->errors, v);
}

void metrics_timestamp(metrics *m, int status)
{
    char st[16];
    snprintf(st, sizeof(st), "%d", status);
    const char *v[1] = {st};
    count(&m->timestamps, v);
}

void metrics_connection_dropped(metrics *m, const char *reason)
{
    const char *v[1] = {reason};
    count(&m->dropped, v);
}

void metrics_inflight_add(metrics *m, int delta)
{
    atomic_fetch_add(&m->inflight, delta);
}

long metrics_inflight(metrics *m)
{
    return atomic_load(&m->inflight);
}

/* A growing text buffer for the exposition. */
typedef struct text {
    char *p;
    size_t len, cap;
    int failed;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(text *t, const char *fmt, ...)
{
    if (t->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *q = realloc(t->p, cap);
        if (q == NULL) {
            t->failed = 1;
            return;
        }
        t->p = q;
        t->cap = cap;
    }
}

/* Label values escaped per the exposition format: backslash, quote, newline. */
static void put_label(text *t, const char *name, const char *v, int first)
{
    char esc[2 * METRICS_MAX_LABEL];
    size_t o = 0;
    for (const char *p = v; *p && o + 2 < sizeof(esc); p++) {
        if (*p == '\\' || *p == '"') {
            esc[o++] = '\\';
            esc[o++] = *p;
        } else if (*p == '\n') {
            esc[o++] = '\\';
            esc[o++] = 'n';
        } else {
            esc[o++] = *p;
        }
    }
    esc[o] = '\0';
    put(t, "%s%s=\"%s\"", first ? "" : ",", name, esc);
}

static void render_counter(text *t, family *f, const char *name, const char *help,
                           const char *const *lnames)
{
    put(t, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < f->n; i++) {
        put(t, "%s{", name);
        for (size_t k = 0; k < f->nlabels; k++)
            put_label(t, lnames[k], f->s[i].labels[k], k == 0);
        put(t, "} %llu\n", (unsigned long long)f->s[i].count);
    }
    pthread_mutex_unlock(&f->lock);
}

char *metrics_render(metrics *m, size_t *len)
{
    text t = {.p = malloc(4096), .len = 0, .cap = 4096, .failed = 0};
    *len = 0;
    if (t.p == NULL)
        return NULL;

    static const char *const req_l[] = {"route", "method", "status"};
    render_counter(&t, &m->requests, "qwickd_http_requests_total",
                   "HTTP requests by route, method and status.", req_l);

    put(&t, "# HELP qwickd_http_request_duration_seconds HTTP request latency by route.\n"
            "# TYPE qwickd_http_request_duration_seconds histogram\n");
    pthread_mutex_lock(&m->latency.lock);
    for (size_t i = 0; i < m->latency.n; i++) {
        series *s = &m->latency.s[i];
        for (size_t b = 0; b < NBUCKETS; b++) {
            put(&t, "qwickd_http_request_duration_seconds_bucket{");
            put_label(&t, "route", s->labels[0], 1);
            put(&t, ",le=\"%g\"} %llu\n", buckets[b], (unsigned long long)s->bucket[b]);
        }
        put(&t, "qwickd_http_request_duration_seconds_bucket{");
        put_label(&t, "route", s->labels[0], 1);
        put(&t, ",le=\"+Inf\"} %llu\n", (unsigned long long)s->count);
        put(&t, "qwickd_http_request_duration_seconds_sum{");
        put_label(&t, "route", s->labels[0], 1);
        put(&t, "} %.6f\n", s->sum);
        put(&t, "qwickd_http_request_duration_seconds_count{");
        put_label(&t, "route", s->labels[0], 1);
        put(&t, "} %llu\n", (unsigned long long)s->count);
    }
    pthread_mutex_unlock(&m->latency.lock);

    static const char *const sig_l[] = {"profile", "algorithm", "format"};
    render_counter(&t, &m->signatures, "qwickd_signatures_total",
                   "Signatures returned by profile, digest algorithm and format.", sig_l);
    static const char *const err_l[] = {"code"};
    render_counter(&t, &m->errors, "qwickd_errors_total", "Error responses by error code.", err_l);
    static const char *const ts_l[] = {"status"};
    render_counter(&t, &m->timestamps, "qwickd_tsa_responses_total",
                   "RFC 3161 responses by PKIStatus.", ts_l);
    static const char *const drop_l[] = {"reason"};
    render_counter(&t, &m->dropped, "qwickd_connections_dropped_total",
                   "Connections refused (per_ip_limit) or closed past a deadline.", drop_l);
    put(&t,
        "# HELP qwickd_http_requests_in_flight Requests being handled.\n"
        "# TYPE qwickd_http_requests_in_flight gauge\n"
        "qwickd_http_requests_in_flight %ld\n",
        atomic_load(&m->inflight));

    if (t.failed) {
        free(t.p);
        return NULL;
    }
    *len = t.len;
    return t.p;
}
