/* qwickd: the Qwick signing server and its administrative commands. */
#include <stdio.h>
#include <sys/stat.h>

#include <openssl/crypto.h>
#include <curl/curl.h>
#include <sodium.h>

#include "core/hardening.h"
#include "admin/qwickd.h"
#include "common/subcmd.h"

static const subcmd commands[] = {
    {"init", cmd_init, "create a data directory: database, master key, dev PKI, first API key"},
    {"serve", cmd_serve, "serve the HTTPS API"},
    {"apikey", cmd_apikey, "create, list and revoke API keys"},
    {"profile", cmd_profile, "create, list, show and disable certificate profiles"},
    {"audit", cmd_audit, "verify the transparency log of every org"},
    {"keyring", cmd_keyring, "master key status, rotation (re-sealing every secret), retirement"},
    {"org", cmd_org, "create and list orgs (tenants)"},
    {"migrate", cmd_migrate, "bring the database to this qwickd's schema version"},
    {"queue", cmd_queue, "the signing queue: status, dead letters, retry"},
    {"policy", cmd_policy, "a profile's signing policy: set, show, clear"},
    {"operator", cmd_operator, "create, list and revoke operator tokens (GET /metrics)"},
};

int main(int argc, char **argv)
{
    /* Everything qwickd creates (database, WAL, keys, temp files) is private
     * to its user; the few public certificates are chmod'ed explicitly. */
    umask(077);
    /* Before any thread exists: libcurl's global state (the Azure backend's
     * transfers). */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fputs("qwickd: libcurl initialisation failed\n", stderr);
        return EXIT_FAIL;
    }
    if (sodium_init() < 0) {
        fputs("qwickd: libsodium initialisation failed\n", stderr);
        return EXIT_FAIL;
    }
    /* Every command handles key material: no core files, no same-user
     * ptrace, OpenSSL's private keys in its secure heap (hardening.h). */
    qk_err hrc = harden_process();
    if (hrc != QK_OK) {
        report_err("key hygiene", hrc);
        return EXIT_FAIL;
    }
    char version[160];
    snprintf(version, sizeof(version), "qwickd %s (%s)", QWICK_VERSION,
             OpenSSL_version(OPENSSL_VERSION));
    const subcmd_prog prog = {
        .name = "qwickd",
        .intro = "qwickd signs Authenticode digests sent by the qwick CLI with keys that never\n"
                 "leave the server.\n",
        .epilog = "Run 'qwickd COMMAND --help' for a command's options. Every command takes\n"
                  "--data DIR (or $QWICKD_DATA).\n",
        .version = version,
        .cmds = commands,
        .ncmds = sizeof(commands) / sizeof(commands[0]),
    };
    return subcmd_main(&prog, argc, argv);
}
