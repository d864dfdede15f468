/* SPDX-License-Identifier: Apache-2.0 */
/*
 * hash.h - hashing through libxxhash (XXH3): checksums of stored values and keys of cached
 * blocks. Chosen because it is Debian's well-kept implementation of the fastest
 * non-cryptographic hash with a stable, specified output (the same on every host and version).
 */
#ifndef KV_COMMON_HASH_H
#define KV_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

#include "kvstash/err.h"

/* XXH3 64-bit of data[0..len) with seed 0. */
KV_API uint64_t kv_hash64(const void *data, size_t len);
/* XXH3 64-bit with a seed (chained hashing: seed = previous hash). */
KV_API uint64_t kv_hash64_seed(const void *data, size_t len, uint64_t seed);
/* XXH3 128-bit, as hi and lo words. */
KV_API void kv_hash128(const void *data, size_t len, uint64_t *hi, uint64_t *lo);

/* Streaming XXH3 64-bit: after reset and updates over consecutive pieces, digest equals
 * kv_hash64 over their concatenation (so a producer checksums bytes as it writes them). */
struct kv_hash64_state;
KV_API struct kv_hash64_state *kv_hash64_state_new(void); /* NULL when out of memory */
KV_API void kv_hash64_state_free(struct kv_hash64_state *st);
KV_API void kv_hash64_reset(struct kv_hash64_state *st);
KV_API void kv_hash64_update(struct kv_hash64_state *st, const void *data, size_t len);
KV_API uint64_t kv_hash64_digest(const struct kv_hash64_state *st);

#endif
