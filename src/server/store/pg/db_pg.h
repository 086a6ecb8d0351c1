/* What only the PostgreSQL driver has. The driver itself is opened with
 * db_pg_open (db.h); this opens it with credentials kept out of the
 * connection string. */
#ifndef QWICKD_STORE_DB_PG_H
#define QWICKD_STORE_DB_PG_H

#include <stdint.h>

#include "store/db.h"

/* Connections a pool may hold, and the parameters one statement may bind. */
#define DB_PG_MAX_CONNS 256
#define DB_PG_MAX_PARAMS 1024

/* db_pg_open, with `user` and `password` (either NULL: the conninfo's, or
 * libpq's defaults) overriding the conninfo's. The password never appears in
 * an error detail. */
qk_err db_pg_open_as(const char *conninfo, const char *user, const char *password, int conns,
                     const db_query *queries, int nqueries, qk_db **out);

/* The batching writer's counters since open: transactions committed and
 * the writes they carried (write_async). */
void db_pg_stats(qk_db *d, uint64_t *commits, uint64_t *writes);

#endif
