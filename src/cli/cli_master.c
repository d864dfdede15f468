/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_master.c - `kvstash master`: runs a store master (src/store/master.c) until SIGINT or
 * SIGTERM. Several masters on one metadata backend elect one leader; the others stand by.
 */
#define KV_LOG_COMPONENT "master"
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "common/auth.h"
#include "common/log.h"
#include "common/util.h"
#include "store/store_int.h"

static const struct kv_cfg_opt master_opts[] = {
    {"metadata", "KVSTASH_METADATA", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "URL",
     "metadata URL (etcd://H:P, http://H:P/metadata, redis://H:P, embedded://) - required"},
    {"cluster", "KVSTASH_CLUSTER", NULL, KV_CFG_STR, "default", 0, 0, NULL, "NAME",
     "cluster name (metadata namespace)"},
    {"rpc-addr", "KVSTASH_RPC_ADDR", NULL, KV_CFG_STR, KV_STORE_DEFAULT_RPC, 0, 0, NULL, "H:P",
     "address of the RPC server (port 0 = any)"},
    {"advertise-host", "KVSTASH_ADVERTISE_HOST", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "HOST",
     "host published to clients and nodes (default: the RPC host)"},
    {"admin-addr", "KVSTASH_ADMIN_ADDR", NULL, KV_CFG_STR, KV_STORE_DEFAULT_ADMIN, 0, 0, NULL,
     "H:P", "admin HTTP (/health, /metrics, /api/v1/cluster); 'off' to disable"},
    {"id", "KVSTASH_MASTER_ID", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "ID",
     "this master's id (default master-<random>)"},
    {"kv-expire-time", "KVSTASH_KV_EXPIRE_TIME", NULL, KV_CFG_INT, "86400", 1, 4e9, NULL, "S",
     "default object TTL in seconds (an access refreshes it)"},
    {"cleanup-interval", "KVSTASH_CLEANUP_INTERVAL", NULL, KV_CFG_INT, "3600", 1, 4e6, NULL, "S",
     "seconds between TTL sweeps"},
    {"high-watermark", "KVSTASH_HIGH_WATERMARK", NULL, KV_CFG_DOUBLE, "0.95", 0.01, 1, NULL, NULL,
     "evict when a node's DRAM use passes this fraction"},
    {"low-watermark", "KVSTASH_LOW_WATERMARK", NULL, KV_CFG_DOUBLE, "0.85", 0.01, 1, NULL, NULL,
     "evict down to this fraction"},
    {"put-timeout", "KVSTASH_PUT_TIMEOUT", NULL, KV_CFG_INT, "30", 1, 86400, NULL, "S",
     "seconds after which an unfinished put is reclaimed"},
    {"io-threads", "KVSTASH_IO_THREADS", NULL, KV_CFG_INT, "0", 0, 64, NULL, "N",
     "the master's RPC event loops (0 = one per two CPUs, 1..8)"},
    {"poll-spin-us", "KVSTASH_POLL_SPIN_US", NULL, KV_CFG_INT, "50", 0, 10000, NULL, "US",
     "an idle RPC event loop polls up to this long before it sleeps (0 = never; the window adapts "
     "to how soon requests come): less latency per request, up to this much CPU each time it "
     "falls idle"},
    {"lease-ms", "KVSTASH_LEASE_MS", NULL, KV_CFG_INT, "5000", 10, 600000, NULL, "MS",
     "read lease granted by a get: the bytes are not evicted or reused meanwhile"},
    {"node-timeout", "KVSTASH_NODE_TIMEOUT", NULL, KV_CFG_INT, "5", 1, 3600, NULL, "S",
     "seconds without a heartbeat before a node is removed"},
    {"leader-ttl", "KVSTASH_LEADER_TTL", NULL, KV_CFG_INT, "3", 1, 60, NULL, "S",
     "leader lease ttl: a standby takes over this long after the leader dies"},
    {"token", "KVSTASH_TOKEN", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "SECRET",
     "shared token store RPC peers (clients, nodes) must present; the master presents it to nodes"},
};

int kv_cli_master(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash master",
        .description =
            "Runs a store master: the index of objects, placement of replicas on nodes, read\n"
            "leases, eviction (LRU between the watermarks; demotion to SSD on nodes that have\n"
            "it), TTL cleanup and reclaim of abandoned puts. Start several on one metadata\n"
            "backend: they elect one leader; a standby takes over when it dies and rebuilds\n"
            "the index from the nodes' reports. Stop with SIGINT or SIGTERM.",
        .opts = master_opts,
        .nopts = KV_ARRAY_SIZE(master_opts),
    };
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out;
    ex = 2;
    if (cfg.nargs) {
        fprintf(stderr, "kvstash master: unexpected argument '%s'\n", cfg.args[0]);
        goto out;
    }
    const char *meta = kv_cfg_str(&cfg, "metadata");
    if (!meta) {
        fprintf(stderr, "kvstash master: --metadata URL is required (for example "
                        "--metadata=etcd://127.0.0.1:2379 or http://127.0.0.1:8080/metadata)\n");
        goto out;
    }
    char host[256];
    uint16_t port;
    const char *rpc = kv_cfg_str(&cfg, "rpc-addr");
    const char *admin = kv_cfg_str(&cfg, "admin-addr");
    if (kv_parse_hostport(rpc, host, sizeof(host), &port) < 0) {
        fprintf(stderr, "kvstash master: bad --rpc-addr '%s' (want HOST:PORT)\n", rpc);
        goto out;
    }
    if (strcmp(admin, "off") != 0 && kv_parse_hostport(admin, host, sizeof(host), &port) < 0) {
        fprintf(stderr, "kvstash master: bad --admin-addr '%s' (want HOST:PORT or off)\n", admin);
        goto out;
    }
    if (kv_auth_set_token(kv_cfg_str(&cfg, "token")) < 0) {
        fprintf(stderr, "kvstash master: --token is longer than %d bytes\n", KV_AUTH_MAX_TOKEN);
        goto out;
    }
    double hw = kv_cfg_double(&cfg, "high-watermark"), lw = kv_cfg_double(&cfg, "low-watermark");
    if (lw > hw) {
        fprintf(stderr, "kvstash master: --low-watermark %.2f is above --high-watermark %.2f\n", lw,
                hw);
        goto out;
    }
    struct kv_master_opts mo = {
        .metadata = meta,
        .cluster = kv_cfg_str(&cfg, "cluster"),
        .id = kv_cfg_str(&cfg, "id"),
        .rpc_addr = rpc,
        .advertise_host = kv_cfg_str(&cfg, "advertise-host"),
        .admin_addr = admin,
        .kv_expire_time_s = (uint32_t)kv_cfg_int(&cfg, "kv-expire-time"),
        .io_threads = (int)kv_cfg_int(&cfg, "io-threads"),
        .poll_spin_us = (int)kv_cfg_int(&cfg, "poll-spin-us"),
        .cleanup_interval_ms = (uint32_t)kv_cfg_int(&cfg, "cleanup-interval") * 1000u,
        .high_watermark = hw,
        .low_watermark = lw,
        .put_timeout_ms = (uint32_t)kv_cfg_int(&cfg, "put-timeout") * 1000u,
        .lease_ms = (uint32_t)kv_cfg_int(&cfg, "lease-ms"),
        .node_timeout_ms = (uint32_t)kv_cfg_int(&cfg, "node-timeout") * 1000u,
        .leader_ttl_s = (int)kv_cfg_int(&cfg, "leader-ttl"),
    };
    kv_cli_block_signals();
    struct kv_master *m;
    int rc = kv_master_start(&mo, &m);
    if (rc < 0) {
        fprintf(stderr, "kvstash master: cannot start: %s (see the log line above)\n",
                kv_strerror(rc));
        ex = 1;
        goto out;
    }
    int sig = kv_cli_wait_signal();
    KV_LOGI("signal %d: shutting down", sig);
    kv_master_stop(m);
    ex = 0;
out:
    kv_cfg_fini(&cfg);
    return ex;
}
