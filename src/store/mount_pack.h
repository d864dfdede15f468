/* SPDX-License-Identifier: Apache-2.0 */
/*
 * mount_pack.h - the packed form of the objects a node reports in MOUNT (MountReq.packed).
 *
 * A node holding millions of objects reports them in parts; as repeated NodeObject messages
 * protobuf-c spends about a microsecond per object packing (node) and two allocations per object
 * unpacking (master), which made rebuilding a 10M-object index take minutes. The packed form is
 * a run of fixed-layout records, little-endian:
 *
 *   offset size field
 *        0    2 key length k (1..KV_STORE_MAX_KEY)
 *        2    1 tier (KVSTASH__TIER__TIER_DRAM or _SSD)
 *        3    1 flags: bit 0 pin; other bits 0
 *        4    8 size
 *       12    8 checksum
 *       20    8 offset (DRAM: the object's offset in the segment; SSD: 0)
 *       28    8 expire_at_ms (wall clock, 0 = none)
 *       36    8 created_ms
 *       44    k key bytes (no NUL among them)
 *     44+k    1 NUL: the decoder hands out keys that point into the buffer
 *
 * The decoder trusts nothing: a record that is cut short, a key length of 0 or over the
 * limit, a NUL inside a key, a missing terminator, an unknown tier or flag bit rejects the whole
 * buffer with a message naming the record and the problem.
 */
#ifndef KVSTASH_STORE_MOUNT_PACK_H
#define KVSTASH_STORE_MOUNT_PACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.pb-c.h"

#define KV_MOUNT_REC_FIXED 44

/* Bytes the record of a key of klen bytes takes. */
static inline size_t kv_mount_rec_size(size_t klen)
{
    return KV_MOUNT_REC_FIXED + klen + 1;
}

/* The size of the (well-formed) record at r, from its key length. */
static inline size_t kv_mount_rec_len(const uint8_t *r)
{
    return kv_mount_rec_size((size_t)r[0] | (size_t)r[1] << 8);
}

/* Writes x's record at p (kv_mount_rec_size(strlen(x->key)) bytes); returns the end. x->data is
 * not part of the record. */
uint8_t *kv_mount_pack(uint8_t *p, const Kvstash__NodeObject *x);

/* Checks every record of buf[0..len) without decoding: KV_OK with their number in *n and
 * whether they are in mount order (DRAM by offset, then SSD) in *in_order, or KV_EPROTO with a
 * message in err. */
int kv_mount_check(const uint8_t *buf, size_t len, size_t *n, bool *in_order, char *err,
                   size_t errlen);

/* Decodes the checked record at r into *x (key pointing into r); returns the record's size. */
size_t kv_mount_decode(const uint8_t *r, Kvstash__NodeObject *x);

/* Decodes the records of buf[0..len) into *out (kv_malloc'd array of *n objects, free with
 * kv_free; keys point into buf, which must outlive them). KV_OK, or KV_EPROTO with a message in
 * err, or KV_ENOMEM. An empty buffer gives 0 objects. */
int kv_mount_unpack(const uint8_t *buf, size_t len, Kvstash__NodeObject **out, size_t *n, char *err,
                    size_t errlen);

#endif
