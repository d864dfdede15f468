/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master.c - the store master: its design, the RPC dispatch and its lifecycle. The work is split
 * along its seams:
 *   master_obj.c     objects and nodes: allocation, LRU and PENDING lists, unlinking, deferred
 *                    frees, node removal
 *   master_index.c   the index (intrusive, 256 shards)
 *   master_place.c   placement, eviction/demotion passes, room for puts, promotion from SSD
 *   master_maint.c   the maintenance thread (timeouts, reclaim, TTL sweep in steps, evictions)
 *   master_client.c  client handlers and the group commit of new objects on their nodes
 *   master_node.c    node handlers (MOUNT in parts, HEARTBEAT) and calls to nodes
 *   master_stats.c   cluster JSON, Prometheus text
 *   master_ha.c      leader election, the lease keeper and its local deadline (mst_leading),
 *                    admin HTTP
 *
 * Object states (struct mobj):
 *
 *     PutStart / PUT ─▶ PENDING ──all replicas' nodes ack NODE_COMMIT──▶ COMPLETE
 *                    │  PutEnd(!ok) / put_timeout / Remove              │ Remove / TTL / eviction
 *                    ▼                                                  ▼ without replicas
 *                 unlinked (dead) ──refs == 0──▶ ranges queued as deferred frees ──▶ freed
 *
 *   (PUT_START leaves the object PENDING while the client writes; PUT_END commits it. An inline
 *   PUT places and commits in one call: the bytes travel inside the NODE_COMMIT.)
 *
 * Invariants:
 *  1. An object is in the index iff !dead; it is on the LRU list iff COMPLETE and !dead, on the
 *     PENDING list iff PENDING and !dead (both through lru_prev/lru_next).
 *  2. A DRAM range handed out (replica dram/promoting, or queued in dfree) is allocated in its
 *     node's allocator; it returns to the allocator only after its lease ended (lease_until:
 *     GET leases; put_deadline for PENDING) and, when the node knew it, after NODE_FREE was
 *     acknowledged - so bytes a reader may still read are never reused.
 *  3. A replica with demoting/promoting set, or an object with refs > 0, has an RPC in flight;
 *     its space is released by whoever finishes it (mst_obj_put_done), never under it.
 *  4. Replicas of one object are on distinct nodes.
 *  5. No hot path (put, get, exists) scans the index or the LRU: reclaim pops expired PENDING
 *     objects off their list, the TTL sweep walks the index in steps between which the lock is
 *     released, eviction steps look at a bounded number of LRU entries.
 *
 * Thread model: RPC handlers run on the RPC server's threads; one maintenance thread runs
 * eviction (its own passes and those puts ask for), deferred frees, PENDING reclaim, node
 * timeouts and the TTL sweep. Node RPCs (commit, free, demote, promote) are made without the
 * lock, holding refs on the objects and nodes involved; a put's commit may be sent by another
 * put's thread (group commit, master_client.c).
 * Locks: m->evict_lock serialises eviction passes and is taken before m->lock. m->lock guards
 * the index, the lists, nodes, commit queues, deferred frees, counters and leader hint (see
 * master_int.h). Each of the index's 256 shards has a lock too, taken after m->lock by every
 * change of its slots and of the fields lookups read (state, expiry, pin, dead): EXISTS (single
 * and batch) holds only its keys' shards' locks and never waits on m->lock, so a batch put,
 * a MOUNT part or an eviction step holding m->lock delays no lookup of existence.
 */
#define KV_LOG_COMPONENT "master"
#include <jansson.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/kvstash.h"
#include "kvstash/store.h"
#include "store/master_int.h"

static int dispatch(struct kv_master *m, uint16_t method, const uint8_t *req, size_t len,
                    struct kv_buf *resp, bool fast)
{
    switch (method) {
    case KV_RPC_HELLO:
    case KV_RPC_PUT_START:
    case KV_RPC_PUT_END:
    case KV_RPC_PUT:
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
    if (!mst_leading(m))
        return mst_not_leader(m, resp);
    if ((method == KV_RPC_PUT_START || method == KV_RPC_PUT) && mst_place_fenced(m)) {
        /* every mounted node served an older leader, whose clients may still write into
         * ranges we do not know: a retryable refusal until the fence ends (master_ha.c) */
        KV_LOGW_RL(5000,
                   "%s refused for now: every mounted node served an older leader; "
                   "placement waits out its lease and the put timeout",
                   kv_rpc_method_name(method));
        return mst_not_leader(m, resp);
    }
    if (method == KV_RPC_PUT_START || method == KV_RPC_PUT)
        kv_slab_reserve(&m->slab); /* a fresh chunk's fault here, not under m->lock */
    int rc;
    switch (method) {
    case KV_RPC_HELLO:
        rc = mst_h_hello(m, req, len, resp);
        break;
    case KV_RPC_PUT_START:
        rc = mst_h_put_start(m, req, len, resp, fast);
        break;
    case KV_RPC_PUT_END:
        rc = mst_h_put_end(m, req, len, resp, fast);
        break;
    case KV_RPC_PUT:
        rc = mst_h_put(m, req, len, resp, fast);
        break;
    case KV_RPC_GET:
        rc = mst_h_get(m, req, len, resp, fast);
        break;
    case KV_RPC_EXISTS:
        rc = mst_h_exists_remove(m, false, req, len, resp, fast);
        break;
    case KV_RPC_REMOVE:
        rc = mst_h_exists_remove(m, true, req, len, resp, fast);
        break;
    case KV_RPC_LIST:
        rc = mst_h_list(m, req, len, resp);
        break;
    case KV_RPC_STAT:
        rc = mst_h_stat(m, resp);
        break;
    case KV_RPC_MOUNT:
        rc = mst_h_mount(m, req, len, resp);
        break;
    default:
        rc = mst_h_heartbeat(m, req, len, resp);
        break;
    }
    if (rc == KV_EPROTO)
        KV_LOGW_RL(5000, "%s: malformed request payload", kv_rpc_method_name(method));
    return rc;
}

/* dispatch, timed for the RPC latency histograms (master_metrics.c) */
static int dispatch_timed(struct kv_master *m, uint16_t method, const uint8_t *req, size_t len,
                          struct kv_buf *resp, bool fast)
{
    int64_t t0 = kv_now_ns();
    int rc = dispatch(m, method, req, len, resp, fast);
    if (rc != KV_RPC_SLOW)
        mst_rpc_observe(m, method, kv_now_ns() - t0);
    return rc;
}

int kv_master_handle(void *ud, uint16_t method, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    return dispatch_timed(ud, method, req, len, resp, false);
}

/* On the I/O thread: lookups, HELLO, STAT, HEARTBEAT, and puts and removes that need neither an
 * eviction, nor a node outside this process, nor the disk (the handlers answer KV_RPC_SLOW then):
 * a remove waits for the nodes' NODE_FREE. LIST (a scan) and MOUNT always go to the workers. */
int kv_master_handle_fast(void *ud, uint16_t method, const uint8_t *req, size_t len,
                          struct kv_buf *resp)
{
    switch (method) {
    case KV_RPC_LIST:
    case KV_RPC_MOUNT:
        return KV_RPC_SLOW;
    default:
        return dispatch_timed(ud, method, req, len, resp, true);
    }
}

/* The master's RPC event loops: opts->io_threads, or one per two CPUs (1..8). One loop answers
 * every fast request of its connections on one thread, as Redis does: on 2 CPUs a second loop
 * mostly adds a cross-CPU wake-up per request (single-key gets at 4 clients: 38k/s with two
 * loops, 68k/s with one, same run; bench/README.md). Slow requests still go to the workers. */
static int io_threads(int opt)
{
    if (opt > 0)
        return opt;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    return (int)KV_MAX(1, KV_MIN(8, ncpu / 2));
}

static char *dup_or(const char *s, const char *def)
{
    return kv_strdup(s && *s ? s : def);
}

int kv_master_start(const struct kv_master_opts *o, struct kv_master **out)
{
    if (!o || !out || !o->metadata)
        return KV_EINVAL;
    /* Millions of small objects live between large buffers: MOUNT parts, batch requests, the
     * NODE_COMMITs packed from them. Left to glibc's dynamic mmap threshold, freed part buffers
     * went back to the heap, where the small objects allocated meanwhile pinned the space: a
     * rebuilt index held twice the memory of the one built by puts. But a low fixed threshold
     * maps and unmaps every 1 MiB batch buffer (page faults, TLB shootdowns: batch puts of 256
     * x 4 KiB ran 30-40 % slower). So: buffers up to 4 MiB come from the heap, where the next
     * request reuses them (the RPC server keeps a connection's receive buffer up to 4 MiB);
     * the bytes fields of unpacked messages (a MOUNT part's records) are mapped on their own
     * from 256 KiB (rpc.c, pb_alloc), and the heap's top is trimmed only past 64 MiB free, so
     * a freed 1 MiB buffer does not return to the kernel only to fault in again. */
    mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    mallopt(M_TOP_PAD, 4 * 1024 * 1024);
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
    m->poll_spin_us = o->poll_spin_us;
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
    pthread_cond_init(&m->commit_cond, NULL);
    pthread_cond_init(&m->wake_cond, NULL);
    kv_oidx_init(&m->index);
    kv_slab_init(&m->slab, KV_SLAB_CHUNKS_DEFAULT);
    m->lru.lru_next = m->lru.lru_prev = &m->lru;
    m->pend.lru_next = m->pend.lru_prev = &m->pend;
    m->last_ttl_sweep = kv_now_ms();
    atomic_init(&m->leader, false);
    atomic_init(&m->stopping, false);
    atomic_init(&m->lease_lost, false);
    atomic_init(&m->lease_deadline, 0);
    atomic_init(&m->keep_lease, 0);
    atomic_init(&m->fence_until, 0);
    atomic_init(&m->keepalive, kv_meta_lease_keepalive);

    rc = kv_meta_open(o->metadata, NULL, &m->meta);
    if (rc < 0) {
        KV_LOGE("metadata %s: %s", o->metadata, kv_strerror(rc));
        goto out_locks;
    }
    const char *addr = o->rpc_addr ? o->rpc_addr : KV_STORE_DEFAULT_RPC;
    struct kv_rpc_server_opts so = {.addr = addr,
                                    .handler = kv_master_handle,
                                    .fast_handler = kv_master_handle_fast,
                                    .ud = m,
                                    .io_threads = io_threads(o->io_threads),
                                    .workers = KV_RPC_DEF_WORKERS,
                                    .poll_spin_us = o->poll_spin_us};
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
    if (o->in_process_rpc) {
        rc = kv_rpc_local_add(host, kv_rpc_server_port(m->rpc), kv_master_handle, m, &m->local);
        if (rc < 0)
            goto out_rpc;
    }
    if (o->admin_addr && strcmp(o->admin_addr, "off") != 0) {
        rc = kv_master_admin_start(m, o->admin_addr);
        if (rc < 0) {
            KV_LOGE("cannot serve admin HTTP on %s: %s", o->admin_addr, kv_strerror(rc));
            goto out_rpc;
        }
    }
    if (pthread_create(&m->maint_thread, NULL, mst_maint_main, m) != 0) {
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
    kv_rpc_local_remove(m->local);
    kv_rpc_server_stop(m->rpc);
out_meta:
    kv_meta_close(m->meta);
out_locks:
    kv_oidx_fini(&m->index);
    kv_slab_fini(&m->slab);
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->evict_lock);
    pthread_mutex_destroy(&m->wake_lock);
    pthread_cond_destroy(&m->cond);
    pthread_cond_destroy(&m->commit_cond);
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
    kv_rpc_local_remove(m->local);
    kv_rpc_server_stop(m->rpc);
    mst_maint_wake(m);
    pthread_join(m->maint_thread, NULL);
    kv_master_admin_stop(m);
    atomic_store(&m->leader, false);
    kv_master_reset(m);
    while (m->dfree) {
        struct dfree *d = m->dfree;
        m->dfree = d->next;
        kv_free(d->key);
        mst_node_unref(d->node);
        kv_free(d);
    }
    kv_meta_close(m->meta);
    kv_oidx_fini(&m->index);
    kv_slab_fini(&m->slab); /* after kv_master_reset: no object is left */
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->evict_lock);
    pthread_mutex_destroy(&m->wake_lock);
    pthread_cond_destroy(&m->cond);
    pthread_cond_destroy(&m->commit_cond);
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
    return mst_leading(m);
}

int kv_master_wait_leader(struct kv_master *m, int timeout_ms)
{
    int64_t end = kv_now_ms() + timeout_ms;
    while (!mst_leading(m)) {
        if (kv_now_ms() >= end)
            return KV_ETIMEDOUT;
        kv_sleep_ms(10);
    }
    return KV_OK;
}
