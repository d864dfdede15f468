/* SPDX-License-Identifier: Apache-2.0 */
/*
 * table_arena.h - where the slot tables of the store's open-addressing maps live (the master's
 * index, master_index.c; the node's table and the SSD map, master_map.c).
 *
 * Both maps have 256 shards, each with a table of its own: at 10M objects a shard's table is
 * ~400 KiB, too small for a huge page of its own, and as 4 KiB pages every lookup and insert
 * paid a TLB miss for its slot line (a two-dimensional page walk in a VM). So tables from
 * KV_TARENA_MIN bytes are carved, 64-byte aligned, from 2 MiB-aligned chunks advised for
 * transparent huge pages; several shards' tables share one huge page. A chunk counts its live
 * tables and is unmapped when the last one is freed: shards grow at about the same time, so the
 * tables a generation of resizes replaced free their chunks together. Tables larger than half a
 * chunk get a 2 MiB-aligned mapping of their own (also advised), smaller ones come from
 * kv_calloc (they sit in the caches anyway); so do all of them in an arena made with chunks
 * false (sanitizer builds).
 *
 * Thread-safety: a mutex per arena.
 */
#ifndef KV_STORE_TABLE_ARENA_H
#define KV_STORE_TABLE_ARENA_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_TARENA_MIN (64u << 10) /* bytes: smaller tables come from kv_calloc */

struct kv_tarena {
    pthread_mutex_t lock;
    bool chunks;     /* false: every table from kv_calloc */
    char *cur;       /* the chunk tables are carved from now, or NULL */
    size_t cur_used; /* bytes of cur taken, its header included */
    uint64_t mapped; /* bytes mapped: chunks and own mappings */
};

void kv_tarena_init(struct kv_tarena *a, bool chunks);
/* Every table must have been freed. */
void kv_tarena_fini(struct kv_tarena *a);
/* A zeroed table of slots 64-bit words, or NULL. */
uint64_t *kv_tarena_alloc(struct kv_tarena *a, size_t slots);
/* Frees t (from kv_tarena_alloc with the same slots; NULL is ignored). */
void kv_tarena_free(struct kv_tarena *a, uint64_t *t, size_t slots);
/* Bytes mapped for tables (not counting kv_calloc'd ones). */
uint64_t kv_tarena_mapped(struct kv_tarena *a);

#endif
