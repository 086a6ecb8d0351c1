/* Shared helpers of the qwick CLI. Allocation failure aborts here (see docs/HACKING.md). */
#ifndef QWICK_CLI_H
#define QWICK_CLI_H

#include <stdarg.h>
#include <stddef.h>

#include "qwick/error.h"
#include "common/xalloc.h"
#include "common/hex.h"

#define QK_EXIT_OK 0
#define QK_EXIT_FAIL 1
#define QK_EXIT_USAGE 2

extern const char *qk_progname;

/* "qwick: <prefix>: <qk message>[: <detail>]" on stderr. */
void cli_err(const char *prefix, qk_err err);
/* "qwick: <message>" on stderr. */
void cli_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Usage error: message, hint to --help, returns QK_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

int cmd_digest(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_sign(int argc, char **argv);
int cmd_log(int argc, char **argv);

#endif
