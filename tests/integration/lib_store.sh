# shellcheck shell=bash
# SPDX-License-Identifier: Apache-2.0
# lib_store.sh - helpers for the store's integration tests (sourced by test_store_*.sh; not a
# test itself). Starts real processes on 127.0.0.1 with ports chosen at run time, remembers
# their pids and kills them (and removes the work dir) on exit, whatever happens.
#
# After sourcing: BIN (the kvstash binary), W (work dir), PY (python3), and the functions below.
set -euo pipefail
BIN=${KVSTASH_BIN:-$(pwd)/kvstash}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
W=$(mktemp -d /tmp/kvstash-store-test.XXXXXX)
declare -A PIDS=() # name -> pid
CLUSTER=t$$

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    local f
    for f in "$W"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 25 "$f" >&2; }; done
    exit 1
}
ok() { echo "ok - $*"; }
# skip WHY: exit 77, which ctest reports as "Skipped" (SKIP_RETURN_CODE), never as a pass.
skip() {
    echo "SKIP: $*"
    exit 77
}

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for SECONDS CMD...: runs CMD every 0.1 s until it succeeds.
wait_for() {
    local t=$1
    shift
    local end=$((SECONDS + t))
    while [ $SECONDS -lt $end ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# start NAME CMD...: runs CMD in the background, logs to $W/NAME.log, remembers its pid.
start() {
    local name=$1
    shift
    "$@" >"$W/$name.log" 2>&1 &
    PIDS[$name]=$!
}

# kill9 NAME: SIGKILL and reap.
kill9() {
    local p=${PIDS[$1]}
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unset "PIDS[$1]"
}

alive() { kill -0 "${PIDS[$1]}" 2>/dev/null; }

# start_metad: the built-in metadata server; sets META.
start_metad() {
    start metad "$BIN" metad --addr 127.0.0.1:0
    for _ in $(seq 250); do grep -q 'listening on http' "$W/metad.log" 2>/dev/null && break; sleep 0.02; done
    local port
    port=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$W/metad.log" | sed 's/.*://') ||
        fail "metad did not start"
    META=http://127.0.0.1:$port/metadata
}

# start_etcd: a real etcd on free ports; sets META (etcd://) and ETCD_EP.
start_etcd() {
    # a skip, not a pass: scripts/test.sh installs etcd, so there the suite fails on this skip
    command -v etcd >/dev/null || skip "etcd not installed (in PATH): the test needs a real etcd"
    local cp pp
    cp=$(free_port)
    pp=$(free_port)
    start etcd etcd --data-dir "$W/etcd" --name default \
        --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
        --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
        --initial-cluster "default=http://127.0.0.1:$pp" --log-level warn
    ETCD_EP=127.0.0.1:$cp
    META=etcd://127.0.0.1:$cp
    wait_for 20 curl -sf "http://$ETCD_EP/health" || fail "etcd did not start"
}

# start_master NAME [ARGS...]: sets MASTER_<NAME>=rpc addr, ADMIN_<NAME>=admin addr.
start_master() {
    local name=$1
    shift
    local rp ap
    rp=$(free_port)
    ap=$(free_port)
    start "$name" "$BIN" master --metadata="$META" --cluster="$CLUSTER" \
        --rpc-addr "127.0.0.1:$rp" --admin-addr "127.0.0.1:$ap" "$@"
    printf -v "MASTER_$name" '%s' "127.0.0.1:$rp"
    printf -v "ADMIN_$name" '%s' "127.0.0.1:$ap"
    wait_for 15 curl -sf "http://127.0.0.1:$ap/health" || fail "master $name did not start"
}

# start_node NAME CAPACITY [ARGS...]
start_node() {
    local name=$1 cap=$2
    shift 2
    start "$name" "$BIN" node --metadata="$META" --cluster="$CLUSTER" --node-id "$name" \
        --capacity "$cap" "$@"
}

# kv CMD ARGS...: the store CLI against the cluster (through metadata: follows the leader).
kv() {
    if [ "$1" = bench ]; then
        "$BIN" bench "$2" --metadata="$META" --cluster="$CLUSTER" --log-level error "${@:3}"
    else
        "$BIN" "$1" --metadata="$META" --cluster="$CLUSTER" --log-level error "${@:2}"
    fi
}

# nodes_up: how many nodes the leader reports.
nodes_up() {
    kv stat --json 2>/dev/null | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
n = d.get("nodes", 0)
print(len(n) if isinstance(n, list) else int(n))'
}

# wait_nodes N [SECONDS]
wait_nodes() {
    local want=$1 t=${2:-20}
    local end=$((SECONDS + t)) n=0
    while [ $SECONDS -lt $end ]; do
        n=$(nodes_up || echo 0)
        [ "$n" = "$want" ] && return 0
        sleep 0.2
    done
    fail "want $want nodes up, have $n"
}

# lease_ms MS: a read lease of MS milliseconds, scaled by KVSTASH_TEST_LEASE_SCALE (set by ctest:
# 5 in a ThreadSanitizer build, where a 1 MiB get can outlast a 200 ms lease and fail with
# "timed out"; 1 otherwise).
lease_ms() {
    echo $(($1 * ${KVSTASH_TEST_LEASE_SCALE:-1}))
}

# mkval FILE SIZE SEED: deterministic pseudo-random content.
mkval() {
    "$PY" -c '
import random, sys
r = random.Random(int(sys.argv[3]))
n = int(sys.argv[2])
open(sys.argv[1], "wb").write(r.randbytes(n))' "$1" "$2" "$3"
}
