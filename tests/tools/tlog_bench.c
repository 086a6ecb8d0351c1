/* tlog-bench DIR N: appends N audit entries to a fresh SQLite store in DIR
 * (16 threads, so group commits carry big batches, as under load), then
 * times log proofs: the root, inclusion proofs of random leaves and
 * consistency proofs, at sizes 1000 and N, each checked with the verifier.
 * Prints microseconds per proof at each size and the ratio. Used by
 * bench/tlog.sh. */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "store/store.h"
#include "common/tlog.h"

#define THREADS 16

typedef struct worker {
    qk_store *s;
    int64_t org, n;
    int failures;
} worker;

static void *append_main(void *p)
{
    worker *w = p;
    char file[48];
    for (int64_t i = 0; i < w->n; i++) {
        snprintf(file, sizeof(file), "bench-%" PRId64 ".exe", i);
        store_audit a = {.org_id = w->org,
                         .actor = "apikey:1",
                         .client_ip = "127.0.0.1",
                         .action = "sign.digest",
                         .format = "authenticode-pe",
                         .algorithm = "sha256",
                         .digest_hex =
                             "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                         .profile = "default",
                         .filename = file,
                         .outcome = AUDIT_ALLOWED};
        if (STORE_CALL(w->s, audit_append, &a) != QK_OK)
            w->failures++;
    }
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Mean microseconds per inclusion proof (+ check) in the tree of `size`. */
static double time_inclusion(qk_store *s, int64_t org, int64_t size, int reps)
{
    store_proof p;
    store_log_entry *e = NULL;
    size_t ne = 0;
    double t0 = now_s();
    for (int i = 0; i < reps; i++) {
        int64_t idx = (int64_t)(randombytes_uniform((uint32_t)size));
        if (STORE_CALL(s, log_prove, org, PROOF_INCLUSION, idx, size, &p) != QK_OK)
            return -1;
        if (i < 20) { /* check a few against their leaves (outside the timing's bulk) */
            tlog_hash lh;
            if (STORE_CALL(s, log_entries, org, idx, idx + 1, &e, &ne) != QK_OK || ne != 1)
                return -1;
            tlog_leaf_hash(e[0].leaf.data, e[0].leaf.len, lh);
            if (tlog_verify_inclusion(idx, size, lh, p.hashes, p.n, p.root) != 0)
                return -1;
            store_log_entries_free(e, ne);
        }
    }
    return (now_s() - t0) / reps * 1e6;
}

static double time_consistency(qk_store *s, int64_t org, int64_t size, int reps)
{
    store_proof p;
    double t0 = now_s();
    for (int i = 0; i < reps; i++) {
        int64_t from = 1 + (int64_t)randombytes_uniform((uint32_t)size);
        if (STORE_CALL(s, log_prove, org, PROOF_CONSISTENCY, from, size, &p) != QK_OK)
            return -1;
    }
    return (now_s() - t0) / reps * 1e6;
}

int main(int argc, char **argv)
{
    qk_store *s = NULL;
    int64_t org = 0, n;
    pthread_t th[THREADS];
    worker w[THREADS];
    if (argc != 3 || (n = strtoll(argv[2], NULL, 10)) < 2000) {
        fprintf(stderr, "usage: tlog-bench DIR N (N >= 2000)\n");
        return 2;
    }
    if (sodium_init() < 0 || store_sqlite_open(argv[1], &s) != QK_OK ||
        STORE_CALL(s, org_create, "bench", NULL, &org) != QK_OK) {
        fprintf(stderr, "tlog-bench: cannot open the store in %s: %s\n", argv[1],
                qk_error_detail());
        return 1;
    }
    double t0 = now_s();
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){s, org, n / THREADS + (i < n % THREADS), 0};
        pthread_create(&th[i], NULL, append_main, &w[i]);
    }
    int failures = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        failures += w[i].failures;
    }
    double append_s = now_s() - t0;
    store_sqlite_counters c;
    store_sqlite_stats(s, &c);
    printf("appended %" PRId64 " entries in %.1f s: %.0f entries/s (%" PRIu64
           " commits, %.0f entries per commit), %d failures\n",
           n, append_s, n / append_s, c.commits, (double)c.writes / (double)c.commits, failures);
    if (failures)
        return 1;
    double small = time_inclusion(s, org, 1000, 2000), big = time_inclusion(s, org, n, 2000);
    double csmall = time_consistency(s, org, 1000, 2000), cbig = time_consistency(s, org, n, 2000);
    if (small < 0 || big < 0 || csmall < 0 || cbig < 0) {
        fprintf(stderr, "tlog-bench: a proof failed: %s\n", qk_error_detail());
        return 1;
    }
    printf("inclusion proof (built and read in one snapshot): %.1f us at size 1000, %.1f us at "
           "size %" PRId64 " (ratio %.2f; log n grows %.2fx, n grows %.0fx)\n",
           small, big, n, big / small, log2((double)n) / log2(1000.0), (double)n / 1000.0);
    printf("consistency proof: %.1f us at size 1000, %.1f us at size %" PRId64 " (ratio %.2f)\n",
           csmall, cbig, n, cbig / csmall);
    store_audit_check chk;
    t0 = now_s();
    if (STORE_CALL(s, audit_verify, org, &chk) != QK_OK || !chk.ok) {
        fprintf(stderr, "tlog-bench: audit verify failed: %s\n", chk.problem);
        return 1;
    }
    printf("audit verify of %" PRId64 " entries: %.1f s\n", chk.count, now_s() - t0);
    s->ops->close(s);
    return 0;
}
