/* Merkle tree hashing and proofs (RFC 9162), signed-note checkpoints (C2SP)
 * and the leaf encoding of audit entries; see tlog.h. */
#include "common/tlog.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "common/b64.h"
#include "common/xalloc.h"

/* ---- hashing ----------------------------------------------------------- */

void tlog_leaf_hash(const uint8_t *leaf, size_t n, tlog_hash out)
{
    static const uint8_t zero = 0x00;
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    if (h == NULL || EVP_DigestInit_ex(h, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(h, &zero, 1) != 1 || EVP_DigestUpdate(h, leaf, n) != 1 ||
        EVP_DigestFinal_ex(h, out, NULL) != 1)
        abort(); /* SHA-256 cannot fail short of memory */
    EVP_MD_CTX_free(h);
}

void tlog_node_hash(const tlog_hash left, const tlog_hash right, tlog_hash out)
{
    uint8_t b[1 + 2 * TLOG_HASH_LEN];
    b[0] = 0x01;
    memcpy(b + 1, left, TLOG_HASH_LEN);
    memcpy(b + 1 + TLOG_HASH_LEN, right, TLOG_HASH_LEN);
    SHA256(b, sizeof(b), out);
}

static int popcount64(uint64_t v)
{
    return __builtin_popcountll(v);
}

/* Appending leaf N-1 completes every subtree whose right edge is N; before
 * that 2N - popcount(N) nodes exist in all. The node (level, index) is the
 * last one completed when N = (index + 1) * 2^level, less the ones above it
 * completed by the same leaf (one per trailing zero bit of index + 1). */
int64_t tlog_pos(int level, int64_t index)
{
    uint64_t i1 = (uint64_t)index + 1;
    uint64_t n = i1 << level;
    return (int64_t)(2 * n - (uint64_t)popcount64(n) - 1 - (uint64_t)__builtin_ctzll(i1));
}

/* The largest power of two smaller than n (n >= 2). */
static int64_t split_point(int64_t n)
{
    int64_t k = 1;
    while (k * 2 < n)
        k *= 2;
    return k;
}

static int is_pow2(int64_t n)
{
    return n > 0 && (n & (n - 1)) == 0;
}

/* MTH(D[start : start + n]); start is a multiple of a power of two >= n
 * wherever it is called, so a power-of-two range is one stored node. */
static int subtree(tlog_node_fn get, void *arg, int64_t start, int64_t n, tlog_hash out)
{
    if (is_pow2(n)) {
        int level = __builtin_ctzll((uint64_t)n);
        return get(arg, level, start >> level, out);
    }
    tlog_hash l, r;
    int64_t k = split_point(n);
    if (subtree(get, arg, start, k, l) != 0 || subtree(get, arg, start + k, n - k, r) != 0)
        return -1;
    tlog_node_hash(l, r, out);
    return 0;
}

int tlog_root(tlog_node_fn get, void *arg, int64_t size, tlog_hash out)
{
    if (size < 1)
        return -1;
    return subtree(get, arg, 0, size, out);
}

static int push(tlog_hash *out, size_t *n, const tlog_hash h)
{
    if (*n >= TLOG_MAX_PROOF)
        return -1;
    memcpy(out[(*n)++], h, TLOG_HASH_LEN);
    return 0;
}

/* PATH(m, D[start : start + n]) of RFC 9162 §2.1.3.1, deepest hash first. */
static int path(tlog_node_fn get, void *arg, int64_t m, int64_t start, int64_t n, tlog_hash *out,
                size_t *cnt)
{
    tlog_hash h;
    if (n <= 1)
        return 0;
    int64_t k = split_point(n);
    if (m < k) {
        if (path(get, arg, m, start, k, out, cnt) != 0 ||
            subtree(get, arg, start + k, n - k, h) != 0)
            return -1;
    } else {
        if (path(get, arg, m - k, start + k, n - k, out, cnt) != 0 ||
            subtree(get, arg, start, k, h) != 0)
            return -1;
    }
    return push(out, cnt, h);
}

int tlog_prove_inclusion(tlog_node_fn get, void *arg, int64_t index, int64_t size, tlog_hash *out,
                         size_t *n)
{
    *n = 0;
    if (index < 0 || size < 1 || index >= size)
        return -1;
    return path(get, arg, index, 0, size, out, n);
}

/* SUBPROOF(m, D[start : start + n], b) of RFC 9162 §2.1.4.1. */
static int subproof(tlog_node_fn get, void *arg, int64_t m, int64_t start, int64_t n, int b,
                    tlog_hash *out, size_t *cnt)
{
    tlog_hash h;
    if (m == n) {
        if (b)
            return 0;
        if (subtree(get, arg, start, n, h) != 0)
            return -1;
        return push(out, cnt, h);
    }
    int64_t k = split_point(n);
    if (m <= k) {
        if (subproof(get, arg, m, start, k, b, out, cnt) != 0 ||
            subtree(get, arg, start + k, n - k, h) != 0)
            return -1;
    } else {
        if (subproof(get, arg, m - k, start + k, n - k, 0, out, cnt) != 0 ||
            subtree(get, arg, start, k, h) != 0)
            return -1;
    }
    return push(out, cnt, h);
}

int tlog_prove_consistency(tlog_node_fn get, void *arg, int64_t from, int64_t to, tlog_hash *out,
                           size_t *n)
{
    *n = 0;
    if (from < 1 || to < from)
        return -1;
    if (from == to)
        return 0;
    return subproof(get, arg, from, 0, to, 1, out, n);
}

/* ---- verification ------------------------------------------------------ */

static int same(const tlog_hash a, const tlog_hash b)
{
    return CRYPTO_memcmp(a, b, TLOG_HASH_LEN) == 0;
}

int tlog_verify_inclusion(int64_t index, int64_t size, const tlog_hash leaf_hash,
                          const tlog_hash *proof, size_t n, const tlog_hash root)
{
    if (index < 0 || size < 1 || index >= size || n > TLOG_MAX_PROOF)
        return -1;
    uint64_t fn = (uint64_t)index, sn = (uint64_t)size - 1;
    tlog_hash r;
    memcpy(r, leaf_hash, TLOG_HASH_LEN);
    for (size_t i = 0; i < n; i++) {
        if (sn == 0)
            return -1;
        if ((fn & 1) || fn == sn) {
            tlog_node_hash(proof[i], r, r);
            while (!(fn & 1) && fn != 0) {
                fn >>= 1;
                sn >>= 1;
            }
        } else {
            tlog_node_hash(r, proof[i], r);
        }
        fn >>= 1;
        sn >>= 1;
    }
    return sn == 0 && same(r, root) ? 0 : -1;
}

int tlog_verify_consistency(int64_t from, int64_t to, const tlog_hash root_from,
                            const tlog_hash root_to, const tlog_hash *proof, size_t n)
{
    if (from < 1 || to < from || n > TLOG_MAX_PROOF)
        return -1;
    if (from == to)
        return n == 0 && same(root_from, root_to) ? 0 : -1;
    if (n == 0)
        return -1;
    /* When `from` is a power of two its root is the first node of the path. */
    const tlog_hash *p = proof;
    size_t cnt = n;
    tlog_hash first;
    size_t start = 0;
    if (is_pow2(from)) {
        memcpy(first, root_from, TLOG_HASH_LEN);
    } else {
        memcpy(first, p[0], TLOG_HASH_LEN);
        start = 1;
    }
    uint64_t fn = (uint64_t)from - 1, sn = (uint64_t)to - 1;
    while (fn & 1) {
        fn >>= 1;
        sn >>= 1;
    }
    tlog_hash fr, sr;
    memcpy(fr, first, TLOG_HASH_LEN);
    memcpy(sr, first, TLOG_HASH_LEN);
    for (size_t i = start; i < cnt; i++) {
        if (sn == 0)
            return -1;
        if ((fn & 1) || fn == sn) {
            tlog_node_hash(p[i], fr, fr);
            tlog_node_hash(p[i], sr, sr);
            while (!(fn & 1) && fn != 0) {
                fn >>= 1;
                sn >>= 1;
            }
        } else {
            tlog_node_hash(sr, p[i], sr);
        }
        fn >>= 1;
        sn >>= 1;
    }
    return sn == 0 && same(fr, root_from) && same(sr, root_to) ? 0 : -1;
}

/* ---- keys and notes ---------------------------------------------------- */

uint32_t tlog_key_id(const char *name, const uint8_t pub[32])
{
    uint8_t d[SHA256_DIGEST_LENGTH];
    size_t n = strlen(name);
    uint8_t *b = xmalloc(n + 2 + 32);
    memcpy(b, name, n);
    b[n] = '\n';
    b[n + 1] = 0x01;
    memcpy(b + n + 2, pub, 32);
    SHA256(b, n + 2 + 32, d);
    free(b);
    return (uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 | (uint32_t)d[2] << 8 | d[3];
}

/* A key name: non-empty, printable ASCII without spaces or '+'. */
static int name_ok(const char *s, size_t n)
{
    if (n == 0 || n > 128)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f || s[i] == '+')
            return 0;
    return 1;
}

char *tlog_vkey_format(const char *name, const uint8_t pub[32])
{
    uint8_t raw[33];
    char b64[B64_ENCODED_SIZE(33)];
    raw[0] = 0x01;
    memcpy(raw + 1, pub, 32);
    b64_encode(raw, sizeof(raw), b64);
    return xasprintf("%s+%08" PRIx32 "+%s", name, tlog_key_id(name, pub), b64);
}

int tlog_vkey_parse(const char *vkey, char **name, uint8_t pub[32], const char **why)
{
    const char *p1, *p2;
    uint8_t raw[34];
    size_t rawlen = 0;
    char *end;

    *name = NULL;
    p1 = strchr(vkey, '+');
    p2 = p1 != NULL ? strchr(p1 + 1, '+') : NULL;
    if (p1 == NULL || p2 == NULL || p2 - p1 != 9 || !name_ok(vkey, (size_t)(p1 - vkey))) {
        *why = "not a verifier key (NAME+ID+KEY)";
        return -1;
    }
    errno = 0;
    unsigned long id = strtoul(p1 + 1, &end, 16);
    if (end != p2 || errno != 0) {
        *why = "bad key id in verifier key";
        return -1;
    }
    if (b64_decode(p2 + 1, strlen(p2 + 1), raw, sizeof(raw), &rawlen) != 0 || rawlen != 33 ||
        raw[0] != 0x01) {
        *why = "verifier key is not an Ed25519 key";
        return -1;
    }
    memcpy(pub, raw + 1, 32);
    *name = xstrndup(vkey, (size_t)(p1 - vkey));
    if (tlog_key_id(*name, pub) != (uint32_t)id) {
        free(*name);
        *name = NULL;
        *why = "verifier key id does not match its key";
        return -1;
    }
    return 0;
}

char *tlog_checkpoint_body(const char *origin, int64_t size, const tlog_hash root)
{
    char b64[B64_ENCODED_SIZE(TLOG_HASH_LEN)];
    b64_encode(root, TLOG_HASH_LEN, b64);
    return xasprintf("%s\n%" PRId64 "\n%s\n", origin, size, b64);
}

#define EM_DASH "\xe2\x80\x94"

char *tlog_note_format(const char *body, const char *name, const uint8_t pub[32],
                       const uint8_t sig[64])
{
    uint8_t raw[68];
    char b64[B64_ENCODED_SIZE(68)];
    uint32_t id = tlog_key_id(name, pub);
    raw[0] = (uint8_t)(id >> 24);
    raw[1] = (uint8_t)(id >> 16);
    raw[2] = (uint8_t)(id >> 8);
    raw[3] = (uint8_t)id;
    memcpy(raw + 4, sig, 64);
    b64_encode(raw, sizeof(raw), b64);
    return xasprintf("%s\n" EM_DASH " %s %s\n", body, name, b64);
}

static int ed25519_ok(const uint8_t pub[32], const uint8_t sig[64], const char *msg, size_t n)
{
    EVP_PKEY *k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, 32);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = k != NULL && ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k) == 1 &&
             EVP_DigestVerify(ctx, sig, 64, (const uint8_t *)msg, n) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(k);
    return ok;
}

/* One line of [p, end): its length without the '\n'; -1 when no '\n'. */
static long line_len(const char *p, const char *end)
{
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    return nl == NULL ? -1 : nl - p;
}

static int parse_body(const char *p, size_t n, tlog_checkpoint *out, const char **why)
{
    const char *end = p + n;
    long l1 = line_len(p, end);
    if (l1 <= 0) {
        *why = "checkpoint has no origin line";
        return -1;
    }
    for (long i = 0; i < l1; i++)
        if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f) {
            *why = "control character in checkpoint origin";
            return -1;
        }
    const char *s = p + l1 + 1;
    long l2 = line_len(s, end);
    if (l2 <= 0 || l2 > 19 || (l2 > 1 && s[0] == '0')) {
        *why = "checkpoint tree size is not a decimal number";
        return -1;
    }
    int64_t size = 0;
    for (long i = 0; i < l2; i++) {
        if (s[i] < '0' || s[i] > '9' || size > (INT64_MAX - 9) / 10) {
            *why = "checkpoint tree size is not a decimal number";
            return -1;
        }
        size = size * 10 + (s[i] - '0');
    }
    const char *r = s + l2 + 1;
    long l3 = line_len(r, end);
    size_t rlen = 0;
    if (l3 <= 0 || b64_decode(r, (size_t)l3, out->root, TLOG_HASH_LEN, &rlen) != 0 ||
        rlen != TLOG_HASH_LEN) {
        *why = "checkpoint root hash is not 32 bytes of base64";
        return -1;
    }
    /* Extension lines (non-empty) may follow; C2SP lets verifiers ignore them. */
    out->origin = xstrndup(p, (size_t)l1);
    out->size = size;
    return 0;
}

int tlog_checkpoint_open(const char *note, size_t len, const char *name, const uint8_t pub[32],
                         tlog_checkpoint *out, const char **why)
{
    const char *end = note + len, *sep = NULL;
    uint32_t want = tlog_key_id(name, pub);
    int found = 0, verified = 0;

    memset(out, 0, sizeof(*out));
    if (len == 0 || len > TLOG_MAX_NOTE || memchr(note, '\0', len) != NULL) {
        *why = len > TLOG_MAX_NOTE ? "checkpoint note too large"
                                   : "checkpoint note is empty or "
                                     "holds a NUL byte";
        return -1;
    }
    /* The body ends at the first blank line; signature lines follow it. */
    for (const char *p = note; p + 1 < end; p++)
        if (p[0] == '\n' && p[1] == '\n') {
            sep = p + 1;
            break;
        }
    if (sep == NULL || end[-1] != '\n') {
        *why = "checkpoint note has no signature block";
        return -1;
    }
    size_t body_len = (size_t)(sep - note);
    for (const char *p = sep + 1; p < end;) {
        long l = line_len(p, end);
        const size_t dl = sizeof(EM_DASH " ") - 1;
        if (l < (long)dl || memcmp(p, EM_DASH " ", dl) != 0) {
            *why = "malformed signature line in checkpoint note";
            return -1;
        }
        const char *nm = p + dl, *sp = memchr(nm, ' ', (size_t)(l - (long)dl));
        if (sp == NULL) {
            *why = "malformed signature line in checkpoint note";
            return -1;
        }
        uint8_t raw[69];
        size_t rawlen = 0;
        const char *sg = sp + 1;
        if (b64_decode(sg, (size_t)(p + l - sg), raw, sizeof(raw), &rawlen) != 0 || rawlen < 5) {
            *why = "malformed signature in checkpoint note";
            return -1;
        }
        uint32_t id =
            (uint32_t)raw[0] << 24 | (uint32_t)raw[1] << 16 | (uint32_t)raw[2] << 8 | raw[3];
        if ((size_t)(sp - nm) == strlen(name) && memcmp(nm, name, (size_t)(sp - nm)) == 0 &&
            id == want) {
            found = 1;
            if (rawlen == 68 && ed25519_ok(pub, raw + 4, note, body_len))
                verified = 1;
        }
        p += l + 1;
    }
    if (!found) {
        *why = "checkpoint is not signed by the log key";
        return -1;
    }
    if (!verified) {
        *why = "checkpoint signature does not verify";
        return -1;
    }
    return parse_body(note, body_len, out, why);
}

void tlog_checkpoint_clear(tlog_checkpoint *c)
{
    free(c->origin);
    memset(c, 0, sizeof(*c));
}

/* ---- leaves ------------------------------------------------------------ */

#define TAG_LEN 14
static const char tag_v1[] = "qwick-audit-v1";
static const char tag_v2[] = "qwick-audit-v2";

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
} wbuf;

static void put(wbuf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void put_u32(wbuf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    put(b, x, 4);
}

static void put_i64(wbuf *b, int64_t v)
{
    put_u32(b, (uint32_t)((uint64_t)v >> 32));
    put_u32(b, (uint32_t)(uint64_t)v);
}

static void put_str(wbuf *b, const char *s)
{
    if (s == NULL) {
        put_u32(b, UINT32_MAX);
        return;
    }
    size_t n = strlen(s);
    put_u32(b, (uint32_t)n);
    put(b, s, n);
}

void tlog_leaf_encode(const tlog_entry *e, uint8_t **out, size_t *n)
{
    wbuf b = {0};
    put(&b, e->version == 1 ? tag_v1 : tag_v2, TAG_LEN);
    put_i64(&b, e->org_id);
    put_i64(&b, e->seq);
    put_i64(&b, e->ts);
    put_str(&b, e->actor);
    put_str(&b, e->client_ip);
    put_str(&b, e->action);
    put_str(&b, e->request_id);
    if (e->version == 1) {
        put_str(&b, e->digest_hex);
        put_str(&b, e->algorithm);
        put_str(&b, e->profile);
        put_str(&b, e->filename);
        put_i64(&b, e->outcome);
        put_str(&b, e->detail);
    } else {
        put_str(&b, e->format);
        put_str(&b, e->algorithm);
        put_str(&b, e->digest_hex);
        put_str(&b, e->profile);
        put_str(&b, e->filename);
        put_str(&b, e->signer_fp);
        put_str(&b, e->sig_sha256);
        put_str(&b, e->sigval_sha256);
        put_i64(&b, e->outcome);
        put_str(&b, e->detail);
        put_str(&b, e->meta);
    }
    *out = b.p;
    *n = b.n;
}

typedef struct rbuf {
    const uint8_t *p;
    size_t left;
    int bad;
} rbuf;

static uint32_t get_u32(rbuf *r)
{
    if (r->bad || r->left < 4) {
        r->bad = 1;
        return 0;
    }
    uint32_t v =
        (uint32_t)r->p[0] << 24 | (uint32_t)r->p[1] << 16 | (uint32_t)r->p[2] << 8 | r->p[3];
    r->p += 4;
    r->left -= 4;
    return v;
}

static int64_t get_i64(rbuf *r)
{
    uint64_t hi = get_u32(r), lo = get_u32(r);
    return (int64_t)(hi << 32 | lo);
}

static char *get_str(rbuf *r)
{
    uint32_t n = get_u32(r);
    if (r->bad || n == UINT32_MAX)
        return NULL;
    if (r->left < n || memchr(r->p, '\0', n) != NULL) {
        r->bad = 1;
        return NULL;
    }
    char *s = xstrndup((const char *)r->p, n);
    r->p += n;
    r->left -= n;
    return s;
}

int tlog_leaf_decode(const uint8_t *p, size_t n, tlog_entry *e, const char **why)
{
    rbuf r = {p, n, 0};
    memset(e, 0, sizeof(*e));
    if (n > TLOG_MAX_LEAF) {
        *why = "log entry too large";
        return -1;
    }
    if (n < TAG_LEN || (memcmp(p, tag_v1, TAG_LEN) != 0 && memcmp(p, tag_v2, TAG_LEN) != 0)) {
        *why = "log entry has an unknown version tag";
        return -1;
    }
    e->version = memcmp(p, tag_v1, TAG_LEN) == 0 ? 1 : 2;
    r.p += TAG_LEN;
    r.left -= TAG_LEN;
    e->org_id = get_i64(&r);
    e->seq = get_i64(&r);
    e->ts = get_i64(&r);
    e->actor = get_str(&r);
    e->client_ip = get_str(&r);
    e->action = get_str(&r);
    e->request_id = get_str(&r);
    if (e->version == 1) {
        e->digest_hex = get_str(&r);
        e->algorithm = get_str(&r);
        e->profile = get_str(&r);
        e->filename = get_str(&r);
        e->outcome = get_i64(&r);
        e->detail = get_str(&r);
    } else {
        e->format = get_str(&r);
        e->algorithm = get_str(&r);
        e->digest_hex = get_str(&r);
        e->profile = get_str(&r);
        e->filename = get_str(&r);
        e->signer_fp = get_str(&r);
        e->sig_sha256 = get_str(&r);
        e->sigval_sha256 = get_str(&r);
        e->outcome = get_i64(&r);
        e->detail = get_str(&r);
        e->meta = get_str(&r);
    }
    if (r.bad || r.left != 0) {
        *why = r.bad ? "log entry is truncated or holds a NUL byte"
                     : "trailing bytes after log "
                       "entry";
        tlog_entry_clear(e);
        return -1;
    }
    return 0;
}

void tlog_entry_clear(tlog_entry *e)
{
    char **f[] = {&e->actor,      &e->client_ip,     &e->action,  &e->request_id, &e->format,
                  &e->algorithm,  &e->digest_hex,    &e->profile, &e->filename,   &e->signer_fp,
                  &e->sig_sha256, &e->sigval_sha256, &e->detail,  &e->meta};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        free(*f[i]);
        *f[i] = NULL;
    }
}
