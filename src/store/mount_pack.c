/* SPDX-License-Identifier: Apache-2.0 */
/*
 * mount_pack.c - encoder and decoder of the packed MOUNT object records (layout and rules:
 * mount_pack.h).
 */
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "kvstash/err.h"
#include "kvstash/store.h"
#include "store/mount_pack.h"

static void w64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t r64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

uint8_t *kv_mount_pack(uint8_t *p, const Kvstash__NodeObject *x)
{
    size_t k = strlen(x->key);
    p[0] = (uint8_t)k;
    p[1] = (uint8_t)(k >> 8);
    p[2] = (uint8_t)x->tier;
    p[3] = x->pin ? 1 : 0;
    w64(p + 4, x->size);
    w64(p + 12, x->checksum);
    w64(p + 20, x->offset);
    w64(p + 28, (uint64_t)x->expire_at_ms);
    w64(p + 36, (uint64_t)x->created_ms);
    memcpy(p + KV_MOUNT_REC_FIXED, x->key, k);
    p[KV_MOUNT_REC_FIXED + k] = '\0';
    return p + kv_mount_rec_size(k);
}

/* Checks the record at buf[off..len); returns its size, or 0 with the problem in err. */
static size_t check_rec(const uint8_t *buf, size_t len, size_t off, size_t idx, char *err,
                        size_t errlen)
{
    const uint8_t *p = buf + off;
    size_t left = len - off;
    const char *why = NULL;
    size_t k = 0;
    if (left < KV_MOUNT_REC_FIXED) {
        why = "cut short in its fixed part";
    } else {
        k = (size_t)p[0] | (size_t)p[1] << 8;
        if (k == 0 || k > KV_STORE_MAX_KEY)
            why = "key length out of 1..4096";
        else if (left - KV_MOUNT_REC_FIXED < k + 1)
            why = "cut short in its key";
        else if (p[KV_MOUNT_REC_FIXED + k] != '\0')
            why = "key not NUL-terminated";
        else if (memchr(p + KV_MOUNT_REC_FIXED, '\0', k))
            why = "NUL inside the key";
        else if (p[2] != KVSTASH__TIER__TIER_DRAM && p[2] != KVSTASH__TIER__TIER_SSD)
            why = "unknown tier";
        else if (p[3] & ~1u)
            why = "unknown flag bits";
    }
    if (why) {
        snprintf(err, errlen, "packed object %zu (byte %zu): %s", idx, off, why);
        return 0;
    }
    return kv_mount_rec_size(k);
}

int kv_mount_check(const uint8_t *buf, size_t len, size_t *n, bool *in_order, char *err,
                   size_t errlen)
{
    size_t cnt = 0;
    bool ordered = true, prev_dram = true;
    uint64_t prev_off = 0;
    for (size_t off = 0; off < len; cnt++) {
        size_t r = check_rec(buf, len, off, cnt, err, errlen);
        if (!r) {
            *n = 0;
            return KV_EPROTO;
        }
        bool dram = buf[off + 2] == KVSTASH__TIER__TIER_DRAM;
        uint64_t o = r64(buf + off + 20);
        if (cnt && dram && (!prev_dram || o < prev_off))
            ordered = false;
        prev_dram = dram;
        prev_off = o;
        off += r;
    }
    *n = cnt;
    if (in_order)
        *in_order = ordered;
    return KV_OK;
}

size_t kv_mount_decode(const uint8_t *p, Kvstash__NodeObject *x)
{
    size_t k = (size_t)p[0] | (size_t)p[1] << 8;
    kvstash__node_object__init(x);
    x->tier = (Kvstash__Tier)p[2];
    x->pin = p[3] & 1;
    x->size = r64(p + 4);
    x->checksum = r64(p + 12);
    x->offset = r64(p + 20);
    x->expire_at_ms = (int64_t)r64(p + 28);
    x->created_ms = (int64_t)r64(p + 36);
    x->key = (char *)(uintptr_t)(p + KV_MOUNT_REC_FIXED); /* read-only: see the header */
    return kv_mount_rec_size(k);
}

int kv_mount_unpack(const uint8_t *buf, size_t len, Kvstash__NodeObject **out, size_t *n, char *err,
                    size_t errlen)
{
    *out = NULL;
    *n = 0;
    size_t cnt;
    int rc = kv_mount_check(buf, len, &cnt, NULL, err, errlen);
    if (rc < 0)
        return rc;
    Kvstash__NodeObject *v = kv_malloc((cnt ? cnt : 1) * sizeof(*v));
    if (!v)
        return KV_ENOMEM;
    const uint8_t *p = buf;
    for (size_t i = 0; i < cnt; i++)
        p += kv_mount_decode(p, &v[i]);
    *out = v;
    *n = cnt;
    return KV_OK;
}
