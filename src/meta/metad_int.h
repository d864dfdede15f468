/* SPDX-License-Identifier: Apache-2.0 */
/*
 * metad_int.h - the metadata server's request decoders and data-file codec, as pure functions
 * (no socket, no server state) so the fuzz target tests/fuzz/fuzz_metad_request.c and unit
 * tests can call them. The wire contract is in docs/design/meta.md.
 *
 * Every decoder fills its out-struct only on success (release it with the matching _fini,
 * which also accepts a zeroed struct) and otherwise returns KV_EINVAL (or KV_E2BIG for a value
 * over its limit, KV_ENOMEM) with a one-line message naming the problem in err.
 * Thread-safe (no shared state).
 */
#ifndef KV_META_METAD_INT_H
#define KV_META_METAD_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "meta/meta_int.h"

#define KV_METAD_MAX_WATCH_MS 60000
#define KV_METAD_DEFAULT_WATCH_MS 5000
/* Values stored through PUT /metadata may exceed the API's KV_META_MAX_VALUE (Mooncake's
 * segment descriptors): up to the server's max_value, by default KV_METAD_DEFAULT_MAX_VALUE and
 * at most KV_METAD_MAX_VALUE_LIMIT, which also bounds what data files and the http:// client's
 * list and watch decoders accept. */
#define KV_METAD_DEFAULT_MAX_VALUE (64u << 20)
#define KV_METAD_MAX_VALUE_LIMIT (1u << 30)

/* Query parameters of /metadata and /watch. */
struct kv_metad_query {
    char *key;      /* key=K (decoded), or NULL */
    char *prefix;   /* prefix=P (decoded; may be ""), or NULL */
    int64_t lease;  /* lease=N, 0 if absent */
    bool has_after; /* after=REV given */
    uint64_t after; /* after=REV */
    int timeout_ms; /* timeout_ms=T, clamped to KV_METAD_MAX_WATCH_MS; default 5000 */
};

/* Decodes a URL query string ("key=a%2Fb&lease=7"; NULL or "" = no parameters). Unknown
 * parameters are ignored (Mooncake clients may add their own); a repeated known parameter, an
 * empty or over-long key, a NUL byte (%00) or a malformed number is an error. */
int kv_metad_decode_query(const char *query, struct kv_metad_query *q, char *err, size_t errlen);
void kv_metad_query_fini(struct kv_metad_query *q);

/* Body of POST /metadata/cas: {"key": K | "key_b64": B64, "expect": B64 (absent = the key
 * must be absent), "value": B64, "lease": N (optional)}. */
struct kv_metad_cas {
    char *key;
    char *expect; /* NULL = must be absent; else NUL-terminated after expect_len bytes */
    size_t expect_len;
    char *val; /* NUL-terminated after len bytes */
    size_t len;
    int64_t lease;
};
int kv_metad_decode_cas(const char *body, size_t len, struct kv_metad_cas *c, char *err,
                        size_t errlen);
void kv_metad_cas_fini(struct kv_metad_cas *c);

/* Body of POST /lease/grant ({"ttl": S}, field "ttl", 1..86400*365) or /lease/keepalive and
 * /lease/revoke ({"id": N}, field "id", > 0). */
int kv_metad_decode_lease(const char *body, size_t len, const char *field, int64_t *out, char *err,
                          size_t errlen);

/* Data file: {"format": "kvstash-metad", "version": 1, "kvs": [{"key": K | "key_b64": B64,
 * "value": B64}, ...]}, values of up to KV_METAD_MAX_VALUE_LIMIT bytes. Parse returns an owned
 * array (kv_meta_kvs_free); encode returns an owned NUL-terminated JSON text (kv_free). */
int kv_metad_parse_data(const char *buf, size_t len, struct kv_meta_kv **kvs, size_t *n, char *err,
                        size_t errlen);
int kv_metad_encode_data(const struct kv_meta_kv *kvs, size_t n, char **out);

/* Base64 (libsodium, original variant with padding) helpers. decode: *out is owned, NUL-
 * terminated after *outlen bytes; KV_EINVAL for malformed input, KV_E2BIG past max bytes. */
int kv_metad_b64_decode(const char *b64, size_t b64len, size_t max, char **out, size_t *outlen);
char *kv_metad_b64_encode(const void *p, size_t len); /* owned (kv_free), NULL on ENOMEM */

/* JSON helpers shared with the http:// client (meta_http.c). */
#include <jansson.h>
/* Reads "key" (a string) or "key_b64" (base64) of o into an owned string and checks it. */
int kv_metad_json_key(json_t *o, char **out, char *err, size_t errlen);
/* Reads the base64 string field of o into an owned buffer of at most max bytes (KV_E2BIG
 * beyond). */
int kv_metad_json_b64(json_t *o, const char *field, size_t max, char **out, size_t *len, char *err,
                      size_t errlen);
/* Reads the object e: its key (kv_metad_json_key) into *key and, when with_value, its "value"
 * (kv_metad_json_b64, at most max bytes) into *val and *len (else NULL and 0). Both owned
 * (kv_free). On error the out-params are unchanged, nothing stays allocated and err names the
 * problem: KV_EINVAL (not an object, a bad field), KV_E2BIG (value too large), KV_ENOMEM. */
int kv_metad_json_kv(json_t *e, bool with_value, size_t max, char **key, char **val, size_t *len,
                     char *err, size_t errlen);
/* Reads the JSON array arr of such objects (with values of at most max bytes) into an owned
 * array sorted by key (NULL when empty; free with kv_meta_kvs_free). On error nothing stays
 * allocated, *bad is the failing element's index and err names its problem (errors as
 * kv_metad_json_kv). */
int kv_metad_json_kvs(json_t *arr, size_t max, struct kv_meta_kv **kvs, size_t *n, size_t *bad,
                      char *err, size_t errlen);
/* Appends {"key" (or "key_b64" for a key that is not UTF-8), "value": base64 (omitted when val
 * is NULL)} to the array arr. */
int kv_metad_json_add_kv(json_t *arr, const char *key, const char *val, size_t len);

#endif
