/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_config.c - the command-line and value parsers: arbitrary bytes are split on NUL into
 * argv and parsed against a table with every option type; the same bytes go through the size,
 * number, bool and host:port parsers. Nothing may crash, and a failed parse must leave a
 * message.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/config.h"
#include "common/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct kv_cfg_opt opts[] = {
    {"size", NULL, NULL, KV_CFG_SIZE, "64MiB", 1, 1e12, NULL, NULL, "s"},
    {"n", NULL, NULL, KV_CFG_INT, "2", 1, 64, NULL, NULL, "n"},
    {"mode", NULL, NULL, KV_CFG_ENUM, "a", 0, 0, "a|b", NULL, "m"},
    {"flag", NULL, NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL, "f"},
    {"x", NULL, NULL, KV_CFG_DOUBLE, "0.5", 0, 1, NULL, NULL, "x"},
    {"name", NULL, NULL, KV_CFG_STR, NULL, 0, 0, NULL, NULL, "name"},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *buf = kv_memdup0(data, size);
    if (!buf)
        return 0;
    char *argv[64] = {"fuzz"};
    int argc = 1;
    char *p = buf, *end = buf + size;
    while (p < end && argc < 63) {
        argv[argc++] = p;
        p += strlen(p) + 1;
    }
    for (int i = 1; i < argc; i++) {
        /* --config would read files; keep the fuzzer away from the file system */
        if (strstr(argv[i], "config") || strstr(argv[i], "help") || strstr(argv[i], "print") ||
            strcmp(argv[i], "-h") == 0)
            argv[i] = "--flag";
    }
    struct kv_cfg c = {.prog = "fuzz", .opts = opts, .nopts = sizeof(opts) / sizeof(opts[0])};
    char err[256];
    int rc = kv_cfg_parse(&c, argc, argv, err, sizeof(err));
    if (rc < 0 && err[0] == '\0')
        __builtin_trap();
    kv_cfg_fini(&c);

    uint64_t u;
    int64_t i64;
    double d;
    bool b;
    char host[64];
    uint16_t port;
    kv_parse_size(buf, &u);
    kv_parse_u64(buf, &u);
    kv_parse_i64(buf, &i64);
    kv_parse_double(buf, &d);
    kv_parse_bool(buf, &b);
    kv_parse_hostport(buf, host, sizeof(host), &port);
    kv_free(buf);
    return 0;
}
