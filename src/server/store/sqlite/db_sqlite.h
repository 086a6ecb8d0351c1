/* What only the SQLite driver has: the group commit's delay, its counters,
 * and a test hook. The driver itself is opened with db_sqlite_open (db.h). */
#ifndef QWICKD_STORE_DB_SQLITE_H
#define QWICKD_STORE_DB_SQLITE_H

#include <stdatomic.h>
#include <stdint.h>

#include "store/db.h"

/* Group commit delay: while *coming > 0 (the caller's count of writes on
 * their way, e.g. requests being signed), the writer waits up to `usec` after
 * the oldest queued write for them, so one fsync commits a bigger batch (less
 * CPU per write under load). It commits as soon as *coming drops to 0 or the
 * batch is full; with nothing coming (a lone or serial client) it never
 * waits. usec 0 or coming NULL (the default): off; at most
 * DB_SQLITE_MAX_COMMIT_DELAY_US. `coming` must outlive the db. */
#define DB_SQLITE_MAX_COMMIT_DELAY_US 100000u
void db_sqlite_set_commit_delay(qk_db *d, unsigned usec, const atomic_int *coming);

/* Test hook: make the next `n` batch commits fail (rolled back). */
void db_sqlite_fail_commits(qk_db *d, int n);

typedef struct db_sqlite_counters {
    uint64_t commits;     /* transactions committed (group commits) */
    uint64_t writes;      /* writes they carried: writes / commits = mean batch */
    uint64_t delayed;     /* batches that waited for the commit delay */
    uint64_t checkpoints; /* checkpoint passes run by the checkpointer */
    uint64_t ckpt_frames; /* WAL frames those passes copied into the database */
} db_sqlite_counters;
void db_sqlite_stats(qk_db *d, db_sqlite_counters *out);

#endif
