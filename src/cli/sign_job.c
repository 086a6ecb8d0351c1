/* qwick sign: one file (sign.h). The digest is computed here and only the
 * digest is sent (with --async that is all); the signed file is written
 * beside the original, verified as written, and only then renamed over it. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cli.h"
#include "common/file_atomic.h"
#include "qwick/pe.h"
#include "qwick/tsp.h"
#include "sign.h"

char *sign_errmsg(const char *what, qk_err e)
{
    const char *d = qk_error_detail();
    if (d != NULL && d[0] != '\0')
        return what ? xasprintf("%s: %s: %s", what, qk_strerror(e), d)
                    : xasprintf("%s: %s", qk_strerror(e), d);
    return what ? xasprintf("%s: %s", what, qk_strerror(e)) : xstrdup(qk_strerror(e));
}

/* A TSA client for `urls`. The server's own TSA (any URL under the server's
 * base) is reached with the server's CA; other TSAs with the system store. */
static int new_tsa(worker *w, const char *const *urls, size_t n, char **err)
{
    const sign_opts *o = w->r->o;
    size_t blen = strlen(o->cfg.server);
    int on_server = 0;
    for (size_t i = 0; i < n; i++)
        on_server |= strncmp(urls[i], o->cfg.server, blen) == 0 &&
                     (urls[i][blen] == '/' || urls[i][blen] == '\0');
    if ((w->tsa = tsa_client_new(urls, n)) == NULL ||
        (on_server && o->cfg.cacert != NULL && tsa_client_set_cacert(w->tsa, o->cfg.cacert) != 0) ||
        (on_server && tsa_client_set_bearer(w->tsa, o->cfg.api_key, o->cfg.server) != 0)) {
        *err = xstrdup("timestamp: cannot set up the TSA client");
        return -1;
    }
    return 0;
}

/* Timestamp URLs: --timestamp-url values, else the one the server named (a
 * path-only answer is taken relative to the server). One TSA client per
 * worker, remade only if the server starts naming another URL. */
static int ensure_tsa(worker *w, const char *server_url, char **err)
{
    const sign_opts *o = w->r->o;
    char *url = NULL;
    if (o->n_ts_urls > 0)
        return w->tsa != NULL ? 0 : new_tsa(w, o->ts_urls, o->n_ts_urls, err);
    if (server_url == NULL) {
        *err = xstrdup("the server named no timestamp URL: use --timestamp-url or --no-timestamp");
        return -1;
    }
    url = server_url[0] == '/' ? xasprintf("%s%s", o->cfg.server, server_url) : xstrdup(server_url);
    if (w->tsa != NULL && strcmp(w->tsa_url, url) == 0) {
        free(url);
        return 0;
    }
    tsa_client_free(w->tsa);
    w->tsa = NULL;
    free(w->tsa_url);
    w->tsa_url = url;
    const char *one[1] = {url};
    return new_tsa(w, one, 1, err);
}

/* Server signature -> timestamped signature (unless --no-timestamp, or the
 * server stamped it already: the post-write check verifies that token as it
 * would one fetched here). */
static int timestamp_sig(worker *w, client_sign_res *res, qk_buf *out, char **err)
{
    const sign_opts *o = w->r->o;
    qk_err e;
    if (o->no_timestamp || res->timestamped) {
        *out = res->signature;
        res->signature = (qk_buf){0};
        return 0;
    }
    if (ensure_tsa(w, res->timestamp_url, err) != 0)
        return -1;
    e = qk_timestamp((qk_slice){res->signature.data, res->signature.len}, o->alg, tsa_client_send,
                     w->tsa, out);
    if (e != QK_OK) {
        const char *te = tsa_client_error(w->tsa);
        /* Transport failures are described by the TSA client, the rest by libqwick. */
        *err = e == QK_ERR_IO && te[0] != '\0' ? xasprintf("timestamp: %s", te)
                                               : sign_errmsg("timestamp", e);
        return -1;
    }
    return 0;
}

/* What the file just written must satisfy before it replaces anything.
 * Always: every signature's image digest, messageDigest and CMS signature
 * are valid, and the new signature carries a timestamp whose token signature
 * and imprint verify. With --ca (and --tsa-ca) also chain trust, which a
 * user's store usually cannot check for a private CA. */
static char *check_report(const sign_opts *o, const qk_verify_report *rep, size_t expect_min)
{
    if (rep->error != NULL)
        return xasprintf("written file does not verify: %s", rep->error);
    if (rep->nsigs < expect_min || rep->nsigs == 0)
        return xasprintf("written file has %zu signatures, expected %zu", rep->nsigs, expect_min);
    for (size_t i = 0; i < rep->nsigs; i++) {
        const qk_sig_result *s = &rep->sigs[i];
        const char *why = NULL;
        if (!s->digest_ok)
            why = "image digest mismatch";
        else if (!s->message_digest_ok)
            why = "messageDigest mismatch";
        else if (!s->signature_ok)
            why = "signature invalid";
        else if (s->chain_checked && !s->chain_ok)
            why = "certificate chain not trusted by --ca";
        else if (s->timestamp != NULL && !s->timestamp->ok)
            why = s->timestamp->chain_checked ? "timestamp not trusted by --tsa-ca"
                                              : "timestamp invalid";
        if (why != NULL)
            return xasprintf("written file does not verify (signature %zu): %s%s%s", i, why,
                             s->error ? ": " : "", s->error ? s->error : "");
    }
    /* Replacing: exactly our signature; it must carry the token we attached. */
    if (!o->append && !o->detached && rep->nsigs != 1)
        return xasprintf("written file has %zu signatures, expected 1", rep->nsigs);
    if (!o->append && !o->no_timestamp && rep->sigs[0].timestamp == NULL)
        return xstrdup("written file lost its timestamp");
    return NULL;
}

/* The post-write check's trust: without --ca the signer chain is not
 * evaluated, without --ca and --tsa-ca neither is the TSA's, so no store is
 * parsed at all (the system bundle costs ~90 ms); the stores that are needed
 * are loaded once and shared by the workers. */
qk_err sign_verify_ctx_new(const sign_opts *o, qk_verify_ctx **out)
{
    qk_verify_opts vo = {
        .ca_file = o->ca,
        .tsa_ca_file = o->tsa_ca,
        .skip_chain = o->ca == NULL,
        .skip_ts_chain = o->no_timestamp || (o->ca == NULL && o->tsa_ca == NULL),
    };
    return qk_verify_ctx_new(&vo, out);
}

/* Where the result for an input goes, decided once, before anything is sent:
 * --out is never written through a symbolic link; an in-place write
 * (`inplace`: the file itself, or FILE.p7s) follows links only where the
 * kernel's protected_symlinks rule would (see afile_resolve). */
static char *write_target(const sign_opts *o, const char *inplace, char **err)
{
    char *why = NULL, *dest;
    if (o->out == NULL)
        return afile_resolve(inplace, AFILE_FOLLOW_LAST, err);
    if ((dest = afile_resolve(o->out, AFILE_NOFOLLOW_LAST, &why)) == NULL) {
        *err = xasprintf("--out: %s", why);
        free(why);
    }
    return dest;
}

/* The rename to `dest` is durable once its directory is fsynced: noted for
 * the end of the run (sign_run.c), which does it once per directory. */
static void note_sync_dir(job *jb, const char *dest)
{
    char *copy = xstrdup(dest);
    free(jb->sync_dir);
    jb->sync_dir = xstrdup(dirname(copy));
    free(copy);
}

/* --- PE files ---------------------------------------------------------- */

/* qk_pe_write_signed_begin follows a symbolic link at the path it is given,
 * on its own. `dest` has no links, so its temporary is `.NAME.qwick-XXXXXX`
 * beside `dest` unless a link was planted at `dest` since: then the library
 * picked another file, and nothing may be committed. A link planted after
 * this check is harmless: the commit's rename replaces the link itself. */
static int pending_is_beside(const qk_pe_pending *p, const char *dest, char **err)
{
    char *dcopy = xstrdup(dest), *bcopy = xstrdup(dest);
    char *want = xasprintf("%s/.%s.qwick-", dirname(dcopy), basename(bcopy));
    const char *tmp = qk_pe_pending_path(p);
    size_t n = strlen(want);
    int rc = strncmp(tmp, want, n) == 0 && strlen(tmp) == n + 6 ? 0 : -1;
    if (rc != 0)
        *err =
            xasprintf("%s became a symbolic link while it was being signed: nothing written", dest);
    free(want);
    free(bcopy);
    free(dcopy);
    return rc;
}

/* The signature of `md` (in `format`) from the server (sign_request.c),
 * timestamped into *sig. */
static int request_signature(worker *w, job *jb, const char *format, const uint8_t *md,
                             client_sign_res *res, qk_buf *sig, char **err)
{
    if (sign_request_obtain(w, jb, format, md, res, err) != 0)
        return -1;
    if (sign_interrupted(err) || timestamp_sig(w, res, sig, err) != 0 || sign_interrupted(err))
        return -1;
    return 0;
}

static int sign_pe(worker *w, job *jb, char **err)
{
    const sign_opts *o = w->r->o;
    int rc = -1;
    qk_err e;
    qk_pe *pe = NULL, *check = NULL;
    qk_pe_pending *pending = NULL;
    qk_verify_report *rep = NULL;
    client_sign_res res = {0};
    qk_buf sig = {0}, nested = {0};
    qk_slice *sigs = NULL;
    size_t nsigs = 0, ncerts, expect = 1;
    uint8_t md[QK_HASH_MAX_SIZE];
    char *dest = write_target(o, jb->path, err);

    if (dest == NULL)
        goto out;
    /* In place, what is read is what will be replaced: the resolved file. */
    if ((e = qk_pe_open(o->out != NULL ? jb->path : dest, &pe)) != QK_OK) {
        *err = sign_errmsg(NULL, e);
        goto out;
    }
    if ((e = qk_pe_signing_digest(pe, o->alg, md)) != QK_OK) {
        *err = sign_errmsg("digest", e);
        goto out;
    }
    if (request_signature(w, jb, "authenticode-pe", md, &res, &sig, err) != 0)
        goto out;

    ncerts = qk_pe_cert_count(pe);
    sigs = xcalloc(ncerts + 1, sizeof(*sigs));
    if (o->append && ncerts > 0) {
        /* Nest into the first entry, where Windows looks; keep any others. */
        const qk_pe_cert *first = qk_pe_cert_get(pe, 0);
        if ((e = qk_sig_nest(first->data, (qk_slice){sig.data, sig.len}, &nested)) != QK_OK) {
            *err = sign_errmsg("nesting into the existing signature", e);
            goto out;
        }
        sigs[nsigs++] = (qk_slice){nested.data, nested.len};
        for (size_t i = 1; i < ncerts; i++)
            sigs[nsigs++] = qk_pe_cert_get(pe, i)->data;
        expect = 2;
    } else {
        sigs[nsigs++] = (qk_slice){sig.data, sig.len};
    }

    if ((e = qk_pe_write_signed_begin(pe, sigs, nsigs, dest, &pending)) != QK_OK) {
        *err = sign_errmsg("writing", e);
        goto out;
    }
    sign_tmp_track(w->slot, qk_pe_pending_path(pending));
    if (pending_is_beside(pending, dest, err) != 0)
        goto out;
    /* Check the bytes on disk, not the ones we meant to write. */
    if ((e = qk_pe_open(qk_pe_pending_path(pending), &check)) != QK_OK) {
        *err = sign_errmsg("re-reading the written file", e);
        goto out;
    }
    if ((e = qk_verify_pe_ctx(check, w->r->vctx, &rep)) != QK_OK) {
        *err = sign_errmsg("verifying the written file", e);
        goto out;
    }
    if ((*err = check_report(o, rep, expect)) != NULL || sign_interrupted(err))
        goto out;
    qk_pe_free(check);
    check = NULL;
    sign_tmp_untrack(w->slot);
    e = qk_pe_pending_rename(pending);
    pending = NULL;
    if (e != QK_OK) {
        *err = sign_errmsg("replacing", e);
        goto out;
    }
    note_sync_dir(jb, dest);
    rc = 0;
out:
    if (pending != NULL) {
        sign_tmp_untrack(w->slot);
        qk_pe_pending_abort(pending);
    }
    qk_verify_report_free(rep);
    qk_pe_free(check);
    qk_pe_free(pe);
    free(sigs);
    qk_buf_free(&nested);
    qk_buf_free(&sig);
    client_sign_res_free(&res);
    free(dest);
    return rc;
}

/* --- detached CMS (any file) ------------------------------------------- */

static int hash_file(const char *path, qk_hash_alg alg, uint8_t *md, char **err)
{
    int rc = -1, fd = -1;
    unsigned int mdlen = 0;
    uint8_t *buf = NULL;
    EVP_MD_CTX *ctx = NULL;
    const EVP_MD *type = EVP_get_digestbynid(qk_hash_nid(alg));
    struct stat st;

    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &st) != 0) {
        *err = xstrdup(strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        *err = xstrdup("not a regular file");
        goto out;
    }
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    buf = xmalloc(SIGN_READ_CHUNK);
    if (type == NULL || (ctx = EVP_MD_CTX_new()) == NULL || !EVP_DigestInit_ex(ctx, type, NULL)) {
        *err = xstrdup("cannot set up the digest");
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf, SIGN_READ_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *err = xasprintf("read: %s", strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        if (!EVP_DigestUpdate(ctx, buf, (size_t)n)) {
            *err = xstrdup("digest failed");
            goto out;
        }
    }
    if (!EVP_DigestFinal_ex(ctx, md, &mdlen) || mdlen != qk_hash_size(alg)) {
        *err = xstrdup("digest failed");
        goto out;
    }
    rc = 0;
out:
    EVP_MD_CTX_free(ctx);
    free(buf);
    if (fd >= 0)
        close(fd);
    return rc;
}

static int sign_detached(worker *w, job *jb, char **err)
{
    const sign_opts *o = w->r->o;
    int rc = -1;
    qk_err e;
    client_sign_res res = {0};
    qk_buf sig = {0};
    qk_verify_report *rep = NULL;
    uint8_t md[QK_HASH_MAX_SIZE];
    char *named = xasprintf("%s.p7s", jb->path);
    char *dest = write_target(o, named, err);
    char *tmp = NULL, *why = NULL;

    free(named);
    if (dest == NULL)
        goto out;
    if (hash_file(jb->path, o->alg, md, &why) != 0) {
        *err = why;
        goto out;
    }
    if (request_signature(w, jb, "cms", md, &res, &sig, err) != 0)
        goto out;
    /* A signature is public: the usual file mode, not mkstemp's 0600. */
    if (afile_write_temp(dest, sig.data, sig.len, o->p7s_mode, &tmp, err) != 0)
        goto out;
    sign_tmp_track(w->slot, tmp);
    /* Re-reads the content: catches a file changed while it was being signed. */
    if ((e = qk_verify_detached_ctx((qk_slice){sig.data, sig.len}, jb->path, w->r->vctx, &rep)) !=
        QK_OK) {
        *err = sign_errmsg("verifying the signature", e);
        goto out;
    }
    if ((*err = check_report(o, rep, 1)) != NULL || sign_interrupted(err))
        goto out;
    sign_tmp_untrack(w->slot);
    if (afile_rename(tmp, dest, err) != 0)
        goto out;
    free(tmp);
    tmp = NULL;
    note_sync_dir(jb, dest);
    rc = 0;
out:
    if (tmp != NULL) {
        sign_tmp_untrack(w->slot);
        unlink(tmp);
        free(tmp);
    }
    qk_verify_report_free(rep);
    qk_buf_free(&sig);
    client_sign_res_free(&res);
    free(dest);
    return rc;
}

int sign_file_digest(const sign_opts *o, const char *path, uint8_t *md, char **err)
{
    qk_pe *pe = NULL;
    qk_err e;
    if (o->detached)
        return hash_file(path, o->alg, md, err);
    if ((e = qk_pe_open(path, &pe)) != QK_OK) {
        *err = sign_errmsg(NULL, e);
        return -1;
    }
    if ((e = qk_pe_signing_digest(pe, o->alg, md)) != QK_OK)
        *err = sign_errmsg("digest", e);
    qk_pe_free(pe);
    return e == QK_OK ? 0 : -1;
}

/* --async: the digest goes out, the request id comes back; nothing is
 * written (--resume does that later). */
static int submit_only(worker *w, job *jb, char **err)
{
    const sign_opts *o = w->r->o;
    uint8_t md[QK_HASH_MAX_SIZE];
    if (sign_file_digest(o, jb->path, md, err) != 0)
        return -1;
    return sign_request_submit(w, jb, o->detached ? "cms" : "authenticode-pe", md, err);
}

int sign_job_run(worker *w, job *jb, char **err)
{
    const sign_opts *o = w->r->o;
    if (o->async)
        return submit_only(w, jb, err);
    return o->detached ? sign_detached(w, jb, err) : sign_pe(w, jb, err);
}
