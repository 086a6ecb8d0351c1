/* Small helpers shared by qwickd's modules.
 *
 * Allocation policy (docs/HACKING.md): outside request paths qwickd aborts on
 * allocation failure through the x* helpers below; the process cannot do
 * anything useful without memory and a half-initialised store or keyring is
 * worse than a crash. Code that runs per HTTP request returns QK_ERR_NOMEM
 * where doing so is easy. */
#ifndef QWICKD_UTIL_H
#define QWICKD_UTIL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "qwick/buf.h"
#include "qwick/error.h"
#include "common/xalloc.h"
#include "common/hex.h"

/* "dir/name" on the heap. */
char *path_join(const char *dir, const char *name);

/* Wall clock: unix seconds and unix milliseconds. */
int64_t now_unix(void);
int64_t now_unix_ms(void);
/* pthread_cond_timedwait for `ms` milliseconds from now (CLOCK_REALTIME,
 * the condition's default clock); the caller holds `m`. */
void cond_wait_ms(pthread_cond_t *c, pthread_mutex_t *m, int64_t ms);

/* Reads a whole regular file of at most `max` bytes into *out (NUL-terminated
 * one past len, so text can be used as a C string). QK_ERR_TOO_LARGE beyond. */
qk_err file_read_all(const char *path, size_t max, qk_buf *out);
/* Creates `path` with `mode` (O_EXCL: fails if it exists), writes data, fsyncs
 * the file and its directory. A partial file is removed on failure. */
qk_err file_create_excl(const char *path, qk_slice data, mode_t mode);
/* Atomically replaces `path` with data (temp file + fsync + rename + dir fsync). */
qk_err file_replace(const char *path, qk_slice data, mode_t mode);
/* fsync a directory so a create/rename in it is durable. */
qk_err dir_fsync(const char *dir);

#endif
