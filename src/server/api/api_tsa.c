/* POST /tsa (api_tsa.h): the RFC 3161 responder (tsa/tsa.h) over HTTP.
 *
 * A request is admitted on the HTTP thread (the client address's token
 * bucket, the API key when required, the media type), then the connection is
 * suspended and the RSA signature is made on a signing thread, so a flood of
 * timestamp requests queues behind signing work instead of stalling the
 * threads that authenticate and answer every other request. */
#include "api/api_tsa.h"

#include <stdio.h>
#include <time.h>

#include "api/api.h"
#include "api/server.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/ratelimit.h"
#include "core/workq.h"
#include "tsa/tsa.h"

/* A signing thread's job: answer, then resume (`req` is not touched after
 * http_resume: the pool thread may free it at once). */
static void tsa_run(void *arg)
{
    http_req *req = arg;
    qk_buf reply = {0};
    long status = -1;
    if (tsa_respond(req->srv->tsa, req->body, req->body_len, &reply, &status) == QK_OK) {
        metrics_timestamp(req->srv->metrics, (int)status);
        http_bytes(req, 200, "application/timestamp-reply", reply.data, reply.len);
    } else {
        log_kv(LOG_ERROR, "tsa failure", "request_id", req->id, "detail", qk_error_detail(), NULL);
        http_error(req, 500, "internal", "the time-stamping authority failed");
    }
    http_resume(req);
}

/* 0 when the client address has a token left; otherwise answers 429 with
 * Retry-After and returns -1. */
static int tsa_admit(http_req *req)
{
    ratelimit_key k;
    unsigned wait_s = 1;
    struct timespec now;
    if (req->srv->tsa_limit == NULL || ratelimit_key_of(http_client_addr(req), &k) != 0)
        return 0;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t ms = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
    if (ratelimit_take(req->srv->tsa_limit, &k, ms, &wait_s))
        return 0;
    snprintf(req->retry_after, sizeof(req->retry_after), "%u", wait_s);
    http_error(req, 429, "rate_limited", "too many timestamp requests from this address");
    http_header_set(req, "Retry-After", req->retry_after);
    return -1;
}

void api_tsa(http_req *req)
{
    server *srv = req->srv;

    if (tsa_admit(req) != 0)
        return;
    if (srv->tsa_require_key) {
        store_apikey key;
        if (api_authenticate(req, &key) != 0)
            return;
        store_apikey_clear(&key); /* any role will do */
    }
    if (srv->tsa == NULL) {
        http_error(req, 503, "tsa_unavailable", "this server has no TSA key");
        return;
    }
    if (!http_content_type_is(req, "application/timestamp-query")) {
        http_error(req, 415, "unsupported_media_type",
                   "Content-Type must be application/timestamp-query");
        return;
    }
    /* Suspend first, so no thread can resume a connection not yet suspended. */
    http_suspend(req);
    if (workq_push(srv->signq, tsa_run, req) != 0)
        tsa_run(req); /* no signing thread (shutting down): sign here */
}
