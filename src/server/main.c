/* qwickd: the Qwick signing server and its administrative commands. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>
#include <sodium.h>

#include "qwickd.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"init", cmd_init, "create a data directory: database, master key, dev PKI, first API key"},
    {"serve", cmd_serve, "serve the HTTPS API"},
    {"apikey", cmd_apikey, "create, list and revoke API keys"},
    {"audit", cmd_audit, "verify the audit hash chain"},
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: qwickd COMMAND [OPTIONS] [ARGS...]\n\n"
               "qwickd signs Authenticode digests sent by the qwick CLI with keys that never\n"
               "leave the server.\n\nCommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nOptions:\n  -h, --help     show this help\n  -V, --version  show the version\n"
               "\nRun 'qwickd COMMAND --help' for a command's options. Every command takes\n"
               "--data DIR (or $QWICKD_DATA).\n");
}

int main(int argc, char **argv)
{
    /* Everything qwickd creates (database, WAL, keys, temp files) is private
     * to its user; the few public certificates are chmod'ed explicitly. */
    umask(077);
    if (sodium_init() < 0) {
        fputs("qwickd: libsodium initialisation failed\n", stderr);
        return EXIT_FAIL;
    }
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return EXIT_OK;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
        printf("qwickd %s (%s)\n", QWICK_VERSION, OpenSSL_version(OPENSSL_VERSION));
        return EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "qwickd: unknown command '%s'\nTry 'qwickd --help'.\n", cmd);
    return EXIT_USAGE;
}
