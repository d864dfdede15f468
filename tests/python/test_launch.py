# SPDX-License-Identifier: Apache-2.0
"""The vLLM launcher's argument rewriting (a pure function) and its clear exit without vLLM."""
import json
import os
import subprocess
import sys

import pytest

from kvstash.vllm_launch import UsageError, build_argv


def _ktc(argv):
    i = argv.index("--kv-transfer-config")
    return json.loads(argv[i + 1])


def test_adds_kv_transfer_config():
    out = build_argv(["Qwen/Qwen3-0.6B", "--port", "8001", "--kvstash-master", "h:1",
                      "--kvstash-config=/etc/kv.json"])
    assert out[:4] == ["serve", "Qwen/Qwen3-0.6B", "--port", "8001"]
    ktc = _ktc(out)
    assert ktc == {"kv_connector": "KvstashConnector",
                   "kv_connector_module_path": "kvstash.vllm_connector", "kv_role": "kv_both",
                   "kv_connector_extra_config": {"master": "h:1",
                                                 "config_file": "/etc/kv.json"}}
    assert "--kvstash-master" not in out
    out = build_argv(["serve", "m", "--kvstash-connector", "DistributedKVConnector"])
    assert out.count("serve") == 1 and _ktc(out)["kv_connector"] == "DistributedKVConnector"


def test_keeps_an_explicit_config():
    mine = '{"kv_connector":"Other","kv_role":"kv_both"}'
    for args in (["m", "--kv-transfer-config", mine], ["m", "--kv-transfer-config=" + mine]):
        out = build_argv(args)
        assert out == ["serve"] + args
    with pytest.raises(UsageError, match="conflict"):
        build_argv(["m", "--kv-transfer-config", mine, "--kvstash-master", "h:1"])
    with pytest.raises(UsageError, match="needs a value"):
        build_argv(["m", "--kvstash-master"])


def test_exits_clearly_without_vllm():
    import importlib.util
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    p = subprocess.run([sys.executable, "-m", "kvstash.vllm_launch", "m"], capture_output=True,
                       text=True, env=dict(os.environ))
    assert p.returncode == 2
    assert "vLLM is not importable" in p.stderr and "--kv-transfer-config" in p.stderr
