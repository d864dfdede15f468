/* SPDX-License-Identifier: Apache-2.0 */
/*
 * store_int.h - the store's server side as library code: the master (index, placement, leases,
 * eviction, TTL, leader election, admin HTTP) and the storage node (DRAM segment + SSD tier).
 * `kvstash master`, `kvstash node` and `kvstash serve` are thin wrappers; tests run masters and
 * nodes in one process. Design: docs/design/store.md.
 *
 * Metadata keys (cluster C):
 *   /kvstash/C/masters/leader   JSON {id, rpc_addr, admin_addr, epoch}, bound to the leader's
 *                               lease (deleted when it dies)
 *   /kvstash/C/masters/epoch    decimal epoch counter (bumped by CAS before each campaign)
 *   segments: published by the transfer engine (node DRAM segments "<node-id>.<hex>")
 *
 * Thread-safety: start/stop from one thread; the accessors may be called from any thread.
 */
#ifndef KV_STORE_STORE_INT_H
#define KV_STORE_STORE_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "kvstash/err.h"
#include "kvstash/meta.h"

#define KV_STORE_MAX_REPLICAS 8
#define KV_STORE_DEFAULT_RPC "127.0.0.1:50051"
#define KV_STORE_DEFAULT_ADMIN "127.0.0.1:9003"

/* ---- master ------------------------------------------------------------------------------ */

struct kv_master_opts {
    const char *metadata;           /* metadata URL (required): election and discovery */
    const char *advertise_metadata; /* URL handed to clients in HELLO; NULL = metadata */
    const char *cluster;            /* NULL = "default" */
    const char *id;                 /* NULL = "master-<random>" */
    const char *rpc_addr;           /* "HOST:PORT" (port 0 = any); NULL = 127.0.0.1:50051 */
    const char *advertise_host;     /* host published in the leader key; NULL = rpc host
                                       (0.0.0.0 is published as 127.0.0.1) */
    const char *admin_addr;         /* admin HTTP "HOST:PORT"; NULL or "off" = none */
    uint32_t kv_expire_time_s;      /* default object TTL; 0 = 86400 */
    uint32_t cleanup_interval_ms;   /* TTL sweep period; 0 = 3600000 */
    double high_watermark;          /* 0 = 0.95 */
    double low_watermark;           /* 0 = 0.85 */
    uint32_t put_timeout_ms;        /* PENDING reclaimed after; 0 = 30000 */
    uint32_t lease_ms;              /* read lease granted by GET; 0 = 5000 */
    uint32_t node_timeout_ms;       /* node removed when silent for; 0 = 5000 */
    uint32_t evict_interval_ms;     /* eviction / deferred-free / reclaim period; 0 = 100 */
    int leader_ttl_s;               /* leader lease ttl; 0 = 3 */
    bool in_process_rpc;            /* answer RPC clients of this process directly (rpc_local.h) */
    int io_threads;                 /* RPC event loops; 0 = one per two CPUs, 1..8 */
    int poll_spin_us;               /* an idle RPC loop polls this long first; 0 = never */
};

struct kv_master;

/* Starts a master: RPC server, admin HTTP, maintenance thread and the leader campaign. Returns
 * once listening (it may still be a standby). *out is owned (kv_master_stop). Errors:
 * KV_EINVAL (bad option), KV_EMETA_* (metadata), bind errors (address in use). */
int kv_master_start(const struct kv_master_opts *opts, struct kv_master **out);
/* Stops serving, resigns leadership (revokes the leader lease so a standby takes over at
 * once), frees m. NULL is a no-op. */
void kv_master_stop(struct kv_master *m);
/* The advertised RPC "HOST:PORT" and admin port (0 when off). Borrowed, valid until stop. */
const char *kv_master_rpc_addr(const struct kv_master *m);
uint16_t kv_master_admin_port(const struct kv_master *m);
const char *kv_master_id(const struct kv_master *m);
bool kv_master_is_leader(struct kv_master *m);
/* Waits until this master leads (KV_OK) or timeout_ms passes (KV_ETIMEDOUT). */
int kv_master_wait_leader(struct kv_master *m, int timeout_ms);
/* The /api/v1/cluster JSON (owned, kv_free). */
int kv_master_stat_json(struct kv_master *m, char **json);
/* Test/inspection helpers (take the master's lock). */
uint64_t kv_master_object_count(struct kv_master *m);
int kv_master_node_count(struct kv_master *m);
/* Replica info of a COMPLETE key: number of replicas, how many are in DRAM / on SSD. KV_ENOENT
 * when absent or not complete. */
int kv_master_key_info(struct kv_master *m, const char *key, int *nrep, int *ndram, int *nssd);
/* Runs one maintenance pass now (eviction, deferred frees, reclaim, node timeouts; TTL sweep
 * when force_ttl). For tests. */
void kv_master_maintain_now(struct kv_master *m, bool force_ttl);

/* ---- node -------------------------------------------------------------------------------- */

struct kv_node_opts {
    const char *metadata;       /* metadata URL (required): segments, leader discovery */
    const char *cluster;        /* NULL = "default" */
    const char *master;         /* fixed master "HOST:PORT"; NULL = follow the elected leader */
    const char *node_id;        /* NULL = kept in <ssd_dir>/NODE_ID, else "node-<random>" */
    const char *segment;        /* exact segment name; NULL = "<node-id>.<8 hex>" (fresh per
                                   start, since a crashed predecessor's name may linger) */
    uint64_t capacity;          /* DRAM segment bytes (>= 1 MiB) */
    bool no_prefault;           /* false: populate the whole segment at start */
    int hugepages;              /* enum kv_xfer_huge of the DRAM segment; 0 = off */
    const char *ssd_dir;        /* NULL = no SSD tier */
    uint64_t ssd_capacity;      /* 0 = 64 GiB (with ssd_dir) */
    const char *bind;           /* RPC and transfer listen host; NULL = 127.0.0.1 */
    const char *advertise_host; /* published host; NULL = bind (0.0.0.0 -> 127.0.0.1) */
    const char *protocol;       /* transfer protocol; NULL = auto */
    const char *token;          /* transfer token; NULL = none */
    int heartbeat_ms;           /* 0 = 1000 */
    size_t mount_chunk;         /* objects per MOUNT part; 0 = 65536 (~6 MiB frames) */
    bool in_process_rpc;        /* answer RPC clients of this process directly (rpc_local.h):
                                   `serve`, whose master commits every put on this node */
    int poll_spin_us;           /* an idle RPC loop polls this long first; 0 = never */
};

struct kv_node;

/* Starts a node: transfer engine + DRAM segment, SSD scan, RPC server, and the control thread
 * that finds the master, MOUNTs (reporting every object it holds) and heartbeats. Returns
 * before the mount completes (see kv_node_wait_mounted). *out is owned (kv_node_stop). */
int kv_node_start(const struct kv_node_opts *opts, struct kv_node **out);
/* Stops heartbeating and serving; with an SSD tier writes every DRAM object to it (so a restart
 * on the same directory loses nothing); unregisters the segment, closes the SSD tier (files
 * stay), frees n. NULL is a no-op. */
void kv_node_stop(struct kv_node *n);
const char *kv_node_id(const struct kv_node *n);
const char *kv_node_segment(const struct kv_node *n);
const char *kv_node_rpc_addr(const struct kv_node *n);
/* Waits until the node is mounted on a master (KV_OK) or timeout_ms passes (KV_ETIMEDOUT). */
int kv_node_wait_mounted(struct kv_node *n, int timeout_ms);
/* Objects held: in DRAM and on SSD. */
void kv_node_counts(struct kv_node *n, uint64_t *dram, uint64_t *ssd);

#endif
