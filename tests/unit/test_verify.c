/* Unit tests of lib/verify*.c: Authenticode signatures made by an independent
 * signer (osslsigncode) over a synthetic PE, detached CMS made by `openssl
 * cms`, and hostile variants of both. The test PKI is generated per run in a
 * temporary directory with the openssl command-line tool. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "qwick/authenticode.h"
#include "qwick/pe.h"
#include "qwick/tsp.h"
#include "qwick/verify.h"
#include "sig_testutil.h"

static char dir[64];
static int have_tools;

/* --- helpers -------------------------------------------------------------- */

static const char *path(const char *name)
{
    static char bufs[8][256];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof(bufs[0]), "%s/%s", dir, name);
    return b;
}

/* Runs a shell command inside the temporary directory; output goes to a log
 * that is printed when the command fails. */
__attribute__((format(printf, 1, 2))) static int run(const char *fmt, ...)
{
    char cmd[2048], full[2600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    snprintf(full, sizeof(full), "cd '%s' && (%s) >run.log 2>&1", dir, cmd);
    int rc = system(full);
    if (rc != 0) {
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
        snprintf(full, sizeof(full), "cat '%s/run.log' >&2", dir);
        (void)system(full);
    }
    return rc;
}

static void load(const char *name, qk_buf *out)
{
    FILE *f = fopen(path(name), "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n > 0);
    rewind(f);
    out->data = malloc((size_t)n);
    assert_non_null(out->data);
    out->len = (size_t)n;
    assert_int_equal(fread(out->data, 1, out->len, f), out->len);
    fclose(f);
}

static void save(const char *name, const uint8_t *p, size_t n)
{
    FILE *f = fopen(path(name), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)v);
    put16(p + 2, (uint16_t)(v >> 16));
}

/* A minimal PE32+ image: headers, one .text section, and a 3-byte overlay so
 * the file length is not a multiple of 8 (the signer pads it). */
#define PE_LEN 0x403
static void make_pe(uint8_t *b)
{
    memset(b, 0, PE_LEN);
    b[0] = 'M';
    b[1] = 'Z';
    put32(b + 0x3c, 0x40);
    memcpy(b + 0x40, "PE\0\0", 4);
    put16(b + 0x44, 0x8664); /* machine */
    put16(b + 0x46, 1);      /* sections */
    put16(b + 0x54, 240);    /* SizeOfOptionalHeader */
    put16(b + 0x56, 0x22);   /* executable, large address aware */
    uint8_t *o = b + 0x58;
    put16(o, 0x20b);
    put32(o + 16, 0x1000); /* entry point */
    o[24 + 6] = 0x40;      /* ImageBase 0x140000000 */
    o[24 + 4] = 0x01;
    put32(o + 32, 0x1000); /* SectionAlignment */
    put32(o + 36, 0x200);  /* FileAlignment */
    put16(o + 48, 6);      /* subsystem version */
    put32(o + 56, 0x2000); /* SizeOfImage */
    put32(o + 60, 0x200);  /* SizeOfHeaders */
    put16(o + 68, 3);      /* console */
    put32(o + 108, 16);    /* NumberOfRvaAndSizes */
    uint8_t *s = o + 240;
    memcpy(s, ".text", 5);
    put32(s + 8, 0x200);
    put32(s + 12, 0x1000);
    put32(s + 16, 0x200);
    put32(s + 20, 0x200);
    put32(s + 36, 0x60000020);
    for (int i = 0; i < 0x200; i++)
        b[0x200 + i] = (uint8_t)(i * 7 + 3);
    b[0x200] = 0xc3;
    memcpy(b + 0x400, "OVL", 3);
}

/* A certificate for `cn` signed by `ca`, with extra -addext arguments. */
static int mkcert(const char *name, const char *cn, const char *ca, const char *keyspec,
                  const char *days, const char *exts)
{
    if (ca == NULL)
        return run("openssl req -x509 -newkey %s -nodes -keyout %s.key -out %s.pem "
                   "-subj '/CN=%s/O=Qwick Test' -days %s %s",
                   keyspec, name, name, cn, days, exts);
    return run("openssl req -x509 -newkey %s -nodes -keyout %s.key -out %s.pem "
               "-subj '/CN=%s/O=Qwick Test' -days %s -CA %s.pem -CAkey %s.key %s",
               keyspec, name, name, cn, days, ca, ca, exts);
}

#define EC "ec -pkeyopt ec_paramgen_curve:P-256"
#define CA_EXT "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
#define LEAF_EXT "-addext basicConstraints=CA:FALSE -addext keyUsage=critical,digitalSignature"

static int sign(const char *cert, const char *key, const char *alg, const char *in, const char *out,
                const char *extra)
{
    return run("osslsigncode sign -certs %s -key %s -h %s %s -in %s -out %s", cert, key, alg,
               extra ? extra : "", in, out);
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int setup(void **state)
{
    (void)state;
    uint8_t pe[PE_LEN];

    strcpy(dir, "/tmp/qk-test-verify-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    if (system("command -v osslsigncode >/dev/null && command -v openssl >/dev/null") != 0)
        return 0; /* tests skip */
    make_pe(pe);
    save("unsigned.exe", pe, sizeof(pe));
    if (mkcert("root", "Qwick Test Root", NULL, EC, "3650", CA_EXT) ||
        mkcert("other-root", "Other Root", NULL, EC, "3650", CA_EXT) ||
        mkcert("leaf", "Qwick Leaf", "root", "rsa:2048", "365",
               LEAF_EXT " -addext extendedKeyUsage=codeSigning") ||
        mkcert("ecleaf", "Qwick EC Leaf", "root", EC, "365",
               LEAF_EXT " -addext extendedKeyUsage=codeSigning") ||
        mkcert("otherleaf", "Other Leaf", "other-root", EC, "365",
               LEAF_EXT " -addext extendedKeyUsage=codeSigning") ||
        mkcert("tlsleaf", "TLS Leaf", "root", EC, "365",
               LEAF_EXT " -addext extendedKeyUsage=serverAuth") ||
        mkcert("noekuleaf", "No EKU Leaf", "root", EC, "365", LEAF_EXT) ||
        mkcert("kuleaf", "Key Agreement Leaf", "root", EC, "365",
               "-addext basicConstraints=CA:FALSE -addext keyUsage=critical,keyAgreement "
               "-addext extendedKeyUsage=codeSigning") ||
        mkcert("tlsca", "TLS Intermediate", "root", EC, "3650",
               CA_EXT " -addext extendedKeyUsage=serverAuth") ||
        mkcert("subleaf", "Sub Leaf", "tlsca", EC, "365",
               LEAF_EXT " -addext extendedKeyUsage=codeSigning") ||
        mkcert("tsa", "Qwick TSA", "root", EC, "3650",
               LEAF_EXT " -addext extendedKeyUsage=critical,timeStamping") ||
        run("cat subleaf.pem tlsca.pem > subchain.pem"))
        return -1;
    if (sign("leaf.pem", "leaf.key", "sha256", "unsigned.exe", "rsa256.exe", NULL) ||
        sign("leaf.pem", "leaf.key", "sha1", "unsigned.exe", "rsa1.exe", NULL) ||
        sign("leaf.pem", "leaf.key", "sha384", "unsigned.exe", "rsa384.exe", NULL) ||
        sign("leaf.pem", "leaf.key", "sha512", "unsigned.exe", "rsa512.exe", NULL) ||
        sign("ecleaf.pem", "ecleaf.key", "sha256", "unsigned.exe", "ec256.exe", NULL) ||
        sign("otherleaf.pem", "otherleaf.key", "sha256", "unsigned.exe", "other.exe", NULL) ||
        sign("tlsleaf.pem", "tlsleaf.key", "sha256", "unsigned.exe", "tls.exe", NULL) ||
        sign("noekuleaf.pem", "noekuleaf.key", "sha256", "unsigned.exe", "noeku.exe", NULL) ||
        sign("kuleaf.pem", "kuleaf.key", "sha256", "unsigned.exe", "ku.exe", NULL) ||
        sign("subchain.pem", "subleaf.key", "sha256", "unsigned.exe", "sub.exe", NULL) ||
        sign("leaf.pem", "leaf.key", "sha256", "unsigned.exe", "ts.exe",
             "-TSA-certs tsa.pem -TSA-key tsa.key") ||
        sign("ecleaf.pem", "ecleaf.key", "sha1", "ts.exe", "nested.exe", "-nest") ||
        sign("ecleaf.pem", "ecleaf.key", "sha512", "nested.exe", "nested2.exe", "-nest"))
        return -1;
    have_tools = 1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (dir[0] != '\0')
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

#define NEED_TOOLS()                                                                               \
    do {                                                                                           \
        if (!have_tools)                                                                           \
            skip();                                                                                \
    } while (0)

static qk_verify_report *verify_mem(const uint8_t *d, size_t n, const char *ca, const char *tsa)
{
    qk_pe *pe = NULL;
    qk_verify_report *r = NULL;
    qk_verify_opts o = {ca ? path(ca) : NULL, tsa ? path(tsa) : NULL};
    assert_int_equal(qk_pe_parse_mem(d, n, &pe), QK_OK);
    assert_int_equal(qk_verify_pe(pe, &o, &r), QK_OK);
    assert_non_null(r);
    /* Invariant: error is NULL exactly when the signature is fully valid. */
    int all = r->nsigs > 0 && r->error == NULL;
    for (size_t i = 0; i < r->nsigs; i++) {
        const qk_sig_result *s = &r->sigs[i];
        int ok = s->digest_ok && s->message_digest_ok && s->signature_ok && s->chain_ok &&
                 (s->timestamp == NULL || s->timestamp->ok);
        assert_int_equal(ok, s->error == NULL);
        assert_int_equal(s->index, (int)i);
        all = all && ok;
    }
    assert_int_equal(r->valid, all);
    qk_pe_free(pe);
    return r;
}

static qk_verify_report *verify_file(const char *name, const char *ca, const char *tsa)
{
    qk_buf b;
    load(name, &b);
    qk_verify_report *r = verify_mem(b.data, b.len, ca, tsa);
    free(b.data);
    return r;
}

static void assert_all_ok(const qk_sig_result *s)
{
    if (s->error != NULL)
        fprintf(stderr, "unexpected error: %s\n", s->error);
    assert_null(s->error);
    assert_true(s->digest_ok && s->message_digest_ok && s->signature_ok && s->chain_ok);
}

/* --- Authenticode --------------------------------------------------------- */

static void test_valid_algorithms(void **state)
{
    (void)state;
    NEED_TOOLS();
    static const struct {
        const char *file;
        qk_hash_alg alg;
    } cases[] = {
        {"rsa256.exe", QK_HASH_SHA256}, {"rsa1.exe", QK_HASH_SHA1},
        {"rsa384.exe", QK_HASH_SHA384}, {"rsa512.exe", QK_HASH_SHA512},
        {"ec256.exe", QK_HASH_SHA256},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        qk_verify_report *r = verify_file(cases[i].file, "root.pem", NULL);
        assert_true(r->valid);
        assert_null(r->error);
        assert_int_equal(r->nsigs, 1);
        assert_all_ok(&r->sigs[0]);
        assert_int_equal(r->sigs[0].digest_alg, cases[i].alg);
        assert_false(r->sigs[0].nested);
        assert_null(r->sigs[0].timestamp);
        assert_non_null(strstr(r->sigs[0].signer, "CN=Qwick"));
        assert_string_equal(r->sigs[0].issuer, "O=Qwick Test, CN=Qwick Test Root");
        qk_verify_report_free(r);
    }
}

static void test_unsigned(void **state)
{
    (void)state;
    NEED_TOOLS();
    qk_verify_report *r = verify_file("unsigned.exe", "root.pem", NULL);
    assert_false(r->valid);
    assert_int_equal(r->nsigs, 0);
    assert_string_equal(r->error, "file is not signed");
    qk_verify_report_free(r);
}

static void test_tampered_image(void **state)
{
    (void)state;
    NEED_TOOLS();
    qk_buf b;
    load("rsa256.exe", &b);
    b.data[0x210] ^= 0x01; /* inside .text, covered by the image digest */
    qk_verify_report *r = verify_mem(b.data, b.len, "root.pem", NULL);
    assert_false(r->valid);
    assert_false(r->sigs[0].digest_ok);
    assert_true(r->sigs[0].message_digest_ok);
    assert_true(r->sigs[0].signature_ok);
    assert_true(r->sigs[0].chain_ok);
    assert_string_equal(r->sigs[0].error, "image digest mismatch");
    qk_verify_report_free(r);
    free(b.data);
}

/* Offset of the first occurrence of needle in the buffer. */
static size_t find(const qk_buf *b, const uint8_t *needle, size_t n)
{
    const uint8_t *p = memmem(b->data, b->len, needle, n);
    assert_non_null(p);
    return (size_t)(p - b->data);
}

static PKCS7 *first_p7(const qk_buf *b)
{
    qk_pe *pe = NULL;
    assert_int_equal(qk_pe_parse_mem(b->data, b->len, &pe), QK_OK);
    const qk_pe_cert *c = qk_pe_cert_get(pe, 0);
    assert_non_null(c);
    const unsigned char *p = c->data.data;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)c->data.len);
    assert_non_null(p7);
    qk_pe_free(pe);
    return p7;
}

static void test_tampered_signature(void **state)
{
    (void)state;
    NEED_TOOLS();
    qk_buf b;
    load("rsa256.exe", &b);
    PKCS7 *p7 = first_p7(&b);
    PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
    size_t at = find(&b, si->enc_digest->data, (size_t)si->enc_digest->length);
    b.data[at + 100] ^= 0x40;
    PKCS7_free(p7);
    qk_verify_report *r = verify_mem(b.data, b.len, "root.pem", NULL);
    assert_false(r->valid);
    assert_true(r->sigs[0].digest_ok);
    assert_true(r->sigs[0].message_digest_ok);
    assert_false(r->sigs[0].signature_ok);
    assert_true(r->sigs[0].chain_ok);
    assert_string_equal(r->sigs[0].error, "signature verification failed");
    qk_verify_report_free(r);
    free(b.data);
}

/* Changing the signed image digest inside SpcIndirectDataContent breaks both
 * the image digest comparison and the messageDigest attribute. */
static void test_tampered_content(void **state)
{
    (void)state;
    NEED_TOOLS();
    qk_buf b;
    uint8_t md[QK_HASH_MAX_SIZE];
    qk_pe *pe = NULL;
    load("rsa256.exe", &b);
    assert_int_equal(qk_pe_parse_mem(b.data, b.len, &pe), QK_OK);
    assert_int_equal(qk_pe_digest(pe, QK_HASH_SHA256, md), QK_OK);
    qk_pe_free(pe);
    b.data[find(&b, md, 32) + 5] ^= 0x80;
    qk_verify_report *r = verify_mem(b.data, b.len, "root.pem", NULL);
    assert_false(r->valid);
    assert_false(r->sigs[0].digest_ok);
    assert_false(r->sigs[0].message_digest_ok);
    assert_true(r->sigs[0].signature_ok);
    assert_true(r->sigs[0].chain_ok);
    assert_string_equal(r->sigs[0].error, "image digest mismatch");
    qk_verify_report_free(r);
    free(b.data);
}

static void test_unknown_root(void **state)
{
    (void)state;
    NEED_TOOLS();
    qk_verify_report *r = verify_file("other.exe", "root.pem", NULL);
    assert_false(r->valid);
    assert_true(r->sigs[0].digest_ok);
    assert_true(r->sigs[0].message_digest_ok);
    assert_true(r->sigs[0].signature_ok);
    assert_false(r->sigs[0].chain_ok);
    assert_string_equal(r->sigs[0].error,
                        "certificate chain: unable to get local issuer certificate");
    qk_verify_report_free(r);
    /* The same file is fine against its own root. */
    r = verify_file("other.exe", "other-root.pem", NULL);
    assert_true(r->valid);
    qk_verify_report_free(r);
}

static void test_eku(void **state)
{
    (void)state;
    NEED_TOOLS();
    static const char *const bad[] = {"tls.exe", "noeku.exe"};
    for (size_t i = 0; i < 2; i++) {
        qk_verify_report *r = verify_file(bad[i], "root.pem", NULL);
        assert_false(r->valid);
        assert_true(r->sigs[0].digest_ok && r->sigs[0].signature_ok);
        assert_false(r->sigs[0].chain_ok);
        assert_string_equal(r->sigs[0].error,
                            "certificate chain: signer certificate lacks the codeSigning "
                            "extended key usage");
        qk_verify_report_free(r);
    }
    qk_verify_report *k = verify_file("ku.exe", "root.pem", NULL);
    assert_false(k->valid);
    assert_true(k->sigs[0].signature_ok);
    assert_string_equal(k->sigs[0].error, "certificate chain: signer certificate's key usage "
                                          "does not allow signatures");
    qk_verify_report_free(k);
    /* An intermediate whose EKU excludes codeSigning cannot issue signers. */
    qk_verify_report *r = verify_file("sub.exe", "root.pem", NULL);
    assert_false(r->valid);
    assert_false(r->sigs[0].chain_ok);
    assert_string_equal(r->sigs[0].error,
                        "certificate chain: an issuing certificate does not allow codeSigning");
    qk_verify_report_free(r);
}

static void test_nested(void **state)
{
    (void)state;
    NEED_TOOLS();
    qk_verify_report *r = verify_file("nested.exe", "root.pem", NULL);
    assert_true(r->valid);
    assert_int_equal(r->nsigs, 2);
    assert_false(r->sigs[0].nested);
    assert_true(r->sigs[1].nested);
    assert_int_equal(r->sigs[0].digest_alg, QK_HASH_SHA256);
    assert_int_equal(r->sigs[1].digest_alg, QK_HASH_SHA1);
    assert_all_ok(&r->sigs[1]);
    assert_non_null(strstr(r->sigs[1].signer, "CN=Qwick EC Leaf"));
    qk_verify_report_free(r);

    r = verify_file("nested2.exe", "root.pem", NULL);
    assert_true(r->valid);
    assert_int_equal(r->nsigs, 3);
    assert_true(r->sigs[1].nested && r->sigs[2].nested);
    qk_verify_report_free(r);
}

static void test_timestamp(void **state)
{
    (void)state;
    NEED_TOOLS();
    qk_verify_report *r = verify_file("ts.exe", "root.pem", NULL);
    assert_true(r->valid);
    const qk_ts_result *ts = r->sigs[0].timestamp;
    assert_non_null(ts);
    assert_true(ts->ok);
    assert_null(ts->error);
    int64_t now = (int64_t)time(NULL);
    assert_true(ts->time > now - 3600 && ts->time <= now + 60);
    assert_int_equal(strlen(ts->time_str), 20);
    assert_int_equal(ts->time_str[10], 'T');
    assert_int_equal(ts->time_str[19], 'Z');
    qk_verify_report_free(r);

    /* Untrusted TSA root: the timestamp fails, and with it the signature. */
    r = verify_file("ts.exe", "root.pem", "other-root.pem");
    assert_false(r->valid);
    assert_non_null(r->sigs[0].timestamp);
    assert_false(r->sigs[0].timestamp->ok);
    assert_true(r->sigs[0].digest_ok && r->sigs[0].signature_ok && r->sigs[0].chain_ok);
    assert_non_null(strstr(r->sigs[0].error, "timestamp: timestamp certificate chain"));
    qk_verify_report_free(r);
}

/* The code-signing chain is judged at the timestamp's time: a genTime after
 * the leaf expires makes it fail. */
static void test_timestamp_time_used(void **state)
{
    (void)state;
    NEED_TOOLS();
    char late[32];
    snprintf(late, sizeof(late), "%lld", (long long)time(NULL) + 2 * 366 * 86400LL);
    assert_int_equal(run("osslsigncode sign -certs leaf.pem -key leaf.key -h sha256 "
                         "-TSA-certs tsa.pem -TSA-key tsa.key -TSA-time %s "
                         "-in unsigned.exe -out late.exe",
                         late),
                     0);
    qk_verify_report *r = verify_file("late.exe", "root.pem", NULL);
    assert_false(r->valid);
    assert_true(r->sigs[0].timestamp->ok);
    assert_false(r->sigs[0].chain_ok);
    assert_string_equal(r->sigs[0].error, "certificate chain: certificate has expired");
    qk_verify_report_free(r);
}

static X509 *read_cert(const char *name)
{
    FILE *f = fopen(path(name), "r");
    assert_non_null(f);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(x);
    return x;
}

static EVP_PKEY *read_key(const char *name)
{
    FILE *f = fopen(path(name), "r");
    assert_non_null(f);
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(k);
    return k;
}

/* A certificate with an arbitrary validity window, which `openssl req`
 * cannot produce: issued by (issuer, ikey), or self-signed when issuer is
 * NULL. Writes NAME.pem and NAME.key; returns the certificate and its key. */
static X509 *backdated_cert(const char *name, const char *cn, X509 *issuer, EVP_PKEY *ikey,
                            int64_t not_before, int64_t not_after, const char *eku,
                            EVP_PKEY **key_out)
{
    static long serial = 1000;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *n = X509_NAME_new();
    X509V3_CTX ctx;
    assert_non_null(key);
    assert_non_null(x);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), serial++), 1);
    assert_int_equal(
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0), 1);
    assert_int_equal(X509_set_subject_name(x, n), 1);
    assert_int_equal(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n), 1);
    assert_non_null(ASN1_TIME_set(X509_getm_notBefore(x), (time_t)not_before));
    assert_non_null(ASN1_TIME_set(X509_getm_notAfter(x), (time_t)not_after));
    assert_int_equal(X509_set_pubkey(x, key), 1);
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    const char *exts[][2] = {
        {"basicConstraints", eku ? "critical,CA:FALSE" : "critical,CA:TRUE"},
        {"keyUsage", eku ? "critical,digitalSignature" : "critical,keyCertSign"},
        {"extendedKeyUsage", eku},
    };
    for (size_t i = 0; i < 3; i++) {
        if (exts[i][1] == NULL)
            continue;
        X509_EXTENSION *e = X509V3_EXT_conf(NULL, &ctx, exts[i][0], exts[i][1]);
        assert_non_null(e);
        assert_int_equal(X509_add_ext(x, e, -1), 1);
        X509_EXTENSION_free(e);
    }
    assert_true(X509_sign(x, issuer ? ikey : key, EVP_sha256()) > 0);
    char file[64];
    snprintf(file, sizeof(file), "%s.pem", name);
    FILE *f = fopen(path(file), "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    fclose(f);
    snprintf(file, sizeof(file), "%s.key", name);
    f = fopen(path(file), "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    X509_NAME_free(n);
    *key_out = key;
    return x;
}

/* The point of timestamps: a signature made while the signer certificate
 * was valid stays valid after it expires, and only with a timestamp. */
static void test_expired_signer_with_timestamp(void **state)
{
    (void)state;
    NEED_TOOLS();
    const int64_t y = 365 * 86400LL, now = (int64_t)time(NULL);
    EVP_PKEY *rk, *lk, *tk;
    X509 *root =
        backdated_cert("old-root", "Old Root", NULL, NULL, now - 5 * y, now + 5 * y, NULL, &rk);
    X509 *leaf = backdated_cert("old-leaf", "Old Leaf", root, rk, now - 4 * y, now - 3 * y,
                                "codeSigning", &lk);
    X509 *tsa = backdated_cert("old-tsa", "Old TSA", root, rk, now - 5 * y, now + 5 * y,
                               "critical,timeStamping", &tk);
    assert_int_equal(run("osslsigncode sign -certs old-leaf.pem -key old-leaf.key -h sha256 "
                         "-TSA-certs old-tsa.pem -TSA-key old-tsa.key -TSA-time %lld "
                         "-in unsigned.exe -out old-ts.exe && "
                         "osslsigncode sign -certs old-leaf.pem -key old-leaf.key -h sha256 "
                         "-in unsigned.exe -out old.exe",
                         (long long)(now - 3 * y - y / 2)),
                     0);
    qk_verify_report *r = verify_file("old-ts.exe", "old-root.pem", NULL);
    assert_all_ok(&r->sigs[0]);
    assert_true(r->valid);
    assert_true(r->sigs[0].timestamp->ok);
    assert_int_equal(r->sigs[0].timestamp->time, now - 3 * y - y / 2);
    qk_verify_report_free(r);

    r = verify_file("old.exe", "old-root.pem", NULL);
    assert_false(r->valid);
    assert_true(r->sigs[0].signature_ok);
    assert_string_equal(r->sigs[0].error, "certificate chain: certificate has expired");
    qk_verify_report_free(r);
    X509_free(root);
    X509_free(leaf);
    X509_free(tsa);
    EVP_PKEY_free(rk);
    EVP_PKEY_free(lk);
    EVP_PKEY_free(tk);
}

/* Adds a legacy Authenticode countersignature (PKCS#9, signed by the test
 * TSA at `when`) to the signature of rsa256.exe; `corrupt` breaks its
 * messageDigest. Returns the new PE image. */
static void make_countersigned(int64_t when, int corrupt, qk_buf *out)
{
    qk_buf b;
    qk_pe *pe = NULL;
    uint8_t h[32];
    unsigned char *csder = NULL, *der = NULL;

    load("rsa256.exe", &b);
    PKCS7 *p7 = first_p7(&b);
    PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
    X509 *tsa = read_cert("tsa.pem");
    EVP_PKEY *key = read_key("tsa.key");

    PKCS7_SIGNER_INFO *cs = PKCS7_SIGNER_INFO_new();
    assert_int_equal(PKCS7_SIGNER_INFO_set(cs, tsa, key, EVP_sha256()), 1);
    assert_int_equal(PKCS7_add_signed_attribute(cs, NID_pkcs9_contentType, V_ASN1_OBJECT,
                                                OBJ_nid2obj(NID_pkcs7_data)),
                     1);
    assert_int_equal(PKCS7_add_signed_attribute(cs, NID_pkcs9_signingTime, V_ASN1_UTCTIME,
                                                ASN1_UTCTIME_set(NULL, (time_t)when)),
                     1);
    assert_int_equal(EVP_Digest(si->enc_digest->data, (size_t)si->enc_digest->length, h, NULL,
                                EVP_sha256(), NULL),
                     1);
    h[0] ^= (uint8_t)corrupt;
    ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
    assert_int_equal(ASN1_OCTET_STRING_set(os, h, sizeof(h)), 1);
    assert_int_equal(
        PKCS7_add_signed_attribute(cs, NID_pkcs9_messageDigest, V_ASN1_OCTET_STRING, os), 1);
    assert_int_equal(PKCS7_SIGNER_INFO_sign(cs), 1);
    int cslen = i2d_PKCS7_SIGNER_INFO(cs, &csder);
    assert_true(cslen > 0);
    ASN1_STRING *seq = ASN1_STRING_new();
    assert_int_equal(ASN1_STRING_set(seq, csder, cslen), 1);
    assert_int_equal(PKCS7_add_attribute(si, NID_pkcs9_countersignature, V_ASN1_SEQUENCE, seq), 1);
    assert_int_equal(PKCS7_add_certificate(p7, tsa), 1);
    int len = i2d_PKCS7(p7, &der);
    assert_true(len > 0);

    assert_int_equal(qk_pe_parse_mem(b.data, b.len, &pe), QK_OK);
    qk_slice sig = {der, (size_t)len};
    assert_int_equal(qk_pe_build_signed(pe, &sig, 1, out), QK_OK);
    qk_pe_free(pe);
    OPENSSL_free(der);
    OPENSSL_free(csder);
    PKCS7_SIGNER_INFO_free(cs);
    PKCS7_free(p7);
    X509_free(tsa);
    EVP_PKEY_free(key);
    free(b.data);
}

static void test_legacy_countersignature(void **state)
{
    (void)state;
    NEED_TOOLS();
    qk_buf pe;
    int64_t when = (int64_t)time(NULL); /* the test TSA certificate is minutes old */
    make_countersigned(when, 0, &pe);
    qk_verify_report *r = verify_mem(pe.data, pe.len, "root.pem", NULL);
    assert_all_ok(&r->sigs[0]);
    assert_true(r->valid);
    assert_non_null(r->sigs[0].timestamp);
    assert_true(r->sigs[0].timestamp->ok);
    assert_int_equal(r->sigs[0].timestamp->time, when);
    qk_verify_report_free(r);
    qk_buf_free(&pe);

    make_countersigned(when, 1, &pe);
    r = verify_mem(pe.data, pe.len, "root.pem", NULL);
    assert_false(r->valid);
    assert_false(r->sigs[0].timestamp->ok);
    assert_string_equal(r->sigs[0].timestamp->error, "countersignature: message digest mismatch");
    assert_true(r->sigs[0].digest_ok && r->sigs[0].signature_ok && r->sigs[0].chain_ok);
    qk_verify_report_free(r);
    qk_buf_free(&pe);
}

/* Rebuilds unsigned.exe with the given raw certificate table entries. */
static void build_with(const qk_slice *sigs, size_t n, qk_buf *out)
{
    qk_buf b;
    qk_pe *pe = NULL;
    load("unsigned.exe", &b);
    assert_int_equal(qk_pe_parse_mem(b.data, b.len, &pe), QK_OK);
    assert_int_equal(qk_pe_build_signed(pe, sigs, n, out), QK_OK);
    qk_pe_free(pe);
    free(b.data);
}

static void sig_der(const char *file, qk_buf *out)
{
    qk_buf b;
    qk_pe *pe = NULL;
    load(file, &b);
    assert_int_equal(qk_pe_parse_mem(b.data, b.len, &pe), QK_OK);
    const qk_pe_cert *c = qk_pe_cert_get(pe, 0);
    out->data = malloc(c->data.len + 64);
    assert_non_null(out->data);
    memcpy(out->data, c->data.data, c->data.len);
    out->len = c->data.len;
    qk_pe_free(pe);
    free(b.data);
}

static void expect_error_entry(const qk_slice *sigs, size_t n, const char *msg)
{
    qk_buf pe;
    build_with(sigs, n, &pe);
    qk_verify_report *r = verify_mem(pe.data, pe.len, "root.pem", NULL);
    assert_false(r->valid);
    assert_int_equal(r->nsigs, n);
    assert_non_null(r->sigs[0].error);
    if (strstr(r->sigs[0].error, msg) == NULL)
        fail_msg("error '%s' lacks '%s'", r->sigs[0].error, msg);
    assert_false(r->sigs[0].digest_ok || r->sigs[0].signature_ok);
    if (n > 1)
        assert_all_ok(&r->sigs[1]); /* a broken entry does not hide a good one */
    qk_verify_report_free(r);
    qk_buf_free(&pe);
}

static void test_malformed_entries(void **state)
{
    (void)state;
    NEED_TOOLS();
    qk_buf good;
    uint8_t rnd[512];
    sig_der("rsa256.exe", &good);
    qk_slice sigs[2] = {{good.data, good.len - 17}, {good.data, good.len}};

    expect_error_entry(sigs, 2, "not a DER PKCS#7 ContentInfo"); /* truncated */
    memcpy(good.data + good.len, "GARBAGE!", 8);
    sigs[0].len = good.len + 8;
    expect_error_entry(sigs, 2, "non-zero data after the ContentInfo"); /* trailing garbage */
    srand(1234);
    for (size_t i = 0; i < sizeof(rnd); i++)
        rnd[i] = (uint8_t)rand();
    sigs[0] = (qk_slice){rnd, sizeof(rnd)};
    expect_error_entry(sigs, 2, "malformed signature"); /* random bytes */
    rnd[0] = 0x30;                                      /* a SEQUENCE of garbage */
    rnd[1] = 0x82;
    rnd[2] = 0x01;
    rnd[3] = 0xfc;
    expect_error_entry(sigs, 2, "malformed signature");
    /* BER indefinite length is not DER. */
    good.data[1] = 0x80;
    sigs[0] = (qk_slice){good.data, 2};
    expect_error_entry(sigs, 1, "malformed signature");

    /* A WIN_CERTIFICATE type other than PKCS_SIGNED_DATA. */
    qk_buf pe;
    free(good.data);
    sig_der("rsa256.exe", &good);
    sigs[0] = (qk_slice){good.data, good.len};
    build_with(sigs, 1, &pe);
    qk_pe *p = NULL;
    uint32_t off;
    assert_int_equal(qk_pe_parse_mem(pe.data, pe.len, &p), QK_OK);
    qk_pe_cert_table(p, &off, NULL);
    qk_pe_free(p);
    pe.data[off + 6] = 0x01; /* X.509 certificate */
    qk_verify_report *r = verify_mem(pe.data, pe.len, "root.pem", NULL);
    assert_false(r->valid);
    assert_string_equal(r->sigs[0].error,
                        "unsupported certificate table entry (revision 0x0200, type 0x0001)");
    qk_verify_report_free(r);
    qk_buf_free(&pe);
    free(good.data);
}

/* Bit flips all over a signature with a timestamp and nested signatures: the
 * verifier must never crash, leak or report a valid signature for a flip in
 * signed bytes (checked through verify_mem's invariants and ASan). */
static void test_bitflips(void **state)
{
    (void)state;
    NEED_TOOLS();
    qk_buf der, pe;
    sig_der("nested2.exe", &der);
    for (size_t i = 0; i < der.len; i += 5) {
        der.data[i] ^= (uint8_t)(1u << (i % 8));
        qk_slice s = {der.data, der.len};
        build_with(&s, 1, &pe);
        qk_verify_report *r = verify_mem(pe.data, pe.len, "root.pem", NULL);
        qk_verify_report_free(r);
        qk_buf_free(&pe);
        der.data[i] ^= (uint8_t)(1u << (i % 8));
    }
    free(der.data);
}

static void test_args(void **state)
{
    (void)state;
    NEED_TOOLS();
    qk_verify_report *r = (qk_verify_report *)1;
    qk_buf b;
    qk_pe *pe = NULL;
    assert_int_equal(qk_verify_pe(NULL, NULL, &r), QK_ERR_INVALID_ARG);
    assert_null(r);
    load("rsa256.exe", &b);
    assert_int_equal(qk_pe_parse_mem(b.data, b.len, &pe), QK_OK);
    assert_int_equal(qk_verify_pe(pe, NULL, NULL), QK_ERR_INVALID_ARG);
    qk_verify_opts o = {"/nonexistent/ca.pem", NULL};
    assert_int_equal(qk_verify_pe(pe, &o, &r), QK_ERR_IO);
    assert_null(r);
    qk_verify_opts o2 = {path("root.pem"), "/nonexistent/tsa.pem"};
    assert_int_equal(qk_verify_pe(pe, &o2, &r), QK_ERR_IO);
    /* System store: the test root is not in it. */
    assert_int_equal(qk_verify_pe(pe, NULL, &r), QK_OK);
    assert_false(r->valid);
    assert_true(r->sigs[0].signature_ok);
    assert_false(r->sigs[0].chain_ok);
    qk_verify_report_free(r);
    qk_verify_report_free(NULL);
    qk_pe_free(pe);
    free(b.data);
}

/* --- detached CMS ------------------------------------------------------------ */

static qk_verify_report *verify_detached(const char *sig, const char *content, const char *ca)
{
    qk_buf s;
    qk_verify_report *r = NULL;
    qk_verify_opts o = {ca ? path(ca) : NULL, NULL};
    load(sig, &s);
    assert_int_equal(qk_verify_detached((qk_slice){s.data, s.len}, path(content), &o, &r), QK_OK);
    assert_non_null(r);
    free(s.data);
    return r;
}

static void test_detached(void **state)
{
    (void)state;
    NEED_TOOLS();
    static const uint8_t content[] = "release-1.2.3.tar.gz contents\n";
    save("content.bin", content, sizeof(content));
    assert_int_equal(run("openssl cms -sign -binary -outform DER -in content.bin -signer leaf.pem "
                         "-inkey leaf.key -out content.p7s && "
                         "openssl cms -sign -binary -outform PEM -md sha384 -in content.bin "
                         "-signer ecleaf.pem -inkey ecleaf.key -out content.pem && "
                         "openssl cms -sign -binary -outform DER -in content.bin -signer "
                         "otherleaf.pem -inkey otherleaf.key -out other.p7s && "
                         "openssl cms -sign -binary -outform DER -in content.bin -signer tsa.pem "
                         "-inkey tsa.key -out tsa.p7s && "
                         "openssl cms -sign -binary -nodetach -outform DER -in content.bin "
                         "-signer leaf.pem -inkey leaf.key -out attached.p7s"),
                     0);

    qk_verify_report *r = verify_detached("content.p7s", "content.bin", "root.pem");
    assert_true(r->valid);
    assert_int_equal(r->nsigs, 1);
    assert_all_ok(&r->sigs[0]);
    assert_int_equal(r->sigs[0].digest_alg, QK_HASH_SHA256);
    assert_string_equal(r->sigs[0].signer, "O=Qwick Test, CN=Qwick Leaf");
    qk_verify_report_free(r);

    r = verify_detached("content.pem", "content.bin", "root.pem");
    assert_true(r->valid);
    assert_int_equal(r->sigs[0].digest_alg, QK_HASH_SHA384);
    qk_verify_report_free(r);

    r = verify_detached("other.p7s", "content.bin", "root.pem");
    assert_false(r->valid);
    assert_true(r->sigs[0].digest_ok && r->sigs[0].signature_ok);
    assert_false(r->sigs[0].chain_ok);
    qk_verify_report_free(r);

    r = verify_detached("tsa.p7s", "content.bin", "root.pem");
    assert_false(r->valid);
    assert_false(r->sigs[0].chain_ok);
    assert_string_equal(r->sigs[0].error,
                        "certificate chain: signer certificate is for time stamping only");
    qk_verify_report_free(r);

    r = verify_detached("attached.p7s", "content.bin", "root.pem");
    assert_false(r->valid);
    assert_non_null(r->error);
    qk_verify_report_free(r);

    r = verify_detached("unsigned.exe", "content.bin", "root.pem");
    assert_false(r->valid);
    assert_int_equal(r->nsigs, 0);
    assert_non_null(strstr(r->error, "malformed signature"));
    qk_verify_report_free(r);

    /* Tampered content. */
    static const uint8_t changed[] = "release-1.2.3.tar.gz contentz\n";
    save("changed.bin", changed, sizeof(changed));
    r = verify_detached("content.p7s", "changed.bin", "root.pem");
    assert_false(r->valid);
    assert_false(r->sigs[0].digest_ok);
    assert_false(r->sigs[0].message_digest_ok);
    assert_true(r->sigs[0].signature_ok);
    assert_true(r->sigs[0].chain_ok);
    assert_string_equal(r->sigs[0].error, "content digest mismatch");
    qk_verify_report_free(r);

    /* Missing content file: no report at all. */
    qk_buf s;
    load("content.p7s", &s);
    r = NULL;
    assert_int_equal(qk_verify_detached((qk_slice){s.data, s.len}, path("missing.bin"), NULL, &r),
                     QK_ERR_IO);
    assert_null(r);
    /* Truncations of the DER never crash. */
    for (size_t n = 0; n < s.len; n += 37) {
        qk_verify_opts o = {path("root.pem"), NULL};
        assert_int_equal(qk_verify_detached((qk_slice){s.data, n}, path("content.bin"), &o, &r),
                         QK_OK);
        assert_false(r->valid);
        qk_verify_report_free(r);
    }
    free(s.data);
}

/* --- detached CMS with timestamps ------------------------------------------- */

typedef struct test_tsa {
    tk_tsa tsa;
    tk_reply_opts o;
} test_tsa;

static qk_err test_tsa_send(void *ctx, qk_slice req, qk_buf *reply)
{
    test_tsa *t = ctx;
    *reply = tk_tsa_reply(&t->tsa, req.data, req.len, &t->o);
    return QK_OK;
}

/* OUT: a detached DER CMS signature of content.bin by NAME.pem/NAME.key,
 * timestamped through libqwick by `tsa` (as qwick sign --detached does). */
static void make_ts_detached(const char *name, test_tsa *tsa, const char *out)
{
    qk_buf plain, ts = {0};
    assert_int_equal(run("openssl cms -sign -binary -outform DER -in content.bin -signer %s.pem "
                         "-inkey %s.key -out %s.plain",
                         name, name, out),
                     0);
    char file[128];
    snprintf(file, sizeof(file), "%s.plain", out);
    load(file, &plain);
    qk_err rc = qk_timestamp((qk_slice){plain.data, plain.len}, QK_HASH_SHA256, test_tsa_send, tsa,
                             &ts);
    if (rc != QK_OK)
        fail_msg("qk_timestamp: %s: %s", qk_strerror(rc), qk_error_detail());
    save(out, ts.data, ts.len);
    free(plain.data);
    qk_buf_free(&ts);
}

static qk_verify_report *verify_detached_opts(const char *sig, const qk_verify_opts *o)
{
    qk_buf s;
    qk_verify_report *r = NULL;
    load(sig, &s);
    qk_err rc = qk_verify_detached((qk_slice){s.data, s.len}, path("content.bin"), o, &r);
    if (rc != QK_OK)
        fail_msg("qk_verify_detached(%s): %s: %s", sig, qk_strerror(rc), qk_error_detail());
    assert_non_null(r);
    free(s.data);
    /* Same invariant as for PE: error is NULL exactly when fully valid. */
    for (size_t i = 0; i < r->nsigs; i++) {
        const qk_sig_result *g = &r->sigs[i];
        int ok = g->digest_ok && g->message_digest_ok && g->signature_ok &&
                 (g->chain_ok || !g->chain_checked) && (g->timestamp == NULL || g->timestamp->ok);
        assert_int_equal(ok, g->error == NULL);
    }
    return r;
}

/* Writes the unit TSA's self-signed certificate as a trust anchor file. */
static void save_cert(const char *name, X509 *x)
{
    FILE *f = fopen(path(name), "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    assert_int_equal(fclose(f), 0);
}

/* Removes the SignerInfo's id-aa-timeStampToken and puts the same token under
 * Microsoft's attribute, as qwick wrote detached signatures before. */
static void move_token_to_ms_attr(const char *in, const char *out)
{
    qk_buf b;
    load(in, &b);
    const unsigned char *p = b.data;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)b.len);
    assert_non_null(p7);
    PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
    int i = X509at_get_attr_by_NID(si->unauth_attr, NID_id_smime_aa_timeStampToken, -1);
    assert_true(i >= 0);
    X509_ATTRIBUTE *a = X509at_delete_attr(si->unauth_attr, i);
    ASN1_OBJECT *ms = OBJ_txt2obj("1.3.6.1.4.1.311.3.3.1", 1);
    assert_non_null(ms);
    ASN1_TYPE *t = X509_ATTRIBUTE_get0_type(a, 0);
    assert_non_null(X509at_add1_attr_by_OBJ(&si->unauth_attr, ms, V_ASN1_SEQUENCE,
                                            t->value.sequence->data, t->value.sequence->length));
    unsigned char *der = NULL;
    int n = i2d_PKCS7(p7, &der);
    assert_true(n > 0);
    save(out, der, (size_t)n);
    OPENSSL_free(der);
    ASN1_OBJECT_free(ms);
    X509_ATTRIBUTE_free(a);
    PKCS7_free(p7);
    free(b.data);
}

static void test_detached_timestamp(void **state)
{
    (void)state;
    NEED_TOOLS();
    static const uint8_t content[] = "timestamped release notes\n";
    save("content.bin", content, sizeof(content));
    test_tsa tsa = {0};
    tk_tsa_init(&tsa.tsa);
    save_cert("unit-tsa.pem", tsa.tsa.cert);
    const int64_t now = (int64_t)time(NULL);

    /* path() reuses its buffers: keep the option strings in our own. */
    char root_pem[256], tsa_pem[256], other_pem[256];
    snprintf(root_pem, sizeof(root_pem), "%s", path("root.pem"));
    snprintf(tsa_pem, sizeof(tsa_pem), "%s", path("unit-tsa.pem"));
    snprintf(other_pem, sizeof(other_pem), "%s", path("other-root.pem"));

    make_ts_detached("leaf", &tsa, "ts.p7s");
    qk_verify_opts o = {root_pem, tsa_pem, 0, 0};
    qk_verify_report *r = verify_detached_opts("ts.p7s", &o);
    assert_true(r->valid);
    assert_all_ok(&r->sigs[0]);
    assert_true(r->sigs[0].chain_checked);
    const qk_ts_result *ts = r->sigs[0].timestamp;
    assert_non_null(ts);
    assert_true(ts->ok);
    assert_true(ts->chain_checked);
    assert_null(ts->error);
    assert_true(ts->time > now - 3600 && ts->time <= now + 60);
    assert_int_equal(strlen(ts->time_str), 20);
    qk_verify_report_free(r);

    /* The TSA is not trusted by the code-signing roots alone. */
    qk_verify_opts no_tsa = {root_pem, NULL, 0, 0};
    r = verify_detached_opts("ts.p7s", &no_tsa);
    assert_false(r->valid);
    assert_false(r->sigs[0].timestamp->ok);
    assert_true(r->sigs[0].digest_ok && r->sigs[0].signature_ok && r->sigs[0].chain_ok);
    assert_non_null(strstr(r->sigs[0].error, "timestamp: timestamp certificate chain"));
    qk_verify_report_free(r);

    /* Integrity only: no store, no chain, the token's signature and imprint. */
    qk_verify_opts integ = {NULL, NULL, 1, 1};
    r = verify_detached_opts("ts.p7s", &integ);
    assert_true(r->valid);
    assert_null(r->sigs[0].error);
    assert_false(r->sigs[0].chain_checked);
    assert_false(r->sigs[0].chain_ok);
    assert_true(r->sigs[0].timestamp->ok);
    assert_false(r->sigs[0].timestamp->chain_checked);
    qk_verify_report_free(r);
    /* Only the TSA chain: against roots that do not hold the TSA. */
    integ.skip_ts_chain = 0;
    integ.tsa_ca_file = other_pem;
    r = verify_detached_opts("ts.p7s", &integ);
    assert_false(r->valid);
    assert_true(r->sigs[0].timestamp->chain_checked);
    assert_false(r->sigs[0].timestamp->ok);
    qk_verify_report_free(r);

    /* The token's ESS signingCertificate must name the certificate that
     * signed it: a token without one, or naming another certificate, fails
     * although its signature is good. The control re-signs the same way
     * with OpenSSL's own attribute: it passes. */
    static const struct {
        int ess;
        const char *file, *error;
    } ess_cases[] = {
        {TK_ESS_NONE, "ts-noess.p7s", "no ESS signingCertificate"},
        {TK_ESS_OTHER, "ts-otheress.p7s", "does not name its signer certificate"},
    };
    tsa.o.ess = TK_ESS_SELF;
    make_ts_detached("leaf", &tsa, "ts-selfess.p7s");
    tsa.o.ess = 0;
    r = verify_detached_opts("ts-selfess.p7s", &o);
    assert_true(r->valid);
    assert_true(r->sigs[0].timestamp->ok);
    qk_verify_report_free(r);
    for (size_t i = 0; i < sizeof(ess_cases) / sizeof(ess_cases[0]); i++) {
        tsa.o.ess = ess_cases[i].ess;
        make_ts_detached("leaf", &tsa, ess_cases[i].file);
        tsa.o.ess = 0;
        r = verify_detached_opts(ess_cases[i].file, &o);
        assert_false(r->valid);
        assert_true(r->sigs[0].digest_ok && r->sigs[0].signature_ok && r->sigs[0].chain_ok);
        assert_false(r->sigs[0].timestamp->ok);
        if (strstr(r->sigs[0].timestamp->error, ess_cases[i].error) == NULL)
            fail_msg("%s: %s", ess_cases[i].file, r->sigs[0].timestamp->error);
        qk_verify_report_free(r);
    }

    /* A signature from before the change: the token under Microsoft's OID. */
    move_token_to_ms_attr("ts.p7s", "ts-ms.p7s");
    r = verify_detached_opts("ts-ms.p7s", &o);
    assert_true(r->valid);
    assert_true(r->sigs[0].timestamp->ok);
    qk_verify_report_free(r);

    /* Re-timestamping it moves the token to the standard attribute. */
    qk_buf ms, re = {0};
    load("ts-ms.p7s", &ms);
    assert_int_equal(
        qk_timestamp((qk_slice){ms.data, ms.len}, QK_HASH_SHA384, test_tsa_send, &tsa, &re), QK_OK);
    {
        const unsigned char *p = re.data;
        PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)re.len);
        assert_non_null(p7);
        PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
        assert_int_equal(X509at_get_attr_count(si->unauth_attr), 1);
        assert_true(X509at_get_attr_by_NID(si->unauth_attr, NID_id_smime_aa_timeStampToken, -1) >=
                    0);
        PKCS7_free(p7);
    }
    free(ms.data);
    qk_buf_free(&re);

    /* A token for another signature: the imprint does not match. */
    qk_buf a, b, tok_sig = {0};
    make_ts_detached("ecleaf", &tsa, "ts-ec.p7s");
    load("ts.p7s.plain", &a);
    load("ts-ec.p7s", &b);
    {
        const unsigned char *p = b.data;
        PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)b.len);
        assert_non_null(p7);
        PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(p7->d.sign->signer_info, 0);
        X509_ATTRIBUTE *at = X509at_get_attr(
            si->unauth_attr,
            X509at_get_attr_by_NID(si->unauth_attr, NID_id_smime_aa_timeStampToken, -1));
        ASN1_TYPE *t = X509_ATTRIBUTE_get0_type(at, 0);
        qk_slice tok = {t->value.sequence->data, (size_t)t->value.sequence->length};
        assert_int_equal(qk_sig_add_timestamp((qk_slice){a.data, a.len}, tok, &tok_sig), QK_OK);
        PKCS7_free(p7);
    }
    save("ts-wrong.p7s", tok_sig.data, tok_sig.len);
    r = verify_detached_opts("ts-wrong.p7s", &o);
    assert_false(r->valid);
    assert_false(r->sigs[0].timestamp->ok);
    assert_true(r->sigs[0].signature_ok && r->sigs[0].chain_ok);
    assert_non_null(strstr(r->sigs[0].timestamp->error, "imprint does not match"));
    qk_verify_report_free(r);
    free(a.data);
    free(b.data);
    qk_buf_free(&tok_sig);

    /* The point of it: a signer certificate that has expired since, with a
     * token from while it was valid, is judged at the token's time. */
    /* (The roots made by `openssl req` above start now: backdate one too.) */
    const int64_t y = 365 * 86400LL;
    EVP_PKEY *rk = NULL, *lk = NULL;
    X509 *root = backdated_cert("gone-root", "Gone Root", NULL, NULL, now - 2 * y, now + y, NULL,
                                &rk);
    X509 *leaf = backdated_cert("gone-leaf", "Gone Leaf", root, rk, now - y, now - 3600,
                                "codeSigning", &lk);
    char gone_root_pem[256];
    snprintf(gone_root_pem, sizeof(gone_root_pem), "%s", path("gone-root.pem"));
    qk_verify_opts og = {gone_root_pem, tsa_pem, 0, 0};
    tsa.o.gen_time = now - 7200;
    make_ts_detached("gone-leaf", &tsa, "gone.p7s");
    r = verify_detached_opts("gone.p7s", &og);
    assert_true(r->valid);
    assert_int_equal(r->sigs[0].timestamp->time, now - 7200);
    qk_verify_report_free(r);
    r = verify_detached_opts("gone.p7s.plain", &og);
    assert_false(r->valid);
    assert_null(r->sigs[0].timestamp);
    assert_string_equal(r->sigs[0].error, "certificate chain: certificate has expired");
    qk_verify_report_free(r);
    X509_free(leaf);
    X509_free(root);
    EVP_PKEY_free(rk);
    EVP_PKEY_free(lk);
    tk_tsa_cleanup(&tsa.tsa);
}

/* A context loads its stores once and gives the same answers as the one-shot
 * calls; skip_chain leaves chains unevaluated. */
static void test_verify_ctx(void **state)
{
    (void)state;
    NEED_TOOLS();
    qk_verify_ctx *ctx = NULL;
    qk_verify_opts o = {path("root.pem"), NULL, 0, 0};
    assert_int_equal(qk_verify_ctx_new(&o, &ctx), QK_OK);
    const char *files[] = {"rsa256.exe", "ec256.exe", "other.exe", "ts.exe"};
    const int valid[] = {1, 1, 0, 1};
    for (size_t i = 0; i < 4; i++) {
        qk_buf b;
        qk_pe *pe = NULL;
        qk_verify_report *r = NULL;
        load(files[i], &b);
        assert_int_equal(qk_pe_parse_mem(b.data, b.len, &pe), QK_OK);
        assert_int_equal(qk_verify_pe_ctx(pe, ctx, &r), QK_OK);
        assert_int_equal(r->valid, valid[i]);
        assert_true(r->sigs[0].chain_checked);
        qk_verify_report_free(r);
        qk_pe_free(pe);
        free(b.data);
    }
    qk_verify_ctx_free(ctx);
    qk_verify_ctx_free(NULL);

    /* Integrity only: a signature from an unknown root is valid... */
    qk_verify_opts integ = {NULL, NULL, 1, 1};
    assert_int_equal(qk_verify_ctx_new(&integ, &ctx), QK_OK);
    qk_verify_report *r = verify_file("other.exe", NULL, NULL);
    assert_false(r->valid); /* (the system store does not know it) */
    qk_verify_report_free(r);
    qk_buf b;
    qk_pe *pe = NULL;
    load("other.exe", &b);
    assert_int_equal(qk_pe_parse_mem(b.data, b.len, &pe), QK_OK);
    assert_int_equal(qk_verify_pe_ctx(pe, ctx, &r), QK_OK);
    assert_true(r->valid);
    assert_false(r->sigs[0].chain_checked);
    assert_false(r->sigs[0].chain_ok);
    assert_null(r->sigs[0].error);
    qk_verify_report_free(r);
    qk_pe_free(pe);
    free(b.data);
    /* ...but a tampered image is not. */
    load("rsa256.exe", &b);
    b.data[0x210] ^= 1;
    assert_int_equal(qk_pe_parse_mem(b.data, b.len, &pe), QK_OK);
    assert_int_equal(qk_verify_pe_ctx(pe, ctx, &r), QK_OK);
    assert_false(r->valid);
    assert_false(r->sigs[0].digest_ok);
    qk_verify_report_free(r);
    qk_pe_free(pe);
    free(b.data);
    /* The timestamp token is still checked, its chain is not. */
    load("ts.exe", &b);
    assert_int_equal(qk_pe_parse_mem(b.data, b.len, &pe), QK_OK);
    assert_int_equal(qk_verify_pe_ctx(pe, ctx, &r), QK_OK);
    assert_true(r->valid);
    assert_true(r->sigs[0].timestamp->ok);
    assert_false(r->sigs[0].timestamp->chain_checked);
    qk_verify_report_free(r);
    qk_pe_free(pe);
    free(b.data);
    qk_verify_ctx_free(ctx);

    /* Bad arguments and an unreadable CA file. */
    assert_int_equal(qk_verify_ctx_new(&o, NULL), QK_ERR_INVALID_ARG);
    qk_verify_opts bad = {path("missing.pem"), NULL, 0, 0};
    ctx = (qk_verify_ctx *)1;
    assert_int_equal(qk_verify_ctx_new(&bad, &ctx), QK_ERR_IO);
    assert_null(ctx);
    bad.skip_chain = 1; /* the CA file is still the TSA roots */
    assert_int_equal(qk_verify_ctx_new(&bad, &ctx), QK_ERR_IO);
    bad.skip_ts_chain = 1; /* nothing to load */
    assert_int_equal(qk_verify_ctx_new(&bad, &ctx), QK_OK);
    qk_verify_ctx_free(ctx);
    r = (qk_verify_report *)1;
    assert_int_equal(qk_verify_pe_ctx(NULL, NULL, &r), QK_ERR_INVALID_ARG);
    assert_null(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_algorithms),
        cmocka_unit_test(test_unsigned),
        cmocka_unit_test(test_tampered_image),
        cmocka_unit_test(test_tampered_signature),
        cmocka_unit_test(test_tampered_content),
        cmocka_unit_test(test_unknown_root),
        cmocka_unit_test(test_eku),
        cmocka_unit_test(test_nested),
        cmocka_unit_test(test_timestamp),
        cmocka_unit_test(test_timestamp_time_used),
        cmocka_unit_test(test_expired_signer_with_timestamp),
        cmocka_unit_test(test_legacy_countersignature),
        cmocka_unit_test(test_malformed_entries),
        cmocka_unit_test(test_bitflips),
        cmocka_unit_test(test_args),
        cmocka_unit_test(test_detached),
        cmocka_unit_test(test_detached_timestamp),
        cmocka_unit_test(test_verify_ctx),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
