/* Internals of the PostgreSQL driver shared by its files: db_pg.c (the
 * pool, statements, transactions) and pg_writer.c (the batching writer of
 * write_async). Nothing outside store/pg/ includes this. */
#ifndef QWICKD_STORE_PG_INTERNAL_H
#define QWICKD_STORE_PG_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "store/db.h"

/* The batching writer: its threads (each with a connection of its own) and
 * the most writes one transaction carries. */
#define PG_WRITERS 1
#define PG_BATCH_MAX 64

/* Statements a connection holds back for its next round trip. */
#define PG_QUEUE_MAX 16

#define CONFLICT_RETRIES 5
#define LOST_RETRIES 3
#define RECONNECT_FIRST_MS 100
#define RECONNECT_MAX_PAUSE_MS 1000
#define RECONNECT_WINDOW_MS 5000
#define DETAIL_MAX 400 /* a remembered error (qk_error_detail holds 512) */
#define NUM_TEXT 24    /* an int64 in decimal, NUL included */

typedef enum pg_kind { P_UNBOUND = 0, P_INT, P_TEXT, P_BLOB, P_NULL } pg_kind;

typedef struct pg_param {
    pg_kind kind;
    const char *p; /* P_TEXT, P_BLOB: borrowed until the statement runs */
    int len;       /* P_BLOB */
    char num[NUM_TEXT];
} pg_param;

typedef struct pg_conn pg_conn;

/* A statement sent in pipeline mode whose result is read later. */
typedef struct pg_queued {
    char kind;        /* 'q' plain SQL, 'c' COMMIT, 'p' a prepare, 'x' a prepared statement */
    int id;           /* 'p', 'x': the query id */
    const char *what; /* 'q': what it is, for errors */
    int64_t expect;   /* 'x': rows it must change (-1: any) */
    char mismatch[120];
} pg_queued;

typedef struct pg_stmt {
    db_stmt base;
    pg_conn *c;
    int id;
    /* Bindings: params[0] is $1. nparams is the highest index bound since
     * the last done; the arrays are what PQexecPrepared takes. */
    pg_param *params;
    const char **vals;
    int *lens, *fmts;
    Oid *types;
    int nparams, cap;
    int bind_err;  /* a bad binding, reported by the next step */
    PGresult *res; /* from the first step until done */
    int row, nrows;
    int64_t changes;
    char (*nums)[NUM_TEXT]; /* col_text of integer columns, one per column */
    int nnums;
} pg_stmt;

/* Why a transaction failed, as far as retrying goes. */
typedef enum pg_why { WHY_NONE = 0, WHY_CONFLICT, WHY_LOST, WHY_UNKNOWN } pg_why;

struct pg_conn {
    db_conn base;
    PGconn *pg;              /* NULL until first used */
    pg_stmt *st;             /* one per query id */
    unsigned char *prepared; /* per query id: prepared in this session */
    /* Statements sent in pipeline mode whose results are not read yet (BEGIN,
     * the org): they go out with the next statement, one round trip for all. */
    pg_queued queued[PG_QUEUE_MAX];
    int nqueued;
    int commit_sent; /* a read's COMMIT sent, its result not read yet */
    int committed;   /* the pipelined COMMIT answered COMMIT */
    int one, nstmts; /* a one-statement read (db.h read1) runs, and its count */
    /* The running transaction's first error (QK_OK: none). */
    qk_err err;
    pg_why why;
    char detail[DETAIL_MAX];
};

enum { BASE_PARAMS = 3, MAX_CONN_PARAMS = 6 };

struct pg_writer;

typedef struct pg_db {
    qk_db base;
    /* PQconnectdbParams' arrays: our defaults, then the conninfo (expanded,
     * overriding them), then user and password (overriding it). */
    const char *keys[MAX_CONN_PARAMS];
    const char *vals[MAX_CONN_PARAMS];
    char *conninfo, *user, *password;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    pg_conn *conns;
    int nconns;
    pg_conn **idle; /* a stack: the most recently used connection is reused first */
    int nidle;
    struct pg_writer *writer; /* the batching writer of write_async */
} pg_db;

/* Small helpers. */
int64_t pgc_mono_ms(void);
void pgc_sleep_ms(int64_t ms);
/* A random pause before rerunning a transaction that lost a conflict. */
int64_t pgc_conflict_pause_ms(int attempt);

/* Connections (db_pg.c). */
void pgc_init(pg_db *d, pg_conn *c);
void pgc_free(pg_db *d, pg_conn *c);
qk_err pgc_connect(pg_db *d, pg_conn *c);
qk_err pgc_reconnect(pg_db *d, pg_conn *c, int attempt, int64_t deadline);
/* Queues BEGIN and the org (sent with the next statement). */
qk_err pgc_begin(pg_conn *c, int readonly, int64_t org);
/* Queues setting the org of the running transaction. */
qk_err pgc_set_org(pg_conn *c, int64_t org);
/* Reads the results of what is queued (one round trip). */
qk_err pgc_flush(pg_conn *c);
/* Parameterless SQL whose result is not needed, queued statements first; a
 * failure is remembered as the transaction's first error. */
qk_err pgc_exec(pg_conn *c, const char *sql, const char *what);
/* The transaction's first error, raised again. */
qk_err pgc_failed_before(const pg_conn *c);
/* Sets up a transaction run: the error state cleared, a connection made if
 * there is none (failing with why = WHY_LOST), a transaction left open by a
 * failed rollback ended. */
qk_err pgc_txn_prepare(pg_db *d, pg_conn *c);
/* A new value of c->base.txn (db.h): what the store kept about the
 * transaction so far no longer holds. */
void pgc_txn_new(pg_conn *c);
/* Resets the statements fn left undone. */
void pgc_reset_stmts(pg_db *d, pg_conn *c);
void pgc_rollback(pg_conn *c);
qk_err pgc_commit(pg_conn *c, int readonly);

/* The batching writer (pg_writer.c). */
qk_err pg_writer_start(pg_db *d, int threads);
void pg_writer_stop(pg_db *d);
qk_err pg_write_async(qk_db *d, int64_t org, db_txn_fn fn, void *arg, db_done_fn done,
                      void *done_arg);
void pg_flush(qk_db *d);

#endif
