/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_node.c - the RPC handlers of storage nodes (MOUNT in parts, HEARTBEAT) and calls to
 * nodes.
 *
 * Design: a node reports every object it holds when it mounts, in parts; the master reserves
 * each DRAM range in the node's allocator and merges the object into the index (a second
 * replica of a known object grows it). Until its last part the node takes no new objects and is
 * not evicted from. Design, states and invariants of the master: master.c.
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
#include "store/mount_pack.h"

#define NODE_RPC_TIMEOUT_MS 5000

int mst_call_node(struct mnode *n, uint16_t method, const ProtobufCMessage *req,
                  const ProtobufCMessageDescriptor *rd, ProtobufCMessage **resp)
{
    int rc = kv_rpc_call_pb(n->rpc, method, req, rd, resp, NODE_RPC_TIMEOUT_MS, NULL, 0);
    if (rc < 0)
        KV_LOGW_RL(2000, "%s to node %s (%s): %s", kv_rpc_method_name(method), n->id, n->rpc_addr,
                   kv_strerror(rc));
    return rc;
}

/* The order the master indexes a mount in, and the one nodes send: DRAM objects by offset (each
 * reserve then starts where the last one ended), then SSD objects. */
static int cmp_mount_order(const Kvstash__NodeObject *x, const Kvstash__NodeObject *y)
{
    bool xd = x->tier == KVSTASH__TIER__TIER_DRAM, yd = y->tier == KVSTASH__TIER__TIER_DRAM;
    if (xd != yd)
        return xd ? -1 : 1;
    if (!xd)
        return 0;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int cmp_mount_order_p(const void *a, const void *b)
{
    return cmp_mount_order(*(Kvstash__NodeObject *const *)a, *(Kvstash__NodeObject *const *)b);
}

/* Merges one reported object into the index. Returns false when rejected. */
static bool mount_merge(struct kv_master *m, struct mnode *n, const Kvstash__NodeObject *x,
                        int64_t wall)
{
    if (!key_ok(x->key) || (x->expire_at_ms && x->expire_at_ms <= wall))
        return false;
    bool dram = x->tier == KVSTASH__TIER__TIER_DRAM;
    kv_segblk blk = 0;
    if (dram && kv_segalloc_reserve(n->alloc, x->offset, x->size ? x->size : 1, &blk) < 0)
        return false;
    uint32_t h = kv_oidx_hash(x->key);
    struct mobj *o = kv_oidx_get_h(&m->index, x->key, h);
    if (o) {
        int ri = rep_find(o, n);
        bool same = o->state == OBJ_COMPLETE && o->size == x->size && o->checksum == x->checksum;
        if (same && ri < 0)
            o = mst_obj_grow(m, o);
        if (!same || !o ||
            (ri >= 0 && ((dram && obj_rep(o)[ri].dram) || (!dram && obj_rep(o)[ri].ssd)))) {
            if (dram)
                kv_segalloc_free(n->alloc, blk);
            return false;
        }
        if (ri < 0) {
            ri = o->nrep++;
            memset(&obj_rep(o)[ri], 0, sizeof(struct mrep));
            obj_rep(o)[ri].node = n;
        }
        if (dram) {
            obj_rep(o)[ri].dram = true;
            obj_rep(o)[ri].blk = blk;
        } else {
            obj_rep(o)[ri].ssd = true;
        }
        return true;
    }
    o = mst_obj_new(&m->slab, x->key, 1);
    if (!o) {
        if (dram)
            kv_segalloc_free(n->alloc, blk);
        return false;
    }
    /* every field is set before the object is in the index (lookups: kv_oidx_peek_batch) */
    o->size = x->size;
    o->checksum = x->checksum;
    o->state = OBJ_COMPLETE;
    o->pin = x->pin;
    o->created_wall = x->created_ms;
    o->ttl_s = m->expire_s;
    if (x->expire_at_ms) {
        int64_t left = (x->expire_at_ms - wall) / 1000;
        o->ttl_s = left > 0 && left < UINT32_MAX ? (uint32_t)left : m->expire_s;
        o->expire_q = expire_q_of_ms(x->expire_at_ms);
    } else {
        obj_set_expire(o, wall);
    }
    o->nrep = 1;
    obj_rep(o)[0].node = n;
    obj_rep(o)[0].dram = dram;
    obj_rep(o)[0].ssd = !dram;
    obj_rep(o)[0].blk = blk;
    if (kv_oidx_put_absent(&m->index, o, h) < 0) {
        mst_obj_free(&m->slab, o);
        if (dram)
            kv_segalloc_free(n->alloc, blk);
        return false;
    }
    lru_push(m, o);
    return true;
}

/* The objects of one MOUNT in mount order: pointers (sorted), or, when the node sent packed
 * records only, already in order, the records themselves, decoded one at a time. */
struct mount_src {
    Kvstash__NodeObject **sorted;
    const uint8_t *packed, *packed_end;
    size_t cnt;
};

static void mount_one(struct kv_master *m, struct mnode *n, const Kvstash__NodeObject *x,
                      int64_t wall)
{
    if (mount_merge(m, n, x, wall)) {
        n->mount_ok++;
    } else {
        n->mount_rejected++;
        bool dram = x->tier == KVSTASH__TIER__TIER_DRAM;
        if (key_ok(x->key))
            mst_defer_free(m, n, x->key, x->offset, 0, dram, !dram, true, x->created_ms, 0);
    }
}

/* Merges a MOUNT's objects into the index for node n; rejected ones are forgotten by the node
 * (NODE_FREE of the key only: our allocator has no range for them). Caller holds m->lock. */
static void mount_objects(struct kv_master *m, struct mnode *n, const struct mount_src *src)
{
    int64_t wall = kv_wall_ms();
    if (src->packed) {
        /* the records are in a buffer: look PF_FAR records ahead to prefetch their home slots,
         * PF_NEAR ahead for the objects the slots point at */
        enum { PF_FAR = 16, PF_NEAR = 8 };
        const uint8_t *end = src->packed_end, *far = src->packed, *near = src->packed;
        for (int k = 0; k < PF_FAR && far < end; k++) {
            kv_oidx_prefetch(&m->index, kv_oidx_hash((const char *)far + KV_MOUNT_REC_FIXED),
                             false);
            far += kv_mount_rec_len(far);
        }
        for (int k = 0; k < PF_NEAR && near < end; k++)
            near += kv_mount_rec_len(near);
        Kvstash__NodeObject x;
        for (const uint8_t *p = src->packed; p < end;) {
            if (far < end) {
                kv_oidx_prefetch(&m->index, kv_oidx_hash((const char *)far + KV_MOUNT_REC_FIXED),
                                 false);
                far += kv_mount_rec_len(far);
            }
            if (near < end) {
                kv_oidx_prefetch(&m->index, kv_oidx_hash((const char *)near + KV_MOUNT_REC_FIXED),
                                 true);
                near += kv_mount_rec_len(near);
            }
            p += kv_mount_decode(p, &x);
            mount_one(m, n, &x, wall);
        }
        return;
    }
    for (size_t i = 0; i < src->cnt; i++)
        mount_one(m, n, src->sorted[i], wall);
}

/* A later part of a MOUNT in parts (in->part): adds its objects to the node being mounted. */
static int h_mount_part(struct kv_master *m, Kvstash__MountReq *in, const struct mount_src *src,
                        struct kv_buf *resp)
{
    pthread_mutex_lock(&m->lock);
    struct mnode *n = in->node_id ? mst_node_find(m, in->node_id) : NULL;
    if (!n || !n->mounting) {
        pthread_mutex_unlock(&m->lock);
        KV_LOGW("MOUNT part from node %s rejected: no mount of it under way (mount again)",
                in->node_id ? in->node_id : "?");
        return KV_EINVAL;
    }
    mount_objects(m, n, src);
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
    return mst_reply(resp, &r.base);
}

int mst_h_mount(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    Kvstash__MountReq *in;
    int rc = kv_rpc_pb_unpack(&kvstash__mount_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    struct mnode *n = NULL;
    Kvstash__NodeObject *packed = NULL, **sorted = NULL;
    struct mount_src src = {0};
    size_t npacked = 0;
    if (in->packed.len) {
        char err[160];
        bool in_order;
        rc = kv_mount_check(in->packed.data, in->packed.len, &npacked, &in_order, err, sizeof(err));
        if (rc == KV_OK && in_order && in->n_objects == 0) {
            src.packed = in->packed.data;
            src.packed_end = in->packed.data + in->packed.len;
            src.cnt = npacked;
        } else if (rc == KV_OK) {
            rc = kv_mount_unpack(in->packed.data, in->packed.len, &packed, &npacked, err,
                                 sizeof(err));
        }
        if (rc < 0) {
            if (rc == KV_EPROTO)
                KV_LOGW("MOUNT from node %s rejected: %s", in->node_id ? in->node_id : "?", err);
            goto out;
        }
    }
    if (!src.packed) {
        /* objects (repeated messages) and packed records: one list, in mount order */
        size_t cnt = in->n_objects + npacked;
        sorted = kv_malloc((cnt + 1) * sizeof(*sorted));
        if (!sorted)
            goto out_nomem;
        bool in_order = true;
        for (size_t i = 0; i < cnt; i++) {
            sorted[i] = i < in->n_objects ? in->objects[i] : &packed[i - in->n_objects];
            if (i && in_order && cmp_mount_order(sorted[i - 1], sorted[i]) > 0)
                in_order = false;
        }
        if (!in_order)
            qsort(sorted, cnt, sizeof(*sorted), cmp_mount_order_p);
        src.sorted = sorted;
        src.cnt = cnt;
    }
    if (in->total && !in->part) {
        pthread_mutex_lock(&m->lock);
        kv_oidx_reserve(&m->index, m->index.n + in->total);
        pthread_mutex_unlock(&m->lock);
    }
    if (in->part) {
        rc = h_mount_part(m, in, &src, resp);
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
    n->cq_tail = &n->cq_head;
    n->id = kv_strdup(in->node_id);
    n->segment = kv_strdup(in->segment);
    n->host_id = kv_strdup(in->host_id ? in->host_id : "");
    n->rpc_addr = kv_strdup(in->rpc_addr);
    if (!n->id || !n->segment || !n->host_id || !n->rpc_addr)
        goto out_nomem;
    rc = kv_rpc_client_create(in->rpc_addr, 2000, &n->rpc);
    if (rc == KV_OK) {
        kv_rpc_client_set_poll_spin(n->rpc, m->poll_spin_us); /* NODE_COMMIT answers */
        rc = kv_segalloc_create(in->size, &n->alloc);
    }
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
    n->local = kv_rpc_local_has(n->rpc_addr);
    /* a node that served an older leader waits out its fence (master_ha.c) */
    n->fence_until = in->last_epoch ? atomic_load(&m->fence_until) : 0;
    int64_t fence_ms = KV_MAX(n->fence_until - kv_now_ms(), 0);
    pthread_mutex_lock(&m->lock);
    if (!mst_leading(m)) { /* deposed since the dispatch */
        pthread_mutex_unlock(&m->lock);
        rc = mst_not_leader(m, resp);
        goto out;
    }
    struct mnode *old = mst_node_find(m, in->node_id);
    if (old)
        mst_node_remove(m, old, "mounted again");
    mount_objects(m, n, &src);
    size_t ok = n->mount_ok, rejected = n->mount_rejected;
    n->next = m->nodes;
    m->nodes = n;
    m->nnodes++;
    n->refs++; /* the node list's reference; ours is dropped below */
    uint64_t epoch = m->epoch;
    pthread_mutex_unlock(&m->lock);
    KV_LOGI("node %s mounted%s: segment %s, %llu bytes DRAM, SSD %llu/%llu, rpc %s; %zu objects "
            "indexed, %zu rejected; it served epoch %llu: no placement on it for %lld ms",
            n->id, in->more ? " (first part; more follow)" : "", n->segment,
            (unsigned long long)n->size, (unsigned long long)n->ssd_used,
            (unsigned long long)n->ssd_capacity, n->rpc_addr, ok, rejected,
            (unsigned long long)in->last_epoch, (long long)fence_ms);
    Kvstash__MountResp r = KVSTASH__MOUNT_RESP__INIT;
    r.epoch = epoch;
    rc = mst_reply(resp, &r.base);
    goto out;
out_nomem:
    rc = KV_ENOMEM;
out:
    if (n) {
        pthread_mutex_lock(&m->lock);
        mst_node_unref(n);
        pthread_mutex_unlock(&m->lock);
    }
    kv_free(sorted);
    kv_free(packed);
    kv_rpc_pb_free(&in->base);
    return rc;
}

int mst_h_heartbeat(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    Kvstash__HeartbeatReq *in;
    int rc =
        kv_rpc_pb_unpack(&kvstash__heartbeat_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&m->lock);
    struct mnode *n = in->node_id ? mst_node_find(m, in->node_id) : NULL;
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
    return mst_reply(resp, &r.base);
}
