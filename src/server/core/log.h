/* Structured log lines for qwickd: one logfmt line per event on stderr,
 *   ts=2024-05-01T12:00:00.123Z level=info msg="request" method=POST ...
 * A line is formatted in full and written whole (one write(2), or as part of
 * one buffered write), so lines from concurrent threads never interleave. */
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

/* Buffered mode (`qwickd serve`): info and debug lines collect in memory and
 * a flusher thread writes them every LOG_FLUSH_MS or when the buffer fills;
 * a warn or error line is written at once, after everything logged before
 * it. One write per flush instead of one per request (the per-request write
 * of the access line cost ~1.5% of the server's CPU under load). A killed
 * process loses at most the last LOG_FLUSH_MS of info lines. */
#define LOG_FLUSH_MS 100
void log_buffered_start(void);
/* Writes what is buffered, stops the flusher, back to direct writes. */
void log_buffered_stop(void);

#endif
