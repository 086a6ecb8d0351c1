/* qwickd helpers: aborting allocators, hex, clocks, careful file writes. */
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"

#include "common/file_atomic.h"

char *path_join(const char *dir, const char *name)
{
    return xasprintf("%s/%s", dir, name);
}

/* QWICKD_TEST_CLOCK_OFFSET (seconds, may be negative): the tests' way to
 * let a day pass (an Idempotency-Key's 24 hours). Read once. */
static int64_t offset_s;
static pthread_once_t offset_once = PTHREAD_ONCE_INIT;

static void offset_read(void)
{
    const char *v = getenv("QWICKD_TEST_CLOCK_OFFSET");
    char *end = NULL;
    long long n = v != NULL ? strtoll(v, &end, 10) : 0;
    if (v != NULL && end != v && *end == '\0' && n > -315360000LL && n < 315360000LL)
        offset_s = n;
}

int64_t now_unix(void)
{
    struct timespec ts;
    pthread_once(&offset_once, offset_read);
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec + offset_s;
}

int64_t now_unix_ms(void)
{
    struct timespec ts;
    pthread_once(&offset_once, offset_read);
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((int64_t)ts.tv_sec + offset_s) * 1000 + ts.tv_nsec / 1000000;
}

void cond_wait_ms(pthread_cond_t *c, pthread_mutex_t *m, int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(c, m, &ts);
}

qk_err file_read_all(const char *path, size_t max, qk_buf *out)
{
    qk_err rc = QK_ERR_IO;
    uint8_t *data = NULL;
    size_t len = 0;
    struct stat st;
    int fd;

    out->data = NULL;
    out->len = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return qk_fail(QK_ERR_IO, "open %s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        rc = qk_fail(QK_ERR_IO, "stat %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = qk_fail(QK_ERR_IO, "%s: not a regular file", path);
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        rc = qk_fail(QK_ERR_TOO_LARGE, "%s: larger than %zu bytes", path, max);
        goto out;
    }
    data = xmalloc((size_t)st.st_size + 1);
    while (len < (size_t)st.st_size) {
        ssize_t r = read(fd, data + len, (size_t)st.st_size - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = qk_fail(QK_ERR_IO, "read %s: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    data[len] = '\0';
    out->data = data;
    out->len = len;
    data = NULL;
    rc = QK_OK;
out:
    if (data != NULL) {
        qk_buf tmp = {data, (size_t)st.st_size};
        qk_buf_free(&tmp);
    }
    close(fd);
    return rc;
}

static qk_err write_all(int fd, const char *path, qk_slice data)
{
    if (fd_write_all(fd, data.data, data.len) != 0)
        return qk_fail(QK_ERR_IO, "write %s: %s", path, strerror(errno));
    if (fsync(fd) != 0)
        return qk_fail(QK_ERR_IO, "fsync %s: %s", path, strerror(errno));
    return QK_OK;
}

qk_err dir_fsync(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return qk_fail(QK_ERR_IO, "open %s: %s", dir, strerror(errno));
    int r = fsync(fd);
    int e = errno;
    close(fd);
    if (r != 0)
        return qk_fail(QK_ERR_IO, "fsync %s: %s", dir, strerror(e));
    return QK_OK;
}

static qk_err parent_fsync(const char *path)
{
    char *copy = xstrdup(path);
    qk_err rc = dir_fsync(dirname(copy));
    free(copy);
    return rc;
}

qk_err file_create_excl(const char *path, qk_slice data, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return qk_fail(QK_ERR_IO, "create %s: %s", path, strerror(errno));
    /* The umask may have narrowed the mode; make it exactly what was asked. */
    qk_err rc = QK_OK;
    if (fchmod(fd, mode) != 0)
        rc = qk_fail(QK_ERR_IO, "chmod %s: %s", path, strerror(errno));
    if (rc == QK_OK)
        rc = write_all(fd, path, data);
    if (close(fd) != 0 && rc == QK_OK)
        rc = qk_fail(QK_ERR_IO, "close %s: %s", path, strerror(errno));
    if (rc == QK_OK)
        rc = parent_fsync(path);
    if (rc != QK_OK)
        unlink(path);
    return rc;
}

qk_err file_replace(const char *path, qk_slice data, mode_t mode)
{
    char *tmp = NULL, *err = NULL;
    qk_err rc = QK_OK;
    if (afile_write_temp(path, data.data, data.len, mode, &tmp, &err) != 0 ||
        afile_commit(tmp, path, &err) != 0) {
        rc = qk_fail(QK_ERR_IO, "%s", err);
        if (tmp != NULL)
            unlink(tmp);
    }
    free(err);
    free(tmp);
    return rc;
}
