/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_serve.c - `kvstash serve`: everything on one host in one process. Today: embedded
 * metadata (also served over HTTP so other processes find this host's segments) and one
 * registered transfer segment. The store's master and node join here when they land.
 */
#define KV_LOG_COMPONENT "serve"
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/kvstash.h"
#include "meta/metad.h"

static const struct kv_cfg_opt serve_opts[] = {
    {"capacity", "KVSTASH_CAPACITY", NULL, KV_CFG_SIZE, "256MiB", 4096, 1e15, NULL, NULL,
     "size of the DRAM segment this host serves"},
    {"segment", "KVSTASH_SEGMENT", NULL, KV_CFG_STR, "serve", 0, 0, NULL, "NAME",
     "name of the segment in the cluster"},
    {"metadata-addr", "KVSTASH_METADATA_ADDR", NULL, KV_CFG_STR, "127.0.0.1:8080", 0, 0, NULL,
     "HOST:PORT", "serve the embedded metadata over HTTP here ('off' to keep it in-process)"},
    {"bind", "KVSTASH_BIND", NULL, KV_CFG_STR, "127.0.0.1", 0, 0, NULL, "HOST",
     "address the transfer engine listens on (0.0.0.0 inside containers)"},
    {"protocol", "KVSTASH_PROTOCOL", NULL, KV_CFG_ENUM, "auto", 0, 0, "auto|tcp|shm|rdma", NULL,
     "transport for requests this process starts"},
    {"token", "KVSTASH_TOKEN", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "SECRET",
     "shared token peers must present"},
};

int kv_cli_serve(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash serve",
        .description =
            "Runs kvstash all-in-one on this host: embedded metadata, served over HTTP on\n"
            "--metadata-addr so other processes can find this host's segments, and one DRAM\n"
            "segment of --capacity bytes registered with the transfer engine. It prints where it\n"
            "listens and what to try. Stop it with Ctrl-C (SIGINT) or SIGTERM.",
        .opts = serve_opts,
        .nopts = KV_ARRAY_SIZE(serve_opts),
    };
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out;
    if (cfg.nargs) {
        fprintf(stderr, "kvstash serve: unexpected argument '%s'\n", cfg.args[0]);
        ex = 2;
        goto out;
    }
    const char *maddr = kv_cfg_str(&cfg, "metadata-addr");
    bool http = strcmp(maddr, "off") != 0;
    char host[256];
    uint16_t port = 0;
    if (http && kv_parse_hostport(maddr, host, sizeof(host), &port) < 0) {
        fprintf(stderr, "kvstash serve: bad --metadata-addr '%s' (want HOST:PORT or off)\n", maddr);
        ex = 2;
        goto out;
    }
    kv_cli_block_signals();
    ex = 1;
    struct kv_metad *md = NULL;
    struct kv_meta *meta = NULL;
    struct kv_xfer *x = NULL;
    int rc = kv_meta_open("embedded://serve", NULL, &meta);
    if (rc < 0) {
        fprintf(stderr, "kvstash serve: embedded metadata: %s\n", kv_strerror(rc));
        goto out_stop;
    }
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
    }
    const char *proto = kv_cfg_str(&cfg, "protocol");
    struct kv_xfer_opts xo = {
        .protocol = proto,
        .bind_host = kv_cfg_str(&cfg, "bind"),
        .token = kv_cfg_str(&cfg, "token"),
    };
    rc = kv_xfer_create(meta, &xo, &x);
    if (rc < 0) {
        fprintf(stderr, "kvstash serve: transfer engine: %s\n", kv_strerror(rc));
        goto out_stop;
    }
    void *addr;
    kv_seg_id seg;
    uint64_t cap = kv_cfg_size(&cfg, "capacity");
    const char *segname = kv_cfg_str(&cfg, "segment");
    rc = kv_xfer_segment_alloc(x, segname, cap, &addr, &seg);
    if (rc < 0) {
        fprintf(stderr, "kvstash serve: cannot register segment '%s' (%llu bytes): %s\n", segname,
                (unsigned long long)cap, kv_strerror(rc));
        goto out_stop;
    }
    char sz[32];
    kv_format_size(cap, sz, sizeof(sz));
    printf("kvstash serve %s: ready\n", kv_version());
    if (http)
        printf("  metadata  http://%s:%u/metadata (embedded store, served over HTTP)\n", host,
               port);
    else
        printf("  metadata  embedded, in-process only\n");
    printf("  segment   '%s': %s of DRAM, reachable over tcp (and shm from this host)\n", segname,
           sz);
    if (http) {
        printf("\nTry, from another terminal:\n"
               "  kvstash bench xfer --mode=initiator "
               "--metadata_server=http://%s:%u/metadata --segment_id=%s --operation=write "
               "--duration=5\n"
               "  curl -s 'http://%s:%u/metadata?prefix=/kvstash/'   # what is registered\n",
               host, port, segname, host, port);
    }
    printf("\nStop with Ctrl-C.\n");
    fflush(stdout);
    int sig = kv_cli_wait_signal();
    KV_LOGI("signal %d: shutting down", sig);
    ex = 0;
out_stop:
    kv_xfer_destroy(x);
    kv_metad_stop(md);
    kv_meta_close(meta);
out:
    kv_cfg_fini(&cfg);
    return ex;
}
