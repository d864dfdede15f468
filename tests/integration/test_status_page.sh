#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_status_page.sh - the master's live status page in a real browser: starts `kvstash serve`,
# opens / in headless Chromium (Debian's /usr/bin/chromium driven by playwright-core from npm,
# installed under the build tree, never a downloaded browser), checks there are no console
# errors, that the node table shows the node, and that the plotted ops/s and object count change
# while a put load runs (status_page.js). The screenshot is kept as a test artefact in
# $KVSTASH_BUILD_DIR/test-artifacts/status_page.png.
set -euo pipefail
BIN=${KVSTASH_BIN:?KVSTASH_BIN not set}
BUILD=${KVSTASH_BUILD_DIR:?KVSTASH_BUILD_DIR not set}
HERE=$(cd "$(dirname "$0")" && pwd)
PLAYWRIGHT_VERSION=1.65.2
skip() {
    echo "SKIP: $*"
    exit 77
}
[ -x /usr/bin/chromium ] || skip "no /usr/bin/chromium (Debian package chromium, scripts/packages.txt)"
command -v node >/dev/null || skip "no node (Debian package nodejs)"
command -v npm >/dev/null || skip "no npm"

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
cleanup() {
    if [ -n "$SP" ]; then kill -9 "$SP" 2>/dev/null || true; fi
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
