#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `kvstash metad` against Mooncake's HTTP metadata client, replayed with curl: the exact request
# sequence a Mooncake transfer engine (transfer_engine_bench, TCP) sends through its
# HTTPStoragePlugin, with the statuses Mooncake's Go http-metadata-server gives and its client
# requires (anything but 200 on PUT or DELETE is a failure for it):
#   PUT rpc_meta, GET ram -> 404, PUT ram twice, GETs -> last value, PUT ram with no buffers,
#   DELETE rpc_meta, DELETE ram, DELETE ram again -> 200 (absent, still 200).
# Keys are mooncake/rpc_meta/<segment> and mooncake/ram/<segment>, percent-encoded as libcurl's
# curl_easy_escape does (every byte but [A-Za-z0-9._~-]); PUT bodies are JSON with
# Content-Type: application/json. Also: a segment descriptor over 1 MiB (many buffers) is stored,
# and each request is logged at debug level (method, key, status, bytes, microseconds).
set -euo pipefail
BIN=${KVSTASH_BIN:-$(pwd)/kvstash}
W=$(mktemp -d /tmp/kvstash-metad-mc.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    [ -f "$W/metad.log" ] && { echo "--- metad.log" >&2; tail -n 30 "$W/metad.log" >&2; }
    exit 1
}
ok() { echo "ok - $*"; }

"$BIN" metad --addr 127.0.0.1:0 --log-level debug 2>"$W/metad.log" &
MPID=$!
pids+=("$MPID")
for _ in $(seq 250); do grep -q 'listening on http' "$W/metad.log" 2>/dev/null && break; sleep 0.02; done
grep -q 'listening on http' "$W/metad.log" || fail "metad did not start"
PORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$W/metad.log" | sed 's/.*://')
META="http://127.0.0.1:$PORT/metadata"

SEG=127.0.0.1:12001
RPC_KEY='mooncake%2Frpc_meta%2F127.0.0.1%3A12001' # curl_easy_escape("mooncake/rpc_meta/" SEG)
RAM_KEY='mooncake%2Fram%2F127.0.0.1%3A12001'      # curl_easy_escape("mooncake/ram/" SEG)

# mc METHOD KEY [BODY] -> status; body in $W/body. As HTTPStoragePlugin sends them.
mc() {
    local m=$1 k=$2
    if [ $# -ge 3 ]; then
        printf '%s' "$3" >"$W/req"
        curl -s -o "$W/body" -w '%{http_code}' -X "$m" -H 'Content-Type: application/json' \
            --data-binary @"$W/req" "$META?key=$k" || echo "000"
    else
        curl -s -o "$W/body" -w '%{http_code}' -X "$m" "$META?key=$k" || echo "000"
    fi
}
expect() { # WANT METHOD KEY [BODY]
    local want=$1
    shift
    local got
    got=$(mc "$@")
    [ "$got" = "$want" ] || fail "$1 $2 -> $got, want $want (body: $(head -c 300 "$W/body"))"
}
desc() { # BUFFERS_JSON TIMESTAMP -> a TCP segment descriptor as Mooncake writes it
    printf '{"buffers":%s,"name":"%s","protocol":"tcp","tcp_data_port":12001,"timestamp":"%s"}' \
        "$1" "$SEG" "$2"
}
BUF='[{"addr":140241882050560,"length":1073741824,"lkey":[],"name":"cpu:0","rkey":[]}]'
RPC='{"ip_or_host_name":"127.0.0.1","rpc_port":12001}'

expect 200 PUT "$RPC_KEY" "$RPC"
expect 404 GET "$RAM_KEY"
expect 200 PUT "$RAM_KEY" "$(desc "$BUF" 1)"
expect 200 PUT "$RAM_KEY" "$(desc "$BUF" 2)"
expect 200 GET "$RAM_KEY"
[ "$(cat "$W/body")" = "$(desc "$BUF" 2)" ] || fail "GET ram is not the last PUT: $(cat "$W/body")"
expect 200 GET "$RPC_KEY"
[ "$(cat "$W/body")" = "$RPC" ] || fail "GET rpc_meta: $(cat "$W/body")"
expect 200 PUT "$RAM_KEY" "$(desc '[]' 3)"
expect 200 GET "$RAM_KEY"
[ "$(cat "$W/body")" = "$(desc '[]' 3)" ] || fail "GET ram after no-buffer PUT: $(cat "$W/body")"
# the key travelled decoded: it is stored as mooncake/ram/127.0.0.1:12001
[ "$(curl -s "$META?prefix=mooncake/ram/" | grep -o '"key":"[^"]*"')" = "\"key\":\"mooncake/ram/$SEG\"" ] ||
    fail "stored key is not mooncake/ram/$SEG"
expect 200 DELETE "$RPC_KEY"
expect 200 DELETE "$RAM_KEY"
expect 200 DELETE "$RAM_KEY" # absent: Mooncake's server answers 200, its client requires it
expect 404 GET "$RAM_KEY"
expect 404 GET "$RPC_KEY"
ok "Mooncake's request sequence: same statuses as its Go server (DELETE of an absent key 200)"

# a descriptor with many buffers, over the API's 1 MiB: stored whole
{
    printf '['
    for i in $(seq 0 15999); do
        [ "$i" = 0 ] || printf ','
        printf '{"addr":%d,"length":2097152,"lkey":[],"name":"cpu:%d","rkey":[]}' \
            $((140241882050560 + i * 2097152)) "$i"
    done
    printf ']'
} >"$W/bufs"
desc "$(cat "$W/bufs")" 4 >"$W/big"
[ "$(stat -c %s "$W/big")" -gt $((1024 * 1024)) ] || fail "test descriptor is not over 1 MiB"
expect 200 PUT "$RAM_KEY" "$(cat "$W/big")"
expect 200 GET "$RAM_KEY"
cmp -s "$W/body" "$W/big" || fail "large descriptor differs"
expect 200 DELETE "$RAM_KEY"
ok "a segment descriptor over 1 MiB (16000 buffers) is stored and returned whole"

# debug log: one line per request with method, key, status, bytes and microseconds
grep -Eq "PUT /metadata\?key=$RPC_KEY -> 200, in [0-9]+ B, out 0 B, [0-9]+ us" "$W/metad.log" ||
    fail "no debug line for PUT rpc_meta"
grep -Eq "GET /metadata\?key=$RAM_KEY -> 404, in 0 B, out [0-9]+ B, [0-9]+ us" "$W/metad.log" ||
    fail "no debug line for GET ram 404"
[ "$(grep -c "DELETE /metadata?key=$RAM_KEY -> 200" "$W/metad.log")" = 3 ] ||
    fail "want 3 debug lines for DELETE ram"
ok "each request logged at debug level"

kill -TERM "$MPID"
wait "$MPID" || fail "metad exited non-zero on SIGTERM"
echo "all Mooncake replay tests passed"
