/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_bench_store.c - `kvstash bench store`: throughput and latency of one store operation
 * against a running cluster, N threads sharing one client (the client is thread-safe), for a
 * fixed duration or a fixed number of objects, whichever ends first.
 *
 * Operations (--op): put, get, exists (one key per call) and batch-put, batch-get, batch-exists
 * (--batch keys per call: one kv_store_batch_* call). An "op" in the figures is one object (one
 * key); a "call" is one client call; latency samples are per call.
 *
 * Keys are <key-prefix>/<index> (the index zero-padded to make every key exactly --key-size
 * bytes when that is given). Default prefix: bench/<host>-<pid>-<time>.
 * put, batch-put: threads claim fresh indexes from one shared counter starting at --first, so
 *   the keys written are exactly first .. first+N-1. To keep the cluster from filling, a thread
 *   that holds --working-set/threads bytes removes its oldest call's keys (one batch remove)
 *   before the next call; the remove is inside the measured duration (so ops/s is conservative)
 *   but outside the latency sample. With --keep nothing is removed, during or after the run.
 * get, exists, batch-*: the working set (--working-set bytes, at least one key per thread and
 *   one batch) is written first in batches, then threads pick random keys of it; with
 *   --existing=N nothing is written: keys first .. first+N-1 must exist already (an earlier
 *   batch-put with the same --key-prefix and --key-size), and a missing one is an error.
 * Only successful objects count in ops; every failed one counts in errors (a get of the wrong
 * size, an exists answering "absent" included) and the first failure is reported by name.
 * --max-errors=N ends the run early once N objects failed (say the store went away during a
 * long --count run). Everything written is removed at the end unless --keep.
 * Thread model: the main thread starts the workers, waits for the duration or for all of them
 *   to finish their share of --count, sets the stop flag and joins; workers share the store,
 *   the stop flag and the index counter (atomics), and write only their own result slots.
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

#define MAX_KEYS 65536      /* working set keys written for the read operations */
#define FILL_BATCH 256      /* keys per call when writing or removing the working set */
#define MAX_INDEX_DIGITS 20 /* of a uint64_t */

static const struct kv_cfg_opt bench_opts[] = {
    KV_CLI_STORE_OPTS,
    {"op", "KVSTASH_BENCH_OP", NULL, KV_CFG_ENUM, "put", 0, 0,
     "put|get|exists|batch-put|batch-get|batch-exists", NULL, "operation to measure"},
    {"size", "KVSTASH_BENCH_SIZE", NULL, KV_CFG_SIZE, "1MiB", 0, 1073741824.0, NULL, "BYTES",
     "value size"},
    {"threads", "KVSTASH_BENCH_THREADS", NULL, KV_CFG_INT, "1", 1, 256, NULL, "N",
     "concurrent client threads"},
    {"duration", "KVSTASH_BENCH_DURATION", NULL, KV_CFG_DOUBLE, "10", 0.1, 86400, NULL, "S",
     "seconds to measure (the run ends earlier when --count is reached)"},
    {"count", "KVSTASH_BENCH_COUNT", NULL, KV_CFG_INT, "0", 0, 1e15, NULL, "N",
     "objects to process in all, then stop (0 = run for --duration)"},
    {"batch", "KVSTASH_BENCH_BATCH", NULL, KV_CFG_INT, "64", 1, 4096, NULL, "N",
     "keys per call of the batch-* operations"},
    {"working-set", "KVSTASH_BENCH_WORKING_SET", NULL, KV_CFG_SIZE, "64MiB", 0, 1e13, NULL, "SIZE",
     "bytes of live keys (reads: picked at random; puts: oldest removed beyond it)"},
    {"key-prefix", "KVSTASH_BENCH_KEY_PREFIX", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "P",
     "keys are P/<index> (default bench/<host>-<pid>-<time>); two runs at once need two"},
    {"key-size", "KVSTASH_BENCH_KEY_SIZE", NULL, KV_CFG_INT, "0", 0, KV_STORE_MAX_KEY, NULL, "N",
     "zero-pad the index so that every key is N bytes (0 = no padding)"},
    {"first", "KVSTASH_BENCH_FIRST", NULL, KV_CFG_INT, "0", 0, 1e15, NULL, "N",
     "first key index (puts write first, first+1, ...; reads use first .. first+keys-1)"},
    {"existing", "KVSTASH_BENCH_EXISTING", NULL, KV_CFG_INT, "0", 0, 1e15, NULL, "N",
     "reads only: keys first .. first+N-1 already exist; write no working set"},
    {"keep", "KVSTASH_BENCH_KEEP", NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL,
     "remove nothing: puts keep every key, reads leave their working set"},
    {"max-errors", "KVSTASH_BENCH_MAX_ERRORS", NULL, KV_CFG_INT, "0", 0, 1e15, NULL, "N",
     "stop the run once N objects failed (0 = never)"},
    {"depth", "KVSTASH_BENCH_DEPTH", NULL, KV_CFG_INT, "0", 0, 1024, NULL, "N",
     "put/get/exists: N operations in flight per thread through the asynchronous API "
     "(kv_store_aio, N connections; as redis-benchmark -c N), 0 = one blocking call at a time"},
    {"replicas", "KVSTASH_REPLICAS", NULL, KV_CFG_INT, "1", 1, 16, NULL, "N", "copies per put"},
};

enum bench_op { OP_PUT, OP_GET, OP_EXISTS, OP_BATCH_PUT, OP_BATCH_GET, OP_BATCH_EXISTS };
static const char *const op_names[] = {"put",       "get",       "exists",
                                       "batch-put", "batch-get", "batch-exists"};

/* What every worker reads; written by the main thread before the workers start, except the
 * atomics. */
struct shared {
    struct kv_store *s;
    const char *prefix;
    size_t plen; /* strlen(prefix) */
    int width;   /* zero-padded digits of the index; 0 = none */
    enum bench_op op;
    bool is_put;
    size_t size;
    size_t batch;        /* keys per call: 1 for the single-key operations */
    unsigned depth;      /* single-key operations in flight per thread (kv_store_aio); 0 = sync */
    size_t ring;         /* puts: calls a thread keeps before removing its oldest; 0 = keep all */
    uint64_t first;      /* first key index */
    uint64_t nkeys;      /* reads: keys first .. first+nkeys-1 */
    uint64_t count;      /* objects in all; 0 = no limit */
    uint64_t max_errors; /* stop once this many objects failed; 0 = never */
    int replicas;
    atomic_bool stop;
    atomic_int running;           /* workers still running */
    atomic_uint_fast64_t claimed; /* objects claimed so far (puts: the next index - first) */
    atomic_uint_fast64_t failed;  /* objects failed so far, all threads (for --max-errors) */
};

struct worker {
    pthread_t th;
    int id;
    struct shared *sh;
    uint8_t *buf; /* puts: one value; reads: batch values */
    char *keymem; /* batch keys of keylen bytes each */
    size_t keylen;
    const char **keys;
    void **bufs;
    size_t *lens; /* put: value sizes; get: sizes read */
    size_t *caps; /* get: buffer sizes (never the same array as lens) */
    int *res;
    uint64_t *held; /* puts: ring of the first index of each call still held */
    size_t nheld, head;
    uint64_t rng;
    /* results */
    uint64_t ops, calls, errors;
    int first_err;
    int64_t end_us;
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

static uint64_t next_rand(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* k = "<prefix>/<idx>", idx zero-padded to sh->width digits (as "%s/%0*" PRIu64 would print
 * it, without snprintf: batch calls format 1,024 keys each, and the client's CPU is shared with
 * the server measured on a small host). n is room for the longest key (keylen). */
static void make_key(char *k, size_t n, const struct shared *sh, uint64_t idx)
{
    char d[24];
    int nd = 0;
    do {
        d[sizeof(d) - 1 - (size_t)nd++] = (char)('0' + idx % 10);
        idx /= 10;
    } while (idx);
    size_t pad = sh->width > nd ? (size_t)(sh->width - nd) : 0;
    if (sh->plen + 1 + pad + (size_t)nd + 1 > n) { /* never with keylen's room; keep it safe */
        k[0] = '\0';
        return;
    }
    memcpy(k, sh->prefix, sh->plen);
    k += sh->plen;
    *k++ = '/';
    memset(k, '0', pad);
    memcpy(k + pad, d + sizeof(d) - (size_t)nd, (size_t)nd);
    k[pad + (size_t)nd] = '\0';
}

/* Claims up to want objects of the --count budget; returns how many (0: budget spent). *base
 * gets the key index of the first one (meaningful for puts). */
static size_t claim(struct shared *sh, size_t want, uint64_t *base)
{
    if (!sh->is_put && sh->count == 0)
        return want;
    uint64_t old = atomic_fetch_add_explicit(&sh->claimed, want, memory_order_relaxed);
    *base = sh->first + old;
    if (sh->count == 0)
        return want;
    if (old >= sh->count)
        return 0;
    return (size_t)KV_MIN((uint64_t)want, sh->count - old);
}

static void note_error(struct worker *w, int rc, uint64_t n)
{
    struct shared *sh = w->sh;
    if (!w->errors)
        w->first_err = rc;
    w->errors += n;
    uint64_t all = atomic_fetch_add_explicit(&sh->failed, n, memory_order_relaxed) + n;
    if (sh->max_errors && all >= sh->max_errors)
        atomic_store_explicit(&sh->stop, true, memory_order_relaxed);
}

/* Removes the keys of the call that wrote indexes base .. base+n-1 (puts). */
static void remove_keys(struct worker *w, uint64_t base, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        make_key(w->keymem + i * w->keylen, w->keylen, w->sh, base + i);
        w->keys[i] = w->keymem + i * w->keylen;
    }
    if (n == 1)
        kv_store_remove(w->sh->s, w->keys[0]);
    else
        kv_store_batch_remove(w->sh->s, n, w->keys, w->res);
}

/* One call of the batch size (or fewer at the end of --count): put, get or exists. */
static bool one_call(struct worker *w)
{
    struct shared *sh = w->sh;
    uint64_t base = 0;
    size_t n = claim(sh, sh->batch, &base);
    if (n == 0)
        return false;
    if (sh->is_put && sh->ring && w->nheld == sh->ring) {
        /* the oldest call's keys go first (outside the latency sample) */
        remove_keys(w, w->held[w->head], sh->batch);
        w->head = (w->head + 1) % sh->ring;
        w->nheld--;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t idx = sh->is_put ? base + i : sh->first + next_rand(&w->rng) % sh->nkeys;
        make_key(w->keymem + i * w->keylen, w->keylen, sh, idx);
        w->keys[i] = w->keymem + i * w->keylen;
    }
    struct kv_put_opts po = {.replicas = sh->replicas};
    int rc = KV_OK;
    int64_t t0 = kv_now_us();
    switch (sh->op) {
    case OP_PUT:
        rc = w->res[0] = kv_store_put(sh->s, w->keys[0], w->buf, sh->size, &po);
        break;
    case OP_GET:
        rc = w->res[0] = kv_store_get(sh->s, w->keys[0], w->buf, sh->size, &w->lens[0]);
        break;
    case OP_EXISTS:
        rc = w->res[0] = kv_store_exists(sh->s, w->keys[0]);
        break;
    case OP_BATCH_PUT:
        rc = kv_store_batch_put(sh->s, n, w->keys, (const void *const *)w->bufs, w->lens, &po,
                                w->res);
        break;
    case OP_BATCH_GET:
        rc = kv_store_batch_get(sh->s, n, w->keys, w->bufs, w->caps, w->lens, w->res);
        break;
    case OP_BATCH_EXISTS:
        rc = kv_store_batch_exists(sh->s, n, w->keys, w->res);
        break;
    }
    int64_t dt = kv_now_us() - t0;
    w->calls++;
    if (sh->is_put && sh->ring) {
        /* remembered even if some keys failed: removing a missing key is harmless (and a short
         * last call of a --count run removes indexes nobody wrote, equally harmless) */
        w->held[(w->head + w->nheld) % sh->ring] = base;
        w->nheld++;
    }
    if (rc < 0 && sh->op >= OP_BATCH_PUT) {
        note_error(w, rc, n); /* the call itself failed: every key of it */
        return true;
    }
    uint64_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        int r = w->res[i];
        if (sh->op == OP_EXISTS || sh->op == OP_BATCH_EXISTS)
            r = r == 1 ? KV_OK : r == 0 ? KV_ENOENT : r;
        else if ((sh->op == OP_GET || sh->op == OP_BATCH_GET) && r == KV_OK &&
                 w->lens[i] != sh->size)
            r = KV_EIO;
        if (r < 0)
            note_error(w, r, 1);
        else
            ok++;
    }
    w->ops += ok;
    if (ok == n)
        lat_add(w, dt);
    return true;
}

/* Tallies one single-key result r (of key slot i; KV_OK or 1/0 for exists). */
static void tally(struct worker *w, size_t i, int r, int64_t dt)
{
    struct shared *sh = w->sh;
    w->calls++;
    if (sh->op == OP_EXISTS)
        r = r == 1 ? KV_OK : r == 0 ? KV_ENOENT : r;
    else if (sh->op == OP_GET && r == KV_OK && w->lens[i] != sh->size)
        r = KV_EIO;
    if (r < 0) {
        note_error(w, r, 1);
        return;
    }
    w->ops++;
    lat_add(w, dt);
}

/* Starts the next operation in slot i (kv_store_aio): 1 in flight, 0 not submitted (counted
 * as failed), -1 the --count budget is spent. */
static int aio_start(struct worker *w, struct kv_store_aio *a, size_t i, int64_t *t0)
{
    struct shared *sh = w->sh;
    uint64_t base = 0;
    if (claim(sh, 1, &base) == 0)
        return -1;
    if (sh->is_put && sh->ring && w->nheld == sh->ring) {
        remove_keys(w, w->held[w->head], 1); /* key slot 0: free, aio copies keys at submit */
        w->head = (w->head + 1) % sh->ring;
        w->nheld--;
    }
    char *k = w->keymem + i * w->keylen;
    make_key(k, w->keylen, sh, sh->is_put ? base : sh->first + next_rand(&w->rng) % sh->nkeys);
    struct kv_put_opts po = {.replicas = sh->replicas};
    t0[i] = kv_now_us();
    int rc = sh->op == OP_PUT   ? kv_store_aio_put(a, k, w->buf, sh->size, &po, i)
             : sh->op == OP_GET ? kv_store_aio_get(a, k, w->bufs[i], sh->size, i)
                                : kv_store_aio_exists(a, k, i);
    if (sh->is_put && sh->ring) {
        w->held[(w->head + w->nheld) % sh->ring] = base;
        w->nheld++;
    }
    if (rc < 0) { /* not submitted (no master?): a failed object, and a pause */
        w->calls++;
        note_error(w, rc, 1);
        kv_sleep_ms(10);
        return 0;
    }
    return 1;
}

/* --depth: keeps sh->depth single-key operations in flight from this thread. */
static void run_aio(struct worker *w)
{
    struct shared *sh = w->sh;
    struct kv_store_aio *a = NULL;
    int64_t *t0 = kv_calloc(sh->depth, sizeof(*t0));
    bool *busy = kv_calloc(sh->depth, sizeof(*busy));
    struct kv_store_aio_done *done = kv_calloc(sh->depth, sizeof(*done));
    int rc = t0 && busy && done ? kv_store_aio_open(sh->s, sh->depth, &a) : KV_ENOMEM;
    if (rc < 0) {
        note_error(w, rc, 1);
        goto out;
    }
    bool more = true;
    for (;;) {
        bool stop = atomic_load_explicit(&sh->stop, memory_order_relaxed);
        for (size_t i = 0; more && !stop && i < sh->depth; i++) {
            if (busy[i])
                continue;
            int st = aio_start(w, a, i, t0);
            more = st >= 0;
            busy[i] = st > 0;
        }
        if (kv_store_aio_inflight(a) == 0) {
            if (stop || !more)
                break;
            continue; /* nothing could be submitted: aio_start paused; try again */
        }
        int nd = kv_store_aio_poll(a, done, sh->depth, 1000);
        int64_t now = kv_now_us();
        for (int d = 0; d < nd; d++) {
            size_t i = (size_t)done[d].tag;
            busy[i] = false;
            w->lens[i] = done[d].len;
            tally(w, i, done[d].status, now - t0[i]);
        }
    }
out:
    kv_store_aio_close(a);
    kv_free(t0);
    kv_free(busy);
    kv_free(done);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct shared *sh = w->sh;
    if (sh->depth)
        run_aio(w);
    while (!sh->depth && !atomic_load_explicit(&sh->stop, memory_order_relaxed)) {
        if (!one_call(w))
            break;
    }
    w->end_us = kv_now_us();
    atomic_fetch_sub_explicit(&sh->running, 1, memory_order_release);
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Writes (put) or removes keys first .. first+n-1 with one value for all, FILL_BATCH keys per
 * call. A put stops at the first key that fails other than with KV_EEXIST: returns that error
 * and sets *failed_key; *done gets the keys handled. A remove ignores failures. */
static int working_set(const struct shared *sh, bool put, uint64_t n, const void *val,
                       uint64_t *done, char *failed_key, size_t fklen)
{
    size_t keylen = strlen(sh->prefix) + (size_t)KV_MAX(sh->width, MAX_INDEX_DIGITS) + 2;
    char *km = kv_malloc(FILL_BATCH * keylen);
    const char *keys[FILL_BATCH];
    const void *bufs[FILL_BATCH];
    size_t lens[FILL_BATCH];
    int res[FILL_BATCH];
    struct kv_put_opts po = {.replicas = sh->replicas};
    int rc = KV_OK;
    *done = 0;
    if (!km)
        return KV_ENOMEM;
    while (*done < n) {
        size_t m = (size_t)KV_MIN((uint64_t)FILL_BATCH, n - *done);
        for (size_t i = 0; i < m; i++) {
            make_key(km + i * keylen, keylen, sh, sh->first + *done + i);
            keys[i] = km + i * keylen;
            bufs[i] = val;
            lens[i] = sh->size;
        }
        if (!put) {
            kv_store_batch_remove(sh->s, m, keys, res);
            *done += m;
            continue;
        }
        rc = kv_store_batch_put(sh->s, m, keys, bufs, lens, &po, res);
        for (size_t i = 0; rc == KV_OK && i < m; i++) {
            if (res[i] < 0 && res[i] != KV_EEXIST) {
                rc = res[i];
                snprintf(failed_key, fklen, "%s", keys[i]);
            }
        }
        if (rc < 0) {
            if (!failed_key[0])
                snprintf(failed_key, fklen, "%s", keys[0]);
            break;
        }
        *done += m;
    }
    kv_free(km);
    return rc;
}

static int digits(uint64_t v)
{
    int d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

/* Per-thread buffers for the batch size and operation. KV_ENOMEM. */
static int worker_init(struct worker *w, struct shared *sh, int id, size_t keylen)
{
    size_t nb = sh->depth ? sh->depth : sh->batch; /* keys (and values) at once */
    bool reads = sh->op == OP_GET || sh->op == OP_BATCH_GET;
    *w = (struct worker){.id = id, .sh = sh, .keylen = keylen};
    w->rng = ((uint64_t)id + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)kv_now_us();
    if (!w->rng)
        w->rng = 1;
    if (reads && sh->size && nb > SIZE_MAX / sh->size)
        return KV_ENOMEM;
    size_t bytes = reads ? nb * sh->size : sh->is_put ? sh->size : 0;
    w->buf = kv_malloc(bytes ? bytes : 1);
    w->keymem = kv_malloc(nb * keylen);
    w->keys = kv_calloc(nb, sizeof(*w->keys));
    w->bufs = kv_calloc(nb, sizeof(*w->bufs));
    w->lens = kv_calloc(nb, sizeof(*w->lens));
    w->caps = kv_calloc(nb, sizeof(*w->caps));
    w->res = kv_calloc(nb, sizeof(*w->res));
    w->held = kv_calloc(sh->ring ? sh->ring : 1, sizeof(*w->held));
    if (!w->buf || !w->keymem || !w->keys || !w->bufs || !w->lens || !w->caps || !w->res ||
        !w->held)
        return KV_ENOMEM;
    if (sh->is_put)
        fill(w->buf, sh->size, (uint64_t)id + 1);
    for (size_t i = 0; i < nb; i++) {
        w->bufs[i] = reads ? w->buf + i * sh->size : w->buf;
        w->lens[i] = sh->size;
        w->caps[i] = sh->size;
    }
    return KV_OK;
}

static void worker_fini(struct worker *w)
{
    kv_free(w->buf);
    kv_free(w->keymem);
    kv_free(w->keys);
    kv_free(w->bufs);
    kv_free(w->lens);
    kv_free(w->caps);
    kv_free(w->res);
    kv_free(w->held);
    kv_free(w->lat_us);
}

/* Figures of a finished run. */
struct result {
    uint64_t ops, calls, errors;
    int first_err;
    double el, p50, p99, avg, max;
};

static int summarize(struct worker *ws, int nthreads, int64_t t0, struct result *r)
{
    size_t nlat = 0;
    int64_t end = t0;
    *r = (struct result){0};
    for (int t = 0; t < nthreads; t++) {
        r->ops += ws[t].ops;
        r->calls += ws[t].calls;
        r->errors += ws[t].errors;
        nlat += ws[t].nlat;
        if (!r->first_err && ws[t].first_err)
            r->first_err = ws[t].first_err;
        end = KV_MAX(end, ws[t].end_us);
    }
    r->el = (double)(end - t0) / 1e6;
    if (r->el <= 0)
        r->el = 1e-6;
    uint32_t *all = kv_malloc((nlat ? nlat : 1) * sizeof(*all));
    if (!all)
        return KV_ENOMEM;
    size_t p = 0;
    double sum = 0;
    for (int t = 0; t < nthreads; t++) {
        if (ws[t].nlat) /* a thread that measured nothing may have no buffer */
            memcpy(all + p, ws[t].lat_us, ws[t].nlat * sizeof(*all));
        p += ws[t].nlat;
    }
    for (size_t i = 0; i < nlat; i++)
        sum += all[i];
    qsort(all, nlat, sizeof(*all), cmp_u32);
    if (nlat) {
        r->p50 = all[(nlat - 1) / 2];
        r->p99 = all[(size_t)((double)(nlat - 1) * 0.99)];
        r->avg = sum / (double)nlat;
        r->max = all[nlat - 1];
    }
    kv_free(all);
    return KV_OK;
}

static void print_result(const struct kv_cfg *cfg, const struct shared *sh, int nthreads,
                         const struct result *r)
{
    const char *proto = kv_cfg_str(cfg, "protocol");
    double ops_s = (double)r->ops / r->el;
    double calls_s = (double)r->calls / r->el;
    bool moves = sh->op != OP_EXISTS && sh->op != OP_BATCH_EXISTS; /* exists moves no value */
    double gbs = moves ? ops_s * (double)sh->size / 1e9 : 0;
    char key[KV_STORE_MAX_KEY + MAX_INDEX_DIGITS + 2];
    make_key(key, sizeof(key), sh, sh->first);
    if (kv_cfg_bool(cfg, "json")) {
        json_t *o =
            json_pack("{s:s, s:s, s:I, s:i, s:I, s:f, s:I, s:I, s:I, s:f, s:f, s:f, s:f, "
                      "s:f, s:f, s:f, s:s, s:I}",
                      "op", op_names[sh->op], "protocol", proto, "size", (json_int_t)sh->size,
                      "threads", nthreads, "batch", (json_int_t)sh->batch, "duration_s", r->el,
                      "ops", (json_int_t)r->ops, "calls", (json_int_t)r->calls, "errors",
                      (json_int_t)r->errors, "ops_per_s", ops_s, "calls_per_s", calls_s, "gb_per_s",
                      gbs, "p50_us", r->p50, "p99_us", r->p99, "avg_us", r->avg, "max_us", r->max,
                      "key_prefix", sh->prefix, "key_bytes", (json_int_t)strlen(key));
        if (o)
            json_object_set_new(o, "depth", json_integer(sh->depth));
        if (o)
            json_object_set_new(o, "first_error",
                                r->first_err ? json_string(kv_strerror(r->first_err))
                                             : json_null());
        char *txt = o ? kv_json_dump(o) : NULL;
        json_decref(o);
        printf("%s\n", txt ? txt : "{}");
        kv_free(txt);
        return;
    }
    char sz[32];
    printf("bench store %s: %s values, %d threads, ", op_names[sh->op],
           kv_format_size(sh->size, sz, sizeof(sz)), nthreads);
    if (sh->op >= OP_BATCH_PUT)
        printf("batch %zu, ", sh->batch);
    if (sh->depth)
        printf("%u in flight per thread (aio), ", sh->depth);
    printf("protocol %s, %.1f s\n", proto, r->el);
    printf("  %llu ops (%llu errors%s%s), %.0f ops/s, %.0f calls/s, %.3f GB/s\n",
           (unsigned long long)r->ops, (unsigned long long)r->errors,
           r->first_err ? ", first: " : "", r->first_err ? kv_strerror(r->first_err) : "", ops_s,
           calls_s, gbs);
    printf("  latency per call: p50 %.0f us, p99 %.0f us, avg %.0f us, max %.0f us\n", r->p50,
           r->p99, r->avg, r->max);
}

int kv_cli_bench_store(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash bench store",
        .synopsis = "[--op=OP] [--size=BYTES] [--threads=N] [--duration=S] [OPTIONS]",
        .description =
            "Measures store throughput and latency of one operation against a running cluster\n"
            "(kvstash serve, or master + nodes): put, get, exists (one key per call) or\n"
            "batch-put, batch-get, batch-exists (--batch keys per call). Reads first write\n"
            "their working set (or use --existing keys), then pick keys at random. An op is one\n"
            "object; latency is per call. Only successful objects count; failures are counted\n"
            "in errors and the first is named. --protocol=shm|tcp picks the transport to the\n"
            "nodes. --json prints one object: op, ops, calls, errors, first_error, ops_per_s,\n"
            "calls_per_s, gb_per_s, p50_us, p99_us, avg_us, max_us and the settings.\n"
            "Compare with Redis: bench/store_vs_redis.sh, bench/store_scale.sh.",
        .opts = bench_opts,
        .nopts = KV_ARRAY_SIZE(bench_opts),
    };
    struct shared sh = {0};
    struct worker *ws = NULL;
    int nthreads = 0;
    char *defprefix = NULL;
    uint64_t wsdone = 0;
    bool wswritten = false;
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out;
    ex = 2;
    if (cfg.nargs) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", cfg.prog, cfg.args[0]);
        goto out;
    }
    const char *opname = kv_cfg_str(&cfg, "op");
    for (size_t i = 0; i < KV_ARRAY_SIZE(op_names); i++)
        if (strcmp(opname, op_names[i]) == 0)
            sh.op = (enum bench_op)i;
    sh.is_put = sh.op == OP_PUT || sh.op == OP_BATCH_PUT;
    sh.size = (size_t)kv_cfg_size(&cfg, "size");
    sh.batch = sh.op >= OP_BATCH_PUT ? (size_t)kv_cfg_int(&cfg, "batch") : 1;
    sh.depth = (unsigned)kv_cfg_int(&cfg, "depth");
    if (sh.depth && sh.op >= OP_BATCH_PUT) {
        fprintf(stderr, "%s: --depth applies to put, get and exists, not --op=%s\n", cfg.prog,
                opname);
        goto out;
    }
    sh.first = (uint64_t)kv_cfg_int(&cfg, "first");
    sh.count = (uint64_t)kv_cfg_int(&cfg, "count");
    sh.max_errors = (uint64_t)kv_cfg_int(&cfg, "max-errors");
    sh.replicas = (int)kv_cfg_int(&cfg, "replicas");
    nthreads = (int)kv_cfg_int(&cfg, "threads");
    double duration = kv_cfg_double(&cfg, "duration");
    uint64_t wset = kv_cfg_size(&cfg, "working-set");
    uint64_t existing = (uint64_t)kv_cfg_int(&cfg, "existing");
    bool keep = kv_cfg_bool(&cfg, "keep");
    int key_size = (int)kv_cfg_int(&cfg, "key-size");
    if (existing && sh.is_put) {
        fprintf(stderr, "%s: --existing applies to the read operations, not --op=%s\n", cfg.prog,
                opname);
        goto out;
    }
    sh.prefix = kv_cfg_str(&cfg, "key-prefix");
    if (!sh.prefix) {
        char host[64] = "h";
        gethostname(host, sizeof(host) - 1);
        defprefix = kv_malloc(160);
        if (!defprefix)
            goto out_oom;
        snprintf(defprefix, 160, "bench/%s-%d-%lld", host, (int)getpid(), (long long)kv_wall_ms());
        sh.prefix = defprefix;
    }
    /* values per key of the working set: --working-set / size, at least one per thread and one
     * batch, at most MAX_KEYS (tiny or empty values would otherwise mean millions of keys) */
    uint64_t per = sh.size ? sh.size : 1;
    uint64_t wkeys = KV_MIN((uint64_t)MAX_KEYS,
                            KV_MAX((uint64_t)nthreads * sh.batch, KV_MAX(sh.batch, wset / per)));
    sh.nkeys = existing ? existing : wkeys;
    sh.ring = keep ? 0 : (size_t)KV_MAX(1, wkeys / (uint64_t)nthreads / sh.batch);
    size_t plen = sh.plen = strlen(sh.prefix);
    if (key_size) {
        /* the largest index the run can use must fit the padding */
        uint64_t last = sh.first + (sh.is_put ? (sh.count ? sh.count - 1 : 0) : sh.nkeys - 1);
        sh.width = key_size - (int)plen - 1;
        if (sh.width < digits(last)) {
            fprintf(stderr,
                    "%s: --key-size=%d is too small: prefix '%s/' and index %" PRIu64
                    " need %d bytes\n",
                    cfg.prog, key_size, sh.prefix, last, (int)plen + 1 + digits(last));
            goto out;
        }
    }
    if (plen + 1 + (size_t)KV_MAX(sh.width, digits(sh.first + sh.nkeys)) > KV_STORE_MAX_KEY) {
        fprintf(stderr, "%s: --key-prefix is too long (keys are at most %d bytes)\n", cfg.prog,
                KV_STORE_MAX_KEY);
        goto out;
    }
    ex = 1;
    if (kv_cli_store_open(&cfg, &sh.s) < 0)
        goto out;
    atomic_init(&sh.stop, false);
    atomic_init(&sh.claimed, 0);
    atomic_init(&sh.failed, 0);
    atomic_init(&sh.running, 0);
    size_t keylen = plen + (size_t)KV_MAX(sh.width, MAX_INDEX_DIGITS) + 2;
    ws = kv_calloc((size_t)nthreads, sizeof(*ws));
    if (!ws)
        goto out_oom;
    for (int t = 0; t < nthreads; t++) {
        if (worker_init(&ws[t], &sh, t, keylen) < 0) {
            nthreads = t + 1; /* worker_fini the partly built one too */
            goto out_oom;
        }
    }
    if (!sh.is_put && !existing) {
        uint8_t *val = kv_malloc(sh.size ? sh.size : 1);
        char fk[KV_STORE_MAX_KEY + MAX_INDEX_DIGITS + 2] = "";
        if (!val)
            goto out_oom;
        fill(val, sh.size, 1);
        int rc = working_set(&sh, true, sh.nkeys, val, &wsdone, fk, sizeof(fk));
        kv_free(val);
        wswritten = true;
        if (rc < 0) {
            fprintf(stderr, "%s: writing the working set (%s): %s\n", cfg.prog, fk,
                    kv_strerror(rc));
            goto out_cleanup;
        }
    }
    int64_t t0 = kv_now_us();
    int started = 0;
    for (; started < nthreads; started++) {
        atomic_fetch_add_explicit(&sh.running, 1, memory_order_relaxed);
        if (pthread_create(&ws[started].th, NULL, worker_main, &ws[started]) != 0) {
            atomic_fetch_sub_explicit(&sh.running, 1, memory_order_relaxed);
            break;
        }
    }
    /* until the duration ends or every thread has finished its share of --count */
    int64_t until = t0 + (int64_t)(duration * 1e6);
    for (int64_t now = kv_now_us(); now < until; now = kv_now_us()) {
        if (atomic_load_explicit(&sh.running, memory_order_acquire) == 0)
            break;
        kv_sleep_ms((int)KV_MIN(10, (until - now + 999) / 1000));
    }
    atomic_store(&sh.stop, true);
    for (int t = 0; t < started; t++)
        pthread_join(ws[t].th, NULL);
    if (started < nthreads) {
        fprintf(stderr, "%s: could only start %d of %d threads\n", cfg.prog, started, nthreads);
        goto out_cleanup;
    }
    struct result r;
    if (summarize(ws, nthreads, t0, &r) < 0)
        goto out_oom;
    print_result(&cfg, &sh, nthreads, &r);
    ex = r.ops > 0 ? 0 : 1;
    if (r.ops == 0)
        fprintf(stderr, "%s: no operation succeeded (%s)\n", cfg.prog,
                r.first_err ? kv_strerror(r.first_err) : "none ran");
    goto out_cleanup;
out_oom:
    fprintf(stderr, "%s: out of memory\n", cfg.prog);
    ex = 1;
out_cleanup:
    if (sh.s && !keep) {
        if (wswritten) {
            uint64_t n = wsdone;
            working_set(&sh, false, sh.nkeys, NULL, &n, NULL, 0);
        }
        for (int t = 0; ws && t < nthreads && sh.ring; t++) {
            struct worker *w = &ws[t];
            for (size_t j = 0; w->held && j < w->nheld; j++)
                remove_keys(w, w->held[(w->head + j) % sh.ring], sh.batch);
        }
    }
out:
    for (int t = 0; ws && t < nthreads; t++)
        worker_fini(&ws[t]);
    kv_free(ws);
    kv_free(defprefix);
    kv_store_close(sh.s);
    kv_cfg_fini(&cfg);
    return ex;
}
