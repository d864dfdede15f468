# SPDX-License-Identifier: Apache-2.0
"""One stand-in vLLM engine process for the end-to-end tests: runs one prefill of a prompt
through the connector against a real store and prints a JSON result line.

usage: connector_proc.py CONFIG_JSON
  CONFIG_JSON: {"extra": {...}, "tokens": [...], "blocks": [...], "dtype": "bfloat16",
                "layout": "NHD", "layers": N, "num_blocks": N, "req": "id"}
Result: {"ext": claimed tokens, "errors": [block ids], "identical": bool (every position of
the prompt holds the model's bytes), "finished": bool, "stats": {...}}
"""
import json
import sys

import torch

from kvstash import vllm_connector as vc
from vllm_standin import (EngineStandin, gathered, model_kv_all, paged_cache,
                          vllm_config_standin)


def main():
    c = json.loads(sys.argv[1])
    dtype = getattr(torch, c.get("dtype", "bfloat16"))
    bs, heads, hd = c.get("block_size", 16), c.get("heads", 8), c.get("head_dim", 128)
    layers = c.get("layers", 4)
    cfg = vllm_config_standin(c["extra"], block_size=bs, num_layers=layers,
                              dtype=c.get("dtype", "bfloat16"))
    sched = vc.KvstashConnector(cfg, vc.KVConnectorRole.SCHEDULER)
    worker = vc.KvstashConnector(cfg, vc.KVConnectorRole.WORKER)
    caches = paged_cache(layers, c.get("num_blocks", 64), bs, heads, hd, dtype,
                         c.get("layout", "NHD"))
    eng = EngineStandin(sched, worker, caches, bs)
    tokens, blocks = c["tokens"], c["blocks"]
    ext, errs, _ = eng.prefill(c.get("req", "r"), tokens, blocks)
    identical = True
    for li, name in enumerate(eng.names):
        got = gathered(caches[name], tokens, blocks, bs)
        want = model_kv_all(tokens, li, range(len(tokens)), heads, hd, dtype)
        if not torch.equal(got.view(torch.int16), want.view(torch.int16)):
            identical = False
    finished = eng.finish(c.get("req", "r"), tokens, blocks)
    stats = dict(worker.stats)
    worker.shutdown()
    sched.shutdown()
    print(json.dumps({"ext": ext, "errors": sorted(errs), "identical": identical,
                      "finished": finished, "stats": stats}))


if __name__ == "__main__":
    main()
