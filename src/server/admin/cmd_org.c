/* qwickd org create|list: the tenants of one instance. An org's creation is
 * an entry of the instance log (org 0), committed with it. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "admin/qwickd.h"
#include "core/util.h"

#define ORG_NAME_MAX 64

static void help(void)
{
    printf("Usage: qwickd org create --data DIR NAME [--json]\n"
           "       qwickd org list   --data DIR [--json]\n\n"
           "Orgs are the tenants of one qwickd: each has its own API keys, profiles,\n"
           "signing requests and transparency log, and sees nothing of another's (on\n"
           "PostgreSQL, row-level security enforces it in the database too). A new org\n"
           "has no key yet: `qwickd apikey create --org NAME --role admin` makes its first.\n\n"
           "  -d, --data DIR   data directory (default: $QWICKD_DATA)\n"
           "      --json       machine-readable output\n"
           "NAME: 1 to " "64" " characters of letters, digits, '.', '_' and '-'.\n");
}

static int name_ok(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > ORG_NAME_MAX)
        return 0;
    for (const char *p = n; *p != '\0'; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            return 0;
    return 1;
}

static int do_create(admin_ctx *a, const char *name, int json)
{
    store_audit au;
    int64_t id = 0, existing = 0;
    int found = 0;
    if (!name_ok(name))
        return usage_error("org", "'%s' is not an org name (1-%d of [A-Za-z0-9._-])", name,
                           ORG_NAME_MAX);
    if (STORE_CALL(a->store, org_find, name, &existing, &found) == QK_OK && found) {
        fprintf(stderr, "qwickd org create: an org named '%s' exists (id %" PRId64 ")\n", name,
                existing);
        return EXIT_FAIL;
    }
    admin_audit_init(a, "org.create", &au);
    au.org_id = 0;
    qk_err rc = STORE_CALL(a->store, org_create, name, &au, &id);
    if (rc != QK_OK) {
        report_err("org create", rc);
        return EXIT_FAIL;
    }
    if (json)
        printf("{\"id\": %" PRId64 ", \"name\": \"%s\"}\n", id, name);
    else
        printf("Org %" PRId64 " '%s' created. Its first key:\n"
               "  qwickd apikey create --data %s --org %s --role admin --name admin\n",
               id, name, a->dir, name);
    return EXIT_OK;
}

static int do_list(admin_ctx *a, int json)
{
    store_org *orgs = NULL;
    size_t n = 0;
    qk_err rc = STORE_CALL(a->store, org_list, &orgs, &n);
    if (rc != QK_OK) {
        report_err("org list", rc);
        return EXIT_FAIL;
    }
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, json_pack("{s:I,s:s}", "id", (json_int_t)orgs[i].id,
                                                 "name", orgs[i].name));
        char *text = json_dumps(arr, JSON_INDENT(2));
        printf("%s\n", text != NULL ? text : "[]");
        free(text);
        json_decref(arr);
    } else {
        printf("ID    NAME\n");
        for (size_t i = 0; i < n; i++)
            printf("%-5" PRId64 " %s\n", orgs[i].id, orgs[i].name);
    }
    store_org_list_free(orgs, n);
    return EXIT_OK;
}

int cmd_org(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, 'd'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *data = NULL;
    int json = 0, c;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        help();
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    const char *verb = argv[1];
    if (strcmp(verb, "create") != 0 && strcmp(verb, "list") != 0)
        return usage_error("org", "unknown subcommand '%s' (create, list)", verb);
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc - 1, argv + 1, "d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            data = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            help();
            return EXIT_OK;
        default:
            return usage_error("org", "unrecognized option '%s'", argv[optind]);
        }
    }
    int nargs = argc - 1 - optind;
    char **args = argv + 1 + optind;
    if (strcmp(verb, "create") == 0 && nargs != 1)
        return usage_error("org", "create takes one NAME");
    if (strcmp(verb, "list") == 0 && nargs != 0)
        return usage_error("org", "list takes no argument");
    if ((data = data_dir_arg(data)) == NULL)
        return usage_error("org", "--data DIR is required");

    admin_ctx a;
    qk_err rc = admin_open(data, NULL, &a);
    if (rc != QK_OK) {
        report_err("org", rc);
        return EXIT_FAIL;
    }
    int status = strcmp(verb, "create") == 0 ? do_create(&a, args[0], json) : do_list(&a, json);
    admin_close(&a);
    return status;
}
