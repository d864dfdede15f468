/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_metad_request.c - arbitrary bytes into the metadata server's request decoders (query
 * string, CAS body, lease bodies), its data-file parser, and the http:// client's list and watch
 * reply decoders. The first byte picks the decoder; the rest is its input. Successful parses are
 * checked for their invariants (keys valid, values within limits, data files round-trip).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "meta/meta_http_int.h"
#include "meta/metad_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
    if (!cond)
        abort(); /* a broken invariant: let the fuzzer report it */
}

static void check_kvs(const struct kv_meta_kv *kvs, size_t n)
{
    check((n == 0) == (kvs == NULL));
    for (size_t i = 0; i < n; i++) {
        check(kvs[i].key && kvs[i].key[0] && strlen(kvs[i].key) < KV_META_MAX_KEY);
        check(kvs[i].val && kvs[i].len <= KV_METAD_MAX_VALUE_LIMIT &&
              kvs[i].val[kvs[i].len] == '\0');
        if (i)
            check(strcmp(kvs[i - 1].key, kvs[i].key) <= 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0] % 7;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    char err[256];
    switch (sel) {
    case 0: { /* query string: needs NUL termination */
        char *q = kv_memdup0(in, len);
        if (!q)
            return 0;
        struct kv_metad_query r;
        if (kv_metad_decode_query(q, &r, err, sizeof(err)) == 0) {
            if (r.key)
                check(r.key[0] && strlen(r.key) < KV_META_MAX_KEY);
            check(r.lease >= 0 && r.timeout_ms >= 0 && r.timeout_ms <= KV_METAD_MAX_WATCH_MS);
            kv_metad_query_fini(&r);
        } else {
            check(err[0] != '\0');
        }
        kv_free(q);
        break;
    }
    case 1: {
        struct kv_metad_cas c;
        if (kv_metad_decode_cas(in, len, &c, err, sizeof(err)) == 0) {
            check(c.key && c.val && c.len <= KV_META_MAX_VALUE && c.lease >= 0);
            kv_metad_cas_fini(&c);
        }
        break;
    }
    case 2:
    case 3: {
        int64_t v = 0;
        if (kv_metad_decode_lease(in, len, sel == 2 ? "ttl" : "id", &v, err, sizeof(err)) == 0)
            check(v > 0);
        break;
    }
    case 4: {
        struct kv_meta_kv *kvs = NULL;
        size_t n = 0;
        if (kv_metad_parse_data(in, len, &kvs, &n, err, sizeof(err)) == 0) {
            check_kvs(kvs, n);
            char *text = NULL;
            if (kv_metad_encode_data(kvs, n, &text) == 0) {
                struct kv_meta_kv *kvs2 = NULL;
                size_t n2 = 0;
                check(kv_metad_parse_data(text, strlen(text), &kvs2, &n2, err, sizeof(err)) == 0);
                check(n2 == n);
                for (size_t i = 0; i < n; i++)
                    check(strcmp(kvs[i].key, kvs2[i].key) == 0 && kvs[i].len == kvs2[i].len &&
                          memcmp(kvs[i].val, kvs2[i].val, kvs[i].len) == 0);
                kv_meta_kvs_free(kvs2, n2);
                kv_free(text);
            }
            kv_meta_kvs_free(kvs, n);
        }
        break;
    }
    case 5: {
        struct kv_meta_kv *kvs = NULL;
        size_t n = 0;
        if (kv_meta_http_decode_list(in, len, &kvs, &n, err, sizeof(err)) == 0) {
            check_kvs(kvs, n);
            kv_meta_kvs_free(kvs, n);
        }
        break;
    }
    case 6: {
        struct kv_meta_http_ev *evs = NULL;
        size_t n = 0;
        uint64_t rev = 0;
        if (kv_meta_http_decode_watch(in, len, &rev, &evs, &n, err, sizeof(err)) == 0) {
            for (size_t i = 0; i < n; i++)
                check(evs[i].key && (evs[i].type == KV_META_EV_DEL) == (evs[i].val == NULL));
            kv_meta_http_evs_free(evs, n);
        }
        break;
    }
    }
    return 0;
}
