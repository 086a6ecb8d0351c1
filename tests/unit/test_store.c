/* The store through its interface (store.h): round trips, requests, tenancy,
 * the audit log and what its verification detects, proofs, changes committed
 * with their entry, limits, re-sealing. Built twice: test_store runs on
 * SQLite; test_store_pg (-DSTORE_PG) runs the same tests on PostgreSQL, as
 * the server's own role under row-level security, one fresh database per
 * test on a throwaway cluster (store_fixture.c). Each store also has
 * tests of its own, in the sections at the end: SQLite's file, journal,
 * group commit, commit delay and checkpointer; PostgreSQL's row-level
 * security, appends from many connections and nodes, and schema checks. */
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

#ifdef STORE_PG
#include <libpq-fe.h>
#else
#include <sqlite3.h>
#endif

#include <inttypes.h>
#include <sodium.h>
#include "common/hex.h"
#include "store/store.h"
#include "common/tlog.h"
#include "store_fixture.h"

typedef store_fixture fixture; /* store_fixture.c: a fresh store per test */

#ifndef STORE_PG
/* ---- SQLite only -------------------------------------------------------------- */

/* The next write fails at its commit (the driver's test hook); a test calls
 * writes_work_again after it, which PostgreSQL's fixture needs. */
static void fail_writes(fixture *f)
{
    store_sqlite_fail_commits(f->s, 1);
}

/* The hook fails one commit only: nothing to undo. */
static void writes_work_again(fixture *f)
{
    (void)f;
}

#define SQL_ZERO_HASH "zeroblob(32)"
#define SQL_ZERO_EDGE(n) "zeroblob(" #n ")"
#define SQL_BLOB_0102 "X'0102'"

#else
/* ---- PostgreSQL only ---------------------------------------------------------- */

#include "pg_fixture.h"

/* One cluster for the run, stopped by the group teardown. */
static int group_setup(void **state)
{
    (void)state;
    return sfx_group_start("store_pg", 50);
}

static int group_teardown(void **state)
{
    (void)state;
    sfx_group_stop();
    return 0;
}

/* Writes fail until writes_work_again: a trigger refuses every audit row,
 * so a change's transaction fails at its entry, after the change. */
static void fail_writes(fixture *f)
{
    sfx_raw_sql(f->where, "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
                          "$$BEGIN RAISE EXCEPTION 'test: audit insert refused'; END$$;"
                          "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit "
                          "FOR EACH ROW EXECUTE FUNCTION refuse_audit()");
}

static void writes_work_again(fixture *f)
{
    sfx_raw_sql(f->where, "DROP TRIGGER refuse_audit ON audit; DROP FUNCTION refuse_audit()");
}

#define SQL_ZERO_HASH "decode(repeat('00', 32), 'hex')"
#define SQL_ZERO_EDGE(n) "decode(repeat('00', " #n "), 'hex')"
#define SQL_BLOB_0102 "'\\x0102'::bytea"
#endif

/* ---- helpers ---------------------------------------------------------------- */

static const uint8_t fake_sealed[] = "QKS1\0\0\0\1-not-really-sealed-but-opaque-to-the-store";
static const uint8_t fake_chain[] = {0x30, 0x03, 0x02, 0x01, 0x01};

/* An org with a signing key and a "default" profile on it. */
static int64_t org_with_profile(fixture *f, const char *name, int64_t *key_id)
{
    qk_store *s = f->s;
    int64_t org = sfx_new_org(f, name), pid = 0;
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

/* ---- on both stores ---------------------------------------------------------- */

/* Opening again neither migrates again nor installs twice. */
static void test_migrations_idempotent(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    int64_t v1 = sfx_raw_int(f->where, "SELECT version FROM schema_version");
    assert_true(v1 >= 1);
    sfx_reopen(f);
    sfx_reopen(f);
    assert_int_equal(sfx_raw_int(f->where, "SELECT version FROM schema_version"), v1);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM schema_version"), 1);
    int64_t id = 0;
    int found = 0;
    assert_int_equal(STORE_CALL(f->s, org_find, "acme", &id, &found), QK_OK);
    assert_int_equal(id, org);
}

static void test_newer_schema_refused(void **state)
{
    fixture *f = *state;
    qk_store *s2 = NULL;
    sfx_raw_sql(f->where, "UPDATE schema_version SET version = 999");
    assert_int_equal(sfx_open_at(f->where, &s2), QK_ERR_INVALID_ARG);
    assert_null(s2);
}

static void test_round_trips(void **state)
{
    fixture *f = *state;
    int64_t key_id = 0, org = org_with_profile(f, "acme", &key_id), user = 0;
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
                                12345, NULL, NULL, &kid),
                     QK_OK);
    assert_int_equal(STORE_CALL(f->s, apikey_create, org, 0, "dup", "qk_abcdefg", h, ROLE_SIGNER, 0,
                                NULL, NULL, &pid),
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

    /* touch may be asynchronous (SQLite): it is durable after close (the writer drains). */
    assert_int_equal(STORE_CALL(f->s, apikey_touch, org, kid, 777), QK_OK);
    sfx_reopen(f);
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
    int64_t key_id = 0, org = org_with_profile(f, "acme", &key_id), n = 0;
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
    int64_t A = org_with_profile(f, "org-a", &ka), B = org_with_profile(f, "org-b", &kb);
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
    assert_int_equal(STORE_CALL(f->s, apikey_create, A, 0, "a-key", "qk_aaaaaaa", h, ROLE_ADMIN, 0,
                                NULL, NULL, &id),
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

    /* The key with a profile of its org, in one read: A's key reads A's
     * "default" (B has one of that name too), never B's "stolen" or any. */
    uint8_t stored[32];
    int pfound = 0;
    assert_int_equal(
        STORE_CALL(f->s, apikey_lookup_profile, h, "default", &key, stored, &found, &p, &pfound),
        QK_OK);
    assert_int_equal(found, 1);
    assert_int_equal(key.id, id);
    assert_memory_equal(stored, h, 32);
    assert_int_equal(pfound, 1);
    assert_int_equal(p.org_id, A);
    assert_int_equal(p.key_id, ka);
    assert_string_equal(p.name, "default");
    assert_memory_equal(p.chain_der.data, fake_chain, sizeof(fake_chain));
    store_profile_clear(&p);
    store_apikey_clear(&key);
    assert_int_equal(
        STORE_CALL(f->s, apikey_lookup_profile, h, "nope", &key, stored, &found, &p, &pfound),
        QK_OK);
    assert_int_equal(found, 1);
    assert_int_equal(pfound, 0);
    store_apikey_clear(&key);
    uint8_t other[32];
    fill_hash(other, 99);
    assert_int_equal(STORE_CALL(f->s, apikey_lookup_profile, other, "default", &key, stored, &found,
                                &p, &pfound),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    assert_int_equal(pfound, 0);

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
    int64_t org = sfx_new_org(f, "acme");
    append_n(f->s, org, 10);
    verify_expect(f->s, org, 1, 0);
    sfx_raw_sql(f->where, "UPDATE audit SET filename = 'innocent.exe' WHERE seq = 5");
    verify_expect(f->s, org, 0, 5);
}

static void test_audit_detects_outcome_flip(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    append_n(f->s, org, 4);
    sfx_raw_sql(f->where, "UPDATE audit SET outcome = 0 WHERE seq = 1"); /* denied -> allowed */
    verify_expect(f->s, org, 0, 1);
}

/* A text in an integer column of the log is refused by the database itself:
 * SQLite's STRICT table, PostgreSQL's BIGINT. */
static void test_audit_refuses_text_in_integer(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    append_n(f->s, org, 3);
    assert_int_equal(
        sfx_raw_try(f->where, "UPDATE audit SET outcome = '1 allowed-by-override' WHERE seq = 2"),
        -1);
    verify_expect(f->s, org, 1, 0);
}

static void test_audit_detects_node_edit(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    append_n(f->s, org, 6);
    char sql[128];
    snprintf(sql, sizeof(sql), "UPDATE log_nodes SET hash = " SQL_ZERO_HASH " WHERE pos = %" PRId64,
             tlog_pos(1, 1)); /* the subtree over entries 3 and 4 */
    sfx_raw_sql(f->where, sql);
    verify_expect(f->s, org, 0, 4);
}

/* The log head keeps the tree's right edge for appends; a wrong one (same
 * length, or not fitting the size) is found by verify. */
static void test_audit_detects_edge_edit(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    append_n(f->s, org, 7); /* 4 + 2 + 1: three subtrees on the edge */
    assert_int_equal(sfx_raw_int(f->where, "SELECT length(frontier) FROM log_heads"), 3 * 32);
    verify_expect(f->s, org, 1, 0);
    sfx_raw_sql(f->where, "UPDATE log_heads SET frontier = " SQL_ZERO_EDGE(96));
    verify_expect(f->s, org, 0, 0);
    sfx_raw_sql(f->where, "UPDATE log_heads SET frontier = " SQL_ZERO_EDGE(32));
    verify_expect(f->s, org, 0, 0);
}

/* A head written before it kept the edge (NULL): verify accepts it, the
 * next append rebuilds the edge from the stored nodes and keeps it, and the
 * tree stays the one its entries make. */
static void test_log_edge_rebuilt_for_older_head(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    append_n(f->s, org, 13);
    sfx_raw_sql(f->where, "UPDATE log_heads SET frontier = NULL");
    verify_expect(f->s, org, 1, 0);
    append_n(f->s, org, 6); /* 19 = 16 + 2 + 1 */
    assert_int_equal(sfx_raw_int(f->where, "SELECT length(frontier) FROM log_heads"), 3 * 32);
    verify_expect(f->s, org, 1, 0);
    store_proof p;
    assert_int_equal(STORE_CALL(f->s, log_prove, org, PROOF_CONSISTENCY, 13, 19, &p), QK_OK);
    assert_int_equal(p.size, 19);
}

static void test_audit_detects_delete(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    append_n(f->s, org, 10);
    sfx_raw_sql(f->where, "DELETE FROM audit WHERE seq = 5");
    verify_expect(f->s, org, 0, 5);
}

static void test_audit_detects_truncated_tail(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    append_n(f->s, org, 5);
    sfx_raw_sql(f->where, "DELETE FROM audit WHERE seq = 5");
    verify_expect(f->s, org, 0, 0);
}

/* Signatures are in the log: deleting or editing a signed request's row
 * shows, and so does a signed request no entry names. */
static void test_audit_detects_request_tamper(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
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
    sfx_raw_sql(f->where, "UPDATE sign_requests SET signature = " SQL_BLOB_0102);
    verify_expect(f->s, org, 0, 1);
    sfx_raw_sql(f->where, "DELETE FROM sign_requests");
    verify_expect(f->s, org, 0, 1);
    /* A planted signed request without an entry. */
    sfx_raw_sql(f->where, "UPDATE audit SET request_id = 'req_x' WHERE seq = 1");
    store_audit_check chk;
    assert_int_equal(STORE_CALL(f->s, audit_verify, org, &chk), QK_OK);
    assert_false(chk.ok);
}

static void test_audit_empty_and_continues_after_reopen(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    verify_expect(f->s, org, 1, 0);
    append_n(f->s, org, 3);
    sfx_reopen(f);
    append_n(f->s, org, 3);
    verify_expect(f->s, org, 1, 0);
    assert_int_equal(sfx_raw_int(f->where, "SELECT max(seq) FROM audit"), 6);
}

/* A key change and its audit entry commit together: a failed commit leaves
 * neither, and the entry records what changed (id, role, expiry). */
static void test_changes_commit_with_their_entry(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme"), id = 0, cnt = 0;
    uint8_t h[32] = {7};
    store_audit a;
    store_apikey *keys = NULL;
    size_t n = 0;
    int found = 0;
    make_audit(&a, org, NULL, NULL);
    a.action = "apikey.create";
    fail_writes(f);
    assert_int_not_equal(STORE_CALL(f->s, apikey_create, org, 0, "viewer-for-ci", "qk_zzzzzzz", h,
                                    ROLE_ADMIN, 0, NULL, &a, &id),
                         QK_OK);
    writes_work_again(f);
    assert_int_equal(STORE_CALL(f->s, apikey_list, org, &keys, &n), QK_OK);
    assert_int_equal(n, 0);
    store_apikey_list_free(keys, n);
    assert_int_equal(STORE_CALL(f->s, audit_count, org, NULL, &cnt), QK_OK);
    assert_int_equal(cnt, 0);
    /* A bad entry refuses the change before anything is written. */
    a.action = NULL;
    assert_int_equal(
        STORE_CALL(f->s, apikey_create, org, 0, "k", "qk_zzzzzzz", h, ROLE_ADMIN, 0, NULL, &a, &id),
        QK_ERR_INVALID_ARG);
    a.action = "apikey.create";
    assert_int_equal(STORE_CALL(f->s, apikey_create, org, 0, "viewer-for-ci", "qk_zzzzzzz", h,
                                ROLE_ADMIN, 99, NULL, &a, &id),
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

/* Org 0's log, the instance's: an org's creation (by the owner) commits
 * with its entry there, and the server appends failed authentications to it. */
static void test_instance_log(void **state)
{
    fixture *f = *state;
    int64_t org = 0, dup = 0, n = 0;
    store_audit a;
    store_log_entry *es = NULL;
    size_t ne = 0;
    tlog_entry e;
    const char *why = NULL;
    char want[64];

    make_audit(&a, 0, NULL, NULL);
    a.action = "org.create";
    assert_int_equal(STORE_CALL(f->owner, org_create, "acme", &a, &org), QK_OK);
    assert_true(org > 0);
    assert_int_equal(STORE_CALL(f->owner, org_create, "acme", &a, &dup), QK_ERR_INVALID_ARG);
    make_audit(&a, 0, NULL, NULL);
    a.action = "auth.failed";
    a.outcome = AUDIT_DENIED;
    assert_int_equal(STORE_CALL(f->s, audit_append, &a), QK_OK);
    assert_int_equal(STORE_CALL(f->s, audit_count, 0, NULL, &n), QK_OK);
    assert_int_equal(n, 2); /* the refused duplicate left no entry */
    assert_int_equal(STORE_CALL(f->s, audit_count, org, NULL, &n), QK_OK);
    assert_int_equal(n, 0);
    assert_int_equal(STORE_CALL(f->s, log_entries, 0, 0, 10, &es, &ne), QK_OK);
    assert_int_equal(ne, 2);
    assert_int_equal(tlog_leaf_decode(es[0].leaf.data, es[0].leaf.len, &e, &why), 0);
    snprintf(want, sizeof(want), "{\"name\":\"acme\",\"orgId\":%" PRId64 "}", org);
    assert_string_equal(e.meta, want);
    tlog_entry_clear(&e);
    store_log_entries_free(es, ne);
    verify_expect(f->s, 0, 1, 0);
}

/* Every inclusion and consistency proof the store builds checks out
 * against the root it reports, for every size up to 37. */
static void test_log_proofs(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
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

/* --- many writers ------------------------------------------------------- */

#define GC_THREADS 16
#define GC_WRITES 100 /* each, in the group commit test */
#define MT_WRITES 25  /* each, in the test run on both stores (PostgreSQL commits one by one) */

typedef struct gc_arg {
    qk_store *s;
    int64_t org;
    int t;
    int writes;
    int failures;
} gc_arg;

static void *gc_worker(void *p)
{
    gc_arg *g = p;
    for (int i = 0; i < g->writes; i++) {
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

/* GC_THREADS threads record `writes` requests each, all at once. */
static void record_from_threads(qk_store *s, int64_t org, int writes)
{
    pthread_t th[GC_THREADS];
    gc_arg args[GC_THREADS];
    for (int t = 0; t < GC_THREADS; t++) {
        args[t] = (gc_arg){s, org, t, writes, 0};
        assert_int_equal(pthread_create(&th[t], NULL, gc_worker, &args[t]), 0);
    }
    for (int t = 0; t < GC_THREADS; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < GC_THREADS; t++)
        assert_int_equal(args[t].failures, 0);
}

/* Concurrent requests all land, durably, each with its entry, in one log. */
static void test_requests_from_many_threads(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme"), n = 0;

    record_from_threads(f->s, org, MT_WRITES);
    sfx_reopen(f);
    assert_int_equal(STORE_CALL(f->s, audit_count, org, NULL, &n), QK_OK);
    assert_int_equal(n, GC_THREADS * MT_WRITES);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM sign_requests"),
                     GC_THREADS * MT_WRITES);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM sign_requests r WHERE NOT EXISTS "
                                           "(SELECT 1 FROM audit a WHERE a.request_id = r.id)"),
                     0);
    verify_expect(f->s, org, 1, 0);
}

/* A write whose transaction fails (SQLite: its batch's commit; PostgreSQL: its
 * audit row) fails its caller and leaves neither the request nor the entry. */
static void test_commit_failure_fails_callers(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme"), n = -1;
    store_sign_request r, got;
    store_audit a;
    int found = 1;

    make_request(&r, org, "req_0000000000000000000000000000dead");
    make_audit(&a, org, r.id, "x.exe");
    fail_writes(f);
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &a), QK_ERR_IO);
    writes_work_again(f);
    assert_int_equal(STORE_CALL(f->s, request_get, org, r.id, &got, &found), QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    assert_int_equal(STORE_CALL(f->s, audit_count, org, NULL, &n), QK_OK);
    assert_int_equal(n, 0);
    /* The next write commits normally and the chain is intact. */
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &a), QK_OK);
    verify_expect(f->s, org, 1, 0);
}

static void test_input_limits(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
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

/* Master-key rotation's view of the store: every org's signing keys and the
 * instance secrets, re-sealed by compare-and-swap only (`qwickd keyring`, an
 * admin command: as the owner). */
static void test_reseal_every_blob(void **state)
{
    fixture *f = *state;
    static const uint8_t fresh[] = "QKS1\0\0\0\2-re-sealed";
    static const uint8_t other[] = "QKS1\0\0\0\3-someone-else";
    int64_t k1 = 0, k2 = 0, k3 = 0;
    int64_t o1 = org_with_profile(f, "one", &k1), o2 = org_with_profile(f, "two", &k2);
    store_signing_key *keys = NULL;
    char **names = NULL;
    size_t n = 0;
    int found = -1;

    assert_int_equal(STORE_CALL(f->s, signing_key_create, o1, "azure-graph",
                                (qk_slice){fake_sealed, sizeof(fake_sealed)}, &k3),
                     QK_OK);
    assert_int_equal(STORE_CALL(f->owner, signing_key_list_all, &keys, &n), QK_OK);
    assert_int_equal(n, 3); /* both orgs, by org then id */
    assert_true(keys[0].org_id == o1 && keys[0].id == k1 && keys[1].org_id == o1 &&
                keys[1].id == k3 && keys[2].org_id == o2 && keys[2].id == k2);
    assert_string_equal(keys[1].kind, "azure-graph");
    assert_memory_equal(keys[2].sealed.data, fake_sealed, sizeof(fake_sealed));
    store_signing_key_list_free(keys, n);

    qk_slice old = {fake_sealed, sizeof(fake_sealed)}, nu = {fresh, sizeof(fresh)};
    /* The old blob must still be there: a stale one is never written back. */
    assert_int_equal(STORE_CALL(f->owner, signing_key_reseal, o2, k2, nu, nu, &found),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(found, 0);
    assert_int_equal(STORE_CALL(f->owner, signing_key_reseal, o1, k2, old, nu, &found),
                     QK_ERR_INVALID_ARG); /* another org's key */
    assert_int_equal(STORE_CALL(f->owner, signing_key_reseal, o2, k2, old, nu, &found), QK_OK);
    assert_int_equal(found, 1);
    assert_int_equal(STORE_CALL(f->owner, signing_key_reseal, o2, k2, old, nu, &found),
                     QK_ERR_INVALID_ARG); /* done once, not twice */
    store_signing_key k;
    assert_int_equal(STORE_CALL(f->s, signing_key_get, o2, k2, &k, &found), QK_OK);
    assert_memory_equal(k.sealed.data, fresh, sizeof(fresh));
    store_signing_key_clear(&k);
    assert_int_equal(STORE_CALL(f->s, signing_key_get, o1, k1, &k, &found), QK_OK);
    assert_memory_equal(k.sealed.data, fake_sealed, sizeof(fake_sealed)); /* untouched */
    store_signing_key_clear(&k);
    assert_int_equal(
        STORE_CALL(f->owner, signing_key_reseal, o1, k1, old, (qk_slice){fresh, 0}, &found),
        QK_ERR_INVALID_ARG);

    assert_int_equal(STORE_CALL(f->owner, instance_secret_names, &names, &n), QK_OK);
    assert_int_equal(n, 0);
    store_names_free(names, n);
    assert_int_equal(STORE_CALL(f->s, instance_secret_put, "b-key", old, (qk_slice){fresh, 4}),
                     QK_OK);
    assert_int_equal(STORE_CALL(f->s, instance_secret_put, "a-key", old, (qk_slice){fresh, 4}),
                     QK_OK);
    assert_int_equal(STORE_CALL(f->owner, instance_secret_names, &names, &n), QK_OK);
    assert_int_equal(n, 2);
    assert_string_equal(names[0], "a-key");
    assert_string_equal(names[1], "b-key");
    store_names_free(names, n);
    qk_slice wrong = {other, sizeof(other)};
    assert_int_equal(STORE_CALL(f->owner, instance_secret_reseal, "a-key", wrong, nu, &found),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(STORE_CALL(f->owner, instance_secret_reseal, "nope", old, nu, &found),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(STORE_CALL(f->owner, instance_secret_reseal, "a-key", old, nu, &found), QK_OK);
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

#ifndef STORE_PG
/* ---- SQLite only ----------------------------------------------------------- */

/* SQLite only (journal mode): WAL is persistent in the file, so a fresh
 * connection sees it. */
static void test_wal_persistent(void **state)
{
    fixture *f = *state;
    char path[4096], mode[16] = "";
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    sfx_reopen(f);
    snprintf(path, sizeof(path), "%s/%s", f->where, STORE_SQLITE_FILE);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    snprintf(mode, sizeof(mode), "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    assert_string_equal(mode, "wal");
}

/* SQLite only (its file): the database is private to its owner. */
static void test_db_file_private(void **state)
{
    fixture *f = *state;
    char path[4096];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", f->where, STORE_SQLITE_FILE);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 077, 0);
}

/* SQLite only (its typing): an audit table rebuilt without STRICT, so that it
 * takes a text in an integer column, is named as such. */
static void test_audit_detects_type_poisoning(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    append_n(f->s, org, 3);
    sfx_raw_sql(f->where, "CREATE TABLE a2 AS SELECT * FROM audit; DROP TABLE audit;"
                          "ALTER TABLE a2 RENAME TO audit;"
                          "UPDATE audit SET outcome = '1 allowed-by-override' WHERE seq = 2");
    store_audit_check chk;
    assert_int_equal(STORE_CALL(f->s, audit_verify, org, &chk), QK_OK);
    assert_false(chk.ok);
    assert_non_null(strstr(chk.problem, "STRICT"));
}

/* SQLite only (its counters): the writer batches concurrent writes, far fewer
 * commits (fsyncs) than writes. */
static void test_group_commit_16x100(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    store_sqlite_counters c0, c1;

    store_sqlite_stats(f->s, &c0);
    record_from_threads(f->s, org, GC_WRITES);
    store_sqlite_stats(f->s, &c1);
    uint64_t commits = c1.commits, writes = c1.writes, commits0 = c0.commits, writes0 = c0.writes;
    assert_int_equal(writes - writes0, GC_THREADS * GC_WRITES);
    assert_true(commits - commits0 < (uint64_t)GC_THREADS * GC_WRITES);
    print_message("group commit: %llu writes in %llu commits\n",
                  (unsigned long long)(writes - writes0), (unsigned long long)(commits - commits0));
    verify_expect(f->s, org, 1, 0);
}

/* SQLite only (its locking): readers go on while another connection holds
 * the write lock. */
static void test_reads_do_not_wait_for_writer(void **state)
{
    fixture *f = *state;
    int64_t key_id = 0, org = org_with_profile(f, "acme", &key_id);
    char path[4096];
    sqlite3 *db = NULL;
    store_profile p;
    int found = 0;

    /* Another connection holds the write lock (as a long batch would). */
    snprintf(path, sizeof(path), "%s/%s", f->where, STORE_SQLITE_FILE);
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

/* SQLite only (its group commit's delay). Writes 20 ms apart while more are said to be on their way
 * (the server's count of requests being signed): without a delay each commits alone (unless an
 * fsync took 20 ms); with a 200 ms delay (capped at STORE_MAX_COMMIT_DELAY_US, 100 ms) they share
 * commits. With the delay on but nothing on its way, none waits. Every write lands in every case.
 */
static void test_commit_delay_batches_while_writes_are_coming(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme"), n = 0;
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

/* SQLite only (its group commit's delay): a write while nothing else is on its way is not held
 * back, whatever the delay; nor with the delay on but no count given. */
static void test_commit_delay_lone_write_not_delayed(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
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

/* SQLite only (its checkpointer): the checkpointer thread copies the WAL into the database file
 * while the store stays open (the writer itself never checkpoints). */
static void test_checkpointer_copies_wal(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme"), n = 0;
    static uint8_t sig[6000];
    paced *p = calloc(1, sizeof(*p));
    store_sign_request *r = calloc(CKPT_ROWS, sizeof(*r));
    store_audit *a = calloc(CKPT_ROWS, sizeof(*a));
    char(*ids)[40] = calloc(CKPT_ROWS, 40);
    int64_t db0 = file_size(f->where, STORE_SQLITE_FILE), db1 = 0;

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
     * on its own thread, so wait for it (bounded) rather than for a time:
     * until it has counted itself done (the file grows while it copies). */
    store_sqlite_counters c = {0};
    for (int i = 0; i < 300; i++) {
        store_sqlite_stats(f->s, &c);
        db1 = file_size(f->where, STORE_SQLITE_FILE);
        if (c.checkpoints > 0 && db1 >= 8 * 1024 * 1024)
            break;
        usleep(50000);
    }
    print_message("database file %lld -> %lld bytes, WAL %lld bytes, store open\n", (long long)db0,
                  (long long)db1, (long long)file_size(f->where, STORE_SQLITE_FILE "-wal"));
    assert_true(db1 >= 8 * 1024 * 1024);
    assert_true(c.checkpoints > 0);
    assert_true(c.ckpt_frames >= 2000); /* at least the frames of the rows' pages */
    assert_int_equal(STORE_CALL(f->s, audit_count, org, NULL, &n), QK_OK);
    assert_int_equal(n, CKPT_ROWS);
    sfx_reopen(f);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM sign_requests"), CKPT_ROWS);
    verify_expect(f->s, org, 1, 0);
    pthread_mutex_destroy(&p->mu);
    free(ids);
    free(a);
    free(r);
    free(p);
}

#else
/* ---- PostgreSQL only ------------------------------------------------------- */

/* The tenant tables: every one has org_id and the isolation policy. */
static const char *const tenant_tables[] = {
    "users",        "api_keys", "signing_keys", "profiles",  "sign_requests",
    "azure_leases", "audit",    "log_heads",    "log_nodes", "log_checkpoints",
};
#define NTENANT (sizeof(tenant_tables) / sizeof(tenant_tables[0]))

/* A row in every tenant table of `org`, through the store. */
static int64_t org_with_every_row(fixture *f, const char *name, uint8_t seed)
{
    int64_t key = 0, org = org_with_profile(f, name, &key), id = 0, lease = 0;
    uint8_t h[32], root[32] = {seed};
    char rid[40];
    int granted = 0;
    store_sign_request r;
    store_audit a;

    fill_hash(h, seed);
    assert_int_equal(STORE_CALL(f->s, user_create, org, "a@example.com", NULL, ROLE_ADMIN, &id),
                     QK_OK);
    assert_int_equal(STORE_CALL(f->s, apikey_create, org, 0, "ci", "qk_abcdefg", h, ROLE_SIGNER, 0,
                                NULL, NULL, &id),
                     QK_OK);
    snprintf(rid, sizeof(rid), "req_%032d", seed);
    make_request(&r, org, rid);
    make_audit(&a, org, rid, "a.exe");
    assert_int_equal(STORE_CALL(f->s, request_record, &r, &a), QK_OK);
    append_n(f->s, org, 3); /* 4 entries: tree nodes too */
    assert_int_equal(
        STORE_CALL(f->s, lease_acquire, org, "app", "node-1", 2, 100, &lease, &granted), QK_OK);
    assert_int_equal(granted, 1);
    assert_int_equal(STORE_CALL(f->s, checkpoint_add, org, 4, root, "note"), QK_OK);
    return org;
}

/* Runs `sql` on `pg`; 1 when it succeeded, 0 when refused (the session's
 * transaction, if any, is then aborted). */
static int pg_ok(PGconn *pg, const char *sql, char *rows, size_t n)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    if (rows != NULL)
        snprintf(rows, n, "%s", PQcmdTuples(r));
    PQclear(r);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

/* PostgreSQL only: tenancy is the database's, not only the queries'. As the
 * server's role, a transaction of org A sees and changes none of B's rows
 * even when the query names B; with no org set every tenant table is empty;
 * the role deletes nothing and reads no cross-org index. */
static void test_rls_isolates_tenants(void **state)
{
    fixture *f = *state;
    int64_t A = org_with_every_row(f, "org-a", 1), B = org_with_every_row(f, "org-b", 2);
    char sql[256], role[64], rows[32];
    PGconn *pg;

    for (size_t i = 0; i < NTENANT; i++) { /* B's rows are there, for the superuser */
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s WHERE org_id = %" PRId64,
                 tenant_tables[i], B);
        if (sfx_raw_int(f->where, sql) == 0)
            fail_msg("no row of org B in %s: the test proves nothing", tenant_tables[i]);
    }
    pgfx_server_role(f->where, role, sizeof(role));
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM pg_stat_activity WHERE usename = '%s' AND datname = '%s'", role,
             f->where);
    assert_true(sfx_raw_int(f->where, sql) >= 1); /* the store under test logs in as the role */
    pg = pgfx_connect(f->where, role);
    assert_int_equal(pgfx_int_on(pg, "SELECT count(*) FROM pg_roles WHERE rolname = current_user "
                                     "AND (rolsuper OR rolbypassrls)"),
                     0);

    /* Org A's transaction, asking for B's rows by name. */
    assert_true(pg_ok(pg, "BEGIN", NULL, 0));
    snprintf(sql, sizeof(sql), "SELECT set_config('qwick.org', '%" PRId64 "', true)", A);
    assert_true(pg_ok(pg, sql, NULL, 0));
    assert_int_equal(pgfx_int_on(pg, "SELECT count(*) FROM api_keys"), 1); /* A's own */
    for (size_t i = 0; i < NTENANT; i++) {
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s WHERE org_id = %" PRId64,
                 tenant_tables[i], B);
        if (pgfx_int_on(pg, sql) != 0)
            fail_msg("org A's transaction sees org B's rows of %s", tenant_tables[i]);
    }
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM orgs WHERE id = %" PRId64, B);
    assert_int_equal(pgfx_int_on(pg, sql), 0);
    snprintf(sql, sizeof(sql), "UPDATE api_keys SET revoked_at = 1 WHERE org_id = %" PRId64, B);
    assert_true(pg_ok(pg, sql, rows, sizeof(rows)));
    assert_string_equal(rows, "0");
    /* The role may insert checkpoints (its own org's), but none of B's: WITH CHECK. */
    for (int i = 0; i < 2; i++) {
        snprintf(sql, sizeof(sql),
                 "INSERT INTO log_checkpoints(org_id, size, root, note, created_at) "
                 "VALUES (%" PRId64 ", 99, '\\x00'::bytea, 'planted', 0)",
                 i == 0 ? A : B);
        assert_int_equal(pg_ok(pg, sql, NULL, 0), i == 0);
    }
    assert_true(pg_ok(pg, "ROLLBACK", NULL, 0));

    /* No org set: every tenant table is empty, orgs too. */
    for (size_t i = 0; i < NTENANT; i++) {
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", tenant_tables[i]);
        if (pgfx_int_on(pg, sql) != 0)
            fail_msg("with no org set, %s shows rows", tenant_tables[i]);
    }
    assert_int_equal(pgfx_int_on(pg, "SELECT count(*) FROM orgs"), 0);
    /* Append-only log, no cross-org index. */
    assert_false(pg_ok(pg, "DELETE FROM audit", NULL, 0));
    assert_false(pg_ok(pg, "SELECT count(*) FROM apikey_orgs", NULL, 0));
    PQfinish(pg);

    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM api_keys WHERE org_id = %" PRId64 " AND revoked_at = 0", B);
    assert_int_equal(sfx_raw_int(f->where, sql), 1);
    verify_expect(f->s, A, 1, 0);
    verify_expect(f->s, B, 1, 0);
}

#define AP_THREADS 8
#define AP_WRITES 100

typedef struct ap_arg {
    qk_store *s;
    int64_t org;
    int t;
    int64_t index[AP_WRITES]; /* each entry's leaf index, as audit_append reports it */
    int failures;
} ap_arg;

static void *ap_worker(void *p)
{
    ap_arg *g = p;
    for (int i = 0; i < AP_WRITES; i++) {
        store_audit a;
        char file[32];
        snprintf(file, sizeof(file), "t%d-%d.exe", g->t, i);
        make_audit(&a, g->org, NULL, file);
        a.log_index = &g->index[i];
        if (STORE_CALL(g->s, audit_append, &a) != QK_OK)
            g->failures++;
    }
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* AP_THREADS threads append AP_WRITES entries each, the even ones through
 * s1 and the odd ones through s2; the indexes they got must be exactly
 * [from, from + AP_THREADS * AP_WRITES). */
static void append_from_threads(qk_store *s1, qk_store *s2, int64_t org, int64_t from)
{
    pthread_t th[AP_THREADS];
    ap_arg *args = calloc(AP_THREADS, sizeof(*args));
    int64_t *all = calloc(AP_THREADS * AP_WRITES, sizeof(*all));
    for (int t = 0; t < AP_THREADS; t++) {
        args[t].s = t % 2 == 0 ? s1 : s2;
        args[t].org = org;
        args[t].t = t;
        assert_int_equal(pthread_create(&th[t], NULL, ap_worker, &args[t]), 0);
    }
    for (int t = 0; t < AP_THREADS; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < AP_THREADS; t++) {
        assert_int_equal(args[t].failures, 0);
        memcpy(all + t * AP_WRITES, args[t].index, sizeof(args[t].index));
    }
    qsort(all, AP_THREADS * AP_WRITES, sizeof(*all), cmp_i64);
    for (int i = 0; i < AP_THREADS * AP_WRITES; i++)
        if (all[i] != from + i)
            fail_msg("leaf indexes: %" PRId64 " at %d, wanted %" PRId64, all[i], i, from + i);
    free(all);
    free(args);
}

/* The org's log is one sequence: `size` entries, seq 1..size without a gap
 * (seq is unique per org, so `size` rows within 1..size are all of them). */
static void expect_one_sequence(fixture *f, qk_store *s, int64_t org, int64_t size)
{
    char sql[256];
    int64_t n = 0;
    store_proof p;
    verify_expect(s, org, 1, 0);
    assert_int_equal(STORE_CALL(s, audit_count, org, NULL, &n), QK_OK);
    assert_int_equal(n, size);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM audit WHERE org_id = %" PRId64 " AND seq BETWEEN 1 AND %" PRId64,
             org, size);
    assert_int_equal(sfx_raw_int(f->where, sql), size);
    snprintf(sql, sizeof(sql), "SELECT max(seq) FROM audit WHERE org_id = %" PRId64, org);
    assert_int_equal(sfx_raw_int(f->where, sql), size);
    assert_int_equal(STORE_CALL(s, log_prove, org, PROOF_ROOT, 0, 0, &p), QK_OK);
    assert_int_equal(p.size, size);
}

/* PostgreSQL only: appends to one org's log from many connections of one
 * store (the pool), then from two stores opened separately on the database
 * (two nodes), form one gapless sequence that verifies. */
static void test_concurrent_appends_one_log(void **state)
{
    fixture *f = *state;
    int64_t org = sfx_new_org(f, "acme");
    qk_store *node2 = NULL;
    const int64_t round = AP_THREADS * AP_WRITES;

    append_from_threads(f->s, f->s, org, 0);
    expect_one_sequence(f, f->s, org, round);
    assert_int_equal(sfx_open_at(f->where, &node2), QK_OK);
    append_from_threads(f->s, node2, org, round);
    expect_one_sequence(f, node2, org, 2 * round);
    expect_one_sequence(f, f->s, org, 2 * round);
    node2->ops->close(node2);
}

/* PostgreSQL only: serve needs init's schema, of its version, and init runs
 * once per database. */
static void test_schema_required_and_created_once(void **state)
{
    fixture *f = *state;
    char url[256];
    qk_store *s = NULL;
    char *empty = pgfx_db_new(0);

    assert_non_null(empty);
    pgfx_url(empty, PGFX_OWNER, url, sizeof(url));
    assert_int_equal(store_pg_open(url, NULL, NULL, 1, &s), QK_ERR_INVALID_ARG);
    assert_null(s);
    assert_non_null(strstr(qk_error_detail(), "qwickd init"));
    pgfx_db_drop(empty);

    pgfx_url(f->where, PGFX_OWNER, url, sizeof(url));
    assert_int_equal(store_pg_create(url, "qwickd_second", "pw"), QK_ERR_INVALID_ARG);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM pg_roles WHERE rolname = "
                                           "'qwickd_second'"),
                     0);
    sfx_raw_sql(f->where, "UPDATE schema_version SET version = version - 1");
    assert_int_equal(sfx_open_at(f->where, &s), QK_ERR_INVALID_ARG);
    assert_null(s);
    assert_non_null(strstr(qk_error_detail(), "older"));
}

/* A database made at version 4 (as the first PostgreSQL release left it:
 * no edge in the log head, qwick_apikey_org) with an org, a key and log
 * entries: `serve` refuses it and names `qwickd migrate`; the migration, as
 * the owner, brings it to this version; the key is found through the new
 * function by the server's role, the log continues and verifies; a second
 * migration has nothing to do. */
static void test_migrate_from_version_4(void **state)
{
    fixture *f = *state;
    char url[256], role[64], sql[2048];
    uint8_t h[32], stored[32];
    int64_t org = sfx_new_org(f, "acme"), kid = 0;
    int found = 0, from = 0, to = 0;
    store_apikey k;
    memset(h, 0x5a, sizeof(h));
    assert_int_equal(STORE_CALL(f->s, apikey_create, org, 0, "ci", "qk_abcdefg", h, ROLE_SIGNER, 0,
                                NULL, NULL, &kid),
                     QK_OK);
    append_n(f->s, org, 11);
    f->s->ops->close(f->s);
    f->s = NULL;
    pgfx_server_role(f->where, role, sizeof(role));
    snprintf(sql, sizeof(sql),
             "SET ROLE " PGFX_OWNER ";"
             "ALTER TABLE log_heads DROP COLUMN frontier;"
             "DROP FUNCTION qwick_apikey_lookup(BYTEA);"
             "DROP FUNCTION qwick_key_profile(BYTEA, TEXT);"
             "CREATE FUNCTION qwick_apikey_org(h BYTEA) RETURNS BIGINT LANGUAGE sql STABLE "
             "SECURITY DEFINER SET search_path = public, pg_temp AS "
             "$$ SELECT org_id FROM apikey_orgs WHERE hash = h $$;"
             "REVOKE ALL ON FUNCTION qwick_apikey_org(BYTEA) FROM PUBLIC;"
             "GRANT EXECUTE ON FUNCTION qwick_apikey_org(BYTEA) TO %s;"
             "DROP FUNCTION qwick_queue_claim(TEXT, BIGINT, BIGINT, BIGINT);"
             "DROP FUNCTION qwick_queue_stats();"
             "DROP TABLE idempotency_keys;"
             "DROP INDEX sign_requests_org_id;"
             "ALTER TABLE sign_requests DROP COLUMN attempts, DROP COLUMN updated_at, "
             "DROP COLUMN queued_ms, DROP COLUMN run_after, DROP COLUMN lease_until, "
             "DROP COLUMN lease_node, DROP COLUMN chain_der, DROP COLUMN options, "
             "DROP COLUMN callback_url;"
             "ALTER TABLE profiles DROP COLUMN policy;"
             "ALTER TABLE api_keys DROP COLUMN profiles;"
             "UPDATE schema_version SET version = 4;",
             role);
    sfx_raw_sql(f->where, sql);

    assert_int_equal(sfx_open_at(f->where, &f->s), QK_ERR_INVALID_ARG);
    assert_non_null(strstr(qk_error_detail(), "qwickd migrate"));
    pgfx_url(f->where, PGFX_OWNER, url, sizeof(url));
    assert_int_equal(store_pg_migrate(url, &from, &to), QK_OK);
    assert_int_equal(from, 4);
    assert_int_equal(to, 7);
    assert_int_equal(sfx_raw_int(f->where, "SELECT count(*) FROM pg_proc WHERE proname = "
                                           "'qwick_apikey_org'"),
                     0);

    assert_int_equal(sfx_open_at(f->where, &f->s), QK_OK);
    assert_int_equal(STORE_CALL(f->s, apikey_lookup, h, &k, stored, &found), QK_OK);
    assert_int_equal(k.id, kid);
    assert_int_equal(k.org_id, org);
    store_apikey_clear(&k);
    verify_expect(f->s, org, 1, 0);
    append_n(f->s, org, 5);
    verify_expect(f->s, org, 1, 0);
    assert_int_equal(sfx_raw_int(f->where, "SELECT length(frontier) FROM log_heads"), 1 * 32);

    assert_int_equal(store_pg_migrate(url, &from, &to), QK_OK);
    assert_int_equal(from, 7);
}
#endif

#define T(fn) cmocka_unit_test_setup_teardown(fn, sfx_setup, sfx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_migrations_idempotent),
        T(test_newer_schema_refused),
        T(test_round_trips),
        T(test_request_round_trip),
        T(test_org_isolation),
        T(test_audit_detects_edit),
        T(test_audit_detects_outcome_flip),
        T(test_audit_refuses_text_in_integer),
        T(test_audit_detects_node_edit),
        T(test_audit_detects_edge_edit),
        T(test_log_edge_rebuilt_for_older_head),
        T(test_audit_detects_request_tamper),
        T(test_log_proofs),
        T(test_changes_commit_with_their_entry),
        T(test_instance_log),
        T(test_audit_detects_delete),
        T(test_audit_detects_truncated_tail),
        T(test_audit_empty_and_continues_after_reopen),
        T(test_requests_from_many_threads),
        T(test_commit_failure_fails_callers),
        T(test_input_limits),
        T(test_reseal_every_blob),
#ifndef STORE_PG
        T(test_wal_persistent),
        T(test_db_file_private),
        T(test_audit_detects_type_poisoning),
        T(test_group_commit_16x100),
        T(test_reads_do_not_wait_for_writer),
        T(test_commit_delay_batches_while_writes_are_coming),
        T(test_commit_delay_lone_write_not_delayed),
        T(test_checkpointer_copies_wal),
#else
        T(test_rls_isolates_tenants),
        T(test_concurrent_appends_one_log),
        T(test_schema_required_and_created_once),
        T(test_migrate_from_version_4),
#endif
    };
#ifdef STORE_PG
    return cmocka_run_group_tests_name("store on PostgreSQL", tests, group_setup, group_teardown);
#else
    return cmocka_run_group_tests_name("store on SQLite", tests, NULL, NULL);
#endif
}
