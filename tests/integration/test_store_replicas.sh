#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Replicas survive a node's death: metad + master + 3 nodes; 24 objects put with --replicas=2
# (so every node holds some); kill -9 one node that holds replicas; every get still returns
# the exact bytes, both at once (the client falls back to the other replica) and after the
# master has dropped the dead node. New puts with --replicas=2 keep working on the 2 left.
# shellcheck source=lib_store.sh
. "$(dirname "$0")/lib_store.sh"

start_metad
start_master m1 --node-timeout 2
start_node n1 32MiB
start_node n2 32MiB
start_node n3 32MiB
wait_nodes 3

for i in $(seq 24); do
    mkval "$W/v$i" $((i * 37000 + 5)) "$i"
    kv put --replicas=2 "obj/$i" "$W/v$i" >/dev/null || fail "put obj/$i"
done
ok "24 objects put with --replicas=2 on 3 nodes"

# the victim: a node that holds bytes (ask the master), else n2
victim=$(kv stat --json | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
nodes = d.get("nodes") if isinstance(d.get("nodes"), list) else []
for n in nodes:
    nid = n.get("id") or n.get("node_id") or ""
    if nid in ("n1", "n2", "n3") and n.get("used", n.get("used_bytes", 0)) > 0:
        print(nid)
        break
else:
    print("n2")')
kill9 "$victim"
check_all() {
    local i
    for i in $(seq 24); do
        kv get "obj/$i" "$W/o" || fail "get obj/$i after kill -9 $victim ($1)"
        cmp -s "$W/o" "$W/v$i" || fail "obj/$i differs after kill -9 $victim ($1)"
    done
}
check_all "at once"
ok "kill -9 $victim: every get still succeeds with the exact bytes (at once)"
wait_nodes 2 15
check_all "after the master dropped it"
ok "every get still succeeds after the master dropped $victim"
mkval "$W/new" 100000 99
kv put --replicas=2 obj/new "$W/new" >/dev/null || fail "put --replicas=2 on the 2 nodes left"
kv get obj/new - | cmp - "$W/new" || fail "obj/new"
ok "new puts with --replicas=2 on the remaining nodes"
