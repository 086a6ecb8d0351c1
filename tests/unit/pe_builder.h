/* Synthetic PE images for unit tests and fuzz harnesses.
 *
 * pb_build lays out a minimal but well-formed PE32 or PE32+ image in memory:
 * DOS header and stub, PE signature, COFF header, optional header with a
 * configurable number of data directories, N section headers with raw data,
 * an optional overlay and an optional certificate table placed at the end
 * with the directory entry pointing at it, and a correct checksum. It also
 * reports where every field lives, so tests can corrupt exactly one thing.
 *
 * Nothing here uses libqwick: the builder and the reference checksum/digest
 * are independent implementations the library is checked against. */
#ifndef QK_TEST_PE_BUILDER_H
#define QK_TEST_PE_BUILDER_H

#include <stddef.h>
#include <stdint.h>

typedef struct pb_spec {
    int pe32plus;
    unsigned nsections;        /* section headers, each followed by raw data */
    uint32_t section_raw;      /* raw bytes per section (rounded up to 0x200) */
    uint32_t nrva;             /* NumberOfRvaAndSizes; 0 means 16 */
    size_t overlay;            /* bytes of data appended after the last section */
    const uint8_t *cert_table; /* certificate table bytes placed at the end; NULL: unsigned */
    size_t cert_table_len;
    int cert_unaligned; /* do not pad the image to 8 before the table */
} pb_spec;

typedef struct pb_image {
    uint8_t *data;
    size_t len;
    size_t e_lfanew; /* offset of "PE\0\0" */
    size_t coff_off; /* COFF file header */
    size_t opt_off;  /* optional header */
    size_t opt_size;
    size_t checksum_off;
    size_t nrva_off;
    size_t certdir_off; /* certificate table directory entry (8 bytes) */
    size_t sect_off;    /* section table */
    size_t headers_end; /* end of the section table */
    size_t image_end;   /* start of the certificate table, or len when unsigned */
} pb_image;

/* A growable byte buffer for assembling certificate tables. Aborts on OOM. */
typedef struct pb_bytes {
    uint8_t *data;
    size_t len;
} pb_bytes;

/* Builds an image; aborts on allocation failure (test code). */
void pb_build(const pb_spec *spec, pb_image *out);
void pb_free(pb_image *img);

/* Appends one WIN_CERTIFICATE (revision 0x0200, type 0x0002) holding `der`.
 * With `pad`, zero padding to 8 bytes follows and is counted in dwLength. */
void pb_cert_entry(pb_bytes *tbl, const uint8_t *der, size_t len, int pad);
void pb_append(pb_bytes *b, const void *p, size_t n);
void pb_bytes_free(pb_bytes *b);

/* A small DER SEQUENCE of `len` total bytes (len >= 2, < 65536+4) with a
 * deterministic payload, standing in for a PKCS#7 ContentInfo. */
void pb_fake_der(uint8_t *out, size_t len, uint8_t seed);

/* Reference PE checksum: 16-bit word sum folded at every step, with the
 * 4 bytes at checksum_off taken as zero, plus the file length. */
uint32_t pb_checksum(const uint8_t *p, size_t len, size_t checksum_off);
/* Recomputes and stores the checksum of img. */
void pb_fix_checksum(pb_image *img);

void pb_put16(uint8_t *p, uint16_t v);
void pb_put32(uint8_t *p, uint32_t v);
uint16_t pb_get16(const uint8_t *p);
uint32_t pb_get32(const uint8_t *p);

#endif
