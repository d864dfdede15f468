#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""bench/gateway/py_receiver.py - the peer of the gateway benchmark: the floor of any Python
state gateway. One thread receives UDP datagrams, parses each with the standard `json` module
and validates the eight keys of an ELRAR engine state
(free blocks <= total, as kvstash's decoder checks) (the keys kvstash's decoder requires,
src/gateway/gw_decode.c): engine_id and scheduling_mode non-empty strings, timestamp_ms,
pending_tokens_total, kv_cache_free_blocks and kv_cache_total_blocks integers, latency_pred_ms
and engine_capacity numbers. It keeps nothing else (no table, no query API beyond counters), so
a real Python gateway can only cost more per state.

It serves GET /stats ({"valid_states": N, "total_received": M, "invalid": K}) on a second
thread, the same counters `kvstash bench gateway --gateway-http` reads from kvstash's gateway,
so one sender measures both in the same run (CPU per state from /proc/PID/stat, and loss).

Usage: py_receiver.py [--rcvbuf BYTES]; prints "udp PORT http PORT" on stdout once bound
(both on 127.0.0.1, ports chosen by the kernel), then runs until SIGTERM/SIGINT.
"""
import argparse
import http.server
import json
import socket
import sys
import threading

KEYS_STR = ("engine_id", "scheduling_mode")
KEYS_INT = ("timestamp_ms", "pending_tokens_total", "kv_cache_free_blocks",
            "kv_cache_total_blocks")
KEYS_NUM = ("latency_pred_ms", "engine_capacity")

stats = {"valid_states": 0, "total_received": 0, "invalid": 0}


def valid(d):
    """True when d is an ELRAR state with all eight keys of the right types."""
    if not isinstance(d, dict):
        return False
    for k in KEYS_STR:
        v = d.get(k)
        if not isinstance(v, str) or not v:
            return False
    for k in KEYS_INT:
        v = d.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < -1:
            return False
    for k in KEYS_NUM:
        v = d.get(k)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return False
    return d["kv_cache_free_blocks"] <= d["kv_cache_total_blocks"]


def receive(sock):
    recv = sock.recv
    loads = json.loads
    while True:
        data = recv(65535)
        stats["total_received"] += 1
        try:
            ok = valid(loads(data))
        except ValueError:  # JSONDecodeError and bad UTF-8 (UnicodeDecodeError)
            ok = False
        if ok:
            stats["valid_states"] += 1
        else:
            stats["invalid"] += 1


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path != "/stats":
            self.send_error(404)
            return
        body = json.dumps(stats).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rcvbuf", type=int, default=8 << 20,
                    help="SO_RCVBUF in bytes (default 8 MiB, as kvstash's gateway)")
    a = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # as kvstash's gateway: SO_RCVBUFFORCE (root) past rmem_max, else SO_RCVBUF
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), a.rcvbuf)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
    sock.bind(("127.0.0.1", 0))
    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("udp %d http %d" % (sock.getsockname()[1], srv.server_address[1]), flush=True)
    try:
        receive(sock)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
