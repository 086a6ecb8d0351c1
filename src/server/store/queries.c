/* The store's queries, each written once for both dialects (placeholders
 * $1, $2...; a `pg` text where PostgreSQL's differs), and the helpers every
 * operation runs them with: prepare and bind, run, read one row or all.
 *
 * Where the dialects differ, the table says so (`pg` next to `sql`): the
 * append lock (FOR UPDATE), the cross-org lookups (SECURITY DEFINER functions
 * on PostgreSQL, schema_pg.c), and the checks of column types that SQLite
 * needs and PostgreSQL enforces. */
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "store/store_sql.h"

#define PROFILE_COLS                                                                               \
    "id, org_id, name, backend, key_id, chain_der, config, created_at, updated_at, disabled_at, "  \
    "policy"
#define PROFILE_COLS_P                                                                             \
    "p.id, p.org_id, p.name, p.backend, p.key_id, p.chain_der, p.config, p.created_at, "           \
    "p.updated_at, p.disabled_at, p.policy"

/* An audit row as its leaf needs it (read_entry() takes them in this order). */
#define AUDIT_COLS                                                                                 \
    "org_id, seq, version, ts, actor, client_ip, action, request_id, format, algorithm, "          \
    "digest_hex, profile, filename, signer_fp, sig_sha256, sigval_sha256, outcome, detail, meta"

/* A request row as fill_request() reads it; `sig` and `chain` name the
 * columns (or NULL, for lists). */
#define REQ_COLS(sig, chain)                                                                       \
    "id, org_id, coalesce(apikey_id, 0), coalesce(user_id, 0), status, algorithm, format, "        \
    "profile, filename, description, url, client_ip, digest, " sig ", error, created_at, "         \
    "completed_at, attempts, updated_at, queued_ms, run_after, " chain ", options, callback_url"

#define APIKEY_COLS                                                                                \
    "id, org_id, coalesce(user_id, 0), name, prefix, role, created_at, expires_at, revoked_at, "   \
    "last_used_at, hash, profiles"
#define APIKEY_COLS_K                                                                              \
    "k.id, k.org_id, coalesce(k.user_id, 0), k.name, k.prefix, k.role, k.created_at, "             \
    "k.expires_at, k.revoked_at, k.last_used_at, k.hash, k.profiles"

const db_query store_queries[Q__COUNT] = {
    [Q_SCHEMA_VERSION] = {"SELECT max(version) FROM schema_version", NULL},
    [W_ORG_INSERT] = {"INSERT INTO orgs(name, created_at) VALUES($1, $2) RETURNING id", NULL},
    [W_USER_INSERT] = {"INSERT INTO users(org_id, email, pw_hash, role, created_at) "
                       "VALUES($1, $2, $3, $4, $5) RETURNING id",
                       NULL},
    [W_SKEY_INSERT] = {"INSERT INTO signing_keys(org_id, kind, sealed, created_at) "
                       "VALUES($1, $2, $3, $4) RETURNING id",
                       NULL},
    [W_PROFILE_INSERT] = {"INSERT INTO profiles(org_id, name, backend, key_id, chain_der, "
                          "created_at, config) VALUES($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                          NULL},
    [W_APIKEY_INSERT] = {"INSERT INTO api_keys(org_id, user_id, name, prefix, hash, role, "
                         "created_at, expires_at, profiles) VALUES($1, $2, $3, $4, $5, $6, $7, "
                         "$8, $9) RETURNING id",
                         NULL},
    /* Revoking twice keeps the first time; the row still counts as found. */
    [W_APIKEY_REVOKE] = {"UPDATE api_keys SET revoked_at = CASE WHEN revoked_at = 0 THEN $3 "
                         "ELSE revoked_at END WHERE org_id = $1 AND id = $2",
                         NULL},
    [W_APIKEY_TOUCH] = {"UPDATE api_keys SET last_used_at = $3 WHERE org_id = $1 AND id = $2 "
                        "AND last_used_at < $3",
                        NULL},
    /* A later status change of the same request updates it (async flows);
     * the WHERE keeps one org from touching another's request id. */
    [W_REQ_UPSERT] =
        {"INSERT INTO sign_requests(id, org_id, apikey_id, user_id, status, algorithm, format, "
         "profile, filename, description, url, client_ip, digest, signature, error, created_at, "
         "completed_at) VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, "
         "$16, $17) ON CONFLICT(id) DO UPDATE SET status = excluded.status, "
         "signature = excluded.signature, error = excluded.error, "
         "completed_at = excluded.completed_at WHERE sign_requests.org_id = excluded.org_id",
         NULL},
    [W_AUDIT_INSERT] = {"INSERT INTO audit(" AUDIT_COLS ") VALUES($1, $2, $3, $4, $5, $6, $7, $8, "
                        "$9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
                        NULL},
    [W_HEAD_SET] = {"UPDATE log_heads SET size = $2, frontier = $3 WHERE org_id = $1", NULL},
    [Q_HEAD_GET] = {"SELECT size FROM log_heads WHERE org_id = $1", NULL},
    [R_HEAD_EDGE] = {"SELECT size, frontier FROM log_heads WHERE org_id = $1", NULL},
    /* The append lock, in one statement: the org's head row, made when
     * missing, locked (an upsert's update locks the row it touches) to the
     * end of the transaction, so appends from many nodes form one sequence;
     * its size is the next entry's index. SQLite's single writer (BEGIN
     * IMMEDIATE) serializes appends anyway. */
    [Q_HEAD_LOCK] = {"INSERT INTO log_heads(org_id, size) VALUES($1, 0) ON CONFLICT(org_id) "
                     "DO UPDATE SET size = log_heads.size RETURNING size, frontier",
                     NULL},
    [Q_NODE_GET] = {"SELECT hash FROM log_nodes WHERE org_id = $1 AND pos = $2", NULL},
    [W_NODE_INSERT] = {"INSERT INTO log_nodes(org_id, pos, hash) VALUES($1, $2, $3)", NULL},
    [R_LOG_ENTRIES] = {"SELECT " AUDIT_COLS " FROM audit WHERE org_id = $1 AND seq > $2 "
                       "AND seq <= $3 ORDER BY seq",
                       NULL},
    [R_LOG_LOOKUP] = {"SELECT " AUDIT_COLS " FROM audit WHERE org_id = $1 AND sigval_sha256 = $2 "
                      "ORDER BY seq LIMIT 100",
                      NULL},
    [R_LOG_REQ] = {"SELECT seq FROM audit WHERE org_id = $1 AND request_id = $2 AND outcome = 0 "
                   "AND action = 'sign.digest' ORDER BY seq DESC LIMIT 1",
                   NULL},
    [R_NODES_ALL] = {"SELECT pos, hash FROM log_nodes WHERE org_id = $1 ORDER BY pos", NULL},
    /* Column 2: is status really an integer (SQLite stores what it is given). */
    [R_REQ_SIG] = {"SELECT signature, status, typeof(status) = 'integer' FROM sign_requests "
                   "WHERE org_id = $1 AND id = $2",
                   "SELECT signature, status, 1 FROM sign_requests WHERE org_id = $1 AND id = $2"},
    /* A signed request with no allowed entry naming it: planted or its
     * entry removed. */
    [R_SIGNED_UNLOGGED] = {"SELECT r.id FROM sign_requests r WHERE r.org_id = $1 AND "
                           "r.status = $2 AND NOT EXISTS (SELECT 1 FROM audit a WHERE "
                           "a.org_id = r.org_id AND a.request_id = r.id AND a.outcome = 0 AND "
                           "a.action = 'sign.digest') LIMIT 1",
                           NULL},
    [R_CKPT_LATEST] = {"SELECT size, root, note, created_at FROM log_checkpoints "
                       "WHERE org_id = $1 ORDER BY size DESC LIMIT 1",
                       NULL},
    [W_CKPT_INSERT] = {"INSERT INTO log_checkpoints(org_id, size, root, note, created_at) "
                       "VALUES($1, $2, $3, $4, $5) ON CONFLICT(org_id, size) DO NOTHING",
                       NULL},
    [W_OPTOKEN_INSERT] = {"INSERT INTO operator_tokens(name, hash, created_at) VALUES($1, $2, $3) "
                          "RETURNING id",
                          NULL},
    [R_OPTOKEN_LOOKUP] = {"SELECT id, hash FROM operator_tokens WHERE hash = $1 AND "
                          "revoked_at = 0",
                          NULL},
    [W_OPTOKEN_REVOKE] = {"UPDATE operator_tokens SET revoked_at = $2 WHERE id = $1 AND "
                          "revoked_at = 0",
                          NULL},
    [R_OPTOKEN_LIST] = {"SELECT id, name, created_at, revoked_at FROM operator_tokens ORDER BY id",
                        NULL},
    /* ts is in milliseconds. */
    [R_USAGE_OUTCOMES] = {"SELECT outcome, count(*) FROM audit WHERE org_id = $1 AND action = "
                          "'sign.digest' AND ts >= $2 * 1000 AND ts < $3 * 1000 GROUP BY outcome",
                          NULL},
    [R_USAGE_PROFILES] = {"SELECT coalesce(profile, ''), count(*) FROM audit WHERE org_id = $1 "
                          "AND action = 'sign.digest' AND outcome = 0 AND ts >= $2 * 1000 AND "
                          "ts < $3 * 1000 GROUP BY profile ORDER BY 1",
                          NULL},
    [R_SECRET_GET] = {"SELECT sealed, public FROM instance_secrets WHERE name = $1", NULL},
    [W_SECRET_INSERT] = {"INSERT INTO instance_secrets(name, sealed, public, created_at) "
                         "VALUES($1, $2, $3, $4) ON CONFLICT(name) DO NOTHING",
                         NULL},
    /* Orgs and key hashes are looked up across orgs through functions that
     * answer only that (schema_pg.c): the server's role cannot read either
     * table beyond its transaction's org. */
    [R_ORG_FIND] = {"SELECT id FROM orgs WHERE name = $1",
                    "SELECT id FROM qwick_org_find($1) AS id WHERE id IS NOT NULL"},
    [R_SKEY_GET] = {"SELECT id, org_id, kind, sealed FROM signing_keys WHERE org_id = $1 AND "
                    "id = $2",
                    NULL},
    [R_PROFILE_GET] = {"SELECT " PROFILE_COLS " FROM profiles WHERE org_id = $1 AND name = $2",
                       NULL},
    /* Across orgs: on PostgreSQL through a SECURITY DEFINER function. */
    /* The key and a profile of its org (the signing path), one statement. */
    [R_APIKEY_PROFILE] = {"SELECT " APIKEY_COLS_K ", " PROFILE_COLS_P " FROM api_keys k "
                          "LEFT JOIN profiles p ON p.org_id = k.org_id AND p.name = $2 "
                          "WHERE k.hash = $1",
                          "SELECT " APIKEY_COLS_K ", " PROFILE_COLS_P
                          " FROM qwick_apikey_lookup($1) k "
                          "LEFT JOIN qwick_key_profile($1, $2) p ON true"},
    [R_APIKEY_LOOKUP] = {"SELECT " APIKEY_COLS " FROM api_keys WHERE hash = $1",
                         "SELECT " APIKEY_COLS " FROM qwick_apikey_lookup($1)"},
    [R_APIKEY_LIST] = {"SELECT " APIKEY_COLS " FROM api_keys WHERE org_id = $1 ORDER BY id", NULL},
    [R_APIKEY_GET] = {"SELECT " APIKEY_COLS " FROM api_keys WHERE org_id = $1 AND id = $2", NULL},
    [R_REQ_GET] = {"SELECT " REQ_COLS("signature", "chain_der") " FROM sign_requests "
                                                                "WHERE org_id = $1 AND id = $2",
                   NULL},
    /* ---- the queue (store_queue.c) ---- */
    [W_REQ_ENQUEUE] = {"INSERT INTO sign_requests(id, org_id, apikey_id, user_id, status, "
                       "algorithm, format, profile, filename, description, url, client_ip, "
                       "digest, created_at, updated_at, queued_ms, run_after, options, "
                       "callback_url) VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, "
                       "$13, $14, $14, $15, $15, $16, $17)",
                       NULL},
    /* The key is ours when new, or when its holder is older than $8 (the
     * 24 hours are over): then a row comes back. */
    [W_IDEM_CLAIM] = {"INSERT INTO idempotency_keys(org_id, credential, key, body_hash, "
                      "request_id, sync, created_at) VALUES($1, $2, $3, $4, $5, $6, $7) "
                      "ON CONFLICT(org_id, credential, key) DO UPDATE SET "
                      "body_hash = excluded.body_hash, request_id = excluded.request_id, "
                      "sync = excluded.sync, created_at = excluded.created_at "
                      "WHERE idempotency_keys.created_at < $8 RETURNING request_id",
                      NULL},
    [R_IDEM_GET] = {"SELECT request_id, body_hash, sync FROM idempotency_keys WHERE org_id = $1 "
                    "AND credential = $2 AND key = $3",
                    NULL},
    /* SQLite's claim, in steps (its one writer serializes claims anyway):
     * leases that ran out go back; the orgs with ready rows, found one by
     * one along the ready index (a skip scan: a probe per org, however long
     * the queue); rounds over them, each org's oldest ready rows up to its
     * share, each one taken, until the claim is full or no org has more. */
    /* `status <> 3` repeats the open index's condition: SQLite uses a
     * partial index only when the query's WHERE names its condition (it does
     * not infer it from status = 2), else it scans every request ever made. */
    [W_QUEUE_RECLAIM] = {"UPDATE sign_requests SET status = 0, lease_node = NULL "
                         "WHERE status = 2 AND status <> 3 AND lease_until < $1",
                         NULL},
    [R_QUEUE_NEXT_ORG] = {"SELECT org_id FROM sign_requests WHERE status = 0 AND org_id > $1 "
                          "AND run_after <= $2 ORDER BY org_id LIMIT 1",
                          NULL},
    [R_QUEUE_READY] =
        {"SELECT org_id, id, attempts FROM sign_requests WHERE org_id = $1 AND status = 0 "
         "AND run_after <= $2 ORDER BY run_after, id LIMIT $3",
         NULL},
    [W_QUEUE_TAKE] = {"UPDATE sign_requests SET status = 2, attempts = attempts + 1, "
                      "lease_until = $3, lease_node = $4, updated_at = $5 "
                      "WHERE org_id = $1 AND id = $2 AND status = 0 RETURNING attempts",
                      NULL},
    /* PostgreSQL's, across orgs in one statement (schema_pg.c). */
    [Q_QUEUE_CLAIM] = {"SELECT 0, '', 0 WHERE 0",
                       "SELECT org_id, id, attempts FROM qwick_queue_claim($1, $2, $3, $4)"},
    [W_REQ_FINISH] = {"UPDATE sign_requests SET status = $4, signature = $5, chain_der = $6, "
                      "error = $7, completed_at = $8, updated_at = $9, run_after = $10, "
                      "lease_until = 0, lease_node = NULL "
                      "WHERE org_id = $1 AND id = $2 AND status = 2 AND attempts = $3",
                      NULL},
    [R_REQ_STATUS] = {"SELECT status FROM sign_requests WHERE org_id = $1 AND id = $2",
                      "SELECT status FROM sign_requests WHERE org_id = $1 AND id = $2 "
                      "FOR UPDATE"},
    [W_REQ_CANCEL] = {"UPDATE sign_requests SET status = 6, error = $3, completed_at = $4, "
                      "updated_at = $4 WHERE org_id = $1 AND id = $2 AND status IN (0, 1)",
                      NULL},
    [W_REQ_REQUEUE] = {"UPDATE sign_requests SET status = 0, attempts = 0, run_after = $3, "
                       "queued_ms = $3, "
                       "error = NULL, completed_at = 0, updated_at = $4, lease_until = 0 "
                       "WHERE org_id = $1 AND id = $2 AND status = 4",
                       NULL},
    [R_REQ_LIST] = {"SELECT " REQ_COLS(
                        "NULL",
                        "NULL") " FROM sign_requests WHERE org_id = $1 "
                                "AND ($2 < 0 OR status = $2) AND id < $3 ORDER BY id DESC LIMIT $4",
                    NULL},
    /* The open rows only (the partial index), not all the org's requests. */
    [R_QUEUE_STATS_ORG] = {"SELECT status, count(*), min(queued_ms) FROM sign_requests "
                           "INDEXED BY sign_requests_open WHERE org_id = $1 AND status <> 3 "
                           "GROUP BY status",
                           "SELECT status, count(*), min(queued_ms) FROM sign_requests "
                           "WHERE org_id = $1 AND status <> 3 GROUP BY status"},
    [R_QUEUE_STATS_ALL] = {"SELECT status, count(*), min(queued_ms) FROM sign_requests "
                           "WHERE status <> 3 GROUP BY status",
                           "SELECT status, n, oldest FROM qwick_queue_stats()"},
    /* Column 19: are the integer columns integers (STRICT refuses others
     * since migration 4; rows older than that are checked here). */
    [R_AUDIT_ROWS] = {"SELECT " AUDIT_COLS ", typeof(seq) = 'integer' AND typeof(version) = "
                      "'integer' AND typeof(ts) = 'integer' AND typeof(outcome) = 'integer' AND "
                      "typeof(org_id) = 'integer' FROM audit WHERE org_id = $1 ORDER BY seq",
                      "SELECT " AUDIT_COLS ", 1 FROM audit WHERE org_id = $1 ORDER BY seq"},
    [R_AUDIT_ALL] = {"SELECT " AUDIT_COLS " FROM audit ORDER BY org_id, seq", NULL},
    /* Does the audit table enforce its column types. */
    [Q_AUDIT_TYPED] = {"SELECT strict FROM pragma_table_list WHERE schema = 'main' AND "
                       "name = 'audit'",
                       "SELECT 1"},
    [R_AUDIT_COUNT_REQ] = {"SELECT count(*) FROM audit WHERE org_id = $1 AND request_id = $2",
                           NULL},
    [R_AUDIT_COUNT_ALL] = {"SELECT count(*) FROM audit WHERE org_id = $1", NULL},
    [R_PROFILE_LIST] = {"SELECT " PROFILE_COLS " FROM profiles WHERE org_id = $1 ORDER BY name",
                        NULL},
    [W_PROFILE_DISABLE] = {"UPDATE profiles SET disabled_at = CASE WHEN disabled_at = 0 THEN $3 "
                           "ELSE disabled_at END, updated_at = $3 WHERE org_id = $1 AND name = $2",
                           NULL},
    [W_PROFILE_SET_POLICY] = {"UPDATE profiles SET policy = $3, updated_at = $4 "
                              "WHERE org_id = $1 AND name = $2",
                              NULL},
    [W_SKEY_UPDATE] = {"UPDATE signing_keys SET sealed = $3 WHERE org_id = $1 AND id = $2", NULL},
    [R_ORG_LIST] = {"SELECT id, name FROM orgs ORDER BY id",
                    "SELECT id, name FROM qwick_org_list() ORDER BY id"},
    [Q_LEASE_COUNT] = {"SELECT count(*) FROM azure_leases WHERE org_id = $1 AND app = $2 AND "
                       "released_at = 0",
                       NULL},
    [W_LEASE_INSERT] = {"INSERT INTO azure_leases(org_id, app, node, created_at, lease_until) "
                        "VALUES($1, $2, $3, $4, $5) RETURNING id",
                        NULL},
    [W_LEASE_UPDATE] = {"UPDATE azure_leases SET key_id = coalesce($3, key_id), "
                        "lease_until = CASE WHEN $4 > 0 THEN $4 ELSE lease_until END "
                        "WHERE org_id = $1 AND id = $2 AND released_at = 0",
                        NULL},
    [W_LEASE_RELEASE] = {"UPDATE azure_leases SET released_at = $3 "
                         "WHERE org_id = $1 AND id = $2 AND released_at = 0",
                         NULL},
    [W_LEASE_RELEASE_KEY] = {"UPDATE azure_leases SET released_at = $4 "
                             "WHERE org_id = $1 AND app = $2 AND key_id = $3 AND released_at = 0",
                             NULL},
    [R_LEASE_LIST] = {"SELECT id, node, key_id, created_at, lease_until FROM azure_leases "
                      "WHERE org_id = $1 AND app = $2 AND released_at = 0 ORDER BY id",
                      NULL},
    /* Master-key rotation: every blob of an org, and compare-and-swap re-seals. */
    [R_SKEY_ALL] = {"SELECT id, org_id, kind, sealed FROM signing_keys WHERE org_id = $1 "
                    "ORDER BY id",
                    NULL},
    [W_SKEY_RESEAL] = {"UPDATE signing_keys SET sealed = $4 WHERE org_id = $1 AND id = $2 AND "
                       "sealed = $3",
                       NULL},
    [R_SECRET_NAMES] = {"SELECT name FROM instance_secrets ORDER BY name", NULL},
    [W_SECRET_RESEAL] = {"UPDATE instance_secrets SET sealed = $3 WHERE name = $1 AND "
                         "sealed = $2",
                         NULL},
    [Q_PG_HAS_SCHEMA] = {"SELECT count(*) FROM sqlite_master WHERE name = 'schema_version'",
                         "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'public' "
                         "AND tablename = 'schema_version'"},
};

/* ---- helpers ---------------------------------------------------------- */

static void bind_vals(db_stmt *st, const db_val *v, int n)
{
    for (int i = 0; i < n; i++) {
        switch (v[i].t) {
        case 'i':
            db_bind_int(st, i + 1, v[i].i);
            break;
        case 'n':
            if (v[i].i == 0)
                db_bind_null(st, i + 1);
            else
                db_bind_int(st, i + 1, v[i].i);
            break;
        case 's':
            db_bind_text(st, i + 1, v[i].s);
            break;
        case 'z':
            db_bind_null(st, i + 1);
            break;
        default:
            db_bind_blob(st, i + 1, v[i].p, v[i].n);
            break;
        }
    }
}

qk_err sql_stmt(db_conn *c, int id, const db_val *v, int nv, db_stmt **out)
{
    qk_err rc = db_prepare(c, id, out);
    if (rc == QK_OK)
        bind_vals(*out, v, nv);
    return rc;
}

qk_err sql_exec_later(db_conn *c, int id, const db_val *v, int nv, int64_t expect,
                      const char *mismatch)
{
    db_stmt *st = NULL;
    int64_t changes = 0;
    qk_err rc;
    if (c->d->ops->run_later == NULL) {
        if ((rc = sql_exec(c, id, v, nv, &changes)) == QK_OK && expect >= 0 && changes != expect)
            rc = qk_fail(QK_ERR_INVALID_ARG, "%s", mismatch);
        return rc;
    }
    if ((rc = sql_stmt(c, id, v, nv, &st)) == QK_OK)
        rc = c->d->ops->run_later(st, expect, mismatch);
    db_done(st);
    return rc;
}

qk_err sql_exec(db_conn *c, int id, const db_val *v, int nv, int64_t *changes)
{
    db_stmt *st = NULL;
    int row = 0;
    qk_err rc = sql_stmt(c, id, v, nv, &st);
    if (rc == QK_OK)
        rc = db_step(st, &row);
    while (rc == QK_OK && row)
        rc = db_step(st, &row);
    if (rc == QK_OK && changes != NULL)
        *changes = db_changes(st);
    db_done(st);
    return rc;
}

qk_err sql_one(db_conn *c, int id, const db_val *v, int nv, row_fill_fn fill, void *elem,
               int *found)
{
    db_stmt *st = NULL;
    int row = 0;
    qk_err rc = sql_stmt(c, id, v, nv, &st);
    *found = 0;
    if (rc == QK_OK)
        rc = db_step(st, &row);
    if (rc == QK_OK && row) {
        fill(st, elem);
        *found = 1;
    }
    db_done(st);
    return rc;
}

qk_err sql_rows(db_conn *c, int id, const db_val *v, int nv, size_t size, row_fill_fn fill,
                row_list_free_fn list_free, void **out, size_t *n)
{
    db_stmt *st = NULL;
    uint8_t *rows = NULL;
    size_t count = 0, cap = 0;
    int row = 0;
    qk_err rc = sql_stmt(c, id, v, nv, &st);

    *out = NULL;
    *n = 0;
    while (rc == QK_OK && (rc = db_step(st, &row)) == QK_OK && row) {
        if (count == cap) {
            cap = cap ? 2 * cap : 8;
            rows = xrealloc(rows, cap * size);
        }
        memset(rows + count * size, 0, size);
        fill(st, rows + count * size);
        count++;
    }
    db_done(st);
    if (rc != QK_OK) {
        if (rows != NULL)
            list_free(rows, count);
        return rc;
    }
    *out = rows;
    *n = count;
    return QK_OK;
}

char *col_strdup(db_stmt *st, int i)
{
    const char *t = db_col_text(st, i);
    return t == NULL ? NULL : xstrdup(t);
}

void col_buf(db_stmt *st, int i, qk_buf *out)
{
    size_t n = 0;
    const uint8_t *p = db_col_blob(st, i, &n);
    out->data = NULL;
    out->len = 0;
    if (p == NULL || n == 0)
        return;
    out->data = xmalloc(n);
    memcpy(out->data, p, n);
    out->len = n;
}

qk_err check_text(const char *what, const char *s, int required)
{
    if (s == NULL)
        return required ? qk_fail(QK_ERR_INVALID_ARG, "%s is required", what) : QK_OK;
    if (strlen(s) > MAX_TEXT)
        return qk_fail(QK_ERR_TOO_LARGE, "%s longer than %d bytes", what, MAX_TEXT);
    return QK_OK;
}

qk_err not_found(int *found, const char *what)
{
    *found = 0;
    return qk_fail(QK_ERR_INVALID_ARG, "%s not found", what);
}

void sql_fill_i64(db_stmt *st, void *p)
{
    *(int64_t *)p = db_col_int(st, 0);
}
