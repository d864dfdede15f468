#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# store_vs_redis.sh - kvstash store put/get vs Redis SET/GET for the same value size and
# concurrency, in one run on this host, and the ratios.
#
# Starts redis-server (no persistence) on a free port and a kvstash cluster (kvstash metad +
# master + one node, free ports), then runs
#   redis-benchmark -t set,get -d SIZE -c THREADS -n REQUESTS
#   kvstash bench store --op=put|get --size=SIZE --threads=THREADS --protocol=shm  (same host)
#   kvstash bench store --op=put|get --size=SIZE --threads=THREADS --protocol=tcp
# and prints ops/s and ratios against the goals: same-host get >= 2x Redis GET, put >= 1.5x
# Redis SET, over TCP >= 1x.
#
# Usage: bench/store_vs_redis.sh [--size BYTES] [--threads N] [--duration S] [--requests N]
# Env: KVSTASH_BIN (default: build/kvstash next to this script's repo).
# Everything it starts is stopped on exit. Only loopback is used.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${KVSTASH_BIN:-$HERE/../build/kvstash}
SIZE=1048576
THREADS=4
DURATION=10
REQUESTS=4000
CAPACITY=2GiB
while [ $# -gt 0 ]; do
    case $1 in
    --size) SIZE=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --capacity) CAPACITY=$2; shift 2 ;;
    -h | --help) sed -n '3,17p' "$0"; exit 0 ;;
    *) echo "store_vs_redis.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ -x "$BIN" ] || { echo "store_vs_redis.sh: no kvstash binary at $BIN (set KVSTASH_BIN)" >&2; exit 2; }
for t in redis-server redis-benchmark python3; do
    command -v $t >/dev/null || { echo "store_vs_redis.sh: $t not found" >&2; exit 2; }
done

W=$(mktemp -d /tmp/kvstash-bench-redis.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # SECONDS CMD...
    local end=$((SECONDS + $1))
    shift
    while [ $SECONDS -lt $end ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

# --- Redis ---
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --protected-mode yes \
    --dir "$W" >"$W/redis.log" 2>&1 &
pids+=($!)
wait_for 10 redis-cli -p "$RP" ping || { echo "redis-server did not start" >&2; exit 1; }

# --- kvstash: metad + master + node ---
"$BIN" metad --addr 127.0.0.1:0 >"$W/metad.log" 2>&1 &
pids+=($!)
wait_for 10 grep -q 'listening on http' "$W/metad.log" || { echo "metad did not start" >&2; exit 1; }
MPORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$W/metad.log" | sed 's/.*://')
META=http://127.0.0.1:$MPORT/metadata
MRPC=127.0.0.1:$(free_port)
MADM=127.0.0.1:$(free_port)
"$BIN" master --metadata="$META" --rpc-addr "$MRPC" --admin-addr "$MADM" >"$W/master.log" 2>&1 &
pids+=($!)
wait_for 15 curl -sf "http://$MADM/health" || { echo "master did not start; see below" >&2; tail "$W/master.log" >&2; exit 1; }
"$BIN" node --metadata="$META" --capacity "$CAPACITY" --node-id bench-node >"$W/node.log" 2>&1 &
pids+=($!)
up() { "$BIN" stat --master "$MRPC" --json --log-level error | python3 -c '
import json, sys
d = json.load(sys.stdin); n = d.get("nodes", 0)
sys.exit(0 if (len(n) if isinstance(n, list) else int(n)) >= 1 else 1)'; }
wait_for 20 up || { echo "node did not join; see below" >&2; tail "$W/node.log" >&2; exit 1; }

echo "value size $SIZE bytes, concurrency $THREADS, kvstash duration ${DURATION}s, redis $REQUESTS requests"
echo "host: $(nproc) cores; $(uname -sr)"

# --- redis-benchmark ---
redis-benchmark -h 127.0.0.1 -p "$RP" -t set,get -d "$SIZE" -c "$THREADS" -n "$REQUESTS" --csv \
    >"$W/redis.csv" 2>/dev/null
redis_rps() { python3 -c '
import csv, sys
for row in csv.reader(open(sys.argv[1])):
    if row and row[0] == sys.argv[2]:
        print(row[1]); break
else:
    print(0)' "$W/redis.csv" "$1"; }
R_SET=$(redis_rps SET)
R_GET=$(redis_rps GET)

# --- kvstash bench store ---
kv_ops() { # OP PROTOCOL -> ops/s
    "$BIN" bench store --master "$MRPC" --log-level error --op="$1" --protocol="$2" --size="$SIZE" \
        --threads="$THREADS" --duration="$DURATION" --json >"$W/kv-$1-$2.json" || true
    python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1])); print("%.1f %.0f %.0f" % (d["ops_per_s"], d["p50_us"], d["p99_us"]))
except Exception:
    print("0 0 0")' "$W/kv-$1-$2.json"
}
read -r K_PUT_SHM K_PUT_SHM_P50 K_PUT_SHM_P99 < <(kv_ops put shm)
read -r K_GET_SHM K_GET_SHM_P50 K_GET_SHM_P99 < <(kv_ops get shm)
read -r K_PUT_TCP K_PUT_TCP_P50 K_PUT_TCP_P99 < <(kv_ops put tcp)
read -r K_GET_TCP K_GET_TCP_P50 K_GET_TCP_P99 < <(kv_ops get tcp)

python3 - "$R_SET" "$R_GET" "$K_PUT_SHM" "$K_GET_SHM" "$K_PUT_TCP" "$K_GET_TCP" \
    "$K_PUT_SHM_P50/$K_PUT_SHM_P99" "$K_GET_SHM_P50/$K_GET_SHM_P99" \
    "$K_PUT_TCP_P50/$K_PUT_TCP_P99" "$K_GET_TCP_P50/$K_GET_TCP_P99" <<'EOF'
import sys
rset, rget, pshm, gshm, ptcp, gtcp = (float(x) for x in sys.argv[1:7])
lat = sys.argv[7:11]
def ratio(a, b):
    return a / b if b else float("nan")
rows = [
    ("put, same host (shm)", pshm, "SET", rset, 1.5, lat[0]),
    ("get, same host (shm)", gshm, "GET", rget, 2.0, lat[1]),
    ("put, tcp", ptcp, "SET", rset, 1.0, lat[2]),
    ("get, tcp", gtcp, "GET", rget, 1.0, lat[3]),
]
print()
print("%-22s %12s %14s %10s %8s %6s  %s" % ("kvstash", "ops/s", "redis", "ops/s", "ratio", "goal", "p50/p99 us"))
for name, k, rn, r, goal, l in rows:
    q = ratio(k, r)
    verdict = "ok" if q >= goal else "MISS"
    print("%-22s %12.1f %14s %10.1f %7.2fx %5.1fx  %s %s" % (name, k, "redis " + rn, r, q, goal, l, verdict))
EOF
