/* qwick log verify | inclusion: checking the server's transparency log from
 * outside (docs/transparency.md).
 *
 * verify: fetch the signed checkpoint, check it under the pinned log key,
 * prove it consistent with the checkpoint saved by the last run, save it.
 * A log that shrank, forked (a restored older database that then took new
 * entries) or is signed by another key fails with the problem named.
 *
 * inclusion FILE...: find each signed file's entry (by the SHA-256 of its
 * signature value, which timestamping leaves unchanged), and prove the entry
 * is in the tree of the current checkpoint. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/objects.h>
#include <openssl/pkcs7.h>
#include <openssl/sha.h>

#include "cli.h"
#include "client.h"
#include "config.h"
#include "qwick/hash.h"
#include "qwick/pe.h"
#include "common/b64.h"
#include "common/file_atomic.h"
#include "common/tlog.h"

#define STATE_MAX (64 * 1024)

enum { OPT_SERVER = 256, OPT_API_KEY, OPT_CACERT, OPT_LOG_KEY, OPT_STATE };

typedef struct log_opts {
    cli_config cfg;
    const char *state; /* --state FILE, or NULL for the default */
    client *c;
    char *key_name;
    uint8_t pub[32];
    int pinned_now; /* the key was taken from the server on this run (first use) */
} log_opts;

static void help(void)
{
    printf("Usage: qwick log verify [OPTIONS]\n"
           "       qwick log inclusion [OPTIONS] FILE...\n\n"
           "verify     fetch the server's signed checkpoint of this org's log, check its\n"
           "           signature under the log key, prove it consistent with the checkpoint\n"
           "           saved by the previous run (--state), save it, print size and root.\n"
           "           Fails when the log shrank, forked or is signed by another key.\n"
           "inclusion  show that each signed FILE (a PE file, or a detached .p7s) has its\n"
           "           signature in the log: entry, inclusion proof, checkpoint signature.\n\n"
           "Options (same server settings as qwick sign):\n"
           "  --server URL       qwickd base URL (QWICK_SERVER, config \"server\")\n"
           "  --api-key KEY      API key, any role (QWICK_API_KEY, config \"api_key\")\n"
           "  --cacert FILE      CA bundle for the server's TLS certificate (QWICK_CACERT)\n"
           "  --log-key VKEY     the log's verifier key, as `qwickd init --json` prints it\n"
           "                     (QWICK_LOG_KEY, config \"log_key\"). Without one, the key\n"
           "                     saved in the state file is used; on the very first run the\n"
           "                     server's key is pinned there (trust on first use, said so).\n"
           "  --state FILE       where the last checkpoint is kept (default\n"
           "                     $XDG_STATE_HOME/qwick/log-<server>.json)\n"
           "  -h, --help         this help\n\n"
           "Exit status: 0 consistent / included, 1 a check failed, 2 usage error.\n");
}

/* ---- state file -------------------------------------------------------- */

static char *default_state_path(const char *server)
{
    const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    char *base, *name = xstrdup(server);
    for (char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '-'))
            *p = '_';
    if (xdg != NULL && xdg[0] == '/')
        base = xasprintf("%s/qwick", xdg);
    else if (home != NULL && home[0] != '\0')
        base = xasprintf("%s/.local/state/qwick", home);
    else
        base = xstrdup(".");
    char *path = xasprintf("%s/log-%s.json", base, name);
    free(base);
    free(name);
    return path;
}

static int mkdir_parents(const char *path)
{
    char *dir = xstrdup(path);
    int rc = 0;
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            rc = -1;
        *p = '/';
    }
    free(dir);
    return rc;
}

/* The saved state: {"server", "logKey", "checkpoint"}; *j NULL when absent. */
static int state_load(const char *path, json_t **j)
{
    json_error_t jerr;
    struct stat st;
    *j = NULL;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        cli_msg("%s: %s", path, strerror(errno));
        return -1;
    }
    if (st.st_size > STATE_MAX) {
        cli_msg("%s: state file larger than %d bytes", path, STATE_MAX);
        return -1;
    }
    *j = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (*j == NULL || !json_is_object(*j)) {
        cli_msg("%s: not a qwick log state file (%s)", path, jerr.text);
        json_decref(*j);
        *j = NULL;
        return -1;
    }
    return 0;
}

static int state_save(const char *path, const log_opts *o, const char *note)
{
    char *vkey = tlog_vkey_format(o->key_name, o->pub), *tmp = NULL, *err = NULL;
    json_t *j =
        json_pack("{s:s,s:s,s:s}", "server", o->cfg.server, "logKey", vkey, "checkpoint", note);
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    int rc = -1;
    if (mkdir_parents(path) != 0)
        cli_msg("%s: cannot create its directory: %s", path, strerror(errno));
    else if (afile_write_temp(path, text, strlen(text), 0600, &tmp, &err) != 0 ||
             afile_commit(tmp, path, &err) != 0)
        cli_msg("%s: %s", path, err);
    else
        rc = 0;
    free(err);
    free(tmp);
    free(text);
    json_decref(j);
    free(vkey);
    return rc;
}

/* ---- the log key ------------------------------------------------------- */

static int take_key(log_opts *o, const char *vkey, const char *from)
{
    const char *why = NULL;
    if (tlog_vkey_parse(vkey, &o->key_name, o->pub, &why) != 0) {
        cli_msg("log key from %s: %s", from, why);
        return -1;
    }
    return 0;
}

/* --log-key / QWICK_LOG_KEY / config, else the state's, else the server's
 * (pinned in the state by the caller). A state pinned to another key than
 * the one configured is an error: the log changed keys. */
static int resolve_key(log_opts *o, json_t *state)
{
    const char *saved = state != NULL ? json_string_value(json_object_get(state, "logKey")) : NULL;
    if (o->cfg.log_key != NULL) {
        if (take_key(o, o->cfg.log_key, "--log-key") != 0)
            return -1;
        if (saved != NULL) {
            char *mine = tlog_vkey_format(o->key_name, o->pub);
            int same = strcmp(mine, saved) == 0;
            free(mine);
            if (!same) {
                cli_msg("the state file was saved under another log key (%s): the log changed "
                        "keys, or --state belongs to another server",
                        saved);
                return -1;
            }
        }
        return 0;
    }
    if (saved != NULL)
        return take_key(o, saved, "the state file");
    char *text = NULL, *err = NULL;
    size_t len = 0;
    if (client_get_text(o->c, "/api/v1/log/public-key", &text, &len, &err) != 0) {
        cli_msg("fetching the log key: %s", err);
        free(err);
        return -1;
    }
    text[strcspn(text, "\r\n")] = '\0';
    int rc = take_key(o, text, "the server");
    if (rc == 0) {
        o->pinned_now = 1;
        fprintf(stderr,
                "qwick: no log key configured: trusting the server's key on first use and "
                "pinning it:\n  %s\n",
                text);
    }
    free(text);
    return rc;
}

/* ---- checkpoints and proofs -------------------------------------------- */

static int fetch_checkpoint(log_opts *o, char **note, tlog_checkpoint *cp)
{
    size_t len = 0;
    char *err = NULL;
    const char *why = NULL;
    if (client_get_text(o->c, "/api/v1/log/checkpoint", note, &len, &err) != 0) {
        cli_msg("fetching the checkpoint: %s", err);
        free(err);
        return -1;
    }
    if (tlog_checkpoint_open(*note, len, o->key_name, o->pub, cp, &why) != 0) {
        cli_msg("the server's checkpoint is not valid: %s", why);
        free(*note);
        *note = NULL;
        return -1;
    }
    return 0;
}

/* hashes: a JSON array of base64 hashes into out (at most TLOG_MAX_PROOF). */
static int proof_hashes(json_t *arr, tlog_hash *out, size_t *n)
{
    size_t i;
    json_t *v;
    *n = 0;
    if (!json_is_array(arr) || json_array_size(arr) > TLOG_MAX_PROOF)
        return -1;
    json_array_foreach(arr, i, v)
    {
        const char *s = json_string_value(v);
        size_t got = 0;
        if (s == NULL || b64_decode(s, strlen(s), out[i], TLOG_HASH_LEN, &got) != 0 ||
            got != TLOG_HASH_LEN)
            return -1;
        (*n)++;
    }
    return 0;
}

static int prove_consistent(log_opts *o, const tlog_checkpoint *old, const tlog_checkpoint *cur)
{
    char path[128], *err = NULL;
    json_t *j = NULL;
    tlog_hash proof[TLOG_MAX_PROOF];
    size_t n = 0;
    int rc = -1;
    snprintf(path, sizeof(path), "/api/v1/log/proof/consistency?from=%" PRId64 "&to=%" PRId64,
             old->size, cur->size);
    if (client_get_json(o->c, path, &j, &err) != 0) {
        cli_msg("fetching the consistency proof %" PRId64 " -> %" PRId64 ": %s", old->size,
                cur->size, err);
        free(err);
        return -1;
    }
    if (proof_hashes(json_object_get(j, "hashes"), proof, &n) != 0)
        cli_msg("the server's consistency proof is malformed");
    else if (tlog_verify_consistency(old->size, cur->size, old->root, cur->root, proof, n) != 0)
        cli_msg("LOG FORKED: the checkpoint of size %" PRId64 " is not an extension of the one "
                "of size %" PRId64 " saved earlier (entries were changed or replaced)",
                cur->size, old->size);
    else
        rc = 0;
    json_decref(j);
    return rc;
}

static void print_root(const char *what, const tlog_checkpoint *cp)
{
    char b64[B64_ENCODED_SIZE(TLOG_HASH_LEN)];
    b64_encode(cp->root, TLOG_HASH_LEN, b64);
    printf("%s %s: size %" PRId64 ", root %s\n", what, cp->origin, cp->size, b64);
}

/* Compares the new checkpoint with the saved one. 0 consistent. */
static int check_against_state(log_opts *o, json_t *state, const tlog_checkpoint *cur)
{
    const char *saved =
        state != NULL ? json_string_value(json_object_get(state, "checkpoint")) : NULL;
    const char *why = NULL;
    tlog_checkpoint old;
    int rc = -1;
    if (saved == NULL)
        return 0;
    if (tlog_checkpoint_open(saved, strlen(saved), o->key_name, o->pub, &old, &why) != 0) {
        cli_msg("the saved checkpoint does not verify: %s", why);
        return -1;
    }
    if (strcmp(old.origin, cur->origin) != 0)
        cli_msg("the state file is for log %s, the server now serves %s (use --state)", old.origin,
                cur->origin);
    else if (cur->size < old.size)
        cli_msg("LOG SHRANK: it had %" PRId64 " entries at the saved checkpoint, now %" PRId64
                " (rolled back or cut)",
                old.size, cur->size);
    else if (cur->size == old.size && memcmp(cur->root, old.root, TLOG_HASH_LEN) != 0)
        cli_msg("LOG FORKED: same size %" PRId64 " as the saved checkpoint, different root",
                cur->size);
    else if (cur->size == old.size || prove_consistent(o, &old, cur) == 0)
        rc = 0;
    if (rc == 0 && cur->size > old.size)
        printf("consistent with the saved checkpoint of size %" PRId64 "\n", old.size);
    tlog_checkpoint_clear(&old);
    return rc;
}

static int log_verify(log_opts *o)
{
    char *path = o->state != NULL ? xstrdup(o->state) : default_state_path(o->cfg.server);
    json_t *state = NULL;
    char *note = NULL;
    tlog_checkpoint cp = {0};
    int rc = QK_EXIT_FAIL;

    if (state_load(path, &state) != 0 || resolve_key(o, state) != 0 ||
        fetch_checkpoint(o, &note, &cp) != 0)
        goto out;
    if (check_against_state(o, state, &cp) != 0)
        goto out;
    if (state_save(path, o, note) != 0)
        goto out;
    print_root("log", &cp);
    rc = QK_EXIT_OK;
out:
    tlog_checkpoint_clear(&cp);
    free(note);
    json_decref(state);
    free(path);
    return rc;
}

/* ---- inclusion of a signed file ---------------------------------------- */

/* SHA-256 (hex) of every signer's signature value in one PKCS#7 blob. */
static int sigvals_of(qk_slice der, char hex[][65], size_t max, size_t *n)
{
    const unsigned char *p = der.data;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)der.len);
    if (p7 == NULL || p != der.data + der.len || !PKCS7_type_is_signed(p7)) {
        PKCS7_free(p7);
        return -1;
    }
    STACK_OF(PKCS7_SIGNER_INFO) *sis = PKCS7_get_signer_info(p7);
    for (int i = 0; i < sk_PKCS7_SIGNER_INFO_num(sis) && *n < max; i++) {
        PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(sis, i);
        uint8_t d[SHA256_DIGEST_LENGTH];
        SHA256(ASN1_STRING_get0_data(si->enc_digest), (size_t)ASN1_STRING_length(si->enc_digest),
               d);
        hex_encode(d, sizeof(d), hex[(*n)++]);
    }
    PKCS7_free(p7);
    return 0;
}

/* The signature values a file carries: every PKCS#7 in a PE's certificate
 * table, or the file itself as DER PKCS#7 (a detached .p7s). */
static int file_sigvals(const char *path, qk_pe **pe, char hex[][65], size_t max, size_t *n)
{
    *n = 0;
    if (qk_pe_open(path, pe) == QK_OK) {
        for (size_t i = 0; i < qk_pe_cert_count(*pe); i++) {
            const qk_pe_cert *c = qk_pe_cert_get(*pe, i);
            if (c->type == QK_WIN_CERT_TYPE_PKCS_SIGNED_DATA)
                (void)sigvals_of(c->data, hex, max, n);
        }
        return *n > 0 ? 0 : -1;
    }
    FILE *f = fopen(path, "rb");
    uint8_t *buf = xmalloc(1u << 20);
    size_t len = f != NULL ? fread(buf, 1, 1u << 20, f) : 0;
    int rc = f != NULL && len > 0 && len < (1u << 20) &&
                     sigvals_of((qk_slice){buf, len}, hex, max, n) == 0 && *n > 0
                 ? 0
                 : -1;
    if (f != NULL)
        fclose(f);
    free(buf);
    return rc;
}

/* The entry's leaf must name this signature value and, for a PE file, the
 * file's Authenticode digest. */
static int leaf_matches(const tlog_entry *e, const char *sigval, const qk_pe *pe)
{
    if (e->sigval_sha256 == NULL || strcmp(e->sigval_sha256, sigval) != 0)
        return 0;
    if (pe == NULL)
        return 1;
    qk_hash_alg alg = e->algorithm != NULL ? qk_hash_from_name(e->algorithm) : QK_HASH_NONE;
    uint8_t md[64];
    char mdhex[129];
    if (alg == QK_HASH_NONE || qk_pe_digest(pe, alg, md) != QK_OK)
        return 0;
    hex_encode(md, qk_hash_size(alg), mdhex);
    return e->digest_hex != NULL && strcmp(e->digest_hex, mdhex) == 0;
}

/* Proves entry `index` (leaf bytes `leaf`) is in the checkpoint's tree. */
static int prove_included(log_opts *o, int64_t index, const uint8_t *leaf, size_t leaf_len,
                          const tlog_checkpoint *cp)
{
    char path[128], *err = NULL;
    json_t *j = NULL;
    tlog_hash proof[TLOG_MAX_PROOF], lh;
    size_t n = 0;
    int rc = -1;
    snprintf(path, sizeof(path), "/api/v1/log/proof/inclusion?index=%" PRId64 "&size=%" PRId64,
             index, cp->size);
    if (client_get_json(o->c, path, &j, &err) != 0) {
        cli_msg("fetching the inclusion proof of entry %" PRId64 ": %s", index, err);
        free(err);
        return -1;
    }
    tlog_leaf_hash(leaf, leaf_len, lh);
    if (proof_hashes(json_object_get(j, "hashes"), proof, &n) == 0 &&
        tlog_verify_inclusion(index, cp->size, lh, proof, n, cp->root) == 0)
        rc = 0;
    json_decref(j);
    return rc;
}

/* Looks the signature value up and proves each candidate entry; 0 when one
 * proves, printing it. */
static int find_included(log_opts *o, const char *file, const char sigval[65], const qk_pe *pe,
                         const tlog_checkpoint *cp)
{
    char path[160], *err = NULL;
    json_t *j = NULL, *v;
    size_t i;
    int rc = -1;
    snprintf(path, sizeof(path), "/api/v1/log/entries?signature=%.64s", sigval);
    if (client_get_json(o->c, path, &j, &err) != 0) {
        cli_msg("%s: looking the signature up: %s", file, err);
        free(err);
        return -1;
    }
    json_array_foreach(json_object_get(j, "entries"), i, v)
    {
        json_int_t index = json_integer_value(json_object_get(v, "index"));
        const char *b64 = json_string_value(json_object_get(v, "leaf"));
        uint8_t *leaf = NULL;
        size_t len = 0;
        tlog_entry e;
        const char *why = NULL;
        if (b64 == NULL || strlen(b64) > 2 * TLOG_MAX_LEAF || index < 0 || index >= cp->size)
            continue;
        leaf = xmalloc(strlen(b64) / 4 * 3 + 3);
        if (b64_decode(b64, strlen(b64), leaf, strlen(b64) / 4 * 3 + 3, &len) == 0 &&
            tlog_leaf_decode(leaf, len, &e, &why) == 0) {
            if (e.seq == index + 1 && leaf_matches(&e, sigval, pe) &&
                prove_included(o, index, leaf, len, cp) == 0) {
                printf("%s: in log %s at index %" PRId64 " (tree size %" PRId64
                       "): %s, profile %s, by %s, request %s\n",
                       file, cp->origin, (int64_t)index, cp->size, e.action ? e.action : "-",
                       e.profile ? e.profile : "-", e.actor ? e.actor : "-",
                       e.request_id ? e.request_id : "-");
                rc = 0;
            }
            tlog_entry_clear(&e);
        }
        free(leaf);
        if (rc == 0)
            break;
    }
    json_decref(j);
    return rc;
}

static int log_inclusion(log_opts *o, char **files, int nfiles)
{
    char *path = o->state != NULL ? xstrdup(o->state) : default_state_path(o->cfg.server);
    json_t *state = NULL;
    char *note = NULL;
    tlog_checkpoint cp = {0};
    int rc = QK_EXIT_FAIL, bad = 0;

    if (state_load(path, &state) != 0 || resolve_key(o, state) != 0 ||
        fetch_checkpoint(o, &note, &cp) != 0)
        goto out;
    for (int f = 0; f < nfiles; f++) {
        qk_pe *pe = NULL;
        char hex[16][65];
        size_t n = 0, k;
        if (file_sigvals(files[f], &pe, hex, 16, &n) != 0) {
            cli_msg("%s: no Authenticode or PKCS#7 signature found", files[f]);
            bad = 1;
        } else {
            for (k = 0; k < n; k++)
                if (find_included(o, files[f], hex[k], pe, &cp) == 0)
                    break;
            if (k == n) {
                cli_msg("%s: NOT IN THE LOG: no entry of log %s (size %" PRId64
                        ") proves this file's signature",
                        files[f], cp.origin, cp.size);
                bad = 1;
            }
        }
        qk_pe_free(pe);
    }
    rc = bad ? QK_EXIT_FAIL : QK_EXIT_OK;
out:
    tlog_checkpoint_clear(&cp);
    free(note);
    json_decref(state);
    free(path);
    return rc;
}

int cmd_log(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"server", required_argument, NULL, OPT_SERVER},
        {"api-key", required_argument, NULL, OPT_API_KEY},
        {"cacert", required_argument, NULL, OPT_CACERT},
        {"log-key", required_argument, NULL, OPT_LOG_KEY},
        {"state", required_argument, NULL, OPT_STATE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    cli_config flags = {0};
    log_opts o = {0};
    char *err = NULL, *api_key = NULL;
    int c, rc;

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        help();
        return argc < 2 ? QK_EXIT_USAGE : QK_EXIT_OK;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "verify") != 0 && strcmp(sub, "inclusion") != 0)
        return cli_usage_error("log", "unknown subcommand '%s' (verify, inclusion)", sub);
    argc--;
    argv++;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
        switch (c) {
        case OPT_SERVER:
            flags.server = optarg;
            break;
        case OPT_API_KEY:
            free(api_key);
            api_key = cli_take_secret_arg(optarg);
            flags.api_key = api_key;
            break;
        case OPT_CACERT:
            flags.cacert = optarg;
            break;
        case OPT_LOG_KEY:
            flags.log_key = optarg;
            break;
        case OPT_STATE:
            o.state = optarg;
            break;
        case 'h':
            help();
            free(api_key);
            return QK_EXIT_OK;
        default:
            free(api_key);
            return cli_usage_error("log", "unrecognized option '%s'", argv[optind - 1]);
        }
    }
    int nfiles = argc - optind;
    if (strcmp(sub, "verify") == 0 && nfiles != 0) {
        free(api_key);
        return cli_usage_error("log", "verify takes no file (unexpected '%s')", argv[optind]);
    }
    if (strcmp(sub, "inclusion") == 0 && nfiles == 0) {
        free(api_key);
        return cli_usage_error("log", "inclusion needs at least one FILE");
    }
    rc = cli_config_load(&flags, &o.cfg);
    if (api_key != NULL) {
        OPENSSL_cleanse(api_key, strlen(api_key));
        free(api_key);
    }
    if (rc != QK_EXIT_OK)
        return rc;
    if ((o.c = client_new(&o.cfg, &err)) == NULL) {
        cli_msg("%s", err);
        free(err);
        cli_config_free(&o.cfg);
        return QK_EXIT_USAGE;
    }
    rc = strcmp(sub, "verify") == 0 ? log_verify(&o) : log_inclusion(&o, argv + optind, nfiles);
    client_free(o.c);
    free(o.key_name);
    cli_config_free(&o.cfg);
    return rc;
}
