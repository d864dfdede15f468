/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_map.h - a string-keyed hash map (chained, doubling) used by the master's index, the
 * node's object table and the SSD tier. Keys are NUL-terminated and copied; values are
 * borrowed pointers the owner frees.
 *
 * Thread-safety: none; the owner guards it.
 */
#ifndef KV_STORE_MASTER_MAP_H
#define KV_STORE_MASTER_MAP_H

#include <stddef.h>
#include <stdint.h>

#include "kvstash/err.h"

struct kv_smap_ent {
    char *key;
    uint64_t hash;
    void *val;
    struct kv_smap_ent *next;
};

struct kv_smap {
    struct kv_smap_ent **b;
    size_t nb; /* power of two */
    size_t n;
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
/* Calls fn for each entry; fn returns non-zero to remove the entry (after the call). */
void kv_smap_each(struct kv_smap *m, int (*fn)(void *ud, const char *key, void *val), void *ud);

#endif
