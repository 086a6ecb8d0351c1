/* Signing policies over HTTP, and the check of each signing request against
 * its profile's policy (policy/policy.h). See api_policy.c for the routes. */
#ifndef QWICKD_API_POLICY_H
#define QWICKD_API_POLICY_H

#include "api/server.h"
#include "api/sign_input.h"
#include "http/http.h"
#include "policy/policy.h"
#include "store/store.h"

policy_cache *policy_cache_new(void);
void policy_cache_free(policy_cache *c);

/* Judges a signing request by its profile's policy: 0 when allowed (also
 * when the profile has none), -1 with *d saying which rule denied it (a
 * stored policy that no longer parses denies, status 500). Answers nothing:
 * the caller records the denial and replies. */
int api_policy_check(http_req *req, const store_profile *prof, const sign_input *in,
                     policy_decision *d);

void api_policy_get(http_req *req);
void api_policy_put(http_req *req);
void api_policy_delete(http_req *req);
void api_policy_evaluate(http_req *req);

#endif
