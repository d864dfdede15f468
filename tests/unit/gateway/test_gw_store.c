/* SPDX-License-Identifier: Apache-2.0 */
/* test_gw_store.c - the engine store with an explicit clock: staleness, heartbeats, seq
 * reordering, removal after silence, the history bound, growth, allocation failure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "gateway/gw_int.h"

static struct kv_gateway_state mk(const char *id, int64_t pending, double lat, double cap,
                                  int64_t seq)
{
    struct kv_gateway_state s;
    memset(&s, 0, sizeof(s));
    snprintf(s.engine_id, sizeof(s.engine_id), "%s", id);
    snprintf(s.scheduling_mode, sizeof(s.scheduling_mode), "m");
    s.timestamp_ms = 999999999; /* the sender's clock: must never matter */
    s.pending_tokens_total = pending;
    s.latency_pred_ms = lat;
    s.engine_capacity = cap;
    s.kv_cache_free_blocks = -1;
    s.kv_cache_total_blocks = -1;
    s.seq = seq;
    return s;
}

static struct kv_gateway_engine snap_of(struct gw_store *s, const char *id, int64_t now)
{
    struct kv_gateway_engine out;
    memset(&out, 0, sizeof(out));
    struct gw_engine *e = gw_store_find(s, id, now);
    assert_non_null(e);
    gw_store_snapshot(s, e, now, &out);
    return out;
}

static void test_staleness(void **state)
{
    (void)state;
    struct gw_store s;
    assert_int_equal(gw_store_init(&s, 100, 0, 2000, 300000), KV_OK);
    struct kv_gateway_state st = mk("e1", 10, 5, 1, -1);
    assert_int_equal(gw_store_apply(&s, &st, 1000, 0), KV_GW_VALID);
    struct kv_gateway_engine e = snap_of(&s, "e1", 3000); /* exactly the threshold */
    assert_true(e.fresh);
    assert_int_equal(e.age_ms, 2000);
    e = snap_of(&s, "e1", 3001);
    assert_false(e.fresh);
    assert_int_equal(e.age_ms, 2001);
    /* a new state refreshes it, whatever its timestamp_ms says */
    st.timestamp_ms = 1;
    assert_int_equal(gw_store_apply(&s, &st, 5000, 0), KV_GW_VALID);
    e = snap_of(&s, "e1", 5000);
    assert_true(e.fresh);
    assert_int_equal(e.states, 2);
    assert_null(gw_store_find(&s, "nope", 5000));
    gw_store_fini(&s);
}

static void test_heartbeat(void **state)
{
    (void)state;
    struct gw_store s;
    assert_int_equal(gw_store_init(&s, 100, 0, 2000, 300000), KV_OK);
    /* a heartbeat first: shown, but load unknown */
    struct kv_gateway_state hb = mk("e1", 0, 0, 0, -1);
    assert_true(kv_gateway_state_is_heartbeat(&hb));
    assert_int_equal(gw_store_apply(&s, &hb, 0, 0), KV_GW_VALID);
    struct kv_gateway_engine e = snap_of(&s, "e1", 0);
    assert_false(e.load_known);
    assert_int_equal(e.load_age_ms, -1);
    /* a real state, then heartbeats: liveness refreshed, load figures kept */
    struct kv_gateway_state busy = mk("e1", 5000, 250, 0.9, -1);
    assert_int_equal(gw_store_apply(&s, &busy, 100, 0), KV_GW_VALID);
    assert_int_equal(gw_store_apply(&s, &hb, 1500, 0), KV_GW_VALID);
    assert_int_equal(gw_store_apply(&s, &hb, 3000, 0), KV_GW_VALID);
    e = snap_of(&s, "e1", 3500);
    assert_true(e.load_known);
    assert_true(e.fresh); /* the heartbeat at 3000 keeps it alive */
    assert_int_equal(e.age_ms, 500);
    assert_int_equal(e.load_age_ms, 3400);
    assert_int_equal(e.state.pending_tokens_total, 5000);
    assert_true(e.state.latency_pred_ms == 250);
    assert_true(e.state.engine_capacity == 0.9);
    assert_int_equal(e.states, 4);
    assert_int_equal(e.heartbeats, 3);
    assert_int_equal(s.heartbeats, 3);
    /* capacity 0 alone, or latency 0 alone, is a real state */
    struct kv_gateway_state idle = mk("e1", 0, 0, 1, -1);
    assert_int_equal(gw_store_apply(&s, &idle, 3600, 0), KV_GW_VALID);
    e = snap_of(&s, "e1", 3600);
    assert_int_equal(e.state.pending_tokens_total, 0);
    assert_int_equal(e.load_age_ms, 0);
    /* the history has every state, heartbeats flagged */
    struct gw_engine *ge = gw_store_find(&s, "e1", 3600);
    assert_int_equal(ge->hist_n, 5);
    assert_true(gw_store_hist_at(&s, ge, 0)->heartbeat);
    assert_false(gw_store_hist_at(&s, ge, 1)->heartbeat);
    assert_false(gw_store_hist_at(&s, ge, 4)->heartbeat);
    gw_store_fini(&s);
}

static void test_seq(void **state)
{
    (void)state;
    struct gw_store s;
    assert_int_equal(gw_store_init(&s, 100, 0, 2000, 300000), KV_OK);
    struct kv_gateway_state st = mk("e1", 1, 1, 1, 5);
    assert_int_equal(gw_store_apply(&s, &st, 0, 0), KV_GW_VALID);
    st.seq = 3;
    st.pending_tokens_total = 333;
    assert_int_equal(gw_store_apply(&s, &st, 10, 0), KV_GW_REORDERED);
    st.seq = 5; /* a duplicate */
    assert_int_equal(gw_store_apply(&s, &st, 20, 0), KV_GW_REORDERED);
    assert_int_equal(snap_of(&s, "e1", 20).state.pending_tokens_total, 1);
    assert_int_equal(snap_of(&s, "e1", 20).age_ms, 20); /* a dropped state is no sign of life */
    st.seq = 6;
    st.pending_tokens_total = 6;
    assert_int_equal(gw_store_apply(&s, &st, 30, 0), KV_GW_VALID);
    /* a restart: seq far below the last one */
    st.seq = 5000;
    assert_int_equal(gw_store_apply(&s, &st, 40, 0), KV_GW_VALID);
    st.seq = 0;
    assert_int_equal(gw_store_apply(&s, &st, 50, 0), KV_GW_VALID);
    /* a restart after the engine went stale: accepted even with a small gap */
    st.seq = 100;
    assert_int_equal(gw_store_apply(&s, &st, 60, 0), KV_GW_VALID);
    st.seq = 50;
    assert_int_equal(gw_store_apply(&s, &st, 3000, 0), KV_GW_VALID);
    /* states without seq are never judged by order */
    struct kv_gateway_state ns = mk("e2", 1, 1, 1, -1);
    assert_int_equal(gw_store_apply(&s, &ns, 0, 0), KV_GW_VALID);
    assert_int_equal(gw_store_apply(&s, &ns, 0, 0), KV_GW_VALID);
    gw_store_fini(&s);
}

static void test_removal(void **state)
{
    (void)state;
    struct gw_store s;
    assert_int_equal(gw_store_init(&s, 100, 0, 2000, 300000), KV_OK);
    struct kv_gateway_state a = mk("a", 1, 1, 1, 7), b = mk("b", 1, 1, 1, -1);
    assert_int_equal(gw_store_apply(&s, &a, 0, 0), KV_GW_VALID);
    assert_int_equal(gw_store_apply(&s, &b, 200000, 0), KV_GW_VALID);
    assert_non_null(gw_store_find(&s, "a", 300000));
    assert_null(gw_store_find(&s, "a", 300001)); /* invisible at once */
    size_t live = 0;
    GW_STORE_FOREACH(&s, e, 300001)
    {
        (void)e;
        live++;
    }
    assert_int_equal(live, 1);
    assert_int_equal(gw_store_sweep(&s, 300000), 0);
    assert_int_equal(gw_store_sweep(&s, 300001), 1);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.removed, 1);
    assert_non_null(gw_store_find(&s, "b", 300001));
    /* back after removal: a fresh start (its old seq forgotten) */
    a.seq = 1;
    assert_int_equal(gw_store_apply(&s, &a, 400000, 0), KV_GW_VALID);
    assert_int_equal(snap_of(&s, "a", 400000).states, 1);
    /* silent past removal but not swept yet: also a fresh start */
    assert_int_equal(gw_store_apply(&s, &b, 600000, 0), KV_GW_VALID);
    assert_int_equal(snap_of(&s, "b", 600000).states, 1);
    assert_int_equal(gw_store_find(&s, "b", 600000)->hist_n, 1);
    gw_store_fini(&s);
}

static void test_history_bound(void **state)
{
    (void)state;
    struct gw_store s;
    assert_int_equal(gw_store_init(&s, 100, 0, 2000, 300000), KV_OK);
    for (int i = 0; i < 250; i++) {
        struct kv_gateway_state st = mk("e", i, 1, 1, -1);
        assert_int_equal(gw_store_apply(&s, &st, i, 1000 + i), KV_GW_VALID);
    }
    struct gw_engine *e = gw_store_find(&s, "e", 250);
    assert_int_equal(e->hist_n, 100);
    assert_int_equal(gw_store_hist_at(&s, e, 0)->pending_tokens_total, 150);
    assert_int_equal(gw_store_hist_at(&s, e, 0)->recv_wall_ms, 1150);
    assert_int_equal(gw_store_hist_at(&s, e, 99)->pending_tokens_total, 249);
    struct kv_gateway_state full;
    gw_store_hist_state(&s, e, 99, &full);
    assert_string_equal(full.engine_id, "e");
    assert_string_equal(full.scheduling_mode, "m");
    assert_int_equal(full.pending_tokens_total, 249);
    assert_int_equal(full.timestamp_ms, 999999999);
    gw_store_fini(&s);
}

static void test_many_and_alloc_failure(void **state)
{
    (void)state;
    struct gw_store s;
    assert_int_equal(gw_store_init(&s, 4, 0, 2000, 300000), KV_OK);
    char id[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof(id), "engine-%d", i);
        struct kv_gateway_state st = mk(id, i, 1, 1, -1);
        assert_int_equal(gw_store_apply(&s, &st, 0, 0), KV_GW_VALID);
    }
    assert_int_equal(s.n, 1000);
    assert_true(s.nbuckets >= 1000);
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof(id), "engine-%d", i);
        assert_int_equal(snap_of(&s, id, 0).state.pending_tokens_total, i);
    }
    struct kv_gateway_state st = mk("new", 1, 1, 1, -1);
    kv_alloc_fail_at(1);
    assert_int_equal(gw_store_apply(&s, &st, 0, 0), KV_ENOMEM);
    kv_alloc_fail_at(0);
    assert_int_equal(s.n, 1000);
    assert_null(gw_store_find(&s, "new", 0));
    gw_store_fini(&s);
    kv_alloc_fail_at(1);
    assert_int_equal(gw_store_init(&s, 4, 0, 2000, 300000), KV_ENOMEM);
    kv_alloc_fail_at(0);
}

static void test_limits(void **state)
{
    (void)state;
    struct gw_store s;
    assert_int_equal(gw_store_init(&s, 100, 2, 2000, 1000), KV_OK);
    struct kv_gateway_state a = mk("a", 1, 1, 1, -1), b = mk("b", 1, 1, 1, -1),
                            c = mk("c", 1, 1, 1, -1);
    assert_int_equal(gw_store_apply(&s, &a, 0, 0), KV_GW_VALID);
    assert_int_equal(gw_store_apply(&s, &b, 0, 0), KV_GW_VALID);
    assert_int_equal(gw_store_apply(&s, &c, 0, 0), KV_GW_TOO_MANY_ENGINES);
    assert_int_equal(gw_store_apply(&s, &a, 10, 0), KV_GW_VALID); /* known ones still update */
    assert_null(gw_store_find(&s, "c", 10));
    assert_int_equal(gw_store_sweep(&s, 1005), 1); /* b went silent: room again */
    assert_int_equal(gw_store_apply(&s, &c, 1005, 0), KV_GW_VALID);
    /* the history ring grows as needed; a failed growth keeps the smaller ring */
    struct gw_engine *e = gw_store_find(&s, "c", 1005);
    assert_int_equal(e->hist_cap, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(gw_store_apply(&s, &c, 1006 + i, 0), KV_GW_VALID);
    assert_int_equal(e->hist_cap, 8);
    for (int i = 0; i < 3; i++)
        assert_int_equal(gw_store_apply(&s, &c, 1010 + i, 0), KV_GW_VALID);
    assert_int_equal(e->hist_n, 8);
    kv_alloc_fail_at(1);
    c.pending_tokens_total = 42;
    assert_int_equal(gw_store_apply(&s, &c, 1020, 0), KV_GW_VALID);
    kv_alloc_fail_at(0);
    assert_int_equal(e->hist_cap, 8);
    assert_int_equal(e->hist_n, 8);
    assert_int_equal(gw_store_hist_at(&s, e, 7)->pending_tokens_total, 42);
    assert_int_equal(snap_of(&s, "c", 1020).state.pending_tokens_total, 42);
    /* a new engine whose first history allocation fails still gets its state */
    gw_store_sweep(&s, 5000);
    struct kv_gateway_state d = mk("d", 7, 1, 1, -1);
    kv_alloc_fail_at(2);
    assert_int_equal(gw_store_apply(&s, &d, 5000, 0), KV_GW_VALID);
    kv_alloc_fail_at(0);
    assert_int_equal(gw_store_find(&s, "d", 5000)->hist_n, 0);
    assert_int_equal(gw_store_apply(&s, &d, 5001, 0), KV_GW_VALID);
    assert_int_equal(gw_store_find(&s, "d", 5001)->hist_n, 1);
    gw_store_fini(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_staleness),     cmocka_unit_test(test_heartbeat),
        cmocka_unit_test(test_seq),           cmocka_unit_test(test_removal),
        cmocka_unit_test(test_history_bound), cmocka_unit_test(test_many_and_alloc_failure),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
