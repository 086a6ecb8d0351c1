/* Helpers shared by signature assembly (authenticode.c), editing of existing
 * signatures (cms_edit.c) and the RFC 3161 client (tsp.c). Not installed. */
#ifndef QK_LIB_SIG_INTERNAL_H
#define QK_LIB_SIG_INTERNAL_H

#include <stddef.h>

#include <openssl/pkcs7.h>
#include <openssl/x509.h>

#include "qwick/buf.h"
#include "qwick/error.h"
#include "qwick/hash.h"

/* Largest ContentInfo accepted as input for editing: one certificate table. */
#define QK_MAX_CONTENTINFO_SIZE (64u * 1024u * 1024u)

/* Decodes `der` as exactly one ContentInfo(SignedData) with at least one
 * SignerInfo. Strict: trailing bytes give QK_ERR_TRAILING_DATA, and the input
 * must be DER (re-encoding it reproduces it byte for byte), so that a later
 * re-encode after an edit cannot silently change bytes a signature covers.
 * `what` names the input in error details. */
qk_err qk_p7_decode_signed(qk_slice der, size_t max, const char *what, PKCS7 **out);

/* DER of a PKCS7 into a fresh qk_buf. */
qk_err qk_p7_encode(PKCS7 *p7, qk_buf *out);

/* Strict d2i_X509 of one DER certificate (size limit QK_MAX_CERT_SIZE). */
qk_err qk_x509_decode(qk_slice der, const char *what, X509 **out);

/* An ASN1_TYPE of type SEQUENCE holding the DER bytes as they are (the
 * bytes are copied, never re-encoded). */
qk_err qk_asn1_type_seq(const uint8_t *der, size_t len, ASN1_TYPE **out);

/* Adds one attribute with a single value, built by X509_ATTRIBUTE_create_by_OBJ
 * semantics (type V_ASN1_SEQUENCE: `data` is the complete DER; len -1:
 * `data` is an OpenSSL object of that type, copied). */
qk_err qk_attr_add(STACK_OF(X509_ATTRIBUTE) **sk, const char *oid, int type, const void *data,
                   int len);

/* alg(p[0..len)) into out (qk_hash_size(alg) bytes). */
qk_err qk_md(qk_hash_alg alg, const uint8_t *p, size_t len, uint8_t *out);

#endif
