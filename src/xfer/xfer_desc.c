/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xfer_desc.c - the segment descriptor: what a process publishes about a segment so that peers
 * can reach it. JSON (jansson), one object:
 *
 *   {"v":1, "name":"seg0", "size":1048576, "seg":"4294967297",
 *    "host":{"boot_id":"…", "hostname":"…"}, "pid":1234, "tcp":"127.0.0.1:40123",
 *    "shm":"/proc/1234/fd/7",                  (only for kv_xfer_segment_alloc segments)
 *    "rdma":{"dev":"mlx5_0", "gid":"…"}}        (only when built with RDMA and a device exists)
 *
 * "seg" is a decimal string because ids use all 64 bits and JSON integers are signed.
 * The decoder is strict: unknown fields, wrong types, empty or oversized strings, a zero size
 * or port, a non-/proc shm path are KV_EPROTO with a log line naming the field. It is pure
 * apart from that log line; thread-safe.
 */
#define KV_LOG_COMPONENT "xfer"
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "xfer/xfer_int.h"

int kv_xfer_desc_encode(const struct kv_xfer_desc *d, char **out, size_t *len)
{
    char seg[24], tcp[300];
    snprintf(seg, sizeof(seg), "%llu", (unsigned long long)d->seg_id);
    if (strchr(d->tcp_host, ':'))
        snprintf(tcp, sizeof(tcp), "[%s]:%u", d->tcp_host, d->tcp_port);
    else
        snprintf(tcp, sizeof(tcp), "%s:%u", d->tcp_host, d->tcp_port);
    json_t *o = json_pack("{s:i, s:s, s:I, s:s, s:{s:s, s:s}, s:I, s:s}", "v", 1, "name", d->name,
                          "size", (json_int_t)d->size, "seg", seg, "host", "boot_id", d->boot_id,
                          "hostname", d->hostname, "pid", (json_int_t)d->pid, "tcp", tcp);
    if (!o)
        return KV_ENOMEM;
    int rc = KV_ENOMEM;
    if (d->shm[0] && json_object_set_new(o, "shm", json_string(d->shm)) != 0)
        goto out_decref;
    if (d->has_rdma) {
        char addr[24];
        snprintf(addr, sizeof(addr), "%llu", (unsigned long long)d->rdma_addr);
        json_t *r = json_pack("{s:s}", "dev", d->rdma_dev);
        if (!r)
            goto out_decref;
        if ((d->rdma_gid[0] && json_object_set_new(r, "gid", json_string(d->rdma_gid))) ||
            (d->rdma_addr && (json_object_set_new(r, "addr", json_string(addr)) ||
                              json_object_set_new(r, "rkey", json_integer(d->rdma_rkey))))) {
            json_decref(r);
            goto out_decref;
        }
        if (json_object_set_new(o, "rdma", r) != 0) /* steals r even on failure */
            goto out_decref;
    }
    char *s = kv_json_dump(o);
    if (!s)
        goto out_decref;
    *out = s;
    *len = strlen(s);
    rc = KV_OK;
out_decref:
    json_decref(o);
    return rc;
}

/* Copies string field `field` of o into dst (dstlen bytes); non-empty unless allow_empty. */
static int get_str(json_t *o, const char *what, const char *field, char *dst, size_t dstlen,
                   bool optional)
{
    json_t *v = json_object_get(o, field);
    if (!v && optional) {
        dst[0] = '\0';
        return KV_OK;
    }
    if (!v || !json_is_string(v)) {
        KV_LOGW("bad segment descriptor: %s field \"%s\" %s", what, field,
                v ? "must be a string" : "is missing");
        return KV_EPROTO;
    }
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n == 0 || n >= dstlen || strlen(s) != n) {
        KV_LOGW("bad segment descriptor: %s field \"%s\" must be 1..%zu bytes without NUL", what,
                field, dstlen - 1);
        return KV_EPROTO;
    }
    memcpy(dst, s, n + 1);
    return KV_OK;
}

static int check_fields(json_t *o, const char *what, const char *const *allowed, size_t n)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        bool ok = false;
        for (size_t i = 0; i < n && !ok; i++)
            ok = strcmp(k, allowed[i]) == 0;
        if (!ok) {
            KV_LOGW("bad segment descriptor: unknown %s field \"%s\"", what, k);
            return KV_EPROTO;
        }
    }
    return KV_OK;
}

static int get_int(json_t *o, const char *field, int64_t min, int64_t max, int64_t *out)
{
    json_t *v = json_object_get(o, field);
    if (!v || !json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        KV_LOGW("bad segment descriptor: field \"%s\" %s", field,
                v ? "must be an integer in range" : "is missing");
        return KV_EPROTO;
    }
    *out = json_integer_value(v);
    return KV_OK;
}

int kv_xfer_desc_decode(const char *buf, size_t len, struct kv_xfer_desc *out)
{
    static const char *const top[] = {"v",   "name", "size", "seg", "host",
                                      "pid", "tcp",  "shm",  "rdma"};
    static const char *const hostf[] = {"boot_id", "hostname"};
    static const char *const rdmaf[] = {"dev", "gid", "addr", "rkey"};
    json_error_t je;
    json_t *o = buf ? json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je) : NULL;
    if (!o) {
        if (buf && json_error_code(&je) == json_error_out_of_memory)
            return KV_ENOMEM;
        KV_LOGW("bad segment descriptor: %s at line %d column %d", buf ? je.text : "empty",
                buf ? je.line : 0, buf ? je.column : 0);
        return KV_EPROTO;
    }
    struct kv_xfer_desc *d = kv_calloc(1, sizeof(*d));
    int rc = KV_ENOMEM;
    if (!d)
        goto out_decref;
    rc = KV_EPROTO;
    if (!json_is_object(o)) {
        KV_LOGW("bad segment descriptor: not a JSON object");
        goto out_free;
    }
    if (check_fields(o, "top-level", top, KV_ARRAY_SIZE(top)) < 0)
        goto out_free;
    int64_t v, size, pid;
    if (get_int(o, "v", 1, 1, &v) < 0 || get_int(o, "size", 1, INT64_MAX, &size) < 0 ||
        get_int(o, "pid", 1, INT32_MAX, &pid) < 0)
        goto out_free;
    char seg[24], tcp[300];
    if (get_str(o, "top-level", "name", d->name, sizeof(d->name), false) < 0 ||
        get_str(o, "top-level", "seg", seg, sizeof(seg), false) < 0 ||
        get_str(o, "top-level", "tcp", tcp, sizeof(tcp), false) < 0 ||
        get_str(o, "top-level", "shm", d->shm, sizeof(d->shm), true) < 0)
        goto out_free;
    if (strspn(seg, "0123456789") != strlen(seg) || kv_parse_u64(seg, &d->seg_id) < 0 ||
        d->seg_id == 0) {
        KV_LOGW("bad segment descriptor: field \"seg\" must be a non-zero decimal id");
        goto out_free;
    }
    if (kv_parse_hostport(tcp, d->tcp_host, sizeof(d->tcp_host), &d->tcp_port) < 0 ||
        d->tcp_port == 0 || !d->tcp_host[0] ||
        strspn(d->tcp_host,
               "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:%") !=
            strlen(d->tcp_host)) {
        KV_LOGW(
            "bad segment descriptor: field \"tcp\" must be HOST:PORT (a host name or IP, a non-zero port)");
        goto out_free;
    }
    if (d->shm[0] && !kv_startswith(d->shm, "/proc/")) {
        KV_LOGW("bad segment descriptor: field \"shm\" must be a /proc/<pid>/fd/<fd> path");
        goto out_free;
    }
    json_t *h = json_object_get(o, "host");
    if (!h || !json_is_object(h)) {
        KV_LOGW("bad segment descriptor: field \"host\" must be an object");
        goto out_free;
    }
    if (check_fields(h, "host", hostf, KV_ARRAY_SIZE(hostf)) < 0 ||
        get_str(h, "host", "boot_id", d->boot_id, sizeof(d->boot_id), false) < 0 ||
        get_str(h, "host", "hostname", d->hostname, sizeof(d->hostname), false) < 0)
        goto out_free;
    json_t *r = json_object_get(o, "rdma");
    if (r) {
        if (!json_is_object(r)) {
            KV_LOGW("bad segment descriptor: field \"rdma\" must be an object");
            goto out_free;
        }
        if (check_fields(r, "rdma", rdmaf, KV_ARRAY_SIZE(rdmaf)) < 0 ||
            get_str(r, "rdma", "dev", d->rdma_dev, sizeof(d->rdma_dev), false) < 0 ||
            get_str(r, "rdma", "gid", d->rdma_gid, sizeof(d->rdma_gid), true) < 0)
            goto out_free;
        char addr[24];
        bool has_addr = json_object_get(r, "addr") != NULL;
        if (has_addr != (json_object_get(r, "rkey") != NULL)) {
            KV_LOGW("bad segment descriptor: rdma fields \"addr\" and \"rkey\" go together");
            goto out_free;
        }
        if (has_addr) {
            int64_t rkey;
            if (get_str(r, "rdma", "addr", addr, sizeof(addr), false) < 0 ||
                get_int(r, "rkey", 0, UINT32_MAX, &rkey) < 0)
                goto out_free;
            if (strspn(addr, "0123456789") != strlen(addr) ||
                kv_parse_u64(addr, &d->rdma_addr) < 0 || d->rdma_addr == 0) {
                KV_LOGW("bad segment descriptor: rdma field \"addr\" must be a non-zero decimal");
                goto out_free;
            }
            d->rdma_rkey = (uint32_t)rkey;
        }
        d->has_rdma = true;
    }
    for (const char *c = d->name; *c; c++) {
        if (*c == '/' || (unsigned char)*c < 0x20 || *c == 0x7f) {
            KV_LOGW("bad segment descriptor: field \"name\" has a '/' or control character");
            goto out_free;
        }
    }
    d->size = (uint64_t)size;
    d->pid = pid;
    memcpy(out, d, sizeof(*d)); /* padding included: callers may compare with memcmp */
    rc = KV_OK;
out_free:
    kv_free(d);
out_decref:
    json_decref(o);
    return rc;
}
