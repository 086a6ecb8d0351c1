/* The SQLite store: migrations, round trips, tenancy, audit chain, group commit. */
#include "tmpdir.h"

#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "store.h"

typedef struct fixture {
    char *dir;
    qk_store *s;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->dir = tmpdir_new();
    if (store_sqlite_open(f->dir, &f->s) != QK_OK)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (f->s != NULL)
        f->s->ops->close(f->s);
    tmpdir_free(f->dir);
    free(f);
    return 0;
}

static void reopen(fixture *f)
{
    f->s->ops->close(f->s);
    f->s = NULL;
    assert_int_equal(store_sqlite_open(f->dir, &f->s), QK_OK);
}

/* Runs one SQL statement on a raw connection, outside the store: tampering. */
static void raw_sql(const char *dir, const char *sql)
{
    char path[4096];
    sqlite3 *db = NULL;
    snprintf(path, sizeof(path), "%s/%s", dir, STORE_SQLITE_FILE);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static int64_t raw_int(const char *dir, const char *sql)
{
    char path[4096];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v;
    snprintf(path, sizeof(path), "%s/%s", dir, STORE_SQLITE_FILE);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int64_t new_org(qk_store *s, const char *name)
{
    int64_t id = 0;
    assert_int_equal(STORE_CALL(s, org_create, name, &id), QK_OK);
    assert_true(id > 0);
    return id;
}

static const uint8_t fake_sealed[] = "QKS1\0\0\0\1-not-really-sealed-but-opaque-to-the-store";
static const uint8_t fake_chain[] = {0x30, 0x03, 0x02, 0x01, 0x01};

/* An org with a signing key and a "default" profile on it. */
static int64_t org_with_profile(qk_store *s, const char *name, int64_t *key_id)
{
    int64_t org = new_org(s, name), pid = 0;
    assert_int_equal(STORE_CALL(s, signing_key_create, org, "local-pem",
                                (qk_slice){fake_sealed, sizeof(fake_sealed)}, key_id),
                     QK_OK);
    assert_int_equal(STORE_CALL(s, profile_create, org, "default", "local", *key_id,
                                (qk_slice){fake_chain, sizeof(fake_chain)}, NULL, &pid),
                     QK_OK);
    return org;
}

static void fill_hash(uint8_t h[32], uint8_t seed)
{
    for (int i = 0; i < 32; i++)
        h[i] = (uint8_t)(seed * 31 + i);
}

static void test_migrations_idempotent(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    int64_t v1 = raw_int(f->dir, "SELECT version FROM schema_version");
    assert_true(v1 >= 1);
    reopen(f);
    reopen(f);
    assert_int_equal(raw_int(f->dir, "SELECT version FROM schema_version"), v1);
    assert_int_equal(raw_int(f->dir, "SELECT count(*) FROM schema_version"), 1);
    int64_t id = 0;
    int found = 0;
    assert_int_equal(STORE_CALL(f->s, org_find, "acme", &id, &found), QK_OK);
    assert_int_equal(id, org);
    /* WAL is persistent in the file: a fresh connection sees it. */
    char path[4096], mode[16] = "";
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    snprintf(path, sizeof(path), "%s/%s", f->dir, STORE_SQLITE_FILE);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    snprintf(mode, sizeof(mode), "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    assert_string_equal(mode, "wal");
}

static void test_newer_schema_refused(void **state)
{
    fixture *f = *state;
    qk_store *s2 = NULL;
    raw_sql(f->dir, "UPDATE schema_version SET version = 999");
    assert_int_equal(store_sqlite_open(f->dir, &s2), QK_ERR_INVALID_ARG);
    assert_null(s2);
}

static void test_db_file_private(void **state)
{
    fixture *f = *state;
    char path[4096];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", f->dir, STORE_SQLITE_FILE);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 077, 0);
}

static void test_round_trips(void **state)
{
    fixture *f = *state;
    int64_t key_id = 0, org = org_with_profile(f->s, "acme", &key_id), user = 0;
    int found = -1;

    assert_int_equal(STORE_CALL(f->s, user_create, org, "a@example.com", NULL, ROLE_ADMIN, &user),
                     QK_OK);
    assert_true(user > 0);

    store_signing_key k;
    assert_int_equal(STORE_CALL(f->s, signing_key_get, org, key_id, &k, &found), QK_OK);
    assert_int_equal(found, 1);
    assert_string_equal(k.kind, "local-pem");
    assert_int_equal(k.sealed.len, sizeof(fake_sealed));
    assert_memory_equal(k.sealed.data, fake_sealed, sizeof(fake_sealed));
    store_signing_key_clear(&k);

    store_profile p;
    assert_int_equal(STORE_CALL(f->s, profile_get, org, "default", &p, &found), QK_OK);
    assert_int_equal(found, 1);
    assert_string_equal(p.name, "default");
    assert_string_equal(p.backend, "local");
    assert_int_equal(p.key_id, key_id);
    assert_int_equal(p.org_id, org);
    assert_memory_equal(p.chain_der.data, fake_chain, sizeof(fake_chain));
    store_profile_clear(&p);

    /* Not found: the documented convention. */
    assert_int_equal(STORE_CALL(f->s, profile_get, org, "nope", &p, &found), QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    int64_t pid = 0;
    assert_int_equal(STORE_CALL(f->s, profile_create, org, "default", "local", key_id,
                                (qk_slice){fake_chain, sizeof(fake_chain)}, NULL, &pid),
                     QK_ERR_INVALID_ARG); /* UNIQUE(org_id, name) */

    uint8_t h[32], stored[32];
    int64_t kid = 0;
    fill_hash(h, 1);
    assert_int_equal(
        STORE_CALL(f->s, apikey_create, org, user, "ci", "qk_abcdefg", h, ROLE_SIGNER, 12345, &kid),
        QK_OK);
    assert_int_equal(
        STORE_CALL(f->s, apikey_create, org, 0, "dup", "qk_abcdefg", h, ROLE_SIGNER, 0, &pid),
        QK_ERR_INVALID_ARG); /* hash is UNIQUE */
    store_apikey a;
    assert_int_equal(STORE_CALL(f->s, apikey_lookup, h, &a, stored, &found), QK_OK);
    assert_int_equal(found, 1);
    assert_memory_equal(stored, h, 32);
    assert_int_equal(a.id, kid);
    assert_int_equal(a.org_id, org);
    assert_int_equal(a.user_id, user);
    assert_int_equal(a.role, ROLE_SIGNER);
    assert_int_equal(a.expires_at, 12345);
    assert_int_equal(a.revoked_at, 0);
    assert_string_equal(a.name, "ci");
    assert_string_equal(a.prefix, "qk_abcdefg");
    store_apikey_clear(&a);

    assert_int_equal(STORE_CALL(f->s, apikey_revoke, org, kid, &found), QK_OK);
    assert_int_equal(found, 1);
    assert_int_equal(STORE_CALL(f->s, apikey_get, org, kid, &a, &found), QK_OK);
    assert_true(a.revoked_at > 0);
    int64_t first = a.revoked_at;
    store_apikey_clear(&a);
    assert_int_equal(STORE_CALL(f->s, apikey_revoke, org, kid, &found), QK_OK);
    assert_int_equal(STORE_CALL(f->s, apikey_get, org, kid, &a, &found), QK_OK);
    assert_int_equal(a.revoked_at, first); /* the first revocation time stays */
    store_apikey_clear(&a);
    assert_int_equal(STORE_CALL(f->s, apikey_revoke, org, kid + 100, &found), QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);

    /* touch is asynchronous: it is durable after close (the writer drains). */
    assert_int_equal(STORE_CALL(f->s, apikey_touch, kid, 777), QK_OK);
    reopen(f);
    assert_int_equal(STORE_CALL(f->s, apikey_get, org, kid, &a, &found), QK_OK);
    assert_int_equal(a.last_used_at, 777);
    store_apikey_clear(&a);

    store_apikey *list = NULL;
    size_t n = 0;
    assert_int_equal(STORE_CALL(f->s, apikey_list, org, &list, &n), QK_OK);
    assert_int_equal(n, 1);
    assert_int_equal(list[0].id, kid);
    store_apikey_list_free(list, n);
}

static void make_request(store_sign_request *r, int64_t org, const char *id)
{
    static uint8_t digest[32] = {1, 2, 3};
    static uint8_t sig[8] = {9, 9, 9};
    memset(r, 0, sizeof(*r));
    snprintf(r->id, sizeof(r->id), "%s", id);
    r->org_id = org;
    r->apikey_id = 1;
    r->status = REQ_SIGNED;
    r->algorithm = "sha256";
    r->format = "authenticode-pe";
    r->profile = "default";
    r->filename = "app.exe";
    r->client_ip = "127.0.0.1";
    r->digest = (qk_buf){digest, sizeof(digest)};
    r->signature = (qk_buf){sig, sizeof(sig)};
    r->completed_at = 5;
}

static void make_audit(store_audit *a, int64_t org, const char *req_id, const char *file)
{
    memset(a, 0, sizeof(*a));
    a->org_id = org;
    a->actor = "apikey:1";
    a->client_ip = "127.0.0.1";
    a->action = "sign.digest";
    a->request_id = req_id;
    a->digest_hex = "010203";
    a->algorithm = "sha256";
    a->profile = "default";
    a->filename = file;
    a->outcome = AUDIT_ALLOWED;
}

static void test_request_round_trip(void **state)
{
    fixture *f = *state;
    int64_t key_id = 0, org = org_with_profile(f->s, "acme", &key_id), n = 0;
    store_sign_request r, got;
    store_audit a;
    char id[40];
    int found = 0;

    store_new_request_id(id);
    assert_int_equal(strlen(id), 36);
    assert_memory_equal(id, "req_", 4);
    make_request(&r, org, id);
    make_audit(&a, org, id, "app.exe");
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &a), QK_OK);
    assert_int_equal(STORE_CALL(f->s, request_get, org, id, &got, &found), QK_OK);
    assert_int_equal(found, 1);
    assert_string_equal(got.id, id);
    assert_int_equal(got.status, REQ_SIGNED);
    assert_string_equal(got.algorithm, "sha256");
    assert_string_equal(got.filename, "app.exe");
    assert_null(got.description);
    assert_null(got.error);
    assert_int_equal(got.digest.len, 32);
    assert_int_equal(got.signature.len, 8);
    assert_true(got.created_at > 0);
    store_sign_request_clear(&got);
    assert_int_equal(STORE_CALL(f->s, audit_count, org, id, &n), QK_OK);
    assert_int_equal(n, 1);

    /* A later status change of the same request updates it. */
    r.status = REQ_FAILED;
    r.error = "boom";
    r.signature = (qk_buf){NULL, 0};
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &a), QK_OK);
    assert_int_equal(STORE_CALL(f->s, request_get, org, id, &got, &found), QK_OK);
    assert_int_equal(got.status, REQ_FAILED);
    assert_string_equal(got.error, "boom");
    assert_int_equal(got.signature.len, 0);
    store_sign_request_clear(&got);

    /* Audit of another org in the same call is refused before any write. */
    a.org_id = org + 1;
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &a), QK_ERR_INVALID_ARG);
    assert_int_equal(STORE_CALL(f->s, request_get, org, "req_nope", &got, &found),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
}

static void test_org_isolation(void **state)
{
    fixture *f = *state;
    int64_t ka = 0, kb = 0;
    int64_t A = org_with_profile(f->s, "org-a", &ka), B = org_with_profile(f->s, "org-b", &kb);
    store_signing_key k;
    store_profile p;
    store_sign_request r, got;
    store_audit au;
    store_apikey key, *list = NULL;
    size_t n = 0;
    int64_t cnt = 0, id = 0;
    int found = 1;
    uint8_t h[32];

    /* Signing keys and profiles. */
    assert_int_equal(STORE_CALL(f->s, signing_key_get, B, ka, &k, &found), QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    assert_int_equal(STORE_CALL(f->s, profile_get, B, "default", &p, &found), QK_OK);
    assert_int_equal(p.key_id, kb);
    assert_int_equal(p.org_id, B);
    store_profile_clear(&p);
    /* B cannot bind a profile to A's key: composite foreign key. */
    assert_int_equal(STORE_CALL(f->s, profile_create, B, "stolen", "local", ka,
                                (qk_slice){fake_chain, sizeof(fake_chain)}, NULL, &id),
                     QK_ERR_INVALID_ARG);

    /* API keys. */
    fill_hash(h, 7);
    assert_int_equal(
        STORE_CALL(f->s, apikey_create, A, 0, "a-key", "qk_aaaaaaa", h, ROLE_ADMIN, 0, &id), QK_OK);
    assert_int_equal(STORE_CALL(f->s, apikey_list, B, &list, &n), QK_OK);
    assert_int_equal(n, 0);
    store_apikey_list_free(list, n);
    assert_int_equal(STORE_CALL(f->s, apikey_get, B, id, &key, &found), QK_ERR_INVALID_ARG);
    assert_int_equal(STORE_CALL(f->s, apikey_revoke, B, id, &found), QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    assert_int_equal(STORE_CALL(f->s, apikey_get, A, id, &key, &found), QK_OK);
    assert_int_equal(key.revoked_at, 0); /* B's attempt changed nothing */
    store_apikey_clear(&key);

    /* Requests and audit rows. */
    make_request(&r, A, "req_00000000000000000000000000000001");
    make_audit(&au, A, r.id, "a.exe");
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &au), QK_OK);
    assert_int_equal(STORE_CALL(f->s, request_get, B, r.id, &got, &found), QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    assert_int_equal(STORE_CALL(f->s, audit_count, B, r.id, &cnt), QK_OK);
    assert_int_equal(cnt, 0);
    /* B reusing A's request id neither overwrites nor reads it. */
    make_request(&r, B, "req_00000000000000000000000000000001");
    r.status = REQ_FAILED;
    make_audit(&au, B, r.id, "b.exe");
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &au), QK_ERR_INVALID_ARG);
    assert_int_equal(STORE_CALL(f->s, request_get, A, r.id, &got, &found), QK_OK);
    assert_int_equal(got.status, REQ_SIGNED);
    store_sign_request_clear(&got);
    assert_int_equal(STORE_CALL(f->s, audit_count, B, NULL, &cnt), QK_OK);
    assert_int_equal(cnt, 0); /* the failed write's audit row was rolled back with it */

    /* Chains are per org. */
    make_audit(&au, B, NULL, "b.exe");
    assert_int_equal(STORE_CALL(f->s, audit_append, &au), QK_OK);
    int ok = 0;
    int64_t bad = 0;
    assert_int_equal(STORE_CALL(f->s, audit_verify, A, &ok, &bad, &cnt), QK_OK);
    assert_true(ok);
    assert_int_equal(cnt, 1);
    assert_int_equal(STORE_CALL(f->s, audit_verify, B, &ok, &bad, &cnt), QK_OK);
    assert_true(ok);
    assert_int_equal(cnt, 1);
}

static int64_t append_n(qk_store *s, int64_t org, int n)
{
    store_audit a;
    char file[32];
    for (int i = 0; i < n; i++) {
        snprintf(file, sizeof(file), "f%d.exe", i);
        make_audit(&a, org, NULL, file);
        a.outcome = i % 3 == 0 ? AUDIT_DENIED : AUDIT_ALLOWED;
        assert_int_equal(STORE_CALL(s, audit_append, &a), QK_OK);
    }
    return n;
}

static void verify_expect(qk_store *s, int64_t org, int want_ok, int64_t want_bad)
{
    int ok = -1;
    int64_t bad = -1, n = 0;
    assert_int_equal(STORE_CALL(s, audit_verify, org, &ok, &bad, &n), QK_OK);
    assert_int_equal(ok, want_ok);
    assert_int_equal(bad, want_bad);
}

static void test_audit_detects_edit(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    append_n(f->s, org, 10);
    verify_expect(f->s, org, 1, 0);
    int64_t id5 = raw_int(f->dir, "SELECT id FROM audit WHERE seq = 5");
    raw_sql(f->dir, "UPDATE audit SET filename = 'innocent.exe' WHERE seq = 5");
    verify_expect(f->s, org, 0, id5);
}

static void test_audit_detects_outcome_flip(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    append_n(f->s, org, 4);
    int64_t id1 = raw_int(f->dir, "SELECT id FROM audit WHERE seq = 1");
    raw_sql(f->dir, "UPDATE audit SET outcome = 0 WHERE seq = 1"); /* denied -> allowed */
    verify_expect(f->s, org, 0, id1);
}

static void test_audit_detects_rehashed_edit(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    append_n(f->s, org, 6);
    /* Even a row whose own hash was "fixed" breaks the next row's prev_hash. */
    int64_t id4 = raw_int(f->dir, "SELECT id FROM audit WHERE seq = 4");
    raw_sql(f->dir, "UPDATE audit SET hash = zeroblob(32) WHERE seq = 3");
    int ok = 1;
    int64_t bad = 0, n = 0;
    assert_int_equal(STORE_CALL(f->s, audit_verify, org, &ok, &bad, &n), QK_OK);
    assert_int_equal(ok, 0);
    assert_true(bad == id4 || bad == id4 - 1);
}

static void test_audit_detects_delete(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    append_n(f->s, org, 10);
    int64_t id6 = raw_int(f->dir, "SELECT id FROM audit WHERE seq = 6");
    raw_sql(f->dir, "DELETE FROM audit WHERE seq = 5");
    verify_expect(f->s, org, 0, id6);
}

static void test_audit_detects_truncated_tail(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    append_n(f->s, org, 5);
    raw_sql(f->dir, "DELETE FROM audit WHERE seq = 5");
    verify_expect(f->s, org, 0, 0);
}

static void test_audit_empty_and_continues_after_reopen(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    verify_expect(f->s, org, 1, 0);
    append_n(f->s, org, 3);
    reopen(f);
    append_n(f->s, org, 3);
    verify_expect(f->s, org, 1, 0);
    assert_int_equal(raw_int(f->dir, "SELECT max(seq) FROM audit"), 6);
}

/* --- group commit ------------------------------------------------------- */

#define GC_THREADS 16
#define GC_WRITES 100

typedef struct gc_arg {
    qk_store *s;
    int64_t org;
    int t;
    int failures;
} gc_arg;

static void *gc_worker(void *p)
{
    gc_arg *g = p;
    for (int i = 0; i < GC_WRITES; i++) {
        store_sign_request r;
        store_audit a;
        char id[40], file[32];
        snprintf(id, sizeof(id), "req_%016x%016x", (unsigned)g->t, (unsigned)i);
        snprintf(file, sizeof(file), "t%d-%d.exe", g->t, i);
        make_request(&r, g->org, id);
        r.filename = file;
        make_audit(&a, g->org, id, file);
        if (STORE_CALL(g->s, request_record, &r, &a) != QK_OK)
            g->failures++;
    }
    return NULL;
}

static void test_group_commit_16x100(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme"), n = 0;
    pthread_t th[GC_THREADS];
    gc_arg args[GC_THREADS];
    store_sqlite_counters c0, c1;

    store_sqlite_stats(f->s, &c0);
    for (int t = 0; t < GC_THREADS; t++) {
        args[t] = (gc_arg){f->s, org, t, 0};
        assert_int_equal(pthread_create(&th[t], NULL, gc_worker, &args[t]), 0);
    }
    for (int t = 0; t < GC_THREADS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(args[t].failures, 0);
    }
    store_sqlite_stats(f->s, &c1);
    uint64_t commits = c1.commits, writes = c1.writes, commits0 = c0.commits, writes0 = c0.writes;
    assert_int_equal(writes - writes0, GC_THREADS * GC_WRITES);
    /* Batching happened: far fewer commits (fsyncs) than writes. */
    assert_true(commits - commits0 < (uint64_t)GC_THREADS * GC_WRITES);
    print_message("group commit: %llu writes in %llu commits\n",
                  (unsigned long long)(writes - writes0), (unsigned long long)(commits - commits0));

    /* Durable: everything is there after reopening, each request with its row. */
    reopen(f);
    assert_int_equal(STORE_CALL(f->s, audit_count, org, NULL, &n), QK_OK);
    assert_int_equal(n, GC_THREADS * GC_WRITES);
    assert_int_equal(raw_int(f->dir, "SELECT count(*) FROM sign_requests"), GC_THREADS * GC_WRITES);
    assert_int_equal(raw_int(f->dir, "SELECT count(*) FROM sign_requests r WHERE NOT EXISTS "
                                     "(SELECT 1 FROM audit a WHERE a.request_id = r.id)"),
                     0);
    verify_expect(f->s, org, 1, 0);
}

static void test_commit_failure_fails_callers(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme"), n = -1;
    store_sign_request r, got;
    store_audit a;
    int found = 1;

    make_request(&r, org, "req_0000000000000000000000000000dead");
    make_audit(&a, org, r.id, "x.exe");
    store_sqlite_fail_commits(f->s, 1);
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &a), QK_ERR_IO);
    assert_int_equal(STORE_CALL(f->s, request_get, org, r.id, &got, &found), QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    assert_int_equal(STORE_CALL(f->s, audit_count, org, NULL, &n), QK_OK);
    assert_int_equal(n, 0);
    /* The next batch commits normally and the chain is intact. */
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &a), QK_OK);
    verify_expect(f->s, org, 1, 0);
}

static void test_reads_do_not_wait_for_writer(void **state)
{
    fixture *f = *state;
    int64_t key_id = 0, org = org_with_profile(f->s, "acme", &key_id);
    char path[4096];
    sqlite3 *db = NULL;
    store_profile p;
    int found = 0;

    /* Another connection holds the write lock (as a long batch would). */
    snprintf(path, sizeof(path), "%s/%s", f->dir, STORE_SQLITE_FILE);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "BEGIN IMMEDIATE; INSERT INTO orgs(name, created_at) "
                                  "VALUES('locker', 0);",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(STORE_CALL(f->s, profile_get, org, "default", &p, &found), QK_OK);
    store_profile_clear(&p);
    int64_t id = 0;
    assert_int_equal(STORE_CALL(f->s, org_find, "locker", &id, &found), QK_ERR_INVALID_ARG);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(db);
}

static void test_input_limits(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    store_audit a;
    char *big = malloc(10000);
    memset(big, 'x', 9999);
    big[9999] = '\0';
    make_audit(&a, org, NULL, big);
    assert_int_equal(STORE_CALL(f->s, audit_append, &a), QK_ERR_TOO_LARGE);
    make_audit(&a, 0, NULL, "f");
    assert_int_equal(STORE_CALL(f->s, audit_append, &a), QK_ERR_INVALID_ARG);
    store_sign_request r;
    make_request(&r, org, "");
    assert_int_equal(STORE_CALL(f->s, request_record, &r, NULL), QK_ERR_INVALID_ARG);
    free(big);
}

/* --- commit delay and checkpoints ----------------------------------------- */

#define PACED_WRITES 30

typedef struct paced {
    store_sign_request r[PACED_WRITES];
    store_audit a[PACED_WRITES];
    char id[PACED_WRITES][40];
    pthread_mutex_t mu;
    int done, failed;
} paced;

static void paced_done(void *arg, qk_err rc, const char *detail)
{
    paced *p = arg;
    (void)detail;
    pthread_mutex_lock(&p->mu);
    p->done++;
    if (rc != QK_OK)
        p->failed++;
    pthread_mutex_unlock(&p->mu);
}

/* PACED_WRITES async writes 20 ms apart (a steady, moderate load); returns
 * the commits they took once all have landed. */
static uint64_t paced_run(qk_store *s, int64_t org, const char *tag, uint64_t *delayed)
{
    paced *p = calloc(1, sizeof(*p));
    store_sqlite_counters a, b;
    pthread_mutex_init(&p->mu, NULL);
    store_sqlite_stats(s, &a);
    for (int i = 0; i < PACED_WRITES; i++) {
        snprintf(p->id[i], sizeof(p->id[i]), "req_%s%026d", tag, i);
        make_request(&p->r[i], org, p->id[i]);
        make_audit(&p->a[i], org, p->id[i], "paced.exe");
        assert_int_equal(STORE_CALL(s, request_record_async, &p->r[i], &p->a[i], paced_done, p),
                         QK_OK);
        usleep(20000);
    }
    store_sqlite_flush(s);
    store_sqlite_stats(s, &b);
    assert_int_equal(p->done, PACED_WRITES);
    assert_int_equal(p->failed, 0);
    assert_int_equal(b.writes - a.writes, PACED_WRITES + 1); /* the flush is a write too */
    *delayed = b.delayed - a.delayed;
    pthread_mutex_destroy(&p->mu);
    free(p);
    return b.commits - a.commits;
}

/* Writes 20 ms apart while more are said to be on their way (the server's
 * count of requests being signed): without a delay each commits alone
 * (unless an fsync took 20 ms); with a 200 ms delay (capped at
 * STORE_MAX_COMMIT_DELAY_US, 100 ms) they share commits. With the delay on
 * but nothing on its way, none waits. Every write lands in every case. */
static void test_commit_delay_batches_while_writes_are_coming(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme"), n = 0;
    uint64_t delayed = 0, idle_delayed = 0;
    static atomic_int coming;

    atomic_store(&coming, 1);
    uint64_t plain = paced_run(f->s, org, "a", &delayed);
    assert_int_equal(delayed, 0);
    store_sqlite_set_commit_delay(f->s, 200000, &coming);
    uint64_t with_delay = paced_run(f->s, org, "b", &delayed);
    atomic_store(&coming, 0);
    uint64_t nothing_coming = paced_run(f->s, org, "c", &idle_delayed);
    print_message("30 writes 20 ms apart: %llu commits without delay, %llu with (%llu delayed), "
                  "%llu with nothing coming\n",
                  (unsigned long long)plain, (unsigned long long)with_delay,
                  (unsigned long long)delayed, (unsigned long long)nothing_coming);
    assert_true(delayed > 0);
    assert_true(with_delay + 5 <= plain);
    assert_int_equal(idle_delayed, 0);
    assert_int_equal(STORE_CALL(f->s, audit_count, org, NULL, &n), QK_OK);
    assert_int_equal(n, 3 * PACED_WRITES);
    verify_expect(f->s, org, 1, 0);
    store_sqlite_set_commit_delay(f->s, 0, NULL);
}

/* A write while nothing else is on its way is not held back, whatever the
 * delay; nor with the delay on but no count given. */
static void test_commit_delay_lone_write_not_delayed(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    store_sign_request r;
    store_audit a;
    store_sqlite_counters before, after;
    static atomic_int coming;

    atomic_store(&coming, 0);
    store_sqlite_stats(f->s, &before);
    store_sqlite_set_commit_delay(f->s, STORE_MAX_COMMIT_DELAY_US, &coming);
    make_request(&r, org, "req_00000000000000000000000000000001");
    make_audit(&a, org, r.id, "lone.exe");
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &a), QK_OK);
    store_sqlite_set_commit_delay(f->s, STORE_MAX_COMMIT_DELAY_US, NULL);
    make_request(&r, org, "req_00000000000000000000000000000002");
    make_audit(&a, org, r.id, "lone.exe");
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &a), QK_OK);
    store_sqlite_stats(f->s, &after);
    assert_int_equal(after.delayed - before.delayed, 0);
    assert_int_equal(after.writes - before.writes, 2);
    store_sqlite_set_commit_delay(f->s, 0, NULL);
}

static int64_t file_size(const char *dir, const char *name)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

#define CKPT_ROWS 3000

/* The checkpointer thread copies the WAL into the database file while the
 * store stays open (the writer itself never checkpoints). */
static void test_checkpointer_copies_wal(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme"), n = 0;
    static uint8_t sig[6000];
    paced *p = calloc(1, sizeof(*p));
    store_sign_request *r = calloc(CKPT_ROWS, sizeof(*r));
    store_audit *a = calloc(CKPT_ROWS, sizeof(*a));
    char(*ids)[40] = calloc(CKPT_ROWS, 40);
    int64_t db0 = file_size(f->dir, STORE_SQLITE_FILE), db1 = 0;

    pthread_mutex_init(&p->mu, NULL);
    memset(sig, 0x5a, sizeof(sig));
    for (int i = 0; i < CKPT_ROWS; i++) {
        snprintf(ids[i], 40, "req_%032d", i);
        make_request(&r[i], org, ids[i]);
        r[i].signature = (qk_buf){sig, sizeof(sig)};
        make_audit(&a[i], org, ids[i], "big.exe");
        assert_int_equal(STORE_CALL(f->s, request_record_async, &r[i], &a[i], paced_done, p),
                         QK_OK);
    }
    store_sqlite_flush(f->s);
    assert_int_equal(p->done, CKPT_ROWS);
    assert_int_equal(p->failed, 0);
    /* 3000 rows of 6 KB are > 4096 WAL pages: a checkpoint is due. It runs
     * on its own thread, so wait for it (bounded) rather than for a time. */
    for (int i = 0; i < 300 && (db1 = file_size(f->dir, STORE_SQLITE_FILE)) < 8 * 1024 * 1024; i++)
        usleep(50000);
    print_message("database file %lld -> %lld bytes, WAL %lld bytes, store open\n",
                  (long long)db0, (long long)db1,
                  (long long)file_size(f->dir, STORE_SQLITE_FILE "-wal"));
    assert_true(db1 >= 8 * 1024 * 1024);
    store_sqlite_counters c;
    store_sqlite_stats(f->s, &c);
    assert_true(c.checkpoints > 0);
    assert_true(c.ckpt_frames >= 2000); /* at least the frames of the rows' pages */
    assert_int_equal(STORE_CALL(f->s, audit_count, org, NULL, &n), QK_OK);
    assert_int_equal(n, CKPT_ROWS);
    reopen(f);
    assert_int_equal(raw_int(f->dir, "SELECT count(*) FROM sign_requests"), CKPT_ROWS);
    verify_expect(f->s, org, 1, 0);
    pthread_mutex_destroy(&p->mu);
    free(ids);
    free(a);
    free(r);
    free(p);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_migrations_idempotent),
        T(test_newer_schema_refused),
        T(test_db_file_private),
        T(test_round_trips),
        T(test_request_round_trip),
        T(test_org_isolation),
        T(test_audit_detects_edit),
        T(test_audit_detects_outcome_flip),
        T(test_audit_detects_rehashed_edit),
        T(test_audit_detects_delete),
        T(test_audit_detects_truncated_tail),
        T(test_audit_empty_and_continues_after_reopen),
        T(test_group_commit_16x100),
        T(test_commit_failure_fails_callers),
        T(test_reads_do_not_wait_for_writer),
        T(test_input_limits),
        T(test_commit_delay_batches_while_writes_are_coming),
        T(test_commit_delay_lone_write_not_delayed),
        T(test_checkpointer_copies_wal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
