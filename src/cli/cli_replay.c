/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_replay.c - `kvstash replay --trace FILE`: replays a Mooncake-format request trace against
 * a running store (the loop is in src/store/replay.c) and prints requests, blocks, hit blocks,
 * hit ratio, bytes moved and throughput; a progress bar on stderr when it is a terminal.
 * Single-threaded.
 */
#define KV_LOG_COMPONENT "replay"
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/alloc.h"
#include "common/json.h"
#include "common/util.h"
#include "store/replay.h"

static const struct kv_cfg_opt replay_opts[] = {
    KV_CLI_STORE_OPTS,
    {"trace", "KVSTASH_TRACE", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "FILE",
     "the trace (JSON lines: timestamp, input_length, output_length, hash_ids); - = stdin"},
    {"block-bytes", "KVSTASH_BLOCK_BYTES", NULL, KV_CFG_SIZE, "4KiB", 1, 1073741824.0, NULL, "SIZE",
     "bytes stored per block (a trace block is 512 tokens; real KV blocks are MiBs)"},
    {"speed", "KVSTASH_SPEED", NULL, KV_CFG_DOUBLE, "0", 0, 1e9, NULL, "X",
     "follow the trace's timestamps at X times real time (0 = as fast as possible)"},
    {"key-prefix", "KVSTASH_KEY_PREFIX", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "PREFIX",
     "block keys are PREFIX/<hash_id> (default: the trace file's name without .jsonl)"},
    {"get-hits", "KVSTASH_GET_HITS", NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL,
     "also read the hit blocks back (as an engine loading its cached prefix)"},
    {"replicas", "KVSTASH_REPLICAS", NULL, KV_CFG_INT, "1", 1, 16, NULL, "N",
     "copies of each block"},
    {"max-requests", "KVSTASH_MAX_REQUESTS", NULL, KV_CFG_INT, "0", 0, 1e15, NULL, "N",
     "stop after N requests (0 = the whole trace)"},
    {"progress", "KVSTASH_PROGRESS", NULL, KV_CFG_ENUM, "auto", 0, 0, "auto|on|off", NULL,
     "progress bar on stderr (auto: when stderr is a terminal)"},
};

struct progress {
    int64_t last_ms;
};

static void on_progress(void *ud, const struct kv_replay_stats *st, uint64_t pos, uint64_t total)
{
    struct progress *p = ud;
    int64_t now = kv_now_ms();
    if (now - p->last_ms < 100 && !(total && pos >= total))
        return;
    p->last_ms = now;
    double frac = total ? (double)pos / (double)total : 0;
    if (frac > 1)
        frac = 1;
    char bar[31];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    double hr = st->blocks ? (double)st->hit_blocks / (double)st->blocks : 0;
    double mbps =
        st->elapsed_s > 0 ? (double)(st->bytes_written + st->bytes_read) / st->elapsed_s / 1e6 : 0;
    fprintf(stderr, "\r[%s] %5.1f%%  %llu req  hit %.3f  %.1f MB/s ", bar, frac * 100,
            (unsigned long long)st->requests, hr, mbps);
    fflush(stderr);
}

int kv_cli_replay(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash replay",
        .synopsis = "--trace FILE [OPTIONS]",
        .description =
            "Replays a Mooncake-format trace against a running store. For each request, in\n"
            "order: one batch lookup of its blocks (keys PREFIX/<hash_id>) counted as a prefix\n"
            "(hits until the first miss, then all misses), then one batch put of the missing\n"
            "blocks, --block-bytes each. Prints requests, blocks, hit_blocks, hit_ratio (hit\n"
            "blocks / blocks), bytes moved and throughput; --json prints one object. A bad trace\n"
            "line stops the replay with an error naming the line. See bench/README.md.",
        .opts = replay_opts,
        .nopts = KV_ARRAY_SIZE(replay_opts),
    };
    struct kv_store *s = NULL;
    FILE *f = NULL;
    char *prefix = NULL;
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out;
    ex = 2;
    if (cfg.nargs) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", cfg.prog, cfg.args[0]);
        goto out;
    }
    const char *trace = kv_cfg_str(&cfg, "trace");
    if (!trace) {
        fprintf(stderr, "%s: --trace FILE is required\n", cfg.prog);
        goto out;
    }
    ex = 1;
    uint64_t total = 0;
    if (strcmp(trace, "-") == 0) {
        f = stdin;
    } else {
        f = fopen(trace, "rb");
        if (!f) {
            fprintf(stderr, "%s: %s: %s\n", cfg.prog, trace, strerror(errno));
            goto out;
        }
        struct stat st;
        if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode))
            total = (uint64_t)st.st_size;
    }
    const char *kp = kv_cfg_str(&cfg, "key-prefix");
    if (kp) {
        prefix = kv_strdup(kp);
    } else {
        char *tmp = kv_strdup(strcmp(trace, "-") == 0 ? "stdin" : trace);
        if (tmp) {
            char *base = basename(tmp);
            size_t n = strlen(base);
            if (n > 6 && strcmp(base + n - 6, ".jsonl") == 0)
                base[n - 6] = '\0';
            prefix = kv_strdup(base);
            kv_free(tmp);
        }
    }
    if (!prefix || !prefix[0] || strlen(prefix) > KV_STORE_MAX_KEY - 24) {
        fprintf(stderr, "%s: bad --key-prefix\n", cfg.prog);
        ex = 2;
        goto out;
    }
    if (kv_cli_store_open(&cfg, &s) < 0)
        goto out;
    const char *pm = kv_cfg_str(&cfg, "progress");
    bool show = strcmp(pm, "on") == 0 || (strcmp(pm, "auto") == 0 && isatty(STDERR_FILENO));
    struct progress prog = {0};
    struct kv_replay_opts ro = {
        .block_bytes = kv_cfg_size(&cfg, "block-bytes"),
        .speed = kv_cfg_double(&cfg, "speed"),
        .key_prefix = prefix,
        .get_hits = kv_cfg_bool(&cfg, "get-hits"),
        .put = {.replicas = (int)kv_cfg_int(&cfg, "replicas")},
        .max_requests = (uint64_t)kv_cfg_int(&cfg, "max-requests"),
        .progress = show ? on_progress : NULL,
        .ud = &prog,
    };
    struct kv_replay_stats st;
    char err[512] = "";
    int rc = kv_replay_run(s, f, total, &ro, &st, err, sizeof(err));
    if (show)
        fputc('\n', stderr);
    if (rc < 0) {
        fprintf(stderr, "%s: %s: %s\n", cfg.prog, trace, err);
        goto out;
    }
    double hr = st.blocks ? (double)st.hit_blocks / (double)st.blocks : 0;
    uint64_t moved = st.bytes_written + st.bytes_read;
    double el = st.elapsed_s > 0 ? st.elapsed_s : 1e-9;
    if (kv_cfg_bool(&cfg, "json")) {
        json_t *o = json_object();
        json_object_set_new(o, "trace", json_string(prefix));
        json_object_set_new(o, "block_bytes", json_integer((json_int_t)ro.block_bytes));
        json_object_set_new(o, "requests", json_integer((json_int_t)st.requests));
        json_object_set_new(o, "blocks", json_integer((json_int_t)st.blocks));
        json_object_set_new(o, "hit_blocks", json_integer((json_int_t)st.hit_blocks));
        json_object_set_new(o, "hit_ratio", json_real(hr));
        json_object_set_new(o, "put_blocks", json_integer((json_int_t)st.put_blocks));
        json_object_set_new(o, "put_exist", json_integer((json_int_t)st.put_exist));
        json_object_set_new(o, "put_failed", json_integer((json_int_t)st.put_failed));
        json_object_set_new(o, "get_failed", json_integer((json_int_t)st.get_failed));
        json_object_set_new(o, "bytes_written", json_integer((json_int_t)st.bytes_written));
        json_object_set_new(o, "bytes_read", json_integer((json_int_t)st.bytes_read));
        json_object_set_new(o, "bytes_moved", json_integer((json_int_t)moved));
        json_object_set_new(o, "elapsed_s", json_real(st.elapsed_s));
        json_object_set_new(o, "requests_per_s", json_real((double)st.requests / el));
        json_object_set_new(o, "throughput_gb_s", json_real((double)moved / el / 1e9));
        json_object_set_new(o, "trace_span_s", json_real((double)st.trace_ms / 1000.0));
        char *txt = kv_json_dump(o);
        json_decref(o);
        printf("%s\n", txt ? txt : "{}");
        kv_free(txt);
    } else {
        char w[32], r[32];
        printf("replayed %s: %llu requests, %llu blocks, %llu hit blocks (hit_ratio %.4f)\n",
               prefix, (unsigned long long)st.requests, (unsigned long long)st.blocks,
               (unsigned long long)st.hit_blocks, hr);
        printf("  put %llu blocks (%llu already there, %llu failed), %s written, %s read "
               "(%llu failed reads)\n",
               (unsigned long long)st.put_blocks, (unsigned long long)st.put_exist,
               (unsigned long long)st.put_failed, kv_format_size(st.bytes_written, w, sizeof(w)),
               kv_format_size(st.bytes_read, r, sizeof(r)), (unsigned long long)st.get_failed);
        printf("  %.2f s: %.0f requests/s, %.3f GB/s moved\n", st.elapsed_s,
               (double)st.requests / el, (double)moved / el / 1e9);
    }
    ex = 0;
out:
    if (f && f != stdin)
        fclose(f);
    kv_free(prefix);
    kv_store_close(s);
    kv_cfg_fini(&cfg);
    return ex;
}
