#include "file_atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xalloc.h"

int fd_write_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -1;
        if (k == 0) {
            errno = EIO;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static char *dir_of(const char *path)
{
    char *copy = xstrdup(path);
    char *d = xstrdup(dirname(copy));
    free(copy);
    return d;
}

static char *base_of(const char *path)
{
    char *copy = xstrdup(path);
    char *b = xstrdup(basename(copy));
    free(copy);
    return b;
}

char *afile_target(const char *path, char **err)
{
    struct stat lst;
    if (lstat(path, &lst) != 0 || !S_ISLNK(lst.st_mode))
        return xstrdup(path);
    char *r = realpath(path, NULL);
    if (r == NULL)
        *err = xasprintf("%s: symbolic link to %s", path,
                         errno == ENOENT ? "a missing file" : strerror(errno));
    return r;
}

int afile_write_temp(const char *dest, const void *data, size_t len, mode_t mode, char **tmp,
                     char **err)
{
    char *dir = dir_of(dest), *base = base_of(dest);
    char *path = xasprintf("%s/.%s.qwick-XXXXXX", dir, base);
    int fd = mkostemp(path, O_CLOEXEC), rc = -1;

    *tmp = NULL;
    if (fd < 0) {
        *err = xasprintf("creating a temporary file in %s: %s", dir, strerror(errno));
        goto out;
    }
    if (fchmod(fd, mode) != 0 || fd_write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        *err = xasprintf("writing %s: %s", path, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0 && close(fd) != 0 && rc == 0) {
        *err = xasprintf("writing %s: %s", path, strerror(errno));
        rc = -1;
    }
    if (rc == 0) {
        *tmp = path;
        path = NULL;
    } else if (fd >= 0) {
        unlink(path);
    }
    free(path);
    free(base);
    free(dir);
    return rc;
}

int afile_commit(const char *tmp, const char *dest, char **err)
{
    if (rename(tmp, dest) != 0) {
        *err = xasprintf("rename to %s: %s", dest, strerror(errno));
        return -1;
    }
    /* Make the rename itself durable. */
    char *dir = dir_of(dest);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;
    if (dfd < 0 || fsync(dfd) != 0) {
        *err = xasprintf("fsync %s: %s", dir, strerror(errno));
        rc = -1;
    }
    if (dfd >= 0)
        close(dfd);
    free(dir);
    return rc;
}
