/* The asynchronous queue's operations (store.h, docs/api.md): requests
 * queued with their audit entry and Idempotency-Key, claimed by workers
 * under a lease, finished under a fence (the claim's attempt number),
 * cancelled, put back, listed and counted.
 *
 * The claim is the one place the dialects differ in steps: PostgreSQL claims
 * across orgs in one SECURITY DEFINER function (RLS lets no other statement
 * see more than one org; FOR UPDATE SKIP LOCKED keeps nodes apart), SQLite in
 * three statements inside its single writer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/util.h"
#include "store/store_sql.h"

/* ---- enqueue --------------------------------------------------------------- */

typedef struct enqueue_job {
    const store_sign_request *req;
    const store_audit *audit;
    const store_idem *idem;
    store_enqueued *out;
    store_done_fn done;
    void *arg;
} enqueue_job;

typedef struct idem_row {
    char request_id[40];
    uint8_t body_hash[HASH_LEN];
    size_t hash_len;
    int sync;
} idem_row;

static void fill_idem(db_stmt *st, void *p)
{
    idem_row *r = p;
    const char *id = db_col_text(st, 0);
    size_t n = 0;
    const uint8_t *h = db_col_blob(st, 1, &n);
    snprintf(r->request_id, sizeof(r->request_id), "%s", id != NULL ? id : "");
    r->hash_len = n <= HASH_LEN ? n : 0;
    if (h != NULL && r->hash_len > 0)
        memcpy(r->body_hash, h, r->hash_len);
    r->sync = (int)db_col_int(st, 2);
}

static void fill_claimed_id(db_stmt *st, void *p)
{
    (void)st;
    *(int *)p = 1;
}

/* Claims the key for this request, or says whose it is. *ours = 1: claimed. */
static qk_err idem_claim(db_conn *c, const store_sign_request *q, const store_idem *k,
                         store_enqueued *out, int *ours)
{
    db_val v[] = {V_INT(q->org_id), V_TEXT(k->credential),
                  V_TEXT(k->key),   V_BLOB(k->body_hash, HASH_LEN),
                  V_TEXT(q->id),    V_INT((q->options & REQ_OPT_SYNC) != 0),
                  V_INT(k->now),    V_INT(k->expired_before)};
    int claimed = 0, found = 0;
    idem_row row;
    qk_err rc = sql_one(c, W_IDEM_CLAIM, v, 8, fill_claimed_id, &claimed, &found);
    *ours = 0;
    if (rc != QK_OK || found) {
        *ours = found;
        return rc;
    }
    memset(&row, 0, sizeof(row));
    if ((rc = sql_one(c, R_IDEM_GET, v, 3, fill_idem, &row, &found)) != QK_OK)
        return rc;
    if (!found) /* taken and gone within one transaction: cannot happen, say so */
        return qk_fail(QK_ERR_IO, "idempotency key vanished while claimed");
    out->existing = 1;
    out->sync = row.sync;
    out->reused = row.hash_len != HASH_LEN || memcmp(row.body_hash, k->body_hash, HASH_LEN) != 0;
    memcpy(out->request_id, row.request_id, sizeof(out->request_id));
    return QK_OK;
}

static qk_err txn_enqueue(db_conn *c, void *p)
{
    enqueue_job *j = p;
    const store_sign_request *q = j->req;
    int ours = 1;
    qk_err rc;
    memset(j->out, 0, sizeof(*j->out));
    if (j->idem != NULL && ((rc = idem_claim(c, q, j->idem, j->out, &ours)) != QK_OK || !ours))
        return rc;
    int64_t now_ms = q->queued_ms != 0 ? q->queued_ms : now_unix() * 1000;
    db_val v[17];
    sql_request_vals(q, v);
    v[4] = V_INT(REQ_QUEUED);
    v[13] = V_INT(now_ms / 1000);
    v[14] = V_INT(now_ms);
    v[15] = V_INT(q->options);
    v[16] = V_TEXT(q->callback_url);
    if ((rc = sql_exec_later(c, W_REQ_ENQUEUE, v, 17, 1, "request not queued")) != QK_OK)
        return rc;
    return j->audit != NULL ? log_append(c, j->audit, NULL) : QK_OK;
}

static void enqueue_done(void *arg, qk_err rc, const char *detail)
{
    enqueue_job *j = arg;
    j->done(j->arg, rc, detail);
    free(j);
}

static qk_err check_idem(const store_idem *k)
{
    qk_err rc;
    if (k == NULL)
        return QK_OK;
    if ((rc = check_text("idempotency credential", k->credential, 1)) != QK_OK ||
        (rc = check_text("idempotency key", k->key, 1)) != QK_OK)
        return rc;
    return QK_OK;
}

static qk_err sq_request_enqueue_async(qk_store *base, const store_sign_request *req,
                                       const store_audit *audit, const store_idem *idem,
                                       store_enqueued *out, store_done_fn done, void *arg)
{
    qk_db *d = SQL_DB(base);
    qk_err rc;
    if ((rc = sql_check_request(req, audit)) != QK_OK || (rc = check_idem(idem)) != QK_OK)
        return rc;
    enqueue_job *j = xmalloc(sizeof(*j));
    *j = (enqueue_job){req, audit, idem, out, done, arg};
    if (d->ops->write_async == NULL) {
        rc = db_write(d, req->org_id, txn_enqueue, j);
        done(arg, rc, rc == QK_OK ? NULL : qk_error_detail());
        free(j);
        return QK_OK;
    }
    if ((rc = d->ops->write_async(d, req->org_id, txn_enqueue, j, enqueue_done, j)) != QK_OK)
        free(j);
    return rc;
}

/* ---- claim ----------------------------------------------------------------- */

typedef struct claim_arg {
    const char *node;
    int64_t now_ms, lease_ms;
    int max;
    store_claim *rows;
    size_t n;
} claim_arg;

static void fill_claim(db_stmt *st, void *p)
{
    store_claim *c = p;
    const char *id = db_col_text(st, 1);
    c->org_id = db_col_int(st, 0);
    snprintf(c->id, sizeof(c->id), "%s", id != NULL ? id : "");
    c->attempts = db_col_null(st, 2) ? 0 : db_col_int(st, 2);
}

static void claim_list_free(void *rows, size_t n)
{
    (void)n;
    free(rows);
}

/* The orgs with ready rows, in org order from a random start, so no org is
 * always first. */
static qk_err ready_orgs(db_conn *c, int64_t now_ms, int64_t **orgs, size_t *n)
{
    int64_t prev = -1, org = 0;
    size_t cap = 0;
    int found = 1;
    qk_err rc = QK_OK;
    *orgs = NULL;
    *n = 0;
    while (rc == QK_OK) {
        db_val v[] = {V_INT(prev), V_INT(now_ms)};
        if ((rc = sql_one(c, R_QUEUE_NEXT_ORG, v, 2, sql_fill_i64, &org, &found)) != QK_OK ||
            !found)
            break;
        if (*n == cap) {
            cap = cap ? 2 * cap : 8;
            *orgs = xrealloc(*orgs, cap * sizeof(int64_t));
        }
        (*orgs)[(*n)++] = org;
        prev = org;
    }
    if (rc == QK_OK && *n > 1) { /* rotate by a random amount */
        size_t k = randombytes_uniform((uint32_t)*n), i;
        int64_t *rot = xcalloc(*n, sizeof(int64_t));
        for (i = 0; i < *n; i++)
            rot[i] = (*orgs)[(i + k) % *n];
        free(*orgs);
        *orgs = rot;
    }
    return rc;
}

/* Up to `want` of the org's oldest ready rows, each taken (PROCESSING under
 * the lease), appended to a->rows; *taken: how many. */
static qk_err take_from_org(db_conn *c, claim_arg *a, int64_t org, int want, int *taken)
{
    db_val v[] = {V_INT(org), V_INT(a->now_ms), V_INT(want)};
    void *got = NULL;
    size_t k = 0;
    qk_err rc = sql_rows(c, R_QUEUE_READY, v, 3, sizeof(store_claim), fill_claim, claim_list_free,
                         &got, &k);
    store_claim *r = got;
    *taken = 0;
    for (size_t i = 0; rc == QK_OK && i < k; i++) {
        db_val t[] = {V_INT(r[i].org_id), V_TEXT(r[i].id), V_INT(a->now_ms + a->lease_ms),
                      V_TEXT(a->node), V_INT(a->now_ms / 1000)};
        int64_t attempts = 0;
        int found = 0;
        if ((rc = sql_one(c, W_QUEUE_TAKE, t, 5, sql_fill_i64, &attempts, &found)) != QK_OK ||
            !found)
            continue;
        r[i].attempts = attempts;
        a->rows = xrealloc(a->rows, (a->n + 1) * sizeof(store_claim));
        a->rows[a->n++] = r[i];
        (*taken)++;
    }
    free(got);
    return rc;
}

/* Rounds over the orgs with ready rows, each org's share per round, until
 * the claim is full or no org has more. */
static qk_err claim_sqlite(db_conn *c, claim_arg *a)
{
    db_val now[] = {V_INT(a->now_ms)};
    int64_t *orgs = NULL;
    size_t norgs = 0, busy;
    qk_err rc = sql_exec(c, W_QUEUE_RECLAIM, now, 1, NULL);
    if (rc == QK_OK)
        rc = ready_orgs(c, a->now_ms, &orgs, &norgs);
    busy = norgs;
    while (rc == QK_OK && busy > 0 && a->n < (size_t)a->max) {
        int left = a->max - (int)a->n;
        int per = (left + (int)busy - 1) / (int)busy;
        busy = 0;
        for (size_t i = 0; rc == QK_OK && i < norgs && a->n < (size_t)a->max; i++) {
            int taken = 0, want = per < a->max - (int)a->n ? per : a->max - (int)a->n;
            if (orgs[i] < 0) /* no more ready rows */
                continue;
            rc = take_from_org(c, a, orgs[i], want, &taken);
            if (taken < want)
                orgs[i] = -1;
            else
                busy++;
        }
    }
    free(orgs);
    if (rc != QK_OK) {
        free(a->rows);
        a->rows = NULL;
        a->n = 0;
    }
    return rc;
}

static qk_err txn_claim(db_conn *c, void *p)
{
    claim_arg *a = p;
    void *rows = NULL;
    qk_err rc;
    free(a->rows); /* an earlier run's */
    a->rows = NULL;
    a->n = 0;
    if (c->d->dialect == DB_SQLITE)
        return claim_sqlite(c, a);
    db_val v[] = {V_TEXT(a->node), V_INT(a->now_ms), V_INT(a->lease_ms), V_INT(a->max)};
    if ((rc = sql_rows(c, Q_QUEUE_CLAIM, v, 4, sizeof(store_claim), fill_claim, claim_list_free,
                       &rows, &a->n)) == QK_OK)
        a->rows = rows;
    return rc;
}

static qk_err sq_queue_claim(qk_store *base, const char *node, int64_t now_ms, int64_t lease_ms,
                             int max, store_claim **out, size_t *n)
{
    claim_arg a = {node, now_ms, lease_ms, max, NULL, 0};
    qk_err rc;
    *out = NULL;
    *n = 0;
    if (max <= 0 || lease_ms <= 0)
        return qk_fail(QK_ERR_INVALID_ARG, "a claim needs a positive count and lease");
    if ((rc = check_text("node", node, 1)) != QK_OK)
        return rc;
    if ((rc = db_write(SQL_DB(base), DB_NO_ORG, txn_claim, &a)) != QK_OK) {
        free(a.rows);
        return rc;
    }
    *out = a.rows;
    *n = a.n;
    return QK_OK;
}

/* ---- finish ---------------------------------------------------------------- */

typedef struct finish_job {
    int64_t org;
    char id[40];
    int64_t attempt;
    store_finish f;
    const store_audit *audit;
    store_done_fn done;
    void *arg;
} finish_job;

static qk_err txn_finish(db_conn *c, void *p)
{
    finish_job *j = p;
    const store_finish *f = &j->f;
    int final = f->status != REQ_QUEUED;
    db_val v[] = {V_INT(j->org),
                  V_TEXT(j->id),
                  V_INT(j->attempt),
                  V_INT(f->status),
                  V_BLOB(f->signature.data, f->signature.len),
                  V_BLOB(f->chain_der.data, f->chain_der.len),
                  V_TEXT(f->error),
                  V_INT(final ? f->now : 0),
                  V_INT(f->now),
                  V_INT(f->run_after)};
    char mismatch[96];
    if (f->signature.len == 0)
        v[4] = V_NULL;
    if (f->chain_der.len == 0)
        v[5] = V_NULL;
    snprintf(mismatch, sizeof(mismatch), "lease lost: request %s was claimed again", j->id);
    qk_err rc = sql_exec_later(c, W_REQ_FINISH, v, 10, 1, mismatch);
    if (rc == QK_OK && j->audit != NULL)
        rc = log_append(c, j->audit, NULL);
    return rc;
}

static void finish_done(void *arg, qk_err rc, const char *detail)
{
    finish_job *j = arg;
    j->done(j->arg, rc, detail);
    free(j);
}

static qk_err check_finish(int64_t org, const char *id, const store_finish *f,
                           const store_audit *audit)
{
    qk_err rc;
    if (org <= 0 || id == NULL || strlen(id) >= 40)
        return qk_fail(QK_ERR_INVALID_ARG, "finish without an org or a request id");
    if (f->status != REQ_SIGNED && f->status != REQ_FAILED && f->status != REQ_QUEUED)
        return qk_fail(QK_ERR_INVALID_ARG, "a claimed request ends SIGNED, FAILED or QUEUED");
    if (f->status == REQ_SIGNED && f->signature.len == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "SIGNED without a signature");
    if (f->signature.len > MAX_BLOB || f->chain_der.len > MAX_BLOB)
        return qk_fail(QK_ERR_TOO_LARGE, "signature or chain too large");
    if ((rc = check_text("error", f->error, 0)) != QK_OK)
        return rc;
    if (audit != NULL) {
        if ((rc = check_audit(audit)) != QK_OK)
            return rc;
        if (audit->org_id != org)
            return qk_fail(QK_ERR_INVALID_ARG, "audit row and request belong to different orgs");
    }
    return QK_OK;
}

static qk_err sq_request_finish_async(qk_store *base, int64_t org, const char *id, int64_t attempt,
                                      const store_finish *f, const store_audit *audit,
                                      store_done_fn done, void *arg)
{
    qk_db *d = SQL_DB(base);
    qk_err rc = check_finish(org, id, f, audit);
    if (rc != QK_OK)
        return rc;
    finish_job *j = xcalloc(1, sizeof(*j));
    j->org = org;
    snprintf(j->id, sizeof(j->id), "%s", id);
    j->attempt = attempt;
    j->f = *f;
    j->audit = audit;
    j->done = done;
    j->arg = arg;
    if (d->ops->write_async == NULL) {
        rc = db_write(d, org, txn_finish, j);
        done(arg, rc, rc == QK_OK ? NULL : qk_error_detail());
        free(j);
        return QK_OK;
    }
    if ((rc = d->ops->write_async(d, org, txn_finish, j, finish_done, j)) != QK_OK)
        free(j);
    return rc;
}

/* ---- cancel, retry --------------------------------------------------------- */

typedef struct change_arg {
    int64_t org;
    const char *id;
    int from[2];    /* the statuses the change applies to (-1: none) */
    int stmt;       /* W_REQ_CANCEL or W_REQ_REQUEUE */
    int64_t t3, t4; /* the statement's $3, $4 */
    const char *t3s;
    const store_audit *audit;
    req_status before;
    int found;
} change_arg;

static qk_err txn_change(db_conn *c, void *p)
{
    change_arg *a = p;
    db_val v[] = {V_INT(a->org), V_TEXT(a->id), V_INT(a->t3), V_INT(a->t4)};
    int64_t status = 0;
    qk_err rc = sql_one(c, R_REQ_STATUS, v, 2, sql_fill_i64, &status, &a->found);
    if (rc != QK_OK || !a->found)
        return rc;
    a->before = (req_status)status;
    if (status != a->from[0] && status != a->from[1])
        return QK_OK;
    if (a->t3s != NULL)
        v[2] = V_TEXT(a->t3s);
    if ((rc = sql_exec(c, a->stmt, v, 4, NULL)) != QK_OK)
        return rc;
    return a->audit != NULL ? log_append(c, a->audit, NULL) : QK_OK;
}

static qk_err run_change(qk_store *base, change_arg *a, req_status *before, int *found)
{
    qk_err rc;
    *found = 0;
    *before = REQ_QUEUED;
    if (a->id == NULL || strlen(a->id) >= 40)
        return not_found(found, "request");
    if (a->audit != NULL && (rc = check_audit(a->audit)) != QK_OK)
        return rc;
    if ((rc = db_write(SQL_DB(base), a->org, txn_change, a)) != QK_OK)
        return rc;
    if (!a->found)
        return not_found(found, "request");
    *found = 1;
    *before = a->before;
    return QK_OK;
}

static qk_err sq_request_cancel(qk_store *base, int64_t org, const char *id, int64_t now,
                                const store_audit *audit, req_status *before, int *found)
{
    change_arg a = {org,
                    id,
                    {REQ_QUEUED, REQ_PENDING_APPROVAL},
                    W_REQ_CANCEL,
                    0,
                    now,
                    "cancelled",
                    audit,
                    REQ_QUEUED,
                    0};
    return run_change(base, &a, before, found);
}

static qk_err sq_request_retry(qk_store *base, int64_t org, const char *id, int64_t now_ms,
                               const store_audit *audit, req_status *before, int *found)
{
    change_arg a = {
        org,        id, {REQ_FAILED, -1}, W_REQ_REQUEUE, now_ms, now_ms / 1000, NULL, audit,
        REQ_QUEUED, 0};
    return run_change(base, &a, before, found);
}

/* ---- list, stats ----------------------------------------------------------- */

typedef struct list_arg {
    const db_val *v;
    void *rows;
    size_t n;
} list_arg;

static void request_list_free(void *rows, size_t n)
{
    store_sign_request_list_free(rows, n);
}

static qk_err txn_list(db_conn *c, void *p)
{
    list_arg *a = p;
    if (a->rows != NULL)
        request_list_free(a->rows, a->n);
    a->rows = NULL;
    a->n = 0;
    return sql_rows(c, R_REQ_LIST, a->v, 4, sizeof(store_sign_request), sql_fill_request,
                    request_list_free, &a->rows, &a->n);
}

static qk_err sq_request_list(qk_store *base, int64_t org, int status, const char *before,
                              int limit, store_sign_request **out, size_t *n)
{
    /* Ids are "req_" + lowercase hex: "req_g" sorts after every one. */
    db_val v[] = {V_INT(org), V_INT(status), V_TEXT(before != NULL ? before : "req_g"),
                  V_INT(limit)};
    list_arg a = {v, NULL, 0};
    qk_err rc;
    *out = NULL;
    *n = 0;
    if (limit <= 0 || status >= REQ__COUNT)
        return qk_fail(QK_ERR_INVALID_ARG, "bad limit or status");
    if ((rc = check_text("cursor", before, 0)) != QK_OK)
        return rc;
    if ((rc = db_read1(SQL_DB(base), org, txn_list, &a)) != QK_OK)
        return rc;
    *out = a.rows;
    *n = a.n;
    return QK_OK;
}

typedef struct stats_arg {
    int64_t org;
    store_queue_stats *out;
} stats_arg;

static qk_err txn_stats(db_conn *c, void *p)
{
    stats_arg *a = p;
    db_val v[] = {V_INT(a->org)};
    db_stmt *st = NULL;
    int row = 0;
    memset(a->out, 0, sizeof(*a->out));
    qk_err rc = a->org > 0 ? sql_stmt(c, R_QUEUE_STATS_ORG, v, 1, &st)
                           : sql_stmt(c, R_QUEUE_STATS_ALL, NULL, 0, &st);
    while (rc == QK_OK && (rc = db_step(st, &row)) == QK_OK && row) {
        int64_t status = db_col_int(st, 0), oldest = db_col_null(st, 2) ? 0 : db_col_int(st, 2);
        if (status < 0 || status >= REQ__COUNT)
            continue;
        /* PostgreSQL answers one row per org and status: summed here. */
        a->out->count[status] += db_col_int(st, 1);
        if (status == REQ_QUEUED && oldest > 0 &&
            (a->out->oldest_queued_ms == 0 || oldest < a->out->oldest_queued_ms))
            a->out->oldest_queued_ms = oldest;
    }
    db_done(st);
    return rc;
}

static qk_err sq_queue_stats(qk_store *base, int64_t org, store_queue_stats *out)
{
    stats_arg a = {org, out};
    memset(out, 0, sizeof(*out));
    return db_read(SQL_DB(base), org > 0 ? org : DB_NO_ORG, txn_stats, &a);
}

void store_queue_ops(store_ops *ops)
{
    ops->request_enqueue_async = sq_request_enqueue_async;
    ops->queue_claim = sq_queue_claim;
    ops->request_finish_async = sq_request_finish_async;
    ops->request_cancel = sq_request_cancel;
    ops->request_retry = sq_request_retry;
    ops->request_list = sq_request_list;
    ops->queue_stats = sq_queue_stats;
}
