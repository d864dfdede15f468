/* SPDX-License-Identifier: Apache-2.0 */
/* test_gateway.c - the gateway in-process: ingest and UDP paths (both receive paths: recvmmsg
 * and io_uring, and the fallback from io_uring when it is refused), oversize datagrams and
 * bursts, counters, snapshots, history, the JSONL log with rotation and reopen, start-up
 * errors, /health and /ready (over HTTP) turning 503 when the UDP receive thread has exited. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/json.h"
#include "common/util.h"
#include "gateway/gw_int.h"
#include "kvstash/gateway.h"
#include "kv_skip.h"

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

/* Starts a gateway on a free UDP port with the given receive path (and max_datagram, 0 = the
 * default); NULL (the caller skips) when io_uring was asked for and the kernel has none. */
static struct kv_gateway *start_io(int udp_io, size_t max_datagram)
{
    struct kv_gateway_opts o;
    kv_gateway_opts_init(&o);
    o.udp_port = 0;
    o.udp_io = udp_io;
    if (max_datagram)
        o.max_datagram = max_datagram;
    char err[256] = "";
    o.err = err;
    o.errlen = sizeof(err);
    struct kv_gateway *g = NULL;
    int rc = kv_gateway_start(&o, &g);
    if (rc == KV_ENOTSUP && udp_io == KV_GATEWAY_UDP_IO_URING) {
        assert_non_null(strstr(err, "io_uring"));
        return NULL;
    }
    assert_int_equal(rc, KV_OK);
    bool uring = atomic_load(&g->udp_io_uring);
    if (udp_io == KV_GATEWAY_UDP_IO_RECVMMSG)
        assert_false(uring);
    if (udp_io == KV_GATEWAY_UDP_IO_URING)
        assert_true(uring);
    return g;
}

static void wait_total(struct kv_gateway *g, uint64_t want, struct kv_gateway_stats *s)
{
    memset(s, 0, sizeof(*s));
    for (int i = 0; i < 300 && s->total_received < want; i++) {
        kv_sleep_ms(10);
        kv_gateway_stats(g, s);
    }
    assert_int_equal(s->total_received, want);
}

static void udp_states(int udp_io)
{
    struct kv_gateway *g = start_io(udp_io, 0);
    if (!g) {
        KV_SKIP("io_uring receive path: this kernel has no io_uring (or refuses it)");
        return;
    }
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
    struct kv_gateway_stats s;
    wait_total(g, 12, &s);
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

static void test_udp(void **state)
{
    (void)state;
    udp_states(KV_GATEWAY_UDP_IO_AUTO);
}

static void test_udp_recvmmsg(void **state)
{
    (void)state;
    udp_states(KV_GATEWAY_UDP_IO_RECVMMSG);
}

static void test_udp_uring(void **state)
{
    (void)state;
    udp_states(KV_GATEWAY_UDP_IO_URING);
}

/* Datagrams longer than max_datagram are oversize on both paths (the receive buffers hold
 * max_datagram + 1 bytes: a longer one is cut, and known as cut); many at once exercise full
 * batches (and, with io_uring, running out of provided buffers and re-arming). */
static void oversize_and_bursts(int udp_io)
{
    struct kv_gateway *g = start_io(udp_io, 300);
    if (!g) {
        KV_SKIP("io_uring receive path: this kernel has no io_uring (or refuses it)");
        return;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(kv_gateway_udp_port(g))};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char big[2000];
    memset(big, ' ', sizeof(big));
    const char *st = STATE("b", 1);
    size_t stlen = strlen(st);
    memcpy(big, st, stlen); /* valid JSON followed by spaces: only its length is wrong */
    size_t lens[] = {301, 302, 1999, 2000, 300};
    for (size_t i = 0; i < KV_ARRAY_SIZE(lens); i++)
        assert_true(sendto(fd, big, lens[i], 0, (struct sockaddr *)&to, sizeof(to)) ==
                    (ssize_t)lens[i]);
    /* an empty datagram (with a plain io_uring recv it comes without a buffer) */
    assert_int_equal(sendto(fd, big, 0, 0, (struct sockaddr *)&to, sizeof(to)), 0);
    struct kv_gateway_stats s;
    wait_total(g, 6, &s);
    assert_int_equal(s.invalid_by_reason[KV_GW_EMPTY], 1);
    assert_int_equal(s.invalid_by_reason[KV_GW_OVERSIZE], 4);
    assert_int_equal(s.valid_states, 1); /* exactly max_datagram bytes is fine */
    /* bursts larger than a batch, in rounds so the socket buffer never drops any */
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 600; i++)
            assert_true(sendto(fd, st, stlen, 0, (struct sockaddr *)&to, sizeof(to)) ==
                        (ssize_t)stlen);
        wait_total(g, 6 + 600 * (uint64_t)(round + 1), &s);
    }
    assert_int_equal(s.valid_states, 1 + 3000);
    assert_int_equal(s.valid_states + s.invalid_states, s.total_received);
    assert_int_equal(s.unicast_received + s.broadcast_received, s.total_received);
    close(fd);
    kv_gateway_stop(g);
}

static void test_oversize_recvmmsg(void **state)
{
    (void)state;
    oversize_and_bursts(KV_GATEWAY_UDP_IO_RECVMMSG);
}

static void test_oversize_uring(void **state)
{
    (void)state;
    oversize_and_bursts(KV_GATEWAY_UDP_IO_URING);
}

/* io_uring refused (as by a seccomp policy, an old kernel or kernel.io_uring_disabled): auto
 * falls back to recvmmsg and works; uring fails the start with KV_ENOTSUP. A ring that sets up
 * but cannot be entered: the receive thread falls back to recvmmsg and works. Runs in a child
 * process, since a seccomp filter cannot be removed. */
static int uring_blocked_child(long blocked_nr)
{
#if defined(__x86_64__)
    const uint32_t arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
    const uint32_t arch = AUDIT_ARCH_AARCH64;
#else
    return KV_SKIP_EXIT;
#endif
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)blocked_nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = (unsigned short)KV_ARRAY_SIZE(f), .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        return 10;
    struct kv_gateway_opts o;
    kv_gateway_opts_init(&o);
    o.udp_port = 0;
    char err[256] = "";
    o.err = err;
    o.errlen = sizeof(err);
    struct kv_gateway *g = NULL;
    if (blocked_nr == __NR_io_uring_setup) {
        /* refused at start: uring fails the start, auto starts with recvmmsg */
        o.udp_io = KV_GATEWAY_UDP_IO_URING;
        if (kv_gateway_start(&o, &g) != KV_ENOTSUP || !strstr(err, "io_uring"))
            return 11;
        o.udp_io = KV_GATEWAY_UDP_IO_AUTO;
        if (kv_gateway_start(&o, &g) != KV_OK)
            return 12;
        if (atomic_load(&g->udp_io_uring))
            return 13;
    } else {
        /* the ring sets up but cannot be entered: the receive thread falls back */
        o.udp_io = KV_GATEWAY_UDP_IO_URING;
        if (kv_gateway_start(&o, &g) != KV_OK)
            return 16;
        for (int i = 0; i < 300 && atomic_load(&g->udp_io_uring); i++)
            kv_sleep_ms(10);
        if (atomic_load(&g->udp_io_uring))
            return 17;
    }
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", kv_gateway_udp_port(g));
    struct kv_gateway_state st = {0};
    snprintf(st.engine_id, sizeof(st.engine_id), "fallback");
    st.engine_capacity = 1;
    if (kv_gateway_send_state(addr, &st) != KV_OK)
        return 14;
    struct kv_gateway_stats s = {0};
    for (int i = 0; i < 300 && s.valid_states < 1; i++) {
        kv_sleep_ms(10);
        kv_gateway_stats(g, &s);
    }
    kv_gateway_stop(g);
    return s.valid_states == 1 && s.total_received == 1 ? 0 : 15;
}

static void test_uring_fallback(void **state)
{
    (void)state;
    const long blocked[] = {__NR_io_uring_setup, __NR_io_uring_enter};
    for (size_t i = 0; i < KV_ARRAY_SIZE(blocked); i++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
            _exit(uring_blocked_child(blocked[i]));
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) == KV_SKIP_EXIT) {
            KV_SKIP("the seccomp filter is written for x86_64 and aarch64 only");
            return;
        }
        assert_int_equal(WEXITSTATUS(status), 0);
    }
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

static size_t http_sink(char *p, size_t sz, size_t n, void *ud)
{
    kv_buf_append(ud, p, sz * n);
    return sz * n;
}

/* GET http://127.0.0.1:port/path: the status; the body parsed into *doc (a JSON object). */
static long http_get_json(uint16_t port, const char *path, json_t **doc)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", port, path);
    struct kv_buf b;
    kv_buf_init(&b);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, http_sink);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    char err[200] = "";
    if (kv_json_parse(b.data, b.len, doc, err, sizeof(err)) != KV_OK)
        fail_msg("GET %s: not JSON (%s): %.*s", path, err, (int)b.len, b.data);
    assert_true(json_is_object(*doc));
    kv_buf_fini(&b);
    return code;
}

/* The "reason" of a /health or /ready document, or "" when it has none. */
static const char *doc_reason(json_t *doc)
{
    const char *r = json_string_value(json_object_get(doc, "reason"));
    return r ? r : "";
}

/* /health (liveness) and /ready answer 200 while the UDP receive thread runs, and 503 with a
 * JSON reason once it has exited although the gateway was not stopped. The thread is made to
 * exit for real: its stop eventfd is signalled without setting g->stopping, so its loop
 * returns as on an unrecoverable receive error, it clears udp_running itself and logs the exit
 * (no test-only flag is set). A datagram sent afterwards is no longer received. */
static void health_when_receive_dies(int udp_io)
{
    struct kv_gateway_opts o;
    kv_gateway_opts_init(&o);
    o.udp_port = 0;
    o.udp_io = udp_io;
    o.http_addr = "127.0.0.1:0";
    struct kv_gateway *g = NULL;
    int rc = kv_gateway_start(&o, &g);
    if (rc == KV_ENOTSUP && udp_io == KV_GATEWAY_UDP_IO_URING) {
        KV_SKIP("io_uring receive path: this kernel has no io_uring (or refuses it)");
        return;
    }
    assert_int_equal(rc, KV_OK);
    uint16_t port = kv_gateway_http_port(g);
    assert_true(port > 0);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", kv_gateway_udp_port(g));
    struct kv_gateway_state st = {0};
    snprintf(st.engine_id, sizeof(st.engine_id), "e");
    st.engine_capacity = 1;
    st.seq = -1;
    assert_int_equal(kv_gateway_send_state(addr, &st), KV_OK);
    struct kv_gateway_stats s;
    wait_total(g, 1, &s); /* the receive thread runs */

    json_t *doc = NULL;
    assert_int_equal(http_get_json(port, "/health", &doc), 200);
    assert_string_equal(json_string_value(json_object_get(doc, "status")), "ok");
    assert_string_equal(doc_reason(doc), "");
    json_decref(doc);
    assert_int_equal(http_get_json(port, "/ready", &doc), 200);
    assert_true(json_is_true(json_object_get(doc, "ready")));
    assert_string_equal(doc_reason(doc), "");
    json_decref(doc);

    uint64_t one = 1;
    assert_int_equal(write(g->stop_fd, &one, sizeof(one)), (ssize_t)sizeof(one));
    for (int i = 0; i < 500 && atomic_load(&g->udp_running); i++)
        kv_sleep_ms(10);
    assert_false(atomic_load(&g->udp_running));
    assert_int_equal(kv_gateway_send_state(addr, &st), KV_OK);
    kv_sleep_ms(200);
    kv_gateway_stats(g, &s);
    assert_int_equal(s.total_received, 1); /* nobody receives any more */

    assert_int_equal(http_get_json(port, "/health", &doc), 503);
    assert_string_equal(doc_reason(doc), "the UDP receive thread has exited");
    json_decref(doc);
    assert_int_equal(http_get_json(port, "/ready", &doc), 503);
    assert_true(json_is_false(json_object_get(doc, "ready")));
    assert_string_equal(doc_reason(doc), "the UDP receive thread is not running");
    json_decref(doc);
    kv_gateway_stop(g); /* joins the thread that already exited */
}

static void test_health_receive_dies_recvmmsg(void **state)
{
    (void)state;
    health_when_receive_dies(KV_GATEWAY_UDP_IO_RECVMMSG);
}

static void test_health_receive_dies_uring(void **state)
{
    (void)state;
    health_when_receive_dies(KV_GATEWAY_UDP_IO_URING);
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
        cmocka_unit_test(test_udp_recvmmsg),
        cmocka_unit_test(test_udp_uring),
        cmocka_unit_test(test_oversize_recvmmsg),
        cmocka_unit_test(test_oversize_uring),
        cmocka_unit_test(test_uring_fallback),
        cmocka_unit_test(test_log_rotation_and_reopen),
        cmocka_unit_test(test_start_errors),
        cmocka_unit_test(test_start_alloc_failures),
        cmocka_unit_test(test_log_full_buffer_drops),
        cmocka_unit_test(test_health_receive_dies_recvmmsg),
        cmocka_unit_test(test_health_receive_dies_uring),
    };
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    curl_global_cleanup();
    return kv_skip_exit(rc);
}
