/* The "PROG COMMAND [ARGS...]" front of qwick and qwickd: help, version,
 * dispatch. Exit status 0 for help/version, 2 for a usage error, else the
 * command's own. */
#ifndef QWICK_COMMON_SUBCMD_H
#define QWICK_COMMON_SUBCMD_H

#include <stddef.h>

typedef struct subcmd {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the command's name */
    const char *summary;
} subcmd;

typedef struct subcmd_prog {
    const char *name;    /* "qwick" */
    const char *intro;   /* paragraph after the usage line, ends with '\n' */
    const char *epilog;  /* after the option list, ends with '\n' */
    const char *version; /* the whole --version line, without '\n' */
    const subcmd *cmds;
    size_t ncmds;
} subcmd_prog;

int subcmd_main(const subcmd_prog *p, int argc, char **argv);

#endif
