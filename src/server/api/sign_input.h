/* The body of POST /api/v1/sign/digest, parsed strictly (see docs/api.md):
 * {digest, algorithm, format?, profile?, metadata?{filename, description, url, justification},
 *  timestamp?, async?, callbackUrl?, idempotencyKey?}   (timestamp: false says the client will not
 * timestamp the signature, which profiles with short-lived certificates refuse; "server" asks this
 * server's TSA to timestamp it before it is returned) Unknown fields,
 * wrong types, non-canonical base64, a digest of the wrong length for its algorithm, unknown
 * algorithms and formats, and over-long strings are refused with a 400 api_error. */
#ifndef QWICKD_SIGN_INPUT_H
#define QWICKD_SIGN_INPUT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "http/json_in.h"
#include "qwick/hash.h"

/* Longest accepted strings. */
#define SIGN_MAX_PROFILE 64
#define SIGN_MAX_FILENAME 260 /* Windows MAX_PATH */
#define SIGN_MAX_DESCRIPTION 1024
#define SIGN_MAX_URL 2048
#define SIGN_MAX_JUSTIFICATION 1024
#define SIGN_MAX_IDEM_KEY 255

typedef enum sign_format { FMT_AUTHENTICODE_PE = 0, FMT_CMS, FMT_RAW } sign_format;

const char *sign_format_name(sign_format f);
/* A format by its name: 0, or -1 when unknown. */
int sign_format_parse(const char *name, sign_format *out);

/* Strings point into `root` (owned: sign_input_clear releases it). */
typedef struct sign_input {
    json_t *root;
    qk_hash_alg alg;
    const char *algorithm; /* "sha256" | "sha384" | "sha512" */
    sign_format format;
    const char *profile;                      /* default "default" */
    const char *filename, *description, *url; /* NULL when absent */
    const char *justification;                /* why (policies may require it); NULL when absent */
    uint8_t digest[QK_HASH_MAX_SIZE];
    size_t digest_len;
    int no_timestamp;     /* "timestamp": false */
    int server_timestamp; /* "timestamp": "server": timestamped here when this server has a TSA */
    int async;            /* "async": true: queue it, answer 202 */
    const char *callback_url;    /* "callbackUrl": POSTed the final status (queued) */
    const char *idempotency_key; /* "idempotencyKey": as the Idempotency-Key header */
} sign_input;

/* 0 with *in filled, or -1 with *e set (and *in cleared). */
int sign_input_parse(const uint8_t *body, size_t len, sign_input *in, api_error *e);
void sign_input_clear(sign_input *in);

/* The audit entry's meta for a signing request: {"justification": …} when
 * the request gave one, else NULL. Caller frees. */
char *sign_audit_meta(const sign_input *in);

#endif
