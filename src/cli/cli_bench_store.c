/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_bench_store.c - `kvstash bench store`: put or get throughput and latency against a running
 * cluster, N threads sharing one client (the client is thread-safe), for a fixed duration.
 *
 * put: each thread puts fresh keys; to keep the cluster from filling, a thread that has
 *   --working-set/threads bytes outstanding removes its oldest key before the next put. The
 *   remove is inside the measured duration (so ops/s is conservative) but outside the put's
 *   latency sample.
 * get: the working set (--working-set bytes, at least one key per thread) is written first,
 *   then each thread gets keys round-robin into its own buffer (checksum-verified by the
 *   client) until the duration ends.
 * All keys are under bench/<host>-<pid>-<time>/ and removed at the end.
 * Thread model: the main thread starts the workers, sleeps the duration, sets the stop flag and
 *   joins; workers share nothing but the store and their own result slots.
 */
#define KV_LOG_COMPONENT "bench"
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/alloc.h"
#include "common/json.h"
#include "common/util.h"
#include "kvstash/store.h"

#define MAX_KEYS 4096

static const struct kv_cfg_opt bench_opts[] = {
    KV_CLI_STORE_OPTS,
    {"op", "KVSTASH_BENCH_OP", NULL, KV_CFG_ENUM, "put", 0, 0, "put|get", NULL,
     "operation to measure"},
    {"size", "KVSTASH_BENCH_SIZE", NULL, KV_CFG_SIZE, "1MiB", 0, 1073741824.0, NULL, "BYTES",
     "value size"},
    {"threads", "KVSTASH_BENCH_THREADS", NULL, KV_CFG_INT, "1", 1, 256, NULL, "N",
     "concurrent client threads"},
    {"duration", "KVSTASH_BENCH_DURATION", NULL, KV_CFG_DOUBLE, "10", 0.1, 86400, NULL, "S",
     "seconds to measure"},
    {"working-set", "KVSTASH_BENCH_WORKING_SET", NULL, KV_CFG_SIZE, "64MiB", 0, 1e13, NULL, "SIZE",
     "bytes of live keys (get: read round-robin; put: oldest removed beyond it)"},
    {"replicas", "KVSTASH_REPLICAS", NULL, KV_CFG_INT, "1", 1, 16, NULL, "N", "copies per put"},
};

struct worker {
    pthread_t th;
    int id;
    struct kv_store *s;
    const char *prefix;
    bool put;
    size_t size;
    size_t ring;  /* keys a put thread keeps; keys a get thread cycles over */
    size_t nkeys; /* get: total working set keys */
    int nthreads;
    int replicas;
    atomic_bool *stop;
    uint8_t *buf;
    /* results */
    uint64_t ops, errors;
    int first_err;
    uint32_t *lat_us;
    size_t nlat, caplat;
};

static void lat_add(struct worker *w, int64_t us)
{
    if (w->nlat == w->caplat) {
        size_t nc = w->caplat ? w->caplat * 2 : 4096;
        uint32_t *p = kv_realloc(w->lat_us, nc * sizeof(*p));
        if (!p)
            return; /* sample dropped; counts stay exact */
        w->lat_us = p;
        w->caplat = nc;
    }
    w->lat_us[w->nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        if ((i & 7) == 0) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        p[i] = (uint8_t)(x >> ((i & 7) * 8));
    }
}

static void put_key(char *k, size_t n, const char *prefix, int t, uint64_t i)
{
    snprintf(k, n, "%s/%d/%" PRIu64, prefix, t, i);
}

static void *put_main(void *arg)
{
    struct worker *w = arg;
    struct kv_put_opts po = {.replicas = w->replicas};
    char key[256], old[256];
    uint64_t i = 0, oldest = 0;
    while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
        if (i - oldest >= w->ring) {
            put_key(old, sizeof(old), w->prefix, w->id, oldest++);
            kv_store_remove(w->s, old);
        }
        put_key(key, sizeof(key), w->prefix, w->id, i++);
        int64_t t0 = kv_now_us();
        int rc = kv_store_put(w->s, key, w->buf, w->size, &po);
        int64_t dt = kv_now_us() - t0;
        if (rc < 0) {
            if (!w->errors)
                w->first_err = rc;
            w->errors++;
            continue;
        }
        w->ops++;
        lat_add(w, dt);
    }
    /* clean up what this thread still holds */
    for (; oldest < i; oldest++) {
        put_key(old, sizeof(old), w->prefix, w->id, oldest);
        kv_store_remove(w->s, old);
    }
    return NULL;
}

static void *get_main(void *arg)
{
    struct worker *w = arg;
    char key[256];
    uint64_t k = (uint64_t)w->id;
    while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
        put_key(key, sizeof(key), w->prefix, 0, k % w->nkeys);
        k += (uint64_t)w->nthreads;
        size_t len = 0;
        int64_t t0 = kv_now_us();
        int rc = kv_store_get(w->s, key, w->buf, w->size, &len);
        int64_t dt = kv_now_us() - t0;
        if (rc < 0 || len != w->size) {
            if (!w->errors)
                w->first_err = rc < 0 ? rc : KV_EIO;
            w->errors++;
            continue;
        }
        w->ops++;
        lat_add(w, dt);
    }
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int kv_cli_bench_store(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash bench store",
        .synopsis = "[--op=put|get] [--size=BYTES] [--threads=N] [--duration=S] [OPTIONS]",
        .description =
            "Measures store put or get throughput and latency against a running cluster\n"
            "(kvstash serve, or master + nodes). --op=get first writes its working set, then\n"
            "times gets. --protocol=shm|tcp picks the transport to the nodes. --json prints one\n"
            "object: ops, errors, ops_per_s, gb_per_s, p50_us, p99_us, avg_us, ...\n"
            "Compare with Redis: bench/store_vs_redis.sh.",
        .opts = bench_opts,
        .nopts = KV_ARRAY_SIZE(bench_opts),
    };
    struct kv_store *s = NULL;
    struct worker *ws = NULL;
    uint32_t *all = NULL;
    int nthreads = 0;
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out;
    if (cfg.nargs) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", cfg.prog, cfg.args[0]);
        ex = 2;
        goto out;
    }
    ex = 1;
    bool put = strcmp(kv_cfg_str(&cfg, "op"), "put") == 0;
    size_t size = (size_t)kv_cfg_size(&cfg, "size");
    nthreads = (int)kv_cfg_int(&cfg, "threads");
    double duration = kv_cfg_double(&cfg, "duration");
    uint64_t wset = kv_cfg_size(&cfg, "working-set");
    int replicas = (int)kv_cfg_int(&cfg, "replicas");
    if (kv_cli_store_open(&cfg, &s) < 0)
        goto out;
    char host[64] = "h";
    gethostname(host, sizeof(host) - 1);
    char prefix[160];
    snprintf(prefix, sizeof(prefix), "bench/%s-%d-%lld", host, (int)getpid(),
             (long long)kv_wall_ms());
    /* keys in the working set: --working-set / size, at least one per thread, at most
     * MAX_KEYS (tiny or empty values would otherwise mean millions of keys) */
    uint64_t per = size ? size : 1;
    size_t nkeys = (size_t)KV_MIN(MAX_KEYS, KV_MAX((uint64_t)nthreads, wset / per));
    size_t ring = (size_t)KV_MAX(1, nkeys / (size_t)nthreads);
    ws = kv_calloc((size_t)nthreads, sizeof(*ws));
    if (!ws)
        goto out_oom;
    atomic_bool stop;
    atomic_init(&stop, false);
    for (int t = 0; t < nthreads; t++) {
        struct worker *w = &ws[t];
        *w = (struct worker){.id = t,
                             .s = s,
                             .prefix = prefix,
                             .put = put,
                             .size = size,
                             .ring = ring,
                             .nkeys = nkeys,
                             .nthreads = nthreads,
                             .replicas = replicas,
                             .stop = &stop};
        w->buf = kv_malloc(size ? size : 1);
        if (!w->buf)
            goto out_oom;
        fill(w->buf, size, (uint64_t)t + 1);
    }
    if (!put) {
        /* the working set: thread 0's namespace, written in batches of up to 64 */
        struct kv_put_opts po = {.replicas = replicas};
        char key[256];
        for (size_t i = 0; i < nkeys; i++) {
            put_key(key, sizeof(key), prefix, 0, i);
            int rc = kv_store_put(s, key, ws[0].buf, size, &po);
            if (rc < 0 && rc != KV_EEXIST) {
                fprintf(stderr, "%s: writing the working set (%s): %s\n", cfg.prog, key,
                        kv_strerror(rc));
                for (size_t j = 0; j < i; j++) {
                    put_key(key, sizeof(key), prefix, 0, j);
                    kv_store_remove(s, key);
                }
                goto out;
            }
        }
    }
    int64_t t0 = kv_now_us();
    int started = 0;
    for (; started < nthreads; started++) {
        if (pthread_create(&ws[started].th, NULL, put ? put_main : get_main, &ws[started]) != 0)
            break;
    }
    kv_sleep_ms((int)(duration * 1000));
    atomic_store(&stop, true);
    for (int t = 0; t < started; t++)
        pthread_join(ws[t].th, NULL);
    double el = (double)(kv_now_us() - t0) / 1e6;
    if (started < nthreads) {
        fprintf(stderr, "%s: could only start %d of %d threads\n", cfg.prog, started, nthreads);
        goto out_cleanup;
    }
    uint64_t ops = 0, errors = 0;
    size_t nlat = 0;
    int first_err = 0;
    for (int t = 0; t < nthreads; t++) {
        ops += ws[t].ops;
        errors += ws[t].errors;
        nlat += ws[t].nlat;
        if (!first_err && ws[t].first_err)
            first_err = ws[t].first_err;
    }
    all = kv_malloc((nlat ? nlat : 1) * sizeof(*all));
    if (!all)
        goto out_oom;
    size_t p = 0;
    double sum = 0;
    for (int t = 0; t < nthreads; t++) {
        memcpy(all + p, ws[t].lat_us, ws[t].nlat * sizeof(*all));
        p += ws[t].nlat;
    }
    for (size_t i = 0; i < nlat; i++)
        sum += all[i];
    qsort(all, nlat, sizeof(*all), cmp_u32);
    double p50 = nlat ? all[(nlat - 1) / 2] : 0;
    double p99 = nlat ? all[(size_t)((double)(nlat - 1) * 0.99)] : 0;
    double avg = nlat ? sum / (double)nlat : 0;
    double ops_s = (double)ops / el;
    double gbs = ops_s * (double)size / 1e9;
    const char *proto = kv_cfg_str(&cfg, "protocol");
    if (kv_cfg_bool(&cfg, "json")) {
        json_t *o = json_pack("{s:s, s:s, s:I, s:i, s:f, s:I, s:I, s:f, s:f, s:f, s:f, s:f}", "op",
                              put ? "put" : "get", "protocol", proto, "size", (json_int_t)size,
                              "threads", nthreads, "duration_s", el, "ops", (json_int_t)ops,
                              "errors", (json_int_t)errors, "ops_per_s", ops_s, "gb_per_s", gbs,
                              "p50_us", p50, "p99_us", p99, "avg_us", avg);
        if (o && first_err)
            json_object_set_new(o, "first_error", json_string(kv_strerror(first_err)));
        char *txt = o ? kv_json_dump(o) : NULL;
        json_decref(o);
        printf("%s\n", txt ? txt : "{}");
        kv_free(txt);
    } else {
        char sz[32];
        printf("bench store %s: %s values, %d threads, protocol %s, %.1f s\n", put ? "put" : "get",
               kv_format_size(size, sz, sizeof(sz)), nthreads, proto, el);
        printf("  %llu ops (%llu errors%s%s), %.0f ops/s, %.3f GB/s\n", (unsigned long long)ops,
               (unsigned long long)errors, first_err ? ", first: " : "",
               first_err ? kv_strerror(first_err) : "", ops_s, gbs);
        printf("  latency: p50 %.0f us, p99 %.0f us, avg %.0f us\n", p50, p99, avg);
    }
    ex = ops > 0 ? 0 : 1;
    if (ops == 0)
        fprintf(stderr, "%s: no operation succeeded (%s)\n", cfg.prog,
                first_err ? kv_strerror(first_err) : "none ran");
    goto out_cleanup;
out_oom:
    fprintf(stderr, "%s: out of memory\n", cfg.prog);
    ex = 1;
out_cleanup:
    if (!put && s) {
        char key[256];
        for (size_t i = 0; i < nkeys; i++) {
            put_key(key, sizeof(key), prefix, 0, i);
            kv_store_remove(s, key);
        }
    }
out:
    for (int t = 0; ws && t < nthreads; t++) {
        kv_free(ws[t].buf);
        kv_free(ws[t].lat_us);
    }
    kv_free(ws);
    kv_free(all);
    kv_store_close(s);
    kv_cfg_fini(&cfg);
    return ex;
}
