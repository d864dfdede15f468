#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# replay_traces.sh - replays the Mooncake traces (../shared/traces) against a fresh kvstash
# cluster (kvstash metad + master + one node) twice each: with ample capacity (every distinct
# block fits) and with capacity for 10% of the trace's distinct blocks. Prints one JSON line per
# run (kvstash replay --json) prefixed by the run's name.
#
# Usage: bench/replay_traces.sh [--block-bytes BYTES] [--traces DIR] [--get-hits]
# Env: KVSTASH_BIN (default: build/kvstash). Only loopback is used; everything started is
# stopped on exit.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${KVSTASH_BIN:-$HERE/../build/kvstash}
TRACES=$HERE/../../shared/traces
BLOCK=4096
EXTRA=()
while [ $# -gt 0 ]; do
    case $1 in
    --block-bytes) BLOCK=$2; shift 2 ;;
    --traces) TRACES=$2; shift 2 ;;
    --get-hits) EXTRA+=(--get-hits); shift ;;
    -h | --help) sed -n '3,11p' "$0"; exit 0 ;;
    *) echo "replay_traces.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ -x "$BIN" ] || { echo "replay_traces.sh: no kvstash binary at $BIN (set KVSTASH_BIN)" >&2; exit 2; }
# Debian's interpreter, by path: the python3 first on PATH may be another one (a shim that
# forks a shell per call, which a polling loop pays on every round)
PY=/usr/bin/python3
[ -x "$PY" ] || { echo "replay_traces.sh: $PY not found (apt-get install python3)" >&2; exit 2; }
W=$(mktemp -d /tmp/kvstash-replay.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() {
    local end=$((SECONDS + $1))
    shift
    while [ $SECONDS -lt $end ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

# stop PID...: SIGTERM, then SIGKILL whatever is still there after 5 s.
stop() {
    kill "$@" 2>/dev/null || true
    local p
    for p in "$@"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    wait "$@" 2>/dev/null || true
}

# run NAME TRACE CAPACITY_BYTES: a fresh cluster, one replay, the cluster stopped.
run() {
    local name=$1 trace=$2 cap=$3
    local mp rp ap
    "$BIN" metad --addr 127.0.0.1:0 >"$W/metad.log" 2>&1 &
    local p_md=$!
    wait_for 10 grep -q 'listening on http' "$W/metad.log" || { echo "metad did not start" >&2; exit 1; }
    mp=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$W/metad.log" | sed 's/.*://')
    local meta=http://127.0.0.1:$mp/metadata
    rp=$(free_port)
    ap=$(free_port)
    "$BIN" master --metadata="$meta" --rpc-addr "127.0.0.1:$rp" --admin-addr "127.0.0.1:$ap" \
        >"$W/master.log" 2>&1 &
    local p_m=$!
    "$BIN" node --metadata="$meta" --capacity "$cap" --node-id replay-node >"$W/node.log" 2>&1 &
    local p_n=$!
    pids=("$p_md" "$p_m" "$p_n")
    wait_for 20 curl -sf "http://127.0.0.1:$ap/health" || { echo "master did not start" >&2; exit 1; }
    local up=0
    for _ in $(seq 100); do
        if "$BIN" stat --master "127.0.0.1:$rp" --timeout 2000 --json --log-level error 2>/dev/null |
            "$PY" -c 'import json,sys; d=json.load(sys.stdin); n=d.get("nodes",0); sys.exit(0 if (len(n) if isinstance(n,list) else int(n)) else 1)'; then
            up=1
            break
        fi
        sleep 0.2
    done
    [ $up = 1 ] || { echo "node did not join" >&2; tail "$W/node.log" >&2; exit 1; }
    printf '%s capacity=%s ' "$name" "$cap"
    "$BIN" replay --master "127.0.0.1:$rp" --log-level error --trace "$trace" --block-bytes "$BLOCK" \
        --progress off --json "${EXTRA[@]}"
    stop $p_n $p_m $p_md
    pids=()
}

for t in ${ONLY:-conversation synthetic}; do
    f=$TRACES/${t}_trace.jsonl
    [ -f "$f" ] || { echo "replay_traces.sh: $f not found (--traces DIR)" >&2; exit 2; }
    distinct=$("$PY" -c '
import json, sys
s = set()
for line in open(sys.argv[1]):
    s.update(json.loads(line)["hash_ids"])
print(len(s))' "$f")
    # ample: every distinct block, with headroom past the 95% high watermark
    run "$t/ample" "$f" $((distinct * BLOCK * 5 / 4 + 16777216))
    run "$t/10%" "$f" $((distinct * BLOCK / 10))
done
