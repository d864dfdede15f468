# SPDX-License-Identifier: Apache-2.0
"""kvstash: Python layer over libkvstash (ctypes; standard library only, torch/numpy when
present).

    import kvstash
    with kvstash.Store(master="127.0.0.1:50051") as s:
        s.put("k", b"value")
        assert s.get("k") == b"value"

Modules: store (Store), kvconn (the C copy engine), keys (deterministic chunk keys), config
(connector configuration), vllm_connector (vLLM V1 KV connector), sglang_backend (SGLang
HiCache storage), vllm_launch (runs vLLM with the connector).
"""
import atexit
import logging

from . import _native
from .errors import (ChecksumError, ClosedError, ExistsError, InvalidArgumentError, KvstashError,
                     NoSpaceError, NotFoundError, TimeoutError, UnavailableError)
from .store import Store

__version__ = _native.kv_version().decode()
__all__ = ["Store", "KvstashError", "NotFoundError", "ExistsError", "NoSpaceError",
           "InvalidArgumentError", "UnavailableError", "TimeoutError", "ChecksumError", "ClosedError",
           "forward_logs", "__version__"]

_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}
_sink = None


def forward_logs(enable=True, level=None):
    """Sends libkvstash's log records to the `logging` module (logger "kvstash.<component>")
    instead of stderr; enable=False restores stderr. level: "error", "warn", "info" or
    "debug" sets the library's threshold (records above it are never formatted)."""
    global _sink
    if level is not None:
        lv = {"error": 0, "warn": 1, "warning": 1, "info": 2, "debug": 3}.get(str(level).lower())
        if lv is None:
            raise ValueError("kvstash: log level must be error, warn, info or debug")
        _native.kv_log_set_level(lv)
    if not enable:
        _native.kv_log_set_sink(_native.LOG_SINK(), None)
        _sink = None
        return

    def sink(_ud, lvl, component, msg):
        try:
            logging.getLogger("kvstash." + (component or b"lib").decode(errors="replace")).log(
                _LEVELS.get(lvl, logging.INFO), "%s", (msg or b"").decode(errors="replace"))
        except Exception:  # noqa: BLE001 - logging must never raise into C
            pass

    _sink = _native.LOG_SINK(sink)
    _native.kv_log_set_sink(_sink, None)


@atexit.register
def _restore_stderr_logging():
    if _sink is not None:  # no Python callback may run while the interpreter goes away
        _native.kv_log_set_sink(_native.LOG_SINK(), None)
