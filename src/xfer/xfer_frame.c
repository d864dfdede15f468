/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xfer_frame.c - encoder and strict decoder of the transfer engine's 48-byte TCP frame header.
 *
 * Layout (little-endian, docs/design/xfer.md):
 *   0  u32 magic "KVX1"     4  u8 version (1)    5  u8 op     6  u16 flags
 *   8  i32 status          12  u32 reserved (0)
 *  16  u64 request id      24  u64 segment id   32  u64 offset   40  u64 length
 *
 * Both functions are pure (no state, no allocation, no logging) and thread-safe. The decoder
 * accepts only frames a correct peer can send; bounds against a segment are the server's job.
 */
#include <string.h>

#include "xfer/xfer_int.h"

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

void kv_xfer_frame_encode(const struct kv_xfer_frame *f, uint8_t out[KV_XFER_HDR_LEN])
{
    put32(out, KV_XFER_MAGIC);
    out[4] = KV_XFER_VERSION;
    out[5] = f->op;
    put16(out + 6, f->flags);
    put32(out + 8, (uint32_t)f->status);
    put32(out + 12, 0);
    put64(out + 16, f->req_id);
    put64(out + 24, f->seg_id);
    put64(out + 32, f->offset);
    put64(out + 40, f->length);
}

int kv_xfer_frame_decode(const uint8_t *buf, size_t len, struct kv_xfer_frame *f)
{
    if (len < KV_XFER_HDR_LEN)
        return KV_EAGAIN;
    if (get32(buf) != KV_XFER_MAGIC || buf[4] != KV_XFER_VERSION)
        return KV_EPROTO;
    struct kv_xfer_frame t;
    t.op = buf[5];
    t.flags = get16(buf + 6);
    t.status = (int32_t)get32(buf + 8);
    if (get32(buf + 12) != 0)
        return KV_EPROTO;
    t.req_id = get64(buf + 16);
    t.seg_id = get64(buf + 24);
    t.offset = get64(buf + 32);
    t.length = get64(buf + 40);
    if (t.flags & ~KV_XFER_F_RESP)
        return KV_EPROTO;
    bool resp = (t.flags & KV_XFER_F_RESP) != 0;
    if (resp ? (t.status > 0 || t.status < KV_XFER_MIN_STATUS) : t.status != 0)
        return KV_EPROTO;
    switch (t.op) {
    case KV_XFER_OP_HELLO:
        if (t.seg_id != 0 || t.offset != 0)
            return KV_EPROTO;
        if (resp ? t.length != 0 : t.length > KV_XFER_MAX_TOKEN)
            return KV_EPROTO;
        break;
    case KV_XFER_OP_RDMA_CONNECT:
        if (t.seg_id != 0 || t.offset != 0)
            return KV_EPROTO;
        if (t.length != (resp && t.status != 0 ? 0 : KV_XFER_RDMA_EP_LEN))
            return KV_EPROTO;
        break;
    case KV_XFER_OP_READ:
    case KV_XFER_OP_WRITE:
        if (t.length > KV_XFER_MAX_PAYLOAD)
            return KV_EPROTO;
        if (!resp && t.length == 0)
            return KV_EPROTO;
        /* a response carries a payload only for a successful READ */
        if (resp && (t.op == KV_XFER_OP_WRITE || t.status != 0) && t.length != 0)
            return KV_EPROTO;
        break;
    default:
        return KV_EPROTO;
    }
    *f = t;
    return KV_OK;
}
