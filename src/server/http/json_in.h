/* Strict reading of JSON request bodies, independent of the HTTP layer (so
 * the parsers are unit-tested and fuzzed without a server). A failure fills
 * an api_error: the HTTP status, the stable error code and a message, which
 * the handler turns into {"error":{"code","message"}}. */
#ifndef QWICKD_JSON_IN_H
#define QWICKD_JSON_IN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

typedef struct api_error {
    int status;
    const char *code; /* static string */
    char message[256];
} api_error;

/* Fills *e and returns -1, so call sites read `return api_fail(e, 400, ...)`. */
int api_fail(api_error *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Parses `body` as one JSON object (no duplicate keys, nothing after it). */
json_t *json_in_object(const uint8_t *body, size_t len, api_error *e);
/* -1 (400 unknown_field) if `obj` has a key not in the NULL-terminated list. */
int json_in_only_fields(json_t *obj, const char *where, const char *const *allowed, api_error *e);
/* Optional string member of at most `max` bytes: *out NULL when absent. */
int json_in_opt_string(json_t *obj, const char *name, size_t max, const char **out, api_error *e);

#endif
