/* SPDX-License-Identifier: Apache-2.0 */
/*
 * alloc_seg.h - the master's offset allocator for one node's DRAM segment: hands out
 * [offset, offset+len) ranges of a segment it never touches (the bytes live on the node).
 *
 * TLSF-like: sizes are rounded up to KV_SEGALLOC_GRAN (256) bytes; free blocks sit in
 * segregated lists by size class (power-of-two classes with 4 linear subdivisions) found through
 * two bitmaps in O(1); a freed block merges at once with free neighbours. An allocation fails
 * only when no free block is large enough (a good-fit search falls back to scanning the
 * request's own class), so fragmentation never makes it fail while the largest free block
 * fits. See docs/design/store.md.
 *
 * Thread-safety: none; the master guards each allocator with its lock.
 */
#ifndef KV_STORE_ALLOC_SEG_H
#define KV_STORE_ALLOC_SEG_H

#include <stdint.h>

#include "kvstash/err.h"

#define KV_SEGALLOC_GRAN 256u

struct kv_segalloc;

/* An allocated block: a handle the allocator hands out with it and takes back to free it (no
 * lookup by offset: the owner keeps the handle, 4 bytes instead of a table entry). 0 is no
 * block. Valid until the block is freed. */
typedef uint32_t kv_segblk;

/* An allocator over [0, size) (size rounded down to the granule; >= one granule). Owned:
 * destroy with kv_segalloc_destroy(). KV_EINVAL, KV_ENOMEM. */
int kv_segalloc_create(uint64_t size, struct kv_segalloc **out);
/* Frees a and its bookkeeping. NULL is a no-op. */
void kv_segalloc_destroy(struct kv_segalloc *a);

/* Allocates len (> 0) bytes (rounded up to the granule); *off gets the offset and *blk the
 * block's handle. KV_EINVAL for len 0, KV_ENOSPC when no free block is large enough, KV_ENOMEM;
 * on error nothing changed. */
int kv_segalloc_alloc(struct kv_segalloc *a, uint64_t len, uint64_t *off, kv_segblk *blk);

/* Marks exactly [off, off+len) as allocated (rebuilding state from a node's report); *blk gets
 * the block's handle. off must be granule-aligned. KV_ERANGE outside the segment, KV_EEXIST if
 * any part is already allocated, KV_EINVAL for misalignment or len 0, KV_ENOMEM. Fastest when
 * called in increasing off order. */
int kv_segalloc_reserve(struct kv_segalloc *a, uint64_t off, uint64_t len, kv_segblk *blk);

/* Frees block blk. KV_ENOENT if blk is not an allocated block (a handle of a block freed
 * already may name another block by then: the owner frees each block once). */
int kv_segalloc_free(struct kv_segalloc *a, kv_segblk blk);

/* The offset of allocated block blk; UINT64_MAX if blk is not one. O(1). */
uint64_t kv_segalloc_offset(const struct kv_segalloc *a, kv_segblk blk);

/* Statistics. used counts granule-rounded bytes. */
uint64_t kv_segalloc_capacity(const struct kv_segalloc *a);
uint64_t kv_segalloc_used(const struct kv_segalloc *a);
/* The largest free block in bytes (0 when full). O(blocks in the top class). */
uint64_t kv_segalloc_largest_free(const struct kv_segalloc *a);
/* Number of free blocks (1 for an empty allocator). */
uint64_t kv_segalloc_free_blocks(const struct kv_segalloc *a);
/* Number of allocated blocks. */
uint64_t kv_segalloc_allocated_blocks(const struct kv_segalloc *a);

#endif
