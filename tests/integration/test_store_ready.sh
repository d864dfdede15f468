#!/usr/bin/env bash
# shellcheck disable=SC2154 # ADMIN_* and MASTER_* are set by start_master
# SPDX-License-Identifier: Apache-2.0
# test_store_ready.sh - health that means ready, for the store daemons and metad:
#  - metad: /health and /ready 200 (JSON).
#  - a leader master with no node: /health 200 (liveness), /ready 503 "no storage node mounted
#    yet"; a put then fails with that error (not "no space left") once its --timeout ran out,
#    and a put issued in that window with a longer --timeout succeeds once a node mounts (the
#    client retries KV_ESTORE_NONODE as it does NOT_LEADER).
#  - a node with --admin-addr: /ready 200 once mounted; the master's /ready turns 200.
#  - a node with --admin-addr in a cluster with no master yet: /ready 503 "not mounted on a
#    leader master yet" (JSON, with its node_id), /health 200; /ready 200 once it has mounted
#    on the master started afterwards.
#  - a standby master: /ready 503 naming the leader's address.
#  - `kvstash put KEY /dev/zero` stops with a clear error at the largest object (the node's
#    capacity) instead of reading forever.
#  - `kvstash serve --capacity 2GiB` (prefaulting): /ready 503 "no storage node mounted yet"
#    while the node prefaults, 200 after.
set -euo pipefail
# shellcheck source=lib_store.sh
. "$(dirname "$0")/lib_store.sh"

# code URL -> HTTP status; body in $W/body
code() { curl -s -o "$W/body" -w '%{http_code}' "$1" || echo 000; }
jqb() { "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$W/body" "$1"; }

start_metad
MADMIN=${META%/metadata}
[ "$(code "$MADMIN/health")" = 200 ] || fail "metad /health: $(cat "$W/body")"
[ "$(jqb 'd["status"]')" = ok ] || fail "metad /health body: $(cat "$W/body")"
[ "$(code "$MADMIN/ready")" = 200 ] || fail "metad /ready: $(cat "$W/body")"
[ "$(jqb 'd["ready"]')" = True ] || fail "metad /ready body: $(cat "$W/body")"
ok "metad: /health and /ready 200"

start_master m1
A1=$ADMIN_m1
wait_for 10 bash -c "curl -s http://$A1/ready | grep -q '\"leader\":true'" || fail "m1 not leader"
[ "$(code "http://$A1/health")" = 200 ] || fail "master /health (liveness) without nodes: $(cat "$W/body")"
[ "$(code "http://$A1/ready")" = 503 ] || fail "master /ready without nodes: $(cat "$W/body")"
[ "$(jqb 'd["reason"]')" = "no storage node mounted yet" ] || fail "reason: $(cat "$W/body")"
[ "$(jqb 'd["ready"]')" = False ] || fail "ready flag: $(cat "$W/body")"
ok "leader without a node: /health 200, /ready 503 'no storage node mounted yet'"

echo hello >"$W/v"
if kv put --timeout 300 early "$W/v" 2>"$W/put.err"; then fail "put without a node succeeded"; fi
grep -q "no storage node mounted yet" "$W/put.err" || fail "put without a node: $(cat "$W/put.err")"
grep -q "no space left" "$W/put.err" && fail "put without a node says 'no space left'"
if kv get --timeout 300 early - 2>"$W/get.err"; then fail "get without a node succeeded"; fi
grep -q "no storage node mounted yet" "$W/get.err" || fail "get without a node: $(cat "$W/get.err")"
ok "put and get without a node: 'no storage node mounted yet', not 'no space left'"

# a put issued now with a long timeout waits (retries) until the node below has mounted
kv put --timeout 20000 waited "$W/v" >"$W/putw.out" 2>"$W/putw.err" &
PUTW=$!
sleep 0.5
kill -0 $PUTW 2>/dev/null || fail "the put with a 20 s timeout did not wait: $(cat "$W/putw.err")"
NA=$(free_port)
start_node n1 16MiB --admin-addr "127.0.0.1:$NA"
wait_for 10 curl -sf "http://127.0.0.1:$NA/health" || fail "node /health"
wait_for 15 curl -sf "http://127.0.0.1:$NA/ready" || fail "node /ready never 200: $(curl -s "http://127.0.0.1:$NA/ready")"
wait $PUTW || fail "the waiting put failed: $(cat "$W/putw.err")"
[ "$(kv get waited -)" = hello ] || fail "the waited put's value"
wait_for 10 curl -sf "http://$A1/ready" || fail "master /ready after the mount: $(curl -s "http://$A1/ready")"
[ "$(code "http://$A1/ready")" = 200 ] || fail "master /ready: $(cat "$W/body")"
[ "$(jqb 'd["nodes"]')" = 1 ] || fail "ready doc: $(cat "$W/body")"
ok "node /ready 200 once mounted; master /ready 200; a put issued before the mount was retried and stored"

start_master m2
A2=$ADMIN_m2
wait_for 5 bash -c "curl -s http://$A2/ready | grep -q 'the leader is at'" || true
[ "$(code "http://$A2/ready")" = 503 ] || fail "standby /ready: $(cat "$W/body")"
reason=$(jqb 'd["reason"]')
[ "$reason" = "standby; the leader is at $MASTER_m1" ] || fail "standby reason: $reason"
[ "$(code "http://$A2/health")" = 200 ] || fail "standby /health"
ok "standby: /ready 503 '$reason', /health 200"

if kv put big /dev/zero 2>"$W/zero.err"; then fail "put of /dev/zero succeeded"; fi
grep -q "exceeds 16.0 MiB (16777216 bytes), the largest object this cluster can hold" "$W/zero.err" ||
    fail "put of /dev/zero: $(cat "$W/zero.err")"
head -c 100000 /dev/urandom >"$W/r"
kv put piped - <"$W/r" >/dev/null || fail "a small put from a pipe"
kv get piped "$W/r2" >/dev/null || fail "get of the piped value"
cmp -s "$W/r" "$W/r2" || fail "the piped value"
ok "put from /dev/zero stops at the largest object ($(head -c 160 "$W/zero.err")...)"

kill9 n1
kill9 m2
kill9 m1

# a node with --admin-addr in a cluster with no master yet: /ready 503 with a JSON reason (it
# cannot mount), then 200 once it has mounted on the master started afterwards
CLUSTER0=$CLUSTER
CLUSTER=$CLUSTER0-late
NB=$(free_port)
start_node n2 16MiB --admin-addr "127.0.0.1:$NB"
reason=
end=$((SECONDS + 15))
while [ $SECONDS -lt $end ]; do
    c=$(code "http://127.0.0.1:$NB/ready")
    case $c in
    503)
        reason=$(jqb 'd["reason"]')
        # before kv_node_start has returned the node says it is starting instead
        [ "$reason" = "starting (registering and prefaulting the segment)" ] || break
        ;;
    000*) ;; # not listening yet
    *) fail "node /ready before any master: $c $(cat "$W/body")" ;;
    esac
    alive n2 || fail "node n2 died"
    sleep 0.05
done
[ "$c" = 503 ] || fail "node /ready before any master: $c $(cat "$W/body")"
[ "$reason" = "not mounted on a leader master yet" ] || fail "node /ready reason: $(cat "$W/body")"
[ "$(jqb 'd["ready"]')" = False ] || fail "node /ready flag: $(cat "$W/body")"
[ "$(jqb 'd["node_id"]')" = n2 ] || fail "node /ready node_id: $(cat "$W/body")"
[ "$(code "http://127.0.0.1:$NB/health")" = 200 ] || fail "node /health before the mount: $(cat "$W/body")"
start_master m3
wait_for 15 curl -sf "http://127.0.0.1:$NB/ready" || fail "node /ready never 200 after its master started: $(curl -s "http://127.0.0.1:$NB/ready")"
[ "$(code "http://127.0.0.1:$NB/ready")" = 200 ] || fail "node /ready after the mount: $(cat "$W/body")"
[ "$(jqb 'd["ready"]')" = True ] || fail "node /ready flag after the mount: $(cat "$W/body")"
grep -q "node n2 mounted" "$W/m3.log" || fail "m3 did not log the mount of n2"
ok "node --admin-addr: /ready 503 '$reason' before any master, 200 once mounted"
kill9 n2
kill9 m3
CLUSTER=$CLUSTER0


# serve prefaulting a 2 GiB segment: /ready is 503 with the reason until the node mounts
avail_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
if [ "$avail_kb" -lt $((6 * 1024 * 1024)) ]; then
    echo "note: $((avail_kb / 1024)) MiB available: serve uses --capacity 512MiB instead of 2GiB"
    CAP=512MiB
else
    CAP=2GiB
fi
SA=$(free_port)
SM=$(free_port)
SMETA=$(free_port)
start serve "$BIN" serve --metadata-addr "127.0.0.1:$SMETA" --master-addr "127.0.0.1:$SM" \
    --admin-addr "127.0.0.1:$SA" --capacity "$CAP"
seen503=0
end=$((SECONDS + 60))
while [ $SECONDS -lt $end ]; do
    c=$(code "http://127.0.0.1:$SA/ready")
    if [ "$c" = 503 ]; then
        # the first instants, before serve's master has elected itself, say so instead
        case $(jqb 'd["reason"]') in
        "no storage node mounted yet") seen503=$((seen503 + 1)) ;;
        "standby; no leader elected yet") ;;
        *) fail "serve reason: $(cat "$W/body")" ;;
        esac
    fi
    [ "$c" = 200 ] && break
    alive serve || fail "serve died"
    sleep 0.05
done
[ "$c" = 200 ] || fail "serve /ready never 200"
[ $seen503 -gt 0 ] || fail "serve: /ready never answered 503 while its node prefaulted $CAP"
echo x | "$BIN" put --master "127.0.0.1:$SM" --log-level error k - >/dev/null || fail "put on serve once ready"
ok "serve --capacity $CAP: /ready 503 'no storage node mounted yet' ($seen503 polls) until mounted, then 200"
echo "all store readiness tests passed"
