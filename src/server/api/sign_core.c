/* The signing engine (sign_core.h): the signer cache and one signature,
 * local or Azure. */
#include "api/sign_core.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>
#include <sodium.h>

#include "api/api.h"
#include "common/b64.h"
#include "core/util.h"
#include "core/workq.h"
#include "qwick/authenticode.h"
#include "signer/azure/azure.h"
#include "signer/signer.h"
#include "tsa/tsa.h"

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
void sign_sha256_hex(const uint8_t *p, size_t n, char out[65])
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
    sign_sha256_hex(e->chain[0].data, e->chain[0].len, e->leaf_fp);
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
        sign_sha256_hex(sig->data, sig->len, t->sigval_hex);
    return rc;
}

/* What libqwick assembles for `in` (not FMT_RAW): timestamped on the way
 * when the client asked the server to and this server has a TSA. */
static qk_sign_request request_of(server *srv, const sign_input *in)
{
    qk_sign_request r = {
        .format = in->format == FMT_CMS ? QK_FORMAT_CMS_DETACHED : QK_FORMAT_AUTHENTICODE_PE,
        .alg = in->alg,
        .digest = {in->digest, in->digest_len},
        /* SpcSpOpusInfo programName: what Windows shows as the program's name. */
        .program_name = in->description ? in->description : in->filename,
        .url = in->url,
        .signing_time = 0,
    };
    if (in->server_timestamp && srv->tsa != NULL) {
        r.stamp = tsa_stamp;
        r.stamp_ctx = srv->tsa;
    }
    return r;
}

/* Whether the signature for `in` comes back with the timestamp in it. */
static int stamped_here(server *srv, const sign_input *in)
{
    return in->format != FMT_RAW && in->server_timestamp && srv->tsa != NULL;
}

static qk_err do_sign(server *srv, const sign_input *in, cached_signer *cs, qk_buf *sig,
                      char sigval_hex[65])
{
    value_tap tap = {cs->signer, sigval_hex};
    if (in->format == FMT_RAW)
        return tap_sign(&tap, in->alg, in->digest, in->digest_len, sig);
    qk_sign_request r = request_of(srv, in);
    r.self_checked = cs->signer->self_checked;
    return qk_sign_chain(&r, tap_sign, &tap, cs->decoded, sig);
}

/* One signature on its way: a signing thread, perhaps Azure's engine, then
 * a signing thread again. */
typedef struct core_job {
    server *srv;
    const store_profile *prof;
    const sign_input *in;
    sign_done_fn done;
    void *arg;
    cached_signer *cs;
    qk_tbs *tbs;     /* Azure: the signed attributes wait here while Azure signs */
    azure_result az; /* Azure's answer, carried to a signing thread */
    char detail[512];
    char note[96];
    char signer_fp[65], sigval_sha256[65];
} core_job;

/* Hands the outcome over and frees the job. */
static void core_finish(core_job *j, sign_outcome *o)
{
    o->signer_fp = j->signer_fp;
    o->sigval_sha256 = j->sigval_sha256;
    o->note = j->note;
    j->done(j->arg, o);
    qk_buf_free(&o->sig);
    qk_tbs_free(j->tbs);
    cached_release(j->cs);
    free(j);
}

static void core_fail(core_job *j, int status, int transient, const char *detail)
{
    sign_outcome o = {.rc = QK_ERR_IO,
                      .status = status,
                      .transient = transient,
                      .detail = detail,
                      .chain_json = "[]"};
    core_finish(j, &o);
}

/* Azure's answer, on a signing thread: assemble the signature around
 * Azure's raw value (checked against the leaf it came with). */
static void azure_finish(void *arg)
{
    core_job *j = arg;
    azure_result *r = &j->az;
    qk_slice chain[QK_MAX_CHAIN_LEN];
    char *b64[QK_MAX_CHAIN_LEN] = {NULL};
    size_t n = 0;
    sign_outcome o = {.rc = QK_OK, .ts_required = 1};
    qk_err rc;
    qk_buf az_sig = r->signature, az_chain = r->chain_der;
    r->signature = r->chain_der = (qk_buf){NULL, 0};

    if (r->rc != QK_OK) {
        int status = r->status ? r->status : 502;
        core_fail(j, status, status == 429 || status == 503 || status == 504, r->detail);
        goto out;
    }
    if ((rc = split_der(&az_chain, chain, b64, &n)) != QK_OK)
        goto fail;
    if (j->in->format == FMT_RAW) {
        o.sig = az_sig;
        az_sig = (qk_buf){NULL, 0};
    } else if ((rc = qk_tbs_finish(j->tbs, (qk_slice){az_sig.data, az_sig.len}, chain, n,
                                   &o.sig)) != QK_OK) {
        goto fail;
    }
    char *chain_json = chain_json_of(b64, n);
    sign_sha256_hex(chain[0].data, chain[0].len, j->signer_fp);
    if (j->in->format == FMT_RAW)
        sign_sha256_hex(o.sig.data, o.sig.len, j->sigval_sha256);
    else
        sign_sha256_hex(az_sig.data, az_sig.len, j->sigval_sha256);
    o.chain_json = chain_json;
    o.timestamped = stamped_here(j->srv, j->in);
    o.chain_der = (qk_slice){az_chain.data, az_chain.len};
    core_finish(j, &o);
    free(chain_json);
    goto out;
fail:
    core_fail(j, 502, 0, qk_error_detail());
out:
    for (size_t i = 0; i < n; i++)
        free(b64[i]);
    qk_buf_free(&az_sig);
    qk_buf_free(&az_chain);
}

/* On the Azure engine's thread: the answer moves to a signing thread, so
 * the engine goes back to its transfers at once. */
static void azure_done(void *arg, azure_result *r)
{
    core_job *j = arg;
    j->az = *r;
    if (r->detail != NULL) {
        snprintf(j->detail, sizeof(j->detail), "%s", r->detail);
        j->az.detail = j->detail;
    }
    if (r->note != NULL) {
        snprintf(j->note, sizeof(j->note), "%s", r->note);
        j->az.note = j->note;
    }
    r->signature = (qk_buf){NULL, 0};
    r->chain_der = (qk_buf){NULL, 0};
    if (workq_push(j->srv->signq, azure_finish, j) != 0)
        azure_finish(j); /* no signing thread (shutting down): here */
}

/* Hands the hash of the signed attributes (or the raw digest) to Azure. */
static qk_err azure_start(core_job *j)
{
    const sign_input *in = j->in;
    uint8_t hash[QK_HASH_MAX_SIZE];
    size_t hlen = 0;
    qk_err rc;
    if (in->format == FMT_RAW) {
        memcpy(hash, in->digest, in->digest_len);
        hlen = in->digest_len;
    } else {
        qk_sign_request r = request_of(j->srv, in);
        if ((rc = qk_tbs_new(&r, &j->tbs)) != QK_OK ||
            (rc = qk_tbs_digest(j->tbs, hash, &hlen)) != QK_OK)
            return rc;
    }
    return azure_sign_async(j->cs->azure, in->alg, hash, hlen, azure_done, j);
}

/* On a signing thread: the RSA work (or Azure's start). */
static void core_run(void *arg)
{
    core_job *j = arg;
    server *srv = j->srv;
    sign_outcome o = {.rc = QK_OK};
    qk_err rc;

    if ((rc = signer_get(srv, j->prof, &j->cs)) == QK_OK && j->cs->azure != NULL) {
        /* Azure takes seconds: not "on its way" to a commit any more. */
        atomic_fetch_sub(&srv->signing, 1);
        if ((rc = azure_start(j)) != QK_OK)
            core_fail(j, 502, 0, qk_error_detail());
        return;
    }
    if (rc == QK_OK)
        rc = do_sign(srv, j->in, j->cs, &o.sig, j->sigval_sha256);
    /* Signed (or failed): this request's write is about to be queued, no
     * longer "on its way" for the commit delay. */
    atomic_fetch_sub(&srv->signing, 1);
    if (rc != QK_OK) {
        /* A profile whose key cannot be opened now may open later (the
         * store unavailable); a signature that fails will fail again. */
        core_fail(j, rc == QK_ERR_IO ? 503 : 500, rc == QK_ERR_IO,
                  j->cs == NULL ? qk_error_detail() : qk_strerror(rc));
        return;
    }
    memcpy(j->signer_fp, j->cs->leaf_fp, sizeof(j->signer_fp));
    o.timestamped = stamped_here(srv, j->in);
    o.chain_json = j->cs->chain_json;
    o.chain_der = (qk_slice){j->cs->chain_der.data, j->cs->chain_der.len};
    core_finish(j, &o);
}

void sign_core_start(server *srv, const store_profile *p, const sign_input *in, sign_done_fn done,
                     void *arg)
{
    core_job *j = xcalloc(1, sizeof(*j));
    j->srv = srv;
    j->prof = p;
    j->in = in;
    j->done = done;
    j->arg = arg;
    if (workq_push(srv->signq, core_run, j) != 0)
        core_run(j); /* no signing thread (shutting down): here */
}

char *sign_chain_json(qk_slice der)
{
    qk_buf copy = {(uint8_t *)der.data, der.len};
    qk_slice chain[QK_MAX_CHAIN_LEN];
    char *b64[QK_MAX_CHAIN_LEN] = {NULL};
    size_t n = 0;
    char *out = NULL;
    if (der.len > 0 && split_der(&copy, chain, b64, &n) == QK_OK)
        out = chain_json_of(b64, n);
    for (size_t i = 0; i < n; i++)
        free(b64[i]);
    return out;
}
