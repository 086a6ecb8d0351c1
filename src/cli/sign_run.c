/* qwick sign: the run (sign.h). Workers take files in order, each with its
 * own connection to the server and its TSA; progress goes to a terminal's
 * stderr, the report to stdout. */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "cli.h"
#include "common/utf8.h"
#include "sign.h"

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
        fprintf(stderr, "\r[%zu/%zu] %s", r->done, r->njobs, sign_base_name(jb->path));
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
        report_done(r, jb);
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

int sign_run(const sign_opts *o, job *jobs, size_t n, int njobs, char **api_key)
{
    int status = QK_EXIT_FAIL;
    run r = {0};
    worker *ws = NULL;
    pthread_t *tids = NULL;
    size_t nworkers = 0, started = 0;
    char *err = NULL;
    qk_err ve;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        cli_msg("cannot initialise libcurl");
        return QK_EXIT_FAIL;
    }
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
        njobs = ncpu < 1 ? 1 : ncpu > SIGN_DEFAULT_JOBS ? SIGN_DEFAULT_JOBS : (int)ncpu;
    }
    nworkers = (size_t)njobs < n ? (size_t)njobs : n;
    ws = xcalloc(nworkers, sizeof(*ws));
    tids = xcalloc(nworkers, sizeof(*tids));
    for (size_t i = 0; i < nworkers; i++) {
        ws[i].r = &r;
        ws[i].slot = (int)i;
        if ((ws[i].api = client_new(&o->cfg, &err)) == NULL) {
            cli_msg("%s", err);
            status = QK_EXIT_USAGE; /* a bad server URL is a usage error */
            goto out;
        }
        client_set_cancel(ws[i].api, sign_stop_flag());
    }
    /* The key now lives only in the clients' headers. */
    sign_drop_secret(api_key);

    sign_stop_install();

    for (; started < nworkers; started++)
        if (pthread_create(&tids[started], NULL, worker_main, &ws[started]) != 0)
            break;
    if (started == 0) {
        cli_msg("cannot start worker threads");
        goto out;
    }
    for (size_t i = 0; i < started; i++)
        pthread_join(tids[i], NULL);

    if (r.tty)
        fputs("\r\033[K", stderr);
    if (o->json)
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
    pthread_mutex_destroy(&r.mu);
    qk_verify_ctx_free(r.vctx);
    free(ws);
    free(tids);
    free(err);
    curl_global_cleanup();
    return status;
}
