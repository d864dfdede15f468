/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_trace_line.c - the replay's trace-line parser (kv_trace_parse_line): arbitrary bytes
 * must either parse into a request whose fields respect the documented ranges, or fail with
 * KV_EPROTO and a message; never crash or leak.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/replay.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20)
        return 0;
    struct kv_trace_req r;
    char err[256] = "";
    int rc = kv_trace_parse_line((const char *)data, size, &r, err, sizeof(err));
    if (rc == KV_OK) {
        if (r.timestamp_ms < 0 || r.input_length < -1 || r.output_length < -1 ||
            r.n_ids > KV_TRACE_MAX_IDS || (r.n_ids && !r.hash_ids))
            abort();
        uint64_t sum = 0;
        for (size_t i = 0; i < r.n_ids; i++)
            sum += r.hash_ids[i];
        (void)sum;
        kv_trace_req_fini(&r);
    } else if (err[0] == '\0' || r.hash_ids != NULL) {
        abort();
    }
    return 0;
}
