/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_xfer.c - the transfer engine end to end, in one process (and a forked peer): TCP and
 * shm round trips, batches with per-request status, acknowledged writes, bounds (client and
 * server side, canary bytes), stale ids, tokens, duplicate names, peer death and hung peers,
 * a 64 MiB transfer split across connections, concurrent batches, allocation failures, direct
 * views of same-host segments (kv_xfer_map).
 * Metadata: the embedded backend (one store per test), or a descriptor copied from a child.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "common/net.h"
#include "common/util.h"
#include "kv_skip.h"
#include "kvstash/kvstash.h"
#include "meta/metad.h"
#include "xfer/xfer_int.h"

struct fx {
    char url[64];
    struct kv_meta *meta;
    struct kv_xfer *owner;
    struct kv_xfer *init;
    pid_t child;
    struct kv_metad *metad;
};

static int counter;

static struct kv_meta *open_meta(char *url)
{
    snprintf(url, 64, "embedded://xfer-test-%d-%d", (int)getpid(), ++counter);
    struct kv_meta *m = NULL;
    assert_int_equal(kv_meta_open(url, NULL, &m), KV_OK);
    return m;
}

static struct kv_xfer *engine(struct kv_meta *m, const char *proto, const char *token,
                              int timeout_ms)
{
    struct kv_xfer_opts o = {.protocol = proto, .token = token, .timeout_ms = timeout_ms};
    struct kv_xfer *x = NULL;
    assert_int_equal(kv_xfer_create(m, &o, &x), KV_OK);
    return x;
}

static int setup(void **state)
{
    struct fx *f = kv_calloc(1, sizeof(*f));
    f->meta = open_meta(f->url);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    if (f->child > 0) {
        kill(f->child, SIGKILL);
        waitpid(f->child, NULL, 0);
    }
    kv_xfer_destroy(f->init);
    kv_xfer_destroy(f->owner);
    kv_meta_close(f->meta);
    kv_metad_stop(f->metad);
    kv_free(f);
    return 0;
}

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        p[i] = (uint8_t)s;
    }
}

/* Owner allocates (shm-capable) or registers a segment; initiator opens it with proto. */
static void roundtrip(struct fx *f, const char *proto, bool alloc, const char *want_transport)
{
    f->owner = engine(f->meta, "auto", NULL, 0);
    f->init = engine(f->meta, proto, NULL, 0);
    const size_t n = 1 << 20;
    uint8_t *mem = NULL, *reg = NULL;
    kv_seg_id sid;
    if (alloc) {
        void *a;
        assert_int_equal(kv_xfer_segment_alloc(f->owner, "rt", n, &a, &sid), KV_OK);
        mem = a;
        assert_int_equal(mem[0] | mem[n - 1], 0); /* zeroed */
    } else {
        reg = kv_calloc(1, n);
        mem = reg;
        assert_int_equal(kv_xfer_segment_register(f->owner, "rt", mem, n, &sid), KV_OK);
    }
    kv_target_id t;
    assert_int_equal(kv_xfer_open(f->init, "rt", &t), KV_OK);
    kv_target_id t2;
    assert_int_equal(kv_xfer_open(f->init, "rt", &t2), KV_OK);
    assert_true(t == t2);
    uint64_t size = 0;
    const char *tr = NULL;
    assert_int_equal(kv_xfer_target_info(f->init, t, &size, &tr), KV_OK);
    assert_int_equal(size, n);
    assert_string_equal(tr, want_transport);

    uint8_t *src = kv_malloc(n), *dst = kv_calloc(1, n);
    fill(src, n, 7);
    assert_int_equal(kv_xfer_write(f->init, t, 0, src, n), KV_OK);
    /* acknowledged: the bytes are in the owner's memory as soon as write returns */
    assert_memory_equal(mem, src, n);
    fill(mem + 1000, 5000, 8);
    assert_int_equal(kv_xfer_read(f->init, t, 1000, dst, 5000), KV_OK);
    assert_memory_equal(dst, mem + 1000, 5000);
    /* zero-length requests succeed and touch nothing */
    assert_int_equal(kv_xfer_read(f->init, t, n, dst, 0), KV_OK);

    assert_int_equal(kv_xfer_close(f->init, t), KV_OK);
    assert_int_equal(kv_xfer_close(f->init, t), KV_EXFER_NOSEG);
    assert_int_equal(kv_xfer_unregister(f->owner, sid), KV_OK);
    assert_int_equal(kv_xfer_unregister(f->owner, sid), KV_EXFER_NOSEG);
    assert_int_equal(kv_xfer_open(f->init, "rt", &t), KV_EXFER_NOSEG);
    kv_free(src);
    kv_free(dst);
    kv_free(reg);
}

static void test_tcp_roundtrip(void **state)
{
    roundtrip(*state, "tcp", false, "tcp");
}

static void test_tcp_roundtrip_alloc(void **state)
{
    roundtrip(*state, "tcp", true, "tcp");
}

static void test_shm_roundtrip(void **state)
{
    roundtrip(*state, "shm", true, "shm");
}

static void test_auto_picks_shm(void **state)
{
    roundtrip(*state, "auto", true, "shm");
}

static void test_shm_forced_unshareable(void **state)
{
    struct fx *f = *state;
    f->owner = engine(f->meta, "auto", NULL, 0);
    f->init = engine(f->meta, "shm", NULL, 0);
    uint8_t buf[4096];
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_register(f->owner, "plain", buf, sizeof(buf), &sid), KV_OK);
    kv_target_id t;
    /* registered memory of another engine: not shareable */
    assert_int_equal(kv_xfer_open(f->init, "plain", &t), KV_EXFER_NOTRANSPORT);
    /* but an engine reaches its own registered memory directly */
    assert_int_equal(kv_xfer_open(f->owner, "plain", &t), KV_OK);
    const char *tr;
    assert_int_equal(kv_xfer_target_info(f->owner, t, NULL, &tr), KV_OK);
    assert_string_equal(tr, "shm");
    assert_int_equal(kv_xfer_write(f->owner, t, 10, "hello", 5), KV_OK);
    assert_memory_equal(buf + 10, "hello", 5);
}

static void test_own_segment_over_tcp(void **state)
{
    struct fx *f = *state;
    f->owner = engine(f->meta, "tcp", NULL, 0);
    void *a;
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_alloc(f->owner, "self", 8192, &a, &sid), KV_OK);
    kv_target_id t;
    assert_int_equal(kv_xfer_open(f->owner, "self", &t), KV_OK);
    assert_int_equal(kv_xfer_write(f->owner, t, 8000, "abcdefgh", 8), KV_OK);
    assert_memory_equal((uint8_t *)a + 8000, "abcdefgh", 8);
}

/* kv_xfer_map: a direct view of a same-host segment (shm, and a segment of the engine itself)
 * writes the owner's memory; the view outlives kv_xfer_close() of its target; bounds, unknown
 * targets and tcp targets are refused with their own errors. */
static void test_map(void **state)
{
    struct fx *f = *state;
    f->owner = engine(f->meta, "auto", NULL, 0);
    f->init = engine(f->meta, "shm", NULL, 0);
    const size_t n = 1 << 20;
    void *a;
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_alloc(f->owner, "mp", n, &a, &sid), KV_OK);
    uint8_t *mem = a;
    kv_target_id t;
    assert_int_equal(kv_xfer_open(f->init, "mp", &t), KV_OK);
    void *v = NULL;
    struct kv_xfer_map *m = NULL;
    assert_int_equal(kv_xfer_map(f->init, t, 4096, 8192, &v, &m), KV_OK);
    assert_ptr_not_equal(v, mem + 4096); /* another mapping of the same memory */
    fill(v, 8192, 21);
    assert_memory_equal(mem + 4096, v, 8192);
    /* the view keeps the mapping after the target is closed */
    assert_int_equal(kv_xfer_close(f->init, t), KV_OK);
    fill(v, 100, 22);
    assert_memory_equal(mem + 4096, v, 100);
    kv_xfer_unmap(f->init, m);
    kv_xfer_unmap(f->init, NULL);

    assert_int_equal(kv_xfer_open(f->init, "mp", &t), KV_OK);
    assert_int_equal(kv_xfer_map(f->init, t, n - 10, 20, &v, &m), KV_EXFER_BOUNDS);
    assert_int_equal(kv_xfer_map(f->init, t, UINT64_MAX, 2, &v, &m), KV_EXFER_BOUNDS);
    assert_int_equal(kv_xfer_map(f->init, t ^ 0x5a5a, 0, 1, &v, &m), KV_EXFER_NOSEG);
    assert_int_equal(kv_xfer_map(f->init, t, 0, 1, NULL, &m), KV_EINVAL);
    assert_int_equal(kv_xfer_map(f->init, t, 0, 0, &v, &m), KV_OK); /* empty view: fine */
    kv_xfer_unmap(f->init, m);

    /* a segment of the engine itself: the view is its own memory */
    kv_target_id self;
    assert_int_equal(kv_xfer_open(f->owner, "mp", &self), KV_OK);
    assert_int_equal(kv_xfer_map(f->owner, self, 100, 50, &v, &m), KV_OK);
    assert_ptr_equal(v, mem + 100);
    kv_xfer_unmap(f->owner, m);

    /* over tcp there is nothing to map */
    struct kv_xfer *tcp = engine(f->meta, "tcp", NULL, 0);
    kv_target_id tt;
    assert_int_equal(kv_xfer_open(tcp, "mp", &tt), KV_OK);
    assert_int_equal(kv_xfer_map(tcp, tt, 0, 10, &v, &m), KV_ENOTSUP);
    kv_xfer_destroy(tcp);
}

/* Unregister while a remote initiator keeps reading caller-owned memory: unregister waits for
 * the server threads using it, so freeing the memory right after is safe (ASan checks), and
 * later requests fail with KV_EXFER_NOSEG. */
struct reader {
    struct kv_xfer *x;
    kv_target_id t;
    int rc;
    _Atomic long n; /* reads done; the test thread waits for a few before unregistering */
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    uint8_t *buf = kv_malloc(256 << 10);
    do {
        long n = atomic_load_explicit(&r->n, memory_order_relaxed);
        r->rc = kv_xfer_read(r->x, r->t, (uint64_t)(n % 16) * (256 << 10), buf, 256 << 10);
        atomic_store_explicit(&r->n, n + 1, memory_order_relaxed);
    } while (r->rc == KV_OK);
    kv_free(buf);
    return NULL;
}

static void test_unregister_under_load(void **state)
{
    struct fx *f = *state;
    f->owner = engine(f->meta, "auto", NULL, 0);
    f->init = engine(f->meta, "tcp", NULL, 0);
    uint8_t *mem = kv_malloc(4 << 20);
    memset(mem, 0x42, 4 << 20);
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_register(f->owner, "busy", mem, 4 << 20, &sid), KV_OK);
    struct reader rd[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        rd[i].x = f->init;
        rd[i].rc = KV_OK;
        atomic_init(&rd[i].n, 0);
        assert_int_equal(kv_xfer_open(f->init, "busy", &rd[i].t), KV_OK);
        pthread_create(&th[i], NULL, reader_main, &rd[i]);
    }
    /* both readers under way (a fixed sleep was too short under ThreadSanitizer on a busy
     * host): unregister lands while reads are in flight */
    for (int w = 0; w < 3000 && (atomic_load(&rd[0].n) < 2 || atomic_load(&rd[1].n) < 2); w++)
        kv_sleep_ms(10);
    assert_int_equal(kv_xfer_unregister(f->owner, sid), KV_OK);
    memset(mem, 0, 4 << 20);
    kv_free(mem);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(rd[i].rc, KV_EXFER_NOSEG);
        assert_true(rd[i].n > 1);
    }
}

/* A batch of mixed READs and WRITEs with per-request status, one out of bounds. */
static void batch_mixed(struct fx *f, const char *proto)
{
    f->owner = engine(f->meta, "auto", NULL, 0);
    f->init = engine(f->meta, proto, NULL, 0);
    const size_t blk = 64 << 10, nblk = 64;
    void *a;
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_alloc(f->owner, "batch", blk * nblk, &a, &sid), KV_OK);
    uint8_t *mem = a;
    fill(mem, blk * nblk, 1);
    kv_target_id t;
    assert_int_equal(kv_xfer_open(f->init, "batch", &t), KV_OK);
    uint8_t *local = kv_malloc(blk * nblk);
    fill(local, blk * nblk, 2);
    struct kv_xfer_req reqs[65];
    for (size_t i = 0; i < nblk; i++)
        reqs[i] = (struct kv_xfer_req){.op = i % 2 ? KV_XFER_READ : KV_XFER_WRITE,
                                       .local = local + i * blk,
                                       .len = blk,
                                       .target = t,
                                       .offset = i * blk};
    reqs[64] = (struct kv_xfer_req){
        .op = KV_XFER_WRITE, .local = local, .len = 2, .target = t, .offset = blk * nblk - 1};
    kv_batch_id b;
    assert_int_equal(kv_xfer_batch_create(f->init, 65, &b), KV_OK);
    /* submitted in two calls */
    assert_int_equal(kv_xfer_batch_submit(f->init, b, reqs, 40), KV_OK);
    assert_int_equal(kv_xfer_batch_submit(f->init, b, reqs + 40, 25), KV_OK);
    assert_int_equal(kv_xfer_batch_submit(f->init, b, reqs, 1), KV_E2BIG);
    assert_int_equal(kv_xfer_batch_wait(f->init, b, 10000), KV_EXFER_BOUNDS);
    for (size_t i = 0; i < nblk; i++)
        assert_int_equal(kv_xfer_batch_status(f->init, b, i), KV_OK);
    assert_int_equal(kv_xfer_batch_status(f->init, b, 64), KV_EXFER_BOUNDS);
    assert_int_equal(kv_xfer_batch_status(f->init, b, 65), KV_EINVAL);
    for (size_t i = 0; i < nblk; i++)
        assert_memory_equal(local + i * blk, mem + i * blk, blk);
    assert_int_equal(kv_xfer_batch_destroy(f->init, b), KV_OK);
    /* stale batch id */
    assert_int_equal(kv_xfer_batch_status(f->init, b, 0), KV_EXFER_NOBATCH);
    assert_int_equal(kv_xfer_batch_wait(f->init, b, 0), KV_EXFER_NOBATCH);
    assert_int_equal(kv_xfer_batch_submit(f->init, b, reqs, 1), KV_EXFER_NOBATCH);
    assert_int_equal(kv_xfer_batch_destroy(f->init, b), KV_EXFER_NOBATCH);
    kv_free(local);
}

static void test_batch_tcp(void **state)
{
    batch_mixed(*state, "tcp");
}

static void test_batch_shm(void **state)
{
    batch_mixed(*state, "shm");
}

static void test_bounds_client(void **state)
{
    struct fx *f = *state;
    static const char *protos[] = {"tcp", "shm"};
    f->owner = engine(f->meta, "auto", NULL, 0);
    void *a;
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_alloc(f->owner, "bnd", 4096, &a, &sid), KV_OK);
    uint8_t *mem = a;
    memset(mem, 0xcc, 4096);
    for (size_t k = 0; k < 2; k++) {
        struct kv_xfer *x = engine(f->meta, protos[k], NULL, 0);
        kv_target_id t;
        assert_int_equal(kv_xfer_open(x, "bnd", &t), KV_OK);
        uint8_t buf[64] = {0};
        assert_int_equal(kv_xfer_write(x, t, 4097, buf, 1), KV_EXFER_BOUNDS);
        assert_int_equal(kv_xfer_write(x, t, 4090, buf, 7), KV_EXFER_BOUNDS);
        assert_int_equal(kv_xfer_write(x, t, UINT64_MAX - 3, buf, 8), KV_EXFER_BOUNDS);
        assert_int_equal(kv_xfer_write(x, t, 8, buf, UINT64_MAX), KV_EXFER_BOUNDS);
        assert_int_equal(kv_xfer_read(x, t, 4095, buf, 2), KV_EXFER_BOUNDS);
        for (size_t i = 0; i < 4096; i++)
            assert_int_equal(mem[i], 0xcc);
        /* malformed requests: nothing submitted */
        kv_batch_id b;
        assert_int_equal(kv_xfer_batch_create(x, 2, &b), KV_OK);
        struct kv_xfer_req q[2] = {{.op = KV_XFER_WRITE, .local = buf, .len = 1, .target = t},
                                   {.op = (enum kv_xfer_op)7, .local = buf, .len = 1, .target = t}};
        assert_int_equal(kv_xfer_batch_submit(x, b, q, 2), KV_EINVAL);
        q[1].op = KV_XFER_READ;
        q[1].local = NULL;
        assert_int_equal(kv_xfer_batch_submit(x, b, q, 2), KV_EINVAL);
        q[1].local = buf;
        q[1].target = t ^ (1ull << 40); /* stale generation */
        assert_int_equal(kv_xfer_batch_submit(x, b, q, 2), KV_EXFER_NOSEG);
        assert_int_equal(kv_xfer_batch_status(x, b, 0), KV_EINVAL); /* nothing submitted */
        assert_int_equal(kv_xfer_batch_destroy(x, b), KV_OK);
        kv_xfer_destroy(x);
    }
}

/* Raw wire client: HELLO, then frames the engine's own initiator would never send. */
static int raw_connect(uint16_t port, const char *token)
{
    int fd;
    assert_int_equal(kv_net_connect_tcp("127.0.0.1", port, 2000, &fd), KV_OK);
    size_t tl = token ? strlen(token) : 0;
    struct kv_xfer_frame h = {.op = KV_XFER_OP_HELLO, .length = tl};
    uint8_t b[KV_XFER_HDR_LEN];
    kv_xfer_frame_encode(&h, b);
    assert_int_equal(kv_net_write_full(fd, b, sizeof(b), kv_now_ms() + 2000), KV_OK);
    if (tl)
        assert_int_equal(kv_net_write_full(fd, token, tl, kv_now_ms() + 2000), KV_OK);
    return fd;
}

static int raw_response(int fd, struct kv_xfer_frame *r)
{
    uint8_t b[KV_XFER_HDR_LEN];
    int rc = kv_net_read_full(fd, b, sizeof(b), kv_now_ms() + 5000);
    if (rc < 0)
        return rc;
    return kv_xfer_frame_decode(b, sizeof(b), r);
}

static void raw_request(int fd, int op, uint64_t seg, uint64_t off, uint64_t len,
                        const void *payload, size_t plen)
{
    struct kv_xfer_frame q = {
        .op = (uint8_t)op, .req_id = 77, .seg_id = seg, .offset = off, .length = len};
    uint8_t b[KV_XFER_HDR_LEN];
    kv_xfer_frame_encode(&q, b);
    assert_int_equal(kv_net_write_full(fd, b, sizeof(b), kv_now_ms() + 2000), KV_OK);
    if (plen)
        assert_int_equal(kv_net_write_full(fd, payload, plen, kv_now_ms() + 2000), KV_OK);
}

static uint16_t published_port(struct kv_meta *m, const char *name, uint64_t *seg)
{
    char key[128], *val;
    size_t len;
    snprintf(key, sizeof(key), "/kvstash/default/segments/%s", name);
    assert_int_equal(kv_meta_get(m, key, &val, &len), KV_OK);
    struct kv_xfer_desc d;
    assert_int_equal(kv_xfer_desc_decode(val, len, &d), KV_OK);
    kv_meta_free(val);
    *seg = d.seg_id;
    return d.tcp_port;
}

static void test_bounds_server(void **state)
{
    struct fx *f = *state;
    f->owner = engine(f->meta, "auto", "tok", 0);
    void *a;
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_alloc(f->owner, "srvb", 4096, &a, &sid), KV_OK);
    uint8_t *mem = a;
    memset(mem, 0xcc, 4096);
    uint64_t seg;
    uint16_t port = published_port(f->meta, "srvb", &seg);
    assert_true(seg == sid);
    int fd = raw_connect(port, "tok");
    struct kv_xfer_frame r;
    assert_int_equal(raw_response(fd, &r), KV_OK);
    assert_int_equal(r.status, KV_OK);
    uint8_t junk[64];
    memset(junk, 0x11, sizeof(junk));
    /* offset beyond size; length past the end; offset+length wrapping: payloads drained */
    raw_request(fd, KV_XFER_OP_WRITE, seg, 5000, 16, junk, 16);
    assert_int_equal(raw_response(fd, &r), KV_OK);
    assert_int_equal(r.status, KV_EXFER_BOUNDS);
    assert_int_equal(r.req_id, 77);
    raw_request(fd, KV_XFER_OP_WRITE, seg, 4090, 64, junk, 64);
    assert_int_equal(raw_response(fd, &r), KV_OK);
    assert_int_equal(r.status, KV_EXFER_BOUNDS);
    raw_request(fd, KV_XFER_OP_WRITE, seg, UINT64_MAX - 7, 16, junk, 16);
    assert_int_equal(raw_response(fd, &r), KV_OK);
    assert_int_equal(r.status, KV_EXFER_BOUNDS);
    raw_request(fd, KV_XFER_OP_READ, seg, UINT64_MAX - 7, 16, NULL, 0);
    assert_int_equal(raw_response(fd, &r), KV_OK);
    assert_int_equal(r.status, KV_EXFER_BOUNDS);
    assert_int_equal(r.length, 0);
    /* unknown segment id */
    raw_request(fd, KV_XFER_OP_WRITE, seg ^ (1ull << 40), 0, 8, junk, 8);
    assert_int_equal(raw_response(fd, &r), KV_OK);
    assert_int_equal(r.status, KV_EXFER_NOSEG);
    for (size_t i = 0; i < 4096; i++)
        assert_int_equal(mem[i], 0xcc);
    /* the connection still works after the rejections */
    raw_request(fd, KV_XFER_OP_WRITE, seg, 4088, 8, junk, 8);
    assert_int_equal(raw_response(fd, &r), KV_OK);
    assert_int_equal(r.status, KV_OK);
    assert_int_equal(mem[4088], 0x11);
    assert_int_equal(mem[4087], 0xcc);
    /* RDMA_CONNECT to an engine without a device: refused, the connection stays usable */
    uint8_t ep[KV_XFER_RDMA_EP_LEN] = {1};
    raw_request(fd, KV_XFER_OP_RDMA_CONNECT, 0, 0, sizeof(ep), ep, sizeof(ep));
    assert_int_equal(raw_response(fd, &r), KV_OK);
    assert_int_equal(r.op, KV_XFER_OP_RDMA_CONNECT);
    assert_int_equal(r.status, KV_EXFER_NOTRANSPORT);
    assert_int_equal(r.length, 0);
    raw_request(fd, KV_XFER_OP_READ, seg, 4088, 8, NULL, 0);
    assert_int_equal(raw_response(fd, &r), KV_OK);
    assert_int_equal(r.status, KV_OK);
    assert_int_equal(kv_net_read_full(fd, junk, 8, kv_now_ms() + 5000), KV_OK);
    assert_int_equal(junk[0], 0x11);
    /* a malformed frame closes the connection */
    uint8_t bad[KV_XFER_HDR_LEN];
    memset(bad, 0xab, sizeof(bad));
    assert_int_equal(kv_net_write_full(fd, bad, sizeof(bad), kv_now_ms() + 2000), KV_OK);
    assert_int_equal(kv_net_read_full(fd, bad, 1, kv_now_ms() + 5000), KV_ECONNRESET);
    close(fd);

    /* wrong and missing tokens are refused with KV_EPERM, then closed */
    static const char *toks[] = {"bad", NULL};
    for (size_t k = 0; k < 2; k++) {
        fd = raw_connect(port, toks[k]);
        assert_int_equal(raw_response(fd, &r), KV_OK);
        assert_int_equal(r.status, KV_EPERM);
        assert_int_equal(kv_net_read_full(fd, bad, 1, kv_now_ms() + 5000), KV_ECONNRESET);
        close(fd);
    }
}

static void test_token(void **state)
{
    struct fx *f = *state;
    f->owner = engine(f->meta, "auto", "s3cret", 0);
    void *a;
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_alloc(f->owner, "tok", 4096, &a, &sid), KV_OK);
    kv_target_id t;
    struct kv_xfer *x = engine(f->meta, "tcp", "wrong", 0);
    assert_int_equal(kv_xfer_open(x, "tok", &t), KV_EPERM);
    kv_xfer_destroy(x);
    x = engine(f->meta, "tcp", NULL, 0);
    assert_int_equal(kv_xfer_open(x, "tok", &t), KV_EPERM);
    kv_xfer_destroy(x);
    f->init = engine(f->meta, "tcp", "s3cret", 0);
    assert_int_equal(kv_xfer_open(f->init, "tok", &t), KV_OK);
    assert_int_equal(kv_xfer_write(f->init, t, 0, "x", 1), KV_OK);
    assert_int_equal(((char *)a)[0], 'x');
}

static void test_duplicate_and_ids(void **state)
{
    struct fx *f = *state;
    f->owner = engine(f->meta, "auto", NULL, 0);
    f->init = engine(f->meta, "auto", NULL, 0);
    void *a;
    kv_seg_id s1, s2;
    assert_int_equal(kv_xfer_segment_alloc(f->owner, "dup", 4096, &a, &s1), KV_OK);
    uint8_t buf[16];
    assert_int_equal(kv_xfer_segment_register(f->init, "dup", buf, sizeof(buf), &s2), KV_EEXIST);
    assert_int_equal(kv_xfer_segment_register(f->owner, "dup", buf, sizeof(buf), &s2), KV_EEXIST);
    assert_int_equal(kv_xfer_segment_register(f->owner, "a/b", buf, sizeof(buf), &s2), KV_EINVAL);
    assert_int_equal(kv_xfer_segment_register(f->owner, "", buf, sizeof(buf), &s2), KV_EINVAL);
    assert_int_equal(kv_xfer_segment_register(f->owner, "z", buf, 0, &s2), KV_EINVAL);
    /* the name is free again after unregister */
    assert_int_equal(kv_xfer_unregister(f->owner, s1), KV_OK);
    assert_int_equal(kv_xfer_segment_register(f->init, "dup", buf, sizeof(buf), &s2), KV_OK);
    assert_true(s1 != s2);
    assert_int_equal(kv_xfer_unregister(f->owner, s1), KV_EXFER_NOSEG);
    assert_int_equal(kv_xfer_unregister(f->owner, 0), KV_EXFER_NOSEG);
    assert_int_equal(kv_xfer_unregister(f->owner, UINT64_MAX), KV_EXFER_NOSEG);
    kv_target_id t;
    assert_int_equal(kv_xfer_open(f->owner, "nope", &t), KV_EXFER_NOSEG);
    assert_int_equal(kv_xfer_target_info(f->owner, 12345, NULL, NULL), KV_EXFER_NOSEG);
    assert_int_equal(kv_xfer_read(f->owner, 12345, 0, buf, 1), KV_EXFER_NOSEG);
    assert_int_equal(kv_xfer_batch_wait(f->owner, 999, 0), KV_EXFER_NOBATCH);
    /* a target whose segment was withdrawn after open: KV_EXFER_NOSEG from the owner */
    assert_int_equal(kv_xfer_open(f->owner, "dup", &t), KV_OK);
    assert_int_equal(kv_xfer_unregister(f->init, s2), KV_OK);
    assert_int_equal(kv_xfer_read(f->owner, t, 0, buf, 1), KV_EXFER_NOSEG);

    /* a malformed descriptor in metadata */
    const char *bad = "{\"v\":1,\"name\":\"evil\"}";
    assert_int_equal(kv_meta_put(f->meta, "/kvstash/default/segments/evil", bad, strlen(bad), 0),
                     KV_OK);
    assert_int_equal(kv_xfer_open(f->owner, "evil", &t), KV_EPROTO);

    /* bad options */
    struct kv_xfer *x = NULL;
    struct kv_xfer_opts o = {.protocol = "udp"};
    assert_int_equal(kv_xfer_create(f->meta, &o, &x), KV_EINVAL);
    assert_null(x);
    kv_xfer_destroy(NULL);
}

static void test_rdma_forced(void **state)
{
    struct fx *f = *state;
    struct kv_xfer *x = NULL;
    struct kv_xfer_opts o = {.protocol = "rdma"};
    char dev[64];
    int probe = kv_xfer_rdma_probe(dev, sizeof(dev));
    int rc = kv_xfer_create(f->meta, &o, &x);
    if (probe == KV_OK) {
        /* a device exists: the engine starts, but the data path is not built */
        assert_int_equal(rc, KV_OK);
        kv_xfer_destroy(x);
    } else {
        assert_int_equal(rc, KV_EXFER_NOTRANSPORT);
        assert_null(x);
    }
}

/* 64 MiB in one request: split in 1 MiB pieces over 4 connections; checked with xxh3. */
static void test_large_split(void **state)
{
    struct fx *f = *state;
    f->owner = engine(f->meta, "auto", NULL, 0);
    f->init = engine(f->meta, "tcp", NULL, 0);
    const size_t n = 64 << 20;
    void *a;
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_alloc(f->owner, "big", n, &a, &sid), KV_OK);
    kv_target_id t;
    assert_int_equal(kv_xfer_open(f->init, "big", &t), KV_OK);
    uint8_t *src = kv_malloc(n), *dst = kv_malloc(n);
    fill(src, n, 3);
    uint64_t h = kv_hash64(src, n);
    assert_int_equal(kv_xfer_write(f->init, t, 0, src, n), KV_OK);
    assert_true(kv_hash64(a, n) == h);
    memset(dst, 0, n);
    assert_int_equal(kv_xfer_read(f->init, t, 0, dst, n), KV_OK);
    assert_true(kv_hash64(dst, n) == h);
    kv_free(src);
    kv_free(dst);
}

struct thr {
    struct kv_xfer *x;
    kv_target_id t;
    int idx;
    int rc;
};

static void *thr_main(void *arg)
{
    struct thr *th = arg;
    const size_t blk = 16 << 10, nreq = 32;
    uint8_t *buf = kv_malloc(blk * nreq), *back = kv_malloc(blk * nreq);
    th->rc = KV_OK;
    for (int round = 0; round < 10 && th->rc == KV_OK; round++) {
        fill(buf, blk * nreq, (uint32_t)(th->idx * 100 + round));
        uint64_t base = (uint64_t)th->idx * blk * nreq;
        struct kv_xfer_req q[32];
        kv_batch_id b[2];
        for (int phase = 0; phase < 2 && th->rc == KV_OK; phase++) {
            for (size_t i = 0; i < nreq; i++)
                q[i] = (struct kv_xfer_req){.op = phase ? KV_XFER_READ : KV_XFER_WRITE,
                                            .local = (phase ? back : buf) + i * blk,
                                            .len = blk,
                                            .target = th->t,
                                            .offset = base + i * blk};
            int rc = kv_xfer_batch_create(th->x, nreq, &b[phase]);
            if (rc == KV_OK)
                rc = kv_xfer_batch_submit(th->x, b[phase], q, nreq);
            if (rc == KV_OK)
                rc = kv_xfer_batch_wait(th->x, b[phase], 20000);
            if (rc == KV_OK)
                rc = kv_xfer_batch_destroy(th->x, b[phase]);
            th->rc = rc;
        }
        if (th->rc == KV_OK && memcmp(buf, back, blk * nreq) != 0)
            th->rc = KV_ECHECKSUM;
    }
    kv_free(buf);
    kv_free(back);
    return NULL;
}

static void test_concurrent_batches(void **state)
{
    struct fx *f = *state;
    f->owner = engine(f->meta, "auto", NULL, 0);
    f->init = engine(f->meta, "tcp", NULL, 0);
    void *a;
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_alloc(f->owner, "conc", 4 * 32 * (16 << 10), &a, &sid), KV_OK);
    kv_target_id t;
    assert_int_equal(kv_xfer_open(f->init, "conc", &t), KV_OK);
    pthread_t th[4];
    struct thr ts[4];
    for (int i = 0; i < 4; i++) {
        ts[i] = (struct thr){.x = f->init, .t = t, .idx = i};
        pthread_create(&th[i], NULL, thr_main, &ts[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(ts[i].rc, KV_OK);
    }
}

/* A pending batch cannot be destroyed; wait with timeout 0 reports KV_ETIMEDOUT. And a peer
 * that accepts but never answers: requests fail with KV_ETIMEDOUT within the timeout. */
static void *silent_server(void *arg)
{
    int lfd = *(int *)arg;
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    uint8_t b[KV_XFER_HDR_LEN];
    struct kv_xfer_frame f;
    if (kv_net_read_full(fd, b, sizeof(b), kv_now_ms() + 5000) == KV_OK &&
        kv_xfer_frame_decode(b, sizeof(b), &f) == KV_OK) {
        struct kv_xfer_frame r = {.op = KV_XFER_OP_HELLO, .flags = KV_XFER_F_RESP};
        kv_xfer_frame_encode(&r, b);
        kv_net_write_full(fd, b, sizeof(b), kv_now_ms() + 5000);
    }
    /* swallow requests, answer nothing, until the client gives up */
    while (kv_net_read_full(fd, b, 1, kv_now_ms() + 10000) == KV_OK)
        ;
    close(fd);
    return NULL;
}

/* A peer that takes the WRITE's payload but acknowledges it only after a delay: the request
 * stays pending until the acknowledgement arrives (WRITE completes on the ack, not on send). */
struct slow_ack {
    int lfd;
    _Atomic int got_payload;
};

static void *slow_ack_server(void *arg)
{
    struct slow_ack *sa = arg;
    int fd = accept(sa->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    uint8_t b[KV_XFER_HDR_LEN], payload[4096];
    struct kv_xfer_frame f;
    if (kv_net_read_full(fd, b, sizeof(b), kv_now_ms() + 5000) == KV_OK &&
        kv_xfer_frame_decode(b, sizeof(b), &f) == KV_OK) {
        struct kv_xfer_frame r = {.op = KV_XFER_OP_HELLO, .flags = KV_XFER_F_RESP};
        kv_xfer_frame_encode(&r, b);
        kv_net_write_full(fd, b, sizeof(b), kv_now_ms() + 5000);
    }
    if (kv_net_read_full(fd, b, sizeof(b), kv_now_ms() + 5000) == KV_OK &&
        kv_xfer_frame_decode(b, sizeof(b), &f) == KV_OK && f.op == KV_XFER_OP_WRITE &&
        f.length <= sizeof(payload) &&
        kv_net_read_full(fd, payload, (size_t)f.length, kv_now_ms() + 5000) == KV_OK) {
        atomic_store(&sa->got_payload, 1);
        kv_sleep_ms(400);
        struct kv_xfer_frame r = {
            .op = KV_XFER_OP_WRITE, .flags = KV_XFER_F_RESP, .req_id = f.req_id};
        kv_xfer_frame_encode(&r, b);
        kv_net_write_full(fd, b, sizeof(b), kv_now_ms() + 5000);
    }
    while (kv_net_read_full(fd, b, 1, kv_now_ms() + 10000) == KV_OK)
        ;
    close(fd);
    return NULL;
}

static void test_write_waits_for_ack(void **state)
{
    struct fx *f = *state;
    struct slow_ack sa = {0};
    uint16_t port;
    assert_int_equal(kv_net_listen_tcp("127.0.0.1", 0, 4, &sa.lfd, &port), KV_OK);
    pthread_t th;
    pthread_create(&th, NULL, slow_ack_server, &sa);
    char desc[512];
    snprintf(desc, sizeof(desc),
             "{\"v\":1,\"name\":\"slow\",\"size\":4096,\"seg\":\"1\",\"host\":{\"boot_id\":"
             "\"other\",\"hostname\":\"other\"},\"pid\":1,\"tcp\":\"127.0.0.1:%u\"}",
             port);
    assert_int_equal(kv_meta_put(f->meta, "/kvstash/default/segments/slow", desc, strlen(desc), 0),
                     KV_OK);
    struct kv_xfer_opts o = {.conns_per_peer = 1, .timeout_ms = 5000};
    assert_int_equal(kv_xfer_create(f->meta, &o, &f->init), KV_OK);
    kv_target_id t;
    assert_int_equal(kv_xfer_open(f->init, "slow", &t), KV_OK);
    static uint8_t buf[4096];
    kv_batch_id b;
    assert_int_equal(kv_xfer_batch_create(f->init, 1, &b), KV_OK);
    struct kv_xfer_req q = {.op = KV_XFER_WRITE, .local = buf, .len = sizeof(buf), .target = t};
    assert_int_equal(kv_xfer_batch_submit(f->init, b, &q, 1), KV_OK);
    for (int i = 0; i < 200 && !atomic_load(&sa.got_payload); i++)
        kv_sleep_ms(10);
    assert_true(atomic_load(&sa.got_payload));
    /* every byte is at the peer, but it has not acknowledged yet */
    assert_int_equal(kv_xfer_batch_wait(f->init, b, 100), KV_ETIMEDOUT);
    assert_int_equal(kv_xfer_batch_status(f->init, b, 0), KV_XFER_PENDING);
    assert_int_equal(kv_xfer_batch_wait(f->init, b, 5000), KV_OK);
    assert_int_equal(kv_xfer_batch_destroy(f->init, b), KV_OK);
    kv_xfer_destroy(f->init);
    f->init = NULL;
    pthread_join(th, NULL);
    close(sa.lfd);
}

static void test_hung_peer_timeout(void **state)
{
    struct fx *f = *state;
    int lfd;
    uint16_t port;
    assert_int_equal(kv_net_listen_tcp("127.0.0.1", 0, 4, &lfd, &port), KV_OK);
    pthread_t th;
    pthread_create(&th, NULL, silent_server, &lfd);
    char desc[512];
    snprintf(desc, sizeof(desc),
             "{\"v\":1,\"name\":\"hung\",\"size\":1048576,\"seg\":\"1\",\"host\":{\"boot_id\":"
             "\"other\",\"hostname\":\"other\"},\"pid\":1,\"tcp\":\"127.0.0.1:%u\"}",
             port);
    assert_int_equal(kv_meta_put(f->meta, "/kvstash/default/segments/hung", desc, strlen(desc), 0),
                     KV_OK);
    struct kv_xfer_opts o = {.conns_per_peer = 1, .timeout_ms = 600};
    assert_int_equal(kv_xfer_create(f->meta, &o, &f->init), KV_OK);
    kv_target_id t;
    assert_int_equal(kv_xfer_open(f->init, "hung", &t), KV_OK);
    uint8_t buf[4096];
    kv_batch_id b;
    assert_int_equal(kv_xfer_batch_create(f->init, 4, &b), KV_OK);
    struct kv_xfer_req q = {.op = KV_XFER_READ, .local = buf, .len = sizeof(buf), .target = t};
    int64_t t0 = kv_now_ms();
    assert_int_equal(kv_xfer_batch_submit(f->init, b, &q, 1), KV_OK);
    assert_int_equal(kv_xfer_batch_wait(f->init, b, 0), KV_ETIMEDOUT);
    assert_int_equal(kv_xfer_batch_status(f->init, b, 0), KV_XFER_PENDING);
    assert_int_equal(kv_xfer_batch_destroy(f->init, b), KV_EBUSY);
    assert_int_equal(kv_xfer_batch_wait(f->init, b, 5000), KV_ETIMEDOUT);
    /* the request failed (not the wait): it must be complete now, well before 5 s */
    assert_int_equal(kv_xfer_batch_status(f->init, b, 0), KV_ETIMEDOUT);
    assert_true(kv_now_ms() - t0 < 4000);
    assert_int_equal(kv_xfer_batch_destroy(f->init, b), KV_OK);
    kv_xfer_destroy(f->init);
    f->init = NULL;
    pthread_join(th, NULL);
    close(lfd);
}

/* Destroying an initiator with requests pending at a hung peer returns promptly (it fails
 * them with KV_ESHUTDOWN and joins its threads) instead of waiting for the timeout. */
static void test_destroy_with_pending(void **state)
{
    struct fx *f = *state;
    int lfd;
    uint16_t port;
    assert_int_equal(kv_net_listen_tcp("127.0.0.1", 0, 4, &lfd, &port), KV_OK);
    pthread_t th;
    pthread_create(&th, NULL, silent_server, &lfd);
    char desc[512];
    snprintf(desc, sizeof(desc),
             "{\"v\":1,\"name\":\"hung2\",\"size\":1048576,\"seg\":\"1\",\"host\":{\"boot_id\":"
             "\"other\",\"hostname\":\"other\"},\"pid\":1,\"tcp\":\"127.0.0.1:%u\"}",
             port);
    assert_int_equal(kv_meta_put(f->meta, "/kvstash/default/segments/hung2", desc, strlen(desc), 0),
                     KV_OK);
    struct kv_xfer_opts o = {.conns_per_peer = 1, .timeout_ms = 20000};
    assert_int_equal(kv_xfer_create(f->meta, &o, &f->init), KV_OK);
    kv_target_id t;
    assert_int_equal(kv_xfer_open(f->init, "hung2", &t), KV_OK);
    static uint8_t buf[8][4096];
    struct kv_xfer_req q[8];
    for (int i = 0; i < 8; i++)
        q[i] = (struct kv_xfer_req){.op = i % 2 ? KV_XFER_READ : KV_XFER_WRITE,
                                    .local = buf[i],
                                    .len = sizeof(buf[i]),
                                    .target = t,
                                    .offset = (uint64_t)i * 4096};
    kv_batch_id b;
    assert_int_equal(kv_xfer_batch_create(f->init, 8, &b), KV_OK);
    assert_int_equal(kv_xfer_batch_submit(f->init, b, q, 8), KV_OK);
    kv_sleep_ms(100);
    assert_int_equal(kv_xfer_batch_status(f->init, b, 0), KV_XFER_PENDING);
    int64_t t0 = kv_now_ms();
    kv_xfer_destroy(f->init);
    f->init = NULL;
    assert_true(kv_now_ms() - t0 < 3000);
    pthread_join(th, NULL);
    close(lfd);
}

/* The owner engine goes away while a batch is in flight: every request completes with an
 * error (peer failure) within the timeout; nothing hangs or crashes. */
static void test_peer_death_inprocess(void **state)
{
    struct fx *f = *state;
    f->owner = engine(f->meta, "auto", NULL, 2000);
    f->init = engine(f->meta, "tcp", NULL, 2000);
    const size_t blk = 1 << 20, nreq = 128;
    void *a;
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_alloc(f->owner, "victim", blk * 8, &a, &sid), KV_OK);
    kv_target_id t;
    assert_int_equal(kv_xfer_open(f->init, "victim", &t), KV_OK);
    uint8_t *buf = kv_malloc(blk * nreq);
    struct kv_xfer_req *q = kv_calloc(nreq, sizeof(*q));
    for (size_t i = 0; i < nreq; i++)
        q[i] = (struct kv_xfer_req){.op = i % 2 ? KV_XFER_READ : KV_XFER_WRITE,
                                    .local = buf + i * blk,
                                    .len = blk,
                                    .target = t,
                                    .offset = (i % 8) * blk};
    kv_batch_id b;
    assert_int_equal(kv_xfer_batch_create(f->init, nreq, &b), KV_OK);
    assert_int_equal(kv_xfer_batch_submit(f->init, b, q, nreq), KV_OK);
    kv_xfer_destroy(f->owner);
    f->owner = NULL;
    int64_t t0 = kv_now_ms();
    int rc = kv_xfer_batch_wait(f->init, b, 10000);
    assert_true(kv_now_ms() - t0 < 5000);
    /* requests done before the owner left succeed; the rest fail with a peer error */
    size_t failed = 0;
    for (size_t i = 0; i < nreq; i++) {
        int st = kv_xfer_batch_status(f->init, b, i);
        assert_int_not_equal(st, KV_XFER_PENDING);
        if (st != KV_OK) {
            failed++;
            assert_true(st == KV_EXFER_PEER || st == KV_ECONNRESET);
        }
    }
    if (failed)
        assert_true(rc == KV_EXFER_PEER || rc == KV_ECONNRESET);
    assert_int_equal(kv_xfer_batch_destroy(f->init, b), KV_OK);
    /* later requests fail fast: the peer is gone (reconnect refused) */
    assert_int_equal(kv_xfer_read(f->init, t, 0, buf, 16), KV_EXFER_PEER);
    kv_free(q);
    kv_free(buf);
}

/* A forked child owns the segment (its own engine and metadata) and is SIGKILLed while the
 * parent has a batch in flight; its descriptor reaches the parent through a pipe. */
static void test_peer_death_fork(void **state)
{
    struct fx *f = *state;
    if (KV_UNDER_TSAN) {
        /* the forked child starts engine threads; ThreadSanitizer cannot run threads in the
         * child of a multi-threaded process ("starting new threads after multi-threaded fork
         * is not supported") */
        KV_SKIP("ThreadSanitizer build: the forked child starts threads");
        return;
    }
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        struct kv_meta *m = NULL;
        struct kv_xfer *x = NULL;
        void *a;
        kv_seg_id sid;
        char *val = NULL;
        size_t len = 0;
        if (kv_meta_open("embedded://child", NULL, &m) != KV_OK ||
            kv_xfer_create(m, NULL, &x) != KV_OK ||
            kv_xfer_segment_alloc(x, "forked", 8 << 20, &a, &sid) != KV_OK ||
            kv_meta_get(m, "/kvstash/default/segments/forked", &val, &len) != KV_OK)
            _exit(1);
        if (write(pfd[1], val, len) != (ssize_t)len)
            _exit(1);
        close(pfd[1]);
        for (;;)
            pause();
    }
    close(pfd[1]);
    char desc[1024];
    size_t n = 0;
    ssize_t r;
    while ((r = read(pfd[0], desc + n, sizeof(desc) - 1 - n)) > 0)
        n += (size_t)r;
    close(pfd[0]);
    assert_true(n > 0);
    assert_int_equal(kv_meta_put(f->meta, "/kvstash/default/segments/forked", desc, n, 0), KV_OK);
    struct kv_xfer_opts o = {.protocol = "tcp", .timeout_ms = 3000};
    assert_int_equal(kv_xfer_create(f->meta, &o, &f->init), KV_OK);
    kv_target_id t;
    assert_int_equal(kv_xfer_open(f->init, "forked", &t), KV_OK);
    /* a working transfer first */
    uint8_t small[4096];
    memset(small, 0x5a, sizeof(small));
    assert_int_equal(kv_xfer_write(f->init, t, 0, small, sizeof(small)), KV_OK);
    const size_t blk = 1 << 20, nreq = 256;
    uint8_t *buf = kv_malloc(blk * 8);
    struct kv_xfer_req *q = kv_calloc(nreq, sizeof(*q));
    for (size_t i = 0; i < nreq; i++)
        q[i] = (struct kv_xfer_req){.op = KV_XFER_READ,
                                    .local = buf + (i % 8) * blk,
                                    .len = blk,
                                    .target = t,
                                    .offset = (i % 8) * blk};
    kv_batch_id b;
    assert_int_equal(kv_xfer_batch_create(f->init, nreq, &b), KV_OK);
    assert_int_equal(kv_xfer_batch_submit(f->init, b, q, nreq), KV_OK);
    kill(pid, SIGKILL);
    int64_t t0 = kv_now_ms();
    int rc = kv_xfer_batch_wait(f->init, b, 10000);
    assert_int_not_equal(rc, KV_ETIMEDOUT);
    assert_true(kv_now_ms() - t0 < 5000);
    for (size_t i = 0; i < nreq; i++) {
        int st = kv_xfer_batch_status(f->init, b, i);
        assert_true(st == KV_OK || st == KV_EXFER_PEER || st == KV_ECONNRESET);
    }
    assert_int_equal(kv_xfer_batch_destroy(f->init, b), KV_OK);
    assert_int_equal(kv_xfer_read(f->init, t, 0, small, 16), KV_EXFER_PEER);
    int ws;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    kv_free(q);
    kv_free(buf);
}

/* Allocation failure at every step of registration, open, batch create/submit. */
static void test_alloc_failures(void **state)
{
    struct fx *f = *state;
    f->owner = engine(f->meta, "auto", NULL, 0);
    f->init = engine(f->meta, "tcp", NULL, 0);
    uint8_t mem[8192], buf[8192];
    int ok = 0;
    for (long n = 1; n < 400 && ok < 3; n++) {
        kv_seg_id s1 = 0, s2 = 0;
        void *a = NULL;
        kv_target_id t;
        kv_batch_id b;
        kv_alloc_fail_at(n);
        int r1 = kv_xfer_segment_register(f->owner, "af1", mem, sizeof(mem), &s1);
        int r2 = kv_xfer_segment_alloc(f->owner, "af2", 8192, &a, &s2);
        int r3 = r1 == KV_OK ? kv_xfer_open(f->init, "af1", &t) : KV_ENOMEM;
        int r4 = kv_xfer_batch_create(f->init, 8, &b);
        int r5 = KV_ENOMEM;
        if (r3 == KV_OK && r4 == KV_OK) {
            struct kv_xfer_req q[2] = {
                {.op = KV_XFER_WRITE, .local = buf, .len = 4096, .target = t},
                {.op = KV_XFER_READ,
                 .local = buf + 4096,
                 .len = 4096,
                 .target = t,
                 .offset = 4096}};
            r5 = kv_xfer_batch_submit(f->init, b, q, 2);
            if (r5 == KV_OK) {
                r5 = kv_xfer_batch_wait(f->init, b, 10000);
                assert_int_not_equal(r5, KV_ETIMEDOUT);
            }
        }
        kv_alloc_fail_at(0);
        int rcs[] = {r1, r2, r3, r4};
        /* jansson reports some allocation failures inside its lexer as syntax errors, so a
         * descriptor read under memory pressure may come back KV_EPROTO; and the failing
         * allocation may be the owner's (same process), which then drops the connection */
        if (r3 == KV_EPROTO || r3 == KV_EXFER_PEER)
            rcs[2] = KV_ENOMEM;
        for (size_t i = 0; i < 4; i++)
            if (rcs[i] != KV_OK && rcs[i] != KV_ENOMEM)
                fail_msg("n=%ld step %zu: %s", n, i + 1, kv_err_name(rcs[i]));
        if (r5 != KV_OK && r5 != KV_ENOMEM && r5 != KV_EXFER_PEER)
            fail_msg("n=%ld: batch: %s", n, kv_err_name(r5));
        if (r1 == KV_OK && r2 == KV_OK && r3 == KV_OK && r4 == KV_OK && r5 == KV_OK)
            ok++;
        if (r4 == KV_OK)
            assert_int_equal(kv_xfer_batch_destroy(f->init, b), KV_OK);
        if (r3 == KV_OK)
            assert_int_equal(kv_xfer_close(f->init, t), KV_OK);
        if (r1 == KV_OK)
            assert_int_equal(kv_xfer_unregister(f->owner, s1), KV_OK);
        if (r2 == KV_OK)
            assert_int_equal(kv_xfer_unregister(f->owner, s2), KV_OK);
    }
    assert_true(ok >= 1);
    /* engine creation itself */
    for (long n = 1; n < 100; n++) {
        struct kv_xfer *x = NULL;
        kv_alloc_fail_at(n);
        int rc = kv_xfer_create(f->meta, NULL, &x);
        kv_alloc_fail_at(0);
        assert_true(rc == KV_OK || rc == KV_ENOMEM);
        kv_xfer_destroy(x);
        if (rc == KV_OK)
            break;
    }
}

/* The descriptor outlives its ttl (auto-renewed); a lost lease (revoked behind the engine's
 * back) is noticed by the keeper and the descriptor is re-published; destroy withdraws it. */
static void test_lease_republish(void **state)
{
    struct fx *f = *state;
    struct kv_xfer_opts o = {.lease_ttl_s = 1};
    assert_int_equal(kv_xfer_create(f->meta, &o, &f->owner), KV_OK);
    void *a;
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_alloc(f->owner, "lease", 4096, &a, &sid), KV_OK);
    const char *key = "/kvstash/default/segments/lease";
    char *val;
    size_t len;
    kv_sleep_ms(1600);
    assert_int_equal(kv_meta_get(f->meta, key, &val, &len), KV_OK);
    kv_meta_free(val);
    int64_t lease = kv_xfer_lease_id(f->owner);
    assert_true(lease > 0);
    struct kv_meta *other = NULL;
    assert_int_equal(kv_meta_open(f->url, NULL, &other), KV_OK);
    assert_int_equal(kv_meta_lease_revoke(other, lease), KV_OK);
    kv_meta_close(other);
    int rc = KV_ENOENT;
    for (int i = 0; i < 40 && rc != KV_OK; i++) {
        kv_sleep_ms(100);
        rc = kv_meta_get(f->meta, key, &val, &len);
        if (rc == KV_OK)
            kv_meta_free(val);
    }
    assert_int_equal(rc, KV_OK);
    assert_true(kv_xfer_lease_id(f->owner) != lease);
    kv_xfer_destroy(f->owner);
    f->owner = NULL;
    assert_int_equal(kv_meta_get(f->meta, key, &val, &len), KV_ENOENT);
}

/* Two processes sharing metadata through `metad` (http backend): the child owns a segment;
 * the parent reaches it over shm (auto: same host, another process's memfd) and over tcp
 * (token), cannot take its name (KV_EEXIST), and sees it die: tcp fails with a peer error,
 * the descriptor disappears with the child's lease. */
static void test_cross_process_http(void **state)
{
    struct fx *f = *state;
    if (KV_UNDER_TSAN) {
        /* as test_peer_death_fork */
        KV_SKIP("ThreadSanitizer build: the forked child starts threads");
        return;
    }
    struct kv_metad_opts mo = {.addr = "127.0.0.1:0"};
    assert_int_equal(kv_metad_start(&mo, &f->metad), KV_OK);
    char url[96];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/metadata", kv_metad_port(f->metad));
    struct kv_meta *hm = NULL;
    assert_int_equal(kv_meta_open(url, NULL, &hm), KV_OK);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(pfd[0]);
        struct kv_meta *m = NULL;
        struct kv_xfer *x = NULL;
        struct kv_xfer_opts o = {.token = "t0k", .lease_ttl_s = 1};
        void *a;
        kv_seg_id sid;
        if (kv_meta_open(url, NULL, &m) != KV_OK || kv_xfer_create(m, &o, &x) != KV_OK ||
            kv_xfer_segment_alloc(x, "xp", 4 << 20, &a, &sid) != KV_OK)
            _exit(1);
        fill(a, 4 << 20, 11);
        if (write(pfd[1], "R", 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    f->child = pid;
    close(pfd[1]);
    char c = 0;
    assert_int_equal(read(pfd[0], &c, 1), 1);
    close(pfd[0]);
    uint8_t *want = kv_malloc(4 << 20), *got = kv_malloc(4 << 20);
    fill(want, 4 << 20, 11);

    struct kv_xfer_opts ao = {.token = "t0k", .timeout_ms = 3000};
    struct kv_xfer_opts to = {.token = "t0k", .protocol = "tcp", .timeout_ms = 3000};
    assert_int_equal(kv_xfer_create(hm, &ao, &f->owner), KV_OK); /* auto */
    assert_int_equal(kv_xfer_create(hm, &to, &f->init), KV_OK);  /* tcp */
    kv_target_id ts, tt;
    const char *tr;
    assert_int_equal(kv_xfer_open(f->owner, "xp", &ts), KV_OK);
    assert_int_equal(kv_xfer_target_info(f->owner, ts, NULL, &tr), KV_OK);
    assert_string_equal(tr, "shm");
    assert_int_equal(kv_xfer_open(f->init, "xp", &tt), KV_OK);
    assert_int_equal(kv_xfer_target_info(f->init, tt, NULL, &tr), KV_OK);
    assert_string_equal(tr, "tcp");
    assert_int_equal(kv_xfer_read(f->owner, ts, 0, got, 4 << 20), KV_OK);
    assert_memory_equal(got, want, 4 << 20);
    memset(got, 0, 4 << 20);
    assert_int_equal(kv_xfer_read(f->init, tt, 0, got, 4 << 20), KV_OK);
    assert_memory_equal(got, want, 4 << 20);
    /* a write through shm is visible through tcp (one memory) */
    assert_int_equal(kv_xfer_write(f->owner, ts, 100, "cross", 5), KV_OK);
    assert_int_equal(kv_xfer_read(f->init, tt, 100, got, 5), KV_OK);
    assert_memory_equal(got, "cross", 5);
    /* the name is held by a live process */
    kv_seg_id sid;
    assert_int_equal(kv_xfer_segment_register(f->init, "xp", got, 16, &sid), KV_EEXIST);

    kill(pid, SIGKILL);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    f->child = 0;
    int64_t t0 = kv_now_ms();
    int rc = kv_xfer_read(f->init, tt, 0, got, 1 << 20);
    assert_true(rc == KV_EXFER_PEER || rc == KV_ECONNRESET);
    assert_true(kv_now_ms() - t0 < 3000);
    /* the mapping outlives the owner (documented) */
    assert_int_equal(kv_xfer_read(f->owner, ts, 100, got, 5), KV_OK);
    assert_memory_equal(got, "cross", 5);
    /* the child's lease (ttl 1 s) expires and takes the descriptor with it */
    assert_int_equal(kv_xfer_close(f->init, tt), KV_OK);
    /* until then, opening it over tcp fails to connect */
    rc = KV_EXFER_PEER;
    for (int i = 0; i < 50 && rc == KV_EXFER_PEER; i++) {
        kv_sleep_ms(100);
        rc = kv_xfer_open(f->init, "xp", &tt);
    }
    assert_int_equal(rc, KV_EXFER_NOSEG);
    /* and the name is free */
    assert_int_equal(kv_xfer_segment_register(f->init, "xp", got, 16, &sid), KV_OK);
    kv_xfer_destroy(f->owner);
    kv_xfer_destroy(f->init);
    f->owner = f->init = NULL;
    kv_meta_close(hm);
    kv_free(want);
    kv_free(got);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tcp_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_roundtrip_alloc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shm_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auto_picks_shm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shm_forced_unshareable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_own_segment_over_tcp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unregister_under_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_tcp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_shm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounds_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounds_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_and_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rdma_forced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_split, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_batches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_waits_for_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hung_peer_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_with_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_death_inprocess, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_death_fork, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alloc_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_republish, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cross_process_http, setup, teardown),
    };
    kv_log_set_level(getenv("XFER_TEST_LOG") ? KV_LOG_DEBUG : KV_LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    return kv_skip_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
