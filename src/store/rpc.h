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
 * Authentication: a server with a token (KVSTASH_TOKEN; kv_rpc_server_opts.token) answers
 * nothing on a connection before it presented that token: the first frame must be
 *     AUTH         token bytes  -> -              (KV_EPERM + reason text: "bad token")
 * and any other first frame gets KV_EPERM with the payload "authentication required"; a
 * refused connection is closed after the answer, and the refusal is logged (rate-limited)
 * with the peer's address. A client with a token (kv_rpc_client_create: KVSTASH_TOKEN) sends
 * AUTH first on every new connection. A server without a token answers AUTH with KV_OK.
 * Tokens are compared in constant time (common/auth.h).
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
 * payload is a NotLeader message naming the leader when known, and KV_EPERM, whose payload is
 * the refusal's reason (text). Unknown method: KV_ENOTSUP.
 *
 * Thread-safety: a kv_rpc_client may be used by many threads at once (a pool of connections).
 * A kv_rpc_server runs a fixed set of threads whatever its number of connections: io_threads
 * event loops that read requests and write responses, and a pool of workers that run the
 * handler (an optional fast_handler answers cheap requests on the I/O thread itself).
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
    KV_RPC_AUTH = 10,
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

/* Packs msg (NULL = empty payload) into b (replacing its contents). KV_ENOMEM, KV_E2BIG past
 * KV_RPC_MAX_PAYLOAD. */
int kv_rpc_pb_pack(const ProtobufCMessage *msg, struct kv_buf *b);

/* Unpacks p[0..n) as a message of type desc, in an arena of its own (rpc.c: a few kv_malloc
 * chunks, not one allocation per field). KV_EPROTO if the bytes are not such a message, KV_ENOMEM.
 * Free *out with kv_rpc_pb_free() (never protobuf_c_message_free_unpacked); nothing in it may be
 * kept or freed on its own. */
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
/* Replaces the token c presents on its new connections (copied; NULL or "" = none). By default
 * a client presents kv_auth_token() (KVSTASH_TOKEN). Call before the first call (tests, tools).
 * KV_ENOMEM. */
int kv_rpc_client_set_token(struct kv_rpc_client *c, const char *token);
/* Microseconds a call polls at most for its answer before it blocks (0 = never, the default;
 * at most KV_RPC_MAX_POLL_SPIN_US); the window within that adapts to how soon answers come
 * (kv_spin, net.h). An answer due within it is read without the thread's sleep and wake-up.
 * Set before the client is shared. */
void kv_rpc_client_set_poll_spin(struct kv_rpc_client *c, int us);
int kv_rpc_client_poll_spin(const struct kv_rpc_client *c);
/* Closes every pooled connection and frees c. Calls in flight must have returned. NULL no-op. */
void kv_rpc_client_destroy(struct kv_rpc_client *c);
/* The address given at creation. Borrowed, valid until destroy. */
const char *kv_rpc_client_addr(const struct kv_rpc_client *c);

/* One call: sends req[0..len) as `method` and waits for the response until timeout_ms (<= 0:
 * 10000) from now. Returns KV_OK when a response arrived: *status gets its frame status and
 * resp (reset first; may be NULL to discard) its payload. Returns a negative transport error
 * otherwise: KV_ECONNREFUSED (no server), KV_ETIMEDOUT, KV_ECONNRESET (connection lost),
 * KV_EPROTO (malformed response); the connection is dropped then, never reused. KV_EPERM when
 * the server refused this client's token (the reason is logged, rate-limited); a server that
 * requires a token this client lacks answers the call with status KV_EPERM. A call that
 * fails on a pooled (possibly stale) connection before anything was received is retried once on
 * a fresh connection. Thread-safe. */
int kv_rpc_call(struct kv_rpc_client *c, uint16_t method, const void *req, size_t len,
                int timeout_ms, int *status, struct kv_buf *resp);

/* A connection of its own to c's server (connected, its token presented, blocking), for a
 * caller that runs its own framing on it (client_aio.c): requests as kv_rpc_hdr_encode frames
 * with non-zero ids, answered in order. The caller closes *fd. KV_ECONNREFUSED, KV_ETIMEDOUT
 * (timeout_ms <= 0: 10000), KV_EPERM (token refused). Thread-safe. */
int kv_rpc_client_connect(struct kv_rpc_client *c, int timeout_ms, int *fd);

/* The leader's "HOST:PORT" named by a KV_EAGAIN answer's NotLeader payload p[0..n) into hint
 * (hint_len > 0 bytes), or "" when it names none or does not fit. */
void kv_rpc_leader_hint(const uint8_t *p, size_t n, char *hint, size_t hint_len);

/* Typed call: packs req (NULL = empty), calls, and when the frame status is KV_OK unpacks the
 * response as resp_desc into *resp (owned: kv_rpc_pb_free; resp_desc NULL = no payload
 * expected, resp may be NULL then). Returns KV_OK, the remote frame status (negative), or a
 * transport error as kv_rpc_call. On KV_EAGAIN, leader_hint (if non-NULL, hint_len bytes) gets
 * the leader's "HOST:PORT" from the NotLeader payload, or "" when unknown. Thread-safe. */
int kv_rpc_call_pb(struct kv_rpc_client *c, uint16_t method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                   int timeout_ms, char *leader_hint, size_t hint_len);

/* ---- server ------------------------------------------------------------------------------ */

/* Handles one request. req[0..len) is the payload (borrowed for the call; req[len] is 0). The
 * handler appends the response payload to resp (initially empty) and returns the frame status:
 * KV_OK (a positive value counts as KV_OK), or an error (then resp is sent only for KV_EAGAIN,
 * and dropped otherwise). Return KV_ENOTSUP for an unknown method. As a `handler` it runs on one
 * of the server's worker threads and may block (at most `workers` run at once); as a
 * `fast_handler` it runs on an I/O thread and must not block (see KV_RPC_SLOW). Must be
 * thread-safe: calls for different connections run concurrently. */
typedef int (*kv_rpc_handler_fn)(void *ud, uint16_t method, const uint8_t *req, size_t len,
                                 struct kv_buf *resp);

/* Returned by a fast_handler for a request it will not answer on the I/O thread (it may block,
 * or is simply not a fast one): the request goes to the worker pool, where `handler` runs it.
 * Anything the fast_handler appended to resp is discarded. Positive, so never a kv_err. */
#define KV_RPC_SLOW 1

#define KV_RPC_DEF_MAX_CONNS 4096
#define KV_RPC_DEF_IO_THREADS 2
#define KV_RPC_DEF_WORKERS 16

struct kv_rpc_server_opts {
    const char *addr; /* "HOST:PORT" to listen on; port 0 = any */
    /* Runs every request the fast_handler did not answer (all of them when it is NULL), on a
     * worker thread. Required. */
    kv_rpc_handler_fn handler;
    void *ud; /* passed to both handlers */
    /* Concurrent connections; 0 = KV_RPC_DEF_MAX_CONNS (4096). More are closed at once (with a
     * rate-limited warning). A connection costs a small buffer (4 KiB while idle), no thread. */
    int max_conns;
    /* To receive a whole request frame once its first byte arrived, and to send a whole
     * response; a connection that misses it is closed. 0 = 10000. Idle connections (between
     * frames) are kept forever. */
    int io_timeout_ms;
    /* Optional. Called first, on the I/O thread that read the request, for every request: it
     * answers (status and resp as a handler) or returns KV_RPC_SLOW to hand the request to
     * `handler` on a worker. Must not block: it holds up every connection of its I/O thread.
     * NULL = every request goes to the workers. */
    kv_rpc_handler_fn fast_handler;
    /* Event loops (epoll sets), each owning its share of the connections (1..64); 0 =
     * KV_RPC_DEF_IO_THREADS (2). Each loop is run by one thread of the pool at a time. */
    int io_threads;
    /* Threads for `handler` calls (1..1024); 0 = KV_RPC_DEF_WORKERS (16). The server runs
     * io_threads + workers threads in one pool: a thread that reads a slow request may run it
     * itself and pass its loop to an idle thread, so at most `workers` handlers run at once.
     * A request waits in a queue while all of them are busy. */
    int workers;
    /* The token every connection must present first (AUTH frame, above); copied. NULL =
     * kv_auth_token() (KVSTASH_TOKEN, or none), "" = none. */
    const char *token;
    /* Microseconds a loop keeps asking epoll without blocking, at most, before it sleeps (0 =
     * never, at most KV_RPC_MAX_POLL_SPIN_US; each loop's window within that adapts to how soon
     * requests come, kv_spin in net.h): a request arriving meanwhile skips the thread's sleep
     * and wake-up, at the price of up to this much CPU each time the loop falls idle. */
    int poll_spin_us;
};

#define KV_RPC_MAX_POLL_SPIN_US 10000

struct kv_rpc_server;

/* Listens and starts io_threads + workers threads (their number never depends on the number of
 * connections). *out is owned (kv_rpc_server_stop). Errors: KV_EINVAL (bad addr, io_threads or
 * workers out of range, no handler), KV_ENOMEM, a bind error (KV_EBUSY / kv_err_from_errno). */
int kv_rpc_server_start(const struct kv_rpc_server_opts *opts, struct kv_rpc_server **out);
/* The port actually bound. */
uint16_t kv_rpc_server_port(const struct kv_rpc_server *s);
/* Since start: how often a loop polled before it slept (poll_spin_us), and how often that found
 * an event (the sleeps saved). */
void kv_rpc_server_poll_stats(struct kv_rpc_server *s, uint64_t *spins, uint64_t *hits);
/* Stops accepting, waits for running handlers to return (requests still queued for a worker are
 * dropped unanswered), stops the I/O threads, closes every connection, frees s. After it returns
 * neither handler is running nor will be called. Not to be called from a handler. NULL is a
 * no-op. */
void kv_rpc_server_stop(struct kv_rpc_server *s);

#endif
