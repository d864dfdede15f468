# SPDX-License-Identifier: Apache-2.0
"""kvstash as an SGLang HiCache L3 storage backend.

    python -m sglang.launch_server --model-path MODEL --enable-hierarchical-cache \
        --hicache-storage-backend dynamic \
        --hicache-storage-backend-extra-config '{"backend_name": "kvstash",
            "module_path": "kvstash.sglang_backend", "class_name": "KvstashHiCache",
            "master": "127.0.0.1:50051"}'

SGLang names pages by its own chained hashes (already deterministic); this backend appends
"_<model>_<tp rank>_<tp size>" (MLA models share pages across ranks: no rank) and stores each
page under "sglang/<key>" — for the zero-copy v1 calls as two objects, K and V, read and
written straight from and into the host memory pool (no staging copy). A page that cannot be
read is reported False, never returned with wrong bytes; SGLang then recomputes it.

Configuration: the extra-config JSON accepts the connector keys of kvstash.config (master,
metadata, cluster, protocol, kv_expire_time, replicas, timeout_ms, config_file), with the same
environment and config-file fallbacks.
"""
import logging

try:
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage
    HAVE_SGLANG = True
except ImportError:  # pragma: no cover - exercised where SGLang is absent
    HAVE_SGLANG = False

    class HiCacheStorage:
        """Stand-in for SGLang's HiCacheStorage base class when SGLang is not installed."""

        def register_mem_pool_host(self, mem_pool_host):
            self.mem_pool_host = mem_pool_host

from . import config as _config
from .store import buffer_of

log = logging.getLogger("kvstash.sglang")


def _slug(s):
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(s or "")) or "model"


class KvstashHiCache(HiCacheStorage):
    """HiCache storage over the kvstash store (see the module comment)."""

    def __init__(self, storage_config=None, *args, store=None, **kwargs):
        extra = dict(getattr(storage_config, "extra_config", None) or {})
        self.cfg = _config.load(extra)
        model = _slug(getattr(storage_config, "model_name", None) or self.cfg["model"])
        tp_rank = int(getattr(storage_config, "tp_rank", 0) or 0)
        tp_size = int(getattr(storage_config, "tp_size", 1) or 1)
        self.is_mla = bool(getattr(storage_config, "is_mla_model", False))
        self.suffix = "_" + model if self.is_mla else "_%s_%d_%d" % (model, tp_rank, tp_size)
        pp_size = int(getattr(storage_config, "pp_size", 1) or 1)
        if pp_size > 1:
            self.suffix += "_pp%d_%d" % (int(getattr(storage_config, "pp_rank", 0)), pp_size)
        self.store = store if store is not None else _config.open_store(self.cfg)
        self._own_store = store is None
        self.ttl = self.cfg["kv_expire_time"]
        self.replicas = self.cfg["replicas"]
        # SGLang's dynamic factory calls backend_class(storage_config, kwargs_dict); built-in
        # style calls pass the host pool positionally. register_mem_pool_host() comes later.
        self.mem_pool_host = None
        cands = list(args) + [kwargs.get("mem_pool_host")]
        cands += [a.get("mem_pool_host") for a in args if isinstance(a, dict)]
        for a in cands:
            if a is not None and hasattr(a, "get_page_buffer_meta"):
                self.mem_pool_host = a

    def _k(self, key):
        return "sglang/" + str(key) + self.suffix

    def close(self):
        if self._own_store and self.store is not None:
            self.store.close()
            self.store = None

    # ---- single keys ----

    def get(self, key, target_location=None, target_sizes=None):
        k = self._k(key)
        try:
            if target_location is None:
                data = self.store.get(k)
                try:
                    import torch
                    return torch.frombuffer(bytearray(data), dtype=torch.uint8)
                except ImportError:
                    return data
            if isinstance(target_location, int):
                r = self.store.batch_get_ptrs([k], [target_location], [int(target_sizes)])[0]
                return target_location if r >= 0 else None
            self.store.get_into(k, target_location)
            return target_location
        except Exception as e:  # noqa: BLE001 - a miss or a failed read: SGLang recomputes
            log.debug("kvstash: get %s: %s", k, e)
            return None

    def set(self, key, value=None, target_location=None, target_sizes=None):
        k = self._k(key)
        try:
            if value is None and isinstance(target_location, int):
                r = self.store.batch_put_ptrs([k], [target_location], [int(target_sizes)],
                                              replicas=self.replicas, ttl_s=self.ttl)[0]
                return r in (0, -4)
            self.store.put(k, value if value is not None else target_location,
                           replicas=self.replicas, ttl_s=self.ttl)
            return True
        except Exception as e:  # noqa: BLE001
            if getattr(e, "name", "") == "KV_EEXIST":
                return True
            log.debug("kvstash: set %s: %s", k, e)
            return False

    def exists(self, key):
        try:
            return bool(self.store.exists(self._k(key)))
        except Exception:  # noqa: BLE001 - unreachable store: a miss
            return False

    # ---- batches ----

    def batch_get(self, keys, target_locations=None, target_sizes=None):
        if target_locations is None:
            return [self.get(k) for k in keys]
        sizes = target_sizes if target_sizes is not None else [None] * len(keys)
        return [self.get(k, t, s) for k, t, s in zip(keys, target_locations, sizes)]

    def batch_set(self, keys, values=None, target_locations=None, target_sizes=None):
        if values is not None:
            return all(self.set(k, v) for k, v in zip(keys, values))
        sizes = target_sizes if target_sizes is not None else [None] * len(keys)
        return all(self.set(k, None, t, s) for k, t, s in zip(keys, target_locations, sizes))

    def batch_exists(self, keys, extra_info=None):
        """How many leading keys exist (one store round trip)."""
        keys = list(keys)
        if not keys:
            return 0
        names = []
        for k in keys:
            names.extend(self._parts(k, self._zero_copy_parts()))
        try:
            codes = self.store.batch_exists_codes(names)
        except Exception:  # noqa: BLE001
            return 0
        per = len(names) // len(keys)
        n = 0
        for i in range(len(keys)):
            if all(c == 1 for c in codes[i * per:(i + 1) * per]):
                n += 1
            else:
                break
        return n

    # ---- zero copy (host memory pool) ----

    def register_mem_pool_host(self, mem_pool_host):
        self.mem_pool_host = mem_pool_host

    def _zero_copy_parts(self):
        """1 object per page for MLA, 2 (K, V) otherwise; 1 when no pool is registered (the
        plain get/set API stores one object per page)."""
        if self.mem_pool_host is None:
            return 1
        return 1 if self.is_mla else 2

    def _parts(self, key, parts):
        base = self._k(key)
        return [base] if parts == 1 else [base + "_k", base + "_v"]

    def _page_meta(self, keys, host_indices):
        if self.mem_pool_host is None:
            raise RuntimeError("kvstash: batch_*_v1 needs register_mem_pool_host() first")
        ptrs, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        parts = len(ptrs) // max(1, len(keys))
        if parts not in (1, 2) or parts * len(keys) != len(ptrs):
            raise ValueError("kvstash: host pool returned %d buffers for %d pages"
                             % (len(ptrs), len(keys)))
        names = []
        for k in keys:
            names.extend(self._parts(k, parts))
        return names, list(ptrs), [int(s) for s in sizes], parts

    def batch_get_v1(self, keys, host_indices, extra_info=None):
        keys = list(keys)
        if not keys:
            return []
        names, ptrs, sizes, parts = self._page_meta(keys, host_indices)
        try:
            res = self.store.batch_get_ptrs(names, ptrs, sizes)
        except Exception as e:  # noqa: BLE001
            log.warning("kvstash: batch_get_v1 failed: %s", e)
            return [False] * len(keys)
        ok = [r == s for r, s in zip(res, sizes)]
        out = []
        for i in range(len(keys)):
            out.append(all(ok[i * parts:(i + 1) * parts]))
        # HiCache uses the leading run of hits: stop at the first miss
        if False in out:
            first = out.index(False)
            out = out[:first] + [False] * (len(out) - first)
        return out

    def batch_set_v1(self, keys, host_indices, extra_info=None):
        keys = list(keys)
        if not keys:
            return []
        names, ptrs, sizes, parts = self._page_meta(keys, host_indices)
        try:
            res = self.store.batch_put_ptrs(names, ptrs, sizes, replicas=self.replicas,
                                            ttl_s=self.ttl)
        except Exception as e:  # noqa: BLE001
            log.warning("kvstash: batch_set_v1 failed: %s", e)
            return [False] * len(keys)
        ok = [r in (0, -4) for r in res]  # KV_EEXIST: the same page is already stored
        return [all(ok[i * parts:(i + 1) * parts]) for i in range(len(keys))]

    def clear(self):
        """The store is shared by every engine: nothing is removed here."""
        return None

    def get_stats(self):
        return None


__all__ = ["KvstashHiCache", "HAVE_SGLANG", "buffer_of"]
