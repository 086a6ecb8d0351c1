/* qwickd's administrative commands (the `qwickd` subcommands other than serve)
 * and the helpers they share. These run once per invocation from a terminal or
 * a script: allocation failure aborts (util.h), errors go to stderr. */
#ifndef QWICKD_QWICKD_H
#define QWICKD_QWICKD_H

#include <stdint.h>
#include <stdio.h>

#include "auth/apikey.h"
#include "config/config.h"
#include "qwick/error.h"
#include "core/secrets.h"
#include "store/store.h"

#ifndef QWICK_VERSION
#define QWICK_VERSION "0.1.0"
#endif

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

int cmd_init(int argc, char **argv);
int cmd_apikey(int argc, char **argv);
int cmd_audit(int argc, char **argv);
int cmd_operator(int argc, char **argv);
#define API_MAX_KEY_NAME_CLI 64
/* A new operator token (qo_...): stored hashed, returned once. */
qk_err operator_token_issue(qk_store *st, const char *name, char token[APIKEY_LEN + 1],
                            int64_t *id);
int cmd_profile(int argc, char **argv);
int cmd_keyring(int argc, char **argv);
int cmd_org(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_queue(int argc, char **argv);
int cmd_policy(int argc, char **argv);
/* Defined by serve.c (the HTTP server). */
int cmd_serve(int argc, char **argv);

/* "qwickd: <what>: <message>[: <detail>]" on stderr. */
void report_err(const char *what, qk_err err);
/* Usage error for `qwickd <cmd>`: message, hint to --help; returns EXIT_USAGE. */
int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* --data, else $QWICKD_DATA, else NULL. */
const char *data_dir_arg(const char *opt);

/* Where the master key (the keyring file, secrets.h) is, first match:
 * `opt` (--master-key FILE), $QWICKD_MASTER_KEY,
 * $CREDENTIALS_DIRECTORY/qwickd-master-key when that file exists (systemd's
 * LoadCredential=), else DIR/master.key. A key kept outside the data
 * directory is what makes a copy of the directory useless without it; the
 * directory records nothing about where the key is. Heap string. */
#define MASTER_KEY_ENV "QWICKD_MASTER_KEY"
#define MASTER_KEY_CREDENTIAL "qwickd-master-key"
char *master_key_path(const char *dir, const char *opt);
/* keyring_load at master_key_path(dir, opt). When no key was named and
 * DIR/master.key does not exist, the message says where else it may be. */
qk_err master_key_load(const char *dir, const char *opt, qk_keyring **out);

/* Keeps the commands that must not overlap apart: `serve` holds DIR shared
 * while it runs, `keyring rotate|retire` exclusively (flock on the directory,
 * never waiting). *fd is the lock, released by close(); QK_ERR_IO when the
 * lock is held the other way. */
qk_err data_dir_lock(const char *dir, int exclusive, int *fd);

/* Where the store is: `opt` (--database URL), else $QWICKD_DATABASE_URL, else
 * qwickd.json's "database", else NULL (SQLite in the data directory). */
#define DATABASE_URL_ENV "QWICKD_DATABASE_URL"
const char *database_url(const char *opt, const qwickd_config *cfg);
/* The server's own PostgreSQL login (init creates it), sealed under the
 * master key in DIR/database.sealed. */
#define DATABASE_CREDENTIALS_FILE "database.sealed"
#define DATABASE_CREDENTIALS_AAD "database_credentials"
qk_err database_credentials_write(const char *dir, const qk_keyring *kr, const char *user,
                                  const char *password);
/* Opens the data directory's store: SQLite in DIR when `url` is NULL, else
 * PostgreSQL at `url`, as the server's own role when `kr` is given (serve),
 * else as the URL's user (the owner: admin commands). `conns`: pool size. */
qk_err store_open_dir(const char *dir, const char *url, const qk_keyring *kr, int conns,
                      qk_store **out);

/* An initialised data directory opened for an admin command. */
typedef struct admin_ctx {
    const char *dir;
    qwickd_config cfg;
    qk_store *store;
    int64_t org;
    const char *org_name;
} admin_ctx;

/* Loads the config, opens the store and resolves the org (NULL: the config's
 * default_org). Refuses a directory that `qwickd init` has not completed. */
qk_err admin_open(const char *dir, const char *org_name, admin_ctx *out);
void admin_close(admin_ctx *a);
/* Records an administrative action in the org's audit chain. */
qk_err admin_audit(admin_ctx *a, const char *action, const char *detail);
/* An entry for a change an admin command makes (the store commits it with
 * the change: store.h). */
void admin_audit_init(admin_ctx *a, const char *action, store_audit *out);

/* "2024-05-01T12:00:00Z", or "-" for 0. */
void format_time(int64_t t, char out[32]);
/* "2024-05-01", "2024-05-01T12:00:00Z" or "@UNIX" → unix seconds (UTC). 0 ok, -1 bad. */
int parse_time(const char *s, int64_t *out);

#endif
