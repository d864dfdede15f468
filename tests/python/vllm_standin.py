# SPDX-License-Identifier: Apache-2.0
"""Stand-ins for the vLLM objects the connector reads (vLLM cannot be installed here). Only the
attributes the connector uses, named after vLLM's: VllmConfig, Request, SchedulerOutput with
NewRequestData / CachedRequestData, KVCacheBlocks. EngineStandin drives a scheduler-side and a
worker-side connector through one prefill the way vLLM's scheduler and model runner call them.
"""
import types

import torch


def vllm_config_standin(extra, model="Qwen/Qwen3-0.6B", dtype="bfloat16", block_size=16,
                        num_layers=4, tp_size=1, rank=0):
    mc = types.SimpleNamespace(model=model, dtype=getattr(torch, dtype))
    mc.get_num_layers = lambda pc: num_layers
    return types.SimpleNamespace(
        model_config=mc,
        cache_config=types.SimpleNamespace(block_size=block_size, cache_dtype="auto"),
        parallel_config=types.SimpleNamespace(tensor_parallel_size=tp_size, rank=rank),
        kv_transfer_config=types.SimpleNamespace(
            kv_connector="KvstashConnector", kv_connector_module_path="kvstash.vllm_connector",
            kv_role="kv_both", kv_connector_extra_config=dict(extra)))


class RequestStandin:
    def __init__(self, request_id, prompt_token_ids):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.num_computed_tokens = 0


class KVCacheBlocksStandin:
    def __init__(self, block_ids):
        self.block_ids = list(block_ids)

    def get_block_ids(self):
        return (list(self.block_ids),)


class NewRequestDataStandin:
    def __init__(self, req_id, prompt_token_ids, block_ids, num_computed_tokens):
        self.req_id = req_id
        self.prompt_token_ids = prompt_token_ids
        self.block_ids = (list(block_ids),)
        self.num_computed_tokens = num_computed_tokens


class CachedRequestDataStandin:
    def __init__(self, req_ids=(), new_block_ids=(), num_computed_tokens=()):
        self.req_ids = list(req_ids)
        self.new_block_ids = list(new_block_ids)
        self.num_computed_tokens = list(num_computed_tokens)
        self.resumed_req_ids = set()


class SchedulerOutputStandin:
    def __init__(self, new_reqs=(), cached=None, num_scheduled_tokens=None, finished=()):
        self.scheduled_new_reqs = list(new_reqs)
        self.scheduled_cached_reqs = cached or CachedRequestDataStandin()
        self.num_scheduled_tokens = dict(num_scheduled_tokens or {})
        self.finished_req_ids = set(finished)
        self.preempted_req_ids = set()


def paged_cache(num_layers, num_blocks, block_size, heads, head_dim, dtype, layout="NHD"):
    """{layer name: tensor [2, num_blocks, block_size, heads, head_dim]} as vLLM allocates
    it; HND keeps that logical shape over [2, num_blocks, heads, block_size, head_dim]
    memory."""
    out = {}
    for i in range(num_layers):
        if layout == "HND":
            t = torch.zeros(2, num_blocks, heads, block_size, head_dim, dtype=dtype)
            t = t.permute(0, 1, 3, 2, 4)
        else:
            t = torch.zeros(2, num_blocks, block_size, heads, head_dim, dtype=dtype)
        out["model.layers.%d.self_attn.attn" % i] = t
    return out


def model_kv_all(tokens, layer, positions, heads, head_dim, dtype):
    """What the stand-in model computes at each of `positions`: a deterministic function of
    the token there, the position and the layer, as [2, len(positions), heads, head_dim]."""
    pos = torch.tensor(list(positions), dtype=torch.float64)
    tok = torch.tensor([tokens[p] for p in positions], dtype=torch.float64)
    lanes = torch.arange(2 * heads * head_dim, dtype=torch.float64)
    x = (tok[:, None] * 0.7071 + pos[:, None] * 1.618 + layer * 2.718)
    v = torch.sin(x * (1.0 + lanes[None, :] * 0.0137) + lanes[None, :] * 0.31) * 4.0
    return v.view(len(pos), 2, heads, head_dim).permute(1, 0, 2, 3).to(dtype)


def model_kv(tokens, layer, pos, heads, head_dim, dtype):
    """model_kv_all at one position: [2, heads, head_dim]."""
    return model_kv_all(tokens, layer, [pos], heads, head_dim, dtype)[:, 0]


class EngineStandin:
    """One scheduler connector + one worker connector + a paged cache, stepping like vLLM."""

    def __init__(self, sched, worker, caches, block_size):
        self.sched = sched
        self.worker = worker
        self.caches = caches
        self.names = list(caches)
        self.block_size = block_size
        worker.register_kv_caches(caches)

    def prefill(self, req_id, tokens, block_ids, local_computed=0):
        """Runs the whole prompt in one step. Returns (external tokens claimed, load error
        block ids, positions computed here)."""
        req = RequestStandin(req_id, tokens)
        ext, is_async = self.sched.get_num_new_matched_tokens(req, local_computed)
        assert is_async is False
        self.sched.update_state_after_alloc(req, KVCacheBlocksStandin(block_ids), ext)
        computed = local_computed + ext
        so = SchedulerOutputStandin(
            [NewRequestDataStandin(req_id, tokens, block_ids, computed)],
            num_scheduled_tokens={req_id: len(tokens) - computed})
        meta = self.sched.build_connector_meta(so)
        self.worker.bind_connector_metadata(meta)
        self.worker.start_load_kv(None)
        t0 = next(iter(self.caches.values()))
        heads, head_dim = t0.shape[3], t0.shape[4]
        for li, name in enumerate(self.names):
            self.worker.wait_for_layer_load(name)
            kv = self.caches[name]
            todo = range(computed, len(tokens))
            vals = model_kv_all(tokens, li, todo, heads, head_dim, kv.dtype) if todo else None
            for i, pos in enumerate(todo):
                b, s = block_ids[pos // self.block_size], pos % self.block_size
                kv[:, b, s] = vals[:, i]
            self.worker.save_kv_layer(name, kv, None)
        self.worker.wait_for_save()
        errs = self.worker.get_block_ids_with_load_errors()
        self.worker.clear_connector_metadata()
        return ext, errs, computed

    def finish(self, req_id, tokens, block_ids, timeout_s=30.0):
        """request_finished + get_finished until the worker releases the blocks. Returns
        whether the scheduler had to delay freeing them."""
        import time
        delay, _ = self.sched.request_finished(RequestStandin(req_id, tokens), block_ids)
        if not delay:
            return False
        finished = {req_id}
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            sending, recving = self.worker.get_finished(finished)
            finished = set()
            assert recving is None
            if sending and req_id in sending:
                return True
            time.sleep(0.01)
        raise AssertionError("get_finished never reported %s" % req_id)


def expected_kv(tokens, layer, pos, heads, head_dim, dtype):
    return model_kv(tokens, layer, pos, heads, head_dim, dtype)


def gathered(kv, tokens, block_ids, block_size):
    """[2, len(tokens), heads, head_dim] of a request's positions read through its blocks."""
    idx = torch.tensor([block_ids[p // block_size] for p in range(len(tokens))])
    slot = torch.tensor([p % block_size for p in range(len(tokens))])
    return kv[:, idx, slot]
