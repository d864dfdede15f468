# SPDX-License-Identifier: Apache-2.0
"""The asynchronous KV-cache copy engine (include/kvstash/kvconn.h) from Python.

CopyEngine runs saves and loads of paged KV blocks on C worker threads: Python only submits
jobs (a list of chunk keys and block ids) and polls their per-chunk status, so neither the GIL
nor the engine's step loop waits for the copies. The KV tensors themselves are described once
per layer by addresses and byte strides (layout_of()), which covers vLLM's NHD and HND layouts
and K/V as separate tensors.
"""
import ctypes

from . import _native
from .errors import ClosedError, check

SAVE = _native.CONN_SAVE
LOAD = _native.CONN_LOAD


class PyBackend:
    """Adapts a Python object with put(key: bytes, data: bytes) -> int and
    get(key: bytes) -> bytes | int (a negative kv_err when absent) into a kvconn backend.
    Used by tests and by callers with their own storage; the callbacks run on the engine's
    worker threads (ctypes takes the GIL for them)."""

    def __init__(self, obj):
        self.obj = obj

        def batch_put(_ud, n, keys, bufs, lens, results):
            for i in range(n):
                try:
                    results[i] = self.obj.put(keys[i], ctypes.string_at(bufs[i], lens[i]))
                except Exception:  # a failing backend is an I/O error, never a crash
                    results[i] = -5
            return 0

        def batch_get(_ud, n, keys, bufs, caps, lens, results):
            for i in range(n):
                try:
                    v = self.obj.get(keys[i])
                except Exception:
                    v = -5
                if isinstance(v, int):
                    results[i] = v
                    continue
                lens[i] = len(v)
                if len(v) > caps[i]:
                    results[i] = -17  # KV_E2BIG
                    continue
                ctypes.memmove(bufs[i], v, len(v))
                results[i] = 0
            return 0

        self._put = _native.CONN_BATCH_PUT(batch_put)
        self._get = _native.CONN_BATCH_GET(batch_get)
        self.struct = _native.ConnBackend(self._put, self._get, None)


def layout_of(kv, kv_dim=None):
    """(k_base, v_base, block_stride, token_stride, head_stride, num_blocks, block_size,
    num_heads, head_dim, element_size, layout_name) of one layer's paged KV cache.

    kv: a CPU torch tensor [2, num_blocks, block_size, heads, head_dim] (vLLM's
    FlashAttention shape; HND is the same logical shape with permuted strides), or
    [num_blocks, 2, ...] (kv_dim=1), or a (K, V) pair of [num_blocks, block_size, heads,
    head_dim] tensors. The head_dim axis must be contiguous.
    """
    if isinstance(kv, (tuple, list)):
        if len(kv) != 2:
            raise ValueError("kvstash: a (K, V) pair needs exactly two tensors")
        k, v = kv
        if k.shape != v.shape or k.stride() != v.stride() or k.dtype != v.dtype:
            raise ValueError("kvstash: K and V tensors differ in shape, strides or dtype")
    else:
        if kv.dim() != 5:
            raise ValueError("kvstash: expected a 5-d paged KV tensor "
                             "[2, num_blocks, block_size, heads, head_dim], got shape %s"
                             % (tuple(kv.shape),))
        if kv_dim is None:
            kv_dim = 0 if kv.shape[0] == 2 else 1
        if kv.shape[kv_dim] != 2:
            raise ValueError("kvstash: dimension %d of shape %s is not the K/V pair"
                             % (kv_dim, tuple(kv.shape)))
        k, v = kv.select(kv_dim, 0), kv.select(kv_dim, 1)
    if k.device.type != "cpu":
        raise ValueError("kvstash: the copy engine needs KV caches in host memory (got %s)"
                         % k.device)
    if k.dim() != 4:
        raise ValueError("kvstash: a K or V cache must be [num_blocks, block_size, heads, "
                         "head_dim], got shape %s" % (tuple(k.shape),))
    if k.stride(3) != 1:
        raise ValueError("kvstash: the head_dim axis must be contiguous")
    es = k.element_size()
    nb, bs, nh, hd = k.shape
    st = k.stride()
    name = "HND" if nh > 1 and st[2] > st[1] else "NHD"
    return (k.data_ptr(), v.data_ptr(), st[0] * es, st[1] * es, st[2] * es, nb, bs, nh, hd, es,
            name)


class CopyEngine:
    """Worker threads moving chunks of paged KV blocks between tensors and the store.

    store: a kvstash.Store (borrowed: keep it open while the engine lives), or backend: an
    object for PyBackend. Shape: block_size tokens per block, chunk_blocks blocks per stored
    chunk, num_heads KV heads, row_bytes = head_dim * element size.
    """

    def __init__(self, store=None, backend=None, *, block_size, chunk_blocks, num_heads,
                 row_bytes, threads=2, ttl_s=0, replicas=1, batch_max=0):
        self._store = store
        self._backend = PyBackend(backend) if backend is not None else None
        if store is None and backend is None:
            raise ValueError("kvstash: CopyEngine needs a store or a backend")
        be = ctypes.pointer(self._backend.struct) if self._backend else None
        opts = _native.ConnOpts(None, be, int(threads),
                                int(block_size), int(chunk_blocks), int(num_heads),
                                int(row_bytes), int(ttl_s), int(replicas), int(batch_max))
        # the engine is addressed by a generation-checked id and holds its own reference on
        # the store's client (kv_conn_h_create): a close() racing with a wait() in another
        # thread makes that call raise ClosedError, never read freed memory
        h = ctypes.c_uint64()
        check(_native.kv_conn_h_create(ctypes.byref(opts),
                                       store._handle() if store is not None else 0,
                                       ctypes.byref(h)), "cannot start the copy engine")
        self._h = h.value
        self.block_size = int(block_size)
        self.chunk_blocks = int(chunk_blocks)
        self.chunk_tokens = self.block_size * self.chunk_blocks
        size = ctypes.c_size_t()
        check(_native.kv_conn_h_object_size(self._h, ctypes.byref(size)), "object size")
        self.object_size = size.value
        self._tensors = {}  # layer -> tensor kept alive while registered

    def close(self):
        """Cancels queued work, waits for running work, frees every job. Calls racing with it
        in other threads finish or raise ClosedError; later calls raise ClosedError."""
        h = getattr(self, "_h", 0)
        if h:
            self._h = 0
            _native.kv_conn_h_destroy(h)

    def __del__(self):
        self.close()

    def _handle(self):
        h = self._h
        if not h:
            raise ClosedError(what="kvstash: CopyEngine is closed")
        return h

    def register_layer(self, layer, kv, kv_dim=None):
        """Describes layer `layer`'s cache (see layout_of). Returns the layout tuple."""
        lay = layout_of(kv, kv_dim)
        k_base, v_base, bst, tst, hst, nb = lay[:6]
        cl = _native.ConnLayout(k_base, v_base, bst, tst, hst, nb)
        check(_native.kv_conn_h_register_layer(self._handle(), int(layer), ctypes.byref(cl)),
              "register layer %d" % layer)
        self._tensors[layer] = kv
        return lay

    def submit(self, op, layer_begin, layer_end, keys, block_ids, tok_begin=None, tok_end=None,
               tensors=None):
        """Queues a job; returns its id. keys: n chunk key prefixes (str); block_ids: n lists of
        chunk_blocks ids (-1 where a load writes nothing); tok_begin/tok_end: per chunk token
        range a load writes (None = whole chunks). tensors: None to use the registered layers,
        or one host tensor per layer of the range (e.g. staging buffers of a device cache;
        block ids then index them) that the caller keeps alive until the job is done."""
        n = len(keys)
        if n == 0 or len(block_ids) != n:
            raise ValueError("kvstash: a job needs n > 0 keys and as many block lists")
        flat = []
        for ids in block_ids:
            ids = list(ids)
            if len(ids) > self.chunk_blocks:
                raise ValueError("kvstash: a chunk has at most %d blocks" % self.chunk_blocks)
            flat.extend(ids + [-1] * (self.chunk_blocks - len(ids)))
        karr = (ctypes.c_char_p * n)(*[k.encode() if isinstance(k, str) else k for k in keys])
        barr = (ctypes.c_int32 * len(flat))(*flat)
        tb = te = None
        if tok_begin is not None:
            tb = (ctypes.c_uint32 * n)(*tok_begin)
            te = (ctypes.c_uint32 * n)(*tok_end)
        job = ctypes.c_uint64()
        if tensors is None:
            check(_native.kv_conn_h_submit(self._handle(), int(op), int(layer_begin),
                                         int(layer_end), n, karr, barr, tb, te,
                                         ctypes.byref(job)), "submit")
            return job.value
        if len(tensors) != layer_end - layer_begin:
            raise ValueError("kvstash: submit needs one tensor per layer of the range")
        lays = (_native.ConnLayout * len(tensors))()
        for i, t in enumerate(tensors):
            k_base, v_base, bst, tst, hst, nb = layout_of(t)[:6]
            lays[i] = _native.ConnLayout(k_base, v_base, bst, tst, hst, nb)
        check(_native.kv_conn_h_submit_at(self._handle(), int(op), int(layer_begin),
                                        int(layer_end), lays, n, karr, barr, tb, te,
                                        ctypes.byref(job)), "submit")
        return job.value

    def wait_layer(self, job, layer, timeout_ms=-1):
        """Blocks until the job's layer is done. False on timeout."""
        rc = _native.kv_conn_h_wait_layer(self._handle(), job, int(layer), int(timeout_ms))
        if rc == -6:  # KV_ETIMEDOUT
            return False
        check(rc, "wait layer %d" % layer)
        return True

    def wait(self, job, n, timeout_ms=-1):
        """(done, statuses): statuses is the per-chunk list of results (0 = ok) when done."""
        st = (ctypes.c_int * n)()
        rc = check(_native.kv_conn_h_wait(self._handle(), job, int(timeout_ms), st), "wait")
        return (rc == 1, list(st) if rc == 1 else None)

    def peek(self, job, n):
        """(done, statuses so far): after wait_layer(job, L), a chunk whose layer L failed
        already shows its error."""
        st = (ctypes.c_int * n)()
        rc = check(_native.kv_conn_h_peek(self._handle(), job, st), "peek")
        return rc == 1, list(st)

    def release(self, job):
        check(_native.kv_conn_h_release(self._handle(), job), "release")
