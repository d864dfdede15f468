/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta.h - the metadata interface: a small consistent key/value store used for discovery.
 *
 * One interface, four backends chosen by URL:
 *   embedded://[NAME]                  in-process map; opens with the same NAME share one map
 *   http://HOST:PORT/metadata          client of `kvstash metad`
 *   etcd://HOST:PORT[,HOST:PORT...]    real etcd (v3 JSON gateway), fails over between endpoints
 *   redis://HOST:PORT[/DB]             Redis through hiredis
 *
 * Keys are NUL-terminated strings (kvstash uses "/kvstash/<cluster>/..."); values are binary
 * and carry a length. Leases: a key put with a lease id is deleted when the lease expires or is
 * revoked. Watches deliver put and delete events for keys under a prefix.
 *
 * Thread-safety: a struct kv_meta may be used from many threads at once. Watch callbacks run
 * on a backend thread, never under an internal lock; they may call kv_meta_* except
 * kv_meta_unwatch of their own watch and kv_meta_close.
 *
 * Errors: KV_EMETA_UNAVAIL when the backend cannot be reached within the timeout (never a
 * hang), KV_ENOENT for a missing key, KV_EMETA_CAS for a failed compare, KV_EMETA_LEASE for an
 * unknown or expired lease, KV_EMETA_URL for a URL no backend accepts.
 */
#ifndef KVSTASH_META_H
#define KVSTASH_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kv_meta;

struct kv_meta_opts {
    int timeout_ms; /* per request; 0 = default 3000 */
};

/* Opens a backend for url. On success *out owns a handle (close with kv_meta_close()).
 * Returns KV_EMETA_URL for an unknown scheme or a malformed URL, KV_EMETA_UNAVAIL when the
 * backend does not answer. opts may be NULL. */
KV_API int kv_meta_open(const char *url, const struct kv_meta_opts *opts, struct kv_meta **out);

/* Stops every watch and lease keeper, then frees m. NULL is a no-op. Leases are not revoked:
 * they expire on their own, as they would if the process died. */
KV_API void kv_meta_close(struct kv_meta *m);

/* "embedded", "http", "etcd" or "redis". Static storage. */
KV_API const char *kv_meta_backend(const struct kv_meta *m);

/* Reads key. On success *val is an owned copy with a NUL byte after the *len value bytes
 * (free with kv_meta_free()). KV_ENOENT when absent. */
KV_API int kv_meta_get(struct kv_meta *m, const char *key, char **val, size_t *len);

/* Writes key = val[0..len). lease is 0 or a lease id from kv_meta_lease_grant(). */
KV_API int kv_meta_put(struct kv_meta *m, const char *key, const void *val, size_t len,
                       int64_t lease);

/* Deletes key. KV_ENOENT when it was absent. */
KV_API int kv_meta_del(struct kv_meta *m, const char *key);

struct kv_meta_kv {
    char *key;
    char *val; /* NUL-terminated after len bytes */
    size_t len;
};

/* Every key starting with prefix ("" for all), sorted by key. *kvs is owned (free with
 * kv_meta_kvs_free(*kvs, *n)); it is NULL when *n is 0. */
KV_API int kv_meta_list(struct kv_meta *m, const char *prefix, struct kv_meta_kv **kvs, size_t *n);
KV_API void kv_meta_kvs_free(struct kv_meta_kv *kvs, size_t n);

/* Atomically: if key's current value equals expect[0..expect_len) (or, with expect NULL, if key
 * is absent), set it to val[0..len) bound to lease (0 = none). KV_EMETA_CAS otherwise. */
KV_API int kv_meta_cas(struct kv_meta *m, const char *key, const void *expect, size_t expect_len,
                       const void *val, size_t len, int64_t lease);

/* Grants a lease of ttl_s seconds (>= 1). */
KV_API int kv_meta_lease_grant(struct kv_meta *m, int ttl_s, int64_t *lease);

/* Renews lease for its full ttl. KV_EMETA_LEASE when it already expired. */
KV_API int kv_meta_lease_keepalive(struct kv_meta *m, int64_t lease);

/* Revokes lease and deletes every key bound to it. KV_EMETA_LEASE when unknown. */
KV_API int kv_meta_lease_revoke(struct kv_meta *m, int64_t lease);

/* Called from the keeper thread when an auto-renewed lease is found expired (for example
 * after an outage longer than its ttl). The owner should grant a new lease and put its keys
 * again, and return KV_OK; a negative return (metadata still unreachable) makes the keeper
 * call it again for the same lease with back-off (250 ms doubling to 5 s), so it must be
 * safe to repeat. Calls never overlap. */
typedef int (*kv_meta_lease_lost_fn)(void *ud, int64_t lease);

/* Renews lease every ttl_s/3 seconds from a background thread until it is revoked through
 * this handle or m is closed; a revoke also cancels pending lost() retries. lost may be NULL;
 * ud must stay valid until the lease is revoked, lost() succeeded, or m is closed. */
KV_API int kv_meta_lease_autorenew(struct kv_meta *m, int64_t lease, int ttl_s,
                                   kv_meta_lease_lost_fn lost, void *ud);

enum kv_meta_event_type {
    KV_META_EV_PUT = 1,
    KV_META_EV_DEL = 2,
};

struct kv_meta_event {
    enum kv_meta_event_type type;
    const char *key;   /* borrowed for the callback */
    const char *value; /* borrowed; NULL for KV_META_EV_DEL */
    size_t len;
};

typedef void (*kv_meta_watch_fn)(void *ud, const struct kv_meta_event *ev);

/* Calls fn for every put or delete of a key under prefix made after this call returns (events
 * of one key arrive in order). *id identifies the watch for kv_meta_unwatch(). */
KV_API int kv_meta_watch(struct kv_meta *m, const char *prefix, kv_meta_watch_fn fn, void *ud,
                         uint64_t *id);

/* Stops a watch. When it returns, fn is not running and will not be called again. */
KV_API int kv_meta_unwatch(struct kv_meta *m, uint64_t id);

/* Frees a value returned by kv_meta_get(). NULL is a no-op. */
KV_API void kv_meta_free(void *p);

#ifdef __cplusplus
}
#endif
#endif
