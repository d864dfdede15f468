/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_xfer_frame.c - fuzzes the transfer engine's frame header decoder. Properties: never
 * crashes or reads past the input; an accepted header re-encodes to the same 48 bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xfer/xfer_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kv_xfer_frame f;
    int rc = kv_xfer_frame_decode(data, size, &f);
    if (rc == KV_OK) {
        uint8_t b[KV_XFER_HDR_LEN];
        kv_xfer_frame_encode(&f, b);
        if (memcmp(b, data, sizeof(b)) != 0)
            abort();
        struct kv_xfer_frame g;
        if (kv_xfer_frame_decode(b, sizeof(b), &g) != KV_OK)
            abort();
    } else if (rc != KV_EPROTO && rc != KV_EAGAIN) {
        abort();
    }
    return 0;
}
