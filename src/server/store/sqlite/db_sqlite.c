/* The SQLite driver of store/db.h.
 *
 * One writer connection owned by a writer thread; every write is a job queued
 * to it. The thread takes all pending jobs, runs them in one BEGIN IMMEDIATE …
 * COMMIT (one WAL fsync under synchronous=FULL), each job under a SAVEPOINT,
 * and then wakes the callers (group commit). Reads take a connection from a
 * small pool of reader connections and run in a read transaction; in WAL mode
 * they see the last committed state and never wait for the writer. A
 * checkpointer thread copies the WAL into the database from its own
 * connection, so the writer never stalls on it.
 *
 * SQLite has no row-level security: the org of a transaction is ignored, and
 * the store's queries name the org in every WHERE clause. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "core/log.h"
#include "core/util.h"
#include "store/db.h"
#include "store/sqlite/db_sqlite.h"

#define BUSY_TIMEOUT_MS 10000
#define MAX_READERS 16
#define MAX_BATCH 512 /* bounds one transaction's latency */

typedef struct sq_conn sq_conn;

typedef struct sq_stmt {
    db_stmt base;
    sq_conn *c;
    sqlite3_stmt *st;
    int64_t changes;
} sq_stmt;

struct sq_conn {
    db_conn base;
    sqlite3 *db;
    sq_stmt *st; /* one per query id, prepared on first use */
};

/* ---- writer jobs ------------------------------------------------------ */

typedef struct wjob wjob;

struct wjob {
    wjob *next;
    db_txn_fn fn;
    void *arg;
    int detached;       /* nobody waits: the writer frees it (after calling `done`) */
    db_done_fn on_done; /* detached jobs: told the outcome once the batch ends */
    void *on_done_arg;
    int done;          /* set under the queue mutex once the batch committed or failed */
    int64_t queued_ns; /* CLOCK_MONOTONIC when enqueued (the commit delay's start) */
    /* The waiter's own condition: the writer wakes exactly the callers of a
     * finished batch. One shared condition broadcast woke every waiting
     * caller (up to the commit pool, 32 threads) for each batch, most of
     * them only to sleep again: ~3 futile context switches per request. */
    pthread_cond_t cv;
    qk_err rc;
    char detail[256];
};

typedef struct sq_store {
    qk_db base;
    char *db_path;

    pthread_mutex_t rmu; /* reader pool */
    pthread_cond_t rcv;
    sq_conn *rfree[MAX_READERS];
    size_t nfree, nopen;

    sq_conn writer;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t wmu; /* job queue */
    pthread_cond_t wcv;  /* jobs arrived / stop */
    wjob *head, *tail;
    size_t nqueued;
    int stopping;
    /* Commit delay (see db_sqlite_set_commit_delay): while `delaying`, an
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
} sq_store;

static qk_err sq_fail(sqlite3 *db, int rc, const char *what)
{
    int primary = rc & 0xff;
    const char *msg = db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    if (primary == SQLITE_CONSTRAINT)
        return qk_fail(QK_ERR_INVALID_ARG, "%s: %s", what, msg);
    if (primary == SQLITE_NOMEM)
        return qk_fail(QK_ERR_NOMEM, "%s: %s", what, msg);
    return qk_fail(QK_ERR_IO, "%s: %s", what, msg);
}

static qk_err exec_sql(sq_conn *c, const char *sql)
{
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return sq_fail(c->db, rc, sql);
    return QK_OK;
}

/* ---- statements ------------------------------------------------------- */

static const db_ops sqlite_ops;

/* The store writes PostgreSQL's placeholders ($1, $2...); SQLite reads `$1`
 * as a parameter *named* "$1", numbered by first appearance, so a query that
 * uses $3 before $1 would bind the wrong values. `?1` is SQLite's numbered
 * form: the text is copied with each `$<digit>` turned into `?<digit>`. (The
 * store's queries hold no `$` in string literals.) */
static char *sqlite_placeholders(const char *sql)
{
    char *out = xstrdup(sql);
    for (char *p = out; *p != '\0'; p++)
        if (p[0] == '$' && p[1] >= '0' && p[1] <= '9')
            p[0] = '?';
    return out;
}

static qk_err sq_prepare(db_conn *base, int id, db_stmt **out)
{
    sq_conn *c = (sq_conn *)base;
    const qk_db *d = base->d;
    *out = NULL;
    if (id < 0 || id >= d->nqueries)
        return qk_fail(QK_ERR_INVALID_ARG, "no query %d", id);
    sq_stmt *s = &c->st[id];
    if (s->st == NULL) {
        char *sql = sqlite_placeholders(d->queries[id].sql);
        int rc = sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->st, NULL);
        free(sql);
        if (rc != SQLITE_OK)
            return sq_fail(c->db, rc, "prepare");
    }
    s->changes = 0;
    *out = &s->base;
    return QK_OK;
}

static void sq_bind_int(db_stmt *base, int i, int64_t v)
{
    sqlite3_bind_int64(((sq_stmt *)base)->st, i, v);
}

static void sq_bind_text(db_stmt *base, int i, const char *s)
{
    sqlite3_stmt *st = ((sq_stmt *)base)->st;
    if (s == NULL)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

static void sq_bind_blob(db_stmt *base, int i, const uint8_t *p, size_t n)
{
    sqlite3_bind_blob64(((sq_stmt *)base)->st, i, p != NULL ? (const void *)p : (const void *)"", n,
                        SQLITE_STATIC);
}

static void sq_bind_null(db_stmt *base, int i)
{
    sqlite3_bind_null(((sq_stmt *)base)->st, i);
}

static qk_err sq_step(db_stmt *base, int *row)
{
    sq_stmt *s = (sq_stmt *)base;
    int r = sqlite3_step(s->st);
    *row = 0;
    if (r == SQLITE_ROW) {
        *row = 1;
        return QK_OK;
    }
    if (r == SQLITE_DONE) {
        s->changes = sqlite3_changes(s->c->db);
        return QK_OK;
    }
    return sq_fail(s->c->db, r, "query");
}

static int sq_col_null(db_stmt *base, int i)
{
    return sqlite3_column_type(((sq_stmt *)base)->st, i) == SQLITE_NULL;
}

static int64_t sq_col_int(db_stmt *base, int i)
{
    return sqlite3_column_int64(((sq_stmt *)base)->st, i);
}

static const char *sq_col_text(db_stmt *base, int i)
{
    return (const char *)sqlite3_column_text(((sq_stmt *)base)->st, i);
}

static const uint8_t *sq_col_blob(db_stmt *base, int i, size_t *n)
{
    sqlite3_stmt *st = ((sq_stmt *)base)->st;
    const uint8_t *p = sqlite3_column_blob(st, i);
    int len = sqlite3_column_bytes(st, i);
    *n = p != NULL && len > 0 ? (size_t)len : 0;
    return *n > 0 ? p : NULL;
}

static int64_t sq_changes(db_stmt *base)
{
    return ((sq_stmt *)base)->changes;
}

/* Back to the cache: reset, bindings cleared (so no borrowed pointer outlives
 * the call). */
static void sq_done(db_stmt *base)
{
    sqlite3_stmt *st = ((sq_stmt *)base)->st;
    if (st != NULL) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
}

static qk_err sq_set_org(db_conn *c, int64_t org)
{
    (void)c;
    (void)org;
    return QK_OK;
}

static qk_err sq_exec(db_conn *c, const char *sql)
{
    return exec_sql((sq_conn *)c, sql);
}

/* ---- connections ------------------------------------------------------ */

static void conn_close(sq_conn *c)
{
    if (c == NULL)
        return;
    if (c->st != NULL)
        for (int i = 0; i < c->base.d->nqueries; i++)
            sqlite3_finalize(c->st[i].st);
    free(c->st);
    sqlite3_close(c->db);
    memset(c, 0, sizeof(*c));
}

static qk_err conn_open(sq_store *s, int writer, sq_conn *c)
{
    qk_err rc = QK_ERR_IO;
    int r;

    memset(c, 0, sizeof(*c));
    c->base.d = &s->base;
    c->st = xcalloc((size_t)s->base.nqueries, sizeof(*c->st));
    for (int i = 0; i < s->base.nqueries; i++) {
        c->st[i].base.ops = &sqlite_ops;
        c->st[i].c = c;
    }
    /* NOMUTEX: a connection is only ever used by one thread at a time (the
     * writer thread, or whoever holds it from the pool). */
    r = sqlite3_open_v2(s->db_path, &c->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
                            SQLITE_OPEN_NOFOLLOW,
                        NULL);
    if (r != SQLITE_OK) {
        rc = sq_fail(c->db, r, s->db_path);
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
         * runs them (db_sqlite_open installs the WAL hook that wakes it). */
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

static qk_err reader_get(sq_store *s, sq_conn **out)
{
    qk_err rc;
    sq_conn *c = NULL;

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
    if ((rc = conn_open(s, 0, c)) != QK_OK) {
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

static void reader_put(sq_store *s, sq_conn *c)
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

/* A read: one snapshot (a read transaction) for everything fn reads. */
static qk_err sq_read(qk_db *base, int64_t org, db_txn_fn fn, void *arg)
{
    sq_store *s = (sq_store *)base;
    sq_conn *c = NULL;
    qk_err rc;
    (void)org;
    if ((rc = reader_get(s, &c)) != QK_OK)
        return rc;
    if ((rc = exec_sql(c, "BEGIN")) == QK_OK)
        rc = fn(&c->base, arg);
    if (!sqlite3_get_autocommit(c->db))
        sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL);
    reader_put(s, c);
    return rc;
}

/* ---- the writer thread ------------------------------------------------ */

static void fail_job(wjob *j, qk_err rc, const char *detail)
{
    j->rc = rc;
    snprintf(j->detail, sizeof(j->detail), "%s", detail);
}

static void run_batch(sq_store *s, wjob *batch)
{
    sq_conn *c = &s->writer;
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
            rc = j->fn(&c->base, j->arg);
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
static qk_err sq_write(qk_db *base, int64_t org, db_txn_fn fn, void *arg)
{
    sq_store *s = (sq_store *)base;
    wjob j;
    (void)org;
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

/* The same without a waiting thread: the writer reports the outcome to
 * done() itself (a thread parked per in-flight request cost two context
 * switches and a thread hop per request). */
static qk_err sq_write_async(qk_db *base, int64_t org, db_txn_fn fn, void *arg, db_done_fn done,
                             void *done_arg)
{
    sq_store *s = (sq_store *)base;
    wjob *j = calloc(1, sizeof(*j));
    (void)org;
    if (j == NULL)
        return qk_fail(QK_ERR_NOMEM, "queue write");
    j->fn = fn;
    j->arg = arg;
    j->detached = 1;
    j->on_done = done;
    j->on_done_arg = done_arg;
    pthread_mutex_lock(&s->wmu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->wmu);
        free(j);
        return qk_fail(QK_ERR_IO, "store is closing");
    }
    enqueue(s, j);
    pthread_mutex_unlock(&s->wmu);
    return QK_OK;
}

static qk_err txn_nothing(db_conn *c, void *arg)
{
    (void)c;
    (void)arg;
    return QK_OK;
}

static void sq_flush(qk_db *base)
{
    /* The queue is FIFO and the writer runs a batch's completions before it
     * wakes the batch's waiters: when this job is done, so is all before it. */
    (void)sq_write(base, DB_NO_ORG, txn_nothing, NULL);
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
    int r =
        sqlite3_open_v2(s->db_path, &s->ckpt_db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW, NULL);
    if (r != SQLITE_OK)
        return sq_fail(s->ckpt_db, r, "checkpoint connection");
    sqlite3_busy_timeout(s->ckpt_db, BUSY_TIMEOUT_MS); /* RESTART waits for the writer */
    /* A connection opens the WAL at its first read; a checkpoint before that
     * finds "not in WAL mode" and does nothing. */
    r = sqlite3_exec(s->ckpt_db, "PRAGMA schema_version", NULL, NULL, NULL);
    if (r != SQLITE_OK)
        return sq_fail(s->ckpt_db, r, "checkpoint connection");
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

/* ---- open / close ----------------------------------------------------- */

static void sq_close(qk_db *base)
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

static const db_ops sqlite_ops = {
    .close = sq_close,
    .read = sq_read,
    .write = sq_write,
    .write_async = sq_write_async,
    .flush = sq_flush,
    .set_org = sq_set_org,
    .exec = sq_exec,
    .prepare = sq_prepare,
    .bind_int = sq_bind_int,
    .bind_text = sq_bind_text,
    .bind_blob = sq_bind_blob,
    .bind_null = sq_bind_null,
    .step = sq_step,
    .col_null = sq_col_null,
    .col_int = sq_col_int,
    .col_text = sq_col_text,
    .col_blob = sq_col_blob,
    .changes = sq_changes,
    .done = sq_done,
};

/* Before SQLite initializes (process-wide): savepoint sub-journals stay in
 * memory in small chunks. By default each one is a 64 KiB buffer (the
 * spill threshold), allocated and freed per write under the writer's
 * SAVEPOINT, and glibc gave the freed block back to the kernel every time
 * (madvise and a TLB shootdown on every core): 12-16% of qwickd's CPU on the
 * queued path, all of it on the one writer thread. A sub-journal holds one
 * write's pages, so memory stays small. */
static pthread_once_t config_once = PTHREAD_ONCE_INIT;

static void sqlite_configure(void)
{
    (void)sqlite3_config(SQLITE_CONFIG_STMTJRNL_SPILL, -1); /* MISUSE once initialized: fine */
}

qk_err db_sqlite_open(const char *path, const db_query *queries, int nqueries, qk_db **out)
{
    qk_err rc = QK_ERR_IO;
    sq_store *s = NULL;
    int fd;

    *out = NULL;
    pthread_once(&config_once, sqlite_configure);
    if (sqlite3_threadsafe() == 0)
        return qk_fail(QK_ERR_IO, "libsqlite3 was built without thread support");
    s = xcalloc(1, sizeof(*s));
    s->base.ops = &sqlite_ops;
    s->base.dialect = DB_SQLITE;
    s->base.queries = queries;
    s->base.nqueries = nqueries;
    s->db_path = xstrdup(path);
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
    if ((rc = conn_open(s, 1, &s->writer)) != QK_OK)
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

void db_sqlite_stats(qk_db *base, db_sqlite_counters *out)
{
    sq_store *s = (sq_store *)base;
    out->commits = atomic_load(&s->commits);
    out->writes = atomic_load(&s->writes);
    out->delayed = atomic_load(&s->delayed);
    out->checkpoints = atomic_load(&s->checkpoints);
    out->ckpt_frames = atomic_load(&s->ckpt_copied);
}

void db_sqlite_set_commit_delay(qk_db *base, unsigned usec, const atomic_int *coming)
{
    sq_store *s = (sq_store *)base;
    if (usec > DB_SQLITE_MAX_COMMIT_DELAY_US)
        usec = DB_SQLITE_MAX_COMMIT_DELAY_US;
    pthread_mutex_lock(&s->wmu);
    s->delay_ns = (int64_t)usec * 1000;
    s->coming = coming;
    pthread_mutex_unlock(&s->wmu);
}

void db_sqlite_fail_commits(qk_db *base, int n)
{
    sq_store *s = (sq_store *)base;
    atomic_store(&s->fail_commits, n);
}
