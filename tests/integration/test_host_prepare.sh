#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_host_prepare.sh - scripts/host-prepare.sh for real with 2 MiB pages, then undone: it
# reserves 8 more 2 MiB pages than the pool holds and mounts hugetlbfs on a directory of its
# own; a second run changes nothing; `kvstash serve --hugepages 2M` then backs its DRAM
# segment with them (the log names the page size, put/get work), and `--hugepages 2M` asking
# for more pages than are free fails at start with one clear line while `auto` falls back;
# --undo gives the pages back and unmounts. --dry-run prints commands only. Needs root (77
# otherwise). The memlock file goes to a scratch path, never /etc.
set -euo pipefail
SRC=${KVSTASH_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${KVSTASH_BIN:?KVSTASH_BIN not set (run through ctest)}
HP=$SRC/scripts/host-prepare.sh
POOL=/sys/kernel/mm/hugepages/hugepages-2048kB
if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: host-prepare.sh reserves huge pages and mounts hugetlbfs: needs root"
    exit 77
fi
[ -d "$POOL" ] || { echo "SKIP: this kernel has no 2 MiB huge-page pool"; exit 77; }
W=$(mktemp -d /tmp/kvstash-hostprep.XXXXXX)
export KVSTASH_HOST_PREPARE_STATE=$W/state KVSTASH_MEMLOCK_CONF=$W/memlock.conf
SP=
cleanup() {
    [ -n "$SP" ] && kill -9 "$SP" 2>/dev/null
    wait 2>/dev/null || true
    # undo whatever a failed run left behind
    [ -f "$W/state" ] && "$HP" --undo >/dev/null 2>&1
    rm -rf "$W"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    tail -20 "$W"/*.out "$W"/*.err 2>/dev/null || true
    exit 1
}
ok() { echo "ok - $*"; }

before=$(cat "$POOL/nr_hugepages")
want=$((before + 8))
MNT=$W/huge

# --dry-run: commands only, nothing changes
"$HP" --dry-run --pages "$want" --mount "$MNT" >"$W/dry.out" 2>"$W/dry.err" || fail "dry run"
grep -q "echo.* $want.*$POOL/nr_hugepages" "$W/dry.out" || fail "dry run: no reservation command"
grep -q "mount -t hugetlbfs" "$W/dry.out" || fail "dry run: no mount command"
[ "$(cat "$POOL/nr_hugepages")" -eq "$before" ] || fail "dry run changed the pool"
{ [ ! -e "$MNT" ] && [ ! -e "$W/state" ]; } || fail "dry run changed something"
ok "--dry-run prints the commands and changes nothing"

"$HP" --hugepages 2M --pages "$want" --mount "$MNT" >"$W/run1.out" 2>&1 || fail "first run"
cat "$W/run1.out"
got=$(cat "$POOL/nr_hugepages")
[ "$got" -ge "$want" ] || fail "pool holds $got pages, want $want"
awk -v d="$MNT" '$2 == d && $3 == "hugetlbfs" && $4 ~ /pagesize=2M/ {f = 1} END {exit !f}' /proc/mounts ||
    fail "no 2M hugetlbfs at $MNT"
grep -q "did: reserved 2M huge pages: $before -> $got" "$W/run1.out" || fail "run does not say what it did"
ok "reserved 2 MiB pages ($before -> $got) and mounted hugetlbfs at $MNT"

"$HP" --hugepages 2M --pages "$want" --mount "$MNT" >"$W/run2.out" 2>&1 || fail "second run"
grep -q "did: nothing (already prepared)" "$W/run2.out" || fail "second run changed something: $(cat "$W/run2.out")"
[ "$(cat "$POOL/nr_hugepages")" -eq "$got" ] || fail "second run changed the pool"
ok "idempotent: a second run changes nothing"

# kvstash serve on those pages: 8 MiB = 4 pages
"$BIN" serve --metadata-addr 127.0.0.1:0 --master-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
    --capacity 8MiB --hugepages 2M --data-dir "$W/data" >"$W/serve.out" 2>"$W/serve.err" &
SP=$!
for _ in $(seq 1 100); do
    grep -q "^Stop with" "$W/serve.out" 2>/dev/null && break
    kill -0 $SP 2>/dev/null || fail "serve --hugepages 2M died"
    sleep 0.05
done
MASTER=$(sed -n 's/^  master    \([0-9.]*:[0-9]*\) (RPC).*/\1/p' "$W/serve.out")
[ -n "$MASTER" ] || fail "serve printed no master address"
grep -q "DRAM segment .*: 2.0 MiB pages" "$W/serve.err" || fail "the log does not name the page size"
head -c 3000000 /dev/urandom >"$W/val"
"$BIN" put --master "$MASTER" --log-level error k1 "$W/val" >/dev/null || fail "put"
"$BIN" get --master "$MASTER" --log-level error k1 "$W/back" >/dev/null || fail "get"
cmp -s "$W/val" "$W/back" || fail "get returned other bytes"
kill -TERM $SP
wait $SP || fail "serve exit $? after SIGTERM"
SP=
ok "serve --hugepages 2M: the log names 2.0 MiB pages; put/get of 3 MB round-trips"

# too few free pages: 2M fails at start with one clear line, auto falls back
free=$(cat "$POOL/free_hugepages")
big=$(((free + 4) * 2))MiB
rc=0
"$BIN" serve --metadata-addr 127.0.0.1:0 --master-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
    --capacity "$big" --hugepages 2M >"$W/fail.out" 2>"$W/fail.err" || rc=$?
[ "$rc" -ne 0 ] || fail "serve --hugepages 2M with too few pages started"
grep -q "huge pages of 2.0 MiB; .* reserved are free (reserve more: scripts/host-prepare.sh" "$W/fail.err" ||
    fail "no clear line about the missing pages: $(cat "$W/fail.err")"
"$BIN" serve --metadata-addr 127.0.0.1:0 --master-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
    --capacity "$big" --hugepages auto --no-prefault >"$W/auto.out" 2>"$W/auto.err" &
SP=$!
for _ in $(seq 1 100); do
    grep -q "^Stop with" "$W/auto.out" 2>/dev/null && break
    kill -0 $SP 2>/dev/null || fail "serve --hugepages auto died"
    sleep 0.05
done
[ "$(grep -c "huge pages auto: .* using 4 KiB pages" "$W/auto.err")" -eq 1 ] || fail "auto: no one-line fallback"
grep -q "DRAM segment .*: 4.0 KiB pages" "$W/auto.err" || fail "auto: the log does not name 4 KiB pages"
kill -TERM $SP
wait $SP || true
SP=
ok "too few pages: --hugepages 2M fails at start naming them; auto falls back in one line"

"$HP" --undo >"$W/undo.out" 2>&1 || fail "undo"
cat "$W/undo.out"
[ "$(cat "$POOL/nr_hugepages")" -eq "$before" ] || fail "undo left $(cat "$POOL/nr_hugepages") pages, want $before"
awk -v d="$MNT" '$2 == d {f = 1} END {exit f}' /proc/mounts || fail "undo left $MNT mounted"
[ ! -e "$W/state" ] || fail "undo left its state file"
ok "--undo gives back the pages ($got -> $before) and unmounts"
