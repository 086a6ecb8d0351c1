/* Certificate profile import and description (see profile.h). */
#include "signer/profile.h"

#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509v3.h>
#include <sodium.h>

#include "signer/azure/azure_cfg.h"
#include "common/b64.h"
#include "qwick/authenticode.h"
#include "core/util.h"

#define PROFILE_MAX_FILE (256u * 1024u)
#define PROFILE_MAX_PASSWORD 1024

int profile_name_ok(const char *name)
{
    size_t n = name != NULL ? strlen(name) : 0;
    if (n == 0 || n > PROFILE_MAX_NAME || name[0] == '.' || name[0] == '-')
        return 0;
    return strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

int profile_list_ok(const char *list)
{
    size_t n = 0;
    if (list == NULL || list[0] == '\0' || strlen(list) > PROFILE_MAX_LIST * 65)
        return 0;
    for (const char *p = list;;) {
        size_t len = strcspn(p, ",");
        char name[65];
        if (len == 0 || len >= sizeof(name) || ++n > PROFILE_MAX_LIST)
            return 0;
        memcpy(name, p, len);
        name[len] = '\0';
        if (!profile_name_ok(name))
            return 0;
        if (p[len] == '\0')
            return 1;
        p += len + 1;
    }
}

/* The bytes a config names: from a file (`file_key`, when files are allowed)
 * or inline (`inline_key`, base64 when `b64`). *present = 0 when neither. */
static qk_err read_material(json_t *cfg, const char *base_dir, const char *file_key,
                            const char *inline_key, int b64, qk_buf *out, int *present)
{
    json_t *f = json_object_get(cfg, file_key), *v = json_object_get(cfg, inline_key);
    out->data = NULL;
    out->len = 0;
    *present = 0;
    if (f != NULL && v != NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "give %s or %s, not both", file_key, inline_key);
    if (f != NULL) {
        if (base_dir == NULL)
            return qk_fail(QK_ERR_INVALID_ARG, "%s: files cannot be named here, give %s", file_key,
                           inline_key);
        const char *name = json_string_value(f);
        if (name == NULL || name[0] == '\0')
            return qk_fail(QK_ERR_INVALID_ARG, "%s must be a file name", file_key);
        char *full = name[0] == '/' ? xstrdup(name) : path_join(base_dir, name);
        qk_err rc = file_read_all(full, PROFILE_MAX_FILE, out);
        free(full);
        if (rc != QK_OK)
            return qk_fail(rc, "%s: %s", file_key, qk_error_detail());
        *present = 1;
        return QK_OK;
    }
    if (v == NULL)
        return QK_OK;
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (s == NULL || n == 0 || n > PROFILE_MAX_FILE * 2)
        return qk_fail(QK_ERR_INVALID_ARG, "%s must be a non-empty string", inline_key);
    if (b64) {
        out->data = xmalloc(n);
        if (b64_decode(s, n, out->data, n, &out->len) != 0) {
            qk_buf_free(out);
            return qk_fail(QK_ERR_INVALID_ARG, "%s is not canonical base64", inline_key);
        }
    } else {
        out->data = (uint8_t *)xstrndup(s, n);
        out->len = n;
    }
    *present = 1;
    return QK_OK;
}

static int key_password_cb(char *buf, int size, int rwflag, void *u)
{
    (void)rwflag;
    const char *pw = u;
    if (pw == NULL)
        return -1; /* encrypted but no password given: fail, never prompt */
    size_t n = strlen(pw);
    if (n > (size_t)size)
        return -1;
    memcpy(buf, pw, n);
    return (int)n;
}

static qk_err parse_key(qk_buf pem, const char *password, EVP_PKEY **out)
{
    BIO *bio = BIO_new_mem_buf(pem.data, (int)pem.len);
    *out = bio ? PEM_read_bio_PrivateKey(bio, NULL, key_password_cb, (void *)password) : NULL;
    BIO_free(bio);
    if (*out != NULL)
        return QK_OK;
    if (password == NULL)
        return qk_fail_ossl(QK_ERR_BAD_DER,
                            "key: not a PEM private key (or encrypted: give \"password\")");
    return qk_fail_ossl(QK_ERR_BAD_DER, "key: cannot read the PEM private key (wrong password?)");
}

static qk_err parse_certs_pem(qk_buf pem, STACK_OF(X509) *certs)
{
    BIO *bio = BIO_new_mem_buf(pem.data, (int)pem.len);
    X509 *x;
    int n = 0;
    while (bio != NULL && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        sk_X509_push(certs, x);
        n++;
    }
    ERR_clear_error();
    BIO_free(bio);
    return n > 0 ? QK_OK : qk_fail(QK_ERR_BAD_DER, "chain: no PEM certificate found");
}

static qk_err parse_pkcs12(qk_buf der, const char *password, EVP_PKEY **key, STACK_OF(X509) *certs)
{
    const unsigned char *p = der.data;
    PKCS12 *p12 = d2i_PKCS12(NULL, &p, (long)der.len);
    X509 *cert = NULL;
    STACK_OF(X509) *ca = NULL;
    qk_err rc = QK_OK;
    *key = NULL;
    if (p12 == NULL || p != der.data + der.len) {
        PKCS12_free(p12);
        return qk_fail_ossl(QK_ERR_BAD_DER, "pkcs12: not a DER PKCS#12 file");
    }
    if (!PKCS12_parse(p12, password != NULL ? password : "", key, &cert, &ca) || *key == NULL)
        rc = qk_fail_ossl(QK_ERR_BAD_DER, "pkcs12: cannot open (wrong password?)");
    if (cert != NULL)
        sk_X509_push(certs, cert);
    while (ca != NULL && sk_X509_num(ca) > 0)
        sk_X509_push(certs, sk_X509_shift(ca));
    sk_X509_free(ca);
    PKCS12_free(p12);
    return rc;
}

/* Leaf first (the certificate of `key`), then each issuer in turn; what is
 * left over (unrelated certificates) is refused rather than shipped. */
static qk_err order_chain(EVP_PKEY *key, STACK_OF(X509) *certs, qk_buf *out)
{
    int n = sk_X509_num(certs), leaf = -1;
    X509 *ordered[QK_MAX_CHAIN_LEN];
    int used[QK_MAX_CHAIN_LEN] = {0}, count = 0;
    if (n > QK_MAX_CHAIN_LEN)
        return qk_fail(QK_ERR_TOO_LARGE, "chain: more than %d certificates", QK_MAX_CHAIN_LEN);
    for (int i = 0; i < n && leaf < 0; i++)
        if (X509_check_private_key(sk_X509_value(certs, i), key) == 1)
            leaf = i;
    ERR_clear_error();
    if (leaf < 0)
        return qk_fail(QK_ERR_INVALID_ARG, "chain: no certificate matches the private key");
    ordered[count++] = sk_X509_value(certs, leaf);
    used[leaf] = 1;
    for (;;) {
        X509 *cur = ordered[count - 1];
        if (X509_check_issued(cur, cur) == X509_V_OK)
            break; /* self-signed root */
        int next = -1;
        for (int i = 0; i < n && next < 0; i++)
            if (!used[i] && X509_check_issued(sk_X509_value(certs, i), cur) == X509_V_OK)
                next = i;
        if (next < 0)
            break;
        used[next] = 1;
        ordered[count++] = sk_X509_value(certs, next);
    }
    for (int i = 0; i < n; i++) {
        int dup = 0; /* a certificate given twice (in the PKCS#12 and the chain file) */
        for (int k = 0; k < count && !dup; k++)
            dup = X509_cmp(sk_X509_value(certs, i), ordered[k]) == 0;
        if (!used[i] && !dup)
            return qk_fail(QK_ERR_INVALID_ARG,
                           "chain: certificate %d is not part of the leaf's issuer chain", i + 1);
    }
    uint32_t flags = X509_get_extension_flags(ordered[0]);
    if ((flags & EXFLAG_XKUSAGE) == 0 ||
        (X509_get_extended_key_usage(ordered[0]) & XKU_CODE_SIGN) == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "chain: the leaf certificate does not allow code "
                                           "signing (extendedKeyUsage codeSigning)");
    if (X509_cmp_time(X509_get0_notAfter(ordered[0]), NULL) <= 0)
        return qk_fail(QK_ERR_INVALID_ARG, "chain: the leaf certificate has expired");
    if (X509_cmp_time(X509_get0_notBefore(ordered[0]), NULL) > 0)
        return qk_fail(QK_ERR_INVALID_ARG, "chain: the leaf certificate is not valid yet");
    out->data = NULL;
    out->len = 0;
    for (int i = 0; i < count; i++) {
        unsigned char *der = NULL;
        int len = i2d_X509(ordered[i], &der);
        if (len <= 0)
            return qk_fail_ossl(QK_ERR_BAD_DER, "chain: encode certificate");
        out->data = xrealloc(out->data, out->len + (size_t)len);
        memcpy(out->data + out->len, der, (size_t)len);
        out->len += (size_t)len;
        OPENSSL_free(der);
    }
    return QK_OK;
}

static qk_err key_to_pem(EVP_PKEY *key, qk_buf *out)
{
    BIO *bio = BIO_new(BIO_s_secmem());
    char *p = NULL;
    if (bio == NULL || !PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL)) {
        BIO_free(bio);
        return qk_fail_ossl(QK_ERR_CRYPTO, "encode the private key");
    }
    long n = BIO_get_mem_data(bio, &p);
    out->data = xmalloc((size_t)n);
    memcpy(out->data, p, (size_t)n);
    out->len = (size_t)n;
    BIO_free(bio); /* secure memory BIO: cleansed on free */
    return QK_OK;
}

static qk_err import_local(json_t *cfg, const char *base_dir, profile_import *out)
{
    static const char *const keys[] = {"backend", "key",          "keyPem",   "chain", "chainPem",
                                       "pkcs12",  "pkcs12Base64", "password", NULL};
    qk_buf key_pem = {NULL, 0}, chain_pem = {NULL, 0}, p12 = {NULL, 0};
    EVP_PKEY *key = NULL;
    STACK_OF(X509) *certs = sk_X509_new_null();
    int has_key = 0, has_chain = 0, has_p12 = 0;
    const char *k, *password = NULL;
    json_t *v;
    qk_err rc = QK_OK;

    json_object_foreach(cfg, k, v)
    {
        size_t i;
        for (i = 0; keys[i] != NULL && strcmp(keys[i], k) != 0; i++)
            ;
        if (keys[i] == NULL) {
            rc = qk_fail(QK_ERR_INVALID_ARG, "local profile: unknown key '%s'", k);
            goto out;
        }
    }
    v = json_object_get(cfg, "password");
    if (v != NULL && ((password = json_string_value(v)) == NULL ||
                      json_string_length(v) > PROFILE_MAX_PASSWORD)) {
        rc = qk_fail(QK_ERR_INVALID_ARG, "password must be a string");
        goto out;
    }
    if ((rc = read_material(cfg, base_dir, "key", "keyPem", 0, &key_pem, &has_key)) != QK_OK ||
        (rc = read_material(cfg, base_dir, "pkcs12", "pkcs12Base64", 1, &p12, &has_p12)) != QK_OK ||
        (rc = read_material(cfg, base_dir, "chain", "chainPem", 0, &chain_pem, &has_chain)) !=
            QK_OK)
        goto out;
    if (has_key == has_p12) {
        rc = qk_fail(QK_ERR_INVALID_ARG, "local profile needs exactly one of key or pkcs12");
        goto out;
    }
    if (has_key && !has_chain) {
        rc = qk_fail(QK_ERR_INVALID_ARG, "local profile: chain is required with key");
        goto out;
    }
    if (has_key)
        rc = parse_key(key_pem, password, &key);
    else
        rc = parse_pkcs12(p12, password, &key, certs);
    if (rc != QK_OK || (has_chain && (rc = parse_certs_pem(chain_pem, certs)) != QK_OK) ||
        (rc = order_chain(key, certs, &out->chain_der)) != QK_OK ||
        (rc = key_to_pem(key, &out->secret)) != QK_OK)
        goto out;
    out->backend = "local";
    out->key_kind = "local-pem";
    out->config = xstrdup("{\"backend\":\"local\"}");
out:
    EVP_PKEY_free(key);
    sk_X509_pop_free(certs, X509_free);
    if (key_pem.data != NULL)
        sodium_memzero(key_pem.data, key_pem.len);
    if (p12.data != NULL)
        sodium_memzero(p12.data, p12.len);
    qk_buf_free(&key_pem);
    qk_buf_free(&p12);
    qk_buf_free(&chain_pem);
    return rc;
}

static qk_err import_azure(json_t *cfg, const char *base_dir, profile_import *out)
{
    json_t *pub = NULL, *secrets = NULL, *doc = NULL;
    const char *k;
    json_t *v;
    qk_err rc;
    json_object_foreach(cfg, k, v)
    {
        if (strcmp(k, "backend") != 0 && strcmp(k, "azure") != 0)
            return qk_fail(QK_ERR_INVALID_ARG, "azure profile: unknown key '%s'", k);
    }
    if (json_object_get(cfg, "azure") == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "azure profile: \"azure\" is required");
    if ((rc = azure_cfg_import(json_object_get(cfg, "azure"), base_dir, &pub, &secrets)) != QK_OK)
        return rc;
    doc = json_pack("{s:s, s:o}", "backend", "azure", "azure", pub);
    char *pub_text = doc != NULL ? json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    char *sec_text = json_dumps(secrets, JSON_COMPACT);
    if (pub_text == NULL || sec_text == NULL) {
        free(pub_text);
        free(sec_text);
        rc = qk_fail(QK_ERR_NOMEM, "azure profile config");
    } else {
        out->backend = "azure";
        out->key_kind = "azure-graph";
        out->config = pub_text;
        out->secret.data = (uint8_t *)sec_text;
        out->secret.len = strlen(sec_text);
    }
    json_decref(doc);
    profile_json_wipe(secrets);
    json_decref(secrets);
    return rc;
}

static const char *const known_formats[] = {"authenticode-pe", "cms", "raw", NULL};

/* "formats": a non-empty list of distinct known formats, as a sorted array. */
static qk_err parse_formats(json_t *v, json_t **out)
{
    size_t i;
    json_t *f;
    *out = NULL;
    if (!json_is_array(v) || json_array_size(v) == 0)
        return qk_fail(QK_ERR_INVALID_ARG, "formats: a non-empty array of \"authenticode-pe\", "
                                           "\"cms\", \"raw\"");
    json_array_foreach(v, i, f)
    {
        const char *s = json_string_value(f);
        size_t k, j;
        for (k = 0; s != NULL && known_formats[k] != NULL && strcmp(known_formats[k], s) != 0; k++)
            ;
        if (s == NULL || known_formats[k] == NULL)
            return qk_fail(QK_ERR_INVALID_ARG, "formats: unknown format '%.32s'", s ? s : "?");
        for (j = 0; j < i; j++)
            if (strcmp(json_string_value(json_array_get(v, j)), s) == 0)
                return qk_fail(QK_ERR_INVALID_ARG, "formats: '%s' listed twice", s);
    }
    *out = json_array();
    for (size_t k = 0; known_formats[k] != NULL; k++) /* canonical order */
        json_array_foreach(v, i, f) if (strcmp(json_string_value(f), known_formats[k]) == 0)
            json_array_append_new(*out, json_string(known_formats[k]));
    return QK_OK;
}

/* The public config with the settings common to all backends ("formats",
 * "asyncOnly"), which the backend importers do not know. */
static qk_err add_common(profile_import *out, json_t *formats, json_t *async_only,
                         json_t *callback_url)
{
    json_t *doc = json_loads(out->config, 0, NULL);
    if (!json_is_object(doc)) {
        json_decref(doc);
        return qk_fail(QK_ERR_INVALID_ARG, "profile config");
    }
    if (formats != NULL)
        json_object_set(doc, "formats", formats);
    if (async_only != NULL)
        json_object_set(doc, "asyncOnly", async_only);
    if (callback_url != NULL)
        json_object_set(doc, "callbackUrl", callback_url);
    char *text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(doc);
    if (text == NULL)
        return qk_fail(QK_ERR_NOMEM, "profile config");
    free(out->config);
    out->config = text;
    return QK_OK;
}

qk_err profile_import_json(json_t *cfg, const char *base_dir, profile_import *out)
{
    json_t *formats = NULL, *rest = NULL;
    memset(out, 0, sizeof(*out));
    if (!json_is_object(cfg))
        return qk_fail(QK_ERR_INVALID_ARG, "profile config must be a JSON object");
    const char *backend = json_string_value(json_object_get(cfg, "backend"));
    qk_err rc;
    if (backend == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "profile config: \"backend\" is required "
                                           "(\"local\" or \"azure\")");
    if (json_object_get(cfg, "formats") != NULL &&
        (rc = parse_formats(json_object_get(cfg, "formats"), &formats)) != QK_OK)
        return rc;
    json_t *async_only = json_object_get(cfg, "asyncOnly");
    if (async_only != NULL && !json_is_boolean(async_only))
        return qk_fail(QK_ERR_INVALID_ARG, "asyncOnly: true or false");
    json_t *callback_url = json_object_get(cfg, "callbackUrl");
    if (callback_url != NULL &&
        (!json_is_string(callback_url) || json_string_length(callback_url) == 0 ||
         json_string_length(callback_url) > 2048 ||
         (strncmp(json_string_value(callback_url), "http://", 7) != 0 &&
          strncmp(json_string_value(callback_url), "https://", 8) != 0)))
        return qk_fail(QK_ERR_INVALID_ARG, "callbackUrl: an http or https URL of at most 2048 "
                                           "characters");
    /* The backends see the config without the settings common to all. */
    rest = json_copy(cfg);
    json_object_del(rest, "formats");
    json_object_del(rest, "asyncOnly");
    json_object_del(rest, "callbackUrl");
    if (strcmp(backend, "local") == 0)
        rc = import_local(rest, base_dir, out);
    else if (strcmp(backend, "azure") == 0)
        rc = import_azure(rest, base_dir, out);
    else
        rc = qk_fail(QK_ERR_INVALID_ARG,
                     "profile config: unknown backend '%.32s' "
                     "(\"local\" or \"azure\")",
                     backend);
    if (rc == QK_OK && (formats != NULL || async_only != NULL || callback_url != NULL))
        rc = add_common(out, formats, async_only, callback_url);
    if (rc != QK_OK)
        profile_import_clear(out);
    json_decref(formats);
    json_decref(rest); /* a shallow copy: the secrets it shares are wiped with cfg */
    return rc;
}

int profile_format_allowed(const store_profile *p, const char *format)
{
    json_t *cfg = p->config != NULL ? json_loads(p->config, 0, NULL) : NULL;
    json_t *formats = json_object_get(cfg, "formats");
    int ok = 0;
    if (json_is_array(formats)) {
        size_t i;
        json_t *f;
        json_array_foreach(formats, i, f) if (json_string_value(f) != NULL &&
                                              strcmp(json_string_value(f), format) == 0) ok = 1;
    } else {
        ok = strcmp(format, "authenticode-pe") == 0 || strcmp(format, "cms") == 0;
    }
    json_decref(cfg);
    return ok;
}

void profile_json_wipe(json_t *j)
{
    const char *k;
    json_t *v;
    size_t i;
    if (json_is_string(j)) {
        sodium_memzero((char *)json_string_value(j), json_string_length(j));
    } else if (json_is_object(j)) {
        json_object_foreach(j, k, v) profile_json_wipe(v);
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v) profile_json_wipe(v);
    }
}

qk_err profile_import_file(const char *path, profile_import *out)
{
    qk_buf text = {NULL, 0};
    json_error_t jerr;
    json_t *cfg = NULL;
    qk_err rc;
    memset(out, 0, sizeof(*out));
    if ((rc = file_read_all(path, PROFILE_MAX_CONFIG, &text)) != QK_OK)
        return rc;
    cfg = json_loadb((const char *)text.data, text.len, JSON_REJECT_DUPLICATES, &jerr);
    sodium_memzero(text.data, text.len);
    qk_buf_free(&text);
    if (cfg == NULL)
        return qk_fail(QK_ERR_INVALID_ARG, "%s: line %d: %s", path, jerr.line, jerr.text);
    char *copy = xstrdup(path);
    rc = profile_import_json(cfg, dirname(copy), out);
    free(copy);
    profile_json_wipe(cfg);
    json_decref(cfg);
    return rc;
}

void profile_import_clear(profile_import *p)
{
    if (p == NULL)
        return;
    if (p->secret.data != NULL)
        sodium_memzero(p->secret.data, p->secret.len);
    qk_buf_free(&p->secret);
    qk_buf_free(&p->chain_der);
    free(p->config);
    memset(p, 0, sizeof(*p));
}

qk_err profile_store(qk_store *st, const qk_keyring *kr, int64_t org, const char *name,
                     const profile_import *imp, const store_audit *audit, int64_t *id)
{
    char aad[SECRETS_AAD_MAX];
    qk_buf sealed = {NULL, 0};
    int64_t key_id = 0;
    qk_err rc;
    *id = 0;
    if (!profile_name_ok(name))
        return qk_fail(QK_ERR_INVALID_ARG, "profile name: 1 to %d of A-Z a-z 0-9 . _ -",
                       PROFILE_MAX_NAME);
    secrets_aad_signing_key(aad, org);
    if ((rc = secrets_seal(kr, (qk_slice){imp->secret.data, imp->secret.len}, aad, &sealed)) ==
            QK_OK &&
        (rc = STORE_CALL(st, signing_key_create, org, imp->key_kind,
                         (qk_slice){sealed.data, sealed.len}, &key_id)) == QK_OK)
        rc =
            STORE_CALL(st, profile_create, org, name, imp->backend, key_id,
                       (qk_slice){imp->chain_der.data, imp->chain_der.len}, imp->config, audit, id);
    qk_buf_free(&sealed);
    return rc;
}

static json_t *time_json(int64_t t)
{
    char buf[32];
    struct tm tm;
    time_t tt = (time_t)t;
    if (t == 0 || gmtime_r(&tt, &tm) == NULL)
        return json_null();
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(buf);
}

static json_t *asn1_time_json(const ASN1_TIME *t)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(t, &tm) != 1)
        return json_null();
    return time_json((int64_t)timegm(&tm));
}

static json_t *name_json(const X509_NAME *n)
{
    char *s = X509_NAME_oneline(n, NULL, 0);
    json_t *j = s != NULL ? json_string(s) : json_null();
    OPENSSL_free(s);
    return j;
}

/* Subject, issuer, validity and SHA-256 fingerprint of the chain's leaf. */
static json_t *leaf_json(const qk_buf *chain)
{
    const unsigned char *p = chain->data;
    X509 *x = chain->len ? d2i_X509(NULL, &p, (long)chain->len) : NULL;
    unsigned char md[32];
    unsigned int mdlen = 0;
    char hex[65];
    if (x == NULL) {
        ERR_clear_error();
        return json_null();
    }
    X509_digest(x, EVP_sha256(), md, &mdlen);
    hex_encode(md, mdlen, hex);
    json_t *j = json_pack(
        "{s:o, s:o, s:o, s:o, s:s}", "subject", name_json(X509_get_subject_name(x)), "issuer",
        name_json(X509_get_issuer_name(x)), "notBefore", asn1_time_json(X509_get0_notBefore(x)),
        "notAfter", asn1_time_json(X509_get0_notAfter(x)), "sha256", hex);
    X509_free(x);
    return j;
}

json_t *profile_json(const store_profile *p)
{
    json_t *cfg = NULL;
    if (p->config != NULL)
        cfg = json_loads(p->config, 0, NULL);
    if (cfg == NULL)
        cfg = json_pack("{s:s}", "backend", p->backend ? p->backend : "");
    json_t *j =
        json_pack("{s:s, s:s, s:s, s:b, s:o, s:o, s:o, s:o}", "name", p->name ? p->name : "",
                  "backend", p->backend ? p->backend : "", "status",
                  p->disabled_at ? "disabled" : "active", "timestampRequired",
                  profile_requires_timestamp(p), "createdAt", time_json(p->created_at), "updatedAt",
                  time_json(p->updated_at), "disabledAt", time_json(p->disabled_at), "config", cfg);
    if (j != NULL && p->chain_der.len > 0)
        json_object_set_new(j, "certificate", leaf_json(&p->chain_der));
    return j;
}

int profile_async_only(const store_profile *p)
{
    /* Every signature asks: the config (written by jansson, which escapes no
     * letter) is parsed only when it names one of the two keys. */
    if (p->config == NULL || (strstr(p->config, "\"asyncOnly\"") == NULL &&
                              strstr(p->config, "\"callbackUrl\"") == NULL))
        return 0;
    json_t *cfg = json_loads(p->config, 0, NULL);
    /* A profile that calls back is asynchronous: the callback is the answer. */
    int yes = json_is_true(json_object_get(cfg, "asyncOnly")) ||
              json_is_string(json_object_get(cfg, "callbackUrl"));
    json_decref(cfg);
    return yes;
}

char *profile_callback_url(const store_profile *p)
{
    json_t *cfg = p->config != NULL ? json_loads(p->config, 0, NULL) : NULL;
    const char *url = json_string_value(json_object_get(cfg, "callbackUrl"));
    char *out = url != NULL ? strdup(url) : NULL;
    json_decref(cfg);
    return out;
}

int profile_requires_timestamp(const store_profile *p)
{
    return p->backend != NULL && strcmp(p->backend, "azure") == 0;
}
