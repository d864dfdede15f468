#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A leader master cut off from etcd, and only from etcd, steps down (issue 11, split brain).
# On a 3-host cluster of network namespaces (scripts/cluster: etcd on host 1, 3 masters, 3
# nodes, leader ttl 3 s, put timeout 5 s), under a put/get load from host 1 (replicas=2, every
# get compared with the bytes put):
#   1. `scripts/cluster etcd-link <leader> down`: an iptables rule on the leader's host drops
#      that master's packets to etcd; its clients and nodes still reach it.
#   2. The old leader logs that it steps down within the lease ttl of the cut, and stops saying
#      it leads; no two masters ever say they lead at the same time (sampled every 0.1 s); a
#      standby takes over and service (a replicas=2 put, a get of an older object) comes back.
#   3. `etcd-link <old> up`: the old master rejoins as a standby (logs it follows the new leader,
#      never leads again during the check) and `status` passes.
# At the end every acknowledged put reads back with its exact bytes; no get returned wrong bytes
# or a checksum error. Needs root, network namespaces and iptables: without them it FAILS (it
# does not skip).
set -euo pipefail
SRC=${KVSTASH_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
CL=$SRC/scripts/cluster
export KVSTASH_BIN=${KVSTASH_BIN:-$SRC/build/kvstash}
export KVSTASH_CLUSTER_NAME=pt$(($$ % 1000000))
export KVSTASH_NODE_CAPACITY=16MiB
TTL=3          # --leader-ttl of the cluster's masters
RECOVER_MAX=20 # seconds: the bound for service to come back
W=$(mktemp -d /tmp/kvstash-cluster-partition.XXXXXX)
RUN=/tmp/kvstash-cluster-$KVSTASH_CLUSTER_NAME
LOAD_PID=

# shellcheck source=lib_cluster.sh
. "$(dirname "$0")/lib_cluster.sh"
command -v iptables >/dev/null || fail "iptables not installed (scripts/packages.txt; this test does not skip)"

for v in $(seq 0 7); do
    head -c $((4096 + v * 23000)) /dev/urandom >"$W/v$v"
done

t=$(now)
"$CL" up 3 >"$W/up.log" 2>&1 || { cat "$W/up.log" >&2; fail "cluster up 3"; }
ok "cluster up 3 hosts in $(since "$t") s"
eval "$("$CL" env | grep '^ADDR_')"

# leaders: the masters whose /health says "leader":true, space-separated
leaders() {
    local i out=""
    for i in 1 2 3; do
        if ip netns exec "kvc-$KVSTASH_CLUSTER_NAME-h$i" curl -sf --max-time 1 \
            "http://$(eval echo "\$ADDR_$i"):9003/health" 2>/dev/null | grep -q '"leader":true'; then
            out="$out master$i"
        fi
    done
    echo "${out# }"
}

# the load (lib_cluster.sh)
load() { cluster_load 300 8; }
: >"$W/acked"
: >"$W/put_fail"
: >"$W/get_fail"
load &
LOAD_PID=$!
acked() { wc -l <"$W/acked"; }
wait_acked() {
    local end=$((SECONDS + 30))
    while [ "$(acked)" -lt "$1" ]; do
        [ $SECONDS -lt $end ] || fail "load stalled at $(acked) acknowledged puts (want $1)"
        sleep 0.2
    done
}
wait_acked 15
ok "load running: $(acked) puts acknowledged"

# 1. cut the leader's path to etcd
old=$(leaders)
[[ $old =~ ^master[1-3]$ ]] || fail "want one leader before the cut, got '$old'"
"$CL" etcd-link "$old" down
t_cut=$(now)
ok "cut $old's path to etcd (iptables on host ${old#master})"

# 2. sample who says it leads every 0.1 s until a standby leads and the old one does not
new=""
t_old_off=""
while :; do
    l=$(leaders)
    case " $l " in *" $old "*) ;; *) [ -n "$t_old_off" ] || t_old_off=$(since "$t_cut") ;; esac
    [ "$(wc -w <<<"$l")" -le 1 ] || fail "split brain: $l all say they lead ($(since "$t_cut") s after the cut)"
    if [ -n "$l" ] && [ "$l" != "$old" ]; then
        new=$l
        break
    fi
    awk -v d="$(since "$t_cut")" 'BEGIN { exit !(d > 20) }' && fail "no standby leads 20 s after the cut (leaders: '$l')"
    sleep 0.1
done
t_new=$(since "$t_cut")
ok "$new leads $t_new s after the cut; $old stopped saying it leads after $t_old_off s; never two leaders"

# the old leader's own log: it stepped down, within the lease ttl of the cut
line=$(grep -m 1 "master $old steps down" "$RUN/logs/$old.log") || fail "$old never logged that it stepped down"
ts=$(awk '{ print $1 }' <<<"$line")
t_down=$(awk -v a="$t_cut" -v b="$(date -d "$ts" +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
awk -v d="$t_down" -v ttl="$TTL" 'BEGIN { exit !(d >= 0 && d <= ttl) }' ||
    fail "$old stepped down $t_down s after the cut (want within the ${TTL} s lease ttl): $line"
ok "$old logged its step-down $t_down s after the cut (lease ttl $TTL s): ${line#* }"
awk -v d="$t_down" -v n="$t_new" 'BEGIN { exit !(d < n) }' ||
    fail "$new led ($t_new s) before $old stepped down ($t_down s)"

# service back: a replicas=2 put and a get of an object put before the cut
read -r k0 v0 < <(head -n 1 "$W/acked")
probe=0
while :; do
    probe=$((probe + 1))
    if kv 1 put --replicas 2 --timeout 2000 "probe/$probe" "$W/v1" >/dev/null 2>&1 &&
        kv 1 get --timeout 2000 "$k0" "$W/probe.out" 2>/dev/null; then
        cmp -s "$W/probe.out" "$W/v$v0" || fail "$k0 read back wrong bytes"
        break
    fi
    awk -v d="$(since "$t_cut")" -v m="$RECOVER_MAX" 'BEGIN { exit !(d > m) }' &&
        fail "service not back $RECOVER_MAX s after the cut"
    sleep 0.1
done
t_back=$(since "$t_cut")
ok "service back $t_back s after the cut (bound $RECOVER_MAX s)"
n=$(acked)
wait_acked $((n + 5))

# 3. heal: the old master rejoins as a standby of the new leader
"$CL" etcd-link "$old" up
t_heal=$(now)
end=$((SECONDS + 20))
until grep -q "master $old is a STANDBY; following leader $new" "$RUN/logs/$old.log"; do
    [ $SECONDS -lt $end ] || fail "$old did not rejoin as a standby of $new 20 s after the heal"
    [ "$(leaders)" = "$new" ] || fail "leaders after the heal: '$(leaders)' (want $new only)"
    sleep 0.2
done
t_rejoin=$(since "$t_heal")
for _ in $(seq 20); do
    [ "$(leaders)" = "$new" ] || fail "leaders after $old rejoined: '$(leaders)' (want $new only)"
    sleep 0.1
done
end=$((SECONDS + 30))
until "$CL" status >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { "$CL" status >&2 || true; fail "cluster not healthy 30 s after the heal"; }
    sleep 0.2
done
ok "$old rejoined as a standby of $new $t_rejoin s after the heal; status passes"

# stop the load; every acknowledged put must read back with its exact bytes
touch "$W/stop"
wait "$LOAD_PID"
LOAD_PID=
[ ! -s "$W/wrong" ] || fail "gets returned wrong bytes for: $(tr '\n' ' ' <"$W/wrong")"
! grep -qi "checksum" "$W/load.err" || fail "a get reported a checksum error: $(grep -i -m 3 checksum "$W/load.err")"
total=$(acked)
lost=0
while read -r k v; do
    got=0
    for _ in 1 2 3 4 5; do
        if kv 1 get --timeout 3000 "$k" "$W/final.out" 2>"$W/final.err" </dev/null; then
            cmp -s "$W/final.out" "$W/v$v" || fail "acknowledged $k read back wrong bytes"
            got=1
            break
        fi
        sleep 0.5
    done
    [ $got -eq 1 ] || { echo "lost: $k: $(cat "$W/final.err")" >&2; lost=$((lost + 1)); }
done <"$W/acked"
[ "$lost" -eq 0 ] || fail "$lost of $total acknowledged puts lost"
pf=$(wc -l <"$W/put_fail")
gf=$(wc -l <"$W/get_fail")
ok "load: $total puts acknowledged, all read back with the exact bytes; 0 wrong gets, 0 checksum errors; $pf puts and $gf gets failed around the cut (errors, never wrong data)"
echo "--- figures (3 hosts, leader ttl $TTL s, put timeout 5 s)"
echo "old leader stepped down (its log)   $t_down s after the cut"
echo "old leader /health leader:false     $t_old_off s after the cut"
echo "standby leads                       $t_new s after the cut"
echo "service (put r=2 + get) back        $t_back s after the cut"
echo "old leader a standby again          $t_rejoin s after the heal"
"$CL" down >/dev/null
ok "cluster down"
