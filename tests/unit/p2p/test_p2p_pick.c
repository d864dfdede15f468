/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_p2p_pick.c - chunk selection: peers before the publisher, least loaded holder, rarest
 * chunk, claims respected, the publisher limit, unusable holders skipped, randomness spread,
 * and a simulated swarm in which the publisher sends each chunk about once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "p2p/p2p_int.h"

#define N 16

static void bits(uint8_t *bm, const char *pattern)
{
    memset(bm, 0, (N + 7) / 8);
    for (int i = 0; pattern[i]; i++)
        if (pattern[i] == '1')
            kv_p2p_bit_set(bm, (uint64_t)i, true);
}

static void test_publisher_last(void **state)
{
    (void)state;
    uint8_t st[N] = {0}, pub[2], peer[2];
    bits(pub, "1111111111111111");
    bits(peer, "0000100000000000");
    struct kv_p2p_holder h[2] = {
        {.have = pub, .publisher = true, .usable = true},
        {.have = peer, .usable = true},
    };
    uint64_t rnd = 42;
    struct kv_p2p_pick pk;
    assert_true(kv_p2p_pick_next(st, N, h, 2, 0, 2, &rnd, &pk));
    assert_int_equal(pk.chunk, 4);
    assert_int_equal(pk.holder, 1);
    /* once chunk 4 is ours (in flight), only the publisher remains */
    st[4] = KV_P2P_INFLIGHT;
    assert_true(kv_p2p_pick_next(st, N, h, 2, 0, 2, &rnd, &pk));
    assert_int_equal(pk.holder, 0);
    assert_true(pk.chunk != 4);
    /* publisher limit reached: nothing */
    assert_false(kv_p2p_pick_next(st, N, h, 2, 2, 2, &rnd, &pk));
    /* the peer becomes unusable: still nothing from peers */
    h[1].usable = false;
    st[4] = KV_P2P_MISSING;
    assert_true(kv_p2p_pick_next(st, N, h, 2, 0, 2, &rnd, &pk));
    assert_int_equal(pk.holder, 0);
}

static void test_least_loaded_and_rarest(void **state)
{
    (void)state;
    uint8_t st[N] = {0}, a[2], b[2], c[2];
    bits(a, "1100000000000000");
    bits(b, "1100000000000000");
    bits(c, "0100000000000000");
    struct kv_p2p_holder h[3] = {
        {.have = a, .usable = true, .inflight = 3},
        {.have = b, .usable = true, .inflight = 1},
        {.have = c, .usable = true, .inflight = 1},
    };
    uint64_t rnd = 7;
    struct kv_p2p_pick pk;
    /* chunk 0: best load 1 (b), 2 holders; chunk 1: best load 1 (b or c), 3 holders -> 0 is
     * rarer at the same load */
    assert_true(kv_p2p_pick_next(st, N, h, 3, 0, 2, &rnd, &pk));
    assert_int_equal(pk.chunk, 0);
    assert_int_equal(pk.holder, 1);
    /* b gets busier: chunk 1 from c (load 1) beats chunk 0 (best load 3) */
    h[1].inflight = 5;
    assert_true(kv_p2p_pick_next(st, N, h, 3, 0, 2, &rnd, &pk));
    assert_int_equal(pk.chunk, 1);
    assert_int_equal(pk.holder, 2);
    /* everything done: nothing to pick */
    memset(st, KV_P2P_DONE, sizeof(st));
    assert_false(kv_p2p_pick_next(st, N, h, 3, 0, 2, &rnd, &pk));
}

static void test_claims(void **state)
{
    (void)state;
    uint8_t st[N] = {0}, pub[2], claims[2], none[2];
    bits(pub, "1111111111111111");
    bits(claims, "1111111111111110");
    bits(none, "0000000000000000");
    struct kv_p2p_holder h[2] = {
        {.have = pub, .publisher = true, .usable = true},
        {.have = none, .claims = claims, .usable = true},
    };
    uint64_t rnd = 99;
    struct kv_p2p_pick pk;
    for (int i = 0; i < 50; i++) {
        assert_true(kv_p2p_pick_next(st, N, h, 2, 0, 2, &rnd, &pk));
        assert_int_equal(pk.chunk, 15); /* the only unclaimed one */
    }
    /* a claim by an unusable (dead) peer does not count */
    h[1].usable = false;
    int seen_other = 0;
    for (int i = 0; i < 100; i++) {
        assert_true(kv_p2p_pick_next(st, N, h, 2, 0, 2, &rnd, &pk));
        seen_other += pk.chunk != 15;
    }
    assert_true(seen_other > 0);
}

static void test_random_spread(void **state)
{
    (void)state;
    uint8_t st[N] = {0}, pub[2];
    bits(pub, "1111111111111111");
    struct kv_p2p_holder h[1] = {{.have = pub, .publisher = true, .usable = true}};
    int count[N] = {0};
    uint64_t rnd = 12345;
    struct kv_p2p_pick pk;
    for (int i = 0; i < 1600; i++) {
        assert_true(kv_p2p_pick_next(st, N, h, 1, 0, 2, &rnd, &pk));
        count[pk.chunk]++;
    }
    for (int i = 0; i < N; i++)
        assert_true(count[i] > 40 && count[i] < 200);
}

/* A round-based swarm: 8 fetchers, 64 chunks; each round every fetcher picks up to 2 reads
 * using the records of the previous round (stale views, like polling), then all complete.
 * Publisher reads must stay near one copy; every fetcher must finish. */
static void test_swarm(void **state)
{
    (void)state;
    enum { F = 8, C = 64 };
    uint8_t have[F + 1][C / 8], claims[F + 1][C / 8];
    uint8_t st[F][C];
    memset(have, 0, sizeof(have));
    memset(claims, 0, sizeof(claims));
    memset(st, 0, sizeof(st));
    memset(have[F], 0xff, sizeof(have[F])); /* the publisher */
    int pub_reads = 0, rounds = 0, complete = 0;
    uint64_t rnd = 2024;
    while (complete < F && rounds < 1000) {
        rounds++;
        struct kv_p2p_pick picks[F][2];
        int np[F] = {0};
        uint8_t snap_have[F + 1][C / 8], snap_claims[F + 1][C / 8];
        memcpy(snap_have, have, sizeof(have));
        memcpy(snap_claims, claims, sizeof(claims));
        for (int f = 0; f < F; f++) {
            struct kv_p2p_holder h[F + 1];
            size_t nh = 0;
            int pub_inflight = 0;
            for (int o = 0; o <= F; o++) {
                if (o == f)
                    continue;
                h[nh++] = (struct kv_p2p_holder){.have = snap_have[o],
                                                 .claims = snap_claims[o],
                                                 .publisher = o == F,
                                                 .usable = true};
            }
            for (int k = 0; k < 2; k++) {
                struct kv_p2p_pick pk;
                if (!kv_p2p_pick_next(st[f], C, h, nh, pub_inflight, 1, &rnd, &pk))
                    break;
                st[f][pk.chunk] = KV_P2P_INFLIGHT;
                h[pk.holder].inflight++;
                if (h[pk.holder].publisher) {
                    pub_inflight++;
                    kv_p2p_bit_set(claims[f], pk.chunk, true);
                }
                picks[f][np[f]++] = pk;
            }
        }
        for (int f = 0; f < F; f++) {
            for (int k = 0; k < np[f]; k++) {
                uint64_t c = picks[f][k].chunk;
                size_t hi = picks[f][k].holder;
                int owner = (int)hi >= f ? (int)hi + 1 : (int)hi;
                if (owner == F)
                    pub_reads++;
                st[f][c] = KV_P2P_DONE;
                kv_p2p_bit_set(have[f], c, true);
                kv_p2p_bit_set(claims[f], c, false);
            }
            int done = 1;
            for (int c = 0; c < C; c++)
                done &= st[f][c] == KV_P2P_DONE;
            if (done && np[f] > 0)
                complete++;
        }
    }
    assert_int_equal(complete, F);
    print_message("swarm: %d rounds, publisher sent %d chunk reads for %d chunks\n", rounds,
                  pub_reads, C);
    assert_true(pub_reads >= C);
    assert_true(pub_reads <= 2 * C);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_publisher_last), cmocka_unit_test(test_least_loaded_and_rarest),
        cmocka_unit_test(test_claims),         cmocka_unit_test(test_random_spread),
        cmocka_unit_test(test_swarm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
