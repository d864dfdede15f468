# SPDX-License-Identifier: Apache-2.0
"""Chunk keys: deterministic across processes, sensitive to every namespace field and every
token of the prefix, and never claiming the last prompt token."""
import os
import subprocess
import sys

from kvstash.keys import ChunkHasher, claimable_tokens

HERE = os.path.dirname(os.path.abspath(__file__))


def _keys_in_subprocess(seed):
    code = ("from kvstash.keys import ChunkHasher\n"
            "h = ChunkHasher('Qwen/Qwen3-0.6B', 'bfloat16', 'NHD', 1, 32)\n"
            "print(','.join(h.keys(list(range(1000, 1100)), 0)))\n")
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip().split(",")


def test_same_keys_in_every_process():
    a, b = _keys_in_subprocess(1), _keys_in_subprocess(12345)
    h = ChunkHasher("Qwen/Qwen3-0.6B", "bfloat16", "NHD", 1, 32)
    assert a == b == h.keys(list(range(1000, 1100)), 0)
    assert len(a) == 3  # 100 tokens: three full chunks of 32, the tail has no key
    assert a[0].startswith("kvstash/Qwen-Qwen3-0.6B/") and a[0].endswith("/tp0")


def test_prefix_chaining_and_namespace():
    h = ChunkHasher("m", "bfloat16", "NHD", 1, 16)
    toks = list(range(64))
    base = h.hashes(toks)
    assert len(base) == 4 and len(set(base)) == 4
    # changing one token changes its chunk and every later chunk, not the earlier ones
    t2 = list(toks)
    t2[20] = 999
    changed = h.hashes(t2)
    assert changed[0] == base[0] and all(changed[i] != base[i] for i in (1, 2, 3))
    # a longer prompt with the same prefix shares the prefix's keys
    assert h.hashes(toks + [5] * 40)[:4] == base
    for other in (ChunkHasher("m2", "bfloat16", "NHD", 1, 16),
                  ChunkHasher("m", "float16", "NHD", 1, 16),
                  ChunkHasher("m", "bfloat16", "HND", 1, 16),
                  ChunkHasher("m", "bfloat16", "NHD", 2, 16)):
        assert other.hashes(toks)[0] != base[0]
    assert h.keys(toks, 0)[0] != h.keys(toks, 1)[0]  # TP rank in the key
    assert ChunkHasher("m", "bfloat16", "NHD", 1, 32).hashes(toks)[0] not in base


def test_never_claims_last_token():
    assert claimable_tokens(64, 4, 16) == 63
    assert claimable_tokens(65, 4, 16) == 64
    assert claimable_tokens(64, 2, 16) == 32
    assert claimable_tokens(1, 0, 16) == 0
    assert claimable_tokens(0, 0, 16) == 0
