/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rpc_local.h - in-process RPC: a server registered here is called directly by an RPC client of
 * the same process that addresses it, without a socket. `kvstash serve` runs the master and its
 * node in one process: their calls to each other (NODE_COMMIT on every put, MOUNT, HEARTBEAT,
 * NODE_FREE) then cost a function call instead of two TCP messages and two thread wake-ups.
 *
 * Only servers that opt in are registered (tests keep exercising the wire). Calls run the
 * server's handler on the caller's thread, with the same semantics as a remote call: the status
 * and the response payload as the server would have sent them.
 *
 * Thread-safety: every function may be called from any thread. kv_rpc_local_remove waits for
 * the local calls in flight on that server to return.
 */
#ifndef KV_STORE_RPC_LOCAL_H
#define KV_STORE_RPC_LOCAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/rpc.h"

struct kv_rpc_local;

/* Registers handler(ud) as the server at host:port (host as bound; "0.0.0.0" also answers
 * loopback addresses). *out is owned: kv_rpc_local_remove. KV_ENOMEM, KV_EINVAL. */
int kv_rpc_local_add(const char *host, uint16_t port, kv_rpc_handler_fn handler, void *ud,
                     struct kv_rpc_local **out);
/* A handler of unpacked requests: for a caller in the same process, the request message itself
 * (no pack, no unpack, no copy of its bytes fields). Returns the frame status with the response
 * payload in resp, as the bytes handler would, or KV_RPC_SLOW for "use the bytes handler". */
typedef int (*kv_rpc_pb_handler_fn)(void *ud, uint16_t method, const ProtobufCMessage *req,
                                    struct kv_buf *resp);
/* Gives e a message handler (before any call uses it: set it right after kv_rpc_local_add). */
void kv_rpc_local_set_pb(struct kv_rpc_local *e, kv_rpc_pb_handler_fn pb_handler);
/* Unregisters e and waits for its calls in flight. NULL is a no-op. */
void kv_rpc_local_remove(struct kv_rpc_local *e);
/* True when a server of this process answers addr now (a hint: it may go away after). */
bool kv_rpc_local_has(const char *addr);
/* Calls the in-process server at addr ("HOST:PORT") if there is one: *status gets the frame
 * status, resp (may be NULL) the payload sent with it (empty unless KV_OK or KV_EAGAIN). Returns
 * true when the call was made, false when no server of this process answers addr. */
bool kv_rpc_local_call(const char *addr, uint16_t method, const void *req, size_t len, int *status,
                       struct kv_buf *resp);
/* The same with the request message, for a server with a message handler that takes this
 * method: false when there is none (then pack and kv_rpc_local_call/the wire). */
bool kv_rpc_local_call_pb(const char *addr, uint16_t method, const ProtobufCMessage *req,
                          int *status, struct kv_buf *resp);

#endif
