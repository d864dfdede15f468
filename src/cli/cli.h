/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli.h - the kvstash executable's subcommands. Each kv_cli_<name>(argc, argv) gets argv[0] =
 * the subcommand name and returns the process exit status: 0 success, 1 runtime failure, 2 bad
 * usage (one line on stderr naming the problem).
 */
#ifndef KV_CLI_H
#define KV_CLI_H

#include "common/config.h"

/* Parses c from argv. Returns -1 to go on, or an exit status (0 after --help, 2 after printing
 * one line "kvstash SUB: problem"). */
int kv_cli_parse(struct kv_cfg *c, int argc, char **argv);

/* Blocks SIGINT/SIGTERM (call before starting threads) and waits for one; returns its number. */
void kv_cli_block_signals(void);
int kv_cli_wait_signal(void);

int kv_cli_serve(int argc, char **argv);
int kv_cli_metad(int argc, char **argv);
int kv_cli_bench(int argc, char **argv);
int kv_cli_bench_xfer(int argc, char **argv);
int kv_cli_gateway(int argc, char **argv);
int kv_cli_agent(int argc, char **argv);
int kv_cli_bench_gateway(int argc, char **argv);
int kv_cli_router(int argc, char **argv);
int kv_cli_bench_router(int argc, char **argv);
int kv_cli_not_built(int argc, char **argv);
/* P2P file distribution (cli_p2p.c): p2p publish|fetch|ls|rm|stat. */
int kv_cli_p2p(int argc, char **argv);

/* store server side (cli_master.c, cli_node.c) */
int kv_cli_master(int argc, char **argv);
int kv_cli_node(int argc, char **argv);

/* Store client commands (cli_store.c, cli_replay.c, cli_bench_store.c). */
int kv_cli_put(int argc, char **argv);
int kv_cli_get(int argc, char **argv);
int kv_cli_rm(int argc, char **argv);
int kv_cli_ls(int argc, char **argv);
int kv_cli_stat(int argc, char **argv);
int kv_cli_replay(int argc, char **argv);
int kv_cli_bench_store(int argc, char **argv);

/* The master the store commands use when neither --master nor --metadata is given. */
#define KV_CLI_DEFAULT_MASTER "127.0.0.1:50051"

/* Options every store client command has (first in its table). */
/* clang-format off */
#define KV_CLI_STORE_OPTS                                                                          \
    {"master", "KVSTASH_MASTER", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "H:P",                        \
     "store master address (default " KV_CLI_DEFAULT_MASTER " unless --metadata is given)"},       \
    {"metadata", "KVSTASH_METADATA", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "URL",                    \
     "metadata URL: finds the elected master (etcd://, http://, redis://)"},                       \
    {"cluster", "KVSTASH_CLUSTER", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "NAME",                     \
     "cluster name in metadata (default: the master's, else 'default')"},                          \
    {"protocol", "KVSTASH_PROTOCOL", NULL, KV_CFG_ENUM, "auto", 0, 0, "auto|tcp|shm|rdma", NULL,   \
     "transport to the storage nodes (auto: shm on the same host)"},                               \
    {"timeout", "KVSTASH_TIMEOUT", NULL, KV_CFG_INT, "10000", 100, 3600000, NULL, "MS",            \
     "per operation, including finding a new master after a fail-over"},                           \
    {"token", "KVSTASH_TOKEN", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "SECRET",                       \
     "shared token the store's master and nodes require (when they were started with one)"},     \
    {"poll-spin-us", "KVSTASH_POLL_SPIN_US", NULL, KV_CFG_INT, "50", 0, 10000, NULL, "US",         \
     "poll up to this long for the master's answer before sleeping (0 = never; adapts)"},          \
    {"json", NULL, NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL, "machine-readable output"}
/* clang-format on */

/* Opens the store from the KV_CLI_STORE_OPTS options of c; prints one line naming the problem
 * on failure. */
struct kv_store;
int kv_cli_store_open(const struct kv_cfg *c, struct kv_store **out);

#endif
