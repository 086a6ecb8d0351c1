/* Signing policies: the JSON document an admin attaches to a certificate
 * profile (docs/api.md, "Policies"), parsed strictly once, then checked
 * against each signing request.
 *
 *   {"ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"],
 *    "signing_hours": {"days": "mon-fri", "from": "08:00", "to": "18:00",
 *                      "timezone": "Europe/Berlin"},
 *    "filenames": ["*.exe", "*.dll"], "formats": ["authenticode-pe"],
 *    "algorithms": ["sha256", "sha384"], "require_justification": true}
 *
 * Every member is optional; an empty object allows everything. Unknown keys
 * and bad values are refused with the key named ("signing_hours.from: ...").
 * `rate_limits` and `require_approval` are refused as not enforced yet: a
 * policy this server cannot enforce is not accepted at all. */
#ifndef QWICKD_POLICY_H
#define QWICKD_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "http/json_in.h"
#include "qwick/hash.h"

/* Largest policy document, and most entries in one list. */
#define POLICY_MAX_BYTES (256u * 1024u)
#define POLICY_MAX_LIST 10000u
#define POLICY_MAX_PATTERN 256u

typedef struct policy policy;

/* Parses and checks a policy document. 0 with *out, or -1 with *e (400
 * invalid_policy, the offending key in the message). */
int policy_parse(const uint8_t *json, size_t len, policy **out, api_error *e);
void policy_free(policy *p);

/* The document in canonical form (keys sorted, compact): what is stored and
 * shown. Caller frees. */
char *policy_canonical(const policy *p);

/* What a signing request is judged on. */
typedef struct policy_request {
    const struct sockaddr *addr; /* the client; NULL: unknown (refused by an allowlist) */
    int64_t now;                 /* unix seconds */
    const char *filename;        /* metadata.filename; NULL when absent */
    const char *format;          /* "authenticode-pe", "cms" or "raw" */
    qk_hash_alg alg;
    int has_justification; /* metadata.justification given, non-empty */
} policy_request;

typedef struct policy_decision {
    int allowed;
    int status;       /* when denied: 400 or 403 */
    const char *code; /* when denied: ip_not_allowed, outside_signing_hours, format_not_allowed,
                       * algorithm_not_allowed, filename_not_allowed, justification_required */
    const char *rule; /* the member that decided ("ip_allowlist", ...); "none" when allowed */
    char message[256];
} policy_decision;

/* Judges `r` by `p` (NULL: no policy, everything allowed). The rules are
 * applied in the order of the decision codes above; the first that denies
 * decides. */
void policy_check(const policy *p, const policy_request *r, policy_decision *d);

#endif
