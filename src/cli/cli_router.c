/* SPDX-License-Identifier: Apache-2.0 */
/* cli_router.c - TEMPORARY stubs until the router lands. */
#include "cli/cli.h"

int kv_cli_router(int argc, char **argv)
{
    return kv_cli_not_built(argc, argv);
}
int kv_cli_bench_router(int argc, char **argv)
{
    return kv_cli_not_built(argc, argv);
}
