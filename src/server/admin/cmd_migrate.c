/* qwickd migrate: brings the data directory's database to this qwickd's
 * schema, in one transaction. SQLite migrates whenever qwickd opens it, so
 * this only reports; PostgreSQL is migrated by its owner (the URL in
 * qwickd.json), which `serve`'s own role cannot do, so `serve` refuses an
 * older schema and names this command. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin/qwickd.h"
#include "core/util.h"

static void help(void)
{
    printf("Usage: qwickd migrate --data DIR [--database URL] [--json]\n\n"
           "Brings the database of a data directory to this qwickd's schema version, in\n"
           "one transaction (all steps or none). PostgreSQL: run it as the database's\n"
           "owner (the URL in qwickd.json), with the nodes of the older qwickd stopped.\n"
           "SQLite: qwickd migrates whenever it opens the database; this reports it.\n\n"
           "  -d, --data DIR       data directory (default: $QWICKD_DATA)\n"
           "      --database URL   PostgreSQL URL (default: $" DATABASE_URL_ENV
           ", then qwickd.json)\n"
           "      --json           machine-readable output\n");
}

int cmd_migrate(int argc, char **argv)
{
    static const struct option opts[] = {{"data", required_argument, NULL, 'd'},
                                         {"database", required_argument, NULL, 'D'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *dir_opt = NULL, *db_opt = NULL;
    int json = 0, c, from = 0, to = 0;
    qwickd_config cfg;
    qk_err rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, "d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            dir_opt = optarg;
            break;
        case 'D':
            db_opt = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            help();
            return EXIT_OK;
        default:
            return usage_error("migrate", "unknown option");
        }
    }
    if (optind < argc)
        return usage_error("migrate", "unexpected argument '%s'", argv[optind]);
    const char *dir = data_dir_arg(dir_opt);
    if (dir == NULL)
        return usage_error("migrate", "--data DIR is required (or $QWICKD_DATA)");
    /* qwickd.json is init's last file: without it there is nothing to
     * migrate (and opening SQLite here would create a database). */
    char *marker = path_join(dir, CONFIG_FILE);
    int initialised = access(marker, F_OK) == 0;
    free(marker);
    if (!initialised) {
        fprintf(stderr, "qwickd migrate: %s is not an initialised qwickd data directory\n", dir);
        return EXIT_FAIL;
    }
    if ((rc = config_load(dir, &cfg)) != QK_OK) {
        report_err("migrate", rc);
        return EXIT_FAIL;
    }
    const char *url = database_url(db_opt, &cfg);
    rc = url != NULL ? store_pg_migrate(url, &from, &to) : store_sqlite_migrate(dir, &from, &to);
    config_free(&cfg);
    if (rc != QK_OK) {
        report_err("migrate", rc);
        return EXIT_FAIL;
    }
    const char *kind = url != NULL ? "postgresql" : "sqlite";
    if (json)
        printf("{\"store\": \"%s\", \"from\": %d, \"to\": %d}\n", kind, from, to);
    else if (from == to)
        printf("%s schema at version %d: nothing to do\n", kind, to);
    else
        printf("%s schema migrated from version %d to %d\n", kind, from, to);
    return EXIT_OK;
}
