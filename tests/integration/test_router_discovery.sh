#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The router discovers engines from metadata (`kvstash metad`, keys /kvstash/<cluster>/engines/):
# engines are added when their key appears (a URL, or a JSON object with "url"), taken out of
# rotation when it is deleted, and come back when it is put again.
set -euo pipefail
BIN=${KVSTASH_BIN:-$(pwd)/kvstash}
SRC=${KVSTASH_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
FAKE=$SRC/tests/integration/router_fake_engine.py
W=$(mktemp -d /tmp/kvstash-router-disc.XXXXXX)
pids=()
cleanup() {
    local rc=$?
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # a sanitizer build reports leaks and errors at exit, into the router's log
    if grep -l "Sanitizer" "$W"/*.log 2>/dev/null; then
        grep -h -A30 "Sanitizer" "$W"/*.log | head -60 >&2
        rc=1
    fi
    rm -rf "$W"
    exit $rc
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    for f in "$W"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
    exit 1
}
wait_until() {
    local t=$1
    shift
    local end=$((SECONDS + t))
    while ! "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.05
    done
}

"$BIN" metad --addr 127.0.0.1:0 --log-level info >"$W/metad.out" 2>"$W/metad.log" &
pids+=($!)
wait_until 5 grep -q 'listening on http' "$W/metad.log" || fail "metad did not start"
MURL=$(grep -o 'http://127.0.0.1:[0-9]*/metadata' "$W/metad.log" | head -1)
for n in A B; do
    /usr/bin/python3 "$FAKE" --name $n --models m1 --ctl "$W" --port-file "$W/$n.port" \
        >"$W/engine-$n.log" 2>&1 &
    pids+=($!)
done
wait_until 5 test -s "$W/A.port" && wait_until 5 test -s "$W/B.port" || fail "engines did not start"
PA=$(cat "$W/A.port")
PB=$(cat "$W/B.port")
put() { curl -s -f -X PUT "$MURL?key=/kvstash/test/engines/$1" --data-binary "$2" >/dev/null; }
put a "http://localhost:$PA/"
put b "{\"url\":\"127.0.0.1:$PB\",\"engine_id\":\"engine-b\"}"

"$BIN" router --addr 127.0.0.1:0 --metadata "$MURL" --cluster test --health-interval-ms 200 \
    --log-level info >"$W/router.out" 2>"$W/router.log" &
pids+=($!)
wait_until 5 grep -q 'listening on http' "$W/router.out" || fail "router did not start"
RP=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$W/router.out" | sed 's/.*://')
chat() {
    curl -s "http://127.0.0.1:$RP/v1/chat/completions" -d '{"model":"m1","messages":[]}' |
        jq -r .engine
}
seen() { # the engines serving 6 requests, sorted and unique
    for _ in 1 2 3 4 5 6; do chat; done | sort -u | tr -d '\n'
}
s=$(seen)
[ "$s" = AB ] || fail "discovered engines serve: $s"
echo "ok - engines discovered from metadata (URL and JSON values)"

curl -s -f -X DELETE "$MURL?key=/kvstash/test/engines/a" >/dev/null
wait_until 5 grep -q "left the metadata" "$W/router.log" || fail "A not removed"
s=$(seen)
[ "$s" = B ] || fail "after removing A: $s"
echo "ok - an engine whose key is deleted leaves the rotation"

put a "http://127.0.0.1:$PA"
wait_until 5 grep -q "back in the metadata" "$W/router.log" || fail "A not back"
s=$(seen)
[ "$s" = AB ] || fail "after re-adding A: $s"
echo "ok - and comes back when the key is put again"
echo "all router discovery tests passed"
