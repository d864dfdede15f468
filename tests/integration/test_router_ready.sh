#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_router_ready.sh - readiness of the router and the gateway:
#  - router: /health 200 (liveness) and /ready 503 with a reason while its only engine has not
#    been reached; a chat request sent then waits for discovery (--discovery-wait-ms) and is
#    answered 200 by the engine started a second later; /ready turns 200.
#  - the wait is bounded: with --discovery-wait-ms 300 a request for an engine never reached
#    fails 503 "not reached yet" after about 300 ms, not at once and not never.
#  - gateway: /health and /ready 200 (UDP socket bound, receive thread running), JSON.
set -euo pipefail
# shellcheck source=lib_router.sh
. "$(dirname "$0")/lib_router.sh" router-ready

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
code() { curl -s -o "$W/body" -w '%{http_code}' "$@" || echo 000; }

lport=$(free_port)
# health interval a minute: engines out of rotation are re-checked every second
start_router late --backends "http://127.0.0.1:$lport" --health-interval-ms 60000 \
    --discovery-wait-ms 15000
RP=${RPORT[late]}
[ "$(code "http://127.0.0.1:$RP/health")" = 200 ] || fail "router /health: $(cat "$W/body")"
[ "$(code "http://127.0.0.1:$RP/ready")" = 503 ] || fail "router /ready before any engine: $(cat "$W/body")"
jq -e '.ready == false and (.reason | test("no engine in rotation"))' "$W/body" >/dev/null ||
    fail "router /ready reason: $(cat "$W/body")"
ok "router: /health 200, /ready 503 ($(jq -r .reason "$W/body"))"

# a request now waits for discovery instead of failing
curl -s -o "$W/chat" -w '%{http_code}' "http://127.0.0.1:$RP/v1/chat/completions" \
    -d '{"model":"m1","messages":[]}' >"$W/chat.code" &
cpid=$!
sleep 1
kill -0 $cpid 2>/dev/null || fail "the request did not wait: $(cat "$W/chat.code") $(cat "$W/chat")"
start_engine D m1 "$lport"
wait $cpid || true
[ "$(cat "$W/chat.code")" = 200 ] || fail "the waiting request: $(cat "$W/chat.code") $(cat "$W/chat")"
[ "$(jq -r .engine "$W/chat")" = D ] || fail "answered by: $(cat "$W/chat")"
ok "a request sent before the engine was discovered waited and was served by it"
wait_until 5 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$RP/ready)\" = 200 ]" ||
    fail "router /ready not 200 after discovery: $(curl -s "http://127.0.0.1:$RP/ready")"
[ "$(code "http://127.0.0.1:$RP/ready")" = 200 ] || fail "router /ready"
jq -e '.ready == true and .engines_ready == 1' "$W/body" >/dev/null || fail "ready doc: $(cat "$W/body")"
ok "router /ready 200 once an engine is in rotation with its models known"

nport=$(free_port)
start_router bounded --backends "http://127.0.0.1:$nport" --health-interval-ms 60000 \
    --discovery-wait-ms 300
t0=$(date +%s%N)
c=$(code "http://127.0.0.1:${RPORT[bounded]}/v1/chat/completions" -d '{"model":"m1","messages":[]}')
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$c" = 503 ] || fail "bounded wait: $c $(cat "$W/body")"
jq -e '.error.message | test("not reached")' "$W/body" >/dev/null || fail "bounded wait: $(cat "$W/body")"
[ $ms -ge 250 ] || fail "the request failed after $ms ms, before its 300 ms discovery wait"
ok "the discovery wait is bounded: 503 'not reached yet' after $ms ms (--discovery-wait-ms 300)"

# gateway
"$BIN" gateway --udp-port 0 --http-addr 127.0.0.1:0 --log-level info >"$W/gw.out" 2>"$W/gw.log" &
pids+=($!)
wait_until 5 grep -q 'query API on' "$W/gw.log" || fail "gateway did not start"
GP=$(sed -n 's/.*query API on .* (port \([0-9]*\)).*/\1/p' "$W/gw.log" | head -1)
[ -n "$GP" ] || fail "no gateway HTTP port in its log"
[ "$(code "http://127.0.0.1:$GP/health")" = 200 ] || fail "gateway /health: $(cat "$W/body")"
jq -e '.status == "ok" and .total_engines == 0' "$W/body" >/dev/null || fail "gateway /health doc: $(cat "$W/body")"
[ "$(code "http://127.0.0.1:$GP/ready")" = 200 ] || fail "gateway /ready: $(cat "$W/body")"
jq -e '.ready == true and .udp_port > 0' "$W/body" >/dev/null || fail "gateway /ready doc: $(cat "$W/body")"
[ "$(code -X POST "http://127.0.0.1:$GP/ready")" = 405 ] || fail "POST /ready: $(cat "$W/body")"
jq -e '.error | test("method not allowed")' "$W/body" >/dev/null || fail "405 body: $(cat "$W/body")"
ok "gateway: /health and /ready 200 (udp port $(jq -r .udp_port <<<"$(curl -s "http://127.0.0.1:$GP/ready")"))"
echo "all router and gateway readiness tests passed"
