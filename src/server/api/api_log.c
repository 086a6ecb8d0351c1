/* /api/v1/log: the org's transparency log, for any role of the org.
 *
 *   GET /api/v1/log/public-key                     text/plain: the verifier key
 *   GET /api/v1/log/checkpoint                     text/plain: the signed note
 *   GET /api/v1/log/entries?start=&end=            {"entries":[{"index","leaf",…}]}
 *   GET /api/v1/log/entries?signature=HEX          entries whose signature value has that
 *                                                  SHA-256 (how `qwick log inclusion` finds
 *                                                  a signed file's entry)
 *   GET /api/v1/log/proof/inclusion?index=&size=   {"index","size","rootHash","hashes":[…]}
 *   GET /api/v1/log/proof/consistency?from=&to=    {"from","to","rootHash","hashes":[…]}
 *
 * Proof sizes default to the latest checkpoint's, so a client proves against
 * what it can verify. Query values are strict decimal; anything else is 400. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "api/api.h"
#include "common/b64.h"
#include "common/tlog.h"
#include "audit/transparency.h"
#include "core/util.h"

#define LOG_PAGE_MAX 1000

static const char *query(http_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

/* An optional non-negative decimal query value: 1 present, 0 absent, -1
 * after answering 400. */
static int query_int(http_req *req, const char *name, int64_t *out)
{
    const char *v = query(req, name);
    char *end;
    if (v == NULL)
        return 0;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (v[0] < '0' || v[0] > '9' || *end != '\0' || errno != 0 || x < 0 || strlen(v) > 18) {
        http_error(req, 400, "invalid_value",
                   "query parameter '%s' must be a non-negative "
                   "decimal integer",
                   name);
        return -1;
    }
    *out = x;
    return 1;
}

static int no_log_key(http_req *req)
{
    if (req->srv->logkey != NULL)
        return 0;
    http_error(req, 503, "log_unavailable", "this server has no log key");
    return 1;
}

void api_log_public_key(http_req *req)
{
    store_apikey key;
    if (api_authenticate(req, &key) != 0)
        return;
    if (!no_log_key(req)) {
        char *text = xasprintf("%s\n", tl_key_vkey(req->srv->logkey));
        http_bytes(req, 200, "text/plain; charset=utf-8", text, strlen(text));
    }
    store_apikey_clear(&key);
}

/* The latest checkpoint into *cp: 0, or -1 after answering. */
static int latest(http_req *req, int64_t org, store_checkpoint *cp)
{
    int empty = 0;
    if (tl_checkpoint(req->srv->store, req->srv->logkey, org, cp, &empty) != QK_OK) {
        http_error(req, 503, "store_unavailable", "cannot read the log now");
        return -1;
    }
    if (empty) {
        http_error(req, 404, "log_empty", "the log has no entry yet");
        return -1;
    }
    return 0;
}

void api_log_checkpoint(http_req *req)
{
    store_apikey key;
    store_checkpoint cp;
    if (api_authenticate(req, &key) != 0)
        return;
    if (!no_log_key(req) && latest(req, key.org_id, &cp) == 0) {
        http_bytes(req, 200, "text/plain; charset=utf-8", cp.note, strlen(cp.note));
        cp.note = NULL;
        store_checkpoint_clear(&cp);
    }
    store_apikey_clear(&key);
}

static json_t *hashes_json(const store_proof *p)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < p->n; i++) {
        char b64[B64_ENCODED_SIZE(32)];
        b64_encode(p->hashes[i], 32, b64);
        json_array_append_new(arr, json_string(b64));
    }
    return arr;
}

static json_t *b64_json(const uint8_t *p, size_t n)
{
    char *b = xmalloc(B64_ENCODED_SIZE(n));
    b64_encode(p, n, b);
    json_t *s = json_string(b);
    free(b);
    return s;
}

/* One entry: its index, the leaf bytes (what the tree hashes) and, for
 * reading, the fields decoded. */
json_t *api_log_entry_json(const store_log_entry *e)
{
    tlog_entry d;
    const char *why = NULL;
    json_t *j = json_pack("{s:I,s:o}", "index", (json_int_t)e->index, "leaf",
                          b64_json(e->leaf.data, e->leaf.len));
    if (tlog_leaf_decode(e->leaf.data, e->leaf.len, &d, &why) != 0)
        return j;
    json_t *f = json_pack("{s:i,s:I,s:I,s:I}", "version", d.version, "orgId", (json_int_t)d.org_id,
                          "ts", (json_int_t)d.ts, "outcome", (json_int_t)d.outcome);
    const char *names[] = {"actor",    "clientIp",     "action",          "requestId",
                           "format",   "algorithm",    "digest",          "profile",
                           "filename", "signerSha256", "signatureSha256", "signatureValueSha256",
                           "detail",   "meta"};
    const char *vals[] = {d.actor,      d.client_ip,     d.action,  d.request_id, d.format,
                          d.algorithm,  d.digest_hex,    d.profile, d.filename,   d.signer_fp,
                          d.sig_sha256, d.sigval_sha256, d.detail,  d.meta};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (vals[i] != NULL)
            json_object_set_new(f, names[i], json_string(vals[i]));
    json_object_set_new(j, "entry", f);
    tlog_entry_clear(&d);
    return j;
}

static void reply_entries(http_req *req, store_log_entry *es, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, api_log_entry_json(&es[i]));
    http_json(req, 200, json_pack("{s:o}", "entries", arr));
}

static int hex64_ok(const char *s)
{
    return strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

void api_log_entries(http_req *req)
{
    store_apikey key;
    store_log_entry *es = NULL;
    size_t n = 0;
    int64_t start = 0, end = 0;
    int hs, he;
    qk_err rc;
    if (api_authenticate(req, &key) != 0)
        return;
    const char *sig = query(req, "signature");
    if (sig != NULL) {
        if (!hex64_ok(sig)) {
            http_error(req, 400, "invalid_value", "signature must be 64 lowercase hex digits");
            goto out;
        }
        rc = STORE_CALL(req->srv->store, log_lookup, key.org_id, sig, &es, &n);
    } else {
        if ((hs = query_int(req, "start", &start)) < 0 || (he = query_int(req, "end", &end)) < 0)
            goto out;
        if (!he)
            end = start + 100;
        if (end <= start || end - start > LOG_PAGE_MAX) {
            http_error(req, 400, "invalid_value", "end must be above start, by at most %d",
                       LOG_PAGE_MAX);
            goto out;
        }
        rc = STORE_CALL(req->srv->store, log_entries, key.org_id, start, end, &es, &n);
    }
    if (rc != QK_OK)
        http_error(req, 503, "store_unavailable", "cannot read the log now");
    else
        reply_entries(req, es, n);
    store_log_entries_free(es, n);
out:
    store_apikey_clear(&key);
}

/* Size b of a proof: given, or the latest checkpoint's. 0 or -1 answered. */
static int proof_size(http_req *req, int64_t org, const char *name, int64_t *size)
{
    store_checkpoint cp;
    int has = query_int(req, name, size);
    if (has > 0 && *size == 0) {
        http_error(req, 400, "invalid_value", "%s must be at least 1", name);
        return -1;
    }
    if (has != 0)
        return has < 0 ? -1 : 0;
    if (latest(req, org, &cp) != 0)
        return -1;
    *size = cp.size;
    store_checkpoint_clear(&cp);
    return 0;
}

static void reply_proof(http_req *req, qk_err rc, const store_proof *p, json_t *j)
{
    if (rc == QK_ERR_INVALID_ARG) {
        json_decref(j);
        http_error(req, 400, "invalid_value", "%s", qk_error_detail());
        return;
    }
    if (rc != QK_OK) {
        json_decref(j);
        http_error(req, 503, "store_unavailable", "cannot read the log now");
        return;
    }
    json_object_set_new(j, "rootHash", b64_json(p->root, 32));
    json_object_set_new(j, "hashes", hashes_json(p));
    http_json(req, 200, j);
}

void api_log_inclusion(http_req *req)
{
    store_apikey key;
    store_proof p;
    int64_t index = 0, size = 0;
    int has;
    if (api_authenticate(req, &key) != 0)
        return;
    if ((has = query_int(req, "index", &index)) == 0)
        http_error(req, 400, "missing_field", "query parameter 'index' is required");
    if (has > 0 && !no_log_key(req) && proof_size(req, key.org_id, "size", &size) == 0) {
        qk_err rc =
            STORE_CALL(req->srv->store, log_prove, key.org_id, PROOF_INCLUSION, index, size, &p);
        reply_proof(req, rc, &p,
                    json_pack("{s:I,s:I}", "index", (json_int_t)index, "size", (json_int_t)size));
    }
    store_apikey_clear(&key);
}

void api_log_consistency(http_req *req)
{
    store_apikey key;
    store_proof p;
    int64_t from = 0, to = 0;
    int has;
    if (api_authenticate(req, &key) != 0)
        return;
    if ((has = query_int(req, "from", &from)) == 0)
        http_error(req, 400, "missing_field", "query parameter 'from' is required");
    if (has > 0 && !no_log_key(req) && proof_size(req, key.org_id, "to", &to) == 0) {
        qk_err rc =
            STORE_CALL(req->srv->store, log_prove, key.org_id, PROOF_CONSISTENCY, from, to, &p);
        reply_proof(req, rc, &p,
                    json_pack("{s:I,s:I}", "from", (json_int_t)from, "to", (json_int_t)to));
    }
    store_apikey_clear(&key);
}
