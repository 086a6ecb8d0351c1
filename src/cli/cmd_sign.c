/* qwick sign: digest locally, sign through qwickd, timestamp, embed, verify,
 * then atomically replace. Only the digest leaves the machine. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <glob.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cli.h"
#include "client.h"
#include "common/file_atomic.h"
#include "config.h"
#include "qwick/authenticode.h"
#include "qwick/pe.h"
#include "qwick/tsp.h"
#include "qwick/verify.h"
#include "tsa_client.h"
#include "common/utf8.h"

/* More workers than this only queue on the server and the TSA. */
#define SIGN_MAX_JOBS 64
#define SIGN_DEFAULT_JOBS 4
#define SIGN_READ_CHUNK (1u << 20)

typedef struct sign_opts {
    cli_config cfg;
    const char *out;
    const char **ts_urls; /* --timestamp-url, in order */
    size_t n_ts_urls;
    int no_timestamp, append, detached, json;
    qk_hash_alg alg;
    const char *description, *url;
    const char *ca, *tsa_ca; /* trust for the post-write check; NULL: integrity only */
    /* Mode of a new .p7s: 0666 less the umask, read once before the workers
     * start (umask() is process-wide; reading it changes it for a moment). */
    mode_t p7s_mode;
} sign_opts;

typedef struct job {
    char *path;
    int ok;
    char *request_id;
    char *error; /* without the "qwick: FILE: " prefix */
} job;

typedef struct run {
    const sign_opts *o;
    job *jobs;
    size_t njobs;
    size_t next, done, nok, nfail;
    int tty;
    pthread_mutex_t mu;
    qk_verify_ctx *vctx; /* the post-write check's trust stores, loaded once */
} run;

typedef struct worker {
    run *r;
    int slot;
    client *api;
    tsa_client *tsa;
    char *tsa_url; /* the server-named URL `tsa` was made for */
} worker;

/* --- interrupts ---------------------------------------------------------- */

/* The first SIGINT/SIGTERM/SIGHUP asks the workers to stop: transfers abort,
 * the file being written is discarded (its original untouched) and the
 * process then dies of the same signal. A second one exits at once, removing
 * the temporaries it knows about. One slot per worker: the handler reads a
 * path only after the worker has finished writing it and set the flag.
 * SIGKILL leaves a `.NAME.qwick-XXXXXX` behind, never a damaged original. */
static client_cancel_flag stop_sig;
static char tmp_slot_path[SIGN_MAX_JOBS][4096];
static atomic_int tmp_slot_used[SIGN_MAX_JOBS];

static void tmp_track(int slot, const char *path)
{
    if (strlen(path) < sizeof(tmp_slot_path[slot])) {
        strcpy(tmp_slot_path[slot], path);
        atomic_store(&tmp_slot_used[slot], 1);
    }
}

static void tmp_untrack(int slot)
{
    atomic_store(&tmp_slot_used[slot], 0);
}

static void on_stop_signal(int sig)
{
    static const char msg[] = "\nqwick: interrupted: finishing up (again to quit now)\n";
    if (stop_sig == 0) {
        stop_sig = sig;
        (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
        return;
    }
    for (int i = 0; i < SIGN_MAX_JOBS; i++)
        if (atomic_load(&tmp_slot_used[i]))
            unlink(tmp_slot_path[i]);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Between steps: stop early once interrupted. */
static int interrupted(char **err)
{
    if (stop_sig == 0)
        return 0;
    *err = xstrdup("interrupted");
    return 1;
}

/* --- helpers ----------------------------------------------------------- */

static char *qk_msg(const char *what, qk_err e)
{
    const char *d = qk_error_detail();
    if (d != NULL && d[0] != '\0')
        return what ? xasprintf("%s: %s: %s", what, qk_strerror(e), d)
                    : xasprintf("%s: %s", qk_strerror(e), d);
    return what ? xasprintf("%s: %s", what, qk_strerror(e)) : xstrdup(qk_strerror(e));
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s != NULL ? s + 1 : path;
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

/* Server signature -> timestamped signature (unless --no-timestamp). */
static int timestamp_sig(worker *w, client_sign_res *res, qk_buf *out, char **err)
{
    const sign_opts *o = w->r->o;
    qk_err e;
    if (o->no_timestamp) {
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
                                               : qk_msg("timestamp", e);
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
static qk_err make_verify_ctx(const sign_opts *o, qk_verify_ctx **out)
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

/* One signing round trip for `jb`: the server signs `md` in `format`, the
 * request id is kept for the report, and the result is timestamped into *sig. */
static int request_signature(worker *w, job *jb, const char *format, const uint8_t *md,
                             client_sign_res *res, qk_buf *sig, char **err)
{
    const sign_opts *o = w->r->o;
    /* The name is metadata (audit, and programName without --description):
     * a name that is not UTF-8 is sent with '?' for its stray bytes rather
     * than failing the file. */
    char *name = utf8_lossy(base_name(jb->path));
    client_sign_req req = {
        .format = format,
        .alg = o->alg,
        .digest = {md, qk_hash_size(o->alg)},
        .profile = o->cfg.profile,
        .filename = name,
        .description = o->description,
        .url = o->url,
        .no_timestamp = o->no_timestamp,
    };
    int rc = client_sign_digest(w->api, &req, res, err);
    free(name);
    if (rc != 0)
        return -1;
    jb->request_id = res->request_id ? xstrdup(res->request_id) : NULL;
    if (interrupted(err) || timestamp_sig(w, res, sig, err) != 0 || interrupted(err))
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
        *err = qk_msg(NULL, e);
        goto out;
    }
    if ((e = qk_pe_signing_digest(pe, o->alg, md)) != QK_OK) {
        *err = qk_msg("digest", e);
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
            *err = qk_msg("nesting into the existing signature", e);
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
        *err = qk_msg("writing", e);
        goto out;
    }
    tmp_track(w->slot, qk_pe_pending_path(pending));
    if (pending_is_beside(pending, dest, err) != 0)
        goto out;
    /* Check the bytes on disk, not the ones we meant to write. */
    if ((e = qk_pe_open(qk_pe_pending_path(pending), &check)) != QK_OK) {
        *err = qk_msg("re-reading the written file", e);
        goto out;
    }
    if ((e = qk_verify_pe_ctx(check, w->r->vctx, &rep)) != QK_OK) {
        *err = qk_msg("verifying the written file", e);
        goto out;
    }
    if ((*err = check_report(o, rep, expect)) != NULL || interrupted(err))
        goto out;
    qk_pe_free(check);
    check = NULL;
    tmp_untrack(w->slot);
    e = qk_pe_pending_commit(pending);
    pending = NULL;
    if (e != QK_OK) {
        *err = qk_msg("replacing", e);
        goto out;
    }
    rc = 0;
out:
    if (pending != NULL) {
        tmp_untrack(w->slot);
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
    tmp_track(w->slot, tmp);
    /* Re-reads the content: catches a file changed while it was being signed. */
    if ((e = qk_verify_detached_ctx((qk_slice){sig.data, sig.len}, jb->path, w->r->vctx, &rep)) !=
        QK_OK) {
        *err = qk_msg("verifying the signature", e);
        goto out;
    }
    if ((*err = check_report(o, rep, 1)) != NULL || interrupted(err))
        goto out;
    tmp_untrack(w->slot);
    if (afile_commit(tmp, dest, err) != 0)
        goto out;
    free(tmp);
    tmp = NULL;
    rc = 0;
out:
    if (tmp != NULL) {
        tmp_untrack(w->slot);
        unlink(tmp);
        free(tmp);
    }
    qk_verify_report_free(rep);
    qk_buf_free(&sig);
    client_sign_res_free(&res);
    free(dest);
    return rc;
}

/* --- workers and progress ---------------------------------------------- */

static void report_done(run *r, job *jb)
{
    pthread_mutex_lock(&r->mu);
    r->done++;
    if (jb->ok)
        r->nok++;
    else
        r->nfail++;
    if (r->tty)
        fputs("\r\033[K", stderr);
    if (!jb->ok)
        fprintf(stderr, "%s: %s: %s\n", qk_progname, jb->path, jb->error);
    if (r->tty && r->done < r->njobs)
        fprintf(stderr, "\r[%zu/%zu] %s", r->done, r->njobs, base_name(jb->path));
    fflush(stderr);
    pthread_mutex_unlock(&r->mu);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    run *r = w->r;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        size_t i = r->next < r->njobs ? r->next++ : r->njobs;
        pthread_mutex_unlock(&r->mu);
        if (i >= r->njobs)
            break;
        job *jb = &r->jobs[i];
        if (jb->error == NULL && stop_sig != 0)
            jb->error = xstrdup("not signed: interrupted");
        if (jb->error == NULL) { /* glob errors arrive already failed */
            char *err = NULL;
            int rc = r->o->detached ? sign_detached(w, jb, &err) : sign_pe(w, jb, &err);
            jb->ok = rc == 0;
            jb->error = rc == 0 ? NULL : (err != NULL ? err : xstrdup("failed"));
            if (rc == 0)
                free(err);
        }
        report_done(r, jb);
    }
    return NULL;
}

/* --- inputs ------------------------------------------------------------ */

typedef struct inputs {
    job *v;
    size_t n, cap;
    struct stat *ids; /* dev/ino of each existing input, to drop duplicates */
} inputs;

static void add_input(inputs *in, const char *path, const char *error)
{
    struct stat st;
    int have = error == NULL && stat(path, &st) == 0;
    if (have)
        for (size_t i = 0; i < in->n; i++)
            if (in->v[i].error == NULL && in->ids[i].st_dev == st.st_dev &&
                in->ids[i].st_ino == st.st_ino)
                return; /* the same file twice would race with itself */
    if (in->n == in->cap) {
        in->cap = in->cap ? in->cap * 2 : 16;
        job *v = realloc(in->v, in->cap * sizeof(*v));
        struct stat *ids = realloc(in->ids, in->cap * sizeof(*ids));
        if (v == NULL || ids == NULL) {
            fputs("qwick: out of memory\n", stderr);
            abort();
        }
        in->v = v;
        in->ids = ids;
    }
    memset(&in->v[in->n], 0, sizeof(in->v[0]));
    memset(&in->ids[in->n], 0, sizeof(in->ids[0]));
    in->v[in->n].path = xstrdup(path);
    if (error != NULL)
        in->v[in->n].error = xstrdup(error);
    if (have)
        in->ids[in->n] = st;
    in->n++;
}

/* An argument naming an existing path is taken as is, even with glob
 * characters in its name; otherwise it is expanded here, for shells and CI
 * systems that pass patterns quoted. */
static void expand_arg(inputs *in, const char *arg)
{
    struct stat st;
    glob_t g;
    if (stat(arg, &st) == 0 || strpbrk(arg, "*?[") == NULL) {
        add_input(in, arg, NULL);
        return;
    }
    int grc = glob(arg, 0, NULL, &g);
    if (grc == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++)
            add_input(in, g.gl_pathv[i], NULL);
    } else {
        add_input(in, arg, grc == GLOB_NOMATCH ? "no files match" : "pattern expansion failed");
    }
    globfree(&g);
}

/* --- command ----------------------------------------------------------- */

static void drop_secret(char **s)
{
    if (*s != NULL) {
        OPENSSL_cleanse(*s, strlen(*s));
        free(*s);
        *s = NULL;
    }
}

static void help(void)
{
    printf("Usage: qwick sign [OPTIONS] FILE|GLOB...\n\n"
           "Signs PE files through a qwickd server: the Authenticode digest is computed\n"
           "here and only the digest is sent. Each file is timestamped, embedded, verified\n"
           "and then atomically replaced (an already signed file is re-signed: its old\n"
           "signatures are replaced). Quoted GLOBs are expanded.\n\n"
           "  --server URL          qwickd URL (QWICK_SERVER, config \"server\")\n"
           "  --api-key KEY         API key (QWICK_API_KEY, config \"api_key\"; prefer those:\n"
           "                        arguments are visible to other local users)\n"
           "  --cacert FILE         CA bundle for the server's TLS certificate (QWICK_CACERT,\n"
           "                        config \"cacert\"); also for TSA URLs on that server\n"
           "  --profile NAME        certificate profile (default \"default\")\n"
           "  --alg ALG             sha256 (default), sha384 or sha512\n"
           "  --out FILE            write the signed file (or the .p7s) here; one input only\n"
           "  --timestamp-url URL   RFC 3161 TSA; repeat for fallbacks (default: the URL the\n"
           "                        server names)\n"
           "  --no-timestamp        do not timestamp\n"
           "  --description TEXT    program name in the signature\n"
           "  --url URL             \"more info\" URL in the signature\n"
           "  --append              nest the new signature into the existing one instead of\n"
           "                        replacing it\n"
           "  --detached            sign any file: write FILE.p7s, a detached CMS signature\n"
           "                        (openssl cms -verify -binary -content FILE accepts it)\n"
           "  --ca FILE             also require the written signature to chain to these\n"
           "                        roots (without it the check covers digest, signature\n"
           "                        and timestamp integrity, not trust)\n"
           "  --tsa-ca FILE         roots for the timestamp check (default: --ca)\n"
           "  -j, --jobs N          files signed in parallel (default min(CPUs, %d))\n"
           "  --json                print {\"files\":[...],\"signed\":n,\"failed\":n} on stdout\n"
           "  -h, --help            show this help\n\n"
           "Settings come from flags, then the environment, then\n"
           "$XDG_CONFIG_HOME/qwick/config.json (keys server, api_key, cacert, profile).\n"
           "Exit status: 0 all signed, 1 some failed (the others are still signed), 2 usage.\n",
           SIGN_DEFAULT_JOBS);
}

static void print_json(const run *r)
{
    json_t *files = json_array(), *root = json_object();
    if (files == NULL || root == NULL) {
        fputs("qwick: out of memory\n", stderr);
        abort();
    }
    for (size_t i = 0; i < r->njobs; i++) {
        const job *jb = &r->jobs[i];
        json_t *o = json_object();
        /* JSON strings are UTF-8: a path (or an error quoting it) that is not
         * gets '?' for its stray bytes instead of vanishing from the report. */
        char *path = utf8_lossy(jb->path), *error = jb->error ? utf8_lossy(jb->error) : NULL;
        json_object_set_new(o, "file", json_string(path));
        json_object_set_new(o, "ok", json_boolean(jb->ok));
        json_object_set_new(o, "requestId",
                            jb->request_id ? json_string(jb->request_id) : json_null());
        json_object_set_new(o, "error", error ? json_string(error) : json_null());
        json_array_append_new(files, o);
        free(path);
        free(error);
    }
    json_object_set_new(root, "files", files);
    json_object_set_new(root, "signed", json_integer((json_int_t)r->nok));
    json_object_set_new(root, "failed", json_integer((json_int_t)r->nfail));
    json_dumpf(root, stdout, JSON_INDENT(2) | JSON_ENSURE_ASCII);
    fputc('\n', stdout);
    json_decref(root);
}

enum {
    OPT_SERVER = 256,
    OPT_API_KEY,
    OPT_CACERT,
    OPT_PROFILE,
    OPT_OUT,
    OPT_TS_URL,
    OPT_NO_TS,
    OPT_DESCRIPTION,
    OPT_URL,
    OPT_JSON,
    OPT_APPEND,
    OPT_ALG,
    OPT_DETACHED,
    OPT_CA,
    OPT_TSA_CA,
};

int cmd_sign(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"server", required_argument, NULL, OPT_SERVER},
        {"api-key", required_argument, NULL, OPT_API_KEY},
        {"cacert", required_argument, NULL, OPT_CACERT},
        {"profile", required_argument, NULL, OPT_PROFILE},
        {"out", required_argument, NULL, OPT_OUT},
        {"timestamp-url", required_argument, NULL, OPT_TS_URL},
        {"no-timestamp", no_argument, NULL, OPT_NO_TS},
        {"description", required_argument, NULL, OPT_DESCRIPTION},
        {"url", required_argument, NULL, OPT_URL},
        {"jobs", required_argument, NULL, 'j'},
        {"json", no_argument, NULL, OPT_JSON},
        {"append", no_argument, NULL, OPT_APPEND},
        {"alg", required_argument, NULL, OPT_ALG},
        {"detached", no_argument, NULL, OPT_DETACHED},
        {"ca", required_argument, NULL, OPT_CA},
        {"tsa-ca", required_argument, NULL, OPT_TSA_CA},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int status = QK_EXIT_USAGE, c, njobs = 0, curl_up = 0;
    sign_opts o = {.alg = QK_HASH_SHA256};
    mode_t um = umask(0);
    umask(um);
    o.p7s_mode = 0666 & ~um;
    cli_config flags = {0};
    inputs in = {0};
    run r = {0};
    worker *ws = NULL;
    pthread_t *tids = NULL;
    size_t nworkers = 0, started = 0;
    char *err = NULL;
    qk_err ve;

    o.ts_urls = xcalloc((size_t)argc, sizeof(*o.ts_urls));
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+j:h", lopts, NULL)) != -1) {
        switch (c) {
        case OPT_SERVER:
            flags.server = optarg;
            break;
        case OPT_API_KEY:
            drop_secret(&flags.api_key);
            flags.api_key = cli_take_secret_arg(optarg);
            break;
        case OPT_CACERT:
            flags.cacert = optarg;
            break;
        case OPT_PROFILE:
            flags.profile = optarg;
            break;
        case OPT_OUT:
            o.out = optarg;
            break;
        case OPT_TS_URL:
            o.ts_urls[o.n_ts_urls++] = optarg;
            break;
        case OPT_NO_TS:
            o.no_timestamp = 1;
            break;
        case OPT_DESCRIPTION:
            o.description = optarg;
            break;
        case OPT_URL:
            o.url = optarg;
            break;
        case 'j': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 1 || v > SIGN_MAX_JOBS) {
                cli_usage_error("sign", "-j wants a number from 1 to %d", SIGN_MAX_JOBS);
                goto out;
            }
            njobs = (int)v;
            break;
        }
        case OPT_JSON:
            o.json = 1;
            break;
        case OPT_APPEND:
            o.append = 1;
            break;
        case OPT_ALG:
            o.alg = qk_hash_from_name(optarg);
            if (o.alg != QK_HASH_SHA256 && o.alg != QK_HASH_SHA384 && o.alg != QK_HASH_SHA512) {
                cli_usage_error("sign", "--alg wants sha256, sha384 or sha512");
                goto out;
            }
            break;
        case OPT_DETACHED:
            o.detached = 1;
            break;
        case OPT_CA:
            o.ca = optarg;
            break;
        case OPT_TSA_CA:
            o.tsa_ca = optarg;
            break;
        case 'h':
            help();
            status = QK_EXIT_OK;
            goto out;
        default:
            cli_usage_error("sign", "unrecognized option '%s'", argv[optind - 1]);
            goto out;
        }
    }
    if (optind >= argc) {
        cli_usage_error("sign", "no files given");
        goto out;
    }
    if (o.no_timestamp && o.n_ts_urls > 0) {
        cli_usage_error("sign", "--timestamp-url and --no-timestamp contradict each other");
        goto out;
    }
    if (o.append && o.detached) {
        cli_usage_error("sign", "--append applies to PE files, not to --detached");
        goto out;
    }
    for (int i = optind; i < argc; i++)
        expand_arg(&in, argv[i]);
    if (o.out != NULL && in.n != 1) {
        cli_usage_error("sign", "--out takes exactly one input file (got %zu)", in.n);
        goto out;
    }
    if (cli_config_load(&flags, &o.cfg) != QK_EXIT_OK)
        goto out;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        cli_msg("cannot initialise libcurl");
        status = QK_EXIT_FAIL;
        goto out;
    }
    curl_up = 1;

    r.o = &o;
    r.jobs = in.v;
    r.njobs = in.n;
    r.tty = isatty(STDERR_FILENO);
    pthread_mutex_init(&r.mu, NULL);
    if ((ve = make_verify_ctx(&o, &r.vctx)) != QK_OK) {
        /* Before anything is signed: an unreadable --ca would fail every file. */
        char *m = qk_msg("loading --ca/--tsa-ca", ve);
        cli_msg("%s", m);
        free(m);
        status = QK_EXIT_FAIL;
        goto out;
    }
    if (njobs == 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        njobs = ncpu < 1 ? 1 : ncpu > SIGN_DEFAULT_JOBS ? SIGN_DEFAULT_JOBS : (int)ncpu;
    }
    nworkers = (size_t)njobs < in.n ? (size_t)njobs : in.n;
    ws = xcalloc(nworkers, sizeof(*ws));
    tids = xcalloc(nworkers, sizeof(*tids));
    for (size_t i = 0; i < nworkers; i++) {
        ws[i].r = &r;
        ws[i].slot = (int)i;
        if ((ws[i].api = client_new(&o.cfg, &err)) == NULL) {
            cli_msg("%s", err);
            goto out; /* a bad server URL is a usage error */
        }
        client_set_cancel(ws[i].api, &stop_sig);
    }
    /* The key now lives only in the clients' headers. */
    drop_secret(&flags.api_key);

    struct sigaction sa = {0};
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    for (; started < nworkers; started++)
        if (pthread_create(&tids[started], NULL, worker_main, &ws[started]) != 0)
            break;
    if (started == 0) {
        cli_msg("cannot start worker threads");
        status = QK_EXIT_FAIL;
        goto out;
    }
    for (size_t i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    started = 0;

    if (r.tty)
        fputs("\r\033[K", stderr);
    if (o.json)
        print_json(&r);
    else
        printf("signed %zu, failed %zu\n", r.nok, r.nfail);
    status = r.nfail == 0 ? QK_EXIT_OK : QK_EXIT_FAIL;
    if (fflush(stdout) != 0)
        status = QK_EXIT_FAIL;
out:
    for (size_t i = 0; i < nworkers; i++) {
        client_free(ws[i].api);
        tsa_client_free(ws[i].tsa);
        free(ws[i].tsa_url);
    }
    if (r.o != NULL) {
        pthread_mutex_destroy(&r.mu);
        qk_verify_ctx_free(r.vctx);
    }
    free(ws);
    free(tids);
    free(err);
    for (size_t i = 0; i < in.n; i++) {
        free(in.v[i].path);
        free(in.v[i].request_id);
        free(in.v[i].error);
    }
    free(in.v);
    free(in.ids);
    if (curl_up)
        curl_global_cleanup();
    drop_secret(&flags.api_key); /* the other flags point into argv */
    cli_config_free(&o.cfg);
    free(o.ts_urls);
    if (stop_sig != 0) {
        /* Die of the signal, so callers (shells, CI) see what happened. */
        int sig = stop_sig;
        signal(sig, SIG_DFL);
        raise(sig);
    }
    return status;
}
