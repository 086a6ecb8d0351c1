#include "common/file_atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/xalloc.h"

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

/* Linux's MAXSYMLINKS: links followed in one resolution before ELOOP. */
#define AFILE_MAX_LINKS 40

/* A path being resolved, one component at a time, as the kernel walks it.
 * `done` is absolute and free of links ("" stands for the root); `todo`
 * from `pos` holds the components still to walk. */
typedef struct walk {
    char *done, *todo;
    size_t pos;
    int nlinks;
    char *last_link; /* set once the last component is a link's target */
} walk;

/* fs.protected_symlinks (Documentation/admin-guide/sysctl/fs.rst): a link
 * in a sticky world-writable directory is followed only by its owner or when
 * it belongs to the directory's owner; elsewhere only someone allowed to
 * write the directory could have put it there. */
static int link_followable(const char *dir, const char *link, const struct stat *lst, char **err)
{
    struct stat dst;
    if (lst->st_uid == geteuid())
        return 0;
    if (stat(dir, &dst) != 0) {
        *err = xasprintf("%s: %s", dir, strerror(errno));
        return -1;
    }
    if ((dst.st_mode & (S_ISVTX | S_IWOTH)) != (S_ISVTX | S_IWOTH) || dst.st_uid == lst->st_uid)
        return 0;
    *err = xasprintf("refusing to follow symlink %s owned by uid %lu in sticky world-writable "
                     "directory %s",
                     link, (unsigned long)lst->st_uid, dir);
    return -1;
}

/* The next component of w->todo (NUL-terminated in place), NULL at the end;
 * *last tells whether others follow it. */
static char *next_component(walk *w, int *last)
{
    char *c = w->todo + w->pos + strspn(w->todo + w->pos, "/");
    size_t n = strcspn(c, "/");
    if (n == 0)
        return NULL;
    w->pos = (size_t)(c - w->todo) + n;
    if (c[n] != '\0') {
        c[n] = '\0';
        w->pos++;
    }
    *last = w->todo[w->pos + strspn(w->todo + w->pos, "/")] == '\0';
    return c;
}

/* Continues the walk at the target of `link`, found where w->done ends. */
static int follow_link(walk *w, const char *link, const struct stat *lst, int last, char **err)
{
    char target[PATH_MAX];
    ssize_t n;
    if (++w->nlinks > AFILE_MAX_LINKS) {
        *err = xasprintf("%s: %s", link, strerror(ELOOP));
        return -1;
    }
    if (link_followable(w->done[0] != '\0' ? w->done : "/", link, lst, err) != 0)
        return -1;
    if ((n = readlink(link, target, sizeof(target))) < 0 || (size_t)n >= sizeof(target)) {
        *err = xasprintf("%s: %s", link, strerror(n < 0 ? errno : ENAMETOOLONG));
        return -1;
    }
    target[n] = '\0';
    if (target[0] == '/')
        w->done[0] = '\0';
    char *todo = xasprintf("%s/%s", target, w->todo + w->pos);
    free(w->todo);
    w->todo = todo;
    w->pos = 0;
    if (last) {
        free(w->last_link);
        w->last_link = xstrdup(link);
    }
    return 0;
}

/* One component: a directory (or the last component) is appended to
 * w->done, a link is followed or refused. */
static int walk_step(walk *w, const char *c, int last, int follow_last, char **err)
{
    struct stat st;
    char *next = xasprintf("%s/%s", w->done, c);
    int rc = -1;
    if (lstat(next, &st) != 0) {
        if (errno != ENOENT || !last)
            *err = xasprintf("%s: %s", next, strerror(errno));
        else if (w->last_link != NULL)
            *err = xasprintf("%s: symbolic link to a missing file", w->last_link);
        else
            rc = 0; /* a new file */
    } else if (S_ISLNK(st.st_mode)) {
        if (last && !follow_last)
            *err = xasprintf("refusing to write through symlink %s", next);
        else
            rc = follow_link(w, next, &st, last, err);
        free(next);
        return rc;
    } else if (!last && !S_ISDIR(st.st_mode)) {
        *err = xasprintf("%s: %s", next, strerror(ENOTDIR));
    } else {
        rc = 0;
    }
    if (rc == 0) {
        free(w->done);
        w->done = next;
        next = NULL;
    }
    free(next);
    return rc;
}

/* Like realpath(3), but every link is vetted before it is followed, and
 * the last component need not exist. */
char *afile_resolve(const char *path, int follow_last, char **err)
{
    walk w = {0};
    char *c, *res = NULL;
    int last = 0;

    if (path[0] == '\0') {
        *err = xstrdup("empty file name");
        return NULL;
    }
    if (path[0] == '/') {
        w.done = xstrdup("");
    } else if ((w.done = getcwd(NULL, 0)) == NULL) {
        *err = xasprintf("current directory: %s", strerror(errno));
        return NULL;
    } else if (strcmp(w.done, "/") == 0) {
        w.done[0] = '\0';
    }
    w.todo = xstrdup(path);
    while ((c = next_component(&w, &last)) != NULL) {
        if (strcmp(c, ".") == 0)
            continue;
        if (strcmp(c, "..") == 0) {
            *(w.done[0] != '\0' ? strrchr(w.done, '/') : w.done) = '\0';
            continue;
        }
        if (walk_step(&w, c, last, follow_last, err) != 0)
            goto out;
    }
    res = w.done[0] != '\0' ? w.done : xstrdup("/");
    if (res == w.done)
        w.done = NULL;
out:
    free(w.done);
    free(w.todo);
    free(w.last_link);
    return res;
}

int afile_write_temp(const char *dest, const void *data, size_t len, mode_t mode, char **tmp,
                     char **err)
{
    char *dir = dir_of(dest), *base = base_of(dest);
    char *path = xasprintf("%s/.%s.qwick-XXXXXX", dir, base);
    int fd = mkostemp(path, O_CLOEXEC | O_NOFOLLOW), rc = -1;

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

int afile_rename(const char *tmp, const char *dest, char **err)
{
    if (rename(tmp, dest) != 0) {
        *err = xasprintf("rename to %s: %s", dest, strerror(errno));
        return -1;
    }
    return 0;
}

int afile_commit(const char *tmp, const char *dest, char **err)
{
    if (afile_rename(tmp, dest, err) != 0)
        return -1;
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
