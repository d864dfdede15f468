/* SPDX-License-Identifier: Apache-2.0 */
/* test_router_policy.c - routing policies: ring, round robin, least loaded, prefix tree and
 * SGLang's cache_aware choice, ELRAR's score, freshness and affinity. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "router/router_int.h"

static void test_ring(void **state)
{
    (void)state;
    struct kv_rt_ring r = {0};
    const char *names[] = {"http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"};
    assert_int_equal(kv_rt_ring_build(&r, names, 3, 160), KV_OK);
    assert_int_equal(r.n, 480);
    int owner[1000], count[3] = {0};
    for (int k = 0; k < 1000; k++) {
        char key[32];
        snprintf(key, sizeof(key), "session-%d", k);
        owner[k] = kv_rt_ring_pick(&r, key, strlen(key), 0x7);
        assert_true(owner[k] >= 0 && owner[k] < 3);
        assert_int_equal(kv_rt_ring_pick(&r, key, strlen(key), 0x7), owner[k]); /* stable */
        count[owner[k]]++;
    }
    for (int i = 0; i < 3; i++)
        assert_true(count[i] > 150); /* roughly even: each near 333 */
    /* engine 1 leaves: only its keys move */
    for (int k = 0; k < 1000; k++) {
        char key[32];
        snprintf(key, sizeof(key), "session-%d", k);
        int o = kv_rt_ring_pick(&r, key, strlen(key), 0x5);
        assert_true(o == 0 || o == 2);
        if (owner[k] != 1)
            assert_int_equal(o, owner[k]);
    }
    assert_int_equal(kv_rt_ring_pick(&r, "x", 1, 0), -1);
    /* names[i] NULL skips an engine */
    const char *some[] = {NULL, "b"};
    assert_int_equal(kv_rt_ring_build(&r, some, 2, 10), KV_OK);
    assert_int_equal(kv_rt_ring_pick(&r, "x", 1, 0x3), 1);
    kv_rt_ring_fini(&r);
    assert_int_equal(kv_rt_ring_pick(&r, "x", 1, 0x3), -1);
}

static void test_rr_least(void **state)
{
    (void)state;
    uint64_t el = (1u << 0) | (1u << 2) | (1u << 5);
    int seq[6];
    for (int c = 0; c < 6; c++)
        seq[c] = kv_rt_pick_rr(el, 6, (uint64_t)c);
    int want[6] = {0, 2, 5, 0, 2, 5};
    assert_memory_equal(seq, want, sizeof(want));
    assert_int_equal(kv_rt_pick_rr(0, 6, 0), -1);
    int64_t load[KV_RT_MAX_ENGINES] = {0};
    load[0] = 3;
    load[1] = 1;
    load[2] = 1;
    load[3] = 0;
    assert_int_equal(kv_rt_pick_least(load, 0x7, 0), 1);
    assert_int_equal(kv_rt_pick_least(load, 0x7, 2), 2); /* a tie goes to the first from start */
    assert_int_equal(kv_rt_pick_least(load, 0xf, 0), 3);
    assert_int_equal(kv_rt_pick_least(load, 0, 0), -1);
}

static void test_prefix_tree(void **state)
{
    (void)state;
    struct kv_rt_prefix_params p;
    kv_rt_prefix_params_default(&p);
    assert_true(p.cache_threshold == 0.5 && p.balance_abs_threshold == 32 &&
                p.balance_rel_threshold == 1.0001);
    struct kv_rt_prefix *t;
    assert_int_equal(kv_rt_prefix_create(&p, &t), KV_OK);
    const char *sys = "You are a helpful assistant. Answer briefly. Question: ";
    char a[200], b[200];
    snprintf(a, sizeof(a), "%swhat is the capital of France?", sys);
    snprintf(b, sizeof(b), "%show tall is Everest?", sys);
    int e;
    size_t m;
    kv_rt_prefix_match(t, a, strlen(a), ~0ULL, &e, &m);
    assert_int_equal(e, -1);
    assert_int_equal(m, 0);
    assert_int_equal(kv_rt_prefix_insert(t, a, strlen(a), 3, 1), KV_OK);
    assert_int_equal(kv_rt_prefix_size(t, 3), strlen(a));
    kv_rt_prefix_match(t, a, strlen(a), ~0ULL, &e, &m);
    assert_int_equal(e, 3);
    assert_int_equal(m, strlen(a));
    /* b shares the system prompt: the match covers its whole 16-byte chunks */
    kv_rt_prefix_match(t, b, strlen(b), ~0ULL, &e, &m);
    assert_int_equal(e, 3);
    assert_int_equal(m, strlen(sys) / 16 * 16);
    /* an ineligible holder does not match */
    kv_rt_prefix_match(t, a, strlen(a), ~(1ULL << 3), &e, &m);
    assert_int_equal(e, -1);
    /* a second engine with the same prompt: both hold it */
    assert_int_equal(kv_rt_prefix_insert(t, a, strlen(a), 5, 2), KV_OK);
    kv_rt_prefix_match(t, a, strlen(a), 1ULL << 5, &e, &m);
    assert_int_equal(e, 5);
    kv_rt_prefix_forget(t, 3);
    assert_int_equal(kv_rt_prefix_size(t, 3), 0);
    kv_rt_prefix_match(t, a, strlen(a), 1ULL << 3, &e, &m);
    assert_int_equal(e, -1);
    /* many prompts: the table grows and every prompt is still found */
    for (int i = 0; i < 5000; i++) {
        char s[64];
        snprintf(s, sizeof(s), "prompt number %d with some padding text", i);
        assert_int_equal(kv_rt_prefix_insert(t, s, strlen(s), i % 4, 10 + i), KV_OK);
    }
    for (int i = 0; i < 5000; i += 97) {
        char s[64];
        snprintf(s, sizeof(s), "prompt number %d with some padding text", i);
        kv_rt_prefix_match(t, s, strlen(s), 0xf, &e, &m);
        assert_int_equal(e, i % 4);
        assert_int_equal(m, strlen(s));
    }
    kv_rt_prefix_destroy(t);
    kv_rt_prefix_destroy(NULL);
}

static void test_prefix_eviction(void **state)
{
    (void)state;
    struct kv_rt_prefix_params p;
    kv_rt_prefix_params_default(&p);
    p.max_chars = 1024;
    struct kv_rt_prefix *t;
    assert_int_equal(kv_rt_prefix_create(&p, &t), KV_OK);
    char first[64];
    snprintf(first, sizeof(first), "the very first prompt, soon forgotten!!");
    assert_int_equal(kv_rt_prefix_insert(t, first, strlen(first), 0, 1), KV_OK);
    for (int i = 0; i < 200; i++) {
        char s[64];
        snprintf(s, sizeof(s), "%04d filler prompt of exactly forty bytes.", i);
        assert_int_equal(kv_rt_prefix_insert(t, s, strlen(s), 0, 2 + i), KV_OK);
        assert_true(kv_rt_prefix_size(t, 0) <= p.max_chars);
    }
    int e;
    size_t m;
    kv_rt_prefix_match(t, first, strlen(first), 1, &e, &m);
    assert_int_equal(e, -1); /* least recently used: evicted */
    char last[64];
    snprintf(last, sizeof(last), "%04d filler prompt of exactly forty bytes.", 199);
    kv_rt_prefix_match(t, last, strlen(last), 1, &e, &m);
    assert_int_equal(e, 0); /* most recent: kept */
    kv_rt_prefix_destroy(t);
    p.chunk = 0;
    assert_int_equal(kv_rt_prefix_create(&p, &t), KV_EINVAL);
}

static void test_pick_prefix(void **state)
{
    (void)state;
    struct kv_rt_prefix_params p;
    kv_rt_prefix_params_default(&p);
    struct kv_rt_prefix *t;
    assert_int_equal(kv_rt_prefix_create(&p, &t), KV_OK);
    int64_t load[KV_RT_MAX_ENGINES] = {0};
    const char *why;
    const char *a = "A shared system prompt that is long enough to matter. Q1";
    const char *a2 = "A shared system prompt that is long enough to matter. Q2";
    const char *c = "Something else entirely, unrelated to the first prompt.";
    int first = kv_rt_pick_prefix(t, &p, a, strlen(a), load, 0x3, 1, &why);
    assert_string_equal(why, "smallest_tree");
    assert_true(first == 0 || first == 1);
    /* the same prefix (> 50% match) goes to the same engine, even if it is a bit busier */
    load[first] = 5;
    assert_int_equal(kv_rt_pick_prefix(t, &p, a2, strlen(a2), load, 0x3, 2, &why), first);
    assert_string_equal(why, "prefix_hit");
    /* an unrelated prompt goes to the engine with the smaller tree */
    assert_int_equal(kv_rt_pick_prefix(t, &p, c, strlen(c), load, 0x3, 3, &why), 1 - first);
    assert_string_equal(why, "smallest_tree");
    /* imbalance (diff > 32 and max > min * 1.0001): shortest queue wins over the cache */
    load[first] = 40;
    load[1 - first] = 2;
    assert_int_equal(kv_rt_pick_prefix(t, &p, a, strlen(a), load, 0x3, 4, &why), 1 - first);
    assert_string_equal(why, "imbalanced");
    /* diff 32 exactly is not imbalanced */
    load[first] = 34;
    assert_int_equal(kv_rt_pick_prefix(t, &p, a2, strlen(a2), load, 0x3, 5, &why), first);
    assert_string_equal(why, "prefix_hit");
    assert_int_equal(kv_rt_pick_prefix(t, &p, a, strlen(a), load, 0, 6, &why), -1);
    kv_rt_prefix_destroy(t);
}

static void test_elrar_score(void **state)
{
    (void)state;
    struct kv_rt_elrar_params p;
    kv_rt_elrar_params_default(&p);
    struct kv_rt_estate s = {.known = true,
                             .fresh = true,
                             .latency_pred_ms = 25,
                             .pending_tokens = 500,
                             .capacity = 1000};
    snprintf(s.mode, sizeof(s.mode), "balanced");
    /* 1*(1 - 25/50) + 1*(1 - tanh(0.5)) + 1*0.5 + 0 */
    double want = 0.5 + (1 - tanh(0.5)) + 0.5;
    assert_true(fabs(kv_rt_elrar_score(&p, &s, 0, false) - want) < 1e-9);
    /* affinity adds beta; extra pending tokens lower the load term */
    assert_true(fabs(kv_rt_elrar_score(&p, &s, 0, true) - (want + 1.0)) < 1e-9);
    double with_extra = 0.5 + (1 - tanh(1.0)) + 0.5;
    assert_true(fabs(kv_rt_elrar_score(&p, &s, 500, false) - with_extra) < 1e-9);
    /* latency far above the SLO is clamped at 5x: the term is 0, never negative */
    s.latency_pred_ms = 10000;
    assert_true(fabs(kv_rt_elrar_score(&p, &s, 0, false) - ((1 - tanh(0.5)) + 0.5)) < 1e-9);
    /* modes */
    s.latency_pred_ms = 0;
    snprintf(s.mode, sizeof(s.mode), "latency_optimized");
    double lo = kv_rt_elrar_score(&p, &s, 0, false);
    snprintf(s.mode, sizeof(s.mode), "throughput_optimized");
    assert_true(fabs(lo - kv_rt_elrar_score(&p, &s, 0, false) - 1.0) < 1e-9);
    /* unknown capacity: neutral 0.5 load term, not ELRAR's "idle" 1.0 */
    s.capacity = 0;
    snprintf(s.mode, sizeof(s.mode), "balanced");
    assert_true(fabs(kv_rt_elrar_score(&p, &s, 0, false) - (1 + 0.5 + 0.5)) < 1e-9);
    /* weights */
    p.w[0] = 2;
    p.w[2] = 0;
    assert_true(fabs(kv_rt_elrar_score(&p, &s, 0, false) - (2 + 0.5)) < 1e-9);
}

static void test_elrar_pick(void **state)
{
    (void)state;
    struct kv_rt_elrar_params p;
    kv_rt_elrar_params_default(&p);
    struct kv_rt_estate st[KV_RT_MAX_ENGINES];
    int64_t extra[KV_RT_MAX_ENGINES] = {0};
    memset(st, 0, sizeof(st));
    for (int i = 0; i < 3; i++) {
        st[i].known = st[i].fresh = true;
        st[i].capacity = 1000;
        snprintf(st[i].mode, sizeof(st[i].mode), "balanced");
    }
    st[0].latency_pred_ms = 40;
    st[1].latency_pred_ms = 10;
    st[2].latency_pred_ms = 20;
    assert_int_equal(kv_rt_pick_elrar(&p, st, extra, -1, 0x7), 1);
    /* the best engine's state is stale: it is not scored */
    st[1].fresh = false;
    assert_int_equal(kv_rt_pick_elrar(&p, st, extra, -1, 0x7), 2);
    /* in-flight compensation: tokens routed to 2 since its report push it below 0 */
    extra[2] = 3000;
    assert_int_equal(kv_rt_pick_elrar(&p, st, extra, -1, 0x7), 0);
    /* affinity beats a small latency difference */
    extra[2] = 0;
    assert_int_equal(kv_rt_pick_elrar(&p, st, extra, 0, 0x7), 0);
    /* no fresh state among the eligible: -1 (caller falls back) */
    assert_int_equal(kv_rt_pick_elrar(&p, st, extra, -1, 0x2), -1);
    st[0].known = false;
    assert_int_equal(kv_rt_pick_elrar(&p, st, extra, -1, 0x3), -1);
}

static void test_affinity(void **state)
{
    (void)state;
    struct kv_rt_affinity *a = kv_malloc(sizeof(*a));
    assert_non_null(a);
    kv_rt_affinity_init(a);
    assert_int_equal(kv_rt_affinity_get(a, "s1", 2, 100, 1000), -1);
    kv_rt_affinity_put(a, "s1", 2, 7, 100);
    assert_int_equal(kv_rt_affinity_get(a, "s1", 2, 500, 1000), 7);
    assert_int_equal(kv_rt_affinity_get(a, "s1", 2, 1101, 1000), -1); /* window passed */
    assert_int_equal(kv_rt_affinity_get(a, "s2", 2, 500, 1000), -1);
    kv_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ring),        cmocka_unit_test(test_rr_least),
        cmocka_unit_test(test_prefix_tree), cmocka_unit_test(test_prefix_eviction),
        cmocka_unit_test(test_pick_prefix), cmocka_unit_test(test_elrar_score),
        cmocka_unit_test(test_elrar_pick),  cmocka_unit_test(test_affinity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
