#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# store_vs_redis.sh - kvstash store put/get vs Redis SET/GET for the same value size and
# concurrency, in one run on this host, and the ratios.
#
# Starts redis-server (no persistence) on a free port and a kvstash cluster (kvstash metad +
# master + one node, free ports), then runs
#   redis-benchmark -t set|get -d SIZE -c THREADS -n N (N sized to last DURATION seconds)
#   kvstash bench store --op=put|get --size=SIZE --threads=THREADS --protocol=shm  (same host)
#   kvstash bench store --op=put|get --size=SIZE --threads=THREADS --protocol=tcp
# (both sides for the same duration; any error on either side - a Redis error reply or failed
# call, a kvstash object that failed - ends the script with exit 1 instead of a figure)
# and prints ops/s and ratios against the goals: same-host get >= 2x Redis GET, put >= 1.5x
# Redis SET, over TCP >= 1x.
#
# Usage: bench/store_vs_redis.sh [--size BYTES] [--threads N] [--duration S] [--requests N]
#        [--quick] (2 s runs of 64 KiB values; put --size etc. after it to override)
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
    --quick) DURATION=2; REQUESTS=500; SIZE=65536; shift ;;
    -h | --help) sed -n '3,20p' "$0"; exit 0 ;;
    *) echo "store_vs_redis.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ -x "$BIN" ] || { echo "store_vs_redis.sh: no kvstash binary at $BIN (set KVSTASH_BIN)" >&2; exit 2; }
# Debian's interpreter, by path: the python3 first on PATH may be another one (a shim that
# forks a shell per call, which a polling loop pays on every round)
PY=/usr/bin/python3
[ -x "$PY" ] || { echo "store_vs_redis.sh: $PY not found (apt-get install python3)" >&2; exit 2; }
for t in redis-server redis-benchmark; do
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
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
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
up() { "$BIN" stat --master "$MRPC" --json --log-level error | "$PY" -c '
import json, sys
d = json.load(sys.stdin); n = d.get("nodes", 0)
sys.exit(0 if (len(n) if isinstance(n, list) else int(n)) >= 1 else 1)'; }
wait_for 20 up || { echo "node did not join; see below" >&2; tail "$W/node.log" >&2; exit 1; }

echo "value size $SIZE bytes, concurrency $THREADS, ${DURATION}s per run on both sides (redis calibrated with $REQUESTS requests)"
echo "host: $(nproc) cores; $(uname -sr)"

# --- redis-benchmark, sized to run --duration seconds like kvstash's runs ---
# redis-benchmark has no duration option: a calibration run of --requests gives its rate, then
# the measured run asks for rate * DURATION requests (at least --requests). Redis' own counters
# (INFO) must show exactly that many SET/GET calls and no error reply, else the script fails.
redis_info() { # FIELD (from INFO stats / commandstats) -> its value; "calls=N" for cmdstat_*
    redis-cli -p "$RP" info all | tr -d '\r' | "$PY" -c '
import sys
want = sys.argv[1]
for line in sys.stdin:
    k, _, v = line.strip().partition(":")
    if k == want:
        if k.startswith("cmdstat_"):
            d = dict(x.split("=", 1) for x in v.split(","))
            print(int(d["calls"]), int(d.get("failed_calls", 0)) + int(d.get("rejected_calls", 0)))
        else:
            print(v)
        break
else:
    print("0 0" if want.startswith("cmdstat_") else 0)' "$1"; }
redis_csv_rps() { "$PY" -c '
import csv, sys
for row in csv.reader(open(sys.argv[1])):
    if row and row[0] == sys.argv[2]:
        print(row[1]); break
else:
    print(0)' "$1" "$2"; }
redis_run() { # TEST (SET|GET) -> ops/s over a run of about DURATION seconds; exits on errors
    local t=$1 lt n rps c0 f0 c1 f1 e0 e1 t0 t1
    lt=${t,,}
    redis-benchmark -h 127.0.0.1 -p "$RP" -t "$lt" -d "$SIZE" -c "$THREADS" -n "$REQUESTS" --csv \
        >"$W/redis-cal.csv" 2>/dev/null
    rps=$(redis_csv_rps "$W/redis-cal.csv" "$t")
    n=$(awk -v r="$rps" -v d="$DURATION" -v m="$REQUESTS" 'BEGIN {n = int(r * d); print (n > m ? n : m)}')
    read -r c0 f0 < <(redis_info "cmdstat_$lt")
    e0=$(redis_info total_error_replies)
    t0=$(date +%s.%N)
    redis-benchmark -h 127.0.0.1 -p "$RP" -t "$lt" -d "$SIZE" -c "$THREADS" -n "$n" --csv \
        >"$W/redis.csv" 2>/dev/null
    t1=$(date +%s.%N)
    read -r c1 f1 < <(redis_info "cmdstat_$lt")
    e1=$(redis_info total_error_replies)
    if [ $((c1 - c0)) -ne "$n" ] || [ $((f1 - f0)) -ne 0 ] || [ $((e1 - e0)) -ne 0 ]; then
        echo "store_vs_redis.sh: redis $t run failed: $((c1 - c0)) of $n calls seen, $((f1 - f0)) failed, $((e1 - e0)) error replies" >&2
        exit 1
    fi
    echo "redis $t: $n requests in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s (wall), 0 errors" >&2
    redis_csv_rps "$W/redis.csv" "$t"
}
R_SET=$(redis_run SET)
R_GET=$(redis_run GET)

# --- kvstash bench store (every run must finish without an error) ---
kv_ops() { # OP PROTOCOL -> ops/s p50 p99; exits when the run failed or had errors
    local rc=0
    "$BIN" bench store --master "$MRPC" --log-level error --op="$1" --protocol="$2" --size="$SIZE" \
        --threads="$THREADS" --duration="$DURATION" --json >"$W/kv-$1-$2.json" || rc=$?
    "$PY" -c '
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit("store_vs_redis.sh: kvstash %s (%s): no result (exit %s): %s" % (sys.argv[2], sys.argv[3], sys.argv[4], e))
if d.get("errors", 1) != 0 or d.get("ops", 0) <= 0 or sys.argv[4] != "0":
    sys.exit("store_vs_redis.sh: kvstash %s (%s): %s errors, %s ops, exit %s; first error: %s"
             % (sys.argv[2], sys.argv[3], d.get("errors"), d.get("ops"), sys.argv[4], d.get("first_error")))
print("kvstash %s (%s): %d ops in %.1f s, 0 errors" % (sys.argv[2], sys.argv[3], d["ops"], d.get("duration_s", 0)), file=sys.stderr)
print("%.1f %.0f %.0f" % (d["ops_per_s"], d["p50_us"], d["p99_us"]))' "$W/kv-$1-$2.json" "$1" "$2" "$rc"
}
kv_put_shm=$(kv_ops put shm)
kv_get_shm=$(kv_ops get shm)
kv_put_tcp=$(kv_ops put tcp)
kv_get_tcp=$(kv_ops get tcp)
read -r K_PUT_SHM K_PUT_SHM_P50 K_PUT_SHM_P99 <<<"$kv_put_shm"
read -r K_GET_SHM K_GET_SHM_P50 K_GET_SHM_P99 <<<"$kv_get_shm"
read -r K_PUT_TCP K_PUT_TCP_P50 K_PUT_TCP_P99 <<<"$kv_put_tcp"
read -r K_GET_TCP K_GET_TCP_P50 K_GET_TCP_P99 <<<"$kv_get_tcp"

"$PY" - "$R_SET" "$R_GET" "$K_PUT_SHM" "$K_GET_SHM" "$K_PUT_TCP" "$K_GET_TCP" \
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
