/* Helpers shared by the verification modules (verify.c for PE images,
 * verify_ts.c for timestamps, verify_detached.c for detached CMS). Not installed.
 *
 * Verification separates two kinds of failure. A check that fails (bad digest,
 * broken DER, unknown root) is a *result*: it clears an ok flag and records a
 * message in the result, and verification goes on. A failure to verify at all
 * (out of memory, unreadable CA file) is a qk_err. Allocations made while
 * filling results (message strings, names) set the sticky `nomem` flag of the
 * context instead of threading a qk_err through every check; the public entry
 * points turn it into QK_ERR_NOMEM. */
#ifndef QK_LIB_VERIFY_INTERNAL_H
#define QK_LIB_VERIFY_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/cms.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>

#include "qwick/verify.h"

/* Signatures reported per file (top-level entries plus nested ones), and how
 * deep nested signatures are followed: bounds on work for hostile input. */
#define QK_VERIFY_MAX_SIGS 128
#define QK_VERIFY_MAX_DEPTH 4
/* Largest DER signature (PKCS#7 or CMS) accepted by the verifier. */
#define QK_VERIFY_MAX_SIG_SIZE (16u * 1024u * 1024u)

struct qk_verify_ctx {
    X509_STORE *cs_store; /* roots for code signing; NULL with skip_chain */
    X509_STORE *ts_store; /* roots for timestamps (may be cs_store, referenced twice);
                             NULL with skip_ts_chain */
};

/* The state of one verification call: the context's stores (borrowed) and the
 * sticky out-of-memory flag. */
typedef struct qk_vctx {
    X509_STORE *cs_store; /* NULL: do not evaluate signer chains */
    X509_STORE *ts_store; /* NULL: do not evaluate TSA chains */
    int nomem;            /* an allocation failed while filling results */
} qk_vctx;

/* Which extended key usages a chain must allow. */
typedef enum qk_eku_policy {
    QK_EKU_CODE_SIGNING, /* leaf has codeSigning; CAs with an EKU include it (or any) */
    QK_EKU_TIMESTAMPING, /* the same with timeStamping */
    QK_EKU_NOT_TS_ONLY,  /* anything except a leaf restricted to timeStamping alone */
} qk_eku_policy;

/* Starts one verification with ctx's stores. */
void qk_vctx_begin(qk_vctx *v, const qk_verify_ctx *ctx);

/* Records a failure message in *slot unless one is already there: the first
 * failing check is the one reported. */
void qk_vnote(qk_vctx *v, char **slot, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* One-line "CN=..., O=..." form of a name (heap); NULL when it cannot be
 * printed (or, with v->nomem set, when out of memory). */
char *qk_vname(qk_vctx *v, const X509_NAME *name);

/* 1 when o is the dotted OID `oid`. */
int qk_obj_is(const ASN1_OBJECT *o, const char *oid);

/* Seconds since the epoch of an ASN.1 UTCTime/GeneralizedTime; 0 on failure. */
int qk_asn1_time_to_epoch(const ASN1_TIME *t, int64_t *out);
/* Sets ts->time and its ISO 8601 form. */
void qk_ts_set_time(qk_ts_result *ts, int64_t t);

/* The single value of the attribute `nid`, which must occur once, with one
 * value of ASN.1 type `type` (any type when negative). NULL otherwise, with
 * *why saying what is wrong. */
const ASN1_TYPE *qk_attr_one(const STACK_OF(X509_ATTRIBUTE) * attrs, int nid, int type,
                             const char **why);

/* Checks a PKCS#7 SignerInfo that carries authenticated attributes:
 * *md_ok when the messageDigest attribute equals the hash of `content` with the
 * SignerInfo's digest algorithm (and, if ctype_oid is given, the contentType
 * attribute is that OID); *sig_ok when the signature over the DER SET OF
 * attributes verifies under the certificate named by issuerAndSerialNumber,
 * searched in `certs` (returned, borrowed, in *signer). Failures are noted in
 * *err, each prefixed with `what`. */
void qk_vsigner_check(qk_vctx *v, PKCS7_SIGNER_INFO *si, STACK_OF(X509) * certs,
                      const uint8_t *content, size_t content_len, const char *ctype_oid,
                      const char *what, int *md_ok, int *sig_ok, X509 **signer, char **err);

/* 1 when `leaf` chains to a root of `store` with `untrusted` as candidate
 * intermediates, at time `when` (negative: now), and the EKU policy holds;
 * else 0 with the reason noted in *err as "<what>: <reason>". */
int qk_vchain(qk_vctx *v, X509_STORE *store, X509 *leaf, STACK_OF(X509) * untrusted,
              qk_eku_policy eku, int64_t when, const char *what, char **err);

/* Looks for a timestamp among an Authenticode SignerInfo's unsigned attributes
 * (RFC 3161 token under 1.3.6.1.4.1.311.3.3.1, else a legacy PKCS#9
 * countersignature) and, when one exists, sets *out to a heap result
 * describing it. `certs` are the outer signature's certificates (a
 * countersigner's certificate lives there). TSA chains are evaluated against
 * v->ts_store, or not at all when it is NULL. */
void qk_vts_check(qk_vctx *v, PKCS7_SIGNER_INFO *si, STACK_OF(X509) * certs, qk_ts_result **out);
/* The same for a CMS SignerInfo, where the standard id-aa-timeStampToken
 * (1.2.840.113549.1.9.16.2.14) comes first, then the two above. */
void qk_vts_check_cms(qk_vctx *v, CMS_SignerInfo *si, STACK_OF(X509) * certs,
                      qk_ts_result **out);
void qk_ts_result_free(qk_ts_result *ts);

/* Every check passed; a chain that was not evaluated does not count. */
int qk_sig_fully_valid(const qk_sig_result *s);

/* Frees the heap members of one signature result (not the struct itself). */
void qk_sig_result_clear(qk_sig_result *s);

#endif
