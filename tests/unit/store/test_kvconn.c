/* SPDX-License-Identifier: Apache-2.0 */
/* test_kvconn.c - the connector copy engine against an in-memory fake backend: NHD and HND
 * layouts, a save read back through a different block table, partial token ranges, missing and
 * wrong-sized objects reported per chunk (no bytes written), bad arguments. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "kvstash/kvconn.h"

/* ---- fake backend: a small key -> bytes table ---- */

#define FAKE_MAX 256

struct fake {
    pthread_mutex_t lock;
    char *keys[FAKE_MAX];
    uint8_t *vals[FAKE_MAX];
    size_t lens[FAKE_MAX];
    int n;
    int puts;
    const char *fail_get; /* substring: gets of matching keys fail with KV_EIO */
};

static int fake_find(struct fake *f, const char *k)
{
    for (int i = 0; i < f->n; i++) {
        if (strcmp(f->keys[i], k) == 0) {
            return i;
        }
    }
    return -1;
}

static int fake_put(void *ud, size_t n, const char *const *keys, const void *const *bufs,
                    const size_t *lens, int *results)
{
    struct fake *f = ud;
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < n; i++) {
        if (fake_find(f, keys[i]) >= 0) {
            results[i] = KV_EEXIST;
            continue;
        }
        if (f->n == FAKE_MAX) {
            results[i] = KV_ENOSPC;
            continue;
        }
        f->keys[f->n] = kv_strdup(keys[i]);
        f->vals[f->n] = kv_malloc(lens[i]);
        memcpy(f->vals[f->n], bufs[i], lens[i]);
        f->lens[f->n] = lens[i];
        f->n++;
        f->puts++;
        results[i] = KV_OK;
    }
    pthread_mutex_unlock(&f->lock);
    return KV_OK;
}

static int fake_get(void *ud, size_t n, const char *const *keys, void *const *bufs,
                    const size_t *caps, size_t *lens, int *results)
{
    struct fake *f = ud;
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < n; i++) {
        int k = fake_find(f, keys[i]);
        if (f->fail_get != NULL && strstr(keys[i], f->fail_get) != NULL) {
            memset(bufs[i], 0x5a, caps[i]); /* a failed read may leave garbage */
            results[i] = KV_EIO;
        } else if (k < 0) {
            results[i] = KV_ENOENT;
        } else if (f->lens[k] > caps[i]) {
            lens[i] = f->lens[k];
            results[i] = KV_E2BIG;
        } else {
            memcpy(bufs[i], f->vals[k], f->lens[k]);
            lens[i] = f->lens[k];
            results[i] = KV_OK;
        }
    }
    pthread_mutex_unlock(&f->lock);
    return KV_OK;
}

static void fake_init(struct fake *f)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->lock, NULL);
}

static void fake_fini(struct fake *f)
{
    for (int i = 0; i < f->n; i++) {
        kv_free(f->keys[i]);
        kv_free(f->vals[i]);
    }
    pthread_mutex_destroy(&f->lock);
}

/* ---- a paged cache: [2][blocks][bs][heads][row] (NHD) or [2][blocks][heads][bs][row] ---- */

#define BS 4
#define CB 2 /* blocks per chunk */
#define HEADS 3
#define ROW 8
#define NBLK 8
#define LAYERS 3
#define HALF ((size_t)NBLK * BS * HEADS * ROW)

struct cache {
    uint8_t mem[LAYERS][2 * HALF];
    bool hnd;
};

static size_t off(const struct cache *c, int blk, int tok, int head)
{
    if (c->hnd) {
        return (((size_t)blk * HEADS + head) * BS + tok) * ROW;
    }
    return (((size_t)blk * BS + tok) * HEADS + head) * ROW;
}

static void layout_of(struct cache *c, int layer, struct kv_conn_layout *l)
{
    l->k_base = (uint64_t)(uintptr_t)c->mem[layer];
    l->v_base = (uint64_t)(uintptr_t)(c->mem[layer] + HALF);
    l->block_stride = BS * HEADS * ROW;
    l->token_stride = c->hnd ? ROW : HEADS * ROW;
    l->head_stride = c->hnd ? BS * ROW : ROW;
    l->num_blocks = NBLK;
}

static struct kv_conn *engine(struct fake *f, struct cache *c)
{
    struct kv_conn_backend be = {fake_put, fake_get, f};
    struct kv_conn_opts o = {0};
    o.backend = &be;
    o.threads = 2;
    o.block_size = BS;
    o.chunk_blocks = CB;
    o.num_heads = HEADS;
    o.row_bytes = ROW;
    o.batch_max = 1; /* several store calls per task */
    struct kv_conn *e = NULL;
    assert_int_equal(kv_conn_create(&o, &e), KV_OK);
    for (int l = 0; l < LAYERS; l++) {
        struct kv_conn_layout lay;
        layout_of(c, l, &lay);
        assert_int_equal(kv_conn_register_layer(e, (uint32_t)l, &lay), KV_OK);
    }
    assert_int_equal(kv_conn_object_size(e), 2u * BS * CB * HEADS * ROW);
    return e;
}

static void fill(struct cache *c, uint32_t seed)
{
    for (int l = 0; l < LAYERS; l++) {
        for (size_t i = 0; i < 2 * HALF; i++) {
            seed = seed * 1103515245u + 12345u;
            c->mem[l][i] = (uint8_t)(seed >> 16);
        }
    }
}

/* Row (layer, kv, token of the chunk, head) of a cache under a chunk's block table. */
static const uint8_t *row(const struct cache *c, int layer, int kv, const int32_t *blocks, int t,
                          int h)
{
    return c->mem[layer] + (kv ? HALF : 0) + off(c, blocks[t / BS], t % BS, h);
}

static void save_then_load(bool hnd_a, bool hnd_b)
{
    static struct cache a, b;
    struct fake f;
    fake_init(&f);
    a.hnd = hnd_a;
    b.hnd = hnd_b;
    fill(&a, 1);
    memset(b.mem, 0xee, sizeof(b.mem));
    struct kv_conn *ea = engine(&f, &a), *eb = engine(&f, &b);

    const char *keys[2] = {"m/c0", "m/c1"};
    int32_t blocks_a[4] = {1, 3, 0, 5};
    int32_t blocks_b[4] = {6, 2, 7, 4};
    uint64_t job;
    int st[2] = {99, 99};
    assert_int_equal(
        kv_conn_submit(ea, KV_CONN_SAVE, 0, LAYERS, 2, keys, blocks_a, NULL, NULL, &job), KV_OK);
    assert_int_equal(kv_conn_wait(ea, job, -1, st), 1);
    assert_int_equal(st[0], KV_OK);
    assert_int_equal(st[1], KV_OK);
    assert_int_equal(kv_conn_release(ea, job), KV_OK);
    assert_int_equal(f.puts, 2 * LAYERS);

    /* a second save of the same chunks: first writer wins, still a success */
    assert_int_equal(
        kv_conn_submit(ea, KV_CONN_SAVE, 0, LAYERS, 2, keys, blocks_a, NULL, NULL, &job), KV_OK);
    assert_int_equal(kv_conn_wait(ea, job, -1, st), 1);
    assert_int_equal(st[0], KV_OK);
    assert_int_equal(kv_conn_release(ea, job), KV_OK);

    /* load chunk 0 whole and chunk 1 tokens [3, 6) only */
    uint32_t tb[2] = {0, 3}, te[2] = {BS * CB, 6};
    assert_int_equal(kv_conn_submit(eb, KV_CONN_LOAD, 0, LAYERS, 2, keys, blocks_b, tb, te, &job),
                     KV_OK);
    for (uint32_t l = 0; l < LAYERS; l++) {
        assert_int_equal(kv_conn_wait_layer(eb, job, l, -1), KV_OK);
    }
    assert_int_equal(kv_conn_wait_layer(eb, job, LAYERS, 0), KV_ERANGE);
    assert_int_equal(kv_conn_wait(eb, job, 1000, st), 1);
    assert_int_equal(st[0], KV_OK);
    assert_int_equal(st[1], KV_OK);
    assert_int_equal(kv_conn_release(eb, job), KV_OK);
    assert_int_equal(kv_conn_release(eb, job), KV_ENOENT);

    uint8_t sentinel[ROW];
    memset(sentinel, 0xee, ROW);
    for (int l = 0; l < LAYERS; l++) {
        for (int kv = 0; kv < 2; kv++) {
            for (int ch = 0; ch < 2; ch++) {
                for (int t = 0; t < BS * CB; t++) {
                    for (int h = 0; h < HEADS; h++) {
                        const uint8_t *rb = row(&b, l, kv, blocks_b + 2 * ch, t, h);
                        if (ch == 1 && (t < 3 || t >= 6)) {
                            assert_memory_equal(rb, sentinel, ROW);
                        } else {
                            assert_memory_equal(rb, row(&a, l, kv, blocks_a + 2 * ch, t, h), ROW);
                        }
                    }
                }
            }
        }
    }
    kv_conn_destroy(ea);
    kv_conn_destroy(eb);
    fake_fini(&f);
}

static void test_nhd(void **state)
{
    (void)state;
    save_then_load(false, false);
}

static void test_hnd(void **state)
{
    (void)state;
    save_then_load(true, true);
}

static void test_cross_layout(void **state)
{
    (void)state;
    save_then_load(false, true); /* stored bytes do not depend on the tensor layout */
}

static void test_failures(void **state)
{
    (void)state;
    static struct cache a, b;
    struct fake f;
    fake_init(&f);
    fill(&a, 7);
    memset(b.mem, 0xee, sizeof(b.mem));
    static uint8_t before[LAYERS][2 * HALF];
    memcpy(before, b.mem, sizeof(before));
    struct kv_conn *ea = engine(&f, &a), *eb = engine(&f, &b);

    const char *keys[3] = {"x/c0", "x/c1", "x/missing"};
    int32_t blocks[6] = {0, 1, 2, 3, 4, 5};
    uint64_t job;
    int st[3];
    assert_int_equal(kv_conn_submit(ea, KV_CONN_SAVE, 0, LAYERS, 2, keys, blocks, NULL, NULL, &job),
                     KV_OK);
    assert_int_equal(kv_conn_wait(ea, job, -1, st), 1);
    assert_int_equal(kv_conn_release(ea, job), KV_OK);

    /* layer 1 of chunk 1 cannot be read; chunk 2 was never saved */
    f.fail_get = "x/c1/L1";
    assert_int_equal(kv_conn_submit(eb, KV_CONN_LOAD, 0, LAYERS, 3, keys, blocks, NULL, NULL, &job),
                     KV_OK);
    assert_int_equal(kv_conn_wait_layer(eb, job, 1, -1), KV_OK);
    int peek[3];
    assert_true(kv_conn_peek(eb, job, peek) >= 0);
    assert_int_equal(peek[1], KV_EIO); /* visible once its failing layer is done */
    assert_int_equal(kv_conn_wait(eb, job, -1, st), 1);
    assert_int_equal(kv_conn_peek(eb, job, peek), 1);
    assert_int_equal(st[0], KV_OK);
    assert_int_equal(st[1], KV_EIO);
    assert_int_equal(st[2], KV_ENOENT);
    assert_int_equal(peek[2], KV_ENOENT);
    assert_int_equal(kv_conn_release(eb, job), KV_OK);
    /* the failed layer of chunk 1 and all of chunk 2 were not written */
    assert_memory_equal(b.mem[1] + off(&b, 2, 0, 0), before[1] + off(&b, 2, 0, 0),
                        2 * BS * HEADS * ROW);
    assert_memory_equal(b.mem[0] + off(&b, 4, 0, 0), before[0] + off(&b, 4, 0, 0),
                        2 * BS * HEADS * ROW);

    /* a wrong-sized object is refused, not scattered */
    f.fail_get = NULL;
    pthread_mutex_lock(&f.lock);
    f.lens[0] -= 1;
    pthread_mutex_unlock(&f.lock);
    const char *k0[1] = {f.keys[0]};
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "%.*s", (int)(strrchr(k0[0], '/') - k0[0]), k0[0]);
    const char *kp[1] = {prefix};
    assert_int_equal(kv_conn_submit(eb, KV_CONN_LOAD, 0, LAYERS, 1, kp, blocks, NULL, NULL, &job),
                     KV_OK);
    assert_int_equal(kv_conn_wait(eb, job, -1, st), 1);
    assert_int_equal(st[0], KV_EPROTO);
    assert_int_equal(kv_conn_release(eb, job), KV_OK);

    /* bad arguments */
    int32_t bad[2] = {0, NBLK};
    assert_int_equal(kv_conn_submit(eb, KV_CONN_SAVE, 0, LAYERS, 1, keys, bad, NULL, NULL, &job),
                     KV_EINVAL);
    int32_t partial[2] = {3, -1};
    uint32_t tb[1] = {0}, te[1] = {BS}, te_bad[1] = {BS * CB + 1};
    assert_int_equal(
        kv_conn_submit(eb, KV_CONN_LOAD, 0, LAYERS, 1, keys, partial, tb, te_bad, &job), KV_EINVAL);
    assert_int_equal(
        kv_conn_submit(eb, KV_CONN_SAVE, 0, LAYERS, 1, keys, partial, NULL, NULL, &job), KV_EINVAL);
    assert_int_equal(
        kv_conn_submit(eb, KV_CONN_LOAD, 0, LAYERS + 1, 1, keys, blocks, NULL, NULL, &job),
        KV_EINVAL);
    assert_int_equal(kv_conn_submit(eb, KV_CONN_LOAD, 2, 1, 1, keys, blocks, NULL, NULL, &job),
                     KV_EINVAL);
    /* a load of the first block only may leave the second id unset */
    assert_int_equal(
        kv_conn_submit(eb, KV_CONN_LOAD, 0, LAYERS, 1, keys + 1, partial, tb, te, &job), KV_OK);
    assert_int_equal(kv_conn_wait(eb, job, -1, st), 1);
    assert_int_equal(st[0], KV_OK);
    assert_int_equal(kv_conn_release(eb, job), KV_OK);
    assert_int_equal(kv_conn_wait(eb, job, 0, st), KV_ENOENT);

    struct kv_conn_opts o = {0};
    struct kv_conn *e = NULL;
    assert_int_equal(kv_conn_create(&o, &e), KV_EINVAL);
    kv_conn_destroy(NULL);
    kv_conn_destroy(ea);
    kv_conn_destroy(eb);
    fake_fini(&f);
}

/* Per-job layouts: a load into staging buffers that were never registered. */
static void test_submit_at(void **state)
{
    (void)state;
    static struct cache a, stage;
    struct fake f;
    fake_init(&f);
    fill(&a, 3);
    memset(stage.mem, 0, sizeof(stage.mem));
    struct kv_conn *e = engine(&f, &a);
    const char *keys[1] = {"s/c0"};
    int32_t blocks[2] = {6, 1};
    uint64_t job;
    int st[1];
    assert_int_equal(kv_conn_submit(e, KV_CONN_SAVE, 0, LAYERS, 1, keys, blocks, NULL, NULL, &job),
                     KV_OK);
    assert_int_equal(kv_conn_wait(e, job, -1, st), 1);
    assert_int_equal(kv_conn_release(e, job), KV_OK);

    struct kv_conn_layout lays[LAYERS];
    for (int l = 0; l < LAYERS; l++) {
        layout_of(&stage, l, &lays[l]);
        lays[l].num_blocks = 2; /* the staging buffer holds just this job's blocks */
    }
    int32_t sb[2] = {0, 1};
    assert_int_equal(
        kv_conn_submit_at(e, KV_CONN_LOAD, 0, LAYERS, lays, 1, keys, sb, NULL, NULL, &job), KV_OK);
    assert_int_equal(kv_conn_wait(e, job, -1, st), 1);
    assert_int_equal(st[0], KV_OK);
    assert_int_equal(kv_conn_release(e, job), KV_OK);
    for (int l = 0; l < LAYERS; l++) {
        for (int kv = 0; kv < 2; kv++) {
            for (int t = 0; t < BS * CB; t++) {
                for (int h = 0; h < HEADS; h++) {
                    assert_memory_equal(row(&stage, l, kv, sb, t, h), row(&a, l, kv, blocks, t, h),
                                        ROW);
                }
            }
        }
    }
    int32_t bad[2] = {0, 2}; /* outside the job's 2-block buffer */
    assert_int_equal(
        kv_conn_submit_at(e, KV_CONN_LOAD, 0, LAYERS, lays, 1, keys, bad, NULL, NULL, &job),
        KV_EINVAL);
    lays[1].k_base = 0;
    assert_int_equal(
        kv_conn_submit_at(e, KV_CONN_LOAD, 0, LAYERS, lays, 1, keys, sb, NULL, NULL, &job),
        KV_EINVAL);
    kv_conn_destroy(e);
    fake_fini(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nhd),          cmocka_unit_test(test_hnd),
        cmocka_unit_test(test_cross_layout), cmocka_unit_test(test_failures),
        cmocka_unit_test(test_submit_at),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
