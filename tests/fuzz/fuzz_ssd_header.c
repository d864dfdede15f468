/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_ssd_header.c - fuzzes the SSD file header decoder (the node trusts nothing it reads back
 * from disk). Properties: never crashes or reads past the input; an accepted header re-encodes
 * to the same bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/ssd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kv_ssd_hdr h;
    const char *key;
    size_t hl;
    int rc = kv_ssd_hdr_decode(data, size, &h, &key, &hl);
    if (rc == KV_OK) {
        if (hl > size || hl != KV_SSD_HDR_FIXED + h.key_len)
            abort();
        static uint8_t b[KV_SSD_HDR_FIXED + 4096];
        size_t n;
        char k[4097];
        memcpy(k, key, h.key_len);
        k[h.key_len] = '\0';
        if (kv_ssd_hdr_encode(&h, k, b, sizeof(b), &n) != KV_OK || n != hl ||
            memcmp(b, data, n) != 0)
            abort();
    } else if (rc != KV_EPROTO) {
        abort();
    }
    return 0;
}
