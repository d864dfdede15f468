#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Master fail-over on real etcd: etcd + 2 masters (one leader, one standby) + 2 nodes. Objects
# are put through leader discovery (--metadata); kill -9 the leader; the standby takes over,
# the nodes re-mount with their object lists, and every object put before is readable again
# with the exact bytes (the client follows the new leader); one removed just before the kill
# (under a read lease) stays removed; new puts work.
# shellcheck source=lib_store.sh
. "$(dirname "$0")/lib_store.sh"

start_etcd
# put timeout 5 s: the new leader places nothing on nodes that served the old one until the old
# lease (3 s) and the put timeout are over (the old leader's writers may still be writing)
start_master ma --put-timeout 5
start_master mb --put-timeout 5
start_node n1 32MiB
start_node n2 32MiB
wait_nodes 2

for i in $(seq 12); do
    mkval "$W/v$i" $((i * 50000 + 3)) "$i"
    kv put --replicas=$((1 + i % 2)) "fo/$i" "$W/v$i" >/dev/null || fail "put fo/$i"
done
ok "12 objects put through the leader found in etcd"
# a removed object must stay removed across the fail-over, even one still read under a lease
# (the master frees its range only when the 5 s read lease ends; the nodes forget it at once)
kv get fo/12 "$W/o" || fail "get fo/12"
kv rm fo/12 >/dev/null || fail "rm fo/12"

leader_addr() {
    etcdctl --endpoints="http://$ETCD_EP" get --print-value-only "/kvstash/$CLUSTER/masters/leader" |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)["rpc_addr"])'
}
la=$(leader_addr) || fail "no leader record in etcd"
# shellcheck disable=SC2154 # MASTER_ma/mb are set by start_master
if [ "$la" = "$MASTER_ma" ]; then old=ma new=mb; elif [ "$la" = "$MASTER_mb" ]; then old=mb new=ma; else
    fail "leader record names $la, neither master ($MASTER_ma, $MASTER_mb)"
fi
kill9 "$old"
t0=$SECONDS
# the client retries within its timeout while the standby campaigns and the nodes re-mount
wait_for 30 kv get --timeout 5000 fo/1 "$W/o" || fail "fo/1 unreadable 30 s after killing $old"
ok "kill -9 leader $old: service resumed after ~$((SECONDS - t0)) s"
nla=$(leader_addr) || fail "no new leader record"
var=MASTER_$new
[ "$nla" = "${!var}" ] || fail "new leader record names $nla, want $new (${!var})"
for i in $(seq 11); do
    wait_for 10 kv get "fo/$i" "$W/o" || fail "fo/$i unreadable after fail-over"
    cmp -s "$W/o" "$W/v$i" || fail "fo/$i differs after fail-over"
done
ok "every object put before the fail-over is readable with the exact bytes (new leader $new)"
set +e
out=$(kv get fo/12 "$W/o" 2>&1)
rc=$?
set -e
[ $rc -eq 1 ] && grep -q "not found" <<<"$out" || fail "fo/12, removed before the fail-over, came back: rc $rc $out"
ok "an object removed just before the leader died (read lease still on) stays removed"
mkval "$W/after" 77777 5
wait_for 20 kv put fo/after "$W/after" || fail "put after fail-over (and its 8 s placement fence)"
kv get fo/after - | cmp - "$W/after" || fail "fo/after"
[ "$(kv ls fo/ | wc -l)" -eq 12 ] || fail "ls after fail-over: $(kv ls fo/)"
ok "puts and ls work on the new leader"
