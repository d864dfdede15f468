#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_xfer_wire.sh - the transfer engine seen from outside, across processes: `kvstash serve`
# publishes its segment descriptor (checked field by field through metad's HTTP API), and an
# independent client written in Python speaks the documented wire protocol (docs/design/xfer.md)
# to it: token refused/accepted, READ, acknowledged WRITE, bounds and unknown-segment errors,
# a malformed frame closing the connection. Also: a forced rdma transport without a device
# fails at start-up with a clear line.
set -euo pipefail
BIN=${KVSTASH_BIN:?KVSTASH_BIN not set}
WORK=$(mktemp -d)
SERVE_PID=
cleanup() {
    if [ -n "$SERVE_PID" ]; then
        kill "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    /usr/bin/python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

PORT=$(free_port)
"$BIN" serve --metadata-addr "127.0.0.1:$PORT" --capacity 1MiB --segment wiretest \
    --token s3cret >"$WORK/serve.out" 2>&1 &
SERVE_PID=$!
for _ in $(seq 1 100); do
    grep -q "ready" "$WORK/serve.out" 2>/dev/null && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.out"; echo "serve died"; exit 1; }
    sleep 0.1
done
grep -q "ready" "$WORK/serve.out" || { cat "$WORK/serve.out"; echo "serve not ready"; exit 1; }

curl -sf "http://127.0.0.1:$PORT/metadata?key=/kvstash/default/segments/wiretest" \
    >"$WORK/desc.json"

SERVE_PID=$SERVE_PID /usr/bin/python3 - "$WORK/desc.json" <<'EOF'
import json, os, socket, struct, sys

desc = json.load(open(sys.argv[1]))
def check(cond, what):
    if not cond:
        print("FAIL:", what, "descriptor:", desc)
        sys.exit(1)

check(set(desc) <= {"v", "name", "size", "seg", "host", "pid", "tcp", "shm", "rdma"},
      "only known fields")
check(desc["v"] == 1 and desc["name"] == "wiretest", "version and name")
check(desc["size"] == 1 << 20, "size is the capacity")
check(desc["pid"] == int(os.environ["SERVE_PID"]), "pid is the serving process")
boot = open("/proc/sys/kernel/random/boot_id").read().strip()
check(desc["host"]["boot_id"] == boot, "boot id of this host")
check(desc["host"]["hostname"] == socket.gethostname(), "hostname")
check(desc["shm"].startswith("/proc/%d/fd/" % desc["pid"]), "memfd path of the owner")
check(os.readlink(desc["shm"]).startswith("/memfd:kvx:wiretest"), "the path is the segment's memfd")
host, port = desc["tcp"].rsplit(":", 1)
seg = int(desc["seg"])

MAGIC, HDR = 0x3158564B, struct.Struct("<IBBHiIQQQQ")
HELLO, READ, WRITE, RESP = 1, 2, 3, 1

def frame(op, flags=0, status=0, rid=0, seg=0, off=0, length=0):
    return HDR.pack(MAGIC, 1, op, flags, status, 0, rid, seg, off, length)

def recvn(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            return None
        b += c
    return b

def resp(s):
    b = recvn(s, HDR.size)
    check(b is not None, "a response arrives")
    magic, ver, op, flags, status, res, rid, sg, off, length = HDR.unpack(b)
    check(magic == MAGIC and ver == 1 and flags == RESP and res == 0, "response header")
    return op, status, rid, length

def connect(token):
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(frame(HELLO, length=len(token)) + token)
    return s

# wrong and missing token: KV_EPERM (-16), then closed
for tok in (b"wrong", b""):
    s = connect(tok)
    op, status, _, _ = resp(s)
    check(op == HELLO and status == -16, "token %r refused with KV_EPERM" % tok)
    check(recvn(s, 1) is None, "connection closed after refusal")
    s.close()

s = connect(b"s3cret")
op, status, _, _ = resp(s)
check(op == HELLO and status == 0, "right token accepted")
# fresh segment memory is zeroed
s.sendall(frame(READ, rid=1, seg=seg, off=0, length=64))
op, status, rid, length = resp(s)
check((op, status, rid, length) == (READ, 0, 1, 64), "READ response")
check(recvn(s, 64) == b"\0" * 64, "READ payload is zeroed memory")
# acknowledged WRITE, then read back; pipelined: both requests sent before any response
payload = bytes(range(256)) * 4
s.sendall(frame(WRITE, rid=2, seg=seg, off=4096, length=len(payload)) + payload +
          frame(READ, rid=3, seg=seg, off=4096, length=len(payload)))
op, status, rid, length = resp(s)
check((op, status, rid, length) == (WRITE, 0, 2, 0), "WRITE acknowledged")
op, status, rid, length = resp(s)
check((op, status, rid, length) == (READ, 0, 3, len(payload)), "READ after WRITE")
check(recvn(s, length) == payload, "the written bytes are in the segment")
# bounds: past the end, wrapping offset; unknown segment id. KV_EXFER_BOUNDS -100, NOSEG -101
s.sendall(frame(WRITE, rid=4, seg=seg, off=(1 << 20) - 8, length=16) + b"x" * 16)
check(resp(s)[:3] == (WRITE, -100, 4), "WRITE past the end: KV_EXFER_BOUNDS")
s.sendall(frame(READ, rid=5, seg=seg, off=(1 << 64) - 8, length=16))
check(resp(s) == (READ, -100, 5, 0), "wrapping READ: KV_EXFER_BOUNDS, no payload")
s.sendall(frame(READ, rid=6, seg=seg ^ (1 << 40), off=0, length=16))
check(resp(s) == (READ, -101, 6, 0), "unknown segment: KV_EXFER_NOSEG")
# the rejected WRITE touched nothing
s.sendall(frame(READ, rid=7, seg=seg, off=(1 << 20) - 16, length=16))
check(resp(s) == (READ, 0, 7, 16), "READ of the tail")
check(recvn(s, 16) == b"\0" * 16, "tail untouched by the rejected WRITE")
# a malformed frame (bad magic) closes the connection
s.sendall(b"\xab" * HDR.size)
check(recvn(s, 1) is None, "malformed frame closes the connection")
s.close()
print("wire protocol checks passed")
EOF

kill "$SERVE_PID"
wait "$SERVE_PID" || true
SERVE_PID=

# forced rdma without a device (or without libibverbs): start-up fails naming the reason
if [ -n "$(ls /sys/class/infiniband 2>/dev/null)" ]; then
    # every other check passed; exit 77 so ctest shows the test as skipped, not passed
    echo "SKIP: RDMA devices present: the forced-rdma-without-a-device check cannot run here"
    exit 77
fi
if "$BIN" serve --metadata-addr off --capacity 1MiB --segment rd --protocol rdma \
    >"$WORK/rdma.out" 2>&1; then
    echo "serve --protocol rdma should fail on a host without RDMA devices"
    exit 1
fi
grep -qi "rdma" "$WORK/rdma.out" || { cat "$WORK/rdma.out"; echo "no clear rdma error"; exit 1; }
echo "ok"
