# SPDX-License-Identifier: Apache-2.0
"""End to end against a real kvstash store started on free loopback ports: the Store binding,
and the vLLM connector in separate processes (A saves, B loads with another block table and
layout, bit-identical; a partial prefix hit loads exactly the matched tokens), and a store
killed mid-run (load errors reported, misses, no crash, no wrong bytes)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import kvstash
from kvstash import vllm_connector as vc
from vllm_standin import (EngineStandin, KVCacheBlocksStandin, NewRequestDataStandin,
                          RequestStandin, SchedulerOutputStandin, paged_cache,
                          vllm_config_standin)

HERE = os.path.dirname(os.path.abspath(__file__))


def test_store_binding(cluster):
    with kvstash.Store(**cluster.store_kwargs()) as s:
        s.put("py/a", b"hello")
        assert s.get("py/a") == b"hello"
        with pytest.raises(kvstash.ExistsError):
            s.put("py/a", b"again")
        with pytest.raises(KeyError):
            s.get("py/none")
        t = torch.randn(1000).to(torch.bfloat16)
        s.put("py/t", t)
        out = torch.empty_like(t)
        assert s.get_into("py/t", out) == 2000 and torch.equal(out.view(torch.int16),
                                                                 t.view(torch.int16))
        with pytest.raises(kvstash.InvalidArgumentError):
            s.get_into("py/t", bytearray(10))  # too small: nothing copied, clear error
        with pytest.raises(ValueError, match="contiguous"):
            s.put("py/nc", torch.zeros(4, 4).t())
        import numpy as np
        arr = np.arange(12, dtype=np.int32).reshape(3, 4)
        s.put("py/np", arr)
        back = np.zeros_like(arr)
        assert s.get_into("py/np", back) == 48 and (back == arr).all()
        with pytest.raises(ValueError, match="C-contiguous"):
            s.put("py/npf", np.asfortranarray(arr))
        assert s.exists(["py/a", "py/none", "py/t"]) == [True, False, True]
        assert s.batch_put(["py/b1", "py/b2", "py/a"], [b"1", bytearray(b"22"), b"x"]) == \
            [0, 0, kvstash.errors.CODES["KV_EEXIST"]]
        bufs = [bytearray(4), bytearray(4), bytearray(4)]
        assert s.batch_get_into(["py/b1", "py/b2", "py/zz"], bufs) == \
            [1, 2, kvstash.errors.CODES["KV_ENOENT"]]
        assert bytes(bufs[1][:2]) == b"22"
        assert [k for k, _ in s.list("py/b")] == ["py/b1", "py/b2"]
        s.remove("py/a")
        assert s.exists("py/a") is False
        with pytest.raises(KeyError):
            s.remove("py/a")
        assert s.stat()["objects"] >= 3
    with pytest.raises(ValueError, match="master"):
        kvstash.Store()
    with pytest.raises(kvstash.KvstashError) as ei:
        kvstash.Store(master="127.0.0.1:1", timeout_ms=300)
    assert "cannot connect to 127.0.0.1:1" in str(ei.value)


def test_copy_engine_save_groups(cluster):
    """Saves that back up in the copy engine's queue go to the store in groups (one PUT_START
    and one PUT_END for several layers, at most batch_max chunks per group); every chunk lands
    under its own layer's key, and reads back bit-identical through another block table."""
    from kvstash.kvconn import LOAD, SAVE, CopyEngine
    layers, nb, bs, heads, hd = 6, 16, 16, 8, 128  # 128 KiB chunks: not put inline
    src = paged_cache(layers, nb, bs, heads, hd, torch.bfloat16, "NHD")
    dst = paged_cache(layers, nb, bs, heads, hd, torch.bfloat16, "HND")
    for t in src.values():
        t.copy_(torch.randn(t.shape).to(torch.bfloat16))
    with kvstash.Store(**cluster.store_kwargs()) as s:
        kw = dict(block_size=bs, chunk_blocks=2, num_heads=heads, row_bytes=hd * 2, threads=1)
        ea = CopyEngine(s, batch_max=5, **kw)  # groups of 2 layers x 2 chunks
        eb = CopyEngine(s, **kw)
        for i, n in enumerate(src):
            ea.register_layer(i, src[n])
            eb.register_layer(i, dst[n])
        keys = ["grp/c0", "grp/c1"]
        starts = cluster.metric("kvstash_store_rpc_duration_seconds_count", op="put_start")
        j = ea.submit(SAVE, 0, layers, keys, [[3, 7], [0, 11]])
        assert ea.wait(j, 2) == (True, [0, 0])
        ea.release(j)
        n_starts = cluster.metric("kvstash_store_rpc_duration_seconds_count",
                                  op="put_start") - starts
        assert 1 <= n_starts <= layers // 2, n_starts  # one per layer without groups
        assert all(s.exists(["grp/c0/L%d" % i, "grp/c1/L%d" % i]) == [True, True]
                   for i in range(layers))
        # saved again (first writer wins) in the same groups: still every chunk ok
        j = ea.submit(SAVE, 0, layers, keys, [[3, 7], [0, 11]])
        assert ea.wait(j, 2) == (True, [0, 0])
        ea.release(j)
        j = eb.submit(LOAD, 0, layers, keys, [[1, 2], [9, 4]])
        assert eb.wait(j, 2) == (True, [0, 0])
        eb.release(j)
        for n in src:
            for a, b in ((3, 1), (7, 2), (0, 9), (11, 4)):
                assert torch.equal(src[n][:, a].view(torch.int16), dst[n][:, b].view(torch.int16))
        ea.close()
        eb.close()


def _run(cfg):
    p = subprocess.run([sys.executable, os.path.join(HERE, "connector_proc.py"),
                        json.dumps(cfg)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_connector_across_processes(cluster, dtype):
    extra = {"master": cluster.master, "cluster": cluster.cluster, "chunk_size": 64,
             "model": "e2e-" + dtype}
    tokens = [(i * 7919) % 151936 for i in range(200)]  # 3 chunks of 64 + 8
    a = _run({"extra": extra, "tokens": tokens, "blocks": list(range(13)), "dtype": dtype})
    assert a["ext"] == 0 and a["identical"] and a["finished"] and a["errors"] == []
    assert a["stats"]["saved_chunks"] == 3 * 4 and a["stats"]["save_errors"] == 0
    blocks_b = [50, 3, 41, 7, 22, 60, 1, 33, 18, 9, 44, 12, 27]
    # B: another block table, HND, and (fp16) the host-staging path of device caches
    b = _run({"extra": dict(extra, host_staging=dtype == "float16"), "tokens": tokens,
              "blocks": blocks_b, "dtype": dtype, "layout": "HND", "req": "b"})
    assert b["ext"] == 192 and b["errors"] == [] and b["identical"]
    assert b["stats"]["loaded_chunks"] == 3
    # a prompt sharing the first 64 tokens: exactly those come from the store
    other = tokens[:64] + [5] * 100
    c = _run({"extra": extra, "tokens": other, "blocks": blocks_b[:11], "dtype": dtype,
              "req": "c"})
    assert c["ext"] == 64 and c["errors"] == [] and c["identical"]
    assert c["stats"]["loaded_chunks"] == 1


def test_store_killed_mid_run(own_cluster):
    extra = {"master": own_cluster.master, "cluster": own_cluster.cluster, "chunk_size": 32,
             "timeout_ms": 1500, "model": "killed"}
    tokens = list(range(7000, 7100))
    a = _run({"extra": extra, "tokens": tokens, "blocks": list(range(7)), "layers": 2,
              "heads": 2, "head_dim": 64})
    assert a["stats"]["saved_chunks"] == 3 * 2
    cfg = vllm_config_standin(extra, num_layers=2)
    sched = vc.KvstashConnector(cfg, vc.KVConnectorRole.SCHEDULER)
    worker = vc.KvstashConnector(cfg, vc.KVConnectorRole.WORKER)
    caches = paged_cache(2, 32, 16, 2, 64, torch.bfloat16)
    eng = EngineStandin(sched, worker, caches, 16)
    req = RequestStandin("k", tokens)
    ext, _ = sched.get_num_new_matched_tokens(req, 0)
    assert ext == 96
    blocks = [10, 11, 12, 13, 14, 15, 16]
    sched.update_state_after_alloc(req, KVCacheBlocksStandin(blocks), ext)
    meta = sched.build_connector_meta(SchedulerOutputStandin(
        [NewRequestDataStandin("k", tokens, blocks, ext)], num_scheduled_tokens={"k": 4}))
    own_cluster.kill()  # the store (node holding every replica, master) dies before the load
    worker.bind_connector_metadata(meta)
    worker.start_load_kv(None)
    for n in eng.names:
        worker.wait_for_layer_load(n)
    errs = worker.get_block_ids_with_load_errors()
    worker.clear_connector_metadata()
    assert errs == set(blocks[:6])  # every claimed block: vLLM recomputes them
    assert not any(t[:, 10:17].any() for t in caches.values())  # no bytes written
    # with the store gone: a lookup is a miss, saves fail quietly, blocks are still released
    ext, errs2, _ = eng.prefill("k2", list(range(9000, 9064)), [20, 21, 22, 23])
    assert ext == 0 and errs2 == set()
    assert eng.finish("k2", list(range(9000, 9064)), [20, 21, 22, 23]) is True
    assert worker.stats["save_errors"] > 0
    worker.shutdown()
    sched.shutdown()


def test_store_killed_during_load(own_cluster):
    """The store dies while a load is in flight: whatever the timing, every chunk is either
    reported failed or holds exactly the saved bytes, and no block holds anything but the
    saved bytes or its old contents (zeros)."""
    from vllm_standin import gathered, model_kv_all
    layers, heads, hd = 6, 4, 64
    extra = {"master": own_cluster.master, "cluster": own_cluster.cluster, "chunk_size": 16,
             "timeout_ms": 500, "model": "killed-mid"}
    tokens = [(i * 31 + 7) % 50000 for i in range(512)]
    a = _run({"extra": extra, "tokens": tokens, "blocks": list(range(32)), "layers": layers,
              "heads": heads, "head_dim": hd, "num_blocks": 40})
    assert a["stats"]["save_errors"] == 0
    cfg = vllm_config_standin(extra, num_layers=layers)
    sched = vc.KvstashConnector(cfg, vc.KVConnectorRole.SCHEDULER)
    worker = vc.KvstashConnector(cfg, vc.KVConnectorRole.WORKER)
    caches = paged_cache(layers, 80, 16, heads, hd, torch.bfloat16)
    eng = EngineStandin(sched, worker, caches, 16)
    req = RequestStandin("m", tokens)
    ext, _ = sched.get_num_new_matched_tokens(req, 0)
    assert ext == 511
    blocks = list(range(40, 72))
    sched.update_state_after_alloc(req, KVCacheBlocksStandin(blocks), ext)
    meta = sched.build_connector_meta(SchedulerOutputStandin(
        [NewRequestDataStandin("m", tokens, blocks, ext)], num_scheduled_tokens={"m": 1}))
    worker.bind_connector_metadata(meta)
    worker.start_load_kv(None)
    worker.wait_for_layer_load(eng.names[0])
    own_cluster.kill()
    for n in eng.names[1:]:
        worker.wait_for_layer_load(n)
    errs = worker.get_block_ids_with_load_errors()
    worker.clear_connector_metadata()
    for li, name in enumerate(eng.names):
        got = gathered(caches[name], tokens[:511], blocks, 16)
        want = model_kv_all(tokens, li, range(511), heads, hd, torch.bfloat16)
        for b in range(32):
            g, w = got[:, b * 16:(b + 1) * 16], want[:, b * 16:(b + 1) * 16]
            same = torch.equal(g.view(torch.int16), w.view(torch.int16))
            if blocks[b] not in errs:
                assert same, "block %d (layer %d) not reported but not loaded" % (b, li)
            else:
                assert same or not g.any(), "block %d (layer %d) holds wrong bytes" % (b, li)
    print("store killed during load: %d of 32 blocks reported failed" % len(errs))
    worker.shutdown()
    sched.shutdown()
