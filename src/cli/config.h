/* Where the CLI finds its server, API key, CA file and profile.
 *
 * Each setting is taken from the first source that has it: command-line flag,
 * then environment (QWICK_SERVER, QWICK_API_KEY, QWICK_CACERT, QWICK_PROFILE,
 * QWICK_LOG_KEY), then the config file $XDG_CONFIG_HOME/qwick/config.json
 * (else ~/.config/qwick/config.json), a JSON object with the keys server,
 * api_key, cacert, profile and log_key. A relative cacert in the file is taken relative to the
 * file's directory, so a config can ship next to its CA. */
#ifndef QWICK_CLI_CONFIG_H
#define QWICK_CLI_CONFIG_H

typedef struct cli_config {
    char *server;  /* base URL, no trailing slash */
    char *api_key; /* secret: wiped by cli_config_free, never printed */
    char *cacert;  /* PEM file of trusted roots for TLS, or NULL: the system store */
    char *profile; /* certificate profile, "default" when nothing sets it */
    char *log_key; /* the transparency log's verifier key (qwick log), or NULL */
} cli_config;

/* Resolves every setting into *out (all heap copies). `flags` holds the
 * command-line values, NULL where not given. Prints the reason and returns
 * QK_EXIT_USAGE when the server or API key is missing or the config file is
 * unreadable; QK_EXIT_OK otherwise. */
int cli_config_load(const cli_config *flags, cli_config *out);
void cli_config_free(cli_config *cfg);

/* Copies a secret given on the command line and overwrites it in argv, so it
 * does not linger in /proc/PID/cmdline longer than needed. */
char *cli_take_secret_arg(char *arg);

#endif
