#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# bench/p2p/run.sh - time for N peers to get a set through `kvstash p2p` (all at once, copying
# from each other) against N sequential copies from one source:
#   p2p       : 1 publisher, N fetchers started together (--seed until all are done)
#   seq-pub   : N fetches one after another, each alone, so each reads everything from the
#               publisher (same binary, transport, verification: only the swarm differs)
#   seq-cp    : N sequential `cp -r` of the set (the local-disk floor of one copy)
# Prints wall times, the publisher's upload (p2p stat) and ratios. Everything on 127.0.0.1.
# Usage: bench/p2p/run.sh [N=8] [SIZE_MIB=512] [CHUNK=16MiB]
# Env: KVSTASH_BIN (default build/kvstash), BENCH_DIR (default /tmp), FETCH_TIMEOUT (600 s: a
# fetcher that exits unfinished or is not done by then fails the run). Every fetched copy is
# compared with the source, part by part, byte for byte; a difference fails the run.
# Quick: bench/p2p/run.sh 3 64 4MiB
set -euo pipefail
n=${1:-8}
size_mib=${2:-512}
chunk=${3:-16MiB}
bin=${KVSTASH_BIN:-$(dirname "$0")/../../build/kvstash}
fetch_timeout=${FETCH_TIMEOUT:-600}
work=$(mktemp -d "${BENCH_DIR:-/tmp}/kvstash-bench-p2p.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
need=$(( (size_mib * (2 * n + 2)) * 1024 ))
avail=$(df --output=avail -k "$work" | tail -1)
[ "$avail" -gt "$need" ] || { echo "need $((need / 1024)) MiB free in $work" >&2; exit 1; }
now() { date +%s.%N; }
# same_set DIR WHAT: every part of the set in DIR equals the source, byte for byte
same_set() {
  local f
  for f in "$work"/src/*; do
    cmp -s "$f" "$1/$(basename "$f")" || { echo "$2: $(basename "$f") differs from the source" >&2; exit 1; }
  done
}
port=$(/usr/bin/python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$bin" metad --addr "127.0.0.1:$port" >"$work/metad.log" 2>&1 &
pids+=($!)
M=(--metadata="http://127.0.0.1:$port/metadata" --log-level=error)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/metadata?key=x" && break; sleep 0.05; done

mkdir -p "$work/src"
per=$((size_mib / 4))
for i in 1 2 3 4; do head -c "${per}M" /dev/urandom >"$work/src/part$i.bin"; done
"$bin" p2p publish "${M[@]}" --chunk-size="$chunk" --json set "$work/src" >"$work/pub.out" &
pids+=($!)
for _ in $(seq 200); do [ -s "$work/pub.out" ] && break; sleep 0.05; done

# ---- p2p: N at once ----
t0=$(now)
fp=()
for i in $(seq "$n"); do
  "$bin" p2p fetch "${M[@]}" --json --seed set "$work/p$i" >"$work/p$i.out" &
  fp+=($!)
  pids+=($!)
done
# a fetcher that died, or is not done within FETCH_TIMEOUT s, fails the run (no figure)
deadline=$((SECONDS + fetch_timeout))
for i in $(seq "$n"); do
  until [ -s "$work/p$i.out" ]; do
    if ! kill -0 "${fp[$((i - 1))]}" 2>/dev/null; then
      rc=0
      wait "${fp[$((i - 1))]}" || rc=$?
      echo "fetcher p$i exited ($rc) without finishing:" >&2
      tail -5 "$work/p$i.out" >&2 || true
      exit 1
    fi
    [ "$SECONDS" -lt "$deadline" ] || { echo "fetcher p$i not done after ${fetch_timeout} s" >&2; exit 1; }
    sleep 0.01
  done
done
t1=$(now)
"$bin" p2p stat "${M[@]}" --json set >"$work/stat1.json"
for p in "${fp[@]}"; do kill "$p"; done
for p in "${fp[@]}"; do wait "$p" 2>/dev/null || true; done
for i in $(seq "$n"); do same_set "$work/p$i" "p2p fetcher p$i"; done
rm -rf "$work"/p[0-9]*

# ---- seq-pub: N sequential copies from the publisher ----
sleep 1
"$bin" p2p rm "${M[@]}" set
kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
"$bin" p2p publish "${M[@]}" --chunk-size="$chunk" --json set "$work/src" >"$work/pub2.out" &
pids+=($!)
for _ in $(seq 200); do [ -s "$work/pub2.out" ] && break; sleep 0.05; done
t2=$(now)
for i in $(seq "$n"); do
  timeout "$fetch_timeout" "$bin" p2p fetch "${M[@]}" --json set "$work/s$i" >"$work/s$i.out" ||
    { echo "sequential fetch s$i failed or timed out (${fetch_timeout} s)" >&2; exit 1; }
  same_set "$work/s$i" "sequential fetch s$i"
  rm -rf "$work/s$i"
done
t3=$(now)
"$bin" p2p stat "${M[@]}" --json set >"$work/stat2.json"

# ---- seq-cp ----
sync
t4=$(now)
for i in $(seq "$n"); do cp -r "$work/src" "$work/c$i"; rm -rf "$work/c$i"; done
t5=$(now)

/usr/bin/python3 - "$n" "$size_mib" "$chunk" "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" "$work/stat1.json" "$work/stat2.json" <<'PY'
import json, sys
n, size_mib, chunk = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t0, t1, t2, t3, t4, t5 = map(float, sys.argv[4:10])
s1, s2 = json.load(open(sys.argv[10])), json.load(open(sys.argv[11]))
p2p, seq, cp = t1 - t0, t3 - t2, t5 - t4
size = s1["size_bytes"]
print(f"set: {size_mib} MiB in 4 files, chunk {chunk}, {n} peers, 127.0.0.1")
print(f"p2p (N at once)         : {p2p:7.2f} s  publisher uploaded {s1['publisher_uploaded_bytes']/size:.2f}x the set, peers {s1['peer_uploaded_bytes']/size:.2f}x")
print(f"N sequential from pub.  : {seq:7.2f} s  publisher uploaded {s2['publisher_uploaded_bytes']/size:.2f}x the set")
print(f"N sequential cp -r      : {cp:7.2f} s")
print(f"ratio seq-from-publisher / p2p: {seq/p2p:.2f}   cp / p2p: {cp/p2p:.2f}")
PY
