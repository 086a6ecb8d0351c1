/* qwick sign: the run (sign.h). Workers take files in order, each with its
 * own connection to the server and its TSA; progress (files done, and each
 * file waiting for a queued request with its status) goes to a terminal's
 * stderr, the report to stdout: with --async, a FILE<TAB>REQUEST_ID line per
 * accepted file as soon as it is accepted. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "cli.h"
#include "common/utf8.h"
#include "sign.h"

/* --- workers and progress ---------------------------------------------- */

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
        if (jb->error == NULL && sign_stop_signal() != 0)
            jb->error = xstrdup("not signed: interrupted");
        if (jb->error == NULL) { /* glob errors arrive already failed */
            char *err = NULL;
            int rc = sign_job_run(w, jb, &err);
            jb->ok = rc == 0;
            jb->error = rc == 0 ? NULL : (err != NULL ? err : xstrdup("failed"));
            if (rc == 0)
                free(err);
        }
        sign_progress_done(r, jb);
    }
    return NULL;
}

void sign_drop_secret(char **s)
{
    if (*s != NULL) {
        OPENSSL_cleanse(*s, strlen(*s));
        free(*s);
        *s = NULL;
    }
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

/* --- the run ------------------------------------------------------------- */

/* One client per worker, each watching the stop flag. 0, or -1 (said why). */
static int new_workers(run *r, size_t n)
{
    char *err = NULL;
    r->workers = xcalloc(n, sizeof(*r->workers));
    r->nworkers = n;
    for (size_t i = 0; i < n; i++) {
        worker *w = &r->workers[i];
        w->r = r;
        w->slot = (int)i;
        if ((w->api = client_new(&r->o->cfg, &err)) == NULL) {
            cli_msg("%s", err);
            free(err);
            return -1;
        }
        client_set_cancel(w->api, sign_stop_flag());
    }
    return 0;
}

static void free_workers(run *r)
{
    for (size_t i = 0; r->workers != NULL && i < r->nworkers; i++) {
        client_free(r->workers[i].api);
        tsa_client_free(r->workers[i].tsa);
        free(r->workers[i].tsa_url);
    }
    free(r->workers);
}

/* Runs the workers to the end; 0, or -1 when none could start. */
static int run_workers(run *r)
{
    pthread_t *tids = xcalloc(r->nworkers, sizeof(*tids));
    size_t started = 0;
    for (; started < r->nworkers; started++)
        if (pthread_create(&tids[started], NULL, worker_main, &r->workers[started]) != 0)
            break;
    for (size_t i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    free(tids);
    if (started == 0)
        cli_msg("cannot start worker threads");
    return started > 0 ? 0 : -1;
}

static int by_dir(const void *a, const void *b)
{
    const job *x = *(job *const *)a, *y = *(job *const *)b;
    return strcmp(x->sync_dir, y->sync_dir);
}

/* Makes the renames durable: one fsync per directory that received a file
 * (a rename is durable once its directory is; fsyncing it per file cost a
 * journal commit each). A file whose directory cannot be fsynced is
 * reported failed: it was replaced, but might not survive a crash. */
static void sync_dirs(run *r)
{
    job **v = xcalloc(r->njobs ? r->njobs : 1, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < r->njobs; i++)
        if (r->jobs[i].ok && r->jobs[i].sync_dir != NULL)
            v[n++] = &r->jobs[i];
    qsort(v, n, sizeof(*v), by_dir);
    for (size_t i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && strcmp(v[j]->sync_dir, v[i]->sync_dir) == 0; j++)
            ;
        int fd = open(v[i]->sync_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), e = 0;
        if (fd < 0 || fsync(fd) != 0)
            e = errno;
        if (fd >= 0)
            close(fd);
        for (size_t k = i; e != 0 && k < j; k++) {
            v[k]->ok = 0;
            v[k]->error =
                xasprintf("replaced, but the rename may not survive a crash: fsync %s: %s",
                          v[k]->sync_dir, strerror(e));
            r->nok--;
            r->nfail++;
        }
    }
    free(v);
}

/* The report on stdout (--async printed its lines as it went); the exit status. */
static int report(const run *r)
{
    int status = r->nfail == 0 ? QK_EXIT_OK : QK_EXIT_FAIL;
    if (r->tty)
        fputs("\r\033[K", stderr);
    if (r->o->json)
        print_json(r);
    else if (!r->o->async)
        printf("signed %zu, failed %zu\n", r->nok, r->nfail);
    if (fflush(stdout) != 0)
        status = QK_EXIT_FAIL;
    return status;
}

int sign_run(const sign_opts *o, job *jobs, size_t n, int njobs, char **api_key)
{
    int status = QK_EXIT_FAIL;
    run r = {0};
    qk_err ve;

    r.o = o;
    r.jobs = jobs;
    r.njobs = n;
    r.tty = isatty(STDERR_FILENO);
    pthread_mutex_init(&r.mu, NULL);
    if ((ve = sign_verify_ctx_new(o, &r.vctx)) != QK_OK) {
        /* Before anything is signed: an unreadable --ca would fail every file. */
        char *m = sign_errmsg("loading --ca/--tsa-ca", ve);
        cli_msg("%s", m);
        free(m);
        goto out;
    }
    if (njobs == 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        long want = (ncpu < 1 ? 1 : ncpu) * SIGN_JOBS_PER_CPU;
        njobs = want > SIGN_DEFAULT_JOBS ? SIGN_DEFAULT_JOBS : (int)want;
    }
    if (new_workers(&r, (size_t)njobs < n ? (size_t)njobs : n) != 0) {
        status = QK_EXIT_USAGE; /* a bad server URL is a usage error */
        goto out;
    }
    /* The key now lives only in the clients' headers. */
    sign_drop_secret(api_key);

    sign_stop_install();
    if (run_workers(&r) == 0) {
        sync_dirs(&r);
        status = report(&r);
    }
out:
    free_workers(&r);
    pthread_mutex_destroy(&r.mu);
    qk_verify_ctx_free(r.vctx);
    return status;
}
