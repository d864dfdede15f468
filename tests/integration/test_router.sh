#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The router against fake engines (tests/integration/router_fake_engine.py), with real HTTP
# clients (curl, and Node's fetch; nodejs is in scripts/packages.txt): models union, plain and SSE responses
# (SSE proven incremental), request ids, bad requests (400/404/405/413/503), slow engines (504),
# dying engines (retry on another, out of rotation, back when healthy), and each policy's choice.
set -euo pipefail
# shellcheck source=lib_router.sh
. "$(dirname "$0")/lib_router.sh" router-test

# chat ROUTER MODEL [extra curl args...] -> response body on stdout; HTTP code in $W/code
chat() {
    local r=$1 model=$2
    shift 2
    curl -s -o "$W/body" -w '%{http_code}' "$@" \
        "http://127.0.0.1:${RPORT[$r]}/v1/chat/completions" -H 'Content-Type: application/json' \
        -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" >"$W/code" || true
    cat "$W/body"
}
engine_of() { jq -r .engine; }
code() { cat "$W/code"; }
metrics() { curl -s "http://127.0.0.1:${RPORT[$1]}/metrics"; }
healthy_is() { # ROUTER URL 0|1   (no pipe into grep -q: with pipefail, curl's SIGPIPE would fail it)
    local m
    m=$(metrics "$1")
    grep -q "^kvstash_router_engine_healthy{server=\"$2\"} $3\$" <<<"$m"
}

start_engine A m1
start_engine B m1
start_engine C m2
UA=http://127.0.0.1:${EPORT[A]}
UB=http://127.0.0.1:${EPORT[B]}
UC=http://127.0.0.1:${EPORT[C]}

# --- bad configuration fails at start with one clear line
set +e
"$BIN" router --addr 127.0.0.1:0 --backends ftp://x:1 >"$W/bad.out" 2>&1
rc=$?
set -e
[ $rc -eq 1 ] && grep -q "only http://" "$W/bad.out" || fail "bad backend URL: rc $rc $(cat "$W/bad.out")"
set +e
"$BIN" router --routing-logic magic --backends $UA >"$W/bad.out" 2>&1
rc=$?
set -e
[ $rc -eq 2 ] || fail "unknown routing logic: exit $rc"
ok "bad configuration rejected"

# Backends spelled differently (localhost, trailing slash, no scheme) name the same engines.
start_router rr --backends "http://localhost:${EPORT[A]}/,127.0.0.1:${EPORT[B]},$UC" \
    --health-interval-ms 200 --timeout-ms 1500 --max-body 64KiB --threads 2
R=rr

# --- models union, health
models=$(curl -s "http://127.0.0.1:${RPORT[$R]}/v1/models" | jq -r '[.data[].id] | sort | join(",")')
[ "$models" = "m1,m2" ] || fail "models union: $models"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${RPORT[$R]}/health")" = 200 ] ||
    fail "health"
ok "GET /v1/models is the union; /health 200"

# --- roundrobin alternates between the engines serving the model; m2 only goes to C
seq_engines=""
for _ in 1 2 3 4; do
    e=$(chat $R m1 | engine_of)
    [ "$(code)" = 200 ] || fail "chat code $(code)"
    seq_engines+=$e
done
case $seq_engines in ABAB | BABA) ;; *) fail "roundrobin sequence $seq_engines" ;; esac
for _ in 1 2 3; do [ "$(chat $R m2 | engine_of)" = C ] || fail "m2 not on C"; done
ok "roundrobin alternates ($seq_engines); model m2 only on C"

# --- request ids: propagated, else generated; Host rewritten for the engine
b=$(chat $R m1 -H 'X-Request-Id: test-rid-42' -D "$W/hdr")
[ "$(echo "$b" | jq -r .request_id)" = test-rid-42 ] || fail "request id not propagated: $b"
grep -qi '^x-request-id: test-rid-42' "$W/hdr" || fail "request id not returned"
b=$(chat $R m1 -D "$W/hdr")
rid=$(echo "$b" | jq -r .request_id)
[ -n "$rid" ] && [ "$rid" != null ] || fail "no generated request id"
grep -qi "^x-request-id: $rid" "$W/hdr" || fail "generated request id not returned"
ok "X-Request-Id propagated and generated ($rid)"

# --- bad requests
body=$(curl -s -w ' %{http_code}' "http://127.0.0.1:${RPORT[$R]}/v1/chat/completions" -d '{"model":')
[ "${body##* }" = 400 ] || fail "bad JSON: $body"
echo "${body% *}" | jq -e '.error.type == "invalid_request_error" and .error.code == 400 and (.error.message | test("column"))' >/dev/null ||
    fail "bad JSON error body: $body"
body=$(curl -s -w ' %{http_code}' "http://127.0.0.1:${RPORT[$R]}/v1/completions" -d '{"prompt":"x"}')
[ "${body##* }" = 400 ] && echo "${body% *}" | jq -e '.error.message | test("model")' >/dev/null ||
    fail "missing model: $body"
b=$(chat $R no-such-model)
[ "$(code)" = 404 ] && echo "$b" | jq -e '.error.code == 404 and (.error.message | test("no-such-model"))' >/dev/null ||
    fail "unknown model: $(code) $b"
head -c 100000 /dev/zero | tr '\0' 'a' >"$W/big"
c=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${RPORT[$R]}/v1/completions" \
    --data-binary @"$W/big")
[ "$c" = 413 ] || fail "oversize body: $c"
b=$(curl -s "http://127.0.0.1:${RPORT[$R]}/v1/completions" --data-binary @"$W/big")
echo "$b" | jq -e '.error.code == 413 and (.error.message | test("limit"))' >/dev/null ||
    fail "413 body is not an OpenAI-style error: $b"
c=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${RPORT[$R]}/v1/chat/completions")
[ "$c" = 405 ] || fail "GET on a POST endpoint: $c"
ok "400 bad JSON / missing model, 404 unknown model, 413 oversize, 405 wrong method"

# --- HTTP/1.1 of the router's own server: pipelined requests answered in order on one
# connection, malformed requests, Expect: 100-continue, HTTP/1.0 clients, chunked request bodies
"$PY" - "${RPORT[$R]}" <<'EOF' || fail "raw HTTP checks"
import json, re, socket, sys
port = int(sys.argv[1])
def exchange(raw):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(raw)
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            return data
        data += d
body = b'{"model":"m1","messages":[{"role":"user","content":"hi"}]}'
req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
data = exchange(req + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + req +
                b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
codes = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
assert codes == [b"200", b"200", b"200", b"404"], data
for raw, code, words in [(b"BLAH\r\n\r\n", b"400", "malformed"),
                         (b"GET /health HTTP/1.1\r\nNo colon here\r\n\r\n", b"400", "malformed"),
                         (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414", "too long")]:
    data = exchange(raw)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.split()[1] == code, data[:200]
    err = json.loads(rest)["error"]
    assert err["code"] == int(code) and words in err["message"], err
print("raw HTTP ok")
EOF
printf '{"model":"m1","messages":[{"role":"user","content":"%s"}]}' "$(head -c 3000 /dev/zero | tr '\0' x)" >"$W/mid.json"
curl -sv -H 'Expect: 100-continue' "http://127.0.0.1:${RPORT[$R]}/v1/chat/completions" \
    --data-binary @"$W/mid.json" >"$W/expect.out" 2>"$W/expect.err" || fail "curl with Expect failed"
grep -q '< HTTP/1.1 100 Continue' "$W/expect.err" && jq -e '.engine' "$W/expect.out" >/dev/null ||
    fail "Expect: 100-continue: $(cat "$W/expect.err")"
e=$(chat $R m1 --http1.0 | engine_of)
[ "$(code)" = 200 ] && [ -n "$e" ] || fail "HTTP/1.0 client: $(code)"
curl -s --http1.0 "http://127.0.0.1:${RPORT[$R]}/v1/chat/completions" \
    -d '{"model":"m2","stream":true,"messages":[]}' >"$W/sse10" || fail "HTTP/1.0 stream"
grep -q 'data: \[DONE\]' "$W/sse10" || fail "HTTP/1.0 stream incomplete: $(cat "$W/sse10")"
e=$(chat $R m1 -H 'Transfer-Encoding: chunked' | engine_of)
[ "$(code)" = 200 ] && [ -n "$e" ] || fail "chunked request body: $(code)"
ok "pipelining, malformed requests (400/414), Expect: 100-continue, HTTP/1.0, chunked bodies"

# --- garbage and abrupt clients do not hurt the router: 400 connections send random bytes,
# truncated or pipelined requests in random pieces, then close, half-close or reset; the router
# (ASan build in CI) stays up and serves normally afterwards
"$PY" - "${RPORT[$R]}" <<'EOF' || fail "abuse run"
import random, socket, struct, sys
port = int(sys.argv[1])
rng = random.Random(7)
body = b'{"model":"m1","messages":[{"role":"user","content":"hi"}]}'
good = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body))
samples = [good, good * 3, b"GET /health HTTP/1.1\r\n\r\n", b"GET /metrics HTTP/1.0\r\n\r\n",
           b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
           b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
           b"POST /v1/chat/completions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"]
for i in range(400):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        kind = rng.randrange(4)
        if kind == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
        else:
            data = rng.choice(samples)
            if kind == 1:
                data = data[:rng.randrange(len(data) + 1)]
            elif kind == 2:
                data = bytearray(data)
                for _ in range(3):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                data = bytes(data)
        pos = 0
        while pos < len(data):
            n = rng.randrange(1, 64)
            s.sendall(data[pos:pos + n])
            pos += n
        end = rng.randrange(3)
        if end == 0:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        elif end == 1:
            s.shutdown(socket.SHUT_WR)
            try:
                s.recv(65536)
            except OSError:
                pass
    except OSError:
        pass
    finally:
        s.close()
print("abuse done")
EOF
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${RPORT[$R]}/health")" = 200 ] ||
    fail "router unhealthy after the abuse run"
e=$(chat $R m1 | engine_of)
[ "$(code)" = 200 ] && [ -n "$e" ] || fail "router does not serve after the abuse run: $(code)"
wait_until 5 bash -c "curl -s http://127.0.0.1:${RPORT[$R]}/metrics | grep -q '^kvstash_router_engine_requests_running{server=\"$UA\"} 0'" ||
    fail "in-flight requests leaked by the abuse run"
ok "400 garbage/truncated/reset clients: the router stays up, serves, leaks no in-flight request"

# --- engines that close idle keep-alive connections: the pooled connection found closed is
# replaced by a new one to the same engine; no error, no failover, nobody out of rotation
touch "$W/A.closeidle" "$W/B.closeidle"
fo0=$(metrics $R | grep -c '^kvstash_router_failovers_total{server="[^"]*"} 0$' || true)
for _ in $(seq 10); do
    chat $R m1 >/dev/null
    [ "$(code)" = 200 ] || fail "with engines closing idle connections: $(code)"
done
rm -f "$W/A.closeidle" "$W/B.closeidle"
m=$(metrics $R)
[ "$(grep -c '^kvstash_router_failovers_total{server="[^"]*"} 0$' <<<"$m")" = "$fo0" ] ||
    fail "a closed idle connection caused a failover: $(grep failovers <<<"$m")"
healthy_is $R "$UA" 1 && healthy_is $R "$UB" 1 || fail "an engine left rotation over an idle close"
ok "engine closing idle keep-alive connections: transparent ($(grep '^kvstash_router_stale' <<<"$m"))"

# --- SSE through curl: relayed incrementally (the engine holds the rest until we saw event 0)
rm -f "$W/gate1"
curl -s -N "http://127.0.0.1:${RPORT[$R]}/v1/chat/completions" -H "X-Test-Gate: $W/gate1" \
    -d '{"model":"m2","stream":true,"messages":[{"role":"user","content":"hi"}]}' >"$W/sse1" &
cpid=$!
wait_until 5 grep -q '"i": 0' "$W/sse1" || fail "first SSE event not relayed before the rest"
touch "$W/gate1"
wait $cpid || fail "curl stream failed"
grep -q '"i": 3, "gated": true' "$W/sse1" || fail "SSE not incremental: $(cat "$W/sse1")"
grep -q 'data: \[DONE\]' "$W/sse1" || fail "SSE end missing"
ok "SSE relayed chunk by chunk (curl)"

# --- a client that goes away mid-stream: the upstream request is cancelled, nothing leaks
rm -f "$W/gate-never"
curl -s -N --max-time 1 "http://127.0.0.1:${RPORT[$R]}/v1/chat/completions" \
    -H "X-Test-Gate: $W/gate-never" \
    -d '{"model":"m2","stream":true,"messages":[{"role":"user","content":"hi"}]}' >"$W/sse-cut" || true
grep -q '"i": 0' "$W/sse-cut" || fail "first event missing before the cut"
wait_until 3 bash -c "curl -s http://127.0.0.1:${RPORT[$R]}/metrics | grep -q '^kvstash_router_engine_requests_running{server=\"$UC\"} 0'" ||
    fail "in-flight not released after the client left"
[ "$(chat $R m2 | engine_of)" = C ] || fail "router unusable after a client left mid-stream"
ok "client leaving mid-stream cancels the upstream request"

# --- a client that stops reading a long stream: the router stops reading the engine (bounded
# buffering), and the whole stream arrives intact once the client reads again
"$PY" - "${RPORT[$R]}" "$W/C.progress" <<'EOF' || fail "backpressure"
import os, socket, sys, time
port, prog = int(sys.argv[1]), sys.argv[2]
total = 64 << 20
body = b'{"model":"m2","stream":true,"messages":[]}'
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Test-Big: %d\r\n"
          b"Content-Length: %d\r\n\r\n%s" % (total, len(body), body))
first = s.recv(4096)
assert first.startswith(b"HTTP/1.1 200"), first[:100]
time.sleep(1.5)  # not reading
written = int(open(prog).read())
assert written < total // 2, "the engine wrote %d of %d bytes while the client read nothing" % (written, total)
got = len(first)
while True:
    d = s.recv(1 << 20)
    if not d:
        break
    got += len(d)
    if got > total and d.endswith(b"0\r\n\r\n"):
        break
assert got > total, got
print("engine held at %d bytes while the client paused; %d bytes relayed" % (written, got))
EOF
ok "slow client: the engine is held back, the stream completes"

# --- Node's fetch (Node >= 18): plain JSON and SSE, incremental
if command -v node >/dev/null; then
    rm -f "$W/gate2"
    ROUTER="http://127.0.0.1:${RPORT[$R]}" GATE="$W/gate2" node -e '
      const fs = require("fs");
      (async () => {
        const url = process.env.ROUTER + "/v1/chat/completions";
        let r = await fetch(url, {method: "POST", headers: {"content-type": "application/json"},
          body: JSON.stringify({model: "m1", messages: [{role: "user", content: "hi"}]})});
        const j = await r.json();
        if (r.status !== 200 || !["A", "B"].includes(j.engine)) throw new Error("plain " + r.status);
        r = await fetch(url, {method: "POST", headers: {"content-type": "application/json",
          "x-test-gate": process.env.GATE},
          body: JSON.stringify({model: "m2", stream: true, messages: [{role: "user", content: "x"}]})});
        if (r.headers.get("content-type") !== "text/event-stream") throw new Error("ct");
        const dec = new TextDecoder(); let text = "", gated = false;
        for await (const chunk of r.body) {
          text += dec.decode(chunk, {stream: true});
          if (!gated && text.includes("\"i\": 0")) { fs.writeFileSync(process.env.GATE, ""); gated = true; }
        }
        if (!text.includes("\"gated\": true") || !text.includes("[DONE]")) throw new Error("stream: " + text);
        console.log("node ok");
      })().catch(e => { console.error(e); process.exit(1); });
    ' >"$W/node.out" 2>&1 || fail "node fetch: $(cat "$W/node.out")"
    ok "Node fetch: plain JSON and incremental SSE"
else
    fail "node is not installed (scripts/install-deps.sh installs nodejs; Node's fetch is one of the required clients)"
fi

# --- slow engine: C is the only m2 engine and answers after the timeout -> 504
echo 3000 >"$W/C.slow"
b=$(chat $R m2)
[ "$(code)" = 504 ] && echo "$b" | jq -e '.error.code == 504' >/dev/null || fail "slow engine: $(code) $b"
rm -f "$W/C.slow"
wait_until 5 healthy_is $R "$UC" 1 || fail "C not back in rotation after its health check"
[ "$(chat $R m2 | engine_of)" = C ] || fail "C does not serve again"
ok "slow engine -> 504, back in rotation when healthy"

# --- slow engine with a healthy peer: the request is retried on the other engine
echo 3000 >"$W/A.slow"
for _ in 1 2; do
    e=$(chat $R m1 | engine_of)
    [ "$(code)" = 200 ] && [ "$e" = B ] || fail "retry after timeout: $(code) $e"
done
rm -f "$W/A.slow"
m=$(metrics $R)
grep -q "^kvstash_router_failovers_total{server=\"$UA\"} [1-9]" <<<"$m" || fail "no failover counted for A"
ok "timed-out engine retried on another"

# --- dying engine: B killed -> requests still succeed (retry on A), B out of rotation
wait_until 5 healthy_is $R "$UA" 1 || fail "A not back"
kill "${EPID[B]}"
wait "${EPID[B]}" 2>/dev/null || true
for _ in 1 2 3 4; do
    e=$(chat $R m1 | engine_of)
    [ "$(code)" = 200 ] && [ "$e" = A ] || fail "with B dead: $(code) $e"
done
healthy_is $R "$UB" 0 || fail "B still in rotation: $(metrics $R | grep healthy_pods)"
start_engine B m1 "${EPORT[B]}"
wait_until 5 healthy_is $R "$UB" 1 || fail "B not back after restart"
seq_engines=""
for _ in 1 2 3 4; do seq_engines+=$(chat $R m1 | engine_of); done
[[ $seq_engines == *B* ]] || fail "B not used after coming back: $seq_engines"
ok "dead engine: retried on another, out of rotation, back when healthy ($seq_engines)"

# --- an engine dying mid-stream: the client sees a truncated stream (an error), not a clean end
rm -f "$W/gate3"
set +e
curl -s -N "http://127.0.0.1:${RPORT[$R]}/v1/chat/completions" -H "X-Test-Gate: $W/gate3" \
    -d '{"model":"m2","stream":true,"messages":[{"role":"user","content":"hi"}]}' >"$W/sse3" &
cpid=$!
set -e
wait_until 5 grep -q '"i": 0' "$W/sse3" || fail "no first event"
kill "${EPID[C]}"
set +e
wait $cpid
crc=$?
set -e
[ $crc -ne 0 ] && ! grep -q 'DONE' "$W/sse3" || fail "a cut stream looked complete (curl rc $crc)"
start_engine C m2 "${EPORT[C]}"
wait_until 5 healthy_is $R "$UC" 1 || fail "C not back after restart"
ok "engine dying mid-stream: client connection aborted (curl rc $crc)"

# --- no healthy engine -> 503
touch "$W/A.sick" "$W/B.sick"
wait_until 5 healthy_is $R "$UA" 0 || fail "A still healthy"
wait_until 5 healthy_is $R "$UB" 0 || fail "B still healthy"
b=$(chat $R m1)
[ "$(code)" = 503 ] && echo "$b" | jq -e '.error.code == 503' >/dev/null || fail "no healthy: $(code) $b"
rm -f "$W/A.sick" "$W/B.sick"
wait_until 5 healthy_is $R "$UA" 1 || fail "A not back"
wait_until 5 healthy_is $R "$UB" 1 || fail "B not back"
ok "no healthy engine -> 503"

# --- metrics
m=$(curl -s "http://127.0.0.1:${RPORT[$R]}/metrics")
grep -q "^kvstash_router_request_latency_seconds_count{server=\"$UA\"} [1-9]" <<<"$m" || fail "latency histogram"
grep -q "^kvstash_router_time_to_first_byte_seconds_bucket{server=\"$UC\",le=\"+Inf\"} [1-9]" <<<"$m" || fail "ttfb histogram"
grep -q "^kvstash_router_engine_requests_running{server=\"$UA\"} 0" <<<"$m" || fail "in-flight gauge"
grep -q '^kvstash_router_rejected_total{reason="unknown_model"} [1-9]' <<<"$m" || fail "rejections"
mv=$(curl -s "http://127.0.0.1:${RPORT[$R]}/metrics/vllm")
grep -q "^vllm:healthy_pods_total{server=\"$UA\"} 1$" <<<"$mv" || fail "/metrics/vllm: $mv"
ok "/metrics: per-engine counters, in-flight, latency and TTFB histograms"

# --- an engine that starts after the router is in rotation within about a second, although
# --health-interval-ms is a minute (engines out of rotation are re-checked every second)
lport=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_router late --backends "http://127.0.0.1:$lport" --health-interval-ms 60000 --discovery-wait-ms 0
chat late m1 >/dev/null
[ "$(code)" = 503 ] && jq -e '.error.message | test("not reached")' "$W/body" >/dev/null ||
    fail "no engine reached yet: want 503 naming it, got $(code) $(cat "$W/body")"
start_engine D m1 "$lport"
wait_until 4 bash -c "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:${RPORT[late]}/v1/chat/completions -d '{\"model\":\"m1\",\"messages\":[]}' | grep -qx 200" ||
    fail "an engine started after the router was not in rotation within 4 s"
ok "an engine started after the router serves within a second (health interval 60 s)"

# --- session: a session sticks to one engine; sessions spread over both
start_router sess --backends "$UA,$UB" --routing-logic session --session-key X-Session \
    --health-interval-ms 200
for s in s1 s2 s3 s4 s5 s6 s7 s8; do
    first=$(chat sess m1 -H "X-Session: $s" | engine_of)
    for _ in 1 2 3; do
        [ "$(chat sess m1 -H "X-Session: $s" | engine_of)" = "$first" ] || fail "session $s moved"
    done
    echo "$first" >>"$W/sessions"
done
[ "$(sort -u "$W/sessions" | wc -l)" = 2 ] || fail "8 sessions all on one engine"
ok "session: sticky per session, spread across engines"

# --- least-loaded: with A busy (slow requests in flight), new requests go to B
start_router least --backends "$UA,$UB" --routing-logic least-loaded --health-interval-ms 200 \
    --timeout-ms 10000
echo 1500 >"$W/A.slow"
for _ in 1 2 3; do
    curl -s -o /dev/null "http://127.0.0.1:${RPORT[least]}/v1/chat/completions" \
        -d '{"model":"m1","messages":[]}' &
    sleep 0.1
done
sleep 0.2
for _ in 1 2 3 4; do
    [ "$(chat least m1 | engine_of)" = B ] || fail "least-loaded chose the busy engine"
done
wait_until 5 bash -c "curl -s http://127.0.0.1:${RPORT[least]}/metrics | grep -q '^kvstash_router_engine_requests_running{server=\"$UA\"} 0'" ||
    fail "A's requests did not finish"
rm -f "$W/A.slow"
ok "least-loaded avoids the busy engine"

# --- prefix: a repeated prompt goes to the same engine; a new prompt to the other (smaller tree)
start_router prefix --backends "$UA,$UB" --routing-logic prefix --health-interval-ms 200
long=$(printf 'You are a helpful assistant. %.0s' $(seq 20))
pchat() {
    curl -s "http://127.0.0.1:${RPORT[prefix]}/v1/completions" \
        -d "{\"model\":\"m1\",\"prompt\":\"$1\"}" | engine_of
}
p1=$(pchat "$long Question one")
for q in one two three four; do
    [ "$(pchat "$long Question $q")" = "$p1" ] || fail "prefix: shared prompt moved"
done
p2=$(pchat "Completely different text that shares nothing with the first prompt at all, none.")
[ "$p2" != "$p1" ] || fail "prefix: a new prompt did not go to the engine with the smaller tree"
ok "prefix: repeated prompt stays on $p1; new prompt goes to $p2"

# --- elrar: the in-process gateway's fresh states decide; ids match across spellings
# (engine A is reported as "http://localhost:PORT/", B under the id given by --engine-ids)
start_router elrar --backends "$UA,$UB" --engine-ids "localhost:${EPORT[A]},engine-b" \
    --routing-logic elrar --gateway-udp-port 0 --gateway-stale-ms 1500 --health-interval-ms 200
UDP=$(grep -o 'udp 127.0.0.1:[0-9]*' "$W/router-elrar.out" | sed 's/.*://')
state() { # (ENGINE_ID LATENCY_MS PENDING_TOKENS)...  one datagram per triple
    "$PY" -c '
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a = sys.argv[2:]
for i in range(0, len(a), 3):
    d = {"engine_id": a[i], "timestamp_ms": int(time.time() * 1000),
         "latency_pred_ms": float(a[i + 1]), "scheduling_mode": "balanced",
         "pending_tokens_total": int(a[i + 2]), "kv_cache_free_blocks": -1,
         "kv_cache_total_blocks": -1, "engine_capacity": 1000.0, "extra_key": 1}
    s.sendto(json.dumps(d).encode(), ("127.0.0.1", int(sys.argv[1])))
' "$UDP" "$@"
}
state "http://localhost:${EPORT[A]}/" 200 5000 engine-b 10 100
sleep 0.2
for _ in 1 2 3; do [ "$(chat elrar m1 | engine_of)" = B ] || fail "elrar: B has the better state"; done
state "http://localhost:${EPORT[A]}/" 5 0 engine-b 300 9000
sleep 0.2
for _ in 1 2 3; do [ "$(chat elrar m1 | engine_of)" = A ] || fail "elrar: A has the better state"; done
# A's good state goes stale; only B keeps reporting (a mediocre state): B, not the stale A
sleep 1.7
state engine-b 40 500
sleep 0.15
for _ in 1 2 3; do [ "$(chat elrar m1 | engine_of)" = B ] || fail "elrar routed on a stale state"; done
ok "elrar: best fresh state wins, stale states ignored, ids normalised"

# --- least-loaded with the in-process gateway: pending tokens decide when every state is fresh
start_router least2 --backends "$UA,$UB" --engine-ids "localhost:${EPORT[A]},engine-b" \
    --routing-logic least-loaded --gateway --gateway-udp-port 0 --gateway-stale-ms 1500 \
    --health-interval-ms 200
UDP=$(grep -o 'udp 127.0.0.1:[0-9]*' "$W/router-least2.out" | sed 's/.*://')
state "http://localhost:${EPORT[A]}/" 20 9000 engine-b 20 10
sleep 0.2
for _ in 1 2 3; do [ "$(chat least2 m1 | engine_of)" = B ] || fail "least-loaded tokens: want B"; done
state "http://localhost:${EPORT[A]}/" 20 10 engine-b 20 9000
sleep 0.2
for _ in 1 2 3; do [ "$(chat least2 m1 | engine_of)" = A ] || fail "least-loaded tokens: want A"; done
ok "least-loaded uses the gateway's pending tokens when states are fresh"

echo "all router tests passed"
