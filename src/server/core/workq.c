#include "core/workq.h"

#include <pthread.h>
#include <stdlib.h>

typedef struct job {
    workq_fn fn;
    void *arg;
    struct job *next;
} job;

struct workq {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    job *head, *tail;
    int stopping;
    size_t nthreads;
    pthread_t *threads;
};

static void *worker(void *p)
{
    workq *q = p;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (q->head == NULL && !q->stopping)
            pthread_cond_wait(&q->cond, &q->lock);
        job *j = q->head;
        if (j == NULL)
            break; /* stopping and drained */
        q->head = j->next;
        if (q->head == NULL)
            q->tail = NULL;
        pthread_mutex_unlock(&q->lock);
        j->fn(j->arg);
        free(j);
        pthread_mutex_lock(&q->lock);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

workq *workq_new(size_t nthreads)
{
    workq *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->threads = calloc(nthreads, sizeof(pthread_t));
    if (q->threads == NULL) {
        free(q);
        return NULL;
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    for (size_t i = 0; i < nthreads; i++) {
        if (pthread_create(&q->threads[i], NULL, worker, q) != 0)
            break;
        q->nthreads++;
    }
    if (q->nthreads == 0) {
        workq_free(q);
        return NULL;
    }
    return q;
}

int workq_push(workq *q, workq_fn fn, void *arg)
{
    job *j = malloc(sizeof(*j));
    if (j == NULL)
        return -1;
    j->fn = fn;
    j->arg = arg;
    j->next = NULL;
    pthread_mutex_lock(&q->lock);
    if (q->stopping) {
        pthread_mutex_unlock(&q->lock);
        free(j);
        return -1;
    }
    if (q->tail != NULL)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    return 0;
}

void workq_stop(workq *q)
{
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->lock);
    q->stopping = 1;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    for (size_t i = 0; i < q->nthreads; i++)
        pthread_join(q->threads[i], NULL);
    q->nthreads = 0;
}

void workq_free(workq *q)
{
    if (q == NULL)
        return;
    workq_stop(q);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    free(q->threads);
    free(q);
}
