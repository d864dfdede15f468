#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_status_page.sh - the master's live status page in a real browser: starts `kvstash serve`,
# opens / in headless Chromium (Debian's /usr/bin/chromium driven by playwright-core from npm,
# installed under the build tree, never a downloaded browser), checks there are no console
# errors, that the node table shows the node, and that the plotted ops/s and object count change
# while a put load runs (status_page.js). Then the router's page: two fake engines behind
# `kvstash router`, both listed in rotation, and the plotted requests/s and the table's counts
# change while chat requests go through (router_page.js). The screenshots are kept as test
# artefacts in $KVSTASH_BUILD_DIR/test-artifacts/ (status_page.png, router_page.png).
set -euo pipefail
BIN=${KVSTASH_BIN:?KVSTASH_BIN not set}
BUILD=${KVSTASH_BUILD_DIR:?KVSTASH_BUILD_DIR not set}
HERE=$(cd "$(dirname "$0")" && pwd)
# 1.61.x is the last playwright-core that runs on Node.js 18 (Debian 12's nodejs); later ones
# need Node.js 20. One pin for both, so the test runs the same driver wherever it runs.
PLAYWRIGHT_VERSION=1.61.1
skip() {
    echo "SKIP: $*"
    exit 77
}
[ -x /usr/bin/chromium ] || skip "no /usr/bin/chromium (Debian package chromium, scripts/packages.txt)"
command -v node >/dev/null || skip "no node (Debian package nodejs)"
command -v npm >/dev/null || skip "no npm (scripts/install-deps.sh installs Debian's npm when missing)"

# playwright-core (the driver only; the browser is the system one) under the build tree
NM=$BUILD/web-test
if [ ! -f "$NM/node_modules/playwright-core/package.json" ] ||
    ! grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$NM/node_modules/playwright-core/package.json"; then
    mkdir -p "$NM"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-save --no-audit --no-fund --prefix "$NM" \
        "playwright-core@$PLAYWRIGHT_VERSION" >"$NM/npm.log" 2>&1 ||
        skip "npm could not install playwright-core@$PLAYWRIGHT_VERSION: $(tail -1 "$NM/npm.log")"
fi

W=$(mktemp -d /tmp/kvstash-status-page-XXXXXX)
SP=
OTHERS=()
cleanup() {
    if [ -n "$SP" ]; then kill -9 "$SP" 2>/dev/null || true; fi
    for p in "${OTHERS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    tail -20 "$W"/serve.out "$W"/serve.err 2>/dev/null || true
    exit 1
}

"$BIN" serve --metadata-addr 127.0.0.1:0 --master-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
    --capacity 64MiB >"$W/serve.out" 2>"$W/serve.err" &
SP=$!
for _ in $(seq 1 100); do
    grep -q "^Stop with" "$W/serve.out" 2>/dev/null && break
    kill -0 $SP 2>/dev/null || fail "serve died"
    sleep 0.05
done
MASTER=$(sed -n 's/^  master    \([0-9.]*:[0-9]*\) (RPC).*/\1/p' "$W/serve.out")
ADMIN=$(grep -o 'admin http://[0-9.]*:[0-9]*' "$W/serve.out" | sed 's|admin http://||')
[ -n "$MASTER" ] || fail "no master address printed"
[ -n "$ADMIN" ] || fail "no admin address printed"

# the page and its assets come from the binary
curl -sf -o "$W/index.html" "http://$ADMIN/" || fail "GET /"
grep -q '<script src="/ui/app.js">' "$W/index.html" || fail "GET / is not the page"
curl -sf -o "$W/uplot.js" "http://$ADMIN/ui/uPlot.min.js" || fail "GET /ui/uPlot.min.js"
grep -q uPlot "$W/uplot.js" || fail "uPlot not served"
curl -sf "http://$ADMIN/api/v1/status" | /usr/bin/python3 -c '
import json, sys
s = json.load(sys.stdin)
assert s["leader"] and s["ready"] and s["nodes"][0]["id"] == "serve-node", s
assert len(s["rpc"]["get"]["buckets"]) == len(s["rpc_le"]) + 1, s["rpc"]["get"]
' || fail "/api/v1/status"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/ui/nope.js")" = 404 ] || fail "404"
echo "ok - / , /ui/* and /api/v1/status served from the binary"

mkdir -p "$BUILD/test-artifacts"
SHOT=$BUILD/test-artifacts/status_page.png
rm -f "$SHOT"
NODE_PATH=$NM/node_modules node "$HERE/status_page.js" "http://$ADMIN/" serve-node "$SHOT" \
    "$BIN" bench store --master "$MASTER" --op put --size 4096 --working-set 16MiB \
    --duration 6 --log-level error || fail "browser checks"
[ -s "$SHOT" ] || fail "no screenshot"
echo "ok - status page in headless Chromium (screenshot: $SHOT)"

# ---- the router's page ---------------------------------------------------------------------
kill -9 "$SP" 2>/dev/null || true
SP=
FAKE=$HERE/router_fake_engine.py
eurls=()
for e in A B; do
    /usr/bin/python3 "$FAKE" --name "$e" --models m1 --ctl "$W" --port 0 --port-file "$W/$e.port" \
        >"$W/engine-$e.log" 2>&1 &
    OTHERS+=($!)
    for _ in $(seq 200); do [ -s "$W/$e.port" ] && break; sleep 0.02; done
    [ -s "$W/$e.port" ] || fail "fake engine $e did not start"
    eurls+=("http://127.0.0.1:$(cat "$W/$e.port")")
done
"$BIN" router --addr 127.0.0.1:0 --backends "${eurls[0]},${eurls[1]}" >"$W/router.out" \
    2>"$W/router.err" &
OTHERS+=($!)
for _ in $(seq 250); do grep -q 'listening on http' "$W/router.out" 2>/dev/null && break; sleep 0.02; done
RP=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$W/router.out" | sed 's/.*://') ||
    fail "router did not start: $(tail -3 "$W/router.err")"
for _ in $(seq 250); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$RP/ready")" = 200 ] && break
    sleep 0.02
done
curl -sf -o "$W/router.html" "http://127.0.0.1:$RP/" || fail "GET / on the router"
grep -q 'router.js' "$W/router.html" || fail "GET / on the router is not its page"
# the load: 60 chat requests through the router, 50 ms apart; each answer's code is kept
printf '%s\n' '#!/bin/bash' \
    "for i in \$(seq 60); do" \
    "    curl -s -o /dev/null -w '%{http_code}\\n' http://127.0.0.1:$RP/v1/chat/completions \\" \
    "        -H 'Content-Type: application/json' \\" \
    "        -d '{\"model\":\"m1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}' >>'$W/load.codes'" \
    "    sleep 0.05" \
    "done" >"$W/load.sh"
RSHOT=$BUILD/test-artifacts/router_page.png
rm -f "$RSHOT"
NODE_PATH=$NM/node_modules node "$HERE/router_page.js" "http://127.0.0.1:$RP/" \
    "${eurls[0]},${eurls[1]}" "$RSHOT" bash "$W/load.sh" || fail "router page checks"
[ -s "$RSHOT" ] || fail "no router screenshot"
bad=$(grep -vc '^200$' "$W/load.codes" || true)
[ "$bad" = 0 ] || fail "$bad of the load's 60 chat requests did not answer 200"
echo "ok - router page in headless Chromium (screenshot: $RSHOT)"
