#include "api/sign_input.h"

#include <string.h>

#include "common/b64.h"

static const char *const format_names[] = {"authenticode-pe", "cms", "raw"};
#define NFORMATS (sizeof(format_names) / sizeof(format_names[0]))

const char *sign_format_name(sign_format f)
{
    return (unsigned)f < NFORMATS ? format_names[f] : "unknown";
}

int sign_format_parse(const char *name, sign_format *out)
{
    for (size_t f = 0; name != NULL && f < NFORMATS; f++)
        if (strcmp(format_names[f], name) == 0) {
            *out = (sign_format)f;
            return 0;
        }
    return -1;
}

char *sign_audit_meta(const sign_input *in)
{
    if (in->justification == NULL)
        return NULL;
    json_t *j = json_pack("{s:s}", "justification", in->justification);
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

void sign_input_clear(sign_input *in)
{
    json_decref(in->root);
    memset(in, 0, sizeof(*in));
}

static int parse(const uint8_t *body, size_t len, sign_input *in, api_error *e)
{
    static const char *const fields[] = {"digest",         "algorithm", "format", "profile",
                                         "metadata",       "timestamp", "async",  "callbackUrl",
                                         "idempotencyKey", NULL};
    static const char *const meta_fields[] = {"filename", "description", "url", "justification",
                                              NULL};
    const char *digest = NULL, *format = NULL;

    if ((in->root = json_in_object(body, len, e)) == NULL ||
        json_in_only_fields(in->root, NULL, fields, e) != 0 ||
        json_in_opt_string(in->root, "digest", 256, &digest, e) != 0 ||
        json_in_opt_string(in->root, "algorithm", 16, &in->algorithm, e) != 0 ||
        json_in_opt_string(in->root, "format", 32, &format, e) != 0 ||
        json_in_opt_string(in->root, "profile", SIGN_MAX_PROFILE, &in->profile, e) != 0)
        return -1;

    json_t *ts = json_object_get(in->root, "timestamp");
    if (ts != NULL && json_is_string(ts) && strcmp(json_string_value(ts), "server") == 0)
        in->server_timestamp = 1;
    else if (ts != NULL && !json_is_boolean(ts))
        return api_fail(e, 400, "invalid_type", "'timestamp' must be true, false or \"server\"");
    in->no_timestamp = ts != NULL && json_is_false(ts);
    json_t *async = json_object_get(in->root, "async");
    if (async != NULL && !json_is_boolean(async))
        return api_fail(e, 400, "invalid_type", "'async' must be true or false");
    in->async = async != NULL && json_is_true(async);
    if (json_in_opt_string(in->root, "callbackUrl", SIGN_MAX_URL, &in->callback_url, e) != 0 ||
        json_in_opt_string(in->root, "idempotencyKey", SIGN_MAX_IDEM_KEY, &in->idempotency_key,
                           e) != 0)
        return -1;

    json_t *meta = json_object_get(in->root, "metadata");
    if (meta != NULL && !json_is_null(meta)) {
        if (!json_is_object(meta))
            return api_fail(e, 400, "invalid_type", "'metadata' must be an object");
        if (json_in_only_fields(meta, "metadata", meta_fields, e) != 0 ||
            json_in_opt_string(meta, "filename", SIGN_MAX_FILENAME, &in->filename, e) != 0 ||
            json_in_opt_string(meta, "description", SIGN_MAX_DESCRIPTION, &in->description, e) !=
                0 ||
            json_in_opt_string(meta, "url", SIGN_MAX_URL, &in->url, e) != 0 ||
            json_in_opt_string(meta, "justification", SIGN_MAX_JUSTIFICATION, &in->justification,
                               e) != 0)
            return -1;
    }

    if (digest == NULL)
        return api_fail(e, 400, "missing_field", "'digest' is required");
    if (in->algorithm == NULL)
        return api_fail(e, 400, "missing_field", "'algorithm' is required");
    /* Exact names only: SHA-1 and spelling variants are not signing options. */
    if (strcmp(in->algorithm, "sha256") == 0)
        in->alg = QK_HASH_SHA256;
    else if (strcmp(in->algorithm, "sha384") == 0)
        in->alg = QK_HASH_SHA384;
    else if (strcmp(in->algorithm, "sha512") == 0)
        in->alg = QK_HASH_SHA512;
    else
        return api_fail(e, 400, "unknown_algorithm",
                        "'algorithm' must be sha256, sha384 or sha512");

    in->format = FMT_AUTHENTICODE_PE;
    if (format != NULL && sign_format_parse(format, &in->format) != 0)
        return api_fail(e, 400, "unknown_format", "'format' must be authenticode-pe, cms or raw");

    if (in->profile == NULL)
        in->profile = "default";
    if (in->profile[0] == '\0')
        return api_fail(e, 400, "invalid_value", "'profile' must not be empty");

    if (b64_decode(digest, strlen(digest), in->digest, sizeof(in->digest), &in->digest_len) != 0)
        return api_fail(e, 400, "invalid_digest", "'digest' is not canonical base64");
    if (in->digest_len != qk_hash_size(in->alg))
        return api_fail(e, 400, "digest_length", "a %s digest is %zu bytes, not %zu", in->algorithm,
                        qk_hash_size(in->alg), in->digest_len);
    return 0;
}

int sign_input_parse(const uint8_t *body, size_t len, sign_input *in, api_error *e)
{
    memset(in, 0, sizeof(*in));
    if (parse(body, len, in, e) == 0)
        return 0;
    sign_input_clear(in);
    return -1;
}
