/* qwick sign: interrupts (sign.h). The first SIGINT/SIGTERM/SIGHUP asks
 * the workers to stop: transfers abort, the file being written is discarded
 * (its original untouched) and the process then dies of the same signal. A
 * second one exits at once, removing the temporaries it knows about. One
 * slot per worker: the handler reads a path only after the worker has
 * finished writing it and set the flag. SIGKILL leaves a
 * `.NAME.qwick-XXXXXX` behind, never a damaged original. */
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "sign.h"

static client_cancel_flag stop_sig;
static char tmp_slot_path[SIGN_MAX_JOBS][4096];
static atomic_int tmp_slot_used[SIGN_MAX_JOBS];

void sign_tmp_track(int slot, const char *path)
{
    if (strlen(path) < sizeof(tmp_slot_path[slot])) {
        strcpy(tmp_slot_path[slot], path);
        atomic_store(&tmp_slot_used[slot], 1);
    }
}

void sign_tmp_untrack(int slot)
{
    atomic_store(&tmp_slot_used[slot], 0);
}

static void on_stop_signal(int sig)
{
    static const char msg[] = "\nqwick: interrupted: finishing up (again to quit now)\n";
    if (stop_sig == 0) {
        stop_sig = sig;
        (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
        return;
    }
    for (int i = 0; i < SIGN_MAX_JOBS; i++)
        if (atomic_load(&tmp_slot_used[i]))
            unlink(tmp_slot_path[i]);
    signal(sig, SIG_DFL);
    raise(sig);
}

void sign_stop_install(void)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int sign_interrupted(char **err)
{
    if (stop_sig == 0)
        return 0;
    *err = xstrdup("interrupted");
    return 1;
}

int sign_stop_signal(void)
{
    return stop_sig;
}

client_cancel_flag *sign_stop_flag(void)
{
    return &stop_sig;
}
