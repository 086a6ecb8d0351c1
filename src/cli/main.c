/* qwick: the Qwick command-line client. */
#include "cli.h"
#include "common/subcmd.h"

#ifndef QWICK_VERSION
#define QWICK_VERSION "0.1.0"
#endif

static const subcmd commands[] = {
    {"digest", cmd_digest, "print the Authenticode digest of PE files"},
    {"verify", cmd_verify, "verify the Authenticode signatures of PE files"},
    {"sign", cmd_sign, "sign PE files (or any file, --detached) through a qwickd server"},
    {"log", cmd_log, "check the server's transparency log: verify, inclusion FILE"},
    {"requests", cmd_requests, "list, show or cancel your org's signing requests (the queue)"},
};

int main(int argc, char **argv)
{
    static const subcmd_prog prog = {
        .name = "qwick",
        .intro = "Qwick signs Windows PE files by sending only their Authenticode digest\n"
                 "to a qwickd server. A request the server queues is waited for, or left\n"
                 "queued with 'qwick sign --async' and finished with 'qwick sign --resume'.\n",
        .epilog = "Run 'qwick COMMAND --help' for a command's options.\n",
        .version = "qwick " QWICK_VERSION,
        .cmds = commands,
        .ncmds = sizeof(commands) / sizeof(commands[0]),
    };
    return subcmd_main(&prog, argc, argv);
}
