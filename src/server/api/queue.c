/* The queue's dispatcher and the life of one queued request (queue.h). */
#include "api/queue.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "api/callbacks.h"
#include "api/sign_core.h"
#include "common/hex.h"
#include "core/log.h"
#include "core/util.h"
#include "core/workq.h"

/* Claimed per store round trip at most. */
#define CLAIM_BATCH 32

/* Histogram buckets, seconds. */
static const double buckets[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))

typedef struct histogram {
    uint64_t counts[NBUCKETS + 1];
    double sum;
    uint64_t n;
} histogram;

typedef struct waiter {
    char id[40];
    int64_t deadline_ms;
    queue_wait_fn fn;
    void *arg;
    struct waiter *next;
} waiter;

struct signing_queue {
    server *srv;
    queue_config cfg;
    char node[96];
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stop, woken;
    int joined; /* queue_stop has joined the dispatcher (or is joining it) */
    unsigned inflight;
    waiter *waiters;
    /* metrics */
    pthread_mutex_t mlock;
    histogram in_queue, to_sign;
    uint64_t signed_n, failed_n, retries, lost;
};

/* One claimed request on its way: read, signed, recorded. */
typedef struct qitem {
    signing_queue *q;
    store_claim claim;
    int64_t claimed_ms;
    store_sign_request row;
    store_profile prof;
    sign_input in;
    store_audit audit;
    char actor[32];
    char digest_hex[2 * QK_HASH_MAX_SIZE + 1];
    char detail[512];
    char sig_sha256[65], signer_fp[65], sigval_sha256[65];
    int64_t log_index;
    qk_buf sig, chain;
    store_finish fin;
} qitem;

static void observe(signing_queue *q, histogram *h, double seconds)
{
    size_t i = 0;
    while (i < NBUCKETS && seconds > buckets[i])
        i++;
    pthread_mutex_lock(&q->mlock);
    h->counts[i]++;
    h->sum += seconds;
    h->n++;
    pthread_mutex_unlock(&q->mlock);
}

/* ---- waiters -------------------------------------------------------------- */

void queue_wait(signing_queue *q, const char *id, int64_t deadline_ms, queue_wait_fn fn, void *arg)
{
    waiter *w = xcalloc(1, sizeof(*w));
    snprintf(w->id, sizeof(w->id), "%s", id);
    w->deadline_ms = deadline_ms;
    w->fn = fn;
    w->arg = arg;
    pthread_mutex_lock(&q->lock);
    if (q->stop) { /* no dispatcher to fire it: "not done", at once */
        pthread_mutex_unlock(&q->lock);
        free(w);
        fn(arg, 0);
        return;
    }
    w->next = q->waiters;
    q->waiters = w;
    pthread_cond_signal(&q->cond); /* the dispatcher's sleep may need shortening */
    pthread_mutex_unlock(&q->lock);
}

int queue_unwait(signing_queue *q, void *arg)
{
    int found = 0;
    pthread_mutex_lock(&q->lock);
    for (waiter **pp = &q->waiters; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->arg == arg) {
            waiter *w = *pp;
            *pp = w->next;
            free(w);
            found = 1;
            break;
        }
    pthread_mutex_unlock(&q->lock);
    return found;
}

unsigned queue_sync_wait_seconds(const signing_queue *q)
{
    return q->cfg.sync_wait_seconds;
}

/* Fires the waiters of `id` (id NULL: those whose deadline passed, or all
 * when stopping). */
static void fire_waiters(signing_queue *q, const char *id, int64_t now_ms, int all)
{
    waiter *due = NULL;
    pthread_mutex_lock(&q->lock);
    for (waiter **pp = &q->waiters; *pp != NULL;) {
        waiter *w = *pp;
        int hit = all || (id != NULL ? strcmp(w->id, id) == 0 : w->deadline_ms <= now_ms);
        if (!hit) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->next = due;
        due = w;
    }
    pthread_mutex_unlock(&q->lock);
    while (due != NULL) {
        waiter *w = due;
        due = w->next;
        w->fn(w->arg, id != NULL);
        free(w);
    }
}

/* ---- one request ---------------------------------------------------------- */

static void item_free(qitem *it)
{
    signing_queue *q = it->q;
    qk_buf_free(&it->sig);
    qk_buf_free(&it->chain);
    store_sign_request_clear(&it->row);
    store_profile_clear(&it->prof);
    free(it);
    pthread_mutex_lock(&q->lock);
    q->inflight--;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/* The final status to the request's callbackUrl, if it has one. */
static void send_callback(qitem *it)
{
    store_sign_request *r = &it->row;
    if (r->callback_url == NULL || it->q->srv->callbacks == NULL)
        return;
    r->status = it->fin.status;
    r->completed_at = it->fin.now;
    free(r->error);
    r->error = it->fin.error != NULL ? xstrdup(it->fin.error) : NULL;
    callbacks_send(it->q->srv->callbacks, r);
}

static void finish_done(void *arg, qk_err rc, const char *detail)
{
    qitem *it = arg;
    signing_queue *q = it->q;
    if (rc != QK_OK) {
        /* The fence refused it (another worker holds the request now) or the
         * store failed: the lease runs out and the request is claimed again,
         * so nothing is lost and nothing is recorded twice. */
        log_kv(LOG_WARN, "queued request not recorded", "request_id", it->claim.id, "detail",
               detail != NULL ? detail : "-", NULL);
        pthread_mutex_lock(&q->mlock);
        q->lost++;
        pthread_mutex_unlock(&q->mlock);
    } else if (it->fin.status != REQ_QUEUED) {
        observe(q, &q->to_sign, (double)(now_unix_ms() - it->claimed_ms) / 1000.0);
        pthread_mutex_lock(&q->mlock);
        if (it->fin.status == REQ_SIGNED)
            q->signed_n++;
        else
            q->failed_n++;
        pthread_mutex_unlock(&q->mlock);
        if (it->fin.status == REQ_SIGNED)
            metrics_signature(q->srv->metrics, it->row.profile, it->row.algorithm, it->row.format);
        send_callback(it);
        fire_waiters(q, it->claim.id, 0, 0);
    } else {
        pthread_mutex_lock(&q->mlock);
        q->retries++;
        pthread_mutex_unlock(&q->mlock);
    }
    item_free(it);
}

/* The next attempt's time: backoff_ms doubling per attempt, capped, with
 * "equal jitter" (half fixed, half random) so retries of a burst spread. */
static int64_t backoff_until(const signing_queue *q, int64_t attempts)
{
    uint64_t d = q->cfg.backoff_ms;
    for (int64_t i = 1; i < attempts && d < q->cfg.backoff_max_ms; i++)
        d *= 2;
    if (d > q->cfg.backoff_max_ms)
        d = q->cfg.backoff_max_ms;
    uint64_t half = d / 2;
    return now_unix_ms() +
           (int64_t)(half + (half > 0 ? randombytes_uniform((uint32_t)half + 1) : 0));
}

/* Records the outcome in it->fin (with an audit entry when final). */
static void item_record(qitem *it, int with_audit)
{
    signing_queue *q = it->q;
    it->fin.now = now_unix();
    if (with_audit) {
        it->audit.ts = now_unix_ms();
        it->audit.detail = it->fin.status == REQ_FAILED ? it->fin.error : it->audit.detail;
        it->audit.outcome = it->fin.status == REQ_SIGNED ? AUDIT_ALLOWED : AUDIT_FAILED;
    }
    qk_err rc =
        STORE_CALL(q->srv->store, request_finish_async, it->claim.org_id, it->claim.id,
                   it->claim.attempts, &it->fin, with_audit ? &it->audit : NULL, finish_done, it);
    if (rc != QK_OK)
        finish_done(it, rc, qk_error_detail());
}

/* A failure: again later when it may pass and attempts remain, else final. */
static void item_failed(qitem *it, int transient, const char *why)
{
    signing_queue *q = it->q;
    snprintf(it->detail, sizeof(it->detail), "%s", why != NULL ? why : "signing failed");
    it->fin.error = it->detail;
    if (transient && it->claim.attempts < (int64_t)q->cfg.max_attempts) {
        it->fin.status = REQ_QUEUED;
        it->fin.run_after = backoff_until(q, it->claim.attempts);
        item_record(it, 0);
        return;
    }
    if (transient) /* attempts exhausted: say so with the last reason */
        snprintf(it->detail, sizeof(it->detail), "gave up after %" PRId64 " attempts: %s",
                 it->claim.attempts, why != NULL ? why : "signing failed");
    it->fin.status = REQ_FAILED;
    item_record(it, 1);
}

static void item_signed(void *arg, sign_outcome *o)
{
    qitem *it = arg;
    if (o->rc != QK_OK) {
        item_failed(it, o->transient, o->detail);
        return;
    }
    it->sig = o->sig;
    o->sig = (qk_buf){NULL, 0};
    it->chain.data = xmalloc(o->chain_der.len ? o->chain_der.len : 1);
    memcpy(it->chain.data, o->chain_der.data, o->chain_der.len);
    it->chain.len = o->chain_der.len;
    memcpy(it->signer_fp, o->signer_fp, sizeof(it->signer_fp));
    memcpy(it->sigval_sha256, o->sigval_sha256, sizeof(it->sigval_sha256));
    sign_sha256_hex(it->sig.data, it->sig.len, it->sig_sha256);
    snprintf(it->detail, sizeof(it->detail), "%s", o->note != NULL ? o->note : "");
    it->audit.detail = it->detail[0] != '\0' ? it->detail : NULL;
    it->audit.signer_fp = it->signer_fp;
    it->audit.sig_sha256 = it->sig_sha256;
    it->audit.sigval_sha256 = it->sigval_sha256;
    it->fin.status = REQ_SIGNED;
    it->fin.signature = (qk_slice){it->sig.data, it->sig.len};
    it->fin.chain_der = (qk_slice){it->chain.data, it->chain.len};
    item_record(it, 1);
}

/* The sign_input a queued row describes (strings point into the row). */
static int input_from_row(const store_sign_request *r, sign_input *in)
{
    memset(in, 0, sizeof(*in));
    in->algorithm = r->algorithm;
    in->alg = r->algorithm != NULL ? qk_hash_from_name(r->algorithm) : QK_HASH_NONE;
    if (in->alg == QK_HASH_NONE || r->format == NULL || r->digest.len != qk_hash_size(in->alg) ||
        r->digest.len > sizeof(in->digest))
        return -1;
    if (sign_format_parse(r->format, &in->format) != 0)
        return -1;
    in->profile = r->profile;
    in->filename = r->filename;
    in->description = r->description;
    in->url = r->url;
    memcpy(in->digest, r->digest.data, r->digest.len);
    in->digest_len = r->digest.len;
    in->no_timestamp = (r->options & REQ_OPT_NO_TIMESTAMP) != 0;
    return 0;
}

static void audit_from_row(qitem *it)
{
    store_sign_request *r = &it->row;
    store_audit *a = &it->audit;
    memset(a, 0, sizeof(*a));
    a->org_id = r->org_id;
    if (r->apikey_id != 0)
        snprintf(it->actor, sizeof(it->actor), "apikey:%" PRId64, r->apikey_id);
    else
        snprintf(it->actor, sizeof(it->actor), "user:%" PRId64, r->user_id);
    a->actor = it->actor;
    a->client_ip = r->client_ip;
    a->action = "sign.digest";
    a->request_id = r->id;
    a->format = r->format;
    a->algorithm = r->algorithm;
    a->profile = r->profile;
    a->filename = r->filename;
    hex_encode(r->digest.data, r->digest.len < QK_HASH_MAX_SIZE ? r->digest.len : 0,
               it->digest_hex);
    a->digest_hex = it->digest_hex;
    a->log_index = &it->log_index;
}

/* On a signing thread: the row and its profile, then the engine. */
static void item_start(void *arg)
{
    qitem *it = arg;
    signing_queue *q = it->q;
    server *srv = q->srv;
    int found = 0;
    qk_err rc =
        STORE_CALL(srv->store, request_get, it->claim.org_id, it->claim.id, &it->row, &found);
    if (rc != QK_OK) {
        /* Unreadable now: the lease runs out and it is claimed again. */
        log_kv(LOG_WARN, "queued request unreadable", "request_id", it->claim.id, "detail",
               qk_error_detail(), NULL);
        item_free(it);
        return;
    }
    observe(q, &q->in_queue, (double)(it->claimed_ms - it->row.queued_ms) / 1000.0);
    audit_from_row(it);
    if (it->claim.attempts > (int64_t)q->cfg.max_attempts) {
        /* Its workers died (leases ran out) as often as it may be tried. */
        item_failed(it, 0, "gave up: the workers holding it stopped before finishing");
        return;
    }
    if (input_from_row(&it->row, &it->in) != 0) {
        item_failed(it, 0, "the queued request is malformed");
        return;
    }
    rc = STORE_CALL(srv->store, profile_get, it->row.org_id, it->row.profile, &it->prof, &found);
    if (rc != QK_OK) {
        item_failed(it, found || rc == QK_ERR_IO,
                    found || rc == QK_ERR_IO ? "cannot read the profile now"
                                             : "the profile no longer exists");
        return;
    }
    if (it->prof.disabled_at != 0) {
        item_failed(it, 0, "the profile is disabled");
        return;
    }
    atomic_fetch_add(&srv->signing, 1);
    sign_core_start(srv, &it->prof, &it->in, item_signed, it);
}

/* ---- the dispatcher ------------------------------------------------------- */

static int64_t next_deadline(signing_queue *q)
{
    int64_t d = INT64_MAX;
    for (waiter *w = q->waiters; w != NULL; w = w->next)
        if (w->deadline_ms < d)
            d = w->deadline_ms;
    return d;
}

static void sleep_until(signing_queue *q, int64_t wake_ms)
{
    int64_t now = now_unix_ms();
    if (wake_ms > now)
        cond_wait_ms(&q->cond, &q->lock, wake_ms - now);
}

/* Claims what fits; 1 when it claimed something. */
static int claim_some(signing_queue *q, unsigned room)
{
    store_claim *c = NULL;
    size_t n = 0;
    int64_t now = now_unix_ms();
    qk_err rc =
        STORE_CALL(q->srv->store, queue_claim, q->node, now, (int64_t)q->cfg.lease_seconds * 1000,
                   (int)(room < CLAIM_BATCH ? room : CLAIM_BATCH), &c, &n);
    if (rc != QK_OK) {
        log_kv(LOG_WARN, "queue claim failed", "detail", qk_error_detail(), NULL);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        qitem *it = xcalloc(1, sizeof(*it));
        it->q = q;
        it->claim = c[i];
        it->claimed_ms = now;
        pthread_mutex_lock(&q->lock);
        q->inflight++;
        pthread_mutex_unlock(&q->lock);
        if (workq_push(q->srv->signq, item_start, it) != 0)
            item_start(it);
    }
    free(c);
    return n > 0;
}

static void *dispatcher(void *arg)
{
    signing_queue *q = arg;
    int64_t next_poll = 0;
    pthread_mutex_lock(&q->lock);
    while (!q->stop) {
        int64_t now = now_unix_ms();
        int64_t wake = next_deadline(q);
        /* Claims wait for room for a batch (a quarter of the concurrency,
         * at most CLAIM_BATCH): each claim is a write transaction, and
         * claiming one request per freed slot made claims of ~4 under a
         * backlog. The pipeline stays full meanwhile. */
        unsigned low = q->cfg.concurrency / 4 < CLAIM_BATCH ? q->cfg.concurrency / 4 : CLAIM_BATCH;
        unsigned room = q->inflight < q->cfg.concurrency ? q->cfg.concurrency - q->inflight : 0;
        int can_claim = room > 0 && room >= (low > 0 ? low : 1);
        if (can_claim && (q->woken || now >= next_poll)) {
            q->woken = 0;
            pthread_mutex_unlock(&q->lock);
            int got = claim_some(q, room);
            fire_waiters(q, NULL, now_unix_ms(), 0);
            pthread_mutex_lock(&q->lock);
            next_poll = got ? 0 : now_unix_ms() + q->cfg.poll_ms;
            continue;
        }
        if (wake <= now) {
            pthread_mutex_unlock(&q->lock);
            fire_waiters(q, NULL, now, 0);
            pthread_mutex_lock(&q->lock);
            continue;
        }
        /* No room for a batch: a finishing request (item_free) wakes us. */
        int64_t until = can_claim ? next_poll : now + 1000;
        sleep_until(q, wake < until ? wake : until);
    }
    /* Stopping: what is in flight finishes and is recorded. */
    while (q->inflight > 0)
        pthread_cond_wait(&q->cond, &q->lock);
    pthread_mutex_unlock(&q->lock);
    fire_waiters(q, NULL, 0, 1);
    return NULL;
}

void queue_wake(signing_queue *q)
{
    if (q == NULL || q->cfg.concurrency == 0) /* an accept-only node claims nothing */
        return;
    pthread_mutex_lock(&q->lock);
    q->woken = 1;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

qk_err queue_start(server *srv, const queue_config *cfg, const char *node, signing_queue **out)
{
    signing_queue *q = xcalloc(1, sizeof(*q));
    q->srv = srv;
    q->cfg = *cfg;
    snprintf(q->node, sizeof(q->node), "%s", node);
    pthread_mutex_init(&q->lock, NULL);
    pthread_mutex_init(&q->mlock, NULL);
    pthread_cond_init(&q->cond, NULL);
    q->woken = 1; /* look at once: requests may wait from before a restart */
    if (pthread_create(&q->thread, NULL, dispatcher, q) != 0) {
        pthread_cond_destroy(&q->cond);
        pthread_mutex_destroy(&q->mlock);
        pthread_mutex_destroy(&q->lock);
        free(q);
        return qk_fail(QK_ERR_IO, "cannot start the queue's dispatcher");
    }
    *out = q;
    return QK_OK;
}

void queue_stop(signing_queue *q)
{
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->lock);
    int joined = q->joined;
    q->stop = 1;
    q->joined = 1;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    if (!joined)
        pthread_join(q->thread, NULL);
}

void queue_free(signing_queue *q)
{
    if (q == NULL)
        return;
    queue_stop(q);
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->mlock);
    pthread_mutex_destroy(&q->lock);
    free(q);
}

/* ---- metrics -------------------------------------------------------------- */

static char *render_histogram(const char *name, const char *help, const histogram *h)
{
    char *out = xasprintf("# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (size_t i = 0; i <= NBUCKETS; i++) {
        cum += h->counts[i];
        char le[32];
        if (i < NBUCKETS)
            snprintf(le, sizeof(le), "%g", buckets[i]);
        else
            snprintf(le, sizeof(le), "+Inf");
        char *next = xasprintf("%s%s_bucket{le=\"%s\"} %" PRIu64 "\n", out, name, le, cum);
        free(out);
        out = next;
    }
    char *next = xasprintf("%s%s_sum %.6f\n%s_count %" PRIu64 "\n", out, name, h->sum, name, h->n);
    free(out);
    return next;
}

char *queue_metrics_render(signing_queue *q)
{
    store_queue_stats st;
    histogram in_queue, to_sign;
    uint64_t signed_n, failed_n, retries, lost;
    pthread_mutex_lock(&q->mlock);
    in_queue = q->in_queue;
    to_sign = q->to_sign;
    signed_n = q->signed_n;
    failed_n = q->failed_n;
    retries = q->retries;
    lost = q->lost;
    pthread_mutex_unlock(&q->mlock);

    char *depth = xstrdup("");
    if (STORE_CALL(q->srv->store, queue_stats, 0, &st) == QK_OK) {
        double age =
            st.oldest_queued_ms > 0 ? (double)(now_unix_ms() - st.oldest_queued_ms) / 1000.0 : 0.0;
        free(depth);
        depth =
            xasprintf("# HELP qwickd_queue_depth Requests in the queue by status (every org).\n"
                      "# TYPE qwickd_queue_depth gauge\n"
                      "qwickd_queue_depth{status=\"QUEUED\"} %" PRId64 "\n"
                      "qwickd_queue_depth{status=\"PENDING_APPROVAL\"} %" PRId64 "\n"
                      "qwickd_queue_depth{status=\"PROCESSING\"} %" PRId64 "\n"
                      "qwickd_queue_depth{status=\"FAILED\"} %" PRId64 "\n"
                      "qwickd_queue_depth{status=\"CANCELLED\"} %" PRId64 "\n"
                      "# HELP qwickd_queue_oldest_age_seconds Age of the oldest QUEUED request.\n"
                      "# TYPE qwickd_queue_oldest_age_seconds gauge\n"
                      "qwickd_queue_oldest_age_seconds %.3f\n",
                      st.count[REQ_QUEUED], st.count[REQ_PENDING_APPROVAL],
                      st.count[REQ_PROCESSING], st.count[REQ_FAILED], st.count[REQ_CANCELLED], age);
    }
    char *h1 = render_histogram("qwickd_queue_wait_seconds",
                                "Time from queued to claimed by a worker of this node.", &in_queue);
    char *h2 =
        render_histogram("qwickd_queue_sign_seconds",
                         "Time from claimed to the outcome recorded, on this node.", &to_sign);
    char *all = xasprintf(
        "%s%s%s"
        "# HELP qwickd_queue_completed_total Queued requests finished on this node.\n"
        "# TYPE qwickd_queue_completed_total counter\n"
        "qwickd_queue_completed_total{status=\"SIGNED\"} %" PRIu64 "\n"
        "qwickd_queue_completed_total{status=\"FAILED\"} %" PRIu64 "\n"
        "# HELP qwickd_queue_retries_total Attempts that failed and were put back.\n"
        "# TYPE qwickd_queue_retries_total counter\n"
        "qwickd_queue_retries_total %" PRIu64 "\n"
        "# HELP qwickd_queue_dead_letters_total Requests that ended FAILED (dead letters).\n"
        "# TYPE qwickd_queue_dead_letters_total counter\n"
        "qwickd_queue_dead_letters_total %" PRIu64 "\n"
        "# HELP qwickd_queue_unrecorded_total Outcomes not recorded (lease lost, store down).\n"
        "# TYPE qwickd_queue_unrecorded_total counter\n"
        "qwickd_queue_unrecorded_total %" PRIu64 "\n",
        depth, h1, h2, signed_n, failed_n, retries, failed_n, lost);
    free(depth);
    free(h1);
    free(h2);
    return all;
}
