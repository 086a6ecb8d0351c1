/* The SQLite schema: its migrations, in order. Applied at open, all pending
 * steps and the version bump in one transaction (a crash leaves either the
 * old schema or the new one). Never edit a shipped step; append a new one
 * (and the same change to schema_pg.c, whose first version is this one's 4). */
#include <stdio.h>

#include "store/store_sql.h"

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
    /* 5: the log head keeps its tree's right edge (the roots of the complete
     * subtrees, largest first), so an append reads no node. NULL in heads
     * written before: rebuilt from the nodes by the next append. */
    "ALTER TABLE log_heads ADD COLUMN frontier BLOB;",
    /* 6: the asynchronous queue (docs/api.md). A queued request carries its
     * attempts (each claim counts one, and fences the completion), when it
     * may run next (ms), its worker's lease (ms) and the chain of its
     * signature. Indexes: an org's requests newest first (ids are time
     * ordered), the ready rows of each org (partial: only QUEUED rows), and
     * every row not SIGNED (partial: the synchronous path writes none).
     * Idempotency keys: one row per org, credential and key. */
    "ALTER TABLE sign_requests ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE sign_requests ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE sign_requests ADD COLUMN queued_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE sign_requests ADD COLUMN run_after INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE sign_requests ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE sign_requests ADD COLUMN lease_node TEXT;"
    "ALTER TABLE sign_requests ADD COLUMN chain_der BLOB;"
    "ALTER TABLE sign_requests ADD COLUMN options INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE sign_requests ADD COLUMN callback_url TEXT;"
    "CREATE INDEX sign_requests_org_id ON sign_requests(org_id, id);"
    "CREATE INDEX sign_requests_ready ON sign_requests(org_id, run_after, id) WHERE status = 0;"
    "CREATE INDEX sign_requests_open ON sign_requests(status, lease_until) WHERE status <> 3;"
    "CREATE TABLE idempotency_keys ("
    "  org_id INTEGER NOT NULL,"
    "  credential TEXT NOT NULL,"
    "  key TEXT NOT NULL,"
    "  body_hash BLOB NOT NULL,"
    "  request_id TEXT NOT NULL,"
    "  sync INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  PRIMARY KEY (org_id, credential, key)) STRICT;",
    /* 7: a profile's signing policy (policy.h), canonical JSON; NULL: none.
     * An API key's profiles ("a,b"): the only ones it may sign with; NULL:
     * any. */
    "ALTER TABLE profiles ADD COLUMN policy TEXT; ALTER TABLE api_keys ADD COLUMN profiles TEXT;",
};

#define NMIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

_Static_assert(NMIGRATIONS == SCHEMA_VERSION, "schema_sqlite.c and SCHEMA_VERSION disagree");

static void fill_version(db_stmt *st, void *p)
{
    *(int64_t *)p = db_col_null(st, 0) ? 0 : db_col_int(st, 0);
}

static qk_err txn_migrate(db_conn *c, void *arg)
{
    int64_t version = 0;
    int found = 0;
    qk_err rc;
    int *from = arg;
    if ((rc = db_exec(c, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);"
                         "INSERT INTO schema_version SELECT 0 WHERE NOT EXISTS "
                         "(SELECT 1 FROM schema_version);")) != QK_OK)
        return rc;
    if ((rc = sql_one(c, Q_SCHEMA_VERSION, NULL, 0, fill_version, &version, &found)) != QK_OK)
        return rc;
    if (version > NMIGRATIONS)
        return qk_fail(QK_ERR_INVALID_ARG,
                       "database schema version %d is newer than this qwickd (%d)", (int)version,
                       NMIGRATIONS);
    *from = (int)version;
    for (int v = (int)version; v < NMIGRATIONS; v++) {
        char bump[64];
        if ((rc = db_exec(c, migrations[v])) != QK_OK)
            return rc;
        if (v + 1 == 4 && (rc = log_backfill(c)) != QK_OK)
            return rc;
        snprintf(bump, sizeof(bump), "UPDATE schema_version SET version = %d", v + 1);
        if ((rc = db_exec(c, bump)) != QK_OK)
            return rc;
    }
    return QK_OK;
}

qk_err schema_sqlite_migrate(qk_db *d, int *from)
{
    *from = 0;
    return db_write(d, DB_NO_ORG, txn_migrate, from);
}
