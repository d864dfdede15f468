/* SPDX-License-Identifier: Apache-2.0 */
/*
 * replay.h - replays a Mooncake-format request trace against a store (`kvstash replay`).
 *
 * Trace format (JSON Lines, one request per line; see ../shared/traces/README.md):
 *   {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2]}
 * timestamp is milliseconds from the start of the trace; hash_ids are prefix-block hashes
 * (equal ids = a reusable KV-cache prefix). Blank lines are skipped.
 *
 * Per request, in order: kv_store_batch_exists over its blocks (keys "<prefix>/<hash_id>"),
 * counted as a prefix (hits until the first miss, then all misses); then kv_store_batch_put of
 * the missing blocks (block_bytes each; content derived from the hash id). A put that finds
 * the block already there (KV_EEXIST, a block after the first miss that was present) is not an
 * error. Optionally the hit blocks are read back (get_hits), as an engine loading its prefix.
 */
#ifndef KV_STORE_REPLAY_H
#define KV_STORE_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kvstash/store.h"

/* At most this many hash ids per line (the real traces have <= 374). */
#define KV_TRACE_MAX_IDS 65536
/* Default --block-bytes: small enough that the whole conversation trace (182,790 distinct
 * blocks) fits in 714 MiB of DRAM. */
#define KV_REPLAY_DEFAULT_BLOCK 4096

struct kv_trace_req {
    int64_t timestamp_ms;
    int64_t input_length;  /* -1 when absent */
    int64_t output_length; /* -1 when absent */
    uint64_t *hash_ids;    /* owned (kv_free through kv_trace_req_fini) */
    size_t n_ids;
};

/* Parses one trace line (line[0..len), no NUL needed). On success fills *out (free with
 * kv_trace_req_fini). On error returns KV_EPROTO with a message naming the problem in err;
 * *out is left zeroed. Fields: timestamp (integer >= 0) and hash_ids (array of integers >= 0,
 * at most KV_TRACE_MAX_IDS) are required; input_length/output_length are optional integers >= 0.
 * Unknown fields are ignored. Pure function, thread-safe. */
int kv_trace_parse_line(const char *line, size_t len, struct kv_trace_req *out, char *err,
                        size_t errlen);
void kv_trace_req_fini(struct kv_trace_req *r);

struct kv_replay_stats {
    uint64_t lines;         /* lines read (incl. blank) */
    uint64_t requests;      /* requests replayed */
    uint64_t blocks;        /* blocks looked up */
    uint64_t hit_blocks;    /* prefix hits */
    uint64_t put_blocks;    /* blocks stored */
    uint64_t put_exist;     /* puts that found the block already there */
    uint64_t put_failed;    /* puts that failed (no space, ...) */
    uint64_t get_failed;    /* hit blocks that could not be read back (get_hits) */
    uint64_t bytes_written; /* value bytes put */
    uint64_t bytes_read;    /* value bytes read (get_hits) */
    uint64_t trace_ms;      /* last timestamp seen */
    double elapsed_s;       /* wall time of the replay */
};

/* Called after every request (from the replaying thread). pos/total are byte positions in the
 * trace file (total 0 when unknown). */
typedef void (*kv_replay_progress_fn)(void *ud, const struct kv_replay_stats *st, uint64_t pos,
                                      uint64_t total);

struct kv_replay_opts {
    uint64_t block_bytes; /* 0 = KV_REPLAY_DEFAULT_BLOCK */
    double speed;         /* 0 = as fast as possible; X = follow timestamps at X times real time */
    const char *key_prefix;         /* keys are "<key_prefix>/<hash_id>"; required */
    bool get_hits;                  /* also read the hit blocks back */
    struct kv_put_opts put;         /* replicas, ttl, pin for the puts */
    uint64_t max_requests;          /* 0 = the whole trace */
    kv_replay_progress_fn progress; /* may be NULL */
    void *ud;
};

/* Replays the trace read from f (total = its size in bytes, 0 if unknown) against s.
 * Returns KV_OK, KV_EPROTO for a bad line (err names the line number and the problem), or the
 * error of a store call that failed as a whole (the master unreachable, ...). *st is filled
 * in every case with what was done. */
int kv_replay_run(struct kv_store *s, FILE *f, uint64_t total, const struct kv_replay_opts *o,
                  struct kv_replay_stats *st, char *err, size_t errlen);

#endif
