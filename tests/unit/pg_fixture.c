/* The unit tests' PostgreSQL (pg_fixture.h), for test_db_pg, test_store_pg
 * and test_store_queue_pg (test_store.c and test_store_queue.c built with
 * -DSTORE_PG, through store_fixture.c): one throwaway cluster for the whole
 * run (tests/tools/pgcluster.sh), fresh databases (the store's: one per
 * test, dropped after it, so its pages are discarded rather than written out
 * by the cluster's shutdown checkpoint), and raw SQL on them as the
 * superuser, who bypasses row-level security (tampering, inspection).
 *
 * Each database t<N> belongs to the owner role PGFX_OWNER (LOGIN CREATEROLE,
 * not superuser) and holds qwickd's schema, made by store_pg_create as that
 * owner with the server's login role qwickd_t<N>: the tests then open the
 * store as that role, under row-level security, as `qwickd serve` does. The
 * cluster trusts every local connection, so passwords are not checked.
 *
 * The functions fail the running test through cmocka on any surprise. */
#include "tmpdir.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <glob.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "pg_fixture.h"
#include "store/store.h"

#define PORT_FIRST 25400
#define PORT_COUNT 100

static const char *g_who; /* the test program, for messages */
static char *g_dir;       /* the cluster's directory */
static int g_port;        /* its port on 127.0.0.1 */
static PGconn *g_admin;   /* the superuser on the `postgres` database: CREATE/DROP DATABASE */
static int g_ndb;         /* databases made so far: the next one's number */

/* Runs tests/tools/pgcluster.sh with its arguments; its exit status. */
static int cluster(const char *cmd, const char *dir, const char *port)
{
    const char *script = getenv("QWICK_PGCLUSTER");
    if (script == NULL)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execl("/bin/sh", "sh", script, cmd, dir, port, (char *)NULL);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int port_free(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), ok;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0)
        return 0;
    ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

/* Each run names its cluster in QWICK_PG_STATE.<pid>, so that a run stops
 * the clusters of runs that were killed (their pid is gone) and never the
 * cluster of one still running (`meson test --repeat` runs copies at once). */
static void state_path(char *out, size_t n, long pid)
{
    snprintf(out, n, "%s.%ld", getenv("QWICK_PG_STATE"), pid);
}

static int pid_alive(long pid)
{
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

static void stop_stale(void)
{
    const char *state = getenv("QWICK_PG_STATE");
    char pattern[4096], dir[4096];
    glob_t g;
    if (state == NULL)
        return;
    snprintf(pattern, sizeof(pattern), "%s.*", state);
    if (glob(pattern, 0, NULL, &g) != 0)
        return;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        char *end = NULL;
        long pid = strtol(g.gl_pathv[i] + strlen(state) + 1, &end, 10);
        if (pid <= 0 || *end != '\0' || pid_alive(pid))
            continue;
        FILE *f = fopen(g.gl_pathv[i], "r");
        if (f != NULL && fgets(dir, sizeof(dir), f) != NULL) {
            dir[strcspn(dir, "\n")] = '\0';
            if (dir[0] == '/')
                cluster("stop", dir, NULL);
        }
        if (f != NULL)
            fclose(f);
        remove(g.gl_pathv[i]);
    }
    globfree(&g);
}

static void remember(const char *dir)
{
    char path[4096];
    if (getenv("QWICK_PG_STATE") == NULL)
        return;
    state_path(path, sizeof(path), (long)getpid());
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return;
    fprintf(f, "%s\n", dir);
    fclose(f);
}

static void forget(void)
{
    char path[4096];
    if (getenv("QWICK_PG_STATE") == NULL)
        return;
    state_path(path, sizeof(path), (long)getpid());
    remove(path);
}

static int admin_exec(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "%s: %s: %s", g_who, sql, PQerrorMessage(pg));
    PQclear(r);
    return ok;
}

/* Starts on a free port of 25400-25499, from one `offset` sets apart (test
 * programs that meson runs at the same time begin in different places);
 * another run may take the same port at the same moment, so a failed start
 * moves on. */
static int start_on_free_port(int offset)
{
    char port[16];
    int first = (int)((getpid() + offset) % PORT_COUNT), started = 0;
    for (int k = 0; k < PORT_COUNT && started < 5 && g_port == 0; k++) {
        int p = PORT_FIRST + (first + k) % PORT_COUNT;
        if (!port_free(p))
            continue;
        snprintf(port, sizeof(port), "%d", p);
        started++;
        if (cluster("start", g_dir, port) == 0)
            g_port = p;
    }
    return g_port != 0 ? 0 : -1;
}

int pgfx_start(const char *who, int offset)
{
    glob_t g;
    char info[256];
    g_who = who;
    if (glob("/usr/lib/postgresql/*/bin/initdb", 0, NULL, &g) != 0) {
        fprintf(stderr,
                "%s: PostgreSQL's server binaries are not installed "
                "(/usr/lib/postgresql/*/bin/initdb): run scripts/setup.sh\n",
                who);
        return -1;
    }
    globfree(&g);
    if (getenv("QWICK_PGCLUSTER") == NULL) {
        fprintf(stderr,
                "%s: QWICK_PGCLUSTER (tests/tools/pgcluster.sh) is not set: "
                "run through meson test\n",
                who);
        return -1;
    }
    stop_stale();
    g_dir = tmpdir_new();
    remember(g_dir);
    if (start_on_free_port(offset) != 0) {
        fprintf(stderr, "%s: cannot start a PostgreSQL cluster (tests/tools/pgcluster.sh)\n", who);
        pgfx_stop();
        return -1;
    }
    snprintf(info, sizeof(info), "host=127.0.0.1 port=%d user=postgres dbname=postgres", g_port);
    g_admin = PQconnectdb(info);
    if (PQstatus(g_admin) != CONNECTION_OK ||
        !admin_exec(g_admin, "CREATE ROLE " PGFX_OWNER " LOGIN CREATEROLE")) {
        fprintf(stderr, "%s: %s", who, PQerrorMessage(g_admin));
        pgfx_stop();
        return -1;
    }
    PQsetNoticeProcessor(g_admin, NULL, NULL);
    return 0;
}

void pgfx_stop(void)
{
    if (g_admin != NULL)
        PQfinish(g_admin);
    g_admin = NULL;
    if (g_dir != NULL) {
        if (cluster("stop", g_dir, NULL) != 0)
            fprintf(stderr, "%s: could not stop the cluster in %s\n", g_who, g_dir);
        forget();
        tmpdir_free(g_dir);
    }
    g_dir = NULL;
    g_port = 0;
}

int pgfx_port(void)
{
    return g_port;
}

int pgfx_restart(void)
{
    return g_dir != NULL ? cluster("restart", g_dir, NULL) : -1;
}

void pgfx_url(const char *db, const char *user, char *out, size_t n)
{
    snprintf(out, n, "postgresql://%s%s127.0.0.1:%d/%s", user != NULL ? user : "",
             user != NULL ? "@" : "", g_port, db);
}

/* The server's login role of database `db` (made by store_pg_create). */
void pgfx_server_role(const char *db, char *out, size_t n)
{
    snprintf(out, n, "qwickd_%s", db);
}

/* A fresh database owned by PGFX_OWNER, with qwickd's schema and the
 * server's role when `schema`; its name (heap). NULL on failure. */
char *pgfx_db_new(int schema)
{
    char sql[128], url[256], role[64], *db = NULL;
    if (asprintf(&db, "t%d", ++g_ndb) < 0)
        abort();
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s OWNER " PGFX_OWNER, db);
    if (!admin_exec(g_admin, sql)) {
        free(db);
        return NULL;
    }
    if (!schema)
        return db;
    pgfx_url(db, PGFX_OWNER, url, sizeof(url));
    pgfx_server_role(db, role, sizeof(role));
    qk_err rc = store_pg_create(url, role, "pw");
    if (rc != QK_OK) {
        fprintf(stderr, "%s: store_pg_create %s: %s: %s\n", g_who, db, qk_strerror(rc),
                qk_error_detail());
        free(db);
        return NULL;
    }
    return db;
}

/* Drops the database (ending every session on it) and frees the name. */
void pgfx_db_drop(char *db)
{
    char sql[128];
    if (db == NULL)
        return;
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", db);
    if (g_admin != NULL)
        admin_exec(g_admin, sql);
    free(db);
}

/* A libpq session on `db` as `user` (the superuser `postgres` when NULL). */
PGconn *pgfx_connect(const char *db, const char *user)
{
    char info[256];
    snprintf(info, sizeof(info), "host=127.0.0.1 port=%d user=%s dbname=%s", g_port,
             user != NULL ? user : "postgres", db);
    PGconn *pg = PQconnectdb(info);
    if (PQstatus(pg) != CONNECTION_OK)
        fail_msg("connect to %s as %s: %s", db, user != NULL ? user : "postgres",
                 PQerrorMessage(pg));
    PQsetNoticeProcessor(pg, NULL, NULL);
    return pg;
}

/* Runs `sql` on `db` as the superuser: 0 when it succeeded, -1 when the
 * database refused it (the reason in *why, when not NULL: a static copy). */
int pgfx_try(const char *db, const char *sql, const char **why)
{
    static char msg[512];
    PGconn *pg = pgfx_connect(db, NULL);
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    snprintf(msg, sizeof(msg), "%s", ok ? "" : PQerrorMessage(pg));
    PQclear(r);
    PQfinish(pg);
    if (why != NULL)
        *why = msg;
    return ok ? 0 : -1;
}

/* The integer in the first column of the first row of `sql` on `pg`. */
int64_t pgfx_int_on(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1)
        fail_msg("%s: %s", sql, PQerrorMessage(pg));
    int64_t v = PQgetisnull(r, 0, 0) ? 0 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

/* The same on `db` as the superuser. */
int64_t pgfx_int(const char *db, const char *sql)
{
    PGconn *pg = pgfx_connect(db, NULL);
    int64_t v = pgfx_int_on(pg, sql);
    PQfinish(pg);
    return v;
}
