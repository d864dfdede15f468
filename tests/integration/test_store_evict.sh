#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Filling past capacity: metad + master + one 16 MiB node without SSD. 64 puts of 1 MiB all
# succeed (the master evicts least recently used objects), while a reader loops over every key
# in parallel: each get returns the exact bytes or "not found", never anything else. Then, with
# no reader refreshing old keys, 20 fresh puts: the newest is readable, the oldest evicted (LRU),
# and stat reports evictions. Read leases are 200 ms here (scaled under TSan, see lease_ms): each
# get pins its object for the lease, and a reader looping over 64 keys with 5 s leases would
# (rightly) pin all of DRAM, so puts would find nothing evictable and fail with "no space left".
# shellcheck source=lib_store.sh
. "$(dirname "$0")/lib_store.sh"

start_metad
start_master m1 --lease-ms "$(lease_ms 200)"
start_node n1 16MiB
wait_nodes 1

N=64
for i in $(seq $N); do mkval "$W/v$i" 1048576 "$i"; done
reader() {
    local end=$((SECONDS + 40)) i
    while [ ! -e "$W/stop" ] && [ $SECONDS -lt $end ]; do
        for i in $(seq $N); do
            if kv get "ev/$i" "$W/r" 2>"$W/rerr"; then
                cmp -s "$W/r" "$W/v$i" || { echo "CORRUPT ev/$i" >"$W/reader.bad"; return; }
            elif ! grep -q "not found" "$W/rerr"; then
                echo "ERR ev/$i $(cat "$W/rerr")" >"$W/reader.bad"
                return
            fi
        done
    done
}
reader &
rpid=$!
for i in $(seq $N); do
    kv put "ev/$i" "$W/v$i" >/dev/null 2>"$W/err" || fail "put ev/$i past capacity: $(cat "$W/err")"
done
touch "$W/stop"
wait $rpid
[ ! -e "$W/reader.bad" ] || fail "reader: $(cat "$W/reader.bad")"
ok "64 x 1 MiB into 16 MiB: every put succeeded; concurrent gets were exact or 'not found'"
found=0
for i in $(seq $N); do
    if kv get "ev/$i" "$W/o" 2>/dev/null; then
        cmp -s "$W/o" "$W/v$i" || fail "ev/$i corrupt"
        found=$((found + 1))
    fi
done
[ $found -ge 4 ] && [ $found -le 16 ] || fail "$found objects left in 16 MiB"
# without concurrent readers refreshing old keys, plain LRU: 20 fresh puts push out the first
sleep "$(awk -v ms="$(lease_ms 500)" 'BEGIN { print ms / 1000 }')" # the reader's last leases end
for i in $(seq 20); do
    kv put "ev2/$i" "$W/v$i" >/dev/null || fail "put ev2/$i"
done
kv get ev2/20 - | cmp - "$W/v20" || fail "the newest object was evicted"
set +e
kv get ev2/1 - >/dev/null 2>&1
rc=$?
set -e
[ $rc -eq 1 ] || fail "the oldest of 20 fresh objects survived in 16 MiB"
kv stat --json | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
ev = d.get("evictions", (d.get("totals") or {}).get("evictions", 0))
assert ev >= 40, d' || fail "stat does not report evictions"
ok "$found objects left, all exact; then LRU: the newest readable, the oldest evicted; evictions counted"
