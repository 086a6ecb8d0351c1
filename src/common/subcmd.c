#include "common/subcmd.h"

#include <stdio.h>
#include <string.h>

static void usage(const subcmd_prog *p, FILE *f)
{
    fprintf(f, "Usage: %s COMMAND [OPTIONS] [ARGS...]\n\n%s\nCommands:\n", p->name, p->intro);
    for (size_t i = 0; i < p->ncmds; i++)
        fprintf(f, "  %-8s %s\n", p->cmds[i].name, p->cmds[i].summary);
    fprintf(f, "\nOptions:\n  -h, --help     show this help\n  -V, --version  show the version\n"
               "\n%s",
            p->epilog);
}

int subcmd_main(const subcmd_prog *p, int argc, char **argv)
{
    if (argc < 2) {
        usage(p, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(p, stdout);
        return 0;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
        printf("%s\n", p->version);
        return 0;
    }
    for (size_t i = 0; i < p->ncmds; i++)
        if (strcmp(cmd, p->cmds[i].name) == 0)
            return p->cmds[i].run(argc - 1, argv + 1);
    fprintf(stderr, "%s: unknown command '%s'\nTry '%s --help'.\n", p->name, cmd, p->name);
    return 2;
}
