/* Fuzzes the transparency log's readers of untrusted bytes (src/common/
 * tlog.c), which `qwick log` runs on what a server sends. The first byte
 * chooses:
 *
 *   'N' NOTE          tlog_checkpoint_open under the fixed key below (the
 *                     seed key: 32 bytes of 0x01); an accepted note has a
 *                     size >= 0 and a control-free origin, and its body
 *                     re-made by tlog_checkpoint_body is the note's prefix
 *   'K' TEXT          tlog_vkey_parse; an accepted key re-formats to a key
 *                     that parses to the same name and public key
 *   'L' LEAF          tlog_leaf_decode; an accepted leaf re-encodes to
 *                     exactly the same bytes (the encoding is canonical)
 *   'P' a(8) b(8) HASHES...  tlog_verify_inclusion(a, b) and
 *                     tlog_verify_consistency(a, b) with the bytes as proof
 *                     and root hashes; must not read out of bounds or crash */
#include <string.h>

#include <openssl/evp.h>

#include "common/tlog.h"
#include "fuzz_common.h"

static uint8_t seed_pub[32];

static void init_key(void)
{
    static int done;
    uint8_t priv[32];
    size_t n = 32;
    if (done)
        return;
    memset(priv, 0x01, sizeof(priv));
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, priv, 32);
    FUZZ_CHECK(k != NULL && EVP_PKEY_get_raw_public_key(k, seed_pub, &n) == 1 && n == 32);
    EVP_PKEY_free(k);
    done = 1;
}

static void note(const uint8_t *p, size_t n)
{
    tlog_checkpoint cp;
    const char *why = NULL;
    init_key();
    if (tlog_checkpoint_open((const char *)p, n, TLOG_KEY_NAME, seed_pub, &cp, &why) != 0) {
        FUZZ_CHECK(why != NULL);
        return;
    }
    FUZZ_CHECK(cp.size >= 0 && cp.origin != NULL);
    for (const char *c = cp.origin; *c; c++)
        FUZZ_CHECK((unsigned char)*c >= 0x20 && *c != 0x7f);
    char *body = tlog_checkpoint_body(cp.origin, cp.size, cp.root);
    FUZZ_CHECK(strlen(body) <= n && memcmp(body, p, strlen(body)) == 0);
    free(body);
    tlog_checkpoint_clear(&cp);
}

static void vkey(const uint8_t *p, size_t n)
{
    char *text = malloc(n + 1), *name = NULL, *name2 = NULL;
    uint8_t pub[32], pub2[32];
    const char *why = NULL;
    memcpy(text, p, n);
    text[n] = '\0';
    if (tlog_vkey_parse(text, &name, pub, &why) == 0) {
        char *again = tlog_vkey_format(name, pub);
        FUZZ_CHECK(tlog_vkey_parse(again, &name2, pub2, &why) == 0);
        FUZZ_CHECK(strcmp(name, name2) == 0 && memcmp(pub, pub2, 32) == 0);
        free(again);
        free(name2);
    } else {
        FUZZ_CHECK(name == NULL && why != NULL);
    }
    free(name);
    free(text);
}

static void leaf(const uint8_t *p, size_t n)
{
    tlog_entry e;
    const char *why = NULL;
    if (tlog_leaf_decode(p, n, &e, &why) != 0) {
        FUZZ_CHECK(why != NULL);
        return;
    }
    uint8_t *out = NULL;
    size_t m = 0;
    tlog_leaf_encode(&e, &out, &m);
    FUZZ_CHECK(m == n && memcmp(out, p, n) == 0);
    free(out);
    tlog_entry_clear(&e);
}

static int64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v;
}

static void proof(const uint8_t *p, size_t n)
{
    tlog_hash hashes[TLOG_MAX_PROOF + 2];
    if (n < 16)
        return;
    int64_t a = get64(p), b = get64(p + 8);
    size_t k = (n - 16) / TLOG_HASH_LEN;
    if (k > TLOG_MAX_PROOF + 2)
        k = TLOG_MAX_PROOF + 2;
    memcpy(hashes, p + 16, k * TLOG_HASH_LEN);
    if (k < 2)
        return;
    /* The first two hashes are the leaf/old root and the root/new root. */
    (void)tlog_verify_inclusion(a, b, hashes[0], hashes + 2, k - 2, hashes[1]);
    (void)tlog_verify_consistency(a, b, hashes[0], hashes[1], hashes + 2, k - 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0]) {
    case 'N':
        note(data + 1, size - 1);
        break;
    case 'K':
        vkey(data + 1, size - 1);
        break;
    case 'L':
        leaf(data + 1, size - 1);
        break;
    case 'P':
        proof(data + 1, size - 1);
        break;
    }
    return 0;
}
