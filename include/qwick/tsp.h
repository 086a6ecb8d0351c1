/* RFC 3161 time-stamp protocol, client side, without any network code: build a
 * request, check a reply, attach the token. Transports (HTTP) live in callers. */
#ifndef QWICK_TSP_H
#define QWICK_TSP_H

#include "qwick/buf.h"
#include "qwick/error.h"
#include "qwick/export.h"
#include "qwick/hash.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QK_TSP_MAX_REPLY (256u * 1024u)

typedef struct qk_tsp_req qk_tsp_req;

/* A request whose imprint is alg(data), with a random 64-bit nonce and certReq. */
QK_EXPORT QK_WUR qk_err qk_tsp_request_new(qk_hash_alg alg, qk_slice data, qk_tsp_req **out);
QK_EXPORT qk_slice qk_tsp_request_der(const qk_tsp_req *req);
/* Checks a DER TimeStampResp against the request: status granted (0) or
 * grantedWithMods (1), nonce and imprint equal, token signature valid under the
 * certificate it carries. On success *token is the DER TimeStampToken
 * (ContentInfo SignedData). Chain trust is the verifier's job. */
QK_EXPORT QK_WUR qk_err qk_tsp_reply_check(const qk_tsp_req *req, qk_slice reply, qk_buf *token);
QK_EXPORT void qk_tsp_request_free(qk_tsp_req *req);

/* Sends `request` and returns the reply body in *reply (caller frees). */
typedef qk_err (*qk_tsp_transport)(void *ctx, qk_slice request, qk_buf *reply);

/* Timestamps a ContentInfo(SignedData): imprint over its signature value with
 * `alg`, one exchange through `send`, token checked and attached (under the
 * attribute qk_sig_add_timestamp picks for the content type). */
QK_EXPORT QK_WUR qk_err qk_timestamp(qk_slice contentinfo, qk_hash_alg alg, qk_tsp_transport send,
                                     void *ctx, qk_buf *out);

#ifdef __cplusplus
}
#endif
#endif
