/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kvconn.h - the asynchronous KV-cache copy engine behind the Python engine connectors (vLLM V1
 * connector, SGLang HiCache backend). It moves paged KV blocks between an engine's KV tensors
 * in host memory and the store, layer by layer, on its own worker threads, so saves and loads
 * never run on the engine's critical path.
 *
 * Model:
 *   - The engine describes each layer's paged cache once (kv_conn_register_layer): where block 0
 *     of K and of V lives, and the byte strides of a block, a token slot and a head. Both vLLM
 *     layouts are expressible: NHD [num_blocks, block_size, heads, head_dim] and HND
 *     [num_blocks, heads, block_size, head_dim]; K and V are separate address ranges. The
 *     innermost row (head_dim elements, row_bytes) must be contiguous.
 *   - A *chunk* is chunk_blocks consecutive blocks of a request (chunk_blocks * block_size
 *     tokens), stored as one object per layer under "<chunk key>/L<layer>". The object holds
 *     the chunk's K rows then its V rows, each in [token][head][row] order, whatever the
 *     layout of the tensor, so its size is 2 * chunk_tokens * num_heads * row_bytes.
 *   - A *job* saves or loads n chunks over a range of layers. A worker takes one (job, layer)
 *     task at a time: save = gather the rows of every chunk into a staging buffer, then one
 *     store batch put; load = one store batch get into staging, then scatter the rows of the
 *     requested token range of each chunk into the tensor. Tasks run in layer order, so
 *     kv_conn_wait_layer() lets the engine start computing layer 0 while later layers load.
 *   - Results are per chunk: the first error of any layer. A load writes a chunk's rows for a
 *     layer only after that layer's object arrived whole (the store verifies its checksum); a
 *     chunk whose status is an error must be recomputed by the engine. A save of a key that
 *     exists already counts as success (first writer wins; the bytes are the same).
 *
 * Lifetime: the engine never owns the KV tensors; the caller keeps them (and the blocks named
 * in a job) alive and unmodified (save) / unread (load) until the job is complete.
 * Thread-safety: every function may be called from any thread at once, except that
 * kv_conn_destroy() must not race with other calls on the same engine.
 */
#ifndef KVSTASH_KVCONN_H
#define KVSTASH_KVCONN_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kv_store;
struct kv_conn;

/* Where objects go. Used instead of a store by tests and by callers with their own storage.
 * Both functions follow kv_store_batch_put/get: they return KV_OK if the batch was attempted
 * and set results[i] per key. They are called from the engine's worker threads, concurrently. */
struct kv_conn_backend {
    int (*batch_put)(void *ud, size_t n, const char *const *keys, const void *const *bufs,
                     const size_t *lens, int *results);
    int (*batch_get)(void *ud, size_t n, const char *const *keys, void *const *bufs,
                     const size_t *caps, size_t *lens, int *results);
    void *ud;
};

struct kv_conn_opts {
    struct kv_store *store; /* borrowed; must outlive the engine. NULL = use backend */
    const struct kv_conn_backend *backend; /* copied; used when store is NULL */
    int threads;                           /* worker threads; 0 = 2, at most 64 */
    uint32_t block_size;                   /* tokens per block (1..65536) */
    uint32_t chunk_blocks;                 /* blocks per chunk (1..4096) */
    uint32_t num_heads;                    /* KV heads of this rank (1..65536) */
    uint32_t row_bytes;                    /* head_dim * element size (1..1 MiB) */
    uint32_t ttl_s;                        /* ttl of saved objects; 0 = the master's default */
    int replicas;                          /* replicas of saved objects; 0 = 1 */
    size_t batch_max;                      /* keys per store batch call; 0 = 64 */
};

/* Starts the worker threads. *out is owned (kv_conn_destroy). KV_EINVAL names the bad option
 * in the log; KV_ENOMEM; KV_EIO if a thread cannot be started. */
KV_API int kv_conn_create(const struct kv_conn_opts *opts, struct kv_conn **out);

/* Cancels queued tasks (their chunks get KV_ECANCELED), waits for running ones, joins the
 * workers and frees every job. NULL is a no-op. */
KV_API void kv_conn_destroy(struct kv_conn *c);

/* One layer's paged cache. Addresses are the engine's host memory; strides are in bytes and
 * may be any value (negative is refused). */
struct kv_conn_layout {
    uint64_t k_base;      /* address of block 0 of K */
    uint64_t v_base;      /* address of block 0 of V */
    int64_t block_stride; /* bytes from block b to block b + 1 */
    int64_t token_stride; /* bytes from token slot t to t + 1 inside a block */
    int64_t head_stride;  /* bytes from head h to h + 1 */
    uint32_t num_blocks;  /* blocks in the tensor: block ids are checked against it */
};

/* Registers (or replaces, when no job is running) layer `layer` (< 65536). Layers used by a
 * job must all be registered. KV_EINVAL for a bad layout, KV_EBUSY while jobs run. */
KV_API int kv_conn_register_layer(struct kv_conn *c, uint32_t layer,
                                  const struct kv_conn_layout *layout);

enum kv_conn_op {
    KV_CONN_SAVE = 1,
    KV_CONN_LOAD = 2,
};

/* Queues a job over layers [layer_begin, layer_end) for n chunks (1..65536).
 *   keys[i]      chunk i's key prefix (copied; the engine appends "/L<layer>").
 *   block_ids    n * chunk_blocks block ids, chunk-major (copied). A save needs every id valid;
 *                a load needs valid ids only for blocks that hold tokens of its range, others
 *                may be -1.
 *   tok_begin/tok_end  (load only; may be NULL = whole chunk) token range [b, e) inside chunk
 *                i that the load writes; rows outside it are never touched. Must satisfy
 *                b <= e <= chunk tokens.
 * *job gets the job id (kv_conn_release it). KV_EINVAL names the bad argument in the log;
 * KV_ESHUTDOWN after destroy began. */
KV_API int kv_conn_submit(struct kv_conn *c, enum kv_conn_op op, uint32_t layer_begin,
                          uint32_t layer_end, size_t n, const char *const *keys,
                          const int32_t *block_ids, const uint32_t *tok_begin,
                          const uint32_t *tok_end, uint64_t *job);

/* Like kv_conn_submit, but the job reads and writes the given layouts (layer_end - layer_begin
 * entries, copied; layouts[i] is layer layer_begin + i) instead of the registered ones, which
 * need not exist. For per-job host staging buffers, e.g. of a device cache; block ids index
 * those buffers. */
KV_API int kv_conn_submit_at(struct kv_conn *c, enum kv_conn_op op, uint32_t layer_begin,
                             uint32_t layer_end, const struct kv_conn_layout *layouts, size_t n,
                             const char *const *keys, const int32_t *block_ids,
                             const uint32_t *tok_begin, const uint32_t *tok_end, uint64_t *job);

/* Waits until layer `layer` of the job is done (success or not), or timeout_ms passed (< 0 =
 * forever). KV_OK, KV_ETIMEDOUT, KV_ENOENT for an unknown job, KV_ERANGE for a layer outside
 * the job. */
KV_API int kv_conn_wait_layer(struct kv_conn *c, uint64_t job, uint32_t layer, int timeout_ms);

/* Waits until the whole job is done, or timeout_ms passed (0 = just poll, < 0 = forever).
 * Returns 1 when done, 0 when still running (timeout), KV_ENOENT for an unknown job.
 * When done and status is not NULL, status[i] (n entries) gets chunk i's result: KV_OK or the
 * first error met on any layer (KV_ENOENT: not in the store). */
KV_API int kv_conn_wait(struct kv_conn *c, uint64_t job, int timeout_ms, int *status);

/* Copies the job's per-chunk status so far (n entries: KV_OK, or the first error met on a
 * layer already done) without waiting. After kv_conn_wait_layer(job, L) returned KV_OK, every
 * chunk whose layer L failed already shows its error here. Returns 1 when the job is done, 0
 * while it runs, KV_ENOENT for an unknown job. */
KV_API int kv_conn_peek(struct kv_conn *c, uint64_t job, int *status);

/* Frees a finished job. KV_EBUSY if it still runs, KV_ENOENT if unknown. */
KV_API int kv_conn_release(struct kv_conn *c, uint64_t job);

/* Object size of one (chunk, layer): 2 * chunk tokens * heads * row_bytes. */
KV_API size_t kv_conn_object_size(const struct kv_conn *c);

/* ---- Handles: the same engine addressed by a generation-checked id (for bindings) ----
 *
 * As kv_store_h_* (store.h): a binding never holds a struct kv_conn pointer, so a destroy in
 * one thread while another waits on a job can never make the wait read freed memory.
 * kv_conn_h_create() takes the store as a kv_store_id (0 = use opts->backend; opts->store is
 * ignored) and holds its own reference on that client. kv_conn_h_destroy() removes the id at
 * once (later calls with it, or with any stale or made-up id, return KV_ESHUTDOWN); the engine
 * is destroyed (kv_conn_destroy) and the store reference released when the last call in flight
 * returns. The other functions behave as their kv_conn_* counterparts.
 * Thread-safety: every function may be called from any thread at any time, destroy included. */
typedef uint64_t kv_conn_id;

KV_API int kv_conn_h_create(const struct kv_conn_opts *opts, kv_store_id store, kv_conn_id *id);
/* KV_OK, or KV_ESHUTDOWN when id is not open (destroyed twice, stale, never created). */
KV_API int kv_conn_h_destroy(kv_conn_id id);
KV_API int kv_conn_h_register_layer(kv_conn_id id, uint32_t layer,
                                    const struct kv_conn_layout *layout);
KV_API int kv_conn_h_submit(kv_conn_id id, enum kv_conn_op op, uint32_t layer_begin,
                            uint32_t layer_end, size_t n, const char *const *keys,
                            const int32_t *block_ids, const uint32_t *tok_begin,
                            const uint32_t *tok_end, uint64_t *job);
KV_API int kv_conn_h_submit_at(kv_conn_id id, enum kv_conn_op op, uint32_t layer_begin,
                               uint32_t layer_end, const struct kv_conn_layout *layouts, size_t n,
                               const char *const *keys, const int32_t *block_ids,
                               const uint32_t *tok_begin, const uint32_t *tok_end, uint64_t *job);
KV_API int kv_conn_h_wait_layer(kv_conn_id id, uint64_t job, uint32_t layer, int timeout_ms);
KV_API int kv_conn_h_wait(kv_conn_id id, uint64_t job, int timeout_ms, int *status);
KV_API int kv_conn_h_peek(kv_conn_id id, uint64_t job, int *status);
KV_API int kv_conn_h_release(kv_conn_id id, uint64_t job);
/* *size = kv_conn_object_size(); KV_OK or KV_ESHUTDOWN. */
KV_API int kv_conn_h_object_size(kv_conn_id id, size_t *size);

#ifdef __cplusplus
}
#endif
#endif
