/* SPDX-License-Identifier: Apache-2.0 */
/* hash.c - thin wrappers over libxxhash's XXH3 (see hash.h). Stateless. */
#include "common/hash.h"

#include <xxhash.h>

uint64_t kv_hash64(const void *data, size_t len)
{
    return XXH3_64bits(data, len);
}

uint64_t kv_hash64_seed(const void *data, size_t len, uint64_t seed)
{
    return XXH3_64bits_withSeed(data, len, seed);
}

void kv_hash128(const void *data, size_t len, uint64_t *hi, uint64_t *lo)
{
    XXH128_hash_t h = XXH3_128bits(data, len);
    *hi = h.high64;
    *lo = h.low64;
}
