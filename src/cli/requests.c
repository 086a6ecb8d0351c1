/* The signing requests API and the wait for a queued request (requests.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cli.h"
#include "requests.h"

int requests_id_valid(const char *id)
{
    if (id == NULL || strlen(id) != REQUESTS_ID_LEN || strncmp(id, "req_", 4) != 0)
        return 0;
    for (const char *p = id + 4; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}

static const char *const waiting_statuses[] = {"QUEUED", "PENDING_APPROVAL", "PROCESSING"};
static const char *const final_statuses[] = {"SIGNED", "FAILED", "CANCELLED", "REJECTED"};

static int in_list(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; s != NULL && i < n; i++)
        if (strcmp(s, list[i]) == 0)
            return 1;
    return 0;
}

int requests_status_final(const char *status)
{
    return in_list(status, final_statuses, sizeof(final_statuses) / sizeof(final_statuses[0]));
}

int requests_status_known(const char *status)
{
    return requests_status_final(status) ||
           in_list(status, waiting_statuses,
                   sizeof(waiting_statuses) / sizeof(waiting_statuses[0]));
}

/* A status is an upper-case word: anything else (empty, escapes for the
 * terminal, a number) is a malformed answer, not a new status to wait on. */
static int status_well_formed(const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    if (n == 0 || n > 32)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || *s == '_'))
            return 0;
    return 1;
}

const char *requests_status_of(json_t *req)
{
    const char *s = json_string_value(json_object_get(req, "status"));
    return status_well_formed(s) ? s : NULL;
}

/* --- the calls -------------------------------------------------------------- */

int requests_get(client *c, const char *id, client_answer *ans, char **err)
{
    char path[64];
    if (!requests_id_valid(id)) {
        memset(ans, 0, sizeof(*ans));
        *err = xstrdup("not a request id");
        return -1;
    }
    snprintf(path, sizeof(path), "/api/v1/sign/requests/%s", id);
    return client_call(c, "GET", path, NULL, ans, err);
}

/* The cursor is the server's, opaque: percent-encoded into the query. */
static char *query_escape(const char *s)
{
    static const char hexd[] = "0123456789ABCDEF";
    char *out = xmalloc(strlen(s) * 3 + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hexd[*p >> 4];
            *o++ = hexd[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

int requests_list_page(client *c, const char *status, int limit, const char *cursor, json_t **page,
                       char **err)
{
    char *cur = cursor != NULL ? query_escape(cursor) : NULL;
    /* status is one of the known names (the caller checked), so needs no escaping. */
    char *path =
        xasprintf("/api/v1/sign/requests?limit=%d%s%s%s%s", limit, status ? "&status=" : "",
                  status ? status : "", cur ? "&cursor=" : "", cur ? cur : "");
    int rc = client_get_json(c, path, page, err);
    if (rc == 0 && !json_is_array(json_object_get(*page, "requests"))) {
        *err = xstrdup("server: the list has no \"requests\" array");
        json_decref(*page);
        *page = NULL;
        rc = -1;
    }
    free(path);
    free(cur);
    return rc;
}

int requests_cancel(client *c, const char *id, json_t **out, char **err)
{
    char path[64];
    client_answer ans;
    *out = NULL;
    if (!requests_id_valid(id)) {
        *err = xstrdup("not a request id");
        return -1;
    }
    snprintf(path, sizeof(path), "/api/v1/sign/requests/%s", id);
    if (client_call(c, "DELETE", path, NULL, &ans, err) != 0)
        return -1;
    *out = ans.json;
    return 0;
}

/* --- waiting ------------------------------------------------------------------ */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct wait_state {
    char status[40];  /* the last status seen */
    char *last_error; /* the last transient failure, retried */
    int failing;      /* the last look was such a failure */
    long retry_after; /* the last answer's Retry-After (s) */
} wait_state;

enum { LOOK_WAITING, LOOK_FINAL, LOOK_TRANSIENT, LOOK_FATAL };

/* One GET: LOOK_FINAL with *done, LOOK_WAITING (status noted, reported),
 * LOOK_TRANSIENT (no answer, 429 or 5xx: a GET is safe to repeat, so look
 * again), LOOK_FATAL with *err. */
static int look(client *c, const char *id, const requests_wait_opts *o, wait_state *ws,
                json_t **done, char **err)
{
    client_answer ans;
    char *why = NULL;
    if (requests_get(c, id, &ans, &why) != 0) {
        if (client_cancelled(c) || (ans.status != 0 && ans.status < 500 && ans.status != 429)) {
            *err = why;
            return LOOK_FATAL;
        }
        free(ws->last_error);
        ws->last_error = why;
        ws->failing = 1;
        return LOOK_TRANSIENT;
    }
    const char *st = requests_status_of(ans.json);
    ws->retry_after = ans.retry_after;
    ws->failing = 0;
    if (st == NULL) {
        *err = xasprintf("server: request %s has no valid status", id);
        json_decref(ans.json);
        return LOOK_FATAL;
    }
    snprintf(ws->status, sizeof(ws->status), "%s", st);
    if (requests_status_final(st)) {
        *done = ans.json;
        return LOOK_FINAL;
    }
    json_decref(ans.json);
    if (o->on_status != NULL)
        o->on_status(o->ctx, ws->status);
    return LOOK_WAITING;
}

static char *timeout_message(const char *id, const requests_wait_opts *o, const wait_state *ws)
{
    char took[32];
    cli_duration_text(o->timeout_s, took, sizeof(took));
    if (ws->status[0] != '\0')
        return xasprintf("request %s still %s after %s%s%s%s", id, ws->status, took,
                         ws->failing ? " (then: " : "", ws->failing ? ws->last_error : "",
                         ws->failing ? ")" : "");
    return xasprintf("request %s: no answer in %s (%s)", id, took,
                     ws->last_error ? ws->last_error : "never looked at");
}

int requests_wait(client *c, const char *id, const requests_wait_opts *o, json_t **done, char **err)
{
    long long deadline = now_ms() + (long long)o->timeout_s * 1000;
    long delay = o->first_delay_ms, backoff = 500;
    wait_state ws = {{0}, NULL, 0, 0};
    int rc = -1;

    *done = NULL;
    for (;;) {
        long long left = deadline - now_ms();
        client_nap(c, delay < left ? delay : (long)(left > 0 ? left : 0));
        if (client_cancelled(c)) {
            *err = xstrdup("interrupted");
            break;
        }
        int r = look(c, id, o, &ws, done, err);
        if (r == LOOK_FINAL)
            rc = 0;
        if (r == LOOK_FINAL || r == LOOK_FATAL)
            break;
        if (now_ms() >= deadline) {
            *err = timeout_message(id, o, &ws);
            break;
        }
        delay = client_jitter(c, backoff);
        if (delay < ws.retry_after * 1000L)
            delay = ws.retry_after * 1000L;
        if (delay > REQUESTS_MAX_POLL_S * 1000L)
            delay = REQUESTS_MAX_POLL_S * 1000L;
        if (backoff < REQUESTS_MAX_POLL_S * 1000L)
            backoff *= 2;
    }
    free(ws.last_error);
    return rc;
}
