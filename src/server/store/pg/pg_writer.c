/* The batching writer of the PostgreSQL driver: db.h's write_async.
 *
 * Writes nobody waits for (the signing path's request records with their
 * audit entries, last-use touches of API keys) are queued. PG_WRITERS
 * thread(s), each on a connection of its own outside the pool, take up to
 * PG_BATCH_MAX of them at a time and run them in one transaction, the org
 * set before each write of another org than the one before:
 *
 *   BEGIN; set_config(org 1)   write 1   write 2   set_config(org 2) ... COMMIT
 *
 * So a batch costs one commit (one WAL flush) and waits for an org's
 * log-head lock once, where a transaction per write paid both every time and
 * held the lock across its own commit. A write that fails on its own (a
 * constraint, an error of its fn) rolls the batch back, which runs again
 * with each write under a savepoint (SAVEPOINT w; set_config; write; RELEASE
 * w): the failed one is rolled back to its savepoint and reported, the
 * others commit. The batch is rerun whole, like any transaction here (db.h:
 * fn may run more than once), after a deadlock, a serialization failure or a
 * connection lost before COMMIT was sent; a COMMIT whose outcome is unknown
 * fails every write of the batch and is never rerun. Each write's done()
 * runs once its batch has committed or failed.
 *
 * Within a batch the writes are sorted by org (stably: one org's writes keep
 * their order), so two writers, or two nodes, take the orgs' log-head locks
 * in the same order and cannot deadlock on them. One writer per node:
 * a second one only waited for the first's log-head locks, and took the
 * writes the first would have batched (two writes per batch, not tens). */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/util.h"
#include "store/pg/pg_internal.h"

typedef struct pg_wjob {
    struct pg_wjob *next;
    int64_t org;
    db_txn_fn fn;
    void *arg;
    db_done_fn done;
    void *done_arg;
    qk_err rc;
    char detail[DETAIL_MAX];
} pg_wjob;

struct pg_writer {
    pg_db *d;
    pthread_mutex_t mu;
    pthread_cond_t work; /* a write was queued, or the writer stops */
    pthread_cond_t idle; /* a batch finished */
    pg_wjob *head, *tail;
    int busy;                 /* batches being run */
    uint64_t commits, writes; /* batches committed, the writes they carried */
    int stopping;             /* no more writes taken; the queue is drained */
    int nthreads;
    pthread_t *threads;
    pg_conn *conns;
};

typedef struct writer_thread {
    struct pg_writer *w;
    pg_conn *c;
} writer_thread;

/* Careful runs: the savepoint statements, then the org. */
static qk_err batch_savepoint(pg_conn *c, const char *sql, int64_t org)
{
    qk_err rc = pgc_exec(c, sql, "SAVEPOINT");
    return rc == QK_OK ? pgc_set_org(c, org) : rc;
}

/* One run of the batch. Sets each write's own outcome; returns the batch's
 * (not QK_OK: nothing of it committed, c->why says whether to rerun).
 *
 * The first run is optimistic: no savepoints, the org set only where it
 * changes (the batch is sorted by org). A write that fails on its own then
 * (rarely: a constraint, its fn's error) sets *careful, and the batch is
 * rolled back and run again carefully, each write under a savepoint. */
static qk_err batch_once(pg_db *d, pg_conn *c, pg_wjob **jobs, int n, int *careful)
{
    int undo = 0; /* careful: the previous write failed, back to its savepoint */
    qk_err rc = pgc_txn_prepare(d, c);
    if (rc != QK_OK)
        return rc;
    for (int i = 0; i < n; i++) {
        pg_wjob *j = jobs[i];
        if (*careful)
            pgc_txn_new(c); /* its savepoint may be rolled back */
        if (*careful)
            rc =
                batch_savepoint(c,
                                i == 0 ? "BEGIN ISOLATION LEVEL READ COMMITTED; SAVEPOINT w"
                                : undo ? "ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w; SAVEPOINT w"
                                       : "RELEASE SAVEPOINT w; SAVEPOINT w",
                                j->org);
        else if (i == 0)
            rc = pgc_begin(c, 0, j->org);
        else if (j->org != jobs[i - 1]->org)
            rc = pgc_set_org(c, j->org);
        if (rc != QK_OK)
            goto fail;
        rc = j->fn(&c->base, j->arg);
        if (rc == QK_OK && c->err != QK_OK)
            rc = pgc_failed_before(c); /* fn went on after an error */
        if (rc == QK_OK && *careful)
            rc = pgc_flush(c); /* its deferred statements' errors are its own */
        pgc_reset_stmts(d, c);
        j->rc = rc;
        undo = rc != QK_OK;
        if (rc == QK_OK)
            continue;
        if (c->why != WHY_NONE)
            goto fail; /* a conflict or a lost connection: the whole batch */
        /* This write alone. */
        snprintf(j->detail, sizeof(j->detail), "%s", qk_error_detail());
        if (!*careful) {
            *careful = 1;
            goto fail;
        }
        c->err = QK_OK; /* its savepoint undoes it, the others go on */
    }
    /* Optimistic: the last writes' deferred statements go out with COMMIT;
     * if one fails, which write it belongs to is unknown (and nothing
     * committed): a careful run will tell. */
    if (!*careful) {
        if ((rc = pgc_commit(c, 0)) != QK_OK && c->why == WHY_NONE)
            *careful = 1;
        return rc;
    }
    if (undo && (rc = pgc_exec(c, "ROLLBACK TO SAVEPOINT w", "ROLLBACK TO SAVEPOINT")) != QK_OK)
        goto fail;
    return pgc_commit(c, 0);
fail:
    pgc_rollback(c);
    return rc;
}

/* 1 when the batch committed. */
static int run_batch(pg_db *d, pg_conn *c, pg_wjob **jobs, int n)
{
    int conflicts = 0, losses = 0, careful = 0;
    int64_t deadline = 0;
    qk_err rc;
    for (;;) {
        int was_careful = careful;
        for (int i = 0; i < n; i++) {
            jobs[i]->rc = QK_OK;
            jobs[i]->detail[0] = '\0';
        }
        if ((rc = batch_once(d, c, jobs, n, &careful)) == QK_OK)
            return 1;
        if (careful && !was_careful)
            continue; /* a write failed alone: again, with savepoints */
        if (c->why == WHY_CONFLICT && conflicts < CONFLICT_RETRIES) {
            conflicts++;
            log_kv(LOG_DEBUG, "postgres batch conflict, retrying", "detail", c->detail, NULL);
            pgc_sleep_ms(pgc_conflict_pause_ms(conflicts));
            continue;
        }
        if (c->why != WHY_LOST || losses >= LOST_RETRIES)
            break;
        losses++;
        if (deadline == 0)
            deadline = pgc_mono_ms() + RECONNECT_WINDOW_MS;
        log_kv(LOG_WARN, "postgres connection lost, reconnecting the writer", "detail", c->detail,
               NULL);
        if ((rc = pgc_reconnect(d, c, losses, deadline)) != QK_OK)
            break;
    }
    char detail[DETAIL_MAX];
    snprintf(detail, sizeof(detail), "%s", qk_error_detail());
    for (int i = 0; i < n; i++) {
        jobs[i]->rc = rc;
        memcpy(jobs[i]->detail, detail, sizeof(detail));
    }
    return 0;
}

static void *writer_main(void *arg)
{
    writer_thread *t = arg;
    struct pg_writer *w = t->w;
    pg_wjob *jobs[PG_BATCH_MAX];

    for (;;) {
        int n = 0;
        pthread_mutex_lock(&w->mu);
        while (w->head == NULL && !w->stopping)
            pthread_cond_wait(&w->work, &w->mu);
        if (w->head == NULL) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        while (w->head != NULL && n < PG_BATCH_MAX) {
            jobs[n++] = w->head;
            w->head = w->head->next;
        }
        if (w->head == NULL)
            w->tail = NULL;
        w->busy++;
        pthread_mutex_unlock(&w->mu);

        /* Stable insertion sort by org: one lock order for every batch. */
        for (int i = 1; i < n; i++) {
            pg_wjob *j = jobs[i];
            int k = i;
            for (; k > 0 && jobs[k - 1]->org > j->org; k--)
                jobs[k] = jobs[k - 1];
            jobs[k] = j;
        }
        int committed = run_batch(w->d, t->c, jobs, n), carried = 0;
        for (int i = 0; i < n; i++) {
            pg_wjob *j = jobs[i];
            carried += j->rc == QK_OK;
            if (j->done != NULL)
                j->done(j->done_arg, j->rc, j->rc == QK_OK ? NULL : j->detail);
            free(j);
        }

        pthread_mutex_lock(&w->mu);
        w->busy--;
        w->commits += (uint64_t)committed;
        w->writes += (uint64_t)carried;
        pthread_cond_broadcast(&w->idle);
        pthread_mutex_unlock(&w->mu);
    }
    free(t);
    return NULL;
}

qk_err pg_write_async(qk_db *base, int64_t org, db_txn_fn fn, void *arg, db_done_fn done,
                      void *done_arg)
{
    struct pg_writer *w = ((pg_db *)base)->writer;
    pthread_mutex_lock(&w->mu);
    if (w->stopping) {
        pthread_mutex_unlock(&w->mu);
        return qk_fail(QK_ERR_IO, "the store is closing");
    }
    pg_wjob *j = xcalloc(1, sizeof(*j));
    j->org = org;
    j->fn = fn;
    j->arg = arg;
    j->done = done;
    j->done_arg = done_arg;
    if (w->tail != NULL)
        w->tail->next = j;
    else
        w->head = j;
    w->tail = j;
    pthread_cond_signal(&w->work);
    pthread_mutex_unlock(&w->mu);
    return QK_OK;
}

void db_pg_stats(qk_db *base, uint64_t *commits, uint64_t *writes)
{
    struct pg_writer *w = ((pg_db *)base)->writer;
    pthread_mutex_lock(&w->mu);
    *commits = w->commits;
    *writes = w->writes;
    pthread_mutex_unlock(&w->mu);
}

void pg_flush(qk_db *base)
{
    struct pg_writer *w = ((pg_db *)base)->writer;
    pthread_mutex_lock(&w->mu);
    while (w->head != NULL || w->busy > 0)
        pthread_cond_wait(&w->idle, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

qk_err pg_writer_start(pg_db *d, int threads)
{
    struct pg_writer *w = xcalloc(1, sizeof(*w));
    w->d = d;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->work, NULL);
    pthread_cond_init(&w->idle, NULL);
    w->threads = xcalloc((size_t)threads, sizeof(*w->threads));
    w->conns = xcalloc((size_t)threads, sizeof(*w->conns));
    d->writer = w;
    for (int i = 0; i < threads; i++) {
        writer_thread *t = xmalloc(sizeof(*t));
        pgc_init(d, &w->conns[i]); /* connected by its first batch */
        t->w = w;
        t->c = &w->conns[i];
        if (pthread_create(&w->threads[i], NULL, writer_main, t) != 0) {
            free(t);
            pgc_free(d, &w->conns[i]);
            return qk_fail(QK_ERR_IO, "cannot start the PostgreSQL writer threads");
        }
        w->nthreads++;
    }
    return QK_OK;
}

void pg_writer_stop(pg_db *d)
{
    struct pg_writer *w = d->writer;
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_broadcast(&w->work);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < w->nthreads; i++) {
        pthread_join(w->threads[i], NULL);
        pgc_free(d, &w->conns[i]);
    }
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->work);
    pthread_cond_destroy(&w->idle);
    free(w->threads);
    free(w->conns);
    free(w);
    d->writer = NULL;
}
