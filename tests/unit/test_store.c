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

#include <inttypes.h>
#include <sodium.h>
#include "common/hex.h"
#include "store/store.h"
#include "common/tlog.h"

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
    assert_int_equal(STORE_CALL(s, org_create, name, NULL, &id), QK_OK);
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
                                (qk_slice){fake_chain, sizeof(fake_chain)}, NULL, NULL, &pid),
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
                                (qk_slice){fake_chain, sizeof(fake_chain)}, NULL, NULL, &pid),
                     QK_ERR_INVALID_ARG); /* UNIQUE(org_id, name) */

    uint8_t h[32], stored[32];
    int64_t kid = 0;
    fill_hash(h, 1);
    assert_int_equal(STORE_CALL(f->s, apikey_create, org, user, "ci", "qk_abcdefg", h, ROLE_SIGNER,
                                12345, NULL, &kid),
                     QK_OK);
    assert_int_equal(
        STORE_CALL(f->s, apikey_create, org, 0, "dup", "qk_abcdefg", h, ROLE_SIGNER, 0, NULL, &pid),
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

    assert_int_equal(STORE_CALL(f->s, apikey_revoke, org, kid, NULL, &found), QK_OK);
    assert_int_equal(found, 1);
    assert_int_equal(STORE_CALL(f->s, apikey_get, org, kid, &a, &found), QK_OK);
    assert_true(a.revoked_at > 0);
    int64_t first = a.revoked_at;
    store_apikey_clear(&a);
    assert_int_equal(STORE_CALL(f->s, apikey_revoke, org, kid, NULL, &found), QK_OK);
    assert_int_equal(STORE_CALL(f->s, apikey_get, org, kid, &a, &found), QK_OK);
    assert_int_equal(a.revoked_at, first); /* the first revocation time stays */
    store_apikey_clear(&a);
    assert_int_equal(STORE_CALL(f->s, apikey_revoke, org, kid + 100, NULL, &found),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);

    /* touch is asynchronous: it is durable after close (the writer drains). */
    assert_int_equal(STORE_CALL(f->s, apikey_touch, org, kid, 777), QK_OK);
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
                                (qk_slice){fake_chain, sizeof(fake_chain)}, NULL, NULL, &id),
                     QK_ERR_INVALID_ARG);

    /* API keys. */
    fill_hash(h, 7);
    assert_int_equal(
        STORE_CALL(f->s, apikey_create, A, 0, "a-key", "qk_aaaaaaa", h, ROLE_ADMIN, 0, NULL, &id),
        QK_OK);
    assert_int_equal(STORE_CALL(f->s, apikey_list, B, &list, &n), QK_OK);
    assert_int_equal(n, 0);
    store_apikey_list_free(list, n);
    assert_int_equal(STORE_CALL(f->s, apikey_get, B, id, &key, &found), QK_ERR_INVALID_ARG);
    assert_int_equal(STORE_CALL(f->s, apikey_revoke, B, id, NULL, &found), QK_ERR_INVALID_ARG);
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

    /* Logs are per org. */
    make_audit(&au, B, NULL, "b.exe");
    assert_int_equal(STORE_CALL(f->s, audit_append, &au), QK_OK);
    store_audit_check chk;
    assert_int_equal(STORE_CALL(f->s, audit_verify, A, &chk), QK_OK);
    assert_true(chk.ok);
    assert_int_equal(chk.count, 1);
    assert_int_equal(STORE_CALL(f->s, audit_verify, B, &chk), QK_OK);
    assert_true(chk.ok);
    assert_int_equal(chk.count, 1);
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

/* want_bad: the entry named at fault (0: the log as a whole). */
static void verify_expect(qk_store *s, int64_t org, int want_ok, int64_t want_bad)
{
    store_audit_check chk;
    assert_int_equal(STORE_CALL(s, audit_verify, org, &chk), QK_OK);
    if (chk.ok != want_ok || chk.bad_seq != want_bad)
        fail_msg("verify: ok %d bad %" PRId64 " (%s), wanted ok %d bad %" PRId64, chk.ok,
                 chk.bad_seq, chk.problem, want_ok, want_bad);
}

static void test_audit_detects_edit(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    append_n(f->s, org, 10);
    verify_expect(f->s, org, 1, 0);
    raw_sql(f->dir, "UPDATE audit SET filename = 'innocent.exe' WHERE seq = 5");
    verify_expect(f->s, org, 0, 5);
}

static void test_audit_detects_outcome_flip(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    append_n(f->s, org, 4);
    raw_sql(f->dir, "UPDATE audit SET outcome = 0 WHERE seq = 1"); /* denied -> allowed */
    verify_expect(f->s, org, 0, 1);
}

/* A text in an integer column is refused by the STRICT table; a table
 * rebuilt without STRICT to allow it is named as such. */
static void test_audit_detects_type_poisoning(void **state)
{
    fixture *f = *state;
    char path[4096];
    sqlite3 *db = NULL;
    int64_t org = new_org(f->s, "acme");
    append_n(f->s, org, 3);
    snprintf(path, sizeof(path), "%s/%s", f->dir, STORE_SQLITE_FILE);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_not_equal(sqlite3_exec(db,
                                      "UPDATE audit SET outcome = '1 allowed-by-override' "
                                      "WHERE seq = 2",
                                      NULL, NULL, NULL),
                         SQLITE_OK);
    sqlite3_close(db);
    raw_sql(f->dir, "CREATE TABLE a2 AS SELECT * FROM audit; DROP TABLE audit;"
                    "ALTER TABLE a2 RENAME TO audit;"
                    "UPDATE audit SET outcome = '1 allowed-by-override' WHERE seq = 2");
    store_audit_check chk;
    assert_int_equal(STORE_CALL(f->s, audit_verify, org, &chk), QK_OK);
    assert_false(chk.ok);
    assert_non_null(strstr(chk.problem, "STRICT"));
}

static void test_audit_detects_node_edit(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    append_n(f->s, org, 6);
    char sql[128];
    snprintf(sql, sizeof(sql), "UPDATE log_nodes SET hash = zeroblob(32) WHERE pos = %" PRId64,
             tlog_pos(1, 1)); /* the subtree over entries 3 and 4 */
    raw_sql(f->dir, sql);
    verify_expect(f->s, org, 0, 4);
}

static void test_audit_detects_delete(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    append_n(f->s, org, 10);
    raw_sql(f->dir, "DELETE FROM audit WHERE seq = 5");
    verify_expect(f->s, org, 0, 5);
}

static void test_audit_detects_truncated_tail(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    append_n(f->s, org, 5);
    raw_sql(f->dir, "DELETE FROM audit WHERE seq = 5");
    verify_expect(f->s, org, 0, 0);
}

/* Signatures are in the log: deleting or editing a signed request's row
 * shows, and so does a signed request no entry names. */
static void test_audit_detects_request_tamper(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    store_sign_request r;
    store_audit au;
    make_request(&r, org, "req_00000000000000000000000000000007");
    make_audit(&au, org, r.id, "a.exe");
    au.sig_sha256 = "00"; /* replaced below with the real hash */
    uint8_t d[32];
    char hex[65];
    crypto_hash_sha256(d, r.signature.data, r.signature.len);
    hex_encode(d, 32, hex);
    au.sig_sha256 = hex;
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &au), QK_OK);
    verify_expect(f->s, org, 1, 0);
    raw_sql(f->dir, "UPDATE sign_requests SET signature = X'0102'");
    verify_expect(f->s, org, 0, 1);
    raw_sql(f->dir, "DELETE FROM sign_requests");
    verify_expect(f->s, org, 0, 1);
    /* A planted signed request without an entry. */
    raw_sql(f->dir, "UPDATE audit SET request_id = 'req_x' WHERE seq = 1");
    store_audit_check chk;
    assert_int_equal(STORE_CALL(f->s, audit_verify, org, &chk), QK_OK);
    assert_false(chk.ok);
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

/* A key change and its audit entry commit together: a failed commit leaves
 * neither, and the entry records what changed (id, role, expiry). */
static void test_changes_commit_with_their_entry(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme"), id = 0, cnt = 0;
    uint8_t h[32] = {7};
    store_audit a;
    store_apikey *keys = NULL;
    size_t n = 0;
    int found = 0;
    make_audit(&a, org, NULL, NULL);
    a.action = "apikey.create";
    store_sqlite_fail_commits(f->s, 1);
    assert_int_not_equal(STORE_CALL(f->s, apikey_create, org, 0, "viewer-for-ci", "qk_zzzzzzz", h,
                                    ROLE_ADMIN, 0, &a, &id),
                         QK_OK);
    assert_int_equal(STORE_CALL(f->s, apikey_list, org, &keys, &n), QK_OK);
    assert_int_equal(n, 0);
    store_apikey_list_free(keys, n);
    assert_int_equal(STORE_CALL(f->s, audit_count, org, NULL, &cnt), QK_OK);
    assert_int_equal(cnt, 0);
    /* A bad entry refuses the change before anything is written. */
    a.action = NULL;
    assert_int_equal(
        STORE_CALL(f->s, apikey_create, org, 0, "k", "qk_zzzzzzz", h, ROLE_ADMIN, 0, &a, &id),
        QK_ERR_INVALID_ARG);
    a.action = "apikey.create";
    assert_int_equal(STORE_CALL(f->s, apikey_create, org, 0, "viewer-for-ci", "qk_zzzzzzz", h,
                                ROLE_ADMIN, 99, &a, &id),
                     QK_OK);
    a.action = "apikey.revoke";
    assert_int_equal(STORE_CALL(f->s, apikey_revoke, org, id, &a, &found), QK_OK);
    store_log_entry *es = NULL;
    assert_int_equal(STORE_CALL(f->s, log_entries, org, 0, 10, &es, &n), QK_OK);
    assert_int_equal(n, 2);
    tlog_entry e;
    const char *why = NULL;
    char want[96];
    snprintf(want, sizeof(want),
             "{\"expiresAt\":99,\"keyId\":%" PRId64
             ",\"name\":\"viewer-for-ci\",\"role\":\"admin\",\"userId\":0}",
             id);
    assert_int_equal(tlog_leaf_decode(es[0].leaf.data, es[0].leaf.len, &e, &why), 0);
    assert_string_equal(e.meta, want);
    tlog_entry_clear(&e);
    assert_int_equal(tlog_leaf_decode(es[1].leaf.data, es[1].leaf.len, &e, &why), 0);
    assert_non_null(strstr(e.meta, "\"role\":\"admin\""));
    assert_non_null(strstr(e.meta, "\"revokedAt\":"));
    tlog_entry_clear(&e);
    store_log_entries_free(es, n);
    /* Revoking a key of no one: not found, nothing recorded. */
    assert_int_equal(STORE_CALL(f->s, apikey_revoke, org, id + 5, &a, &found), QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    assert_int_equal(STORE_CALL(f->s, audit_count, org, NULL, &cnt), QK_OK);
    assert_int_equal(cnt, 2);
}

/* Every inclusion and consistency proof the store builds checks out
 * against the root it reports, for every size up to 37. */
static void test_log_proofs(void **state)
{
    fixture *f = *state;
    int64_t org = new_org(f->s, "acme");
    store_proof root[38], p;
    store_log_entry *es = NULL;
    size_t n = 0;
    assert_int_equal(STORE_CALL(f->s, log_prove, org, PROOF_ROOT, 0, 0, &p), QK_ERR_INVALID_ARG);
    for (int size = 1; size <= 37; size++) {
        int64_t idx = -1;
        store_audit a;
        make_audit(&a, org, NULL, "p.exe");
        a.log_index = &idx;
        assert_int_equal(STORE_CALL(f->s, audit_append, &a), QK_OK);
        assert_int_equal(idx, size - 1);
        assert_int_equal(STORE_CALL(f->s, log_prove, org, PROOF_ROOT, 0, 0, &root[size]), QK_OK);
        assert_int_equal(root[size].size, size);
    }
    assert_int_equal(STORE_CALL(f->s, log_entries, org, 0, 100, &es, &n), QK_OK);
    assert_int_equal(n, 37);
    for (int size = 1; size <= 37; size++) {
        for (int i = 0; i < size; i++) {
            tlog_hash leaf;
            tlog_leaf_hash(es[i].leaf.data, es[i].leaf.len, leaf);
            assert_int_equal(STORE_CALL(f->s, log_prove, org, PROOF_INCLUSION, i, size, &p), QK_OK);
            assert_memory_equal(p.root, root[size].root, 32);
            assert_int_equal(tlog_verify_inclusion(i, size, leaf, p.hashes, p.n, p.root), 0);
            leaf[0] ^= 1;
            assert_int_not_equal(tlog_verify_inclusion(i, size, leaf, p.hashes, p.n, p.root), 0);
        }
        for (int from = 1; from <= size; from++) {
            assert_int_equal(STORE_CALL(f->s, log_prove, org, PROOF_CONSISTENCY, from, size, &p),
                             QK_OK);
            assert_int_equal(tlog_verify_consistency(from, size, root[from].root, root[size].root,
                                                     p.hashes, p.n),
                             0);
        }
    }
    store_log_entries_free(es, n);
    assert_int_equal(STORE_CALL(f->s, log_prove, org, PROOF_INCLUSION, 37, 37, &p),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(STORE_CALL(f->s, log_prove, org, PROOF_CONSISTENCY, 3, 38, &p),
                     QK_ERR_INVALID_ARG);
    verify_expect(f->s, org, 1, 0);
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
    make_audit(&a, -1, NULL, "f");
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
    print_message("database file %lld -> %lld bytes, WAL %lld bytes, store open\n", (long long)db0,
                  (long long)db1, (long long)file_size(f->dir, STORE_SQLITE_FILE "-wal"));
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

/* Master-key rotation's view of the store: every org's signing keys and the
 * instance secrets, re-sealed by compare-and-swap only. */
static void test_reseal_every_blob(void **state)
{
    fixture *f = *state;
    static const uint8_t fresh[] = "QKS1\0\0\0\2-re-sealed";
    static const uint8_t other[] = "QKS1\0\0\0\3-someone-else";
    int64_t k1 = 0, k2 = 0, k3 = 0;
    int64_t o1 = org_with_profile(f->s, "one", &k1), o2 = org_with_profile(f->s, "two", &k2);
    store_signing_key *keys = NULL;
    char **names = NULL;
    size_t n = 0;
    int found = -1;

    assert_int_equal(STORE_CALL(f->s, signing_key_create, o1, "azure-graph",
                                (qk_slice){fake_sealed, sizeof(fake_sealed)}, &k3),
                     QK_OK);
    assert_int_equal(STORE_CALL(f->s, signing_key_list_all, &keys, &n), QK_OK);
    assert_int_equal(n, 3); /* both orgs, by org then id */
    assert_true(keys[0].org_id == o1 && keys[0].id == k1 && keys[1].org_id == o1 &&
                keys[1].id == k3 && keys[2].org_id == o2 && keys[2].id == k2);
    assert_string_equal(keys[1].kind, "azure-graph");
    assert_memory_equal(keys[2].sealed.data, fake_sealed, sizeof(fake_sealed));
    store_signing_key_list_free(keys, n);

    qk_slice old = {fake_sealed, sizeof(fake_sealed)}, nu = {fresh, sizeof(fresh)};
    /* The old blob must still be there: a stale one is never written back. */
    assert_int_equal(STORE_CALL(f->s, signing_key_reseal, o2, k2, nu, nu, &found),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    assert_int_equal(STORE_CALL(f->s, signing_key_reseal, o1, k2, old, nu, &found),
                     QK_ERR_INVALID_ARG); /* another org's key */
    assert_int_equal(STORE_CALL(f->s, signing_key_reseal, o2, k2, old, nu, &found), QK_OK);
    assert_int_equal(found, 1);
    assert_int_equal(STORE_CALL(f->s, signing_key_reseal, o2, k2, old, nu, &found),
                     QK_ERR_INVALID_ARG); /* done once, not twice */
    store_signing_key k;
    assert_int_equal(STORE_CALL(f->s, signing_key_get, o2, k2, &k, &found), QK_OK);
    assert_memory_equal(k.sealed.data, fresh, sizeof(fresh));
    store_signing_key_clear(&k);
    assert_int_equal(STORE_CALL(f->s, signing_key_get, o1, k1, &k, &found), QK_OK);
    assert_memory_equal(k.sealed.data, fake_sealed, sizeof(fake_sealed)); /* untouched */
    store_signing_key_clear(&k);
    assert_int_equal(
        STORE_CALL(f->s, signing_key_reseal, o1, k1, old, (qk_slice){fresh, 0}, &found),
        QK_ERR_INVALID_ARG);

    assert_int_equal(STORE_CALL(f->s, instance_secret_names, &names, &n), QK_OK);
    assert_int_equal(n, 0);
    store_names_free(names, n);
    assert_int_equal(STORE_CALL(f->s, instance_secret_put, "b-key", old, (qk_slice){fresh, 4}),
                     QK_OK);
    assert_int_equal(STORE_CALL(f->s, instance_secret_put, "a-key", old, (qk_slice){fresh, 4}),
                     QK_OK);
    assert_int_equal(STORE_CALL(f->s, instance_secret_names, &names, &n), QK_OK);
    assert_int_equal(n, 2);
    assert_string_equal(names[0], "a-key");
    assert_string_equal(names[1], "b-key");
    store_names_free(names, n);
    qk_slice wrong = {other, sizeof(other)};
    assert_int_equal(STORE_CALL(f->s, instance_secret_reseal, "a-key", wrong, nu, &found),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(STORE_CALL(f->s, instance_secret_reseal, "nope", old, nu, &found),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(STORE_CALL(f->s, instance_secret_reseal, "a-key", old, nu, &found), QK_OK);
    assert_int_equal(found, 1);
    qk_buf sealed = {NULL, 0}, pub = {NULL, 0};
    assert_int_equal(STORE_CALL(f->s, instance_secret_get, "a-key", &sealed, &pub, &found), QK_OK);
    assert_memory_equal(sealed.data, fresh, sizeof(fresh));
    assert_int_equal(pub.len, 4); /* the public half stays */
    qk_buf_free(&sealed);
    qk_buf_free(&pub);
    assert_int_equal(STORE_CALL(f->s, instance_secret_get, "b-key", &sealed, &pub, &found), QK_OK);
    assert_memory_equal(sealed.data, fake_sealed, sizeof(fake_sealed));
    qk_buf_free(&sealed);
    qk_buf_free(&pub);
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
        T(test_audit_detects_type_poisoning),
        T(test_audit_detects_node_edit),
        T(test_audit_detects_request_tamper),
        T(test_log_proofs),
        T(test_changes_commit_with_their_entry),
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
        T(test_reseal_every_blob),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
