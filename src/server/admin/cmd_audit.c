/* qwickd audit verify: recompute every org's transparency log from its rows
 * and check it against the latest signed checkpoint. */
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "admin/qwickd.h"
#include "common/tlog.h"
#include "audit/transparency.h"
#include "core/util.h"

static void help(void)
{
    printf("Usage: qwickd audit verify --data DIR [--org NAME] [--master-key FILE]\n\n"
           "Recomputes each org's transparency log from the audit rows (every org and the\n"
           "instance log of failed authentications, or only --org NAME): value types, every\n"
           "leaf and tree node, the log head, the signed requests against their entries,\n"
           "and the tree against the latest signed checkpoint. Exit status 0 when every\n"
           "log is intact, 1 when one is not (the problem and the first entry at fault are\n"
           "named). Rollback to an older copy of the database is only visible from outside:\n"
           "see `qwick log verify`.\n"
           "--master-key FILE names the master key when it is kept outside DIR (it opens\n"
           "the log key that checks the checkpoints).\n");
}

/* The latest checkpoint must verify under the log key, and the tree the rows
 * rebuilt must have that root at that size. */
static int check_checkpoint(admin_ctx *a, const tl_key *k, int64_t org, int64_t count, char *why,
                            size_t whylen)
{
    store_checkpoint cp;
    store_proof p;
    tlog_checkpoint parsed;
    const char *err = NULL;
    int found = 0, ok = 0;
    uint8_t pub[32];
    char *name = NULL, *origin = tl_origin(k, org);

    if (STORE_CALL(a->store, checkpoint_latest, org, &cp, &found) != QK_OK) {
        snprintf(why, whylen, "cannot read checkpoints: %s", qk_error_detail());
        free(origin);
        return 0;
    }
    if (!found) {
        free(origin);
        return 1; /* nothing signed yet: nothing to contradict */
    }
    if (tlog_vkey_parse(tl_key_vkey(k), &name, pub, &err) != 0 ||
        tlog_checkpoint_open(cp.note, strlen(cp.note), name, pub, &parsed, &err) != 0) {
        snprintf(why, whylen, "latest checkpoint (size %" PRId64 "): %s", cp.size, err);
    } else if (parsed.size != cp.size || strcmp(parsed.origin, origin) != 0 ||
               memcmp(parsed.root, cp.root, 32) != 0) {
        snprintf(why, whylen, "latest checkpoint's note does not match its row");
    } else if (cp.size > count) {
        snprintf(why, whylen,
                 "the log was cut back: a checkpoint signed %" PRId64 " entries, %" PRId64
                 " remain",
                 cp.size, count);
    } else if (STORE_CALL(a->store, log_prove, org, PROOF_ROOT, 0, cp.size, &p) != QK_OK) {
        snprintf(why, whylen, "cannot compute the root at %" PRId64 ": %s", cp.size,
                 qk_error_detail());
    } else if (memcmp(p.root, cp.root, 32) != 0) {
        snprintf(why, whylen,
                 "the first %" PRId64 " entries no longer have the root the checkpoint signed",
                 cp.size);
    } else {
        ok = 1;
    }
    if (err == NULL)
        tlog_checkpoint_clear(&parsed);
    free(name);
    free(origin);
    store_checkpoint_clear(&cp);
    return ok;
}

/* One org's log: 0 intact, 1 broken, 2 could not be read. */
static int verify_org(admin_ctx *a, const tl_key *k, int64_t org, const char *name)
{
    store_audit_check chk;
    char why[320] = "";
    qk_err rc = STORE_CALL(a->store, audit_verify, org, &chk);
    if (rc != QK_OK) {
        report_err("audit verify", rc);
        return 2;
    }
    if (!chk.ok) {
        if (chk.bad_seq > 0)
            printf("log of %s BROKEN at entry %" PRId64 ": %s\n", name, chk.bad_seq, chk.problem);
        else
            printf("log of %s BROKEN: %s\n", name, chk.problem);
        return 1;
    }
    if (k != NULL && !check_checkpoint(a, k, org, chk.count, why, sizeof(why))) {
        printf("log of %s BROKEN: %s\n", name, why);
        return 1;
    }
    printf("log of %s intact: %" PRId64 " entries\n", name, chk.count);
    return 0;
}

static int verify_all(admin_ctx *a, const tl_key *k, const char *only)
{
    store_org *orgs = NULL;
    size_t n = 0;
    int worst = 0, r;
    if (only != NULL)
        return verify_org(a, k, a->org, only);
    if (STORE_CALL(a->store, org_list, &orgs, &n) != QK_OK) {
        report_err("audit verify", QK_ERR_IO);
        return 2;
    }
    for (size_t i = 0; i < n; i++) {
        char *label = xasprintf("org %s", orgs[i].name);
        r = verify_org(a, k, orgs[i].id, label);
        free(label);
        worst = r > worst ? r : worst;
    }
    store_org_list_free(orgs, n);
    r = verify_org(a, k, 0, "the instance (failed authentications)");
    return r > worst ? r : worst;
}

int cmd_audit(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, 'd'},
        {"org", required_argument, NULL, 'o'},
        {"master-key", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *data = NULL, *org = NULL, *dir, *master_key = NULL;
    admin_ctx a;
    qk_keyring *kr = NULL;
    tl_key *k = NULL;
    int c, r;
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
        case 'm':
            master_key = optarg;
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
    rc = master_key_load(dir, master_key, &kr);
    if (rc == QK_OK)
        rc = tl_key_load(a.store, kr, 0, &k);
    if (rc != QK_OK) {
        /* Without the key the rows are still checked; checkpoints are not. */
        fprintf(stderr, "qwickd: audit verify: checkpoints not checked: %s\n", qk_error_detail());
        k = NULL;
    }
    r = verify_all(&a, k, org);
    tl_key_free(k);
    keyring_free(kr);
    admin_close(&a);
    return r == 0 ? EXIT_OK : EXIT_FAIL;
}
