/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_etcd_response.c - the etcd v3 JSON-gateway reply decoders of the etcd metadata backend
 * (src/meta/meta_etcd_int.h). Arbitrary bytes go through every decoder (range, header,
 * deleterange, txn, lease grant, keepalive, a watch stream line, an error body) and the base64
 * decoder. Nothing may crash or leak; a failure must leave a message naming the problem, and a
 * success must return well-formed results (valid keys, NUL-terminated values).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "meta/meta_etcd_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_err(int rc, const char *err)
{
    if (rc == KV_EPROTO && err[0] == '\0')
        abort(); /* a failure must name its cause */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20)
        return 0;
    const char *body = (const char *)data;
    char err[256];

    struct kv_meta_kv *kvs = NULL;
    size_t n = 0;
    err[0] = '\0';
    int rc = kv_etcd_decode_range(body, size, &kvs, &n, err, sizeof(err));
    check_err(rc, err);
    if (rc == KV_OK) {
        for (size_t i = 0; i < n; i++)
            if (!kvs[i].key[0] || kvs[i].val[kvs[i].len] != '\0')
                abort();
        kv_meta_kvs_free(kvs, n);
    }

    int64_t v = 0, t = 0;
    bool b = false;
    err[0] = '\0';
    check_err(kv_etcd_decode_header(body, size, &v, err, sizeof(err)), err);
    err[0] = '\0';
    check_err(kv_etcd_decode_deleted(body, size, &v, err, sizeof(err)), err);
    err[0] = '\0';
    check_err(kv_etcd_decode_txn(body, size, &b, err, sizeof(err)), err);
    err[0] = '\0';
    rc = kv_etcd_decode_grant(body, size, &v, &t, err, sizeof(err));
    check_err(rc, err);
    if (rc == KV_OK && (v <= 0 || t <= 0))
        abort();
    err[0] = '\0';
    check_err(kv_etcd_decode_keepalive(body, size, &t, err, sizeof(err)), err);
    err[0] = '\0';
    (void)kv_etcd_decode_error(500, body, size, err, sizeof(err));
    if (err[0] == '\0')
        abort();

    struct kv_etcd_watch_msg msg;
    err[0] = '\0';
    rc = kv_etcd_decode_watch(body, size, &msg, err, sizeof(err));
    check_err(rc, err);
    if (rc == KV_OK) {
        for (size_t i = 0; i < msg.n_events; i++) {
            const struct kv_etcd_event *e = &msg.events[i];
            if (!e->key[0] || (e->type == KV_META_EV_PUT && e->val[e->len] != '\0') ||
                (e->type == KV_META_EV_DEL && e->val))
                abort();
        }
        kv_etcd_watch_msg_fini(&msg);
    }

    char *bin = NULL;
    size_t blen = 0;
    if (kv_etcd_b64_decode(body, size, &bin, &blen) == KV_OK) {
        char *enc = NULL;
        if (kv_etcd_b64_encode(bin, blen, &enc) == KV_OK) {
            if (strlen(enc) != size || memcmp(enc, body, size) != 0)
                abort(); /* canonical base64 round-trips */
            kv_free(enc);
        }
        kv_free(bin);
    }
    return 0;
}
