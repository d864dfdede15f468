/* SPDX-License-Identifier: Apache-2.0 */
/*
 * main.c - the kvstash executable: dispatches to a subcommand, like git. Single-threaded until
 * a subcommand starts its own threads.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "kvstash/kvstash.h"

struct subcmd {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
};

static const struct subcmd subcmds[] = {
    {"serve", kv_cli_serve, "all-in-one on one host: embedded metadata + transfer segment"},
    {"metad", kv_cli_metad, "built-in HTTP metadata server (a stand-in for etcd)"},
    {"master", kv_cli_master, "store master (index, placement, leases, eviction)"},
    {"node", kv_cli_node, "storage node: DRAM segment and optional SSD tier"},
    {"put", kv_cli_put, "store an object: put KEY FILE|-"},
    {"get", kv_cli_get, "fetch an object: get KEY [FILE|-]"},
    {"rm", kv_cli_rm, "remove an object"},
    {"ls", kv_cli_ls, "list objects by prefix"},
    {"stat", kv_cli_stat, "cluster statistics"},
    {"p2p", kv_cli_p2p, "P2P file distribution: publish, fetch, ls, rm, stat"},
    {"gateway", kv_cli_gateway, "UDP engine-state gateway with an HTTP query API"},
    {"router", kv_cli_router, "OpenAI-compatible request router"},
    {"agent", kv_cli_agent, "send engine state reports to a gateway"},
    {"bench", kv_cli_bench, "benchmarks: bench xfer|store|gateway|router"},
    {"replay", kv_cli_replay, "replay a Mooncake request trace against a store"},
};

static void usage(FILE *out)
{
    fprintf(out, "Usage: kvstash <command> [OPTIONS] [ARGS]\n\n"
                 "kvstash keeps LLM engines' KV cache in DRAM and SSD across a cluster and moves "
                 "it back at memory/network speed.\n\nCommands:\n");
    for (size_t i = 0; i < sizeof(subcmds) / sizeof(subcmds[0]); i++)
        fprintf(out, "  %-10s %s\n", subcmds[i].name, subcmds[i].summary);
    fprintf(out, "\n  version    print the version\n  help CMD   show a command's options\n\n"
                 "Run 'kvstash <command> --help' for a command's options. Every option can also "
                 "come from the environment (KVSTASH_*) or a --config JSON file.\n");
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "help") == 0) {
        if (argc < 3) {
            usage(stdout);
            return 0;
        }
        char *hargv[] = {argv[2], "--help", NULL};
        argv = hargv;
        argc = 2;
        cmd = argv[0];
        for (size_t i = 0; i < sizeof(subcmds) / sizeof(subcmds[0]); i++)
            if (strcmp(subcmds[i].name, cmd) == 0)
                return subcmds[i].fn(argc, argv);
        fprintf(stderr, "kvstash: unknown command '%s' (see 'kvstash --help')\n", cmd);
        return 2;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("kvstash %s\n", kv_version());
        return 0;
    }
    for (size_t i = 0; i < sizeof(subcmds) / sizeof(subcmds[0]); i++)
        if (strcmp(subcmds[i].name, cmd) == 0)
            return subcmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "kvstash: unknown command '%s' (see 'kvstash --help')\n", cmd);
    return 2;
}
