/* SPDX-License-Identifier: Apache-2.0 */
/* test_xfer_codec.c - the wire frame codec and the segment descriptor codec (pure functions). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "kvstash/kvstash.h"
#include "xfer/xfer_int.h"

static void test_frame_roundtrip(void **state)
{
    (void)state;
    struct kv_xfer_frame f = {.op = KV_XFER_OP_WRITE,
                              .req_id = 0x1122334455667788ull,
                              .seg_id = 0xdeadbeef00000001ull,
                              .offset = 1ull << 40,
                              .length = 4096};
    uint8_t b[KV_XFER_HDR_LEN];
    kv_xfer_frame_encode(&f, b);
    /* little-endian magic "KVX1" */
    assert_memory_equal(b, "KVX1", 4);
    assert_int_equal(b[40], 0x00);
    assert_int_equal(b[41], 0x10);
    struct kv_xfer_frame g;
    memset(&g, 0x55, sizeof(g));
    assert_int_equal(kv_xfer_frame_decode(b, sizeof(b), &g), KV_OK);
    assert_int_equal(g.op, f.op);
    assert_int_equal(g.flags, 0);
    assert_int_equal(g.status, 0);
    assert_true(g.req_id == f.req_id && g.seg_id == f.seg_id && g.offset == f.offset &&
                g.length == f.length);

    struct kv_xfer_frame r = {
        .op = KV_XFER_OP_READ, .flags = KV_XFER_F_RESP, .status = KV_EXFER_BOUNDS, .req_id = 9};
    kv_xfer_frame_encode(&r, b);
    assert_int_equal(kv_xfer_frame_decode(b, sizeof(b), &g), KV_OK);
    assert_int_equal(g.status, KV_EXFER_BOUNDS);
    assert_int_equal(g.flags, KV_XFER_F_RESP);
}

static int decode_mut(const struct kv_xfer_frame *f, size_t byte, uint8_t val)
{
    uint8_t b[KV_XFER_HDR_LEN];
    kv_xfer_frame_encode(f, b);
    if (byte < sizeof(b))
        b[byte] = val;
    struct kv_xfer_frame g;
    return kv_xfer_frame_decode(b, sizeof(b), &g);
}

static void test_frame_strict(void **state)
{
    (void)state;
    struct kv_xfer_frame ok = {.op = KV_XFER_OP_READ, .req_id = 1, .seg_id = 1, .length = 8};
    assert_int_equal(decode_mut(&ok, 99, 0), KV_OK);
    assert_int_equal(decode_mut(&ok, 0, 'X'), KV_EPROTO); /* magic */
    assert_int_equal(decode_mut(&ok, 4, 2), KV_EPROTO);   /* version */
    assert_int_equal(decode_mut(&ok, 5, 0), KV_EPROTO);   /* op 0 */
    assert_int_equal(decode_mut(&ok, 5, 5), KV_EPROTO);   /* op 5 */
    assert_int_equal(decode_mut(&ok, 6, 2), KV_EPROTO);   /* unknown flag */
    assert_int_equal(decode_mut(&ok, 8, 1), KV_EPROTO);   /* status in a request */
    assert_int_equal(decode_mut(&ok, 12, 1), KV_EPROTO);  /* reserved */
    uint8_t b[KV_XFER_HDR_LEN];
    struct kv_xfer_frame g;
    kv_xfer_frame_encode(&ok, b);
    assert_int_equal(kv_xfer_frame_decode(b, KV_XFER_HDR_LEN - 1, &g), KV_EAGAIN);

    struct kv_xfer_frame f = ok;
    f.length = 0; /* empty request */
    assert_int_equal(decode_mut(&f, 99, 0), KV_EPROTO);
    f.length = KV_XFER_MAX_PAYLOAD + 1;
    assert_int_equal(decode_mut(&f, 99, 0), KV_EPROTO);
    f.length = KV_XFER_MAX_PAYLOAD;
    assert_int_equal(decode_mut(&f, 99, 0), KV_OK);
    /* offset+length wrapping is a valid frame: the server answers KV_EXFER_BOUNDS */
    f.offset = UINT64_MAX;
    f.length = 16;
    assert_int_equal(decode_mut(&f, 99, 0), KV_OK);

    struct kv_xfer_frame h = {.op = KV_XFER_OP_HELLO, .length = KV_XFER_MAX_TOKEN};
    assert_int_equal(decode_mut(&h, 99, 0), KV_OK);
    h.length = KV_XFER_MAX_TOKEN + 1;
    assert_int_equal(decode_mut(&h, 99, 0), KV_EPROTO);
    h.length = 0;
    h.seg_id = 1;
    assert_int_equal(decode_mut(&h, 99, 0), KV_EPROTO);

    struct kv_xfer_frame rc = {.op = KV_XFER_OP_RDMA_CONNECT, .length = KV_XFER_RDMA_EP_LEN};
    assert_int_equal(decode_mut(&rc, 99, 0), KV_OK);
    rc.length = 8;
    assert_int_equal(decode_mut(&rc, 99, 0), KV_EPROTO);
    rc.flags = KV_XFER_F_RESP;
    rc.status = KV_EXFER_NOTRANSPORT;
    rc.length = 0;
    assert_int_equal(decode_mut(&rc, 99, 0), KV_OK);

    struct kv_xfer_frame r = {.op = KV_XFER_OP_WRITE, .flags = KV_XFER_F_RESP, .length = 1};
    assert_int_equal(decode_mut(&r, 99, 0), KV_EPROTO); /* WRITE ack has no payload */
    r.op = KV_XFER_OP_READ;
    assert_int_equal(decode_mut(&r, 99, 0), KV_OK);
    r.status = KV_EXFER_NOSEG;
    assert_int_equal(decode_mut(&r, 99, 0), KV_EPROTO); /* error with payload */
    r.length = 0;
    assert_int_equal(decode_mut(&r, 99, 0), KV_OK);
    r.status = 5;
    assert_int_equal(decode_mut(&r, 99, 0), KV_EPROTO);
    r.status = -1000;
    assert_int_equal(decode_mut(&r, 99, 0), KV_EPROTO);
}

static void test_bounds(void **state)
{
    (void)state;
    assert_true(kv_xfer_in_bounds(0, 10, 10));
    assert_true(kv_xfer_in_bounds(10, 0, 10));
    assert_false(kv_xfer_in_bounds(11, 0, 10));
    assert_false(kv_xfer_in_bounds(1, 10, 10));
    assert_false(kv_xfer_in_bounds(UINT64_MAX, 2, 10));
    assert_false(kv_xfer_in_bounds(2, UINT64_MAX, 10));
    assert_false(kv_xfer_in_bounds(UINT64_MAX - 1, 4, UINT64_MAX));
}

static const char *good_desc =
    "{\"v\":1,\"name\":\"seg0\",\"size\":4096,\"seg\":\"4294967297\","
    "\"host\":{\"boot_id\":\"b\",\"hostname\":\"h\"},\"pid\":42,\"tcp\":\"127.0.0.1:9\","
    "\"shm\":\"/proc/42/fd/7\"}";

static int dec(const char *s)
{
    struct kv_xfer_desc d;
    return kv_xfer_desc_decode(s, strlen(s), &d);
}

static void test_desc_roundtrip(void **state)
{
    (void)state;
    struct kv_xfer_desc d;
    assert_int_equal(kv_xfer_desc_decode(good_desc, strlen(good_desc), &d), KV_OK);
    assert_string_equal(d.name, "seg0");
    assert_true(d.size == 4096 && d.seg_id == 4294967297ull && d.pid == 42);
    assert_string_equal(d.tcp_host, "127.0.0.1");
    assert_int_equal(d.tcp_port, 9);
    assert_string_equal(d.shm, "/proc/42/fd/7");
    assert_false(d.has_rdma);
    d.has_rdma = true;
    snprintf(d.rdma_dev, sizeof(d.rdma_dev), "mlx5_0");
    snprintf(d.rdma_gid, sizeof(d.rdma_gid), "fe800000000000000000000000000001");
    d.rdma_addr = 0x7f0012345000ull;
    d.rdma_rkey = UINT32_MAX;
    d.seg_id = UINT64_MAX;
    char *s;
    size_t n;
    assert_int_equal(kv_xfer_desc_encode(&d, &s, &n), KV_OK);
    struct kv_xfer_desc e;
    assert_int_equal(kv_xfer_desc_decode(s, n, &e), KV_OK);
    kv_free(s);
    assert_memory_equal(&d, &e, sizeof(d));
}

static void test_desc_strict(void **state)
{
    (void)state;
    assert_int_equal(dec(""), KV_EPROTO);
    assert_int_equal(dec("[]"), KV_EPROTO);
    assert_int_equal(dec("{\"v\":1}"), KV_EPROTO);
    char buf[1024];
    static const struct {
        const char *from, *to;
    } muts[] = {
        {"\"v\":1", "\"v\":2"},
        {"\"v\":1", "\"v\":1,\"extra\":0"},
        {"\"size\":4096", "\"size\":0"},
        {"\"size\":4096", "\"size\":-1"},
        {"\"size\":4096", "\"size\":\"4096\""},
        {"\"seg\":\"4294967297\"", "\"seg\":\"0\""},
        {"\"seg\":\"4294967297\"", "\"seg\":\"0x10\""},
        {"\"seg\":\"4294967297\"", "\"seg\":\"99999999999999999999\""},
        {"\"seg\":\"4294967297\"", "\"seg\":17"},
        {"\"name\":\"seg0\"", "\"name\":\"\""},
        {"\"name\":\"seg0\"", "\"name\":\"a/b\""},
        {"\"tcp\":\"127.0.0.1:9\"", "\"tcp\":\"127.0.0.1:0\""},
        {"\"tcp\":\"127.0.0.1:9\"", "\"tcp\":\"127.0.0.1\""},
        {"\"tcp\":\"127.0.0.1:9\"", "\"tcp\":\"127.0.0.1:70000\""},
        {"\"shm\":\"/proc/42/fd/7\"", "\"shm\":\"/etc/passwd\""},
        {"\"pid\":42", "\"pid\":0"},
        {"\"hostname\":\"h\"", "\"hostname\":\"h\",\"x\":1"},
        {"\"boot_id\":\"b\"", "\"boot_id\":\"\""},
        {"\"shm\":\"/proc/42/fd/7\"", "\"rdma\":[]"},
        {"\"shm\":\"/proc/42/fd/7\"", "\"rdma\":{}"},
    };
    for (size_t i = 0; i < sizeof(muts) / sizeof(muts[0]); i++) {
        const char *p = strstr(good_desc, muts[i].from);
        assert_non_null(p);
        snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(p - good_desc), good_desc, muts[i].to,
                 p + strlen(muts[i].from));
        if (dec(buf) != KV_EPROTO)
            fail_msg("mutation %zu accepted: %s", i, buf);
    }
    /* optional rdma with a device is fine; shm is optional */
    const char *p = strstr(good_desc, "\"shm\"");
    snprintf(buf, sizeof(buf), "%.*s\"rdma\":{\"dev\":\"d\"}}", (int)(p - good_desc), good_desc);
    assert_int_equal(dec(buf), KV_OK);
    snprintf(buf, sizeof(buf), "%.*s\"rdma\":{\"dev\":\"d\",\"addr\":\"4096\",\"rkey\":7}}",
             (int)(p - good_desc), good_desc);
    assert_int_equal(dec(buf), KV_OK);
    static const char *const bad_rdma[] = {
        "{\"dev\":\"d\",\"addr\":\"4096\"}",             /* addr without rkey */
        "{\"dev\":\"d\",\"rkey\":7}",                    /* rkey without addr */
        "{\"dev\":\"d\",\"addr\":\"0\",\"rkey\":7}",     /* zero address */
        "{\"dev\":\"d\",\"addr\":\"4096\",\"rkey\":-1}", /* negative rkey */
        "{\"dev\":\"d\",\"addr\":\"4096\",\"rkey\":4294967296}",
        "{\"dev\":\"d\",\"addr\":4096,\"rkey\":7}", /* addr not a string */
    };
    for (size_t i = 0; i < sizeof(bad_rdma) / sizeof(bad_rdma[0]); i++) {
        snprintf(buf, sizeof(buf), "%.*s\"rdma\":%s}", (int)(p - good_desc), good_desc,
                 bad_rdma[i]);
        if (dec(buf) != KV_EPROTO)
            fail_msg("rdma variant %zu accepted: %s", i, buf);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frame_roundtrip), cmocka_unit_test(test_frame_strict),
        cmocka_unit_test(test_bounds),          cmocka_unit_test(test_desc_roundtrip),
        cmocka_unit_test(test_desc_strict),
    };
    kv_log_set_level(KV_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
