/* The Azure sign engine: every signature in flight is a small state machine
 * driven by one libcurl multi loop on one thread (see azure.h).
 *
 *   WAIT_SLOT   the profile is at maxConcurrent: wait in FIFO order
 *   WAIT_TOKEN  the app's token is being fetched by the credential thread
 *   SUBMIT      POST …/sign is on the wire
 *   POLL        GET of the Operation-Location is on the wire
 *   SLEEP       waiting for Retry-After (then SUBMIT again or POLL)
 *
 * A 401 drops the token and fetches a new one, once per operation (an
 * expired token is renewed, not looped on); 429, 5xx and network errors are
 * retried honouring Retry-After; every operation has a deadline. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "signer/azure/azure_internal.h"
#include "signer/azure/azure_result.h"
#include "common/b64.h"
#include "core/log.h"
#include "core/util.h"

#define MAX_TRIES 8
#define MAX_HOST_CONNECTIONS 32L
#define MIN_POLL_MS 100
#define DEFAULT_POLL_MS 1000

typedef enum op_state { S_WAIT_SLOT, S_WAIT_TOKEN, S_SUBMIT, S_POLL, S_SLEEP } op_state;

typedef struct sign_op {
    struct sign_op *next;
    az_profile *prof;
    qk_hash_alg alg;
    uint8_t digest[QK_HASH_MAX_SIZE];
    size_t dlen;
    azure_done_fn done;
    void *arg;

    op_state state;
    int has_slot;
    int polling; /* submitted: retries and sleeps lead to a poll */
    int tries;   /* of the current step */
    int renewed; /* a 401 has renewed the token once */
    int64_t t0_ms, deadline_ms, wake_ms;
    uint64_t fail_gen, token_gen;
    char *token;
    char key_id[AZ_KEYID_MAX];
    char *op_url;
    char *body;
    CURL *easy;
    struct curl_slist *hdrs;
    az_resp resp;
} sign_op;

typedef struct az_engine {
    azure_backend *b;
    CURLM *multi;
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    sign_op *incoming, *incoming_tail; /* (mu) */
    int stop;                          /* (mu) */
    sign_op *waiting, *waiting_tail;   /* engine thread: not on the wire, in FIFO order */
    size_t active;                     /* engine thread: on the wire */
} az_engine;

/* ---- completion ------------------------------------------------------------- */

static void op_free(sign_op *op)
{
    if (op->easy != NULL)
        curl_easy_cleanup(op->easy);
    az_slist_free_wipe(op->hdrs);
    az_token_free(op->token);
    az_resp_reset(&op->resp);
    free(op->op_url);
    free(op->body);
    azure_profile_release(op->prof);
    free(op);
}

static void latency(azure_backend *b, int64_t ms)
{
    static const int64_t bounds[AZ_LAT_BUCKETS] = {250,  500,   1000,  2000,  3000,
                                                   5000, 10000, 30000, 60000, INT64_MAX};
    atomic_fetch_add(&b->stats.lat_count, 1);
    atomic_fetch_add(&b->stats.lat_sum_ms, (long)ms);
    for (int i = 0; i < AZ_LAT_BUCKETS; i++)
        if (ms <= bounds[i]) {
            atomic_fetch_add(&b->stats.lat_buckets[i], 1);
            break;
        }
}

static void finish(az_engine *eng, sign_op *op, azure_result *res)
{
    if (op->has_slot)
        op->prof->inflight--;
    atomic_fetch_sub(&eng->b->stats.inflight, 1);
    latency(eng->b, az_now_ms() - op->t0_ms);
    op->done(op->arg, res);
    op_free(op);
}

static void fail(az_engine *eng, sign_op *op, int status, az_err_class cls, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void fail(az_engine *eng, sign_op *op, int status, az_err_class cls, const char *fmt, ...)
{
    char text[AZ_ERR_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    az_count_error(eng->b, cls);
    log_kv(LOG_WARN, "azure: signature failed", "profile", op->prof->name, "detail", text, NULL);
    azure_result r = {.rc = QK_ERR_IO, .status = status, .detail = text};
    finish(eng, op, &r);
}

static void succeed(az_engine *eng, sign_op *op, az_op *res)
{
    azure_result r = {.rc = QK_OK, .status = 200};
    qk_err rc = az_chain_for_signature(
        (qk_slice){res->pkcs7_der.data, res->pkcs7_der.len}, op->alg, op->digest, op->dlen,
        (qk_slice){res->signature.data, res->signature.len}, &r.chain_der);
    if (rc != QK_OK) {
        fail(eng, op, 502, AZE_RESULT, "Azure's result does not check out: %s", qk_error_detail());
        return;
    }
    char note[AZ_KEYID_MAX + 32];
    snprintf(note, sizeof(note), "azure keyId %s", op->key_id);
    r.signature = res->signature;
    res->signature = (qk_buf){NULL, 0};
    r.note = note;
    finish(eng, op, &r);
}

/* ---- requests ---------------------------------------------------------------- */

static void push_waiting(az_engine *eng, sign_op *op)
{
    op->next = NULL;
    if (eng->waiting_tail != NULL)
        eng->waiting_tail->next = op;
    else
        eng->waiting = op;
    eng->waiting_tail = op;
}

static void start_request(az_engine *eng, sign_op *op)
{
    const char *url = op->polling ? op->op_url : op->prof->sign_url;
    if (op->easy == NULL && (op->easy = curl_easy_init()) == NULL) {
        fail(eng, op, 500, AZE_NETWORK, "%s", "out of memory");
        return;
    }
    curl_easy_reset(op->easy);
    az_slist_free_wipe(op->hdrs);
    op->hdrs = az_header_add(NULL, "Authorization: Bearer %s", op->token);
    op->hdrs = curl_slist_append(op->hdrs, "Accept: application/json");
    if (!op->polling)
        op->hdrs = curl_slist_append(op->hdrs, "Content-Type: application/json");
    az_http_prepare(op->easy, url, op->prof->app->trust, op->hdrs, &op->resp, 30000L);
    if (!op->polling)
        curl_easy_setopt(op->easy, CURLOPT_POSTFIELDS, op->body);
    curl_easy_setopt(op->easy, CURLOPT_PRIVATE, op);
    op->state = op->polling ? S_POLL : S_SUBMIT;
    if (curl_multi_add_handle(eng->multi, op->easy) != CURLM_OK) {
        fail(eng, op, 500, AZE_NETWORK, "%s", "cannot start the request");
        return;
    }
    eng->active++;
}

static void sleep_then(az_engine *eng, sign_op *op, int64_t ms)
{
    op->state = S_SLEEP;
    op->wake_ms = az_now_ms() + ms;
    push_waiting(eng, op);
}

/* 429/5xx/network: try again after Retry-After or a backoff. */
static void retry(az_engine *eng, sign_op *op, const char *what)
{
    char text[AZ_ERR_MAX];
    az_error_text(&op->resp, text, sizeof(text));
    az_count_error(eng->b, az_class_of(&op->resp));
    int64_t wait = op->resp.retry_after >= 0 ? op->resp.retry_after * 1000
                                             : (int64_t)(250 << (op->tries < 6 ? op->tries : 6));
    int late = az_now_ms() + wait > op->deadline_ms;
    if (++op->tries >= MAX_TRIES || wait > AZ_MAX_RETRY_AFTER_S * 1000 || late) {
        /* Everything retried here is Azure being unavailable (429, 5xx, the
         * network): a later attempt may pass, which the queue does. */
        int status = late ? 504 : 503;
        char msg[AZ_ERR_MAX + 64];
        snprintf(msg, sizeof(msg), "%s: %s (gave up after %d tries)", what, text, op->tries);
        azure_result r = {.rc = QK_ERR_IO, .status = status, .detail = msg};
        log_kv(LOG_WARN, "azure: signature failed", "profile", op->prof->name, "detail", msg, NULL);
        finish(eng, op, &r);
        return;
    }
    sleep_then(eng, op, wait < MIN_POLL_MS ? MIN_POLL_MS : wait);
}

/* 401: the token is refused; fetch a new one once. */
static void unauthorized(az_engine *eng, sign_op *op)
{
    az_count_error(eng->b, AZE_UNAUTHORIZED);
    az_app_token_refused(op->prof->app, op->token_gen);
    if (op->renewed) {
        char text[AZ_ERR_MAX];
        az_error_text(&op->resp, text, sizeof(text));
        fail(eng, op, 502, AZE_UNAUTHORIZED, "Azure refused a fresh token too: %s", text);
        return;
    }
    op->renewed = 1;
    az_token_free(op->token);
    op->token = NULL;
    op->fail_gen = az_app_fail_gen(op->prof->app);
    op->state = S_WAIT_TOKEN;
    push_waiting(eng, op);
}

/* Operation-Location must stay on the endpoint's origin: the bearer token
 * goes with the poll. Without it, the operation id names the URL. */
static int take_op_url(az_engine *eng, sign_op *op)
{
    const char *loc = op->resp.op_location;
    size_t ol = strlen(op->prof->origin);
    if (loc != NULL) {
        if (strncmp(loc, op->prof->origin, ol) != 0 || loc[ol] != '/') {
            fail(eng, op, 502, AZE_RESULT, "Operation-Location points off the endpoint: %.200s",
                 loc);
            return -1;
        }
        op->op_url = xstrdup(loc);
        return 0;
    }
    json_t *j = json_loadb((const char *)op->resp.body.data, op->resp.body.len, 0, NULL);
    const char *id = json_string_value(json_object_get(j, "id"));
    if (id == NULL || strlen(id) > 128 ||
        strspn(id, "abcdefghijklmnopqrstuvwxyz"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != strlen(id)) {
        json_decref(j);
        fail(eng, op, 502, AZE_RESULT, "%s", "Azure accepted the request without an operation");
        return -1;
    }
    op->op_url = xasprintf("%s%s?api-version=" AZ_API_VERSION, op->prof->poll_base, id);
    json_decref(j);
    return 0;
}

static int64_t poll_delay(const az_resp *r)
{
    if (r->retry_after < 0)
        return DEFAULT_POLL_MS;
    int64_t ms = r->retry_after * 1000;
    return ms < MIN_POLL_MS ? MIN_POLL_MS : ms;
}

static void on_done(az_engine *eng, sign_op *op)
{
    az_resp *r = &op->resp;
    curl_easy_getinfo(op->easy, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->curl_rc != CURLE_OK)
        r->status = 0;
    if (r->status == 401) {
        unauthorized(eng, op);
        return;
    }
    if (az_status_retryable(r)) {
        retry(eng, op, op->polling ? "polling the operation" : "submitting the digest");
        return;
    }
    if (!op->polling) {
        if (r->status != 202 && r->status != 200) {
            char text[AZ_ERR_MAX];
            az_error_text(r, text, sizeof(text));
            fail(eng, op, 502, az_class_of(r), "Azure refused the signing request: %s", text);
            return;
        }
        if (take_op_url(eng, op) != 0)
            return;
        op->polling = 1;
        op->tries = 0;
        sleep_then(eng, op, poll_delay(r));
        return;
    }
    if (r->status != 200) {
        char text[AZ_ERR_MAX];
        az_error_text(r, text, sizeof(text));
        fail(eng, op, 502, az_class_of(r), "polling the operation: %s", text);
        return;
    }
    az_op res;
    if (az_op_parse(r->body.data, r->body.len, &res) != QK_OK) {
        fail(eng, op, 502, AZE_RESULT, "Azure's answer: %s", qk_error_detail());
        return;
    }
    if (res.state == AZ_OP_PENDING) {
        op->tries = 0;
        sleep_then(eng, op, poll_delay(r));
    } else if (res.state == AZ_OP_FAILED) {
        fail(eng, op, 502, AZE_OPERATION, "Azure Trusted Signing: %s", res.error);
    } else {
        succeed(eng, op, &res);
    }
    az_op_clear(&res);
}

/* ---- the loop ----------------------------------------------------------------- */

/* Moves queued operations forward; returns the next wake-up (ms from now). */
static int64_t step_waiting(az_engine *eng)
{
    sign_op *list = eng->waiting;
    int64_t now = az_now_ms(), next = 1000;
    eng->waiting = eng->waiting_tail = NULL;
    while (list != NULL) {
        sign_op *op = list;
        list = op->next;
        op->next = NULL;
        if (now >= op->deadline_ms) {
            fail(eng, op, 504, AZE_TIMEOUT, "%s", "Azure did not complete the signature in time");
            continue;
        }
        if (op->state == S_WAIT_SLOT) {
            if (op->prof->inflight >= (int)op->prof->max_concurrent) {
                push_waiting(eng, op);
                continue;
            }
            op->prof->inflight++;
            op->has_slot = 1;
            op->state = S_WAIT_TOKEN;
        }
        if (op->state == S_WAIT_TOKEN) {
            char err[AZ_ERR_MAX];
            int status = 503;
            int r = az_app_token(op->prof->app, op->fail_gen, &op->token, &op->token_gen,
                                 op->key_id, err, sizeof(err), &status);
            if (r < 0) {
                fail(eng, op, status, AZE_CREDENTIALS, "%s", err);
            } else if (r == 0) {
                push_waiting(eng, op);
            } else {
                start_request(eng, op);
            }
            continue;
        }
        if (op->state == S_SLEEP) {
            if (now >= op->wake_ms) {
                start_request(eng, op);
            } else {
                if (op->wake_ms - now < next)
                    next = op->wake_ms - now;
                push_waiting(eng, op);
            }
        }
    }
    return next;
}

static void *engine_main(void *arg)
{
    az_engine *eng = arg;
    for (;;) {
        pthread_mutex_lock(&eng->mu);
        sign_op *in = eng->incoming;
        eng->incoming = eng->incoming_tail = NULL;
        int stop = eng->stop;
        pthread_mutex_unlock(&eng->mu);
        while (in != NULL) {
            sign_op *op = in;
            in = in->next;
            push_waiting(eng, op);
        }
        if (stop) {
            /* Anything still here is failed, not dropped. */
            while (eng->waiting != NULL) {
                sign_op *op = eng->waiting;
                eng->waiting = op->next;
                if (eng->waiting == NULL)
                    eng->waiting_tail = NULL;
                fail(eng, op, 503, AZE_TIMEOUT, "%s", "qwickd is shutting down");
            }
            if (eng->active == 0)
                break;
        }
        int64_t timeout = step_waiting(eng);
        int running = 0;
        curl_multi_perform(eng->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(eng->multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE)
                continue;
            sign_op *op = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&op);
            CURLcode cr = m->data.result;
            curl_multi_remove_handle(eng->multi, m->easy_handle);
            eng->active--;
            op->resp.curl_rc = cr;
            on_done(eng, op);
        }
        if (eng->waiting != NULL) {
            int64_t t2 = step_waiting(eng);
            if (t2 < timeout)
                timeout = t2;
        }
        /* Operations waiting for a token are woken by az_engine_wake. */
        curl_multi_poll(eng->multi, NULL, 0, (int)(timeout < 1 ? 1 : timeout), NULL);
    }
    return NULL;
}

az_engine *az_engine_new(azure_backend *b)
{
    az_engine *eng = xcalloc(1, sizeof(*eng));
    eng->b = b;
    pthread_mutex_init(&eng->mu, NULL);
    eng->multi = curl_multi_init();
    if (eng->multi == NULL) {
        free(eng);
        return NULL;
    }
    curl_multi_setopt(eng->multi, CURLMOPT_MAX_HOST_CONNECTIONS, MAX_HOST_CONNECTIONS);
    if (pthread_create(&eng->thread, NULL, engine_main, eng) != 0) {
        curl_multi_cleanup(eng->multi);
        free(eng);
        return NULL;
    }
    eng->started = 1;
    return eng;
}

void az_engine_wake(az_engine *eng)
{
    if (eng != NULL)
        curl_multi_wakeup(eng->multi);
}

void az_engine_free(az_engine *eng)
{
    if (eng == NULL)
        return;
    pthread_mutex_lock(&eng->mu);
    eng->stop = 1;
    pthread_mutex_unlock(&eng->mu);
    curl_multi_wakeup(eng->multi);
    if (eng->started)
        pthread_join(eng->thread, NULL);
    curl_multi_cleanup(eng->multi);
    pthread_mutex_destroy(&eng->mu);
    free(eng);
}

static qk_err engine_submit(az_engine *eng, sign_op *op)
{
    pthread_mutex_lock(&eng->mu);
    if (eng->stop) {
        pthread_mutex_unlock(&eng->mu);
        return qk_fail(QK_ERR_IO, "the Azure engine is stopping");
    }
    op->next = NULL;
    if (eng->incoming_tail != NULL)
        eng->incoming_tail->next = op;
    else
        eng->incoming = op;
    eng->incoming_tail = op;
    pthread_mutex_unlock(&eng->mu);
    curl_multi_wakeup(eng->multi);
    return QK_OK;
}

qk_err azure_sign_async(az_profile *p, qk_hash_alg alg, const uint8_t *digest, size_t len,
                        azure_done_fn done, void *arg)
{
    const char *name = alg == QK_HASH_SHA256   ? "RS256"
                       : alg == QK_HASH_SHA384 ? "RS384"
                       : alg == QK_HASH_SHA512 ? "RS512"
                                               : NULL;
    if (name == NULL || len != qk_hash_size(alg))
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "Azure signs SHA-256/384/512 digests only");
    sign_op *op = xcalloc(1, sizeof(*op));
    char b64[B64_ENCODED_SIZE(QK_HASH_MAX_SIZE)];
    b64_encode(digest, len, b64);
    op->body = xasprintf("{\"signatureAlgorithm\":\"%s\",\"digest\":\"%s\"}", name, b64);
    memcpy(op->digest, digest, len);
    op->dlen = len;
    op->alg = alg;
    op->done = done;
    op->arg = arg;
    op->prof = p;
    atomic_fetch_add(&p->refs, 1);
    op->state = S_WAIT_SLOT;
    op->t0_ms = az_now_ms();
    op->deadline_ms = op->t0_ms + (int64_t)p->b->op_timeout_s * 1000;
    op->fail_gen = az_app_fail_gen(p->app);
    az_resp_reset(&op->resp);
    atomic_fetch_add(&p->b->stats.inflight, 1);
    qk_err rc = engine_submit(p->b->engine, op);
    if (rc != QK_OK) {
        atomic_fetch_sub(&p->b->stats.inflight, 1);
        op_free(op);
    }
    return rc;
}
