# SPDX-License-Identifier: Apache-2.0
"""Connector configuration: precedence extra config > environment > file > defaults, aliases
of the seed deployment, and errors that name the key and its source."""
import json

import pytest

from kvstash import config


def test_precedence(tmp_path):
    f = tmp_path / "kv.json"
    f.write_text(json.dumps({"master": "127.0.0.1:1", "chunk_size": 64, "cache_mode": "read_only",
                             "kv_expire_time": 30}))
    env = {"KVSTASH_CONNECTOR_CONFIG": str(f), "KVSTASH_CHUNK_SIZE": "128"}
    c = config.load({"kv_expire_time": 60}, env=env)
    assert c["master"] == "127.0.0.1:1" and c["_source"]["master"].startswith("config file")
    assert c["chunk_size"] == 128 and "environment" in c["_source"]["chunk_size"]
    assert c["kv_expire_time"] == 60 and c["_source"]["kv_expire_time"] == "extra config"
    assert c["cache_mode"] == "read_only"
    assert c["threads"] == 2 and c["_source"]["threads"] == "default"
    c = config.load({"config_file": str(f), "master_server_address": "h:2"}, env={})
    assert c["master"] == "h:2" and c["chunk_size"] == 64


def test_bad_values(tmp_path):
    with pytest.raises(ValueError, match="chunk_size.*extra config"):
        config.load({"chunk_size": "lots"}, env={})
    with pytest.raises(ValueError, match="cache_mode.*KVSTASH_CACHE_MODE"):
        config.load({}, env={"KVSTASH_CACHE_MODE": "sometimes"})
    with pytest.raises(ValueError, match="cannot read"):
        config.load({"config_file": str(tmp_path / "missing.json")}, env={})
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        config.load({"config_file": str(bad)}, env={})
    with pytest.raises(ValueError, match="needs 'master'"):
        config.open_store(config.load({}, env={}))
