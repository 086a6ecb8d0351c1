/* qwick digest: Authenticode image digests, printed like sha256sum. */
#include <getopt.h>
#include <stdio.h>

#include "cli.h"
#include "qwick/pe.h"

static void help(void)
{
    printf("Usage: qwick digest [--alg sha256|sha384|sha512] FILE...\n\n"
           "Prints the Authenticode digest of each PE file: lowercase hex, two spaces,\n"
           "the file name. Exit status 1 if any file could not be digested.\n\n"
           "  -a, --alg ALG  digest algorithm (default sha256; sha1 for legacy checks)\n"
           "  -h, --help     show this help\n");
}

int cmd_digest(int argc, char **argv)
{
    static const struct option opts[] = {
        {"alg", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    qk_hash_alg alg = QK_HASH_SHA256;
    int c, status = QK_EXIT_OK;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+a:h", opts, NULL)) != -1) {
        switch (c) {
        case 'a':
            alg = qk_hash_from_name(optarg);
            if (alg == QK_HASH_NONE)
                return cli_usage_error("digest", "unknown digest algorithm '%s'", optarg);
            break;
        case 'h':
            help();
            return QK_EXIT_OK;
        default:
            return cli_usage_error("digest", "unrecognized option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return cli_usage_error("digest", "no files given");

    for (int i = optind; i < argc; i++) {
        qk_pe *pe = NULL;
        uint8_t md[QK_HASH_MAX_SIZE];
        char hex[2 * QK_HASH_MAX_SIZE + 1];
        qk_err rc = qk_pe_open(argv[i], &pe);
        if (rc == QK_OK)
            rc = qk_pe_digest(pe, alg, md);
        if (rc != QK_OK) {
            cli_err(argv[i], rc);
            status = QK_EXIT_FAIL;
        } else {
            hex_encode(md, qk_hash_size(alg), hex);
            printf("%s  %s\n", hex, argv[i]);
        }
        qk_pe_free(pe);
    }
    if (fflush(stdout) != 0)
        status = QK_EXIT_FAIL;
    return status;
}
