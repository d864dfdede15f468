#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_image_full.sh - a cluster of full-image containers (docker/run.sh, podman, runc, host
# network, every daemon on 127.0.0.1 and free ports; see lib_images.sh for why host network):
# etcd, two masters, three nodes (n3 on 2 MiB huge pages that scripts/host-prepare.sh reserves
# and mounts, mapped by run.sh --hugepages, undone at the end), a gateway and a router, each
# its own container. Checks:
#   1. the leader master, the nodes (mounted on it), the gateway and the router answer /ready
#      with 200, etcd and the standby master /health;
#   2. objects put from the host (this build's kvstash, through etcd: follows the leader) read
#      back exactly, and the Python layer in the image round-trips bytes against the cluster
#      and reads what the host put;
#   3. the gateway takes an engine's state; a request through the router reaches the engine;
#   4. podman kill (SIGKILL) of the leader's container: the standby takes over and every
#      acknowledged object is read back with the exact bytes; new puts work.
# shellcheck source=lib_images.sh
. "$(dirname "$0")/lib_images.sh"
have_image "$IMG_FULL" || fail "$IMG_FULL is not built (containers.test_images_build makes it)"
command -v etcdctl >/dev/null || skip "etcdctl not installed (etcd-client, scripts/packages.txt)"

CLUSTER=ctr$$
# --- huge pages for n3: 24 x 2 MiB (its 32 MiB segment), through host-prepare.sh, undone after
export KVSTASH_HOST_PREPARE_STATE=$W/hp.state KVSTASH_MEMLOCK_CONF=$W/memlock.conf
HPMNT=$W/hugepages
"$SRC/scripts/host-prepare.sh" --hugepages 2M --pages \
    $(($(cat /proc/sys/vm/nr_hugepages) + 24)) --mount "$HPMNT" >"$W/hp.log" 2>&1 ||
    fail "host-prepare.sh: $(cat "$W/hp.log")"
CLEANUPS+=("\"$SRC/scripts/host-prepare.sh\" --undo >/dev/null 2>&1")
free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
[ "$free" -ge 16 ] || fail "host-prepare.sh reserved too few 2 MiB pages ($free free)"

# --- etcd
CP=$(free_port)
PP=$(free_port)
run_ctr etcd "$IMG_FULL" -- etcd --data-dir /tmp/etcd --name default \
    --listen-client-urls "http://127.0.0.1:$CP" --advertise-client-urls "http://127.0.0.1:$CP" \
    --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
    --initial-cluster "default=http://127.0.0.1:$PP" --log-level warn
wait_for 30 curl -sf "http://127.0.0.1:$CP/health" || fail "etcd container did not start"
META=etcd://127.0.0.1:$CP

# --- two masters
declare -A RPC ADM
for m in ma mb; do
    RPC[$m]=127.0.0.1:$(free_port)
    ADM[$m]=127.0.0.1:$(free_port)
    run_ctr "$m" "$IMG_FULL" -- kvstash master --metadata "$META" --cluster "$CLUSTER" \
        --id "$m" --rpc-addr "${RPC[$m]}" --admin-addr "${ADM[$m]}" --put-timeout 5
done
for m in ma mb; do
    wait_for 30 curl -sf "http://${ADM[$m]}/health" || fail "master $m did not start"
done

# --- three nodes; n3 on huge pages
declare -A NADM
for n in n1 n2 n3; do
    NADM[$n]=127.0.0.1:$(free_port)
    extra=()
    ropt=()
    if [ "$n" = n3 ]; then
        extra=(--hugepages 2M)
        ropt=(--hugepages)
    fi
    run_ctr "$n" "$IMG_FULL" "${ropt[@]}" -e KVSTASH_BIND=127.0.0.1 -- kvstash node \
        --metadata "$META" --cluster "$CLUSTER" --node-id "$n" --capacity 32MiB \
        --admin-addr "${NADM[$n]}" "${extra[@]}"
done
for n in n1 n2 n3; do
    wait_for 60 curl -sf "http://${NADM[$n]}/ready" || fail "node $n never became ready"
done
grep -q "2.0 MiB pages" "$W/n3.log" || fail "n3 does not say it runs on 2 MiB pages"
grep -q "4.0 KiB pages" "$W/n1.log" || fail "n1 does not say which pages it uses"

leader() { # prints ma or mb
    local a
    a=$(etcdctl --endpoints="http://127.0.0.1:$CP" get --print-value-only \
        "/kvstash/$CLUSTER/masters/leader" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["rpc_addr"])') ||
        return 1
    for m in ma mb; do [ "${RPC[$m]}" = "$a" ] && echo "$m" && return 0; done
    return 1
}
L=$(leader) || fail "no leader record in etcd naming ma or mb"
wait_for 30 curl -sf "http://${ADM[$L]}/ready" || fail "leader $L never became ready"
ok "etcd, masters ma and mb (leader $L), nodes n1 n2 n3 (n3 on 2 MiB pages) ready in containers"

# --- gateway and router, and an engine (a fake one, on the host) behind the router
GU=$(free_port)
GH=127.0.0.1:$(free_port)
run_ctr gateway "$IMG_FULL" -- kvstash gateway --udp-port "$GU" --bind-address 127.0.0.1 \
    --http-addr "$GH"
"$PY" "$SRC/tests/integration/router_fake_engine.py" --name A --models m1 --ctl "$W" \
    --port-file "$W/A.port" >"$W/engine.log" 2>&1 &
wait_for 20 test -s "$W/A.port" || fail "fake engine did not start"
EA=http://127.0.0.1:$(cat "$W/A.port")
RT=127.0.0.1:$(free_port)
run_ctr router "$IMG_FULL" -- kvstash router --addr "$RT" --backends "$EA" \
    --routing-logic roundrobin --health-interval-ms 200
wait_for 30 curl -sf "http://$GH/ready" || fail "gateway never became ready"
wait_for 30 curl -sf "http://$RT/ready" || fail "router never became ready"

kv() { "$BIN" "$1" --metadata "$META" --cluster "$CLUSTER" --log-level error "${@:2}"; }
mkval() { # FILE SIZE SEED
    "$PY" -c 'import random,sys; random.seed(int(sys.argv[2])); sys.stdout.buffer.write(random.randbytes(int(sys.argv[1])))' \
        "$2" "$3" >"$1"
}
N=30
for i in $(seq $N); do
    mkval "$W/v$i" $((i * 37000 + 11)) "$i"
    kv put --replicas $((1 + i % 2)) "full/$i" "$W/v$i" >/dev/null 2>"$W/put.err" ||
        fail "put full/$i: $(cat "$W/put.err")"
done
for i in $(seq $N); do
    kv get "full/$i" "$W/o" 2>"$W/get.err" || fail "get full/$i: $(cat "$W/get.err")"
    cmp -s "$W/o" "$W/v$i" || fail "full/$i differs"
done
nodes=$(kv stat --json | "$PY" -c '
import json, sys
n = json.load(sys.stdin).get("nodes", 0)
print(len(n) if isinstance(n, list) else int(n))') || fail "kvstash stat"
[ "$nodes" = 3 ] || fail "the leader reports $nodes nodes, want 3"
ok "$N objects put from the host through etcd (1-2 replicas on 3 nodes) read back exactly"

# the Python layer in the image: put/get bytes against the cluster, and read what the host put
run_ctr py "$IMG_FULL" -- python3 -c '
import hashlib, sys
import kvstash
meta, cluster, want = sys.argv[1:4]
with kvstash.Store(metadata=meta, cluster=cluster) as s:
    data = bytes(range(256)) * 4096 + b"tail"
    s.put("py/obj", data, replicas=2)
    assert s.get("py/obj") == data, "python round trip"
    got = hashlib.sha256(s.get("full/3")).hexdigest()
    assert got == want, (got, want)
    assert s.exists(["py/obj", "full/1", "nope"]) == [True, True, False]
print("python ok")
' "$META" "$CLUSTER" "$(sha256sum "$W/v3" | cut -c1-64)"
# done when the container has exited; its log (podman logs) says whether every assertion held
wait_for 60 sh -c "$ENGINE inspect -f '{{.State.Status}}' $TAG-py | grep -qx exited" ||
    fail "the Python container has not exited after 60 s"
"$ENGINE" logs "$TAG-py" >"$W/py-container.log" 2>&1 || true
grep -q "python ok" "$W/py-container.log" || fail "the Python layer in the full image: $(tail -n 5 "$W/py-container.log")"
"$PY" - "$W/pyobj" <<'PY'
import sys
open(sys.argv[1], "wb").write(bytes(range(256)) * 4096 + b"tail")
PY
kv get py/obj "$W/o" || fail "get py/obj from the host"
cmp -s "$W/o" "$W/pyobj" || fail "py/obj differs on the host"
ok "the Python layer in the full image round-trips bytes and reads the host's objects (and vice versa)"

# --- gateway and router
"$BIN" agent --engine-id e1 --gateway "127.0.0.1:$GU" --count 3 --interval-ms 5 \
    --pending-tokens 42 >/dev/null 2>&1 || fail "agent"
wait_for 10 sh -c "curl -sf http://$GH/metrics | grep -q '^kvstash_gateway_engine_pending_tokens{engine_id=\"e1\"} 42\$'" ||
    fail "the gateway container did not take the engine's state"
code=$(curl -s -o "$W/resp" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d '{"model":"m1","messages":[{"role":"user","content":"hi"}]}' \
    "http://$RT/v1/chat/completions") || true
[ "$code" = 200 ] || fail "request through the router container: HTTP $code $(cat "$W/resp")"
ok "the gateway container takes engine states; a request through the router container reaches the engine"

# --- kill the leader's container
other=mb
[ "$L" = mb ] && other=ma
"$ENGINE" kill -s KILL "$TAG-$L" >/dev/null || fail "podman kill $L"
t0=$SECONDS
wait_for 40 kv get --timeout 5000 full/1 "$W/o" || fail "full/1 unreadable 40 s after killing $L"
nl=$(leader) || fail "no leader record after the kill"
[ "$nl" = "$other" ] || fail "the leader record names $nl, not the standby $other"
for i in $(seq $N); do
    wait_for 15 kv get "full/$i" "$W/o" || fail "full/$i unreadable after the fail-over"
    cmp -s "$W/o" "$W/v$i" || fail "full/$i differs after the fail-over"
done
kv get py/obj "$W/o" || fail "py/obj unreadable after the fail-over"
cmp -s "$W/o" "$W/pyobj" || fail "py/obj differs after the fail-over"
mkval "$W/after" 123457 99
wait_for 30 kv put full/after "$W/after" || fail "put after the fail-over"
kv get full/after - | cmp -s - "$W/after" || fail "full/after"
ok "podman kill of leader $L: $other took over in ~$((SECONDS - t0)) s; all $((N + 1)) acknowledged objects read back exactly; puts work"
