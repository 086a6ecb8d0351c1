/* Prometheus metrics for qwickd (text exposition format 0.0.4).
 *
 * Every family is a small table of labelled series behind its own mutex:
 * a request touches two or three of them once, which costs far less than the
 * RSA operation it wraps, and keeps the code obviously correct. Each family
 * holds at most METRICS_MAX_SERIES label sets; further ones are folded into a
 * series labelled "other" so a client cannot grow memory without bound. */
#ifndef QWICKD_METRICS_H
#define QWICKD_METRICS_H

#include <stddef.h>

#define METRICS_MAX_SERIES 256
#define METRICS_MAX_LABEL 64

typedef struct metrics metrics;

metrics *metrics_new(void);
void metrics_free(metrics *m);

/* One finished HTTP request: route is the routing table's name ("sign_digest",
 * "not_found"...), never the raw path, so label cardinality stays bounded. */
void metrics_request(metrics *m, const char *route, const char *method, int status, double seconds);
/* One signature returned. */
void metrics_signature(metrics *m, const char *profile, const char *algorithm, const char *format);
/* One error response, by its JSON error code. */
void metrics_error(metrics *m, const char *code);
/* One RFC 3161 response, by PKIStatus (0 granted, 2 rejection...). */
void metrics_timestamp(metrics *m, int status);
/* One connection refused or closed by the connection guard: "per_ip_limit",
 * "handshake_deadline", "head_deadline", "body_deadline". */
void metrics_connection_dropped(metrics *m, const char *reason);
/* Requests currently being handled (gauge). */
void metrics_inflight_add(metrics *m, int delta);
long metrics_inflight(metrics *m);

/* The exposition text on the heap (NUL-terminated); NULL on allocation failure. */
char *metrics_render(metrics *m, size_t *len);

#endif
