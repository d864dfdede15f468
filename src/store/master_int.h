/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_int.h - the master's private state and the functions its files share: master.c
 * (design, dispatch, lifecycle), master_obj.c, master_index.c, master_place.c, master_maint.c,
 * master_client.c, master_node.c, master_stats.c, master_ha.c (election) and master_admin.c
 * (admin HTTP).
 */
#ifndef KV_STORE_MASTER_INT_H
#define KV_STORE_MASTER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kvstash/store.h"
#include "store/alloc_seg.h"
#include "store/master_map.h"
#include "store/obj_slab.h"
#include "store/table_arena.h"
#include "store/rpc.h"
#include "store/rpc_local.h"
#include "store/store_int.h"

struct mnode {
    char *id;
    char *segment;
    char *host_id;
    char *rpc_addr;
    struct kv_rpc_client *rpc;
    struct kv_segalloc *alloc;
    uint64_t size;
    uint64_t ssd_capacity, ssd_used;
    uint64_t pending_free; /* DRAM bytes allocated but queued for a deferred free */
    int64_t last_hb_ms;    /* monotonic */
    bool removed;
    bool local;    /* its RPC server is in this process: calls to it never wait on the network */
    bool mounting; /* a MOUNT in parts is under way: no placement on it yet */
    int64_t fence_until; /* monotonic ms: no placement on it before (it served an older leader,
                            whose writes may still land in ranges we do not know) */
    size_t mount_ok, mount_rejected; /* objects of the mount so far */
    int refs;                        /* the node list holds one; RPCs in flight hold one each */
    /* group commit (master.c): PutEnds' requests waiting for a NODE_COMMIT, and how many
     * NODE_COMMITs are in flight */
    struct commit_req *cq_head, **cq_tail;
    int cq_inflight;
    struct mnode *next;
};

/* A replica: 16 bytes. */
struct mrep {
    struct mnode *node;
    kv_segblk blk;          /* DRAM block (dram or promoting) in node->alloc, else 0 */
    uint32_t dram : 1;      /* bytes valid in DRAM in blk */
    uint32_t ssd : 1;       /* a file on the node's SSD tier */
    uint32_t demoting : 1;  /* NODE_DEMOTE in flight (dram still valid) */
    uint32_t promoting : 1; /* NODE_PROMOTE in flight into blk (dram not valid yet) */
};

/* The DRAM offset of r's block. */
static inline uint64_t rep_off(const struct mrep *r)
{
    return kv_segalloc_offset(r->node->alloc, r->blk);
}

enum { OBJ_PENDING = 0, OBJ_COMPLETE = 1 };

/* An object: one allocation of sizeof(struct mobj) + the key + its replicas (obj_rep()): 96
 * bytes for a 16-byte key and one replica (a 112-byte malloc chunk). The index holds its address
 * (master_index.c): no link in here. Each byte here is a byte per object at 10M objects: no
 * field that can be computed (the key's hash) and times in the resolution they need. */
struct mobj {
    struct mobj *lru_prev, *lru_next; /* on m->lru when COMPLETE (head = most recent), on m->pend
                                         when PENDING (head = newest) */
    uint64_t size, checksum;
    int64_t created_wall; /* ms: also the incarnation nodes tell SSD copies apart by */
    int64_t lease_until;  /* monotonic ms: bytes stay put until then */
    union {
        uint32_t expire_q;         /* COMPLETE: expire_q_of_ms(), 0 = never */
        uint32_t put_deadline_sec; /* PENDING: monotonic seconds, reclaimed after */
    };
    uint32_t ttl_s;
    int32_t refs;       /* operations in flight outside the lock */
    uint16_t klen : 13; /* strlen(key) <= KV_STORE_MAX_KEY */
    uint16_t state : 1; /* OBJ_PENDING, OBJ_COMPLETE */
    uint16_t pin : 1;
    uint16_t dead : 1; /* unlinked from the index; freed when refs drops to 0 */
    uint8_t : 0;       /* the replica counts are another memory location than state & co., which
                          lookups read under the shard lock only (kv_oidx_peek_batch) */
    uint8_t nrep : 4;  /* replicas (<= KV_STORE_MAX_REPLICAS) */
    uint8_t cap : 4;   /* and room for them */
    char key[];        /* at byte 63, NUL-terminated; the replicas follow (obj_rep) */
};

_Static_assert(offsetof(struct mobj, key) == 63, "struct mobj: 63 bytes before the key");
_Static_assert(KV_STORE_MAX_KEY < (1 << 13) && KV_STORE_MAX_REPLICAS < 16,
               "struct mobj's bit fields hold a key length and replica counts");
/* The replicas of o: cap slots, nrep in use. */
static inline struct mrep *obj_rep(struct mobj *o)
{
    size_t at = (offsetof(struct mobj, key) + o->klen + 1 + 7) & ~(size_t)7;
    return (struct mrep *)((char *)o + at);
}

/* ---- the index (master_index.c) ---- */

#define KV_OIDX_SHARDS 256

/* Each shard has its own lock (master_index.c): the index's functions take it around every
 * change of its slots, so lookups that hold only the shard's lock (kv_oidx_peek_batch) never wait
 * on the master's lock. Lock order: kv_master.lock -> shard lock; several shard locks only in
 * ascending shard order (kv_oidx_peek_batch). */
struct kv_oidx_shard {
    pthread_mutex_t lock;
    uint64_t *slot; /* nb + SPILL slot words (master_index.c), or NULL */
    size_t nb;      /* home slots (a multiple of 16), or 0 */
    size_t n;
};

struct kv_oidx {
    struct kv_oidx_shard sh[KV_OIDX_SHARDS];
    size_t n;
    struct kv_tarena tabs; /* the shards' tables (table_arena.h) */
};

void kv_oidx_init(struct kv_oidx *idx);
/* Frees the tables (not the objects). */
void kv_oidx_fini(struct kv_oidx *idx);
uint32_t kv_oidx_hash(const char *key);
/* The object for key or NULL. */
struct mobj *kv_oidx_get(const struct kv_oidx *idx, const char *key);
/* Asks the CPU for the home slot of hash h (obj false), or for the first object of its run
 * whose tag matches (obj true: the slots should be in cache by then), ahead of a lookup: a
 * loop over many keys overlaps its cache misses (MOUNT of millions of objects). Caller holds
 * the master's lock. */
void kv_oidx_prefetch(const struct kv_oidx *idx, uint32_t h, bool obj);
/* Asks the CPU for the home slot of hash h only; safe without any lock (lookups under a shard's
 * lock: kv_oidx_peek_batch). */
void kv_oidx_prefetch_home(const struct kv_oidx *idx, uint32_t h);
/* kv_oidx_get with h = kv_oidx_hash(key) computed by the caller. */
struct mobj *kv_oidx_get_h(const struct kv_oidx *idx, const char *key, uint32_t h);
/* Adds o, whose key the caller just looked up (kv_oidx_get_h, same h) and did not find, without
 * looking again. KV_ENOMEM. */
int kv_oidx_put_absent(struct kv_oidx *idx, struct mobj *o, uint32_t h);
/* Sizes the tables for n objects in all (a mount announcing its total), so that filling the
 * index does not rehash it again and again. Best effort: on allocation failure it stays. */
void kv_oidx_reserve(struct kv_oidx *idx, size_t n);
/* Removes o (in the index). */
void kv_oidx_del(struct kv_oidx *idx, struct mobj *o);
/* Puts g in o's slot (same key), in one step under the shard's lock: a lookup
 * finds one of them, never neither. */
void kv_oidx_replace(struct kv_oidx *idx, struct mobj *o, struct mobj *g);
/* The lock of the shard of hash h. Writers (who hold kv_master.lock) take it around changes to
 * the fields kv_oidx_peek_batch callers read of an object in the index: state, expire_q, pin, dead.
 */
pthread_mutex_t *kv_oidx_lock_h(struct kv_oidx *idx, uint32_t h);
/* The same for the shard o is in. */
pthread_mutex_t *kv_oidx_lock_of(struct kv_oidx *idx, const struct mobj *o);
/* Lookup without kv_master.lock, n keys at once, hs[i] = kv_oidx_hash(keys[i]): out[i] =
 * fn(ud, the object of keys[i] or NULL), called while holding only that key's shard's lock;
 * keys[i] NULL is skipped (out[i] untouched). fn may read the key, state, expire_q, pin and dead
 * of o, nothing else, and must not call into the index. Each shard's lock is taken once for all
 * of its keys (held for a few lookups), and the keys' cache misses overlap. KV_ENOMEM (nothing
 * looked up). */
int kv_oidx_peek_batch(struct kv_oidx *idx, const char *const *keys, const uint32_t *hs, size_t n,
                       int (*fn)(void *ud, const struct mobj *o), void *ud, int32_t *out);
/* Calls fn for the objects in up to nslots slots from cursor `from` (0 = the start); fn returns
 * non-zero to have the object removed (it may have freed it). Returns the cursor to go on from,
 * 0 at the end. One call visits each object at most once; objects added, removed or moved
 * between two calls may be visited twice or not at all by that scan. */
uint64_t kv_oidx_each_range(struct kv_oidx *idx, uint64_t from, size_t nslots,
                            int (*fn)(void *ud, struct mobj *o), void *ud);
/* Every object (as kv_oidx_each_range over all slots). */
void kv_oidx_each(struct kv_oidx *idx, int (*fn)(void *ud, struct mobj *o), void *ud);

struct dfree {
    struct mnode *node; /* referenced */
    char *key;
    kv_segblk blk; /* the DRAM block (dram) */
    uint64_t off, size;
    bool dram, ssd;
    bool rpc;        /* tell the node (NODE_FREE) before freeing the range */
    bool keep_space; /* only tell the node (it forgets the key at once); another entry frees the
                        range when the readers' leases have ended */
    int64_t created;
    int64_t not_before; /* monotonic ms */
    struct dfree *next;
};

/* Renews a lease once (kv_meta_lease_keepalive; tests substitute one that stalls). */
typedef int (*mst_keepalive_fn)(struct kv_meta *meta, int64_t lease);
/* ---- metrics (master_metrics.c) ---- */
enum { MST_TIER_DRAM, MST_TIER_SSD, MST_NTIERS };
/* why a get missed: no such key, a put still in flight, expired by TTL, no readable replica */
enum { MST_MISS_NOT_FOUND, MST_MISS_PENDING, MST_MISS_EXPIRED, MST_MISS_LOST, MST_NMISS };
/* Counters in keys and bytes, under kv_master.lock. A get looks in DRAM, then in SSD: each tier
 * counts a hit or a miss for the lookups that reach it. */
struct mst_counters {
    uint64_t hits[MST_NTIERS], hit_bytes[MST_NTIERS];
    uint64_t misses[MST_NTIERS], miss_bytes[MST_NTIERS]; /* bytes: when the size is known */
    uint64_t miss_reason[MST_NMISS];
    uint64_t put_bytes, evicted_bytes, demoted_bytes, promoted_bytes, expired_bytes;
};
/* RPC handling time per operation (atomics, no lock); bounds in master_metrics.c */
#define MST_RPC_NB 17
#define MST_RPC_NOPS 11
struct mst_rpc_hist {
    _Atomic uint64_t b[MST_RPC_NB + 1];
    _Atomic uint64_t sum_ns;
};
/* The metric slot of an RPC method, -1 for none. */
int mst_rpc_slot(uint16_t method);
/* Records one RPC of method handled in ns nanoseconds. */
void mst_rpc_observe(struct kv_master *m, uint16_t method, int64_t ns);

struct kv_master {
    /* immutable after start */
    char *id;
    char *cluster;
    char *metadata;
    char *adv_meta;
    char rpc_addr[300]; /* advertised */
    char admin_addr[300];
    uint32_t expire_s, cleanup_ms, put_timeout_ms, lease_ms, node_timeout_ms, evict_ms;
    double high_wm, low_wm;
    int leader_ttl_s;
    int poll_spin_us; /* its RPC loops, and its calls to nodes, poll this long before sleeping */
    char leader_key[512];
    char epoch_key[512];
    struct kv_meta *meta;
    struct kv_rpc_server *rpc;
    struct kv_rpc_local *local; /* in-process registration (opts.in_process_rpc) or NULL */

    /* lock guards everything below up to "end lock"; lock order: evict_lock -> lock */
    pthread_mutex_t lock;
    pthread_cond_t cond;        /* promotions finished; maintenance wake-ups */
    pthread_cond_t commit_cond; /* a group commit finished (waiters re-check their requests) */
    struct kv_oidx index;       /* key -> struct mobj */
    struct kv_slab slab;        /* the struct mobj records (obj_slab.h) */
    struct mobj lru;            /* sentinel */
    struct mnode *nodes;
    int nnodes;
    struct dfree *dfree;
    uint64_t rng;
    uint64_t hits, misses, evictions, demotions, promotions, puts, gets, errors, expired;
    char leader_hint[300]; /* the leader's rpc addr when standby */
    uint64_t epoch;
    struct mobj pend; /* sentinel: PENDING objects, newest first (so oldest deadline last) */
    int64_t last_ttl_sweep;
    uint64_t ttl_cursor; /* where the TTL sweep in progress goes on (kv_oidx_each_range) */
    bool ttl_active;     /* a TTL sweep is in progress (done in steps between ticks) */
    uint64_t npending;   /* PENDING objects in the index */
    /* eviction asked for by puts that found no room, done by the maintenance thread */
    uint64_t evict_need;     /* bytes wanted by the requests not yet taken */
    uint64_t evict_req_seq;  /* requests made */
    uint64_t evict_done_seq; /* requests whose eviction pass finished (signalled on cond) */
    struct mst_counters mc;  /* metrics in keys and bytes (master_metrics.c) */
    /* end lock */
    struct mst_rpc_hist rpc_hist[MST_RPC_NOPS]; /* atomics */

    pthread_mutex_t evict_lock; /* serialises eviction passes (taken before lock) */
    atomic_bool leader;
    atomic_bool stopping;
    atomic_bool lease_lost;
    /* monotonic ms until which this master may act as leader: the send time of its last
     * keepalive that succeeded + leader ttl - a safety margin (master_ha.c, mst_leading) */
    _Atomic int64_t lease_deadline;
    int64_t lease; /* campaign thread only */
    /* the lease keeper (master_ha.c): renews keep_lease (0 = none) every ttl/3 */
    _Atomic int64_t keep_lease;
    pthread_t keeper_thread;
    bool keeper_started;
    /* sends one keepalive: kv_meta_lease_keepalive; a test may stall it */
    _Atomic mst_keepalive_fn keepalive;
    /* monotonic ms: nodes that served an older epoch are placed on only after it (won + leader
     * ttl + put timeout; set by the campaign thread before it becomes leader) */
    _Atomic int64_t fence_until;
    uint64_t watch_id;
    bool watching;
    pthread_t maint_thread, campaign_thread;
    pthread_mutex_t wake_lock; /* guards wake_flag; leaf */
    pthread_cond_t wake_cond;
    bool wake_flag;

    /* admin HTTP (master_admin.c) */
    struct kv_admin_http *admin;
    uint16_t admin_port;
};

/* ---- shared between the master_*.c files (see each file) ---- */

/* Metrics of one get (lock held): a hit in DRAM, or in SSD (a DRAM miss first). */
static inline void mst_count_hit(struct kv_master *m, bool via_ssd, uint64_t size)
{
    int t = via_ssd ? MST_TIER_SSD : MST_TIER_DRAM;
    m->mc.hits[t]++;
    m->mc.hit_bytes[t] += size;
    if (via_ssd) {
        m->mc.misses[MST_TIER_DRAM]++;
        m->mc.miss_bytes[MST_TIER_DRAM] += size;
    }
}

/* A get that neither tier served, and why (MST_MISS_*). */
static inline void mst_count_miss(struct kv_master *m, int why)
{
    m->mc.misses[MST_TIER_DRAM]++;
    m->mc.misses[MST_TIER_SSD]++;
    m->mc.miss_reason[why]++;
}

static inline bool key_ok(const char *k)
{
    size_t n = k ? strlen(k) : 0;
    return n > 0 && n <= KV_STORE_MAX_KEY;
}

static inline uint64_t node_used(const struct mnode *n)
{
    return kv_segalloc_used(n->alloc) - n->pending_free;
}

static inline uint64_t rounded(uint64_t size)
{
    uint64_t g = KV_SEGALLOC_GRAN;
    return size ? (size + g - 1) / g * g : g;
}

static inline void rep_drop(struct mobj *o, int i)
{
    obj_rep(o)[i] = obj_rep(o)[--o->nrep];
}

static inline int rep_find(struct mobj *o, struct mnode *n)
{
    for (int i = 0; i < o->nrep; i++)
        if (obj_rep(o)[i].node == n)
            return i;
    return -1;
}

/* Expiry is kept in 4 bytes: wall-clock quarter seconds since 2025-01-01 (good until 2059),
 * rounded up, so an object expires at most 250 ms after its TTL and never before. */
#define MST_EXPIRE_EPOCH_MS 1735689600000LL
#define MST_EXPIRE_TICK_MS 250

static inline uint32_t expire_q_of_ms(int64_t wall_ms)
{
    int64_t q = (wall_ms - MST_EXPIRE_EPOCH_MS + MST_EXPIRE_TICK_MS - 1) / MST_EXPIRE_TICK_MS;
    return q <= 0 ? 1 : q >= UINT32_MAX ? UINT32_MAX : (uint32_t)q;
}

/* Wall-clock ms at which o expires, 0 = never. */
static inline int64_t expire_ms(const struct mobj *o)
{
    return o->expire_q ? MST_EXPIRE_EPOCH_MS + (int64_t)o->expire_q * MST_EXPIRE_TICK_MS : 0;
}

static inline bool expired(const struct mobj *o, int64_t wall)
{
    return o->state == OBJ_COMPLETE && o->expire_q && expire_ms(o) <= wall;
}

/* o expires ttl_s seconds after wall (ms). */
static inline void obj_set_expire(struct mobj *o, int64_t wall)
{
    o->expire_q = expire_q_of_ms(wall + (int64_t)o->ttl_s * 1000);
}

static inline void lru_remove(struct mobj *o)
{
    if (o->lru_prev) {
        o->lru_prev->lru_next = o->lru_next;
        o->lru_next->lru_prev = o->lru_prev;
        o->lru_prev = o->lru_next = NULL;
    }
}

/* Moves o to the head of the list whose sentinel is head (m->lru or m->pend). */
static inline void list_push(struct mobj *head, struct mobj *o)
{
    lru_remove(o);
    o->lru_next = head->lru_next;
    o->lru_prev = head;
    head->lru_next->lru_prev = o;
    head->lru_next = o;
}

static inline void lru_push(struct kv_master *m, struct mobj *o)
{
    list_push(&m->lru, o);
}

/* master_obj.c (lock held unless said otherwise) */
/* Drops a reference; the last one frees the node. */
void mst_node_unref(struct mnode *n);
struct mnode *mst_node_find(struct kv_master *m, const char *id);
/* Queues a replica range of key on n for release (NODE_FREE first when rpc) not before
 * not_before (monotonic ms). */
void mst_defer_free(struct kv_master *m, struct mnode *n, const char *key, kv_segblk blk,
                    uint64_t size, bool dram, bool ssd, bool rpc, int64_t created,
                    int64_t not_before);
/* A zeroed object for key with room for cap replicas (one record from sl, obj_slab.h: mobj, key,
 * replicas), or NULL. */
struct mobj *mst_obj_new(struct kv_slab *sl, const char *key, int cap);
/* Frees o (from mst_obj_new on sl; NULL is ignored); its klen and cap name its size. */
void mst_obj_free(struct kv_slab *sl, struct mobj *o);
/* Marks o dead and unlinks it (the caller already removed it from the index map when
 * in_map is false). */
void mst_obj_unlink2(struct kv_master *m, struct mobj *o, bool in_map);
void mst_obj_unlink(struct kv_master *m, struct mobj *o);
/* Removes and frees a PENDING object just placed that nobody has seen (no client, no node): its
 * ranges go straight back to the allocators. */
void mst_obj_abandon(struct kv_master *m, struct mobj *o);
/* Drops an operation's reference on o; frees a dead o with the last one. */
void mst_obj_put_done(struct kv_master *m, struct mobj *o);
/* Unlists n and drops its replicas (objects left without any are unlinked). */
void mst_node_remove(struct kv_master *m, struct mnode *n, const char *why);
/* o with room for one more replica: o itself, or a copy that replaces it in the index and its
 * list (only while no operation holds o: refs == 0). NULL when neither is possible. */
struct mobj *mst_obj_grow(struct kv_master *m, struct mobj *o);
/* Releases the deferred frees that are due (NODE_FREE in batches per node). Takes the lock. */
void mst_process_dfree(struct kv_master *m);
/* Drops every node and object (on losing leadership). Takes the lock. */
void kv_master_reset(struct kv_master *m);

/* At item i of a batch being placed: prefetches the index for items ahead (lock held). */
void mst_prefetch_items(struct kv_master *m, Kvstash__PutItem **items, size_t n, size_t i);
/* master_place.c */
/* Chooses up to want distinct nodes weighted by free DRAM and allocates size on each. Returns
 * the number placed (reps filled). */
int mst_place(struct kv_master *m, uint64_t size, int want, struct mrep *reps);
/* One eviction pass over every node (force: the node that must make need bytes of room). */
void mst_evict_pass(struct kv_master *m, struct mnode *force, uint64_t need);
/* Places items[0..n) as PENDING objects: status[i] gets each item's status, slots[i] (slots may
 * be NULL) its replicas, objs[i] (objs may be NULL) its object. Items that found no room get one
 * more try after an eviction pass over the nodes. Takes the lock. */
void mst_place_items(struct kv_master *m, Kvstash__PutItem **items, size_t n, int32_t *status,
                     Kvstash__PutSlot *slots, struct mobj **objs);
/* As mst_place_items on an I/O thread, which must not wait: returns KV_RPC_SLOW, with nothing
 * placed, when an eviction would be needed or (local_only) a node is not in this process;
 * KV_OK otherwise. */
int mst_place_items_now(struct kv_master *m, Kvstash__PutItem **items, size_t n, int32_t *status,
                        Kvstash__PutSlot *slots, struct mobj **objs, bool local_only);
/* True when every mounted node is in this process (lock held). */
bool mst_nodes_all_local(struct kv_master *m);
/* Promotes o from SSD on replica node n into DRAM. Called and returns with the lock held; drops
 * it around the RPC. */
int mst_promote(struct kv_master *m, struct mobj *o, int ri);

/* master_maint.c */
/* Wakes the maintenance thread now. */
void mst_maint_wake(struct kv_master *m);
/* The maintenance thread (arg: the master). */
void *mst_maint_main(void *arg);

/* master_client.c. The mst_h_* handlers decode req[0..len), append the response to resp and
 * return the frame status (rpc.h); they take the lock themselves. */
/* Packs msg into resp. */
int mst_reply(struct kv_buf *resp, const ProtobufCMessage *msg);
/* The NotLeader answer (KV_EAGAIN with the leader's address when known). */
int mst_not_leader(struct kv_master *m, struct kv_buf *resp);
int mst_h_hello(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp);
/* Places one item as a PENDING object. slot (may be NULL) gets the replicas for the writer;
 * *out (may be NULL) the object. */
int mst_put_start_one(struct kv_master *m, const Kvstash__PutItem *it, Kvstash__PutSlot *slot,
                      struct mobj **out);
/* fast: on an I/O thread (rpc.h fast_handler): KV_RPC_SLOW instead of anything that may
 * block (an eviction to wait for, a node not in this process, an SSD promotion). */
int mst_h_put_start(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp,
                    bool fast);
int mst_h_put_end(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp,
                  bool fast);
/* PUT: small values carried in the request. Each item is placed as PutStart would, its bytes go
 * to the replicas' nodes inside the (group) NODE_COMMIT, and the object is COMPLETE when they
 * acknowledged: one client round trip instead of PutStart + write + PutEnd. */
int mst_h_put(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp, bool fast);
int mst_h_get(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp, bool fast);
/* EXISTS (lookups under the shard locks only) or REMOVE. A REMOVE answers once the nodes forgot
 * the keys (NODE_FREE); on the I/O thread (fast) only when every node is in this process and no
 * removed object has an SSD copy (the node would unlink files), else KV_RPC_SLOW before any
 * change. */
int mst_h_exists_remove(struct kv_master *m, bool remove, const uint8_t *req, size_t len,
                        struct kv_buf *resp, bool fast);
int mst_h_list(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp);
int mst_h_stat(struct kv_master *m, struct kv_buf *resp);

/* master_node.c */
/* A call to node n, without the lock (hold a reference on n); failures are logged. */
int mst_call_node(struct mnode *n, uint16_t method, const ProtobufCMessage *req,
                  const ProtobufCMessageDescriptor *rd, ProtobufCMessage **resp);
int mst_h_mount(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp);
int mst_h_heartbeat(struct kv_master *m, const uint8_t *req, size_t len, struct kv_buf *resp);

/* master.c: the RPC entry point (kv_rpc_handler_fn) */
int kv_master_handle(void *ud, uint16_t method, const uint8_t *req, size_t len,
                     struct kv_buf *resp);
/* The fast_handler (rpc.h): answers the requests that cannot block on the I/O thread, and
 * KV_RPC_SLOW for the others. */
int kv_master_handle_fast(void *ud, uint16_t method, const uint8_t *req, size_t len,
                          struct kv_buf *resp);

/* master_stats.c */
/* Builds the cluster JSON under the lock. */
char *kv_master_cluster_json(struct kv_master *m);
/* Prometheus text into b (master_metrics.c). */
int kv_master_metrics(struct kv_master *m, struct kv_buf *b);
/* The status page's JSON (master_metrics.c): the cluster JSON plus counters, latency
 * histograms and process figures, sampled now. Free with kv_free; NULL on KV_ENOMEM. */
char *kv_master_status_json(struct kv_master *m);

/* master_ha.c */
/* The one check of every leader-only path (client and node handlers, placement, commits,
 * maintenance): true while this master is the leader and its local lease deadline has not
 * passed. The first caller to find the deadline passed steps the master down (it stops acting
 * as leader at once; the campaign thread then drops its state and campaigns as a standby).
 * Any thread, any lock. */
bool mst_leading(struct kv_master *m);
/* True when nodes are mounted but every one is still fenced (fence_until): a put must wait.
 * Takes the lock. */
bool mst_place_fenced(struct kv_master *m);
int kv_master_campaign_start(struct kv_master *m);
void kv_master_campaign_stop(struct kv_master *m);

/* master_admin.c: /health, /ready, /metrics, /api/v1/cluster on the shared admin server */
int kv_master_admin_start(struct kv_master *m, const char *addr);
void kv_master_admin_stop(struct kv_master *m);

#endif
