/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_serve.c - `kvstash serve`: everything on one host in one process: embedded metadata (also
 * served over HTTP so other processes find this host), a store master (RPC + admin HTTP) and
 * one storage node whose DRAM segment (and optional SSD directory) holds the objects.
 * Thread model: the main thread starts everything, waits for SIGINT/SIGTERM, stops in reverse.
 */
#define KV_LOG_COMPONENT "serve"
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/auth.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/xfer.h"
#include "kvstash/kvstash.h"
#include "meta/metad.h"
#include "store/store_int.h"

/* --hugepages, already checked against its choices by the config table */
static int cli_huge(const char *s)
{
    enum kv_xfer_huge h = KV_XFER_HUGE_OFF;
    return s && kv_xfer_huge_parse(s, &h) == KV_OK ? (int)h : KV_XFER_HUGE_OFF;
}

static const struct kv_cfg_opt serve_opts[] = {
    {"capacity", "KVSTASH_CAPACITY", NULL, KV_CFG_SIZE, "1GiB", 1048576, 1e15, NULL, NULL,
     "DRAM the node serves"},
    {"hugepages", "KVSTASH_HUGEPAGES", NULL, KV_CFG_ENUM, "off", 0, 0, "auto|2M|1G|off", NULL,
     "back the DRAM segment with huge pages (reserve them with scripts/host-prepare.sh): auto "
     "uses 2 MiB pages when enough are free, else 4 KiB pages; 2M/1G fail at start without them"},
    {"prefault", "KVSTASH_PREFAULT", NULL, KV_CFG_BOOL, "true", 0, 0, NULL, NULL,
     "commit and map all of --capacity at start, so puts never wait on page faults (false: "
     "memory is committed as objects are written)"},
    {"data-dir", "KVSTASH_DATA_DIR", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "DIR",
     "SSD tier directory: evicted objects are demoted here and survive restarts"},
    {"ssd-capacity", "KVSTASH_SSD_CAPACITY", NULL, KV_CFG_SIZE, "64GiB", 1048576, 1e18, NULL, NULL,
     "size of the SSD tier (with --data-dir)"},
    {"master-addr", "KVSTASH_MASTER_ADDR", NULL, KV_CFG_STR, KV_STORE_DEFAULT_RPC, 0, 0, NULL,
     "HOST:PORT", "the store master's RPC address (clients: --master)"},
    {"admin-addr", "KVSTASH_ADMIN_ADDR", NULL, KV_CFG_STR, KV_STORE_DEFAULT_ADMIN, 0, 0, NULL,
     "HOST:PORT", "the master's admin HTTP (/health, /metrics, /api/v1/cluster); 'off' for none"},
    {"segment", "KVSTASH_SEGMENT", NULL, KV_CFG_STR, "serve", 0, 0, NULL, "NAME",
     "name of the node's DRAM segment in the cluster"},
    {"metadata-addr", "KVSTASH_METADATA_ADDR", NULL, KV_CFG_STR, "127.0.0.1:8080", 0, 0, NULL,
     "HOST:PORT", "serve the embedded metadata over HTTP here ('off' to keep it in-process)"},
    {"bind", "KVSTASH_BIND", NULL, KV_CFG_STR, "127.0.0.1", 0, 0, NULL, "HOST",
     "address the transfer engine and node RPC listen on (0.0.0.0 inside containers)"},
    {"protocol", "KVSTASH_PROTOCOL", NULL, KV_CFG_ENUM, "auto", 0, 0, "auto|tcp|shm|rdma", NULL,
     "transport for requests this process starts"},
    {"token", "KVSTASH_TOKEN", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "SECRET",
     "shared token transfer and store RPC peers must present"},
    {"io-threads", "KVSTASH_IO_THREADS", NULL, KV_CFG_INT, "0", 0, 64, NULL, "N",
     "the master's RPC event loops (0 = one per two CPUs, 1..8)"},
    {"poll-spin-us", "KVSTASH_POLL_SPIN_US", NULL, KV_CFG_INT, "50", 0, 10000, NULL, "US",
     "an idle RPC event loop polls up to this long before it sleeps (0 = never; the window adapts "
     "to how soon requests come): less latency per request, up to this much CPU each time it "
     "falls idle"},
    {"kv-expire-time", "KVSTASH_KV_EXPIRE_TIME", NULL, KV_CFG_INT, "86400", 1, 4e9, NULL, "S",
     "default object TTL in seconds"},
};

static int check_addr(const char *what, const char *v, bool off_ok)
{
    char host[256];
    uint16_t port;
    if ((off_ok && strcmp(v, "off") == 0) || kv_parse_hostport(v, host, sizeof(host), &port) == 0)
        return 0;
    fprintf(stderr, "kvstash serve: bad --%s '%s' (want HOST:PORT%s)\n", what, v,
            off_ok ? " or off" : "");
    return 2;
}

int kv_cli_serve(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash serve",
        .description =
            "Runs kvstash all-in-one on this host: embedded metadata (served over HTTP on\n"
            "--metadata-addr so other processes find this host), a store master on\n"
            "--master-addr (admin HTTP on --admin-addr) and one storage node with --capacity\n"
            "bytes of DRAM (and an SSD tier in --data-dir). It prints where it listens and what\n"
            "to try. Stop it with Ctrl-C (SIGINT) or SIGTERM.",
        .opts = serve_opts,
        .nopts = KV_ARRAY_SIZE(serve_opts),
    };
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out;
    ex = 2;
    if (cfg.nargs) {
        fprintf(stderr, "kvstash serve: unexpected argument '%s'\n", cfg.args[0]);
        goto out;
    }
    const char *maddr = kv_cfg_str(&cfg, "metadata-addr");
    const char *rpc = kv_cfg_str(&cfg, "master-addr");
    const char *admin = kv_cfg_str(&cfg, "admin-addr");
    if (check_addr("metadata-addr", maddr, true) || check_addr("master-addr", rpc, false) ||
        check_addr("admin-addr", admin, true))
        goto out;
    bool http = strcmp(maddr, "off") != 0;
    char host[256];
    uint16_t port = 0;
    if (http)
        kv_parse_hostport(maddr, host, sizeof(host), &port);
    kv_cli_block_signals();
    ex = 1;
    struct kv_metad *md = NULL;
    struct kv_meta *meta = NULL;
    struct kv_master *m = NULL;
    struct kv_node *node = NULL;
    int rc = kv_meta_open("embedded://serve", NULL, &meta);
    if (rc < 0) {
        fprintf(stderr, "kvstash serve: embedded metadata: %s\n", kv_strerror(rc));
        goto out_stop;
    }
    char meta_url[300] = "embedded://serve";
    if (http) {
        struct kv_metad_opts mo = {.addr = maddr, .embedded_name = "serve"};
        rc = kv_metad_start(&mo, &md);
        if (rc < 0) {
            fprintf(stderr,
                    "kvstash serve: cannot serve metadata on %s: %s (is another kvstash "
                    "running? try --metadata-addr 127.0.0.1:0 or off)\n",
                    maddr, kv_strerror(rc));
            goto out_stop;
        }
        port = kv_metad_port(md);
        snprintf(meta_url, sizeof(meta_url), "http://%s:%u/metadata",
                 strcmp(host, "0.0.0.0") == 0 ? "127.0.0.1" : host, port);
    }
    struct kv_master_opts mopts = {
        .metadata = "embedded://serve",
        .advertise_metadata = meta_url,
        .id = "serve",
        .rpc_addr = rpc,
        .admin_addr = admin,
        .kv_expire_time_s = (uint32_t)kv_cfg_int(&cfg, "kv-expire-time"),
        .io_threads = (int)kv_cfg_int(&cfg, "io-threads"),
        .poll_spin_us = (int)kv_cfg_int(&cfg, "poll-spin-us"),
        .in_process_rpc = true, /* its node calls it directly, not through a socket */
    };
    /* the store RPC (common/auth.h) requires the same token as the transfer engine */
    kv_auth_set_token(kv_cfg_str(&cfg, "token"));
    rc = kv_master_start(&mopts, &m);
    if (rc < 0) {
        fprintf(stderr,
                "kvstash serve: cannot start the master on %s (admin %s): %s (is another "
                "kvstash running? try --master-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0)\n",
                rpc, admin, kv_strerror(rc));
        goto out_stop;
    }
    kv_master_wait_leader(m, 5000);
    const char *proto = kv_cfg_str(&cfg, "protocol");
    struct kv_node_opts nopts = {
        .metadata = "embedded://serve",
        .node_id = "serve-node",
        .segment = kv_cfg_str(&cfg, "segment"),
        .capacity = kv_cfg_size(&cfg, "capacity"),
        .no_prefault = !kv_cfg_bool(&cfg, "prefault"),
        .hugepages = cli_huge(kv_cfg_str(&cfg, "hugepages")),
        .ssd_dir = kv_cfg_str(&cfg, "data-dir"),
        .ssd_capacity = kv_cfg_size(&cfg, "ssd-capacity"),
        .bind = kv_cfg_str(&cfg, "bind"),
        .protocol = strcmp(proto, "auto") == 0 ? NULL : proto,
        .token = kv_cfg_str(&cfg, "token"),
        .in_process_rpc = true, /* the master commits every put here: a call, not a socket */
    };
    rc = kv_node_start(&nopts, &node);
    if (rc < 0) {
        fprintf(stderr, "kvstash serve: cannot start the storage node (segment '%s'): %s\n",
                nopts.segment, kv_strerror(rc));
        goto out_stop;
    }
    if (kv_node_wait_mounted(node, 10000) < 0) {
        fprintf(stderr, "kvstash serve: the node did not mount on the master within 10 s\n");
        goto out_stop;
    }
    char sz[32];
    kv_format_size(nopts.capacity, sz, sizeof(sz));
    const char *maddr_adv = kv_master_rpc_addr(m);
    printf("kvstash serve %s: ready\n", kv_version());
    if (http)
        printf("  metadata  %s (embedded store, served over HTTP)\n", meta_url);
    else
        printf("  metadata  embedded, in-process only\n");
    printf("  master    %s (RPC)", maddr_adv);
    if (kv_master_admin_port(m)) {
        char ahost[256];
        uint16_t aport;
        kv_parse_hostport(admin, ahost, sizeof(ahost), &aport);
        printf(", admin http://%s:%u/api/v1/cluster",
               strcmp(ahost, "0.0.0.0") == 0 ? "127.0.0.1" : ahost, kv_master_admin_port(m));
    }
    printf("\n  node      %s: %s of DRAM in segment '%s'%s%s\n", kv_node_id(node), sz,
           nopts.segment, nopts.ssd_dir ? ", SSD tier in " : "",
           nopts.ssd_dir ? nopts.ssd_dir : "");
    /* the commands name this very executable: kvstash is usually not on PATH (./build) */
    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (sl <= 0)
        snprintf(self, sizeof(self), "kvstash");
    else
        self[sl] = '\0';
    printf("\nTry, from another terminal:\n"
           "  echo hello | %s put --master %s greeting -\n"
           "  %s get --master %s greeting -\n"
           "  %s ls --master %s\n"
           "  %s stat --master %s\n",
           self, maddr_adv, self, maddr_adv, self, maddr_adv, self, maddr_adv);
    if (http)
        printf("  %s bench store --metadata=%s --op=put --size=1048576 --duration=5\n", self,
               meta_url);
    printf("\nStop with Ctrl-C.\n");
    fflush(stdout);
    int sig = kv_cli_wait_signal();
    KV_LOGI("signal %d: shutting down", sig);
    ex = 0;
out_stop:
    kv_node_stop(node);
    kv_master_stop(m);
    kv_metad_stop(md);
    kv_meta_close(meta);
out:
    kv_cfg_fini(&cfg);
    return ex;
}
