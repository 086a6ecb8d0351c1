#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

const char *qk_progname = "qwick";

void cli_err(const char *prefix, qk_err err)
{
    const char *d = qk_error_detail();
    if (d != NULL && d[0] != '\0')
        fprintf(stderr, "%s: %s: %s: %s\n", qk_progname, prefix, qk_strerror(err), d);
    else
        fprintf(stderr, "%s: %s: %s\n", qk_progname, prefix, qk_strerror(err));
}

void cli_msg(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", qk_progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s %s: ", qk_progname, cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s %s --help'.\n", qk_progname, cmd);
    return QK_EXIT_USAGE;
}
