/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta_embedded_int.h - private extras of the embedded backend, used by the metadata server
 * (metad.c): store revisions, revision-stamped watches and a snapshot without leased keys.
 *
 * Every mutation of an embedded store (put, delete, CAS, lease revoke or expiry) takes the next
 * store revision (1, 2, 3, ...) under the store lock, so revisions order all events of a store.
 * All functions return KV_EINVAL when m is not an embedded handle.
 */
#ifndef KV_META_EMBEDDED_INT_H
#define KV_META_EMBEDDED_INT_H

#include <stdint.h>

#include "meta/meta_int.h"

/* Like kv_meta_watch_fn, plus the store revision of the event. */
typedef void (*kv_meta_emb_rev_fn)(void *ud, const struct kv_meta_event *ev, uint64_t rev);

/* Like kv_meta_watch() but fn also gets the revision; *start_rev gets the store revision at the
 * moment the watch was registered (every delivered event has rev > *start_rev, and every event
 * with rev > *start_rev under prefix is delivered). Unwatch with kv_meta_unwatch(). */
int kv_meta_embedded_watch_rev(struct kv_meta *m, const char *prefix, kv_meta_emb_rev_fn fn,
                               void *ud, uint64_t *id, uint64_t *start_rev);

/* The store's current revision (the revision of its latest mutation, 0 if none). */
int kv_meta_embedded_rev(struct kv_meta *m, uint64_t *rev);

/* Like kv_meta_put() but without the API's KV_META_MAX_VALUE limit on len: the metadata server
 * stores what Mooncake clients put (bounded by its own max_value). key must be non-empty and
 * shorter than KV_META_MAX_KEY (KV_EINVAL otherwise). */
int kv_meta_embedded_put(struct kv_meta *m, const char *key, const void *val, size_t len,
                         int64_t lease);

/* A point-in-time copy of the keys not bound to a lease (what a data file persists), sorted by
 * key. kvs[i].key and kvs[i].val point into one arena (val NUL-terminated after len bytes), so
 * taking it costs two allocations and one pass of memcpy under the store's lock, however many
 * keys there are: writers and lease keepalives wait for that copy only. */
struct kv_meta_emb_snap {
    struct kv_meta_kv *kvs; /* NULL when n is 0 */
    size_t n;
    char *arena;
};
/* Fills *snap (free with kv_meta_embedded_snap_free); KV_ENOMEM leaves it zeroed. */
int kv_meta_embedded_snapshot_unleased(struct kv_meta *m, struct kv_meta_emb_snap *snap);
/* Frees a snapshot and zeroes it; a zeroed snapshot is a no-op. */
void kv_meta_embedded_snap_free(struct kv_meta_emb_snap *snap);

#endif
