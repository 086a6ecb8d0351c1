/* A fixed pool of threads running queued jobs in FIFO order.
 *
 * qwickd uses it for work that mostly waits (a durable group commit), so the
 * HTTP pool threads, sized to the cores, keep doing CPU work meanwhile. */
#ifndef QWICKD_WORKQ_H
#define QWICKD_WORKQ_H

#include <stddef.h>

typedef struct workq workq;
typedef void (*workq_fn)(void *arg);

workq *workq_new(size_t nthreads);
/* 0 when queued; -1 when out of memory or shutting down (the job did not run). */
int workq_push(workq *q, workq_fn fn, void *arg);
/* Runs every job already queued and joins the threads; later pushes fail
 * (the caller then runs the job itself). */
void workq_stop(workq *q);
/* workq_stop, then frees the pool. */
void workq_free(workq *q);

#endif
