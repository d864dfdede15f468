/* SPDX-License-Identifier: Apache-2.0 */
/* idtab.c - generation-checked id table (see idtab.h). Guarded by its owner. */
#include "common/idtab.h"

#include "common/alloc.h"

void kv_idtab_init(struct kv_idtab *t)
{
    t->slots = NULL;
    t->n = t->cap = t->free_head = t->live = 0;
}

void kv_idtab_fini(struct kv_idtab *t)
{
    kv_free(t->slots);
    kv_idtab_init(t);
}

static uint64_t make_id(uint32_t idx, uint32_t gen)
{
    return ((uint64_t)gen << 32) | idx;
}

int kv_idtab_add(struct kv_idtab *t, void *obj, uint64_t *id)
{
    uint32_t idx;
    if (t->free_head) {
        idx = t->free_head - 1;
        t->free_head = t->slots[idx].next_free;
    } else {
        if (t->n == t->cap) {
            if (t->cap >= (1u << 31))
                return KV_ENOSPC;
            uint32_t cap = t->cap ? t->cap * 2 : 16;
            struct kv_idtab_slot *s = kv_realloc(t->slots, (size_t)cap * sizeof(*s));
            if (!s)
                return KV_ENOMEM;
            t->slots = s;
            t->cap = cap;
        }
        idx = t->n++;
        t->slots[idx].gen = 0;
    }
    struct kv_idtab_slot *s = &t->slots[idx];
    s->gen++;
    if (s->gen == 0)
        s->gen = 1;
    s->obj = obj;
    s->next_free = 0;
    t->live++;
    *id = make_id(idx, s->gen);
    return KV_OK;
}

void *kv_idtab_get(const struct kv_idtab *t, uint64_t id)
{
    uint32_t idx = (uint32_t)id, gen = (uint32_t)(id >> 32);
    if (idx >= t->n || gen == 0)
        return NULL;
    const struct kv_idtab_slot *s = &t->slots[idx];
    return (s->gen == gen) ? s->obj : NULL;
}

void *kv_idtab_remove(struct kv_idtab *t, uint64_t id)
{
    void *obj = kv_idtab_get(t, id);
    if (!obj)
        return NULL;
    uint32_t idx = (uint32_t)id;
    struct kv_idtab_slot *s = &t->slots[idx];
    s->obj = NULL;
    s->gen++; /* ids of the removed object never match again */
    if (s->gen == 0)
        s->gen = 1;
    s->next_free = t->free_head;
    t->free_head = idx + 1;
    t->live--;
    return obj;
}

void *kv_idtab_at(const struct kv_idtab *t, uint32_t i, uint64_t *id)
{
    if (i >= t->n || !t->slots[i].obj)
        return NULL;
    if (id)
        *id = make_id(i, t->slots[i].gen);
    return t->slots[i].obj;
}
