/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_client_replay.c - the trace-line parser of `kvstash replay`: the real traces' lines
 * parse, every malformed field is rejected with a message naming it, and the first lines of
 * both shipped traces (../shared/traces, when present) parse with len(hash_ids) ==
 * ceil(input_length / 512).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/util.h"
#include "kv_skip.h"
#include "store/replay.h"

static int parse(const char *line, struct kv_trace_req *r, char *err, size_t errlen)
{
    return kv_trace_parse_line(line, strlen(line), r, err, errlen);
}

static void test_good(void **state)
{
    (void)state;
    struct kv_trace_req r;
    char err[256];
    assert_int_equal(parse("{\"timestamp\": 27482, \"input_length\": 6955, \"output_length\": 52, "
                           "\"hash_ids\": [46, 47, 2353]}",
                           &r, err, sizeof(err)),
                     KV_OK);
    assert_int_equal(r.timestamp_ms, 27482);
    assert_int_equal(r.input_length, 6955);
    assert_int_equal(r.output_length, 52);
    assert_int_equal(r.n_ids, 3);
    assert_int_equal(r.hash_ids[2], 2353);
    kv_trace_req_fini(&r);
    assert_int_equal(
        parse("{\"timestamp\":0,\"hash_ids\":[],\"other\":{\"x\":[1]}}", &r, err, sizeof(err)),
        KV_OK);
    assert_int_equal(r.n_ids, 0);
    assert_null(r.hash_ids);
    assert_int_equal(r.input_length, -1);
    kv_trace_req_fini(&r);
    kv_trace_req_fini(NULL);
}

static void test_bad(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        const char *needle;
    } cases[] = {
        {"", "line 1"},
        {"[1,2]", "not a JSON object"},
        {"{\"hash_ids\":[1]}", "\"timestamp\""},
        {"{\"timestamp\":1}", "\"hash_ids\""},
        {"{\"timestamp\":-5,\"hash_ids\":[1]}", "negative"},
        {"{\"timestamp\":1.5,\"hash_ids\":[1]}", "not an integer"},
        {"{\"timestamp\":\"1\",\"hash_ids\":[1]}", "not an integer"},
        {"{\"timestamp\":1,\"input_length\":-1,\"hash_ids\":[1]}", "input_length"},
        {"{\"timestamp\":1,\"output_length\":true,\"hash_ids\":[1]}", "output_length"},
        {"{\"timestamp\":1,\"hash_ids\":{}}", "not an array"},
        {"{\"timestamp\":1,\"hash_ids\":[1,2,-3]}", "hash_ids[2]"},
        {"{\"timestamp\":1,\"hash_ids\":[1,null]}", "hash_ids[1]"},
        {"{\"timestamp\":1,\"hash_ids\":[1,2]", "line 1"},
        {"{\"timestamp\":1,\"hash_ids\":[1]} 7", "line 1"},
    };
    for (size_t i = 0; i < KV_ARRAY_SIZE(cases); i++) {
        struct kv_trace_req r;
        char err[256] = "";
        int rc = parse(cases[i].line, &r, err, sizeof(err));
        if (rc != KV_EPROTO || !strstr(err, cases[i].needle)) {
            print_error("case %zu '%s': rc %d err '%s' (want '%s')\n", i, cases[i].line, rc, err,
                        cases[i].needle);
            fail();
        }
        assert_null(r.hash_ids);
    }
    /* an embedded NUL is an error, not a silent truncation */
    const char nul[] = "{\"timestamp\":1,\"hash_ids\":[1]}\0{";
    struct kv_trace_req r;
    char err[256];
    assert_int_equal(kv_trace_parse_line(nul, sizeof(nul) - 1, &r, err, sizeof(err)), KV_EPROTO);
    assert_non_null(strstr(err, "NUL"));
}

static void test_real_traces(void **state)
{
    (void)state;
    const char *src = getenv("KVSTASH_SOURCE_DIR");
    const char *names[] = {"conversation_trace.jsonl", "synthetic_trace.jsonl"};
    int checked = 0;
    for (size_t t = 0; t < KV_ARRAY_SIZE(names); t++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/../shared/traces/%s", src ? src : ".", names[t]);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        char line[65536];
        for (int i = 0; i < 200 && fgets(line, sizeof(line), f); i++) {
            struct kv_trace_req r;
            char err[256];
            size_t n = strcspn(line, "\n");
            assert_int_equal(kv_trace_parse_line(line, n, &r, err, sizeof(err)), KV_OK);
            assert_int_equal(r.n_ids, (size_t)((r.input_length + 511) / 512));
            kv_trace_req_fini(&r);
            checked++;
        }
        fclose(f);
    }
    if (!checked)
        KV_SKIP("traces not found in $KVSTASH_SOURCE_DIR/../shared/traces");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_real_traces),
    };
    return kv_skip_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
