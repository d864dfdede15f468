/* SPDX-License-Identifier: Apache-2.0 */
/*
 * node.c - a storage node: owns a DRAM segment registered with the transfer engine (clients
 * read and write it directly), an optional SSD tier, and a table of the objects it holds, kept
 * in step with the master through NODE_COMMIT / NODE_FREE / NODE_DEMOTE / NODE_PROMOTE.
 *
 * Design:
 *  - The node never decides placement: the master allocates ranges in the segment; the node
 *    records what the master committed. Its table is what it reports in MOUNT, which is how a
 *    new leader (or the same master after the node restarted) rebuilds the index.
 *  - DRAM bytes are in a memfd segment: they die with the process. SSD files survive; at start
 *    the tier is scanned (ssd.c) and every valid file is reported. A clean stop (SIGTERM) with
 *    an SSD tier first writes every DRAM object to SSD, so a restart loses nothing; a crash
 *    loses the DRAM-only objects (other replicas serve them).
 *  - Demote: verify the DRAM bytes' checksum, write the file (fsync + rename), then forget the
 *    DRAM entry (the bytes stay until the master reuses the range). Promote: read the file
 *    (checksum verified) into the range the master allocated, then add the DRAM entry.
 *  - Control thread: finds the master (fixed --master, or the leader key in metadata, watched),
 *    MOUNTs with its objects, heartbeats every heartbeat_ms; on KV_ENOENT (the master does not
 *    know it), KV_EAGAIN (not the leader), a lost connection or a leader change, it MOUNTs
 *    again.
 *
 * Fencing: commands carry the master's epoch; one older than the epoch of the node's current
 * mount (a deposed leader) is refused with KV_EAGAIN.
 *
 * Segment name: "<node-id>.<8 hex>" - a fresh suffix per start, because a crashed previous
 * incarnation's descriptor may linger in metadata until its lease expires.
 *
 * Thread model: RPC handlers on the RPC server's connection threads (the master's commands),
 * one control thread, watch callbacks on a metadata thread (set flags only).
 * Locks: n->lock guards dram, mc, master_addr, epoch (leaf; no RPC or file I/O under it except
 * the memcpy-free table updates). The SSD tier has its own lock.
 */
#define KV_LOG_COMPONENT "node"
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/store.h"
#include "kvstash/xfer.h"
#include "store/master_map.h"
#include "store/mount_pack.h"
#include "store/rpc.h"
#include "store/rpc_local.h"
#include "store/ssd.h"
#include "store/store_int.h"
#include "xfer/xfer_int.h"

struct nobj {
    uint64_t off, size, checksum;
    int64_t expire_at_ms, created_ms;
    bool pin;
};

struct kv_node {
    char *id;
    char *cluster;
    char *fixed_master;
    char segment[200];
    char rpc_addr[300];
    char host_id[256];
    char leader_key[512];
    int heartbeat_ms;
    size_t mount_chunk; /* objects per MOUNT part */
    struct kv_meta *meta;
    struct kv_xfer *x;
    uint8_t *base;
    uint64_t cap;
    kv_seg_id seg;
    struct kv_ssd *ssd;
    struct kv_rpc_server *rpc;
    struct kv_rpc_local *local; /* in-process registration (opts.in_process_rpc) or NULL */

    pthread_mutex_t lock; /* guards dram, mc, master_addr, epoch; leaf */
    struct kv_smap dram;  /* key -> struct nobj */
    struct kv_slab objs;  /* the struct nobj records (obj_slab.h) */
    struct kv_rpc_client *mc;
    char master_addr[300];
    uint64_t epoch;

    atomic_bool mounted;
    atomic_bool remount;
    atomic_bool stopping;
    pthread_t ctl;
    pthread_mutex_t wake_lock; /* guards wake; leaf */
    pthread_cond_t wake_cond;
    bool wake;
    uint64_t watch_id;
    bool watching;
};

static void wake(struct kv_node *n)
{
    pthread_mutex_lock(&n->wake_lock);
    n->wake = true;
    pthread_cond_broadcast(&n->wake_cond);
    pthread_mutex_unlock(&n->wake_lock);
}

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

static bool range_ok(struct kv_node *n, uint64_t off, uint64_t size)
{
    return off <= n->cap && size <= n->cap - off;
}

/* ---- master -> node commands ---- */

static int h_commit(struct kv_node *n, const Kvstash__ObjectsReq *in, int32_t *st)
{
    /* inline PUTs: the bytes first, outside the lock (the master reserved the range for this
     * object: nobody else writes or reads it before the commit is acknowledged) */
    for (size_t i = 0; i < in->n_objects; i++) {
        const Kvstash__NodeObject *x = in->objects[i];
        st[i] = KV_OK;
        if (!x->data.len)
            continue;
        if (x->data.len != x->size || !range_ok(n, x->offset, x->size))
            st[i] = KV_EINVAL;
        else
            memcpy(n->base + x->offset, x->data.data, x->data.len);
    }
    /* the chunks the new records will come from are faulted in here, not under n->lock */
    kv_slab_reserve(&n->objs);
    kv_smap_reserve(&n->dram);
    pthread_mutex_lock(&n->lock);
    for (size_t i = 0; i < in->n_objects; i++) {
        const Kvstash__NodeObject *x = in->objects[i];
        if (i + 8 < in->n_objects && in->objects[i + 8]->key) /* overlap the cache misses */
            kv_smap_prefetch(&n->dram, in->objects[i + 8]->key);
        if (st[i] != KV_OK || !x->key || !*x->key || strlen(x->key) > KV_STORE_MAX_KEY ||
            !range_ok(n, x->offset, x->size)) {
            st[i] = KV_EINVAL;
            continue;
        }
        struct nobj *o = kv_smap_get(&n->dram, x->key);
        if (!o) {
            o = kv_slab_alloc(&n->objs, sizeof(*o));
            if (!o || kv_smap_put(&n->dram, x->key, o) < 0) {
                kv_slab_free(&n->objs, o, sizeof(*o));
                st[i] = KV_ENOMEM;
                continue;
            }
        }
        o->off = x->offset;
        o->size = x->size;
        o->checksum = x->checksum;
        o->expire_at_ms = x->expire_at_ms;
        o->created_ms = x->created_ms;
        o->pin = x->pin;
        st[i] = KV_OK;
    }
    pthread_mutex_unlock(&n->lock);
    return KV_OK;
}

static int h_free(struct kv_node *n, const Kvstash__ObjectsReq *in, int32_t *st)
{
    for (size_t i = 0; i < in->n_objects; i++) {
        const Kvstash__NodeObject *x = in->objects[i];
        st[i] = KV_OK;
        if (!x->key || !*x->key)
            continue;
        if (x->tier == KVSTASH__TIER__TIER_DRAM) {
            pthread_mutex_lock(&n->lock);
            struct nobj *o = kv_smap_get(&n->dram, x->key);
            if (o && o->off == x->offset)
                kv_slab_free(&n->objs, kv_smap_del(&n->dram, x->key), sizeof(struct nobj));
            pthread_mutex_unlock(&n->lock);
        } else if (n->ssd) {
            kv_ssd_remove(n->ssd, x->key, x->created_ms);
        }
    }
    return KV_OK;
}

struct drop_list {
    char **keys;
    size_t n, cap;
};

static void on_dropped(void *ud, const char *key)
{
    struct drop_list *d = ud;
    if (d->n == d->cap) {
        size_t nc = d->cap ? d->cap * 2 : 16;
        char **nk = kv_realloc(d->keys, nc * sizeof(*nk));
        if (!nk)
            return;
        d->keys = nk;
        d->cap = nc;
    }
    char *k = kv_strdup(key);
    if (k)
        d->keys[d->n++] = k;
}

static int h_demote(struct kv_node *n, const Kvstash__ObjectsReq *in, struct kv_buf *resp)
{
    size_t cnt = in->n_objects;
    int32_t *st = kv_calloc(cnt ? cnt : 1, sizeof(*st));
    if (!st)
        return KV_ENOMEM;
    struct drop_list dl = {0};
    for (size_t i = 0; i < cnt; i++) {
        const Kvstash__NodeObject *x = in->objects[i];
        if (!n->ssd) {
            st[i] = KV_ENOTSUP;
            continue;
        }
        pthread_mutex_lock(&n->lock);
        struct nobj *o = x->key ? kv_smap_get(&n->dram, x->key) : NULL;
        struct nobj copy;
        if (o)
            copy = *o;
        pthread_mutex_unlock(&n->lock);
        if (!o || copy.off != x->offset || !range_ok(n, copy.off, copy.size)) {
            st[i] = KV_ENOENT;
            continue;
        }
        int64_t have = 0;
        if (kv_ssd_has(n->ssd, x->key, &have) && have == copy.created_ms) {
            st[i] = KV_OK; /* already on SSD (promoted earlier) */
        } else if (kv_hash64(n->base + copy.off, copy.size) != copy.checksum) {
            KV_LOGW_RL(2000, "demote %s: DRAM bytes do not match their checksum; dropped", x->key);
            st[i] = KV_ECHECKSUM;
        } else {
            struct kv_ssd_obj so = {x->key,          copy.size, copy.checksum, copy.expire_at_ms,
                                    copy.created_ms, copy.pin};
            st[i] = kv_ssd_write(n->ssd, &so, n->base + copy.off, on_dropped, &dl);
        }
        if (st[i] == KV_OK || st[i] == KV_ECHECKSUM) {
            pthread_mutex_lock(&n->lock);
            o = kv_smap_get(&n->dram, x->key);
            if (o && o->off == copy.off)
                kv_slab_free(&n->objs, kv_smap_del(&n->dram, x->key), sizeof(struct nobj));
            pthread_mutex_unlock(&n->lock);
        }
    }
    Kvstash__DemoteResp r = KVSTASH__DEMOTE_RESP__INIT;
    r.n_status = cnt;
    r.status = st;
    r.n_dropped = dl.n;
    r.dropped = dl.keys;
    int rc = reply(resp, &r.base);
    for (size_t i = 0; i < dl.n; i++)
        kv_free(dl.keys[i]);
    kv_free(dl.keys);
    kv_free(st);
    return rc;
}

static int h_promote(struct kv_node *n, const uint8_t *req, size_t len)
{
    Kvstash__PromoteReq *in;
    int rc =
        kv_rpc_pb_unpack(&kvstash__promote_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    struct kv_ssd_obj so;
    pthread_mutex_lock(&n->lock);
    bool stale = in->epoch && in->epoch < n->epoch;
    pthread_mutex_unlock(&n->lock);
    if (stale) {
        rc = KV_EAGAIN;
        goto out;
    }
    if (!n->ssd || !in->key || !*in->key) {
        rc = KV_ENOENT;
        goto out;
    }
    rc = kv_ssd_stat(n->ssd, in->key, &so);
    if (rc < 0)
        goto out;
    if (!range_ok(n, in->offset, so.size)) {
        rc = KV_EINVAL;
        goto out;
    }
    uint64_t size;
    rc = kv_ssd_read(n->ssd, in->key, so.created_ms, n->base + in->offset, n->cap - in->offset,
                     &size);
    if (rc < 0)
        goto out;
    pthread_mutex_lock(&n->lock);
    struct nobj *o = kv_smap_get(&n->dram, in->key);
    if (!o) {
        o = kv_slab_alloc(&n->objs, sizeof(*o));
        if (!o || kv_smap_put(&n->dram, in->key, o) < 0) {
            kv_slab_free(&n->objs, o, sizeof(*o));
            o = NULL;
            rc = KV_ENOMEM;
        }
    }
    if (o) {
        o->off = in->offset;
        o->size = so.size;
        o->checksum = so.checksum;
        o->expire_at_ms = so.expire_at_ms;
        o->created_ms = so.created_ms;
        o->pin = so.pin;
    }
    pthread_mutex_unlock(&n->lock);
out:
    kv_rpc_pb_free(&in->base);
    return rc;
}

/* NODE_COMMIT, NODE_FREE, NODE_DEMOTE of an unpacked request. */
static int handle_objects(struct kv_node *n, uint16_t method, const Kvstash__ObjectsReq *in,
                          struct kv_buf *resp)
{
    pthread_mutex_lock(&n->lock);
    bool stale = in->epoch && in->epoch < n->epoch;
    pthread_mutex_unlock(&n->lock);
    if (stale) { /* fencing: a deposed leader must not change what this node holds */
        KV_LOGW_RL(5000, "%s from a master of epoch %llu (current %llu): refused",
                   kv_rpc_method_name(method), (unsigned long long)in->epoch,
                   (unsigned long long)n->epoch);
        return KV_EAGAIN;
    }
    if (method == KV_RPC_NODE_DEMOTE)
        return h_demote(n, in, resp);
    int32_t *st = kv_calloc(in->n_objects ? in->n_objects : 1, sizeof(*st));
    if (!st)
        return KV_ENOMEM;
    int rc = method == KV_RPC_NODE_COMMIT ? h_commit(n, in, st) : h_free(n, in, st);
    if (rc == KV_OK) {
        Kvstash__StatusList r = KVSTASH__STATUS_LIST__INIT;
        r.n_status = in->n_objects;
        r.status = st;
        rc = reply(resp, &r.base);
    }
    kv_free(st);
    return rc;
}

static int node_handle(void *ud, uint16_t method, const uint8_t *req, size_t len,
                       struct kv_buf *resp)
{
    struct kv_node *n = ud;
    if (method == KV_RPC_NODE_PROMOTE)
        return h_promote(n, req, len);
    if (method != KV_RPC_NODE_COMMIT && method != KV_RPC_NODE_FREE && method != KV_RPC_NODE_DEMOTE)
        return KV_ENOTSUP;
    Kvstash__ObjectsReq *in;
    int rc =
        kv_rpc_pb_unpack(&kvstash__objects_req__descriptor, req, len, (ProtobufCMessage **)&in);
    if (rc < 0)
        return rc;
    rc = handle_objects(n, method, in, resp);
    kv_rpc_pb_free(&in->base);
    return rc;
}

/* The master of this process (kvstash serve) hands NODE_COMMIT, NODE_FREE and NODE_DEMOTE over
 * as messages (rpc_local.h): an inline put's bytes go from the master's request straight into
 * the segment, without being packed into a NODE_COMMIT and unpacked again here. */
static int node_handle_pb(void *ud, uint16_t method, const ProtobufCMessage *req,
                          struct kv_buf *resp)
{
    if ((method != KV_RPC_NODE_COMMIT && method != KV_RPC_NODE_FREE &&
         method != KV_RPC_NODE_DEMOTE) ||
        req->descriptor != &kvstash__objects_req__descriptor)
        return KV_RPC_SLOW;
    return handle_objects(ud, method, (const Kvstash__ObjectsReq *)req, resp);
}

/* On the RPC server's I/O thread: NODE_COMMIT (index updates and, for inline puts, a memcpy into
 * the segment) and NODE_FREE without an SSD tier; the others may touch the disk. */
static int node_handle_fast(void *ud, uint16_t method, const uint8_t *req, size_t len,
                            struct kv_buf *resp)
{
    struct kv_node *n = ud;
    if (method == KV_RPC_NODE_COMMIT || (method == KV_RPC_NODE_FREE && !n->ssd))
        return node_handle(ud, method, req, len, resp);
    return KV_RPC_SLOW;
}

/* ---- mount and heartbeat ---- */

/* What a node reports at MOUNT, gathered under its lock with no allocation per object: each
 * object's packed record (mount_pack.h) appended to one buffer, and an order entry {sort key,
 * record offset} that a radix sort puts in mount order (DRAM by offset, then SSD). Millions of
 * objects take a few hundred milliseconds, not the tens of seconds of one protobuf message and
 * two allocations each. */
struct mord {
    uint64_t key; /* DRAM: offset; SSD: UINT64_MAX */
    uint64_t rec; /* offset of the record in mlist.buf */
};

struct mlist {
    uint8_t *buf;
    size_t len, cap;
    struct mord *ord;
    size_t n, ncap;
    int rc;
};

static void mlist_add(struct mlist *a, const Kvstash__NodeObject *x)
{
    size_t need = kv_mount_rec_size(strlen(x->key));
    if (a->rc < 0)
        return;
    if (a->len + need > a->cap || a->n == a->ncap) {
        size_t c = KV_MAX(a->cap * 2, a->len + need + (1u << 20));
        size_t nc = KV_MAX(a->ncap * 2, (size_t)1024);
        uint8_t *b = a->len + need > a->cap ? kv_realloc(a->buf, c) : a->buf;
        if (!b) {
            a->rc = KV_ENOMEM;
            return;
        }
        a->buf = b;
        if (a->len + need > a->cap)
            a->cap = c;
        if (a->n == a->ncap) {
            struct mord *o = kv_realloc(a->ord, nc * sizeof(*o));
            if (!o) {
                a->rc = KV_ENOMEM;
                return;
            }
            a->ord = o;
            a->ncap = nc;
        }
    }
    a->ord[a->n].key = x->tier == KVSTASH__TIER__TIER_DRAM ? x->offset : UINT64_MAX;
    a->ord[a->n].rec = a->len;
    a->n++;
    a->len = (size_t)(kv_mount_pack(a->buf + a->len, x) - a->buf);
}

static int dram_cb(void *ud, const char *key, void *val)
{
    struct nobj *o = val;
    Kvstash__NodeObject x = KVSTASH__NODE_OBJECT__INIT;
    x.key = (char *)(uintptr_t)key; /* read only */
    x.size = o->size;
    x.checksum = o->checksum;
    x.tier = KVSTASH__TIER__TIER_DRAM;
    x.offset = o->off;
    x.expire_at_ms = o->expire_at_ms;
    x.pin = o->pin;
    x.created_ms = o->created_ms;
    mlist_add(ud, &x);
    return 0;
}

static void ssd_cb(void *ud, const struct kv_ssd_obj *o)
{
    Kvstash__NodeObject x = KVSTASH__NODE_OBJECT__INIT;
    x.key = (char *)(uintptr_t)o->key; /* read only */
    x.size = o->size;
    x.checksum = o->checksum;
    x.tier = KVSTASH__TIER__TIER_SSD;
    x.expire_at_ms = o->expire_at_ms;
    x.pin = o->pin;
    x.created_ms = o->created_ms;
    mlist_add(ud, &x);
}

/* Stable LSD radix sort of v[0..n) by key, 16 bits a pass; a pass whose digit is the same for
 * every entry is skipped (offsets below 4 GiB and no SSD objects: two passes). */
static int mord_sort(struct mord *v, size_t n)
{
    struct mord *tmp = kv_malloc((n ? n : 1) * sizeof(*tmp));
    size_t *cnt = kv_malloc(65536 * sizeof(*cnt));
    if (!tmp || !cnt) {
        kv_free(tmp);
        kv_free(cnt);
        return KV_ENOMEM;
    }
    struct mord *src = v, *dst = tmp;
    for (int shift = 0; shift < 64; shift += 16) {
        memset(cnt, 0, 65536 * sizeof(*cnt));
        for (size_t i = 0; i < n; i++)
            cnt[(src[i].key >> shift) & 0xffff]++;
        if (n == 0 || cnt[(src[0].key >> shift) & 0xffff] == n)
            continue;
        size_t sum = 0;
        for (size_t d = 0; d < 65536; d++) {
            size_t c = cnt[d];
            cnt[d] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++)
            dst[cnt[(src[i].key >> shift) & 0xffff]++] = src[i];
        struct mord *t = src;
        src = dst;
        dst = t;
    }
    if (src != v)
        memcpy(v, src, n * sizeof(*v));
    kv_free(tmp);
    kv_free(cnt);
    return KV_OK;
}

/* Finds the master's address: fixed, or the leader key. */
static int find_master(struct kv_node *n, char *addr, size_t alen)
{
    if (n->fixed_master) {
        snprintf(addr, alen, "%s", n->fixed_master);
        return KV_OK;
    }
    char *v = NULL;
    size_t len = 0;
    int rc = kv_meta_get(n->meta, n->leader_key, &v, &len);
    if (rc < 0)
        return rc;
    json_t *j;
    char err[128];
    rc = kv_json_parse(v, len, &j, err, sizeof(err));
    kv_meta_free(v);
    if (rc < 0)
        return rc;
    const char *a;
    rc = kv_json_get_str(j, "rpc_addr", &a, err, sizeof(err));
    if (rc == KV_OK)
        snprintf(addr, alen, "%s", a);
    json_decref(j);
    return rc;
}

static int do_heartbeat(struct kv_node *n);

static int do_mount(struct kv_node *n)
{
    char addr[300];
    int rc = find_master(n, addr, sizeof(addr));
    if (rc < 0) {
        KV_LOGW_RL(5000, "no master to mount on yet (%s)",
                   rc == KV_ENOENT ? "no leader elected" : kv_strerror(rc));
        return rc;
    }
    pthread_mutex_lock(&n->lock);
    if (!n->mc || strcmp(n->master_addr, addr) != 0) {
        struct kv_rpc_client *c;
        rc = kv_rpc_client_create(addr, 2000, &c);
        if (rc < 0) {
            pthread_mutex_unlock(&n->lock);
            KV_LOGW_RL(5000, "bad master address '%s'", addr);
            return rc;
        }
        kv_rpc_client_destroy(n->mc);
        n->mc = c;
        snprintf(n->master_addr, sizeof(n->master_addr), "%s", addr);
    }
    pthread_mutex_unlock(&n->lock);
    /* a cheap call first: listing (and sorting) millions of objects for a master that is gone
     * (the leader key still names it until its lease ends) would hold up finding the new one.
     * KV_ENOENT: it is up and does not know us yet. */
    rc = do_heartbeat(n);
    if (rc < 0 && rc != KV_ENOENT) {
        KV_LOGW_RL(5000, "master %s does not answer (%s): not mounting there", addr,
                   kv_strerror(rc));
        return rc;
    }
    int64_t t0 = kv_now_ms();
    pthread_mutex_lock(&n->lock);
    struct mlist a = {0};
    kv_smap_each(&n->dram, dram_cb, &a);
    struct kv_rpc_client *mc = n->mc;
    pthread_mutex_unlock(&n->lock);
    if (n->ssd)
        kv_ssd_foreach(n->ssd, ssd_cb, &a);
    rc = a.rc;
    if (rc == KV_OK)
        rc = mord_sort(a.ord, a.n);
    int64_t t1 = kv_now_ms();
    uint8_t *part = NULL;
    size_t part_cap = 0;
    if (rc == KV_OK) {
        Kvstash__MountReq mr = KVSTASH__MOUNT_REQ__INIT;
        mr.node_id = n->id;
        mr.segment = n->segment;
        mr.size = n->cap;
        mr.host_id = n->host_id;
        mr.rpc_addr = n->rpc_addr;
        mr.ssd_capacity = n->ssd ? kv_ssd_capacity(n->ssd) : 0;
        mr.ssd_used = n->ssd ? kv_ssd_used(n->ssd) : 0;
        mr.total = a.n;
        pthread_mutex_lock(&n->lock);
        mr.last_epoch = n->epoch; /* the master we served last (0: none yet) */
        pthread_mutex_unlock(&n->lock);
        /* in parts of mount_chunk objects, so that any number of objects fits the RPC frame
         * limit (64 MiB); the master places nothing on us until the last part */
        size_t chunk = n->mount_chunk, parts = 0;
        Kvstash__MountResp *resp = NULL;
        for (size_t off = 0; rc == KV_OK && (off < a.n || off == 0); off += chunk) {
            size_t cnt = KV_MIN(chunk, a.n - off), bytes = 0;
            for (size_t i = off; i < off + cnt; i++) {
                if (i + 8 < off + cnt) /* records are read in sorted, not buffer, order */
                    __builtin_prefetch(a.buf + a.ord[i + 8].rec);
                bytes += kv_mount_rec_len(a.buf + a.ord[i].rec);
            }
            if (bytes > part_cap) {
                kv_free(part);
                part_cap = bytes;
                part = kv_malloc(part_cap);
                if (!part) {
                    rc = KV_ENOMEM;
                    break;
                }
            }
            uint8_t *p = part;
            for (size_t i = off; i < off + cnt; i++) {
                if (i + 8 < off + cnt)
                    __builtin_prefetch(a.buf + a.ord[i + 8].rec);
                const uint8_t *r = a.buf + a.ord[i].rec;
                size_t rl = kv_mount_rec_len(r);
                memcpy(p, r, rl);
                p += rl;
            }
            mr.packed.data = part;
            mr.packed.len = bytes;
            mr.part = off > 0;
            mr.more = off + cnt < a.n;
            /* the client pointer stays valid: only this thread replaces it */
            rc = kv_rpc_call_pb(mc, KV_RPC_MOUNT, &mr.base, &kvstash__mount_resp__descriptor,
                                (ProtobufCMessage **)&resp, 30000, NULL, 0);
            if (rc == KV_OK) {
                pthread_mutex_lock(&n->lock);
                n->epoch = resp->epoch;
                pthread_mutex_unlock(&n->lock);
                kv_rpc_pb_free(&resp->base);
                resp = NULL;
                parts++;
            }
            if (!mr.more)
                break;
            if (rc == KV_OK && atomic_load(&n->remount)) {
                rc = KV_EAGAIN; /* the leader changed meanwhile: start over with the new one */
                break;
            }
        }
        if (rc == KV_OK)
            KV_LOGI("node %s mounted on master %s (epoch %llu): segment %s, %zu objects "
                    "reported in %zu part(s) (listed and sorted in %lld ms, sent and indexed in "
                    "%lld ms)",
                    n->id, addr, (unsigned long long)n->epoch, n->segment, a.n, parts,
                    (long long)(t1 - t0), (long long)(kv_now_ms() - t1));
        else
            KV_LOGW_RL(5000, "MOUNT on master %s (part %zu): %s", addr, parts + 1, kv_strerror(rc));
    }
    kv_free(part);
    kv_free(a.buf);
    kv_free(a.ord);
    return rc;
}

static int do_heartbeat(struct kv_node *n)
{
    Kvstash__HeartbeatReq hb = KVSTASH__HEARTBEAT_REQ__INIT;
    hb.node_id = n->id;
    hb.ssd_used = n->ssd ? kv_ssd_used(n->ssd) : 0;
    pthread_mutex_lock(&n->lock);
    struct kv_rpc_client *mc = n->mc;
    pthread_mutex_unlock(&n->lock);
    if (!mc)
        return KV_ENOENT;
    return kv_rpc_call_pb(mc, KV_RPC_HEARTBEAT, &hb.base, &kvstash__mount_resp__descriptor, NULL,
                          3000, NULL, 0);
}

static void on_leader_event(void *ud, const struct kv_meta_event *ev)
{
    struct kv_node *n = ud;
    if (ev->type != KV_META_EV_PUT)
        return;
    /* remount only when the leader's address changed */
    json_t *j;
    char err[64];
    const char *a = NULL;
    bool changed = true;
    if (kv_json_parse(ev->value, ev->len, &j, err, sizeof(err)) == KV_OK) {
        if (kv_json_get_str(j, "rpc_addr", &a, err, sizeof(err)) == KV_OK) {
            pthread_mutex_lock(&n->lock);
            changed = strcmp(a, n->master_addr) != 0;
            pthread_mutex_unlock(&n->lock);
        }
        json_decref(j);
    }
    if (changed) {
        atomic_store(&n->remount, true);
        wake(n);
    }
}

static void *ctl_main(void *arg)
{
    struct kv_node *n = arg;
    while (!atomic_load(&n->stopping)) {
        if (!n->fixed_master && !n->watching &&
            kv_meta_watch(n->meta, n->leader_key, on_leader_event, n, &n->watch_id) == KV_OK)
            n->watching = true;
        int wait_ms = n->heartbeat_ms;
        if (atomic_exchange(&n->remount, false) || !atomic_load(&n->mounted)) {
            atomic_store(&n->mounted, false);
            if (do_mount(n) == KV_OK)
                atomic_store(&n->mounted, true);
            else
                wait_ms = KV_MIN(wait_ms, 300);
        } else {
            int rc = do_heartbeat(n);
            if (rc < 0) {
                KV_LOGI("heartbeat to master %s: %s; mounting again", n->master_addr,
                        kv_strerror(rc));
                atomic_store(&n->mounted, false);
                wait_ms = rc == KV_ENOENT ? 0 : KV_MIN(wait_ms, 300);
            }
        }
        pthread_mutex_lock(&n->wake_lock);
        if (!n->wake && wait_ms > 0 && !atomic_load(&n->stopping)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += wait_ms / 1000;
            ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&n->wake_cond, &n->wake_lock, &ts);
        }
        n->wake = false;
        pthread_mutex_unlock(&n->wake_lock);
    }
    return NULL;
}

/* ---- lifecycle ---- */

static int load_or_make_id(const struct kv_node_opts *o, char **out)
{
    if (o->node_id && *o->node_id) {
        *out = kv_strdup(o->node_id);
        return *out ? KV_OK : KV_ENOMEM;
    }
    char path[4200];
    char buf[128] = "";
    if (o->ssd_dir) {
        snprintf(path, sizeof(path), "%s/NODE_ID", o->ssd_dir);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t r = read(fd, buf, sizeof(buf) - 1);
            close(fd);
            buf[r > 0 ? r : 0] = '\0';
            buf[strcspn(buf, "\r\n")] = '\0';
        }
    }
    if (!buf[0]) {
        snprintf(buf, sizeof(buf), "node-%08llx",
                 (unsigned long long)(((uint64_t)kv_now_ns() ^ (uint64_t)getpid() << 20) *
                                          0x9E3779B97F4A7C15ull >>
                                      32));
        if (o->ssd_dir) {
            mkdir(o->ssd_dir, 0755); /* kv_ssd_open reports a real problem with it */
            int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (fd >= 0) {
                ssize_t w = write(fd, buf, strlen(buf));
                (void)w;
                close(fd);
            }
        }
    }
    *out = kv_strdup(buf);
    return *out ? KV_OK : KV_ENOMEM;
}

struct flush_ctx {
    struct kv_node *n;
    uint64_t written, skipped, bad;
};

static int flush_cb(void *ud, const char *key, void *val)
{
    struct flush_ctx *c = ud;
    struct nobj *o = val;
    int64_t have = 0;
    if (kv_ssd_has(c->n->ssd, key, &have) && have == o->created_ms) {
        c->skipped++;
        return 0;
    }
    if (!range_ok(c->n, o->off, o->size) ||
        kv_hash64(c->n->base + o->off, o->size) != o->checksum) {
        c->bad++; /* never committed bytes, or damaged: not worth keeping */
        return 0;
    }
    struct kv_ssd_obj so = {key, o->size, o->checksum, o->expire_at_ms, o->created_ms, o->pin};
    if (kv_ssd_write(c->n->ssd, &so, c->n->base + o->off, NULL, NULL) == KV_OK)
        c->written++;
    else
        c->bad++;
    return 0;
}

/* Clean shutdown with an SSD tier: write every DRAM object to SSD, so a restart on the same
 * directory loses nothing (DRAM itself dies with the process). Called with no RPC running. */
static void flush_to_ssd(struct kv_node *n)
{
    struct flush_ctx c = {n, 0, 0, 0};
    pthread_mutex_lock(&n->lock);
    kv_smap_each(&n->dram, flush_cb, &c);
    pthread_mutex_unlock(&n->lock);
    if (c.written || c.bad)
        KV_LOGI("node %s: %llu DRAM objects written to SSD for the restart (%llu already there, "
                "%llu skipped)",
                n->id, (unsigned long long)c.written, (unsigned long long)c.skipped,
                (unsigned long long)c.bad);
}

static int free_nobj(void *ud, const char *key, void *val)
{
    struct kv_node *n = ud;
    (void)key;
    kv_slab_free(&n->objs, val, sizeof(struct nobj));
    return 1;
}

int kv_node_start(const struct kv_node_opts *o, struct kv_node **out)
{
    if (!o || !out || !o->metadata)
        return KV_EINVAL;
    if (o->capacity < (1u << 20)) {
        KV_LOGE("node capacity %llu is too small (>= 1 MiB)", (unsigned long long)o->capacity);
        return KV_EINVAL;
    }
    struct kv_node *n = kv_calloc(1, sizeof(*n));
    if (!n)
        return KV_ENOMEM;
    int rc = load_or_make_id(o, &n->id);
    if (rc < 0)
        goto out_free;
    n->cluster = kv_strdup(o->cluster ? o->cluster : "default");
    n->fixed_master = o->master ? kv_strdup(o->master) : NULL;
    if (!n->cluster || (o->master && !n->fixed_master)) {
        rc = KV_ENOMEM;
        goto out_free;
    }
    snprintf(n->leader_key, sizeof(n->leader_key), "/kvstash/%s/masters/leader", n->cluster);
    n->heartbeat_ms = o->heartbeat_ms > 0 ? o->heartbeat_ms : 1000;
    n->mount_chunk = o->mount_chunk > 0 ? o->mount_chunk : 65536;
    n->cap = o->capacity;
    if (gethostname(n->host_id, sizeof(n->host_id) - 1) < 0)
        snprintf(n->host_id, sizeof(n->host_id), "unknown");
    pthread_mutex_init(&n->lock, NULL);
    pthread_mutex_init(&n->wake_lock, NULL);
    pthread_cond_init(&n->wake_cond, NULL);
    kv_smap_init(&n->dram);
    kv_slab_init(&n->objs, KV_SLAB_CHUNKS_DEFAULT);
    atomic_init(&n->mounted, false);
    atomic_init(&n->remount, false);
    atomic_init(&n->stopping, false);

    rc = kv_meta_open(o->metadata, NULL, &n->meta);
    if (rc < 0) {
        KV_LOGE("metadata %s: %s", o->metadata, kv_strerror(rc));
        goto out_locks;
    }
    const char *bind = o->bind ? o->bind : "127.0.0.1";
    struct kv_xfer_opts xo = {
        .cluster = n->cluster,
        .protocol = o->protocol,
        .bind_host = bind,
        .advertise_host = o->advertise_host,
        .token = o->token,
    };
    rc = kv_xfer_create(n->meta, &xo, &n->x);
    if (rc < 0) {
        KV_LOGE("transfer engine: %s", kv_strerror(rc));
        goto out_meta;
    }
    if (o->segment && *o->segment)
        snprintf(n->segment, sizeof(n->segment), "%s", o->segment);
    else
        snprintf(n->segment, sizeof(n->segment), "%s.%08llx", n->id,
                 (unsigned long long)((uint64_t)kv_now_ns() * 0x9E3779B97F4A7C15ull >> 32));
    void *base;
    size_t page = 0;
    rc = kv_xfer_segment_alloc_huge(n->x, n->segment, n->cap, (enum kv_xfer_huge)o->hugepages,
                                    &base, &n->seg, &page);
    if (rc < 0) {
        KV_LOGE("cannot register DRAM segment %s (%llu bytes): %s", n->segment,
                (unsigned long long)n->cap, kv_strerror(rc));
        goto out_xfer;
    }
    n->base = base;
    char psz[32];
    KV_LOGI("DRAM segment %s: %s pages", n->segment, kv_format_size(page, psz, sizeof(psz)));
    if (!o->no_prefault) {
        /* commit and map every page now: a put's memcpy would otherwise take a page fault per
         * 4 KiB (on a VM, several us each) the first time each range is used */
        int64_t t0 = kv_now_ms();
        rc = kv_mem_populate(base, n->cap);
        int64_t t1 = kv_now_ms();
        if (rc == KV_OK) /* and each page once from here (kv_mem_touch: shadowing hypervisors) */
            kv_mem_touch(base, n->cap);
        char sz[32];
        kv_format_size(n->cap, sz, sizeof(sz));
        if (rc < 0)
            KV_LOGW("prefaulting the DRAM segment (%s) failed: %s; continuing without", sz,
                    kv_strerror(rc));
        else
            KV_LOGI("DRAM segment %s: %s prefaulted in %lld ms (populate %lld ms, touch %lld ms)",
                    n->segment, sz, (long long)(kv_now_ms() - t0), (long long)(t1 - t0),
                    (long long)(kv_now_ms() - t1));
    }
    if (o->ssd_dir) {
        uint64_t sc = o->ssd_capacity ? o->ssd_capacity : (64ull << 30);
        rc = kv_ssd_open(o->ssd_dir, sc, &n->ssd);
        if (rc < 0) {
            KV_LOGE("SSD tier %s: %s", o->ssd_dir, kv_strerror(rc));
            goto out_xfer;
        }
    }
    char addr[300];
    snprintf(addr, sizeof(addr), "%s:0", bind);
    struct kv_rpc_server_opts so = {.addr = addr,
                                    .handler = node_handle,
                                    .fast_handler = node_handle_fast,
                                    .ud = n,
                                    .io_threads = KV_RPC_DEF_IO_THREADS,
                                    .workers = KV_RPC_DEF_WORKERS,
                                    .poll_spin_us = o->poll_spin_us};
    rc = kv_rpc_server_start(&so, &n->rpc);
    if (rc < 0) {
        KV_LOGE("cannot listen for RPC on %s: %s", addr, kv_strerror(rc));
        goto out_ssd;
    }
    const char *adv = o->advertise_host ? o->advertise_host : bind;
    if (strcmp(adv, "0.0.0.0") == 0)
        adv = "127.0.0.1";
    snprintf(n->rpc_addr, sizeof(n->rpc_addr), "%s:%u", adv, kv_rpc_server_port(n->rpc));
    if (o->in_process_rpc) {
        rc = kv_rpc_local_add(bind, kv_rpc_server_port(n->rpc), node_handle, n, &n->local);
        if (rc < 0)
            goto out_rpc;
        kv_rpc_local_set_pb(n->local, node_handle_pb);
    }
    if (pthread_create(&n->ctl, NULL, ctl_main, n) != 0) {
        rc = KV_ENOMEM;
        goto out_rpc;
    }
    char sz[32];
    KV_LOGI("node %s: segment %s (%s DRAM), RPC on %s, SSD %s, master %s", n->id, n->segment,
            kv_format_size(n->cap, sz, sizeof(sz)), n->rpc_addr, o->ssd_dir ? o->ssd_dir : "off",
            n->fixed_master ? n->fixed_master : "the elected leader");
    *out = n;
    return KV_OK;
out_rpc:
    kv_rpc_local_remove(n->local);
    kv_rpc_server_stop(n->rpc);
out_ssd:
    kv_ssd_close(n->ssd);
out_xfer:
    kv_xfer_destroy(n->x);
out_meta:
    kv_meta_close(n->meta);
out_locks:
    kv_smap_fini(&n->dram);
    kv_slab_fini(&n->objs);
    pthread_mutex_destroy(&n->lock);
    pthread_mutex_destroy(&n->wake_lock);
    pthread_cond_destroy(&n->wake_cond);
out_free:
    kv_free(n->id);
    kv_free(n->cluster);
    kv_free(n->fixed_master);
    kv_free(n);
    return rc;
}

void kv_node_stop(struct kv_node *n)
{
    if (!n)
        return;
    atomic_store(&n->stopping, true);
    wake(n);
    pthread_join(n->ctl, NULL);
    if (n->watching)
        kv_meta_unwatch(n->meta, n->watch_id);
    kv_rpc_local_remove(n->local);
    kv_rpc_server_stop(n->rpc);
    if (n->ssd)
        flush_to_ssd(n);
    kv_xfer_destroy(n->x);
    kv_ssd_close(n->ssd);
    kv_meta_close(n->meta);
    kv_rpc_client_destroy(n->mc);
    kv_smap_each(&n->dram, free_nobj, n);
    kv_smap_fini(&n->dram);
    kv_slab_fini(&n->objs);
    pthread_mutex_destroy(&n->lock);
    pthread_mutex_destroy(&n->wake_lock);
    pthread_cond_destroy(&n->wake_cond);
    KV_LOGI("node %s stopped", n->id);
    kv_free(n->id);
    kv_free(n->cluster);
    kv_free(n->fixed_master);
    kv_free(n);
}

const char *kv_node_id(const struct kv_node *n)
{
    return n->id;
}

const char *kv_node_segment(const struct kv_node *n)
{
    return n->segment;
}

const char *kv_node_rpc_addr(const struct kv_node *n)
{
    return n->rpc_addr;
}

int kv_node_wait_mounted(struct kv_node *n, int timeout_ms)
{
    int64_t end = kv_now_ms() + timeout_ms;
    while (!atomic_load(&n->mounted)) {
        if (kv_now_ms() >= end)
            return KV_ETIMEDOUT;
        kv_sleep_ms(10);
    }
    return KV_OK;
}

void kv_node_counts(struct kv_node *n, uint64_t *dram, uint64_t *ssd)
{
    pthread_mutex_lock(&n->lock);
    if (dram)
        *dram = n->dram.n;
    pthread_mutex_unlock(&n->lock);
    if (ssd)
        *ssd = n->ssd ? kv_ssd_count(n->ssd) : 0;
}
