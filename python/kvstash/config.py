# SPDX-License-Identifier: Apache-2.0
"""Configuration of the engine connectors (vLLM connector, SGLang HiCache backend).

Precedence, highest first: the engine's extra config (vLLM kv_connector_extra_config, SGLang
--hicache-storage-backend-extra-config) > environment (KVSTASH_<KEY>) > a JSON config file
(key "config_file" or $KVSTASH_CONNECTOR_CONFIG) > defaults. A bad value raises ValueError
naming the key and where it came from.
"""
import json
import logging
import os

log = logging.getLogger("kvstash")

CACHE_MODES = ("read_write", "read_only", "write_only", "off")


def _str(v):
    return str(v)


def _int(lo, hi):
    def conv(v):
        if isinstance(v, bool):
            raise ValueError("not an integer")
        if isinstance(v, str):
            v = v.strip()
        iv = int(v)
        if iv < lo or iv > hi:
            raise ValueError("%d is outside [%d, %d]" % (iv, lo, hi))
        return iv
    return conv


def _bool(v):
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def _mode(v):
    s = str(v).strip().lower().replace("-", "_")
    if s not in CACHE_MODES:
        raise ValueError("must be one of %s" % ", ".join(CACHE_MODES))
    return s


# key: (converter, default, help)
TABLE = {
    "master": (_str, None, "store master HOST:PORT (or use metadata)"),
    "metadata": (_str, None, "metadata URL for master discovery (http://, etcd://, redis://)"),
    "cluster": (_str, None, "cluster name (default: default)"),
    "protocol": (_str, "auto", "transfer protocol: auto, tcp, shm, rdma"),
    "kv_expire_time": (_int(0, 10 ** 9), 0, "seconds a saved block lives (0 = master default)"),
    "chunk_size": (_int(1, 1 << 20), 256, "tokens per stored chunk (a multiple of the block "
                                          "size; rounded up to one)"),
    "cache_mode": (_mode, "read_write", "read_write, read_only (never save), write_only "
                                        "(never load) or off"),
    "replicas": (_int(1, 16), 1, "replicas of each saved chunk"),
    "threads": (_int(1, 64), 2, "copy engine worker threads per worker process"),
    "timeout_ms": (_int(1, 3600 * 1000), 10000, "timeout of one store operation"),
    "poll_spin_us": (_int(-1, 10000), 0, "microseconds a store call polls for the master's "
                                         "answer before sleeping (0 = default 50, -1 = never)"),
    "kv_layout": (_str, None, "KV layout name used in keys (default: vLLM's, else NHD)"),
    "model": (_str, None, "model name used in keys (default: the engine's model)"),
    "save_sync": (_bool, False, "wait for saves at the end of each forward (default: async)"),
    "host_staging": (_bool, False, "copy through per-job host buffers (always on for device "
                                   "KV caches)"),
    "config_file": (_str, None, "JSON file with any of these keys"),
}

# names used by the seed deployment and Mooncake's connector configs
ALIASES = {
    "master_server_address": "master",
    "metadata_server": "metadata",
    "kvstash_master": "master",
    "kvstash_metadata": "metadata",
}


def _canon(d, source):
    out = {}
    for k, v in (d or {}).items():
        k2 = ALIASES.get(k, k)
        if k2 not in TABLE:
            log.debug("kvstash: ignoring unknown connector key %r from %s", k, source)
            continue
        out[k2] = v
    return out


def load(extra=None, env=None):
    """The effective connector configuration as a dict of every TABLE key, plus "_source"
    mapping each key to where its value came from."""
    env = os.environ if env is None else env
    extra = _canon(extra, "extra config")
    envd = {}
    for k in TABLE:
        ev = env.get("KVSTASH_" + k.upper())
        if ev is not None and ev != "":
            envd[k] = ev
    path = extra.get("config_file") or envd.get("config_file") or \
        env.get("KVSTASH_CONNECTOR_CONFIG")
    filed = {}
    if path:
        try:
            with open(path) as f:
                doc = json.load(f)
        except OSError as e:
            raise ValueError("kvstash: cannot read connector config file %s: %s" % (path, e))
        except json.JSONDecodeError as e:
            raise ValueError("kvstash: connector config file %s is not valid JSON: %s"
                             % (path, e))
        if not isinstance(doc, dict):
            raise ValueError("kvstash: connector config file %s must hold a JSON object" % path)
        filed = _canon(doc, path)
    cfg = {}
    src = {}
    for k, (conv, default, _help) in TABLE.items():
        for layer, name in ((extra, "extra config"), (envd, "environment KVSTASH_" + k.upper()),
                            (filed, "config file %s" % path)):
            if k in layer and layer[k] is not None:
                try:
                    cfg[k] = conv(layer[k])
                except (TypeError, ValueError) as e:
                    raise ValueError("kvstash: bad value %r for %s (from %s): %s"
                                     % (layer[k], k, name, e)) from None
                src[k] = name
                break
        else:
            cfg[k] = default
            src[k] = "default"
    cfg["_source"] = src
    return cfg


def open_store(cfg):
    """A kvstash.Store for a connector configuration."""
    from .store import Store
    if not cfg.get("master") and not cfg.get("metadata"):
        raise ValueError("kvstash: the connector needs 'master' (HOST:PORT) or 'metadata' (URL) "
                         "in its extra config, KVSTASH_MASTER/KVSTASH_METADATA, or a config file")
    return Store(master=cfg.get("master"), metadata=cfg.get("metadata"),
                 cluster=cfg.get("cluster"), protocol=cfg.get("protocol"),
                 timeout_ms=cfg.get("timeout_ms") or 0,
                 poll_spin_us=cfg.get("poll_spin_us") or 0)
