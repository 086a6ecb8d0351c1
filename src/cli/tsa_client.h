/* HTTP transport for RFC 3161 timestamps (libcurl).
 *
 * One client holds one CURL handle, so consecutive requests to the same TSA
 * reuse the connection. URLs are tried in order; each gets a few attempts with
 * exponential backoff when the failure looks transient (connection errors,
 * timeouts, 5xx, 429). Replies must be `application/timestamp-reply` and at
 * most QK_TSP_MAX_REPLY bytes. Not thread-safe: one client per thread. */
#ifndef QWICK_CLI_TSA_CLIENT_H
#define QWICK_CLI_TSA_CLIENT_H

#include <stddef.h>

#include "qwick/buf.h"
#include "qwick/error.h"

typedef struct tsa_client tsa_client;

/* NULL when out of memory, when n == 0, or when libcurl cannot start. The
 * URLs are copied. */
tsa_client *tsa_client_new(const char *const *urls, size_t n);
void tsa_client_free(tsa_client *c);

/* Tuning (defaults: 10 s connect, 30 s total per attempt, 3 attempts per URL,
 * backoff 500 ms doubling). */
void tsa_client_set_timeouts(tsa_client *c, long connect_ms, long total_ms);
void tsa_client_set_retries(tsa_client *c, unsigned attempts, long backoff_ms);
/* Sends "Authorization: Bearer <key>" to TSA URLs under `base` (the qwickd
 * server whose /tsa may require an API key; tsa.require_api_key). Copied;
 * the copy is wiped on free. 0, or -1 out of memory. */
int tsa_client_set_bearer(tsa_client *c, const char *key, const char *base);
/* PEM CA bundle for https TSAs (NULL: the system store). Copied. */
int tsa_client_set_cacert(tsa_client *c, const char *path);

/* A qk_tsp_transport: ctx is a tsa_client *. On failure returns QK_ERR_IO
 * (QK_ERR_TOO_LARGE for an oversized reply, QK_ERR_NOMEM) and keeps a message
 * for tsa_client_error(). */
qk_err tsa_client_send(void *ctx, qk_slice request, qk_buf *reply);

/* What went wrong in the last tsa_client_send (every URL tried), "" if nothing. */
const char *tsa_client_error(const tsa_client *c);
/* The URL that answered the last successful request, or NULL. */
const char *tsa_client_last_url(const tsa_client *c);

#endif
