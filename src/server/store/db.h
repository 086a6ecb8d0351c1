/* The database driver interface the store's queries are written against
 * (store/store_sql.c). Two drivers implement it: SQLite (store/sqlite/) and
 * PostgreSQL through libpq (store/pg/). The store writes each query once; the
 * few places where the dialects differ are named in its query table (a `pg`
 * variant next to the SQLite text).
 *
 * Work runs in transactions: db_read() and db_write() call fn(conn, arg)
 * inside one transaction on a connection of the driver's choosing, with the
 * org set for row-level security (PostgreSQL: set_config('qwick.org', org,
 * true), local to the transaction; SQLite has no RLS and ignores it). fn
 * prepares statements by query id, binds, steps and reads columns; it returns
 * QK_OK to commit, anything else to roll back. A write is durable when
 * db_write() returns QK_OK.
 *
 * Placeholders are $1, $2, ... in both dialects. Integers are int64, text is
 * UTF-8 (NULL binds SQL NULL), blobs are bytes.
 *
 * Errors: QK_ERR_INVALID_ARG for a constraint violation (duplicate, bad
 * reference, check), QK_ERR_IO for everything else (the database is
 * unreachable, the disk is full...), with qk_error_detail() saying what. A
 * driver retries on its own what is safe to retry (a read after a lost
 * connection, a write whose transaction never reached COMMIT, a
 * serialization failure); a COMMIT whose outcome is unknown is an error. */
#ifndef QWICKD_STORE_DB_H
#define QWICKD_STORE_DB_H

#include <stddef.h>
#include <stdint.h>

#include "qwick/error.h"

typedef struct qk_db qk_db;
typedef struct db_conn db_conn;
typedef struct db_stmt db_stmt;

typedef enum db_dialect { DB_SQLITE = 0, DB_PG = 1 } db_dialect;

/* One statement of the store's: its SQL, and PostgreSQL's when it differs. */
typedef struct db_query {
    const char *sql;
    const char *pg; /* NULL: the same text */
} db_query;

/* fn may run more than once (a driver reruns a transaction that failed for a
 * reason worth retrying): it must write into its arg only what its last run
 * produced. */

/* A transaction that acts for no org (the instance's tables: orgs, operator
 * tokens, instance secrets). Under RLS it sees no tenant row. */
#define DB_NO_ORG INT64_MIN

typedef qk_err (*db_txn_fn)(db_conn *c, void *arg);
/* Completion of an asynchronous write (db_write_async). */
typedef void (*db_done_fn)(void *arg, qk_err rc, const char *detail);

typedef struct db_ops {
    void (*close)(qk_db *d);
    qk_err (*read)(qk_db *d, int64_t org, db_txn_fn fn, void *arg);
    qk_err (*write)(qk_db *d, int64_t org, db_txn_fn fn, void *arg);
    /* Optional (NULL: read): a read whose fn runs exactly one statement, which
     * a driver may run without a transaction block of its own (PostgreSQL: the
     * org and the statement in one implicit transaction, no BEGIN/COMMIT). A
     * second statement fails. */
    qk_err (*read1)(qk_db *d, int64_t org, db_txn_fn fn, void *arg);
    /* Optional (NULL): queues the write and returns; done() runs on a thread
     * of the driver's once it committed or failed. */
    qk_err (*write_async)(qk_db *d, int64_t org, db_txn_fn fn, void *arg, db_done_fn done,
                          void *done_arg);
    /* Returns once every write queued before the call has finished. Optional. */
    void (*flush)(qk_db *d);
    /* Changes the org of the running transaction (a lookup that learns it). */
    qk_err (*set_org)(db_conn *c, int64_t org);
    /* Runs SQL without parameters or result rows (schema migrations). */
    qk_err (*exec)(db_conn *c, const char *sql);

    qk_err (*prepare)(db_conn *c, int id, db_stmt **out);
    void (*bind_int)(db_stmt *st, int i, int64_t v);
    void (*bind_text)(db_stmt *st, int i, const char *s);
    void (*bind_blob)(db_stmt *st, int i, const uint8_t *p, size_t n);
    /* NULL of the parameter's own type (an integer column's NULL). */
    void (*bind_null)(db_stmt *st, int i);
    /* *row = 1 with a row to read, 0 when done. */
    qk_err (*step)(db_stmt *st, int *row);
    int (*col_null)(db_stmt *st, int i);
    int64_t (*col_int)(db_stmt *st, int i);
    const char *(*col_text)(db_stmt *st, int i); /* NULL for NULL; valid until the next step */
    const uint8_t *(*col_blob)(db_stmt *st, int i, size_t *n);
    /* Optional (NULL: step at once): runs the bound statement, whose rows
     * are not wanted, possibly later: with the next statement that returns
     * rows, or at COMMIT (PostgreSQL sends it in the same round trip). Its
     * error, or a count of changed rows other than `expect` (>= 0; -1: any),
     * which fails with `mismatch` (copied), is the transaction's error then.
     * The statement may be reused at once. */
    qk_err (*run_later)(db_stmt *st, int64_t expect, const char *mismatch);
    /* Rows the statement changed (after its last step). */
    int64_t (*changes)(db_stmt *st);
    /* Resets the statement and clears its bindings. */
    void (*done)(db_stmt *st);
} db_ops;

struct qk_db {
    const db_ops *ops;
    db_dialect dialect;
    const db_query *queries; /* indexed by query id */
    int nqueries;
};

/* Drivers embed these first in their own connection and statement. */
struct db_conn {
    qk_db *d;
    /* Names the running transaction's state for what the store keeps about
     * it (the log head it locked, store_log.c): a new value whenever that
     * state may differ from what the store computed (a new transaction, a
     * rollback to a savepoint). 0: keep nothing (the SQLite driver). */
    uint64_t txn;
    void *scratch; /* the store's, for that; the driver frees it with free() */
};
struct db_stmt {
    const db_ops *ops;
};

static inline qk_err db_read(qk_db *d, int64_t org, db_txn_fn fn, void *arg)
{
    return d->ops->read(d, org, fn, arg);
}
static inline qk_err db_read1(qk_db *d, int64_t org, db_txn_fn fn, void *arg)
{
    return d->ops->read1 != NULL ? d->ops->read1(d, org, fn, arg) : d->ops->read(d, org, fn, arg);
}
static inline qk_err db_write(qk_db *d, int64_t org, db_txn_fn fn, void *arg)
{
    return d->ops->write(d, org, fn, arg);
}
static inline qk_err db_set_org(db_conn *c, int64_t org)
{
    return c->d->ops->set_org(c, org);
}
static inline qk_err db_exec(db_conn *c, const char *sql)
{
    return c->d->ops->exec(c, sql);
}
static inline qk_err db_prepare(db_conn *c, int id, db_stmt **out)
{
    return c->d->ops->prepare(c, id, out);
}
static inline void db_bind_int(db_stmt *st, int i, int64_t v)
{
    st->ops->bind_int(st, i, v);
}
static inline void db_bind_text(db_stmt *st, int i, const char *s)
{
    st->ops->bind_text(st, i, s);
}
static inline void db_bind_blob(db_stmt *st, int i, const uint8_t *p, size_t n)
{
    st->ops->bind_blob(st, i, p, n);
}
static inline void db_bind_null(db_stmt *st, int i)
{
    st->ops->bind_null(st, i);
}
static inline qk_err db_step(db_stmt *st, int *row)
{
    return st->ops->step(st, row);
}
static inline int db_col_null(db_stmt *st, int i)
{
    return st->ops->col_null(st, i);
}
static inline int64_t db_col_int(db_stmt *st, int i)
{
    return st->ops->col_int(st, i);
}
static inline const char *db_col_text(db_stmt *st, int i)
{
    return st->ops->col_text(st, i);
}
static inline const uint8_t *db_col_blob(db_stmt *st, int i, size_t *n)
{
    return st->ops->col_blob(st, i, n);
}
static inline int64_t db_changes(db_stmt *st)
{
    return st->ops->changes(st);
}
static inline void db_done(db_stmt *st)
{
    if (st != NULL)
        st->ops->done(st);
}

/* The drivers. `queries` must outlive the db. */
/* SQLite: DATA_DIR/qwick.db (see store.h for its concurrency: reader pool,
 * one group-committing writer thread, a checkpointer); migrations applied. */
qk_err db_sqlite_open(const char *path, const db_query *queries, int nqueries, qk_db **out);
/* PostgreSQL: a pool of `conns` connections to `conninfo` (a URL or
 * key=value string); connects once to check, fails fast when unreachable. */
qk_err db_pg_open(const char *conninfo, int conns, const db_query *queries, int nqueries,
                  qk_db **out);

#endif
