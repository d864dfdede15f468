/* SPDX-License-Identifier: Apache-2.0 */
/* test_gw_decode.c - the datagram decoder: valid states, every invalid reason, extra keys, -1
 * values, duplicates, precedence, and the encoder's round trip. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "kvstash/gateway.h"

#define GOOD                                                                                       \
    "{\"engine_id\":\"e1\",\"timestamp_ms\":1700000000123,\"latency_pred_ms\":12.5,"               \
    "\"scheduling_mode\":\"latency_optimized\",\"pending_tokens_total\":4096,"                     \
    "\"kv_cache_free_blocks\":10,\"kv_cache_total_blocks\":100,\"engine_capacity\":0.75}"

static enum kv_gateway_reason dec(const char *s, struct kv_gateway_state *st)
{
    return kv_gateway_decode(s, strlen(s), 0, st);
}

/* GOOD with field `key` replaced by `val` (val NULL: key removed). */
static enum kv_gateway_reason dec_with(const char *key, const char *val)
{
    static const char *keys[] = {"engine_id",
                                 "timestamp_ms",
                                 "latency_pred_ms",
                                 "scheduling_mode",
                                 "pending_tokens_total",
                                 "kv_cache_free_blocks",
                                 "kv_cache_total_blocks",
                                 "engine_capacity"};
    static const char *vals[] = {"\"e1\"", "1700000000123", "12.5", "\"fcfs\"", "4096",
                                 "10",     "100",           "0.75"};
    char buf[4096];
    size_t n = 0;
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "{");
    bool first = true;
    for (size_t i = 0; i < 8; i++) {
        const char *v = vals[i];
        if (strcmp(keys[i], key) == 0) {
            if (!val)
                continue;
            v = val;
        }
        n +=
            (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\"%s\":%s", first ? "" : ",", keys[i], v);
        first = false;
    }
    if (strcmp(key, "seq") == 0 && val)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, ",\"seq\":%s", val);
    snprintf(buf + n, sizeof(buf) - n, "}");
    struct kv_gateway_state st;
    return dec(buf, &st);
}

static void test_valid(void **state)
{
    (void)state;
    struct kv_gateway_state st;
    assert_int_equal(dec(GOOD, &st), KV_GW_VALID);
    assert_string_equal(st.engine_id, "e1");
    assert_true(st.timestamp_ms == 1700000000123LL);
    assert_true(st.latency_pred_ms == 12.5);
    assert_string_equal(st.scheduling_mode, "latency_optimized");
    assert_int_equal(st.pending_tokens_total, 4096);
    assert_int_equal(st.kv_cache_free_blocks, 10);
    assert_int_equal(st.kv_cache_total_blocks, 100);
    assert_true(st.engine_capacity == 0.75);
    assert_int_equal(st.seq, -1);
    assert_false(kv_gateway_state_is_heartbeat(&st));
    /* integers are numbers too for latency/capacity; whitespace and newlines are fine */
    assert_int_equal(dec_with("latency_pred_ms", "100"), KV_GW_VALID);
    assert_int_equal(dec_with("engine_capacity", "3"), KV_GW_VALID);
    assert_int_equal(dec_with("engine_id", " \n\"x\" "), KV_GW_VALID);
    assert_int_equal(dec_with("timestamp_ms", "-5"), KV_GW_VALID);
    assert_int_equal(dec_with("scheduling_mode", "\"\""), KV_GW_VALID);
    assert_int_equal(dec_with("engine_id", "\"\\u00e9ng\\u00efne \\\"q\\\"\""), KV_GW_VALID);
}

static void test_unknown_values(void **state)
{
    (void)state;
    struct kv_gateway_state st;
    const char *elrar = "{\"engine_id\":\"127.0.0.1:8000\",\"timestamp_ms\":1,\"latency_pred_ms\":"
                        "-1,\"scheduling_mode\":\"x\",\"pending_tokens_total\":-1,"
                        "\"kv_cache_free_blocks\":-1,\"kv_cache_total_blocks\":-1,"
                        "\"engine_capacity\":-1}";
    assert_int_equal(dec(elrar, &st), KV_GW_VALID);
    assert_int_equal(st.kv_cache_free_blocks, -1);
    assert_int_equal(st.kv_cache_total_blocks, -1);
    assert_int_equal(st.pending_tokens_total, -1);
    assert_true(st.latency_pred_ms == -1.0);
    /* one side unknown: free > total cannot be judged */
    assert_int_equal(dec_with("kv_cache_total_blocks", "-1"), KV_GW_VALID);
    assert_int_equal(dec_with("kv_cache_free_blocks", "-1"), KV_GW_VALID);
    assert_int_equal(dec_with("kv_cache_free_blocks", "100"), KV_GW_VALID); /* free == total */
}

static void test_extra_keys(void **state)
{
    (void)state;
    struct kv_gateway_state st;
    const char *s =
        "{\"zz\":[1,{\"engine_id\":5}],\"engine_id\":\"e2\",\"nested\":{\"timestamp_ms\":\"x\","
        "\"a\":[[],{}]},\"timestamp_ms\":7,\"latency_pred_ms\":1,\"scheduling_mode\":\"m\","
        "\"pending_tokens_total\":0,\"kv_cache_free_blocks\":0,\"kv_cache_total_blocks\":0,"
        "\"engine_capacity\":1,\"model\":\"llama\",\"gpu\":null,\"ok\":true,\"f\":1.5e3}";
    assert_int_equal(dec(s, &st), KV_GW_VALID);
    assert_string_equal(st.engine_id, "e2");
    assert_int_equal(st.timestamp_ms, 7);
    /* seq */
    assert_int_equal(dec_with("seq", "42"), KV_GW_VALID);
    assert_int_equal(dec_with("seq", "0"), KV_GW_VALID);
    assert_int_equal(dec_with("seq", "\"1\""), KV_GW_WRONG_TYPE);
    assert_int_equal(dec_with("seq", "1.5"), KV_GW_WRONG_TYPE);
    assert_int_equal(dec_with("seq", "-1"), KV_GW_OUT_OF_RANGE);
    /* duplicate keys: the last good value wins */
    const char *dup = "{\"engine_id\":\"a\",\"engine_id\":\"b\",\"timestamp_ms\":1,"
                      "\"latency_pred_ms\":1,\"scheduling_mode\":\"m\",\"pending_tokens_total\":0,"
                      "\"kv_cache_free_blocks\":0,\"kv_cache_total_blocks\":0,"
                      "\"engine_capacity\":1}";
    assert_int_equal(dec(dup, &st), KV_GW_VALID);
    assert_string_equal(st.engine_id, "b");
}

static void test_reasons(void **state)
{
    (void)state;
    struct kv_gateway_state st;
    assert_int_equal(kv_gateway_decode("", 0, 0, &st), KV_GW_EMPTY);
    assert_int_equal(kv_gateway_decode(GOOD, strlen(GOOD), 100, &st), KV_GW_OVERSIZE);
    assert_int_equal(kv_gateway_decode(GOOD, strlen(GOOD), strlen(GOOD), &st), KV_GW_VALID);
    assert_int_equal(dec_with("engine_id", "\"\xff\xfe\""), KV_GW_NOT_UTF8);
    assert_int_equal(dec_with("scheduling_mode", "\"\xc3\x28\""), KV_GW_NOT_UTF8);
    assert_int_equal(dec("{", &st), KV_GW_BAD_JSON);
    assert_int_equal(dec("   ", &st), KV_GW_BAD_JSON);
    assert_int_equal(dec(GOOD "x", &st), KV_GW_BAD_JSON);
    assert_int_equal(dec(GOOD GOOD, &st), KV_GW_BAD_JSON);
    assert_int_equal(dec("{'a':1}", &st), KV_GW_BAD_JSON);
    assert_int_equal(dec("{\"a\":1,}", &st), KV_GW_BAD_JSON);
    assert_int_equal(dec("/* c */" GOOD, &st), KV_GW_BAD_JSON);
    assert_int_equal(dec_with("pending_tokens_total", "99999999999999999999999"), KV_GW_BAD_JSON);
    assert_int_equal(kv_gateway_decode("{\"a\"\0:1}", 8, 0, &st), KV_GW_BAD_JSON);
    assert_int_equal(dec("[1,2]", &st), KV_GW_NOT_OBJECT);
    assert_int_equal(dec("5", &st), KV_GW_NOT_OBJECT);
    assert_int_equal(dec("\"s\"", &st), KV_GW_NOT_OBJECT);
    assert_int_equal(dec("null", &st), KV_GW_NOT_OBJECT);
    assert_int_equal(dec("{}", &st), KV_GW_MISSING_FIELD);
    const char *fields[] = {"engine_id",
                            "timestamp_ms",
                            "latency_pred_ms",
                            "scheduling_mode",
                            "pending_tokens_total",
                            "kv_cache_free_blocks",
                            "kv_cache_total_blocks",
                            "engine_capacity"};
    for (size_t i = 0; i < 8; i++) {
        assert_int_equal(dec_with(fields[i], NULL), KV_GW_MISSING_FIELD);
        assert_int_equal(dec_with(fields[i], "null"), KV_GW_WRONG_TYPE);
        assert_int_equal(dec_with(fields[i], "[]"), KV_GW_WRONG_TYPE);
        assert_int_equal(dec_with(fields[i], "{\"a\":1}"), KV_GW_WRONG_TYPE);
        assert_int_equal(dec_with(fields[i], "true"), KV_GW_WRONG_TYPE);
    }
    assert_int_equal(dec_with("engine_id", "5"), KV_GW_WRONG_TYPE);
    assert_int_equal(dec_with("scheduling_mode", "1.5"), KV_GW_WRONG_TYPE);
    assert_int_equal(dec_with("timestamp_ms", "1.7e12"), KV_GW_WRONG_TYPE);
    assert_int_equal(dec_with("timestamp_ms", "\"1\""), KV_GW_WRONG_TYPE);
    assert_int_equal(dec_with("pending_tokens_total", "1.0"), KV_GW_WRONG_TYPE);
    assert_int_equal(dec_with("kv_cache_free_blocks", "\"3\""), KV_GW_WRONG_TYPE);
    assert_int_equal(dec_with("latency_pred_ms", "\"3\""), KV_GW_WRONG_TYPE);
    assert_int_equal(dec_with("pending_tokens_total", "-2"), KV_GW_OUT_OF_RANGE);
    assert_int_equal(dec_with("kv_cache_free_blocks", "-2"), KV_GW_OUT_OF_RANGE);
    assert_int_equal(dec_with("kv_cache_total_blocks", "-100"), KV_GW_OUT_OF_RANGE);
    assert_int_equal(dec_with("latency_pred_ms", "-0.5"), KV_GW_OUT_OF_RANGE);
    assert_int_equal(dec_with("engine_capacity", "-2"), KV_GW_OUT_OF_RANGE);
    assert_int_equal(dec_with("kv_cache_free_blocks", "101"), KV_GW_FREE_GT_TOTAL);
    assert_int_equal(dec_with("engine_id", "\"\""), KV_GW_BAD_STRING);
    assert_int_equal(dec_with("engine_id", "\"a\\u0000b\""), KV_GW_BAD_STRING);
    char longid[300], quoted[310];
    memset(longid, 'x', 256);
    longid[256] = '\0';
    snprintf(quoted, sizeof(quoted), "\"%s\"", longid);
    assert_int_equal(dec_with("engine_id", quoted), KV_GW_BAD_STRING);
    longid[255] = '\0';
    snprintf(quoted, sizeof(quoted), "\"%s\"", longid);
    assert_int_equal(dec_with("engine_id", quoted), KV_GW_VALID);
    longid[64] = '\0';
    snprintf(quoted, sizeof(quoted), "\"%s\"", longid);
    assert_int_equal(dec_with("scheduling_mode", quoted), KV_GW_BAD_STRING);
    /* precedence: syntax over semantics, first semantic problem in document order */
    assert_int_equal(dec("{\"engine_id\":5,", &st), KV_GW_BAD_JSON);
    assert_int_equal(dec("{\"engine_id\":5,\"pending_tokens_total\":-9}", &st), KV_GW_WRONG_TYPE);
    assert_int_equal(dec("{\"pending_tokens_total\":-9,\"engine_id\":5}", &st), KV_GW_OUT_OF_RANGE);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(kv_gateway_reason_name(KV_GW_VALID), "valid");
    assert_string_equal(kv_gateway_reason_name(KV_GW_NOT_UTF8), "not_utf8");
    assert_string_equal(kv_gateway_reason_name(KV_GW_REORDERED), "reordered");
    assert_string_equal(kv_gateway_reason_name(KV_GW_REASON_COUNT), "unknown");
    assert_string_equal(kv_gateway_reason_name(-1), "unknown");
}

static void test_format_roundtrip(void **state)
{
    (void)state;
    struct kv_gateway_state a = {0}, b;
    snprintf(a.engine_id, sizeof(a.engine_id), "eng \"1\"\n\\");
    snprintf(a.scheduling_mode, sizeof(a.scheduling_mode), "throughput");
    a.timestamp_ms = 1700000000999;
    a.latency_pred_ms = 0.125;
    a.pending_tokens_total = 77;
    a.kv_cache_free_blocks = -1;
    a.kv_cache_total_blocks = 50;
    a.engine_capacity = 2;
    a.seq = 9;
    char buf[2048];
    int n = kv_gateway_state_format(&a, buf, sizeof(buf));
    assert_true(n > 0);
    assert_int_equal(kv_gateway_decode(buf, (size_t)n, 0, &b), KV_GW_VALID);
    assert_string_equal(b.engine_id, a.engine_id);
    assert_true(b.latency_pred_ms == a.latency_pred_ms);
    assert_int_equal(b.seq, 9);
    assert_int_equal(b.kv_cache_total_blocks, 50);
    a.seq = -1;
    n = kv_gateway_state_format(&a, buf, sizeof(buf));
    assert_null(strstr(buf, "seq"));
    assert_int_equal(kv_gateway_state_format(&a, buf, 20), KV_E2BIG);
    struct kv_gateway_state bad = a;
    bad.pending_tokens_total = -2;
    assert_int_equal(kv_gateway_state_format(&bad, buf, sizeof(buf)), KV_EINVAL);
    bad = a;
    bad.kv_cache_free_blocks = 51;
    assert_int_equal(kv_gateway_state_format(&bad, buf, sizeof(buf)), KV_EINVAL);
    bad = a;
    bad.engine_id[0] = '\0';
    assert_int_equal(kv_gateway_state_format(&bad, buf, sizeof(buf)), KV_EINVAL);
    bad = a;
    bad.latency_pred_ms = -3;
    assert_int_equal(kv_gateway_state_format(&bad, buf, sizeof(buf)), KV_EINVAL);
}

/* A large datagram (escaped strings past the decoder's stack arena) under failing allocations:
 * never a crash or a leak, and either decoded or dropped as bad_json. */
static void test_decode_alloc_failure(void **state)
{
    (void)state;
    static char big[40000];
    size_t n = (size_t)snprintf(big, sizeof(big), "{\"pad\":\"");
    for (int i = 0; i < 2000; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, "\\n\\t\\u00e9");
    snprintf(big + n, sizeof(big) - n, "\",%s", GOOD + 1);
    struct kv_gateway_state st;
    assert_int_equal(dec(big, &st), KV_GW_VALID);
    assert_string_equal(st.engine_id, "e1");
    int failed = 0;
    for (long i = 1; i <= 40; i++) {
        kv_alloc_fail_at(i);
        enum kv_gateway_reason r = dec(big, &st);
        kv_alloc_fail_at(0);
        assert_true(r == KV_GW_VALID || r == KV_GW_BAD_JSON);
        failed += r == KV_GW_BAD_JSON;
    }
    assert_true(failed > 0); /* the failure path was taken */
}

/* Numbers are converted by the decoder itself (yajl hands over the token text): the same values
 * as strtod, bit for bit, and yajl's overflow rules (an integer beyond a long long's magnitude
 * and a real beyond DBL_MAX are syntax errors, an underflow is not). */
static void check_real(const char *num)
{
    struct kv_gateway_state st;
    char buf[4096];
    snprintf(buf, sizeof(buf),
             "{\"engine_id\":\"e\",\"timestamp_ms\":1,\"latency_pred_ms\":%s,"
             "\"scheduling_mode\":\"m\",\"pending_tokens_total\":1,\"kv_cache_free_blocks\":1,"
             "\"kv_cache_total_blocks\":2,\"engine_capacity\":1}",
             num);
    double want = strtod(num, NULL);
    enum kv_gateway_reason r = dec(buf, &st);
    if (!strpbrk(num, ".eE")) { /* an integer token: yajl's range is +-LLONG_MAX */
        errno = 0;
        long long v = strtoll(num, NULL, 10);
        if (errno == ERANGE || v == LLONG_MIN) {
            assert_int_equal(r, KV_GW_BAD_JSON);
            return;
        }
    }
    if (want < 0 && want != -1.0) {
        assert_int_equal(r, KV_GW_OUT_OF_RANGE);
        return;
    }
    if (r != KV_GW_VALID || memcmp(&st.latency_pred_ms, &want, sizeof(want)) != 0)
        fail_msg("%s: reason %d, got %.17g, strtod %.17g", num, r, st.latency_pred_ms, want);
}

static void test_numbers(void **state)
{
    (void)state;
    static const char *reals[] = {
        "0.5",
        "107.0",
        "0.1",
        "0.3",
        "-1.0",
        "-1",
        "123456789012345.6",
        "1.5e3",
        "1E-5",
        "0e0",
        "-0.0",
        "1e-400",
        "2.2250738585072014e-308",
        "0.000000000000000000000000000000000000000000000000000000000000000000000000000001",
        "9007199254740993.0",
        "1234567890123456789.5",
        "0.30000000000000004",
    };
    for (size_t i = 0; i < sizeof(reals) / sizeof(reals[0]); i++)
        check_real(reals[i]);
    /* random decimals around the fast path's edges (15 digits, up to 22 after the point) */
    srand(7);
    for (int i = 0; i < 20000; i++) {
        char num[64];
        int nd = 1 + rand() % 19, point = rand() % (nd + 1);
        size_t n = 0;
        for (int k = 0; k < nd; k++) {
            if (k == point && k > 0)
                num[n++] = '.';
            num[n++] =
                (char)('0' + (k == 0 && nd > 1 && point != 1 ? 1 + rand() % 9 : rand() % 10));
        }
        num[n] = '\0';
        if (num[0] == '0' && n > 1 && num[1] != '.')
            continue; /* a leading zero is not JSON */
        check_real(num);
    }
    /* overflow: a syntax error, wherever the number is (a known key, an unknown key, top level) */
    assert_int_equal(dec_with("latency_pred_ms", "1e309"), KV_GW_BAD_JSON);
    assert_int_equal(dec_with("engine_capacity", "-1e999"), KV_GW_BAD_JSON);
    assert_int_equal(dec_with("timestamp_ms", "9223372036854775808"), KV_GW_BAD_JSON);
    assert_int_equal(dec_with("timestamp_ms", "-9223372036854775808"), KV_GW_BAD_JSON);
    assert_int_equal(dec_with("timestamp_ms", "99999999999999999999999"), KV_GW_BAD_JSON);
    assert_int_equal(dec_with("timestamp_ms", "9223372036854775807"), KV_GW_VALID);
    assert_int_equal(dec_with("timestamp_ms", "-9223372036854775807"), KV_GW_VALID);
    assert_int_equal(dec_with("timestamp_ms", "1.5"), KV_GW_WRONG_TYPE);
    assert_int_equal(dec_with("timestamp_ms", "1e3"), KV_GW_WRONG_TYPE);
    assert_int_equal(dec_with("seq", "1e999"), KV_GW_BAD_JSON);
    struct kv_gateway_state st;
    assert_int_equal(dec("{\"x\":1e999}", &st), KV_GW_BAD_JSON);
    assert_int_equal(dec("{\"x\":[123456789012345678901234567890]}", &st), KV_GW_BAD_JSON);
    assert_int_equal(dec("{\"x\":1234567890123456789012345678901234567890.5}", &st),
                     KV_GW_MISSING_FIELD);
    assert_int_equal(dec("1e999", &st), KV_GW_BAD_JSON);
    assert_int_equal(dec("12.5", &st), KV_GW_NOT_OBJECT);
    assert_int_equal(dec("-12", &st), KV_GW_NOT_OBJECT);
    /* a top-level number at the very end of an unterminated buffer is read within its bounds */
    assert_int_equal(kv_gateway_decode("12345.5", 5, 0, &st), KV_GW_NOT_OBJECT);
    /* integers for the counts, exactly */
    char buf[512];
    snprintf(buf, sizeof(buf),
             "{\"engine_id\":\"e\",\"timestamp_ms\":-1700000000123,\"latency_pred_ms\":0,"
             "\"scheduling_mode\":\"m\",\"pending_tokens_total\":123456789012345678,"
             "\"kv_cache_free_blocks\":0,\"kv_cache_total_blocks\":9223372036854775807,"
             "\"engine_capacity\":-1,\"seq\":42}");
    assert_int_equal(dec(buf, &st), KV_GW_VALID);
    assert_true(st.timestamp_ms == -1700000000123LL);
    assert_true(st.pending_tokens_total == 123456789012345678LL);
    assert_true(st.kv_cache_total_blocks == 9223372036854775807LL);
    assert_true(st.kv_cache_free_blocks == 0 && st.seq == 42);
    assert_true(st.engine_capacity == -1.0 && st.latency_pred_ms == 0.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_unknown_values),
        cmocka_unit_test(test_extra_keys),
        cmocka_unit_test(test_reasons),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_format_roundtrip),
        cmocka_unit_test(test_decode_alloc_failure),
        cmocka_unit_test(test_numbers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
