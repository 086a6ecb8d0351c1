/* Settings resolution for the CLI: flags > environment > config file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "cli.h"
#include "config.h"

/* A config file is a handful of short strings; anything bigger is a mistake. */
#define CONFIG_MAX_SIZE (64 * 1024)

static void free_secret(char *s)
{
    if (s != NULL) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

void cli_config_free(cli_config *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->server);
    free_secret(cfg->api_key);
    free(cfg->cacert);
    free(cfg->profile);
    free(cfg->log_key);
    memset(cfg, 0, sizeof(*cfg));
}

char *cli_take_secret_arg(char *arg)
{
    char *copy = xstrdup(arg);
    /* Keep the length so ps output stays readable, hide the value. */
    memset(arg, 'x', strlen(arg));
    return copy;
}

/* $XDG_CONFIG_HOME/qwick/config.json, else $HOME/.config/qwick/config.json. */
static char *config_path(void)
{
    const char *xdg = getenv("XDG_CONFIG_HOME");
    const char *home = getenv("HOME");
    char *p = NULL;
    size_t n;

    /* The XDG spec says relative values are invalid and must be ignored. */
    if (xdg != NULL && xdg[0] == '/') {
        n = strlen(xdg) + sizeof("/qwick/config.json");
        p = xmalloc(n);
        snprintf(p, n, "%s/qwick/config.json", xdg);
    } else if (home != NULL && home[0] != '\0') {
        n = strlen(home) + sizeof("/.config/qwick/config.json");
        p = xmalloc(n);
        snprintf(p, n, "%s/.config/qwick/config.json", home);
    }
    return p;
}

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* Reads one optional string key; -1 if present with the wrong type. */
static int file_string(const char *path, json_t *root, const char *key, const char **out)
{
    json_t *v = json_object_get(root, key);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0) {
        cli_msg("%s: \"%s\" must be a non-empty string", path, key);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

static char *resolve_relative(const char *cfgpath, const char *p)
{
    if (p[0] == '/')
        return xstrdup(p);
    const char *slash = strrchr(cfgpath, '/');
    size_t dlen = slash != NULL ? (size_t)(slash - cfgpath) : 0;
    size_t n = dlen + 1 + strlen(p) + 1;
    char *r = xmalloc(n);
    snprintf(r, n, "%.*s/%s", (int)dlen, cfgpath, p);
    return r;
}

/* Loads the config file if there is one. *root stays NULL when it does not exist. */
static int load_file(const char *path, json_t **root)
{
    struct stat st;
    json_error_t jerr;
    json_t *j = NULL;
    int rc = QK_EXIT_USAGE;

    *root = NULL;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return QK_EXIT_OK;
        cli_msg("%s: %s", path, strerror(errno));
        return QK_EXIT_USAGE;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > CONFIG_MAX_SIZE) {
        cli_msg("%s: not a regular file of at most %d bytes", path, CONFIG_MAX_SIZE);
        return QK_EXIT_USAGE;
    }
    /* Read it ourselves so the buffer holding the key can be wiped. */
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        cli_msg("%s: %s", path, strerror(errno));
        return QK_EXIT_USAGE;
    }
    char *text = xmalloc((size_t)st.st_size + 1);
    size_t len = fread(text, 1, (size_t)st.st_size, f);
    int rd_err = ferror(f);
    fclose(f);
    if (rd_err) {
        cli_msg("%s: read error", path);
        OPENSSL_cleanse(text, len);
        free(text);
        return QK_EXIT_USAGE;
    }
    j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    OPENSSL_cleanse(text, len);
    free(text);
    if (j == NULL) {
        cli_msg("%s:%d: %s", path, jerr.line, jerr.text);
        goto out;
    }
    if (!json_is_object(j)) {
        cli_msg("%s: expected a JSON object", path);
        goto out;
    }
    /* Like ssh with private keys: say so when others can read the API key. */
    if (json_object_get(j, "api_key") != NULL && (st.st_mode & 077) != 0)
        cli_msg("warning: %s holds an API key and is readable by others (chmod 600 it)", path);
    *root = j;
    j = NULL;
    rc = QK_EXIT_OK;
out:
    json_decref(j);
    return rc;
}

int cli_config_load(const cli_config *flags, cli_config *out)
{
    int rc = QK_EXIT_USAGE;
    char *path = config_path();
    json_t *root = NULL;
    const char *f_server = NULL, *f_key = NULL, *f_cacert = NULL, *f_profile = NULL,
               *f_log_key = NULL;
    const char *v;

    memset(out, 0, sizeof(*out));
    if (path != NULL && load_file(path, &root) != QK_EXIT_OK)
        goto out;
    if (root != NULL && (file_string(path, root, "server", &f_server) != 0 ||
                         file_string(path, root, "api_key", &f_key) != 0 ||
                         file_string(path, root, "cacert", &f_cacert) != 0 ||
                         file_string(path, root, "profile", &f_profile) != 0 ||
                         file_string(path, root, "log_key", &f_log_key) != 0))
        goto out;

    if ((v = flags->server) != NULL || (v = env_nonempty("QWICK_SERVER")) != NULL ||
        (v = f_server) != NULL) {
        out->server = xstrdup(v);
        size_t n = strlen(out->server);
        while (n > 0 && out->server[n - 1] == '/')
            out->server[--n] = '\0';
    }
    if ((v = flags->api_key) != NULL || (v = env_nonempty("QWICK_API_KEY")) != NULL ||
        (v = f_key) != NULL)
        out->api_key = xstrdup(v);
    if ((v = flags->cacert) != NULL || (v = env_nonempty("QWICK_CACERT")) != NULL)
        out->cacert = xstrdup(v);
    else if (f_cacert != NULL)
        out->cacert = resolve_relative(path, f_cacert);
    if ((v = flags->profile) != NULL || (v = env_nonempty("QWICK_PROFILE")) != NULL ||
        (v = f_profile) != NULL)
        out->profile = xstrdup(v);
    else
        out->profile = xstrdup("default");
    if ((v = flags->log_key) != NULL || (v = env_nonempty("QWICK_LOG_KEY")) != NULL ||
        (v = f_log_key) != NULL)
        out->log_key = xstrdup(v);

    if (out->server == NULL || out->server[0] == '\0') {
        cli_msg("no server configured: use --server, QWICK_SERVER or \"server\" in %s",
                path != NULL ? path : "the config file");
        goto out;
    }
    if (out->api_key == NULL || out->api_key[0] == '\0') {
        cli_msg("no API key configured: use QWICK_API_KEY, \"api_key\" in %s or --api-key",
                path != NULL ? path : "the config file");
        goto out;
    }
    rc = QK_EXIT_OK;
out:
    if (rc != QK_EXIT_OK)
        cli_config_free(out);
    /* The parsed file may hold the API key: wipe jansson's copy too. */
    if (f_key != NULL)
        OPENSSL_cleanse((char *)f_key, strlen(f_key));
    json_decref(root);
    free(path);
    return rc;
}
