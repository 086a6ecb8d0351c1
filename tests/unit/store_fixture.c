/* The store's test fixture (store_fixture.h): a fresh store per test, on
 * SQLite (a data directory) or, built with -DSTORE_PG, on PostgreSQL (a
 * database of pg_fixture.c's cluster, opened as the server's role and as
 * the owner). */
#include "tmpdir.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#ifdef STORE_PG
#include "pg_fixture.h"
#else
#include <sqlite3.h>
#endif

#include "store_fixture.h"

int64_t sfx_new_org(store_fixture *f, const char *name)
{
    int64_t id = 0;
    assert_int_equal(STORE_CALL(f->owner, org_create, name, NULL, &id), QK_OK);
    assert_true(id > 0);
    return id;
}

#ifndef STORE_PG
/* ---- SQLite: a data directory per test ------------------------------------ */

int sfx_group_start(const char *who, int offset)
{
    (void)who;
    (void)offset;
    return 0;
}

void sfx_group_stop(void) {}

qk_err sfx_open_at(const char *where, qk_store **out)
{
    return store_sqlite_open(where, out);
}

int sfx_setup(void **state)
{
    store_fixture *f = calloc(1, sizeof(*f));
    *state = f;
    f->where = tmpdir_new();
    if (store_sqlite_open(f->where, &f->s) != QK_OK)
        return -1;
    f->owner = f->s;
    return 0;
}

int sfx_teardown(void **state)
{
    store_fixture *f = *state;
    if (f->s != NULL)
        f->s->ops->close(f->s);
    tmpdir_free(f->where);
    free(f);
    return 0;
}

void sfx_reopen(store_fixture *f)
{
    f->s->ops->close(f->s);
    f->s = f->owner = NULL;
    assert_int_equal(store_sqlite_open(f->where, &f->s), QK_OK);
    f->owner = f->s;
}

int sfx_raw_try(const char *dir, const char *sql)
{
    char path[4096];
    sqlite3 *db = NULL;
    snprintf(path, sizeof(path), "%s/%s", dir, STORE_SQLITE_FILE);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : -1;
}

void sfx_raw_sql(const char *dir, const char *sql)
{
    if (sfx_raw_try(dir, sql) != 0)
        fail_msg("raw SQL refused: %s", sql);
}

int64_t sfx_raw_int(const char *dir, const char *sql)
{
    char path[4096];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v;
    snprintf(path, sizeof(path), "%s/%s", dir, STORE_SQLITE_FILE);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

#else
/* ---- PostgreSQL: a database per test (pg_fixture.c) ------------------------- */

#define PG_POOL 4

int sfx_group_start(const char *who, int offset)
{
    return pgfx_start(who, offset);
}

void sfx_group_stop(void)
{
    pgfx_stop();
}

/* The store of database `where` as the server's role, as serve opens it. */
qk_err sfx_open_at(const char *where, qk_store **out)
{
    char url[256], role[64];
    pgfx_url(where, NULL, url, sizeof(url));
    pgfx_server_role(where, role, sizeof(role));
    return store_pg_open(url, role, "pw", PG_POOL, out);
}

static qk_err owner_open(const char *where, qk_store **out)
{
    char url[256];
    pgfx_url(where, PGFX_OWNER, url, sizeof(url));
    return store_pg_open(url, NULL, NULL, 1, out);
}

int sfx_setup(void **state)
{
    store_fixture *f = calloc(1, sizeof(*f));
    *state = f;
    if ((f->where = pgfx_db_new(1)) == NULL)
        return -1;
    if (sfx_open_at(f->where, &f->s) != QK_OK || owner_open(f->where, &f->owner) != QK_OK) {
        fprintf(stderr, "store fixture: open %s: %s\n", f->where, qk_error_detail());
        return -1;
    }
    return 0;
}

int sfx_teardown(void **state)
{
    store_fixture *f = *state;
    if (f->s != NULL)
        f->s->ops->close(f->s);
    if (f->owner != NULL)
        f->owner->ops->close(f->owner);
    pgfx_db_drop(f->where);
    free(f);
    return 0;
}

void sfx_reopen(store_fixture *f)
{
    f->s->ops->close(f->s);
    f->s = NULL;
    assert_int_equal(sfx_open_at(f->where, &f->s), QK_OK);
}

int sfx_raw_try(const char *db, const char *sql)
{
    return pgfx_try(db, sql, NULL);
}

void sfx_raw_sql(const char *db, const char *sql)
{
    const char *why = NULL;
    if (pgfx_try(db, sql, &why) != 0)
        fail_msg("raw SQL refused: %s: %s", sql, why);
}

int64_t sfx_raw_int(const char *db, const char *sql)
{
    return pgfx_int(db, sql);
}
#endif
