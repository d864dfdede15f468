/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_xfer_conns.c - the TCP server's connection handling, over raw sockets speaking the wire
 * protocol: 1,000 concurrent connections to one engine, each authenticated and served, with
 * the process's thread count unchanged (the server has a fixed set of I/O threads); and
 * connections that stall mid-HELLO, mid-header, mid-payload or while not reading a large
 * answer are closed after the timeout, while an idle connection stays open and an active
 * one keeps being answered promptly. Its own executable: it raises RLIMIT_NOFILE and counts
 * the threads of its process.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kv_conns.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/net.h"
#include "common/util.h"
#include "kvstash/kvstash.h"
#include "xfer/xfer_int.h"

#define NCONNS 1000
#define TOKEN "conns-token"

struct fx {
    char url[64];
    struct kv_meta *meta;
    struct kv_xfer *owner;
    uint16_t port;
    uint64_t seg;
    kv_seg_id sid;
    uint8_t *mem;
    size_t size;
};

static int setup_engine(void **state, int timeout_ms, size_t size)
{
    struct fx *f = kv_calloc(1, sizeof(*f));
    snprintf(f->url, sizeof(f->url), "embedded://xfer-conns-%d-%d", (int)getpid(), timeout_ms);
    assert_int_equal(kv_meta_open(f->url, NULL, &f->meta), KV_OK);
    struct kv_xfer_opts o = {.token = TOKEN, .timeout_ms = timeout_ms};
    assert_int_equal(kv_xfer_create(f->meta, &o, &f->owner), KV_OK);
    void *a;
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_alloc(f->owner, "conns", size, &a, &sid), KV_OK);
    f->mem = a;
    f->size = size;
    for (size_t i = 0; i < size; i += 4096)
        f->mem[i] = (uint8_t)(i / 4096 * 7 + 1);
    char *val;
    size_t len;
    assert_int_equal(kv_meta_get(f->meta, "/kvstash/default/segments/conns", &val, &len), KV_OK);
    struct kv_xfer_desc d;
    assert_int_equal(kv_xfer_desc_decode(val, len, &d), KV_OK);
    kv_meta_free(val);
    f->port = d.tcp_port;
    f->seg = d.seg_id;
    assert_true(f->seg == sid);
    f->sid = sid;
    *state = f;
    return 0;
}

static int setup_many(void **state)
{
    return setup_engine(state, 10000, 1 << 20);
}

static int setup_stall(void **state)
{
    return setup_engine(state, 1000, 32u << 20);
}

static int teardown(void **state)
{
    struct fx *f = *state;
    kv_xfer_destroy(f->owner);
    kv_meta_close(f->meta);
    kv_free(f);
    return 0;
}

static void send_all(int fd, const void *p, size_t n)
{
    assert_int_equal(kv_net_write_full(fd, p, n, kv_now_ms() + 5000), KV_OK);
}

static void send_frame(int fd, int op, uint64_t req_id, uint64_t seg, uint64_t off, uint64_t len)
{
    struct kv_xfer_frame q = {
        .op = (uint8_t)op, .req_id = req_id, .seg_id = seg, .offset = off, .length = len};
    uint8_t b[KV_XFER_HDR_LEN];
    kv_xfer_frame_encode(&q, b);
    send_all(fd, b, sizeof(b));
}

static void send_hello(int fd)
{
    send_frame(fd, KV_XFER_OP_HELLO, 1, 0, 0, strlen(TOKEN));
    send_all(fd, TOKEN, strlen(TOKEN));
}

/* Reads one response header; it must answer op/req_id with status. */
static void expect_resp(int fd, int op, uint64_t req_id, int status, uint64_t len)
{
    uint8_t b[KV_XFER_HDR_LEN];
    assert_int_equal(kv_net_read_full(fd, b, sizeof(b), kv_now_ms() + 10000), KV_OK);
    struct kv_xfer_frame r;
    assert_int_equal(kv_xfer_frame_decode(b, sizeof(b), &r), KV_OK);
    assert_true(r.flags & KV_XFER_F_RESP);
    assert_int_equal(r.op, op);
    assert_int_equal(r.req_id, req_id);
    assert_int_equal(r.status, status);
    assert_int_equal(r.length, len);
}

static int connect_to(uint16_t port)
{
    int fd = -1;
    int rc = kv_net_connect_tcp("127.0.0.1", port, 5000, &fd);
    if (rc != KV_OK)
        fail_msg("connect to the xfer server failed: %s", kv_strerror(rc));
    return fd;
}

/* 1,000 connections open at the same time, each authenticated and answered (twice, so none
 * was closed behind our back), with no thread per connection. */
static void test_thousand_conns(void **state)
{
    struct fx *f = *state;
    /* our 1,000 ends and the server's 1,000, plus the process's own */
    kv_test_raise_nofile(2 * NCONNS + 200);
    int before = kv_test_thread_count();
    static int fds[NCONNS];
    for (int i = 0; i < NCONNS; i++)
        fds[i] = connect_to(f->port);
    for (int i = 0; i < NCONNS; i++)
        send_hello(fds[i]);
    for (int i = 0; i < NCONNS; i++)
        expect_resp(fds[i], KV_XFER_OP_HELLO, 1, KV_OK, 0);
    const size_t n = 64;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < NCONNS; i++) {
            uint64_t off = ((uint64_t)i * 4096 + (uint64_t)round * 64) % f->size;
            send_frame(fds[i], KV_XFER_OP_READ, 100 + (uint64_t)i, f->seg, off, n);
        }
        if (round == 0) {
            /* every connection is open and has a request in flight */
            int during = kv_test_thread_count();
            if (during > before + 2)
                fail_msg("the process had %d threads before %d connections and %d with them: "
                         "the server must not start a thread per connection",
                         before, NCONNS, during);
        }
        for (int i = 0; i < NCONNS; i++) {
            uint64_t off = ((uint64_t)i * 4096 + (uint64_t)round * 64) % f->size;
            expect_resp(fds[i], KV_XFER_OP_READ, 100 + (uint64_t)i, KV_OK, n);
            uint8_t got[64];
            assert_int_equal(kv_net_read_full(fds[i], got, n, kv_now_ms() + 10000), KV_OK);
            assert_memory_equal(got, f->mem + off, n);
        }
    }
    int after = kv_test_thread_count();
    if (after > before + 2)
        fail_msg("threads: %d before, %d after %d connections", before, after, NCONNS);
    for (int i = 0; i < NCONNS; i++)
        close(fds[i]);
}

/* True when the server closed fd (EOF or reset) before deadline_ms; data still arriving is
 * read and discarded (counted into *got). */
static bool closed_by(int fd, int64_t deadline_ms, size_t *got)
{
    static uint8_t buf[1 << 16];
    for (;;) {
        int64_t left = deadline_ms - kv_now_ms();
        if (left <= 0)
            return false;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, (int)left);
        if (n <= 0)
            continue;
        ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return true;
        if (r > 0 && got)
            *got += (size_t)r;
    }
}

static bool open_at(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 0;
}

/* Connections stalling in each phase of a frame are closed once the timeout (1 s) is over; an
 * active connection is answered promptly meanwhile, and an idle one stays open. */
static void test_stalled_conns(void **state)
{
    struct fx *f = *state;
    const int to = 1000;
    int hdr = connect_to(f->port);  /* half a header */
    int wr = connect_to(f->port);   /* a WRITE header and part of its payload */
    int rd = connect_to(f->port);   /* a 32 MiB READ it never reads */
    int idle = connect_to(f->port); /* authenticated, then silent */
    int act = connect_to(f->port);  /* keeps working */
    int authed[] = {hdr, wr, rd, idle, act};
    for (size_t i = 0; i < sizeof(authed) / sizeof(authed[0]); i++) {
        send_hello(authed[i]);
        expect_resp(authed[i], KV_XFER_OP_HELLO, 1, KV_OK, 0);
    }
    uint8_t b[KV_XFER_HDR_LEN];
    struct kv_xfer_frame q = {
        .op = KV_XFER_OP_READ, .req_id = 5, .seg_id = f->seg, .offset = 0, .length = 64};
    kv_xfer_frame_encode(&q, b);
    send_all(hdr, b, 20);
    send_frame(wr, KV_XFER_OP_WRITE, 6, f->seg, 8192, 4096);
    static uint8_t junk[4096];
    memset(junk, 0x5a, sizeof(junk));
    send_all(wr, junk, 1000);
    /* all of the segment but its first 64 KiB, where the other connections write: a READ of bytes
     * another peer is writing races by design (the store's leases order that, not the engine) */
    send_frame(rd, KV_XFER_OP_READ, 7, f->seg, 64 << 10, f->size - (64 << 10));
    int hello = connect_to(f->port); /* sends nothing at all */
    int64_t t0 = kv_now_ms();

    /* the active connection: answered well within the timeout the whole time */
    int64_t worst = 0;
    uint64_t id = 10;
    while (kv_now_ms() - t0 < to * 3 / 2) {
        int64_t s = kv_now_ms();
        send_frame(act, KV_XFER_OP_WRITE, id, f->seg, 4096, sizeof(junk));
        send_all(act, junk, sizeof(junk));
        expect_resp(act, KV_XFER_OP_WRITE, id, KV_OK, 0);
        id++;
        send_frame(act, KV_XFER_OP_READ, id, f->seg, 4096, sizeof(junk));
        expect_resp(act, KV_XFER_OP_READ, id, KV_OK, sizeof(junk));
        uint8_t got[sizeof(junk)];
        assert_int_equal(kv_net_read_full(act, got, sizeof(got), kv_now_ms() + 5000), KV_OK);
        assert_memory_equal(got, junk, sizeof(got));
        id++;
        worst = KV_MAX(worst, kv_now_ms() - s);
        if (kv_now_ms() - t0 < to / 2) {
            /* deadlines are not premature */
            assert_true(open_at(hello));
            assert_true(open_at(hdr));
            assert_true(open_at(wr));
        }
        kv_sleep_ms(20);
    }
    if (worst >= to / 2)
        fail_msg("an active connection waited %lld ms for an answer while others stalled",
                 (long long)worst);

    /* every stalled connection is closed: by t0 + timeout, with a generous margin */
    int64_t by = t0 + 4 * to;
    assert_true(closed_by(hello, by, NULL));
    assert_true(closed_by(hdr, by, NULL));
    assert_true(closed_by(wr, by, NULL));
    size_t got = 0;
    assert_true(closed_by(rd, by, &got));
    assert_true(got < KV_XFER_HDR_LEN + f->size); /* the answer was cut off */
    /* the stalled WRITE was not acknowledged and wrote at most what it sent */
    for (size_t i = 1000; i < 4096; i++)
        assert_int_equal(f->mem[8192 + i], 0);

    /* idle for longer than the timeout: still served */
    assert_true(open_at(idle));
    send_frame(idle, KV_XFER_OP_READ, 99, f->seg, 4096, 64);
    expect_resp(idle, KV_XFER_OP_READ, 99, KV_OK, 64);
    uint8_t got64[64];
    assert_int_equal(kv_net_read_full(idle, got64, 64, kv_now_ms() + 5000), KV_OK);
    assert_memory_equal(got64, junk, 64);
    /* the segment the stalled WRITE held can be withdrawn: its use ref went with the
     * connection (else unregister waits for it) */
    int64_t u0 = kv_now_ms();
    assert_int_equal(kv_xfer_unregister(f->owner, f->sid), KV_OK);
    assert_true(kv_now_ms() - u0 < 2000);
    close(hello);
    close(hdr);
    close(wr);
    close(rd);
    close(idle);
    close(act);
}

int main(void)
{
    kv_log_set_level(KV_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_thousand_conns, setup_many, teardown),
        cmocka_unit_test_setup_teardown(test_stalled_conns, setup_stall, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
