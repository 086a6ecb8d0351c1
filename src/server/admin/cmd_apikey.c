/* qwickd apikey create|list|revoke: API key administration from the shell. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "auth/apikey.h"
#include "admin/qwickd.h"
#include "signer/profile.h"
#include "core/util.h"

static void help(void)
{
    printf("Usage: qwickd apikey create --data DIR [--name N] [--role admin|signer|viewer]\n"
           "                            [--expires-in SECONDS | --expires DATE] [--org NAME]"
           " [--json]\n"
           "                            [--profiles NAME,...]\n"
           "       qwickd apikey list   --data DIR [--org NAME] [--json]\n"
           "       qwickd apikey revoke --data DIR [--org NAME] [--json] ID\n\n"
           "create prints the new key once (only its SHA-256 is stored). The default role\n"
           "is signer. DATE is YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ (UTC) or @UNIXSECONDS.\n"
           "Revocation takes effect at once, also for a running server. --profiles limits\n"
           "the key to those profiles: signing with any other is refused (403).\n\n"
           "  -d, --data DIR   data directory (default: $QWICKD_DATA)\n"
           "      --org NAME   org (default: default_org of qwickd.json)\n");
}

typedef struct apikey_opts {
    const char *data, *org, *name, *role, *expires, *expires_in, *profiles;
    int json;
} apikey_opts;

static json_t *profiles_json(const char *list)
{
    if (list == NULL)
        return json_null();
    json_t *a = json_array();
    for (const char *p = list;;) {
        size_t len = strcspn(p, ",");
        json_array_append_new(a, json_stringn(p, len));
        if (p[len] == '\0')
            return a;
        p += len + 1;
    }
}

static json_t *key_json(const store_apikey *k)
{
    json_t *j = json_pack("{s:I, s:s, s:s, s:s, s:I, s:I, s:I, s:I}", "id", (json_int_t)k->id,
                          "name", k->name ? k->name : "", "prefix", k->prefix ? k->prefix : "",
                          "role", store_role_name(k->role), "created_at", (json_int_t)k->created_at,
                          "expires_at", (json_int_t)k->expires_at, "revoked_at",
                          (json_int_t)k->revoked_at, "last_used_at", (json_int_t)k->last_used_at);
    json_object_set_new(j, "profiles", profiles_json(k->profiles));
    return j;
}

static int print_json(json_t *j)
{
    char *text = j != NULL ? json_dumps(j, JSON_PRESERVE_ORDER) : NULL;
    int status = EXIT_OK;
    if (text == NULL) {
        fputs("qwickd: out of memory\n", stderr);
        status = EXIT_FAIL;
    } else {
        printf("%s\n", text);
        sodium_memzero(text, strlen(text));
        free(text);
    }
    return status;
}

static int do_create(admin_ctx *a, const apikey_opts *o)
{
    store_role role = ROLE_SIGNER;
    int64_t expires = 0, id = 0, now = now_unix();
    char key[APIKEY_LEN + 1] = "", exp_s[32];
    int status = EXIT_FAIL;
    qk_err rc;

    if (o->role != NULL && store_role_parse(o->role, &role) != 0)
        return usage_error("apikey", "unknown role '%s' (admin, signer or viewer)", o->role);
    if (o->expires != NULL && o->expires_in != NULL)
        return usage_error("apikey", "--expires and --expires-in are exclusive");
    if (o->expires_in != NULL) {
        char *end = NULL;
        errno = 0;
        long long secs = strtoll(o->expires_in, &end, 10);
        if (errno != 0 || end == o->expires_in || *end != '\0' || secs <= 0 ||
            secs > 100LL * 365 * 86400)
            return usage_error("apikey", "--expires-in wants a positive number of seconds");
        expires = now + secs;
    }
    if (o->expires != NULL) {
        if (parse_time(o->expires, &expires) != 0)
            return usage_error("apikey", "cannot parse --expires '%s'", o->expires);
        if (expires <= now)
            return usage_error("apikey", "--expires is in the past");
    }
    if (o->profiles != NULL && !profile_list_ok(o->profiles))
        return usage_error("apikey", "--profiles wants 1 to %d profile names, comma-separated",
                           PROFILE_MAX_LIST);
    const char *name = o->name != NULL ? o->name : "api key";
    store_audit au;
    admin_audit_init(a, "apikey.create", &au);
    if ((rc = apikey_create_for(a->store, a->org, 0, name, role, expires, o->profiles, &au, key,
                                &id)) != QK_OK) {
        report_err("apikey create (nothing recorded, no key made)", rc);
        goto out;
    }
    if (o->json) {
        json_t *j = json_pack("{s:I, s:s, s:s, s:s, s:s, s:I}", "id", (json_int_t)id, "name", name,
                              "prefix", "", "role", store_role_name(role), "api_key", key,
                              "expires_at", (json_int_t)expires);
        if (j != NULL) {
            char prefix[APIKEY_PREFIX_LEN + 1];
            memcpy(prefix, key, APIKEY_PREFIX_LEN);
            prefix[APIKEY_PREFIX_LEN] = '\0';
            json_object_set_new(j, "prefix", json_string(prefix));
            json_object_set_new(j, "profiles", profiles_json(o->profiles));
        }
        status = print_json(j);
        if (j != NULL) {
            char *copy = (char *)json_string_value(json_object_get(j, "api_key"));
            if (copy != NULL)
                sodium_memzero(copy, strlen(copy));
        }
        json_decref(j);
    } else {
        format_time(expires, exp_s);
        printf("Created API key %" PRId64 " (%s, role %s, org %s, expires %s).\n"
               "Shown once, store it now:\n\n  %s\n",
               id, name, store_role_name(role), a->org_name, expires ? exp_s : "never", key);
        status = EXIT_OK;
    }
    if (fflush(stdout) != 0)
        status = EXIT_FAIL;
out:
    sodium_memzero(key, sizeof(key));
    return status;
}

static int do_list(admin_ctx *a, const apikey_opts *o)
{
    store_apikey *keys = NULL;
    size_t n = 0;
    int status = EXIT_OK;
    qk_err rc = STORE_CALL(a->store, apikey_list, a->org, &keys, &n);
    if (rc != QK_OK) {
        report_err("apikey list", rc);
        return EXIT_FAIL;
    }
    if (o->json) {
        json_t *arr = json_array();
        for (size_t i = 0; arr != NULL && i < n; i++)
            json_array_append_new(arr, key_json(&keys[i]));
        status = print_json(arr);
        json_decref(arr);
    } else {
        printf("%-5s %-20s %-11s %-7s %-21s %-21s %-21s %s\n", "ID", "NAME", "PREFIX", "ROLE",
               "CREATED", "EXPIRES", "REVOKED", "LAST USED");
        for (size_t i = 0; i < n; i++) {
            char cr[32], ex[32], rv[32], lu[32];
            format_time(keys[i].created_at, cr);
            format_time(keys[i].expires_at, ex);
            format_time(keys[i].revoked_at, rv);
            format_time(keys[i].last_used_at, lu);
            printf("%-5" PRId64 " %-20s %-11s %-7s %-21s %-21s %-21s %s\n", keys[i].id,
                   keys[i].name, keys[i].prefix, store_role_name(keys[i].role), cr,
                   keys[i].expires_at ? ex : "never", keys[i].revoked_at ? rv : "-",
                   keys[i].last_used_at ? lu : "never");
        }
    }
    if (fflush(stdout) != 0)
        status = EXIT_FAIL;
    store_apikey_list_free(keys, n);
    return status;
}

static int do_revoke(admin_ctx *a, const apikey_opts *o, const char *id_s)
{
    store_apikey k;
    char *end = NULL;
    int found = 0, status = EXIT_FAIL;
    qk_err rc;

    errno = 0;
    long long id = strtoll(id_s, &end, 10);
    if (errno != 0 || end == id_s || *end != '\0' || id <= 0)
        return usage_error("apikey", "'%s' is not a key id (see 'qwickd apikey list')", id_s);
    store_audit au;
    admin_audit_init(a, "apikey.revoke", &au);
    if ((rc = STORE_CALL(a->store, apikey_revoke, a->org, (int64_t)id, &au, &found)) != QK_OK) {
        if (!found && rc == QK_ERR_INVALID_ARG)
            fprintf(stderr, "qwickd apikey revoke: no API key %lld in org %s\n", id, a->org_name);
        else
            report_err("apikey revoke (nothing recorded, key not revoked)", rc);
        return EXIT_FAIL;
    }
    if ((rc = STORE_CALL(a->store, apikey_get, a->org, (int64_t)id, &k, &found)) != QK_OK) {
        report_err("apikey revoke", rc);
        return EXIT_FAIL;
    }
    if (o->json) {
        json_t *j = key_json(&k);
        status = print_json(j);
        json_decref(j);
    } else {
        printf("Revoked API key %lld (%s, %s).\n", id, k.prefix, k.name);
        status = EXIT_OK;
    }
    store_apikey_clear(&k);
    if (fflush(stdout) != 0)
        status = EXIT_FAIL;
    return status;
}

int cmd_apikey(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, 'd'},     {"org", required_argument, NULL, 'o'},
        {"name", required_argument, NULL, 'n'},     {"role", required_argument, NULL, 'r'},
        {"expires", required_argument, NULL, 'E'},  {"expires-in", required_argument, NULL, 'e'},
        {"profiles", required_argument, NULL, 'p'}, {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    apikey_opts o = {0};
    admin_ctx a;
    const char *sub, *dir;
    int c, status;
    qk_err rc;

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        help();
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    sub = argv[1];
    if (strcmp(sub, "create") != 0 && strcmp(sub, "list") != 0 && strcmp(sub, "revoke") != 0)
        return usage_error("apikey", "unknown subcommand '%s' (create, list, revoke)", sub);
    argc--;
    argv++;
    optind = 1;
    opterr = 0;
    /* Permuting parse (no '+'): `revoke ID --data DIR` works too. */
    while ((c = getopt_long(argc, argv, "d:h", opts, NULL)) != -1) {
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
        case 'r':
            o.role = optarg;
            break;
        case 'E':
            o.expires = optarg;
            break;
        case 'e':
            o.expires_in = optarg;
            break;
        case 'p':
            o.profiles = optarg;
            break;
        case 'j':
            o.json = 1;
            break;
        case 'h':
            help();
            return EXIT_OK;
        default:
            return usage_error("apikey", "unrecognized option '%s'", argv[optind - 1]);
        }
    }
    if ((dir = data_dir_arg(o.data)) == NULL)
        return usage_error("apikey", "--data DIR is required");
    int want_args = strcmp(sub, "revoke") == 0 ? 1 : 0;
    if (argc - optind != want_args)
        return usage_error("apikey",
                           want_args ? "revoke takes one key ID" : "unexpected argument '%s'",
                           argv[optind]);
    if (strcmp(sub, "create") != 0 && (o.name || o.role || o.expires || o.expires_in))
        return usage_error("apikey", "--name, --role and --expires* apply to create only");

    if ((rc = admin_open(dir, o.org, &a)) != QK_OK) {
        report_err("apikey", rc);
        return EXIT_FAIL;
    }
    if (strcmp(sub, "create") == 0)
        status = do_create(&a, &o);
    else if (strcmp(sub, "list") == 0)
        status = do_list(&a, &o);
    else
        status = do_revoke(&a, &o, argv[optind]);
    admin_close(&a);
    return status;
}
