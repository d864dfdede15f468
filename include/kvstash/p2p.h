/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p2p.h - P2P file distribution: one publisher, many fetchers that serve each other.
 *
 * A publisher maps a set of files read-only, registers each as a transfer-engine segment and
 * publishes a manifest (files, sizes, chunk size, an XXH3 checksum per chunk) in metadata under
 * /kvstash/<cluster>/p2p/<NAME>/manifest. Every participant (publisher or fetcher) keeps one
 * peer record /kvstash/<cluster>/p2p/<NAME>/peers/<peer> bound to its lease: its segment names
 * and a bitmap of the chunks it holds. A fetcher maps its destination files shared, registers
 * them as segments too, pulls missing chunks in parallel from holders (random among the least
 * loaded, the publisher last), verifies each chunk, and announces it at once, so later fetchers
 * read mostly from peers. Interrupted fetches resume: chunks already in the destination that
 * verify are kept. docs/p2p.md has the design and the key layout.
 *
 * Thread-safety: a struct kv_p2p may be used from one thread at a time, except
 * kv_p2p_cancel(), which any thread (or a signal-handling thread) may call at any time.
 */
#ifndef KVSTASH_P2P_H
#define KVSTASH_P2P_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kv_p2p;

/* Longest set name; names are [A-Za-z0-9._-], not starting with '.'. */
#define KV_P2P_NAME_MAX 128

struct kv_p2p_opts {
    const char *metadata; /* metadata URL (meta.h); NULL = "http://127.0.0.1:8080/metadata" */
    const char *cluster;  /* NULL = "default" */
    const char *protocol; /* transfer protocol: NULL = "auto" */
    const char *bind_host;
    int timeout_ms;  /* per metadata request and per chunk read; 0 = default 10000 */
    int lease_ttl_s; /* ttl of the peer record's lease; 0 = default 5 */
    int inflight;    /* chunk reads in flight per fetcher; 0 = default 4 */
};

/* Opens metadata (the transfer engine is created on the first publish or fetch). opts may be
 * NULL. On success *out is owned: close with kv_p2p_close(). KV_EMETA_URL / KV_EMETA_UNAVAIL
 * when the metadata cannot be reached. */
KV_API int kv_p2p_open(const struct kv_p2p_opts *opts, struct kv_p2p **out);

/* Withdraws every peer record and segment of p (peers stop reading from it), unmaps the files
 * and frees p. NULL is a no-op. */
KV_API void kv_p2p_close(struct kv_p2p *p);

/* Makes a running or later kv_p2p_fetch() of p return KV_ECANCELED soon. Async-safe with
 * respect to threads (an atomic store); callable from any thread. */
KV_API void kv_p2p_cancel(struct kv_p2p *p);

/* Publishes paths[0..n) (regular files or directories, walked recursively) as set name, split
 * in chunks of chunk_size bytes (0 = 64 MiB; at least 4 KiB). A file is published under its
 * base name; a directory's files under their path relative to the directory. Returns once the
 * manifest and the peer record are in metadata; p serves the files until kv_p2p_close().
 * KV_EEXIST when name is already published with other contents (kv_p2p_remove() it first);
 * republishing identical contents (a restarted publisher) is allowed. KV_EINVAL for a bad name,
 * two files with the same published path, or an unreadable path (logged with the cause). */
KV_API int kv_p2p_publish(struct kv_p2p *p, const char *name, const char *const *paths, size_t n,
                          uint64_t chunk_size);

/* Progress of a fetch: bytes verified so far of total. Called from the fetching thread. */
typedef void (*kv_p2p_progress_fn)(void *ud, uint64_t done, uint64_t total);

struct kv_p2p_fetch_result {
    uint64_t size_bytes;      /* the set's size */
    uint64_t chunks;          /* chunks in the set */
    uint64_t reused_chunks;   /* already present and valid in dest (resume) */
    uint64_t from_publisher;  /* bytes read from a publisher */
    uint64_t from_peers;      /* bytes read from other fetchers */
    uint64_t checksum_errors; /* chunks that failed verification and were fetched again */
    uint64_t peer_errors;     /* reads failed by a holder (dead peer); retried elsewhere */
    int64_t elapsed_ms;
};

/* Fetches set name into directory dest (created if missing; files created or resized, chunks
 * that already verify are kept). Blocks until every chunk is present and verified, then keeps
 * serving them (as a holder) until kv_p2p_close(). progress may be NULL; res may be NULL.
 * KV_ENOENT when no such set is published, KV_ECANCELED after kv_p2p_cancel(), KV_ETIMEDOUT
 * when no holder has a missing chunk for timeout_ms * 3, KV_EIO for a destination error
 * (logged with the path). One fetch per handle. */
KV_API int kv_p2p_fetch(struct kv_p2p *p, const char *name, const char *dest,
                        kv_p2p_progress_fn progress, void *ud, struct kv_p2p_fetch_result *res);

/* Names of the published sets, sorted. *names is owned: free with kv_p2p_names_free(). */
KV_API int kv_p2p_list(struct kv_p2p *p, char ***names, size_t *n);
KV_API void kv_p2p_names_free(char **names, size_t n);

/* Deletes the set's manifest, peer records and accounting (peers that still run keep serving
 * their segments, but no fetcher finds them any more). KV_ENOENT when not published. */
KV_API int kv_p2p_remove(struct kv_p2p *p, const char *name);

struct kv_p2p_stat {
    uint64_t size_bytes;
    uint64_t chunk_size;
    uint64_t chunks;
    uint64_t files;
    uint64_t holders;          /* live peer records (publishers included) */
    uint64_t complete_holders; /* of which hold every chunk */
    uint64_t publishers;       /* live publisher records */
    /* Bytes fetchers requested from a publisher (upper bound of what publishers served: each
     * fetcher records the length before it submits a read to a publisher; see docs/p2p.md). */
    uint64_t publisher_uploaded_bytes;
    uint64_t peer_uploaded_bytes; /* bytes fetchers reported reading from other fetchers */
};

/* Statistics of set name. KV_ENOENT when not published. */
KV_API int kv_p2p_stat(struct kv_p2p *p, const char *name, struct kv_p2p_stat *st);

#ifdef __cplusplus
}
#endif
#endif
