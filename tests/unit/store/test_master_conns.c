/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_master_conns.c - a real master (embedded metadata, one node) holds 1,000 client
 * connections open at the same time, each doing a GET, on a fixed set of RPC threads: the
 * master's thread count does not grow with its connections.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "kv_conns.h"
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "common/util.h"
#include "kvstash/kvstash.h"
#include "store/rpc.h"
#include "store/store_int.h"

#define NCLIENTS 1000

/* PUT_START + PUT_END of a zero-filled object (node segments start zeroed). */
static void put_zeros(struct kv_rpc_client *c, const char *key, uint64_t size)
{
    Kvstash__PutItem it = KVSTASH__PUT_ITEM__INIT;
    it.key = (char *)key;
    it.size = size;
    it.replicas = 1;
    Kvstash__PutItem *pit = &it;
    Kvstash__PutStartReq rq = KVSTASH__PUT_START_REQ__INIT;
    rq.n_items = 1;
    rq.items = &pit;
    Kvstash__PutStartResp *rs = NULL;
    assert_int_equal(kv_rpc_call_pb(c, KV_RPC_PUT_START, &rq.base,
                                    &kvstash__put_start_resp__descriptor, (ProtobufCMessage **)&rs,
                                    5000, NULL, 0),
                     KV_OK);
    assert_int_equal(rs->n_slots, 1);
    assert_int_equal(rs->slots[0]->status, KV_OK);
    kv_rpc_pb_free(&rs->base);
    void *z = kv_calloc(1, size);
    Kvstash__PutEndItem e = KVSTASH__PUT_END_ITEM__INIT;
    e.key = (char *)key;
    e.checksum = kv_hash64(z, size);
    e.ok = true;
    kv_free(z);
    Kvstash__PutEndItem *pe = &e;
    Kvstash__PutEndReq er = KVSTASH__PUT_END_REQ__INIT;
    er.n_items = 1;
    er.items = &pe;
    Kvstash__StatusList *sl = NULL;
    assert_int_equal(kv_rpc_call_pb(c, KV_RPC_PUT_END, &er.base, &kvstash__status_list__descriptor,
                                    (ProtobufCMessage **)&sl, 5000, NULL, 0),
                     KV_OK);
    assert_int_equal(sl->status[0], KV_OK);
    kv_rpc_pb_free(&sl->base);
}

static int get_key(struct kv_rpc_client *c, const char *key)
{
    Kvstash__KeyList kl = KVSTASH__KEY_LIST__INIT;
    char *k = (char *)key;
    kl.n_keys = 1;
    kl.keys = &k;
    Kvstash__GetResp *r = NULL;
    int rc = kv_rpc_call_pb(c, KV_RPC_GET, &kl.base, &kvstash__get_resp__descriptor,
                            (ProtobufCMessage **)&r, 10000, NULL, 0);
    if (rc < 0)
        return rc;
    assert_int_equal(r->n_items, 1);
    rc = r->items[0]->status;
    if (rc == KV_OK)
        assert_true(r->items[0]->n_replicas > 0);
    kv_rpc_pb_free(&r->base);
    return rc;
}

static void test_thousand_clients(void **state)
{
    (void)state;
    kv_test_raise_nofile(2 * NCLIENTS + 300);
    char url[128];
    snprintf(url, sizeof(url), "embedded://test-master-conns-%d", (int)getpid());
    struct kv_master_opts mo = {
        .metadata = url, .rpc_addr = "127.0.0.1:0", .admin_addr = "127.0.0.1:0"};
    struct kv_master *m;
    assert_int_equal(kv_master_start(&mo, &m), KV_OK);
    assert_int_equal(kv_master_wait_leader(m, 5000), KV_OK);
    struct kv_node_opts no = {
        .metadata = url, .node_id = "n1", .capacity = 8u << 20, .heartbeat_ms = 200};
    struct kv_node *n;
    assert_int_equal(kv_node_start(&no, &n), KV_OK);
    assert_int_equal(kv_node_wait_mounted(n, 5000), KV_OK);
    struct kv_rpc_client **cl = kv_calloc(NCLIENTS, sizeof(*cl));
    assert_int_equal(kv_rpc_client_create(kv_master_rpc_addr(m), 3000, &cl[0]), KV_OK);
    put_zeros(cl[0], "shared", 4096);
    assert_int_equal(get_key(cl[0], "shared"), KV_OK);
    int before = kv_test_thread_count();
    /* each client keeps its connection pooled: all 1,000 stay open until destroyed */
    for (int i = 1; i < NCLIENTS; i++) {
        assert_int_equal(kv_rpc_client_create(kv_master_rpc_addr(m), 3000, &cl[i]), KV_OK);
        assert_int_equal(get_key(cl[i], "shared"), KV_OK);
    }
    /* again on the connections now all open at once */
    for (int i = 0; i < NCLIENTS; i++)
        assert_int_equal(get_key(cl[i], i % 2 ? "shared" : "absent"), i % 2 ? KV_OK : KV_ENOENT);
    int during = kv_test_thread_count();
    print_message("threads: %d with 1 client connection, %d with %d\n", before, during, NCLIENTS);
    /* a thread per connection would add ~1,000; leave room for the master's own background */
    assert_true(during - before <= 8);
    for (int i = 0; i < NCLIENTS; i++)
        kv_rpc_client_destroy(cl[i]);
    kv_free(cl);
    kv_node_stop(n);
    kv_master_stop(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_thousand_clients),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
