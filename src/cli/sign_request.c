/* qwick sign: one file's signature from qwickd (sign.h). The digest is
 * submitted; a 200 carries the signature, a 202 (queued: --async, a profile
 * that signs only through the queue, approvals) is waited for until
 * --wait-timeout, with the request id kept so that a file not signed in time
 * can be finished later with --resume, which first checks that the request
 * was made for this very file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "common/b64.h"
#include "common/utf8.h"
#include "requests.h"
#include "sign.h"

/* The path as one shell word that is not an option: as is when plainly
 * safe, else in single quotes; "./" before a leading '-'. */
static char *shell_word(const char *s)
{
    size_t n = strlen(s), k = 0;
    const char *dot = s[0] == '-' ? "./" : "";
    if (n > 0 && strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                           "/._-+,:=@%") == n)
        return xasprintf("%s%s", dot, s);
    char *q = xmalloc(4 * n + 5);
    q[k++] = '\'';
    memcpy(q + k, dot, strlen(dot));
    k += strlen(dot);
    for (; *s; s++) {
        if (*s == '\'') {
            memcpy(q + k, "'\\''", 4);
            k += 4;
        } else {
            q[k++] = *s;
        }
    }
    q[k++] = '\'';
    q[k] = '\0';
    return q;
}

/* "WHY; ...: finish it later with: qwick sign --resume ID FILE" (heap). */
static char *resume_hint(const char *why, const job *jb)
{
    char *file = shell_word(jb->path);
    char *m = xasprintf("%s; not signed, file untouched: finish it later with: "
                        "qwick sign --resume %s %s",
                        why, jb->request_id, file);
    free(file);
    return m;
}

/* POST the digest (async or not); jb->request_id from the answer. */
static int submit(worker *w, job *jb, const char *format, const uint8_t *md, int async,
                  client_answer *ans, char **err)
{
    const sign_opts *o = w->r->o;
    /* The name is metadata (audit, and programName without --description):
     * a name that is not UTF-8 is sent with '?' for its stray bytes rather
     * than failing the file. */
    char *name = utf8_lossy(sign_base_name(jb->path));
    client_sign_req req = {
        .format = format,
        .alg = o->alg,
        .digest = {md, qk_hash_size(o->alg)},
        .profile = o->cfg.profile,
        .filename = name,
        .description = o->description,
        .justification = o->justification,
        .url = o->url,
        .no_timestamp = o->no_timestamp,
        /* The server's own TSA can stamp the signature before returning it
         * (one round trip, not two); a server that cannot says so by not
         * marking the answer "timestamped", and the file is stamped here. */
        .server_timestamp = !o->no_timestamp && o->n_ts_urls == 0,
        .async = async,
    };
    int rc = client_sign_submit(w->api, &req, ans, err);
    free(name);
    if (rc != 0)
        return -1;
    const char *id = json_string_value(json_object_get(ans->json, "requestId"));
    /* Only a well-formed id goes into a URL, or is offered for --resume. */
    if ((ans->status == 202 || async) && !requests_id_valid(id)) {
        *err = xstrdup("server: accepted the request without a valid requestId");
        json_decref(ans->json);
        ans->json = NULL;
        return -1;
    }
    jb->request_id = id != NULL ? xstrdup(id) : NULL;
    return 0;
}

typedef struct wait_ctx {
    worker *w;
    const job *jb;
} wait_ctx;

static void on_status(void *ctx, const char *status)
{
    wait_ctx *c = ctx;
    sign_progress_waiting(c->w, c->jb, status);
}

/* Waits for jb's queued request and takes its signature. */
static int wait_signed(worker *w, job *jb, long first_delay_s, client_sign_res *res, char **err)
{
    wait_ctx ctx = {w, jb};
    requests_wait_opts wo = {
        .timeout_s = w->r->o->wait_timeout_s,
        .first_delay_ms = first_delay_s * 1000L,
        .on_status = on_status,
        .ctx = &ctx,
    };
    json_t *done = NULL;
    char *why = NULL;
    int rc = requests_wait(w->api, jb->request_id, &wo, &done, &why);
    sign_progress_waiting(w, jb, NULL);
    if (rc != 0) {
        *err = resume_hint(why, jb);
        free(why);
        return -1;
    }
    rc = client_take_signed(done, res, err);
    json_decref(done);
    return rc;
}

/* --resume: the request read before the run, once it is known to be for `md`. */
static int resume_obtain(worker *w, job *jb, const uint8_t *md, client_sign_res *res, char **err)
{
    const sign_opts *o = w->r->o;
    const sign_resume *r = &o->resume;
    char mine[2 * QK_HASH_MAX_SIZE + 1], theirs[2 * QK_HASH_MAX_SIZE + 1];

    jb->request_id = xstrdup(r->id);
    if (r->digest_len != qk_hash_size(o->alg) || memcmp(md, r->digest, r->digest_len) != 0) {
        hex_encode(md, qk_hash_size(o->alg), mine);
        hex_encode(r->digest, r->digest_len, theirs);
        *err = xasprintf("not the file of request %s: its %s digest is %s, the request's is %s "
                         "(another file, or changed since it was submitted); nothing written",
                         r->id, qk_hash_name(o->alg), mine, theirs);
        return -1;
    }
    if (requests_status_final(requests_status_of(r->req)))
        return client_take_signed(r->req, res, err);
    return wait_signed(w, jb, r->retry_after, res, err);
}

int sign_request_obtain(worker *w, job *jb, const char *format, const uint8_t *md,
                        client_sign_res *res, char **err)
{
    client_answer ans;
    int rc;
    if (w->r->o->resume.id != NULL)
        return resume_obtain(w, jb, md, res, err);
    if (submit(w, jb, format, md, 0, &ans, err) != 0)
        return -1;
    if (ans.status == 200)
        rc = client_take_signed(ans.json, res, err);
    else
        rc = wait_signed(w, jb, ans.retry_after, res, err);
    json_decref(ans.json);
    return rc;
}

int sign_request_submit(worker *w, job *jb, const char *format, const uint8_t *md, char **err)
{
    client_answer ans;
    if (submit(w, jb, format, md, 1, &ans, err) != 0)
        return -1;
    json_decref(ans.json);
    return 0;
}

/* --- --resume: the request, read before the run ------------------------------- */

/* The request's algorithm, format and digest into *o; an exit status. */
static int take_request(sign_opts *o, int detached_given)
{
    sign_resume *r = &o->resume;
    const char *alg = json_string_value(json_object_get(r->req, "algorithm"));
    const char *fmt = json_string_value(json_object_get(r->req, "format"));
    const char *dig = json_string_value(json_object_get(r->req, "digest"));
    qk_hash_alg a = alg != NULL ? qk_hash_from_name(alg) : QK_HASH_NONE;

    if (requests_status_of(r->req) == NULL || dig == NULL ||
        (a != QK_HASH_SHA256 && a != QK_HASH_SHA384 && a != QK_HASH_SHA512) || fmt == NULL ||
        b64_decode(dig, strlen(dig), r->digest, sizeof(r->digest), &r->digest_len) != 0 ||
        r->digest_len != qk_hash_size(a)) {
        cli_msg("request %s: the server's answer lacks a valid status, algorithm, format or "
                "digest",
                r->id);
        return QK_EXIT_FAIL;
    }
    if (strcmp(fmt, "authenticode-pe") != 0 && strcmp(fmt, "cms") != 0) {
        cli_msg("request %s is not for a PE file or a detached signature: qwick sign cannot "
                "finish it (see qwick requests show)",
                r->id);
        return QK_EXIT_FAIL;
    }
    o->alg = a;
    o->detached = strcmp(fmt, "cms") == 0;
    if (detached_given && !o->detached)
        return cli_usage_error("sign", "--detached: request %s signs a PE file (authenticode-pe)",
                               r->id);
    if (o->append && o->detached)
        return cli_usage_error("sign", "--append: request %s is a detached signature (cms)", r->id);
    return QK_EXIT_OK;
}

int sign_resume_load(client *c, sign_opts *o, int detached_given)
{
    client_answer ans;
    char *err = NULL;
    if (requests_get(c, o->resume.id, &ans, &err) != 0) {
        cli_msg("request %s: %s", o->resume.id, err);
        free(err);
        return QK_EXIT_FAIL;
    }
    o->resume.req = ans.json;
    o->resume.retry_after = ans.retry_after;
    return take_request(o, detached_given);
}

void sign_resume_clear(sign_resume *r)
{
    json_decref(r->req);
    r->req = NULL;
}
