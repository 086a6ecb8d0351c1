/* JSON API handlers (routes are listed in serve.c) and what they share:
 * bearer-key authentication and strict request-body parsing.
 *
 * Error codes (the "code" of {"error":{"code","message"}}):
 *   400 invalid_json, unknown_field, missing_field, invalid_type, invalid_digest,
 *       digest_length, unknown_algorithm, unknown_format, field_too_long, invalid_value
 *   401 missing_api_key, unknown_api_key, revoked_api_key, expired_api_key,
 *       missing_operator_token, unknown_operator_token (/metrics)
 *   403 forbidden           404 not_found, unknown_profile
 *   409 profile_exists, profile_disabled               400 invalid_config, timestamp_required
 *   405 method_not_allowed  413 body_too_large        415 unsupported_media_type
 *   403 format_not_allowed  429 rate_limited (/tsa)
 *   500 internal, audit_failed, signing_failed        503 store_unavailable, shutting_down */
#ifndef QWICKD_API_H
#define QWICKD_API_H

#include <jansson.h>

#include "http/http.h"
#include "http/json_in.h"
#include "api/server.h"
#include "store/store.h"

#define API_MAX_KEY_NAME 64

/* Authenticates "Authorization: Bearer <key>". On success fills *key (free
 * with store_apikey_clear), sets req->actor and returns 0; otherwise answers
 * (401/503) and returns -1. */
int api_authenticate(http_req *req, store_apikey *key);
/* The same, also reading the profile named `profile` (not NULL) of the
 * key's org in the same statement: *prof_found = 1 and *prof filled when it
 * exists and the key is good. */
int api_authenticate_profile(http_req *req, store_apikey *key, const char *profile,
                             store_profile *prof, int *prof_found);

/* Answers with the error a parser reported. */
void api_reply_error(http_req *req, const api_error *e);
/* Answers 415 and returns -1 unless the body is declared application/json. */
int api_require_json(http_req *req);
/* Requires Content-Type: application/json and a JSON object body; otherwise
 * answers (415/400) and returns NULL. The caller owns the result. */
json_t *api_parse_object(http_req *req);
/* Answers 400 unknown_field and returns -1 if `obj` has a key not listed in
 * the NULL-terminated `allowed`. */
int api_only_fields(http_req *req, json_t *obj, const char *where, const char *const *allowed);
/* Optional string member: 0 with *out NULL when absent (or JSON null when
 * null_ok), 0 with the string, or -1 after answering 400 (wrong type, too
 * long). */
int api_opt_string(http_req *req, json_t *obj, const char *name, size_t max, const char **out);

/* 0 when the key's role is at least `role`; otherwise answers 403, -1. */
int api_need_role(http_req *req, const store_apikey *key, store_role role);
/* ["a","b"] of a key's profile limits, or JSON null when it has none. */
json_t *api_key_profiles_json(const store_apikey *k);

/* An audit row for `key` acting now from the request's client address. */
void api_audit_init(http_req *req, const store_apikey *key, const char *action, store_audit *a);

/* Handlers. */
void api_sign_digest(http_req *req);
void api_sign_request_get(http_req *req);
void api_sign_requests_list(http_req *req);
void api_sign_request_cancel(http_req *req);
void api_sign_request_retry(http_req *req);
void api_sign_dead_letters(http_req *req);
/* The queued path of POST /api/v1/sign/digest (api_requests.c): takes over
 * *key and *in (left cleared) and answers 202, or 200 for a synchronous
 * request with an Idempotency-Key signed in time. */
struct sign_input;
void api_sign_enqueue(http_req *req, store_apikey *key, struct sign_input *in,
                      const store_profile *prof, const char *idem_key);
/* "https://host:port/tsa" for timestampUrl, or NULL. */
char *api_tsa_url(http_req *req);
void api_keys_list(http_req *req);
void api_keys_create(http_req *req);
void api_keys_revoke(http_req *req);
void api_profiles_list(http_req *req);
void api_profiles_create(http_req *req);
void api_profiles_get(http_req *req);
void api_profiles_disable(http_req *req);
void api_log_public_key(http_req *req);
void api_log_checkpoint(http_req *req);
void api_log_entries(http_req *req);
void api_log_inclusion(http_req *req);
void api_log_consistency(http_req *req);
/* One log entry as the API shows it (also in sign request answers). */
json_t *api_log_entry_json(const store_log_entry *e);
void api_usage(http_req *req);
/* Writes the counted failed authentications once their interval is over
 * (`force`: now; serve calls it at shutdown). */
void api_auth_failures_flush(qk_store *st, int force);
void api_healthz(http_req *req);
void api_metrics(http_req *req);

/* The per-(org, profile) signer cache used by api_sign_digest. */
signer_cache *signer_cache_new(void);
void signer_cache_free(signer_cache *c);

#endif
