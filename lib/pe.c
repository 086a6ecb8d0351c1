/* PE/COFF parsing and the Authenticode image digest.
 *
 * Everything about the layout is validated once in parse(); later functions
 * rely on the offsets stored in struct qk_pe being inside the image. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "internal.h"
#include "pe_internal.h"
#include "reader.h"

#define MAX_CERT_ENTRIES 64

static qk_err parse_cert_table(qk_pe *pe)
{
    qk_reader r;
    if (qk_rd_at(pe->data, pe->size, pe->cert_off, pe->cert_size, &r) != QK_OK)
        return qk_fail(QK_ERR_PE_BAD_CERT_TABLE, "certificate table outside the file");
    while (r.avail >= 8) {
        size_t entry_off = qk_rd_offset(&r);
        uint32_t len;
        uint16_t rev, type;
        if (qk_rd_u32le(&r, &len) != QK_OK || qk_rd_u16le(&r, &rev) != QK_OK ||
            qk_rd_u16le(&r, &type) != QK_OK)
            return qk_fail(QK_ERR_PE_BAD_CERT_TABLE, "truncated WIN_CERTIFICATE header");
        if (len < 8 || len - 8 > r.avail)
            return qk_fail(QK_ERR_PE_BAD_CERT_TABLE,
                           "WIN_CERTIFICATE at offset %zu declares length %u, table has %zu left",
                           entry_off, len, r.avail + 8);
        if (pe->ncerts == MAX_CERT_ENTRIES)
            return qk_fail(QK_ERR_TOO_LARGE, "more than %d certificate table entries",
                           MAX_CERT_ENTRIES);
        qk_pe_cert *c = &pe->certs[pe->ncerts++];
        c->length = len;
        c->revision = rev;
        c->type = type;
        const uint8_t *body;
        if (qk_rd_bytes(&r, len - 8, &body) != QK_OK)
            return qk_fail(QK_ERR_PE_BAD_CERT_TABLE, "truncated WIN_CERTIFICATE");
        c->data.data = body;
        c->data.len = qk_der_tlv_len(body, len - 8);
        /* Entries start 8-byte aligned; the padding may be missing after the last. */
        size_t pad = (size_t)(QK_ALIGN8(len) - len);
        if (pad > r.avail)
            pad = r.avail;
        if (qk_rd_skip(&r, pad) != QK_OK)
            return QK_ERR_TRUNCATED;
    }
    for (size_t i = 0; i < r.avail; i++)
        if (r.p[i] != 0)
            return qk_fail(QK_ERR_PE_BAD_CERT_TABLE, "non-zero bytes after the last certificate");
    return QK_OK;
}

size_t qk_der_tlv_len(const uint8_t *p, size_t avail)
{
    /* Length of the DER TLV at p, or avail when it does not parse or does not
     * fit, so callers hand the whole region to the strict DER parser. */
    if (avail < 2)
        return avail;
    size_t hdr = 2, len = p[1];
    if (len & 0x80) {
        size_t n = len & 0x7f;
        if (n == 0 || n > 4 || avail < 2 + n)
            return avail;
        len = 0;
        for (size_t i = 0; i < n; i++)
            len = (len << 8) | p[2 + i];
        hdr += n;
    }
    if (len > avail - hdr)
        return avail;
    return hdr + len;
}

static qk_err parse(qk_pe *pe)
{
    qk_reader r;
    const uint8_t *d = pe->data;
    size_t size = pe->size;

    if ((uint64_t)size > QK_PE_MAX_SIZE)
        return qk_fail(QK_ERR_TOO_LARGE, "file is larger than 4 GiB");
    if (size < 64)
        return qk_fail(QK_ERR_NOT_PE, "file too small for a DOS header (%zu bytes)", size);
    if (d[0] != 'M' || d[1] != 'Z')
        return qk_fail(QK_ERR_NOT_PE, "missing MZ signature");
    uint32_t e = qk_get_u32le(d + 0x3c);
    if (e < 64 || (uint64_t)e + 24 > size)
        return qk_fail(QK_ERR_PE_BAD_HEADER, "e_lfanew 0x%x points outside the file", e);
    if (qk_rd_at(d, size, e, size - e, &r) != QK_OK)
        return QK_ERR_TRUNCATED;
    const uint8_t *sig;
    uint16_t nsect, opt_size;
    if (qk_rd_bytes(&r, 4, &sig) != QK_OK || memcmp(sig, "PE\0\0", 4) != 0)
        return qk_fail(QK_ERR_NOT_PE, "missing PE signature at 0x%x", e);
    if (qk_rd_u16le(&r, &pe->machine) != QK_OK || qk_rd_u16le(&r, &nsect) != QK_OK ||
        qk_rd_skip(&r, 12) != QK_OK || qk_rd_u16le(&r, &opt_size) != QK_OK ||
        qk_rd_skip(&r, 2) != QK_OK)
        return qk_fail(QK_ERR_PE_BAD_HEADER, "truncated COFF header");

    qk_reader opt;
    if (qk_rd_sub(&r, opt_size, &opt) != QK_OK)
        return qk_fail(QK_ERR_PE_BAD_HEADER, "optional header (%u bytes) runs past the end",
                       opt_size);
    uint16_t magic;
    if (qk_rd_u16le(&opt, &magic) != QK_OK)
        return qk_fail(QK_ERR_PE_BAD_HEADER, "optional header too small for its magic");
    size_t nrva_at, dirs_at;
    if (magic == 0x10b) {
        pe->pe32plus = 0;
        nrva_at = 92;
        dirs_at = 96;
    } else if (magic == 0x20b) {
        pe->pe32plus = 1;
        nrva_at = 108;
        dirs_at = 112;
    } else {
        return qk_fail(QK_ERR_PE_BAD_MAGIC, "optional header magic 0x%x", magic);
    }
    size_t opt_off = (size_t)e + 24;
    if (opt_size < nrva_at + 4)
        return qk_fail(QK_ERR_PE_BAD_HEADER, "optional header too small (%u bytes)", opt_size);
    uint32_t nrva = qk_get_u32le(d + opt_off + nrva_at);
    if (nrva < 5)
        return qk_fail(QK_ERR_PE_NO_CERT_DIR, "NumberOfRvaAndSizes is %u", nrva);
    if (opt_size < dirs_at + 5 * 8)
        return qk_fail(QK_ERR_PE_NO_CERT_DIR,
                       "optional header (%u bytes) ends before the certificate directory",
                       opt_size);
    if ((uint64_t)dirs_at + (uint64_t)nrva * 8 > opt_size && nrva <= 16)
        return qk_fail(QK_ERR_PE_BAD_HEADER, "%u data directories do not fit the optional header",
                       nrva);
    pe->checksum_off = opt_off + 64;
    pe->certdir_off = opt_off + dirs_at + 4 * 8;
    pe->size_of_headers = qk_get_u32le(d + opt_off + 60);

    /* Section table: must be inside the file. */
    size_t sect_off = opt_off + opt_size;
    if ((uint64_t)nsect * 40 > size - sect_off)
        return qk_fail(QK_ERR_PE_BAD_SECTIONS, "%u section headers run past the end of the file",
                       nsect);
    size_t headers_end = sect_off + (size_t)nsect * 40;

    uint32_t coff = qk_get_u32le(d + pe->certdir_off);
    uint32_t csize = qk_get_u32le(d + pe->certdir_off + 4);
    if (csize == 0) {
        pe->cert_off = 0;
        pe->cert_size = 0;
        return QK_OK;
    }
    if (coff == 0)
        return qk_fail(QK_ERR_PE_BAD_CERT_TABLE, "certificate table of %u bytes at offset 0",
                       csize);
    if ((uint64_t)coff + csize > size)
        return qk_fail(QK_ERR_PE_BAD_CERT_TABLE,
                       "certificate table [0x%x, +0x%x) extends past the end of the file (%zu)",
                       coff, csize, size);
    if (coff < headers_end)
        return qk_fail(QK_ERR_PE_BAD_CERT_TABLE, "certificate table overlaps the PE headers");
    if ((uint64_t)coff + csize != size)
        return qk_fail(QK_ERR_PE_BAD_CERT_TABLE,
                       "certificate table is not at the end of the file (%zu bytes follow it)",
                       size - ((size_t)coff + csize));
    if (csize > QK_PE_MAX_CERT_TABLE)
        return qk_fail(QK_ERR_TOO_LARGE, "certificate table of %u bytes", csize);
    pe->cert_off = coff;
    pe->cert_size = csize;
    return parse_cert_table(pe);
}

static qk_err alloc_pe(qk_pe **out)
{
    qk_pe *pe = calloc(1, sizeof(*pe));
    if (pe == NULL)
        return QK_ERR_NOMEM;
    pe->certs = calloc(MAX_CERT_ENTRIES, sizeof(*pe->certs));
    if (pe->certs == NULL) {
        free(pe);
        return QK_ERR_NOMEM;
    }
    *out = pe;
    return QK_OK;
}

qk_err qk_pe_parse_mem(const uint8_t *data, size_t len, qk_pe **out)
{
    qk_err rc;
    qk_pe *pe = NULL;
    if (out == NULL || (data == NULL && len != 0))
        return QK_ERR_INVALID_ARG;
    *out = NULL;
    qk_clear_detail();
    if ((rc = alloc_pe(&pe)) != QK_OK)
        return rc;
    pe->data = data;
    pe->size = len;
    if ((rc = parse(pe)) != QK_OK) {
        qk_pe_free(pe);
        return rc;
    }
    *out = pe;
    return QK_OK;
}

qk_err qk_pe_open(const char *path, qk_pe **out)
{
    qk_err rc = QK_ERR_IO;
    qk_pe *pe = NULL;
    int fd = -1;
    struct stat st;

    if (out == NULL || path == NULL)
        return QK_ERR_INVALID_ARG;
    *out = NULL;
    qk_clear_detail();
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        rc = qk_fail(QK_ERR_IO, "%s", strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        rc = qk_fail(QK_ERR_IO, "%s", strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = qk_fail(QK_ERR_IO, "not a regular file");
        goto out;
    }
    if ((uint64_t)st.st_size > QK_PE_MAX_SIZE) {
        rc = qk_fail(QK_ERR_TOO_LARGE, "file is larger than 4 GiB");
        goto out;
    }
    if ((rc = alloc_pe(&pe)) != QK_OK)
        goto out;
    pe->size = (size_t)st.st_size;
    if (pe->size > 0) {
        void *m = mmap(NULL, pe->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            rc = qk_fail(QK_ERR_IO, "mmap: %s", strerror(errno));
            goto out;
        }
        /* Advice values are not flags: one call each. */
        (void)madvise(m, pe->size, MADV_SEQUENTIAL);
        (void)madvise(m, pe->size, MADV_WILLNEED);
        pe->data = m;
        pe->mapped = 1;
    }
    if ((rc = parse(pe)) != QK_OK)
        goto out;
    *out = pe;
    pe = NULL;
    rc = QK_OK;
out:
    if (fd >= 0)
        close(fd);
    qk_pe_free(pe);
    return rc;
}

void qk_pe_free(qk_pe *pe)
{
    if (pe == NULL)
        return;
    if (pe->mapped)
        munmap((void *)pe->data, pe->size);
    free(pe->certs);
    free(pe);
}

const uint8_t *qk_pe_data(const qk_pe *pe) { return pe->data; }
size_t qk_pe_size(const qk_pe *pe) { return pe->size; }
int qk_pe_is_pe32plus(const qk_pe *pe) { return pe->pe32plus; }
uint16_t qk_pe_machine(const qk_pe *pe) { return pe->machine; }
uint32_t qk_pe_stored_checksum(const qk_pe *pe) { return qk_get_u32le(pe->data + pe->checksum_off); }

void qk_pe_cert_table(const qk_pe *pe, uint32_t *offset, uint32_t *size)
{
    if (offset)
        *offset = pe->cert_off;
    if (size)
        *size = pe->cert_size;
}

size_t qk_pe_cert_count(const qk_pe *pe) { return pe->ncerts; }

const qk_pe_cert *qk_pe_cert_get(const qk_pe *pe, size_t index)
{
    return index < pe->ncerts ? &pe->certs[index] : NULL;
}

/* --- checksum ----------------------------------------------------------- */

void qk_csum_update(qk_csum *c, const uint8_t *p, size_t n)
{
    uint64_t sum = c->sum;
    if (n == 0)
        return;
    if (c->odd) {
        sum += (uint64_t)p[0] << 8;
        p++;
        n--;
        c->odd = 0;
    }
    /* 64-bit accumulator: folding can wait until the end for any file < 4 GiB
     * (2^31 words of at most 0xffff cannot overflow 64 bits). */
    size_t words = n / 2;
    for (size_t i = 0; i < words; i++)
        sum += (uint32_t)p[2 * i] | ((uint32_t)p[2 * i + 1] << 8);
    if (n & 1) {
        sum += p[n - 1];
        c->odd = 1;
    }
    c->sum = sum;
}

uint32_t qk_csum_final(const qk_csum *c, uint64_t file_len)
{
    uint64_t s = c->sum;
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint32_t)(s + file_len);
}

uint32_t qk_pe_compute_checksum(const qk_pe *pe)
{
    qk_csum c = {0};
    qk_csum_update(&c, pe->data, pe->checksum_off);
    static const uint8_t zero[4] = {0};
    qk_csum_update(&c, zero, 4);
    qk_csum_update(&c, pe->data + pe->checksum_off + 4, pe->size - pe->checksum_off - 4);
    return qk_csum_final(&c, pe->size);
}

/* --- digest ------------------------------------------------------------- */

static qk_err digest_upto(const qk_pe *pe, qk_hash_alg alg, size_t end, size_t zero_pad,
                          uint8_t *out)
{
    qk_err rc = QK_ERR_CRYPTO;
    const EVP_MD *md = EVP_get_digestbynid(qk_hash_nid(alg));
    EVP_MD_CTX *ctx = NULL;
    static const uint8_t zeros[8] = {0};
    unsigned int outlen = 0;

    if (md == NULL)
        return qk_fail(QK_ERR_UNSUPPORTED_ALG, "digest %s", qk_hash_name(alg));
    if ((ctx = EVP_MD_CTX_new()) == NULL)
        return QK_ERR_NOMEM;
    if (EVP_DigestInit_ex(ctx, md, NULL) != 1 ||
        EVP_DigestUpdate(ctx, pe->data, pe->checksum_off) != 1 ||
        EVP_DigestUpdate(ctx, pe->data + pe->checksum_off + 4,
                         pe->certdir_off - (pe->checksum_off + 4)) != 1 ||
        EVP_DigestUpdate(ctx, pe->data + pe->certdir_off + 8, end - (pe->certdir_off + 8)) != 1 ||
        (zero_pad && EVP_DigestUpdate(ctx, zeros, zero_pad) != 1) ||
        EVP_DigestFinal_ex(ctx, out, &outlen) != 1) {
        rc = qk_fail_ossl(QK_ERR_CRYPTO, "image digest");
        goto out;
    }
    rc = QK_OK;
out:
    EVP_MD_CTX_free(ctx);
    return rc;
}

size_t qk_pe_image_end(const qk_pe *pe)
{
    return pe->cert_size ? pe->cert_off : pe->size;
}

qk_err qk_pe_digest(const qk_pe *pe, qk_hash_alg alg, uint8_t *out)
{
    if (pe == NULL || out == NULL)
        return QK_ERR_INVALID_ARG;
    size_t end = qk_pe_image_end(pe);
    size_t pad = pe->cert_size ? 0 : (size_t)(QK_ALIGN8(end) - end);
    return digest_upto(pe, alg, end, pad, out);
}

qk_err qk_pe_signing_digest(const qk_pe *pe, qk_hash_alg alg, uint8_t *out)
{
    if (pe == NULL || out == NULL)
        return QK_ERR_INVALID_ARG;
    size_t end = qk_pe_image_end(pe);
    return digest_upto(pe, alg, end, (size_t)(QK_ALIGN8(end) - end), out);
}
