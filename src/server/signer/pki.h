/* The development PKI that `qwickd init` creates, built with the OpenSSL API.
 *
 * Three independent hierarchies, so trusting one for a purpose does not trust
 * the others for it:
 *   root-ca.pem      "Qwick Dev Root CA" (P-384, 10 y)  -> code-signing leaf
 *                    (RSA-3072, EKU codeSigning, ~2 y)
 *   tsa-root-ca.pem  "Qwick Dev TSA Root" (P-384, 10 y) -> TSA certificate
 *                    (RSA-3072, critical EKU timeStamping, 5 y)
 *   tls-ca.pem       "Qwick Dev TLS CA" (P-256, 10 y)   -> TLS server certificate
 *                    (P-256, SAN IP:127.0.0.1, IP:::1, DNS:localhost, serverAuth, ~2 y)
 * Serials carry 126 random bits. The roots' private keys are discarded once the
 * leaves are issued: a dev PKI never issues again (run init afresh instead).
 *
 * Private keys at rest: the code-signing key exists only sealed under the
 * master key (signing_keys table, see pki_codesign); the TSA key is sealed in
 * tsa.key.sealed (AAD SECRETS_AAD_TSA_KEY). The TLS key is a plain PKCS#8 PEM
 * file, tls.key, mode 0600: libmicrohttpd/GnuTLS takes it as PEM in memory at
 * start anyway, an operator can swap in their own key file, and it protects
 * transport, not signatures. */
#ifndef QWICKD_PKI_H
#define QWICKD_PKI_H

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "qwick/buf.h"
#include "qwick/error.h"
#include "core/secrets.h"

#define PKI_ROOT_CA "root-ca.pem"
#define PKI_TSA_ROOT_CA "tsa-root-ca.pem"
#define PKI_TLS_CA "tls-ca.pem"
#define PKI_TLS_CERT "tls.pem"
#define PKI_TLS_KEY "tls.key"
#define PKI_TSA_CERT "tsa.pem" /* TSA certificate, then its root */
#define PKI_TSA_KEY_SEALED "tsa.key.sealed"
#define PKI_CODESIGN_CERT "codesign.pem" /* the code-signing leaf then its root (public) */

/* The code-signing identity, returned to the caller to seal into the store. */
typedef struct pki_codesign {
    qk_buf key_pem;   /* PKCS#8 PEM private key: plaintext, wipe with pki_codesign_clear */
    qk_buf chain_der; /* leaf DER followed by root DER */
} pki_codesign;

/* Generates the three hierarchies and writes the files above into `dir`
 * (certificates 0644, keys 0600, all created O_EXCL). */
qk_err pki_generate(const char *dir, const qk_keyring *kr, pki_codesign *out);
void pki_codesign_clear(pki_codesign *c);

/* For the TSA: unseals DIR/tsa.key.sealed and reads DIR/tsa.pem. *cert is the
 * TSA certificate, *chain the rest of tsa.pem (its root; may be empty). */
qk_err pki_load_tsa(const char *dir, const qk_keyring *kr, EVP_PKEY **key, X509 **cert,
                    STACK_OF(X509) * *chain);

/* Parses one PEM private key (e.g. an unsealed signing key). */
qk_err pki_parse_key_pem(qk_slice pem, EVP_PKEY **out);

#endif
