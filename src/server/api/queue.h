/* The queue's workers inside qwickd (docs/api.md "Asynchronous signing").
 *
 * One dispatcher thread per node claims ready requests from the store
 * (fairly across orgs, under a lease) while fewer than `concurrency` are in
 * flight, and hands each to the signing engine (sign_core.h): local keys on
 * the signing threads, Azure on its engine, so hundreds of slow remote
 * signatures are in flight with no thread waiting on any. Each outcome is
 * recorded under the claim's fence: SIGNED with its audit entry, back to the
 * queue after a backoff with jitter (transient failures), or FAILED with the
 * reason (permanent failures, or attempts exhausted: a dead letter). */
#ifndef QWICKD_QUEUE_H
#define QWICKD_QUEUE_H

#include <stdint.h>

#include "api/server.h"

typedef struct signing_queue signing_queue;

typedef struct queue_config {
    unsigned concurrency;
    unsigned max_attempts;
    unsigned lease_seconds;
    unsigned backoff_ms, backoff_max_ms;
    unsigned poll_ms;
    unsigned sync_wait_seconds;
} queue_config;

/* Starts the dispatcher; `node` names this qwickd run in leases. */
qk_err queue_start(server *srv, const queue_config *cfg, const char *node, signing_queue **out);
/* Stops claiming, waits for the requests in flight to be recorded and
 * answers every waiter (202). The queue stays valid (handlers still running
 * may wake or wait on it: a wait is answered at once) until queue_free. */
void queue_stop(signing_queue *q);
/* queue_stop if not done, then frees; once no handler can reach it. */
void queue_free(signing_queue *q);
/* Something was queued on this node: look now rather than at the next poll. */
void queue_wake(signing_queue *q);

/* A caller waiting for request `id` (a synchronous request with an
 * Idempotency-Key): fn(arg, 1) once a worker of this node has recorded its
 * final status, or fn(arg, 0) at `deadline_ms` (unix ms), whichever comes
 * first; exactly once, on a queue thread. Register before queuing the
 * request, so a fast worker cannot finish first. */
typedef void (*queue_wait_fn)(void *arg, int finished);
void queue_wait(signing_queue *q, const char *id, int64_t deadline_ms, queue_wait_fn fn, void *arg);
/* Withdraws a wait before it fired: 1 if withdrawn (fn will not run). */
int queue_unwait(signing_queue *q, void *arg);
unsigned queue_sync_wait_seconds(const signing_queue *q);

/* The queue's Prometheus text (depth by status, oldest queued age, time in
 * queue and to sign, retries, dead letters): heap string. */
char *queue_metrics_render(signing_queue *q);

#endif
