/* Fuzzes the PE parser over arbitrary bytes, then everything a caller does
 * with a parsed image: both digests, the checksum, every certificate entry,
 * and qk_pe_build_signed round trips (re-embedding the existing entries,
 * stripping), checking that the results parse again and keep the digest. */
#include <string.h>

#include "fuzz_common.h"
#include "qwick/pe.h"

static void round_trip(const qk_pe *pe, const qk_slice *sigs, size_t n, const uint8_t *want_digest)
{
    qk_buf out = {0};
    qk_pe *again = NULL;
    uint8_t md[QK_HASH_MAX_SIZE];
    qk_err rc = qk_pe_build_signed(pe, sigs, n, &out);
    if (rc == QK_ERR_TOO_LARGE)
        return;
    FUZZ_CHECK(rc == QK_OK);
    FUZZ_CHECK(qk_pe_parse_mem(out.data, out.len, &again) == QK_OK);
    FUZZ_CHECK(qk_pe_cert_count(again) == n);
    for (size_t i = 0; i < n; i++) {
        const qk_pe_cert *c = qk_pe_cert_get(again, i);
        /* dwLength counts the padding; the body starts with the bytes given
         * (a non-DER body is reported whole, padding included). */
        FUZZ_CHECK(c->length % 8 == 0 && c->length == ((8 + sigs[i].len + 7) & ~(size_t)7));
        FUZZ_CHECK(c->data.len <= c->length - 8);
        size_t common = c->data.len < sigs[i].len ? c->data.len : sigs[i].len;
        FUZZ_CHECK(memcmp(c->data.data, sigs[i].data, common) == 0);
    }
    FUZZ_CHECK(qk_pe_compute_checksum(again) == qk_pe_stored_checksum(again));
    /* What a signer signs is what a verifier recomputes after embedding. */
    FUZZ_CHECK(qk_pe_digest(again, QK_HASH_SHA256, md) == QK_OK);
    FUZZ_CHECK(memcmp(md, want_digest, 32) == 0);
    uint32_t off, size;
    qk_pe_cert_table(again, &off, &size);
    FUZZ_CHECK(n == 0 ? size == 0 : (off % 8 == 0 && (size_t)off + size == out.len));
    qk_pe_free(again);
    qk_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qk_pe *pe = NULL;
    if (qk_pe_parse_mem(data, size, &pe) != QK_OK) {
        FUZZ_CHECK(pe == NULL);
        return 0;
    }
    uint8_t d[QK_HASH_MAX_SIZE], sd[QK_HASH_MAX_SIZE];
    FUZZ_CHECK(qk_pe_digest(pe, QK_HASH_SHA256, d) == QK_OK);
    FUZZ_CHECK(qk_pe_signing_digest(pe, QK_HASH_SHA256, sd) == QK_OK);
    FUZZ_CHECK(qk_pe_digest(pe, QK_HASH_SHA1, d + 32) == QK_OK);
    (void)qk_pe_compute_checksum(pe);
    (void)qk_pe_stored_checksum(pe);
    FUZZ_CHECK(qk_pe_size(pe) == size && qk_pe_data(pe) == data);

    uint32_t off, tsize;
    qk_pe_cert_table(pe, &off, &tsize);
    FUZZ_CHECK((uint64_t)off + tsize <= size);
    FUZZ_CHECK(tsize == 0 || (size_t)off + tsize == size);
    /* An unsigned image and an aligned table need no padding. */
    if (tsize == 0 || off % 8 == 0)
        FUZZ_CHECK(memcmp(d, sd, 32) == 0);

    size_t n = qk_pe_cert_count(pe);
    qk_slice sigs[64];
    size_t nsigs = 0;
    for (size_t i = 0; i < n; i++) {
        const qk_pe_cert *c = qk_pe_cert_get(pe, i);
        FUZZ_CHECK(c != NULL);
        FUZZ_CHECK(c->data.data >= data + off && c->data.data + c->data.len <= data + off + tsize);
        FUZZ_CHECK((size_t)c->length >= 8 + c->data.len);
        (void)fuzz_touch(c->data.data, c->data.len);
        if (c->data.len > 0 && nsigs < sizeof(sigs) / sizeof(sigs[0]))
            sigs[nsigs++] = c->data;
    }
    FUZZ_CHECK(qk_pe_cert_get(pe, n) == NULL);

    static const uint8_t fake[] = {0x30, 0x03, 0x02, 0x01, 0x2a};
    const qk_slice one = {fake, sizeof(fake)};
    round_trip(pe, &one, 1, sd);
    round_trip(pe, NULL, 0, sd);
    if (nsigs > 0)
        round_trip(pe, sigs, nsigs, sd);
    qk_pe_free(pe);
    return 0;
}
