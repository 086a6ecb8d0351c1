/* A PostgreSQL for the unit tests (pg_fixture.c): one throwaway cluster per
 * test program (tests/tools/pgcluster.sh on a free port of 25400-25499,
 * trusting every local connection), databases in it, and raw SQL as the
 * superuser. A run killed midway leaves its cluster named in
 * $QWICK_PG_STATE.<pid>; the next run stops it. */
#ifndef QWICK_TESTS_PG_FIXTURE_H
#define QWICK_TESTS_PG_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

/* The role that owns the databases qwickd's schema goes in (LOGIN
 * CREATEROLE, not superuser), as `qwickd init --database` expects. */
#define PGFX_OWNER "qwick_owner"

/* Starts the cluster and creates PGFX_OWNER; 0 when ready. `who` names the
 * program in messages; `offset` moves where the search for a free port
 * begins (programs meson runs at the same time pass different ones). On
 * failure whatever started is stopped (cmocka runs no group teardown after a
 * failed group setup). */
int pgfx_start(const char *who, int offset);
/* Stops and removes the cluster; safe at any point of pgfx_start. */
void pgfx_stop(void);
int pgfx_port(void);
/* Stops the server (fast) and starts it again, data kept; its exit status. */
int pgfx_restart(void);

/* A fresh database t<N> owned by PGFX_OWNER, with qwickd's schema and the
 * server's role qwickd_t<N> when `schema`; its name (heap), NULL on failure. */
char *pgfx_db_new(int schema);
/* Drops the database (ending every session on it) and frees the name. */
void pgfx_db_drop(char *db);
/* The URL of database `db` for `user` (NULL: none in the URL). */
void pgfx_url(const char *db, const char *user, char *out, size_t n);
/* The server's login role of database `db` (made by store_pg_create). */
void pgfx_server_role(const char *db, char *out, size_t n);
/* A libpq session on `db` as `user` (the superuser `postgres` when NULL). */
PGconn *pgfx_connect(const char *db, const char *user);
/* Runs `sql` on `db` as the superuser: 0 when it succeeded, -1 when the
 * database refused it (the reason in *why, when not NULL: a static copy). */
int pgfx_try(const char *db, const char *sql, const char **why);
/* The integer in the first column of the first row of `sql` on `pg`. */
int64_t pgfx_int_on(PGconn *pg, const char *sql);
/* The same on `db` as the superuser. */
int64_t pgfx_int(const char *db, const char *sql);

#endif
