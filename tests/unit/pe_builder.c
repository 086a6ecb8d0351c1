/* Synthetic PE builder: see pe_builder.h. Deliberately written without the
 * library's reader so that a bug in one is not mirrored in the other. */
#include "pe_builder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FILE_ALIGN 0x200u
#define SECT_ALIGN 0x1000u

static size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL) {
        fputs("pe_builder: out of memory\n", stderr);
        abort();
    }
    return q;
}

void pb_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)(v >> 8);
}

void pb_put32(uint8_t *p, uint32_t v)
{
    pb_put16(p, (uint16_t)(v & 0xffff));
    pb_put16(p + 2, (uint16_t)(v >> 16));
}

uint16_t pb_get16(const uint8_t *p)
{
    return (uint16_t)(p[0] + 256u * p[1]);
}
uint32_t pb_get32(const uint8_t *p)
{
    return pb_get16(p) + 65536u * pb_get16(p + 2);
}

static void put64(uint8_t *p, uint64_t v)
{
    pb_put32(p, (uint32_t)v);
    pb_put32(p + 4, (uint32_t)(v >> 32));
}

void pb_append(pb_bytes *b, const void *p, size_t n)
{
    b->data = xrealloc(b->data, b->len + n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

void pb_bytes_free(pb_bytes *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

void pb_cert_entry(pb_bytes *tbl, const uint8_t *der, size_t len, int pad)
{
    static const uint8_t zeros[8] = {0};
    size_t padlen = pad ? (8 - (len + 8) % 8) % 8 : 0;
    uint8_t hdr[8];
    pb_put32(hdr, (uint32_t)(8 + len + padlen));
    pb_put16(hdr + 4, 0x0200);
    pb_put16(hdr + 6, 0x0002);
    pb_append(tbl, hdr, 8);
    pb_append(tbl, der, len);
    pb_append(tbl, zeros, padlen);
}

void pb_fake_der(uint8_t *out, size_t len, uint8_t seed)
{
    size_t hdr, body;
    out[0] = 0x30;
    if (len - 2 < 0x80) {
        hdr = 2;
        body = len - 2;
        out[1] = (uint8_t)body;
    } else if (len - 3 < 0x100) {
        hdr = 3;
        body = len - 3;
        out[1] = 0x81;
        out[2] = (uint8_t)body;
    } else {
        hdr = 4;
        body = len - 4;
        out[1] = 0x82;
        out[2] = (uint8_t)(body >> 8);
        out[3] = (uint8_t)body;
    }
    for (size_t i = 0; i < body; i++)
        out[hdr + i] = (uint8_t)(seed + 13 * i + 1);
}

uint32_t pb_checksum(const uint8_t *p, size_t len, size_t checksum_off)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i += 2) {
        uint32_t lo = p[i], hi = i + 1 < len ? p[i + 1] : 0;
        if (i - checksum_off < 4) /* unsigned: false below checksum_off */
            lo = 0;
        if (i + 1 - checksum_off < 4)
            hi = 0;
        sum += lo | (hi << 8);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    return sum + (uint32_t)len;
}

void pb_fix_checksum(pb_image *img)
{
    pb_put32(img->data + img->checksum_off, pb_checksum(img->data, img->len, img->checksum_off));
}

void pb_build(const pb_spec *s, pb_image *img)
{
    static const char stub[] = "This program cannot be run in DOS mode.\r\r\n$";
    uint32_t nrva = s->nrva ? s->nrva : 16;
    uint32_t raw = (uint32_t)align_up(s->section_raw, FILE_ALIGN);
    memset(img, 0, sizeof(*img));

    img->e_lfanew = 0x80;
    img->coff_off = img->e_lfanew + 4;
    img->opt_off = img->e_lfanew + 24;
    size_t dirs_at = s->pe32plus ? 112 : 96;
    img->opt_size = dirs_at + (size_t)nrva * 8;
    img->checksum_off = img->opt_off + 64;
    img->nrva_off = img->opt_off + dirs_at - 4;
    img->certdir_off = img->opt_off + dirs_at + 4 * 8;
    img->sect_off = img->opt_off + img->opt_size;
    img->headers_end = img->sect_off + (size_t)s->nsections * 40;
    size_t size_of_headers = align_up(img->headers_end, FILE_ALIGN);
    size_t sections_end = size_of_headers + (size_t)s->nsections * raw;
    size_t body_end = sections_end + s->overlay;
    img->image_end = body_end;
    if (s->cert_table != NULL && !s->cert_unaligned)
        img->image_end = align_up(body_end, 8);
    img->len = img->image_end + (s->cert_table ? s->cert_table_len : 0);

    uint8_t *d = img->data = xrealloc(NULL, img->len);
    memset(d, 0, img->len);

    /* DOS header: only e_magic and e_lfanew matter to a loader; the rest is
     * what linkers usually write. */
    d[0] = 'M';
    d[1] = 'Z';
    pb_put16(d + 0x02, 0x90);
    pb_put16(d + 0x04, 3);
    pb_put16(d + 0x08, 4);
    pb_put16(d + 0x0c, 0xffff);
    pb_put16(d + 0x10, 0xb8);
    pb_put16(d + 0x18, 0x40);
    pb_put32(d + 0x3c, (uint32_t)img->e_lfanew);
    memcpy(d + 0x4e, stub, sizeof(stub) - 1);

    memcpy(d + img->e_lfanew, "PE\0\0", 4);
    uint8_t *coff = d + img->coff_off;
    pb_put16(coff + 0, s->pe32plus ? 0x8664 : 0x014c);
    pb_put16(coff + 2, (uint16_t)s->nsections);
    pb_put32(coff + 4, 0x5f5e1000); /* TimeDateStamp */
    pb_put16(coff + 16, (uint16_t)img->opt_size);
    pb_put16(coff + 18, s->pe32plus ? 0x0022 : 0x0102);

    uint8_t *o = d + img->opt_off;
    uint32_t size_of_image =
        SECT_ALIGN + (uint32_t)s->nsections * (uint32_t)align_up(raw ? raw : 1, SECT_ALIGN);
    pb_put16(o + 0, s->pe32plus ? 0x20b : 0x10b);
    o[2] = 2; /* linker version */
    o[3] = 40;
    pb_put32(o + 4, raw);                            /* SizeOfCode */
    pb_put32(o + 16, s->nsections ? SECT_ALIGN : 0); /* AddressOfEntryPoint */
    pb_put32(o + 20, SECT_ALIGN);                    /* BaseOfCode */
    if (s->pe32plus) {
        put64(o + 24, 0x140000000ull); /* ImageBase */
    } else {
        pb_put32(o + 24, SECT_ALIGN); /* BaseOfData */
        pb_put32(o + 28, 0x400000);   /* ImageBase */
    }
    pb_put32(o + 32, SECT_ALIGN);
    pb_put32(o + 36, FILE_ALIGN);
    pb_put16(o + 40, 6); /* OS version */
    pb_put16(o + 48, 6); /* subsystem version */
    pb_put32(o + 56, size_of_image);
    pb_put32(o + 60, (uint32_t)size_of_headers);
    pb_put16(o + 68, 3); /* IMAGE_SUBSYSTEM_WINDOWS_CUI */
    pb_put16(o + 70,
             0x8160); /* DYNAMIC_BASE | NX_COMPAT | TERMINAL_SERVER_AWARE | HIGH_ENTROPY_VA */
    if (s->pe32plus) {
        put64(o + 72, 0x200000);
        put64(o + 80, 0x1000);
        put64(o + 88, 0x100000);
        put64(o + 96, 0x1000);
    } else {
        pb_put32(o + 72, 0x200000);
        pb_put32(o + 76, 0x1000);
        pb_put32(o + 80, 0x100000);
        pb_put32(o + 84, 0x1000);
    }
    pb_put32(d + img->nrva_off, nrva);

    for (unsigned i = 0; i < s->nsections; i++) {
        uint8_t *sh = d + img->sect_off + (size_t)i * 40;
        size_t ptr = size_of_headers + (size_t)i * raw;
        static const char hex[] = "0123456789abcdef";
        memcpy(sh, ".s", 2); /* name: ".sNNNN", NUL-padded to 8 */
        for (int k = 0; k < 4; k++)
            sh[2 + k] = (uint8_t)hex[(i >> (12 - 4 * k)) & 15];
        pb_put32(sh + 8, s->section_raw); /* VirtualSize */
        pb_put32(sh + 12, SECT_ALIGN + i * (uint32_t)align_up(raw ? raw : 1, SECT_ALIGN));
        pb_put32(sh + 16, raw);
        pb_put32(sh + 20, raw ? (uint32_t)ptr : 0);
        pb_put32(sh + 36, 0x40000040); /* INITIALIZED_DATA | MEM_READ */
        for (size_t j = 0; j < raw; j++)
            d[ptr + j] = (uint8_t)(i * 31 + j * 7 + 1);
    }
    for (size_t j = 0; j < s->overlay; j++)
        d[sections_end + j] = (uint8_t)(0xa5 ^ (j * 3));

    if (s->cert_table != NULL) {
        memcpy(d + img->image_end, s->cert_table, s->cert_table_len);
        if (nrva >= 5) {
            pb_put32(d + img->certdir_off, (uint32_t)img->image_end);
            pb_put32(d + img->certdir_off + 4, (uint32_t)s->cert_table_len);
        }
    }
    pb_fix_checksum(img);
}

void pb_free(pb_image *img)
{
    free(img->data);
    img->data = NULL;
    img->len = 0;
}
