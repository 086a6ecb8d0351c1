/* qwickd's persistence interface. Every operation names the org it acts for:
 * every query has org_id in it, and on PostgreSQL each transaction also sets
 * the org for row-level security (store_sql.c, schema_pg.c). One
 * implementation, over two database drivers (db.h).
 *
 * Implementations are thread-safe: handlers on many threads call them at once.
 * Strings returned inside structs are owned by the struct; free with the
 * matching *_clear/free function. */
#ifndef QWICKD_STORE_H
#define QWICKD_STORE_H

#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

#include "qwick/buf.h"
#include "qwick/error.h"

typedef struct qk_store qk_store;

typedef enum store_role {
    ROLE_VIEWER = 0, /* read-only: requests, audit */
    ROLE_SIGNER = 1, /* may submit signing requests */
    ROLE_ADMIN = 2,  /* may manage keys, members, profiles */
} store_role;

const char *store_role_name(store_role r);
int store_role_parse(const char *s, store_role *out); /* 0 ok, -1 unknown */

typedef struct store_org {
    int64_t id;
    char *name;
} store_org;

typedef struct store_apikey {
    int64_t id;
    int64_t org_id;
    int64_t user_id; /* 0 when not tied to a user */
    char *name;
    char *prefix; /* the first characters of the key, safe to display */
    store_role role;
    int64_t created_at;   /* unix seconds */
    int64_t expires_at;   /* 0: never */
    int64_t revoked_at;   /* 0: active */
    int64_t last_used_at; /* 0: never */
    char *profiles;       /* "a,b": the only profiles it may sign with; NULL: any */
} store_apikey;

/* A certificate profile: which key signs, with which chain. */
typedef struct store_profile {
    int64_t id;
    int64_t org_id;
    char *name;
    char *backend;    /* "local" | "azure" ("pkcs11" later) */
    int64_t key_id;   /* row in signing_keys: the sealed key or backend secrets */
    qk_buf chain_der; /* concatenated DER certificates, leaf first; empty for
                       * backends whose certificate comes with each signature */
    char *config;     /* the backend's settings as JSON, secrets removed (they
                       * are sealed in key_id); NULL for profiles made by init */
    int64_t created_at;
    int64_t updated_at;  /* 0: never changed */
    int64_t disabled_at; /* 0: enabled */
    char *policy;        /* the signing policy, canonical JSON (policy.h); NULL: none */
} store_profile;

/* A lease on one Azure client secret (see signer_azure.h): rows are how the
 * nodes sharing a store agree on how many secrets are alive for an app
 * registration. A row is live while released_at is 0; its holder renews
 * lease_until while it runs, so a row whose lease ran out belongs to a node
 * that died and only waits for the reaper to revoke its secret. */
typedef struct store_lease {
    int64_t id;
    char *node;   /* the holder: "<host>/<random>" of one qwickd run */
    char *key_id; /* Graph's keyId of the secret; NULL while creating it */
    int64_t created_at;
    int64_t lease_until; /* unix seconds */
} store_lease;

/* An encrypted signing key: the envelope (see secrets.h) and its kind. */
typedef struct store_signing_key {
    int64_t id;
    int64_t org_id;
    char *kind;    /* "local-pem" */
    qk_buf sealed; /* secrets_seal() output */
} store_signing_key;

typedef enum req_status {
    REQ_QUEUED = 0,
    REQ_PENDING_APPROVAL,
    REQ_PROCESSING,
    REQ_SIGNED,
    REQ_FAILED,
    REQ_REJECTED,
    REQ_CANCELLED,
} req_status;
#define REQ__COUNT (REQ_CANCELLED + 1)
/* A status by its name ("QUEUED"...): 0 ok, -1 unknown. */
int req_status_parse(const char *s, req_status *out);

const char *req_status_name(req_status s);

typedef struct store_sign_request {
    char id[40]; /* "req_" + 32 hex chars */
    int64_t org_id;
    int64_t apikey_id; /* 0 if none */
    int64_t user_id;   /* 0 if none */
    req_status status;
    char *algorithm; /* "sha256" ... */
    char *format;    /* "authenticode-pe" | "cms" | "raw" */
    char *profile;
    char *filename;    /* may be NULL */
    char *description; /* may be NULL */
    char *url;         /* may be NULL */
    char *client_ip;
    qk_buf digest;
    qk_buf signature; /* empty unless SIGNED */
    char *error;      /* NULL unless FAILED/REJECTED */
    int64_t created_at;
    int64_t completed_at;
    /* The queue's (zero for a request signed synchronously). */
    int64_t attempts;   /* claims so far: each counts one, and fences its completion */
    int64_t updated_at; /* unix seconds */
    int64_t queued_ms;  /* when it entered the queue, unix ms */
    int64_t run_after;  /* unix ms: not claimed before (a retry's backoff) */
    qk_buf chain_der;   /* the signature's chain, leaf first (signed queued requests) */
    int64_t options;    /* REQ_OPT_* */
    char *callback_url; /* POSTed the final status (queued requests); may be NULL */
} store_sign_request;

#define REQ_OPT_NO_TIMESTAMP 1 /* the client will not timestamp (Azure refuses it) */
#define REQ_OPT_SYNC 2         /* a synchronous request, queued for its Idempotency-Key */

/* An Idempotency-Key: scoped to the org and the credential ("apikey:12"). */
typedef struct store_idem {
    const char *credential;
    const char *key;
    uint8_t body_hash[32];  /* SHA-256 of the request body */
    int64_t now;            /* unix seconds */
    int64_t expired_before; /* a key first used before this is free again */
} store_idem;

/* What request_enqueue_async did with an Idempotency-Key. */
typedef struct store_enqueued {
    int existing;        /* the key named an earlier request (nothing was written) */
    int reused;          /* ... and that one's body differs: 422 */
    int sync;            /* the earlier request was synchronous (REQ_OPT_SYNC) */
    char request_id[40]; /* the earlier request's id when existing */
} store_enqueued;

/* One request a worker claimed: PROCESSING under its lease. */
typedef struct store_claim {
    int64_t org_id;
    char id[40];
    int64_t attempts; /* this claim's number: its completion must name it */
} store_claim;

/* A claimed request's outcome. */
typedef struct store_finish {
    req_status status;  /* REQ_SIGNED, REQ_FAILED, or REQ_QUEUED (try again later) */
    qk_slice signature; /* SIGNED */
    qk_slice chain_der; /* SIGNED */
    const char *error;  /* FAILED: the reason; QUEUED: the last attempt's */
    int64_t run_after;  /* QUEUED: unix ms */
    int64_t now;        /* unix seconds */
} store_finish;

typedef struct store_queue_stats {
    int64_t count[REQ__COUNT]; /* rows by status (SIGNED: not counted, 0) */
    int64_t oldest_queued_ms;  /* queued_ms of the oldest QUEUED row; 0: none */
} store_queue_stats;

/* Completion of an asynchronous store write (see request_record_async). */
typedef void (*store_done_fn)(void *arg, qk_err rc, const char *detail);

typedef enum audit_outcome { AUDIT_ALLOWED = 0, AUDIT_DENIED = 1, AUDIT_FAILED = 2 } audit_outcome;

const char *audit_outcome_name(audit_outcome o);

/* One audit entry: a leaf of its org's transparency log (src/common/tlog.h
 * encodes it; version 2 holds every field below). Org 0 is the instance's own
 * log (failed authentications, which belong to no org). */
typedef struct store_audit {
    int64_t id; /* assigned by the store */
    int64_t org_id;
    int64_t ts;        /* unix milliseconds */
    const char *actor; /* "apikey:12", "user:3" */
    const char *client_ip;
    const char *action;     /* "sign.digest", "apikey.create", ... */
    const char *request_id; /* may be NULL */
    const char *format;     /* "authenticode-pe" | "cms" | "raw", may be NULL */
    const char *digest_hex; /* may be NULL */
    const char *algorithm;
    const char *profile;
    const char *filename;
    const char *signer_fp;     /* SHA-256 hex of the signer certificate (DER) */
    const char *sig_sha256;    /* SHA-256 hex of the signature returned (sign_requests.signature) */
    const char *sigval_sha256; /* SHA-256 hex of the signer's signature value, which the
                                * signed file carries unchanged after timestamping */
    audit_outcome outcome;
    const char *detail; /* reason for denial/failure, may be NULL */
    const char *meta;   /* what changed, as compact JSON (key id, role, expiry...) */
    int64_t *log_index; /* when not NULL: receives the entry's leaf index once committed */
} store_audit;

typedef struct store_operator_token {
    int64_t id;
    char *name;
    int64_t created_at, revoked_at;
} store_operator_token;

typedef struct store_usage_row {
    char *profile;
    int64_t signatures;
} store_usage_row;

typedef struct store_usage {
    int64_t allowed, denied, failed;
    store_usage_row *by_profile;
    size_t nprofiles;
} store_usage;

/* A checkpoint the server signed: the tree of an org's first `size` entries. */
typedef struct store_checkpoint {
    int64_t size;
    uint8_t root[32];
    char *note; /* the signed note (C2SP checkpoint) */
    int64_t created_at;
} store_checkpoint;

/* One log entry as published: its index and canonical leaf bytes. */
typedef struct store_log_entry {
    int64_t index;
    qk_buf leaf;
} store_log_entry;

typedef enum store_proof_kind {
    PROOF_ROOT = 0,    /* root of the tree of size b (b = 0: the current size) */
    PROOF_INCLUSION,   /* leaf a in the tree of size b */
    PROOF_CONSISTENCY, /* tree of size a against the tree of size b */
} store_proof_kind;

typedef struct store_proof {
    int64_t size; /* the tree the proof is for (b, or the current size) */
    uint8_t root[32];
    uint8_t hashes[64][32];
    size_t n;
} store_proof;

/* What `qwickd audit verify` found in one org's rows. */
typedef struct store_audit_check {
    int ok;
    int64_t count;     /* rows read */
    int64_t bad_seq;   /* first entry at fault (0: none or not one entry) */
    char problem[256]; /* what is wrong, when !ok */
} store_audit_check;

/* The backend vtable. Every function returns QK_OK or an error with detail
 * set through qk_error_detail(); "not found" is QK_ERR_INVALID_ARG with
 * *found = 0 where a found flag exists (found is 1 on success, and 1 with an
 * error return when the row exists but the operation failed). So both
 * `if (rc != QK_OK) { if (!found) 404; else 500; }` and `found && rc == QK_OK`
 * read correctly; a not-found never returns QK_OK with an empty struct.
 * Constraint violations (duplicate name, unknown org) are QK_ERR_INVALID_ARG
 * too; database failures are QK_ERR_IO. */
typedef struct store_ops {
    void (*close)(qk_store *s);

    /* bootstrap (qwickd init) */
    /* audit (may be NULL): its entry, committed with the org (org 0's log). */
    qk_err (*org_create)(qk_store *s, const char *name, const store_audit *audit, int64_t *id);
    qk_err (*user_create)(qk_store *s, int64_t org, const char *email, const char *pw_hash,
                          store_role role, int64_t *id);
    qk_err (*signing_key_create)(qk_store *s, int64_t org, const char *kind, qk_slice sealed,
                                 int64_t *id);
    qk_err (*signing_key_get)(qk_store *s, int64_t org, int64_t id, store_signing_key *out,
                              int *found);
    /* config: the profile's public settings (JSON text), may be NULL. */
    /* Every state change below takes its audit entry (NULL only while `qwickd
     * init` builds a data directory): the change and the entry commit in one
     * transaction, or neither does. The store fills the entry's `meta` with
     * what changed (ids, role, expiry, backend). */
    qk_err (*profile_create)(qk_store *s, int64_t org, const char *name, const char *backend,
                             int64_t key_id, qk_slice chain_der, const char *config,
                             const store_audit *audit, int64_t *id);
    qk_err (*profile_get)(qk_store *s, int64_t org, const char *name, store_profile *out,
                          int *found);

    /* API keys: only the SHA-256 of a key is ever stored. */
    qk_err (*apikey_create)(qk_store *s, int64_t org, int64_t user, const char *name,
                            const char *prefix, const uint8_t hash[32], store_role role,
                            int64_t expires_at, const char *profiles, const store_audit *audit,
                            int64_t *id);
    /* Looks a key up by hash (the caller compares in constant time too). */
    /* The same, with the profile named `profile` of the key's org, read in
     * the same statement (the signing path: one round trip for both);
     * *prof_found = 0 when the key's org has no such profile. */
    qk_err (*apikey_lookup_profile)(qk_store *s, const uint8_t hash[32], const char *profile,
                                    store_apikey *out, uint8_t stored_hash[32], int *found,
                                    store_profile *prof, int *prof_found);
    qk_err (*apikey_lookup)(qk_store *s, const uint8_t hash[32], store_apikey *out,
                            uint8_t stored_hash[32], int *found);
    qk_err (*apikey_list)(qk_store *s, int64_t org, store_apikey **out, size_t *n);
    qk_err (*apikey_revoke)(qk_store *s, int64_t org, int64_t id, const store_audit *audit,
                            int *found);
    qk_err (*apikey_touch)(qk_store *s, int64_t org, int64_t id, int64_t now);

    /* Signing requests + audit. Durable when it returns: the request row and
     * its audit row commit in one transaction; concurrent callers share
     * commits (group commit) so throughput does not serialize on fsync. */
    qk_err (*request_record)(qk_store *s, const store_sign_request *req, const store_audit *audit);
    qk_err (*request_get)(qk_store *s, int64_t org, const char *id, store_sign_request *out,
                          int *found);
    /* An audit row on its own (denials before any request exists). Durable. */
    qk_err (*audit_append)(qk_store *s, const store_audit *audit);
    /* Recomputes the org's log from its rows: value types, every leaf, every
     * stored tree node, the head, and the signed requests against their
     * entries. Tampering shows as out->ok = 0 with the problem named. */
    qk_err (*audit_verify)(qk_store *s, int64_t org, store_audit_check *out);
    /* request_id NULL: every audit row of the org. */
    qk_err (*audit_count)(qk_store *s, int64_t org, const char *request_id, int64_t *count);

    /* Lookups by name and id. */
    /* An org's id by name (CLI commands take --org NAME). */
    qk_err (*org_find)(qk_store *s, const char *name, int64_t *id, int *found);
    /* One key of an org by id (revoke/list output); key material is never stored. */
    qk_err (*apikey_get)(qk_store *s, int64_t org, int64_t id, store_apikey *out, int *found);

    /* request_record without a waiting thread: done(arg, rc, detail) runs
     * once the batch holding both rows has committed durably (rc QK_OK) or
     * failed (detail says why), on a thread of the store's own; `req` and
     * `audit` must stay valid until then. A non-OK return means `done` will
     * not be called. Optional (NULL): callers fall back to request_record. */
    qk_err (*request_record_async)(qk_store *s, const store_sign_request *req,
                                   const store_audit *audit, store_done_fn done, void *arg);

    /* Profile management (qwickd profile, /api/v1/profiles). */
    qk_err (*profile_list)(qk_store *s, int64_t org, store_profile **out, size_t *n);
    /* Sets disabled_at (once; disabling again keeps the first time). */
    qk_err (*profile_disable)(qk_store *s, int64_t org, const char *name, int64_t now,
                              const store_audit *audit, int *found);
    /* Attaches a policy (canonical JSON, see policy.h) to a profile, or
     * removes it (NULL), with its audit row in the same transaction. */
    qk_err (*profile_set_policy)(qk_store *s, int64_t org, const char *name, const char *policy,
                                 int64_t now, const store_audit *audit, int *found);
    /* Replaces a sealed blob (a rotated refresh token), atomically. */
    qk_err (*signing_key_update)(qk_store *s, int64_t org, int64_t id, qk_slice sealed, int *found);
    /* Every org (background jobs that serve all tenants, e.g. the reaper). */
    qk_err (*org_list)(qk_store *s, store_org **out, size_t *n);

    /* Azure secret leases for app registration `app` of `org`. */
    /* In one transaction: if fewer than `max` rows are live, inserts one for
     * `node` (*granted = 1, *lease_id set); otherwise *granted = 0. */
    qk_err (*lease_acquire)(qk_store *s, int64_t org, const char *app, const char *node, int max,
                            int64_t lease_until, int64_t *lease_id, int *granted);
    /* Sets key_id (when not NULL) and lease_until (when > 0) of a live row. */
    qk_err (*lease_update)(qk_store *s, int64_t org, int64_t lease_id, const char *key_id,
                           int64_t lease_until);
    /* Marks a row released (its secret is revoked or never existed). */
    qk_err (*lease_release)(qk_store *s, int64_t org, int64_t lease_id, int64_t now);
    /* Marks every live row holding `key_id` released (the reaper revoked it). */
    qk_err (*lease_release_key)(qk_store *s, int64_t org, const char *app, const char *key_id,
                                int64_t now);
    /* The live rows of the app, oldest first. */
    qk_err (*lease_list)(qk_store *s, int64_t org, const char *app, store_lease **out, size_t *n);

    /* Operator tokens: the instance operator's credential (GET /metrics),
     * not any org's. Only the SHA-256 is stored. */
    qk_err (*operator_token_create)(qk_store *s, const char *name, const uint8_t hash[32],
                                    int64_t *id);
    /* *found = 1 and *id when an unrevoked token has this hash. */
    qk_err (*operator_token_lookup)(qk_store *s, const uint8_t hash[32], int64_t *id, int *found);
    qk_err (*operator_token_revoke)(qk_store *s, int64_t id, int *found);
    qk_err (*operator_token_list)(qk_store *s, store_operator_token **out, size_t *n);
    /* Signing usage of an org between two times (unix seconds): entries of
     * action sign.digest by outcome, and allowed ones by profile. */
    qk_err (*usage)(qk_store *s, int64_t org, int64_t since, int64_t until, store_usage *out);

    /* The transparency log (one Merkle tree per org, see docs/transparency.md). */
    /* Root and proofs, each read in one snapshot. Arguments out of range
     * (index >= size, size beyond the log) are QK_ERR_INVALID_ARG. */
    qk_err (*log_prove)(qk_store *s, int64_t org, store_proof_kind kind, int64_t a, int64_t b,
                        store_proof *out);
    /* Entries [start, end) (end clamped to the log's size). */
    qk_err (*log_entries)(qk_store *s, int64_t org, int64_t start, int64_t end,
                          store_log_entry **out, size_t *n);
    /* Entries whose sigval_sha256 is `hex`, oldest first. */
    qk_err (*log_lookup)(qk_store *s, int64_t org, const char *sigval_hex, store_log_entry **out,
                         size_t *n);
    /* The index of the entry that recorded request `id` as signed. */
    qk_err (*log_find_request)(qk_store *s, int64_t org, const char *id, int64_t *index,
                               int *found);
    /* The newest stored checkpoint (*found = 0: none yet). */
    qk_err (*checkpoint_latest)(qk_store *s, int64_t org, store_checkpoint *out, int *found);
    /* Stores a checkpoint; one already stored for that size is kept. */
    qk_err (*checkpoint_add)(qk_store *s, int64_t org, int64_t size, const uint8_t root[32],
                             const char *note);
    /* Instance-wide sealed secrets (the log signing key): `put` inserts only
     * when the name is free, so nodes racing to create one agree on the first. */
    qk_err (*instance_secret_get)(qk_store *s, const char *name, qk_buf *sealed, qk_buf *pub,
                                  int *found);
    qk_err (*instance_secret_put)(qk_store *s, const char *name, qk_slice sealed, qk_slice pub);

    /* Master-key rotation (qwickd keyring): every sealed blob of the instance,
     * and re-sealing one. A re-seal is a compare-and-swap: the row changes only
     * while its blob is still `old`, so a blob someone else replaced meanwhile
     * is never overwritten with a stale secret (*found = 0, QK_ERR_INVALID_ARG,
     * like a missing row). */
    /* Every signing key of every org, by org then id. */
    qk_err (*signing_key_list_all)(qk_store *s, store_signing_key **out, size_t *n);
    qk_err (*signing_key_reseal)(qk_store *s, int64_t org, int64_t id, qk_slice old,
                                 qk_slice sealed, int *found);
    /* The names of the instance secrets, sorted (free with store_names_free). */
    qk_err (*instance_secret_names)(qk_store *s, char ***names, size_t *n);
    /* Replaces the sealed half of an instance secret (its public half stays). */
    qk_err (*instance_secret_reseal)(qk_store *s, const char *name, qk_slice old, qk_slice sealed,
                                     int *found);

    /* The asynchronous queue (store_queue.c, docs/api.md). */
    /* Queues `req` (status QUEUED) with its audit entry (sign.submit), like
     * request_record_async: done() runs once both are durable. With `idem`
     * (may be NULL) the key is claimed in the same transaction; when it names
     * an earlier request nothing is written and `out` says which (out is
     * filled before done runs). */
    qk_err (*request_enqueue_async)(qk_store *s, const store_sign_request *req,
                                    const store_audit *audit, const store_idem *idem,
                                    store_enqueued *out, store_done_fn done, void *arg);
    /* Claims up to `max` ready requests of any org for `node`, fairly across
     * orgs (each org's oldest first, round robin), each PROCESSING with a
     * lease until now_ms + lease_ms; rows whose lease ran out are put back
     * first. Free *out with free(). */
    qk_err (*queue_claim)(qk_store *s, const char *node, int64_t now_ms, int64_t lease_ms, int max,
                          store_claim **out, size_t *n);
    /* Records a claimed request's outcome with its audit entry (`audit` may
     * be NULL for a retry), asynchronously like request_record_async. Fenced:
     * fails (QK_ERR_INVALID_ARG, "lease lost") unless the row is still
     * PROCESSING under claim `attempt`. */
    qk_err (*request_finish_async)(qk_store *s, int64_t org, const char *id, int64_t attempt,
                                   const store_finish *f, const store_audit *audit,
                                   store_done_fn done, void *arg);
    /* A QUEUED or PENDING_APPROVAL request becomes CANCELLED (with `audit`);
     * *before: its status before (nothing changed unless cancellable). */
    qk_err (*request_cancel)(qk_store *s, int64_t org, const char *id, int64_t now,
                             const store_audit *audit, req_status *before, int *found);
    /* A FAILED request goes back to the queue, attempts reset (with `audit`);
     * *before as for cancel. */
    qk_err (*request_retry)(qk_store *s, int64_t org, const char *id, int64_t now_ms,
                            const store_audit *audit, req_status *before, int *found);
    /* The org's requests, newest first: status < 0 any; only ids below
     * `before` (NULL: from the newest); at most `limit`. Without signature
     * and chain. Free with store_sign_request_list_free. */
    qk_err (*request_list)(qk_store *s, int64_t org, int status, const char *before, int limit,
                           store_sign_request **out, size_t *n);
    /* Open (not SIGNED) requests by status: of `org`, or of every org (0). */
    qk_err (*queue_stats)(qk_store *s, int64_t org, store_queue_stats *out);
} store_ops;

struct qk_store {
    const store_ops *ops;
};

/* PostgreSQL (docs/postgresql.md): a pool of `conns` connections to `url`
 * (user and password, when not NULL, replace the URL's); the schema must be
 * there and of this version. */
qk_err store_pg_open(const char *url, const char *user, const char *password, int conns,
                     qk_store **out);
/* `qwickd init --database URL`: as the URL's user (the owner), creates the
 * schema with row-level security and the login role `role` that serve uses. */
qk_err store_pg_create(const char *url, const char *role, const char *password);
/* Brings the schema at `url` (the owner's) to this qwickd's version;
 * *from and *to: the versions before and after. */
qk_err store_pg_migrate(const char *url, int *from, int *to);
/* The same for DATA_DIR/qwick.db (which every open migrates anyway). */
qk_err store_sqlite_migrate(const char *data_dir, int *from, int *to);
/* Whether a PostgreSQL URL (or key=value string) carries a password. */
int store_pg_url_has_password(const char *url);

/* SQLite backend: opens (creating if needed, mode 0600) DATA_DIR/qwick.db,
 * WAL mode, synchronous=FULL, foreign keys on, migrations applied.
 * `data_dir` is the directory, not the file.
 *
 * Concurrency: reads use a small pool of reader connections and never wait
 * for the writer (WAL). All writes go to one writer thread, which runs every
 * pending write in one transaction (group commit: one fsync for the batch) and
 * then wakes each caller with its own result; a caller returns only after its
 * commit, and if the commit fails every caller in the batch gets an error.
 * Each write runs under its own SAVEPOINT, so one bad write (a constraint
 * violation) fails alone without failing its batch.
 *
 * apikey_touch is the exception: it is queued without waiting (best effort,
 * it rides along with the next batch) so authentication never waits on fsync. */
qk_err store_sqlite_open(const char *data_dir, qk_store **out);
#define STORE_SQLITE_FILE "qwick.db"
/* Group commit delay: while *coming > 0 (the caller's count of writes on
 * their way, e.g. requests being signed), the writer waits up to `usec` after
 * the oldest queued write for them, so one fsync commits a bigger batch (less
 * CPU per write under load). It commits as soon as *coming drops to 0 or the
 * batch is full; with nothing coming (a lone or serial client) it never
 * waits. usec 0 or coming NULL (the default): off; at most
 * STORE_MAX_COMMIT_DELAY_US. `coming` must outlive the store. */
#define STORE_MAX_COMMIT_DELAY_US 100000u
void store_sqlite_set_commit_delay(qk_store *s, unsigned usec, const atomic_int *coming);
/* Test hook: make the next `n` batch commits fail (rolled back), to exercise
 * the "audit write failed, so the request fails" path. */
void store_sqlite_fail_commits(qk_store *s, int n);
/* Counters since open (for /metrics and tests). PostgreSQL fills commits
 * and writes (its batching writer's); the rest are SQLite's. */
typedef struct store_sqlite_counters {
    uint64_t commits;     /* transactions committed (group commits) */
    uint64_t writes;      /* writes they carried: writes / commits = mean batch */
    uint64_t delayed;     /* batches that waited for the commit delay */
    uint64_t checkpoints; /* checkpoint passes run by the checkpointer */
    uint64_t ckpt_frames; /* WAL frames those passes copied into the database */
} store_sqlite_counters;
void store_sqlite_stats(qk_store *s, store_sqlite_counters *out);
/* Returns once every write queued before the call has committed (or failed)
 * and its completion callback has returned: shutdown calls it before the
 * HTTP daemon that those callbacks resume is stopped. */
void store_sqlite_flush(qk_store *s);

/* The store vtable called through its pointer, for readability at call sites:
 * STORE_CALL(s, profile_get, org, "default", &p, &found). */
#define STORE_CALL(s, op, ...) ((s)->ops->op((s), __VA_ARGS__))

/* A fresh request id: "req_" + 32 lowercase hex chars of randomness. */
void store_new_request_id(char out[40]);
/* Whether `id` has that shape ("req_" + 32 lowercase hex): anything else
 * cannot name a request. */
int store_request_id_ok(const char *id);

void store_apikey_clear(store_apikey *k);
void store_profile_clear(store_profile *p);
void store_profile_list_free(store_profile *p, size_t n);
void store_lease_list_free(store_lease *l, size_t n);
void store_org_list_free(store_org *o, size_t n);
void store_signing_key_clear(store_signing_key *k);
void store_signing_key_list_free(store_signing_key *k, size_t n);
void store_names_free(char **names, size_t n);
void store_sign_request_clear(store_sign_request *r);
void store_sign_request_list_free(store_sign_request *r, size_t n);
void store_org_clear(store_org *o);
void store_checkpoint_clear(store_checkpoint *c);
void store_operator_token_list_free(store_operator_token *t, size_t n);
void store_usage_clear(store_usage *u);
void store_log_entries_free(store_log_entry *e, size_t n);
/* Frees an array returned by apikey_list. */
void store_apikey_list_free(store_apikey *keys, size_t n);

#endif
