/* qwick sign: the command line (sign.h): options, help and the inputs
 * (quoted globs expanded, duplicates dropped), the request --resume names
 * (read first: it fixes the algorithm and the format), then the run. */
#include <getopt.h>
#include <glob.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cli.h"
#include "requests.h"
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
    printf("Usage: qwick sign [OPTIONS] FILE|GLOB...\n"
           "       qwick sign --async [OPTIONS] FILE|GLOB...\n"
           "       qwick sign --resume REQUEST_ID [OPTIONS] FILE\n\n"
           "Signs PE files through a qwickd server: the Authenticode digest is computed\n"
           "here and only the digest is sent. Each file is timestamped, embedded, verified\n"
           "and then atomically replaced (an already signed file is re-signed: its old\n"
           "signatures are replaced). Quoted GLOBs are expanded. A request the server\n"
           "queues is waited for, its status shown on the progress line.\n\n"
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
           "  --justification TEXT  why this is signed (audited; a profile's policy may\n"
           "                        require it)\n"
           "  --append              nest the new signature into the existing one instead of\n"
           "                        replacing it\n"
           "  --detached            sign any file: write FILE.p7s, a detached CMS signature\n"
           "                        (openssl cms -verify -binary -content FILE accepts it)\n"
           "  --ca FILE             also require the written signature to chain to these\n"
           "                        roots (without it the check covers digest, signature\n"
           "                        and timestamp integrity, not trust)\n"
           "  --tsa-ca FILE         roots for the timestamp check (default: --ca)\n"
           "  -j, --jobs N          files signed in parallel (default min(%d x CPUs, %d))\n"
           "  --json                print {\"files\":[...],\"signed\":n,\"failed\":n} on stdout\n"
           "  --wait-timeout DURATION\n"
           "                        how long to wait for a queued request: 90s, 10m, 2h,\n"
           "                        1h30m or a number of seconds (default 10m); a file not\n"
           "                        signed by then is left untouched and its request id\n"
           "                        printed, for --resume\n"
           "  --async               only submit: queue each file's digest, print one line\n"
           "                        FILE<TAB>REQUEST_ID per file and touch no file\n"
           "  --resume REQUEST_ID   finish FILE (exactly one) from an earlier --async\n"
           "                        submission: its digest must be the request's; then it\n"
           "                        is waited for, timestamped, embedded, verified and\n"
           "                        replaced like any file. The request fixes the algorithm\n"
           "                        and the format (a cms request writes FILE.p7s)\n"
           "  -h, --help            show this help\n\n"
           "Settings come from flags, then the environment, then\n"
           "$XDG_CONFIG_HOME/qwick/config.json (keys server, api_key, cacert, profile).\n"
           "Exit status: 0 all signed (--async: all submitted), 1 some failed or still\n"
           "waiting at --wait-timeout (the others are still signed), 2 usage.\n",
           SIGN_JOBS_PER_CPU, SIGN_DEFAULT_JOBS);
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
    OPT_JUSTIFICATION,
    OPT_JSON,
    OPT_APPEND,
    OPT_ALG,
    OPT_DETACHED,
    OPT_CA,
    OPT_TSA_CA,
    OPT_WAIT_TIMEOUT,
    OPT_ASYNC,
    OPT_RESUME,
};

/* Options only a submission uses, and only a written file uses: --async
 * writes nothing, --resume submits nothing. */
typedef struct given {
    int alg, profile, description, url, justification; /* submission */
    int out, append, ts_url, ca;                       /* writing */
    int detached;
} given;

/* The combinations that cannot mean anything; an exit status. */
static int check_modes(const sign_opts *o, const given *g, size_t ninputs)
{
    if (o->async && o->resume.id != NULL)
        return cli_usage_error("sign", "--async submits, --resume finishes: not both");
    if (o->async && (g->out || g->append || g->ts_url || g->ca))
        return cli_usage_error("sign", "--async writes no file: --out, --append, "
                                       "--timestamp-url, --ca and --tsa-ca belong to --resume");
    if (o->resume.id == NULL)
        return QK_EXIT_OK;
    if (!requests_id_valid(o->resume.id))
        return cli_usage_error("sign",
                               "--resume: '%s' is not a request id (req_ and 32 lowercase hex "
                               "digits)",
                               o->resume.id);
    if (ninputs != 1)
        return cli_usage_error("sign", "--resume takes exactly one file (got %zu)", ninputs);
    if (g->alg || g->profile || g->description || g->url || g->justification)
        return cli_usage_error("sign", "--resume: --alg, --profile, --description, --url and "
                                       "--justification were fixed when the request was "
                                       "submitted");
    return QK_EXIT_OK;
}

/* What the command line says. */
typedef struct cmdline {
    sign_opts o;
    cli_config flags; /* --server, --api-key (a wiped copy), --cacert, --profile */
    given g;
    int njobs;
} cmdline;

/* -j N: 1 to SIGN_MAX_JOBS. */
static int take_jobs(const char *arg, int *out)
{
    char *end;
    long v = strtol(arg, &end, 10);
    if (*arg == '\0' || *end != '\0' || v < 1 || v > SIGN_MAX_JOBS)
        return cli_usage_error("sign", "-j wants a number from 1 to %d", SIGN_MAX_JOBS);
    *out = (int)v;
    return -1;
}

/* The options that say where and how the result is written. */
static int take_write_option(cmdline *cl, int c, char *arg)
{
    sign_opts *o = &cl->o;
    switch (c) {
    case OPT_OUT:
        o->out = arg;
        cl->g.out = 1;
        break;
    case OPT_TS_URL:
        o->ts_urls[o->n_ts_urls++] = arg;
        cl->g.ts_url = 1;
        break;
    case OPT_NO_TS:
        o->no_timestamp = 1;
        break;
    case OPT_APPEND:
        o->append = cl->g.append = 1;
        break;
    case OPT_DETACHED:
        o->detached = cl->g.detached = 1;
        break;
    case OPT_CA:
        o->ca = arg;
        cl->g.ca = 1;
        break;
    case OPT_TSA_CA:
        o->tsa_ca = arg;
        cl->g.ca = 1;
        break;
    default:
        return 0;
    }
    return 1;
}

/* The options of the request: what is signed and how. */
static int take_request_option(cmdline *cl, int c, char *arg)
{
    sign_opts *o = &cl->o;
    switch (c) {
    case OPT_PROFILE:
        cl->flags.profile = arg;
        cl->g.profile = 1;
        break;
    case OPT_DESCRIPTION:
        o->description = arg;
        cl->g.description = 1;
        break;
    case OPT_URL:
        o->url = arg;
        cl->g.url = 1;
        break;
    case OPT_ALG:
        o->alg = qk_hash_from_name(arg);
        cl->g.alg = 1;
        break;
    case OPT_JUSTIFICATION:
        o->justification = arg;
        cl->g.justification = 1;
        break;
    default:
        return 0;
    }
    return 1;
}

/* One option into *cl: an exit status (--help, a usage error), or -1 to go on. */
static int take_option(cmdline *cl, int c, char **argv)
{
    sign_opts *o = &cl->o;
    if (take_write_option(cl, c, optarg) || take_request_option(cl, c, optarg))
        return -1;
    switch (c) {
    case OPT_SERVER:
        cl->flags.server = optarg;
        return -1;
    case OPT_API_KEY:
        sign_drop_secret(&cl->flags.api_key);
        cl->flags.api_key = cli_take_secret_arg(optarg);
        return -1;
    case OPT_CACERT:
        cl->flags.cacert = optarg;
        return -1;
    case 'j':
        return take_jobs(optarg, &cl->njobs);
    case OPT_JSON:
        o->json = 1;
        return -1;
    case OPT_WAIT_TIMEOUT:
        if (cli_parse_duration(optarg, &o->wait_timeout_s) != 0)
            return cli_usage_error("sign",
                                   "--wait-timeout: '%s' is not a duration (90s, 10m, 2h, 1h30m, "
                                   "or seconds; at most 30 days)",
                                   optarg);
        return -1;
    case OPT_ASYNC:
        o->async = 1;
        return -1;
    case OPT_RESUME:
        o->resume.id = optarg;
        return -1;
    case 'h':
        help();
        return QK_EXIT_OK;
    default:
        return cli_usage_error("sign", "unrecognized option '%s'", argv[optind - 1]);
    }
}

static int parse_args(int argc, char **argv, cmdline *cl)
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
        {"justification", required_argument, NULL, OPT_JUSTIFICATION},
        {"jobs", required_argument, NULL, 'j'},
        {"json", no_argument, NULL, OPT_JSON},
        {"append", no_argument, NULL, OPT_APPEND},
        {"alg", required_argument, NULL, OPT_ALG},
        {"detached", no_argument, NULL, OPT_DETACHED},
        {"ca", required_argument, NULL, OPT_CA},
        {"tsa-ca", required_argument, NULL, OPT_TSA_CA},
        {"wait-timeout", required_argument, NULL, OPT_WAIT_TIMEOUT},
        {"async", no_argument, NULL, OPT_ASYNC},
        {"resume", required_argument, NULL, OPT_RESUME},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c, status;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+j:h", lopts, NULL)) != -1)
        if ((status = take_option(cl, c, argv)) >= 0)
            return status;
    return -1;
}

/* The checks that need no file and no server; an exit status. */
static int check_args(const cmdline *cl, int nargs)
{
    const sign_opts *o = &cl->o;
    if (o->alg != QK_HASH_SHA256 && o->alg != QK_HASH_SHA384 && o->alg != QK_HASH_SHA512)
        return cli_usage_error("sign", "--alg wants sha256, sha384 or sha512");
    if (nargs == 0)
        return cli_usage_error("sign", "no files given");
    if (o->no_timestamp && o->n_ts_urls > 0)
        return cli_usage_error("sign", "--timestamp-url and --no-timestamp contradict each other");
    if (o->append && o->detached)
        return cli_usage_error("sign", "--append applies to PE files, not to --detached");
    return QK_EXIT_OK;
}

/* --resume: the request, read with a client of its own before the run. */
static int load_resume(sign_opts *o, int detached_given)
{
    char *err = NULL;
    client *c = client_new(&o->cfg, &err);
    if (c == NULL) {
        cli_msg("%s", err);
        free(err);
        return QK_EXIT_USAGE; /* a bad server URL is a usage error */
    }
    int status = sign_resume_load(c, o, detached_given);
    client_free(c);
    return status;
}

static int run_signing(cmdline *cl, inputs *in)
{
    int status = QK_EXIT_OK;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        cli_msg("cannot initialise libcurl");
        return QK_EXIT_FAIL;
    }
    if (cl->o.resume.id != NULL)
        status = load_resume(&cl->o, cl->g.detached);
    if (status == QK_EXIT_OK)
        status = sign_run(&cl->o, in->v, in->n, cl->njobs, &cl->flags.api_key);
    curl_global_cleanup();
    return status;
}

static void free_inputs(inputs *in)
{
    for (size_t i = 0; i < in->n; i++) {
        free(in->v[i].path);
        free(in->v[i].request_id);
        free(in->v[i].error);
        free(in->v[i].sync_dir);
    }
    free(in->v);
    free(in->ids);
}

int cmd_sign(int argc, char **argv)
{
    cmdline cl = {.o = {.alg = QK_HASH_SHA256, .wait_timeout_s = SIGN_DEFAULT_WAIT_S}};
    inputs in = {0};
    mode_t um = umask(0);
    umask(um);
    cl.o.p7s_mode = 0666 & ~um;
    cl.o.ts_urls = xcalloc((size_t)argc, sizeof(*cl.o.ts_urls));

    int status = parse_args(argc, argv, &cl); /* -1: go on */
    if (status >= 0 || (status = check_args(&cl, argc - optind)) != QK_EXIT_OK)
        goto out;
    for (int i = optind; i < argc; i++)
        expand_arg(&in, argv[i]);
    if (cl.o.out != NULL && in.n != 1) {
        status = cli_usage_error("sign", "--out takes exactly one input file (got %zu)", in.n);
        goto out;
    }
    if ((status = check_modes(&cl.o, &cl.g, in.n)) != QK_EXIT_OK ||
        (status = cli_config_load(&cl.flags, &cl.o.cfg)) != QK_EXIT_OK)
        goto out;
    status = run_signing(&cl, &in);
out:
    free_inputs(&in);
    sign_drop_secret(&cl.flags.api_key); /* the other flags point into argv */
    cli_config_free(&cl.o.cfg);
    sign_resume_clear(&cl.o.resume);
    free(cl.o.ts_urls);
    if (sign_stop_signal() != 0) {
        /* Die of the signal, so callers (shells, CI) see what happened. */
        int sig = sign_stop_signal();
        signal(sig, SIG_DFL);
        raise(sig);
    }
    return status;
}
