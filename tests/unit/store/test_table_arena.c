/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_table_arena.c - slot tables in shared huge-page chunks (table_arena.c): tables of the
 * sizes the maps grow through, zeroed and apart (a pattern written into each survives the
 * others), chunks unmapped once their tables are freed (mapped bytes back to 0), tables from
 * half a chunk up on mappings of their own, small ones and an arena without chunks on kv_calloc.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdlib.h>

#include "store/obj_slab.h"
#include "store/slot_word.h"
#include "store/table_arena.h"

#define N 300

static void fill(uint64_t *t, size_t slots, size_t i)
{
    for (size_t k = 0; k < slots; k++)
        t[k] = (uint64_t)i << 32 | k;
}

static void check(const uint64_t *t, size_t slots, size_t i)
{
    for (size_t k = 0; k < slots; k++)
        if (t[k] != ((uint64_t)i << 32 | k))
            fail_msg("table %zu changed at slot %zu", i, k);
}

static void test_tables(void **state)
{
    (void)state;
    struct kv_tarena a;
    kv_tarena_init(&a, true);
    uint64_t *t[N];
    size_t slots[N];
    /* sizes as 256 shards grow: each through the sequence of kv_slots_grown, interleaved */
    size_t nb = KV_TARENA_MIN / 8; /* the smallest from the chunks */
    for (size_t i = 0; i < N; i++) {
        if (i % 30 == 0 && i)
            nb = kv_slots_grown(nb);
        slots[i] = nb + 128 + (i % 3) * 16;
        t[i] = kv_tarena_alloc(&a, slots[i]);
        assert_non_null(t[i]);
        assert_int_equal((uintptr_t)t[i] % 64, 0);
        for (size_t k = 0; k < slots[i]; k++)
            assert_int_equal(t[i][k], 0);
        fill(t[i], slots[i], i);
    }
    assert_true(kv_tarena_mapped(&a) > 0);
    for (size_t i = 0; i < N; i++)
        check(t[i], slots[i], i);
    /* the older half freed: their chunks go back, the rest stays intact */
    uint64_t before = kv_tarena_mapped(&a);
    for (size_t i = 0; i < N / 2; i++)
        kv_tarena_free(&a, t[i], slots[i]);
    assert_true(kv_tarena_mapped(&a) < before);
    for (size_t i = N / 2; i < N; i++)
        check(t[i], slots[i], i);
    for (size_t i = N / 2; i < N; i++)
        kv_tarena_free(&a, t[i], slots[i]);
    /* all freed: at most the chunk still carved from stays */
    assert_true(kv_tarena_mapped(&a) <= KV_SLAB_CHUNK);
    kv_tarena_fini(&a);
}

/* half a chunk and up: a mapping of its own, 2 MiB-aligned, unmapped at free */
static void test_large(void **state)
{
    (void)state;
    struct kv_tarena a;
    kv_tarena_init(&a, true);
    size_t slots = KV_SLAB_CHUNK / 8 + 1000;
    uint64_t *t = kv_tarena_alloc(&a, slots);
    assert_non_null(t);
    assert_int_equal((uintptr_t)t % KV_SLAB_CHUNK, 0);
    assert_true(kv_tarena_mapped(&a) >= slots * 8);
    fill(t, slots, 7);
    check(t, slots, 7);
    kv_tarena_free(&a, t, slots);
    assert_int_equal(kv_tarena_mapped(&a), 0);
    kv_tarena_fini(&a);
}

/* under KV_TARENA_MIN, and any size without chunks: kv_calloc, nothing mapped */
static void test_small_and_plain(void **state)
{
    (void)state;
    struct kv_tarena a;
    kv_tarena_init(&a, true);
    size_t slots = KV_TARENA_MIN / 8 - 1;
    uint64_t *t = kv_tarena_alloc(&a, slots);
    assert_non_null(t);
    fill(t, slots, 1);
    assert_int_equal(kv_tarena_mapped(&a), 0);
    kv_tarena_free(&a, t, slots);
    kv_tarena_free(&a, NULL, 100);
    kv_tarena_fini(&a);

    kv_tarena_init(&a, false);
    slots = 100000;
    t = kv_tarena_alloc(&a, slots);
    assert_non_null(t);
    for (size_t k = 0; k < slots; k++)
        assert_int_equal(t[k], 0);
    assert_int_equal(kv_tarena_mapped(&a), 0);
    kv_tarena_free(&a, t, slots);
    kv_tarena_fini(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables),
        cmocka_unit_test(test_large),
        cmocka_unit_test(test_small_and_plain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
