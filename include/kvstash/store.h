/* SPDX-License-Identifier: Apache-2.0 */
/*
 * store.h - client of the distributed KV store (master + storage nodes).
 *
 * An object is a key (1..KV_STORE_MAX_KEY bytes, no NUL) and an immutable value. Put is
 * PutStart (the master allocates space on `replicas` distinct nodes; the object is PENDING and
 * invisible) -> the client writes every replica through the transfer engine -> PutEnd with the
 * xxh3 checksum (the object becomes visible). Get asks the master for the replicas (and a read
 * lease that keeps them from eviction), reads the nearest one (same host: shared memory) and
 * verifies the checksum; on a bad replica it tries the next. A get returns the whole value or
 * an error: never partial, torn or stale bytes.
 *
 * Semantics of a second put of an existing key: first writer wins; the later put fails with
 * KV_EEXIST (remove first to replace). A remove makes the key invisible at once; its space is
 * reused only after outstanding read leases end.
 *
 * The client finds the master by address (opts->master "H:P") or through metadata
 * (opts->metadata URL: the elected leader), and follows a new leader after fail-over.
 *
 * Thread-safety: a struct kv_store may be used from many threads at once.
 */
#ifndef KVSTASH_STORE_H
#define KVSTASH_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KV_STORE_MAX_KEY 4096

struct kv_store;

struct kv_store_opts {
    const char *master;   /* "HOST:PORT" of the master, or NULL to use metadata */
    const char *metadata; /* metadata URL for leader discovery and segments, or NULL */
    const char *cluster;  /* NULL = "default" */
    const char *protocol; /* transfer protocol: "auto" (NULL), "tcp", "shm", "rdma" */
    int timeout_ms;       /* per operation; 0 = default 10000 */
    /* Microseconds a call keeps polling for the master's answer before its thread sleeps
     * (at most 10000): 0 = KV_STORE_DEFAULT_POLL_SPIN_US, negative = never. An answer that
     * comes within it skips the sleep and wake-up (on a VM about as long as the request
     * itself); a call costs up to this much CPU more. */
    int poll_spin_us;
};

#define KV_STORE_DEFAULT_POLL_SPIN_US 50

/* Connects to the master. *out is owned (close with kv_store_close()). KV_EMETA_UNAVAIL /
 * KV_ECONNREFUSED when no master answers within the timeout. */
KV_API int kv_store_open(const struct kv_store_opts *opts, struct kv_store **out);
KV_API void kv_store_close(struct kv_store *s);

struct kv_put_opts {
    int replicas;   /* distinct nodes; 0 = 1 */
    uint32_t ttl_s; /* 0 = the master's kv_expire_time */
    bool pin;       /* soft pin: evicted only when nothing else can be */
};

/* Stores buf[0..len) under key. opts may be NULL. KV_EEXIST if key exists (or is being put),
 * KV_ENOSPC if no node has room even after eviction, KV_EINVAL for a bad key. */
KV_API int kv_store_put(struct kv_store *s, const char *key, const void *buf, size_t len,
                        const struct kv_put_opts *opts);

/* Reads key into buf (cap bytes). *len gets the value's size. KV_ENOENT when absent;
 * KV_E2BIG when cap < size (nothing copied, *len set). */
KV_API int kv_store_get(struct kv_store *s, const char *key, void *buf, size_t cap, size_t *len);

/* Reads key into a new buffer (free with kv_store_free()). */
KV_API int kv_store_get_alloc(struct kv_store *s, const char *key, void **buf, size_t *len);

/* 1 if key exists (complete), 0 if not, or a negative error. */
KV_API int kv_store_exists(struct kv_store *s, const char *key);

/* Removes key. KV_ENOENT when absent. */
KV_API int kv_store_remove(struct kv_store *s, const char *key);

/* Batches: one master round trip for n keys (per phase). results[i] gets each key's status
 * (as the single-key call would return); the call returns KV_OK if it could ask the master at
 * all, even if some keys failed. */
KV_API int kv_store_batch_put(struct kv_store *s, size_t n, const char *const *keys,
                              const void *const *bufs, const size_t *lens,
                              const struct kv_put_opts *opts, int *results);
/* Writes object i (len bytes) at dst and sets *checksum to the XXH3 64-bit hash (seed 0,
 * libxxhash's XXH3_64bits) of those bytes, best computed as they are written (XXH3's streaming
 * update per piece gives the same value); returns KV_OK or a negative error
 * (object i is then not stored and gets that error). Called on the putting thread, once per
 * object with bytes (never for an empty one), in no particular order. */
typedef int (*kv_put_fill_fn)(void *ud, size_t i, void *dst, size_t len, uint64_t *checksum);

/* kv_store_batch_put for a producer (a gather, a decoder): no source buffers; fill writes each
 * object where it is stored. An object above the inline size with one replica on a node this
 * process can map (same host) is written straight into the node's segment: one pass over the
 * bytes instead of produce + copy + checksum. Other objects are filled into a buffer of the
 * call and put as by kv_store_batch_put (those are filled before the master is asked, so
 * also when the key turns out to exist). Results as kv_store_batch_put. */
KV_API int kv_store_batch_put_fill(struct kv_store *s, size_t n, const char *const *keys,
                                   const size_t *lens, kv_put_fill_fn fill, void *ud,
                                   const struct kv_put_opts *opts, int *results);
KV_API int kv_store_batch_get(struct kv_store *s, size_t n, const char *const *keys,
                              void *const *bufs, const size_t *caps, size_t *lens, int *results);
KV_API int kv_store_batch_exists(struct kv_store *s, size_t n, const char *const *keys,
                                 int *results);
/* Removes n keys in one master round trip; results[i] gets KV_OK or KV_ENOENT (as
 * kv_store_remove would return). */
KV_API int kv_store_batch_remove(struct kv_store *s, size_t n, const char *const *keys,
                                 int *results);

/* Keys starting with prefix (at most limit, 0 = no limit), sorted. *keys is owned: free with
 * kv_store_keys_free(*keys, *n). sizes may be NULL; else *sizes is owned (kv_store_free). */
KV_API int kv_store_list(struct kv_store *s, const char *prefix, size_t limit, char ***keys,
                         uint64_t **sizes, size_t *n);
KV_API void kv_store_keys_free(char **keys, size_t n);

/* The master's cluster statistics as a JSON object text (the same document as the admin
 * endpoint /api/v1/cluster). *json is owned (kv_store_free). */
KV_API int kv_store_stat_json(struct kv_store *s, char **json);

KV_API void kv_store_free(void *p);

/* ---- asynchronous single-key operations --------------------------------------------------
 * A kv_store_aio keeps up to `depth` operations in flight from one thread, each on a
 * connection of its own to the master: submit with kv_store_aio_put/get/exists (they return at
 * once), collect results with kv_store_aio_poll. Results are those of the synchronous calls
 * (a get's len as kv_store_get's *len, an exists' 1/0); whatever the synchronous client would
 * retry (a new leader, no node mounted yet, a promotion pending, a lost connection for a get
 * or an exists) is completed by the synchronous call, on the polling thread. A value above
 * the client's inline size (KVSTASH_PUT_INLINE_MAX, 64 KiB) is put synchronously inside
 * kv_store_aio_put; its result still comes from a poll. One thread at a time per context. */
struct kv_store_aio;

struct kv_store_aio_done {
    uint64_t tag; /* as submitted */
    int status;   /* the operation's result */
    size_t len;   /* get: the value's size (KV_OK, KV_E2BIG) */
};

/* depth: operations in flight at most (1..1024). Connections are made on first use. */
KV_API int kv_store_aio_open(struct kv_store *s, unsigned depth, struct kv_store_aio **out);
/* Closes the connections; operations in flight are abandoned (a get's buffer is not written
 * after this returns). The kv_store must outlive it. NULL is a no-op. */
KV_API void kv_store_aio_close(struct kv_store_aio *a);
/* Submits. KV_OK: in flight, the result comes from a poll. KV_EBUSY: `depth` operations are in
 * flight (poll first). KV_EINVAL (bad key or arguments), or the error of connecting to the
 * master: nothing was submitted then. A put's value is copied at once; a get's buf must stay
 * valid until its result is polled (or the context closed). */
KV_API int kv_store_aio_put(struct kv_store_aio *a, const char *key, const void *buf, size_t len,
                            const struct kv_put_opts *opts, uint64_t tag);
KV_API int kv_store_aio_get(struct kv_store_aio *a, const char *key, void *buf, size_t cap,
                            uint64_t tag);
KV_API int kv_store_aio_exists(struct kv_store_aio *a, const char *key, uint64_t tag);
/* Waits up to timeout_ms (< 0: until one completes, 0: not at all) for results and writes up
 * to max of them into done. Returns how many (0: none within the timeout, or nothing in
 * flight), or a negative error of the wait itself. Each operation completes once, at the
 * latest when the client's timeout passed since its submit (KV_ETIMEDOUT). */
KV_API int kv_store_aio_poll(struct kv_store_aio *a, struct kv_store_aio_done *done, size_t max,
                             int timeout_ms);
/* Operations submitted and not yet returned by a poll. */
KV_API unsigned kv_store_aio_inflight(const struct kv_store_aio *a);

struct kv_store_aio_stats {
    uint64_t submitted; /* requests sent on the context's own connections */
    uint64_t fallbacks; /* operations completed by the synchronous call (leader change, ...) */
    uint64_t connects;  /* connections made (first use, leader change, lost connection) */
};
/* The context's counters since it was opened. */
KV_API void kv_store_aio_stats(const struct kv_store_aio *a, struct kv_store_aio_stats *st);

/* ---- Handles: the same client addressed by a generation-checked id (for bindings) ----
 *
 * A binding (Python's ctypes) must never hold a raw struct kv_store pointer: a close in one
 * thread while another thread calls would make the call read freed memory. kv_store_h_open()
 * returns an id ({index, generation}, never 0); every kv_store_h_* call looks the id up and
 * holds a reference on the client for the duration of the call. kv_store_h_close() removes the
 * id at once (later calls with it, or with any stale or made-up id, return KV_ESHUTDOWN, and
 * never touch freed memory) and the client is closed when the last call in flight returns.
 * The other functions behave as their kv_store_* counterparts (same arguments and results).
 * Thread-safety: every function may be called from any thread at any time, close included. */
typedef uint64_t kv_store_id;

KV_API int kv_store_h_open(const struct kv_store_opts *opts, kv_store_id *id);
/* KV_OK, or KV_ESHUTDOWN when id is not open (closed twice, stale, never opened). */
KV_API int kv_store_h_close(kv_store_id id);
/* A reference on the client behind id for a caller that needs the pointer itself (the copy
 * engine's kv_conn_opts.store): *s is valid until the matching kv_store_h_release(*s), even
 * after kv_store_h_close(id). KV_ESHUTDOWN when id is not open. */
KV_API int kv_store_h_acquire(kv_store_id id, struct kv_store **s);
KV_API void kv_store_h_release(struct kv_store *s);
KV_API int kv_store_h_put(kv_store_id id, const char *key, const void *buf, size_t len,
                          const struct kv_put_opts *opts);
KV_API int kv_store_h_get(kv_store_id id, const char *key, void *buf, size_t cap, size_t *len);
KV_API int kv_store_h_get_alloc(kv_store_id id, const char *key, void **buf, size_t *len);
KV_API int kv_store_h_exists(kv_store_id id, const char *key);
KV_API int kv_store_h_remove(kv_store_id id, const char *key);
KV_API int kv_store_h_batch_put(kv_store_id id, size_t n, const char *const *keys,
                                const void *const *bufs, const size_t *lens,
                                const struct kv_put_opts *opts, int *results);
KV_API int kv_store_h_batch_get(kv_store_id id, size_t n, const char *const *keys,
                                void *const *bufs, const size_t *caps, size_t *lens, int *results);
KV_API int kv_store_h_batch_exists(kv_store_id id, size_t n, const char *const *keys, int *results);
KV_API int kv_store_h_list(kv_store_id id, const char *prefix, size_t limit, char ***keys,
                           uint64_t **sizes, size_t *n);
KV_API int kv_store_h_stat_json(kv_store_id id, char **json);

#ifdef __cplusplus
}
#endif
#endif
