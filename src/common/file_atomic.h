/* Writing files so that a crash leaves the old content or the new, never a
 * mix: a temporary file beside the destination is written and fsynced, then
 * renamed over it and the directory fsynced. What to replace is decided once,
 * up front (afile_resolve), following only the symbolic links another user
 * cannot have planted. Shared by the qwick CLI (the detached .p7s, written,
 * verified, then committed; the destination of signed PE files) and qwickd
 * (keyring, port file). libqwick has its own writer for signed PE files (no
 * aborting allocators in the library). Errors: -1 and *err, a malloc'd
 * message. */
#ifndef QWICK_COMMON_FILE_ATOMIC_H
#define QWICK_COMMON_FILE_ATOMIC_H

#include <stddef.h>
#include <sys/types.h>

/* write(2) until done, retrying EINTR and short writes; -1 with errno set. */
int fd_write_all(int fd, const void *p, size_t n);

/* afile_resolve's `follow_last`: whether a symbolic link in the last
 * component of the path is followed (in-place writes) or refused (a named
 * output, which must never be written through a link). */
enum { AFILE_NOFOLLOW_LAST = 0, AFILE_FOLLOW_LAST = 1 };

/* The file a write to `path` should replace: an absolute path without
 * symbolic links, for afile_write_temp and afile_commit (which never follow
 * a link at `dest`: a link raced in there is replaced, not written through).
 * Links in the path are followed only where Linux's fs.protected_symlinks
 * rule would let the caller follow them (whatever the sysctl says): a link in
 * a sticky world-writable directory (/tmp) is refused unless its owner is the
 * caller (euid) or the directory's owner. The last component may name a new
 * file, but a link to a missing file is an error. NULL and *err when refused
 * or unresolvable. Caller frees. */
char *afile_resolve(const char *path, int follow_last, char **err);

/* Writes `data` with mode `mode` (exactly, whatever the umask) into
 * `.NAME.qwick-XXXXXX` beside `dest`, a new file (O_EXCL|O_NOFOLLOW), and
 * fsyncs it; *tmp gets its path. */
int afile_write_temp(const char *dest, const void *data, size_t len, mode_t mode, char **tmp,
                     char **err);

/* Renames `tmp` over `dest` and fsyncs the directory. On failure `tmp` is
 * left for the caller to remove. */
int afile_commit(const char *tmp, const char *dest, char **err);
/* afile_commit without the directory fsync: durable only once the caller has
 * fsynced the directory of `dest` (dir_sync.h covers many renames with one). */
int afile_rename(const char *tmp, const char *dest, char **err);

#endif
