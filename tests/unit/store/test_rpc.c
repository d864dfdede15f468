/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_rpc.c - the store RPC layer: header codec, a real server on 127.0.0.1 (port 0) with
 * typed and raw calls, malformed frames from a raw socket (bad magic, oversize, truncated,
 * garbage payload), timeouts, refused connections and the not-leader hint.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/net.h"
#include "common/util.h"
#include "store/rpc.h"

#define M_ECHO 100
#define M_SLOW 101
#define M_FAIL 102

static int handler(void *ud, uint16_t method, const uint8_t *req, size_t len, struct kv_buf *resp)
{
    (void)ud;
    switch (method) {
    case M_ECHO:
        return kv_buf_append(resp, req, len);
    case M_SLOW:
        kv_sleep_ms(600);
        return KV_OK;
    case M_FAIL:
        kv_buf_appends(resp, "dropped");
        return KV_ENOSPC;
    case KV_RPC_HELLO: {
        Kvstash__HelloReq *r = NULL;
        int rc =
            kv_rpc_pb_unpack(&kvstash__hello_req__descriptor, req, len, (ProtobufCMessage **)&r);
        if (rc < 0)
            return rc;
        Kvstash__HelloResp o = KVSTASH__HELLO_RESP__INIT;
        o.cluster = r->client_id;
        o.epoch = 7;
        struct kv_buf b;
        kv_buf_init(&b);
        rc = kv_rpc_pb_pack(&o.base, &b);
        if (rc == KV_OK)
            rc = kv_buf_append(resp, b.data, b.len);
        kv_buf_fini(&b);
        kv_rpc_pb_free(&r->base);
        return rc;
    }
    case KV_RPC_STAT: {
        Kvstash__NotLeader nl = KVSTASH__NOT_LEADER__INIT;
        nl.leader_addr = "127.0.0.1:4242";
        struct kv_buf b;
        kv_buf_init(&b);
        kv_rpc_pb_pack(&nl.base, &b);
        kv_buf_append(resp, b.data, b.len);
        kv_buf_fini(&b);
        return KV_EAGAIN;
    }
    default:
        return KV_ENOTSUP;
    }
}

struct fx {
    struct kv_rpc_server *srv;
    struct kv_rpc_client *cli;
    char addr[64];
};

static int setup(void **state)
{
    struct fx *f = kv_calloc(1, sizeof(*f));
    struct kv_rpc_server_opts o = {.addr = "127.0.0.1:0", .handler = handler, .io_timeout_ms = 500};
    assert_int_equal(kv_rpc_server_start(&o, &f->srv), KV_OK);
    snprintf(f->addr, sizeof(f->addr), "127.0.0.1:%u", kv_rpc_server_port(f->srv));
    assert_int_equal(kv_rpc_client_create(f->addr, 1000, &f->cli), KV_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    kv_rpc_client_destroy(f->cli);
    kv_rpc_server_stop(f->srv);
    kv_free(f);
    return 0;
}

static void test_hdr_codec(void **state)
{
    (void)state;
    struct kv_rpc_hdr h = {KV_RPC_MAGIC, KV_RPC_GET, KV_RPC_F_RESPONSE,
                           1234,         KV_ENOENT,  0x1122334455667788ull};
    uint8_t b[KV_RPC_HDR_LEN];
    kv_rpc_hdr_encode(&h, b);
    assert_memory_equal(b, "KVR1", 4);
    struct kv_rpc_hdr d;
    assert_int_equal(kv_rpc_hdr_decode(b, sizeof(b), &d), KV_OK);
    assert_int_equal(d.method, KV_RPC_GET);
    assert_int_equal(d.flags, KV_RPC_F_RESPONSE);
    assert_int_equal(d.len, 1234);
    assert_int_equal(d.status, KV_ENOENT);
    assert_true(d.id == 0x1122334455667788ull);
    /* truncated */
    assert_int_equal(kv_rpc_hdr_decode(b, KV_RPC_HDR_LEN - 1, &d), KV_EPROTO);
    /* bad magic */
    b[0] = 'X';
    assert_int_equal(kv_rpc_hdr_decode(b, sizeof(b), &d), KV_EPROTO);
    b[0] = 'K';
    /* oversize */
    h.len = KV_RPC_MAX_PAYLOAD + 1;
    kv_rpc_hdr_encode(&h, b);
    assert_int_equal(kv_rpc_hdr_decode(b, sizeof(b), &d), KV_EPROTO);
    h.len = KV_RPC_MAX_PAYLOAD;
    kv_rpc_hdr_encode(&h, b);
    assert_int_equal(kv_rpc_hdr_decode(b, sizeof(b), &d), KV_OK);
    /* reserved flags */
    h.flags = 0x4;
    kv_rpc_hdr_encode(&h, b);
    assert_int_equal(kv_rpc_hdr_decode(b, sizeof(b), &d), KV_EPROTO);
    assert_string_equal(kv_rpc_method_name(KV_RPC_PUT_START), "PUT_START");
    assert_string_equal(kv_rpc_method_name(999), "UNKNOWN");
}

static void test_echo_and_status(void **state)
{
    struct fx *f = *state;
    struct kv_buf r;
    kv_buf_init(&r);
    int st = 1;
    for (int i = 0; i < 50; i++) {
        char msg[32];
        int n = snprintf(msg, sizeof(msg), "hello %d", i);
        assert_int_equal(kv_rpc_call(f->cli, M_ECHO, msg, (size_t)n, 1000, &st, &r), KV_OK);
        assert_int_equal(st, KV_OK);
        assert_int_equal(r.len, n);
        assert_memory_equal(r.data, msg, (size_t)n);
    }
    /* empty payload */
    assert_int_equal(kv_rpc_call(f->cli, M_ECHO, NULL, 0, 1000, &st, &r), KV_OK);
    assert_int_equal(r.len, 0);
    /* error status: payload dropped */
    assert_int_equal(kv_rpc_call(f->cli, M_FAIL, "x", 1, 1000, &st, &r), KV_OK);
    assert_int_equal(st, KV_ENOSPC);
    assert_int_equal(r.len, 0);
    /* unknown method */
    assert_int_equal(kv_rpc_call(f->cli, 9999, NULL, 0, 1000, &st, &r), KV_OK);
    assert_int_equal(st, KV_ENOTSUP);
    /* a large payload (4 MiB) */
    size_t big = 4u << 20;
    char *p = kv_malloc(big);
    for (size_t i = 0; i < big; i++)
        p[i] = (char)(i * 7);
    assert_int_equal(kv_rpc_call(f->cli, M_ECHO, p, big, 5000, &st, &r), KV_OK);
    assert_int_equal(r.len, big);
    assert_memory_equal(r.data, p, big);
    kv_free(p);
    kv_buf_fini(&r);
}

static void test_typed(void **state)
{
    struct fx *f = *state;
    Kvstash__HelloReq q = KVSTASH__HELLO_REQ__INIT;
    q.client_id = "abc";
    Kvstash__HelloResp *r = NULL;
    assert_int_equal(kv_rpc_call_pb(f->cli, KV_RPC_HELLO, &q.base, &kvstash__hello_resp__descriptor,
                                    (ProtobufCMessage **)&r, 1000, NULL, 0),
                     KV_OK);
    assert_non_null(r);
    assert_string_equal(r->cluster, "abc");
    assert_int_equal(r->epoch, 7);
    kv_rpc_pb_free(&r->base);
    /* garbage payload to a typed handler: KV_EPROTO, connection still fine */
    struct kv_buf b;
    kv_buf_init(&b);
    int st;
    assert_int_equal(kv_rpc_call(f->cli, KV_RPC_HELLO, "\xff\xff\xff\xff", 4, 1000, &st, &b),
                     KV_OK);
    assert_int_equal(st, KV_EPROTO);
    kv_buf_fini(&b);
    /* not leader: hint */
    char hint[64] = "junk";
    assert_int_equal(kv_rpc_call_pb(f->cli, KV_RPC_STAT, NULL, &kvstash__stat_resp__descriptor,
                                    NULL, 1000, hint, sizeof(hint)),
                     KV_EAGAIN);
    assert_string_equal(hint, "127.0.0.1:4242");
}

static int raw_connect(struct fx *f)
{
    int fd;
    assert_int_equal(kv_net_connect_tcp("127.0.0.1", kv_rpc_server_port(f->srv), 1000, &fd), KV_OK);
    return fd;
}

/* After a malformed header the server answers KV_EPROTO (id 0) and closes. */
static void expect_eproto_close(int fd)
{
    uint8_t hb[KV_RPC_HDR_LEN];
    assert_int_equal(kv_net_read_full(fd, hb, sizeof(hb), kv_now_ms() + 2000), KV_OK);
    struct kv_rpc_hdr h;
    assert_int_equal(kv_rpc_hdr_decode(hb, sizeof(hb), &h), KV_OK);
    assert_int_equal(h.status, KV_EPROTO);
    assert_true(h.flags & KV_RPC_F_RESPONSE);
    assert_int_equal(kv_net_read_full(fd, hb, 1, kv_now_ms() + 2000), KV_ECONNRESET);
}

static void test_malformed(void **state)
{
    struct fx *f = *state;
    /* bad magic */
    int fd = raw_connect(f);
    uint8_t hb[KV_RPC_HDR_LEN];
    struct kv_rpc_hdr h = {0x12345678u, M_ECHO, 0, 0, 0, 1};
    kv_rpc_hdr_encode(&h, hb);
    assert_int_equal(kv_net_write_full(fd, hb, sizeof(hb), -1), KV_OK);
    expect_eproto_close(fd);
    close(fd);
    /* oversize */
    fd = raw_connect(f);
    h.magic = KV_RPC_MAGIC;
    h.len = KV_RPC_MAX_PAYLOAD + 1;
    kv_rpc_hdr_encode(&h, hb);
    assert_int_equal(kv_net_write_full(fd, hb, sizeof(hb), -1), KV_OK);
    expect_eproto_close(fd);
    close(fd);
    /* a request with the response flag */
    fd = raw_connect(f);
    h.len = 0;
    h.flags = KV_RPC_F_RESPONSE;
    kv_rpc_hdr_encode(&h, hb);
    assert_int_equal(kv_net_write_full(fd, hb, sizeof(hb), -1), KV_OK);
    expect_eproto_close(fd);
    close(fd);
    /* truncated header, then close */
    fd = raw_connect(f);
    assert_int_equal(kv_net_write_full(fd, "KVR", 3, -1), KV_OK);
    close(fd);
    /* truncated payload, then close */
    fd = raw_connect(f);
    h.flags = 0;
    h.len = 100;
    kv_rpc_hdr_encode(&h, hb);
    assert_int_equal(kv_net_write_full(fd, hb, sizeof(hb), -1), KV_OK);
    assert_int_equal(kv_net_write_full(fd, "abc", 3, -1), KV_OK);
    close(fd);
    /* truncated payload left open: the server times out the frame (io_timeout 500 ms) */
    fd = raw_connect(f);
    assert_int_equal(kv_net_write_full(fd, hb, sizeof(hb), -1), KV_OK);
    assert_int_equal(kv_net_read_full(fd, hb, 1, kv_now_ms() + 3000), KV_ECONNRESET);
    close(fd);
    /* two pipelined valid requests on one raw connection: both answered in order */
    fd = raw_connect(f);
    uint8_t two[2 * (KV_RPC_HDR_LEN + 2)];
    struct kv_rpc_hdr a = {KV_RPC_MAGIC, M_ECHO, 0, 2, 0, 11};
    kv_rpc_hdr_encode(&a, two);
    memcpy(two + KV_RPC_HDR_LEN, "ab", 2);
    a.id = 12;
    kv_rpc_hdr_encode(&a, two + KV_RPC_HDR_LEN + 2);
    memcpy(two + 2 * KV_RPC_HDR_LEN + 2, "cd", 2);
    assert_int_equal(kv_net_write_full(fd, two, sizeof(two), -1), KV_OK);
    for (uint64_t id = 11; id <= 12; id++) {
        uint8_t rb[KV_RPC_HDR_LEN + 2];
        assert_int_equal(kv_net_read_full(fd, rb, sizeof(rb), kv_now_ms() + 2000), KV_OK);
        struct kv_rpc_hdr r;
        assert_int_equal(kv_rpc_hdr_decode(rb, KV_RPC_HDR_LEN, &r), KV_OK);
        assert_true(r.id == id);
        assert_memory_equal(rb + KV_RPC_HDR_LEN, id == 11 ? "ab" : "cd", 2);
    }
    close(fd);
    /* the server is still fine */
    struct kv_buf r;
    kv_buf_init(&r);
    int st;
    assert_int_equal(kv_rpc_call(f->cli, M_ECHO, "ok", 2, 1000, &st, &r), KV_OK);
    assert_int_equal(st, KV_OK);
    kv_buf_fini(&r);
}

static void test_timeout_and_refused(void **state)
{
    struct fx *f = *state;
    int st;
    assert_int_equal(kv_rpc_call(f->cli, M_SLOW, NULL, 0, 100, &st, NULL), KV_ETIMEDOUT);
    /* the timed-out connection was dropped: the next call works */
    assert_int_equal(kv_rpc_call(f->cli, M_ECHO, "a", 1, 2000, &st, NULL), KV_OK);
    /* no server */
    uint16_t port;
    assert_int_equal(kv_net_free_port(&port), KV_OK);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
    struct kv_rpc_client *c;
    assert_int_equal(kv_rpc_client_create(addr, 500, &c), KV_OK);
    assert_int_equal(kv_rpc_call(c, M_ECHO, "a", 1, 500, &st, NULL), KV_ECONNREFUSED);
    kv_rpc_client_destroy(c);
    /* bad addresses */
    assert_int_equal(kv_rpc_client_create("nope", 500, &c), KV_EINVAL);
    assert_int_equal(kv_rpc_client_create("127.0.0.1:0", 500, &c), KV_EINVAL);
}

static void test_server_restart(void **state)
{
    struct fx *f = *state;
    int st;
    assert_int_equal(kv_rpc_call(f->cli, M_ECHO, "a", 1, 1000, &st, NULL), KV_OK);
    uint16_t port = kv_rpc_server_port(f->srv);
    kv_rpc_server_stop(f->srv);
    /* the pooled connection is dead; the call fails cleanly */
    int rc = kv_rpc_call(f->cli, M_ECHO, "a", 1, 1000, &st, NULL);
    assert_true(rc == KV_ECONNREFUSED || rc == KV_ECONNRESET);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
    struct kv_rpc_server_opts o = {.addr = addr, .handler = handler, .io_timeout_ms = 500};
    assert_int_equal(kv_rpc_server_start(&o, &f->srv), KV_OK);
    assert_int_equal(kv_rpc_call(f->cli, M_ECHO, "a", 1, 1000, &st, NULL), KV_OK);
    assert_int_equal(st, KV_OK);
}

/* Allocation failures in the codec and the client: KV_ENOMEM, nothing leaks. */
static void test_alloc_failures(void **state)
{
    (void)state;
    Kvstash__KeyList kl = KVSTASH__KEY_LIST__INIT;
    char *keys[3] = {"a", "bb", "ccc"};
    kl.n_keys = 3;
    kl.keys = keys;
    struct kv_buf b;
    kv_buf_init(&b);
    assert_int_equal(kv_rpc_pb_pack(&kl.base, &b), KV_OK);
    int ok = 0;
    for (long n = 1; n < 50 && !ok; n++) {
        ProtobufCMessage *m = NULL;
        kv_alloc_fail_at(n);
        int rc = kv_rpc_pb_unpack(&kvstash__key_list__descriptor, (uint8_t *)b.data, b.len, &m);
        kv_alloc_fail_at(0);
        if (rc == KV_OK) {
            assert_int_equal(((Kvstash__KeyList *)m)->n_keys, 3);
            kv_rpc_pb_free(m);
            ok = 1;
        } else {
            assert_int_equal(rc, KV_EPROTO); /* protobuf-c reports OOM as a failed unpack */
        }
    }
    assert_true(ok);
    struct kv_rpc_client *c;
    for (long n = 1; n < 10; n++) {
        kv_alloc_fail_at(n);
        int rc = kv_rpc_client_create("127.0.0.1:1", 100, &c);
        kv_alloc_fail_at(0);
        if (rc == KV_OK) {
            kv_rpc_client_destroy(c);
            break;
        }
        assert_int_equal(rc, KV_ENOMEM);
    }
    kv_buf_fini(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hdr_codec),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test_setup_teardown(test_echo_and_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_typed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_and_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_restart, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
