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
    kv_segblk blk = 0;
    if (dram && kv_segalloc_reserve(n->alloc, x->offset, x->size ? x->size : 1, &blk) < 0)
        return false;
    struct mobj *o = kv_oidx_get(&m->index, x->key);
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
    o = mst_obj_new(x->key, 1);
    if (!o || kv_oidx_put(&m->index, o) < 0) {
        kv_free(o);
        if (dram)
            kv_segalloc_free(n->alloc, blk);
        return false;
    }
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
                mst_defer_free(m, n, x->key, x->offset, 0, dram, !dram, true, x->created_ms, 0);
        }
    }
}

/* A later part of a MOUNT in parts (in->part): adds its objects to the node being mounted. */
static int h_mount_part(struct kv_master *m, Kvstash__MountReq *in, Kvstash__NodeObject **sorted,
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
    return mst_reply(resp, &r.base);
}

int mst_h_mount(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp)
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
    n->cq_tail = &n->cq_head;
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
    mount_objects(m, n, sorted, in->n_objects);
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
