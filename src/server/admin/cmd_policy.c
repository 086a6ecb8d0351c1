/* qwickd policy set|show|clear: a profile's signing policy (policy.h). */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "admin/qwickd.h"
#include "core/util.h"
#include "policy/policy.h"

static void help(void)
{
    printf("Usage: qwickd policy set   --data DIR [--org NAME] --profile NAME FILE\n"
           "       qwickd policy show  --data DIR [--org NAME] --profile NAME [--json]\n"
           "       qwickd policy clear --data DIR [--org NAME] --profile NAME\n\n"
           "A policy is a JSON document attached to a certificate profile; every signing\n"
           "request naming the profile must satisfy it (docs/api.md, \"Policies\"):\n"
           "  {\"ip_allowlist\": [\"10.0.0.0/8\", \"2001:db8::/32\"],\n"
           "   \"signing_hours\": {\"days\": \"mon-fri\", \"from\": \"08:00\", \"to\": \"18:00\",\n"
           "                     \"timezone\": \"Europe/Berlin\"},\n"
           "   \"filenames\": [\"*.exe\", \"*.dll\"], \"formats\": [\"authenticode-pe\"],\n"
           "   \"algorithms\": [\"sha256\"], \"require_justification\": true}\n"
           "Unknown keys and bad values are refused with the key named. FILE may be - for\n"
           "standard input. Every change is recorded in the audit log.\n\n"
           "  -d, --data DIR      data directory (default: $QWICKD_DATA)\n"
           "      --org NAME      org (default: default_org of qwickd.json)\n"
           "      --profile NAME  the profile\n"
           "      --json          show: the policy as JSON (null when none)\n");
}

/* The document at `path` ("-": standard input), at most POLICY_MAX_BYTES. */
static int read_doc(const char *path, qk_buf *out)
{
    if (strcmp(path, "-") != 0) {
        qk_err rc = file_read_all(path, POLICY_MAX_BYTES, out);
        if (rc != QK_OK)
            report_err(path, rc);
        return rc == QK_OK ? 0 : -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *p = malloc(cap);
    for (;;) {
        if (p == NULL) {
            fputs("qwickd: out of memory\n", stderr);
            return -1;
        }
        size_t n = fread(p + len, 1, cap - len, stdin);
        len += n;
        if (n == 0)
            break;
        if (len > POLICY_MAX_BYTES) {
            fprintf(stderr, "qwickd policy set: the policy is over %u bytes\n", POLICY_MAX_BYTES);
            free(p);
            return -1;
        }
        if (len == cap) {
            uint8_t *q = realloc(p, cap *= 2);
            if (q == NULL)
                free(p);
            p = q;
        }
    }
    if (ferror(stdin)) {
        fputs("qwickd policy set: cannot read standard input\n", stderr);
        free(p);
        return -1;
    }
    out->data = p;
    out->len = len;
    return 0;
}

static int get_profile(admin_ctx *a, const char *name, store_profile *p)
{
    int found = 0;
    qk_err rc = STORE_CALL(a->store, profile_get, a->org, name, p, &found);
    if (rc == QK_OK)
        return 0;
    if (!found && rc == QK_ERR_INVALID_ARG)
        fprintf(stderr, "qwickd policy: no profile '%s' in org %s\n", name, a->org_name);
    else
        report_err("policy", rc);
    return -1;
}

static int do_show(admin_ctx *a, const char *name, int as_json)
{
    store_profile p;
    if (get_profile(a, name, &p) != 0)
        return EXIT_FAIL;
    if (as_json) {
        printf("%s\n", p.policy != NULL ? p.policy : "null");
    } else if (p.policy == NULL) {
        printf("Profile %s (org %s) has no policy: every signing request its keys may make is "
               "allowed.\n",
               name, a->org_name);
    } else {
        json_t *j = json_loads(p.policy, 0, NULL);
        char *text = j != NULL ? json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
        printf("Policy of profile %s (org %s):\n%s\n", name, a->org_name,
               text != NULL ? text : p.policy);
        free(text);
        json_decref(j);
    }
    store_profile_clear(&p);
    return fflush(stdout) == 0 ? EXIT_OK : EXIT_FAIL;
}

/* Sets (doc != NULL) or clears the policy. */
static int do_set(admin_ctx *a, const char *name, const char *path)
{
    qk_buf doc = {0};
    policy *pol = NULL;
    char *canon = NULL;
    int status = EXIT_FAIL, found = 0;
    store_profile p;
    api_error e;

    if (path != NULL) {
        if (read_doc(path, &doc) != 0)
            return EXIT_FAIL;
        if (policy_parse(doc.data, doc.len, &pol, &e) != 0) {
            fprintf(stderr, "qwickd policy set: %s: %s\n", path, e.message);
            goto out;
        }
        canon = policy_canonical(pol);
    }
    if (get_profile(a, name, &p) != 0)
        goto out;
    store_profile_clear(&p);
    store_audit au;
    admin_audit_init(a, canon != NULL ? "policy.set" : "policy.clear", &au);
    au.profile = name;
    qk_err rc =
        STORE_CALL(a->store, profile_set_policy, a->org, name, canon, now_unix(), &au, &found);
    if (rc != QK_OK) {
        report_err("policy", rc);
        goto out;
    }
    if (canon != NULL)
        printf("Set the policy of profile %s (org %s).\n", name, a->org_name);
    else
        printf("Cleared the policy of profile %s (org %s).\n", name, a->org_name);
    status = fflush(stdout) == 0 ? EXIT_OK : EXIT_FAIL;
out:
    free(canon);
    policy_free(pol);
    qk_buf_free(&doc);
    return status;
}

int cmd_policy(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"data", required_argument, NULL, 'd'},    {"org", required_argument, NULL, 'o'},
        {"profile", required_argument, NULL, 'p'}, {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    const char *data = NULL, *org = NULL, *profile = NULL;
    int c, as_json = 0, status;
    admin_ctx a;
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
    while ((c = getopt_long(argc, argv, "d:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            data = optarg;
            break;
        case 'o':
            org = optarg;
            break;
        case 'p':
            profile = optarg;
            break;
        case 'j':
            as_json = 1;
            break;
        case 'h':
            help();
            return EXIT_OK;
        default:
            return usage_error("policy", "unrecognized option '%s'", argv[optind - 1]);
        }
    }
    int is_set = strcmp(sub, "set") == 0;
    if (!is_set && strcmp(sub, "show") != 0 && strcmp(sub, "clear") != 0)
        return usage_error("policy", "unknown subcommand '%s' (set, show, clear)", sub);
    if (profile == NULL)
        return usage_error("policy", "--profile NAME is required");
    if (is_set && optind + 1 != argc)
        return usage_error("policy", "set takes one FILE (- for standard input)");
    if (!is_set && optind != argc)
        return usage_error("policy", "unexpected argument '%s'", argv[optind]);
    const char *dir = data_dir_arg(data);
    if (dir == NULL)
        return usage_error("policy", "--data DIR (or $QWICKD_DATA) is required");
    if ((rc = admin_open(dir, org, &a)) != QK_OK) {
        report_err("policy", rc);
        return EXIT_FAIL;
    }
    if (strcmp(sub, "show") == 0)
        status = do_show(&a, profile, as_json);
    else
        status = do_set(&a, profile, is_set ? argv[optind] : NULL);
    admin_close(&a);
    return status;
}
