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

#include "signer/azure/azure.h"
#include "common/b64.h"
#include "core/log.h"
#include "signer/profile.h"
#include "qwick/authenticode.h"
#include "api/sign_input.h"
#include "signer/signer.h"
#include "audit/transparency.h"
#include "core/util.h"
#include "core/workq.h"

/* Cached signers beyond this count are built per request and dropped (an
 * org with thousands of profiles is not a case to optimise memory for). */
#define SIGNER_CACHE_MAX 1024

/* One profile's signer with its chain ready for responses. Reference
 * counted: the cache holds one reference, every request using it another, so
 * an entry replaced after a profile change is freed by its last user. */
typedef struct cached_signer {
    int64_t org, profile_id, key_id;
    qk_buf chain_der;  /* as in the profile row: compared to detect a change */
    qk_signer *signer; /* local backends */
    az_profile *azure; /* Azure: the chain comes with each signature */
    qk_chain *decoded; /* the chain parsed once: decoding per request costs ~15% */
    qk_slice chain[QK_MAX_CHAIN_LEN];
    size_t nchain;
    char *chain_b64[QK_MAX_CHAIN_LEN];
    char *chain_json; /* ["b64",...]: the response's certificateChain */
    char leaf_fp[65]; /* SHA-256 hex of the leaf certificate, for the log */
    atomic_int refs;
    struct cached_signer *next;
} cached_signer;

struct signer_cache {
    pthread_mutex_t lock;
    cached_signer *head;
    size_t n;
};

static void cached_release(cached_signer *e)
{
    if (e == NULL || atomic_fetch_sub(&e->refs, 1) != 1)
        return;
    signer_free(e->signer);
    azure_profile_release(e->azure);
    qk_chain_free(e->decoded);
    qk_buf_free(&e->chain_der);
    for (size_t i = 0; i < e->nchain; i++)
        free(e->chain_b64[i]);
    free(e->chain_json);
    free(e);
}

signer_cache *signer_cache_new(void)
{
    signer_cache *c = xcalloc(1, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void signer_cache_free(signer_cache *c)
{
    if (c == NULL)
        return;
    for (cached_signer *e = c->head, *next; e != NULL; e = next) {
        next = e->next;
        cached_release(e);
    }
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* Splits concatenated DER certificates into slices, each parsed once to be
 * sure it is a certificate and that nothing trails the last one; b64 (may
 * be NULL) gets each one's base64. */
static qk_err split_der(const qk_buf *der, qk_slice chain[QK_MAX_CHAIN_LEN],
                        char *b64[QK_MAX_CHAIN_LEN], size_t *nchain)
{
    const unsigned char *p = der->data, *end = p + der->len;
    *nchain = 0;
    while (p < end) {
        if (*nchain == QK_MAX_CHAIN_LEN)
            return qk_fail(QK_ERR_TOO_LARGE, "chain has more than %d certificates",
                           QK_MAX_CHAIN_LEN);
        const unsigned char *start = p;
        X509 *x = d2i_X509(NULL, &p, (long)(end - p));
        if (x == NULL)
            return qk_fail_ossl(QK_ERR_BAD_DER, "chain certificate %zu", *nchain);
        X509_free(x);
        size_t len = (size_t)(p - start);
        chain[*nchain] = (qk_slice){start, len};
        if (b64 != NULL) {
            b64[*nchain] = xmalloc(B64_ENCODED_SIZE(len));
            b64_encode(start, len, b64[*nchain]);
        }
        (*nchain)++;
    }
    if (*nchain == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "no certificate in the chain");
    return QK_OK;
}

/* SHA-256 of p as 64 lowercase hex digits. */
static void sha256_hex(const uint8_t *p, size_t n, char out[65])
{
    uint8_t d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(d, p, n);
    hex_encode(d, sizeof(d), out);
}

/* ["b64",...]: a response's certificateChain. */
static char *chain_json_of(char *const *b64, size_t n)
{
    size_t len = 3; /* [ ] NUL */
    for (size_t i = 0; i < n; i++)
        len += strlen(b64[i]) + 3; /* "..." and a comma */
    char *out = xmalloc(len), *o = out;
    *o++ = '[';
    for (size_t i = 0; i < n; i++)
        o += sprintf(o, "%s\"%s\"", i ? "," : "", b64[i]);
    *o++ = ']';
    *o = '\0';
    return out;
}

static qk_err split_chain(cached_signer *e)
{
    qk_err rc = split_der(&e->chain_der, e->chain, e->chain_b64, &e->nchain);
    if (rc != QK_OK)
        return rc;
    e->chain_json = chain_json_of(e->chain_b64, e->nchain);
    sha256_hex(e->chain[0].data, e->chain[0].len, e->leaf_fp);
    return qk_chain_new(e->chain, e->nchain, &e->decoded);
}

static int entry_matches(const cached_signer *e, const store_profile *p)
{
    return e->org == p->org_id && e->profile_id == p->id && e->key_id == p->key_id &&
           e->chain_der.len == p->chain_der.len &&
           (p->chain_der.len == 0 ||
            memcmp(e->chain_der.data, p->chain_der.data, p->chain_der.len) == 0);
}

/* The signer for profile `p`, with a reference the caller releases. */
static qk_err signer_get(server *srv, const store_profile *p, cached_signer **out)
{
    signer_cache *c = srv->signers;
    cached_signer *e = NULL, **pp;
    qk_err rc;
    *out = NULL;

    pthread_mutex_lock(&c->lock);
    for (e = c->head; e != NULL; e = e->next)
        if (e->org == p->org_id && e->profile_id == p->id && entry_matches(e, p)) {
            atomic_fetch_add(&e->refs, 1);
            break;
        }
    pthread_mutex_unlock(&c->lock);
    if (e != NULL) {
        *out = e;
        return QK_OK;
    }

    /* Built outside the lock: unsealing and parsing take a while, and two
     * threads racing here only cost one redundant build. */
    e = xcalloc(1, sizeof(*e));
    e->org = p->org_id;
    e->profile_id = p->id;
    e->key_id = p->key_id;
    e->chain_der.data = xmalloc(p->chain_der.len ? p->chain_der.len : 1);
    if (p->chain_der.len > 0) /* empty for Azure: its chain comes with each signature */
        memcpy(e->chain_der.data, p->chain_der.data, p->chain_der.len);
    e->chain_der.len = p->chain_der.len;
    atomic_init(&e->refs, 1);
    if (p->backend != NULL && strcmp(p->backend, "azure") == 0)
        rc = azure_profile_open(srv->azure, p, &e->azure);
    else if ((rc = split_chain(e)) == QK_OK)
        rc = signer_open_profile(srv->store, srv->keyring, p, &e->signer);
    if (rc != QK_OK) {
        cached_release(e);
        return rc;
    }

    pthread_mutex_lock(&c->lock);
    /* Drop a stale entry for the same profile (key or chain changed). */
    for (pp = &c->head; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->org == p->org_id && (*pp)->profile_id == p->id) {
            cached_signer *old = *pp;
            *pp = old->next;
            c->n--;
            cached_release(old);
            break;
        }
    if (c->n < SIGNER_CACHE_MAX) {
        atomic_fetch_add(&e->refs, 1);
        e->next = c->head;
        c->head = e;
        c->n++;
    }
    pthread_mutex_unlock(&c->lock);
    *out = e;
    return QK_OK;
}

/* "https://host:port" for timestampUrl: the configured/derived base URL, or
 * from a Host header that looks like a host name (listening on a wildcard). */
static char *tsa_url(http_req *req)
{
    if (req->srv->base_url != NULL)
        return xasprintf("%s/tsa", req->srv->base_url);
    const char *host = http_header(req, MHD_HTTP_HEADER_HOST);
    if (host == NULL || host[0] == '\0' || strlen(host) > 255 ||
        strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]") !=
            strlen(host))
        return NULL;
    return xasprintf("%s://%s/tsa", req->srv->tls ? "https" : "http", host);
}

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

/* The signer's callback during assembly, noting the signature value's hash
 * for the log (the value is what a signed file keeps after timestamping). */
typedef struct value_tap {
    qk_signer *signer;
    char *sigval_hex;
} value_tap;

static qk_err tap_sign(void *ctx, qk_hash_alg alg, const uint8_t *digest, size_t len, qk_buf *sig)
{
    value_tap *t = ctx;
    qk_err rc = t->signer->ops->sign(t->signer, alg, digest, len, sig);
    if (rc == QK_OK)
        sha256_hex(sig->data, sig->len, t->sigval_hex);
    return rc;
}

static qk_err do_sign(const sign_input *in, cached_signer *cs, qk_buf *sig, char sigval_hex[65])
{
    value_tap tap = {cs->signer, sigval_hex};
    if (in->format == FMT_RAW)
        return tap_sign(&tap, in->alg, in->digest, in->digest_len, sig);
    qk_sign_request r = {
        .format = in->format == FMT_CMS ? QK_FORMAT_CMS_DETACHED : QK_FORMAT_AUTHENTICODE_PE,
        .alg = in->alg,
        .digest = {in->digest, in->digest_len},
        /* SpcSpOpusInfo programName: what Windows shows as the program's name. */
        .program_name = in->description ? in->description : in->filename,
        .url = in->url,
        .signing_time = 0,
        .self_checked = cs->signer->self_checked,
    };
    return qk_sign_chain(&r, tap_sign, &tap, cs->decoded, sig);
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
static char *build_response(http_req *req, const char *chain_json, int ts_required, qk_buf sig,
                            size_t *len)
{
    char *b64 = xmalloc(B64_ENCODED_SIZE(sig.len));
    char *url = tsa_url(req);
    json_t *url_str = url != NULL ? json_string(url) : NULL;
    char *url_json = url_str != NULL ? json_dumps(url_str, JSON_ENCODE_ANY) : NULL;
    json_decref(url_str);
    b64_encode(sig.data, sig.len, b64);
    char *text =
        xasprintf("{\"requestId\":\"%s\",\"status\":\"SIGNED\",\"signature\":\"%s\","
                  "\"certificateChain\":%s%s%s%s,\"logIndex\":" LOG_INDEX_SLOT "}",
                  req->id, b64, chain_json, url_json ? ",\"timestampUrl\":" : "",
                  url_json ? url_json : "", ts_required ? ",\"timestampRequired\":true" : "");
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
    /* Azure: the signed attributes wait here while Azure signs their hash. */
    cached_signer *cs;
    qk_tbs *tbs;
    char note[96]; /* the audit row's detail: the credential used */
    char signer_fp[65], sig_sha256[65], sigval_sha256[65]; /* the log entry's hashes */
    int64_t log_index; /* set by the store when the entry commits */
    azure_result az;   /* Azure's answer, carried to a signing thread */
    char az_detail[512];
} sign_job;

/* Frees the job, then lets the pool thread answer: `req` is not touched
 * after http_resume (the pool thread may free it at once). */
static void sign_job_done(sign_job *j)
{
    http_req *req = j->req;
    free(j->response);
    qk_tbs_free(j->tbs);
    cached_release(j->cs);
    qk_buf_free(&j->row.signature);
    store_profile_clear(&j->prof);
    sign_input_clear(&j->in);
    store_apikey_clear(&j->key);
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
static void record_signed(sign_job *j, qk_buf sig, const char *chain_json, int ts_required)
{
    http_req *req = j->req;
    server *srv = req->srv;
    qk_err rc;
    j->response = build_response(req, chain_json, ts_required, sig, &j->response_len);
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
    sha256_hex(sig.data, sig.len, j->sig_sha256);
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

/* Azure's answer, on a signing thread: assemble the signature around
 * Azure's raw value (checked against the leaf it came with), then record it
 * like any other. */
static void azure_finish(void *arg)
{
    sign_job *j = arg;
    azure_result *r = &j->az;
    qk_slice chain[QK_MAX_CHAIN_LEN];
    char *b64[QK_MAX_CHAIN_LEN] = {NULL};
    size_t n = 0;
    qk_buf sig = {NULL, 0};
    char *chain_json = NULL;
    qk_err rc;
    /* Owned here: `j` is freed by whoever answers (sign_failed, or the
     * commit that record_signed queues), possibly before this returns. */
    qk_buf az_sig = r->signature, az_chain = r->chain_der;
    r->signature = r->chain_der = (qk_buf){NULL, 0};

    if (r->rc != QK_OK) {
        sign_failed(j, r->status ? r->status : 502, "signing_failed", r->detail);
        goto out;
    }
    if ((rc = split_der(&az_chain, chain, b64, &n)) != QK_OK)
        goto fail;
    if (j->in.format == FMT_RAW) {
        sig = az_sig;
        az_sig = (qk_buf){NULL, 0};
    } else if ((rc = qk_tbs_finish(j->tbs, (qk_slice){az_sig.data, az_sig.len}, chain, n, &sig)) !=
               QK_OK) {
        goto fail;
    }
    chain_json = chain_json_of(b64, n);
    sha256_hex(chain[0].data, chain[0].len, j->signer_fp);
    if (j->in.format == FMT_RAW)
        sha256_hex(sig.data, sig.len, j->sigval_sha256);
    else
        sha256_hex(az_sig.data, az_sig.len, j->sigval_sha256);
    record_signed(j, sig, chain_json, 1);
    goto out;
fail:
    sign_failed(j, 502, "signing_failed", qk_error_detail());
out:
    free(chain_json);
    for (size_t i = 0; i < n; i++)
        free(b64[i]);
    qk_buf_free(&az_sig);
    qk_buf_free(&az_chain);
}

/* On the Azure engine's thread: the answer moves to a signing thread, so
 * the engine goes back to its transfers at once (assembly and the audit of a
 * failure take time the engine should not spend). */
static void azure_done(void *arg, azure_result *r)
{
    sign_job *j = arg;
    j->az = *r;
    if (r->detail != NULL) {
        snprintf(j->az_detail, sizeof(j->az_detail), "%s", r->detail);
        j->az.detail = j->az_detail;
    }
    if (r->note != NULL) {
        snprintf(j->note, sizeof(j->note), "%s", r->note);
        j->az.note = j->note;
    }
    r->signature = (qk_buf){NULL, 0};
    r->chain_der = (qk_buf){NULL, 0};
    if (workq_push(j->req->srv->signq, azure_finish, j) != 0)
        azure_finish(j); /* no signing thread (shutting down): here */
}

/* Hands the hash of the signed attributes (or the raw digest) to Azure. */
static qk_err azure_start(sign_job *j, cached_signer *cs)
{
    uint8_t hash[QK_HASH_MAX_SIZE];
    size_t hlen = 0;
    qk_err rc;
    j->cs = cs;
    if (j->in.format == FMT_RAW) {
        memcpy(hash, j->in.digest, j->in.digest_len);
        hlen = j->in.digest_len;
    } else {
        qk_sign_request r = {
            .format = j->in.format == FMT_CMS ? QK_FORMAT_CMS_DETACHED : QK_FORMAT_AUTHENTICODE_PE,
            .alg = j->in.alg,
            .digest = {j->in.digest, j->in.digest_len},
            .program_name = j->in.description ? j->in.description : j->in.filename,
            .url = j->in.url,
        };
        if ((rc = qk_tbs_new(&r, &j->tbs)) != QK_OK ||
            (rc = qk_tbs_digest(j->tbs, hash, &hlen)) != QK_OK)
            return rc;
    }
    return azure_sign_async(cs->azure, j->in.alg, hash, hlen, azure_done, j);
}

/* On a signing thread: the RSA work, then the hand-off to a commit thread. */
static void sign_run(void *arg)
{
    sign_job *j = arg;
    http_req *req = j->req;
    server *srv = req->srv;
    cached_signer *cs = NULL;
    qk_buf sig = {NULL, 0};
    qk_err rc;

    if ((rc = signer_get(srv, &j->prof, &cs)) == QK_OK && cs->azure != NULL) {
        /* Azure takes seconds: not "on its way" to a commit any more. */
        atomic_fetch_sub(&srv->signing, 1);
        if ((rc = azure_start(j, cs)) != QK_OK)
            sign_failed(j, 502, "signing_failed", qk_error_detail());
        return;
    }
    if (rc == QK_OK)
        rc = do_sign(&j->in, cs, &sig, j->sigval_sha256);
    /* Signed (or failed): this request's write is about to be queued, no
     * longer "on its way" for the commit delay. Before the enqueue, so an
     * enqueue that leaves nothing coming wakes a delaying writer. */
    atomic_fetch_sub(&srv->signing, 1);
    if (rc != QK_OK) {
        cached_release(cs);
        sign_failed(j, 500, "signing_failed", qk_strerror(rc));
        return;
    }
    memcpy(j->signer_fp, cs->leaf_fp, sizeof(j->signer_fp));
    record_signed(j, sig, cs->chain_json, 0);
    cached_release(cs);
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

    /* Authorisation after parsing, so a denial's audit row says what was
     * attempted (digest, profile, file). */
    if (j->key.role < ROLE_SIGNER) {
        if (audit_decision(req, &j->audit, AUDIT_DENIED, "role may not sign") == 0)
            http_error(req, 403, "forbidden", "the key's role (%s) may not sign",
                       store_role_name(j->key.role));
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

    /* The RSA work goes to the signing threads, shared by all connections:
     * were it done here, a pool thread whose connections all wait on commits
     * would leave its core idle while another thread's queue grows. Suspend
     * first, so no thread can resume a connection not yet suspended. */
    http_suspend(req);
    atomic_fetch_add(&srv->signing, 1);
    if (workq_push(srv->signq, sign_run, j) != 0)
        sign_run(j); /* no signing thread (shutting down): do it here */
    return;
out:
    store_profile_clear(&j->prof);
    sign_input_clear(&j->in);
    store_apikey_clear(&j->key);
    free(j);
}

/* "req_" + 32 lowercase hex: anything else cannot name a request. */
static int request_id_ok(const char *id)
{
    if (strncmp(id, "req_", 4) != 0 || strlen(id) != 36)
        return 0;
    return strspn(id + 4, "0123456789abcdef") == 32;
}

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

void api_sign_request_get(http_req *req)
{
    store_apikey key;
    store_sign_request r;
    int found = 0;
    memset(&r, 0, sizeof(r));
    if (api_authenticate(req, &key) != 0)
        return;
    if (!request_id_ok(req->params[0])) {
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
    json_t *meta = json_object();
    if (r.filename)
        json_object_set_new(meta, "filename", json_string(r.filename));
    if (r.description)
        json_object_set_new(meta, "description", json_string(r.description));
    if (r.url)
        json_object_set_new(meta, "url", json_string(r.url));
    json_t *j =
        json_pack("{s:s,s:s,s:s,s:s,s:s,s:o,s:I,s:I}", "requestId", r.id, "status",
                  req_status_name(r.status), "algorithm", r.algorithm ? r.algorithm : "", "format",
                  r.format ? r.format : "", "profile", r.profile ? r.profile : "", "metadata", meta,
                  "createdAt", (json_int_t)r.created_at, "completedAt", (json_int_t)r.completed_at);
    if (j != NULL && r.signature.len > 0) {
        char *b64 = malloc(B64_ENCODED_SIZE(r.signature.len));
        if (b64 != NULL) {
            b64_encode(r.signature.data, r.signature.len, b64);
            json_object_set_new(j, "signature", json_string(b64));
            free(b64);
        }
    }
    if (j != NULL && r.error != NULL)
        json_object_set_new(j, "failureReason", json_string(r.error));
    if (j != NULL && r.status == REQ_SIGNED)
        add_log_proof(req, key.org_id, r.id, j);
    http_json(req, 200, j);
out:
    store_sign_request_clear(&r);
    store_apikey_clear(&key);
}
