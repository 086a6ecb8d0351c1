/* The PostgreSQL driver of store/db.h, over libpq.
 *
 * A pool of connections: the first is opened by db_pg_open (so a wrong
 * address fails at once), the others on first use. A transaction takes one
 * connection, sends BEGIN and the org in one round trip (set_config(
 * 'qwick.org', org, true): local to the transaction, read by the row-level
 * security policies), runs fn and COMMITs. Reads are REPEATABLE READ READ
 * ONLY (one snapshot for everything fn reads), writes READ COMMITTED.
 *
 * Statements are prepared on the server (named q<id>) the first time they
 * run on a connection, with the parameter types of that run's bindings.
 * Integers and text go as text, blobs as binary; every result comes back in
 * binary, so integers and blobs arrive without parsing.
 *
 * The first error in a transaction aborts it on the server; the driver
 * remembers it, fails every later statement with it without a round trip,
 * rolls back and returns it even if fn ignored it.
 *
 * Retries, all of them reruns of the whole transaction (fn included, hence
 * db.h's rule that fn may run more than once):
 * - a serialization failure or a deadlock: up to CONFLICT_RETRIES times
 *   after a short random pause;
 * - a connection lost before COMMIT was sent (nothing was committed): up to
 *   LOST_RETRIES times, reconnecting with a growing pause (100, 200, 400 ms
 *   ...) for up to RECONNECT_WINDOW_MS, so reads and writes ride out a
 *   server restart of a few seconds;
 * - a connection lost during COMMIT leaves a write's outcome unknown: that
 *   is an error ("commit outcome unknown"), never a rerun. A read-only
 *   transaction changed nothing and is rerun.
 *
 * write_async (the signing path's records) goes to a batching writer
 * instead, pg_writer.c: many writes share one transaction and one commit. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "core/log.h"
#include "core/util.h"
#include "store/db.h"
#include "store/pg/db_pg.h"
#include "store/pg/pg_internal.h"

/* Type OIDs (catalog/pg_type_d.h, which libpq does not install). */
#define PG_BOOLOID 16
#define PG_BYTEAOID 17
#define PG_NAMEOID 19
#define PG_INT8OID 20
#define PG_INT2OID 21
#define PG_INT4OID 23
#define PG_TEXTOID 25
#define PG_OIDOID 26
#define PG_JSONOID 114
#define PG_UNKNOWNOID 705
#define PG_BPCHAROID 1042
#define PG_VARCHAROID 1043
#define PG_NUMERICOID 1700
#define PG_JSONBOID 3802

static const db_ops pg_ops;

/* ---- small helpers ------------------------------------------------------ */

int64_t pgc_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void pgc_sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* A pause of 1 .. 5 * 2^attempt ms, different on each thread, so the two
 * sides of a conflict do not collide again in step. */
int64_t pgc_conflict_pause_ms(int attempt)
{
    static _Thread_local uint64_t x;
    if (x == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        x = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)(uintptr_t)&x ^ (uint64_t)ts.tv_sec;
        x |= 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return 1 + (int64_t)(x % (5u << attempt));
}

/* libpq's message on one line: newlines and tabs become spaces, runs of
 * spaces one, no trailing space. */
static void one_line(char *dst, size_t cap, const char *msg)
{
    size_t n = 0;
    int space = 0;
    if (msg == NULL)
        msg = "";
    for (; *msg != '\0' && n + 1 < cap; msg++) {
        if (*msg == '\n' || *msg == '\t' || *msg == '\r' || *msg == ' ') {
            space = n > 0;
            continue;
        }
        if (space && n + 2 < cap)
            dst[n++] = ' ';
        space = 0;
        dst[n++] = *msg;
    }
    dst[n] = '\0';
}

/* libpq's complaint about a connection string, its quoted parts left out:
 * they may be pieces of the password. */
static void redacted(char *dst, size_t cap, const char *msg)
{
    char line[DETAIL_MAX];
    size_t n = 0;
    int quoted = 0;
    one_line(line, sizeof(line), msg);
    for (const char *p = line; *p != '\0' && n + 6 < cap; p++) {
        if (*p == '"') {
            quoted = !quoted;
            if (quoted) {
                memcpy(dst + n, "\"...\"", 5);
                n += 5;
            }
            continue;
        }
        if (!quoted)
            dst[n++] = *p;
    }
    dst[n] = '\0';
}

static int is_lost_state(const char *state)
{
    return strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 ||
           strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0;
}

/* Raises the error of a failed result (`r` may be NULL: the connection's
 * message) and, as the transaction's first, remembers it. */
static qk_err conn_fail(pg_conn *c, const PGresult *r, const char *what)
{
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = r != NULL ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char msg[DETAIL_MAX - 100]; /* room for what failed and the SQLSTATE */
    qk_err rc = QK_ERR_IO;
    pg_why why = WHY_NONE;

    one_line(msg, sizeof(msg), primary != NULL ? primary : PQerrorMessage(c->pg));
    if (state != NULL && strncmp(state, "23", 2) == 0)
        rc = QK_ERR_INVALID_ARG;
    if (state != NULL && (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0))
        why = WHY_CONFLICT;
    else if ((state != NULL && is_lost_state(state)) || PQstatus(c->pg) != CONNECTION_OK)
        why = WHY_LOST;
    if (c->err == QK_OK) {
        c->err = rc;
        c->why = why;
        snprintf(c->detail, sizeof(c->detail), "PostgreSQL %s: %s%s%s%s", what, msg,
                 state != NULL ? " (SQLSTATE " : "", state != NULL ? state : "",
                 state != NULL ? ")" : "");
        return qk_fail(rc, "%s", c->detail);
    }
    return qk_fail(rc, "PostgreSQL %s: %s", what, msg);
}

/* The transaction already failed: PostgreSQL refuses everything until the
 * rollback, so nothing is sent and the first error is raised again. */
qk_err pgc_failed_before(const pg_conn *c)
{
    return qk_fail(c->err, "%s", c->detail);
}

/* Runs parameterless SQL whose result is not needed. */
static qk_err pipeline_run(pg_conn *c, pg_stmt *s, const char *name, const char *what);

qk_err pgc_exec(pg_conn *c, const char *sql, const char *what)
{
    if (c->nqueued > 0) {
        qk_err rc = pipeline_run(c, NULL, NULL, what);
        if (rc != QK_OK)
            return rc;
    }
    PGresult *r = PQexec(c->pg, sql);
    ExecStatusType st = PQresultStatus(r);
    qk_err rc = QK_OK;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY)
        rc = conn_fail(c, r, what);
    PQclear(r);
    return rc;
}

/* ---- statements --------------------------------------------------------- */

/* Back to the state prepare hands out: no result, no bindings. */
static void stmt_reset(pg_stmt *s)
{
    PQclear(s->res);
    s->res = NULL;
    s->row = -1;
    s->nrows = 0;
    s->nparams = 0;
    s->bind_err = 0;
}

static qk_err pg_prepare(db_conn *base, int id, db_stmt **out)
{
    pg_conn *c = (pg_conn *)base;
    *out = NULL;
    if (id < 0 || id >= base->d->nqueries)
        return qk_fail(QK_ERR_INVALID_ARG, "no query %d", id);
    pg_stmt *s = &c->st[id];
    stmt_reset(s);
    s->changes = 0;
    *out = &s->base;
    return QK_OK;
}

/* The parameter $i, the arrays grown to hold it; NULL (and the statement
 * marked bad) when i is out of range. */
static pg_param *param_at(pg_stmt *s, int i)
{
    if (i < 1 || i > DB_PG_MAX_PARAMS) {
        s->bind_err = 1;
        return NULL;
    }
    if (i > s->cap) {
        int cap = s->cap < 8 ? 8 : s->cap;
        while (cap < i)
            cap *= 2;
        if (cap > DB_PG_MAX_PARAMS)
            cap = DB_PG_MAX_PARAMS;
        s->params = xrealloc(s->params, (size_t)cap * sizeof(*s->params));
        s->vals = xrealloc(s->vals, (size_t)cap * sizeof(*s->vals));
        s->lens = xrealloc(s->lens, (size_t)cap * sizeof(*s->lens));
        s->fmts = xrealloc(s->fmts, (size_t)cap * sizeof(*s->fmts));
        s->types = xrealloc(s->types, (size_t)cap * sizeof(*s->types));
        s->cap = cap;
    }
    for (; s->nparams < i; s->nparams++)
        s->params[s->nparams].kind = P_UNBOUND;
    return &s->params[i - 1];
}

static void pg_bind_int(db_stmt *base, int i, int64_t v)
{
    pg_param *p = param_at((pg_stmt *)base, i);
    if (p == NULL)
        return;
    p->kind = P_INT;
    snprintf(p->num, sizeof(p->num), "%" PRId64, v);
}

static void pg_bind_text(db_stmt *base, int i, const char *s)
{
    pg_param *p = param_at((pg_stmt *)base, i);
    if (p == NULL)
        return;
    p->kind = P_TEXT;
    p->p = s;
}

static void pg_bind_blob(db_stmt *base, int i, const uint8_t *b, size_t n)
{
    pg_stmt *s = (pg_stmt *)base;
    pg_param *p = param_at(s, i);
    if (p == NULL)
        return;
    if (n > INT_MAX) {
        s->bind_err = 2;
        return;
    }
    p->kind = P_BLOB;
    p->p = b != NULL ? (const char *)b : ""; /* a NULL pointer would be SQL NULL */
    p->len = (int)n;
}

static void pg_bind_null(db_stmt *base, int i)
{
    pg_param *p = param_at((pg_stmt *)base, i);
    if (p != NULL)
        p->kind = P_NULL;
}

/* The bindings as PQprepare's types and PQexecPrepared's arrays. */
static void stmt_params(pg_stmt *s)
{
    for (int k = 0; k < s->nparams; k++) {
        const pg_param *p = &s->params[k];
        s->vals[k] = NULL;
        s->lens[k] = 0;
        s->fmts[k] = 0;
        s->types[k] = 0; /* P_NULL, P_UNBOUND: the server infers it */
        switch (p->kind) {
        case P_INT:
            s->vals[k] = p->num;
            s->types[k] = PG_INT8OID;
            break;
        case P_TEXT:
            s->vals[k] = p->p;
            s->types[k] = PG_TEXTOID;
            break;
        case P_BLOB:
            s->vals[k] = p->p;
            s->lens[k] = p->len;
            s->fmts[k] = 1;
            s->types[k] = PG_BYTEAOID;
            break;
        case P_NULL:
        case P_UNBOUND:
            break;
        }
    }
}

/* Prepares the statement on this session if it is not yet, and runs it. */
/* The transaction has not failed and the bindings are good. */
static qk_err stmt_ready(const pg_stmt *s)
{
    if (s->c->err != QK_OK)
        return pgc_failed_before(s->c);
    if (s->bind_err != 0)
        return qk_fail(QK_ERR_INVALID_ARG, "query %d: %s", s->id,
                       s->bind_err == 1 ? "parameter index out of range" : "blob too large");
    return QK_OK;
}

static qk_err stmt_run(pg_stmt *s)
{
    pg_conn *c = s->c;
    const db_query *q = &c->base.d->queries[s->id];
    char name[16], what[32];
    PGresult *r;
    qk_err rc;

    if ((rc = stmt_ready(s)) != QK_OK)
        return rc;
    if (c->one && c->nstmts++ > 0)
        return qk_fail(QK_ERR_INVALID_ARG, "query %d: a second statement in a one-statement read",
                       s->id);
    snprintf(name, sizeof(name), "q%d", s->id);
    snprintf(what, sizeof(what), "query %d", s->id);
    stmt_params(s);
    if (c->nqueued > 0)
        return pipeline_run(c, s, name, what);
    if (c->prepared[s->id] != 1) {
        r = PQprepare(c->pg, name, q->pg != NULL ? q->pg : q->sql, s->nparams,
                      s->nparams > 0 ? s->types : NULL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            rc = conn_fail(c, r, what);
            PQclear(r);
            return rc;
        }
        PQclear(r);
        c->prepared[s->id] = 1;
    }
    r = PQexecPrepared(c->pg, name, s->nparams, s->nparams > 0 ? s->vals : NULL,
                       s->nparams > 0 ? s->lens : NULL, s->nparams > 0 ? s->fmts : NULL, 1);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        rc = conn_fail(c, r, what);
        PQclear(r);
        return rc;
    }
    s->res = r;
    s->row = -1;
    s->nrows = PQntuples(r);
    s->changes = strtoll(PQcmdTuples(r), NULL, 10);
    return QK_OK;
}

/* ---- pipeline: statements held back for the next round trip ------------ */

/* Room for `n` more queued statements, in pipeline mode. */
static qk_err pipeline_room(pg_conn *c, int n, const char *what)
{
    if (c->err != QK_OK)
        return pgc_failed_before(c);
    if (c->nqueued + n > PG_QUEUE_MAX) {
        qk_err rc = pipeline_run(c, NULL, NULL, what);
        if (rc != QK_OK)
            return rc;
    }
    if (PQpipelineStatus(c->pg) == PQ_PIPELINE_OFF && PQenterPipelineMode(c->pg) != 1)
        return conn_fail(c, NULL, what);
    return QK_OK;
}

static pg_queued *queued_add(pg_conn *c, char kind, int id, const char *what)
{
    pg_queued *q = &c->queued[c->nqueued++];
    q->kind = kind;
    q->id = id;
    q->what = what;
    q->expect = -1;
    q->mismatch[0] = '\0';
    return q;
}

/* Sends `sql` (one statement, text parameters) in pipeline mode without
 * waiting for it; its result is read with the next statement's. */
static qk_err pipeline_queue(pg_conn *c, const char *sql, int nparams, const char *const *vals,
                             const char *what)
{
    qk_err rc = pipeline_room(c, 1, what);
    if (rc != QK_OK)
        return rc;
    if (PQsendQueryParams(c->pg, sql, nparams, NULL, vals, NULL, NULL, 0) != 1)
        return conn_fail(c, NULL, what);
    queued_add(c, 'q', -1, what);
    return QK_OK;
}

/* Sends the prepare of statement `s` unless this session has it or one is
 * on its way. */
static int send_prepare(pg_conn *c, pg_stmt *s, const char *name)
{
    const db_query *q = &c->base.d->queries[s->id];
    if (c->prepared[s->id] != 0)
        return 1;
    if (PQsendPrepare(c->pg, name, q->pg != NULL ? q->pg : q->sql, s->nparams,
                      s->nparams > 0 ? s->types : NULL) != 1)
        return 0;
    c->prepared[s->id] = 2; /* sent, not confirmed */
    queued_add(c, 'p', s->id, NULL);
    return 1;
}

static int send_exec(pg_conn *c, pg_stmt *s, const char *name)
{
    return PQsendQueryPrepared(c->pg, name, s->nparams, s->nparams > 0 ? s->vals : NULL,
                               s->nparams > 0 ? s->lens : NULL, s->nparams > 0 ? s->fmts : NULL,
                               1) == 1;
}

/* One result of the pipeline and the NULL that ends it. NULL when the
 * connection broke (raised as the transaction's error). */
static PGresult *pipeline_result(pg_conn *c, const char *what)
{
    PGresult *r = PQgetResult(c->pg);
    if (r == NULL) {
        (void)conn_fail(c, NULL, what);
        /* Out of step with the server: this session is done for; the next
         * transaction connects anew (and this one may rerun). */
        c->why = WHY_LOST;
        PQfinish(c->pg);
        c->pg = NULL;
        return NULL;
    }
    PGresult *end = PQgetResult(c->pg);
    PQclear(end);
    return r;
}

/* Takes one queued result: a prepare confirmed or forgotten, a statement's
 * error or a changed-row count it was not to have remembered as the
 * transaction's error. */
static void queued_result(pg_conn *c, const pg_queued *q, PGresult *r)
{
    char what[32];
    ExecStatusType st = PQresultStatus(r);
    if (q->kind == 'q' || q->kind == 'c')
        snprintf(what, sizeof(what), "%s", q->what);
    else
        snprintf(what, sizeof(what), "query %d", q->id);
    if (q->kind == 'p')
        c->prepared[q->id] = st == PGRES_COMMAND_OK ? 1 : 0;
    if (st == PGRES_FATAL_ERROR) {
        (void)conn_fail(c, r, what);
    } else if (q->kind == 'c' && st == PGRES_COMMAND_OK && strcmp(PQcmdStatus(r), "COMMIT") != 0 &&
               c->err == QK_OK) {
        /* "ROLLBACK": the transaction had failed unnoticed. */
        c->err = QK_ERR_IO;
        c->why = WHY_NONE;
        snprintf(c->detail, sizeof(c->detail), "PostgreSQL rolled the transaction back at COMMIT");
    } else if (q->kind == 'c' && st == PGRES_COMMAND_OK) {
        c->committed = 1;
    } else if (q->kind == 'x' && q->expect >= 0 && st == PGRES_COMMAND_OK &&
               strtoll(PQcmdTuples(r), NULL, 10) != q->expect && c->err == QK_OK) {
        c->err = QK_ERR_INVALID_ARG;
        c->why = WHY_NONE;
        snprintf(c->detail, sizeof(c->detail), "%s", q->mismatch);
    }
}

/* Sends the statement (prepared first if it is not yet; none: only the
 * queue) and a sync, then reads every queued result, the statement's (kept
 * in s->res) and the sync: one round trip. The first error is the
 * transaction's; what was queued after it comes back aborted. */
static qk_err pipeline_run(pg_conn *c, pg_stmt *s, const char *name, const char *what)
{
    int lost = 0, n;
    PGresult *r;
    /* Its prepare, when sent, is the last queued. */
    if (s != NULL)
        lost = !send_prepare(c, s, name) || !send_exec(c, s, name);
    n = c->nqueued;
    c->nqueued = 0;
    if (lost || PQpipelineSync(c->pg) != 1) {
        (void)conn_fail(c, NULL, what);
        return pgc_failed_before(c);
    }
    for (int i = 0; i < n + (s != NULL); i++) {
        const char *w = i < n && (c->queued[i].kind == 'q' || c->queued[i].kind == 'c')
                            ? c->queued[i].what
                            : what;
        if ((r = pipeline_result(c, w)) == NULL)
            return pgc_failed_before(c);
        if (i < n) {
            queued_result(c, &c->queued[i], r);
            PQclear(r);
            continue;
        }
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_FATAL_ERROR)
            (void)conn_fail(c, r, what);
        if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
            s->res = r;
            s->row = -1;
            s->nrows = PQntuples(r);
            s->changes = strtoll(PQcmdTuples(r), NULL, 10);
        } else {
            PQclear(r);
        }
    }
    r = PQgetResult(c->pg);
    int synced = r != NULL && PQresultStatus(r) == PGRES_PIPELINE_SYNC;
    PQclear(r);
    if (!synced || PQexitPipelineMode(c->pg) != 1) {
        /* Out of step with the server (a connection going away): this
         * session is done for, whatever its statements answered. */
        (void)conn_fail(c, NULL, what);
        c->why = WHY_LOST;
        PQfinish(c->pg);
        c->pg = NULL;
    }
    if (c->err != QK_OK) {
        if (s != NULL)
            stmt_reset(s);
        return pgc_failed_before(c);
    }
    return QK_OK;
}

qk_err pgc_flush(pg_conn *c)
{
    if (c->err != QK_OK)
        return pgc_failed_before(c);
    return c->nqueued > 0 ? pipeline_run(c, NULL, NULL, "pipeline") : QK_OK;
}

/* db.h run_later: the statement queued; with room for its prepare. */
static qk_err pg_run_later(db_stmt *base, int64_t expect, const char *mismatch)
{
    pg_stmt *s = (pg_stmt *)base;
    pg_conn *c = s->c;
    char name[16];
    qk_err rc;
    if ((rc = stmt_ready(s)) != QK_OK)
        return rc;
    if (c->one)
        return qk_fail(QK_ERR_INVALID_ARG, "query %d: run later in a one-statement read", s->id);
    snprintf(name, sizeof(name), "q%d", s->id);
    stmt_params(s);
    if ((rc = pipeline_room(c, 2, "pipeline")) != QK_OK)
        return rc;
    if (!send_prepare(c, s, name) || !send_exec(c, s, name))
        return conn_fail(c, NULL, "pipeline");
    pg_queued *q = queued_add(c, 'x', s->id, NULL);
    q->expect = expect;
    snprintf(q->mismatch, sizeof(q->mismatch), "%s",
             mismatch != NULL ? mismatch : "unexpected number of rows changed");
    return QK_OK;
}

static qk_err pg_step(db_stmt *base, int *row)
{
    pg_stmt *s = (pg_stmt *)base;
    *row = 0;
    if (s->res == NULL) {
        qk_err rc = stmt_run(s);
        if (rc != QK_OK)
            return rc;
    }
    if (s->row + 1 < s->nrows) {
        s->row++;
        *row = 1;
    } else {
        s->row = s->nrows;
    }
    return QK_OK;
}

/* Column i of the current row; NULL for SQL NULL or no such cell. */
static const unsigned char *cell(const pg_stmt *s, int i, int *len, Oid *type)
{
    if (s->res == NULL || s->row < 0 || s->row >= s->nrows || i < 0 || i >= PQnfields(s->res) ||
        PQgetisnull(s->res, s->row, i))
        return NULL;
    *len = PQgetlength(s->res, s->row, i);
    *type = PQftype(s->res, i);
    return (const unsigned char *)PQgetvalue(s->res, s->row, i);
}

static int pg_col_null(db_stmt *base, int i)
{
    int len;
    Oid type;
    return cell((pg_stmt *)base, i, &len, &type) == NULL;
}

/* A big-endian two's complement integer of n <= 8 bytes. */
static int64_t be_int(const unsigned char *p, int n)
{
    uint64_t u = 0;
    for (int k = 0; k < n; k++)
        u = u << 8 | p[k];
    if (n > 0 && n < 8 && (p[0] & 0x80) != 0)
        u |= ~(uint64_t)0 << (8 * n);
    return (int64_t)u;
}

/* The integer part of a binary numeric (SUM of bigints is one), saturated;
 * 0 for NaN, infinities and malformed values. Layout: ndigits, weight,
 * sign, dscale (16 bits each), then ndigits base-10000 digits, the first
 * worth 10000^weight. */
static int64_t numeric_int(const unsigned char *p, int n)
{
    if (n < 8)
        return 0;
    int nd = (int16_t)be_int(p, 2), weight = (int16_t)be_int(p + 2, 2);
    unsigned sign = (unsigned)(p[4] << 8 | p[5]);
    if (nd < 0 || n != 8 + 2 * nd || (sign != 0 && sign != 0x4000))
        return 0;
    int64_t v = 0;
    for (int k = 0; k <= weight; k++) {
        int64_t dig = k < nd ? (int64_t)(p[8 + 2 * k] << 8 | p[9 + 2 * k]) : 0;
        if (v > (INT64_MAX - dig) / 10000)
            return sign != 0 ? INT64_MIN : INT64_MAX;
        v = v * 10000 + dig;
    }
    return sign != 0 ? -v : v;
}

static int64_t pg_col_int(db_stmt *base, int i)
{
    int len = 0;
    Oid type = 0;
    const unsigned char *p = cell((pg_stmt *)base, i, &len, &type);
    if (p == NULL)
        return 0;
    switch (type) {
    case PG_INT8OID:
    case PG_INT4OID:
    case PG_INT2OID:
        return len == 8 || len == 4 || len == 2 ? be_int(p, len) : 0;
    case PG_OIDOID:
        return len == 4 ? (int64_t)(uint32_t)be_int(p, 4) : 0;
    case PG_BOOLOID:
        return len == 1 && p[0] != 0;
    case PG_NUMERICOID:
        return numeric_int(p, len);
    case PG_TEXTOID:
    case PG_VARCHAROID:
    case PG_BPCHAROID:
    case PG_NAMEOID:
    case PG_UNKNOWNOID:
        return strtoll((const char *)p, NULL, 10);
    default:
        return 0;
    }
}

/* Text columns arrive as their bytes, which libpq NUL-terminates; integers
 * are formatted (into a buffer of the column's, so two columns' text can be
 * held at once). */
static const char *pg_col_text(db_stmt *base, int i)
{
    pg_stmt *s = (pg_stmt *)base;
    int len = 0;
    Oid type = 0;
    const unsigned char *p = cell(s, i, &len, &type);
    if (p == NULL)
        return NULL;
    switch (type) {
    case PG_JSONBOID: /* a version byte, then the text */
        return len >= 1 && p[0] == 1 ? (const char *)p + 1 : "";
    case PG_INT8OID:
    case PG_INT4OID:
    case PG_INT2OID:
    case PG_OIDOID:
    case PG_NUMERICOID:
        if (i >= s->nnums) {
            int n = PQnfields(s->res);
            s->nums = xrealloc(s->nums, (size_t)n * sizeof(*s->nums));
            s->nnums = n;
        }
        snprintf(s->nums[i], sizeof(s->nums[i]), "%" PRId64, pg_col_int(base, i));
        return s->nums[i];
    default:
        return (const char *)p;
    }
}

static const uint8_t *pg_col_blob(db_stmt *base, int i, size_t *n)
{
    int len = 0;
    Oid type = 0;
    const unsigned char *p = cell((pg_stmt *)base, i, &len, &type);
    *n = p != NULL && len > 0 ? (size_t)len : 0;
    return *n > 0 ? p : NULL;
}

static int64_t pg_changes(db_stmt *base)
{
    return ((pg_stmt *)base)->changes;
}

static void pg_done(db_stmt *base)
{
    stmt_reset((pg_stmt *)base);
}

static void stmt_free(pg_stmt *s)
{
    PQclear(s->res);
    free(s->params);
    free(s->vals);
    free(s->lens);
    free(s->fmts);
    free(s->types);
    free(s->nums);
}

/* ---- connections -------------------------------------------------------- */

static void notice_drop(void *arg, const PGresult *r)
{
    (void)arg;
    log_kv(LOG_DEBUG, "postgres notice", "message", PQresultErrorMessage(r), NULL);
}

/* "cannot connect to PostgreSQL at HOST:PORT: why". Never the password:
 * libpq's messages about a connection that failed do not carry it. */
static qk_err connect_fail(const PGconn *pg)
{
    const char *host = pg != NULL ? PQhost(pg) : NULL;
    const char *port = pg != NULL ? PQport(pg) : NULL;
    char msg[DETAIL_MAX];
    one_line(msg, sizeof(msg), pg != NULL ? PQerrorMessage(pg) : "out of memory");
    return qk_fail(QK_ERR_IO, "cannot connect to PostgreSQL at %s:%s: %s",
                   host != NULL && host[0] != '\0' ? host : "(default)",
                   port != NULL && port[0] != '\0' ? port : "(default)", msg);
}

/* (Re)connects: a new session, so nothing is prepared in it yet. */
qk_err pgc_connect(pg_db *d, pg_conn *c)
{
    memset(c->prepared, 0, (size_t)d->base.nqueries);
    c->nqueued = 0;
    c->commit_sent = 0;
    if (c->pg != NULL)
        PQfinish(c->pg); /* a new session: no half-read pipeline left over */
    c->pg = PQconnectdbParams(d->keys, d->vals, 1);
    if (c->pg != NULL)
        PQsetNoticeReceiver(c->pg, notice_drop, NULL);
    if (c->pg == NULL || PQstatus(c->pg) != CONNECTION_OK)
        return connect_fail(c->pg);
    return QK_OK;
}

/* Reconnects after a lost connection, pausing first (RECONNECT_FIRST_MS
 * doubled per attempt, at most RECONNECT_MAX_PAUSE_MS) and trying again
 * while the server is away (a restart) until `deadline`. The last try is at
 * the deadline: giving up one pause early would cut the window short (a
 * crash recovery of 4 s failed requests 3.4 s after the loss). */
qk_err pgc_reconnect(pg_db *d, pg_conn *c, int attempt, int64_t deadline)
{
    int64_t pause = (int64_t)RECONNECT_FIRST_MS << (attempt - 1);
    for (;;) {
        int64_t left = deadline - pgc_mono_ms();
        if (pause > RECONNECT_MAX_PAUSE_MS)
            pause = RECONNECT_MAX_PAUSE_MS;
        pgc_sleep_ms(pause < left ? pause : left > 0 ? left : 0);
        qk_err rc = pgc_connect(d, c);
        if (rc == QK_OK || pgc_mono_ms() >= deadline)
            return rc;
        pause *= 2;
    }
}

void pgc_free(pg_db *d, pg_conn *c)
{
    if (c->st != NULL)
        for (int i = 0; i < d->base.nqueries; i++)
            stmt_free(&c->st[i]);
    free(c->st);
    free(c->prepared);
    free(c->base.scratch);
    if (c->pg != NULL)
        PQfinish(c->pg);
}

static pg_conn *pool_take(pg_db *d)
{
    pthread_mutex_lock(&d->mu);
    while (d->nidle == 0)
        pthread_cond_wait(&d->cv, &d->mu);
    pg_conn *c = d->idle[--d->nidle];
    pthread_mutex_unlock(&d->mu);
    return c;
}

static void pool_give(pg_db *d, pg_conn *c)
{
    pthread_mutex_lock(&d->mu);
    d->idle[d->nidle++] = c;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

/* ---- transactions ------------------------------------------------------- */

/* BEGIN and the org, queued: they go out with the first statement. The org
 * is a parameter (an integer formatted here). */
qk_err pgc_begin(pg_conn *c, int readonly, int64_t org)
{
    qk_err rc = pipeline_queue(c,
                               readonly ? "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
                                        : "BEGIN ISOLATION LEVEL READ COMMITTED",
                               0, NULL, "BEGIN");
    return rc == QK_OK ? pgc_set_org(c, org) : rc;
}

qk_err pgc_set_org(pg_conn *c, int64_t org)
{
    char v[NUM_TEXT] = "";
    const char *vals[1] = {v};
    if (org != DB_NO_ORG)
        snprintf(v, sizeof(v), "%" PRId64, org);
    return pipeline_queue(c, "SELECT set_config('qwick.org', $1, true)", 1, vals, "set org");
}

static qk_err pg_set_org(db_conn *base, int64_t org)
{
    return pgc_set_org((pg_conn *)base, org);
}

static qk_err pg_exec(db_conn *base, const char *sql)
{
    pg_conn *c = (pg_conn *)base;
    if (c->err != QK_OK)
        return pgc_failed_before(c);
    return pgc_exec(c, sql, "exec");
}

void pgc_rollback(pg_conn *c)
{
    if (c->nqueued > 0)
        (void)pipeline_run(c, NULL, NULL, "ROLLBACK"); /* BEGIN never went out alone */
    if (PQstatus(c->pg) != CONNECTION_OK || PQtransactionStatus(c->pg) == PQTRANS_IDLE)
        return;
    PQclear(PQexec(c->pg, "ROLLBACK"));
}

/* COMMIT. A write whose connection breaks here may or may not have
 * committed: WHY_UNKNOWN, never rerun. */
qk_err pgc_commit(pg_conn *c, int readonly)
{
    qk_err rc = QK_OK;
    /* A write with statements still queued (run later): COMMIT goes out
     * with them, one round trip, unless one of them has a row count to
     * check, which must be seen before anything commits. Lost before its
     * answer, its outcome is unknown. */
    int checks = 0;
    for (int i = 0; i < c->nqueued; i++)
        checks |= c->queued[i].kind == 'x' && c->queued[i].expect >= 0;
    if (!readonly && c->nqueued > 0 && !checks) {
        if ((rc = pipeline_queue(c, "COMMIT", 0, NULL, "COMMIT")) == QK_OK) {
            c->queued[c->nqueued - 1].kind = 'c';
            c->committed = 0;
            rc = pipeline_run(c, NULL, NULL, "COMMIT");
            /* COMMIT answered COMMIT: the transaction is durable, whatever
             * went wrong after that answer (never rerun it). */
            if (rc == QK_OK || c->committed)
                return QK_OK;
            if (c->why == WHY_LOST) {
                c->why = WHY_UNKNOWN;
                rc = qk_fail(QK_ERR_IO, "commit outcome unknown: %s", c->detail);
            }
        }
        pgc_rollback(c); /* COMMIT skipped after an error: the transaction is open */
        return rc;
    }
    /* What is still queued goes first (BEGIN, if fn ran no statement). If it
     * fails, the transaction ends here: left open on a pooled connection it
     * would hold its locks. */
    if (c->nqueued > 0 && (rc = pipeline_run(c, NULL, NULL, "COMMIT")) != QK_OK) {
        pgc_rollback(c);
        return rc;
    }
    /* A read's COMMIT only ends its snapshot: sent, and not waited for (the
     * next transaction on this connection reads its result first). */
    if (readonly && PQsendQuery(c->pg, "COMMIT") == 1) {
        c->commit_sent = 1;
        return QK_OK;
    }
    PGresult *r = PQexec(c->pg, "COMMIT");
    if (PQresultStatus(r) == PGRES_COMMAND_OK) {
        /* "ROLLBACK" would mean the transaction had failed unnoticed. */
        if (strcmp(PQcmdStatus(r), "COMMIT") != 0)
            rc = qk_fail(QK_ERR_IO, "PostgreSQL rolled the transaction back at COMMIT");
        PQclear(r);
        return rc;
    }
    rc = conn_fail(c, r, "COMMIT");
    if ((r == NULL || c->why == WHY_LOST) && !readonly) {
        c->why = WHY_UNKNOWN;
        rc = qk_fail(QK_ERR_IO, "commit outcome unknown: %s", c->detail);
    }
    PQclear(r);
    return rc;
}

void pgc_txn_new(pg_conn *c)
{
    static atomic_uint_fast64_t next = 1;
    c->base.txn = atomic_fetch_add(&next, 1);
}

qk_err pgc_txn_prepare(pg_db *d, pg_conn *c)
{
    qk_err rc;
    pgc_txn_new(c);
    c->err = QK_OK;
    c->why = WHY_NONE;
    c->detail[0] = '\0';
    c->nqueued = 0;
    if (c->pg != NULL && PQpipelineStatus(c->pg) != PQ_PIPELINE_OFF) {
        PQfinish(c->pg); /* left mid-pipeline by a failure: start afresh */
        c->pg = NULL;
        c->commit_sent = 0;
    }
    if (c->commit_sent) {
        PGresult *r;
        c->commit_sent = 0;
        while (c->pg != NULL && (r = PQgetResult(c->pg)) != NULL)
            PQclear(r); /* a read's COMMIT: nothing to learn from it */
    }
    if (c->pg == NULL || PQstatus(c->pg) != CONNECTION_OK) {
        if ((rc = pgc_connect(d, c)) != QK_OK) {
            c->why = WHY_LOST;
            snprintf(c->detail, sizeof(c->detail), "%s", qk_error_detail());
            return rc;
        }
    }
    pgc_rollback(c); /* a transaction left open by a failed rollback */
    return QK_OK;
}

void pgc_reset_stmts(pg_db *d, pg_conn *c)
{
    for (int i = 0; i < d->base.nqueries; i++)
        if (c->st[i].res != NULL || c->st[i].nparams > 0)
            stmt_reset(&c->st[i]);
}

/* One run of the transaction; c->why says whether another may follow. */
/* `mode`: TXN_WRITE, TXN_READ, or TXN_READ1: a read of one statement,
 * which needs no transaction block (the org and the statement go out
 * together, one implicit transaction up to the sync: one snapshot, the
 * org's setting local to it). */
enum { TXN_WRITE = 0, TXN_READ = 1, TXN_READ1 = 2 };

static qk_err txn_once(pg_db *d, pg_conn *c, int mode, int64_t org, db_txn_fn fn, void *arg)
{
    qk_err rc = pgc_txn_prepare(d, c);
    if (rc != QK_OK)
        return rc;
    if (mode == TXN_READ1) {
        c->one = 1;
        c->nstmts = 0;
        if (org != DB_NO_ORG)
            rc = pgc_set_org(c, org);
        if (rc == QK_OK)
            rc = fn(&c->base, arg);
        if (rc == QK_OK)
            rc = pgc_flush(c); /* fn ran no statement: the org went nowhere */
        c->one = 0;
        pgc_reset_stmts(d, c);
        return rc;
    }
    int readonly = mode == TXN_READ;
    rc = pgc_begin(c, readonly, org);
    if (rc == QK_OK)
        rc = fn(&c->base, arg);
    if (rc == QK_OK && c->err != QK_OK)
        rc = pgc_failed_before(c); /* fn went on after an error */
    pgc_reset_stmts(d, c);
    if (rc != QK_OK) {
        pgc_rollback(c);
        return rc;
    }
    return pgc_commit(c, readonly);
}

static qk_err txn_run(pg_db *d, int mode, int64_t org, db_txn_fn fn, void *arg)
{
    pg_conn *c = pool_take(d);
    int conflicts = 0, losses = 0;
    int64_t deadline = 0;
    qk_err rc;
    for (;;) {
        rc = txn_once(d, c, mode, org, fn, arg);
        if (rc == QK_OK)
            break;
        if (c->why == WHY_CONFLICT && conflicts < CONFLICT_RETRIES) {
            conflicts++;
            log_kv(LOG_DEBUG, "postgres transaction conflict, retrying", "detail", c->detail, NULL);
            pgc_sleep_ms(pgc_conflict_pause_ms(conflicts));
            continue;
        }
        if (c->why != WHY_LOST || losses >= LOST_RETRIES)
            break;
        losses++;
        if (deadline == 0)
            deadline = pgc_mono_ms() + RECONNECT_WINDOW_MS;
        log_kv(LOG_WARN, "postgres connection lost, reconnecting", "detail", c->detail, NULL);
        if ((rc = pgc_reconnect(d, c, losses, deadline)) != QK_OK)
            break;
    }
    pool_give(d, c);
    return rc;
}

static qk_err pg_read(qk_db *base, int64_t org, db_txn_fn fn, void *arg)
{
    return txn_run((pg_db *)base, TXN_READ, org, fn, arg);
}

static qk_err pg_read1(qk_db *base, int64_t org, db_txn_fn fn, void *arg)
{
    return txn_run((pg_db *)base, TXN_READ1, org, fn, arg);
}

static qk_err pg_write(qk_db *base, int64_t org, db_txn_fn fn, void *arg)
{
    return txn_run((pg_db *)base, TXN_WRITE, org, fn, arg);
}

/* ---- open / close ------------------------------------------------------- */

static void pg_close(qk_db *base)
{
    pg_db *d = (pg_db *)base;
    if (d == NULL)
        return;
    pg_writer_stop(d); /* queued writes land first */
    if (d->conns != NULL)
        for (int i = 0; i < d->nconns; i++)
            pgc_free(d, &d->conns[i]);
    free(d->conns);
    free(d->idle);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    free(d->conninfo);
    free(d->user);
    if (d->password != NULL) {
        explicit_bzero(d->password, strlen(d->password));
        free(d->password);
    }
    free(d);
}

/* A connection string (URL or key=value) must parse; a bare word is a
 * database name, which libpq takes as it is. */
static qk_err conninfo_check(const char *conninfo)
{
    char *err = NULL, msg[DETAIL_MAX];
    if (strchr(conninfo, '=') == NULL && strncmp(conninfo, "postgresql://", 13) != 0 &&
        strncmp(conninfo, "postgres://", 11) != 0)
        return QK_OK;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    if (opts != NULL) {
        PQconninfoFree(opts);
        return QK_OK;
    }
    redacted(msg, sizeof(msg), err != NULL ? err : "out of memory");
    PQfreemem(err);
    return qk_fail(QK_ERR_INVALID_ARG, "invalid PostgreSQL connection string: %s", msg);
}

static const db_ops pg_ops = {
    .close = pg_close,
    .read = pg_read,
    .write = pg_write,
    .read1 = pg_read1,
    .write_async = pg_write_async,
    .flush = pg_flush,
    .set_org = pg_set_org,
    .exec = pg_exec,
    .prepare = pg_prepare,
    .bind_int = pg_bind_int,
    .bind_text = pg_bind_text,
    .bind_blob = pg_bind_blob,
    .bind_null = pg_bind_null,
    .step = pg_step,
    .run_later = pg_run_later,
    .col_null = pg_col_null,
    .col_int = pg_col_int,
    .col_text = pg_col_text,
    .col_blob = pg_col_blob,
    .changes = pg_changes,
    .done = pg_done,
};

void pgc_init(pg_db *d, pg_conn *c)
{
    int n = d->base.nqueries;
    c->base.d = &d->base;
    c->st = xcalloc((size_t)n, sizeof(*c->st));
    c->prepared = xcalloc((size_t)n, 1);
    for (int i = 0; i < n; i++) {
        c->st[i].base.ops = &pg_ops;
        c->st[i].c = c;
        c->st[i].id = i;
        c->st[i].row = -1;
    }
}

qk_err db_pg_open_as(const char *conninfo, const char *user, const char *password, int conns,
                     const db_query *queries, int nqueries, qk_db **out)
{
    qk_err rc;
    pg_db *d = NULL;
    int k = 0;

    *out = NULL;
    if (conninfo == NULL)
        conninfo = "";
    if (conns < 1 || conns > DB_PG_MAX_CONNS)
        return qk_fail(QK_ERR_INVALID_ARG, "PostgreSQL pool size %d (1..%d)", conns,
                       DB_PG_MAX_CONNS);
    if (nqueries < 0 || (nqueries > 0 && queries == NULL))
        return qk_fail(QK_ERR_INVALID_ARG, "no queries for the PostgreSQL driver");
    if ((rc = conninfo_check(conninfo)) != QK_OK)
        return rc;

    d = xcalloc(1, sizeof(*d));
    d->base.ops = &pg_ops;
    d->base.dialect = DB_PG;
    d->base.queries = queries;
    d->base.nqueries = nqueries;
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    d->conninfo = xstrdup(conninfo);
    d->user = xstrdup_null(user);
    d->password = xstrdup_null(password);
    /* Later entries override earlier ones; a NULL value is skipped. */
    d->keys[k] = "connect_timeout";
    d->vals[k++] = "5";
    d->keys[k] = "application_name";
    d->vals[k++] = "qwickd";
    d->keys[k] = "dbname";
    d->vals[k++] = d->conninfo;
    d->keys[k] = "user";
    d->vals[k++] = d->user;
    d->keys[k] = "password";
    d->vals[k++] = d->password;
    d->keys[k] = NULL;
    d->vals[k] = NULL;

    d->nconns = conns;
    d->conns = xcalloc((size_t)conns, sizeof(*d->conns));
    d->idle = xcalloc((size_t)conns, sizeof(*d->idle));
    for (int i = 0; i < conns; i++)
        pgc_init(d, &d->conns[i]);
    /* The stack's top is conns[0], connected now; the rest connect lazily. */
    for (int i = conns - 1; i >= 0; i--)
        d->idle[d->nidle++] = &d->conns[i];
    if ((rc = pgc_connect(d, &d->conns[0])) != QK_OK ||
        (rc = pg_writer_start(d, PG_WRITERS)) != QK_OK)
        goto out;
    *out = &d->base;
    d = NULL;
    rc = QK_OK;
out:
    pg_close(d ? &d->base : NULL);
    return rc;
}

qk_err db_pg_open(const char *conninfo, int conns, const db_query *queries, int nqueries,
                  qk_db **out)
{
    return db_pg_open_as(conninfo, NULL, NULL, conns, queries, nqueries, out);
}
