/* qwickd's HTTP layer on libmicrohttpd: request bodies with a named maximum,
 * a routing table, JSON/error responses with security headers, per-request
 * logging and metrics, suspend/resume for handlers that wait on I/O, and the
 * connection guard (a per-address connection cap and deadlines for the TLS
 * handshake, the request head and the request body).
 *
 * Handlers run on MHD's pool threads. A handler fills req->resp, or calls
 * http_suspend() and arranges for another thread to fill req->resp and call
 * http_resume() exactly once (the pool thread is then free for other
 * connections while, e.g., a group commit completes). */
#ifndef QWICKD_HTTP_H
#define QWICKD_HTTP_H

#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Largest request body accepted by default; larger ones get 413
 * body_too_large. A signing request is a digest and a little metadata, well
 * under 4 KiB. qwickd.json's limits.max_body_bytes may change it, up to
 * QK_HTTP_MAX_BODY_LIMIT. */
#define QK_HTTP_MAX_BODY (64u * 1024u)
#define QK_HTTP_MAX_BODY_LIMIT (1024u * 1024u)
/* A body without Content-Length that passes the limit is read and dropped so
 * the client still gets its 413, but only this much more: then the
 * connection is closed. */
#define QK_HTTP_MAX_DISCARD (1024u * 1024u)
#define HTTP_MAX_PARAMS 2
#define HTTP_MAX_PARAM_LEN 128
/* "req_" + 32 hex digits + NUL */
#define HTTP_REQUEST_ID_SIZE 37

struct server;
struct metrics;

#define HTTP_MAX_EXTRA 3

typedef struct http_resp {
    int status;               /* 0 until a handler answers */
    const char *content_type; /* static string */
    char *body;               /* heap, owned; may be NULL for an empty body */
    size_t len;
    const char *error_code; /* static string when the response is an error */
    /* More headers (Allow, WWW-Authenticate, Location, Retry-After): static
     * strings, or strings of the request (http_req.allow, .location). */
    const char *extra_name[HTTP_MAX_EXTRA];
    const char *extra_value[HTTP_MAX_EXTRA];
    int secret; /* body holds a secret (a new API key): wiped when freed */
} http_resp;

typedef struct http_route http_route;

typedef struct http_req {
    struct MHD_Connection *conn;
    struct server *srv;
    const char *method; /* owned by MHD, valid for the request */
    const char *path;   /* owned by MHD, without the query string */
    const http_route *route;
    char params[HTTP_MAX_PARAMS][HTTP_MAX_PARAM_LEN]; /* {placeholders} in route order */
    size_t nparams;
    uint8_t *body;
    size_t body_len;
    size_t body_cap;
    size_t discarded;
    int body_too_large;
    char id[HTTP_REQUEST_ID_SIZE];
    char client_ip[INET6_ADDRSTRLEN];
    char actor[32];       /* "apikey:12" once authenticated, for the log line */
    char allow[48];       /* a 405's Allow header: the path's methods */
    char retry_after[16]; /* a 429's Retry-After header: seconds */
    char location[80];    /* a 202's Location header */
    struct timespec start;
    int deferred;       /* suspended by the handler; written by the pool thread only */
    atomic_int resumed; /* set by the thread that filled resp */
    int queued;
    http_resp resp;
} http_req;

typedef void (*http_handler)(http_req *req);

struct http_route {
    const char *method;  /* "GET", "POST", "DELETE" */
    const char *pattern; /* "/api/v1/keys/{id}": {x} matches one non-empty segment */
    const char *name;    /* metrics/log label */
    http_handler fn;
};

/* The MHD callbacks, with an http_ctx as their closure. */
typedef struct http_ctx {
    struct server *srv;
    const http_route *routes;
    size_t nroutes;
    int tls;         /* adds Strict-Transport-Security */
    size_t max_body; /* <= QK_HTTP_MAX_BODY_LIMIT */
} http_ctx;

/* MHD_OPTION_UNESCAPE_CALLBACK: %XX decoding of the path and query in place,
 * except %00, which stays as the three characters: a decoded NUL would cut the
 * C string the router matches ("/keys/1%00x" acting on key 1). */
size_t http_unescape(void *cls, struct MHD_Connection *c, char *s);

enum MHD_Result http_access(void *cls, struct MHD_Connection *conn, const char *url,
                            const char *method, const char *version, const char *upload_data,
                            size_t *upload_data_size, void **con_cls);
void http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                    enum MHD_RequestTerminationCode toe);

/* The connection guard: admission by client address and deadlines that an
 * idle timeout cannot give (a client trickling a byte every few seconds is
 * never idle). Per connection:
 *   TLS handshake  from accept to the client's Finished: handshake_ms;
 *   request head   from then (plain HTTP: from accept; a kept-alive
 *                  connection: from the previous response) to the end of the
 *                  headers: head_ms;
 *   request body   from the end of the headers to the last body byte: body_ms.
 * While a handler works (or the connection is suspended) no deadline runs;
 * the idle timeout (MHD_OPTION_CONNECTION_TIMEOUT) still covers the rest. A
 * sweeper thread shuts down (shutdown(2)) connections past their deadline,
 * and libmicrohttpd then closes them as closed by the peer.
 * A client address (ratelimit_key: IPv4 address, IPv6 /64) holds at most
 * max_per_ip connections; more are refused at accept. */
typedef struct http_guard http_guard;
/* What a connection waits for, in the guard's terms: nothing of the client
 * while a handler has the request. http.c moves each connection through
 * the phases; the guard enforces their deadlines. */
enum guard_phase { PHASE_NONE = 0, PHASE_HANDSHAKE = 1, PHASE_HEAD = 2, PHASE_BODY = 3 };
void http_guard_enter(struct MHD_Connection *conn, enum guard_phase p);
typedef struct http_guard_opts {
    unsigned max_per_ip;
    size_t max_connections; /* sizes the address table */
    /* 0: no deadline */
    unsigned handshake_ms, head_ms, body_ms;
    int tls;                 /* handshake deadline (GnuTLS hook) */
    struct metrics *metrics; /* counts refusals and deadline closes */
} http_guard_opts;

/* Starts the sweeper thread; NULL when out of memory or threads. */
http_guard *http_guard_new(const http_guard_opts *o);
/* Stops the sweeper and frees the guard: after MHD_stop_daemon. */
void http_guard_free(http_guard *g);
/* MHD_AcceptPolicyCallback, with the guard as its closure. */
enum MHD_Result http_guard_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen);
/* MHD_OPTION_NOTIFY_CONNECTION's callback, with the guard as its closure. */
void http_guard_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                       enum MHD_ConnectionNotificationCode toe);

/* The client's socket address (NULL when unknown). */
const struct sockaddr *http_client_addr(const http_req *req);

/* A request header (case-insensitive name), or NULL. */
const char *http_header(const http_req *req, const char *name);
/* True when the Content-Type's media type is `type` (parameters ignored). */
int http_content_type_is(const http_req *req, const char *type);

/* Response builders. http_json takes the reference to `j`. */
void http_json(http_req *req, int status, json_t *j);
void http_error(http_req *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Adds a response header (both strings static, or strings of the request);
 * at most HTTP_MAX_EXTRA, later ones are dropped. name NULL: clears them. */
void http_header_set(http_req *req, const char *name, const char *value);
/* Takes ownership of `data` (malloc'd). */
void http_bytes(http_req *req, int status, const char *content_type, void *data, size_t len);

/* Marks the response body as secret: it is wiped, not just freed, once sent. */
void http_mark_secret(http_req *req);

/* Parks the connection until http_resume(); call from the handler, before
 * handing the request to another thread. */
void http_suspend(http_req *req);
/* From any thread, after req->resp is filled. */
void http_resume(http_req *req);

/* Milliseconds since the request's first byte of headers was handled. */
double http_elapsed_ms(const http_req *req);

#endif
