/* The store, written once over the database driver interface (db.h): every
 * operation of store.h but the log's (store_log.c), over the queries of
 * queries.c.
 *
 * Tenancy: every query that touches tenant data has `org_id = $1` in it, and
 * cross-table references are composite (org_id, id) foreign keys, so a
 * profile cannot point at another org's signing key even through a bug in a
 * caller. Each transaction also names its org to the driver, which on
 * PostgreSQL sets it for row-level security (schema_pg.c): there, even a query
 * that forgot its org sees only the org's rows. Reads that must find the org
 * first (an API key by its hash, an org by name) go through a lookup that
 * answers only that (a SECURITY DEFINER function on PostgreSQL).
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "core/util.h"
#include "store/store.h"
#include "store/store_sql.h"

static void free_plain(void *rows, size_t n)
{
    (void)n;
    free(rows);
}

/* A read of many rows as one operation (its own transaction). */
typedef struct rows_arg {
    int id;
    const db_val *v;
    int nv;
    size_t size;
    row_fill_fn fill;
    row_list_free_fn list_free;
    void **out;
    size_t *n;
} rows_arg;

static qk_err txn_rows(db_conn *c, void *p)
{
    rows_arg *a = p;
    if (*a->out != NULL) /* an earlier run's (db.h: fn may run again) */
        a->list_free(*a->out, *a->n);
    *a->out = NULL;
    *a->n = 0;
    return sql_rows(c, a->id, a->v, a->nv, a->size, a->fill, a->list_free, a->out, a->n);
}

static qk_err read_rows(qk_store *s, int64_t org, int id, const db_val *v, int nv, size_t size,
                        row_fill_fn fill, row_list_free_fn list_free, void **out, size_t *n)
{
    rows_arg a = {id, v, nv, size, fill, list_free, out, n};
    *out = NULL;
    *n = 0;
    return db_read1(SQL_DB(s), org, txn_rows, &a);
}

/* A read of one row as one operation; no row is the not-found convention. */
typedef struct one_arg {
    int id;
    const db_val *v;
    int nv;
    row_fill_fn fill;
    void (*clear)(void *elem); /* frees what fill put in elem; NULL: nothing to free */
    void *elem;
    int found;
} one_arg;

/* A driver may run this more than once (db.h): a row filled by an earlier
 * run is freed before the next, so nothing leaks and only the last counts. */
static void one_clear(one_arg *a)
{
    if (a->found && a->clear != NULL)
        a->clear(a->elem);
    a->found = 0;
}

static qk_err txn_one(db_conn *c, void *p)
{
    one_arg *a = p;
    one_clear(a);
    return sql_one(c, a->id, a->v, a->nv, a->fill, a->elem, &a->found);
}

/* The same, where no row is an answer (*found = 0, QK_OK). */
static qk_err read_maybe(qk_store *s, int64_t org, int id, const db_val *v, int nv,
                         row_fill_fn fill, void (*clear)(void *), void *elem, int *found)
{
    one_arg a = {id, v, nv, fill, clear, elem, 0};
    qk_err rc = db_read1(SQL_DB(s), org, txn_one, &a);
    if (rc != QK_OK)
        one_clear(&a);
    *found = rc == QK_OK && a.found;
    return rc;
}

static qk_err read_one(qk_store *s, int64_t org, int id, const db_val *v, int nv, row_fill_fn fill,
                       void (*clear)(void *), void *elem, const char *what, int *found)
{
    qk_err rc = read_maybe(s, org, id, v, nv, fill, clear, elem, found);
    if (rc == QK_OK && !*found)
        return not_found(found, what);
    return rc;
}

/* A write of one statement as one operation; with `audit`, the entry is
 * appended (with `meta`) when the statement changed a row. */
typedef struct exec_arg {
    int id;
    const db_val *v;
    int nv;
    int64_t changes;
    const store_audit *audit;
    const char *meta;
} exec_arg;

static qk_err txn_exec(db_conn *c, void *p)
{
    exec_arg *a = p;
    qk_err rc = sql_exec(c, a->id, a->v, a->nv, &a->changes);
    if (rc == QK_OK && a->changes > 0 && a->audit != NULL)
        rc = log_append(c, a->audit, a->meta);
    return rc;
}

static qk_err write_one(qk_store *s, int64_t org, int id, const db_val *v, int nv,
                        const store_audit *audit, const char *meta, int64_t *changes)
{
    exec_arg a = {id, v, nv, 0, audit, meta};
    qk_err rc = db_write(SQL_DB(s), org, txn_exec, &a);
    if (changes != NULL)
        *changes = rc == QK_OK ? a.changes : 0;
    return rc;
}

/* An INSERT … RETURNING id in the caller's transaction. */
static qk_err insert_id(db_conn *c, int id, const db_val *v, int nv, int64_t *out)
{
    int found = 0;
    qk_err rc = sql_one(c, id, v, nv, sql_fill_i64, out, &found);
    if (rc == QK_OK && !found)
        rc = qk_fail(QK_ERR_IO, "insert returned no id");
    return rc;
}

/* ---- orgs, users, keys, profiles ---------------------------------------- */

typedef struct insert_arg {
    int id;
    const db_val *v;
    int nv;
    int64_t out;
    const store_audit *audit;
    char *(*meta)(const struct insert_arg *a); /* the entry's meta, once the id is known */
    const void *ctx;
} insert_arg;

static qk_err txn_insert(db_conn *c, void *p)
{
    insert_arg *a = p;
    qk_err rc = insert_id(c, a->id, a->v, a->nv, &a->out);
    if (rc == QK_OK && a->audit != NULL) {
        /* The entry's org may be another (an org's creation goes to org 0's log). */
        char *meta = a->meta(a);
        if ((rc = db_set_org(c, a->audit->org_id)) == QK_OK)
            rc = log_append(c, a->audit, meta);
        free(meta);
    }
    return rc;
}

static qk_err write_insert(qk_store *s, int64_t org, insert_arg *a, int64_t *id)
{
    qk_err rc = db_write(SQL_DB(s), org, txn_insert, a);
    *id = rc == QK_OK ? a->out : 0;
    return rc;
}

static char *org_create_meta(const insert_arg *a)
{
    return meta_json("{s:I,s:s}", "orgId", (json_int_t)a->out, "name", (const char *)a->ctx);
}

static qk_err sq_org_create(qk_store *base, const char *name, const store_audit *audit, int64_t *id)
{
    db_val v[] = {V_TEXT(name), V_INT(now_unix())};
    insert_arg a = {W_ORG_INSERT, v, 2, 0, audit, org_create_meta, name};
    qk_err rc;
    *id = 0;
    if ((rc = check_text("org name", name, 1)) != QK_OK ||
        (audit != NULL && (rc = check_audit(audit)) != QK_OK))
        return rc;
    return write_insert(base, DB_NO_ORG, &a, id);
}

static qk_err sq_user_create(qk_store *base, int64_t org, const char *email, const char *pw_hash,
                             store_role role, int64_t *id)
{
    db_val v[] = {V_INT(org), V_TEXT(email), V_TEXT(pw_hash), V_INT(role), V_INT(now_unix())};
    insert_arg a = {W_USER_INSERT, v, 5, 0, NULL, NULL, NULL};
    qk_err rc;
    *id = 0;
    if ((rc = check_text("email", email, 1)) != QK_OK ||
        (rc = check_text("password hash", pw_hash, 0)) != QK_OK)
        return rc;
    return write_insert(base, org, &a, id);
}

static qk_err sq_signing_key_create(qk_store *base, int64_t org, const char *kind, qk_slice sealed,
                                    int64_t *id)
{
    db_val v[] = {V_INT(org), V_TEXT(kind), V_BLOB(sealed.data, sealed.len), V_INT(now_unix())};
    insert_arg a = {W_SKEY_INSERT, v, 4, 0, NULL, NULL, NULL};
    qk_err rc;
    *id = 0;
    if ((rc = check_text("key kind", kind, 1)) != QK_OK)
        return rc;
    if (sealed.len == 0 || sealed.len > MAX_BLOB)
        return qk_fail(QK_ERR_INVALID_ARG, "sealed key of %zu bytes", sealed.len);
    return write_insert(base, org, &a, id);
}

typedef struct profile_meta {
    const char *name, *backend;
    int64_t key_id;
} profile_meta;

static char *profile_create_meta(const insert_arg *a)
{
    const profile_meta *m = a->ctx;
    return meta_json("{s:I,s:s,s:s,s:I}", "profileId", (json_int_t)a->out, "profile", m->name,
                     "backend", m->backend, "signingKeyId", (json_int_t)m->key_id);
}

static qk_err sq_profile_create(qk_store *base, int64_t org, const char *name, const char *backend,
                                int64_t key_id, qk_slice chain_der, const char *config,
                                const store_audit *audit, int64_t *id)
{
    db_val v[] = {V_INT(org),
                  V_TEXT(name),
                  V_TEXT(backend),
                  V_INT(key_id),
                  V_BLOB(chain_der.data, chain_der.len),
                  V_INT(now_unix()),
                  V_TEXT(config)};
    profile_meta m = {name, backend, key_id};
    insert_arg a = {W_PROFILE_INSERT, v, 7, 0, audit, profile_create_meta, &m};
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
    return write_insert(base, org, &a, id);
}

typedef struct apikey_meta {
    const char *name;
    store_role role;
    int64_t expires_at, user;
    const char *profiles;
} apikey_meta;

static char *apikey_create_meta(const insert_arg *a)
{
    const apikey_meta *m = a->ctx;
    return meta_json("{s:I,s:s,s:s,s:I,s:I,s:s*}", "keyId", (json_int_t)a->out, "name", m->name,
                     "role", store_role_name(m->role), "expiresAt", (json_int_t)m->expires_at,
                     "userId", (json_int_t)m->user, "profiles", m->profiles);
}

static qk_err sq_apikey_create(qk_store *base, int64_t org, int64_t user, const char *name,
                               const char *prefix, const uint8_t hash[32], store_role role,
                               int64_t expires_at, const char *profiles, const store_audit *audit,
                               int64_t *id)
{
    db_val v[] = {V_INT(org),
                  V_ID(user),
                  V_TEXT(name),
                  V_TEXT(prefix),
                  V_BLOB(hash, HASH_LEN),
                  V_INT(role),
                  V_INT(now_unix()),
                  V_INT(expires_at),
                  profiles != NULL ? V_TEXT(profiles) : V_NULL};
    apikey_meta m = {name, role, expires_at, user, profiles};
    insert_arg a = {W_APIKEY_INSERT, v, 9, 0, audit, apikey_create_meta, &m};
    qk_err rc;
    *id = 0;
    if ((rc = check_text("key name", name, 1)) != QK_OK ||
        (rc = check_text("key prefix", prefix, 1)) != QK_OK ||
        (profiles != NULL && (rc = check_text("key profiles", profiles, 1)) != QK_OK))
        return rc;
    if ((unsigned)role > ROLE_ADMIN || expires_at < 0)
        return qk_fail(QK_ERR_INVALID_ARG, "bad role or expiry");
    if (audit != NULL && (rc = check_audit(audit)) != QK_OK)
        return rc;
    return write_insert(base, org, &a, id);
}

/* Fills a store_apikey from an APIKEY_COLS row; the stored hash is column 10,
 * the profiles the key is limited to column 11. */
static void read_apikey(db_stmt *st, store_apikey *k)
{
    k->id = db_col_int(st, 0);
    k->org_id = db_col_int(st, 1);
    k->user_id = db_col_int(st, 2);
    k->name = col_strdup(st, 3);
    k->prefix = col_strdup(st, 4);
    k->role = (store_role)db_col_int(st, 5);
    k->created_at = db_col_int(st, 6);
    k->expires_at = db_col_int(st, 7);
    k->revoked_at = db_col_int(st, 8);
    k->last_used_at = db_col_int(st, 9);
    k->profiles = col_strdup(st, 11);
}

static void fill_apikey(db_stmt *st, void *e)
{
    read_apikey(st, e);
}

typedef struct apikey_revoke_arg {
    int64_t org, id, now;
    const store_audit *audit;
    int found;
} apikey_revoke_arg;

static qk_err txn_apikey_revoke(db_conn *c, void *p)
{
    apikey_revoke_arg *a = p;
    db_val v[] = {V_INT(a->org), V_INT(a->id), V_INT(a->now)};
    int64_t changes = 0;
    qk_err rc = sql_exec(c, W_APIKEY_REVOKE, v, 3, &changes);
    a->found = rc == QK_OK && changes > 0;
    if (rc != QK_OK || !a->found || a->audit == NULL)
        return rc;
    /* What the entry records about the key: read back in the transaction. */
    store_apikey k;
    int found = 0;
    memset(&k, 0, sizeof(k));
    if ((rc = sql_one(c, R_APIKEY_GET, v, 2, fill_apikey, &k, &found)) != QK_OK)
        return rc;
    if (!found)
        return qk_fail(QK_ERR_IO, "cannot read the revoked key back");
    char *meta = meta_json("{s:I,s:s,s:s,s:I,s:I}", "keyId", (json_int_t)k.id, "name", k.name,
                           "role", store_role_name(k.role), "expiresAt", (json_int_t)k.expires_at,
                           "revokedAt", (json_int_t)k.revoked_at);
    store_apikey_clear(&k);
    rc = log_append(c, a->audit, meta);
    free(meta);
    return rc;
}

static qk_err sq_apikey_revoke(qk_store *base, int64_t org, int64_t id, const store_audit *audit,
                               int *found)
{
    apikey_revoke_arg a = {org, id, now_unix(), audit, 0};
    qk_err rc = audit != NULL ? check_audit(audit) : QK_OK;
    *found = 0;
    if (rc != QK_OK)
        return rc;
    rc = db_write(SQL_DB(base), org, txn_apikey_revoke, &a);
    *found = a.found;
    if (rc == QK_OK && !a.found)
        return qk_fail(QK_ERR_INVALID_ARG, "no API key %" PRId64 " in this org", id);
    return rc;
}

typedef struct touch_arg {
    int64_t org, id, now;
} touch_arg;

static qk_err txn_apikey_touch(db_conn *c, void *p)
{
    touch_arg *t = p;
    db_val v[] = {V_INT(t->org), V_INT(t->id), V_INT(t->now)};
    return sql_exec(c, W_APIKEY_TOUCH, v, 3, NULL);
}

static void touch_done(void *arg, qk_err rc, const char *detail)
{
    (void)rc;
    (void)detail;
    free(arg);
}

/* Best effort, and never waited for: a driver that can queue writes takes it
 * along with the next commit, so authentication never waits on fsync. */
static qk_err sq_apikey_touch(qk_store *base, int64_t org, int64_t id, int64_t now)
{
    qk_db *d = SQL_DB(base);
    touch_arg t = {org, id, now};
    if (d->ops->write_async == NULL)
        return db_write(d, org, txn_apikey_touch, &t);
    touch_arg *heap = xmalloc(sizeof(*heap));
    *heap = t;
    if (d->ops->write_async(d, org, txn_apikey_touch, heap, touch_done, heap) != QK_OK)
        free(heap); /* dropped at shutdown */
    return QK_OK;
}

/* ---- signing requests ---------------------------------------------------- */

typedef struct request_record_arg {
    const store_sign_request *req;
    const store_audit *audit;
} request_record_arg;

void sql_request_vals(const store_sign_request *q, db_val v[SQL_REQUEST_VALS])
{
    v[0] = V_TEXT(q->id);
    v[1] = V_INT(q->org_id);
    v[2] = V_ID(q->apikey_id);
    v[3] = V_ID(q->user_id);
    v[4] = V_INT(q->status);
    v[5] = V_TEXT(q->algorithm);
    v[6] = V_TEXT(q->format);
    v[7] = V_TEXT(q->profile);
    v[8] = V_TEXT(q->filename);
    v[9] = V_TEXT(q->description);
    v[10] = V_TEXT(q->url);
    v[11] = V_TEXT(q->client_ip);
    v[12] = V_BLOB(q->digest.data, q->digest.len);
}

static qk_err txn_request_record(db_conn *c, void *p)
{
    request_record_arg *a = p;
    const store_sign_request *q = a->req;
    db_val v[17];
    sql_request_vals(q, v);
    v[13] = V_BLOB(q->signature.data, q->signature.len);
    v[14] = V_TEXT(q->error);
    v[15] = V_INT(q->created_at != 0 ? q->created_at : now_unix());
    v[16] = V_INT(q->completed_at);
    char mismatch[96];
    /* No signature yet: NULL, not an empty blob. */
    if (q->signature.len == 0)
        v[13] = V_NULL;
    snprintf(mismatch, sizeof(mismatch), "request id %s belongs to another org", q->id);
    qk_err rc = sql_exec_later(c, W_REQ_UPSERT, v, 17, 1, mismatch);
    if (rc == QK_OK && a->audit != NULL)
        rc = log_append(c, a->audit, NULL);
    return rc;
}

qk_err sql_check_request(const store_sign_request *req, const store_audit *audit)
{
    qk_err rc;
    if (req->id[0] == '\0' || memchr(req->id, '\0', sizeof(req->id)) == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "request id missing or unterminated");
    if (req->org_id <= 0 || (unsigned)req->status > REQ_CANCELLED)
        return qk_fail(QK_ERR_INVALID_ARG, "request without an org or with a bad status");
    if ((rc = check_text("algorithm", req->algorithm, 1)) != QK_OK ||
        (rc = check_text("format", req->format, 1)) != QK_OK ||
        (rc = check_text("profile", req->profile, 1)) != QK_OK ||
        (rc = check_text("filename", req->filename, 0)) != QK_OK ||
        (rc = check_text("description", req->description, 0)) != QK_OK ||
        (rc = check_text("url", req->url, 0)) != QK_OK ||
        (rc = check_text("client_ip", req->client_ip, 0)) != QK_OK ||
        (rc = check_text("error", req->error, 0)) != QK_OK ||
        (rc = check_text("callback_url", req->callback_url, 0)) != QK_OK)
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
    qk_err rc = sql_check_request(req, audit);
    if (rc != QK_OK)
        return rc;
    return db_write(SQL_DB(base), req->org_id, txn_request_record, &a);
}

typedef struct record_job {
    request_record_arg a;
    store_done_fn done;
    void *arg;
} record_job;

static void record_done(void *arg, qk_err rc, const char *detail)
{
    record_job *r = arg;
    r->done(r->arg, rc, detail);
    free(r);
}

/* The signing path's write: queued, and nobody blocks on it (see db.h). */
static qk_err sq_request_record_async(qk_store *base, const store_sign_request *req,
                                      const store_audit *audit, store_done_fn done, void *arg)
{
    qk_db *d = SQL_DB(base);
    qk_err rc = sql_check_request(req, audit);
    if (rc != QK_OK)
        return rc;
    record_job *r = xmalloc(sizeof(*r));
    *r = (record_job){{req, audit}, done, arg};
    if ((rc = d->ops->write_async(d, req->org_id, txn_request_record, &r->a, record_done, r)) !=
        QK_OK)
        free(r);
    return rc;
}

void sql_fill_request(db_stmt *st, void *p)
{
    store_sign_request *out = p;
    snprintf(out->id, sizeof(out->id), "%s", db_col_text(st, 0) ? db_col_text(st, 0) : "");
    out->org_id = db_col_int(st, 1);
    out->apikey_id = db_col_int(st, 2);
    out->user_id = db_col_int(st, 3);
    out->status = (req_status)db_col_int(st, 4);
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
    out->created_at = db_col_int(st, 15);
    out->completed_at = db_col_int(st, 16);
    out->attempts = db_col_int(st, 17);
    out->updated_at = db_col_int(st, 18);
    out->queued_ms = db_col_int(st, 19);
    out->run_after = db_col_int(st, 20);
    col_buf(st, 21, &out->chain_der);
    out->options = db_col_int(st, 22);
    out->callback_url = col_strdup(st, 23);
}

static qk_err sq_request_get(qk_store *base, int64_t org, const char *id, store_sign_request *out,
                             int *found)
{
    db_val v[] = {V_INT(org), V_TEXT(id)};
    memset(out, 0, sizeof(*out));
    *found = 0;
    if (id == NULL || strlen(id) >= sizeof(out->id))
        return not_found(found, "request");
    return read_one(base, org, R_REQ_GET, v, 2, sql_fill_request,
                    (void (*)(void *))store_sign_request_clear, out, "request", found);
}

/* ---- reads by id or name ------------------------------------------------ */

static qk_err sq_org_find(qk_store *base, const char *name, int64_t *id, int *found)
{
    db_val v[] = {V_TEXT(name)};
    *id = 0;
    *found = 0;
    if (name == NULL)
        return not_found(found, "org");
    return read_one(base, DB_NO_ORG, R_ORG_FIND, v, 1, sql_fill_i64, NULL, id, "org", found);
}

static void fill_signing_key(db_stmt *st, void *e)
{
    store_signing_key *k = e;
    k->id = db_col_int(st, 0);
    k->org_id = db_col_int(st, 1);
    k->kind = col_strdup(st, 2);
    col_buf(st, 3, &k->sealed);
}

static qk_err sq_signing_key_get(qk_store *base, int64_t org, int64_t id, store_signing_key *out,
                                 int *found)
{
    db_val v[] = {V_INT(org), V_INT(id)};
    memset(out, 0, sizeof(*out));
    return read_one(base, org, R_SKEY_GET, v, 2, fill_signing_key,
                    (void (*)(void *))store_signing_key_clear, out, "signing key", found);
}

/* A profile from column `b` on. */
static void read_profile(db_stmt *st, int b, store_profile *p)
{
    p->id = db_col_int(st, b);
    p->org_id = db_col_int(st, b + 1);
    p->name = col_strdup(st, b + 2);
    p->backend = col_strdup(st, b + 3);
    p->key_id = db_col_int(st, b + 4);
    col_buf(st, b + 5, &p->chain_der);
    p->config = col_strdup(st, b + 6);
    p->created_at = db_col_int(st, b + 7);
    p->updated_at = db_col_int(st, b + 8);
    p->disabled_at = db_col_int(st, b + 9);
    p->policy = col_strdup(st, b + 10);
}

static void fill_profile(db_stmt *st, void *e)
{
    read_profile(st, 0, e);
}

static qk_err sq_profile_get(qk_store *base, int64_t org, const char *name, store_profile *out,
                             int *found)
{
    db_val v[] = {V_INT(org), V_TEXT(name)};
    memset(out, 0, sizeof(*out));
    *found = 0;
    if (name == NULL)
        return not_found(found, "profile");
    return read_one(base, org, R_PROFILE_GET, v, 2, fill_profile,
                    (void (*)(void *))store_profile_clear, out, "profile", found);
}

typedef struct lookup_arg {
    const uint8_t *hash;
    store_apikey *out;
    uint8_t *stored;
    int found;
} lookup_arg;

static void fill_lookup(db_stmt *st, void *p)
{
    lookup_arg *a = p;
    size_t n = 0;
    const uint8_t *h = db_col_blob(st, 10, &n);
    read_apikey(st, a->out);
    if (h != NULL && n == HASH_LEN)
        memcpy(a->stored, h, HASH_LEN);
}

/* The one lookup across orgs in the request path (before the org is
 * known); on PostgreSQL a SECURITY DEFINER function that finds the key's org
 * and reads the row under it. */
static qk_err txn_apikey_lookup(db_conn *c, void *p)
{
    lookup_arg *a = p;
    db_val v[] = {V_BLOB(a->hash, HASH_LEN)};
    store_apikey_clear(a->out);
    a->found = 0;
    return sql_one(c, R_APIKEY_LOOKUP, v, 1, fill_lookup, a, &a->found);
}

typedef struct lookup_profile_arg {
    lookup_arg k;
    const char *name;
    store_profile *prof;
    int prof_found;
} lookup_profile_arg;

static void fill_lookup_profile(db_stmt *st, void *p)
{
    lookup_profile_arg *a = p;
    fill_lookup(st, &a->k);
    a->prof_found = !db_col_null(st, 12); /* no profile: the LEFT JOIN's NULLs */
    if (a->prof_found)
        read_profile(st, 12, a->prof);
}

static qk_err txn_apikey_lookup_profile(db_conn *c, void *p)
{
    lookup_profile_arg *a = p;
    db_val v[] = {V_BLOB(a->k.hash, HASH_LEN), V_TEXT(a->name)};
    store_apikey_clear(a->k.out);
    if (a->prof_found)
        store_profile_clear(a->prof);
    a->k.found = a->prof_found = 0;
    return sql_one(c, R_APIKEY_PROFILE, v, 2, fill_lookup_profile, a, &a->k.found);
}

static qk_err sq_apikey_lookup_profile(qk_store *base, const uint8_t hash[32], const char *profile,
                                       store_apikey *out, uint8_t stored_hash[32], int *found,
                                       store_profile *prof, int *prof_found)
{
    lookup_profile_arg a = {{hash, out, stored_hash, 0}, profile, prof, 0};
    memset(out, 0, sizeof(*out));
    memset(prof, 0, sizeof(*prof));
    memset(stored_hash, 0, HASH_LEN);
    *found = *prof_found = 0;
    qk_err rc = check_text("profile", profile, 1);
    if (rc == QK_OK)
        rc = db_read1(SQL_DB(base), DB_NO_ORG, txn_apikey_lookup_profile, &a);
    if (rc != QK_OK) {
        store_apikey_clear(out);
        if (a.prof_found)
            store_profile_clear(prof);
        return rc;
    }
    if (!a.k.found)
        return not_found(found, "API key");
    *found = 1;
    *prof_found = a.prof_found;
    return QK_OK;
}

static qk_err sq_apikey_lookup(qk_store *base, const uint8_t hash[32], store_apikey *out,
                               uint8_t stored_hash[32], int *found)
{
    lookup_arg a = {hash, out, stored_hash, 0};
    memset(out, 0, sizeof(*out));
    memset(stored_hash, 0, HASH_LEN);
    *found = 0;
    qk_err rc = db_read1(SQL_DB(base), DB_NO_ORG, txn_apikey_lookup, &a);
    if (rc == QK_OK && !a.found)
        return not_found(found, "API key");
    *found = a.found;
    return rc;
}

static qk_err sq_apikey_get(qk_store *base, int64_t org, int64_t id, store_apikey *out, int *found)
{
    db_val v[] = {V_INT(org), V_INT(id)};
    memset(out, 0, sizeof(*out));
    return read_one(base, org, R_APIKEY_GET, v, 2, fill_apikey,
                    (void (*)(void *))store_apikey_clear, out, "API key", found);
}

/* ---- lists and simple changes ------------------------------------------- */

static qk_err sq_profile_list(qk_store *base, int64_t org, store_profile **out, size_t *n)
{
    db_val v[] = {V_INT(org)};
    return read_rows(base, org, R_PROFILE_LIST, v, 1, sizeof(**out), fill_profile,
                     (row_list_free_fn)store_profile_list_free, (void **)out, n);
}

static qk_err sq_profile_disable(qk_store *base, int64_t org, const char *name, int64_t now,
                                 const store_audit *audit, int *found)
{
    db_val v[] = {V_INT(org), V_TEXT(name), V_INT(now)};
    int64_t changes = 0;
    qk_err rc;
    *found = 0;
    if ((rc = check_text("profile name", name, 1)) != QK_OK ||
        (audit != NULL && (rc = check_audit(audit)) != QK_OK))
        return rc;
    char *meta = meta_json("{s:s,s:I}", "profile", name, "disabledAt", (json_int_t)now);
    rc = write_one(base, org, W_PROFILE_DISABLE, v, 3, audit, meta, &changes);
    free(meta);
    if (rc != QK_OK)
        return rc;
    if (changes == 0)
        return not_found(found, "profile");
    *found = 1;
    return QK_OK;
}

static qk_err sq_profile_set_policy(qk_store *base, int64_t org, const char *name,
                                    const char *policy, int64_t now, const store_audit *audit,
                                    int *found)
{
    db_val v[] = {V_INT(org), V_TEXT(name), policy != NULL ? V_TEXT(policy) : V_NULL, V_INT(now)};
    int64_t changes = 0;
    qk_err rc;
    *found = 0;
    if ((rc = check_text("profile name", name, 1)) != QK_OK ||
        (audit != NULL && (rc = check_audit(audit)) != QK_OK))
        return rc;
    char *meta = meta_json("{s:s,s:b}", "profile", name, "policy", policy != NULL);
    rc = write_one(base, org, W_PROFILE_SET_POLICY, v, 4, audit, meta, &changes);
    free(meta);
    if (rc != QK_OK)
        return rc;
    if (changes == 0)
        return not_found(found, "profile");
    *found = 1;
    return QK_OK;
}

static qk_err sq_signing_key_update(qk_store *base, int64_t org, int64_t id, qk_slice sealed,
                                    int *found)
{
    db_val v[] = {V_INT(org), V_INT(id), V_BLOB(sealed.data, sealed.len)};
    int64_t changes = 0;
    qk_err rc;
    *found = 0;
    if (sealed.len == 0 || sealed.len > MAX_BLOB)
        return qk_fail(QK_ERR_INVALID_ARG, "sealed key of %zu bytes", sealed.len);
    if ((rc = write_one(base, org, W_SKEY_UPDATE, v, 3, NULL, NULL, &changes)) != QK_OK)
        return rc;
    if (changes == 0)
        return not_found(found, "signing key");
    *found = 1;
    return QK_OK;
}

static void fill_org(db_stmt *st, void *e)
{
    store_org *o = e;
    o->id = db_col_int(st, 0);
    o->name = col_strdup(st, 1);
}

static qk_err sq_apikey_list(qk_store *base, int64_t org, store_apikey **out, size_t *n)
{
    db_val v[] = {V_INT(org)};
    return read_rows(base, org, R_APIKEY_LIST, v, 1, sizeof(**out), fill_apikey,
                     (row_list_free_fn)store_apikey_list_free, (void **)out, n);
}

static qk_err sq_org_list(qk_store *base, store_org **out, size_t *n)
{
    return read_rows(base, DB_NO_ORG, R_ORG_LIST, NULL, 0, sizeof(**out), fill_org,
                     (row_list_free_fn)store_org_list_free, (void **)out, n);
}

/* ---- Azure secret leases ------------------------------------------------ */

typedef struct lease_acquire_arg {
    int64_t org;
    const char *app, *node;
    int max;
    int64_t until, id;
    int granted;
} lease_acquire_arg;

/* Count and insert in one transaction. SQLite's writer holds the database
 * for it; on PostgreSQL the org's log head is locked first (the same row an
 * audit append locks), so two nodes cannot both see room for one more. */
static qk_err txn_lease_acquire(db_conn *c, void *p)
{
    lease_acquire_arg *a = p;
    db_val v[] = {V_INT(a->org), V_TEXT(a->app), V_TEXT(a->node), V_INT(now_unix()),
                  V_INT(a->until)};
    int64_t live = 0, size = 0;
    int found = 0;
    qk_err rc;
    a->granted = 0;
    a->id = 0;
    if ((rc = sql_one(c, Q_HEAD_LOCK, v, 1, sql_fill_i64, &size, &found)) != QK_OK ||
        (rc = sql_one(c, Q_LEASE_COUNT, v, 2, sql_fill_i64, &live, &found)) != QK_OK)
        return rc;
    if (live >= a->max)
        return QK_OK;
    if ((rc = insert_id(c, W_LEASE_INSERT, v, 5, &a->id)) == QK_OK)
        a->granted = 1;
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
    if ((rc = db_write(SQL_DB(base), org, txn_lease_acquire, &a)) == QK_OK) {
        *lease_id = a.id;
        *granted = a.granted;
    }
    return rc;
}

static qk_err sq_lease_update(qk_store *base, int64_t org, int64_t lease_id, const char *key_id,
                              int64_t lease_until)
{
    db_val v[] = {V_INT(org), V_INT(lease_id), V_TEXT(key_id), V_INT(lease_until)};
    qk_err rc = check_text("key id", key_id, 0);
    return rc != QK_OK ? rc : write_one(base, org, W_LEASE_UPDATE, v, 4, NULL, NULL, NULL);
}

static qk_err sq_lease_release(qk_store *base, int64_t org, int64_t lease_id, int64_t now)
{
    db_val v[] = {V_INT(org), V_INT(lease_id), V_INT(now)};
    return write_one(base, org, W_LEASE_RELEASE, v, 3, NULL, NULL, NULL);
}

static qk_err sq_lease_release_key(qk_store *base, int64_t org, const char *app, const char *key_id,
                                   int64_t now)
{
    db_val v[] = {V_INT(org), V_TEXT(app), V_TEXT(key_id), V_INT(now)};
    qk_err rc;
    if ((rc = check_text("app", app, 1)) != QK_OK ||
        (rc = check_text("key id", key_id, 1)) != QK_OK)
        return rc;
    return write_one(base, org, W_LEASE_RELEASE_KEY, v, 4, NULL, NULL, NULL);
}

static void fill_lease(db_stmt *st, void *e)
{
    store_lease *l = e;
    l->id = db_col_int(st, 0);
    l->node = col_strdup(st, 1);
    l->key_id = col_strdup(st, 2);
    l->created_at = db_col_int(st, 3);
    l->lease_until = db_col_int(st, 4);
}

static qk_err sq_lease_list(qk_store *base, int64_t org, const char *app, store_lease **out,
                            size_t *n)
{
    db_val v[] = {V_INT(org), V_TEXT(app)};
    return read_rows(base, org, R_LEASE_LIST, v, 2, sizeof(**out), fill_lease,
                     (row_list_free_fn)store_lease_list_free, (void **)out, n);
}

/* ---- instance secrets and operator tokens (no org) ---------------------- */

typedef struct secret_row {
    qk_buf sealed, pub;
} secret_row;

static void fill_secret(db_stmt *st, void *p)
{
    secret_row *r = p;
    col_buf(st, 0, &r->sealed);
    col_buf(st, 1, &r->pub);
}

static void clear_secret(void *p)
{
    secret_row *r = p;
    qk_buf_free(&r->sealed);
    qk_buf_free(&r->pub);
}

static qk_err sq_instance_secret_get(qk_store *base, const char *name, qk_buf *sealed, qk_buf *pub,
                                     int *found)
{
    secret_row r = {{NULL, 0}, {NULL, 0}};
    db_val v[] = {V_TEXT(name)};
    qk_err rc =
        read_maybe(base, DB_NO_ORG, R_SECRET_GET, v, 1, fill_secret, clear_secret, &r, found);
    if (rc == QK_OK && *found) {
        *sealed = r.sealed;
        *pub = r.pub;
    }
    return rc;
}

static qk_err sq_instance_secret_put(qk_store *base, const char *name, qk_slice sealed,
                                     qk_slice pub)
{
    db_val v[] = {V_TEXT(name), V_BLOB(sealed.data, sealed.len), V_BLOB(pub.data, pub.len),
                  V_INT(now_unix())};
    return write_one(base, DB_NO_ORG, W_SECRET_INSERT, v, 4, NULL, NULL, NULL);
}

static qk_err sq_operator_token_create(qk_store *base, const char *name, const uint8_t hash[32],
                                       int64_t *id)
{
    db_val v[] = {V_TEXT(name), V_BLOB(hash, 32), V_INT(now_unix())};
    insert_arg a = {W_OPTOKEN_INSERT, v, 3, 0, NULL, NULL, NULL};
    qk_err rc = check_text("token name", name, 1);
    *id = 0;
    return rc != QK_OK ? rc : write_insert(base, DB_NO_ORG, &a, id);
}

typedef struct optoken_row {
    int64_t id;
    uint8_t hash[32];
    int ok;
} optoken_row;

static void fill_optoken(db_stmt *st, void *p)
{
    optoken_row *r = p;
    size_t n = 0;
    const uint8_t *h = db_col_blob(st, 1, &n);
    r->id = db_col_int(st, 0);
    r->ok = h != NULL && n == 32;
    if (r->ok)
        memcpy(r->hash, h, 32);
}

static qk_err sq_operator_token_lookup(qk_store *base, const uint8_t hash[32], int64_t *id,
                                       int *found)
{
    optoken_row *rows = NULL;
    size_t n = 0;
    db_val v[] = {V_BLOB(hash, 32)};
    qk_err rc = read_rows(base, DB_NO_ORG, R_OPTOKEN_LOOKUP, v, 1, sizeof(*rows), fill_optoken,
                          free_plain, (void **)&rows, &n);
    /* Matched on the hash by the database; compared again in constant time. */
    *found = rc == QK_OK && n == 1 && rows[0].ok && sodium_memcmp(rows[0].hash, hash, 32) == 0;
    *id = *found ? rows[0].id : 0;
    free(rows);
    return rc;
}

static qk_err sq_operator_token_revoke(qk_store *base, int64_t id, int *found)
{
    db_val v[] = {V_INT(id), V_INT(now_unix())};
    int64_t changes = 0;
    qk_err rc = write_one(base, DB_NO_ORG, W_OPTOKEN_REVOKE, v, 2, NULL, NULL, &changes);
    *found = rc == QK_OK && changes > 0;
    if (rc == QK_OK && !*found)
        return not_found(found, "active operator token");
    return rc;
}

static void fill_optoken_info(db_stmt *st, void *p)
{
    store_operator_token *t = p;
    t->id = db_col_int(st, 0);
    t->name = col_strdup(st, 1);
    t->created_at = db_col_int(st, 2);
    t->revoked_at = db_col_int(st, 3);
}

static qk_err sq_operator_token_list(qk_store *base, store_operator_token **out, size_t *n)
{
    return read_rows(base, DB_NO_ORG, R_OPTOKEN_LIST, NULL, 0, sizeof(**out), fill_optoken_info,
                     (row_list_free_fn)store_operator_token_list_free, (void **)out, n);
}

/* ---- master-key rotation: every sealed blob ------------------------------ */

/* Org by org: under row-level security no transaction sees two orgs. */
static qk_err sq_signing_key_list_all(qk_store *base, store_signing_key **out, size_t *n)
{
    store_org *orgs = NULL;
    size_t norgs = 0, count = 0;
    store_signing_key *all = NULL;
    qk_err rc = sq_org_list(base, &orgs, &norgs);
    *out = NULL;
    *n = 0;
    for (size_t i = 0; rc == QK_OK && i < norgs; i++) {
        store_signing_key *rows = NULL;
        size_t k = 0;
        db_val v[] = {V_INT(orgs[i].id)};
        rc = read_rows(base, orgs[i].id, R_SKEY_ALL, v, 1, sizeof(*rows), fill_signing_key,
                       (row_list_free_fn)store_signing_key_list_free, (void **)&rows, &k);
        if (rc == QK_OK && k > 0) {
            all = xrealloc(all, (count + k) * sizeof(*all));
            memcpy(all + count, rows, k * sizeof(*rows));
            count += k;
        }
        free(rows);
    }
    store_org_list_free(orgs, norgs);
    if (rc != QK_OK) {
        store_signing_key_list_free(all, count);
        return rc;
    }
    *out = all;
    *n = count;
    return QK_OK;
}

/* One compare-and-swap re-seal: statement `id` binds `key` values, then old, then new. */
static qk_err reseal(qk_store *s, int64_t org, int id, db_val *v, int nkey, qk_slice old,
                     qk_slice sealed, const char *what, int *found)
{
    int64_t changes = 0;
    qk_err rc;
    *found = 0;
    if (sealed.len == 0 || sealed.len > MAX_BLOB || old.len == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "%s: sealed blob of %zu bytes", what, sealed.len);
    v[nkey] = V_BLOB(old.data, old.len);
    v[nkey + 1] = V_BLOB(sealed.data, sealed.len);
    if ((rc = write_one(s, org, id, v, nkey + 2, NULL, NULL, &changes)) != QK_OK)
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
    db_val v[4] = {V_INT(org), V_INT(id)};
    return reseal(base, org, W_SKEY_RESEAL, v, 2, old, sealed, "re-seal signing key", found);
}

static void fill_name(db_stmt *st, void *e)
{
    *(char **)e = col_strdup(st, 0);
}

static qk_err sq_instance_secret_names(qk_store *base, char ***names, size_t *n)
{
    return read_rows(base, DB_NO_ORG, R_SECRET_NAMES, NULL, 0, sizeof(**names), fill_name,
                     (row_list_free_fn)store_names_free, (void **)names, n);
}

static qk_err sq_instance_secret_reseal(qk_store *base, const char *name, qk_slice old,
                                        qk_slice sealed, int *found)
{
    db_val v[3] = {V_TEXT(name)};
    qk_err rc = check_text("instance secret name", name, 1);
    *found = 0;
    if (rc != QK_OK)
        return rc;
    return reseal(base, DB_NO_ORG, W_SECRET_RESEAL, v, 1, old, sealed, "re-seal instance secret",
                  found);
}

/* ---- open / close ------------------------------------------------------- */

static void sq_close(qk_store *base)
{
    sql_store *s = (sql_store *)base;
    if (s == NULL)
        return;
    if (s->d != NULL)
        s->d->ops->close(s->d);
    free(s);
}

static const store_ops sql_ops = {
    .close = sq_close,
    .org_create = sq_org_create,
    .user_create = sq_user_create,
    .signing_key_create = sq_signing_key_create,
    .signing_key_get = sq_signing_key_get,
    .profile_create = sq_profile_create,
    .profile_get = sq_profile_get,
    .apikey_create = sq_apikey_create,
    .apikey_lookup = sq_apikey_lookup,
    .apikey_lookup_profile = sq_apikey_lookup_profile,
    .apikey_list = sq_apikey_list,
    .apikey_revoke = sq_apikey_revoke,
    .apikey_touch = sq_apikey_touch,
    .request_record = sq_request_record,
    .request_get = sq_request_get,
    .audit_append = sl_audit_append,
    .audit_verify = sl_audit_verify,
    .audit_count = sl_audit_count,
    .org_find = sq_org_find,
    .apikey_get = sq_apikey_get,
    .request_record_async = sq_request_record_async,
    .profile_list = sq_profile_list,
    .profile_disable = sq_profile_disable,
    .profile_set_policy = sq_profile_set_policy,
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
    .usage = sl_usage,
    .log_prove = sl_log_prove,
    .log_entries = sl_log_entries,
    .log_lookup = sl_log_lookup,
    .log_find_request = sl_log_find_request,
    .checkpoint_latest = sl_checkpoint_latest,
    .checkpoint_add = sl_checkpoint_add,
    .instance_secret_get = sq_instance_secret_get,
    .instance_secret_put = sq_instance_secret_put,
    .signing_key_list_all = sq_signing_key_list_all,
    .signing_key_reseal = sq_signing_key_reseal,
    .instance_secret_names = sq_instance_secret_names,
    .instance_secret_reseal = sq_instance_secret_reseal,
};

void store_sql_ops(store_ops *ops)
{
    *ops = sql_ops;
}
