/* libmicrohttpd glue: per-request state, bounded bodies, routing, responses.
 * The connection guard (per-address cap, deadlines) is http_guard.c. */
#include "http/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "core/log.h"
#include "core/metrics.h"
#include "api/server.h"
#include "core/util.h"

/* "req_" + 12 hex digits of the time in milliseconds + 20 random hex digits.
 * Time first, so ids sort by creation and new rows land at the right edge of
 * the request table's primary-key B-tree (a batch of commits then touches a
 * few pages instead of one random leaf per request); 80 random bits keep
 * them unique and unguessable. Access control never relies on ids. */
static void make_request_id(char out[HTTP_REQUEST_ID_SIZE])
{
    uint8_t b[16];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)(ms >> (40 - 8 * i));
    if (RAND_bytes(b + 6, 10) != 1) {
        /* The RNG failing will fail signing loudly anyway; keep ids unique
         * for the log line with a process-wide counter. */
        static atomic_uint_fast64_t fallback;
        uint64_t n = atomic_fetch_add(&fallback, 1);
        memset(b + 6, 0, 10);
        memcpy(b + 6, &n, sizeof(n));
    }
    memcpy(out, "req_", 4);
    hex_encode(b, sizeof(b), out + 4);
}

static void client_ip(struct MHD_Connection *conn, char *out, size_t cap)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(out, cap, "unknown");
    if (ci == NULL || ci->client_addr == NULL)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)cap);
}

/* Matches `path` against `pattern` segment by segment, capturing {x}. */
static int match(const char *pattern, const char *path, http_req *req)
{
    size_t np = 0;
    const char *p = pattern, *s = path;
    while (*p != '\0' && *s != '\0') {
        if (*p == '{') {
            const char *pe = strchr(p, '}');
            const char *se = strchr(s, '/');
            if (pe == NULL)
                return 0;
            size_t n = se ? (size_t)(se - s) : strlen(s);
            if (n == 0 || n >= HTTP_MAX_PARAM_LEN || np >= HTTP_MAX_PARAMS)
                return 0;
            memcpy(req->params[np], s, n);
            req->params[np][n] = '\0';
            np++;
            p = pe + 1;
            s += n;
            continue;
        }
        if (*p != *s)
            return 0;
        p++;
        s++;
    }
    if (*p != '\0' || *s != '\0')
        return 0;
    req->nparams = np;
    return 1;
}

/* Picks the route; on a miss leaves an error response in req->resp. */
static void route(const http_ctx *ctx, http_req *req)
{
    int path_known = 0;
    for (size_t i = 0; i < ctx->nroutes; i++) {
        const http_route *r = &ctx->routes[i];
        if (!match(r->pattern, req->path, req))
            continue;
        if (strcmp(r->method, req->method) == 0) {
            req->route = r;
            return;
        }
        /* Allow lists every method the path takes (RFC 9110 15.5.6). */
        size_t used = strlen(req->allow);
        snprintf(req->allow + used, sizeof(req->allow) - used, "%s%s", path_known ? ", " : "",
                 r->method);
        path_known = 1;
    }
    if (path_known)
        http_header_set(req, MHD_HTTP_HEADER_ALLOW, req->allow);
    req->nparams = 0;
    if (path_known)
        http_error(req, 405, "method_not_allowed", "%s is not allowed on this resource",
                   req->method);
    else
        http_error(req, 404, "not_found", "no such resource");
}

static const char *route_name(const http_req *req)
{
    if (req->route != NULL)
        return req->route->name;
    if (req->resp.status == 405)
        return "method_not_allowed";
    return "not_found";
}

static void add_headers(const http_ctx *ctx, const http_req *req, struct MHD_Response *r)
{
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            req->resp.content_type ? req->resp.content_type : "application/json");
    MHD_add_response_header(r, "X-Request-Id", req->id);
    /* An API answer is never a page to render, frame, sniff or cache. */
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'none'; frame-ancestors 'none'");
    MHD_add_response_header(r, "X-Frame-Options", "DENY");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    if (ctx->tls)
        MHD_add_response_header(r, "Strict-Transport-Security", "max-age=31536000");
    for (int i = 0; i < HTTP_MAX_EXTRA && req->resp.extra_name[i] != NULL; i++)
        MHD_add_response_header(r, req->resp.extra_name[i], req->resp.extra_value[i]);
}

/* A secret body handed to MHD, wiped by MHD's free callback. */
typedef struct secret_body {
    char *p;
    size_t len;
} secret_body;

static void secret_free(void *cls)
{
    secret_body *b = cls;
    OPENSSL_cleanse(b->p, b->len);
    free(b->p);
    free(b);
}

static struct MHD_Response *make_response(http_req *req)
{
    struct MHD_Response *r;
    if (req->resp.body == NULL)
        return MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (req->resp.secret) {
        secret_body *b = malloc(sizeof(*b));
        if (b == NULL)
            return NULL;
        *b = (secret_body){req->resp.body, req->resp.len};
        r = MHD_create_response_from_buffer_with_free_callback_cls(req->resp.len, req->resp.body,
                                                                   secret_free, b);
        if (r == NULL)
            free(b);
    } else {
        r = MHD_create_response_from_buffer(req->resp.len, req->resp.body, MHD_RESPMEM_MUST_FREE);
    }
    if (r != NULL)
        req->resp.body = NULL; /* MHD owns it now */
    return r;
}

static enum MHD_Result queue(const http_ctx *ctx, http_req *req)
{
    if (req->resp.status == 0)
        http_error(req, 500, "internal", "the handler produced no response");
    struct MHD_Response *r = make_response(req);
    if (r == NULL)
        return MHD_NO;
    add_headers(ctx, req, r);
    enum MHD_Result ok = MHD_queue_response(req->conn, (unsigned)req->resp.status, r);
    MHD_destroy_response(r);
    req->queued = 1;
    return ok;
}

/* Appends a chunk of body, or notes that the limit was passed (the rest is
 * read and dropped so the 413 can be sent on a well-formed exchange). */
static void take_body(http_req *req, size_t max, const char *data, size_t n)
{
    if (req->body_too_large) {
        req->discarded += n;
        return;
    }
    if (n > max - req->body_len) {
        req->body_too_large = 1;
        free(req->body);
        req->body = NULL;
        req->body_len = req->body_cap = 0;
        return;
    }
    if (req->body_len + n > req->body_cap) {
        size_t cap = req->body_cap ? req->body_cap * 2 : 1024;
        while (cap < req->body_len + n)
            cap *= 2;
        if (cap > max)
            cap = max;
        uint8_t *b = realloc(req->body, cap);
        if (b == NULL) {
            /* Treated as too large: the request cannot be held either way. */
            req->body_too_large = 1;
            return;
        }
        req->body = b;
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, n);
    req->body_len += n;
}

/* 0: within max; 1: over it but small enough to read and drop (the client
 * then reads its 413 instead of losing it to a reset while still sending);
 * 2: refuse before reading. */
static int content_length_too_large(const http_req *req, size_t max)
{
    const char *cl = http_header(req, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl == NULL)
        return 0;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(cl, &end, 10);
    /* MHD has already rejected a malformed Content-Length; be safe anyway. */
    if (errno != 0 || end == cl)
        return 2;
    if (v <= max)
        return 0;
    return v - max <= QK_HTTP_MAX_DISCARD ? 1 : 2;
}

enum MHD_Result http_access(void *cls, struct MHD_Connection *conn, const char *url,
                            const char *method, const char *version, const char *upload_data,
                            size_t *upload_data_size, void **con_cls)
{
    http_ctx *ctx = cls;
    http_req *req = *con_cls;
    (void)version;

    if (req == NULL) {
        req = calloc(1, sizeof(*req));
        if (req == NULL)
            return MHD_NO; /* closes the connection: nothing better to do */
        /* The head is in; the body's deadline starts. */
        http_guard_enter(conn, PHASE_BODY);
        req->conn = conn;
        req->srv = ctx->srv;
        req->method = method;
        req->path = url;
        clock_gettime(CLOCK_MONOTONIC, &req->start);
        make_request_id(req->id);
        client_ip(conn, req->client_ip, sizeof(req->client_ip));
        *con_cls = req;
        /* Counted before `draining` is read: with both sequentially
         * consistent, the shutdown path either sees this request in flight
         * or this request sees the drain and is refused (never neither). */
        metrics_inflight_add(ctx->srv->metrics, 1);
        if (atomic_load(&ctx->srv->draining)) {
            http_error(req, 503, "shutting_down", "the server is shutting down");
            http_header_set(req, MHD_HTTP_HEADER_CONNECTION, "close");
            return queue(ctx, req);
        }
        route(ctx, req);
        int big = req->resp.status == 0 ? content_length_too_large(req, ctx->max_body) : 0;
        if (big == 2) {
            /* Refuse before reading: MHD skips "100 Continue" and closes. */
            http_error(req, 413, "body_too_large", "request body exceeds %zu bytes", ctx->max_body);
            return queue(ctx, req);
        }
        if (big == 1)
            req->body_too_large = 1; /* read and dropped; 413 once it is in */
        return MHD_YES;
    }

    if (*upload_data_size == 0 && !req->deferred)
        http_guard_enter(conn, PHASE_NONE); /* the whole request is in */
    if (req->deferred) {
        /* MHD calls again once resumed; anything earlier is spurious. */
        if (!atomic_load(&req->resumed))
            return MHD_YES;
        req->deferred = 0;
        return queue(ctx, req);
    }
    if (req->queued) {
        /* Answered early (413, 503): whatever body still arrives is dropped. */
        *upload_data_size = 0;
        return MHD_YES;
    }

    if (*upload_data_size > 0) {
        take_body(req, ctx->max_body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        /* Enough dropped: end the exchange rather than read on for ever. */
        return req->discarded > QK_HTTP_MAX_DISCARD ? MHD_NO : MHD_YES;
    }

    if (req->body_too_large) {
        http_header_set(req, NULL, NULL);
        http_error(req, 413, "body_too_large", "request body exceeds %zu bytes", ctx->max_body);
    } else if (req->route != NULL) {
        req->route->fn(req);
        /* Only this thread writes `deferred`, so this read cannot race with
         * the worker that will resume the connection. */
        if (req->deferred)
            return MHD_YES;
    }
    return queue(ctx, req);
}

void http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                    enum MHD_RequestTerminationCode toe)
{
    http_ctx *ctx = cls;
    http_req *req = *con_cls;
    /* A kept-alive connection's next request head has head_ms from now. */
    http_guard_enter(conn, PHASE_HEAD);
    if (req == NULL)
        return;
    *con_cls = NULL;

    double ms = http_elapsed_ms(req);
    char status[16], msbuf[32];
    snprintf(status, sizeof(status), "%d", req->resp.status);
    snprintf(msbuf, sizeof(msbuf), "%.2f", ms);
    int ok = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
    log_kv(ok ? LOG_INFO : LOG_WARN, ok ? "request" : "request aborted", "method", req->method,
           "path", req->path, "status", status, "ms", msbuf, "request_id", req->id, "client_ip",
           req->client_ip, "actor", req->actor[0] ? req->actor : "-", "error",
           req->resp.error_code ? req->resp.error_code : "-", NULL);
    metrics_request(ctx->srv->metrics, route_name(req), req->method, req->resp.status, ms / 1000.0);
    if (req->resp.error_code != NULL)
        metrics_error(ctx->srv->metrics, req->resp.error_code);
    metrics_inflight_add(ctx->srv->metrics, -1);

    if (req->resp.secret && req->resp.body != NULL)
        OPENSSL_cleanse(req->resp.body, req->resp.len);
    free(req->resp.body);
    free(req->body);
    free(req);
}

const char *http_header(const http_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

int http_content_type_is(const http_req *req, const char *type)
{
    const char *ct = http_header(req, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (ct == NULL)
        return 0;
    size_t n = strlen(type);
    if (strncasecmp(ct, type, n) != 0)
        return 0;
    ct += n;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return *ct == '\0' || *ct == ';';
}

static void set_body(http_req *req, int status, const char *ctype, char *body, size_t len)
{
    if (req->resp.secret && req->resp.body != NULL)
        OPENSSL_cleanse(req->resp.body, req->resp.len);
    free(req->resp.body);
    req->resp.status = status;
    req->resp.content_type = ctype;
    req->resp.body = body;
    req->resp.len = len;
    if (status < 400)
        req->resp.error_code = NULL;
}

/* Last resort when even building an error fails: a static JSON body. */
static void set_static_500(http_req *req)
{
    static const char msg[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
    char *b = malloc(sizeof(msg));
    if (b != NULL)
        memcpy(b, msg, sizeof(msg));
    set_body(req, 500, "application/json", b, b ? sizeof(msg) - 1 : 0);
    req->resp.error_code = "internal";
}

void http_json(http_req *req, int status, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (text == NULL) {
        set_static_500(req);
        return;
    }
    set_body(req, status, "application/json", text, strlen(text));
}

void http_error(http_req *req, int status, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* json_string rejects invalid UTF-8; messages can quote client input. */
    json_t *m = json_string(msg);
    if (m == NULL)
        m = json_string("(message not valid UTF-8)");
    json_t *j = json_pack("{s:{s:s,s:o}}", "error", "code", code, "message", m);
    http_json(req, status, j);
    if (req->resp.status == status)
        req->resp.error_code = code;
}

void http_bytes(http_req *req, int status, const char *content_type, void *data, size_t len)
{
    set_body(req, status, content_type, data, len);
}

void http_mark_secret(http_req *req)
{
    req->resp.secret = 1;
}

void http_header_set(http_req *req, const char *name, const char *value)
{
    if (name == NULL) {
        memset(req->resp.extra_name, 0, sizeof(req->resp.extra_name));
        return;
    }
    for (int i = 0; i < HTTP_MAX_EXTRA; i++)
        if (req->resp.extra_name[i] == NULL) {
            req->resp.extra_name[i] = name;
            req->resp.extra_value[i] = value;
            return;
        }
}

void http_suspend(http_req *req)
{
    req->deferred = 1;
    MHD_suspend_connection(req->conn);
}

void http_resume(http_req *req)
{
    atomic_store(&req->resumed, 1);
    MHD_resume_connection(req->conn);
}

double http_elapsed_ms(const http_req *req)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - req->start.tv_sec) * 1e3 +
           (double)(now.tv_nsec - req->start.tv_nsec) / 1e6;
}

const struct sockaddr *http_client_addr(const http_req *req)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    return ci != NULL ? ci->client_addr : NULL;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t http_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    char *r = s, *w = s;
    (void)cls;
    (void)c;
    while (*r != '\0') {
        int hi, lo;
        if (r[0] == '%' && (hi = hexval(r[1])) >= 0 && (lo = hexval(r[2])) >= 0 && (hi | lo) != 0) {
            *w++ = (char)(hi * 16 + lo);
            r += 3;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
    return (size_t)(w - s);
}
