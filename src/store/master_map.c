/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_map.c - string-keyed hash map (see master_map.h): KV_SMAP_SHARDS tables by the hash's
 * top bits, each an open-addressing table (linear probing) of 64-bit slot words, the design of
 * the master's index (master_index.c): an entry's address and 20 bits of the key's hash (the
 * tag, slot_word.h). An entry is one record, the value pointer and the key, from the
 * map's slab (obj_slab.h: 2 MiB huge-page chunks, no malloc header).
 *  - A lookup reads the run of slots from the key's home and follows only slots whose tag
 *    matches: a hit reads one entry (key and value pointer in one line), a miss almost none.
 *    The chained map it replaces read an entry, then its separately allocated key, for every
 *    entry ahead in the chain.
 *  - Up to KV_SLOT_TAG_MAX home slots a shard, a home follows from the tag, so growing moves words
 *    and reads no entry.
 *  - A table grows by a quarter at a load of 4/5; probes never wrap (SPILL slots past the last
 *    home; a run that would pass them grows the table), so a scan in slot order meets each entry
 *    once and deletion shifts later slots back (no tombstones).
 * Hashing is xxh3 (common/hash.h). Thread model: none (owner's lock; the slab locks itself).
 */
#include "store/master_map.h"

#include <stdbool.h>
#include <string.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "store/slot_word.h"

#define SHARD_SHIFT 56 /* 64 - log2(KV_SMAP_SHARDS) */
_Static_assert(KV_SMAP_SHARDS == 1 << (64 - SHARD_SHIFT), "KV_SMAP_SHARDS and SHARD_SHIFT agree");
#define SPILL 64

struct ent {
    void *val;
    char key[];
};

static inline struct ent *ent_of(uint64_t v)
{
    return kv_slot_ptr(v);
}

/* the 24 bits of the hash below the shard's, the tag (16 bits) on top */
static inline uint64_t in_shard(uint64_t h)
{
    return (h >> (SHARD_SHIFT - 24)) & 0xffffff;
}

static inline size_t home_h(uint64_t h, size_t nb)
{
    return kv_slot_home(in_shard(h), nb);
}

/* the slot word's tag: the in-shard bits' top 16, then the hash's low 4 bits (the check) */
static inline uint64_t tag_of(uint64_t h)
{
    return kv_slot_tag_of(in_shard(h), h);
}

/* the home of the entry in slot word v: from the tag alone up to KV_SLOT_TAG_MAX */
static size_t home_v(uint64_t v, size_t nb)
{
    if (nb <= KV_SLOT_TAG_MAX)
        return kv_slot_home_word(v, nb);
    const char *k = ent_of(v)->key;
    return home_h(kv_hash64(k, strlen(k)), nb);
}

void kv_smap_init(struct kv_smap *m)
{
    memset(m, 0, sizeof(*m));
    kv_slab_init(&m->ents, KV_SLAB_CHUNKS_DEFAULT);
    kv_tarena_init(&m->tabs, KV_SLAB_CHUNKS_DEFAULT);
}

/* The bytes of an entry whose key has klen bytes. */
static size_t ent_bytes(size_t klen)
{
    return sizeof(struct ent) + klen + 1;
}

static void ent_free(struct kv_smap *m, struct ent *e)
{
    kv_slab_free(&m->ents, e, ent_bytes(strlen(e->key)));
}

void kv_smap_fini(struct kv_smap *m)
{
    for (size_t s = 0; s < KV_SMAP_SHARDS; s++) {
        struct kv_smap_shard *sh = &m->sh[s];
        for (size_t i = 0; sh->nb && i < sh->nb + SPILL; i++)
            if (sh->slot[i])
                ent_free(m, ent_of(sh->slot[i]));
        kv_tarena_free(&m->tabs, sh->slot, sh->nb ? sh->nb + SPILL : 0);
    }
    kv_slab_fini(&m->ents);
    kv_tarena_fini(&m->tabs);
    memset(m, 0, sizeof(*m));
}

static struct kv_smap_shard *shard(const struct kv_smap *m, uint64_t h)
{
    return (struct kv_smap_shard *)&m->sh[h >> SHARD_SHIFT];
}

/* The slot holding key (hash h), or the empty slot its run ends at (*found false; SIZE_MAX when
 * the run reaches the end of the spill slots). */
static size_t find(const struct kv_smap_shard *sh, const char *key, uint64_t h, bool *found)
{
    *found = false;
    if (!sh->nb)
        return SIZE_MAX;
    uint64_t t = tag_of(h);
    for (size_t i = home_h(h, sh->nb), end = sh->nb + SPILL; i < end; i++) {
        uint64_t v = sh->slot[i];
        if (!v)
            return i;
        if (kv_slot_tag(v) == t && strcmp(ent_of(v)->key, key) == 0) {
            *found = true;
            return i;
        }
    }
    return SIZE_MAX;
}

void *kv_smap_get(const struct kv_smap *m, const char *key)
{
    uint64_t h = kv_hash64(key, strlen(key));
    const struct kv_smap_shard *sh = shard(m, h);
    bool found;
    size_t i = find(sh, key, h, &found);
    return found ? ent_of(sh->slot[i])->val : NULL;
}

void kv_smap_reserve(struct kv_smap *m)
{
    kv_slab_reserve(&m->ents);
}

void kv_smap_prefetch(const struct kv_smap *m, const char *key)
{
    uint64_t h = kv_hash64(key, strlen(key));
    const struct kv_smap_shard *sh = shard(m, h);
    if (sh->nb)
        __builtin_prefetch(&sh->slot[home_h(h, sh->nb)]);
}

/* Gives sh a table of nb home slots or more, moving every word over (in slot order, so runs
 * keep their order). KV_ENOMEM leaves the table as it was. */
static int grow(struct kv_smap *m, struct kv_smap_shard *sh, size_t nb)
{
    for (; nb <= KV_SLOT_MAX; nb = kv_slots_grown(nb)) {
        uint64_t *t = kv_tarena_alloc(&m->tabs, nb + SPILL);
        if (!t)
            return KV_ENOMEM;
        bool ok = true;
        for (size_t i = 0; ok && sh->nb && i < sh->nb + SPILL; i++)
            if (sh->slot[i])
                ok = kv_slots_place(t, nb + SPILL, home_v(sh->slot[i], nb), sh->slot[i]);
        if (!ok) { /* a run passed the spill slots: larger again */
            kv_tarena_free(&m->tabs, t, nb + SPILL);
            continue;
        }
        kv_tarena_free(&m->tabs, sh->slot, sh->nb ? sh->nb + SPILL : 0);
        sh->slot = t;
        sh->nb = nb;
        return KV_OK;
    }
    return KV_ENOMEM;
}

int kv_smap_put(struct kv_smap *m, const char *key, void *val)
{
    uint64_t h = kv_hash64(key, strlen(key));
    struct kv_smap_shard *sh = shard(m, h);
    if (!sh->nb || sh->n + 1 > sh->nb / 5 * 4) { /* a load of at most 4/5 */
        int rc = grow(m, sh, sh->nb ? kv_slots_grown(sh->nb) : KV_SLOT_MIN);
        if (rc < 0 && !sh->nb)
            return rc; /* else: fuller than 4/5 for now */
    }
    bool found;
    size_t i = find(sh, key, h, &found);
    if (found)
        return KV_EEXIST;
    while (i == SIZE_MAX) { /* the run reaches past the spill slots */
        if (sh->nb >= KV_SLOT_MAX || grow(m, sh, kv_slots_grown(sh->nb)) < 0)
            return KV_ENOMEM;
        i = find(sh, key, h, &found);
    }
    size_t klen = strlen(key);
    struct ent *e = kv_slab_alloc(&m->ents, ent_bytes(klen));
    if (!e)
        return KV_ENOMEM;
    if (!kv_slot_addr_ok(e)) {
        kv_slab_free(&m->ents, e, ent_bytes(klen));
        return KV_ERANGE; /* an address above 2^48 or unaligned: no room for the tag */
    }
    e->val = val;
    memcpy(e->key, key, klen + 1);
    sh->slot[i] = kv_slot_word(e, tag_of(h));
    sh->n++;
    m->n++;
    return KV_OK;
}

/* Frees slot i's entry and empties the slot, moving later words of its run back so that none is
 * cut off from its home. */
static void erase_at(struct kv_smap *m, struct kv_smap_shard *sh, size_t i)
{
    ent_free(m, ent_of(sh->slot[i]));
    for (size_t j = i + 1, end = sh->nb + SPILL; j < end && sh->slot[j]; j++) {
        if (home_v(sh->slot[j], sh->nb) <= i) {
            sh->slot[i] = sh->slot[j];
            i = j;
        }
    }
    sh->slot[i] = 0;
    sh->n--;
    m->n--;
}

void *kv_smap_del(struct kv_smap *m, const char *key)
{
    uint64_t h = kv_hash64(key, strlen(key));
    struct kv_smap_shard *sh = shard(m, h);
    bool found;
    size_t i = find(sh, key, h, &found);
    if (!found)
        return NULL;
    void *v = ent_of(sh->slot[i])->val;
    erase_at(m, sh, i);
    return v;
}

/* Visiting millions of entries met in no useful order is a run of dependent cache misses (the
 * entry, then the value): the loop asks for the entries PF_FAR slots ahead and for the values
 * of those PF_NEAR ahead, so that the misses overlap (a node listing 10M objects for MOUNT). */
#define PF_FAR 16
#define PF_NEAR 8

void kv_smap_each(struct kv_smap *m, int (*fn)(void *ud, const char *key, void *val), void *ud)
{
    for (size_t s = 0; s < KV_SMAP_SHARDS; s++) {
        struct kv_smap_shard *sh = &m->sh[s];
        size_t end = sh->nb ? sh->nb + SPILL : 0;
        for (size_t i = 0; i < end;) {
            if (i + PF_FAR < end && sh->slot[i + PF_FAR])
                __builtin_prefetch(ent_of(sh->slot[i + PF_FAR]));
            if (i + PF_NEAR < end && sh->slot[i + PF_NEAR])
                __builtin_prefetch(ent_of(sh->slot[i + PF_NEAR])->val);
            uint64_t v = sh->slot[i];
            if (v && fn(ud, ent_of(v)->key, ent_of(v)->val))
                erase_at(m, sh, i); /* a later word may move into i: look again */
            else
                i++;
        }
    }
}
