/* Fuzzes the certificate table parser: the input becomes the certificate
 * table of an otherwise valid synthetic PE (tests/unit/pe_builder.c), so
 * every execution gets past the headers. The first input byte picks the
 * layout (bit 0: PE32+, bit 1: table not 8-aligned, bits 2-4: sections).
 *
 * The library's verdict is compared with an independent walk of the table
 * written here from the rules in DESIGN.md: same accept/reject decision,
 * same number of entries, same entry boundaries. */
#include <string.h>

#include "fuzz_common.h"
#include "pe_builder.h"
#include "qwick/pe.h"

#define MAX_TABLE (256u * 1024u)
#define MAX_ENTRIES 64 /* lib/pe.c's limit */

typedef struct ref_entry {
    size_t off; /* from the start of the table */
    uint32_t length;
} ref_entry;

/* 1: valid, 0: malformed, -1: too many entries. */
static int ref_walk(const uint8_t *t, size_t len, ref_entry *e, size_t *n)
{
    size_t at = 0;
    *n = 0;
    while (len - at >= 8) {
        uint32_t l = pb_get32(t + at);
        if (l < 8 || l > len - at)
            return 0;
        if (*n == MAX_ENTRIES)
            return -1;
        e[*n].off = at;
        e[*n].length = l;
        (*n)++;
        size_t next = at + ((l + 7u) & ~(size_t)7);
        at = next < len ? next : len; /* the last entry may lack its padding */
    }
    for (; at < len; at++)
        if (t[at] != 0)
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size - 1 > MAX_TABLE)
        return 0;
    const uint8_t *tbl = data + 1;
    size_t tlen = size - 1;
    pb_spec spec = {.pe32plus = data[0] & 1,
                    .cert_unaligned = (data[0] >> 1) & 1,
                    .nsections = (data[0] >> 2) & 7,
                    .section_raw = 0x40,
                    .overlay = data[0] >> 5,
                    .cert_table = tbl,
                    .cert_table_len = tlen};
    pb_image img;
    pb_build(&spec, &img);

    static ref_entry ref[MAX_ENTRIES];
    size_t nref = 0;
    int want = ref_walk(tbl, tlen, ref, &nref);

    qk_pe *pe = NULL;
    qk_err rc = qk_pe_parse_mem(img.data, img.len, &pe);
    if (want == 1) {
        FUZZ_CHECK(rc == QK_OK);
    } else {
        FUZZ_CHECK(rc == (want < 0 ? QK_ERR_TOO_LARGE : QK_ERR_PE_BAD_CERT_TABLE));
        FUZZ_CHECK(pe == NULL);
        pb_free(&img);
        return 0;
    }

    FUZZ_CHECK(qk_pe_cert_count(pe) == nref);
    const uint8_t *t = img.data + img.image_end;
    for (size_t i = 0; i < nref; i++) {
        const qk_pe_cert *c = qk_pe_cert_get(pe, i);
        FUZZ_CHECK(c->length == ref[i].length);
        FUZZ_CHECK(c->revision == pb_get16(t + ref[i].off + 4));
        FUZZ_CHECK(c->type == pb_get16(t + ref[i].off + 6));
        FUZZ_CHECK(c->data.data == t + ref[i].off + 8);
        FUZZ_CHECK(c->data.len <= ref[i].length - 8u);
        (void)fuzz_touch(c->data.data, c->data.len);
    }

    /* Re-embedding the entries gives an aligned table that parses back. */
    if (nref > 0) {
        qk_slice sigs[MAX_ENTRIES];
        size_t ns = 0;
        for (size_t i = 0; i < nref; i++)
            if (qk_pe_cert_get(pe, i)->data.len > 0)
                sigs[ns++] = qk_pe_cert_get(pe, i)->data;
        qk_buf out = {0};
        qk_pe *again = NULL;
        FUZZ_CHECK(qk_pe_build_signed(pe, sigs, ns, &out) == QK_OK);
        FUZZ_CHECK(qk_pe_parse_mem(out.data, out.len, &again) == QK_OK);
        FUZZ_CHECK(qk_pe_cert_count(again) == ns);
        uint32_t off, sz;
        qk_pe_cert_table(again, &off, &sz);
        FUZZ_CHECK(ns == 0 || off % 8 == 0);
        qk_pe_free(again);
        qk_buf_free(&out);
    }
    qk_pe_free(pe);
    pb_free(&img);
    return 0;
}
