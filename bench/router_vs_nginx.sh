#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# bench/router_vs_nginx.sh - the kvstash router against nginx as a reverse proxy, in one run.
#
# One fast upstream (its own nginx instance, 1 worker, answering a fixed chat-completion JSON, plus
# /health and /v1/models) is proxied by (a) `kvstash router` (roundrobin) and (b) a separate
# nginx instance (keep-alive upstream pool), PROXY_THREADS threads/workers each. wrk POSTs the same
# chat request through each:
#   - throughput: wrk -t1 -c$CONNS for $DURATION s -> 2xx responses/s (non-2xx answers are
#                 counted and printed, never as throughput), and the ratio router/nginx;
#   - latency:    wrk -t1 -c1 for $DURATION s -> p50, compared with the upstream hit directly,
#                 so "added p50" = p50 through the proxy - p50 direct;
#   - CPU per request: the proxy's user+system CPU time (from /proc/PID/stat, all its threads or
#                 worker processes) during the throughput run / 2xx responses served. On a machine
#                 shared with other work this moves much less than requests/s does.
# Goals (issue 4): router >= 0.8x nginx requests/s, <= 100 us added p50.
# Env: KVSTASH_BIN (default build/kvstash), DURATION (5), CONNS (32), ROUNDS (2),
#      PROXY_THREADS (1: router --threads and nginx worker_processes of the proxies).
# Ports are chosen free at run time; everything is on 127.0.0.1 and cleaned up on exit.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BIN=${KVSTASH_BIN:-$top/build/kvstash}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-2}
PROXY_THREADS=${PROXY_THREADS:-1}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 2; }
[ -x "$NGINX" ] || { echo "nginx is not installed (apt-get install nginx-light)"; exit 2; }
[ -x "$BIN" ] || { echo "no kvstash binary at $BIN (set KVSTASH_BIN)"; exit 2; }

W=$(mktemp -d /tmp/kvstash-bench-router.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
UP=$(free_port)
NP=$(free_port)
mkdir -p "$W/logs" "$W/up" "$W/px"
# The fast upstream (stands in for an engine): its own nginx instance, 1 worker.
cat >"$W/up/nginx.conf" <<EOF
worker_processes 1;
error_log $W/logs/up-error.log warn;
pid $W/up/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    default_type application/json;
    client_body_temp_path $W/up/body;
    server {
        listen 127.0.0.1:$UP;
        location = /health { return 200 '{"status":"ok"}'; }
        location = /v1/models { return 200 '{"object":"list","data":[{"id":"bench","object":"model"}]}'; }
        location / { return 200 '{"id":"cmpl-1","object":"chat.completion","model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}]}'; }
    }
}
EOF
# nginx as the reverse proxy under comparison: a separate process, like the router (sharing the
# upstream's worker would spare nginx the cross-process hop the router pays).
cat >"$W/px/nginx.conf" <<EOF
worker_processes $PROXY_THREADS;
error_log $W/logs/px-error.log warn;
pid $W/px/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $W/px/body;
    proxy_temp_path $W/px/proxy;
    upstream engine { server 127.0.0.1:$UP; keepalive 128; }
    server {
        listen 127.0.0.1:$NP;
        location / {
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
"$NGINX" -p "$W/up" -c "$W/up/nginx.conf" -g 'daemon off;' 2>"$W/logs/up.err" &
pids+=($!)
# the upstream first: a router whose first health check finds no engine waits for the next one
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$UP/health" && break; sleep 0.05; done
"$NGINX" -p "$W/px" -c "$W/px/nginx.conf" -g 'daemon off;' 2>"$W/logs/px.err" &
pids+=($!)
"$BIN" router --addr 127.0.0.1:0 --backends "http://127.0.0.1:$UP" --routing-logic roundrobin \
    --threads "$PROXY_THREADS" --log-level warn >"$W/router.out" 2>"$W/router.err" &
pids+=($!)
ROUTER_PID=$!
for _ in $(seq 100); do
    grep -q 'listening on http' "$W/router.out" 2>/dev/null &&
        curl -s -o /dev/null "http://127.0.0.1:$NP/health" && break
    sleep 0.05
done
RP=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$W/router.out" | sed 's/.*://')
[ -n "$RP" ] || { echo "router did not start: $(cat "$W/router.err")"; exit 1; }

cat >"$W/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"max_tokens":8}'
wrk.headers["Content-Type"] = "application/json"
EOF
check() { # the proxied answer must be the upstream's
    curl -s -f "http://127.0.0.1:$1/v1/chat/completions" -H 'Content-Type: application/json' \
        -d '{"model":"bench","messages":[]}' | grep -q chat.completion ||
        { echo "$2 (port $1) does not proxy correctly: $(curl -s -w ' HTTP %{http_code}' \
            "http://127.0.0.1:$1/v1/chat/completions" -d '{"model":"bench","messages":[]}')"; exit 1; }
}
check "$UP" upstream
check "$NP" nginx
check "$RP" "kvstash router"

NGINX_PX_PIDS=$(pgrep -P "$(cat "$W/px/nginx.pid")" | tr '\n' ' ')
# cpu_ticks PID... -> user+system clock ticks of those processes (all threads)
cpu_ticks() {
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    echo "$t"
}
HZ=$(getconf CLK_TCK)

# run PORT CONNS [PID...] -> "2XX_PER_S P50_US NON2XX CPU_US_PER_2XX"
run() {
    local out port=$1 conns=$2
    shift 2
    local t0 t1
    t0=$(cpu_ticks "$@")
    out=$(wrk -t1 -c"$conns" -d"${DURATION}s" --latency -s "$W/post.lua" \
        "http://127.0.0.1:$port/v1/chat/completions")
    t1=$(cpu_ticks "$@")
    local rps p50 bad n secs ok
    # only 2xx answers count: wrk's Requests/sec includes non-2xx ones (a proxy answering 502
    # fast would look fast), so requests/s is (requests - non-2xx) / the run's wall time
    secs=$(awk '/requests in/ {v=$4; sub(/,$/,"",v); if (v ~ /ms$/) {sub(/ms$/,"",v); v/=1000} else if (v ~ /m$/) {sub(/m$/,"",v); v*=60} else sub(/s$/,"",v); print v}' <<<"$out")
    p50=$(awk '$1 == "50%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); print v} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000000}}' <<<"$out")
    bad=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    ok=$(( ${n:-0} - ${bad:-0} ))
    rps=$(awk -v ok="$ok" -v s="${secs:-0}" 'BEGIN {printf "%.1f", (s > 0 ? ok / s : 0)}')
    echo "$rps $p50 ${bad:-0} $(awk -v a="$t0" -v b="$t1" -v n="$ok" -v hz="$HZ" \
        'BEGIN {printf "%.1f", (n > 0 ? (b - a) * 1e6 / hz / n : 0)}')"
}

echo "kvstash router vs nginx: $PROXY_THREADS proxy thread(s) each, wrk -t1, ${DURATION}s per run, $ROUNDS rounds"
echo "(machine: $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg))"
best_r=0 best_n=0 cpu_r=1e12 cpu_n=1e12
for r in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    read -r rr _ rbad rc < <(run "$RP" "$CONNS" "$ROUTER_PID")
    # shellcheck disable=SC2086
    read -r nr _ nbad nc < <(run "$NP" "$CONNS" $NGINX_PX_PIDS)
    printf 'round %d  throughput c=%d: router %10.0f req/s   nginx %10.0f req/s   (non-2xx: %s / %s)   CPU/req: router %s us, nginx %s us\n' \
        "$r" "$CONNS" "$rr" "$nr" "$rbad" "$nbad" "$rc" "$nc"
    cpu_r=$(awk -v a="$cpu_r" -v b="$rc" 'BEGIN {print (b < a ? b : a)}')
    cpu_n=$(awk -v a="$cpu_n" -v b="$nc" 'BEGIN {print (b < a ? b : a)}')
    best_r=$(awk -v a="$best_r" -v b="$rr" 'BEGIN {print (b > a ? b : a)}')
    best_n=$(awk -v a="$best_n" -v b="$nr" 'BEGIN {print (b > a ? b : a)}')
done
# p50 at c=1, interleaved over the rounds; the lowest of each (least disturbed by other load)
dp50=1e12 rp50=1e12 np50=1e12
min() { awk -v a="$1" -v b="$2" 'BEGIN {print (b < a ? b : a)}'; }
for r in $(seq "$ROUNDS"); do
    read -r _ d _ < <(run "$UP" 1)
    read -r _ x _ < <(run "$RP" 1)
    read -r _ n _ < <(run "$NP" 1)
    printf 'round %d  p50 at c=1: direct %s us, router %s us, nginx %s us\n' "$r" "$d" "$x" "$n"
    dp50=$(min "$dp50" "$d")
    rp50=$(min "$rp50" "$x")
    np50=$(min "$np50" "$n")
done
ratio=$(awk -v a="$best_r" -v b="$best_n" 'BEGIN {printf "%.2f", a / b}')
echo
printf '2xx responses/s (best of %d): router %.0f, nginx %.0f -> ratio router/nginx = %sx (goal >= 0.8x)\n' \
    "$ROUNDS" "$best_r" "$best_n" "$ratio"
printf 'proxy CPU per request at c=%d (lowest of %d): router %s us, nginx %s us -> router/nginx = %sx\n' \
    "$CONNS" "$ROUNDS" "$cpu_r" "$cpu_n" "$(awk -v a="$cpu_r" -v b="$cpu_n" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')"
printf 'p50 latency at c=1 (lowest of %d): direct %.0f us, nginx %.0f us, router %.0f us\n' "$ROUNDS" "$dp50" "$np50" "$rp50"
printf 'added p50: router %+.0f us, nginx %+.0f us; router - nginx = %+.0f us (goal <= 100 us added)\n' \
    "$(awk -v a="$rp50" -v b="$dp50" 'BEGIN {print a - b}')" \
    "$(awk -v a="$np50" -v b="$dp50" 'BEGIN {print a - b}')" \
    "$(awk -v a="$rp50" -v b="$np50" 'BEGIN {print a - b}')"
