/* Queued signing requests (docs/api.md "Asynchronous signing"): the queued
 * path of POST /api/v1/sign/digest with its Idempotency-Key, and
 * /api/v1/sign/requests: one, the list, cancel, retry, dead letters.
 *
 * A queued request: its row (QUEUED) and its audit entry (sign.submit),
 * and the key's claim when it has one, commit in one transaction before the
 * 202 is sent; the queue's workers (queue.c) sign it. A synchronous request
 * with an Idempotency-Key is queued the same way (so a second node seeing
 * the same key finds it) and waits for this node's workers up to
 * queue.sync_wait_seconds. */
#include "api/api.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "api/callbacks.h"
#include "api/queue.h"
#include "api/sign_core.h"
#include "api/sign_input.h"
#include "audit/transparency.h"
#include "common/b64.h"
#include "common/hex.h"
#include "core/log.h"
#include "core/util.h"
#include "core/workq.h"
#include "signer/profile.h"

#define IDEM_KEY_MAX 255
#define IDEM_TTL_SECONDS 86400
#define LIST_DEFAULT 50
#define LIST_MAX 200

static int finished(req_status s)
{
    return s == REQ_SIGNED || s == REQ_FAILED || s == REQ_REJECTED || s == REQ_CANCELLED;
}

/* 202 {"requestId","status"} with Location and Retry-After. */
static void answer_accepted(http_req *req, const char *id, req_status status)
{
    snprintf(req->location, sizeof(req->location), "/api/v1/sign/requests/%s", id);
    http_header_set(req, "Location", req->location);
    http_header_set(req, "Retry-After", "1");
    http_json(req, 202, json_pack("{s:s,s:s}", "requestId", id, "status", req_status_name(status)));
}

/* The answer a signed request's first (synchronous) caller got: 200 with the
 * signature, its chain, the timestamp URL and the log index. */
static void answer_signed(http_req *req, const store_sign_request *r)
{
    server *srv = req->srv;
    int64_t index = 0;
    int found = 0;
    char *chain = sign_chain_json((qk_slice){r->chain_der.data, r->chain_der.len});
    char *url = api_tsa_url(req);
    json_t *j = json_pack("{s:s,s:s}", "requestId", r->id, "status", "SIGNED");
    char *b64 = xmalloc(B64_ENCODED_SIZE(r->signature.len));
    b64_encode(r->signature.data, r->signature.len, b64);
    json_object_set_new(j, "signature", json_string(b64));
    json_object_set_new(j, "certificateChain",
                        chain != NULL ? json_loads(chain, 0, NULL) : json_array());
    if (url != NULL)
        json_object_set_new(j, "timestampUrl", json_string(url));
    if (STORE_CALL(srv->store, log_find_request, r->org_id, r->id, &index, &found) == QK_OK &&
        found)
        json_object_set_new(j, "logIndex", json_integer(index));
    http_json(req, 200, j);
    free(b64);
    free(url);
    free(chain);
}

/* What an Idempotency-Key's repeat (or a synchronous wait) answers, from the
 * request's row as it is now. */
static void answer_from_row(http_req *req, const store_sign_request *r, int sync)
{
    if (!finished(r->status) || !sync) {
        answer_accepted(req, r->id, r->status);
        return;
    }
    if (r->status == REQ_SIGNED)
        answer_signed(req, r);
    else if (r->status == REQ_CANCELLED)
        http_error(req, 409, "cancelled", "request %s was cancelled", r->id);
    else if (r->status == REQ_REJECTED)
        http_error(req, 403, "rejected", "request %s was rejected", r->id);
    else
        http_error(req, 502, "signing_failed", "the signer failed: %s",
                   r->error != NULL ? r->error : "unknown");
}

/* ---- the queued path of POST /api/v1/sign/digest ------------------------ */

typedef struct enq_job {
    http_req *req;
    store_apikey key;
    sign_input in;
    store_sign_request row;
    store_audit audit;
    char digest_hex[2 * QK_HASH_MAX_SIZE + 1];
    store_idem idem;
    int has_idem;
    char credential[40];
    char idem_key[IDEM_KEY_MAX + 1];
    store_enqueued res;
    int sync;           /* wait for the workers (a synchronous request with a key) */
    char *callback_url; /* the request's, else the profile's */
    char *audit_meta;   /* the audit entry's meta (sign_audit_meta) */
    qk_err rc;          /* the enqueue's outcome */
    char detail[256];
    atomic_int refs; /* the enqueue and, when sync, the wait */
    atomic_int answered;
} enq_job;

static void enq_release(enq_job *j)
{
    if (atomic_fetch_sub(&j->refs, 1) != 1)
        return;
    sign_input_clear(&j->in);
    store_apikey_clear(&j->key);
    free(j->callback_url);
    free(j->audit_meta);
    free(j);
}

/* Answers once (the enqueue and the wait may both try); resumes. */
static int enq_claim_answer(enq_job *j)
{
    int expected = 0;
    return atomic_compare_exchange_strong(&j->answered, &expected, 1);
}

/* Reads the request named by the outcome and answers from it. */
static void enq_answer_from_store(void *arg)
{
    enq_job *j = arg;
    http_req *req = j->req;
    store_sign_request r;
    int found = 0;
    const char *id = j->res.existing ? j->res.request_id : j->row.id;
    int sync = j->res.existing ? j->res.sync : j->sync;
    memset(&r, 0, sizeof(r));
    qk_err rc = STORE_CALL(req->srv->store, request_get, j->key.org_id, id, &r, &found);
    if (rc == QK_OK)
        answer_from_row(req, &r, sync);
    else if (found || rc == QK_ERR_IO)
        http_error(req, 503, "store_unavailable", "cannot read request %s now", id);
    else /* the key's request is gone: cannot happen while rows are kept */
        http_error(req, 500, "internal", "request %s of this key is missing", id);
    store_sign_request_clear(&r);
    http_resume(req);
    enq_release(j);
}

/* On a signing thread: callers are the store's writer and the queue's
 * threads, which should not wait on a read. */
static void enq_answer_later(enq_job *j)
{
    if (workq_push(j->req->srv->signq, enq_answer_from_store, j) != 0)
        enq_answer_from_store(j);
}

/* The wait of a synchronous request ended (signed here, or time is up). */
static void enq_waited(void *arg, int done)
{
    enq_job *j = arg;
    (void)done;
    if (!enq_claim_answer(j)) {
        enq_release(j);
        return;
    }
    enq_answer_later(j);
}

/* The enqueue's commit: on the store's writer thread. */
static void enq_committed(void *arg, qk_err rc, const char *detail)
{
    enq_job *j = arg;
    http_req *req = j->req;
    server *srv = req->srv;
    int waiting = j->sync && (rc != QK_OK || j->res.existing) && queue_unwait(srv->queue, j);
    if (waiting)
        enq_release(j); /* the wait's reference: it will not fire */
    if (rc == QK_OK && !j->res.existing) {
        queue_wake(srv->queue);
        if (j->sync && !waiting) {
            enq_release(j); /* the wait answers */
            return;
        }
    }
    if (!enq_claim_answer(j)) {
        enq_release(j);
        return;
    }
    if (rc != QK_OK) {
        log_kv(LOG_ERROR, "enqueue failed", "request_id", req->id, "detail",
               detail != NULL ? detail : "-", NULL);
        if (rc == QK_ERR_IO)
            http_error(req, 503, "store_unavailable", "the request could not be queued now");
        else
            http_error(req, 500, "audit_failed", "the request could not be recorded");
    } else if (j->res.existing && j->res.reused) {
        http_error(req, 422, "idempotency_key_reused",
                   "this Idempotency-Key was used with a different request body");
    } else if (j->res.existing) {
        enq_answer_later(j);
        return;
    } else {
        answer_accepted(req, j->row.id, REQ_QUEUED);
    }
    http_resume(req);
    enq_release(j);
}

/* 1-255 printable ASCII characters. */
static int idem_key_ok(const char *k)
{
    size_t n = strlen(k);
    if (n == 0 || n > IDEM_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (k[i] < 0x20 || k[i] > 0x7e)
            return 0;
    return 1;
}

static void enq_fill(enq_job *j)
{
    http_req *req = j->req;
    store_sign_request *r = &j->row;
    memcpy(r->id, req->id, sizeof(req->id));
    r->org_id = j->key.org_id;
    r->apikey_id = j->key.id;
    r->user_id = j->key.user_id;
    r->status = REQ_QUEUED;
    r->algorithm = (char *)j->in.algorithm;
    r->format = (char *)sign_format_name(j->in.format);
    r->profile = (char *)j->in.profile;
    r->filename = (char *)j->in.filename;
    r->description = (char *)j->in.description;
    r->url = (char *)j->in.url;
    r->client_ip = req->client_ip;
    r->digest = (qk_buf){j->in.digest, j->in.digest_len};
    r->queued_ms = now_unix_ms();
    r->options = (j->in.no_timestamp ? REQ_OPT_NO_TIMESTAMP : 0) | (j->sync ? REQ_OPT_SYNC : 0);
    r->callback_url = j->callback_url;
    api_audit_init(req, &j->key, "sign.submit", &j->audit);
    j->audit.request_id = r->id;
    hex_encode(j->in.digest, j->in.digest_len, j->digest_hex);
    j->audit.digest_hex = j->digest_hex;
    j->audit.format = r->format;
    j->audit.algorithm = r->algorithm;
    j->audit.profile = r->profile;
    j->audit.filename = r->filename;
    free(j->audit_meta);
    j->audit.meta = j->audit_meta = sign_audit_meta(&j->in);
}

void api_sign_enqueue(http_req *req, store_apikey *key, sign_input *in, const store_profile *prof,
                      const char *idem_key)
{
    server *srv = req->srv;
    if (srv->queue == NULL) {
        http_error(req, 503, "queue_unavailable", "this server does not run the queue");
        return;
    }
    if (idem_key != NULL && !idem_key_ok(idem_key)) {
        http_error(req, 400, "invalid_idempotency_key",
                   "Idempotency-Key must be 1 to %d printable ASCII characters", IDEM_KEY_MAX);
        return;
    }
    char *callback =
        in->callback_url != NULL ? xstrdup(in->callback_url) : profile_callback_url(prof);
    const char *why = callback != NULL ? callbacks_check_url(srv->callbacks, callback) : NULL;
    if (why != NULL) {
        http_error(req, 400, "callback_not_allowed", "%s", why);
        free(callback);
        return;
    }
    enq_job *j = xcalloc(1, sizeof(*j));
    j->req = req;
    j->callback_url = callback;
    j->key = *key;
    memset(key, 0, sizeof(*key));
    j->in = *in;
    memset(in, 0, sizeof(*in));
    j->sync = !j->in.async && !profile_async_only(prof) && queue_sync_wait_seconds(srv->queue) > 0;
    enq_fill(j);
    atomic_init(&j->refs, 1);
    if (idem_key != NULL) {
        j->has_idem = 1;
        snprintf(j->idem_key, sizeof(j->idem_key), "%s", idem_key);
        snprintf(j->credential, sizeof(j->credential), "apikey:%" PRId64, j->key.id);
        j->idem.credential = j->credential;
        j->idem.key = j->idem_key;
        crypto_hash_sha256(j->idem.body_hash, req->body, req->body_len);
        j->idem.now = now_unix();
        j->idem.expired_before = j->idem.now - IDEM_TTL_SECONDS;
    } else {
        j->sync = 0; /* only a key makes a synchronous request signing_queue */
        j->row.options &= ~REQ_OPT_SYNC;
    }
    http_suspend(req);
    if (j->sync) {
        atomic_fetch_add(&j->refs, 1);
        queue_wait(srv->queue, j->row.id,
                   now_unix_ms() + (int64_t)queue_sync_wait_seconds(srv->queue) * 1000, enq_waited,
                   j);
    }
    qk_err rc = STORE_CALL(srv->store, request_enqueue_async, &j->row, &j->audit,
                           j->has_idem ? &j->idem : NULL, &j->res, enq_committed, j);
    if (rc != QK_OK)
        enq_committed(j, rc, qk_error_detail());
}

/* ---- GET /api/v1/sign/requests/{id} -------------------------------------- */

/* A signed request's log entry: its index, and its inclusion proof against
 * the latest checkpoint (included too, so the answer checks on its own).
 * Left out when the log cannot be read: the request itself still answers. */
static void add_log_proof(http_req *req, int64_t org, const char *id, json_t *j)
{
    server *srv = req->srv;
    store_checkpoint cp;
    store_proof p;
    int64_t index = 0;
    int found = 0, empty = 0;
    if (srv->logkey == NULL ||
        STORE_CALL(srv->store, log_find_request, org, id, &index, &found) != QK_OK || !found)
        return;
    json_object_set_new(j, "logIndex", json_integer(index));
    if (tl_checkpoint(srv->store, srv->logkey, org, &cp, &empty) != QK_OK || empty)
        return;
    if (STORE_CALL(srv->store, log_prove, org, PROOF_INCLUSION, index, cp.size, &p) == QK_OK) {
        json_t *hashes = json_array();
        for (size_t i = 0; i < p.n; i++) {
            char b64[B64_ENCODED_SIZE(32)];
            b64_encode(p.hashes[i], 32, b64);
            json_array_append_new(hashes, json_string(b64));
        }
        json_object_set_new(j, "inclusionProof",
                            json_pack("{s:I,s:s,s:o}", "treeSize", (json_int_t)cp.size,
                                      "checkpoint", cp.note, "hashes", hashes));
    }
    store_checkpoint_clear(&cp);
}

static json_t *b64_json(const qk_buf *b)
{
    char *text = xmalloc(B64_ENCODED_SIZE(b->len));
    b64_encode(b->data, b->len, text);
    json_t *s = json_string(text);
    free(text);
    return s;
}

/* A request as the API shows it; `full`: with the signature and chain. */
static json_t *request_json(const store_sign_request *r, int full)
{
    json_t *meta = json_object();
    if (r->filename)
        json_object_set_new(meta, "filename", json_string(r->filename));
    if (r->description)
        json_object_set_new(meta, "description", json_string(r->description));
    if (r->url)
        json_object_set_new(meta, "url", json_string(r->url));
    json_t *j = json_pack(
        "{s:s,s:s,s:s,s:s,s:s,s:o,s:o,s:I,s:I,s:I,s:I}", "requestId", r->id, "status",
        req_status_name(r->status), "algorithm", r->algorithm ? r->algorithm : "", "format",
        r->format ? r->format : "", "profile", r->profile ? r->profile : "", "metadata", meta,
        "digest", b64_json(&r->digest), "createdAt", (json_int_t)r->created_at, "updatedAt",
        (json_int_t)(r->updated_at ? r->updated_at : r->created_at), "completedAt",
        (json_int_t)r->completed_at, "attempts", (json_int_t)r->attempts);
    if (j == NULL)
        return NULL;
    if (r->error != NULL)
        json_object_set_new(j, "error", json_string(r->error));
    if (full && r->signature.len > 0)
        json_object_set_new(j, "signature", b64_json(&r->signature));
    if (full && r->chain_der.len > 0) {
        char *chain = sign_chain_json((qk_slice){r->chain_der.data, r->chain_der.len});
        if (chain != NULL)
            json_object_set_new(j, "certificateChain", json_loads(chain, 0, NULL));
        free(chain);
    }
    return j;
}

void api_sign_request_get(http_req *req)
{
    store_apikey key;
    store_sign_request r;
    int found = 0;
    memset(&r, 0, sizeof(r));
    if (api_authenticate(req, &key) != 0)
        return;
    if (!store_request_id_ok(req->params[0])) {
        http_error(req, 404, "not_found", "no such request");
        goto out;
    }
    /* The org comes from the key: another org's request id is simply not
     * found, with no hint that it exists. */
    qk_err rc = STORE_CALL(req->srv->store, request_get, key.org_id, req->params[0], &r, &found);
    if (rc == QK_ERR_INVALID_ARG && !found) {
        http_error(req, 404, "not_found", "no such request");
        goto out;
    }
    if (rc != QK_OK) {
        http_error(req, 503, "store_unavailable", "cannot read the request now");
        goto out;
    }
    json_t *j = request_json(&r, 1);
    if (j != NULL && r.status == REQ_SIGNED) {
        char *url = api_tsa_url(req);
        if (url != NULL)
            json_object_set_new(j, "timestampUrl", json_string(url));
        free(url);
        add_log_proof(req, key.org_id, r.id, j);
    }
    if (!finished(r.status))
        http_header_set(req, "Retry-After", "1");
    http_json(req, 200, j);
out:
    store_sign_request_clear(&r);
    store_apikey_clear(&key);
}

/* ---- lists ---------------------------------------------------------------- */

static const char *query(http_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

/* The list's query: status (forced when >= 0), limit, cursor. 0, or -1
 * after answering 400. */
static int list_query(http_req *req, int *status, int *limit, const char **cursor)
{
    const char *s = query(req, "status"), *l = query(req, "limit");
    *cursor = query(req, "cursor");
    *limit = LIST_DEFAULT;
    if (*status < 0 && s != NULL) {
        req_status st;
        if (req_status_parse(s, &st) != 0) {
            http_error(req, 400, "invalid_value", "unknown status '%.32s'", s);
            return -1;
        }
        *status = (int)st;
    }
    if (l != NULL) {
        char *end = NULL;
        long n = strtol(l, &end, 10);
        if (end == l || *end != '\0' || n < 1 || n > LIST_MAX) {
            http_error(req, 400, "invalid_value", "'limit' must be 1..%d", LIST_MAX);
            return -1;
        }
        *limit = (int)n;
    }
    if (*cursor != NULL && !store_request_id_ok(*cursor)) {
        http_error(req, 400, "invalid_value", "'cursor' is not a cursor this server gave");
        return -1;
    }
    return 0;
}

static void list_requests(http_req *req, int status)
{
    store_apikey key;
    store_sign_request *rows = NULL;
    size_t n = 0;
    int limit;
    const char *cursor;
    if (api_authenticate(req, &key) != 0)
        return;
    if (list_query(req, &status, &limit, &cursor) != 0)
        goto out;
    /* One more than asked: whether a next page exists. */
    qk_err rc =
        STORE_CALL(req->srv->store, request_list, key.org_id, status, cursor, limit + 1, &rows, &n);
    if (rc != QK_OK) {
        http_error(req, 503, "store_unavailable", "cannot list requests now");
        goto out;
    }
    json_t *arr = json_array();
    size_t shown = n > (size_t)limit ? (size_t)limit : n;
    for (size_t i = 0; i < shown; i++)
        json_array_append_new(arr, request_json(&rows[i], 0));
    json_t *next = n > (size_t)limit ? json_string(rows[shown - 1].id) : json_null();
    http_json(req, 200, json_pack("{s:o,s:o}", "requests", arr, "nextCursor", next));
out:
    store_sign_request_list_free(rows, n);
    store_apikey_clear(&key);
}

void api_sign_requests_list(http_req *req)
{
    list_requests(req, -1);
}

void api_sign_dead_letters(http_req *req)
{
    list_requests(req, REQ_FAILED);
}

/* ---- cancel, retry -------------------------------------------------------- */

/* A cancelled request's callback, from its row as it is now. */
static void send_callback(http_req *req, int64_t org, const char *id)
{
    store_sign_request r;
    int found = 0;
    memset(&r, 0, sizeof(r));
    if (req->srv->callbacks != NULL &&
        STORE_CALL(req->srv->store, request_get, org, id, &r, &found) == QK_OK)
        callbacks_send(req->srv->callbacks, &r);
    store_sign_request_clear(&r);
}

static void change_request(http_req *req, int cancel)
{
    server *srv = req->srv;
    store_apikey key;
    store_audit a;
    req_status before = REQ_QUEUED;
    int found = 0;
    const char *id = req->params[0];
    if (api_authenticate(req, &key) != 0)
        return;
    if (api_need_role(req, &key, cancel ? ROLE_SIGNER : ROLE_ADMIN) != 0)
        goto out;
    if (!store_request_id_ok(id)) {
        http_error(req, 404, "not_found", "no such request");
        goto out;
    }
    api_audit_init(req, &key, cancel ? "sign.cancel" : "sign.retry", &a);
    a.request_id = id;
    qk_err rc = cancel ? STORE_CALL(srv->store, request_cancel, key.org_id, id, now_unix(), &a,
                                    &before, &found)
                       : STORE_CALL(srv->store, request_retry, key.org_id, id, now_unix_ms(), &a,
                                    &before, &found);
    if (rc == QK_ERR_INVALID_ARG && !found) {
        http_error(req, 404, "not_found", "no such request");
        goto out;
    }
    if (rc != QK_OK) {
        http_error(req, 503, "store_unavailable", "cannot change the request now");
        goto out;
    }
    if (cancel && before != REQ_QUEUED && before != REQ_PENDING_APPROVAL) {
        http_error(req, 409, "not_cancellable",
                   "request %s is %s: only a request that has not "
                   "started signing can be cancelled",
                   id, req_status_name(before));
        goto out;
    }
    if (!cancel && before != REQ_FAILED) {
        http_error(req, 409, "not_retryable",
                   "request %s is %s: only a FAILED request is put "
                   "back",
                   id, req_status_name(before));
        goto out;
    }
    if (!cancel)
        queue_wake(srv->queue);
    else
        send_callback(req, key.org_id, id);
    http_json(req, 200,
              json_pack("{s:s,s:s}", "requestId", id, "status", cancel ? "CANCELLED" : "QUEUED"));
out:
    store_apikey_clear(&key);
}

void api_sign_request_cancel(http_req *req)
{
    change_request(req, 1);
}

void api_sign_request_retry(http_req *req)
{
    change_request(req, 0);
}
