#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# test_p2p.sh - `kvstash p2p` end to end on loopback, with `kvstash metad` as shared metadata:
# one publisher and 8 fetcher processes for a 512 MiB set (4 files x 128 MiB, 8 MiB chunks).
#   1. bad usage exits 2 with one line; fetching an unknown set exits 1 naming it.
#   2. publisher + fetchers F1..F4 + victim V start together (all --seed; F2..F4 and V with
#      one read in flight, so they are likely still running when the publisher dies); V is killed -9
#      midway; when the first fetcher completes the publisher is killed -9; F5..F7 start only
#      then, so they can only finish from peers (and must report 0 bytes from the publisher).
#   3. V is restarted: it resumes (reuses the chunks it had verified) and completes.
#   4. every file of every fetcher is bit-identical (cmp); `p2p stat --json` has the keys and
#      publisher_uploaded_bytes <= 2x size_bytes; `p2p ls` lists the set; `p2p rm` removes it.
# Env: KVSTASH_BIN (set by ctest).
set -euo pipefail

bin=${KVSTASH_BIN:?KVSTASH_BIN not set (run through ctest)}
base=${KVSTASH_BUILD_DIR:-/tmp}
work=$(mktemp -d "$base/kvstash-test-p2p.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  for f in "$work"/*.log; do [ -s "$f" ] && { echo "--- $f" >&2; tail -5 "$f" >&2; }; done
  exit 1
}
pass() { echo "ok - $*"; }
free_port() { /usr/bin/python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# ---- room: 512 MiB source + 8 copies ----
avail=$(df --output=avail -k "$work" | tail -1)
[ "$avail" -gt $((6 * 1024 * 1024)) ] || fail "need 6 GiB free in $work, have $((avail / 1024)) MiB"

# ---- bad usage ----
bad_usage() { # what-it-must-mention args...
  local want=$1; shift
  local rc=0
  "$bin" p2p "$@" >"$work/out" 2>"$work/err" || rc=$?
  [ "$rc" = 2 ] || fail "'p2p $*' exited $rc, want 2 ($(cat "$work/err"))"
  [ "$(wc -l <"$work/err")" = 1 ] || fail "'p2p $*' printed $(wc -l <"$work/err") lines on stderr: $(cat "$work/err")"
  grep -q -- "$want" "$work/err" || fail "'p2p $*': stderr does not mention '$want': $(cat "$work/err")"
  pass "bad usage 'p2p $*' -> exit 2: $(cat "$work/err")"
}
bad_usage command
bad_usage sideways sideways
bad_usage missing fetch onlyname
bad_usage chunk-size publish --chunk-size=12parsecs n f
bad_usage chunk-size publish --chunk-size=100 n f
bad_usage unexpected stat a b

# ---- metadata ----
mport=$(free_port)
"$bin" metad --addr "127.0.0.1:$mport" >"$work/metad.log" 2>&1 &
pids+=($!)
murl="http://127.0.0.1:$mport/metadata"
for _ in $(seq 100); do curl -s -o /dev/null "$murl?key=probe" && break; sleep 0.05; done
M=(--metadata="$murl" --log-level=warn)

rc=0
"$bin" p2p fetch "${M[@]}" nosuchset "$work/none" 2>"$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q nosuchset "$work/err" || fail "fetch of an unknown set: exit $rc, $(cat "$work/err")"
pass "unknown set -> exit 1: $(cat "$work/err")"

# ---- the set: 4 x 128 MiB ----
mkdir -p "$work/src/sub"
for i in 1 2 3; do head -c 128M /dev/urandom >"$work/src/w$i.bin"; done
head -c 128M /dev/urandom >"$work/src/sub/w4.bin"
size=$((512 * 1024 * 1024))

rc=0
"$bin" p2p publish "${M[@]}" 'bad/name' "$work/src" 2>"$work/err" || rc=$?
[ "$rc" = 1 ] || fail "publish of a bad name exited $rc"

"$bin" p2p publish "${M[@]}" --chunk-size=8MiB --lease-ttl=2 --json model "$work/src" \
  >"$work/pub.out" 2>"$work/pub.log" &
pub=$!
pids+=("$pub")
for _ in $(seq 300); do [ -s "$work/pub.out" ] && break; sleep 0.05; done
[ -s "$work/pub.out" ] || fail "publisher did not come up"
grep -q '"size_bytes":536870912' "$work/pub.out" || fail "publisher output: $(cat "$work/pub.out")"
pass "published: $(cat "$work/pub.out")"
"$bin" p2p ls "${M[@]}" | grep -qx model || fail "p2p ls does not list the set"

# a second publisher of other contents under the same name is refused
echo other >"$work/other.bin"
rc=0
timeout 10 "$bin" p2p publish "${M[@]}" model "$work/other.bin" 2>"$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q "other contents\|already exists" "$work/err" || fail "conflicting publish: exit $rc: $(cat "$work/err")"
pass "conflicting publish refused"

fetch() { # id extra-args...
  local id=$1; shift
  "$bin" p2p fetch "${M[@]}" --lease-ttl=2 --json --seed "$@" model "$work/d$id" \
    >"$work/f$id.out" 2>"$work/f$id.log" &
  pids+=($!)
  eval "fpid_$id=$!" # sets fpid_V and friends, read below
}

# ---- phase 1: publisher + F1..F4 + victim V ----
t0=$(date +%s.%N)
fetch V --inflight=1
fetch 1
for i in 2 3 4; do fetch $i --inflight=1; done

# kill the victim midway (>= 48 MiB verified or written, before it completes)
killed=0
# shellcheck disable=SC2154 # fpid_V is set through eval in fetch()
for _ in $(seq 1200); do
  if [ -s "$work/fV.out" ]; then fail "the victim completed before it could be killed midway"; fi
  got=$(du -s --block-size=1 "$work/dV" 2>/dev/null | cut -f1 || echo 0)
  if [ "${got:-0}" -ge $((48 * 1024 * 1024)) ]; then kill -9 "$fpid_V"; killed=1; break; fi
  sleep 0.02
done
[ "$killed" = 1 ] || fail "the victim never got 48 MiB"
wait "$fpid_V" 2>/dev/null || true
pass "victim killed -9 midway ($((got / 1048576)) MiB on disk)"

# kill the publisher as soon as one fetcher completed
first=""
for _ in $(seq 3000); do
  for i in 1 2 3 4; do [ -s "$work/f$i.out" ] && { first=$i; break; }; done
  [ -n "$first" ] && break
  sleep 0.02
done
[ -n "$first" ] || fail "no fetcher completed within 60 s"
kill -9 "$pub"
wait "$pub" 2>/dev/null || true
incomplete=0
for i in 1 2 3 4; do [ -s "$work/f$i.out" ] || incomplete=$((incomplete + 1)); done
pass "F$first completed; publisher killed -9 ($incomplete of F1..F4 still incomplete)"

# ---- phase 2: F5..F7 start without a publisher ----
for i in 5 6 7; do fetch $i; done
for i in 1 2 3 4 5 6 7; do
  for _ in $(seq 4500); do [ -s "$work/f$i.out" ] && break; sleep 0.02; done
  [ -s "$work/f$i.out" ] || fail "F$i did not complete: $(tail -3 "$work/f$i.log")"
done
t1=$(date +%s.%N)
for i in 5 6 7; do
  grep -q '"from_publisher":0,' "$work/f$i.out" || fail "F$i read from the dead publisher: $(cat "$work/f$i.out")"
done
pass "F1..F7 complete; F5..F7 entirely from peers ($(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s)"

# ---- phase 3: the victim resumes ----
rc=0
timeout 120 "$bin" p2p fetch "${M[@]}" --lease-ttl=2 --json model "$work/dV" >"$work/fV.out" 2>"$work/fV.log" || rc=$?
[ "$rc" = 0 ] || fail "resumed fetch exited $rc: $(cat "$work/fV.log")"
reused=$(/usr/bin/python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["reused_chunks"])' "$work/fV.out")
[ "$reused" -gt 0 ] || fail "resumed fetch reused no chunk: $(cat "$work/fV.out")"
pass "victim resumed: reused $reused chunks"

# ---- every byte ----
for d in 1 2 3 4 5 6 7 V; do
  for f in w1.bin w2.bin w3.bin sub/w4.bin; do
    cmp -s "$work/src/$f" "$work/d$d/$f" || fail "d$d/$f differs from the source"
  done
done
pass "8 fetchers x 4 files bit-identical"

# ---- stat ----
"$bin" p2p stat "${M[@]}" --json model >"$work/stat.json" || fail "p2p stat failed"
/usr/bin/python3 - "$work/stat.json" "$size" <<'EOF' || fail "stat check: $(cat "$work/stat.json")"
import json, sys
s = json.load(open(sys.argv[1]))
size = int(sys.argv[2])
for k in ("size_bytes", "chunks", "holders", "publisher_uploaded_bytes"):
    assert isinstance(s[k], int), k
assert s["size_bytes"] == size, s
assert s["chunks"] == 64, s
assert s["holders"] >= 7, s  # F1..F7 seed (the dead publisher's record has expired or not)
assert 0 < s["publisher_uploaded_bytes"] <= 2 * size, s
print("ok - stat: publisher uploaded %.2fx the set, holders %d" %
      (s["publisher_uploaded_bytes"] / size, s["holders"]))
EOF

"$bin" p2p rm "${M[@]}" model || fail "p2p rm failed"
[ -z "$("$bin" p2p ls "${M[@]}")" ] || fail "set still listed after rm"
rc=0
"$bin" p2p stat "${M[@]}" model 2>"$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q "no such set" "$work/err" || fail "stat after rm: exit $rc $(cat "$work/err")"
pass "rm removes the set"
echo "PASS"
