/* SPDX-License-Identifier: Apache-2.0 */
/* cli_gateway.c - TEMPORARY stubs until the gateway lands. */
#include "cli/cli.h"

int kv_cli_gateway(int argc, char **argv)
{
    return kv_cli_not_built(argc, argv);
}
int kv_cli_agent(int argc, char **argv)
{
    return kv_cli_not_built(argc, argv);
}
int kv_cli_bench_gateway(int argc, char **argv)
{
    return kv_cli_not_built(argc, argv);
}
