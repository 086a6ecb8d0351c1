/* The store's asynchronous queue (store.h, store_queue.c, docs/api.md):
 * enqueue with its audit entry and Idempotency-Key, claims (fair across
 * orgs, run_after, leases, concurrent claimers), the fenced finish, cancel
 * and retry, lists and counts, and the input each refuses. Built twice, as
 * test_store.c is: test_store_queue on SQLite, test_store_queue_pg
 * (-DSTORE_PG) on PostgreSQL as the server's role under row-level security,
 * one fresh database per test (store_fixture.c). On PostgreSQL the
 * concurrent tests also run from two stores opened separately (two nodes).
 *
 * Times are fixed (T0 and on), not the clock's: the queue takes every time
 * from its caller, except an enqueue with queued_ms 0. Request ids are
 * "req_" + 32 hex whose first 8 digits count up, so they are time ordered. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "common/hex.h"
#include "common/tlog.h"
#include "store/store.h"
#include "store_fixture.h"

#ifdef STORE_PG
#include "pg_fixture.h"
#endif

typedef store_fixture fixture;

#define T0 INT64_C(1700000000000) /* unix ms: the tests' "now" */
#define T0_S (T0 / 1000)
#define LONG_LEASE INT64_C(600000) /* no claim in a test outlives it */
#define WAIT_SECONDS 30            /* for an asynchronous write's done() */

/* ---- waiting for done() --------------------------------------------------- */

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;    /* done() calls so far */
    int failures; /* of which not QK_OK */
    qk_err rc;    /* the last call's */
    char detail[256];
} waiter;

static void waiter_init(waiter *w)
{
    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
}

static void waiter_destroy(waiter *w)
{
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

static void waiter_done(void *arg, qk_err rc, const char *detail)
{
    waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    w->calls++;
    w->failures += rc != QK_OK;
    w->rc = rc;
    snprintf(w->detail, sizeof(w->detail), "%s", detail != NULL ? detail : "");
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Waits until done() ran `calls` times (fails the test after WAIT_SECONDS). */
static void waiter_wait(waiter *w, int calls)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += WAIT_SECONDS;
    pthread_mutex_lock(&w->mu);
    while (w->calls < calls)
        if (pthread_cond_timedwait(&w->cv, &w->mu, &until) == ETIMEDOUT)
            break;
    int got = w->calls;
    pthread_mutex_unlock(&w->mu);
    if (got < calls)
        fail_msg("done() ran %d times of %d in %d s", got, calls, WAIT_SECONDS);
}

/* An asynchronous call's outcome: its own rc when it refused at once (and
 * then done() must never run), else the rc done() got, exactly once. */
static qk_err settle(qk_store *s, waiter *w, qk_err call_rc, char *detail, size_t n)
{
    qk_err rc = call_rc;
    if (detail != NULL && call_rc != QK_OK)
        snprintf(detail, n, "%s", qk_error_detail());
    if (call_rc == QK_OK)
        waiter_wait(w, 1);
    store_sqlite_flush(s); /* any stray second call would have happened by now */
    assert_int_equal(w->calls, call_rc == QK_OK ? 1 : 0);
    if (call_rc == QK_OK) {
        rc = w->rc;
        if (detail != NULL)
            snprintf(detail, n, "%s", w->detail);
    }
    waiter_destroy(w);
    return rc;
}

/* ---- requests ---------------------------------------------------------------- */

static const uint8_t digest32[32] = {0xd1, 0xd2, 0xd3, 4,  5,  6,  7,  8,  9,  10, 11,
                                     12,   13,   14,   15, 16, 17, 18, 19, 20, 21, 22,
                                     23,   24,   25,   26, 27, 28, 29, 30, 31, 32};
static const uint8_t sig_a[] = {0x5a, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08};
static const uint8_t sig_b[] = {0x5b, 0x11, 0x12, 0x13};
static const uint8_t chain_a[] = {0x30, 0x03, 0x02, 0x01, 0x0a};
static const uint8_t chain_b[] = {0x30, 0x03, 0x02, 0x01, 0x0b, 0x30, 0x03, 0x02, 0x01, 0x0c};

/* A request to queue and its sign.submit entry, which must stay put (and
 * alive) until the enqueue's done() ran. */
typedef struct qreq {
    store_sign_request r;
    store_audit a;
} qreq;

/* "req_" + 8 hex of `seq` (the order) + 24 hex of `salt`: 36 characters. */
static void make_id(char out[40], unsigned seq, unsigned salt)
{
    snprintf(out, 40, "req_%08x%024x", seq, salt);
    assert_int_equal(strlen(out), 36);
}

static void make_queued(qreq *q, int64_t org, unsigned seq, int64_t queued_ms)
{
    memset(q, 0, sizeof(*q));
    make_id(q->r.id, seq, (unsigned)org);
    q->r.org_id = org;
    q->r.apikey_id = 7;
    q->r.status = REQ_QUEUED;
    q->r.algorithm = "sha256";
    q->r.format = "raw";
    q->r.profile = "default";
    q->r.filename = "app.exe";
    q->r.description = "nightly build";
    q->r.url = "https://ci.example.com/1";
    q->r.client_ip = "192.0.2.1";
    q->r.digest = (qk_buf){(uint8_t *)digest32, sizeof(digest32)};
    q->r.queued_ms = queued_ms;
    q->a.org_id = org;
    q->a.ts = queued_ms;
    q->a.actor = "apikey:7";
    q->a.client_ip = "192.0.2.1";
    q->a.action = "sign.submit";
    q->a.request_id = q->r.id;
    q->a.format = "raw";
    q->a.algorithm = "sha256";
    q->a.profile = "default";
    q->a.filename = "app.exe";
    q->a.outcome = AUDIT_ALLOWED;
}

/* An entry of another action about request `id` (sign.digest, sign.cancel...). */
static void make_entry(store_audit *a, int64_t org, const char *id, const char *action,
                       audit_outcome outcome)
{
    memset(a, 0, sizeof(*a));
    a->org_id = org;
    a->ts = T0;
    a->actor = "worker";
    a->action = action;
    a->request_id = id;
    a->format = "raw";
    a->algorithm = "sha256";
    a->profile = "default";
    a->outcome = outcome;
}

/* request_enqueue_async, waited for; *out is zeroed first. */
static qk_err enqueue_idem(qk_store *s, qreq *q, const store_idem *k, store_enqueued *out)
{
    waiter w;
    waiter_init(&w);
    memset(out, 0, sizeof(*out));
    qk_err rc = STORE_CALL(s, request_enqueue_async, &q->r, &q->a, k, out, waiter_done, &w);
    return settle(s, &w, rc, NULL, 0);
}

/* Queues `q` without a key; it must work and be new. */
static void enqueue(qk_store *s, qreq *q)
{
    store_enqueued out;
    assert_int_equal(enqueue_idem(s, q, NULL, &out), QK_OK);
    assert_int_equal(out.existing, 0);
}

/* Queues n requests of `org` at once, seq from `seq`, queued_ms from `ms`
 * (one apart), and waits for them all; q must have room for n. */
static void enqueue_many(qk_store *s, qreq *q, int n, int64_t org, unsigned seq, int64_t ms)
{
    store_enqueued *out = calloc((size_t)n, sizeof(*out));
    waiter w;
    waiter_init(&w);
    for (int i = 0; i < n; i++) {
        make_queued(&q[i], org, seq + (unsigned)i, ms + i);
        assert_int_equal(
            STORE_CALL(s, request_enqueue_async, &q[i].r, &q[i].a, NULL, &out[i], waiter_done, &w),
            QK_OK);
    }
    waiter_wait(&w, n);
    assert_int_equal(w.failures, 0);
    waiter_destroy(&w);
    free(out);
}

static qk_err finish(qk_store *s, int64_t org, const char *id, int64_t attempt,
                     const store_finish *f, const store_audit *a, char *detail, size_t n)
{
    waiter w;
    waiter_init(&w);
    qk_err rc = STORE_CALL(s, request_finish_async, org, id, attempt, f, a, waiter_done, &w);
    return settle(s, &w, rc, detail, n);
}

/* Finishes a claimed request as signed with `sig`, `chain` and its entry. */
static void finish_signed(qk_store *s, int64_t org, const char *id, int64_t attempt, qk_slice sig,
                          qk_slice chain, int64_t now)
{
    store_finish fin = {.status = REQ_SIGNED, .signature = sig, .chain_der = chain, .now = now};
    store_audit a;
    uint8_t h[32];
    char hex[65];
    crypto_hash_sha256(h, sig.data, sig.len);
    hex_encode(h, sizeof(h), hex);
    make_entry(&a, org, id, "sign.digest", AUDIT_ALLOWED);
    a.sig_sha256 = hex;
    assert_int_equal(finish(s, org, id, attempt, &fin, &a, NULL, 0), QK_OK);
}

static void finish_failed(qk_store *s, int64_t org, const char *id, int64_t attempt,
                          const char *why, int64_t now)
{
    store_finish fin = {.status = REQ_FAILED, .error = why, .now = now};
    store_audit a;
    make_entry(&a, org, id, "sign.digest", AUDIT_FAILED);
    a.detail = why;
    assert_int_equal(finish(s, org, id, attempt, &fin, &a, NULL, 0), QK_OK);
}

static void get(qk_store *s, int64_t org, const char *id, store_sign_request *out)
{
    int found = 0;
    assert_int_equal(STORE_CALL(s, request_get, org, id, out, &found), QK_OK);
    assert_int_equal(found, 1);
}

static req_status status_of(qk_store *s, int64_t org, const char *id)
{
    store_sign_request r;
    get(s, org, id, &r);
    req_status st = r.status;
    store_sign_request_clear(&r);
    return st;
}

static int exists(qk_store *s, int64_t org, const char *id)
{
    store_sign_request r;
    int found = -1;
    qk_err rc = STORE_CALL(s, request_get, org, id, &r, &found);
    store_sign_request_clear(&r);
    assert_int_equal(rc, found ? QK_OK : QK_ERR_INVALID_ARG);
    return found;
}

/* queue_claim that must work; the rows (free()) and their count. Every
 * test that claims fewer rows than an org has ready checks the claim's
 * limit: on PostgreSQL, `UPDATE ... WHERE id IN (SELECT ... LIMIT k FOR
 * UPDATE SKIP LOCKED)` was planned as a semi join that reran the subquery per
 * row and took every ready row (a claim of 1 took 40); qwick_queue_claim now
 * picks the ids once, in a MATERIALIZED CTE. */
static size_t claim(qk_store *s, const char *node, int64_t now_ms, int64_t lease_ms, int max,
                    store_claim **out)
{
    size_t n = 99;
    qk_err rc = STORE_CALL(s, queue_claim, node, now_ms, lease_ms, max, out, &n);
    if (rc != QK_OK)
        fail_msg("queue_claim: %s: %s", qk_strerror(rc), qk_error_detail());
    if (n > (size_t)max)
        fail_msg("queue_claim of at most %d claimed %zu", max, n);
    return n;
}

/* Claims exactly one request, which must be `id`; its attempt number. */
static int64_t claim_one(qk_store *s, int64_t now_ms, int64_t org, const char *id)
{
    store_claim *c = NULL;
    assert_int_equal(claim(s, "node-1", now_ms, LONG_LEASE, 1, &c), 1);
    assert_int_equal(c[0].org_id, org);
    assert_string_equal(c[0].id, id);
    int64_t attempt = c[0].attempts;
    free(c);
    return attempt;
}

static int64_t audit_count(qk_store *s, int64_t org, const char *id)
{
    int64_t n = -1;
    assert_int_equal(STORE_CALL(s, audit_count, org, id, &n), QK_OK);
    return n;
}

/* The org's log verifies and holds `count` entries. */
static void expect_verified(qk_store *s, int64_t org, int64_t count)
{
    store_audit_check c;
    assert_int_equal(STORE_CALL(s, audit_verify, org, &c), QK_OK);
    if (!c.ok)
        fail_msg("audit_verify of org %" PRId64 ": %s", org, c.problem);
    assert_int_equal(c.count, count);
}

/* Entry `index` of the org's log is `action` about `id` with `outcome`. */
static void expect_entry(qk_store *s, int64_t org, int64_t index, const char *action,
                         const char *id, audit_outcome outcome)
{
    store_log_entry *e = NULL;
    size_t n = 0;
    tlog_entry t;
    const char *why = NULL;
    memset(&t, 0, sizeof(t));
    assert_int_equal(STORE_CALL(s, log_entries, org, index, index + 1, &e, &n), QK_OK);
    assert_int_equal(n, 1);
    assert_int_equal(e[0].index, index);
    if (tlog_leaf_decode(e[0].leaf.data, e[0].leaf.len, &t, &why) != 0)
        fail_msg("entry %" PRId64 ": %s", index, why);
    assert_string_equal(t.action, action);
    assert_non_null(t.request_id);
    assert_string_equal(t.request_id, id);
    assert_int_equal(t.outcome, outcome);
    assert_int_equal(t.org_id, org);
    tlog_entry_clear(&t);
    store_log_entries_free(e, n);
}

/* A second node: on PostgreSQL a store opened separately on the database;
 * SQLite allows one store per data directory (its single writer), so the
 * same store, reached from another thread. */
static qk_store *open_node2(fixture *f)
{
#ifdef STORE_PG
    qk_store *s = NULL;
    assert_int_equal(sfx_open_at(f->where, &s), QK_OK);
    return s;
#else
    return f->s;
#endif
}

static void close_node2(fixture *f, qk_store *s)
{
    if (s != f->s)
        s->ops->close(s);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* ---- 1. enqueue ------------------------------------------------------------ */

/* A queued request is a QUEUED row with everything the caller gave, no
 * attempts yet, run_after = queued_ms, and its sign.submit entry. */
static void test_enqueue_writes_row_and_entry(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    qreq q;
    store_sign_request r;
    store_enqueued out;

    make_queued(&q, org, 1, T0 + 123);
    q.r.options = REQ_OPT_NO_TIMESTAMP;
    memset(&out, 0x55, sizeof(out));
    assert_int_equal(enqueue_idem(f->s, &q, NULL, &out), QK_OK);
    assert_int_equal(out.existing, 0);
    assert_int_equal(out.reused, 0);
    assert_int_equal(out.sync, 0);

    get(f->s, org, q.r.id, &r);
    assert_string_equal(r.id, q.r.id);
    assert_int_equal(r.org_id, org);
    assert_int_equal(r.apikey_id, 7);
    assert_int_equal(r.user_id, 0);
    assert_int_equal(r.status, REQ_QUEUED);
    assert_int_equal(r.attempts, 0);
    assert_int_equal(r.queued_ms, T0 + 123);
    assert_int_equal(r.run_after, T0 + 123);
    assert_int_equal(r.created_at, T0_S);
    assert_int_equal(r.updated_at, T0_S);
    assert_int_equal(r.completed_at, 0);
    assert_int_equal(r.options, REQ_OPT_NO_TIMESTAMP);
    assert_string_equal(r.algorithm, "sha256");
    assert_string_equal(r.format, "raw");
    assert_string_equal(r.profile, "default");
    assert_string_equal(r.filename, "app.exe");
    assert_string_equal(r.description, "nightly build");
    assert_string_equal(r.url, "https://ci.example.com/1");
    assert_string_equal(r.client_ip, "192.0.2.1");
    assert_int_equal(r.digest.len, sizeof(digest32));
    assert_memory_equal(r.digest.data, digest32, sizeof(digest32));
    assert_int_equal(r.signature.len, 0);
    assert_int_equal(r.chain_der.len, 0);
    assert_null(r.error);
    store_sign_request_clear(&r);

    assert_int_equal(audit_count(f->s, org, q.r.id), 1);
    assert_int_equal(audit_count(f->s, org, NULL), 1);
    expect_entry(f->s, org, 0, "sign.submit", q.r.id, AUDIT_ALLOWED);
    expect_verified(f->s, org, 1);
}

/* queued_ms 0: the store's clock, and created_at from the same instant. */
static void test_enqueue_stamps_now(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    qreq q;
    store_sign_request r;

    make_queued(&q, org, 1, 0);
    int64_t before = (int64_t)time(NULL) * 1000;
    enqueue(f->s, &q);
    int64_t after = (int64_t)time(NULL) * 1000 + 999;
    get(f->s, org, q.r.id, &r);
    assert_true(r.queued_ms >= before && r.queued_ms <= after);
    assert_int_equal(r.run_after, r.queued_ms);
    assert_int_equal(r.created_at, r.queued_ms / 1000);
    store_sign_request_clear(&r);
}

/* ---- 2. Idempotency-Key ------------------------------------------------------ */

static store_idem idem(const char *credential, const char *key, uint8_t seed, int64_t now,
                       int64_t expired_before)
{
    store_idem k = {
        .credential = credential, .key = key, .now = now, .expired_before = expired_before};
    for (int i = 0; i < 32; i++)
        k.body_hash[i] = (uint8_t)(seed * 17 + i);
    return k;
}

#define DAY 86400

/* The same key, credential and body name the first request and write
 * nothing; another body is a reuse; another credential or org is another
 * key. `sync` is the first request's, whatever the second asks. */
static void test_idem_same_key(void **state)
{
    fixture *f = *state;
    int64_t A = sfx_new_org(f, "org-a"), B = sfx_new_org(f, "org-b");
    qreq q[8];
    store_enqueued out;
    store_idem k1 = idem("apikey:7", "key-1", 1, T0_S, T0_S - DAY);

    make_queued(&q[0], A, 1, T0);
    q[0].r.options = REQ_OPT_SYNC;
    assert_int_equal(enqueue_idem(f->s, &q[0], &k1, &out), QK_OK);
    assert_int_equal(out.existing, 0);
    assert_int_equal(out.reused, 0);

    /* Same everything (a different request id, as a retry would have). */
    make_queued(&q[1], A, 2, T0 + 1);
    assert_int_equal(enqueue_idem(f->s, &q[1], &k1, &out), QK_OK);
    assert_int_equal(out.existing, 1);
    assert_int_equal(out.reused, 0);
    assert_int_equal(out.sync, 1);
    assert_string_equal(out.request_id, q[0].r.id);
    assert_false(exists(f->s, A, q[1].r.id));
    assert_int_equal(audit_count(f->s, A, q[1].r.id), 0);
    store_sign_request r;
    get(f->s, A, q[0].r.id, &r);
    assert_int_equal(r.options, REQ_OPT_SYNC);
    store_sign_request_clear(&r);
    assert_int_equal(audit_count(f->s, A, NULL), 1);

    /* Another body. */
    store_idem k1b = idem("apikey:7", "key-1", 2, T0_S, T0_S - DAY);
    make_queued(&q[2], A, 3, T0 + 2);
    assert_int_equal(enqueue_idem(f->s, &q[2], &k1b, &out), QK_OK);
    assert_int_equal(out.existing, 1);
    assert_int_equal(out.reused, 1);
    assert_int_equal(out.sync, 1);
    assert_string_equal(out.request_id, q[0].r.id);
    assert_false(exists(f->s, A, q[2].r.id));

    /* Another credential of the org, then the same credential in another org. */
    store_idem k2 = idem("apikey:8", "key-1", 1, T0_S, T0_S - DAY);
    make_queued(&q[3], A, 4, T0 + 3);
    assert_int_equal(enqueue_idem(f->s, &q[3], &k2, &out), QK_OK);
    assert_int_equal(out.existing, 0);
    assert_true(exists(f->s, A, q[3].r.id));
    make_queued(&q[4], B, 5, T0 + 4);
    assert_int_equal(enqueue_idem(f->s, &q[4], &k1, &out), QK_OK);
    assert_int_equal(out.existing, 0);
    assert_true(exists(f->s, B, q[4].r.id));

    /* A key first used by an asynchronous request: sync 0. */
    store_idem k3 = idem("apikey:7", "key-3", 3, T0_S, T0_S - DAY);
    make_queued(&q[5], A, 6, T0 + 5);
    assert_int_equal(enqueue_idem(f->s, &q[5], &k3, &out), QK_OK);
    assert_int_equal(out.existing, 0);
    make_queued(&q[6], A, 7, T0 + 6);
    q[6].r.options = REQ_OPT_SYNC;
    assert_int_equal(enqueue_idem(f->s, &q[6], &k3, &out), QK_OK);
    assert_int_equal(out.existing, 1);
    assert_int_equal(out.sync, 0);
    assert_string_equal(out.request_id, q[5].r.id);

    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM sign_requests"), 4);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM idempotency_keys"), 4);
    assert_int_equal(audit_count(f->s, A, NULL), 3);
    assert_int_equal(audit_count(f->s, B, NULL), 1);
    expect_verified(f->s, A, 3);
    expect_verified(f->s, B, 1);
}

/* A key first used before expired_before is free: the next request with it
 * is queued as new (its body may differ), and the key names it from then on. */
static void test_idem_key_expires(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    qreq q[3];
    store_enqueued out;
    store_idem first = idem("apikey:7", "key-1", 1, T0_S, T0_S - DAY);
    store_idem later = idem("apikey:7", "key-1", 2, T0_S + DAY + 1, T0_S + 1);
    store_idem again = idem("apikey:7", "key-1", 2, T0_S + DAY + 2, T0_S + 2);
    char sql[160];

    make_queued(&q[0], org, 1, T0);
    q[0].r.options = REQ_OPT_SYNC;
    assert_int_equal(enqueue_idem(f->s, &q[0], &first, &out), QK_OK);
    assert_int_equal(out.existing, 0);

    make_queued(&q[1], org, 2, T0 + DAY * 1000);
    assert_int_equal(enqueue_idem(f->s, &q[1], &later, &out), QK_OK);
    assert_int_equal(out.existing, 0);
    assert_int_equal(out.reused, 0);
    assert_int_equal(status_of(f->s, org, q[1].r.id), REQ_QUEUED);
    assert_int_equal(status_of(f->s, org, q[0].r.id), REQ_QUEUED); /* the old one stays */

    make_queued(&q[2], org, 3, T0 + DAY * 1000 + 1);
    assert_int_equal(enqueue_idem(f->s, &q[2], &again, &out), QK_OK);
    assert_int_equal(out.existing, 1);
    assert_int_equal(out.reused, 0);
    assert_int_equal(out.sync, 0); /* the second request's, not the first's */
    assert_string_equal(out.request_id, q[1].r.id);

    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM idempotency_keys"), 1);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM idempotency_keys WHERE request_id = '%s'",
             q[1].r.id);
    assert_int_equal(sfx_raw_int(f->where, sql), 1);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM sign_requests"), 2);
}

#define RACE_ROUNDS 12

typedef struct race_arg {
    qk_store *s;
    pthread_barrier_t *go;
    qreq q[RACE_ROUNDS];
    store_idem k[RACE_ROUNDS];
    char key[RACE_ROUNDS][32];
    store_enqueued out[RACE_ROUNDS];
    qk_err rc[RACE_ROUNDS];
} race_arg;

/* Runs on its own thread: no cmocka assertion here (they jump to the main
 * thread's frame); the main thread checks what it recorded. */
static void *race_worker(void *p)
{
    race_arg *a = p;
    for (int i = 0; i < RACE_ROUNDS; i++) {
        waiter w;
        waiter_init(&w);
        pthread_barrier_wait(a->go);
        a->rc[i] = STORE_CALL(a->s, request_enqueue_async, &a->q[i].r, &a->q[i].a, &a->k[i],
                              &a->out[i], waiter_done, &w);
        if (a->rc[i] == QK_OK) {
            pthread_mutex_lock(&w.mu);
            while (w.calls == 0)
                pthread_cond_wait(&w.cv, &w.mu);
            a->rc[i] = w.rc;
            pthread_mutex_unlock(&w.mu);
        }
        waiter_destroy(&w);
    }
    return NULL;
}

/* Two requests with one key at the same moment, from two threads (on
 * PostgreSQL through two stores: two nodes): one request is queued and both
 * answers name it. */
static void test_idem_concurrent(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    qk_store *node2 = open_node2(f);
    pthread_barrier_t go;
    pthread_t th[2];
    race_arg *a = calloc(2, sizeof(*a));

    pthread_barrier_init(&go, NULL, 2);
    for (int t = 0; t < 2; t++) {
        a[t].s = t == 0 ? f->s : node2;
        a[t].go = &go;
        for (int i = 0; i < RACE_ROUNDS; i++) {
            snprintf(a[t].key[i], sizeof(a[t].key[i]), "race-%d", i);
            a[t].k[i] = idem("apikey:7", a[t].key[i], (uint8_t)i, T0_S, T0_S - DAY);
            make_queued(&a[t].q[i], org, (unsigned)(100 * t + i), T0 + i);
        }
    }
    for (int t = 0; t < 2; t++)
        assert_int_equal(pthread_create(&th[t], NULL, race_worker, &a[t]), 0);
    for (int t = 0; t < 2; t++)
        pthread_join(th[t], NULL);

    for (int i = 0; i < RACE_ROUNDS; i++) {
        assert_int_equal(a[0].rc[i], QK_OK);
        assert_int_equal(a[1].rc[i], QK_OK);
        if (a[0].out[i].existing + a[1].out[i].existing != 1)
            fail_msg("round %d: existing %d and %d, wanted one of each", i, a[0].out[i].existing,
                     a[1].out[i].existing);
        int w = a[0].out[i].existing ? 1 : 0; /* the winner */
        assert_string_equal(a[!w].out[i].request_id, a[w].q[i].r.id);
        assert_int_equal(a[!w].out[i].reused, 0);
        assert_true(exists(f->s, org, a[w].q[i].r.id));
        assert_false(exists(f->s, org, a[!w].q[i].r.id));
    }
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM sign_requests"), RACE_ROUNDS);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM idempotency_keys"), RACE_ROUNDS);
    assert_int_equal(audit_count(f->s, org, NULL), RACE_ROUNDS);
    expect_verified(f->s, org, RACE_ROUNDS);
    pthread_barrier_destroy(&go);
    close_node2(f, node2);
    free(a);
}

/* ---- 3. claim -------------------------------------------------------------- */

/* Whether `id` is among the claimed. */
static int claimed(const store_claim *c, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(c[i].id, id) == 0)
            return 1;
    return 0;
}

/* Oldest first, at most max, each PROCESSING under this claim's lease. */
static void test_claim_takes_oldest(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    qreq q[5];
    store_claim *c = NULL;
    store_sign_request r;
    char sql[256];

    enqueue_many(f->s, q, 5, org, 1, T0);
    assert_int_equal(claim(f->s, "node-1", T0 + 100, 30000, 3, &c), 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(c[i].org_id, org);
        assert_int_equal(c[i].attempts, 1);
        assert_true(claimed(c, 3, q[i].r.id)); /* the three oldest, in any order */
        get(f->s, org, q[i].r.id, &r);
        assert_int_equal(r.status, REQ_PROCESSING);
        assert_int_equal(r.attempts, 1);
        assert_int_equal(r.updated_at, (T0 + 100) / 1000);
        assert_int_equal(r.queued_ms, T0 + i); /* unchanged */
        store_sign_request_clear(&r);
    }
    free(c);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM sign_requests WHERE status = 2 AND lease_node = 'node-1' "
             "AND lease_until = %" PRId64,
             T0 + 100 + 30000);
    assert_int_equal(sfx_raw_int(f->where, sql), 3);
    assert_int_equal(status_of(f->s, org, q[3].r.id), REQ_QUEUED);

    assert_int_equal(claim(f->s, "node-2", T0 + 200, 30000, 10, &c), 2);
    assert_true(claimed(c, 2, q[3].r.id));
    assert_true(claimed(c, 2, q[4].r.id));
    free(c);
    c = NULL;
    assert_int_equal(claim(f->s, "node-2", T0 + 300, 30000, 10, &c), 0);
    free(c);
    /* Claims write no audit entry. */
    assert_int_equal(audit_count(f->s, org, NULL), 5);
}

/* Org A has 20 ready requests, B 2 queued after all of A's: a claim of 4
 * takes each org's two oldest (round robin), so B does not wait for A. */
static void test_claim_fair_across_orgs(void **state)
{
    fixture *f = *state;
    int64_t A = sfx_new_org(f, "org-a"), B = sfx_new_org(f, "org-b");
    qreq *qa = calloc(20, sizeof(*qa)), qb[2];
    store_claim *c = NULL;

    enqueue_many(f->s, qa, 20, A, 1, T0);
    enqueue_many(f->s, qb, 2, B, 100, T0 + 1000);
    assert_int_equal(claim(f->s, "node-1", T0 + 5000, LONG_LEASE, 4, &c), 4);
    assert_true(claimed(c, 4, qb[0].r.id));
    assert_true(claimed(c, 4, qb[1].r.id));
    assert_true(claimed(c, 4, qa[0].r.id));
    assert_true(claimed(c, 4, qa[1].r.id));
    for (int i = 0; i < 4; i++)
        assert_int_equal(c[i].org_id,
                         strcmp(c[i].id, qb[0].r.id) == 0 || strcmp(c[i].id, qb[1].r.id) == 0 ? B
                                                                                              : A);
    free(c);
    /* The rest of A's wait, oldest first. */
    store_queue_stats st;
    assert_int_equal(STORE_CALL(f->s, queue_stats, A, &st), QK_OK);
    assert_int_equal(st.count[REQ_QUEUED], 18);
    assert_int_equal(st.count[REQ_PROCESSING], 2);
    assert_int_equal(st.oldest_queued_ms, T0 + 2);
    assert_int_equal(STORE_CALL(f->s, queue_stats, B, &st), QK_OK);
    assert_int_equal(st.count[REQ_QUEUED], 0);
    assert_int_equal(st.count[REQ_PROCESSING], 2);
    free(qa);
}

/* Round robin goes on while orgs have ready rows: a claim is filled. (A
 * single pass of one share per org left claims short: with 4 orgs of which
 * only A had ready rows, a claim of 4 took 1.) */
static void test_claim_fills_past_idle_orgs(void **state)
{
    fixture *f = *state;
    int64_t A = sfx_new_org(f, "org-a"), B = sfx_new_org(f, "org-b");
    qreq qa[10], qa2[5], qb;
    store_claim *c = NULL;
    size_t n;

    sfx_new_org(f, "idle-1");
    sfx_new_org(f, "idle-2");
    /* One busy org of four: a claim of 4 takes A's four oldest. */
    enqueue_many(f->s, qa, 10, A, 1, T0);
    n = claim(f->s, "node-1", T0 + 5000, LONG_LEASE, 4, &c);
    if (n != 4)
        fail_msg("a claim of 4 with 10 ready in one org of 4 took %zu", n);
    for (int i = 0; i < 4; i++)
        assert_true(claimed(c, 4, qa[i].r.id));
    free(c);
    /* Drained, claims of 4 until none is left. */
    for (int left = 6; left > 0; left -= (int)n) {
        n = claim(f->s, "node-1", T0 + 5000, LONG_LEASE, 4, &c);
        free(c);
        assert_true(n > 0);
    }

    /* A has 5 ready, B 1: a claim of 4 takes B's and A's three oldest. */
    enqueue_many(f->s, qa2, 5, A, 20, T0 + 100);
    make_queued(&qb, B, 30, T0 + 200);
    enqueue(f->s, &qb);
    n = claim(f->s, "node-1", T0 + 5000, LONG_LEASE, 4, &c);
    if (n != 4)
        fail_msg("a claim of 4 with 5 ready in A and 1 in B took %zu", n);
    assert_true(claimed(c, 4, qb.r.id));
    for (int i = 0; i < 3; i++)
        assert_true(claimed(c, 4, qa2[i].r.id));
    free(c);
}

/* run_after in the future is not claimed; at run_after it is. */
static void test_claim_waits_for_run_after(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    qreq now, later;
    store_claim *c = NULL;

    make_queued(&now, org, 1, T0);
    make_queued(&later, org, 2, T0 + 60000);
    enqueue(f->s, &now);
    enqueue(f->s, &later);
    assert_int_equal(claim(f->s, "node-1", T0 + 10, LONG_LEASE, 10, &c), 1);
    assert_string_equal(c[0].id, now.r.id);
    free(c);
    c = NULL;
    assert_int_equal(claim(f->s, "node-1", T0 + 59999, LONG_LEASE, 10, &c), 0);
    free(c);
    assert_int_equal(status_of(f->s, org, later.r.id), REQ_QUEUED);
    assert_int_equal(claim(f->s, "node-1", T0 + 60000, LONG_LEASE, 10, &c), 1);
    assert_string_equal(c[0].id, later.r.id);
    free(c);
}

/* Rows waiting for run_after do not hold up other orgs' ready rows: an org
 * whose only rows back off takes no share of a claim of 1 (a node with one
 * free worker). */
static void test_claim_not_held_up_by_backoff(void **state)
{
    fixture *f = *state;
    int64_t A = sfx_new_org(f, "org-a"), B = sfx_new_org(f, "org-b");
    qreq wait, qb[3];
    store_claim *c = NULL;

    make_queued(&wait, A, 1, T0 + 60000); /* A's: run_after a minute ahead */
    enqueue(f->s, &wait);
    enqueue_many(f->s, qb, 3, B, 10, T0);
    for (int i = 0; i < 3; i++) {
        size_t n = claim(f->s, "node-1", T0 + 100, LONG_LEASE, 1, &c);
        if (n != 1)
            fail_msg("claim %d of 1 took %zu while B has %d ready", i, n, 3 - i);
        assert_int_equal(c[0].org_id, B);
        assert_string_equal(c[0].id, qb[i].r.id);
        free(c);
        c = NULL;
    }
    assert_int_equal(status_of(f->s, A, wait.r.id), REQ_QUEUED);
}

#define STARVE_CLAIMS 30

/* No org is always first (a claim of 1 must not always go to the org with
 * the lowest id while it has a backlog): claims of one, one after another, reach every org
 * with ready rows while another has a backlog. (PostgreSQL visits the orgs in
 * a random order: B or C is missed by all 30 claims with probability
 * about 2 * (2/3)^30, 1e-5.) */
static void test_claim_no_org_starves(void **state)
{
    fixture *f = *state;
    int64_t A = sfx_new_org(f, "org-a"), B = sfx_new_org(f, "org-b"), C = sfx_new_org(f, "org-c");
    qreq *qa = calloc(40, sizeof(*qa)), qb, qc;
    int from_b = 0, from_c = 0;

    enqueue_many(f->s, qa, 40, A, 1, T0);
    make_queued(&qb, B, 100, T0 + 1000);
    make_queued(&qc, C, 101, T0 + 1000);
    enqueue(f->s, &qb);
    enqueue(f->s, &qc);
    for (int i = 0; i < STARVE_CLAIMS && !(from_b && from_c); i++) {
        store_claim *c = NULL;
        assert_int_equal(claim(f->s, "node-1", T0 + 5000, LONG_LEASE, 1, &c), 1);
        from_b += c[0].org_id == B;
        from_c += c[0].org_id == C;
        assert_true(c[0].org_id == A || c[0].org_id == B || c[0].org_id == C);
        free(c);
    }
    free(qa);
    if (!from_b || !from_c)
        fail_msg("%d claims of 1 reached B %d times and C %d times "
                 "(A has a backlog)",
                 STARVE_CLAIMS, from_b, from_c);
}

#define CC_ORGS 3
#define CC_TOTAL 100
#define CC_MAX 3

typedef struct claimer {
    qk_store *s;
    const char *node;
    int64_t now_ms, lease_ms;
    pthread_barrier_t *go;
    char (*ids)[40]; /* CC_TOTAL */
    int64_t *attempts;
    size_t n;
    int calls;
    qk_err rc;
} claimer;

/* Claims CC_MAX at a time until a claim finds nothing. */
static void *claimer_main(void *p)
{
    claimer *k = p;
    pthread_barrier_wait(k->go);
    for (;;) {
        store_claim *c = NULL;
        size_t n = 0;
        k->calls++;
        if ((k->rc = STORE_CALL(k->s, queue_claim, k->node, k->now_ms, k->lease_ms, CC_MAX, &c,
                                &n)) != QK_OK)
            break;
        for (size_t i = 0; i < n && k->n < CC_TOTAL; i++) {
            memcpy(k->ids[k->n], c[i].id, 40);
            k->attempts[k->n++] = c[i].attempts;
        }
        free(c);
        if (n == 0)
            break;
    }
    return NULL;
}

/* Two claimers at once, `now_ms` and `lease_ms` theirs: together they claim
 * every one of the CC_TOTAL requests once, each with attempt `attempt`. */
static void claim_race(fixture *f, qk_store *node2, int64_t now_ms, int64_t lease_ms,
                       int64_t attempt)
{
    pthread_barrier_t go;
    pthread_t th[2];
    claimer k[2];
    char(*all)[40] = calloc(2 * CC_TOTAL, 40);
    size_t n = 0;
    store_claim *c = NULL;

    pthread_barrier_init(&go, NULL, 2);
    for (int t = 0; t < 2; t++) {
        k[t] = (claimer){
            t == 0 ? f->s : node2, t == 0 ? "node-1" : "node-2",      now_ms, lease_ms, &go,
            calloc(CC_TOTAL, 40),  calloc(CC_TOTAL, sizeof(int64_t)), 0,      0,        QK_OK};
        assert_int_equal(pthread_create(&th[t], NULL, claimer_main, &k[t]), 0);
    }
    for (int t = 0; t < 2; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < 2; t++) {
        assert_int_equal(k[t].rc, QK_OK);
        for (size_t i = 0; i < k[t].n; i++) {
            assert_int_equal(k[t].attempts[i], attempt);
            memcpy(all[n++], k[t].ids[i], 40);
        }
    }
    qsort(all, n, 40, cmp_str);
    for (size_t i = 1; i < n; i++)
        if (strcmp(all[i - 1], all[i]) == 0)
            fail_msg("request %s claimed twice (attempt %" PRId64 ")", all[i], attempt);
    if (n != CC_TOTAL)
        fail_msg("claimed %zu of %d (node-1 %zu in %d claims, node-2 %zu in %d)", n, CC_TOTAL,
                 k[0].n, k[0].calls, k[1].n, k[1].calls);
    /* Nothing left for a third claimer. */
    assert_int_equal(claim(f->s, "node-3", now_ms, lease_ms, CC_TOTAL, &c), 0);
    free(c);
    for (int t = 0; t < 2; t++) {
        char sql[160];
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM sign_requests WHERE status = 2 AND lease_node = '%s'",
                 k[t].node);
        assert_int_equal(sfx_raw_int(f->where, sql), (int64_t)k[t].n);
        free(k[t].ids);
        free(k[t].attempts);
    }
    pthread_barrier_destroy(&go);
    free(all);
}

/* Two claimers (threads; on PostgreSQL two nodes) taking a few at a time
 * never take the same request, and leave none behind; once the leases ran
 * out, they take each back exactly once more (attempt 2). */
static void test_claim_concurrent_no_duplicates(void **state)
{
    fixture *f = *state;
    qk_store *node2 = open_node2(f);
    qreq *q = calloc(CC_TOTAL, sizeof(*q));
    int64_t org[CC_ORGS];
    int at = 0;

    for (int o = 0; o < CC_ORGS; o++) {
        char name[16];
        int n = o < CC_ORGS - 1 ? CC_TOTAL / CC_ORGS : CC_TOTAL - at;
        snprintf(name, sizeof(name), "org-%d", o);
        org[o] = sfx_new_org(f, name);
        enqueue_many(f->s, q + at, n, org[o], (unsigned)at, T0 + at);
        at += n;
    }
    claim_race(f, node2, T0 + 1000, 5000, 1);
    claim_race(f, node2, T0 + 1000 + 5001, LONG_LEASE, 2);
    for (int o = 0; o < CC_ORGS; o++) {
        store_queue_stats st;
        assert_int_equal(STORE_CALL(f->s, queue_stats, org[o], &st), QK_OK);
        assert_int_equal(st.count[REQ_QUEUED], 0);
    }
    close_node2(f, node2);
    free(q);
}

/* ---- 4. lease expiry and the fence ----------------------------------------- */

/* A lease that ran out is claimed again (attempt 2); the first claim's
 * finish is then refused and changes nothing, the second's is recorded. */
static void test_lease_expiry_fences_finish(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme"), index = -1;
    qreq q;
    store_claim *c = NULL;
    store_sign_request r;
    store_finish fin = {.status = REQ_SIGNED,
                        .signature = {sig_a, sizeof(sig_a)},
                        .chain_der = {chain_a, sizeof(chain_a)},
                        .now = T0_S + 2};
    store_audit stale;
    char detail[256], sql[256];
    int found = 0;

    make_queued(&q, org, 1, T0);
    enqueue(f->s, &q);
    assert_int_equal(claim(f->s, "node-1", T0 + 10, 1000, 1, &c), 1);
    assert_int_equal(c[0].attempts, 1);
    free(c);
    c = NULL;
    assert_int_equal(claim(f->s, "node-2", T0 + 500, 1000, 1, &c), 0); /* still leased */
    free(c);
    assert_int_equal(claim(f->s, "node-2", T0 + 2000, 5000, 1, &c), 1);
    assert_string_equal(c[0].id, q.r.id);
    assert_int_equal(c[0].attempts, 2);
    free(c);

    /* node-1 comes back with its signature: lease lost. */
    make_entry(&stale, org, q.r.id, "sign.digest", AUDIT_ALLOWED);
    assert_int_equal(finish(f->s, org, q.r.id, 1, &fin, &stale, detail, sizeof(detail)),
                     QK_ERR_INVALID_ARG);
    assert_non_null(strstr(detail, "lease lost"));
    get(f->s, org, q.r.id, &r);
    assert_int_equal(r.status, REQ_PROCESSING);
    assert_int_equal(r.attempts, 2);
    assert_int_equal(r.signature.len, 0);
    assert_int_equal(r.chain_der.len, 0);
    assert_int_equal(r.completed_at, 0);
    store_sign_request_clear(&r);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM sign_requests WHERE lease_node = 'node-2' AND "
             "lease_until = %" PRId64,
             T0 + 2000 + 5000);
    assert_int_equal(sfx_raw_int(f->where, sql), 1);
    assert_int_equal(audit_count(f->s, org, q.r.id), 1); /* the stale entry was not written */

    /* node-2's finish. */
    finish_signed(f->s, org, q.r.id, 2, (qk_slice){sig_b, sizeof(sig_b)},
                  (qk_slice){chain_b, sizeof(chain_b)}, T0_S + 3);
    get(f->s, org, q.r.id, &r);
    assert_int_equal(r.status, REQ_SIGNED);
    assert_int_equal(r.attempts, 2);
    assert_int_equal(r.signature.len, sizeof(sig_b));
    assert_memory_equal(r.signature.data, sig_b, sizeof(sig_b));
    assert_int_equal(r.chain_der.len, sizeof(chain_b));
    assert_memory_equal(r.chain_der.data, chain_b, sizeof(chain_b));
    assert_int_equal(r.completed_at, T0_S + 3);
    assert_int_equal(r.updated_at, T0_S + 3);
    assert_null(r.error);
    store_sign_request_clear(&r);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM sign_requests WHERE "
                                           "lease_node IS NULL AND lease_until = 0"),
                     1);
    assert_int_equal(audit_count(f->s, org, q.r.id), 2);
    expect_entry(f->s, org, 1, "sign.digest", q.r.id, AUDIT_ALLOWED);
    assert_int_equal(STORE_CALL(f->s, log_find_request, org, q.r.id, &index, &found), QK_OK);
    assert_int_equal(found, 1);
    assert_int_equal(index, 1);
    expect_verified(f->s, org, 2);

    /* Finishing again, with either claim's number, is refused: it is no longer PROCESSING. */
    for (int64_t attempt = 1; attempt <= 2; attempt++) {
        assert_int_equal(finish(f->s, org, q.r.id, attempt, &fin, NULL, detail, sizeof(detail)),
                         QK_ERR_INVALID_ARG);
        assert_non_null(strstr(detail, "lease lost"));
    }
    get(f->s, org, q.r.id, &r);
    assert_memory_equal(r.signature.data, sig_b, sizeof(sig_b));
    store_sign_request_clear(&r);
    expect_verified(f->s, org, 2);
}

/* ---- 5. finish: back to the queue, or failed ---------------------------------- */

static void test_finish_requeue_then_fail(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme"), index = -1;
    qreq q;
    store_sign_request r;
    store_claim *c = NULL;
    store_queue_stats st;
    store_finish again = {.status = REQ_QUEUED,
                          .error = "backend unavailable",
                          .run_after = T0 + 60000,
                          .now = T0_S + 1};
    int found = -1;

    make_queued(&q, org, 1, T0);
    enqueue(f->s, &q);
    assert_int_equal(claim_one(f->s, T0 + 10, org, q.r.id), 1);
    assert_int_equal(finish(f->s, org, q.r.id, 1, &again, NULL, NULL, 0), QK_OK);
    get(f->s, org, q.r.id, &r);
    assert_int_equal(r.status, REQ_QUEUED);
    assert_int_equal(r.attempts, 1); /* kept: it counts toward max_attempts */
    assert_int_equal(r.run_after, T0 + 60000);
    assert_int_equal(r.queued_ms, T0);
    assert_string_equal(r.error, "backend unavailable");
    assert_int_equal(r.completed_at, 0);
    assert_int_equal(r.updated_at, T0_S + 1);
    assert_int_equal(r.signature.len, 0);
    store_sign_request_clear(&r);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM sign_requests WHERE "
                                           "lease_node IS NULL AND lease_until = 0"),
                     1);
    assert_int_equal(audit_count(f->s, org, q.r.id), 1); /* a retry writes no entry */
    assert_int_equal(STORE_CALL(f->s, queue_stats, org, &st), QK_OK);
    assert_int_equal(st.count[REQ_QUEUED], 1);
    assert_int_equal(st.count[REQ_PROCESSING], 0);

    /* Not before its backoff; then claim 2. */
    assert_int_equal(claim(f->s, "node-1", T0 + 59999, LONG_LEASE, 5, &c), 0);
    free(c);
    assert_int_equal(claim_one(f->s, T0 + 60000, org, q.r.id), 2);

    finish_failed(f->s, org, q.r.id, 2, "profile disabled", T0_S + 100);
    get(f->s, org, q.r.id, &r);
    assert_int_equal(r.status, REQ_FAILED);
    assert_int_equal(r.attempts, 2);
    assert_string_equal(r.error, "profile disabled");
    assert_int_equal(r.completed_at, T0_S + 100);
    assert_int_equal(r.signature.len, 0);
    assert_int_equal(r.chain_der.len, 0);
    store_sign_request_clear(&r);
    assert_int_equal(audit_count(f->s, org, q.r.id), 2);
    expect_entry(f->s, org, 1, "sign.digest", q.r.id, AUDIT_FAILED);
    expect_verified(f->s, org, 2);
    /* A failed request is not in the log as signed. */
    STORE_CALL(f->s, log_find_request, org, q.r.id, &index, &found);
    assert_int_equal(found, 0);
    /* Dead letter: never claimed again. */
    assert_int_equal(claim(f->s, "node-1", T0 + 10000000, LONG_LEASE, 5, &c), 0);
    free(c);
}

/* ---- 6. cancel, retry ------------------------------------------------------ */

/* Cancels a QUEUED request (with its entry); any other status is reported
 * in *before and left as it is, without an entry. */
static void test_cancel(void **state)
{
    fixture *f = *state;
    int64_t A = sfx_new_org(f, "org-a"), B = sfx_new_org(f, "org-b");
    qreq q, sgn, proc;
    store_sign_request r;
    store_audit a;
    req_status before = REQ_FAILED;
    int found = -1;

    make_queued(&sgn, A, 1, T0);
    enqueue(f->s, &sgn);
    finish_signed(f->s, A, sgn.r.id, claim_one(f->s, T0 + 1, A, sgn.r.id),
                  (qk_slice){sig_a, sizeof(sig_a)}, (qk_slice){chain_a, sizeof(chain_a)}, T0_S + 1);
    make_queued(&proc, A, 2, T0 + 1);
    enqueue(f->s, &proc);
    assert_int_equal(claim_one(f->s, T0 + 2, A, proc.r.id), 1);
    make_queued(&q, A, 3, T0 + 2);
    enqueue(f->s, &q);
    int64_t entries = audit_count(f->s, A, NULL); /* 2 submits, 1 digest, 1 submit */
    assert_int_equal(entries, 4);

    make_entry(&a, A, q.r.id, "sign.cancel", AUDIT_ALLOWED);
    assert_int_equal(STORE_CALL(f->s, request_cancel, A, q.r.id, T0_S + 50, &a, &before, &found),
                     QK_OK);
    assert_int_equal(found, 1);
    assert_int_equal(before, REQ_QUEUED);
    get(f->s, A, q.r.id, &r);
    assert_int_equal(r.status, REQ_CANCELLED);
    assert_int_equal(r.completed_at, T0_S + 50);
    assert_int_equal(r.updated_at, T0_S + 50);
    assert_non_null(r.error);
    store_sign_request_clear(&r);
    assert_int_equal(audit_count(f->s, A, NULL), entries + 1);
    expect_entry(f->s, A, entries, "sign.cancel", q.r.id, AUDIT_ALLOWED);

    /* Again: already CANCELLED, nothing written. */
    before = REQ_QUEUED;
    assert_int_equal(STORE_CALL(f->s, request_cancel, A, q.r.id, T0_S + 60, &a, &before, &found),
                     QK_OK);
    assert_int_equal(found, 1);
    assert_int_equal(before, REQ_CANCELLED);
    get(f->s, A, q.r.id, &r);
    assert_int_equal(r.completed_at, T0_S + 50);
    store_sign_request_clear(&r);

    /* SIGNED and PROCESSING stay. */
    make_entry(&a, A, sgn.r.id, "sign.cancel", AUDIT_ALLOWED);
    assert_int_equal(STORE_CALL(f->s, request_cancel, A, sgn.r.id, T0_S + 70, &a, &before, &found),
                     QK_OK);
    assert_int_equal(found, 1);
    assert_int_equal(before, REQ_SIGNED);
    get(f->s, A, sgn.r.id, &r);
    assert_int_equal(r.status, REQ_SIGNED);
    assert_int_equal(r.completed_at, T0_S + 1);
    assert_memory_equal(r.signature.data, sig_a, sizeof(sig_a));
    assert_null(r.error);
    store_sign_request_clear(&r);
    make_entry(&a, A, proc.r.id, "sign.cancel", AUDIT_ALLOWED);
    assert_int_equal(STORE_CALL(f->s, request_cancel, A, proc.r.id, T0_S + 70, &a, &before, &found),
                     QK_OK);
    assert_int_equal(before, REQ_PROCESSING);
    assert_int_equal(status_of(f->s, A, proc.r.id), REQ_PROCESSING);
    assert_int_equal(audit_count(f->s, A, NULL), entries + 1);

    /* Unknown, and another org's: not found, untouched. */
    assert_int_equal(STORE_CALL(f->s, request_cancel, A, "req_ffffffff000000000000000000000000",
                                T0_S, NULL, &before, &found),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    qreq qb;
    make_queued(&qb, B, 4, T0 + 3);
    enqueue(f->s, &qb);
    found = -1;
    assert_int_equal(STORE_CALL(f->s, request_cancel, A, qb.r.id, T0_S, NULL, &before, &found),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    assert_int_equal(status_of(f->s, B, qb.r.id), REQ_QUEUED);

    /* PENDING_APPROVAL (nothing makes one yet: set by hand) is cancellable too. */
    qreq pend;
    char sql[160];
    make_queued(&pend, A, 5, T0 + 4);
    enqueue(f->s, &pend);
    snprintf(sql, sizeof(sql), "UPDATE sign_requests SET status = 1 WHERE id = '%s'", pend.r.id);
    sfx_raw_sql(f->where, sql);
    make_entry(&a, A, pend.r.id, "sign.cancel", AUDIT_ALLOWED);
    assert_int_equal(STORE_CALL(f->s, request_cancel, A, pend.r.id, T0_S + 80, &a, &before, &found),
                     QK_OK);
    assert_int_equal(before, REQ_PENDING_APPROVAL);
    assert_int_equal(status_of(f->s, A, pend.r.id), REQ_CANCELLED);
    entries += 2; /* its submit and its cancel */

    /* A cancelled request is never claimed: B's is the only one ready. */
    store_claim *c = NULL;
    assert_int_equal(claim(f->s, "node-1", T0 + 100000, LONG_LEASE, 10, &c), 1);
    assert_string_equal(c[0].id, qb.r.id);
    free(c);
    expect_verified(f->s, A, entries + 1);
    expect_verified(f->s, B, 1);
}

/* A FAILED request goes back to the queue with attempts 0 (with its entry);
 * other statuses are reported in *before and left as they are. */
static void test_retry(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    qreq q;
    store_sign_request r;
    store_audit a;
    store_claim *c = NULL;
    req_status before = REQ_CANCELLED;
    int found = -1;

    make_queued(&q, org, 1, T0);
    enqueue(f->s, &q);
    /* Two attempts, then dead. */
    store_finish again = {.status = REQ_QUEUED, .error = "busy", .run_after = T0 + 10, .now = T0_S};
    assert_int_equal(
        finish(f->s, org, q.r.id, claim_one(f->s, T0 + 1, org, q.r.id), &again, NULL, NULL, 0),
        QK_OK);
    finish_failed(f->s, org, q.r.id, claim_one(f->s, T0 + 10, org, q.r.id), "backend refused",
                  T0_S + 1);
    assert_int_equal(audit_count(f->s, org, NULL), 2);

    make_entry(&a, org, q.r.id, "sign.retry", AUDIT_ALLOWED);
    assert_int_equal(STORE_CALL(f->s, request_retry, org, q.r.id, T0 + 5000, &a, &before, &found),
                     QK_OK);
    assert_int_equal(found, 1);
    assert_int_equal(before, REQ_FAILED);
    get(f->s, org, q.r.id, &r);
    assert_int_equal(r.status, REQ_QUEUED);
    assert_int_equal(r.attempts, 0);
    assert_int_equal(r.run_after, T0 + 5000);
    assert_int_equal(r.updated_at, (T0 + 5000) / 1000);
    assert_int_equal(r.completed_at, 0);
    assert_null(r.error);
    store_sign_request_clear(&r);
    assert_int_equal(audit_count(f->s, org, NULL), 3);
    expect_entry(f->s, org, 2, "sign.retry", q.r.id, AUDIT_ALLOWED);

    /* Already QUEUED: unchanged, no entry. */
    before = REQ_FAILED;
    assert_int_equal(STORE_CALL(f->s, request_retry, org, q.r.id, T0 + 9000, &a, &before, &found),
                     QK_OK);
    assert_int_equal(found, 1);
    assert_int_equal(before, REQ_QUEUED);
    get(f->s, org, q.r.id, &r);
    assert_int_equal(r.run_after, T0 + 5000);
    store_sign_request_clear(&r);
    assert_int_equal(audit_count(f->s, org, NULL), 3);

    /* Not before run_after; then claim 1 again. */
    assert_int_equal(claim(f->s, "node-1", T0 + 4999, LONG_LEASE, 5, &c), 0);
    free(c);
    assert_int_equal(claim_one(f->s, T0 + 5000, org, q.r.id), 1);
    /* PROCESSING, then SIGNED: not retryable. */
    assert_int_equal(STORE_CALL(f->s, request_retry, org, q.r.id, T0 + 6000, &a, &before, &found),
                     QK_OK);
    assert_int_equal(before, REQ_PROCESSING);
    assert_int_equal(status_of(f->s, org, q.r.id), REQ_PROCESSING);
    finish_signed(f->s, org, q.r.id, 1, (qk_slice){sig_a, sizeof(sig_a)}, (qk_slice){NULL, 0},
                  T0_S + 7);
    assert_int_equal(STORE_CALL(f->s, request_retry, org, q.r.id, T0 + 8000, &a, &before, &found),
                     QK_OK);
    assert_int_equal(before, REQ_SIGNED);
    get(f->s, org, q.r.id, &r);
    assert_int_equal(r.status, REQ_SIGNED);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.chain_der.len, 0);
    store_sign_request_clear(&r);

    assert_int_equal(STORE_CALL(f->s, request_retry, org, "req_ffffffff000000000000000000000000",
                                T0, NULL, &before, &found),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    expect_verified(f->s, org, 4);
}

/* ---- 7. list --------------------------------------------------------------- */

/* The order number make_id put in an id. */
static unsigned seq_of(const char *id)
{
    char hex[9];
    memcpy(hex, id + 4, 8);
    hex[8] = '\0';
    return (unsigned)strtoul(hex, NULL, 16);
}

/* The list is exactly the requests numbered `seq`, in that order. */
static void expect_list(store_sign_request *l, size_t n, const unsigned *seq, size_t want)
{
    if (n != want)
        fail_msg("listed %zu requests, wanted %zu", n, want);
    for (size_t i = 0; i < n; i++)
        if (seq_of(l[i].id) != seq[i])
            fail_msg("list[%zu] is request %u, wanted %u", i, seq_of(l[i].id), seq[i]);
}

static void list(qk_store *s, int64_t org, int status, const char *before, int limit,
                 store_sign_request **out, size_t *n)
{
    assert_int_equal(STORE_CALL(s, request_list, org, status, before, limit, out, n), QK_OK);
}

/* Newest first (ids are time ordered), by status, in pages through the
 * cursor, never another org's; without signature and chain. */
static void test_request_list(void **state)
{
    fixture *f = *state;
    int64_t A = sfx_new_org(f, "org-a"), B = sfx_new_org(f, "org-b");
    qreq qa[10], qb[3];
    store_sign_request *l = NULL;
    size_t n = 0;
    req_status before;
    int found = 0;
    char cursor[40];

    /* A's 1..10; 1 SIGNED, 2 FAILED, 3 back in the queue, 7 CANCELLED. */
    enqueue_many(f->s, qa, 10, A, 1, T0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(claim_one(f->s, T0 + 100, A, qa[i].r.id), 1);
    finish_signed(f->s, A, qa[0].r.id, 1, (qk_slice){sig_a, sizeof(sig_a)},
                  (qk_slice){chain_a, sizeof(chain_a)}, T0_S + 1);
    finish_failed(f->s, A, qa[1].r.id, 1, "refused", T0_S + 1);
    store_finish later = {
        .status = REQ_QUEUED, .error = "busy", .run_after = T0 + 10000000, .now = T0_S + 1};
    assert_int_equal(finish(f->s, A, qa[2].r.id, 1, &later, NULL, NULL, 0), QK_OK);
    assert_int_equal(
        STORE_CALL(f->s, request_cancel, A, qa[6].r.id, T0_S + 2, NULL, &before, &found), QK_OK);
    /* B's 11..13: ids above all of A's. */
    enqueue_many(f->s, qb, 3, B, 11, T0 + 1000);

    list(f->s, A, -1, NULL, 100, &l, &n);
    expect_list(l, n, (unsigned[]){10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, 10);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(l[i].org_id, A);
        assert_int_equal(l[i].signature.len, 0);
        assert_int_equal(l[i].chain_der.len, 0);
        assert_int_equal(l[i].digest.len, sizeof(digest32));
    }
    assert_int_equal(l[9].status, REQ_SIGNED);
    assert_int_equal(l[9].attempts, 1);
    assert_int_equal(l[8].status, REQ_FAILED);
    assert_string_equal(l[8].error, "refused");
    assert_int_equal(l[7].status, REQ_QUEUED);
    assert_int_equal(l[7].run_after, T0 + 10000000);
    assert_int_equal(l[3].status, REQ_CANCELLED);
    assert_int_equal(l[0].status, REQ_QUEUED);
    assert_int_equal(l[0].queued_ms, T0 + 9);
    assert_string_equal(l[0].filename, "app.exe");
    store_sign_request_list_free(l, n);

    /* Pages of 4: 10..7, 6..3, 2..1, then nothing. */
    const unsigned pages[3][4] = {{10, 9, 8, 7}, {6, 5, 4, 3}, {2, 1}};
    const size_t sizes[3] = {4, 4, 2};
    const char *at = NULL;
    for (int p = 0; p < 4; p++) {
        list(f->s, A, -1, at, 4, &l, &n);
        if (p == 3) {
            assert_int_equal(n, 0);
            store_sign_request_list_free(l, n);
            break;
        }
        expect_list(l, n, pages[p], sizes[p]);
        snprintf(cursor, sizeof(cursor), "%s", l[n - 1].id);
        at = cursor;
        store_sign_request_list_free(l, n);
    }

    /* By status, with the cursor too. */
    list(f->s, A, REQ_QUEUED, NULL, 100, &l, &n);
    expect_list(l, n, (unsigned[]){10, 9, 8, 6, 5, 4, 3}, 7);
    snprintf(cursor, sizeof(cursor), "%s", l[2].id); /* 8 */
    store_sign_request_list_free(l, n);
    list(f->s, A, REQ_QUEUED, cursor, 2, &l, &n);
    expect_list(l, n, (unsigned[]){6, 5}, 2);
    store_sign_request_list_free(l, n);
    list(f->s, A, REQ_FAILED, NULL, 100, &l, &n);
    expect_list(l, n, (unsigned[]){2}, 1);
    store_sign_request_list_free(l, n);
    list(f->s, A, REQ_SIGNED, NULL, 100, &l, &n);
    expect_list(l, n, (unsigned[]){1}, 1);
    store_sign_request_list_free(l, n);
    list(f->s, A, REQ_CANCELLED, NULL, 100, &l, &n);
    expect_list(l, n, (unsigned[]){7}, 1);
    store_sign_request_list_free(l, n);
    list(f->s, A, REQ_PROCESSING, NULL, 100, &l, &n);
    assert_int_equal(n, 0);
    store_sign_request_list_free(l, n);
    list(f->s, A, -1, NULL, 1, &l, &n);
    expect_list(l, n, (unsigned[]){10}, 1);
    store_sign_request_list_free(l, n);

    /* Org isolation: B's list is B's three; below B's oldest, nothing (A's ids are there). */
    list(f->s, B, -1, NULL, 100, &l, &n);
    expect_list(l, n, (unsigned[]){13, 12, 11}, 3);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(l[i].org_id, B);
    store_sign_request_list_free(l, n);
    list(f->s, B, -1, qb[0].r.id, 100, &l, &n);
    assert_int_equal(n, 0);
    store_sign_request_list_free(l, n);
    list(f->s, A, -1, "req_ffffffff", 100, &l, &n); /* a cursor above B's ids */
    assert_int_equal(n, 10);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(l[i].org_id, A);
    store_sign_request_list_free(l, n);
}

/* ---- 8. stats -------------------------------------------------------------- */

static void expect_stats(qk_store *s, int64_t org, const int64_t count[REQ__COUNT], int64_t oldest)
{
    store_queue_stats st;
    memset(&st, 0x55, sizeof(st));
    assert_int_equal(STORE_CALL(s, queue_stats, org, &st), QK_OK);
    for (int i = 0; i < REQ__COUNT; i++)
        if (st.count[i] != count[i])
            fail_msg("org %" PRId64 ": %" PRId64 " %s, wanted %" PRId64, org, st.count[i],
                     req_status_name((req_status)i), count[i]);
    assert_int_equal(st.oldest_queued_ms, oldest);
}

/* Open requests by status, per org and for every org (0), with the
 * oldest QUEUED one's queued_ms (a PROCESSING older one does not count). */
static void test_queue_stats(void **state)
{
    fixture *f = *state;
    int64_t A = sfx_new_org(f, "org-a"), B = sfx_new_org(f, "org-b"), C = sfx_new_org(f, "org-c");
    qreq s5, a0, b0, more_b[1], more_a[4];
    req_status before;
    int found = 0;

    /* One at a time, so that each claim takes the one meant. */
    make_queued(&s5, A, 1, T0 + 1); /* A: SIGNED (not counted) */
    enqueue(f->s, &s5);
    finish_signed(f->s, A, s5.r.id, claim_one(f->s, T0 + 100, A, s5.r.id),
                  (qk_slice){sig_a, sizeof(sig_a)}, (qk_slice){chain_a, sizeof(chain_a)}, T0_S);
    make_queued(&a0, A, 2, T0 + 10); /* A: PROCESSING, the oldest open */
    enqueue(f->s, &a0);
    claim_one(f->s, T0 + 100, A, a0.r.id);
    make_queued(&b0, B, 3, T0 + 5); /* B: FAILED */
    enqueue(f->s, &b0);
    finish_failed(f->s, B, b0.r.id, claim_one(f->s, T0 + 100, B, b0.r.id), "refused", T0_S);
    enqueue_many(f->s, more_b, 1, B, 4, T0 + 6);  /* B: QUEUED, T0 + 6 */
    enqueue_many(f->s, more_a, 4, A, 5, T0 + 11); /* A: QUEUED, T0 + 11..14 */
    assert_int_equal(
        STORE_CALL(f->s, request_cancel, A, more_a[3].r.id, T0_S, NULL, &before, &found),
        QK_OK); /* A: CANCELLED */

    int64_t a[REQ__COUNT] = {0}, b[REQ__COUNT] = {0}, all[REQ__COUNT] = {0}, none[REQ__COUNT] = {0};
    a[REQ_QUEUED] = 3;
    a[REQ_PROCESSING] = 1;
    a[REQ_CANCELLED] = 1;
    b[REQ_QUEUED] = 1;
    b[REQ_FAILED] = 1;
    for (int i = 0; i < REQ__COUNT; i++)
        all[i] = a[i] + b[i];
    expect_stats(f->s, A, a, T0 + 11);
    expect_stats(f->s, B, b, T0 + 6);
    expect_stats(f->s, 0, all, T0 + 6);
    expect_stats(f->s, C, none, 0);
}

/* ---- 9. refused input ------------------------------------------------------- */

static void test_refuses_bad_input(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme"), other = sfx_new_org(f, "other");
    qreq q, bad;
    store_claim *c = (store_claim *)&c;
    store_sign_request *l = (store_sign_request *)&l;
    store_sign_request r;
    store_enqueued out;
    size_t n = 99;
    store_finish fin = {.status = REQ_PROCESSING, .now = T0_S};
    store_audit a;

    /* queue_claim: count and lease positive, a node. */
    assert_int_equal(STORE_CALL(f->s, queue_claim, "node-1", T0, LONG_LEASE, 0, &c, &n),
                     QK_ERR_INVALID_ARG);
    assert_null(c);
    assert_int_equal(n, 0);
    n = 99;
    assert_int_equal(STORE_CALL(f->s, queue_claim, "node-1", T0, LONG_LEASE, -1, &c, &n),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(n, 0);
    assert_int_equal(STORE_CALL(f->s, queue_claim, "node-1", T0, 0, 5, &c, &n), QK_ERR_INVALID_ARG);
    assert_int_equal(STORE_CALL(f->s, queue_claim, "node-1", T0, -1000, 5, &c, &n),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(STORE_CALL(f->s, queue_claim, NULL, T0, LONG_LEASE, 5, &c, &n),
                     QK_ERR_INVALID_ARG);

    make_queued(&q, org, 1, T0);
    enqueue(f->s, &q);
    /* None of the refused claims took it. */
    assert_int_equal(status_of(f->s, org, q.r.id), REQ_QUEUED);
    assert_int_equal(claim_one(f->s, T0 + 1, org, q.r.id), 1);

    /* finish: SIGNED, FAILED or QUEUED only; SIGNED with a signature; the
     * entry of the request's org; refused at once (done() never runs). */
    assert_int_equal(finish(f->s, org, q.r.id, 1, &fin, NULL, NULL, 0), QK_ERR_INVALID_ARG);
    fin.status = REQ_CANCELLED;
    assert_int_equal(finish(f->s, org, q.r.id, 1, &fin, NULL, NULL, 0), QK_ERR_INVALID_ARG);
    fin.status = (req_status)99;
    assert_int_equal(finish(f->s, org, q.r.id, 1, &fin, NULL, NULL, 0), QK_ERR_INVALID_ARG);
    fin.status = REQ_SIGNED; /* without a signature */
    assert_int_equal(finish(f->s, org, q.r.id, 1, &fin, NULL, NULL, 0), QK_ERR_INVALID_ARG);
    fin = (store_finish){.status = REQ_FAILED, .error = "x", .now = T0_S};
    make_entry(&a, other, q.r.id, "sign.digest", AUDIT_FAILED);
    assert_int_equal(finish(f->s, org, q.r.id, 1, &fin, &a, NULL, 0), QK_ERR_INVALID_ARG);
    assert_int_equal(finish(f->s, 0, q.r.id, 1, &fin, NULL, NULL, 0), QK_ERR_INVALID_ARG);
    assert_int_equal(finish(f->s, org, NULL, 1, &fin, NULL, NULL, 0), QK_ERR_INVALID_ARG);
    get(f->s, org, q.r.id, &r);
    assert_int_equal(r.status, REQ_PROCESSING);
    assert_int_equal(r.attempts, 1);
    store_sign_request_clear(&r);
    /* A finish for another org's request id is fenced like a lost lease. */
    assert_int_equal(finish(f->s, other, q.r.id, 1, &fin, NULL, NULL, 0), QK_ERR_INVALID_ARG);
    assert_int_equal(status_of(f->s, org, q.r.id), REQ_PROCESSING);

    /* request_list: limit 1.., status -1..CANCELLED. */
    assert_int_equal(STORE_CALL(f->s, request_list, org, -1, NULL, 0, &l, &n), QK_ERR_INVALID_ARG);
    assert_null(l);
    assert_int_equal(n, 0);
    assert_int_equal(STORE_CALL(f->s, request_list, org, -1, NULL, -5, &l, &n), QK_ERR_INVALID_ARG);
    assert_int_equal(STORE_CALL(f->s, request_list, org, REQ__COUNT, NULL, 10, &l, &n),
                     QK_ERR_INVALID_ARG);

    /* enqueue: the entry of the request's org, a key with a credential and a key. */
    make_queued(&bad, org, 2, T0);
    bad.a.org_id = other;
    assert_int_equal(enqueue_idem(f->s, &bad, NULL, &out), QK_ERR_INVALID_ARG);
    make_queued(&bad, org, 2, T0);
    store_idem k = idem(NULL, "key", 1, T0_S, 0);
    assert_int_equal(enqueue_idem(f->s, &bad, &k, &out), QK_ERR_INVALID_ARG);
    k = idem("apikey:7", NULL, 1, T0_S, 0);
    assert_int_equal(enqueue_idem(f->s, &bad, &k, &out), QK_ERR_INVALID_ARG);
    bad.r.id[0] = '\0';
    assert_int_equal(enqueue_idem(f->s, &bad, NULL, &out), QK_ERR_INVALID_ARG);
    make_queued(&bad, org, 2, T0);
    bad.r.profile = NULL;
    assert_int_equal(enqueue_idem(f->s, &bad, NULL, &out), QK_ERR_INVALID_ARG);
    /* An id already taken: done() says so, and nothing changed. */
    make_queued(&bad, org, 1, T0);
    assert_int_equal(enqueue_idem(f->s, &bad, NULL, &out), QK_ERR_INVALID_ARG);
    assert_int_equal(status_of(f->s, org, q.r.id), REQ_PROCESSING);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM sign_requests"), 1);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM idempotency_keys"), 0);
    assert_int_equal(audit_count(f->s, org, NULL), 1);
    expect_verified(f->s, org, 1);
}

#ifdef STORE_PG
/* ---- PostgreSQL only ----------------------------------------------------------- */

/* Idempotency keys are a tenant table: org A's transaction (the server's
 * role) sees none of B's and cannot plant one for B. */
static void test_idem_keys_isolated(void **state)
{
    fixture *f = *state;
    int64_t A = sfx_new_org(f, "org-a"), B = sfx_new_org(f, "org-b");
    qreq qa, qb;
    store_enqueued out;
    store_idem k = idem("apikey:7", "key-1", 1, T0_S, 0);
    char sql[256], role[64];
    PGconn *pg;
    PGresult *res;

    make_queued(&qa, A, 1, T0);
    make_queued(&qb, B, 2, T0);
    assert_int_equal(enqueue_idem(f->s, &qa, &k, &out), QK_OK);
    assert_int_equal(enqueue_idem(f->s, &qb, &k, &out), QK_OK);
    assert_int_equal(out.existing, 0);

    pgfx_server_role(f->where, role, sizeof(role));
    pg = pgfx_connect(f->where, role);
    PQclear(PQexec(pg, "BEGIN"));
    snprintf(sql, sizeof(sql), "SELECT set_config('qwick.org', '%" PRId64 "', true)", A);
    PQclear(PQexec(pg, sql));
    assert_int_equal(pgfx_int_on(pg, "SELECT count(*) FROM idempotency_keys"), 1);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM idempotency_keys WHERE org_id = %" PRId64, B);
    assert_int_equal(pgfx_int_on(pg, sql), 0);
    snprintf(sql, sizeof(sql),
             "INSERT INTO idempotency_keys(org_id, credential, key, body_hash, request_id, sync, "
             "created_at) VALUES (%" PRId64 ", 'apikey:9', 'k', '\\x00'::bytea, 'req_x', 0, 0)",
             B);
    res = PQexec(pg, sql);
    assert_int_not_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    PQclear(PQexec(pg, "ROLLBACK"));
    /* No org set: none. */
    assert_int_equal(pgfx_int_on(pg, "SELECT count(*) FROM idempotency_keys"), 0);
    PQfinish(pg);
}

/* One cluster for the run, stopped by the group teardown. */
static int group_setup(void **state)
{
    (void)state;
    return sfx_group_start("store_queue_pg", 70);
}

static int group_teardown(void **state)
{
    (void)state;
    sfx_group_stop();
    return 0;
}
#endif

#define T(fn) cmocka_unit_test_setup_teardown(fn, sfx_setup, sfx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_enqueue_writes_row_and_entry),
        T(test_enqueue_stamps_now),
        T(test_idem_same_key),
        T(test_idem_key_expires),
        T(test_idem_concurrent),
        T(test_claim_takes_oldest),
        T(test_claim_fair_across_orgs),
        T(test_claim_fills_past_idle_orgs),
        T(test_claim_waits_for_run_after),
        T(test_claim_not_held_up_by_backoff),
        T(test_claim_no_org_starves),
        T(test_claim_concurrent_no_duplicates),
        T(test_lease_expiry_fences_finish),
        T(test_finish_requeue_then_fail),
        T(test_cancel),
        T(test_retry),
        T(test_request_list),
        T(test_queue_stats),
        T(test_refuses_bad_input),
#ifdef STORE_PG
        T(test_idem_keys_isolated),
#endif
    };
#ifdef STORE_PG
    return cmocka_run_group_tests_name("store queue on PostgreSQL", tests, group_setup,
                                       group_teardown);
#else
    return cmocka_run_group_tests_name("store queue on SQLite", tests, NULL, NULL);
#endif
}
