/* struct qk_pe and helpers shared by pe.c and pe_write.c. */
#ifndef QK_LIB_PE_INTERNAL_H
#define QK_LIB_PE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "qwick/pe.h"

struct qk_pe {
    const uint8_t *data;
    size_t size;
    int mapped;
    int pe32plus;
    uint16_t machine;
    size_t checksum_off;    /* file offset of OptionalHeader.CheckSum */
    size_t certdir_off;     /* file offset of the certificate table directory entry */
    uint32_t size_of_headers;
    uint32_t cert_off;      /* certificate table (0,0 when unsigned) */
    uint32_t cert_size;
    qk_pe_cert *certs;
    size_t ncerts;
};

/* Incremental PE checksum over a byte stream. */
typedef struct qk_csum {
    uint64_t sum;
    int odd; /* a low byte is pending at an odd offset */
} qk_csum;

void qk_csum_update(qk_csum *c, const uint8_t *p, size_t n);
uint32_t qk_csum_final(const qk_csum *c, uint64_t file_len);

/* End of the signed image: certificate table offset, or file size if unsigned. */
size_t qk_pe_image_end(const qk_pe *pe);
/* Length of the DER TLV at p, or avail if it does not parse. */
size_t qk_der_tlv_len(const uint8_t *p, size_t avail);

#endif
