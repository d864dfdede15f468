/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_client.c - the store client against a fake master in this process: a kv_rpc_server
 * speaking the real protocol over loopback TCP, with two real transfer-engine segments as its
 * "nodes" (embedded metadata). This checks the client's own logic without the real master:
 * put/get round trips, first-writer-wins, E2BIG, zero-size values, one master round trip per
 * phase for batches, replica fallback on a corrupted replica and a clear error when every
 * replica is corrupt, a failed write ending the put with ok=false, following the leader on
 * KV_EAGAIN (standby hint) and through the metadata leader record, list, stat, argument
 * checks, many threads on one client, the trace replay loop, and allocation failure at every
 * point of put/get/exists/list in turn.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "common/net.h"
#include "common/util.h"
#include "kvstash/meta.h"
#include "kvstash/store.h"
#include "kvstash/xfer.h"
#include "store/replay.h"
#include "store/rpc.h"

#define SEG_SIZE (8u << 20)
#define MAX_OBJS 1024

struct fobj {
    bool used, complete;
    char key[KV_STORE_MAX_KEY + 1];
    uint64_t size, checksum, off;
    int nrep;
    int seg[2];
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* guards everything below */
static struct fobj g_objs[MAX_OBJS];
static uint64_t g_next_off;
static uint8_t *g_seg[2];
static const char *g_segname[2] = {"fake-a", "fake-b"};
static int g_calls[2][16]; /* per server, per method */
static bool g_a_standby;   /* server A answers KV_EAGAIN naming B */
static bool g_bad_segment; /* PUT_START names a segment that does not exist */
static int g_put_end_fail; /* PUT_END items with ok=false seen */

static char g_meta_url[64];
static struct kv_meta *g_meta;
static struct kv_xfer *g_x;
static struct kv_rpc_server *g_srv[2];
static char g_addr[2][64];

static struct fobj *find(const char *key)
{
    for (int i = 0; i < MAX_OBJS; i++)
        if (g_objs[i].used && strcmp(g_objs[i].key, key) == 0)
            return &g_objs[i];
    return NULL;
}

static int handle(void *ud, uint16_t method, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    int who = (int)(intptr_t)ud;
    int rc = KV_OK;
    ProtobufCMessage *in = NULL;
    pthread_mutex_lock(&g_lock);
    if (method < 16)
        g_calls[who][method]++;
    if (who == 0 && g_a_standby) {
        Kvstash__NotLeader nl = KVSTASH__NOT_LEADER__INIT;
        nl.leader_addr = g_addr[1];
        kv_rpc_pb_pack(&nl.base, resp);
        rc = KV_EAGAIN;
        goto out;
    }
    switch (method) {
    case KV_RPC_HELLO: {
        Kvstash__HelloResp h = KVSTASH__HELLO_RESP__INIT;
        h.cluster = "default";
        h.metadata_url = g_meta_url;
        h.epoch = 1;
        rc = kv_rpc_pb_pack(&h.base, resp);
        break;
    }
    case KV_RPC_PUT_START: {
        rc = kv_rpc_pb_unpack(&kvstash__put_start_req__descriptor, req, len, &in);
        if (rc < 0)
            break;
        Kvstash__PutStartReq *r = (Kvstash__PutStartReq *)in;
        Kvstash__PutSlot slots[64], *ps[64];
        Kvstash__Replica reps[64][2], *pr[64][2];
        assert_true(r->n_items <= 64);
        for (size_t i = 0; i < r->n_items; i++) {
            Kvstash__PutItem *it = r->items[i];
            kvstash__put_slot__init(&slots[i]);
            ps[i] = &slots[i];
            if (find(it->key)) {
                slots[i].status = KV_EEXIST;
                continue;
            }
            int nrep = it->replicas > 2 ? 2 : (int)it->replicas;
            if (g_next_off + it->size > SEG_SIZE) {
                slots[i].status = KV_ENOSPC;
                continue;
            }
            struct fobj *o = NULL;
            for (int k = 0; k < MAX_OBJS && !o; k++)
                if (!g_objs[k].used)
                    o = &g_objs[k];
            assert_non_null(o);
            memset(o, 0, sizeof(*o));
            o->used = true;
            snprintf(o->key, sizeof(o->key), "%s", it->key);
            o->size = it->size;
            o->off = g_next_off;
            g_next_off = (g_next_off + it->size + 63) & ~63ull;
            o->nrep = nrep;
            slots[i].n_replicas = (size_t)nrep;
            slots[i].replicas = pr[i];
            for (int k = 0; k < nrep; k++) {
                o->seg[k] = k;
                kvstash__replica__init(&reps[i][k]);
                reps[i][k].segment = (char *)(g_bad_segment ? "no-such-seg" : g_segname[k]);
                reps[i][k].offset = o->off;
                pr[i][k] = &reps[i][k];
            }
        }
        Kvstash__PutStartResp out = KVSTASH__PUT_START_RESP__INIT;
        out.n_slots = r->n_items;
        out.slots = ps;
        rc = kv_rpc_pb_pack(&out.base, resp);
        break;
    }
    case KV_RPC_PUT_END: {
        rc = kv_rpc_pb_unpack(&kvstash__put_end_req__descriptor, req, len, &in);
        if (rc < 0)
            break;
        Kvstash__PutEndReq *r = (Kvstash__PutEndReq *)in;
        int32_t st[64];
        for (size_t i = 0; i < r->n_items; i++) {
            struct fobj *o = find(r->items[i]->key);
            st[i] = KV_OK;
            if (!o || o->complete) {
                st[i] = KV_ENOENT;
            } else if (!r->items[i]->ok) {
                g_put_end_fail++;
                o->used = false;
            } else {
                o->complete = true;
                o->checksum = r->items[i]->checksum;
            }
        }
        Kvstash__StatusList out = KVSTASH__STATUS_LIST__INIT;
        out.n_status = r->n_items;
        out.status = st;
        rc = kv_rpc_pb_pack(&out.base, resp);
        break;
    }
    case KV_RPC_GET: {
        rc = kv_rpc_pb_unpack(&kvstash__key_list__descriptor, req, len, &in);
        if (rc < 0)
            break;
        Kvstash__KeyList *r = (Kvstash__KeyList *)in;
        Kvstash__GetItem items[64], *pi[64];
        Kvstash__Replica reps[64][2], *pr[64][2];
        assert_true(r->n_keys <= 64);
        for (size_t i = 0; i < r->n_keys; i++) {
            kvstash__get_item__init(&items[i]);
            pi[i] = &items[i];
            struct fobj *o = find(r->keys[i]);
            if (!o || !o->complete) {
                items[i].status = KV_ENOENT;
                continue;
            }
            items[i].size = o->size;
            items[i].checksum = o->checksum;
            items[i].lease_ms = 5000;
            items[i].n_replicas = (size_t)o->nrep;
            items[i].replicas = pr[i];
            for (int k = 0; k < o->nrep; k++) {
                kvstash__replica__init(&reps[i][k]);
                reps[i][k].segment = (char *)g_segname[o->seg[k]];
                reps[i][k].offset = o->off;
                pr[i][k] = &reps[i][k];
            }
        }
        Kvstash__GetResp out = KVSTASH__GET_RESP__INIT;
        out.n_items = r->n_keys;
        out.items = pi;
        rc = kv_rpc_pb_pack(&out.base, resp);
        break;
    }
    case KV_RPC_EXISTS:
    case KV_RPC_REMOVE: {
        rc = kv_rpc_pb_unpack(&kvstash__key_list__descriptor, req, len, &in);
        if (rc < 0)
            break;
        Kvstash__KeyList *r = (Kvstash__KeyList *)in;
        int32_t st[512];
        assert_true(r->n_keys <= 512);
        for (size_t i = 0; i < r->n_keys; i++) {
            struct fobj *o = find(r->keys[i]);
            bool there = o && o->complete;
            if (method == KV_RPC_EXISTS) {
                st[i] = there ? 1 : 0;
            } else {
                st[i] = there ? KV_OK : KV_ENOENT;
                if (there)
                    o->used = false;
            }
        }
        Kvstash__StatusList out = KVSTASH__STATUS_LIST__INIT;
        out.n_status = r->n_keys;
        out.status = st;
        rc = kv_rpc_pb_pack(&out.base, resp);
        break;
    }
    case KV_RPC_LIST: {
        rc = kv_rpc_pb_unpack(&kvstash__list_req__descriptor, req, len, &in);
        if (rc < 0)
            break;
        Kvstash__ListReq *r = (Kvstash__ListReq *)in;
        static char *keys[MAX_OBJS];
        static uint64_t sizes[MAX_OBJS];
        size_t n = 0;
        for (int i = 0; i < MAX_OBJS; i++) {
            struct fobj *o = &g_objs[i];
            if (o->used && o->complete && kv_startswith(o->key, r->prefix)) {
                /* insertion sort by key */
                size_t p = n++;
                while (p > 0 && strcmp(keys[p - 1], o->key) > 0) {
                    keys[p] = keys[p - 1];
                    sizes[p] = sizes[p - 1];
                    p--;
                }
                keys[p] = o->key;
                sizes[p] = o->size;
            }
        }
        if (r->limit && n > r->limit)
            n = r->limit;
        Kvstash__ListResp out = KVSTASH__LIST_RESP__INIT;
        out.n_keys = n;
        out.keys = keys;
        out.n_sizes = n;
        out.sizes = sizes;
        rc = kv_rpc_pb_pack(&out.base, resp);
        break;
    }
    case KV_RPC_STAT: {
        Kvstash__StatResp out = KVSTASH__STAT_RESP__INIT;
        out.json = "{\"nodes\":2,\"objects\":0}";
        rc = kv_rpc_pb_pack(&out.base, resp);
        break;
    }
    default:
        rc = KV_ENOTSUP;
    }
out:
    pthread_mutex_unlock(&g_lock);
    kv_rpc_pb_free(in);
    return rc;
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_meta_url, sizeof(g_meta_url), "embedded://fake-%d", (int)getpid());
    if (kv_meta_open(g_meta_url, NULL, &g_meta) < 0)
        return -1;
    if (kv_xfer_create(g_meta, NULL, &g_x) < 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        void *addr;
        kv_seg_id id;
        if (kv_xfer_segment_alloc(g_x, g_segname[i], SEG_SIZE, &addr, &id) < 0)
            return -1;
        g_seg[i] = addr;
        struct kv_rpc_server_opts so = {
            .addr = "127.0.0.1:0", .handler = handle, .ud = (void *)(intptr_t)i};
        if (kv_rpc_server_start(&so, &g_srv[i]) < 0)
            return -1;
        snprintf(g_addr[i], sizeof(g_addr[i]), "127.0.0.1:%u",
                 (unsigned)kv_rpc_server_port(g_srv[i]));
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    kv_rpc_server_stop(g_srv[0]);
    kv_rpc_server_stop(g_srv[1]);
    kv_xfer_destroy(g_x);
    kv_meta_close(g_meta);
    return 0;
}

static struct kv_store *open_store(const char *master)
{
    struct kv_store_opts o = {.master = master, .metadata = g_meta_url, .timeout_ms = 5000};
    struct kv_store *s = NULL;
    assert_int_equal(kv_store_open(&o, &s), KV_OK);
    return s;
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 8));
}

static void test_roundtrip(void **state)
{
    (void)state;
    struct kv_store *s = open_store(g_addr[1]);
    static uint8_t v[100000], r[100000];
    size_t sizes[] = {1, 7, 4096, 65537, sizeof(v)};
    for (size_t i = 0; i < KV_ARRAY_SIZE(sizes); i++) {
        char key[32];
        snprintf(key, sizeof(key), "rt/%zu", sizes[i]);
        fill(v, sizes[i], (unsigned)i);
        struct kv_put_opts po = {.replicas = 2};
        assert_int_equal(kv_store_put(s, key, v, sizes[i], &po), KV_OK);
        assert_int_equal(kv_store_put(s, key, v, sizes[i], &po), KV_EEXIST);
        size_t len = 0;
        memset(r, 0, sizeof(r));
        assert_int_equal(kv_store_get(s, key, r, sizeof(r), &len), KV_OK);
        assert_int_equal(len, sizes[i]);
        assert_memory_equal(r, v, len);
        assert_int_equal(kv_store_exists(s, key), 1);
        void *a = NULL;
        assert_int_equal(kv_store_get_alloc(s, key, &a, &len), KV_OK);
        assert_int_equal(len, sizes[i]);
        assert_memory_equal(a, v, len);
        kv_store_free(a);
        if (sizes[i] > 1) {
            len = 0;
            assert_int_equal(kv_store_get(s, key, r, sizes[i] - 1, &len), KV_E2BIG);
            assert_int_equal(len, sizes[i]);
        }
    }
    /* zero-size values: no transfer at all, but a real object */
    assert_int_equal(kv_store_put(s, "rt/empty", "", 0, NULL), KV_OK);
    size_t len = 99;
    assert_int_equal(kv_store_get(s, "rt/empty", r, sizeof(r), &len), KV_OK);
    assert_int_equal(len, 0);
    void *a = NULL;
    assert_int_equal(kv_store_get_alloc(s, "rt/empty", &a, &len), KV_OK);
    assert_int_equal(len, 0);
    kv_store_free(a);
    /* remove */
    assert_int_equal(kv_store_remove(s, "rt/7"), KV_OK);
    assert_int_equal(kv_store_remove(s, "rt/7"), KV_ENOENT);
    assert_int_equal(kv_store_get(s, "rt/7", r, sizeof(r), &len), KV_ENOENT);
    assert_int_equal(kv_store_exists(s, "rt/7"), 0);
    assert_int_equal(kv_store_get(s, "never", r, sizeof(r), &len), KV_ENOENT);
    kv_store_close(s);
}

static void test_bad_args(void **state)
{
    (void)state;
    struct kv_store *s = NULL;
    assert_int_equal(kv_store_open(NULL, &s), KV_EINVAL);
    struct kv_store_opts none = {0};
    assert_int_equal(kv_store_open(&none, &s), KV_EINVAL);
    struct kv_store_opts badp = {.master = g_addr[1], .protocol = "carrier-pigeon"};
    assert_int_equal(kv_store_open(&badp, &s), KV_EINVAL);
    assert_null(s);
    /* nothing listens there: a clear error, no hang */
    uint16_t port;
    assert_int_equal(kv_net_free_port(&port), KV_OK);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)port);
    struct kv_store_opts dead = {.master = addr, .timeout_ms = 2000};
    assert_true(kv_store_open(&dead, &s) < 0);
    assert_null(s);

    s = open_store(g_addr[1]);
    static char big[KV_STORE_MAX_KEY + 2];
    memset(big, 'k', sizeof(big) - 1);
    size_t len;
    char b[8];
    assert_int_equal(kv_store_put(s, "", "x", 1, NULL), KV_EINVAL);
    assert_int_equal(kv_store_put(s, big, "x", 1, NULL), KV_EINVAL);
    assert_int_equal(kv_store_put(s, "k", NULL, 1, NULL), KV_EINVAL);
    struct kv_put_opts many = {.replicas = 1000};
    assert_int_equal(kv_store_put(s, "k", "x", 1, &many), KV_EINVAL);
    assert_int_equal(kv_store_get(s, big, b, sizeof(b), &len), KV_EINVAL);
    assert_int_equal(kv_store_exists(s, ""), KV_EINVAL);
    assert_int_equal(kv_store_remove(s, NULL), KV_EINVAL);
    big[KV_STORE_MAX_KEY] = '\0'; /* exactly the maximum is fine */
    assert_int_equal(kv_store_put(s, big, "x", 1, NULL), KV_OK);
    assert_int_equal(kv_store_get(s, big, b, sizeof(b), &len), KV_OK);
    assert_int_equal(len, 1);
    kv_store_close(s);
    kv_store_close(NULL);
}

static void test_batch_round_trips(void **state)
{
    (void)state;
    struct kv_store *s = open_store(g_addr[1]);
    enum { N = 50 };
    char kb[N + 1][32];
    const char *keys[N + 1];
    static uint8_t vals[N][3000];
    const void *bufs[N];
    size_t lens[N + 1];
    int res[N + 1];
    for (int i = 0; i < N; i++) {
        snprintf(kb[i], sizeof(kb[i]), "batch/%02d", i);
        keys[i] = kb[i];
        lens[i] = (size_t)(i * 60);
        fill(vals[i], lens[i], (unsigned)i + 100);
        bufs[i] = vals[i];
    }
    pthread_mutex_lock(&g_lock);
    int ps = g_calls[1][KV_RPC_PUT_START], pe = g_calls[1][KV_RPC_PUT_END];
    int gs = g_calls[1][KV_RPC_GET], ex = g_calls[1][KV_RPC_EXISTS];
    pthread_mutex_unlock(&g_lock);
    assert_int_equal(kv_store_batch_put(s, N, keys, bufs, lens, NULL, res), KV_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], KV_OK);
    snprintf(kb[N], sizeof(kb[N]), "batch/missing");
    keys[N] = kb[N];
    assert_int_equal(kv_store_batch_exists(s, N + 1, keys, res), KV_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], 1);
    assert_int_equal(res[N], 0);
    static uint8_t out[N + 1][3000];
    void *obufs[N + 1];
    size_t caps[N + 1];
    for (int i = 0; i <= N; i++) {
        obufs[i] = out[i];
        caps[i] = sizeof(out[i]);
    }
    caps[7] = 10; /* too small for 420 bytes */
    assert_int_equal(kv_store_batch_get(s, N + 1, keys, obufs, caps, lens, res), KV_OK);
    for (int i = 0; i < N; i++) {
        if (i == 7) {
            assert_int_equal(res[i], KV_E2BIG);
            assert_int_equal(lens[i], 420);
            continue;
        }
        assert_int_equal(res[i], KV_OK);
        assert_int_equal(lens[i], (size_t)(i * 60));
        assert_memory_equal(out[i], vals[i], lens[i]);
    }
    assert_int_equal(res[N], KV_ENOENT);
    pthread_mutex_lock(&g_lock);
    assert_int_equal(g_calls[1][KV_RPC_PUT_START] - ps, 1);
    assert_int_equal(g_calls[1][KV_RPC_PUT_END] - pe, 1);
    assert_int_equal(g_calls[1][KV_RPC_GET] - gs, 1);
    assert_int_equal(g_calls[1][KV_RPC_EXISTS] - ex, 1);
    pthread_mutex_unlock(&g_lock);
    /* a second batch put of the same keys: every one is refused, the call itself succeeds */
    assert_int_equal(kv_store_batch_put(s, 3, keys, bufs, lens, NULL, res), KV_OK);
    assert_int_equal(res[0], KV_EEXIST);
    assert_int_equal(res[2], KV_EEXIST);
    /* batch remove: one REMOVE call for all keys; the missing one answers KV_ENOENT */
    pthread_mutex_lock(&g_lock);
    int rm = g_calls[1][KV_RPC_REMOVE];
    pthread_mutex_unlock(&g_lock);
    assert_int_equal(kv_store_batch_remove(s, N + 1, keys, res), KV_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], KV_OK);
    assert_int_equal(res[N], KV_ENOENT);
    pthread_mutex_lock(&g_lock);
    assert_int_equal(g_calls[1][KV_RPC_REMOVE] - rm, 1);
    pthread_mutex_unlock(&g_lock);
    assert_int_equal(kv_store_batch_exists(s, N, keys, res), KV_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], 0);
    kv_store_close(s);
}

static void test_replica_fallback(void **state)
{
    (void)state;
    struct kv_store *s = open_store(g_addr[1]);
    uint8_t v[5000], r[5000];
    fill(v, sizeof(v), 77);
    struct kv_put_opts po = {.replicas = 2};
    assert_int_equal(kv_store_put(s, "fb/one", v, sizeof(v), &po), KV_OK);
    pthread_mutex_lock(&g_lock);
    struct fobj *o = find("fb/one");
    assert_non_null(o);
    uint64_t off = o->off;
    pthread_mutex_unlock(&g_lock);
    /* replica A corrupt: the get reads B */
    g_seg[0][off + 100] ^= 0xff;
    size_t len = 0;
    memset(r, 0, sizeof(r));
    assert_int_equal(kv_store_get(s, "fb/one", r, sizeof(r), &len), KV_OK);
    assert_int_equal(len, sizeof(v));
    assert_memory_equal(r, v, sizeof(v));
    /* both corrupt: a clear error, never success */
    g_seg[1][off + 4999] ^= 0x01;
    assert_int_equal(kv_store_get(s, "fb/one", r, sizeof(r), &len), KV_ECHECKSUM);
    void *a = (void *)1;
    assert_int_equal(kv_store_get_alloc(s, "fb/one", &a, &len), KV_ECHECKSUM);
    assert_ptr_equal(a, (void *)1); /* untouched on failure */
    kv_store_close(s);
}

static void test_write_failure_ends_put(void **state)
{
    (void)state;
    struct kv_store *s = open_store(g_addr[1]);
    pthread_mutex_lock(&g_lock);
    g_bad_segment = true;
    int before = g_put_end_fail;
    pthread_mutex_unlock(&g_lock);
    int rc = kv_store_put(s, "wf/x", "hello", 5, NULL);
    pthread_mutex_lock(&g_lock);
    g_bad_segment = false;
    int after = g_put_end_fail;
    pthread_mutex_unlock(&g_lock);
    assert_true(rc < 0);
    assert_int_equal(after - before, 1);
    assert_int_equal(kv_store_exists(s, "wf/x"), 0);
    /* the key is free again */
    assert_int_equal(kv_store_put(s, "wf/x", "hello", 5, NULL), KV_OK);
    kv_store_close(s);
}

static void test_follow_leader(void **state)
{
    (void)state;
    /* A is a standby naming B: every call lands on B */
    struct kv_store *s = open_store(g_addr[0]);
    assert_int_equal(kv_store_put(s, "fl/before", "abc", 3, NULL), KV_OK);
    pthread_mutex_lock(&g_lock);
    g_a_standby = true;
    int b_before = g_calls[1][KV_RPC_GET];
    pthread_mutex_unlock(&g_lock);
    kv_store_close(s);
    s = open_store(g_addr[0]);
    char r[8];
    size_t len = 0;
    assert_int_equal(kv_store_get(s, "fl/before", r, sizeof(r), &len), KV_OK);
    assert_int_equal(len, 3);
    assert_memory_equal(r, "abc", 3);
    pthread_mutex_lock(&g_lock);
    assert_true(g_calls[1][KV_RPC_GET] > b_before);
    g_a_standby = false;
    pthread_mutex_unlock(&g_lock);
    kv_store_close(s);

    /* no master address at all: the leader record in metadata */
    char val[160];
    int n =
        snprintf(val, sizeof(val), "{\"id\":\"m1\",\"rpc_addr\":\"%s\",\"epoch\":3}", g_addr[1]);
    assert_int_equal(kv_meta_put(g_meta, "/kvstash/default/masters/leader", val, (size_t)n, 0),
                     KV_OK);
    struct kv_store_opts o = {.metadata = g_meta_url, .timeout_ms = 3000};
    assert_int_equal(kv_store_open(&o, &s), KV_OK);
    assert_int_equal(kv_store_exists(s, "fl/before"), 1);
    kv_store_close(s);
    /* a leader record that is not JSON: a clear failure within the timeout */
    assert_int_equal(kv_meta_put(g_meta, "/kvstash/default/masters/leader", "garbage", 7, 0),
                     KV_OK);
    o.timeout_ms = 500;
    s = NULL;
    assert_true(kv_store_open(&o, &s) < 0);
    assert_null(s);
    kv_meta_del(g_meta, "/kvstash/default/masters/leader");
}

static void test_list_stat(void **state)
{
    (void)state;
    struct kv_store *s = open_store(g_addr[1]);
    assert_int_equal(kv_store_put(s, "ls/b", "22", 2, NULL), KV_OK);
    assert_int_equal(kv_store_put(s, "ls/a", "1", 1, NULL), KV_OK);
    assert_int_equal(kv_store_put(s, "ls/c", "333", 3, NULL), KV_OK);
    char **keys = NULL;
    uint64_t *sizes = NULL;
    size_t n = 0;
    assert_int_equal(kv_store_list(s, "ls/", 0, &keys, &sizes, &n), KV_OK);
    assert_int_equal(n, 3);
    assert_string_equal(keys[0], "ls/a");
    assert_string_equal(keys[2], "ls/c");
    assert_int_equal(sizes[1], 2);
    kv_store_keys_free(keys, n);
    kv_store_free(sizes);
    assert_int_equal(kv_store_list(s, "ls/", 2, &keys, NULL, &n), KV_OK);
    assert_int_equal(n, 2);
    kv_store_keys_free(keys, n);
    assert_int_equal(kv_store_list(s, "nothing-here/", 0, &keys, NULL, &n), KV_OK);
    assert_int_equal(n, 0);
    kv_store_keys_free(keys, n);
    char *json = NULL;
    assert_int_equal(kv_store_stat_json(s, &json), KV_OK);
    assert_non_null(strstr(json, "\"nodes\""));
    kv_store_free(json);
    kv_store_close(s);
}

struct thr {
    struct kv_store *s;
    int id;
    int failures;
};

static void *thr_main(void *arg)
{
    struct thr *t = arg;
    uint8_t v[2048], r[2048];
    for (int i = 0; i < 60; i++) {
        char key[64];
        snprintf(key, sizeof(key), "mt/%d/%d", t->id, i);
        size_t n = (size_t)(1 + (i * 37) % 2000);
        fill(v, n, (unsigned)(t->id * 1000 + i));
        size_t len = 0;
        if (kv_store_put(t->s, key, v, n, NULL) != KV_OK ||
            kv_store_get(t->s, key, r, sizeof(r), &len) != KV_OK || len != n ||
            memcmp(r, v, n) != 0 || kv_store_remove(t->s, key) != KV_OK)
            t->failures++;
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    struct kv_store *s = open_store(g_addr[1]);
    struct thr t[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        t[i] = (struct thr){.s = s, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, thr_main, &t[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(t[i].failures, 0);
    }
    kv_store_close(s);
}

static void test_replay(void **state)
{
    (void)state;
    struct kv_store *s = open_store(g_addr[1]);
    const char *trace = "{\"timestamp\":0,\"input_length\":1500,\"hash_ids\":[1,2,3]}\n"
                        "{\"timestamp\":1,\"hash_ids\":[1,2,4]}\n"
                        "\n"
                        "{\"timestamp\":2,\"hash_ids\":[1,5,3]}\r\n"
                        "{\"timestamp\":3,\"hash_ids\":[]}";
    FILE *f = fmemopen((void *)trace, strlen(trace), "r");
    assert_non_null(f);
    struct kv_replay_opts o = {.block_bytes = 100, .key_prefix = "rp", .get_hits = true};
    struct kv_replay_stats st;
    char err[256] = "";
    assert_int_equal(kv_replay_run(s, f, 0, &o, &st, err, sizeof(err)), KV_OK);
    fclose(f);
    assert_int_equal(st.lines, 5);
    assert_int_equal(st.requests, 4);
    assert_int_equal(st.blocks, 9);
    assert_int_equal(st.hit_blocks, 3); /* [1,2] of the 2nd request, [1] of the 3rd */
    assert_int_equal(st.put_blocks, 5); /* 1 2 3, 4, 5 */
    assert_int_equal(st.put_exist, 1);  /* 3, present after the first miss */
    assert_int_equal(st.put_failed, 0);
    assert_int_equal(st.get_failed, 0);
    assert_int_equal(st.bytes_written, 500);
    assert_int_equal(st.bytes_read, 300);
    assert_int_equal(st.trace_ms, 3);
    size_t len = 0;
    uint8_t b[100];
    assert_int_equal(kv_store_get(s, "rp/4", b, sizeof(b), &len), KV_OK);
    uint64_t id;
    memcpy(&id, b, 8);
    assert_int_equal(id, 4);

    /* a bad line stops the replay and names its number */
    const char *bad =
        "{\"timestamp\":0,\"hash_ids\":[7]}\n\n{\"timestamp\":1,\"hash_ids\":[\"x\"]}\n";
    f = fmemopen((void *)bad, strlen(bad), "r");
    o.key_prefix = "rp2";
    assert_int_equal(kv_replay_run(s, f, 0, &o, &st, err, sizeof(err)), KV_EPROTO);
    fclose(f);
    assert_non_null(strstr(err, "line 3"));
    assert_non_null(strstr(err, "hash_ids[0]"));
    assert_int_equal(st.requests, 1);
    kv_store_close(s);
}

/* Allocation failure at every point of a put, a get, a batch exists and a list, in turn: each
 * call fails cleanly or succeeds, and a put that reported success is readable (ASan run: no
 * leak). The failing allocation may also be one of the fake master's or an engine thread's. */
static void test_alloc_failures(void **state)
{
    (void)state;
    struct kv_store *s = open_store(g_addr[1]);
    uint8_t v[3000], r[3000];
    fill(v, sizeof(v), 9);
    int failed = 0, get_failed = 0;
    for (long n = 1; n <= 120; n++) {
        char key[32];
        snprintf(key, sizeof(key), "af/%ld", n);
        kv_alloc_fail_at(n);
        int rc = kv_store_put(s, key, v, sizeof(v), NULL);
        kv_alloc_fail_at(0);
        size_t len = 0;
        if (rc == KV_OK) {
            assert_int_equal(kv_store_get(s, key, r, sizeof(r), &len), KV_OK);
            assert_memory_equal(r, v, sizeof(v));
        } else {
            assert_true(rc < 0);
            failed++;
            /* a put whose PUT_END never left stays PENDING until the master's put timeout:
             * the retry uses another key */
            snprintf(key, sizeof(key), "af/%ld/again", n);
            assert_int_equal(kv_store_put(s, key, v, sizeof(v), NULL), KV_OK);
        }
        memset(r, 0, sizeof(r));
        len = 0;
        kv_alloc_fail_at(n);
        rc = kv_store_get(s, key, r, sizeof(r), &len);
        kv_alloc_fail_at(0);
        if (rc != KV_OK) {
            /* a get that failed on the allocation failure left the object whole and readable */
            assert_true(rc < 0);
            get_failed++;
            assert_int_equal(kv_store_get(s, key, r, sizeof(r), &len), KV_OK);
        }
        assert_int_equal(len, sizeof(v));
        assert_memory_equal(r, v, sizeof(v));
        const char *keys[2] = {key, "af/none"};
        int res[2];
        kv_alloc_fail_at(n);
        rc = kv_store_batch_exists(s, 2, keys, res);
        kv_alloc_fail_at(0);
        if (rc == KV_OK) {
            assert_int_equal(res[0], 1); /* put above */
            assert_int_equal(res[1], 0); /* never put */
        }
        char **lk = NULL;
        size_t ln = 0;
        kv_alloc_fail_at(n);
        rc = kv_store_list(s, "af/", 0, &lk, NULL, &ln);
        kv_alloc_fail_at(0);
        if (rc == KV_OK)
            kv_store_keys_free(lk, ln);
    }
    assert_true(failed > 0);     /* the loop did reach allocations of the put */
    assert_true(get_failed > 0); /* ... and of the get */
    kv_store_close(s);
}

int main(void)
{
    /* this fake master speaks the staged put (PUT_START, writes, PUT_END); the inline PUT of
     * small values is tested against the real master in test_client_cluster.c */
    setenv("KVSTASH_PUT_INLINE_MAX", "0", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_batch_round_trips),
        cmocka_unit_test(test_replica_fallback),
        cmocka_unit_test(test_write_failure_ends_put),
        cmocka_unit_test(test_follow_leader),
        cmocka_unit_test(test_list_stat),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_replay),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
