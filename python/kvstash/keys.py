# SPDX-License-Identifier: Apache-2.0
"""Deterministic cache keys for chunks of token ids.

A chunk is `chunk_tokens` consecutive prompt tokens (a multiple of the engine's block size).
Chunk i's hash is SHA-256 over (hash of chunk i-1, the chunk's token ids as little-endian
uint32); chunk 0 chains from a seed that is itself SHA-256 of the namespace: model, KV dtype,
KV layout, TP size, chunk size and a format version. So a key names the whole prefix up to the
end of its chunk, and the same prompt gives the same keys in every process and on every host
(Python's hash() is seeded per process and is never used). The TP rank and the layer are
appended by the worker that owns that slice: "<prefix>/<hash>/tp<rank>/L<layer>".
"""
import hashlib
import json
import struct

FORMAT = "kvstash-kv-1"


def _slug(s):
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(s))
    return out.strip("-")[:64] or "model"


class ChunkHasher:
    """Chained chunk hashes for one namespace (model, dtype, layout, tp_size, chunk size)."""

    def __init__(self, model, dtype, layout, tp_size, chunk_tokens, extra=None):
        if int(chunk_tokens) <= 0:
            raise ValueError("kvstash: chunk_tokens must be positive")
        self.chunk_tokens = int(chunk_tokens)
        ns = {"format": FORMAT, "model": str(model), "dtype": str(dtype), "layout": str(layout),
              "tp_size": int(tp_size), "chunk_tokens": self.chunk_tokens}
        if extra:
            ns["extra"] = extra
        self.namespace = ns
        self.seed = hashlib.sha256(json.dumps(ns, sort_keys=True).encode()).digest()
        self.prefix = "kvstash/%s" % _slug(model)

    def hashes(self, token_ids, max_chunks=None):
        """Hex digests of the full chunks of token_ids (a trailing partial chunk has none)."""
        toks = list(token_ids)
        n = len(toks) // self.chunk_tokens
        if max_chunks is not None:
            n = min(n, max_chunks)
        out = []
        prev = self.seed
        c = self.chunk_tokens
        for i in range(n):
            chunk = toks[i * c:(i + 1) * c]
            h = hashlib.sha256(prev)
            h.update(struct.pack("<%dI" % c, *[t & 0xFFFFFFFF for t in chunk]))
            prev = h.digest()
            out.append(prev.hex())
        return out

    def chunk_key(self, digest, tp_rank):
        """The key prefix of one chunk for one TP rank (the engine appends /L<layer>)."""
        return "%s/%s/tp%d" % (self.prefix, digest, int(tp_rank))

    def keys(self, token_ids, tp_rank, max_chunks=None):
        return [self.chunk_key(d, tp_rank) for d in self.hashes(token_ids, max_chunks)]


def claimable_tokens(num_prompt_tokens, hit_chunks, chunk_tokens):
    """Tokens that may be taken from the store: the hit prefix, but never the last prompt token
    (the engine must compute at least one token to produce logits)."""
    return max(0, min(hit_chunks * chunk_tokens, num_prompt_tokens - 1))
