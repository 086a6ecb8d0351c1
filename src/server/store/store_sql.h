/* Inside the store: the query ids of store_sql.c's table, the helpers every
 * operation uses, and what the log (store_log.c) and the schemas
 * (schema_sqlite.c, schema_pg.c) share. Not for the store's callers. */
#ifndef QWICKD_STORE_SQL_H
#define QWICKD_STORE_SQL_H

#include <stddef.h>
#include <stdint.h>

#include "common/tlog.h"
#include "store/db.h"
#include "store/store.h"

#define MAX_TEXT 4096 /* longest string field accepted (filename, url, detail...) */
#define MAX_BLOB (1u << 20)
#define HASH_LEN 32

enum {
    Q_SCHEMA_VERSION,
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
    R_HEAD_EDGE,
    Q_HEAD_LOCK,
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
    R_APIKEY_PROFILE,
    R_APIKEY_LIST,
    R_APIKEY_GET,
    R_REQ_GET,
    R_AUDIT_ROWS,
    R_AUDIT_ALL,
    Q_AUDIT_TYPED,
    R_AUDIT_COUNT_REQ,
    R_AUDIT_COUNT_ALL,
    R_PROFILE_LIST,
    W_PROFILE_DISABLE,
    W_PROFILE_SET_POLICY,
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
    Q_PG_HAS_SCHEMA,
    W_REQ_ENQUEUE,
    W_IDEM_CLAIM,
    R_IDEM_GET,
    W_QUEUE_RECLAIM,
    R_QUEUE_NEXT_ORG,
    R_QUEUE_READY,
    W_QUEUE_TAKE,
    Q_QUEUE_CLAIM,
    W_REQ_FINISH,
    R_REQ_STATUS,
    W_REQ_CANCEL,
    W_REQ_REQUEUE,
    R_REQ_LIST,
    R_QUEUE_STATS_ORG,
    R_QUEUE_STATS_ALL,
    Q__COUNT
};

extern const db_query store_queries[Q__COUNT];

/* The store over a driver. */
typedef struct sql_store {
    qk_store base;
    store_ops ops; /* request_record_async NULL when the driver cannot queue */
    qk_db *d;
} sql_store;

#define SQL_DB(s) (((sql_store *)(s))->d)

/* The store over an open driver (which it closes with itself; store_open.c). */
qk_err store_over_db(qk_db *d, qk_store **out);

/* One bound value, so simple statements share one bind loop. */
typedef struct db_val {
    char t; /* 'i' integer, 'n' integer or NULL when 0, 's' text (NULL binds NULL), 'b' blob,
             * 'z' NULL */
    int64_t i;
    const char *s;
    const uint8_t *p;
    size_t n;
} db_val;
#define V_INT(x) ((db_val){.t = 'i', .i = (x)})
#define V_ID(x) ((db_val){.t = 'n', .i = (x)})
#define V_TEXT(x) ((db_val){.t = 's', .s = (x)})
#define V_BLOB(ptr, len) ((db_val){.t = 'b', .p = (ptr), .n = (len)})
#define V_NULL ((db_val){.t = 'z'})

typedef void (*row_fill_fn)(db_stmt *st, void *elem);
typedef void (*row_list_free_fn)(void *rows, size_t n);

/* Prepares statement `id` and binds `v`; db_done() it after. */
qk_err sql_stmt(db_conn *c, int id, const db_val *v, int nv, db_stmt **out);
/* Runs a statement that returns no rows; *changes (may be NULL) = rows changed. */
qk_err sql_exec(db_conn *c, int id, const db_val *v, int nv, int64_t *changes);
/* sql_exec whose outcome may arrive later (db.h run_later): its error, or a
 * changed-row count other than `expect` (-1: any) failing with `mismatch`,
 * fails the transaction at its next statement that returns rows or at
 * COMMIT. For writes whose result nothing in between depends on. */
qk_err sql_exec_later(db_conn *c, int id, const db_val *v, int nv, int64_t expect,
                      const char *mismatch);
/* The first row of statement `id` filled into `elem` (*found 0: no row, still QK_OK). */
qk_err sql_one(db_conn *c, int id, const db_val *v, int nv, row_fill_fn fill, void *elem,
               int *found);
/* Every row into a growing array of `size`-byte elements. */
qk_err sql_rows(db_conn *c, int id, const db_val *v, int nv, size_t size, row_fill_fn fill,
                row_list_free_fn list_free, void **out, size_t *n);
/* row_fill_fn for one integer column. */
void sql_fill_i64(db_stmt *st, void *p);
/* A heap copy of a text column (NULL for NULL), of a blob column. */
char *col_strdup(db_stmt *st, int i);
void col_buf(db_stmt *st, int i, qk_buf *out);
qk_err check_text(const char *what, const char *s, int required);
/* The not-found convention of store.h: *found = 0, QK_ERR_INVALID_ARG. */
qk_err not_found(int *found, const char *what);

/* The first values of a request row's insert, in W_REQ_UPSERT's and
 * W_REQ_ENQUEUE's order: id ... client_ip, digest. */
#define SQL_REQUEST_VALS 13
void sql_request_vals(const store_sign_request *q, db_val v[SQL_REQUEST_VALS]);
/* A request row of REQ_COLS (queries.c) into a store_sign_request. */
void sql_fill_request(db_stmt *st, void *p);
/* Checks of a request row's fields before it is written (store_sql.c). */
qk_err sql_check_request(const store_sign_request *req, const store_audit *audit);
/* The vtable, filled by the two files that implement it: store_sql.c (all
 * but the queue) and store_queue.c (the queue). store_over_db (store_open.c)
 * puts them together. */
void store_sql_ops(store_ops *ops);
void store_queue_ops(store_ops *ops);

/* The log (store_log.c). */
qk_err check_audit(const store_audit *a);
/* Appends one entry in the caller's transaction; `meta`, when not NULL,
 * replaces the entry's. Entries of one org are serialized by a lock on the
 * org's log head (PostgreSQL) or the single writer (SQLite). */
qk_err log_append(db_conn *c, const store_audit *a, const char *meta);
/* The tree over the rows written before the log existed (SQLite migration 4). */
qk_err log_backfill(db_conn *c);
/* Compact JSON of a jansson pack format (keys sorted), heap string. */
char *meta_json(const char *fmt, ...);

qk_err sl_audit_append(qk_store *base, const store_audit *audit);
qk_err sl_audit_verify(qk_store *base, int64_t org, store_audit_check *out);
qk_err sl_audit_count(qk_store *base, int64_t org, const char *request_id, int64_t *count);
qk_err sl_log_prove(qk_store *base, int64_t org, store_proof_kind kind, int64_t a, int64_t b,
                    store_proof *out);
qk_err sl_log_entries(qk_store *base, int64_t org, int64_t start, int64_t end,
                      store_log_entry **out, size_t *n);
qk_err sl_log_lookup(qk_store *base, int64_t org, const char *sigval_hex, store_log_entry **out,
                     size_t *n);
qk_err sl_log_find_request(qk_store *base, int64_t org, const char *id, int64_t *index, int *found);
qk_err sl_checkpoint_latest(qk_store *base, int64_t org, store_checkpoint *out, int *found);
qk_err sl_checkpoint_add(qk_store *base, int64_t org, int64_t size, const uint8_t root[32],
                         const char *note);
qk_err sl_usage(qk_store *base, int64_t org, int64_t since, int64_t until, store_usage *out);

/* The schemas: each migrates its database to the current version in one
 * transaction, or refuses a database newer than this qwickd. */
qk_err schema_sqlite_migrate(qk_db *d, int *from); /* *from: the version before */
/* PostgreSQL: creates the schema, its policies and the server's login role
 * (as the owner, in one transaction); refuses a database that has one. */
qk_err schema_pg_install(qk_db *d, const char *role, const char *password);
/* PostgreSQL: the schema is there and of this qwickd's version. */
qk_err schema_pg_check(qk_db *d);
/* PostgreSQL, as the owner: applies the steps a database made by an older
 * qwickd lacks, in one transaction; *from: its version before. */
qk_err schema_pg_migrate(qk_db *d, int *from);
#define SCHEMA_VERSION 7

#endif
