#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The SSD tier: metad + master + one node with a small DRAM segment and --ssd-dir. Putting 3x
# its DRAM demotes the least recently used objects to SSD files; every get returns the exact
# bytes (promotion on hit). Then kill -9 the node and restart it on the same --ssd-dir: the
# objects it had on SSD are readable again with the exact bytes, and nothing ever reads
# corrupt (a get returns the exact bytes or "not found"). Read leases are 300 ms here: a get
# pins its object in DRAM for the lease, so with 5 s leases reading 24 MiB through 8 MiB of DRAM
# would (rightly) find no room to promote into for seconds.
# shellcheck source=lib_store.sh
. "$(dirname "$0")/lib_store.sh"

start_metad
start_master m1 --node-timeout 2 --lease-ms "$(lease_ms 300)"
mkdir -p "$W/ssd"
start_node n1 8MiB --ssd-dir "$W/ssd" --ssd-capacity 256MiB
wait_nodes 1

N=24 # 24 x 1 MiB into 8 MiB of DRAM
for i in $(seq $N); do
    mkval "$W/v$i" $((1048576 - i)) "$i"
    kv put "ssd/$i" "$W/v$i" >/dev/null || fail "put ssd/$i"
done
nfiles=$(find "$W/ssd" -type f | wc -l)
[ "$nfiles" -ge $((N - 8)) ] || fail "only $nfiles SSD files after putting 3x DRAM"
ok "putting 3x DRAM demoted objects to SSD ($nfiles files)"
for i in 1 2 3 $N; do
    kv get "ssd/$i" "$W/o" || fail "get ssd/$i (promotion)"
    cmp -s "$W/o" "$W/v$i" || fail "ssd/$i differs"
done
ok "gets of demoted objects return the exact bytes"

kill9 n1
start_node n1 8MiB --ssd-dir "$W/ssd" --ssd-capacity 256MiB
wait_nodes 1 15
back=0
for i in $(seq $N); do
    set +e
    kv get "ssd/$i" "$W/o" 2>"$W/err"
    rc=$?
    set -e
    if [ $rc -eq 0 ]; then
        cmp -s "$W/o" "$W/v$i" || fail "ssd/$i corrupt after the node restart"
        back=$((back + 1))
    else
        grep -q "not found" "$W/err" || fail "ssd/$i: unexpected error $(cat "$W/err")"
    fi
done
[ $back -ge $((N - 8)) ] || fail "only $back of $N objects readable after the restart (SSD had $nfiles)"
ok "kill -9 + restart on the same --ssd-dir: $back of $N objects readable with the exact bytes"
