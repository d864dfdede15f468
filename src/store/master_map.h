/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_map.h - a string-keyed hash map (open addressing, sharded, each shard growing on its
 * own) used by the node's object table and the SSD tier. Keys are NUL-terminated and copied;
 * values are borrowed pointers the owner frees.
 *
 * Thread-safety: none; the owner guards it.
 */
#ifndef KV_STORE_MASTER_MAP_H
#define KV_STORE_MASTER_MAP_H

#include <stddef.h>
#include <stdint.h>

#include "kvstash/err.h"
#include "store/obj_slab.h"
#include "store/table_arena.h"

/* KV_SMAP_SHARDS tables, picked by the hash's top bits, each growing on its own: a resize
 * moves 1/256 of the entries (milliseconds at 10M entries under the owner's lock, not the
 * second a single table took). */
#define KV_SMAP_SHARDS 256

struct kv_smap_shard {
    uint64_t *slot; /* nb + spill slot words (master_map.c), or NULL */
    size_t nb;      /* home slots (a multiple of 16), or 0 */
    size_t n;
};

struct kv_smap {
    struct kv_smap_shard sh[KV_SMAP_SHARDS];
    size_t n;
    struct kv_slab ents;   /* the entries {value, key} (obj_slab.h) */
    struct kv_tarena tabs; /* the shards' tables (table_arena.h) */
};

void kv_smap_init(struct kv_smap *m);
/* Frees the entries and keys (not the values). */
void kv_smap_fini(struct kv_smap *m);
/* The value for key or NULL. */
void *kv_smap_get(const struct kv_smap *m, const char *key);
/* Adds key -> val (val non-NULL). KV_EEXIST when present, KV_ENOMEM. */
int kv_smap_put(struct kv_smap *m, const char *key, void *val);
/* Removes key and returns its value, or NULL. */
void *kv_smap_del(struct kv_smap *m, const char *key);
/* Asks the CPU for key's bucket, ahead of a lookup (loops over many keys overlap their cache
 * misses). */
void kv_smap_prefetch(const struct kv_smap *m, const char *key);
/* Readies the entries' next chunk outside the caller's lock (kv_slab_reserve). */
void kv_smap_reserve(struct kv_smap *m);
/* Calls fn for each entry; fn returns non-zero to remove the entry (after the call). */
void kv_smap_each(struct kv_smap *m, int (*fn)(void *ud, const char *key, void *val), void *ud);

#endif
