/* qwick verify: placeholder until lib/verify.c lands. */
#include "cli.h"

int cmd_verify(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    cli_msg("verify: not implemented yet");
    return QK_EXIT_FAIL;
}
