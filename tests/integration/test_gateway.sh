#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_gateway.sh - `kvstash gateway` for real: states from `kvstash agent`, bad datagrams from
# Python, /stats counters checked exactly, /engines, /metrics, /health, the JSONL log with
# rotation and SIGHUP reopen, garbage floods, broadcast counting, ELRAR environment variables,
# start-up errors and exit codes. Ports are chosen by the kernel (port 0) and read back from the
# gateway's INFO log lines. The whole script runs once per UDP receive path (--udp-io recvmmsg,
# then --udp-io uring; the uring run is skipped, saying so, where the kernel has no io_uring: then
# the test exits 77, reported by ctest as skipped).
set -euo pipefail
BIN=${KVSTASH_BIN:?KVSTASH_BIN not set}
PY=/usr/bin/python3
UDP_IO=${KVGW_TEST_UDP_IO:-}
if [ -z "$UDP_IO" ]; then
  # a run that skips (exit 77: no io_uring here) makes the whole test exit 77 once the other
  # run passed, so ctest shows "Skipped" (SKIP_RETURN_CODE) instead of a pass
  skipped=0
  for m in recvmmsg uring; do
    echo "# receive path --udp-io $m"
    rc=0
    KVGW_TEST_UDP_IO=$m bash "$0" || rc=$?
    [ "$rc" = 77 ] && skipped=1 && continue
    [ "$rc" = 0 ] || exit 1
  done
  [ "$skipped" = 0 ] || exit 77
  exit 0
fi
WORK=$(mktemp -d /tmp/kvgw-it-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok - $*"; }

# start_gateway NAME ARGS... -> sets UDP_PORT, HTTP_PORT, GW_PID
start_gateway() {
  local name=$1; shift
  "$BIN" gateway --udp-port 0 --http-addr 127.0.0.1:0 --log-level info --udp-io "$UDP_IO" "$@" \
    2>"$WORK/$name.err" &
  GW_PID=$!
  PIDS+=("$GW_PID")
  for _ in $(seq 100); do
    grep -q 'query API' "$WORK/$name.err" 2>/dev/null && break
    kill -0 "$GW_PID" 2>/dev/null || { cat "$WORK/$name.err" >&2; fail "$name did not start"; }
    sleep 0.05
  done
  UDP_PORT=$(grep -o 'udp://[^ ]*' "$WORK/$name.err" | head -1 | sed 's/.*://')
  HTTP_PORT=$(grep -o '(port [0-9]*)' "$WORK/$name.err" | head -1 | tr -dc 0-9)
  [ -n "$UDP_PORT" ] && [ -n "$HTTP_PORT" ] || fail "no ports in $name's log"
}

# jq-like: py_get URL EXPR  (EXPR uses d = the parsed JSON)
py_get() {
  curl -sf "$1" | "$PY" -c "import json,sys; d=json.load(sys.stdin); print($2)"
}

# send_raw PORT PYTHON_BYTES_EXPR... : one datagram per expression, to 127.0.0.1
send_raw() {
  local port=$1; shift
  "$PY" - "$port" "$@" <<'PYEOF'
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for expr in sys.argv[2:]:
    s.sendto(eval(expr), ("127.0.0.1", port))
PYEOF
}

wait_total() { # URL N
  for _ in $(seq 200); do
    [ "$(py_get "$1/stats" "d['total_received']")" -ge "$2" ] && return 0
    sleep 0.025
  done
  fail "total_received never reached $2 (now $(curl -s "$1/stats"))"
}

if [ "$UDP_IO" = uring ]; then
  set +e
  timeout 5 "$BIN" gateway --udp-port 0 --http-addr none --udp-io uring 2>"$WORK/probe.err" &
  probe=$!
  sleep 0.3
  kill "$probe" 2>/dev/null
  wait "$probe"; rc=$?
  set -e
  if grep -q 'io_uring receive path unavailable' "$WORK/probe.err"; then
    echo "SKIP: the io_uring run: $(cat "$WORK/probe.err")"
    exit 77
  fi
  [ "$rc" = 0 ] || fail "--udp-io uring probe: exit $rc: $(cat "$WORK/probe.err")"
fi

LOG="$WORK/states.jsonl"
start_gateway g1 --stale-threshold 10000 --max-datagram 1024 --log-file "$LOG" --log-max-bytes 1000
G1=$GW_PID; U=$UDP_PORT; H="http://127.0.0.1:$HTTP_PORT"
grep -q "listening for engine states on udp://127.0.0.1:$U (unicast)" "$WORK/g1.err" || fail "INFO listen line"
case $UDP_IO in
  uring) want_path='UDP receive path: io_uring (multishot recv,' ;;
  *) want_path='UDP receive path: recvmmsg (as configured)' ;;
esac
[ "$(grep -c 'UDP receive path' "$WORK/g1.err")" = 1 ] && grep -qF "$want_path" "$WORK/g1.err" \
  || fail "receive path line: $(grep 'receive path' "$WORK/g1.err")"
ok "gateway started (udp $U, http $HTTP_PORT)"

# --- valid states from the agent: 3 real, 2 heartbeats
"$BIN" agent --engine-id e1 --gateway "127.0.0.1:$U" --count 3 --interval-ms 1 --pending-tokens 100 \
  --kv-free-blocks 5 --kv-total-blocks 10 --latency-pred-ms 20 --engine-capacity 2 --scheduling-mode fcfs
"$BIN" agent --engine-id e2 --gateway "localhost:$U" --count 2 --interval-ms 1 --engine-capacity 0 --latency-pred-ms 0

# --- one datagram per invalid reason, one valid with extra keys, a reordered pair
V='{"engine_id":"%s","timestamp_ms":1,"latency_pred_ms":1,"scheduling_mode":"m","pending_tokens_total":%s,"kv_cache_free_blocks":%s,"kv_cache_total_blocks":%s,"engine_capacity":1%s}'
mk() { printf "$V" "$1" "$2" "$3" "$4" "${5:-}"; }
send_raw "$U" \
  "b''" \
  "b'{' + b' ' * 2000 + b'}'" \
  "b'{\"engine_id\":\"\\xff\\xfe\"}'" \
  "b'{\"engine_id\":'" \
  "b'[1,2,3]'" \
  "b'{\"engine_id\":\"x\"}'" \
  "'$(mk x '"7"' 1 2)'.encode()" \
  "'$(mk x -5 1 2)'.encode()" \
  "'$(mk x 1 9 2)'.encode()" \
  "'$(mk '' 1 1 2)'.encode()" \
  "'$(mk extra -1 -1 -1 ',"model":"llama","nested":{"a":[1,{"b":null}]}')'.encode()" \
  "'$(mk e3 1 1 2 ',"seq":5')'.encode()" \
  "'$(mk e3 1 1 2 ',"seq":3')'.encode()"
wait_total "$H" 18
S=$(curl -sf "$H/stats")
echo "$S" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
want = {"total_received": 18, "valid_states": 7, "invalid_states": 11, "unicast_received": 18,
        "broadcast_received": 0, "network_mode": "unicast", "bind_address": "127.0.0.1",
        "udp_port": int(sys.argv[1]), "stale_threshold_ms": 10000, "total_engines": 4,
        "active_engines": 4, "heartbeats": 2}
for k, v in want.items():
    assert d[k] == v, (k, d[k], v)
assert abs(d["valid_rate"] - 7 / 18) < 1e-9, d["valid_rate"]
assert d["last_received"] > 1e9
reasons = ["empty", "oversize", "not_utf8", "bad_json", "not_object", "missing_field",
           "wrong_type", "out_of_range", "free_gt_total", "bad_string", "reordered"]
assert d["invalid_by_reason"] == dict({r: 1 for r in reasons}, too_many_engines=0), d["invalid_by_reason"]
' "$U" || fail "/stats: $S"
ok "/stats counters exact (18 received, 7 valid, 11 invalid: one per reason)"

# --- /engines, /engines/{id}, history, 404s
E=$(curl -sf "$H/engines")
echo "$E" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
ids = [e["engine_id"] for e in d["engines"]]
assert ids == ["e1", "e2", "e3", "extra"], ids
e1 = d["engines"][0]
assert e1["fresh"] and e1["load_known"] and e1["states"] == 3, e1
s = e1["state"]
assert (s["pending_tokens_total"], s["kv_cache_free_blocks"], s["kv_cache_total_blocks"]) == (100, 5, 10), s
assert s["latency_pred_ms"] == 20 and s["engine_capacity"] == 2 and s["scheduling_mode"] == "fcfs", s
e2 = d["engines"][1]
assert not e2["load_known"] and e2["heartbeats"] == 2, e2
' || fail "/engines content: $E"
[ "$(py_get "$H/engines/e1/history" "d['count']")" = 3 ] || fail "history count"
[ "$(py_get "$H/engines/extra" "d['state']['kv_cache_total_blocks']")" = -1 ] || fail "/engines/extra"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$H/engines/nope")" = 404 ] || fail "unknown engine not 404"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$H/nothing")" = 404 ] || fail "unknown path not 404"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$H/stats")" = 405 ] || fail "POST not 405"
[ "$(py_get "$H/health" "d['status']")" = ok ] || fail "/health"
ok "/engines, /engines/{id}, history, /health, 404/405"

M=$(curl -sf "$H/metrics")
echo "$M" | grep -qx 'kvstash_gateway_valid_states_total 7' || fail "/metrics valid: $M"
echo "$M" | grep -qx 'kvstash_gateway_invalid_states_total{reason="not_utf8"} 1' || fail "/metrics reasons"
echo "$M" | grep -q '^kvstash_gateway_engine_pending_tokens{engine_id="e1"} 100$' || fail "/metrics per engine"
ok "/metrics (Prometheus text)"

# --- the JSONL log: 7 valid states, rotated at 1000 bytes
for _ in $(seq 100); do
  [ "$(cat "$LOG" "$LOG".* 2>/dev/null | wc -l)" -ge 7 ] && break; sleep 0.05
done
[ "$(cat "$LOG" "$LOG".* | wc -l)" = 7 ] || fail "log lines: $(cat "$LOG" "$LOG".* | wc -l)"
[ -f "$LOG.1" ] || fail "log not rotated"
for f in "$LOG" "$LOG".*; do [ "$(stat -c %s "$f")" -le 1000 ] || fail "$f over max"; done
cat "$LOG" "$LOG".* | "$PY" -c '
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    assert set(d) == {"timestamp", "state"} and d["timestamp"] > 1e9, d
    assert d["state"]["engine_id"] in ("e1", "e2", "e3", "extra"), d
' || fail "log lines are not {timestamp, state}"
ok "JSONL log: 7 lines, rotated under 1000 bytes each"

# --- SIGHUP reopens the log (logrotate moved it away)
mv "$LOG" "$WORK/moved.jsonl"
kill -HUP "$G1"
for _ in $(seq 100); do grep -q 'reopened log' "$WORK/g1.err" && break; sleep 0.05; done
grep -q 'reopened log' "$WORK/g1.err" || fail "no reopen after SIGHUP"
"$BIN" agent --engine-id e1 --gateway "127.0.0.1:$U" --count 1
for _ in $(seq 100); do [ -s "$LOG" ] && break; sleep 0.05; done
[ "$(wc -l < "$LOG")" = 1 ] || { ls -la "$WORK"; cat "$LOG"; curl -s "$H/stats"; fail "new log after SIGHUP"; }
ok "SIGHUP reopens the log"

# --- garbage never kills it, and every datagram is counted
BEFORE=$(py_get "$H/stats" "d['total_received']")
"$PY" - "$U" "$H" "$BEFORE" <<'PYEOF'
import json, os, random, socket, sys, time, urllib.request
random.seed(4)
port, url, before = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def total():
    return json.load(urllib.request.urlopen(url + "/stats"))["total_received"]
for i in range(2000):
    n = random.choice([1, 2, 10, 100, 1000, 1024, 1025, 1500])
    kind = i % 4
    if kind == 0:
        b = os.urandom(n)
    elif kind == 1:
        b = bytes(random.choice(b'{}[]":,0123456789-.eE tfnul\\') for _ in range(n))
    elif kind == 2:
        b = ('{"engine_id":"g","pending_tokens_total":' + "9" * n + '}').encode()
    else:
        b = b'[' * n
    s.sendto(b, ("127.0.0.1", port))
    if i % 100 == 99:  # in chunks, so a small receive buffer never drops any
        deadline = time.time() + 10
        while total() < before + i + 1 and time.time() < deadline:
            time.sleep(0.01)
PYEOF
wait_total "$H" $((BEFORE + 2000))
kill -0 "$G1" || fail "gateway died on garbage"
[ "$(py_get "$H/stats" "d['valid_states']")" = 8 ] || fail "garbage counted as valid"
ok "2000 garbage datagrams: all counted invalid, gateway alive"

# --- start-up errors and exit codes
set +e
"$BIN" gateway --udp-port "$U" --http-addr 127.0.0.1:0 2>"$WORK/busy.err"; rc=$?
set -e
[ "$rc" = 1 ] || fail "port in use: exit $rc"
[ "$(wc -l < "$WORK/busy.err")" = 1 ] && grep -q "cannot bind UDP 127.0.0.1:$U" "$WORK/busy.err" \
  || fail "port in use message: $(cat "$WORK/busy.err")"
for bad in "--udp-port abc" "--network-mode multicast" "--http-addr nope" "--bogus" "--stale-threshold -1" \
  "--udp-io epoll"; do
  set +e; "$BIN" gateway $bad 2>"$WORK/bad.err"; rc=$?; set -e
  [ "$rc" = 2 ] || fail "gateway $bad: exit $rc"
  [ "$(wc -l < "$WORK/bad.err")" = 1 ] || fail "gateway $bad: $(cat "$WORK/bad.err")"
done
set +e; "$BIN" agent --count 1 2>/dev/null; rc=$?; set -e
[ "$rc" = 2 ] || fail "agent without --engine-id: exit $rc"
set +e; "$BIN" agent --engine-id x --kv-free-blocks 5 --kv-total-blocks 2 --count 1 2>/dev/null; rc=$?; set -e
[ "$rc" = 2 ] || fail "agent with free > total: exit $rc"
ok "start-up errors: exit 1 with one line; bad arguments exit 2"

# --- broadcast mode, ELRAR environment variables
VLLM_STATE_GATEWAY_NETWORK_MODE=broadcast VLLM_STATE_GATEWAY_BIND_ADDRESS=127.255.255.255 \
VLLM_STATE_GATEWAY_STALE_THRESHOLD=1234 KVSTASH_GATEWAY_MAX_ENGINES=1 start_gateway g2
G2=$GW_PID; H2="http://127.0.0.1:$HTTP_PORT"
"$BIN" agent --engine-id b1 --gateway "127.255.255.255:$UDP_PORT" --broadcast --count 1
wait_total "$H2" 1
[ "$(py_get "$H2/stats" "(d['broadcast_received'], d['unicast_received'], d['network_mode'], d['stale_threshold_ms'])")" \
  = "(1, 0, 'broadcast', 1234)" ] || fail "broadcast stats: $(curl -s "$H2/stats")"
case $UDP_IO in uring) want_path='UDP receive path: io_uring (multishot recvmsg,' ;; esac
grep -qF "$want_path" "$WORK/g2.err" || fail "g2 receive path: $(grep 'receive path' "$WORK/g2.err")"
ok "broadcast mode counts broadcast datagrams; VLLM_STATE_GATEWAY_* honoured"
"$BIN" agent --engine-id b2 --gateway "127.255.255.255:$UDP_PORT" --broadcast --count 1
wait_total "$H2" 2
[ "$(py_get "$H2/stats" "(d['invalid_by_reason']['too_many_engines'], d['total_engines'])")" = "(1, 1)" ] \
  || fail "max engines: $(curl -s "$H2/stats")"
ok "--max-engines refuses new engines beyond the limit"

# --- staleness on the gateway's clock (threshold 1234 ms from the environment)
py_get "$H2/engines/b1" "d['fresh'] == (d['age_ms'] <= 1234)" | grep -qx True || fail "fresh flag"
for _ in $(seq 100); do
  [ "$(py_get "$H2/engines/b1" "d['fresh']")" = False ] && break; sleep 0.1
done
[ "$(py_get "$H2/engines/b1" "(d['fresh'], d['age_ms'] > 1234)")" = "(False, True)" ] || fail "b1 never went stale"
[ "$(py_get "$H2/stats" "(d['active_engines'], d['total_engines'])")" = "(0, 1)" ] || fail "active count"
[ "$(py_get "$H2/engines?fresh=1" "d['count']")" = 0 ] || fail "?fresh=1 filter"
ok "states go stale after the threshold, on the gateway's clock"

# --- the agent reading a (fake) vLLM /metrics endpoint
cat > "$WORK/metrics.txt" <<'MEOF'
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="1000",num_cpu_blocks="0"} 1.0
vllm:time_to_first_token_seconds_sum{model_name="m"} 12.5
MEOF
"$PY" - "$WORK/metrics.txt" > "$WORK/fake.port" 2>/dev/null <<'PYEOF' &
import http.server, sys
body = open(sys.argv[1], "rb").read()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/metrics" else 404)
        self.end_headers()
        self.wfile.write(body if self.path == "/metrics" else b"")
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
print(srv.server_port, flush=True)
srv.serve_forever()
PYEOF
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/fake.port" ] && break; sleep 0.05; done
FP=$(cat "$WORK/fake.port")
"$BIN" agent --engine-id vllm1 --gateway "127.0.0.1:$U" --from-metrics "http://127.0.0.1:$FP/metrics" \
  --count 1 --latency-pred-ms 30
for _ in $(seq 100); do curl -sf "$H/engines/vllm1" >/dev/null && break; sleep 0.05; done
[ "$(py_get "$H/engines/vllm1" "[d['state'][k] for k in ('pending_tokens_total', 'kv_cache_free_blocks', 'kv_cache_total_blocks', 'latency_pred_ms')]")" \
  = "[2560, 750, 1000, 30.0]" ] || fail "agent --from-metrics: $(curl -s "$H/engines/vllm1")"
set +e
"$BIN" agent --engine-id vllm1 --gateway "127.0.0.1:$U" --from-metrics "http://127.0.0.1:$FP/nope" --count 1 2>/dev/null; rc=$?
set -e
[ "$rc" = 1 ] || fail "agent with a failing scrape: exit $rc"
ok "agent --from-metrics maps vLLM metrics (2 running + 3 waiting, 25% of 1000 blocks used)"

# --- clean shutdown
kill -TERM "$G1" "$G2"
wait "$G1" || fail "gateway exit status on SIGTERM"
wait "$G2" || true
ok "SIGTERM: clean exit 0"
echo "PASS test_gateway.sh (--udp-io $UDP_IO)"
