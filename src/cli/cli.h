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

#endif
