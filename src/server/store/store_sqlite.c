/* The SQLite store (see store.h for the concurrency contract).
 *
 * One writer connection owned by a writer thread; every write is a job queued
 * to it. The thread takes all pending jobs, runs them in one BEGIN IMMEDIATE …
 * COMMIT (one WAL fsync under synchronous=FULL), each job under a SAVEPOINT,
 * and then wakes the callers. Reads take a connection from a small pool of
 * reader connections; in WAL mode they see the last committed state and never
 * wait for the writer.
 *
 * Tenancy: every query that touches tenant data has `org_id = ?` in it, and
 * cross-table references are composite (org_id, id) foreign keys, so a profile
 * cannot point at another org's signing key even through a bug in a caller.
 * The two exceptions are by design: apikey_lookup (the key hash *is* what
 * identifies the org) and apikey_touch (follows a successful lookup). */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>
#include <sqlite3.h>

#include "core/log.h"
#include "common/hex.h"
#include "store/store.h"
#include "common/tlog.h"
#include "core/util.h"

#define BUSY_TIMEOUT_MS 10000
#define MAX_READERS 16
#define MAX_BATCH 512 /* bounds one transaction's latency */
#define MAX_TEXT 4096 /* longest string field accepted (filename, url, detail...) */
#define MAX_BLOB (1u << 20)
#define HASH_LEN 32

/* ---- schema ----------------------------------------------------------- */

/* Applied in order, each in its own transaction with the version bump; never
 * edit a shipped step, append a new one. */
static const char *const migrations[] = {
    /* 1: the initial schema. */
    "CREATE TABLE orgs ("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  created_at INTEGER NOT NULL);"
    "CREATE TABLE users ("
    "  id INTEGER PRIMARY KEY,"
    "  org_id INTEGER NOT NULL REFERENCES orgs(id),"
    "  email TEXT NOT NULL,"
    "  pw_hash TEXT," /* argon2id string (crypto_pwhash_str); NULL: password login disabled */
    "  role INTEGER NOT NULL CHECK (role BETWEEN 0 AND 2),"
    "  created_at INTEGER NOT NULL,"
    "  UNIQUE (org_id, email),"
    "  UNIQUE (org_id, id));"
    "CREATE TABLE api_keys ("
    "  id INTEGER PRIMARY KEY,"
    "  org_id INTEGER NOT NULL REFERENCES orgs(id),"
    "  user_id INTEGER,"
    "  name TEXT NOT NULL,"
    "  prefix TEXT NOT NULL,"
    "  hash BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),"
    "  role INTEGER NOT NULL CHECK (role BETWEEN 0 AND 2),"
    "  created_at INTEGER NOT NULL,"
    "  expires_at INTEGER NOT NULL DEFAULT 0,"
    "  revoked_at INTEGER NOT NULL DEFAULT 0,"
    "  last_used_at INTEGER NOT NULL DEFAULT 0,"
    "  FOREIGN KEY (org_id, user_id) REFERENCES users(org_id, id));"
    "CREATE INDEX api_keys_org ON api_keys(org_id, id);"
    "CREATE TABLE signing_keys ("
    "  id INTEGER PRIMARY KEY,"
    "  org_id INTEGER NOT NULL REFERENCES orgs(id),"
    "  kind TEXT NOT NULL,"
    "  sealed BLOB NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  UNIQUE (org_id, id));"
    "CREATE TABLE profiles ("
    "  id INTEGER PRIMARY KEY,"
    "  org_id INTEGER NOT NULL REFERENCES orgs(id),"
    "  name TEXT NOT NULL,"
    "  backend TEXT NOT NULL,"
    "  key_id INTEGER NOT NULL,"
    "  chain_der BLOB NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  UNIQUE (org_id, name),"
    "  FOREIGN KEY (org_id, key_id) REFERENCES signing_keys(org_id, id));"
    /* apikey_id/user_id are not foreign keys: a request must outlive its key. */
    "CREATE TABLE sign_requests ("
    "  id TEXT PRIMARY KEY,"
    "  org_id INTEGER NOT NULL REFERENCES orgs(id),"
    "  apikey_id INTEGER,"
    "  user_id INTEGER,"
    "  status INTEGER NOT NULL,"
    "  algorithm TEXT NOT NULL,"
    "  format TEXT NOT NULL,"
    "  profile TEXT NOT NULL,"
    "  filename TEXT,"
    "  description TEXT,"
    "  url TEXT,"
    "  client_ip TEXT,"
    "  digest BLOB NOT NULL,"
    "  signature BLOB,"
    "  error TEXT,"
    "  created_at INTEGER NOT NULL,"
    "  completed_at INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX sign_requests_org ON sign_requests(org_id, created_at);"
    /* Per-org hash chain: hash = SHA-256(prev_hash || canonical(row)), seq
     * counts 1, 2, 3... per org, and audit_head remembers the newest link so a
     * truncated tail is detected too. */
    "CREATE TABLE audit ("
    "  id INTEGER PRIMARY KEY,"
    "  org_id INTEGER NOT NULL REFERENCES orgs(id),"
    "  seq INTEGER NOT NULL,"
    "  ts INTEGER NOT NULL,"
    "  actor TEXT,"
    "  client_ip TEXT,"
    "  action TEXT,"
    "  request_id TEXT,"
    "  digest_hex TEXT,"
    "  algorithm TEXT,"
    "  profile TEXT,"
    "  filename TEXT,"
    "  outcome INTEGER NOT NULL,"
    "  detail TEXT,"
    "  prev_hash BLOB NOT NULL,"
    "  hash BLOB NOT NULL,"
    "  UNIQUE (org_id, seq));"
    "CREATE INDEX audit_request ON audit(org_id, request_id);"
    "CREATE TABLE audit_head ("
    "  org_id INTEGER PRIMARY KEY REFERENCES orgs(id),"
    "  seq INTEGER NOT NULL,"
    "  hash BLOB NOT NULL);",
    /* 2: no query reads sign_requests by (org_id, created_at) (a request is
     * fetched by id, which the primary key covers), and the index cost one
     * more B-tree page written per group commit. */
    "DROP INDEX sign_requests_org;",
    /* 3: certificate profiles managed after init (qwickd profile, the API):
     * public settings, state; and the leases of Azure client secrets. */
    "ALTER TABLE profiles ADD COLUMN config TEXT;"
    "ALTER TABLE profiles ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE profiles ADD COLUMN disabled_at INTEGER NOT NULL DEFAULT 0;"
    "CREATE TABLE azure_leases ("
    "  id INTEGER PRIMARY KEY,"
    "  org_id INTEGER NOT NULL REFERENCES orgs(id),"
    "  app TEXT NOT NULL,"
    "  node TEXT NOT NULL,"
    "  key_id TEXT,"
    "  created_at INTEGER NOT NULL,"
    "  lease_until INTEGER NOT NULL,"
    "  released_at INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX azure_leases_live ON azure_leases(org_id, app, released_at);",
    /* 4: the audit trail becomes a transparency log. Rows are STRICT (a text
     * in an integer column is refused instead of being coerced by readers),
     * hold the whole entry (format, signer, signature hashes, what changed),
     * and are the leaves of a Merkle tree per org (log_nodes: every complete
     * subtree, in the order appends complete them). The hash chain's columns
     * go: the tree and signed checkpoints replace them. Org 0 is the
     * instance's own log (failed authentications), hence no foreign key.
     * Rows written before this step are version 1 leaves; their tree is
     * built by log_backfill() in the same transaction. */
    "CREATE TABLE audit_v2 ("
    "  id INTEGER PRIMARY KEY,"
    "  org_id INTEGER NOT NULL,"
    "  seq INTEGER NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  ts INTEGER NOT NULL,"
    "  actor TEXT, client_ip TEXT, action TEXT, request_id TEXT, format TEXT,"
    "  algorithm TEXT, digest_hex TEXT, profile TEXT, filename TEXT, signer_fp TEXT,"
    "  sig_sha256 TEXT, sigval_sha256 TEXT,"
    "  outcome INTEGER NOT NULL,"
    "  detail TEXT, meta TEXT,"
    "  UNIQUE (org_id, seq)) STRICT;"
    "INSERT INTO audit_v2(id, org_id, seq, version, ts, actor, client_ip, action, request_id, "
    "  digest_hex, algorithm, profile, filename, outcome, detail) "
    "  SELECT id, org_id, seq, 1, ts, actor, client_ip, action, request_id, digest_hex, "
    "  algorithm, profile, filename, outcome, detail FROM audit;"
    "DROP TABLE audit;"
    "ALTER TABLE audit_v2 RENAME TO audit;"
    "CREATE INDEX audit_request ON audit(org_id, request_id);"
    "CREATE INDEX audit_sigval ON audit(org_id, sigval_sha256) WHERE sigval_sha256 IS NOT NULL;"
    "DROP TABLE audit_head;"
    "CREATE TABLE log_heads ("
    "  org_id INTEGER PRIMARY KEY,"
    "  size INTEGER NOT NULL) STRICT;"
    "INSERT INTO log_heads SELECT org_id, max(seq) FROM audit GROUP BY org_id;"
    "CREATE TABLE log_nodes ("
    "  org_id INTEGER NOT NULL,"
    "  pos INTEGER NOT NULL,"
    "  hash BLOB NOT NULL,"
    "  PRIMARY KEY (org_id, pos)) STRICT, WITHOUT ROWID;"
    "CREATE TABLE log_checkpoints ("
    "  org_id INTEGER NOT NULL,"
    "  size INTEGER NOT NULL,"
    "  root BLOB NOT NULL,"
    "  note TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  PRIMARY KEY (org_id, size)) STRICT;"
    "CREATE TABLE operator_tokens ("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  hash BLOB NOT NULL UNIQUE,"
    "  created_at INTEGER NOT NULL,"
    "  revoked_at INTEGER NOT NULL DEFAULT 0) STRICT;"
    "CREATE INDEX audit_usage ON audit(org_id, action, ts);"
    "CREATE TABLE instance_secrets ("
    "  name TEXT PRIMARY KEY,"
    "  sealed BLOB NOT NULL,"
    "  public BLOB NOT NULL,"
    "  created_at INTEGER NOT NULL) STRICT;",
};

#define NMIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* ---- prepared statements, cached per connection ----------------------- */

enum {
    W_ORG_INSERT,
    W_USER_INSERT,
    W_SKEY_INSERT,
    W_PROFILE_INSERT,
    W_APIKEY_INSERT,
    W_APIKEY_REVOKE,
    W_APIKEY_TOUCH,
    W_REQ_UPSERT,
    W_AUDIT_INSERT,
    W_HEAD_SET,
    Q_HEAD_GET,
    Q_NODE_GET,
    W_NODE_INSERT,
    R_LOG_ENTRIES,
    R_LOG_LOOKUP,
    R_LOG_REQ,
    R_NODES_ALL,
    R_REQ_SIG,
    R_SIGNED_UNLOGGED,
    R_CKPT_LATEST,
    W_CKPT_INSERT,
    R_SECRET_GET,
    W_SECRET_INSERT,
    W_OPTOKEN_INSERT,
    R_OPTOKEN_LOOKUP,
    W_OPTOKEN_REVOKE,
    R_OPTOKEN_LIST,
    R_USAGE_OUTCOMES,
    R_USAGE_PROFILES,
    R_ORG_FIND,
    R_SKEY_GET,
    R_PROFILE_GET,
    R_APIKEY_LOOKUP,
    R_APIKEY_LIST,
    R_APIKEY_GET,
    R_REQ_GET,
    R_AUDIT_ROWS,
    R_AUDIT_COUNT_REQ,
    R_AUDIT_COUNT_ALL,
    R_PROFILE_LIST,
    W_PROFILE_DISABLE,
    W_SKEY_UPDATE,
    R_ORG_LIST,
    Q_LEASE_COUNT,
    W_LEASE_INSERT,
    W_LEASE_UPDATE,
    W_LEASE_RELEASE,
    W_LEASE_RELEASE_KEY,
    R_LEASE_LIST,
    R_SKEY_ALL,
    W_SKEY_RESEAL,
    R_SECRET_NAMES,
    W_SECRET_RESEAL,
    STMT__COUNT
};

#define PROFILE_COLS                                                                               \
    "id, org_id, name, backend, key_id, chain_der, config, created_at, updated_at, disabled_at"

/* An audit row as its leaf needs it (read_entry() takes them in this order). */
#define AUDIT_COLS                                                                                 \
    "org_id, seq, version, ts, actor, client_ip, action, request_id, format, algorithm, "          \
    "digest_hex, profile, filename, signer_fp, sig_sha256, sigval_sha256, outcome, detail, meta"

#define APIKEY_COLS                                                                                \
    "id, org_id, coalesce(user_id, 0), name, prefix, role, created_at, expires_at, revoked_at, "   \
    "last_used_at, hash"

static const char *const stmt_sql[STMT__COUNT] = {
    [W_ORG_INSERT] = "INSERT INTO orgs(name, created_at) VALUES(?1, ?2)",
    [W_USER_INSERT] = "INSERT INTO users(org_id, email, pw_hash, role, created_at) "
                      "VALUES(?1, ?2, ?3, ?4, ?5)",
    [W_SKEY_INSERT] = "INSERT INTO signing_keys(org_id, kind, sealed, created_at) "
                      "VALUES(?1, ?2, ?3, ?4)",
    [W_PROFILE_INSERT] = "INSERT INTO profiles(org_id, name, backend, key_id, chain_der, "
                         "created_at, config) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [W_APIKEY_INSERT] = "INSERT INTO api_keys(org_id, user_id, name, prefix, hash, role, "
                        "created_at, expires_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    /* Revoking twice keeps the first time; the row still counts as found. */
    [W_APIKEY_REVOKE] = "UPDATE api_keys SET revoked_at = CASE WHEN revoked_at = 0 THEN ?3 "
                        "ELSE revoked_at END WHERE org_id = ?1 AND id = ?2",
    [W_APIKEY_TOUCH] = "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1 AND last_used_at < ?2",
    /* A later status change of the same request updates it (async flows);
     * the WHERE keeps one org from touching another's request id. */
    [W_REQ_UPSERT] =
        "INSERT INTO sign_requests(id, org_id, apikey_id, user_id, status, algorithm, format, "
        "profile, filename, description, url, client_ip, digest, signature, error, created_at, "
        "completed_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, "
        "?16, ?17) ON CONFLICT(id) DO UPDATE SET status = excluded.status, "
        "signature = excluded.signature, error = excluded.error, "
        "completed_at = excluded.completed_at WHERE sign_requests.org_id = excluded.org_id",
    [W_AUDIT_INSERT] = "INSERT INTO audit(" AUDIT_COLS ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
                       "?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
    [W_HEAD_SET] = "INSERT INTO log_heads(org_id, size) VALUES(?1, ?2) "
                   "ON CONFLICT(org_id) DO UPDATE SET size = excluded.size",
    [Q_HEAD_GET] = "SELECT size FROM log_heads WHERE org_id = ?1",
    [Q_NODE_GET] = "SELECT hash FROM log_nodes WHERE org_id = ?1 AND pos = ?2",
    [W_NODE_INSERT] = "INSERT INTO log_nodes(org_id, pos, hash) VALUES(?1, ?2, ?3)",
    [R_LOG_ENTRIES] = "SELECT " AUDIT_COLS " FROM audit WHERE org_id = ?1 AND seq > ?2 "
                      "AND seq <= ?3 ORDER BY seq",
    [R_LOG_LOOKUP] = "SELECT " AUDIT_COLS " FROM audit WHERE org_id = ?1 AND sigval_sha256 = ?2 "
                     "ORDER BY seq LIMIT 100",
    [R_LOG_REQ] = "SELECT seq FROM audit WHERE org_id = ?1 AND request_id = ?2 AND outcome = 0 "
                  "AND action = 'sign.digest' ORDER BY seq DESC LIMIT 1",
    [R_NODES_ALL] = "SELECT pos, hash FROM log_nodes WHERE org_id = ?1 ORDER BY pos",
    [R_REQ_SIG] = "SELECT signature, status FROM sign_requests WHERE org_id = ?1 AND id = ?2",
    /* A signed request with no allowed entry naming it: planted or its
     * entry removed. */
    [R_SIGNED_UNLOGGED] = "SELECT r.id FROM sign_requests r WHERE r.org_id = ?1 AND r.status = ?2 "
                          "AND NOT EXISTS (SELECT 1 FROM audit a WHERE a.org_id = r.org_id "
                          "AND a.request_id = r.id AND a.outcome = 0) LIMIT 1",
    [R_CKPT_LATEST] = "SELECT size, root, note, created_at FROM log_checkpoints "
                      "WHERE org_id = ?1 ORDER BY size DESC LIMIT 1",
    [W_CKPT_INSERT] = "INSERT INTO log_checkpoints(org_id, size, root, note, created_at) "
                      "VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(org_id, size) DO NOTHING",
    [W_OPTOKEN_INSERT] = "INSERT INTO operator_tokens(name, hash, created_at) VALUES(?1, ?2, ?3)",
    [R_OPTOKEN_LOOKUP] = "SELECT id, hash FROM operator_tokens WHERE hash = ?1 AND revoked_at = 0",
    [W_OPTOKEN_REVOKE] = "UPDATE operator_tokens SET revoked_at = ?2 WHERE id = ?1 AND "
                         "revoked_at = 0",
    [R_OPTOKEN_LIST] = "SELECT id, name, created_at, revoked_at FROM operator_tokens ORDER BY id",
    /* ts is in milliseconds. */
    [R_USAGE_OUTCOMES] = "SELECT outcome, count(*) FROM audit WHERE org_id = ?1 AND action = "
                         "'sign.digest' AND ts >= ?2 * 1000 AND ts < ?3 * 1000 GROUP BY outcome",
    [R_USAGE_PROFILES] = "SELECT coalesce(profile, ''), count(*) FROM audit WHERE org_id = ?1 AND "
                         "action = 'sign.digest' AND outcome = 0 AND ts >= ?2 * 1000 AND "
                         "ts < ?3 * 1000 GROUP BY profile ORDER BY profile",
    [R_SECRET_GET] = "SELECT sealed, public FROM instance_secrets WHERE name = ?1",
    [W_SECRET_INSERT] = "INSERT INTO instance_secrets(name, sealed, public, created_at) "
                        "VALUES(?1, ?2, ?3, ?4) ON CONFLICT(name) DO NOTHING",
    [R_ORG_FIND] = "SELECT id FROM orgs WHERE name = ?1",
    [R_SKEY_GET] =
        "SELECT id, org_id, kind, sealed FROM signing_keys WHERE org_id = ?1 AND id = ?2",
    [R_PROFILE_GET] = "SELECT " PROFILE_COLS " FROM profiles WHERE org_id = ?1 AND name = ?2",
    [R_APIKEY_LOOKUP] = "SELECT " APIKEY_COLS " FROM api_keys WHERE hash = ?1",
    [R_APIKEY_LIST] = "SELECT " APIKEY_COLS " FROM api_keys WHERE org_id = ?1 ORDER BY id",
    [R_APIKEY_GET] = "SELECT " APIKEY_COLS " FROM api_keys WHERE org_id = ?1 AND id = ?2",
    [R_REQ_GET] = "SELECT id, org_id, coalesce(apikey_id, 0), coalesce(user_id, 0), status, "
                  "algorithm, format, profile, filename, description, url, client_ip, digest, "
                  "signature, error, created_at, completed_at FROM sign_requests "
                  "WHERE org_id = ?1 AND id = ?2",
    [R_AUDIT_ROWS] = "SELECT " AUDIT_COLS ", typeof(seq), typeof(version), typeof(ts), "
                     "typeof(outcome), typeof(org_id) FROM audit WHERE org_id = ?1 ORDER BY seq",
    [R_AUDIT_COUNT_REQ] = "SELECT count(*) FROM audit WHERE org_id = ?1 AND request_id = ?2",
    [R_AUDIT_COUNT_ALL] = "SELECT count(*) FROM audit WHERE org_id = ?1",
    [R_PROFILE_LIST] = "SELECT " PROFILE_COLS " FROM profiles WHERE org_id = ?1 ORDER BY name",
    [W_PROFILE_DISABLE] = "UPDATE profiles SET disabled_at = CASE WHEN disabled_at = 0 THEN ?3 "
                          "ELSE disabled_at END, updated_at = ?3 WHERE org_id = ?1 AND name = ?2",
    [W_SKEY_UPDATE] = "UPDATE signing_keys SET sealed = ?3 WHERE org_id = ?1 AND id = ?2",
    [R_ORG_LIST] = "SELECT id, name FROM orgs ORDER BY id",
    [Q_LEASE_COUNT] =
        "SELECT count(*) FROM azure_leases WHERE org_id = ?1 AND app = ?2 AND released_at = 0",
    [W_LEASE_INSERT] = "INSERT INTO azure_leases(org_id, app, node, created_at, lease_until) "
                       "VALUES(?1, ?2, ?3, ?4, ?5)",
    [W_LEASE_UPDATE] = "UPDATE azure_leases SET key_id = coalesce(?3, key_id), "
                       "lease_until = CASE WHEN ?4 > 0 THEN ?4 ELSE lease_until END "
                       "WHERE org_id = ?1 AND id = ?2 AND released_at = 0",
    [W_LEASE_RELEASE] = "UPDATE azure_leases SET released_at = ?3 "
                        "WHERE org_id = ?1 AND id = ?2 AND released_at = 0",
    [W_LEASE_RELEASE_KEY] = "UPDATE azure_leases SET released_at = ?4 "
                            "WHERE org_id = ?1 AND app = ?2 AND key_id = ?3 AND released_at = 0",
    [R_LEASE_LIST] = "SELECT id, node, key_id, created_at, lease_until FROM azure_leases "
                     "WHERE org_id = ?1 AND app = ?2 AND released_at = 0 ORDER BY id",
    /* Master-key rotation: every blob, and compare-and-swap re-seals. */
    [R_SKEY_ALL] = "SELECT id, org_id, kind, sealed FROM signing_keys ORDER BY org_id, id",
    [W_SKEY_RESEAL] =
        "UPDATE signing_keys SET sealed = ?4 WHERE org_id = ?1 AND id = ?2 AND sealed = ?3",
    [R_SECRET_NAMES] = "SELECT name FROM instance_secrets ORDER BY name",
    [W_SECRET_RESEAL] = "UPDATE instance_secrets SET sealed = ?3 WHERE name = ?1 AND sealed = ?2",
};

typedef struct conn {
    sqlite3 *db;
    sqlite3_stmt *st[STMT__COUNT];
} conn;

/* ---- writer jobs ------------------------------------------------------ */

typedef struct sq_store sq_store;
typedef struct wjob wjob;
typedef qk_err (*wjob_fn)(conn *c, wjob *j);

struct wjob {
    wjob *next;
    wjob_fn fn;
    void *arg;
    int detached;          /* nobody waits: the writer frees it (after calling `done`) */
    store_done_fn on_done; /* detached jobs: told the outcome once the batch ends */
    void *on_done_arg;
    int done;          /* set under the queue mutex once the batch committed or failed */
    int64_t queued_ns; /* CLOCK_MONOTONIC when enqueued (the commit delay's start) */
    /* The waiter's own condition: the writer wakes exactly the callers of a
     * finished batch. One shared condition broadcast woke every waiting
     * caller (up to the commit pool, 32 threads) for each batch, most of
     * them only to sleep again: ~3 futile context switches per request. */
    pthread_cond_t cv;
    qk_err rc;
    char detail[256];
};

struct sq_store {
    qk_store base;
    char *db_path;

    pthread_mutex_t rmu; /* reader pool */
    pthread_cond_t rcv;
    conn *rfree[MAX_READERS];
    size_t nfree, nopen;

    conn writer;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t wmu; /* job queue */
    pthread_cond_t wcv;  /* jobs arrived / stop */
    wjob *head, *tail;
    size_t nqueued;
    int stopping;
    /* Commit delay (see store_sqlite_set_commit_delay): while `delaying`, an
     * arrival does not wake the writer unless it fills a batch or nothing
     * else is coming. */
    int64_t delay_ns;
    const atomic_int *coming; /* the caller's count of writes on their way */
    int delaying;

    /* Checkpointer: copies committed WAL frames into the database from its
     * own connection and thread, so the writer never stalls on it. */
    pthread_t ckpt_thread;
    int ckpt_started;
    pthread_mutex_t cmu;
    pthread_cond_t ccv;
    int ckpt_frames; /* WAL size after the last commit, from the WAL hook */
    int ckpt_stop;
    sqlite3 *ckpt_db;
    atomic_int fail_commits;
    atomic_uint_fast64_t commits, writes, delayed, checkpoints, ckpt_copied;
};

static qk_err db_fail(sqlite3 *db, int rc, const char *what)
{
    int primary = rc & 0xff;
    const char *msg = db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    if (primary == SQLITE_CONSTRAINT)
        return qk_fail(QK_ERR_INVALID_ARG, "%s: %s", what, msg);
    if (primary == SQLITE_NOMEM)
        return qk_fail(QK_ERR_NOMEM, "%s: %s", what, msg);
    return qk_fail(QK_ERR_IO, "%s: %s", what, msg);
}

static qk_err exec_sql(conn *c, const char *sql)
{
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return db_fail(c->db, rc, sql);
    return QK_OK;
}

/* The cached statement `id`, reset and unbound, ready to bind. */
static qk_err stmt(conn *c, int id, sqlite3_stmt **out)
{
    *out = NULL;
    if (c->st[id] == NULL) {
        int rc = sqlite3_prepare_v3(c->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &c->st[id],
                                    NULL);
        if (rc != SQLITE_OK)
            return db_fail(c->db, rc, "prepare");
    }
    *out = c->st[id];
    return QK_OK;
}

/* Returns a statement to its cache: reset, bindings cleared (so no borrowed
 * pointer outlives the call). */
static void stmt_done(sqlite3_stmt *st)
{
    if (st != NULL) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
}

static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s == NULL)
        return sqlite3_bind_null(st, i);
    return sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

static int bind_id(sqlite3_stmt *st, int i, int64_t v)
{
    if (v == 0)
        return sqlite3_bind_null(st, i);
    return sqlite3_bind_int64(st, i, v);
}

static int bind_blob(sqlite3_stmt *st, int i, const uint8_t *p, size_t n)
{
    return sqlite3_bind_blob64(st, i, p != NULL ? (const void *)p : (const void *)"", n,
                               SQLITE_STATIC);
}

static char *col_strdup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t == NULL ? NULL : xstrdup((const char *)t);
}

static void col_buf(sqlite3_stmt *st, int i, qk_buf *out)
{
    const void *p = sqlite3_column_blob(st, i);
    int n = sqlite3_column_bytes(st, i);
    out->data = NULL;
    out->len = 0;
    if (p == NULL || n <= 0)
        return;
    out->data = xmalloc((size_t)n);
    memcpy(out->data, p, (size_t)n);
    out->len = (size_t)n;
}

static qk_err check_text(const char *what, const char *s, int required)
{
    if (s == NULL)
        return required ? qk_fail(QK_ERR_INVALID_ARG, "%s is required", what) : QK_OK;
    if (strlen(s) > MAX_TEXT)
        return qk_fail(QK_ERR_TOO_LARGE, "%s longer than %d bytes", what, MAX_TEXT);
    return QK_OK;
}

/* ---- connections ------------------------------------------------------ */

static void conn_close(conn *c)
{
    if (c == NULL)
        return;
    for (int i = 0; i < STMT__COUNT; i++)
        sqlite3_finalize(c->st[i]);
    sqlite3_close(c->db);
    memset(c, 0, sizeof(*c));
}

static qk_err conn_open(const char *path, int writer, conn *c)
{
    qk_err rc = QK_ERR_IO;
    int r;

    memset(c, 0, sizeof(*c));
    /* NOMUTEX: a connection is only ever used by one thread at a time (the
     * writer thread, or whoever holds it from the pool). */
    r = sqlite3_open_v2(path, &c->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
                            SQLITE_OPEN_NOFOLLOW,
                        NULL);
    if (r != SQLITE_OK) {
        rc = db_fail(c->db, r, path);
        goto out;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
    if ((rc = exec_sql(c, "PRAGMA foreign_keys = ON; PRAGMA trusted_schema = OFF;")) != QK_OK)
        goto out;
    if (writer) {
        /* WAL: readers never block on the writer; FULL: a commit is on disk
         * (WAL fsync) when COMMIT returns, which the audit guarantee needs. */
        if ((rc = exec_sql(c, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")) != QK_OK)
            goto out;
        /* No checkpoints in the writer's commits: the checkpointer thread
         * runs them (store_sqlite_open installs the WAL hook that wakes it). */
        if ((rc = exec_sql(c, "PRAGMA wal_autocheckpoint = 0;")) != QK_OK)
            goto out;
    } else if ((rc = exec_sql(c, "PRAGMA query_only = ON;")) != QK_OK) {
        goto out;
    }
    rc = QK_OK;
out:
    if (rc != QK_OK)
        conn_close(c);
    return rc;
}

static qk_err reader_get(sq_store *s, conn **out)
{
    qk_err rc;
    conn *c = NULL;

    *out = NULL;
    pthread_mutex_lock(&s->rmu);
    while (s->nfree == 0 && s->nopen >= MAX_READERS)
        pthread_cond_wait(&s->rcv, &s->rmu);
    if (s->nfree > 0) {
        *out = s->rfree[--s->nfree];
        pthread_mutex_unlock(&s->rmu);
        return QK_OK;
    }
    s->nopen++;
    pthread_mutex_unlock(&s->rmu);

    c = xcalloc(1, sizeof(*c));
    if ((rc = conn_open(s->db_path, 0, c)) != QK_OK) {
        free(c);
        pthread_mutex_lock(&s->rmu);
        s->nopen--;
        pthread_cond_signal(&s->rcv);
        pthread_mutex_unlock(&s->rmu);
        return rc;
    }
    *out = c;
    return QK_OK;
}

static void reader_put(sq_store *s, conn *c)
{
    if (c == NULL)
        return;
    /* Never hand a connection back in the middle of a transaction. */
    if (!sqlite3_get_autocommit(c->db))
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    pthread_mutex_lock(&s->rmu);
    s->rfree[s->nfree++] = c;
    pthread_cond_signal(&s->rcv);
    pthread_mutex_unlock(&s->rmu);
}

/* ---- the writer thread ------------------------------------------------ */

static void fail_job(wjob *j, qk_err rc, const char *detail)
{
    j->rc = rc;
    snprintf(j->detail, sizeof(j->detail), "%s", detail);
}

static void run_batch(sq_store *s, wjob *batch)
{
    conn *c = &s->writer;
    qk_err rc;
    char why[256];

    if ((rc = exec_sql(c, "BEGIN IMMEDIATE")) != QK_OK) {
        snprintf(why, sizeof(why), "begin: %s", qk_error_detail());
        for (wjob *j = batch; j != NULL; j = j->next)
            fail_job(j, rc, why);
        return;
    }
    for (wjob *j = batch; j != NULL; j = j->next) {
        qk_clear_detail();
        if ((rc = exec_sql(c, "SAVEPOINT job")) == QK_OK) {
            rc = j->fn(c, j);
            if (rc != QK_OK) {
                snprintf(j->detail, sizeof(j->detail), "%s", qk_error_detail());
                sqlite3_exec(c->db, "ROLLBACK TO job", NULL, NULL, NULL);
            }
            sqlite3_exec(c->db, "RELEASE job", NULL, NULL, NULL);
        } else {
            snprintf(j->detail, sizeof(j->detail), "%s", qk_error_detail());
        }
        j->rc = rc;
        /* Some errors (disk full, I/O) make SQLite roll the whole transaction
         * back: then the earlier jobs are gone too, and must not report success. */
        if (sqlite3_get_autocommit(c->db)) {
            snprintf(why, sizeof(why), "transaction aborted: %.200s", j->detail);
            for (wjob *k = batch; k != NULL; k = k->next)
                if (k->rc == QK_OK || k == j)
                    fail_job(k, rc != QK_OK ? rc : QK_ERR_IO, why);
            return;
        }
    }

    int left = atomic_load(&s->fail_commits);
    while (left > 0 && !atomic_compare_exchange_weak(&s->fail_commits, &left, left - 1))
        ;
    if (left > 0)
        rc = qk_fail(QK_ERR_IO, "commit failed (injected by test hook)");
    else
        rc = exec_sql(c, "COMMIT");
    if (rc == QK_OK) {
        uint64_t n = 0;
        for (wjob *j = batch; j != NULL; j = j->next)
            n++;
        atomic_fetch_add(&s->commits, 1);
        atomic_fetch_add(&s->writes, n);
    }
    if (rc != QK_OK) {
        /* Nothing of this batch is durable: every caller gets an error, so no
         * signature goes out without its audit row. */
        snprintf(why, sizeof(why), "commit: %s", qk_error_detail());
        if (!sqlite3_get_autocommit(c->db))
            sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
        for (wjob *j = batch; j != NULL; j = j->next)
            if (j->rc == QK_OK)
                fail_job(j, rc, why);
    }
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int writes_coming(const sq_store *s)
{
    return s->coming != NULL && atomic_load(s->coming) > 0;
}

/* Group commit delay, called with the queue locked and a job queued. While
 * the caller says more writes are on their way (requests being signed right
 * now), the writer waits for them, up to `delay_ns` after the oldest queued
 * write, so one fsync carries a bigger batch: fewer fsyncs, less kernel and
 * SQLite work per write. With nothing on its way (a lone request, a serial
 * client, an admin command) the write commits at once: waiting could not
 * add anything to the batch, only latency. */
static void commit_delay(sq_store *s)
{
    if (s->delay_ns <= 0 || !writes_coming(s))
        return;
    int64_t deadline = s->head->queued_ns + s->delay_ns;
    struct timespec ts = {(time_t)(deadline / 1000000000), (long)(deadline % 1000000000)};
    s->delaying = 1;
    atomic_fetch_add(&s->delayed, 1);
    while (!s->stopping && s->nqueued < MAX_BATCH && writes_coming(s) && mono_ns() < deadline)
        if (pthread_cond_timedwait(&s->wcv, &s->wmu, &ts) == ETIMEDOUT)
            break;
    s->delaying = 0;
}

static void *writer_main(void *arg)
{
    sq_store *s = arg;

    pthread_mutex_lock(&s->wmu);
    for (;;) {
        while (s->head == NULL && !s->stopping)
            pthread_cond_wait(&s->wcv, &s->wmu);
        if (s->head == NULL)
            break; /* stopping and drained */
        commit_delay(s);
        /* Take up to MAX_BATCH jobs; the rest wait for the next round. */
        wjob *batch = s->head, *last = s->head;
        size_t n = 1;
        for (; n < MAX_BATCH && last->next != NULL; n++)
            last = last->next;
        s->head = last->next;
        if (s->head == NULL)
            s->tail = NULL;
        s->nqueued -= n;
        last->next = NULL;
        pthread_mutex_unlock(&s->wmu);

        run_batch(s, batch);

        /* Completions first and without the lock (they resume connections
         * and may take other locks); a waiter queued behind them (flush)
         * therefore returns only after they have run. */
        for (wjob *j = batch; j != NULL; j = j->next)
            if (j->on_done != NULL)
                j->on_done(j->on_done_arg, j->rc, j->rc == QK_OK ? NULL : j->detail);

        pthread_mutex_lock(&s->wmu);
        for (wjob *j = batch, *next; j != NULL; j = next) {
            next = j->next; /* a woken caller may free its job right away */
            if (j->detached) {
                free(j);
            } else {
                j->done = 1;
                pthread_cond_signal(&j->cv);
            }
        }
    }
    pthread_mutex_unlock(&s->wmu);
    return NULL;
}

static void enqueue(sq_store *s, wjob *j)
{
    int64_t now = mono_ns();
    j->next = NULL;
    j->queued_ns = now;
    if (s->tail != NULL)
        s->tail->next = j;
    else
        s->head = j;
    s->tail = j;
    s->nqueued++;
    /* A delaying writer is woken only when waiting longer is pointless. */
    if (!s->delaying || s->nqueued >= MAX_BATCH || s->stopping || !writes_coming(s))
        pthread_cond_signal(&s->wcv);
}

/* Queues fn(arg) for the writer and waits until its batch has committed. */
static qk_err submit(sq_store *s, wjob_fn fn, void *arg)
{
    wjob j;
    memset(&j, 0, sizeof(j));
    j.fn = fn;
    j.arg = arg;
    pthread_cond_init(&j.cv, NULL);
    pthread_mutex_lock(&s->wmu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->wmu);
        pthread_cond_destroy(&j.cv);
        return qk_fail(QK_ERR_IO, "store is closing");
    }
    enqueue(s, &j);
    while (!j.done)
        pthread_cond_wait(&j.cv, &s->wmu);
    pthread_mutex_unlock(&s->wmu);
    pthread_cond_destroy(&j.cv);
    if (j.rc != QK_OK)
        return qk_fail(j.rc, "%s", j.detail);
    return QK_OK;
}

/* ---- the checkpointer -------------------------------------------------- */

/* WAL frames (pages) after which the checkpointer copies the WAL into the
 * database: 4096 (16 MiB) rather than SQLite's 1000, because the pages every
 * group commit rewrites (table and index tails, audit_head) are copied once
 * per checkpoint however often they changed. */
#define CKPT_FRAMES 4096
/* Passive checkpoints never block the writer, but under endless writes the
 * WAL may never be wholly copied at a moment no commit follows, so it could
 * only grow; past this size one blocking (RESTART) checkpoint rewinds it. */
#define CKPT_FORCE_FRAMES (16 * CKPT_FRAMES)

/* sqlite3_wal_hook callback, on the writer thread after each commit. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    sq_store *s = arg;
    (void)db;
    (void)name;
    if (frames >= CKPT_FRAMES) {
        pthread_mutex_lock(&s->cmu);
        s->ckpt_frames = frames;
        pthread_cond_signal(&s->ccv);
        pthread_mutex_unlock(&s->cmu);
    }
    return SQLITE_OK;
}

static void *ckpt_main(void *arg)
{
    sq_store *s = arg;

    pthread_mutex_lock(&s->cmu);
    for (;;) {
        while (s->ckpt_frames < CKPT_FRAMES && !s->ckpt_stop)
            pthread_cond_wait(&s->ccv, &s->cmu);
        if (s->ckpt_stop)
            break;
        int mode = s->ckpt_frames >= CKPT_FORCE_FRAMES ? SQLITE_CHECKPOINT_RESTART
                                                       : SQLITE_CHECKPOINT_PASSIVE;
        s->ckpt_frames = 0;
        pthread_mutex_unlock(&s->cmu);
        /* A few passes: each copies what had committed when it began; the
         * WAL rewinds (the writer starts it over) once one copies it all. */
        for (int pass = 0; pass < 4; pass++) {
            int log = 0, done = 0;
            int r = sqlite3_wal_checkpoint_v2(s->ckpt_db, NULL, mode, &log, &done);
            if (r != SQLITE_OK && r != SQLITE_BUSY) {
                log_kv(LOG_WARN, "store checkpoint failed", "detail", sqlite3_errmsg(s->ckpt_db),
                       NULL);
                break;
            }
            atomic_fetch_add(&s->checkpoints, 1);
            if (r == SQLITE_OK && done > 0)
                atomic_fetch_add(&s->ckpt_copied, (uint64_t)done);
            if (r == SQLITE_OK && log == done)
                break;
            mode = SQLITE_CHECKPOINT_PASSIVE;
        }
        pthread_mutex_lock(&s->cmu);
    }
    pthread_mutex_unlock(&s->cmu);
    return NULL;
}

static qk_err ckpt_start(sq_store *s)
{
    int r =
        sqlite3_open_v2(s->db_path, &s->ckpt_db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW, NULL);
    if (r != SQLITE_OK)
        return db_fail(s->ckpt_db, r, "checkpoint connection");
    sqlite3_busy_timeout(s->ckpt_db, BUSY_TIMEOUT_MS); /* RESTART waits for the writer */
    /* A connection opens the WAL at its first read; a checkpoint before that
     * finds "not in WAL mode" and does nothing. */
    r = sqlite3_exec(s->ckpt_db, "PRAGMA schema_version", NULL, NULL, NULL);
    if (r != SQLITE_OK)
        return db_fail(s->ckpt_db, r, "checkpoint connection");
    if (pthread_create(&s->ckpt_thread, NULL, ckpt_main, s) != 0)
        return qk_fail(QK_ERR_IO, "cannot start the store checkpoint thread");
    s->ckpt_started = 1;
    sqlite3_wal_hook(s->writer.db, wal_hook, s);
    return QK_OK;
}

static void ckpt_stop(sq_store *s)
{
    if (s->ckpt_started) {
        pthread_mutex_lock(&s->cmu);
        s->ckpt_stop = 1;
        pthread_cond_signal(&s->ccv);
        pthread_mutex_unlock(&s->cmu);
        pthread_join(s->ckpt_thread, NULL);
        s->ckpt_started = 0;
    }
    if (s->ckpt_db != NULL) {
        sqlite3_close(s->ckpt_db);
        s->ckpt_db = NULL;
    }
}

/* ---- migrations ------------------------------------------------------- */

static qk_err log_backfill(conn *c);

static qk_err migrate(conn *c)
{
    qk_err rc = QK_ERR_IO;
    sqlite3_stmt *st = NULL;
    int version = 0, r;

    if ((rc = exec_sql(c, "BEGIN IMMEDIATE")) != QK_OK)
        return rc;
    if ((rc = exec_sql(c, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);"
                          "INSERT INTO schema_version SELECT 0 WHERE NOT EXISTS "
                          "(SELECT 1 FROM schema_version);")) != QK_OK)
        goto out;
    r = sqlite3_prepare_v2(c->db, "SELECT max(version) FROM schema_version", -1, &st, NULL);
    if (r != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW) {
        rc = db_fail(c->db, r, "read schema_version");
        goto out;
    }
    version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    if (version > NMIGRATIONS) {
        rc =
            qk_fail(QK_ERR_INVALID_ARG, "database schema version %d is newer than this qwickd (%d)",
                    version, NMIGRATIONS);
        goto out;
    }
    /* All pending steps and the version bump commit together: a crash leaves
     * either the old schema or the new one. */
    for (int v = version; v < NMIGRATIONS; v++) {
        char bump[64];
        if ((rc = exec_sql(c, migrations[v])) != QK_OK)
            goto out;
        if (v + 1 == 4 && (rc = log_backfill(c)) != QK_OK)
            goto out;
        snprintf(bump, sizeof(bump), "UPDATE schema_version SET version = %d", v + 1);
        if ((rc = exec_sql(c, bump)) != QK_OK)
            goto out;
    }
    rc = exec_sql(c, "COMMIT");
out:
    sqlite3_finalize(st);
    if (rc != QK_OK && !sqlite3_get_autocommit(c->db))
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* ---- write operations (run on the writer thread) ----------------------- */

/* The audit entry of a change, appended in the change's transaction with
 * `meta` (what changed) in place of the caller's. */
static qk_err append_audit_meta(conn *c, const store_audit *a, const char *meta);
/* Compact JSON of a jansson pack format (keys sorted), heap string. */
static char *meta_json(const char *fmt, ...);
static qk_err check_audit(const store_audit *a);
static void read_apikey(sqlite3_stmt *st, store_apikey *k);

/* Steps a write statement; SQLITE_DONE expected. */
static qk_err step_write(conn *c, sqlite3_stmt *st, const char *what)
{
    int r = sqlite3_step(st);
    if (r != SQLITE_DONE)
        return db_fail(c->db, r, what);
    return QK_OK;
}

typedef struct org_create_arg {
    const char *name;
    int64_t id;
} org_create_arg;

static qk_err job_org_create(conn *c, wjob *j)
{
    org_create_arg *a = j->arg;
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(c, W_ORG_INSERT, &st);
    if (rc != QK_OK)
        return rc;
    bind_text(st, 1, a->name);
    sqlite3_bind_int64(st, 2, now_unix());
    rc = step_write(c, st, "insert org");
    if (rc == QK_OK)
        a->id = sqlite3_last_insert_rowid(c->db);
    stmt_done(st);
    return rc;
}

static qk_err sq_org_create(qk_store *base, const char *name, int64_t *id)
{
    org_create_arg a = {name, 0};
    qk_err rc;
    *id = 0;
    if ((rc = check_text("org name", name, 1)) != QK_OK)
        return rc;
    if ((rc = submit((sq_store *)base, job_org_create, &a)) == QK_OK)
        *id = a.id;
    return rc;
}

typedef struct user_create_arg {
    int64_t org;
    const char *email, *pw_hash;
    store_role role;
    int64_t id;
} user_create_arg;

static qk_err job_user_create(conn *c, wjob *j)
{
    user_create_arg *a = j->arg;
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(c, W_USER_INSERT, &st);
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, a->org);
    bind_text(st, 2, a->email);
    bind_text(st, 3, a->pw_hash);
    sqlite3_bind_int(st, 4, (int)a->role);
    sqlite3_bind_int64(st, 5, now_unix());
    rc = step_write(c, st, "insert user");
    if (rc == QK_OK)
        a->id = sqlite3_last_insert_rowid(c->db);
    stmt_done(st);
    return rc;
}

static qk_err sq_user_create(qk_store *base, int64_t org, const char *email, const char *pw_hash,
                             store_role role, int64_t *id)
{
    user_create_arg a = {org, email, pw_hash, role, 0};
    qk_err rc;
    *id = 0;
    if ((rc = check_text("email", email, 1)) != QK_OK ||
        (rc = check_text("password hash", pw_hash, 0)) != QK_OK)
        return rc;
    if ((rc = submit((sq_store *)base, job_user_create, &a)) == QK_OK)
        *id = a.id;
    return rc;
}

typedef struct skey_create_arg {
    int64_t org;
    const char *kind;
    qk_slice sealed;
    int64_t id;
} skey_create_arg;

static qk_err job_skey_create(conn *c, wjob *j)
{
    skey_create_arg *a = j->arg;
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(c, W_SKEY_INSERT, &st);
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, a->org);
    bind_text(st, 2, a->kind);
    bind_blob(st, 3, a->sealed.data, a->sealed.len);
    sqlite3_bind_int64(st, 4, now_unix());
    rc = step_write(c, st, "insert signing key");
    if (rc == QK_OK)
        a->id = sqlite3_last_insert_rowid(c->db);
    stmt_done(st);
    return rc;
}

static qk_err sq_signing_key_create(qk_store *base, int64_t org, const char *kind, qk_slice sealed,
                                    int64_t *id)
{
    skey_create_arg a = {org, kind, sealed, 0};
    qk_err rc;
    *id = 0;
    if ((rc = check_text("key kind", kind, 1)) != QK_OK)
        return rc;
    if (sealed.len == 0 || sealed.len > MAX_BLOB)
        return qk_fail(QK_ERR_INVALID_ARG, "sealed key of %zu bytes", sealed.len);
    if ((rc = submit((sq_store *)base, job_skey_create, &a)) == QK_OK)
        *id = a.id;
    return rc;
}

typedef struct profile_create_arg {
    int64_t org;
    const char *name, *backend;
    int64_t key_id;
    qk_slice chain;
    const char *config;
    const store_audit *audit;
    int64_t id;
} profile_create_arg;

static qk_err job_profile_create(conn *c, wjob *j)
{
    profile_create_arg *a = j->arg;
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(c, W_PROFILE_INSERT, &st);
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, a->org);
    bind_text(st, 2, a->name);
    bind_text(st, 3, a->backend);
    sqlite3_bind_int64(st, 4, a->key_id);
    bind_blob(st, 5, a->chain.data, a->chain.len);
    sqlite3_bind_int64(st, 6, now_unix());
    bind_text(st, 7, a->config);
    rc = step_write(c, st, "insert profile");
    if (rc == QK_OK)
        a->id = sqlite3_last_insert_rowid(c->db);
    stmt_done(st);
    if (rc == QK_OK && a->audit != NULL) {
        char *meta =
            meta_json("{s:I,s:s,s:s,s:I}", "profileId", (json_int_t)a->id, "profile", a->name,
                      "backend", a->backend, "signingKeyId", (json_int_t)a->key_id);
        rc = append_audit_meta(c, a->audit, meta);
        free(meta);
    }
    return rc;
}

static qk_err sq_profile_create(qk_store *base, int64_t org, const char *name, const char *backend,
                                int64_t key_id, qk_slice chain_der, const char *config,
                                const store_audit *audit, int64_t *id)
{
    profile_create_arg a = {org, name, backend, key_id, chain_der, config, audit, 0};
    qk_err rc;
    *id = 0;
    if ((rc = check_text("profile name", name, 1)) != QK_OK ||
        (rc = check_text("backend", backend, 1)) != QK_OK)
        return rc;
    if (config != NULL && strlen(config) > MAX_BLOB)
        return qk_fail(QK_ERR_TOO_LARGE, "profile config of %zu bytes", strlen(config));
    if (chain_der.len > MAX_BLOB)
        return qk_fail(QK_ERR_TOO_LARGE, "certificate chain of %zu bytes", chain_der.len);
    if (audit != NULL && (rc = check_audit(audit)) != QK_OK)
        return rc;
    if ((rc = submit((sq_store *)base, job_profile_create, &a)) == QK_OK)
        *id = a.id;
    return rc;
}

typedef struct apikey_create_arg {
    int64_t org, user;
    const char *name, *prefix;
    const uint8_t *hash;
    store_role role;
    int64_t expires_at;
    const store_audit *audit;
    int64_t id;
} apikey_create_arg;

static qk_err job_apikey_create(conn *c, wjob *j)
{
    apikey_create_arg *a = j->arg;
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(c, W_APIKEY_INSERT, &st);
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, a->org);
    bind_id(st, 2, a->user);
    bind_text(st, 3, a->name);
    bind_text(st, 4, a->prefix);
    bind_blob(st, 5, a->hash, HASH_LEN);
    sqlite3_bind_int(st, 6, (int)a->role);
    sqlite3_bind_int64(st, 7, now_unix());
    sqlite3_bind_int64(st, 8, a->expires_at);
    rc = step_write(c, st, "insert api key");
    if (rc == QK_OK)
        a->id = sqlite3_last_insert_rowid(c->db);
    stmt_done(st);
    if (rc == QK_OK && a->audit != NULL) {
        char *meta = meta_json("{s:I,s:s,s:s,s:I,s:I}", "keyId", (json_int_t)a->id, "name", a->name,
                               "role", store_role_name(a->role), "expiresAt",
                               (json_int_t)a->expires_at, "userId", (json_int_t)a->user);
        rc = append_audit_meta(c, a->audit, meta);
        free(meta);
    }
    return rc;
}

static qk_err sq_apikey_create(qk_store *base, int64_t org, int64_t user, const char *name,
                               const char *prefix, const uint8_t hash[32], store_role role,
                               int64_t expires_at, const store_audit *audit, int64_t *id)
{
    apikey_create_arg a = {org, user, name, prefix, hash, role, expires_at, audit, 0};
    qk_err rc;
    *id = 0;
    if ((rc = check_text("key name", name, 1)) != QK_OK ||
        (rc = check_text("key prefix", prefix, 1)) != QK_OK)
        return rc;
    if ((unsigned)role > ROLE_ADMIN || expires_at < 0)
        return qk_fail(QK_ERR_INVALID_ARG, "bad role or expiry");
    if (audit != NULL && (rc = check_audit(audit)) != QK_OK)
        return rc;
    if ((rc = submit((sq_store *)base, job_apikey_create, &a)) == QK_OK)
        *id = a.id;
    return rc;
}

typedef struct apikey_revoke_arg {
    int64_t org, id;
    const store_audit *audit;
    int found;
} apikey_revoke_arg;

/* What a revocation's entry records about the key: read in the transaction. */
static char *revoked_key_meta(conn *c, int64_t org, int64_t id)
{
    sqlite3_stmt *st = NULL;
    char *meta = NULL;
    if (stmt(c, R_APIKEY_GET, &st) != QK_OK)
        return NULL;
    sqlite3_bind_int64(st, 1, org);
    sqlite3_bind_int64(st, 2, id);
    if (sqlite3_step(st) == SQLITE_ROW) {
        store_apikey k;
        memset(&k, 0, sizeof(k));
        read_apikey(st, &k);
        meta = meta_json("{s:I,s:s,s:s,s:I,s:I}", "keyId", (json_int_t)k.id, "name", k.name, "role",
                         store_role_name(k.role), "expiresAt", (json_int_t)k.expires_at,
                         "revokedAt", (json_int_t)k.revoked_at);
        store_apikey_clear(&k);
    }
    stmt_done(st);
    return meta;
}

static qk_err job_apikey_revoke(conn *c, wjob *j)
{
    apikey_revoke_arg *a = j->arg;
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(c, W_APIKEY_REVOKE, &st);
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, a->org);
    sqlite3_bind_int64(st, 2, a->id);
    sqlite3_bind_int64(st, 3, now_unix());
    rc = step_write(c, st, "revoke api key");
    if (rc == QK_OK)
        a->found = sqlite3_changes(c->db) > 0;
    stmt_done(st);
    if (rc == QK_OK && a->found && a->audit != NULL) {
        char *meta = revoked_key_meta(c, a->org, a->id);
        rc = meta != NULL ? append_audit_meta(c, a->audit, meta)
                          : qk_fail(QK_ERR_IO, "cannot read the revoked key back");
        free(meta);
    }
    return rc;
}

static qk_err sq_apikey_revoke(qk_store *base, int64_t org, int64_t id, const store_audit *audit,
                               int *found)
{
    apikey_revoke_arg a = {org, id, audit, 0};
    qk_err rc = audit != NULL ? check_audit(audit) : QK_OK;
    *found = 0;
    if (rc != QK_OK)
        return rc;
    rc = submit((sq_store *)base, job_apikey_revoke, &a);
    *found = a.found;
    if (rc == QK_OK && !a.found)
        return qk_fail(QK_ERR_INVALID_ARG, "no API key %" PRId64 " in this org", id);
    return rc;
}

typedef struct touch_job {
    wjob j;
    int64_t id, now;
} touch_job;

static qk_err job_apikey_touch(conn *c, wjob *j)
{
    touch_job *t = j->arg;
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(c, W_APIKEY_TOUCH, &st);
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, t->id);
    sqlite3_bind_int64(st, 2, t->now);
    rc = step_write(c, st, "touch api key");
    stmt_done(st);
    return rc;
}

static qk_err sq_apikey_touch(qk_store *base, int64_t id, int64_t now)
{
    sq_store *s = (sq_store *)base;
    touch_job *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return qk_fail(QK_ERR_NOMEM, "touch");
    t->j.fn = job_apikey_touch;
    t->j.arg = t;
    t->j.detached = 1;
    t->id = id;
    t->now = now;
    pthread_mutex_lock(&s->wmu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->wmu);
        free(t);
        return QK_OK; /* best effort: dropped at shutdown */
    }
    enqueue(s, &t->j);
    pthread_mutex_unlock(&s->wmu);
    return QK_OK;
}

/* ---- the transparency log --------------------------------------------- */

static qk_err check_audit(const store_audit *a)
{
    qk_err rc;
    if (a->org_id < 0)
        return qk_fail(QK_ERR_INVALID_ARG, "audit row with a bad org");
    if ((unsigned)a->outcome > AUDIT_FAILED)
        return qk_fail(QK_ERR_INVALID_ARG, "bad audit outcome");
    if ((rc = check_text("actor", a->actor, 0)) != QK_OK ||
        (rc = check_text("client_ip", a->client_ip, 0)) != QK_OK ||
        (rc = check_text("action", a->action, 1)) != QK_OK ||
        (rc = check_text("request_id", a->request_id, 0)) != QK_OK ||
        (rc = check_text("format", a->format, 0)) != QK_OK ||
        (rc = check_text("digest", a->digest_hex, 0)) != QK_OK ||
        (rc = check_text("algorithm", a->algorithm, 0)) != QK_OK ||
        (rc = check_text("profile", a->profile, 0)) != QK_OK ||
        (rc = check_text("filename", a->filename, 0)) != QK_OK ||
        (rc = check_text("signer_fp", a->signer_fp, 0)) != QK_OK ||
        (rc = check_text("sig_sha256", a->sig_sha256, 0)) != QK_OK ||
        (rc = check_text("sigval_sha256", a->sigval_sha256, 0)) != QK_OK ||
        (rc = check_text("detail", a->detail, 0)) != QK_OK ||
        (rc = check_text("meta", a->meta, 0)) != QK_OK)
        return rc;
    return QK_OK;
}

/* The leaf of a store_audit about to be written (version 2). */
static void audit_entry(const store_audit *a, int64_t seq, tlog_entry *e)
{
    *e = (tlog_entry){
        .version = 2,
        .org_id = a->org_id,
        .seq = seq,
        .ts = a->ts,
        .outcome = (int64_t)a->outcome,
        .actor = (char *)a->actor,
        .client_ip = (char *)a->client_ip,
        .action = (char *)a->action,
        .request_id = (char *)a->request_id,
        .format = (char *)a->format,
        .algorithm = (char *)a->algorithm,
        .digest_hex = (char *)a->digest_hex,
        .profile = (char *)a->profile,
        .filename = (char *)a->filename,
        .signer_fp = (char *)a->signer_fp,
        .sig_sha256 = (char *)a->sig_sha256,
        .sigval_sha256 = (char *)a->sigval_sha256,
        .detail = (char *)a->detail,
        .meta = (char *)a->meta,
    };
}

/* An AUDIT_COLS row as a leaf; strings point into the statement's row. */
static void read_entry(sqlite3_stmt *st, tlog_entry *e)
{
    *e = (tlog_entry){
        .org_id = sqlite3_column_int64(st, 0),
        .seq = sqlite3_column_int64(st, 1),
        .version = sqlite3_column_int(st, 2),
        .ts = sqlite3_column_int64(st, 3),
        .actor = (char *)sqlite3_column_text(st, 4),
        .client_ip = (char *)sqlite3_column_text(st, 5),
        .action = (char *)sqlite3_column_text(st, 6),
        .request_id = (char *)sqlite3_column_text(st, 7),
        .format = (char *)sqlite3_column_text(st, 8),
        .algorithm = (char *)sqlite3_column_text(st, 9),
        .digest_hex = (char *)sqlite3_column_text(st, 10),
        .profile = (char *)sqlite3_column_text(st, 11),
        .filename = (char *)sqlite3_column_text(st, 12),
        .signer_fp = (char *)sqlite3_column_text(st, 13),
        .sig_sha256 = (char *)sqlite3_column_text(st, 14),
        .sigval_sha256 = (char *)sqlite3_column_text(st, 15),
        .outcome = sqlite3_column_int64(st, 16),
        .detail = (char *)sqlite3_column_text(st, 17),
        .meta = (char *)sqlite3_column_text(st, 18),
    };
}

static void entry_leaf_hash(const tlog_entry *e, tlog_hash out)
{
    uint8_t *leaf = NULL;
    size_t n = 0;
    tlog_leaf_encode(e, &leaf, &n);
    tlog_leaf_hash(leaf, n, out);
    free(leaf);
}

/* Reads node `pos` of the org's tree through connection c. */
static qk_err node_get(conn *c, int64_t org, int64_t pos, tlog_hash out)
{
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(c, Q_NODE_GET, &st);
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, org);
    sqlite3_bind_int64(st, 2, pos);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW && sqlite3_column_bytes(st, 0) == TLOG_HASH_LEN) {
        memcpy(out, sqlite3_column_blob(st, 0), TLOG_HASH_LEN);
        rc = QK_OK;
    } else if (r == SQLITE_ROW || r == SQLITE_DONE) {
        rc = qk_fail(QK_ERR_IO, "log node %" PRId64 " of org %" PRId64 " missing or corrupt", pos,
                     org);
    } else {
        rc = db_fail(c->db, r, "read log node");
    }
    stmt_done(st);
    return rc;
}

static qk_err node_put(conn *c, int64_t org, int64_t pos, const tlog_hash h)
{
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(c, W_NODE_INSERT, &st);
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, org);
    sqlite3_bind_int64(st, 2, pos);
    bind_blob(st, 3, h, TLOG_HASH_LEN);
    rc = step_write(c, st, "insert log node");
    stmt_done(st);
    return rc;
}

/* Adds leaf `index` and every subtree it completes (about two rows per
 * entry on average; the left siblings are read back, log n at worst). */
static qk_err log_add_leaf(conn *c, int64_t org, int64_t index, const tlog_hash leaf)
{
    tlog_hash cur, left;
    qk_err rc = node_put(c, org, tlog_pos(0, index), leaf);
    memcpy(cur, leaf, TLOG_HASH_LEN);
    for (int level = 0; rc == QK_OK && (index & 1); level++, index >>= 1) {
        if ((rc = node_get(c, org, tlog_pos(level, index - 1), left)) != QK_OK)
            break;
        tlog_node_hash(left, cur, cur);
        rc = node_put(c, org, tlog_pos(level + 1, index >> 1), cur);
    }
    return rc;
}

/* The org's log size (0 when it has no entry yet). */
static qk_err log_size(conn *c, int64_t org, int64_t *size)
{
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(c, Q_HEAD_GET, &st);
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, org);
    int r = sqlite3_step(st);
    *size = 0;
    if (r == SQLITE_ROW)
        *size = sqlite3_column_int64(st, 0);
    else if (r != SQLITE_DONE)
        rc = db_fail(c->db, r, "read log head");
    stmt_done(st);
    return rc;
}

static qk_err head_set(conn *c, int64_t org, int64_t size)
{
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(c, W_HEAD_SET, &st);
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, org);
    sqlite3_bind_int64(st, 2, size);
    rc = step_write(c, st, "update log head");
    stmt_done(st);
    return rc;
}

static void bind_entry(sqlite3_stmt *st, const tlog_entry *e)
{
    sqlite3_bind_int64(st, 1, e->org_id);
    sqlite3_bind_int64(st, 2, e->seq);
    sqlite3_bind_int(st, 3, e->version);
    sqlite3_bind_int64(st, 4, e->ts);
    const char *t[] = {e->actor,    e->client_ip, e->action,     e->request_id,
                       e->format,   e->algorithm, e->digest_hex, e->profile,
                       e->filename, e->signer_fp, e->sig_sha256, e->sigval_sha256};
    for (int i = 0; i < 12; i++)
        bind_text(st, 5 + i, t[i]);
    sqlite3_bind_int64(st, 17, e->outcome);
    bind_text(st, 18, e->detail);
    bind_text(st, 19, e->meta);
}

/* Appends one entry inside the writer's open transaction. The head is read
 * in the same transaction (BEGIN IMMEDIATE holds the write lock), so entries
 * from several processes still form one log. */
static qk_err append_audit(conn *c, const store_audit *in)
{
    qk_err rc;
    sqlite3_stmt *st = NULL;
    store_audit a = *in;
    tlog_entry e;
    tlog_hash leaf;
    int64_t size = 0;

    if (a.ts == 0)
        a.ts = now_unix_ms();
    if ((rc = log_size(c, a.org_id, &size)) != QK_OK)
        return rc;
    audit_entry(&a, size + 1, &e);
    entry_leaf_hash(&e, leaf);
    if ((rc = stmt(c, W_AUDIT_INSERT, &st)) != QK_OK)
        return rc;
    bind_entry(st, &e);
    rc = step_write(c, st, "insert audit row");
    stmt_done(st);
    if (rc == QK_OK)
        rc = log_add_leaf(c, a.org_id, size, leaf);
    if (rc == QK_OK)
        rc = head_set(c, a.org_id, size + 1);
    if (rc == QK_OK && in->log_index != NULL)
        *in->log_index = size;
    return rc;
}

static qk_err append_audit_meta(conn *c, const store_audit *a, const char *meta)
{
    store_audit copy = *a;
    copy.meta = meta;
    return append_audit(c, &copy);
}

static char *meta_json(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *j = json_vpack_ex(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    return s != NULL ? s : xstrdup("{}");
}

/* Migration 4: the tree over the rows written before the log existed. */
static qk_err log_backfill(conn *c)
{
    sqlite3_stmt *st = NULL;
    qk_err rc = QK_OK;
    int r = sqlite3_prepare_v2(c->db, "SELECT " AUDIT_COLS " FROM audit ORDER BY org_id, seq", -1,
                               &st, NULL);
    if (r != SQLITE_OK)
        return db_fail(c->db, r, "read audit rows");
    int64_t org = -1, next = 1;
    while (rc == QK_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
        tlog_entry e;
        tlog_hash leaf;
        read_entry(st, &e);
        if (e.org_id != org) {
            org = e.org_id;
            next = 1;
        }
        if (e.seq != next++) {
            rc = qk_fail(QK_ERR_IO,
                         "audit rows of org %" PRId64 " are not contiguous at %" PRId64
                         ": the audit trail was tampered with before this upgrade",
                         org, e.seq);
            break;
        }
        entry_leaf_hash(&e, leaf);
        rc = log_add_leaf(c, org, e.seq - 1, leaf);
    }
    if (rc == QK_OK && r != SQLITE_DONE)
        rc = db_fail(c->db, r, "read audit rows");
    sqlite3_finalize(st);
    return rc;
}

static qk_err job_audit_append(conn *c, wjob *j)
{
    return append_audit(c, j->arg);
}

static qk_err sq_audit_append(qk_store *base, const store_audit *audit)
{
    qk_err rc = check_audit(audit);
    if (rc != QK_OK)
        return rc;
    return submit((sq_store *)base, job_audit_append, (void *)audit);
}

typedef struct request_record_arg {
    const store_sign_request *req;
    const store_audit *audit;
} request_record_arg;

static qk_err job_request_record(conn *c, wjob *j)
{
    request_record_arg *a = j->arg;
    const store_sign_request *q = a->req;
    sqlite3_stmt *st = NULL;
    int64_t now = now_unix();
    qk_err rc = stmt(c, W_REQ_UPSERT, &st);
    if (rc != QK_OK)
        return rc;
    bind_text(st, 1, q->id);
    sqlite3_bind_int64(st, 2, q->org_id);
    bind_id(st, 3, q->apikey_id);
    bind_id(st, 4, q->user_id);
    sqlite3_bind_int(st, 5, (int)q->status);
    bind_text(st, 6, q->algorithm);
    bind_text(st, 7, q->format);
    bind_text(st, 8, q->profile);
    bind_text(st, 9, q->filename);
    bind_text(st, 10, q->description);
    bind_text(st, 11, q->url);
    bind_text(st, 12, q->client_ip);
    bind_blob(st, 13, q->digest.data, q->digest.len);
    if (q->signature.len > 0)
        bind_blob(st, 14, q->signature.data, q->signature.len);
    else
        sqlite3_bind_null(st, 14);
    bind_text(st, 15, q->error);
    sqlite3_bind_int64(st, 16, q->created_at != 0 ? q->created_at : now);
    sqlite3_bind_int64(st, 17, q->completed_at);
    rc = step_write(c, st, "record sign request");
    if (rc == QK_OK && sqlite3_changes(c->db) != 1)
        rc = qk_fail(QK_ERR_INVALID_ARG, "request id %s belongs to another org", q->id);
    stmt_done(st);
    if (rc == QK_OK && a->audit != NULL)
        rc = append_audit(c, a->audit);
    return rc;
}

static qk_err check_request(const store_sign_request *req, const store_audit *audit)
{
    qk_err rc;
    if (req->id[0] == '\0' || memchr(req->id, '\0', sizeof(req->id)) == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "request id missing or unterminated");
    if (req->org_id <= 0 || (unsigned)req->status > REQ_REJECTED)
        return qk_fail(QK_ERR_INVALID_ARG, "request without an org or with a bad status");
    if ((rc = check_text("algorithm", req->algorithm, 1)) != QK_OK ||
        (rc = check_text("format", req->format, 1)) != QK_OK ||
        (rc = check_text("profile", req->profile, 1)) != QK_OK ||
        (rc = check_text("filename", req->filename, 0)) != QK_OK ||
        (rc = check_text("description", req->description, 0)) != QK_OK ||
        (rc = check_text("url", req->url, 0)) != QK_OK ||
        (rc = check_text("client_ip", req->client_ip, 0)) != QK_OK ||
        (rc = check_text("error", req->error, 0)) != QK_OK)
        return rc;
    if (req->digest.len > 1024 || req->signature.len > MAX_BLOB)
        return qk_fail(QK_ERR_TOO_LARGE, "digest or signature too large");
    if (audit != NULL) {
        if ((rc = check_audit(audit)) != QK_OK)
            return rc;
        if (audit->org_id != req->org_id)
            return qk_fail(QK_ERR_INVALID_ARG, "audit row and request belong to different orgs");
    }
    return QK_OK;
}

static qk_err sq_request_record(qk_store *base, const store_sign_request *req,
                                const store_audit *audit)
{
    request_record_arg a = {req, audit};
    qk_err rc = check_request(req, audit);
    if (rc != QK_OK)
        return rc;
    return submit((sq_store *)base, job_request_record, &a);
}

typedef struct record_job {
    wjob j;
    request_record_arg a;
} record_job;

/* The signing path's write: queued like any other, but nobody blocks on it.
 * A thread parked per in-flight request (waiting on a condition, woken after
 * the commit, then resuming the connection) cost two context switches and a
 * thread hop per request; the writer now reports the outcome itself. */
static qk_err sq_request_record_async(qk_store *base, const store_sign_request *req,
                                      const store_audit *audit, store_done_fn done, void *arg)
{
    sq_store *s = (sq_store *)base;
    record_job *r;
    qk_err rc = check_request(req, audit);
    if (rc != QK_OK)
        return rc;
    if ((r = calloc(1, sizeof(*r))) == NULL)
        return qk_fail(QK_ERR_NOMEM, "request record");
    r->a = (request_record_arg){req, audit};
    r->j.fn = job_request_record;
    r->j.arg = &r->a;
    r->j.detached = 1;
    r->j.on_done = done;
    r->j.on_done_arg = arg;
    pthread_mutex_lock(&s->wmu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->wmu);
        free(r);
        return qk_fail(QK_ERR_IO, "store is closing");
    }
    enqueue(s, &r->j);
    pthread_mutex_unlock(&s->wmu);
    return QK_OK;
}

/* ---- reads ------------------------------------------------------------ */

/* Helper for single-row reads: on no row, the not-found convention. */
static qk_err not_found(int *found, const char *what)
{
    *found = 0;
    return qk_fail(QK_ERR_INVALID_ARG, "%s not found", what);
}

static qk_err sq_org_find(qk_store *base, const char *name, int64_t *id, int *found)
{
    sq_store *s = (sq_store *)base;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    qk_err rc;
    int r;

    *id = 0;
    *found = 0;
    if (name == NULL)
        return not_found(found, "org");
    if ((rc = reader_get(s, &c)) != QK_OK)
        return rc;
    if ((rc = stmt(c, R_ORG_FIND, &st)) != QK_OK)
        goto out;
    bind_text(st, 1, name);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        *id = sqlite3_column_int64(st, 0);
        *found = 1;
        rc = QK_OK;
    } else if (r == SQLITE_DONE) {
        rc = not_found(found, "org");
    } else {
        rc = db_fail(c->db, r, "find org");
    }
out:
    stmt_done(st);
    reader_put(s, c);
    return rc;
}

static qk_err sq_signing_key_get(qk_store *base, int64_t org, int64_t id, store_signing_key *out,
                                 int *found)
{
    sq_store *s = (sq_store *)base;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    qk_err rc;
    int r;

    memset(out, 0, sizeof(*out));
    *found = 0;
    if ((rc = reader_get(s, &c)) != QK_OK)
        return rc;
    if ((rc = stmt(c, R_SKEY_GET, &st)) != QK_OK)
        goto out;
    sqlite3_bind_int64(st, 1, org);
    sqlite3_bind_int64(st, 2, id);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        out->id = sqlite3_column_int64(st, 0);
        out->org_id = sqlite3_column_int64(st, 1);
        out->kind = col_strdup(st, 2);
        col_buf(st, 3, &out->sealed);
        *found = 1;
        rc = QK_OK;
    } else if (r == SQLITE_DONE) {
        rc = not_found(found, "signing key");
    } else {
        rc = db_fail(c->db, r, "read signing key");
    }
out:
    stmt_done(st);
    reader_put(s, c);
    return rc;
}

/* Fills a store_profile from a PROFILE_COLS row. */
static void read_profile(sqlite3_stmt *st, store_profile *p)
{
    p->id = sqlite3_column_int64(st, 0);
    p->org_id = sqlite3_column_int64(st, 1);
    p->name = col_strdup(st, 2);
    p->backend = col_strdup(st, 3);
    p->key_id = sqlite3_column_int64(st, 4);
    col_buf(st, 5, &p->chain_der);
    p->config = col_strdup(st, 6);
    p->created_at = sqlite3_column_int64(st, 7);
    p->updated_at = sqlite3_column_int64(st, 8);
    p->disabled_at = sqlite3_column_int64(st, 9);
}

static qk_err sq_profile_get(qk_store *base, int64_t org, const char *name, store_profile *out,
                             int *found)
{
    sq_store *s = (sq_store *)base;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    qk_err rc;
    int r;

    memset(out, 0, sizeof(*out));
    *found = 0;
    if (name == NULL)
        return not_found(found, "profile");
    if ((rc = reader_get(s, &c)) != QK_OK)
        return rc;
    if ((rc = stmt(c, R_PROFILE_GET, &st)) != QK_OK)
        goto out;
    sqlite3_bind_int64(st, 1, org);
    bind_text(st, 2, name);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        read_profile(st, out);
        *found = 1;
        rc = QK_OK;
    } else if (r == SQLITE_DONE) {
        rc = not_found(found, "profile");
    } else {
        rc = db_fail(c->db, r, "read profile");
    }
out:
    stmt_done(st);
    reader_put(s, c);
    return rc;
}

/* Fills a store_apikey from an APIKEY_COLS row; the stored hash is column 10. */
static void read_apikey(sqlite3_stmt *st, store_apikey *k)
{
    k->id = sqlite3_column_int64(st, 0);
    k->org_id = sqlite3_column_int64(st, 1);
    k->user_id = sqlite3_column_int64(st, 2);
    k->name = col_strdup(st, 3);
    k->prefix = col_strdup(st, 4);
    k->role = (store_role)sqlite3_column_int(st, 5);
    k->created_at = sqlite3_column_int64(st, 6);
    k->expires_at = sqlite3_column_int64(st, 7);
    k->revoked_at = sqlite3_column_int64(st, 8);
    k->last_used_at = sqlite3_column_int64(st, 9);
}

static qk_err sq_apikey_lookup(qk_store *base, const uint8_t hash[32], store_apikey *out,
                               uint8_t stored_hash[32], int *found)
{
    sq_store *s = (sq_store *)base;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    qk_err rc;
    int r;

    memset(out, 0, sizeof(*out));
    memset(stored_hash, 0, HASH_LEN);
    *found = 0;
    if ((rc = reader_get(s, &c)) != QK_OK)
        return rc;
    if ((rc = stmt(c, R_APIKEY_LOOKUP, &st)) != QK_OK)
        goto out;
    bind_blob(st, 1, hash, HASH_LEN);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW && sqlite3_column_bytes(st, 10) == HASH_LEN) {
        read_apikey(st, out);
        memcpy(stored_hash, sqlite3_column_blob(st, 10), HASH_LEN);
        *found = 1;
        rc = QK_OK;
    } else if (r == SQLITE_ROW || r == SQLITE_DONE) {
        rc = not_found(found, "API key");
    } else {
        rc = db_fail(c->db, r, "look up API key");
    }
out:
    stmt_done(st);
    reader_put(s, c);
    return rc;
}

static qk_err sq_apikey_get(qk_store *base, int64_t org, int64_t id, store_apikey *out, int *found)
{
    sq_store *s = (sq_store *)base;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    qk_err rc;
    int r;

    memset(out, 0, sizeof(*out));
    *found = 0;
    if ((rc = reader_get(s, &c)) != QK_OK)
        return rc;
    if ((rc = stmt(c, R_APIKEY_GET, &st)) != QK_OK)
        goto out;
    sqlite3_bind_int64(st, 1, org);
    sqlite3_bind_int64(st, 2, id);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        read_apikey(st, out);
        *found = 1;
        rc = QK_OK;
    } else if (r == SQLITE_DONE) {
        rc = not_found(found, "API key");
    } else {
        rc = db_fail(c->db, r, "read API key");
    }
out:
    stmt_done(st);
    reader_put(s, c);
    return rc;
}

static qk_err sq_request_get(qk_store *base, int64_t org, const char *id, store_sign_request *out,
                             int *found)
{
    sq_store *s = (sq_store *)base;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    qk_err rc;
    int r;

    memset(out, 0, sizeof(*out));
    *found = 0;
    if (id == NULL || strlen(id) >= sizeof(out->id))
        return not_found(found, "request");
    if ((rc = reader_get(s, &c)) != QK_OK)
        return rc;
    if ((rc = stmt(c, R_REQ_GET, &st)) != QK_OK)
        goto out;
    sqlite3_bind_int64(st, 1, org);
    bind_text(st, 2, id);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        snprintf(out->id, sizeof(out->id), "%s", (const char *)sqlite3_column_text(st, 0));
        out->org_id = sqlite3_column_int64(st, 1);
        out->apikey_id = sqlite3_column_int64(st, 2);
        out->user_id = sqlite3_column_int64(st, 3);
        out->status = (req_status)sqlite3_column_int(st, 4);
        out->algorithm = col_strdup(st, 5);
        out->format = col_strdup(st, 6);
        out->profile = col_strdup(st, 7);
        out->filename = col_strdup(st, 8);
        out->description = col_strdup(st, 9);
        out->url = col_strdup(st, 10);
        out->client_ip = col_strdup(st, 11);
        col_buf(st, 12, &out->digest);
        col_buf(st, 13, &out->signature);
        out->error = col_strdup(st, 14);
        out->created_at = sqlite3_column_int64(st, 15);
        out->completed_at = sqlite3_column_int64(st, 16);
        *found = 1;
        rc = QK_OK;
    } else if (r == SQLITE_DONE) {
        rc = not_found(found, "request");
    } else {
        rc = db_fail(c->db, r, "read request");
    }
out:
    stmt_done(st);
    reader_put(s, c);
    return rc;
}

/* The right edge of a tree being rebuilt: complete subtrees, largest first. */
typedef struct frontier {
    tlog_hash h[TLOG_MAX_PROOF];
    int level[TLOG_MAX_PROOF];
    int n;
} frontier;

typedef struct verify_ctx {
    conn *c;
    sqlite3_stmt *nodes; /* R_NODES_ALL, stepped alongside the rows */
    int64_t next_pos;
    store_audit_check *out;
} verify_ctx;

static qk_err verify_fail(verify_ctx *v, int64_t seq, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static qk_err verify_fail(verify_ctx *v, int64_t seq, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->out->problem, sizeof(v->out->problem), fmt, ap);
    va_end(ap);
    v->out->bad_seq = seq;
    v->out->ok = 0;
    return QK_OK;
}

/* The next stored node must be `h` at the next position: nodes are stored in
 * the order appends complete them, so a missing, extra or edited node shows. */
static int next_node_ok(verify_ctx *v, const tlog_hash h, qk_err *rc)
{
    int r = sqlite3_step(v->nodes);
    if (r != SQLITE_ROW) {
        if (r != SQLITE_DONE)
            *rc = db_fail(v->c->db, r, "read log nodes");
        return 0;
    }
    int ok = sqlite3_column_int64(v->nodes, 0) == v->next_pos &&
             sqlite3_column_bytes(v->nodes, 1) == TLOG_HASH_LEN &&
             sodium_memcmp(sqlite3_column_blob(v->nodes, 1), h, TLOG_HASH_LEN) == 0;
    v->next_pos++;
    return ok;
}

/* Adds a leaf to the rebuilt tree, checking it and every node it completes. */
static int frontier_add(verify_ctx *v, frontier *f, const tlog_hash leaf, qk_err *rc)
{
    if (f->n >= TLOG_MAX_PROOF || !next_node_ok(v, leaf, rc))
        return 0;
    memcpy(f->h[f->n], leaf, TLOG_HASH_LEN);
    f->level[f->n++] = 0;
    while (f->n >= 2 && f->level[f->n - 1] == f->level[f->n - 2]) {
        tlog_node_hash(f->h[f->n - 2], f->h[f->n - 1], f->h[f->n - 2]);
        f->level[f->n - 2]++;
        f->n--;
        if (!next_node_ok(v, f->h[f->n - 1], rc))
            return 0;
    }
    return 1;
}

/* A signed entry must still have its request row, with the same signature. */
static qk_err check_signed_entry(verify_ctx *v, const tlog_entry *e)
{
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(v->c, R_REQ_SIG, &st);
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, e->org_id);
    bind_text(st, 2, e->request_id);
    int r = sqlite3_step(st);
    if (r == SQLITE_DONE) {
        rc = verify_fail(v, e->seq, "request %s of entry %" PRId64 " is missing", e->request_id,
                         e->seq);
    } else if (r != SQLITE_ROW) {
        rc = db_fail(v->c->db, r, "read sign request");
    } else if (e->sig_sha256 != NULL) {
        uint8_t d[32];
        char hex[65];
        crypto_hash_sha256(d, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0));
        hex_encode(d, sizeof(d), hex);
        if (sqlite3_column_type(st, 1) != SQLITE_INTEGER ||
            sqlite3_column_int(st, 1) != REQ_SIGNED || strcmp(hex, e->sig_sha256) != 0)
            rc = verify_fail(v, e->seq,
                             "request %s no longer holds the signature entry %" PRId64 " recorded",
                             e->request_id, e->seq);
    }
    stmt_done(st);
    return rc;
}

static int is_signed_entry(const tlog_entry *e)
{
    return e->outcome == AUDIT_ALLOWED && e->request_id != NULL && e->action != NULL &&
           strcmp(e->action, "sign.digest") == 0;
}

/* Every row, in order: integer columns really integers, seq contiguous, its
 * leaf and the nodes it completes equal to the stored ones. */
static qk_err verify_rows(verify_ctx *v, int64_t org)
{
    sqlite3_stmt *st = NULL;
    frontier f = {.n = 0};
    qk_err rc = stmt(v->c, R_AUDIT_ROWS, &st);
    int r;
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, org);
    while (v->out->ok && (r = sqlite3_step(st)) == SQLITE_ROW) {
        tlog_entry e;
        tlog_hash leaf;
        read_entry(st, &e);
        int64_t expect = ++v->out->count;
        for (int i = 19; i < 24; i++)
            if (strcmp((const char *)sqlite3_column_text(st, i), "integer") != 0) {
                rc = verify_fail(v, e.seq,
                                 "entry %" PRId64 " holds a non-integer value in an "
                                 "integer column",
                                 e.seq);
                goto out;
            }
        if (e.seq != expect) {
            rc = verify_fail(v, expect, "entry %" PRId64 " is missing", expect);
            goto out;
        }
        if (e.version != 1 && e.version != 2) {
            rc =
                verify_fail(v, e.seq, "entry %" PRId64 " has unknown version %d", e.seq, e.version);
            goto out;
        }
        entry_leaf_hash(&e, leaf);
        if (!frontier_add(v, &f, leaf, &rc)) {
            if (rc == QK_OK)
                rc = verify_fail(v, e.seq, "entry %" PRId64 " differs from the log's tree", e.seq);
            goto out;
        }
        if (is_signed_entry(&e) && (rc = check_signed_entry(v, &e)) != QK_OK)
            goto out;
    }
    if (v->out->ok && r != SQLITE_DONE)
        rc = db_fail(v->c->db, r, "read audit rows");
out:
    stmt_done(st);
    return rc;
}

static qk_err verify_tail(verify_ctx *v, int64_t org)
{
    sqlite3_stmt *st = NULL;
    int64_t size = 0;
    qk_err rc;
    int r = sqlite3_step(v->nodes);
    if (r == SQLITE_ROW)
        return verify_fail(v, 0, "the tree holds nodes for entries that are gone");
    if (r != SQLITE_DONE)
        return db_fail(v->c->db, r, "read log nodes");
    if ((rc = log_size(v->c, org, &size)) != QK_OK)
        return rc;
    if (size != v->out->count)
        return verify_fail(v, 0, "the log head says %" PRId64 " entries, %" PRId64 " are present",
                           size, v->out->count);
    if ((rc = stmt(v->c, R_SIGNED_UNLOGGED, &st)) != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, org);
    sqlite3_bind_int(st, 2, REQ_SIGNED);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        rc = verify_fail(v, 0, "signed request %s has no log entry",
                         (const char *)sqlite3_column_text(st, 0));
    else if (r != SQLITE_DONE)
        rc = db_fail(v->c->db, r, "read sign requests");
    stmt_done(st);
    return rc;
}

static qk_err table_is_strict(conn *c, int *strict)
{
    sqlite3_stmt *st = NULL;
    int r = sqlite3_prepare_v2(
        c->db, "SELECT strict FROM pragma_table_list WHERE schema = 'main' AND name = 'audit'", -1,
        &st, NULL);
    if (r != SQLITE_OK)
        return db_fail(c->db, r, "read table list");
    r = sqlite3_step(st);
    *strict = r == SQLITE_ROW && sqlite3_column_int(st, 0) == 1;
    sqlite3_finalize(st);
    return r == SQLITE_ROW || r == SQLITE_DONE ? QK_OK : db_fail(c->db, r, "read table list");
}

static qk_err sq_audit_verify(qk_store *base, int64_t org, store_audit_check *out)
{
    sq_store *s = (sq_store *)base;
    verify_ctx v = {.out = out};
    qk_err rc;
    int strict = 0;

    memset(out, 0, sizeof(*out));
    out->ok = 1;
    if ((rc = reader_get(s, &v.c)) != QK_OK)
        return rc;
    /* One snapshot for rows, nodes, head and requests. */
    if ((rc = exec_sql(v.c, "BEGIN")) != QK_OK || (rc = table_is_strict(v.c, &strict)) != QK_OK)
        goto out;
    if (!strict) {
        rc = verify_fail(&v, 0, "the audit table was rebuilt without STRICT typing");
        goto out;
    }
    if ((rc = stmt(v.c, R_NODES_ALL, &v.nodes)) != QK_OK)
        goto out;
    sqlite3_bind_int64(v.nodes, 1, org);
    if ((rc = verify_rows(&v, org)) == QK_OK && out->ok)
        rc = verify_tail(&v, org);
out:
    stmt_done(v.nodes);
    if (v.c != NULL && !sqlite3_get_autocommit(v.c->db))
        sqlite3_exec(v.c->db, "COMMIT", NULL, NULL, NULL);
    reader_put(s, v.c);
    return rc;
}

static qk_err sq_audit_count(qk_store *base, int64_t org, const char *request_id, int64_t *count)
{
    sq_store *s = (sq_store *)base;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    qk_err rc;
    int r;

    *count = 0;
    if ((rc = reader_get(s, &c)) != QK_OK)
        return rc;
    if ((rc = stmt(c, request_id != NULL ? R_AUDIT_COUNT_REQ : R_AUDIT_COUNT_ALL, &st)) != QK_OK)
        goto out;
    sqlite3_bind_int64(st, 1, org);
    if (request_id != NULL)
        bind_text(st, 2, request_id);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        *count = sqlite3_column_int64(st, 0);
        rc = QK_OK;
    } else {
        rc = db_fail(c->db, r, "count audit rows");
    }
out:
    stmt_done(st);
    reader_put(s, c);
    return rc;
}

/* ---- open / close ----------------------------------------------------- */

static void sq_close(qk_store *base)
{
    sq_store *s = (sq_store *)base;
    if (s == NULL)
        return;
    if (s->thread_started) {
        /* The writer drains the queue before it exits: queued writes land. */
        pthread_mutex_lock(&s->wmu);
        s->stopping = 1;
        pthread_cond_signal(&s->wcv);
        pthread_mutex_unlock(&s->wmu);
        pthread_join(s->thread, NULL);
    }
    ckpt_stop(s);
    if (s->writer.db != NULL)
        sqlite3_wal_hook(s->writer.db, NULL, NULL);
    for (size_t i = 0; i < s->nfree; i++) {
        conn_close(s->rfree[i]);
        free(s->rfree[i]);
    }
    conn_close(&s->writer);
    pthread_mutex_destroy(&s->rmu);
    pthread_cond_destroy(&s->rcv);
    pthread_mutex_destroy(&s->wmu);
    pthread_cond_destroy(&s->wcv);
    pthread_mutex_destroy(&s->cmu);
    pthread_cond_destroy(&s->ccv);
    free(s->db_path);
    free(s);
}

/* ---- profile management and Azure secret leases ------------------------ */

/* One bound value of a statement, so the simple writes and list reads below
 * share one job and one row loop instead of a hand-written pair each. */
typedef struct sq_val {
    char t; /* 'i' integer, 's' text (NULL binds NULL), 'b' blob */
    int64_t i;
    const char *s;
    const uint8_t *p;
    size_t n;
} sq_val;
#define V_INT(x) ((sq_val){.t = 'i', .i = (x)})
#define V_TEXT(x) ((sq_val){.t = 's', .s = (x)})
#define V_BLOB(ptr, len) ((sq_val){.t = 'b', .p = (ptr), .n = (len)})

static void bind_vals(sqlite3_stmt *st, const sq_val *v, int n)
{
    for (int i = 0; i < n; i++) {
        if (v[i].t == 'i')
            sqlite3_bind_int64(st, i + 1, v[i].i);
        else if (v[i].t == 's')
            bind_text(st, i + 1, v[i].s);
        else
            bind_blob(st, i + 1, v[i].p, v[i].n);
    }
}

typedef struct exec_arg {
    int id;
    const sq_val *v;
    int nv;
    const char *what;
    int64_t changes;
    const store_audit *audit; /* appended when the statement changed a row */
    const char *meta;
} exec_arg;

static qk_err job_exec(conn *c, wjob *j)
{
    exec_arg *a = j->arg;
    sqlite3_stmt *st = NULL;
    qk_err rc = stmt(c, a->id, &st);
    if (rc != QK_OK)
        return rc;
    bind_vals(st, a->v, a->nv);
    rc = step_write(c, st, a->what);
    if (rc == QK_OK)
        a->changes = sqlite3_changes(c->db);
    stmt_done(st);
    if (rc == QK_OK && a->changes > 0 && a->audit != NULL)
        rc = append_audit_meta(c, a->audit, a->meta);
    return rc;
}

/* Runs one write statement durably; *changes (may be NULL) = rows changed. */
static qk_err exec_write(sq_store *s, int id, const sq_val *v, int nv, const char *what,
                         int64_t *changes)
{
    exec_arg a = {id, v, nv, what, 0, NULL, NULL};
    qk_err rc = submit(s, job_exec, &a);
    if (changes != NULL)
        *changes = a.changes;
    return rc;
}

/* Reads every row of statement `id` into a growing array of `size`-byte
 * elements, each filled by `fill`. */
typedef void (*row_fill_fn)(sqlite3_stmt *st, void *elem);
typedef void (*row_list_free_fn)(void *rows, size_t n);

static qk_err query_rows(sq_store *s, int id, const sq_val *v, int nv, size_t size,
                         row_fill_fn fill, row_list_free_fn list_free, const char *what, void **out,
                         size_t *n)
{
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    uint8_t *rows = NULL;
    size_t count = 0, cap = 0;
    qk_err rc;
    int r;

    *out = NULL;
    *n = 0;
    if ((rc = reader_get(s, &c)) != QK_OK)
        return rc;
    if ((rc = stmt(c, id, &st)) != QK_OK)
        goto out;
    bind_vals(st, v, nv);
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            cap = cap ? 2 * cap : 8;
            rows = xrealloc(rows, cap * size);
        }
        memset(rows + count * size, 0, size);
        fill(st, rows + count * size);
        count++;
    }
    if (r != SQLITE_DONE) {
        rc = db_fail(c->db, r, what);
        goto out;
    }
    *out = rows;
    *n = count;
    rows = NULL;
    count = 0;
    rc = QK_OK;
out:
    if (rows != NULL)
        list_free(rows, count);
    stmt_done(st);
    reader_put(s, c);
    return rc;
}

static void fill_profile(sqlite3_stmt *st, void *e)
{
    read_profile(st, e);
}

static qk_err sq_profile_list(qk_store *base, int64_t org, store_profile **out, size_t *n)
{
    sq_val v[] = {V_INT(org)};
    return query_rows((sq_store *)base, R_PROFILE_LIST, v, 1, sizeof(**out), fill_profile,
                      (row_list_free_fn)store_profile_list_free, "list profiles", (void **)out, n);
}

static qk_err sq_profile_disable(qk_store *base, int64_t org, const char *name, int64_t now,
                                 const store_audit *audit, int *found)
{
    sq_val v[] = {V_INT(org), V_TEXT(name), V_INT(now)};
    qk_err rc;
    *found = 0;
    if ((rc = check_text("profile name", name, 1)) != QK_OK ||
        (audit != NULL && (rc = check_audit(audit)) != QK_OK))
        return rc;
    char *meta = meta_json("{s:s,s:I}", "profile", name, "disabledAt", (json_int_t)now);
    exec_arg a = {W_PROFILE_DISABLE, v, 3, "disable profile", 0, audit, meta};
    rc = submit((sq_store *)base, job_exec, &a);
    free(meta);
    if (rc != QK_OK)
        return rc;
    if (a.changes == 0)
        return not_found(found, "profile");
    *found = 1;
    return QK_OK;
}

static qk_err sq_signing_key_update(qk_store *base, int64_t org, int64_t id, qk_slice sealed,
                                    int *found)
{
    sq_val v[] = {V_INT(org), V_INT(id), V_BLOB(sealed.data, sealed.len)};
    int64_t changes = 0;
    qk_err rc;
    *found = 0;
    if (sealed.len == 0 || sealed.len > MAX_BLOB)
        return qk_fail(QK_ERR_INVALID_ARG, "sealed key of %zu bytes", sealed.len);
    if ((rc = exec_write((sq_store *)base, W_SKEY_UPDATE, v, 3, "update signing key", &changes)) !=
        QK_OK)
        return rc;
    if (changes == 0)
        return not_found(found, "signing key");
    *found = 1;
    return QK_OK;
}

static void fill_org(sqlite3_stmt *st, void *e)
{
    store_org *o = e;
    o->id = sqlite3_column_int64(st, 0);
    o->name = col_strdup(st, 1);
}

static void fill_apikey(sqlite3_stmt *st, void *e)
{
    read_apikey(st, e);
}

static qk_err sq_apikey_list(qk_store *base, int64_t org, store_apikey **out, size_t *n)
{
    sq_val v[] = {V_INT(org)};
    return query_rows((sq_store *)base, R_APIKEY_LIST, v, 1, sizeof(**out), fill_apikey,
                      (row_list_free_fn)store_apikey_list_free, "list API keys", (void **)out, n);
}

static qk_err sq_org_list(qk_store *base, store_org **out, size_t *n)
{
    return query_rows((sq_store *)base, R_ORG_LIST, NULL, 0, sizeof(**out), fill_org,
                      (row_list_free_fn)store_org_list_free, "list orgs", (void **)out, n);
}

typedef struct lease_acquire_arg {
    int64_t org;
    const char *app, *node;
    int max;
    int64_t until, id;
    int granted;
} lease_acquire_arg;

/* Count and insert in one job, so in one transaction: with BEGIN IMMEDIATE
 * no other node's writer can insert between the two. */
static qk_err job_lease_acquire(conn *c, wjob *j)
{
    lease_acquire_arg *a = j->arg;
    sqlite3_stmt *st = NULL;
    int64_t live = 0;
    qk_err rc = stmt(c, Q_LEASE_COUNT, &st);
    if (rc != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, a->org);
    bind_text(st, 2, a->app);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        live = sqlite3_column_int64(st, 0);
    else
        rc = db_fail(c->db, r, "count leases");
    stmt_done(st);
    if (rc != QK_OK || live >= a->max)
        return rc;
    if ((rc = stmt(c, W_LEASE_INSERT, &st)) != QK_OK)
        return rc;
    sq_val v[] = {V_INT(a->org), V_TEXT(a->app), V_TEXT(a->node), V_INT(now_unix()),
                  V_INT(a->until)};
    bind_vals(st, v, 5);
    if ((rc = step_write(c, st, "insert lease")) == QK_OK) {
        a->id = sqlite3_last_insert_rowid(c->db);
        a->granted = 1;
    }
    stmt_done(st);
    return rc;
}

static qk_err sq_lease_acquire(qk_store *base, int64_t org, const char *app, const char *node,
                               int max, int64_t lease_until, int64_t *lease_id, int *granted)
{
    lease_acquire_arg a = {org, app, node, max, lease_until, 0, 0};
    qk_err rc;
    *lease_id = 0;
    *granted = 0;
    if ((rc = check_text("app", app, 1)) != QK_OK || (rc = check_text("node", node, 1)) != QK_OK)
        return rc;
    if ((rc = submit((sq_store *)base, job_lease_acquire, &a)) == QK_OK) {
        *lease_id = a.id;
        *granted = a.granted;
    }
    return rc;
}

static qk_err sq_lease_update(qk_store *base, int64_t org, int64_t lease_id, const char *key_id,
                              int64_t lease_until)
{
    sq_val v[] = {V_INT(org), V_INT(lease_id), V_TEXT(key_id), V_INT(lease_until)};
    qk_err rc = check_text("key id", key_id, 0);
    return rc != QK_OK ? rc
                       : exec_write((sq_store *)base, W_LEASE_UPDATE, v, 4, "update lease", NULL);
}

static qk_err sq_lease_release(qk_store *base, int64_t org, int64_t lease_id, int64_t now)
{
    sq_val v[] = {V_INT(org), V_INT(lease_id), V_INT(now)};
    return exec_write((sq_store *)base, W_LEASE_RELEASE, v, 3, "release lease", NULL);
}

static qk_err sq_lease_release_key(qk_store *base, int64_t org, const char *app, const char *key_id,
                                   int64_t now)
{
    sq_val v[] = {V_INT(org), V_TEXT(app), V_TEXT(key_id), V_INT(now)};
    qk_err rc;
    if ((rc = check_text("app", app, 1)) != QK_OK ||
        (rc = check_text("key id", key_id, 1)) != QK_OK)
        return rc;
    return exec_write((sq_store *)base, W_LEASE_RELEASE_KEY, v, 4, "release lease", NULL);
}

static void fill_lease(sqlite3_stmt *st, void *e)
{
    store_lease *l = e;
    l->id = sqlite3_column_int64(st, 0);
    l->node = col_strdup(st, 1);
    l->key_id = col_strdup(st, 2);
    l->created_at = sqlite3_column_int64(st, 3);
    l->lease_until = sqlite3_column_int64(st, 4);
}

static qk_err sq_lease_list(qk_store *base, int64_t org, const char *app, store_lease **out,
                            size_t *n)
{
    sq_val v[] = {V_INT(org), V_TEXT(app)};
    return query_rows((sq_store *)base, R_LEASE_LIST, v, 2, sizeof(**out), fill_lease,
                      (row_list_free_fn)store_lease_list_free, "list leases", (void **)out, n);
}

/* ---- log reads --------------------------------------------------------- */

typedef struct node_src {
    conn *c;
    int64_t org;
    qk_err rc;
} node_src;

static int node_src_get(void *arg, int level, int64_t index, tlog_hash out)
{
    node_src *n = arg;
    n->rc = node_get(n->c, n->org, tlog_pos(level, index), out);
    return n->rc == QK_OK ? 0 : -1;
}

static qk_err prove(conn *c, int64_t org, store_proof_kind kind, int64_t a, int64_t b,
                    store_proof *out)
{
    node_src src = {c, org, QK_OK};
    int64_t cur = 0;
    qk_err rc = log_size(c, org, &cur);
    if (rc != QK_OK)
        return rc;
    out->size = b == 0 ? cur : b;
    if (out->size < 1 || out->size > cur)
        return qk_fail(QK_ERR_INVALID_ARG,
                       "tree size %" PRId64 " is not in the log (size %" PRId64 ")", out->size,
                       cur);
    if ((kind == PROOF_INCLUSION && (a < 0 || a >= out->size)) ||
        (kind == PROOF_CONSISTENCY && (a < 1 || a > out->size)))
        return qk_fail(QK_ERR_INVALID_ARG, "%s %" PRId64 " is out of range for tree size %" PRId64,
                       kind == PROOF_INCLUSION ? "index" : "size", a, out->size);
    int r = tlog_root(node_src_get, &src, out->size, out->root);
    if (r == 0 && kind == PROOF_INCLUSION)
        r = tlog_prove_inclusion(node_src_get, &src, a, out->size, out->hashes, &out->n);
    else if (r == 0 && kind == PROOF_CONSISTENCY)
        r = tlog_prove_consistency(node_src_get, &src, a, out->size, out->hashes, &out->n);
    if (r != 0)
        return src.rc != QK_OK ? src.rc : qk_fail(QK_ERR_IO, "log proof failed");
    return QK_OK;
}

static qk_err sq_log_prove(qk_store *base, int64_t org, store_proof_kind kind, int64_t a, int64_t b,
                           store_proof *out)
{
    sq_store *s = (sq_store *)base;
    conn *c = NULL;
    qk_err rc;

    memset(out, 0, sizeof(*out));
    if (b < 0)
        return qk_fail(QK_ERR_INVALID_ARG, "negative tree size");
    if ((rc = reader_get(s, &c)) != QK_OK)
        return rc;
    if ((rc = exec_sql(c, "BEGIN")) == QK_OK)
        rc = prove(c, org, kind, a, b, out);
    if (!sqlite3_get_autocommit(c->db))
        sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL);
    reader_put(s, c);
    return rc;
}

static void fill_log_entry(sqlite3_stmt *st, void *p)
{
    store_log_entry *le = p;
    tlog_entry e;
    read_entry(st, &e);
    le->index = e.seq - 1;
    tlog_leaf_encode(&e, &le->leaf.data, &le->leaf.len);
}

static void free_log_entries(void *rows, size_t n)
{
    store_log_entries_free(rows, n);
}

static qk_err sq_log_entries(qk_store *base, int64_t org, int64_t start, int64_t end,
                             store_log_entry **out, size_t *n)
{
    if (start < 0 || end <= start)
        return qk_fail(QK_ERR_INVALID_ARG, "bad entry range [%" PRId64 ", %" PRId64 ")", start,
                       end);
    sq_val v[] = {V_INT(org), V_INT(start), V_INT(end)};
    return query_rows((sq_store *)base, R_LOG_ENTRIES, v, 3, sizeof(**out), fill_log_entry,
                      free_log_entries, "read log entries", (void **)out, n);
}

static qk_err sq_log_lookup(qk_store *base, int64_t org, const char *sigval_hex,
                            store_log_entry **out, size_t *n)
{
    sq_val v[] = {V_INT(org), V_TEXT(sigval_hex)};
    return query_rows((sq_store *)base, R_LOG_LOOKUP, v, 2, sizeof(**out), fill_log_entry,
                      free_log_entries, "look up log entries", (void **)out, n);
}

static void fill_i64(sqlite3_stmt *st, void *p)
{
    *(int64_t *)p = sqlite3_column_int64(st, 0);
}

static void free_plain(void *rows, size_t n)
{
    (void)n;
    free(rows);
}

static qk_err sq_log_find_request(qk_store *base, int64_t org, const char *id, int64_t *index,
                                  int *found)
{
    int64_t *rows = NULL;
    size_t n = 0;
    sq_val v[] = {V_INT(org), V_TEXT(id)};
    qk_err rc = query_rows((sq_store *)base, R_LOG_REQ, v, 2, sizeof(*rows), fill_i64, free_plain,
                           "find log entry", (void **)&rows, &n);
    *found = rc == QK_OK && n == 1;
    *index = *found ? rows[0] - 1 : 0;
    free(rows);
    return rc;
}

static void fill_checkpoint(sqlite3_stmt *st, void *p)
{
    store_checkpoint *cp = p;
    cp->size = sqlite3_column_int64(st, 0);
    if (sqlite3_column_bytes(st, 1) == TLOG_HASH_LEN)
        memcpy(cp->root, sqlite3_column_blob(st, 1), TLOG_HASH_LEN);
    cp->note = col_strdup(st, 2);
    cp->created_at = sqlite3_column_int64(st, 3);
}

static void free_checkpoints(void *rows, size_t n)
{
    store_checkpoint *c = rows;
    for (size_t i = 0; i < n; i++)
        store_checkpoint_clear(&c[i]);
    free(c);
}

static qk_err sq_checkpoint_latest(qk_store *base, int64_t org, store_checkpoint *out, int *found)
{
    store_checkpoint *rows = NULL;
    size_t n = 0;
    sq_val v[] = {V_INT(org)};
    qk_err rc = query_rows((sq_store *)base, R_CKPT_LATEST, v, 1, sizeof(*rows), fill_checkpoint,
                           free_checkpoints, "read checkpoint", (void **)&rows, &n);
    memset(out, 0, sizeof(*out));
    *found = rc == QK_OK && n == 1;
    if (*found) {
        *out = rows[0];
        free(rows);
    }
    return rc;
}

static qk_err sq_checkpoint_add(qk_store *base, int64_t org, int64_t size, const uint8_t root[32],
                                const char *note)
{
    sq_val v[] = {V_INT(org), V_INT(size), V_BLOB(root, 32), V_TEXT(note), V_INT(now_unix())};
    if (note == NULL || strlen(note) > TLOG_MAX_NOTE)
        return qk_fail(QK_ERR_INVALID_ARG, "checkpoint note missing or too large");
    return exec_write((sq_store *)base, W_CKPT_INSERT, v, 5, "store checkpoint", NULL);
}

typedef struct secret_row {
    qk_buf sealed, pub;
} secret_row;

static void fill_secret(sqlite3_stmt *st, void *p)
{
    secret_row *r = p;
    col_buf(st, 0, &r->sealed);
    col_buf(st, 1, &r->pub);
}

static void free_secrets(void *rows, size_t n)
{
    secret_row *r = rows;
    for (size_t i = 0; i < n; i++) {
        qk_buf_free(&r[i].sealed);
        qk_buf_free(&r[i].pub);
    }
    free(r);
}

static qk_err sq_instance_secret_get(qk_store *base, const char *name, qk_buf *sealed, qk_buf *pub,
                                     int *found)
{
    secret_row *rows = NULL;
    size_t n = 0;
    sq_val v[] = {V_TEXT(name)};
    qk_err rc = query_rows((sq_store *)base, R_SECRET_GET, v, 1, sizeof(*rows), fill_secret,
                           free_secrets, "read instance secret", (void **)&rows, &n);
    *found = rc == QK_OK && n == 1;
    if (*found) {
        *sealed = rows[0].sealed;
        *pub = rows[0].pub;
        free(rows);
    }
    return rc;
}

static qk_err sq_instance_secret_put(qk_store *base, const char *name, qk_slice sealed,
                                     qk_slice pub)
{
    sq_val v[] = {V_TEXT(name), V_BLOB(sealed.data, sealed.len), V_BLOB(pub.data, pub.len),
                  V_INT(now_unix())};
    return exec_write((sq_store *)base, W_SECRET_INSERT, v, 4, "store instance secret", NULL);
}

/* ---- operator tokens and usage ---------------------------------------- */

static qk_err sq_operator_token_create(qk_store *base, const char *name, const uint8_t hash[32],
                                       int64_t *id)
{
    sq_store *s = (sq_store *)base;
    sq_val v[] = {V_TEXT(name), V_BLOB(hash, 32), V_INT(now_unix())};
    qk_err rc = check_text("token name", name, 1);
    *id = 0;
    if (rc == QK_OK)
        rc = exec_write(s, W_OPTOKEN_INSERT, v, 3, "insert operator token", NULL);
    if (rc == QK_OK) {
        int found = 0;
        rc = STORE_CALL(base, operator_token_lookup, hash, id, &found);
    }
    return rc;
}

typedef struct optoken_row {
    int64_t id;
    uint8_t hash[32];
    int ok;
} optoken_row;

static void fill_optoken(sqlite3_stmt *st, void *p)
{
    optoken_row *r = p;
    r->id = sqlite3_column_int64(st, 0);
    r->ok = sqlite3_column_bytes(st, 1) == 32;
    if (r->ok)
        memcpy(r->hash, sqlite3_column_blob(st, 1), 32);
}

static qk_err sq_operator_token_lookup(qk_store *base, const uint8_t hash[32], int64_t *id,
                                       int *found)
{
    optoken_row *rows = NULL;
    size_t n = 0;
    sq_val v[] = {V_BLOB(hash, 32)};
    qk_err rc = query_rows((sq_store *)base, R_OPTOKEN_LOOKUP, v, 1, sizeof(*rows), fill_optoken,
                           free_plain, "look up operator token", (void **)&rows, &n);
    /* Matched on the hash by the database; compared again in constant time. */
    *found = rc == QK_OK && n == 1 && rows[0].ok && sodium_memcmp(rows[0].hash, hash, 32) == 0;
    *id = *found ? rows[0].id : 0;
    free(rows);
    return rc;
}

static qk_err sq_operator_token_revoke(qk_store *base, int64_t id, int *found)
{
    sq_val v[] = {V_INT(id), V_INT(now_unix())};
    int64_t changes = 0;
    qk_err rc =
        exec_write((sq_store *)base, W_OPTOKEN_REVOKE, v, 2, "revoke operator token", &changes);
    *found = rc == QK_OK && changes > 0;
    if (rc == QK_OK && !*found)
        return not_found(found, "active operator token");
    return rc;
}

static void fill_optoken_info(sqlite3_stmt *st, void *p)
{
    store_operator_token *t = p;
    t->id = sqlite3_column_int64(st, 0);
    t->name = col_strdup(st, 1);
    t->created_at = sqlite3_column_int64(st, 2);
    t->revoked_at = sqlite3_column_int64(st, 3);
}

static qk_err sq_operator_token_list(qk_store *base, store_operator_token **out, size_t *n)
{
    return query_rows((sq_store *)base, R_OPTOKEN_LIST, NULL, 0, sizeof(**out), fill_optoken_info,
                      (row_list_free_fn)store_operator_token_list_free, "list operator tokens",
                      (void **)out, n);
}

typedef struct pair_row {
    int64_t key;
    char *name;
    int64_t count;
} pair_row;

static void fill_outcome(sqlite3_stmt *st, void *p)
{
    pair_row *r = p;
    r->key = sqlite3_column_int64(st, 0);
    r->count = sqlite3_column_int64(st, 1);
}

static void fill_profile_count(sqlite3_stmt *st, void *p)
{
    pair_row *r = p;
    r->name = col_strdup(st, 0);
    r->count = sqlite3_column_int64(st, 1);
}

static void free_pairs(void *rows, size_t n)
{
    pair_row *r = rows;
    for (size_t i = 0; i < n; i++)
        free(r[i].name);
    free(r);
}

static qk_err sq_usage(qk_store *base, int64_t org, int64_t since, int64_t until, store_usage *out)
{
    pair_row *rows = NULL;
    size_t n = 0;
    sq_val v[] = {V_INT(org), V_INT(since), V_INT(until)};
    memset(out, 0, sizeof(*out));
    qk_err rc = query_rows((sq_store *)base, R_USAGE_OUTCOMES, v, 3, sizeof(*rows), fill_outcome,
                           free_pairs, "read usage", (void **)&rows, &n);
    for (size_t i = 0; rc == QK_OK && i < n; i++) {
        if (rows[i].key == AUDIT_ALLOWED)
            out->allowed = rows[i].count;
        else if (rows[i].key == AUDIT_DENIED)
            out->denied = rows[i].count;
        else
            out->failed += rows[i].count;
    }
    free_pairs(rows, n);
    if (rc != QK_OK)
        return rc;
    rc = query_rows((sq_store *)base, R_USAGE_PROFILES, v, 3, sizeof(*rows), fill_profile_count,
                    free_pairs, "read usage", (void **)&rows, &n);
    if (rc != QK_OK)
        return rc;
    out->by_profile = xcalloc(n ? n : 1, sizeof(*out->by_profile));
    for (size_t i = 0; i < n; i++) {
        out->by_profile[i].profile = rows[i].name;
        out->by_profile[i].signatures = rows[i].count;
        rows[i].name = NULL;
    }
    out->nprofiles = n;
    free_pairs(rows, n);
    return QK_OK;
}

/* ---- master-key rotation: every sealed blob ------------------------------ */

static void fill_signing_key(sqlite3_stmt *st, void *e)
{
    store_signing_key *k = e;
    k->id = sqlite3_column_int64(st, 0);
    k->org_id = sqlite3_column_int64(st, 1);
    k->kind = col_strdup(st, 2);
    col_buf(st, 3, &k->sealed);
}

static qk_err sq_signing_key_list_all(qk_store *base, store_signing_key **out, size_t *n)
{
    return query_rows((sq_store *)base, R_SKEY_ALL, NULL, 0, sizeof(**out), fill_signing_key,
                      (row_list_free_fn)store_signing_key_list_free, "list signing keys",
                      (void **)out, n);
}

/* One compare-and-swap re-seal: statement `id` binds `key` values, then old, then new. */
static qk_err reseal(sq_store *s, int id, sq_val *v, int nkey, qk_slice old, qk_slice sealed,
                     const char *what, int *found)
{
    int64_t changes = 0;
    qk_err rc;
    *found = 0;
    if (sealed.len == 0 || sealed.len > MAX_BLOB || old.len == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "%s: sealed blob of %zu bytes", what, sealed.len);
    v[nkey] = V_BLOB(old.data, old.len);
    v[nkey + 1] = V_BLOB(sealed.data, sealed.len);
    if ((rc = exec_write(s, id, v, nkey + 2, what, &changes)) != QK_OK)
        return rc;
    if (changes == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "%s: the row is gone or its blob changed since read",
                       what);
    *found = 1;
    return QK_OK;
}

static qk_err sq_signing_key_reseal(qk_store *base, int64_t org, int64_t id, qk_slice old,
                                    qk_slice sealed, int *found)
{
    sq_val v[4] = {V_INT(org), V_INT(id)};
    return reseal((sq_store *)base, W_SKEY_RESEAL, v, 2, old, sealed, "re-seal signing key", found);
}

static void fill_name(sqlite3_stmt *st, void *e)
{
    *(char **)e = col_strdup(st, 0);
}

static qk_err sq_instance_secret_names(qk_store *base, char ***names, size_t *n)
{
    return query_rows((sq_store *)base, R_SECRET_NAMES, NULL, 0, sizeof(**names), fill_name,
                      (row_list_free_fn)store_names_free, "list instance secrets", (void **)names,
                      n);
}

static qk_err sq_instance_secret_reseal(qk_store *base, const char *name, qk_slice old,
                                        qk_slice sealed, int *found)
{
    sq_val v[3] = {V_TEXT(name)};
    qk_err rc = check_text("instance secret name", name, 1);
    *found = 0;
    if (rc != QK_OK)
        return rc;
    return reseal((sq_store *)base, W_SECRET_RESEAL, v, 1, old, sealed, "re-seal instance secret",
                  found);
}

static const store_ops sqlite_ops = {
    .close = sq_close,
    .org_create = sq_org_create,
    .user_create = sq_user_create,
    .signing_key_create = sq_signing_key_create,
    .signing_key_get = sq_signing_key_get,
    .profile_create = sq_profile_create,
    .profile_get = sq_profile_get,
    .apikey_create = sq_apikey_create,
    .apikey_lookup = sq_apikey_lookup,
    .apikey_list = sq_apikey_list,
    .apikey_revoke = sq_apikey_revoke,
    .apikey_touch = sq_apikey_touch,
    .request_record = sq_request_record,
    .request_get = sq_request_get,
    .audit_append = sq_audit_append,
    .audit_verify = sq_audit_verify,
    .audit_count = sq_audit_count,
    .org_find = sq_org_find,
    .apikey_get = sq_apikey_get,
    .request_record_async = sq_request_record_async,
    .profile_list = sq_profile_list,
    .profile_disable = sq_profile_disable,
    .signing_key_update = sq_signing_key_update,
    .org_list = sq_org_list,
    .lease_acquire = sq_lease_acquire,
    .lease_update = sq_lease_update,
    .lease_release = sq_lease_release,
    .lease_release_key = sq_lease_release_key,
    .lease_list = sq_lease_list,
    .operator_token_create = sq_operator_token_create,
    .operator_token_lookup = sq_operator_token_lookup,
    .operator_token_revoke = sq_operator_token_revoke,
    .operator_token_list = sq_operator_token_list,
    .usage = sq_usage,
    .log_prove = sq_log_prove,
    .log_entries = sq_log_entries,
    .log_lookup = sq_log_lookup,
    .log_find_request = sq_log_find_request,
    .checkpoint_latest = sq_checkpoint_latest,
    .checkpoint_add = sq_checkpoint_add,
    .instance_secret_get = sq_instance_secret_get,
    .instance_secret_put = sq_instance_secret_put,
    .signing_key_list_all = sq_signing_key_list_all,
    .signing_key_reseal = sq_signing_key_reseal,
    .instance_secret_names = sq_instance_secret_names,
    .instance_secret_reseal = sq_instance_secret_reseal,
};

qk_err store_sqlite_open(const char *data_dir, qk_store **out)
{
    qk_err rc = QK_ERR_IO;
    sq_store *s = NULL;
    int fd;

    *out = NULL;
    if (sqlite3_threadsafe() == 0)
        return qk_fail(QK_ERR_IO, "libsqlite3 was built without thread support");
    if (sodium_init() < 0)
        return qk_fail(QK_ERR_CRYPTO, "libsodium initialisation failed");
    s = xcalloc(1, sizeof(*s));
    s->base.ops = &sqlite_ops;
    s->db_path = path_join(data_dir, STORE_SQLITE_FILE);
    pthread_mutex_init(&s->rmu, NULL);
    pthread_cond_init(&s->rcv, NULL);
    pthread_mutex_init(&s->wmu, NULL);
    pthread_mutex_init(&s->cmu, NULL);
    pthread_cond_init(&s->ccv, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* commit_delay's deadlines */
    pthread_cond_init(&s->wcv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&s->fail_commits, 0);
    atomic_init(&s->commits, 0);
    atomic_init(&s->writes, 0);
    atomic_init(&s->delayed, 0);
    atomic_init(&s->checkpoints, 0);
    atomic_init(&s->ckpt_copied, 0);

    /* Create the file ourselves so it is 0600 whatever the umask; SQLite
     * gives the -wal and -shm files the database file's permissions. */
    fd = open(s->db_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        rc = qk_fail(QK_ERR_IO, "%s: %s", s->db_path, strerror(errno));
        goto out;
    }
    close(fd);
    if ((rc = conn_open(s->db_path, 1, &s->writer)) != QK_OK)
        goto out;
    if ((rc = migrate(&s->writer)) != QK_OK)
        goto out;
    if ((rc = ckpt_start(s)) != QK_OK)
        goto out;
    if (pthread_create(&s->thread, NULL, writer_main, s) != 0) {
        rc = qk_fail(QK_ERR_IO, "cannot start the store writer thread");
        goto out;
    }
    s->thread_started = 1;
    *out = &s->base;
    s = NULL;
    rc = QK_OK;
out:
    sq_close(s ? &s->base : NULL);
    return rc;
}

void store_sqlite_stats(qk_store *base, store_sqlite_counters *out)
{
    sq_store *s = (sq_store *)base;
    out->commits = atomic_load(&s->commits);
    out->writes = atomic_load(&s->writes);
    out->delayed = atomic_load(&s->delayed);
    out->checkpoints = atomic_load(&s->checkpoints);
    out->ckpt_frames = atomic_load(&s->ckpt_copied);
}

static qk_err job_nothing(conn *c, wjob *j)
{
    (void)c;
    (void)j;
    return QK_OK;
}

void store_sqlite_flush(qk_store *base)
{
    /* The queue is FIFO and the writer runs a batch's completions before it
     * wakes the batch's waiters: when this job is done, so is all before it. */
    (void)submit((sq_store *)base, job_nothing, NULL);
}

void store_sqlite_set_commit_delay(qk_store *base, unsigned usec, const atomic_int *coming)
{
    sq_store *s = (sq_store *)base;
    if (usec > STORE_MAX_COMMIT_DELAY_US)
        usec = STORE_MAX_COMMIT_DELAY_US;
    pthread_mutex_lock(&s->wmu);
    s->delay_ns = (int64_t)usec * 1000;
    s->coming = coming;
    pthread_mutex_unlock(&s->wmu);
}

void store_sqlite_fail_commits(qk_store *base, int n)
{
    sq_store *s = (sq_store *)base;
    atomic_store(&s->fail_commits, n);
}
