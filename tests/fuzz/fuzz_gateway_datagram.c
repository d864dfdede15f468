/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_gateway_datagram.c - the gateway's datagram decoder on arbitrary bytes. Nothing may
 * crash or leak; a state accepted as valid must satisfy every documented invariant (ids and
 * ranges) and survive an encode/decode round trip unchanged.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvstash/gateway.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_gateway_datagram: invariant broken: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kv_gateway_state st, back;
    enum kv_gateway_reason r = kv_gateway_decode(data, size, 0, &st);
    check(r >= KV_GW_VALID && r < KV_GW_REASON_COUNT && r != KV_GW_REORDERED, "reason range");
    check(size != 0 || r == KV_GW_EMPTY, "empty");
    if (size > 1)
        check(kv_gateway_decode(data, size, size - 1, &back) == KV_GW_OVERSIZE, "oversize");
    if (r != KV_GW_VALID)
        return 0;
    size_t idlen = strnlen(st.engine_id, sizeof(st.engine_id));
    check(idlen >= 1 && idlen <= KV_GATEWAY_ID_MAX, "engine_id length");
    check(strnlen(st.scheduling_mode, sizeof(st.scheduling_mode)) <= KV_GATEWAY_MODE_MAX,
          "mode length");
    check(st.pending_tokens_total >= -1 && st.kv_cache_free_blocks >= -1 &&
              st.kv_cache_total_blocks >= -1,
          "counts >= -1");
    check(st.kv_cache_free_blocks < 0 || st.kv_cache_total_blocks < 0 ||
              st.kv_cache_free_blocks <= st.kv_cache_total_blocks,
          "free <= total");
    check((st.latency_pred_ms >= 0 || st.latency_pred_ms == -1) &&
              (st.engine_capacity >= 0 || st.engine_capacity == -1),
          "figures");
    check(st.seq >= -1, "seq");
    char buf[2048];
    int n = kv_gateway_state_format(&st, buf, sizeof(buf));
    check(n > 0, "a valid state formats");
    check(kv_gateway_decode(buf, (size_t)n, 0, &back) == KV_GW_VALID, "round trip decodes");
    check(strcmp(back.engine_id, st.engine_id) == 0 &&
              strcmp(back.scheduling_mode, st.scheduling_mode) == 0 &&
              back.timestamp_ms == st.timestamp_ms &&
              back.pending_tokens_total == st.pending_tokens_total &&
              back.kv_cache_free_blocks == st.kv_cache_free_blocks &&
              back.kv_cache_total_blocks == st.kv_cache_total_blocks && back.seq == st.seq,
          "round trip equal");
    return 0;
}
