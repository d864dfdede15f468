/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rpc.h - the store's control-plane RPC: protobuf-c messages (store.proto) in length-prefixed
 * TCP frames. Used client -> master, node -> master and master -> node.
 *
 * Frame: a 24-byte little-endian header, then `len` payload bytes (a packed protobuf message,
 * possibly empty):
 *
 *     off size field
 *       0    4 magic   "KVR1" (bytes 'K' 'V' 'R' '1')
 *       4    2 method  enum kv_rpc_method
 *       6    2 flags   bit0 = response; other bits must be 0
 *       8    4 len     payload length, <= KV_RPC_MAX_PAYLOAD (64 MiB)
 *      12    4 status  kv_err of the call (responses; 0 in requests)
 *      16    8 id      request id, echoed by the response
 *
 * One request at a time per connection (request, then its response). A frame whose header is
 * malformed (bad magic, reserved flags, len too large) gets a KV_EPROTO response and the
 * connection is closed (its framing can no longer be trusted); a well-framed request whose
 * payload does not decode gets a KV_EPROTO response and the connection stays usable.
 *
 * Methods and messages (request -> response; "-" = empty payload):
 *   client -> master
 *     HELLO        HelloReq     -> HelloResp
 *     PUT_START    PutStartReq  -> PutStartResp   (per-item status in PutSlot.status)
 *     PUT_END      PutEndReq    -> StatusList     (one status per item)
 *     GET          KeyList      -> GetResp        (per-item status; grants read leases)
 *     EXISTS       KeyList      -> StatusList     (1 present, 0 absent, or a negative error)
 *     REMOVE       KeyList      -> StatusList     (KV_OK or KV_ENOENT per key)
 *     LIST         ListReq      -> ListResp
 *     STAT         -            -> StatResp       (JSON of /api/v1/cluster)
 *     PUT          PutStartReq  -> StatusList     (small values inline: items carry data and
 *                                                  checksum; one status per item)
 *   node -> master
 *     MOUNT        MountReq     -> MountResp
 *     HEARTBEAT    HeartbeatReq -> MountResp      (frame status KV_ENOENT: unknown node,
 *                                                  MOUNT again)
 *   master -> node
 *     NODE_COMMIT  ObjectsReq   -> StatusList     (objects now held in DRAM; an object with
 *                                                  data gets those bytes written at its offset
 *                                                  first)
 *     NODE_FREE    ObjectsReq   -> StatusList     (forget DRAM bytes and SSD file; key only)
 *     NODE_DEMOTE  ObjectsReq   -> DemoteResp     (write DRAM bytes to SSD, forget DRAM)
 *     NODE_PROMOTE PromoteReq   -> -              (read the SSD file into DRAM at offset)
 *
 * Frame status: KV_OK means the response payload is the message above. Any other status means
 * the whole call failed; the payload is then empty, except KV_EAGAIN ("not the leader"), whose
 * payload is a NotLeader message naming the leader when known. Unknown method: KV_ENOTSUP.
 *
 * Thread-safety: a kv_rpc_client may be used by many threads at once (a pool of connections);
 * a kv_rpc_server runs its handler on one thread per connection, concurrently.
 */
#ifndef KV_STORE_RPC_H
#define KV_STORE_RPC_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "kvstash/err.h"
#include "store.pb-c.h"

#define KV_RPC_MAGIC 0x3152564bu /* "KVR1" read as a little-endian u32 */
#define KV_RPC_HDR_LEN 24
#define KV_RPC_MAX_PAYLOAD (64u << 20)
#define KV_RPC_F_RESPONSE 0x1u

enum kv_rpc_method {
    KV_RPC_HELLO = 1,
    KV_RPC_PUT_START = 2,
    KV_RPC_PUT_END = 3,
    KV_RPC_GET = 4,
    KV_RPC_EXISTS = 5,
    KV_RPC_REMOVE = 6,
    KV_RPC_LIST = 7,
    KV_RPC_STAT = 8,
    KV_RPC_PUT = 9,
    KV_RPC_MOUNT = 20,
    KV_RPC_HEARTBEAT = 21,
    KV_RPC_NODE_COMMIT = 40,
    KV_RPC_NODE_FREE = 41,
    KV_RPC_NODE_DEMOTE = 42,
    KV_RPC_NODE_PROMOTE = 43,
};

struct kv_rpc_hdr {
    uint32_t magic;
    uint16_t method;
    uint16_t flags;
    uint32_t len;
    int32_t status;
    uint64_t id;
};

/* Writes h as 24 header bytes. Pure function. */
void kv_rpc_hdr_encode(const struct kv_rpc_hdr *h, uint8_t out[KV_RPC_HDR_LEN]);

/* Decodes a header from p[0..n). KV_EPROTO for n < 24 (truncated), a bad magic, reserved flag
 * bits or len > KV_RPC_MAX_PAYLOAD; *h is untouched then. The method is not checked (an
 * unknown method is answered KV_ENOTSUP). Pure function (fuzzed). */
int kv_rpc_hdr_decode(const uint8_t *p, size_t n, struct kv_rpc_hdr *h);

/* "PUT_START", ... or "UNKNOWN". Static storage. */
const char *kv_rpc_method_name(uint16_t method);

/* protobuf-c allocator backed by kv_malloc/kv_free (so allocation-failure tests cover
 * unpacking). Pass it to *__unpack and protobuf_c_message_free_unpacked. Static storage. */
ProtobufCAllocator *kv_rpc_pb_allocator(void);

/* Packs msg (NULL = empty payload) into b (replacing its contents). KV_ENOMEM, KV_E2BIG past
 * KV_RPC_MAX_PAYLOAD. */
int kv_rpc_pb_pack(const ProtobufCMessage *msg, struct kv_buf *b);

/* Unpacks p[0..n) as a message of type desc with kv_rpc_pb_allocator(). KV_EPROTO if the bytes
 * are not such a message. Free *out with kv_rpc_pb_free(). */
int kv_rpc_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t n,
                     ProtobufCMessage **out);
/* Frees a message from kv_rpc_pb_unpack()/kv_rpc_call_pb(). NULL is a no-op. */
void kv_rpc_pb_free(ProtobufCMessage *msg);

/* ---- client ------------------------------------------------------------------------------ */

struct kv_rpc_client;

/* A client of the server at addr ("HOST:PORT"; copied). Connections are made lazily on the first
 * call and kept in a pool (up to 8 idle). connect_timeout_ms 0 = 3000. KV_EINVAL for a bad
 * address. Destroy with kv_rpc_client_destroy(). */
int kv_rpc_client_create(const char *addr, int connect_timeout_ms, struct kv_rpc_client **out);
/* Closes every pooled connection and frees c. Calls in flight must have returned. NULL no-op. */
void kv_rpc_client_destroy(struct kv_rpc_client *c);
/* The address given at creation. Borrowed, valid until destroy. */
const char *kv_rpc_client_addr(const struct kv_rpc_client *c);

/* One call: sends req[0..len) as `method` and waits for the response until timeout_ms (<= 0:
 * 10000) from now. Returns KV_OK when a response arrived: *status gets its frame status and
 * resp (reset first; may be NULL to discard) its payload. Returns a negative transport error
 * otherwise: KV_ECONNREFUSED (no server), KV_ETIMEDOUT, KV_ECONNRESET (connection lost),
 * KV_EPROTO (malformed response); the connection is dropped then, never reused. A call that
 * fails on a pooled (possibly stale) connection before anything was received is retried once on
 * a fresh connection. Thread-safe. */
int kv_rpc_call(struct kv_rpc_client *c, uint16_t method, const void *req, size_t len,
                int timeout_ms, int *status, struct kv_buf *resp);

/* Typed call: packs req (NULL = empty), calls, and when the frame status is KV_OK unpacks the
 * response as resp_desc into *resp (owned: kv_rpc_pb_free; resp_desc NULL = no payload
 * expected, resp may be NULL then). Returns KV_OK, the remote frame status (negative), or a
 * transport error as kv_rpc_call. On KV_EAGAIN, leader_hint (if non-NULL, hint_len bytes) gets
 * the leader's "HOST:PORT" from the NotLeader payload, or "" when unknown. Thread-safe. */
int kv_rpc_call_pb(struct kv_rpc_client *c, uint16_t method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                   int timeout_ms, char *leader_hint, size_t hint_len);

/* ---- server ------------------------------------------------------------------------------ */

/* Handles one request. req[0..len) is the payload (borrowed for the call). The handler appends
 * the response payload to resp (initially empty) and returns the frame status: KV_OK, or an
 * error (then resp is sent only for KV_EAGAIN, and dropped otherwise). Runs on the
 * connection's thread; must be thread-safe. Return KV_ENOTSUP for an unknown method. */
typedef int (*kv_rpc_handler_fn)(void *ud, uint16_t method, const uint8_t *req, size_t len,
                                 struct kv_buf *resp);

struct kv_rpc_server_opts {
    const char *addr; /* "HOST:PORT" to listen on; port 0 = any */
    kv_rpc_handler_fn handler;
    void *ud;
    int max_conns;     /* concurrent connections; 0 = 512 (more are closed at once) */
    int io_timeout_ms; /* to receive a whole frame once its header started; 0 = 10000 */
};

struct kv_rpc_server;

/* Listens and starts the accept thread. *out is owned (kv_rpc_server_stop). Errors: KV_EINVAL
 * (bad addr), a bind error (KV_EBUSY / kv_err_from_errno). */
int kv_rpc_server_start(const struct kv_rpc_server_opts *opts, struct kv_rpc_server **out);
/* The port actually bound. */
uint16_t kv_rpc_server_port(const struct kv_rpc_server *s);
/* Stops accepting, closes every connection, waits for running handlers to return, frees s.
 * After it returns the handler is not running and will not be called. NULL is a no-op. */
void kv_rpc_server_stop(struct kv_rpc_server *s);

#endif
