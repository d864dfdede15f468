/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_client_aio.c - the asynchronous single-key calls (kv_store_aio_*) against a real master
 * (and a standby) and a real node in this process, on embedded metadata: results and bytes of
 * puts, gets and exists with many in flight, the depth limit, every error a result can carry,
 * values above the inline size, and a leader fail-over under an open context (its connections
 * to the old leader dead, the operations handed to the synchronous client, which follows the
 * new leader).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "kvstash/meta.h"
#include "kvstash/store.h"
#include "store/store_int.h"

#define DEPTH 8
#define NKEYS 64
#define VSIZE 4096
#define BIG (200u * 1000u) /* above the 64 KiB inline size: the staged put path */

static char g_url[64];
static struct kv_meta *g_meta;
static struct kv_master *g_m1, *g_m2;
static struct kv_node *g_node;

static struct kv_master *start_master(const char *id)
{
    struct kv_master_opts mo = {.metadata = g_url,
                                .id = id,
                                .rpc_addr = "127.0.0.1:0",
                                .admin_addr = "off",
                                .leader_ttl_s = 2,
                                .put_timeout_ms = 2000};
    struct kv_master *m = NULL;
    return kv_master_start(&mo, &m) == KV_OK ? m : NULL;
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_url, sizeof(g_url), "embedded://aio-%d", (int)getpid());
    if (kv_meta_open(g_url, NULL, &g_meta) < 0 || !(g_m1 = start_master("aio-m1")))
        return -1;
    if (kv_master_wait_leader(g_m1, 10000) < 0 || !(g_m2 = start_master("aio-m2")))
        return -1;
    struct kv_node_opts no = {.metadata = g_url, .node_id = "aio-n", .capacity = 16u << 20};
    if (kv_node_start(&no, &g_node) < 0 || kv_node_wait_mounted(g_node, 10000) < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    kv_node_stop(g_node);
    kv_master_stop(g_m1);
    kv_master_stop(g_m2);
    kv_meta_close(g_meta);
    return 0;
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 7;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (uint8_t)(x >> 16);
    }
}

/* Polls until every operation in flight has a result; res[tag]/len[tag] get them (tags must be
 * < n and each seen once). */
static void drain(struct kv_store_aio *a, int *res, size_t *len, size_t n)
{
    struct kv_store_aio_done d[DEPTH];
    while (kv_store_aio_inflight(a) > 0) {
        int got = kv_store_aio_poll(a, d, DEPTH, 20000);
        assert_true(got > 0); /* every operation completes within the client's timeout */
        for (int i = 0; i < got; i++) {
            assert_true(d[i].tag < n);
            assert_int_equal(res[d[i].tag], 1); /* not seen before */
            res[d[i].tag] = d[i].status;
            len[d[i].tag] = d[i].len;
        }
    }
}

static uint8_t g_vals[NKEYS][VSIZE], g_got[NKEYS][VSIZE];

/* Runs op(i) for i in 0..n-1 keeping up to DEPTH in flight; res/len as drain. */
enum op { PUT, GET, EXISTS };
static void run(struct kv_store_aio *a, enum op op, const char *fmt, size_t n, int *res,
                size_t *len)
{
    struct kv_store_aio_done d[DEPTH];
    for (size_t i = 0; i < n; i++)
        res[i] = 1;
    for (size_t i = 0; i < n;) {
        char key[32];
        snprintf(key, sizeof(key), fmt, i);
        int rc = op == PUT   ? kv_store_aio_put(a, key, g_vals[i], VSIZE, NULL, i)
                 : op == GET ? kv_store_aio_get(a, key, g_got[i], VSIZE, i)
                             : kv_store_aio_exists(a, key, i);
        if (rc == KV_EBUSY) {
            assert_int_equal(kv_store_aio_inflight(a), DEPTH);
            int got = kv_store_aio_poll(a, d, DEPTH, 20000);
            assert_true(got > 0);
            for (int j = 0; j < got; j++) {
                assert_int_equal(res[d[j].tag], 1);
                res[d[j].tag] = d[j].status;
                len[d[j].tag] = d[j].len;
            }
            continue;
        }
        assert_int_equal(rc, KV_OK);
        i++;
    }
    drain(a, res, len, n);
}

static struct kv_store *open_store(void)
{
    struct kv_store_opts o = {.metadata = g_url, .timeout_ms = 15000};
    struct kv_store *s = NULL;
    assert_int_equal(kv_store_open(&o, &s), KV_OK);
    return s;
}

static void test_roundtrip(void **state)
{
    (void)state;
    struct kv_store *s = open_store();
    struct kv_store_aio *a = NULL;
    assert_int_equal(kv_store_aio_open(s, 0, &a), KV_EINVAL);
    assert_int_equal(kv_store_aio_open(s, 1025, &a), KV_EINVAL);
    assert_int_equal(kv_store_aio_open(s, DEPTH, &a), KV_OK);
    struct kv_store_aio_done d[DEPTH];
    assert_int_equal(kv_store_aio_poll(a, d, DEPTH, 1000), 0); /* nothing in flight: at once */
    assert_int_equal(kv_store_aio_put(a, "", "x", 1, NULL, 0), KV_EINVAL);
    assert_int_equal(kv_store_aio_put(a, "k", NULL, 1, NULL, 0), KV_EINVAL);
    struct kv_put_opts bad = {.replicas = 99};
    assert_int_equal(kv_store_aio_put(a, "k", "x", 1, &bad, 0), KV_EINVAL);
    assert_int_equal(kv_store_aio_get(a, NULL, g_got[0], VSIZE, 0), KV_EINVAL);
    assert_int_equal(kv_store_aio_inflight(a), 0);

    int res[NKEYS];
    size_t len[NKEYS];
    for (int i = 0; i < NKEYS; i++)
        fill(g_vals[i], VSIZE, (unsigned)i + 1);
    run(a, PUT, "aio/%zu", NKEYS, res, len);
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(res[i], KV_OK);
    memset(g_got, 0, sizeof(g_got));
    run(a, GET, "aio/%zu", NKEYS, res, len);
    for (int i = 0; i < NKEYS; i++) {
        assert_int_equal(res[i], KV_OK);
        assert_int_equal(len[i], VSIZE);
        assert_memory_equal(g_got[i], g_vals[i], VSIZE);
    }
    run(a, EXISTS, "aio/%zu", NKEYS, res, len);
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(res[i], 1);
    /* the synchronous client sees what the asynchronous one wrote */
    size_t l = 0;
    assert_int_equal(kv_store_get(s, "aio/5", g_got[0], VSIZE, &l), KV_OK);
    assert_memory_equal(g_got[0], g_vals[5], VSIZE);

    /* one of each outcome, all in flight together */
    static uint8_t big[BIG], bigback[BIG];
    fill(big, BIG, 99);
    for (size_t i = 0; i < 8; i++)
        res[i] = 1;
    assert_int_equal(kv_store_aio_put(a, "aio/1", g_vals[2], VSIZE, NULL, 0), KV_OK);
    assert_int_equal(kv_store_aio_get(a, "aio/2", g_got[0], 100, 1), KV_OK);
    assert_int_equal(kv_store_aio_get(a, "aio/missing", g_got[1], VSIZE, 2), KV_OK);
    assert_int_equal(kv_store_aio_exists(a, "aio/missing", 3), KV_OK);
    assert_int_equal(kv_store_aio_put(a, "aio/big", big, BIG, NULL, 4), KV_OK);
    assert_int_equal(kv_store_aio_put(a, "aio/empty", "", 0, NULL, 5), KV_OK);
    struct kv_put_opts two = {.replicas = 2}; /* one node: not placeable */
    assert_int_equal(kv_store_aio_put(a, "aio/two", "x", 1, &two, 6), KV_OK);
    assert_int_equal(kv_store_aio_exists(a, "aio/3", 7), KV_OK);
    assert_int_equal(kv_store_aio_inflight(a), 8);
    assert_int_equal(kv_store_aio_get(a, "aio/4", g_got[2], VSIZE, 8), KV_EBUSY);
    drain(a, res, len, 8);
    assert_int_equal(res[0], KV_EEXIST); /* first writer wins */
    assert_int_equal(res[1], KV_E2BIG);
    assert_int_equal(len[1], VSIZE); /* the size, so the caller can retry */
    assert_int_equal(res[2], KV_ENOENT);
    assert_int_equal(res[3], 0);
    assert_int_equal(res[4], KV_OK);
    assert_int_equal(res[5], KV_OK);
    assert_true(res[6] < 0);
    assert_int_equal(res[7], 1);
    for (size_t i = 0; i < 2; i++)
        res[i] = 1;
    assert_int_equal(kv_store_aio_get(a, "aio/big", bigback, BIG, 0), KV_OK);
    assert_int_equal(kv_store_aio_get(a, "aio/empty", g_got[0], VSIZE, 1), KV_OK);
    drain(a, res, len, 2);
    assert_int_equal(res[0], KV_OK);
    assert_int_equal(len[0], BIG);
    assert_memory_equal(bigback, big, BIG);
    assert_int_equal(res[1], KV_OK);
    assert_int_equal(len[1], 0);
    /* closing with operations in flight abandons them */
    assert_int_equal(kv_store_aio_get(a, "aio/7", g_got[0], VSIZE, 0), KV_OK);
    kv_store_aio_close(a);
    kv_store_aio_close(NULL);
    kv_store_close(s);
}

/* The leader resigns while a context holds connections to it: gets and exists complete with
 * the exact bytes through the new leader, and a put completes once the new leader places again
 * (its fence answers KV_EAGAIN meanwhile, which the synchronous client retries). */
static void test_failover(void **state)
{
    (void)state;
    struct kv_store *s = open_store();
    struct kv_store_aio *a = NULL;
    assert_int_equal(kv_store_aio_open(s, DEPTH, &a), KV_OK);
    int res[NKEYS];
    size_t len[NKEYS];
    run(a, PUT, "fo/%zu", 16, res, len);
    for (int i = 0; i < 16; i++)
        assert_int_equal(res[i], KV_OK);
    struct kv_store_aio_stats st0, st1;
    kv_store_aio_stats(a, &st0);
    assert_int_equal(st0.submitted, 16);
    assert_int_equal(st0.connects, DEPTH);
    assert_int_equal(st0.fallbacks, 0);
    uint64_t before = kv_master_object_count(g_m1);
    kv_master_stop(g_m1); /* resigns: the standby takes over, the node re-mounts */
    g_m1 = NULL;
    assert_int_equal(kv_master_wait_leader(g_m2, 10000), KV_OK);
    for (int t = 0; t < 200 && kv_master_object_count(g_m2) < before; t++)
        kv_sleep_ms(50);
    assert_int_equal(kv_master_object_count(g_m2), before);
    memset(g_got, 0, sizeof(g_got));
    run(a, GET, "fo/%zu", 16, res, len);
    for (int i = 0; i < 16; i++) {
        assert_int_equal(res[i], KV_OK);
        assert_memory_equal(g_got[i], g_vals[i], VSIZE);
    }
    run(a, EXISTS, "fo/%zu", 16, res, len);
    for (int i = 0; i < 16; i++)
        assert_int_equal(res[i], 1);
    res[0] = 1;
    assert_int_equal(kv_store_aio_put(a, "fo/after", g_vals[20], VSIZE, NULL, 0), KV_OK);
    drain(a, res, len, 1);
    assert_int_equal(res[0], KV_OK);
    /* the dead connections were noticed and replaced; what they carried was handed over */
    kv_store_aio_stats(a, &st1);
    assert_true(st1.fallbacks > 0);
    assert_true(st1.connects > st0.connects);
    size_t l = 0;
    assert_int_equal(kv_store_get(s, "fo/after", g_got[0], VSIZE, &l), KV_OK);
    assert_memory_equal(g_got[0], g_vals[20], VSIZE);
    kv_store_aio_close(a);
    kv_store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_failover),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
