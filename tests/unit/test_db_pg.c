/* store/pg/db_pg.c against a real PostgreSQL: a throwaway cluster
 * (pg_fixture.h) started by the group setup and always stopped and removed
 * by the group teardown. Every
 * bind and column type round trip, RETURNING, constraint violations and
 * rollbacks, the org setting, prepared statements across reconnects, the
 * retries (a killed backend, a restarted server, serialization failures, a
 * connection lost at COMMIT), the pool under 8 threads, and connection
 * failures (closed port, bad connection strings, no password in details).
 *
 * Without PostgreSQL's server binaries the test fails (scripts/setup.sh
 * installs them): a skipped driver test would hide a broken driver. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "pg_fixture.h"
#include "store/db.h"
#include "store/pg/db_pg.h"

#define THREADS 8
#define WRITES_PER_THREAD 200

/* The database, shared by every test. */
static char *g_db;
static char g_url[256];
static PGconn *g_admin; /* a raw libpq session on g_db: setup and inspection */

enum {
    Q_ECHO,
    Q_KV_INSERT,
    Q_KV_GET,
    Q_KV_COUNT,
    Q_KV_BUMP,
    Q_ORG,
    Q_PID,
    Q_PREPARED,
    Q_TYPES,
    Q_DIALECT,
    Q_W_INSERT,
    Q_W_COUNT,
    Q_BAD,
    Q_CU_INSERT,
    Q_INTS,
    Q_WA_INSERT,
    Q__N
};

static const db_query queries[Q__N] = {
    [Q_ECHO] = {"SELECT $1, $2, $3", NULL},
    [Q_KV_INSERT] = {"INSERT INTO kv (name, n, b) VALUES ($1, $2, $3) RETURNING id", NULL},
    [Q_KV_GET] = {"SELECT id, name, n, b FROM kv WHERE name = $1", NULL},
    [Q_KV_COUNT] = {"SELECT count(*) FROM kv WHERE name LIKE $1", NULL},
    [Q_KV_BUMP] = {"UPDATE kv SET n = n + 1 WHERE name LIKE $1", NULL},
    [Q_ORG] = {"SELECT current_setting('qwick.org', true)", NULL},
    [Q_PID] = {"SELECT pg_backend_pid()", NULL},
    [Q_PREPARED] = {"SELECT count(*) FROM pg_prepared_statements WHERE name = $1", NULL},
    [Q_TYPES] = {"SELECT 7::int2, (-70000)::int4, true, false, 42::oid, 123456789012345::numeric,"
                 " (-5)::numeric, 0::numeric, '{\"a\": 1}'::jsonb, 'v'::varchar, NULL::bigint,"
                 " sum(x) FROM (VALUES (9223372036854775807::bigint), (2)) AS s(x)",
                 NULL},
    [Q_DIALECT] = {"SELECT 'sqlite'", "SELECT 'pg'"},
    [Q_W_INSERT] = {"INSERT INTO w (thread, i) VALUES ($1, $2)", NULL},
    [Q_W_COUNT] = {"SELECT count(*), count(DISTINCT thread) FROM w", NULL},
    [Q_BAD] = {"SELEC 1", NULL},
    [Q_CU_INSERT] = {"INSERT INTO cu (x) VALUES ($1)", NULL},
    [Q_INTS] = {"SELECT $1::bigint + 0, $2::bigint", NULL},
    [Q_WA_INSERT] = {"INSERT INTO wa (i, org) VALUES ($1, current_setting('qwick.org', true))",
                     NULL},
};

/* ---- the cluster -------------------------------------------------------- */

/* A port nobody listens on: the kernel's pick, released. */
static int port_closed(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static int admin_exec(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "db_pg: %s: %s", sql, PQerrorMessage(pg));
    PQclear(r);
    return ok;
}

static int64_t admin_int(const char *sql)
{
    PGresult *r = PQexec(g_admin, sql);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(r), 1);
    int64_t v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

static int group_teardown(void **state);

/* The cluster, a database and its tables, all the superuser's. */
static int cluster_setup(void)
{
    if (pgfx_start("db_pg", 0) != 0 || (g_db = pgfx_db_new(0)) == NULL)
        return -1;
    g_admin = pgfx_connect(g_db, NULL);
    int ok = admin_exec(
        g_admin, "SET client_min_messages = warning;"
                 "CREATE TABLE kv (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                 "  name TEXT UNIQUE, n BIGINT, b BYTEA);"
                 "CREATE TABLE w (thread INT, i INT, PRIMARY KEY (thread, i));"
                 "CREATE TABLE wa (i INT PRIMARY KEY, org TEXT, tx BIGINT DEFAULT txid_current());"
                 "CREATE ROLE alice LOGIN;"
                 "GRANT SELECT ON kv TO alice;"
                 /* A deferred trigger that kills its own backend: the
                  * connection breaks in the middle of COMMIT. */
                 "CREATE TABLE cu (x INT);"
                 "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS"
                 "  $$BEGIN PERFORM pg_terminate_backend(pg_backend_pid());"
                 "  PERFORM pg_sleep(5); RETURN NULL; END$$;"
                 "CREATE CONSTRAINT TRIGGER cu_die AFTER INSERT ON cu"
                 "  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION die();");
    if (!ok)
        return -1;
    pgfx_url(g_db, "postgres", g_url, sizeof(g_url));
    return 0;
}

/* cmocka runs no group teardown after a failed group setup: a cluster that
 * started is stopped here then. */
static int group_setup(void **state)
{
    if (cluster_setup() == 0)
        return 0;
    group_teardown(state);
    return -1;
}

static int group_teardown(void **state)
{
    (void)state;
    if (g_admin != NULL)
        PQfinish(g_admin);
    g_admin = NULL;
    free(g_db); /* the cluster goes, with its databases */
    g_db = NULL;
    pgfx_stop();
    return 0;
}

static qk_db *open_db(int conns)
{
    qk_db *d = NULL;
    qk_err rc = db_pg_open(g_url, conns, queries, Q__N, &d);
    if (rc != QK_OK)
        fail_msg("db_pg_open: %s: %s", qk_strerror(rc), qk_error_detail());
    assert_int_equal(d->dialect, DB_PG);
    return d;
}

/* ---- helpers: one query, one integer or text ---------------------------- */

typedef struct one {
    int q;
    const char *text; /* $1, if any */
    int64_t v;
    char s[256];
    int null;
    int runs;
} one;

static qk_err one_fn(db_conn *c, void *arg)
{
    one *o = arg;
    db_stmt *st = NULL;
    int row = 0;
    qk_err rc = db_prepare(c, o->q, &st);
    o->runs++;
    if (rc != QK_OK)
        return rc;
    if (o->text != NULL)
        db_bind_text(st, 1, o->text);
    if ((rc = db_step(st, &row)) == QK_OK && row) {
        o->null = db_col_null(st, 0);
        o->v = db_col_int(st, 0);
        const char *t = db_col_text(st, 0);
        snprintf(o->s, sizeof(o->s), "%s", t != NULL ? t : "");
    }
    db_done(st);
    return rc;
}

static int64_t read_int(qk_db *d, int q, const char *text)
{
    one o = {.q = q, .text = text};
    qk_err rc = db_read(d, DB_NO_ORG, one_fn, &o);
    if (rc != QK_OK)
        fail_msg("read: %s: %s", qk_strerror(rc), qk_error_detail());
    return o.v;
}

static qk_err exec_fn(db_conn *c, void *arg)
{
    return db_exec(c, arg);
}

/* ---- types ---------------------------------------------------------------- */

static const char utf8[] = "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9d\x84\x9e";

typedef struct echo {
    int64_t i;
    const char *text;
    const uint8_t *blob;
    size_t n;
} echo;

static qk_err echo_fn(db_conn *c, void *arg)
{
    const echo *e = arg;
    db_stmt *st = NULL;
    int row = 0;
    size_t n = 99;
    assert_int_equal(db_prepare(c, Q_ECHO, &st), QK_OK);
    db_bind_int(st, 1, e->i);
    db_bind_text(st, 2, e->text);
    db_bind_blob(st, 3, e->blob, e->n);
    assert_int_equal(db_step(st, &row), QK_OK);
    assert_int_equal(row, 1);
    assert_false(db_col_null(st, 0));
    assert_true(db_col_int(st, 0) == e->i);
    if (e->text == NULL) {
        assert_true(db_col_null(st, 1));
        assert_null(db_col_text(st, 1));
    } else {
        assert_false(db_col_null(st, 1));
        assert_string_equal(db_col_text(st, 1), e->text);
    }
    assert_false(db_col_null(st, 2));
    const uint8_t *p = db_col_blob(st, 2, &n);
    assert_int_equal(n, e->n);
    if (e->n > 0)
        assert_memory_equal(p, e->blob, e->n);
    /* Beyond the row: NULL, never a crash. */
    assert_true(db_col_null(st, 3));
    assert_null(db_col_text(st, -1));
    assert_int_equal(db_step(st, &row), QK_OK);
    assert_int_equal(row, 0);
    assert_int_equal(db_step(st, &row), QK_OK);
    assert_int_equal(row, 0);
    assert_true(db_col_null(st, 0));
    db_done(st);
    return QK_OK;
}

static void test_bind_column_round_trip(void **state)
{
    (void)state;
    qk_db *d = open_db(1);
    uint8_t bin[256];
    for (int i = 0; i < 256; i++)
        bin[i] = (uint8_t)(255 - i);
    const uint8_t nuls[5] = {0, 1, 0, 0, 0xff};
    echo cases[] = {
        {INT64_MIN, utf8, nuls, sizeof(nuls)},
        {INT64_MAX, NULL, NULL, 0},
        {0, "", bin, sizeof(bin)},
        {-1, "'; DROP TABLE kv; --", (const uint8_t *)"", 0},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        assert_int_equal(db_read(d, DB_NO_ORG, echo_fn, &cases[k]), QK_OK);
        /* the same statement again, on the same session */
        assert_int_equal(db_write(d, 1, echo_fn, &cases[k]), QK_OK);
    }
    d->ops->close(d);
}

static qk_err types_fn(db_conn *c, void *arg)
{
    db_stmt *st = NULL;
    int row = 0;
    (void)arg;
    assert_int_equal(db_prepare(c, Q_TYPES, &st), QK_OK);
    assert_int_equal(db_step(st, &row), QK_OK);
    assert_int_equal(row, 1);
    assert_int_equal(db_col_int(st, 0), 7);
    assert_int_equal(db_col_int(st, 1), -70000);
    assert_int_equal(db_col_int(st, 2), 1);
    assert_int_equal(db_col_int(st, 3), 0);
    assert_int_equal(db_col_int(st, 4), 42);
    assert_true(db_col_int(st, 5) == INT64_C(123456789012345));
    assert_int_equal(db_col_int(st, 6), -5);
    assert_int_equal(db_col_int(st, 7), 0);
    assert_string_equal(db_col_text(st, 8), "{\"a\": 1}");
    assert_string_equal(db_col_text(st, 9), "v");
    assert_true(db_col_null(st, 10));
    assert_int_equal(db_col_int(st, 10), 0);
    assert_true(db_col_int(st, 11) == INT64_MAX); /* numeric beyond int64: saturated */
    /* Integers as text, two at once. */
    const char *a = db_col_text(st, 0), *b = db_col_text(st, 1);
    assert_string_equal(a, "7");
    assert_string_equal(b, "-70000");
    db_done(st);

    /* Parameters arrive as the types they were bound as. */
    assert_int_equal(db_prepare(c, Q_INTS, &st), QK_OK);
    db_bind_int(st, 1, INT64_MIN);
    db_bind_null(st, 2);
    assert_int_equal(db_step(st, &row), QK_OK);
    assert_int_equal(row, 1);
    assert_true(db_col_int(st, 0) == INT64_MIN);
    assert_string_equal(db_col_text(st, 0), "-9223372036854775808");
    assert_true(db_col_null(st, 1));
    db_done(st);

    assert_int_equal(db_prepare(c, Q_DIALECT, &st), QK_OK);
    assert_int_equal(db_step(st, &row), QK_OK);
    assert_string_equal(db_col_text(st, 0), "pg");
    db_done(st);
    return QK_OK;
}

static void test_column_types(void **state)
{
    (void)state;
    qk_db *d = open_db(1);
    assert_int_equal(db_read(d, DB_NO_ORG, types_fn, NULL), QK_OK);
    d->ops->close(d);
}

/* ---- writes, RETURNING, constraint violations, rollbacks ------------------ */

typedef struct kv {
    const char *name;
    int64_t n;
    const uint8_t *b;
    size_t blen;
    int64_t id;
    const char *then; /* a second insert in the same transaction */
    int ignore_error; /* fn returns QK_OK whatever happens */
    qk_err ret;       /* fn returns this once done */
    int runs;
} kv;

static qk_err kv_insert(db_conn *c, const char *name, int64_t n, const uint8_t *b, size_t blen,
                        int64_t *id)
{
    db_stmt *st = NULL;
    int row = 0;
    qk_err rc = db_prepare(c, Q_KV_INSERT, &st);
    if (rc != QK_OK)
        return rc;
    db_bind_text(st, 1, name);
    db_bind_int(st, 2, n);
    db_bind_blob(st, 3, b, blen);
    if ((rc = db_step(st, &row)) == QK_OK) {
        assert_int_equal(row, 1);
        *id = db_col_int(st, 0);
        assert_int_equal(db_step(st, &row), QK_OK);
        assert_int_equal(row, 0);
        assert_int_equal(db_changes(st), 1);
    }
    db_done(st);
    return rc;
}

static qk_err kv_fn(db_conn *c, void *arg)
{
    kv *k = arg;
    int64_t id2 = 0;
    k->runs++;
    qk_err rc = kv_insert(c, k->name, k->n, k->b, k->blen, &k->id);
    if (rc == QK_OK && k->then != NULL)
        rc = kv_insert(c, k->then, 0, NULL, 0, &id2);
    if (k->ignore_error)
        return QK_OK;
    return rc != QK_OK ? rc : k->ret;
}

static void test_returning(void **state)
{
    (void)state;
    qk_db *d = open_db(2);
    const uint8_t blob[] = {0, 'x', 0};
    kv a = {.name = "ret-a", .n = INT64_MAX, .b = blob, .blen = sizeof(blob)};
    kv b = {.name = "ret-b", .n = INT64_MIN};
    assert_int_equal(db_write(d, DB_NO_ORG, kv_fn, &a), QK_OK);
    assert_int_equal(db_write(d, DB_NO_ORG, kv_fn, &b), QK_OK);
    assert_true(a.id > 0);
    assert_true(b.id == a.id + 1);
    assert_int_equal(a.runs, 1);
    assert_int_equal(admin_int("SELECT n FROM kv WHERE name = 'ret-a'") == INT64_MAX, 1);
    assert_int_equal(admin_int("SELECT length(b) FROM kv WHERE name = 'ret-a'"), 3);
    assert_int_equal(admin_int("SELECT get_byte(b, 1) FROM kv WHERE name = 'ret-a'"), 'x');
    d->ops->close(d);
}

static void test_unique_violation_rolls_back(void **state)
{
    (void)state;
    qk_db *d = open_db(1);
    kv first = {.name = "dup"};
    assert_int_equal(db_write(d, DB_NO_ORG, kv_fn, &first), QK_OK);

    kv k = {.name = "before-dup", .then = "dup"};
    assert_int_equal(db_write(d, DB_NO_ORG, kv_fn, &k), QK_ERR_INVALID_ARG);
    assert_non_null(strstr(qk_error_detail(), "23505"));
    assert_non_null(strstr(qk_error_detail(), "duplicate key"));
    assert_int_equal(k.runs, 1); /* a constraint violation is not retried */
    assert_int_equal(read_int(d, Q_KV_COUNT, "before-dup"), 0);

    /* fn that swallows the error still gets the transaction rolled back. */
    kv quiet = {.name = "before-dup2", .then = "dup", .ignore_error = 1};
    assert_int_equal(db_write(d, DB_NO_ORG, kv_fn, &quiet), QK_ERR_INVALID_ARG);
    assert_int_equal(read_int(d, Q_KV_COUNT, "before-dup2"), 0);

    /* The session (and its prepared statements) is fine afterwards. */
    kv after = {.name = "after-dup"};
    assert_int_equal(db_write(d, DB_NO_ORG, kv_fn, &after), QK_OK);
    assert_int_equal(read_int(d, Q_KV_COUNT, "after-dup"), 1);
    d->ops->close(d);
}

static qk_err after_error_fn(db_conn *c, void *arg)
{
    db_stmt *st = NULL;
    int row = 1;
    (void)arg;
    assert_int_equal(db_prepare(c, Q_BAD, &st), QK_OK);
    assert_int_equal(db_step(st, &row), QK_ERR_IO);
    assert_int_equal(row, 0);
    assert_non_null(strstr(qk_error_detail(), "syntax error"));
    db_done(st);
    /* Everything after the first error fails with it, without a round trip. */
    assert_int_equal(db_prepare(c, Q_PID, &st), QK_OK);
    assert_int_equal(db_step(st, &row), QK_ERR_IO);
    assert_non_null(strstr(qk_error_detail(), "syntax error"));
    db_done(st);
    assert_int_equal(db_set_org(c, 5), QK_ERR_IO);
    assert_int_equal(db_exec(c, "SELECT 1"), QK_ERR_IO);
    return QK_OK;
}

static void test_errors(void **state)
{
    (void)state;
    qk_db *d = open_db(1);
    kv k = {.name = "fn-fails", .ret = QK_ERR_SIGNER};
    assert_int_equal(db_write(d, DB_NO_ORG, kv_fn, &k), QK_ERR_SIGNER);
    assert_int_equal(k.runs, 1);
    assert_int_equal(read_int(d, Q_KV_COUNT, "fn-fails"), 0);

    assert_int_equal(db_read(d, DB_NO_ORG, after_error_fn, NULL), QK_ERR_IO);
    assert_non_null(strstr(qk_error_detail(), "syntax error"));

    /* A read-only transaction refuses writes. */
    kv ro = {.name = "in-a-read"};
    assert_int_equal(db_read(d, DB_NO_ORG, kv_fn, &ro), QK_ERR_IO);
    assert_non_null(strstr(qk_error_detail(), "read-only"));
    assert_int_equal(read_int(d, Q_KV_COUNT, "in-a-read"), 0);

    /* Misuse: no such query, a parameter index out of range. */
    one bad = {.q = Q__N};
    assert_int_equal(db_read(d, DB_NO_ORG, one_fn, &bad), QK_ERR_INVALID_ARG);
    d->ops->close(d);
}

static qk_err bad_index_fn(db_conn *c, void *arg)
{
    db_stmt *st = NULL;
    int row;
    (void)arg;
    assert_int_equal(db_prepare(c, Q_PID, &st), QK_OK);
    db_bind_int(st, 0, 1);
    assert_int_equal(db_step(st, &row), QK_ERR_INVALID_ARG);
    db_done(st);
    assert_int_equal(db_prepare(c, Q_PID, &st), QK_OK);
    db_bind_int(st, DB_PG_MAX_PARAMS + 1, 1);
    assert_int_equal(db_step(st, &row), QK_ERR_INVALID_ARG);
    db_done(st);
    /* done cleared the bad binding */
    assert_int_equal(db_prepare(c, Q_PID, &st), QK_OK);
    assert_int_equal(db_step(st, &row), QK_OK);
    assert_int_equal(row, 1);
    db_done(st);
    return QK_OK;
}

static void test_bad_bindings(void **state)
{
    (void)state;
    qk_db *d = open_db(1);
    assert_int_equal(db_read(d, DB_NO_ORG, bad_index_fn, NULL), QK_OK);
    d->ops->close(d);
}

static qk_err bump_fn(db_conn *c, void *arg)
{
    db_stmt *st = NULL;
    int row;
    assert_int_equal(db_prepare(c, Q_KV_BUMP, &st), QK_OK);
    db_bind_text(st, 1, "bump-%");
    qk_err rc = db_step(st, &row);
    *(int64_t *)arg = db_changes(st);
    db_done(st);
    return rc;
}

static void test_read_sees_committed_and_changes(void **state)
{
    (void)state;
    qk_db *d = open_db(2);
    for (int i = 0; i < 3; i++) {
        char name[32];
        snprintf(name, sizeof(name), "bump-%d", i);
        kv k = {.name = name, .n = i};
        assert_int_equal(db_write(d, DB_NO_ORG, kv_fn, &k), QK_OK);
        assert_int_equal(read_int(d, Q_KV_COUNT, "bump-%"), i + 1);
    }
    int64_t changed = -1;
    assert_int_equal(db_write(d, DB_NO_ORG, bump_fn, &changed), QK_OK);
    assert_int_equal(changed, 3);
    assert_int_equal(admin_int("SELECT sum(n) FROM kv WHERE name LIKE 'bump-%'"), 0 + 1 + 2 + 3);

    /* exec: several statements, no parameters. */
    assert_int_equal(db_write(d, DB_NO_ORG, exec_fn,
                              "INSERT INTO kv (name) VALUES ('ex-1'); "
                              "INSERT INTO kv (name) VALUES ('ex-2')"),
                     QK_OK);
    assert_int_equal(read_int(d, Q_KV_COUNT, "ex-%"), 2);
    d->ops->close(d);
}

/* ---- the org ---------------------------------------------------------------- */

typedef struct orgs {
    char first[64], second[64];
    int64_t pid;
} orgs;

static void org_now(db_conn *c, char *out, size_t cap)
{
    db_stmt *st = NULL;
    int row = 0;
    assert_int_equal(db_prepare(c, Q_ORG, &st), QK_OK);
    assert_int_equal(db_step(st, &row), QK_OK);
    assert_int_equal(row, 1);
    const char *t = db_col_text(st, 0);
    snprintf(out, cap, "%s", t != NULL ? t : "(null)");
    db_done(st);
}

static qk_err org_fn(db_conn *c, void *arg)
{
    orgs *o = arg;
    db_stmt *st = NULL;
    int row;
    org_now(c, o->first, sizeof(o->first));
    assert_int_equal(db_set_org(c, 7), QK_OK);
    org_now(c, o->second, sizeof(o->second));
    assert_int_equal(db_prepare(c, Q_PID, &st), QK_OK);
    assert_int_equal(db_step(st, &row), QK_OK);
    o->pid = db_col_int(st, 0);
    db_done(st);
    return QK_OK;
}

static qk_err org_only_fn(db_conn *c, void *arg)
{
    orgs *o = arg;
    org_now(c, o->first, sizeof(o->first));
    o->pid = 0;
    return QK_OK;
}

static void test_org_setting(void **state)
{
    (void)state;
    qk_db *d = open_db(1);
    orgs a = {0}, b = {0}, w = {0};
    assert_int_equal(db_read(d, 42, org_fn, &a), QK_OK);
    assert_string_equal(a.first, "42");
    assert_string_equal(a.second, "7");
    /* The next transaction on the same connection: empty, not 42 nor 7. */
    assert_int_equal(db_read(d, DB_NO_ORG, org_only_fn, &b), QK_OK);
    assert_string_equal(b.first, "");
    assert_int_equal(db_write(d, INT64_MAX, org_fn, &w), QK_OK);
    assert_string_equal(w.first, "9223372036854775807");
    assert_int_equal(w.pid, a.pid); /* one connection throughout */
    assert_int_equal(db_read(d, -3, org_only_fn, &b), QK_OK);
    assert_string_equal(b.first, "-3");
    d->ops->close(d);
}

/* A one-statement read (read1): the org and the statement in one implicit
 * transaction, nothing carried into the next; a second statement fails and
 * nothing is left open. */
static qk_err two_statements_fn(db_conn *c, void *arg)
{
    one *o = arg;
    qk_err rc = one_fn(c, o);
    return rc == QK_OK ? one_fn(c, o) : rc;
}

static void test_read1(void **state)
{
    (void)state;
    qk_db *d = open_db(1);
    assert_non_null(d->ops->read1);
    orgs a = {0}, b = {0};
    one pid1 = {.q = Q_PID}, pid2 = {.q = Q_PID}, two = {.q = Q_PID};
    assert_int_equal(db_read1(d, 42, org_only_fn, &a), QK_OK);
    assert_string_equal(a.first, "42");
    assert_int_equal(db_read1(d, DB_NO_ORG, org_only_fn, &b), QK_OK);
    assert_string_equal(b.first, "");
    assert_int_equal(db_read(d, DB_NO_ORG, org_only_fn, &b), QK_OK);
    assert_string_equal(b.first, "");
    assert_int_equal(db_read1(d, 5, one_fn, &pid1), QK_OK);
    assert_int_equal(db_read1(d, 7, two_statements_fn, &two), QK_ERR_INVALID_ARG);
    assert_non_null(strstr(qk_error_detail(), "second statement"));
    assert_int_equal(two.runs, 2); /* one run (its two statements): a mistake is not rerun */
    /* The connection is the same, idle and usable: a write and reads. */
    assert_int_equal(admin_int("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                               "'qwickd' AND state <> 'idle'"),
                     0);
    orgs w = {0};
    assert_int_equal(db_write(d, 9, org_only_fn, &w), QK_OK);
    assert_string_equal(w.first, "9");
    assert_int_equal(db_read1(d, 11, org_only_fn, &b), QK_OK);
    assert_string_equal(b.first, "11");
    assert_int_equal(db_read1(d, DB_NO_ORG, one_fn, &pid2), QK_OK);
    assert_int_equal(pid2.v, pid1.v);
    d->ops->close(d);
}

/* ---- prepared statements, reconnects, retries ----------------------------- */

static char prepared_name[16];

typedef struct session {
    int64_t pid, prepared;
    int runs;
} session;

static qk_err session_fn(db_conn *c, void *arg)
{
    session *s = arg;
    db_stmt *st = NULL;
    int row;
    qk_err rc;
    s->runs++;
    if ((rc = db_prepare(c, Q_PID, &st)) != QK_OK || (rc = db_step(st, &row)) != QK_OK)
        return rc;
    s->pid = db_col_int(st, 0);
    db_done(st);
    if ((rc = db_prepare(c, Q_PREPARED, &st)) != QK_OK)
        return rc;
    db_bind_text(st, 1, prepared_name);
    if ((rc = db_step(st, &row)) != QK_OK)
        return rc;
    s->prepared = db_col_int(st, 0);
    db_done(st);
    return QK_OK;
}

static void terminate(int64_t pid)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%" PRId64 ")::int", pid);
    assert_int_equal(admin_int(sql), 1);
    /* until it is gone */
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity WHERE pid = %" PRId64, pid);
    for (int i = 0; i < 200 && admin_int(sql) != 0; i++)
        usleep(10000);
}

static void test_prepared_reuse_and_reconnect(void **state)
{
    (void)state;
    qk_db *d = open_db(1);
    session s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0};
    snprintf(prepared_name, sizeof(prepared_name), "q%d", Q_PID);
    assert_int_equal(db_read(d, DB_NO_ORG, session_fn, &s1), QK_OK);
    assert_int_equal(s1.prepared, 1); /* prepared once on the server... */
    assert_int_equal(db_read(d, DB_NO_ORG, session_fn, &s2), QK_OK);
    assert_int_equal(s2.pid, s1.pid); /* ...and reused */
    assert_int_equal(s2.prepared, 1);

    /* Another session kills ours: the next read reconnects and reruns. */
    terminate(s1.pid);
    assert_int_equal(db_read(d, DB_NO_ORG, session_fn, &s3), QK_OK);
    assert_true(s3.pid != s1.pid);
    assert_int_equal(s3.prepared, 1); /* prepared again in the new session */
    /* BEGIN travels with fn's first statement, so the loss may show inside
     * fn (rerun once) or already at the previous read's COMMIT. */
    assert_true(s3.runs >= 1 && s3.runs <= 2);

    /* A write too. */
    terminate(s3.pid);
    kv k = {.name = "after-terminate"};
    assert_int_equal(db_write(d, DB_NO_ORG, kv_fn, &k), QK_OK);
    assert_int_equal(read_int(d, Q_KV_COUNT, "after-terminate"), 1);
    assert_int_equal(db_read(d, DB_NO_ORG, session_fn, &s4), QK_OK);
    assert_int_equal(s4.prepared, 1);
    d->ops->close(d);
}

typedef struct attempts {
    int runs;
    int fail_runs; /* runs that fail; -1: all */
    const char *sql;
} attempts;

static qk_err attempts_fn(db_conn *c, void *arg)
{
    attempts *a = arg;
    a->runs++;
    if (a->fail_runs < 0 || a->runs <= a->fail_runs)
        return db_exec(c, a->sql);
    return QK_OK;
}

#define RAISE_40001 "DO $$BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END$$"
#define RAISE_40P01 "DO $$BEGIN RAISE EXCEPTION 'deadlock' USING ERRCODE = '40P01'; END$$"

static void test_conflict_retries(void **state)
{
    (void)state;
    qk_db *d = open_db(1);
    attempts twice = {.fail_runs = 2, .sql = RAISE_40001};
    assert_int_equal(db_write(d, DB_NO_ORG, attempts_fn, &twice), QK_OK);
    assert_int_equal(twice.runs, 3);
    attempts dl = {.fail_runs = 1, .sql = RAISE_40P01};
    assert_int_equal(db_read(d, DB_NO_ORG, attempts_fn, &dl), QK_OK);
    assert_int_equal(dl.runs, 2);
    attempts always = {.fail_runs = -1, .sql = RAISE_40001};
    assert_int_equal(db_write(d, DB_NO_ORG, attempts_fn, &always), QK_ERR_IO);
    assert_int_equal(always.runs, 1 + 5);
    assert_non_null(strstr(qk_error_detail(), "40001"));
    /* Other errors are not retried. */
    attempts other = {.fail_runs = -1, .sql = "SELECT 1/0"};
    assert_int_equal(db_write(d, DB_NO_ORG, attempts_fn, &other), QK_ERR_IO);
    assert_int_equal(other.runs, 1);
    assert_non_null(strstr(qk_error_detail(), "division by zero"));
    d->ops->close(d);
}

static void test_lost_connection_retry_limit(void **state)
{
    (void)state;
    qk_db *d = open_db(1);
    /* fn kills its own session every time: three reruns, then an error. */
    attempts a = {.fail_runs = -1, .sql = "SELECT pg_terminate_backend(pg_backend_pid())"};
    assert_int_equal(db_write(d, DB_NO_ORG, attempts_fn, &a), QK_ERR_IO);
    assert_int_equal(a.runs, 1 + 3);
    /* and the pool's connection works afterwards */
    assert_int_equal(read_int(d, Q_KV_COUNT, "%"), admin_int("SELECT count(*) FROM kv"));
    d->ops->close(d);
}

static qk_err cu_fn(db_conn *c, void *arg)
{
    db_stmt *st = NULL;
    int row;
    (*(int *)arg)++;
    assert_int_equal(db_prepare(c, Q_CU_INSERT, &st), QK_OK);
    db_bind_int(st, 1, 1);
    qk_err rc = db_step(st, &row);
    db_done(st);
    return rc;
}

static void test_commit_outcome_unknown(void **state)
{
    (void)state;
    qk_db *d = open_db(1);
    int runs = 0;
    /* The deferred trigger kills the session inside COMMIT. */
    assert_int_equal(db_write(d, DB_NO_ORG, cu_fn, &runs), QK_ERR_IO);
    assert_non_null(strstr(qk_error_detail(), "commit outcome unknown"));
    assert_int_equal(runs, 1); /* never rerun */
    /* The connection is replaced on the next use. */
    assert_int_equal(read_int(d, Q_KV_COUNT, "dup"), 1);
    d->ops->close(d);
}

static void test_server_restart(void **state)
{
    (void)state;
    qk_db *d = open_db(2);
    int ok = 0, failed = 0;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        _exit(pgfx_restart() == 0 ? 0 : 1);
    }
    /* Read all through the restart and a little after. */
    int st = 0, done = 0;
    int64_t until = 0;
    for (;;) {
        one o = {.q = Q_PID};
        qk_err rc = db_read(d, DB_NO_ORG, one_fn, &o);
        if (rc == QK_OK)
            ok++;
        else {
            failed++;
            fprintf(stderr, "db_pg: read during the restart: %s\n", qk_error_detail());
        }
        if (!done && waitpid(pid, &st, WNOHANG) == pid) {
            done = 1;
            until = time(NULL) + 1;
        }
        if (done && time(NULL) >= until)
            break;
        usleep(20000);
    }
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    PQreset(g_admin);
    assert_int_equal(PQstatus(g_admin), CONNECTION_OK);
    assert_int_equal(failed, 0);
    assert_true(ok > 0);
    d->ops->close(d);
}

/* ---- the pool ------------------------------------------------------------- */

typedef struct worker {
    qk_db *d;
    int thread;
    int failures;
    char detail[256];
} worker;

typedef struct wrow {
    int thread, i;
} wrow;

static qk_err wrow_fn(db_conn *c, void *arg)
{
    const wrow *r = arg;
    db_stmt *st = NULL;
    int row;
    qk_err rc = db_prepare(c, Q_W_INSERT, &st);
    if (rc != QK_OK)
        return rc;
    db_bind_int(st, 1, r->thread);
    db_bind_int(st, 2, r->i);
    rc = db_step(st, &row);
    db_done(st);
    return rc;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < WRITES_PER_THREAD; i++) {
        wrow r = {w->thread, i};
        if (db_write(w->d, w->thread, wrow_fn, &r) != QK_OK && w->failures++ == 0)
            snprintf(w->detail, sizeof(w->detail), "%s", qk_error_detail());
    }
    return NULL;
}

static qk_err wcount_fn(db_conn *c, void *arg)
{
    int64_t *out = arg;
    db_stmt *st = NULL;
    int row;
    assert_int_equal(db_prepare(c, Q_W_COUNT, &st), QK_OK);
    assert_int_equal(db_step(st, &row), QK_OK);
    out[0] = db_col_int(st, 0);
    out[1] = db_col_int(st, 1);
    db_done(st);
    return QK_OK;
}

static void test_pool_threads(void **state)
{
    (void)state;
    qk_db *d = open_db(4);
    pthread_t t[THREADS];
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.d = d, .thread = i};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        if (w[i].failures != 0)
            fail_msg("thread %d: %d failures, first: %s", i, w[i].failures, w[i].detail);
    }
    int64_t n[2] = {0, 0};
    assert_int_equal(db_read(d, DB_NO_ORG, wcount_fn, n), QK_OK);
    assert_int_equal(n[0], THREADS * WRITES_PER_THREAD);
    assert_int_equal(n[1], THREADS);
    assert_true(admin_int("SELECT count(*) FROM pg_stat_activity "
                          "WHERE application_name = 'qwickd'") <= 4);
    d->ops->close(d);
}

/* ---- the batching writer (write_async) ------------------------------------ */

#define ASYNC_THREADS 3
#define ASYNC_PER_THREAD 100

typedef struct awrite {
    int i;
    int dup;    /* inserts a key another write inserted: a constraint error */
    int refuse; /* inserts, then its fn fails on its own */
    atomic_int *finished;
    qk_err rc;
    char detail[256];
    int runs;
} awrite;

static qk_err awrite_fn(db_conn *c, void *arg)
{
    awrite *a = arg;
    db_stmt *st = NULL;
    int row;
    a->runs++;
    qk_err rc = db_prepare(c, Q_WA_INSERT, &st);
    if (rc != QK_OK)
        return rc;
    db_bind_int(st, 1, a->refuse ? 100000 + a->i : a->i);
    rc = db_step(st, &row);
    db_done(st);
    if (rc == QK_OK && a->refuse)
        return qk_fail(QK_ERR_INVALID_ARG, "write %d refuses", a->i);
    return rc;
}

static void awrite_done(void *arg, qk_err rc, const char *detail)
{
    awrite *a = arg;
    a->rc = rc;
    snprintf(a->detail, sizeof(a->detail), "%s", detail != NULL ? detail : "");
    atomic_fetch_add(a->finished, 1);
}

typedef struct aworker {
    qk_db *d;
    awrite *w;
    int n;
    int refused; /* write_async calls that failed */
} aworker;

static void *aworker_main(void *arg)
{
    aworker *t = arg;
    for (int k = 0; k < t->n; k++)
        if (t->d->ops->write_async(t->d, t->w[k].i % 5 + 1, awrite_fn, &t->w[k], awrite_done,
                                   &t->w[k]) != QK_OK)
            t->refused++;
    return NULL;
}

/* Writes queued from several threads while the table is locked pile up, so
 * the writer takes them in batches: each write commits with its own org set,
 * a write that fails (a duplicate key, its fn's own error) is undone alone
 * and told why, the others commit; flush waits for all of them. */
static void test_write_async_batches(void **state)
{
    (void)state;
    enum { N = ASYNC_THREADS * ASYNC_PER_THREAD };
    static awrite w[N];
    atomic_int finished = 0;
    qk_db *d = open_db(2);
    assert_non_null(d->ops->write_async);
    for (int k = 0; k < N; k++) {
        /* Every 10th write repeats the key of the write before it. */
        w[k] = (awrite){.i = k % 10 == 9 ? k - 1 : k,
                        .dup = k % 10 == 9,
                        .refuse = k % 25 == 3,
                        .finished = &finished};
    }
    assert_true(admin_exec(g_admin, "BEGIN; LOCK TABLE wa IN EXCLUSIVE MODE"));
    pthread_t t[ASYNC_THREADS];
    aworker aw[ASYNC_THREADS];
    for (int i = 0; i < ASYNC_THREADS; i++) {
        aw[i] = (aworker){d, &w[i * ASYNC_PER_THREAD], ASYNC_PER_THREAD, 0};
        assert_int_equal(pthread_create(&t[i], NULL, aworker_main, &aw[i]), 0);
    }
    for (int i = 0; i < ASYNC_THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(aw[i].refused, 0);
    }
    usleep(200 * 1000);
    assert_int_equal(atomic_load(&finished), 0); /* all held by the lock */
    assert_true(admin_exec(g_admin, "COMMIT"));
    d->ops->flush(d);
    assert_int_equal(atomic_load(&finished), N);

    int ok = 0;
    for (int k = 0; k < N; k++) {
        if (w[k].dup) {
            /* The first of the pair queued may be either: exactly one of
             * them committed. */
            int first_ok = w[k - 1].rc == QK_OK, second_ok = w[k].rc == QK_OK;
            if (!w[k - 1].refuse)
                assert_int_equal(first_ok + second_ok, 1);
            awrite *loser = second_ok ? &w[k - 1] : &w[k];
            if (!loser->refuse) {
                assert_int_equal(loser->rc, QK_ERR_INVALID_ARG);
                assert_non_null(strstr(loser->detail, "23505"));
            }
        } else if (w[k].refuse) {
            assert_int_equal(w[k].rc, QK_ERR_INVALID_ARG);
            assert_non_null(strstr(w[k].detail, "refuses"));
        }
        ok += w[k].rc == QK_OK;
    }
    assert_int_equal(admin_int("SELECT count(*) FROM wa"), ok);
    assert_int_equal(admin_int("SELECT count(*) FROM wa WHERE i >= 100000"), 0);
    /* Each row carries the org its own write set. */
    assert_int_equal(admin_int("SELECT count(*) FROM wa WHERE org::int <> i % 5 + 1"), 0);
    /* Batches: far fewer transactions (the top-level one of each row; xmin
     * would be its savepoint's) than writes. */
    int64_t txns = admin_int("SELECT count(DISTINCT tx) FROM wa");
    assert_true(txns >= 1 && txns <= N / 8);
    d->ops->close(d);

    /* Closing drains the queue: every write queued before close lands. */
    d = open_db(2);
    atomic_store(&finished, 0);
    for (int k = 0; k < 50; k++) {
        w[k] = (awrite){.i = 200000 + k, .finished = &finished};
        assert_int_equal(d->ops->write_async(d, 7, awrite_fn, &w[k], awrite_done, &w[k]), QK_OK);
    }
    d->ops->close(d);
    assert_int_equal(atomic_load(&finished), 50);
    assert_int_equal(admin_int("SELECT count(*) FROM wa WHERE i >= 200000 AND org = '7'"), 50);
}

/* ---- statements run later (db.h run_later) -------------------------------- */

typedef struct later {
    int first, second; /* keys inserted with run_later, in this order */
    int64_t expect;    /* rows the second must change */
    int64_t seen;      /* rows of wa with key >= first, read after both */
    int read;
} later;

static qk_err later_fn(db_conn *c, void *arg)
{
    later *l = arg;
    db_stmt *st = NULL;
    int row = 0;
    qk_err rc;
    assert_non_null(c->d->ops->run_later);
    int keys[2] = {l->first, l->second};
    for (int k = 0; k < 2; k++) {
        if ((rc = db_prepare(c, Q_WA_INSERT, &st)) != QK_OK)
            return rc;
        db_bind_int(st, 1, keys[k]);
        rc = c->d->ops->run_later(st, k == 1 ? l->expect : -1, "the second insert missed");
        db_done(st);
        if (rc != QK_OK)
            return rc;
    }
    if (!l->read)
        return QK_OK;
    /* A statement that returns rows sees what the queued ones wrote. */
    assert_int_equal(db_prepare(c, Q_KV_COUNT, &st), QK_OK); /* a round trip of its own */
    db_bind_text(st, 1, "%");
    rc = db_step(st, &row);
    db_done(st);
    if (rc != QK_OK)
        return rc;
    return QK_OK;
}

typedef struct later_result {
    later *l;
    qk_err rc;
    char detail[256];
    atomic_int *finished;
} later_result;

static void later_done(void *arg, qk_err rc, const char *detail)
{
    later_result *r = arg;
    r->rc = rc;
    snprintf(r->detail, sizeof(r->detail), "%s", detail != NULL ? detail : "");
    atomic_fetch_add(r->finished, 1);
}

/* Statements queued with run_later go out with the next one that returns
 * rows or with COMMIT; their errors and unexpected row counts fail the
 * transaction then, which rolls back whole. */
static void test_run_later(void **state)
{
    (void)state;
    qk_db *d = open_db(1);
    later ok = {.first = 300000, .second = 300001, .expect = 1, .read = 1};
    assert_int_equal(db_write(d, DB_NO_ORG, later_fn, &ok), QK_OK);
    assert_int_equal(admin_int("SELECT count(*) FROM wa WHERE i IN (300000, 300001)"), 2);

    /* A duplicate key in the second: found at COMMIT, nothing kept. */
    later dup = {.first = 300002, .second = 300000, .expect = -1};
    assert_int_equal(db_write(d, DB_NO_ORG, later_fn, &dup), QK_ERR_INVALID_ARG);
    assert_non_null(strstr(qk_error_detail(), "23505"));
    assert_int_equal(admin_int("SELECT count(*) FROM wa WHERE i = 300002"), 0);

    /* The same found by a later statement that returns rows. */
    later dup2 = {.first = 300003, .second = 300000, .expect = -1, .read = 1};
    assert_int_equal(db_write(d, DB_NO_ORG, later_fn, &dup2), QK_ERR_INVALID_ARG);
    assert_non_null(strstr(qk_error_detail(), "23505"));
    assert_int_equal(admin_int("SELECT count(*) FROM wa WHERE i = 300003"), 0);

    /* A changed-row count other than expected fails with the caller's words. */
    later miss = {.first = 300004, .second = 300005, .expect = 2};
    assert_int_equal(db_write(d, DB_NO_ORG, later_fn, &miss), QK_ERR_INVALID_ARG);
    assert_non_null(strstr(qk_error_detail(), "the second insert missed"));
    assert_int_equal(admin_int("SELECT count(*) FROM wa WHERE i IN (300004, 300005)"), 0);

    /* In a batch, only the write whose queued statement failed fails. */
    atomic_int finished = 0;
    later lw[3] = {{.first = 300010, .second = 300011, .expect = 1},
                   {.first = 300012, .second = 300013, .expect = 0},
                   {.first = 300014, .second = 300015, .expect = 1}};
    later_result res[3];
    assert_true(admin_exec(g_admin, "BEGIN; LOCK TABLE wa IN EXCLUSIVE MODE"));
    for (int i = 0; i < 3; i++) {
        res[i].l = &lw[i];
        res[i].finished = &finished;
        assert_int_equal(d->ops->write_async(d, 1, later_fn, &lw[i], later_done, &res[i]), QK_OK);
    }
    usleep(100 * 1000);
    assert_true(admin_exec(g_admin, "COMMIT"));
    d->ops->flush(d);
    assert_int_equal(atomic_load(&finished), 3);
    assert_int_equal(res[0].rc, QK_OK);
    assert_int_equal(res[1].rc, QK_ERR_INVALID_ARG);
    assert_non_null(strstr(res[1].detail, "the second insert missed"));
    assert_int_equal(res[2].rc, QK_OK);
    assert_int_equal(admin_int("SELECT count(*) FROM wa WHERE i BETWEEN 300010 AND 300015"), 4);
    assert_int_equal(admin_int("SELECT count(*) FROM wa WHERE i IN (300012, 300013)"), 0);
    d->ops->close(d);
}

/* ---- opening -------------------------------------------------------------- */

static void test_closed_port_fails_fast(void **state)
{
    (void)state;
    char url[256], where[64];
    qk_db *d = (qk_db *)1;
    int port = port_closed();
    snprintf(url, sizeof(url), "postgresql://postgres:url-secret@127.0.0.1:%d/%s", port, g_db);
    snprintf(where, sizeof(where), "cannot connect to PostgreSQL at 127.0.0.1:%d: ", port);
    time_t t0 = time(NULL);
    assert_int_equal(db_pg_open(url, 2, queries, Q__N, &d), QK_ERR_IO);
    assert_null(d);
    assert_true(time(NULL) - t0 <= 5);
    assert_non_null(strstr(qk_error_detail(), where));
    assert_null(strstr(qk_error_detail(), "url-secret"));

    snprintf(url, sizeof(url), "host=127.0.0.1 port=%d user=postgres", port);
    assert_int_equal(db_pg_open_as(url, "bob", "kv-secret", 1, queries, Q__N, &d), QK_ERR_IO);
    assert_non_null(strstr(qk_error_detail(), where));
    assert_null(strstr(qk_error_detail(), "kv-secret"));
    assert_null(d);

    /* A broken connection string: an argument error, its pieces not echoed. */
    assert_int_equal(db_pg_open("postgresql://u:pa%zzword@127.0.0.1/x", 1, queries, Q__N, &d),
                     QK_ERR_INVALID_ARG);
    assert_non_null(strstr(qk_error_detail(), "invalid PostgreSQL connection string"));
    assert_null(strstr(qk_error_detail(), "pa%zz"));
    assert_int_equal(db_pg_open("host=127.0.0.1 password", 1, queries, Q__N, &d),
                     QK_ERR_INVALID_ARG);
    assert_int_equal(db_pg_open(g_url, 0, queries, Q__N, &d), QK_ERR_INVALID_ARG);
    assert_int_equal(db_pg_open(g_url, DB_PG_MAX_CONNS + 1, queries, Q__N, &d), QK_ERR_INVALID_ARG);
    assert_null(d);
}

static qk_err who_fn(db_conn *c, void *arg)
{
    return db_exec(c, arg);
}

static void test_conninfo_options(void **state)
{
    (void)state;
    char info[sizeof(g_url) + 64];
    qk_db *d = NULL;
    /* key=value form; application_name defaults to qwickd... */
    snprintf(info, sizeof(info), "host=127.0.0.1 port=%d user=postgres dbname=%s", pgfx_port(),
             g_db);
    assert_int_equal(db_pg_open(info, 1, queries, Q__N, &d), QK_OK);
    assert_int_equal(db_read(d, DB_NO_ORG, who_fn,
                             "DO $$BEGIN IF current_setting('application_name') <> 'qwickd' "
                             "THEN RAISE 'wrong'; END IF; END$$"),
                     QK_OK);
    d->ops->close(d);
    /* ...unless the conninfo says otherwise. */
    snprintf(info, sizeof(info), "%s?application_name=custom", g_url);
    assert_int_equal(db_pg_open(info, 1, queries, Q__N, &d), QK_OK);
    assert_int_equal(db_read(d, DB_NO_ORG, who_fn,
                             "DO $$BEGIN IF current_setting('application_name') <> 'custom' "
                             "THEN RAISE 'wrong'; END IF; END$$"),
                     QK_OK);
    d->ops->close(d);
    /* db_pg_open_as overrides the user (trust auth: the password is unused). */
    assert_int_equal(db_pg_open_as(g_url, "alice", "pw", 1, queries, Q__N, &d), QK_OK);
    assert_int_equal(db_read(d, DB_NO_ORG, who_fn,
                             "DO $$BEGIN IF current_user <> 'alice' THEN RAISE 'wrong'; "
                             "END IF; END$$"),
                     QK_OK);
    kv k = {.name = "alice-write"};
    assert_int_equal(db_write(d, DB_NO_ORG, kv_fn, &k), QK_ERR_IO); /* no INSERT grant */
    assert_non_null(strstr(qk_error_detail(), "permission denied"));
    d->ops->close(d);
    assert_int_equal(db_pg_open_as(g_url, NULL, NULL, 1, queries, Q__N, &d), QK_OK);
    assert_int_equal(db_read(d, DB_NO_ORG, who_fn,
                             "DO $$BEGIN IF current_user <> 'postgres' THEN RAISE 'wrong'; "
                             "END IF; END$$"),
                     QK_OK);
    d->ops->close(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bind_column_round_trip),
        cmocka_unit_test(test_column_types),
        cmocka_unit_test(test_returning),
        cmocka_unit_test(test_unique_violation_rolls_back),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_bad_bindings),
        cmocka_unit_test(test_read_sees_committed_and_changes),
        cmocka_unit_test(test_org_setting),
        cmocka_unit_test(test_read1),
        cmocka_unit_test(test_prepared_reuse_and_reconnect),
        cmocka_unit_test(test_conflict_retries),
        cmocka_unit_test(test_lost_connection_retry_limit),
        cmocka_unit_test(test_commit_outcome_unknown),
        cmocka_unit_test(test_pool_threads),
        cmocka_unit_test(test_write_async_batches),
        cmocka_unit_test(test_run_later),
        cmocka_unit_test(test_closed_port_fails_fast),
        cmocka_unit_test(test_conninfo_options),
        cmocka_unit_test(test_server_restart),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
