/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta_http_int.h - the http:// client's response decoders as pure functions, for the fuzz
 * target and tests. Shapes are in docs/design/meta.md. On failure they return KV_EPROTO with a
 * message naming the problem in err and leave the out-parameters alone. Thread-safe.
 */
#ifndef KV_META_HTTP_INT_H
#define KV_META_HTTP_INT_H

#include <stddef.h>
#include <stdint.h>

#include "meta/meta_int.h"

/* GET /metadata?prefix=P: [{"key": K | "key_b64": B64, "value": B64}, ...]. *kvs is owned
 * (kv_meta_kvs_free), sorted by key, NULL when *n is 0. */
int kv_meta_http_decode_list(const char *body, size_t len, struct kv_meta_kv **kvs, size_t *n,
                             char *err, size_t errlen);

struct kv_meta_http_ev {
    enum kv_meta_event_type type;
    char *key;
    char *val; /* NULL for KV_META_EV_DEL; else NUL-terminated after len bytes */
    size_t len;
};

/* GET /watch: {"revision": R, "events": [{"type": "put"|"delete", "rev": N, "key": K |
 * "key_b64": B64, "value": B64 (put only)}, ...]}. *evs is owned (kv_meta_http_evs_free). */
int kv_meta_http_decode_watch(const char *body, size_t len, uint64_t *rev,
                              struct kv_meta_http_ev **evs, size_t *n, char *err, size_t errlen);
void kv_meta_http_evs_free(struct kv_meta_http_ev *evs, size_t n);

#endif
