/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_place.c - placement and eviction: choosing nodes for new objects, eviction and
 * demotion passes between the watermarks, room for puts that found none, promotion from SSD.
 *
 * Design: placement picks distinct nodes at random weighted by free DRAM. Eviction walks the LRU
 * from its cold end, at most EVICT_SCAN_MAX entries per step under the lock, unpinned objects
 * first; a node with an SSD tier demotes (NODE_DEMOTE, without the lock) instead of dropping.
 * Passes run on the maintenance thread: periodically above the high watermark, down to the low
 * one, and when puts found no room (mst_place_items asks, waits up to EVICT_WAIT_MS, retries
 * once). m->evict_lock serialises passes. Design, states and invariants of the master: master.c.
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

#define EVICT_WAIT_MS 3000 /* a put waits this long for the eviction it asked for */

#define EVICT_SCAN_MAX 16384 /* LRU entries one eviction step looks at under the lock */

static uint64_t rnd(struct kv_master *m)
{
    m->rng ^= m->rng << 13;
    m->rng ^= m->rng >> 7;
    m->rng ^= m->rng << 17;
    return m->rng;
}

/* Chooses up to want distinct nodes weighted by free DRAM and allocates size on each. Returns
 * the number placed (reps filled). */
int mst_place(struct kv_master *m, uint64_t size, int want, struct mrep *reps)
{
    struct mnode *cand_small[64], **cand = cand_small;
    uint64_t w_small[64], *w = w_small;
    if (m->nnodes > 64) {
        cand = kv_malloc((size_t)m->nnodes * sizeof(*cand));
        w = kv_malloc((size_t)m->nnodes * sizeof(*w));
        if (!cand || !w) {
            kv_free(cand);
            kv_free(w);
            return 0;
        }
    }
    int nc = 0;
    int64_t now = kv_now_ms();
    for (struct mnode *n = m->nodes; n && nc < KV_MAX(m->nnodes, 64); n = n->next) {
        if (n->mounting)
            continue; /* its objects are not all known yet: their ranges are not reserved */
        if (n->fence_until > now)
            continue; /* an older leader's writes may still land in its free ranges */
        uint64_t cap = kv_segalloc_capacity(n->alloc), used = node_used(n);
        cand[nc] = n;
        w[nc] = (cap > used ? cap - used : 0) / 4096 + 1;
        nc++;
    }
    int got = 0;
    while (got < want && nc > 0) {
        uint64_t total = 0;
        for (int i = 0; i < nc; i++)
            total += w[i];
        uint64_t r = rnd(m) % total;
        int pick = 0;
        while (r >= w[pick]) {
            r -= w[pick];
            pick++;
        }
        uint64_t off;
        kv_segblk blk;
        if (kv_segalloc_alloc(cand[pick]->alloc, size ? size : 1, &off, &blk) == KV_OK) {
            memset(&reps[got], 0, sizeof(reps[got]));
            reps[got].node = cand[pick];
            reps[got].blk = blk;
            reps[got].dram = true; /* the range is ours; the object is visible once COMPLETE */
            got++;
        }
        cand[pick] = cand[nc - 1];
        w[pick] = w[nc - 1];
        nc--;
    }
    if (cand != cand_small) {
        kv_free(cand);
        kv_free(w);
    }
    return got;
}

struct victim {
    struct mobj *o;
};

/* One eviction pass over every node (force: the node that must make need bytes of room). */
void mst_evict_pass(struct kv_master *m, struct mnode *force, uint64_t need)
{
    pthread_mutex_lock(&m->evict_lock);
    pthread_mutex_lock(&m->lock);
    int nn = m->nnodes, k = 0;
    struct mnode **ns = kv_calloc((size_t)(nn ? nn : 1), sizeof(*ns));
    if (!ns) {
        pthread_mutex_unlock(&m->lock);
        pthread_mutex_unlock(&m->evict_lock);
        return;
    }
    for (struct mnode *n = m->nodes; n && k < nn; n = n->next) {
        n->refs++;
        ns[k++] = n;
    }
    for (int ni = 0; ni < k; ni++) {
        struct mnode *n = ns[ni];
        if (n->removed || n->mounting)
            continue; /* a node still mounting is not placed on, so it needs no room */
        uint64_t cap = kv_segalloc_capacity(n->alloc), used = node_used(n);
        uint64_t low = (uint64_t)((double)cap * m->low_wm);
        uint64_t want = 0;
        if (used > (uint64_t)((double)cap * m->high_wm))
            want = used - low;
        int64_t now = kv_now_ms();
        if (n == force && need > want) {
            /* a forced pass only when evicting can make the room: never drop (pinned) data
             * for a request that would not fit anyway */
            uint64_t avail = cap - kv_segalloc_used(n->alloc);
            size_t seen = 0;
            for (struct mobj *o = m->lru.lru_prev;
                 o != &m->lru && avail < need && seen < EVICT_SCAN_MAX; o = o->lru_prev, seen++) {
                int ri = rep_find(o, n);
                if (ri >= 0 && obj_rep(o)[ri].dram && !obj_rep(o)[ri].demoting && !o->refs &&
                    o->lease_until <= now)
                    avail += rounded(o->size);
            }
            if (avail >= need)
                want = need;
        }
        if (!want)
            continue;
        size_t nv = 0, cv = 64;
        struct victim *v = kv_malloc(cv * sizeof(*v));
        uint64_t got = 0;
        for (int pass = 0; pass < 2 && got < want && v; pass++) {
            /* from the least recently used end, at most EVICT_SCAN_MAX entries under the lock:
             * a node whose objects sit elsewhere in the list is served by the next pass */
            size_t seen = 0;
            for (struct mobj *o = m->lru.lru_prev;
                 o != &m->lru && got < want && seen < EVICT_SCAN_MAX; o = o->lru_prev, seen++) {
                if (o->pin != (pass == 1) || o->lease_until > now || o->refs)
                    continue;
                int ri = rep_find(o, n);
                if (ri < 0 || !obj_rep(o)[ri].dram || obj_rep(o)[ri].demoting)
                    continue;
                if (nv == cv) {
                    struct victim *nvv = kv_realloc(v, cv * 2 * sizeof(*v));
                    if (!nvv)
                        break;
                    v = nvv;
                    cv *= 2;
                }
                obj_rep(o)[ri].demoting = true;
                o->refs++;
                v[nv++].o = o;
                got += rounded(o->size);
            }
        }
        if (!v || nv == 0) {
            kv_free(v);
            continue;
        }
        bool demote = n->ssd_capacity > 0;
        Kvstash__DemoteResp *dr = NULL;
        int rc = KV_EIO;
        if (demote) {
            Kvstash__NodeObject *objs = kv_calloc(nv, sizeof(*objs));
            Kvstash__NodeObject **pobjs = kv_calloc(nv, sizeof(*pobjs));
            if (objs && pobjs) {
                for (size_t i = 0; i < nv; i++) {
                    struct mobj *o = v[i].o;
                    kvstash__node_object__init(&objs[i]);
                    objs[i].key = o->key;
                    objs[i].size = o->size;
                    objs[i].checksum = o->checksum;
                    objs[i].tier = KVSTASH__TIER__TIER_DRAM;
                    objs[i].offset = rep_off(&obj_rep(o)[rep_find(o, n)]);
                    objs[i].expire_at_ms = expire_ms(o);
                    objs[i].pin = o->pin;
                    objs[i].created_ms = o->created_wall;
                    pobjs[i] = &objs[i];
                }
                Kvstash__ObjectsReq req = KVSTASH__OBJECTS_REQ__INIT;
                req.epoch = m->epoch;
                req.n_objects = nv;
                req.objects = pobjs;
                pthread_mutex_unlock(&m->lock);
                rc = mst_call_node(n, KV_RPC_NODE_DEMOTE, &req.base,
                                   &kvstash__demote_resp__descriptor, (ProtobufCMessage **)&dr);
                pthread_mutex_lock(&m->lock);
            }
            kv_free(objs);
            kv_free(pobjs);
        }
        int64_t mono = kv_now_ms();
        for (size_t i = 0; i < nv; i++) {
            struct mobj *o = v[i].o;
            int ri = rep_find(o, n);
            if (ri >= 0) {
                struct mrep *r = &obj_rep(o)[ri];
                r->demoting = false;
                bool ok = demote && rc == KV_OK && dr && i < dr->n_status && dr->status[i] == 0;
                if (ok) {
                    /* the node dropped its DRAM entry; the range waits for the lease only */
                    mst_defer_free(m, n, o->key, r->blk, rounded(o->size), true, false, false,
                                   o->created_wall, o->lease_until);
                    r->dram = false;
                    r->ssd = true;
                    m->demotions++;
                    m->mc.demoted_bytes += o->size;
                } else if (o->lease_until > mono) {
                    /* a reader took a lease meanwhile: keep it */
                } else {
                    mst_defer_free(m, n, o->key, r->blk, rounded(o->size), true, r->ssd, true,
                                   o->created_wall, o->lease_until);
                    r->dram = false;
                    if (!r->ssd)
                        rep_drop(o, ri);
                    m->evictions++;
                    m->mc.evicted_bytes += o->size;
                    if (o->nrep == 0 && !o->dead)
                        mst_obj_unlink(m, o);
                }
            }
            mst_obj_put_done(m, o);
        }
        if (dr) {
            for (size_t i = 0; i < dr->n_dropped; i++) {
                struct mobj *o = kv_oidx_get(&m->index, dr->dropped[i]);
                int ri = o ? rep_find(o, n) : -1;
                if (ri < 0)
                    continue;
                obj_rep(o)[ri].ssd = false;
                if (!obj_rep(o)[ri].dram && !obj_rep(o)[ri].promoting && !obj_rep(o)[ri].demoting) {
                    rep_drop(o, ri);
                    m->evictions++;
                    m->mc.evicted_bytes += o->size;
                    if (o->nrep == 0 && !o->refs)
                        mst_obj_unlink(m, o);
                }
            }
            kv_rpc_pb_free(&dr->base);
        }
        KV_LOGD("node %s: %s %zu objects", n->id, demote ? "demoted" : "evicted", nv);
        kv_free(v);
    }
    for (int i = 0; i < k; i++)
        mst_node_unref(ns[i]);
    kv_free(ns);
    pthread_mutex_unlock(&m->lock);
    pthread_mutex_unlock(&m->evict_lock);
}

bool mst_place_fenced(struct kv_master *m)
{
    int64_t now = kv_now_ms();
    if (now >= atomic_load(&m->fence_until))
        return false;
    bool any = false, open = false;
    pthread_mutex_lock(&m->lock);
    for (struct mnode *n = m->nodes; n && !open; n = n->next) {
        if (n->mounting || n->removed)
            continue;
        any = true;
        open = n->fence_until <= now;
    }
    pthread_mutex_unlock(&m->lock);
    return any && !open;
}

bool mst_nodes_all_local(struct kv_master *m)
{
    for (struct mnode *n = m->nodes; n; n = n->next)
        if (!n->local)
            return false;
    return true;
}

/* At item i of a batch: asks the CPU for the index's home slot of item i + 8 and the object item
 * i + 4's tag points at, so the lookups of a large index overlap their cache misses instead of
 * taking them one after another (batch puts into millions of objects). Lock held. */
void mst_prefetch_items(struct kv_master *m, Kvstash__PutItem **items, size_t n, size_t i)
{
    enum { FAR = 8, NEAR = 4 };
    if (n < NEAR + 1)
        return;
    if (i + FAR < n && items[i + FAR]->key)
        kv_oidx_prefetch(&m->index, kv_oidx_hash(items[i + FAR]->key), false);
    if (i + NEAR < n && items[i + NEAR]->key)
        kv_oidx_prefetch(&m->index, kv_oidx_hash(items[i + NEAR]->key), true);
}

int mst_place_items_now(struct kv_master *m, Kvstash__PutItem **items, size_t n, int32_t *status,
                        Kvstash__PutSlot *slots, struct mobj **objs, bool local_only)
{
    int rc = KV_OK;
    pthread_mutex_lock(&m->lock);
    if (local_only && !mst_nodes_all_local(m)) {
        pthread_mutex_unlock(&m->lock);
        return KV_RPC_SLOW;
    }
    struct mobj *o;
    if (!mst_leading(m)) { /* deposed since the dispatch: place nothing */
        for (size_t i = 0; i < n; i++)
            status[i] = KV_EAGAIN;
        pthread_mutex_unlock(&m->lock);
        return KV_OK;
    }
    for (size_t i = 0; i < n && rc == KV_OK; i++) {
        mst_prefetch_items(m, items, n, i);
        status[i] = mst_put_start_one(m, items[i], slots ? &slots[i] : NULL, &o);
        if (status[i] == KV_OK && objs)
            objs[i] = o;
        if (status[i] == KV_ENOSPC && (int)KV_MAX(items[i]->replicas, 1) <= m->nnodes)
            rc = KV_RPC_SLOW; /* room must be made: not on this thread */
    }
    if (rc == KV_RPC_SLOW) { /* take back what was placed: nobody has seen it */
        for (size_t i = 0; i < n; i++) {
            if (status[i] == KV_OK && (o = kv_oidx_get(&m->index, items[i]->key)))
                mst_obj_abandon(m, o);
            status[i] = KV_ENOSPC;
        }
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

void mst_place_items(struct kv_master *m, Kvstash__PutItem **items, size_t n, int32_t *status,
                     Kvstash__PutSlot *slots, struct mobj **objs)
{
    uint64_t need = 0;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < n; i++) {
        if (!mst_leading(m)) { /* deposed since the dispatch: place nothing */
            status[i] = KV_EAGAIN;
            continue;
        }
        mst_prefetch_items(m, items, n, i);
        status[i] =
            mst_put_start_one(m, items[i], slots ? &slots[i] : NULL, objs ? &objs[i] : NULL);
        if (status[i] == KV_ENOSPC && (int)KV_MAX(items[i]->replicas, 1) <= m->nnodes)
            need += rounded(items[i]->size) * KV_MAX(items[i]->replicas, 1);
    }
    pthread_mutex_unlock(&m->lock);
    if (!need)
        return;
    /* ask the maintenance thread for an eviction pass and wait for it (bounded), then retry once:
     * evictions stay on one thread, and a burst of puts asks for one pass, not one each */
    pthread_mutex_lock(&m->lock);
    uint64_t my = ++m->evict_req_seq;
    m->evict_need += need;
    pthread_mutex_unlock(&m->lock);
    mst_maint_wake(m);
    pthread_mutex_lock(&m->lock);
    int64_t deadline = kv_now_ms() + EVICT_WAIT_MS;
    while (m->evict_done_seq < my && mst_leading(m) && kv_now_ms() < deadline) {
        struct timespec ts;
        kv_timespec_in_ms(&ts, 100);
        pthread_cond_timedwait(&m->cond, &m->lock, &ts);
    }
    for (size_t i = 0; i < n; i++)
        if (status[i] == KV_ENOSPC)
            status[i] = !mst_leading(m) ? KV_EAGAIN
                                        : mst_put_start_one(m, items[i], slots ? &slots[i] : NULL,
                                                            objs ? &objs[i] : NULL);
    pthread_mutex_unlock(&m->lock);
}

/* Promotes o from SSD on replica node n into DRAM. Called and returns with the lock held; drops
 * it around the RPC. */
int mst_promote(struct kv_master *m, struct mobj *o, int ri)
{
    struct mnode *n = obj_rep(o)[ri].node;
    uint64_t off;
    kv_segblk blk;
    int rc = kv_segalloc_alloc(n->alloc, o->size ? o->size : 1, &off, &blk);
    if (rc == KV_ENOSPC) {
        n->refs++;
        o->refs++;
        pthread_mutex_unlock(&m->lock);
        mst_evict_pass(m, n, rounded(o->size));
        mst_process_dfree(m);
        pthread_mutex_lock(&m->lock);
        bool gone = n->removed;
        mst_node_unref(n);
        mst_obj_put_done(m, o);
        if (gone || o->dead || (ri = rep_find(o, n)) < 0 || obj_rep(o)[ri].dram ||
            obj_rep(o)[ri].promoting)
            return KV_OK; /* the state changed: the caller looks again */
        rc = kv_segalloc_alloc(n->alloc, o->size ? o->size : 1, &off, &blk);
    }
    if (rc < 0) {
        KV_LOGW_RL(2000, "mst_promote %s on node %s: no DRAM: %s", o->key, n->id, kv_strerror(rc));
        return rc;
    }
    struct mrep *r = &obj_rep(o)[ri];
    r->promoting = true;
    r->blk = blk;
    n->refs++;
    o->refs++;
    Kvstash__PromoteReq pr = KVSTASH__PROMOTE_REQ__INIT;
    pr.epoch = m->epoch;
    pr.key = o->key;
    pr.offset = off;
    pthread_mutex_unlock(&m->lock);
    rc = mst_call_node(n, KV_RPC_NODE_PROMOTE, &pr.base, NULL, NULL);
    pthread_mutex_lock(&m->lock);
    ri = rep_find(o, n);
    if (ri >= 0) {
        r = &obj_rep(o)[ri];
        r->promoting = false;
        if (rc == KV_OK) {
            r->dram = true;
            m->promotions++;
            m->mc.promoted_bytes += o->size;
        } else {
            if (!n->removed)
                kv_segalloc_free(n->alloc, blk);
            r->blk = 0;
            if (rc == KV_ENOENT || rc == KV_ECHECKSUM) {
                r->ssd = false;
                if (!r->dram)
                    rep_drop(o, ri);
                if (o->nrep == 0 && !o->dead)
                    mst_obj_unlink(m, o);
            }
        }
    }
    pthread_cond_broadcast(&m->cond);
    mst_node_unref(n);
    mst_obj_put_done(m, o);
    return KV_OK; /* success or not, the caller looks at the replicas again */
}
