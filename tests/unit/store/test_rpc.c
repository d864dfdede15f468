/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_rpc.c - the store RPC layer: header codec, a real server on 127.0.0.1 (port 0) with
 * typed and raw calls, malformed frames from a raw socket (bad magic, oversize, truncated,
 * garbage payload), timeouts, refused connections and the not-leader hint; the event-loop server:
 * 1,000 concurrent connections on a fixed number of threads, a blocked worker not delaying a
 * fast_handler answer, no big reservation for a header that announces 64 MiB (a request to the
 * server, or a response to the client), max_conns, stop while handlers run, and the shared
 * token: refusals ("authentication required", "bad token") answered and logged; both ends
 * polling before they sleep (poll_spin_us).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "kv_conns.h"
#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/net.h"
#include "common/util.h"
#include "kvstash/kvstash.h"
#include "store/rpc.h"

#define M_ECHO 100
#define M_SLOW 101
#define M_FAIL 102
#define M_BLOCK 103 /* blocks until `release` is set (at most 10 s) */
#define M_SLEEP 104 /* counts entered/exited around a 300 ms sleep */
#define M_JUNK 105  /* fast_handler writes junk then says KV_RPC_SLOW; the handler echoes */

static atomic_int release;
static atomic_int blocked; /* M_BLOCK handlers running */
static atomic_int entered, exited;

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
    case M_BLOCK:
        atomic_fetch_add(&blocked, 1);
        for (int i = 0; i < 1000 && !atomic_load(&release); i++)
            kv_sleep_ms(10);
        atomic_fetch_sub(&blocked, 1);
        return KV_OK;
    case M_SLEEP:
        atomic_fetch_add(&entered, 1);
        kv_sleep_ms(300);
        atomic_fetch_add(&exited, 1);
        return KV_OK;
    case M_JUNK:
        return kv_buf_append(resp, req, len);
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
            /* the arena's first chunk (KV_ENOMEM); protobuf-c reports a later failure as a
             * failed unpack */
            assert_true(rc == KV_ENOMEM || rc == KV_EPROTO);
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

/* An unpacked message in its arena (rpc.c): many pieces over several chunks, a piece too big
 * for a chunk (a block of its own) and one of a mapping's size, each intact; every allocation
 * failure on the way is KV_ENOMEM or KV_EPROTO and leaks nothing (ASan's leak check). */
static void test_pb_arena(void **state)
{
    (void)state;
    enum { N = 6000 };
    Kvstash__KeyList kl = KVSTASH__KEY_LIST__INIT;
    char **keys = calloc(N, sizeof(*keys));
    assert_non_null(keys);
    for (size_t i = 0; i < N; i++) {
        size_t len = i == 100 ? 40000 : i == 4000 ? 300000 : 1 + i % 37;
        keys[i] = malloc(len + 1);
        assert_non_null(keys[i]);
        for (size_t j = 0; j < len; j++)
            keys[i][j] = (char)('a' + (i + j) % 26);
        keys[i][len] = '\0';
    }
    kl.n_keys = N;
    kl.keys = keys;
    struct kv_buf b;
    kv_buf_init(&b);
    assert_int_equal(kv_rpc_pb_pack(&kl.base, &b), KV_OK);
    ProtobufCMessage *m = NULL;
    assert_int_equal(kv_rpc_pb_unpack(&kvstash__key_list__descriptor, (uint8_t *)b.data, b.len, &m),
                     KV_OK);
    Kvstash__KeyList *in = (Kvstash__KeyList *)m;
    assert_int_equal(in->n_keys, N);
    for (size_t i = 0; i < N; i++) {
        assert_string_equal(in->keys[i], keys[i]);
        assert_int_equal((uintptr_t)in->keys[i] % 16, 0);
    }
    kv_rpc_pb_free(m);
    size_t fails = 0;
    for (long n = 1; n < 100; n++) {
        m = NULL;
        kv_alloc_fail_at(n);
        int rc = kv_rpc_pb_unpack(&kvstash__key_list__descriptor, (uint8_t *)b.data, b.len, &m);
        kv_alloc_fail_at(0);
        if (rc == KV_OK) {
            assert_int_equal(((Kvstash__KeyList *)m)->n_keys, N);
            kv_rpc_pb_free(m);
            break;
        }
        assert_true(rc == KV_ENOMEM || rc == KV_EPROTO);
        fails++;
    }
    assert_true(fails >= 3); /* the first chunk, later chunks and the block of its own failed */
    /* an empty payload is a message with every field unset */
    assert_int_equal(kv_rpc_pb_unpack(&kvstash__key_list__descriptor, NULL, 0, &m), KV_OK);
    assert_int_equal(((Kvstash__KeyList *)m)->n_keys, 0);
    kv_rpc_pb_free(m);
    kv_rpc_pb_free(NULL);
    for (size_t i = 0; i < N; i++)
        free(keys[i]);
    free(keys);
    kv_buf_fini(&b);
}

/* ---- the event-loop server ------------------------------------------------------------------ */

static int connect_port(uint16_t port)
{
    int fd;
    assert_int_equal(kv_net_connect_tcp("127.0.0.1", port, 3000, &fd), KV_OK);
    return fd;
}

static void send_req(int fd, uint16_t method, uint64_t id, const void *p, uint32_t len)
{
    uint8_t b[KV_RPC_HDR_LEN + 64];
    assert_true(len <= 64);
    struct kv_rpc_hdr h = {KV_RPC_MAGIC, method, 0, len, 0, id};
    kv_rpc_hdr_encode(&h, b);
    if (len)
        memcpy(b + KV_RPC_HDR_LEN, p, len);
    assert_int_equal(kv_net_write_full(fd, b, KV_RPC_HDR_LEN + len, -1), KV_OK);
}

/* Reads one response; its payload (at most cap bytes) into p. Returns its status. */
static int recv_resp(int fd, uint64_t id, void *p, size_t cap, size_t *len)
{
    uint8_t hb[KV_RPC_HDR_LEN];
    assert_int_equal(kv_net_read_full(fd, hb, sizeof(hb), kv_now_ms() + 10000), KV_OK);
    struct kv_rpc_hdr h;
    assert_int_equal(kv_rpc_hdr_decode(hb, sizeof(hb), &h), KV_OK);
    assert_true(h.flags & KV_RPC_F_RESPONSE);
    assert_true(h.id == id);
    assert_true(h.len <= cap);
    if (h.len)
        assert_int_equal(kv_net_read_full(fd, p, h.len, kv_now_ms() + 10000), KV_OK);
    *len = h.len;
    return h.status;
}

#define NCONNS 1000

/* 1,000 connections open at once, a request in flight on each, served by io_threads + workers
 * threads: the thread count does not grow with connections. */
static void test_many_connections(void **state)
{
    (void)state;
    kv_test_raise_nofile(2 * NCONNS + 200);
    int before = kv_test_thread_count();
    struct kv_rpc_server *srv;
    struct kv_rpc_server_opts o = {
        .addr = "127.0.0.1:0", .handler = handler, .io_threads = 2, .workers = 4};
    assert_int_equal(kv_rpc_server_start(&o, &srv), KV_OK);
    uint16_t port = kv_rpc_server_port(srv);
    int *fds = kv_calloc(NCONNS, sizeof(int));
    for (int i = 0; i < NCONNS; i++)
        fds[i] = connect_port(port);
    /* every request is sent before any response is read: 1,000 calls in flight */
    for (int i = 0; i < NCONNS; i++) {
        char msg[16];
        int n = snprintf(msg, sizeof(msg), "conn %d", i);
        send_req(fds[i], M_ECHO, (uint64_t)i + 1, msg, (uint32_t)n);
    }
    for (int i = 0; i < NCONNS; i++) {
        char msg[16], got[16];
        int n = snprintf(msg, sizeof(msg), "conn %d", i);
        size_t len;
        assert_int_equal(recv_resp(fds[i], (uint64_t)i + 1, got, sizeof(got), &len), KV_OK);
        assert_int_equal(len, n);
        assert_memory_equal(got, msg, len);
    }
    int during = kv_test_thread_count();
    print_message("threads: %d before the server, %d with %d connections open\n", before, during,
                  NCONNS);
    assert_true(during - before <= o.io_threads + o.workers);
    /* and each connection still works */
    for (int i = 0; i < NCONNS; i++)
        send_req(fds[i], M_ECHO, 7, "x", 1);
    for (int i = 0; i < NCONNS; i++) {
        char got[4];
        size_t len;
        assert_int_equal(recv_resp(fds[i], 7, got, sizeof(got), &len), KV_OK);
        assert_int_equal(len, 1);
    }
    for (int i = 0; i < NCONNS; i++)
        close(fds[i]);
    kv_free(fds);
    kv_rpc_server_stop(srv);
}

static int fast_handler(void *ud, uint16_t method, const uint8_t *req, size_t len,
                        struct kv_buf *resp)
{
    (void)ud;
    switch (method) {
    case M_ECHO:
        return kv_buf_append(resp, req, len);
    case M_JUNK:
        kv_buf_appends(resp, "junk");
        return KV_RPC_SLOW;
    default:
        return KV_RPC_SLOW;
    }
}

static void wait_blocked(int n)
{
    for (int i = 0; i < 500 && atomic_load(&blocked) < n; i++)
        kv_sleep_ms(10);
    assert_int_equal(atomic_load(&blocked), n);
}

/* With one I/O thread, a handler blocked on a worker delays neither fast_handler answers nor a
 * slow request on the other worker; KV_RPC_SLOW discards what fast_handler appended. */
static void test_fast_handler(void **state)
{
    (void)state;
    atomic_store(&release, 0);
    struct kv_rpc_server *srv;
    struct kv_rpc_server_opts o = {.addr = "127.0.0.1:0",
                                   .handler = handler,
                                   .fast_handler = fast_handler,
                                   .io_threads = 1,
                                   .workers = 2};
    assert_int_equal(kv_rpc_server_start(&o, &srv), KV_OK);
    uint16_t port = kv_rpc_server_port(srv);
    int a = connect_port(port);
    send_req(a, M_BLOCK, 1, NULL, 0);
    wait_blocked(1);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
    struct kv_rpc_client *c;
    assert_int_equal(kv_rpc_client_create(addr, 1000, &c), KV_OK);
    struct kv_buf r;
    kv_buf_init(&r);
    int st;
    for (int i = 0; i < 20; i++) {
        assert_int_equal(kv_rpc_call(c, M_ECHO, "fast", 4, 5000, &st, &r), KV_OK);
        assert_int_equal(st, KV_OK);
        assert_int_equal(r.len, 4);
    }
    /* the other worker still serves slow requests */
    assert_int_equal(kv_rpc_call(c, M_JUNK, "slow", 4, 5000, &st, &r), KV_OK);
    assert_int_equal(st, KV_OK);
    assert_int_equal(r.len, 4);
    assert_memory_equal(r.data, "slow", 4);
    assert_int_equal(kv_rpc_call(c, M_FAIL, NULL, 0, 5000, &st, &r), KV_OK);
    assert_int_equal(st, KV_ENOSPC);
    /* all of it while the first handler was still blocked */
    assert_int_equal(atomic_load(&blocked), 1);
    atomic_store(&release, 1);
    size_t len;
    char got[4];
    assert_int_equal(recv_resp(a, 1, got, sizeof(got), &len), KV_OK);
    close(a);
    kv_buf_fini(&r);
    kv_rpc_client_destroy(c);
    kv_rpc_server_stop(srv);
}

/* A header announcing 64 MiB followed by a few bytes costs a small buffer, not 64 MiB; the
 * connection is closed when the frame misses io_timeout_ms. */
static void test_big_header_no_payload(void **state)
{
    struct fx *f = *state;
    kv_alloc_largest_reset();
    int fd = raw_connect(f);
    uint8_t hb[KV_RPC_HDR_LEN];
    struct kv_rpc_hdr h = {KV_RPC_MAGIC, M_ECHO, 0, KV_RPC_MAX_PAYLOAD, 0, 1};
    kv_rpc_hdr_encode(&h, hb);
    assert_int_equal(kv_net_write_full(fd, hb, sizeof(hb), -1), KV_OK);
    char some[1000];
    memset(some, 'x', sizeof(some));
    assert_int_equal(kv_net_write_full(fd, some, sizeof(some), -1), KV_OK);
    /* the server has read the header once it closes the late frame (io_timeout 500 ms) */
    assert_int_equal(kv_net_read_full(fd, hb, 1, kv_now_ms() + 5000), KV_ECONNRESET);
    close(fd);
    print_message("largest allocation: %zu bytes\n", kv_alloc_largest());
    assert_true(kv_alloc_largest() < (1u << 20));
    /* a real large frame still works (the buffer grows as bytes arrive) */
    struct kv_buf r;
    kv_buf_init(&r);
    size_t big = 3u << 20;
    char *p = kv_malloc(big);
    memset(p, 'y', big);
    int st;
    assert_int_equal(kv_rpc_call(f->cli, M_ECHO, p, big, 5000, &st, &r), KV_OK);
    assert_int_equal(r.len, big);
    assert_memory_equal(r.data, p, big);
    kv_free(p);
    kv_buf_fini(&r);
}

/* Connections past max_conns are closed at once; the others keep working. */
static void test_max_conns(void **state)
{
    (void)state;
    struct kv_rpc_server *srv;
    struct kv_rpc_server_opts o = {.addr = "127.0.0.1:0", .handler = handler, .max_conns = 2};
    assert_int_equal(kv_rpc_server_start(&o, &srv), KV_OK);
    uint16_t port = kv_rpc_server_port(srv);
    int a = connect_port(port), b = connect_port(port);
    size_t len;
    char got[4];
    send_req(a, M_ECHO, 1, "a", 1); /* both accepted before the third connects */
    assert_int_equal(recv_resp(a, 1, got, sizeof(got), &len), KV_OK);
    send_req(b, M_ECHO, 2, "b", 1);
    assert_int_equal(recv_resp(b, 2, got, sizeof(got), &len), KV_OK);
    int c = connect_port(port);
    uint8_t x;
    assert_int_equal(kv_net_read_full(c, &x, 1, kv_now_ms() + 5000), KV_ECONNRESET);
    close(c);
    send_req(a, M_ECHO, 3, "a", 1);
    assert_int_equal(recv_resp(a, 3, got, sizeof(got), &len), KV_OK);
    close(a);
    close(b);
    kv_rpc_server_stop(srv);
}

/* Stop while a handler runs and others are queued: stop waits for the running one, drops the
 * queued ones, closes the connections, and no handler runs afterwards. */
static void test_stop_while_running(void **state)
{
    (void)state;
    atomic_store(&entered, 0);
    atomic_store(&exited, 0);
    struct kv_rpc_server *srv;
    struct kv_rpc_server_opts o = {
        .addr = "127.0.0.1:0", .handler = handler, .io_threads = 1, .workers = 1};
    assert_int_equal(kv_rpc_server_start(&o, &srv), KV_OK);
    uint16_t port = kv_rpc_server_port(srv);
    int fds[4];
    for (int i = 0; i < 4; i++) {
        fds[i] = connect_port(port);
        send_req(fds[i], M_SLEEP, (uint64_t)i + 1, NULL, 0);
    }
    for (int i = 0; i < 500 && atomic_load(&entered) < 1; i++)
        kv_sleep_ms(5);
    assert_true(atomic_load(&entered) >= 1);
    kv_rpc_server_stop(srv);
    int n = atomic_load(&entered);
    assert_int_equal(atomic_load(&exited), n); /* no handler left running */
    assert_true(n < 4);                        /* the queued ones were dropped */
    kv_sleep_ms(400);
    assert_int_equal(atomic_load(&entered), n); /* and none started later */
    for (int i = 0; i < 4; i++) {
        /* a response may have made it out; then the connection is closed */
        uint8_t b[KV_RPC_HDR_LEN];
        int rc;
        while ((rc = kv_net_read_full(fds[i], b, 1, kv_now_ms() + 3000)) == KV_OK)
            ;
        assert_int_equal(rc, KV_ECONNRESET);
        close(fds[i]);
    }
}

/* ---- a response header that lies (client side) ---- */

static int g_liar_fd = -1;

/* Accepts one connection, reads one request frame, answers with a header announcing
 * KV_RPC_MAX_PAYLOAD bytes followed by 1000 bytes, then closes. */
static void *liar_main(void *arg)
{
    (void)arg;
    int fd = accept(g_liar_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    uint8_t hb[KV_RPC_HDR_LEN];
    struct kv_rpc_hdr h;
    if (kv_net_read_full(fd, hb, sizeof(hb), kv_now_ms() + 5000) == KV_OK &&
        kv_rpc_hdr_decode(hb, sizeof(hb), &h) == KV_OK) {
        char junk[4096];
        for (uint32_t left = h.len; left;) {
            uint32_t n = left < sizeof(junk) ? left : (uint32_t)sizeof(junk);
            if (kv_net_read_full(fd, junk, n, kv_now_ms() + 5000) < 0)
                break;
            left -= n;
        }
        struct kv_rpc_hdr r = {KV_RPC_MAGIC,       h.method, KV_RPC_F_RESPONSE,
                               KV_RPC_MAX_PAYLOAD, 0,        h.id};
        kv_rpc_hdr_encode(&r, hb);
        memset(junk, 'z', 1000);
        kv_net_write_full(fd, hb, sizeof(hb), kv_now_ms() + 5000);
        kv_net_write_full(fd, junk, 1000, kv_now_ms() + 5000);
    }
    close(fd);
    return NULL;
}

/* A server whose response header announces 64 MiB and then hangs up costs the client a small
 * buffer, not 64 MiB, and the call fails with a transport error. */
static void test_client_big_response_header(void **state)
{
    (void)state;
    uint16_t port;
    assert_int_equal(kv_net_listen_tcp("127.0.0.1", 0, 4, &g_liar_fd, &port), KV_OK);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, liar_main, NULL), 0);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)port);
    struct kv_rpc_client *c;
    assert_int_equal(kv_rpc_client_create(addr, 1000, &c), KV_OK);
    assert_int_equal(kv_rpc_client_set_token(c, NULL), KV_OK);
    struct kv_buf r;
    kv_buf_init(&r);
    int st = 0;
    kv_alloc_largest_reset();
    int rc = kv_rpc_call(c, M_ECHO, "hi", 2, 3000, &st, &r);
    print_message("client call: %s; largest allocation: %zu bytes\n", kv_strerror(rc),
                  kv_alloc_largest());
    assert_int_equal(rc, KV_ECONNRESET);
    assert_true(kv_alloc_largest() < (1u << 20));
    assert_int_equal(r.len, 0);
    pthread_join(th, NULL);
    close(g_liar_fd);
    kv_buf_fini(&r);
    kv_rpc_client_destroy(c);
}

/* ---- the shared token ---- */

static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER; /* guards g_log */
static char g_log[8192];

static void log_sink(void *ud, enum kv_log_level level, const char *component, const char *msg)
{
    (void)ud;
    (void)level;
    pthread_mutex_lock(&g_log_lock);
    size_t n = strlen(g_log);
    snprintf(g_log + n, sizeof(g_log) - n, "[%s] %s\n", component, msg);
    pthread_mutex_unlock(&g_log_lock);
}

static bool logged(const char *what)
{
    pthread_mutex_lock(&g_log_lock);
    bool yes = strstr(g_log, what) != NULL;
    pthread_mutex_unlock(&g_log_lock);
    return yes;
}

/* The server logs asynchronously to the call's return: wait for the line. */
static bool wait_logged(const char *what)
{
    for (int i = 0; i < 200; i++) {
        if (logged(what))
            return true;
        kv_sleep_ms(10);
    }
    return false;
}

/* With a token, a server answers only connections that presented it: a client without a token
 * gets KV_EPERM "authentication required", one with a wrong token KV_EPERM ("bad token"); both
 * are logged with the peer's address; the right token works over many calls (pooled
 * connections authenticate once). A server without a token accepts AUTH and plain calls. */
static void test_token(void **state)
{
    (void)state;
    kv_log_set_sink(log_sink, NULL);
    struct kv_rpc_server *srv;
    struct kv_rpc_server_opts o = {
        .addr = "127.0.0.1:0", .handler = handler, .io_timeout_ms = 2000, .token = "s3cret-token"};
    assert_int_equal(kv_rpc_server_start(&o, &srv), KV_OK);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", kv_rpc_server_port(srv));
    struct kv_buf r;
    kv_buf_init(&r);
    int st;

    /* no token: refused, with the reason */
    struct kv_rpc_client *none;
    assert_int_equal(kv_rpc_client_create(addr, 1000, &none), KV_OK);
    assert_int_equal(kv_rpc_client_set_token(none, NULL), KV_OK);
    st = 0;
    assert_int_equal(kv_rpc_call(none, M_ECHO, "x", 1, 3000, &st, &r), KV_OK);
    assert_int_equal(st, KV_EPERM);
    assert_non_null(r.data);
    assert_string_equal(r.data, "authentication required");
    assert_true(wait_logged("refused RPC connection from 127.0.0.1:"));
    assert_true(wait_logged("authentication required (first request UNKNOWN, no AUTH)"));
    /* typed calls see KV_EPERM too */
    assert_int_equal(kv_rpc_call_pb(none, KV_RPC_HELLO, NULL, NULL, NULL, 3000, NULL, 0), KV_EPERM);
    kv_rpc_client_destroy(none);

    /* wrong token (and a longer one, and a prefix): refused at AUTH */
    const char *bad[] = {"s3cret-tokem", "s3cret-token-and-more", "s3cret"};
    for (size_t i = 0; i < KV_ARRAY_SIZE(bad); i++) {
        struct kv_rpc_client *wrong;
        assert_int_equal(kv_rpc_client_create(addr, 1000, &wrong), KV_OK);
        assert_int_equal(kv_rpc_client_set_token(wrong, bad[i]), KV_OK);
        assert_int_equal(kv_rpc_call(wrong, M_ECHO, "x", 1, 3000, &st, &r), KV_EPERM);
        kv_rpc_client_destroy(wrong);
    }
    assert_true(wait_logged("bad token"));

    /* the right token: many calls, answers intact */
    struct kv_rpc_client *good;
    assert_int_equal(kv_rpc_client_create(addr, 1000, &good), KV_OK);
    assert_int_equal(kv_rpc_client_set_token(good, "s3cret-token"), KV_OK);
    for (int i = 0; i < 20; i++) {
        char msg[32];
        int n = snprintf(msg, sizeof(msg), "call %d", i);
        assert_int_equal(kv_rpc_call(good, M_ECHO, msg, (size_t)n, 3000, &st, &r), KV_OK);
        assert_int_equal(st, KV_OK);
        assert_int_equal(r.len, (size_t)n);
        assert_memory_equal(r.data, msg, (size_t)n);
    }
    kv_rpc_client_destroy(good);

    /* a raw connection without AUTH: refused, then closed */
    int fd;
    assert_int_equal(kv_net_connect_tcp("127.0.0.1", kv_rpc_server_port(srv), 1000, &fd), KV_OK);
    uint8_t hb[KV_RPC_HDR_LEN];
    struct kv_rpc_hdr h = {KV_RPC_MAGIC, M_ECHO, 0, 0, 0, 9};
    kv_rpc_hdr_encode(&h, hb);
    assert_int_equal(kv_net_write_full(fd, hb, sizeof(hb), -1), KV_OK);
    assert_int_equal(kv_net_read_full(fd, hb, sizeof(hb), kv_now_ms() + 3000), KV_OK);
    struct kv_rpc_hdr rh;
    assert_int_equal(kv_rpc_hdr_decode(hb, sizeof(hb), &rh), KV_OK);
    assert_int_equal(rh.status, KV_EPERM);
    assert_int_equal(rh.id, 9);
    char why[64] = "";
    assert_true(rh.len < sizeof(why));
    assert_int_equal(kv_net_read_full(fd, why, rh.len, kv_now_ms() + 3000), KV_OK);
    assert_string_equal(why, "authentication required");
    assert_int_equal(kv_net_read_full(fd, hb, 1, kv_now_ms() + 3000), KV_ECONNRESET);
    close(fd);
    kv_rpc_server_stop(srv);

    /* a server without a token accepts a client that presents one */
    o.token = "";
    assert_int_equal(kv_rpc_server_start(&o, &srv), KV_OK);
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", kv_rpc_server_port(srv));
    assert_int_equal(kv_rpc_client_create(addr, 1000, &good), KV_OK);
    assert_int_equal(kv_rpc_client_set_token(good, "anything"), KV_OK);
    assert_int_equal(kv_rpc_call(good, M_ECHO, "ok", 2, 3000, &st, &r), KV_OK);
    assert_int_equal(st, KV_OK);
    kv_rpc_client_destroy(good);
    kv_rpc_server_stop(srv);
    kv_buf_fini(&r);
    kv_log_set_sink(NULL, NULL);
}

/* Both ends polling before they sleep (poll_spin_us): answers of every size around the
 * client's first read (4 KiB of payload) arrive whole and right, slow requests still go to the
 * workers, the server counts its polls, and stop returns while its loop polls. */
static void test_poll_spin(void **state)
{
    (void)state;
    struct kv_rpc_server *srv;
    struct kv_rpc_server_opts o = {.addr = "127.0.0.1:0",
                                   .handler = handler,
                                   .fast_handler = fast_handler,
                                   .io_threads = 1,
                                   .workers = 2,
                                   .poll_spin_us = 200};
    assert_int_equal(kv_rpc_server_start(&o, &srv), KV_OK);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", kv_rpc_server_port(srv));
    struct kv_rpc_client *c;
    assert_int_equal(kv_rpc_client_create(addr, 1000, &c), KV_OK);
    kv_rpc_client_set_poll_spin(c, 200);
    assert_int_equal(kv_rpc_client_poll_spin(c), 200);
    size_t sizes[] = {0, 1, 4095, 4096, 4097, 100000};
    char *big = kv_malloc(100000);
    for (size_t i = 0; i < 100000; i++)
        big[i] = (char)(i * 7 + 3);
    struct kv_buf r;
    kv_buf_init(&r);
    int st;
    for (int round = 0; round < 20; round++)
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
            uint16_t m = k % 2 ? M_ECHO : M_JUNK; /* fast and slow paths */
            assert_int_equal(kv_rpc_call(c, m, big, sizes[k], 5000, &st, &r), KV_OK);
            assert_int_equal(st, KV_OK);
            assert_int_equal(r.len, sizes[k]);
            if (sizes[k])
                assert_memory_equal(r.data, big, sizes[k]);
        }
    uint64_t spins, hits;
    kv_rpc_server_poll_stats(srv, &spins, &hits);
    assert_true(spins > 0); /* the loop fell idle between calls at least once */
    assert_true(hits <= spins);
    /* a server that never polls counts nothing */
    struct kv_rpc_server *srv0;
    o.poll_spin_us = 0;
    assert_int_equal(kv_rpc_server_start(&o, &srv0), KV_OK);
    kv_rpc_server_poll_stats(srv0, &spins, &hits);
    assert_true(spins == 0 && hits == 0);
    kv_rpc_server_stop(srv0);
    kv_buf_fini(&r);
    kv_free(big);
    kv_rpc_client_destroy(c);
    kv_rpc_server_stop(srv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hdr_codec),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_pb_arena),
        cmocka_unit_test_setup_teardown(test_echo_and_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_typed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_and_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_header_no_payload, setup, teardown),
        cmocka_unit_test(test_many_connections),
        cmocka_unit_test(test_fast_handler),
        cmocka_unit_test(test_max_conns),
        cmocka_unit_test(test_stop_while_running),
        cmocka_unit_test(test_client_big_response_header),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_poll_spin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
