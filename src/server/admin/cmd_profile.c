/* qwickd profile create|list|show|disable: certificate profile administration. */
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "signer/profile.h"
#include "admin/qwickd.h"
#include "core/util.h"

static void help(void)
{
    printf("Usage: qwickd profile create  --data DIR [--org NAME] --name NAME --config FILE"
           " [--json]\n"
           "       qwickd profile list    --data DIR [--org NAME] [--json]\n"
           "       qwickd profile show    --data DIR [--org NAME] [--json] NAME\n"
           "       qwickd profile disable --data DIR [--org NAME] [--json] NAME\n\n"
           "A profile names the key that signs and its certificates. FILE is JSON:\n"
           "  {\"backend\": \"local\", \"key\": \"key.pem\", \"chain\": \"chain.pem\","
           " \"password\": \"...\"}\n"
           "  {\"backend\": \"local\", \"pkcs12\": \"file.pfx\", \"password\": \"...\"}\n"
           "  {\"backend\": \"azure\", \"azure\": {\"endpoint\": ..., \"account\": ...,"
           " ...}}   (docs/azure.md)\n"
           "Secrets in FILE (private keys, refresh tokens, client secrets) are sealed under\n"
           "the master key; FILE itself is not kept. Relative file names are relative to\n"
           "FILE's folder. Every change is recorded in the audit log.\n\n"
           "  -d, --data DIR     data directory (default: $QWICKD_DATA)\n"
           "      --org NAME     org (default: default_org of qwickd.json)\n"
           "      --name NAME    new profile's name (A-Z a-z 0-9 . _ -, at most 64)\n"
           "      --config FILE  the profile's config\n"
           "      --json         machine-readable output\n"
           "      --master-key F the master key (default: $" MASTER_KEY_ENV ",\n"
           "                     $CREDENTIALS_DIRECTORY/" MASTER_KEY_CREDENTIAL
           ", DIR/" KEYRING_FILE ")\n");
}

typedef struct profile_opts {
    const char *data, *org, *name, *config, *master_key;
    int json;
} profile_opts;

static int print_json_value(json_t *j)
{
    char *text = j != NULL ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    if (text == NULL) {
        fputs("qwickd: out of memory\n", stderr);
        return EXIT_FAIL;
    }
    printf("%s\n", text);
    free(text);
    return fflush(stdout) == 0 ? EXIT_OK : EXIT_FAIL;
}

static void print_profile_text(const store_profile *p)
{
    json_t *j = profile_json(p);
    json_t *cert = json_object_get(j, "certificate");
    json_t *az = json_object_get(json_object_get(j, "config"), "azure");
    char ct[32], dt[32];
    format_time(p->created_at, ct);
    format_time(p->disabled_at, dt);
    printf("profile   %s\nbackend   %s\nstatus    %s%s%s\ncreated   %s\n", p->name, p->backend,
           p->disabled_at ? "disabled since " : "active", p->disabled_at ? dt : "",
           profile_requires_timestamp(p) ? " (signatures must be timestamped)" : "", ct);
    if (cert != NULL && !json_is_null(cert))
        printf("subject   %s\nissuer    %s\nvalid     %s .. %s\nsha256    %s\n",
               json_string_value(json_object_get(cert, "subject")),
               json_string_value(json_object_get(cert, "issuer")),
               json_string_value(json_object_get(cert, "notBefore")),
               json_string_value(json_object_get(cert, "notAfter")),
               json_string_value(json_object_get(cert, "sha256")));
    if (az != NULL) {
        json_t *cr = json_object_get(az, "credentials");
        printf("endpoint  %s\naccount   %s / %s\ntenant    %s\napp       %s (object %s)\n"
               "graph     %s (%s)\nsecrets   ttl %" JSON_INTEGER_FORMAT
               " s, at most %" JSON_INTEGER_FORMAT " alive\n",
               json_string_value(json_object_get(az, "endpoint")),
               json_string_value(json_object_get(az, "account")),
               json_string_value(json_object_get(az, "certificateProfile")),
               json_string_value(json_object_get(az, "tenantId")),
               json_string_value(json_object_get(az, "clientId")),
               json_string_value(json_object_get(az, "applicationObjectId")),
               json_string_value(json_object_get(az, "graphUrl")),
               json_string_value(json_object_get(json_object_get(az, "graph"), "grant")),
               json_integer_value(json_object_get(cr, "ttlSeconds")),
               json_integer_value(json_object_get(cr, "maxSecrets")));
    }
    json_decref(j);
}

/* Prints profile `name` as it is now in the store. */
static int show_one(admin_ctx *a, const char *name, int as_json)
{
    store_profile p;
    int found = 0, status;
    qk_err rc = STORE_CALL(a->store, profile_get, a->org, name, &p, &found);
    if (rc != QK_OK) {
        if (!found && rc == QK_ERR_INVALID_ARG)
            fprintf(stderr, "qwickd profile: no profile '%s' in org %s\n", name, a->org_name);
        else
            report_err("profile", rc);
        return EXIT_FAIL;
    }
    if (as_json) {
        json_t *j = profile_json(&p);
        status = print_json_value(j);
        json_decref(j);
    } else {
        print_profile_text(&p);
        status = fflush(stdout) == 0 ? EXIT_OK : EXIT_FAIL;
    }
    store_profile_clear(&p);
    return status;
}

static int do_create(admin_ctx *a, const profile_opts *o)
{
    profile_import imp;
    qk_keyring *kr = NULL;
    int64_t id = 0;
    int status = EXIT_FAIL;
    qk_err rc;

    if (o->name == NULL || o->config == NULL)
        return usage_error("profile", "create needs --name and --config");
    if (!profile_name_ok(o->name))
        return usage_error("profile", "bad profile name '%s' (A-Z a-z 0-9 . _ -, at most %d)",
                           o->name, PROFILE_MAX_NAME);
    if ((rc = profile_import_file(o->config, &imp)) != QK_OK) {
        report_err("profile create", rc);
        return EXIT_FAIL;
    }
    if ((rc = master_key_load(a->dir, o->master_key, &kr)) != QK_OK) {
        report_err("master key", rc);
        goto out;
    }
    /* The profile and its audit entry commit together, or neither. */
    store_audit au;
    admin_audit_init(a, "profile.create", &au);
    if ((rc = profile_store(a->store, kr, a->org, o->name, &imp, &au, &id)) != QK_OK) {
        report_err("profile create (nothing recorded, no profile made)", rc);
        goto out;
    }
    if (!o->json)
        printf("Created profile %s (org %s).\n", o->name, a->org_name);
    status = show_one(a, o->name, o->json);
out:
    keyring_free(kr);
    profile_import_clear(&imp);
    return status;
}

static int do_list(admin_ctx *a, const profile_opts *o)
{
    store_profile *ps = NULL;
    size_t n = 0;
    int status = EXIT_OK;
    qk_err rc = STORE_CALL(a->store, profile_list, a->org, &ps, &n);
    if (rc != QK_OK) {
        report_err("profile list", rc);
        return EXIT_FAIL;
    }
    if (o->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, profile_json(&ps[i]));
        status = print_json_value(arr);
        json_decref(arr);
    } else {
        printf("%-24s %-8s %-9s %-21s %s\n", "NAME", "BACKEND", "STATUS", "CREATED", "SIGNER");
        for (size_t i = 0; i < n; i++) {
            char ct[32];
            json_t *j = profile_json(&ps[i]);
            json_t *cert = json_object_get(j, "certificate");
            json_t *az = json_object_get(json_object_get(j, "config"), "azure");
            char who[256] = "-";
            if (cert != NULL && json_is_object(cert))
                snprintf(who, sizeof(who), "%s",
                         json_string_value(json_object_get(cert, "subject")));
            else if (az != NULL)
                snprintf(who, sizeof(who), "azure %s/%s",
                         json_string_value(json_object_get(az, "account")),
                         json_string_value(json_object_get(az, "certificateProfile")));
            format_time(ps[i].created_at, ct);
            printf("%-24s %-8s %-9s %-21s %s\n", ps[i].name, ps[i].backend,
                   ps[i].disabled_at ? "disabled" : "active", ct, who);
            json_decref(j);
        }
        status = fflush(stdout) == 0 ? EXIT_OK : EXIT_FAIL;
    }
    store_profile_list_free(ps, n);
    return status;
}

static int do_disable(admin_ctx *a, const profile_opts *o, const char *name)
{
    int found = 0;
    qk_err rc;
    store_profile p;
    if ((rc = STORE_CALL(a->store, profile_get, a->org, name, &p, &found)) != QK_OK) {
        if (!found && rc == QK_ERR_INVALID_ARG)
            fprintf(stderr, "qwickd profile disable: no profile '%s' in org %s\n", name,
                    a->org_name);
        else
            report_err("profile disable", rc);
        return EXIT_FAIL;
    }
    store_profile_clear(&p);
    store_audit au;
    admin_audit_init(a, "profile.disable", &au);
    if ((rc = STORE_CALL(a->store, profile_disable, a->org, name, now_unix(), &au, &found)) !=
        QK_OK) {
        report_err("profile disable", rc);
        return EXIT_FAIL;
    }
    if (!o->json)
        printf("Disabled profile %s (org %s): signing requests naming it are refused.\n", name,
               a->org_name);
    return show_one(a, name, o->json);
}

int cmd_profile(int argc, char **argv)
{
    static const struct option longopts[] = {{"data", required_argument, NULL, 'd'},
                                             {"org", required_argument, NULL, 'o'},
                                             {"name", required_argument, NULL, 'n'},
                                             {"config", required_argument, NULL, 'c'},
                                             {"json", no_argument, NULL, 'j'},
                                             {"help", no_argument, NULL, 'h'},
                                             {"master-key", required_argument, NULL, 'm'},
                                             {NULL, 0, NULL, 0}};
    profile_opts o = {0};
    admin_ctx a;
    int c, status;
    qk_err rc;

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        help();
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    const char *sub = argv[1];
    argc--;
    argv++;
    optind = 1;
    opterr = 0;
    /* Permuting parse: `show NAME --data DIR` works too. */
    while ((c = getopt_long(argc, argv, "d:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            o.data = optarg;
            break;
        case 'o':
            o.org = optarg;
            break;
        case 'n':
            o.name = optarg;
            break;
        case 'c':
            o.config = optarg;
            break;
        case 'j':
            o.json = 1;
            break;
        case 'm':
            o.master_key = optarg;
            break;
        case 'h':
            help();
            return EXIT_OK;
        default:
            return usage_error("profile", "unrecognized option '%s'", argv[optind - 1]);
        }
    }
    int is_create = strcmp(sub, "create") == 0, is_list = strcmp(sub, "list") == 0;
    int needs_name = strcmp(sub, "show") == 0 || strcmp(sub, "disable") == 0;
    if (!is_create && !is_list && !needs_name)
        return usage_error("profile", "unknown subcommand '%s' (create, list, show, disable)", sub);
    if (needs_name && optind + 1 != argc)
        return usage_error("profile", "%s takes one profile name", sub);
    if (!needs_name && optind != argc)
        return usage_error("profile", "unexpected argument '%s'", argv[optind]);
    const char *dir = data_dir_arg(o.data);
    if (dir == NULL)
        return usage_error("profile", "--data DIR (or $QWICKD_DATA) is required");
    if ((rc = admin_open(dir, o.org, &a)) != QK_OK) {
        report_err("profile", rc);
        return EXIT_FAIL;
    }
    if (is_create)
        status = do_create(&a, &o);
    else if (is_list)
        status = do_list(&a, &o);
    else if (strcmp(sub, "show") == 0)
        status = show_one(&a, argv[optind], o.json);
    else
        status = do_disable(&a, &o, argv[optind]);
    admin_close(&a);
    return status;
}
