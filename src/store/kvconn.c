/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kvconn.c - the asynchronous KV-cache copy engine of the engine connectors
 * (include/kvstash/kvconn.h): worker threads that save and load paged KV blocks layer by
 * layer through the store's batch API, gathering and scattering strided rows.
 *
 * Design:
 *   - A job is split into one task per layer, queued in layer order on one FIFO. A worker
 *     pops a task, runs it without any lock (gather -> kv_store_batch_put, or
 *     kv_store_batch_get -> scatter, at most batch_max chunks per store call) and then records
 *     the per-chunk results and the layer's completion under the lock.
 *   - Save groups: while saves into the store back up in the queue, a worker pops up to
 *     GROUP_MAX consecutive save tasks (its fair share of the queue: 1 + queued / threads, and
 *     at most batch_max chunks) and stores them in one kv_store_batch_put_fill: one PUT_START
 *     and one PUT_END for several layers. On a 2-core host the master's answers wait for a CPU
 *     behind the gathers (0.2-4 ms each, against 20-40 us of work in the master), so fewer
 *     round trips is most of what the save gains; a save that arrives alone still goes alone,
 *     so layer-by-layer latency is unchanged when nothing backs up. Loads are never grouped
 *     (the engine waits for each layer).
 *   - Saves into the store gather each chunk where the store puts it (kv_store_batch_put_fill):
 *     on a same-host node straight into the node's segment, checksummed row by row while the
 *     rows are in cache, so the bytes are walked once (was gather + copy + checksum).
 *   - Staging (loads, and saves to another backend): each worker owns one buffer that grows to
 *     batch_max objects; an object is [K rows][V rows], each [token][head][row], the same for
 *     every tensor layout.
 *   - A job reads the registered layouts, or its own copy of per-layer layouts
 *     (kv_conn_submit_at: host staging buffers of a device cache, valid only for that job).
 *   - A load scatters a chunk's rows for a layer only when the store returned the whole
 *     object (right size; the store verified its checksum). Otherwise the chunk's status
 *     takes the error and the engine recomputes it: never wrong data.
 *
 * Job states:   QUEUED --worker pops a task--> RUNNING --last task recorded--> DONE
 *               DONE --kv_conn_release--> freed;   QUEUED --kv_conn_destroy--> DONE (canceled)
 *
 * Invariants:
 *   1. j->tasks_left == number of j's tasks queued or running (alone or in a save group);
 *      DONE <=> tasks_left == 0.
 *   2. j->status[i] only moves from KV_OK to the first error.
 *   3. Registered layouts are replaced only while no job is unfinished (c->unfinished == 0),
 *      and a job's own layouts never change, so workers read both without the lock.
 *
 * Thread model: caller threads submit, wait and release; c->nthreads workers run tasks.
 * Locks: c->lock guards the queue, the job table, every job's status/layer_done/tasks_left,
 *   c->unfinished, c->stopping and the layout table. It is a leaf lock: nothing blocking (no
 *   store call, no copy) runs under it. done_cv signals task completion, work_cv new tasks.
 * Ownership: the engine owns its jobs (keys and block ids are copied at submit); it borrows
 *   the store and the KV tensors' memory.
 */
#define KV_LOG_COMPONENT "kvconn"
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "common/idtab.h"
#include "common/log.h"
#include "kvstash/kvconn.h"
#include "kvstash/store.h"

#define MAX_THREADS 64
#define MAX_LAYERS 65536u
#define MAX_CHUNKS 65536u
#define LAYER_SUFFIX_MAX 16 /* "/L65535" + NUL, rounded up */
#define GROUP_MAX 4         /* save tasks per save group */

struct job {
    enum kv_conn_op op;
    uint32_t layer_begin, layer_end;
    size_t n;
    char **keys;                    /* n copied key prefixes */
    int32_t *blocks;                /* n * chunk_blocks */
    uint32_t *tb, *te;              /* n token ranges */
    int *status;                    /* n results (guarded by c->lock) */
    uint8_t *layer_done;            /* layer_end - layer_begin flags (guarded by c->lock) */
    struct kv_conn_layout *layouts; /* per-job layouts (kv_conn_submit_at) or NULL */
    uint32_t tasks_left;            /* guarded by c->lock */
};

struct task {
    struct job *j;
    uint32_t layer;
};

struct worker {
    struct kv_conn *c;
    pthread_t tid;
    uint8_t *stage;
    size_t stage_cap;
    struct kv_hash64_state *hash; /* saves through kv_store_batch_put_fill */
};

struct kv_conn {
    struct kv_conn_opts o;
    struct kv_conn_backend be;
    struct kv_put_opts put_opts;
    size_t obj_size;     /* 2 * chunk tokens * heads * row_bytes */
    uint32_t chunk_toks; /* chunk_blocks * block_size */

    pthread_mutex_t lock; /* see the header comment */
    pthread_cond_t work_cv;
    pthread_cond_t done_cv;
    struct task *q; /* ring buffer */
    size_t q_head, q_len, q_cap;
    struct kv_idtab jobs;
    uint32_t unfinished;
    bool stopping;
    struct kv_conn_layout *layouts; /* layouts_cap entries */
    uint8_t *registered;
    uint32_t layouts_cap;

    struct worker *workers;
    int nthreads;
};

/* ---- default backend: the store ---- */

static int store_batch_put(void *ud, size_t n, const char *const *keys, const void *const *bufs,
                           const size_t *lens, int *results)
{
    struct kv_conn *c = ud;
    return kv_store_batch_put(c->o.store, n, keys, bufs, lens, &c->put_opts, results);
}

static int store_batch_get(void *ud, size_t n, const char *const *keys, void *const *bufs,
                           const size_t *caps, size_t *lens, int *results)
{
    struct kv_conn *c = ud;
    return kv_store_batch_get(c->o.store, n, keys, bufs, caps, lens, results);
}

/* ---- helpers ---- */

static void deadline_after(struct timespec *ts, int timeout_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void job_free(struct job *j)
{
    if (j == NULL) {
        return;
    }
    if (j->keys != NULL) {
        for (size_t i = 0; i < j->n; i++) {
            kv_free(j->keys[i]);
        }
    }
    kv_free(j->keys);
    kv_free(j->blocks);
    kv_free(j->tb);
    kv_free(j->te);
    kv_free(j->status);
    kv_free(j->layer_done);
    kv_free(j->layouts);
    kv_free(j);
}

/* Copies the rows of tokens [tb, te) of one chunk between the tensor half at `base` and the
 * staging region `st` ([token][head][row]). to_stage: tensor -> staging (save). */
static void copy_rows(const struct kv_conn *c, const struct kv_conn_layout *l, uint64_t base,
                      const int32_t *blocks, uint32_t tb, uint32_t te, uint8_t *st, bool to_stage,
                      struct kv_hash64_state *h)
{
    const uint32_t bs = c->o.block_size;
    const size_t rb = c->o.row_bytes;
    const size_t tok_bytes = (size_t)c->o.num_heads * rb;
    const bool dense_tok = l->head_stride == (int64_t)rb;
    const bool dense_blk = dense_tok && l->token_stride == (int64_t)tok_bytes;
    uint32_t t = tb;
    while (t < te) {
        uint32_t slot = t % bs;
        uint32_t run = bs - slot; /* tokens left in this block */
        if (run > te - t) {
            run = te - t;
        }
        uint64_t blk = base + (uint64_t)((int64_t)blocks[t / bs] * l->block_stride);
        uint8_t *s = st + (size_t)t * tok_bytes;
        if (dense_blk) {
            uint8_t *p = (uint8_t *)(uintptr_t)(blk + (uint64_t)slot * (uint64_t)l->token_stride);
            if (to_stage) {
                memcpy(s, p, run * tok_bytes);
                if (h != NULL) {
                    kv_hash64_update(h, s, run * tok_bytes);
                }
            } else {
                memcpy(p, s, run * tok_bytes);
            }
        } else {
            for (uint32_t k = 0; k < run; k++) {
                uint64_t tp = blk + (uint64_t)(slot + k) * (uint64_t)l->token_stride;
                uint8_t *sk = s + (size_t)k * tok_bytes;
                if (dense_tok) {
                    uint8_t *p = (uint8_t *)(uintptr_t)tp;
                    if (to_stage) {
                        memcpy(sk, p, tok_bytes);
                        if (h != NULL) {
                            kv_hash64_update(h, sk, tok_bytes);
                        }
                    } else {
                        memcpy(p, sk, tok_bytes);
                    }
                    continue;
                }
                for (uint32_t hd = 0; hd < c->o.num_heads; hd++) {
                    uint8_t *p =
                        (uint8_t *)(uintptr_t)(tp + (uint64_t)hd * (uint64_t)l->head_stride);
                    if (to_stage) {
                        memcpy(sk + hd * rb, p, rb);
                        if (h != NULL) {
                            kv_hash64_update(h, sk + hd * rb, rb);
                        }
                    } else {
                        memcpy(p, sk + hd * rb, rb);
                    }
                }
            }
        }
        t += run;
    }
}

static int ensure_stage(struct worker *w, size_t need)
{
    if (w->stage_cap >= need) {
        return KV_OK;
    }
    uint8_t *p = kv_realloc(w->stage, need);
    if (p == NULL) {
        return KV_ENOMEM;
    }
    w->stage = p;
    w->stage_cap = need;
    return KV_OK;
}

/* Frees a task's n key strings (NULL entries allowed) and their array (may be NULL). */
static void free_keys(char **keys, size_t n)
{
    for (size_t i = 0; keys != NULL && i < n; i++) {
        kv_free(keys[i]);
    }
    kv_free(keys);
}

/* One chunk object of a save group: where its rows are. */
struct save_obj {
    const struct kv_conn_layout *l;
    const int32_t *blk; /* chunk_blocks block ids */
};

/* A store batch of a save group, gathered by save_fill where the store puts it. */
struct save_ctx {
    const struct kv_conn *c;
    const struct save_obj *o; /* the batch's objects */
    struct kv_hash64_state *h;
};

/* kv_put_fill_fn: gathers object i into dst (in the node's segment when the store can map
 * it) and checksums the rows while they are in cache: one pass over the bytes. */
static int save_fill(void *ud, size_t i, void *dst, size_t len, uint64_t *sum)
{
    const struct save_ctx *x = ud;
    const struct kv_conn *c = x->c;
    if (len != c->obj_size) {
        return KV_EINVAL;
    }
    const struct save_obj *o = &x->o[i];
    kv_hash64_reset(x->h);
    copy_rows(c, o->l, o->l->k_base, o->blk, 0, c->chunk_toks, dst, true, x->h);
    copy_rows(c, o->l, o->l->v_base, o->blk, 0, c->chunk_toks, (uint8_t *)dst + len / 2, true,
              x->h);
    *sum = kv_hash64_digest(x->h);
    return KV_OK;
}

static const struct kv_conn_layout *task_layout(const struct kv_conn *c, const struct task *t)
{
    return t->j->layouts != NULL ? &t->j->layouts[t->layer - t->j->layer_begin]
                                 : &c->layouts[t->layer];
}

/* Runs a group of save tasks into the store (see worker_main): their chunks go out in store
 * batches of up to batch_max objects, each gathered where the store puts it
 * (kv_store_batch_put_fill). res[g][i] (preset to KV_OK) gets task g's chunk i's result. */
static void run_save_group(struct worker *w, const struct task *t, size_t k, int **res)
{
    struct kv_conn *c = w->c;
    size_t total = 0;
    for (size_t g = 0; g < k; g++) {
        total += t[g].j->n;
    }
    const size_t step = total < c->o.batch_max ? total : c->o.batch_max;
    if (w->hash == NULL) {
        w->hash = kv_hash64_state_new();
    }
    char **keys = kv_calloc(step, sizeof(*keys));
    size_t *lens = kv_calloc(step, sizeof(*lens));
    int *r = kv_calloc(step, sizeof(*r));
    struct save_obj *objs = kv_calloc(step, sizeof(*objs));
    int **at = kv_calloc(step, sizeof(*at)); /* where each object's result goes */
    if (w->hash == NULL || keys == NULL || lens == NULL || r == NULL || objs == NULL ||
        at == NULL) {
        for (size_t g = 0; g < k; g++) {
            for (size_t i = 0; i < t[g].j->n; i++) {
                res[g][i] = KV_ENOMEM;
            }
        }
        goto out;
    }
    size_t g = 0, ci = 0; /* the next object: task g, chunk ci */
    while (g < k) {
        size_t m = 0;
        while (g < k && m < step) {
            const struct job *j = t[g].j;
            size_t kl = strlen(j->keys[ci]) + LAYER_SUFFIX_MAX;
            kv_free(keys[m]);
            keys[m] = kv_malloc(kl);
            if (keys[m] == NULL) {
                res[g][ci] = KV_ENOMEM; /* not part of the batch */
            } else {
                snprintf(keys[m], kl, "%s/L%" PRIu32, j->keys[ci], t[g].layer);
                objs[m] = (struct save_obj){.l = task_layout(c, &t[g]),
                                            .blk = j->blocks + ci * c->o.chunk_blocks};
                at[m] = &res[g][ci];
                lens[m] = c->obj_size;
                r[m++] = KV_OK;
            }
            if (++ci == j->n) {
                g++;
                ci = 0;
            }
        }
        if (m == 0) {
            continue;
        }
        struct save_ctx x = {.c = c, .o = objs, .h = w->hash};
        int rc = kv_store_batch_put_fill(c->o.store, m, (const char *const *)keys, lens, save_fill,
                                         &x, &c->put_opts, r);
        for (size_t i = 0; i < m; i++) {
            int e = rc < 0 ? rc : r[i];
            *at[i] = e == KV_EEXIST ? KV_OK : e;
        }
    }
out:
    free_keys(keys, step);
    kv_free(lens);
    kv_free(r);
    kv_free(objs);
    kv_free(at);
}

/* Runs one (job, layer) task that goes through the worker's staging buffer (every load, and
 * saves to another backend than the store); res[i] (n entries, preset to KV_OK) gets chunk
 * i's result. */
static void run_task(struct worker *w, struct job *j, uint32_t layer, int *res)
{
    struct kv_conn *c = w->c;
    const struct kv_conn_layout *l =
        j->layouts != NULL ? &j->layouts[layer - j->layer_begin] : &c->layouts[layer];
    const size_t obj = c->obj_size;
    const size_t half = obj / 2;
    const size_t bmax = c->o.batch_max;
    const size_t step = j->n < bmax ? j->n : bmax;
    int rc = ensure_stage(w, step * obj);
    size_t nk = step;
    char **keys = NULL;
    void **bufs = kv_calloc(step, sizeof(*bufs));
    size_t *lens = kv_calloc(step, sizeof(*lens));
    size_t *caps = kv_calloc(step, sizeof(*caps));
    int *r = kv_calloc(step, sizeof(*r));
    keys = kv_calloc(nk, sizeof(*keys));
    if (rc < 0 || bufs == NULL || lens == NULL || caps == NULL || r == NULL || keys == NULL) {
        for (size_t i = 0; i < j->n; i++) {
            res[i] = KV_ENOMEM;
        }
        goto out_free;
    }
    for (size_t i = 0; i < step; i++) {
        bufs[i] = w->stage + i * obj;
        caps[i] = obj;
        lens[i] = obj;
    }
    for (size_t first = 0; first < j->n; first += step) {
        size_t m = j->n - first < step ? j->n - first : step;
        bool oom = false;
        for (size_t i = 0; i < m; i++) {
            size_t kl = strlen(j->keys[first + i]) + LAYER_SUFFIX_MAX;
            kv_free(keys[i]);
            keys[i] = kv_malloc(kl);
            if (keys[i] == NULL) {
                oom = true;
                break;
            }
            snprintf(keys[i], kl, "%s/L%" PRIu32, j->keys[first + i], layer);
        }
        if (oom) {
            for (size_t i = 0; i < m; i++) {
                res[first + i] = KV_ENOMEM;
            }
            continue;
        }
        if (j->op == KV_CONN_SAVE) {
            for (size_t i = 0; i < m; i++) {
                const int32_t *blk = j->blocks + (first + i) * c->o.chunk_blocks;
                uint8_t *st = w->stage + i * obj;
                copy_rows(c, l, l->k_base, blk, 0, c->chunk_toks, st, true, NULL);
                copy_rows(c, l, l->v_base, blk, 0, c->chunk_toks, st + half, true, NULL);
                r[i] = KV_OK;
            }
            rc = c->be.batch_put(c->be.ud, m, (const char *const *)keys, (const void *const *)bufs,
                                 lens, r);
            for (size_t i = 0; i < m; i++) {
                int e = rc < 0 ? rc : r[i];
                res[first + i] = e == KV_EEXIST ? KV_OK : e;
            }
        } else {
            size_t *got = lens;
            for (size_t i = 0; i < m; i++) {
                got[i] = 0;
                r[i] = KV_OK;
            }
            rc = c->be.batch_get(c->be.ud, m, (const char *const *)keys, bufs, caps, got, r);
            for (size_t i = 0; i < m; i++) {
                size_t ci = first + i;
                int e = rc < 0 ? rc : r[i];
                if (e == KV_OK && got[i] != obj) {
                    KV_LOGW_RL(5000, "object %s has %zu bytes, expected %zu: not loaded", keys[i],
                               got[i], obj);
                    e = KV_EPROTO;
                }
                res[ci] = e;
                if (e != KV_OK) {
                    continue;
                }
                const int32_t *blk = j->blocks + ci * c->o.chunk_blocks;
                uint8_t *st = w->stage + i * obj;
                copy_rows(c, l, l->k_base, blk, j->tb[ci], j->te[ci], st, false, NULL);
                copy_rows(c, l, l->v_base, blk, j->tb[ci], j->te[ci], st + half, false, NULL);
            }
            for (size_t i = 0; i < m; i++) {
                got[i] = obj; /* restore lens for a later save-shaped use */
            }
        }
    }
out_free:
    free_keys(keys, nk);
    kv_free(bufs);
    kv_free(lens);
    kv_free(caps);
    kv_free(r);
}

/* Records a finished task. Called with c->lock held. */
static void finish_task_locked(struct kv_conn *c, struct job *j, uint32_t layer, const int *res,
                               int all)
{
    for (size_t i = 0; i < j->n; i++) {
        int e = res != NULL ? res[i] : all;
        if (e != KV_OK && j->status[i] == KV_OK) {
            j->status[i] = e;
        }
    }
    j->layer_done[layer - j->layer_begin] = 1;
    j->tasks_left--;
    if (j->tasks_left == 0) {
        c->unfinished--;
    }
    pthread_cond_broadcast(&c->done_cv);
}

/* A save that goes into the store itself (kv_store_batch_put_fill), which save groups take. */
static bool fill_save(const struct kv_conn *c, const struct job *j)
{
    return j->op == KV_CONN_SAVE && c->o.store != NULL;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct kv_conn *c = w->c;
    kv_log_set_thread_name("kvconn");
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (!c->stopping && c->q_len == 0) {
            pthread_cond_wait(&c->work_cv, &c->lock);
        }
        if (c->q_len == 0) { /* stopping and drained */
            break;
        }
        /* A save group: while saves back up in the queue, a worker takes up to GROUP_MAX of
         * them (its fair share of the queue, at most batch_max chunks) and stores them with
         * one PUT_START and one PUT_END instead of one pair per layer. */
        struct task t[GROUP_MAX];
        size_t k = 0, objs = 0, share = 1;
        do {
            t[k] = c->q[c->q_head];
            c->q_head = (c->q_head + 1) % c->q_cap;
            c->q_len--;
            objs += t[k++].j->n;
            if (k == 1 && fill_save(c, t[0].j)) {
                share = 1 + c->q_len / (size_t)c->nthreads;
            }
        } while (k < share && k < GROUP_MAX && c->q_len > 0 && fill_save(c, c->q[c->q_head].j) &&
                 objs + c->q[c->q_head].j->n <= c->o.batch_max);
        pthread_mutex_unlock(&c->lock);

        int *res[GROUP_MAX] = {NULL};
        bool oom = false;
        for (size_t g = 0; g < k; g++) {
            res[g] = kv_calloc(t[g].j->n, sizeof(*res[g]));
            oom = oom || res[g] == NULL;
        }
        if (oom) {
            /* recorded below as KV_ENOMEM */
        } else if (fill_save(c, t[0].j)) {
            run_save_group(w, t, k, res);
        } else {
            run_task(w, t[0].j, t[0].layer, res[0]);
        }

        pthread_mutex_lock(&c->lock);
        for (size_t g = 0; g < k; g++) {
            finish_task_locked(c, t[g].j, t[g].layer, oom ? NULL : res[g], KV_ENOMEM);
            kv_free(res[g]);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* ---- public API ---- */

int kv_conn_create(const struct kv_conn_opts *opts, struct kv_conn **out)
{
    if (opts == NULL || out == NULL) {
        return KV_EINVAL;
    }
    if (opts->store == NULL && (opts->backend == NULL || opts->backend->batch_put == NULL ||
                                opts->backend->batch_get == NULL)) {
        KV_LOGE("kv_conn_create: needs a store or a backend with batch_put and batch_get");
        return KV_EINVAL;
    }
    if (opts->block_size < 1 || opts->block_size > 65536 || opts->chunk_blocks < 1 ||
        opts->chunk_blocks > 4096 || opts->num_heads < 1 || opts->num_heads > 65536 ||
        opts->row_bytes < 1 || opts->row_bytes > (1u << 20) || opts->threads < 0 ||
        opts->threads > MAX_THREADS || opts->replicas < 0) {
        KV_LOGE("kv_conn_create: bad shape (block_size %" PRIu32 ", chunk_blocks %" PRIu32
                ", num_heads %" PRIu32 ", row_bytes %" PRIu32 ", threads %d)",
                opts->block_size, opts->chunk_blocks, opts->num_heads, opts->row_bytes,
                opts->threads);
        return KV_EINVAL;
    }
    uint64_t toks = (uint64_t)opts->block_size * opts->chunk_blocks;
    uint64_t obj = 2 * toks * opts->num_heads * opts->row_bytes;
    if (toks > (1u << 22) || obj > (1ull << 32)) {
        KV_LOGE("kv_conn_create: a chunk object of %" PRIu64 " bytes is too large", obj);
        return KV_EINVAL;
    }
    struct kv_conn *c = kv_calloc(1, sizeof(*c));
    if (c == NULL) {
        return KV_ENOMEM;
    }
    c->o = *opts;
    c->o.backend = NULL;
    if (c->o.threads == 0) {
        c->o.threads = 2;
    }
    if (c->o.batch_max == 0) {
        c->o.batch_max = 64;
    }
    if (opts->store != NULL) {
        c->be.batch_put = store_batch_put;
        c->be.batch_get = store_batch_get;
        c->be.ud = c;
    } else {
        c->be = *opts->backend;
    }
    c->put_opts.replicas = opts->replicas;
    c->put_opts.ttl_s = opts->ttl_s;
    c->put_opts.pin = false;
    c->chunk_toks = (uint32_t)toks;
    c->obj_size = (size_t)obj;
    kv_idtab_init(&c->jobs);

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->work_cv, &ca);
    pthread_cond_init(&c->done_cv, &ca);
    pthread_condattr_destroy(&ca);

    c->workers = kv_calloc((size_t)c->o.threads, sizeof(*c->workers));
    if (c->workers == NULL) {
        kv_conn_destroy(c);
        return KV_ENOMEM;
    }
    for (int i = 0; i < c->o.threads; i++) {
        c->workers[i].c = c;
        if (pthread_create(&c->workers[i].tid, NULL, worker_main, &c->workers[i]) != 0) {
            KV_LOGE("kv_conn_create: cannot start worker thread %d", i);
            kv_conn_destroy(c);
            return KV_EIO;
        }
        c->nthreads++;
    }
    *out = c;
    return KV_OK;
}

void kv_conn_destroy(struct kv_conn *c)
{
    if (c == NULL) {
        return;
    }
    pthread_mutex_lock(&c->lock);
    c->stopping = true;
    while (c->q_len > 0) {
        struct task t = c->q[c->q_head];
        c->q_head = (c->q_head + 1) % c->q_cap;
        c->q_len--;
        finish_task_locked(c, t.j, t.layer, NULL, KV_ECANCELED);
    }
    pthread_cond_broadcast(&c->work_cv);
    pthread_mutex_unlock(&c->lock);
    for (int i = 0; i < c->nthreads; i++) {
        pthread_join(c->workers[i].tid, NULL);
    }
    if (c->workers != NULL) {
        for (int i = 0; i < c->o.threads; i++) {
            kv_free(c->workers[i].stage);
            kv_hash64_state_free(c->workers[i].hash);
        }
    }
    for (uint32_t i = 0; i < c->jobs.n; i++) {
        uint64_t id;
        struct job *j = kv_idtab_at(&c->jobs, i, &id);
        job_free(j);
    }
    kv_idtab_fini(&c->jobs);
    pthread_cond_destroy(&c->work_cv);
    pthread_cond_destroy(&c->done_cv);
    pthread_mutex_destroy(&c->lock);
    kv_free(c->workers);
    kv_free(c->q);
    kv_free(c->layouts);
    kv_free(c->registered);
    kv_free(c);
}

size_t kv_conn_object_size(const struct kv_conn *c)
{
    return c != NULL ? c->obj_size : 0;
}

/* Checks one layout; logs what is wrong. */
static bool layout_ok(const struct kv_conn *c, uint32_t layer, const struct kv_conn_layout *l)
{
    if (l->k_base == 0 || l->v_base == 0 || l->block_stride < 0 || l->token_stride < 0 ||
        l->head_stride < 0 || l->num_blocks == 0) {
        KV_LOGE("kvconn: layer %" PRIu32 ": null base, negative stride or no blocks", layer);
        return false;
    }
    if ((uint64_t)l->head_stride < c->o.row_bytes &&
        c->o.num_heads > 1) { /* rows of two heads would overlap */
        KV_LOGE("kvconn: layer %" PRIu32 ": head stride %" PRId64 " < row bytes %" PRIu32, layer,
                l->head_stride, c->o.row_bytes);
        return false;
    }
    return true;
}

int kv_conn_register_layer(struct kv_conn *c, uint32_t layer, const struct kv_conn_layout *l)
{
    if (c == NULL || l == NULL || layer >= MAX_LAYERS) {
        return KV_EINVAL;
    }
    if (!layout_ok(c, layer, l)) {
        return KV_EINVAL;
    }
    int rc = KV_OK;
    pthread_mutex_lock(&c->lock);
    if (c->unfinished > 0) {
        rc = KV_EBUSY;
        goto out_unlock;
    }
    if (layer >= c->layouts_cap) {
        uint32_t cap = c->layouts_cap ? c->layouts_cap : 64;
        while (cap <= layer) {
            cap *= 2;
        }
        struct kv_conn_layout *nl = kv_realloc(c->layouts, cap * sizeof(*nl));
        if (nl == NULL) {
            rc = KV_ENOMEM;
            goto out_unlock;
        }
        c->layouts = nl;
        uint8_t *nr = kv_realloc(c->registered, cap);
        if (nr == NULL) {
            rc = KV_ENOMEM;
            goto out_unlock;
        }
        memset(nr + c->layouts_cap, 0, cap - c->layouts_cap);
        c->registered = nr;
        c->layouts_cap = cap;
    }
    c->layouts[layer] = *l;
    c->registered[layer] = 1;
out_unlock:
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* Checks the block ids a job touches against every layer's block count. Lock held. */
static int check_blocks_locked(const struct kv_conn *c, enum kv_conn_op op, uint32_t lb,
                               uint32_t le, size_t n, const int32_t *blocks, const uint32_t *tb,
                               const uint32_t *te, const struct kv_conn_layout *own)
{
    uint32_t min_blocks = UINT32_MAX;
    for (uint32_t l = lb; l < le; l++) {
        if (own != NULL) {
            if (own[l - lb].num_blocks < min_blocks) {
                min_blocks = own[l - lb].num_blocks;
            }
            continue;
        }
        if (l >= c->layouts_cap || !c->registered[l]) {
            KV_LOGE("kv_conn_submit: layer %" PRIu32 " is not registered", l);
            return KV_EINVAL;
        }
        if (c->layouts[l].num_blocks < min_blocks) {
            min_blocks = c->layouts[l].num_blocks;
        }
    }
    const uint32_t bs = c->o.block_size;
    for (size_t i = 0; i < n; i++) {
        uint32_t b = 0, e = c->chunk_toks;
        if (op == KV_CONN_LOAD && tb != NULL && te != NULL) {
            b = tb[i];
            e = te[i];
        }
        if (b > e || e > c->chunk_toks) {
            KV_LOGE("kv_conn_submit: chunk %zu: bad token range [%" PRIu32 ", %" PRIu32 ")", i, b,
                    e);
            return KV_EINVAL;
        }
        if (b == e) {
            continue;
        }
        for (uint32_t k = b / bs; k <= (e - 1) / bs; k++) {
            int32_t id = blocks[i * c->o.chunk_blocks + k];
            if (id < 0 || (uint32_t)id >= min_blocks) {
                KV_LOGE("kv_conn_submit: chunk %zu: block id %" PRId32 " outside [0, %" PRIu32 ")",
                        i, id, min_blocks);
                return KV_EINVAL;
            }
        }
    }
    return KV_OK;
}

static int queue_push_locked(struct kv_conn *c, struct job *j, uint32_t layer)
{
    if (c->q_len == c->q_cap) {
        size_t cap = c->q_cap ? c->q_cap * 2 : 256;
        struct task *nq = kv_malloc(cap * sizeof(*nq));
        if (nq == NULL) {
            return KV_ENOMEM;
        }
        for (size_t i = 0; i < c->q_len; i++) {
            nq[i] = c->q[(c->q_head + i) % c->q_cap];
        }
        kv_free(c->q);
        c->q = nq;
        c->q_head = 0;
        c->q_cap = cap;
    }
    c->q[(c->q_head + c->q_len) % c->q_cap] = (struct task){j, layer};
    c->q_len++;
    return KV_OK;
}

int kv_conn_submit(struct kv_conn *c, enum kv_conn_op op, uint32_t layer_begin, uint32_t layer_end,
                   size_t n, const char *const *keys, const int32_t *block_ids,
                   const uint32_t *tok_begin, const uint32_t *tok_end, uint64_t *job)
{
    return kv_conn_submit_at(c, op, layer_begin, layer_end, NULL, n, keys, block_ids, tok_begin,
                             tok_end, job);
}

int kv_conn_submit_at(struct kv_conn *c, enum kv_conn_op op, uint32_t layer_begin,
                      uint32_t layer_end, const struct kv_conn_layout *layouts, size_t n,
                      const char *const *keys, const int32_t *block_ids, const uint32_t *tok_begin,
                      const uint32_t *tok_end, uint64_t *job)
{
    if (c == NULL || keys == NULL || block_ids == NULL || job == NULL) {
        return KV_EINVAL;
    }
    if (op != KV_CONN_SAVE && op != KV_CONN_LOAD) {
        KV_LOGE("kv_conn_submit: unknown op %d", (int)op);
        return KV_EINVAL;
    }
    if (n == 0 || n > MAX_CHUNKS || layer_begin >= layer_end || layer_end > MAX_LAYERS) {
        KV_LOGE("kv_conn_submit: bad job shape (%zu chunks, layers [%" PRIu32 ", %" PRIu32 "))", n,
                layer_begin, layer_end);
        return KV_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        size_t kl = keys[i] != NULL ? strlen(keys[i]) : 0;
        if (kl == 0 || kl + LAYER_SUFFIX_MAX > KV_STORE_MAX_KEY) {
            KV_LOGE("kv_conn_submit: chunk %zu: key missing or longer than %d bytes", i,
                    KV_STORE_MAX_KEY - LAYER_SUFFIX_MAX);
            return KV_EINVAL;
        }
    }
    const size_t nb = n * c->o.chunk_blocks;
    struct job *j = kv_calloc(1, sizeof(*j));
    if (j == NULL) {
        return KV_ENOMEM;
    }
    j->op = op;
    j->layer_begin = layer_begin;
    j->layer_end = layer_end;
    j->n = n;
    j->keys = kv_calloc(n, sizeof(*j->keys));
    j->blocks = kv_malloc(nb * sizeof(*j->blocks));
    j->tb = kv_malloc(n * sizeof(*j->tb));
    j->te = kv_malloc(n * sizeof(*j->te));
    j->status = kv_calloc(n, sizeof(*j->status));
    j->layer_done = kv_calloc(layer_end - layer_begin, 1);
    if (j->keys == NULL || j->blocks == NULL || j->tb == NULL || j->te == NULL ||
        j->status == NULL || j->layer_done == NULL) {
        j->n = j->keys == NULL ? 0 : n;
        job_free(j);
        return KV_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        j->keys[i] = kv_strdup(keys[i]);
        if (j->keys[i] == NULL) {
            job_free(j);
            return KV_ENOMEM;
        }
        bool ranged = op == KV_CONN_LOAD && tok_begin != NULL && tok_end != NULL;
        j->tb[i] = ranged ? tok_begin[i] : 0;
        j->te[i] = ranged ? tok_end[i] : c->chunk_toks;
    }
    memcpy(j->blocks, block_ids, nb * sizeof(*j->blocks));
    j->tasks_left = layer_end - layer_begin;
    if (layouts != NULL) {
        for (uint32_t l = 0; l < layer_end - layer_begin; l++) {
            if (!layout_ok(c, layer_begin + l, &layouts[l])) {
                job_free(j);
                return KV_EINVAL;
            }
        }
        j->layouts = kv_memdup0(layouts, (layer_end - layer_begin) * sizeof(*layouts));
        if (j->layouts == NULL) {
            job_free(j);
            return KV_ENOMEM;
        }
    }

    pthread_mutex_lock(&c->lock);
    int rc = KV_OK;
    if (c->stopping) {
        rc = KV_ESHUTDOWN;
        goto out_unlock;
    }
    rc = check_blocks_locked(c, op, layer_begin, layer_end, n, j->blocks, j->tb, j->te, j->layouts);
    if (rc < 0) {
        goto out_unlock;
    }
    size_t q_len0 = c->q_len;
    rc = kv_idtab_add(&c->jobs, j, job);
    if (rc < 0) {
        goto out_unlock;
    }
    for (uint32_t l = layer_begin; l < layer_end; l++) {
        rc = queue_push_locked(c, j, l);
        if (rc < 0) {
            c->q_len = q_len0; /* drop this job's tasks again */
            kv_idtab_remove(&c->jobs, *job);
            goto out_unlock;
        }
    }
    c->unfinished++;
    pthread_cond_broadcast(&c->work_cv);
    pthread_mutex_unlock(&c->lock);
    return KV_OK;
out_unlock:
    pthread_mutex_unlock(&c->lock);
    job_free(j);
    return rc;
}

int kv_conn_wait_layer(struct kv_conn *c, uint64_t job, uint32_t layer, int timeout_ms)
{
    if (c == NULL) {
        return KV_EINVAL;
    }
    struct timespec dl;
    if (timeout_ms >= 0) {
        deadline_after(&dl, timeout_ms);
    }
    int rc = KV_OK;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        struct job *j = kv_idtab_get(&c->jobs, job);
        if (j == NULL) {
            rc = KV_ENOENT;
            break;
        }
        if (layer < j->layer_begin || layer >= j->layer_end) {
            rc = KV_ERANGE;
            break;
        }
        if (j->layer_done[layer - j->layer_begin]) {
            break;
        }
        if (timeout_ms < 0) {
            pthread_cond_wait(&c->done_cv, &c->lock);
        } else if (pthread_cond_timedwait(&c->done_cv, &c->lock, &dl) != 0) {
            j = kv_idtab_get(&c->jobs, job);
            if (j == NULL || !j->layer_done[layer - j->layer_begin]) {
                rc = j == NULL ? KV_ENOENT : KV_ETIMEDOUT;
            }
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int kv_conn_wait(struct kv_conn *c, uint64_t job, int timeout_ms, int *status)
{
    if (c == NULL) {
        return KV_EINVAL;
    }
    struct timespec dl;
    if (timeout_ms > 0) {
        deadline_after(&dl, timeout_ms);
    }
    int rc = 0;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        struct job *j = kv_idtab_get(&c->jobs, job);
        if (j == NULL) {
            rc = KV_ENOENT;
            break;
        }
        if (j->tasks_left == 0) {
            if (status != NULL) {
                memcpy(status, j->status, j->n * sizeof(*status));
            }
            rc = 1;
            break;
        }
        if (timeout_ms == 0) {
            rc = 0;
            break;
        }
        if (timeout_ms < 0) {
            pthread_cond_wait(&c->done_cv, &c->lock);
        } else if (pthread_cond_timedwait(&c->done_cv, &c->lock, &dl) != 0) {
            timeout_ms = 0; /* one last look at the job, then report */
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int kv_conn_peek(struct kv_conn *c, uint64_t job, int *status)
{
    if (c == NULL || status == NULL) {
        return KV_EINVAL;
    }
    int rc;
    pthread_mutex_lock(&c->lock);
    struct job *j = kv_idtab_get(&c->jobs, job);
    if (j == NULL) {
        rc = KV_ENOENT;
    } else {
        memcpy(status, j->status, j->n * sizeof(*status));
        rc = j->tasks_left == 0 ? 1 : 0;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int kv_conn_release(struct kv_conn *c, uint64_t job)
{
    if (c == NULL) {
        return KV_EINVAL;
    }
    int rc = KV_OK;
    struct job *j;
    pthread_mutex_lock(&c->lock);
    j = kv_idtab_get(&c->jobs, job);
    if (j == NULL) {
        rc = KV_ENOENT;
    } else if (j->tasks_left > 0) {
        rc = KV_EBUSY;
        j = NULL;
    } else {
        kv_idtab_remove(&c->jobs, job);
    }
    pthread_mutex_unlock(&c->lock);
    job_free(j);
    return rc;
}
