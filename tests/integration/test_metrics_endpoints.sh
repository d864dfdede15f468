#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_metrics_endpoints.sh - the Prometheus pages of a running cluster: `kvstash serve` (with an
# SSD tier), a `kvstash gateway` fed by `kvstash agent`, and a `kvstash router` (elrar, with its
# in-process gateway) in front of a fake engine. Checks:
#   1. `promtool check metrics` passes on the master's, the gateway's and the router's /metrics;
#   2. the master's figures move as they should (hits and misses by tier, put bytes, miss
#      reasons, per-node capacity, RPC histograms, process memory);
#   3. every metric name the Grafana dashboard (docs/grafana/kvstash.json) queries is exported;
#   4. a real Prometheus scraping the three evaluates every dashboard query without an error.
set -euo pipefail
BIN=${KVSTASH_BIN:?KVSTASH_BIN not set}
SRC=${KVSTASH_SOURCE_DIR:?KVSTASH_SOURCE_DIR not set}
PY=/usr/bin/python3
skip() {
    echo "SKIP: $*"
    exit 77
}
command -v promtool >/dev/null || skip "no promtool (Debian package prometheus, scripts/packages.txt)"

W=$(mktemp -d /tmp/kvstash-metrics-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    for f in "$W"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done
    exit 1
}
ok() { echo "ok - $*"; }
wait_grep() { # SECONDS PATTERN FILE
    for _ in $(seq $(($1 * 20))); do grep -q "$2" "$3" 2>/dev/null && return 0; sleep 0.05; done
    return 1
}
free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- serve with an SSD tier; some puts, hits and misses
"$BIN" serve --metadata-addr 127.0.0.1:0 --master-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
    --capacity 16MiB --data-dir "$W/data" --ssd-capacity 64MiB >"$W/serve.out" 2>"$W/serve.log" &
pids+=($!)
wait_grep 10 "^Stop with" "$W/serve.out" || fail "serve did not start"
MASTER=$(sed -n 's/^  master    \([0-9.]*:[0-9]*\) (RPC).*/\1/p' "$W/serve.out")
ADMIN=$(grep -o 'admin http://[0-9.]*:[0-9]*' "$W/serve.out" | sed 's|admin http://||')
printf 'hello' | "$BIN" put --master "$MASTER" --log-level error k1 - >/dev/null || fail "put"
"$BIN" get --master "$MASTER" --log-level error k1 - >/dev/null || fail "get"
"$BIN" get --master "$MASTER" --log-level error nope - >/dev/null 2>&1 && fail "get of a missing key"

# --- a gateway with two engines' states
"$BIN" gateway --udp-port 0 --http-addr 127.0.0.1:0 --log-level info 2>"$W/gateway.log" &
pids+=($!)
wait_grep 10 'query API' "$W/gateway.log" || fail "gateway did not start"
GU=$(grep -o 'udp://[^ ]*' "$W/gateway.log" | head -1 | sed 's/.*://')
GH=$(grep -o '(port [0-9]*)' "$W/gateway.log" | head -1 | tr -dc 0-9)
"$BIN" agent --engine-id e1 --gateway "127.0.0.1:$GU" --count 2 --interval-ms 1 --pending-tokens 100 \
    --kv-free-blocks 250 --kv-total-blocks 1000 \
    --latency-pred-ms 20 >/dev/null 2>&1 || fail "agent"

# --- a router (elrar: in-process gateway) in front of a fake engine, one request through it
"$PY" "$SRC/tests/integration/router_fake_engine.py" --name A --models m1 --ctl "$W" \
    --port-file "$W/A.port" >"$W/engine.log" 2>&1 &
pids+=($!)
wait_grep 10 . "$W/A.port" || fail "fake engine did not start"
EA=http://127.0.0.1:$(cat "$W/A.port")
"$BIN" router --addr 127.0.0.1:0 --backends "$EA" --routing-logic elrar --gateway-udp-port 0 \
    --health-interval-ms 200 >"$W/router.out" 2>"$W/router.log" &
pids+=($!)
wait_grep 10 'listening on http' "$W/router.out" || fail "router did not start"
RP=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$W/router.out" | sed 's/.*://')
RU=$(grep -o 'udp 127.0.0.1:[0-9]*' "$W/router.out" | sed 's/.*://')
"$BIN" agent --engine-id "$EA" --gateway "127.0.0.1:$RU" --count 2 --interval-ms 1 \
    --pending-tokens 7 --latency-pred-ms 30 >/dev/null 2>&1 || fail "agent to the router"
for _ in $(seq 50); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
        -d '{"model":"m1","messages":[{"role":"user","content":"hi"}]}' \
        "http://127.0.0.1:$RP/v1/chat/completions") || true
    [ "$code" = 200 ] && break
    sleep 0.1
done
[ "$code" = 200 ] || fail "no request through the router ($code)"

# The agents' datagrams are taken in asynchronously, and the router copies its gateway's states
# into its engines every 50 ms: scrape until the states are in (the request above says nothing
# about them), then check what was scraped.
scrape_until() { # NAME URL PATTERN
    for _ in $(seq 100); do
        curl -sf -o "$W/$1.prom" "$2" || fail "$1 /metrics"
        grep -q "$3" "$W/$1.prom" && return 0
        sleep 0.05
    done
}
curl -sf -o "$W/master.prom" "http://$ADMIN/metrics" || fail "master /metrics"
scrape_until gateway "http://127.0.0.1:$GH/metrics" '^kvstash_gateway_engine_pending_tokens{'
scrape_until router "http://127.0.0.1:$RP/metrics" '^kvstash_router_engine_pending_tokens{'

# 1. promtool
for p in master gateway router; do
    promtool check metrics <"$W/$p.prom" >"$W/promtool-$p.out" 2>&1 ||
        fail "promtool check metrics on the $p's /metrics: $(cat "$W/promtool-$p.out")"
done
ok "promtool check metrics passes on the master's, the gateway's and the router's /metrics"

# 2. the master's figures
has() { grep -q "^$1\$" "$W/master.prom" || fail "master /metrics lacks '$1'"; }
has 'kvstash_store_puts_total 1'
has 'kvstash_store_put_bytes_total 5'
has 'kvstash_store_get_requests_total 2'
has 'kvstash_store_hits_total{tier="dram"} 1'
has 'kvstash_store_hit_bytes_total{tier="dram"} 5'
has 'kvstash_store_misses_total{tier="dram"} 1'
has 'kvstash_store_misses_total{tier="ssd"} 1'
has 'kvstash_store_get_misses_total{reason="not_found"} 1'
has 'kvstash_store_capacity_bytes{node="serve-node",tier="dram"} 16777216'
has 'kvstash_store_capacity_bytes{node="serve-node",tier="ssd"} 67108864'
has 'kvstash_store_objects 1'
has 'kvstash_store_leader 1'
has 'kvstash_store_rpc_duration_seconds_count{op="get"} 2'
grep -q '^kvstash_store_rpc_duration_seconds_bucket{op="put",le="+Inf"} 1$' "$W/master.prom" ||
    fail "put RPC histogram"
rss=$(sed -n 's/^process_resident_memory_bytes //p' "$W/master.prom")
[ "${rss%%.*}" -gt 1000000 ] || fail "process_resident_memory_bytes $rss"
grep -q '^process_open_fds [1-9]' "$W/master.prom" || fail "process_open_fds"
grep -q '^kvstash_gateway_engine_pending_tokens{engine_id="e1"} 100$' "$W/gateway.prom" ||
    fail "gateway per-engine gauge"
grep -q '^kvstash_gateway_engine_predicted_latency_seconds{engine_id="e1"} 0.02$' "$W/gateway.prom" ||
    fail "gateway latency in seconds"
grep -q "^kvstash_router_requests_total{server=\"$EA\"} 1$" "$W/router.prom" || fail "router requests"
grep -q "^kvstash_router_engine_pending_tokens{server=\"$EA\"} 7$" "$W/router.prom" ||
    fail "router's gateway mirror: $(grep pending "$W/router.prom")"
ok "the master's, gateway's and router's figures match what was done"

# the router's status page and its JSON
curl -sf -o "$W/router.html" "http://127.0.0.1:$RP/" || fail "router GET /"
grep -q '<script src="/ui/router.js">' "$W/router.html" || fail "router / is not its page"
curl -sf "http://127.0.0.1:$RP/api/v1/status" | "$PY" -c '
import json, sys
s = json.load(sys.stdin)
e = s["engines"][0]
assert s["policy"] == "elrar" and e["url"] == sys.argv[1] and e["requests"] == 1, s
assert e["gateway"]["pending_tokens"] == 7 and len(e["latency"]["buckets"]) == len(s["le"]) + 1, e
' "$EA" || fail "router /api/v1/status"
ok "the router serves its status page and /api/v1/status (engine, gateway state, latency)"

# 3. the dashboard's metric names
DASH=$SRC/docs/grafana/kvstash.json
missing=$("$PY" "$SRC/tests/integration/metrics_names.py" "$DASH" "$W"/master.prom \
    "$W"/gateway.prom "$W"/router.prom 2>"$W/names.log") ||
    fail "metrics the dashboard uses but no endpoint exports: $missing"
ok "every metric the Grafana dashboard uses is exported ($(cat "$W/names.log"))"

# 4. a real Prometheus evaluates every dashboard query
if ! command -v prometheus >/dev/null; then
    echo "note: no prometheus binary: the dashboard's queries were not evaluated"
    exit 0
fi
PP=$(free_port)
cat >"$W/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - {job_name: master, static_configs: [{targets: ["$ADMIN"]}]}
  - {job_name: gateway, static_configs: [{targets: ["127.0.0.1:$GH"]}]}
  - {job_name: router, static_configs: [{targets: ["127.0.0.1:$RP"]}]}
YML
prometheus --config.file="$W/prometheus.yml" --storage.tsdb.path="$W/tsdb" \
    --web.listen-address="127.0.0.1:$PP" >"$W/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PP/-/ready" >/dev/null 2>&1 && break; sleep 0.1; done
# wait until all three targets have been scraped at least twice (rate() needs two samples)
for _ in $(seq 100); do
    n=$(curl -sf "http://127.0.0.1:$PP/api/v1/query" --data-urlencode \
        'query=count(count_over_time(up[1m]) >= 2)' | "$PY" -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else 0)') || n=0
    [ "$n" = 3 ] && break
    sleep 0.2
done
[ "$n" = 3 ] || fail "prometheus did not scrape the three targets twice"
curl -sf "http://127.0.0.1:$PP/api/v1/targets" | "$PY" -c '
import json, sys
bad = [t["scrapeUrl"] + ": " + t["lastError"] for t in json.load(sys.stdin)["data"]["activeTargets"]
       if t["health"] != "up"]
print("\n".join(bad))
sys.exit(1 if bad else 0)' || fail "a target is not up"
"$PY" - "$DASH" "http://127.0.0.1:$PP" <<'PY' || fail "dashboard queries"
import json, sys, urllib.parse, urllib.request
dash, base = json.load(open(sys.argv[1])), sys.argv[2]
def exprs(n):
    if isinstance(n, dict):
        for k, v in n.items():
            yield from ([v] if k == "expr" else exprs(v))
    elif isinstance(n, list):
        for v in n:
            yield from exprs(v)
bad, empty, n = [], [], 0
for e in exprs(dash):
    q = e.replace("$job", ".*")
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
    try:
        r = json.load(urllib.request.urlopen(url, timeout=10))
    except Exception as ex:  # HTTP 400 carries the parse error
        bad.append(f"{e}: {ex}")
        continue
    n += 1
    if r["status"] != "success":
        bad.append(f"{e}: {r}")
    elif not r["data"]["result"]:
        empty.append(e)
if bad:
    sys.exit("queries Prometheus rejected:\n" + "\n".join(bad))
print(f"{n} queries evaluated, {n - len(empty)} with data")
PY
ok "a real Prometheus scraping the three evaluates every dashboard query"
