/* In-process keys, certificates and an RFC 3161 responder for the signature
 * tests (test_authenticode.c, test_tsp.c): no files, no network. Built with
 * OpenSSL directly, independently of libqwick. Aborts on failure (test code). */
#ifndef QK_TEST_SIG_TESTUTIL_H
#define QK_TEST_SIG_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "qwick/buf.h"

/* Keys are generated once per process and cached (borrowed: do not free). */
EVP_PKEY *tk_rsa_key(void);
EVP_PKEY *tk_rsa_key2(void); /* a second, unrelated RSA key */
EVP_PKEY *tk_ec_key(void);

/* A certificate for `key` named CN=`cn`, issued by (issuer, issuer_key) or
 * self-signed when issuer is NULL. `eku` is an extendedKeyUsage value such as
 * "codeSigning" or "critical,timeStamping"; NULL for a CA (basicConstraints
 * CA:TRUE). Valid from a day ago for a year. Caller frees. */
X509 *tk_cert(EVP_PKEY *key, const char *cn, const char *eku, X509 *issuer, EVP_PKEY *issuer_key);

/* DER of a certificate into a malloc'd buffer. */
qk_buf tk_cert_der(X509 *x);

/* A TSA: RSA key plus a self-signed certificate with critical timeStamping EKU. */
typedef struct tk_tsa {
    EVP_PKEY *key;
    X509 *cert;
} tk_tsa;
void tk_tsa_init(tk_tsa *t);
void tk_tsa_cleanup(tk_tsa *t);

/* What tk_tsa_reply changes in the request before answering it. */
typedef struct tk_reply_opts {
    int no_digests;    /* accept no digest algorithm: the reply is a rejection (badAlg) */
    int other_nonce;   /* answer a request whose nonce differs */
    int no_nonce;      /* answer a request without a nonce */
    int other_imprint; /* answer a request whose imprint hash differs */
    int other_alg;     /* answer a request whose imprint algorithm is sha1 (same bytes) */
    int no_cert;       /* answer a request with certReq FALSE (token without certificate) */
    int bad_signature; /* flip a bit in the token's signature value */
    int status;        /* when > 0: overwrite the status of the reply (1: grantedWithMods) */
    int64_t gen_time;  /* when > 0: the token's genTime (seconds since the epoch) */
    /* ESS signingCertificate of the token (re-signed with the TSA key, so
     * its signature stays valid): 0 as OpenSSL writes it; TK_ESS_NONE none;
     * TK_ESS_OTHER a signingCertificateV2 naming another certificate;
     * TK_ESS_SELF one naming the TSA certificate (the re-signed control). */
    int ess;
} tk_reply_opts;
enum { TK_ESS_NONE = 1, TK_ESS_OTHER = 2, TK_ESS_SELF = 3 };

/* The DER TimeStampResp `t` gives to `req`, tampered as `o` says. */
qk_buf tk_tsa_reply(const tk_tsa *t, const uint8_t *req, size_t len, const tk_reply_opts *o);

/* A fresh random buffer (RAND_bytes). */
void tk_random(uint8_t *p, size_t n);

#endif
