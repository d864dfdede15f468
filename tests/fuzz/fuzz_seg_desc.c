/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_seg_desc.c - fuzzes the segment descriptor decoder (JSON). Properties: never crashes;
 * an accepted descriptor re-encodes and decodes to the same value.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "kvstash/kvstash.h"
#include "xfer/xfer_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet) {
        kv_log_set_level(KV_LOG_ERROR);
        quiet = 1;
    }
    struct kv_xfer_desc d, e;
    memset(&d, 0, sizeof(d));
    if (kv_xfer_desc_decode((const char *)data, size, &d) != KV_OK)
        return 0;
    char *s = NULL;
    size_t n = 0;
    if (kv_xfer_desc_encode(&d, &s, &n) != KV_OK)
        return 0; /* only KV_ENOMEM */
    memset(&e, 0, sizeof(e));
    if (kv_xfer_desc_decode(s, n, &e) != KV_OK || memcmp(&d, &e, sizeof(d)) != 0)
        abort();
    kv_free(s);
    return 0;
}
