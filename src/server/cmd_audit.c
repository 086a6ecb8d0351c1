/* qwickd audit verify: recompute an org's audit hash chain. */
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "qwickd.h"

static void help(void)
{
    printf("Usage: qwickd audit verify --data DIR [--org NAME]\n\n"
           "Recomputes the org's audit hash chain. Exit status 0 when intact, 1 when a\n"
           "row was edited, deleted or the tail truncated (the first bad row is named).\n");
}

int cmd_audit(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, 'd'},
        {"org", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *data = NULL, *org = NULL, *dir;
    admin_ctx a;
    int c, ok = 0;
    int64_t bad = 0, count = 0;
    qk_err rc;

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        help();
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    if (strcmp(argv[1], "verify") != 0)
        return usage_error("audit", "unknown subcommand '%s' (verify)", argv[1]);
    argc--;
    argv++;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            data = optarg;
            break;
        case 'o':
            org = optarg;
            break;
        case 'h':
            help();
            return EXIT_OK;
        default:
            return usage_error("audit", "unrecognized option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("audit", "unexpected argument '%s'", argv[optind]);
    if ((dir = data_dir_arg(data)) == NULL)
        return usage_error("audit", "--data DIR is required");
    if ((rc = admin_open(dir, org, &a)) != QK_OK) {
        report_err("audit", rc);
        return EXIT_FAIL;
    }
    rc = STORE_CALL(a.store, audit_verify, a.org, &ok, &bad, &count);
    if (rc != QK_OK)
        report_err("audit verify", rc);
    else if (ok)
        printf("audit chain of org %s intact: %" PRId64 " rows\n", a.org_name, count);
    else if (bad != 0)
        printf("audit chain of org %s BROKEN at row %" PRId64 " (edited or a row before it "
               "deleted)\n",
               a.org_name, bad);
    else
        printf("audit chain of org %s BROKEN: rows missing at the end (after %" PRId64 " rows)\n",
               a.org_name, count);
    admin_close(&a);
    return rc == QK_OK && ok ? EXIT_OK : EXIT_FAIL;
}
