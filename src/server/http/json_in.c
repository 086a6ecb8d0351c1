#include "http/json_in.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int api_fail(api_error *e, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    e->code = code;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    return -1;
}

json_t *json_in_object(const uint8_t *body, size_t len, api_error *e)
{
    json_error_t err;
    /* The body is already bounded by the HTTP layer's maximum; duplicates are
     * refused so that no two readers can disagree about which value counts;
     * NUL bytes inside strings are refused (JSON_ALLOW_NUL is not set), so
     * every string is a proper C string. */
    json_t *j = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &err);
    if (j == NULL) {
        api_fail(e, 400, "invalid_json", "malformed JSON at line %d column %d: %s", err.line,
                 err.column, err.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        api_fail(e, 400, "invalid_json", "the body must be a JSON object");
        return NULL;
    }
    return j;
}

int json_in_only_fields(json_t *obj, const char *where, const char *const *allowed, api_error *e)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        size_t i = 0;
        while (allowed[i] != NULL && strcmp(allowed[i], k) != 0)
            i++;
        if (allowed[i] == NULL)
            return api_fail(e, 400, "unknown_field", "unknown field '%.64s'%s%s", k,
                            where ? " in " : "", where ? where : "");
    }
    return 0;
}

int json_in_opt_string(json_t *obj, const char *name, size_t max, const char **out, api_error *e)
{
    *out = NULL;
    json_t *v = json_object_get(obj, name);
    if (v == NULL)
        return 0;
    if (!json_is_string(v))
        return api_fail(e, 400, "invalid_type", "'%s' must be a string", name);
    if (json_string_length(v) > max)
        return api_fail(e, 400, "field_too_long", "'%s' is longer than %zu bytes", name, max);
    *out = json_string_value(v);
    return 0;
}
