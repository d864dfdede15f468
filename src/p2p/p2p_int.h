/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p2p_int.h - private to src/p2p: the manifest and peer-record codecs (p2p_manifest.c) and the
 * chunk picker (p2p_pick.c). Both are pure functions of their inputs so unit tests and the
 * fuzzer drive them without metadata or network.
 */
#ifndef KV_P2P_INT_H
#define KV_P2P_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvstash/p2p.h"

#define KV_P2P_MANIFEST_VERSION 1
#define KV_P2P_MIN_CHUNK 4096ULL
#define KV_P2P_MAX_CHUNK (4ULL << 30)
#define KV_P2P_MAX_FILES 100000
#define KV_P2P_MAX_CHUNKS 1000000
#define KV_P2P_MAX_PATH 1024
#define KV_P2P_MAX_SIZE (1ULL << 50) /* one file */
#define KV_P2P_PEER_MAX 96           /* peer id length */

struct kv_p2p_file {
    char *path; /* relative, validated: no "..", no empty component, no leading '/' */
    uint64_t size;
    uint64_t first_chunk; /* global index of its first chunk */
    uint64_t nchunks;     /* ceil(size / chunk_size) */
};

struct kv_p2p_manifest {
    char *name;
    uint64_t chunk_size;
    uint64_t size; /* sum of file sizes */
    size_t nfiles;
    struct kv_p2p_file *files;
    uint64_t nchunks;
    uint64_t *sums; /* XXH3-64 of each chunk, nchunks entries */
};

/* Fills the derived fields (first_chunk, nchunks, size, m->nchunks) from sizes and chunk_size. */
int kv_p2p_manifest_layout(struct kv_p2p_manifest *m);
/* Encodes m as JSON (kv_free-able, NUL-terminated). */
int kv_p2p_manifest_encode(const struct kv_p2p_manifest *m, char **out, size_t *len);
/* Strict decoder: unknown or missing fields, bad paths, duplicate paths, sizes out of range,
 * a chunk count that does not match the sizes, malformed checksums -> KV_EPROTO with a message
 * in err. On success *m is filled (free with kv_p2p_manifest_fini()). */
int kv_p2p_manifest_decode(const char *data, size_t len, struct kv_p2p_manifest *m, char *err,
                           size_t errlen);
void kv_p2p_manifest_fini(struct kv_p2p_manifest *m);
/* Same set: same chunk size, files (paths and sizes) and checksums. */
bool kv_p2p_manifest_equal(const struct kv_p2p_manifest *a, const struct kv_p2p_manifest *b);
/* True for a valid relative path in a manifest. */
bool kv_p2p_path_ok(const char *path);
/* True for a valid set name. */
bool kv_p2p_name_ok(const char *name);
/* The chunk's file index and offset within the file. */
void kv_p2p_chunk_locate(const struct kv_p2p_manifest *m, uint64_t chunk, size_t *file,
                         uint64_t *offset, uint64_t *len);

/* A peer record: /kvstash/<cluster>/p2p/<NAME>/peers/<peer>. */
struct kv_p2p_peer {
    char id[KV_P2P_PEER_MAX + 1];
    bool publisher;
    size_t nsegs;
    char **segs;     /* segment name per file ("" for an empty file) */
    uint8_t *have;   /* bitmap of nchunks bits */
    uint8_t *claims; /* bitmap: chunks it is reading from a publisher right now */
    uint64_t nchunks;
};

int kv_p2p_peer_encode(const struct kv_p2p_peer *p, char **out, size_t *len);
/* Strict; nchunks and nfiles must match the manifest's. */
int kv_p2p_peer_decode(const char *data, size_t len, uint64_t nchunks, size_t nfiles,
                       struct kv_p2p_peer *p, char *err, size_t errlen);
void kv_p2p_peer_fini(struct kv_p2p_peer *p);

static inline bool kv_p2p_bit(const uint8_t *bm, uint64_t i)
{
    return (bm[i >> 3] >> (i & 7)) & 1;
}
static inline void kv_p2p_bit_set(uint8_t *bm, uint64_t i, bool v)
{
    if (v)
        bm[i >> 3] |= (uint8_t)(1u << (i & 7));
    else
        bm[i >> 3] &= (uint8_t) ~(1u << (i & 7));
}

/* ------------------------------------------------------------------ chunk picker */

/* A holder as the picker sees it. */
struct kv_p2p_holder {
    const uint8_t *have;   /* bitmap */
    const uint8_t *claims; /* bitmap or NULL */
    bool publisher;
    bool usable;  /* false while excluded (a read from it failed recently) */
    int inflight; /* our reads in flight from it */
};

enum kv_p2p_chunk_state {
    KV_P2P_MISSING = 0,
    KV_P2P_INFLIGHT = 1,
    KV_P2P_DONE = 2,
};

struct kv_p2p_pick {
    uint64_t chunk;
    size_t holder;
};

/* Chooses the next (chunk, holder) to read, or returns false when nothing should be read now.
 * Rules, in order:
 *  1. only MISSING chunks; holders that are usable and have the chunk;
 *  2. a non-publisher holder beats a publisher; among non-publishers the least loaded (fewest
 *     of our reads in flight), then the rarest chunk (fewest holders), then random;
 *  3. a publisher only when no other holder has any missing chunk we could read now, only
 *     while pub_inflight < pub_limit, and only a chunk no other peer claims (is reading from a
 *     publisher), so the publisher sends each chunk about once; ties random.
 * rnd is a caller-owned xorshift state. Pure: reads its inputs only. */
bool kv_p2p_pick_next(const uint8_t *state, uint64_t nchunks, const struct kv_p2p_holder *h,
                      size_t nh, int pub_inflight, int pub_limit, uint64_t *rnd,
                      struct kv_p2p_pick *out);

/* xorshift64*; *s must be non-zero. */
uint64_t kv_p2p_rand(uint64_t *s);

#endif
