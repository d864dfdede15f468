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
 * Thread-safety: none; the master's lock guards it (master_int.h).
 */
#include <string.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "store/master_int.h"

#define SHARD_BITS 8
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
}

void kv_oidx_fini(struct kv_oidx *idx)
{
    for (size_t i = 0; i < KV_OIDX_SHARDS; i++)
        kv_free(idx->sh[i].b);
    memset(idx, 0, sizeof(*idx));
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

/* Gives s nb buckets (a power of two above s->nb). On allocation failure the table stays as it
 * is (only longer chains). */
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
    s->b = b;
    s->nb = nb;
}

void kv_oidx_reserve(struct kv_oidx *idx, size_t n)
{
    size_t per = n / KV_OIDX_SHARDS + n / KV_OIDX_SHARDS / 8 + 1; /* + 1/8: shards are uneven */
    size_t nb = MIN_BUCKETS;
    while (nb * 2 < per)
        nb *= 2;
    for (size_t i = 0; i < KV_OIDX_SHARDS; i++)
        if (idx->sh[i].nb < nb)
            resize(&idx->sh[i], nb);
}

int kv_oidx_put(struct kv_oidx *idx, struct mobj *o)
{
    uint32_t h = kv_oidx_hash(o->key);
    if (get_h(idx, o->key, h))
        return KV_EEXIST;
    return kv_oidx_put_absent(idx, o, h);
}

int kv_oidx_put_absent(struct kv_oidx *idx, struct mobj *o, uint32_t h)
{
    struct kv_oidx_shard *s = shard_of(idx, h);
    if (s->n >= s->nb * 2 || !s->nb) /* at most two objects per bucket on average */
        resize(s, s->nb ? s->nb * 2 : MIN_BUCKETS);
    if (!s->nb)
        return KV_ENOMEM;
    struct mobj **head = &s->b[h & (s->nb - 1)];
    o->hnext = *head;
    *head = o;
    s->n++;
    idx->n++;
    return KV_OK;
}

void kv_oidx_del(struct kv_oidx *idx, struct mobj *o)
{
    uint32_t h = kv_oidx_hash(o->key);
    struct kv_oidx_shard *s = shard_of(idx, h);
    if (!s->nb)
        return;
    for (struct mobj **pp = &s->b[h & (s->nb - 1)]; *pp; pp = &(*pp)->hnext) {
        if (*pp == o) {
            *pp = o->hnext;
            o->hnext = NULL;
            s->n--;
            idx->n--;
            return;
        }
    }
}

uint64_t kv_oidx_each_range(struct kv_oidx *idx, uint64_t from, size_t nbuckets,
                            int (*fn)(void *ud, struct mobj *o), void *ud)
{
    size_t si = (size_t)(from >> 32), bi = (size_t)(from & 0xffffffffu);
    while (si < KV_OIDX_SHARDS && nbuckets > 0) {
        struct kv_oidx_shard *s = &idx->sh[si];
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
        if (bi < s->nb)
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
