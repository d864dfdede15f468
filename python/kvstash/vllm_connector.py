# SPDX-License-Identifier: Apache-2.0
"""kvstash as a vLLM V1 KV connector: prefix KV blocks saved to and loaded from the store.

Load it with no patch to vLLM:

    vllm serve MODEL --kv-transfer-config '{"kv_connector": "KvstashConnector",
        "kv_connector_module_path": "kvstash.vllm_connector", "kv_role": "kv_both",
        "kv_connector_extra_config": {"master": "127.0.0.1:50051"}}'

(or `python -m kvstash.vllm_launch MODEL ...`, which adds that flag). The class is also
exported as DistributedKVConnector, the name the seed deployment used.

Design:
  - Keys (kvstash.keys): prompt tokens are cut in chunks of chunk_size tokens (a multiple of
    the block size); chunk i's key is a SHA-256 chain over the token ids of chunks 0..i and the
    namespace (model, KV dtype, layout, TP size, chunk size), then "/tp<rank>/L<layer>". The
    same prompt gives the same keys in every process and on every host.
  - Scheduler side: get_num_new_matched_tokens() asks the store (one batch_exists) which
    leading chunks exist for every TP rank, and claims them, never the last prompt token.
    build_connector_meta() turns the allocation into per-request load specs (chunk keys, block
    ids, the token range to write) and save specs (full prompt chunks computed by the end of
    this step, not already in the store).
  - Worker side: start_load_kv() submits one load job per request to the C copy engine
    (kvstash.kvconn), which loads layer by layer on its own threads; wait_for_layer_load()
    waits for one layer. save_kv_layer() submits that layer's save job and returns at once.
    Saves finish in the background: a finished request whose saves still run keeps its blocks
    (request_finished returns True) until get_finished() reports it.
  - Failures: a chunk that did not load completely (store down, evicted, checksum, timeout) is
    reported through get_block_ids_with_load_errors() so vLLM recomputes it; its rows were not
    written from a bad object. A failed save only costs a future miss.
  - KV caches in host memory (vLLM's CPU backend) are read and written in place by the C
    threads. Device caches (CUDA) go through per-job host staging buffers (pinned): a save
    gathers the layer's blocks to the host, then the C threads store them; a load fills
    staging buffers and wait_for_layer_load() copies that layer's blocks to the device.
"""
import enum
import logging
import threading

try:  # vLLM is optional: without it this module still imports (tests, docs, tooling)
    from vllm.distributed.kv_transfer.kv_connector.v1.base import (  # noqa: F401
        KVConnectorBase_V1, KVConnectorMetadata, KVConnectorRole)
    HAVE_VLLM = True
except ImportError:  # pragma: no cover - exercised where vLLM is absent
    HAVE_VLLM = False

    class KVConnectorRole(enum.Enum):
        """Stand-in for vLLM's enum when vLLM is not installed."""
        SCHEDULER = 0
        WORKER = 1

    class KVConnectorMetadata:
        """Stand-in for vLLM's metadata base class when vLLM is not installed."""

    class KVConnectorBase_V1:
        """Minimal stand-in for vLLM's KVConnectorBase_V1 when vLLM is not installed: only the
        state and helpers the real base class provides to subclasses."""

        def __init__(self, vllm_config, role, kv_cache_config=None):
            self._connector_metadata = None
            self._vllm_config = vllm_config
            self._kv_transfer_config = getattr(vllm_config, "kv_transfer_config", None)
            self._kv_cache_config = kv_cache_config
            self._role = role

        @property
        def role(self):
            return self._role

        def bind_connector_metadata(self, connector_metadata):
            self._connector_metadata = connector_metadata

        def clear_connector_metadata(self):
            self._connector_metadata = None

        def _get_connector_metadata(self):
            assert self._connector_metadata is not None
            return self._connector_metadata

        def has_connector_metadata(self):
            return self._connector_metadata is not None

from . import config as _config
from .keys import ChunkHasher, claimable_tokens

log = logging.getLogger("kvstash.vllm")

# Test hook: a callable(cfg) -> object with put/get (see kvconn.PyBackend) and exists_codes(keys)
# used instead of a real store. None in production.
BACKEND_FACTORY = None


class LoadSpec:
    """Load of one request: chunk digests, their block ids and the token range to write."""

    def __init__(self, req_id, digests, block_ids, tok_begin, tok_end):
        self.req_id = req_id
        self.digests = digests
        self.block_ids = block_ids
        self.tok_begin = tok_begin
        self.tok_end = tok_end


class SaveSpec:
    """Save of one full chunk of one request."""

    def __init__(self, req_id, digest, block_ids):
        self.req_id = req_id
        self.digest = digest
        self.block_ids = block_ids


class KvstashConnectorMetadata(KVConnectorMetadata):
    """Scheduler -> worker: this step's loads and saves (picklable plain data)."""

    def __init__(self):
        self.loads = []
        self.saves = []
        self.preempted = []


class _ReqState:
    __slots__ = ("tokens", "digests", "hit_chunks", "local_computed", "load", "block_ids",
                 "saved_chunks", "save_ever")

    def __init__(self, tokens, digests):
        self.tokens = tokens
        self.digests = digests
        self.hit_chunks = 0
        self.local_computed = 0
        self.load = None  # (begin, end) tokens to load, set after allocation
        self.block_ids = []
        self.saved_chunks = 0
        self.save_ever = False


def _group0(block_ids):
    """The block ids of the first KV cache group (vLLM passes a tuple of lists per group)."""
    if block_ids is None:
        return []
    if isinstance(block_ids, tuple) or (block_ids and isinstance(block_ids[0], (list, tuple))):
        return list(block_ids[0]) if block_ids else []
    return list(block_ids)


def _vllm_layout():
    for mod, fn in (("vllm.v1.attention.backends.utils", "get_kv_cache_layout"),
                    ("vllm.distributed.kv_transfer.kv_connector.utils", "get_kv_connector_cache_layout")):
        try:
            m = __import__(mod, fromlist=[fn])
            return str(getattr(m, fn)())
        except Exception:  # noqa: BLE001 - absent or not callable here: fall back
            continue
    return "NHD"


def _tp_rank(vllm_config):
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
        return int(get_tensor_model_parallel_rank())
    except Exception:  # noqa: BLE001 - no vLLM or no initialised group (tests, scheduler)
        return int(getattr(getattr(vllm_config, "parallel_config", None), "rank", 0) or 0)


class _StoreBackend:
    """What the connector needs from storage, over a kvstash.Store."""

    def __init__(self, store):
        self.store = store

    def exists_codes(self, keys):
        return self.store.batch_exists_codes(keys)

    def remove(self, key):
        self.store.remove(key)


class KvstashConnector(KVConnectorBase_V1):
    """vLLM V1 connector over the kvstash store (see the module comment)."""

    def __init__(self, vllm_config, role, kv_cache_config=None):
        try:
            super().__init__(vllm_config, role, kv_cache_config)
        except TypeError:  # vLLM before the 3-argument constructor
            super().__init__(vllm_config, role)
        ktc = getattr(vllm_config, "kv_transfer_config", None)
        extra = dict(getattr(ktc, "kv_connector_extra_config", None) or {})
        self.cfg = _config.load(extra)
        mc = getattr(vllm_config, "model_config", None)
        cc = getattr(vllm_config, "cache_config", None)
        pc = getattr(vllm_config, "parallel_config", None)
        self.block_size = int(getattr(cc, "block_size", 16) or 16)
        chunk = self.cfg["chunk_size"]
        if chunk % self.block_size:
            chunk = (chunk // self.block_size + 1) * self.block_size
            log.warning("kvstash: chunk_size rounded up to %d (a multiple of block size %d)",
                        chunk, self.block_size)
        self.chunk_tokens = chunk
        self.chunk_blocks = chunk // self.block_size
        model = self.cfg["model"] or str(getattr(mc, "model", "model"))
        dtype = getattr(cc, "cache_dtype", "auto")
        if dtype in (None, "auto"):
            dtype = str(getattr(mc, "dtype", "auto"))
        self.layout = self.cfg["kv_layout"] or _vllm_layout()
        self.tp_size = int(getattr(pc, "tensor_parallel_size", 1) or 1)
        self.num_layers = None
        try:
            self.num_layers = int(mc.get_num_layers(pc))
        except Exception:  # noqa: BLE001 - optional: only sharpens the existence check
            pass
        self.hasher = ChunkHasher(model, str(dtype).replace("torch.", ""), self.layout,
                                  self.tp_size, self.chunk_tokens)
        self.mode = self.cfg["cache_mode"]
        self._store = None
        self._backend = None
        if BACKEND_FACTORY is not None:
            self._backend = BACKEND_FACTORY(self.cfg)
        elif self.mode != "off":
            self._store = _config.open_store(self.cfg)
            self._backend = _StoreBackend(self._store)
        # scheduler side
        self._reqs = {}
        # worker side
        self._lock = threading.Lock()  # guards the job lists below (vLLM may call from threads)
        self._engine = None
        self._staging = False
        self._kv = {}  # layer index -> (K, V) views
        self._layer_idx = {}
        self._nlayers = 0
        self._rank = _tp_rank(vllm_config)
        self._load_jobs = []  # (LoadSpec, job id)
        self._load_errors = set()
        self._save_jobs = []  # (job id, n, [req ids])
        self._pending = {}  # req id -> unfinished save jobs
        self._saving_reqs = set()  # reqs with at least one save on this worker
        self._finishing = set()  # finished reqs waiting for their saves
        self.stats = {"saved_chunks": 0, "save_errors": 0, "loaded_chunks": 0,
                      "load_errors": 0}

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config):
        """Layer-by-layer waits and saves run Python between layers: CUDA graphs must be
        piecewise so they are not skipped on replay."""
        return True

    @classmethod
    def get_required_kvcache_layout(cls, vllm_config):
        return None  # any: strides are read from the tensors

    # ------------------------------------------------------------------ scheduler side

    def _state(self, req_id, tokens):
        st = self._reqs.get(req_id)
        if st is None or st.tokens != tokens:
            st = _ReqState(tokens, self.hasher.hashes(tokens))
            self._reqs[req_id] = st
        return st

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        tokens = list(request.prompt_token_ids or [])
        st = self._state(request.request_id, tokens)
        st.local_computed = num_computed_tokens
        st.hit_chunks = 0
        if self.mode in ("write_only", "off") or not st.digests or self._backend is None:
            return 0, False
        layers = [0] if not self.num_layers else sorted({0, self.num_layers - 1})
        keys = [self.hasher.chunk_key(d, r) + "/L%d" % l
                for d in st.digests for r in range(self.tp_size) for l in layers]
        try:
            codes = self._backend.exists_codes(keys)
        except Exception as e:  # noqa: BLE001 - a store failure is a miss, never a crash
            log.warning("kvstash: lookup failed, treating as a miss: %s", e)
            return 0, False
        per = self.tp_size * len(layers)
        hits = 0
        for i in range(len(st.digests)):
            if all(c == 1 for c in codes[i * per:(i + 1) * per]):
                hits += 1
            else:
                break
        st.hit_chunks = hits
        matched = claimable_tokens(len(tokens), hits, self.chunk_tokens)
        return max(0, matched - num_computed_tokens), False

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        st = self._reqs.get(request.request_id)
        if st is None:
            return
        if num_external_tokens > 0:
            st.load = (st.local_computed, st.local_computed + num_external_tokens)
        else:
            st.load = None

    def _load_spec(self, req_id, st):
        begin, end = st.load
        c, bs, cb = self.chunk_tokens, self.block_size, self.chunk_blocks
        digests, blocks, tb, te = [], [], [], []
        for ci in range(begin // c, (end + c - 1) // c):
            cs = ci * c
            b, e = max(begin, cs) - cs, min(end, cs + c) - cs
            ids = []
            for k in range(cb):
                pos = ci * cb + k
                inside = k * bs < e and (k + 1) * bs > b
                ids.append(st.block_ids[pos] if inside and pos < len(st.block_ids) else -1)
            digests.append(st.digests[ci])
            blocks.append(ids)
            tb.append(b)
            te.append(e)
        return LoadSpec(req_id, digests, blocks, tb, te)

    def _plan_saves(self, req_id, st, computed_end, meta):
        if self.mode in ("read_only", "off"):
            return
        first = max(st.saved_chunks, st.hit_chunks)
        limit = min(computed_end, len(st.tokens)) // self.chunk_tokens
        limit = min(limit, len(st.digests), len(st.block_ids) // self.chunk_blocks)
        for ci in range(first, limit):
            ids = st.block_ids[ci * self.chunk_blocks:(ci + 1) * self.chunk_blocks]
            meta.saves.append(SaveSpec(req_id, st.digests[ci], list(ids)))
            st.save_ever = True
        st.saved_chunks = max(st.saved_chunks, limit)

    def build_connector_meta(self, scheduler_output):
        meta = KvstashConnectorMetadata()
        nsched = getattr(scheduler_output, "num_scheduled_tokens", {}) or {}
        for nr in getattr(scheduler_output, "scheduled_new_reqs", []) or []:
            rid = nr.req_id
            st = self._state(rid, list(nr.prompt_token_ids or []))
            st.block_ids = _group0(nr.block_ids)
            if st.load is not None:
                meta.loads.append(self._load_spec(rid, st))
                st.load = None
            end = int(nr.num_computed_tokens) + int(nsched.get(rid, 0))
            self._plan_saves(rid, st, end, meta)
        cached = getattr(scheduler_output, "scheduled_cached_reqs", None)
        for rid, new_ids, ncomp, resumed in self._cached_items(cached):
            st = self._reqs.get(rid)
            if st is None:
                continue
            if resumed:
                st.block_ids = _group0(new_ids)
            elif new_ids:
                st.block_ids.extend(_group0(new_ids))
            self._plan_saves(rid, st, int(ncomp) + int(nsched.get(rid, 0)), meta)
        meta.preempted = list(getattr(scheduler_output, "preempted_req_ids", None) or [])
        return meta

    @staticmethod
    def _cached_items(cached):
        """(req_id, new_block_ids, num_computed_tokens, resumed) for both vLLM formats: the
        CachedRequestData of parallel lists, and the older list of per-request objects."""
        if cached is None:
            return
        if isinstance(cached, (list, tuple)):
            for c in cached:
                yield (c.req_id, getattr(c, "new_block_ids", None), c.num_computed_tokens,
                       bool(getattr(c, "resumed_from_preemption", False)))
            return
        rids = list(getattr(cached, "req_ids", []) or [])
        new_ids = list(getattr(cached, "new_block_ids", []) or [None] * len(rids))
        ncomp = list(getattr(cached, "num_computed_tokens", []) or [0] * len(rids))
        resumed = getattr(cached, "resumed_from_preemption", None)
        resumed_set = getattr(cached, "resumed_req_ids", None)
        for i, rid in enumerate(rids):
            if resumed_set is not None:
                r = rid in resumed_set
            elif resumed is not None and i < len(resumed):
                r = bool(resumed[i])
            else:
                r = False
            yield rid, new_ids[i] if i < len(new_ids) else None, ncomp[i], r

    def request_finished(self, request, block_ids):
        st = self._reqs.pop(request.request_id, None)
        # Blocks with saves scheduled stay allocated until get_finished() reports the request.
        return bool(st is not None and st.save_ever), None

    # ------------------------------------------------------------------ worker side

    def register_kv_caches(self, kv_caches):
        from .kvconn import CopyEngine, layout_of
        names = list(kv_caches.keys())
        if not names:
            raise ValueError("kvstash: register_kv_caches got no layers")
        first = kv_caches[names[0]]
        t0 = first[0] if isinstance(first, (tuple, list)) else first
        on_host = t0.device.type == "cpu"
        self._staging = bool(self.cfg["host_staging"]) or not on_host
        if on_host:
            lay = layout_of(first)
            _, _, _, _, _, _, bs, nh, hd, es, lname = lay
        else:  # device cache: shape only; the engine sees host staging buffers
            k = _split_kv(first)[0]
            _, bs, nh, hd = k.shape
            es = k.element_size()
            st = k.stride()
            lname = "HND" if nh > 1 and st[2] > st[1] else "NHD"
        if bs != self.block_size:
            raise ValueError("kvstash: KV cache block size %d differs from the configured %d"
                             % (bs, self.block_size))
        if lname != self.layout:
            log.warning("kvstash: KV cache tensors are %s but keys use %s (set kv_layout); "
                        "stored bytes are layout-independent", lname, self.layout)
        if self.mode == "off":
            return
        self._shape = (bs, nh, hd, _split_kv(first)[0].dtype)
        self._pin = not on_host
        if self._store is not None:
            self._engine = CopyEngine(self._store, block_size=bs, chunk_blocks=self.chunk_blocks,
                                      num_heads=nh, row_bytes=hd * es,
                                      threads=self.cfg["threads"],
                                      ttl_s=self.cfg["kv_expire_time"],
                                      replicas=self.cfg["replicas"])
        else:
            self._engine = CopyEngine(backend=self._backend, block_size=bs,
                                      chunk_blocks=self.chunk_blocks, num_heads=nh,
                                      row_bytes=hd * es, threads=self.cfg["threads"])
        self._kv = {}
        for i, name in enumerate(names):
            if not self._staging:
                self._engine.register_layer(i, kv_caches[name])
            self._kv[i] = _split_kv(kv_caches[name])
            self._layer_idx[name] = i
        self._nlayers = len(names)

    # ---- host staging (device caches): per-job host buffers [2, n, block, heads, dim] ----

    def _stage_alloc(self, n):
        import torch
        bs, nh, hd, dtype = self._shape
        return torch.empty((2, n, bs, nh, hd), dtype=dtype, pin_memory=self._pin)

    def _stage_gather(self, layer, ids, stage, rows=None):
        """Copies blocks `ids` of a layer (device) into staging rows (all, or the given)."""
        import torch
        k, v = self._kv[layer]
        sel = ids if rows is None else [ids[r] for r in rows]
        if not sel:
            return
        idx = torch.tensor(sel, dtype=torch.long, device=k.device)
        if rows is None:
            stage[0].copy_(k.index_select(0, idx))
            stage[1].copy_(v.index_select(0, idx))
            return
        r = torch.tensor(rows, dtype=torch.long)
        stage[0].index_copy_(0, r, k.index_select(0, idx).to("cpu"))
        stage[1].index_copy_(0, r, v.index_select(0, idx).to("cpu"))

    def _stage_scatter(self, layer, ids, stage, rows):
        """Copies staging rows `rows` to device blocks `ids` (same length) of a layer."""
        import torch
        k, v = self._kv[layer]
        idx = torch.tensor(ids, dtype=torch.long, device=k.device)
        r = torch.tensor(rows, dtype=torch.long)
        k.index_copy_(0, idx, stage[0].index_select(0, r).to(k.device, non_blocking=True))
        v.index_copy_(0, idx, stage[1].index_select(0, r).to(v.device, non_blocking=True))

    def _staged_load(self, ld, keys):
        """Submits a load of ld into fresh staging buffers; returns (job, (ids, stages))."""
        ids = []
        pos = {}
        remap = []
        partial = set()
        bs = self.block_size
        for ci, blocks in enumerate(ld.block_ids):
            row = []
            for k, b in enumerate(blocks):
                if b < 0:
                    row.append(-1)
                    continue
                if b not in pos:
                    pos[b] = len(ids)
                    ids.append(b)
                lo, hi = k * bs, (k + 1) * bs
                if ld.tok_begin[ci] > lo or ld.tok_end[ci] < hi:
                    partial.add(pos[b])  # rows outside the range keep the device's bytes
                row.append(pos[b])
            remap.append(row)
        stages = [self._stage_alloc(len(ids)) for _ in range(self._nlayers)]
        if partial:
            rows = sorted(partial)
            for li in range(self._nlayers):
                self._stage_gather(li, ids, stages[li], rows)
        job = self._engine.submit(2, 0, self._nlayers, keys, remap, ld.tok_begin, ld.tok_end,
                                  tensors=stages)
        return job, (ids, stages)

    def _meta(self):
        if not self.has_connector_metadata():
            return None
        m = self._get_connector_metadata()
        return m if isinstance(m, KvstashConnectorMetadata) else None

    def _chunk_errors(self, ld, statuses):
        errs = set()
        for i, s in enumerate(statuses):
            if s != 0:
                errs.update(b for b in ld.block_ids[i] if b >= 0)
        return errs

    def _finish_loads(self):
        """Collects every submitted load: failed chunks' blocks go to _load_errors."""
        with self._lock:
            jobs, self._load_jobs = self._load_jobs, []
        for ld, job, _staged in jobs:
            _, st = self._engine.wait(job, len(ld.digests), -1)
            self._engine.release(job)
            bad = self._chunk_errors(ld, st)
            self._forget_missing(ld, st)
            self.stats["load_errors"] += sum(1 for s in st if s != 0)
            self.stats["loaded_chunks"] += sum(1 for s in st if s == 0)
            if bad:
                log.warning("kvstash: request %s: %d of %d chunks failed to load; vLLM "
                            "recomputes %d blocks", ld.req_id, sum(1 for s in st if s != 0),
                            len(st), len(bad))
            with self._lock:
                self._load_errors |= bad

    def handle_preemptions(self, kv_connector_metadata):
        """Preempted requests' blocks are about to be reused: let their saves finish."""
        meta = kv_connector_metadata
        if self._engine is None or not isinstance(meta, KvstashConnectorMetadata):
            return
        for pre in meta.preempted:
            self._wait_saves_of(pre)

    def _forget_missing(self, ld, statuses):
        """A chunk with a missing layer object (evicted alone) would be claimed again and fail
        again: remove its layer-0 object so lookups miss it and the next prefill saves it whole
        (layers still stored count as saved)."""
        for i, s in enumerate(statuses):
            if s != -3:  # KV_ENOENT only; other errors may be transient
                continue
            key = self.hasher.chunk_key(ld.digests[i], self._rank) + "/L0"
            try:
                self._backend.remove(key)
            except Exception:  # noqa: BLE001 - already gone, or the store is down
                pass

    def start_load_kv(self, forward_context, **kwargs):
        meta = self._meta()
        if meta is None or self._engine is None:
            return
        for pre in meta.preempted:  # vLLM without handle_preemptions(): same wait here
            self._wait_saves_of(pre)
        if not meta.loads:
            return
        self._finish_loads()  # anything left over from a step vLLM did not ask about
        for ld in meta.loads:
            keys = [self.hasher.chunk_key(d, self._rank) for d in ld.digests]
            staged = None
            try:
                if self._staging:
                    job, staged = self._staged_load(ld, keys)
                else:
                    job = self._engine.submit(2, 0, self._nlayers, keys, ld.block_ids,
                                              ld.tok_begin, ld.tok_end)
            except Exception as e:  # noqa: BLE001 - report as failed blocks, vLLM recomputes
                log.warning("kvstash: cannot load request %s: %s", ld.req_id, e)
                with self._lock:
                    self._load_errors |= self._chunk_errors(ld, [-1] * len(ld.digests))
                continue
            with self._lock:
                self._load_jobs.append((ld, job, staged))

    def wait_for_layer_load(self, layer_name):
        idx = self._layer_idx.get(layer_name)
        if idx is None:
            return
        with self._lock:
            jobs = list(self._load_jobs)
        for ld, job, staged in jobs:
            self._engine.wait_layer(job, idx)
            if staged is None or not staged[0]:
                continue
            # copy to the device only the blocks of chunks with no failed layer so far: a
            # chunk whose layer failed is never written (it is reported and recomputed)
            _, st = self._engine.peek(job, len(ld.digests))
            ids, stages = staged
            pos = {b: i for i, b in enumerate(ids)}
            rows = sorted({pos[b] for ci, bl in enumerate(ld.block_ids) if st[ci] == 0
                           for b in bl if b >= 0})
            if rows:
                self._stage_scatter(idx, [ids[r] for r in rows], stages[idx], rows)

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        meta = self._meta()
        if meta is None or not meta.saves or self._engine is None:
            return
        idx = self._layer_idx.get(layer_name)
        if idx is None:
            return
        keys = [self.hasher.chunk_key(s.digest, self._rank) for s in meta.saves]
        rids = [s.req_id for s in meta.saves]
        blocks = [s.block_ids for s in meta.saves]
        stage = None
        try:
            if self._staging:
                ids, pos = [], {}
                for bl in blocks:
                    for b in bl:
                        if b not in pos:
                            pos[b] = len(ids)
                            ids.append(b)
                stage = self._stage_alloc(len(ids))
                self._stage_gather(idx, ids, stage)
                job = self._engine.submit(1, idx, idx + 1, keys,
                                          [[pos[b] for b in bl] for bl in blocks],
                                          tensors=[stage])
            else:
                job = self._engine.submit(1, idx, idx + 1, keys, blocks)
        except Exception as e:  # noqa: BLE001 - a failed save is a future miss
            log.warning("kvstash: cannot save layer %s: %s", layer_name, e)
            return
        with self._lock:
            self._save_jobs.append((job, len(keys), rids, stage))
            for r in set(rids):
                self._pending[r] = self._pending.get(r, 0) + 1
                self._saving_reqs.add(r)

    def _reap_saves(self, block, only=None):
        with self._lock:
            jobs = list(self._save_jobs)
        for entry in jobs:
            job, n, rids, _stage = entry
            if only is not None and only not in rids:
                continue
            done, st = self._engine.wait(job, n, -1 if block else 0)
            if not done:
                continue
            self._engine.release(job)
            bad = sum(1 for s in st if s != 0)
            with self._lock:
                self._save_jobs.remove(entry)
                self.stats["save_errors"] += bad
                self.stats["saved_chunks"] += n - bad
                for r in set(rids):
                    self._pending[r] -= 1
                    if self._pending[r] == 0:
                        del self._pending[r]
            if bad:
                log.debug("kvstash: %d of %d chunk saves failed (future misses)", bad, n)

    def _wait_saves_of(self, req_id):
        self._reap_saves(True, only=req_id)

    def wait_for_save(self):
        if self._engine is None:
            return
        self._reap_saves(bool(self.cfg["save_sync"]))

    def get_finished(self, finished_req_ids):
        if self._engine is None:
            return None, None
        self._reap_saves(False)
        with self._lock:
            self._finishing |= set(finished_req_ids or ()) & self._saving_reqs
            done = {r for r in self._finishing if r not in self._pending}
            self._finishing -= done
            self._saving_reqs -= done
        return (done or None), None

    def get_block_ids_with_load_errors(self):
        if self._engine is None:
            return set()
        self._finish_loads()
        with self._lock:
            errs, self._load_errors = self._load_errors, set()
        return errs

    def shutdown(self):
        if self._engine is not None:
            self._finish_loads()
            self._reap_saves(True)
            self._engine.close()
            self._engine = None
        if self._store is not None:
            self._store.close()
            self._store = None


def _split_kv(kv):
    """(K, V) views [num_blocks, block_size, heads, head_dim] of one layer's cache."""
    if isinstance(kv, (tuple, list)):
        return kv[0], kv[1]
    d = 0 if kv.shape[0] == 2 else 1
    return kv.select(d, 0), kv.select(d, 1)


class DistributedKVConnector(KvstashConnector):
    """The same connector under the name the seed deployment used."""


def register():
    """Registers both names with vLLM's connector factory (the vLLM plugin entry point calls
    this in every process). Without vLLM it does nothing."""
    try:
        from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    except ImportError:
        return False
    for name in ("KvstashConnector", "DistributedKVConnector"):
        try:
            KVConnectorFactory.register_connector(name, __name__, name)
        except ValueError:  # already registered in this process
            pass
    return True


register()
