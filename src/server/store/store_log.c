/* The store's audit log: every entry a leaf of its org's Merkle tree
 * (docs/transparency.md), written in the transaction of the change it
 * records; proofs, entries, checkpoints and usage read from it; and the check
 * of `qwickd audit verify`, which recomputes all of it from the rows. Written
 * once over db.h, like store_sql.c. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "common/hex.h"
#include "common/tlog.h"
#include "core/util.h"
#include "store/store.h"
#include "store/store_sql.h"

qk_err check_audit(const store_audit *a)
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

char *meta_json(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *j = json_vpack_ex(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    return s != NULL ? s : xstrdup("{}");
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
static void read_entry(db_stmt *st, tlog_entry *e)
{
    *e = (tlog_entry){
        .org_id = db_col_int(st, 0),
        .seq = db_col_int(st, 1),
        .version = (int)db_col_int(st, 2),
        .ts = db_col_int(st, 3),
        .actor = (char *)db_col_text(st, 4),
        .client_ip = (char *)db_col_text(st, 5),
        .action = (char *)db_col_text(st, 6),
        .request_id = (char *)db_col_text(st, 7),
        .format = (char *)db_col_text(st, 8),
        .algorithm = (char *)db_col_text(st, 9),
        .digest_hex = (char *)db_col_text(st, 10),
        .profile = (char *)db_col_text(st, 11),
        .filename = (char *)db_col_text(st, 12),
        .signer_fp = (char *)db_col_text(st, 13),
        .sig_sha256 = (char *)db_col_text(st, 14),
        .sigval_sha256 = (char *)db_col_text(st, 15),
        .outcome = db_col_int(st, 16),
        .detail = (char *)db_col_text(st, 17),
        .meta = (char *)db_col_text(st, 18),
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

typedef struct hash_row {
    tlog_hash h;
    int ok;
} hash_row;

static void fill_hash(db_stmt *st, void *p)
{
    hash_row *r = p;
    size_t n = 0;
    const uint8_t *h = db_col_blob(st, 0, &n);
    r->ok = h != NULL && n == TLOG_HASH_LEN;
    if (r->ok)
        memcpy(r->h, h, TLOG_HASH_LEN);
}

/* Reads node `pos` of the org's tree. */
static qk_err node_get(db_conn *c, int64_t org, int64_t pos, tlog_hash out)
{
    db_val v[] = {V_INT(org), V_INT(pos)};
    hash_row r = {.ok = 0};
    int found = 0;
    qk_err rc = sql_one(c, Q_NODE_GET, v, 2, fill_hash, &r, &found);
    if (rc != QK_OK)
        return rc;
    if (!found || !r.ok)
        return qk_fail(QK_ERR_IO, "log node %" PRId64 " of org %" PRId64 " missing or corrupt",
                       pos, org);
    memcpy(out, r.h, TLOG_HASH_LEN);
    return QK_OK;
}

static qk_err node_put(db_conn *c, int64_t org, int64_t pos, const tlog_hash h)
{
    db_val v[] = {V_INT(org), V_INT(pos), V_BLOB(h, TLOG_HASH_LEN)};
    return sql_exec_later(c, W_NODE_INSERT, v, 3, -1, NULL);
}

/* The right edge of an org's tree of `size` leaves: the roots of its
 * complete subtrees, largest first (one per set bit of the size). Kept in
 * the log head, so an append reads no node: the left siblings it hashes with
 * are exactly these. */
typedef struct log_edge {
    tlog_hash h[TLOG_MAX_PROOF];
    int n;
} log_edge;

static int popcount64(int64_t x)
{
    int n = 0;
    for (uint64_t u = (uint64_t)x; u != 0; u &= u - 1)
        n++;
    return n;
}

/* The edge from the tree's stored nodes (a head written before the edge was
 * kept in it: read once, then kept). */
static qk_err edge_from_nodes(db_conn *c, int64_t org, int64_t size, log_edge *edge)
{
    int64_t start = 0;
    qk_err rc = QK_OK;
    edge->n = 0;
    for (int k = 62; k >= 0 && rc == QK_OK; k--) {
        if (!((size >> k) & 1))
            continue;
        rc = node_get(c, org, tlog_pos(k, start >> k), edge->h[edge->n++]);
        start += (int64_t)1 << k;
    }
    return rc;
}

/* Adds leaf `index` and every subtree it completes (about two rows per
 * entry), hashing with the edge, which it moves on to the new size. */
static qk_err log_add_leaf(db_conn *c, int64_t org, int64_t index, const tlog_hash leaf,
                           log_edge *edge)
{
    tlog_hash cur;
    qk_err rc = node_put(c, org, tlog_pos(0, index), leaf);
    memcpy(cur, leaf, TLOG_HASH_LEN);
    for (int level = 0; rc == QK_OK && (index & 1); level++, index >>= 1) {
        if (edge->n == 0)
            return qk_fail(QK_ERR_IO, "the log edge of org %" PRId64 " is short", org);
        tlog_node_hash(edge->h[--edge->n], cur, cur);
        rc = node_put(c, org, tlog_pos(level + 1, index >> 1), cur);
    }
    if (rc == QK_OK && edge->n < TLOG_MAX_PROOF)
        memcpy(edge->h[edge->n++], cur, TLOG_HASH_LEN);
    return rc;
}

/* The org's log size (0 when it has no entry yet). */
static qk_err log_size(db_conn *c, int64_t org, int64_t *size)
{
    db_val v[] = {V_INT(org)};
    int found = 0;
    *size = 0;
    return sql_one(c, Q_HEAD_GET, v, 1, sql_fill_i64, size, &found);
}

typedef struct head_row {
    int64_t size;
    log_edge *edge;
    int edge_ok;  /* the stored edge is there and fits the size */
    int has_edge; /* one is stored (NULL: a head from before edges were kept) */
} head_row;

static void fill_head(db_stmt *st, void *p)
{
    head_row *h = p;
    size_t n = 0;
    const uint8_t *b = db_col_blob(st, 1, &n);
    h->size = db_col_int(st, 0);
    h->has_edge = !db_col_null(st, 1);
    h->edge_ok = h->size >= 0 && b != NULL && n % TLOG_HASH_LEN == 0 &&
                 (int)(n / TLOG_HASH_LEN) == popcount64(h->size);
    h->edge->n = 0;
    if (h->edge_ok) {
        h->edge->n = (int)(n / TLOG_HASH_LEN);
        memcpy(h->edge->h, b, n);
    }
}

/* Takes the org's append lock (held to the end of the transaction: one
 * statement, an upsert that locks the head row) and reads its size and edge. */
static qk_err log_lock(db_conn *c, int64_t org, int64_t *size, log_edge *edge)
{
    db_val v[] = {V_INT(org)};
    head_row h = {0, edge, 0, 0};
    int found = 0;
    qk_err rc = sql_one(c, Q_HEAD_LOCK, v, 1, fill_head, &h, &found);
    *size = h.size;
    if (rc == QK_OK && !h.edge_ok)
        rc = edge_from_nodes(c, org, h.size, edge);
    return rc;
}

/* An org's head as this transaction left it: the lock is held to its end,
 * so the next append of the same org in it (a batch of the PostgreSQL
 * writer) needs no statement to take the lock and read the head again. */
typedef struct head_cache {
    uint64_t txn; /* db_conn.txn it belongs to; 0: none */
    int64_t org, size;
    log_edge edge;
} head_cache;

static head_cache *head_cache_of(db_conn *c)
{
    if (c->txn == 0)
        return NULL;
    if (c->scratch == NULL)
        c->scratch = xcalloc(1, sizeof(head_cache));
    return c->scratch;
}

qk_err log_append(db_conn *c, const store_audit *in, const char *meta)
{
    qk_err rc;
    store_audit a = *in;
    tlog_entry e;
    tlog_hash leaf;
    int64_t size = 0;
    log_edge edge;
    head_cache *hc = head_cache_of(c);

    if (meta != NULL)
        a.meta = meta;
    if (a.ts == 0)
        a.ts = now_unix_ms();
    if (hc != NULL && hc->txn == c->txn && hc->org == a.org_id) {
        size = hc->size;
        edge = hc->edge;
    } else if ((rc = log_lock(c, a.org_id, &size, &edge)) != QK_OK) {
        return rc;
    }
    if (hc != NULL)
        hc->txn = 0; /* until this append is queued whole */
    audit_entry(&a, size + 1, &e);
    entry_leaf_hash(&e, leaf);
    db_val v[] = {V_INT(e.org_id),      V_INT(e.seq),           V_INT(e.version),
                  V_INT(e.ts),          V_TEXT(e.actor),        V_TEXT(e.client_ip),
                  V_TEXT(e.action),     V_TEXT(e.request_id),   V_TEXT(e.format),
                  V_TEXT(e.algorithm),  V_TEXT(e.digest_hex),   V_TEXT(e.profile),
                  V_TEXT(e.filename),   V_TEXT(e.signer_fp),    V_TEXT(e.sig_sha256),
                  V_TEXT(e.sigval_sha256), V_INT(e.outcome),    V_TEXT(e.detail),
                  V_TEXT(e.meta)};
    /* Nothing here reads what these write, so they travel with the next
     * statement that returns rows, or with COMMIT. */
    if ((rc = sql_exec_later(c, W_AUDIT_INSERT, v, 19, -1, NULL)) == QK_OK &&
        (rc = log_add_leaf(c, a.org_id, size, leaf, &edge)) == QK_OK) {
        db_val hv[] = {V_INT(a.org_id), V_INT(size + 1),
                       V_BLOB((const uint8_t *)edge.h, (size_t)edge.n * TLOG_HASH_LEN)};
        rc = sql_exec_later(c, W_HEAD_SET, hv, 3, -1, NULL);
    }
    if (rc == QK_OK && hc != NULL) {
        hc->txn = c->txn;
        hc->org = a.org_id;
        hc->size = size + 1;
        hc->edge = edge;
    }
    if (rc == QK_OK && in->log_index != NULL)
        *in->log_index = size;
    return rc;
}

qk_err log_backfill(db_conn *c)
{
    db_stmt *st = NULL;
    int row = 0;
    int64_t org = -1, next = 1;
    log_edge edge = {.n = 0};
    qk_err rc = sql_stmt(c, R_AUDIT_ALL, NULL, 0, &st);
    while (rc == QK_OK && (rc = db_step(st, &row)) == QK_OK && row) {
        tlog_entry e;
        tlog_hash leaf;
        read_entry(st, &e);
        if (e.org_id != org) {
            org = e.org_id;
            next = 1;
            edge.n = 0;
        }
        if (e.seq != next++) {
            rc = qk_fail(QK_ERR_IO,
                         "audit rows of org %" PRId64 " are not contiguous at %" PRId64
                         ": the audit trail was tampered with before this upgrade",
                         org, e.seq);
            break;
        }
        entry_leaf_hash(&e, leaf);
        rc = log_add_leaf(c, org, e.seq - 1, leaf, &edge);
    }
    db_done(st);
    return rc;
}

typedef struct append_arg {
    const store_audit *a;
} append_arg;

static qk_err txn_append(db_conn *c, void *p)
{
    return log_append(c, ((append_arg *)p)->a, NULL);
}

qk_err sl_audit_append(qk_store *base, const store_audit *audit)
{
    append_arg a = {audit};
    qk_err rc = check_audit(audit);
    if (rc != QK_OK)
        return rc;
    return db_write(SQL_DB(base), audit->org_id, txn_append, &a);
}

/* ---- audit verify ------------------------------------------------------ */

/* The right edge of a tree being rebuilt: complete subtrees, largest first. */
typedef struct frontier {
    tlog_hash h[TLOG_MAX_PROOF];
    int level[TLOG_MAX_PROOF];
    int n;
} frontier;

typedef struct verify_ctx {
    frontier f; /* the tree rebuilt so far */
    db_conn *c;
    db_stmt *nodes; /* R_NODES_ALL, stepped alongside the rows */
    int64_t next_pos;
    int64_t org;
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
    int row = 0;
    size_t n = 0;
    if ((*rc = db_step(v->nodes, &row)) != QK_OK || !row)
        return 0;
    const uint8_t *p = db_col_blob(v->nodes, 1, &n);
    int ok = db_col_int(v->nodes, 0) == v->next_pos && p != NULL && n == TLOG_HASH_LEN &&
             sodium_memcmp(p, h, TLOG_HASH_LEN) == 0;
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

typedef struct req_sig {
    uint8_t digest[32];
    int64_t status;
    int typed;
} req_sig;

static void fill_req_sig(db_stmt *st, void *p)
{
    req_sig *r = p;
    size_t n = 0;
    const uint8_t *sig = db_col_blob(st, 0, &n);
    crypto_hash_sha256(r->digest, sig != NULL ? sig : (const uint8_t *)"", n);
    r->status = db_col_int(st, 1);
    r->typed = db_col_int(st, 2) != 0;
}

/* A signed entry must still have its request row, with the same signature. */
static qk_err check_signed_entry(verify_ctx *v, const tlog_entry *e)
{
    db_val val[] = {V_INT(e->org_id), V_TEXT(e->request_id)};
    req_sig r;
    int found = 0;
    char hex[65];
    qk_err rc = sql_one(v->c, R_REQ_SIG, val, 2, fill_req_sig, &r, &found);
    if (rc != QK_OK)
        return rc;
    if (!found)
        return verify_fail(v, e->seq, "request %s of entry %" PRId64 " is missing",
                           e->request_id, e->seq);
    if (e->sig_sha256 == NULL)
        return QK_OK;
    hex_encode(r.digest, sizeof(r.digest), hex);
    if (!r.typed || r.status != REQ_SIGNED || strcmp(hex, e->sig_sha256) != 0)
        return verify_fail(v, e->seq,
                           "request %s no longer holds the signature entry %" PRId64 " recorded",
                           e->request_id, e->seq);
    return QK_OK;
}

static int is_signed_entry(const tlog_entry *e)
{
    return e->outcome == AUDIT_ALLOWED && e->request_id != NULL && e->action != NULL &&
           strcmp(e->action, "sign.digest") == 0;
}

/* Every row, in order: integer columns really integers, seq contiguous, its
 * leaf and the nodes it completes equal to the stored ones. */
static qk_err verify_rows(verify_ctx *v)
{
    db_stmt *st = NULL;
    frontier *f = &v->f;
    db_val val[] = {V_INT(v->org)};
    int row = 0;
    qk_err rc = sql_stmt(v->c, R_AUDIT_ROWS, val, 1, &st);
    while (rc == QK_OK && v->out->ok && (rc = db_step(st, &row)) == QK_OK && row) {
        tlog_entry e;
        tlog_hash leaf;
        read_entry(st, &e);
        int64_t expect = ++v->out->count;
        if (db_col_int(st, 19) == 0) {
            rc = verify_fail(v, e.seq,
                             "entry %" PRId64 " holds a non-integer value in an integer column",
                             e.seq);
            break;
        }
        if (e.seq != expect) {
            rc = verify_fail(v, expect, "entry %" PRId64 " is missing", expect);
            break;
        }
        if (e.version != 1 && e.version != 2) {
            rc =
                verify_fail(v, e.seq, "entry %" PRId64 " has unknown version %d", e.seq, e.version);
            break;
        }
        entry_leaf_hash(&e, leaf);
        if (!frontier_add(v, f, leaf, &rc)) {
            if (rc == QK_OK)
                rc = verify_fail(v, e.seq, "entry %" PRId64 " differs from the log's tree", e.seq);
            break;
        }
        if (is_signed_entry(&e) && (rc = check_signed_entry(v, &e)) != QK_OK)
            break;
    }
    db_done(st);
    return rc;
}

static void fill_text(db_stmt *st, void *p)
{
    *(char **)p = col_strdup(st, 0);
}

static qk_err verify_tail(verify_ctx *v)
{
    int64_t size = 0;
    int row = 0, found = 0;
    char *id = NULL;
    qk_err rc = db_step(v->nodes, &row);
    if (rc != QK_OK)
        return rc;
    if (row)
        return verify_fail(v, 0, "the tree holds nodes for entries that are gone");
    if ((rc = log_size(v->c, v->org, &size)) != QK_OK)
        return rc;
    if (size != v->out->count)
        return verify_fail(v, 0, "the log head says %" PRId64 " entries, %" PRId64 " are present",
                           size, v->out->count);
    /* The edge the head keeps for appends, when it keeps one, is the rebuilt
     * tree's (a wrong one would corrupt every later node). */
    log_edge edge;
    head_row h = {0, &edge, 0, 0};
    db_val hv[] = {V_INT(v->org)};
    if ((rc = sql_one(v->c, R_HEAD_EDGE, hv, 1, fill_head, &h, &found)) != QK_OK)
        return rc;
    if (found && h.has_edge) {
        int same = h.edge_ok && edge.n == v->f.n;
        for (int i = 0; same && i < edge.n; i++)
            same = sodium_memcmp(edge.h[i], v->f.h[i], TLOG_HASH_LEN) == 0;
        if (!same)
            return verify_fail(v, 0, "the log head's edge differs from the log's tree");
    }
    found = 0;
    db_val val[] = {V_INT(v->org), V_INT(REQ_SIGNED)};
    if ((rc = sql_one(v->c, R_SIGNED_UNLOGGED, val, 2, fill_text, &id, &found)) != QK_OK)
        return rc;
    if (found)
        rc = verify_fail(v, 0, "signed request %s has no log entry", id != NULL ? id : "?");
    free(id);
    return rc;
}

static qk_err txn_verify(db_conn *c, void *p)
{
    verify_ctx *v = p;
    int64_t typed = 0;
    int found = 0;
    db_val val[] = {V_INT(v->org)};
    qk_err rc;

    memset(v->out, 0, sizeof(*v->out));
    v->out->ok = 1;
    v->c = c;
    v->next_pos = 0;
    if ((rc = sql_one(c, Q_AUDIT_TYPED, NULL, 0, sql_fill_i64, &typed, &found)) != QK_OK)
        return rc;
    if (!found || typed != 1)
        return verify_fail(v, 0, "the audit table was rebuilt without STRICT typing");
    if ((rc = sql_stmt(c, R_NODES_ALL, val, 1, &v->nodes)) != QK_OK)
        return rc;
    if ((rc = verify_rows(v)) == QK_OK && v->out->ok)
        rc = verify_tail(v);
    db_done(v->nodes);
    v->nodes = NULL;
    return rc;
}

/* One snapshot for rows, nodes, head and requests. */
qk_err sl_audit_verify(qk_store *base, int64_t org, store_audit_check *out)
{
    verify_ctx v = {.org = org, .out = out};
    return db_read(SQL_DB(base), org, txn_verify, &v);
}

typedef struct count_arg {
    int64_t org;
    const char *request_id;
    int64_t count;
} count_arg;

static qk_err txn_count(db_conn *c, void *p)
{
    count_arg *a = p;
    db_val v[] = {V_INT(a->org), V_TEXT(a->request_id)};
    int found = 0;
    return sql_one(c, a->request_id != NULL ? R_AUDIT_COUNT_REQ : R_AUDIT_COUNT_ALL, v,
                   a->request_id != NULL ? 2 : 1, sql_fill_i64, &a->count, &found);
}

qk_err sl_audit_count(qk_store *base, int64_t org, const char *request_id, int64_t *count)
{
    count_arg a = {org, request_id, 0};
    qk_err rc = db_read(SQL_DB(base), org, txn_count, &a);
    *count = rc == QK_OK ? a.count : 0;
    return rc;
}

/* ---- log reads --------------------------------------------------------- */

typedef struct node_src {
    db_conn *c;
    int64_t org;
    qk_err rc;
} node_src;

static int node_src_get(void *arg, int level, int64_t index, tlog_hash out)
{
    node_src *n = arg;
    n->rc = node_get(n->c, n->org, tlog_pos(level, index), out);
    return n->rc == QK_OK ? 0 : -1;
}

typedef struct prove_arg {
    int64_t org;
    store_proof_kind kind;
    int64_t a, b;
    store_proof *out;
} prove_arg;

static qk_err txn_prove(db_conn *c, void *p)
{
    prove_arg *pa = p;
    store_proof *out = pa->out;
    node_src src = {c, pa->org, QK_OK};
    int64_t cur = 0, a = pa->a;
    qk_err rc = log_size(c, pa->org, &cur);
    if (rc != QK_OK)
        return rc;
    memset(out, 0, sizeof(*out));
    out->size = pa->b == 0 ? cur : pa->b;
    if (out->size < 1 || out->size > cur)
        return qk_fail(QK_ERR_INVALID_ARG,
                       "tree size %" PRId64 " is not in the log (size %" PRId64 ")", out->size,
                       cur);
    if ((pa->kind == PROOF_INCLUSION && (a < 0 || a >= out->size)) ||
        (pa->kind == PROOF_CONSISTENCY && (a < 1 || a > out->size)))
        return qk_fail(QK_ERR_INVALID_ARG, "%s %" PRId64 " is out of range for tree size %" PRId64,
                       pa->kind == PROOF_INCLUSION ? "index" : "size", a, out->size);
    int r = tlog_root(node_src_get, &src, out->size, out->root);
    if (r == 0 && pa->kind == PROOF_INCLUSION)
        r = tlog_prove_inclusion(node_src_get, &src, a, out->size, out->hashes, &out->n);
    else if (r == 0 && pa->kind == PROOF_CONSISTENCY)
        r = tlog_prove_consistency(node_src_get, &src, a, out->size, out->hashes, &out->n);
    if (r != 0)
        return src.rc != QK_OK ? src.rc : qk_fail(QK_ERR_IO, "log proof failed");
    return QK_OK;
}

qk_err sl_log_prove(qk_store *base, int64_t org, store_proof_kind kind, int64_t a, int64_t b,
                    store_proof *out)
{
    prove_arg pa = {org, kind, a, b, out};
    memset(out, 0, sizeof(*out));
    if (b < 0)
        return qk_fail(QK_ERR_INVALID_ARG, "negative tree size");
    return db_read(SQL_DB(base), org, txn_prove, &pa);
}

static void fill_log_entry(db_stmt *st, void *p)
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

typedef struct list_arg {
    int id;
    db_val v[3];
    int nv;
    size_t size;
    row_fill_fn fill;
    row_list_free_fn list_free;
    void *out;
    size_t n;
} list_arg;

static qk_err txn_list(db_conn *c, void *p)
{
    list_arg *a = p;
    if (a->out != NULL) /* an earlier run's (db.h: fn may run again) */
        a->list_free(a->out, a->n);
    a->out = NULL;
    a->n = 0;
    return sql_rows(c, a->id, a->v, a->nv, a->size, a->fill, a->list_free, &a->out, &a->n);
}

static qk_err read_list(qk_store *base, int64_t org, list_arg *a, void **out, size_t *n)
{
    qk_err rc = db_read(SQL_DB(base), org, txn_list, a);
    *out = rc == QK_OK ? a->out : NULL;
    *n = rc == QK_OK ? a->n : 0;
    return rc;
}

qk_err sl_log_entries(qk_store *base, int64_t org, int64_t start, int64_t end,
                      store_log_entry **out, size_t *n)
{
    list_arg a = {R_LOG_ENTRIES, {V_INT(org), V_INT(start), V_INT(end)}, 3, sizeof(**out),
                  fill_log_entry, free_log_entries, NULL, 0};
    if (start < 0 || end <= start)
        return qk_fail(QK_ERR_INVALID_ARG, "bad entry range [%" PRId64 ", %" PRId64 ")", start,
                       end);
    return read_list(base, org, &a, (void **)out, n);
}

qk_err sl_log_lookup(qk_store *base, int64_t org, const char *sigval_hex, store_log_entry **out,
                     size_t *n)
{
    list_arg a = {R_LOG_LOOKUP, {V_INT(org), V_TEXT(sigval_hex)}, 2, sizeof(**out),
                  fill_log_entry, free_log_entries, NULL, 0};
    return read_list(base, org, &a, (void **)out, n);
}

static void free_plain(void *rows, size_t n)
{
    (void)n;
    free(rows);
}

qk_err sl_log_find_request(qk_store *base, int64_t org, const char *id, int64_t *index,
                           int *found)
{
    int64_t *rows = NULL;
    size_t n = 0;
    list_arg a = {R_LOG_REQ, {V_INT(org), V_TEXT(id)}, 2, sizeof(*rows), sql_fill_i64, free_plain,
                  NULL, 0};
    qk_err rc = read_list(base, org, &a, (void **)&rows, &n);
    *found = rc == QK_OK && n == 1;
    *index = *found ? rows[0] - 1 : 0;
    free(rows);
    return rc;
}

static void fill_checkpoint(db_stmt *st, void *p)
{
    store_checkpoint *cp = p;
    size_t n = 0;
    const uint8_t *root = db_col_blob(st, 1, &n);
    cp->size = db_col_int(st, 0);
    if (root != NULL && n == TLOG_HASH_LEN)
        memcpy(cp->root, root, TLOG_HASH_LEN);
    cp->note = col_strdup(st, 2);
    cp->created_at = db_col_int(st, 3);
}

static void free_checkpoints(void *rows, size_t n)
{
    store_checkpoint *c = rows;
    for (size_t i = 0; i < n; i++)
        store_checkpoint_clear(&c[i]);
    free(c);
}

qk_err sl_checkpoint_latest(qk_store *base, int64_t org, store_checkpoint *out, int *found)
{
    store_checkpoint *rows = NULL;
    size_t n = 0;
    list_arg a = {R_CKPT_LATEST, {V_INT(org)}, 1, sizeof(*rows), fill_checkpoint,
                  free_checkpoints, NULL, 0};
    qk_err rc = read_list(base, org, &a, (void **)&rows, &n);
    memset(out, 0, sizeof(*out));
    *found = rc == QK_OK && n == 1;
    if (*found)
        *out = rows[0];
    free(rows);
    return rc;
}

typedef struct exec1_arg {
    int id;
    const db_val *v;
    int nv;
} exec1_arg;

static qk_err txn_exec1(db_conn *c, void *p)
{
    exec1_arg *a = p;
    return sql_exec(c, a->id, a->v, a->nv, NULL);
}

qk_err sl_checkpoint_add(qk_store *base, int64_t org, int64_t size, const uint8_t root[32],
                         const char *note)
{
    db_val v[] = {V_INT(org), V_INT(size), V_BLOB(root, 32), V_TEXT(note), V_INT(now_unix())};
    exec1_arg a = {W_CKPT_INSERT, v, 5};
    if (note == NULL || strlen(note) > TLOG_MAX_NOTE)
        return qk_fail(QK_ERR_INVALID_ARG, "checkpoint note missing or too large");
    return db_write(SQL_DB(base), org, txn_exec1, &a);
}

/* ---- usage ------------------------------------------------------------- */

typedef struct pair_row {
    int64_t key;
    char *name;
    int64_t count;
} pair_row;

static void fill_outcome(db_stmt *st, void *p)
{
    pair_row *r = p;
    r->key = db_col_int(st, 0);
    r->count = db_col_int(st, 1);
}

static void fill_profile_count(db_stmt *st, void *p)
{
    pair_row *r = p;
    r->name = col_strdup(st, 0);
    r->count = db_col_int(st, 1);
}

static void free_pairs(void *rows, size_t n)
{
    pair_row *r = rows;
    for (size_t i = 0; i < n; i++)
        free(r[i].name);
    free(r);
}

typedef struct usage_arg {
    db_val v[3];
    store_usage *out;
} usage_arg;

static qk_err txn_usage(db_conn *c, void *p)
{
    usage_arg *a = p;
    store_usage *out = a->out;
    pair_row *rows = NULL;
    size_t n = 0;
    store_usage_clear(out);
    qk_err rc = sql_rows(c, R_USAGE_OUTCOMES, a->v, 3, sizeof(*rows), fill_outcome, free_pairs,
                         (void **)&rows, &n);
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
    rows = NULL;
    n = 0;
    rc = sql_rows(c, R_USAGE_PROFILES, a->v, 3, sizeof(*rows), fill_profile_count, free_pairs,
                  (void **)&rows, &n);
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

qk_err sl_usage(qk_store *base, int64_t org, int64_t since, int64_t until, store_usage *out)
{
    usage_arg a = {{V_INT(org), V_INT(since), V_INT(until)}, out};
    memset(out, 0, sizeof(*out));
    qk_err rc = db_read(SQL_DB(base), org, txn_usage, &a);
    if (rc != QK_OK)
        store_usage_clear(out);
    return rc;
}
