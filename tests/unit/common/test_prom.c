/* SPDX-License-Identifier: Apache-2.0 */
/* test_prom.c - the Prometheus text writer: exact output, escaping, conventions, errors. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/prom.h"

static void test_counter_gauge(void **state)
{
    (void)state;
    struct kv_buf b;
    kv_buf_init(&b);
    struct kv_prom p;
    kv_prom_init(&p, &b);
    kv_prom_one(&p, "kv_puts_total", KV_PROM_COUNTER, "Puts.", 42);
    kv_prom_family(&p, "kv_used_bytes", KV_PROM_GAUGE, "Used bytes.");
    struct kv_prom_label l[] = {{"node", "n1"}, {"tier", "dram"}};
    kv_prom_sample(&p, l, 2, 1.5);
    kv_prom_sample(&p, l, 1, 18446744073709551616.0);
    kv_prom_sample(&p, NULL, 0, NAN);
    kv_prom_sample(&p, NULL, 0, -INFINITY);
    assert_int_equal(kv_prom_end(&p), KV_OK);
    assert_string_equal(b.data, "# HELP kv_puts_total Puts.\n"
                                "# TYPE kv_puts_total counter\n"
                                "kv_puts_total 42\n"
                                "# HELP kv_used_bytes Used bytes.\n"
                                "# TYPE kv_used_bytes gauge\n"
                                "kv_used_bytes{node=\"n1\",tier=\"dram\"} 1.5\n"
                                "kv_used_bytes{node=\"n1\"} 1.8446744073709552e+19\n"
                                "kv_used_bytes NaN\n"
                                "kv_used_bytes -Inf\n");
    kv_buf_fini(&b);
}

static void test_escaping(void **state)
{
    (void)state;
    struct kv_buf b;
    kv_buf_init(&b);
    struct kv_prom p;
    kv_prom_init(&p, &b);
    kv_prom_family(&p, "kv_x", KV_PROM_GAUGE, "a \\ b\nc \"q\"");
    struct kv_prom_label l[] = {{"engine", "a\"b\\c\nd"}};
    kv_prom_sample(&p, l, 1, 0);
    assert_int_equal(kv_prom_end(&p), KV_OK);
    assert_string_equal(b.data, "# HELP kv_x a \\\\ b\\nc \"q\"\n"
                                "# TYPE kv_x gauge\n"
                                "kv_x{engine=\"a\\\"b\\\\c\\nd\"} 0\n");
    kv_buf_fini(&b);
}

static void test_histogram(void **state)
{
    (void)state;
    struct kv_buf b;
    kv_buf_init(&b);
    struct kv_prom p;
    kv_prom_init(&p, &b);
    kv_prom_family(&p, "kv_rpc_duration_seconds", KV_PROM_HISTOGRAM, "RPC time.");
    const double le[] = {0.001, 0.01};
    const uint64_t n[] = {2, 3, 1};
    struct kv_prom_label l[] = {{"op", "get"}};
    kv_prom_hist(&p, l, 1, le, n, 2, 0.25);
    kv_prom_hist(&p, NULL, 0, le, n, 2, 0.25);
    assert_int_equal(kv_prom_end(&p), KV_OK);
    assert_string_equal(b.data, "# HELP kv_rpc_duration_seconds RPC time.\n"
                                "# TYPE kv_rpc_duration_seconds histogram\n"
                                "kv_rpc_duration_seconds_bucket{op=\"get\",le=\"0.001\"} 2\n"
                                "kv_rpc_duration_seconds_bucket{op=\"get\",le=\"0.01\"} 5\n"
                                "kv_rpc_duration_seconds_bucket{op=\"get\",le=\"+Inf\"} 6\n"
                                "kv_rpc_duration_seconds_sum{op=\"get\"} 0.25\n"
                                "kv_rpc_duration_seconds_count{op=\"get\"} 6\n"
                                "kv_rpc_duration_seconds_bucket{le=\"0.001\"} 2\n"
                                "kv_rpc_duration_seconds_bucket{le=\"0.01\"} 5\n"
                                "kv_rpc_duration_seconds_bucket{le=\"+Inf\"} 6\n"
                                "kv_rpc_duration_seconds_sum 0.25\n"
                                "kv_rpc_duration_seconds_count 6\n");
    kv_buf_fini(&b);
}

/* Each misuse is refused with KV_EINVAL, and the error sticks: nothing written afterwards. */
static void expect_einval(void (*fn)(struct kv_prom *))
{
    struct kv_buf b;
    kv_buf_init(&b);
    struct kv_prom p;
    kv_prom_init(&p, &b);
    fn(&p);
    assert_int_equal(kv_prom_end(&p), KV_EINVAL);
    size_t len = b.len;
    kv_prom_one(&p, "kv_ok", KV_PROM_GAUGE, "fine", 1);
    assert_int_equal(b.len, len);
    assert_int_equal(kv_prom_end(&p), KV_EINVAL);
    kv_buf_fini(&b);
}

static void bad_counter_name(struct kv_prom *p)
{
    kv_prom_one(p, "kv_puts", KV_PROM_COUNTER, "no _total", 1);
}

static void bad_gauge_name(struct kv_prom *p)
{
    kv_prom_one(p, "kv_nodes_total", KV_PROM_GAUGE, "gauge with _total", 1);
}

static void bad_chars(struct kv_prom *p)
{
    kv_prom_one(p, "kv-dash", KV_PROM_GAUGE, "dash", 1);
}

static void bad_first_digit(struct kv_prom *p)
{
    kv_prom_one(p, "1kv", KV_PROM_GAUGE, "digit", 1);
}

static void bad_label(struct kv_prom *p)
{
    kv_prom_family(p, "kv_g", KV_PROM_GAUGE, "g");
    struct kv_prom_label l[] = {{"a:b", "v"}};
    kv_prom_sample(p, l, 1, 1);
}

static void reserved_le(struct kv_prom *p)
{
    kv_prom_family(p, "kv_g", KV_PROM_GAUGE, "g");
    struct kv_prom_label l[] = {{"le", "1"}};
    kv_prom_sample(p, l, 1, 1);
}

static void sample_without_family(struct kv_prom *p)
{
    kv_prom_sample(p, NULL, 0, 1);
}

static void hist_in_gauge(struct kv_prom *p)
{
    const double le[] = {1};
    const uint64_t n[] = {1, 1};
    kv_prom_family(p, "kv_g", KV_PROM_GAUGE, "g");
    kv_prom_hist(p, NULL, 0, le, n, 1, 1);
}

static void hist_bad_bounds(struct kv_prom *p)
{
    const double le[] = {2, 1};
    const uint64_t n[] = {1, 1, 1};
    kv_prom_family(p, "kv_h_seconds", KV_PROM_HISTOGRAM, "h");
    kv_prom_hist(p, NULL, 0, le, n, 2, 1);
}

static void test_misuse(void **state)
{
    (void)state;
    expect_einval(bad_counter_name);
    expect_einval(bad_gauge_name);
    expect_einval(bad_chars);
    expect_einval(bad_first_digit);
    expect_einval(bad_label);
    expect_einval(reserved_le);
    expect_einval(sample_without_family);
    expect_einval(hist_in_gauge);
    expect_einval(hist_bad_bounds);
}

static void test_colon_names(void **state)
{
    (void)state;
    struct kv_buf b;
    kv_buf_init(&b);
    struct kv_prom p;
    kv_prom_init(&p, &b);
    kv_prom_one(&p, "vllm:num_requests_running", KV_PROM_GAUGE, "vLLM router name", 3);
    assert_int_equal(kv_prom_end(&p), KV_OK);
    p.lax = true; /* a compatibility page: a gauge named _total passes */
    kv_prom_one(&p, "vllm:healthy_pods_total", KV_PROM_GAUGE, "vLLM router name", 1);
    assert_int_equal(kv_prom_end(&p), KV_OK);
    assert_non_null(strstr(b.data, "\nvllm:num_requests_running 3\n"));
    kv_buf_fini(&b);
}

static void test_process(void **state)
{
    (void)state;
    struct kv_buf b;
    kv_buf_init(&b);
    struct kv_prom p;
    kv_prom_init(&p, &b);
    kv_prom_process(&p);
    assert_int_equal(kv_prom_end(&p), KV_OK);
    const char *rss = strstr(b.data, "\nprocess_resident_memory_bytes ");
    assert_non_null(rss);
    double v = strtod(rss + strlen("\nprocess_resident_memory_bytes "), NULL);
    assert_true(v > 100000); /* a test process is resident in more than 100 kB */
    const char *fds = strstr(b.data, "\nprocess_open_fds ");
    assert_non_null(fds);
    assert_true(strtod(fds + strlen("\nprocess_open_fds "), NULL) >= 3);
    assert_non_null(strstr(b.data, "\nprocess_start_time_seconds "));
    assert_non_null(strstr(b.data, "# TYPE process_cpu_seconds_total counter\n"));
    kv_buf_fini(&b);
}

static void test_alloc_failure(void **state)
{
    (void)state;
    /* fail the Nth allocation for N = 1..: every run ends with KV_ENOMEM or a full page */
    for (int n = 1; n < 50; n++) {
        struct kv_buf b;
        kv_buf_init(&b);
        struct kv_prom p;
        kv_prom_init(&p, &b);
        kv_alloc_fail_at(n);
        for (int i = 0; i < 200; i++)
            kv_prom_one(&p, "kv_some_long_metric_name_for_growth", KV_PROM_GAUGE, "help", i);
        kv_alloc_fail_at(0);
        int rc = kv_prom_end(&p);
        assert_true(rc == KV_OK || rc == KV_ENOMEM);
        kv_buf_fini(&b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_gauge), cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_histogram),     cmocka_unit_test(test_misuse),
        cmocka_unit_test(test_colon_names),   cmocka_unit_test(test_process),
        cmocka_unit_test(test_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
