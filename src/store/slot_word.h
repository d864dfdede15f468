/* SPDX-License-Identifier: Apache-2.0 */
/*
 * slot_word.h - the slot words and table arithmetic shared by the two open-addressing tables of
 * the store: the master's object index (master_index.c) and the node's string map
 * (master_map.c). A slot word holds an address in its low 48 bits and 16 bits of the key's hash
 * (the tag) above; 0 is an empty slot. A table has nb home slots (a multiple of 16) plus spill
 * slots past the last home, probes never wrap, and a key's home is 24 bits of its hash (the tag
 * on top) scaled to nb: homes keep the hashes' order, any nb will do, and up to KV_SLOT_TAG_MAX
 * home slots the tag alone gives the home, so a table grows without reading its entries.
 * Tables grow by a quarter at a load of 4/5: 10-12.5 bytes of slots per entry.
 *
 * Thread-safety: pure functions; the tables' owners lock.
 */
#ifndef KV_STORE_SLOT_WORD_H
#define KV_STORE_SLOT_WORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_SLOT_PTR_BITS 48
#define KV_SLOT_PTR_MASK ((UINT64_C(1) << KV_SLOT_PTR_BITS) - 1)
#define KV_SLOT_MIN 16                    /* home slots of a new table */
#define KV_SLOT_MAX ((size_t)1 << 24)     /* home slots of a table at most */
#define KV_SLOT_TAG_MAX ((size_t)1 << 16) /* up to this many, the tag gives the home */

static inline void *kv_slot_ptr(uint64_t v)
{
    return (void *)(uintptr_t)(v & KV_SLOT_PTR_MASK);
}

/* false for an address above 2^48: no room for the tag */
static inline bool kv_slot_addr_ok(const void *p)
{
    return ((uint64_t)(uintptr_t)p & ~KV_SLOT_PTR_MASK) == 0;
}

static inline uint64_t kv_slot_word(const void *p, uint64_t tag)
{
    return tag << KV_SLOT_PTR_BITS | (uint64_t)(uintptr_t)p;
}

static inline uint64_t kv_slot_tag(uint64_t v)
{
    return v >> KV_SLOT_PTR_BITS;
}

/* The home of a key whose 24 in-shard hash bits are v24 (the tag = v24 >> 8), in nb home
 * slots. */
static inline size_t kv_slot_home(uint64_t v24, size_t nb)
{
    if (nb <= KV_SLOT_TAG_MAX)
        return (size_t)(((v24 >> 8) * nb) >> 16);
    return (size_t)((v24 * nb) >> 24);
}

/* A table's home slots after growing: by a quarter, in whole pairs of cache lines of slots
 * (the resizes that come more often move words, not entries) */
static inline size_t kv_slots_grown(size_t nb)
{
    return (nb + nb / 4 + 15) & ~(size_t)15;
}

/* The fewest home slots that hold n entries at a load of 4/5 */
static inline size_t kv_slots_for(size_t n)
{
    size_t nb = ((n * 5 + 3) / 4 + 15) & ~(size_t)15;
    return nb < KV_SLOT_MIN ? KV_SLOT_MIN : nb < KV_SLOT_MAX ? nb : KV_SLOT_MAX;
}

/* Puts v into new table t (slots [0, end)) at its first free slot from home. False when the run
 * would pass the end (the caller grows the table further). */
static inline bool kv_slots_place(uint64_t *t, size_t end, size_t home, uint64_t v)
{
    for (size_t i = home; i < end; i++) {
        if (!t[i]) {
            t[i] = v;
            return true;
        }
    }
    return false;
}

#endif
