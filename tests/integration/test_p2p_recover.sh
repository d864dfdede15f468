#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# test_p2p_recover.sh - `kvstash p2p` survives a metadata server that restarts empty: the
# publisher's lease is found lost, it grants a new one and puts its peer record and the
# manifest again, so a fetch started after the restart completes bit-identical. Also: a fetch
# interrupted by SIGINT exits 1 saying so, and `p2p stat` (text) names the set.
# Env: KVSTASH_BIN (set by ctest).
set -euo pipefail

bin=${KVSTASH_BIN:?KVSTASH_BIN not set (run through ctest)}
work=$(mktemp -d /tmp/kvstash-test-p2p-recover.XXXXXX)
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

mport=$(/usr/bin/python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
murl="http://127.0.0.1:$mport/metadata"
start_metad() {
  "$bin" metad --addr "127.0.0.1:$mport" >>"$work/metad.log" 2>&1 &
  metad=$!
  pids+=("$metad")
  for _ in $(seq 100); do curl -s -o /dev/null "$murl?key=probe" && return 0; sleep 0.05; done
  fail "metad did not start on port $mport"
}
start_metad
M=(--metadata="$murl" --log-level=info)

mkdir -p "$work/src"
head -c 24M /dev/urandom >"$work/src/a.bin"
head -c 1000 /dev/urandom >"$work/src/b.txt"
"$bin" p2p publish "${M[@]}" --chunk-size=1MiB --lease-ttl=1 --json set "$work/src" \
  >"$work/pub.out" 2>"$work/pub.log" &
pub=$!
pids+=("$pub")
for _ in $(seq 200); do [ -s "$work/pub.out" ] && break; sleep 0.05; done
[ -s "$work/pub.out" ] || fail "publisher did not come up"

# SIGINT during a fetch (the publisher is stopped, so the fetch cannot finish first)
kill -STOP "$pub"
"$bin" p2p fetch "${M[@]}" --timeout=1000 set "$work/int" >/dev/null 2>"$work/int.log" &
ip=$!
# wait until it runs its fetch loop (dest created after signals are blocked and the manifest read)
for _ in $(seq 200); do [ -d "$work/int" ] && break; sleep 0.05; done
[ -d "$work/int" ] || fail "the fetch never created its destination"
sleep 0.2
kill -INT "$ip"
rc=0
wait "$ip" || rc=$?
kill -CONT "$pub"
[ "$rc" = 1 ] && grep -q interrupted "$work/int.log" || fail "SIGINT'd fetch: exit $rc: $(cat "$work/int.log")"
pass "SIGINT'd fetch exits 1: $(grep interrupted "$work/int.log")"

# restart metadata empty
kill -9 "$metad"
wait "$metad" 2>/dev/null || true
start_metad
for _ in $(seq 200); do
  "$bin" p2p ls "${M[@]}" 2>/dev/null | grep -qx set && grep -q "peer record restored" "$work/pub.log" && break
  sleep 0.1
done
"$bin" p2p ls "${M[@]}" | grep -qx set || fail "the publisher did not restore the set after the metadata restart"
grep -q "peer record restored" "$work/pub.log" || fail "publisher log does not show the restore"
pass "publisher restored manifest and record after metadata restart"

rc=0
timeout 60 "$bin" p2p fetch "${M[@]}" --json set "$work/d" >"$work/f.out" 2>"$work/f.log" || rc=$?
[ "$rc" = 0 ] || fail "fetch after restart exited $rc"
cmp -s "$work/src/a.bin" "$work/d/a.bin" && cmp -s "$work/src/b.txt" "$work/d/b.txt" || fail "fetched files differ"
pass "fetch after metadata restart is bit-identical"

"$bin" p2p stat "${M[@]}" set >"$work/stat.txt" || fail "p2p stat failed"
grep -q "^name: *set$" "$work/stat.txt" && grep -q "publisher uploaded" "$work/stat.txt" || fail "stat text: $(cat "$work/stat.txt")"
pass "stat text output"
echo PASS
