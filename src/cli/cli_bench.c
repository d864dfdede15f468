/* SPDX-License-Identifier: Apache-2.0 */
/* cli_bench.c - `kvstash bench <what>`: dispatches to the benchmark subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

int kv_cli_bench(int argc, char **argv)
{
    static const char *usage =
        "Usage: kvstash bench <xfer|store|gateway|router> [OPTIONS]\n\n"
        "  xfer      transfer engine throughput and latency (Mooncake transfer_engine_bench flags)\n"
        "  store     store put/get throughput against a running cluster\n"
        "  gateway   engine-state gateway ingest rate\n"
        "  router    router request rate\n\n"
        "Run 'kvstash bench <what> --help' for its options.\n";
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "xfer") == 0)
        return kv_cli_bench_xfer(argc - 1, argv + 1);
    if (strcmp(argv[1], "gateway") == 0)
        return kv_cli_bench_gateway(argc - 1, argv + 1);
    if (strcmp(argv[1], "router") == 0)
        return kv_cli_bench_router(argc - 1, argv + 1);
    if (strcmp(argv[1], "store") == 0)
        return kv_cli_bench_store(argc - 1, argv + 1);
    fprintf(stderr, "kvstash bench: unknown benchmark '%s' (xfer, store, gateway, router)\n",
            argv[1]);
    return 2;
}
