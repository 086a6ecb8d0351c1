/* qwickd keyring status|rotate|retire: the master key's life cycle.
 *
 * Every secret qwickd keeps at rest is a blob sealed under one key of the
 * keyring (secrets.h): the signing_keys rows of every org, the instance
 * secrets (the transparency log key) and the sealed files the configuration
 * names (tsa.key.sealed). `rotate` adds a key and re-seals each blob under it,
 * one at a time, each durable on its own (a compare-and-swap row update, an
 * atomic file replace), so an interrupted rotation is finished by running
 * rotate again: while any blob is still sealed under an older key, rotate
 * resumes instead of adding yet another key. `retire` drops older keys once
 * no blob uses them and their grace period has passed. Each step is audited.
 * Both take the data directory exclusively: a running serve holds keys that
 * would go stale. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "admin/qwickd.h"
#include "audit/transparency.h"
#include "auth/callback_key.h"
#include "core/util.h"

#define KEYRING_DEFAULT_GRACE_DAYS 7
#define KEYRING_MAX_GRACE_DAYS 36500
#define KEYRING_MAX_SEALED_FILE (SECRETS_MAX_PLAINTEXT + SECRETS_OVERHEAD)
/* Test hook: stop (as if killed) after re-sealing this many blobs. */
#define KEYRING_TEST_STOP_ENV "QWICKD_TEST_RESEAL_STOP_AFTER"

static void help(void)
{
    printf("Usage: qwickd keyring status --data DIR [--master-key FILE] [--json]\n"
           "       qwickd keyring rotate --data DIR [--master-key FILE] [--resume]\n"
           "       qwickd keyring retire --data DIR [--master-key FILE] [--grace-days N]"
           " [--force]\n\n"
           "The master key file holds numbered keys; the newest seals, every one opens.\n"
           "  status   each key, when it was made and superseded, and how many sealed\n"
           "           secrets it seals (signing keys of every org, the log key,\n"
           "           tsa.key.sealed, database.sealed)\n"
           "  rotate   adds a key and re-seals every secret under it. Interrupted, run it\n"
           "           again: while a secret is still sealed under an older key, rotate\n"
           "           finishes that rotation instead of adding another key. --resume only\n"
           "           ever finishes (never adds a key).\n"
           "  retire   removes the keys older than the newest that no secret uses, once\n"
           "           they were superseded --grace-days ago (default %d); --force skips\n"
           "           the grace period, never the check that nothing uses them.\n\n"
           "rotate and retire refuse to run while `qwickd serve` uses DIR. Back up the\n"
           "master key file after rotate: the secrets are sealed under the new key.\n\n"
           "  -d, --data DIR         data directory (default: $QWICKD_DATA)\n"
           "      --master-key FILE  the master key (default: $" MASTER_KEY_ENV ",\n"
           "                         $CREDENTIALS_DIRECTORY/" MASTER_KEY_CREDENTIAL
           ", DIR/" KEYRING_FILE ")\n"
           "      --json             status as JSON\n",
           KEYRING_DEFAULT_GRACE_DAYS);
}

typedef struct keyring_opts {
    const char *data, *master_key;
    int resume, force, json;
    long grace_days;
} keyring_opts;

/* ---- every sealed blob of the instance --------------------------------- */

typedef enum blob_kind { BLOB_SIGNING_KEY, BLOB_INSTANCE_SECRET, BLOB_FILE } blob_kind;

typedef struct blob {
    blob_kind kind;
    int64_t org, id; /* BLOB_SIGNING_KEY */
    char *name;      /* the instance secret's name, or the file's path */
    char *what;      /* for people: "signing key 3 of org 1" */
    char aad[SECRETS_AAD_MAX];
    int aad_known; /* an instance secret this version does not know has none */
    qk_buf sealed;
    uint32_t kid; /* 0: not a sealed blob */
} blob;

typedef struct blob_set {
    blob *v;
    size_t n;
} blob_set;

/* The purpose strings of instance secrets, by name. */
static const struct {
    const char *name, *aad;
} instance_aads[] = {
    {TL_SECRET_NAME, SECRETS_AAD_LOG_KEY},
};

static blob *blob_add(blob_set *s, blob_kind kind, qk_buf sealed)
{
    s->v = xrealloc(s->v, (s->n + 1) * sizeof(*s->v));
    blob *b = &s->v[s->n++];
    memset(b, 0, sizeof(*b));
    b->kind = kind;
    b->sealed = sealed;
    if (secrets_blob_kid((qk_slice){sealed.data, sealed.len}, &b->kid) != QK_OK)
        b->kid = 0;
    return b;
}

static void blobs_free(blob_set *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].name);
        free(s->v[i].what);
        qk_buf_free(&s->v[i].sealed);
    }
    free(s->v);
    memset(s, 0, sizeof(*s));
}

static qk_err collect_signing_keys(admin_ctx *a, blob_set *s)
{
    store_signing_key *keys = NULL;
    size_t n = 0;
    qk_err rc = STORE_CALL(a->store, signing_key_list_all, &keys, &n);
    for (size_t i = 0; rc == QK_OK && i < n; i++) {
        blob *b = blob_add(s, BLOB_SIGNING_KEY, keys[i].sealed);
        keys[i].sealed = (qk_buf){NULL, 0};
        b->org = keys[i].org_id;
        b->id = keys[i].id;
        b->what = xasprintf("signing key %" PRId64 " of org %" PRId64 " (%s)", b->id, b->org,
                            keys[i].kind ? keys[i].kind : "?");
        secrets_aad_signing_key(b->aad, b->org);
        b->aad_known = 1;
    }
    store_signing_key_list_free(keys, n);
    return rc;
}

static qk_err collect_instance_secrets(admin_ctx *a, blob_set *s)
{
    char **names = NULL;
    size_t n = 0;
    qk_err rc = STORE_CALL(a->store, instance_secret_names, &names, &n);
    for (size_t i = 0; rc == QK_OK && i < n; i++) {
        qk_buf sealed = {NULL, 0}, pub = {NULL, 0};
        int found = 0;
        if ((rc = STORE_CALL(a->store, instance_secret_get, names[i], &sealed, &pub, &found)) !=
            QK_OK)
            break;
        qk_buf_free(&pub);
        if (!found)
            continue; /* gone since the list was read */
        blob *b = blob_add(s, BLOB_INSTANCE_SECRET, sealed);
        b->name = xstrdup(names[i]);
        b->what = xasprintf("instance secret %s", names[i]);
        if (strncmp(names[i], CALLBACK_SECRET_PREFIX, strlen(CALLBACK_SECRET_PREFIX)) == 0) {
            snprintf(b->aad, sizeof(b->aad), "%s", names[i]); /* callback_key.h */
            b->aad_known = 1;
        }
        for (size_t k = 0; k < sizeof(instance_aads) / sizeof(instance_aads[0]); k++)
            if (strcmp(instance_aads[k].name, names[i]) == 0) {
                snprintf(b->aad, sizeof(b->aad), "%s", instance_aads[k].aad);
                b->aad_known = 1;
            }
    }
    store_names_free(names, n);
    return rc;
}

/* A sealed file the configuration names; a missing one is skipped (serve
 * runs without a TSA then). */
static qk_err collect_file(blob_set *s, const char *path, const char *aad)
{
    qk_buf sealed = {NULL, 0};
    struct stat st;
    if (path == NULL || (stat(path, &st) != 0 && errno == ENOENT))
        return QK_OK;
    qk_err rc = file_read_all(path, KEYRING_MAX_SEALED_FILE, &sealed);
    if (rc != QK_OK)
        return rc;
    blob *b = blob_add(s, BLOB_FILE, sealed);
    b->name = xstrdup(path);
    b->what = xasprintf("file %s", path);
    snprintf(b->aad, sizeof(b->aad), "%s", aad);
    b->aad_known = 1;
    return QK_OK;
}

/* Files first, then the instance's secrets, then each org's keys. */
static qk_err collect(admin_ctx *a, blob_set *s)
{
    qk_err rc;
    memset(s, 0, sizeof(*s));
    /* The server's PostgreSQL login (database.sealed; absent on SQLite). */
    char *dbcred = path_join(a->dir, DATABASE_CREDENTIALS_FILE);
    rc = collect_file(s, dbcred, DATABASE_CREDENTIALS_AAD);
    free(dbcred);
    if (rc != QK_OK || (rc = collect_file(s, a->cfg.tsa_key, SECRETS_AAD_TSA_KEY)) != QK_OK ||
        (rc = collect_instance_secrets(a, s)) != QK_OK ||
        (rc = collect_signing_keys(a, s)) != QK_OK)
        blobs_free(s);
    return rc;
}

static int kid_known(const keyring_info *keys, size_t nkeys, uint32_t kid)
{
    for (size_t i = 0; i < nkeys; i++)
        if (keys[i].kid == kid)
            return 1;
    return 0;
}

static size_t count_kid(const blob_set *s, uint32_t kid)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += s->v[i].kid == kid;
    return n;
}

/* ---- status ------------------------------------------------------------- */

static json_t *status_json(const char *path, const keyring_info *keys, size_t nkeys,
                           uint32_t current, const blob_set *s)
{
    json_t *jk = json_array(), *jb = json_array();
    for (size_t i = 0; i < nkeys; i++)
        json_array_append_new(jk,
                              json_pack("{s:I, s:I, s:I, s:I, s:b}", "kid", (json_int_t)keys[i].kid,
                                        "created", (json_int_t)keys[i].created, "superseded",
                                        (json_int_t)(i + 1 < nkeys ? keys[i + 1].created : 0),
                                        "blobs", (json_int_t)count_kid(s, keys[i].kid), "current",
                                        keys[i].kid == current));
    for (size_t i = 0; i < s->n; i++)
        json_array_append_new(jb, json_pack("{s:s, s:I, s:b}", "what", s->v[i].what, "kid",
                                            (json_int_t)s->v[i].kid, "in_keyring",
                                            kid_known(keys, nkeys, s->v[i].kid)));
    return json_pack("{s:s, s:I, s:o, s:o}", "master_key", path, "current", (json_int_t)current,
                     "keys", jk, "blobs", jb);
}

static void status_text(const char *path, const keyring_info *keys, size_t nkeys, uint32_t current,
                        const blob_set *s, long grace_days)
{
    size_t stale = 0;
    int64_t now = now_unix();
    printf("master key %s\n\n%-5s %-21s %-21s %-6s %s\n", path, "KID", "CREATED", "SUPERSEDED",
           "BLOBS", "STATE");
    for (size_t i = 0; i < nkeys; i++) {
        char made[32], gone[32], until[32], state[80];
        int64_t sup = i + 1 < nkeys ? keys[i + 1].created : 0;
        size_t uses = count_kid(s, keys[i].kid);
        format_time(keys[i].created, made);
        format_time(sup, gone);
        format_time(sup + grace_days * 86400, until);
        if (keys[i].kid == current)
            snprintf(state, sizeof(state), "current (seals new secrets)");
        else if (uses > 0)
            snprintf(state, sizeof(state), "still in use: rotate --resume");
        else if (sup != 0 && now < sup + grace_days * 86400)
            snprintf(state, sizeof(state), "grace period until %s", until);
        else
            snprintf(state, sizeof(state), "unused: retire removes it");
        printf("%-5" PRIu32 " %-21s %-21s %-6zu %s\n", keys[i].kid, made, gone, uses, state);
    }
    printf("\n");
    for (size_t i = 0; i < s->n; i++) {
        const blob *b = &s->v[i];
        if (!kid_known(keys, nkeys, b->kid))
            printf("%s names key %" PRIu32 ", which is not in the keyring: it cannot be opened\n",
                   b->what, b->kid);
        else if (b->kid != current)
            stale++;
    }
    printf("%zu sealed secrets, %zu under older keys%s\n", s->n, stale,
           stale ? " (qwickd keyring rotate --resume re-seals them)" : "");
}

static int do_status(admin_ctx *a, const keyring_opts *o)
{
    qk_keyring *kr = NULL;
    keyring_info keys[SECRETS_MAX_KEYS];
    blob_set s = {NULL, 0};
    char *path = master_key_path(a->dir, o->master_key);
    int status = EXIT_FAIL;
    qk_err rc;

    if ((rc = master_key_load(a->dir, o->master_key, &kr)) != QK_OK ||
        (rc = collect(a, &s)) != QK_OK) {
        report_err("keyring status", rc);
        goto out;
    }
    size_t nkeys = keyring_info_get(kr, keys);
    uint32_t current = keyring_current_kid(kr);
    if (o->json) {
        json_t *j = status_json(path, keys, nkeys, current, &s);
        char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
        if (text != NULL)
            printf("%s\n", text);
        free(text);
        json_decref(j);
    } else {
        status_text(path, keys, nkeys, current, &s, o->grace_days);
    }
    status = fflush(stdout) == 0 ? EXIT_OK : EXIT_FAIL;
out:
    blobs_free(&s);
    keyring_free(kr);
    free(path);
    return status;
}

/* ---- rotate --------------------------------------------------------------- */

/* Writes the re-sealed blob where the old one was: a row only while it still
 * holds the old blob, a file by atomic replacement. */
static qk_err store_blob(admin_ctx *a, const blob *b, qk_slice fresh)
{
    qk_slice old = {b->sealed.data, b->sealed.len};
    int found = 0;
    switch (b->kind) {
    case BLOB_SIGNING_KEY:
        return STORE_CALL(a->store, signing_key_reseal, b->org, b->id, old, fresh, &found);
    case BLOB_INSTANCE_SECRET:
        return STORE_CALL(a->store, instance_secret_reseal, b->name, old, fresh, &found);
    case BLOB_FILE:
        return file_replace(b->name, fresh, 0600);
    }
    return qk_fail(QK_ERR_INVALID_ARG, "unknown blob kind");
}

/* Opens `b` under whichever key sealed it, seals it under the current key,
 * stores it, and records the step in the audit log of the org it belongs to
 * (the default org for the instance's own secrets). */
static qk_err reseal_one(admin_ctx *a, const qk_keyring *kr, blob *b)
{
    qk_buf plain = {NULL, 0}, fresh = {NULL, 0};
    uint32_t from = b->kid, to = keyring_current_kid(kr);
    qk_err rc;

    if (!b->aad_known)
        return qk_fail(QK_ERR_INVALID_ARG, "%s: this qwickd does not know what it is for", b->what);
    if ((rc = secrets_open(kr, (qk_slice){b->sealed.data, b->sealed.len}, b->aad, &plain)) == QK_OK)
        rc = secrets_seal(kr, (qk_slice){plain.data, plain.len}, b->aad, &fresh);
    qk_buf_free(&plain);
    if (rc == QK_OK)
        rc = store_blob(a, b, (qk_slice){fresh.data, fresh.len});
    if (rc != QK_OK) {
        qk_buf_free(&fresh);
        return rc;
    }
    qk_buf_free(&b->sealed);
    b->sealed = fresh;
    b->kid = to;
    char *detail = xasprintf("%s: master key %" PRIu32 " -> %" PRIu32, b->what, from, to);
    int64_t org = a->org;
    if (b->kind == BLOB_SIGNING_KEY)
        a->org = b->org;
    rc = admin_audit(a, "keyring.reseal", detail);
    a->org = org;
    free(detail);
    return rc;
}

/* KEYRING_TEST_STOP_ENV: how many re-seals this run may do (-1: no limit). */
static long test_stop_after(void)
{
    const char *v = getenv(KEYRING_TEST_STOP_ENV);
    char *end = NULL;
    if (v == NULL || v[0] == '\0')
        return -1;
    long n = strtol(v, &end, 10);
    return *end == '\0' && n >= 0 ? n : -1;
}

/* Adds a key to the file and audits it; *kr is reloaded with it. */
static qk_err add_key(admin_ctx *a, const keyring_opts *o, const char *path, qk_keyring **kr)
{
    uint32_t prev = keyring_current_kid(*kr);
    qk_err rc;
    if ((rc = keyring_rotate(path)) != QK_OK)
        return rc;
    keyring_free(*kr);
    if ((rc = master_key_load(a->dir, o->master_key, kr)) != QK_OK)
        return rc;
    char *detail = xasprintf("added master key %" PRIu32 " (seals from now on); key %" PRIu32
                             " kept for opening until retired",
                             keyring_current_kid(*kr), prev);
    rc = admin_audit(a, "keyring.rotate", detail);
    free(detail);
    if (rc == QK_OK)
        printf("Added master key %" PRIu32 " to %s; key %" PRIu32 " stays until retired.\n",
               keyring_current_kid(*kr), path, prev);
    return rc;
}

/* Re-seals every blob the current key does not seal yet; 0 when all are done. */
static int reseal_all(admin_ctx *a, const qk_keyring *kr, blob_set *s)
{
    uint32_t current = keyring_current_kid(kr);
    long stop = test_stop_after();
    size_t done = 0, failed = 0;
    for (size_t i = 0; i < s->n; i++) {
        blob *b = &s->v[i];
        if (b->kid == current)
            continue;
        if (stop >= 0 && (long)done == stop) {
            fprintf(stderr, "qwickd keyring: test hook %s: stopping after %zu re-seals\n",
                    KEYRING_TEST_STOP_ENV, done);
            fflush(stdout);
            _exit(3); /* as if killed: no clean-up, nothing more written */
        }
        qk_err rc = reseal_one(a, kr, b);
        if (rc != QK_OK) {
            report_err(b->what, rc);
            failed++;
            continue;
        }
        done++;
    }
    printf("Re-sealed %zu secret%s under master key %" PRIu32 "; %zu now sealed under it.\n", done,
           done == 1 ? "" : "s", current, count_kid(s, current));
    if (failed > 0)
        fprintf(stderr,
                "qwickd keyring rotate: %zu secret%s not re-sealed (above); run `qwickd keyring "
                "rotate --resume` again once fixed\n",
                failed, failed == 1 ? "" : "s");
    return failed > 0;
}

static size_t count_stale(const blob_set *s, const qk_keyring *kr)
{
    keyring_info keys[SECRETS_MAX_KEYS];
    size_t nkeys = keyring_info_get(kr, keys), n = 0;
    uint32_t current = keyring_current_kid(kr);
    for (size_t i = 0; i < s->n; i++)
        n += s->v[i].kid != current && kid_known(keys, nkeys, s->v[i].kid);
    return n;
}

static int do_rotate(admin_ctx *a, const keyring_opts *o)
{
    qk_keyring *kr = NULL;
    blob_set s = {NULL, 0};
    char *path = master_key_path(a->dir, o->master_key);
    int status = EXIT_FAIL;
    qk_err rc;

    if ((rc = master_key_load(a->dir, o->master_key, &kr)) != QK_OK ||
        (rc = collect(a, &s)) != QK_OK) {
        report_err("keyring rotate", rc);
        goto out;
    }
    size_t stale = count_stale(&s, kr);
    if (stale > 0) {
        printf("Finishing an earlier rotation: %zu secret%s still sealed under older keys "
               "(no new key is added until every secret uses key %" PRIu32 ").\n",
               stale, stale == 1 ? " is" : "s are", keyring_current_kid(kr));
    } else if (o->resume) {
        printf("Nothing to resume: every secret is sealed under master key %" PRIu32 ".\n",
               keyring_current_kid(kr));
        status = EXIT_OK;
        goto out;
    } else if ((rc = add_key(a, o, path, &kr)) != QK_OK) {
        report_err("keyring rotate", rc);
        goto out;
    }
    if (reseal_all(a, kr, &s) == 0) {
        printf("Back up %s now: every secret is sealed under its key %" PRIu32 ".\n", path,
               keyring_current_kid(kr));
        status = EXIT_OK;
    }
out:
    blobs_free(&s);
    keyring_free(kr);
    free(path);
    return status;
}

/* ---- retire ------------------------------------------------------------- */

/* Whether old key keys[i] may go: 1 yes, 0 no (the reason printed). */
static int retirable(const keyring_info *keys, size_t nkeys, size_t i, const blob_set *s,
                     const keyring_opts *o, int64_t now)
{
    size_t uses = count_kid(s, keys[i].kid);
    int64_t sup = i + 1 < nkeys ? keys[i + 1].created : 0;
    int64_t end = sup + o->grace_days * 86400;
    char when[32];
    if (uses > 0) {
        fprintf(stderr,
                "qwickd keyring retire: key %" PRIu32 " still seals %zu secret%s: run `qwickd "
                "keyring rotate --resume` first\n",
                keys[i].kid, uses, uses == 1 ? "" : "s");
        return 0;
    }
    if (o->force)
        return 1;
    if (sup == 0) {
        fprintf(stderr,
                "qwickd keyring retire: key %" PRIu32 ": when it was superseded is not recorded; "
                "--force retires it\n",
                keys[i].kid);
        return 0;
    }
    if (now < end) {
        format_time(end, when);
        fprintf(stderr,
                "qwickd keyring retire: key %" PRIu32 " is in its grace period until %s "
                "(--grace-days %ld); --force retires it now\n",
                keys[i].kid, when, o->grace_days);
        return 0;
    }
    return 1;
}

static int do_retire(admin_ctx *a, const keyring_opts *o)
{
    qk_keyring *kr = NULL;
    keyring_info keys[SECRETS_MAX_KEYS];
    uint32_t gone[SECRETS_MAX_KEYS];
    blob_set s = {NULL, 0};
    char *path = master_key_path(a->dir, o->master_key);
    size_t ngone = 0, refused = 0;
    int status = EXIT_FAIL;
    qk_err rc;

    if ((rc = master_key_load(a->dir, o->master_key, &kr)) != QK_OK ||
        (rc = collect(a, &s)) != QK_OK) {
        report_err("keyring retire", rc);
        goto out;
    }
    size_t nkeys = keyring_info_get(kr, keys);
    uint32_t current = keyring_current_kid(kr);
    int64_t now = now_unix();
    for (size_t i = 0; i < nkeys; i++) {
        if (keys[i].kid == current)
            continue;
        if (retirable(keys, nkeys, i, &s, o, now))
            gone[ngone++] = keys[i].kid;
        else
            refused++;
    }
    if (ngone == 0) {
        if (refused == 0)
            printf("Nothing to retire: master key %" PRIu32 " is the only key.\n", current);
        status = refused == 0 ? EXIT_OK : EXIT_FAIL;
        goto out;
    }
    if ((rc = keyring_retire(path, gone, ngone)) != QK_OK) {
        report_err("keyring retire", rc);
        goto out;
    }
    char list[SECRETS_MAX_KEYS * 12] = "";
    for (size_t i = 0, len = 0; i < ngone; i++)
        len +=
            (size_t)snprintf(list + len, sizeof(list) - len, "%s%" PRIu32, i ? ", " : "", gone[i]);
    char *detail = xasprintf("retired master key%s %s%s; key %" PRIu32 " remains current",
                             ngone == 1 ? "" : "s", list, o->force ? " (--force)" : "", current);
    rc = admin_audit(a, "keyring.retire", detail);
    free(detail);
    if (rc != QK_OK) {
        report_err("keyring retire (keys removed, audit entry not written)", rc);
        goto out;
    }
    printf("Retired master key%s %s from %s.\n", ngone == 1 ? "" : "s", list, path);
    status = refused == 0 ? EXIT_OK : EXIT_FAIL;
out:
    blobs_free(&s);
    keyring_free(kr);
    free(path);
    return status;
}

/* ---- the command ----------------------------------------------------------- */

static int parse_args(int argc, char **argv, keyring_opts *o)
{
    static const struct option longopts[] = {{"data", required_argument, NULL, 'd'},
                                             {"master-key", required_argument, NULL, 'm'},
                                             {"resume", no_argument, NULL, 'r'},
                                             {"force", no_argument, NULL, 'f'},
                                             {"grace-days", required_argument, NULL, 'g'},
                                             {"json", no_argument, NULL, 'j'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    char *end = NULL;
    int c;

    memset(o, 0, sizeof(*o));
    o->grace_days = KEYRING_DEFAULT_GRACE_DAYS;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "d:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            o->data = optarg;
            break;
        case 'm':
            o->master_key = optarg;
            break;
        case 'r':
            o->resume = 1;
            break;
        case 'f':
            o->force = 1;
            break;
        case 'g':
            errno = 0;
            o->grace_days = strtol(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' || o->grace_days < 0 ||
                o->grace_days > KEYRING_MAX_GRACE_DAYS)
                return usage_error("keyring", "--grace-days takes 0 to %d", KEYRING_MAX_GRACE_DAYS);
            break;
        case 'j':
            o->json = 1;
            break;
        case 'h':
            help();
            return -1;
        default:
            return usage_error("keyring", "unrecognized option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc)
        return usage_error("keyring", "unexpected argument '%s'", argv[optind]);
    if ((o->data = data_dir_arg(o->data)) == NULL)
        return usage_error("keyring", "--data DIR (or $QWICKD_DATA) is required");
    return 0;
}

int cmd_keyring(int argc, char **argv)
{
    keyring_opts o;
    admin_ctx a;
    int lock = -1, status, r;
    qk_err rc;

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        help();
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    const char *sub = argv[1];
    int is_status = strcmp(sub, "status") == 0, is_rotate = strcmp(sub, "rotate") == 0;
    if (!is_status && !is_rotate && strcmp(sub, "retire") != 0)
        return usage_error("keyring", "unknown subcommand '%s' (status, rotate, retire)", sub);
    if ((r = parse_args(argc - 1, argv + 1, &o)) != 0)
        return r < 0 ? EXIT_OK : r;
    /* Changing keys under a running server would leave it holding a keyring
     * without the key its secrets are now sealed under. */
    if (!is_status && (rc = data_dir_lock(o.data, 1, &lock)) != QK_OK) {
        report_err("keyring", rc);
        return EXIT_FAIL;
    }
    if ((rc = admin_open(o.data, NULL, &a)) != QK_OK) {
        report_err("keyring", rc);
        if (lock >= 0)
            close(lock);
        return EXIT_FAIL;
    }
    if (is_status)
        status = do_status(&a, &o);
    else if (is_rotate)
        status = do_rotate(&a, &o);
    else
        status = do_retire(&a, &o);
    admin_close(&a);
    if (lock >= 0)
        close(lock);
    return status;
}
