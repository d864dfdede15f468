# SPDX-License-Identifier: Apache-2.0
"""Loads libkvstash with ctypes and declares the C API used by the Python layer.

The library is searched, in order: $KVSTASH_LIB (a path to libkvstash.so), next to this
package (wheel/installed layout), the build trees of a source checkout (build/, build-*/),
then the system loader path. Only the standard library is needed.
"""
import ctypes
import os
import glob

_HERE = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    env = os.environ.get("KVSTASH_LIB")
    if env:
        yield env
    yield os.path.join(_HERE, "libkvstash.so")
    root = os.path.dirname(os.path.dirname(_HERE))  # python/kvstash -> repo root
    libs = glob.glob(os.path.join(root, "build*", "libkvstash.so"))
    for p in sorted(libs, key=lambda p: os.path.getmtime(p), reverse=True):  # newest build
        yield p
    yield "libkvstash.so.0"
    yield "libkvstash.so"


def _load():
    errors = []
    for path in _candidates():
        if os.path.sep in path and not os.path.exists(path):
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:  # try the next one
            errors.append("%s: %s" % (path, e))
    raise ImportError(
        "kvstash: cannot load libkvstash.so; build it (scripts/build.sh) or set KVSTASH_LIB. "
        "Tried: " + "; ".join(errors or ["nothing found"]))


lib, lib_path = _load()

c_char_p = ctypes.c_char_p
c_void_p = ctypes.c_void_p
c_size_t = ctypes.c_size_t
c_int = ctypes.c_int
c_uint32 = ctypes.c_uint32
c_uint64 = ctypes.c_uint64
c_bool = ctypes.c_bool


class StoreOpts(ctypes.Structure):
    _fields_ = [
        ("master", c_char_p),
        ("metadata", c_char_p),
        ("cluster", c_char_p),
        ("protocol", c_char_p),
        ("timeout_ms", c_int),
        ("poll_spin_us", c_int),
    ]


class PutOpts(ctypes.Structure):
    _fields_ = [
        ("replicas", c_int),
        ("ttl_s", c_uint32),
        ("pin", c_bool),
    ]


def _fn(name, restype, *argtypes):
    f = getattr(lib, name, None)
    if f is None:  # an older library: fail when used, with a clear message
        def missing(*_a, **_k):
            raise RuntimeError("kvstash: %s lacks %s; rebuild libkvstash or set KVSTASH_LIB"
                               % (lib_path, name))
        return missing
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


kv_version = _fn("kv_version", c_char_p)
kv_strerror = _fn("kv_strerror", c_char_p, c_int)
kv_err_name = _fn("kv_err_name", c_char_p, c_int)
kv_log_set_level = _fn("kv_log_set_level", None, c_int)

LOG_SINK = ctypes.CFUNCTYPE(None, c_void_p, c_int, c_char_p, c_char_p)
kv_log_set_sink = _fn("kv_log_set_sink", None, LOG_SINK, c_void_p)

kv_store_open = _fn("kv_store_open", c_int, ctypes.POINTER(StoreOpts), ctypes.POINTER(c_void_p))
kv_store_close = _fn("kv_store_close", None, c_void_p)
kv_store_put = _fn("kv_store_put", c_int, c_void_p, c_char_p, c_void_p, c_size_t,
                   ctypes.POINTER(PutOpts))
kv_store_get = _fn("kv_store_get", c_int, c_void_p, c_char_p, c_void_p, c_size_t,
                   ctypes.POINTER(c_size_t))
kv_store_get_alloc = _fn("kv_store_get_alloc", c_int, c_void_p, c_char_p,
                         ctypes.POINTER(c_void_p), ctypes.POINTER(c_size_t))
kv_store_exists = _fn("kv_store_exists", c_int, c_void_p, c_char_p)
kv_store_remove = _fn("kv_store_remove", c_int, c_void_p, c_char_p)
kv_store_batch_put = _fn("kv_store_batch_put", c_int, c_void_p, c_size_t,
                         ctypes.POINTER(c_char_p), ctypes.POINTER(c_void_p),
                         ctypes.POINTER(c_size_t), ctypes.POINTER(PutOpts),
                         ctypes.POINTER(c_int))
kv_store_batch_get = _fn("kv_store_batch_get", c_int, c_void_p, c_size_t,
                         ctypes.POINTER(c_char_p), ctypes.POINTER(c_void_p),
                         ctypes.POINTER(c_size_t), ctypes.POINTER(c_size_t),
                         ctypes.POINTER(c_int))
kv_store_batch_exists = _fn("kv_store_batch_exists", c_int, c_void_p, c_size_t,
                            ctypes.POINTER(c_char_p), ctypes.POINTER(c_int))
kv_store_stat_json = _fn("kv_store_stat_json", c_int, c_void_p, ctypes.POINTER(c_void_p))
kv_store_free = _fn("kv_store_free", None, c_void_p)
kv_store_list = _fn("kv_store_list", c_int, c_void_p, c_char_p, c_size_t,
                    ctypes.POINTER(ctypes.POINTER(c_char_p)),
                    ctypes.POINTER(ctypes.POINTER(c_uint64)), ctypes.POINTER(c_size_t))
kv_store_keys_free = _fn("kv_store_keys_free", None, ctypes.POINTER(c_char_p), c_size_t)

# Handles (store.h, kv_store_h_*): the client by generation-checked id, never by pointer, so
# a close racing with calls in other threads gives KV_ESHUTDOWN instead of a use-after-free.
kv_store_h_open = _fn("kv_store_h_open", c_int, ctypes.POINTER(StoreOpts),
                      ctypes.POINTER(c_uint64))
kv_store_h_close = _fn("kv_store_h_close", c_int, c_uint64)
kv_store_h_put = _fn("kv_store_h_put", c_int, c_uint64, c_char_p, c_void_p, c_size_t,
                     ctypes.POINTER(PutOpts))
kv_store_h_get = _fn("kv_store_h_get", c_int, c_uint64, c_char_p, c_void_p, c_size_t,
                     ctypes.POINTER(c_size_t))
kv_store_h_get_alloc = _fn("kv_store_h_get_alloc", c_int, c_uint64, c_char_p,
                           ctypes.POINTER(c_void_p), ctypes.POINTER(c_size_t))
kv_store_h_exists = _fn("kv_store_h_exists", c_int, c_uint64, c_char_p)
kv_store_h_remove = _fn("kv_store_h_remove", c_int, c_uint64, c_char_p)
kv_store_h_batch_put = _fn("kv_store_h_batch_put", c_int, c_uint64, c_size_t,
                           ctypes.POINTER(c_char_p), ctypes.POINTER(c_void_p),
                           ctypes.POINTER(c_size_t), ctypes.POINTER(PutOpts),
                           ctypes.POINTER(c_int))
kv_store_h_batch_get = _fn("kv_store_h_batch_get", c_int, c_uint64, c_size_t,
                           ctypes.POINTER(c_char_p), ctypes.POINTER(c_void_p),
                           ctypes.POINTER(c_size_t), ctypes.POINTER(c_size_t),
                           ctypes.POINTER(c_int))
kv_store_h_batch_exists = _fn("kv_store_h_batch_exists", c_int, c_uint64, c_size_t,
                              ctypes.POINTER(c_char_p), ctypes.POINTER(c_int))
kv_store_h_stat_json = _fn("kv_store_h_stat_json", c_int, c_uint64, ctypes.POINTER(c_void_p))
kv_store_h_list = _fn("kv_store_h_list", c_int, c_uint64, c_char_p, c_size_t,
                      ctypes.POINTER(ctypes.POINTER(c_char_p)),
                      ctypes.POINTER(ctypes.POINTER(c_uint64)), ctypes.POINTER(c_size_t))

kv_hash64 = _fn("kv_hash64", c_uint64, c_void_p, c_size_t)
kv_hash64_seed = _fn("kv_hash64_seed", c_uint64, c_void_p, c_size_t, c_uint64)

# ---- include/kvstash/kvconn.h: the connector copy engine ----

CONN_BATCH_PUT = ctypes.CFUNCTYPE(c_int, c_void_p, c_size_t, ctypes.POINTER(c_char_p),
                                  ctypes.POINTER(c_void_p), ctypes.POINTER(c_size_t),
                                  ctypes.POINTER(c_int))
CONN_BATCH_GET = ctypes.CFUNCTYPE(c_int, c_void_p, c_size_t, ctypes.POINTER(c_char_p),
                                  ctypes.POINTER(c_void_p), ctypes.POINTER(c_size_t),
                                  ctypes.POINTER(c_size_t), ctypes.POINTER(c_int))


class ConnBackend(ctypes.Structure):
    _fields_ = [
        ("batch_put", CONN_BATCH_PUT),
        ("batch_get", CONN_BATCH_GET),
        ("ud", c_void_p),
    ]


class ConnOpts(ctypes.Structure):
    _fields_ = [
        ("store", c_void_p),
        ("backend", ctypes.POINTER(ConnBackend)),
        ("threads", c_int),
        ("block_size", c_uint32),
        ("chunk_blocks", c_uint32),
        ("num_heads", c_uint32),
        ("row_bytes", c_uint32),
        ("ttl_s", c_uint32),
        ("replicas", c_int),
        ("batch_max", c_size_t),
    ]


class ConnLayout(ctypes.Structure):
    _fields_ = [
        ("k_base", c_uint64),
        ("v_base", c_uint64),
        ("block_stride", ctypes.c_int64),
        ("token_stride", ctypes.c_int64),
        ("head_stride", ctypes.c_int64),
        ("num_blocks", c_uint32),
    ]


CONN_SAVE = 1
CONN_LOAD = 2

# the copy engine through generation-checked ids (kv_conn_h_*): never a raw C pointer
kv_conn_h_create = _fn("kv_conn_h_create", c_int, ctypes.POINTER(ConnOpts), c_uint64,
                       ctypes.POINTER(c_uint64))
kv_conn_h_destroy = _fn("kv_conn_h_destroy", c_int, c_uint64)
kv_conn_h_register_layer = _fn("kv_conn_h_register_layer", c_int, c_uint64, c_uint32,
                               ctypes.POINTER(ConnLayout))
kv_conn_h_submit = _fn("kv_conn_h_submit", c_int, c_uint64, c_int, c_uint32, c_uint32, c_size_t,
                       ctypes.POINTER(c_char_p), ctypes.POINTER(ctypes.c_int32),
                       ctypes.POINTER(c_uint32), ctypes.POINTER(c_uint32),
                       ctypes.POINTER(c_uint64))
kv_conn_h_submit_at = _fn("kv_conn_h_submit_at", c_int, c_uint64, c_int, c_uint32, c_uint32,
                          ctypes.POINTER(ConnLayout), c_size_t, ctypes.POINTER(c_char_p),
                          ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(c_uint32),
                          ctypes.POINTER(c_uint32), ctypes.POINTER(c_uint64))
kv_conn_h_wait_layer = _fn("kv_conn_h_wait_layer", c_int, c_uint64, c_uint64, c_uint32, c_int)
kv_conn_h_wait = _fn("kv_conn_h_wait", c_int, c_uint64, c_uint64, c_int, ctypes.POINTER(c_int))
kv_conn_h_peek = _fn("kv_conn_h_peek", c_int, c_uint64, c_uint64, ctypes.POINTER(c_int))
kv_conn_h_release = _fn("kv_conn_h_release", c_int, c_uint64, c_uint64)
kv_conn_h_object_size = _fn("kv_conn_h_object_size", c_int, c_uint64, ctypes.POINTER(c_size_t))
