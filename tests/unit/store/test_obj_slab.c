/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_obj_slab.c - the master's record allocator (obj_slab.c): records of many sizes filled
 * and checked against a pattern (none overlaps another), zeroed when handed out again, freed
 * records reused by their own size only, the byte counts, records past the largest size and a
 * slab without chunks (kv_calloc), chunks 2 MiB-aligned, and a spare chunk readied ahead
 * (kv_slab_reserve).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "store/obj_slab.h"

#define N 200000 /* records: several chunks */

static size_t size_of(size_t i)
{
    return 24 + (i * 7919) % (KV_SLAB_MAX - 24); /* 24..KV_SLAB_MAX-1 bytes */
}

static void fill(unsigned char *p, size_t n, size_t i)
{
    for (size_t k = 0; k < n; k++)
        p[k] = (unsigned char)(i * 31 + k);
}

static void check(const unsigned char *p, size_t n, size_t i)
{
    for (size_t k = 0; k < n; k++)
        if (p[k] != (unsigned char)(i * 31 + k))
            fail_msg("record %zu (%zu bytes) changed at byte %zu", i, n, k);
}

static uint64_t rounded_sum(size_t from, size_t to, size_t step)
{
    uint64_t s = 0;
    for (size_t i = from; i < to; i += step)
        s += (size_of(i) + 15) & ~(size_t)15;
    return s;
}

static void test_records(void **state)
{
    (void)state;
    struct kv_slab s;
    kv_slab_init(&s, true);
    unsigned char **p = calloc(N, sizeof(*p));
    assert_non_null(p);
    for (size_t i = 0; i < N; i++) {
        size_t n = size_of(i);
        p[i] = kv_slab_alloc(&s, n);
        assert_non_null(p[i]);
        assert_int_equal((uintptr_t)p[i] % 16, 0);
        for (size_t k = 0; k < n; k++)
            assert_int_equal(p[i][k], 0);
        fill(p[i], n, i);
    }
    struct kv_slab_stats st;
    kv_slab_stats(&s, &st);
    assert_int_equal(st.used, rounded_sum(0, N, 1));
    assert_true(st.mapped >= st.used);
    assert_int_equal(st.mapped % KV_SLAB_CHUNK, 0);
    assert_true(st.mapped < st.used + st.used / 8 + 2 * KV_SLAB_CHUNK); /* little waste */
    for (size_t i = 0; i < N; i++)
        check(p[i], size_of(i), i);
    /* every third record back; the same sizes again take exactly those places */
    for (size_t i = 0; i < N; i += 3)
        kv_slab_free(&s, p[i], size_of(i));
    kv_slab_stats(&s, &st);
    assert_int_equal(st.used, rounded_sum(0, N, 1) - rounded_sum(0, N, 3));
    uint64_t mapped = st.mapped;
    for (size_t i = 0; i < N; i += 3) {
        size_t n = size_of(i);
        p[i] = kv_slab_alloc(&s, n);
        assert_non_null(p[i]);
        for (size_t k = 0; k < n; k++)
            assert_int_equal(p[i][k], 0); /* zeroed although reused */
        fill(p[i], n, i);
    }
    kv_slab_stats(&s, &st);
    assert_int_equal(st.mapped, mapped); /* no new chunk: the freed records were reused */
    assert_int_equal(st.used, rounded_sum(0, N, 1));
    for (size_t i = 0; i < N; i++)
        check(p[i], size_of(i), i);
    for (size_t i = 0; i < N; i++)
        kv_slab_free(&s, p[i], size_of(i));
    kv_slab_stats(&s, &st);
    assert_int_equal(st.used, 0);
    free(p);
    kv_slab_fini(&s);
}

/* a record freed at one size is not handed out for another */
static void test_sizes_apart(void **state)
{
    (void)state;
    struct kv_slab s;
    kv_slab_init(&s, true);
    void *a = kv_slab_alloc(&s, 96);
    kv_slab_free(&s, a, 96);
    void *b = kv_slab_alloc(&s, 112);
    assert_ptr_not_equal(a, b);
    void *c = kv_slab_alloc(&s, 90); /* rounds to 96: a's place */
    assert_ptr_equal(a, c);
    kv_slab_free(&s, b, 112);
    kv_slab_free(&s, c, 90);
    kv_slab_fini(&s);
}

/* chunks are 2 MiB-aligned: records of one chunk share its huge page */
static void test_chunk_aligned(void **state)
{
    (void)state;
    struct kv_slab s;
    kv_slab_init(&s, true);
    char *a = kv_slab_alloc(&s, 64);
    assert_non_null(a);
    uintptr_t c = (uintptr_t)a & ~(uintptr_t)(KV_SLAB_CHUNK - 1);
    assert_int_equal((uintptr_t)a - c, 16); /* just past the chunk's link */
    kv_slab_free(&s, a, 64);
    kv_slab_fini(&s);
}

/* kv_slab_reserve: a spare chunk readied ahead only once the newest one is half used (or there
 * is none), at most one at a time, taken by the bump pointer before any new mapping; records
 * from it are zero and distinct; fini unmaps it with the others (ASan/LSan would say). */
static void test_reserve(void **state)
{
    (void)state;
    struct kv_slab s;
    struct kv_slab_stats st;
    kv_slab_init(&s, true);
    kv_slab_reserve(&s); /* no chunk yet: the first one is readied */
    kv_slab_reserve_wait(&s);
    kv_slab_stats(&s, &st);
    assert_int_equal(st.mapped, KV_SLAB_CHUNK);
    assert_int_equal(st.used, 0);
    kv_slab_reserve(&s); /* a spare exists: nothing more */
    kv_slab_reserve_wait(&s);
    kv_slab_stats(&s, &st);
    assert_int_equal(st.mapped, KV_SLAB_CHUNK);
    size_t rec = 512, per = (KV_SLAB_CHUNK - 16) / rec, n = 0;
    unsigned char **r = calloc(2 * per + 2, sizeof(*r));
    assert_non_null(r);
    r[n++] = kv_slab_alloc(&s, rec); /* comes from the spare: no new mapping */
    kv_slab_stats(&s, &st);
    assert_int_equal(st.mapped, KV_SLAB_CHUNK);
    assert_int_equal((uintptr_t)r[0] & (KV_SLAB_CHUNK - 1), 16);
    kv_slab_reserve(&s); /* the chunk is not half used yet: nothing */
    kv_slab_reserve_wait(&s);
    kv_slab_stats(&s, &st);
    assert_int_equal(st.mapped, KV_SLAB_CHUNK);
    while (n < per / 2 + 1)
        r[n++] = kv_slab_alloc(&s, rec);
    kv_slab_reserve(&s); /* past half: the next chunk is readied */
    kv_slab_reserve_wait(&s);
    kv_slab_stats(&s, &st);
    assert_int_equal(st.mapped, 2 * KV_SLAB_CHUNK);
    while (n < per + 1) /* the last one needs the next chunk: the spare, no third mapping */
        r[n++] = kv_slab_alloc(&s, rec);
    kv_slab_stats(&s, &st);
    assert_int_equal(st.mapped, 2 * KV_SLAB_CHUNK);
    assert_int_equal(st.used, n * rec);
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < rec; k++)
            assert_int_equal(r[i][k], 0);
        memset(r[i], (int)(i & 0xff), rec);
    }
    for (size_t i = 0; i < n; i++)
        assert_int_equal(r[i][rec - 1], (unsigned char)(i & 0xff));
    for (size_t i = 0; i < n; i++)
        kv_slab_free(&s, r[i], rec);
    free(r);
    kv_slab_fini(&s);

    kv_slab_init(&s, false); /* without chunks: nothing to ready */
    kv_slab_reserve(&s);
    kv_slab_reserve_wait(&s);
    kv_slab_stats(&s, &st);
    assert_int_equal(st.mapped, 0);
    kv_slab_fini(&s);
}

/* past KV_SLAB_MAX, and in a slab without chunks: kv_calloc, nothing counted in the chunks */
static void test_fallback(void **state)
{
    (void)state;
    struct kv_slab s;
    kv_slab_init(&s, true);
    unsigned char *big = kv_slab_alloc(&s, KV_SLAB_MAX + 1);
    assert_non_null(big);
    for (size_t k = 0; k <= KV_SLAB_MAX; k++)
        assert_int_equal(big[k], 0);
    struct kv_slab_stats st;
    kv_slab_stats(&s, &st);
    assert_int_equal(st.mapped, 0);
    assert_int_equal(st.used, 0);
    kv_slab_free(&s, big, KV_SLAB_MAX + 1);
    kv_slab_free(&s, NULL, 64);
    kv_slab_fini(&s);

    kv_slab_init(&s, false);
    unsigned char *q = kv_slab_alloc(&s, 80);
    assert_non_null(q);
    memset(q, 0xab, 80);
    kv_slab_stats(&s, &st);
    assert_int_equal(st.mapped, 0);
    kv_slab_free(&s, q, 80);
    kv_slab_fini(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_records),       cmocka_unit_test(test_sizes_apart),
        cmocka_unit_test(test_chunk_aligned), cmocka_unit_test(test_fallback),
        cmocka_unit_test(test_reserve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
