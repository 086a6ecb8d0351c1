/* Helpers shared by qwickd's administrative commands. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "admin/qwickd.h"
#include "core/util.h"

void report_err(const char *what, qk_err err)
{
    const char *d = qk_error_detail();
    if (d != NULL && d[0] != '\0')
        fprintf(stderr, "qwickd: %s: %s: %s\n", what, qk_strerror(err), d);
    else
        fprintf(stderr, "qwickd: %s: %s\n", what, qk_strerror(err));
}

int usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "qwickd %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'qwickd %s --help'.\n", cmd);
    return EXIT_USAGE;
}

const char *data_dir_arg(const char *opt)
{
    if (opt != NULL && opt[0] != '\0')
        return opt;
    const char *env = getenv("QWICKD_DATA");
    return env != NULL && env[0] != '\0' ? env : NULL;
}

char *master_key_path(const char *dir, const char *opt)
{
    if (opt != NULL && opt[0] != '\0')
        return xstrdup(opt);
    const char *env = getenv(MASTER_KEY_ENV);
    if (env != NULL && env[0] != '\0')
        return xstrdup(env);
    const char *creds = getenv("CREDENTIALS_DIRECTORY");
    if (creds != NULL && creds[0] != '\0') {
        char *p = path_join(creds, MASTER_KEY_CREDENTIAL);
        if (access(p, F_OK) == 0)
            return p;
        free(p);
    }
    return path_join(dir, KEYRING_FILE);
}

qk_err master_key_load(const char *dir, const char *opt, qk_keyring **out)
{
    char *path = master_key_path(dir, opt);
    char *dflt = path_join(dir, KEYRING_FILE);
    qk_err rc;

    *out = NULL;
    if (strcmp(path, dflt) == 0 && access(path, F_OK) != 0 && errno == ENOENT)
        rc = qk_fail(QK_ERR_IO,
                     "no master key: %s does not exist, and none was named (--master-key FILE, "
                     "$" MASTER_KEY_ENV ", or the systemd credential " MASTER_KEY_CREDENTIAL
                     "); a data directory whose key is kept elsewhere cannot be opened without it",
                     path);
    else
        rc = keyring_load(path, out);
    free(dflt);
    free(path);
    return rc;
}

qk_err data_dir_lock(const char *dir, int exclusive, int *fd)
{
    *fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (*fd < 0)
        return qk_fail(QK_ERR_IO, "%s: %s", dir, strerror(errno));
    if (flock(*fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0)
        return QK_OK;
    int e = errno;
    close(*fd);
    *fd = -1;
    if (e == EWOULDBLOCK && exclusive)
        return qk_fail(QK_ERR_IO, "%s is in use by a running `qwickd serve`: stop it first", dir);
    if (e == EWOULDBLOCK)
        return qk_fail(QK_ERR_IO, "%s is locked by a `qwickd keyring` rotation or retirement", dir);
    return qk_fail(QK_ERR_IO, "flock %s: %s", dir, strerror(e));
}

const char *database_url(const char *opt, const qwickd_config *cfg)
{
    if (opt != NULL && opt[0] != '\0')
        return opt;
    const char *env = getenv(DATABASE_URL_ENV);
    if (env != NULL && env[0] != '\0')
        return env;
    return cfg != NULL ? cfg->database : NULL;
}

qk_err database_credentials_write(const char *dir, const qk_keyring *kr, const char *user,
                                  const char *password)
{
    qk_buf sealed = {NULL, 0};
    char *path = path_join(dir, DATABASE_CREDENTIALS_FILE);
    json_t *j = json_pack("{s:s,s:s}", "user", user, "password", password);
    char *text = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    qk_err rc = text == NULL ? qk_fail(QK_ERR_NOMEM, "database credentials")
                             : secrets_seal(kr, (qk_slice){(const uint8_t *)text, strlen(text)},
                                            DATABASE_CREDENTIALS_AAD, &sealed);
    if (rc == QK_OK)
        rc = file_create_excl(path, (qk_slice){sealed.data, sealed.len}, 0600);
    if (text != NULL)
        sodium_memzero(text, strlen(text));
    free(text);
    json_decref(j);
    qk_buf_free(&sealed);
    free(path);
    return rc;
}

/* The sealed login of the server's role. */
static qk_err database_credentials_read(const char *dir, const qk_keyring *kr, char **user,
                                        char **password)
{
    qk_buf sealed = {NULL, 0}, plain = {NULL, 0};
    char *path = path_join(dir, DATABASE_CREDENTIALS_FILE);
    json_t *j = NULL;
    qk_err rc = file_read_all(path, 64 * 1024, &sealed);
    *user = *password = NULL;
    if (rc == QK_OK)
        rc = secrets_open(kr, (qk_slice){sealed.data, sealed.len}, DATABASE_CREDENTIALS_AAD,
                          &plain);
    if (rc == QK_OK) {
        j = json_loadb((const char *)plain.data, plain.len, 0, NULL);
        const char *u = json_string_value(json_object_get(j, "user"));
        const char *p = json_string_value(json_object_get(j, "password"));
        if (u == NULL || p == NULL) {
            rc = qk_fail(QK_ERR_INVALID_ARG, "%s: not the server's database login", path);
        } else {
            *user = xstrdup(u);
            *password = xstrdup(p);
        }
    }
    if (plain.data != NULL)
        sodium_memzero(plain.data, plain.len);
    if (j != NULL) {
        char *p = (char *)json_string_value(json_object_get(j, "password"));
        if (p != NULL)
            sodium_memzero(p, strlen(p));
    }
    json_decref(j);
    qk_buf_free(&plain);
    qk_buf_free(&sealed);
    free(path);
    return rc;
}

qk_err store_open_dir(const char *dir, const char *url, const qk_keyring *kr, int conns,
                      qk_store **out)
{
    char *user = NULL, *password = NULL;
    qk_err rc;
    *out = NULL;
    if (url == NULL)
        return store_sqlite_open(dir, out);
    if (kr != NULL && (rc = database_credentials_read(dir, kr, &user, &password)) != QK_OK)
        return rc;
    rc = store_pg_open(url, user, password, conns, out);
    if (password != NULL)
        sodium_memzero(password, strlen(password));
    free(user);
    free(password);
    return rc;
}

qk_err admin_open(const char *dir, const char *org_name, admin_ctx *out)
{
    qk_err rc;
    char *marker = path_join(dir, CONFIG_FILE);
    struct stat st;
    int found = 0;

    memset(out, 0, sizeof(*out));
    out->dir = dir;
    /* qwickd.json is written last by init: without it, this is not (or not
     * yet) a data directory, and opening the store would create a database. */
    if (stat(marker, &st) != 0) {
        rc = qk_fail(QK_ERR_IO, "%s is not an initialised qwickd data directory (%s: %s)", dir,
                     CONFIG_FILE, strerror(errno));
        free(marker);
        return rc;
    }
    free(marker);
    if ((rc = config_load(dir, &out->cfg)) != QK_OK)
        goto fail;
    if ((rc = store_open_dir(dir, database_url(NULL, &out->cfg), NULL, 2, &out->store)) != QK_OK)
        goto fail;
    out->org_name = org_name != NULL ? org_name : out->cfg.default_org;
    if ((rc = STORE_CALL(out->store, org_find, out->org_name, &out->org, &found)) != QK_OK) {
        if (!found && rc == QK_ERR_INVALID_ARG)
            rc = qk_fail(QK_ERR_INVALID_ARG, "no org named '%s'", out->org_name);
        goto fail;
    }
    return QK_OK;
fail:
    admin_close(out);
    return rc;
}

void admin_close(admin_ctx *a)
{
    if (a == NULL)
        return;
    if (a->store != NULL)
        a->store->ops->close(a->store);
    config_free(&a->cfg);
    memset(a, 0, sizeof(*a));
}

void admin_audit_init(admin_ctx *a, const char *action, store_audit *out)
{
    memset(out, 0, sizeof(*out));
    out->org_id = a->org;
    out->actor = "cli";
    out->action = action;
    out->outcome = AUDIT_ALLOWED;
}

qk_err admin_audit(admin_ctx *a, const char *action, const char *detail)
{
    store_audit au = {
        .org_id = a->org,
        .actor = "cli",
        .action = action,
        .outcome = AUDIT_ALLOWED,
        .detail = detail,
    };
    return STORE_CALL(a->store, audit_append, &au);
}

void format_time(int64_t t, char out[32])
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (t == 0 || gmtime_r(&tt, &tm) == NULL) {
        strcpy(out, "-");
        return;
    }
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int parse_time(const char *s, int64_t *out)
{
    struct tm tm;
    const char *end;
    char *e = NULL;

    if (s[0] == '@') {
        errno = 0;
        long long v = strtoll(s + 1, &e, 10);
        if (errno != 0 || e == s + 1 || *e != '\0' || v <= 0)
            return -1;
        *out = v;
        return 0;
    }
    memset(&tm, 0, sizeof(tm));
    end = strptime(s, "%Y-%m-%d", &tm);
    if (end == NULL)
        return -1;
    if (*end == 'T' || *end == ' ') {
        end = strptime(end + 1, "%H:%M:%S", &tm);
        if (end == NULL)
            return -1;
        if (*end == 'Z')
            end++;
    }
    if (*end != '\0')
        return -1;
    time_t t = timegm(&tm);
    if (t == (time_t)-1 || t <= 0)
        return -1;
    *out = (int64_t)t;
    return 0;
}
