#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# lib_router.sh NAME - what the router integration tests share: a work dir W (named after
# NAME), process clean-up that also fails the test on a sanitizer report in any log,
# fail/ok/wait_until, and starting fake engines (router_fake_engine.py) and routers on free
# ports. Sourced by test_router*.sh (set -euo pipefail is the caller's).
# shellcheck disable=SC2034 # EPID, EPORT, RPORT are read by the tests that source this file
BIN=${KVSTASH_BIN:-$(pwd)/kvstash}
SRC=${KVSTASH_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
FAKE=$SRC/tests/integration/router_fake_engine.py
PY=/usr/bin/python3
W=$(mktemp -d "/tmp/kvstash-${1:-router}.XXXXXX")
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
ok() { echo "ok - $*"; }

# shellcheck disable=SC2034 # used by the tests that source this file
declare -A EPID EPORT
start_engine() { # NAME MODELS [PORT]
    local name=$1 models=$2 port=${3:-0}
    rm -f "$W/$name.port"
    "$PY" "$FAKE" --name "$name" --models "$models" --ctl "$W" --port "$port" \
        --port-file "$W/$name.port" >"$W/engine-$name.log" 2>&1 &
    EPID[$name]=$!
    pids+=($!)
    for _ in $(seq 200); do [ -s "$W/$name.port" ] && break; sleep 0.02; done
    [ -s "$W/$name.port" ] || fail "engine $name did not start"
    EPORT[$name]=$(cat "$W/$name.port")
}

# shellcheck disable=SC2034 # used by the tests that source this file
declare -A RPORT
start_router() { # NAME ARGS...
    local name=$1
    shift
    "$BIN" router --addr 127.0.0.1:0 --log-level "${ROUTER_LOG_LEVEL:-info}" "$@" >"$W/router-$name.out" \
        2>"$W/router-$name.log" &
    pids+=($!)
    for _ in $(seq 250); do grep -q 'listening on http' "$W/router-$name.out" 2>/dev/null && break; sleep 0.02; done
    grep -q 'listening on http' "$W/router-$name.out" || fail "router $name did not start"
    RPORT[$name]=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$W/router-$name.out" | sed 's/.*://')
}

wait_until() { # TIMEOUT_S CMD...
    local t=$1
    shift
    local end=$((SECONDS + t))
    while ! "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.05
    done
}
