/* qwickd operator token create|list|revoke: the instance operator's
 * credentials (GET /metrics), which belong to no org. Each change is an
 * entry of the instance log (org 0), committed with it. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "auth/apikey.h"
#include "admin/qwickd.h"
#include "core/util.h"

static void help(void)
{
    printf("Usage: qwickd operator token create --data DIR [--name N] [--json]\n"
           "       qwickd operator token list   --data DIR [--json]\n"
           "       qwickd operator token revoke --data DIR ID\n\n"
           "An operator token (qo_...) is what scrapes GET /metrics, which shows every\n"
           "org's traffic; org API keys are refused there. create prints the token once\n"
           "(only its SHA-256 is stored); revocation takes effect at once.\n\n"
           "  -d, --data DIR   data directory (default: $QWICKD_DATA)\n");
}

/* The instance-log entry of an operator change. */
static qk_err record(admin_ctx *a, const char *action, const char *meta)
{
    store_audit au;
    admin_audit_init(a, action, &au);
    au.org_id = 0;
    au.meta = meta;
    return STORE_CALL(a->store, audit_append, &au);
}

qk_err operator_token_issue(qk_store *st, const char *name, char token[APIKEY_LEN + 1], int64_t *id)
{
    char prefix[APIKEY_PREFIX_LEN + 1];
    uint8_t hash[32];
    token_generate(OPERATOR_TOKEN_TAG, token, prefix, hash);
    return STORE_CALL(st, operator_token_create, name, hash, id);
}

static int do_create(admin_ctx *a, const char *name, int json)
{
    char token[APIKEY_LEN + 1];
    int64_t id = 0;
    qk_err rc = operator_token_issue(a->store, name, token, &id);
    if (rc == QK_OK) {
        char *meta = xasprintf("{\"tokenId\":%" PRId64 "}", id);
        rc = record(a, "operator.token.create", meta);
        free(meta);
        if (rc != QK_OK) { /* not on record: not valid either */
            int found = 0;
            (void)STORE_CALL(a->store, operator_token_revoke, id, &found);
        }
    }
    if (rc != QK_OK) {
        report_err("operator token create", rc);
        sodium_memzero(token, sizeof(token));
        return EXIT_FAIL;
    }
    if (json)
        printf("{\"id\": %" PRId64 ", \"name\": \"%s\", \"operator_token\": \"%s\"}\n", id, name,
               token);
    else
        printf("Operator token %" PRId64 " (%s), shown once:\n\n  %s\n", id, name, token);
    sodium_memzero(token, sizeof(token));
    return EXIT_OK;
}

static int do_list(admin_ctx *a, int json)
{
    store_operator_token *t = NULL;
    size_t n = 0;
    qk_err rc = STORE_CALL(a->store, operator_token_list, &t, &n);
    if (rc != QK_OK) {
        report_err("operator token list", rc);
        return EXIT_FAIL;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        if (json) {
            json_array_append_new(arr,
                                  json_pack("{s:I,s:s,s:I,s:I}", "id", (json_int_t)t[i].id, "name",
                                            t[i].name, "created_at", (json_int_t)t[i].created_at,
                                            "revoked_at", (json_int_t)t[i].revoked_at));
        } else {
            char c[32];
            format_time(t[i].created_at, c);
            printf("%" PRId64 "\t%s\t%s\t%s\n", t[i].id, t[i].name, c,
                   t[i].revoked_at ? "revoked" : "active");
        }
    }
    if (json) {
        char *text = json_dumps(arr, JSON_INDENT(2));
        printf("%s\n", text != NULL ? text : "[]");
        free(text);
    }
    json_decref(arr);
    store_operator_token_list_free(t, n);
    return EXIT_OK;
}

static int do_revoke(admin_ctx *a, const char *id_s)
{
    char *end = NULL;
    int found = 0;
    errno = 0;
    long long id = strtoll(id_s, &end, 10);
    if (errno != 0 || end == id_s || *end != '\0' || id <= 0)
        return usage_error("operator", "'%s' is not a token id", id_s);
    qk_err rc = STORE_CALL(a->store, operator_token_revoke, (int64_t)id, &found);
    if (rc != QK_OK) {
        if (!found && rc == QK_ERR_INVALID_ARG)
            fprintf(stderr, "qwickd operator token revoke: no active token %lld\n", id);
        else
            report_err("operator token revoke", rc);
        return EXIT_FAIL;
    }
    char *meta = xasprintf("{\"tokenId\":%lld}", id);
    rc = record(a, "operator.token.revoke", meta);
    free(meta);
    if (rc != QK_OK) {
        report_err("operator token revoke: revoked, but not on record", rc);
        return EXIT_FAIL;
    }
    printf("Revoked operator token %lld.\n", id);
    return EXIT_OK;
}

int cmd_operator(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, 'd'},
        {"name", required_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *data = NULL, *name = "operator", *dir;
    int c, json = 0, status;
    admin_ctx a;
    qk_err rc;

    if (argc < 3 || strcmp(argv[1], "token") != 0) {
        if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
            help();
            return EXIT_OK;
        }
        help();
        return EXIT_USAGE;
    }
    const char *sub = argv[2];
    if (strcmp(sub, "create") != 0 && strcmp(sub, "list") != 0 && strcmp(sub, "revoke") != 0)
        return usage_error("operator", "unknown subcommand 'token %s' (create, list, revoke)", sub);
    argc -= 2;
    argv += 2;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            data = optarg;
            break;
        case 'n':
            name = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            help();
            return EXIT_OK;
        default:
            return usage_error("operator", "unrecognized option '%s'", argv[optind - 1]);
        }
    }
    if ((strcmp(sub, "revoke") == 0) != (optind + 1 == argc) ||
        (strcmp(sub, "revoke") != 0 && optind < argc))
        return usage_error("operator", "revoke takes one ID; create and list take none");
    if ((dir = data_dir_arg(data)) == NULL)
        return usage_error("operator", "--data DIR is required");
    if (strlen(name) == 0 || strlen(name) > API_MAX_KEY_NAME_CLI)
        return usage_error("operator", "--name: 1 to %d characters", API_MAX_KEY_NAME_CLI);
    if ((rc = admin_open(dir, NULL, &a)) != QK_OK) {
        report_err("operator", rc);
        return EXIT_FAIL;
    }
    if (strcmp(sub, "create") == 0)
        status = do_create(&a, name, json);
    else if (strcmp(sub, "list") == 0)
        status = do_list(&a, json);
    else
        status = do_revoke(&a, argv[optind]);
    admin_close(&a);
    return status;
}
