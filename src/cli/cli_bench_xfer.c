/* SPDX-License-Identifier: Apache-2.0 */
/* cli_bench_xfer.c - TEMPORARY stub until the transfer engine lands. */
#include "cli/cli.h"

int kv_cli_bench_xfer(int argc, char **argv)
{
    return kv_cli_not_built(argc, argv);
}
