/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master.c - the store master: object index, placement, read leases, eviction/demotion, TTL,
 * PENDING reclaim, node membership, and the RPC handlers of store clients and nodes.
 * Election and admin HTTP live in master_ha.c.
 *
 * Object states (struct mobj):
 *
 *     PutStart ─▶ PENDING ──PutEnd(ok), all nodes ack NODE_COMMIT──▶ COMPLETE
 *                    │  PutEnd(!ok) / put_timeout / Remove           │ Remove / TTL / eviction
 *                    ▼                                               ▼ without replicas
 *                 unlinked (dead) ──refs == 0──▶ ranges queued as deferred frees ──▶ freed
 *
 * Invariants:
 *  1. An object is in the index iff !dead; it is on the LRU list iff COMPLETE and !dead.
 *  2. A DRAM range handed out (replica dram/promoting, or queued in dfree) is allocated in its
 *     node's allocator; it returns to the allocator only after its lease ended (lease_until:
 *     GET leases; put_deadline for PENDING) and, when the node knew it, after NODE_FREE was
 *     acknowledged - so bytes a reader may still read are never reused.
 *  3. A replica with demoting/promoting set, or an object with refs > 0, has an RPC in flight;
 *     its space is released by whoever finishes it (obj_put_done), never under it.
 *  4. Replicas of one object are on distinct nodes.
 *
 * Thread model: RPC handlers run on the RPC server's connection threads; one maintenance thread
 * runs eviction, deferred frees, PENDING reclaim, node timeouts and the TTL sweep. Node RPCs
 * (commit, free, demote, promote) are made without the lock, holding refs on the objects and
 * nodes involved.
 * Locks: m->evict_lock serialises eviction passes and is taken before m->lock. m->lock guards
 * the index, LRU, nodes, deferred frees, counters and leader hint (see master_int.h).
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

#define NODE_RPC_TIMEOUT_MS 5000
#define PROMOTE_WAIT_MS 10000

/* ---- small helpers ---- */

static uint64_t rnd(struct kv_master *m)
{
    m->rng ^= m->rng << 13;
    m->rng ^= m->rng >> 7;
    m->rng ^= m->rng << 17;
    return m->rng;
}

static bool key_ok(const char *k)
{
    size_t n = k ? strlen(k) : 0;
    return n > 0 && n <= KV_STORE_MAX_KEY;
}

static uint64_t node_used(const struct mnode *n)
{
    return kv_segalloc_used(n->alloc) - n->pending_free;
}

static void node_unref(struct mnode *n)
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

static struct mnode *node_find(struct kv_master *m, const char *id)
{
    for (struct mnode *n = m->nodes; n; n = n->next)
        if (strcmp(n->id, id) == 0)
            return n;
    return NULL;
}

static void lru_remove(struct mobj *o)
{
    if (o->lru_prev) {
        o->lru_prev->lru_next = o->lru_next;
        o->lru_next->lru_prev = o->lru_prev;
        o->lru_prev = o->lru_next = NULL;
    }
}

static void lru_push(struct kv_master *m, struct mobj *o)
{
    lru_remove(o);
    o->lru_next = m->lru.lru_next;
    o->lru_prev = &m->lru;
    m->lru.lru_next->lru_prev = o;
    m->lru.lru_next = o;
}

static void defer_free2(struct kv_master *m, struct mnode *n, const char *key, uint64_t off,
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
            kv_segalloc_free(n->alloc, off);
        KV_LOGW_RL(5000, "out of memory queueing a deferred free: freed at once");
        return;
    }
    d->node = n;
    n->refs++;
    d->key = k;
    d->off = off;
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

static void defer_free(struct kv_master *m, struct mnode *n, const char *key, uint64_t off,
                       uint64_t size, bool dram, bool ssd, bool rpc, int64_t created,
                       int64_t not_before)
{
    defer_free2(m, n, key, off, size, dram, ssd, rpc, false, created, not_before);
}

static uint64_t rounded(uint64_t size)
{
    uint64_t g = KV_SEGALLOC_GRAN;
    return size ? (size + g - 1) / g * g : g;
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
        struct mrep *r = &o->rep[i];
        if (!(r->dram || r->ssd || r->promoting))
            continue;
        bool dram = r->dram || r->promoting;
        if (dram && !r->ssd && nb > now) {
            defer_free2(m, r->node, o->key, r->off, rounded(o->size), true, false, true, true,
                        o->created_wall, 0);
            defer_free2(m, r->node, o->key, r->off, rounded(o->size), true, false, false, false,
                        o->created_wall, nb);
        } else {
            defer_free(m, r->node, o->key, r->off, rounded(o->size), dram, r->ssd, true,
                       o->created_wall, nb);
        }
    }
    kv_free(o->key);
    kv_free(o);
}

/* Marks o dead and unlinks it (the caller already removed it from the index map when
 * in_map is false). */
static void obj_unlink2(struct kv_master *m, struct mobj *o, bool in_map)
{
    if (o->state == OBJ_PENDING && !o->dead)
        m->npending--;
    if (in_map)
        kv_smap_del(&m->index, o->key);
    lru_remove(o);
    o->dead = true;
    if (o->refs == 0)
        obj_release(m, o);
}

static void obj_unlink(struct kv_master *m, struct mobj *o)
{
    obj_unlink2(m, o, true);
}

static void obj_put_done(struct kv_master *m, struct mobj *o)
{
    if (--o->refs == 0 && o->dead)
        obj_release(m, o);
}

static void rep_drop(struct mobj *o, int i)
{
    o->rep[i] = o->rep[--o->nrep];
}

static int rep_find(struct mobj *o, struct mnode *n)
{
    for (int i = 0; i < o->nrep; i++)
        if (o->rep[i].node == n)
            return i;
    return -1;
}

static bool expired(struct mobj *o, int64_t wall)
{
    return o->state == OBJ_COMPLETE && o->expire_wall && o->expire_wall <= wall;
}

/* ---- node removal ---- */

struct drop_ctx {
    struct kv_master *m;
    struct mnode *n;
};

static int drop_node_reps(void *ud, const char *key, void *val)
{
    (void)key;
    struct drop_ctx *c = ud;
    struct mobj *o = val;
    int i = rep_find(o, c->n);
    if (i < 0)
        return 0;
    rep_drop(o, i);
    if (o->nrep == 0 && !o->refs) {
        obj_unlink2(c->m, o, false);
        return 1;
    }
    return 0;
}

static void node_remove(struct kv_master *m, struct mnode *n, const char *why)
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
    kv_smap_each(&m->index, drop_node_reps, &c);
    for (struct dfree **pp = &m->dfree; *pp;) {
        struct dfree *d = *pp;
        if (d->node == n) {
            *pp = d->next;
            kv_free(d->key);
            node_unref(d->node);
            kv_free(d);
        } else {
            pp = &d->next;
        }
    }
    KV_LOGI("node %s removed: %s", n->id, why);
    node_unref(n);
}

static int drop_all(void *ud, const char *key, void *val)
{
    (void)ud;
    (void)key;
    struct mobj *o = val;
    lru_remove(o);
    o->dead = true;
    o->nrep = 0;
    if (o->refs == 0) {
        kv_free(o->key);
        kv_free(o);
    }
    return 1;
}

void kv_master_reset(struct kv_master *m)
{
    pthread_mutex_lock(&m->lock);
    while (m->nodes)
        node_remove(m, m->nodes, "this master is no longer the leader");
    kv_smap_each(&m->index, drop_all, NULL);
    m->npending = 0;
    pthread_mutex_unlock(&m->lock);
}

/* ---- response helpers ---- */

static int reply(struct kv_buf *resp, const ProtobufCMessage *msg)
{
    struct kv_buf b;
    kv_buf_init(&b);
    int rc = kv_rpc_pb_pack(msg, &b);
    if (rc == KV_OK)
        rc = kv_buf_append(resp, b.data, b.len);
    kv_buf_fini(&b);
    return rc;
}

static int not_leader(struct kv_master *m, struct kv_buf *resp)
{
    Kvstash__NotLeader nl = KVSTASH__NOT_LEADER__INIT;
    char hint[300];
    pthread_mutex_lock(&m->lock);
    memcpy(hint, m->leader_hint, sizeof(hint));
    pthread_mutex_unlock(&m->lock);
    nl.leader_addr = hint;
    nl.leader_id = "";
    reply(resp, &nl.base);
    return KV_EAGAIN;
}

/* ---- node RPC calls (without the lock) ---- */

static int call_node(struct mnode *n, uint16_t method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *rd, ProtobufCMessage **resp)
{
    int rc = kv_rpc_call_pb(n->rpc, method, req, rd, resp, NODE_RPC_TIMEOUT_MS, NULL, 0);
    if (rc < 0)
        KV_LOGW_RL(2000, "%s to node %s (%s): %s", kv_rpc_method_name(method), n->id, n->rpc_addr,
                   kv_strerror(rc));
    return rc;
}

/* ---- placement ---- */

/* Chooses up to want distinct nodes weighted by free DRAM and allocates size on each. Returns
 * the number placed (reps filled). */
static int place(struct kv_master *m, uint64_t size, int want, struct mrep *reps)
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
    for (struct mnode *n = m->nodes; n && nc < KV_MAX(m->nnodes, 64); n = n->next) {
        if (n->mounting)
            continue; /* its objects are not all known yet: their ranges are not reserved */
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
        if (kv_segalloc_alloc(cand[pick]->alloc, size ? size : 1, &off) == KV_OK) {
            memset(&reps[got], 0, sizeof(reps[got]));
            reps[got].node = cand[pick];
            reps[got].off = off;
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

/* ---- eviction ---- */

struct victim {
    struct mobj *o;
};

/* One eviction pass over every node (force: the node that must make need bytes of room). */
static void evict_pass(struct kv_master *m, struct mnode *force, uint64_t need)
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
            uint64_t avail = 0;
            for (struct mobj *o = m->lru.lru_prev; o != &m->lru; o = o->lru_prev) {
                int ri = rep_find(o, n);
                if (ri >= 0 && o->rep[ri].dram && !o->rep[ri].demoting && !o->refs &&
                    o->lease_until <= now)
                    avail += rounded(o->size);
            }
            if (cap - kv_segalloc_used(n->alloc) + avail >= need)
                want = need;
        }
        if (!want)
            continue;
        size_t nv = 0, cv = 64;
        struct victim *v = kv_malloc(cv * sizeof(*v));
        uint64_t got = 0;
        for (int pass = 0; pass < 2 && got < want && v; pass++) {
            for (struct mobj *o = m->lru.lru_prev; o != &m->lru && got < want; o = o->lru_prev) {
                if (o->pin != (pass == 1) || o->lease_until > now || o->refs)
                    continue;
                int ri = rep_find(o, n);
                if (ri < 0 || !o->rep[ri].dram || o->rep[ri].demoting)
                    continue;
                if (nv == cv) {
                    struct victim *nvv = kv_realloc(v, cv * 2 * sizeof(*v));
                    if (!nvv)
                        break;
                    v = nvv;
                    cv *= 2;
                }
                o->rep[ri].demoting = true;
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
                    objs[i].offset = o->rep[rep_find(o, n)].off;
                    objs[i].expire_at_ms = o->expire_wall;
                    objs[i].pin = o->pin;
                    objs[i].created_ms = o->created_wall;
                    pobjs[i] = &objs[i];
                }
                Kvstash__ObjectsReq req = KVSTASH__OBJECTS_REQ__INIT;
                req.epoch = m->epoch;
                req.n_objects = nv;
                req.objects = pobjs;
                pthread_mutex_unlock(&m->lock);
                rc = call_node(n, KV_RPC_NODE_DEMOTE, &req.base, &kvstash__demote_resp__descriptor,
                               (ProtobufCMessage **)&dr);
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
                struct mrep *r = &o->rep[ri];
                r->demoting = false;
                bool ok = demote && rc == KV_OK && dr && i < dr->n_status && dr->status[i] == 0;
                if (ok) {
                    /* the node dropped its DRAM entry; the range waits for the lease only */
                    defer_free(m, n, o->key, r->off, rounded(o->size), true, false, false,
                               o->created_wall, o->lease_until);
                    r->dram = false;
                    r->ssd = true;
                    m->demotions++;
                } else if (o->lease_until > mono) {
                    /* a reader took a lease meanwhile: keep it */
                } else {
                    defer_free(m, n, o->key, r->off, rounded(o->size), true, r->ssd, true,
                               o->created_wall, o->lease_until);
                    r->dram = false;
                    if (!r->ssd)
                        rep_drop(o, ri);
                    m->evictions++;
                    if (o->nrep == 0 && !o->dead)
                        obj_unlink(m, o);
                }
            }
            obj_put_done(m, o);
        }
        if (dr) {
            for (size_t i = 0; i < dr->n_dropped; i++) {
                struct mobj *o = kv_smap_get(&m->index, dr->dropped[i]);
                int ri = o ? rep_find(o, n) : -1;
                if (ri < 0)
                    continue;
                o->rep[ri].ssd = false;
                if (!o->rep[ri].dram && !o->rep[ri].promoting && !o->rep[ri].demoting) {
                    rep_drop(o, ri);
                    m->evictions++;
                    if (o->nrep == 0 && !o->refs)
                        obj_unlink(m, o);
                }
            }
            kv_rpc_pb_free(&dr->base);
        }
        KV_LOGD("node %s: %s %zu objects", n->id, demote ? "demoted" : "evicted", nv);
        kv_free(v);
    }
    for (int i = 0; i < k; i++)
        node_unref(ns[i]);
    kv_free(ns);
    pthread_mutex_unlock(&m->lock);
    pthread_mutex_unlock(&m->evict_lock);
}

/* ---- deferred frees ---- */

static void process_dfree(struct kv_master *m)
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
                    kv_segalloc_free(d->node->alloc, d->off);
                    d->node->pending_free -= d->size;
                }
                node_unref(d->node);
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
            rc = no ? call_node(target, KV_RPC_NODE_FREE, &req.base,
                                &kvstash__status_list__descriptor, NULL)
                    : KV_OK;
            pthread_mutex_lock(&m->lock);
            node_unref(target);
        }
        kv_free(objs);
        kv_free(pobjs);
        while (batch) {
            struct dfree *d = batch;
            batch = d->next;
            if (rc == KV_OK || d->node->removed) {
                if (d->dram && d->size && !d->keep_space && !d->node->removed) {
                    kv_segalloc_free(d->node->alloc, d->off);
                    d->node->pending_free -= d->size;
                }
                node_unref(d->node);
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

/* ---- periodic maintenance ---- */

struct sweep_ctx {
    struct kv_master *m;
    int64_t mono, wall;
    bool ttl;
    uint64_t reclaimed, expired;
};

static int sweep_cb(void *ud, const char *key, void *val)
{
    (void)key;
    struct sweep_ctx *c = ud;
    struct mobj *o = val;
    if (o->refs)
        return 0;
    if (o->state == OBJ_PENDING && o->put_deadline <= c->mono) {
        c->reclaimed++;
        obj_unlink2(c->m, o, false);
        return 1;
    }
    if (c->ttl && expired(o, c->wall)) {
        c->expired++;
        obj_unlink2(c->m, o, false);
        return 1;
    }
    return 0;
}

void kv_master_maintain_now(struct kv_master *m, bool force_ttl)
{
    if (!atomic_load(&m->leader))
        return;
    pthread_mutex_lock(&m->lock);
    int64_t now = kv_now_ms();
    for (struct mnode *n = m->nodes, *next; n; n = next) {
        next = n->next;
        if (now - n->last_hb_ms > (int64_t)m->node_timeout_ms)
            node_remove(m, n, "no heartbeat within node_timeout");
    }
    struct sweep_ctx c = {m, now, kv_wall_ms(), false, 0, 0};
    c.ttl = force_ttl || now - m->last_ttl_sweep >= (int64_t)m->cleanup_ms;
    if (c.ttl)
        m->last_ttl_sweep = now;
    /* a full sweep of the index: for the TTL, or at most every 250 ms while puts are pending */
    bool pend = m->npending && now - m->last_pending_sweep >= 250;
    if (pend)
        m->last_pending_sweep = now;
    if (c.ttl || pend)
        kv_smap_each(&m->index, sweep_cb, &c);
    m->expired += c.expired;
    if (c.reclaimed || c.expired)
        KV_LOGI("cleanup: %llu abandoned puts reclaimed, %llu expired objects removed",
                (unsigned long long)c.reclaimed, (unsigned long long)c.expired);
    pthread_mutex_unlock(&m->lock);
    evict_pass(m, NULL, 0);
    process_dfree(m);
}

/* ---- handlers: client ---- */

static int h_hello(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    ProtobufCMessage *in;
    int rc = kv_rpc_pb_unpack(&kvstash__hello_req__descriptor, req, len, &in);
    if (rc < 0)
        return rc;
    kv_rpc_pb_free(in);
    Kvstash__HelloResp r = KVSTASH__HELLO_RESP__INIT;
    r.cluster = m->cluster;
    r.metadata_url = m->adv_meta;
    r.master_id = m->id;
    pthread_mutex_lock(&m->lock);
    r.epoch = m->epoch;
    pthread_mutex_unlock(&m->lock);
    return reply(resp, &r.base);
}

static int put_start_one(struct kv_master *m, const Kvstash__PutItem *it, Kvstash__PutSlot *slot)
{
    if (!key_ok(it->key))
        return KV_EINVAL;
    int want = it->replicas ? (int)it->replicas : 1;
    if (want > KV_STORE_MAX_REPLICAS)
        return KV_EINVAL;
    if (kv_smap_get(&m->index, it->key))
        return KV_EEXIST;
    if (want > m->nnodes)
        return KV_ENOSPC;
    struct mobj *o = kv_calloc(1, sizeof(*o));
    if (!o || !(o->key = kv_strdup(it->key))) {
        kv_free(o);
        return KV_ENOMEM;
    }
    int got = place(m, it->size, want, o->rep);
    if (got < want) {
        for (int i = 0; i < got; i++)
            kv_segalloc_free(o->rep[i].node->alloc, o->rep[i].off);
        kv_free(o->key);
        kv_free(o);
        return KV_ENOSPC;
    }
    Kvstash__Replica **rs = kv_calloc((size_t)got, sizeof(*rs));
    Kvstash__Replica *ra = kv_calloc((size_t)got, sizeof(*ra));
    if (!rs || !ra || kv_smap_put(&m->index, o->key, o) < 0) {
        kv_free(rs);
        kv_free(ra);
        for (int i = 0; i < got; i++)
            kv_segalloc_free(o->rep[i].node->alloc, o->rep[i].off);
        kv_free(o->key);
        kv_free(o);
        return KV_ENOMEM;
    }
    o->nrep = got;
    o->size = it->size;
    o->state = OBJ_PENDING;
    m->npending++;
    o->pin = it->pin;
    o->ttl_s = it->ttl_s ? it->ttl_s : m->expire_s;
    o->created_wall = kv_wall_ms();
    o->put_deadline = kv_now_ms() + m->put_timeout_ms;
    o->lease_until = o->put_deadline; /* the writer may touch the ranges until then */
    for (int i = 0; i < got; i++) {
        kvstash__replica__init(&ra[i]);
        ra[i].node_id = kv_strdup(o->rep[i].node->id);
        ra[i].segment = kv_strdup(o->rep[i].node->segment);
        ra[i].offset = o->rep[i].off;
        ra[i].tier = KVSTASH__TIER__TIER_DRAM;
        rs[i] = &ra[i];
    }
    slot->replicas = rs;
    slot->n_replicas = (size_t)got;
    return KV_OK;
}

static void free_slots(Kvstash__PutSlot *slots, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!slots[i].n_replicas)
            continue;
        for (size_t j = 0; j < slots[i].n_replicas; j++) {
            kv_free(slots[i].replicas[j]->node_id);
            kv_free(slots[i].replicas[j]->segment);
        }
        kv_free(slots[i].replicas[0]);
        kv_free(slots[i].replicas);
    }
}

static int h_put_start(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    Kvstash__PutStartReq *in;
    int rc =
        kv_rpc_pb_unpack(&kvstash__put_start_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    size_t n = in->n_items;
    Kvstash__PutSlot *slots = kv_calloc(n ? n : 1, sizeof(*slots));
    Kvstash__PutSlot **ps = kv_calloc(n ? n : 1, sizeof(*ps));
    if (!slots || !ps) {
        rc = KV_ENOMEM;
        goto out;
    }
    uint64_t need = 0;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < n; i++) {
        kvstash__put_slot__init(&slots[i]);
        ps[i] = &slots[i];
        slots[i].status = put_start_one(m, in->items[i], &slots[i]);
        if (slots[i].status == KV_ENOSPC && (int)KV_MAX(in->items[i]->replicas, 1) <= m->nnodes)
            need += rounded(in->items[i]->size) * KV_MAX(in->items[i]->replicas, 1);
    }
    pthread_mutex_unlock(&m->lock);
    if (need) {
        /* synchronous eviction on every node, then one retry */
        pthread_mutex_lock(&m->lock);
        int nn = m->nnodes;
        pthread_mutex_unlock(&m->lock);
        for (int pass = 0; pass < nn && pass < 8; pass++) {
            pthread_mutex_lock(&m->lock);
            struct mnode *t = m->nodes;
            for (int j = 0; t && j < pass; j++)
                t = t->next;
            if (t)
                t->refs++;
            pthread_mutex_unlock(&m->lock);
            if (!t)
                break;
            evict_pass(m, t, need);
            pthread_mutex_lock(&m->lock);
            node_unref(t);
            pthread_mutex_unlock(&m->lock);
        }
        process_dfree(m);
        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; i < n; i++)
            if (slots[i].status == KV_ENOSPC)
                slots[i].status = put_start_one(m, in->items[i], &slots[i]);
        pthread_mutex_unlock(&m->lock);
    }
    Kvstash__PutStartResp r = KVSTASH__PUT_START_RESP__INIT;
    r.n_slots = n;
    r.slots = ps;
    rc = reply(resp, &r.base);
    free_slots(slots, n);
out:
    kv_free(slots);
    kv_free(ps);
    kv_rpc_pb_free(&in->base);
    return rc;
}

struct commit_grp {
    struct mnode *node;
    Kvstash__NodeObject **objs;
    size_t n;
    int rc;
    int32_t *status;
    size_t nstatus;
};

static int h_put_end(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    Kvstash__PutEndReq *in;
    int rc =
        kv_rpc_pb_unpack(&kvstash__put_end_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    size_t n = in->n_items;
    int32_t *st = kv_calloc(n ? n : 1, sizeof(*st));
    struct mobj **objs = kv_calloc(n ? n : 1, sizeof(*objs));
    Kvstash__NodeObject *nos = kv_calloc(n * KV_STORE_MAX_REPLICAS + 1, sizeof(*nos));
    Kvstash__NodeObject **pnos = kv_calloc(n * KV_STORE_MAX_REPLICAS + 1, sizeof(*pnos));
    /* at most one group per replica of the batch */
    struct commit_grp *g = kv_calloc(n * KV_STORE_MAX_REPLICAS + 1, sizeof(*g));
    size_t ng = 0, nno = 0;
    if (!st || !objs || !nos || !pnos || !g) {
        rc = KV_ENOMEM;
        goto out;
    }
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < n; i++) {
        const Kvstash__PutEndItem *it = in->items[i];
        struct mobj *o = key_ok(it->key) ? kv_smap_get(&m->index, it->key) : NULL;
        if (!o) {
            st[i] = KV_ENOENT;
            continue;
        }
        if (o->state == OBJ_COMPLETE) {
            st[i] = o->checksum == it->checksum ? KV_OK : KV_EEXIST;
            continue;
        }
        if (o->refs) { /* a PutEnd for this key is already in flight */
            st[i] = KV_EBUSY;
            continue;
        }
        if (!it->ok) {
            o->lease_until = 0; /* the writer gave up: nobody touches the ranges */
            obj_unlink(m, o);
            continue;
        }
        o->checksum = it->checksum;
        o->refs++;
        objs[i] = o;
        for (int r = 0; r < o->nrep; r++) {
            struct mnode *node = o->rep[r].node;
            size_t gi = 0;
            while (gi < ng && g[gi].node != node)
                gi++;
            if (gi == ng) {
                g[ng].node = node;
                node->refs++;
                g[ng].objs = pnos + nno; /* contiguous per group: filled below */
                ng++;
            }
        }
    }
    /* lay out NodeObjects group by group */
    nno = 0;
    for (size_t gi = 0; gi < ng; gi++) {
        g[gi].objs = pnos + nno;
        for (size_t i = 0; i < n; i++) {
            struct mobj *o = objs[i];
            int r = o ? rep_find(o, g[gi].node) : -1;
            if (r < 0)
                continue;
            Kvstash__NodeObject *x = &nos[nno];
            kvstash__node_object__init(x);
            x->key = o->key;
            x->size = o->size;
            x->checksum = o->checksum;
            x->tier = KVSTASH__TIER__TIER_DRAM;
            x->offset = o->rep[r].off;
            x->expire_at_ms = kv_wall_ms() + (int64_t)o->ttl_s * 1000;
            x->pin = o->pin;
            x->created_ms = o->created_wall;
            pnos[nno++] = x;
            g[gi].n++;
        }
    }
    uint64_t epoch = m->epoch;
    pthread_mutex_unlock(&m->lock);
    for (size_t gi = 0; gi < ng; gi++) {
        Kvstash__ObjectsReq oreq = KVSTASH__OBJECTS_REQ__INIT;
        oreq.epoch = epoch;
        oreq.n_objects = g[gi].n;
        oreq.objects = g[gi].objs;
        Kvstash__StatusList *sl = NULL;
        g[gi].rc = call_node(g[gi].node, KV_RPC_NODE_COMMIT, &oreq.base,
                             &kvstash__status_list__descriptor, (ProtobufCMessage **)&sl);
        if (g[gi].rc == KV_OK) {
            g[gi].status = kv_calloc(g[gi].n + 1, sizeof(int32_t));
            if (!g[gi].status)
                g[gi].rc = KV_ENOMEM;
            for (size_t j = 0; g[gi].status && j < g[gi].n; j++)
                g[gi].status[j] = j < sl->n_status ? sl->status[j] : KV_EPROTO;
            g[gi].nstatus = g[gi].n;
            kv_rpc_pb_free(&sl->base);
        }
    }
    pthread_mutex_lock(&m->lock);
    int64_t mono = kv_now_ms(), wall = kv_wall_ms();
    for (size_t i = 0; i < n; i++) {
        struct mobj *o = objs[i];
        if (!o)
            continue;
        for (int r = o->nrep - 1; r >= 0; r--) {
            bool acked = false;
            for (size_t gi = 0; gi < ng; gi++) {
                if (g[gi].node != o->rep[r].node)
                    continue;
                for (size_t j = 0; j < g[gi].n; j++)
                    if (g[gi].objs[j]->key == o->key)
                        acked = g[gi].rc == KV_OK && g[gi].status[j] == KV_OK;
            }
            if (!acked) {
                defer_free(m, o->rep[r].node, o->key, o->rep[r].off, rounded(o->size), true, false,
                           true, o->created_wall, o->lease_until);
                rep_drop(o, r);
            }
        }
        if (o->dead) {
            st[i] = KV_ENOENT;
        } else if (o->nrep == 0) {
            st[i] = KV_EIO;
            m->errors++;
            obj_unlink(m, o);
        } else {
            o->state = OBJ_COMPLETE;
            m->npending--;
            o->lease_until = 0;
            o->expire_wall = wall + (int64_t)o->ttl_s * 1000;
            lru_push(m, o);
            m->puts++;
            st[i] = KV_OK;
        }
        (void)mono;
        obj_put_done(m, o);
    }
    for (size_t gi = 0; gi < ng; gi++)
        node_unref(g[gi].node);
    pthread_mutex_unlock(&m->lock);
    Kvstash__StatusList r = KVSTASH__STATUS_LIST__INIT;
    r.n_status = n;
    r.status = st;
    rc = reply(resp, &r.base);
out:
    if (g)
        for (size_t gi = 0; gi < ng; gi++)
            kv_free(g[gi].status);
    kv_free(g);
    kv_free(st);
    kv_free(objs);
    kv_free(nos);
    kv_free(pnos);
    kv_rpc_pb_free(&in->base);
    return rc;
}

/* Promotes o from SSD on replica node n into DRAM. Called and returns with the lock held; drops
 * it around the RPC. */
static int promote(struct kv_master *m, struct mobj *o, int ri)
{
    struct mnode *n = o->rep[ri].node;
    uint64_t off;
    int rc = kv_segalloc_alloc(n->alloc, o->size ? o->size : 1, &off);
    if (rc == KV_ENOSPC) {
        n->refs++;
        o->refs++;
        pthread_mutex_unlock(&m->lock);
        evict_pass(m, n, rounded(o->size));
        process_dfree(m);
        pthread_mutex_lock(&m->lock);
        bool gone = n->removed;
        node_unref(n);
        obj_put_done(m, o);
        if (gone || o->dead || (ri = rep_find(o, n)) < 0 || o->rep[ri].dram || o->rep[ri].promoting)
            return KV_OK; /* the state changed: the caller looks again */
        rc = kv_segalloc_alloc(n->alloc, o->size ? o->size : 1, &off);
    }
    if (rc < 0) {
        KV_LOGW_RL(2000, "promote %s on node %s: no DRAM: %s", o->key, n->id, kv_strerror(rc));
        return rc;
    }
    struct mrep *r = &o->rep[ri];
    r->promoting = true;
    r->off = off;
    n->refs++;
    o->refs++;
    Kvstash__PromoteReq pr = KVSTASH__PROMOTE_REQ__INIT;
    pr.epoch = m->epoch;
    pr.key = o->key;
    pr.offset = off;
    pthread_mutex_unlock(&m->lock);
    rc = call_node(n, KV_RPC_NODE_PROMOTE, &pr.base, NULL, NULL);
    pthread_mutex_lock(&m->lock);
    ri = rep_find(o, n);
    if (ri >= 0) {
        r = &o->rep[ri];
        r->promoting = false;
        if (rc == KV_OK) {
            r->dram = true;
            m->promotions++;
        } else {
            if (!n->removed)
                kv_segalloc_free(n->alloc, off);
            if (rc == KV_ENOENT || rc == KV_ECHECKSUM) {
                r->ssd = false;
                if (!r->dram)
                    rep_drop(o, ri);
                if (o->nrep == 0 && !o->dead)
                    obj_unlink(m, o);
            }
        }
    }
    pthread_cond_broadcast(&m->cond);
    node_unref(n);
    obj_put_done(m, o);
    return KV_OK; /* success or not, the caller looks at the replicas again */
}

static void get_one(struct kv_master *m, const char *key, Kvstash__GetItem *it)
{
    int64_t deadline = kv_now_ms() + PROMOTE_WAIT_MS;
    /* nodes whose promotion failed during this get: the next SSD replica is tried instead */
    const struct mnode *failed[16];
    int nfailed = 0, last_rc = KV_ENOENT;
    for (int tries = 0; tries < 16; tries++) {
        struct mobj *o = key_ok(key) ? kv_smap_get(&m->index, key) : NULL;
        if (!o || o->state != OBJ_COMPLETE) {
            it->status = KV_ENOENT;
            m->misses++;
            return;
        }
        if (expired(o, kv_wall_ms())) {
            m->expired++;
            obj_unlink(m, o);
            it->status = KV_ENOENT;
            m->misses++;
            return;
        }
        int nd = 0, ssd = -1, promoting = 0;
        for (int i = 0; i < o->nrep; i++) {
            if (o->rep[i].dram)
                nd++;
            else if (o->rep[i].promoting)
                promoting++;
            else if (o->rep[i].ssd && ssd < 0) {
                bool tried = false;
                for (int f = 0; f < nfailed; f++)
                    tried = tried || failed[f] == o->rep[i].node;
                if (!tried)
                    ssd = i;
            }
        }
        if (nd) {
            Kvstash__Replica **rs = kv_calloc((size_t)nd, sizeof(*rs));
            Kvstash__Replica *ra = kv_calloc((size_t)nd, sizeof(*ra));
            if (!rs || !ra) {
                kv_free(rs);
                kv_free(ra);
                it->status = KV_ENOMEM;
                return;
            }
            int k = 0;
            for (int i = 0; i < o->nrep; i++) {
                if (!o->rep[i].dram)
                    continue;
                kvstash__replica__init(&ra[k]);
                ra[k].node_id = kv_strdup(o->rep[i].node->id);
                ra[k].segment = kv_strdup(o->rep[i].node->segment);
                ra[k].offset = o->rep[i].off;
                ra[k].tier = KVSTASH__TIER__TIER_DRAM;
                rs[k] = &ra[k];
                k++;
            }
            int64_t now = kv_now_ms();
            o->lease_until = KV_MAX(o->lease_until, now + (int64_t)m->lease_ms);
            o->expire_wall = kv_wall_ms() + (int64_t)o->ttl_s * 1000;
            lru_push(m, o);
            it->status = KV_OK;
            it->size = o->size;
            it->checksum = o->checksum;
            it->lease_ms = m->lease_ms;
            it->replicas = rs;
            it->n_replicas = (size_t)nd;
            m->hits++;
            return;
        }
        if (promoting) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 200 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            o->refs++;
            pthread_cond_timedwait(&m->cond, &m->lock, &ts);
            obj_put_done(m, o);
            if (kv_now_ms() > deadline)
                break;
            continue;
        }
        if (ssd >= 0) {
            const struct mnode *n = o->rep[ssd].node;
            int rc = promote(m, o, ssd);
            if (rc < 0) {
                last_rc = rc;
                if (nfailed < (int)KV_ARRAY_SIZE(failed))
                    failed[nfailed++] = n;
            }
            continue;
        }
        if (nfailed > 0) {
            /* every SSD replica was tried and none could be brought into DRAM */
            it->status = last_rc;
            m->errors++;
            return;
        }
        it->status = KV_ENOENT;
        m->misses++;
        return;
    }
    it->status = KV_ETIMEDOUT;
    m->errors++;
}

static int h_get(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    Kvstash__KeyList *in;
    int rc = kv_rpc_pb_unpack(&kvstash__key_list__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    size_t n = in->n_keys;
    Kvstash__GetItem *items = kv_calloc(n ? n : 1, sizeof(*items));
    Kvstash__GetItem **pi = kv_calloc(n ? n : 1, sizeof(*pi));
    if (!items || !pi) {
        rc = KV_ENOMEM;
        goto out;
    }
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < n; i++) {
        kvstash__get_item__init(&items[i]);
        pi[i] = &items[i];
        m->gets++;
        get_one(m, in->keys[i], &items[i]);
    }
    pthread_mutex_unlock(&m->lock);
    Kvstash__GetResp r = KVSTASH__GET_RESP__INIT;
    r.n_items = n;
    r.items = pi;
    rc = reply(resp, &r.base);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < items[i].n_replicas; j++) {
            kv_free(items[i].replicas[j]->node_id);
            kv_free(items[i].replicas[j]->segment);
        }
        if (items[i].n_replicas)
            kv_free(items[i].replicas[0]);
        kv_free(items[i].replicas);
    }
out:
    kv_free(items);
    kv_free(pi);
    kv_rpc_pb_free(&in->base);
    return rc;
}

static int h_exists_remove(struct kv_master *m, bool remove, const uint8_t *req, size_t len,
                           struct kv_buf *resp)
{
    Kvstash__KeyList *in;
    int rc = kv_rpc_pb_unpack(&kvstash__key_list__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    size_t n = in->n_keys;
    int32_t *st = kv_calloc(n ? n : 1, sizeof(*st));
    if (!st) {
        kv_rpc_pb_free(&in->base);
        return KV_ENOMEM;
    }
    pthread_mutex_lock(&m->lock);
    int64_t wall = kv_wall_ms();
    for (size_t i = 0; i < n; i++) {
        const char *k = in->keys[i];
        struct mobj *o = key_ok(k) ? kv_smap_get(&m->index, k) : NULL;
        if (!key_ok(k)) {
            st[i] = KV_EINVAL;
        } else if (remove) {
            if (o) {
                obj_unlink(m, o);
                st[i] = KV_OK;
            } else {
                st[i] = KV_ENOENT;
            }
        } else {
            st[i] = o && o->state == OBJ_COMPLETE && !expired(o, wall) ? 1 : 0;
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (remove)
        process_dfree(m); /* the nodes forget the keys before the client hears OK */
    Kvstash__StatusList r = KVSTASH__STATUS_LIST__INIT;
    r.n_status = n;
    r.status = st;
    rc = reply(resp, &r.base);
    kv_free(st);
    kv_rpc_pb_free(&in->base);
    return rc;
}

struct list_ctx {
    const char *prefix;
    int64_t wall;
    struct mobj **v;
    size_t n, cap;
    int rc;
};

static int list_cb(void *ud, const char *key, void *val)
{
    struct list_ctx *c = ud;
    struct mobj *o = val;
    if (o->state != OBJ_COMPLETE || expired(o, c->wall) || !kv_startswith(key, c->prefix))
        return 0;
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 256;
        struct mobj **nv = kv_realloc(c->v, nc * sizeof(*nv));
        if (!nv) {
            c->rc = KV_ENOMEM;
            return 0;
        }
        c->v = nv;
        c->cap = nc;
    }
    c->v[c->n++] = o;
    return 0;
}

static int cmp_obj(const void *a, const void *b)
{
    return strcmp((*(struct mobj *const *)a)->key, (*(struct mobj *const *)b)->key);
}

static int h_list(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    Kvstash__ListReq *in;
    int rc = kv_rpc_pb_unpack(&kvstash__list_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    struct list_ctx c = {in->prefix ? in->prefix : "", kv_wall_ms(), NULL, 0, 0, KV_OK};
    pthread_mutex_lock(&m->lock);
    kv_smap_each(&m->index, list_cb, &c);
    rc = c.rc;
    if (rc == KV_OK) {
        if (c.n)
            qsort(c.v, c.n, sizeof(*c.v), cmp_obj);
        size_t n = in->limit && in->limit < c.n ? in->limit : c.n;
        char **keys = kv_calloc(n + 1, sizeof(*keys));
        uint64_t *sizes = kv_calloc(n + 1, sizeof(*sizes));
        if (!keys || !sizes) {
            rc = KV_ENOMEM;
        } else {
            for (size_t i = 0; i < n; i++) {
                keys[i] = c.v[i]->key; /* borrowed under the lock: packed before unlocking */
                sizes[i] = c.v[i]->size;
            }
            Kvstash__ListResp r = KVSTASH__LIST_RESP__INIT;
            r.n_keys = n;
            r.keys = keys;
            r.n_sizes = n;
            r.sizes = sizes;
            rc = reply(resp, &r.base);
        }
        kv_free(keys);
        kv_free(sizes);
    }
    pthread_mutex_unlock(&m->lock);
    kv_free(c.v);
    kv_rpc_pb_free(&in->base);
    return rc;
}

static int h_stat(struct kv_master *m, struct kv_buf *resp)
{
    char *js = kv_master_cluster_json(m);
    if (!js)
        return KV_ENOMEM;
    Kvstash__StatResp r = KVSTASH__STAT_RESP__INIT;
    r.json = js;
    int rc = reply(resp, &r.base);
    kv_free(js);
    return rc;
}

/* ---- handlers: nodes ---- */

static int cmp_nobj_off(const void *a, const void *b)
{
    const Kvstash__NodeObject *x = *(Kvstash__NodeObject *const *)a;
    const Kvstash__NodeObject *y = *(Kvstash__NodeObject *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Merges one reported object into the index. Returns false when rejected. */
static bool mount_merge(struct kv_master *m, struct mnode *n, const Kvstash__NodeObject *x,
                        int64_t wall)
{
    if (!key_ok(x->key) || (x->expire_at_ms && x->expire_at_ms <= wall))
        return false;
    bool dram = x->tier == KVSTASH__TIER__TIER_DRAM;
    if (dram && kv_segalloc_reserve(n->alloc, x->offset, x->size ? x->size : 1) < 0)
        return false;
    struct mobj *o = kv_smap_get(&m->index, x->key);
    if (o) {
        int ri = rep_find(o, n);
        bool same = o->state == OBJ_COMPLETE && o->size == x->size && o->checksum == x->checksum;
        if (!same || (ri < 0 && o->nrep == KV_STORE_MAX_REPLICAS) ||
            (ri >= 0 && ((dram && o->rep[ri].dram) || (!dram && o->rep[ri].ssd)))) {
            if (dram)
                kv_segalloc_free(n->alloc, x->offset);
            return false;
        }
        if (ri < 0) {
            ri = o->nrep++;
            memset(&o->rep[ri], 0, sizeof(o->rep[ri]));
            o->rep[ri].node = n;
        }
        if (dram) {
            o->rep[ri].dram = true;
            o->rep[ri].off = x->offset;
        } else {
            o->rep[ri].ssd = true;
        }
        return true;
    }
    o = kv_calloc(1, sizeof(*o));
    if (!o || !(o->key = kv_strdup(x->key)) || kv_smap_put(&m->index, o->key, o) < 0) {
        if (o)
            kv_free(o->key);
        kv_free(o);
        if (dram)
            kv_segalloc_free(n->alloc, x->offset);
        return false;
    }
    o->size = x->size;
    o->checksum = x->checksum;
    o->state = OBJ_COMPLETE;
    o->pin = x->pin;
    o->created_wall = x->created_ms;
    o->expire_wall = x->expire_at_ms;
    o->ttl_s = m->expire_s;
    if (x->expire_at_ms) {
        int64_t left = (x->expire_at_ms - wall) / 1000;
        o->ttl_s = left > 0 && left < UINT32_MAX ? (uint32_t)left : m->expire_s;
    } else {
        o->expire_wall = wall + (int64_t)m->expire_s * 1000;
    }
    o->nrep = 1;
    o->rep[0].node = n;
    o->rep[0].dram = dram;
    o->rep[0].ssd = !dram;
    o->rep[0].off = dram ? x->offset : 0;
    lru_push(m, o);
    return true;
}

/* Merges a MOUNT's objects (sorted by offset) into the index for node n; rejected ones are
 * forgotten by the node (NODE_FREE of the key only: our allocator has no range for them).
 * Caller holds m->lock. */
static void mount_objects(struct kv_master *m, struct mnode *n, Kvstash__NodeObject **sorted,
                          size_t cnt)
{
    int64_t wall = kv_wall_ms();
    for (size_t i = 0; i < cnt; i++) {
        const Kvstash__NodeObject *x = sorted[i];
        if (mount_merge(m, n, x, wall)) {
            n->mount_ok++;
        } else {
            n->mount_rejected++;
            bool dram = x->tier == KVSTASH__TIER__TIER_DRAM;
            if (key_ok(x->key))
                defer_free(m, n, x->key, x->offset, 0, dram, !dram, true, x->created_ms, 0);
        }
    }
}

/* A later part of a MOUNT in parts (in->part): adds its objects to the node being mounted. */
static int h_mount_part(struct kv_master *m, Kvstash__MountReq *in, Kvstash__NodeObject **sorted,
                        struct kv_buf *resp)
{
    pthread_mutex_lock(&m->lock);
    struct mnode *n = in->node_id ? node_find(m, in->node_id) : NULL;
    if (!n || !n->mounting) {
        pthread_mutex_unlock(&m->lock);
        KV_LOGW("MOUNT part from node %s rejected: no mount of it under way (mount again)",
                in->node_id ? in->node_id : "?");
        return KV_EINVAL;
    }
    mount_objects(m, n, sorted, in->n_objects);
    n->last_hb_ms = kv_now_ms();
    n->mounting = in->more;
    uint64_t epoch = m->epoch;
    size_t ok = n->mount_ok, rejected = n->mount_rejected;
    pthread_mutex_unlock(&m->lock);
    if (!in->more)
        KV_LOGI("node %s mounted (in parts): %zu objects indexed, %zu rejected", in->node_id, ok,
                rejected);
    Kvstash__MountResp r = KVSTASH__MOUNT_RESP__INIT;
    r.epoch = epoch;
    return reply(resp, &r.base);
}

static int h_mount(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    Kvstash__MountReq *in;
    int rc = kv_rpc_pb_unpack(&kvstash__mount_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    struct mnode *n = NULL;
    Kvstash__NodeObject **sorted = kv_calloc(in->n_objects + 1, sizeof(*sorted));
    if (!sorted)
        goto out_nomem;
    if (in->n_objects) {
        memcpy(sorted, in->objects, in->n_objects * sizeof(*sorted));
        qsort(sorted, in->n_objects, sizeof(*sorted), cmp_nobj_off);
    }
    if (in->part) {
        rc = h_mount_part(m, in, sorted, resp);
        goto out;
    }
    if (!in->node_id || !*in->node_id || !in->segment || !*in->segment || !in->rpc_addr ||
        in->size < KV_SEGALLOC_GRAN) {
        KV_LOGW("MOUNT rejected: missing node id, segment, rpc address or size");
        rc = KV_EINVAL;
        goto out;
    }
    n = kv_calloc(1, sizeof(*n));
    if (!n)
        goto out_nomem;
    n->refs = 1;
    n->id = kv_strdup(in->node_id);
    n->segment = kv_strdup(in->segment);
    n->host_id = kv_strdup(in->host_id ? in->host_id : "");
    n->rpc_addr = kv_strdup(in->rpc_addr);
    if (!n->id || !n->segment || !n->host_id || !n->rpc_addr)
        goto out_nomem;
    rc = kv_rpc_client_create(in->rpc_addr, 2000, &n->rpc);
    if (rc == KV_OK)
        rc = kv_segalloc_create(in->size, &n->alloc);
    if (rc < 0) {
        KV_LOGW("MOUNT of node %s rejected: rpc address '%s' or size: %s", in->node_id,
                in->rpc_addr, kv_strerror(rc));
        goto out;
    }
    n->size = in->size;
    n->ssd_capacity = in->ssd_capacity;
    n->ssd_used = in->ssd_used;
    n->last_hb_ms = kv_now_ms();
    n->mounting = in->more;
    pthread_mutex_lock(&m->lock);
    struct mnode *old = node_find(m, in->node_id);
    if (old)
        node_remove(m, old, "mounted again");
    mount_objects(m, n, sorted, in->n_objects);
    size_t ok = n->mount_ok, rejected = n->mount_rejected;
    n->next = m->nodes;
    m->nodes = n;
    m->nnodes++;
    n->refs++; /* the node list's reference; ours is dropped below */
    uint64_t epoch = m->epoch;
    pthread_mutex_unlock(&m->lock);
    KV_LOGI("node %s mounted%s: segment %s, %llu bytes DRAM, SSD %llu/%llu, rpc %s; %zu objects "
            "indexed, %zu rejected",
            n->id, in->more ? " (first part; more follow)" : "", n->segment,
            (unsigned long long)n->size, (unsigned long long)n->ssd_used,
            (unsigned long long)n->ssd_capacity, n->rpc_addr, ok, rejected);
    Kvstash__MountResp r = KVSTASH__MOUNT_RESP__INIT;
    r.epoch = epoch;
    rc = reply(resp, &r.base);
    goto out;
out_nomem:
    rc = KV_ENOMEM;
out:
    if (n) {
        pthread_mutex_lock(&m->lock);
        node_unref(n);
        pthread_mutex_unlock(&m->lock);
    }
    kv_free(sorted);
    kv_rpc_pb_free(&in->base);
    return rc;
}

static int h_heartbeat(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    Kvstash__HeartbeatReq *in;
    int rc =
        kv_rpc_pb_unpack(&kvstash__heartbeat_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&m->lock);
    struct mnode *n = in->node_id ? node_find(m, in->node_id) : NULL;
    if (n) {
        n->last_hb_ms = kv_now_ms();
        n->ssd_used = in->ssd_used;
    }
    uint64_t epoch = m->epoch;
    pthread_mutex_unlock(&m->lock);
    kv_rpc_pb_free(&in->base);
    if (!n)
        return KV_ENOENT;
    Kvstash__MountResp r = KVSTASH__MOUNT_RESP__INIT;
    r.epoch = epoch;
    return reply(resp, &r.base);
}

int kv_master_handle(void *ud, uint16_t method, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    struct kv_master *m = ud;
    switch (method) {
    case KV_RPC_HELLO:
    case KV_RPC_PUT_START:
    case KV_RPC_PUT_END:
    case KV_RPC_GET:
    case KV_RPC_EXISTS:
    case KV_RPC_REMOVE:
    case KV_RPC_LIST:
    case KV_RPC_STAT:
    case KV_RPC_MOUNT:
    case KV_RPC_HEARTBEAT:
        break;
    default:
        return KV_ENOTSUP;
    }
    if (!atomic_load(&m->leader))
        return not_leader(m, resp);
    int rc;
    switch (method) {
    case KV_RPC_HELLO:
        rc = h_hello(m, req, len, resp);
        break;
    case KV_RPC_PUT_START:
        rc = h_put_start(m, req, len, resp);
        break;
    case KV_RPC_PUT_END:
        rc = h_put_end(m, req, len, resp);
        break;
    case KV_RPC_GET:
        rc = h_get(m, req, len, resp);
        break;
    case KV_RPC_EXISTS:
        rc = h_exists_remove(m, false, req, len, resp);
        break;
    case KV_RPC_REMOVE:
        rc = h_exists_remove(m, true, req, len, resp);
        break;
    case KV_RPC_LIST:
        rc = h_list(m, req, len, resp);
        break;
    case KV_RPC_STAT:
        rc = h_stat(m, resp);
        break;
    case KV_RPC_MOUNT:
        rc = h_mount(m, req, len, resp);
        break;
    default:
        rc = h_heartbeat(m, req, len, resp);
        break;
    }
    if (rc == KV_EPROTO)
        KV_LOGW_RL(5000, "%s: malformed request payload", kv_rpc_method_name(method));
    return rc;
}

/* ---- stats ---- */

char *kv_master_cluster_json(struct kv_master *m)
{
    json_t *root = json_object();
    json_t *nodes = json_array();
    if (!root || !nodes) {
        json_decref(root);
        json_decref(nodes);
        return NULL;
    }
    pthread_mutex_lock(&m->lock);
    uint64_t cap = 0, used = 0, ssd_cap = 0, ssd_used = 0;
    for (struct mnode *n = m->nodes; n; n = n->next) {
        json_t *j = json_object();
        json_object_set_new(j, "id", json_string(n->id));
        json_object_set_new(j, "segment", json_string(n->segment));
        json_object_set_new(j, "rpc_addr", json_string(n->rpc_addr));
        json_object_set_new(j, "host", json_string(n->host_id));
        json_object_set_new(j, "capacity", json_integer((json_int_t)n->size));
        json_object_set_new(j, "used", json_integer((json_int_t)kv_segalloc_used(n->alloc)));
        json_object_set_new(j, "ssd_capacity", json_integer((json_int_t)n->ssd_capacity));
        json_object_set_new(j, "ssd_used", json_integer((json_int_t)n->ssd_used));
        json_array_append_new(nodes, j);
        cap += n->size;
        used += kv_segalloc_used(n->alloc);
        ssd_cap += n->ssd_capacity;
        ssd_used += n->ssd_used;
    }
    json_object_set_new(root, "master_id", json_string(m->id));
    json_object_set_new(root, "leader", json_boolean(atomic_load(&m->leader)));
    json_object_set_new(root, "epoch", json_integer((json_int_t)m->epoch));
    json_object_set_new(root, "cluster", json_string(m->cluster));
    json_object_set_new(root, "nodes", nodes);
    json_object_set_new(root, "capacity", json_integer((json_int_t)cap));
    json_object_set_new(root, "used", json_integer((json_int_t)used));
    json_object_set_new(root, "ssd_capacity", json_integer((json_int_t)ssd_cap));
    json_object_set_new(root, "ssd_used", json_integer((json_int_t)ssd_used));
    json_object_set_new(root, "objects", json_integer((json_int_t)m->index.n));
    json_object_set_new(root, "hits", json_integer((json_int_t)m->hits));
    json_object_set_new(root, "misses", json_integer((json_int_t)m->misses));
    json_object_set_new(root, "evictions", json_integer((json_int_t)m->evictions));
    json_object_set_new(root, "demotions", json_integer((json_int_t)m->demotions));
    json_object_set_new(root, "promotions", json_integer((json_int_t)m->promotions));
    json_object_set_new(root, "expired", json_integer((json_int_t)m->expired));
    json_object_set_new(root, "puts", json_integer((json_int_t)m->puts));
    json_object_set_new(root, "gets", json_integer((json_int_t)m->gets));
    json_object_set_new(root, "errors", json_integer((json_int_t)m->errors));
    pthread_mutex_unlock(&m->lock);
    char *s = kv_json_dump(root);
    json_decref(root);
    return s;
}

int kv_master_metrics(struct kv_master *m, struct kv_buf *b)
{
    pthread_mutex_lock(&m->lock);
    uint64_t cap = 0, used = 0, ssd_used = 0;
    for (struct mnode *n = m->nodes; n; n = n->next) {
        cap += n->size;
        used += kv_segalloc_used(n->alloc);
        ssd_used += n->ssd_used;
    }
    struct {
        const char *name, *type, *help;
        uint64_t v;
    } rows[] = {
        {"leader", "gauge", "1 if this master is the leader", atomic_load(&m->leader) ? 1u : 0u},
        {"epoch", "gauge", "leader epoch", m->epoch},
        {"nodes", "gauge", "mounted storage nodes", (uint64_t)m->nnodes},
        {"capacity_bytes", "gauge", "DRAM capacity of all nodes", cap},
        {"used_bytes", "gauge", "DRAM bytes allocated", used},
        {"ssd_used_bytes", "gauge", "SSD bytes used", ssd_used},
        {"objects", "gauge", "objects in the index", m->index.n},
        {"hits", "counter", "gets that found the key", m->hits},
        {"misses", "counter", "gets that missed", m->misses},
        {"evictions", "counter", "replicas dropped by eviction", m->evictions},
        {"demotions", "counter", "replicas moved from DRAM to SSD", m->demotions},
        {"promotions", "counter", "replicas read back from SSD to DRAM", m->promotions},
        {"expired", "counter", "objects removed by TTL", m->expired},
        {"puts", "counter", "completed puts", m->puts},
        {"gets", "counter", "get requests (keys)", m->gets},
        {"errors", "counter", "failed operations", m->errors},
    };
    pthread_mutex_unlock(&m->lock);
    int rc = KV_OK;
    for (size_t i = 0; i < KV_ARRAY_SIZE(rows) && rc == KV_OK; i++)
        rc = kv_buf_appendf(b,
                            "# HELP kvstash_store_%s %s\n# TYPE kvstash_store_%s %s\n"
                            "kvstash_store_%s %llu\n",
                            rows[i].name, rows[i].help, rows[i].name, rows[i].type, rows[i].name,
                            (unsigned long long)rows[i].v);
    return rc;
}

/* ---- lifecycle ---- */

static void *maint_main(void *arg)
{
    struct kv_master *m = arg;
    while (!atomic_load(&m->stopping)) {
        pthread_mutex_lock(&m->wake_lock);
        if (!m->wake_flag) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += (long)m->evict_ms * 1000000L;
            while (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&m->wake_cond, &m->wake_lock, &ts);
        }
        m->wake_flag = false;
        pthread_mutex_unlock(&m->wake_lock);
        if (atomic_load(&m->stopping))
            break;
        kv_master_maintain_now(m, false);
    }
    return NULL;
}

static char *dup_or(const char *s, const char *def)
{
    return kv_strdup(s && *s ? s : def);
}

int kv_master_start(const struct kv_master_opts *o, struct kv_master **out)
{
    if (!o || !out || !o->metadata)
        return KV_EINVAL;
    struct kv_master *m = kv_calloc(1, sizeof(*m));
    if (!m)
        return KV_ENOMEM;
    int rc = KV_ENOMEM;
    char idbuf[64];
    snprintf(idbuf, sizeof(idbuf), "master-%08llx",
             (unsigned long long)((uint64_t)kv_now_ns() * 0x9E3779B97F4A7C15ull >> 32));
    m->id = dup_or(o->id, idbuf);
    m->cluster = dup_or(o->cluster, "default");
    m->metadata = kv_strdup(o->metadata);
    m->adv_meta = dup_or(o->advertise_metadata, o->metadata);
    if (!m->id || !m->cluster || !m->metadata || !m->adv_meta)
        goto out_free;
    m->expire_s = o->kv_expire_time_s ? o->kv_expire_time_s : 86400;
    m->cleanup_ms = o->cleanup_interval_ms ? o->cleanup_interval_ms : 3600000;
    m->put_timeout_ms = o->put_timeout_ms ? o->put_timeout_ms : 30000;
    m->lease_ms = o->lease_ms ? o->lease_ms : 5000;
    m->node_timeout_ms = o->node_timeout_ms ? o->node_timeout_ms : 5000;
    m->evict_ms = o->evict_interval_ms ? o->evict_interval_ms : 100;
    m->high_wm = o->high_watermark > 0 ? o->high_watermark : 0.95;
    m->low_wm = o->low_watermark > 0 ? o->low_watermark : 0.85;
    m->leader_ttl_s = o->leader_ttl_s > 0 ? o->leader_ttl_s : 3;
    if (m->low_wm > m->high_wm || m->high_wm > 1.0) {
        KV_LOGE("watermarks: need 0 < low (%.2f) <= high (%.2f) <= 1", m->low_wm, m->high_wm);
        rc = KV_EINVAL;
        goto out_free;
    }
    snprintf(m->leader_key, sizeof(m->leader_key), "/kvstash/%s/masters/leader", m->cluster);
    snprintf(m->epoch_key, sizeof(m->epoch_key), "/kvstash/%s/masters/epoch", m->cluster);
    m->rng = (uint64_t)kv_now_ns() | 1;
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->evict_lock, NULL);
    pthread_mutex_init(&m->wake_lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    pthread_cond_init(&m->wake_cond, NULL);
    kv_smap_init(&m->index);
    m->lru.lru_next = m->lru.lru_prev = &m->lru;
    m->last_ttl_sweep = kv_now_ms();
    atomic_init(&m->leader, false);
    atomic_init(&m->stopping, false);
    atomic_init(&m->lease_lost, false);

    rc = kv_meta_open(o->metadata, NULL, &m->meta);
    if (rc < 0) {
        KV_LOGE("metadata %s: %s", o->metadata, kv_strerror(rc));
        goto out_locks;
    }
    const char *addr = o->rpc_addr ? o->rpc_addr : KV_STORE_DEFAULT_RPC;
    struct kv_rpc_server_opts so = {.addr = addr,
                                    .handler = kv_master_handle,
                                    .ud = m,
                                    .io_threads = KV_RPC_DEF_IO_THREADS,
                                    .workers = KV_RPC_DEF_WORKERS};
    rc = kv_rpc_server_start(&so, &m->rpc);
    if (rc < 0) {
        KV_LOGE("cannot listen for RPC on %s: %s", addr, kv_strerror(rc));
        goto out_meta;
    }
    char host[256];
    uint16_t port;
    kv_parse_hostport(addr, host, sizeof(host), &port);
    const char *adv = o->advertise_host ? o->advertise_host : host;
    if (strcmp(adv, "0.0.0.0") == 0 || !*adv)
        adv = "127.0.0.1";
    snprintf(m->rpc_addr, sizeof(m->rpc_addr), "%s:%u", adv, kv_rpc_server_port(m->rpc));
    if (o->admin_addr && strcmp(o->admin_addr, "off") != 0) {
        rc = kv_master_admin_start(m, o->admin_addr);
        if (rc < 0) {
            KV_LOGE("cannot serve admin HTTP on %s: %s", o->admin_addr, kv_strerror(rc));
            goto out_rpc;
        }
    }
    if (pthread_create(&m->maint_thread, NULL, maint_main, m) != 0) {
        rc = KV_ENOMEM;
        goto out_admin;
    }
    rc = kv_master_campaign_start(m);
    if (rc < 0)
        goto out_maint;
    KV_LOGI("master %s: RPC on %s, admin %s, metadata %s (cluster %s)", m->id, m->rpc_addr,
            m->admin_port ? m->admin_addr : "off", m->metadata, m->cluster);
    *out = m;
    return KV_OK;
out_maint:
    atomic_store(&m->stopping, true);
    pthread_join(m->maint_thread, NULL);
out_admin:
    kv_master_admin_stop(m);
out_rpc:
    kv_rpc_server_stop(m->rpc);
out_meta:
    kv_meta_close(m->meta);
out_locks:
    kv_smap_fini(&m->index);
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->evict_lock);
    pthread_mutex_destroy(&m->wake_lock);
    pthread_cond_destroy(&m->cond);
    pthread_cond_destroy(&m->wake_cond);
out_free:
    kv_free(m->id);
    kv_free(m->cluster);
    kv_free(m->metadata);
    kv_free(m->adv_meta);
    kv_free(m);
    return rc;
}

void kv_master_stop(struct kv_master *m)
{
    if (!m)
        return;
    atomic_store(&m->stopping, true);
    kv_master_campaign_stop(m); /* resigns: the leader key goes at once */
    kv_rpc_server_stop(m->rpc);
    pthread_mutex_lock(&m->wake_lock);
    m->wake_flag = true;
    pthread_cond_broadcast(&m->wake_cond);
    pthread_mutex_unlock(&m->wake_lock);
    pthread_join(m->maint_thread, NULL);
    kv_master_admin_stop(m);
    atomic_store(&m->leader, false);
    kv_master_reset(m);
    while (m->dfree) {
        struct dfree *d = m->dfree;
        m->dfree = d->next;
        kv_free(d->key);
        node_unref(d->node);
        kv_free(d);
    }
    kv_meta_close(m->meta);
    kv_smap_fini(&m->index);
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->evict_lock);
    pthread_mutex_destroy(&m->wake_lock);
    pthread_cond_destroy(&m->cond);
    pthread_cond_destroy(&m->wake_cond);
    KV_LOGI("master %s stopped", m->id);
    kv_free(m->id);
    kv_free(m->cluster);
    kv_free(m->metadata);
    kv_free(m->adv_meta);
    kv_free(m);
}

const char *kv_master_rpc_addr(const struct kv_master *m)
{
    return m->rpc_addr;
}

uint16_t kv_master_admin_port(const struct kv_master *m)
{
    return m->admin_port;
}

const char *kv_master_id(const struct kv_master *m)
{
    return m->id;
}

bool kv_master_is_leader(struct kv_master *m)
{
    return atomic_load(&m->leader);
}

int kv_master_wait_leader(struct kv_master *m, int timeout_ms)
{
    int64_t end = kv_now_ms() + timeout_ms;
    while (!atomic_load(&m->leader)) {
        if (kv_now_ms() >= end)
            return KV_ETIMEDOUT;
        kv_sleep_ms(10);
    }
    return KV_OK;
}

int kv_master_stat_json(struct kv_master *m, char **json)
{
    char *s = kv_master_cluster_json(m);
    if (!s)
        return KV_ENOMEM;
    *json = s;
    return KV_OK;
}

uint64_t kv_master_object_count(struct kv_master *m)
{
    pthread_mutex_lock(&m->lock);
    uint64_t n = m->index.n;
    pthread_mutex_unlock(&m->lock);
    return n;
}

int kv_master_node_count(struct kv_master *m)
{
    pthread_mutex_lock(&m->lock);
    int n = m->nnodes;
    pthread_mutex_unlock(&m->lock);
    return n;
}

int kv_master_key_info(struct kv_master *m, const char *key, int *nrep, int *ndram, int *nssd)
{
    pthread_mutex_lock(&m->lock);
    struct mobj *o = kv_smap_get(&m->index, key);
    int rc = KV_ENOENT;
    if (o && o->state == OBJ_COMPLETE) {
        int d = 0, s = 0;
        for (int i = 0; i < o->nrep; i++) {
            d += o->rep[i].dram;
            s += o->rep[i].ssd;
        }
        if (nrep)
            *nrep = o->nrep;
        if (ndram)
            *ndram = d;
        if (nssd)
            *nssd = s;
        rc = KV_OK;
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}
