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
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <sqlite3.h>

#include "internal.h"
#include "log.h"
#include "store.h"
#include "util.h"

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
    STMT__COUNT
};

#define PROFILE_COLS                                                                               \
    "id, org_id, name, backend, key_id, chain_der, config, created_at, updated_at, disabled_at"

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
    [W_AUDIT_INSERT] =
        "INSERT INTO audit(org_id, seq, ts, actor, client_ip, action, request_id, digest_hex, "
        "algorithm, profile, filename, outcome, detail, prev_hash, hash) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    [W_HEAD_SET] = "INSERT INTO audit_head(org_id, seq, hash) VALUES(?1, ?2, ?3) "
                   "ON CONFLICT(org_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    [Q_HEAD_GET] = "SELECT seq, hash FROM audit_head WHERE org_id = ?1",
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
    [R_AUDIT_ROWS] = "SELECT id, seq, ts, actor, client_ip, action, request_id, digest_hex, "
                     "algorithm, profile, filename, outcome, detail, prev_hash, hash "
                     "FROM audit WHERE org_id = ?1 ORDER BY seq",
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
    int detached; /* nobody waits: the writer frees it (after calling `done`) */
    store_done_fn on_done; /* detached jobs: told the outcome once the batch ends */
    void *on_done_arg;
    int done;     /* set under the queue mutex once the batch committed or failed */
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
    int r = sqlite3_open_v2(s->db_path, &s->ckpt_db,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW,
                            NULL);
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
    return rc;
}

static qk_err sq_profile_create(qk_store *base, int64_t org, const char *name, const char *backend,
                                int64_t key_id, qk_slice chain_der, const char *config,
                                int64_t *id)
{
    profile_create_arg a = {org, name, backend, key_id, chain_der, config, 0};
    qk_err rc;
    *id = 0;
    if ((rc = check_text("profile name", name, 1)) != QK_OK ||
        (rc = check_text("backend", backend, 1)) != QK_OK)
        return rc;
    if (config != NULL && strlen(config) > MAX_BLOB)
        return qk_fail(QK_ERR_TOO_LARGE, "profile config of %zu bytes", strlen(config));
    if (chain_der.len > MAX_BLOB)
        return qk_fail(QK_ERR_TOO_LARGE, "certificate chain of %zu bytes", chain_der.len);
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
    return rc;
}

static qk_err sq_apikey_create(qk_store *base, int64_t org, int64_t user, const char *name,
                               const char *prefix, const uint8_t hash[32], store_role role,
                               int64_t expires_at, int64_t *id)
{
    apikey_create_arg a = {org, user, name, prefix, hash, role, expires_at, 0};
    qk_err rc;
    *id = 0;
    if ((rc = check_text("key name", name, 1)) != QK_OK ||
        (rc = check_text("key prefix", prefix, 1)) != QK_OK)
        return rc;
    if ((unsigned)role > ROLE_ADMIN || expires_at < 0)
        return qk_fail(QK_ERR_INVALID_ARG, "bad role or expiry");
    if ((rc = submit((sq_store *)base, job_apikey_create, &a)) == QK_OK)
        *id = a.id;
    return rc;
}

typedef struct apikey_revoke_arg {
    int64_t org, id;
    int found;
} apikey_revoke_arg;

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
    return rc;
}

static qk_err sq_apikey_revoke(qk_store *base, int64_t org, int64_t id, int *found)
{
    apikey_revoke_arg a = {org, id, 0};
    qk_err rc = submit((sq_store *)base, job_apikey_revoke, &a);
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

/* ---- audit chain ------------------------------------------------------ */

static void h_u32(crypto_hash_sha256_state *h, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    crypto_hash_sha256_update(h, b, sizeof(b));
}

static void h_i64(crypto_hash_sha256_state *h, int64_t v)
{
    uint64_t u = (uint64_t)v;
    h_u32(h, (uint32_t)(u >> 32));
    h_u32(h, (uint32_t)u);
}

/* Length-prefixed so field boundaries are unambiguous; NULL differs from "". */
static void h_str(crypto_hash_sha256_state *h, const char *s)
{
    if (s == NULL) {
        h_u32(h, UINT32_MAX);
        return;
    }
    size_t n = strlen(s);
    h_u32(h, (uint32_t)n);
    crypto_hash_sha256_update(h, (const uint8_t *)s, n);
}

/* hash = SHA-256(prev_hash || canonical(row)); canonical(row) is a version
 * tag then every field in a fixed order: integers as 8-byte big-endian,
 * strings as u32 length (0xFFFFFFFF for NULL) and bytes. */
static void audit_link(const uint8_t prev[HASH_LEN], int64_t seq, const store_audit *a,
                       uint8_t out[HASH_LEN])
{
    static const char tag[] = "qwick-audit-v1";
    crypto_hash_sha256_state h;
    crypto_hash_sha256_init(&h);
    crypto_hash_sha256_update(&h, prev, HASH_LEN);
    crypto_hash_sha256_update(&h, (const uint8_t *)tag, sizeof(tag) - 1);
    h_i64(&h, a->org_id);
    h_i64(&h, seq);
    h_i64(&h, a->ts);
    h_str(&h, a->actor);
    h_str(&h, a->client_ip);
    h_str(&h, a->action);
    h_str(&h, a->request_id);
    h_str(&h, a->digest_hex);
    h_str(&h, a->algorithm);
    h_str(&h, a->profile);
    h_str(&h, a->filename);
    h_i64(&h, (int64_t)a->outcome);
    h_str(&h, a->detail);
    crypto_hash_sha256_final(&h, out);
}

static qk_err check_audit(const store_audit *a)
{
    qk_err rc;
    if (a->org_id <= 0)
        return qk_fail(QK_ERR_INVALID_ARG, "audit row without an org");
    if ((unsigned)a->outcome > AUDIT_FAILED)
        return qk_fail(QK_ERR_INVALID_ARG, "bad audit outcome");
    if ((rc = check_text("actor", a->actor, 0)) != QK_OK ||
        (rc = check_text("client_ip", a->client_ip, 0)) != QK_OK ||
        (rc = check_text("action", a->action, 1)) != QK_OK ||
        (rc = check_text("request_id", a->request_id, 0)) != QK_OK ||
        (rc = check_text("digest", a->digest_hex, 0)) != QK_OK ||
        (rc = check_text("algorithm", a->algorithm, 0)) != QK_OK ||
        (rc = check_text("profile", a->profile, 0)) != QK_OK ||
        (rc = check_text("filename", a->filename, 0)) != QK_OK ||
        (rc = check_text("detail", a->detail, 0)) != QK_OK)
        return rc;
    return QK_OK;
}

/* Appends one link inside the writer's open transaction. The head is read in
 * the same transaction (BEGIN IMMEDIATE holds the write lock), so links from
 * several processes still form one chain. */
static qk_err append_audit(conn *c, const store_audit *in)
{
    qk_err rc;
    sqlite3_stmt *st = NULL;
    store_audit a = *in;
    uint8_t prev[HASH_LEN] = {0}, hash[HASH_LEN];
    int64_t seq = 1;
    int r;

    if (a.ts == 0)
        a.ts = now_unix_ms();
    if ((rc = stmt(c, Q_HEAD_GET, &st)) != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, a.org_id);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        if (sqlite3_column_bytes(st, 1) != HASH_LEN) {
            stmt_done(st);
            return qk_fail(QK_ERR_IO, "audit head of org %" PRId64 " is corrupt", a.org_id);
        }
        seq = sqlite3_column_int64(st, 0) + 1;
        memcpy(prev, sqlite3_column_blob(st, 1), HASH_LEN);
    } else if (r != SQLITE_DONE) {
        rc = db_fail(c->db, r, "read audit head");
        stmt_done(st);
        return rc;
    }
    stmt_done(st);

    audit_link(prev, seq, &a, hash);

    if ((rc = stmt(c, W_AUDIT_INSERT, &st)) != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, a.org_id);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_int64(st, 3, a.ts);
    bind_text(st, 4, a.actor);
    bind_text(st, 5, a.client_ip);
    bind_text(st, 6, a.action);
    bind_text(st, 7, a.request_id);
    bind_text(st, 8, a.digest_hex);
    bind_text(st, 9, a.algorithm);
    bind_text(st, 10, a.profile);
    bind_text(st, 11, a.filename);
    sqlite3_bind_int(st, 12, (int)a.outcome);
    bind_text(st, 13, a.detail);
    bind_blob(st, 14, prev, HASH_LEN);
    bind_blob(st, 15, hash, HASH_LEN);
    rc = step_write(c, st, "insert audit row");
    stmt_done(st);
    if (rc != QK_OK)
        return rc;

    if ((rc = stmt(c, W_HEAD_SET, &st)) != QK_OK)
        return rc;
    sqlite3_bind_int64(st, 1, a.org_id);
    sqlite3_bind_int64(st, 2, seq);
    bind_blob(st, 3, hash, HASH_LEN);
    rc = step_write(c, st, "update audit head");
    stmt_done(st);
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

static const char *col_text(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

static qk_err sq_audit_verify(qk_store *base, int64_t org, int *ok, int64_t *bad_id, int64_t *count)
{
    sq_store *s = (sq_store *)base;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    uint8_t prev[HASH_LEN] = {0}, hash[HASH_LEN];
    int64_t expect_seq = 1;
    qk_err rc;
    int r;

    *ok = 0;
    *bad_id = 0;
    *count = 0;
    if ((rc = reader_get(s, &c)) != QK_OK)
        return rc;
    /* One snapshot for the rows and the head. */
    if ((rc = exec_sql(c, "BEGIN")) != QK_OK)
        goto out;
    if ((rc = stmt(c, R_AUDIT_ROWS, &st)) != QK_OK)
        goto out;
    sqlite3_bind_int64(st, 1, org);
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        store_audit a = {
            .org_id = org,
            .ts = sqlite3_column_int64(st, 2),
            .actor = col_text(st, 3),
            .client_ip = col_text(st, 4),
            .action = col_text(st, 5),
            .request_id = col_text(st, 6),
            .digest_hex = col_text(st, 7),
            .algorithm = col_text(st, 8),
            .profile = col_text(st, 9),
            .filename = col_text(st, 10),
            .outcome = (audit_outcome)sqlite3_column_int(st, 11),
            .detail = col_text(st, 12),
        };
        int64_t id = sqlite3_column_int64(st, 0);
        int64_t seq = sqlite3_column_int64(st, 1);
        (*count)++;
        audit_link(prev, seq, &a, hash);
        /* A deleted row shows as a gap in seq and a prev_hash that no longer
         * matches; an edited row as a hash that no longer recomputes. */
        if (seq != expect_seq || sqlite3_column_bytes(st, 13) != HASH_LEN ||
            sqlite3_column_bytes(st, 14) != HASH_LEN ||
            sodium_memcmp(sqlite3_column_blob(st, 13), prev, HASH_LEN) != 0 ||
            sodium_memcmp(sqlite3_column_blob(st, 14), hash, HASH_LEN) != 0) {
            *bad_id = id;
            rc = QK_OK;
            goto out;
        }
        memcpy(prev, hash, HASH_LEN);
        expect_seq++;
    }
    if (r != SQLITE_DONE) {
        rc = db_fail(c->db, r, "read audit rows");
        goto out;
    }
    stmt_done(st);
    st = NULL;

    /* The head must name the last row: otherwise the tail was cut off. */
    if ((rc = stmt(c, Q_HEAD_GET, &st)) != QK_OK)
        goto out;
    sqlite3_bind_int64(st, 1, org);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        if (sqlite3_column_int64(st, 0) != expect_seq - 1 ||
            sqlite3_column_bytes(st, 1) != HASH_LEN ||
            sodium_memcmp(sqlite3_column_blob(st, 1), prev, HASH_LEN) != 0) {
            *bad_id = 0; /* rows missing after the last one present */
            rc = QK_OK;
            goto out;
        }
    } else if (r == SQLITE_DONE) {
        if (expect_seq != 1) { /* rows but no head */
            rc = QK_OK;
            goto out;
        }
    } else {
        rc = db_fail(c->db, r, "read audit head");
        goto out;
    }
    *ok = 1;
    rc = QK_OK;
out:
    stmt_done(st);
    if (c != NULL && !sqlite3_get_autocommit(c->db))
        sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL);
    reader_put(s, c);
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
    return rc;
}

/* Runs one write statement durably; *changes (may be NULL) = rows changed. */
static qk_err exec_write(sq_store *s, int id, const sq_val *v, int nv, const char *what,
                         int64_t *changes)
{
    exec_arg a = {id, v, nv, what, 0};
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
                         row_fill_fn fill, row_list_free_fn list_free, const char *what,
                         void **out, size_t *n)
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
                                 int *found)
{
    sq_val v[] = {V_INT(org), V_TEXT(name), V_INT(now)};
    int64_t changes = 0;
    qk_err rc;
    *found = 0;
    if ((rc = check_text("profile name", name, 1)) != QK_OK)
        return rc;
    if ((rc = exec_write((sq_store *)base, W_PROFILE_DISABLE, v, 3, "disable profile",
                         &changes)) != QK_OK)
        return rc;
    if (changes == 0)
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
    if ((rc = exec_write((sq_store *)base, W_SKEY_UPDATE, v, 3, "update signing key",
                         &changes)) != QK_OK)
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
    return rc != QK_OK ? rc : exec_write((sq_store *)base, W_LEASE_UPDATE, v, 4, "update lease", NULL);
}

static qk_err sq_lease_release(qk_store *base, int64_t org, int64_t lease_id, int64_t now)
{
    sq_val v[] = {V_INT(org), V_INT(lease_id), V_INT(now)};
    return exec_write((sq_store *)base, W_LEASE_RELEASE, v, 3, "release lease", NULL);
}

static qk_err sq_lease_release_key(qk_store *base, int64_t org, const char *app,
                                   const char *key_id, int64_t now)
{
    sq_val v[] = {V_INT(org), V_TEXT(app), V_TEXT(key_id), V_INT(now)};
    qk_err rc;
    if ((rc = check_text("app", app, 1)) != QK_OK || (rc = check_text("key id", key_id, 1)) != QK_OK)
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
