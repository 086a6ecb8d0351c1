/* The signing requests of the caller's org, through qwickd's queue API
 * (docs/api.md "Asynchronous signing: the queue"): read one, list them,
 * cancel one, and wait for a queued one to settle. Used by `qwick sign` for
 * every 202 and by `qwick requests`. */
#ifndef QWICK_CLI_REQUESTS_H
#define QWICK_CLI_REQUESTS_H

#include "client.h"

/* "req_" + 32 lowercase hex digits, as qwickd makes them. */
#define REQUESTS_ID_LEN 36
/* Longest single wait between two looks at a waiting request, Retry-After
 * included: a request that settles is noticed within this. */
#define REQUESTS_MAX_POLL_S 10
/* The server's largest page (limit 1-200). */
#define REQUESTS_PAGE_MAX 200

/* 1 when `id` is a well-formed request id: checked before it goes into a
 * URL, whether the user or the server supplied it. */
int requests_id_valid(const char *id);
/* 1 for the statuses the server names: QUEUED, PENDING_APPROVAL, PROCESSING
 * (waiting), SIGNED, FAILED, CANCELLED, REJECTED (final). */
int requests_status_known(const char *status);
/* 1 for SIGNED, FAILED, CANCELLED, REJECTED: nothing more will happen. */
int requests_status_final(const char *status);
/* The "status" member of a request object, or NULL. */
const char *requests_status_of(json_t *req);

/* GET /api/v1/sign/requests/{id}. 0 with the answer (its JSON and Retry-After),
 * or -1 with *err (see client_call; ans->status tells what came back). */
int requests_get(client *c, const char *id, client_answer *ans, char **err);
/* GET /api/v1/sign/requests?status=&limit=&cursor= (status and cursor may be
 * NULL; 1 <= limit <= REQUESTS_PAGE_MAX): the page object, or -1 with *err. */
int requests_list_page(client *c, const char *status, int limit, const char *cursor, json_t **page,
                       char **err);
/* DELETE /api/v1/sign/requests/{id}: the answer object, or -1 with *err
 * ("server: not_cancellable: ..." for a request that already started). */
int requests_cancel(client *c, const char *id, json_t **out, char **err);

typedef struct requests_wait_opts {
    long timeout_s;      /* give up this long after the call (0: look once) */
    long first_delay_ms; /* before the first look (the 202's Retry-After), 0: none */
    /* Called with each status seen while the request is still waiting. */
    void (*on_status)(void *ctx, const char *status);
    void *ctx;
} requests_wait_opts;

/* Looks at request `id` until its status is final, with backoff: the delay
 * doubles from 500 ms, is at least the server's Retry-After and at most
 * REQUESTS_MAX_POLL_S. A look that finds the server unreachable or failing
 * (5xx) is retried until the deadline; a 4xx is final. 0 with *done the final
 * request object (any final status: the caller judges it); -1 with *err on
 * timeout ("still QUEUED after 10m"), interruption or failure. */
int requests_wait(client *c, const char *id, const requests_wait_opts *o, json_t **done,
                  char **err);

#endif
