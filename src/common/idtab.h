/* SPDX-License-Identifier: Apache-2.0 */
/*
 * idtab.h - a table of objects addressed by {index, generation} ids packed in a uint64_t
 * (index in the low 32 bits, generation in the high 32, never 0). A freed slot bumps its
 * generation, so a stale id misses instead of reaching freed or reused memory.
 *
 * Thread-safety: none of its own; the owner guards the table with its lock.
 */
#ifndef KV_COMMON_IDTAB_H
#define KV_COMMON_IDTAB_H

#include <stddef.h>
#include <stdint.h>

#include "kvstash/err.h"

struct kv_idtab_slot {
    void *obj;
    uint32_t gen;
    uint32_t next_free; /* index + 1 of the next free slot, 0 = end */
};

struct kv_idtab {
    struct kv_idtab_slot *slots;
    uint32_t n; /* slots in use or on the free list */
    uint32_t cap;
    uint32_t free_head; /* index + 1, 0 = none */
    uint32_t live;
};

KV_API void kv_idtab_init(struct kv_idtab *t);
/* Frees the slot array (not the objects). */
KV_API void kv_idtab_fini(struct kv_idtab *t);
/* Stores obj (non-NULL) and returns its id. KV_ENOMEM, or KV_ENOSPC past 2^31 slots. */
KV_API int kv_idtab_add(struct kv_idtab *t, void *obj, uint64_t *id);
/* The object for id, or NULL if id is unknown or stale. */
KV_API void *kv_idtab_get(const struct kv_idtab *t, uint64_t id);
/* Removes id and returns its object, or NULL if id is unknown or stale. */
KV_API void *kv_idtab_remove(struct kv_idtab *t, uint64_t id);
/* Iteration: the object in slot i (0 <= i < t->n) or NULL; *id gets its id. */
KV_API void *kv_idtab_at(const struct kv_idtab *t, uint32_t i, uint64_t *id);

#endif
