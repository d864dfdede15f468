/* SPDX-License-Identifier: Apache-2.0 */
/* cli_metad.c - `kvstash metad`: the built-in HTTP metadata server. */
#define KV_LOG_COMPONENT "metad"
#include <stdio.h>

#include "cli/cli.h"
#include "common/auth.h"
#include "common/log.h"
#include "common/util.h"
#include "meta/metad.h"

static const struct kv_cfg_opt metad_opts[] = {
    {"addr", "KVSTASH_METAD_ADDR", NULL, KV_CFG_STR, "127.0.0.1:8080", 0, 0, NULL, "HOST:PORT",
     "address to listen on (use 0.0.0.0:8080 inside containers)"},
    {"data-file", "KVSTASH_METAD_DATA_FILE", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "FILE",
     "persist the store to FILE (written atomically on every change, loaded at start)"},
    {"max-value", "KVSTASH_METAD_MAX_VALUE", NULL, KV_CFG_SIZE, "64MiB", 1, 1073741824.0, NULL,
     "SIZE",
     "largest value a PUT /metadata stores (Mooncake's server has no limit; larger bodies get "
     "413)"},
    {"token", "KVSTASH_TOKEN", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "SECRET",
     "shared token every PUT, POST and DELETE must present (Authorization: Bearer); reads stay "
     "open"},
};

int kv_cli_metad(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash metad",
        .description =
            "Runs the built-in HTTP metadata server, a small stand-in for etcd on small setups.\n"
            "Clients use it with --metadata=http://HOST:PORT/metadata. Wire contract (Mooncake's\n"
            "HTTP metadata server): GET/PUT/DELETE /metadata?key=K; kvstash clients also use its\n"
            "list, compare-and-swap, lease and watch endpoints. Without --data-file the store\n"
            "lives in memory only.",
        .opts = metad_opts,
        .nopts = KV_ARRAY_SIZE(metad_opts),
    };
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out;
    if (cfg.nargs) {
        fprintf(stderr, "kvstash metad: unexpected argument '%s'\n", cfg.args[0]);
        ex = 2;
        goto out;
    }
    char host[256];
    uint16_t port;
    if (kv_parse_hostport(kv_cfg_str(&cfg, "addr"), host, sizeof(host), &port) < 0) {
        fprintf(stderr, "kvstash metad: bad --addr '%s' (want HOST:PORT)\n",
                kv_cfg_str(&cfg, "addr"));
        ex = 2;
        goto out;
    }
    if (kv_auth_set_token(kv_cfg_str(&cfg, "token")) < 0) {
        fprintf(stderr, "kvstash metad: --token is longer than %d bytes\n", KV_AUTH_MAX_TOKEN);
        ex = 2;
        goto out;
    }
    kv_cli_block_signals();
    struct kv_metad_opts mo = {.addr = kv_cfg_str(&cfg, "addr"),
                               .data_file = kv_cfg_str(&cfg, "data-file"),
                               .max_value = (size_t)kv_cfg_size(&cfg, "max-value")};
    struct kv_metad *d;
    int rc = kv_metad_start(&mo, &d);
    if (rc < 0) {
        fprintf(stderr, "kvstash metad: cannot start on %s: %s\n", mo.addr, kv_strerror(rc));
        ex = 1;
        goto out;
    }
    KV_LOGI("metadata server listening on http://%s:%u/metadata%s%s%s", host, kv_metad_port(d),
            mo.data_file ? ", data file " : "", mo.data_file ? mo.data_file : "",
            kv_auth_token() ? "; changes require the shared token" : "");
    int sig = kv_cli_wait_signal();
    KV_LOGI("signal %d: stopping", sig);
    kv_metad_stop(d);
    ex = 0;
out:
    kv_cfg_fini(&cfg);
    return ex;
}
