# SPDX-License-Identifier: Apache-2.0
"""Exceptions carrying libkvstash's error codes and messages (include/kvstash/err.h)."""
from . import _native


class KvstashError(Exception):
    """A libkvstash call failed. .code is the negative kv_err value, .name its constant name."""

    def __init__(self, code, what=""):
        self.code = code
        self.name = _native.kv_err_name(code).decode()
        msg = _native.kv_strerror(code).decode()
        super().__init__("%s%s (%s)" % (what + ": " if what else "", msg, self.name))


class NotFoundError(KvstashError, KeyError):
    def __str__(self):  # KeyError would repr() the message otherwise
        return Exception.__str__(self)


class ExistsError(KvstashError):
    pass


class NoSpaceError(KvstashError):
    pass


class InvalidArgumentError(KvstashError, ValueError):
    pass


class UnavailableError(KvstashError, ConnectionError):
    pass


class TimeoutError(KvstashError, TimeoutError):  # noqa: A001 - also a builtin TimeoutError
    pass


class ChecksumError(KvstashError):
    pass


class ClosedError(KvstashError, ValueError):
    """The Store (or its id) was closed: by this thread or another one, before or during the
    call. Never a crash: the C client is addressed by a generation-checked id."""

    def __init__(self, code=None, what=""):
        if code is None:
            code = CODES["KV_ESHUTDOWN"]
        super().__init__(code, what)


def _codes():
    names = {}
    for v in range(0, -700, -1):
        n = _native.kv_err_name(v).decode()
        if n != "KV_UNKNOWN":
            names[n] = v
    return names


CODES = _codes()

_CLASS = {
    "KV_ENOENT": NotFoundError,
    "KV_EEXIST": ExistsError,
    "KV_ENOSPC": NoSpaceError,
    "KV_EINVAL": InvalidArgumentError,
    "KV_E2BIG": InvalidArgumentError,
    "KV_ETIMEDOUT": TimeoutError,
    "KV_ECONNREFUSED": UnavailableError,
    "KV_ECONNRESET": UnavailableError,
    "KV_EMETA_UNAVAIL": UnavailableError,
    "KV_ESTORE_NONODE": UnavailableError,
    "KV_EXFER_PEER": UnavailableError,
    "KV_ECHECKSUM": ChecksumError,
    "KV_ESHUTDOWN": ClosedError,
}


def error_for(code, what=""):
    """The exception instance for a negative kv_err code."""
    cls = _CLASS.get(_native.kv_err_name(code).decode(), KvstashError)
    return cls(code, what)


def check(rc, what=""):
    """Raises the matching exception when rc < 0; returns rc otherwise."""
    if rc < 0:
        raise error_for(rc, what)
    return rc
