/* Writing files so that a crash leaves the old content or the new, never a
 * mix: a temporary file beside the destination is written and fsynced, then
 * renamed over it and the directory fsynced. Shared by the qwick CLI (the
 * detached .p7s, written, verified, then committed) and qwickd (keyring,
 * port file). libqwick has its own for signed PE files (no aborting
 * allocators in the library). Errors: -1 and *err, a malloc'd message. */
#ifndef QWICK_COMMON_FILE_ATOMIC_H
#define QWICK_COMMON_FILE_ATOMIC_H

#include <stddef.h>
#include <sys/types.h>

/* write(2) until done, retrying EINTR and short writes; -1 with errno set. */
int fd_write_all(int fd, const void *p, size_t n);

/* The file a write to `path` replaces: `path`, or what it names when it is a
 * symbolic link (the linked file is replaced, the link stays). NULL and *err
 * for a dangling link. Caller frees. */
char *afile_target(const char *path, char **err);

/* Writes `data` with mode `mode` (exactly, whatever the umask) into
 * `.NAME.qwick-XXXXXX` beside `dest` and fsyncs it; *tmp gets its path. */
int afile_write_temp(const char *dest, const void *data, size_t len, mode_t mode, char **tmp,
                     char **err);

/* Renames `tmp` over `dest` and fsyncs the directory. On failure `tmp` is
 * left for the caller to remove. */
int afile_commit(const char *tmp, const char *dest, char **err);

#endif
