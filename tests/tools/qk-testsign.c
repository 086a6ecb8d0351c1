/* qk-testsign: a library-driven signer for interop tests.
 *
 *   qk-testsign --key K --cert LEAF --chain PEM [--alg sha256] [--tsa URL]...
 *               [--append] [--format pe|cms] [--name TEXT] [--url URL] IN OUT
 *
 * PE: signs IN's Authenticode digest with the local key through qk_sign (the
 * same path the server takes, minus the network), optionally timestamps it,
 * and writes OUT. With --append the new signature is nested into IN's first
 * signature instead of replacing it. CMS: writes a detached DER SignedData of
 * any file to OUT. Exit status 0 on success, 1 on failure, 2 on usage errors. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "qwick/authenticode.h"
#include "qwick/ossl_signer.h"
#include "qwick/pe.h"
#include "qwick/tsp.h"
#include "tsa_client.h"

#define MAX_TSA_URLS 8

static void fail(const char *what, qk_err rc)
{
    const char *d = qk_error_detail();
    fprintf(stderr, "qk-testsign: %s: %s%s%s\n", what, qk_strerror(rc), d[0] ? ": " : "", d);
}

static int usage(void)
{
    fprintf(stderr, "usage: qk-testsign --key K --cert LEAF --chain PEM [--alg sha256] "
                    "[--tsa URL]... [--append] [--format pe|cms] [--name TEXT] [--url URL] "
                    "IN OUT\n");
    return 2;
}

/* Every certificate of a PEM file, as DER, appended to chain[*n]. */
static int load_certs(const char *path, qk_buf *chain, size_t *n, size_t max)
{
    FILE *f = fopen(path, "r");
    X509 *x;
    if (f == NULL) {
        perror(path);
        return -1;
    }
    int count = 0;
    while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
        unsigned char *der = NULL;
        int len = i2d_X509(x, &der);
        X509_free(x);
        if (len <= 0 || *n == max) {
            OPENSSL_free(der);
            fclose(f);
            fprintf(stderr, "qk-testsign: %s: too many or bad certificates\n", path);
            return -1;
        }
        /* Skip duplicates (a chain file may repeat the leaf). */
        int dup = 0;
        for (size_t i = 0; i < *n; i++)
            if (chain[i].len == (size_t)len && memcmp(chain[i].data, der, (size_t)len) == 0)
                dup = 1;
        if (!dup) {
            chain[*n].data = malloc((size_t)len);
            if (chain[*n].data == NULL)
                abort();
            memcpy(chain[*n].data, der, (size_t)len);
            chain[*n].len = (size_t)len;
            (*n)++;
        }
        OPENSSL_free(der);
        count++;
    }
    fclose(f);
    if (count == 0) {
        fprintf(stderr, "qk-testsign: %s: no PEM certificates\n", path);
        return -1;
    }
    return 0;
}

static int read_all(const char *path, qk_buf *out)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return -1;
    }
    size_t cap = 1 << 16;
    out->data = malloc(cap);
    out->len = 0;
    if (out->data == NULL)
        abort();
    size_t r;
    while ((r = fread(out->data + out->len, 1, cap - out->len, f)) > 0) {
        out->len += r;
        if (out->len == cap) {
            cap *= 2;
            if ((out->data = realloc(out->data, cap)) == NULL)
                abort();
        }
    }
    int err = ferror(f);
    fclose(f);
    return err ? -1 : 0;
}

static int write_all(const char *path, const qk_buf *b)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(b->data, 1, b->len, f) != b->len || fclose(f) != 0) {
        perror(path);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *key_path = NULL, *cert_path = NULL, *chain_path = NULL, *alg_name = "sha256";
    const char *format = "pe", *name = NULL, *url = NULL;
    const char *tsa_urls[MAX_TSA_URLS];
    size_t ntsa = 0;
    int append = 0, status = 1;
    static const struct option opts[] = {
        {"key", required_argument, NULL, 'k'},
        {"cert", required_argument, NULL, 'c'},
        {"chain", required_argument, NULL, 'C'},
        {"alg", required_argument, NULL, 'a'},
        {"tsa", required_argument, NULL, 't'},
        {"append", no_argument, NULL, 'A'},
        {"format", required_argument, NULL, 'f'},
        {"name", required_argument, NULL, 'n'},
        {"url", required_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'k':
            key_path = optarg;
            break;
        case 'c':
            cert_path = optarg;
            break;
        case 'C':
            chain_path = optarg;
            break;
        case 'a':
            alg_name = optarg;
            break;
        case 't':
            if (ntsa == MAX_TSA_URLS)
                return usage();
            tsa_urls[ntsa++] = optarg;
            break;
        case 'A':
            append = 1;
            break;
        case 'f':
            format = optarg;
            break;
        case 'n':
            name = optarg;
            break;
        case 'u':
            url = optarg;
            break;
        default:
            return usage();
        }
    }
    if (argc - optind != 2 || key_path == NULL || cert_path == NULL)
        return usage();
    const char *in = argv[optind], *out_path = argv[optind + 1];
    int cms = strcmp(format, "cms") == 0;
    if (!cms && strcmp(format, "pe") != 0)
        return usage();
    qk_hash_alg alg = qk_hash_from_name(alg_name);
    if (alg == QK_HASH_NONE) {
        fprintf(stderr, "qk-testsign: unknown digest '%s'\n", alg_name);
        return 2;
    }

    EVP_PKEY *key = NULL;
    qk_buf chain[QK_MAX_CHAIN_LEN] = {{NULL, 0}};
    qk_slice slices[QK_MAX_CHAIN_LEN];
    size_t nchain = 0;
    qk_pe *pe = NULL;
    qk_buf content = {NULL, 0}, sig = {NULL, 0}, stamped = {NULL, 0}, nested = {NULL, 0};
    tsa_client *tsa = NULL;
    qk_err rc;
    uint8_t digest[QK_HASH_MAX_SIZE];

    FILE *kf = fopen(key_path, "r");
    if (kf == NULL) {
        perror(key_path);
        goto out;
    }
    key = PEM_read_PrivateKey(kf, NULL, NULL, NULL);
    fclose(kf);
    if (key == NULL) {
        fprintf(stderr, "qk-testsign: %s: not a PEM private key\n", key_path);
        goto out;
    }
    if (load_certs(cert_path, chain, &nchain, 1) != 0 ||
        (chain_path && load_certs(chain_path, chain, &nchain, QK_MAX_CHAIN_LEN) != 0))
        goto out;
    for (size_t i = 0; i < nchain; i++)
        slices[i] = (qk_slice){chain[i].data, chain[i].len};

    qk_sign_request req = {.alg = alg, .program_name = name, .url = url};
    if (cms) {
        if (read_all(in, &content) != 0)
            goto out;
        const EVP_MD *md = EVP_get_digestbynid(qk_hash_nid(alg));
        if (md == NULL || EVP_Digest(content.data, content.len, digest, NULL, md, NULL) != 1) {
            fprintf(stderr, "qk-testsign: hashing %s failed\n", in);
            goto out;
        }
        req.format = QK_FORMAT_CMS_DETACHED;
    } else {
        if ((rc = qk_pe_open(in, &pe)) != QK_OK) {
            fail(in, rc);
            goto out;
        }
        if ((rc = qk_pe_signing_digest(pe, alg, digest)) != QK_OK) {
            fail("digest", rc);
            goto out;
        }
        req.format = QK_FORMAT_AUTHENTICODE_PE;
    }
    req.digest = (qk_slice){digest, qk_hash_size(alg)};
    if ((rc = qk_sign(&req, qk_evp_sign_fn, key, slices, nchain, &sig)) != QK_OK) {
        fail("sign", rc);
        goto out;
    }
    if (ntsa > 0) {
        if ((tsa = tsa_client_new(tsa_urls, ntsa)) == NULL) {
            fprintf(stderr, "qk-testsign: cannot start the TSA client\n");
            goto out;
        }
        tsa_client_set_retries(tsa, 3, 200);
        if ((rc = qk_timestamp((qk_slice){sig.data, sig.len}, alg, tsa_client_send, tsa,
                               &stamped)) != QK_OK) {
            fail("timestamp", rc);
            if (tsa_client_error(tsa)[0])
                fprintf(stderr, "qk-testsign: TSA: %s\n", tsa_client_error(tsa));
            goto out;
        }
        qk_buf_free(&sig);
        sig = stamped;
        stamped = (qk_buf){NULL, 0};
    }

    if (cms) {
        if (write_all(out_path, &sig) != 0)
            goto out;
        status = 0;
        goto out;
    }
    size_t nold = qk_pe_cert_count(pe);
    qk_slice *entries = calloc(nold + 1, sizeof(*entries));
    if (entries == NULL)
        abort();
    size_t n = 0;
    if (append) {
        if (nold == 0) {
            fprintf(stderr, "qk-testsign: --append: %s is not signed\n", in);
            free(entries);
            goto out;
        }
        if ((rc = qk_sig_nest(qk_pe_cert_get(pe, 0)->data, (qk_slice){sig.data, sig.len},
                              &nested)) != QK_OK) {
            fail("nest", rc);
            free(entries);
            goto out;
        }
        entries[n++] = (qk_slice){nested.data, nested.len};
        /* Other table entries stay as they are. */
        for (size_t i = 1; i < nold; i++)
            entries[n++] = qk_pe_cert_get(pe, i)->data;
    } else {
        entries[n++] = (qk_slice){sig.data, sig.len};
    }
    rc = qk_pe_write_signed(pe, entries, n, out_path);
    free(entries);
    if (rc != QK_OK) {
        fail(out_path, rc);
        goto out;
    }
    status = 0;
out:
    tsa_client_free(tsa);
    qk_pe_free(pe);
    qk_buf_free(&content);
    qk_buf_free(&sig);
    qk_buf_free(&stamped);
    qk_buf_free(&nested);
    for (size_t i = 0; i < QK_MAX_CHAIN_LEN; i++)
        qk_buf_free(&chain[i]);
    EVP_PKEY_free(key);
    return status;
}
