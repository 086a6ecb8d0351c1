#include "core/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/file_atomic.h"

/* Longest line written; longer values are cut (and marked) rather than split. */
#define LOG_MAX_LINE 4096
/* Buffered mode: bytes held before a flush is forced. */
#define LOG_BUF_SIZE (64 * 1024)

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

static void emit(log_level level, const char *text, size_t len);

void log_kv(log_level level, const char *msg, ...)
{
    if ((int)level < atomic_load(&min_level))
        return;
    line l; /* not `= {0}`: that would clear the whole 4 KB buffer per line */
    l.len = 0;
    l.cut = 0;
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
    emit(level, l.buf, l.len);
}

/* --- output: direct, or buffered with a flusher thread ---------------------- */

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t out_cv;
static pthread_t flusher;
static int buffered, flusher_stop;
static char out_buf[LOG_BUF_SIZE];
static size_t out_len;

static void write_all(const char *p, size_t n)
{
    (void)fd_write_all(STDERR_FILENO, p, n); /* nowhere to report a failing stderr */
}

/* Called with out_mu held. */
static void flush_locked(void)
{
    write_all(out_buf, out_len);
    out_len = 0;
}

static void emit(log_level level, const char *text, size_t len)
{
    pthread_mutex_lock(&out_mu);
    if (!buffered) {
        write_all(text, len);
    } else {
        if (out_len + len > sizeof(out_buf))
            flush_locked();
        memcpy(out_buf + out_len, text, len); /* len <= LOG_MAX_LINE < the buffer */
        out_len += len;
        if (level >= LOG_WARN)
            flush_locked();
    }
    pthread_mutex_unlock(&out_mu);
}

static void *flusher_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&out_mu);
    while (!flusher_stop) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        t.tv_nsec += LOG_FLUSH_MS * 1000000L;
        t.tv_sec += t.tv_nsec / 1000000000L;
        t.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&out_cv, &out_mu, &t);
        if (out_len > 0)
            flush_locked();
    }
    pthread_mutex_unlock(&out_mu);
    return NULL;
}

void log_buffered_start(void)
{
    pthread_mutex_lock(&out_mu);
    if (buffered) {
        pthread_mutex_unlock(&out_mu);
        return;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&out_cv, &ca);
    pthread_condattr_destroy(&ca);
    flusher_stop = 0;
    /* Without a flusher thread, lines are written directly as before. */
    buffered = pthread_create(&flusher, NULL, flusher_main, NULL) == 0;
    if (!buffered)
        pthread_cond_destroy(&out_cv);
    pthread_mutex_unlock(&out_mu);
}

void log_buffered_stop(void)
{
    pthread_mutex_lock(&out_mu);
    if (!buffered) {
        pthread_mutex_unlock(&out_mu);
        return;
    }
    flusher_stop = 1;
    pthread_cond_signal(&out_cv);
    pthread_mutex_unlock(&out_mu);
    pthread_join(flusher, NULL);
    pthread_mutex_lock(&out_mu);
    flush_locked();
    buffered = 0;
    pthread_cond_destroy(&out_cv);
    pthread_mutex_unlock(&out_mu);
}
