/* Structured log lines for qwickd: one logfmt line per event on stderr,
 *   ts=2024-05-01T12:00:00.123Z level=info msg="request" method=POST ...
 * A line is formatted in full and written with one write(2), so lines from
 * concurrent threads never interleave. */
#ifndef QWICKD_LOG_H
#define QWICKD_LOG_H

typedef enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

/* Events below `min` are dropped (default LOG_INFO). */
void log_set_level(log_level min);

/* Logs `msg` with key/value string pairs terminated by NULL:
 *   log_kv(LOG_INFO, "listening", "addr", "127.0.0.1", "port", "8443", NULL);
 * Values holding spaces, quotes, '=' or control bytes are quoted and escaped,
 * so a client-chosen value (a path, a filename) cannot forge a field. */
void log_kv(log_level level, const char *msg, ...) __attribute__((sentinel));

#endif
