/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xfer.h - the transfer engine: moves bytes between registered memory segments of processes.
 *
 * Model (Mooncake's segment / batch / poll): a process creates one engine, registers memory
 * regions as named segments (names are unique in the cluster; the descriptor is published in
 * metadata bound to a lease, so it disappears when the process dies), opens remote segments by
 * name, and submits batches of READ/WRITE requests. Each request completes on its own: pending,
 * done, or failed with an error code. A WRITE is done only when the bytes are in the target's
 * memory (acknowledged by the target).
 *
 * Transports: "shm" (same host: the segment's memfd is mapped, one memcpy), "tcp" (several
 * connections per peer, payload received straight into the destination), "rdma" (libibverbs,
 * when built). "auto" picks shm on the same host, else rdma when both ends have it, else tcp.
 *
 * Every remote offset/length is checked against the segment: a request outside it fails with
 * KV_EXFER_BOUNDS and touches nothing. A peer that dies fails its requests with
 * KV_EXFER_PEER within the engine's timeout.
 *
 * Ids (segments, targets, batches) are {index, generation} packed in a uint64_t: a stale id
 * returns an error, never touches freed memory. Thread-safety: every function may be called
 * from any thread; many batches may be in flight at once.
 */
#ifndef KVSTASH_XFER_H
#define KVSTASH_XFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "meta.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kv_xfer;

typedef uint64_t kv_seg_id;    /* a segment registered by this process */
typedef uint64_t kv_target_id; /* a remote (or local) segment opened by name */
typedef uint64_t kv_batch_id;

struct kv_xfer_opts {
    const char *cluster;        /* metadata namespace; NULL = "default" */
    const char *protocol;       /* "auto" (NULL), "tcp", "shm" or "rdma" */
    const char *bind_host;      /* TCP listen host; NULL = "127.0.0.1" */
    uint16_t port;              /* TCP listen port; 0 = any free port */
    const char *advertise_host; /* host published to peers; NULL = bind_host */
    int conns_per_peer;         /* TCP connections per peer; 0 = default 4 */
    int workers;                /* initiator I/O threads; 0 = default 2 */
    const char *token;          /* shared secret peers must present; NULL = none */
    int timeout_ms;             /* a request's deadline once started; 0 = default 10000 */
    int lease_ttl_s;            /* ttl of the descriptor lease; 0 = default 10 */
};

/* Creates an engine that publishes its segments in meta (borrowed: it must outlive the
 * engine). Starts the TCP listener. opts may be NULL. Destroy with kv_xfer_destroy(). */
KV_API int kv_xfer_create(struct kv_meta *meta, const struct kv_xfer_opts *opts,
                          struct kv_xfer **out);

/* Fails every pending request with KV_ESHUTDOWN, unregisters every segment, frees x.
 * NULL is a no-op. */
KV_API void kv_xfer_destroy(struct kv_xfer *x);

/* Allocates len bytes of shareable (memfd-backed, zeroed) memory, registers it as segment name
 * and publishes it. *addr is valid until kv_xfer_unregister(). KV_EEXIST if the name is taken
 * in the cluster. */
KV_API int kv_xfer_segment_alloc(struct kv_xfer *x, const char *name, size_t len, void **addr,
                                 kv_seg_id *id);

/* Page backing of kv_xfer_segment_alloc_huge() memory. */
enum kv_xfer_huge {
    KV_XFER_HUGE_OFF = 0,  /* ordinary (4 KiB) pages: kv_xfer_segment_alloc() */
    KV_XFER_HUGE_AUTO = 1, /* 2 MiB pages when enough are reserved, else ordinary pages (one
                              log line says so) */
    KV_XFER_HUGE_2M = 2,   /* 2 MiB pages, or KV_ENOMEM naming what is reserved */
    KV_XFER_HUGE_1G = 3,   /* 1 GiB pages, or KV_ENOMEM naming what is reserved */
};

/* Parses "off", "auto", "2M" or "1G" (case-insensitive; "2MiB", "1GiB" too). KV_EINVAL
 * otherwise. */
KV_API int kv_xfer_huge_parse(const char *s, enum kv_xfer_huge *out);

/* kv_xfer_segment_alloc() backed by huge pages: a memfd made with MFD_HUGETLB, so same-host
 * peers map the same huge pages. len is rounded up to the page size (the segment is that
 * long). *page_size (may be NULL) gets the page size in use (4096 after an auto fallback). */
KV_API int kv_xfer_segment_alloc_huge(struct kv_xfer *x, const char *name, size_t len,
                                      enum kv_xfer_huge huge, void **addr, kv_seg_id *id,
                                      size_t *page_size);

/* Registers caller-owned memory [addr, addr+len) as segment name (not retained beyond
 * kv_xfer_unregister(); the caller keeps it alive until then). Same-host peers reach it through
 * tcp, since it is not shareable. */
KV_API int kv_xfer_segment_register(struct kv_xfer *x, const char *name, void *addr, size_t len,
                                    kv_seg_id *id);

/* Withdraws a segment: its descriptor is deleted, new requests to it fail with
 * KV_EXFER_NOSEG; memory from kv_xfer_segment_alloc() is released. */
KV_API int kv_xfer_unregister(struct kv_xfer *x, kv_seg_id id);

/* Opens segment name (local or remote) for requests. KV_EXFER_NOSEG if no such segment is
 * published. Opening the same name twice returns the same id. */
KV_API int kv_xfer_open(struct kv_xfer *x, const char *name, kv_target_id *t);

/* Size in bytes and the transport chosen ("shm", "tcp", "rdma", static storage) of an opened
 * target. Either out-pointer may be NULL. */
KV_API int kv_xfer_target_info(struct kv_xfer *x, kv_target_id t, uint64_t *size,
                               const char **transport);

/* Forgets an opened target (its connections are closed when no request uses them). */
KV_API int kv_xfer_close(struct kv_xfer *x, kv_target_id t);

enum kv_xfer_op {
    KV_XFER_READ = 0,  /* remote -> local */
    KV_XFER_WRITE = 1, /* local -> remote */
};

struct kv_xfer_req {
    enum kv_xfer_op op;
    void *local; /* local buffer; must stay valid until the request completes */
    uint64_t len;
    kv_target_id target;
    uint64_t offset; /* within the target segment */
};

/* Request states reported by kv_xfer_batch_status(): KV_XFER_PENDING, KV_OK, or an error. */
#define KV_XFER_PENDING 1

/* A batch holds up to max_reqs requests (submitted in one or more calls). */
KV_API int kv_xfer_batch_create(struct kv_xfer *x, size_t max_reqs, kv_batch_id *b);

/* Appends n requests to batch b and starts them. KV_E2BIG past max_reqs; KV_EINVAL for a
 * malformed request (nothing of this call is submitted then). */
KV_API int kv_xfer_batch_submit(struct kv_xfer *x, kv_batch_id b, const struct kv_xfer_req *reqs,
                                size_t n);

/* State of request idx (in submission order): KV_XFER_PENDING, KV_OK or a negative error. */
KV_API int kv_xfer_batch_status(struct kv_xfer *x, kv_batch_id b, size_t idx);

/* Waits until every submitted request of b completed or timeout_ms passed (-1 = no limit).
 * Returns KV_OK when all succeeded, the first request error otherwise, KV_ETIMEDOUT when some
 * are still pending. */
KV_API int kv_xfer_batch_wait(struct kv_xfer *x, kv_batch_id b, int timeout_ms);

/* Frees b. KV_EBUSY while requests are pending (wait first). */
KV_API int kv_xfer_batch_destroy(struct kv_xfer *x, kv_batch_id b);

/* Direct access, same host only: a view of [offset, offset+len) of an opened target whose memory
 * this process can map (a same-host segment reached over shm, or a segment of this engine).
 * *addr points at those bytes, their page tables already populated; the view keeps the memory
 * mapped (even after kv_xfer_close() or the owner's exit) until kv_xfer_unmap(m). Writing
 * through it is a WRITE that completes when the caller's stores do. KV_ENOTSUP for targets
 * reached over tcp or rdma (use requests), KV_EXFER_BOUNDS past the segment, KV_EXFER_NOSEG
 * for an unknown target. Lets a producer (a gather, a decoder) write straight into the peer's
 * segment instead of into a buffer that a request then copies. */
struct kv_xfer_map;
KV_API int kv_xfer_map(struct kv_xfer *x, kv_target_id t, uint64_t offset, uint64_t len,
                       void **addr, struct kv_xfer_map **m);
/* Ends a view from kv_xfer_map(); NULL is a no-op. */
KV_API void kv_xfer_unmap(struct kv_xfer *x, struct kv_xfer_map *m);

/* One request, synchronously. */
KV_API int kv_xfer_read(struct kv_xfer *x, kv_target_id t, uint64_t offset, void *local,
                        uint64_t len);
KV_API int kv_xfer_write(struct kv_xfer *x, kv_target_id t, uint64_t offset, const void *local,
                         uint64_t len);

#ifdef __cplusplus
}
#endif
#endif
