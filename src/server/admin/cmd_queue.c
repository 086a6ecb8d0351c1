/* qwickd queue status|dead-letters|retry: the asynchronous queue from the
 * shell (docs/api.md "Asynchronous signing"), what the API's
 * /api/v1/sign/dead-letters and .../retry do for an org. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "admin/qwickd.h"
#include "auth/callback_key.h"
#include "common/hex.h"
#include "core/util.h"

#define DEAD_LETTERS_MAX 200

static void help(void)
{
    printf("Usage: qwickd queue status       --data DIR [--org NAME | --all] [--json]\n"
           "       qwickd queue dead-letters --data DIR [--org NAME] [--limit N] [--json]\n"
           "       qwickd queue retry        --data DIR [--org NAME] REQUEST_ID [--json]\n"
           "       qwickd queue callback-secret --data DIR [--org NAME] [--json]\n\n"
           "status: the org's open requests by status and the age of the oldest queued\n"
           "one (--all: every org). dead-letters: the org's FAILED requests, newest\n"
           "first, with the reason. retry: a FAILED request goes back to the queue with\n"
           "its attempts reset (audited as sign.retry); a running qwickd picks it up at\n"
           "its next poll. callback-secret: the org's key of the HMAC-SHA256 that signs\n"
           "completion callbacks (Qwick-Signature), as 64 hex digits; made on first use.\n\n"
           "  -d, --data DIR   data directory (default: $QWICKD_DATA)\n"
           "  -o, --org NAME   the org (default: the config's default_org)\n"
           "      --all        status of every org together\n"
           "  -n, --limit N    dead letters shown, 1-%d (default 50)\n"
           "      --json       machine-readable output\n",
           DEAD_LETTERS_MAX);
}

static int do_status(admin_ctx *a, int all, int json)
{
    store_queue_stats st;
    qk_err rc = STORE_CALL(a->store, queue_stats, all ? 0 : a->org, &st);
    if (rc != QK_OK) {
        report_err("queue status", rc);
        return EXIT_FAIL;
    }
    int64_t age = st.oldest_queued_ms > 0 ? (now_unix_ms() - st.oldest_queued_ms) / 1000 : 0;
    static const req_status shown[] = {REQ_QUEUED, REQ_PENDING_APPROVAL, REQ_PROCESSING, REQ_FAILED,
                                       REQ_CANCELLED};
    if (json) {
        json_t *j = json_object();
        for (size_t i = 0; i < sizeof(shown) / sizeof(shown[0]); i++)
            json_object_set_new(j, req_status_name(shown[i]), json_integer(st.count[shown[i]]));
        json_object_set_new(j, "oldestQueuedSeconds", json_integer(age));
        json_object_set_new(j, "org", all ? json_null() : json_string(a->org_name));
        char *text = json_dumps(j, JSON_SORT_KEYS);
        printf("%s\n", text != NULL ? text : "{}");
        free(text);
        json_decref(j);
        return EXIT_OK;
    }
    printf("%s\n", all ? "every org" : a->org_name);
    for (size_t i = 0; i < sizeof(shown) / sizeof(shown[0]); i++)
        printf("  %-17s %" PRId64 "\n", req_status_name(shown[i]), st.count[shown[i]]);
    printf("  oldest queued     %" PRId64 " s\n", age);
    return EXIT_OK;
}

static int do_dead_letters(admin_ctx *a, int limit, int json)
{
    store_sign_request *r = NULL;
    size_t n = 0;
    qk_err rc = STORE_CALL(a->store, request_list, a->org, REQ_FAILED, NULL, limit, &r, &n);
    if (rc != QK_OK) {
        report_err("queue dead-letters", rc);
        return EXIT_FAIL;
    }
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr,
                                  json_pack("{s:s,s:s,s:s?,s:I,s:I,s:s?}", "requestId", r[i].id,
                                            "profile", r[i].profile, "filename", r[i].filename,
                                            "attempts", (json_int_t)r[i].attempts, "updatedAt",
                                            (json_int_t)r[i].updated_at, "error", r[i].error));
        char *text = json_dumps(arr, JSON_INDENT(2));
        printf("%s\n", text != NULL ? text : "[]");
        free(text);
        json_decref(arr);
    } else {
        printf("%-36s  %-8s  %-20s  %s\n", "REQUEST", "ATTEMPTS", "FAILED AT", "REASON");
        for (size_t i = 0; i < n; i++) {
            char when[32];
            format_time(r[i].updated_at, when);
            printf("%-36s  %-8" PRId64 "  %-20s  %s\n", r[i].id, r[i].attempts, when,
                   r[i].error != NULL ? r[i].error : "-");
        }
    }
    store_sign_request_list_free(r, n);
    return EXIT_OK;
}

static int do_retry(admin_ctx *a, const char *id, int json)
{
    store_audit au;
    req_status before = REQ_QUEUED;
    int found = 0;
    admin_audit_init(a, "sign.retry", &au);
    au.request_id = id;
    qk_err rc =
        STORE_CALL(a->store, request_retry, a->org, id, now_unix_ms(), &au, &before, &found);
    if (rc == QK_ERR_INVALID_ARG && !found) {
        fprintf(stderr, "qwickd queue retry: no request %s in org %s\n", id, a->org_name);
        return EXIT_FAIL;
    }
    if (rc != QK_OK) {
        report_err("queue retry", rc);
        return EXIT_FAIL;
    }
    if (before != REQ_FAILED) {
        fprintf(stderr, "qwickd queue retry: request %s is %s: only a FAILED request is put back\n",
                id, req_status_name(before));
        return EXIT_FAIL;
    }
    if (json)
        printf("{\"requestId\": \"%s\", \"status\": \"QUEUED\"}\n", id);
    else
        printf("Request %s is queued again.\n", id);
    return EXIT_OK;
}

static int do_callback_secret(admin_ctx *a, int json)
{
    uint8_t key[CALLBACK_SECRET_LEN];
    char hex[2 * CALLBACK_SECRET_LEN + 1];
    qk_keyring *kr = NULL;
    qk_err rc = master_key_load(a->dir, NULL, &kr);
    if (rc == QK_OK)
        rc = callback_secret(a->store, kr, a->org, key);
    keyring_free(kr);
    if (rc != QK_OK) {
        report_err("queue callback-secret", rc);
        return EXIT_FAIL;
    }
    hex_encode(key, sizeof(key), hex);
    sodium_memzero(key, sizeof(key));
    if (json)
        printf("{\"org\": \"%s\", \"secret\": \"%s\"}\n", a->org_name, hex);
    else
        printf("%s\n", hex);
    sodium_memzero(hex, sizeof(hex));
    return EXIT_OK;
}

int cmd_queue(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, 'd'},
        {"org", required_argument, NULL, 'o'},
        {"limit", required_argument, NULL, 'n'},
        {"all", no_argument, NULL, 'a'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *data = NULL, *org = NULL;
    int json = 0, all = 0, limit = 50, c;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        help();
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    const char *verb = argv[1];
    if (strcmp(verb, "status") != 0 && strcmp(verb, "dead-letters") != 0 &&
        strcmp(verb, "retry") != 0 && strcmp(verb, "callback-secret") != 0)
        return usage_error("queue",
                           "unknown subcommand '%s' (status, dead-letters, retry, callback-secret)",
                           verb);
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc - 1, argv + 1, "d:o:n:h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'd':
            data = optarg;
            break;
        case 'o':
            org = optarg;
            break;
        case 'a':
            all = 1;
            break;
        case 'n':
            limit = (int)strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || limit < 1 || limit > DEAD_LETTERS_MAX)
                return usage_error("queue", "--limit must be 1-%d", DEAD_LETTERS_MAX);
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            help();
            return EXIT_OK;
        default:
            return usage_error("queue", "unrecognized option '%s'", argv[optind]);
        }
    }
    int nargs = argc - 1 - optind;
    char **args = argv + 1 + optind;
    int retry = strcmp(verb, "retry") == 0;
    if (retry ? nargs != 1 : nargs != 0)
        return usage_error("queue", retry ? "retry takes one REQUEST_ID" : "%s takes no argument",
                           verb);
    if (retry && !store_request_id_ok(args[0]))
        return usage_error("queue", "'%s' is not a request id (req_ + 32 hex digits)", args[0]);
    if (all && (org != NULL || strcmp(verb, "status") != 0))
        return usage_error("queue", "--all goes with status, without --org");
    if ((data = data_dir_arg(data)) == NULL)
        return usage_error("queue", "--data DIR is required");

    admin_ctx a;
    qk_err rc = admin_open(data, org, &a);
    if (rc != QK_OK) {
        report_err("queue", rc);
        return EXIT_FAIL;
    }
    int status = strcmp(verb, "status") == 0            ? do_status(&a, all, json)
                 : strcmp(verb, "dead-letters") == 0    ? do_dead_letters(&a, limit, json)
                 : strcmp(verb, "callback-secret") == 0 ? do_callback_secret(&a, json)
                                                        : do_retry(&a, args[0], json);
    admin_close(&a);
    return status;
}
