/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_master_lease.c - the leader's local lease deadline and the new leader's placement fence
 * (master_ha.c). The masters share an embedded metadata store; the leader's keepalives go through
 * a function the test can stall (struct kv_master's keepalive hook), which is what a leader cut
 * off from etcd sees: keepalives that do not come back.
 *  - stalled keepalives: the leader stops acting as leader (clients get NOT_LEADER) before its
 *    lease can have expired in metadata and logs it; the standby takes over, never while the
 *    other leads; with keepalives flowing again exactly one master leads, the other follows;
 *  - keepalives that succeed keep a leader leading (no step-down for many ttls);
 *  - fence: a node that reports it served an older epoch is not placed on (a put gets the
 *    retryable NOT_LEADER) while a node that never mounted before is placed on at once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "kvstash/kvstash.h"
#include "kvstash/meta.h"
#include "store/master_int.h"
#include "store/rpc.h"
#include "store/store_int.h"

#define TTL_S 2

static int seq;
static char url[128];

static void new_url(void)
{
    snprintf(url, sizeof(url), "embedded://test-lease-%d-%d", (int)getpid(), ++seq);
}

static struct kv_master *start_master(const char *id, uint32_t put_timeout_ms)
{
    struct kv_master_opts o = {.id = id,
                               .metadata = url,
                               .rpc_addr = "127.0.0.1:0",
                               .admin_addr = "off",
                               .leader_ttl_s = TTL_S,
                               .put_timeout_ms = put_timeout_ms};
    struct kv_master *m;
    assert_int_equal(kv_master_start(&o, &m), KV_OK);
    return m;
}

/* The stallable keepalive: while stalled, a call waits until unstalled (as a request to an
 * unreachable etcd waits for its timeout) and fails. last_ok: when the last keepalive that
 * succeeded was sent (monotonic ms). */
static atomic_bool stalled;
static _Atomic int64_t last_ok;

static int stall_keepalive(struct kv_meta *meta, int64_t lease)
{
    int64_t sent = kv_now_ms();
    if (atomic_load(&stalled)) {
        while (atomic_load(&stalled))
            kv_sleep_ms(5);
        return KV_EMETA_UNAVAIL;
    }
    int rc = kv_meta_lease_keepalive(meta, lease);
    if (rc == KV_OK)
        atomic_store(&last_ok, sent);
    return rc;
}

static int hello(struct kv_master *m)
{
    struct kv_rpc_client *c;
    assert_int_equal(kv_rpc_client_create(kv_master_rpc_addr(m), 1000, &c), KV_OK);
    Kvstash__HelloReq hr = KVSTASH__HELLO_REQ__INIT;
    int rc = kv_rpc_call_pb(c, KV_RPC_HELLO, &hr.base, &kvstash__hello_resp__descriptor, NULL, 1000,
                            NULL, 0);
    kv_rpc_client_destroy(c);
    return rc;
}

/* Keepalives of the leader stall: it steps down before its lease can end, never overlaps with
 * the other master's leadership; keepalives back: one leader, one standby, stable. */
static void test_stalled_keepalives_step_down(void **state)
{
    (void)state;
    new_url();
    atomic_store(&stalled, false);
    atomic_store(&last_ok, 0);
    struct kv_master *m1 = start_master("m1", 0);
    assert_int_equal(kv_master_wait_leader(m1, 5000), KV_OK);
    atomic_store(&m1->keepalive, stall_keepalive);
    struct kv_master *m2 = start_master("m2", 0);
    /* keepalives that succeed keep m1 leading for several ttls */
    int64_t end = kv_now_ms() + 3 * TTL_S * 1000;
    while (kv_now_ms() < end) {
        assert_true(kv_master_is_leader(m1));
        assert_false(kv_master_is_leader(m2));
        kv_sleep_ms(20);
    }
    assert_int_equal(hello(m1), KV_OK);
    assert_int_equal(hello(m2), KV_EAGAIN);
    assert_true(atomic_load(&last_ok) > 0);

    atomic_store(&stalled, true);
    int64_t t_stall = kv_now_ms();
    int64_t t_down = 0;
    while (!t_down && kv_now_ms() < t_stall + 10000) {
        bool l1 = kv_master_is_leader(m1), l2 = kv_master_is_leader(m2);
        assert_false(l1 && l2);
        if (!l1)
            t_down = kv_now_ms();
        kv_sleep_ms(5);
    }
    assert_true(t_down > 0);
    /* before the lease can have expired in metadata: ttl after the last keepalive that worked
     * was sent (one in flight when the stall began may have succeeded) */
    int64_t ok_before = atomic_load(&last_ok);
    assert_true(ok_before < t_stall);
    assert_true(t_down < ok_before + TTL_S * 1000);
    assert_true(t_down < t_stall + TTL_S * 1000);
    /* and not for nothing: the deadline is ttl minus a margin after that keepalive was sent */
    assert_true(t_down >= ok_before + TTL_S * 1000 - 1000);
    /* the standby takes over (m1 lets it campaign first), never while m1 leads; m1 answers
     * NOT_LEADER */
    while (!kv_master_is_leader(m2) && kv_now_ms() < t_down + 5000) {
        assert_false(kv_master_is_leader(m1) && kv_master_is_leader(m2));
        kv_sleep_ms(5);
    }
    assert_true(kv_master_is_leader(m2));
    assert_false(kv_master_is_leader(m1));
    assert_int_equal(hello(m1), KV_EAGAIN);
    assert_int_equal(hello(m2), KV_OK);
    end = kv_now_ms() + 2 * TTL_S * 1000;
    while (kv_now_ms() < end) {
        assert_false(kv_master_is_leader(m1) && kv_master_is_leader(m2));
        kv_sleep_ms(5);
    }

    /* keepalives flow again: exactly one leader, the other a standby, and it stays so */
    atomic_store(&stalled, false);
    end = kv_now_ms() + 10000;
    while (kv_master_is_leader(m1) == kv_master_is_leader(m2) && kv_now_ms() < end)
        kv_sleep_ms(10);
    bool m1_leads = kv_master_is_leader(m1);
    assert_true(m1_leads != kv_master_is_leader(m2));
    kv_sleep_ms(300); /* a leader that was between campaign and its first keepalive settles */
    m1_leads = kv_master_is_leader(m1);
    end = kv_now_ms() + 3 * TTL_S * 1000;
    while (kv_now_ms() < end) {
        assert_true(kv_master_is_leader(m1) == m1_leads);
        assert_true(kv_master_is_leader(m2) == !m1_leads);
        kv_sleep_ms(20);
    }
    assert_int_equal(hello(m1_leads ? m2 : m1), KV_EAGAIN);
    assert_int_equal(hello(m1_leads ? m1 : m2), KV_OK);
    kv_master_stop(m2);
    kv_master_stop(m1);
}

static int mount_node(struct kv_master *m, const char *id, uint64_t last_epoch)
{
    struct kv_rpc_client *c;
    assert_int_equal(kv_rpc_client_create(kv_master_rpc_addr(m), 1000, &c), KV_OK);
    Kvstash__MountReq mr = KVSTASH__MOUNT_REQ__INIT;
    mr.node_id = (char *)id;
    mr.segment = (char *)id;
    mr.size = 1 << 20;
    mr.rpc_addr = "127.0.0.1:1";
    mr.last_epoch = last_epoch;
    int rc = kv_rpc_call_pb(c, KV_RPC_MOUNT, &mr.base, &kvstash__mount_resp__descriptor, NULL, 2000,
                            NULL, 0);
    kv_rpc_client_destroy(c);
    return rc;
}

/* PUT_START of one 4 KiB object; the node of its replica into node (64 bytes). */
static int put_start(struct kv_master *m, const char *key, char *node)
{
    struct kv_rpc_client *c;
    assert_int_equal(kv_rpc_client_create(kv_master_rpc_addr(m), 1000, &c), KV_OK);
    Kvstash__PutItem it = KVSTASH__PUT_ITEM__INIT;
    it.key = (char *)key;
    it.size = 4096;
    it.replicas = 1;
    Kvstash__PutItem *pit = &it;
    Kvstash__PutStartReq rq = KVSTASH__PUT_START_REQ__INIT;
    rq.n_items = 1;
    rq.items = &pit;
    Kvstash__PutStartResp *rs = NULL;
    int rc = kv_rpc_call_pb(c, KV_RPC_PUT_START, &rq.base, &kvstash__put_start_resp__descriptor,
                            (ProtobufCMessage **)&rs, 2000, NULL, 0);
    kv_rpc_client_destroy(c);
    if (rc < 0)
        return rc;
    assert_int_equal(rs->n_slots, 1);
    rc = rs->slots[0]->status;
    if (rc == KV_OK) {
        assert_int_equal(rs->slots[0]->n_replicas, 1);
        snprintf(node, 64, "%s", rs->slots[0]->replicas[0]->node_id);
    }
    kv_rpc_pb_free(&rs->base);
    return rc;
}

/* A node that served an older epoch is fenced for ttl + put timeout; a fresh one is not. */
static void test_fence_new_leader(void **state)
{
    (void)state;
    new_url();
    struct kv_master *m = start_master("fence", 30000); /* fence: 2 s + 30 s */
    assert_int_equal(kv_master_wait_leader(m, 5000), KV_OK);
    char node[64] = "";
    assert_int_equal(mount_node(m, "old", 7), KV_OK);
    /* the only node served epoch 7: a retryable refusal, not "no space" */
    assert_int_equal(put_start(m, "k1", node), KV_EAGAIN);
    assert_int_equal(mount_node(m, "fresh", 0), KV_OK);
    for (int i = 0; i < 20; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(put_start(m, key, node), KV_OK);
        assert_string_equal(node, "fresh"); /* never on the fenced node */
    }
    kv_master_stop(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fence_new_leader),
        cmocka_unit_test(test_stalled_keepalives_step_down),
    };
    if (getenv("KV_TEST_DEBUG"))
        kv_log_set_level(KV_LOG_DEBUG);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
