/* Reading Azure Trusted Signing's answers: the sign operation's status body
 * and the certificate chain it returns. Pure functions of untrusted bytes
 * (fuzzed by tests/fuzz/fuzz_azure_result.c).
 *
 * A status body is {"id","status",...} with, once "Succeeded", "signature"
 * (base64 raw signature) and "signingCertificate" (base64 of the base64 text
 * of a DER PKCS#7 holding the leaf and its chain, in no set order), either
 * flat or under "result". Status strings are compared without regard to case
 * or spaces: InProgress, Running and NotStarted mean "not yet"; Succeeded is
 * done; anything else is a failure. */
#ifndef QWICKD_AZURE_RESULT_H
#define QWICKD_AZURE_RESULT_H

#include <stddef.h>
#include <stdint.h>

#include "qwick/buf.h"
#include "qwick/error.h"
#include "qwick/hash.h"

typedef enum az_op_state { AZ_OP_PENDING = 0, AZ_OP_SUCCEEDED, AZ_OP_FAILED } az_op_state;

typedef struct az_op {
    az_op_state state;
    qk_buf signature; /* Succeeded: the raw signature */
    qk_buf pkcs7_der; /* Succeeded: the certificates' PKCS#7 */
    char error[256];  /* Failed: Azure's reason (or the unknown status) */
} az_op;

/* Parses a status body. QK_OK with out->state set; an error when the body
 * is not JSON, has no status, or is Succeeded without a well-formed
 * signature and certificate. */
qk_err az_op_parse(const uint8_t *body, size_t len, az_op *out);
void az_op_clear(az_op *op);

/* The certificate chain for a signature: the PKCS#7's certificates, the
 * leaf found as the one whose public key verifies `sig` over `digest`
 * (RSA PKCS#1 v1.5 with alg), then its issuers in order. Certificates not
 * on the leaf's path are dropped. *chain_der: DER certificates, leaf first.
 * Fails when no certificate verifies the signature: a wrong signature is
 * never passed on. */
qk_err az_chain_for_signature(qk_slice pkcs7_der, qk_hash_alg alg, const uint8_t *digest,
                              size_t dlen, qk_slice sig, qk_buf *chain_der);

#endif
