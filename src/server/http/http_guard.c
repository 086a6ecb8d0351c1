/* The connection guard (http.h): admission by client address, and deadlines
 * for the TLS handshake, the request head and the body that a sweeper
 * thread enforces. */
#include "http/http.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <gnutls/gnutls.h>

#include "core/log.h"
#include "core/metrics.h"
#include "core/ratelimit.h"
#include "core/util.h"

/* --- the connection guard (http.h) ----------------------------------------- */

/* How often the sweeper looks for connections past their deadline: deadlines
 * are whole seconds, so one closes at most a quarter of a second late. */
#define GUARD_SWEEP_MS 250

typedef struct guard_conn {
    struct guard_conn *prev, *next; /* under the guard's lock */
    http_guard *g;
    MHD_socket fd;
    ratelimit_key key;
    int counted; /* holds one of its address's count */
    /* (deadline in monotonic ms) << 2 | phase; deadline 0: none runs.
     * Written by the connection's MHD thread, cleared by the sweeper. */
    atomic_uint_fast64_t due;
} guard_conn;

struct http_guard {
    http_guard_opts o;
    ratelimit_counts *per_ip;
    pthread_mutex_t lock; /* the list and `stop` */
    pthread_cond_t wake;
    guard_conn *head;
    int stop;
    pthread_t sweeper;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static unsigned phase_ms(const http_guard *g, enum guard_phase p)
{
    switch (p) {
    case PHASE_HANDSHAKE:
        return g->o.handshake_ms;
    case PHASE_HEAD:
        return g->o.head_ms;
    case PHASE_BODY:
        return g->o.body_ms;
    default:
        return 0;
    }
}

static void guard_set(guard_conn *c, enum guard_phase p, unsigned ms)
{
    uint64_t deadline = ms == 0 ? 0 : mono_ms() + ms;
    atomic_store(&c->due, deadline << 2 | (uint64_t)p);
}

static guard_conn *guard_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci != NULL ? ci->socket_context : NULL;
}

/* The connection now waits for `p` (PHASE_NONE: for nothing of the client). */
void http_guard_enter(struct MHD_Connection *conn, enum guard_phase p)
{
    guard_conn *c = guard_of(conn);
    if (c != NULL)
        guard_set(c, p, phase_ms(c->g, p));
}

/* GnuTLS calls this after each Finished message; the client's (incoming)
 * one ends the handshake for the server in TLS 1.2 and 1.3, full or resumed. */
static int guard_handshake_hook(gnutls_session_t s, unsigned htype, unsigned when,
                                unsigned incoming, const gnutls_datum_t *msg)
{
    (void)htype;
    (void)when;
    (void)msg;
    if (!incoming)
        return 0;
    /* libmicrohttpd keeps its connection as the session's pointer (checked
     * before the hook was installed). */
    struct MHD_Connection *conn = gnutls_session_get_ptr(s);
    guard_conn *c = conn != NULL ? guard_of(conn) : NULL;
    if (c != NULL && (atomic_load(&c->due) & 3u) == PHASE_HANDSHAKE)
        guard_set(c, PHASE_HEAD, c->g->o.head_ms);
    return 0;
}

/* The first deadline: the handshake's with TLS, else the head's. Should this
 * libmicrohttpd not expose its connection through the GnuTLS session, the
 * handshake's deadline covers the head too (it ends at the first request). */
static void guard_first_deadline(http_guard *g, struct MHD_Connection *conn, guard_conn *c)
{
    if (!g->o.tls) {
        guard_set(c, PHASE_HEAD, g->o.head_ms);
        return;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    gnutls_session_t s = ci != NULL ? ci->tls_session : NULL;
    if (s != NULL && gnutls_session_get_ptr(s) == (void *)conn) {
        gnutls_handshake_set_hook_function(s, GNUTLS_HANDSHAKE_FINISHED, GNUTLS_HOOK_POST,
                                           guard_handshake_hook);
        guard_set(c, PHASE_HANDSHAKE, g->o.handshake_ms);
    } else {
        guard_set(c, PHASE_HANDSHAKE, g->o.handshake_ms + g->o.head_ms);
    }
}

enum MHD_Result http_guard_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    http_guard *g = cls;
    ratelimit_key k;
    (void)addrlen;
    if (ratelimit_key_of(addr, &k) != 0)
        return MHD_YES;
    /* A fast refusal; the count itself is taken when the connection starts
     * (it cannot leak there), and rechecked then. */
    if (ratelimit_count_get(g->per_ip, &k) < g->o.max_per_ip)
        return MHD_YES;
    metrics_connection_dropped(g->o.metrics, "per_ip_limit");
    return MHD_NO;
}

static void guard_started(http_guard *g, struct MHD_Connection *conn, void **socket_context)
{
    const union MHD_ConnectionInfo *fd =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *ad =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (fd == NULL)
        return;
    guard_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        /* Untracked, it would escape every deadline: drop it instead. */
        shutdown(fd->connect_fd, SHUT_RDWR);
        return;
    }
    c->g = g;
    c->fd = fd->connect_fd;
    int refuse = 0;
    if (ad != NULL && ratelimit_key_of(ad->client_addr, &c->key) == 0) {
        /* Accepts race on the pool's threads past http_guard_accept; this
         * count is exact. 0: the address table is full. */
        unsigned n = ratelimit_count_add(g->per_ip, &c->key);
        c->counted = n != 0;
        refuse = n == 0 || n > g->o.max_per_ip;
    }
    guard_first_deadline(g, conn, c);
    pthread_mutex_lock(&g->lock);
    c->next = g->head;
    if (g->head != NULL)
        g->head->prev = c;
    g->head = c;
    pthread_mutex_unlock(&g->lock);
    *socket_context = c;
    if (refuse) {
        shutdown(c->fd, SHUT_RDWR);
        metrics_connection_dropped(g->o.metrics, "per_ip_limit");
    }
}

static void guard_closed(http_guard *g, void **socket_context)
{
    guard_conn *c = *socket_context;
    if (c == NULL)
        return;
    *socket_context = NULL;
    /* Unlinked before libmicrohttpd closes the socket, so the sweeper never
     * shuts down a descriptor that has been reused. */
    pthread_mutex_lock(&g->lock);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        g->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&g->lock);
    if (c->counted)
        ratelimit_count_del(g->per_ip, &c->key);
    free(c);
}

void http_guard_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                       enum MHD_ConnectionNotificationCode toe)
{
    if (toe == MHD_CONNECTION_NOTIFY_STARTED)
        guard_started(cls, conn, socket_context);
    else
        guard_closed(cls, socket_context);
}

static const char *deadline_name(uint64_t phase)
{
    switch (phase) {
    case PHASE_HANDSHAKE:
        return "handshake_deadline";
    case PHASE_HEAD:
        return "head_deadline";
    default:
        return "body_deadline";
    }
}

/* Shuts down every connection past its deadline; caller holds the lock. */
static void guard_sweep_once(http_guard *g)
{
    uint64_t now = mono_ms();
    for (guard_conn *c = g->head; c != NULL; c = c->next) {
        uint64_t due = atomic_load(&c->due);
        if ((due >> 2) == 0 || (due >> 2) > now)
            continue;
        /* Only if unchanged: the connection's thread may just have moved on. */
        if (!atomic_compare_exchange_strong(&c->due, &due, due & 3u))
            continue;
        shutdown(c->fd, SHUT_RDWR);
        metrics_connection_dropped(g->o.metrics, deadline_name(due & 3u));
    }
}

static void *guard_sweeper(void *arg)
{
    http_guard *g = arg;
    pthread_mutex_lock(&g->lock);
    while (!g->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += GUARD_SWEEP_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g->wake, &g->lock, &ts);
        if (!g->stop)
            guard_sweep_once(g);
    }
    pthread_mutex_unlock(&g->lock);
    return NULL;
}

http_guard *http_guard_new(const http_guard_opts *o)
{
    http_guard *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->o = *o;
    /* One address per connection at most, plus the accepts in flight. */
    if ((g->per_ip = ratelimit_counts_new(o->max_connections + 64)) == NULL) {
        free(g);
        return NULL;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&g->lock, NULL);
    if (pthread_create(&g->sweeper, NULL, guard_sweeper, g) != 0) {
        pthread_cond_destroy(&g->wake);
        pthread_mutex_destroy(&g->lock);
        ratelimit_counts_free(g->per_ip);
        free(g);
        return NULL;
    }
    return g;
}

void http_guard_free(http_guard *g)
{
    if (g == NULL)
        return;
    pthread_mutex_lock(&g->lock);
    g->stop = 1;
    pthread_cond_signal(&g->wake);
    pthread_mutex_unlock(&g->lock);
    pthread_join(g->sweeper, NULL);
    /* The daemon has stopped: every connection reported its close. */
    while (g->head != NULL) {
        guard_conn *c = g->head;
        g->head = c->next;
        free(c);
    }
    pthread_cond_destroy(&g->wake);
    pthread_mutex_destroy(&g->lock);
    ratelimit_counts_free(g->per_ip);
    free(g);
}
