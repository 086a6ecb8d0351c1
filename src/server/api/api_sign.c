/* POST /api/v1/sign/digest and GET /api/v1/sign/requests/{id}.
 *
 * Flow of a signing request: authenticate the key, parse the body strictly,
 * check the role, find the profile's signer (cached per org and profile, so
 * the sealed key is opened once, not per request), sign on this pool thread,
 * then hand the request row + audit row to a commit thread and park the
 * connection. The response with the signature is released only after the
 * group commit that holds both rows is durable; if it fails the client gets
 * 500 and no signature. */
#include "api/api.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>
#include <sodium.h>

#include "api/api_policy.h"
#include "api/sign_core.h"
#include "auth/apikey.h"
#include "common/b64.h"
#include "core/log.h"
#include "signer/profile.h"
#include "qwick/authenticode.h"
#include "api/sign_input.h"
#include "signer/signer.h"
#include "audit/transparency.h"
#include "core/util.h"
#include "core/workq.h"

static void audit_from_input(http_req *req, const store_apikey *key, const sign_input *in,
                             char *digest_hex, store_audit *a)
{
    api_audit_init(req, key, "sign.digest", a);
    a->request_id = req->id;
    hex_encode(in->digest, in->digest_len, digest_hex);
    a->digest_hex = digest_hex;
    a->format = sign_format_name(in->format);
    a->algorithm = in->algorithm;
    a->profile = in->profile;
    a->filename = in->filename;
}

/* Writes a denial or failure audit row; when that write fails (every
 * decision is on record or the request fails) answers 503 if the database was
 * unavailable (worth retrying), 500 otherwise, and returns -1. */
static int audit_decision(http_req *req, store_audit *a, audit_outcome outcome, const char *detail)
{
    a->outcome = outcome;
    a->detail = detail;
    qk_err rc = STORE_CALL(req->srv->store, audit_append, a);
    if (rc == QK_OK)
        return 0;
    log_kv(LOG_ERROR, "audit append failed", "request_id", req->id, "detail", qk_error_detail(),
           NULL);
    if (rc == QK_ERR_IO)
        http_error(req, 503, "store_unavailable", "the decision could not be recorded now");
    else
        http_error(req, 500, "audit_failed", "the decision could not be recorded");
    return -1;
}

/* The log index is known only once the entry commits: the body keeps room
 * for it (20 digits; the unused ones become spaces, which JSON allows). */
#define LOG_INDEX_SLOT "                    "
#define LOG_INDEX_SLOT_LEN (sizeof(LOG_INDEX_SLOT) - 1)

static void fill_log_index(char *body, size_t len, int64_t index)
{
    char digits[24];
    int n = snprintf(digits, sizeof(digits), "%" PRId64, index);
    char *slot = body + len - 1 - LOG_INDEX_SLOT_LEN;
    memcpy(slot, digits, (size_t)n);
}

/* The 200 body, written directly: everything in it but the timestamp URL is
 * base64 or our own request id, so there is nothing to escape, and building
 * a jansson tree of it (copying and scanning ~5 KB) cost ~1% of the server's
 * CPU per signature. The short URL is encoded by jansson. */
static char *build_response(http_req *req, const sign_outcome *o, qk_buf sig, size_t *len)
{
    char *b64 = xmalloc(B64_ENCODED_SIZE(sig.len));
    char *url = api_tsa_url(req);
    json_t *url_str = url != NULL ? json_string(url) : NULL;
    char *url_json = url_str != NULL ? json_dumps(url_str, JSON_ENCODE_ANY) : NULL;
    json_decref(url_str);
    b64_encode(sig.data, sig.len, b64);
    char *text =
        xasprintf("{\"requestId\":\"%s\",\"status\":\"SIGNED\",\"signature\":\"%s\","
                  "\"certificateChain\":%s%s%s%s%s,\"logIndex\":" LOG_INDEX_SLOT "}",
                  req->id, b64, o->chain_json, url_json ? ",\"timestampUrl\":" : "",
                  url_json ? url_json : "", o->ts_required ? ",\"timestampRequired\":true" : "",
                  o->timestamped ? ",\"timestamped\":true" : "");
    *len = strlen(text);
    free(url_json);
    free(url);
    free(b64);
    return text;
}

/* One signing request on its way through the threads: the pool thread that
 * parsed it, a signing thread, a commit thread. Owns everything it points to
 * except `req`, whose connection stays suspended until sign_job_done. */
typedef struct sign_job {
    http_req *req;
    store_apikey key;
    sign_input in;
    store_profile prof;
    store_audit audit; /* strings point into `in`, `req` and digest_hex */
    char digest_hex[2 * QK_HASH_MAX_SIZE + 1];
    store_sign_request row; /* strings point into `in` and `req` */
    char *response;         /* the 200 body, released only once the rows are durable */
    size_t response_len;
    char note[96];    /* the audit row's detail: the credential used */
    char *audit_meta; /* the audit row's meta (sign_audit_meta) */
    char signer_fp[65], sig_sha256[65], sigval_sha256[65]; /* the log entry's hashes */
    int64_t log_index; /* set by the store when the entry commits */
} sign_job;

/* Frees the job, then lets the pool thread answer: `req` is not touched
 * after http_resume (the pool thread may free it at once). */
static void sign_job_done(sign_job *j)
{
    http_req *req = j->req;
    free(j->response);
    qk_buf_free(&j->row.signature);
    store_profile_clear(&j->prof);
    sign_input_clear(&j->in);
    store_apikey_clear(&j->key);
    free(j->audit_meta);
    free(j);
    http_resume(req);
}

/* The outcome of the group commit holding the job's rows: the 200 with the
 * signature only if they are durable. Runs on the store's writer thread
 * (request_record_async) or on a commit thread. */
static void commit_done(void *arg, qk_err rc, const char *detail)
{
    sign_job *j = arg;
    http_req *req = j->req;
    if (rc == QK_OK) {
        fill_log_index(j->response, j->response_len, j->log_index);
        http_bytes(req, 200, "application/json", j->response, j->response_len);
        j->response = NULL;
        metrics_signature(req->srv->metrics, j->in.profile, j->in.algorithm,
                          sign_format_name(j->in.format));
    } else {
        log_kv(LOG_ERROR, "request record failed", "request_id", req->id, "detail",
               detail != NULL ? detail : "-", NULL);
        /* The database failing (lost, restarting, a commit whose outcome is
         * unknown) is worth a retry: 503. Anything else is ours: 500. */
        if (rc == QK_ERR_IO)
            http_error(req, 503, "store_unavailable",
                       "the signature could not be recorded now, so it is not returned");
        else
            http_error(req, 500, "audit_failed",
                       "the signature could not be recorded, so it is not returned");
    }
    sign_job_done(j);
}

/* For a store without request_record_async: a commit thread waits. */
static void commit_run(void *arg)
{
    sign_job *j = arg;
    qk_err rc = STORE_CALL(j->req->srv->store, request_record, &j->row, &j->audit);
    commit_done(j, rc, rc == QK_OK ? NULL : qk_error_detail());
}

/* Queues the request and audit rows of a signature; the 200 with `sig`
 * goes out once they are durable. Takes `sig`. The caller has set
 * j->signer_fp and j->sigval_sha256. */
static void record_signed(sign_job *j, qk_buf sig, const sign_outcome *o)
{
    http_req *req = j->req;
    server *srv = req->srv;
    qk_err rc;
    j->response = build_response(req, o, sig, &j->response_len);
    int64_t now = now_unix();
    store_sign_request *row = &j->row;
    memcpy(row->id, req->id, sizeof(req->id));
    row->org_id = j->key.org_id;
    row->apikey_id = j->key.id;
    row->user_id = j->key.user_id;
    row->status = REQ_SIGNED;
    row->algorithm = (char *)j->in.algorithm;
    row->format = (char *)sign_format_name(j->in.format);
    row->profile = (char *)j->in.profile;
    row->filename = (char *)j->in.filename;
    row->description = (char *)j->in.description;
    row->url = (char *)j->in.url;
    row->client_ip = req->client_ip;
    row->digest = (qk_buf){j->in.digest, j->in.digest_len};
    row->created_at = now;
    row->completed_at = now;
    row->signature = sig;
    if (j->note[0] != '\0')
        j->audit.detail = j->note;
    sign_sha256_hex(sig.data, sig.len, j->sig_sha256);
    j->audit.signer_fp = j->signer_fp;
    j->audit.sig_sha256 = j->sig_sha256;
    j->audit.sigval_sha256 = j->sigval_sha256;
    j->audit.log_index = &j->log_index;
    if (srv->store->ops->request_record_async != NULL) {
        rc = srv->store->ops->request_record_async(srv->store, &j->row, &j->audit, commit_done, j);
        if (rc != QK_OK)
            commit_done(j, rc, qk_error_detail());
        return;
    }
    if (srv->commits == NULL || workq_push(srv->commits, commit_run, j) != 0)
        commit_run(j); /* no commit thread (shutting down): wait on this one */
}

/* A signing failure: on record (or 500 when the record fails), then the
 * client's answer. */
static void sign_failed(sign_job *j, int status, const char *code, const char *detail)
{
    http_req *req = j->req;
    log_kv(LOG_ERROR, "signing failed", "request_id", req->id, "profile", j->in.profile, "detail",
           detail, NULL);
    if (audit_decision(req, &j->audit, AUDIT_FAILED, detail) == 0)
        http_error(req, status, code, "the signer failed: %s", detail);
    sign_job_done(j);
}

/* The engine's outcome (sign_core.h): on record with the 200, or the
 * failure on record with its error. */
static void sync_signed(void *arg, sign_outcome *o)
{
    sign_job *j = arg;
    if (o->rc != QK_OK) {
        sign_failed(j, o->status, "signing_failed", o->detail);
        return;
    }
    snprintf(j->note, sizeof(j->note), "%s", o->note);
    memcpy(j->signer_fp, o->signer_fp, sizeof(j->signer_fp));
    memcpy(j->sigval_sha256, o->sigval_sha256, sizeof(j->sigval_sha256));
    record_signed(j, o->sig, o);
    o->sig = (qk_buf){NULL, 0};
}

void api_sign_digest(http_req *req)
{
    server *srv = req->srv;
    sign_job *j = xcalloc(1, sizeof(*j));
    api_error perr;
    int found = 0;
    qk_err rc;

    j->req = req;
    /* A body that parses names its profile, which is then read in the
     * statement that reads the key (one round trip less on PostgreSQL). A
     * body that does not is answered as before: 401 for a bad key first,
     * then 415 or 400. */
    int parsed = http_content_type_is(req, "application/json") &&
                 sign_input_parse(req->body, req->body_len, &j->in, &perr) == 0;
    int prof_read = 0;
    if (api_authenticate_profile(req, &j->key, parsed ? j->in.profile : NULL, &j->prof,
                                 &prof_read) != 0)
        goto out;
    if (!parsed) {
        if (api_require_json(req) != 0)
            goto out;
        if (sign_input_parse(req->body, req->body_len, &j->in, &perr) != 0) {
            api_reply_error(req, &perr);
            goto out;
        }
    }
    audit_from_input(req, &j->key, &j->in, j->digest_hex, &j->audit);
    j->audit.meta = j->audit_meta = sign_audit_meta(&j->in);

    /* Authorisation after parsing, so a denial's audit row says what was
     * attempted (digest, profile, file). */
    if (j->key.role < ROLE_SIGNER) {
        if (audit_decision(req, &j->audit, AUDIT_DENIED, "role may not sign") == 0)
            http_error(req, 403, "forbidden", "the key's role (%s) may not sign",
                       store_role_name(j->key.role));
        goto out;
    }
    if (!apikey_may_use_profile(&j->key, j->in.profile)) {
        if (audit_decision(req, &j->audit, AUDIT_DENIED, "profile not allowed for the key") == 0)
            http_error(req, 403, "profile_not_allowed",
                       "this key may sign only with the profiles %s, not '%.64s'", j->key.profiles,
                       j->in.profile);
        goto out;
    }
    if (parsed) {
        found = prof_read; /* read with the key */
        rc = prof_read ? QK_OK : QK_ERR_INVALID_ARG;
    } else {
        rc = STORE_CALL(srv->store, profile_get, j->key.org_id, j->in.profile, &j->prof, &found);
    }
    if (rc == QK_ERR_INVALID_ARG && !found) {
        /* 404: the profile is a resource the body names; an unknown one is
         * "not found" in this org, like a request id of another org. */
        if (audit_decision(req, &j->audit, AUDIT_DENIED, "unknown profile") == 0)
            http_error(req, 404, "unknown_profile", "no profile '%.64s' in this org",
                       j->in.profile);
        goto out;
    }
    if (rc != QK_OK) {
        http_error(req, 503, "store_unavailable", "cannot read the profile now");
        goto out;
    }
    if (j->prof.disabled_at != 0) {
        if (audit_decision(req, &j->audit, AUDIT_DENIED, "profile disabled") == 0)
            http_error(req, 409, "profile_disabled", "profile '%.64s' is disabled", j->in.profile);
        goto out;
    }
    if (!profile_format_allowed(&j->prof, sign_format_name(j->in.format))) {
        if (audit_decision(req, &j->audit, AUDIT_DENIED, "format not allowed") == 0)
            http_error(req, 403, "format_not_allowed",
                       "profile '%.64s' does not sign the '%s' format (its config's \"formats\")",
                       j->in.profile, sign_format_name(j->in.format));
        goto out;
    }
    if (j->in.no_timestamp && profile_requires_timestamp(&j->prof)) {
        if (audit_decision(req, &j->audit, AUDIT_DENIED, "timestamp required") == 0)
            http_error(req, 400, "timestamp_required",
                       "profile '%.64s' signs with short-lived certificates (Azure Trusted "
                       "Signing: 72 hours), so every signature must be timestamped",
                       j->in.profile);
        goto out;
    }

    /* The profile's signing policy: a denial is on record with the rule
     * that made it. */
    policy_decision pd;
    if (api_policy_check(req, &j->prof, &j->in, &pd) != 0) {
        char why[96];
        snprintf(why, sizeof(why), "policy: %s", pd.rule);
        if (audit_decision(req, &j->audit, AUDIT_DENIED, why) == 0)
            http_error(req, pd.status, pd.code, "%s", pd.message);
        goto out;
    }

    /* Queued (202): asked for, the profile's rule, or an Idempotency-Key
     * (which must hold across nodes, so the request is a row first). */
    const char *idem = http_header(req, "Idempotency-Key");
    if (idem != NULL && j->in.idempotency_key != NULL && strcmp(idem, j->in.idempotency_key) != 0) {
        http_error(req, 400, "invalid_idempotency_key",
                   "the Idempotency-Key header and the body's idempotencyKey differ");
        goto out;
    }
    if (idem == NULL)
        idem = j->in.idempotency_key;
    if (j->in.async || idem != NULL || j->in.callback_url != NULL || profile_async_only(&j->prof)) {
        api_sign_enqueue(req, &j->key, &j->in, &j->prof, idem);
        goto out;
    }

    /* The RSA work goes to the signing threads, shared by all connections:
     * were it done here, a pool thread whose connections all wait on commits
     * would leave its core idle while another thread's queue grows. Suspend
     * first, so no thread can resume a connection not yet suspended. */
    http_suspend(req);
    atomic_fetch_add(&srv->signing, 1);
    sign_core_start(srv, &j->prof, &j->in, sync_signed, j);
    return;
out:
    store_profile_clear(&j->prof);
    sign_input_clear(&j->in);
    store_apikey_clear(&j->key);
    free(j->audit_meta);
    free(j);
}
