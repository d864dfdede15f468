/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_gateway.c - `kvstash gateway` (the UDP state gateway daemon), `kvstash agent` (sends
 * engine states) and `kvstash bench gateway` (an independent sendmmsg blaster that measures
 * the gateway's CPU per ingested state and its loss).
 *
 * Thread model: the main thread parses options, blocks SIGINT/SIGTERM/SIGHUP before the
 * gateway starts its threads (so they inherit the mask), then waits in sigwait: SIGHUP reopens
 * the JSONL log, SIGINT/SIGTERM stop. The agent and the bench are single-threaded.
 */
#define KV_LOG_COMPONENT "gateway"
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/alloc.h"
#include "common/buf.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/gateway.h"

/* ------------------------------------------------------------------ kvstash gateway */

static const struct kv_cfg_opt gateway_opts[] = {
    {"network-mode", "KVSTASH_GATEWAY_NETWORK_MODE", "VLLM_STATE_GATEWAY_NETWORK_MODE", KV_CFG_ENUM,
     "unicast", 0, 0, "unicast|broadcast", NULL,
     "unicast, or broadcast (SO_BROADCAST; binds 0.0.0.0 unless --bind-address is given)"},
    {"udp-port", "KVSTASH_GATEWAY_UDP_PORT", "VLLM_STATE_GATEWAY_UDP_PORT", KV_CFG_INT, "9999", 0,
     65535, NULL, "PORT", "UDP port engines send their states to (0 = any free port)"},
    {"bind-address", "KVSTASH_GATEWAY_BIND_ADDRESS", "VLLM_STATE_GATEWAY_BIND_ADDRESS", KV_CFG_STR,
     "127.0.0.1", 0, 0, NULL, "ADDR",
     "IPv4 address to receive on; 0.0.0.0 inside containers (never a pod IP)"},
    {"stale-threshold", "KVSTASH_GATEWAY_STALE_THRESHOLD", "VLLM_STATE_GATEWAY_STALE_THRESHOLD",
     KV_CFG_INT, "2000", 0, 86400000, NULL, "MS",
     "a state older than this (on the gateway's clock) is stale"},
    {"enable-log", "KVSTASH_GATEWAY_ENABLE_LOG", "VLLM_STATE_GATEWAY_ENABLE_LOG", KV_CFG_BOOL,
     "false", 0, 0, NULL, NULL,
     "append every valid state to the JSONL log (implied by --log-file unless set false)"},
    {"log-file", "KVSTASH_GATEWAY_LOG_FILE", "VLLM_STATE_GATEWAY_LOG_FILE", KV_CFG_STR, NULL, 0, 0,
     NULL, "FILE", "the JSONL log (default gateway_states.jsonl with --enable-log)"},
    {"log-max-bytes", "KVSTASH_GATEWAY_LOG_MAX_BYTES", NULL, KV_CFG_SIZE, "100MiB", 0, 1e15, NULL,
     "SIZE", "rotate the log past this size (0 = never)"},
    {"log-keep", "KVSTASH_GATEWAY_LOG_KEEP", NULL, KV_CFG_INT, "5", 0, 1000, NULL, "N",
     "rotated logs kept: FILE.1 .. FILE.N (0 = truncate instead)"},
    {"log-buffer", "KVSTASH_GATEWAY_LOG_BUFFER", NULL, KV_CFG_SIZE, "4MiB", 8192, 1e10, NULL,
     "SIZE", "log writer buffer; when full, lines are dropped and counted"},
    {"http-addr", "KVSTASH_GATEWAY_HTTP_ADDR", NULL, KV_CFG_STR, "127.0.0.1:9998", 0, 0, NULL,
     "H:P", "query API address (/stats, /engines, /metrics, /health); 'none' to disable"},
    {"remove-after", "KVSTASH_GATEWAY_REMOVE_AFTER", NULL, KV_CFG_INT, "300000", 1, 1e12, NULL,
     "MS", "forget an engine silent this long"},
    {"history", "KVSTASH_GATEWAY_HISTORY", NULL, KV_CFG_INT, "100", 1, 100000, NULL, "N",
     "states kept per engine for /engines/{id}/history"},
    {"max-engines", "KVSTASH_GATEWAY_MAX_ENGINES", NULL, KV_CFG_INT, "4096", 1, 10000000, NULL, "N",
     "engines tracked at most; states of new ones beyond are refused (too_many_engines)"},
    {"max-datagram", "KVSTASH_GATEWAY_MAX_DATAGRAM", NULL, KV_CFG_SIZE, "65507", 64, 65507, NULL,
     "SIZE", "larger datagrams are rejected as oversize"},
    {"udp-rcvbuf", "KVSTASH_GATEWAY_UDP_RCVBUF", NULL, KV_CFG_SIZE, "32MiB", 0, 1073741824, NULL,
     "SIZE", "socket receive buffer (absorbs bursts; 0 = the system default)"},
    {"udp-io", "KVSTASH_GATEWAY_UDP_IO", NULL, KV_CFG_ENUM, "recvmmsg", 0, 0, "recvmmsg|uring|auto",
     NULL,
     "UDP receive path: recvmmsg (256 datagrams per call), uring (io_uring multishot receive; "
     "measured no cheaper here), or auto (io_uring if the kernel allows it)"},
};

int kv_cli_gateway(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash gateway",
        .description =
            "Receives engine state datagrams (ELRAR's JSON format) over UDP, keeps each engine's\n"
            "latest state and history, and answers HTTP queries. ELRAR's VLLM_STATE_GATEWAY_*\n"
            "variables are honoured. SIGHUP reopens the JSONL log (for logrotate).\n"
            "See docs/gateway.md.",
        .opts = gateway_opts,
        .nopts = KV_ARRAY_SIZE(gateway_opts),
    };
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out;
    ex = 2;
    if (cfg.nargs) {
        fprintf(stderr, "kvstash gateway: unexpected argument '%s'\n", cfg.args[0]);
        goto out;
    }
    struct kv_gateway_opts o;
    kv_gateway_opts_init(&o);
    o.broadcast = strcmp(kv_cfg_str(&cfg, "network-mode"), "broadcast") == 0;
    o.udp_port = (int)kv_cfg_int(&cfg, "udp-port");
    o.bind_address = kv_cfg_str(&cfg, "bind-address");
    if (o.broadcast && kv_cfg_source(&cfg, "bind-address") == KV_CFG_SRC_DEFAULT)
        o.bind_address = "0.0.0.0"; /* broadcasts reach only sockets bound to the wildcard */
    o.stale_threshold_ms = kv_cfg_int(&cfg, "stale-threshold");
    o.remove_after_ms = kv_cfg_int(&cfg, "remove-after");
    o.history_len = (int)kv_cfg_int(&cfg, "history");
    o.max_engines = (size_t)kv_cfg_int(&cfg, "max-engines");
    o.max_datagram = (size_t)kv_cfg_size(&cfg, "max-datagram");
    o.udp_rcvbuf = (size_t)kv_cfg_size(&cfg, "udp-rcvbuf");
    const char *udp_io = kv_cfg_str(&cfg, "udp-io");
    o.udp_io = strcmp(udp_io, "uring") == 0  ? KV_GATEWAY_UDP_IO_URING
               : strcmp(udp_io, "auto") == 0 ? KV_GATEWAY_UDP_IO_AUTO
                                             : KV_GATEWAY_UDP_IO_RECVMMSG;
    o.log_max_bytes = kv_cfg_size(&cfg, "log-max-bytes");
    o.log_keep = (int)kv_cfg_int(&cfg, "log-keep");
    o.log_buffer_bytes = (size_t)kv_cfg_size(&cfg, "log-buffer");
    const char *log_file = kv_cfg_str(&cfg, "log-file");
    bool log_on = kv_cfg_bool(&cfg, "enable-log");
    if (log_file && log_file[0] && kv_cfg_source(&cfg, "enable-log") == KV_CFG_SRC_DEFAULT)
        log_on = true;
    if (log_on)
        o.log_file = log_file && log_file[0] ? log_file : "gateway_states.jsonl";
    const char *http = kv_cfg_str(&cfg, "http-addr");
    if (http && (http[0] == '\0' || strcmp(http, "none") == 0))
        http = NULL;
    if (http) {
        char host[256];
        uint16_t port;
        if (kv_parse_hostport(http, host, sizeof(host), &port) < 0) {
            fprintf(stderr, "kvstash gateway: bad --http-addr '%s' (want HOST:PORT)\n", http);
            goto out;
        }
    }
    o.http_addr = http;
    char err[512] = "";
    o.err = err;
    o.errlen = sizeof(err);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    struct kv_gateway *g;
    int rc = kv_gateway_start(&o, &g);
    if (rc < 0) {
        fprintf(stderr, "kvstash gateway: %s\n", err[0] ? err : kv_strerror(rc));
        ex = rc == KV_EINVAL ? 2 : 1;
        goto out;
    }
    KV_LOGI("listening for engine states on udp://%s:%u (%s)", o.bind_address,
            kv_gateway_udp_port(g), o.broadcast ? "broadcast" : "unicast");
    if (http)
        KV_LOGI("query API on http://%s (port %u): /stats /engines /metrics /health /ready", http,
                kv_gateway_http_port(g));
    if (o.log_file)
        KV_LOGI("logging valid states to %s (rotate at %llu bytes, keep %d)", o.log_file,
                (unsigned long long)o.log_max_bytes, o.log_keep);
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            KV_LOGI("SIGHUP: reopening the log");
            kv_gateway_reopen_log(g);
            continue;
        }
        KV_LOGI("signal %d: stopping", sig);
        break;
    }
    kv_gateway_stop(g);
    ex = 0;
out:
    kv_cfg_fini(&cfg);
    return ex;
}

/* ------------------------------------------------------------------ kvstash agent */

static const struct kv_cfg_opt agent_opts[] = {
    {"engine-id", "KVSTASH_AGENT_ENGINE_ID", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "ID",
     "engine_id to report (required; use the engine's URL host:port for the router to match)"},
    {"gateway", "KVSTASH_AGENT_GATEWAY", NULL, KV_CFG_STR, "127.0.0.1:9999", 0, 0, NULL, "H:P",
     "the gateway's UDP address"},
    {"broadcast", "KVSTASH_AGENT_BROADCAST", NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL,
     "send with SO_BROADCAST (to a broadcast address)"},
    {"interval-ms", "KVSTASH_AGENT_INTERVAL_MS", NULL, KV_CFG_INT, "200", 1, 3600000, NULL, "MS",
     "time between reports"},
    {"count", "KVSTASH_AGENT_COUNT", NULL, KV_CFG_INT, "0", 0, 1e12, NULL, "N",
     "send N states and exit (0 = until SIGINT/SIGTERM)"},
    {"from-metrics", "KVSTASH_AGENT_FROM_METRICS", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "URL",
     "derive the load from a vLLM /metrics endpoint (see docs/gateway.md for the mapping)"},
    {"tokens-per-request", "KVSTASH_AGENT_TOKENS_PER_REQUEST", NULL, KV_CFG_INT, "512", 0, 1e9,
     NULL, "N", "with --from-metrics: pending tokens per running or waiting request"},
    {"scrape-timeout-ms", "KVSTASH_AGENT_SCRAPE_TIMEOUT_MS", NULL, KV_CFG_INT, "1000", 1, 60000,
     NULL, "MS", "with --from-metrics: timeout of one scrape"},
    {"latency-pred-ms", "KVSTASH_AGENT_LATENCY_PRED_MS", NULL, KV_CFG_DOUBLE, "0", -1, 1e12, NULL,
     "MS", "latency_pred_ms to report"},
    {"scheduling-mode", "KVSTASH_AGENT_SCHEDULING_MODE", NULL, KV_CFG_STR, "default", 0, 0, NULL,
     "MODE", "scheduling_mode to report"},
    {"pending-tokens", "KVSTASH_AGENT_PENDING_TOKENS", NULL, KV_CFG_INT, "0", -1, 9e18, NULL, "N",
     "pending_tokens_total to report (-1 = unknown)"},
    {"kv-free-blocks", "KVSTASH_AGENT_KV_FREE_BLOCKS", NULL, KV_CFG_INT, "-1", -1, 9e18, NULL, "N",
     "kv_cache_free_blocks to report (-1 = unknown)"},
    {"kv-total-blocks", "KVSTASH_AGENT_KV_TOTAL_BLOCKS", NULL, KV_CFG_INT, "-1", -1, 9e18, NULL,
     "N", "kv_cache_total_blocks to report (-1 = unknown)"},
    {"engine-capacity", "KVSTASH_AGENT_ENGINE_CAPACITY", NULL, KV_CFG_DOUBLE, "1", -1, 1e12, NULL,
     "X", "engine_capacity to report (capacity 0 with latency 0 is a heartbeat)"},
    {"seq", "KVSTASH_AGENT_SEQ", NULL, KV_CFG_BOOL, "true", 0, 0, NULL, NULL,
     "add an increasing \"seq\" so the gateway drops reordered states"},
};

static volatile sig_atomic_t agent_stop;

static void on_agent_signal(int sig)
{
    (void)sig;
    agent_stop = 1;
}

int kv_cli_agent(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash agent",
        .description =
            "Sends engine state reports to a gateway every --interval-ms: from a vLLM /metrics\n"
            "endpoint with --from-metrics, else from the flags. For engines without a built-in\n"
            "reporter, and for tests (--count).",
        .opts = agent_opts,
        .nopts = KV_ARRAY_SIZE(agent_opts),
    };
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out;
    ex = 2;
    if (cfg.nargs) {
        fprintf(stderr, "kvstash agent: unexpected argument '%s'\n", cfg.args[0]);
        goto out;
    }
    struct kv_gateway_state st;
    memset(&st, 0, sizeof(st));
    const char *id = kv_cfg_str(&cfg, "engine-id");
    if (!id || !id[0]) {
        fprintf(stderr, "kvstash agent: --engine-id is required\n");
        goto out;
    }
    if (strlen(id) > KV_GATEWAY_ID_MAX) {
        fprintf(stderr, "kvstash agent: --engine-id longer than %d bytes\n", KV_GATEWAY_ID_MAX);
        goto out;
    }
    snprintf(st.engine_id, sizeof(st.engine_id), "%s", id);
    const char *mode = kv_cfg_str(&cfg, "scheduling-mode");
    if (strlen(mode) > KV_GATEWAY_MODE_MAX) {
        fprintf(stderr, "kvstash agent: --scheduling-mode longer than %d bytes\n",
                KV_GATEWAY_MODE_MAX);
        goto out;
    }
    snprintf(st.scheduling_mode, sizeof(st.scheduling_mode), "%s", mode);
    st.latency_pred_ms = kv_cfg_double(&cfg, "latency-pred-ms");
    st.engine_capacity = kv_cfg_double(&cfg, "engine-capacity");
    st.pending_tokens_total = kv_cfg_int(&cfg, "pending-tokens");
    st.kv_cache_free_blocks = kv_cfg_int(&cfg, "kv-free-blocks");
    st.kv_cache_total_blocks = kv_cfg_int(&cfg, "kv-total-blocks");
    st.seq = -1;
    char probe[2048];
    if (kv_gateway_state_format(&st, probe, sizeof(probe)) < 0) {
        fprintf(stderr, "kvstash agent: the flags make an invalid state (latency and capacity "
                        "must be >= 0 or -1, counts >= -1, free <= total)\n");
        goto out;
    }
    struct kv_gateway_sender *snd;
    int rc =
        kv_gateway_sender_open(kv_cfg_str(&cfg, "gateway"), kv_cfg_bool(&cfg, "broadcast"), &snd);
    if (rc < 0) {
        fprintf(stderr, "kvstash agent: bad --gateway '%s' (want HOST:PORT): %s\n",
                kv_cfg_str(&cfg, "gateway"), kv_strerror(rc));
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_agent_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    const char *url = kv_cfg_str(&cfg, "from-metrics");
    /* seq starts at the wall clock in ms, so a restarted agent continues above its previous
     * run (at most one state per ms) instead of being dropped as reordered */
    int64_t count = kv_cfg_int(&cfg, "count"), sent = 0, seq = kv_wall_ms();
    int64_t interval = kv_cfg_int(&cfg, "interval-ms");
    bool use_seq = kv_cfg_bool(&cfg, "seq");
    ex = 0;
    KV_LOGI("reporting engine %s to udp://%s every %lld ms%s%s", st.engine_id,
            kv_cfg_str(&cfg, "gateway"), (long long)interval, url ? " from " : "", url ? url : "");
    while (!agent_stop && (count == 0 || sent < count)) {
        int64_t t0 = kv_now_ms();
        bool ok = true;
        if (url) {
            rc = kv_gateway_scrape_vllm(url, (int)kv_cfg_int(&cfg, "scrape-timeout-ms"),
                                        kv_cfg_int(&cfg, "tokens-per-request"), &st);
            if (rc < 0) {
                KV_LOGW_RL(10000, "cannot scrape %s: %s (not reporting)", url, kv_strerror(rc));
                ok = false;
            }
        }
        if (ok) {
            st.timestamp_ms = kv_wall_ms();
            st.seq = use_seq ? seq++ : -1;
            rc = kv_gateway_sender_send(snd, &st);
            if (rc < 0)
                KV_LOGW_RL(10000, "send failed: %s", kv_strerror(rc));
            sent++;
        } else if (count) {
            sent++; /* --count bounds attempts, so a test never hangs on a dead endpoint */
            ex = 1;
        }
        if (count && sent >= count)
            break;
        int64_t wait = interval - (kv_now_ms() - t0);
        while (wait > 0 && !agent_stop) {
            kv_sleep_ms(wait > 100 ? 100 : (int)wait);
            wait = interval - (kv_now_ms() - t0);
        }
    }
    kv_gateway_sender_close(snd);
out:
    kv_cfg_fini(&cfg);
    return ex;
}

/* ------------------------------------------------------------------ kvstash bench gateway */

static const struct kv_cfg_opt bench_opts[] = {
    {"target", "KVSTASH_BENCH_TARGET", NULL, KV_CFG_STR, "127.0.0.1:9999", 0, 0, NULL, "H:P",
     "the gateway's UDP address"},
    {"gateway-http", "KVSTASH_BENCH_GATEWAY_HTTP", NULL, KV_CFG_STR, "127.0.0.1:9998", 0, 0, NULL,
     "H:P", "the gateway's query API (valid_states before and after each step)"},
    {"gateway-pid", "KVSTASH_BENCH_GATEWAY_PID", NULL, KV_CFG_INT, "0", 0, 1e9, NULL, "PID",
     "the gateway's process id, for its CPU time from /proc/PID/stat (0 = not measured)"},
    {"rates", "KVSTASH_BENCH_RATES", NULL, KV_CFG_STR, "50000,100000,150000,0", 0, 0, NULL, "LIST",
     "offered datagrams/s, one step each (0 = as fast as one core sends)"},
    {"duration-ms", "KVSTASH_BENCH_DURATION_MS", NULL, KV_CFG_INT, "3000", 100, 3600000, NULL, "MS",
     "length of each step"},
    {"engines", "KVSTASH_BENCH_ENGINES", NULL, KV_CFG_INT, "100", 1, 100000, NULL, "N",
     "distinct engine ids in the stream"},
    {"batch", "KVSTASH_BENCH_BATCH", NULL, KV_CFG_INT, "64", 1, 1024, NULL, "N",
     "datagrams per sendmmsg call"},
};

static size_t on_stats_body(char *p, size_t sz, size_t n, void *ud)
{
    return kv_buf_append(ud, p, sz * n) < 0 ? 0 : sz * n;
}

/* valid_states and total_received from the gateway's /stats. */
static int fetch_valid(const char *hostport, uint64_t *valid, uint64_t *total)
{
    char url[300];
    snprintf(url, sizeof(url), "http://%s/stats", hostport);
    CURL *c = curl_easy_init();
    if (!c)
        return KV_ENOMEM;
    struct kv_buf b;
    kv_buf_init(&b);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_stats_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    int rc = KV_EIO;
    json_t *o = NULL;
    if (curl_easy_perform(c) == CURLE_OK && b.data &&
        kv_json_parse(b.data, b.len, &o, NULL, 0) == KV_OK &&
        kv_json_get_u64(o, "valid_states", valid, NULL, 0) == KV_OK &&
        kv_json_get_u64(o, "total_received", total, NULL, 0) == KV_OK)
        rc = KV_OK;
    json_decref(o);
    kv_buf_fini(&b);
    curl_easy_cleanup(c);
    return rc;
}

/* utime + stime of pid in seconds, from /proc/PID/stat (*sys_s gets stime alone); -1 if
 * unreadable. */
static double proc_cpu_s(long pid, double *sys_s)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* fields after the command name, which is in parentheses and may hold spaces */
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    p += 2; /* now at field 3 (state) */
    unsigned long long ut = 0, stm = 0;
    int field = 3;
    char *save = NULL;
    for (char *tok = strtok_r(p, " ", &save); tok; tok = strtok_r(NULL, " ", &save), field++) {
        if (field == 14 || field == 15) {
            uint64_t v;
            if (kv_parse_u64(tok, &v) < 0)
                return -1;
            if (field == 14)
                ut = v;
            else
                stm = v;
        }
        if (field == 15)
            break;
    }
    *sys_s = (double)stm / (double)sysconf(_SC_CLK_TCK);
    return (double)(ut + stm) / (double)sysconf(_SC_CLK_TCK);
}

static int64_t now_ns(void)
{
    return kv_now_ns();
}

int kv_cli_bench_gateway(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash bench gateway",
        .description =
            "An independent sender: blasts state datagrams with sendmmsg at each offered rate in\n"
            "--rates for --duration-ms, then reads the gateway's valid_states (/stats) and CPU\n"
            "time (/proc/PID/stat, user+sys) to report, per step: datagrams sent, states\n"
            "ingested, loss, and the gateway's CPU microseconds per ingested state.\n"
            "Start the gateway first (bench/gateway/run.sh does it all).",
        .opts = bench_opts,
        .nopts = KV_ARRAY_SIZE(bench_opts),
    };
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out;
    ex = 2;
    int64_t rates[32];
    size_t nrates = 0;
    {
        const char *p = kv_cfg_str(&cfg, "rates");
        while (p && *p) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            char tok[32];
            int64_t r;
            if (len == 0 || len >= sizeof(tok) || nrates == KV_ARRAY_SIZE(rates)) {
                fprintf(stderr, "kvstash bench gateway: bad --rates '%s'\n",
                        kv_cfg_str(&cfg, "rates"));
                goto out;
            }
            memcpy(tok, p, len);
            tok[len] = '\0';
            if (kv_parse_i64(tok, &r) < 0 || r < 0) {
                fprintf(stderr, "kvstash bench gateway: bad rate '%s' in --rates\n", tok);
                goto out;
            }
            rates[nrates++] = r;
            p = comma ? comma + 1 : p + len;
        }
    }
    if (nrates == 0) {
        fprintf(stderr, "kvstash bench gateway: --rates is empty\n");
        goto out;
    }
    int batch = (int)kv_cfg_int(&cfg, "batch");
    int nengines = (int)kv_cfg_int(&cfg, "engines");
    long pid = (long)kv_cfg_int(&cfg, "gateway-pid");
    const char *http = kv_cfg_str(&cfg, "gateway-http");
    struct kv_gateway_sender *probe;
    if (kv_gateway_sender_open(kv_cfg_str(&cfg, "target"), false, &probe) < 0) {
        fprintf(stderr, "kvstash bench gateway: bad --target '%s'\n", kv_cfg_str(&cfg, "target"));
        goto out;
    }
    kv_gateway_sender_close(probe);
    /* a UDP socket and the destination, then pre-formatted datagrams */
    char host[256];
    uint16_t port;
    kv_parse_hostport(kv_cfg_str(&cfg, "target"), host, sizeof(host), &port);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (inet_pton(AF_INET, strcmp(host, "localhost") == 0 ? "127.0.0.1" : host, &sa.sin_addr) !=
        1) {
        fprintf(stderr, "kvstash bench gateway: --target must be an IPv4 address\n");
        goto out;
    }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        fprintf(stderr, "kvstash bench gateway: socket: %s\n", strerror(errno));
        goto out;
    }
    enum { NDG = 1024 };
    char(*dg)[512] = kv_malloc(NDG * 512);
    size_t *dglen = kv_malloc(NDG * sizeof(size_t));
    struct mmsghdr *msgs = kv_calloc((size_t)batch, sizeof(*msgs));
    struct iovec *iov = kv_calloc((size_t)batch, sizeof(*iov));
    if (!dg || !dglen || !msgs || !iov) {
        fprintf(stderr, "kvstash bench gateway: out of memory\n");
        ex = 1;
        goto out_free;
    }
    size_t avg = 0;
    for (int i = 0; i < NDG; i++) {
        struct kv_gateway_state st = {0};
        snprintf(st.engine_id, sizeof(st.engine_id), "bench-engine-%05d", i % nengines);
        snprintf(st.scheduling_mode, sizeof(st.scheduling_mode), "latency_optimized");
        st.timestamp_ms = kv_wall_ms() + i;
        st.latency_pred_ms = 100.0 + i % 50;
        st.pending_tokens_total = 1000 + i;
        st.kv_cache_free_blocks = -1;
        st.kv_cache_total_blocks = -1;
        st.engine_capacity = 0.5;
        st.seq = -1;
        int n = kv_gateway_state_format(&st, dg[i], 512);
        dglen[i] = n > 0 ? (size_t)n : 0;
        avg += dglen[i];
    }
    printf("kvstash bench gateway: %d-byte datagrams (avg), %d engines, sendmmsg batch %d, "
           "%lld ms per step, target %s\n",
           (int)(avg / NDG), nengines, batch, (long long)kv_cfg_int(&cfg, "duration-ms"),
           kv_cfg_str(&cfg, "target"));
    printf("%10s %10s %10s %10s %8s %13s %13s\n", "offered/s", "sent/s", "sent", "ingested",
           "loss%", "gw_cpu_us/st", "of_which_sys");
    size_t next = 0;
    double best_zero = -1, worst_loss = 0, cpu_sum = 0;
    uint64_t cpu_states = 0;
    ex = 0;
    for (size_t r = 0; r < nrates; r++) {
        uint64_t v0 = 0, t0 = 0, v1 = 0, t1 = 0;
        bool have_stats = fetch_valid(http, &v0, &t0) == KV_OK;
        double sys0 = 0, sys1 = 0;
        double cpu0 = pid ? proc_cpu_s(pid, &sys0) : -1;
        int64_t start = now_ns(), dur = kv_cfg_int(&cfg, "duration-ms") * 1000000LL;
        uint64_t sent = 0;
        for (;;) {
            int64_t now = now_ns();
            if (now - start >= dur)
                break;
            if (rates[r] > 0) {
                /* pace: the batch may go out once its last datagram is due */
                int64_t due =
                    start + (int64_t)((double)(sent + (uint64_t)batch) * 1e9 / (double)rates[r]);
                if (due > now) {
                    if (due - now > 200000) {
                        struct timespec ts = {0, (long)(due - now - 100000)};
                        nanosleep(&ts, NULL);
                    }
                    continue;
                }
            }
            for (int i = 0; i < batch; i++) {
                iov[i].iov_base = dg[next];
                iov[i].iov_len = dglen[next];
                memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
                next = (next + 1) % NDG;
            }
            int n = sendmmsg(fd, msgs, (unsigned)batch, 0);
            if (n > 0)
                sent += (uint64_t)n;
        }
        double secs = (double)(now_ns() - start) / 1e9;
        kv_sleep_ms(500); /* let the gateway drain its socket buffer */
        double cpu1 = pid ? proc_cpu_s(pid, &sys1) : -1;
        have_stats = have_stats && fetch_valid(http, &v1, &t1) == KV_OK;
        uint64_t ing = have_stats ? v1 - v0 : 0;
        double loss =
            have_stats && sent ? 100.0 * (double)(sent > ing ? sent - ing : 0) / (double)sent : -1;
        double cpu_us = cpu0 >= 0 && cpu1 >= 0 && ing ? (cpu1 - cpu0) * 1e6 / (double)ing : -1;
        double sys_us = cpu0 >= 0 && cpu1 >= 0 && ing ? (sys1 - sys0) * 1e6 / (double)ing : -1;
        char offered[32];
        if (rates[r])
            snprintf(offered, sizeof(offered), "%lld", (long long)rates[r]);
        else
            snprintf(offered, sizeof(offered), "max");
        printf("%10s %10.0f %10llu %10llu %8.3f %13.3f %13.3f\n", offered, (double)sent / secs,
               (unsigned long long)sent, (unsigned long long)ing, loss, cpu_us, sys_us);
        fflush(stdout);
        if (!have_stats)
            ex = 1;
        if (have_stats && loss == 0 && (double)sent / secs > best_zero)
            best_zero = (double)sent / secs;
        if (loss > worst_loss)
            worst_loss = loss;
        if (cpu_us >= 0) {
            cpu_sum += cpu_us * (double)ing;
            cpu_states += ing;
        }
    }
    if (best_zero >= 0)
        printf("highest rate ingested with zero loss: %.0f states/s; worst loss: %.3f%%", best_zero,
               worst_loss);
    else
        printf("loss at every rate; worst loss: %.3f%%", worst_loss);
    if (cpu_states)
        printf("; gateway CPU per ingested state over all steps: %.3f us",
               cpu_sum / (double)cpu_states);
    printf("\n");
    if (ex)
        fprintf(stderr, "kvstash bench gateway: could not read http://%s/stats\n", http);
out_free:
    kv_free(iov);
    kv_free(msgs);
    kv_free(dglen);
    kv_free(dg);
    close(fd);
out:
    kv_cfg_fini(&cfg);
    return ex;
}
