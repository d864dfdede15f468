/* SPDX-License-Identifier: Apache-2.0 */
/* test_gateway.c - the gateway in-process: ingest and UDP paths, counters, snapshots, history,
 * the JSONL log with rotation and reopen, start-up errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/util.h"
#include "kvstash/gateway.h"

#define STATE(id, pending)                                                                         \
    "{\"engine_id\":\"" id "\",\"timestamp_ms\":1,\"latency_pred_ms\":5,"                          \
    "\"scheduling_mode\":\"m\",\"pending_tokens_total\":" #pending ","                             \
    "\"kv_cache_free_blocks\":-1,\"kv_cache_total_blocks\":-1,\"engine_capacity\":1}"

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/kvgw-test-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static struct kv_gateway *start(const char *log, uint64_t max_bytes)
{
    struct kv_gateway_opts o;
    kv_gateway_opts_init(&o);
    o.udp_port = 0;
    o.log_file = log;
    o.log_max_bytes = max_bytes;
    o.log_keep = 2;
    struct kv_gateway *g = NULL;
    assert_int_equal(kv_gateway_start(&o, &g), KV_OK);
    return g;
}

static void test_ingest_and_snapshots(void **state)
{
    (void)state;
    struct kv_gateway *g = start(NULL, 0);
    assert_true(kv_gateway_udp_port(g) > 0);
    assert_int_equal(kv_gateway_http_port(g), 0);
    const char *b = STATE("b", 2), *a = STATE("a", 1);
    assert_int_equal(kv_gateway_ingest(g, b, strlen(b), false), KV_GW_VALID);
    assert_int_equal(kv_gateway_ingest(g, a, strlen(a), true), KV_GW_VALID);
    assert_int_equal(kv_gateway_ingest(g, "{", 1, false), KV_GW_BAD_JSON);
    assert_int_equal(kv_gateway_ingest(g, "", 0, false), KV_GW_EMPTY);
    struct kv_gateway_stats s;
    assert_int_equal(kv_gateway_stats(g, &s), KV_OK);
    assert_int_equal(s.total_received, 4);
    assert_int_equal(s.valid_states, 2);
    assert_int_equal(s.invalid_states, 2);
    assert_int_equal(s.unicast_received, 3);
    assert_int_equal(s.broadcast_received, 1);
    assert_int_equal(s.invalid_by_reason[KV_GW_BAD_JSON], 1);
    assert_int_equal(s.invalid_by_reason[KV_GW_EMPTY], 1);
    assert_int_equal(s.total_engines, 2);
    assert_int_equal(s.active_engines, 2);
    assert_true(s.last_received_wall_ms > 0);
    struct kv_gateway_engine *arr;
    size_t n;
    assert_int_equal(kv_gateway_engines(g, &arr, &n), KV_OK);
    assert_int_equal(n, 2);
    assert_string_equal(arr[0].state.engine_id, "a"); /* sorted */
    assert_string_equal(arr[1].state.engine_id, "b");
    assert_true(arr[0].fresh);
    kv_gateway_free(arr);
    struct kv_gateway_engine e;
    assert_int_equal(kv_gateway_engine_get(g, "b", &e), KV_OK);
    assert_int_equal(e.state.pending_tokens_total, 2);
    assert_int_equal(kv_gateway_engine_get(g, "zz", &e), KV_ENOENT);
    struct kv_gateway_history_entry *h;
    assert_int_equal(kv_gateway_history(g, "a", &h, &n), KV_OK);
    assert_int_equal(n, 1);
    kv_gateway_free(h);
    assert_int_equal(kv_gateway_history(g, "zz", &h, &n), KV_ENOENT);
    kv_gateway_stop(g);
    kv_gateway_stop(NULL);
}

static void test_udp(void **state)
{
    (void)state;
    struct kv_gateway *g = start(NULL, 0);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", kv_gateway_udp_port(g));
    struct kv_gateway_sender *snd;
    assert_int_equal(kv_gateway_sender_open(addr, false, &snd), KV_OK);
    struct kv_gateway_state st = {0};
    snprintf(st.engine_id, sizeof(st.engine_id), "udp-engine");
    st.engine_capacity = 1;
    st.kv_cache_free_blocks = 3;
    st.kv_cache_total_blocks = 8;
    for (int i = 0; i < 10; i++) {
        st.seq = i;
        st.pending_tokens_total = i;
        assert_int_equal(kv_gateway_sender_send(snd, &st), KV_OK);
    }
    st.seq = 2; /* reordered */
    assert_int_equal(kv_gateway_sender_send(snd, &st), KV_OK);
    kv_gateway_sender_close(snd);
    assert_int_equal(kv_gateway_send_state(addr, &st), KV_OK);
    struct kv_gateway_stats s = {0};
    for (int i = 0; i < 200 && s.total_received < 12; i++) {
        kv_sleep_ms(10);
        kv_gateway_stats(g, &s);
    }
    assert_int_equal(s.total_received, 12);
    assert_int_equal(s.valid_states, 10);
    assert_int_equal(s.invalid_by_reason[KV_GW_REORDERED], 2);
    assert_int_equal(s.unicast_received, 12);
    assert_true(s.recv_calls >= 1);
    struct kv_gateway_engine e;
    assert_int_equal(kv_gateway_engine_get(g, "udp-engine", &e), KV_OK);
    assert_int_equal(e.state.pending_tokens_total, 9);
    assert_int_equal(e.state.kv_cache_free_blocks, 3);
    assert_int_equal(kv_gateway_sender_open("nohostport", false, &snd), KV_EINVAL);
    assert_int_equal(kv_gateway_sender_open("127.0.0.1:0", false, &snd), KV_EINVAL);
    kv_gateway_stop(g);
}

static size_t count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = 0;
    int c;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

static void wait_lines(struct kv_gateway *g, uint64_t want)
{
    struct kv_gateway_stats s = {0};
    for (int i = 0; i < 300 && s.log_lines < want; i++) {
        kv_sleep_ms(10);
        kv_gateway_stats(g, &s);
    }
    assert_int_equal(s.log_lines, want);
}

static void test_log_rotation_and_reopen(void **state)
{
    (void)state;
    char path[128], p1[140], p2[140], p3[140], moved[140];
    snprintf(path, sizeof(path), "%s/states.jsonl", tmpdir);
    snprintf(p1, sizeof(p1), "%s.1", path);
    snprintf(p2, sizeof(p2), "%s.2", path);
    snprintf(p3, sizeof(p3), "%s.3", path);
    snprintf(moved, sizeof(moved), "%s/moved.jsonl", tmpdir);
    const char *st = STATE("e", 1);
    size_t line = strlen("{\"timestamp\": 1700000000.123, \"state\": }\n") + strlen(st);
    /* room for 3 lines per file */
    struct kv_gateway *g = start(path, (uint64_t)(3 * line + line / 2));
    for (int i = 0; i < 10; i++)
        assert_int_equal(kv_gateway_ingest(g, st, strlen(st), false), KV_GW_VALID);
    wait_lines(g, 10);
    struct kv_gateway_stats s;
    kv_gateway_stats(g, &s);
    assert_true(s.log_rotations >= 3);
    assert_int_equal(count_lines(path) + count_lines(p1) + count_lines(p2), 10 - 3);
    assert_int_equal(count_lines(p1), 3);
    assert_int_equal(count_lines(p2), 3);
    assert_int_equal(access(p3, F_OK), -1); /* keep = 2 */
    /* every line is one JSON object with the receive time and the state */
    FILE *f = fopen(p1, "r");
    char buf[1024];
    assert_non_null(fgets(buf, sizeof(buf), f));
    fclose(f);
    assert_true(kv_startswith(buf, "{\"timestamp\": "));
    assert_non_null(strstr(buf, "\"state\": {\"engine_id\":\"e\""));
    /* logrotate-style: move the file away, ask for a reopen, new lines go to a new file */
    assert_int_equal(rename(path, moved), 0);
    kv_gateway_reopen_log(g);
    kv_sleep_ms(500);
    assert_int_equal(kv_gateway_ingest(g, st, strlen(st), false), KV_GW_VALID);
    wait_lines(g, 11);
    assert_int_equal(count_lines(path), 1);
    /* pretty-printed datagrams stay one line */
    const char *pretty = "{\n \"engine_id\": \"p\",\r\n \"timestamp_ms\": 1, \"latency_pred_ms\": "
                         "1,\n\"scheduling_mode\": \"m\", \"pending_tokens_total\": 0,\n"
                         "\"kv_cache_free_blocks\": 0, \"kv_cache_total_blocks\": 0,\n"
                         "\"engine_capacity\": 1\n}";
    assert_int_equal(kv_gateway_ingest(g, pretty, strlen(pretty), false), KV_GW_VALID);
    wait_lines(g, 12);
    assert_int_equal(count_lines(path), 2);
    kv_gateway_stop(g);
}

static void test_start_errors(void **state)
{
    (void)state;
    struct kv_gateway_opts o;
    struct kv_gateway *g = NULL, *g2 = NULL;
    char err[256];
    kv_gateway_opts_init(&o);
    o.err = err;
    o.errlen = sizeof(err);
    o.udp_port = 70000;
    assert_int_equal(kv_gateway_start(&o, &g), KV_EINVAL);
    o.udp_port = 0;
    o.bind_address = "not an address";
    assert_int_equal(kv_gateway_start(&o, &g), KV_EINVAL);
    assert_non_null(strstr(err, "not an address"));
    o.bind_address = "127.0.0.1";
    o.http_addr = "nonsense";
    assert_int_equal(kv_gateway_start(&o, &g), KV_EINVAL);
    o.http_addr = "127.0.0.1:0";
    assert_int_equal(kv_gateway_start(&o, &g), KV_OK);
    assert_true(kv_gateway_http_port(g) > 0);
    /* the same UDP port again: busy, with a message naming it */
    o.udp_port = kv_gateway_udp_port(g);
    assert_int_equal(kv_gateway_start(&o, &g2), KV_EBUSY);
    assert_non_null(strstr(err, "Address already in use"));
    /* the same HTTP port */
    char http[64];
    snprintf(http, sizeof(http), "127.0.0.1:%u", kv_gateway_http_port(g));
    o.udp_port = 0;
    o.http_addr = http;
    assert_int_equal(kv_gateway_start(&o, &g2), KV_EBUSY);
    assert_non_null(strstr(err, "HTTP"));
    /* a log file that cannot be opened */
    o.http_addr = NULL;
    o.log_file = "/nonexistent-dir/x.jsonl";
    assert_true(kv_gateway_start(&o, &g2) < 0);
    assert_non_null(strstr(err, "/nonexistent-dir/x.jsonl"));
    kv_gateway_stop(g);
}

/* A log writer stuck on I/O (a FIFO nobody reads) never blocks ingestion: lines beyond the
 * buffer are dropped and counted, and every line is either written or counted as dropped. */
static void test_log_full_buffer_drops(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof(path), "%s/fifo", tmpdir);
    assert_int_equal(mkfifo(path, 0600), 0);
    int rd = open(path, O_RDONLY | O_NONBLOCK);
    assert_true(rd >= 0);
    struct kv_gateway_opts o;
    kv_gateway_opts_init(&o);
    o.udp_port = 0;
    o.log_file = path;
    o.log_max_bytes = 0;
    o.log_buffer_bytes = 8192;
    struct kv_gateway *g = NULL;
    assert_int_equal(kv_gateway_start(&o, &g), KV_OK);
    const char *st = STATE("e", 1);
    int64_t t0 = kv_now_ms();
    for (int i = 0; i < 2000; i++) /* ~600 KB of lines into a 64 KiB pipe */
        assert_int_equal(kv_gateway_ingest(g, st, strlen(st), false), KV_GW_VALID);
    assert_true(kv_now_ms() - t0 < 20000); /* it returned: never blocked on the writer */
    struct kv_gateway_stats s;
    kv_gateway_stats(g, &s);
    assert_true(s.log_dropped > 0);
    /* drain the pipe until every line is accounted for */
    char buf[65536];
    for (int i = 0; i < 2000; i++) {
        ssize_t r = read(rd, buf, sizeof(buf));
        (void)r;
        kv_gateway_stats(g, &s);
        if (s.log_lines + s.log_dropped == 2000)
            break;
        kv_sleep_ms(5);
    }
    assert_int_equal(s.log_lines + s.log_dropped, 2000);
    assert_int_equal(s.valid_states, 2000);
    kv_gateway_stop(g);
    close(rd);
}

/* Every allocation of a start (with log and HTTP), failed in turn: a clean error or a working
 * gateway, never a crash or a leak (ASan checks the leaks). */
static void test_start_alloc_failures(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof(path), "%s/alloc.jsonl", tmpdir);
    int ok = 0, failed = 0;
    for (long i = 1; i <= 60; i++) {
        struct kv_gateway_opts o;
        kv_gateway_opts_init(&o);
        o.udp_port = 0;
        o.http_addr = "127.0.0.1:0";
        o.log_file = path;
        struct kv_gateway *g = NULL;
        kv_alloc_fail_at(i);
        int rc = kv_gateway_start(&o, &g);
        kv_alloc_fail_at(0);
        if (rc == KV_OK) {
            const char *st = STATE("x", 1);
            assert_int_equal(kv_gateway_ingest(g, st, strlen(st), false), KV_GW_VALID);
            kv_gateway_stop(g);
            ok++;
        } else {
            assert_int_equal(rc, KV_ENOMEM);
            failed++;
        }
    }
    assert_true(failed >= 5);
    assert_true(ok >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ingest_and_snapshots),
        cmocka_unit_test(test_udp),
        cmocka_unit_test(test_log_rotation_and_reopen),
        cmocka_unit_test(test_start_errors),
        cmocka_unit_test(test_start_alloc_failures),
        cmocka_unit_test(test_log_full_buffer_drops),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
