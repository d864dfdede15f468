# SPDX-License-Identifier: Apache-2.0
"""The SGLang HiCache backend against a real store: plain get/set, prefix batch_exists, and the
zero-copy v1 calls over a stand-in host memory pool (pages of K and V in one torch buffer)."""
import types

import torch

from kvstash.sglang_backend import KvstashHiCache


class HostPoolStandin:
    """Stand-in for SGLang's HostKVCache: get_page_buffer_meta(indices) -> (pointers, sizes),
    K then V of each page."""

    def __init__(self, pages, page_bytes):
        self.buf = torch.zeros(2, pages, page_bytes, dtype=torch.uint8)
        self.page_bytes = page_bytes

    def get_page_buffer_meta(self, indices):
        ptrs, sizes = [], []
        for i in indices.tolist():
            for kv in (0, 1):
                ptrs.append(self.buf[kv, i].data_ptr())
                sizes.append(self.page_bytes)
        return ptrs, sizes


def _cfg(cluster, rank=0):
    return types.SimpleNamespace(tp_rank=rank, tp_size=2, pp_rank=0, pp_size=1,
                                 is_mla_model=False, model_name="org/model-x",
                                 extra_config={"master": cluster.master,
                                               "cluster": cluster.cluster,
                                               "backend_name": "kvstash"})


def test_plain_api(cluster):
    b = KvstashHiCache(_cfg(cluster), {})  # how SGLang's dynamic factory constructs it
    t = torch.arange(64, dtype=torch.float16)
    assert b.set("p1", t) and b.set("p1", t)  # a second set of the same page is fine
    out = torch.empty_like(t)
    assert b.get("p1", out) is out and torch.equal(out, t)
    assert b.get("nope", torch.empty_like(t)) is None
    assert bytes(b.get("p1").numpy()) == t.numpy().tobytes()
    assert b.exists("p1") and not b.exists("p2")
    assert b.batch_set(["p2", "p3"], [t, t])
    assert b.batch_exists(["p1", "p2", "zz", "p3"]) == 2
    other_rank = KvstashHiCache(_cfg(cluster, rank=1))
    assert not other_rank.exists("p1")  # keys carry the TP rank
    b.close()
    other_rank.close()


def test_zero_copy_v1(cluster):
    pool_a, pool_b = HostPoolStandin(8, 4096), HostPoolStandin(8, 4096)
    pool_a.buf.copy_(torch.randint(0, 255, pool_a.buf.shape, dtype=torch.uint8))
    a = KvstashHiCache(_cfg(cluster), pool_a)
    b = KvstashHiCache(_cfg(cluster))
    b.register_mem_pool_host(pool_b)
    keys = ["h0", "h1", "h2"]
    assert a.batch_set_v1(keys, torch.tensor([5, 1, 6])) == [True, True, True]
    assert b.batch_exists(keys + ["h3"]) == 3
    got = b.batch_get_v1(keys + ["h3"], torch.tensor([0, 2, 3, 4]))
    assert got == [True, True, True, False]
    for src, dst in ((5, 0), (1, 2), (6, 3)):
        assert torch.equal(pool_a.buf[:, src], pool_b.buf[:, dst])
    # a miss in the middle: HiCache uses the leading run only
    assert b.batch_get_v1(["h0", "zz", "h2"], torch.tensor([0, 1, 2])) == [True, False, False]
    a.close()
    b.close()
