# SPDX-License-Identifier: Apache-2.0
"""kvstash.Store: the distributed KV store from Python (ctypes over include/kvstash/store.h).

Values are bytes-like objects (bytes, bytearray, memoryview, numpy arrays) or contiguous CPU
torch tensors; get_into() and batch_get_into() write straight into the caller's memory with no
extra copy. A Store may be shared between threads (the C client is thread-safe and ctypes
releases the GIL during calls). The C client is addressed by a generation-checked id
(kv_store_h_*, include/kvstash/store.h), never a pointer: close() from one thread while others
call is safe; calls after (or racing with) close() raise ClosedError.
"""
import ctypes
import json

from . import _native
from .errors import ClosedError, check, error_for

_ENOENT = None


def _enoent():
    global _ENOENT
    if _ENOENT is None:
        from .errors import CODES
        _ENOENT = CODES["KV_ENOENT"]
    return _ENOENT


def _key(k):
    if isinstance(k, str):
        k = k.encode()
    if not isinstance(k, (bytes, bytearray)) or not k:
        raise ValueError("kvstash: a key must be a non-empty str or bytes")
    if b"\0" in k:
        raise ValueError("kvstash: a key must not contain NUL bytes")
    return bytes(k)


def buffer_of(obj, writable):
    """(address, length, keepalive) of obj's memory, without copying.

    obj: a contiguous CPU torch tensor, or anything with the buffer protocol (bytes only when
    not writable). Raises TypeError/ValueError naming the problem.
    """
    if hasattr(obj, "data_ptr") and hasattr(obj, "element_size"):  # torch.Tensor
        if obj.device.type != "cpu":
            raise ValueError("kvstash: tensor must be on the CPU (got %s)" % obj.device)
        if not obj.is_contiguous():
            raise ValueError("kvstash: tensor must be contiguous")
        return obj.data_ptr(), obj.numel() * obj.element_size(), obj
    if isinstance(obj, bytes):
        if writable:
            raise TypeError("kvstash: bytes are read-only; pass a bytearray, memoryview, "
                            "numpy array or tensor")
        p = ctypes.c_char_p(obj)
        return ctypes.cast(p, ctypes.c_void_p).value or 0, len(obj), (obj, p)
    mv = memoryview(obj)
    if not mv.c_contiguous:
        raise ValueError("kvstash: buffer must be C-contiguous")
    n = mv.nbytes
    if mv.readonly:
        if writable:
            raise TypeError("kvstash: buffer is read-only")
        b = mv.tobytes()  # read-only foreign buffer: one copy is unavoidable with ctypes
        return buffer_of(b, False)
    if n == 0:
        return 0, 0, mv
    arr = (ctypes.c_char * n).from_buffer(mv.cast("B"))
    return ctypes.addressof(arr), n, (mv, arr)


class Store:
    """A connection to a kvstash cluster.

    Store(master="127.0.0.1:50051") or Store(metadata="etcd://127.0.0.1:2379"); optional
    cluster, protocol ("auto", "tcp", "shm", "rdma"), timeout_ms, poll_spin_us (microseconds a
    call polls for the master's answer before its thread sleeps: 0 = the library's default, 50;
    negative = never).
    """

    def __init__(self, master=None, metadata=None, cluster=None, protocol=None, timeout_ms=0,
                 poll_spin_us=0):
        if not master and not metadata:
            raise ValueError("kvstash: Store needs master='HOST:PORT' or metadata='URL'")
        enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
        self._opts = _native.StoreOpts(enc(master), enc(metadata), enc(cluster), enc(protocol),
                                       int(timeout_ms), int(poll_spin_us))
        h = ctypes.c_uint64()
        check(_native.kv_store_h_open(ctypes.byref(self._opts), ctypes.byref(h)),
              "cannot connect to %s" % (master or metadata))
        self._h = h.value

    def close(self):
        """Closes the connection. Safe while other threads call: the C client stays alive
        until their calls return; they and any later call raise ClosedError. Idempotent."""
        h = getattr(self, "_h", None)
        self._h = None
        if h:
            _native.kv_store_h_close(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def _handle(self):
        h = self._h
        if not h:
            raise ClosedError(what="kvstash: Store is closed")
        return h

    @staticmethod
    def _put_opts(replicas, ttl_s, pin):
        return _native.PutOpts(int(replicas), int(ttl_s), bool(pin))

    def put(self, key, data, replicas=1, ttl_s=0, pin=False):
        """Stores data under key. Raises ExistsError if the key exists."""
        k = _key(key)
        addr, n, keep = buffer_of(data, False)
        opts = self._put_opts(replicas, ttl_s, pin)
        check(_native.kv_store_h_put(self._handle(), k, addr, n, ctypes.byref(opts)),
              "put %r" % key)
        del keep

    def get(self, key):
        """The value of key as bytes. Raises KeyError (NotFoundError) when absent."""
        k = _key(key)
        p = ctypes.c_void_p()
        n = ctypes.c_size_t()
        check(_native.kv_store_h_get_alloc(self._handle(), k, ctypes.byref(p), ctypes.byref(n)),
              "get %r" % key)
        try:
            return ctypes.string_at(p, n.value) if n.value else b""
        finally:
            _native.kv_store_free(p)

    def get_into(self, key, buffer):
        """Reads key into buffer (writable bytes-like or tensor); returns the value's size."""
        k = _key(key)
        addr, cap, keep = buffer_of(buffer, True)
        n = ctypes.c_size_t()
        check(_native.kv_store_h_get(self._handle(), k, addr, cap, ctypes.byref(n)),
              "get %r" % key)
        del keep
        return n.value

    def exists(self, keys):
        """[bool] for a list of keys; a bool for a single key."""
        single = isinstance(keys, (str, bytes))
        ks = [keys] if single else list(keys)
        res = self._batch_exists(ks)
        out = []
        for k, r in zip(ks, res):
            if r < 0:
                raise error_for(r, "exists %r" % k)
            out.append(r == 1)
        return out[0] if single else out

    def _batch_exists(self, ks):
        n = len(ks)
        if n == 0:
            return []
        arr = (ctypes.c_char_p * n)(*[_key(k) for k in ks])
        res = (ctypes.c_int * n)()
        check(_native.kv_store_h_batch_exists(self._handle(), n, arr, res), "exists")
        return list(res)

    def remove(self, key):
        """Removes key. Raises KeyError (NotFoundError) when absent."""
        check(_native.kv_store_h_remove(self._handle(), _key(key)), "remove %r" % key)

    def batch_put(self, keys, values, replicas=1, ttl_s=0, pin=False):
        """Puts many keys in one round trip per phase. Returns a list of status codes (0 = ok,
        else a negative kv_err; see kvstash.errors.error_for)."""
        ks = [_key(k) for k in keys]
        vals = list(values)
        if len(ks) != len(vals):
            raise ValueError("kvstash: batch_put needs as many values as keys")
        n = len(ks)
        if n == 0:
            return []
        bufs = [buffer_of(v, False) for v in vals]
        karr = (ctypes.c_char_p * n)(*ks)
        parr = (ctypes.c_void_p * n)(*[b[0] for b in bufs])
        larr = (ctypes.c_size_t * n)(*[b[1] for b in bufs])
        res = (ctypes.c_int * n)()
        opts = self._put_opts(replicas, ttl_s, pin)
        check(_native.kv_store_h_batch_put(self._handle(), n, karr, parr, larr, ctypes.byref(opts),
                                         res), "batch_put")
        del bufs
        return list(res)

    def batch_get_into(self, keys, buffers):
        """Reads many keys into the given buffers. Returns per key the value's size (>= 0) or a
        negative kv_err (KV_ENOENT for a miss)."""
        ks = [_key(k) for k in keys]
        bl = list(buffers)
        if len(ks) != len(bl):
            raise ValueError("kvstash: batch_get_into needs as many buffers as keys")
        n = len(ks)
        if n == 0:
            return []
        bufs = [buffer_of(b, True) for b in bl]
        karr = (ctypes.c_char_p * n)(*ks)
        parr = (ctypes.c_void_p * n)(*[b[0] for b in bufs])
        carr = (ctypes.c_size_t * n)(*[b[1] for b in bufs])
        lens = (ctypes.c_size_t * n)()
        res = (ctypes.c_int * n)()
        check(_native.kv_store_h_batch_get(self._handle(), n, karr, parr, carr, lens, res),
              "batch_get")
        del bufs
        return [lens[i] if res[i] == 0 else res[i] for i in range(n)]

    # ---- raw memory (addresses owned and kept alive by the caller) ----

    def batch_put_ptrs(self, keys, ptrs, sizes, replicas=1, ttl_s=0, pin=False):
        """Like batch_put over raw (address, size) pairs. The caller keeps the memory alive and
        unchanged for the call. Returns per key 0 or a negative kv_err."""
        ks = [_key(k) for k in keys]
        n = len(ks)
        if n != len(ptrs) or n != len(sizes):
            raise ValueError("kvstash: batch_put_ptrs needs as many pointers and sizes as keys")
        if n == 0:
            return []
        res = (ctypes.c_int * n)()
        opts = self._put_opts(replicas, ttl_s, pin)
        check(_native.kv_store_h_batch_put(self._handle(), n, (ctypes.c_char_p * n)(*ks),
                                         (ctypes.c_void_p * n)(*ptrs),
                                         (ctypes.c_size_t * n)(*sizes), ctypes.byref(opts), res),
              "batch_put")
        return list(res)

    def batch_get_ptrs(self, keys, ptrs, caps):
        """Like batch_get_into over raw (address, capacity) pairs. Returns per key the value's
        size (>= 0) or a negative kv_err. A failed key's memory may hold garbage."""
        ks = [_key(k) for k in keys]
        n = len(ks)
        if n != len(ptrs) or n != len(caps):
            raise ValueError("kvstash: batch_get_ptrs needs as many pointers and sizes as keys")
        if n == 0:
            return []
        lens = (ctypes.c_size_t * n)()
        res = (ctypes.c_int * n)()
        check(_native.kv_store_h_batch_get(self._handle(), n, (ctypes.c_char_p * n)(*ks),
                                         (ctypes.c_void_p * n)(*ptrs),
                                         (ctypes.c_size_t * n)(*caps), lens, res), "batch_get")
        return [lens[i] if res[i] == 0 else res[i] for i in range(n)]

    def batch_exists_codes(self, keys):
        """Per key 1 (exists), 0 (absent) or a negative kv_err, in one master round trip."""
        return self._batch_exists(list(keys))

    def list(self, prefix="", limit=0):
        """[(key, size)] of the keys starting with prefix, sorted (at most limit; 0 = all)."""
        keys = ctypes.POINTER(ctypes.c_char_p)()
        sizes = ctypes.POINTER(ctypes.c_uint64)()
        n = ctypes.c_size_t()
        pre = prefix.encode() if isinstance(prefix, str) else bytes(prefix)
        check(_native.kv_store_h_list(self._handle(), pre, int(limit), ctypes.byref(keys),
                                    ctypes.byref(sizes), ctypes.byref(n)), "list %r" % prefix)
        try:
            return [(keys[i].decode(), sizes[i]) for i in range(n.value)]
        finally:
            _native.kv_store_keys_free(keys, n.value)
            _native.kv_store_free(ctypes.cast(sizes, ctypes.c_void_p))

    def stat(self):
        """The cluster statistics (the master's /api/v1/cluster document) as a dict."""
        p = ctypes.c_void_p()
        check(_native.kv_store_h_stat_json(self._handle(), ctypes.byref(p)), "stat")
        try:
            return json.loads(ctypes.string_at(p).decode())
        finally:
            _native.kv_store_free(p)
