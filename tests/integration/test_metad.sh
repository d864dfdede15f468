#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `kvstash metad` for real, driven with curl: the Mooncake wire contract (GET/PUT/DELETE
# /metadata?key=K, 404 when absent, DELETE 200 even when absent with X-Kvstash-Deleted, binary
# values, values over 1 MiB up to --max-value), list, CAS, leases, watch long-poll, bad requests
# (400/404/405/413), persistence across a restart with --data-file (leased keys are not
# persisted), a bad data file, a bad --addr (exit 2) and a port already in use (exit 1).
# Mooncake's exact request sequence: test_metad_mooncake.sh; saves off the event loop:
# test_metad_save.sh.
set -euo pipefail
BIN=${KVSTASH_BIN:-$(pwd)/kvstash}
W=$(mktemp -d /tmp/kvstash-metad-test.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    for f in "$W"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
    exit 1
}
ok() { echo "ok - $*"; }

PORT=
MPID=
start_metad() { # LOGNAME [ARGS...]
    local log=$W/$1.log
    shift
    "$BIN" metad --addr 127.0.0.1:0 --log-level info "$@" 2>"$log" &
    MPID=$!
    pids+=("$MPID")
    for _ in $(seq 250); do grep -q 'listening on http' "$log" 2>/dev/null && break; sleep 0.02; done
    grep -q 'listening on http' "$log" || fail "metad did not start"
    PORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$log" | sed 's/.*://')
}
stop_metad() {
    kill -TERM "$MPID"
    wait "$MPID" || fail "metad exited non-zero on SIGTERM"
}
U() { echo "http://127.0.0.1:$PORT$1"; }
# code METHOD PATH [curl args...] -> HTTP status; body in $W/body
code() {
    local m=$1 p=$2
    shift 2
    curl -s -o "$W/body" -w '%{http_code}' -X "$m" "$@" "$(U "$p")" || echo "000"
}
expect_code() { # WANT METHOD PATH [curl args...]
    local want=$1
    shift
    local got
    got=$(code "$@")
    [ "$got" = "$want" ] || fail "$* -> $got, want $want (body: $(head -c 300 "$W/body"))"
}

DATA=$W/meta.json
start_metad run1 --data-file "$DATA" --max-value 2MiB

# --- Mooncake contract ---
expect_code 200 GET /health
expect_code 404 GET '/metadata?key=absent'
expect_code 200 PUT '/metadata?key=/mooncake/seg1' --data-binary 'hello world'
expect_code 200 GET '/metadata?key=/mooncake/seg1'
[ "$(cat "$W/body")" = "hello world" ] || fail "value round trip"
expect_code 200 PUT '/metadata?key=/mooncake/seg1' --data-binary 'v2'
expect_code 200 GET '/metadata?key=/mooncake/seg1'
[ "$(cat "$W/body")" = "v2" ] || fail "overwrite"
ok "GET/PUT round trip, 404 when absent"

head -c 4096 /dev/urandom >"$W/bin"
printf 'a\0b\0\0' >>"$W/bin"
expect_code 200 PUT '/metadata?key=bin%2Fkey' --data-binary @"$W/bin"
expect_code 200 GET '/metadata?key=bin/key'
cmp -s "$W/body" "$W/bin" || fail "binary value differs"
expect_code 200 PUT '/metadata?key=empty' --data-binary ''
expect_code 200 GET '/metadata?key=empty'
[ ! -s "$W/body" ] || fail "empty value not empty"
# a key with characters that must be URL-encoded
expect_code 200 PUT '/metadata?key=sp%20ace%26x%3D1%2B2%25' --data-binary 'odd'
expect_code 200 GET /metadata -G --data-urlencode 'key=sp ace&x=1+2%'
[ "$(cat "$W/body")" = "odd" ] || fail "encoded key"
ok "binary (NUL bytes) and empty values, URL-encoded keys"

# deleted header: DELETE prints "<status> <X-Kvstash-Deleted>"
deleted() {
    curl -s -o /dev/null -D "$W/hdr" -w '%{http_code}' -X DELETE "$(U "$1")" || echo "000"
    echo " $(tr -d '\r' <"$W/hdr" | sed -n 's/^[Xx]-[Kk]vstash-[Dd]eleted: *//p')"
}
[ "$(deleted '/metadata?key=/mooncake/seg1')" = "200 1" ] || fail "DELETE of a present key"
[ "$(deleted '/metadata?key=/mooncake/seg1')" = "200 0" ] || fail "DELETE of an absent key"
expect_code 404 GET '/metadata?key=/mooncake/seg1'
ok "DELETE 200 (Mooncake) even when absent; X-Kvstash-Deleted says whether it removed a key"

# --- list, CAS, leases ---
expect_code 200 PUT '/metadata?key=/ls/b' --data-binary 'B'
expect_code 200 PUT '/metadata?key=/ls/a' --data-binary 'A'
expect_code 200 PUT '/metadata?key=/lsx' --data-binary 'X'
expect_code 200 GET '/metadata?prefix=/ls/'
[ "$(cat "$W/body")" = '[{"key":"/ls/a","value":"QQ=="},{"key":"/ls/b","value":"Qg=="}]' ] ||
    fail "list: $(cat "$W/body")"
ok "list by prefix (sorted, base64 values)"

expect_code 200 POST /metadata/cas -d '{"key":"/cas","value":"MQ=="}'
expect_code 409 POST /metadata/cas -d '{"key":"/cas","value":"Mg=="}'
expect_code 200 POST /metadata/cas -d '{"key":"/cas","expect":"MQ==","value":"Mg=="}'
expect_code 409 POST /metadata/cas -d '{"key":"/cas","expect":"MQ==","value":"Mw=="}'
expect_code 200 GET '/metadata?key=/cas'
[ "$(cat "$W/body")" = "2" ] || fail "cas value"
ok "CAS create-if-absent, match, mismatch (409)"

expect_code 200 POST /lease/grant -d '{"ttl":1}'
LEASE=$(grep -o '"id":[0-9]*' "$W/body" | cut -d: -f2)
[ -n "$LEASE" ] || fail "no lease id"
expect_code 200 PUT "/metadata?key=/leased&lease=$LEASE" --data-binary 'tmp'
expect_code 200 GET '/metadata?key=/leased'
gone=0
for _ in $(seq 100); do
    [ "$(code GET '/metadata?key=/leased')" = 404 ] && { gone=1; break; }
    sleep 0.05
done
[ $gone = 1 ] || fail "leased key did not expire"
expect_code 404 POST /lease/keepalive -d "{\"id\":$LEASE}"
expect_code 404 PUT "/metadata?key=/leased&lease=$LEASE" --data-binary 'x'
expect_code 200 POST /lease/grant -d '{"ttl":60}'
LEASE2=$(grep -o '"id":[0-9]*' "$W/body" | cut -d: -f2)
[ "$LEASE2" != "$LEASE" ] || fail "lease id reused"
expect_code 200 POST /lease/keepalive -d "{\"id\":$LEASE2}"
expect_code 200 PUT "/metadata?key=/leased2&lease=$LEASE2" --data-binary 'live'
ok "leases: expiry deletes bound keys, keepalive of an expired lease 404"

# --- watch (long poll) ---
expect_code 200 GET '/watch?prefix=/w/'
REV=$(grep -o '"revision":[0-9]*' "$W/body" | cut -d: -f2)
curl -s -o "$W/poll" "$(U "/watch?prefix=/w/&after=$REV&timeout_ms=10000")" &
POLL=$!
sleep 0.3
expect_code 200 PUT '/metadata?key=/other' --data-binary 'no'
expect_code 200 PUT '/metadata?key=/w/k' --data-binary 'yes'
wait $POLL || fail "watch poll failed"
if ! grep -q '"type":"put"' "$W/poll" || ! grep -q '"key":"/w/k"' "$W/poll" ||
    grep -q '/other' "$W/poll"; then
    fail "watch: $(cat "$W/poll")"
fi
expect_code 410 GET '/watch?prefix=/w/&after=999999999'
ok "watch long-poll returns the event under the prefix only; future revision 410"

# --- bad requests ---
expect_code 400 GET '/metadata'
expect_code 400 GET '/metadata?key='
expect_code 400 GET '/metadata?key=a%00b'
expect_code 400 PUT '/metadata?key=k&lease=abc' --data-binary 'x'
expect_code 400 GET '/metadata?key=a&key=b'
expect_code 400 POST /metadata/cas -d '{"key":'
grep -q 'line 1' "$W/body" || fail "bad JSON message does not name the position: $(cat "$W/body")"
expect_code 400 POST /metadata/cas -d '{"key":"k","value":"!!notbase64"}'
grep -q "value" "$W/body" || fail "message does not name the field"
expect_code 400 POST /lease/grant -d '{"ttl":0}'
expect_code 400 GET '/watch?after=x'
expect_code 404 GET '/nope'
expect_code 405 GET /metadata/cas
ok "bad requests: 400 naming the problem, 404, 405"

# values over the API's 1 MiB (Mooncake segment descriptors), up to --max-value (2MiB here)
head -c $((1024 * 1024 + 1)) /dev/urandom >"$W/mib1"
expect_code 200 PUT '/metadata?key=mib1' --data-binary @"$W/mib1"
expect_code 200 GET '/metadata?key=mib1'
cmp -s "$W/body" "$W/mib1" || fail "value over 1 MiB differs"
head -c $((2 * 1024 * 1024)) /dev/zero >"$W/max"
expect_code 200 PUT '/metadata?key=max' --data-binary @"$W/max"
expect_code 200 DELETE '/metadata?key=max'
head -c $((2 * 1024 * 1024 + 1)) /dev/zero >"$W/big"
expect_code 413 PUT '/metadata?key=big' --data-binary @"$W/big"
grep -q 'max-value' "$W/body" || fail "413 does not name the limit: $(cat "$W/body")"
head -c $((8 * 1024 * 1024)) /dev/zero >"$W/huge"
expect_code 413 PUT '/metadata?key=big' --data-binary @"$W/huge"
expect_code 404 GET '/metadata?key=big'
ok "values over 1 MiB stored up to --max-value; 413 beyond it"

# at info level nothing is logged per request
! grep -q ' -> 200, in ' "$W/run1.log" || fail "requests logged at info level"

# --- persistence ---
sleep 0.3 # the data file is written at most every 100 ms
stop_metad
[ -s "$DATA" ] || fail "no data file written"
start_metad run2 --data-file "$DATA"
expect_code 200 GET '/metadata?key=bin/key'
cmp -s "$W/body" "$W/bin" || fail "binary value lost in restart"
expect_code 200 GET '/metadata?key=/cas'
[ "$(cat "$W/body")" = "2" ] || fail "cas key lost in restart"
expect_code 200 GET '/metadata?key=mib1'
cmp -s "$W/body" "$W/mib1" || fail "value over 1 MiB lost in restart"
expect_code 404 GET '/metadata?key=/mooncake/seg1'
expect_code 404 GET '/metadata?key=/leased2' # bound to a lease: not persisted
ok "restart with the same data file: keys survive, leased keys do not"

# --- start-up errors ---
set +e
"$BIN" metad --addr 127.0.0.1:99999 2>"$W/badaddr.log"
rc=$?
set -e
[ $rc = 2 ] || fail "bad --addr exit $rc, want 2"
grep -q -- "--addr" "$W/badaddr.log" || fail "bad --addr message: $(cat "$W/badaddr.log")"
set +e
"$BIN" metad --addr "127.0.0.1:$PORT" 2>"$W/busy.log"
rc=$?
set -e
[ $rc = 1 ] || fail "port in use exit $rc, want 1"
if ! grep -q "127.0.0.1:$PORT" "$W/busy.log" || ! grep -qi "in use" "$W/busy.log"; then
    fail "port in use message: $(cat "$W/busy.log")"
fi
echo '{"format":"kvstash-metad","version":1,"kvs":[{"key":"a"}]}' >"$W/bad.json"
set +e
"$BIN" metad --addr 127.0.0.1:0 --data-file "$W/bad.json" 2>"$W/badfile.log"
rc=$?
set -e
[ $rc = 1 ] || fail "bad data file exit $rc, want 1"
grep -q "$W/bad.json" "$W/badfile.log" || fail "bad data file not named: $(cat "$W/badfile.log")"
ok "bad --addr exits 2; port in use and a bad data file exit 1 naming the cause"
stop_metad
echo "all metad tests passed"
