/* The built-in RFC 3161 time-stamping authority (POST /tsa).
 *
 * Policy: TSA_DEFAULT_POLICY, an OID under a private-enterprise arc used as a
 * placeholder for development deployments (override with "tsa": {"policy"} in
 * qwickd.json). Accepted imprints: SHA-256/384/512. Accuracy: 1 second.
 * Serial numbers: 64 random bits chosen at start-up followed by a 64-bit
 * counter, so they are unique within a run and, with overwhelming
 * probability, across restarts. */
#ifndef QWICKD_TSA_H
#define QWICKD_TSA_H

#include <openssl/x509.h>

#include "qwick/buf.h"
#include "qwick/error.h"
#include "qwick/hash.h"

#define TSA_DEFAULT_POLICY "1.3.6.1.4.1.65535.1.1"
/* An RFC 3161 request is ~100 bytes with a SHA-512 imprint and a nonce;
 * extensions could add a little. Anything larger is not a request. */
#define TSA_MAX_REQUEST (16u * 1024u)

typedef struct tsa tsa;

/* Takes references to cert/key/chain (the caller keeps its own). `chain`
 * holds certificates to include after the TSA's own (may be NULL). */
qk_err tsa_new(X509 *cert, EVP_PKEY *key, STACK_OF(X509) *chain, const char *policy_oid, tsa **out);
void tsa_free(tsa *t);

/* A timestamp for a signature value, made here as POST /tsa would make it
 * (a qk_stamp_fn; ctx is the tsa): the signing engine's server-side
 * timestamps ("timestamp": "server"). *token is a DER TimeStampToken. */
qk_err tsa_stamp(void *ctx, qk_hash_alg alg, qk_slice value, qk_buf *token);

/* The TimeStampResp for the DER TimeStampReq `req` (a malformed request
 * gets a rejection with badDataFormat, as RFC 3161 asks): QK_OK with *reply
 * (DER, caller frees) and *status its PKIStatus, or an error when the
 * responder itself failed. Any thread. */
qk_err tsa_respond(tsa *t, const uint8_t *req, size_t len, qk_buf *reply, long *status);

#endif
