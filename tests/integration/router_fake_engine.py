#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""A fake OpenAI-compatible engine for the router tests (stdlib only).

Usage: router_fake_engine.py --name A --models m1,m2 --ctl DIR [--port N] [--port-file F]

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions|/v1/completions|/v1/embeddings.
Responses name the engine ("engine": NAME) and echo the X-Request-Id it received.
Behaviour is switched at run time by files in DIR:
  NAME.sick   -> /health answers 503
  NAME.nomodels -> /v1/models answers 503 (the engine is up but its models are not listed yet)
  NAME.slow   -> completions wait the number of milliseconds written in the file
  NAME.closeidle -> the connection is closed after each response although the response said
                 nothing (as an engine whose keep-alive timeout expired would), so a proxy's
                 pooled connection to it is found closed when next used
Streaming ("stream": true): SSE, chunked. After the first event the engine waits (up to 5 s) for
the file named by the request header X-Test-Gate to exist; the last event reports "gated": true if
it appeared, which proves the client saw the first event before the rest was even produced.
With the header X-Test-Big: N the stream is instead N bytes of 64 KiB events, written as fast as
the connection takes them; NAME.progress holds the bytes written so far.
"""
import argparse
import json
import os
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    args = ap.parse_args()
    models = args.models.split(",")
    counter = {"n": 0}

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            pass

        def _json(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self._maybe_close()

        def _maybe_close(self):
            if os.path.exists(os.path.join(args.ctl, args.name + ".closeidle")):
                self.close_connection = True

        def do_GET(self):
            if self.path == "/health":
                if os.path.exists(os.path.join(args.ctl, args.name + ".sick")):
                    self._json(503, {"status": "sick"})
                else:
                    self._json(200, {"status": "ok"})
            elif self.path == "/v1/models":
                if os.path.exists(os.path.join(args.ctl, args.name + ".nomodels")):
                    self._json(503, {"error": "models not loaded yet"})
                    return
                self._json(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "owned_by": "fake-" + args.name}
                    for m in models]})
            else:
                self._json(404, {"error": "no such path"})

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(n)
            try:
                req = json.loads(raw)
            except ValueError:
                self._json(400, {"error": "engine got bad JSON"})
                return
            counter["n"] += 1
            slow = os.path.join(args.ctl, args.name + ".slow")
            if os.path.exists(slow):
                try:
                    with open(slow) as f:
                        ms = int(f.read().strip() or "0")
                except (OSError, ValueError):
                    ms = 0
                time.sleep(ms / 1000.0)
            info = {"engine": args.name, "model": req.get("model"), "path": self.path,
                    "request_id": self.headers.get("X-Request-Id"), "served": counter["n"],
                    "host": self.headers.get("Host")}
            if not req.get("stream"):
                info["object"] = "chat.completion"
                info["choices"] = [{"index": 0, "message": {"role": "assistant",
                                                            "content": "hello"}}]
                self._json(200, info)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def chunk(obj):
                data = ("data: " + (obj if isinstance(obj, str) else json.dumps(obj)) +
                        "\n\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            big = int(self.headers.get("X-Test-Big", "0") or "0")
            if big:
                # a long fast stream; NAME.progress says how many bytes were written so far
                # (a proxy that applies backpressure holds the writer back)
                piece = b"data: " + b"x" * 65528 + b"\n\n"
                sent = 0
                prog = os.path.join(args.ctl, args.name + ".progress")
                while sent < big:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    sent += len(piece)
                    with open(prog + ".tmp", "w") as f:
                        f.write(str(sent))
                    os.rename(prog + ".tmp", prog)
                chunk("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                return
            chunk(dict(info, i=0))
            gate = self.headers.get("X-Test-Gate")
            gated = False
            if gate:
                deadline = time.time() + 5
                while time.time() < deadline:
                    if os.path.exists(gate):
                        gated = True
                        break
                    time.sleep(0.01)
            for i in range(1, 4):
                chunk(dict(info, i=i, gated=gated))
            chunk("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            self._maybe_close()

    srv = Server(("127.0.0.1", args.port), H)
    port = srv.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.rename(tmp, args.port_file)
    sys.stdout.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
