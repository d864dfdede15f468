/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_store_rpc.c - fuzzes the store RPC frame header decoder and the protobuf unpacking of
 * every store message type. Properties: never crashes or reads past the input; an accepted
 * header re-encodes to the same 24 bytes; a message that unpacks re-packs (and the result
 * unpacks or fails cleanly).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/rpc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const descs[] = {
    &kvstash__hello_req__descriptor,     &kvstash__hello_resp__descriptor,
    &kvstash__put_start_req__descriptor, &kvstash__put_start_resp__descriptor,
    &kvstash__put_end_req__descriptor,   &kvstash__status_list__descriptor,
    &kvstash__key_list__descriptor,      &kvstash__get_resp__descriptor,
    &kvstash__list_req__descriptor,      &kvstash__list_resp__descriptor,
    &kvstash__stat_resp__descriptor,     &kvstash__mount_req__descriptor,
    &kvstash__mount_resp__descriptor,    &kvstash__heartbeat_req__descriptor,
    &kvstash__objects_req__descriptor,   &kvstash__promote_req__descriptor,
    &kvstash__not_leader__descriptor,    &kvstash__demote_resp__descriptor,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kv_rpc_hdr h;
    int rc = kv_rpc_hdr_decode(data, size, &h);
    if (rc == KV_OK) {
        uint8_t b[KV_RPC_HDR_LEN];
        kv_rpc_hdr_encode(&h, b);
        if (memcmp(b, data, sizeof(b)) != 0)
            abort();
    } else if (rc != KV_EPROTO) {
        abort();
    }
    /* The payload after the header (or the whole input when shorter) as every message type. */
    const uint8_t *p = size > KV_RPC_HDR_LEN ? data + KV_RPC_HDR_LEN : data;
    size_t n = size > KV_RPC_HDR_LEN ? size - KV_RPC_HDR_LEN : size;
    for (size_t i = 0; i < sizeof(descs) / sizeof(descs[0]); i++) {
        ProtobufCMessage *m = NULL;
        if (kv_rpc_pb_unpack(descs[i], p, n, &m) != KV_OK)
            continue;
        struct kv_buf b;
        kv_buf_init(&b);
        if (kv_rpc_pb_pack(m, &b) == KV_OK) {
            ProtobufCMessage *m2 = NULL;
            /* re-packing must not crash, and neither must unpacking the result; it need not
             * parse: protobuf-c re-emits preserved unknown fields (also of nested messages)
             * verbatim, which may not parse again - kvstash never re-sends a received message */
            kv_rpc_pb_unpack(descs[i], (const uint8_t *)b.data, b.len, &m2);
            kv_rpc_pb_free(m2);
        }
        kv_buf_fini(&b);
        kv_rpc_pb_free(m);
    }
    return 0;
}
