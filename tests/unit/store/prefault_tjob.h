/* SPDX-License-Identifier: Apache-2.0 */
/*
 * prefault_tjob.h - a job for the prefault thread's tests (test_prefault.c,
 * test_prefault_fork.c): counts its runs, records the thread and its place in a shared order,
 * and can be held on a gate while it runs. Static functions: each test file its own copy.
 */
#ifndef KV_TEST_PREFAULT_TJOB_H
#define KV_TEST_PREFAULT_TJOB_H

#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "store/prefault.h"

struct tjob {
    struct kv_prefault_job job; /* first: the fn casts back */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool gate;      /* a held job waits for this */
    bool entered;   /* fn started (the test waits for it) */
    int runs;       /* fn calls */
    pthread_t self; /* the thread of the last call */
    int *order, *norder, id;
};

static void tjob_fn(struct kv_prefault_job *j)
{
    struct tjob *t = (struct tjob *)(void *)j;
    pthread_mutex_lock(&t->lock);
    t->entered = true;
    pthread_cond_broadcast(&t->cond);
    while (!t->gate)
        pthread_cond_wait(&t->cond, &t->lock);
    t->runs++;
    t->self = pthread_self();
    if (t->order)
        t->order[(*t->norder)++] = t->id;
    pthread_mutex_unlock(&t->lock);
}

static void tjob_init(struct tjob *t, bool gate)
{
    memset(t, 0, sizeof(*t));
    t->job.fn = tjob_fn;
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    t->gate = gate;
}

static void tjob_fini(struct tjob *t)
{
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->cond);
}

static void tjob_open(struct tjob *t)
{
    pthread_mutex_lock(&t->lock);
    t->gate = true;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->lock);
}

static void tjob_wait_entered(struct tjob *t)
{
    pthread_mutex_lock(&t->lock);
    while (!t->entered)
        pthread_cond_wait(&t->cond, &t->lock);
    pthread_mutex_unlock(&t->lock);
}

static int tjob_runs(struct tjob *t)
{
    pthread_mutex_lock(&t->lock);
    int r = t->runs;
    pthread_mutex_unlock(&t->lock);
    return r;
}

#endif
