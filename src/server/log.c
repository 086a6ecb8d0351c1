#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Longest line written; longer values are cut (and marked) rather than split. */
#define LOG_MAX_LINE 4096

static atomic_int min_level = LOG_INFO;

void log_set_level(log_level min)
{
    atomic_store(&min_level, (int)min);
}

static const char *level_name(log_level l)
{
    switch (l) {
    case LOG_DEBUG:
        return "debug";
    case LOG_INFO:
        return "info";
    case LOG_WARN:
        return "warn";
    case LOG_ERROR:
        return "error";
    }
    return "info";
}

typedef struct line {
    char buf[LOG_MAX_LINE];
    size_t len;
    int cut;
} line;

static void put_raw(line *l, const char *s, size_t n)
{
    /* Keep two bytes for the newline and the terminating NUL. */
    size_t room = sizeof(l->buf) - 2 - l->len;
    if (n > room) {
        n = room;
        l->cut = 1;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static int needs_quotes(const char *v)
{
    if (*v == '\0')
        return 1;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
            return 1;
    return 0;
}

static void put_value(line *l, const char *v)
{
    if (v == NULL)
        v = "";
    if (!needs_quotes(v)) {
        put_raw(l, v, strlen(v));
        return;
    }
    put_raw(l, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            put_raw(l, esc, 2);
        } else if (*p == '\n') {
            put_raw(l, "\\n", 2);
        } else if (*p < ' ' || *p == 0x7f) {
            snprintf(esc, sizeof(esc), "\\x%02x", *p);
            put_raw(l, esc, 4);
        } else {
            put_raw(l, (const char *)p, 1);
        }
    }
    put_raw(l, "\"", 1);
}

void log_kv(log_level level, const char *msg, ...)
{
    if ((int)level < atomic_load(&min_level))
        return;
    line l = {.len = 0, .cut = 0};
    struct timespec now;
    struct tm tm;
    char ts[40];
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", now.tv_nsec / 1000000L);

    put_raw(&l, "ts=", 3);
    put_raw(&l, ts, strlen(ts));
    put_raw(&l, " level=", 7);
    put_raw(&l, level_name(level), strlen(level_name(level)));
    put_raw(&l, " msg=", 5);
    put_value(&l, msg);

    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (k == NULL)
            break;
        const char *v = va_arg(ap, const char *);
        put_raw(&l, " ", 1);
        put_raw(&l, k, strlen(k));
        put_raw(&l, "=", 1);
        put_value(&l, v);
    }
    va_end(ap);
    if (l.cut) {
        /* Make truncation visible instead of silently losing the tail. */
        static const char mark[] = " truncated=1";
        l.len = sizeof(l.buf) - 2 - (sizeof(mark) - 1);
        memcpy(l.buf + l.len, mark, sizeof(mark) - 1);
        l.len += sizeof(mark) - 1;
    }
    l.buf[l.len++] = '\n';

    const char *p = l.buf;
    size_t left = l.len;
    while (left > 0) {
        ssize_t w = write(STDERR_FILENO, p, left);
        if (w <= 0)
            break; /* nowhere to report a failing stderr */
        p += w;
        left -= (size_t)w;
    }
}
