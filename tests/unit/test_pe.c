/* Unit tests for lib/pe.c and lib/pe_write.c.
 *
 * Images come from tests/unit/pe_builder.c (synthetic, every field known) and
 * from small mingw-built binaries committed under tests/fixtures/bin/. The
 * expected digests and checksums are computed here independently of the
 * library (whole-buffer copies hashed in one call, word-by-word checksum). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>

#include "pe_builder.h"
#include "qwick/pe.h"

/* lib/pe.c's limit on WIN_CERTIFICATE entries per table (not public). */
#define MAX_CERT_ENTRIES 64

static const qk_hash_alg all_algs[] = {QK_HASH_SHA1, QK_HASH_SHA256, QK_HASH_SHA384,
                                       QK_HASH_SHA512};
#define NALGS (sizeof(all_algs) / sizeof(all_algs[0]))

/* --- helpers ------------------------------------------------------------- */

/* Parses a private copy of exactly `len` bytes, so ASan sees any read past
 * the end, and checks the out-parameter contract. */
static qk_err parse_copy(const uint8_t *data, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len)
        memcpy(copy, data, len);
    qk_pe *pe = (qk_pe *)(uintptr_t)1; /* must be reset even on failure */
    qk_err rc = qk_pe_parse_mem(copy, len, &pe);
    if (rc == QK_OK)
        assert_non_null(pe);
    else
        assert_null(pe);
    qk_pe_free(pe);
    free(copy);
    return rc;
}

#define expect_parse(data, len, want) expect_parse_at(data, len, want, __FILE__, __LINE__)
static void expect_parse_at(const uint8_t *data, size_t len, qk_err want, const char *file,
                            int line)
{
    qk_err got = parse_copy(data, len);
    if (got != want) {
        print_error("%s:%d: parse of %zu bytes: got %d (%s: %s), want %d (%s)\n", file, line, len,
                    got, qk_strerror(got), qk_error_detail(), want, qk_strerror(want));
        _fail(file, line);
    }
}

static void build_plain(pb_image *img, int plus)
{
    pb_spec s = {.pe32plus = plus, .nsections = 3, .section_raw = 0x300};
    pb_build(&s, img);
}

/* A signed image whose table holds one padded entry with `derlen` bytes of DER. */
static void build_signed(pb_image *img, int plus, size_t derlen)
{
    uint8_t der[600];
    pb_bytes tbl = {0};
    assert_true(derlen <= sizeof(der));
    pb_fake_der(der, derlen, 7);
    pb_cert_entry(&tbl, der, derlen, 1);
    pb_spec s = {.pe32plus = plus,
                 .nsections = 2,
                 .section_raw = 0x200,
                 .overlay = 5,
                 .cert_table = tbl.data,
                 .cert_table_len = tbl.len};
    pb_build(&s, img);
    pb_bytes_free(&tbl);
}

/* Builds around a raw certificate table and returns the parse result. */
static qk_err parse_with_table(const uint8_t *tbl, size_t len)
{
    pb_image img;
    pb_spec s = {.pe32plus = 1,
                 .nsections = 1,
                 .section_raw = 0x200,
                 .cert_table = tbl,
                 .cert_table_len = len};
    pb_build(&s, &img);
    qk_err rc = parse_copy(img.data, img.len);
    pb_free(&img);
    return rc;
}

/* The Authenticode digest computed the slow, obvious way: copy the covered
 * ranges into one buffer, append the zero padding, hash once. */
static void ref_digest(const uint8_t *d, size_t checksum_off, size_t certdir_off, size_t end,
                       size_t pad, qk_hash_alg alg, uint8_t *out)
{
    size_t n = end - 12 + pad;
    uint8_t *buf = calloc(1, n);
    assert_non_null(buf);
    memcpy(buf, d, checksum_off);
    memcpy(buf + checksum_off, d + checksum_off + 4, certdir_off - checksum_off - 4);
    memcpy(buf + certdir_off - 4, d + certdir_off + 8, end - certdir_off - 8);
    const EVP_MD *md = EVP_get_digestbynid(qk_hash_nid(alg));
    assert_non_null(md);
    unsigned int outlen = 0;
    assert_int_equal(EVP_Digest(buf, n, out, &outlen, md, NULL), 1);
    assert_int_equal(outlen, qk_hash_size(alg));
    free(buf);
}

static void check_digests(const pb_image *img, size_t pad_verify, size_t pad_sign)
{
    qk_pe *pe = NULL;
    assert_int_equal(qk_pe_parse_mem(img->data, img->len, &pe), QK_OK);
    for (size_t i = 0; i < NALGS; i++) {
        uint8_t got[QK_HASH_MAX_SIZE], want[QK_HASH_MAX_SIZE];
        size_t n = qk_hash_size(all_algs[i]);
        ref_digest(img->data, img->checksum_off, img->certdir_off, img->image_end, pad_verify,
                   all_algs[i], want);
        assert_int_equal(qk_pe_digest(pe, all_algs[i], got), QK_OK);
        assert_memory_equal(got, want, n);
        ref_digest(img->data, img->checksum_off, img->certdir_off, img->image_end, pad_sign,
                   all_algs[i], want);
        assert_int_equal(qk_pe_signing_digest(pe, all_algs[i], got), QK_OK);
        assert_memory_equal(got, want, n);
    }
    qk_pe_free(pe);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    *len = n;
    return buf;
}

static void write_file(const char *path, const uint8_t *p, size_t n, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, p, n), (ssize_t)n);
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(close(fd), 0);
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static char *make_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char tmpl[512];
    snprintf(tmpl, sizeof(tmpl), "%s/qk-test-pe-XXXXXX", base && *base ? base : "/tmp");
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (unlink(p) != 0 && errno == EISDIR)
            rm_tree(p);
    }
    closedir(d);
    rmdir(dir);
}

/* --- malformed headers --------------------------------------------------- */

static void test_rejects_empty_and_short(void **state)
{
    (void)state;
    uint8_t buf[64] = {'M', 'Z'};
    expect_parse(buf, 0, QK_ERR_NOT_PE);
    expect_parse(buf, 1, QK_ERR_NOT_PE);
    expect_parse(buf, 2, QK_ERR_NOT_PE);
    expect_parse(buf, 63, QK_ERR_NOT_PE);
    /* 64 bytes with MZ but e_lfanew 0: the DOS header is complete, the PE header is not. */
    expect_parse(buf, 64, QK_ERR_PE_BAD_HEADER);
}

static void test_rejects_bad_dos_header(void **state)
{
    (void)state;
    pb_image img;
    build_plain(&img, 1);
    expect_parse(img.data, img.len, QK_OK);

    img.data[0] = 'Z';
    img.data[1] = 'M';
    expect_parse(img.data, img.len, QK_ERR_NOT_PE);
    img.data[0] = 'M';
    img.data[1] = 'Z';

    static const struct {
        uint32_t e;
        qk_err want;
    } cases[] = {
        {0xffffff00u, QK_ERR_PE_BAD_HEADER}, /* far past EOF */
        {0xffffffffu, QK_ERR_PE_BAD_HEADER}, /* e + 24 overflows 32 bits */
        {0x10, QK_ERR_PE_BAD_HEADER},        /* inside the DOS header */
        {0, QK_ERR_PE_BAD_HEADER},
        {0x200, QK_ERR_NOT_PE}, /* into the middle: section data, no signature */
        {0x82, QK_ERR_NOT_PE},  /* misaligned onto the real header */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pb_put32(img.data + 0x3c, cases[i].e);
        expect_parse(img.data, img.len, cases[i].want);
    }
    /* Just before EOF: the signature would fit, the COFF header would not. */
    pb_put32(img.data + 0x3c, (uint32_t)img.len - 8);
    memcpy(img.data + img.len - 8, "PE\0\0", 4);
    expect_parse(img.data, img.len, QK_ERR_PE_BAD_HEADER);
    pb_free(&img);
}

static void test_rejects_bad_pe_and_coff_header(void **state)
{
    (void)state;
    pb_image img;
    build_plain(&img, 0);
    img.data[img.e_lfanew + 1] = 'X';
    expect_parse(img.data, img.len, QK_ERR_NOT_PE);
    img.data[img.e_lfanew + 1] = 'E';
    img.data[img.e_lfanew + 2] = 1;
    expect_parse(img.data, img.len, QK_ERR_NOT_PE);
    img.data[img.e_lfanew + 2] = 0;
    expect_parse(img.data, img.len, QK_OK);

    /* The file ends inside the COFF header. */
    for (size_t cut = img.e_lfanew + 4; cut < img.e_lfanew + 24; cut++)
        expect_parse(img.data, cut, QK_ERR_PE_BAD_HEADER);
    pb_free(&img);
}

static void test_rejects_bad_optional_header(void **state)
{
    (void)state;
    for (int plus = 0; plus <= 1; plus++) {
        pb_image img;
        build_plain(&img, plus);
        uint8_t *opt_size = img.data + img.coff_off + 16;
        size_t dirs_at = plus ? 112 : 96;

        pb_put16(opt_size, 0xffff); /* past EOF */
        expect_parse(img.data, img.len, QK_ERR_PE_BAD_HEADER);
        pb_put16(opt_size, 0);
        expect_parse(img.data, img.len, QK_ERR_PE_BAD_HEADER);
        pb_put16(opt_size, 1);
        expect_parse(img.data, img.len, QK_ERR_PE_BAD_HEADER);
        pb_put16(opt_size, 64); /* magic fits, NumberOfRvaAndSizes does not */
        expect_parse(img.data, img.len, QK_ERR_PE_BAD_HEADER);
        /* NumberOfRvaAndSizes says 16 but only 4 directories fit. */
        pb_put16(opt_size, (uint16_t)(dirs_at + 4 * 8));
        expect_parse(img.data, img.len, QK_ERR_PE_NO_CERT_DIR);
        pb_put16(opt_size, (uint16_t)img.opt_size);
        expect_parse(img.data, img.len, QK_OK);

        static const uint16_t bad_magic[] = {0, 0x107, 0x10c, 0x20a, 0x30b, 0xffff, 0x0b01};
        for (size_t i = 0; i < sizeof(bad_magic) / sizeof(bad_magic[0]); i++) {
            pb_put16(img.data + img.opt_off, bad_magic[i]);
            expect_parse(img.data, img.len, QK_ERR_PE_BAD_MAGIC);
        }
        /* PE32 magic on a PE32+ layout (and vice versa) still parses as a
         * header, but at the other layout's offsets; must not be a crash. */
        pb_put16(img.data + img.opt_off, plus ? 0x10b : 0x20b);
        (void)parse_copy(img.data, img.len);
        pb_put16(img.data + img.opt_off, plus ? 0x20b : 0x10b);

        for (uint32_t n = 0; n < 5; n++) {
            pb_put32(img.data + img.nrva_off, n);
            expect_parse(img.data, img.len, QK_ERR_PE_NO_CERT_DIR);
        }
        pb_put32(img.data + img.nrva_off, 16);
        expect_parse(img.data, img.len, QK_OK);
        pb_free(&img);

        /* Consistent headers that simply have fewer directories. */
        for (uint32_t n = 1; n <= 6; n++) {
            pb_spec s = {.pe32plus = plus, .nsections = 1, .section_raw = 0x200, .nrva = n};
            pb_build(&s, &img);
            expect_parse(img.data, img.len, n < 5 ? QK_ERR_PE_NO_CERT_DIR : QK_OK);
            pb_free(&img);
        }
    }
}

static void test_rejects_section_table_past_eof(void **state)
{
    (void)state;
    for (int plus = 0; plus <= 1; plus++) {
        pb_image img;
        pb_spec s = {.pe32plus = plus, .nsections = 2, .section_raw = 0};
        pb_build(&s, &img);
        /* Headers only: the file ends exactly at the section table's end. */
        assert_int_equal(img.len, 0x200);
        pb_put16(img.data + img.coff_off + 2, 0xffff);
        expect_parse(img.data, img.len, QK_ERR_PE_BAD_SECTIONS);
        pb_put16(img.data + img.coff_off + 2, 2);
        expect_parse(img.data, img.headers_end, QK_OK);
        expect_parse(img.data, img.headers_end - 1, QK_ERR_PE_BAD_SECTIONS);
        expect_parse(img.data, img.sect_off + 40, QK_ERR_PE_BAD_SECTIONS);
        pb_free(&img);
    }
}

/* --- malformed certificate tables ---------------------------------------- */

static void test_rejects_cert_dir_outside_file(void **state)
{
    (void)state;
    pb_image img;
    build_signed(&img, 1, 100);
    expect_parse(img.data, img.len, QK_OK);
    uint8_t *dir = img.data + img.certdir_off;
    uint32_t off = pb_get32(dir), size = pb_get32(dir + 4);
    assert_int_equal(off + size, img.len);

    static const struct {
        uint32_t off, size;
    } cases[] = {
        {0xfffffff0u, 0x20}, /* offset + size overflows 32 bits */
        {0xffffffffu, 1},
        {1, 0xffffffffu},
        {0x7fffffffu, 0x7fffffffu},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pb_put32(dir, cases[i].off);
        pb_put32(dir + 4, cases[i].size);
        expect_parse(img.data, img.len, QK_ERR_PE_BAD_CERT_TABLE);
    }
    pb_put32(dir, (uint32_t)img.len + 8); /* starts past EOF */
    pb_put32(dir + 4, 8);
    expect_parse(img.data, img.len, QK_ERR_PE_BAD_CERT_TABLE);
    pb_put32(dir, off); /* runs past EOF by one byte */
    pb_put32(dir + 4, size + 1);
    expect_parse(img.data, img.len, QK_ERR_PE_BAD_CERT_TABLE);
    pb_put32(dir, 0); /* a table at offset 0 is the DOS header */
    pb_put32(dir + 4, (uint32_t)img.len);
    expect_parse(img.data, img.len, QK_ERR_PE_BAD_CERT_TABLE);
    pb_free(&img);
}

static void test_rejects_cert_table_not_at_end(void **state)
{
    (void)state;
    pb_image img;
    build_signed(&img, 0, 100);
    uint8_t *dir = img.data + img.certdir_off;
    uint32_t off = pb_get32(dir), size = pb_get32(dir + 4);

    /* Bytes after the table: the signature would not cover them (CVE-2013-3900). */
    uint8_t *longer = calloc(1, img.len + 8);
    assert_non_null(longer);
    memcpy(longer, img.data, img.len);
    expect_parse(longer, img.len + 8, QK_ERR_PE_BAD_CERT_TABLE);
    expect_parse(longer, img.len + 1, QK_ERR_PE_BAD_CERT_TABLE);
    free(longer);

    /* A shorter declared size leaves the end of the real table uncovered. */
    pb_put32(dir + 4, size - 8);
    expect_parse(img.data, img.len, QK_ERR_PE_BAD_CERT_TABLE);
    /* Same size, earlier start. */
    pb_put32(dir, off - 8);
    pb_put32(dir + 4, size);
    expect_parse(img.data, img.len, QK_ERR_PE_BAD_CERT_TABLE);
    pb_free(&img);
}

static void test_rejects_cert_table_over_headers(void **state)
{
    (void)state;
    pb_image img;
    build_signed(&img, 1, 100);
    uint8_t *dir = img.data + img.certdir_off;
    /* Ends at EOF but starts inside the headers: rewriting the table would
     * clobber them. */
    static const size_t starts[] = {0x3c, 0x80, 0x100};
    for (size_t i = 0; i < sizeof(starts) / sizeof(starts[0]); i++) {
        pb_put32(dir, (uint32_t)starts[i]);
        pb_put32(dir + 4, (uint32_t)(img.len - starts[i]));
        expect_parse(img.data, img.len, QK_ERR_PE_BAD_CERT_TABLE);
    }
    /* The strong case: a table that would parse, one WIN_CERTIFICATE
     * running from a section header's name field to EOF. */
    const size_t names[] = {img.sect_off, img.headers_end - 40};
    for (size_t i = 0; i < 2; i++) {
        pb_image copy;
        build_signed(&copy, 1, 100);
        size_t at = names[i];
        pb_put32(copy.data + at, (uint32_t)(copy.len - at));
        pb_put16(copy.data + at + 4, 0x0200);
        pb_put16(copy.data + at + 6, 0x0002);
        pb_put32(copy.data + copy.certdir_off, (uint32_t)at);
        pb_put32(copy.data + copy.certdir_off + 4, (uint32_t)(copy.len - at));
        expect_parse(copy.data, copy.len, QK_ERR_PE_BAD_CERT_TABLE);
        pb_free(&copy);
    }
    pb_free(&img);
}

static void test_rejects_bad_win_certificate(void **state)
{
    (void)state;
    uint8_t der[64];
    pb_fake_der(der, sizeof(der) - 3, 1);
    pb_bytes good = {0};
    pb_cert_entry(&good, der, sizeof(der) - 3, 1); /* 8 + 61 + 3 = 72 */
    assert_int_equal(good.len, 72);
    assert_int_equal(parse_with_table(good.data, good.len), QK_OK);

    uint8_t *t = malloc(good.len + 16);
    assert_non_null(t);
    static const uint32_t bad_len[] = {0, 1, 7, 73, 80, 0x7fffffff, 0xffffffff, 0xfffffff9};
    for (size_t i = 0; i < sizeof(bad_len) / sizeof(bad_len[0]); i++) {
        memcpy(t, good.data, good.len);
        pb_put32(t, bad_len[i]);
        assert_int_equal(parse_with_table(t, good.len), QK_ERR_PE_BAD_CERT_TABLE);
    }

    /* Second entry declaring more than is left. */
    memcpy(t, good.data, good.len);
    memcpy(t + good.len, good.data, 8);
    pb_put32(t + good.len, 16);
    assert_int_equal(parse_with_table(t, good.len + 8), QK_ERR_PE_BAD_CERT_TABLE);

    /* A table too small for one WIN_CERTIFICATE header. */
    memset(t, 0, 8);
    t[0] = 4;
    assert_int_equal(parse_with_table(t, 4), QK_ERR_PE_BAD_CERT_TABLE);

    /* Junk after the last entry: non-zero bytes in a short tail, or a tail
     * long enough to be read as an entry header. */
    static const size_t junk_len[] = {1, 3, 7, 8, 16};
    for (size_t i = 0; i < sizeof(junk_len) / sizeof(junk_len[0]); i++) {
        memcpy(t, good.data, good.len);
        memset(t + good.len, 0, 16);
        t[good.len + junk_len[i] - 1] = 0x41;
        assert_int_equal(parse_with_table(t, good.len + junk_len[i]), QK_ERR_PE_BAD_CERT_TABLE);
    }
    /* A zero tail shorter than an entry header is padding, and accepted. */
    memcpy(t, good.data, good.len);
    memset(t + good.len, 0, 7);
    assert_int_equal(parse_with_table(t, good.len + 7), QK_OK);
    free(t);
    pb_bytes_free(&good);
}

static void test_rejects_too_many_entries(void **state)
{
    (void)state;
    uint8_t der[8];
    pb_fake_der(der, sizeof(der), 3);
    pb_bytes tbl = {0};
    for (int i = 0; i < MAX_CERT_ENTRIES; i++)
        pb_cert_entry(&tbl, der, sizeof(der), 1);
    assert_int_equal(parse_with_table(tbl.data, tbl.len), QK_OK);
    pb_cert_entry(&tbl, der, sizeof(der), 1);
    assert_int_equal(parse_with_table(tbl.data, tbl.len), QK_ERR_TOO_LARGE);
    pb_bytes_free(&tbl);
}

static void test_rejects_oversized_table(void **state)
{
    (void)state;
    /* One syntactically valid entry just over the table limit. */
    size_t len = QK_PE_MAX_CERT_TABLE + 8;
    uint8_t *tbl = calloc(1, len);
    assert_non_null(tbl);
    pb_put32(tbl, (uint32_t)len);
    pb_put16(tbl + 4, 0x0200);
    pb_put16(tbl + 6, 0x0002);
    pb_image img;
    pb_spec s = {.pe32plus = 0,
                 .nsections = 1,
                 .section_raw = 0x200,
                 .cert_table = tbl,
                 .cert_table_len = len};
    pb_build(&s, &img);
    free(tbl);
    qk_pe *pe = NULL;
    assert_int_equal(qk_pe_parse_mem(img.data, img.len, &pe), QK_ERR_TOO_LARGE);
    assert_null(pe);
    pb_free(&img);
}

/* --- robustness: truncation and bit flips -------------------------------- */

static void test_truncation_never_parses(void **state)
{
    (void)state;
    for (int plus = 0; plus <= 1; plus++) {
        pb_image img;
        build_plain(&img, plus);
        /* An unsigned image parses once its section table is complete
         * (section data is not the parser's business)... */
        for (size_t len = 0; len < img.headers_end; len++) {
            qk_err rc = parse_copy(img.data, len);
            if (rc == QK_OK)
                fail_msg("unsigned PE%s cut to %zu bytes parsed", plus ? "32+" : "32", len);
            assert_true(rc == QK_ERR_NOT_PE || rc == QK_ERR_PE_BAD_HEADER ||
                        rc == QK_ERR_PE_NO_CERT_DIR || rc == QK_ERR_PE_BAD_SECTIONS);
        }
        expect_parse(img.data, img.headers_end, QK_OK);
        pb_free(&img);

        /* ...a signed one must fail at every length short of the whole file,
         * since the table would run past the end. */
        build_signed(&img, plus, 300);
        const size_t boundaries[] = {0,
                                     63,
                                     64,
                                     img.e_lfanew,
                                     img.coff_off,
                                     img.opt_off,
                                     img.opt_off + 2,
                                     img.checksum_off,
                                     img.certdir_off,
                                     img.sect_off,
                                     img.headers_end,
                                     img.image_end,
                                     img.len - 1};
        for (size_t i = 0; i < sizeof(boundaries) / sizeof(boundaries[0]); i++)
            assert_int_not_equal(parse_copy(img.data, boundaries[i]), QK_OK);
        for (size_t len = 0; len < img.len; len++) {
            qk_err rc = parse_copy(img.data, len);
            if (rc == QK_OK)
                fail_msg("signed PE%s cut to %zu of %zu bytes parsed", plus ? "32+" : "32", len,
                         img.len);
        }
        expect_parse(img.data, img.len, QK_OK);
        pb_free(&img);
    }
}

/* Everything a caller may do with a parsed image, with a consistency check
 * that needs no knowledge of what the bytes mean: re-signing then re-parsing
 * must give back the digest a signer was told to sign. */
static void exercise(const uint8_t *data, size_t len)
{
    qk_pe *pe = NULL;
    if (qk_pe_parse_mem(data, len, &pe) != QK_OK)
        return;
    uint8_t d1[QK_HASH_MAX_SIZE], d2[QK_HASH_MAX_SIZE], d3[QK_HASH_MAX_SIZE];
    assert_int_equal(qk_pe_digest(pe, QK_HASH_SHA256, d1), QK_OK);
    assert_int_equal(qk_pe_signing_digest(pe, QK_HASH_SHA256, d2), QK_OK);
    (void)qk_pe_compute_checksum(pe);
    (void)qk_pe_stored_checksum(pe);
    uint32_t off, size;
    qk_pe_cert_table(pe, &off, &size);
    assert_true((uint64_t)off + size <= len);
    for (size_t i = 0; i < qk_pe_cert_count(pe); i++) {
        const qk_pe_cert *c = qk_pe_cert_get(pe, i);
        assert_non_null(c);
        assert_true(c->data.data >= data + off && c->data.data + c->data.len <= data + off + size);
        assert_true(c->data.len + 8 <= c->length);
    }
    assert_null(qk_pe_cert_get(pe, qk_pe_cert_count(pe)));

    static const uint8_t sig[] = {0x30, 0x03, 0x02, 0x01, 0x05};
    qk_slice s = {sig, sizeof(sig)};
    qk_buf out = {0};
    assert_int_equal(qk_pe_build_signed(pe, &s, 1, &out), QK_OK);
    qk_pe *pe2 = NULL;
    assert_int_equal(qk_pe_parse_mem(out.data, out.len, &pe2), QK_OK);
    assert_int_equal(qk_pe_cert_count(pe2), 1);
    assert_int_equal(qk_pe_digest(pe2, QK_HASH_SHA256, d3), QK_OK);
    assert_memory_equal(d2, d3, 32);
    assert_int_equal(qk_pe_compute_checksum(pe2), qk_pe_stored_checksum(pe2));
    qk_pe_free(pe2);
    qk_buf_free(&out);
    qk_pe_free(pe);
}

static void flip_all_bits(const uint8_t *data, size_t len)
{
    size_t limit = len < 1024 ? len : 1024;
    uint8_t *copy = malloc(len);
    assert_non_null(copy);
    memcpy(copy, data, len);
    for (size_t bit = 0; bit < limit * 8; bit++) {
        copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        exercise(copy, len);
        copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    free(copy);
}

static void test_bit_flips_synthetic(void **state)
{
    (void)state;
    uint8_t der[200];
    pb_bytes tbl = {0};
    pb_fake_der(der, 123, 1);
    pb_cert_entry(&tbl, der, 123, 1);
    pb_fake_der(der, 200, 2);
    pb_cert_entry(&tbl, der, 200, 1);
    for (int plus = 0; plus <= 1; plus++) {
        pb_image img;
        pb_spec s = {.pe32plus = plus,
                     .nsections = 4,
                     .section_raw = 0x40,
                     .overlay = 3,
                     .cert_table = tbl.data,
                     .cert_table_len = tbl.len};
        pb_build(&s, &img);
        expect_parse(img.data, img.len, QK_OK);
        flip_all_bits(img.data, img.len);
        pb_free(&img);
    }
    pb_bytes_free(&tbl);
}

/* --- real mingw-built binaries ------------------------------------------- */

static const struct {
    const char *name;
    int pe32plus;
    uint16_t machine;
} real_files[] = {
    {"x64-gui.exe", 1, 0x8664},
    {"x86-dll.dll", 0, 0x14c},
};

static uint8_t *load_real(size_t i, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/fixtures/bin/%s", QK_TEST_SRCDIR, real_files[i].name);
    uint8_t *d = (uint8_t *)read_file(path, len);
    if (d == NULL)
        fail_msg("cannot read %s: %s", path, strerror(errno));
    return d;
}

static void test_real_binaries(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(real_files) / sizeof(real_files[0]); i++) {
        size_t len;
        uint8_t *d = load_real(i, &len);
        qk_pe *pe = NULL;
        assert_int_equal(qk_pe_parse_mem(d, len, &pe), QK_OK);
        assert_int_equal(qk_pe_is_pe32plus(pe), real_files[i].pe32plus);
        assert_int_equal(qk_pe_machine(pe), real_files[i].machine);
        assert_int_equal(qk_pe_cert_count(pe), 0);
        /* GNU ld stores a checksum: a third, independent implementation. */
        uint32_t e = pb_get32(d + 0x3c);
        uint32_t stored = pb_get32(d + e + 88);
        assert_int_not_equal(stored, 0);
        assert_int_equal(qk_pe_stored_checksum(pe), stored);
        assert_int_equal(qk_pe_compute_checksum(pe), stored);
        assert_int_equal(pb_checksum(d, len, e + 88), stored);

        /* Sign it (fake DER) and flip every header bit of the signed file. */
        uint8_t der[300];
        pb_fake_der(der, sizeof(der), 9);
        qk_slice s = {der, sizeof(der)};
        qk_buf out = {0};
        assert_int_equal(qk_pe_build_signed(pe, &s, 1, &out), QK_OK);
        expect_parse(out.data, out.len, QK_OK);
        flip_all_bits(out.data, out.len);
        qk_buf_free(&out);
        qk_pe_free(pe);
        free(d);
    }
}

/* --- positive cases ------------------------------------------------------ */

static void test_parses_pe32_and_pe32plus(void **state)
{
    (void)state;
    for (int plus = 0; plus <= 1; plus++) {
        pb_image img;
        build_plain(&img, plus);
        qk_pe *pe = NULL;
        assert_int_equal(qk_pe_parse_mem(img.data, img.len, &pe), QK_OK);
        assert_ptr_equal(qk_pe_data(pe), img.data);
        assert_int_equal(qk_pe_size(pe), img.len);
        assert_int_equal(qk_pe_is_pe32plus(pe), plus);
        assert_int_equal(qk_pe_machine(pe), plus ? 0x8664 : 0x14c);
        assert_int_equal(qk_pe_stored_checksum(pe), pb_get32(img.data + img.checksum_off));
        assert_int_equal(qk_pe_compute_checksum(pe),
                         pb_checksum(img.data, img.len, img.checksum_off));
        assert_int_equal(qk_pe_compute_checksum(pe), qk_pe_stored_checksum(pe));
        uint32_t off = 1, size = 1;
        qk_pe_cert_table(pe, &off, &size);
        assert_int_equal(off, 0);
        assert_int_equal(size, 0);
        qk_pe_cert_table(pe, NULL, NULL);
        assert_int_equal(qk_pe_cert_count(pe), 0);
        assert_null(qk_pe_cert_get(pe, 0));
        qk_pe_free(pe);
        pb_free(&img);
    }
    qk_pe_free(NULL);
}

static void test_checksum_odd_length_and_stale(void **state)
{
    (void)state;
    pb_image img;
    pb_spec s = {.pe32plus = 1, .nsections = 1, .section_raw = 0x200, .overlay = 7};
    pb_build(&s, &img);
    assert_int_equal(img.len % 2, 1);
    qk_pe *pe = NULL;
    assert_int_equal(qk_pe_parse_mem(img.data, img.len, &pe), QK_OK);
    uint32_t want = pb_checksum(img.data, img.len, img.checksum_off);
    assert_int_equal(qk_pe_compute_checksum(pe), want);
    /* The stored value is ignored, not folded in. */
    pb_put32(img.data + img.checksum_off, 0xdeadbeef);
    assert_int_equal(qk_pe_compute_checksum(pe), want);
    assert_int_equal(qk_pe_stored_checksum(pe), 0xdeadbeef);
    qk_pe_free(pe);
    pb_free(&img);
}

static void test_multiple_entries(void **state)
{
    (void)state;
    static const size_t sizes[] = {123, 61, 301}; /* 61 + 8: unaligned when last */
    uint8_t der[3][400];
    for (int final_pad = 0; final_pad <= 1; final_pad++) {
        for (size_t n = 2; n <= 3; n++) {
            pb_bytes tbl = {0};
            size_t starts[3];
            for (size_t i = 0; i < n; i++) {
                pb_fake_der(der[i], sizes[i], (uint8_t)i);
                starts[i] = tbl.len;
                pb_cert_entry(&tbl, der[i], sizes[i], i + 1 < n || final_pad);
            }
            pb_image img;
            pb_spec s = {.pe32plus = (int)(n & 1),
                         .nsections = 2,
                         .section_raw = 0x100,
                         .cert_table = tbl.data,
                         .cert_table_len = tbl.len};
            pb_build(&s, &img);
            qk_pe *pe = NULL;
            assert_int_equal(qk_pe_parse_mem(img.data, img.len, &pe), QK_OK);
            assert_int_equal(qk_pe_cert_count(pe), n);
            uint32_t off, size;
            qk_pe_cert_table(pe, &off, &size);
            assert_int_equal(off, img.image_end);
            assert_int_equal(size, tbl.len);
            assert_int_equal(off % 8, 0);
            for (size_t i = 0; i < n; i++) {
                const qk_pe_cert *c = qk_pe_cert_get(pe, i);
                assert_non_null(c);
                assert_int_equal(c->length, pb_get32(tbl.data + starts[i]));
                assert_int_equal(c->revision, QK_WIN_CERT_REVISION_2_0);
                assert_int_equal(c->type, QK_WIN_CERT_TYPE_PKCS_SIGNED_DATA);
                /* data is the DER itself, without header or padding */
                assert_ptr_equal(c->data.data, img.data + off + starts[i] + 8);
                assert_int_equal(c->data.len, sizes[i]);
                assert_memory_equal(c->data.data, der[i], sizes[i]);
            }
            assert_null(qk_pe_cert_get(pe, n));
            qk_pe_free(pe);
            pb_free(&img);
            pb_bytes_free(&tbl);
        }
    }
}

static void test_entry_not_der_keeps_whole_body(void **state)
{
    (void)state;
    /* A body that is not a DER TLV is handed over whole, so the DER parser
     * (not this one) reports it. */
    uint8_t body[21];
    memset(body, 0xee, sizeof(body));
    pb_bytes tbl = {0};
    pb_cert_entry(&tbl, body, sizeof(body), 1);
    pb_image img;
    pb_spec s = {.pe32plus = 0,
                 .nsections = 1,
                 .section_raw = 0x200,
                 .cert_table = tbl.data,
                 .cert_table_len = tbl.len};
    pb_build(&s, &img);
    qk_pe *pe = NULL;
    assert_int_equal(qk_pe_parse_mem(img.data, img.len, &pe), QK_OK);
    assert_int_equal(qk_pe_cert_count(pe), 1);
    assert_int_equal(qk_pe_cert_get(pe, 0)->data.len, pb_get32(tbl.data) - 8);
    qk_pe_free(pe);
    pb_free(&img);
    pb_bytes_free(&tbl);
}

static void test_unsigned_dir_offset_without_size(void **state)
{
    (void)state;
    /* Offset set, size 0: no table (linkers leave such leftovers). */
    pb_image img;
    build_plain(&img, 1);
    pb_put32(img.data + img.certdir_off, 0x12345678);
    qk_pe *pe = NULL;
    assert_int_equal(qk_pe_parse_mem(img.data, img.len, &pe), QK_OK);
    assert_int_equal(qk_pe_cert_count(pe), 0);
    check_digests(&img, 0, 0);
    qk_pe_free(pe);
    pb_free(&img);
}

/* --- digests ------------------------------------------------------------- */

static void test_digest_unsigned(void **state)
{
    (void)state;
    for (int plus = 0; plus <= 1; plus++) {
        for (size_t overlay = 0; overlay <= 9; overlay++) {
            pb_image img;
            pb_spec s = {
                .pe32plus = plus, .nsections = 2, .section_raw = 0x200, .overlay = overlay};
            pb_build(&s, &img);
            size_t pad = (8 - img.len % 8) % 8;
            /* Verifier and signer agree: both include the signer's zero padding. */
            check_digests(&img, pad, pad);
            pb_free(&img);
        }
    }
    /* The padding really is hashed: an odd-length file and the same file
     * explicitly zero-padded have the same digest; without it they would not. */
    pb_image img, padded;
    pb_spec s = {.pe32plus = 1, .nsections = 1, .section_raw = 0x200, .overlay = 3};
    pb_build(&s, &img);
    s.overlay = 8;
    pb_build(&s, &padded);
    memset(padded.data + img.len, 0, padded.len - img.len);
    memcpy(padded.data, img.data, img.len);
    qk_pe *a = NULL, *b = NULL;
    assert_int_equal(qk_pe_parse_mem(img.data, img.len, &a), QK_OK);
    assert_int_equal(qk_pe_parse_mem(padded.data, padded.len, &b), QK_OK);
    uint8_t da[32], db[32], raw[32];
    assert_int_equal(qk_pe_digest(a, QK_HASH_SHA256, da), QK_OK);
    assert_int_equal(qk_pe_digest(b, QK_HASH_SHA256, db), QK_OK);
    assert_memory_equal(da, db, 32);
    ref_digest(img.data, img.checksum_off, img.certdir_off, img.len, 0, QK_HASH_SHA256, raw);
    assert_memory_not_equal(da, raw, 32);
    qk_pe_free(a);
    qk_pe_free(b);
    pb_free(&img);
    pb_free(&padded);
}

static void test_digest_signed(void **state)
{
    (void)state;
    uint8_t der[77];
    pb_fake_der(der, sizeof(der), 4);
    pb_bytes tbl = {0};
    pb_cert_entry(&tbl, der, sizeof(der), 1);
    for (int plus = 0; plus <= 1; plus++) {
        for (int unaligned = 0; unaligned <= 1; unaligned++) {
            pb_image img;
            pb_spec s = {.pe32plus = plus,
                         .nsections = 2,
                         .section_raw = 0x200,
                         .overlay = 5,
                         .cert_table = tbl.data,
                         .cert_table_len = tbl.len,
                         .cert_unaligned = unaligned};
            pb_build(&s, &img);
            assert_int_equal(img.image_end % 8, unaligned ? 5 : 0);
            /* A verifier hashes up to the table as it is; a new signature
             * covers the image as rewritten, i.e. padded to 8. */
            check_digests(&img, 0, (8 - img.image_end % 8) % 8);
            pb_free(&img);
        }
    }
    pb_bytes_free(&tbl);
}

static void test_digest_bad_args(void **state)
{
    (void)state;
    pb_image img;
    build_plain(&img, 0);
    qk_pe *pe = NULL;
    uint8_t md[QK_HASH_MAX_SIZE];
    assert_int_equal(qk_pe_parse_mem(img.data, img.len, &pe), QK_OK);
    assert_int_equal(qk_pe_digest(pe, QK_HASH_NONE, md), QK_ERR_UNSUPPORTED_ALG);
    assert_int_equal(qk_pe_signing_digest(pe, (qk_hash_alg)99, md), QK_ERR_UNSUPPORTED_ALG);
    assert_int_equal(qk_pe_digest(pe, QK_HASH_SHA256, NULL), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_pe_digest(NULL, QK_HASH_SHA256, md), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_pe_signing_digest(NULL, QK_HASH_SHA256, md), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_pe_parse_mem(img.data, img.len, NULL), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_pe_parse_mem(NULL, 10, &pe), QK_ERR_INVALID_ARG);
    qk_pe_free(pe);
    pb_free(&img);
}

/* --- building signed images ---------------------------------------------- */

/* Checks the layout rules of a freshly written signed image `out` built
 * from `orig_img` (whose first image_end bytes must be kept). */
static void check_signed_layout(const uint8_t *out, size_t out_len, const pb_image *orig,
                                size_t keep, const qk_slice *sigs, size_t n)
{
    size_t start = n ? (keep + 7) / 8 * 8 : keep;
    size_t tsize = 0;
    for (size_t i = 0; i < n; i++)
        tsize += (8 + sigs[i].len + 7) / 8 * 8;
    assert_int_equal(out_len, start + tsize);
    /* Everything but the checksum and the directory entry is kept verbatim. */
    assert_memory_equal(out, orig->data, orig->checksum_off);
    assert_memory_equal(out + orig->checksum_off + 4, orig->data + orig->checksum_off + 4,
                        orig->certdir_off - orig->checksum_off - 4);
    assert_memory_equal(out + orig->certdir_off + 8, orig->data + orig->certdir_off + 8,
                        keep - orig->certdir_off - 8);
    for (size_t i = keep; i < start; i++)
        assert_int_equal(out[i], 0);
    assert_int_equal(pb_get32(out + orig->certdir_off), n ? start : 0);
    assert_int_equal(pb_get32(out + orig->certdir_off + 4), tsize);
    assert_int_equal(pb_get32(out + orig->checksum_off),
                     pb_checksum(out, out_len, orig->checksum_off));
    size_t at = start;
    for (size_t i = 0; i < n; i++) {
        uint32_t dw = pb_get32(out + at);
        assert_int_equal(dw % 8, 0);
        assert_int_equal(dw, (8 + sigs[i].len + 7) / 8 * 8); /* padding counted */
        assert_int_equal(pb_get16(out + at + 4), 0x0200);
        assert_int_equal(pb_get16(out + at + 6), 0x0002);
        assert_memory_equal(out + at + 8, sigs[i].data, sigs[i].len);
        for (size_t j = 8 + sigs[i].len; j < dw; j++)
            assert_int_equal(out[at + j], 0);
        at += dw;
    }
}

static void test_build_signed_layout(void **state)
{
    (void)state;
    uint8_t d1[100], d2[37], d3[50];
    pb_fake_der(d1, sizeof(d1), 1);
    pb_fake_der(d2, sizeof(d2), 2);
    pb_fake_der(d3, sizeof(d3), 3);
    const qk_slice sigs[] = {{d1, sizeof(d1)}, {d2, sizeof(d2)}};
    const qk_slice resig = {d3, sizeof(d3)};

    for (int plus = 0; plus <= 1; plus++) {
        pb_image img;
        pb_spec s = {.pe32plus = plus, .nsections = 2, .section_raw = 0x200, .overlay = 5};
        pb_build(&s, &img);
        qk_pe *pe = NULL, *pe2 = NULL, *pe3 = NULL, *pe4 = NULL;
        uint8_t want[32], got[32];
        assert_int_equal(qk_pe_parse_mem(img.data, img.len, &pe), QK_OK);
        assert_int_equal(qk_pe_signing_digest(pe, QK_HASH_SHA256, want), QK_OK);

        qk_buf one = {0}, two = {0}, stripped = {0};
        assert_int_equal(qk_pe_build_signed(pe, sigs, 2, &one), QK_OK);
        check_signed_layout(one.data, one.len, &img, img.len, sigs, 2);
        assert_int_equal(qk_pe_parse_mem(one.data, one.len, &pe2), QK_OK);
        assert_int_equal(qk_pe_cert_count(pe2), 2);
        assert_memory_equal(qk_pe_cert_get(pe2, 1)->data.data, d2, sizeof(d2));
        assert_int_equal(qk_pe_compute_checksum(pe2), qk_pe_stored_checksum(pe2));
        assert_int_equal(qk_pe_digest(pe2, QK_HASH_SHA256, got), QK_OK);
        assert_memory_equal(got, want, 32);

        /* Re-signing truncates at the old table (which starts at the padded end). */
        assert_int_equal(qk_pe_build_signed(pe2, &resig, 1, &two), QK_OK);
        size_t padded_end = (img.len + 7) / 8 * 8;
        assert_int_equal(two.len, padded_end + 64);
        assert_memory_equal(two.data + padded_end + 8, d3, sizeof(d3));
        assert_int_equal(qk_pe_parse_mem(two.data, two.len, &pe3), QK_OK);
        assert_int_equal(qk_pe_cert_count(pe3), 1);
        assert_int_equal(qk_pe_digest(pe3, QK_HASH_SHA256, got), QK_OK);
        assert_memory_equal(got, want, 32);

        /* n = 0 strips: the padding stays (it is part of the image now), the
         * directory is cleared, and the digest is unchanged. */
        assert_int_equal(qk_pe_build_signed(pe3, NULL, 0, &stripped), QK_OK);
        assert_int_equal(stripped.len, padded_end);
        assert_memory_equal(stripped.data, two.data, img.checksum_off);
        assert_int_equal(pb_get32(stripped.data + img.certdir_off), 0);
        assert_int_equal(pb_get32(stripped.data + img.certdir_off + 4), 0);
        assert_int_equal(pb_get32(stripped.data + img.checksum_off),
                         pb_checksum(stripped.data, stripped.len, img.checksum_off));
        assert_int_equal(qk_pe_parse_mem(stripped.data, stripped.len, &pe4), QK_OK);
        assert_int_equal(qk_pe_cert_count(pe4), 0);
        assert_int_equal(qk_pe_digest(pe4, QK_HASH_SHA256, got), QK_OK);
        assert_memory_equal(got, want, 32);

        /* Stripping an unsigned image changes nothing but the checksum. */
        qk_buf same = {0};
        pb_put32(img.data + img.checksum_off, 0);
        assert_int_equal(qk_pe_build_signed(pe, NULL, 0, &same), QK_OK);
        assert_int_equal(same.len, img.len);
        pb_fix_checksum(&img);
        assert_memory_equal(same.data, img.data, img.len);

        qk_buf_free(&same);
        qk_buf_free(&one);
        qk_buf_free(&two);
        qk_buf_free(&stripped);
        qk_pe_free(pe);
        qk_pe_free(pe2);
        qk_pe_free(pe3);
        qk_pe_free(pe4);
        pb_free(&img);
    }
}

static void test_build_signed_unaligned_table(void **state)
{
    (void)state;
    /* An old table at an unaligned offset: the new one starts 8-aligned,
     * and the digest of the result equals the signing digest. */
    uint8_t der[40];
    pb_fake_der(der, sizeof(der), 5);
    pb_bytes tbl = {0};
    pb_cert_entry(&tbl, der, sizeof(der), 1);
    pb_image img;
    pb_spec s = {.pe32plus = 1,
                 .nsections = 1,
                 .section_raw = 0x200,
                 .overlay = 3,
                 .cert_table = tbl.data,
                 .cert_table_len = tbl.len,
                 .cert_unaligned = 1};
    pb_build(&s, &img);
    qk_pe *pe = NULL, *pe2 = NULL;
    assert_int_equal(qk_pe_parse_mem(img.data, img.len, &pe), QK_OK);
    uint8_t want[32], got[32];
    assert_int_equal(qk_pe_signing_digest(pe, QK_HASH_SHA256, want), QK_OK);
    qk_slice sig = {der, sizeof(der)};
    qk_buf out = {0};
    assert_int_equal(qk_pe_build_signed(pe, &sig, 1, &out), QK_OK);
    check_signed_layout(out.data, out.len, &img, img.image_end, &sig, 1);
    assert_int_equal(qk_pe_parse_mem(out.data, out.len, &pe2), QK_OK);
    assert_int_equal(qk_pe_digest(pe2, QK_HASH_SHA256, got), QK_OK);
    assert_memory_equal(got, want, 32);
    qk_buf_free(&out);
    qk_pe_free(pe);
    qk_pe_free(pe2);
    pb_free(&img);
    pb_bytes_free(&tbl);
}

static void test_build_signed_bad_args(void **state)
{
    (void)state;
    pb_image img;
    build_plain(&img, 1);
    qk_pe *pe = NULL;
    assert_int_equal(qk_pe_parse_mem(img.data, img.len, &pe), QK_OK);
    static const uint8_t der[] = {0x30, 0};
    qk_buf out = {(uint8_t *)1, 1};
    qk_slice empty = {der, 0}, null = {NULL, 2}, huge = {der, (size_t)QK_PE_MAX_CERT_TABLE + 1};
    assert_int_equal(qk_pe_build_signed(pe, &empty, 1, &out), QK_ERR_INVALID_ARG);
    assert_null(out.data);
    assert_int_equal(qk_pe_build_signed(pe, &null, 1, &out), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_pe_build_signed(pe, NULL, 1, &out), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_pe_build_signed(NULL, &empty, 0, &out), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_pe_build_signed(pe, &huge, 1, &out), QK_ERR_TOO_LARGE);
    assert_null(out.data);
    qk_pe_free(pe);
    pb_free(&img);
}

/* --- writing files ------------------------------------------------------- */

static void test_open_errors(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char p[1024];
    qk_pe *pe = (qk_pe *)(uintptr_t)1;
    snprintf(p, sizeof(p), "%s/missing.exe", dir);
    assert_int_equal(qk_pe_open(p, &pe), QK_ERR_IO);
    assert_null(pe);
    assert_int_equal(qk_pe_open(dir, &pe), QK_ERR_IO);
    snprintf(p, sizeof(p), "%s/empty.exe", dir);
    write_file(p, (const uint8_t *)"", 0, 0644);
    assert_int_equal(qk_pe_open(p, &pe), QK_ERR_NOT_PE);
    assert_int_equal(qk_pe_open(NULL, &pe), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_pe_open(p, NULL), QK_ERR_INVALID_ARG);

    /* A valid odd-length file through the mmap path. */
    pb_image img;
    pb_spec s = {.pe32plus = 0, .nsections = 1, .section_raw = 0x200, .overlay = 1};
    pb_build(&s, &img);
    snprintf(p, sizeof(p), "%s/odd.exe", dir);
    write_file(p, img.data, img.len, 0644);
    assert_int_equal(qk_pe_open(p, &pe), QK_OK);
    assert_int_equal(qk_pe_size(pe), img.len);
    assert_memory_equal(qk_pe_data(pe), img.data, img.len);
    qk_pe_free(pe);
    pb_free(&img);
    rm_tree(dir);
    free(dir);
}

static void test_write_signed_file(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char path[1024], newpath[1024];
    snprintf(path, sizeof(path), "%s/app.exe", dir);
    snprintf(newpath, sizeof(newpath), "%s/new.exe", dir);
    pb_image img;
    pb_spec s = {.pe32plus = 1, .nsections = 2, .section_raw = 0x200, .overlay = 11};
    pb_build(&s, &img);
    write_file(path, img.data, img.len, 0751);

    uint8_t der[99];
    pb_fake_der(der, sizeof(der), 6);
    qk_slice sig = {der, sizeof(der)};
    qk_pe *pe = NULL;
    qk_buf want = {0};
    assert_int_equal(qk_pe_open(path, &pe), QK_OK);
    assert_int_equal(qk_pe_build_signed(pe, &sig, 1, &want), QK_OK);
    /* In place, while the old contents are still mapped. */
    assert_int_equal(qk_pe_write_signed(pe, &sig, 1, path), QK_OK);
    mode_t old_umask = umask(022);
    assert_int_equal(qk_pe_write_signed(pe, &sig, 1, newpath), QK_OK);
    umask(old_umask);
    qk_pe_free(pe);

    size_t len;
    char *got = read_file(path, &len);
    assert_non_null(got);
    assert_int_equal(len, want.len);
    assert_memory_equal(got, want.data, len);
    check_signed_layout((uint8_t *)got, len, &img, img.len, &sig, 1);
    free(got);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0751);
    assert_int_equal(stat(newpath, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0644);
    assert_int_equal(count_entries(dir), 2); /* no temporary left behind */

    /* Re-signing the written file, then stripping it, from disk. */
    assert_int_equal(qk_pe_open(path, &pe), QK_OK);
    assert_int_equal(qk_pe_write_signed(pe, NULL, 0, path), QK_OK);
    qk_pe_free(pe);
    got = read_file(path, &len);
    assert_int_equal(len, (img.len + 7) / 8 * 8);
    assert_int_equal(pb_get32((uint8_t *)got + img.certdir_off + 4), 0);
    assert_int_equal(pb_get32((uint8_t *)got + img.checksum_off),
                     pb_checksum((uint8_t *)got, len, img.checksum_off));
    free(got);

    qk_buf_free(&want);
    pb_free(&img);
    rm_tree(dir);
    free(dir);
}

/* A symbolic link is followed: the file it names is replaced, in its own
 * directory, and the link stays; a dangling link is refused untouched. */
static void test_write_signed_through_symlink(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char sub[1024], target[1024], link[1024], dangling[1024];
    snprintf(sub, sizeof(sub), "%s/real", dir);
    snprintf(target, sizeof(target), "%s/real/app.exe", dir);
    snprintf(link, sizeof(link), "%s/link.exe", dir);
    snprintf(dangling, sizeof(dangling), "%s/dangling.exe", dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    pb_image img;
    pb_spec s = {.pe32plus = 0, .nsections = 1, .section_raw = 0x200, .overlay = 3};
    pb_build(&s, &img);
    write_file(target, img.data, img.len, 0700);
    assert_int_equal(symlink("real/app.exe", link), 0);
    assert_int_equal(symlink("real/missing.exe", dangling), 0);

    uint8_t der[64];
    pb_fake_der(der, sizeof(der), 3);
    qk_slice sig = {der, sizeof(der)};
    qk_pe *pe = NULL;
    qk_buf want = {0};
    assert_int_equal(qk_pe_open(link, &pe), QK_OK);
    assert_int_equal(qk_pe_build_signed(pe, &sig, 1, &want), QK_OK);
    assert_int_equal(qk_pe_write_signed(pe, &sig, 1, link), QK_OK);
    assert_int_equal(qk_pe_write_signed(pe, &sig, 1, dangling), QK_ERR_IO);
    assert_non_null(strstr(qk_error_detail(), "symbolic link to a missing file"));
    qk_pe_free(pe);

    struct stat st;
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    assert_int_equal(lstat(dangling, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    assert_int_equal(stat(target, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    size_t len;
    char *got = read_file(target, &len);
    assert_non_null(got);
    assert_int_equal(len, want.len);
    assert_memory_equal(got, want.data, len);
    free(got);
    assert_int_equal(count_entries(sub), 1); /* the temporary was in real/, and is gone */
    assert_int_equal(count_entries(dir), 3); /* real/, link.exe, dangling.exe */

    qk_buf_free(&want);
    pb_free(&img);
    rm_tree(dir);
    free(dir);
}

static void test_write_signed_failure_keeps_original(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char path[1024];
    snprintf(path, sizeof(path), "%s/app.exe", dir);
    pb_image img;
    pb_spec s = {.pe32plus = 0, .nsections = 8, .section_raw = 0x1000};
    pb_build(&s, &img);
    write_file(path, img.data, img.len, 0700);
    uint8_t der[64];
    pb_fake_der(der, sizeof(der), 8);
    qk_slice sig = {der, sizeof(der)};
    qk_pe *pe = NULL;
    assert_int_equal(qk_pe_open(path, &pe), QK_OK);

    /* The write itself fails (file size limit, which binds root too). */
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 4096;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    qk_err rc = qk_pe_write_signed(pe, &sig, 1, path);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    assert_int_equal(rc, QK_ERR_IO);

    /* The directory is not writable (only meaningful without CAP_DAC_OVERRIDE). */
    if (geteuid() != 0) {
        assert_int_equal(chmod(dir, 0500), 0);
        assert_int_equal(qk_pe_write_signed(pe, &sig, 1, path), QK_ERR_IO);
        assert_int_equal(chmod(dir, 0700), 0);
    }
    /* The target's directory does not exist. */
    char bad[1100];
    snprintf(bad, sizeof(bad), "%s/no/such/dir/app.exe", dir);
    assert_int_equal(qk_pe_write_signed(pe, &sig, 1, bad), QK_ERR_IO);
    qk_pe_free(pe);

    size_t len;
    char *got = read_file(path, &len);
    assert_int_equal(len, img.len);
    assert_memory_equal(got, img.data, len);
    free(got);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    assert_int_equal(count_entries(dir), 1);
    pb_free(&img);
    rm_tree(dir);
    free(dir);
}

static void test_pending_commit_and_abort(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char path[1024];
    snprintf(path, sizeof(path), "%s/app.exe", dir);
    pb_image img;
    build_plain(&img, 1);
    write_file(path, img.data, img.len, 0640);
    uint8_t der[30];
    pb_fake_der(der, sizeof(der), 2);
    qk_slice sig = {der, sizeof(der)};
    qk_pe *pe = NULL;
    assert_int_equal(qk_pe_open(path, &pe), QK_OK);

    qk_pe_pending *p = NULL;
    assert_int_equal(qk_pe_write_signed_begin(pe, &sig, 1, path, &p), QK_OK);
    assert_non_null(p);
    const char *tmp = qk_pe_pending_path(p);
    assert_non_null(tmp);
    assert_int_equal(strncmp(tmp, dir, strlen(dir)), 0); /* same directory: rename is atomic */
    struct stat st;
    assert_int_equal(stat(tmp, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
    assert_int_equal(count_entries(dir), 2);
    char *tmp_copy = strdup(tmp);
    qk_pe_pending_abort(p);
    assert_int_equal(stat(tmp_copy, &st), -1);
    assert_int_equal(errno, ENOENT);
    free(tmp_copy);
    assert_int_equal(count_entries(dir), 1);
    size_t len;
    char *got = read_file(path, &len);
    assert_int_equal(len, img.len);
    assert_memory_equal(got, img.data, len);
    free(got);

    p = NULL;
    assert_int_equal(qk_pe_write_signed_begin(pe, &sig, 1, path, &p), QK_OK);
    assert_int_equal(qk_pe_pending_commit(p), QK_OK);
    assert_int_equal(count_entries(dir), 1);
    got = read_file(path, &len);
    assert_int_equal(len, img.len + 40);
    assert_memory_equal(got + img.len + 8, der, sizeof(der));
    free(got);
    /* The rename-only commit (the caller fsyncs the directory) leaves the
     * same file: the signed image, the temporary gone. */
    write_file(path, img.data, img.len, 0640);
    p = NULL;
    assert_int_equal(qk_pe_write_signed_begin(pe, &sig, 1, path, &p), QK_OK);
    assert_int_equal(count_entries(dir), 2);
    assert_int_equal(qk_pe_pending_rename(p), QK_OK);
    assert_int_equal(count_entries(dir), 1);
    got = read_file(path, &len);
    assert_int_equal(len, img.len + 40);
    assert_memory_equal(got + img.len + 8, der, sizeof(der));
    free(got);
    qk_pe_pending_abort(NULL);
    assert_int_equal(qk_pe_pending_commit(NULL), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_pe_pending_rename(NULL), QK_ERR_INVALID_ARG);
    assert_int_equal(qk_pe_write_signed_begin(pe, &sig, 1, NULL, &p), QK_ERR_INVALID_ARG);

    qk_pe_free(pe);
    pb_free(&img);
    rm_tree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rejects_empty_and_short),
        cmocka_unit_test(test_rejects_bad_dos_header),
        cmocka_unit_test(test_rejects_bad_pe_and_coff_header),
        cmocka_unit_test(test_rejects_bad_optional_header),
        cmocka_unit_test(test_rejects_section_table_past_eof),
        cmocka_unit_test(test_rejects_cert_dir_outside_file),
        cmocka_unit_test(test_rejects_cert_table_not_at_end),
        cmocka_unit_test(test_rejects_cert_table_over_headers),
        cmocka_unit_test(test_rejects_bad_win_certificate),
        cmocka_unit_test(test_rejects_too_many_entries),
        cmocka_unit_test(test_rejects_oversized_table),
        cmocka_unit_test(test_truncation_never_parses),
        cmocka_unit_test(test_bit_flips_synthetic),
        cmocka_unit_test(test_real_binaries),
        cmocka_unit_test(test_parses_pe32_and_pe32plus),
        cmocka_unit_test(test_checksum_odd_length_and_stale),
        cmocka_unit_test(test_multiple_entries),
        cmocka_unit_test(test_entry_not_der_keeps_whole_body),
        cmocka_unit_test(test_unsigned_dir_offset_without_size),
        cmocka_unit_test(test_digest_unsigned),
        cmocka_unit_test(test_digest_signed),
        cmocka_unit_test(test_digest_bad_args),
        cmocka_unit_test(test_build_signed_layout),
        cmocka_unit_test(test_build_signed_unaligned_table),
        cmocka_unit_test(test_build_signed_bad_args),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_write_signed_file),
        cmocka_unit_test(test_write_signed_through_symlink),
        cmocka_unit_test(test_write_signed_failure_keeps_original),
        cmocka_unit_test(test_pending_commit_and_abort),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
