/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_master.c - the store master's logic in-process: real masters and nodes on embedded
 * metadata, driven through the RPC layer as a client would (the bytes never matter to the
 * master; a value of zeros has a known checksum since node segments start zeroed).
 * Covers placement (distinct nodes, weighted by free space), eviction between the watermarks
 * with leases and pins respected, demotion to SSD and promotion on a hit, TTL cleanup, PENDING
 * reclaim, remove with a live lease, first-writer-wins, node restart on the same SSD dir, and
 * fail-over to a standby that rebuilds the index from the nodes' MOUNTs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "kvstash/kvstash.h"
#include "common/hash.h"
#include "common/util.h"
#include "store/master_int.h"
#include "store/mount_pack.h"
#include "store/rpc.h"
#include "store/store_int.h"

static int seq;
static char url[128];
static char ssd_dirs[4][128];

static void new_url(void)
{
    snprintf(url, sizeof(url), "embedded://test-master-%d-%d", (int)getpid(), ++seq);
}

static struct kv_master *start_master(const struct kv_master_opts *base)
{
    struct kv_master_opts o = *base;
    o.metadata = url;
    o.rpc_addr = "127.0.0.1:0";
    o.admin_addr = "127.0.0.1:0";
    struct kv_master *m;
    assert_int_equal(kv_master_start(&o, &m), KV_OK);
    return m;
}

static struct kv_node *start_node2(const char *id, uint64_t cap, const char *ssd,
                                   size_t mount_chunk)
{
    struct kv_node_opts o = {.metadata = url,
                             .node_id = id,
                             .capacity = cap,
                             .ssd_dir = ssd,
                             .ssd_capacity = ssd ? 64u << 20 : 0,
                             .heartbeat_ms = 200,
                             .mount_chunk = mount_chunk};
    struct kv_node *n;
    assert_int_equal(kv_node_start(&o, &n), KV_OK);
    assert_int_equal(kv_node_wait_mounted(n, 5000), KV_OK);
    return n;
}

static struct kv_node *start_node(const char *id, uint64_t cap, const char *ssd)
{
    return start_node2(id, cap, ssd, 0);
}

static struct kv_rpc_client *client(struct kv_master *m)
{
    struct kv_rpc_client *c;
    assert_int_equal(kv_rpc_client_create(kv_master_rpc_addr(m), 1000, &c), KV_OK);
    return c;
}

static uint64_t zsum(uint64_t size)
{
    void *z = kv_calloc(1, size ? size : 1);
    uint64_t h = kv_hash64(z, size);
    kv_free(z);
    return h;
}

/* PUT_START (+ PUT_END unless !finish). Returns the item status; node ids of the replicas into
 * ids (if non-NULL). */
static int put(struct kv_rpc_client *c, const char *key, uint64_t size, int replicas, uint32_t ttl,
               bool pin, bool finish, char ids[][64])
{
    Kvstash__PutItem it = KVSTASH__PUT_ITEM__INIT;
    it.key = (char *)key;
    it.size = size;
    it.replicas = (uint32_t)replicas;
    it.ttl_s = ttl;
    it.pin = pin;
    Kvstash__PutItem *pit = &it;
    Kvstash__PutStartReq rq = KVSTASH__PUT_START_REQ__INIT;
    rq.n_items = 1;
    rq.items = &pit;
    Kvstash__PutStartResp *rs = NULL;
    int rc = kv_rpc_call_pb(c, KV_RPC_PUT_START, &rq.base, &kvstash__put_start_resp__descriptor,
                            (ProtobufCMessage **)&rs, 5000, NULL, 0);
    if (rc < 0)
        return rc;
    assert_int_equal(rs->n_slots, 1);
    rc = rs->slots[0]->status;
    if (rc == KV_OK && ids)
        for (size_t i = 0; i < rs->slots[0]->n_replicas; i++)
            snprintf(ids[i], 64, "%s", rs->slots[0]->replicas[i]->node_id);
    kv_rpc_pb_free(&rs->base);
    if (rc < 0 || !finish)
        return rc;
    Kvstash__PutEndItem e = KVSTASH__PUT_END_ITEM__INIT;
    e.key = (char *)key;
    e.checksum = zsum(size);
    e.ok = true;
    Kvstash__PutEndItem *pe = &e;
    Kvstash__PutEndReq er = KVSTASH__PUT_END_REQ__INIT;
    er.n_items = 1;
    er.items = &pe;
    Kvstash__StatusList *sl = NULL;
    rc = kv_rpc_call_pb(c, KV_RPC_PUT_END, &er.base, &kvstash__status_list__descriptor,
                        (ProtobufCMessage **)&sl, 5000, NULL, 0);
    if (rc < 0)
        return rc;
    rc = sl->status[0];
    kv_rpc_pb_free(&sl->base);
    return rc;
}

static int keycall(struct kv_rpc_client *c, uint16_t method, const char *key)
{
    Kvstash__KeyList kl = KVSTASH__KEY_LIST__INIT;
    char *k = (char *)key;
    kl.n_keys = 1;
    kl.keys = &k;
    if (method == KV_RPC_GET) {
        Kvstash__GetResp *r = NULL;
        int rc = kv_rpc_call_pb(c, method, &kl.base, &kvstash__get_resp__descriptor,
                                (ProtobufCMessage **)&r, 5000, NULL, 0);
        if (rc < 0)
            return rc;
        rc = r->items[0]->status;
        if (rc == KV_OK)
            assert_true(r->items[0]->n_replicas > 0);
        kv_rpc_pb_free(&r->base);
        return rc;
    }
    Kvstash__StatusList *sl = NULL;
    int rc = kv_rpc_call_pb(c, method, &kl.base, &kvstash__status_list__descriptor,
                            (ProtobufCMessage **)&sl, 5000, NULL, 0);
    if (rc < 0)
        return rc;
    rc = sl->status[0];
    kv_rpc_pb_free(&sl->base);
    return rc;
}

/* One EXISTS or REMOVE call for n keys: out[i] = the status of keys[i]. KV_OK or the call's
 * error. */
static int keys_call(struct kv_rpc_client *c, uint16_t method, size_t n, char **keys, int *out)
{
    Kvstash__KeyList kl = KVSTASH__KEY_LIST__INIT;
    kl.n_keys = n;
    kl.keys = keys;
    Kvstash__StatusList *sl = NULL;
    int rc = kv_rpc_call_pb(c, method, &kl.base, &kvstash__status_list__descriptor,
                            (ProtobufCMessage **)&sl, 5000, NULL, 0);
    if (rc < 0)
        return rc;
    assert_int_equal(sl->n_status, n);
    for (size_t i = 0; i < n; i++)
        out[i] = sl->status[i];
    kv_rpc_pb_free(&sl->base);
    return KV_OK;
}

/* Checks one EXISTS call of 64 stable keys (present), 2,000 absent ones, a bad key (empty) and
 * repeats, interleaved: the index groups a batch's keys by shard and answers in the asked
 * order. */
static void check_exists_many(struct kv_rpc_client *cl)
{
    enum { N = 64 + 2000 + 1 + 64 };
    static char kb[N][32];
    char *keys[N];
    int want[N], got[N];
    size_t n = 0;
    for (int i = 0; i < 2000; i++) {
        if (i % 31 == 0 && i / 31 < 64) { /* a stable key, present */
            snprintf(kb[n], sizeof(kb[n]), "stable-%d", i / 31);
            want[n++] = 1;
        }
        snprintf(kb[n], sizeof(kb[n]), "absent-%d", i);
        want[n++] = 0;
        if (i == 1000) {
            kb[n][0] = '\0'; /* not a key */
            want[n++] = KV_EINVAL;
        }
    }
    for (int i = 0; i < 64; i++) { /* each stable key a second time */
        snprintf(kb[n], sizeof(kb[n]), "stable-%d", 63 - i);
        want[n++] = 1;
    }
    assert_int_equal(n, N);
    for (size_t i = 0; i < n; i++)
        keys[i] = kb[i];
    assert_int_equal(keys_call(cl, KV_RPC_EXISTS, n, keys, got), KV_OK);
    for (size_t i = 0; i < n; i++) {
        if (got[i] != want[i])
            print_message("key %zu '%s': %d, want %d\n", i, kb[i], got[i], want[i]);
        assert_int_equal(got[i], want[i]);
    }
}

/* DRAM bytes in use on node id (from the cluster JSON), or -1. */
static long long node_dram_used(struct kv_master *m, const char *id)
{
    char *js;
    assert_int_equal(kv_master_stat_json(m, &js), KV_OK);
    json_t *j = json_loads(js, 0, NULL);
    kv_free(js);
    long long used = -1;
    json_t *nodes = json_object_get(j, "nodes"), *v;
    size_t i;
    json_array_foreach(nodes, i, v)
    {
        if (strcmp(json_string_value(json_object_get(v, "id")), id) == 0)
            used = json_integer_value(json_object_get(v, "used"));
    }
    json_decref(j);
    return used;
}

static long long stat_num(struct kv_master *m, const char *field)
{
    char *js;
    assert_int_equal(kv_master_stat_json(m, &js), KV_OK);
    json_t *j = json_loads(js, 0, NULL);
    kv_free(js);
    long long v = json_integer_value(json_object_get(j, field));
    json_decref(j);
    return v;
}

static int setup_dirs(void **state)
{
    (void)state;
    for (int i = 0; i < 4; i++) {
        snprintf(ssd_dirs[i], sizeof(ssd_dirs[i]), "/tmp/kvstash-test-master-XXXXXX");
        assert_non_null(mkdtemp(ssd_dirs[i]));
    }
    return 0;
}

static int rm_dirs(void **state)
{
    (void)state;
    for (int i = 0; i < 4; i++) {
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", ssd_dirs[i]);
        assert_int_equal(system(cmd), 0);
    }
    return 0;
}

static void test_placement(void **state)
{
    (void)state;
    new_url();
    struct kv_master_opts mo = {0};
    struct kv_master *m = start_master(&mo);
    assert_int_equal(kv_master_wait_leader(m, 5000), KV_OK);
    struct kv_node *a = start_node("a", 8u << 20, NULL);
    struct kv_node *b = start_node("b", 8u << 20, NULL);
    struct kv_node *c = start_node("c", 32u << 20, NULL);
    assert_int_equal(kv_master_node_count(m), 3);
    struct kv_rpc_client *cl = client(m);
    /* replicas on distinct nodes; weighted by free space (c has 2/3 of it) */
    int onc = 0, total = 0;
    for (int i = 0; i < 300; i++) {
        char key[32], ids[KV_STORE_MAX_REPLICAS][64];
        snprintf(key, sizeof(key), "p%d", i);
        assert_int_equal(put(cl, key, 4096, 2, 0, false, true, ids), KV_OK);
        assert_string_not_equal(ids[0], ids[1]);
        onc += (strcmp(ids[0], "c") == 0) + (strcmp(ids[1], "c") == 0);
        total += 2;
    }
    /* two distinct draws: c is in most pairs but never twice; a or b fill the other slot */
    print_message("placement: node c holds %d of %d replicas\n", onc, total);
    assert_true(onc > 200 && onc < 300);
    /* first writer wins; a PENDING key is taken too */
    assert_int_equal(put(cl, "p1", 4096, 1, 0, false, true, NULL), KV_EEXIST);
    assert_int_equal(put(cl, "pend", 4096, 1, 0, false, false, NULL), KV_OK);
    assert_int_equal(put(cl, "pend", 4096, 1, 0, false, true, NULL), KV_EEXIST);
    /* more replicas than nodes; bad keys */
    assert_int_equal(put(cl, "x4", 4096, 4, 0, false, true, NULL), KV_ENOSPC);
    assert_int_equal(put(cl, "", 4096, 1, 0, false, true, NULL), KV_EINVAL);
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "p7"), 1);
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "pend"), 0);
    assert_int_equal(keycall(cl, KV_RPC_GET, "pend"), KV_ENOENT);
    assert_int_equal(keycall(cl, KV_RPC_GET, "p7"), KV_OK);
    assert_int_equal(keycall(cl, KV_RPC_GET, "nope"), KV_ENOENT);
    kv_rpc_client_destroy(cl);
    kv_node_stop(a);
    kv_node_stop(b);
    kv_node_stop(c);
    kv_master_stop(m);
}

static void test_fresh_node_not_flooded(void **state)
{
    (void)state;
    new_url();
    struct kv_master_opts mo = {.high_watermark = 0.99, .low_watermark = 0.98};
    struct kv_master *m = start_master(&mo);
    assert_int_equal(kv_master_wait_leader(m, 5000), KV_OK);
    struct kv_node *a = start_node("a", 4u << 20, NULL);
    struct kv_rpc_client *cl = client(m);
    for (int i = 0; i < 24; i++) { /* a: 75% full */
        char key[32];
        snprintf(key, sizeof(key), "old%d", i);
        assert_int_equal(put(cl, key, 128 << 10, 1, 0, false, true, NULL), KV_OK);
    }
    struct kv_node *b = start_node("b", 4u << 20, NULL);
    int onb = 0;
    for (int i = 0; i < 40; i++) {
        char key[32], ids[KV_STORE_MAX_REPLICAS][64];
        snprintf(key, sizeof(key), "new%d", i);
        assert_int_equal(put(cl, key, 4096, 1, 0, false, true, ids), KV_OK);
        onb += strcmp(ids[0], "b") == 0;
    }
    print_message("fresh node b got %d of 40 new objects\n", onb);
    /* weighted by free space (b ~4x a's): most, but not all, go to b */
    assert_true(onb >= 20 && onb < 40);
    kv_rpc_client_destroy(cl);
    kv_node_stop(a);
    kv_node_stop(b);
    kv_master_stop(m);
}

static void test_eviction_leases_pins(void **state)
{
    (void)state;
    new_url();
    struct kv_master_opts mo = {.lease_ms = 60000, .evict_interval_ms = 60000};
    struct kv_master *m = start_master(&mo);
    assert_int_equal(kv_master_wait_leader(m, 5000), KV_OK);
    struct kv_node *a = start_node("a", 1u << 20, NULL); /* 16 x 64 KiB */
    struct kv_rpc_client *cl = client(m);
    assert_int_equal(put(cl, "k0", 64 << 10, 1, 0, true, true, NULL), KV_OK); /* pinned */
    for (int i = 1; i < 15; i++) {
        char key[32];
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(put(cl, key, 64 << 10, 1, 0, false, true, NULL), KV_OK);
    }
    assert_int_equal(keycall(cl, KV_RPC_GET, "k1"), KV_OK); /* leased for 60 s */
    kv_master_maintain_now(m, false);
    assert_int_equal(kv_master_object_count(m), 15); /* 15/16 = 93.75% < 95% */
    assert_int_equal(put(cl, "k15", 64 << 10, 1, 0, false, true, NULL), KV_OK); /* 100% */
    kv_master_maintain_now(m, false);
    long long used = node_dram_used(m, "a");
    print_message("after eviction: %lld bytes used of 1 MiB, %llu objects\n", used,
                  (unsigned long long)kv_master_object_count(m));
    for (int i = 0; i < 16; i++) {
        char key[32];
        snprintf(key, sizeof(key), "k%d", i);
        print_message("%s=%d ", key, keycall(cl, KV_RPC_EXISTS, key));
    }
    print_message("\n");
    assert_true(used <= (long long)(0.85 * (1 << 20)));
    assert_true(used >= (long long)(0.70 * (1 << 20)));     /* not more than needed */
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "k0"), 1);  /* pinned */
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "k1"), 1);  /* leased */
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "k2"), 0);  /* LRU, evicted first */
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "k15"), 1); /* most recent */
    assert_true(stat_num(m, "evictions") >= 2);
    /* full of leased/pinned data: a put that cannot fit fails cleanly */
    assert_int_equal(put(cl, "big", 2u << 20, 1, 0, false, true, NULL), KV_ENOSPC);
    /* a synchronous eviction on a full node makes room */
    for (int i = 16; i < 40; i++) {
        char key[32];
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(put(cl, key, 64 << 10, 1, 0, false, true, NULL), KV_OK);
    }
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "k0"), 1);
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "k1"), 1);
    kv_rpc_client_destroy(cl);
    kv_node_stop(a);
    kv_master_stop(m);
}

static void test_ttl_pending_remove(void **state)
{
    (void)state;
    new_url();
    struct kv_master_opts mo = {.lease_ms = 600,
                                .put_timeout_ms = 300,
                                .cleanup_interval_ms = 200,
                                .evict_interval_ms = 50};
    struct kv_master *m = start_master(&mo);
    assert_int_equal(kv_master_wait_leader(m, 5000), KV_OK);
    struct kv_node *a = start_node("a", 4u << 20, NULL);
    struct kv_rpc_client *cl = client(m);
    /* TTL */
    assert_int_equal(put(cl, "short", 64 << 10, 1, 1, false, true, NULL), KV_OK);
    assert_int_equal(put(cl, "long", 64 << 10, 1, 3600, false, true, NULL), KV_OK);
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "short"), 1);
    kv_sleep_ms(1300);
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "short"), 0);
    for (int i = 0; i < 100 && kv_master_object_count(m) != 1; i++)
        kv_sleep_ms(20);
    assert_int_equal(kv_master_object_count(m), 1);
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "long"), 1);
    for (int i = 0; i < 100 && node_dram_used(m, "a") != 64 << 10; i++)
        kv_sleep_ms(20);
    assert_int_equal(node_dram_used(m, "a"), 64 << 10);
    assert_true(stat_num(m, "expired") >= 1);
    /* abandoned PENDING put is reclaimed after put_timeout */
    assert_int_equal(put(cl, "abandoned", 256 << 10, 1, 0, false, false, NULL), KV_OK);
    assert_int_equal(node_dram_used(m, "a"), (64 + 256) << 10);
    for (int i = 0; i < 100 && node_dram_used(m, "a") != 64 << 10; i++)
        kv_sleep_ms(20);
    assert_int_equal(node_dram_used(m, "a"), 64 << 10);
    assert_int_equal(kv_master_object_count(m), 1);
    /* remove without a lease: the node forgot the key before the client hears OK (with the
     * node in this process the master answers on its I/O thread) */
    uint64_t d0, d1, s0;
    kv_node_counts(a, &d0, &s0);
    assert_int_equal(put(cl, "gone", 4 << 10, 1, 0, false, true, NULL), KV_OK);
    kv_node_counts(a, &d1, &s0);
    assert_int_equal(d1, d0 + 1);
    assert_int_equal(keycall(cl, KV_RPC_REMOVE, "gone"), KV_OK);
    kv_node_counts(a, &d1, &s0);
    assert_int_equal(d1, d0);
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "gone"), 0);
    /* a key twice in one REMOVE: removed once, then not found */
    assert_int_equal(put(cl, "twice", 4 << 10, 1, 0, false, true, NULL), KV_OK);
    char *dup[2] = {"twice", "twice"};
    int dst[2];
    assert_int_equal(keys_call(cl, KV_RPC_REMOVE, 2, dup, dst), KV_OK);
    assert_int_equal(dst[0], KV_OK);
    assert_int_equal(dst[1], KV_ENOENT);
    kv_node_counts(a, &d1, &s0);
    assert_int_equal(d1, d0);
    /* remove with a live lease: invisible at once, bytes freed when the lease ends */
    assert_int_equal(keycall(cl, KV_RPC_GET, "long"), KV_OK);
    assert_int_equal(keycall(cl, KV_RPC_REMOVE, "long"), KV_OK);
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "long"), 0);
    assert_int_equal(keycall(cl, KV_RPC_REMOVE, "long"), KV_ENOENT);
    assert_int_equal(keycall(cl, KV_RPC_GET, "long"), KV_ENOENT);
    kv_sleep_ms(150);
    assert_int_equal(node_dram_used(m, "a"), 64 << 10); /* still leased */
    for (int i = 0; i < 100 && node_dram_used(m, "a") != 0; i++)
        kv_sleep_ms(20);
    assert_int_equal(node_dram_used(m, "a"), 0);
    /* the key can be put again */
    assert_int_equal(put(cl, "long", 64 << 10, 1, 0, false, true, NULL), KV_OK);
    kv_rpc_client_destroy(cl);
    kv_node_stop(a);
    kv_master_stop(m);
}

/* Lookups hold only a shard of the index: EXISTS answers while the master's lock is held (by
 * this test, standing for a long batch put, MOUNT or eviction pass), and never misses a
 * committed key while other threads put, remove, get and sweep around it. */
struct churn {
    struct kv_master *m;
    atomic_bool stop;
    atomic_int puts;
};

static void *churn_main(void *arg)
{
    struct churn *c = arg;
    struct kv_rpc_client *cl = client(c->m);
    char key[32];
    for (int i = 0; !atomic_load(&c->stop); i++) {
        snprintf(key, sizeof(key), "churn-%d", i % 64);
        if (put(cl, key, 4096, 1, 0, false, true, NULL) == KV_OK)
            c->puts++;
        keycall(cl, KV_RPC_GET, key);
        if (i % 3 == 0)
            keycall(cl, KV_RPC_REMOVE, key);
    }
    kv_rpc_client_destroy(cl);
    return NULL;
}

static void test_exists_beside_writers(void **state)
{
    (void)state;
    new_url();
    struct kv_master_opts mo = {.evict_interval_ms = 20, .lease_ms = 200};
    struct kv_master *m = start_master(&mo);
    assert_int_equal(kv_master_wait_leader(m, 5000), KV_OK);
    struct kv_node *a = start_node("a", 8u << 20, NULL);
    struct kv_rpc_client *cl = client(m);
    char key[32];
    for (int i = 0; i < 64; i++) {
        snprintf(key, sizeof(key), "stable-%d", i); /* pinned: the churn may fill the node */
        assert_int_equal(put(cl, key, 1024, 1, 0, true, true, NULL), KV_OK);
    }
    /* the master's lock held: EXISTS still answers (the client's call times out otherwise) */
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < 64; i++) {
        snprintf(key, sizeof(key), "stable-%d", i);
        assert_int_equal(keycall(cl, KV_RPC_EXISTS, key), 1);
    }
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "absent"), 0);
    check_exists_many(cl);
    pthread_mutex_unlock(&m->lock);
    /* writers, readers and the TTL sweep at once: a committed key is always there */
    struct churn c = {.m = m};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, churn_main, &c), 0);
    int64_t end = kv_now_ms() + 1000;
    for (int round = 0; kv_now_ms() < end; round++) {
        for (int i = 0; i < 64; i++) {
            snprintf(key, sizeof(key), "stable-%d", i);
            assert_int_equal(keycall(cl, KV_RPC_EXISTS, key), 1);
            snprintf(key, sizeof(key), "churn-%d", i);
            int e = keycall(cl, KV_RPC_EXISTS, key);
            assert_true(e == 0 || e == 1);
        }
        if (round % 4 == 0)
            kv_master_maintain_now(m, true);
        if (round % 8 == 0)
            check_exists_many(cl); /* beside the writers, the whole batch still exact */
    }
    atomic_store(&c.stop, true);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_true(c.puts > 0);
    kv_rpc_client_destroy(cl);
    kv_node_stop(a);
    kv_master_stop(m);
}

static void test_demote_promote_restart(void **state)
{
    (void)state;
    new_url();
    struct kv_master_opts mo = {
        .lease_ms = 100, .evict_interval_ms = 60000, .node_timeout_ms = 1000};
    struct kv_master *m = start_master(&mo);
    assert_int_equal(kv_master_wait_leader(m, 5000), KV_OK);
    struct kv_node *a = start_node("ssdnode", 1u << 20, ssd_dirs[0]);
    struct kv_rpc_client *cl = client(m);
    for (int i = 0; i < 16; i++) {
        char key[32];
        snprintf(key, sizeof(key), "d%d", i);
        assert_int_equal(put(cl, key, 64 << 10, 1, 0, false, true, NULL), KV_OK);
    }
    kv_master_maintain_now(m, false);
    long long dem = stat_num(m, "demotions");
    assert_true(dem >= 2);
    assert_int_equal(kv_master_object_count(m), 16); /* demoted, not dropped */
    int nrep, nd, ns;
    assert_int_equal(kv_master_key_info(m, "d0", &nrep, &nd, &ns), KV_OK);
    assert_int_equal(nd, 0);
    assert_int_equal(ns, 1);
    uint64_t cd, cs;
    kv_node_counts(a, &cd, &cs);
    assert_int_equal(cs, (uint64_t)dem);
    /* a hit promotes it back */
    kv_sleep_ms(150); /* read leases (none from these puts; earlier ones) end */
    assert_int_equal(keycall(cl, KV_RPC_GET, "d0"), KV_OK);
    assert_int_equal(kv_master_key_info(m, "d0", &nrep, &nd, &ns), KV_OK);
    assert_int_equal(nd, 1);
    assert_true(stat_num(m, "promotions") >= 1);
    /* restart the node on the same SSD dir: its SSD objects are reported again */
    kv_node_stop(a);
    for (int i = 0; i < 200 && kv_master_node_count(m) != 0; i++) {
        kv_sleep_ms(50); /* node_timeout 1 s: removed, its DRAM objects gone */
        kv_master_maintain_now(m, false);
    }
    assert_int_equal(kv_master_node_count(m), 0);
    assert_int_equal(kv_master_object_count(m), 0);
    a = start_node("ssdnode", 1u << 20, ssd_dirs[0]);
    /* every object: the demoted ones, and the DRAM ones the clean stop wrote to SSD */
    assert_int_equal(kv_master_object_count(m), 16);
    assert_int_equal(kv_master_key_info(m, "d1", &nrep, &nd, &ns), KV_OK);
    assert_int_equal(ns, 1);
    assert_int_equal(keycall(cl, KV_RPC_GET, "d1"), KV_OK);
    assert_int_equal(kv_master_key_info(m, "d15", &nrep, &nd, &ns), KV_OK);
    assert_true(nd == 0 && ns == 1);
    assert_int_equal(keycall(cl, KV_RPC_GET, "d15"), KV_OK); /* promoted from SSD */
    kv_rpc_client_destroy(cl);
    kv_node_stop(a);
    kv_master_stop(m);
}

static void test_failover(void **state)
{
    (void)state;
    new_url();
    struct kv_master_opts mo = {.id = "leader1", .leader_ttl_s = 2, .put_timeout_ms = 3000};
    struct kv_master *m1 = start_master(&mo);
    assert_int_equal(kv_master_wait_leader(m1, 5000), KV_OK);
    mo.id = "standby2";
    struct kv_master *m2 = start_master(&mo);
    kv_sleep_ms(300);
    assert_false(kv_master_is_leader(m2));
    /* a re-mounts in parts of 3 objects (20 objects: 7 parts), b in one */
    struct kv_node *a = start_node2("a", 4u << 20, NULL, 3);
    struct kv_node *b = start_node("b", 4u << 20, ssd_dirs[1]);
    struct kv_rpc_client *c1 = client(m1), *c2 = client(m2);
    /* the standby refuses clients and names the leader */
    char hint[128];
    Kvstash__HelloReq hr = KVSTASH__HELLO_REQ__INIT;
    assert_int_equal(kv_rpc_call_pb(c2, KV_RPC_HELLO, &hr.base, &kvstash__hello_resp__descriptor,
                                    NULL, 1000, hint, sizeof(hint)),
                     KV_EAGAIN);
    assert_string_equal(hint, kv_master_rpc_addr(m1));
    for (int i = 0; i < 20; i++) {
        char key[32];
        snprintf(key, sizeof(key), "f%d", i);
        assert_int_equal(put(c1, key, 4096, 2, 0, false, true, NULL), KV_OK);
    }
    kv_master_stop(m1); /* resigns */
    assert_int_equal(kv_master_wait_leader(m2, 5000), KV_OK);
    int64_t won = kv_now_ms();
    for (int i = 0; i < 100 && kv_master_node_count(m2) < 2; i++)
        kv_sleep_ms(50);
    assert_int_equal(kv_master_node_count(m2), 2);
    /* a is counted from its first MOUNT part on: wait until its last part is in too (every
     * object back to 2 replicas), then check exactly */
    for (int t = 0; t < 100; t++) {
        int full = 0;
        for (int i = 0; i < 20; i++) {
            char key[32];
            int nrep = 0;
            snprintf(key, sizeof(key), "f%d", i);
            if (kv_master_key_info(m2, key, &nrep, NULL, NULL) == KV_OK && nrep == 2)
                full++;
        }
        if (full == 20)
            break;
        kv_sleep_ms(50);
    }
    assert_int_equal(kv_master_object_count(m2), 20);
    for (int i = 0; i < 20; i++) {
        char key[32];
        snprintf(key, sizeof(key), "f%d", i);
        int nrep;
        assert_int_equal(kv_master_key_info(m2, key, &nrep, NULL, NULL), KV_OK);
        assert_int_equal(nrep, 2);
        assert_int_equal(keycall(c2, KV_RPC_GET, key), KV_OK);
    }
    Kvstash__HelloResp *h = NULL;
    assert_int_equal(kv_rpc_call_pb(c2, KV_RPC_HELLO, &hr.base, &kvstash__hello_resp__descriptor,
                                    (ProtobufCMessage **)&h, 1000, NULL, 0),
                     KV_OK);
    assert_int_equal(h->epoch, 2);
    kv_rpc_pb_free(&h->base);
    /* both nodes served epoch 1: m2 places nothing on them until m1's lease (2 s) and the put
     * timeout (3 s) are over, since m1's clients may still write into ranges m2 does not know;
     * meanwhile a put gets a retryable NOT_LEADER */
    int64_t fence = 2000 + 3000;
    if (kv_now_ms() - won < fence - 1000)
        assert_int_equal(put(c2, "after", 4096, 1, 0, false, true, NULL), KV_EAGAIN);
    int rc;
    while ((rc = put(c2, "after", 4096, 1, 0, false, true, NULL)) == KV_EAGAIN &&
           kv_now_ms() - won < fence + 10000)
        kv_sleep_ms(20);
    assert_int_equal(rc, KV_OK);
    assert_true(kv_now_ms() - won >= fence - 500); /* won: taken just after the fence began */
    /* the new leader still says first writer wins */
    assert_int_equal(put(c2, "f3", 4096, 1, 0, false, true, NULL), KV_EEXIST);
    kv_rpc_client_destroy(c1);
    kv_rpc_client_destroy(c2);
    kv_node_stop(a);
    kv_node_stop(b);
    kv_master_stop(m2);
}

static int mount_part(struct kv_rpc_client *c, const char *id, Kvstash__NodeObject **objs, size_t n,
                      bool part, bool more)
{
    Kvstash__MountReq mr = KVSTASH__MOUNT_REQ__INIT;
    mr.node_id = (char *)id;
    mr.segment = (char *)id;
    mr.size = 1 << 20;
    mr.rpc_addr = "127.0.0.1:1";
    mr.ssd_capacity = 1 << 20;
    mr.n_objects = n;
    mr.objects = objs;
    mr.part = part;
    mr.more = more;
    return kv_rpc_call_pb(c, KV_RPC_MOUNT, &mr.base, &kvstash__mount_resp__descriptor, NULL, 2000,
                          NULL, 0);
}

static int mount(struct kv_rpc_client *c, const char *id, Kvstash__NodeObject **objs, size_t n)
{
    return mount_part(c, id, objs, n, false, false);
}

/* A leader without nodes (no eviction rounds of its own) and a client of it. */
static struct kv_master *mount_test_master(struct kv_rpc_client **cl)
{
    new_url();
    struct kv_master_opts mo = {.evict_interval_ms = 60000};
    struct kv_master *m = start_master(&mo);
    assert_int_equal(kv_master_wait_leader(m, 5000), KV_OK);
    *cl = client(m);
    return m;
}

/* A MOUNT in parts: objects of every part are indexed; nothing is placed on the node before
 * its last part (its ranges are not all reserved yet); a part without a mount under way, or
 * after the last one, is refused. */
static void test_mount_in_parts(void **state)
{
    (void)state;
    struct kv_rpc_client *cl;
    struct kv_master *m = mount_test_master(&cl);
    Kvstash__NodeObject o[3];
    Kvstash__NodeObject *po[3];
    static const char *const keys[] = {"p0", "p1", "p2"};
    for (int i = 0; i < 3; i++) {
        kvstash__node_object__init(&o[i]);
        po[i] = &o[i];
        o[i].key = (char *)keys[i];
        o[i].size = 1000;
        o[i].offset = (uint64_t)i * 4096;
        o[i].checksum = 1;
        o[i].created_ms = 5;
    }
    assert_int_equal(mount_part(cl, "np", po, 1, true, true), KV_EINVAL); /* no mount under way */
    assert_int_equal(mount_part(cl, "np", po, 1, false, true), KV_OK);
    assert_int_equal(kv_master_node_count(m), 1);
    /* not yet ("no storage node mounted yet": its only node is mid-MOUNT), and no eviction on
     * its behalf either (p0 stays) */
    assert_int_equal(put(cl, "new", 4096, 1, 0, false, false, NULL), KV_ESTORE_NONODE);
    assert_int_equal(mount_part(cl, "np", po + 1, 1, true, true), KV_OK);
    assert_int_equal(mount_part(cl, "np", po + 2, 1, true, false), KV_OK); /* the last part */
    assert_int_equal(kv_master_object_count(m), 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(kv_master_key_info(m, keys[i], NULL, NULL, NULL), KV_OK);
    char ids[KV_STORE_MAX_REPLICAS][64];
    assert_int_equal(put(cl, "new", 4096, 1, 0, false, false, ids), KV_OK);
    assert_string_equal(ids[0], "np");
    assert_int_equal(mount_part(cl, "np", po, 1, true, false), KV_EINVAL); /* mount is over */
    kv_rpc_client_destroy(cl);
    kv_master_stop(m);
}

/* Packed records (mount_pack.h): in order, out of order (the master sorts them), beside
 * repeated objects, with the announced total; a malformed buffer is refused whole, naming the
 * problem, and changes nothing. */
static void test_mount_packed(void **state)
{
    (void)state;
    struct kv_rpc_client *cl;
    struct kv_master *m = mount_test_master(&cl);
    static const char *const keys[] = {"q0", "q1", "q2", "q3", "q4"};
    static const uint64_t offs[] = {8192, 0, 0, 4096, 12288}; /* q2 is on SSD */
    Kvstash__NodeObject o[5];
    uint8_t buf[512], *p = buf;
    for (int i = 0; i < 5; i++) {
        kvstash__node_object__init(&o[i]);
        o[i].key = (char *)keys[i];
        o[i].size = 1000;
        o[i].offset = offs[i];
        o[i].checksum = 1;
        o[i].created_ms = 5;
        o[i].tier = i == 2 ? KVSTASH__TIER__TIER_SSD : KVSTASH__TIER__TIER_DRAM;
        if (i < 4)
            p = kv_mount_pack(p, &o[i]);
    }
    Kvstash__NodeObject *rep[1] = {&o[4]};
    Kvstash__MountReq mr = KVSTASH__MOUNT_REQ__INIT;
    mr.node_id = "pk";
    mr.segment = "pk";
    mr.size = 1 << 20;
    mr.rpc_addr = "127.0.0.1:1";
    mr.ssd_capacity = 1 << 20;
    mr.packed.data = buf;
    mr.packed.len = (size_t)(p - buf);
    mr.n_objects = 1;
    mr.objects = rep;
    mr.total = 5;
    assert_int_equal(kv_rpc_call_pb(cl, KV_RPC_MOUNT, &mr.base, &kvstash__mount_resp__descriptor,
                                    NULL, 2000, NULL, 0),
                     KV_OK);
    assert_int_equal(kv_master_object_count(m), 5);
    int nrep, nd, ns;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(kv_master_key_info(m, keys[i], &nrep, &nd, &ns), KV_OK);
        assert_int_equal(nd, i == 2 ? 0 : 1);
        assert_int_equal(ns, i == 2 ? 1 : 0);
    }
    /* a cut record: the whole MOUNT is refused, the index keeps what it had */
    mr.node_id = "pk2";
    mr.segment = "pk2";
    mr.n_objects = 0;
    mr.packed.len -= 1;
    assert_int_not_equal(kv_rpc_call_pb(cl, KV_RPC_MOUNT, &mr.base,
                                        &kvstash__mount_resp__descriptor, NULL, 2000, NULL, 0),
                         KV_OK);
    assert_int_equal(kv_master_object_count(m), 5);
    assert_int_equal(kv_master_node_count(m), 1);
    kv_rpc_client_destroy(cl);
    kv_master_stop(m);
}

static void test_mount_merge_and_garbage(void **state)
{
    (void)state;
    struct kv_rpc_client *cl;
    struct kv_master *m = mount_test_master(&cl);
    Kvstash__NodeObject o[5];
    Kvstash__NodeObject *po[5];
    for (int i = 0; i < 5; i++) {
        kvstash__node_object__init(&o[i]);
        po[i] = &o[i];
        o[i].size = 1000;
        o[i].checksum = 1;
        o[i].created_ms = 5;
    }
    o[0].key = "k";       /* DRAM at 0 */
    o[1].key = "overlap"; /* DRAM at 512: overlaps k */
    o[1].offset = 512;
    o[2].key = "expired";
    o[2].offset = 4096;
    o[2].expire_at_ms = 1; /* long ago */
    o[3].key = "s";        /* SSD */
    o[3].tier = KVSTASH__TIER__TIER_SSD;
    o[4].key = "far"; /* outside the segment */
    o[4].offset = 1 << 20;
    assert_int_equal(mount(cl, "f1", po, 5), KV_OK);
    assert_int_equal(kv_master_object_count(m), 2);
    int nrep, nd, ns;
    assert_int_equal(kv_master_key_info(m, "k", &nrep, &nd, &ns), KV_OK);
    assert_true(nrep == 1 && nd == 1 && ns == 0);
    assert_int_equal(kv_master_key_info(m, "s", &nrep, &nd, &ns), KV_OK);
    assert_true(nrep == 1 && nd == 0 && ns == 1);
    assert_int_equal(kv_master_key_info(m, "overlap", NULL, NULL, NULL), KV_ENOENT);
    /* a second node: same k -> another replica; a conflicting version of s -> rejected */
    o[0].offset = 8192;
    o[3].checksum = 2;
    Kvstash__NodeObject *p2[2] = {&o[0], &o[3]};
    assert_int_equal(mount(cl, "f2", p2, 2), KV_OK);
    assert_int_equal(kv_master_key_info(m, "k", &nrep, &nd, &ns), KV_OK);
    assert_int_equal(nrep, 2);
    assert_int_equal(kv_master_key_info(m, "s", &nrep, &nd, &ns), KV_OK);
    assert_int_equal(nrep, 1);
    assert_int_equal(kv_master_node_count(m), 2);
    /* mounting f1 again replaces it (its old replicas go, its new report comes in) */
    assert_int_equal(mount(cl, "f1", NULL, 0), KV_OK);
    assert_int_equal(kv_master_key_info(m, "s", NULL, NULL, NULL), KV_ENOENT);
    assert_int_equal(kv_master_key_info(m, "k", &nrep, NULL, NULL), KV_OK);
    assert_int_equal(nrep, 1);
    /* bad mounts and an unknown node's heartbeat */
    assert_int_equal(mount(cl, "", NULL, 0), KV_EINVAL);
    Kvstash__HeartbeatReq hb = KVSTASH__HEARTBEAT_REQ__INIT;
    hb.node_id = "ghost";
    assert_int_equal(kv_rpc_call_pb(cl, KV_RPC_HEARTBEAT, &hb.base,
                                    &kvstash__mount_resp__descriptor, NULL, 1000, NULL, 0),
                     KV_ENOENT);
    /* garbage payloads for every method: an error, never a crash; the master still serves */
    static const uint16_t methods[] = {KV_RPC_HELLO,     KV_RPC_PUT_START, KV_RPC_PUT_END,
                                       KV_RPC_GET,       KV_RPC_EXISTS,    KV_RPC_REMOVE,
                                       KV_RPC_LIST,      KV_RPC_STAT,      KV_RPC_MOUNT,
                                       KV_RPC_HEARTBEAT, KV_RPC_NODE_FREE, 999};
    uint64_t r = 12345;
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        for (int k = 0; k < 50; k++) {
            uint8_t junk[64];
            size_t len = (size_t)(k % 64);
            for (size_t j = 0; j < len; j++) {
                r = r * 6364136223846793005ull + 1442695040888963407ull;
                junk[j] = (uint8_t)(r >> 56);
            }
            int st = 0;
            assert_int_equal(kv_rpc_call(cl, methods[i], junk, len, 2000, &st, NULL), KV_OK);
            assert_true(st <= 0);
        }
    }
    assert_int_equal(keycall(cl, KV_RPC_EXISTS, "k"), 1);
    kv_rpc_client_destroy(cl);
    kv_master_stop(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_placement),
        cmocka_unit_test(test_fresh_node_not_flooded),
        cmocka_unit_test(test_eviction_leases_pins),
        cmocka_unit_test(test_ttl_pending_remove),
        cmocka_unit_test(test_exists_beside_writers),
        cmocka_unit_test(test_demote_promote_restart),
        cmocka_unit_test(test_failover),
        cmocka_unit_test(test_mount_in_parts),
        cmocka_unit_test(test_mount_packed),
        cmocka_unit_test(test_mount_merge_and_garbage),
    };
    if (getenv("KV_TEST_DEBUG"))
        kv_log_set_level(KV_LOG_DEBUG);
    return cmocka_run_group_tests(tests, setup_dirs, rm_dirs);
}
