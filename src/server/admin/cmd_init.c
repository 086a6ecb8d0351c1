/* qwickd init: a fresh data directory with everything `qwickd serve` needs. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "auth/apikey.h"
#include "signer/pki.h"
#include "admin/qwickd.h"
#include "audit/transparency.h"
#include "core/util.h"

#define DEFAULT_ADMIN_EMAIL "admin@localhost"

/* Everything init may create, removed again if it fails half-way. */
static const char *const created_files[] = {
    CONFIG_FILE,
    STORE_SQLITE_FILE,
    STORE_SQLITE_FILE "-wal",
    STORE_SQLITE_FILE "-shm",
    STORE_SQLITE_FILE "-journal",
    PKI_ROOT_CA,
    PKI_TSA_ROOT_CA,
    PKI_TLS_CA,
    PKI_TLS_CERT,
    PKI_TLS_KEY,
    PKI_TSA_CERT,
    PKI_TSA_KEY_SEALED,
    PKI_CODESIGN_CERT,
    KEYRING_FILE,
    DATABASE_CREDENTIALS_FILE,
};

static void help(void)
{
    printf("Usage: qwickd init --data DIR [--json] [--org NAME] [--admin-email EMAIL]\n"
           "                   [--listen ADDR:PORT] [--master-key FILE] [--database URL]\n\n"
           "Creates a qwickd data directory (mode 0700): the master key (master.key,\n"
           "0600), the SQLite database, a development PKI (code-signing, TSA and TLS\n"
           "certificates under three dev roots), an org, an admin user, the certificate\n"
           "profile 'default' and a first admin API key, which is printed once.\n"
           "Refuses a directory that exists and is not empty.\n\n"
           "  -d, --data DIR        data directory (default: $QWICKD_DATA)\n"
           "      --json            print {api_key, root_ca, tsa_root_ca, tls_ca, server, ...,\n"
           "                        log_public_key}\n"
           "      --org NAME        name of the first org (default 'default')\n"
           "      --admin-email E   the admin user's email (default " DEFAULT_ADMIN_EMAIL ")\n"
           "      --listen A:P      listen address written to qwickd.json "
           "(default " CONFIG_DEFAULT_LISTEN ")\n"
           "      --master-key FILE create the master key there instead of DIR/" KEYRING_FILE "\n"
           "                        (default: $" MASTER_KEY_ENV "); nothing in DIR records it,\n"
           "                        so serve and the admin commands need it named too\n"
           "      --database URL    PostgreSQL instead of SQLite: postgresql://OWNER@HOST:PORT/DB\n"
           "                        (default: $" DATABASE_URL_ENV "). OWNER needs CREATEROLE;\n"
           "                        its password comes from PGPASSWORD or ~/.pgpass, never the\n"
           "                        URL. init creates the schema with row-level security and\n"
           "                        the server's own login role (sealed in " DATABASE_CREDENTIALS_FILE ")\n"
           "  -h, --help            show this help\n\n"
           "The admin user has no password yet (dashboard login arrives later); the API\n"
           "key is bound to it.\n");
}

/* 1 if `dir` has entries besides . and .., 0 if empty, -1 on error. */
static int dir_nonempty(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            found = 1;
            break;
        }
    closedir(d);
    return found;
}

/* mkdir -p with mode 0700 for every directory it creates. */
static int mkdirs(const char *path)
{
    char *p = xstrdup(path);
    int rc = 0;
    for (char *s = p + 1; *s != '\0'; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST)
            rc = -1;
        *s = '/';
        if (rc != 0)
            break;
    }
    if (rc == 0 && mkdir(p, 0700) != 0)
        rc = -1;
    free(p);
    return rc;
}

/* Prepares DIR: creates it, or accepts an existing empty directory. */
static qk_err prepare_dir(const char *dir, int *created)
{
    struct stat st;
    *created = 0;
    if (lstat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return qk_fail(QK_ERR_INVALID_ARG, "%s exists and is not a directory", dir);
        int ne = dir_nonempty(dir);
        if (ne < 0)
            return qk_fail(QK_ERR_IO, "%s: %s", dir, strerror(errno));
        if (ne > 0) {
            char *marker = path_join(dir, CONFIG_FILE);
            int inited = access(marker, F_OK) == 0;
            free(marker);
            return qk_fail(QK_ERR_INVALID_ARG, "%s %s; refusing to touch it", dir,
                           inited ? "is already initialised" : "exists and is not empty");
        }
    } else if (errno != ENOENT) {
        return qk_fail(QK_ERR_IO, "%s: %s", dir, strerror(errno));
    } else {
        if (mkdirs(dir) != 0)
            return qk_fail(QK_ERR_IO, "mkdir %s: %s", dir, strerror(errno));
        *created = 1;
    }
    if (chmod(dir, 0700) != 0)
        return qk_fail(QK_ERR_IO, "chmod %s: %s", dir, strerror(errno));
    return QK_OK;
}

static void cleanup(const char *dir, int created_dir)
{
    for (size_t i = 0; i < sizeof(created_files) / sizeof(created_files[0]); i++) {
        char *p = path_join(dir, created_files[i]);
        unlink(p);
        free(p);
    }
    if (created_dir)
        rmdir(dir);
}

typedef struct init_opts {
    const char *dir;
    const char *org;
    const char *email;
    const char *listen;
    int json;
    const char *master_key;   /* --master-key FILE, or NULL */
    const char *keyring_path; /* where the master key was created */
    const char *database;     /* PostgreSQL URL, or NULL: SQLite */
} init_opts;

/* PostgreSQL: the schema and the server's login role, its password sealed in DIR. */
static qk_err create_database(const init_opts *o, const qk_keyring *kr)
{
    uint8_t rnd[24];
    char role[32], password[2 * 24 + 1], hex[2 * 6 + 1];
    qk_err rc;
    if (store_pg_url_has_password(o->database))
        return qk_fail(QK_ERR_INVALID_ARG,
                       "the database URL holds a password, which qwickd.json would keep in "
                       "clear: give it in PGPASSWORD or ~/.pgpass instead");
    randombytes_buf(rnd, sizeof(rnd));
    hex_encode(rnd, 6, hex);
    snprintf(role, sizeof(role), "qwickd_%s", hex);
    randombytes_buf(rnd, sizeof(rnd));
    hex_encode(rnd, sizeof(rnd), password);
    sodium_memzero(rnd, sizeof(rnd));
    if ((rc = store_pg_create(o->database, role, password)) == QK_OK)
        rc = database_credentials_write(o->dir, kr, role, password);
    sodium_memzero(password, sizeof(password));
    return rc;
}

/* Everything after the master key exists: database, PKI, org, key, config. */
static qk_err populate(const init_opts *o, const char *keyring_path, char key[APIKEY_LEN + 1],
                       char optok[APIKEY_LEN + 1], char **vkey)
{
    int64_t optok_id = 0;
    tl_key *lk = NULL;
    qk_err rc;
    qk_keyring *kr = NULL;
    qk_store *st = NULL;
    pki_codesign cs = {{NULL, 0}, {NULL, 0}};
    qk_buf sealed = {NULL, 0};
    char aad[SECRETS_AAD_MAX];
    int64_t org = 0, user = 0, key_id = 0, profile_id = 0, apikey_id = 0;

    if ((rc = keyring_load(keyring_path, &kr)) != QK_OK ||
        (o->database != NULL && (rc = create_database(o, kr)) != QK_OK) ||
        (rc = store_open_dir(o->dir, o->database, NULL, 2, &st)) != QK_OK ||
        (rc = STORE_CALL(st, org_create, o->org, NULL, &org)) != QK_OK ||
        (rc = STORE_CALL(st, user_create, org, o->email, NULL, ROLE_ADMIN, &user)) != QK_OK ||
        (rc = pki_generate(o->dir, kr, &cs)) != QK_OK)
        goto out;
    /* The code-signing key goes from memory into the sealed envelope and
     * nowhere else: never a plaintext file. */
    secrets_aad_signing_key(aad, org);
    if ((rc = secrets_seal(kr, (qk_slice){cs.key_pem.data, cs.key_pem.len}, aad, &sealed)) != QK_OK)
        goto out;
    qk_buf_free(&cs.key_pem);
    if ((rc = STORE_CALL(st, signing_key_create, org, "local-pem",
                         (qk_slice){sealed.data, sealed.len}, &key_id)) != QK_OK ||
        (rc = STORE_CALL(st, profile_create, org, "default", "local", key_id,
                         (qk_slice){cs.chain_der.data, cs.chain_der.len}, NULL, NULL,
                         &profile_id)) != QK_OK ||
        (rc = apikey_create(st, org, user, "initial admin key", ROLE_ADMIN, 0, NULL, key,
                            &apikey_id)) != QK_OK)
        goto out;
    store_audit au = {.org_id = org,
                      .actor = "cli",
                      .action = "init",
                      .outcome = AUDIT_ALLOWED,
                      .detail = "data directory created; profile default; admin API key 1"};
    if ((rc = STORE_CALL(st, audit_append, &au)) != QK_OK)
        goto out;
    /* The operator's credential for /metrics (it belongs to no org). */
    if ((rc = operator_token_issue(st, "initial operator token", optok, &optok_id)) != QK_OK)
        goto out;
    /* The transparency log's signing key, sealed like the others. */
    if ((rc = tl_key_load(st, kr, 1, &lk)) != QK_OK)
        goto out;
    *vkey = xstrdup(tl_key_vkey(lk));
    /* Written last: its presence is what marks the directory as initialised. */
    rc = config_write_defaults(o->dir, o->listen, o->database);
out:
    tl_key_free(lk);
    if (st != NULL)
        st->ops->close(st);
    keyring_free(kr);
    pki_codesign_clear(&cs);
    qk_buf_free(&sealed);
    return rc;
}

static int print_result(const init_opts *o, const char *abs, char key[APIKEY_LEN + 1],
                        const char *optok, const char *vkey)
{
    char *root = path_join(abs, PKI_ROOT_CA), *tsa = path_join(abs, PKI_TSA_ROOT_CA),
         *tls = path_join(abs, PKI_TLS_CA);
    char *url = config_url_from_listen(o->listen != NULL ? o->listen : CONFIG_DEFAULT_LISTEN, 1);
    char *dflt = path_join(o->dir, KEYRING_FILE), mk[PATH_MAX];
    int status = EXIT_OK, outside = strcmp(dflt, o->keyring_path) != 0;
    if (realpath(o->keyring_path, mk) == NULL)
        snprintf(mk, sizeof(mk), "%s", o->keyring_path);
    free(dflt);

    if (o->json) {
        json_t *j =
            json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "api_key", key, "root_ca",
                      root, "tsa_root_ca", tsa, "tls_ca", tls, "server", url, "data_dir", abs,
                      "org", o->org, "profile", "default", "log_public_key", vkey);
        if (j != NULL)
            json_object_set_new(j, "operator_token", json_string(optok));
        if (j != NULL)
            json_object_set_new(j, "master_key", json_string(mk));
        char *text = j != NULL ? json_dumps(j, JSON_PRESERVE_ORDER) : NULL;
        if (text == NULL) {
            fprintf(stderr, "qwickd init: out of memory\n");
            status = EXIT_FAIL;
        } else {
            printf("%s\n", text);
            sodium_memzero(text, strlen(text));
            free(text);
        }
        if (j != NULL) {
            /* jansson holds its own copy of the key: wipe it too. */
            char *copy = (char *)json_string_value(json_object_get(j, "api_key"));
            if (copy != NULL)
                sodium_memzero(copy, strlen(copy));
            copy = (char *)json_string_value(json_object_get(j, "operator_token"));
            if (copy != NULL)
                sodium_memzero(copy, strlen(copy));
        }
        json_decref(j);
    } else {
        printf("Initialised qwickd data directory %s\n\n"
               "  master key   %s  (back it up: it decrypts the signing keys%s)\n"
               "  database     %s%s%s\n"
               "  root CA      %s\n"
               "  TSA root CA  %s\n"
               "  TLS CA       %s\n"
               "  org          %s (admin user %s)\n"
               "  log key      %s\n"
               "  profile      default (Qwick Dev Code Signing, RSA-3072, key sealed in the "
               "database)\n\n"
               "Start the server:  qwickd serve --data %s   (%s)\n\n"
               "Admin API key (shown once, store it now):\n\n  %s\n\n"
               "Operator token for GET /metrics (shown once):\n\n  %s\n",
               abs, mk, outside ? "; name it to serve and every admin command" : "",
               o->database != NULL ? o->database : abs, o->database != NULL ? "" : "/",
               o->database != NULL ? "" : STORE_SQLITE_FILE, root, tsa, tls, o->org, o->email, vkey, abs, url, key, optok);
    }
    if (fflush(stdout) != 0)
        status = EXIT_FAIL;
    free(root);
    free(tsa);
    free(tls);
    free(url);
    return status;
}

int cmd_init(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, 'd'},   {"json", no_argument, NULL, 'j'},
        {"org", required_argument, NULL, 'o'},    {"admin-email", required_argument, NULL, 'e'},
        {"listen", required_argument, NULL, 'l'}, {"master-key", required_argument, NULL, 'm'},
        {"database", required_argument, NULL, 'D'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    init_opts o = {NULL, CONFIG_DEFAULT_ORG, DEFAULT_ADMIN_EMAIL, NULL, 0};
    const char *data_opt = NULL;
    char key[APIKEY_LEN + 1] = "", optok[APIKEY_LEN + 1] = "";
    char abs[PATH_MAX];
    char *keyring_path = NULL, *vkey = NULL;
    int c, created_dir = 0, status = EXIT_FAIL;
    qk_err rc;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            data_opt = optarg;
            break;
        case 'j':
            o.json = 1;
            break;
        case 'o':
            o.org = optarg;
            break;
        case 'e':
            o.email = optarg;
            break;
        case 'l':
            o.listen = optarg;
            break;
        case 'm':
            o.master_key = optarg;
            break;
        case 'D':
            o.database = optarg;
            break;
        case 'h':
            help();
            return EXIT_OK;
        default:
            return usage_error("init", "unrecognized option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("init", "unexpected argument '%s'", argv[optind]);
    if ((o.dir = data_dir_arg(data_opt)) == NULL)
        return usage_error("init", "--data DIR is required");
    if (o.org[0] == '\0' || o.email[0] == '\0')
        return usage_error("init", "--org and --admin-email must not be empty");
    o.database = database_url(o.database, NULL);

    if ((rc = prepare_dir(o.dir, &created_dir)) != QK_OK) {
        report_err("init", rc);
        return EXIT_FAIL;
    }
    keyring_path = master_key_path(o.dir, o.master_key);
    o.keyring_path = keyring_path;
    /* O_EXCL on the master key also settles a race between two inits of the
     * same empty directory: the loser stops here and removes nothing. */
    if ((rc = keyring_create(keyring_path)) != QK_OK) {
        report_err("init", rc);
        if (created_dir)
            rmdir(o.dir);
        goto out;
    }
    if ((rc = populate(&o, keyring_path, key, optok, &vkey)) != QK_OK) {
        report_err("init", rc);
        cleanup(o.dir, created_dir);
        unlink(keyring_path); /* also when it is outside DIR */
        goto out;
    }
    if (realpath(o.dir, abs) == NULL)
        snprintf(abs, sizeof(abs), "%s", o.dir);
    status = print_result(&o, abs, key, optok, vkey);
out:
    free(vkey);
    sodium_memzero(key, sizeof(key));
    sodium_memzero(optok, sizeof(optok));
    free(keyring_path);
    return status;
}
