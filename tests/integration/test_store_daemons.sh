#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_store_daemons.sh - `kvstash master` and `kvstash node` as real processes on an http://
# metadata server: leader and standby say what they are, the node says where it mounted, the
# admin endpoints answer, SIGTERM stops a master cleanly (exit 0) and the standby takes over at
# once with the node mounting on it; bad arguments exit 2 with one line naming the problem.
set -euo pipefail
BIN=${KVSTASH_BIN:?KVSTASH_BIN not set}
W=$(mktemp -d /tmp/kvstash-daemons-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    for f in "$W"/*.log; do echo "== $f"; tail -20 "$f"; done
    exit 1
}
free_port() {
    /usr/bin/python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}
wait_log() { # FILE REGEX [SECONDS]
    local end=$((SECONDS + ${3:-10}))
    while [ $SECONDS -lt $end ]; do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# bad usage: exit 2, one line
set +e
"$BIN" master >"$W/u1" 2>&1; rc1=$?
"$BIN" master --metadata=http://127.0.0.1:1/metadata --rpc-addr nonsense >"$W/u2" 2>&1; rc2=$?
"$BIN" node --metadata=http://127.0.0.1:1/metadata --capacity=12 >"$W/u3" 2>&1; rc3=$?
"$BIN" master --metadata=x --low-watermark 0.9 --high-watermark 0.5 >"$W/u4" 2>&1; rc4=$?
set -e
[ $rc1 = 2 ] && grep -q -- "--metadata URL is required" "$W/u1" || fail "master without --metadata: $(cat "$W/u1")"
[ $rc2 = 2 ] && grep -q "bad --rpc-addr" "$W/u2" || fail "bad --rpc-addr: $(cat "$W/u2")"
[ $rc3 = 2 ] && grep -q "capacity" "$W/u3" || fail "tiny --capacity: $(cat "$W/u3")"
[ $rc4 = 2 ] && grep -q "low-watermark" "$W/u4" || fail "watermarks: $(cat "$W/u4")"
[ "$(wc -l <"$W/u1")" = 1 ] || fail "more than one line for a usage error"
echo "ok - bad arguments exit 2 with one line"

MP=$(free_port)
"$BIN" metad --addr "127.0.0.1:$MP" >"$W/metad.log" 2>&1 &
PIDS+=($!)
META=http://127.0.0.1:$MP/metadata
wait_log "$W/metad.log" "listening" || fail "metad did not start"

AP1=$(free_port)
"$BIN" master --metadata="$META" --id mA --rpc-addr 127.0.0.1:0 --admin-addr "127.0.0.1:$AP1" \
    --leader-ttl 2 >"$W/mA.log" 2>&1 &
MA=$!
PIDS+=("$MA")
wait_log "$W/mA.log" "mA is now the LEADER \(epoch [0-9]+\)" || fail "mA did not lead"
"$BIN" master --metadata="$META" --id mB --rpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
    --leader-ttl 2 >"$W/mB.log" 2>&1 &
PIDS+=($!)
wait_log "$W/mB.log" "mB is a STANDBY; following leader mA at 127.0.0.1:[0-9]+" ||
    fail "mB did not report the leader it follows"
grep -qE "RPC on 127.0.0.1:[0-9]+, admin 127.0.0.1:$AP1" "$W/mA.log" || fail "mA listen line"
echo "ok - leader and standby log where they listen and whom they follow"

"$BIN" node --metadata="$META" --node-id n1 --capacity 8MiB --ssd-dir "$W/ssd" >"$W/n1.log" 2>&1 &
NP=$!
PIDS+=("$NP")
wait_log "$W/n1.log" "node n1 mounted on master 127.0.0.1:[0-9]+ \(epoch 1\)" || fail "node did not mount"
wait_log "$W/mA.log" "node n1 mounted: segment n1\." || fail "leader did not log the mount"

curl -sf "http://127.0.0.1:$AP1/health" | grep -q '"leader":true' || fail "/health"
curl -sf "http://127.0.0.1:$AP1/metrics" >"$W/metrics"
grep -q '^kvstash_store_nodes 1$' "$W/metrics" || fail "/metrics nodes: $(cat "$W/metrics")"
grep -q '^kvstash_store_capacity_bytes{node="n1",tier="dram"} 8388608$' "$W/metrics" || fail "/metrics capacity"
grep -q '^# TYPE kvstash_store_hits_total counter$' "$W/metrics" || fail "/metrics types"
curl -sf "http://127.0.0.1:$AP1/api/v1/cluster" >"$W/cluster.json"
/usr/bin/python3 - "$W/cluster.json" <<'PY' || fail "/api/v1/cluster: $(cat "$W/cluster.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["leader"] is True and d["master_id"] == "mA", d
assert len(d["nodes"]) == 1 and d["nodes"][0]["id"] == "n1", d
assert d["capacity"] == 8 << 20 and d["nodes"][0]["ssd_capacity"] > 0, d
for k in ("used", "objects", "hits", "misses", "evictions", "demotions"):
    assert k in d, k
PY
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$AP1/nope")
[ "$code" = 404 ] || fail "unknown admin path: $code"
echo "ok - admin /health, /metrics, /api/v1/cluster"

# SIGTERM the leader: clean exit, the standby leads at once (the lease is revoked)
kill -TERM $MA
t0=$SECONDS
wait $MA
rc=$?
[ $rc = 0 ] || fail "master exit status $rc after SIGTERM"
grep -q "master mA stopped" "$W/mA.log" || fail "mA stop line"
wait_log "$W/mB.log" "mB is now the LEADER \(epoch 2\)" 5 || fail "standby did not take over"
wait_log "$W/n1.log" "node n1 mounted on master 127.0.0.1:[0-9]+ \(epoch 2\)" 5 ||
    fail "node did not follow the new leader"
echo "ok - SIGTERM: clean exit, standby leads (epoch 2) within $((SECONDS - t0)) s, node follows"

kill -TERM $NP
wait $NP || fail "node exit status $? after SIGTERM"
grep -q "node n1 stopped" "$W/n1.log" || fail "node stop line"
echo "ok - node SIGTERM: clean exit"

# without --node-id the id is kept in the SSD dir: a restart comes back as the same node
for run in 1 2; do
    "$BIN" node --metadata="$META" --capacity 4MiB --ssd-dir "$W/ssd2" >"$W/nx$run.log" 2>&1 &
    NX=$!
    PIDS+=("$NX")
    wait_log "$W/nx$run.log" "mounted on master" || fail "node (run $run) did not mount"
    kill -TERM $NX
    wait $NX || fail "node (run $run) exit status"
done
id=$(cat "$W/ssd2/NODE_ID")
[ -n "$id" ] && grep -q "node $id mounted" "$W/nx1.log" && grep -q "node $id mounted" "$W/nx2.log" ||
    fail "node id not kept across restarts (NODE_ID '$id')"
echo "ok - the node id is kept in the SSD dir across restarts"
