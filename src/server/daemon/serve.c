/* `qwickd serve`: the HTTPS API on libmicrohttpd.
 *
 * Threads: MHD's pool (one epoll loop per core) parses HTTP and runs the
 * handlers (TLS, JSON, auth); the RSA work, signatures and timestamps alike,
 * goes to the signing threads (workq, one per core). The connection stays
 * suspended until the store's writer thread reports the durable group commit
 * of the request and audit rows (request_record_async), so no thread ever
 * sits idle on an fsync. A store without that op gets a pool of commit
 * threads that wait instead. The connection guard's sweeper thread (http.h)
 * closes connections past their handshake, head or body deadline.
 *
 * Shutdown (SIGTERM/SIGINT): stop accepting (quiesce), refuse new requests on
 * open connections with 503 + Connection: close, let admitted requests finish
 * (their commits included), then stop MHD and close the store. Every 200 a
 * client received was durable before it was sent. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sodium.h>

#include "api/api.h"
#include "api/api_policy.h"
#include "api/api_tsa.h"
#include "api/callbacks.h"
#include "api/queue.h"
#include "common/hex.h"
#include "signer/azure/azure.h"
#include "config/config.h"
#include "core/hardening.h"
#include "http/http.h"
#include "core/log.h"
#include "signer/pki.h"
#include "admin/qwickd.h"
#include "core/ratelimit.h"
#include "api/server.h"
#include "audit/transparency.h"
#include "tsa/tsa.h"
#include "core/util.h"
#include "core/workq.h"

/* Threads that wait on commits (stores without request_record_async): enough
 * to keep a group commit full (in-flight commits = throughput x latency). */
#define SERVE_COMMIT_THREADS 32
/* How long admitted requests get to finish after SIGTERM. */
#define SERVE_DRAIN_TIMEOUT_MS 30000
/* Per-connection memory for MHD's header and read buffers. */
#define SERVE_CONN_MEMORY (128u * 1024u)
#define SERVE_MAX_PEM (1024u * 1024u)

static const http_route routes[] = {
    {"POST", "/api/v1/sign/digest", "sign_digest", api_sign_digest},
    {"GET", "/api/v1/sign/requests/{id}", "sign_request_get", api_sign_request_get},
    {"DELETE", "/api/v1/sign/requests/{id}", "sign_request_cancel", api_sign_request_cancel},
    {"POST", "/api/v1/sign/requests/{id}/retry", "sign_request_retry", api_sign_request_retry},
    {"GET", "/api/v1/sign/requests", "sign_requests_list", api_sign_requests_list},
    {"GET", "/api/v1/sign/dead-letters", "sign_dead_letters", api_sign_dead_letters},
    {"GET", "/api/v1/keys", "keys_list", api_keys_list},
    {"POST", "/api/v1/keys", "keys_create", api_keys_create},
    {"DELETE", "/api/v1/keys/{id}", "keys_revoke", api_keys_revoke},
    {"GET", "/api/v1/profiles", "profiles_list", api_profiles_list},
    {"POST", "/api/v1/profiles", "profiles_create", api_profiles_create},
    {"GET", "/api/v1/profiles/{name}", "profiles_get", api_profiles_get},
    {"POST", "/api/v1/profiles/{name}/disable", "profiles_disable", api_profiles_disable},
    {"GET", "/api/v1/profiles/{name}/policy", "policy_get", api_policy_get},
    {"PUT", "/api/v1/profiles/{name}/policy", "policy_put", api_policy_put},
    {"DELETE", "/api/v1/profiles/{name}/policy", "policy_delete", api_policy_delete},
    {"POST", "/api/v1/policy/evaluate", "policy_evaluate", api_policy_evaluate},
    {"POST", "/tsa", "tsa", api_tsa},
    {"GET", "/api/v1/log/public-key", "log_public_key", api_log_public_key},
    {"GET", "/api/v1/log/checkpoint", "log_checkpoint", api_log_checkpoint},
    {"GET", "/api/v1/log/entries", "log_entries", api_log_entries},
    {"GET", "/api/v1/log/proof/inclusion", "log_inclusion", api_log_inclusion},
    {"GET", "/api/v1/log/proof/consistency", "log_consistency", api_log_consistency},
    {"GET", "/api/v1/usage", "usage", api_usage},
    {"GET", "/healthz", "healthz", api_healthz},
    {"GET", "/metrics", "metrics", api_metrics},
};

typedef struct serve_opts {
    const char *data;
    const char *listen;
    const char *tls_cert;
    const char *tls_key;
    const char *port_file;
    const char *master_key;
    const char *database;
    int plain_http;
} serve_opts;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: qwickd serve --data DIR [--listen ADDR:PORT] [--tls-cert PEM --tls-key PEM]\n"
            "                    [--plain-http] [--port-file FILE] [--master-key FILE]\n"
            "                    [--database URL]\n\n"
            "Serves the signing API over HTTPS with the data directory's TLS certificate\n"
            "(or the given one). Port 0 picks a free port; --port-file receives it.\n"
            "--plain-http serves without TLS, and only on a loopback address.\n"
            "Settings come from DIR/qwickd.json; flags override it.\n"
            "--master-key FILE (or $" MASTER_KEY_ENV
            ", or the systemd credential\n" MASTER_KEY_CREDENTIAL
            ") keeps the master key outside DIR (default DIR/" KEYRING_FILE ").\n"
            "Refuses to start when DIR is open to group or others, or the database, the\n"
            "TLS key or the master key is readable by them.\n"
            "--database URL (or $" DATABASE_URL_ENV ", or qwickd.json's \"database\"): the\n"
            "PostgreSQL database init created; serve logs in as the server's own role\n"
            "(DIR/" DATABASE_CREDENTIALS_FILE "). Several nodes may serve one database.\n");
}

static int parse_args(int argc, char **argv, serve_opts *o)
{
    static const struct option longopts[] = {
        {"data", required_argument, NULL, 'd'},
        {"listen", required_argument, NULL, 'l'},
        {"tls-cert", required_argument, NULL, 'c'},
        {"tls-key", required_argument, NULL, 'k'},
        {"plain-http", no_argument, NULL, 'P'},
        {"port-file", required_argument, NULL, 'p'},
        {"master-key", required_argument, NULL, 'm'},
        {"database", required_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    memset(o, 0, sizeof(*o));
    optind = 1;
    while ((c = getopt_long(argc, argv, "d:l:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            o->data = optarg;
            break;
        case 'l':
            o->listen = optarg;
            break;
        case 'c':
            o->tls_cert = optarg;
            break;
        case 'k':
            o->tls_key = optarg;
            break;
        case 'P':
            o->plain_http = 1;
            break;
        case 'p':
            o->port_file = optarg;
            break;
        case 'm':
            o->master_key = optarg;
            break;
        case 'D':
            o->database = optarg;
            break;
        case 'h':
            usage(stdout);
            return 1;
        default:
            return usage_error("serve", "unknown option");
        }
    }
    if (optind != argc)
        return usage_error("serve", "unexpected argument '%s'", argv[optind]);
    o->data = data_dir_arg(o->data);
    if (o->data == NULL)
        return usage_error("serve", "--data DIR is required");
    if ((o->tls_cert == NULL) != (o->tls_key == NULL))
        return usage_error("serve", "--tls-cert and --tls-key go together");
    if (o->plain_http && o->tls_cert != NULL)
        return usage_error("serve", "--plain-http and --tls-cert exclude each other");
    return 0;
}

/* Parses "ADDR:PORT", "[V6]:PORT" or "localhost:PORT" into a socket address. */
static qk_err parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *sslen)
{
    char host[256];
    const char *colon, *port;
    memset(ss, 0, sizeof(*ss));
    if (listen[0] == '[') {
        const char *end = strchr(listen, ']');
        if (end == NULL || end[1] != ':' || (size_t)(end - listen - 1) >= sizeof(host))
            return qk_fail(QK_ERR_INVALID_ARG, "listen address '%s': expected [V6]:PORT", listen);
        memcpy(host, listen + 1, (size_t)(end - listen - 1));
        host[end - listen - 1] = '\0';
        port = end + 2;
    } else {
        colon = strrchr(listen, ':');
        if (colon == NULL || (size_t)(colon - listen) >= sizeof(host))
            return qk_fail(QK_ERR_INVALID_ARG, "listen address '%s': expected ADDR:PORT", listen);
        memcpy(host, listen, (size_t)(colon - listen));
        host[colon - listen] = '\0';
        port = colon + 1;
    }
    char *end = NULL;
    errno = 0;
    long p = strtol(port, &end, 10);
    if (errno != 0 || end == port || *end != '\0' || p < 0 || p > 65535)
        return qk_fail(QK_ERR_INVALID_ARG, "listen address '%s': bad port", listen);
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");

    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)p);
        *sslen = sizeof(*v4);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)p);
        *sslen = sizeof(*v6);
    } else {
        return qk_fail(QK_ERR_INVALID_ARG, "listen address '%s': not a numeric IP address", listen);
    }
    return QK_OK;
}

static int is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss->ss_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
    return 0;
}

static int is_wildcard(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

/* "https://127.0.0.1:PORT" / "https://[::1]:PORT" with the bound port. */
static char *base_url(const struct sockaddr_storage *ss, unsigned port, int tls)
{
    char addr[INET6_ADDRSTRLEN];
    const char *scheme = tls ? "https" : "http";
    if (ss->ss_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, addr, sizeof(addr));
        return xasprintf("%s://%s:%u", scheme, addr, port);
    }
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, addr, sizeof(addr));
    return xasprintf("%s://[%s]:%u", scheme, addr, port);
}

/* The TSA identity from the configured paths: tsa.cert holds the TSA
 * certificate then its chain; tsa.key is sealed under the master key. */
static qk_err load_tsa(const qwickd_config *cfg, const qk_keyring *kr, tsa **out)
{
    qk_err rc;
    qk_buf sealed = {NULL, 0}, pem = {NULL, 0}, certs = {NULL, 0};
    EVP_PKEY *key = NULL;
    X509 *cert = NULL, *x = NULL;
    STACK_OF(X509) *chain = NULL;
    BIO *bio = NULL;

    *out = NULL;
    if ((rc = file_read_all(cfg->tsa_key, SERVE_MAX_PEM, &sealed)) != QK_OK ||
        (rc = secrets_open(kr, (qk_slice){sealed.data, sealed.len}, SECRETS_AAD_TSA_KEY, &pem)) !=
            QK_OK ||
        (rc = pki_parse_key_pem((qk_slice){pem.data, pem.len}, &key)) != QK_OK ||
        (rc = file_read_all(cfg->tsa_cert, SERVE_MAX_PEM, &certs)) != QK_OK)
        goto out;
    rc = QK_ERR_NOMEM;
    if ((bio = BIO_new_mem_buf(certs.data, (int)certs.len)) == NULL ||
        (chain = sk_X509_new_null()) == NULL)
        goto out;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (cert == NULL) {
            cert = x;
        } else if (X509_check_issued(x, x) == X509_V_OK) {
            /* A self-signed root stays out of every token, as roots stay out
             * of signatures: a verifier must hold it already, and each copy
             * costs every verifier a certificate to decode. */
            X509_free(x);
        } else if (sk_X509_push(chain, x) <= 0) {
            X509_free(x);
            goto out;
        }
    }
    ERR_clear_error(); /* the loop ends on "no start line" */
    if (cert == NULL) {
        rc = qk_fail(QK_ERR_BAD_DER, "%s: no certificate", cfg->tsa_cert);
        goto out;
    }
    rc = tsa_new(cert, key, chain, cfg->tsa_policy, out);
out:
    BIO_free(bio);
    X509_free(cert);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
    qk_buf_free(&pem);
    qk_buf_free(&sealed);
    qk_buf_free(&certs);
    return rc;
}

/* Files only this user may read: the database (and its WAL and shared
 * memory) and the TLS key. The master key is checked as it is loaded. */
static qk_err check_private_files(const serve_opts *o, const qwickd_config *cfg)
{
    static const char *const db_files[] = {STORE_SQLITE_FILE, STORE_SQLITE_FILE "-wal",
                                           STORE_SQLITE_FILE "-shm"};
    qk_err rc = QK_OK;
    for (size_t i = 0; database_url(o->database, cfg) == NULL && rc == QK_OK &&
                       i < sizeof(db_files) / sizeof(db_files[0]);
         i++) {
        char *p = path_join(o->data, db_files[i]);
        rc = harden_check_private(p, "database");
        free(p);
    }
    if (rc == QK_OK && database_url(o->database, cfg) != NULL) {
        char *p = path_join(o->data, DATABASE_CREDENTIALS_FILE);
        rc = harden_check_private(p, "database credentials");
        free(p);
    }
    if (rc == QK_OK && !o->plain_http)
        rc = harden_check_private(o->tls_key ? o->tls_key : cfg->tls_key, "TLS private key");
    return rc;
}

/* What serve's log says about key hygiene once the keys are loaded. */
static void log_hygiene(void)
{
    harden_state h;
    char dump[8], core[24], heap[40], used[24];
    harden_status(&h);
    snprintf(dump, sizeof(dump), "%d", h.dumpable);
    snprintf(core, sizeof(core), "%lu", h.core);
    snprintf(heap, sizeof(heap), "%s",
             h.secure_heap == 1   ? "locked"
             : h.secure_heap == 2 ? "not locked (RLIMIT_MEMLOCK)"
                                  : "none");
    snprintf(used, sizeof(used), "%zu", h.secure_used);
    log_kv(h.secure_heap == 1 ? LOG_INFO : LOG_WARN, "key hygiene", "dumpable", dump, "core_limit",
           core, "secure_heap", heap, "secure_heap_used", used, NULL);
}

/* libmicrohttpd hands us its own printf-style format. */
__attribute__((format(printf, 2, 0))) static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    log_kv(LOG_WARN, "libmicrohttpd", "detail", msg, NULL);
}

static void mhd_panic(void *cls, const char *file, unsigned int line, const char *reason)
{
    char l[16];
    (void)cls;
    snprintf(l, sizeof(l), "%u", line);
    log_kv(LOG_ERROR, "libmicrohttpd panic", "file", file, "line", l, "reason", reason, NULL);
    abort();
}

static qk_err write_port_file(const char *path, unsigned port)
{
    char buf[16];
    int n = snprintf(buf, sizeof(buf), "%u\n", port);
    /* Atomic replace: a test polling the file never reads half a number. */
    return file_replace(path, (qk_slice){(const uint8_t *)buf, (size_t)n}, 0644);
}

/* Waits for SIGTERM/SIGINT (blocked in every thread, taken here). */
static int wait_for_signal(const sigset_t *set)
{
    int sig = 0;
    while (sigwait(set, &sig) != 0)
        ;
    return sig;
}

static void drain(server *srv)
{
    struct timespec t0, now, nap = {0, 5 * 1000 * 1000};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        long n = metrics_inflight(srv->metrics);
        if (n == 0)
            return;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long ms = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (ms > SERVE_DRAIN_TIMEOUT_MS) {
            char b[32];
            snprintf(b, sizeof(b), "%ld", n);
            log_kv(LOG_WARN, "drain timeout, stopping with requests in flight", "in_flight", b,
                   NULL);
            return;
        }
        nanosleep(&nap, NULL);
    }
}

/* The queue's workers, named "<host>/<random>" in the leases they take. */
static qk_err start_queue(server *srv, const qwickd_config *cfg)
{
    char host[64] = "qwickd", node[96];
    uint8_t rnd[4];
    char hex[9];
    queue_config qc = {.concurrency = cfg->queue_concurrency,
                       .max_attempts = cfg->queue_max_attempts,
                       .lease_seconds = cfg->queue_lease_seconds,
                       .backoff_ms = cfg->queue_backoff_ms,
                       .backoff_max_ms = cfg->queue_backoff_max_ms,
                       .poll_ms = cfg->queue_poll_ms,
                       .sync_wait_seconds = cfg->queue_sync_wait_seconds};
    if (gethostname(host, sizeof(host) - 1) != 0)
        snprintf(host, sizeof(host), "qwickd");
    host[sizeof(host) - 1] = '\0';
    randombytes_buf(rnd, sizeof(rnd));
    hex_encode(rnd, sizeof(rnd), hex);
    snprintf(node, sizeof(node), "%s/%s", host, hex);
    qk_err rc = callbacks_new(srv, cfg->callback_allow, cfg->ncallback_allow, &srv->callbacks);
    if (rc == QK_OK)
        rc = queue_start(srv, &qc, node, &srv->queue);
    if (rc != QK_OK)
        report_err("queue", rc);
    return rc;
}

int cmd_serve(int argc, char **argv)
{
    int ret = EXIT_FAIL;
    serve_opts o;
    qwickd_config cfg;
    server srv;
    http_ctx hctx;
    http_guard *guard = NULL;
    qk_buf cert_pem = {NULL, 0}, key_pem = {NULL, 0};
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    struct MHD_Daemon *d = NULL;
    sigset_t sigs;
    qk_err rc;
    int srv_lock = -1;

    memset(&cfg, 0, sizeof(cfg));
    memset(&srv, 0, sizeof(srv));
    int pa = parse_args(argc, argv, &o);
    if (pa != 0)
        return pa == 1 ? EXIT_OK : pa;

    /* Block the shutdown signals before any thread exists (the store starts
     * its writer thread), so only sigwait below ever receives them. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Key hygiene first: a data directory others can reach is refused before
     * anything in it is read; the lock keeps `qwickd keyring rotate` out
     * while this server holds the keys. */
    if ((rc = harden_check_dir(o.data)) != QK_OK ||
        (rc = data_dir_lock(o.data, 0, &srv_lock)) != QK_OK) {
        report_err("serve", rc);
        goto out;
    }
    if ((rc = config_load(o.data, &cfg)) != QK_OK) {
        report_err("config", rc);
        goto out;
    }
    if ((rc = check_private_files(&o, &cfg)) != QK_OK) {
        report_err("serve", rc);
        goto out;
    }
    const char *listen = o.listen ? o.listen : cfg.listen;
    if ((rc = parse_listen(listen, &ss, &sslen)) != QK_OK) {
        report_err("serve", rc);
        goto out;
    }
    srv.tls = !o.plain_http;
    if (o.plain_http && !is_loopback(&ss)) {
        /* API keys and signatures never cross a network in clear. */
        fprintf(stderr,
                "qwickd: serve: --plain-http is only allowed on a loopback address "
                "(127.0.0.0/8 or ::1), not %s\n",
                listen);
        ret = EXIT_USAGE;
        goto out;
    }
    if (srv.tls) {
        const char *cp = o.tls_cert ? o.tls_cert : cfg.tls_cert;
        const char *kp = o.tls_key ? o.tls_key : cfg.tls_key;
        if ((rc = file_read_all(cp, SERVE_MAX_PEM, &cert_pem)) != QK_OK ||
            (rc = file_read_all(kp, SERVE_MAX_PEM, &key_pem)) != QK_OK) {
            report_err("TLS certificate", rc);
            goto out;
        }
    }

    if ((rc = master_key_load(o.data, o.master_key, &srv.keyring)) != QK_OK) {
        report_err("master key", rc);
        goto out;
    }
    /* PostgreSQL: enough connections for every signing thread's commit and
     * the readers beside them; the database shares the machine or not. */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int conns = 4 * (int)(ncpu > 0 ? ncpu : 1);
    if (conns < 8)
        conns = 8;
    if ((rc = store_open_dir(o.data, database_url(o.database, &cfg), srv.keyring, conns,
                             &srv.store)) != QK_OK) {
        report_err("store", rc);
        goto out;
    }
    atomic_init(&srv.signing, 0);
    store_sqlite_set_commit_delay(srv.store, cfg.commit_delay_us, &srv.signing);
    if ((rc = load_tsa(&cfg, srv.keyring, &srv.tsa)) != QK_OK) {
        /* Signing works without the TSA; /tsa answers 503 then. */
        log_kv(LOG_WARN, "TSA disabled", "detail", qk_error_detail(), NULL);
        srv.tsa = NULL;
    }
    /* The log key: made by init; a data directory from before the log gets
     * one on first start. */
    if ((rc = tl_key_load(srv.store, srv.keyring, 1, &srv.logkey)) != QK_OK) {
        report_err("log key", rc);
        goto out;
    }
    srv.data_dir = o.data;
    if ((srv.metrics = metrics_new()) == NULL)
        goto out;
    srv.signers = signer_cache_new();
    srv.policies = policy_cache_new();
    /* Before the listener: its startup pass revokes secrets a crashed run
     * left behind. */
    azure_options ao = {.store = srv.store,
                        .keyring = srv.keyring,
                        .reaper_interval_s = cfg.azure_reaper_interval,
                        .op_timeout_s = cfg.azure_op_timeout};
    if ((rc = azure_backend_new(&ao, &srv.azure)) != QK_OK) {
        report_err("azure backend", rc);
        goto out;
    }
    atomic_init(&srv.draining, 0);
    unsigned threads = cfg.threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (unsigned)n : 1;
    }
    /* Commit threads only for a store that cannot report commits itself. */
    if ((srv.store->ops->request_record_async == NULL &&
         (srv.commits = workq_new(SERVE_COMMIT_THREADS)) == NULL) ||
        (srv.signq = workq_new(threads)) == NULL)
        goto out;
    if (start_queue(&srv, &cfg) != QK_OK)
        goto out;
    srv.tsa_require_key = cfg.tsa_require_key;
    if ((srv.tsa_limit = ratelimit_buckets_new(cfg.tsa_rate, cfg.tsa_burst)) == NULL)
        goto out;
    http_guard_opts go = {.max_per_ip = cfg.max_connections_per_ip,
                          .max_connections = cfg.max_connections,
                          .handshake_ms = cfg.handshake_timeout * 1000u,
                          .head_ms = cfg.head_timeout * 1000u,
                          .body_ms = cfg.body_timeout * 1000u,
                          .tls = srv.tls,
                          .metrics = srv.metrics};
    if ((guard = http_guard_new(&go)) == NULL)
        goto out;
    hctx = (http_ctx){.srv = &srv,
                      .routes = routes,
                      .nroutes = sizeof(routes) / sizeof(routes[0]),
                      .tls = srv.tls,
                      .max_body = cfg.max_body < QK_HTTP_MAX_BODY_LIMIT ? cfg.max_body
                                                                        : QK_HTTP_MAX_BODY_LIMIT};

    MHD_set_panic_func(mhd_panic, NULL);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (srv.tls)
        flags |= MHD_USE_TLS;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_OptionItem opts[16];
    size_t no = 0;
    /* The logger first, so MHD routes every later message through it. */
    opts[no++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_logger, NULL};
    opts[no++] = (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, &ss};
    opts[no++] =
        (struct MHD_OptionItem){MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)http_unescape, NULL};
    if (threads > 1) /* one: the internal polling thread alone (MHD warns of a pool of 1) */
        opts[no++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, threads, NULL};
    opts[no++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT, cfg.max_connections, NULL};
    opts[no++] =
        (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT, cfg.connection_timeout, NULL};
    opts[no++] =
        (struct MHD_OptionItem){MHD_OPTION_CONNECTION_MEMORY_LIMIT, SERVE_CONN_MEMORY, NULL};
    opts[no++] =
        (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)http_completed, &hctx};
    opts[no++] =
        (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)http_guard_notify, guard};
    if (srv.tls) {
        opts[no++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, cert_pem.data};
        opts[no++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, key_pem.data};
        opts[no++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0,
                                             cfg.tls_priorities ? cfg.tls_priorities
                                                                : CONFIG_DEFAULT_TLS_PRIORITIES};
    }
    opts[no++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};

    d = MHD_start_daemon(flags, 0, http_guard_accept, guard, http_access, &hctx, MHD_OPTION_ARRAY,
                         opts, MHD_OPTION_END);
    /* GnuTLS has its own copy now; the key bytes need not linger. */
    qk_buf_free(&key_pem);
    if (d == NULL) {
        fprintf(stderr,
                "qwickd: serve: cannot listen on %s (in use, bad TLS files, or bad "
                "tls.priorities?)\n",
                listen);
        goto out;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned port = di ? di->port : 0;
    srv.metrics_anonymous = cfg.metrics_anonymous;
    if (cfg.public_url != NULL)
        srv.base_url = xstrdup(cfg.public_url);
    else if (!is_wildcard(&ss))
        srv.base_url = base_url(&ss, port, srv.tls);
    if (o.port_file != NULL && (rc = write_port_file(o.port_file, port)) != QK_OK) {
        report_err("port file", rc);
        goto out;
    }
    char portbuf[16], thr[16];
    snprintf(portbuf, sizeof(portbuf), "%u", port);
    snprintf(thr, sizeof(thr), "%u", threads);
    log_hygiene();
    log_buffered_start();
    log_kv(LOG_INFO, "listening", "listen", listen, "port", portbuf, "tls", srv.tls ? "1" : "0",
           "threads", thr, "url", srv.base_url ? srv.base_url : "-", "tsa",
           srv.tsa ? "enabled" : "disabled", NULL);

    int sig = wait_for_signal(&sigs);
    log_kv(LOG_INFO, "shutting down", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT", NULL);
    atomic_store(&srv.draining, 1);
    MHD_socket lsock = MHD_quiesce_daemon(d);
    if (lsock != MHD_INVALID_SOCKET)
        close(lsock);
    /* The queue first: what its workers hold is recorded, and requests
     * waiting on them are answered (202 when unfinished), so the drain
     * does not wait for them. */
    queue_stop(srv.queue);
    callbacks_stop(srv.callbacks);
    drain(&srv);
    /* Every admitted request has finished; commit threads have no work left.
     * Stopped, not freed: after a drain timeout a late handler still finds
     * the queue (refusing) and commits on its own thread. */
    workq_stop(srv.signq);
    workq_stop(srv.commits);
    /* Revokes every Azure secret this run created (clean shutdown). */
    azure_backend_free(srv.azure);
    srv.azure = NULL;
    /* Commits still queued resume their connections from the store's
     * thread: let them finish while the daemon is alive. */
    store_sqlite_flush(srv.store);
    api_auth_failures_flush(srv.store, 1);
    MHD_stop_daemon(d);
    d = NULL;
    http_guard_free(guard);
    guard = NULL;
    log_kv(LOG_INFO, "stopped", NULL);
    ret = EXIT_OK;
out:
    log_buffered_stop();
    if (d != NULL)
        MHD_stop_daemon(d);
    http_guard_free(guard); /* after the daemon: its connections report their close */
    /* After the daemon: no handler can reach them any more. */
    queue_free(srv.queue);
    callbacks_free(srv.callbacks);
    workq_free(srv.signq);
    workq_free(srv.commits);
    tsa_free(srv.tsa);
    ratelimit_buckets_free(srv.tsa_limit);
    tl_key_free(srv.logkey);
    signer_cache_free(srv.signers);
    policy_cache_free(srv.policies);
    azure_backend_free(srv.azure);
    if (srv.store != NULL)
        srv.store->ops->close(srv.store);
    keyring_free(srv.keyring);
    if (srv_lock >= 0)
        close(srv_lock);
    metrics_free(srv.metrics);
    free(srv.base_url);
    qk_buf_free(&cert_pem);
    qk_buf_free(&key_pem);
    config_free(&cfg);
    return ret;
}
