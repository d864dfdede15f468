/* SPDX-License-Identifier: Apache-2.0 */
/*
 * obj_slab.h - the allocator of the store's per-object records: the master's struct mobj, the
 * node's object table entries (master_map.c) and struct nobj. Small records of a few sizes,
 * millions of them, read at random by every lookup.
 *
 * Records up to KV_SLAB_MAX bytes are carved from 2 MiB chunks that are 2 MiB-aligned and
 * advised for transparent huge pages (MADV_HUGEPAGE; the system's default here is "madvise"),
 * in sizes rounded up to 16 bytes, with no header; a freed record goes on its size's free list
 * and the next record of that size reuses it. Against malloc (glibc): 16 bytes less per record
 * (malloc's 8-byte header and its rounding), one page fault per 2 MiB instead of per 4 KiB
 * while the index grows (a fault is costly in a VM), and one TLB entry for 2 MiB of records, so
 * a lookup at 10M objects seldom waits on a page walk. Larger records, and every record in a
 * slab made with chunks false (sanitizer builds: so that ASan sees each record), come from
 * kv_calloc. Chunks go back to the system only in kv_slab_fini: the memory of removed records
 * is kept for new ones (as memcached's slabs).
 *
 * Thread-safety: a mutex per slab; every function may be called from any thread.
 */
#ifndef KV_STORE_OBJ_SLAB_H
#define KV_STORE_OBJ_SLAB_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/prefault.h"

#define KV_SLAB_MAX 512                 /* bytes: larger records come from kv_calloc */
#define KV_SLAB_CHUNK ((size_t)2 << 20) /* a chunk: one huge page */

/* chunks by default: false in sanitizer builds */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KV_SLAB_CHUNKS_DEFAULT false
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define KV_SLAB_CHUNKS_DEFAULT false
#endif
#endif
#ifndef KV_SLAB_CHUNKS_DEFAULT
#define KV_SLAB_CHUNKS_DEFAULT true
#endif

struct kv_slab {
    pthread_mutex_t lock;
    bool chunks;                      /* false: every record from kv_calloc */
    void *free[KV_SLAB_MAX / 16 + 1]; /* per size / 16: freed records, linked through word 0 */
    char *bump, *end;                 /* the rest of the newest chunk */
    char *spare;                      /* a chunk mapped and faulted in ahead (kv_slab_reserve) */
    bool reserving;                   /* a kv_slab_reserve is preparing one */
    struct kv_prefault_job job;       /* readies the spare on the prefault thread */
    void *chunk_list;                 /* every chunk, linked through its first word */
    uint64_t mapped;                  /* bytes of chunks */
    uint64_t used;                    /* bytes of records handed out from chunks, not freed */
};

struct kv_slab_stats {
    uint64_t mapped; /* bytes of chunks mapped */
    uint64_t used;   /* bytes of them in live records */
};

void kv_slab_init(struct kv_slab *s, bool chunks);
/* Unmaps every chunk: every record from them must be gone (freed or never used again). */
void kv_slab_fini(struct kv_slab *s);
/* A zeroed record of n bytes (n > 0), or NULL (no memory). */
void *kv_slab_alloc(struct kv_slab *s, size_t n);
/* Once the newest chunk is half used, has the next one mapped and faulted in (2 MiB of zeroing
 * by the kernel, ~0.1-0.3 ms on a VM) by the prefault thread (prefault.h), or, without one, on
 * the calling thread without the slab's lock: call it before taking the lock the allocations
 * run under (the master's index lock, the node's), so no allocation waits on the fault. Cheap
 * when there is nothing to do. */
void kv_slab_reserve(struct kv_slab *s);
/* Returns once no spare is being readied by the prefault thread (tests; kv_slab_fini). */
void kv_slab_reserve_wait(struct kv_slab *s);
/* Frees p (from kv_slab_alloc with the same n; NULL is ignored). */
void kv_slab_free(struct kv_slab *s, void *p, size_t n);
void kv_slab_stats(struct kv_slab *s, struct kv_slab_stats *st);
/* bytes (a multiple of 4 KiB) of zeroed memory at a KV_SLAB_CHUNK-aligned address, advised for
 * transparent huge pages (best effort), or NULL; munmap frees it. Also table_arena.c's. */
void *kv_map_huge(size_t bytes);

#endif
