# SPDX-License-Identifier: Apache-2.0
"""The vLLM connector driven the way vLLM's scheduler and model runner call it (stand-ins for
vLLM's objects, see vllm_standin.py), on an in-memory backend: save in one engine, load in
another with a different block table, partial prefix hits, never the last token, failed loads
reported as block ids, blocks held until get_finished."""
import pytest
import torch

import fakes
from kvstash import vllm_connector as vc
from vllm_standin import (EngineStandin, RequestStandin, gathered, model_kv_all, paged_cache,
                          vllm_config_standin)

BS, HEADS, HD, NB, LAYERS = 16, 2, 64, 40, 3


STAGING = {"v": False}


@pytest.fixture(params=[False, True], ids=["in-place", "host-staging"])
def backend(monkeypatch, request):
    """The in-memory backend; every test runs twice: the copy engine on the KV tensors
    themselves, and through per-job host staging buffers (the path of device caches)."""
    be = fakes.MemoryBackend()
    monkeypatch.setattr(vc, "BACKEND_FACTORY", lambda cfg: be)
    monkeypatch.setitem(STAGING, "v", request.param)
    return be


def _engine(extra=None, dtype=torch.bfloat16, layout="NHD"):
    extra = dict({"host_staging": STAGING["v"]}, **(extra or {}))
    cfg = vllm_config_standin(dict({"chunk_size": 32, "master": "unused:1"}, **extra),
                              block_size=BS, num_layers=LAYERS,
                              dtype=str(dtype).replace("torch.", ""))
    sched = vc.KvstashConnector(cfg, vc.KVConnectorRole.SCHEDULER)
    worker = vc.KvstashConnector(cfg, vc.KVConnectorRole.WORKER)
    caches = paged_cache(LAYERS, NB, BS, HEADS, HD, dtype, layout)
    return EngineStandin(sched, worker, caches, BS)


def _check(eng, tokens, block_ids, upto):
    """Positions [0, upto) of the engine's cache hold what the model computes, bit for bit."""
    for li, name in enumerate(eng.names):
        kv = eng.caches[name]
        got = gathered(kv, tokens[:upto], block_ids, BS)
        want = model_kv_all(tokens, li, range(upto), HEADS, HD, kv.dtype)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), name


def test_registered_names():
    assert issubclass(vc.DistributedKVConnector, vc.KvstashConnector)
    assert vc.register() is vc.HAVE_VLLM


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_save_then_load_elsewhere(backend, dtype):
    tokens = list(range(500, 600))  # 100 tokens: 3 full chunks of 32 + 4
    a = _engine(dtype=dtype)
    blocks_a = list(range(0, 7))
    ext, errs, computed = a.prefill("r1", tokens, blocks_a)
    assert (ext, errs, computed) == (0, set(), 0)
    assert a.finish("r1", tokens, blocks_a) is True  # held until its saves finished
    assert backend.puts == 3 * LAYERS  # three full chunks, every layer; not the tail
    b = _engine(dtype=dtype, layout="HND")
    blocks_b = [30, 2, 17, 5, 9, 33, 21]
    ext, errs, computed = b.prefill("r2", tokens, blocks_b)
    assert ext == 96 and errs == set() and computed == 96
    _check(b, tokens, blocks_b, len(tokens))
    assert b.worker.stats["loaded_chunks"] == 3
    assert backend.puts == 3 * LAYERS  # nothing saved twice
    b.finish("r2", tokens, blocks_b)


def test_partial_prefix_and_last_token(backend):
    base = list(range(1000, 1064))  # exactly 2 chunks
    a = _engine()
    a.prefill("a", base, list(range(4)))
    a.finish("a", base, list(range(4)))
    # the whole prompt is stored: claim all but the last token
    b = _engine()
    ext, errs, _ = b.prefill("b", base, [10, 11, 12, 13])
    assert ext == 63 and not errs
    _check(b, base, [10, 11, 12, 13], 64)
    kv = b.caches[b.names[0]]
    # a prompt sharing only the first chunk: exactly 32 tokens come from the store
    other = base[:32] + [7] * 40
    c = _engine()
    blocks = [20, 21, 22, 23, 24]
    before = {n: t.clone() for n, t in c.caches.items()}
    req = RequestStandin("c", other)
    assert c.sched.get_num_new_matched_tokens(req, 0) == (32, False)
    ext, errs, _ = c.prefill("c", other, blocks)
    assert ext == 32 and not errs
    _check(c, other, blocks, len(other))
    del before, kv
    # local prefix cache already holds the first chunk: only the rest is claimed
    d = _engine()
    ext, errs, computed = d.prefill("d", base, [30, 31, 32, 33], local_computed=32)
    assert ext == 31 and computed == 63 and not errs
    t = d.caches[d.names[0]]
    assert not t[:, 30].any() and not t[:, 31].any()  # locally cached blocks untouched


def test_load_errors_are_reported(backend):
    tokens = list(range(2000, 2096))  # 3 chunks
    a = _engine()
    a.prefill("a", tokens, list(range(6)))
    a.finish("a", tokens, list(range(6)))
    backend.fail_get = lambda key: b"/L1" in key and key.split(b"/")[2] == \
        a.sched.hasher.hashes(tokens)[1].encode()
    b = _engine()
    blocks = [10, 11, 12, 13, 14, 15]
    ext, errs, _ = b.prefill("b", tokens, blocks)
    assert ext == 95
    assert errs == {12, 13}  # chunk 1's blocks: vLLM recomputes from there
    _check(b, tokens, blocks, 32)  # chunk 0 is correct
    assert b.worker.get_block_ids_with_load_errors() == set()  # reported once


def test_evicted_layer_is_repaired(backend):
    """One layer object of a chunk evicted alone: the load reports the chunk, and the next
    prefill misses it and stores it whole again instead of failing forever."""
    tokens = list(range(6000, 6065))  # 2 full chunks
    a = _engine()
    a.prefill("a", tokens, [0, 1, 2, 3, 4])
    a.finish("a", tokens, [0, 1, 2, 3, 4])
    digest = a.sched.hasher.hashes(tokens)[1]
    victim = [k for k in backend.data if digest.encode() in k and k.endswith(b"/L1")]
    assert len(victim) == 1
    del backend.data[victim[0]]
    b = _engine()
    ext, errs, _ = b.prefill("b", tokens, [10, 11, 12, 13, 14])
    assert ext == 64 and errs == {12, 13}
    c = _engine()
    ext, errs, _ = c.prefill("c", tokens, [20, 21, 22, 23, 24])
    assert ext == 32 and not errs  # chunk 1 no longer claimed; recomputed and saved again
    c.finish("c", tokens, [20, 21, 22, 23, 24])
    d = _engine()
    ext, errs, _ = d.prefill("d", tokens, [30, 31, 32, 33, 34])
    assert ext == 64 and not errs
    _check(d, tokens, [30, 31, 32, 33, 34], len(tokens))


def test_store_down_is_a_miss_and_no_crash(backend):
    tokens = list(range(3000, 3064))
    a = _engine()
    a.prefill("a", tokens, [0, 1, 2, 3])
    a.finish("a", tokens, [0, 1, 2, 3])
    backend.down = True
    b = _engine()
    assert b.sched.get_num_new_matched_tokens(RequestStandin("b", tokens), 0) == (0, False)
    # the lookup succeeded but the store died before the load: every block is reported
    backend.down = False
    req = RequestStandin("c", tokens)
    ext, _ = b.sched.get_num_new_matched_tokens(req, 0)
    assert ext == 63
    backend.down = True
    from vllm_standin import KVCacheBlocksStandin, NewRequestDataStandin, SchedulerOutputStandin
    b.sched.update_state_after_alloc(req, KVCacheBlocksStandin([5, 6, 7, 8]), ext)
    meta = b.sched.build_connector_meta(SchedulerOutputStandin(
        [NewRequestDataStandin("c", tokens, [5, 6, 7, 8], ext)], num_scheduled_tokens={"c": 1}))
    b.worker.bind_connector_metadata(meta)
    b.worker.start_load_kv(None)
    for n in b.names:
        b.worker.wait_for_layer_load(n)
    assert b.worker.get_block_ids_with_load_errors() == {5, 6, 7, 8}
    assert not any(t[:, 5:9].any() for t in b.caches.values())


def test_cache_modes(backend):
    tokens = list(range(64))
    ro = _engine({"cache_mode": "read_only"})
    ro.prefill("x", tokens, [0, 1, 2, 3])
    assert ro.finish("x", tokens, [0, 1, 2, 3]) is False and backend.puts == 0
    rw = _engine()
    rw.prefill("y", tokens, [0, 1, 2, 3])
    rw.finish("y", tokens, [0, 1, 2, 3])
    wo = _engine({"cache_mode": "write_only"})
    assert wo.sched.get_num_new_matched_tokens(RequestStandin("z", tokens), 0) == (0, False)


def test_chunked_prefill_saves_as_chunks_complete(backend):
    """A prompt scheduled over two steps: chunks are saved once they are fully computed."""
    from vllm_standin import (CachedRequestDataStandin, NewRequestDataStandin,
                              SchedulerOutputStandin)
    tokens = list(range(4000, 4080))  # 2 full chunks + 16
    e = _engine()
    req = RequestStandin("p", tokens)
    assert e.sched.get_num_new_matched_tokens(req, 0) == (0, False)
    e.sched.update_state_after_alloc(req, None, 0)
    m1 = e.sched.build_connector_meta(SchedulerOutputStandin(
        [NewRequestDataStandin("p", tokens, [0, 1, 2], 0)], num_scheduled_tokens={"p": 40}))
    assert [s.block_ids for s in m1.saves] == [[0, 1]]
    m2 = e.sched.build_connector_meta(SchedulerOutputStandin(
        cached=CachedRequestDataStandin(["p"], [([3, 4],)], [40]),
        num_scheduled_tokens={"p": 40}))
    assert [s.block_ids for s in m2.saves] == [[2, 3]]


def test_tensor_parallel_ranks(backend):
    """Each TP rank saves its own slice under its own keys; the scheduler claims a chunk only
    when every rank has it."""
    tokens = list(range(5000, 5064))

    def rank_engine(rank):
        cfg = vllm_config_standin({"chunk_size": 32, "master": "unused:1",
                                   "host_staging": STAGING["v"]}, block_size=BS,
                                  num_layers=LAYERS, tp_size=2, rank=rank)
        return EngineStandin(vc.KvstashConnector(cfg, vc.KVConnectorRole.SCHEDULER),
                             vc.KvstashConnector(cfg, vc.KVConnectorRole.WORKER),
                             paged_cache(LAYERS, NB, BS, HEADS, HD, torch.bfloat16), BS)

    r0 = rank_engine(0)
    r0.prefill("a", tokens, [0, 1, 2, 3])
    r0.finish("a", tokens, [0, 1, 2, 3])
    assert all(b"/tp0/" in k for k in backend.data)
    probe = rank_engine(0)
    assert probe.sched.get_num_new_matched_tokens(RequestStandin("p", tokens), 0) == (0, False)
    r1 = rank_engine(1)
    r1.prefill("a", tokens, [0, 1, 2, 3])
    r1.finish("a", tokens, [0, 1, 2, 3])
    assert probe.sched.get_num_new_matched_tokens(RequestStandin("q", tokens), 0) == (63, False)


def test_forward_logs(caplog):
    import logging
    import time

    import kvstash
    kvstash.forward_logs(level="warn")
    try:
        with caplog.at_level(logging.WARNING, logger="kvstash"):
            from kvstash.kvconn import CopyEngine
            with pytest.raises(ValueError):
                CopyEngine(backend=fakes.MemoryBackend(), block_size=0, chunk_blocks=1,
                           num_heads=1, row_bytes=2)
            end = time.monotonic() + 5
            while time.monotonic() < end and "bad shape" not in caplog.text:
                time.sleep(0.02)
        assert "kv_conn_create: bad shape" in caplog.text
    finally:
        kvstash.forward_logs(False)
