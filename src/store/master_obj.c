/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_obj.c - the master's objects and nodes: allocation, the LRU and PENDING lists,
 * unlinking, deferred frees of replica ranges, node removal.
 *
 * Design: an object is one allocation (struct mobj, its key, its replicas: master_int.h). A dead
 * object leaves the index at once but is freed only when the last operation holding it returns
 * (refs); its replicas' ranges then go to the deferred-free queue, released when their readers'
 * leases ended and, for ranges the node knew, after NODE_FREE (invariant 2 in master.c).
 * All functions here run with m->lock held, except mst_process_dfree (takes it, drops it around
 * each NODE_FREE batch). Design, states and invariants of the master: master.c.
 */
#define KV_LOG_COMPONENT "master"
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/kvstash.h"
#include "kvstash/store.h"
#include "store/master_int.h"

void mst_node_unref(struct mnode *n)
{
    if (--n->refs > 0)
        return;
    kv_rpc_client_destroy(n->rpc);
    kv_segalloc_destroy(n->alloc);
    kv_free(n->id);
    kv_free(n->segment);
    kv_free(n->host_id);
    kv_free(n->rpc_addr);
    kv_free(n);
}

struct mnode *mst_node_find(struct kv_master *m, const char *id)
{
    for (struct mnode *n = m->nodes; n; n = n->next)
        if (strcmp(n->id, id) == 0)
            return n;
    return NULL;
}

static void defer_free2(struct kv_master *m, struct mnode *n, const char *key, kv_segblk blk,
                        uint64_t size, bool dram, bool ssd, bool rpc, bool keep_space,
                        int64_t created, int64_t not_before)
{
    if (n->removed)
        return; /* the node's allocator is gone with it */
    struct dfree *d = kv_calloc(1, sizeof(*d));
    char *k = kv_strdup(key);
    if (!d || !k) {
        /* out of memory: give the DRAM range back now rather than leak it */
        kv_free(d);
        kv_free(k);
        if (dram && size)
            kv_segalloc_free(n->alloc, blk);
        KV_LOGW_RL(5000, "out of memory queueing a deferred free: freed at once");
        return;
    }
    d->node = n;
    n->refs++;
    d->key = k;
    d->blk = dram ? blk : 0;
    d->off = d->blk ? kv_segalloc_offset(n->alloc, blk) : 0;
    d->size = size;
    d->dram = dram;
    d->ssd = ssd;
    d->rpc = rpc;
    d->keep_space = keep_space;
    d->created = created;
    d->not_before = not_before;
    if (dram && size && !keep_space)
        n->pending_free += size;
    d->next = m->dfree;
    m->dfree = d;
}

void mst_defer_free(struct kv_master *m, struct mnode *n, const char *key, kv_segblk blk,
                    uint64_t size, bool dram, bool ssd, bool rpc, int64_t created,
                    int64_t not_before)
{
    defer_free2(m, n, key, blk, size, dram, ssd, rpc, false, created, not_before);
}

/* The bytes of an object with a key of klen bytes and room for cap replicas: the record, the
 * key, the replicas (obj_rep). */
static size_t obj_bytes(size_t klen, int cap)
{
    size_t at = (offsetof(struct mobj, key) + klen + 1 + 7) & ~(size_t)7;
    return at + (size_t)cap * sizeof(struct mrep);
}

/* A zeroed object for key with room for cap replicas (one record from sl: mobj, key, replicas). */
struct mobj *mst_obj_new(struct kv_slab *sl, const char *key, int cap)
{
    size_t klen = strlen(key);
    struct mobj *o = kv_slab_alloc(sl, obj_bytes(klen, cap));
    if (!o)
        return NULL;
    memcpy(o->key, key, klen + 1);
    o->klen = (uint16_t)klen;
    o->cap = (uint8_t)cap;
    return o;
}

void mst_obj_free(struct kv_slab *sl, struct mobj *o)
{
    if (o)
        kv_slab_free(sl, o, obj_bytes(o->klen, o->cap));
}

/* Queues every replica's space of o for release and frees o. o is dead with refs == 0.
 * A DRAM replica still read under a lease is released in two steps: the node forgets the key
 * at once (NODE_FREE now, so a master elected after a crash is never told about an object that
 * was removed), and the range returns to the allocator when the lease has ended (the readers'
 * bytes stay untouched until then: nodes never touch DRAM bytes on NODE_FREE). */
static void obj_release(struct kv_master *m, struct mobj *o)
{
    int64_t nb = o->lease_until, now = kv_now_ms();
    for (int i = 0; i < o->nrep; i++) {
        struct mrep *r = &obj_rep(o)[i];
        if (!(r->dram || r->ssd || r->promoting))
            continue;
        bool dram = r->dram || r->promoting;
        if (dram && !r->ssd && nb > now) {
            defer_free2(m, r->node, o->key, r->blk, rounded(o->size), true, false, true, true,
                        o->created_wall, 0);
            defer_free2(m, r->node, o->key, r->blk, rounded(o->size), true, false, false, false,
                        o->created_wall, nb);
        } else {
            mst_defer_free(m, r->node, o->key, r->blk, rounded(o->size), dram, r->ssd, true,
                           o->created_wall, nb);
        }
    }
    mst_obj_free(&m->slab, o);
}

/* Marks o dead and unlinks it (the caller already removed it from the index map when
 * in_map is false). */
void mst_obj_unlink2(struct kv_master *m, struct mobj *o, bool in_map)
{
    if (o->state == OBJ_PENDING && !o->dead)
        m->npending--;
    if (in_map)
        kv_oidx_del(&m->index, o);
    lru_remove(o);
    o->dead = true;
    if (o->refs == 0)
        obj_release(m, o);
}

void mst_obj_unlink(struct kv_master *m, struct mobj *o)
{
    mst_obj_unlink2(m, o, true);
}

void mst_obj_abandon(struct kv_master *m, struct mobj *o)
{
    kv_oidx_del(&m->index, o);
    lru_remove(o);
    m->npending--;
    for (int i = 0; i < o->nrep; i++)
        kv_segalloc_free(obj_rep(o)[i].node->alloc, obj_rep(o)[i].blk);
    mst_obj_free(&m->slab, o);
}

void mst_obj_put_done(struct kv_master *m, struct mobj *o)
{
    if (--o->refs == 0 && o->dead)
        obj_release(m, o);
}

struct drop_ctx {
    struct kv_master *m;
    struct mnode *n;
};

static int drop_node_reps(void *ud, struct mobj *o)
{
    struct drop_ctx *c = ud;
    int i = rep_find(o, c->n);
    if (i < 0)
        return 0;
    rep_drop(o, i);
    if (o->nrep == 0 && !o->refs) {
        mst_obj_unlink2(c->m, o, false);
        return 1;
    }
    return 0;
}

void mst_node_remove(struct kv_master *m, struct mnode *n, const char *why)
{
    for (struct mnode **pp = &m->nodes; *pp; pp = &(*pp)->next) {
        if (*pp == n) {
            *pp = n->next;
            m->nnodes--;
            break;
        }
    }
    n->removed = true;
    struct drop_ctx c = {m, n};
    kv_oidx_each(&m->index, drop_node_reps, &c);
    for (struct dfree **pp = &m->dfree; *pp;) {
        struct dfree *d = *pp;
        if (d->node == n) {
            *pp = d->next;
            kv_free(d->key);
            mst_node_unref(d->node);
            kv_free(d);
        } else {
            pp = &d->next;
        }
    }
    KV_LOGI("node %s removed: %s", n->id, why);
    mst_node_unref(n);
}

static int drop_all(void *ud, struct mobj *o)
{
    struct kv_master *m = ud;
    lru_remove(o);
    o->dead = true;
    o->nrep = 0;
    if (o->refs == 0)
        mst_obj_free(&m->slab, o);
    return 1;
}

void kv_master_reset(struct kv_master *m)
{
    pthread_mutex_lock(&m->lock);
    while (m->nodes)
        mst_node_remove(m, m->nodes, "this master is no longer the leader");
    kv_oidx_each(&m->index, drop_all, m);
    m->npending = 0;
    pthread_mutex_unlock(&m->lock);
}

/* o with room for one more replica: o itself, or a copy that replaces it in the index and its
 * list (only while no operation holds o: refs == 0). NULL when neither is possible. */
struct mobj *mst_obj_grow(struct kv_master *m, struct mobj *o)
{
    if (o->nrep < o->cap)
        return o;
    if (o->refs || o->cap >= KV_STORE_MAX_REPLICAS)
        return NULL;
    struct mobj *g = mst_obj_new(&m->slab, o->key, o->cap + 1);
    if (!g)
        return NULL;
    size_t head = offsetof(struct mobj, key); /* fields; the key is already in g */
    memcpy(g, o, head);
    g->cap = (uint8_t)(o->cap + 1);
    memcpy(obj_rep(g), obj_rep(o), o->nrep * sizeof(struct mrep));
    kv_oidx_replace(&m->index, o, g); /* a lookup meanwhile finds o or g, never neither */
    if (o->lru_prev) {                /* take o's mst_place in its list */
        g->lru_prev->lru_next = g;
        g->lru_next->lru_prev = g;
    }
    mst_obj_free(&m->slab, o);
    return g;
}

void mst_process_dfree(struct kv_master *m)
{
    pthread_mutex_lock(&m->lock);
    for (int round = 0; round < 64; round++) {
        int64_t now = kv_now_ms();
        struct mnode *target = NULL;
        struct dfree *batch = NULL;
        size_t nb = 0;
        for (struct dfree **pp = &m->dfree; *pp;) {
            struct dfree *d = *pp;
            if (d->not_before > now) {
                pp = &d->next;
                continue;
            }
            if (!d->rpc) {
                *pp = d->next;
                if (d->dram && d->size && !d->keep_space && !d->node->removed) {
                    kv_segalloc_free(d->node->alloc, d->blk);
                    d->node->pending_free -= d->size;
                }
                mst_node_unref(d->node);
                kv_free(d->key);
                kv_free(d);
                continue;
            }
            if (!target)
                target = d->node;
            if (d->node != target || nb >= 4096) {
                pp = &d->next;
                continue;
            }
            *pp = d->next;
            d->next = batch;
            batch = d;
            nb++;
        }
        if (!batch)
            break;
        Kvstash__NodeObject *objs = kv_calloc(nb * 2, sizeof(*objs));
        Kvstash__NodeObject **pobjs = kv_calloc(nb * 2, sizeof(*pobjs));
        size_t no = 0;
        int rc = KV_ENOMEM;
        if (objs && pobjs) {
            for (struct dfree *d = batch; d; d = d->next) {
                if (d->dram) {
                    kvstash__node_object__init(&objs[no]);
                    objs[no].key = d->key;
                    objs[no].tier = KVSTASH__TIER__TIER_DRAM;
                    objs[no].offset = d->off;
                    objs[no].created_ms = d->created;
                    pobjs[no] = &objs[no];
                    no++;
                }
                if (d->ssd) {
                    kvstash__node_object__init(&objs[no]);
                    objs[no].key = d->key;
                    objs[no].tier = KVSTASH__TIER__TIER_SSD;
                    objs[no].created_ms = d->created;
                    pobjs[no] = &objs[no];
                    no++;
                }
            }
            Kvstash__ObjectsReq req = KVSTASH__OBJECTS_REQ__INIT;
            req.epoch = m->epoch;
            req.n_objects = no;
            req.objects = pobjs;
            target->refs++;
            pthread_mutex_unlock(&m->lock);
            rc = no ? mst_call_node(target, KV_RPC_NODE_FREE, &req.base,
                                    &kvstash__status_list__descriptor, NULL)
                    : KV_OK;
            pthread_mutex_lock(&m->lock);
            mst_node_unref(target);
        }
        kv_free(objs);
        kv_free(pobjs);
        while (batch) {
            struct dfree *d = batch;
            batch = d->next;
            if (rc == KV_OK || d->node->removed) {
                if (d->dram && d->size && !d->keep_space && !d->node->removed) {
                    kv_segalloc_free(d->node->alloc, d->blk);
                    d->node->pending_free -= d->size;
                }
                mst_node_unref(d->node);
                kv_free(d->key);
                kv_free(d);
            } else { /* retry later */
                d->not_before = kv_now_ms() + 1000;
                d->next = m->dfree;
                m->dfree = d;
            }
        }
    }
    pthread_mutex_unlock(&m->lock);
}
