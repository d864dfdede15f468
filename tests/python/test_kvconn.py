# SPDX-License-Identifier: Apache-2.0
"""The C copy engine from Python on real torch tensors in vLLM's paged layout, against an
in-memory backend: strided gathers/scatters for NHD and HND, bf16 and fp16, K and V as separate
tensors, token ranges, and failed loads reported per chunk without touching the tensor."""
import pytest
import torch

from fakes import MemoryBackend
from kvstash.kvconn import LOAD, SAVE, CopyEngine, layout_of
from vllm_standin import paged_cache

BS, HEADS, HD, NB, LAYERS, CB = 16, 4, 32, 12, 3, 2


def _engine(backend, dtype):
    es = torch.tensor([], dtype=dtype).element_size()
    return CopyEngine(backend=backend, block_size=BS, chunk_blocks=CB, num_heads=HEADS,
                      row_bytes=HD * es, threads=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layouts", [("NHD", "NHD"), ("HND", "HND"), ("NHD", "HND")])
def test_save_load_roundtrip(dtype, layouts):
    be = MemoryBackend()
    a = paged_cache(LAYERS, NB, BS, HEADS, HD, dtype, layouts[0])
    b = paged_cache(LAYERS, NB, BS, HEADS, HD, dtype, layouts[1])
    assert layout_of(next(iter(a.values())))[-1] == layouts[0]
    for t in a.values():
        t.copy_(torch.randn(t.shape).to(dtype))
    ea, eb = _engine(be, dtype), _engine(be, dtype)
    for i, n in enumerate(a):
        ea.register_layer(i, a[n])
        eb.register_layer(i, b[n])
    blocks_a = [[3, 7], [0, 11]]
    blocks_b = [[1, 2], [9, 4]]
    job = ea.submit(SAVE, 0, LAYERS, ["k/c0", "k/c1"], blocks_a)
    done, st = ea.wait(job, 2)
    assert done and st == [0, 0]
    ea.release(job)
    assert be.puts == 2 * LAYERS
    assert all(len(v) == ea.object_size for v in be.data.values())
    # chunk 0 whole, chunk 1 only tokens [5, 20): part of its first block and of its second
    job = eb.submit(LOAD, 0, LAYERS, ["k/c0", "k/c1"], blocks_b, [0, 5], [2 * BS, 20])
    for layer in range(LAYERS):
        assert eb.wait_layer(job, layer)
    done, st = eb.wait(job, 2)
    assert done and st == [0, 0]
    eb.release(job)
    for name in a:
        ta, tb = a[name], b[name]
        for ca, cb in zip(blocks_a[0], blocks_b[0]):
            assert torch.equal(ta[:, ca].view(torch.int16), tb[:, cb].view(torch.int16))
        flat_a = torch.cat([ta[:, blocks_a[1][0]], ta[:, blocks_a[1][1]]], dim=1)
        flat_b = torch.cat([tb[:, blocks_b[1][0]], tb[:, blocks_b[1][1]]], dim=1)
        assert torch.equal(flat_a[:, 5:20].view(torch.int16), flat_b[:, 5:20].view(torch.int16))
        assert not flat_b[:, :5].any() and not flat_b[:, 20:].any()  # untouched rows
    ea.close()
    eb.close()


def test_separate_k_and_v_tensors():
    be = MemoryBackend()
    k = torch.randn(NB, BS, HEADS, HD).to(torch.bfloat16)
    v = torch.randn(NB, BS, HEADS, HD).to(torch.bfloat16)
    k2, v2 = torch.zeros_like(k), torch.zeros_like(v)
    ea, eb = _engine(be, torch.bfloat16), _engine(be, torch.bfloat16)
    ea.register_layer(0, (k, v))
    eb.register_layer(0, (k2, v2))
    j = ea.submit(SAVE, 0, 1, ["kv/c"], [[4, 5]])
    assert ea.wait(j, 1) == (True, [0])
    j = eb.submit(LOAD, 0, 1, ["kv/c"], [[6, 1]])
    assert eb.wait(j, 1) == (True, [0])
    assert torch.equal(k[4], k2[6]) and torch.equal(k[5], k2[1])
    assert torch.equal(v[4], v2[6]) and torch.equal(v[5], v2[1])


def test_failed_loads_reported_and_nothing_written():
    be = MemoryBackend()
    a = paged_cache(LAYERS, NB, BS, HEADS, HD, torch.float16)
    b = paged_cache(LAYERS, NB, BS, HEADS, HD, torch.float16)
    for t in a.values():
        t.copy_(torch.randn(t.shape).to(torch.float16))
    ea, eb = _engine(be, torch.float16), _engine(be, torch.float16)
    for i, n in enumerate(a):
        ea.register_layer(i, a[n])
        eb.register_layer(i, b[n])
    j = ea.submit(SAVE, 0, LAYERS, ["f/c0", "f/c1"], [[0, 1], [2, 3]])
    assert ea.wait(j, 2) == (True, [0, 0])
    be.fail_get = lambda key: key.endswith(b"f/c1/L2")
    j = eb.submit(LOAD, 0, LAYERS, ["f/c0", "f/c1", "f/absent"], [[4, 5], [6, 7], [8, 9]])
    done, st = eb.wait(j, 3)
    assert done and st[0] == 0 and st[1] == -5 and st[2] == -3
    last = b[list(b)[2]]
    assert not last[:, 6].any() and not last[:, 7].any()  # the failed layer wrote nothing
    assert not any(t[:, 8:10].any() for t in b.values())  # the absent chunk wrote nothing
    with pytest.raises(ValueError, match="block id|invalid"):
        eb.submit(LOAD, 0, LAYERS, ["f/c0"], [[NB, 0]])
    with pytest.raises(ValueError, match="5-d"):
        layout_of(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="contiguous"):
        layout_of(torch.zeros(2, 2, 4, 2, 8).transpose(3, 4))
