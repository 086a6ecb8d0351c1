/* qwick requests list|show|cancel: the signing requests of the caller's org
 * (requests.h), as a table or key: value lines for people, or JSON. Server
 * settings as for qwick sign. Text from the server (a file name is whatever
 * its submitter sent) reaches the terminal with control characters as '?'. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "cli.h"
#include "common/b64.h"
#include "common/utf8.h"
#include "config.h"
#include "requests.h"

#define REQUESTS_DEFAULT_LIMIT 50
/* --limit's ceiling: a page is at most REQUESTS_PAGE_MAX, this is 50 pages. */
#define REQUESTS_MAX_LIMIT 10000

enum { OPT_SERVER = 256, OPT_API_KEY, OPT_CACERT, OPT_STATUS, OPT_LIMIT, OPT_JSON };

typedef struct req_opts {
    cli_config flags; /* --server, --api-key (a wiped copy), --cacert */
    const char *sub;  /* list, show, cancel */
    const char *id;   /* show, cancel */
    char status[24];  /* list --status, upper-cased; "" for all */
    long limit;       /* list --limit */
    int json;
    int helped; /* --help was shown: nothing else to do */
} req_opts;

static void help(void)
{
    printf("Usage: qwick requests list [--status STATUS] [--limit N] [--json] [OPTIONS]\n"
           "       qwick requests show REQUEST_ID [--json] [OPTIONS]\n"
           "       qwick requests cancel REQUEST_ID [--json] [OPTIONS]\n\n"
           "The signing requests of your org on the server, queued ones included\n"
           "(qwick sign --async makes them).\n\n"
           "list    newest first, as a table: id, status, created (UTC), profile, file\n"
           "show    one request, as key: value lines (the digest in hex, like qwick digest)\n"
           "cancel  cancel a request that has not started signing (QUEUED,\n"
           "        PENDING_APPROVAL); any other is refused: not_cancellable\n\n"
           "  --status STATUS    list only QUEUED, PENDING_APPROVAL, PROCESSING, SIGNED,\n"
           "                     FAILED, CANCELLED or REJECTED requests\n"
           "  --limit N          list at most N requests (default %d, at most %d)\n"
           "  --json             print the server's JSON (list: {\"requests\":[...]})\n"
           "  --server URL       qwickd URL (QWICK_SERVER, config \"server\")\n"
           "  --api-key KEY      API key, any role; cancel needs signer or admin\n"
           "                     (QWICK_API_KEY, config \"api_key\")\n"
           "  --cacert FILE      CA bundle for the server's TLS certificate (QWICK_CACERT)\n"
           "  -h, --help         this help\n\n"
           "REQUEST_ID is req_ and 32 lowercase hex digits, as qwick sign --async prints.\n"
           "Exit status: 0 done, 1 the server refused or failed (unknown request,\n"
           "not_cancellable, unreachable), 2 usage error.\n",
           REQUESTS_DEFAULT_LIMIT, REQUESTS_MAX_LIMIT);
}

/* --- output ------------------------------------------------------------------ */

/* A copy of server text fit for a terminal: bytes of malformed UTF-8, C0 and
 * C1 control characters and DEL become '?'; NULL becomes "-". */
static char *clean(const char *s)
{
    if (s == NULL || s[0] == '\0')
        return xstrdup("-");
    char *c = utf8_lossy(s);
    for (unsigned char *p = (unsigned char *)c; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            *p = '?';
        else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
            p[0] = p[1] = '?'; /* U+0080-U+009F */
    }
    return c;
}

static const char *str_of(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* Unix seconds as "2026-03-01T12:00:00Z"; "-" when absent or 0. */
static void time_text(json_t *v, char *buf, size_t n)
{
    struct tm tm;
    time_t t = (time_t)json_integer_value(v);
    if (!json_is_integer(v) || t <= 0 || gmtime_r(&t, &tm) == NULL ||
        strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, n, "-");
}

static void print_json(json_t *j)
{
    json_dumpf(j, stdout, JSON_INDENT(2) | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
}

static void print_row(json_t *r)
{
    char when[32];
    char *id = clean(str_of(r, "requestId")), *st = clean(str_of(r, "status"));
    char *prof = clean(str_of(r, "profile"));
    char *file = clean(str_of(json_object_get(r, "metadata"), "filename"));
    time_text(json_object_get(r, "createdAt"), when, sizeof(when));
    printf("%-36s  %-16s  %-20s  %-12s  %s\n", id, st, when, prof, file);
    free(id);
    free(st);
    free(prof);
    free(file);
}

/* "key: value", the value cleaned; nothing when absent. */
static void kv(const char *key, const char *value)
{
    if (value == NULL)
        return;
    char *v = clean(value);
    printf("%-17s %s\n", key, v);
    free(v);
}

static void kv_time(json_t *j, const char *key)
{
    char when[32], label[32];
    if (json_object_get(j, key) == NULL)
        return;
    time_text(json_object_get(j, key), when, sizeof(when));
    snprintf(label, sizeof(label), "%s:", key);
    printf("%-17s %s\n", label, when);
}

static void kv_int(json_t *j, const char *key)
{
    char label[32];
    json_t *v = json_object_get(j, key);
    if (!json_is_integer(v))
        return;
    snprintf(label, sizeof(label), "%s:", key);
    printf("%-17s %" JSON_INTEGER_FORMAT "\n", label, json_integer_value(v));
}

/* The digest in lowercase hex, as qwick digest prints it. */
static void kv_digest(json_t *j)
{
    const char *b64 = str_of(j, "digest");
    uint8_t md[QK_HASH_MAX_SIZE];
    char hex[2 * QK_HASH_MAX_SIZE + 1];
    size_t n = 0;
    if (b64 != NULL && b64_decode(b64, strlen(b64), md, sizeof(md), &n) == 0 && n > 0) {
        hex_encode(md, n, hex);
        kv("digest:", hex);
    } else {
        kv("digest:", b64);
    }
}

/* Why it ended unsigned: "error" (a reason, or {"code","message"}), else
 * the older "failureReason". */
static const char *reason_of(json_t *j)
{
    json_t *e = json_object_get(j, "error");
    if (json_is_object(e))
        return str_of(e, "message");
    return json_is_string(e) ? json_string_value(e) : str_of(j, "failureReason");
}

static void print_request(json_t *j)
{
    json_t *meta = json_object_get(j, "metadata");
    kv("requestId:", str_of(j, "requestId"));
    kv("status:", str_of(j, "status"));
    kv("profile:", str_of(j, "profile"));
    kv("format:", str_of(j, "format"));
    kv("algorithm:", str_of(j, "algorithm"));
    kv_digest(j);
    kv("filename:", str_of(meta, "filename"));
    kv("description:", str_of(meta, "description"));
    kv("url:", str_of(meta, "url"));
    kv_time(j, "createdAt");
    kv_time(j, "updatedAt");
    kv_time(j, "completedAt");
    kv_int(j, "attempts");
    kv("error:", reason_of(j));
    kv_int(j, "logIndex");
    kv("timestampUrl:", str_of(j, "timestampUrl"));
    if (json_is_true(json_object_get(j, "timestampRequired")))
        kv("timestampRequired:", "yes");
    if (str_of(j, "signature") != NULL)
        printf("%-17s %zu certificates in the chain (--json for the signature)\n",
               "signature:", json_array_size(json_object_get(j, "certificateChain")));
}

/* --- the subcommands ------------------------------------------------------------ */

/* Appends the page's rows to `all` (up to `limit` in all); the cursor to go
 * on with, or NULL when there is no more (or the page was empty). */
static char *take_page(json_t *page, json_t *all, long limit)
{
    json_t *rows = json_object_get(page, "requests"), *v;
    const char *next = str_of(page, "nextCursor");
    size_t i;
    json_array_foreach(rows, i, v)
    {
        if ((long)json_array_size(all) >= limit)
            break;
        json_array_append(all, v);
    }
    return json_array_size(rows) > 0 && next != NULL && next[0] != '\0' ? xstrdup(next) : NULL;
}

static int list_requests(client *c, const req_opts *o)
{
    json_t *all = json_array(), *page = NULL;
    char *cursor = NULL, *err = NULL;
    int rc = QK_EXIT_FAIL;
    do {
        long want = o->limit - (long)json_array_size(all);
        if (requests_list_page(c, o->status[0] ? o->status : NULL,
                               want < REQUESTS_PAGE_MAX ? (int)want : REQUESTS_PAGE_MAX, cursor,
                               &page, &err) != 0) {
            cli_msg("listing requests: %s", err);
            goto out;
        }
        free(cursor);
        cursor = take_page(page, all, o->limit);
        json_decref(page);
    } while (cursor != NULL && (long)json_array_size(all) < o->limit);
    if (o->json) {
        json_t *root = json_pack("{s:O}", "requests", all);
        print_json(root);
        json_decref(root);
    } else {
        printf("%-36s  %-16s  %-20s  %-12s  %s\n", "ID", "STATUS", "CREATED", "PROFILE", "FILE");
        size_t i;
        json_t *v;
        json_array_foreach(all, i, v) print_row(v);
    }
    rc = QK_EXIT_OK;
out:
    free(cursor);
    free(err);
    json_decref(all);
    return rc;
}

static int show_request(client *c, const req_opts *o)
{
    client_answer ans;
    char *err = NULL;
    if (requests_get(c, o->id, &ans, &err) != 0) {
        cli_msg("request %s: %s", o->id, err);
        free(err);
        return QK_EXIT_FAIL;
    }
    if (o->json)
        print_json(ans.json);
    else
        print_request(ans.json);
    json_decref(ans.json);
    return QK_EXIT_OK;
}

static int cancel_request(client *c, const req_opts *o)
{
    json_t *j = NULL;
    char *err = NULL;
    if (requests_cancel(c, o->id, &j, &err) != 0) {
        cli_msg("cancelling %s: %s", o->id, err);
        free(err);
        return QK_EXIT_FAIL;
    }
    if (o->json) {
        print_json(j);
    } else {
        char *st = clean(str_of(j, "status"));
        printf("%s %s\n", o->id, st);
        free(st);
    }
    json_decref(j);
    return QK_EXIT_OK;
}

/* --- the command line ------------------------------------------------------------ */

static int take_status(req_opts *o, const char *arg)
{
    size_t i = 0;
    for (; arg[i] != '\0' && i + 1 < sizeof(o->status); i++)
        o->status[i] = arg[i] >= 'a' && arg[i] <= 'z' ? (char)(arg[i] - 'a' + 'A') : arg[i];
    o->status[i] = '\0';
    if (arg[i] != '\0' || !requests_status_known(o->status))
        return cli_usage_error("requests",
                               "--status: '%s' is not one of QUEUED, PENDING_APPROVAL, "
                               "PROCESSING, SIGNED, FAILED, CANCELLED, REJECTED",
                               arg);
    return -1;
}

static int take_limit(req_opts *o, const char *arg)
{
    char *end;
    long v = strtol(arg, &end, 10);
    if (*arg == '\0' || *end != '\0' || v < 1 || v > REQUESTS_MAX_LIMIT)
        return cli_usage_error("requests", "--limit wants a number from 1 to %d",
                               REQUESTS_MAX_LIMIT);
    o->limit = v;
    return -1;
}

/* One option: an exit status (--help, usage error), or -1 to go on. */
static int take_option(req_opts *o, int c, char **argv)
{
    switch (c) {
    case OPT_SERVER:
        o->flags.server = optarg;
        return -1;
    case OPT_API_KEY:
        if (o->flags.api_key != NULL)
            OPENSSL_cleanse(o->flags.api_key, strlen(o->flags.api_key));
        free(o->flags.api_key);
        o->flags.api_key = cli_take_secret_arg(optarg);
        return -1;
    case OPT_CACERT:
        o->flags.cacert = optarg;
        return -1;
    case OPT_STATUS:
        return take_status(o, optarg);
    case OPT_LIMIT:
        return take_limit(o, optarg);
    case OPT_JSON:
        o->json = 1;
        return -1;
    case 'h':
        help();
        o->helped = 1;
        return QK_EXIT_OK;
    default:
        return cli_usage_error("requests", "unrecognized option '%s'", argv[optind - 1]);
    }
}

/* The operands and the options that apply to the subcommand; an exit status. */
static int check_operands(req_opts *o, int argc, char **argv, int given_list_opts)
{
    int list = strcmp(o->sub, "list") == 0, nargs = argc - optind;
    if (list && nargs > 0)
        return cli_usage_error("requests", "list takes no operand (unexpected '%s')", argv[optind]);
    if (!list && given_list_opts)
        return cli_usage_error("requests", "--status and --limit apply to list only");
    if (!list && nargs != 1)
        return cli_usage_error("requests", "%s takes one REQUEST_ID", o->sub);
    if (!list && !requests_id_valid(argv[optind]))
        return cli_usage_error("requests",
                               "'%s' is not a request id (req_ and 32 lowercase hex digits)",
                               argv[optind]);
    o->id = list ? NULL : argv[optind];
    return QK_EXIT_OK;
}

static int parse_args(int argc, char **argv, req_opts *o)
{
    static const struct option lopts[] = {
        {"server", required_argument, NULL, OPT_SERVER},
        {"api-key", required_argument, NULL, OPT_API_KEY},
        {"cacert", required_argument, NULL, OPT_CACERT},
        {"status", required_argument, NULL, OPT_STATUS},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c, status, list_opts = 0;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
        list_opts |= c == OPT_STATUS || c == OPT_LIMIT;
        if ((status = take_option(o, c, argv)) >= 0)
            return status;
    }
    return check_operands(o, argc, argv, list_opts);
}

static int run(req_opts *o, cli_config *cfg)
{
    char *err = NULL;
    int rc = QK_EXIT_FAIL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        cli_msg("cannot initialise libcurl");
        return QK_EXIT_FAIL;
    }
    client *c = client_new(cfg, &err);
    if (c == NULL) {
        cli_msg("%s", err);
        free(err);
        rc = QK_EXIT_USAGE; /* a bad server URL is a usage error */
    } else if (strcmp(o->sub, "list") == 0) {
        rc = list_requests(c, o);
    } else {
        rc = strcmp(o->sub, "show") == 0 ? show_request(c, o) : cancel_request(c, o);
    }
    client_free(c);
    curl_global_cleanup();
    return rc;
}

int cmd_requests(int argc, char **argv)
{
    req_opts o = {.limit = REQUESTS_DEFAULT_LIMIT};
    cli_config cfg = {0};
    int rc;

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        help();
        return argc < 2 ? QK_EXIT_USAGE : QK_EXIT_OK;
    }
    o.sub = argv[1];
    if (strcmp(o.sub, "list") != 0 && strcmp(o.sub, "show") != 0 && strcmp(o.sub, "cancel") != 0)
        return cli_usage_error("requests", "unknown subcommand '%s' (list, show, cancel)", o.sub);
    rc = parse_args(argc - 1, argv + 1, &o);
    if (rc == QK_EXIT_OK && !o.helped && (rc = cli_config_load(&o.flags, &cfg)) == QK_EXIT_OK)
        rc = run(&o, &cfg);
    if (o.flags.api_key != NULL)
        OPENSSL_cleanse(o.flags.api_key, strlen(o.flags.api_key));
    free(o.flags.api_key);
    cli_config_free(&cfg);
    return rc;
}
