# SPDX-License-Identifier: Apache-2.0
"""Test doubles for the Python layer: an in-memory storage backend for the copy engine and the
vLLM connector (kvconn.PyBackend protocol + exists_codes)."""
import threading

ENOENT = -3
EEXIST = -4
EIO = -5


class MemoryBackend:
    """key -> bytes in a dict. fail_get(key) -> bool injects read failures; down=True makes
    every call fail like an unreachable store."""

    def __init__(self):
        self.data = {}
        self.lock = threading.Lock()
        self.fail_get = None
        self.down = False
        self.puts = 0
        self.gets = 0

    def put(self, key, data):
        with self.lock:
            if self.down:
                return EIO
            if key in self.data:
                return EEXIST
            self.data[key] = bytes(data)
            self.puts += 1
            return 0

    def get(self, key):
        with self.lock:
            self.gets += 1
            if self.down or (self.fail_get is not None and self.fail_get(key)):
                return EIO
            return self.data.get(key, ENOENT)

    def remove(self, key):
        with self.lock:
            if self.down:
                raise ConnectionError("memory backend is down")
            del self.data[key.encode() if isinstance(key, str) else key]

    def exists_codes(self, keys):
        with self.lock:
            if self.down:
                raise ConnectionError("memory backend is down")
            return [1 if k.encode() in self.data else 0 for k in keys]
