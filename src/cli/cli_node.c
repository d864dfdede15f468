/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_node.c - `kvstash node`: runs a storage node (src/store/node.c) until SIGINT or SIGTERM:
 * a DRAM segment of --capacity bytes mounted into the cluster, and an optional SSD tier. With
 * --admin-addr it serves /health and /ready (200 once mounted) on the shared admin server: a
 * node is its own process (own container, own health check), so its readiness is its own
 * endpoint rather than only a row in the master's /api/v1/cluster.
 */
#define KV_LOG_COMPONENT "node"
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "common/admin_http.h"
#include "common/auth.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/xfer.h"
#include "store/store_int.h"

/* --hugepages, already checked against its choices by the config table */
static int cli_huge(const char *s)
{
    enum kv_xfer_huge h = KV_XFER_HUGE_OFF;
    return s && kv_xfer_huge_parse(s, &h) == KV_OK ? (int)h : KV_XFER_HUGE_OFF;
}

static const struct kv_cfg_opt node_opts[] = {
    {"metadata", "KVSTASH_METADATA", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "URL",
     "metadata URL (etcd://, http://H:P/metadata, redis://) - required: segments and leader"},
    {"cluster", "KVSTASH_CLUSTER", NULL, KV_CFG_STR, "default", 0, 0, NULL, "NAME",
     "cluster name (metadata namespace)"},
    {"master", "KVSTASH_NODE_MASTER", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "H:P",
     "use this master instead of following the elected leader"},
    {"capacity", "KVSTASH_CAPACITY", NULL, KV_CFG_SIZE, "1GiB", 1048576, 1e15, NULL, NULL,
     "DRAM segment size"},
    {"hugepages", "KVSTASH_HUGEPAGES", NULL, KV_CFG_ENUM, "off", 0, 0, "auto|2M|1G|off", NULL,
     "back the DRAM segment with huge pages (reserve them with scripts/host-prepare.sh): auto "
     "uses 2 MiB pages when enough are free, else 4 KiB pages; 2M/1G fail at start without them"},
    {"prefault", "KVSTASH_PREFAULT", NULL, KV_CFG_BOOL, "true", 0, 0, NULL, NULL,
     "commit and map the whole DRAM segment at start (about 1 s per GiB on a VM), so puts never "
     "wait on page faults; false: memory is committed as objects are written"},
    {"ssd-dir", "KVSTASH_SSD_DIR", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "DIR",
     "SSD tier directory: evicted objects are demoted here and survive restarts"},
    {"ssd-capacity", "KVSTASH_SSD_CAPACITY", NULL, KV_CFG_SIZE, "64GiB", 1048576, 1e18, NULL, NULL,
     "SSD tier size (oldest files dropped beyond it)"},
    {"node-id", "KVSTASH_NODE_ID", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "ID",
     "node id (default: kept in <ssd-dir>/NODE_ID, else node-<random>)"},
    {"bind", "KVSTASH_BIND", NULL, KV_CFG_STR, "127.0.0.1", 0, 0, NULL, "HOST",
     "address the RPC server and transfer engine listen on"},
    {"advertise-host", "KVSTASH_ADVERTISE_HOST", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "HOST",
     "host published to peers (default: --bind)"},
    {"protocol", "KVSTASH_PROTOCOL", NULL, KV_CFG_ENUM, "auto", 0, 0, "auto|tcp|shm|rdma", NULL,
     "transfer protocol"},
    {"token", "KVSTASH_TOKEN", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "SECRET",
     "shared token transfer and store RPC peers must present"},
    {"admin-addr", "KVSTASH_NODE_ADMIN_ADDR", NULL, KV_CFG_STR, "off", 0, 0, NULL, "H:P",
     "HTTP /health (liveness) and /ready (200 once mounted on the leader) on H:P, or off"},
    {"poll-spin-us", "KVSTASH_POLL_SPIN_US", NULL, KV_CFG_INT, "50", 0, 10000, NULL, "US",
     "an idle RPC event loop polls up to this long for the master's next request before it "
     "sleeps (0 = never; the window adapts to how soon requests come): less latency per put, up "
     "to this much CPU each time it falls idle"},
};

/* The node for the admin server's /ready: NULL until kv_node_start returned (prefaulting a
 * large segment takes seconds, and /health answers meanwhile). */
static _Atomic(struct kv_node *) admin_node;

static bool node_ready(void *ud, json_t *doc, char *reason, size_t reasonlen)
{
    (void)ud;
    struct kv_node *n = atomic_load(&admin_node);
    if (!n) {
        snprintf(reason, reasonlen, "starting (registering and prefaulting the segment)");
        return false;
    }
    json_object_set_new(doc, "node_id", json_string(kv_node_id(n)));
    if (kv_node_wait_mounted(n, 0) < 0) {
        snprintf(reason, reasonlen, "not mounted on a leader master yet");
        return false;
    }
    return true;
}

int kv_cli_node(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash node",
        .description =
            "Runs a storage node: registers a DRAM segment of --capacity bytes with the transfer\n"
            "engine (clients read and write it directly; same-host clients through shared\n"
            "memory), mounts it on the elected master and heartbeats. With --ssd-dir, objects\n"
            "evicted from DRAM are demoted to files there and read back on a hit; a node\n"
            "restarted on the same directory reports them again. Stop with SIGINT or SIGTERM.",
        .opts = node_opts,
        .nopts = KV_ARRAY_SIZE(node_opts),
    };
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out;
    ex = 2;
    if (cfg.nargs) {
        fprintf(stderr, "kvstash node: unexpected argument '%s'\n", cfg.args[0]);
        goto out;
    }
    const char *meta = kv_cfg_str(&cfg, "metadata");
    if (!meta) {
        fprintf(stderr, "kvstash node: --metadata URL is required (for example "
                        "--metadata=http://127.0.0.1:8080/metadata)\n");
        goto out;
    }
    const char *master = kv_cfg_str(&cfg, "master");
    char host[256];
    uint16_t port;
    if (master && (kv_parse_hostport(master, host, sizeof(host), &port) < 0 || port == 0)) {
        fprintf(stderr, "kvstash node: bad --master '%s' (want HOST:PORT)\n", master);
        goto out;
    }
    const char *proto = kv_cfg_str(&cfg, "protocol");
    struct kv_node_opts no = {
        .metadata = meta,
        .cluster = kv_cfg_str(&cfg, "cluster"),
        .master = master,
        .node_id = kv_cfg_str(&cfg, "node-id"),
        .capacity = kv_cfg_size(&cfg, "capacity"),
        .no_prefault = !kv_cfg_bool(&cfg, "prefault"),
        .hugepages = cli_huge(kv_cfg_str(&cfg, "hugepages")),
        .ssd_dir = kv_cfg_str(&cfg, "ssd-dir"),
        .ssd_capacity = kv_cfg_size(&cfg, "ssd-capacity"),
        .bind = kv_cfg_str(&cfg, "bind"),
        .advertise_host = kv_cfg_str(&cfg, "advertise-host"),
        .protocol = strcmp(proto, "auto") == 0 ? NULL : proto,
        .token = kv_cfg_str(&cfg, "token"),
        .poll_spin_us = (int)kv_cfg_int(&cfg, "poll-spin-us"),
    };
    /* the store RPC (common/auth.h) requires the same token as the transfer engine */
    kv_auth_set_token(kv_cfg_str(&cfg, "token"));
    kv_cli_block_signals();
    struct kv_admin_http *admin = NULL;
    const char *aaddr = kv_cfg_str(&cfg, "admin-addr");
    if (aaddr && strcmp(aaddr, "off") != 0) {
        struct kv_admin_http_opts ao = {.addr = aaddr, .ready = node_ready};
        char err[300];
        if (kv_admin_http_create(&ao, &admin, err, sizeof(err)) < 0 ||
            kv_admin_http_start(admin) < 0) {
            fprintf(stderr, "kvstash node: --admin-addr: %s\n", err);
            kv_admin_http_destroy(admin);
            ex = 1;
            goto out;
        }
        KV_LOGI("admin HTTP on port %u (/health, /ready)", kv_admin_http_port(admin));
    }
    struct kv_node *n;
    int rc = kv_node_start(&no, &n);
    if (rc < 0) {
        fprintf(stderr, "kvstash node: cannot start: %s (see the log line above)\n",
                kv_strerror(rc));
        kv_admin_http_destroy(admin);
        ex = 1;
        goto out;
    }
    atomic_store(&admin_node, n);
    int sig = kv_cli_wait_signal();
    KV_LOGI("signal %d: shutting down", sig);
    kv_admin_http_destroy(admin); /* before the node it reports on */
    atomic_store(&admin_node, NULL);
    kv_node_stop(n);
    ex = 0;
out:
    kv_cfg_fini(&cfg);
    return ex;
}
