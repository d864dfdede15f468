/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_client_cluster.c - the store client against the real master and real
 * nodes, all in this process (store_int.h) on embedded metadata, the client
 * finding the leader through metadata: round trips of many sizes, batches, puts
 * by a producer writing in place (kv_store_batch_put_fill),
 * first-writer-wins under a race between threads, a node stopped while holding
 * one of two replicas, filling past capacity (every get exact or a miss), and a
 * trace replay whose hit count matches the exact prefix reuse.
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
#include "common/util.h"
#include "kvstash/meta.h"
#include "kvstash/store.h"
#include "store/replay.h"
#include "store/rpc.h"
#include "store/store_int.h"

#define NNODES 3
#define NODE_CAP (4u << 20)

static char g_url[64];
static struct kv_meta *g_meta; /* keeps the embedded map alive */
static struct kv_master *g_master;
static struct kv_node *g_nodes[NNODES];

static int setup(void **state)
{
    (void)state;
    snprintf(g_url, sizeof(g_url), "embedded://cc-%d", (int)getpid());
    if (kv_meta_open(g_url, NULL, &g_meta) < 0)
        return -1;
    struct kv_master_opts mo = {
        .metadata = g_url,
        .rpc_addr = "127.0.0.1:0",
        .admin_addr = "off",
        .evict_interval_ms = 20,
        .node_timeout_ms = 1500,
        /* a get's lease keeps the object from eviction for lease_ms: with the default 5 s,
         * test_fill_past_capacity could start while the objects the earlier tests read (5.5 of
         * the 8 MiB left after test_node_loss) were all still leased, and get ENOSPC for every
         * put but the first; 1 s has lapsed by then (test_node_loss sleeps 2 s after reading) */
        .lease_ms = 1000,
    };
    if (kv_master_start(&mo, &g_master) < 0)
        return -1;
    if (kv_master_wait_leader(g_master, 10000) < 0)
        return -1;
    for (int i = 0; i < NNODES; i++) {
        char id[16];
        snprintf(id, sizeof(id), "cn%d", i);
        struct kv_node_opts no = {.metadata = g_url, .node_id = id, .capacity = NODE_CAP};
        if (kv_node_start(&no, &g_nodes[i]) < 0)
            return -1;
    }
    for (int i = 0; i < NNODES; i++)
        if (kv_node_wait_mounted(g_nodes[i], 10000) < 0)
            return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < NNODES; i++)
        kv_node_stop(g_nodes[i]);
    kv_master_stop(g_master);
    kv_meta_close(g_meta);
    return 0;
}

static struct kv_store *open_store(void)
{
    struct kv_store_opts o = {.metadata = g_url, .timeout_ms = 5000};
    struct kv_store *s = NULL;
    assert_int_equal(kv_store_open(&o, &s), KV_OK);
    return s;
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (uint8_t)(x >> 16);
    }
}

static void test_roundtrip(void **state)
{
    (void)state;
    struct kv_store *s = open_store();
    static uint8_t v[1 << 20], r[1 << 20];
    size_t sizes[] = {0, 1, 255, 256, 257, 4096, 100000, 1 << 20};
    for (size_t i = 0; i < KV_ARRAY_SIZE(sizes); i++) {
        char key[32];
        snprintf(key, sizeof(key), "rt/%zu", sizes[i]);
        fill(v, sizes[i], (unsigned)i);
        struct kv_put_opts po = {.replicas = 1 + (int)(i % 2)};
        assert_int_equal(kv_store_put(s, key, v, sizes[i], &po), KV_OK);
        assert_int_equal(kv_store_put(s, key, v, sizes[i], &po), KV_EEXIST);
        size_t len = 12345;
        assert_int_equal(kv_store_get(s, key, r, sizeof(r), &len), KV_OK);
        assert_int_equal(len, sizes[i]);
        assert_memory_equal(r, v, len);
        assert_int_equal(kv_store_exists(s, key), 1);
    }
    assert_int_equal(kv_store_remove(s, "rt/4096"), KV_OK);
    size_t len;
    assert_int_equal(kv_store_get(s, "rt/4096", r, sizeof(r), &len), KV_ENOENT);
    assert_int_equal(kv_store_exists(s, "rt/4096"), 0);
    /* the key can be put again after a remove */
    assert_int_equal(kv_store_put(s, "rt/4096", "new", 3, NULL), KV_OK);
    assert_int_equal(kv_store_get(s, "rt/4096", r, sizeof(r), &len), KV_OK);
    assert_int_equal(len, 3);
    char **keys;
    size_t n;
    assert_int_equal(kv_store_list(s, "rt/", 0, &keys, NULL, &n), KV_OK);
    assert_int_equal(n, KV_ARRAY_SIZE(sizes));
    kv_store_keys_free(keys, n);
    char *json = NULL;
    assert_int_equal(kv_store_stat_json(s, &json), KV_OK);
    assert_non_null(strstr(json, "nodes"));
    kv_store_free(json);
    kv_store_close(s);
}

/* One batch mixing values carried inside the PUT request (<= 64 KiB by default) with values
 * the client writes into the segments itself: every result lands on its own key. */
static void test_inline_and_staged(void **state)
{
    (void)state;
    struct kv_store *s = open_store();
    static uint8_t v[6][200000];
    size_t sizes[6] = {1024, 200000, 65536, 65537, 0, 4096};
    const char *keys[6];
    const void *bufs[6];
    char names[6][32];
    int res[6];
    for (int i = 0; i < 6; i++) {
        snprintf(names[i], sizeof(names[i]), "mix/%d", i);
        keys[i] = names[i];
        fill(v[i], sizes[i], 100 + (unsigned)i);
        bufs[i] = v[i];
        res[i] = 12345;
    }
    assert_int_equal(kv_store_batch_put(s, 6, keys, bufs, sizes, NULL, res), KV_OK);
    for (int i = 0; i < 6; i++)
        assert_int_equal(res[i], KV_OK);
    /* first writer wins on both paths */
    assert_int_equal(kv_store_batch_put(s, 6, keys, bufs, sizes, NULL, res), KV_OK);
    for (int i = 0; i < 6; i++)
        assert_int_equal(res[i], KV_EEXIST);
    static uint8_t r[200000];
    for (int i = 0; i < 6; i++) {
        size_t len = 1;
        assert_int_equal(kv_store_get(s, keys[i], r, sizeof(r), &len), KV_OK);
        assert_int_equal(len, sizes[i]);
        assert_memory_equal(r, v[i], len);
    }
    kv_store_close(s);

    /* a bad KVSTASH_PUT_INLINE_MAX is refused at open, naming the variable */
    setenv("KVSTASH_PUT_INLINE_MAX", "lots", 1);
    struct kv_store_opts o = {.metadata = g_url, .timeout_ms = 5000};
    struct kv_store *bad = NULL;
    assert_int_equal(kv_store_open(&o, &bad), KV_EINVAL);
    assert_null(bad);
    unsetenv("KVSTASH_PUT_INLINE_MAX");

    /* a PUT whose item carries fewer bytes than its size is malformed: rejected, nothing stored */
    struct kv_rpc_client *c = NULL;
    assert_int_equal(kv_rpc_client_create(kv_master_rpc_addr(g_master), 0, &c), KV_OK);
    Kvstash__PutItem it = KVSTASH__PUT_ITEM__INIT, *pit = &it;
    it.key = "mix/short";
    it.size = 100;
    it.data.len = 10;
    it.data.data = v[0];
    Kvstash__PutStartReq req = KVSTASH__PUT_START_REQ__INIT;
    req.n_items = 1;
    req.items = &pit;
    ProtobufCMessage *out = NULL;
    assert_int_equal(kv_rpc_call_pb(c, KV_RPC_PUT, &req.base, &kvstash__status_list__descriptor,
                                    &out, 5000, NULL, 0),
                     KV_EPROTO);
    assert_null(out);
    kv_rpc_client_destroy(c);
    s = open_store();
    assert_int_equal(kv_store_exists(s, "mix/short"), 0);
    kv_store_close(s);
}

/* kv_store_batch_put_fill: the producer writes each object where it is stored (straight into
 * the node's segment for one replica over shm, a buffer of the call otherwise, by value for
 * inline sizes), checksumming as it writes (XXH3 streamed in two pieces). */
struct fill_ctx {
    const uint8_t *src[8];
    int calls;
    unsigned filled; /* bit i: object i was filled */
    int fail;        /* object that fails to fill (-1: none) */
    int bad_sum;     /* object given a wrong checksum (-1: none) */
};

static int fill_obj(void *ud, size_t i, void *dst, size_t len, uint64_t *sum)
{
    struct fill_ctx *x = ud;
    x->calls++;
    x->filled |= 1u << i;
    if ((int)i == x->fail)
        return KV_EIO;
    struct kv_hash64_state *h = kv_hash64_state_new();
    assert_non_null(h);
    size_t cut = len / 3;
    memcpy(dst, x->src[i], cut);
    kv_hash64_update(h, dst, cut);
    memcpy((uint8_t *)dst + cut, x->src[i] + cut, len - cut);
    kv_hash64_update(h, (uint8_t *)dst + cut, len - cut);
    *sum = kv_hash64_digest(h);
    assert_int_equal(*sum, kv_hash64(x->src[i], len)); /* streamed == one-shot */
    kv_hash64_state_free(h);
    if ((int)i == x->bad_sum)
        *sum ^= 1;
    return KV_OK;
}

static void test_put_fill(void **state)
{
    (void)state;
    struct kv_store *s = open_store();
    enum { N = 7 };
    static uint8_t v[N][300000];
    size_t sizes[N] = {300000, 1000, 65537, 0, 200000, 4096, 131072};
    const char *keys[N];
    char names[N][32];
    int res[N];
    struct fill_ctx x = {.fail = -1, .bad_sum = -1};
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "pf/%d", i);
        keys[i] = names[i];
        fill(v[i], sizes[i], 300 + (unsigned)i);
        x.src[i] = v[i];
    }
    static uint8_t r[300000];
    for (int reps = 1; reps <= 2; reps++) {
        struct kv_put_opts po = {.replicas = reps};
        x.calls = 0;
        for (int i = 0; i < N; i++)
            snprintf(names[i], sizeof(names[i]), "pf/r%d/%d", reps, i);
        assert_int_equal(kv_store_batch_put_fill(s, N, keys, sizes, fill_obj, &x, &po, res), KV_OK);
        assert_int_equal(x.calls, N - 1); /* the empty object needs no bytes */
        for (int i = 0; i < N; i++) {
            assert_int_equal(res[i], KV_OK);
            size_t len = 1;
            assert_int_equal(kv_store_get(s, keys[i], r, sizeof(r), &len), KV_OK);
            assert_int_equal(len, sizes[i]);
            assert_memory_equal(r, v[i], len);
        }
        /* first writer wins; no object above the inline size is filled again (inline-sized
         * ones are filled before the master is asked) */
        x.filled = 0;
        assert_int_equal(kv_store_batch_put_fill(s, N, keys, sizes, fill_obj, &x, &po, res), KV_OK);
        for (int i = 0; i < N; i++) {
            assert_int_equal(res[i], KV_EEXIST);
            if (sizes[i] > 65536)
                assert_false(x.filled & (1u << i));
        }
    }
    /* a fill that fails: that object gets the error and is not stored, the others are; large
     * (written in place) and inline-sized alike */
    for (int f = 0; f < 2; f++) {
        x.fail = f == 0 ? 0 : 1;
        for (int i = 0; i < N; i++)
            snprintf(names[i], sizeof(names[i]), "pf/f%d/%d", f, i);
        assert_int_equal(kv_store_batch_put_fill(s, N, keys, sizes, fill_obj, &x, NULL, res),
                         KV_OK);
        for (int i = 0; i < N; i++) {
            assert_int_equal(res[i], i == x.fail ? KV_EIO : KV_OK);
            assert_int_equal(kv_store_exists(s, keys[i]), i == x.fail ? 0 : 1);
        }
    }
    x.fail = -1;
    /* a wrong checksum from the producer: the get says so, never returns the bytes as a value */
    x.bad_sum = 4;
    for (int i = 0; i < N; i++)
        snprintf(names[i], sizeof(names[i]), "pf/c/%d", i);
    assert_int_equal(kv_store_batch_put_fill(s, N, keys, sizes, fill_obj, &x, NULL, res), KV_OK);
    size_t len;
    assert_int_equal(kv_store_get(s, keys[4], r, sizeof(r), &len), KV_ECHECKSUM);
    assert_int_equal(kv_store_get(s, keys[5], r, sizeof(r), &len), KV_OK);
    /* argument checks */
    assert_int_equal(kv_store_batch_put_fill(s, 1, keys, sizes, NULL, &x, NULL, res), KV_EINVAL);
    assert_int_equal(kv_store_batch_put_fill(NULL, 1, keys, sizes, fill_obj, &x, NULL, res),
                     KV_EINVAL);
    assert_int_equal(kv_store_batch_put_fill(s, 0, NULL, NULL, fill_obj, &x, NULL, NULL), KV_OK);
    /* leave the nodes' space to the tests after this one */
    char **all;
    size_t n;
    assert_int_equal(kv_store_list(s, "pf/", 0, &all, NULL, &n), KV_OK);
    assert_int_equal(n, 2 * N + 2 * (N - 1) + N);
    int *rr = kv_calloc(n, sizeof(*rr));
    assert_int_equal(kv_store_batch_remove(s, n, (const char *const *)all, rr), KV_OK);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(rr[i], KV_OK);
    kv_free(rr);
    kv_store_keys_free(all, n);
    kv_store_close(s);
}

static void test_batch(void **state)
{
    (void)state;
    struct kv_store *s = open_store();
    enum { N = 100 };
    static char kb[N][32];
    static uint8_t vals[N][2000], outs[N][2000];
    const char *keys[N];
    const void *bufs[N];
    void *obufs[N];
    size_t lens[N], caps[N];
    int res[N];
    for (int i = 0; i < N; i++) {
        snprintf(kb[i], sizeof(kb[i]), "b/%03d", i);
        keys[i] = kb[i];
        lens[i] = (size_t)(i * 19);
        fill(vals[i], lens[i], (unsigned)i + 7);
        bufs[i] = vals[i];
        obufs[i] = outs[i];
        caps[i] = sizeof(outs[i]);
    }
    struct kv_put_opts po = {.replicas = 2};
    assert_int_equal(kv_store_batch_put(s, N, keys, bufs, lens, &po, res), KV_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], KV_OK);
    assert_int_equal(kv_store_batch_exists(s, N, keys, res), KV_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], 1);
    size_t glens[N];
    assert_int_equal(kv_store_batch_get(s, N, keys, obufs, caps, glens, res), KV_OK);
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i], KV_OK);
        assert_int_equal(glens[i], lens[i]);
        assert_memory_equal(outs[i], vals[i], lens[i]);
    }
    kv_store_close(s);
}

struct racer {
    struct kv_store *s;
    pthread_barrier_t *bar;
    const char *key;
    uint8_t *val;
    int rc;
};

static void *race_main(void *arg)
{
    struct racer *r = arg;
    pthread_barrier_wait(r->bar);
    r->rc = kv_store_put(r->s, r->key, r->val, 300000, NULL);
    return NULL;
}

static void test_race(void **state)
{
    (void)state;
    struct kv_store *s = open_store();
    static uint8_t a[300000], b[300000], r[300000];
    fill(a, sizeof(a), 1);
    fill(b, sizeof(b), 2);
    for (int round = 0; round < 10; round++) {
        char key[32];
        snprintf(key, sizeof(key), "race/%d", round);
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, 2);
        struct racer ra = {.s = s, .bar = &bar, .key = key, .val = a};
        struct racer rb = {.s = s, .bar = &bar, .key = key, .val = b};
        pthread_t ta, tb;
        assert_int_equal(pthread_create(&ta, NULL, race_main, &ra), 0);
        assert_int_equal(pthread_create(&tb, NULL, race_main, &rb), 0);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        pthread_barrier_destroy(&bar);
        assert_true((ra.rc == KV_OK && rb.rc == KV_EEXIST) ||
                    (ra.rc == KV_EEXIST && rb.rc == KV_OK));
        size_t len;
        assert_int_equal(kv_store_get(s, key, r, sizeof(r), &len), KV_OK);
        assert_int_equal(len, sizeof(r));
        assert_memory_equal(r, ra.rc == KV_OK ? a : b, len);
        assert_int_equal(kv_store_remove(s, key), KV_OK);
    }
    kv_store_close(s);
}

static void test_fill_past_capacity(void **state)
{
    (void)state;
    struct kv_store *s = open_store();
    enum { N = 60, SZ = 512 * 1024 }; /* 30 MiB into the 2 x 4 MiB left after test_node_loss */
    static uint8_t v[SZ], r[SZ];
    int ok = 0;
    for (int i = 0; i < N; i++) {
        char key[32];
        snprintf(key, sizeof(key), "fill/%d", i);
        fill(v, SZ, (unsigned)i + 1000);
        int rc = kv_store_put(s, key, v, SZ, NULL);
        assert_true(rc == KV_OK || rc == KV_ENOSPC);
        ok += rc == KV_OK;
        /* an earlier key: exact bytes or a miss, never anything else */
        snprintf(key, sizeof(key), "fill/%d", i / 2);
        size_t len = 0;
        rc = kv_store_get(s, key, r, sizeof(r), &len);
        assert_true(rc == KV_OK || rc == KV_ENOENT);
        if (rc == KV_OK) {
            fill(v, SZ, (unsigned)(i / 2) + 1000);
            assert_int_equal(len, SZ);
            assert_memory_equal(r, v, SZ);
        }
    }
    assert_true(ok >= N / 2);
    int found = 0;
    for (int i = 0; i < N; i++) {
        char key[32];
        snprintf(key, sizeof(key), "fill/%d", i);
        found += kv_store_exists(s, key) == 1;
    }
    assert_true(found > 0 && found < N);
    kv_store_close(s);
}

static void test_replay_exact_hits(void **state)
{
    (void)state;
    struct kv_store *s = open_store();
    /* request i: a shared prefix [0..i%5) then 3 fresh blocks */
    char trace[16384];
    size_t off = 0;
    uint64_t want_hits = 0, want_blocks = 0, fresh = 100;
    for (int i = 0; i < 40; i++) {
        off += (size_t)snprintf(trace + off, sizeof(trace) - off,
                                "{\"timestamp\":%d,\"hash_ids\":[", i);
        int shared = i % 5;
        for (int k = 0; k < shared; k++)
            off += (size_t)snprintf(trace + off, sizeof(trace) - off, "%d,", k);
        off += (size_t)snprintf(trace + off, sizeof(trace) - off, "%llu,%llu,%llu]}\n",
                                (unsigned long long)fresh, (unsigned long long)fresh + 1,
                                (unsigned long long)fresh + 2);
        fresh += 3;
        /* block k of the shared prefix exists once a request with > k shared blocks
         * ran */
        int seen = 0;
        for (int j = 0; j < i; j++)
            seen = KV_MAX(seen, j % 5);
        want_hits += (uint64_t)KV_MIN(shared, seen);
        want_blocks += (uint64_t)shared + 3;
    }
    FILE *f = fmemopen(trace, off, "r");
    assert_non_null(f);
    struct kv_replay_opts o = {.block_bytes = 2048, .key_prefix = "cc-replay", .get_hits = true};
    struct kv_replay_stats st;
    char err[256];
    assert_int_equal(kv_replay_run(s, f, 0, &o, &st, err, sizeof(err)), KV_OK);
    fclose(f);
    assert_int_equal(st.requests, 40);
    assert_int_equal(st.blocks, want_blocks);
    assert_int_equal(st.hit_blocks, want_hits);
    assert_int_equal(st.get_failed, 0);
    assert_int_equal(st.put_failed, 0);
    kv_store_close(s);
}

static void test_node_loss(void **state)
{
    (void)state;
    struct kv_store *s = open_store();
    enum { N = 12, SZ = 40000 };
    static uint8_t v[N][SZ], r[SZ];
    struct kv_put_opts po = {.replicas = 2};
    for (int i = 0; i < N; i++) {
        char key[32];
        snprintf(key, sizeof(key), "nl/%d", i);
        fill(v[i], SZ, (unsigned)i + 50);
        assert_int_equal(kv_store_put(s, key, v[i], SZ, &po), KV_OK);
    }
    kv_node_stop(g_nodes[1]);
    g_nodes[1] = NULL;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < N; i++) {
            char key[32];
            snprintf(key, sizeof(key), "nl/%d", i);
            size_t len = 0;
            assert_int_equal(kv_store_get(s, key, r, sizeof(r), &len), KV_OK);
            assert_int_equal(len, SZ);
            assert_memory_equal(r, v[i], SZ);
        }
        kv_sleep_ms(2000); /* second pass: after the master dropped the node */
    }
    kv_store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_batch),
        cmocka_unit_test(test_inline_and_staged),
        cmocka_unit_test(test_put_fill),
        cmocka_unit_test(test_race),
        cmocka_unit_test(test_replay_exact_hits),
        cmocka_unit_test(test_node_loss), /* before the fill: nothing evicted yet */
        cmocka_unit_test(test_fill_past_capacity),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
