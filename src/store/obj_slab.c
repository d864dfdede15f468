/* SPDX-License-Identifier: Apache-2.0 */
/*
 * obj_slab.c - records in 2 MiB huge-page chunks with a free list per size (obj_slab.h).
 *
 * A chunk's first 16 bytes link it into the slab's list of chunks; records are carved after it
 * by a bump pointer, any size mixed, and never move. A record's size is not stored: the caller
 * gives it again at free (the master computes it from the record's key length and replica
 * room, the map from its key), which picks the free list.
 *
 * Invariants:
 *  1. used = the sizes (rounded to 16) of the records handed out from chunks and not freed;
 *     mapped = KV_SLAB_CHUNK x chunks (the spare included: it is in chunk_list from the start).
 *  2. every record on free[c] is c x 16 bytes, inside a chunk of this slab, and not handed out.
 *  3. spare, when set, is a whole chunk no record came from, faulted in; the next chunk the
 *     bump pointer needs is the spare when there is one.
 */
#include "store/obj_slab.h"

#include <string.h>
#include <sys/mman.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/util.h"
#include "store/prefault.h"

#define HEAD 16 /* bytes at a chunk's start: the link to the next chunk */

static void ready_job(struct kv_prefault_job *j);

void kv_slab_init(struct kv_slab *s, bool chunks)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    s->chunks = chunks;
    s->job.fn = ready_job;
    if (chunks)
        kv_prefault_attach();
}

void kv_slab_fini(struct kv_slab *s)
{
    if (s->chunks) { /* a spare being readied lands in chunk_list first */
        kv_prefault_wait(&s->job);
        kv_prefault_detach();
    }
    while (s->chunk_list) {
        void *c = s->chunk_list;
        s->chunk_list = *(void **)c;
        munmap(c, KV_SLAB_CHUNK);
    }
    pthread_mutex_destroy(&s->lock);
    memset(s, 0, sizeof(*s));
}

void *kv_map_huge(size_t bytes)
{
    size_t al = KV_SLAB_CHUNK;
    char *p = mmap(NULL, bytes + al, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    char *c = (char *)(((uintptr_t)p + al - 1) & ~(uintptr_t)(al - 1));
    if (c > p)
        munmap(p, (size_t)(c - p));
    if (c + bytes < p + bytes + al)
        munmap(c + bytes, (size_t)(p + bytes + al - (c + bytes)));
    /* best effort: without huge pages the memory still works, in 4 KiB pages */
    (void)madvise(c, bytes, MADV_HUGEPAGE);
    return c;
}

void *kv_slab_alloc(struct kv_slab *s, size_t n)
{
    if (n == 0 || n > KV_SLAB_MAX || !s->chunks)
        return kv_calloc(1, n ? n : 1);
    size_t r = (n + 15) & ~(size_t)15, c = r / 16;
    pthread_mutex_lock(&s->lock);
    void *p = s->free[c];
    bool reused = p != NULL;
    if (p) {
        s->free[c] = *(void **)p;
    } else {
        /* a next chunk: the rest of the old one (under KV_SLAB_MAX bytes) is left unused */
        bool full = !s->bump || (size_t)(s->end - s->bump) < r;
        if (full && s->spare) {
            s->bump = s->spare + HEAD; /* already in chunk_list, counted in mapped */
            s->end = s->spare + KV_SLAB_CHUNK;
            s->spare = NULL;
        } else if (full) {
            char *ch = kv_map_huge(KV_SLAB_CHUNK);
            if (!ch) {
                pthread_mutex_unlock(&s->lock);
                KV_LOGW("object records: cannot map a %zu MiB chunk (out of memory?)",
                        KV_SLAB_CHUNK >> 20);
                return NULL;
            }
            *(void **)ch = s->chunk_list;
            s->chunk_list = ch;
            s->mapped += KV_SLAB_CHUNK;
            s->bump = ch + HEAD;
            s->end = ch + KV_SLAB_CHUNK;
        }
        p = s->bump;
        s->bump += r;
    }
    s->used += r;
    pthread_mutex_unlock(&s->lock);
    if (reused) /* fresh chunk memory is zero already (and not touched before its use) */
        memset(p, 0, r);
    return p;
}

/* Maps the spare chunk and faults it in (2 MiB of zeroing by the kernel), without the lock;
 * the caller set reserving. */
static void ready_spare(struct kv_slab *s)
{
    char *ch = kv_map_huge(KV_SLAB_CHUNK);
    if (ch) /* page faults, not MADV_POPULATE_WRITE: that would hold the mmap lock throughout */
        kv_mem_fault_in(ch, KV_SLAB_CHUNK);
    pthread_mutex_lock(&s->lock);
    s->reserving = false;
    if (ch) {
        *(void **)ch = s->chunk_list;
        s->chunk_list = ch;
        s->mapped += KV_SLAB_CHUNK;
        s->spare = ch;
    }
    pthread_mutex_unlock(&s->lock);
}

static void ready_job(struct kv_prefault_job *j)
{
    ready_spare((struct kv_slab *)(void *)((char *)j - offsetof(struct kv_slab, job)));
}

void kv_slab_reserve(struct kv_slab *s)
{
    if (!s->chunks)
        return;
    pthread_mutex_lock(&s->lock);
    bool go =
        !s->spare && !s->reserving && (!s->bump || (size_t)(s->end - s->bump) < KV_SLAB_CHUNK / 2);
    if (go)
        s->reserving = true;
    pthread_mutex_unlock(&s->lock);
    if (go && !kv_prefault_post(&s->job)) /* no thread: the caller's, as the last resort */
        ready_spare(s);
}

void kv_slab_reserve_wait(struct kv_slab *s)
{
    if (s->chunks)
        kv_prefault_wait(&s->job);
}

void kv_slab_free(struct kv_slab *s, void *p, size_t n)
{
    if (!p)
        return;
    if (n == 0 || n > KV_SLAB_MAX || !s->chunks) {
        kv_free(p);
        return;
    }
    size_t r = (n + 15) & ~(size_t)15, c = r / 16;
    pthread_mutex_lock(&s->lock);
    *(void **)p = s->free[c];
    s->free[c] = p;
    s->used -= r;
    pthread_mutex_unlock(&s->lock);
}

void kv_slab_stats(struct kv_slab *s, struct kv_slab_stats *st)
{
    pthread_mutex_lock(&s->lock);
    st->mapped = s->mapped;
    st->used = s->used;
    pthread_mutex_unlock(&s->lock);
}
