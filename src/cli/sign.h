/* qwick sign, in parts (as curl's tool keeps its option parsing, its
 * configuration and its transfer loop apart):
 *   cmd_sign.c     the command line: options, help, inputs -> sign_opts, jobs
 *   sign_run.c     the run: workers, progress, the report
 *   sign_job.c     one file: digest, signature, timestamp, embed, verify
 *                  what was written, replace atomically
 *   sign_request.c one file's signature from qwickd: submitted, waited for
 *                  while queued (202); --async submits only; --resume takes
 *                  an earlier request once its digest matches the file's
 *   sign_stop.c    interrupts: the stop flag, the temporaries to remove */
#ifndef QWICK_CLI_SIGN_H
#define QWICK_CLI_SIGN_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "client.h"
#include "config.h"
#include "qwick/authenticode.h"
#include "qwick/verify.h"
#include "tsa_client.h"

/* More workers than this only queue on the server and the TSA. */
#define SIGN_MAX_JOBS 64
/* Default workers: SIGN_JOBS_PER_CPU per CPU, at most SIGN_DEFAULT_JOBS. A
 * worker spends part of each file waiting (on the server's signature, on
 * the fsync of what it wrote), so one per CPU leaves CPUs idle: on 2 CPUs, 6
 * workers signed a batch ~5% faster than 4 (bench/batch.sh). */
#define SIGN_DEFAULT_JOBS 8
#define SIGN_JOBS_PER_CPU 3
#define SIGN_READ_CHUNK (1u << 20)
/* --wait-timeout's default: how long a queued request is waited for. */
#define SIGN_DEFAULT_WAIT_S 600L

/* --resume: the earlier request, read before the run. It fixes the run's
 * algorithm and format (sign_opts.alg, .detached). */
typedef struct sign_resume {
    const char *id;                   /* REQUEST_ID as given (well-formed) */
    json_t *req;                      /* its GET answer */
    uint8_t digest[QK_HASH_MAX_SIZE]; /* the digest it was submitted with */
    size_t digest_len;
    long retry_after; /* the GET's Retry-After (s) */
} sign_resume;

typedef struct sign_opts {
    cli_config cfg;
    const char *out;
    const char **ts_urls; /* --timestamp-url, in order */
    size_t n_ts_urls;
    int no_timestamp, append, detached, json;
    int async;           /* --async: submit only, print FILE<TAB>REQUEST_ID */
    long wait_timeout_s; /* --wait-timeout: how long a queued request is waited for */
    sign_resume resume;  /* --resume; id NULL without it */
    qk_hash_alg alg;
    const char *description, *url;
    const char *justification; /* metadata.justification */
    const char *ca, *tsa_ca;   /* trust for the post-write check; NULL: integrity only */
    /* Mode of a new .p7s: 0666 less the umask, read once before the workers
     * start (umask() is process-wide; reading it changes it for a moment). */
    mode_t p7s_mode;
} sign_opts;

typedef struct job {
    char *path;
    int ok;
    char *request_id;
    char *error; /* without the "qwick: FILE: " prefix */
    /* Replaced: the directory whose fsync makes the rename durable. One
     * fsync per directory after the workers (sign_run.c), not one per file:
     * nothing is reported before it. */
    char *sync_dir;
} job;

typedef struct worker worker;

typedef struct run {
    const sign_opts *o;
    job *jobs;
    size_t njobs;
    size_t next, done, nok, nfail;
    int tty;
    pthread_mutex_t mu;
    qk_verify_ctx *vctx; /* the post-write check's trust stores, loaded once */
    worker *workers;     /* for the progress line: who waits for what */
    size_t nworkers;
    const job *last; /* the last file done, named on the progress line */
} run;

struct worker {
    run *r;
    int slot;
    client *api;
    tsa_client *tsa;
    char *tsa_url; /* the server-named URL `tsa` was made for */
    /* The file this worker waits for and the request's status (under r->mu;
     * wait_job NULL when not waiting), for the progress line. */
    const job *wait_job;
    char wait_status[24];
};

/* ---- sign_run.c ---- */

/* Signs the jobs with up to `njobs` workers (0: min(CPUs, default)),
 * reports each on the progress line and the summary (or JSON) on stdout.
 * `api_key` (the --api-key copy) is wiped once the clients hold it. Returns
 * the exit status. */
int sign_run(const sign_opts *o, job *jobs, size_t n, int njobs, char **api_key);
/* Wipes and frees a secret string. */
void sign_drop_secret(char **s);

/* ---- sign_progress.c ---- */

/* The last component of a path (no copy). */
const char *sign_base_name(const char *path);
/* Worker `w` waits for `jb`'s queued request, now `status` (NULL: done
 * waiting): shown on the progress line. */
void sign_progress_waiting(worker *w, const job *jb, const char *status);
/* A file is finished (ok or not): counted, reported, the line redrawn. */
void sign_progress_done(run *r, job *jb);

/* ---- sign_stop.c ---- */

/* Installs the handlers of SIGINT, SIGTERM and SIGHUP (and ignores
 * SIGPIPE). */
void sign_stop_install(void);
/* The signal that interrupted the run (0: none): the caller dies of it
 * after cleaning up. */
int sign_stop_signal(void);
/* The flag the clients watch to abort their transfers. */
client_cancel_flag *sign_stop_flag(void);
/* A temporary file of worker `slot`, removed if a second signal ends the
 * process at once; untracked once it is renamed or removed. */
void sign_tmp_track(int slot, const char *path);
void sign_tmp_untrack(int slot);
/* Between steps: 1 (and *err set) once interrupted. */
int sign_interrupted(char **err);

/* ---- sign_job.c ---- */

/* Signs one file (a PE, or any file with --detached): 0, or -1 with *err. */
int sign_job_run(worker *w, job *jb, char **err);
/* The trust stores of the post-write check (--ca, --tsa-ca), loaded once. */
qk_err sign_verify_ctx_new(const sign_opts *o, qk_verify_ctx **out);
/* The signing digest of `path`: Authenticode for a PE, a plain hash of the
 * whole file with --detached; 0, or -1 with *err. */
int sign_file_digest(const sign_opts *o, const char *path, uint8_t *md, char **err);
/* "what: error: detail" (heap). */
char *sign_errmsg(const char *what, qk_err e);

/* ---- sign_request.c ---- */

/* The signature for `md` (the digest of jb's file, in `format`): submitted
 * and, while queued, waited for (--wait-timeout); with --resume, the earlier
 * request once its digest is `md`. jb->request_id is set as soon as it is
 * known. 0, or -1 with *err (naming the request and how to resume it when it
 * may still be signed). */
int sign_request_obtain(worker *w, job *jb, const char *format, const uint8_t *md,
                        client_sign_res *res, char **err);
/* --async: submits `md` with "async": true and keeps the request id. */
int sign_request_submit(worker *w, job *jb, const char *format, const uint8_t *md, char **err);
/* --resume: reads the request (before the run) and takes its algorithm and
 * format into *o. `c` is a client for o->cfg. Returns an exit status: OK,
 * USAGE for a request the other options contradict, FAIL otherwise. */
int sign_resume_load(client *c, sign_opts *o, int detached_given);
void sign_resume_clear(sign_resume *r);

#endif
