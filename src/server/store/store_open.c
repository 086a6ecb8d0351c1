/* Opening the store: SQLite in the data directory, or PostgreSQL at a URL;
 * and the few things only one driver has (the SQLite group commit's knobs and
 * counters). */
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <sodium.h>

#include "core/util.h"
#include "store/pg/db_pg.h"
#include "store/sqlite/db_sqlite.h"
#include "store/store.h"
#include "store/store_sql.h"

qk_err store_over_db(qk_db *d, qk_store **out)
{
    sql_store *s = xcalloc(1, sizeof(*s));
    store_sql_ops(&s->ops);
    store_queue_ops(&s->ops);
    if (d->ops->write_async == NULL)
        s->ops.request_record_async = NULL;
    s->base.ops = &s->ops;
    s->d = d;
    *out = &s->base;
    return QK_OK;
}

static qk_err sqlite_open(const char *data_dir, qk_store **out, int *from)
{
    qk_db *d = NULL;
    qk_err rc;
    *out = NULL;
    if (sodium_init() < 0)
        return qk_fail(QK_ERR_CRYPTO, "libsodium initialisation failed");
    char *path = path_join(data_dir, STORE_SQLITE_FILE);
    rc = db_sqlite_open(path, store_queries, Q__COUNT, &d);
    free(path);
    if (rc != QK_OK)
        return rc;
    if ((rc = schema_sqlite_migrate(d, from)) != QK_OK) {
        d->ops->close(d);
        return rc;
    }
    return store_over_db(d, out);
}

qk_err store_sqlite_open(const char *data_dir, qk_store **out)
{
    int from = 0;
    return sqlite_open(data_dir, out, &from);
}

qk_err store_sqlite_migrate(const char *data_dir, int *from, int *to)
{
    qk_store *s = NULL;
    qk_err rc = sqlite_open(data_dir, &s, from);
    *to = rc == QK_OK ? SCHEMA_VERSION : 0;
    if (s != NULL)
        s->ops->close(s);
    return rc;
}

/* ---- what only some drivers have ---------------------------------------- */

void store_sqlite_stats(qk_store *base, store_sqlite_counters *out)
{
    qk_db *d = SQL_DB(base);
    db_sqlite_counters c;
    memset(out, 0, sizeof(*out));
    if (d->dialect == DB_PG) {
        db_pg_stats(d, &out->commits, &out->writes); /* the batching writer's */
        return;
    }
    db_sqlite_stats(d, &c);
    out->commits = c.commits;
    out->writes = c.writes;
    out->delayed = c.delayed;
    out->checkpoints = c.checkpoints;
    out->ckpt_frames = c.ckpt_frames;
}

void store_sqlite_flush(qk_store *base)
{
    qk_db *d = SQL_DB(base);
    if (d->ops->flush != NULL)
        d->ops->flush(d);
}

void store_sqlite_set_commit_delay(qk_store *base, unsigned usec, const atomic_int *coming)
{
    qk_db *d = SQL_DB(base);
    if (d->dialect == DB_SQLITE)
        db_sqlite_set_commit_delay(d, usec, coming);
}

void store_sqlite_fail_commits(qk_store *base, int n)
{
    qk_db *d = SQL_DB(base);
    if (d->dialect == DB_SQLITE)
        db_sqlite_fail_commits(d, n);
}

qk_err store_pg_open(const char *url, const char *user, const char *password, int conns,
                     qk_store **out)
{
    qk_db *d = NULL;
    qk_err rc;
    *out = NULL;
    if (sodium_init() < 0)
        return qk_fail(QK_ERR_CRYPTO, "libsodium initialisation failed");
    if ((rc = db_pg_open_as(url, user, password, conns, store_queries, Q__COUNT, &d)) != QK_OK)
        return rc;
    if ((rc = schema_pg_check(d)) != QK_OK) {
        d->ops->close(d);
        return rc;
    }
    return store_over_db(d, out);
}

qk_err store_pg_create(const char *url, const char *role, const char *password)
{
    qk_db *d = NULL;
    qk_err rc = db_pg_open_as(url, NULL, NULL, 1, store_queries, Q__COUNT, &d);
    if (rc != QK_OK)
        return rc;
    rc = schema_pg_install(d, role, password);
    d->ops->close(d);
    return rc;
}

qk_err store_pg_migrate(const char *url, int *from, int *to)
{
    qk_db *d = NULL;
    qk_err rc = db_pg_open_as(url, NULL, NULL, 1, store_queries, Q__COUNT, &d);
    *from = *to = 0;
    if (rc != QK_OK)
        return rc;
    if ((rc = schema_pg_migrate(d, from)) == QK_OK)
        *to = SCHEMA_VERSION;
    d->ops->close(d);
    return rc;
}

int store_pg_url_has_password(const char *url)
{
    char *err = NULL;
    int has = 0;
    PQconninfoOption *opts = PQconninfoParse(url, &err);
    PQfreemem(err);
    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++)
        if (strcmp(o->keyword, "password") == 0 && o->val != NULL && o->val[0] != '\0')
            has = 1;
    PQconninfoFree(opts);
    return has;
}
