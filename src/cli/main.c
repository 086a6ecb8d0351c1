/* qwick: the Qwick command-line client. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

#ifndef QWICK_VERSION
#define QWICK_VERSION "0.1.0"
#endif

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"digest", cmd_digest, "print the Authenticode digest of PE files"},
    {"verify", cmd_verify, "verify the Authenticode signatures of PE files"},
    {"sign", cmd_sign, "sign PE files (or any file, --detached) through a qwickd server"},
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: qwick COMMAND [OPTIONS] [ARGS...]\n\n"
               "Qwick signs Windows PE files by sending only their Authenticode digest\n"
               "to a qwickd server.\n\nCommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nOptions:\n  -h, --help     show this help\n  -V, --version  show the version\n"
               "\nRun 'qwick COMMAND --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return QK_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return QK_EXIT_OK;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
        printf("qwick %s\n", QWICK_VERSION);
        return QK_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "qwick: unknown command '%s'\nTry 'qwick --help'.\n", cmd);
    return QK_EXIT_USAGE;
}
