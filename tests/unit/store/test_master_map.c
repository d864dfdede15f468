/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_master_map.c - the string map of the node's object table and the SSD tier (master_map.c,
 * open addressing with a hash tag per slot) against a truth kept beside it: puts (EEXIST for a
 * key present), gets, deletes through many resizes, a long run of one home slot at a table's
 * end (the table grows past it), each removing while it walks (each entry seen once), and
 * allocation failures (nothing lost).
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
#include "common/hash.h"
#include "store/master_map.h"
#include "store/slot_word.h"

enum { N = 50000 };
static char keys[N][32];
static int vals[N];
static bool in[N];

static void check(struct kv_smap *m, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        void *v = kv_smap_get(m, keys[i]);
        assert_ptr_equal(v, in[i] ? &vals[i] : NULL);
        count += in[i];
    }
    assert_int_equal(m->n, count);
    assert_null(kv_smap_get(m, "never added"));
}

static void test_put_get_del(void **state)
{
    (void)state;
    struct kv_smap m;
    kv_smap_init(&m);
    for (size_t i = 0; i < N; i++) {
        snprintf(keys[i], sizeof(keys[i]), "map-%zu", i);
        in[i] = false;
        assert_int_equal(kv_smap_put(&m, keys[i], &vals[i]), KV_OK);
        in[i] = true;
    }
    assert_int_equal(kv_smap_put(&m, keys[7], &vals[8]), KV_EEXIST);
    check(&m, N);
    srandom(7);
    for (size_t i = 0; i < N; i++) {
        if (random() & 1) {
            assert_ptr_equal(kv_smap_del(&m, keys[i]), &vals[i]);
            assert_null(kv_smap_del(&m, keys[i]));
            in[i] = false;
        }
    }
    check(&m, N);
    for (size_t i = 0; i < N; i += 5) {
        if (!in[i]) {
            assert_int_equal(kv_smap_put(&m, keys[i], &vals[i]), KV_OK);
            in[i] = true;
        }
    }
    check(&m, N);
    kv_smap_fini(&m);
}

/* keys whose hashes share the shard and the tag's top 9 bits, all set: one home, the last, in
 * every table of up to 2^9 slots, and a run longer than the spill slots */
static void test_long_run(void **state)
{
    (void)state;
    struct kv_smap m;
    kv_smap_init(&m);
    size_t n = 0;
    char k[32];
    for (uint64_t c = 0; n < 100; c++) {
        snprintf(k, sizeof(k), "run-%llx", (unsigned long long)c);
        if (kv_hash64(k, strlen(k)) >> 47 == 0x1ffff) {
            memcpy(keys[n], k, sizeof(k));
            assert_int_equal(kv_smap_put(&m, keys[n], &vals[n]), KV_OK);
            in[n++] = true;
            check(&m, n);
        }
    }
    for (size_t i = 0; i < n; i += 2) {
        assert_ptr_equal(kv_smap_del(&m, keys[i]), &vals[i]);
        in[i] = false;
        check(&m, n);
    }
    kv_smap_fini(&m);
}

/* slot words: the address and the 20-bit tag come back out; the home follows from the word's
 * top 16 bits alone, whatever the 4 check bits; unaligned or high addresses are refused */
static void test_slot_word(void **state)
{
    (void)state;
    static _Alignas(16) char obj[64];
    const uint64_t addrs[] = {(uint64_t)(uintptr_t)obj, 16, UINT64_C(0xfffffffffff0)};
    for (size_t a = 0; a < sizeof(addrs) / sizeof(addrs[0]); a++) {
        void *p = (void *)(uintptr_t)addrs[a];
        assert_true(kv_slot_addr_ok(p));
        for (uint64_t v24 = 0; v24 < (1u << 24); v24 += 0x10f3f) {
            for (uint64_t check = 0; check < 16; check++) {
                uint64_t t = kv_slot_tag_of(v24, check), w = kv_slot_word(p, t);
                assert_ptr_equal(kv_slot_ptr(w), p);
                assert_int_equal(kv_slot_tag(w), t);
                assert_int_equal(t & 0xf, check);
                for (size_t nb = KV_SLOT_MIN; nb <= KV_SLOT_TAG_MAX; nb = kv_slots_grown(nb))
                    assert_int_equal(kv_slot_home_word(w, nb), kv_slot_home(v24, nb));
            }
        }
    }
    assert_false(kv_slot_addr_ok(obj + 8));
    assert_false(kv_slot_addr_ok((void *)(uintptr_t)(UINT64_C(1) << 48)));
    /* keys of one home differ in their tags' check bits: 16 values */
    assert_int_not_equal(kv_slot_tag_of(0x123456, 1), kv_slot_tag_of(0x123456, 2));
}

static size_t visits[N];

static int each_cb(void *ud, const char *key, void *val)
{
    (void)ud;
    size_t i = (size_t)((int *)val - vals);
    assert_string_equal(key, keys[i]);
    visits[i]++;
    if (i % 3 == 0) {
        in[i] = false;
        return 1;
    }
    return 0;
}

static void test_each(void **state)
{
    (void)state;
    struct kv_smap m;
    kv_smap_init(&m);
    for (size_t i = 0; i < N; i++) {
        snprintf(keys[i], sizeof(keys[i]), "each-%zu", i);
        assert_int_equal(kv_smap_put(&m, keys[i], &vals[i]), KV_OK);
        in[i] = true;
        visits[i] = 0;
    }
    kv_smap_each(&m, each_cb, NULL);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(visits[i], 1);
    check(&m, N);
    kv_smap_fini(&m);
}

static void test_alloc_failure(void **state)
{
    (void)state;
    struct kv_smap m;
    kv_smap_init(&m);
    size_t n = 5000;
    for (size_t i = 0; i < n; i++) {
        snprintf(keys[i], sizeof(keys[i]), "fail-%zu", i);
        kv_alloc_fail_at(i % 2 ? 1 : 0);
        int rc = kv_smap_put(&m, keys[i], &vals[i]);
        kv_alloc_fail_at(0);
        assert_true(rc == KV_OK || rc == KV_ENOMEM);
        in[i] = rc == KV_OK;
    }
    check(&m, n);
    kv_smap_fini(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_del),   cmocka_unit_test(test_long_run),
        cmocka_unit_test(test_slot_word),     cmocka_unit_test(test_each),
        cmocka_unit_test(test_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
