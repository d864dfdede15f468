/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xfer_int.h - private to the xfer module: the engine layout, the wire frame codec, the segment
 * descriptor codec and the transports' entry points.
 *
 * Lock order (outermost first; a thread may only take a lock listed after every lock it holds):
 *   g_reg_lock (xfer.c, lease-lost registry)
 *   x->meta_lock (publication: lease and descriptor keys; held across metadata calls)
 *   x->lock (segment/target/batch tables)
 *   c->peers_lock (TCP client: peer list and peer users)
 *   conn->send_lock (the writing side of one initiator connection, reconnects)
 *   conn->lock (a connection's in-flight FIFO and state)
 *   b->lock (a batch's pending count; leaf)
 *   c->q_lock (the TCP client work queue; leaf), io->inbox_lock (a TCP server I/O thread's
 *   queue of accepted connections; leaf)
 * No lock is held while a request completes into its batch except b->lock itself, and no
 * lock is held while blocking on a socket except conn->send_lock (writers of that connection).
 * The TCP server's I/O threads hold no lock while they serve a connection; they take x->lock
 * briefly (kv_xfer_seg_get/put) and io->inbox_lock, never both.
 */
#ifndef KV_XFER_INT_H
#define KV_XFER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/idtab.h"
#include "kvstash/xfer.h"

/* ---- wire frame (docs/design/xfer.md) ---- */

#define KV_XFER_MAGIC 0x3158564bu /* "KVX1" little-endian */
#define KV_XFER_VERSION 1
#define KV_XFER_HDR_LEN 48
#define KV_XFER_MAX_TOKEN 256             /* HELLO payload limit */
#define KV_XFER_MAX_PAYLOAD (64ull << 20) /* one READ/WRITE frame's payload limit */
#define KV_XFER_PIECE (1ull << 20)        /* initiator splits requests into pieces this big */
#define KV_XFER_MIN_STATUS (-999)         /* statuses on the wire are 0 or in [-999, -1] */

enum kv_xfer_wire_op {
    KV_XFER_OP_HELLO = 1,
    KV_XFER_OP_READ = 2,
    KV_XFER_OP_WRITE = 3,
    KV_XFER_OP_RDMA_CONNECT = 4, /* payload: struct kv_xfer_rdma_ep (32 bytes) both ways */
};

#define KV_XFER_RDMA_EP_LEN 32

#define KV_XFER_F_RESP 0x1u /* the frame answers a request */

struct kv_xfer_frame {
    uint8_t op;      /* enum kv_xfer_wire_op */
    uint16_t flags;  /* KV_XFER_F_* */
    int32_t status;  /* 0 in requests; KV_OK or a negative kv_err in responses */
    uint64_t req_id; /* chosen by the initiator, echoed in the response */
    uint64_t seg_id; /* the segment's id in its owner (from the descriptor) */
    uint64_t offset;
    uint64_t length; /* payload bytes following this header */
};

/* Writes f as a 48-byte header into out. Pure; never fails. */
void kv_xfer_frame_encode(const struct kv_xfer_frame *f, uint8_t out[KV_XFER_HDR_LEN]);

/* Decodes the header at buf[0..len). Pure and strict: KV_EAGAIN when len < 48, KV_EPROTO for
 * a malformed header (bad magic/version/op/flags/reserved bits, a status outside its range,
 * a length over the limit of its op). Does not check bounds against any segment. */
int kv_xfer_frame_decode(const uint8_t *buf, size_t len, struct kv_xfer_frame *f);

/* True when [offset, offset+len) lies within a segment of size bytes (overflow-safe). */
static inline bool kv_xfer_in_bounds(uint64_t offset, uint64_t len, uint64_t size)
{
    return len <= size && offset <= size - len;
}

/* ---- segment descriptor (JSON published at /kvstash/<cluster>/segments/<name>) ---- */

#define KV_XFER_NAME_MAX 200

struct kv_xfer_desc {
    char name[KV_XFER_NAME_MAX + 1];
    uint64_t size;
    uint64_t seg_id;
    char boot_id[64];
    char hostname[256];
    int64_t pid;
    char tcp_host[256];
    uint16_t tcp_port;
    char shm[128]; /* "" when the segment is not shareable */
    bool has_rdma;
    char rdma_dev[64];
    char rdma_gid[64];  /* "" when unknown */
    uint64_t rdma_addr; /* segment base in the owner (0 = not registered with the HCA) */
    uint32_t rdma_rkey;
};

/* Encodes d as compact JSON; *out is owned (free with kv_free). KV_ENOMEM. */
int kv_xfer_desc_encode(const struct kv_xfer_desc *d, char **out, size_t *len);
/* Strict decoder: KV_EPROTO with a log line naming the field on any problem; KV_ENOMEM. */
int kv_xfer_desc_decode(const char *buf, size_t len, struct kv_xfer_desc *d);

/* ---- engine ---- */

struct kv_xfer;
struct xfer_batch;

/* One request of a batch. status: KV_XFER_PENDING until complete. */
struct xfer_ireq {
    struct xfer_batch *b;
    _Atomic int status;
    _Atomic int err;            /* first error of its pieces */
    _Atomic uint64_t remaining; /* pieces not yet complete */
};

struct xfer_batch {
    pthread_mutex_t lock; /* guards n, pending; cond signalled when pending drops to 0 */
    pthread_cond_t cond;
    size_t max;
    size_t n;       /* requests submitted (slots reserved) */
    size_t pending; /* reserved but not complete */
    int waiters;    /* threads in kv_xfer_batch_wait */
    struct xfer_ireq *reqs;
};

enum xfer_kind {
    XFER_T_TCP = 1,
    XFER_T_SHM = 2,   /* memfd of a same-host segment, mapped here */
    XFER_T_LOCAL = 3, /* a segment of this engine: direct memcpy */
    XFER_T_RDMA = 4,
};

struct xfer_peer;

/* An opened segment. Refcounted: the table holds one ref, each in-flight piece one. */
struct xfer_target {
    _Atomic int refs;
    struct kv_xfer *x;
    uint64_t id;
    struct kv_xfer_desc desc;
    enum xfer_kind kind;
    void *map; /* XFER_T_SHM */
    size_t map_len;
    _Atomic uint64_t *populated; /* XFER_T_SHM: bit per KV_XFER_SHM_CHUNK of map populated */
    struct xfer_peer *peer;      /* XFER_T_TCP (owned by x->peers) */
    struct xfer_rdma_chan *rdma; /* XFER_T_RDMA */
};

/* A slice (<= KV_XFER_PIECE) of one request travelling over TCP. */
struct xfer_piece {
    struct xfer_piece *next;
    struct xfer_ireq *req;
    struct xfer_target *t; /* holds a ref */
    int op;                /* enum kv_xfer_op */
    uint8_t *local;
    uint64_t offset;
    uint64_t len;
    uint64_t req_id;
    int64_t deadline_ms;
    /* TCP: the sender and the receiver each hold one ref from the moment the piece enters a
     * connection's FIFO; the last to let go completes it with rc. So a piece never completes
     * while a send() may still read its buffer. */
    _Atomic int refs;
    int rc; /* set by the receiver before it lets go */
};

/* Completes one piece (or a whole request when it was not split): rc KV_OK or error. Drops
 * the piece's target ref and frees it. Called with no lock held. */
void kv_xfer_piece_done(struct xfer_piece *p, int rc);

struct xfer_seg;

/* Looks a local segment up by wire id and takes a use ref (NULL when unknown). */
struct xfer_seg *kv_xfer_seg_get(struct kv_xfer *x, uint64_t seg_id, void **addr, size_t *len);
void kv_xfer_seg_put(struct kv_xfer *x, struct xfer_seg *s);

/* Engine fields the transports read. */
const char *kv_xfer_token(const struct kv_xfer *x);
int kv_xfer_timeout_ms(const struct kv_xfer *x);
bool kv_xfer_stopping(const struct kv_xfer *x);
/* The engine's RDMA context, or NULL without a device. */
struct xfer_rdma *kv_xfer_rdma_ctx(const struct kv_xfer *x);
/* The engine's current descriptor lease (0 = none yet); for tests. */
int64_t kv_xfer_lease_id(struct kv_xfer *x);

/* ---- TCP transport (xfer_tcp.c) ---- */

/* The server that exposes this engine's segments: listens on host:port (0 = any; the port
 * bound in *bound_port) and serves every connection from a fixed set of I/O threads (event
 * loops; see xfer_tcp.c). Stop closes every connection, joins the threads and frees s;
 * stop(NULL) is a no-op. */
struct xfer_tcp_server;
int kv_xfer_tcp_server_start(struct kv_xfer *x, const char *host, uint16_t port,
                             struct xfer_tcp_server **out, uint16_t *bound_port);
void kv_xfer_tcp_server_stop(struct xfer_tcp_server *s);

struct xfer_tcp_client;
int kv_xfer_tcp_client_create(struct kv_xfer *x, int workers, int conns_per_peer,
                              struct xfer_tcp_client **out);
/* Fails queued and in-flight pieces with KV_ESHUTDOWN, joins every thread, frees c. */
void kv_xfer_tcp_client_destroy(struct xfer_tcp_client *c);
/* Finds or connects the peer at host:port (KV_EPERM: token refused; KV_EXFER_PEER:
 * unreachable). The peer lives until the client is destroyed or released unused. */
int kv_xfer_tcp_peer_get(struct xfer_tcp_client *c, const char *host, uint16_t port,
                         struct xfer_peer **out);
void kv_xfer_tcp_peer_release(struct xfer_tcp_client *c, struct xfer_peer *p);
/* Tears down peers no target uses any more (joins their receivers: API threads only). */
void kv_xfer_tcp_gc(struct xfer_tcp_client *c);
/* Queues a piece for the workers; ownership passes to the transport. */
void kv_xfer_tcp_submit(struct xfer_tcp_client *c, struct xfer_piece *p);

/* ---- shm (xfer_shm.c) ---- */

/* Creates a zeroed memfd of len bytes mapped shared; *fd and *addr owned by the caller. */
int kv_xfer_shm_create(const char *name, size_t len, int *fd, void **addr);
/* Same, on huge pages of page_size bytes (2 MiB or 1 GiB; len a multiple of it). KV_ENOMEM
 * (with a log line naming the free and reserved pages) when too few are reserved; KV_ENOTSUP
 * when the kernel has no pool of that size. */
int kv_xfer_shm_create_huge(const char *name, size_t len, size_t page_size, int *fd, void **addr);
/* Free (not reserved by a mapping) and total huge pages of page_size in the kernel's pool;
 * false if there is no pool of that size. */
bool kv_xfer_huge_pool(size_t page_size, uint64_t *free_pages, uint64_t *total_pages);
/* Maps the segment of d through its shm path (bounds and identity checked). */
int kv_xfer_shm_map(const struct kv_xfer_desc *d, void **addr, size_t *len);
/* Page-table population in bulk for a shm target (see xfer_shm.c): the KV_XFER_SHM_CHUNK
 * chunks of [off, off+len) not populated yet. */
#define KV_XFER_SHM_CHUNK (2u << 20)
void kv_xfer_shm_chunks_init(struct xfer_target *t); /* best effort */
void kv_xfer_shm_prepare(struct xfer_target *t, uint64_t off, uint64_t len);
/* This host's identity (boot id, hostname); cached, thread-safe. */
void kv_xfer_host_identity(const char **boot_id, const char **hostname);

/* One connection made and authenticated (HELLO) to host:port; *fd owned by the caller. */
int kv_xfer_tcp_dial(struct kv_xfer *x, const char *host, uint16_t port, int *fd);
/* Sends a request frame with payload and reads its response header and payload (at most
 * cap bytes). KV_EPROTO for a malformed or mismatched response. */
int kv_xfer_tcp_call(struct kv_xfer *x, int fd, const struct kv_xfer_frame *req,
                     const void *payload, struct kv_xfer_frame *resp, void *rbuf, size_t cap);

/* ---- RDMA (xfer_rdma.c; stubs returning KV_ENOTBUILT without libibverbs) ---- */

/* Finds an RDMA device: KV_OK with its name, KV_EXFER_NOTRANSPORT when none is present,
 * KV_ENOTBUILT when built without libibverbs. */
int kv_xfer_rdma_probe(char *dev, size_t devlen);

struct xfer_rdma;      /* per engine: device, protection domain */
struct xfer_rdma_chan; /* per initiator target: an RC queue pair and its completion thread */

/* Opens the first device with an active port. dev/gid receive its name and GID (text). */
int kv_xfer_rdma_open(struct kv_xfer *x, struct xfer_rdma **out, char *dev, size_t devlen,
                      char *gid, size_t gidlen);
void kv_xfer_rdma_close(struct xfer_rdma *r);
/* Registers a segment for remote READ/WRITE; *mr is released with kv_xfer_rdma_dereg. */
int kv_xfer_rdma_reg(struct xfer_rdma *r, void *addr, size_t len, void **mr, uint32_t *rkey);
void kv_xfer_rdma_dereg(void *mr);
/* Server side of RDMA_CONNECT: creates a QP connected to the initiator's endpoint `in` and
 * writes ours into `out`. The QP lives until kv_xfer_rdma_drop (when the TCP connection that
 * carried the handshake closes). */
int kv_xfer_rdma_accept(struct xfer_rdma *r, const uint8_t in[KV_XFER_RDMA_EP_LEN],
                        uint8_t out[KV_XFER_RDMA_EP_LEN], void **qp);
void kv_xfer_rdma_drop(void *qp);
/* Initiator side: dials host:port over TCP, exchanges endpoints, connects a QP. */
int kv_xfer_rdma_connect(struct xfer_rdma *r, const char *host, uint16_t port,
                         struct xfer_rdma_chan **out);
void kv_xfer_rdma_chan_close(struct xfer_rdma_chan *c);
/* Posts a piece as one RDMA READ/WRITE at raddr/rkey; completes it (kv_xfer_piece_done) from
 * the channel's completion thread. */
void kv_xfer_rdma_post(struct xfer_rdma_chan *c, struct xfer_piece *p, uint64_t raddr,
                       uint32_t rkey);

#endif
