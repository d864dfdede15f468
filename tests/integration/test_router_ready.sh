#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_router_ready.sh - readiness of the router and the gateway:
#  - router: /health 200 (liveness) and /ready 503 with a reason while its only engine has not
#    been reached; a chat request sent then waits for discovery (--discovery-wait-ms) and is
#    answered 200 by the engine started a second later; /ready turns 200.
#  - the wait is bounded: with --discovery-wait-ms 300 a request for an engine never reached
#    fails 503 "not reached yet" after about 300 ms, not at once and not never.
#  - router: /ready 503 "the models of the 1 engine(s) in rotation are not discovered yet" while
#    its engine answers /health but not /v1/models; 200 once the models are listed.
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

# an engine in rotation (its /health 200) whose /v1/models fails: /ready 503 naming the models
# not yet discovered; 200 once its models are listed
touch "$W/M.nomodels"
start_engine M m2
start_router models --backends "http://127.0.0.1:${EPORT[M]}" --health-interval-ms 200
MP=${RPORT[models]}
wait_until 10 bash -c "curl -s http://127.0.0.1:$MP/ready | jq -e '.healthy_engines == 1'" ||
    fail "router: engine M never in rotation: $(curl -s "http://127.0.0.1:$MP/ready")"
[ "$(code "http://127.0.0.1:$MP/ready")" = 503 ] || fail "router /ready, models unknown: $(cat "$W/body")"
jq -e '.ready == false and .healthy_engines == 1 and .engines_ready == 0 and
    .reason == "the models of the 1 engine(s) in rotation are not discovered yet"' "$W/body" >/dev/null ||
    fail "router /ready reason, models unknown: $(cat "$W/body")"
reason=$(jq -r .reason "$W/body")
rm "$W/M.nomodels"
wait_until 10 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$MP/ready)\" = 200 ]" ||
    fail "router /ready not 200 once the models are listed: $(curl -s "http://127.0.0.1:$MP/ready")"
[ "$(code "http://127.0.0.1:$MP/ready")" = 200 ] || fail "router /ready: $(cat "$W/body")"
jq -e '.ready == true and .engines_ready == 1 and (has("reason") | not)' "$W/body" >/dev/null ||
    fail "ready doc: $(cat "$W/body")"
ok "router: /ready 503 '$reason' while its engine's models are unknown, 200 once listed"

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
