/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_router.c - `kvstash router`: the OpenAI-compatible router (include/kvstash/router.h),
 * with the state gateway running in-process for the elrar policy; and `kvstash bench router`,
 * which runs bench/router_vs_nginx.sh.
 */
#define KV_LOG_COMPONENT "router"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/alloc.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/gateway.h"
#include "kvstash/router.h"

static const struct kv_cfg_opt router_opts[] = {
    {"addr", "KVSTASH_ROUTER_ADDR", NULL, KV_CFG_STR, "127.0.0.1:8000", 0, 0, NULL, "HOST:PORT",
     "address to listen on (0.0.0.0:8000 inside containers)"},
    {"backends", "KVSTASH_ROUTER_BACKENDS", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "URL,URL...",
     "engine URLs (http://host:port); localhost, 127.0.0.1 and trailing slashes are equivalent"},
    {"engine-ids", "KVSTASH_ROUTER_ENGINE_IDS", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "ID,ID...",
     "gateway engine_id of each backend, in order (default: the backend URL)"},
    {"metadata", "KVSTASH_METADATA", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "URL",
     "discover engines under /kvstash/<cluster>/engines/ in this metadata service"},
    {"cluster", "KVSTASH_CLUSTER", NULL, KV_CFG_STR, "default", 0, 0, NULL, "NAME",
     "cluster name in metadata keys"},
    {"routing-logic", "KVSTASH_ROUTING_LOGIC", NULL, KV_CFG_ENUM, "roundrobin", 0, 0,
     "roundrobin|session|least-loaded|prefix|elrar", NULL, "how to choose an engine"},
    {"session-key", "KVSTASH_SESSION_KEY", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "HEADER",
     "request header carrying the session id (session, elrar); else the body's \"user\""},
    {"max-body", "KVSTASH_ROUTER_MAX_BODY", NULL, KV_CFG_SIZE, "16MiB", 1024, 1e10, NULL, NULL,
     "largest request body accepted (larger: 413)"},
    {"timeout-ms", "KVSTASH_ROUTER_TIMEOUT_MS", NULL, KV_CFG_INT, "120000", 10, 86400000, NULL,
     "MS", "upstream inactivity timeout (no byte for this long: retry or 504)"},
    {"health-interval-ms", "KVSTASH_ROUTER_HEALTH_INTERVAL_MS", NULL, KV_CFG_INT, "5000", 10,
     3600000, NULL, "MS", "GET /health of every engine this often"},
    {"health-timeout-ms", "KVSTASH_ROUTER_HEALTH_TIMEOUT_MS", NULL, KV_CFG_INT, "2000", 10, 600000,
     NULL, "MS", "a health check slower than this fails"},
    {"discovery-wait-ms", "KVSTASH_ROUTER_DISCOVERY_WAIT_MS", NULL, KV_CFG_INT, "10000", 0, 600000,
     NULL, "MS",
     "a request arriving while engines' models are still being discovered waits this long (0: "
     "fail at once)"},
    {"models-interval-ms", "KVSTASH_ROUTER_MODELS_INTERVAL_MS", NULL, KV_CFG_INT, "30000", 10,
     86400000, NULL, "MS", "refresh each engine's GET /v1/models this often"},
    {"threads", "KVSTASH_ROUTER_THREADS", NULL, KV_CFG_INT, "1", 1, 64, NULL, "N",
     "event-loop threads serving clients"},
    {"cache-threshold", "KVSTASH_ROUTER_CACHE_THRESHOLD", NULL, KV_CFG_DOUBLE, "0.5", 0.0001, 1,
     NULL, NULL, "prefix: route to the best match above this fraction of the prompt"},
    {"balance-abs-threshold", "KVSTASH_ROUTER_BALANCE_ABS_THRESHOLD", NULL, KV_CFG_INT, "32", 1,
     1e9, NULL, "N", "prefix: imbalanced when max - min in-flight exceeds this"},
    {"balance-rel-threshold", "KVSTASH_ROUTER_BALANCE_REL_THRESHOLD", NULL, KV_CFG_DOUBLE, "1.0001",
     1, 1e9, NULL, NULL, "prefix: ... and max > min * this"},
    {"max-tree-size", "KVSTASH_ROUTER_MAX_TREE_SIZE", NULL, KV_CFG_SIZE, "16777216", 1024, 1e12,
     NULL, NULL, "prefix: prompt bytes remembered per engine before LRU eviction"},
    {"gateway", "KVSTASH_ROUTER_GATEWAY", NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL,
     "run the state gateway in-process (always on for elrar; least-loaded then uses tokens)"},
    {"gateway-udp-port", "KVSTASH_GATEWAY_UDP_PORT", "VLLM_STATE_GATEWAY_UDP_PORT", KV_CFG_INT,
     "9999", 0, 65535, NULL, "PORT", "in-process gateway: UDP port (0 = any)"},
    {"gateway-bind", "KVSTASH_GATEWAY_BIND_ADDRESS", "VLLM_STATE_GATEWAY_BIND_ADDRESS", KV_CFG_STR,
     "127.0.0.1", 0, 0, NULL, "HOST", "in-process gateway: UDP bind address"},
    {"gateway-network-mode", "KVSTASH_GATEWAY_NETWORK_MODE", "VLLM_STATE_GATEWAY_NETWORK_MODE",
     KV_CFG_ENUM, "unicast", 0, 0, "unicast|broadcast", NULL, "in-process gateway: network mode"},
    {"gateway-stale-ms", "KVSTASH_GATEWAY_STALE_THRESHOLD", "VLLM_STATE_GATEWAY_STALE_THRESHOLD",
     KV_CFG_INT, "2000", 1, 3600000, NULL, "MS", "in-process gateway: states older are stale"},
    {"gateway-http-addr", "KVSTASH_GATEWAY_HTTP_ADDR", NULL, KV_CFG_STR, "off", 0, 0, NULL,
     "HOST:PORT", "in-process gateway: serve its query API here ('off' for none)"},
    {"elrar-slo-ms", "KVSTASH_ELRAR_SLO_MS", "VLLM_ELRAR_SLO_MS", KV_CFG_DOUBLE, "50", 0.001, 1e9,
     NULL, "MS", "elrar: latency SLO (TPOT) the latency term is scored against"},
    {"elrar-load-scale-s", "KVSTASH_ELRAR_LOAD_SCALE_S", "VLLM_ELRAR_LOAD_SCALE_S", KV_CFG_DOUBLE,
     "1.0", 0.000001, 1e9, NULL, "S", "elrar: queue seconds scaled by this before tanh"},
    {"elrar-kv-beta", "KVSTASH_ELRAR_KV_BETA", "VLLM_ELRAR_KV_BETA", KV_CFG_DOUBLE, "1.0", 0, 1e9,
     NULL, NULL, "elrar: session-affinity bonus"},
    {"elrar-affinity-window-s", "KVSTASH_ELRAR_KV_AFFINITY_WINDOW", "VLLM_ELRAR_KV_AFFINITY_WINDOW",
     KV_CFG_INT, "300", 1, 86400 * 30, NULL, "S",
     "elrar: affinity lasts this long after a session's last request"},
    {"elrar-w1", "KVSTASH_ELRAR_W1", "VLLM_ELRAR_W1", KV_CFG_DOUBLE, "1.0", 0, 1e6, NULL, NULL,
     "elrar: weight of the latency term"},
    {"elrar-w2", "KVSTASH_ELRAR_W2", "VLLM_ELRAR_W2", KV_CFG_DOUBLE, "1.0", 0, 1e6, NULL, NULL,
     "elrar: weight of the load term"},
    {"elrar-w3", "KVSTASH_ELRAR_W3", "VLLM_ELRAR_W3", KV_CFG_DOUBLE, "1.0", 0, 1e6, NULL, NULL,
     "elrar: weight of the scheduling-mode term"},
    {"elrar-w4", "KVSTASH_ELRAR_W4", "VLLM_ELRAR_W4", KV_CFG_DOUBLE, "1.0", 0, 1e6, NULL, NULL,
     "elrar: weight of the session-affinity term"},
};

/* Splits a comma-separated list into owned strings (empty items rejected). */
static int split_list(const char *s, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!s)
        return KV_OK;
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    char **v = kv_calloc(cap, sizeof(*v));
    if (!v)
        return KV_ENOMEM;
    size_t k = 0;
    const char *p = s;
    for (;;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        while (len && (*p == ' '))
            p++, len--;
        while (len && p[len - 1] == ' ')
            len--;
        if (!len) {
            for (size_t i = 0; i < k; i++)
                kv_free(v[i]);
            kv_free(v);
            return KV_EINVAL;
        }
        v[k] = kv_strndup(p, len);
        if (!v[k]) {
            for (size_t i = 0; i < k; i++)
                kv_free(v[i]);
            kv_free(v);
            return KV_ENOMEM;
        }
        k++;
        if (!c)
            break;
        p = c + 1;
    }
    *out = v;
    *n = k;
    return KV_OK;
}

static void free_list(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        kv_free(v[i]);
    kv_free(v);
}

int kv_cli_router(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash router",
        .description =
            "Runs the OpenAI-compatible router: POST /v1/chat/completions, /v1/completions and\n"
            "/v1/embeddings are proxied to an engine chosen by --routing-logic (streams relayed as\n"
            "they arrive); GET /v1/models lists the union of the engines' models; /health and\n"
            "/metrics report on the router. Engines come from --backends or from --metadata.\n"
            "The elrar policy runs the state gateway in-process (ELRAR's VLLM_STATE_GATEWAY_* and\n"
            "VLLM_ELRAR_* variables are honoured). See docs/routing.md.",
        .opts = router_opts,
        .nopts = KV_ARRAY_SIZE(router_opts),
    };
    char **backends = NULL, **ids = NULL;
    size_t nb = 0, ni = 0;
    struct kv_gateway *gw = NULL;
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out;
    ex = 2;
    if (cfg.nargs) {
        fprintf(stderr, "kvstash router: unexpected argument '%s'\n", cfg.args[0]);
        goto out;
    }
    if (split_list(kv_cfg_str(&cfg, "backends"), &backends, &nb) < 0 ||
        split_list(kv_cfg_str(&cfg, "engine-ids"), &ids, &ni) < 0) {
        fprintf(stderr, "kvstash router: --backends/--engine-ids: empty item in the list\n");
        goto out;
    }
    if (ni && ni != nb) {
        fprintf(stderr, "kvstash router: --engine-ids has %zu ids for %zu backends\n", ni, nb);
        goto out;
    }
    if (!nb && !kv_cfg_str(&cfg, "metadata")) {
        fprintf(stderr, "kvstash router: no engines: give --backends URL,URL... or --metadata\n");
        goto out;
    }
    char host[256];
    uint16_t port;
    if (kv_parse_hostport(kv_cfg_str(&cfg, "addr"), host, sizeof(host), &port) < 0) {
        fprintf(stderr, "kvstash router: bad --addr '%s' (want HOST:PORT)\n",
                kv_cfg_str(&cfg, "addr"));
        goto out;
    }
    const char *logic = kv_cfg_str(&cfg, "routing-logic");
    kv_cli_block_signals();
    ex = 1;
    if (strcmp(logic, "elrar") == 0 || kv_cfg_bool(&cfg, "gateway")) {
        struct kv_gateway_opts go;
        kv_gateway_opts_init(&go);
        go.bind_address = kv_cfg_str(&cfg, "gateway-bind");
        go.udp_port = (int)kv_cfg_int(&cfg, "gateway-udp-port");
        go.broadcast = strcmp(kv_cfg_str(&cfg, "gateway-network-mode"), "broadcast") == 0;
        go.stale_threshold_ms = kv_cfg_int(&cfg, "gateway-stale-ms");
        const char *ha = kv_cfg_str(&cfg, "gateway-http-addr");
        go.http_addr = strcmp(ha, "off") == 0 ? NULL : ha;
        int rc = kv_gateway_start(&go, &gw);
        if (rc < 0) {
            fprintf(stderr, "kvstash router: in-process gateway on udp %s:%d: %s\n",
                    go.bind_address, go.udp_port, kv_strerror(rc));
            goto out;
        }
        printf("kvstash router: state gateway listening on udp %s:%u\n", go.bind_address,
               kv_gateway_udp_port(gw));
    }
    struct kv_router_opts ro = {
        .addr = kv_cfg_str(&cfg, "addr"),
        .backends = (const char *const *)backends,
        .nbackends = nb,
        .engine_ids = ni ? (const char *const *)ids : NULL,
        .metadata_url = kv_cfg_str(&cfg, "metadata"),
        .cluster = kv_cfg_str(&cfg, "cluster"),
        .routing_logic = logic,
        .session_key = kv_cfg_str(&cfg, "session-key"),
        .max_body = kv_cfg_size(&cfg, "max-body"),
        .timeout_ms = (int)kv_cfg_int(&cfg, "timeout-ms"),
        .health_interval_ms = (int)kv_cfg_int(&cfg, "health-interval-ms"),
        .health_timeout_ms = (int)kv_cfg_int(&cfg, "health-timeout-ms"),
        .discovery_wait_ms = kv_cfg_int(&cfg, "discovery-wait-ms") > 0
                                 ? (int)kv_cfg_int(&cfg, "discovery-wait-ms")
                                 : -1,
        .models_interval_ms = (int)kv_cfg_int(&cfg, "models-interval-ms"),
        .threads = (int)kv_cfg_int(&cfg, "threads"),
        .cache_threshold = kv_cfg_double(&cfg, "cache-threshold"),
        .balance_abs_threshold = kv_cfg_int(&cfg, "balance-abs-threshold"),
        .balance_rel_threshold = kv_cfg_double(&cfg, "balance-rel-threshold"),
        .max_tree_chars = kv_cfg_size(&cfg, "max-tree-size"),
        .gateway = gw,
        .elrar_slo_ms = kv_cfg_double(&cfg, "elrar-slo-ms"),
        .elrar_load_scale_s = kv_cfg_double(&cfg, "elrar-load-scale-s"),
        .elrar_kv_beta = kv_cfg_double(&cfg, "elrar-kv-beta"),
        .elrar_affinity_window_s = kv_cfg_int(&cfg, "elrar-affinity-window-s"),
        .elrar_w_set = true,
        .elrar_w = {kv_cfg_double(&cfg, "elrar-w1"), kv_cfg_double(&cfg, "elrar-w2"),
                    kv_cfg_double(&cfg, "elrar-w3"), kv_cfg_double(&cfg, "elrar-w4")},
    };
    struct kv_router *r;
    int rc = kv_router_start(&ro, &r);
    if (rc < 0) {
        fprintf(stderr, "kvstash router: cannot start: %s (see the log line above)\n",
                kv_strerror(rc));
        goto out;
    }
    printf("kvstash router: listening on http://%s:%u (%s, %zu backend(s))\n", host,
           kv_router_port(r), logic, nb);
    fflush(stdout);
    int sig = kv_cli_wait_signal();
    KV_LOGI("signal %d: stopping", sig);
    kv_router_stop(r);
    ex = 0;
out:
    kv_gateway_stop(gw);
    free_list(backends, nb);
    free_list(ids, ni);
    kv_cfg_fini(&cfg);
    return ex;
}

/* `kvstash bench router`: runs bench/router_vs_nginx.sh (wrk through this router and through
 * nginx, same upstream, one run; prints the ratio), found next to the source tree
 * ($KVSTASH_SOURCE_DIR, or ../bench and ../../bench from the executable's directory). */
int kv_cli_bench_router(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("Usage: kvstash bench router\n\nRuns bench/router_vs_nginx.sh: wrk through the "
               "kvstash router and through nginx,\nboth proxying the same fast upstream; prints "
               "requests/s, the ratio and p50 latencies.\nEnvironment: DURATION (s per run, 5), "
               "CONNS (32), ROUNDS (2), PROXY_THREADS (1).\n");
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr,
                "kvstash bench router: unexpected argument '%s' (settings are "
                "environment variables; see --help)\n",
                argv[1]);
        return 2;
    }
    char exe[4096], cand[3][4200];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) {
        fprintf(stderr, "kvstash bench router: cannot find my own executable\n");
        return 1;
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    const char *src = getenv("KVSTASH_SOURCE_DIR");
    snprintf(cand[0], sizeof(cand[0]), "%s/bench/router_vs_nginx.sh", src ? src : "/nonexistent");
    snprintf(cand[1], sizeof(cand[1]), "%.*s/../bench/router_vs_nginx.sh",
             slash ? (int)(slash - exe) : 1, slash ? exe : ".");
    snprintf(cand[2], sizeof(cand[2]), "%.*s/../../bench/router_vs_nginx.sh",
             slash ? (int)(slash - exe) : 1, slash ? exe : ".");
    for (size_t i = 0; i < 3; i++) {
        if (access(cand[i], R_OK) != 0)
            continue;
        setenv("KVSTASH_BIN", exe, 0);
        char *const args[] = {"bash", cand[i], NULL};
        execv("/bin/bash", args);
        fprintf(stderr, "kvstash bench router: cannot run %s: %s\n", cand[i], strerror(errno));
        return 1;
    }
    fprintf(stderr, "kvstash bench router: bench/router_vs_nginx.sh not found (set "
                    "KVSTASH_SOURCE_DIR to the source tree)\n");
    return 1;
}
