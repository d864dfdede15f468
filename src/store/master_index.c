/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_index.c - the master's object index: key -> struct mobj, intrusive (the chain link and
 * the key live in the object itself: no entry allocation, no second copy of the key, and the
 * key's hash is computed again where needed rather than stored: 4 bytes per object)
 * and split in KV_OIDX_SHARDS shards by the hash's top bits, each a chained table that doubles on
 * its own. So the index costs one pointer per object plus 4-8 bytes of buckets, and a resize
 * moves 1/256 of the objects (milliseconds at 10M objects, not a second under the lock).
 *
 * Invariants:
 *  1. An object is in at most one chain, the one of bucket (hash & (nb - 1)) of shard
 *     (hash >> 24), hash = kv_oidx_hash(o->key) (the low 32 bits of kv_hash64).
 *  2. idx->n is the sum of the shards' n.
 *  3. An each callback that returns non-zero has the object unlinked after it returned, without
 *     being touched again (the callback may have freed it).
 * Thread-safety: writers hold the master's lock (master_int.h), so they never run at the same
 * time; each shard has a lock of its own besides, taken by every change of its chains (put, del,
 * replace, resize, each_range) and by kv_oidx_peek_batch. So a lookup that holds only the shard's
 * lock (exists, batch_exists) never waits on the master's lock: at most on one change of its shard.
 * Writers look up under the master's lock alone (no writer changes a chain meanwhile).
 */
#include <pthread.h>
#include <string.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "store/master_int.h"

#define SHARD_BITS 8
/* Objects per bucket before a shard doubles. A lookup reads every object ahead of its key in
 * the chain, each one or two DRAM misses that no prefetch covers (only the chain's first
 * object is prefetched): at 1 the chains are half as long as at 2, for 4-8 bytes more of
 * bucket array per object. */
#define MAX_LOAD 1
#define MIN_BUCKETS 16

static struct kv_oidx_shard *shard_of(struct kv_oidx *idx, uint32_t h)
{
    return &idx->sh[h >> (32 - SHARD_BITS)];
}

uint32_t kv_oidx_hash(const char *key)
{
    return (uint32_t)kv_hash64(key, strlen(key));
}

void kv_oidx_init(struct kv_oidx *idx)
{
    memset(idx, 0, sizeof(*idx));
    for (size_t i = 0; i < KV_OIDX_SHARDS; i++)
        pthread_mutex_init(&idx->sh[i].lock, NULL);
}

void kv_oidx_fini(struct kv_oidx *idx)
{
    for (size_t i = 0; i < KV_OIDX_SHARDS; i++) {
        kv_free(idx->sh[i].b);
        idx->sh[i].b = NULL;
        idx->sh[i].nb = idx->sh[i].n = 0;
        pthread_mutex_destroy(&idx->sh[i].lock);
    }
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
    for (struct mobj *o = s->b[h & (s->nb - 1)]; o; o = o->hnext)
        if (strcmp(o->key, key) == 0)
            return o;
    return NULL;
}

struct mobj *kv_oidx_get(const struct kv_oidx *idx, const char *key)
{
    return get_h(idx, key, kv_oidx_hash(key));
}

void kv_oidx_prefetch(const struct kv_oidx *idx, uint32_t h, bool chain)
{
    const struct kv_oidx_shard *s = &idx->sh[h >> (32 - SHARD_BITS)];
    if (!s->nb)
        return;
    struct mobj *const *slot = &s->b[h & (s->nb - 1)];
    if (!chain) {
        __builtin_prefetch(slot);
    } else if (*slot) {
        __builtin_prefetch(*slot);
        __builtin_prefetch((const char *)*slot + 64); /* the key starts near the line's end */
    }
}

struct mobj *kv_oidx_get_h(const struct kv_oidx *idx, const char *key, uint32_t h)
{
    return get_h(idx, key, h);
}

void kv_oidx_prefetch_bucket(const struct kv_oidx *idx, uint32_t h)
{
    const struct kv_oidx_shard *s = &idx->sh[h >> (32 - SHARD_BITS)];
    struct mobj **b = __atomic_load_n(&s->b, __ATOMIC_RELAXED);
    size_t nb = __atomic_load_n(&s->nb, __ATOMIC_RELAXED);
    /* b and nb may come from two different resizes: the address is only a hint, prefetching
     * never faults, and nothing is read through it */
    if (b && nb)
        __builtin_prefetch(&b[h & (nb - 1)]);
}

/* Takes shard si's lock and asks the CPU for the first object of the chains of the keys
 * ord[from..to) (all of that shard). */
static void lock_and_prefetch(struct kv_oidx *idx, size_t si, const uint32_t *ord, size_t from,
                              size_t to, const uint32_t *hs)
{
    struct kv_oidx_shard *s = &idx->sh[si];
    pthread_mutex_lock(&s->lock);
    for (size_t k = from; k < to && s->nb; k++) {
        const struct mobj *o = s->b[hs[ord[k]] & (s->nb - 1)];
        if (o) {
            __builtin_prefetch(o);
            __builtin_prefetch((const char *)o + 64); /* the key starts near the line's end */
        }
    }
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
    /* at[s] is now the end of shard s's keys in ord. Two stages of prefetch: the buckets of the
     * keys FAR places ahead (a hint: no lock needed), and the first objects of the next
     * shard's chains, asked for right after taking that shard's lock and before this shard's
     * keys are looked up. So two neighbouring shards' locks are held at once, always taken in
     * ascending order (the only place that holds two). */
    enum { FAR = 16 };
    for (size_t j = 0; j < total && j < FAR; j++)
        kv_oidx_prefetch_bucket(idx, hs[ord[j]]);
    size_t j = 0, si = 0;
    while (si < KV_OIDX_SHARDS && at[si] == 0)
        si++;
    if (si < KV_OIDX_SHARDS)
        lock_and_prefetch(idx, si, ord, 0, at[si], hs);
    while (si < KV_OIDX_SHARDS && j < total) {
        size_t next = si + 1;
        while (next < KV_OIDX_SHARDS && at[next] == at[si])
            next++;
        if (next < KV_OIDX_SHARDS)
            lock_and_prefetch(idx, next, ord, at[si], at[next], hs);
        for (; j < at[si]; j++) {
            if (j + FAR < total)
                kv_oidx_prefetch_bucket(idx, hs[ord[j + FAR]]);
            size_t i = ord[j];
            out[i] = fn(ud, get_h(idx, keys[i], hs[i]));
        }
        pthread_mutex_unlock(&idx->sh[si].lock);
        si = next;
    }
    kv_free(ord);
    return KV_OK;
}

/* Gives s nb buckets (a power of two above s->nb). On allocation failure the table stays as it
 * is (only longer chains). Caller holds s->lock. */
static void resize(struct kv_oidx_shard *s, size_t nb)
{
    struct mobj **b = kv_calloc(nb, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < s->nb; i++) {
        for (struct mobj *o = s->b[i], *next; o; o = next) {
            next = o->hnext;
            struct mobj **head = &b[kv_oidx_hash(o->key) & (nb - 1)];
            o->hnext = *head;
            *head = o;
        }
    }
    kv_free(s->b);
    /* atomic stores: kv_oidx_prefetch_bucket reads both without any lock */
    __atomic_store_n(&s->b, b, __ATOMIC_RELAXED);
    __atomic_store_n(&s->nb, nb, __ATOMIC_RELAXED);
}

void kv_oidx_reserve(struct kv_oidx *idx, size_t n)
{
    size_t per = n / KV_OIDX_SHARDS + n / KV_OIDX_SHARDS / 8 + 1; /* + 1/8: shards are uneven */
    size_t nb = MIN_BUCKETS;
    while (nb * MAX_LOAD < per)
        nb *= 2;
    for (size_t i = 0; i < KV_OIDX_SHARDS; i++) {
        struct kv_oidx_shard *s = &idx->sh[i];
        if (s->nb >= nb)
            continue;
        /* the new buckets are allocated under the lock: readers of this shard wait for one
         * shard's rehash (1/256 of the objects), never for the whole index */
        pthread_mutex_lock(&s->lock);
        resize(s, nb);
        pthread_mutex_unlock(&s->lock);
    }
}

int kv_oidx_put_absent(struct kv_oidx *idx, struct mobj *o, uint32_t h)
{
    struct kv_oidx_shard *s = shard_of(idx, h);
    pthread_mutex_lock(&s->lock);
    if (s->n >= s->nb * MAX_LOAD || !s->nb) /* at most MAX_LOAD objects per bucket on average */
        resize(s, s->nb ? s->nb * 2 : MIN_BUCKETS);
    if (!s->nb) {
        pthread_mutex_unlock(&s->lock);
        return KV_ENOMEM;
    }
    struct mobj **head = &s->b[h & (s->nb - 1)];
    o->hnext = *head;
    *head = o;
    s->n++;
    pthread_mutex_unlock(&s->lock);
    idx->n++;
    return KV_OK;
}

/* Unlinks o from its chain and links g (NULL: nothing) in its place, under the shard's lock.
 * False when o is not in the index. */
static bool unlink_obj(struct kv_oidx *idx, struct mobj *o, struct mobj *g)
{
    uint32_t h = kv_oidx_hash(o->key);
    struct kv_oidx_shard *s = shard_of(idx, h);
    if (!s->nb)
        return false;
    bool found = false;
    pthread_mutex_lock(&s->lock);
    for (struct mobj **pp = &s->b[h & (s->nb - 1)]; *pp; pp = &(*pp)->hnext) {
        if (*pp == o) {
            if (g) {
                g->hnext = o->hnext;
                *pp = g;
            } else {
                *pp = o->hnext;
                s->n--;
            }
            o->hnext = NULL;
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

uint64_t kv_oidx_each_range(struct kv_oidx *idx, uint64_t from, size_t nbuckets,
                            int (*fn)(void *ud, struct mobj *o), void *ud)
{
    size_t si = (size_t)(from >> 32), bi = (size_t)(from & 0xffffffffu);
    while (si < KV_OIDX_SHARDS && nbuckets > 0) {
        struct kv_oidx_shard *s = &idx->sh[si];
        pthread_mutex_lock(&s->lock); /* fn runs under it: it must not call into the index */
        for (; bi < s->nb && nbuckets > 0; bi++, nbuckets--) {
            struct mobj **pp = &s->b[bi];
            while (*pp) {
                struct mobj *o = *pp, *next = o->hnext; /* fn may free o */
                if (fn(ud, o)) {
                    *pp = next;
                    s->n--;
                    idx->n--;
                } else {
                    pp = &o->hnext;
                }
            }
        }
        bool more = bi < s->nb;
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
