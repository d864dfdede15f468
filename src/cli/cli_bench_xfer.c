/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_bench_xfer.c - `kvstash bench xfer`: throughput and latency of the transfer engine, with
 * the flag names of Mooncake's transfer_engine_bench (--mode, --metadata_server,
 * --local_server_name, --segment_id, --protocol, --operation, --batch_size, --block_size,
 * --buffer_size, --duration, --threads).
 *
 * Modes:
 *   target     registers a --buffer_size segment (named --local_server_name, or --segment_id
 *              when that is not given, so that both sides' defaults meet) and serves it until
 *              SIGINT/SIGTERM.
 *   initiator  opens --segment_id and runs --threads threads for --duration seconds; each thread
 *              submits batches of --batch_size requests of --block_size bytes and waits for each
 *              batch. Prints GB/s (1e9 bytes/s), ops/s and per-batch latency p50/p99.
 *   both       target and initiator in one process (handy with embedded:// metadata).
 *   memcpy     the peer figure for shm: no engine; the same threads copy the same blocks
 *              between two local buffers with memcpy (--threads defaults to 1 here).
 *
 * Work layout (invariants):
 *   1. The target is cut into nslots = size / block_size slots. Thread t owns the R = nslots /
 *      threads slots [t*R, (t+1)*R); its request number c goes to slot t*R + c % R. So offsets
 *      are distinct across threads, wrap within the thread's share of the target, and the slots
 *      a thread touched are exactly t*R + [0, min(c, R)).
 *   2. Thread t's local memory is its own batch_size * block_size bytes; request j of a batch
 *      uses block j. No two in-flight requests share local memory.
 *   3. --verify: the byte at target offset o is a function of (seed, o) only, with a fresh seed
 *      per run, so concurrent or repeated writes of a slot agree and a stale, misplaced or
 *      missing transfer shows up as a mismatch. Write mode fills each block before submitting
 *      it, reads the batch straight back and checks it, and at the end reads back and checks
 *      every slot the thread touched (a misplaced write may land in another slot); read mode
 *      first fills the thread's share of the target through writes, then checks every block
 *      read. Local blocks are poisoned before each read, so a read that delivers nothing is
 *      caught.
 *
 * Warm-up: before the clock starts each thread makes one pass over its share of the target
 * (at most WARMUP_MAX_MS), so page tables, connections and first-touch costs are paid outside the
 * timed run, as the memcpy peer's buffers are written once before its clock starts. Its time is
 * printed (warm-up, JSON warmup_s): a one-shot figure, not hidden.
 *
 * Thread model: the main thread parses, sets up, starts the workers, then sleeps in
 * sigtimedwait (SIGINT/SIGTERM are blocked in every thread) to print the live line each second,
 * and raises the stop flag at the deadline or on a signal. Workers share nothing but the stop
 * flag and the start handshake (ready counter, go flag); their byte/op counters are relaxed
 * atomics read by the main thread for the live line; latency histograms and errors are per
 * worker and read after join. No locks.
 */
#define KV_LOG_COMPONENT "bench"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/kvstash.h"
#include "kvstash/xfer.h"

#define DEFAULT_METADATA "http://127.0.0.1:8080/metadata"
#define DEFAULT_TARGET_BUFFER (1ull << 30)
/* How long the bench waits for one batch before calling the engine hung. The engine fails
 * requests on its own deadline (10 s by default); this is only a backstop. */
#define BATCH_WAIT_MS 60000
#define POISON 0xA5
/* The untimed warm-up pass stops after this long (a large target over a slow link). */
#define WARMUP_MAX_MS 10000

static const struct kv_cfg_opt bench_opts[] = {
    {"mode", "KVSTASH_BENCH_MODE", NULL, KV_CFG_ENUM, "initiator", 0, 0,
     "target|initiator|both|memcpy", NULL,
     "target serves a segment; initiator measures against it; both = one process; "
     "memcpy = the local memcpy peer figure"},
    {"metadata_server", "KVSTASH_METADATA", NULL, KV_CFG_STR, DEFAULT_METADATA, 0, 0, NULL, "URL",
     "metadata URL: http://HOST:PORT/metadata (kvstash metad), embedded://NAME, etcd://, redis://"},
    {"local_server_name", NULL, NULL, KV_CFG_STR, NULL, 0, 0, NULL, "NAME",
     "this process's segment name (target: the served segment, default --segment_id; "
     "initiator: its local buffer, default HOSTNAME-PID)"},
    {"segment_id", NULL, NULL, KV_CFG_STR, "bench-target", 0, 0, NULL, "NAME",
     "the target's segment name, opened by the initiator"},
    {"protocol", "KVSTASH_PROTOCOL", NULL, KV_CFG_ENUM, "auto", 0, 0, "auto|tcp|shm|rdma", NULL,
     "transport for the initiator's requests (auto: shm on the same host, else rdma, else tcp)"},
    {"operation", NULL, NULL, KV_CFG_ENUM, "read", 0, 0, "read|write", NULL,
     "read = target -> initiator, write = initiator -> target"},
    {"batch_size", NULL, NULL, KV_CFG_INT, "128", 1, 65536, NULL, "N",
     "requests per batch (each thread waits for its batch before the next)"},
    {"block_size", NULL, NULL, KV_CFG_SIZE, "65536", 1, 1099511627776.0, NULL, "BYTES",
     "bytes per request"},
    {"buffer_size", NULL, NULL, KV_CFG_SIZE, NULL, 1, 1099511627776.0, NULL, "BYTES",
     "target/memcpy: segment size (default 1GiB); initiator: local buffer (default "
     "and minimum batch_size*block_size*threads)"},
    {"hugepages", "KVSTASH_HUGEPAGES", NULL, KV_CFG_ENUM, "off", 0, 0, "auto|2M|1G|off", NULL,
     "target segment and initiator buffer on huge pages (as kvstash node --hugepages)"},
    {"duration", NULL, NULL, KV_CFG_DOUBLE, "10", 0.1, 1e6, NULL, "SECONDS",
     "how long the initiator runs"},
    {"threads", NULL, NULL, KV_CFG_INT, "4", 1, 1024, NULL, "N",
     "initiator threads, each with its own batches (memcpy mode: default 1)"},
    {"verify", NULL, NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL,
     "write/read a known pattern and fail (exit 1) on the first mismatching byte"},
    {"json", NULL, NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL,
     "print the result as one JSON object (gb_per_s, bytes, ops, p50_us, p99_us, ...)"},
    {"token", "KVSTASH_TOKEN", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "SECRET",
     "shared token the target requires / the initiator presents"},
    {"conns_per_peer", NULL, NULL, KV_CFG_INT, "0", 0, 1024, NULL, "N",
     "engine tuning: TCP connections per peer (0 = engine default)"},
    {"xfer_workers", NULL, NULL, KV_CFG_INT, "0", 0, 1024, NULL, "N",
     "engine tuning: initiator I/O threads (0 = engine default)"},
    {"bind", "KVSTASH_BIND", NULL, KV_CFG_STR, "127.0.0.1", 0, 0, NULL, "HOST",
     "address the engine's TCP listener binds (0.0.0.0 to serve other hosts)"},
};

enum bench_mode { MODE_TARGET, MODE_INITIATOR, MODE_BOTH, MODE_MEMCPY };

/* ---- latency histogram: log-linear, 64 sub-buckets per power of two (< 1.6% error) ---- */
#define HIST_SUB_BITS 6
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_N (HIST_SUB + (64 - HIST_SUB_BITS) * HIST_SUB)

static size_t hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (size_t)v;
    int e = 63 - __builtin_clzll(v);
    uint64_t sub = (v >> (e - HIST_SUB_BITS)) & (HIST_SUB - 1);
    return HIST_SUB + (size_t)(e - HIST_SUB_BITS) * HIST_SUB + (size_t)sub;
}

/* The midpoint of bucket i. */
static uint64_t hist_value(size_t i)
{
    if (i < HIST_SUB)
        return i;
    size_t k = i - HIST_SUB;
    int e = (int)(k / HIST_SUB) + HIST_SUB_BITS;
    uint64_t sub = k % HIST_SUB;
    uint64_t lo = (1ull << e) | (sub << (e - HIST_SUB_BITS));
    return lo + (1ull << (e - HIST_SUB_BITS)) / 2;
}

/* The q-quantile (0 < q <= 1) of n samples in h, in the samples' unit. */
static uint64_t hist_quantile(const uint64_t *h, uint64_t n, double q)
{
    if (n == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t cum = 0;
    for (size_t i = 0; i < HIST_N; i++) {
        cum += h[i];
        if (cum >= rank)
            return hist_value(i);
    }
    return hist_value(HIST_N - 1);
}

/* ---- verification pattern: byte o of the target = byte (o % 8) of mix(seed + o / 8) ---- */
static uint64_t mix64(uint64_t x)
{
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t pattern_word_le(uint64_t seed, uint64_t word)
{
    uint64_t w = mix64(seed + word);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

static uint8_t pattern_byte(uint64_t seed, uint64_t off)
{
    return (uint8_t)(mix64(seed + off / 8) >> (8 * (off % 8)));
}

/* Fills buf with the pattern of target bytes [off, off+len). */
static void pattern_fill(uint8_t *buf, uint64_t off, uint64_t len, uint64_t seed)
{
    uint64_t i = 0;
    for (; i < len && (off + i) % 8; i++)
        buf[i] = pattern_byte(seed, off + i);
    for (; i + 8 <= len; i += 8) {
        uint64_t w = pattern_word_le(seed, (off + i) / 8);
        memcpy(buf + i, &w, 8);
    }
    for (; i < len; i++)
        buf[i] = pattern_byte(seed, off + i);
}

/* Checks buf against the pattern of target bytes [off, off+len). On a mismatch returns false
 * with the target offset of the first bad byte and the expected and actual bytes. */
static bool pattern_check(const uint8_t *buf, uint64_t off, uint64_t len, uint64_t seed,
                          uint64_t *bad, uint8_t *want, uint8_t *got)
{
    uint64_t i = 0;
    while (i < len) {
        if ((off + i) % 8 == 0 && i + 8 <= len) {
            uint64_t w = pattern_word_le(seed, (off + i) / 8);
            if (memcmp(buf + i, &w, 8) == 0) {
                i += 8;
                continue;
            }
        }
        /* bytes up to the next word boundary (a mismatching word is found here) */
        uint64_t end = KV_MIN(len, i + 8 - (off + i) % 8);
        for (; i < end; i++) {
            uint8_t e = pattern_byte(seed, off + i);
            if (buf[i] != e) {
                *bad = off + i;
                *want = e;
                *got = buf[i];
                return false;
            }
        }
    }
    return true;
}

/* ---- the run ---- */
struct bench;

struct worker {
    struct bench *b;
    pthread_t tid;
    uint8_t *local;         /* batch * block bytes, owned by this thread (invariant 2) */
    uint64_t slot0;         /* first slot of this thread's share (invariant 1) */
    uint64_t cursor;        /* requests issued so far, warm-up included */
    _Atomic uint64_t bytes; /* completed, for the live line (relaxed) */
    _Atomic uint64_t ops;
    uint64_t batches;
    uint64_t lat_max_ns;
    int64_t end_ns;    /* when the last counted batch completed */
    int64_t warm_ns;   /* the warm-up pass took this long */
    uint64_t warm_len; /* bytes the warm-up moved */
    int err;           /* first error (KV_OK if none); msg names it */
    char msg[512];
    struct kv_xfer_req *reqs;
    uint64_t hist[HIST_N];
};

struct bench {
    enum bench_mode mode;
    bool write;
    bool verify;
    uint64_t seed;
    uint64_t block;
    size_t batch;
    int threads;
    uint64_t per_thread; /* R: slots per thread */
    struct kv_xfer *x;   /* NULL in memcpy mode */
    kv_target_id target;
    const char *segname;
    uint8_t *remote;  /* memcpy mode: the "target" buffer */
    atomic_bool stop; /* set by main at the deadline, or by a worker on error */
    atomic_int ready; /* workers done with set-up and warm-up */
    atomic_bool go;   /* set by main once every worker is ready: the timed run starts */
    struct worker *w;
};

static const char *op_name(bool write)
{
    return write ? "write" : "read";
}

static void worker_fail(struct worker *w, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void worker_fail(struct worker *w, int err, const char *fmt, ...)
{
    if (w->err == KV_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->msg, sizeof(w->msg), fmt, ap);
        va_end(ap);
        w->err = err < 0 ? err : KV_EIO;
    }
    atomic_store_explicit(&w->b->stop, true, memory_order_relaxed);
}

/* Fills w->reqs[0..n) for the next n requests of w (starting at request number c). */
static void plan_batch(struct worker *w, uint64_t c, size_t n, bool write)
{
    struct bench *b = w->b;
    for (size_t j = 0; j < n; j++) {
        struct kv_xfer_req *r = &w->reqs[j];
        r->op = write ? KV_XFER_WRITE : KV_XFER_READ;
        r->local = w->local + j * b->block;
        r->len = b->block;
        r->target = b->target;
        r->offset = (w->slot0 + (c + j) % b->per_thread) * b->block;
    }
}

/* Runs w->reqs[0..n) to completion. On failure records the error in w and returns it. */
static int run_batch(struct worker *w, size_t n)
{
    struct bench *b = w->b;
    if (b->mode == MODE_MEMCPY) {
        for (size_t j = 0; j < n; j++) {
            struct kv_xfer_req *r = &w->reqs[j];
            if (r->op == KV_XFER_WRITE)
                memcpy(b->remote + r->offset, r->local, r->len);
            else
                memcpy(r->local, b->remote + r->offset, r->len);
        }
        return KV_OK;
    }
    kv_batch_id id;
    int rc = kv_xfer_batch_create(b->x, n, &id);
    if (rc < 0) {
        worker_fail(w, rc, "cannot create a batch of %zu requests: %s (%s)", n, kv_strerror(rc),
                    kv_err_name(rc));
        return rc;
    }
    rc = kv_xfer_batch_submit(b->x, id, w->reqs, n);
    if (rc < 0) {
        worker_fail(w, rc, "submitting a batch of %zu %ss of %llu bytes to '%s' failed: %s (%s)", n,
                    op_name(w->reqs[0].op == KV_XFER_WRITE), (unsigned long long)b->block,
                    b->segname, kv_strerror(rc), kv_err_name(rc));
        kv_xfer_batch_destroy(b->x, id);
        return rc;
    }
    rc = kv_xfer_batch_wait(b->x, id, BATCH_WAIT_MS);
    if (rc == KV_ETIMEDOUT) {
        /* the batch stays allocated: its requests may still touch w->local until the engine
         * is destroyed, which happens before the memory is released */
        worker_fail(w, rc, "a batch of %zu %ss to '%s' is still pending after %d s (engine hung?)",
                    n, op_name(w->reqs[0].op == KV_XFER_WRITE), b->segname, BATCH_WAIT_MS / 1000);
        return rc;
    }
    if (rc < 0) {
        size_t bad = 0;
        int st = rc;
        for (size_t j = 0; j < n; j++) {
            int s = kv_xfer_batch_status(b->x, id, j);
            if (s < 0) {
                bad = j;
                st = s;
                break;
            }
        }
        const struct kv_xfer_req *r = &w->reqs[bad];
        worker_fail(w, st, "%s of %llu bytes at offset %llu of segment '%s' failed: %s (%s)",
                    op_name(r->op == KV_XFER_WRITE), (unsigned long long)r->len,
                    (unsigned long long)r->offset, b->segname, kv_strerror(st), kv_err_name(st));
    }
    int drc = kv_xfer_batch_destroy(b->x, id);
    if (rc == KV_OK && drc < 0) {
        worker_fail(w, drc, "cannot free a completed batch: %s (%s)", kv_strerror(drc),
                    kv_err_name(drc));
        rc = drc;
    }
    return rc;
}

/* Checks the blocks of w->reqs[0..n) (just read) against the pattern. */
static int check_batch(struct worker *w, size_t n)
{
    struct bench *b = w->b;
    for (size_t j = 0; j < n; j++) {
        const struct kv_xfer_req *r = &w->reqs[j];
        uint64_t bad;
        uint8_t want, got;
        if (!pattern_check(r->local, r->offset, r->len, b->seed, &bad, &want, &got)) {
            worker_fail(
                w, KV_ECHECKSUM,
                "verify FAILED: segment '%s' byte at offset %llu is 0x%02x, expected 0x%02x "
                "(block at offset %llu, %llu bytes)",
                b->segname, (unsigned long long)bad, got, want, (unsigned long long)r->offset,
                (unsigned long long)r->len);
            return KV_ECHECKSUM;
        }
    }
    return KV_OK;
}

/* Writes the pattern to slots [0, count) of w's share (verify, read mode). */
static int fill_share(struct worker *w, uint64_t count)
{
    struct bench *b = w->b;
    for (uint64_t c = 0; c < count; c += b->batch) {
        size_t n = (size_t)KV_MIN((uint64_t)b->batch, count - c);
        plan_batch(w, c, n, true);
        for (size_t j = 0; j < n; j++)
            pattern_fill(w->reqs[j].local, w->reqs[j].offset, b->block, b->seed);
        int rc = run_batch(w, n);
        if (rc < 0)
            return rc;
    }
    return KV_OK;
}

/* Reads back slots [0, count) of w's share and checks them (verify, write mode). */
static int check_share(struct worker *w, uint64_t count)
{
    struct bench *b = w->b;
    for (uint64_t c = 0; c < count; c += b->batch) {
        size_t n = (size_t)KV_MIN((uint64_t)b->batch, count - c);
        plan_batch(w, c, n, false);
        memset(w->local, POISON, n * b->block);
        int rc = run_batch(w, n);
        if (rc == KV_OK)
            rc = check_batch(w, n);
        if (rc < 0)
            return rc;
    }
    return KV_OK;
}

/* One timed iteration: plan, (fill), run, (check), count. */
static int iterate(struct worker *w)
{
    struct bench *b = w->b;
    size_t n = b->batch;
    plan_batch(w, w->cursor, n, b->write);
    if (b->verify) {
        if (b->write)
            for (size_t j = 0; j < n; j++)
                pattern_fill(w->reqs[j].local, w->reqs[j].offset, b->block, b->seed);
        else
            memset(w->local, POISON, n * b->block);
    }
    int64_t t0 = kv_now_ns();
    int rc = run_batch(w, n);
    int64_t t1 = kv_now_ns();
    if (rc < 0)
        return rc;
    w->cursor += n;
    if (b->verify) {
        if (b->write) {
            /* read the batch straight back: a bad write later overwritten is still caught */
            plan_batch(w, w->cursor - n, n, false);
            memset(w->local, POISON, n * b->block);
            rc = run_batch(w, n);
        }
        if (rc == KV_OK)
            rc = check_batch(w, n);
        if (rc < 0)
            return rc;
    }
    uint64_t lat = (uint64_t)(t1 - t0);
    w->hist[hist_index(lat)]++;
    if (lat > w->lat_max_ns)
        w->lat_max_ns = lat;
    w->batches++;
    w->end_ns = t1;
    atomic_fetch_add_explicit(&w->bytes, (uint64_t)n * b->block, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->ops, n, memory_order_relaxed);
    return KV_OK;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct bench *b = w->b;
    int rc = KV_OK;
    if (b->verify && !b->write)
        rc = fill_share(w, b->per_thread);
    /* warm-up, not counted: one pass over this thread's share (connections, page tables) */
    int64_t w0 = kv_now_ns(), wend = w0 + (int64_t)WARMUP_MAX_MS * 1000000;
    uint64_t nbatches = (b->per_thread + b->batch - 1) / b->batch;
    for (uint64_t i = 0; rc == KV_OK && i < nbatches; i++) {
        rc = iterate(w);
        if (kv_now_ns() > wend || atomic_load_explicit(&b->stop, memory_order_relaxed))
            break;
    }
    w->warm_ns = kv_now_ns() - w0;
    w->warm_len = atomic_load_explicit(&w->bytes, memory_order_relaxed);
    w->batches = 0;
    w->lat_max_ns = 0;
    memset(w->hist, 0, sizeof(w->hist));
    atomic_store_explicit(&w->bytes, 0, memory_order_relaxed);
    atomic_store_explicit(&w->ops, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->ready, 1, memory_order_release);
    while (!atomic_load_explicit(&b->go, memory_order_acquire) &&
           !atomic_load_explicit(&b->stop, memory_order_relaxed))
        nanosleep(&(struct timespec){.tv_nsec = 100000}, NULL);
    w->end_ns = kv_now_ns();
    while (rc == KV_OK && !atomic_load_explicit(&b->stop, memory_order_relaxed))
        rc = iterate(w);
    if (rc == KV_OK && b->verify && b->write)
        check_share(w, KV_MIN(w->cursor, b->per_thread));
    return NULL;
}

/* ---- set-up helpers ---- */
struct region {
    void *addr;
    size_t len;
    bool mapped; /* true: munmap; false: owned by the engine */
};

static int map_region(struct region *r, size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return kv_err_from_errno(errno);
    memset(p, 0, len); /* fault the pages in before the clock starts */
    r->addr = p;
    r->len = len;
    r->mapped = true;
    return KV_OK;
}

static void unmap_region(struct region *r)
{
    if (r->mapped && r->addr)
        munmap(r->addr, r->len);
    r->addr = NULL;
}

struct result {
    uint64_t bytes, ops, batches, lat_max_ns;
    double secs;
    double warm_secs;  /* the slowest thread's warm-up pass */
    uint64_t warm_len; /* bytes all warm-up passes moved */
    uint64_t hist[HIST_N];
};

static void print_live(struct bench *b, int64_t t_start, int64_t now, uint64_t *prev_bytes,
                       uint64_t *prev_ops, int64_t *prev_ns)
{
    uint64_t bytes = 0, ops = 0;
    for (int i = 0; i < b->threads; i++) {
        bytes += atomic_load_explicit(&b->w[i].bytes, memory_order_relaxed);
        ops += atomic_load_explicit(&b->w[i].ops, memory_order_relaxed);
    }
    double dt = (double)(now - *prev_ns) / 1e9;
    if (dt <= 0)
        return;
    printf("  [%5.1f s] %8.3f GB/s  %10.0f ops/s\n", (double)(now - t_start) / 1e9,
           (double)(bytes - *prev_bytes) / dt / 1e9, (double)(ops - *prev_ops) / dt);
    fflush(stdout);
    *prev_bytes = bytes;
    *prev_ops = ops;
    *prev_ns = now;
}

/* Starts the workers, runs for secs (or until SIGINT/SIGTERM), joins them and sums up.
 * Returns KV_OK, or the first worker error after printing its message. */
static int run_workers(struct bench *b, double secs, bool live, uint8_t *local, struct result *res)
{
    int rc = KV_OK;
    b->w = kv_calloc((size_t)b->threads, sizeof(*b->w));
    if (!b->w)
        return KV_ENOMEM;
    for (int i = 0; i < b->threads; i++) {
        struct worker *w = &b->w[i];
        w->b = b;
        w->local = local + (size_t)i * b->batch * b->block;
        w->slot0 = (uint64_t)i * b->per_thread;
        w->reqs = kv_calloc(b->batch, sizeof(*w->reqs));
        if (!w->reqs) {
            rc = KV_ENOMEM;
            goto out_free;
        }
    }
    int started = 0;
    for (; started < b->threads; started++) {
        if (pthread_create(&b->w[started].tid, NULL, worker_main, &b->w[started]) != 0) {
            fprintf(stderr, "kvstash bench xfer: cannot start thread %d\n", started);
            rc = KV_ENOMEM;
            atomic_store(&b->stop, true); /* the started ones give up at once */
            break;
        }
    }
    while (atomic_load_explicit(&b->ready, memory_order_acquire) < started &&
           !atomic_load_explicit(&b->stop, memory_order_relaxed))
        nanosleep(&(struct timespec){.tv_nsec = 100000}, NULL);
    atomic_store_explicit(&b->go, true, memory_order_release);
    int64_t t_start = kv_now_ns();
    int64_t deadline = t_start + (int64_t)(secs * 1e9);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    uint64_t pb = 0, po = 0;
    int64_t pn = t_start, next_tick = t_start + 1000000000;
    for (;;) {
        int64_t now = kv_now_ns();
        if (now >= deadline || atomic_load_explicit(&b->stop, memory_order_relaxed))
            break;
        /* sleep until the next tick or the deadline, at most 0.2 s (to notice worker errors) */
        int64_t wait = KV_MIN(KV_MIN(deadline, next_tick) - now, (int64_t)200000000);
        if (wait > 0) {
            struct timespec ts = {.tv_sec = wait / 1000000000, .tv_nsec = wait % 1000000000};
            int sig = sigtimedwait(&sigs, NULL, &ts);
            if (sig > 0) {
                KV_LOGI("signal %d: stopping early", sig);
                break;
            }
        }
        now = kv_now_ns();
        if (now >= next_tick) {
            if (live && now < deadline)
                print_live(b, t_start, now, &pb, &po, &pn);
            while (next_tick <= now)
                next_tick += 1000000000;
        }
    }
    atomic_store_explicit(&b->stop, true, memory_order_relaxed);
    for (int i = 0; i < started; i++)
        pthread_join(b->w[i].tid, NULL);

    memset(res, 0, sizeof(*res));
    int64_t t_end = t_start;
    for (int i = 0; i < started && rc == KV_OK; i++) {
        struct worker *w = &b->w[i];
        if (w->err < 0) {
            fprintf(stderr, "kvstash bench xfer: %s\n", w->msg);
            rc = w->err;
            break;
        }
        res->bytes += atomic_load(&w->bytes);
        res->ops += atomic_load(&w->ops);
        res->batches += w->batches;
        res->lat_max_ns = KV_MAX(res->lat_max_ns, w->lat_max_ns);
        res->warm_secs = KV_MAX(res->warm_secs, (double)w->warm_ns / 1e9);
        res->warm_len += w->warm_len;
        for (size_t k = 0; k < HIST_N; k++)
            res->hist[k] += w->hist[k];
        t_end = KV_MAX(t_end, w->end_ns);
    }
    res->secs = (double)(t_end - t_start) / 1e9;
out_free:
    for (int i = 0; i < b->threads; i++)
        kv_free(b->w[i].reqs);
    kv_free(b->w);
    b->w = NULL;
    return rc;
}

static void print_result(const struct bench *b, const struct result *r, const char *transport,
                         const char *requested, bool json)
{
    double gbps = r->secs > 0 ? (double)r->bytes / r->secs / 1e9 : 0;
    double opsps = r->secs > 0 ? (double)r->ops / r->secs : 0;
    double p50 = (double)hist_quantile(r->hist, r->batches, 0.50) / 1e3;
    double p99 = (double)hist_quantile(r->hist, r->batches, 0.99) / 1e3;
    double pmax = (double)r->lat_max_ns / 1e3;
    /* a bucket's midpoint may exceed the largest sample in it */
    p50 = p50 < pmax ? p50 : pmax;
    p99 = p99 < pmax ? p99 : pmax;
    if (json) {
        json_t *o = json_pack(
            "{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:i, s:f, s:I, s:I, s:I, s:f, s:f, s:f, "
            "s:f, s:f, s:b, s:f, s:I}",
            "mode", b->mode == MODE_MEMCPY ? "memcpy" : "initiator", "segment", b->segname,
            "protocol", transport, "protocol_requested", requested, "operation", op_name(b->write),
            "block_size", (json_int_t)b->block, "batch_size", (json_int_t)b->batch, "threads",
            b->threads, "duration_s", r->secs, "bytes", (json_int_t)r->bytes, "ops",
            (json_int_t)r->ops, "batches", (json_int_t)r->batches, "gb_per_s", gbps, "ops_per_s",
            opsps, "p50_us", p50, "p99_us", p99, "max_us", pmax, "verify", b->verify, "warmup_s",
            r->warm_secs, "warmup_bytes", (json_int_t)r->warm_len);
        if (!o) {
            fprintf(stderr, "kvstash bench xfer: out of memory formatting JSON\n");
            return;
        }
        json_dumpf(o, stdout, JSON_COMPACT | JSON_REAL_PRECISION(9));
        fputc('\n', stdout);
        json_decref(o);
    } else {
        char bs[32];
        kv_format_size(b->block, bs, sizeof(bs));
        printf("result: %s, %s, %d thread%s, batch %zu x %s, %.2f s\n", op_name(b->write),
               transport, b->threads, b->threads == 1 ? "" : "s", b->batch, bs, r->secs);
        printf("  throughput     %.3f GB/s  (%llu bytes)\n", gbps, (unsigned long long)r->bytes);
        printf("  operations     %.0f ops/s  (%llu ops in %llu batches)\n", opsps,
               (unsigned long long)r->ops, (unsigned long long)r->batches);
        printf("  batch latency  p50 %.1f us  p99 %.1f us  max %.1f us\n", p50, p99, pmax);
        printf("  warm-up        %.3f s for one pass over the target (%llu bytes), not counted\n",
               r->warm_secs, (unsigned long long)r->warm_len);
        if (b->verify)
            printf("  verify         ok: every block matched its pattern (figures include pattern "
                   "generation and checks)\n");
    }
    fflush(stdout);
}

static uint64_t fresh_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s))
        s = (uint64_t)kv_now_ns() ^ ((uint64_t)getpid() << 32);
    return s;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kvstash bench xfer: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 2;
}

int kv_cli_bench_xfer(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash bench xfer",
        .description =
            "Measures the transfer engine, with the flags of Mooncake's transfer_engine_bench.\n"
            "Start a target, then run an initiator against it, for example:\n"
            "  kvstash metad --addr 127.0.0.1:8080 &\n"
            "  kvstash bench xfer --mode=target --buffer_size=1GiB &\n"
            "  kvstash bench xfer --mode=initiator --protocol=tcp --operation=write\n"
            "The initiator prints throughput in GB/s (1e9 bytes/s), ops/s and the latency of a\n"
            "whole batch (p50/p99, microseconds); a live line each second on a terminal.\n"
            "--mode=both runs both ends in one process (e.g. --metadata_server=embedded://b);\n"
            "--mode=memcpy measures plain memcpy of the same blocks (the peer figure for shm).\n"
            "Exit status: 0 ok, 1 transfer or verify failure (the message names it), 2 bad usage.",
        .opts = bench_opts,
        .nopts = KV_ARRAY_SIZE(bench_opts),
    };
    int ex = kv_cli_parse(&cfg, argc, argv);
    if (ex >= 0)
        goto out_cfg;
    ex = 2;
    if (cfg.nargs) {
        usage_error("unexpected argument '%s' (options are spelled --name=value)", cfg.args[0]);
        goto out_cfg;
    }

    const char *mode_s = kv_cfg_str(&cfg, "mode");
    enum bench_mode mode = strcmp(mode_s, "target") == 0   ? MODE_TARGET
                           : strcmp(mode_s, "both") == 0   ? MODE_BOTH
                           : strcmp(mode_s, "memcpy") == 0 ? MODE_MEMCPY
                                                           : MODE_INITIATOR;
    struct bench b = {
        .mode = mode,
        .write = strcmp(kv_cfg_str(&cfg, "operation"), "write") == 0,
        .verify = kv_cfg_bool(&cfg, "verify"),
        .seed = fresh_seed(),
        .block = kv_cfg_size(&cfg, "block_size"),
        .batch = (size_t)kv_cfg_int(&cfg, "batch_size"),
        .threads = (int)kv_cfg_int(&cfg, "threads"),
        .segname = kv_cfg_str(&cfg, "segment_id"),
    };
    if (mode == MODE_MEMCPY && kv_cfg_source(&cfg, "threads") == KV_CFG_SRC_DEFAULT)
        b.threads = 1;
    bool json = kv_cfg_bool(&cfg, "json");
    double secs = kv_cfg_double(&cfg, "duration");
    const char *proto = kv_cfg_str(&cfg, "protocol");
    enum kv_xfer_huge huge = KV_XFER_HUGE_OFF;
    (void)kv_xfer_huge_parse(kv_cfg_str(&cfg, "hugepages"), &huge); /* checked by the table */
    const char *murl = kv_cfg_str(&cfg, "metadata_server");
    bool buf_set = kv_cfg_isset(&cfg, "buffer_size") &&
                   kv_cfg_source(&cfg, "buffer_size") != KV_CFG_SRC_DEFAULT;
    uint64_t target_len = buf_set ? kv_cfg_size(&cfg, "buffer_size") : DEFAULT_TARGET_BUFFER;

    uint64_t local_len = 0;
    if (__builtin_mul_overflow((uint64_t)b.batch, b.block, &local_len) ||
        __builtin_mul_overflow(local_len, (uint64_t)b.threads, &local_len) ||
        local_len > (uint64_t)SIZE_MAX / 2) {
        usage_error("batch_size * block_size * threads is too large");
        goto out_cfg;
    }
    if (mode == MODE_INITIATOR && buf_set) {
        uint64_t want = kv_cfg_size(&cfg, "buffer_size");
        if (want < local_len) {
            usage_error(
                "--buffer_size %llu is smaller than batch_size*block_size*threads = %llu (the "
                "initiator's buffer holds one batch per thread)",
                (unsigned long long)want, (unsigned long long)local_len);
            goto out_cfg;
        }
        local_len = want;
    }
    /* both/memcpy: the target size is known now (initiator: checked after opening it) */
    if ((mode == MODE_BOTH || mode == MODE_MEMCPY) && target_len / b.block < (uint64_t)b.threads) {
        usage_error("--buffer_size %llu holds fewer than --threads=%d blocks of %llu bytes",
                    (unsigned long long)target_len, b.threads, (unsigned long long)b.block);
        goto out_cfg;
    }

    if (mode != MODE_MEMCPY && !kv_startswith(murl, "http://") &&
        !kv_startswith(murl, "embedded://") && strcmp(murl, "embedded") != 0 &&
        !kv_startswith(murl, "etcd://") && !kv_startswith(murl, "redis://")) {
        usage_error("bad --metadata_server '%s' (want http://HOST:PORT/metadata, embedded://NAME, "
                    "etcd://HOST:PORT or redis://HOST:PORT)",
                    murl);
        goto out_cfg;
    }

    char defname[300];
    const char *lname = kv_cfg_str(&cfg, "local_server_name");
    if (!lname) {
        if (mode == MODE_TARGET) {
            lname = b.segname;
        } else {
            char host[256];
            if (gethostname(host, sizeof(host)) != 0)
                snprintf(host, sizeof(host), "localhost");
            host[sizeof(host) - 1] = '\0';
            snprintf(defname, sizeof(defname), "%s-%d", host, (int)getpid());
            lname = defname;
        }
    }
    if (mode == MODE_BOTH && strcmp(lname, b.segname) == 0) {
        usage_error("--mode=both needs --local_server_name different from --segment_id ('%s')",
                    lname);
        goto out_cfg;
    }

    kv_cli_block_signals();
    ex = 1;
    struct kv_meta *meta = NULL;
    struct region local = {0}, remote = {0};
    const char *transport = "memcpy";
    int rc;

    if (mode == MODE_MEMCPY) {
        rc = map_region(&remote, (size_t)target_len);
        if (rc == KV_OK)
            rc = map_region(&local, (size_t)local_len);
        if (rc < 0) {
            fprintf(stderr, "kvstash bench xfer: cannot map %llu + %llu bytes: %s\n",
                    (unsigned long long)target_len, (unsigned long long)local_len, kv_strerror(rc));
            goto out_stop;
        }
        b.remote = remote.addr;
        b.per_thread = target_len / b.block / (uint64_t)b.threads;
        goto run;
    }

    rc = kv_meta_open(murl, NULL, &meta);
    if (rc == KV_EMETA_URL) {
        ex = usage_error(
            "bad --metadata_server '%s' (want http://HOST:PORT/metadata, embedded://NAME, "
            "etcd://HOST:PORT or redis://HOST:PORT)",
            murl);
        goto out_stop;
    }
    if (rc < 0) {
        fprintf(stderr, "kvstash bench xfer: cannot open metadata '%s': %s%s\n", murl,
                kv_strerror(rc),
                rc == KV_EMETA_UNAVAIL ? " (is `kvstash metad` running there?)" : "");
        goto out_stop;
    }
    struct kv_xfer_opts xo = {
        .protocol = proto,
        .bind_host = kv_cfg_str(&cfg, "bind"),
        .token = kv_cfg_str(&cfg, "token"),
        .conns_per_peer = (int)kv_cfg_int(&cfg, "conns_per_peer"),
        .workers = (int)kv_cfg_int(&cfg, "xfer_workers"),
    };
    rc = kv_xfer_create(meta, &xo, &b.x);
    if (rc < 0) {
        fprintf(stderr, "kvstash bench xfer: cannot create the transfer engine (protocol %s): %s\n",
                proto, kv_strerror(rc));
        goto out_stop;
    }

    if (mode == MODE_TARGET || mode == MODE_BOTH) {
        const char *tname = mode == MODE_TARGET ? lname : b.segname;
        void *addr;
        kv_seg_id seg;
        rc = kv_xfer_segment_alloc_huge(b.x, tname, (size_t)target_len, huge, &addr, &seg, NULL);
        if (rc < 0) {
            fprintf(stderr, "kvstash bench xfer: cannot register segment '%s' (%llu bytes): %s%s\n",
                    tname, (unsigned long long)target_len, kv_strerror(rc),
                    rc == KV_EEXIST ? " (another target uses that name; pick --local_server_name)"
                                    : "");
            goto out_stop;
        }
        /* fault the pages in before initiators come, without writing them: the segment is
         * published already, so an initiator may be writing into it; a memset here raced
         * with those writes (ThreadSanitizer: recv in the xfer TCP server thread) and could
         * zero bytes a peer had just written. Fresh segment memory reads as zero anyway. */
        if (kv_mem_populate(addr, (size_t)target_len) < 0)
            KV_LOGW("segment '%s': cannot prefault %llu bytes; pages fault in on first use", tname,
                    (unsigned long long)target_len);
        if (mode == MODE_TARGET) {
            char sz[32];
            kv_format_size(target_len, sz, sizeof(sz));
            printf("kvstash bench xfer: target ready: segment '%s' (%s) published in %s; run: "
                   "kvstash bench xfer --mode=initiator --metadata_server=%s --segment_id=%s\n",
                   tname, sz, murl, murl, tname);
            fflush(stdout);
            int sig = kv_cli_wait_signal();
            KV_LOGI("signal %d: stopping", sig);
            ex = 0;
            goto out_stop;
        }
    }

    rc = kv_xfer_open(b.x, b.segname, &b.target);
    if (rc < 0) {
        fprintf(stderr, "kvstash bench xfer: cannot open segment '%s' via %s: %s%s\n", b.segname,
                murl, kv_strerror(rc),
                rc == KV_EXFER_NOSEG ? " (start a target first: kvstash bench xfer --mode=target)"
                                     : "");
        goto out_stop;
    }
    uint64_t tsize = 0;
    rc = kv_xfer_target_info(b.x, b.target, &tsize, &transport);
    if (rc < 0) {
        fprintf(stderr, "kvstash bench xfer: segment '%s': %s\n", b.segname, kv_strerror(rc));
        goto out_stop;
    }
    if (!transport)
        transport = proto;
    b.per_thread = tsize / b.block / (uint64_t)b.threads;
    if (b.per_thread == 0) {
        fprintf(stderr,
                "kvstash bench xfer: segment '%s' has %llu bytes, fewer than --threads=%d "
                "blocks of %llu bytes\n",
                b.segname, (unsigned long long)tsize, b.threads, (unsigned long long)b.block);
        goto out_stop;
    }
    void *laddr;
    kv_seg_id lseg;
    rc = kv_xfer_segment_alloc_huge(b.x, lname, (size_t)local_len, huge, &laddr, &lseg, NULL);
    if (rc < 0) {
        fprintf(stderr,
                "kvstash bench xfer: cannot register the local buffer '%s' (%llu bytes): %s\n",
                lname, (unsigned long long)local_len, kv_strerror(rc));
        goto out_stop;
    }
    memset(laddr, 0, (size_t)local_len);
    local.addr = laddr;
    local.len = (size_t)local_len;

run:;
    bool live = !json && isatty(STDOUT_FILENO);
    if (!json) {
        char bs[32];
        kv_format_size(b.block, bs, sizeof(bs));
        if (mode == MODE_MEMCPY)
            printf("kvstash bench xfer: memcpy (%s), %d thread%s, batch %zu x %s, %.1f s%s\n",
                   op_name(b.write), b.threads, b.threads == 1 ? "" : "s", b.batch, bs, secs,
                   b.verify ? ", verify" : "");
        else
            printf("kvstash bench xfer: %s '%s' over %s, %d thread%s, batch %zu x %s, %.1f s%s\n",
                   op_name(b.write), b.segname, transport, b.threads, b.threads == 1 ? "" : "s",
                   b.batch, bs, secs, b.verify ? ", verify" : "");
        fflush(stdout);
    }
    struct result *res = kv_malloc(sizeof(*res));
    if (!res) {
        fprintf(stderr, "kvstash bench xfer: out of memory\n");
        goto out_stop;
    }
    rc = run_workers(&b, secs, live, local.addr, res);
    if (rc == KV_OK) {
        print_result(&b, res, transport, mode == MODE_MEMCPY ? "memcpy" : proto, json);
        ex = 0;
    } else if (rc == KV_ENOMEM) {
        fprintf(stderr, "kvstash bench xfer: out of memory\n");
    }
    kv_free(res);

out_stop:
    /* the engine first: it fails whatever is still pending before the memory goes away */
    kv_xfer_destroy(b.x);
    kv_meta_close(meta);
    unmap_region(&local);
    unmap_region(&remote);
out_cfg:
    kv_cfg_fini(&cfg);
    return ex;
}
