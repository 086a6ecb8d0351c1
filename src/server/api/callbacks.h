/* Completion callbacks of queued requests (docs/api.md "callbackUrl").
 *
 * When a queued request reaches its final status, its callbackUrl (the
 * request's, else its profile's) gets a POST of
 *   {"requestId","status","profile","completedAt","error"?}
 * with the header `Qwick-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`
 * over "<t>.<body>", keyed with the org's callback secret (32 random bytes,
 * sealed in the store as the instance secret "callback-hmac:<org>", shown by
 * `qwickd queue callback-secret`). Deliveries are retried with backoff on
 * any answer but 2xx, and go only to addresses inside queue.callback_allow:
 * the check is on the address curl connects to, after name resolution, so a
 * name that resolves elsewhere is refused too. Redirects are not followed.
 * Delivery is at least once while the node runs; the request's row stays the
 * source of truth (undelivered callbacks are dropped at shutdown). */
#ifndef QWICKD_CALLBACKS_H
#define QWICKD_CALLBACKS_H

#include <stddef.h>
#include <stdint.h>

#include "api/server.h"

typedef struct callbacks callbacks;

#define CALLBACK_URL_MAX 2048

/* allow: CIDR strings (already checked by the config); n 0: callbacks off. */
qk_err callbacks_new(server *srv, char *const *allow, size_t n, callbacks **out);
/* Stops the sender (later sends are dropped); the struct stays valid. */
void callbacks_stop(callbacks *cb);
void callbacks_free(callbacks *cb);
/* Whether a callbackUrl may be accepted: NULL, or why not (static text). */
const char *callbacks_check_url(const callbacks *cb, const char *url);
/* Queues the POST of a request's final status. */
void callbacks_send(callbacks *cb, const store_sign_request *r);
/* Prometheus text: deliveries by outcome (heap string). */
char *callbacks_metrics_render(callbacks *cb);

#endif
