/* SPDX-License-Identifier: Apache-2.0 */
/*
 * prefault.c - the store's chunk-readying thread (prefault.h).
 *
 * Invariants (under pf.lock):
 *  1. a job is busy from its post until its fn has returned with again false; a busy job is in
 *     the queue or is the one the thread runs, never both, and is queued at most once; again
 *     is set only on the running one (posted while its fn ran: it runs once more);
 *  2. running: a thread exists (started in this process, pid); stopping: the last user is
 *     joining it, and nothing more is queued;
 *  3. the queue is empty whenever no thread runs;
 *  4. current is the job whose fn the thread runs now, or NULL.
 */
#include "store/prefault.h"

#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <unistd.h>

static struct {
    pthread_mutex_t lock;
    pthread_cond_t work; /* the thread: a job was queued, or stop */
    pthread_cond_t done; /* waiters: a job finished */
    pthread_t thread;
    pid_t pid; /* the process the thread runs in */
    bool running, stopping;
    unsigned users;
    struct kv_prefault_job *head, **tail;
    struct kv_prefault_job *current; /* the job whose fn runs now, or NULL (invariant 4) */
} pf = {.lock = PTHREAD_MUTEX_INITIALIZER,
        .work = PTHREAD_COND_INITIALIZER,
        .done = PTHREAD_COND_INITIALIZER,
        .tail = &pf.head};

static bool ours(void)
{
    return pf.running && pf.pid == getpid();
}

static void *pf_main(void *arg)
{
    (void)arg;
    /* the idle class: the thread uses CPU time nobody else wants (a fill leaves ~40 % of this
     * VM's two CPUs idle), and never preempts the I/O threads or their clients */
    struct sched_param sp = {0};
    (void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
    pthread_mutex_lock(&pf.lock);
    for (;;) {
        struct kv_prefault_job *j = pf.head;
        if (!j) {
            if (pf.stopping)
                break;
            pthread_cond_wait(&pf.work, &pf.lock);
            continue;
        }
        pf.head = j->next;
        if (!pf.head)
            pf.tail = &pf.head;
        j->next = NULL;
        pf.current = j;
        pthread_mutex_unlock(&pf.lock);
        j->fn(j);
        pthread_mutex_lock(&pf.lock);
        pf.current = NULL;
        if (j->again) { /* posted again while fn ran: once more */
            j->again = false;
            *pf.tail = j;
            pf.tail = &j->next;
            continue;
        }
        j->busy = false;
        pthread_cond_broadcast(&pf.done);
    }
    pthread_mutex_unlock(&pf.lock);
    return NULL;
}

/* fork with the lock held by another thread would leave it locked in the child for good */
static void fork_prepare(void)
{
    pthread_mutex_lock(&pf.lock);
}

static void fork_release(void)
{
    pthread_mutex_unlock(&pf.lock);
}

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void fork_handlers(void)
{
    (void)pthread_atfork(fork_prepare, fork_release, fork_release);
}

void kv_prefault_attach(void)
{
    pthread_once(&fork_once, fork_handlers);
    pthread_mutex_lock(&pf.lock);
    pf.users++;
    pthread_mutex_unlock(&pf.lock);
}

void kv_prefault_detach(void)
{
    pthread_mutex_lock(&pf.lock);
    if (pf.users)
        pf.users--;
    bool join = pf.users == 0 && ours() && !pf.stopping;
    if (join) {
        pf.stopping = true;
        pthread_cond_signal(&pf.work);
    }
    pthread_mutex_unlock(&pf.lock);
    if (!join)
        return;
    pthread_join(pf.thread, NULL);
    pthread_mutex_lock(&pf.lock);
    pf.running = pf.stopping = false;
    pthread_mutex_unlock(&pf.lock);
}

bool kv_prefault_post(struct kv_prefault_job *j)
{
    pthread_mutex_lock(&pf.lock);
    bool ok = true;
    if (pf.running && pf.pid != getpid()) {
        /* a forked child: the thread stayed with the parent, and the jobs queued or running
         * there never run here. Not busy any more, so waits on them return (their owners
         * stay without a spare: they map chunks on demand, as with no thread). */
        for (struct kv_prefault_job *q = pf.head, *next; q; q = next) {
            next = q->next;
            q->busy = q->again = false;
            q->next = NULL;
        }
        if (pf.current)
            pf.current->busy = pf.current->again = false;
        pf.current = NULL;
        pf.running = pf.stopping = false;
        pf.head = NULL;
        pf.tail = &pf.head;
    }
    if (!pf.running && !pf.stopping && pf.users) { /* the queue is empty (invariant 3) */
        pf.pid = getpid();
        pf.running = pthread_create(&pf.thread, NULL, pf_main, NULL) == 0;
    }
    if (j->busy) { /* queued already, or running: then once more after it (invariant 1) */
        ok = ours();
        if (ok && j == pf.current)
            j->again = true;
    } else if (!ours() || pf.stopping) {
        ok = false;
    } else {
        j->busy = true;
        j->next = NULL;
        *pf.tail = j;
        pf.tail = &j->next;
        pthread_cond_signal(&pf.work);
    }
    pthread_mutex_unlock(&pf.lock);
    return ok;
}

void kv_prefault_wait(struct kv_prefault_job *j)
{
    pthread_mutex_lock(&pf.lock);
    while (j->busy && ours())
        pthread_cond_wait(&pf.done, &pf.lock);
    pthread_mutex_unlock(&pf.lock);
}
