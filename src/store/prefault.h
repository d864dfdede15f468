/* SPDX-License-Identifier: Apache-2.0 */
/*
 * prefault.h - one background thread per process that readies the store's next 2 MiB record
 * chunks (obj_slab.c) before they are needed: it maps a chunk and faults it in, which
 * is the kernel zeroing 2 MiB (~0.1-0.3 ms on a VM, a quarter of the master's I/O thread during
 * a fill of 1-byte objects when that thread did it itself), while the I/O thread goes on with
 * requests. The allocators still map and fault a chunk themselves when no spare is ready (a
 * burst faster than the thread, no thread at all): the thread saves time, never correctness.
 *
 * A job is a struct kv_prefault_job inside its owner (a slab): kv_prefault_post queues
 * it, the thread runs job->fn(job) with no lock held, and kv_prefault_wait waits until it has.
 * The thread starts at the first post after a kv_prefault_attach and stops with the last
 * kv_prefault_detach: every owner attaches in its init and, after waiting for its job, detaches
 * in its fini. A forked child starts a thread of its own at its first post; the jobs its parent
 * had queued or running are dropped there (not busy: their owners map chunks on demand).
 *
 * Thread-safety: every function may be called from any thread (one mutex).
 */
#ifndef KV_STORE_PREFAULT_H
#define KV_STORE_PREFAULT_H

#include <stdbool.h>

struct kv_prefault_job {
    void (*fn)(struct kv_prefault_job *j); /* runs on the thread, no lock held */
    bool busy;                             /* queued or running (the module's lock) */
    bool again;                            /* posted while running: run once more */
    struct kv_prefault_job *next;          /* in the queue */
};

/* Counts one more user of the thread (it starts at the first post). */
void kv_prefault_attach(void);
/* One user less; the last one stops the thread and joins it (queued jobs run first). */
void kv_prefault_detach(void);
/* Queues j unless it is busy already: true when the thread will run (or is running) j->fn;
 * false when there is no thread (none attached, pthread_create failed): the
 * caller runs j->fn itself if it wants the work done. */
bool kv_prefault_post(struct kv_prefault_job *j);
/* Returns once j is neither queued nor running. */
void kv_prefault_wait(struct kv_prefault_job *j);

#endif
