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

/* The digits at *p into *v (at most CLI_MAX_DURATION_S), moving *p past them. */
static int take_number(const char **p, long *v)
{
    *v = 0;
    if (**p < '0' || **p > '9')
        return -1;
    for (; **p >= '0' && **p <= '9'; (*p)++)
        if ((*v = *v * 10 + (**p - '0')) > CLI_MAX_DURATION_S)
            return -1;
    return 0;
}

int cli_parse_duration(const char *text, long *secs)
{
    long total = 0, v;
    const char *p = text;
    if (take_number(&p, &v) != 0)
        return -1;
    if (*p == '\0') { /* a bare number: seconds */
        *secs = v;
        return 0;
    }
    for (;;) {
        long unit = *p == 's' ? 1 : *p == 'm' ? 60 : *p == 'h' ? 3600 : 0;
        if (unit == 0 || (total += v * unit) > CLI_MAX_DURATION_S)
            return -1;
        if (*++p == '\0')
            break;
        if (take_number(&p, &v) != 0)
            return -1;
    }
    *secs = total;
    return 0;
}

void cli_duration_text(long secs, char *buf, size_t n)
{
    long h = secs / 3600, m = secs % 3600 / 60, s = secs % 60;
    int k = 0;
    buf[0] = '\0';
    if (h > 0)
        k += snprintf(buf + k, n - (size_t)k, "%ldh", h);
    if (m > 0 && (size_t)k < n)
        k += snprintf(buf + k, n - (size_t)k, "%ldm", m);
    if ((s > 0 || secs == 0) && (size_t)k < n)
        snprintf(buf + k, n - (size_t)k, "%lds", s);
}
