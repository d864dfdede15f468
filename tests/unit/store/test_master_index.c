/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_master_index.c - the master's object index (master_index.c) on its own: an open-addressing
 * table per shard with the hash's tag in each slot word. Every case checks the index against the
 * truth kept beside it: every object present is found (by kv_oidx_get and kv_oidx_peek_batch),
 * nothing removed is, and the counts agree. Covers growth through many resizes, removal with
 * backward shifts inside long runs, a run that passes the spill slots at a table's end (the
 * table grows instead), replace, each_range removing while it walks (each object seen once),
 * and shards of more than 2^16 slots (where a home slot comes from the key, not the tag).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "store/master_int.h"

/* the objects of a test and whether each is in the index */
struct world {
    struct kv_oidx idx;
    struct kv_slab slab;
    struct mobj **o;
    bool *in;
    size_t n;
    bool over; /* an insert went in although the table could not grow (load above 4/5) */
};

static struct mobj *obj(struct world *w, const char *key)
{
    struct mobj *o = mst_obj_new(&w->slab, key, 1);
    assert_non_null(o);
    o->state = OBJ_COMPLETE;
    return o;
}

static void world_init(struct world *w, size_t n, const char *fmt)
{
    kv_oidx_init(&w->idx);
    kv_slab_init(&w->slab, KV_SLAB_CHUNKS_DEFAULT);
    w->o = calloc(n, sizeof(*w->o));
    w->in = calloc(n, sizeof(*w->in));
    assert_non_null(w->o);
    assert_non_null(w->in);
    w->n = n;
    w->over = false;
    char k[64];
    for (size_t i = 0; i < n; i++) {
        snprintf(k, sizeof(k), fmt, i);
        w->o[i] = obj(w, k);
    }
}

static void world_fini(struct world *w)
{
    kv_oidx_fini(&w->idx);
    for (size_t i = 0; i < w->n; i++)
        mst_obj_free(&w->slab, w->o[i]);
    kv_slab_fini(&w->slab);
    free(w->o);
    free(w->in);
}

static void add(struct world *w, size_t i)
{
    struct mobj *o = w->o[i];
    uint32_t h = kv_oidx_hash(o->key);
    assert_null(kv_oidx_get_h(&w->idx, o->key, h));
    assert_int_equal(kv_oidx_put_absent(&w->idx, o, h), KV_OK);
    w->in[i] = true;
}

static int peek_cb(void *ud, const struct mobj *o)
{
    (void)ud;
    return o ? 1 : 0;
}

/* the index holds exactly the objects marked in, by single and by batch lookups */
static void check(struct world *w)
{
    size_t count = 0;
    for (size_t i = 0; i < w->n; i++) {
        struct mobj *got = kv_oidx_get(&w->idx, w->o[i]->key);
        if (w->in[i]) {
            assert_ptr_equal(got, w->o[i]);
            count++;
        } else {
            assert_null(got);
        }
    }
    assert_int_equal(w->idx.n, count);
    size_t sum = 0, used = 0;
    for (size_t s = 0; s < KV_OIDX_SHARDS; s++) {
        sum += w->idx.sh[s].n;
        for (size_t i = 0; w->idx.sh[s].slot && i < w->idx.sh[s].nb + 128; i++)
            used += w->idx.sh[s].slot[i] != 0;
        assert_true(w->over || w->idx.sh[s].n <= w->idx.sh[s].nb / 5 * 4);
    }
    assert_int_equal(sum, count);
    assert_int_equal(used, count);
    /* batch lookups, 1,000 keys a call, with an absent key and a NULL (skipped) among them */
    enum { B = 1000 };
    const char *keys[B + 2];
    uint32_t hs[B + 2];
    int32_t out[B + 2];
    for (size_t from = 0; from < w->n; from += B) {
        size_t m = w->n - from < B ? w->n - from : B;
        for (size_t j = 0; j < m; j++) {
            keys[j] = w->o[from + j]->key;
            hs[j] = kv_oidx_hash(keys[j]);
            out[j] = -7;
        }
        keys[m] = "absent key, never added";
        hs[m] = kv_oidx_hash(keys[m]);
        keys[m + 1] = NULL;
        out[m] = out[m + 1] = -7;
        assert_int_equal(kv_oidx_peek_batch(&w->idx, keys, hs, m + 2, peek_cb, NULL, out), KV_OK);
        for (size_t j = 0; j < m; j++)
            assert_int_equal(out[j], w->in[from + j] ? 1 : 0);
        assert_int_equal(out[m], 0);
        assert_int_equal(out[m + 1], -7);
    }
}

/* 60,000 objects through every resize from empty, half removed at random, added again */
static void test_grow_remove(void **state)
{
    (void)state;
    struct world w;
    world_init(&w, 60000, "grow-%zu");
    for (size_t i = 0; i < w.n; i++)
        add(&w, i);
    check(&w);
    srandom(42); /* the same half every run */
    for (size_t i = 0; i < w.n; i++) {
        if (random() & 1) {
            kv_oidx_del(&w.idx, w.o[i]);
            w.in[i] = false;
        }
    }
    check(&w);
    kv_oidx_del(&w.idx, w.o[0]); /* twice: not in the index any more, nothing changes */
    kv_oidx_del(&w.idx, w.o[0]);
    w.in[0] = false;
    for (size_t i = 1; i < w.n; i += 3)
        if (!w.in[i])
            add(&w, i);
    check(&w);
    world_fini(&w);
}

/* keys whose hashes share the shard and the top 9 bits of the tag: one home slot in every table
 * of up to 2^9 slots, so they form one long run; with all those bits set the run starts at the
 * table's last home slot and must pass the spill slots, so the table grows instead */
static void test_long_runs(void **state)
{
    (void)state;
    enum { N = 140 };
    struct world w;
    kv_oidx_init(&w.idx);
    kv_slab_init(&w.slab, KV_SLAB_CHUNKS_DEFAULT);
    w.o = calloc(N, sizeof(*w.o));
    w.in = calloc(N, sizeof(*w.in));
    w.n = 0;
    w.over = false;
    char k[64];
    for (uint64_t c = 0; w.n < N; c++) {
        snprintf(k, sizeof(k), "run-%llx", (unsigned long long)c);
        if (kv_oidx_hash(k) >> 15 == 0x1ffff)
            w.o[w.n++] = obj(&w, k);
    }
    for (size_t i = 0; i < w.n; i++) {
        add(&w, i);
        if (i % 20 == 0)
            check(&w);
    }
    check(&w);
    assert_true(w.idx.sh[255].nb > 512); /* grown past the shared home */
    /* remove from the middle of the run, one by one, checking the shifts each time */
    for (size_t i = 0; i < w.n; i += 2) {
        kv_oidx_del(&w.idx, w.o[i]);
        w.in[i] = false;
        check(&w);
    }
    world_fini(&w);
}

/* replace puts another object with the same key in the slot */
static void test_replace(void **state)
{
    (void)state;
    struct world w;
    world_init(&w, 2000, "rep-%zu");
    for (size_t i = 0; i < w.n; i++)
        add(&w, i);
    for (size_t i = 0; i < w.n; i += 7) {
        struct mobj *g = obj(&w, w.o[i]->key);
        kv_oidx_replace(&w.idx, w.o[i], g);
        mst_obj_free(&w.slab, w.o[i]);
        w.o[i] = g;
    }
    check(&w);
    world_fini(&w);
}

struct each_ctx {
    struct world *w;
    size_t visits;
};

/* each object counts its visits in refs; every third one is removed (returns 1) */
static int each_cb(void *ud, struct mobj *o)
{
    struct each_ctx *c = ud;
    o->refs++;
    c->visits++;
    size_t i = (size_t)strtoull(strchr(o->key, '-') + 1, NULL, 10);
    assert_ptr_equal(c->w->o[i], o);
    if (i % 3 == 0) {
        c->w->in[i] = false;
        return 1;
    }
    return 0;
}

/* each_range in steps of 100 slots removes while it walks and meets each object once */
static void test_each_range(void **state)
{
    (void)state;
    struct world w;
    world_init(&w, 30000, "each-%zu");
    for (size_t i = 0; i < w.n; i++)
        add(&w, i);
    struct each_ctx c = {&w, 0};
    uint64_t cur = 0;
    size_t calls = 0;
    do {
        cur = kv_oidx_each_range(&w.idx, cur, 100, each_cb, &c);
        calls++;
    } while (cur);
    assert_int_equal(c.visits, w.n);
    assert_true(calls > 100);
    for (size_t i = 0; i < w.n; i++)
        assert_int_equal(w.o[i]->refs, 1);
    check(&w);
    world_fini(&w);
}

/* shards of more than 2^16 slots: a home slot comes from the key's hash (the tag has 16 bits) */
static void test_big_shards(void **state)
{
    (void)state;
    struct world w;
    world_init(&w, 20000, "big-%zu");
    kv_oidx_reserve(&w.idx, 20u << 20);
    for (size_t s = 0; s < KV_OIDX_SHARDS; s++)
        assert_true(w.idx.sh[s].nb > 1 << 16);
    for (size_t i = 0; i < w.n; i++)
        add(&w, i);
    check(&w);
    for (size_t i = 0; i < w.n; i += 2) {
        kv_oidx_del(&w.idx, w.o[i]);
        w.in[i] = false;
    }
    check(&w);
    struct each_ctx c = {&w, 0};
    kv_oidx_each(&w.idx, each_cb, &c);
    assert_int_equal(c.visits, w.n / 2);
    check(&w);
    world_fini(&w);
}

/* a failed allocation while growing leaves the index as it was: the insert that needed the
 * room fails or fits, and everything already in stays found */
static void test_alloc_failure(void **state)
{
    (void)state;
    struct world w;
    world_init(&w, 5000, "fail-%zu");
    for (size_t i = 0; i < 4000; i++)
        add(&w, i);
    w.over = true;
    for (size_t i = 4000; i < w.n; i++) {
        kv_alloc_fail_at(1);
        struct mobj *o = w.o[i];
        int rc = kv_oidx_put_absent(&w.idx, o, kv_oidx_hash(o->key));
        kv_alloc_fail_at(0);
        assert_true(rc == KV_OK || rc == KV_ENOMEM);
        w.in[i] = rc == KV_OK;
    }
    check(&w);
    world_fini(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grow_remove), cmocka_unit_test(test_long_runs),
        cmocka_unit_test(test_replace),     cmocka_unit_test(test_each_range),
        cmocka_unit_test(test_big_shards),  cmocka_unit_test(test_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
