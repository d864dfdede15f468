#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `kvstash metad --data-file` writes its data file off the event loop: a lease with a 2 s ttl,
# renewed by a client every 0.5 s, stays alive while the server saves 50000 keys again and
# again (a writer changes a key every 0.1 s, so every save is followed by another). When the
# loop itself encoded, wrote and fsynced the file (before the saver thread), each save of these
# ~36 MB held keepalives for 1.5 s or more on a loaded host: keepalives answered after ttl/2,
# and the lease expired. Now every keepalive succeeds within ttl/2, the key bound to the lease
# is still there at the end, and the saves (new inodes of the data file, one per rename) did
# happen meanwhile. The last save at stop holds every key. KVSTASH_TEST_KEEP_TMP=1 keeps the
# work directory (data file, metad.log with one debug line per request and per save).
set -euo pipefail
BIN=${KVSTASH_BIN:-$(pwd)/kvstash}
NKEYS=${KVSTASH_TEST_SAVE_KEYS:-50000}
W=$(mktemp -d /tmp/kvstash-metad-save.XXXXXX)
pids=()
cleanup() {
    touch "$W/stop"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KVSTASH_TEST_KEEP_TMP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    [ -f "$W/metad.log" ] && { echo "--- metad.log" >&2; grep -v ' -> 200, in ' "$W/metad.log" | tail -n 20 >&2; }
    exit 1
}
ok() { echo "ok - $*"; }

# 50000 keys of about 512 bytes each, written as a data file the server loads at start
DATA=$W/meta.json
/usr/bin/python3 - "$NKEYS" "$DATA" <<'EOF'
import base64, json, sys
n, out = int(sys.argv[1]), sys.argv[2]
pad = "p" * 420
kvs = []
for i in range(n):
    v = '{"name":"seg-%05d","protocol":"tcp","tcp_data_port":%d,"buffers":[],"pad":"%s"}' % (
        i, 10000 + i, pad)
    kvs.append({"key": "mooncake/ram/seg-%05d" % i,
                "value": base64.b64encode(v.encode()).decode()})
with open(out, "w") as f:
    json.dump({"format": "kvstash-metad", "version": 1, "kvs": kvs}, f, separators=(",", ":"))
EOF

"$BIN" metad --addr 127.0.0.1:0 --log-level debug --data-file "$DATA" 2>"$W/metad.log" &
MPID=$!
pids+=("$MPID")
for _ in $(seq 1500); do grep -q 'listening on http' "$W/metad.log" 2>/dev/null && break; sleep 0.02; done
grep -q 'listening on http' "$W/metad.log" || fail "metad did not start"
grep -q "loaded $NKEYS keys" "$W/metad.log" || fail "metad did not load $NKEYS keys"
PORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$W/metad.log" | sed 's/.*://')
U="http://127.0.0.1:$PORT"

LEASE=$(curl -s -X POST -d '{"ttl":2}' "$U/lease/grant" | grep -o '"id":[0-9]*' | cut -d: -f2)
[ -n "$LEASE" ] || fail "no lease"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary live \
    "$U/metadata?key=owner&lease=$LEASE")" = 200 ] || fail "put with lease"

# writer: a change every 0.1 s keeps the store dirty, so saves follow one another
(
    i=0
    while [ ! -e "$W/stop" ]; do
        i=$((i + 1))
        curl -s -o /dev/null --max-time 30 -X PUT --data-binary "$i" "$U/metadata?key=churn" || true
        sleep 0.1
    done
) &
pids+=($!)

# keepalive every 0.5 s for at least 10 s and until 3 saves completed (at most 60 s)
ino() { stat -c %i "$DATA" 2>/dev/null || echo none; }
last=$(ino)
saves=0
renewals=0
maxt=0
mindone=$((SECONDS + 10))
deadline=$((SECONDS + 60))
while { [ "$saves" -lt 3 ] || [ "$SECONDS" -lt "$mindone" ]; } && [ "$SECONDS" -lt "$deadline" ]; do
    out=$(curl -s -o /dev/null --max-time 30 -w '%{http_code} %{time_total}' -X POST \
        -d "{\"id\":$LEASE}" "$U/lease/keepalive" || echo "000 0")
    [ "${out%% *}" = 200 ] || fail "keepalive #$((renewals + 1)) answered ${out%% *} after $saves saves: the lease expired"
    renewals=$((renewals + 1))
    maxt=$(echo "$maxt ${out#* }" | awk '{print ($2 > $1) ? $2 : $1}')
    now=$(ino)
    if [ "$now" != "$last" ]; then
        saves=$((saves + 1))
        last=$now
    fi
    sleep 0.5
done
touch "$W/stop"
[ "$saves" -ge 3 ] || fail "only $saves saves of $NKEYS keys completed in 60 s"
[ "$(curl -s "$U/metadata?key=owner")" = live ] || fail "the key bound to the lease is gone"
# a keepalive answered after ttl/2 leaves a renew-every-ttl/3 owner one hiccup from losing its
# lease: that is the stall this test guards against (seconds per save when the loop saved)
awk -v t="$maxt" 'BEGIN { exit !(t < 1.0) }' || fail "a keepalive took ${maxt}s (over ttl/2) during saves"
ok "lease (ttl 2 s) kept alive by $renewals keepalives through $saves saves of $NKEYS keys (slowest keepalive ${maxt}s)"

kill -TERM "$MPID"
wait "$MPID" || fail "metad exited non-zero on SIGTERM"
grep -q '"key":"churn"' "$DATA" || fail "the final save lacks the last change"
n=$(grep -o '"key":"mooncake/ram/seg-' "$DATA" | wc -l)
[ "$n" = "$NKEYS" ] || fail "data file holds $n of $NKEYS keys"
[ ! -e "$DATA.tmp" ] || fail "a temporary file was left behind"
ok "the data file after stop holds all $NKEYS keys and the last change"
echo "all metad save tests passed"
