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

/* Longest --wait-timeout: 30 days. */
#define CLI_MAX_DURATION_S (30L * 24 * 3600)
/* A duration: a bare number of seconds ("90"), or numbers each followed by
 * s, m or h ("90s", "10m", "2h", "1h30m"). 0 with *secs, or -1 when
 * malformed or longer than CLI_MAX_DURATION_S. */
int cli_parse_duration(const char *text, long *secs);
/* The other way round, for messages: "10m", "1h30m", "45s". */
void cli_duration_text(long secs, char *buf, size_t n);

int cmd_digest(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_sign(int argc, char **argv);
int cmd_log(int argc, char **argv);
int cmd_requests(int argc, char **argv);

#endif
