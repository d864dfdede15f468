/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_client.c - the RPC handlers of store clients: HELLO, PUT_START, PUT_END, PUT (inline
 * values), GET, EXISTS, REMOVE, LIST, STAT, and the group commit of new objects on their nodes.
 * Design, states, invariants and locks of the master: master.c.
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

#define PROMOTE_WAIT_MS 10000

int mst_reply(struct kv_buf *resp, const ProtobufCMessage *msg)
{
    struct kv_buf b;
    kv_buf_init(&b);
    int rc = kv_rpc_pb_pack(msg, &b);
    if (rc == KV_OK)
        rc = kv_buf_append(resp, b.data, b.len);
    kv_buf_fini(&b);
    return rc;
}

int mst_not_leader(struct kv_master *m, struct kv_buf *resp)
{
    Kvstash__NotLeader nl = KVSTASH__NOT_LEADER__INIT;
    char hint[300];
    pthread_mutex_lock(&m->lock);
    memcpy(hint, m->leader_hint, sizeof(hint));
    pthread_mutex_unlock(&m->lock);
    nl.leader_addr = hint;
    nl.leader_id = "";
    mst_reply(resp, &nl.base);
    return KV_EAGAIN;
}

int mst_h_hello(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp)
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
    return mst_reply(resp, &r.base);
}

/* True when no node can take a placement (none mounted, or all mid-MOUNT): a put then fails
 * with KV_ESTORE_NONODE rather than "no space left". Caller holds m->lock; called only on the
 * failure path. */
static bool no_usable_node(const struct kv_master *m)
{
    for (const struct mnode *x = m->nodes; x; x = x->next)
        if (!x->removed && !x->mounting)
            return false;
    return true;
}

/* All n statuses are KV_ESTORE_NONODE (n > 0): the call as a whole answers that, so clients
 * retry it as they do KV_EAGAIN. */
static bool all_nonode(const int32_t *st, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (st[i] != KV_ESTORE_NONODE)
            return false;
    return n > 0;
}

/* Places one item as a PENDING object. slot (may be NULL) gets the replicas for the writer;
 * *out (may be NULL) the object. */
int mst_put_start_one(struct kv_master *m, const Kvstash__PutItem *it, Kvstash__PutSlot *slot,
                      struct mobj **out)
{
    if (!key_ok(it->key))
        return KV_EINVAL;
    int want = it->replicas ? (int)it->replicas : 1;
    if (want > KV_STORE_MAX_REPLICAS)
        return KV_EINVAL;
    uint32_t h = kv_oidx_hash(it->key); /* one hash for the lookup and the insert */
    if (kv_oidx_get_h(&m->index, it->key, h))
        return KV_EEXIST;
    if (want > m->nnodes)
        return no_usable_node(m) ? KV_ESTORE_NONODE : KV_ENOSPC;
    struct mobj *o = mst_obj_new(&m->slab, it->key, want);
    if (!o)
        return KV_ENOMEM;
    int got = mst_place(m, it->size, want, obj_rep(o));
    if (got < want) {
        for (int i = 0; i < got; i++)
            kv_segalloc_free(obj_rep(o)[i].node->alloc, obj_rep(o)[i].blk);
        mst_obj_free(&m->slab, o);
        return no_usable_node(m) ? KV_ESTORE_NONODE : KV_ENOSPC;
    }
    Kvstash__Replica **rs = slot ? kv_calloc((size_t)got, sizeof(*rs)) : NULL;
    Kvstash__Replica *ra = slot ? kv_calloc((size_t)got, sizeof(*ra)) : NULL;
    /* the fields lookups read (kv_oidx_peek_batch) are set before the object is in the index */
    o->nrep = got;
    o->size = it->size;
    o->state = OBJ_PENDING;
    o->pin = it->pin;
    o->ttl_s = it->ttl_s ? it->ttl_s : m->expire_s;
    o->created_wall = kv_wall_ms();
    int64_t deadline = (kv_now_ms() + m->put_timeout_ms + 999) / 1000;
    o->put_deadline_sec = (uint32_t)deadline;
    o->lease_until = deadline * 1000; /* the writer may touch the ranges until then */
    if ((slot && (!rs || !ra)) || kv_oidx_put_absent(&m->index, o, h) < 0) {
        kv_free(rs);
        kv_free(ra);
        for (int i = 0; i < got; i++)
            kv_segalloc_free(obj_rep(o)[i].node->alloc, obj_rep(o)[i].blk);
        mst_obj_free(&m->slab, o);
        return KV_ENOMEM;
    }
    m->npending++;
    list_push(&m->pend, o);
    if (out)
        *out = o;
    if (!slot)
        return KV_OK;
    for (int i = 0; i < got; i++) {
        kvstash__replica__init(&ra[i]);
        ra[i].node_id = kv_strdup(obj_rep(o)[i].node->id);
        ra[i].segment = kv_strdup(obj_rep(o)[i].node->segment);
        ra[i].offset = rep_off(&obj_rep(o)[i]);
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

int mst_h_put_start(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp,
                    bool fast)
{
    Kvstash__PutStartReq *in;
    int rc =
        kv_rpc_pb_unpack(&kvstash__put_start_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    size_t n = in->n_items;
    Kvstash__PutSlot *slots = kv_calloc(n ? n : 1, sizeof(*slots));
    Kvstash__PutSlot **ps = kv_calloc(n ? n : 1, sizeof(*ps));
    int32_t *st = kv_calloc(n ? n : 1, sizeof(*st));
    if (!slots || !ps || !st) {
        rc = KV_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        kvstash__put_slot__init(&slots[i]);
        ps[i] = &slots[i];
    }
    if (fast) {
        rc = mst_place_items_now(m, in->items, n, st, slots, NULL, false);
        if (rc == KV_RPC_SLOW) {
            free_slots(slots, n);
            goto out;
        }
    } else {
        mst_place_items(m, in->items, n, st, slots, NULL);
    }
    if (all_nonode(st, n)) {
        rc = KV_ESTORE_NONODE;
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        slots[i].status = st[i];
    Kvstash__PutStartResp r = KVSTASH__PUT_START_RESP__INIT;
    r.n_slots = n;
    r.slots = ps;
    rc = mst_reply(resp, &r.base);
    free_slots(slots, n);
out:
    kv_free(slots);
    kv_free(ps);
    kv_free(st);
    kv_rpc_pb_free(&in->base);
    return rc;
}

/* ---- group commit ----
 *
 * A PutEnd tells each replica's node about its objects (NODE_COMMIT) before it answers, so an
 * acknowledged put survives the leader's death. Concurrent PutEnds share those round trips: each
 * queues one commit_req per node on the node's queue and waits; a waiter that finds a node's
 * queue non-empty with fewer than COMMIT_INFLIGHT commits in flight becomes the leader of a
 * batch, takes the whole queue (up to COMMIT_BATCH_MAX objects) and sends it as one NODE_COMMIT,
 * then wakes everyone whose request it carried. Under load one round trip commits the puts of
 * many clients, and many puts are in flight per node; alone, a put pays one round trip as before.
 * The queue and the done flags are guarded by m->lock; waiters sleep on m->commit_cond. */

#define COMMIT_INFLIGHT 2

#define COMMIT_BATCH_MAX 8192

#define COMMIT_BYTES_MAX (16u << 20)

struct commit_req {
    struct mnode *node;
    Kvstash__NodeObject **objs; /* borrowed from the waiting PutEnd until done */
    size_t n;
    size_t bytes;    /* inline data carried */
    int rc;          /* the NODE_COMMIT's result (valid when done) */
    int32_t *status; /* n per-object statuses (caller-owned) */
    bool done;
    struct commit_req *next;
};

/* Sends one batch from n's queue. Called with the lock held and n->cq non-empty; returns with it
 * held. */
static void commit_lead(struct kv_master *m, struct mnode *n)
{
    struct commit_req *batch = n->cq_head, *last = batch;
    size_t total = batch->n, bytes = batch->bytes;
    while (last->next && total + last->next->n <= COMMIT_BATCH_MAX &&
           bytes + last->next->bytes <= COMMIT_BYTES_MAX) {
        last = last->next;
        total += last->n;
        bytes += last->bytes;
    }
    n->cq_head = last->next;
    if (!n->cq_head)
        n->cq_tail = &n->cq_head;
    last->next = NULL;
    n->cq_inflight++;
    n->refs++;
    uint64_t epoch = m->epoch;
    pthread_mutex_unlock(&m->lock);

    /* deposed since the put was placed: commit nothing more (the client is not acknowledged) */
    int rc = mst_leading(m) ? KV_OK : KV_EAGAIN;
    Kvstash__NodeObject **all = batch->objs;
    if (rc == KV_OK && batch->next) { /* several requests: one array for the message */
        all = kv_malloc(total * sizeof(*all));
        if (all) {
            size_t k = 0;
            for (struct commit_req *r = batch; r; r = r->next)
                for (size_t j = 0; j < r->n; j++)
                    all[k++] = r->objs[j];
        } else {
            rc = KV_ENOMEM;
        }
    }
    Kvstash__StatusList *sl = NULL;
    if (rc == KV_OK) {
        Kvstash__ObjectsReq oreq = KVSTASH__OBJECTS_REQ__INIT;
        oreq.epoch = epoch;
        oreq.n_objects = total;
        oreq.objects = all;
        rc = mst_call_node(n, KV_RPC_NODE_COMMIT, &oreq.base, &kvstash__status_list__descriptor,
                           (ProtobufCMessage **)&sl);
    }
    if (all != batch->objs)
        kv_free(all);

    pthread_mutex_lock(&m->lock);
    size_t k = 0;
    for (struct commit_req *r = batch, *next; r; r = next) {
        next = r->next;
        r->rc = rc;
        for (size_t j = 0; j < r->n; j++, k++)
            r->status[j] = rc < 0 ? rc : k < sl->n_status ? sl->status[k] : KV_EPROTO;
        r->done = true;
    }
    if (sl)
        kv_rpc_pb_free(&sl->base);
    n->cq_inflight--;
    mst_node_unref(n);
    pthread_cond_broadcast(&m->commit_cond);
}

/* Commits reqs[0..nr) (one per node) and waits until each is done. Called and returns with the
 * lock held; the nodes are referenced by the caller. */
static void commit_wait(struct kv_master *m, struct commit_req *reqs, size_t nr)
{
    for (size_t i = 0; i < nr; i++) {
        struct mnode *n = reqs[i].node;
        reqs[i].next = NULL;
        *n->cq_tail = &reqs[i];
        n->cq_tail = &reqs[i].next;
    }
    for (;;) {
        bool all_done = true, led = false;
        for (size_t i = 0; i < nr; i++) {
            if (reqs[i].done)
                continue;
            all_done = false;
            struct mnode *n = reqs[i].node;
            if (n->cq_head && n->cq_inflight < COMMIT_INFLIGHT) {
                commit_lead(m, n);
                led = true;
                break;
            }
        }
        if (all_done)
            return;
        if (!led)
            pthread_cond_wait(&m->commit_cond, &m->lock);
    }
}

/* Commits objs[0..n) (NULL entries skipped; each PENDING with a reference held for this call)
 * on their replicas' nodes, then makes each COMPLETE or drops it: st[i] gets the outcome.
 * data (may be NULL) holds each object's bytes for the nodes to write first (inline puts). Called
 * and returns with the lock held; drops it while waiting for the nodes. */
static int commit_complete(struct kv_master *m, size_t n, struct mobj **objs,
                           const ProtobufCBinaryData *data, int32_t *st)
{
    size_t maxno = n * KV_STORE_MAX_REPLICAS + 1;
    Kvstash__NodeObject *nos = kv_calloc(maxno, sizeof(*nos));
    Kvstash__NodeObject **pnos = kv_calloc(maxno, sizeof(*pnos));
    int32_t *ost = kv_calloc(maxno, sizeof(*ost));
    /* at most one request per replica of the batch */
    struct commit_req *g = kv_calloc(maxno, sizeof(*g));
    size_t *eobj = kv_calloc(maxno, sizeof(*eobj)); /* NodeObject -> index in objs */
    size_t *cur = kv_calloc(maxno, sizeof(*cur));   /* per request, see below */
    size_t ng = 0, nno = 0;
    bool ok = nos && pnos && ost && g && eobj && cur;
    for (size_t i = 0; i < n && ok; i++) {
        struct mobj *o = objs[i];
        for (int r = 0; o && r < o->nrep; r++) {
            struct mnode *node = obj_rep(o)[r].node;
            size_t gi = 0;
            while (gi < ng && g[gi].node != node)
                gi++;
            if (gi == ng) {
                g[ng].node = node;
                node->refs++;
                ng++;
            }
        }
    }
    /* lay out NodeObjects request by request (each contiguous) */
    int64_t wall = kv_wall_ms();
    for (size_t gi = 0; gi < ng; gi++) {
        g[gi].objs = pnos + nno;
        g[gi].status = ost + nno;
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
            x->offset = rep_off(&obj_rep(o)[r]);
            x->expire_at_ms = wall + (int64_t)o->ttl_s * 1000;
            x->pin = o->pin;
            x->created_ms = o->created_wall;
            if (data)
                x->data = data[i];
            eobj[nno] = i;
            pnos[nno++] = x;
            g[gi].n++;
            g[gi].bytes += x->data.len;
        }
    }
    commit_wait(m, g, ng);
    wall = kv_wall_ms();
    /* a request's NodeObjects are in the order of objs: a cursor per request finds object i's
     * (skipping objects that lost that replica while the lock was let go) instead of a search
     * of every request for every object (256 x 256 key compares per batch of 256) */
    for (size_t i = 0; i < n; i++) {
        struct mobj *o = objs[i];
        if (!o)
            continue;
        for (int r = o->nrep - 1; r >= 0; r--) {
            bool acked = false;
            for (size_t gi = 0; ok && gi < ng; gi++) {
                if (g[gi].node != obj_rep(o)[r].node)
                    continue;
                const size_t *eo = eobj + (g[gi].objs - pnos);
                while (cur[gi] < g[gi].n && eo[cur[gi]] < i)
                    cur[gi]++;
                if (cur[gi] < g[gi].n && eo[cur[gi]] == i)
                    acked = g[gi].rc == KV_OK && g[gi].status[cur[gi]] == KV_OK;
            }
            if (!acked) {
                mst_defer_free(m, obj_rep(o)[r].node, o->key, obj_rep(o)[r].blk, rounded(o->size),
                               true, false, true, o->created_wall, o->lease_until);
                rep_drop(o, r);
            }
        }
        if (o->dead) {
            st[i] = KV_ENOENT;
        } else if (o->nrep == 0) {
            st[i] = ok ? KV_EIO : KV_ENOMEM;
            m->errors++;
            mst_obj_unlink(m, o);
        } else {
            pthread_mutex_t *sl = kv_oidx_lock_of(&m->index, o); /* lookups read these two */
            pthread_mutex_lock(sl);
            o->state = OBJ_COMPLETE;
            obj_set_expire(o, wall);
            pthread_mutex_unlock(sl);
            m->npending--;
            o->lease_until = 0;
            lru_push(m, o);
            m->puts++;
            m->mc.put_bytes += o->size;
            st[i] = KV_OK;
        }
        mst_obj_put_done(m, o);
    }
    for (size_t gi = 0; gi < ng; gi++)
        mst_node_unref(g[gi].node);
    kv_free(g);
    kv_free(cur);
    kv_free(eobj);
    kv_free(ost);
    kv_free(nos);
    kv_free(pnos);
    return ok ? KV_OK : KV_ENOMEM;
}

static int reply_status(struct kv_buf *resp, int32_t *st, size_t n)
{
    Kvstash__StatusList r = KVSTASH__STATUS_LIST__INIT;
    r.n_status = n;
    r.status = st;
    return mst_reply(resp, &r.base);
}

int mst_h_put_end(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp,
                  bool fast)
{
    Kvstash__PutEndReq *in;
    int rc =
        kv_rpc_pb_unpack(&kvstash__put_end_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    size_t n = in->n_items;
    int32_t *st = kv_calloc(n ? n : 1, sizeof(*st));
    struct mobj **objs = kv_calloc(n ? n : 1, sizeof(*objs));
    if (!st || !objs) {
        rc = KV_ENOMEM;
        goto out;
    }
    pthread_mutex_lock(&m->lock);
    if (fast && !mst_nodes_all_local(m)) { /* the commit would wait on the network */
        pthread_mutex_unlock(&m->lock);
        rc = KV_RPC_SLOW;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const Kvstash__PutEndItem *it = in->items[i];
        struct mobj *o = key_ok(it->key) ? kv_oidx_get(&m->index, it->key) : NULL;
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
            mst_obj_unlink(m, o);
            continue;
        }
        o->checksum = it->checksum;
        o->refs++;
        objs[i] = o;
    }
    commit_complete(m, n, objs, NULL, st);
    pthread_mutex_unlock(&m->lock);
    rc = reply_status(resp, st, n);
out:
    kv_free(st);
    kv_free(objs);
    kv_rpc_pb_free(&in->base);
    return rc;
}

/* PUT: small values carried in the request. Each item is placed as PutStart would, its bytes go
 * to the replicas' nodes inside the (group) NODE_COMMIT, and the object is COMPLETE when they
 * acknowledged: one client round trip instead of PutStart + write + PutEnd. */
int mst_h_put(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp, bool fast)
{
    Kvstash__PutStartReq *in;
    int rc =
        kv_rpc_pb_unpack(&kvstash__put_start_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    size_t n = in->n_items;
    int32_t *st = kv_calloc(n ? n : 1, sizeof(*st));
    struct mobj **objs = kv_calloc(n ? n : 1, sizeof(*objs));
    ProtobufCBinaryData *data = kv_calloc(n ? n : 1, sizeof(*data));
    if (!st || !objs || !data) {
        rc = KV_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (in->items[i]->data.len != in->items[i]->size)
            rc = KV_EPROTO; /* the request is malformed as a whole */
    if (rc < 0)
        goto out;
    if (fast) { /* only when the commit cannot wait on the network either */
        rc = mst_place_items_now(m, in->items, n, st, NULL, objs, true);
        if (rc == KV_RPC_SLOW)
            goto out;
    } else {
        mst_place_items(m, in->items, n, st, NULL, objs);
    }
    if (all_nonode(st, n)) {
        rc = KV_ESTORE_NONODE;
        goto out;
    }
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < n; i++) {
        if (st[i] != KV_OK) {
            objs[i] = NULL;
            continue;
        }
        objs[i]->checksum = in->items[i]->checksum;
        objs[i]->refs++;
        data[i] = in->items[i]->data;
    }
    commit_complete(m, n, objs, data, st);
    pthread_mutex_unlock(&m->lock);
    rc = reply_status(resp, st, n);
out:
    kv_free(st);
    kv_free(objs);
    kv_free(data);
    kv_rpc_pb_free(&in->base);
    return rc;
}

static void get_one(struct kv_master *m, const char *key, Kvstash__GetItem *it)
{
    int64_t deadline = kv_now_ms() + PROMOTE_WAIT_MS;
    /* nodes whose promotion failed during this get: the next SSD replica is tried instead */
    const struct mnode *failed[16];
    int nfailed = 0, last_rc = KV_ENOENT;
    bool via_ssd = false; /* no DRAM replica at first: an SSD lookup (metrics) */
    for (int tries = 0; tries < 16; tries++) {
        uint32_t h = key_ok(key) ? kv_oidx_hash(key) : 0;
        struct mobj *o = key_ok(key) ? kv_oidx_get_h(&m->index, key, h) : NULL;
        if (!o || o->state != OBJ_COMPLETE) {
            it->status = KV_ENOENT;
            m->misses++;
            mst_count_miss(m, o ? MST_MISS_PENDING : MST_MISS_NOT_FOUND);
            return;
        }
        if (expired(o, kv_wall_ms())) {
            m->expired++;
            m->mc.expired_bytes += o->size;
            mst_obj_unlink(m, o);
            it->status = KV_ENOENT;
            m->misses++;
            mst_count_miss(m, MST_MISS_EXPIRED);
            return;
        }
        int nd = 0, ssd = -1, promoting = 0;
        for (int i = 0; i < o->nrep; i++) {
            if (obj_rep(o)[i].dram)
                nd++;
            else if (obj_rep(o)[i].promoting)
                promoting++;
            else if (obj_rep(o)[i].ssd && ssd < 0) {
                bool tried = false;
                for (int f = 0; f < nfailed; f++)
                    tried = tried || failed[f] == obj_rep(o)[i].node;
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
                if (!obj_rep(o)[i].dram)
                    continue;
                kvstash__replica__init(&ra[k]);
                ra[k].node_id = kv_strdup(obj_rep(o)[i].node->id);
                ra[k].segment = kv_strdup(obj_rep(o)[i].node->segment);
                ra[k].offset = rep_off(&obj_rep(o)[i]);
                ra[k].tier = KVSTASH__TIER__TIER_DRAM;
                rs[k] = &ra[k];
                k++;
            }
            int64_t now = kv_now_ms();
            o->lease_until = KV_MAX(o->lease_until, now + (int64_t)m->lease_ms);
            pthread_mutex_t *sl = kv_oidx_lock_h(&m->index, h); /* exists reads expire_q */
            pthread_mutex_lock(sl);
            obj_set_expire(o, kv_wall_ms());
            pthread_mutex_unlock(sl);
            lru_push(m, o);
            it->status = KV_OK;
            it->size = o->size;
            it->checksum = o->checksum;
            it->lease_ms = m->lease_ms;
            it->replicas = rs;
            it->n_replicas = (size_t)nd;
            m->hits++;
            mst_count_hit(m, via_ssd, o->size);
            return;
        }
        via_ssd = true;
        if (promoting) {
            struct timespec ts;
            kv_timespec_in_ms(&ts, 200);
            o->refs++;
            pthread_cond_timedwait(&m->cond, &m->lock, &ts);
            mst_obj_put_done(m, o);
            if (kv_now_ms() > deadline)
                break;
            continue;
        }
        if (ssd >= 0) {
            const struct mnode *n = obj_rep(o)[ssd].node;
            int rc = mst_promote(m, o, ssd);
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
        mst_count_miss(m, MST_MISS_LOST);
        return;
    }
    it->status = KV_ETIMEDOUT;
    m->errors++;
}

/* Whether get_one may wait for key (an SSD replica to promote, or a promotion in flight). */
static bool get_may_wait(struct kv_master *m, const char *key)
{
    struct mobj *o = key_ok(key) ? kv_oidx_get(&m->index, key) : NULL;
    if (!o || o->state != OBJ_COMPLETE || expired(o, kv_wall_ms()))
        return false;
    for (int i = 0; i < o->nrep; i++)
        if (obj_rep(o)[i].dram)
            return false;
    return true;
}

int mst_h_get(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp, bool fast)
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
    if (n && m->nnodes == 0) { /* nothing can be found before a node mounts */
        pthread_mutex_unlock(&m->lock);
        rc = KV_ESTORE_NONODE;
        goto out;
    }
    for (size_t i = 0; fast && i < n; i++) {
        if (get_may_wait(m, in->keys[i])) {
            pthread_mutex_unlock(&m->lock);
            rc = KV_RPC_SLOW;
            goto out;
        }
    }
    for (size_t i = 0; i < n; i++) {
        /* overlap the index's cache misses of a batch (the master's lock keeps the slots
         * still): the home slot of key i + 8, the object key i + 4's tag points at */
        if (i + 8 < n && key_ok(in->keys[i + 8]))
            kv_oidx_prefetch(&m->index, kv_oidx_hash(in->keys[i + 8]), false);
        if (i + 4 < n && key_ok(in->keys[i + 4]))
            kv_oidx_prefetch(&m->index, kv_oidx_hash(in->keys[i + 4]), true);
        kvstash__get_item__init(&items[i]);
        pi[i] = &items[i];
        m->gets++;
        get_one(m, in->keys[i], &items[i]);
    }
    pthread_mutex_unlock(&m->lock);
    Kvstash__GetResp r = KVSTASH__GET_RESP__INIT;
    r.n_items = n;
    r.items = pi;
    rc = mst_reply(resp, &r.base);
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

/* 1 when o is a COMPLETE object not expired at *(int64_t *)ud, else 0 (kv_oidx_peek_batch) */
static int exists_cb(void *ud, const struct mobj *o)
{
    return o && o->state == OBJ_COMPLETE && !expired(o, *(const int64_t *)ud) ? 1 : 0;
}

/* true when removing the objects of these keys may run on the I/O thread: every node is in
 * this process (NODE_FREE is a function call) and no object has an SSD copy (its NODE_FREE
 * unlinks a file). m->lock held. The remove looks each key up again rather than keeping these
 * objects: a key repeated in one request must find nothing the second time, and the first
 * unlink may already have freed its object. */
static bool remove_fast_ok(struct kv_master *m, char **keys, size_t n)
{
    if (!mst_nodes_all_local(m))
        return false;
    for (size_t i = 0; i < n; i++) {
        struct mobj *o = key_ok(keys[i]) ? kv_oidx_get(&m->index, keys[i]) : NULL;
        for (int r = 0; o && r < o->nrep; r++)
            if (obj_rep(o)[r].ssd)
                return false;
    }
    return true;
}

int mst_h_exists_remove(struct kv_master *m, bool remove, const uint8_t *req, size_t len,
                        struct kv_buf *resp, bool fast)
{
    Kvstash__KeyList *in;
    int rc = kv_rpc_pb_unpack(&kvstash__key_list__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    size_t n = in->n_keys;
    int32_t *st = kv_calloc(n ? n : 1, sizeof(*st));
    uint32_t *hs = remove ? NULL : kv_calloc(n ? n : 1, sizeof(*hs)); /* the keys' hashes */
    if (!st || (!remove && !hs)) {
        kv_free(st);
        kv_free(hs);
        kv_rpc_pb_free(&in->base);
        return KV_ENOMEM;
    }
    if (remove) {
        pthread_mutex_lock(&m->lock);
        if (fast && !remove_fast_ok(m, in->keys, n)) {
            pthread_mutex_unlock(&m->lock);
            kv_free(st);
            kv_free(hs);
            kv_rpc_pb_free(&in->base);
            return KV_RPC_SLOW;
        }
        for (size_t i = 0; i < n; i++) {
            const char *k = in->keys[i];
            struct mobj *o = key_ok(k) ? kv_oidx_get(&m->index, k) : NULL;
            if (!key_ok(k)) {
                st[i] = KV_EINVAL;
            } else if (o) {
                mst_obj_unlink(m, o);
                st[i] = KV_OK;
            } else {
                st[i] = KV_ENOENT;
            }
        }
        pthread_mutex_unlock(&m->lock);
        mst_process_dfree(m); /* the nodes forget the keys before the client hears OK */
    } else {
        /* exists never takes the master's lock: each shard's lock is held for its keys'
         * lookups (master_index.c), so puts, evictions and sweeps holding the master's lock do
         * not delay it */
        int64_t wall = kv_wall_ms();
        const char **ks = (const char **)in->keys; /* NULL: a bad key, answered KV_EINVAL */
        for (size_t i = 0; i < n; i++) {
            if (key_ok(in->keys[i])) {
                hs[i] = kv_oidx_hash(in->keys[i]);
            } else {
                st[i] = KV_EINVAL;
                ks[i] = NULL; /* the message is freed as a whole (kv_rpc_pb_free) */
            }
        }
        rc = kv_oidx_peek_batch(&m->index, ks, hs, n, exists_cb, &wall, st);
        if (rc < 0) {
            kv_free(st);
            kv_free(hs);
            kv_rpc_pb_free(&in->base);
            return rc;
        }
    }
    Kvstash__StatusList r = KVSTASH__STATUS_LIST__INIT;
    r.n_status = n;
    r.status = st;
    rc = mst_reply(resp, &r.base);
    kv_free(st);
    kv_free(hs);
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

static int list_cb(void *ud, struct mobj *o)
{
    struct list_ctx *c = ud;
    if (o->state != OBJ_COMPLETE || expired(o, c->wall) || !kv_startswith(o->key, c->prefix))
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

int mst_h_list(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    Kvstash__ListReq *in;
    int rc = kv_rpc_pb_unpack(&kvstash__list_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    struct list_ctx c = {in->prefix ? in->prefix : "", kv_wall_ms(), NULL, 0, 0, KV_OK};
    pthread_mutex_lock(&m->lock);
    kv_oidx_each(&m->index, list_cb, &c);
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
            rc = mst_reply(resp, &r.base);
        }
        kv_free(keys);
        kv_free(sizes);
    }
    pthread_mutex_unlock(&m->lock);
    kv_free(c.v);
    kv_rpc_pb_free(&in->base);
    return rc;
}

int mst_h_stat(struct kv_master *m, struct kv_buf *resp)
{
    char *js = kv_master_cluster_json(m);
    if (!js)
        return KV_ENOMEM;
    Kvstash__StatResp r = KVSTASH__STAT_RESP__INIT;
    r.json = js;
    int rc = mst_reply(resp, &r.base);
    kv_free(js);
    return rc;
}
