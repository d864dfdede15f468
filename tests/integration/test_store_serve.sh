#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_store_serve.sh - `kvstash serve` is a whole store in one process: it prints where it
# listens and what to try; the printed put/get work against it; SIGTERM exits 0; restarted on
# the same --data-dir it still has the objects (a clean stop writes DRAM objects to the SSD
# tier); a taken port is a clear start-up error.
set -euo pipefail
BIN=${KVSTASH_BIN:?KVSTASH_BIN not set}
W=$(mktemp -d /tmp/kvstash-serve-XXXXXX)
SP=
cleanup() {
    [ -n "$SP" ] && kill -9 "$SP" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    tail -20 "$W"/serve*.out "$W"/serve*.err 2>/dev/null || true
    exit 1
}
start_serve() { # RUN
    "$BIN" serve --metadata-addr 127.0.0.1:0 --master-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
        --capacity 16MiB --data-dir "$W/data" >"$W/serve$1.out" 2>"$W/serve$1.err" &
    SP=$!
    for _ in $(seq 1 100); do
        grep -q "^Stop with" "$W/serve$1.out" 2>/dev/null && break
        kill -0 $SP 2>/dev/null || fail "serve died"
        sleep 0.05
    done
    grep -q "ready" "$W/serve$1.out" || fail "serve not ready"
    MASTER=$(sed -n 's/^  master    \([0-9.]*:[0-9]*\) (RPC).*/\1/p' "$W/serve$1.out")
    [ -n "$MASTER" ] || fail "no master address printed"
}

start_serve 1
grep -q "^  metadata  http://127.0.0.1:[0-9]*/metadata" "$W/serve1.out" || fail "metadata line"
grep -q "admin http://127.0.0.1:[0-9]*/api/v1/cluster" "$W/serve1.out" || fail "admin line"
grep -q "^  node      serve-node: 16.0 MiB of DRAM in segment 'serve', SSD tier in $W/data" \
    "$W/serve1.out" || fail "node line"
try_put=$(grep -m1 " put --master $MASTER greeting -" "$W/serve1.out") || fail "what to try: put"
try_get=$(grep -m1 " get --master $MASTER greeting -" "$W/serve1.out") || fail "what to try: get"
echo "ok - serve prints where it listens and what to try"

# the printed commands work as printed (they name this executable by its full path)
(cd / && bash -c "$try_put") >/dev/null 2>&1 || fail "printed put failed: $try_put"
[ "$(cd / && bash -c "$try_get" 2>/dev/null)" = hello ] || fail "printed get failed: $try_get"
head -c 3000000 /dev/urandom >"$W/big"
"$BIN" put --master "$MASTER" --log-level error big "$W/big" >/dev/null || fail "put big"
[ "$("$BIN" get --master "$MASTER" --log-level error greeting -)" = hello ] || fail "get"
echo "ok - the printed put/get work"

kill -TERM $SP
wait $SP || fail "serve exit status $? after SIGTERM"
SP=
echo "ok - SIGTERM: exit 0"

start_serve 2
[ "$("$BIN" get --master "$MASTER" --log-level error greeting -)" = hello ] ||
    fail "greeting lost across a clean restart on --data-dir"
"$BIN" get --master "$MASTER" --log-level error big "$W/big.out" || fail "big lost"
cmp -s "$W/big" "$W/big.out" || fail "big differs after the restart"
echo "ok - restarted on the same --data-dir: the objects are still there"

# a taken master port: one clear line, exit 1
P=$(sed 's/.*://' <<<"$MASTER")
set +e
"$BIN" serve --metadata-addr 127.0.0.1:0 --master-addr "127.0.0.1:$P" --admin-addr 127.0.0.1:0 \
    >"$W/clash.out" 2>"$W/clash.err"
rc=$?
set -e
[ $rc = 1 ] && grep -q "cannot start the master on 127.0.0.1:$P" "$W/clash.err" ||
    fail "port clash: rc=$rc $(cat "$W/clash.err")"
echo "ok - a taken port is a clear start-up error"
