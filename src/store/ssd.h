/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ssd.h - a storage node's SSD tier: one file per object in a directory, each with a
 * self-describing header, so a restarted node finds its objects again.
 *
 * File layout (little-endian), name "<xxh3-128 of key, hex>.kvo":
 *
 *     off size field
 *       0    8 magic      "KVSSD01\n"
 *       8    4 version    1
 *      12    4 key_len    1..KV_STORE_MAX_KEY
 *      16    8 size       value bytes
 *      24    8 checksum   xxh3-64 of the value
 *      32    8 expire_at  wall-clock ms, 0 = none
 *      40    8 created    wall-clock ms (identifies this version of the object)
 *      48    4 flags      bit0 = pinned
 *      52    4 hdr_check  low 32 bits of xxh3-64 of bytes [0, 52) followed by the key
 *      56    k key
 *   56+k   size value
 *
 * Writes go to ".tmp-<name>", are fsync'ed and renamed, so a file is whole or absent. At open
 * the directory is scanned: each file's header and value checksum are verified; a bad file is
 * moved to "<dir>/corrupt/" with a log line and never served; temp files are deleted.
 *
 * Thread-safety: every kv_ssd_* call may come from any thread (an internal mutex guards the
 * table; file I/O runs outside it for reads).
 */
#ifndef KV_STORE_SSD_H
#define KV_STORE_SSD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvstash/err.h"

#define KV_SSD_HDR_FIXED 56u
#define KV_SSD_VERSION 1u

struct kv_ssd_hdr {
    uint32_t key_len;
    uint64_t size;
    uint64_t checksum;
    int64_t expire_at_ms;
    int64_t created_ms;
    uint32_t flags; /* bit0 pinned */
};

/* Encodes the header for key (h->key_len bytes) into out (cap bytes). *n gets the header
 * length (56 + key_len). KV_E2BIG when cap is too small, KV_EINVAL for a bad key length. */
int kv_ssd_hdr_encode(const struct kv_ssd_hdr *h, const char *key, uint8_t *out, size_t cap,
                      size_t *n);
/* Decodes a header from p[0..n). On success *key points into p (key_len bytes, not
 * NUL-terminated) and *hdr_len is the header's length (the value starts there). KV_EPROTO for a
 * truncated or malformed header (magic, version, key length, check). Pure function (fuzzed). */
int kv_ssd_hdr_decode(const uint8_t *p, size_t n, struct kv_ssd_hdr *h, const char **key,
                      size_t *hdr_len);

struct kv_ssd;

/* One object on SSD (for kv_ssd_foreach). key is borrowed for the callback. */
struct kv_ssd_obj {
    const char *key;
    uint64_t size;
    uint64_t checksum;
    int64_t expire_at_ms;
    int64_t created_ms;
    bool pin;
};

/* Opens (creating if needed) dir with a capacity in bytes (file sizes counted) and scans it.
 * *out is owned (kv_ssd_close). KV_EIO / errno-mapped errors when dir is unusable. */
int kv_ssd_open(const char *dir, uint64_t capacity, struct kv_ssd **out);
void kv_ssd_close(struct kv_ssd *s);

/* Calls fn for every object (under the table lock: fn must not call kv_ssd_*). */
void kv_ssd_foreach(struct kv_ssd *s, void (*fn)(void *ud, const struct kv_ssd_obj *o), void *ud);

/* Writes key's value data[0..o->size) with o's metadata, replacing an older file of the key.
 * When the tier would exceed its capacity the oldest files (by created) are dropped first: fn
 * (may be NULL) is called for each dropped key, outside the lock. KV_ENOSPC if the object
 * alone exceeds the capacity; KV_EIO on write errors (no partial file stays). */
int kv_ssd_write(struct kv_ssd *s, const struct kv_ssd_obj *o, const void *data,
                 void (*dropped)(void *ud, const char *key), void *ud);

/* Reads key's value into dst (cap >= size) and verifies its checksum. created 0 = any version,
 * else it must match. *size gets the value size. KV_ENOENT, KV_E2BIG, KV_ECHECKSUM (the file is
 * moved aside), KV_EIO. */
int kv_ssd_read(struct kv_ssd *s, const char *key, int64_t created, void *dst, size_t cap,
                uint64_t *size);

/* Removes key's file (if created is 0 or matches). KV_ENOENT when absent or another version. */
int kv_ssd_remove(struct kv_ssd *s, const char *key, int64_t created);

/* Metadata of key's object into *o (o->key is set to NULL). KV_ENOENT when absent. */
int kv_ssd_stat(struct kv_ssd *s, const char *key, struct kv_ssd_obj *o);

/* Whether key is present (and its created). */
bool kv_ssd_has(struct kv_ssd *s, const char *key, int64_t *created);
uint64_t kv_ssd_used(struct kv_ssd *s);
uint64_t kv_ssd_count(struct kv_ssd *s);
uint64_t kv_ssd_capacity(const struct kv_ssd *s);

#endif
