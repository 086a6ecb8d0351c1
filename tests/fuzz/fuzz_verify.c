/* Fuzzes Authenticode verification over arbitrary files: PE parsing, then
 * qk_verify_pe's walk over every certificate entry, PKCS#7/CMS decoding,
 * nested signatures and timestamps. The trust anchors are a fixed test CA
 * (tests/fuzz/fuzz-ca.pem) that signed the seed corpus, so mutated seeds
 * reach chain building and signature checks. */
#include <string.h>

#include "fuzz_common.h"
#include "qwick/verify.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const qk_verify_opts opts = {
        .ca_file = QK_FUZZ_DIR "/fuzz-ca.pem",
        .tsa_ca_file = QK_FUZZ_DIR "/fuzz-ca.pem",
    };
    qk_pe *pe = NULL;
    qk_verify_report *r = NULL;
    if (qk_pe_parse_mem(data, size, &pe) != QK_OK)
        return 0;
    if (qk_verify_pe(pe, &opts, &r) == QK_OK) {
        FUZZ_CHECK(r != NULL);
        /* A report is well-formed: strings are strings, and "valid" means
         * every signature passed every check. */
        if (r->error)
            (void)strlen(r->error);
        FUZZ_CHECK(r->nsigs == 0 || r->sigs != NULL);
        for (size_t i = 0; i < r->nsigs; i++) {
            const qk_sig_result *s = &r->sigs[i];
            if (s->signer)
                (void)strlen(s->signer);
            if (s->issuer)
                (void)strlen(s->issuer);
            if (s->error)
                (void)strlen(s->error);
            if (s->timestamp && s->timestamp->error)
                (void)strlen(s->timestamp->error);
            if (r->valid)
                FUZZ_CHECK(s->digest_ok && s->message_digest_ok && s->signature_ok && s->chain_ok);
        }
        FUZZ_CHECK(!r->valid || r->nsigs > 0);
        qk_verify_report_free(r);
    }
    qk_pe_free(pe);
    return 0;
}
