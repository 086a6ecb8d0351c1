/* AES-256-GCM envelope encryption under the master keyring (see secrets.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sodium.h>

#include "core/secrets.h"
#include "core/util.h"

#define KEYRING_MAGIC "qwick-keyring v1"
#define KEYRING_MAX_FILE (16u * 1024u)
#define BLOB_MAGIC "QKS1"

typedef struct keyring_key {
    uint32_t kid;
    int64_t created; /* unix seconds; 0: not recorded (keys older than the field) */
    uint8_t key[SECRETS_KEY_SIZE];
} keyring_key;

struct qk_keyring {
    size_t n;
    keyring_key *keys; /* sodium_malloc'd: guard pages, mlock'd, read-only after load */
    size_t current;    /* index of the sealing key (highest kid) */
};

static qk_err sodium_ready(void)
{
    if (sodium_init() < 0)
        return qk_fail(QK_ERR_CRYPTO, "libsodium initialisation failed");
    return QK_OK;
}

/* Parses the file text into `keys` (capacity SECRETS_MAX_KEYS). Works in place
 * on the caller's buffer, which the caller wipes. */
static qk_err parse_keyring(char *text, const char *path, keyring_key *keys, size_t *n)
{
    char *save = NULL;
    char *line = strtok_r(text, "\n", &save);
    *n = 0;
    if (line == NULL || strcmp(line, KEYRING_MAGIC) != 0)
        return qk_fail(QK_ERR_BAD_DER, "%s: not a qwick keyring", path);
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        char *sp = strchr(line, ' ');
        char *when = NULL, *end = NULL;
        size_t binlen = 0;
        if (line[0] == '#' || line[0] == '\0')
            continue;
        if (*n >= SECRETS_MAX_KEYS)
            return qk_fail(QK_ERR_TOO_LARGE, "%s: more than %u keys", path, SECRETS_MAX_KEYS);
        if (sp == NULL)
            return qk_fail(QK_ERR_BAD_DER, "%s: malformed key line", path);
        *sp = '\0';
        errno = 0;
        unsigned long kid = strtoul(line, &end, 10);
        if (errno != 0 || end == line || *end != '\0' || kid == 0 || kid > UINT32_MAX)
            return qk_fail(QK_ERR_BAD_DER, "%s: bad key id '%s'", path, line);
        /* Optional third field: when the key was made (unix seconds). */
        if ((when = strchr(sp + 1, ' ')) != NULL)
            *when++ = '\0';
        if (strlen(sp + 1) != 2 * SECRETS_KEY_SIZE ||
            sodium_hex2bin(keys[*n].key, SECRETS_KEY_SIZE, sp + 1, 2 * SECRETS_KEY_SIZE, NULL,
                           &binlen, NULL) != 0 ||
            binlen != SECRETS_KEY_SIZE)
            return qk_fail(QK_ERR_BAD_DER, "%s: key %lu is not 64 hex digits", path, kid);
        for (size_t i = 0; i < *n; i++)
            if (keys[i].kid == kid)
                return qk_fail(QK_ERR_BAD_DER, "%s: duplicate key id %lu", path, kid);
        keys[*n].created = 0;
        if (when != NULL) {
            errno = 0;
            long long t = strtoll(when, &end, 10);
            if (errno != 0 || end == when || *end != '\0' || t <= 0)
                return qk_fail(QK_ERR_BAD_DER, "%s: key %lu: bad creation time '%s'", path, kid,
                               when);
            keys[*n].created = (int64_t)t;
        }
        keys[*n].kid = (uint32_t)kid;
        (*n)++;
    }
    if (*n == 0)
        return qk_fail(QK_ERR_BAD_DER, "%s: no keys", path);
    return QK_OK;
}

/* Serialises keys into the file format. The result holds key material: the
 * caller wipes it (qk_buf_free). */
static void format_keyring(const keyring_key *keys, size_t n, qk_buf *out)
{
    size_t cap = sizeof(KEYRING_MAGIC) + 1 + n * (11 + 1 + 2 * SECRETS_KEY_SIZE + 1 + 21) + 1;
    char *p = xmalloc(cap);
    size_t len = (size_t)snprintf(p, cap, "%s\n", KEYRING_MAGIC);
    for (size_t i = 0; i < n; i++) {
        char hex[2 * SECRETS_KEY_SIZE + 1];
        sodium_bin2hex(hex, sizeof(hex), keys[i].key, SECRETS_KEY_SIZE);
        if (keys[i].created > 0)
            len += (size_t)snprintf(p + len, cap - len, "%" PRIu32 " %s %" PRId64 "\n", keys[i].kid,
                                    hex, keys[i].created);
        else
            len += (size_t)snprintf(p + len, cap - len, "%" PRIu32 " %s\n", keys[i].kid, hex);
        sodium_memzero(hex, sizeof(hex));
    }
    out->data = (uint8_t *)p;
    out->len = len;
}

qk_err keyring_create(const char *path)
{
    qk_err rc = sodium_ready();
    keyring_key *k = NULL;
    qk_buf text = {NULL, 0};

    if (rc != QK_OK)
        return rc;
    k = sodium_malloc(sizeof(*k));
    if (k == NULL)
        return qk_fail(QK_ERR_NOMEM, "sodium_malloc");
    k->kid = 1;
    k->created = (int64_t)time(NULL);
    randombytes_buf(k->key, sizeof(k->key));
    format_keyring(k, 1, &text);
    rc = file_create_excl(path, (qk_slice){text.data, text.len}, 0600);
    qk_buf_free(&text);
    sodium_free(k);
    return rc;
}

/* Reads and parses the file into a fresh sodium_malloc'd array. */
static qk_err read_keys(const char *path, keyring_key **out, size_t *n)
{
    qk_err rc = QK_ERR_IO;
    keyring_key *keys = NULL;
    qk_buf text = {NULL, 0};
    struct stat st;

    *out = NULL;
    *n = 0;
    if ((rc = sodium_ready()) != QK_OK)
        return rc;
    if (stat(path, &st) != 0)
        return qk_fail(QK_ERR_IO, "%s: %s", path, strerror(errno));
    /* Like ssh with private keys: a keyring others can read is refused. */
    if ((st.st_mode & 077) != 0)
        return qk_fail(QK_ERR_IO,
                       "master key %s has mode %04o: group or others can read it (want 0600: "
                       "chmod 600 %s)",
                       path, (unsigned)(st.st_mode & 07777), path);
    if ((rc = file_read_all(path, KEYRING_MAX_FILE, &text)) != QK_OK)
        return rc;
    keys = sodium_allocarray(SECRETS_MAX_KEYS, sizeof(*keys));
    if (keys == NULL) {
        rc = qk_fail(QK_ERR_NOMEM, "sodium_allocarray");
        goto out;
    }
    if ((rc = parse_keyring((char *)text.data, path, keys, n)) != QK_OK)
        goto out;
    *out = keys;
    keys = NULL;
out:
    qk_buf_free(&text);
    if (keys != NULL)
        sodium_free(keys);
    return rc;
}

qk_err keyring_load(const char *path, qk_keyring **out)
{
    qk_err rc = QK_ERR_IO;
    qk_keyring *kr = NULL;

    *out = NULL;
    kr = xcalloc(1, sizeof(*kr));
    if ((rc = read_keys(path, &kr->keys, &kr->n)) != QK_OK)
        goto out;
    for (size_t i = 1; i < kr->n; i++)
        if (kr->keys[i].kid > kr->keys[kr->current].kid)
            kr->current = i;
    /* Nothing writes the keys after load; a stray write now faults. */
    sodium_mprotect_readonly(kr->keys);
    *out = kr;
    kr = NULL;
    rc = QK_OK;
out:
    keyring_free(kr);
    return rc;
}

qk_err keyring_rotate(const char *path)
{
    qk_err rc = QK_ERR_IO;
    keyring_key *keys = NULL;
    size_t n = 0;
    uint32_t max = 0;
    qk_buf text = {NULL, 0};

    if ((rc = read_keys(path, &keys, &n)) != QK_OK)
        return rc;
    if (n >= SECRETS_MAX_KEYS) {
        rc = qk_fail(QK_ERR_TOO_LARGE, "%s: already %zu keys; retire old ones first", path, n);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (keys[i].kid > max)
            max = keys[i].kid;
    if (max == UINT32_MAX) {
        rc = qk_fail(QK_ERR_INVALID_ARG, "%s: key ids exhausted", path);
        goto out;
    }
    keys[n].kid = max + 1;
    keys[n].created = (int64_t)time(NULL);
    randombytes_buf(keys[n].key, SECRETS_KEY_SIZE);
    n++;
    format_keyring(keys, n, &text);
    if ((rc = file_replace(path, (qk_slice){text.data, text.len}, 0600)) != QK_OK)
        goto out;
out:
    qk_buf_free(&text);
    sodium_free(keys);
    return rc;
}

qk_err keyring_retire(const char *path, const uint32_t *kids, size_t nkids)
{
    qk_err rc = QK_ERR_IO;
    keyring_key *keys = NULL;
    size_t n = 0, kept = 0, newest = 0;
    qk_buf text = {NULL, 0};

    if ((rc = read_keys(path, &keys, &n)) != QK_OK)
        return rc;
    for (size_t i = 1; i < n; i++)
        if (keys[i].kid > keys[newest].kid)
            newest = i;
    for (size_t j = 0; j < nkids; j++) {
        size_t i = 0;
        while (i < n && keys[i].kid != kids[j])
            i++;
        if (i == n) {
            rc = qk_fail(QK_ERR_INVALID_ARG, "%s: no key %" PRIu32, path, kids[j]);
            goto out;
        }
        if (i == newest) {
            rc = qk_fail(QK_ERR_INVALID_ARG, "%s: key %" PRIu32 " seals new secrets; not retired",
                         path, kids[j]);
            goto out;
        }
    }
    /* Compact in place; the array is sodium_free'd (wiped) below either way. */
    for (size_t i = 0; i < n; i++) {
        int drop = 0;
        for (size_t j = 0; j < nkids; j++)
            drop |= keys[i].kid == kids[j];
        if (!drop)
            keys[kept++] = keys[i];
    }
    format_keyring(keys, kept, &text);
    rc = file_replace(path, (qk_slice){text.data, text.len}, 0600);
out:
    qk_buf_free(&text);
    sodium_free(keys);
    return rc;
}

size_t keyring_info_get(const qk_keyring *kr, keyring_info out[SECRETS_MAX_KEYS])
{
    size_t n = 0;
    for (size_t i = 0; i < kr->n; i++) {
        /* Insertion by kid: at most SECRETS_MAX_KEYS entries. */
        size_t j = n++;
        while (j > 0 && out[j - 1].kid > kr->keys[i].kid) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = (keyring_info){kr->keys[i].kid, kr->keys[i].created};
    }
    return n;
}

void keyring_free(qk_keyring *kr)
{
    if (kr == NULL)
        return;
    if (kr->keys != NULL)
        sodium_free(kr->keys); /* wipes, unlocks and unmaps */
    free(kr);
}

uint32_t keyring_current_kid(const qk_keyring *kr)
{
    return kr->keys[kr->current].kid;
}

static void put_u32be(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_u32be(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Feeds header || aad to the GCM context as associated data. */
static int gcm_aad(EVP_CIPHER_CTX *ctx, const uint8_t *hdr, const char *aad)
{
    int n = 0;
    if (EVP_CipherUpdate(ctx, NULL, &n, hdr, SECRETS_HEADER_SIZE) != 1)
        return 0;
    if (aad != NULL && aad[0] != '\0' &&
        EVP_CipherUpdate(ctx, NULL, &n, (const uint8_t *)aad, (int)strlen(aad)) != 1)
        return 0;
    return 1;
}

qk_err secrets_seal(const qk_keyring *kr, qk_slice plaintext, const char *aad, qk_buf *out)
{
    qk_err rc = QK_ERR_CRYPTO;
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t *blob = NULL;
    size_t total;
    int n = 0, m = 0;

    out->data = NULL;
    out->len = 0;
    if (plaintext.len > SECRETS_MAX_PLAINTEXT)
        return qk_fail(QK_ERR_TOO_LARGE, "secret larger than %u bytes", SECRETS_MAX_PLAINTEXT);
    const keyring_key *k = &kr->keys[kr->current];
    total = SECRETS_OVERHEAD + plaintext.len;
    blob = xmalloc(total);
    memcpy(blob, BLOB_MAGIC, 4);
    put_u32be(blob + 4, k->kid);
    uint8_t *nonce = blob + SECRETS_HEADER_SIZE;
    uint8_t *tag = nonce + SECRETS_NONCE_SIZE;
    uint8_t *ct = tag + SECRETS_TAG_SIZE;
    /* Random 96-bit nonces: safe for far more seals than a keyring will see
     * before rotation (NIST's 2^32 per key bound). */
    randombytes_buf(nonce, SECRETS_NONCE_SIZE);

    if ((ctx = EVP_CIPHER_CTX_new()) == NULL ||
        EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SECRETS_NONCE_SIZE, NULL) != 1 ||
        EVP_EncryptInit_ex(ctx, NULL, NULL, k->key, nonce) != 1 || !gcm_aad(ctx, blob, aad) ||
        EVP_EncryptUpdate(ctx, ct, &n, plaintext.data, (int)plaintext.len) != 1 ||
        EVP_EncryptFinal_ex(ctx, ct + n, &m) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SECRETS_TAG_SIZE, tag) != 1) {
        rc = qk_fail_ossl(QK_ERR_CRYPTO, "AES-256-GCM seal");
        goto out;
    }
    out->data = blob;
    out->len = total;
    blob = NULL;
    rc = QK_OK;
out:
    free(blob);
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

qk_err secrets_blob_kid(qk_slice sealed, uint32_t *kid)
{
    if (sealed.len < SECRETS_OVERHEAD)
        return qk_fail(QK_ERR_TRUNCATED, "sealed blob shorter than %u bytes", SECRETS_OVERHEAD);
    if (memcmp(sealed.data, BLOB_MAGIC, 4) != 0)
        return qk_fail(QK_ERR_BAD_DER, "not a sealed blob (bad magic)");
    *kid = get_u32be(sealed.data + 4);
    return QK_OK;
}

qk_err secrets_open(const qk_keyring *kr, qk_slice sealed, const char *aad, qk_buf *out)
{
    qk_err rc = QK_ERR_CRYPTO;
    EVP_CIPHER_CTX *ctx = NULL;
    const keyring_key *k = NULL;
    qk_buf pt = {NULL, 0};
    uint32_t kid = 0;
    int n = 0, m = 0;

    out->data = NULL;
    out->len = 0;
    if ((rc = secrets_blob_kid(sealed, &kid)) != QK_OK)
        return rc;
    if (sealed.len - SECRETS_OVERHEAD > SECRETS_MAX_PLAINTEXT)
        return qk_fail(QK_ERR_TOO_LARGE, "sealed blob larger than %u bytes", SECRETS_MAX_PLAINTEXT);
    for (size_t i = 0; i < kr->n; i++)
        if (kr->keys[i].kid == kid)
            k = &kr->keys[i];
    if (k == NULL)
        return qk_fail(QK_ERR_CRYPTO, "sealed with key id %" PRIu32 ", not in the keyring", kid);

    const uint8_t *nonce = sealed.data + SECRETS_HEADER_SIZE;
    const uint8_t *tag = nonce + SECRETS_NONCE_SIZE;
    const uint8_t *ct = tag + SECRETS_TAG_SIZE;
    size_t ctlen = sealed.len - SECRETS_OVERHEAD;
    pt.data = xmalloc(ctlen + 1);
    pt.len = ctlen;
    if ((ctx = EVP_CIPHER_CTX_new()) == NULL ||
        EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SECRETS_NONCE_SIZE, NULL) != 1 ||
        EVP_DecryptInit_ex(ctx, NULL, NULL, k->key, nonce) != 1 ||
        !gcm_aad(ctx, sealed.data, aad) ||
        EVP_DecryptUpdate(ctx, pt.data, &n, ct, (int)ctlen) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SECRETS_TAG_SIZE, (void *)tag) != 1) {
        rc = qk_fail_ossl(QK_ERR_CRYPTO, "AES-256-GCM open");
        goto out;
    }
    if (EVP_DecryptFinal_ex(ctx, pt.data + n, &m) != 1) {
        rc = qk_fail(QK_ERR_CRYPTO,
                     "sealed blob failed authentication (wrong key, AAD or tampered)");
        goto out;
    }
    pt.data[ctlen] = '\0'; /* PEM callers may treat it as a string */
    *out = pt;
    pt.data = NULL;
    pt.len = 0;
    rc = QK_OK;
out:
    qk_buf_free(&pt);
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

void secrets_aad_signing_key(char out[SECRETS_AAD_MAX], int64_t org)
{
    snprintf(out, SECRETS_AAD_MAX, "signing_key:org=%" PRId64, org);
}
