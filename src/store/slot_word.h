/* SPDX-License-Identifier: Apache-2.0 */
/*
 * slot_word.h - the slot words and table arithmetic shared by the two open-addressing tables of
 * the store: the master's object index (master_index.c) and the node's string map
 * (master_map.c). A slot word holds an entry's address (16-byte aligned, below 2^48) shifted
 * right by 4 in its low 44 bits and 20 bits of the key's hash (the tag) above; 0 is an empty
 * slot. A table has nb home slots (a multiple of 16) plus spill slots past the last home, probes
 * never wrap, and a key's home is 24 bits of its hash scaled to nb: homes keep the hashes'
 * order, any nb will do, and up to KV_SLOT_TAG_MAX home slots the top 16 of those bits (the
 * word's top 16) alone give the home, so a table grows without reading its entries.
 * The tag's other 4 bits (the check) are hash bits the home never uses: a lookup follows only
 * a slot whose 20 tag bits match. Without them, a table near KV_SLOT_TAG_MAX home slots per
 * shard (the index at 10M objects) had about one tag value per home, so nearly every slot of
 * a key's own home matched and cost a key compare, a DRAM miss on an entry nobody prefetched
 * (8 % of the 10M fill's time was strcmp; 0 at 250k objects, where a home spans ~50 tags).
 * Tables grow by a quarter at a load of 4/5: 10-12.5 bytes of slots per entry.
 *
 * Thread-safety: pure functions; the tables' owners lock.
 */
#ifndef KV_STORE_SLOT_WORD_H
#define KV_STORE_SLOT_WORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_SLOT_ALIGN 16    /* entries' alignment (obj_slab.h rounds to 16; malloc aligns to 16) */
#define KV_SLOT_PTR_BITS 44 /* address >> 4 */
#define KV_SLOT_PTR_MASK ((UINT64_C(1) << KV_SLOT_PTR_BITS) - 1)
#define KV_SLOT_MIN 16                    /* home slots of a new table */
#define KV_SLOT_MAX ((size_t)1 << 24)     /* home slots of a table at most */
#define KV_SLOT_TAG_MAX ((size_t)1 << 16) /* up to this many, the tag gives the home */

static inline void *kv_slot_ptr(uint64_t v)
{
    return (void *)(uintptr_t)((v & KV_SLOT_PTR_MASK) << 4);
}

/* false for an address above 2^48 or not 16-byte aligned: no room for the tag */
static inline bool kv_slot_addr_ok(const void *p)
{
    uint64_t a = (uint64_t)(uintptr_t)p;
    return (a >> 48) == 0 && (a & (KV_SLOT_ALIGN - 1)) == 0;
}

/* The tag of a key whose 24 in-shard hash bits are v24 (their top 16 give the home), with 4
 * other bits of its hash (check) that filter lookups only. */
static inline uint64_t kv_slot_tag_of(uint64_t v24, uint64_t check)
{
    return (v24 >> 8 & 0xffff) << 4 | (check & 0xf);
}

static inline uint64_t kv_slot_word(const void *p, uint64_t tag)
{
    return tag << KV_SLOT_PTR_BITS | (uint64_t)(uintptr_t)p >> 4;
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

/* The home of the entry in slot word v, in nb <= KV_SLOT_TAG_MAX home slots: from the word's
 * top 16 bits (the tag without its check bits) */
static inline size_t kv_slot_home_word(uint64_t v, size_t nb)
{
    return kv_slot_home((v >> 48) << 8, nb);
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
