/* qwick sign: the command line (sign.h): options, help and the inputs
 * (quoted globs expanded, duplicates dropped), then the run. */
#include <getopt.h>
#include <glob.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "sign.h"

/* --- inputs ------------------------------------------------------------ */

typedef struct inputs {
    job *v;
    size_t n, cap;
    struct stat *ids; /* dev/ino of each existing input, to drop duplicates */
} inputs;

static void add_input(inputs *in, const char *path, const char *error)
{
    struct stat st;
    int have = error == NULL && stat(path, &st) == 0;
    if (have)
        for (size_t i = 0; i < in->n; i++)
            if (in->v[i].error == NULL && in->ids[i].st_dev == st.st_dev &&
                in->ids[i].st_ino == st.st_ino)
                return; /* the same file twice would race with itself */
    if (in->n == in->cap) {
        in->cap = in->cap ? in->cap * 2 : 16;
        job *v = realloc(in->v, in->cap * sizeof(*v));
        struct stat *ids = realloc(in->ids, in->cap * sizeof(*ids));
        if (v == NULL || ids == NULL) {
            fputs("qwick: out of memory\n", stderr);
            abort();
        }
        in->v = v;
        in->ids = ids;
    }
    memset(&in->v[in->n], 0, sizeof(in->v[0]));
    memset(&in->ids[in->n], 0, sizeof(in->ids[0]));
    in->v[in->n].path = xstrdup(path);
    if (error != NULL)
        in->v[in->n].error = xstrdup(error);
    if (have)
        in->ids[in->n] = st;
    in->n++;
}

/* An argument naming an existing path is taken as is, even with glob
 * characters in its name; otherwise it is expanded here, for shells and CI
 * systems that pass patterns quoted. */
static void expand_arg(inputs *in, const char *arg)
{
    struct stat st;
    glob_t g;
    if (stat(arg, &st) == 0 || strpbrk(arg, "*?[") == NULL) {
        add_input(in, arg, NULL);
        return;
    }
    int grc = glob(arg, 0, NULL, &g);
    if (grc == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++)
            add_input(in, g.gl_pathv[i], NULL);
    } else {
        add_input(in, arg, grc == GLOB_NOMATCH ? "no files match" : "pattern expansion failed");
    }
    globfree(&g);
}

/* --- command ----------------------------------------------------------- */

static void help(void)
{
    printf("Usage: qwick sign [OPTIONS] FILE|GLOB...\n\n"
           "Signs PE files through a qwickd server: the Authenticode digest is computed\n"
           "here and only the digest is sent. Each file is timestamped, embedded, verified\n"
           "and then atomically replaced (an already signed file is re-signed: its old\n"
           "signatures are replaced). Quoted GLOBs are expanded.\n\n"
           "  --server URL          qwickd URL (QWICK_SERVER, config \"server\")\n"
           "  --api-key KEY         API key (QWICK_API_KEY, config \"api_key\"; prefer those:\n"
           "                        arguments are visible to other local users)\n"
           "  --cacert FILE         CA bundle for the server's TLS certificate (QWICK_CACERT,\n"
           "                        config \"cacert\"); also for TSA URLs on that server\n"
           "  --profile NAME        certificate profile (default \"default\")\n"
           "  --alg ALG             sha256 (default), sha384 or sha512\n"
           "  --out FILE            write the signed file (or the .p7s) here; one input only\n"
           "  --timestamp-url URL   RFC 3161 TSA; repeat for fallbacks (default: the URL the\n"
           "                        server names)\n"
           "  --no-timestamp        do not timestamp\n"
           "  --description TEXT    program name in the signature\n"
           "  --url URL             \"more info\" URL in the signature\n"
           "  --append              nest the new signature into the existing one instead of\n"
           "                        replacing it\n"
           "  --detached            sign any file: write FILE.p7s, a detached CMS signature\n"
           "                        (openssl cms -verify -binary -content FILE accepts it)\n"
           "  --ca FILE             also require the written signature to chain to these\n"
           "                        roots (without it the check covers digest, signature\n"
           "                        and timestamp integrity, not trust)\n"
           "  --tsa-ca FILE         roots for the timestamp check (default: --ca)\n"
           "  -j, --jobs N          files signed in parallel (default min(CPUs, %d))\n"
           "  --json                print {\"files\":[...],\"signed\":n,\"failed\":n} on stdout\n"
           "  -h, --help            show this help\n\n"
           "Settings come from flags, then the environment, then\n"
           "$XDG_CONFIG_HOME/qwick/config.json (keys server, api_key, cacert, profile).\n"
           "Exit status: 0 all signed, 1 some failed (the others are still signed), 2 usage.\n",
           SIGN_DEFAULT_JOBS);
}

enum {
    OPT_SERVER = 256,
    OPT_API_KEY,
    OPT_CACERT,
    OPT_PROFILE,
    OPT_OUT,
    OPT_TS_URL,
    OPT_NO_TS,
    OPT_DESCRIPTION,
    OPT_URL,
    OPT_JSON,
    OPT_APPEND,
    OPT_ALG,
    OPT_DETACHED,
    OPT_CA,
    OPT_TSA_CA,
};

int cmd_sign(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"server", required_argument, NULL, OPT_SERVER},
        {"api-key", required_argument, NULL, OPT_API_KEY},
        {"cacert", required_argument, NULL, OPT_CACERT},
        {"profile", required_argument, NULL, OPT_PROFILE},
        {"out", required_argument, NULL, OPT_OUT},
        {"timestamp-url", required_argument, NULL, OPT_TS_URL},
        {"no-timestamp", no_argument, NULL, OPT_NO_TS},
        {"description", required_argument, NULL, OPT_DESCRIPTION},
        {"url", required_argument, NULL, OPT_URL},
        {"jobs", required_argument, NULL, 'j'},
        {"json", no_argument, NULL, OPT_JSON},
        {"append", no_argument, NULL, OPT_APPEND},
        {"alg", required_argument, NULL, OPT_ALG},
        {"detached", no_argument, NULL, OPT_DETACHED},
        {"ca", required_argument, NULL, OPT_CA},
        {"tsa-ca", required_argument, NULL, OPT_TSA_CA},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int status = QK_EXIT_USAGE, c, njobs = 0;
    sign_opts o = {.alg = QK_HASH_SHA256};
    mode_t um = umask(0);
    umask(um);
    o.p7s_mode = 0666 & ~um;
    cli_config flags = {0};
    inputs in = {0};

    o.ts_urls = xcalloc((size_t)argc, sizeof(*o.ts_urls));
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+j:h", lopts, NULL)) != -1) {
        switch (c) {
        case OPT_SERVER:
            flags.server = optarg;
            break;
        case OPT_API_KEY:
            sign_drop_secret(&flags.api_key);
            flags.api_key = cli_take_secret_arg(optarg);
            break;
        case OPT_CACERT:
            flags.cacert = optarg;
            break;
        case OPT_PROFILE:
            flags.profile = optarg;
            break;
        case OPT_OUT:
            o.out = optarg;
            break;
        case OPT_TS_URL:
            o.ts_urls[o.n_ts_urls++] = optarg;
            break;
        case OPT_NO_TS:
            o.no_timestamp = 1;
            break;
        case OPT_DESCRIPTION:
            o.description = optarg;
            break;
        case OPT_URL:
            o.url = optarg;
            break;
        case 'j': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 1 || v > SIGN_MAX_JOBS) {
                cli_usage_error("sign", "-j wants a number from 1 to %d", SIGN_MAX_JOBS);
                goto out;
            }
            njobs = (int)v;
            break;
        }
        case OPT_JSON:
            o.json = 1;
            break;
        case OPT_APPEND:
            o.append = 1;
            break;
        case OPT_ALG:
            o.alg = qk_hash_from_name(optarg);
            if (o.alg != QK_HASH_SHA256 && o.alg != QK_HASH_SHA384 && o.alg != QK_HASH_SHA512) {
                cli_usage_error("sign", "--alg wants sha256, sha384 or sha512");
                goto out;
            }
            break;
        case OPT_DETACHED:
            o.detached = 1;
            break;
        case OPT_CA:
            o.ca = optarg;
            break;
        case OPT_TSA_CA:
            o.tsa_ca = optarg;
            break;
        case 'h':
            help();
            status = QK_EXIT_OK;
            goto out;
        default:
            cli_usage_error("sign", "unrecognized option '%s'", argv[optind - 1]);
            goto out;
        }
    }
    if (optind >= argc) {
        cli_usage_error("sign", "no files given");
        goto out;
    }
    if (o.no_timestamp && o.n_ts_urls > 0) {
        cli_usage_error("sign", "--timestamp-url and --no-timestamp contradict each other");
        goto out;
    }
    if (o.append && o.detached) {
        cli_usage_error("sign", "--append applies to PE files, not to --detached");
        goto out;
    }
    for (int i = optind; i < argc; i++)
        expand_arg(&in, argv[i]);
    if (o.out != NULL && in.n != 1) {
        cli_usage_error("sign", "--out takes exactly one input file (got %zu)", in.n);
        goto out;
    }
    if (cli_config_load(&flags, &o.cfg) != QK_EXIT_OK)
        goto out;

    status = sign_run(&o, in.v, in.n, njobs, &flags.api_key);
out:
    for (size_t i = 0; i < in.n; i++) {
        free(in.v[i].path);
        free(in.v[i].request_id);
        free(in.v[i].error);
    }
    free(in.v);
    free(in.ids);
    sign_drop_secret(&flags.api_key); /* the other flags point into argv */
    cli_config_free(&o.cfg);
    free(o.ts_urls);
    if (sign_stop_signal() != 0) {
        /* Die of the signal, so callers (shells, CI) see what happened. */
        int sig = sign_stop_signal();
        signal(sig, SIG_DFL);
        raise(sig);
    }
    return status;
}
