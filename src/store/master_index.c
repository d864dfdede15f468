/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_index.c - the master's object index: key -> struct mobj, split in KV_OIDX_SHARDS shards
 * by the hash's top bits, each an open-addressing table (linear probing) that grows on its own.
 * A slot is one 64-bit word: the object's address and 20 bits of the key's hash (the tag,
 * slot_word.h). So
 *  - a lookup reads one run of slots (a cache line or two, its address known from the hash
 *    alone, so it can be prefetched) and follows only the slots whose tag matches: a hit reads
 *    one object, a miss almost never reads one (at most 1 in 16 per slot of its own home
 *    passed, 1 in 2^20 per other slot). A chained table read every object ahead of the key in
 *    its chain, one dependent DRAM miss each that no prefetch could cover;
 *  - the home slot of an object is its tag's top 16 bits scaled to the table's size while a
 *    shard has at most 2^16 home slots (16M in all), so growing a shard moves words without
 *    reading a single object (a chained table hashed every key again: a DRAM miss per object);
 *  - a table grows by a quarter at a load of 4/5: the index costs 10-12.5 bytes of slots per
 *    object, and the object carries no link. The key's hash is not stored (computed again
 *    where needed).
 * A resize moves 1/256 of the objects (milliseconds at 10M objects, not a second under a lock).
 * Probes never wrap: each table has SPILL slots past its last home slot, and an insert that
 * would run past them grows the table. So a scan in slot order (kv_oidx_each_range) never
 * meets an object twice, and deletion shifts later slots back (no tombstones).
 *
 * Invariants:
 *  1. An object is in at most one slot, in shard (hash >> 24) with hash = kv_oidx_hash(o->key)
 *     (the low 32 bits of kv_hash64), at or after its home slot, with no empty slot between its
 *     home and itself; the slot's tag is bits 8-23 of the hash, then bits 0-3 (the check).
 *  2. idx->n is the sum of the shards' n; a shard's n <= 4/5 of its nb (but for an insert whose
 *     resize failed for want of memory); homes are monotonic in the hash's 24 in-shard bits.
 *  3. An each callback that returns non-zero has the object removed after it returned, without
 *     being touched again (the callback may have freed it).
 * Thread-safety: writers hold the master's lock (master_int.h), so they never run at the same
 * time; each shard has a lock of its own besides, taken by every change of its slots (put, del,
 * replace, resize, each_range) and by kv_oidx_peek_batch. So a lookup that holds only the shard's
 * lock (exists, batch_exists) never waits on the master's lock: at most on one change of its shard.
 * Writers look up under the master's lock alone (no writer changes a slot meanwhile).
 */
#include <pthread.h>
#include <string.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "store/master_int.h"
#include "store/slot_word.h"

#define SHARD_BITS 8
/* Slots beyond the last home slot, so that probes never wrap (a run that would pass them grows
 * the table instead). */
#define SPILL 128

static struct kv_oidx_shard *shard_of(struct kv_oidx *idx, uint32_t h)
{
    return &idx->sh[h >> (32 - SHARD_BITS)];
}

uint32_t kv_oidx_hash(const char *key)
{
    return (uint32_t)kv_hash64(key, strlen(key));
}

/* The slot word's tag: bits 8-23 of the hash (bits 24-31 chose the shard), then bits 0-3 (the
 * check: no home depends on them up to 2^16 home slots a shard, past that hardly any). */
static inline uint64_t tag_of(uint32_t h)
{
    return kv_slot_tag_of(h & 0xffffff, h);
}

/* The home slot of hash h in nb home slots (slot_word.h): the hash's low 24 bits, the tag on
 * top. */
static inline size_t home_h(uint32_t h, size_t nb)
{
    return kv_slot_home(h & 0xffffff, nb);
}

static inline struct mobj *slot_obj(uint64_t v)
{
    return kv_slot_ptr(v);
}

/* The home slot of the object in slot word v in nb home slots: from the tag alone up to
 * KV_SLOT_TAG_MAX, else from its key. (Growing by a quarter at 4/5, slot_word.h: a table that
 * doubled at a load of 3/4 cost 17 bytes of slots per object at 1M objects, and the master
 * missed its 150-byte goal by one byte.) */
static size_t home_v(uint64_t v, size_t nb)
{
    if (nb <= KV_SLOT_TAG_MAX)
        return kv_slot_home_word(v, nb);
    return home_h(kv_oidx_hash(slot_obj(v)->key), nb);
}

/* Tables come from the index's arena (table_arena.h): from 64 KiB up they share 2 MiB huge
 * pages, and a replaced table's memory goes back to the system once its chunk empties (not to
 * glibc's heap, where blocks of a size it once mapped may stay resident). */
static uint64_t *table_new(struct kv_oidx *idx, size_t slots)
{
    return kv_tarena_alloc(&idx->tabs, slots);
}

static void table_free(struct kv_oidx *idx, uint64_t *t, size_t slots)
{
    kv_tarena_free(&idx->tabs, t, slots);
}

void kv_oidx_init(struct kv_oidx *idx)
{
    memset(idx, 0, sizeof(*idx));
    for (size_t i = 0; i < KV_OIDX_SHARDS; i++)
        pthread_mutex_init(&idx->sh[i].lock, NULL);
    kv_tarena_init(&idx->tabs, KV_SLAB_CHUNKS_DEFAULT);
}

void kv_oidx_fini(struct kv_oidx *idx)
{
    for (size_t i = 0; i < KV_OIDX_SHARDS; i++) {
        table_free(idx, idx->sh[i].slot, idx->sh[i].nb ? idx->sh[i].nb + SPILL : 0);
        idx->sh[i].slot = NULL;
        idx->sh[i].nb = idx->sh[i].n = 0;
        pthread_mutex_destroy(&idx->sh[i].lock);
    }
    kv_tarena_fini(&idx->tabs);
    idx->n = 0;
}

pthread_mutex_t *kv_oidx_lock_h(struct kv_oidx *idx, uint32_t h)
{
    return &shard_of(idx, h)->lock;
}

pthread_mutex_t *kv_oidx_lock_of(struct kv_oidx *idx, const struct mobj *o)
{
    return kv_oidx_lock_h(idx, kv_oidx_hash(o->key));
}

static struct mobj *get_h(const struct kv_oidx *idx, const char *key, uint32_t h)
{
    const struct kv_oidx_shard *s = &idx->sh[h >> (32 - SHARD_BITS)];
    if (!s->nb)
        return NULL;
    uint64_t t = tag_of(h);
    for (size_t i = home_h(h, s->nb), end = s->nb + SPILL; i < end; i++) {
        uint64_t v = s->slot[i];
        if (!v)
            return NULL;
        if (kv_slot_tag(v) == t && strcmp(slot_obj(v)->key, key) == 0)
            return slot_obj(v);
    }
    return NULL;
}

struct mobj *kv_oidx_get(const struct kv_oidx *idx, const char *key)
{
    return get_h(idx, key, kv_oidx_hash(key));
}

/* Asks the CPU for the lines a lookup of key (hash h, length klen) reads in the first object
 * of its run whose tag matches: the key (at byte 63: a 16-byte key may end on the object's
 * second line, and strcmp reads 32 bytes at once) and the state before it. Reads the slots:
 * caller holds the shard's lock or the master's. */
static void prefetch_obj(const struct kv_oidx_shard *s, uint32_t h, size_t klen)
{
    if (!s->nb)
        return;
    uint64_t t = tag_of(h);
    for (size_t i = home_h(h, s->nb), end = s->nb + SPILL; i < end; i++) {
        uint64_t v = s->slot[i];
        if (!v)
            return;
        if (kv_slot_tag(v) == t) {
            const char *o = (const char *)slot_obj(v), *k = o + offsetof(struct mobj, key);
            __builtin_prefetch(k - 8);
            __builtin_prefetch(k + (klen > 31 ? klen : 31));
            /* GCC counts a prefetch as no effect at all: without this, a function that only
             * prefetches is "pure", and its calls, whose result nobody uses, are dropped */
            __asm__ volatile("");
            return;
        }
    }
}

void kv_oidx_prefetch(const struct kv_oidx *idx, uint32_t h, bool obj)
{
    const struct kv_oidx_shard *s = &idx->sh[h >> (32 - SHARD_BITS)];
    if (!s->nb)
        return;
    if (obj)
        prefetch_obj(s, h, 0); /* keys up to 31 bytes: the common case */
    else
        __builtin_prefetch(&s->slot[home_h(h, s->nb)]);
}

struct mobj *kv_oidx_get_h(const struct kv_oidx *idx, const char *key, uint32_t h)
{
    return get_h(idx, key, h);
}

void kv_oidx_prefetch_home(const struct kv_oidx *idx, uint32_t h)
{
    const struct kv_oidx_shard *s = &idx->sh[h >> (32 - SHARD_BITS)];
    uint64_t *b = __atomic_load_n(&s->slot, __ATOMIC_RELAXED);
    size_t nb = __atomic_load_n(&s->nb, __ATOMIC_RELAXED);
    /* b and nb may come from two different resizes: the address is only a hint, prefetching
     * never faults, and nothing is read through it */
    if (b && nb)
        __builtin_prefetch(&b[home_h(h, nb)]);
}

int kv_oidx_peek_batch(struct kv_oidx *idx, const char *const *keys, const uint32_t *hs, size_t n,
                       int (*fn)(void *ud, const struct mobj *o), void *ud, int32_t *out)
{
    /* the keys in shard order (a counting sort): each shard's lock is taken once for all its
     * keys, not twice per key (a prefetch and a lookup): 1,024 keys cost ~256 lock pairs */
    uint32_t *ord = kv_malloc((n ? n : 1) * sizeof(*ord));
    if (!ord)
        return KV_ENOMEM;
    size_t at[KV_OIDX_SHARDS + 1] = {0};
    for (size_t i = 0; i < n; i++)
        if (keys[i])
            at[(hs[i] >> (32 - SHARD_BITS)) + 1]++;
    for (size_t i = 1; i <= KV_OIDX_SHARDS; i++)
        at[i] += at[i - 1];
    size_t total = at[KV_OIDX_SHARDS];
    for (size_t i = 0; i < n; i++)
        if (keys[i])
            ord[at[hs[i] >> (32 - SHARD_BITS)]++] = (uint32_t)i;
    /* A pipeline of three stages over ord, in groups of G keys: the home slots of group g + 2
     * (a hint: no lock needed), the objects of group g + 1 (their slots read, so under their
     * shard's lock: the stage takes each shard's lock as it enters the shard), and the lookups
     * of group g, which let a shard's lock go as they leave the shard. So the locks of the
     * shards between the two are held at once, always taken in ascending order (the only place
     * that holds more than one). Each stage is a short loop over its group, not one key's
     * three steps in turn: the CPU then has many independent loads of one stage in its
     * out-of-order window at once. Measured in-process at 10M objects (1,024 random keys):
     * 117-140 us per call against 268-295 us for the loop per key it replaces (stages 16 and 8
     * keys ahead; with 64 and 32, as here, that loop was slower still), the same at 250k
     * objects (54-57 us). */
    enum { G = 32 };
    const uint32_t shard_bits = 32 - SHARD_BITS;
    size_t locked = KV_OIDX_SHARDS; /* the last shard locked by the object stage, none yet */
    for (size_t k = 0; k < total && k < 2 * G; k++)
        kv_oidx_prefetch_home(idx, hs[ord[k]]);
    for (size_t k = 0; k < total && k < G; k++) {
        size_t si = hs[ord[k]] >> shard_bits;
        if (si != locked)
            pthread_mutex_lock(&idx->sh[locked = si].lock);
        prefetch_obj(&idx->sh[si], hs[ord[k]], strlen(keys[ord[k]]));
    }
    for (size_t base = 0; base < total; base += G) {
        for (size_t k = base + 2 * G; k < total && k < base + 3 * G; k++)
            kv_oidx_prefetch_home(idx, hs[ord[k]]);
        for (size_t k = base + G; k < total && k < base + 2 * G; k++) {
            uint32_t h = hs[ord[k]];
            size_t si = h >> shard_bits;
            if (si != locked)
                pthread_mutex_lock(&idx->sh[locked = si].lock);
            prefetch_obj(&idx->sh[si], h, strlen(keys[ord[k]]));
        }
        for (size_t j = base; j < total && j < base + G; j++) {
            size_t i = ord[j], si = hs[i] >> shard_bits;
            out[i] = fn(ud, get_h(idx, keys[i], hs[i]));
            if (j + 1 == total || hs[ord[j + 1]] >> shard_bits != si)
                pthread_mutex_unlock(&idx->sh[si].lock);
        }
    }
    kv_free(ord);
    return KV_OK;
}

/* Gives s a table of nb home slots or more (nb above s->nb), moving every slot over. On
 * allocation failure the table stays as it is. Caller holds s->lock. */
static void resize(struct kv_oidx *idx, struct kv_oidx_shard *s, size_t nb)
{
    for (; nb <= KV_SLOT_MAX; nb = kv_slots_grown(nb)) {
        uint64_t *t = table_new(idx, nb + SPILL);
        if (!t)
            return;
        bool ok = true;
        /* in slot order: each word lands at or after the new home of every word before it
         * with the same home, so runs stay in order */
        for (size_t i = 0; ok && i < (s->nb ? s->nb + SPILL : 0); i++)
            if (s->slot[i])
                ok = kv_slots_place(t, nb + SPILL, home_v(s->slot[i], nb), s->slot[i]);
        if (!ok) { /* a run passed the spill slots: larger again */
            table_free(idx, t, nb + SPILL);
            continue;
        }
        table_free(idx, s->slot, s->nb ? s->nb + SPILL : 0);
        /* atomic stores: kv_oidx_prefetch_home reads them without any lock */
        __atomic_store_n(&s->slot, t, __ATOMIC_RELAXED);
        __atomic_store_n(&s->nb, nb, __ATOMIC_RELAXED);
        return;
    }
}

void kv_oidx_reserve(struct kv_oidx *idx, size_t n)
{
    size_t per = n / KV_OIDX_SHARDS + n / KV_OIDX_SHARDS / 8 + 1; /* + 1/8: shards are uneven */
    size_t nb = kv_slots_for(per);
    for (size_t i = 0; i < KV_OIDX_SHARDS; i++) {
        struct kv_oidx_shard *s = &idx->sh[i];
        if (s->nb >= nb)
            continue;
        /* the new table is allocated under the lock: readers of this shard wait for one
         * shard's move (1/256 of the objects), never for the whole index */
        pthread_mutex_lock(&s->lock);
        resize(idx, s, nb);
        pthread_mutex_unlock(&s->lock);
    }
}

int kv_oidx_put_absent(struct kv_oidx *idx, struct mobj *o, uint32_t h)
{
    if (!kv_slot_addr_ok(o))
        return KV_ERANGE; /* an address above 2^48 or unaligned: no room for the tag */
    uint64_t v = kv_slot_word(o, tag_of(h));
    struct kv_oidx_shard *s = shard_of(idx, h);
    pthread_mutex_lock(&s->lock);
    if (!s->nb || s->n + 1 > s->nb / 5 * 4) /* a load of at most 4/5 */
        resize(idx, s, s->nb ? kv_slots_grown(s->nb) : KV_SLOT_MIN);
    bool ok = s->nb && kv_slots_place(s->slot, s->nb + SPILL, home_h(h, s->nb), v);
    while (!ok && s->nb && s->nb < KV_SLOT_MAX) { /* the run passed the spill slots */
        size_t nb = s->nb;
        resize(idx, s, kv_slots_grown(nb));
        if (s->nb == nb)
            break; /* no memory to grow */
        ok = kv_slots_place(s->slot, s->nb + SPILL, home_h(h, s->nb), v);
    }
    if (ok)
        s->n++;
    pthread_mutex_unlock(&s->lock);
    if (!ok)
        return KV_ENOMEM;
    idx->n++;
    return KV_OK;
}

/* Empties slot i, moving later words of its run back so that none is cut off from its home
 * (backward-shift deletion: no tombstones). Caller holds s->lock. */
static void erase_at(struct kv_oidx_shard *s, size_t i)
{
    for (size_t j = i + 1, end = s->nb + SPILL; j < end && s->slot[j]; j++) {
        if (home_v(s->slot[j], s->nb) <= i) {
            s->slot[i] = s->slot[j];
            i = j;
        }
    }
    s->slot[i] = 0;
}

/* Removes o (g NULL) or puts g in its slot, under the shard's lock. False when o is not in the
 * index. */
static bool unlink_obj(struct kv_oidx *idx, struct mobj *o, struct mobj *g)
{
    uint32_t h = kv_oidx_hash(o->key);
    struct kv_oidx_shard *s = shard_of(idx, h);
    bool found = false;
    pthread_mutex_lock(&s->lock);
    for (size_t i = s->nb ? home_h(h, s->nb) : 0, end = s->nb ? s->nb + SPILL : 0;
         i < end && s->slot[i]; i++) {
        if (slot_obj(s->slot[i]) == o) {
            if (g) {
                s->slot[i] = kv_slot_word(g, tag_of(h));
            } else {
                erase_at(s, i);
                s->n--;
            }
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}

void kv_oidx_del(struct kv_oidx *idx, struct mobj *o)
{
    if (unlink_obj(idx, o, NULL))
        idx->n--;
}

void kv_oidx_replace(struct kv_oidx *idx, struct mobj *o, struct mobj *g)
{
    unlink_obj(idx, o, g);
}

uint64_t kv_oidx_each_range(struct kv_oidx *idx, uint64_t from, size_t nslots,
                            int (*fn)(void *ud, struct mobj *o), void *ud)
{
    size_t si = (size_t)(from >> 32), bi = (size_t)(from & 0xffffffffu);
    while (si < KV_OIDX_SHARDS && nslots > 0) {
        struct kv_oidx_shard *s = &idx->sh[si];
        pthread_mutex_lock(&s->lock); /* fn runs under it: it must not call into the index */
        size_t end = s->nb ? s->nb + SPILL : 0;
        while (bi < end && nslots > 0) {
            nslots--;
            uint64_t v = s->slot[bi];
            if (v && fn(ud, slot_obj(v))) {
                /* a later word may move into bi: it was not visited yet, look again */
                erase_at(s, bi);
                s->n--;
                idx->n--;
            } else {
                bi++;
            }
        }
        bool more = bi < end;
        pthread_mutex_unlock(&s->lock);
        if (more)
            return ((uint64_t)si << 32) | bi;
        si++;
        bi = 0;
    }
    return si < KV_OIDX_SHARDS ? (uint64_t)si << 32 : 0;
}

void kv_oidx_each(struct kv_oidx *idx, int (*fn)(void *ud, struct mobj *o), void *ud)
{
    uint64_t c = 0;
    do
        c = kv_oidx_each_range(idx, c, SIZE_MAX, fn, ud);
    while (c);
}
