#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# bench/gateway/run.sh - the state gateway's ingest benchmark against a peer measured in the
# same run:
#   1. starts `kvstash gateway` on free loopback ports (no log, default 8 MiB receive buffer),
#   2. runs `kvstash bench gateway` - an independent process blasting datagrams with sendmmsg -
#      at each offered rate, then as fast as one core can send,
#   3. does the same against bench/gateway/py_receiver.py: the floor of any Python gateway (one
#      thread, `json.loads` and a check of the eight ELRAR keys per datagram, nothing kept),
#   4. prints, per step and per receiver: datagrams sent, states ingested (valid_states from
#      each receiver's /stats), loss, and the receiver's CPU time (user+sys from /proc/PID/stat)
#      per ingested state; then the ratio of the two CPU costs per state.
# Usage: bench/gateway/run.sh [RATES] [DURATION_MS]   e.g. bench/gateway/run.sh 50000,100000,0 5000
#        bench/gateway/run.sh --quick   (rates 20000,0 for 2 s each)
# Env: KVSTASH_BIN (default build/kvstash). Figures are meaningless while other work runs.
# Exit status: 0, or 1 when a receiver could not be started or measured.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${KVSTASH_BIN:-build/kvstash}
PY=/usr/bin/python3
if [ "${1:-}" = --quick ]; then
  RATES=20000,0
  DUR=2000
else
  RATES=${1:-50000,100000,150000,200000,0}
  DUR=${2:-5000}
fi
[ -x "$BIN" ] || { echo "run.sh: $BIN not built (set KVSTASH_BIN)" >&2; exit 1; }
[ -x "$PY" ] || { echo "run.sh: $PY not found (the Python peer needs it)" >&2; exit 1; }
ERR=$(mktemp)
PYOUT=$(mktemp)
OUT=$(mktemp)
GW=
PYR=
cleanup() {
  [ -z "$GW" ] || { kill "$GW" 2>/dev/null; wait "$GW" 2>/dev/null || true; }
  [ -z "$PYR" ] || { kill "$PYR" 2>/dev/null; wait "$PYR" 2>/dev/null || true; }
  rm -f "$ERR" "$PYOUT" "$OUT"
}
trap cleanup EXIT

# us_per_state FILE: the "CPU per ingested state over all steps" figure of a bench run
us_per_state() { { grep -o 'over all steps: [0-9.]*' "$1" || true; } | awk '{print $4}'; }

"$BIN" gateway --udp-port 0 --http-addr 127.0.0.1:0 --log-level info 2>"$ERR" &
GW=$!
for _ in $(seq 100); do grep -q 'query API' "$ERR" && break; sleep 0.05; done
UDP=$({ grep -o 'udp://[^ ]*' "$ERR" || true; } | head -1 | sed 's/.*://')
HTTP=$({ grep -o '(port [0-9]*)' "$ERR" || true; } | head -1 | tr -dc 0-9)
if [ -z "$UDP" ] || [ -z "$HTTP" ]; then
  echo "run.sh: kvstash gateway did not start:" >&2
  cat "$ERR" >&2
  exit 1
fi
echo "== kvstash gateway: pid $GW, udp 127.0.0.1:$UDP, http 127.0.0.1:$HTTP; $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" bench gateway --target "127.0.0.1:$UDP" --gateway-http "127.0.0.1:$HTTP" --gateway-pid "$GW" \
  --rates "$RATES" --duration-ms "$DUR" | tee "$OUT"
KV_US=$(us_per_state "$OUT")
kill "$GW"
wait "$GW" 2>/dev/null || true
GW=

"$PY" bench/gateway/py_receiver.py >"$PYOUT" &
PYR=$!
for _ in $(seq 100); do grep -q '^udp ' "$PYOUT" && break; sleep 0.05; done
read -r _ PUDP _ PHTTP <"$PYOUT" || true
if [ -z "${PUDP:-}" ] || [ -z "${PHTTP:-}" ]; then
  echo "run.sh: py_receiver.py did not start" >&2
  exit 1
fi
echo "== Python receiver (json + 8 ELRAR keys): pid $PYR, udp 127.0.0.1:$PUDP, http 127.0.0.1:$PHTTP; load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" bench gateway --target "127.0.0.1:$PUDP" --gateway-http "127.0.0.1:$PHTTP" --gateway-pid "$PYR" \
  --rates "$RATES" --duration-ms "$DUR" | tee "$OUT"
PY_US=$(us_per_state "$OUT")

if [ -z "$KV_US" ] || [ -z "$PY_US" ]; then
  echo "run.sh: no CPU-per-state figure (kvstash: '${KV_US}', python: '${PY_US}')" >&2
  exit 1
fi
awk -v kv="$KV_US" -v py="$PY_US" 'BEGIN {
  printf "CPU per ingested state: kvstash gateway %.3f us, Python json receiver %.3f us (same run): kvstash uses %.1fx less CPU per state (goal: >= 10x)\n", kv, py, (kv > 0 ? py / kv : 0) }'
