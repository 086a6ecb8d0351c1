/* ASN.1 types of Microsoft's Authenticode (SPC) structures, as OpenSSL templates.
 * Shared by signature assembly (authenticode.c) and verification (verify.c). */
#ifndef QK_LIB_SPC_H
#define QK_LIB_SPC_H

#include <openssl/asn1.h>
#include <openssl/asn1t.h>
#include <openssl/x509.h>

#define QK_OID_SPC_INDIRECT_DATA "1.3.6.1.4.1.311.2.1.4"
#define QK_OID_SPC_PE_IMAGE_DATA "1.3.6.1.4.1.311.2.1.15"
#define QK_OID_SPC_SP_OPUS_INFO "1.3.6.1.4.1.311.2.1.12"
#define QK_OID_SPC_STATEMENT_TYPE "1.3.6.1.4.1.311.2.1.11"
#define QK_OID_SPC_INDIVIDUAL_SP_KEY_PURPOSE "1.3.6.1.4.1.311.2.1.21"
#define QK_OID_SPC_NESTED_SIGNATURE "1.3.6.1.4.1.311.2.4.1"
#define QK_OID_SPC_RFC3161_TIMESTAMP "1.3.6.1.4.1.311.3.3.1"
#define QK_OID_PKCS9_COUNTERSIGNATURE "1.2.840.113549.1.9.6"
/* Not Authenticode: where plain CMS carries an RFC 3161 token (RFC 3161
 * Appendix A, id-aa-timeStampToken), as an unsigned attribute. */
#define QK_OID_AA_TIMESTAMP_TOKEN "1.2.840.113549.1.9.16.2.14"

/* SpcString ::= CHOICE { unicode [0] IMPLICIT BMPString, ascii [1] IMPLICIT IA5String } */
typedef struct {
    int type;
    union {
        ASN1_BMPSTRING *unicode;
        ASN1_IA5STRING *ascii;
    } value;
} QK_SPC_STRING;
DECLARE_ASN1_FUNCTIONS(QK_SPC_STRING)

/* SpcSerializedObject ::= SEQUENCE { classId OCTET STRING, serializedData OCTET STRING } */
typedef struct {
    ASN1_OCTET_STRING *classId;
    ASN1_OCTET_STRING *serializedData;
} QK_SPC_SERIALIZED_OBJECT;
DECLARE_ASN1_FUNCTIONS(QK_SPC_SERIALIZED_OBJECT)

/* SpcLink ::= CHOICE { url [0] IMPLICIT IA5String, moniker [1] IMPLICIT
 * SpcSerializedObject, file [2] EXPLICIT SpcString } */
typedef struct {
    int type;
    union {
        ASN1_IA5STRING *url;
        QK_SPC_SERIALIZED_OBJECT *moniker;
        QK_SPC_STRING *file;
    } value;
} QK_SPC_LINK;
DECLARE_ASN1_FUNCTIONS(QK_SPC_LINK)

/* SpcPeImageData ::= SEQUENCE { flags BIT STRING, file [0] EXPLICIT SpcLink OPTIONAL } */
typedef struct {
    ASN1_BIT_STRING *flags;
    QK_SPC_LINK *file;
} QK_SPC_PE_IMAGE_DATA;
DECLARE_ASN1_FUNCTIONS(QK_SPC_PE_IMAGE_DATA)

/* SpcAttributeTypeAndOptionalValue ::= SEQUENCE { type OID, value ANY OPTIONAL } */
typedef struct {
    ASN1_OBJECT *type;
    ASN1_TYPE *value;
} QK_SPC_ATTRIBUTE;
DECLARE_ASN1_FUNCTIONS(QK_SPC_ATTRIBUTE)

/* DigestInfo ::= SEQUENCE { digestAlgorithm AlgorithmIdentifier, digest OCTET STRING } */
typedef struct {
    X509_ALGOR *digestAlgorithm;
    ASN1_OCTET_STRING *digest;
} QK_DIGEST_INFO;
DECLARE_ASN1_FUNCTIONS(QK_DIGEST_INFO)

/* SpcIndirectDataContent ::= SEQUENCE { data SpcAttributeTypeAndOptionalValue,
 * messageDigest DigestInfo } */
typedef struct {
    QK_SPC_ATTRIBUTE *data;
    QK_DIGEST_INFO *messageDigest;
} QK_SPC_INDIRECT_DATA;
DECLARE_ASN1_FUNCTIONS(QK_SPC_INDIRECT_DATA)

/* SpcSpOpusInfo ::= SEQUENCE { programName [0] EXPLICIT SpcString OPTIONAL,
 * moreInfo [1] EXPLICIT SpcLink OPTIONAL } */
typedef struct {
    QK_SPC_STRING *programName;
    QK_SPC_LINK *moreInfo;
} QK_SPC_SP_OPUS_INFO;
DECLARE_ASN1_FUNCTIONS(QK_SPC_SP_OPUS_INFO)

/* Strict decode: the whole of [p, p+len) must be exactly one value, else NULL. */
QK_SPC_INDIRECT_DATA *qk_spc_indirect_data_decode(const unsigned char *p, long len);

#endif
