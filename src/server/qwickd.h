/* qwickd's administrative commands (the `qwickd` subcommands other than serve)
 * and the helpers they share. These run once per invocation from a terminal or
 * a script: allocation failure aborts (util.h), errors go to stderr. */
#ifndef QWICKD_QWICKD_H
#define QWICKD_QWICKD_H

#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "qwick/error.h"
#include "secrets.h"
#include "store.h"

#ifndef QWICK_VERSION
#define QWICK_VERSION "0.1.0"
#endif

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

int cmd_init(int argc, char **argv);
int cmd_apikey(int argc, char **argv);
int cmd_audit(int argc, char **argv);
int cmd_profile(int argc, char **argv);
/* Defined by serve.c (the HTTP server). */
int cmd_serve(int argc, char **argv);

/* "qwickd: <what>: <message>[: <detail>]" on stderr. */
void report_err(const char *what, qk_err err);
/* Usage error for `qwickd <cmd>`: message, hint to --help; returns EXIT_USAGE. */
int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* --data, else $QWICKD_DATA, else NULL. */
const char *data_dir_arg(const char *opt);

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

/* "2024-05-01T12:00:00Z", or "-" for 0. */
void format_time(int64_t t, char out[32]);
/* "2024-05-01", "2024-05-01T12:00:00Z" or "@UNIX" → unix seconds (UTC). 0 ok, -1 bad. */
int parse_time(const char *s, int64_t *out);

#endif
