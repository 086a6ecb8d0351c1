/* The transparency log's shared pieces, used by qwickd (which builds proofs
 * and signs checkpoints) and by the qwick CLI (which checks them):
 *
 * - RFC 6962/9162 Merkle tree hashing, proof construction over a node
 *   source and proof verification;
 * - the position of a complete subtree in the append-only node store;
 * - C2SP signed-note checkpoints (body, Ed25519 verifier keys, parsing and
 *   verification);
 * - the canonical, versioned encoding of one audit entry (a leaf).
 *
 * Everything that reads bytes from the network (notes, keys, leaves, proofs)
 * is bounds-checked and fuzzed (tests/fuzz/fuzz_tlog.c). */
#ifndef QWICK_COMMON_TLOG_H
#define QWICK_COMMON_TLOG_H

#include <stddef.h>
#include <stdint.h>

#define TLOG_HASH_LEN 32
/* Proofs never hold more hashes than a tree of 2^63 leaves needs. */
#define TLOG_MAX_PROOF 64
/* Caps on untrusted inputs. */
#define TLOG_MAX_NOTE 4096
#define TLOG_MAX_LEAF 65536
#define TLOG_KEY_NAME "qwickd-log"

typedef uint8_t tlog_hash[TLOG_HASH_LEN];

/* SHA-256(0x00 || leaf) and SHA-256(0x01 || left || right). */
void tlog_leaf_hash(const uint8_t *leaf, size_t n, tlog_hash out);
void tlog_node_hash(const tlog_hash left, const tlog_hash right, tlog_hash out);

/* Position in postorder of the complete subtree at `level` (0: a leaf)
 * covering leaves [index * 2^level, (index + 1) * 2^level): nodes are stored
 * in the order appends complete them, so the store only ever appends. */
int64_t tlog_pos(int level, int64_t index);

/* A source of complete-subtree hashes: get(arg, level, index, out) returns 0
 * and fills out, or -1 (store failure, or the node is missing). */
typedef int (*tlog_node_fn)(void *arg, int level, int64_t index, tlog_hash out);

/* Root of the tree of the first `size` leaves (size >= 1). 0 ok, -1 on a get
 * failure. */
int tlog_root(tlog_node_fn get, void *arg, int64_t size, tlog_hash out);
/* RFC 9162 inclusion proof of leaf `index` in the tree of `size` leaves, and
 * consistency proof between sizes `from` and `to` (0 < from <= to). Hashes go
 * to out (TLOG_MAX_PROOF of them at most), their count to *n. 0 ok, -1 on a
 * get failure or bad arguments. */
int tlog_prove_inclusion(tlog_node_fn get, void *arg, int64_t index, int64_t size, tlog_hash *out,
                         size_t *n);
int tlog_prove_consistency(tlog_node_fn get, void *arg, int64_t from, int64_t to, tlog_hash *out,
                           size_t *n);

/* Proof checks (RFC 9162 §2.1.3.2 and §2.1.4.2). 0 when the proof holds. */
int tlog_verify_inclusion(int64_t index, int64_t size, const tlog_hash leaf_hash,
                          const tlog_hash *proof, size_t n, const tlog_hash root);
int tlog_verify_consistency(int64_t from, int64_t to, const tlog_hash root_from,
                            const tlog_hash root_to, const tlog_hash *proof, size_t n);

/* ---- checkpoints (C2SP tlog-checkpoint in a C2SP signed note) ---------- */

/* Key id of an Ed25519 note key: the first 4 bytes of
 * SHA-256(name || "\n" || 0x01 || pub), big-endian. */
uint32_t tlog_key_id(const char *name, const uint8_t pub[32]);
/* The verifier key "<name>+<8 hex>+<base64(0x01 || pub)>" as a heap string. */
char *tlog_vkey_format(const char *name, const uint8_t pub[32]);
/* Parses a verifier key; name gets a heap copy. 0 ok, -1 with *why set. */
int tlog_vkey_parse(const char *vkey, char **name, uint8_t pub[32], const char **why);

/* The checkpoint body "<origin>\n<size>\n<base64 root>\n" (heap string). */
char *tlog_checkpoint_body(const char *origin, int64_t size, const tlog_hash root);
/* The signed note: body, a blank line, "— <name> <base64(id || sig)>\n". */
char *tlog_note_format(const char *body, const char *name, const uint8_t pub[32],
                       const uint8_t sig[64]);

typedef struct tlog_checkpoint {
    char *origin;
    int64_t size;
    tlog_hash root;
} tlog_checkpoint;

/* Parses the signed note `note` (len bytes) and checks that one of its
 * signature lines is by the key (name, pub) and verifies. 0 ok with *out
 * filled (free with tlog_checkpoint_clear); -1 with *why naming the problem
 * (malformed note, no signature by this key, bad signature). */
int tlog_checkpoint_open(const char *note, size_t len, const char *name, const uint8_t pub[32],
                         tlog_checkpoint *out, const char **why);
void tlog_checkpoint_clear(tlog_checkpoint *c);

/* ---- leaves: one audit entry, canonical and versioned ------------------ */

/* Version 1: entries written before the log existed (fields of the old hash
 * chain). Version 2: the whole entry. Strings may be NULL (absent, which is
 * encoded apart from ""); integers are 8-byte big-endian, strings a u32
 * length (0xFFFFFFFF for NULL) then the bytes, after a 14-byte tag
 * "qwick-audit-v1" or "qwick-audit-v2". */
typedef struct tlog_entry {
    int version;
    int64_t org_id;
    int64_t seq; /* 1-based: the leaf index is seq - 1 */
    int64_t ts;  /* unix milliseconds */
    int64_t outcome;
    char *actor, *client_ip, *action, *request_id, *format, *algorithm, *digest_hex, *profile,
        *filename, *signer_fp, *sig_sha256, *sigval_sha256, *detail, *meta;
} tlog_entry;

/* Encodes e into a heap buffer (*out, *n). */
void tlog_leaf_encode(const tlog_entry *e, uint8_t **out, size_t *n);
/* Decodes a leaf into *e (heap strings; tlog_entry_clear frees them). 0 ok,
 * -1 with *why (truncated, trailing bytes, unknown version, NUL in a
 * string, over TLOG_MAX_LEAF). */
int tlog_leaf_decode(const uint8_t *p, size_t n, tlog_entry *e, const char **why);
void tlog_entry_clear(tlog_entry *e);

#endif
