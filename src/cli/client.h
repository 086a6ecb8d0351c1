/* The qwickd API client: JSON over HTTPS with libcurl.
 *
 * One client per worker thread: it owns a CURL handle, so consecutive
 * requests reuse the same keep-alive connection (and TLS session). Calls
 * retry with exponential backoff when the server cannot be reached or
 * answers 429/503 (honouring Retry-After); any other failure is final.
 * A signing request the server queues (202) is waited for in requests.c. */
#ifndef QWICK_CLI_CLIENT_H
#define QWICK_CLI_CLIENT_H

#include <stddef.h>

#include "config.h"
#include "qwick/buf.h"
#include "qwick/hash.h"

/* Largest response body accepted from the server. A signature with its chain
 * is a few KiB; this leaves room for long chains without trusting the peer. */
#define CLIENT_MAX_RESPONSE (1024u * 1024u)
#define CLIENT_CONNECT_TIMEOUT_S 10L
/* Per attempt: a signing request is one RSA operation plus an audit commit. */
#define CLIENT_REQUEST_TIMEOUT_S 120L
#define CLIENT_MAX_ATTEMPTS 5
/* Upper bound for any single wait between attempts, Retry-After included. */
#define CLIENT_MAX_BACKOFF_S 60

typedef struct client client;

/* Set by the caller (e.g. from a signal handler) to make a transfer in
 * progress stop at once with "interrupted"; no retry follows. */
typedef volatile int client_cancel_flag;

/* Checks the server URL (https, or http to a loopback address only, so the
 * API key never crosses a network in clear) and sets up a CURL handle.
 * Returns NULL and a heap message in *err on failure. */
client *client_new(const cli_config *cfg, char **err);
void client_free(client *c);
void client_set_cancel(client *c, const client_cancel_flag *flag);
/* 1 once the cancel flag is set. */
int client_cancelled(const client *c);
/* Sleeps `ms` in short steps, returning early once cancelled. */
void client_nap(const client *c, long ms);
/* `ms` plus up to a quarter more, at random: parallel waits drift apart. */
long client_jitter(client *c, long ms);

typedef struct json_t json_t;

/* What the server answered: the HTTP status, its Retry-After in seconds (0
 * when absent) and, for a 2xx, the body's JSON object. */
typedef struct client_answer {
    long status;
    long retry_after;
    json_t *json;
} client_answer;

/* One API call: `method` "GET", "DELETE", or "POST" with the JSON `body`, on
 * `path` (from the server's base URL). 0 for a 2xx answer whose body is a JSON
 * object (the caller json_decref's ans->json); -1 with a heap message in *err
 * otherwise, ans->status then the 4xx/5xx status, or 0 when no answer came
 * (unreachable, interrupted, oversize). Errors read "server: CODE: MESSAGE". */
int client_call(client *c, const char *method, const char *path, const char *body,
                client_answer *ans, char **err);

typedef struct client_sign_req {
    const char *format; /* "authenticode-pe" or "cms" */
    qk_hash_alg alg;
    qk_slice digest;
    const char *profile;
    const char *filename; /* metadata, optional */
    const char *description;
    const char *url;
    const char *justification; /* metadata.justification, optional */
    int no_timestamp;          /* tells the server (profiles that require timestamps refuse) */
    int server_timestamp; /* "timestamp": "server": the server's TSA stamps it, no round trip */
    int async;            /* "async": true, the server queues it and answers 202 at once */
} client_sign_req;

typedef struct client_sign_res {
    char *request_id;
    qk_buf signature; /* DER: Authenticode ContentInfo or detached CMS */
    qk_buf *chain;    /* certificateChain, DER, as the server orders it */
    size_t nchain;
    char *timestamp_url; /* the server's TSA, NULL when it names none */
    int timestamped;     /* the signature already holds the server's timestamp */
} client_sign_res;

/* POST /api/v1/sign/digest: 0 with the answer, status 200 (ans->json the
 * signed request, for client_take_signed) or 202 (queued: ans->json holds
 * requestId and status; requests_wait follows it); -1 with a heap message in
 * *err, e.g. "server: unauthorized: unknown API key" or "cannot reach ...". */
int client_sign_submit(client *c, const client_sign_req *req, client_answer *ans, char **err);
/* A signed request (the 200 answer, or GET .../requests/{id}) into *res; a
 * request that ended otherwise is an error naming its status and reason. */
int client_take_signed(json_t *j, client_sign_res *res, char **err);
void client_sign_res_free(client_sign_res *res);

/* GET `path`: a JSON object, or the raw body (NUL-terminated copy; *len
 * excludes the NUL). 0, or -1 with *err set. */
int client_get_json(client *c, const char *path, json_t **out, char **err);
int client_get_text(client *c, const char *path, char **out, size_t *len, char **err);

#endif
