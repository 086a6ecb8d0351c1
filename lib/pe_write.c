/* Writing a PE image with a new certificate table.
 *
 * The output is produced as a stream (header copy with patched fields, the
 * image body straight from the mapping, padding, WIN_CERTIFICATE entries), so
 * multi-GiB images never need a second copy in memory. The checksum is
 * accumulated over the stream and patched in at the end. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "pe_internal.h"
#include "reader.h"

typedef qk_err (*emit_fn)(void *ctx, const uint8_t *p, size_t n);

typedef struct layout {
    size_t image_end; /* bytes of the original image kept */
    size_t pad;       /* zeros after them */
    uint64_t table_size;
    uint64_t total;
} layout;

static qk_err plan(const qk_pe *pe, const qk_slice *sigs, size_t n, layout *l)
{
    l->image_end = qk_pe_image_end(pe);
    l->pad = n ? (size_t)(QK_ALIGN8(l->image_end) - l->image_end) : 0;
    l->table_size = 0;
    for (size_t i = 0; i < n; i++) {
        if (sigs[i].data == NULL || sigs[i].len == 0)
            return qk_fail(QK_ERR_INVALID_ARG, "empty signature %zu", i);
        if (sigs[i].len > QK_PE_MAX_CERT_TABLE)
            return qk_fail(QK_ERR_TOO_LARGE, "signature of %zu bytes", sigs[i].len);
        l->table_size += QK_ALIGN8(8 + (uint64_t)sigs[i].len);
    }
    if (l->table_size > QK_PE_MAX_CERT_TABLE)
        return qk_fail(QK_ERR_TOO_LARGE, "certificate table of %llu bytes",
                       (unsigned long long)l->table_size);
    l->total = (uint64_t)l->image_end + l->pad + l->table_size;
    if (l->total > QK_PE_MAX_SIZE)
        return qk_fail(QK_ERR_TOO_LARGE, "signed image would exceed 4 GiB");
    return QK_OK;
}

/* Emits the whole output through `emit` and returns the checksum to store. */
static qk_err produce(const qk_pe *pe, const qk_slice *sigs, size_t n, const layout *l,
                      emit_fn emit, void *ctx, uint32_t *checksum)
{
    static const uint8_t zeros[8] = {0};
    qk_csum cs = {0};
    qk_err rc;
    size_t hlen = pe->certdir_off + 8;
    uint8_t *hdr = malloc(hlen);
    if (hdr == NULL)
        return QK_ERR_NOMEM;
    memcpy(hdr, pe->data, hlen);
    qk_put_u32le(hdr + pe->checksum_off, 0);
    qk_put_u32le(hdr + pe->certdir_off, n ? (uint32_t)(l->image_end + l->pad) : 0);
    qk_put_u32le(hdr + pe->certdir_off + 4, (uint32_t)l->table_size);
    qk_csum_update(&cs, hdr, hlen);
    rc = emit(ctx, hdr, hlen);
    free(hdr);
    if (rc != QK_OK)
        return rc;

    const uint8_t *body = pe->data + hlen;
    size_t left = l->image_end - hlen;
    while (left > 0) {
        size_t chunk = left > (1u << 22) ? (1u << 22) : left; /* even-sized */
        qk_csum_update(&cs, body, chunk);
        if ((rc = emit(ctx, body, chunk)) != QK_OK)
            return rc;
        body += chunk;
        left -= chunk;
    }
    qk_csum_update(&cs, zeros, l->pad);
    if (l->pad && (rc = emit(ctx, zeros, l->pad)) != QK_OK)
        return rc;
    for (size_t i = 0; i < n; i++) {
        uint8_t wh[8];
        uint64_t len = QK_ALIGN8(8 + (uint64_t)sigs[i].len);
        size_t epad = (size_t)(len - 8 - sigs[i].len);
        qk_put_u32le(wh, (uint32_t)len);
        qk_put_u16le(wh + 4, QK_WIN_CERT_REVISION_2_0);
        qk_put_u16le(wh + 6, QK_WIN_CERT_TYPE_PKCS_SIGNED_DATA);
        qk_csum_update(&cs, wh, 8);
        qk_csum_update(&cs, sigs[i].data, sigs[i].len);
        qk_csum_update(&cs, zeros, epad);
        if ((rc = emit(ctx, wh, 8)) != QK_OK ||
            (rc = emit(ctx, sigs[i].data, sigs[i].len)) != QK_OK ||
            (epad && (rc = emit(ctx, zeros, epad)) != QK_OK))
            return rc;
    }
    *checksum = qk_csum_final(&cs, l->total);
    return QK_OK;
}

/* --- into memory -------------------------------------------------------- */

typedef struct mem_sink {
    uint8_t *p;
    size_t used, cap;
} mem_sink;

static qk_err mem_emit(void *ctx, const uint8_t *p, size_t n)
{
    mem_sink *m = ctx;
    if (n > m->cap - m->used)
        return qk_fail(QK_ERR_INVALID_ARG, "internal: output larger than planned");
    memcpy(m->p + m->used, p, n);
    m->used += n;
    return QK_OK;
}

qk_err qk_pe_build_signed(const qk_pe *pe, const qk_slice *sigs, size_t n, qk_buf *out)
{
    layout l;
    qk_err rc;
    uint32_t sum;
    mem_sink m = {0};

    if (pe == NULL || out == NULL || (n && sigs == NULL))
        return QK_ERR_INVALID_ARG;
    out->data = NULL;
    out->len = 0;
    if ((rc = plan(pe, sigs, n, &l)) != QK_OK)
        return rc;
    if (l.total > SIZE_MAX || (m.p = malloc((size_t)l.total ? (size_t)l.total : 1)) == NULL)
        return QK_ERR_NOMEM;
    m.cap = (size_t)l.total;
    if ((rc = produce(pe, sigs, n, &l, mem_emit, &m, &sum)) != QK_OK) {
        free(m.p);
        return rc;
    }
    qk_put_u32le(m.p + pe->checksum_off, sum);
    out->data = m.p;
    out->len = m.used;
    return QK_OK;
}

/* --- into a file, atomically ------------------------------------------- */

struct qk_pe_pending {
    char *tmp;
    char *dst;
    int fd; /* the temporary, open until commit fsyncs it */
};

typedef struct fd_sink {
    int fd;
    uint8_t buf[1 << 16];
    size_t used;
} fd_sink;

static qk_err write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return qk_fail(QK_ERR_IO, "write: %s", strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
    return QK_OK;
}

static qk_err fd_flush(fd_sink *s)
{
    qk_err rc = write_all(s->fd, s->buf, s->used);
    s->used = 0;
    return rc;
}

static qk_err fd_emit(void *ctx, const uint8_t *p, size_t n)
{
    fd_sink *s = ctx;
    if (n >= sizeof(s->buf)) {
        qk_err rc = fd_flush(s);
        return rc != QK_OK ? rc : write_all(s->fd, p, n);
    }
    if (n > sizeof(s->buf) - s->used) {
        qk_err rc = fd_flush(s);
        if (rc != QK_OK)
            return rc;
    }
    memcpy(s->buf + s->used, p, n);
    s->used += n;
    return QK_OK;
}

static char *dir_of(const char *path)
{
    char *copy = strdup(path);
    if (copy == NULL)
        return NULL;
    char *d = strdup(dirname(copy));
    free(copy);
    return d;
}

/* The file to replace: `path`, or what it names when it is a symbolic link
 * (the file the link points to is signed, as signtool and cp would write
 * it; replacing the link itself would leave the real file unsigned). */
static qk_err resolve_target(const char *path, char **out)
{
    struct stat lst;
    *out = NULL;
    if (lstat(path, &lst) != 0 || !S_ISLNK(lst.st_mode)) {
        *out = strdup(path);
        return *out != NULL ? QK_OK : QK_ERR_NOMEM;
    }
    if ((*out = realpath(path, NULL)) == NULL)
        return qk_fail(QK_ERR_IO, "%s: symbolic link to %s", path,
                       errno == ENOENT ? "a missing file" : strerror(errno));
    return QK_OK;
}

qk_err qk_pe_write_signed_begin(const qk_pe *pe, const qk_slice *sigs, size_t n, const char *path,
                                qk_pe_pending **out)
{
    qk_err rc;
    layout l;
    int fd = -1;
    uint32_t sum;
    uint8_t sumle[4];
    struct stat st;
    mode_t mode;
    fd_sink *sink = NULL;
    qk_pe_pending *p = NULL;
    char *dir = NULL, *base = NULL, *copy = NULL;

    if (pe == NULL || path == NULL || out == NULL || (n && sigs == NULL))
        return QK_ERR_INVALID_ARG;
    *out = NULL;
    if ((rc = plan(pe, sigs, n, &l)) != QK_OK)
        return rc;
    char *target = NULL;
    if ((rc = resolve_target(path, &target)) != QK_OK)
        return rc;
    path = target;
    if (stat(path, &st) == 0) {
        mode = st.st_mode & 07777;
    } else {
        mode_t um = umask(0);
        umask(um);
        mode = 0666 & ~um;
    }
    rc = QK_ERR_NOMEM;
    if ((p = calloc(1, sizeof(*p))) == NULL || (sink = malloc(sizeof(*sink))) == NULL ||
        (dir = dir_of(path)) == NULL || (copy = strdup(path)) == NULL ||
        (p->dst = strdup(path)) == NULL)
        goto out;
    base = basename(copy);
    size_t tl = strlen(dir) + strlen(base) + 32;
    if ((p->tmp = malloc(tl)) == NULL)
        goto out;
    snprintf(p->tmp, tl, "%s/.%s.qwick-XXXXXX", dir, base);
    /* A new file (O_EXCL), never a link planted under the name. */
    if ((fd = mkostemp(p->tmp, O_CLOEXEC | O_NOFOLLOW)) < 0) {
        rc = qk_fail(QK_ERR_IO, "creating a temporary file in %s: %s", dir, strerror(errno));
        free(p->tmp);
        p->tmp = NULL;
        goto out;
    }
    sink->fd = fd;
    sink->used = 0;
    if ((rc = produce(pe, sigs, n, &l, fd_emit, sink, &sum)) != QK_OK ||
        (rc = fd_flush(sink)) != QK_OK)
        goto out;
    qk_put_u32le(sumle, sum);
    if (pwrite(fd, sumle, 4, (off_t)pe->checksum_off) != 4) {
        rc = qk_fail(QK_ERR_IO, "writing checksum: %s", strerror(errno));
        goto out;
    }
    if (fchmod(fd, mode) != 0) {
        rc = qk_fail(QK_ERR_IO, "%s: %s", p->tmp, strerror(errno));
        goto out;
    }
#ifdef SYNC_FILE_RANGE_WRITE
    /* Start the write-back now; commit's fsync then waits for less, while
     * the caller checks the file. A failure here shows up in that fsync. */
    (void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
#endif
    p->fd = fd;
    fd = -1;
    *out = p;
    p = NULL;
    rc = QK_OK;
out:
    if (fd >= 0)
        close(fd);
    if (p != NULL) {
        if (p->tmp != NULL)
            unlink(p->tmp);
        free(p->tmp);
        free(p->dst);
        free(p);
    }
    free(sink);
    free(dir);
    free(copy);
    free(target);
    return rc;
}

const char *qk_pe_pending_path(const qk_pe_pending *p)
{
    return p->tmp;
}

/* Renames the temporary over the destination and, with `sync_dir`, fsyncs
 * the directory; frees p either way. */
static qk_err pending_finish(qk_pe_pending *p, int sync_dir)
{
    qk_err rc = QK_OK;
    if (p == NULL)
        return QK_ERR_INVALID_ARG;
    /* The content is durable before its name points at it. */
    if (fsync(p->fd) != 0) {
        rc = qk_fail(QK_ERR_IO, "%s: %s", p->tmp, strerror(errno));
        close(p->fd);
        unlink(p->tmp);
    } else if (close(p->fd) != 0) {
        rc = qk_fail(QK_ERR_IO, "close %s: %s", p->tmp, strerror(errno));
        unlink(p->tmp);
    } else if (rename(p->tmp, p->dst) != 0) {
        rc = qk_fail(QK_ERR_IO, "rename to %s: %s", p->dst, strerror(errno));
        unlink(p->tmp);
    } else if (sync_dir) {
        /* Make the rename itself durable. */
        char *dir = dir_of(p->dst);
        int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    free(p->tmp);
    free(p->dst);
    free(p);
    return rc;
}

qk_err qk_pe_pending_commit(qk_pe_pending *p)
{
    return pending_finish(p, 1);
}

qk_err qk_pe_pending_rename(qk_pe_pending *p)
{
    return pending_finish(p, 0);
}

void qk_pe_pending_abort(qk_pe_pending *p)
{
    if (p == NULL)
        return;
    close(p->fd);
    unlink(p->tmp);
    free(p->tmp);
    free(p->dst);
    free(p);
}

qk_err qk_pe_write_signed(const qk_pe *pe, const qk_slice *sigs, size_t n, const char *path)
{
    qk_pe_pending *p = NULL;
    qk_err rc = qk_pe_write_signed_begin(pe, sigs, n, path, &p);
    if (rc != QK_OK)
        return rc;
    return qk_pe_pending_commit(p);
}
