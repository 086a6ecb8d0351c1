/* src/common/tlog.c: Merkle proofs against an independent recursive
 * implementation and RFC 6962's reference tree, C2SP notes signed with
 * libsodium and checked with OpenSSL, leaf encoding round trips and every
 * truncation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>
#include <sodium.h>

#include "common/tlog.h"

#define MAXLEAVES 70

static tlog_hash leaves[MAXLEAVES];

/* MTH(D[a:b]) straight from RFC 6962 §2.1, over leaf hashes. */
static void mth(int64_t a, int64_t b, tlog_hash out)
{
    if (b - a == 1) {
        memcpy(out, leaves[a], 32);
        return;
    }
    int64_t k = 1;
    while (k * 2 < b - a)
        k *= 2;
    tlog_hash l, r;
    mth(a, a + k, l);
    mth(a + k, b, r);
    uint8_t buf[65] = {1};
    memcpy(buf + 1, l, 32);
    memcpy(buf + 33, r, 32);
    SHA256(buf, 65, out);
}

static int naive_get(void *arg, int level, int64_t index, tlog_hash out)
{
    int64_t n = *(int64_t *)arg, w = (int64_t)1 << level;
    if ((index + 1) * w > n)
        return -1; /* not a complete subtree of this tree */
    mth(index * w, (index + 1) * w, out);
    return 0;
}

static void make_leaves(void)
{
    for (int i = 0; i < MAXLEAVES; i++) {
        uint8_t b[4] = {(uint8_t)i, 0xab, (uint8_t)(i * 7), 0x01};
        tlog_leaf_hash(b, sizeof(b), leaves[i]);
    }
}

static void test_proofs_against_naive(void **state)
{
    (void)state;
    tlog_hash proof[TLOG_MAX_PROOF], root, want, rootm;
    size_t n;
    make_leaves();
    for (int64_t size = 1; size <= MAXLEAVES; size++) {
        assert_int_equal(tlog_root(naive_get, &size, size, root), 0);
        mth(0, size, want);
        assert_memory_equal(root, want, 32);
        for (int64_t i = 0; i < size; i++) {
            assert_int_equal(tlog_prove_inclusion(naive_get, &size, i, size, proof, &n), 0);
            assert_int_equal(tlog_verify_inclusion(i, size, leaves[i], proof, n, root), 0);
            /* Wrong index, wrong size, a flipped bit, a dropped hash. */
            if (size > 1)
                assert_int_not_equal(
                    tlog_verify_inclusion((i + 1) % size, size, leaves[i], proof, n, root), 0);
            if (i > 0) /* another leaf's hash */
                assert_int_not_equal(tlog_verify_inclusion(i, size, leaves[i - 1], proof, n, root),
                                     0);
            if (n > 0) {
                proof[n - 1][5] ^= 0x40;
                assert_int_not_equal(tlog_verify_inclusion(i, size, leaves[i], proof, n, root), 0);
                assert_int_not_equal(tlog_verify_inclusion(i, size, leaves[i], proof, n - 1, root),
                                     0);
            }
        }
        for (int64_t m = 1; m <= size; m++) {
            mth(0, m, rootm);
            assert_int_equal(tlog_prove_consistency(naive_get, &size, m, size, proof, &n), 0);
            assert_int_equal(tlog_verify_consistency(m, size, rootm, root, proof, n), 0);
            if (m < size) {
                tlog_hash other;
                memcpy(other, rootm, 32);
                other[0] ^= 1;
                assert_int_not_equal(tlog_verify_consistency(m, size, other, root, proof, n), 0);
                assert_int_not_equal(tlog_verify_consistency(m, size, rootm, other, proof, n), 0);
                assert_int_not_equal(tlog_verify_consistency(m, size, rootm, root, proof, n - 1),
                                     0);
            }
        }
    }
}

/* The reference tree of RFC 6962's test data (certificate-transparency's
 * merkle_tree_test): eight leaves, root 5dc9da79…4328. */
static void test_rfc6962_reference_root(void **state)
{
    (void)state;
    static const char *const data[8] = {
        "",
        "\x00",
        "\x10",
        "\x20\x21",
        "\x30\x31",
        "\x40\x41\x42\x43",
        "\x50\x51\x52\x53\x54\x55\x56\x57",
        "\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f"};
    static const size_t len[8] = {0, 1, 1, 2, 2, 4, 8, 16};
    static const uint8_t want[32] = {0x5d, 0xc9, 0xda, 0x79, 0xa7, 0x06, 0x59, 0xa9,
                                     0xad, 0x55, 0x9c, 0xb7, 0x01, 0xde, 0xd9, 0xa2,
                                     0xab, 0x9d, 0x82, 0x3a, 0xad, 0x2f, 0x49, 0x60,
                                     0xcf, 0xe3, 0x70, 0xef, 0xf4, 0x60, 0x43, 0x28};
    tlog_hash root;
    int64_t size = 8;
    for (int i = 0; i < 8; i++)
        tlog_leaf_hash((const uint8_t *)data[i], len[i], leaves[i]);
    assert_int_equal(tlog_root(naive_get, &size, 8, root), 0);
    assert_memory_equal(root, want, 32);
}

/* Appends complete nodes in exactly the order of tlog_pos: 0, 1, 2, ... */
static void test_pos_is_append_order(void **state)
{
    (void)state;
    int64_t next = 0;
    for (int64_t i = 0; i < 5000; i++) {
        assert_int_equal(tlog_pos(0, i), next++);
        int64_t idx = i;
        for (int level = 0; idx & 1; level++, idx >>= 1)
            assert_int_equal(tlog_pos(level + 1, idx >> 1), next++);
    }
}

static void keypair(uint8_t pub[32], uint8_t sk[64], uint8_t seedbyte)
{
    uint8_t seed[32];
    memset(seed, seedbyte, sizeof(seed));
    crypto_sign_seed_keypair(pub, sk, seed);
}

static char *signed_note(const char *body, const uint8_t pub[32], const uint8_t sk[64])
{
    uint8_t sig[64];
    crypto_sign_detached(sig, NULL, (const uint8_t *)body, strlen(body), sk);
    return tlog_note_format(body, TLOG_KEY_NAME, pub, sig);
}

static void test_vkey_round_trip(void **state)
{
    (void)state;
    uint8_t pub[32], sk[64], got[32];
    char *name = NULL;
    const char *why = NULL;
    keypair(pub, sk, 7);
    char *vkey = tlog_vkey_format(TLOG_KEY_NAME, pub);
    assert_int_equal(tlog_vkey_parse(vkey, &name, got, &why), 0);
    assert_string_equal(name, TLOG_KEY_NAME);
    assert_memory_equal(got, pub, 32);
    free(name);
    /* A wrong id, a wrong algorithm byte, junk. */
    char *bad = strdup(vkey);
    bad[strlen(TLOG_KEY_NAME) + 1] = bad[strlen(TLOG_KEY_NAME) + 1] == '0' ? '1' : '0';
    assert_int_equal(tlog_vkey_parse(bad, &name, got, &why), -1);
    assert_null(name);
    assert_int_equal(tlog_vkey_parse("qwickd-log", &name, got, &why), -1);
    assert_int_equal(tlog_vkey_parse("a+0000000+AAAA", &name, got, &why), -1);
    assert_int_equal(tlog_vkey_parse("a b+00000000+AQ==", &name, got, &why), -1);
    free(bad);
    free(vkey);
}

static void test_checkpoint_open(void **state)
{
    (void)state;
    uint8_t pub[32], sk[64], pub2[32], sk2[64], root[32];
    tlog_checkpoint cp;
    const char *why = NULL;
    memset(root, 0x42, sizeof(root));
    keypair(pub, sk, 1);
    keypair(pub2, sk2, 2);
    char *body = tlog_checkpoint_body("qwickd-test/org/1", 12345, root);
    char *note = signed_note(body, pub, sk);
    assert_int_equal(tlog_checkpoint_open(note, strlen(note), TLOG_KEY_NAME, pub, &cp, &why), 0);
    assert_string_equal(cp.origin, "qwickd-test/org/1");
    assert_int_equal(cp.size, 12345);
    assert_memory_equal(cp.root, root, 32);
    tlog_checkpoint_clear(&cp);

    /* Another key: not signed by it. */
    assert_int_equal(tlog_checkpoint_open(note, strlen(note), TLOG_KEY_NAME, pub2, &cp, &why), -1);
    assert_string_equal(why, "checkpoint is not signed by the log key");
    /* Any byte of the body changed: the signature fails. */
    for (size_t i = 0; i < strlen(body); i++) {
        char *t = strdup(note);
        t[i] = t[i] == '1' ? '2' : '1';
        assert_int_equal(tlog_checkpoint_open(t, strlen(t), TLOG_KEY_NAME, pub, &cp, &why), -1);
        free(t);
    }
    /* Every truncation fails. */
    for (size_t n = 0; n < strlen(note); n++)
        assert_int_equal(tlog_checkpoint_open(note, n, TLOG_KEY_NAME, pub, &cp, &why), -1);
    /* A second signature line by another key is allowed (witnesses). */
    char *two = NULL;
    {
        uint8_t sig[64];
        crypto_sign_detached(sig, NULL, (const uint8_t *)body, strlen(body), sk2);
        char *other = tlog_note_format(body, "witness", pub2, sig);
        const char *line = strstr(other, "\n\n") + 2;
        two = malloc(strlen(note) + strlen(line) + 1);
        strcpy(two, note);
        strcat(two, line);
        free(other);
    }
    assert_int_equal(tlog_checkpoint_open(two, strlen(two), TLOG_KEY_NAME, pub, &cp, &why), 0);
    tlog_checkpoint_clear(&cp);
    free(two);
    free(note);
    free(body);
}

static void test_leaf_round_trip(void **state)
{
    (void)state;
    tlog_entry e = {.version = 2,
                    .org_id = 3,
                    .seq = 99,
                    .ts = 1700000000123,
                    .outcome = 1,
                    .actor = "apikey:4",
                    .client_ip = "127.0.0.1",
                    .action = "sign.digest",
                    .request_id = "req_1",
                    .format = "authenticode-pe",
                    .algorithm = "sha256",
                    .digest_hex = "00ff",
                    .profile = "release",
                    .filename = "",
                    .signer_fp = NULL,
                    .sig_sha256 = "ab",
                    .sigval_sha256 = "cd",
                    .detail = "role may not sign",
                    .meta = "{\"k\":1}"};
    uint8_t *leaf = NULL;
    size_t n = 0;
    tlog_entry d;
    const char *why = NULL;
    for (int v = 1; v <= 2; v++) {
        e.version = v;
        tlog_leaf_encode(&e, &leaf, &n);
        assert_int_equal(tlog_leaf_decode(leaf, n, &d, &why), 0);
        assert_int_equal(d.version, v);
        assert_int_equal(d.seq, 99);
        assert_int_equal(d.ts, 1700000000123);
        assert_string_equal(d.action, "sign.digest");
        assert_string_equal(d.filename, ""); /* "" stays apart from NULL */
        if (v == 2) {
            assert_null(d.signer_fp);
            assert_string_equal(d.meta, "{\"k\":1}");
        }
        tlog_entry_clear(&d);
        for (size_t k = 0; k < n; k++)
            assert_int_equal(tlog_leaf_decode(leaf, k, &d, &why), -1);
        leaf = realloc(leaf, n + 1);
        leaf[n] = 0;
        assert_int_equal(tlog_leaf_decode(leaf, n + 1, &d, &why), -1);
        assert_string_equal(why, "trailing bytes after log entry");
        free(leaf);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proofs_against_naive), cmocka_unit_test(test_rfc6962_reference_root),
        cmocka_unit_test(test_pos_is_append_order),  cmocka_unit_test(test_vkey_round_trip),
        cmocka_unit_test(test_checkpoint_open),      cmocka_unit_test(test_leaf_round_trip),
    };
    if (sodium_init() < 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
