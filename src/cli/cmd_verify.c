/* qwick verify: checks the Authenticode signatures of PE files (or a detached
 * CMS signature of any file) and prints a report per file, as text or as one
 * JSON document. Exit status 0 only when every file is valid. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "cli.h"
#include "qwick/pe.h"
#include "qwick/verify.h"
#include "common/utf8.h"

/* Largest detached signature file read. */
#define MAX_SIG_FILE (16u * 1024u * 1024u)

typedef struct config {
    qk_verify_opts opts;
    qk_verify_ctx *ctx; /* the trust stores, loaded once for every file */
    qk_err ctx_rc;      /* why ctx is NULL: reported for each file, as before */
    char *ctx_err;
    int json;
    const char *detached; /* signature file, or NULL for PE mode */
} config;

static void help(void)
{
    printf("Usage: qwick verify [--ca PEM] [--tsa-ca PEM] [--json] FILE...\n"
           "       qwick verify [--ca PEM] [--tsa-ca PEM] [--json] --detached SIG FILE\n\n"
           "Verifies every Authenticode signature of each PE file (nested ones too):\n"
           "image digest, message digest, signature, timestamp and certificate chain.\n"
           "With --detached, verifies the detached CMS signature SIG (DER or PEM) of FILE.\n"
           "Exit status 0 if every file is valid, 1 if any is not, 2 on usage errors.\n\n"
           "Trust: the signer needs the codeSigning extended key usage (a CA that limits\n"
           "its EKU must include it); timestamps need a timeStamping TSA. With a valid\n"
           "timestamp, certificates are judged at the timestamp's time.\n\n"
           "  -c, --ca PEM        trusted roots for code signing (default: system store)\n"
           "  -t, --tsa-ca PEM    trusted roots for timestamps (default: --ca, else system)\n"
           "  -d, --detached SIG  verify the detached signature SIG of FILE\n"
           "  -j, --json          print one JSON document instead of text\n"
           "  -h, --help          show this help\n");
}

/* "<message>[: <detail>]" for a library error, heap. */
static char *err_text(qk_err rc)
{
    const char *d = qk_error_detail();
    const char *m = qk_strerror(rc);
    if (d == NULL || d[0] == '\0')
        return xstrdup(m);
    size_t n = strlen(m) + strlen(d) + 3;
    char *s = xmalloc(n);
    snprintf(s, n, "%s: %s", m, d);
    return s;
}

/* --- JSON --------------------------------------------------------------- */

static json_t *jcheck(json_t *j)
{
    if (j == NULL) {
        fputs("qwick: out of memory\n", stderr);
        abort();
    }
    return j;
}

static void jset(json_t *obj, const char *key, json_t *val)
{
    if (json_object_set_new(obj, key, jcheck(val)) != 0) {
        fputs("qwick: out of memory\n", stderr);
        abort();
    }
}

/* A JSON string; bytes that are not part of well-formed UTF-8 (file names,
 * hostile certificate names) become '?' so the document stays well-formed. */
static json_t *jstr(const char *s)
{
    if (s == NULL)
        return json_null();
    char *t = utf8_lossy(s);
    json_t *j = jcheck(json_string(t));
    free(t);
    return j;
}

static json_t *json_sig(const qk_sig_result *s)
{
    json_t *o = jcheck(json_object());
    jset(o, "index", json_integer(s->index));
    jset(o, "nested", json_boolean(s->nested));
    jset(o, "digest_algorithm",
         s->digest_alg == QK_HASH_NONE ? json_null() : jstr(qk_hash_name(s->digest_alg)));
    jset(o, "digest_ok", json_boolean(s->digest_ok));
    jset(o, "message_digest_ok", json_boolean(s->message_digest_ok));
    jset(o, "signature_ok", json_boolean(s->signature_ok));
    jset(o, "chain_ok", json_boolean(s->chain_ok));
    jset(o, "signer", jstr(s->signer));
    jset(o, "issuer", jstr(s->issuer));
    if (s->timestamp == NULL) {
        jset(o, "timestamp", json_null());
    } else {
        json_t *t = jcheck(json_object());
        jset(t, "ok", json_boolean(s->timestamp->ok));
        jset(t, "time", jstr(s->timestamp->time_str[0] ? s->timestamp->time_str : NULL));
        jset(t, "error", jstr(s->timestamp->error));
        jset(o, "timestamp", t);
    }
    jset(o, "error", jstr(s->error));
    return o;
}

/* --- text --------------------------------------------------------------- */

static const char *okf(int ok)
{
    return ok ? "ok" : "FAILED";
}

static void print_sig(const qk_sig_result *s, int detached)
{
    printf("  signature #%d%s\n", s->index, s->nested ? " (nested)" : "");
    printf("    signer:          %s\n", s->signer ? s->signer : "(unknown)");
    printf("    issuer:          %s\n", s->issuer ? s->issuer : "(unknown)");
    printf("    digest:          %s\n",
           s->digest_alg == QK_HASH_NONE ? "(unknown)" : qk_hash_name(s->digest_alg));
    if (s->timestamp == NULL)
        printf("    timestamp:       none\n");
    else
        printf("    timestamp:       %s\n",
               s->timestamp->time_str[0] ? s->timestamp->time_str : "(unreadable)");
    printf("    %s %s\n", detached ? "content digest: " : "image digest:   ", okf(s->digest_ok));
    printf("    message digest:  %s\n", okf(s->message_digest_ok));
    printf("    signature:       %s\n", okf(s->signature_ok));
    if (s->timestamp != NULL)
        printf("    timestamp check: %s\n", okf(s->timestamp->ok));
    printf("    chain:           %s\n", okf(s->chain_ok));
    if (s->error != NULL)
        printf("    error:           %s\n", s->error);
}

/* The reason a report is invalid: the file-level error, else the first
 * failing signature's. Heap, or NULL when valid. */
static char *report_reason(const qk_verify_report *r)
{
    if (r->valid)
        return NULL;
    if (r->error != NULL)
        return xstrdup(r->error);
    for (size_t i = 0; i < r->nsigs; i++) {
        const qk_sig_result *s = &r->sigs[i];
        if (s->error != NULL) {
            size_t n = strlen(s->error) + 32;
            char *t = xmalloc(n);
            snprintf(t, n, "signature #%d: %s", s->index, s->error);
            return t;
        }
    }
    return xstrdup("verification failed");
}

/* --- per file ------------------------------------------------------------ */

static qk_err read_sig_file(const char *path, qk_buf *out)
{
    FILE *f = NULL;
    struct stat st;
    qk_err rc = QK_ERR_IO;

    out->data = NULL;
    out->len = 0;
    if ((f = fopen(path, "rb")) == NULL || fstat(fileno(f), &st) != 0) {
        fprintf(stderr, "%s: %s: %s\n", qk_progname, path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode) || st.st_size <= 0 || (uint64_t)st.st_size > MAX_SIG_FILE) {
        fprintf(stderr, "%s: %s: not a signature file (empty, too large or not regular)\n",
                qk_progname, path);
        goto out;
    }
    out->data = xmalloc((size_t)st.st_size);
    out->len = (size_t)st.st_size;
    if (fread(out->data, 1, out->len, f) != out->len) {
        fprintf(stderr, "%s: %s: read error\n", qk_progname, path);
        qk_buf_free(out);
        goto out;
    }
    rc = QK_OK;
out:
    if (f != NULL)
        fclose(f);
    return rc;
}

/* Verifies one file; adds its JSON entry to `files` (JSON mode) or prints its
 * report. Returns 1 when valid. */
static int verify_one(const config *cfg, const char *path, const qk_buf *sig, json_t *files)
{
    qk_pe *pe = NULL;
    qk_verify_report *r = NULL;
    char *reason = NULL;
    qk_err rc;
    int valid = 0;

    if (cfg->ctx == NULL) {
        rc = cfg->ctx_rc;
    } else if (cfg->detached != NULL) {
        rc = qk_verify_detached_ctx((qk_slice){sig->data, sig->len}, path, cfg->ctx, &r);
    } else {
        rc = qk_pe_open(path, &pe);
        if (rc == QK_OK)
            rc = qk_verify_pe_ctx(pe, cfg->ctx, &r);
    }
    if (rc != QK_OK) {
        reason = cfg->ctx == NULL ? xstrdup(cfg->ctx_err) : err_text(rc);
        if (!cfg->json)
            fprintf(stderr, "%s: %s: %s\n", qk_progname, path, reason);
    } else {
        valid = r->valid;
        reason = report_reason(r);
    }

    if (cfg->json) {
        json_t *f = jcheck(json_object());
        json_t *sigs = jcheck(json_array());
        jset(f, "file", jstr(path));
        jset(f, "valid", json_boolean(valid));
        jset(f, "error", jstr(reason));
        for (size_t i = 0; r != NULL && i < r->nsigs; i++)
            if (json_array_append_new(sigs, json_sig(&r->sigs[i])) != 0)
                jcheck(NULL);
        jset(f, "signatures", sigs);
        if (json_array_append_new(files, f) != 0)
            jcheck(NULL);
    } else if (r != NULL) {
        printf("%s\n", path);
        for (size_t i = 0; i < r->nsigs; i++)
            print_sig(&r->sigs[i], cfg->detached != NULL);
        if (valid)
            printf("  verdict: valid\n");
        else
            printf("  verdict: INVALID (%s)\n", reason);
    }
    free(reason);
    qk_verify_report_free(r);
    qk_pe_free(pe);
    return valid;
}

int cmd_verify(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"ca", required_argument, NULL, 'c'},       {"tsa-ca", required_argument, NULL, 't'},
        {"detached", required_argument, NULL, 'd'}, {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    config cfg = {0};
    qk_buf sig = {0};
    json_t *root = NULL, *files = NULL;
    int c, status = QK_EXIT_OK;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:c:t:d:jh", lopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            cfg.opts.ca_file = optarg;
            break;
        case 't':
            cfg.opts.tsa_ca_file = optarg;
            break;
        case 'd':
            cfg.detached = optarg;
            break;
        case 'j':
            cfg.json = 1;
            break;
        case 'h':
            help();
            return QK_EXIT_OK;
        case ':':
            return cli_usage_error("verify", "option '%s' requires an argument", argv[optind - 1]);
        default:
            return cli_usage_error("verify", "unrecognized option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return cli_usage_error("verify", "no files given");
    if (cfg.detached != NULL && argc - optind != 1)
        return cli_usage_error("verify", "--detached takes exactly one FILE");

    if (cfg.json) {
        root = jcheck(json_object());
        files = jcheck(json_array());
        jset(root, "files", files);
    }
    if (cfg.detached != NULL && read_sig_file(cfg.detached, &sig) != QK_OK) {
        /* The signature itself is unusable: report the file as failed. */
        status = QK_EXIT_FAIL;
        if (cfg.json) {
            json_t *f = jcheck(json_object());
            jset(f, "file", jstr(argv[optind]));
            jset(f, "valid", json_false());
            jset(f, "error", jstr("cannot read the detached signature"));
            jset(f, "signatures", json_array());
            if (json_array_append_new(files, f) != 0)
                jcheck(NULL);
        }
    } else {
        if ((cfg.ctx_rc = qk_verify_ctx_new(&cfg.opts, &cfg.ctx)) != QK_OK)
            cfg.ctx_err = err_text(cfg.ctx_rc);
        for (int i = optind; i < argc; i++)
            if (!verify_one(&cfg, argv[i], &sig, files))
                status = QK_EXIT_FAIL;
        qk_verify_ctx_free(cfg.ctx);
        free(cfg.ctx_err);
    }
    if (cfg.json) {
        if (json_dumpf(root, stdout, JSON_INDENT(2)) != 0 || fputc('\n', stdout) == EOF)
            status = QK_EXIT_FAIL;
        json_decref(root);
    }
    qk_buf_free(&sig);
    if (fflush(stdout) != 0)
        status = QK_EXIT_FAIL;
    return status;
}
