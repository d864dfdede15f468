/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta_etcd_int.h - private to meta_etcd.c: the pure decoders of etcd v3 JSON-gateway
 * responses, exposed for the unit tests and the fuzz target (tests/fuzz/fuzz_etcd_response.c).
 *
 * Every decoder takes an untrusted body (any bytes, any length), never crashes, and on a
 * malformed body returns KV_EPROTO with a message naming the problem in err (errlen bytes).
 * On failure out-parameters are left unchanged. The gateway encodes int64 fields as JSON
 * strings and omits fields holding their default value (0, false, ""), so an absent number
 * decodes as 0. Keys and values are base64 (standard alphabet, padded).
 *
 * Thread-safety: all functions are reentrant.
 */
#ifndef KV_META_ETCD_INT_H
#define KV_META_ETCD_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvstash/meta.h"

/* base64 (libsodium, ORIGINAL variant) of p[0..n) into an owned NUL-terminated string
 * (kv_free). KV_ENOMEM. */
int kv_etcd_b64_encode(const void *p, size_t n, char **out);

/* Decodes base64 s[0..slen) into an owned buffer with a NUL byte after *len bytes (kv_free).
 * KV_EPROTO for invalid base64, KV_ENOMEM. */
int kv_etcd_b64_decode(const char *s, size_t slen, char **out, size_t *len);

/* The range_end that selects every key starting with prefix: prefix with its last byte below
 * 0xff incremented and the rest dropped, or "\0" (every key >= key) when there is no such byte
 * (this includes prefix ""). Owned buffer in *out (kv_free), *len bytes. */
int kv_etcd_prefix_end(const char *prefix, char **out, size_t *len);

/* Maps a non-200 reply (HTTP status, body {"error","code","message"}) to a kv_err:
 * lease-not-found -> KV_EMETA_LEASE, other NotFound -> KV_ENOENT, InvalidArgument ->
 * KV_EINVAL, "too large" -> KV_E2BIG, Unavailable/DeadlineExceeded -> KV_EMETA_UNAVAIL,
 * anything else KV_EIO; a body that is not such an object -> KV_EPROTO. err names the cause. */
int kv_etcd_decode_error(long status, const char *body, size_t len, char *err, size_t errlen);

/* /v3/kv/range: every kv into *kvs (owned, kv_meta_kvs_free) in response order. Keys that are
 * not valid kvstash keys (empty or containing NUL) are skipped. *kvs is NULL when *n is 0. */
int kv_etcd_decode_range(const char *body, size_t len, struct kv_meta_kv **kvs, size_t *n,
                         char *err, size_t errlen);

/* /v3/kv/put and other replies whose content does not matter: checks it is an object with a
 * "header" object. */
int kv_etcd_decode_header(const char *body, size_t len, int64_t *revision, char *err,
                          size_t errlen);

/* /v3/kv/deleterange: the number of keys deleted. */
int kv_etcd_decode_deleted(const char *body, size_t len, int64_t *deleted, char *err,
                           size_t errlen);

/* /v3/kv/txn: whether the compare succeeded. */
int kv_etcd_decode_txn(const char *body, size_t len, bool *succeeded, char *err, size_t errlen);

/* /v3/lease/grant: the lease id (> 0) and granted TTL. An "error" field -> KV_EPROTO. */
int kv_etcd_decode_grant(const char *body, size_t len, int64_t *id, int64_t *ttl, char *err,
                         size_t errlen);

/* /v3/lease/keepalive (a stream of {"result":{...}} or {"error":{...}} objects, one per
 * line): the TTL of the first message; 0 means the lease is gone. A stream error -> KV_EIO. */
int kv_etcd_decode_keepalive(const char *body, size_t len, int64_t *ttl, char *err, size_t errlen);

struct kv_etcd_event {
    enum kv_meta_event_type type;
    char *key; /* owned, NUL-terminated */
    char *val; /* owned, NUL after len bytes; NULL for KV_META_EV_DEL */
    size_t len;
    int64_t mod_revision;
};

struct kv_etcd_watch_msg {
    bool created;
    bool canceled;
    int64_t header_revision;
    int64_t compact_revision;
    struct kv_etcd_event *events; /* owned; free with kv_etcd_watch_msg_fini() */
    size_t n_events;
};

/* One line of the /v3/watch stream. A stream error object ({"error":{...}}) -> KV_EIO.
 * Events whose key is not a valid kvstash key are skipped. */
int kv_etcd_decode_watch(const char *body, size_t len, struct kv_etcd_watch_msg *msg, char *err,
                         size_t errlen);
void kv_etcd_watch_msg_fini(struct kv_etcd_watch_msg *msg);

#endif
