/* The store's test fixture (store_fixture.c), shared by test_store.c and
 * test_store_queue.c. Built with -DSTORE_PG it is PostgreSQL's: one
 * throwaway cluster per test program (pg_fixture.c), one fresh database per
 * test, the store opened as the server's role under row-level security;
 * without, SQLite's: one data directory per test. */
#ifndef QWICK_TESTS_STORE_FIXTURE_H
#define QWICK_TESTS_STORE_FIXTURE_H

#include <stdint.h>

#include "store/store.h"

typedef struct store_fixture {
    char *where;     /* SQLite: the data directory; PostgreSQL: the database's name */
    qk_store *s;     /* as `qwickd serve` opens it (PostgreSQL: the server's role) */
    qk_store *owner; /* as the admin commands open it: PostgreSQL's owner, who alone
                      * creates orgs and re-seals instance secrets; SQLite: s itself */
} store_fixture;

/* cmocka group setup and teardown: PostgreSQL's cluster (`who` names the
 * program in messages, `offset` is pgfx_start's); nothing on SQLite. */
int sfx_group_start(const char *who, int offset);
void sfx_group_stop(void);

/* cmocka per-test setup and teardown: *state is a store_fixture. */
int sfx_setup(void **state);
int sfx_teardown(void **state);

/* Another store on the fixture's database (a second node, or a reopen). */
qk_err sfx_open_at(const char *where, qk_store **out);
/* Closes f->s and opens it again (SQLite: the owner is the same store). */
void sfx_reopen(store_fixture *f);

/* SQL outside the store (tampering, inspection); on PostgreSQL as the
 * superuser, who bypasses row-level security. raw_try: 0 when the database
 * took it, -1 when it refused; raw_sql fails the test then. */
int sfx_raw_try(const char *where, const char *sql);
void sfx_raw_sql(const char *where, const char *sql);
/* The integer in the first column of the first row of `sql`. */
int64_t sfx_raw_int(const char *where, const char *sql);

/* A new org, made by the owner (`qwickd org create`); its id. */
int64_t sfx_new_org(store_fixture *f, const char *name);

#endif
