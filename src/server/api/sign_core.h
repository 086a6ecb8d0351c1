/* The signing engine the API and the queue share: each profile's signer,
 * cached (the sealed key opened once), and one signature made with it: the
 * RSA work on a signing thread (local keys), or Azure Trusted Signing's
 * remote signature around which the Authenticode or CMS structure is
 * assembled. The caller records the result (api_sign.c: a synchronous
 * request; queue.c: a queued one). */
#ifndef QWICKD_SIGN_CORE_H
#define QWICKD_SIGN_CORE_H

#include "api/server.h"
#include "api/sign_input.h"
#include "qwick/buf.h"

/* A signature, or why there is none. Valid during the callback only, except
 * `sig`, which the callee may take (set it to {NULL, 0}). */
typedef struct sign_outcome {
    qk_err rc;
    int status;         /* failure: the HTTP status to answer (500 ours, 502-504 the backend's) */
    int transient;      /* failure: worth another attempt later (backend unavailable) */
    const char *detail; /* failure: why */
    qk_buf sig;         /* the signature (DER ContentInfo, or the raw value) */
    const char *chain_json;    /* ["b64",...]: the response's certificateChain */
    qk_slice chain_der;        /* the same chain, concatenated DER, leaf first */
    const char *signer_fp;     /* SHA-256 hex of the leaf */
    const char *sigval_sha256; /* SHA-256 hex of the signer's signature value */
    int ts_required;           /* short-lived certificate: the client must timestamp */
    int timestamped;           /* `sig` holds this server's timestamp ("timestamp": "server") */
    const char *note;          /* the credential used (Azure), for the audit entry; "" if none */
} sign_outcome;

typedef void (*sign_done_fn)(void *arg, sign_outcome *o);

/* SHA-256 of p as 64 lowercase hex digits. */
void sign_sha256_hex(const uint8_t *p, size_t n, char out[65]);

/* ["b64",...] of concatenated DER certificates; NULL when they do not parse. */
char *sign_chain_json(qk_slice der);

/* Signs `in` with profile `p` (both must stay valid until `done`), which
 * runs once, on a signing thread (or on this one while shutting down). The
 * caller has counted the request in srv->signing; the engine uncounts it as
 * soon as the request is no longer on its way to a commit. */
void sign_core_start(server *srv, const store_profile *p, const sign_input *in, sign_done_fn done,
                     void *arg);

#endif
